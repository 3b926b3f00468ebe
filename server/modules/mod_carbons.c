/* mod_carbons.c - XEP-0280 Message Carbons: every resource of a user that
 * enabled carbons sees the conversations of the others.
 *
 * A session enables or disables carbons with an IQ; the flag lives in its
 * ST_SLOT_CARBONS slot. Two hooks make the copies:
 *
 *   message_out  a message a client sends goes, wrapped in <sent/>, to the
 *                sender's other enabled resources;
 *   message_in   a message for a local user goes, wrapped in <received/>,
 *                to the user's enabled resources that do not get the
 *                message itself (to a full JID: all but that resource; to
 *                the bare JID: those outside the router's delivery set).
 *
 * Each copy comes from the user's bare JID, is built once without a 'to'
 * and sent with each resource's full JID spliced in (st_session_send_to).
 * Which messages are copied follows XEP-0280 §6 (chat; normal with a body;
 * IM payloads such as chat states, receipts and markers) minus its
 * exclusions: <private/>, XEP-0334 <no-copy/>, groupchat, error, headline,
 * and MUC private messages to a full JID (§6.1: the other resources are not
 * in the room). Both hooks answer ST_PASS: carbons never stop a message. */
#include <string.h>
#include "server/log.h"
#include "server/server.h"
#include "starling/alloc.h"

#define NS_CARBONS "urn:xmpp:carbons:2"
#define NS_CARBONS_RULES "urn:xmpp:carbons:rules:0"
#define NS_FORWARD "urn:xmpp:forward:0"
#define NS_HINTS "urn:xmpp:hints"
#define NS_MUC_USER "http://jabber.org/protocol/muc#user"

/* The value of an enabled session's slot; the address is all that matters. */
static char enabled_mark;

static int enabled(const st_session *s)
{
    return s->mod_data[ST_SLOT_CARBONS] == &enabled_mark;
}

static int is_type(const char *type, const char *want)
{
    return type && strcmp(type, want) == 0;
}

/* ---- enable / disable (XEP-0280 §4) ---- */

static st_verdict set_carbons(st_iq_ctx *c, int on)
{
    if (!c->session) return ST_PASS; /* only a local bound session has resources to copy to */
    c->session->mod_data[ST_SLOT_CARBONS] = on ? &enabled_mark : NULL;
    st_debug("mod_carbons", "%s: carbons %s", c->session->full, on ? "enabled" : "disabled");
    st_iq_result(c, NULL);
    return ST_HANDLED;
}

static st_verdict enable(st_iq_ctx *c)
{
    return set_carbons(c, 1);
}

static st_verdict disable(st_iq_ctx *c)
{
    return set_carbons(c, 0);
}

/* ---- which messages are copied (XEP-0280 §6) ---- */

static int eligible(const st_stanza *st)
{
    const char *type = st_get(st, "type");
    const st_node *root = st->root;
    if (is_type(type, "error") || is_type(type, "groupchat") || is_type(type, "headline"))
        return 0;
    if (st_child(root, "private", NS_CARBONS) || st_child(root, "no-copy", NS_HINTS)) return 0;
    /* a carbon is never copied again (a forged one from a peer included) */
    if (st_child(root, "sent", NS_CARBONS) || st_child(root, "received", NS_CARBONS)) return 0;
    if (is_type(type, "chat")) return 1;
    if (type && !is_type(type, "normal")) return 0; /* unknown types are not IM */
    if (st_child(root, "body", ST_NS_CLIENT)) return 1;
    for (st_node *n = st_first_elem(root); n; n = st_next_elem(n))
        if (strcmp(n->ns, "http://jabber.org/protocol/chatstates") == 0 ||
            strcmp(n->ns, "urn:xmpp:receipts") == 0 || strcmp(n->ns, "urn:xmpp:chat-markers:0") == 0)
            return 1;
    return 0;
}

/* <message from=bare type=...><dir xmlns=carbons><forwarded><message/>...,
 * without a 'to' (each recipient's is spliced in). NULL on OOM. */
static st_stanza *wrap(const st_stanza *st, const char *dir, const char *bare)
{
    st_stanza *c = st_stanza_new("message", ST_NS_CLIENT);
    if (!c) return NULL;
    st_attr_set(c, "from", bare);
    if (st_get(st, "type")) st_attr_set(c, "type", st_get(st, "type"));
    st_tag(c, dir, NS_CARBONS);
    st_tag(c, "forwarded", NS_FORWARD);
    st_add_copy(c, st->root);
    if (st_stanza_ok(c)) return c;
    st_stanza_unref(c);
    return NULL;
}

/* Send copy to every enabled session of u for which skip() says no. */
static void send_copies(st_user *u, st_stanza *copy, int (*skip)(const st_session *x, void *ud),
                        void *ud)
{
    for (st_session *x = u->sessions; x; x = x->next_of_user)
        if (enabled(x) && !skip(x, ud)) st_session_send_to(x, copy, x->full);
}

/* Are there enabled sessions of u for which skip() says no? (Saves building
 * a copy nobody gets, the common case.) */
static int anyone(st_user *u, int (*skip)(const st_session *x, void *ud), void *ud)
{
    for (st_session *x = u->sessions; x; x = x->next_of_user)
        if (enabled(x) && !skip(x, ud)) return 1;
    return 0;
}

static void copy_to(st_user *u, const st_stanza *st, const char *dir,
                    int (*skip)(const st_session *x, void *ud), void *ud)
{
    if (!anyone(u, skip, ud)) return;
    st_stanza *copy = wrap(st, dir, u->bare);
    if (!copy) {
        st_warn("mod_carbons", "%s: out of memory while copying a message", u->bare);
        return;
    }
    send_copies(u, copy, skip, ud);
    st_stanza_unref(copy);
}

/* ---- sent: to the sender's other resources ---- */

static int skip_self(const st_session *x, void *ud)
{
    return x == ud;
}

static st_verdict message_out(st_session *s, st_stanza *st, const st_jid *to)
{
    /* To our own bare JID (or none): the received copies cover the other
     * resources, and a copy of both kinds would be a duplicate. */
    if (!to || !to->node) return ST_PASS;
    if (strcmp(to->node, s->jid.node) == 0 && strcmp(to->domain, s->jid.domain) == 0)
        return ST_PASS;
    if (!eligible(st)) return ST_PASS;
    copy_to(s->user, st, "sent", skip_self, s);
    return ST_PASS;
}

/* ---- received: to the recipient's resources that did not get it ---- */

typedef struct recv_ctx {
    const st_jid *to;   /* the recipient as addressed */
    const st_jid *from; /* the sender, NULL if unknown */
    int best;           /* bare JID: the delivery priority */
} recv_ctx;

/* The router's bare-JID delivery set for normal and chat messages
 * (router.c, deliver_bare_message): available resources with the highest
 * non-negative priority. Kept in step with it by hand. */
static int best_priority(const st_user *u)
{
    int best = -1;
    for (st_session *x = u->sessions; x; x = x->next_of_user)
        if (x->available && x->priority >= 0 && x->priority > best) best = x->priority;
    return best;
}

static int skip_recipient(const st_session *x, void *ud)
{
    recv_ctx *r = ud;
    /* the sending resource itself, for a message between own resources */
    if (r->from && st_jid_equal(&x->jid, r->from, 1)) return 1;
    if (r->to->resource) return st_jid_equal(&x->jid, r->to, 1);
    return x->available && x->priority >= 0 && x->priority == r->best;
}

static st_verdict message_in(st_server *srv, st_host *h, st_stanza *st, const st_jid *from,
                             const st_jid *to, int navailable)
{
    if (navailable == 0 || !to->node || !eligible(st)) return ST_PASS;
    /* §6.1: a MUC private message to one full JID stays with that client */
    if (to->resource && st_child(st->root, "x", NS_MUC_USER)) return ST_PASS;
    char bare[2100];
    st_jid bj = *to;
    bj.resource = NULL;
    if (st_jid_format(&bj, 0, bare, sizeof bare) < 0) return ST_PASS;
    st_user *u = st_user_find(srv, bare);
    if (!u) return ST_PASS;
    recv_ctx r = {.to = to, .from = from, .best = best_priority(u)};
    copy_to(u, st, "received", skip_recipient, &r);
    return ST_PASS;
}

static const char *const features[] = {NS_CARBONS, NS_CARBONS_RULES, NULL};

static const st_iq_handler iqs[] = {
    {NS_CARBONS, "enable", ST_IQ_SET, ST_TO_ACCOUNT | ST_TO_HOST, enable},
    {NS_CARBONS, "disable", ST_IQ_SET, ST_TO_ACCOUNT | ST_TO_HOST, disable},
    {0},
};

static const st_hooks hooks = {
    .message_out = message_out,
    .message_in = message_in,
};

const st_module mod_carbons = {
    .name = "carbons",
    .spec = "XEP-0280",
    .title = "Message Carbons",
    .features = features,
    .iqs = iqs,
    .hooks = &hooks,
    /* below offline (95): received copies carry its XEP-0359 stanza-id */
    .priority = 85,
};
