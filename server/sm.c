/* sm.c - XEP-0198 stream management, the session side; see sm.h.
 *
 * Counting: h values are 32-bit and wrap (XEP-0198 §4), so all comparisons
 * are on differences. The queue is a ring that doubles when full, up to
 * ST_SM_MAX_QUEUE stanzas. */
#include <stdio.h>
#include <string.h>
#include <openssl/rand.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/sm.h"
#include "starling/alloc.h"
#include "starling/error.h"

#define ST_SM_MAX_QUEUE 10000 /* unacknowledged stanzas one session may hold */
#define ACK_EVERY 5           /* ask for an ack after this many stanzas */

st_session *st_sm_find(st_server *s, const char *id)
{
    return st_map_get(&s->sm_ids, id);
}

static void on_hibernate_end(st_loop *l, st_timer *t)
{
    st_sm *sm = t->ud;
    st_info("sm", "%s: resumption window over", sm->sess->full);
    st_session_end(sm->sess);
}

st_sm *st_sm_enable(st_session *sess, int resume, unsigned max_s)
{
    st_sm *sm = st_calloc(1, sizeof *sm);
    if (!sm) return NULL;
    sm->sess = sess;
    sm->resumable = resume;
    sm->max_s = max_s;
    st_timer_init(&sm->hibernate, on_hibernate_end, sm);
    st_server_make_id(sess->srv, sm->id, sizeof sm->id);
    /* the id is also a capability: make it unguessable */
    unsigned char r[12];
    RAND_bytes(r, sizeof r);
    size_t n = strlen(sm->id);
    for (size_t i = 0; i < sizeof r && n + 2 < sizeof sm->id; i++, n += 2)
        snprintf(sm->id + n, sizeof sm->id - n, "%02x", r[i]);
    if (resume && st_map_put(&sess->srv->sm_ids, sm->id, sess) != 0) {
        st_free(sm);
        return NULL;
    }
    return sm;
}

int st_sm_keep(st_sm *sm, st_stanza *st, const char *to)
{
    if (sm->qlen == sm->qcap) {
        if (sm->qcap >= ST_SM_MAX_QUEUE) return -1;
        size_t ncap = sm->qcap ? sm->qcap * 2 : 16;
        st_sm_item *nq = st_malloc(ncap * sizeof *nq);
        if (!nq) return -1;
        for (size_t i = 0; i < sm->qlen; i++) nq[i] = sm->q[(sm->qhead + i) % sm->qcap];
        st_free(sm->q);
        sm->q = nq;
        sm->qcap = ncap;
        sm->qhead = 0;
    }
    st_sm_item *it = &sm->q[(sm->qhead + sm->qlen) % sm->qcap];
    it->to = NULL;
    if (to && !(it->to = st_strdup(to))) return -1;
    it->st = st_stanza_ref(st);
    sm->qlen++;
    sm->h_sent++;
    sm->since_r++;
    return 0;
}

static void drop_head(st_sm *sm)
{
    st_sm_item *it = &sm->q[sm->qhead];
    st_stanza_unref(it->st);
    st_free(it->to);
    sm->qhead = (sm->qhead + 1) % sm->qcap;
    sm->qlen--;
}

int st_sm_ack(st_sm *sm, uint32_t h)
{
    uint32_t n = h - sm->h_acked; /* wraps correctly */
    if (n > sm->qlen) return -1;
    for (uint32_t i = 0; i < n; i++) drop_head(sm);
    sm->h_acked = h;
    return 0;
}

int st_sm_want_ack(st_sm *sm)
{
    if (sm->since_r < ACK_EVERY) return 0;
    sm->since_r = 0;
    return 1;
}

void st_sm_hibernate(st_sm *sm)
{
    st_timer_set(sm->sess->srv->loop, &sm->hibernate, (uint64_t)sm->max_s * 1000);
}

void st_sm_replay(st_sm *sm)
{
    st_session *s = sm->sess;
    for (size_t i = 0; i < sm->qlen && s->conn; i++) {
        st_sm_item *it = &sm->q[(sm->qhead + i) % sm->qcap];
        if (it->to) st_conn_send_to(s->conn, it->st, it->to);
        else st_conn_send(s->conn, it->st);
    }
}

/* An unacknowledged stanza of an ended session (XEP-0198 §5 / §6.2):
 * messages are routed again (the resource is gone, so they go to the
 * user's other resources or to offline storage), requests are answered. */
static void redeliver(st_server *s, const st_session *sess, st_stanza *st)
{
    const char *name = st_name(st);
    const char *type = st_get(st, "type");
    const char *from = st_get(st, "from");
    if (strcmp(name, "message") == 0) {
        if (type && (strcmp(type, "error") == 0 || strcmp(type, "groupchat") == 0)) return;
        /* carbons and other copies from the user's own account were only
         * copies: the original is delivered or stored elsewhere */
        if (from && strcmp(from, sess->bare) == 0) return;
        st_stanza *m = st_stanza_copy(st);
        if (!m) return;
        st_attr_set(m, "to", sess->bare);
        if (st_stanza_ok(m)) st_route(s, m);
        st_stanza_unref(m);
    } else if (strcmp(name, "iq") == 0 && type &&
               (strcmp(type, "get") == 0 || strcmp(type, "set") == 0)) {
        st_route_error(s, st, "recipient-unavailable", NULL);
    }
}

void st_sm_end(st_sm *sm)
{
    st_session *sess = sm->sess;
    st_server *s = sess->srv;
    st_timer_cancel(s->loop, &sm->hibernate);
    if (sm->resumable && st_map_get(&s->sm_ids, sm->id) == sess) st_map_del(&s->sm_ids, sm->id);
    if (sm->qlen)
        st_info("sm", "%s: %zu unacknowledged stanzas routed again", sess->full, sm->qlen);
    while (sm->qlen) {
        st_stanza *st = st_stanza_ref(sm->q[sm->qhead].st);
        drop_head(sm);
        redeliver(s, sess, st);
        st_stanza_unref(st);
    }
    st_free(sm->q);
    st_free(sm);
}
