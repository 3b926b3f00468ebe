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
    st_map_each(&sess->directed, free_key, NULL);
    st_map_free(&sess->directed);
    st_stanza_unref(sess->presence);
    st_jid_free(&sess->jid);
    st_free(sess->full);
    st_free(sess->bare);
    st_free(sess);
    st_user_release(u);
}

int st_session_send(st_session *sess, st_stanza *st)
{
    if (!sess->conn || st_conn_is_closed(sess->conn)) return -1;
    return st_conn_send(sess->conn, st);
}

int st_session_send_to(st_session *sess, st_stanza *st, const char *to)
{
    size_t len;
    if (!sess->conn || st_conn_is_closed(sess->conn)) return -1;
    const char *w = st_stanza_wire(st, &len);
    if (!w || len < 3 || w[0] != '<') return -1;
    /* splice " to='...'" after the element name of the cached bytes */
    size_t name = 1;
    while (name < len && w[name] != ' ' && w[name] != '>' && w[name] != '/') name++;
    st_buf b;
    st_buf_init(&b, 0);
    int r = st_buf_append(&b, w, name);
    if (r == 0) r = st_buf_appends(&b, " to='");
    if (r == 0) r = st_buf_append_escaped(&b, to, strlen(to));
    if (r == 0) r = st_buf_append(&b, "'", 1);
    if (r == 0) r = st_buf_append(&b, w + name, len - name);
    if (r == 0) r = st_conn_send_raw(sess->conn, b.data, b.len);
    st_buf_free(&b);
    return r;
}
