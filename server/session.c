/* session.c - the registry of bound sessions (full JID -> session) and of
 * users (bare JID -> user with its sessions and roster).
 *
 * A session is what the router talks to. It usually points at a live
 * connection; it may be detached (conn == NULL) once stream management keeps
 * sessions across TCP drops, which is why nothing here assumes a socket.
 *
 * A user object lives while it has sessions or holds: a hold is taken by
 * anything that must keep the user (and its loaded roster) while it works,
 * e.g. a subscription request for an offline user waiting for the roster. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/roster.h"
#include "server/server.h"
#include "server/sm.h"
#include "server/csi.h"
#include "starling/alloc.h"

st_session *st_session_find(st_server *s, const char *full)
{
    return st_map_get(&s->sessions, full);
}

st_user *st_user_find(st_server *s, const char *bare)
{
    return st_map_get(&s->users, bare);
}

st_user *st_user_get(st_server *s, st_host *h, const char *node)
{
    char bare[2100];
    snprintf(bare, sizeof bare, "%s@%s", node, h->name);
    st_user *u = st_user_find(s, bare);
    if (u) return u;
    u = st_calloc(1, sizeof *u);
    if (!u) return NULL;
    u->srv = s;
    u->host = h;
    u->bare = st_strdup(bare);
    u->node = st_strdup(node);
    if (!u->bare || !u->node || st_map_put(&s->users, u->bare, u) != 0) {
        st_free(u->bare);
        st_free(u->node);
        st_free(u);
        return NULL;
    }
    return u;
}

void st_user_hold(st_user *u)
{
    u->holds++;
}

void st_user_release(st_user *u)
{
    if (u->holds > 0) u->holds--;
    if (u->sessions || u->holds || u->roster_loading) return;
    st_map_del(&u->srv->users, u->bare);
    st_roster_free(u->roster);
    st_free(u->bare);
    st_free(u->node);
    st_free(u);
}

st_session *st_session_bind(st_server *s, st_host *h, st_conn *c, const st_jid *full)
{
    st_session *sess = st_calloc(1, sizeof *sess);
    st_user *u = NULL;
    if (!sess) return NULL;
    st_map_init(&sess->directed);
    if (st_jid_copy(&sess->jid, full) != 0) goto fail;
    sess->full = st_jid_full(full);
    sess->bare = st_jid_bare(full);
    if (!sess->full || !sess->bare) goto fail;

    st_session *old = st_session_find(s, sess->full);
    if (old) {
        /* RFC 6120 §7.7.2.2: we let the new session win and close the old one. */
        st_info("session", "%s: replaced by a new session", old->full);
        if (old->conn) st_conn_close(old->conn, "conflict", "replaced by a new connection");
        else st_session_end(old);
    }
    u = st_user_get(s, h, full->node);
    if (!u) goto fail;
    st_user_hold(u); /* until the session is linked in */
    if (st_map_put(&s->sessions, sess->full, sess) != 0) {
        st_user_release(u);
        goto fail;
    }
    sess->srv = s;
    sess->serial = ++s->next_id;
    sess->host = h;
    sess->user = u;
    sess->conn = c;
    sess->since = time(NULL);
    sess->next_of_user = u->sessions;
    u->sessions = sess;
    u->nsessions++;
    st_user_release(u);
    return sess;
fail:
    st_jid_free(&sess->jid);
    st_free(sess->full);
    st_free(sess->bare);
    st_map_free(&sess->directed);
    st_free(sess);
    return NULL;
}

static int free_key(void *ud, const char *k, void *v)
{
    st_free((char *)k);
    return 0;
}

void st_session_end(st_session *sess)
{
    st_server *s = sess->srv;
    st_host *h = sess->host;
    st_user *u = sess->user;
    /* Modules first (presence sends unavailable on the session's behalf,
     * RFC 6121 §4.5.2), while the session is still registered. */
    for (size_t i = 0; i < h->nmods; i++)
        if (h->mods[i]->session_end) h->mods[i]->session_end(sess);
    if (sess->conn) st_conn_detach_session(sess->conn);
    if (st_map_get(&s->sessions, sess->full) == sess) st_map_del(&s->sessions, sess->full);
    st_user_hold(u);
    for (st_session **pp = &u->sessions; *pp; pp = &(*pp)->next_of_user) {
        if (*pp == sess) {
            *pp = sess->next_of_user;
            u->nsessions--;
            break;
        }
    }
    st_debug("session", "%s: ended", sess->full);
    if (sess->sm) {
        /* no longer registered: what it never acknowledged goes elsewhere */
        st_sm *sm = sess->sm;
        sess->sm = NULL;
        st_sm_end(sm);
    }
    st_csi_free(sess);
    st_map_each(&sess->directed, free_key, NULL);
    st_map_free(&sess->directed);
    st_stanza_unref(sess->presence);
    st_jid_free(&sess->jid);
    st_free(sess->full);
    st_free(sess->bare);
    st_free(sess);
    st_user_release(u);
}

/* The one way out to a client: stream management keeps a copy until the
 * client acknowledges it; a detached (hibernating) session only queues. */
static int session_out(st_session *sess, st_stanza *st, const char *to)
{
    /* XEP-0352: an inactive client's non-urgent traffic waits */
    if (sess->mod_data[ST_SLOT_CSI]) {
        if (!st_csi_urgent(st) && st_csi_hold(sess, st, to) == 0) return 0;
        st_csi_flush(sess);
    }
    int live = sess->conn && !st_conn_is_closed(sess->conn);
    if (sess->sm) {
        if (st_sm_keep(sess->sm, st, to) != 0) {
            st_warn("sm", "%s: too many unacknowledged stanzas, ending the session", sess->full);
            st_session_end_later(sess);
            return -1;
        }
        if (!live) return 0;
    } else if (!live) {
        return -1;
    }
    int r = to ? st_conn_send_to(sess->conn, st, to) : st_conn_send(sess->conn, st);
    if (r == 0 && sess->sm && st_sm_want_ack(sess->sm))
        st_conn_send_raw(sess->conn, "<r xmlns='" ST_NS_SM "'/>", sizeof "<r xmlns='" ST_NS_SM "'/>" - 1);
    return r;
}

int st_session_send(st_session *sess, st_stanza *st)
{
    return session_out(sess, st, NULL);
}

int st_session_send_to(st_session *sess, st_stanza *st, const char *to)
{
    return session_out(sess, st, to);
}

typedef struct end_later {
    st_deferred d;
    st_server *srv;
    char full[3100];
    unsigned long long serial;
} end_later;

static void end_now(void *ud)
{
    end_later *e = ud;
    /* the session may have ended meanwhile: find it again, by name and serial */
    st_session *sess = st_session_find(e->srv, e->full);
    if (sess && sess->serial == e->serial) {
        sess->ending = 0;
        if (sess->conn) st_conn_close(sess->conn, "policy-violation", "too many unacknowledged stanzas");
        else st_session_end(sess);
    }
    st_free(e);
}

void st_session_end_later(st_session *sess)
{
    if (sess->ending) return;
    end_later *e = st_calloc(1, sizeof *e);
    if (!e) return;
    sess->ending = 1;
    e->srv = sess->srv;
    e->serial = sess->serial;
    snprintf(e->full, sizeof e->full, "%s", sess->full);
    st_loop_defer(sess->srv->loop, &e->d, end_now, e);
}
