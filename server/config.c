/* config.c - load and validate starling.conf (format in server/config.h,
 * reference in docs/config.md).
 *
 * Design: one pass over the file builds the st_config; every problem is
 * appended to the caller's error buffer as "file:line: message" and parsing
 * goes on, so the admin sees every mistake at once (prosodyctl check manners).
 * Global settings are one table (name, type, bounds, field offset), so the
 * parser, the "did you mean" suggestions and docs/config.md all agree on what
 * exists. Module options are checked against the module tables only once a
 * host section is complete, because its "modules" line may come after the
 * options it enables. Nothing here asserts: a config file is user input. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>
#include "starling/alloc.h"
#include "starling/jid.h"
#include "server/config.h"
#include "server/log.h"
#include "server/module.h"

#define CONF_LINE_MAX 8192 /* longer lines are an error, not a truncation */

/* ---- value parsers (shared with module option validation) ---- */

int st_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

/* Decimal integer with an optional sign and one suffix character scaled by
 * mult(suffix); refuses empty strings, junk and overflow. */
static int parse_scaled(const char *s, long long (*mult)(char), long long *out)
{
    const char *p = s;
    int neg = 0;
    unsigned long long v = 0;
    if (*p == '-' || *p == '+') neg = *p++ == '-';
    if (!isdigit((unsigned char)*p)) return -1;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > ((unsigned long long)LLONG_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    long long m = 1;
    if (*p) {
        m = mult(*p);
        if (m == 0 || p[1] != '\0') return -1;
    }
    if (v > (unsigned long long)(LLONG_MAX / m)) return -1;
    *out = (neg ? -1 : 1) * (long long)v * m;
    return 0;
}

static long long size_mult(char c)
{
    switch (c) {
    case 'k':
    case 'K':
        return 1024LL;
    case 'm':
    case 'M':
        return 1024LL * 1024;
    case 'g':
    case 'G':
        return 1024LL * 1024 * 1024;
    }
    return 0;
}

static long long duration_mult(char c)
{
    switch (c) {
    case 's':
        return 1;
    case 'm':
        return 60;
    case 'h':
        return 3600;
    case 'd':
        return 86400;
    }
    return 0;
}

int st_parse_size(const char *s, long long *out)
{
    return parse_scaled(s, size_mult, out);
}
int st_parse_duration(const char *s, long long *out)
{
    return parse_scaled(s, duration_mult, out);
}

/* ---- the table of global settings ---- */

typedef enum {
    K_STRING, /* non-empty string */
    K_USER,   /* a user name, or empty ("do not drop privileges") */
    K_ENUM,   /* one of choices */
    K_ADDRS,  /* list of IP literals, at least one */
    K_PORTS,  /* list of ports, may be empty */
    K_BOOL,
    K_INT,
    K_UINT, /* an unsigned field, parsed like K_INT */
    K_SIZE,
    K_DURATION,
} key_type;

typedef struct key_def {
    const char *name;
    key_type type;
    size_t off;  /* field in st_config */
    size_t off2; /* count field for lists */
    long long min, max;
    const char *const *choices; /* K_ENUM, NULL-terminated */
} key_def;

static const char *const store_choices[] = {"sqlite", "postgresql", NULL};
static const char *const level_choices[] = {"debug", "info", "warn", "error", NULL};

#define F(f) offsetof(st_config, f)
#define STR(n)                                                                                     \
    {                                                                                              \
#n, K_STRING, F(n), 0, 0, 0, NULL                                                          \
    }
#define NUM(n, t, lo, hi)                                                                          \
    {                                                                                              \
#n, t, F(n), 0, lo, hi, NULL                                                               \
    }
static const key_def keys[] = {
    STR(data_dir),
    {"store", K_ENUM, F(store), 0, 0, 0, store_choices},
    STR(store_dsn),
    STR(certificate),
    STR(private_key),
    STR(admin_socket),
    {"user", K_USER, F(user), 0, 0, 0, NULL},
    {"bind", K_ADDRS, F(bind), F(nbind), 0, 0, NULL},
    {"c2s_ports", K_PORTS, F(c2s_ports), F(nc2s_ports), 1, 65535, NULL},
    {"c2s_tls_ports", K_PORTS, F(c2s_tls_ports), F(nc2s_tls_ports), 1, 65535, NULL},
    NUM(require_encryption, K_BOOL, 0, 1),
    NUM(allow_plain, K_BOOL, 0, 1),
    NUM(sasl_cb_strict, K_BOOL, 0, 1),
    STR(sasl_mechanisms),
    NUM(max_stanza_bytes, K_SIZE, 1024, 64LL << 20),
    NUM(max_depth, K_UINT, 4, 1024),
    NUM(max_attrs, K_UINT, 4, 4096),
    NUM(max_connections, K_INT, 1, 10000000),
    NUM(handshake_timeout, K_DURATION, 1, 3600),
    NUM(idle_timeout, K_DURATION, 5, 86400),
    NUM(ping_timeout, K_DURATION, 1, 3600),
    NUM(c2s_rate, K_SIZE, 1024, 1LL << 30),
    NUM(c2s_burst, K_SIZE, 1024, 1LL << 30),
    NUM(max_send_queue, K_SIZE, 4096, 1LL << 30),
    NUM(sasl_max_failures, K_INT, 1, 100),
    NUM(sm_resume_timeout, K_DURATION, 0, 86400),
    NUM(fast_token_lifetime, K_DURATION, 0, 366 * 86400),
    NUM(max_connections_per_ip, K_INT, 1, 10000000),
    NUM(connect_rate_per_ip, K_INT, 1, 1000000),
    NUM(auth_failures_per_ip, K_INT, 1, 1000000),
    NUM(auth_failure_window, K_DURATION, 1, 86400),
    {"log_level", K_ENUM, F(log_level), 0, 0, 0, level_choices},
};
#undef F
#undef STR
#undef NUM
#define NKEYS (sizeof keys / sizeof keys[0])

static const key_def *key_find(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

/* ---- "did you mean": optimal string alignment distance ---- */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return SIZE_MAX; /* nobody mistypes that much */
    size_t d[65][65];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
            /* a swapped pair ("c2s_prots") costs one, like a typo feels */
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[la][lb];
}

typedef struct suggest {
    const char *word;
    char best[128];
    size_t dist;
} suggest;

static void suggest_init(suggest *s, const char *word)
{
    s->word = word;
    s->best[0] = '\0';
    s->dist = SIZE_MAX;
}

static void suggest_try(suggest *s, const char *cand)
{
    size_t d = edit_distance(s->word, cand);
    /* Close enough to be a typo: at most 2 edits, and fewer than a third of
     * the word for short words, so "bind" does not suggest "store". */
    size_t limit = strlen(s->word) / 3;
    if (limit > 2) limit = 2;
    if (limit < 1) limit = 1;
    if (d <= limit && d < s->dist) {
        s->dist = d;
        snprintf(s->best, sizeof s->best, "%s", cand);
    }
}

static void suggest_try_module_opts(suggest *s)
{
    char full[128];
    for (size_t i = 0; st_builtin_modules[i]; i++)
        for (const st_module_opt *o = st_builtin_modules[i]->opts; o && o->name; o++) {
            snprintf(full, sizeof full, "%s.%s", st_builtin_modules[i]->name, o->name);
            suggest_try(s, full);
        }
}

/* ---- loader state ---- */

typedef struct loader {
    st_config *c;
    st_buf *errors;
    const char *file;
    int nerrors;
    int oom;
    int set_line[NKEYS]; /* where each global key was set, 0 = not set */
} loader;

static void errf(loader *L, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(loader *L, int line, const char *fmt, ...)
{
    va_list ap;
    L->nerrors++;
    if (!L->errors) return;
    if (line > 0)
        st_buf_printf(L->errors, "%s:%d: ", L->file, line);
    else
        st_buf_printf(L->errors, "%s: ", L->file);
    va_start(ap, fmt);
    st_buf_vprintf(L->errors, fmt, ap);
    va_end(ap);
    st_buf_appends(L->errors, "\n");
}

static void oom(loader *L, int line)
{
    if (!L->oom) errf(L, line, "out of memory");
    L->oom = 1;
}

static char *xstrdup(loader *L, const char *s, int line)
{
    char *r = st_strdup(s);
    if (!r) oom(L, line);
    return r;
}

/* Split a list value at spaces, tabs and commas. Returns the number of
 * items (0 for an empty value), -1 on OOM; *items holds pointers into copy. */
static long split_list(const char *value, char **copy, char ***items)
{
    size_t n = 0, cap = 0;
    char **v = NULL;
    char *s = st_strdup(value);
    if (!s) return -1;
    for (char *save = NULL, *t = strtok_r(s, " \t,", &save); t; t = strtok_r(NULL, " \t,", &save)) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 4;
            char **nv = st_realloc(v, nc * sizeof *nv);
            if (!nv) {
                st_free(v);
                st_free(s);
                return -1;
            }
            v = nv;
            cap = nc;
        }
        v[n++] = t;
    }
    *copy = s;
    *items = v;
    return (long)n;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        st_free(v[i]);
    st_free(v);
}

/* Parse value into the field described by k. Errors name the key and the
 * offending value; the field is left alone on error. */
static void set_global(loader *L, const key_def *k, const char *value, int line)
{
    char *base = (char *)L->c;
    long long v = 0;
    int b;

    switch (k->type) {
    case K_USER: {
        /* Empty is allowed here: it is how an admin says "stay root". The
         * characters refused could never be in a name getpwnam() finds,
         * and saying so now beats a puzzling warning at start. */
        if (strlen(value) > 32 || strpbrk(value, " \t:/,")) {
            errf(L, line,
                 "%s: '%s' is not a user name (at most 32 characters, no spaces, ':' or '/')",
                 k->name, value);
            return;
        }
        char *dup = xstrdup(L, value, line);
        if (!dup) return;
        st_free(L->c->user);
        L->c->user = dup;
        return;
    }
    case K_STRING:
    case K_ENUM: {
        if (!*value) {
            errf(L, line, "%s: expected a value, got nothing", k->name);
            return;
        }
        if (strcmp(k->name, "sasl_mechanisms") == 0) {
            /* every word must be a mechanism we implement */
            static const char *const known[] = {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS",
                                                "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", NULL};
            char word[64];
            const char *p = value;
            int n = 0;
            while (*p) {
                size_t len = strcspn(p, " \t,");
                if (len) {
                    size_t i;
                    snprintf(word, sizeof word, "%.*s", (int)(len < 63 ? len : 63), p);
                    for (i = 0; known[i]; i++)
                        if (strcmp(known[i], word) == 0) break;
                    if (!known[i] || len >= 63) {
                        errf(L, line,
                             "%s: unknown mechanism '%s'; choose from SCRAM-SHA-256-PLUS "
                             "SCRAM-SHA-1-PLUS SCRAM-SHA-256 SCRAM-SHA-1 PLAIN",
                             k->name, word);
                        return;
                    }
                    n++;
                }
                p += len;
                p += strspn(p, " \t,");
            }
            if (!n) {
                errf(L, line, "%s: expected at least one mechanism", k->name);
                return;
            }
        }
        if (k->type == K_ENUM) {
            size_t i;
            for (i = 0; k->choices[i]; i++)
                if (strcmp(k->choices[i], value) == 0) break;
            if (!k->choices[i]) {
                char list[256] = "";
                size_t used = 0;
                for (size_t j = 0; k->choices[j] && used < sizeof list; j++)
                    used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", j ? ", " : "",
                                             k->choices[j]);
                errf(L, line, "%s: expected one of %s, got '%s'", k->name, list, value);
                return;
            }
        }
        char **field = (char **)(base + k->off);
        char *dup = xstrdup(L, value, line);
        if (!dup) return;
        st_free(*field);
        *field = dup;
        return;
    }
    case K_ADDRS:
    case K_PORTS: {
        char *copy = NULL, **items = NULL;
        long n = split_list(value, &copy, &items);
        if (n < 0) {
            oom(L, line);
            return;
        }
        int bad = 0;
        void *arr = NULL;
        if (k->type == K_ADDRS) {
            if (n == 0) {
                errf(L, line, "%s: expected at least one IP address", k->name);
                bad = 1;
            }
            char **addrs = n ? st_calloc((size_t)n, sizeof *addrs) : NULL;
            if (n && !addrs) {
                oom(L, line);
                bad = 1;
            }
            for (long i = 0; !bad && i < n; i++) {
                unsigned char tmp[16];
                if (inet_pton(AF_INET, items[i], tmp) != 1 &&
                    inet_pton(AF_INET6, items[i], tmp) != 1) {
                    errf(L, line, "%s: expected an IPv4 or IPv6 address, got '%s'", k->name,
                         items[i]);
                    bad = 1;
                } else if (!(addrs[i] = xstrdup(L, items[i], line))) {
                    bad = 1;
                }
            }
            if (bad) {
                free_strv(addrs, (size_t)n);
            } else {
                arr = addrs;
            }
        } else {
            int *ports = n ? st_calloc((size_t)n, sizeof *ports) : NULL;
            if (n && !ports) {
                oom(L, line);
                bad = 1;
            }
            for (long i = 0; !bad && i < n; i++) {
                if (st_parse_size(items[i], &v) != 0 || strpbrk(items[i], "kKmMgG+-") ||
                    v < k->min || v > k->max) {
                    errf(L, line, "%s: expected a port number 1..65535, got '%s'", k->name,
                         items[i]);
                    bad = 1;
                    break;
                }
                for (long j = 0; j < i; j++)
                    if (ports[j] == (int)v) {
                        errf(L, line, "%s: port %lld is listed twice", k->name, v);
                        bad = 1;
                    }
                ports[i] = (int)v;
            }
            if (bad)
                st_free(ports);
            else
                arr = ports;
        }
        st_free(items);
        st_free(copy);
        if (bad) return;
        if (k->type == K_ADDRS)
            free_strv(*(char ***)(base + k->off), *(size_t *)(base + k->off2));
        else
            st_free(*(int **)(base + k->off));
        *(void **)(base + k->off) = arr;
        *(size_t *)(base + k->off2) = (size_t)n;
        return;
    }
    case K_BOOL:
        if (st_parse_bool(value, &b) != 0) {
            errf(L, line, "%s: expected true or false, got '%s'", k->name, value);
            return;
        }
        *(int *)(base + k->off) = b;
        return;
    case K_INT:
    case K_UINT:
    case K_SIZE:
    case K_DURATION: {
        int r = k->type == K_DURATION ? st_parse_duration(value, &v) : st_parse_size(value, &v);
        if (r == 0 && k->type != K_SIZE && k->type != K_DURATION && strpbrk(value, "kKmMgG"))
            r = -1;
        if (r != 0) {
            const char *what = k->type == K_DURATION ? "a duration like 30s, 5m or 1h"
                               : k->type == K_SIZE   ? "a size like 65536, 64k or 1M"
                                                     : "a whole number";
            errf(L, line, "%s: expected %s, got '%s'", k->name, what, value);
            return;
        }
        if (v < k->min || v > k->max) {
            errf(L, line, "%s: %lld is out of range %lld..%lld", k->name, v, k->min, k->max);
            return;
        }
        if (k->type == K_UINT)
            *(unsigned *)(base + k->off) = (unsigned)v;
        else if (k->type == K_SIZE)
            *(size_t *)(base + k->off) = (size_t)v;
        else
            *(int *)(base + k->off) = (int)v;
        return;
    }
    }
}

/* ---- hosts ---- */

static void host_free(st_host_conf *h)
{
    st_free(h->name);
    free_strv(h->modules, h->nmodules);
    for (size_t i = 0; i < h->nopts; i++) {
        st_free(h->opts[i].key);
        st_free(h->opts[i].value);
        st_free(h->opts[i].file);
    }
    st_free(h->opts);
    st_free(h->file);
}

/* The per-host bookkeeping we need only while parsing. */
typedef struct host_state {
    int modules_line; /* 0 = no modules line yet */
} host_state;

static st_host_conf *host_add(loader *L, const char *raw, int line)
{
    char name[ST_JID_PART_MAX + 1];
    size_t rl = strlen(raw);
    /* [host "example.org"] is accepted too */
    if (rl >= 2 && raw[0] == '"' && raw[rl - 1] == '"') {
        snprintf(name, sizeof name, "%.*s", (int)(rl - 2), raw + 1);
    } else {
        snprintf(name, sizeof name, "%s", raw);
    }
    char prepped[ST_JID_PART_MAX + 1];
    if (!*name || strpbrk(name, "@/ \t\"") || st_nameprep(name, prepped, sizeof prepped) <= 0) {
        errf(L, line, "'%s' is not a valid domain name for a host", name);
        return NULL;
    }
    for (size_t i = 0; i < L->c->nhosts; i++)
        if (strcmp(L->c->hosts[i].name, prepped) == 0) {
            errf(L, line, "host '%s' is already defined at line %d", prepped, L->c->hosts[i].line);
            return NULL;
        }
    st_host_conf *nh = st_realloc(L->c->hosts, (L->c->nhosts + 1) * sizeof *nh);
    if (!nh) {
        oom(L, line);
        return NULL;
    }
    L->c->hosts = nh;
    st_host_conf *h = &nh[L->c->nhosts];
    memset(h, 0, sizeof *h);
    h->line = line;
    h->name = xstrdup(L, prepped, line);
    h->file = xstrdup(L, L->file, line);
    if (!h->name || !h->file) {
        host_free(h);
        return NULL;
    }
    L->c->nhosts++;
    return h;
}

static void host_set_modules(loader *L, st_host_conf *h, host_state *hs, const char *value,
                             int line)
{
    if (hs->modules_line) {
        errf(L, line, "modules: already set for host '%s' at line %d", h->name, hs->modules_line);
        return;
    }
    hs->modules_line = line;
    char *copy = NULL, **items = NULL;
    long n = split_list(value, &copy, &items);
    if (n < 0) {
        oom(L, line);
        return;
    }
    char **mods = n ? st_calloc((size_t)n, sizeof *mods) : NULL;
    size_t nm = 0;
    if (n && !mods) {
        oom(L, line);
        goto done;
    }
    for (long i = 0; i < n; i++) {
        if (!st_module_find(items[i])) {
            suggest s;
            suggest_init(&s, items[i]);
            for (size_t j = 0; st_builtin_modules[j]; j++)
                suggest_try(&s, st_builtin_modules[j]->name);
            if (s.best[0])
                errf(L, line, "modules: unknown module '%s'; did you mean '%s'?", items[i], s.best);
            else
                errf(L, line, "modules: unknown module '%s'", items[i]);
            continue;
        }
        int dup = 0;
        for (size_t j = 0; j < nm; j++)
            dup |= strcmp(mods[j], items[i]) == 0;
        if (dup) {
            errf(L, line, "modules: '%s' is listed twice", items[i]);
            continue;
        }
        if (!(mods[nm] = xstrdup(L, items[i], line))) break;
        nm++;
    }
    free_strv(h->modules, h->nmodules);
    h->modules = mods;
    h->nmodules = nm;
done:
    st_free(items);
    st_free(copy);
}

static void host_add_opt(loader *L, st_host_conf *h, const char *key, const char *value, int line)
{
    for (size_t i = 0; i < h->nopts; i++)
        if (strcmp(h->opts[i].key, key) == 0) {
            errf(L, line, "%s: already set for host '%s' at line %d", key, h->name,
                 h->opts[i].line);
            return;
        }
    st_conf_kv *no = st_realloc(h->opts, (h->nopts + 1) * sizeof *no);
    if (!no) {
        oom(L, line);
        return;
    }
    h->opts = no;
    st_conf_kv *kv = &no[h->nopts];
    kv->key = xstrdup(L, key, line);
    kv->value = xstrdup(L, value, line);
    kv->file = xstrdup(L, L->file, line);
    kv->line = line;
    if (!kv->key || !kv->value || !kv->file) {
        st_free(kv->key);
        st_free(kv->value);
        st_free(kv->file);
        return;
    }
    h->nopts++;
}

/* Runs when a host section ends: fill the default module list, then check
 * each option against the module it names. */
static void host_finish(loader *L, st_host_conf *h, host_state *hs)
{
    if (!hs->modules_line) {
        size_t n = 0;
        while (st_default_modules[n])
            n++;
        h->modules = st_calloc(n ? n : 1, sizeof *h->modules);
        if (!h->modules) {
            oom(L, h->line);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (!(h->modules[i] = xstrdup(L, st_default_modules[i], h->line))) break;
            h->nmodules++;
        }
    }
    for (size_t i = 0; i < h->nopts; i++) {
        const st_conf_kv *kv = &h->opts[i];
        const char *dot = strchr(kv->key, '.');
        char mname[128];
        snprintf(mname, sizeof mname, "%.*s", (int)(dot - kv->key), kv->key);
        const st_module *m = st_module_find(mname);
        const st_module_opt *o = m ? st_module_opt_find(m, dot + 1) : NULL;
        if (!o) {
            suggest s;
            suggest_init(&s, kv->key);
            suggest_try_module_opts(&s);
            if (s.best[0])
                errf(L, kv->line, "unknown setting '%s'; did you mean '%s'?", kv->key, s.best);
            else if (!m)
                errf(L, kv->line, "unknown setting '%s': there is no module '%s'", kv->key, mname);
            else
                errf(L, kv->line, "unknown setting '%s': module '%s' has no option '%s'", kv->key,
                     mname, dot + 1);
            continue;
        }
        if (!st_host_has_module(h, mname)) {
            errf(
                L, kv->line,
                "option '%s' for module '%s' which is not enabled for host '%s'; add it to modules",
                kv->key, mname, h->name);
            continue;
        }
        char why[256];
        if (st_module_opt_check(o, kv->value, why, sizeof why) != 0)
            errf(L, kv->line, "%s: %s", kv->key, why);
    }
}

/* ---- lines ---- */

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* An unknown key: say what it might have been. In a host section the
 * candidates are "modules" and the module options; at top level the global
 * settings; either way a key from the other kind of section gets a hint
 * about where it belongs rather than a guess. */
static void unknown_key(loader *L, const char *key, int line)
{
    suggest s;
    suggest_init(&s, key);
    for (size_t i = 0; i < NKEYS; i++)
        suggest_try(&s, keys[i].name);
    suggest_try(&s, "modules");
    suggest_try_module_opts(&s);
    if (s.best[0])
        errf(L, line, "unknown setting '%s'; did you mean '%s'?", key, s.best);
    else
        errf(L, line, "unknown setting '%s'", key);
}

/* "register.allow": a dotted key whose prefix names a module. */
static int is_module_key(const char *key)
{
    const char *dot = strchr(key, '.');
    char mname[128];
    if (!dot || (size_t)(dot - key) >= sizeof mname) return 0;
    snprintf(mname, sizeof mname, "%.*s", (int)(dot - key), key);
    return st_module_find(mname) != NULL;
}

static void parse_line(loader *L, char *s, int line, st_host_conf **cur, host_state *hs)
{
    if (*s == '[') {
        size_t n = strlen(s);
        if (s[n - 1] != ']') {
            errf(L, line, "section header is missing its ']': %s", s);
            return;
        }
        s[n - 1] = '\0';
        char *inner = trim(s + 1);
        if (*cur) host_finish(L, *cur, hs);
        *cur = NULL;
        if (strcmp(inner, "host") == 0) {
            errf(L, line, "[host] needs a domain name, as in [host example.org]");
            hs->modules_line = -1;
            return;
        }
        if (strncmp(inner, "host", 4) != 0 || !isspace((unsigned char)inner[4])) {
            errf(L, line, "unknown section '[%s]'; sections look like [host example.org]", inner);
            /* Keys up to the next section would be misread as globals or
             * as the previous host's: skip them quietly. */
            hs->modules_line = -1;
            return;
        }
        hs->modules_line = 0;
        *cur = host_add(L, trim(inner + 4), line);
        if (!*cur) hs->modules_line = -1; /* skip this section's keys */
        return;
    }

    char *eq = strchr(s, '=');
    if (!eq) {
        errf(L, line, "expected 'key = value' or '[host NAME]', got '%s'", s);
        return;
    }
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    size_t vl = strlen(value);
    if (vl >= 2 && value[0] == '"' && value[vl - 1] == '"') { /* "quoted" values */
        value[vl - 1] = '\0';
        value++;
    }
    if (!*key) {
        errf(L, line, "missing key before '='");
        return;
    }
    if (hs->modules_line < 0) return; /* inside a section already reported */

    const key_def *k = key_find(key);
    if (*cur) {
        if (strcmp(key, "modules") == 0) {
            host_set_modules(L, *cur, hs, value, line);
        } else if (strchr(key, '.') && key[0] != '.') {
            host_add_opt(L, *cur, key, value, line); /* checked in host_finish */
        } else if (k) {
            errf(L, line, "'%s' is a global setting; move it above the first [host ...] section",
                 key);
        } else {
            unknown_key(L, key, line);
        }
        return;
    }
    if (k) {
        size_t i = (size_t)(k - keys);
        if (L->set_line[i]) {
            errf(L, line, "%s: already set at line %d", key, L->set_line[i]);
            return;
        }
        L->set_line[i] = line;
        set_global(L, k, value, line);
    } else if (strcmp(key, "modules") == 0 || is_module_key(key)) {
        errf(L, line, "'%s' is a host setting; put it after a [host NAME] line", key);
    } else {
        unknown_key(L, key, line);
    }
}

/* ---- defaults and derived values ---- */

static int set_default_str(char **field, const char *v)
{
    if (*field) return 0;
    *field = st_strdup(v);
    return *field ? 0 : -1;
}

static int set_derived_path(char **field, const char *dir, const char *file)
{
    if (*field) return 0;
    size_t n = strlen(dir) + 1 + strlen(file) + 1;
    char *p = st_malloc(n);
    if (!p) return -1;
    /* no doubled slash for data_dir = "/" or "dir/" */
    size_t dl = strlen(dir);
    snprintf(p, n, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", file);
    *field = p;
    return 0;
}

static int fill_ints(int **arr, size_t *n, int v)
{
    *arr = st_malloc(sizeof **arr);
    if (!*arr) return -1;
    (*arr)[0] = v;
    *n = 1;
    return 0;
}

/* Numeric defaults and the defaults that need no data_dir. */
static void numeric_defaults(st_config *c)
{
    c->require_encryption = 1;
    c->allow_plain = 1;
    c->max_stanza_bytes = 262144;
    c->max_depth = 32;
    c->max_attrs = 64;
    c->max_connections = 10000;
    c->handshake_timeout = 30;
    c->idle_timeout = 300;
    c->ping_timeout = 60;
    c->c2s_rate = 65536;
    c->c2s_burst = 262144;
    c->max_send_queue = 1048576;
    c->sasl_max_failures = 3;
    c->max_connections_per_ip = 100;
    c->sm_resume_timeout = 300;
    c->fast_token_lifetime = 14 * 86400;
    c->connect_rate_per_ip = 20;
    c->auth_failures_per_ip = 20;
    c->auth_failure_window = 600;
}

/* Fill every unset string and list; paths derive from data_dir. */
static int string_defaults(st_config *c, int ports_set, int tls_ports_set)
{
    if (set_default_str(&c->data_dir, "/var/lib/starling") ||
        set_default_str(&c->store, "sqlite") || set_default_str(&c->log_level, "info") ||
        set_default_str(&c->user, "starling") ||
        set_derived_path(&c->certificate, c->data_dir, "cert.pem") ||
        set_derived_path(&c->private_key, c->data_dir, "key.pem") ||
        set_derived_path(&c->admin_socket, c->data_dir, "admin.sock"))
        return -1;
    /* PostgreSQL has no sensible default DSN; the loader reports that. */
    if (strcmp(c->store, "sqlite") == 0 &&
        set_derived_path(&c->store_dsn, c->data_dir, "starling.db"))
        return -1;
    if (!c->bind) {
        c->bind = st_calloc(2, sizeof *c->bind);
        if (!c->bind) return -1;
        if (!(c->bind[0] = st_strdup("127.0.0.1"))) return -1;
        c->nbind = 1;
        if (!(c->bind[1] = st_strdup("::1"))) return -1;
        c->nbind = 2;
    }
    if (!ports_set && !c->c2s_ports && fill_ints(&c->c2s_ports, &c->nc2s_ports, 5222)) return -1;
    if (!tls_ports_set && !c->c2s_tls_ports &&
        fill_ints(&c->c2s_tls_ports, &c->nc2s_tls_ports, 5223))
        return -1;
    return 0;
}

st_config *st_config_defaults(void)
{
    st_config *c = st_calloc(1, sizeof *c);
    if (!c) return NULL;
    numeric_defaults(c);
    if (string_defaults(c, 0, 0) != 0) goto fail;
    return c;
fail:
    st_config_free(c);
    return NULL;
}

/* Rules that involve more than one setting. */
static void cross_checks(loader *L)
{
    st_config *c = L->c;
    int store_line = L->set_line[key_find("store") - keys];
    if (!c->store_dsn)
        errf(L, store_line, "store = %s needs store_dsn (a connection string)", c->store);
    if (c->nc2s_ports == 0 && c->nc2s_tls_ports == 0)
        errf(L, L->set_line[key_find("c2s_ports") - keys],
             "c2s_ports and c2s_tls_ports are both empty: the server would not listen at all");
    for (size_t i = 0; i < c->nc2s_ports; i++)
        for (size_t j = 0; j < c->nc2s_tls_ports; j++)
            if (c->c2s_ports[i] == c->c2s_tls_ports[j])
                errf(L, L->set_line[key_find("c2s_tls_ports") - keys],
                     "c2s_tls_ports: port %d is also in c2s_ports", c->c2s_ports[i]);
    struct sockaddr_un sun;
    if (strlen(c->admin_socket) >= sizeof sun.sun_path)
        errf(L, L->set_line[key_find("admin_socket") - keys],
             "admin_socket: '%s' is longer than the %zu bytes a Unix socket path may have",
             c->admin_socket, sizeof sun.sun_path - 1);
    /* No [host] at all is allowed: starlingd warns and starts (every
     * stream then gets host-unknown), which lets a bare file be tested. */
}

st_config *st_config_load(const char *path, st_buf *errors)
{
    loader L;
    memset(&L, 0, sizeof L);
    L.errors = errors;
    L.file = path;
    FILE *f = NULL;
    char *line = NULL;
    size_t cap = 0;
    st_host_conf *cur = NULL;
    host_state hs = {0};

    L.c = st_calloc(1, sizeof *L.c);
    if (!L.c) {
        oom(&L, 0);
        goto fail;
    }
    numeric_defaults(L.c);
    if (!(L.c->path = st_strdup(path))) {
        oom(&L, 0);
        goto fail;
    }
    f = fopen(path, "r");
    if (!f) {
        errf(&L, 0, "cannot open: %s", strerror(errno));
        goto fail;
    }
    int lineno = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if ((size_t)n > CONF_LINE_MAX) {
            errf(&L, lineno, "line is longer than %d bytes", CONF_LINE_MAX);
            continue;
        }
        if ((size_t)n != strlen(line)) {
            errf(&L, lineno, "line contains a NUL byte");
            continue;
        }
        char *s = trim(line);
        if (!*s || *s == '#' || *s == ';') continue;
        parse_line(&L, s, lineno, &cur, &hs);
        if (L.oom) goto fail;
    }
    if (ferror(f)) {
        errf(&L, 0, "read error: %s", strerror(errno));
        goto fail;
    }
    if (cur) host_finish(&L, cur, &hs);
    if (L.oom) goto fail;
    if (string_defaults(L.c, L.set_line[key_find("c2s_ports") - keys],
                        L.set_line[key_find("c2s_tls_ports") - keys]) != 0) {
        oom(&L, 0);
        goto fail;
    }
    cross_checks(&L);
    if (L.nerrors) goto fail;
    free(line);
    fclose(f);
    return L.c;
fail:
    free(line); /* getline allocates with malloc */
    if (f) fclose(f);
    st_config_free(L.c);
    return NULL;
}

void st_config_free(st_config *c)
{
    if (!c) return;
    st_free(c->path);
    for (size_t i = 0; i < NKEYS; i++) {
        char *base = (char *)c;
        if (keys[i].type == K_STRING || keys[i].type == K_ENUM || keys[i].type == K_USER)
            st_free(*(char **)(base + keys[i].off));
    }
    free_strv(c->bind, c->nbind);
    st_free(c->c2s_ports);
    st_free(c->c2s_tls_ports);
    for (size_t i = 0; i < c->nhosts; i++)
        host_free(&c->hosts[i]);
    st_free(c->hosts);
    st_free(c);
}

const st_host_conf *st_config_host(const st_config *c, const char *domain)
{
    for (size_t i = 0; c && domain && i < c->nhosts; i++)
        if (strcmp(c->hosts[i].name, domain) == 0) return &c->hosts[i];
    return NULL;
}

int st_host_has_module(const st_host_conf *h, const char *module)
{
    for (size_t i = 0; h && i < h->nmodules; i++)
        if (strcmp(h->modules[i], module) == 0) return 1;
    return 0;
}

const st_conf_kv *st_host_opt(const st_host_conf *h, const char *key)
{
    for (size_t i = 0; h && i < h->nopts; i++)
        if (strcmp(h->opts[i].key, key) == 0) return &h->opts[i];
    return NULL;
}

const char *st_config_locate(const char *path)
{
    if (path) return path;
    const char *env = getenv("STARLING_CONFIG");
    if (env && *env) return env;
    if (access("./starling.conf", F_OK) == 0) return "./starling.conf";
    return "/etc/starling/starling.conf";
}

int st_config_mech_enabled(const st_config *c, const char *mech)
{
    if (!c->sasl_mechanisms) return 1;
    size_t n = strlen(mech);
    for (const char *p = c->sasl_mechanisms; *p;) {
        size_t len = strcspn(p, " \t,");
        if (len == n && memcmp(p, mech, n) == 0) return 1;
        p += len;
        p += strspn(p, " \t,");
    }
    return 0;
}
