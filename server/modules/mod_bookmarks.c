/* mod_bookmarks.c - XEP-0402 PEP Native Bookmarks kept in step with XEP-0048
 * bookmarks in XEP-0049 private XML storage (the "#compat" of XEP-0402 §5.3).
 *
 * New clients keep one item per room on the PEP node urn:xmpp:bookmarks:1
 * (item id = room JID); old clients read and write the whole list as
 * <storage xmlns='storage:bookmarks'/> in private XML. Both stay the same:
 *
 *  - PEP -> private: on every change of the node (mod_pep listener) the
 *    private <storage/> is rewritten from the node's items.
 *  - private -> PEP: a private XML set of storage:bookmarks is seen here
 *    first (this module's IQ handler runs before mod_private's and passes
 *    the IQ on); the conferences are then compared with the node's items:
 *    new or changed ones are published, missing ones retracted. The writes
 *    back to private XML that those publishes would cause are suppressed:
 *    the client's own <storage/> is what mod_private stores.
 *
 * Only <conference/> bookmarks exist in XEP-0402; XEP-0048 <url/>
 * bookmarks are lost when the list is rewritten from PEP (as in other
 * servers' compatibility layers). */
#include <stdio.h>
#include <string.h>
#include "server/log.h"
#include "server/modules/pep.h"
#include "server/modules/private.h"
#include "server/server.h"
#include "starling/alloc.h"

#define NS_BM2 "urn:xmpp:bookmarks:1"
#define NS_BM1 "storage:bookmarks"
#define NS_PRIVATE "jabber:iq:private"

extern const st_module mod_bookmarks;

/* XEP-0402 §5.1: the node is private and keeps every bookmark. */
static const st_pep_config node_config = {ST_PEP_WHITELIST, -1, 1};

/* The account being synchronised from private XML (its PEP changes are
 * not written back), or NULL. Everything runs on the one loop thread. */
static const char *syncing;

static int truthy(const char *v)
{
    return v && (!strcmp(v, "true") || !strcmp(v, "1"));
}

/* ---- PEP -> private XML ---- */

static void add_conference(void *ud, const char *id, const st_node *c)
{
    st_stanza *s = ud;
    if (strcmp(c->name, "conference") || strcmp(c->ns, NS_BM2)) return;
    const char *name = st_attr_get(c, "name");
    const char *nick = st_child_text(c, "nick", NS_BM2);
    const char *pw = st_child_text(c, "password", NS_BM2);
    st_tag(s, "conference", NULL);
    st_attr_set(s, "jid", id);
    if (name) st_attr_set(s, "name", name);
    st_attr_set(s, "autojoin", truthy(st_attr_get(c, "autojoin")) ? "true" : "false");
    if (nick) st_text_tag(s, "nick", nick);
    if (pw) st_text_tag(s, "password", pw);
    st_up(s);
}

static void on_pep(st_host *h, const char *bare, const char *node, const char *id,
                   const st_node *payload)
{
    if (!st_host_has(h, "bookmarks") || (syncing && !strcmp(syncing, bare))) return;
    const char *at = strchr(bare, '@');
    if (!at) return;
    char user[1024];
    snprintf(user, sizeof user, "%.*s", (int)(at - bare), bare);
    st_stanza *s = st_stanza_new("storage", NS_BM1);
    if (!s) return;
    st_pep_peek(h, bare, NS_BM2, add_conference, s);
    if (!st_stanza_ok(s) || st_private_put(h->srv, h->name, user, s->root, NULL, NULL) != 0)
        st_warn("mod_bookmarks", "%s: could not write XEP-0048 bookmarks", bare);
    st_stanza_unref(s);
}

/* ---- private XML -> PEP ---- */

typedef struct sync_ctx {
    st_stanza *storage; /* the client's <storage xmlns='storage:bookmarks'/> */
    char user[1024];
} sync_ctx;

/* The XEP-0402 payload for a XEP-0048 <conference/>. */
static st_stanza *conference_2(const st_node *c)
{
    st_stanza *p = st_stanza_new("conference", NS_BM2);
    if (!p) return NULL;
    const char *name = st_attr_get(c, "name");
    const char *nick = st_child_text(c, "nick", NS_BM1);
    const char *pw = st_child_text(c, "password", NS_BM1);
    if (name) st_attr_set(p, "name", name);
    st_attr_set(p, "autojoin", truthy(st_attr_get(c, "autojoin")) ? "true" : "false");
    if (nick) st_text_tag(p, "nick", nick);
    if (pw) st_text_tag(p, "password", pw);
    if (!st_stanza_ok(p)) {
        st_stanza_unref(p);
        return NULL;
    }
    return p;
}

static int same_text(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static int same_conference(const st_node *a, const st_node *b)
{
    return same_text(st_attr_get(a, "name"), st_attr_get(b, "name")) &&
           truthy(st_attr_get(a, "autojoin")) == truthy(st_attr_get(b, "autojoin")) &&
           same_text(st_child_text(a, "nick", NS_BM2), st_child_text(b, "nick", NS_BM2)) &&
           same_text(st_child_text(a, "password", NS_BM2), st_child_text(b, "password", NS_BM2));
}

typedef struct gone {
    const st_node *storage;
    char **ids; /* owned, n of them */
    size_t n, cap;
} gone;

/* An existing 0402 item the 0048 list no longer has: note it (retracting
 * now would change the node under st_pep_peek). */
static void note_missing(void *ud, const char *id, const st_node *payload)
{
    gone *g = ud;
    for (st_node *c = st_first_elem(g->storage); c; c = st_next_elem(c)) {
        const char *jid = st_attr_get(c, "jid");
        if (!strcmp(c->name, "conference") && jid && !strcmp(jid, id)) return;
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 8;
        char **v = st_realloc(g->ids, cap * sizeof *v);
        if (!v) return;
        g->ids = v;
        g->cap = cap;
    }
    if ((g->ids[g->n] = st_strdup(id))) g->n++;
}

typedef struct find {
    const char *id;
    int found, same;
    const st_node *want;
} find;

static void find_item(void *ud, const char *id, const st_node *payload)
{
    find *f = ud;
    if (strcmp(id, f->id)) return;
    f->found = 1;
    f->same = same_conference(payload, f->want);
}

static void sync_ready(void *ud, st_host *h, const char *bare)
{
    sync_ctx *c = ud;
    if (!h) goto out;
    syncing = bare;
    gone g = {c->storage->root, NULL, 0, 0};
    st_pep_peek(h, bare, NS_BM2, note_missing, &g);
    for (size_t i = 0; i < g.n; i++) {
        st_pep_retract(h, c->user, NS_BM2, g.ids[i]);
        st_free(g.ids[i]);
    }
    st_free(g.ids);
    for (st_node *x = st_first_elem(c->storage->root); x; x = st_next_elem(x)) {
        const char *jid = st_attr_get(x, "jid");
        if (strcmp(x->name, "conference") || strcmp(x->ns, NS_BM1) || !jid || !*jid) continue;
        st_stanza *p = conference_2(x);
        if (!p) continue;
        find f = {jid, 0, 0, p->root};
        st_pep_peek(h, bare, NS_BM2, find_item, &f);
        if (!f.found || !f.same) st_pep_publish(h, c->user, NS_BM2, jid, p->root, &node_config);
        st_stanza_unref(p);
    }
    syncing = NULL;
out:
    st_stanza_unref(c->storage);
    st_free(c);
}

/* A private XML set from the owner: note the bookmarks, let mod_private store. */
static st_verdict private_set(st_iq_ctx *c)
{
    st_node *s = st_child(c->payload, "storage", NS_BM1);
    if (!s || !c->from || !c->from->node) return ST_PASS;
    sync_ctx *x = st_calloc(1, sizeof *x);
    if (!x || !(x->storage = st_stanza_from_node(s))) {
        st_free(x);
        return ST_PASS;
    }
    snprintf(x->user, sizeof x->user, "%s", c->from->node);
    if (st_pep_with(c->host, x->user, sync_ready, x) != 0) {
        st_stanza_unref(x->storage);
        st_free(x);
    }
    return ST_PASS;
}

static int bookmarks_init(st_host *h, void **state)
{
    *state = NULL;
    return st_pep_listen(NS_BM2, on_pep);
}

static const st_iq_handler iqs[] = {
    {NS_PRIVATE, "query", ST_IQ_SET, ST_TO_ACCOUNT, private_set},
    {0},
};

const st_module mod_bookmarks = {
    .name = "bookmarks",
    .spec = "XEP-0402",
    .title = "PEP Native Bookmarks (synchronised with XEP-0048)",
    .iqs = iqs,
    .host_init = bookmarks_init,
    .priority = 93, /* sees private XML sets before mod_private stores them */
};
