/* mod_ping.c - XEP-0199 XMPP Ping: answer pings to the server.
 *
 * Server-to-client pings of idle connections are sent by c2s (it owns the
 * idle timer) when this module is enabled on the host. */
#include "server/server.h"

static st_verdict ping(st_iq_ctx *c)
{
    st_iq_result(c, NULL);
    return ST_HANDLED;
}

static const char *const features[] = {"urn:xmpp:ping", NULL};

static const st_iq_handler iqs[] = {
    {"urn:xmpp:ping", "ping", ST_IQ_GET, ST_TO_HOST, ping},
    {0},
};

const st_module mod_ping = {
    .name = "ping",
    .spec = "XEP-0199",
    .title = "XMPP Ping",
    .features = features,
    .iqs = iqs,
};
