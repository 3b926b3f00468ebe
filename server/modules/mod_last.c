/* mod_last.c - XEP-0012 Last Activity: how long ago a user logged out, and
 * the server's uptime.
 *
 * Recording: when a user's last available session goes away (an
 * unavailable presence, seen before mod_presence takes it, or a session
 * that ends while still available) the time and the status text are kept
 * with kv_put in the user's "last" store, so they survive restarts.
 *
 * Answering (XEP-0012 §4-§6):
 *   to the server's domain   seconds since the server started;
 *   to a user's bare JID     0 if the user has an available resource, else
 *                            the seconds since the recorded logout with its
 *                            status; only for requesters the user's presence
 *                            is shared with (roster 'from' or 'both'), and
 *                            the user themselves; others get forbidden.
 * A query to a full JID is the client's to answer and is routed to it. The
 * subscription check reads the target's roster (loaded if the user is
 * offline) and the logout time comes from storage, so both answers are
 * deferred. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include "server/log.h"
#include "server/roster.h"
#include "server/server.h"
#include "starling/alloc.h"

#define NS_LAST "jabber:iq:last"
#define STORE "last"
#define KEY "logout"
#define MAX_STATUS 1024 /* bytes of status text kept */

/* ---- recording the logout ---- */

typedef struct put_job {
    st_server *srv;
    char host[1024];
    char user[1024];
    char val[64 + MAX_STATUS];
    size_t len;
    int rc; /* 0 stored (or no account), -1 failed */
} put_job;

static void put_work(void *h, void *arg)
{
    put_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    st_user_creds creds;
    /* an account being removed ends its sessions after the delete: nothing
     * to record then (and the insert would fail its foreign key) */
    j->rc = ops->user_get(h, j->host, j->user, &creds);
    OPENSSL_cleanse(&creds, sizeof creds);
    if (j->rc == 1) j->rc = ops->kv_put(h, j->host, j->user, STORE, KEY, j->val, j->len);
}

static void put_done(void *arg)
{
    put_job *j = arg;
    if (j->rc < 0) st_warn("mod_last", "%s@%s: could not store the logout time", j->user, j->host);
    st_free(j);
}

/* Is s the only available session of its user? */
static int last_available(const st_session *s)
{
    for (const st_session *x = s->user->sessions; x; x = x->next_of_user)
        if (x != s && x->available) return 0;
    return 1;
}

/* Store "<unix seconds>\n<status>" for s's user. */
static void record(st_session *s, const char *status)
{
    put_job *j = st_calloc(1, sizeof *j);
    if (!j) {
        st_warn("mod_last", "%s: out of memory while recording the logout", s->full);
        return;
    }
    j->srv = s->srv;
    snprintf(j->host, sizeof j->host, "%s", s->host->name);
    snprintf(j->user, sizeof j->user, "%s", s->jid.node);
    size_t n = status ? strlen(status) : 0;
    if (n > MAX_STATUS) {
        n = MAX_STATUS;
        while (n > 0 && ((unsigned char)status[n] & 0xC0) == 0x80) n--; /* whole characters */
    }
    int w = snprintf(j->val, sizeof j->val, "%lld\n%.*s", (long long)time(NULL), (int)n,
                     status ? status : "");
    j->len = w > 0 && (size_t)w < sizeof j->val ? (size_t)w : 0;
    if (j->len == 0 || st_storage_submit(s->srv->store, put_work, put_done, j) != 0) {
        st_warn("mod_last", "%s: could not queue recording the logout", s->full);
        st_free(j);
    }
}

static st_verdict presence_out(st_session *s, st_stanza *st, const st_jid *to)
{
    const char *type = st_get(st, "type");
    if (!to && type && strcmp(type, "unavailable") == 0 && s->available && last_available(s))
        record(s, st_child_text(st->root, "status", ST_NS_CLIENT));
    return ST_PASS;
}

static void session_end(st_session *s)
{
    /* ended while available: it logged out without a word (runs before
     * mod_presence marks it unavailable) */
    if (s->available && last_available(s)) record(s, NULL);
}

/* ---- answering ---- */

static st_stanza *last_reply(const st_stanza *iq, long long seconds, const char *status)
{
    char secs[32];
    st_stanza *r = st_iq_reply(iq);
    if (!r) return NULL;
    snprintf(secs, sizeof secs, "%lld", seconds < 0 ? 0 : seconds);
    st_tag(r, "query", NS_LAST);
    st_attr_set(r, "seconds", secs);
    if (status && *status) st_text(r, status);
    if (st_stanza_ok(r)) return r;
    st_stanza_unref(r);
    return NULL;
}

static void answer(st_iq_pending *p, long long seconds, const char *status)
{
    st_stanza *r = last_reply(st_iq_pending_iq(p), seconds, status);
    if (!r) {
        st_iq_pending_error(p, "internal-server-error", NULL);
        return;
    }
    st_iq_pending_result(p, r);
    st_stanza_unref(r);
}

static st_verdict server_last(st_iq_ctx *c)
{
    /* XEP-0012 §6: for a server, the time since it started */
    st_stanza *r = last_reply(c->iq, (long long)(time(NULL) - c->srv->started), NULL);
    if (r) st_iq_result(c, r);
    else st_iq_error(c, "internal-server-error", NULL);
    st_stanza_unref(r);
    return ST_HANDLED;
}

typedef struct query {
    st_iq_pending *p;
    char requester[2100]; /* bare JID */
    int own;              /* the user asks about themselves */
    /* storage job */
    char host[1024];
    char user[1024];
    char *val;
    size_t len;
    int rc;
} query;

static void query_free(query *q)
{
    st_free(q->val);
    st_free(q);
}

static void get_work(void *h, void *arg)
{
    query *q = arg;
    q->rc = st_storage_ops(st_iq_pending_server(q->p)->store)
                ->kv_get(h, q->host, q->user, STORE, KEY, &q->val, &q->len);
}

static void get_done(void *arg)
{
    query *q = arg;
    char *end = NULL;
    long long t = q->rc == 1 ? strtoll(q->val, &end, 10) : 0;
    if (q->rc < 0) {
        st_iq_pending_error(q->p, "internal-server-error", NULL);
    } else if (q->rc == 0) {
        st_iq_pending_error(q->p, "item-not-found", "no logout has been recorded for this user");
    } else if (!end || end == q->val || (*end && *end != '\n')) {
        st_warn("mod_last", "%s@%s: damaged last activity record", q->user, q->host);
        st_iq_pending_error(q->p, "internal-server-error", NULL);
    } else {
        answer(q->p, (long long)time(NULL) - t, *end ? end + 1 : NULL);
    }
    query_free(q);
}

static int has_from(st_sub s)
{
    return s == ST_SUB_FROM || s == ST_SUB_BOTH;
}

static void roster_ready(st_user *u, void *ud)
{
    query *q = ud;
    if (!u->roster) {
        st_iq_pending_error(q->p, "internal-server-error", NULL);
        goto done;
    }
    if (!u->roster->exists) {
        st_iq_pending_error(q->p, "service-unavailable", NULL);
        goto done;
    }
    if (!q->own) {
        /* XEP-0012 §4: only those allowed to see the user's presence */
        st_roster_item *it = st_roster_find(u, q->requester);
        if (!it || !st_roster_visible(it) || !has_from(it->sub)) {
            st_iq_pending_error(q->p, "forbidden", NULL);
            goto done;
        }
    }
    for (st_session *x = u->sessions; x; x = x->next_of_user) {
        if (x->available) { /* §4: online now */
            answer(q->p, 0, NULL);
            goto done;
        }
    }
    snprintf(q->host, sizeof q->host, "%s", u->host->name);
    snprintf(q->user, sizeof q->user, "%s", u->node);
    if (st_storage_submit(u->srv->store, get_work, get_done, q) == 0) return;
    st_iq_pending_error(q->p, "internal-server-error", NULL);
done:
    query_free(q);
}

static st_verdict user_last(st_iq_ctx *c)
{
    /* no 'to' is the account itself (RFC 6120 §10.3.3) */
    const st_jid *target = c->to ? c->to : c->from;
    if (!c->from || !target || !target->node) return ST_PASS;
    query *q = st_calloc(1, sizeof *q);
    st_user *u = q ? st_user_get(c->srv, c->host, target->node) : NULL;
    if (!u || st_jid_format(c->from, 0, q->requester, sizeof q->requester) < 0 ||
        !(q->p = st_iq_defer(c))) {
        st_free(q);
        if (u) st_user_release(u);
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    q->own = !c->to || (c->from->node && strcmp(c->from->node, target->node) == 0 &&
                        strcmp(c->from->domain, target->domain) == 0);
    st_user_hold(u);
    if (st_roster_with(u, roster_ready, q) != 0) {
        st_iq_pending_error(q->p, "internal-server-error", NULL);
        query_free(q);
    }
    st_user_release(u);
    return ST_HANDLED;
}

static const char *const features[] = {NS_LAST, NULL};

static const st_iq_handler iqs[] = {
    /* first, so a query without 'to' (account and host both match) is the account's */
    {NS_LAST, "query", ST_IQ_GET, ST_TO_ACCOUNT | ST_TO_USER, user_last},
    {NS_LAST, "query", ST_IQ_GET, ST_TO_HOST, server_last},
    {0},
};

static const st_hooks hooks = {
    .presence_out = presence_out,
};

const st_module mod_last = {
    .name = "last",
    .spec = "XEP-0012",
    .title = "Last Activity",
    .features = features,
    .iqs = iqs,
    .session_end = session_end,
    .hooks = &hooks,
    /* above presence (90): sees the unavailable presence and the ending
     * session while they still count as available */
    .priority = 95,
};
