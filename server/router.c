/* router.c - where stanzas go (RFC 6120 §8 and §10, RFC 6121 §8.5).
 *
 * Every stanza from a client gets its 'from' stamped with the session's full
 * JID here, so nothing downstream trusts a client-supplied address. Then:
 *
 *   to another domain         -> remote-server-not-found (until s2s exists)
 *   to our domain             -> the server: IQs to the module tables
 *   to user@domain/resource   -> that session, or treated as bare (messages)
 *   to user@domain            -> IQs handled on the account's behalf;
 *                                messages to the best available resource(s)
 *
 * Every iq get/set gets exactly one answer: a module that claims it answers
 * it, anything unclaimed gets service-unavailable. Errors and iq results are
 * never answered, so two servers cannot bounce errors forever.
 *
 * Bare-JID delivery policy (RFC 6121 §8.5.2.1.1 leaves ties open): a
 * normal or chat message goes to every available resource that shares the
 * highest non-negative priority; headline to all non-negative ones. */
#include <stdlib.h>
#include <string.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/error.h"

static int iq_type(const char *t)
{
    if (!t) return 0;
    if (strcmp(t, "get") == 0) return ST_IQ_GET;
    if (strcmp(t, "set") == 0) return ST_IQ_SET;
    if (strcmp(t, "result") == 0) return 4;
    if (strcmp(t, "error") == 0) return 8;
    return 0;
}

static int is_error(const st_stanza *st)
{
    const char *t = st_get(st, "type");
    return t && strcmp(t, "error") == 0;
}

/* ---- hooks (module tables, highest priority first; see module.h) ---- */

#define RUN_HOOKS(h, name, ...)                                                                    \
    do {                                                                                           \
        for (size_t i_ = 0; i_ < (h)->nmods; i_++) {                                               \
            const st_hooks *hk_ = (h)->mods[i_]->hooks;                                            \
            if (hk_ && hk_->name && hk_->name(__VA_ARGS__) == ST_HANDLED) return ST_HANDLED;       \
        }                                                                                          \
        return ST_PASS;                                                                            \
    } while (0)

static st_verdict run_presence_out(st_session *sess, st_stanza *st, const st_jid *to)
{
    RUN_HOOKS(sess->host, presence_out, sess, st, to);
}

static st_verdict run_message_out(st_session *sess, st_stanza *st, const st_jid *to)
{
    RUN_HOOKS(sess->host, message_out, sess, st, to);
}

static st_verdict run_presence_in(st_server *s, st_host *h, st_stanza *st, const st_jid *from,
                                  const st_jid *to)
{
    RUN_HOOKS(h, presence_in, s, h, st, from, to);
}

static st_verdict run_message_in(st_server *s, st_host *h, st_stanza *st, const st_jid *from,
                                 const st_jid *to, int n)
{
    RUN_HOOKS(h, message_in, s, h, st, from, to, n);
}

static st_verdict run_filter(st_server *s, st_host *h, st_stanza *st, const st_jid *user,
                             const st_jid *peer, int outbound)
{
    RUN_HOOKS(h, filter, s, h, st, user, peer, outbound);
}

st_verdict st_route_filter(st_server *s, st_host *h, st_stanza *st, const st_jid *user,
                           const st_jid *peer, int outbound)
{
    return run_filter(s, h, st, user, peer, outbound);
}

void st_route_error(st_server *s, st_stanza *st, const char *condition, const char *text)
{
    const char *t = st_get(st, "type");
    if (t && (strcmp(t, "error") == 0 || (strcmp(st_name(st), "iq") == 0 &&
                                          strcmp(t, "result") == 0)))
        return;
    if (!st_get(st, "from")) return; /* nowhere to send it */
    st_stanza *e = st_error_reply(st, condition, text);
    if (!e) return;
    st_route(s, e);
    st_stanza_unref(e);
}

/* ---- IQ dispatch through the module tables ---- */

static void dispatch_iq(st_server *s, st_host *h, st_stanza *st, const st_jid *from,
                        const st_jid *to, int where, st_session *sess, st_conn *conn)
{
    int type = iq_type(st_get(st, "type"));
    if (type != ST_IQ_GET && type != ST_IQ_SET) {
        /* results/errors: answers to our own IQs (sent from the domain, or
         * from a user's bare JID on the account's behalf, e.g. XEP-0357
         * publishes), else consumed silently */
        if (where & (ST_TO_HOST | ST_TO_ACCOUNT | ST_TO_USER)) st_server_iq_reply(s, st);
        return;
    }
    st_node *payload = st_first_elem(st->root);
    if (!payload || st_next_elem(payload)) {
        /* RFC 6120 §8.2.3: exactly one payload child */
        if (conn) {
            st_stanza *e = st_error_reply(st, "bad-request", "an iq needs exactly one child");
            if (e) st_conn_send(conn, e);
            st_stanza_unref(e);
        } else {
            st_route_error(s, st, "bad-request", "an iq needs exactly one child");
        }
        return;
    }
    st_iq_ctx ctx = {
        .srv = s, .host = h, .session = sess, .conn = conn, .iq = st,
        .payload = payload, .from = from, .to = to, .type = type,
    };
    for (size_t i = 0; i < h->nmods; i++) {
        const st_iq_handler *ih = h->mods[i]->iqs;
        for (; ih && ih->ns; ih++) {
            if (!(ih->types & type) || !(ih->where & where)) continue;
            if (strcmp(ih->ns, payload->ns) != 0) continue;
            if (ih->name && strcmp(ih->name, payload->name) != 0) continue;
            if (ih->fn(&ctx) == ST_HANDLED) return;
        }
    }
    st_iq_error(&ctx, "service-unavailable", NULL);
}

void st_router_preauth_iq(st_conn *c, st_host *h, st_stanza *st)
{
    if (!st_get(st, "id")) {
        st_conn_close(c, "bad-format", "an iq needs an id");
        return;
    }
    dispatch_iq(h->srv, h, st, NULL, NULL, ST_PRE_AUTH, NULL, c);
}

/* ---- delivery to local users ---- */

/* The highest non-negative priority among available resources, or -1. */
static int best_priority(const st_user *u)
{
    int best = -1;
    for (st_session *x = u ? u->sessions : NULL; x; x = x->next_of_user)
        if (x->available && x->priority >= 0 && x->priority > best) best = x->priority;
    return best;
}

static int bare_targets(const st_user *u, int headline)
{
    int best = best_priority(u), n = 0;
    if (best < 0) return 0;
    for (st_session *x = u->sessions; x; x = x->next_of_user)
        if (x->available && x->priority >= 0 && (headline || x->priority == best)) n++;
    return n;
}

static void deliver_bare_message(st_server *s, st_host *h, st_stanza *st, const char *bare,
                                 const st_jid *from, const st_jid *to)
{
    const char *type = st_get(st, "type");
    st_user *u = st_user_find(s, bare);
    if (type && strcmp(type, "groupchat") == 0) {
        st_route_error(s, st, "service-unavailable", NULL);
        return;
    }
    int headline = type && strcmp(type, "headline") == 0;
    int n = bare_targets(u, headline);
    st_jid bj = *to;
    bj.resource = NULL;
    if (run_message_in(s, h, st, from, &bj, n) == ST_HANDLED) return;
    if (n == 0) {
        /* No available resource and no module (offline storage) took it:
         * RFC 6121 §8.5.2.1.1 wants service-unavailable; headlines and
         * errors are silently dropped. */
        if (!headline && !is_error(st)) st_route_error(s, st, "service-unavailable", NULL);
        return;
    }
    int best = best_priority(u);
    for (st_session *x = u->sessions; x; x = x->next_of_user) {
        if (!x->available || x->priority < 0) continue;
        if (!headline && x->priority != best) continue;
        st_session_send(x, st);
    }
}

/* Presence to a local bare JID that no module took: every available resource. */
static void deliver_bare_presence(st_server *s, st_stanza *st, const char *bare)
{
    st_user *u = st_user_find(s, bare);
    for (st_session *x = u ? u->sessions : NULL; x; x = x->next_of_user)
        if (x->available) st_session_send(x, st);
}

/* ---- the routing core ---- */

static void route_to(st_server *s, st_stanza *st, const st_jid *to, st_session *origin)
{
    const char *name = st_name(st);
    int is_iq = strcmp(name, "iq") == 0, is_msg = strcmp(name, "message") == 0;
    st_host *h = st_server_host(s, to->domain);
    if (!h) {
        if (!is_error(st)) st_route_error(s, st, "remote-server-not-found", NULL);
        return;
    }
    st_jid fromj;
    const char *from = st_get(st, "from");
    int have_from = from && st_jid_parse(&fromj, from, strlen(from)) == 0;

    if (!to->node) {
        if (is_iq) {
            if (!to->resource)
                dispatch_iq(s, h, st, have_from ? &fromj : NULL, to, ST_TO_HOST, origin, NULL);
            else if (iq_type(st_get(st, "type")) <= ST_IQ_SET)
                st_route_error(s, st, "service-unavailable", NULL);
        } else if (is_msg && !is_error(st)) {
            st_route_error(s, st, "service-unavailable", NULL);
        }
        goto out;
    }
    char *bare = st_jid_bare(to);
    if (!bare) goto out;
    int is_pres = strcmp(name, "presence") == 0;
    /* blocking and other filters see every stanza for a local user */
    if (have_from && run_filter(s, h, st, to, &fromj, 0) == ST_HANDLED) goto done;
    if (is_pres && run_presence_in(s, h, st, have_from ? &fromj : NULL, to) == ST_HANDLED)
        goto done;
    if (to->resource) {
        char *full = st_jid_full(to);
        st_session *dst = full ? st_session_find(s, full) : NULL;
        st_free(full);
        if (dst) {
            if (is_msg && run_message_in(s, h, st, have_from ? &fromj : NULL, to, 1) == ST_HANDLED)
                goto done;
            st_session_send(dst, st);
        } else if (is_msg) {
            const char *t = st_get(st, "type");
            /* RFC 6121 §8.5.3.2.1: a gone resource is treated as the bare JID */
            if (t && strcmp(t, "groupchat") == 0) st_route_error(s, st, "service-unavailable", NULL);
            else if (!is_error(st)) deliver_bare_message(s, h, st, bare, have_from ? &fromj : NULL, to);
        } else if (is_iq) {
            st_route_error(s, st, "service-unavailable", NULL);
        }
        /* presence to a gone resource: silently ignored (RFC 6121 §4.6.3) */
    } else if (is_iq) {
        int own = have_from && fromj.node && strcmp(fromj.node, to->node) == 0 &&
                  strcmp(fromj.domain, to->domain) == 0;
        dispatch_iq(s, h, st, have_from ? &fromj : NULL, to, own ? ST_TO_ACCOUNT : ST_TO_USER,
                    origin, NULL);
    } else if (is_msg) {
        deliver_bare_message(s, h, st, bare, have_from ? &fromj : NULL, to);
    } else if (is_pres) {
        deliver_bare_presence(s, st, bare);
    }
done:
    st_free(bare);
out:
    if (have_from) st_jid_free(&fromj);
}

void st_route(st_server *s, st_stanza *st)
{
    const char *to = st_get(st, "to");
    st_jid j;
    if (!to) return;
    if (st_jid_parse(&j, to, strlen(to)) != 0) {
        st_route_error(s, st, "jid-malformed", NULL);
        return;
    }
    route_to(s, st, &j, NULL);
    st_jid_free(&j);
}

static void own_presence(st_session *sess, st_stanza *st)
{
    const char *type = st_get(st, "type");
    if (!type) {
        const char *p = st_child_text(st->root, "priority", ST_NS_CLIENT);
        long v = p ? strtol(p, NULL, 10) : 0;
        sess->priority = v < -128 ? -128 : v > 127 ? 127 : (int)v;
        sess->available = 1;
    } else if (strcmp(type, "unavailable") == 0) {
        sess->available = 0;
    }
    /* Broadcast to subscribers comes with the roster (RFC 6121 §4.2). */
}

void st_router_from_client(st_session *sess, st_stanza *st)
{
    st_server *s = sess->srv;
    const char *name = st_name(st);
    const char *from = st_get(st, "from");
    if (from) {
        /* RFC 6120 §8.1.2.1: the client may state its address, but it must be ours */
        st_jid fj;
        int ok = 0;
        if (st_jid_parse(&fj, from, strlen(from)) == 0) {
            ok = st_jid_equal(&fj, &sess->jid, fj.resource != NULL);
            st_jid_free(&fj);
        }
        if (!ok) {
            if (sess->conn) st_conn_close(sess->conn, "invalid-from", NULL);
            return;
        }
    }
    if (st_node_set_attr(st, st->root, "from", sess->full) != 0) return;

    if (strcmp(name, "iq") == 0) {
        int t = iq_type(st_get(st, "type"));
        if (!st_get(st, "id") || !t) {
            st_route_error(s, st, "bad-request", "an iq needs an id and a valid type");
            return;
        }
    }
    const char *to = st_get(st, "to");
    int is_pres = strcmp(name, "presence") == 0, is_msg = strcmp(name, "message") == 0;
    st_jid j;
    if (to && st_jid_parse(&j, to, strlen(to)) != 0) {
        st_route_error(s, st, "jid-malformed", NULL);
        return;
    }
    if (to && run_filter(s, sess->host, st, &sess->jid, &j, 1) == ST_HANDLED) goto done;
    if (is_pres && run_presence_out(sess, st, to ? &j : NULL) == ST_HANDLED) goto done;
    if (is_msg && run_message_out(sess, st, to ? &j : NULL) == ST_HANDLED) goto done;
    if (!to) {
        if (is_pres) {
            own_presence(sess, st);
        } else if (strcmp(name, "iq") == 0) {
            /* No 'to': the account itself answers (RFC 6120 §10.3.3) */
            dispatch_iq(s, sess->host, st, &sess->jid, NULL, ST_TO_ACCOUNT | ST_TO_HOST, sess,
                        NULL);
        } else {
            /* RFC 6120 §10.3.1: a message without 'to' is for the sender's bare JID */
            st_jid bare = sess->jid;
            bare.resource = NULL;
            route_to(s, st, &bare, sess);
        }
        return;
    }
    route_to(s, st, &j, sess);
done:
    if (to) st_jid_free(&j);
}

/* ---- IQ replies for modules ---- */

static void send_reply(st_server *s, st_conn *conn, st_stanza *r)
{
    if (conn) {
        /* before authentication the client has no address: no 'to' */
        st_node_remove_attr(r, r->root, "to");
        if (!st_conn_is_closed(conn)) st_conn_send(conn, r);
    } else {
        st_route(s, r);
    }
}

void st_iq_result(st_iq_ctx *c, st_stanza *reply)
{
    st_stanza *r = reply ? st_stanza_ref(reply) : st_iq_reply(c->iq);
    if (!r) return;
    send_reply(c->srv, c->conn, r);
    st_stanza_unref(r);
}

void st_iq_error(st_iq_ctx *c, const char *condition, const char *text)
{
    st_stanza *e = st_error_reply(c->iq, condition, text);
    if (!e) return;
    send_reply(c->srv, c->conn, e);
    st_stanza_unref(e);
}

struct st_iq_pending {
    st_server *srv;
    st_conn *conn;
    st_stanza *iq;
};

st_iq_pending *st_iq_defer(st_iq_ctx *c)
{
    st_iq_pending *p = st_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->srv = c->srv;
    p->conn = c->conn ? st_conn_ref(c->conn) : NULL;
    p->iq = st_stanza_ref(c->iq);
    return p;
}

st_stanza *st_iq_pending_iq(st_iq_pending *p)
{
    return p->iq;
}

st_server *st_iq_pending_server(st_iq_pending *p)
{
    return p->srv;
}

static void pending_free(st_iq_pending *p)
{
    if (p->conn) st_conn_unref(p->conn);
    st_stanza_unref(p->iq);
    st_free(p);
}

void st_iq_pending_result(st_iq_pending *p, st_stanza *reply)
{
    st_stanza *r = reply ? st_stanza_ref(reply) : st_iq_reply(p->iq);
    if (r) {
        send_reply(p->srv, p->conn, r);
        st_stanza_unref(r);
    }
    pending_free(p);
}

void st_iq_pending_error(st_iq_pending *p, const char *condition, const char *text)
{
    st_stanza *e = st_error_reply(p->iq, condition, text);
    if (e) {
        send_reply(p->srv, p->conn, e);
        st_stanza_unref(e);
    }
    pending_free(p);
}
