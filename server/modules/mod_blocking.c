/* mod_blocking.c - XEP-0191 Blocking Command: a per-user list of blocked
 * JIDs, managed with <blocklist/>, <block/> and <unblock/>, and enforced on
 * every stanza between the user and anyone (the router's 'filter' hook).
 *
 * Design. A user's list lives in storage (kv store "blocklist", one key per
 * blocked JID, normalised, empty value) and, while the user has sessions, in
 * memory (a map of the normalised JIDs, per host). Changes are applied in
 * memory at once (enforcement starts with the command), written through on
 * the storage thread, and answered, pushed and followed by presence when
 * the write is done; a failed write is rolled back in memory.
 *
 * Loading is asynchronous: it starts when the first session binds, and the
 * bind result has already gone out, so the client may send (and contacts
 * may reach it) before the list is in memory. In that window we neither
 * guess nor let anything through: every stanza the filter sees for that
 * user, and every blocking IQ, is held (a private copy, at most MAX_HELD
 * per user) and replayed in order once the list is loaded, so it meets the
 * same decision it would have met later. Stanzas for an offline user, whose
 * list is not kept in memory, take the same path: a load, the replay, and
 * the list is dropped again. If the load fails, held stanzas are refused
 * (inbound ones exactly as a block would refuse them, which looks like the
 * user is offline), never delivered unchecked.
 *
 * Refusals (XEP-0191 §3.3): inbound presence is dropped silently; inbound
 * messages and iq get/set get <service-unavailable/>, as for an offline
 * user, so the contact learns nothing; other inbound iqs and errors are
 * dropped. An outbound stanza the client addressed to a blocked JID gets
 * <not-acceptable/> with <blocked xmlns='urn:xmpp:blocking:errors'/>;
 * presence the server broadcasts on the user's behalf is dropped silently.
 * Stanzas between the user and its own account or its own server are never
 * filtered, so a user cannot lock itself out.
 *
 * JID matching (XEP-0191 §6 / XEP-0016 §2.1): user@domain/resource matches
 * only itself; user@domain any of its resources; domain/resource only
 * itself; domain the domain, every address at it and every subdomain. */
#include <stdio.h>
#include <string.h>
#include "server/log.h"
#include "server/roster.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/error.h"

#define NS_BLOCK "urn:xmpp:blocking"
#define NS_BLOCK_ERR "urn:xmpp:blocking:errors"
#define STORE "blocklist"
#define MAX_HELD 20000 /* stanzas held per user while its list loads (> an SM queue) */
#define JID_MAX 3100   /* node@domain/resource, 1023 bytes each */
#define BARE_MAX 2100

extern const st_module mod_blocking;

/* A stanza waiting for the list: a private copy whose 'to' is set. */
typedef struct held {
    st_stanza *st;
    int outbound;    /* from the user */
    int from_client; /* as the client sent it: replay through the router */
    struct held *next;
} held;

struct blk_state;

typedef struct blist {
    char *bare;           /* key in blk_state.lists (owned) */
    st_map items;         /* normalised JID -> the same string (owned) */
    int loading;          /* the load job is out */
    int replaying;        /* held stanzas are being replayed */
    struct blk_state *bs; /* NULL once host_fini orphaned it */
    held *head, **tail;
    size_t nheld;
    st_server *srv;       /* for st_server_note_held */
} blist;

typedef struct blk_state {
    st_map lists; /* bare JID -> blist */
} blk_state;

/* ---- the in-memory list ---- */

static int free_value(void *ud, const char *k, void *v)
{
    st_free(v);
    return 0;
}

static void held_free_all(blist *bl)
{
    while (bl->head) {
        held *e = bl->head;
        bl->head = e->next;
        st_stanza_unref(e->st);
        st_free(e);
    }
    bl->tail = &bl->head;
    if (bl->nheld && bl->srv) st_server_note_held(bl->srv, -(long)bl->nheld);
    bl->nheld = 0;
}

static void bl_free(blist *bl)
{
    if (!bl) return;
    if (bl->bs && st_map_get(&bl->bs->lists, bl->bare) == bl) st_map_del(&bl->bs->lists, bl->bare);
    st_map_each(&bl->items, free_value, NULL);
    st_map_free(&bl->items);
    held_free_all(bl);
    st_free(bl->bare);
    st_free(bl);
}

static blist *bl_new(blk_state *bs, const char *bare)
{
    blist *bl = st_calloc(1, sizeof *bl);
    if (!bl) return NULL;
    st_map_init(&bl->items);
    bl->tail = &bl->head;
    bl->bs = bs;
    if (!(bl->bare = st_strdup(bare)) || st_map_put(&bs->lists, bl->bare, bl) != 0) {
        st_free(bl->bare);
        st_free(bl);
        return NULL;
    }
    return bl;
}

static int bl_add(blist *bl, const char *jid)
{
    if (st_map_get(&bl->items, jid)) return 0;
    char *k = st_strdup(jid);
    if (!k) return -1;
    if (st_map_put(&bl->items, k, k) != 0) {
        st_free(k);
        return -1;
    }
    return 0;
}

static void bl_remove(blist *bl, const char *jid)
{
    st_free(st_map_del(&bl->items, jid));
}

static st_user *online_user(st_server *s, const char *bare)
{
    st_user *u = st_user_find(s, bare);
    return u && u->sessions ? u : NULL;
}

/* Drop the list if nothing needs it any more (its user is offline). */
static void bl_release(st_server *s, blist *bl)
{
    if (!bl->loading && !bl->replaying && !online_user(s, bl->bare)) bl_free(bl);
}

static int listed(const blist *bl, const char *node, const char *domain, const char *res)
{
    char k[JID_MAX];
    int n;
    if (node && res) n = snprintf(k, sizeof k, "%s@%s/%s", node, domain, res);
    else if (node) n = snprintf(k, sizeof k, "%s@%s", node, domain);
    else if (res) n = snprintf(k, sizeof k, "%s/%s", domain, res);
    else n = snprintf(k, sizeof k, "%s", domain);
    return n >= 0 && (size_t)n < sizeof k && st_map_get(&bl->items, k) != NULL;
}

static int is_ip_literal(const char *d)
{
    if (*d == '[') return 1;
    return strspn(d, "0123456789.") == strlen(d);
}

/* Does the list block peer? Candidates in XEP-0191 §6 order. */
static int blocked(const blist *bl, const st_jid *p)
{
    if (bl->items.count == 0) return 0;
    if (p->node && p->resource && listed(bl, p->node, p->domain, p->resource)) return 1;
    if (p->node && listed(bl, p->node, p->domain, NULL)) return 1;
    if (!p->node && p->resource && listed(bl, NULL, p->domain, p->resource)) return 1;
    if (listed(bl, NULL, p->domain, NULL)) return 1;
    if (is_ip_literal(p->domain)) return 0;
    /* "or address containing a subdomain": a blocked domain covers its subdomains */
    for (const char *d = strchr(p->domain, '.'); d && d[1]; d = strchr(d + 1, '.'))
        if (listed(bl, NULL, d + 1, NULL)) return 1;
    return 0;
}

static int blocked_str(const blist *bl, const char *jid)
{
    st_jid j;
    if (!jid || st_jid_parse(&j, jid, strlen(jid)) != 0) return 0;
    int r = blocked(bl, &j);
    st_jid_free(&j);
    return r;
}

/* Does one list item match peer? (the same rules, for one item) */
static int item_matches(const st_jid *it, const st_jid *p)
{
    if (it->node) {
        if (!p->node || strcmp(it->node, p->node) != 0 || strcmp(it->domain, p->domain) != 0)
            return 0;
        return !it->resource || (p->resource && strcmp(it->resource, p->resource) == 0);
    }
    if (it->resource)
        return !p->node && p->resource && strcmp(it->domain, p->domain) == 0 &&
               strcmp(it->resource, p->resource) == 0;
    size_t dl = strlen(it->domain), pl = strlen(p->domain);
    if (strcmp(it->domain, p->domain) == 0) return 1;
    return !is_ip_literal(p->domain) && pl > dl && p->domain[pl - dl - 1] == '.' &&
           strcmp(p->domain + pl - dl, it->domain) == 0;
}

/* Never filtered: the user's own account and resources, and its own server. */
static int exempt(const st_jid *user, const st_jid *peer)
{
    if (!peer->node) return strcmp(peer->domain, user->domain) == 0;
    return strcmp(peer->node, user->node) == 0 && strcmp(peer->domain, user->domain) == 0;
}

/* ---- refusing ---- */

static st_session *sender_session(st_server *s, st_stanza *st)
{
    const char *from = st_get(st, "from");
    return from ? st_session_find(s, from) : NULL;
}

/* Answer the user's own stanza with an error, straight to its session: the
 * router would run the filter on the way back and drop it. */
static void error_to_client(st_server *s, st_stanza *st, const char *cond, const char *text,
                            int with_blocked)
{
    const char *t = st_get(st, "type");
    if (t && (strcmp(t, "error") == 0 || (strcmp(st_name(st), "iq") == 0 &&
                                          strcmp(t, "result") == 0)))
        return;
    st_session *sess = sender_session(s, st);
    if (!sess) return;
    st_stanza *e = st_error_reply(st, cond, text);
    if (!e) return;
    st_node *en = st_child(e->root, "error", NULL);
    if (with_blocked && en) {
        /* the XEP's example says cancel: changing the stanza will not help */
        st_node_set_attr(e, en, "type", "cancel");
        e->cursor = en;
        st_tag(e, "blocked", NS_BLOCK_ERR);
        st_up(e);
    }
    if (st_stanza_ok(e)) st_session_send(sess, e);
    st_stanza_unref(e);
}

/* XEP-0191 §3.3: a blocked stanza, answered the way the XEP asks. */
static void refuse(st_server *s, st_stanza *st, int outbound, int from_client)
{
    if (strcmp(st_name(st), "presence") == 0 && (!outbound || !from_client))
        return; /* presence in, and our own broadcasts out: silently */
    if (!outbound) {
        /* message and iq get/set: as if the user were offline; st_route_error
         * drops errors and iq results itself */
        st_route_error(s, st, "service-unavailable", NULL);
        return;
    }
    if (from_client) error_to_client(s, st, "not-acceptable", NULL, 1);
}

/* Refused because the list could not be known (load failed, too much held). */
static void refuse_unknown(st_server *s, st_stanza *st, int outbound, int from_client,
                           const char *cond, const char *text)
{
    if (!outbound || !from_client) refuse(s, st, outbound, from_client);
    else error_to_client(s, st, cond, text, 0);
}

/* ---- loading, holding, replaying ---- */

typedef struct load_job {
    st_server *srv;
    blist *bl;
    char host[1024], node[1024];
    char **keys;
    size_t n, cap;
    int rc;
} load_job;

static void collect_key(void *ud, const char *key, const char *val, size_t len)
{
    load_job *j = ud;
    if (j->rc < 0) return;
    if (j->n == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 16;
        char **k = st_realloc(j->keys, cap * sizeof *k);
        if (!k) {
            j->rc = -1;
            return;
        }
        j->keys = k;
        j->cap = cap;
    }
    if (!(j->keys[j->n] = st_strdup(key))) {
        j->rc = -1;
        return;
    }
    j->n++;
}

static void load_work(void *h, void *arg)
{
    load_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    j->rc = 0;
    if (ops->kv_list(h, j->host, j->node, STORE, collect_key, j) < 0) j->rc = -1;
}

static void replay(st_server *s, blist *bl, int ok);

static void load_done(void *arg)
{
    load_job *j = arg;
    blist *bl = j->bl;
    int ok = j->rc == 0;
    bl->loading = 0;
    for (size_t i = 0; i < j->n; i++) {
        if (ok && bl_add(bl, j->keys[i]) != 0) ok = 0;
        st_free(j->keys[i]);
    }
    st_free(j->keys);
    if (!ok) st_error("mod_blocking", "%s: cannot load the blocklist", bl->bare);
    st_server *s = j->srv;
    st_free(j);
    replay(s, bl, ok);
    if (!ok || !bl->bs) bl_free(bl); /* a failed list is loaded again when next needed */
    else bl_release(s, bl);
}

static int bl_load(st_server *s, st_host *h, blist *bl, const char *node)
{
    load_job *j = st_calloc(1, sizeof *j);
    if (!j) return -1;
    j->srv = s;
    j->bl = bl;
    snprintf(j->host, sizeof j->host, "%s", h->name);
    snprintf(j->node, sizeof j->node, "%s", node);
    bl->loading = 1;
    if (st_storage_submit(s->store, load_work, load_done, j) != 0) {
        bl->loading = 0;
        st_free(j);
        return -1;
    }
    return 0;
}

/* The user's loaded list, or NULL if it is loading (*lst gets the list
 * that stanzas can wait for, NULL if even that failed). */
static blist *list_for(st_server *s, st_host *h, blk_state *bs, const char *bare,
                       const char *node, blist **lst)
{
    blist *bl = st_map_get(&bs->lists, bare);
    if (!bl) {
        if (!(bl = bl_new(bs, bare))) goto fail;
        if (bl_load(s, h, bl, node) != 0) {
            bl_free(bl);
            goto fail;
        }
    }
    *lst = bl;
    return bl->loading ? NULL : bl;
fail:
    *lst = NULL;
    return NULL;
}

/* Keep a copy of st until the list is loaded. 0, or -1 (not held). */
static int hold(st_server *s, blist *bl, st_stanza *st, const char *to, int outbound,
                int from_client)
{
    if (bl->nheld >= MAX_HELD) return -1;
    held *e = st_calloc(1, sizeof *e);
    if (!e) return -1;
    e->st = st_stanza_copy(st);
    if (!e->st || (to && st_node_set_attr(e->st, e->st->root, "to", to) != 0) ||
        (!st_get(e->st, "to") && !from_client)) {
        st_stanza_unref(e->st);
        st_free(e);
        return -1;
    }
    e->outbound = outbound;
    e->from_client = from_client;
    *bl->tail = e;
    bl->tail = &e->next;
    bl->nheld++;
    st_server_note_held(s, 1);
    bl->srv = s;
    return 0;
}

static void replay_one(st_server *s, blist *bl, held *e, int ok)
{
    st_stanza *st = e->st;
    if (!bl->bs) { /* the module went away meanwhile: nothing to enforce */
        st_session *sess = e->from_client ? sender_session(s, st) : NULL;
        if (sess) st_router_from_client(sess, st);
        else if (!e->from_client) st_route(s, st);
        return;
    }
    if (!ok) {
        refuse_unknown(s, st, e->outbound, e->from_client, "internal-server-error",
                       "the blocklist could not be loaded");
        return;
    }
    if (e->from_client) {
        /* everything the router does with a client stanza, filter first */
        st_session *sess = sender_session(s, st);
        if (sess) st_router_from_client(sess, st);
        else if (!blocked_str(bl, st_get(st, "to"))) st_route(s, st);
        return;
    }
    if (e->outbound && blocked_str(bl, st_get(st, "to"))) {
        refuse(s, st, 1, 0);
        return;
    }
    /* inbound: the router runs this filter again, now with the list */
    st_route(s, st);
}

static void replay(st_server *s, blist *bl, int ok)
{
    bl->replaying = 1;
    while (bl->head) {
        held *e = bl->head;
        bl->head = e->next;
        if (!bl->head) bl->tail = &bl->head;
        bl->nheld--;
        replay_one(s, bl, e, ok);
        st_server_note_held(s, -1);
        st_stanza_unref(e->st);
        st_free(e);
    }
    bl->replaying = 0;
}

/* ---- the filter ---- */

static st_verdict filter(st_server *s, st_host *h, st_stanza *st, const st_jid *user,
                         const st_jid *peer, int outbound)
{
    blk_state *bs = st_host_mod_state(h, &mod_blocking);
    char bare[BARE_MAX], to[JID_MAX];
    if (!bs || !user->node || exempt(user, peer)) return ST_PASS;
    if (st_jid_format(user, 0, bare, sizeof bare) < 0) return ST_PASS;
    int from_client = outbound && st_get(st, "to") != NULL;
    blist *wait, *bl = list_for(s, h, bs, bare, user->node, &wait);
    if (bl) {
        if (!blocked(bl, peer)) return ST_PASS;
        const char *other = st_get(st, outbound ? "to" : "from");
        st_debug("mod_blocking", "%s: %s %s %s blocked", bare, st_name(st),
                 outbound ? "to" : "from", other ? other : "(broadcast)");
        refuse(s, st, outbound, from_client);
        return ST_HANDLED;
    }
    /* the list is loading: hold the stanza, addressed so that it can be
     * routed again (broadcasts and probe answers carry no 'to') */
    const char *dest = NULL;
    if (!st_get(st, "to") && st_jid_format(outbound ? peer : user, 1, to, sizeof to) >= 0)
        dest = to;
    if (!wait || hold(s, wait, st, dest, outbound, from_client) != 0)
        refuse_unknown(s, st, outbound, from_client, "resource-constraint",
                       "too busy to check the blocklist; try again");
    return ST_HANDLED;
}

/* ---- pushes and presence after a change ---- */

/* XEP-0191 §3.3-3.5: to every resource that asked for the list. */
static void push(st_user *u, const char *elem, char **items, size_t n)
{
    for (st_session *x = u ? u->sessions : NULL; x; x = x->next_of_user) {
        if (!x->mod_data[ST_SLOT_BLOCKING]) continue;
        char id[48];
        st_server_make_id(u->srv, id, sizeof id);
        st_stanza *p = st_iq_new("set", id);
        if (!p) continue;
        st_attr_set(p, "to", x->full);
        st_tag(p, elem, NS_BLOCK);
        for (size_t i = 0; i < n; i++) {
            st_tag(p, "item", NULL);
            st_attr_set(p, "jid", items[i]);
            st_up(p);
        }
        if (st_stanza_ok(p)) st_session_send(x, p);
        st_stanza_unref(p);
    }
}

typedef struct pres_ctx {
    char bare[BARE_MAX];
    int block;    /* 1: send unavailable; 0: send current presence */
    st_jid *items; /* the changed items, parsed */
    size_t n;
} pres_ctx;

static void pres_ctx_free(pres_ctx *pc)
{
    for (size_t i = 0; i < pc->n; i++) st_jid_free(&pc->items[i]);
    st_free(pc->items);
    st_free(pc);
}

/* Send from session x to target: unavailable, or x's current presence.
 * Routed as the server's own stanza, past the user's (new) filter. */
static void send_presence(st_session *x, const char *target, int unavailable)
{
    st_stanza *p = unavailable ? st_stanza_new("presence", ST_NS_CLIENT)
                               : st_stanza_copy(x->presence);
    if (!p) return;
    st_attr_set(p, "from", x->full);
    st_attr_set(p, "to", target);
    if (unavailable) st_attr_set(p, "type", "unavailable");
    if (st_stanza_ok(p)) st_route(x->srv, p);
    st_stanza_unref(p);
}

typedef struct contact_ctx {
    st_user *u;
    pres_ctx *pc;
    blist *bl; /* the current list (unblock: is the contact still blocked?) */
} contact_ctx;

static int each_contact(void *ud, st_roster_item *it)
{
    contact_ctx *cc = ud;
    st_jid cj;
    if (!st_roster_visible(it) || (it->sub != ST_SUB_FROM && it->sub != ST_SUB_BOTH)) return 0;
    if (st_jid_parse(&cj, it->jid, strlen(it->jid)) != 0) return 0;
    for (size_t i = 0; i < cc->pc->n; i++) {
        const st_jid *item = &cc->pc->items[i];
        char target[JID_MAX];
        /* a full-JID item covers one resource of a contact: tell that one */
        int full = item->node && item->resource && st_jid_equal(item, &cj, 0);
        if (!full && !item_matches(item, &cj)) continue;
        if (st_jid_format(full ? item : &cj, full, target, sizeof target) < 0) continue;
        if (!cc->pc->block && cc->bl && blocked_str(cc->bl, target)) continue;
        for (st_session *x = cc->u->sessions; x; x = x->next_of_user)
            if (x->available && (cc->pc->block || x->presence))
                send_presence(x, target, cc->pc->block);
        if (!full) break; /* the whole contact is told once */
    }
    st_jid_free(&cj);
    return 0;
}

typedef struct directed_ctx {
    st_session *x;
    pres_ctx *pc;
} directed_ctx;

static int each_directed(void *ud, const char *key, void *v)
{
    directed_ctx *dc = ud;
    st_jid j;
    if (st_jid_parse(&j, key, strlen(key)) != 0) return 0;
    for (size_t i = 0; i < dc->pc->n; i++) {
        if (item_matches(&dc->pc->items[i], &j)) {
            send_presence(dc->x, key, 1);
            break;
        }
    }
    st_jid_free(&j);
    return 0;
}

static void pres_ready(st_user *u, void *ud)
{
    pres_ctx *pc = ud;
    blk_state *bs = st_host_mod_state(u->host, &mod_blocking);
    contact_ctx cc = {u, pc, bs ? st_map_get(&bs->lists, pc->bare) : NULL};
    if (u->roster) st_roster_each(u, each_contact, &cc);
    /* §3.3: contacts who got directed presence may receive presence too */
    if (pc->block) {
        for (st_session *x = u->sessions; x; x = x->next_of_user) {
            directed_ctx dc = {x, pc};
            if (x->available) st_map_each(&x->directed, each_directed, &dc);
        }
    }
    pres_ctx_free(pc);
}

/* §3.3 / §3.4: unavailable to contacts entitled to our presence when they
 * become blocked, and our current presence again when they are unblocked. */
static void presence_after(st_user *u, char **keys, size_t n, int block)
{
    if (!u || !n) return;
    pres_ctx *pc = st_calloc(1, sizeof *pc);
    if (!pc || !(pc->items = st_calloc(n, sizeof *pc->items))) {
        st_free(pc);
        return;
    }
    snprintf(pc->bare, sizeof pc->bare, "%s", u->bare);
    pc->block = block;
    for (size_t i = 0; i < n; i++)
        if (st_jid_parse(&pc->items[pc->n], keys[i], strlen(keys[i])) == 0) pc->n++;
    if (st_roster_with(u, pres_ready, pc) != 0) pres_ctx_free(pc);
}

/* ---- writes ---- */

enum wop { W_BLOCK, W_UNBLOCK, W_UNBLOCK_ALL };

typedef struct write_job {
    st_server *srv;
    st_iq_pending *p;
    enum wop op;
    char host[1024], node[1024], bare[BARE_MAX];
    char **keys; /* entries this command changed (owned) */
    size_t nkeys;
    char **req;  /* items as requested, normalised, for the push (owned) */
    size_t nreq;
    int rc;
} write_job;

static void strv_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) st_free(v[i]);
    st_free(v);
}

static void write_job_free(write_job *j)
{
    strv_free(j->keys, j->nkeys);
    strv_free(j->req, j->nreq);
    st_free(j);
}

static void write_work(void *h, void *arg)
{
    write_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    j->rc = 0;
    if (j->op == W_UNBLOCK_ALL) {
        if (ops->kv_del(h, j->host, j->node, STORE, NULL) < 0) j->rc = -1;
        return;
    }
    for (size_t i = 0; i < j->nkeys && j->rc == 0; i++) {
        int r = j->op == W_BLOCK ? ops->kv_put(h, j->host, j->node, STORE, j->keys[i], "", 0)
                                 : ops->kv_del(h, j->host, j->node, STORE, j->keys[i]);
        if (r < 0) j->rc = -1;
    }
}

static void write_done(void *arg)
{
    write_job *j = arg;
    st_host *h = st_server_host(j->srv, j->host);
    blk_state *bs = h ? st_host_mod_state(h, &mod_blocking) : NULL;
    blist *bl = bs ? st_map_get(&bs->lists, j->bare) : NULL;
    st_user *u = online_user(j->srv, j->bare);
    if (j->rc != 0) {
        /* undo in memory what storage does not have (if the list is still
         * here; a list loaded later comes from storage anyway) */
        st_error("mod_blocking", "%s: saving the blocklist failed", j->bare);
        for (size_t i = 0; bl && !bl->loading && i < j->nkeys; i++) {
            if (j->op == W_BLOCK) bl_remove(bl, j->keys[i]);
            else bl_add(bl, j->keys[i]);
        }
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        write_job_free(j);
        return;
    }
    st_iq_pending_result(j->p, NULL);
    if (j->op == W_BLOCK) {
        push(u, "block", j->req, j->nreq);
        presence_after(u, j->keys, j->nkeys, 1);
    } else {
        push(u, "unblock", j->req, j->op == W_UNBLOCK_ALL ? 0 : j->nreq);
        presence_after(u, j->keys, j->nkeys, 0);
    }
    write_job_free(j);
}

static int strv_push(char ***v, size_t *n, const char *s)
{
    char **nv = st_realloc(*v, (*n + 1) * sizeof *nv);
    if (!nv) return -1;
    *v = nv;
    if (!(nv[*n] = st_strdup(s))) return -1;
    (*n)++;
    return 0;
}

static int strv_has(char **v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0) return 1;
    return 0;
}

/* ---- IQ handlers ---- */

/* The user's loaded list for an IQ, or NULL if the IQ is held or answered. */
static blist *iq_list(st_iq_ctx *c)
{
    blk_state *bs = st_host_mod_state(c->host, &mod_blocking);
    if (!bs || !c->session) {
        st_iq_error(c, "service-unavailable", NULL);
        return NULL;
    }
    blist *wait, *bl = list_for(c->srv, c->host, bs, c->session->bare, c->session->jid.node, &wait);
    if (bl) return bl;
    /* replayed through the router once the list is in memory */
    if (!wait || hold(c->srv, wait, c->iq, NULL, 1, 1) != 0)
        st_iq_error(c, "resource-constraint", "too busy to read the blocklist; try again");
    return NULL;
}

static int add_item(void *ud, const char *k, void *v)
{
    st_stanza *r = ud;
    st_tag(r, "item", NULL);
    st_attr_set(r, "jid", k);
    st_up(r);
    return 0;
}

static st_verdict blk_get(st_iq_ctx *c)
{
    blist *bl = iq_list(c);
    if (!bl) return ST_HANDLED;
    st_stanza *r = st_iq_reply(c->iq);
    if (!r) {
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    st_tag(r, "blocklist", NS_BLOCK);
    st_map_each(&bl->items, add_item, r);
    if (st_stanza_ok(r)) {
        c->session->mod_data[ST_SLOT_BLOCKING] = (void *)1; /* wants pushes (§3.3) */
        st_iq_result(c, r);
    } else {
        st_iq_error(c, "internal-server-error", NULL);
    }
    st_stanza_unref(r);
    return ST_HANDLED;
}

/* Parse the <item jid=''/> children into normalised strings. 0, or an
 * error already answered (-1). */
static int parse_items(st_iq_ctx *c, write_job *j)
{
    for (st_node *n = st_first_elem(c->payload); n; n = st_next_elem(n)) {
        if (strcmp(n->name, "item") != 0 || strcmp(n->ns, NS_BLOCK) != 0) continue;
        const char *jid = st_attr_get(n, "jid");
        st_jid pj;
        if (!jid || st_jid_parse(&pj, jid, strlen(jid)) != 0) {
            st_iq_error(c, "jid-malformed", "an item needs a valid 'jid'");
            return -1;
        }
        char *norm = st_jid_full(&pj);
        st_jid_free(&pj);
        int r = norm && (strv_has(j->req, j->nreq, norm) || strv_push(&j->req, &j->nreq, norm) == 0);
        st_free(norm);
        if (!r) {
            st_iq_error(c, "internal-server-error", NULL);
            return -1;
        }
    }
    return 0;
}

static void submit_write(st_iq_ctx *c, write_job *j, blist *bl)
{
    if (!(j->p = st_iq_defer(c))) goto oom;
    if (st_storage_submit(c->srv->store, write_work, write_done, j) != 0) {
        /* nothing was written: undo in memory */
        for (size_t i = 0; i < j->nkeys; i++) {
            if (j->op == W_BLOCK) bl_remove(bl, j->keys[i]);
            else bl_add(bl, j->keys[i]);
        }
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        write_job_free(j);
    }
    return;
oom:
    st_iq_error(c, "internal-server-error", NULL);
    write_job_free(j);
}

static write_job *job_new(st_iq_ctx *c, enum wop op)
{
    write_job *j = st_calloc(1, sizeof *j);
    if (!j) {
        st_iq_error(c, "internal-server-error", NULL);
        return NULL;
    }
    j->srv = c->srv;
    j->op = op;
    snprintf(j->host, sizeof j->host, "%s", c->host->name);
    snprintf(j->node, sizeof j->node, "%s", c->session->jid.node);
    snprintf(j->bare, sizeof j->bare, "%s", c->session->bare);
    return j;
}

static st_verdict blk_block(st_iq_ctx *c)
{
    blist *bl = iq_list(c);
    if (!bl) return ST_HANDLED;
    write_job *j = job_new(c, W_BLOCK);
    if (!j) return ST_HANDLED;
    if (parse_items(c, j) != 0) goto done;
    if (j->nreq == 0) { /* §3.3: at least one item */
        st_iq_error(c, "bad-request", "<block/> needs at least one <item/>");
        goto done;
    }
    for (size_t i = 0; i < j->nreq; i++) {
        if (st_map_get(&bl->items, j->req[i])) continue;
        if (strv_push(&j->keys, &j->nkeys, j->req[i]) != 0) {
            st_iq_error(c, "internal-server-error", NULL);
            goto done;
        }
    }
    long long max = st_host_opt_num(c->host, &mod_blocking, "max_items");
    if (bl->items.count + j->nkeys > (size_t)max) {
        char text[96];
        snprintf(text, sizeof text, "the blocklist is full (at most %lld items)", max);
        st_iq_error(c, "policy-violation", text);
        goto done;
    }
    for (size_t i = 0; i < j->nkeys; i++) {
        if (bl_add(bl, j->keys[i]) != 0) {
            for (size_t k = 0; k < i; k++) bl_remove(bl, j->keys[k]);
            st_iq_error(c, "internal-server-error", NULL);
            goto done;
        }
    }
    submit_write(c, j, bl);
    return ST_HANDLED;
done:
    write_job_free(j);
    return ST_HANDLED;
}

static int take_key(void *ud, const char *k, void *v)
{
    write_job *j = ud;
    return strv_push(&j->keys, &j->nkeys, k) != 0; /* stop on OOM */
}

static st_verdict blk_unblock(st_iq_ctx *c)
{
    blist *bl = iq_list(c);
    if (!bl) return ST_HANDLED;
    write_job *j = job_new(c, W_UNBLOCK);
    if (!j) return ST_HANDLED;
    if (parse_items(c, j) != 0) goto done;
    if (j->nreq == 0) { /* §3.5: unblock everyone */
        j->op = W_UNBLOCK_ALL;
        st_map_each(&bl->items, take_key, j);
        if (j->nkeys != bl->items.count) {
            st_iq_error(c, "internal-server-error", NULL);
            goto done;
        }
    } else {
        for (size_t i = 0; i < j->nreq; i++) {
            if (!st_map_get(&bl->items, j->req[i])) continue; /* not blocked: nothing to do */
            if (strv_push(&j->keys, &j->nkeys, j->req[i]) != 0) {
                st_iq_error(c, "internal-server-error", NULL);
                goto done;
            }
        }
    }
    for (size_t i = 0; i < j->nkeys; i++) bl_remove(bl, j->keys[i]);
    submit_write(c, j, bl);
    return ST_HANDLED;
done:
    write_job_free(j);
    return ST_HANDLED;
}

/* ---- module life cycle ---- */

static int blk_init(st_host *h, void **state)
{
    blk_state *bs = st_calloc(1, sizeof *bs);
    if (!bs) return -1;
    st_map_init(&bs->lists);
    *state = bs;
    return 0;
}

static int collect_list(void *ud, const char *k, void *v)
{
    blist ***pp = ud;
    **pp = v;
    (*pp)++;
    return 0;
}

static void blk_fini(st_host *h, void *state)
{
    blk_state *bs = state;
    if (!bs) return;
    size_t n = bs->lists.count;
    blist **all = n ? st_calloc(n, sizeof *all) : NULL;
    if (n && !all) {
        st_error("mod_blocking", "host %s: out of memory while stopping", h->name);
        return; /* leaks the lists rather than touching them unsafely */
    }
    blist **p = all;
    st_map_each(&bs->lists, collect_list, &p);
    for (size_t i = 0; i < n; i++) {
        all[i]->bs = NULL; /* a loading list is freed by its job */
        if (!all[i]->loading) bl_free(all[i]);
    }
    st_free(all);
    st_map_free(&bs->lists);
    st_free(bs);
}

/* Start loading at bind, so that the list is usually in memory before the
 * client's first stanza needs it. */
static void bound(st_session *sess)
{
    blk_state *bs = st_host_mod_state(sess->host, &mod_blocking);
    blist *wait;
    sess->mod_data[ST_SLOT_BLOCKING] = NULL;
    if (bs) list_for(sess->srv, sess->host, bs, sess->bare, sess->jid.node, &wait);
}

static void ended(st_session *sess)
{
    blk_state *bs = st_host_mod_state(sess->host, &mod_blocking);
    blist *bl = bs ? st_map_get(&bs->lists, sess->bare) : NULL;
    st_user *u = sess->user;
    /* the last session is still linked in while modules hear of its end */
    if (bl && u->sessions == sess && !sess->next_of_user && !bl->loading && !bl->replaying)
        bl_free(bl);
}

static const char *const feats[] = {NS_BLOCK, NULL};

static const st_iq_handler iqs[] = {
    {NS_BLOCK, "blocklist", ST_IQ_GET, ST_TO_ACCOUNT, blk_get},
    {NS_BLOCK, "block", ST_IQ_SET, ST_TO_ACCOUNT, blk_block},
    {NS_BLOCK, "unblock", ST_IQ_SET, ST_TO_ACCOUNT, blk_unblock},
    {0},
};

static const st_module_opt opts[] = {
    {"max_items", ST_OPT_INT, "1000", 1, 100000, "most JIDs one user may block"},
    {0},
};

static const st_hooks hooks = {
    .filter = filter,
};

const st_module mod_blocking = {
    .name = "blocking",
    .spec = "XEP-0191",
    .title = "Blocking Command",
    .features = feats,
    .iqs = iqs,
    .opts = opts,
    .host_init = blk_init,
    .host_fini = blk_fini,
    .session_bound = bound,
    .session_end = ended,
    .hooks = &hooks,
    /* below presence (90): its unavailable broadcast at session end still
     * sees the list before we drop it */
    .priority = 80,
};
