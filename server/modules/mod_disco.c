/* mod_disco.c - XEP-0030 Service Discovery: disco#info and disco#items.
 *
 * The server's feature list is not written here: it is gathered from the
 * 'features' of every module enabled on the host, so what we advertise is
 * exactly what is loaded. */
#include <string.h>
#include "server/server.h"

#define NS_INFO "http://jabber.org/protocol/disco#info"
#define NS_ITEMS "http://jabber.org/protocol/disco#items"

static void add_feature(st_stanza *r, const char *var)
{
    st_tag(r, "feature", NULL);
    st_attr_set(r, "var", var);
    st_up(r);
}

static st_verdict info(st_iq_ctx *c)
{
    const char *node = st_attr_get(c->payload, "node");
    if (node) {
        st_iq_error(c, "item-not-found", NULL);
        return ST_HANDLED;
    }
    st_stanza *r = st_iq_reply(c->iq);
    if (!r) return ST_HANDLED;
    st_tag(r, "query", NS_INFO);
    st_tag(r, "identity", NULL);
    if (c->to && c->to->node) {
        /* our own account (RFC 6120 §10.3.3 / XEP-0030 §3.1 for accounts) */
        st_attr_set(r, "category", "account");
        st_attr_set(r, "type", "registered");
    } else {
        st_attr_set(r, "category", "server");
        st_attr_set(r, "type", "im");
        st_attr_set(r, "name", "Starling");
    }
    st_up(r);
    if (!c->to || !c->to->node) {
        for (size_t i = 0; i < c->host->nmods; i++) {
            const char *const *f = c->host->mods[i]->features;
            for (; f && *f; f++) add_feature(r, *f);
        }
    } else {
        add_feature(r, NS_INFO);
        add_feature(r, NS_ITEMS);
        /* XEP-0357 §4.1 (mod_pep, when loaded, answers this itself) */
        if (st_host_has(c->host, "push")) add_feature(r, "urn:xmpp:push:0");
        /* XEP-0313 §8: the account hosts its archive (mod_mam) */
        if (st_host_has(c->host, "mam")) {
            add_feature(r, "urn:xmpp:mam:2");
            add_feature(r, "urn:xmpp:mam:2#extended");
        }
    }
    if (st_stanza_ok(r)) st_iq_result(c, r);
    else st_iq_error(c, "internal-server-error", NULL);
    st_stanza_unref(r);
    return ST_HANDLED;
}

static st_verdict items(st_iq_ctx *c)
{
    if (st_attr_get(c->payload, "node")) {
        st_iq_error(c, "item-not-found", NULL);
        return ST_HANDLED;
    }
    st_stanza *r = st_iq_reply(c->iq);
    if (!r) return ST_HANDLED;
    st_tag(r, "query", NS_ITEMS); /* no components or services yet */
    if (st_stanza_ok(r)) st_iq_result(c, r);
    st_stanza_unref(r);
    return ST_HANDLED;
}

static const char *const features[] = {NS_INFO, NS_ITEMS, NULL};

static const st_iq_handler iqs[] = {
    {NS_INFO, "query", ST_IQ_GET, ST_TO_HOST | ST_TO_ACCOUNT, info},
    {NS_ITEMS, "query", ST_IQ_GET, ST_TO_HOST | ST_TO_ACCOUNT, items},
    {0},
};

const st_module mod_disco = {
    .name = "disco",
    .spec = "XEP-0030",
    .title = "Service Discovery",
    .features = features,
    .iqs = iqs,
};
