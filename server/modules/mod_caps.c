/* mod_caps.c - XEP-0115 Entity Capabilities, the server's side.
 *
 * Clients announce what they support with <c node ver hash/> in their
 * available presence; ver is a hash of their disco#info. We keep, per
 * session, the feature set behind that ver, because PEP (XEP-0163 §4.3)
 * sends notifications only to resources whose features include NODE+notify.
 *
 * Design: a per-host cache maps a verified ver to a shared, sorted, reference
 * counted feature set. On a miss we ask the client itself with disco#info
 * to node#ver (st_server_iq). Only an answer whose SHA-1
 * recomputes to the announced ver is cached under it (§5.4: otherwise anyone
 * could poison the cache for everybody using that ver); an unverifiable
 * answer (legacy caps, unknown hash, mismatch) is used for that session only.
 * The cache lives in memory only: the kv store keys everything by an
 * existing account, and a restart costs one disco#info per distinct client
 * version, which is what the cache saves anyway. TODO: persist it if a
 * server-level store appears.
 *
 * We also announce the server's own caps in stream features (§6.3), hashed
 * from the same identity and module features that mod_disco reports, and
 * answer disco#info to our node#ver. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/sha.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/modules/caps.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/base64.h"

#define NS_INFO "http://jabber.org/protocol/disco#info"
#define NS_XDATA "jabber:x:data"
#define CAPS_NODE "https://starling.invalid/caps" /* names the software, never fetched */
#define MAX_VER 128
#define MAX_NODE 1024
#define MAX_FEATURES 2048
#define MAX_IDENTITIES 64
#define MAX_FORMS 32
#define MAX_FIELDS 256
#define QUERY_TIMEOUT_MS 10000

extern const st_module mod_caps;

/* ---- the verification string (§5.1) ---- */

typedef struct ident {
    const char *cat, *type, *lang, *name;
} ident;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_ident(const void *a, const void *b)
{
    const ident *x = a, *y = b;
    int r = strcmp(x->cat, y->cat);
    if (!r) r = strcmp(x->type, y->type);
    if (!r) r = strcmp(x->lang, y->lang);
    if (!r) r = strcmp(x->name, y->name);
    return r;
}

typedef struct field {
    const char *var;
    const st_node *n;
} field;

static int cmp_field(const void *a, const void *b)
{
    return strcmp(((const field *)a)->var, ((const field *)b)->var);
}

typedef struct form {
    const char *type; /* FORM_TYPE value */
    const st_node *x;
} form;

static int cmp_form(const void *a, const void *b)
{
    return strcmp(((const form *)a)->type, ((const form *)b)->type);
}

static const char *attr_or_empty(const st_node *n, const char *name)
{
    const char *v = st_attr_get(n, name);
    return v ? v : "";
}

/* The FORM_TYPE of a form, or NULL if it has none usable (§5.4 3.6). */
static const char *form_type(const st_node *x)
{
    for (st_node *f = st_first_elem(x); f; f = st_next_elem(f)) {
        if (strcmp(f->name, "field") || strcmp(f->ns, NS_XDATA)) continue;
        const char *var = st_attr_get(f, "var");
        if (!var || strcmp(var, "FORM_TYPE")) continue;
        const char *t = st_attr_get(f, "type");
        if (t && strcmp(t, "hidden")) return NULL;
        return st_child_text(f, "value", NS_XDATA);
    }
    return NULL;
}

/* Append one form's part of S: FORM_TYPE<, then var<value<... by var. */
static int append_form(st_buf *s, const form *fm)
{
    field fields[MAX_FIELDS];
    const char *vals[MAX_FIELDS];
    size_t nf = 0;
    if (st_buf_appends(s, fm->type) || st_buf_appends(s, "<")) return -1;
    for (st_node *f = st_first_elem(fm->x); f; f = st_next_elem(f)) {
        if (strcmp(f->name, "field") || strcmp(f->ns, NS_XDATA)) continue;
        const char *var = st_attr_get(f, "var");
        if (!var || !strcmp(var, "FORM_TYPE")) continue;
        if (nf == MAX_FIELDS) return -1;
        fields[nf++] = (field){var, f};
    }
    qsort(fields, nf, sizeof *fields, cmp_field);
    for (size_t i = 0; i < nf; i++) {
        size_t nv = 0;
        for (st_node *v = st_first_elem(fields[i].n); v; v = st_next_elem(v)) {
            if (strcmp(v->name, "value") || strcmp(v->ns, NS_XDATA)) continue;
            if (nv == MAX_FIELDS) return -1;
            vals[nv++] = st_node_text(v);
        }
        qsort(vals, nv, sizeof *vals, cmp_str);
        if (st_buf_appends(s, fields[i].var) || st_buf_appends(s, "<")) return -1;
        for (size_t k = 0; k < nv; k++)
            if (st_buf_appends(s, vals[k]) || st_buf_appends(s, "<")) return -1;
    }
    return 0;
}

int st_caps_ver(const st_node *query, char *out, size_t outsz)
{
    ident ids[MAX_IDENTITIES];
    const char **feats = NULL;
    form forms[MAX_FORMS];
    size_t ni = 0, nfe = 0, nfo = 0;
    st_buf s, b64;
    int ret = -1;
    unsigned char md[SHA_DIGEST_LENGTH];

    st_buf_init(&s, 1 << 20);
    st_buf_init(&b64, 64);
    feats = st_calloc(MAX_FEATURES, sizeof *feats);
    if (!query || !feats || outsz < 29) goto out;
    for (st_node *n = st_first_elem(query); n; n = st_next_elem(n)) {
        if (!strcmp(n->name, "identity") && !strcmp(n->ns, NS_INFO)) {
            if (ni == MAX_IDENTITIES) goto out;
            ids[ni++] = (ident){
                attr_or_empty(n, "category"), attr_or_empty(n, "type"),
                st_attr_get_ns(n, "lang", ST_NS_XML) ? st_attr_get_ns(n, "lang", ST_NS_XML) : "",
                attr_or_empty(n, "name")};
        } else if (!strcmp(n->name, "feature") && !strcmp(n->ns, NS_INFO)) {
            if (nfe == MAX_FEATURES) goto out;
            feats[nfe++] = attr_or_empty(n, "var");
        } else if (!strcmp(n->name, "x") && !strcmp(n->ns, NS_XDATA)) {
            const char *t = form_type(n);
            if (!t) continue; /* §5.4 3.6: ignore the form, go on */
            if (nfo == MAX_FORMS) goto out;
            forms[nfo++] = (form){t, n};
        }
    }
    qsort(ids, ni, sizeof *ids, cmp_ident);
    qsort(feats, nfe, sizeof *feats, cmp_str);
    qsort(forms, nfo, sizeof *forms, cmp_form);
    /* §5.4 3.3-3.5: duplicates make the answer invalid */
    for (size_t i = 1; i < ni; i++)
        if (!strcmp(ids[i].cat, ids[i - 1].cat) && !strcmp(ids[i].type, ids[i - 1].type) &&
            !strcmp(ids[i].lang, ids[i - 1].lang))
            goto out;
    for (size_t i = 1; i < nfe; i++)
        if (!strcmp(feats[i], feats[i - 1])) goto out;
    for (size_t i = 1; i < nfo; i++)
        if (!strcmp(forms[i].type, forms[i - 1].type)) goto out;
    for (size_t i = 0; i < ni; i++)
        if (st_buf_printf(&s, "%s/%s/%s/%s<", ids[i].cat, ids[i].type, ids[i].lang, ids[i].name))
            goto out;
    for (size_t i = 0; i < nfe; i++)
        if (st_buf_appends(&s, feats[i]) || st_buf_appends(&s, "<")) goto out;
    for (size_t i = 0; i < nfo; i++)
        if (append_form(&s, &forms[i])) goto out;
    SHA1((const unsigned char *)(s.data ? s.data : ""), s.len, md);
    if (st_base64_encode(md, sizeof md, &b64) || b64.len >= outsz) goto out;
    memcpy(out, b64.data, b64.len + 1);
    ret = 0;
out:
    st_free(feats);
    st_buf_free(&s);
    st_buf_free(&b64);
    return ret;
}

/* ---- feature sets, shared by the cache and the sessions ---- */

typedef struct caps_set {
    int refs;
    size_t n;
    char **feat; /* sorted, owned */
} caps_set;

static void set_unref(caps_set *cs)
{
    if (!cs || --cs->refs > 0) return;
    for (size_t i = 0; i < cs->n; i++)
        st_free(cs->feat[i]);
    st_free(cs->feat);
    st_free(cs);
}

static caps_set *set_new(size_t cap)
{
    caps_set *cs = st_calloc(1, sizeof *cs);
    if (!cs) return NULL;
    cs->refs = 1;
    cs->feat = st_calloc(cap ? cap : 1, sizeof *cs->feat);
    if (!cs->feat) {
        st_free(cs);
        return NULL;
    }
    return cs;
}

static int set_add(caps_set *cs, const char *f, size_t len)
{
    char *d = st_strndup(f, len);
    if (!d) return -1;
    cs->feat[cs->n++] = d;
    return 0;
}

static void set_sort(caps_set *cs)
{
    qsort(cs->feat, cs->n, sizeof *cs->feat, cmp_str);
}

/* The features of a disco#info answer. NULL on OOM or if there are too many. */
static caps_set *set_from_query(const st_node *q)
{
    size_t n = 0;
    for (st_node *f = st_first_elem(q); f; f = st_next_elem(f))
        if (!strcmp(f->name, "feature") && !strcmp(f->ns, NS_INFO)) n++;
    if (n > MAX_FEATURES) return NULL;
    caps_set *cs = set_new(n);
    if (!cs) return NULL;
    for (st_node *f = st_first_elem(q); f; f = st_next_elem(f)) {
        const char *var = st_attr_get(f, "var");
        if (strcmp(f->name, "feature") || strcmp(f->ns, NS_INFO) || !var) continue;
        if (set_add(cs, var, strlen(var))) {
            set_unref(cs);
            return NULL;
        }
    }
    set_sort(cs);
    return cs;
}

/* ---- per-host cache and per-session state ---- */

typedef struct caps_host {
    st_map cache; /* ver (key owned by the entry) -> caps_entry */
} caps_host;

typedef struct caps_entry {
    char *ver;
    caps_set *set;
} caps_entry;

typedef struct caps_sess {
    char ver[MAX_VER + 1]; /* last ver announced, "" if none */
    caps_set *set;         /* known features, or NULL */
} caps_sess;

static int caps_host_init(st_host *h, void **state)
{
    caps_host *ch = st_calloc(1, sizeof *ch);
    if (!ch) return -1;
    st_map_init(&ch->cache);
    *state = ch;
    return 0;
}

static int free_entry(void *ud, const char *k, void *v)
{
    caps_entry *e = v;
    set_unref(e->set);
    st_free(e->ver);
    st_free(e);
    return 0;
}

static void caps_host_fini(st_host *h, void *state)
{
    caps_host *ch = state;
    if (!ch) return;
    st_map_each(&ch->cache, free_entry, NULL);
    st_map_free(&ch->cache);
    st_free(ch);
}

static void cache_put(st_host *h, const char *ver, caps_set *set)
{
    caps_host *ch = h ? st_host_mod_state(h, &mod_caps) : NULL;
    if (!ch || st_map_get(&ch->cache, ver)) return;
    if ((long long)ch->cache.count >= st_host_opt_num(h, &mod_caps, "cache_size")) return;
    caps_entry *e = st_calloc(1, sizeof *e);
    if (!e || !(e->ver = st_strdup(ver)) || st_map_put(&ch->cache, e->ver, e) != 0) {
        if (e) st_free(e->ver);
        st_free(e);
        return;
    }
    e->set = set;
    set->refs++;
}

static caps_sess *sess_caps(const st_session *s)
{
    return s->mod_data[ST_SLOT_CAPS];
}

/* ---- listeners ---- */

static void (*listeners[8])(st_session *s);

int st_caps_listen(void (*fn)(st_session *s))
{
    for (size_t i = 0; i < sizeof listeners / sizeof *listeners; i++) {
        if (listeners[i] == fn) return 0;
        if (!listeners[i]) {
            listeners[i] = fn;
            return 0;
        }
    }
    return -1;
}

int st_caps_known(const st_session *s)
{
    caps_sess *cs = sess_caps(s);
    return cs && cs->set;
}

int st_caps_has(const st_session *s, const char *feature)
{
    caps_sess *cs = sess_caps(s);
    if (!cs || !cs->set) return 0;
    return bsearch(&feature, cs->set->feat, cs->set->n, sizeof *cs->set->feat, cmp_str) != NULL;
}

/* The session now has set (a reference is taken); tell the listeners. */
static void apply(st_session *s, caps_set *set)
{
    caps_sess *cs = sess_caps(s);
    if (!cs) return;
    set->refs++;
    set_unref(cs->set);
    cs->set = set;
    for (size_t i = 0; i < sizeof listeners / sizeof *listeners && listeners[i]; i++)
        listeners[i](s);
}

/* ---- asking the client, and the kv store ---- */

typedef struct lookup {
    st_server *srv;
    char host[1024];
    char full[3100];
    char ver[MAX_VER + 1];
    char node[MAX_NODE + 1];
    int sha1; /* hash='sha-1': verifiable */
} lookup;

/* The session this lookup is for, if it still waits for this ver. */
static st_session *lookup_session(lookup *l)
{
    st_session *s = st_session_find(l->srv, l->full);
    caps_sess *cs = s ? sess_caps(s) : NULL;
    return cs && strcmp(cs->ver, l->ver) == 0 ? s : NULL;
}

static void disco_answer(void *ud, st_stanza *reply)
{
    lookup *l = ud;
    st_session *s = lookup_session(l);
    const char *type = reply ? st_get(reply, "type") : NULL;
    st_node *q =
        reply && type && !strcmp(type, "result") ? st_child(reply->root, "query", NS_INFO) : NULL;
    if (!q) {
        st_debug("mod_caps", "%s: no disco#info for %s#%s", l->full, l->node, l->ver);
        goto out;
    }
    caps_set *set = set_from_query(q);
    if (!set) goto out;
    char ver[64];
    if (l->sha1 && st_caps_ver(q, ver, sizeof ver) == 0 && strcmp(ver, l->ver) == 0) {
        st_host *h = st_server_host(l->srv, l->host);
        cache_put(h, l->ver, set);
    } else {
        /* §5.4: used for this session only, never cached under the ver */
        st_info("mod_caps", "%s: caps %s#%s %s; not cached", l->full, l->node, l->ver,
                l->sha1 ? "do not match the disco#info answer" : "cannot be verified");
    }
    if (s) apply(s, set);
    set_unref(set);
out:
    st_free(l);
}

static void ask_client(lookup *l)
{
    st_stanza *iq = st_iq_new("get", "caps");
    if (!iq) goto fail;
    st_attr_set(iq, "from", l->host);
    st_attr_set(iq, "to", l->full);
    st_tag(iq, "query", NS_INFO);
    char node[MAX_NODE + MAX_VER + 2];
    snprintf(node, sizeof node, "%s#%s", l->node, l->ver);
    st_attr_set(iq, "node", node);
    if (!st_stanza_ok(iq) || st_server_iq(l->srv, iq, QUERY_TIMEOUT_MS, disco_answer, l) != 0)
        goto fail;
    st_stanza_unref(iq);
    return;
fail:
    st_stanza_unref(iq);
    st_free(l);
}

/* ---- hooks ---- */

static st_verdict presence_out(st_session *s, st_stanza *st, const st_jid *to)
{
    if (to || st_get(st, "type")) return ST_PASS; /* only broadcast available presence */
    st_node *c = st_child(st->root, "c", ST_NS_CAPS);
    const char *node = c ? st_attr_get(c, "node") : NULL;
    const char *ver = c ? st_attr_get(c, "ver") : NULL;
    const char *hash = c ? st_attr_get(c, "hash") : NULL;
    if (!node || !ver || !*ver || strlen(ver) > MAX_VER || strlen(node) > MAX_NODE) return ST_PASS;
    caps_sess *cs = sess_caps(s);
    if (!cs) {
        cs = st_calloc(1, sizeof *cs);
        if (!cs) return ST_PASS;
        s->mod_data[ST_SLOT_CAPS] = cs;
    }
    if (strcmp(cs->ver, ver) == 0) return ST_PASS; /* unchanged (or being looked up) */
    snprintf(cs->ver, sizeof cs->ver, "%s", ver);
    int sha1 = hash && strcmp(hash, "sha-1") == 0;
    caps_host *ch = st_host_mod_state(s->host, &mod_caps);
    caps_entry *e = sha1 && ch ? st_map_get(&ch->cache, ver) : NULL;
    if (e) {
        apply(s, e->set);
        return ST_PASS;
    }
    lookup *l = st_calloc(1, sizeof *l);
    if (!l) return ST_PASS;
    l->srv = s->srv;
    snprintf(l->host, sizeof l->host, "%s", s->host->name);
    snprintf(l->full, sizeof l->full, "%s", s->full);
    snprintf(l->ver, sizeof l->ver, "%s", ver);
    snprintf(l->node, sizeof l->node, "%s", node);
    l->sha1 = sha1;
    ask_client(l);
    return ST_PASS;
}

static void session_end(st_session *s)
{
    caps_sess *cs = sess_caps(s);
    if (!cs) return;
    set_unref(cs->set);
    st_free(cs);
    s->mod_data[ST_SLOT_CAPS] = NULL;
}

/* ---- the server's own caps (§6.3) ---- */

/* The host's disco#info as mod_disco answers it, under the cursor of r. */
static void host_info(const st_host *h, st_stanza *r)
{
    st_tag(r, "identity", NULL);
    st_attr_set(r, "category", "server");
    st_attr_set(r, "type", "im");
    st_attr_set(r, "name", "Starling");
    st_up(r);
    for (size_t i = 0; i < h->nmods; i++) {
        const char *const *f = h->mods[i]->features;
        for (; f && *f; f++) {
            st_tag(r, "feature", NULL);
            st_attr_set(r, "var", *f);
            st_up(r);
        }
    }
}

static int host_ver(const st_host *h, char *out, size_t outsz)
{
    st_stanza *q = st_stanza_new("query", NS_INFO);
    int r = -1;
    if (!q) return -1;
    host_info(h, q);
    if (st_stanza_ok(q)) r = st_caps_ver(q->root, out, outsz);
    st_stanza_unref(q);
    return r;
}

static void features(st_conn *c, st_stanza *f, int authenticated)
{
    st_host *h = st_conn_host(c);
    char ver[64];
    if (!h || host_ver(h, ver, sizeof ver) != 0) return;
    st_tag(f, "c", ST_NS_CAPS);
    st_attr_set(f, "hash", "sha-1");
    st_attr_set(f, "node", CAPS_NODE);
    st_attr_set(f, "ver", ver);
    st_up(f);
}

/* disco#info to the server for CAPS_NODE#ver (§6.2): what the hash covers. */
static st_verdict caps_info(st_iq_ctx *c)
{
    const char *node = st_attr_get(c->payload, "node");
    char ver[64], want[sizeof CAPS_NODE + 64];
    if (!node || host_ver(c->host, ver, sizeof ver) != 0) return ST_PASS;
    snprintf(want, sizeof want, "%s#%s", CAPS_NODE, ver);
    if (strcmp(node, want) != 0) return ST_PASS;
    st_stanza *r = st_iq_reply(c->iq);
    if (!r) return ST_HANDLED;
    st_tag(r, "query", NS_INFO);
    st_attr_set(r, "node", node);
    host_info(c->host, r);
    if (st_stanza_ok(r))
        st_iq_result(c, r);
    else
        st_iq_error(c, "internal-server-error", NULL);
    st_stanza_unref(r);
    return ST_HANDLED;
}

static const char *const feats[] = {ST_NS_CAPS, NULL};

static const st_iq_handler iqs[] = {
    {NS_INFO, "query", ST_IQ_GET, ST_TO_HOST, caps_info},
    {0},
};

static const st_module_opt opts[] = {
    {"cache_size", ST_OPT_INT, "10000", 0, 10000000, "verified caps kept in memory per host"},
    {0},
};

static const st_hooks hooks = {
    .presence_out = presence_out,
};

const st_module mod_caps = {
    .name = "caps",
    .spec = "XEP-0115",
    .title = "Entity Capabilities",
    .features = feats,
    .iqs = iqs,
    .opts = opts,
    .stream_features = features,
    .host_init = caps_host_init,
    .host_fini = caps_host_fini,
    .session_end = session_end,
    .hooks = &hooks,
    .priority = 95, /* before mod_presence (90) keeps and broadcasts the presence */
};
