/* mod_version.c - XEP-0092 Software Version. The OS is left out unless the
 * admin turns version.show_os on: it tells attackers more than users. */
#include <sys/utsname.h>
#include "server/server.h"

extern const st_module mod_version;

static st_verdict version(st_iq_ctx *c)
{
    st_stanza *r = st_iq_reply(c->iq);
    if (!r) return ST_HANDLED;
    st_tag(r, "query", "jabber:iq:version");
    st_text_tag(r, "name", "Starling");
    st_text_tag(r, "version", STARLING_VERSION);
    struct utsname u;
    if (st_host_opt_bool(c->host, &mod_version, "show_os") && uname(&u) == 0)
        st_text_tag(r, "os", u.sysname);
    if (st_stanza_ok(r)) st_iq_result(c, r);
    st_stanza_unref(r);
    return ST_HANDLED;
}

static const char *const features[] = {"jabber:iq:version", NULL};

static const st_iq_handler iqs[] = {
    {"jabber:iq:version", "query", ST_IQ_GET, ST_TO_HOST, version},
    {0},
};

static const st_module_opt opts[] = {
    {"show_os", ST_OPT_BOOL, "false", 0, 0, "include the operating system name in replies"},
    {0},
};

const st_module mod_version = {
    .name = "version",
    .spec = "XEP-0092",
    .title = "Software Version",
    .features = features,
    .iqs = iqs,
    .opts = opts,
};
