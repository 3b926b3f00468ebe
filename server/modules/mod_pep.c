/* mod_pep.c - XEP-0163 Personal Eventing Protocol: every account is a
 * XEP-0060 publish-subscribe service.
 *
 * An IQ to a user's bare JID (or without 'to', for the owner) in the pubsub
 * namespaces is the account's PEP service: publish (creating the node on
 * first use, with XEP-0223 publish-options as preconditions), retract,
 * items (all, max_items, by id), create, configure, purge, delete. Access
 * models: presence (the default: contacts with a 'from' or 'both'
 * subscription), open, whitelist (the owner only: there is no affiliation
 * management yet). Subscriptions are implicit (§4.3): a resource that
 * advertises NODE+notify in its XEP-0115 caps gets notifications, and
 * the last item of each node when it becomes available (§6.2) or when a
 * contact approves its subscription.
 *
 * Design: a service is loaded into memory (nodes, configs and items) when
 * something first needs it, after the account's roster (access checks read
 * it), and dropped when the account's last session ends or, for an offline
 * account, when the operation that loaded it is done. Every change is written
 * through to the kv store: "pep-nodes" maps a node name to its config,
 * "pep:NODE" maps item id to payload XML (kv_put makes a republished id the
 * newest, kv_trim enforces max_items). The storage thread runs jobs in order,
 * so a service loaded again later reads what was written before. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "server/log.h"
#include "server/modules/caps.h"
#include "server/modules/pep.h"
#include "server/roster.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/error.h"
#include "starling/xmlstream.h"

#define NS_PUBSUB ST_NS_PUBSUB
#define NS_OWNER "http://jabber.org/protocol/pubsub#owner"
#define NS_EVENT ST_NS_PUBSUB_EVENT
#define NS_ERRORS "http://jabber.org/protocol/pubsub#errors"
#define NS_INFO "http://jabber.org/protocol/disco#info"
#define NS_ITEMS "http://jabber.org/protocol/disco#items"
#define NS_XDATA "jabber:x:data"
#define FORM_NODE_CONFIG "http://jabber.org/protocol/pubsub#node_config"
#define FORM_PUBLISH_OPTIONS "http://jabber.org/protocol/pubsub#publish-options"
#define STORE_NODES "pep-nodes"
#define MAX_NODE_NAME 1024
#define MAX_ID 1024

extern const st_module mod_pep;

/* ---- the in-memory service ---- */

typedef struct pep_item {
    char *id;
    st_stanza *payload; /* root = the payload element */
} pep_item;

typedef struct pep_node {
    char *name;
    st_pep_config cfg;
    pep_item *items; /* oldest first */
    size_t n, cap;
    struct pep_node *next;
} pep_node;

typedef struct pep_service pep_service;
typedef void (*svc_fn)(pep_service *svc, st_user *u, void *ud);

typedef struct pep_wait {
    svc_fn fn;
    void *ud;
    struct pep_wait *next;
} pep_wait;

struct pep_service {
    char *bare; /* key in the host's map */
    pep_node *nodes;
    size_t nnodes;
    int loaded, loading;
    int busy; /* callbacks running on it: a nested one must not free it */
    pep_wait *waiters;
};

typedef struct pep_host {
    st_map services; /* bare JID -> pep_service */
} pep_host;

static const st_pep_config default_config = {ST_PEP_PRESENCE, 1, 1};

static void item_clear(pep_item *it)
{
    st_free(it->id);
    st_stanza_unref(it->payload);
}

static void node_free(pep_node *n)
{
    for (size_t i = 0; i < n->n; i++)
        item_clear(&n->items[i]);
    st_free(n->items);
    st_free(n->name);
    st_free(n);
}

static void service_free(pep_service *svc)
{
    while (svc->nodes) {
        pep_node *n = svc->nodes;
        svc->nodes = n->next;
        node_free(n);
    }
    st_free(svc->bare);
    st_free(svc);
}

static pep_node *node_find(pep_service *svc, const char *name)
{
    for (pep_node *n = svc->nodes; n; n = n->next)
        if (strcmp(n->name, name) == 0) return n;
    return NULL;
}

static pep_node *node_add(pep_service *svc, const char *name, const st_pep_config *cfg)
{
    pep_node *n = st_calloc(1, sizeof *n);
    if (!n || !(n->name = st_strdup(name))) {
        st_free(n);
        return NULL;
    }
    n->cfg = *cfg;
    /* append: disco#items lists nodes in creation order */
    pep_node **pp = &svc->nodes;
    while (*pp)
        pp = &(*pp)->next;
    *pp = n;
    svc->nnodes++;
    return n;
}

static void node_unlink(pep_service *svc, pep_node *n)
{
    for (pep_node **pp = &svc->nodes; *pp; pp = &(*pp)->next) {
        if (*pp == n) {
            *pp = n->next;
            svc->nnodes--;
            return;
        }
    }
}

static pep_item *item_find(pep_node *n, const char *id)
{
    for (size_t i = 0; i < n->n; i++)
        if (strcmp(n->items[i].id, id) == 0) return &n->items[i];
    return NULL;
}

static void item_remove_at(pep_node *n, size_t i)
{
    item_clear(&n->items[i]);
    memmove(&n->items[i], &n->items[i + 1], (n->n - i - 1) * sizeof *n->items);
    n->n--;
}

/* The effective max_items: "max" and larger values are the host's limit. */
static size_t node_max(const st_host *h, const pep_node *n)
{
    long long lim = st_host_opt_num(h, &mod_pep, "max_items");
    long long m = n->cfg.max_items < 0 || n->cfg.max_items > lim ? lim : n->cfg.max_items;
    return m < 1 ? 1 : (size_t)m;
}

/* Append (replacing an item with the same id: it becomes the newest) and
 * drop the oldest beyond max. Takes payload's reference on success. */
static int item_put(pep_node *n, const char *id, st_stanza *payload, size_t max)
{
    for (size_t i = 0; i < n->n; i++) {
        if (strcmp(n->items[i].id, id) == 0) {
            item_remove_at(n, i);
            break;
        }
    }
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 4;
        pep_item *v = st_realloc(n->items, cap * sizeof *v);
        if (!v) return -1;
        n->items = v;
        n->cap = cap;
    }
    char *d = st_strdup(id);
    if (!d) return -1;
    n->items[n->n++] = (pep_item){d, payload};
    while (n->n > max)
        item_remove_at(n, 0);
    return 0;
}

/* ---- config as stored: "access=open;max_items=10;persist_items=1" ---- */

static const char *access_name(int a)
{
    return a == ST_PEP_OPEN ? "open" : a == ST_PEP_WHITELIST ? "whitelist" : "presence";
}

static int access_parse(const char *s)
{
    if (!strcmp(s, "open")) return ST_PEP_OPEN;
    if (!strcmp(s, "presence")) return ST_PEP_PRESENCE;
    if (!strcmp(s, "whitelist")) return ST_PEP_WHITELIST;
    return -1;
}

static int max_parse(const char *s, long long *out)
{
    if (!strcmp(s, "max")) {
        *out = -1;
        return 0;
    }
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || v < 1) return -1;
    *out = v;
    return 0;
}

static int bool_parse(const char *s, int *out)
{
    if (!strcmp(s, "1") || !strcmp(s, "true"))
        *out = 1;
    else if (!strcmp(s, "0") || !strcmp(s, "false"))
        *out = 0;
    else
        return -1;
    return 0;
}

static char *config_text(const st_pep_config *c)
{
    char buf[128];
    char m[32];
    if (c->max_items < 0)
        snprintf(m, sizeof m, "max");
    else
        snprintf(m, sizeof m, "%lld", c->max_items);
    snprintf(buf, sizeof buf, "access_model=%s;max_items=%s;persist_items=%d",
             access_name(c->access), m, c->persist);
    return st_strdup(buf);
}

static void config_from_text(st_pep_config *c, const char *s, size_t len)
{
    *c = default_config;
    char buf[256];
    snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf ? len : sizeof buf - 1), s);
    char *save = NULL;
    for (char *kv = strtok_r(buf, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) continue;
        *eq++ = 0;
        int a;
        if (!strcmp(kv, "access_model") && (a = access_parse(eq)) >= 0)
            c->access = a;
        else if (!strcmp(kv, "max_items"))
            max_parse(eq, &c->max_items);
        else if (!strcmp(kv, "persist_items"))
            bool_parse(eq, &c->persist);
    }
}

/* ---- data forms (node_config, publish-options) ---- */

enum { F_ACCESS = 1, F_MAX = 2, F_PERSIST = 4 };

/* Read the fields we know from form x into cfg; *seen gets which were
 * there. Unknown fields are ignored. 0, or -1 for a value we cannot take. */
static int form_read(const st_node *x, st_pep_config *cfg, int *seen)
{
    *seen = 0;
    for (st_node *f = st_first_elem(x); f; f = st_next_elem(f)) {
        if (strcmp(f->name, "field") || strcmp(f->ns, NS_XDATA)) continue;
        const char *var = st_attr_get(f, "var");
        const char *v = st_child_text(f, "value", NS_XDATA);
        if (!var || !v) continue;
        if (!strcmp(var, "pubsub#access_model")) {
            if ((cfg->access = access_parse(v)) < 0) return -1;
            *seen |= F_ACCESS;
        } else if (!strcmp(var, "pubsub#max_items")) {
            if (max_parse(v, &cfg->max_items)) return -1;
            *seen |= F_MAX;
        } else if (!strcmp(var, "pubsub#persist_items")) {
            if (bool_parse(v, &cfg->persist)) return -1;
            *seen |= F_PERSIST;
        }
    }
    return 0;
}

/* XEP-0223 §4: each option given must equal the node's configuration. */
static int preconditions_met(const st_pep_config *have, const st_pep_config *want, int seen)
{
    if ((seen & F_ACCESS) && have->access != want->access) return 0;
    if ((seen & F_MAX) && have->max_items != want->max_items) return 0;
    if ((seen & F_PERSIST) && have->persist != want->persist) return 0;
    return 1;
}

static void form_field(st_stanza *r, const char *var, const char *type, const char *value)
{
    st_tag(r, "field", NULL);
    st_attr_set(r, "var", var);
    if (type) st_attr_set(r, "type", type);
    st_text_tag(r, "value", value);
    st_up(r);
}

static void config_form(st_stanza *r, const st_pep_config *c)
{
    char m[32];
    if (c->max_items < 0)
        snprintf(m, sizeof m, "max");
    else
        snprintf(m, sizeof m, "%lld", c->max_items);
    st_tag(r, "x", NS_XDATA);
    st_attr_set(r, "type", "form");
    form_field(r, "FORM_TYPE", "hidden", FORM_NODE_CONFIG);
    st_tag(r, "field", NULL);
    st_attr_set(r, "var", "pubsub#access_model");
    st_attr_set(r, "type", "list-single");
    st_text_tag(r, "value", access_name(c->access));
    for (int a = 0; a < 3; a++) {
        st_tag(r, "option", NULL);
        st_text_tag(r, "value", access_name(a));
        st_up(r);
    }
    st_up(r);
    form_field(r, "pubsub#max_items", "text-single", m);
    form_field(r, "pubsub#persist_items", "boolean", c->persist ? "1" : "0");
    st_up(r);
}

/* ---- listeners (avatar and bookmark conversion) ---- */

static struct {
    char node[128];
    st_pep_fn fn;
} listeners[16];

int st_pep_listen(const char *node, st_pep_fn fn)
{
    for (size_t i = 0; i < sizeof listeners / sizeof *listeners; i++) {
        if (listeners[i].fn == fn && !strcmp(listeners[i].node, node)) return 0;
        if (!listeners[i].fn) {
            if (strlen(node) >= sizeof listeners[i].node) return -1;
            snprintf(listeners[i].node, sizeof listeners[i].node, "%s", node);
            listeners[i].fn = fn;
            return 0;
        }
    }
    return -1;
}

static void tell_listeners(st_host *h, const char *bare, const char *node, const char *id,
                           const st_node *payload)
{
    for (size_t i = 0; i < sizeof listeners / sizeof *listeners && listeners[i].fn; i++)
        if (!strcmp(listeners[i].node, node)) listeners[i].fn(h, bare, node, id, payload);
}

/* ---- storage ---- */

enum { W_PUT, W_DEL, W_DEL_STORE };

typedef struct write_job {
    st_server *srv;
    int op;
    char host[1024];
    char user[1024];
    char *store, *key, *val;
    size_t len;
    size_t trim; /* after a put: keep only this many (0 = do not trim) */
    int rc;
} write_job;

static void write_work(void *h, void *arg)
{
    write_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    if (j->op == W_PUT) {
        j->rc = ops->kv_put(h, j->host, j->user, j->store, j->key, j->val, j->len);
        if (j->rc == 0 && j->trim) j->rc = ops->kv_trim(h, j->host, j->user, j->store, j->trim) < 0;
    } else {
        j->rc = ops->kv_del(h, j->host, j->user, j->store, j->op == W_DEL ? j->key : NULL) < 0;
    }
}

static void write_job_free(write_job *j)
{
    st_free(j->store);
    st_free(j->key);
    st_free(j->val);
    st_free(j);
}

static void write_done(void *arg)
{
    write_job *j = arg;
    if (j->rc != 0)
        st_error("mod_pep", "%s@%s: could not write %s/%s", j->user, j->host, j->store,
                 j->key ? j->key : "*");
    write_job_free(j);
}

/* Queue a write; val (owned, may be NULL) is taken. */
static void store_write(st_server *srv, const char *bare, int op, const char *store,
                        const char *key, char *val, size_t len, size_t trim)
{
    write_job *j = st_calloc(1, sizeof *j);
    const char *at = strchr(bare, '@');
    if (!j || !at) goto fail;
    j->srv = srv;
    j->op = op;
    snprintf(j->user, sizeof j->user, "%.*s", (int)(at - bare), bare);
    snprintf(j->host, sizeof j->host, "%s", at + 1);
    j->store = st_strdup(store);
    j->key = key ? st_strdup(key) : NULL;
    j->val = val;
    j->len = len;
    j->trim = trim;
    val = NULL;
    if (!j->store || (key && !j->key)) goto fail;
    if (st_storage_submit(srv->store, write_work, write_done, j) != 0) goto fail;
    return;
fail:
    st_error("mod_pep", "%s: out of memory while queueing a write of %s", bare, store);
    if (j) write_job_free(j);
    st_free(val);
}

static char *items_store(const char *node)
{
    size_t n = strlen(node) + 5;
    char *s = st_malloc(n);
    if (s) snprintf(s, n, "pep:%s", node);
    return s;
}

static void store_config(st_server *srv, const char *bare, const pep_node *n)
{
    char *t = config_text(&n->cfg);
    if (t) store_write(srv, bare, W_PUT, STORE_NODES, n->name, t, strlen(t), 0);
}

static void store_item(st_server *srv, const st_host *h, const char *bare, pep_node *n,
                       const pep_item *it)
{
    st_buf b;
    st_buf_init(&b, 0);
    char *store = items_store(n->name);
    if (store && st_serialize(it->payload->root, "", &b) == 0) {
        size_t len;
        char *v = st_buf_steal(&b, &len);
        if (v) store_write(srv, bare, W_PUT, store, it->id, v, len, node_max(h, n));
    }
    st_buf_free(&b);
    st_free(store);
}

static void store_del_items(st_server *srv, const char *bare, const char *node, const char *id)
{
    char *store = items_store(node);
    if (store) store_write(srv, bare, id ? W_DEL : W_DEL_STORE, store, id, NULL, 0, 0);
    st_free(store);
}

/* -- loading a service -- */

typedef struct kvpair {
    char *key, *val;
    size_t len;
} kvpair;

typedef struct kvlist {
    kvpair *v;
    size_t n, cap;
    int oom;
} kvlist;

static void kvlist_add(void *ud, const char *key, const char *val, size_t len)
{
    kvlist *l = ud;
    if (l->oom) return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        kvpair *v = st_realloc(l->v, cap * sizeof *v);
        if (!v) {
            l->oom = 1;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    kvpair *p = &l->v[l->n];
    p->key = st_strdup(key);
    p->val = st_strndup(val, len);
    p->len = len;
    if (!p->key || !p->val) {
        st_free(p->key);
        st_free(p->val);
        l->oom = 1;
        return;
    }
    l->n++;
}

static void kvlist_free(kvlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        st_free(l->v[i].key);
        st_free(l->v[i].val);
    }
    st_free(l->v);
}

typedef struct load_job {
    st_server *srv;
    char host[1024];
    char user[1024];
    char bare[2100];
    kvlist nodes;
    kvlist *items; /* one per node */
    int rc;
} load_job;

static void load_work(void *h, void *arg)
{
    load_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    j->rc = -1;
    if (ops->kv_list(h, j->host, j->user, STORE_NODES, kvlist_add, &j->nodes) < 0 || j->nodes.oom)
        return;
    j->items = st_calloc(j->nodes.n ? j->nodes.n : 1, sizeof *j->items);
    if (!j->items) return;
    for (size_t i = 0; i < j->nodes.n; i++) {
        char *store = items_store(j->nodes.v[i].key);
        /* each() must not call back into the back end: collect, then list the next */
        int r = store ? ops->kv_list(h, j->host, j->user, store, kvlist_add, &j->items[i]) : -1;
        st_free(store);
        if (r < 0 || j->items[i].oom) return;
    }
    j->rc = 0;
}

static pep_host *host_state(const st_host *h)
{
    return h ? st_host_mod_state(h, &mod_pep) : NULL;
}

static void maybe_evict(st_host *h, pep_service *svc);

static void run_waiters(pep_service *svc, st_user *u)
{
    while (svc->waiters) {
        pep_wait *w = svc->waiters;
        svc->waiters = w->next;
        w->fn(svc, u, w->ud);
        st_free(w);
    }
}

static void load_done(void *arg)
{
    load_job *j = arg;
    st_host *h = st_server_host(j->srv, j->host);
    pep_host *ph = host_state(h);
    pep_service *svc = ph ? st_map_get(&ph->services, j->bare) : NULL;
    st_user *u = st_user_find(j->srv, j->bare);
    if (!svc || !u) goto out; /* the host went away with a reload */
    svc->loading = 0;
    if (j->rc != 0) {
        st_error("mod_pep", "%s: cannot load the PEP service", j->bare);
    } else {
        for (size_t i = 0; i < j->nodes.n; i++) {
            st_pep_config cfg;
            config_from_text(&cfg, j->nodes.v[i].val, j->nodes.v[i].len);
            pep_node *n = node_add(svc, j->nodes.v[i].key, &cfg);
            if (!n) continue;
            size_t max = node_max(h, n);
            for (size_t k = 0; k < j->items[i].n; k++) {
                kvpair *p = &j->items[i].v[k];
                const char *err = NULL;
                st_stanza *pl = st_xml_parse_element(p->val, p->len, &err);
                if (!pl) {
                    st_warn("mod_pep", "%s: damaged item %s on %s skipped", j->bare, p->key,
                            n->name);
                    continue;
                }
                if (item_put(n, p->key, pl, max) != 0) st_stanza_unref(pl);
            }
        }
    }
    svc->loaded = 1; /* even after an error: work on what we have */
    svc->busy++;
    run_waiters(svc, u);
    svc->busy--;
    maybe_evict(h, svc);
out:
    if (u) st_user_release(u); /* held while loading */
    kvlist_free(&j->nodes);
    for (size_t i = 0; j->items && i < j->nodes.n; i++)
        kvlist_free(&j->items[i]);
    st_free(j->items);
    st_free(j);
}

/* Drop a service from memory when nobody needs it any more. */
static void maybe_evict(st_host *h, pep_service *svc)
{
    pep_host *ph = host_state(h);
    if (!ph || svc->loading || svc->waiters || svc->busy) return;
    st_user *u = st_user_find(h->srv, svc->bare);
    if (u && u->sessions) return;
    st_map_del(&ph->services, svc->bare);
    service_free(svc);
}

typedef struct svc_req {
    svc_fn fn;
    void *ud;
} svc_req;

static void roster_ready(st_user *u, void *ud)
{
    svc_req *r = ud;
    pep_host *ph = host_state(u->host);
    pep_service *svc = ph ? st_map_get(&ph->services, u->bare) : NULL;
    if (!ph) goto fail;
    if (!svc) {
        svc = st_calloc(1, sizeof *svc);
        if (!svc || !(svc->bare = st_strdup(u->bare)) ||
            st_map_put(&ph->services, svc->bare, svc) != 0) {
            if (svc) st_free(svc->bare);
            st_free(svc);
            goto fail;
        }
    }
    if (svc->loaded) {
        svc->busy++;
        r->fn(svc, u, r->ud);
        svc->busy--;
        st_free(r);
        maybe_evict(u->host, svc);
        return;
    }
    pep_wait *w = st_calloc(1, sizeof *w);
    if (!w) goto fail_svc;
    w->fn = r->fn;
    w->ud = r->ud;
    pep_wait **pp = &svc->waiters;
    while (*pp)
        pp = &(*pp)->next;
    *pp = w;
    st_free(r);
    if (svc->loading) return;
    load_job *j = st_calloc(1, sizeof *j);
    if (!j) goto fail_load;
    j->srv = u->srv;
    snprintf(j->host, sizeof j->host, "%s", u->host->name);
    snprintf(j->user, sizeof j->user, "%s", u->node);
    snprintf(j->bare, sizeof j->bare, "%s", u->bare);
    svc->loading = 1;
    st_user_hold(u);
    if (st_storage_submit(u->srv->store, load_work, load_done, j) != 0) {
        svc->loading = 0;
        st_user_release(u);
        st_free(j);
        goto fail_load;
    }
    return;
fail_load:
    /* run the waiters on an empty, unloaded view: they answer with errors */
    st_error("mod_pep", "%s: out of memory while loading the PEP service", u->bare);
    while (svc->waiters) {
        pep_wait *x = svc->waiters;
        svc->waiters = x->next;
        x->fn(NULL, u, x->ud);
        st_free(x);
    }
    maybe_evict(u->host, svc);
    return;
fail_svc:
    maybe_evict(u->host, svc);
fail:
    r->fn(NULL, u, r->ud);
    st_free(r);
}

/* Run fn(svc, u, ud) when the roster and the PEP service of node@h are in
 * memory; svc is NULL if that failed (fn must still clean up ud). */
static int with_service(st_host *h, const char *node, svc_fn fn, void *ud)
{
    st_user *u = st_user_get(h->srv, h, node);
    svc_req *r = st_calloc(1, sizeof *r);
    if (!u || !r) {
        st_free(r);
        if (u) {
            st_user_hold(u);
            st_user_release(u);
        }
        return -1;
    }
    r->fn = fn;
    r->ud = ud;
    st_user_hold(u);
    int rc = st_roster_with(u, roster_ready, r);
    if (rc != 0) st_free(r);
    st_user_release(u);
    return rc;
}

/* ---- access and delivery ---- */

static int has_from(st_sub s)
{
    return s == ST_SUB_FROM || s == ST_SUB_BOTH;
}

static int is_owner(const pep_service *svc, const char *bare)
{
    return strcmp(svc->bare, bare) == 0;
}

/* May the entity with this bare JID see the node's items? */
static int may_access(const pep_service *svc, st_user *owner, const pep_node *n, const char *bare)
{
    if (is_owner(svc, bare)) return 1;
    if (n->cfg.access == ST_PEP_OPEN) return 1;
    if (n->cfg.access == ST_PEP_PRESENCE) {
        st_roster_item *it = st_roster_find(owner, bare);
        return it && st_roster_visible(it) && has_from(it->sub);
    }
    return 0; /* whitelist: the owner only, until affiliations exist */
}

static int asked_for(const st_session *x, const pep_node *n)
{
    char feat[MAX_NODE_NAME + 8];
    snprintf(feat, sizeof feat, "%s+notify", n->name);
    return st_caps_has(x, feat);
}

static int wants(const st_session *x, const pep_node *n)
{
    return x->available && asked_for(x, n);
}

/* A notification from owner (no 'to'), cursor inside <event/>. */
static st_stanza *event_new(st_server *srv, const char *owner)
{
    char id[64];
    st_server_make_id(srv, id, sizeof id);
    st_stanza *m = st_stanza_new("message", ST_NS_CLIENT);
    if (!m) return NULL;
    st_attr_set(m, "from", owner);
    st_attr_set(m, "type", "headline");
    st_attr_set(m, "id", id);
    st_tag(m, "event", NS_EVENT);
    return m;
}

static void add_item(st_stanza *r, const pep_item *it)
{
    st_tag(r, "item", NULL);
    st_attr_set(r, "id", it->id);
    st_add_copy(r, it->payload->root);
    st_up(r);
}

/* Send msg (from the owner) to session x, through the blocking filters. */
static void deliver(st_server *srv, st_user *owner, st_session *x, st_stanza *msg)
{
    if (x->user != owner) {
        st_jid oj;
        if (st_jid_parse(&oj, owner->bare, strlen(owner->bare)) != 0) return;
        int blocked = st_route_filter(srv, owner->host, msg, &oj, &x->jid, 1) == ST_HANDLED ||
                      st_route_filter(srv, x->host, msg, &x->jid, &oj, 0) == ST_HANDLED;
        st_jid_free(&oj);
        if (blocked) return;
    }
    st_session_send_to(x, msg, x->full);
}

typedef struct fan_ctx {
    pep_service *svc;
    st_user *owner;
    pep_node *n;
    st_stanza *msg;
} fan_ctx;

static int fan_contact(void *ud, st_roster_item *it)
{
    fan_ctx *f = ud;
    if (!st_roster_visible(it) || !has_from(it->sub) ||
        !may_access(f->svc, f->owner, f->n, it->jid))
        return 0;
    st_user *cu = st_user_find(f->owner->srv, it->jid);
    for (st_session *x = cu ? cu->sessions : NULL; x; x = x->next_of_user)
        if (wants(x, f->n)) deliver(f->owner->srv, f->owner, x, f->msg);
    return 0;
}

/* §4.3: to the owner's resources and the contacts' resources that asked
 * for NODE+notify and may see the node. */
static void fanout(pep_service *svc, st_user *owner, pep_node *n, st_stanza *msg)
{
    if (!st_stanza_ok(msg)) return;
    for (st_session *x = owner->sessions; x; x = x->next_of_user)
        if (wants(x, n)) deliver(owner->srv, owner, x, msg);
    fan_ctx f = {svc, owner, n, msg};
    if (n->cfg.access != ST_PEP_WHITELIST) st_roster_each(owner, fan_contact, &f);
}

static void notify_items(pep_service *svc, st_user *owner, pep_node *n, const pep_item *it,
                         const char *retracted)
{
    st_stanza *m = event_new(owner->srv, svc->bare);
    if (!m) return;
    st_tag(m, "items", NULL);
    st_attr_set(m, "node", n->name);
    if (it) {
        add_item(m, it);
    } else {
        st_tag(m, "retract", NULL);
        st_attr_set(m, "id", retracted);
        st_up(m);
    }
    fanout(svc, owner, n, m);
    st_stanza_unref(m);
}

static void notify_node(pep_service *svc, st_user *owner, pep_node *n, const char *what)
{
    st_stanza *m = event_new(owner->srv, svc->bare);
    if (!m) return;
    st_tag(m, what, NULL);
    st_attr_set(m, "node", n->name);
    fanout(svc, owner, n, m);
    st_stanza_unref(m);
}

/* §6.2: the last item of every node x wants and may see. */
static void send_last(pep_service *svc, st_user *owner, st_session *x)
{
    for (pep_node *n = svc->nodes; n; n = n->next) {
        /* caps come from an available presence that mod_presence may not
         * have recorded yet: no check of x->available here */
        if (!n->n || !asked_for(x, n) || !may_access(svc, owner, n, x->bare)) continue;
        st_stanza *m = event_new(owner->srv, svc->bare);
        if (!m) return;
        st_tag(m, "items", NULL);
        st_attr_set(m, "node", n->name);
        add_item(m, &n->items[n->n - 1]);
        if (st_stanza_ok(m)) deliver(owner->srv, owner, x, m);
        st_stanza_unref(m);
    }
}

/* ---- operations on a loaded service ---- */

/* Publish as the owner. 0, or -1 with the error in *cond / *pscond. */
static int do_publish(pep_service *svc, st_user *u, const char *node, const char *id,
                      const st_node *payload, const st_pep_config *opts, int seen, int precondition,
                      const char **cond, const char **pscond)
{
    st_host *h = u->host;
    pep_node *n = node_find(svc, node);
    int created = 0;
    *cond = "internal-server-error";
    *pscond = NULL;
    if (n && precondition && !preconditions_met(&n->cfg, opts, seen)) {
        *cond = "conflict";
        *pscond = "precondition-not-met";
        return -1;
    }
    if (!n) {
        if ((long long)svc->nnodes >= st_host_opt_num(h, &mod_pep, "max_nodes")) {
            *cond = "not-allowed";
            *pscond = "max-nodes-exceeded";
            return -1;
        }
        st_pep_config cfg = default_config;
        if (seen & F_ACCESS) cfg.access = opts->access;
        if (seen & F_MAX) cfg.max_items = opts->max_items;
        if (seen & F_PERSIST) cfg.persist = opts->persist;
        if (!(n = node_add(svc, node, &cfg))) return -1;
        created = 1;
    }
    st_stanza *pl = st_stanza_from_node(payload);
    if (!pl || item_put(n, id, pl, node_max(h, n)) != 0) {
        st_stanza_unref(pl);
        if (created) {
            node_unlink(svc, n);
            node_free(n);
        }
        return -1;
    }
    if (created) store_config(u->srv, svc->bare, n);
    pep_item *it = &n->items[n->n - 1];
    if (n->cfg.persist) store_item(u->srv, h, svc->bare, n, it);
    notify_items(svc, u, n, it, NULL);
    tell_listeners(h, svc->bare, n->name, it->id, it->payload->root);
    return 0;
}

static int do_retract(pep_service *svc, st_user *u, pep_node *n, const char *id)
{
    for (size_t i = 0; i < n->n; i++) {
        if (strcmp(n->items[i].id, id) != 0) continue;
        item_remove_at(n, i);
        if (n->cfg.persist) store_del_items(u->srv, svc->bare, n->name, id);
        notify_items(svc, u, n, NULL, id);
        tell_listeners(u->host, svc->bare, n->name, id, NULL);
        return 0;
    }
    return -1;
}

/* ---- IQ handling ---- */

enum kind { K_PUBSUB, K_OWNER, K_INFO, K_ITEMS };

typedef struct op {
    st_iq_pending *p;
    enum kind kind;
    int type;
    char req[2100]; /* requester's bare JID */
} op;

/* Answer with an error, with a pubsub#errors condition if given. Frees o. */
static void op_fail(op *o, const char *cond, const char *pscond, const char *feature)
{
    st_stanza *e = st_error_reply(st_iq_pending_iq(o->p), cond, NULL);
    st_node *en = e ? st_child(e->root, "error", NULL) : NULL;
    if (en && pscond) {
        e->cursor = en;
        st_tag(e, pscond, NS_ERRORS);
        if (feature) st_attr_set(e, "feature", feature);
        st_top(e);
    }
    if (e && st_stanza_ok(e))
        st_iq_pending_result(o->p, e);
    else
        st_iq_pending_error(o->p, cond, NULL);
    st_stanza_unref(e);
    st_free(o);
}

static void op_result(op *o, st_stanza *r)
{
    if (!r || st_stanza_ok(r))
        st_iq_pending_result(o->p, r);
    else
        st_iq_pending_error(o->p, "internal-server-error", NULL);
    st_stanza_unref(r);
    st_free(o);
}

static st_stanza *reply_for(op *o)
{
    return st_iq_reply(st_iq_pending_iq(o->p));
}

static int valid_name(const char *s, size_t max)
{
    return s && *s && strlen(s) <= max;
}

static void op_publish(op *o, pep_service *svc, st_user *u, st_node *pub, st_node *ps)
{
    const char *node = st_attr_get(pub, "node");
    if (!is_owner(svc, o->req)) {
        op_fail(o, "forbidden", NULL, NULL);
        return;
    }
    if (!valid_name(node, MAX_NODE_NAME)) {
        op_fail(o, "bad-request", "nodeid-required", NULL);
        return;
    }
    st_node *item = st_child(pub, "item", NS_PUBSUB);
    if (!item) {
        op_fail(o, "bad-request", "item-required", NULL);
        return;
    }
    st_node *payload = st_first_elem(item);
    if (!payload) {
        op_fail(o, "bad-request", "payload-required", NULL);
        return;
    }
    if (st_next_elem(payload)) {
        op_fail(o, "bad-request", "invalid-payload", NULL);
        return;
    }
    char genid[64];
    const char *id = st_attr_get(item, "id");
    if (!id || !*id) {
        st_server_make_id(u->srv, genid, sizeof genid);
        id = genid;
    }
    if (strlen(id) > MAX_ID) {
        op_fail(o, "not-acceptable", NULL, NULL);
        return;
    }
    st_pep_config opts = default_config;
    int seen = 0;
    st_node *po = st_child(ps, "publish-options", NS_PUBSUB);
    st_node *x = po ? st_child(po, "x", NS_XDATA) : NULL;
    if (x && form_read(x, &opts, &seen) != 0) {
        op_fail(o, "conflict", "precondition-not-met", NULL);
        return;
    }
    const char *cond, *pscond;
    if (do_publish(svc, u, node, id, payload, &opts, seen, 1, &cond, &pscond) != 0) {
        op_fail(o, cond, pscond, NULL);
        return;
    }
    st_stanza *r = reply_for(o);
    if (r) {
        st_tag(r, "pubsub", NS_PUBSUB);
        st_tag(r, "publish", NULL);
        st_attr_set(r, "node", node);
        st_tag(r, "item", NULL);
        st_attr_set(r, "id", id);
    }
    op_result(o, r);
}

static void op_items(op *o, pep_service *svc, st_user *u, st_node *req)
{
    const char *name = st_attr_get(req, "node");
    if (!valid_name(name, MAX_NODE_NAME)) {
        op_fail(o, "bad-request", "nodeid-required", NULL);
        return;
    }
    pep_node *n = node_find(svc, name);
    if (!n) {
        op_fail(o, "item-not-found", NULL, NULL);
        return;
    }
    if (!may_access(svc, u, n, o->req)) {
        op_fail(o, n->cfg.access == ST_PEP_PRESENCE ? "not-authorized" : "not-allowed",
                n->cfg.access == ST_PEP_PRESENCE ? "presence-subscription-required" : "closed-node",
                NULL);
        return;
    }
    st_stanza *r = reply_for(o);
    if (!r) {
        op_result(o, NULL);
        return;
    }
    st_tag(r, "pubsub", NS_PUBSUB);
    st_tag(r, "items", NULL);
    st_attr_set(r, "node", n->name);
    if (st_child(req, "item", NS_PUBSUB)) { /* by id (§6.5.8) */
        for (st_node *i = st_first_elem(req); i; i = st_next_elem(i)) {
            const char *id = st_attr_get(i, "id");
            pep_item *it = id && !strcmp(i->name, "item") ? item_find(n, id) : NULL;
            if (it) add_item(r, it);
        }
    } else { /* all, or the newest max_items (§6.5.7), oldest first */
        const char *mi = st_attr_get(req, "max_items");
        size_t first = 0;
        if (mi) {
            char *end;
            long long v = strtoll(mi, &end, 10);
            if (end == mi || *end || v < 0) {
                st_stanza_unref(r);
                {
                    op_fail(o, "bad-request", NULL, NULL);
                    return;
                }
            }
            if ((size_t)v < n->n) first = n->n - (size_t)v;
        }
        for (size_t i = first; i < n->n; i++)
            add_item(r, &n->items[i]);
    }
    op_result(o, r);
}

static void op_retract(op *o, pep_service *svc, st_user *u, st_node *req)
{
    const char *name = st_attr_get(req, "node");
    st_node *item = st_child(req, "item", NS_PUBSUB);
    const char *id = item ? st_attr_get(item, "id") : NULL;
    if (!is_owner(svc, o->req)) {
        op_fail(o, "forbidden", NULL, NULL);
        return;
    }
    if (!valid_name(name, MAX_NODE_NAME)) {
        op_fail(o, "bad-request", "nodeid-required", NULL);
        return;
    }
    if (!id) {
        op_fail(o, "bad-request", "item-required", NULL);
        return;
    }
    pep_node *n = node_find(svc, name);
    if (!n || do_retract(svc, u, n, id) != 0) {
        op_fail(o, "item-not-found", NULL, NULL);
        return;
    }
    op_result(o, NULL);
}

static void op_create(op *o, pep_service *svc, st_user *u, st_node *req, st_node *ps)
{
    const char *name = st_attr_get(req, "node");
    if (!is_owner(svc, o->req)) {
        op_fail(o, "forbidden", NULL, NULL);
        return;
    }
    /* instant nodes (no name) make no sense for PEP */
    if (!valid_name(name, MAX_NODE_NAME)) {
        op_fail(o, "not-acceptable", "nodeid-required", NULL);
        return;
    }
    if (node_find(svc, name)) {
        op_fail(o, "conflict", NULL, NULL);
        return;
    }
    if ((long long)svc->nnodes >= st_host_opt_num(u->host, &mod_pep, "max_nodes")) {
        op_fail(o, "not-allowed", "max-nodes-exceeded", NULL);
        return;
    }
    st_pep_config cfg = default_config;
    int seen;
    st_node *conf = st_child(ps, "configure", NS_PUBSUB);
    st_node *x = conf ? st_child(conf, "x", NS_XDATA) : NULL;
    if (x && form_read(x, &cfg, &seen) != 0) {
        op_fail(o, "not-acceptable", NULL, NULL);
        return;
    }
    pep_node *n = node_add(svc, name, &cfg);
    if (!n) {
        op_fail(o, "internal-server-error", NULL, NULL);
        return;
    }
    store_config(u->srv, svc->bare, n);
    op_result(o, NULL);
}

static void run_pubsub(op *o, pep_service *svc, st_user *u, st_node *ps)
{
    st_node *req = st_first_elem(ps);
    const char *verb = req && !strcmp(req->ns, NS_PUBSUB) ? req->name : "";
    if (o->type == ST_IQ_SET) {
        if (!strcmp(verb, "publish")) {
            op_publish(o, svc, u, req, ps);
            return;
        }
        if (!strcmp(verb, "retract")) {
            op_retract(o, svc, u, req);
            return;
        }
        if (!strcmp(verb, "create")) {
            op_create(o, svc, u, req, ps);
            return;
        }
        if (!strcmp(verb, "subscribe") || !strcmp(verb, "unsubscribe"))
        /* XEP-0163 §4.2: subscriptions are implicit, through caps */
        {
            op_fail(o, "feature-not-implemented", "unsupported", "subscribe");
            return;
        }
    } else {
        if (!strcmp(verb, "items")) {
            op_items(o, svc, u, req);
            return;
        }
        if (!strcmp(verb, "subscriptions") || !strcmp(verb, "affiliations")) {
            st_stanza *r = reply_for(o);
            if (r) st_tag(r, "pubsub", NS_PUBSUB), st_tag(r, verb, NULL);
            {
                op_result(o, r);
                return;
            }
        }
    }
    op_fail(o, "feature-not-implemented", "unsupported", verb);
}

static void op_configure(op *o, pep_service *svc, st_user *u, pep_node *n, st_node *req)
{
    if (o->type == ST_IQ_GET) {
        st_stanza *r = reply_for(o);
        if (r) {
            st_tag(r, "pubsub", NS_OWNER);
            st_tag(r, "configure", NULL);
            st_attr_set(r, "node", n->name);
            config_form(r, &n->cfg);
        }
        {
            op_result(o, r);
            return;
        }
    }
    st_node *x = st_child(req, "x", NS_XDATA);
    const char *t = x ? st_attr_get(x, "type") : NULL;
    if (!x) {
        op_fail(o, "bad-request", NULL, NULL);
        return;
    }
    if (t && !strcmp(t, "cancel")) {
        op_result(o, NULL);
        return;
    }
    st_pep_config cfg = n->cfg;
    int seen;
    if (form_read(x, &cfg, &seen) != 0) {
        op_fail(o, "not-acceptable", NULL, NULL);
        return;
    }
    n->cfg = cfg;
    size_t max = node_max(u->host, n);
    while (n->n > max)
        item_remove_at(n, 0);
    store_config(u->srv, svc->bare, n);
    if (n->cfg.persist) {
        /* rewrite the items: persistence may just have been switched on */
        for (size_t i = 0; i < n->n; i++)
            store_item(u->srv, u->host, svc->bare, n, &n->items[i]);
    } else {
        store_del_items(u->srv, svc->bare, n->name, NULL);
    }
    op_result(o, NULL);
}

static void run_owner(op *o, pep_service *svc, st_user *u, st_node *ps)
{
    st_node *req = st_first_elem(ps);
    const char *verb = req && !strcmp(req->ns, NS_OWNER) ? req->name : "";
    const char *name = req ? st_attr_get(req, "node") : NULL;
    if (!is_owner(svc, o->req)) {
        op_fail(o, "forbidden", NULL, NULL);
        return;
    }
    if (!strcmp(verb, "default") && o->type == ST_IQ_GET) {
        st_stanza *r = reply_for(o);
        if (r) {
            st_tag(r, "pubsub", NS_OWNER);
            st_tag(r, "default", NULL);
            config_form(r, &default_config);
        }
        {
            op_result(o, r);
            return;
        }
    }
    if (strcmp(verb, "configure") && strcmp(verb, "delete") && strcmp(verb, "purge")) {
        op_fail(o, "feature-not-implemented", "unsupported", verb);
        return;
    }
    if (!valid_name(name, MAX_NODE_NAME)) {
        op_fail(o, "bad-request", "nodeid-required", NULL);
        return;
    }
    pep_node *n = node_find(svc, name);
    if (!n) {
        op_fail(o, "item-not-found", NULL, NULL);
        return;
    }
    if (!strcmp(verb, "configure")) {
        op_configure(o, svc, u, n, req);
        return;
    }
    if (o->type != ST_IQ_SET) {
        op_fail(o, "bad-request", NULL, NULL);
        return;
    }
    if (!strcmp(verb, "purge")) {
        while (n->n)
            item_remove_at(n, n->n - 1);
        store_del_items(u->srv, svc->bare, n->name, NULL);
        notify_node(svc, u, n, "purge");
    } else {
        notify_node(svc, u, n, "delete"); /* while the access model still applies */
        node_unlink(svc, n);
        store_del_items(u->srv, svc->bare, n->name, NULL);
        store_write(u->srv, svc->bare, W_DEL, STORE_NODES, n->name, NULL, 0, 0);
    }
    tell_listeners(u->host, svc->bare, n->name, NULL, NULL);
    if (!strcmp(verb, "delete")) node_free(n);
    op_result(o, NULL);
}

static const char *const account_features[] = {
    NS_INFO,
    NS_ITEMS,
    NS_PUBSUB,
    NS_PUBSUB "#access-open",
    NS_PUBSUB "#access-presence",
    NS_PUBSUB "#access-whitelist",
    NS_PUBSUB "#auto-create",
    NS_PUBSUB "#auto-subscribe",
    NS_PUBSUB "#config-node",
    NS_PUBSUB "#create-and-configure",
    NS_PUBSUB "#create-nodes",
    NS_PUBSUB "#delete-items",
    NS_PUBSUB "#delete-nodes",
    NS_PUBSUB "#filtered-notifications",
    NS_PUBSUB "#item-ids",
    NS_PUBSUB "#last-published",
    NS_PUBSUB "#persistent-items",
    NS_PUBSUB "#presence-notifications",
    NS_PUBSUB "#publish",
    NS_PUBSUB "#publish-options",
    NS_PUBSUB "#purge-nodes",
    NS_PUBSUB "#retract-items",
    NS_PUBSUB "#retrieve-items",
    NS_PUBSUB "#retrieve-default",
    NULL,
};

static void add_feature(st_stanza *r, const char *var)
{
    st_tag(r, "feature", NULL);
    st_attr_set(r, "var", var);
    st_up(r);
}

static void add_identity(st_stanza *r, const char *cat, const char *type)
{
    st_tag(r, "identity", NULL);
    st_attr_set(r, "category", cat);
    st_attr_set(r, "type", type);
    st_up(r);
}

static void run_info(op *o, pep_service *svc, st_user *u, st_node *q)
{
    const char *name = st_attr_get(q, "node");
    st_stanza *r = NULL;
    if (name) { /* §5.3 node meta-data */
        pep_node *n = node_find(svc, name);
        if (!n || !may_access(svc, u, n, o->req)) {
            op_fail(o, "item-not-found", NULL, NULL);
            return;
        }
        if ((r = reply_for(o))) {
            st_tag(r, "query", NS_INFO);
            st_attr_set(r, "node", n->name);
            add_identity(r, "pubsub", "leaf");
            add_feature(r, NS_PUBSUB);
            st_tag(r, "x", NS_XDATA);
            st_attr_set(r, "type", "result");
            form_field(r, "FORM_TYPE", "hidden", NS_PUBSUB "#meta-data");
            form_field(r, "pubsub#access_model", NULL, access_name(n->cfg.access));
            form_field(r, "pubsub#owner", NULL, svc->bare);
        }
        {
            op_result(o, r);
            return;
        }
    }
    if ((r = reply_for(o))) {
        st_tag(r, "query", NS_INFO);
        add_identity(r, "account", "registered");
        add_identity(r, "pubsub", "pep"); /* XEP-0163 §6.1 */
        for (const char *const *f = account_features; *f; f++)
            add_feature(r, *f);
        /* XEP-0402 §5.3: we keep XEP-0048 private XML in sync */
        if (st_host_has(u->host, "bookmarks")) add_feature(r, "urn:xmpp:bookmarks:1#compat");
        /* XEP-0357 §4.1: push is an account feature */
        if (st_host_has(u->host, "push")) add_feature(r, "urn:xmpp:push:0");
        /* XEP-0313 §8: the account hosts its archive (mod_mam) */
        if (st_host_has(u->host, "mam")) {
            add_feature(r, "urn:xmpp:mam:2");
            add_feature(r, "urn:xmpp:mam:2#extended");
        }
    }
    op_result(o, r);
}

static void run_items(op *o, pep_service *svc, st_user *u, st_node *q)
{
    const char *name = st_attr_get(q, "node");
    st_stanza *r = reply_for(o);
    if (!r) {
        op_result(o, NULL);
        return;
    }
    st_tag(r, "query", NS_ITEMS);
    if (name) {
        pep_node *n = node_find(svc, name);
        if (!n || !may_access(svc, u, n, o->req)) {
            st_stanza_unref(r);
            {
                op_fail(o, "item-not-found", NULL, NULL);
                return;
            }
        }
        st_attr_set(r, "node", n->name);
        for (size_t i = 0; i < n->n; i++) {
            st_tag(r, "item", NULL);
            st_attr_set(r, "jid", svc->bare);
            st_attr_set(r, "name", n->items[i].id);
            st_up(r);
        }
    } else {
        for (pep_node *n = svc->nodes; n; n = n->next) {
            if (!may_access(svc, u, n, o->req)) continue;
            st_tag(r, "item", NULL);
            st_attr_set(r, "jid", svc->bare);
            st_attr_set(r, "node", n->name);
            st_up(r);
        }
    }
    op_result(o, r);
}

static void run_op(pep_service *svc, st_user *u, void *ud)
{
    op *o = ud;
    if (!svc || !u->roster) {
        op_fail(o, "internal-server-error", NULL, NULL);
        return;
    }
    /* RFC 6121 §8.5.1: for an account that does not exist, the IQ has no answerer */
    if (!u->roster->exists) {
        op_fail(o, "service-unavailable", NULL, NULL);
        return;
    }
    st_node *q = st_first_elem(st_iq_pending_iq(o->p)->root);
    if (!q) {
        op_fail(o, "bad-request", NULL, NULL);
        return;
    }
    switch (o->kind) {
    case K_PUBSUB: {
        run_pubsub(o, svc, u, q);
        return;
    }
    case K_OWNER: {
        run_owner(o, svc, u, q);
        return;
    }
    case K_INFO: {
        run_info(o, svc, u, q);
        return;
    }
    case K_ITEMS: {
        run_items(o, svc, u, q);
        return;
    }
    }
}

static st_verdict start(st_iq_ctx *c, enum kind k)
{
    const char *owner = !c->from ? NULL : c->to ? c->to->node : c->from->node;
    if (!owner || !c->from->node) {
        st_iq_error(c, "service-unavailable", NULL);
        return ST_HANDLED;
    }
    op *o = st_calloc(1, sizeof *o);
    if (!o || !(o->p = st_iq_defer(c))) {
        st_free(o);
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    o->kind = k;
    o->type = c->type;
    st_jid_format(c->from, 0, o->req, sizeof o->req);
    if (with_service(c->host, owner, run_op, o) != 0) {
        st_iq_pending_error(o->p, "internal-server-error", NULL);
        st_free(o);
    }
    return ST_HANDLED;
}

static st_verdict pubsub_iq(st_iq_ctx *c)
{
    return start(c, K_PUBSUB);
}

static st_verdict owner_iq(st_iq_ctx *c)
{
    return start(c, K_OWNER);
}

/* disco on a bare JID; without 'to' it is the server's (mod_disco) */
static st_verdict info_iq(st_iq_ctx *c)
{
    return c->to && c->to->node ? start(c, K_INFO) : ST_PASS;
}

static st_verdict items_iq(st_iq_ctx *c)
{
    return c->to && c->to->node ? start(c, K_ITEMS) : ST_PASS;
}

/* ---- last items: availability, caps discovery, new subscription ---- */

typedef struct last_ctx {
    char full[3100]; /* one session, or "" for every available session of bare */
    char bare[2100];
} last_ctx;

static void last_ready(pep_service *svc, st_user *owner, void *ud)
{
    last_ctx *l = ud;
    if (svc) {
        if (*l->full) {
            st_session *x = st_session_find(owner->srv, l->full);
            if (x) send_last(svc, owner, x);
        } else {
            st_user *cu = st_user_find(owner->srv, l->bare);
            for (st_session *x = cu ? cu->sessions : NULL; x; x = x->next_of_user)
                if (x->available) send_last(svc, owner, x);
        }
    }
    st_free(l);
}

static void last_from(st_host *h, const char *owner_node, const char *full, const char *bare)
{
    last_ctx *l = st_calloc(1, sizeof *l);
    if (!l) return;
    snprintf(l->full, sizeof l->full, "%s", full ? full : "");
    snprintf(l->bare, sizeof l->bare, "%s", bare ? bare : "");
    if (with_service(h, owner_node, last_ready, l) != 0) st_free(l);
}

static int has_to(st_sub s)
{
    return s == ST_SUB_TO || s == ST_SUB_BOTH;
}

static int last_contact(void *ud, st_roster_item *it)
{
    st_session *x = ud;
    st_jid j;
    if (!st_roster_visible(it) || !has_to(it->sub)) return 0;
    if (st_jid_parse(&j, it->jid, strlen(it->jid)) != 0) return 0;
    st_host *h = j.node ? st_server_host(x->srv, j.domain) : NULL;
    if (h && st_host_has(h, "pep")) last_from(h, j.node, x->full, NULL);
    st_jid_free(&j);
    return 0;
}

static void contacts_ready(st_user *u, void *ud)
{
    char *full = ud;
    st_session *x = st_session_find(u->srv, full);
    if (x && u->roster) st_roster_each(u, last_contact, x);
    st_free(full);
}

/* A session's features became known: the last items it now wants, from its
 * own account and from every account it receives presence from. */
static void caps_ready(st_session *x)
{
    if (!st_host_has(x->host, "pep")) return;
    last_from(x->host, x->user->node, x->full, NULL);
    char *full = st_strdup(x->full);
    if (full && st_roster_with(x->user, contacts_ready, full) != 0) st_free(full);
}

/* A contact approved a subscription: the new subscriber's available
 * resources get the last items they may now see. */
static st_verdict presence_in(st_server *s, st_host *h, st_stanza *st, const st_jid *from,
                              const st_jid *to)
{
    const char *type = st_get(st, "type");
    if (!from || !from->node || !type || strcmp(type, "subscribed") != 0) return ST_PASS;
    st_host *fh = st_server_host(s, from->domain);
    char *bare = st_jid_bare(to);
    if (fh && bare && st_host_has(fh, "pep")) last_from(fh, from->node, NULL, bare);
    st_free(bare);
    return ST_PASS;
}

static void noop(pep_service *svc, st_user *u, void *ud) {}

static void session_bound(st_session *x)
{
    /* load early, so the first presence can carry what depends on it
     * (XEP-0398 avatar hashes) */
    with_service(x->host, x->user->node, noop, NULL);
}

static void session_end(st_session *x)
{
    pep_host *ph = host_state(x->host);
    pep_service *svc = ph ? st_map_get(&ph->services, x->bare) : NULL;
    /* the ending session is still listed: it is the last if it is alone */
    if (svc && x->user->nsessions <= 1 && !svc->loading && !svc->waiters && !svc->busy) {
        st_map_del(&ph->services, svc->bare);
        service_free(svc);
    }
}

/* ---- the API for other modules (pep.h) ---- */

typedef struct pub_req {
    int retract;
    char node[MAX_NODE_NAME + 1];
    char id[MAX_ID + 1];
    st_stanza *payload;
    st_pep_config cfg;
    int seen;
} pub_req;

static void pub_ready(pep_service *svc, st_user *u, void *ud)
{
    pub_req *r = ud;
    const char *cond, *pscond;
    if (svc && u->roster && u->roster->exists) {
        if (r->retract) {
            pep_node *n = node_find(svc, r->node);
            if (n) do_retract(svc, u, n, r->id);
        } else if (do_publish(svc, u, r->node, r->id, r->payload->root, &r->cfg, r->seen, 0, &cond,
                              &pscond) != 0) {
            st_warn("mod_pep", "%s: could not publish %s on %s: %s", u->bare, r->id, r->node, cond);
        }
    }
    st_stanza_unref(r->payload);
    st_free(r);
}

static int submit_pub(st_host *h, const char *owner_node, const char *node, const char *id,
                      const st_node *payload, const st_pep_config *cfg, int retract)
{
    if (!valid_name(node, MAX_NODE_NAME) || !valid_name(id, MAX_ID)) return -1;
    pub_req *r = st_calloc(1, sizeof *r);
    if (!r) return -1;
    r->retract = retract;
    snprintf(r->node, sizeof r->node, "%s", node);
    snprintf(r->id, sizeof r->id, "%s", id);
    if (!retract && !(r->payload = st_stanza_from_node(payload))) goto fail;
    if (cfg) {
        r->cfg = *cfg;
        /* only the creation of the node uses them: no precondition */
        r->seen = F_ACCESS | F_MAX | F_PERSIST;
    }
    if (with_service(h, owner_node, pub_ready, r) != 0) goto fail;
    return 0;
fail:
    st_stanza_unref(r->payload);
    st_free(r);
    return -1;
}

/* A server-side publish creates a missing node with cfg but never fails
 * on an existing node's configuration. */
int st_pep_publish(st_host *h, const char *owner_node, const char *node, const char *id,
                   const st_node *payload, const st_pep_config *cfg)
{
    return submit_pub(h, owner_node, node, id, payload, cfg, 0);
}

int st_pep_retract(st_host *h, const char *owner_node, const char *node, const char *id)
{
    return submit_pub(h, owner_node, node, id, NULL, NULL, 1);
}

int st_pep_peek(st_host *h, const char *owner_bare, const char *node,
                void (*fn)(void *ud, const char *id, const st_node *payload), void *ud)
{
    pep_host *ph = host_state(h);
    pep_service *svc = ph ? st_map_get(&ph->services, owner_bare) : NULL;
    pep_node *n = svc && svc->loaded ? node_find(svc, node) : NULL;
    if (!n) return 0;
    for (size_t i = 0; i < n->n; i++)
        fn(ud, n->items[i].id, n->items[i].payload->root);
    return 1;
}

typedef struct with_req {
    void (*fn)(void *ud, st_host *h, const char *owner_bare);
    void *ud;
} with_req;

static void with_ready(pep_service *svc, st_user *u, void *ud)
{
    with_req *w = ud;
    if (svc && u)
        w->fn(w->ud, u->host, u->bare);
    else
        w->fn(w->ud, NULL, NULL);
    st_free(w);
}

int st_pep_with(st_host *h, const char *owner_node,
                void (*fn)(void *ud, st_host *h, const char *owner_bare), void *ud)
{
    with_req *w = st_calloc(1, sizeof *w);
    if (!w) return -1;
    w->fn = fn;
    w->ud = ud;
    if (with_service(h, owner_node, with_ready, w) != 0) {
        st_free(w);
        return -1;
    }
    return 0;
}

/* ---- module ---- */

static int free_service(void *ud, const char *k, void *v)
{
    pep_service *svc = v;
    /* waiters hold nothing but their ud, which only they can free */
    while (svc->waiters) {
        pep_wait *w = svc->waiters;
        svc->waiters = w->next;
        w->fn(NULL, NULL, w->ud);
        st_free(w);
    }
    service_free(svc);
    return 0;
}

static int pep_host_init(st_host *h, void **state)
{
    pep_host *ph = st_calloc(1, sizeof *ph);
    if (!ph) return -1;
    st_map_init(&ph->services);
    if (st_caps_listen(caps_ready) != 0) {
        st_free(ph);
        return -1;
    }
    *state = ph;
    return 0;
}

static void pep_host_fini(st_host *h, void *state)
{
    pep_host *ph = state;
    if (!ph) return;
    st_map_each(&ph->services, free_service, NULL);
    st_map_free(&ph->services);
    st_free(ph);
}

static const st_iq_handler iqs[] = {
    {NS_PUBSUB, "pubsub", ST_IQ_GET | ST_IQ_SET, ST_TO_ACCOUNT | ST_TO_USER, pubsub_iq},
    {NS_OWNER, "pubsub", ST_IQ_GET | ST_IQ_SET, ST_TO_ACCOUNT | ST_TO_USER, owner_iq},
    {NS_INFO, "query", ST_IQ_GET, ST_TO_ACCOUNT | ST_TO_USER, info_iq},
    {NS_ITEMS, "query", ST_IQ_GET, ST_TO_ACCOUNT | ST_TO_USER, items_iq},
    {0},
};

static const st_module_opt opts[] = {
    {"max_items", ST_OPT_INT, "256", 1, 100000, "items a node keeps at most (what 'max' means)"},
    {"max_nodes", ST_OPT_INT, "256", 1, 100000, "nodes one account may have"},
    {0},
};

static const st_hooks hooks = {
    .presence_in = presence_in,
};

const st_module mod_pep = {
    .name = "pep",
    .spec = "XEP-0163",
    .title = "Personal Eventing Protocol",
    .iqs = iqs,
    .opts = opts,
    .host_init = pep_host_init,
    .host_fini = pep_host_fini,
    .session_bound = session_bound,
    .session_end = session_end,
    .hooks = &hooks,
    .priority = 92, /* account disco before mod_disco; subscribed before mod_presence */
};
