/* mod_presence.c - RFC 6121 §3 (subscriptions) and §4 (presence).
 *
 * Subscriptions are processed twice, as the RFC describes them: outbound on
 * the sender's roster (the user's server), then inbound on the receiver's
 * roster (the contact's server). Both halves run here for local users; a
 * remote contact will get only the outbound half once s2s exists. Each half
 * runs when the roster it changes is in memory (st_roster_with), loading it
 * for an offline user if needed.
 *
 * Presence broadcast: a client's available presence is kept (with 'from'
 * stamped and no 'to') as the session's last presence and sent to every
 * contact with a 'from' or 'both' subscription and to the user's own
 * resources. The same stanza object goes to every recipient and its bytes
 * are serialised once; each recipient's 'to' is spliced in on the way out
 * (st_session_send_to). When a session ends for any reason, unavailable is
 * broadcast on its behalf, also to directed-presence recipients (§4.6). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/modules/presence.h"
#include "server/roster.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/xmlstream.h"
#include "starling/error.h"

enum sub_type { T_SUBSCRIBE, T_SUBSCRIBED, T_UNSUBSCRIBE, T_UNSUBSCRIBED, T_OTHER };

static enum sub_type sub_type(const char *t)
{
    if (!t) return T_OTHER;
    if (strcmp(t, "subscribe") == 0) return T_SUBSCRIBE;
    if (strcmp(t, "subscribed") == 0) return T_SUBSCRIBED;
    if (strcmp(t, "unsubscribe") == 0) return T_UNSUBSCRIBE;
    if (strcmp(t, "unsubscribed") == 0) return T_UNSUBSCRIBED;
    return T_OTHER;
}

static int has_from(st_sub s)
{
    return s == ST_SUB_FROM || s == ST_SUB_BOTH;
}

static int has_to(st_sub s)
{
    return s == ST_SUB_TO || s == ST_SUB_BOTH;
}

/* Copy the row for jid from u's roster into *out (a fresh row if none). */
static int row_for(st_user *u, const char *jid, st_roster_item *out)
{
    st_roster_item *cur = st_roster_find(u, jid);
    if (cur) return st_roster_item_copy(out, cur);
    memset(out, 0, sizeof *out);
    out->jid = st_strdup(jid);
    return out->jid ? 0 : -1;
}

static st_user *local_user(st_server *s, const st_jid *j)
{
    st_host *h = j->node ? st_server_host(s, j->domain) : NULL;
    return h ? st_user_get(s, h, j->node) : NULL;
}

/* ---- delivery of presence to a local bare JID ---- */

/* Deliver pres (from 'from_full', no 'to') to every available resource of
 * the local user 'to_bare', passing the filters both ways. */
static void deliver_to_contact(st_server *s, st_stanza *pres, const st_jid *from,
                               const char *to_bare)
{
    st_jid to;
    if (st_jid_parse(&to, to_bare, strlen(to_bare)) != 0) return;
    st_host *h = st_server_host(s, to.domain);
    st_host *fh = st_server_host(s, from->domain);
    if (!h) goto out; /* a remote contact: presence goes nowhere until s2s */
    if (fh && st_route_filter(s, fh, pres, from, &to, 1) == ST_HANDLED) goto out;
    if (st_route_filter(s, h, pres, &to, from, 0) == ST_HANDLED) goto out;
    st_user *u = st_user_find(s, to_bare);
    for (st_session *x = u ? u->sessions : NULL; x; x = x->next_of_user)
        if (x->available) st_session_send_to(x, pres, to_bare);
out:
    st_jid_free(&to);
}

/* Send every available presence of user u (one per resource) to to_bare. */
static void send_presences_of(st_user *u, const char *to_bare)
{
    for (st_session *x = u->sessions; x; x = x->next_of_user)
        if (x->available && x->presence) deliver_to_contact(u->srv, x->presence, &x->jid, to_bare);
}

/* Send unavailable from every available resource of u to to_bare. */
static void send_unavailable_of(st_user *u, const char *to_bare)
{
    for (st_session *x = u->sessions; x; x = x->next_of_user) {
        if (!x->available) continue;
        st_stanza *p = st_stanza_new("presence", ST_NS_CLIENT);
        if (!p) continue;
        st_attr_set(p, "from", x->full);
        st_attr_set(p, "type", "unavailable");
        if (st_stanza_ok(p)) deliver_to_contact(u->srv, p, &x->jid, to_bare);
        st_stanza_unref(p);
    }
}

/* A subscription stanza from one bare JID to another, routed normally. */
static void route_subscription(st_server *s, const char *from, const char *to, const char *type,
                               const st_stanza *orig)
{
    st_stanza *p = orig ? st_stanza_copy(orig) : st_stanza_new("presence", ST_NS_CLIENT);
    if (!p) return;
    st_attr_set(p, "from", from);
    st_attr_set(p, "to", to);
    st_attr_set(p, "type", type);
    st_attr_set(p, "id", orig ? st_get(orig, "id") : NULL);
    if (st_stanza_ok(p)) st_route(s, p);
    st_stanza_unref(p);
}

/* Give a subscription stanza to the user's available resources. */
static void to_resources(st_user *u, st_stanza *st)
{
    for (st_session *x = u->sessions; x; x = x->next_of_user)
        if (x->available) st_session_send_to(x, st, u->bare);
}

/* ---- outbound subscription processing (the user's server, §3.x.2) ---- */

typedef struct sub_ctx {
    st_stanza *st; /* the client's stanza, with a reference; may be NULL */
    char contact[3100];
    char from[3100]; /* the other side (inbound) */
    enum sub_type type;
} sub_ctx;

static void outbound_ready(st_user *u, void *ud)
{
    sub_ctx *c = ud;
    st_roster_item it;
    int changed = 0, route = 1;
    if (!u->roster || row_for(u, c->contact, &it) != 0) goto out;
    switch (c->type) {
    case T_SUBSCRIBE: /* §3.1.2 */
        if (!has_to(it.sub) && !it.ask_out) {
            it.ask_out = 1;
            changed = 1;
        }
        if (!it.in_roster || it.removed) {
            it.in_roster = 1;
            it.removed = 0;
            changed = 1;
        }
        break;
    case T_SUBSCRIBED: /* §3.1.5 approve, or §3.4 pre-approve */
        if (it.pending_in) {
            it.sub = it.sub == ST_SUB_TO ? ST_SUB_BOTH : ST_SUB_FROM;
            it.pending_in = 0;
            st_free(it.pending_in_xml);
            it.pending_in_xml = NULL;
            if (!it.in_roster || it.removed) it.in_roster = 1, it.removed = 0;
            changed = 1;
        } else if (!has_from(it.sub)) {
            if (!it.approved) {
                it.approved = 1;
                if (!it.in_roster || it.removed) it.in_roster = 1, it.removed = 0;
                changed = 1;
            }
            route = 0; /* pre-approval stays with us */
        } else {
            route = 0; /* already subscribed: nothing to say */
        }
        break;
    case T_UNSUBSCRIBE: /* §3.3.2 */
        if (has_to(it.sub) || it.ask_out) {
            it.sub = it.sub == ST_SUB_BOTH ? ST_SUB_FROM : ST_SUB_NONE;
            it.ask_out = 0;
            changed = 1;
        }
        break;
    case T_UNSUBSCRIBED: /* §3.2.2 deny, §3.2 cancel */
        if (has_from(it.sub) || it.pending_in || it.approved) {
            it.sub = it.sub == ST_SUB_BOTH ? ST_SUB_TO : ST_SUB_NONE;
            it.pending_in = 0;
            it.approved = 0;
            st_free(it.pending_in_xml);
            it.pending_in_xml = NULL;
            changed = 1;
        }
        break;
    default:
        break;
    }
    if (changed && (it.in_roster || it.pending_in || it.removed)) st_roster_store(u, &it, 0);
    st_roster_item_free(&it);
    if (route) {
        static const char *const names[] = {"subscribe", "subscribed", "unsubscribe",
                                            "unsubscribed"};
        route_subscription(u->srv, u->bare, c->contact, names[c->type], c->st);
        if (c->type == T_SUBSCRIBED) send_presences_of(u, c->contact); /* §3.1.5 */
        if (c->type == T_UNSUBSCRIBED) send_unavailable_of(u, c->contact); /* §3.2.2 */
    }
out:
    st_stanza_unref(c->st);
    st_free(c);
}

static void outbound(st_user *u, st_stanza *st, const char *contact, enum sub_type t)
{
    sub_ctx *c = st_calloc(1, sizeof *c);
    if (!c) return;
    c->st = st ? st_stanza_ref(st) : NULL;
    c->type = t;
    snprintf(c->contact, sizeof c->contact, "%s", contact);
    if (st_roster_with(u, outbound_ready, c) != 0) {
        st_stanza_unref(c->st);
        st_free(c);
    }
}

void st_presence_send_subscription(st_user *u, const char *contact, const char *type)
{
    enum sub_type t = sub_type(type);
    if (t != T_OTHER) outbound(u, NULL, contact, t);
}

/* ---- inbound subscription processing (the contact's server, §3.x.3) ---- */

static void inbound_ready(st_user *u, void *ud)
{
    sub_ctx *c = ud;
    st_roster_item it;
    if (!u->roster) goto out;
    if (!u->roster->exists) {
        /* no such account: a subscribe is answered with unsubscribed (§3.1.3) */
        if (c->type == T_SUBSCRIBE) route_subscription(u->srv, u->bare, c->from, "unsubscribed", NULL);
        goto out;
    }
    if (c->type == T_SUBSCRIBE && !st_roster_find(u, c->from) &&
        u->roster->items.count >= 2 * ST_ROSTER_HARD_MAX) {
        /* A flood of requests from strangers must not grow the roster
         * table without bound: past this, new requests are dropped. */
        st_warn("presence", "%s: too many pending subscription requests, dropping one from %s",
                u->bare, c->from);
        goto out;
    }
    if (row_for(u, c->from, &it) != 0) goto out;
    int changed = 0, deliver = 0;
    switch (c->type) {
    case T_SUBSCRIBE:
        if (has_from(it.sub)) {
            /* already subscribed: confirm on the user's behalf (§3.1.3) */
            route_subscription(u->srv, u->bare, c->from, "subscribed", NULL);
            send_presences_of(u, c->from);
        } else if (it.approved) {
            /* pre-approved (§3.4): accept at once */
            it.sub = it.sub == ST_SUB_TO ? ST_SUB_BOTH : ST_SUB_FROM;
            it.approved = 0;
            changed = 1;
            route_subscription(u->srv, u->bare, c->from, "subscribed", NULL);
            send_presences_of(u, c->from);
        } else {
            /* keep the request (delivered again at the next available
             * presence while unanswered) and show it to online resources */
            st_buf b;
            st_buf_init(&b, 65536);
            /* stored with its namespace declared, so it parses back as jabber:client */
            if (st_serialize(c->st->root, "", &b) == 0) {
                st_free(it.pending_in_xml);
                it.pending_in_xml = st_buf_steal(&b, NULL);
            }
            st_buf_free(&b);
            it.pending_in = 1;
            changed = 1;
            deliver = 1;
        }
        break;
    case T_SUBSCRIBED: /* §3.1.6 */
        if (it.ask_out) {
            it.sub = it.sub == ST_SUB_FROM ? ST_SUB_BOTH : ST_SUB_TO;
            it.ask_out = 0;
            changed = deliver = 1;
        }
        break;
    case T_UNSUBSCRIBE: /* §3.3.3 */
        if (has_from(it.sub) || it.pending_in) {
            int was_from = has_from(it.sub);
            it.sub = it.sub == ST_SUB_BOTH ? ST_SUB_TO : ST_SUB_NONE;
            it.pending_in = 0;
            st_free(it.pending_in_xml);
            it.pending_in_xml = NULL;
            changed = deliver = 1;
            if (was_from) send_unavailable_of(u, c->from);
        }
        break;
    case T_UNSUBSCRIBED: /* §3.2.3 */
        if (has_to(it.sub) || it.ask_out) {
            it.sub = it.sub == ST_SUB_BOTH ? ST_SUB_FROM : ST_SUB_NONE;
            it.ask_out = 0;
            changed = deliver = 1;
        }
        break;
    default:
        break;
    }
    if (changed) st_roster_store(u, &it, 0);
    st_roster_item_free(&it);
    if (deliver) {
        st_stanza *p = st_stanza_copy(c->st);
        if (p) {
            st_node_remove_attr(p, p->root, "to");
            if (st_stanza_ok(p)) to_resources(u, p);
            st_stanza_unref(p);
        }
    }
out:
    st_stanza_unref(c->st);
    st_free(c);
}

/* ---- probes (§4.3) ---- */

static void answer_probe(st_user *u, const char *prober_bare)
{
    st_roster_item *it = st_roster_find(u, prober_bare);
    if (!it || !has_from(it->sub)) return; /* reveal nothing (§4.3.2) */
    send_presences_of(u, prober_bare);
}

static void probe_ready(st_user *u, void *ud)
{
    sub_ctx *c = ud;
    if (u->roster) answer_probe(u, c->from);
    st_free(c);
}

/* ---- initial presence ---- */

typedef struct initial_ctx {
    st_session *sess;
} initial_ctx;

static int probe_contact(void *ud, st_roster_item *it)
{
    st_session *sess = ud;
    if (!st_roster_visible(it) || !has_to(it->sub)) return 0;
    st_user *c = st_user_find(sess->srv, it->jid);
    if (!c) return 0; /* offline or remote: nothing to report yet */
    for (st_session *x = c->sessions; x; x = x->next_of_user) {
        if (!x->available || !x->presence) continue;
        if (st_route_filter(sess->srv, sess->host, x->presence, &sess->jid, &x->jid, 0) == ST_HANDLED)
            continue;
        st_session_send_to(sess, x->presence, sess->bare);
    }
    return 0;
}

static int pending_request(void *ud, st_roster_item *it)
{
    st_session *sess = ud;
    if (!it->pending_in || !it->pending_in_xml) return 0;
    const char *err = NULL;
    st_stanza *p = st_xml_parse_element(it->pending_in_xml, strlen(it->pending_in_xml), &err);
    if (!p) return 0;
    st_node_remove_attr(p, p->root, "to");
    st_session_send_to(sess, p, sess->bare);
    st_stanza_unref(p);
    return 0;
}

static int broadcast_to_subscribers(void *ud, st_roster_item *it)
{
    st_session *sess = ud;
    if (st_roster_visible(it) && has_from(it->sub))
        deliver_to_contact(sess->srv, sess->presence, &sess->jid, it->jid);
    return 0;
}

/* Broadcast pres (the session's own presence) to its subscribers and own resources. */
static void broadcast(st_session *sess, st_stanza *pres)
{
    st_user *u = sess->user;
    st_stanza *keep = sess->presence;
    sess->presence = pres;
    st_roster_each(u, broadcast_to_subscribers, sess);
    sess->presence = keep;
    for (st_session *x = u->sessions; x; x = x->next_of_user)
        if (x->available || x == sess) st_session_send_to(x, pres, u->bare);
}

typedef struct bcast_ctx {
    char full[3100];
    st_stanza *pres;
    int initial;
} bcast_ctx;

static int send_directed_unavailable(void *ud, const char *key, void *v)
{
    st_session *sess = ud;
    st_stanza *p = st_stanza_new("presence", ST_NS_CLIENT);
    if (!p) return 0;
    st_attr_set(p, "from", sess->full);
    st_attr_set(p, "to", key);
    st_attr_set(p, "type", "unavailable");
    if (st_stanza_ok(p)) st_route(sess->srv, p);
    st_stanza_unref(p);
    st_free((char *)key);
    return 0;
}

static void clear_directed(st_session *sess)
{
    st_map_each(&sess->directed, send_directed_unavailable, sess);
    st_map_free(&sess->directed);
    st_map_init(&sess->directed);
}

static void bcast_ready(st_user *u, void *ud)
{
    bcast_ctx *b = ud;
    st_session *sess = st_session_find(u->srv, b->full);
    if (!sess || sess->user != u) goto out;
    const char *type = st_get(b->pres, "type");
    if (!type) {
        broadcast(sess, b->pres);
        if (b->initial) {
            /* §4.2.2: probe the contacts we are subscribed to, and show
             * the requests that waited while we were away (§3.1.3) */
            st_roster_each(u, probe_contact, sess);
            for (st_session *x = u->sessions; x; x = x->next_of_user)
                if (x != sess && x->available && x->presence)
                    st_session_send_to(sess, x->presence, u->bare);
            st_roster_each(u, pending_request, sess);
        }
    } else {
        broadcast(sess, b->pres);
        clear_directed(sess);
    }
out:
    st_stanza_unref(b->pres);
    st_free(b);
}

static void broadcast_later(st_session *sess, st_stanza *pres, int initial)
{
    bcast_ctx *b = st_calloc(1, sizeof *b);
    if (!b) return;
    snprintf(b->full, sizeof b->full, "%s", sess->full);
    b->pres = st_stanza_ref(pres);
    b->initial = initial;
    if (st_roster_with(sess->user, bcast_ready, b) != 0) {
        st_stanza_unref(b->pres);
        st_free(b);
    }
}

/* ---- hooks ---- */

static st_verdict presence_out(st_session *sess, st_stanza *st, const st_jid *to)
{
    const char *type = st_get(st, "type");
    enum sub_type t = sub_type(type);
    if (!to) {
        if (!type) { /* available: §4.2 initial, §4.4 updates */
            const char *p = st_child_text(st->root, "priority", ST_NS_CLIENT);
            long v = p ? strtol(p, NULL, 10) : 0;
            sess->priority = v < -128 ? -128 : v > 127 ? 127 : (int)v;
            int initial = !sess->initial_sent;
            sess->initial_sent = 1;
            sess->available = 1;
            /* kept until the next one, for probes: a tight copy, not the
             * parser's 1 KB arena (one per session adds up) */
            st_stanza *keep = st_stanza_copy_tight(st);
            st_stanza_unref(sess->presence);
            sess->presence = keep ? keep : st_stanza_ref(st);
            broadcast_later(sess, st, initial);
        } else if (strcmp(type, "unavailable") == 0) { /* §4.5 */
            if (sess->available || sess->initial_sent) broadcast_later(sess, st, 0);
            sess->available = 0;
            st_stanza_unref(sess->presence);
            sess->presence = NULL;
        }
        /* other types without 'to' mean nothing: dropped */
        return ST_HANDLED;
    }
    if (t != T_OTHER) {
        char *bare = st_jid_bare(to);
        if (bare) outbound(sess->user, st, bare, t);
        st_free(bare);
        return ST_HANDLED;
    }
    if (type && strcmp(type, "probe") == 0) return ST_HANDLED; /* servers probe, not clients */
    if (!type || strcmp(type, "unavailable") == 0) {
        /* §4.6 directed presence: remember whom to tell when we go */
        char *target = st_jid_full(to);
        if (!target) return ST_PASS;
        char *bare = st_jid_bare(to);
        st_roster_item *it = bare ? st_roster_find(sess->user, bare) : NULL;
        st_free(bare);
        int subscribed = it && st_roster_visible(it) && has_from(it->sub);
        char *stored = st_map_get(&sess->directed, target); /* value is the key */
        if (!type) {
            if (!subscribed && sess->available && !stored &&
                st_map_put(&sess->directed, target, target) == 0)
                target = NULL; /* the map owns it now */
        } else if (stored) {
            st_map_del(&sess->directed, target);
            st_free(stored);
        }
        st_free(target);
    }
    return ST_PASS;
}

static st_verdict presence_in(st_server *s, st_host *h, st_stanza *st, const st_jid *from,
                              const st_jid *to)
{
    const char *type = st_get(st, "type");
    enum sub_type t = sub_type(type);
    if (!from) return ST_PASS;
    if (t != T_OTHER || (type && strcmp(type, "probe") == 0)) {
        st_user *u = local_user(s, to);
        if (!u) return ST_HANDLED;
        sub_ctx *c = st_calloc(1, sizeof *c);
        char *fb = st_jid_bare(from);
        if (!c || !fb) {
            st_free(c);
            st_free(fb);
            st_user_release(u);
            return ST_HANDLED;
        }
        snprintf(c->from, sizeof c->from, "%s", fb);
        st_free(fb);
        c->type = t;
        c->st = st_stanza_ref(st);
        st_user_hold(u);
        int r;
        if (t == T_OTHER) {
            st_stanza_unref(c->st);
            c->st = NULL;
            r = st_roster_with(u, probe_ready, c);
        } else {
            r = st_roster_with(u, inbound_ready, c);
        }
        if (r != 0) {
            st_stanza_unref(c->st);
            st_free(c);
        }
        st_user_release(u);
        return ST_HANDLED;
    }
    return ST_PASS; /* available/unavailable/error: the router delivers */
}

static void session_end(st_session *sess)
{
    if (!sess->available && !sess->initial_sent) return;
    /* §4.5.2: the server sends unavailable on behalf of a session that
     * ended without saying so (close, crash, timeout, replaced) */
    st_stanza *p = st_stanza_new("presence", ST_NS_CLIENT);
    if (!p) return;
    st_attr_set(p, "from", sess->full);
    st_attr_set(p, "type", "unavailable");
    if (st_stanza_ok(p) && sess->user->roster) {
        sess->available = 0;
        broadcast(sess, p);
        clear_directed(sess);
    }
    st_stanza_unref(p);
}

static const st_hooks hooks = {
    .presence_out = presence_out,
    .presence_in = presence_in,
};

const st_module mod_presence = {
    .name = "presence",
    .spec = "RFC 6121 §3-4",
    .title = "Presence and subscriptions",
    .session_end = session_end,
    .hooks = &hooks,
    .priority = 90,
};
