/* modules.c - the registry of built-in modules and option validation.
 *
 * Adding a module is writing server/modules/mod_NAME.c with its table and
 * adding one line here. */
#include <stdio.h>
#include <string.h>
#include "server/module.h"
#include "server/config.h"

extern const st_module mod_disco, mod_version, mod_ping, mod_time, mod_register, mod_roster,
    mod_presence;
extern const st_module mod_offline, mod_carbons, mod_last;
extern const st_module mod_blocking, mod_vcard, mod_private;
extern const st_module mod_caps, mod_pep, mod_avatar, mod_bookmarks;
extern const st_module mod_push;
extern const st_module mod_mam;

const st_module *const st_builtin_modules[] = {
    &mod_disco, &mod_version, &mod_ping, &mod_time, &mod_register, &mod_roster, &mod_presence,
    &mod_offline, &mod_carbons, &mod_last,
    &mod_blocking, &mod_vcard, &mod_private,
    &mod_caps, &mod_pep, &mod_avatar, &mod_bookmarks,
    &mod_push,
    &mod_mam,
    NULL,
};

const char *const st_default_modules[] = {"disco",  "version", "ping",     "time",
                                          "register", "roster", "presence",
                                          "offline", "carbons", "last",
                                          "blocking", "vcard", "private",
                                          "caps", "pep", "avatar", "bookmarks",
                                          "push", "mam", NULL};

const st_module *st_module_find(const char *name)
{
    for (size_t i = 0; st_builtin_modules[i]; i++)
        if (strcmp(st_builtin_modules[i]->name, name) == 0) return st_builtin_modules[i];
    return NULL;
}

const st_module_opt *st_module_opt_find(const st_module *m, const char *name)
{
    for (const st_module_opt *o = m->opts; o && o->name; o++)
        if (strcmp(o->name, name) == 0) return o;
    return NULL;
}

int st_module_opt_check(const st_module_opt *o, const char *value, char *err, size_t errlen)
{
    long long v;
    int b;
    switch (o->type) {
    case ST_OPT_BOOL:
        if (st_parse_bool(value, &b) == 0) return 0;
        snprintf(err, errlen, "expected true or false, got '%s'", value);
        return -1;
    case ST_OPT_INT:
    case ST_OPT_SIZE:
    case ST_OPT_DURATION: {
        int r = o->type == ST_OPT_DURATION ? st_parse_duration(value, &v) : st_parse_size(value, &v);
        if (r != 0) {
            snprintf(err, errlen, "expected %s, got '%s'",
                     o->type == ST_OPT_DURATION ? "a duration like 30s or 5m" : "a number", value);
            return -1;
        }
        if (v < o->min || v > o->max) {
            snprintf(err, errlen, "%lld is out of range %lld..%lld", v, o->min, o->max);
            return -1;
        }
        return 0;
    }
    case ST_OPT_STRING:
        return 0;
    }
    return -1;
}
