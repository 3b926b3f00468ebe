/* roster.c - the in-memory roster cache with write-through; see roster.h. */
#include <stdio.h>
#include <string.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/roster.h"
#include "starling/alloc.h"

struct st_roster_wait {
    st_roster_fn fn;
    void *ud;
    struct st_roster_wait *next;
};

static int free_item(void *ud, const char *k, void *v)
{
    st_roster_item_free(v);
    st_free(v);
    return 0;
}

void st_roster_free(st_roster *r)
{
    if (!r) return;
    st_map_each(&r->items, free_item, NULL);
    st_map_free(&r->items);
    st_free(r);
}

/* ---- loading ---- */

typedef struct load_job {
    st_user *u;
    char host[1024], node[1024];
    st_roster_item *items;
    size_t n;
    long long version;
    int exists;
    int rc;
} load_job;

static void load_work(void *h, void *arg)
{
    load_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->u->srv->store);
    st_user_creds creds;
    int e = ops->user_get(h, j->host, j->node, &creds);
    j->exists = e == 1;
    j->rc = e < 0 ? -1 : 0;
    if (j->rc == 0 && j->exists)
        j->rc = ops->roster_get(h, j->host, j->node, 1, &j->items, &j->n, &j->version);
}

static void run_waiters(st_user *u)
{
    while (u->waiters) {
        struct st_roster_wait *w = u->waiters;
        u->waiters = w->next;
        w->fn(u, w->ud);
        st_free(w);
        st_user_release(u);
    }
}

static void load_done(void *arg)
{
    load_job *j = arg;
    st_user *u = j->u;
    u->roster_loading = 0;
    st_roster *r = NULL;
    if (j->rc == 0 && (r = st_calloc(1, sizeof *r))) {
        st_map_init(&r->items);
        r->version = j->version;
        r->exists = j->exists;
        for (size_t i = 0; i < j->n; i++) {
            st_roster_item *it = st_malloc(sizeof *it);
            if (!it) continue; /* TODO: a partial roster on OOM; refuse instead */
            *it = j->items[i];
            memset(&j->items[i], 0, sizeof j->items[i]);
            if (st_map_put(&r->items, it->jid, it) != 0) {
                st_roster_item_free(it);
                st_free(it);
                continue;
            }
            if (st_roster_visible(it)) r->nvisible++;
        }
    } else {
        st_error("roster", "%s: cannot load the roster", u->bare);
    }
    st_roster_items_free(j->items, j->n);
    u->roster = r;
    st_free(j);
    /* the waiters see u->roster (NULL on failure) */
    st_user_hold(u);
    run_waiters(u);
    st_user_release(u);
}

int st_roster_with(st_user *u, st_roster_fn fn, void *ud)
{
    if (u->roster) {
        st_user_hold(u);
        fn(u, ud);
        st_user_release(u);
        return 0;
    }
    struct st_roster_wait *w = st_calloc(1, sizeof *w);
    if (!w) return -1;
    w->fn = fn;
    w->ud = ud;
    /* FIFO: work on a user's roster runs in the order it was asked for */
    struct st_roster_wait **pp = &u->waiters;
    while (*pp) pp = &(*pp)->next;
    *pp = w;
    st_user_hold(u);
    if (u->roster_loading) return 0;
    load_job *j = st_calloc(1, sizeof *j);
    if (!j) goto oom;
    j->u = u;
    snprintf(j->host, sizeof j->host, "%s", u->host->name);
    snprintf(j->node, sizeof j->node, "%s", u->node);
    u->roster_loading = 1;
    if (st_storage_submit(u->srv->store, load_work, load_done, j) != 0) {
        u->roster_loading = 0;
        st_free(j);
        goto oom;
    }
    return 0;
oom:
    *pp = NULL;
    st_free(w);
    st_user_release(u);
    return -1;
}

st_roster_item *st_roster_find(st_user *u, const char *jid)
{
    return u->roster ? st_map_get(&u->roster->items, jid) : NULL;
}

typedef struct each_adapter {
    int (*fn)(void *, st_roster_item *);
    void *ud;
} each_adapter;

static int each_adapt(void *ud, const char *k, void *v)
{
    each_adapter *a = ud;
    return a->fn(a->ud, v);
}

void st_roster_each(st_user *u, int (*fn)(void *ud, st_roster_item *it), void *ud)
{
    each_adapter a = {fn, ud};
    if (u->roster) st_map_each(&u->roster->items, each_adapt, &a);
}

/* ---- changes ---- */

typedef struct put_job {
    const st_store_ops *ops;
    char host[1024], node[1024];
    st_roster_item it;
    int rc;
} put_job;

static void put_work(void *h, void *arg)
{
    put_job *j = arg;
    long long v;
    j->rc = j->ops->roster_put(h, j->host, j->node, &j->it, 0, &v);
}

static void put_done(void *arg)
{
    put_job *j = arg;
    if (j->rc != 0) st_error("roster", "%s@%s: saving roster item %s failed", j->node, j->host,
                             j->it.jid ? j->it.jid : "?");
    st_roster_item_free(&j->it);
    st_free(j);
}

static const char *sub_name(st_sub s)
{
    switch (s) {
    case ST_SUB_TO: return "to";
    case ST_SUB_FROM: return "from";
    case ST_SUB_BOTH: return "both";
    default: return "none";
    }
}

void st_roster_item_xml(st_stanza *s, const st_roster_item *it)
{
    st_tag(s, "item", NULL);
    st_attr_set(s, "jid", it->jid);
    if (!st_roster_visible(it)) {
        st_attr_set(s, "subscription", "remove");
        st_up(s);
        return;
    }
    if (it->name) st_attr_set(s, "name", it->name);
    st_attr_set(s, "subscription", sub_name(it->sub));
    if (it->ask_out) st_attr_set(s, "ask", "subscribe");
    if (it->approved) st_attr_set(s, "approved", "true");
    for (size_t i = 0; i < it->ngroups; i++) st_text_tag(s, "group", it->groups[i]);
    st_up(s);
}

/* RFC 6121 §2.1.6: a push to every interested resource of the user. */
static void push(st_user *u, const st_roster_item *it)
{
    char ver[32];
    snprintf(ver, sizeof ver, "%lld", u->roster->version);
    for (st_session *s = u->sessions; s; s = s->next_of_user) {
        if (!s->interested) continue;
        char id[48];
        st_server_make_id(u->srv, id, sizeof id);
        st_stanza *p = st_iq_new("set", id);
        if (!p) continue;
        st_attr_set(p, "to", s->full);
        st_tag(p, "query", ST_NS_ROSTER);
        st_attr_set(p, "ver", ver);
        st_roster_item_xml(p, it);
        if (st_stanza_ok(p)) st_session_send(s, p);
        st_stanza_unref(p);
    }
}

int st_roster_store(st_user *u, const st_roster_item *it, size_t max_items)
{
    st_roster *r = u->roster;
    if (!r) return -1;
    st_roster_item *old = st_map_get(&r->items, it->jid);
    int was_visible = old && st_roster_visible(old);
    int now_visible = st_roster_visible(it);
    if (now_visible && !was_visible && max_items && r->nvisible >= max_items) return 1;

    st_roster_item *copy = st_malloc(sizeof *copy);
    put_job *j = st_calloc(1, sizeof *j);
    if (!copy || !j || st_roster_item_copy(copy, it) != 0) {
        st_free(copy);
        st_free(j);
        return -1;
    }
    if (st_roster_item_copy(&j->it, it) != 0) {
        st_roster_item_free(copy);
        st_free(copy);
        st_free(j);
        return -1;
    }
    r->version++;
    copy->ver = r->version;
    j->it.ver = r->version;
    if (old) {
        st_map_del(&r->items, old->jid);
        st_roster_item_free(old);
        st_free(old);
    }
    if (st_map_put(&r->items, copy->jid, copy) != 0) {
        /* cannot happen after the delete freed a slot, but stay safe */
        st_roster_item_free(copy);
        st_free(copy);
    }
    r->nvisible += (size_t)now_visible - (size_t)was_visible;
    j->ops = st_storage_ops(u->srv->store);
    snprintf(j->host, sizeof j->host, "%s", u->host->name);
    snprintf(j->node, sizeof j->node, "%s", u->node);
    /* Grouped: put_work reads only ops, host, node and it from j and
     * overwrites j->rc, and roster_put stays all-or-nothing inside a group
     * (its transaction becomes a savepoint), so a re-run after a failed
     * group stores the item once, with the version a lone run gives. */
    if (st_storage_submit_grouped(u->srv->store, put_work, put_done, j) != 0) {
        st_error("roster", "%s: cannot queue a roster write", u->bare);
        st_roster_item_free(&j->it);
        st_free(j);
    }
    if (was_visible || now_visible) push(u, st_map_get(&r->items, it->jid));
    return 0;
}
