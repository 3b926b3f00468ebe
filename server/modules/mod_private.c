/* mod_private.c - XEP-0049 Private XML Storage (jabber:iq:private): any
 * element a client wants kept on the server for its own account, read back
 * by name and namespace.
 *
 * Each element is one entry in the kv store "private", key "{ns}name" (an
 * XML name cannot contain '}', so the key is unambiguous), value its
 * serialised XML. A set may carry several elements; they are written in one
 * storage job, and refused together if the user's entries would then hold
 * more than private.max_bytes in all (the total is summed on the storage
 * thread, where every write for the user is serialised, so two sets cannot
 * both slip under the limit).
 *
 * Answers (XEP-0049 §2.3 leaves some choices): a get for nothing stored
 * returns the element as it was asked for, empty; a query without an
 * element, or with one in jabber:client, jabber:server or jabber:iq:private,
 * is not-acceptable; a get for more than one element is bad-request (the
 * XEP forbids it); another user's storage is forbidden (the condition the
 * XEP prefers). Other modules read and write entries through private.h. */
#include <stdio.h>
#include <string.h>
#include "server/log.h"
#include "server/modules/private.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/xmlstream.h"

#define NS_PRIVATE "jabber:iq:private"
#define STORE "private"
#define SERIALIZE_CAP (32u * 1024 * 1024)

extern const st_module mod_private;

typedef struct entry {
    char *key; /* "{ns}name" (owned) */
    char *val; /* serialised element (owned) */
    size_t len;
} entry;

typedef struct priv_job {
    st_server *srv;
    char host[1024], node[1024];
    int put;
    entry *e; /* put: n entries to write; get: one key, val filled in */
    size_t n;
    size_t max_total;
    size_t total; /* put: bytes the user's other entries hold */
    int rc;
    st_private_get_fn get_fn;
    st_private_put_fn put_fn;
    void *ud;
} priv_job;

static void job_free(priv_job *j)
{
    for (size_t i = 0; i < j->n; i++) {
        st_free(j->e[i].key);
        st_free(j->e[i].val);
    }
    st_free(j->e);
    st_free(j);
}

static char *make_key(const char *ns, const char *name)
{
    st_buf b;
    st_buf_init(&b, 4096);
    if (st_buf_printf(&b, "{%s}%s", ns, name) != 0) {
        st_buf_free(&b);
        return NULL;
    }
    return st_buf_steal(&b, NULL);
}

static void sum_others(void *ud, const char *key, const char *val, size_t len)
{
    priv_job *j = ud;
    for (size_t i = 0; i < j->n; i++)
        if (strcmp(j->e[i].key, key) == 0) return; /* about to be replaced */
    j->total += len;
}

static void priv_work(void *h, void *arg)
{
    priv_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    if (!j->put) {
        j->rc = ops->kv_get(h, j->host, j->node, STORE, j->e[0].key, &j->e[0].val, &j->e[0].len);
        return;
    }
    j->total = 0;
    if (ops->kv_list(h, j->host, j->node, STORE, sum_others, j) < 0) {
        j->rc = -1;
        return;
    }
    for (size_t i = 0; i < j->n; i++) j->total += j->e[i].len;
    if (j->total > j->max_total) {
        j->rc = 1;
        return;
    }
    j->rc = 0;
    for (size_t i = 0; i < j->n && j->rc == 0; i++)
        if (ops->kv_put(h, j->host, j->node, STORE, j->e[i].key, j->e[i].val, j->e[i].len) != 0)
            j->rc = -1;
}

static void priv_done(void *arg)
{
    priv_job *j = arg;
    if (j->put) {
        if (j->rc < 0) st_error("mod_private", "%s@%s: storing private XML failed", j->node, j->host);
        if (j->put_fn) j->put_fn(j->ud, j->rc);
    } else if (j->rc == 1) {
        const char *err = NULL;
        st_stanza *el = st_xml_parse_element(j->e[0].val, j->e[0].len, &err);
        if (!el) st_error("mod_private", "%s@%s: stored entry %s does not parse (%s)", j->node,
                          j->host, j->e[0].key, err ? err : "?");
        j->get_fn(j->ud, el ? 1 : -1, el);
        st_stanza_unref(el);
    } else {
        j->get_fn(j->ud, j->rc, NULL);
    }
    job_free(j);
}

static priv_job *job_new(st_server *s, const char *host, const char *node, size_t n)
{
    priv_job *j = st_calloc(1, sizeof *j);
    if (!j) return NULL;
    if (!(j->e = st_calloc(n, sizeof *j->e))) {
        st_free(j);
        return NULL;
    }
    j->srv = s;
    snprintf(j->host, sizeof j->host, "%s", host);
    snprintf(j->node, sizeof j->node, "%s", node);
    return j;
}

/* Serialise elem into entry i of j. 0 or -1. */
static int add_entry(priv_job *j, const st_node *elem)
{
    entry *e = &j->e[j->n];
    st_buf b;
    st_buf_init(&b, SERIALIZE_CAP);
    if (!(e->key = make_key(elem->ns, elem->name))) return -1;
    if (st_serialize(elem, NULL, &b) != 0 || !(e->val = st_buf_steal(&b, &e->len))) {
        st_buf_free(&b);
        st_free(e->key);
        e->key = NULL;
        return -1;
    }
    j->n++;
    return 0;
}

static size_t host_max(st_server *s, const char *host)
{
    st_host *h = st_server_host(s, host);
    if (h && st_host_has(h, "private")) return (size_t)st_host_opt_num(h, &mod_private, "max_bytes");
    long long v = 0;
    st_parse_size(mod_private.opts[0].def, &v);
    return (size_t)v;
}

static int submit(priv_job *j)
{
    if (st_storage_submit(j->srv->store, priv_work, priv_done, j) != 0) {
        job_free(j);
        return -1;
    }
    return 0;
}

/* ---- the API for other modules (private.h) ---- */

int st_private_get(st_server *s, const char *host, const char *node, const char *name,
                   const char *ns, st_private_get_fn fn, void *ud)
{
    priv_job *j = job_new(s, host, node, 1);
    if (!j) return -1;
    j->n = 1;
    if (!(j->e[0].key = make_key(ns, name))) {
        job_free(j);
        return -1;
    }
    j->get_fn = fn;
    j->ud = ud;
    return submit(j);
}

int st_private_put(st_server *s, const char *host, const char *node, const st_node *elem,
                   st_private_put_fn fn, void *ud)
{
    priv_job *j = job_new(s, host, node, 1);
    if (!j) return -1;
    if (add_entry(j, elem) != 0) {
        job_free(j);
        return -1;
    }
    j->put = 1;
    j->max_total = host_max(s, host);
    j->put_fn = fn;
    j->ud = ud;
    return submit(j);
}

/* ---- IQ handlers ---- */

static int reserved(const char *ns)
{
    return strcmp(ns, ST_NS_CLIENT) == 0 || strcmp(ns, ST_NS_SERVER) == 0 ||
           strcmp(ns, NS_PRIVATE) == 0;
}

/* The elements of the query; answers the IQ and returns -1 if they will not do. */
static int check_elements(st_iq_ctx *c, size_t *count)
{
    size_t n = 0;
    for (st_node *e = st_first_elem(c->payload); e; e = st_next_elem(e), n++) {
        if (reserved(e->ns)) {
            st_iq_error(c, "not-acceptable", "that namespace cannot be used for private storage");
            return -1;
        }
    }
    if (n == 0) {
        st_iq_error(c, "not-acceptable", "the query needs an element in its own namespace");
        return -1;
    }
    *count = n;
    return 0;
}

static void iq_get_done(void *ud, int rc, st_stanza *elem)
{
    st_iq_pending *p = ud;
    if (rc < 0) {
        st_iq_pending_error(p, "internal-server-error", NULL);
        return;
    }
    st_stanza *iq = st_iq_pending_iq(p);
    st_node *q = st_first_elem(iq->root);
    st_stanza *r = st_iq_reply(iq);
    if (!r) {
        st_iq_pending_error(p, "internal-server-error", NULL);
        return;
    }
    st_tag(r, "query", NS_PRIVATE);
    /* nothing stored: the element as it was asked for (XEP-0049 §2.3) */
    st_add_copy(r, rc == 1 ? elem->root : st_first_elem(q));
    if (st_stanza_ok(r)) st_iq_pending_result(p, r);
    else st_iq_pending_error(p, "internal-server-error", NULL);
    st_stanza_unref(r);
}

static st_verdict priv_get(st_iq_ctx *c)
{
    size_t n;
    if (check_elements(c, &n) != 0) return ST_HANDLED;
    if (n > 1) {
        st_iq_error(c, "bad-request", "ask for one element at a time");
        return ST_HANDLED;
    }
    st_node *want = st_first_elem(c->payload);
    st_iq_pending *p = st_iq_defer(c);
    if (!p) {
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    if (st_private_get(c->srv, c->host->name, c->from->node, want->name, want->ns, iq_get_done, p) != 0)
        st_iq_pending_error(p, "internal-server-error", NULL);
    return ST_HANDLED;
}

typedef struct set_ctx {
    st_iq_pending *p;
    size_t max;
} set_ctx;

static void iq_set_done(void *ud, int rc)
{
    set_ctx *sc = ud;
    if (rc == 0) {
        st_iq_pending_result(sc->p, NULL);
    } else if (rc == 1) {
        char text[112];
        snprintf(text, sizeof text, "private storage is limited to %zu bytes per user", sc->max);
        st_iq_pending_error(sc->p, "not-acceptable", text);
    } else {
        st_iq_pending_error(sc->p, "internal-server-error", NULL);
    }
    st_free(sc);
}

static st_verdict priv_set(st_iq_ctx *c)
{
    size_t n;
    if (check_elements(c, &n) != 0) return ST_HANDLED;
    set_ctx *sc = NULL;
    priv_job *j = job_new(c->srv, c->host->name, c->from->node, n);
    if (!j) goto oom;
    j->put = 1;
    j->max_total = (size_t)st_host_opt_num(c->host, &mod_private, "max_bytes");
    for (st_node *e = st_first_elem(c->payload); e; e = st_next_elem(e)) {
        if (add_entry(j, e) != 0) goto oom;
        if (j->e[j->n - 1].len > j->max_total) {
            /* refused at once; no need to ask storage */
            char text[112];
            snprintf(text, sizeof text, "private storage is limited to %zu bytes per user",
                     j->max_total);
            job_free(j);
            st_iq_error(c, "not-acceptable", text);
            return ST_HANDLED;
        }
    }
    if (!(sc = st_calloc(1, sizeof *sc)) || !(sc->p = st_iq_defer(c))) goto oom;
    sc->max = j->max_total;
    j->put_fn = iq_set_done;
    j->ud = sc;
    if (submit(j) != 0) { /* submit freed j */
        st_iq_pending_error(sc->p, "internal-server-error", NULL);
        st_free(sc);
    }
    return ST_HANDLED;
oom:
    if (j) job_free(j);
    st_free(sc);
    st_iq_error(c, "internal-server-error", NULL);
    return ST_HANDLED;
}

static st_verdict priv_other(st_iq_ctx *c)
{
    st_iq_error(c, "forbidden", "private storage belongs to its own account only");
    return ST_HANDLED;
}

static const char *const feats[] = {NS_PRIVATE, NULL};

static const st_iq_handler iqs[] = {
    {NS_PRIVATE, "query", ST_IQ_GET, ST_TO_ACCOUNT, priv_get},
    {NS_PRIVATE, "query", ST_IQ_SET, ST_TO_ACCOUNT, priv_set},
    {NS_PRIVATE, "query", ST_IQ_GET | ST_IQ_SET, ST_TO_USER, priv_other},
    {0},
};

static const st_module_opt opts[] = {
    {"max_bytes", ST_OPT_SIZE, "256k", 1024, 64 * 1024 * 1024,
     "most bytes of private XML one user may store, all entries together"},
    {0},
};

const st_module mod_private = {
    .name = "private",
    .spec = "XEP-0049",
    .title = "Private XML Storage",
    .features = feats, /* XEP-0049 defines none; servers commonly list the namespace */
    .iqs = iqs,
    .opts = opts,
};
