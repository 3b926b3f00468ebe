/* mod_roster.c - RFC 6121 §2 roster management, with roster versioning
 * (XEP-0237) and a configurable size limit.
 *
 * The roster lives in memory while the user is online (server/roster.c);
 * this module is the IQ face of it: get (full, or only the changes since the
 * client's version, as pushes), set (add or update name and groups) and
 * remove (which also cancels the subscriptions both ways, §2.5.2). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "server/modules/presence.h"
#include "server/roster.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/xmlstream.h"

extern const st_module mod_roster;

#define MAX_NAME 1023 /* RFC 6121 §2.1.2.4 / §2.1.2.5: the server may limit */

typedef struct get_ctx {
    st_iq_pending *p;
    st_session *sess_guard; /* only compared, never dereferenced after the wait */
    char full[3100];
    char ver[32];
    int has_ver;
} get_ctx;

typedef struct since_ctx {
    long long since;
    st_roster_item **rows; /* rows changed since 'since' */
    size_t n, cap;
    int oom;
} since_ctx;

static int add_visible(void *ud, st_roster_item *it)
{
    if (st_roster_visible(it)) st_roster_item_xml(ud, it);
    return 0;
}

static int collect_since(void *ud, st_roster_item *it)
{
    since_ctx *c = ud;
    if (it->ver <= c->since) return 0;
    if (!st_roster_visible(it) && it->pending_in && !it->removed) return 0; /* never shown */
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 16;
        st_roster_item **nr = st_realloc(c->rows, ncap * sizeof *nr);
        if (!nr) {
            c->oom = 1;
            return 1;
        }
        c->rows = nr;
        c->cap = ncap;
    }
    c->rows[c->n++] = it;
    return 0;
}

static int by_ver(const void *a, const void *b)
{
    long long x = (*(st_roster_item *const *)a)->ver, y = (*(st_roster_item *const *)b)->ver;
    return x < y ? -1 : x > y;
}

/* XEP-0237 §2.4: the changes since the client's version, oldest first, each
 * push carrying the version it produced. */
static void push_since(st_user *u, st_session *to, since_ctx *c)
{
    if (c->n > 1) qsort(c->rows, c->n, sizeof *c->rows, by_ver);
    for (size_t i = 0; i < c->n; i++) {
        char id[48], ver[32];
        st_server_make_id(u->srv, id, sizeof id);
        snprintf(ver, sizeof ver, "%lld", c->rows[i]->ver);
        st_stanza *p = st_iq_new("set", id);
        if (!p) continue;
        st_attr_set(p, "to", to->full);
        st_tag(p, "query", ST_NS_ROSTER);
        st_attr_set(p, "ver", ver);
        st_roster_item_xml(p, c->rows[i]);
        if (st_stanza_ok(p)) st_session_send(to, p);
        st_stanza_unref(p);
    }
}

static void get_ready(st_user *u, void *ud)
{
    get_ctx *g = ud;
    st_session *sess = st_session_find(u->srv, g->full);
    if (!u->roster) {
        st_iq_pending_error(g->p, "internal-server-error", "the roster could not be loaded");
        goto out;
    }
    if (sess) sess->interested = 1;
    char cur[32];
    snprintf(cur, sizeof cur, "%lld", u->roster->version);
    if (g->has_ver && sess) {
        char *end;
        long long since = strtoll(g->ver, &end, 10);
        if (*g->ver && !*end && since >= 0 && since <= u->roster->version) {
            since_ctx c = {.since = since};
            st_roster_each(u, collect_since, &c);
            if (!c.oom) {
                /* XEP-0237 §2.4: an empty result, then pushes for what changed */
                st_iq_pending_result(g->p, NULL);
                push_since(u, sess, &c);
                st_free(c.rows);
                goto out;
            }
            st_free(c.rows); /* fall back to the whole roster */
        }
    }
    st_stanza *r = st_iq_reply(st_iq_pending_iq(g->p));
    if (!r) {
        st_iq_pending_error(g->p, "internal-server-error", NULL);
        goto out;
    }
    st_tag(r, "query", ST_NS_ROSTER);
    st_attr_set(r, "ver", cur);
    st_roster_each(u, add_visible, r);
    if (st_stanza_ok(r)) st_iq_pending_result(g->p, r);
    else st_iq_pending_error(g->p, "internal-server-error", NULL);
    st_stanza_unref(r);
out:
    st_free(g);
}

static st_verdict roster_get(st_iq_ctx *c)
{
    if (!c->session) {
        st_iq_error(c, "service-unavailable", NULL);
        return ST_HANDLED;
    }
    get_ctx *g = st_calloc(1, sizeof *g);
    if (!g || !(g->p = st_iq_defer(c))) {
        st_free(g);
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    snprintf(g->full, sizeof g->full, "%s", c->session->full);
    const char *ver = st_attr_get(c->payload, "ver");
    if (ver && strlen(ver) < sizeof g->ver) {
        g->has_ver = 1;
        snprintf(g->ver, sizeof g->ver, "%s", ver);
    }
    if (st_roster_with(c->session->user, get_ready, g) != 0) {
        st_iq_pending_error(g->p, "internal-server-error", NULL);
        st_free(g);
    }
    return ST_HANDLED;
}

/* ---- set / remove ---- */

typedef struct set_ctx {
    st_iq_pending *p;
    st_roster_item it; /* requested name/groups for it.jid */
    int remove;
} set_ctx;

/* Answer the roster set exactly once. */
static void answer_error(set_ctx *sc, const char *cond, const char *text)
{
    if (!sc->p) return;
    st_iq_pending_error(sc->p, cond, text);
    sc->p = NULL;
}

static void answer_ok(set_ctx *sc)
{
    if (!sc->p) return;
    st_iq_pending_result(sc->p, NULL);
    sc->p = NULL;
}

static void set_ready(st_user *u, void *ud)
{
    set_ctx *sc = ud;
    if (!u->roster) {
        answer_error(sc, "internal-server-error", "the roster could not be loaded");
        goto out;
    }
    st_roster_item *cur = st_roster_find(u, sc->it.jid);
    if (sc->remove) {
        if (!cur || !st_roster_visible(cur)) {
            /* RFC 6121 §2.5.3: removing an item that is not there */
            answer_error(sc, "item-not-found", NULL);
            goto out;
        }
        st_roster_item t;
        if (st_roster_item_copy(&t, cur) != 0) {
            answer_error(sc, "internal-server-error", NULL);
            goto out;
        }
        st_sub had = t.sub;
        int had_ask = t.ask_out, had_pending = t.pending_in;
        /* §2.5.2: cancel both subscriptions, then the tombstone */
        t.sub = ST_SUB_NONE;
        t.ask_out = t.pending_in = t.approved = 0;
        t.in_roster = 0;
        t.removed = 1;
        st_free(t.pending_in_xml);
        t.pending_in_xml = NULL;
        int rc = st_roster_store(u, &t, 0);
        st_roster_item_free(&t);
        if (rc != 0) {
            answer_error(sc, "internal-server-error", NULL);
            goto out;
        }
        answer_ok(sc);
        if (had == ST_SUB_TO || had == ST_SUB_BOTH || had_ask)
            st_presence_send_subscription(u, sc->it.jid, "unsubscribe");
        if (had == ST_SUB_FROM || had == ST_SUB_BOTH || had_pending)
            st_presence_send_subscription(u, sc->it.jid, "unsubscribed");
        goto out;
    }
    st_roster_item t;
    if (cur) {
        if (st_roster_item_copy(&t, cur) != 0) {
            answer_error(sc, "internal-server-error", NULL);
            goto out;
        }
        for (size_t i = 0; i < t.ngroups; i++) st_free(t.groups[i]);
        st_free(t.groups);
        st_free(t.name);
        if (t.removed) { /* re-adding after a removal starts afresh */
            t.sub = ST_SUB_NONE;
            t.ask_out = t.approved = 0;
            t.removed = 0;
        }
    } else {
        memset(&t, 0, sizeof t);
        t.jid = st_strdup(sc->it.jid);
    }
    t.name = sc->it.name ? st_strdup(sc->it.name) : NULL;
    t.groups = sc->it.groups;
    t.ngroups = sc->it.ngroups;
    sc->it.groups = NULL;
    sc->it.ngroups = 0;
    t.in_roster = 1;
    size_t max = (size_t)st_host_opt_num(u->host, &mod_roster, "max_items");
    int rc = t.jid ? st_roster_store(u, &t, max) : -1;
    st_roster_item_free(&t);
    if (rc == 1)
        answer_error(sc, "not-allowed", "the roster is full");
    else if (rc != 0)
        answer_error(sc, "internal-server-error", NULL);
    else
        answer_ok(sc);
out:
    if (sc->p) answer_error(sc, "internal-server-error", NULL); /* never unanswered */
    st_roster_item_free(&sc->it);
    st_free(sc);
}

static st_verdict roster_set(st_iq_ctx *c)
{
    st_node *item = st_child(c->payload, "item", ST_NS_ROSTER);
    if (!item || st_next_elem(item) || !c->session) {
        /* RFC 6121 §2.3.3: exactly one item */
        st_iq_error(c, "bad-request", "a roster set carries exactly one <item/>");
        return ST_HANDLED;
    }
    const char *jid = st_attr_get(item, "jid");
    const char *sub = st_attr_get(item, "subscription");
    const char *name = st_attr_get(item, "name");
    st_jid j;
    if (!jid || st_jid_parse(&j, jid, strlen(jid)) != 0) {
        st_iq_error(c, "jid-malformed", NULL);
        return ST_HANDLED;
    }
    set_ctx *sc = st_calloc(1, sizeof *sc);
    if (!sc) goto oom;
    sc->it.jid = st_jid_bare(&j);
    st_jid_free(&j);
    if (!sc->it.jid) goto oom;
    sc->remove = sub && strcmp(sub, "remove") == 0;
    if (!sc->remove) {
        if (name && strlen(name) > MAX_NAME) {
            st_roster_item_free(&sc->it);
            st_free(sc);
            st_iq_error(c, "not-acceptable", "the name is too long");
            return ST_HANDLED;
        }
        if (name && *name && !(sc->it.name = st_strdup(name))) goto oom_sc;
        for (st_node *g = st_first_elem(item); g; g = st_next_elem(g)) {
            if (strcmp(g->name, "group") != 0 || strcmp(g->ns, ST_NS_ROSTER) != 0) continue;
            const char *gn = st_node_text(g);
            if (!*gn || strlen(gn) > MAX_NAME) {
                /* §2.3.3: empty or oversized group names are not acceptable */
                st_roster_item_free(&sc->it);
                st_free(sc);
                st_iq_error(c, "not-acceptable", "group names must be 1..1023 bytes");
                return ST_HANDLED;
            }
            for (size_t i = 0; i < sc->it.ngroups; i++) {
                if (strcmp(sc->it.groups[i], gn) == 0) {
                    /* §2.3.3: duplicate groups are a bad request */
                    st_roster_item_free(&sc->it);
                    st_free(sc);
                    st_iq_error(c, "bad-request", "duplicate group");
                    return ST_HANDLED;
                }
            }
            char **ng = st_realloc(sc->it.groups, (sc->it.ngroups + 1) * sizeof *ng);
            if (!ng) goto oom_sc;
            sc->it.groups = ng;
            if (!(ng[sc->it.ngroups] = st_strdup(gn))) goto oom_sc;
            sc->it.ngroups++;
        }
    }
    if (!(sc->p = st_iq_defer(c))) goto oom_sc;
    if (st_roster_with(c->session->user, set_ready, sc) != 0) {
        st_iq_pending_error(sc->p, "internal-server-error", NULL);
        st_roster_item_free(&sc->it);
        st_free(sc);
    }
    return ST_HANDLED;
oom_sc:
    st_roster_item_free(&sc->it);
    st_free(sc);
oom:
    st_iq_error(c, "internal-server-error", NULL);
    return ST_HANDLED;
}

/* RFC 6121 §2.1.5 / §2.3.3: nobody reads or writes another user's roster */
static st_verdict roster_other(st_iq_ctx *c)
{
    st_iq_error(c, "forbidden", NULL);
    return ST_HANDLED;
}

static void noop_ready(st_user *u, void *ud)
{
}

/* Load the roster right after bind, so the client's first roster or
 * presence request does not wait for storage. */
static void bound(st_session *s)
{
    st_roster_with(s->user, noop_ready, NULL);
}

static void features(st_conn *c, st_stanza *f, int authenticated)
{
    if (!authenticated) return;
    st_tag(f, "ver", "urn:xmpp:features:rosterver"); /* XEP-0237 */
    st_up(f);
    st_tag(f, "sub", "urn:xmpp:features:pre-approval"); /* RFC 6121 §3.4 */
    st_up(f);
}

static const st_iq_handler iqs[] = {
    {ST_NS_ROSTER, "query", ST_IQ_GET, ST_TO_ACCOUNT, roster_get},
    {ST_NS_ROSTER, "query", ST_IQ_SET, ST_TO_ACCOUNT, roster_set},
    {ST_NS_ROSTER, "query", ST_IQ_GET | ST_IQ_SET, ST_TO_USER, roster_other},
    {0},
};

static const st_module_opt opts[] = {
    {"max_items", ST_OPT_INT, "1000", 1, 100000, "most contacts one roster may hold"},
    {0},
};

const st_module mod_roster = {
    .name = "roster",
    .spec = "RFC 6121 §2, XEP-0237",
    .title = "Roster management and versioning",
    .iqs = iqs,
    .opts = opts,
    .stream_features = features,
    .session_bound = bound,
    .priority = 100,
};
