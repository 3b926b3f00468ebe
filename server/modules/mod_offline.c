/* mod_offline.c - XEP-0160 offline messages, and XEP-0359 stanza ids on the
 * messages local users receive.
 *
 * Storing: a normal or chat message for a local account with no available
 * resource (the message_in hook with navailable == 0) is stored, unless it
 * carries nothing worth keeping (only XEP-0085 chat states) or a XEP-0334
 * <no-store/> or <no-permanent-store/> hint. The stored copy gets a
 * XEP-0203 <delay/> and a XEP-0359 <stanza-id/>. Whether the account exists
 * and whether it is over offline.max_messages are both decided by one job
 * on the storage thread (user_get, then offline_push with the quota), so
 * the check and the insert cannot race. Whatever is not stored is answered:
 * service-unavailable for a missing account or a full store,
 * internal-server-error if the store failed. Nothing is dropped silently.
 *
 * Delivering: on a session's initial available presence with priority >= 0
 * (the presence_out hook, before mod_presence takes the stanza), one job
 * lists the stored messages; its completion sends them in order to that
 * session and queues offline_delete up to the last id sent. Exactly once:
 * while a delivery for a user is under way no other session starts one, and
 * because the storage thread runs jobs in submission order, a later list
 * always runs after the delete. A message whose hook ran before the initial
 * presence was submitted before the list, so it is in it; one routed after
 * finds an available resource and is delivered live. The messages are
 * deleted only after they were queued to the client, so a crash in between
 * delivers them again rather than losing them (at least once across a
 * crash, exactly once otherwise).
 *
 * Stanza ids: every message a local user receives has any <stanza-id/>
 * claiming to be by that user's bare JID removed (XEP-0359 §5: only we may
 * say what our user's archive id is), and normal/chat messages get our own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/modules/stanza_id.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/xmlstream.h"

#define NS_DELAY "urn:xmpp:delay"
#define NS_SID "urn:xmpp:sid:0"
#define NS_HINTS "urn:xmpp:hints"
#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"

extern const st_module mod_offline;

struct deliver_job;

/* Per host: the bare JIDs with a delivery under way (key owned, value =
 * key), and the deliveries waiting for a client to read (pacing). */
typedef struct off_state {
    st_map delivering;
    struct deliver_job *pacing;
} off_state;

static int off_init(st_host *h, void **state)
{
    off_state *o = st_calloc(1, sizeof *o);
    if (!o) return -1;
    st_map_init(&o->delivering);
    *state = o;
    return 0;
}

static int free_key(void *ud, const char *k, void *v)
{
    st_free(v);
    return 0;
}

static void pacing_drop_all(off_state *o);

static void off_fini(st_host *h, void *state)
{
    off_state *o = state;
    if (!o) return;
    pacing_drop_all(o); /* what was not sent stays stored */
    st_map_each(&o->delivering, free_key, NULL);
    st_map_free(&o->delivering);
    st_free(o);
}

/* The state of the host named name if it still runs this module (a reload
 * may have removed either while a job was on the storage thread), or NULL. */
static off_state *state_of(st_server *srv, const char *name)
{
    st_host *h = st_server_host(srv, name);
    return h ? st_host_mod_state(h, &mod_offline) : NULL;
}

/* ---- stanza helpers ---- */

static int is_type(const char *type, const char *want)
{
    return type && strcmp(type, want) == 0;
}

/* XEP-0359 §5: remove every <stanza-id/> whose 'by' is the recipient's bare
 * JID; a sender could otherwise make up our user's archive ids. The one we
 * minted ourselves (stanza_id.h) stays: mod_mam, which runs first, gave the
 * message its archive id, or stream management routed it again. */
static void strip_forged_ids(st_stanza *st, const st_jid *bare)
{
    char bare_s[2100], kept[ST_SID_MAX];
    if (st_jid_format(bare, 0, bare_s, sizeof bare_s) >= 0) st_sid_clean(st, bare_s, 0, kept);
}

/* Give st our <stanza-id/> as the last child of the root, unless it has one
 * we minted (then the live copy, the stored copy and the archive share it).
 * 0 or -1 (OOM). */
static int add_stanza_id(st_server *srv, st_stanza *st, const char *bare)
{
    char id[ST_SID_MAX];
    if (st_sid_clean(st, bare, 0, id)) return 0;
    if (st_sid_make(st, bare, 0, id) != 0) st_server_make_id(srv, id, sizeof id);
    return st_sid_attach(st, bare, id);
}

/* Was st already delayed by us? A message stored once, delivered, and
 * routed back unacknowledged by stream management keeps its first stamp. */
static int has_our_delay(const st_stanza *st, const char *host)
{
    for (st_node *n = st_first_elem(st->root); n; n = st_next_elem(n)) {
        const char *from = st_attr_get(n, "from");
        if (strcmp(n->name, "delay") == 0 && strcmp(n->ns, NS_DELAY) == 0 && from &&
            strcmp(from, host) == 0)
            return 1;
    }
    return 0;
}

/* Does this message deserve offline storage (XEP-0160 §3, XEP-0334)? */
static int storable(const st_stanza *st)
{
    const char *type = st_get(st, "type");
    if (type && !is_type(type, "normal") && !is_type(type, "chat")) return 0;
    if (st_child(st->root, "no-store", NS_HINTS) || st_child(st->root, "no-permanent-store", NS_HINTS))
        return 0;
    if (st_child(st->root, "store", NS_HINTS) || st_child(st->root, "body", ST_NS_CLIENT)) return 1;
    /* Without a body, keep it only if it carries more than chat states,
     * hints, ids and a thread (XEP-0085 §5.5: chat states are not stored). */
    for (st_node *n = st_first_elem(st->root); n; n = st_next_elem(n)) {
        if (strcmp(n->ns, NS_CHATSTATES) == 0 || strcmp(n->ns, NS_HINTS) == 0 ||
            strcmp(n->ns, NS_SID) == 0)
            continue;
        if (strcmp(n->ns, ST_NS_CLIENT) == 0 && strcmp(n->name, "thread") == 0) continue;
        return 1;
    }
    return 0;
}

/* ---- storing ---- */

enum { STORED = 0, FULL = 1, NO_ACCOUNT = 2, FAILED = -1 };

typedef struct store_job {
    st_server *srv;
    st_stanza *orig; /* the message as received, for the sender's error (a reference) */
    char *xml;       /* what is stored (owned) */
    size_t len;
    size_t max;
    char host[1024];
    char user[1024];
    int rc;
} store_job;

static void store_work(void *h, void *arg)
{
    store_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    st_user_creds creds;
    int r = ops->user_get(h, j->host, j->user, &creds);
    OPENSSL_cleanse(&creds, sizeof creds);
    if (r == 0) j->rc = NO_ACCOUNT;
    else if (r < 0) j->rc = FAILED;
    else {
        r = ops->offline_push(h, j->host, j->user, j->xml, j->len, j->max);
        j->rc = r == 0 ? STORED : r == 1 ? FULL : FAILED;
    }
}

static void store_done(void *arg)
{
    store_job *j = arg;
    switch (j->rc) {
    case STORED:
        st_debug("mod_offline", "stored a message for %s@%s", j->user, j->host);
        break;
    case FULL:
        st_info("mod_offline", "%s@%s: offline storage full (%zu messages), message refused",
                j->user, j->host, j->max);
        st_route_error(j->srv, j->orig, "service-unavailable",
                       "the recipient is offline and their offline message storage is full");
        break;
    case NO_ACCOUNT:
        st_route_error(j->srv, j->orig, "service-unavailable", NULL);
        break;
    default:
        st_route_error(j->srv, j->orig, "internal-server-error",
                       "the message could not be stored for later delivery");
        break;
    }
    st_stanza_unref(j->orig);
    st_free(j->xml);
    st_free(j);
}

/* Build the stored form of st (a copy with <delay/> and <stanza-id/>) and
 * queue the store job. ST_HANDLED once the job owns the message; ST_PASS
 * on OOM, so the router answers the sender (service-unavailable). */
static st_verdict store_later(st_server *srv, st_host *h, st_stanza *st, const st_jid *bare)
{
    st_verdict v = ST_PASS;
    char stamp[32], bare_s[2100] = "";
    st_buf b;
    store_job *j = NULL;
    st_stanza *copy = NULL;
    time_t now = time(NULL);
    struct tm tm;

    st_buf_init(&b, 2 * srv->cfg->max_stanza_bytes + 4096);
    if (st_jid_format(bare, 0, bare_s, sizeof bare_s) < 0) goto out;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!(copy = st_stanza_copy(st))) goto out;
    strip_forged_ids(copy, bare);
    if (!has_our_delay(copy, h->name)) {
        st_top(copy);
        st_tag(copy, "delay", NS_DELAY);
        st_attr_set(copy, "from", h->name);
        st_attr_set(copy, "stamp", stamp);
        st_text(copy, "Offline storage");
        st_up(copy);
    }
    if (add_stanza_id(srv, copy, bare_s) != 0) goto out;
    /* an explicit xmlns='jabber:client', so the stored XML parses back alone */
    if (st_serialize(copy->root, "", &b) != 0) goto out;
    if (!(j = st_calloc(1, sizeof *j))) goto out;
    j->srv = srv;
    j->max = (size_t)st_host_opt_num(h, &mod_offline, "max_messages");
    snprintf(j->host, sizeof j->host, "%s", h->name);
    snprintf(j->user, sizeof j->user, "%s", bare->node);
    j->xml = st_buf_steal(&b, &j->len);
    if (!j->xml) goto out;
    j->orig = st_stanza_ref(st);
    /* Grouped: store_work reads only host, user, xml, len and max from j
     * and overwrites j->rc, so running it again after a failed group
     * gives the answer a lone run would; many offline messages then share
     * one commit. store_done (the sender's error) waits for the commit. */
    if (st_storage_submit_grouped(srv->store, store_work, store_done, j) != 0) {
        st_stanza_unref(j->orig);
        goto out;
    }
    j = NULL;
    v = ST_HANDLED;
out:
    if (j) {
        st_free(j->xml);
        st_free(j);
    }
    if (v != ST_HANDLED)
        st_warn("mod_offline", "out of memory while storing a message for %s",
                bare_s[0] ? bare_s : "a user");
    st_stanza_unref(copy);
    st_buf_free(&b);
    return v;
}

static st_verdict message_in(st_server *srv, st_host *h, st_stanza *st, const st_jid *from,
                             const st_jid *to, int navailable)
{
    const char *type = st_get(st, "type");
    st_jid bare = *to;
    bare.resource = NULL; /* a borrowed view of the recipient's bare JID */
    if (is_type(type, "error") || !to->node) return ST_PASS;
    if (navailable == 0) return storable(st) ? store_later(srv, h, st, &bare) : ST_PASS;
    /* Delivered live. The router hands us its only reference; a shared
     * stanza must not change (module.h), and then it goes out as it is. */
    if (st->refs > 1) {
        st_debug("mod_offline", "shared message for %s: no stanza-id added", to->node);
        return ST_PASS;
    }
    strip_forged_ids(st, &bare);
    if (!type || is_type(type, "normal") || is_type(type, "chat")) {
        char bare_s[2100];
        if (st_jid_format(&bare, 0, bare_s, sizeof bare_s) >= 0) add_stanza_id(srv, st, bare_s);
    }
    return ST_PASS;
}

/* ---- delivering ---- */

typedef struct off_msg {
    long long id;
    char *xml;
    size_t len;
} off_msg;

typedef struct deliver_job {
    st_server *srv;
    char host[1024];
    char user[1024];
    char full[3100]; /* the session that asked */
    char *bare;      /* key in off_state.delivering (owned by the map entry) */
    off_msg *msgs;
    size_t n, cap;
    int failed;      /* listing failed or ran out of memory */
    long long upto;  /* delete job: last id delivered */
    int deleted;
    size_t next;     /* pacing: the first message not sent yet */
    st_timer pace;
    struct deliver_job *next_pacing;
} deliver_job;

static void list_each(void *ud, long long id, const char *xml, size_t len)
{
    deliver_job *j = ud;
    if (j->failed) return;
    if (j->n == j->cap) {
        size_t cap = j->cap ? 2 * j->cap : 16;
        off_msg *m = st_realloc(j->msgs, cap * sizeof *m);
        if (!m) {
            j->failed = 1;
            return;
        }
        j->msgs = m;
        j->cap = cap;
    }
    char *copy = st_strndup(xml, len);
    if (!copy) {
        j->failed = 1;
        return;
    }
    j->msgs[j->n++] = (off_msg){.id = id, .xml = copy, .len = len};
}

static void list_work(void *h, void *arg)
{
    deliver_job *j = arg;
    if (st_storage_ops(j->srv->store)->offline_list(h, j->host, j->user, list_each, j) < 0)
        j->failed = 1;
}

static void job_free(deliver_job *j)
{
    for (size_t i = 0; i < j->n; i++) st_free(j->msgs[i].xml);
    st_free(j->msgs);
    st_free(j);
}

static void delete_work(void *h, void *arg)
{
    deliver_job *j = arg;
    j->deleted = st_storage_ops(j->srv->store)->offline_delete(h, j->host, j->user, j->upto);
}

static void delete_done(void *arg)
{
    deliver_job *j = arg;
    if (j->deleted < 0)
        st_error("mod_offline", "%s@%s: delivered offline messages could not be deleted "
                 "(they will be delivered again)", j->user, j->host);
    job_free(j);
}

/* The session to deliver to: the one that asked, or, if it went away,
 * another available one of the same user (it skipped its own delivery
 * because this one was under way). NULL if none. */
static st_session *target_session(st_server *srv, const char *full, const char *bare)
{
    st_session *s = st_session_find(srv, full);
    if (s && s->conn && s->available) return s;
    st_user *u = st_user_find(srv, bare);
    for (st_session *x = u ? u->sessions : NULL; x; x = x->next_of_user)
        if (x->conn && x->available && x->priority >= 0) return x;
    return NULL;
}

/* Offline messages go out no faster than the client reads them: a burst
 * of thousands at login would overflow the connection's output queue and
 * have it disconnected (max_send_queue), losing what sat in the queue
 * once deleted from storage. So at most half the queue is filled; the rest
 * waits (PACE_MS) for the client to read, and only what was handed to the
 * connection is deleted. */
#define PACE_MS 10

static void pacing_unlink(deliver_job *j)
{
    off_state *o = state_of(j->srv, j->host);
    for (deliver_job **p = o ? &o->pacing : NULL; p && *p; p = &(*p)->next_pacing)
        if (*p == j) {
            *p = j->next_pacing;
            break;
        }
    j->next_pacing = NULL;
}

static void pacing_drop_all(off_state *o)
{
    while (o->pacing) {
        deliver_job *j = o->pacing;
        o->pacing = j->next_pacing;
        st_timer_cancel(j->srv->loop, &j->pace);
        job_free(j);
    }
}

/* Delivery is over (all sent, or the session went): let another resource
 * start one, and delete what was handed to the connection. */
static void delivery_end(deliver_job *j, const char *bare)
{
    off_state *o = state_of(j->srv, j->host);
    if (o) st_free(st_map_del(&o->delivering, bare));
    for (size_t i = 0; i < j->n; i++) st_free(j->msgs[i].xml);
    st_free(j->msgs);
    j->msgs = NULL;
    j->n = j->cap = 0;
    if (j->upto < 0) {
        job_free(j);
        return;
    }
    if (st_storage_submit(j->srv->store, delete_work, delete_done, j) != 0) {
        st_error("mod_offline", "%s: could not queue deleting delivered offline messages", bare);
        job_free(j);
    }
}

static void deliver_some(deliver_job *j)
{
    char bare[2100];
    snprintf(bare, sizeof bare, "%s@%s", j->user, j->host);
    st_session *s = target_session(j->srv, j->full, bare);
    if (!s) {
        st_debug("mod_offline", "%s: went offline during delivery; the rest stays stored", bare);
        delivery_end(j, bare);
        return;
    }
    size_t room = j->srv->cfg->max_send_queue / 2;
    while (j->next < j->n) {
        if (st_conn_queued(s->conn) > room) {
            off_state *o = state_of(j->srv, j->host);
            if (!o) break; /* the host went in a reload: stop here, the rest stays */
            j->next_pacing = o->pacing;
            o->pacing = j;
            st_timer_set(j->srv->loop, &j->pace, PACE_MS);
            return;
        }
        const off_msg *m = &j->msgs[j->next];
        const char *err = NULL;
        st_stanza *st = st_xml_parse_element(m->xml, m->len, &err);
        if (!st) {
            /* deleted with the others: it can never be delivered */
            st_error("mod_offline", "%s: dropping damaged stored message %lld (%s)", bare, m->id,
                     err ? err : "?");
        } else if (st_session_send(s, st) != 0) {
            st_stanza_unref(st);
            break; /* the connection is going: keep this one and the rest */
        } else {
            st_stanza_unref(st);
        }
        j->upto = m->id;
        j->next++;
    }
    if (j->next == j->n && j->n)
        st_info("mod_offline", "%s: delivered %zu offline messages to %s", bare, j->n, s->full);
    delivery_end(j, bare);
}

static void on_pace(st_loop *l, st_timer *t)
{
    deliver_job *j = t->ud;
    pacing_unlink(j);
    deliver_some(j);
}

static void list_done(void *arg)
{
    deliver_job *j = arg;
    char bare[2100];
    snprintf(bare, sizeof bare, "%s@%s", j->user, j->host);
    j->upto = -1;
    j->next = 0;
    st_timer_init(&j->pace, on_pace, j);
    if (j->failed) {
        st_error("mod_offline", "%s: listing offline messages failed; they stay stored", bare);
        j->n = 0; /* nothing handed over: nothing deleted */
        delivery_end(j, bare);
        return;
    }
    deliver_some(j);
}

static void start_delivery(st_session *s)
{
    off_state *o = st_host_mod_state(s->host, &mod_offline);
    deliver_job *j = NULL;
    char *key = NULL;
    if (!o || st_map_get(&o->delivering, s->bare)) return; /* another resource is getting them */
    if (!(j = st_calloc(1, sizeof *j)) || !(key = st_strdup(s->bare))) goto fail;
    j->srv = s->srv;
    snprintf(j->host, sizeof j->host, "%s", s->host->name);
    snprintf(j->user, sizeof j->user, "%s", s->jid.node);
    snprintf(j->full, sizeof j->full, "%s", s->full);
    if (st_map_put(&o->delivering, key, key) != 0) goto fail;
    if (st_storage_submit(s->srv->store, list_work, list_done, j) != 0) {
        st_map_del(&o->delivering, key);
        goto fail;
    }
    return;
fail:
    st_warn("mod_offline", "%s: could not start delivering offline messages", s->full);
    st_free(key);
    st_free(j);
}

static st_verdict presence_out(st_session *s, st_stanza *st, const st_jid *to)
{
    /* only the initial available presence to the server (RFC 6121 §4.2),
     * seen before mod_presence marks the session as having sent it */
    if (to || st_get(st, "type") || s->initial_sent) return ST_PASS;
    const char *p = st_child_text(st->root, "priority", ST_NS_CLIENT);
    if (p && strtol(p, NULL, 10) < 0) return ST_PASS; /* XEP-0160 §3: not to negative priority */
    start_delivery(s);
    return ST_PASS;
}

static const char *const features[] = {"msgoffline", NS_SID, NULL};

static const st_module_opt opts[] = {
    {"max_messages", ST_OPT_INT, "500", 1, 1000000,
     "messages stored per user while offline; beyond that senders get service-unavailable"},
    {0},
};

static const st_hooks hooks = {
    .presence_out = presence_out,
    .message_in = message_in,
};

const st_module mod_offline = {
    .name = "offline",
    .spec = "XEP-0160",
    .title = "Offline messages (with XEP-0203 delay and XEP-0359 stanza ids)",
    .features = features,
    .opts = opts,
    .host_init = off_init,
    .host_fini = off_fini,
    .hooks = &hooks,
    /* above presence (90), which takes the initial presence, and above
     * carbons, whose copies should carry our stanza-id */
    .priority = 95,
};
