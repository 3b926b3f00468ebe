/* session.c - the registry of bound sessions (full JID -> session, bare JID
 * -> user with its sessions).
 *
 * A session is what the router talks to. It usually points at a live
 * connection; it may be detached (conn == NULL) once stream management keeps
 * sessions across TCP drops, which is why nothing here assumes a socket. */
#include <string.h>
#include <time.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/server.h"
#include "starling/alloc.h"

st_session *st_session_find(st_server *s, const char *full)
{
    return st_map_get(&s->sessions, full);
}

st_user *st_user_find(st_server *s, const char *bare)
{
    return st_map_get(&s->users, bare);
}

st_session *st_session_bind(st_server *s, st_host *h, st_conn *c, const st_jid *full)
{
    st_session *sess = st_calloc(1, sizeof *sess);
    st_user *u = NULL;
    int new_user = 0;
    if (!sess) return NULL;
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
    u = st_user_find(s, sess->bare);
    if (!u) {
        u = st_calloc(1, sizeof *u);
        if (!u || !(u->bare = st_strdup(sess->bare))) goto fail;
        new_user = 1;
        if (st_map_put(&s->users, u->bare, u) != 0) goto fail;
    }
    if (st_map_put(&s->sessions, sess->full, sess) != 0) goto fail;
    sess->srv = s;
    sess->host = h;
    sess->conn = c;
    sess->since = time(NULL);
    sess->next_of_user = u->sessions;
    u->sessions = sess;
    u->nsessions++;
    return sess;
fail:
    if (new_user && u) {
        if (u->bare) st_map_del(&s->users, u->bare);
        st_free(u->bare);
        st_free(u);
    }
    st_jid_free(&sess->jid);
    st_free(sess->full);
    st_free(sess->bare);
    st_free(sess);
    return NULL;
}

void st_session_end(st_session *sess)
{
    st_server *s = sess->srv;
    st_host *h = sess->host;
    for (size_t i = 0; i < h->nmods; i++)
        if (h->mods[i]->session_end) h->mods[i]->session_end(sess);
    if (sess->conn) st_conn_detach_session(sess->conn);
    if (st_map_get(&s->sessions, sess->full) == sess) st_map_del(&s->sessions, sess->full);
    st_user *u = st_user_find(s, sess->bare);
    if (u) {
        for (st_session **pp = &u->sessions; *pp; pp = &(*pp)->next_of_user) {
            if (*pp == sess) {
                *pp = sess->next_of_user;
                u->nsessions--;
                break;
            }
        }
        if (!u->sessions) {
            st_map_del(&s->users, u->bare);
            st_free(u->bare);
            st_free(u);
        }
    }
    st_debug("session", "%s: ended", sess->full);
    st_jid_free(&sess->jid);
    st_free(sess->full);
    st_free(sess->bare);
    st_free(sess);
}

int st_session_send(st_session *sess, st_stanza *st)
{
    if (!sess->conn || st_conn_is_closed(sess->conn)) return -1;
    return st_conn_send(sess->conn, st);
}
