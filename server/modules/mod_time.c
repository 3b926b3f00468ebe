/* mod_time.c - XEP-0202 Entity Time: the server's clock, in UTC. */
#include <stdio.h>
#include <time.h>
#include "server/server.h"

static st_verdict entity_time(st_iq_ctx *c)
{
    char utc[32];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(utc, sizeof utc, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(utc + n, sizeof utc - n, ".%03ldZ", ts.tv_nsec / 1000000);
    st_stanza *r = st_iq_reply(c->iq);
    if (!r) return ST_HANDLED;
    st_tag(r, "time", "urn:xmpp:time");
    st_text_tag(r, "tzo", "+00:00");
    st_text_tag(r, "utc", utc);
    if (st_stanza_ok(r)) st_iq_result(c, r);
    st_stanza_unref(r);
    return ST_HANDLED;
}

static const char *const features[] = {"urn:xmpp:time", NULL};

static const st_iq_handler iqs[] = {
    {"urn:xmpp:time", "time", ST_IQ_GET, ST_TO_HOST, entity_time},
    {0},
};

const st_module mod_time = {
    .name = "time",
    .spec = "XEP-0202",
    .title = "Entity Time",
    .features = features,
    .iqs = iqs,
};
