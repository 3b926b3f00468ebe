/* mod_push.c - XEP-0357 Push Notifications: the user's server side.
 *
 * A client enables push with <enable jid node/> (and, optionally, a
 * publish-options data form such as a secret the app server wants back);
 * when a message arrives that the client's device would otherwise miss, we
 * publish a summary to the app server's pubsub node, from the user's bare
 * JID, with the stored publish-options. <disable jid [node]/> removes one
 * registration or all of one service.
 *
 * Design:
 *
 * - A registration belongs to the account (XEP-0357 §5): it is stored in the
 *   kv store "push" under "jid\nnode" (a normalised JID never contains a
 *   newline), the value being the <enable/> element as received (normalised
 *   jid, node, publish-options form), so it survives restarts. Re-enabling
 *   the same jid+node replaces the publish-options (§5: the last one wins).
 * - The session that enabled a registration remembers it (a per-host map
 *   full JID -> its registrations), because that session is the device the
 *   pushes stand in for: a message for a user is pushed
 *     . to the registrations of each push-enabled session that would receive
 *       it but is hibernated (stream management kept it, TCP gone:
 *       conn == NULL while sm is set); a live session gets the message
 *       itself, so nothing is pushed for it;
 *     . to every stored registration of the account when the user has no
 *       available resource at all (navailable == 0: offline storage takes
 *       the message); they are read from storage for that message.
 *   Only chat/normal messages with a non-empty body are pushed.
 * - When a hibernated session that pushed ends for good, stream management
 *   routes what it never acknowledged again, into offline storage (possibly
 *   later: blocking may hold a stanza until the blocklist is loaded). If
 *   every pushable message in its queue was pushed during the hibernation,
 *   that many offline pushes for the user are skipped (the "quiet" count,
 *   forgotten after QUIET_MS); if some were never pushed, nothing is
 *   skipped and the user hears once more.
 * - Rate limit per registration (push.min_interval): after a publish the
 *   registration cools down; messages meanwhile are counted, and one
 *   publish at the end of the cooldown covers them (message-count says how
 *   many; the sender and body are the last one's). The trailing publish is
 *   dropped if the enabling session is live again by then. So a burst costs
 *   two publishes, and the last message is never left without a push.
 * - Errors from the app server (XEP-0357 §7.1): an error of type 'wait', or
 *   one of the transient conditions below, or no answer at all, keeps the
 *   registration; any other error disables it (removed from storage and
 *   from every session of the user), as the XEP says a server SHOULD.
 * - Privacy (§9): the body goes to the app server only with
 *   push.include_body = true; the sender's JID always does.
 *
 * Every storage operation runs on the storage thread (st_storage_submit);
 * its completion finds the host again by name, since a reload may have
 * removed it. Memory changes for enable/disable happen in the completions,
 * which run in submission order, so a disable completes after any publish
 * that was under way for a message that arrived before it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/server.h"
#include "server/sm.h"
#include "starling/alloc.h"
#include "starling/xmlstream.h"

#define NS_PUSH "urn:xmpp:push:0"
#define NS_PUBSUB "http://jabber.org/protocol/pubsub"
#define NS_XDATA "jabber:x:data"
#define PUBLISH_OPTIONS NS_PUBSUB "#publish-options"
#define SUMMARY "urn:xmpp:push:summary"
#define STORE "push"

#define MAX_NODE 1024         /* bytes of a pubsub node name we accept */
#define MAX_STORED 16384      /* bytes of one stored <enable/> (publish-options included) */
#define MAX_BODY 1024         /* bytes of a body we forward (cut at a UTF-8 boundary) */
#define MAX_PER_MESSAGE 32    /* registrations one message may push to */
#define PUBLISH_TIMEOUT_MS 30000
#define QUIET_MS 10000        /* how long redelivered messages stay expected */

extern const st_module mod_push;

/* ---- state ---- */

/* One registration as kept in memory. */
typedef struct push_reg {
    char *jid;        /* the app server (normalised) */
    char *node;
    st_stanza *form;  /* publish-options <x/> (a reference), or NULL */
} push_reg;

/* The registrations a bound session enabled. */
typedef struct push_sess {
    char *full; /* key in push_host.sessions (owned) */
    unsigned long long serial;
    push_reg *regs;
    size_t n;
    unsigned pushed; /* messages pushed for it during the current hibernation */
} push_sess;

struct push_host;

/* Rate-limit state of one registration with recent activity. */
typedef struct push_rl {
    char *key;  /* "bare\njid\nnode", key in push_host.limits (owned) */
    struct push_host *ph;
    push_reg reg;
    char *bare;
    unsigned pending;     /* messages not yet covered by a publish */
    char *sender, *body;  /* of the last pending message (owned, may be NULL) */
    char by_full[3100];   /* session whose return makes a trailing publish moot, or "" */
    unsigned long long by_serial;
    st_timer cooldown;    /* armed while the registration cools down */
} push_rl;

typedef struct push_host {
    st_host *h;
    st_map sessions; /* full JID -> push_sess */
    st_map limits;   /* registration key -> push_rl */
    st_map quiet;    /* bare JID -> push_quiet */
} push_host;

/* Redelivered messages of an ended hibernation, already pushed. */
typedef struct push_quiet {
    char *bare; /* key (owned) */
    push_host *ph;
    unsigned left;
    st_timer expiry;
} push_quiet;

static void reg_clear(push_reg *r)
{
    st_free(r->jid);
    st_free(r->node);
    st_stanza_unref(r->form);
    memset(r, 0, sizeof *r);
}

/* Copy of src into dst (which must be empty): 0 or -1 (OOM). */
static int reg_copy(push_reg *dst, const char *jid, const char *node, st_stanza *form)
{
    dst->jid = st_strdup(jid);
    dst->node = st_strdup(node);
    dst->form = form ? st_stanza_ref(form) : NULL;
    if (dst->jid && dst->node) return 0;
    reg_clear(dst);
    return -1;
}

static void sess_free(push_sess *ps)
{
    for (size_t i = 0; i < ps->n; i++) reg_clear(&ps->regs[i]);
    st_free(ps->regs);
    st_free(ps->full);
    st_free(ps);
}

static void rl_free(push_rl *rl)
{
    st_timer_cancel(rl->ph->h->srv->loop, &rl->cooldown);
    reg_clear(&rl->reg);
    st_free(rl->bare);
    st_free(rl->sender);
    st_free(rl->body);
    st_free(rl->key);
    st_free(rl);
}

static void rl_drop(push_rl *rl)
{
    st_map_del(&rl->ph->limits, rl->key);
    rl_free(rl);
}

static void quiet_free(push_quiet *q)
{
    st_timer_cancel(q->ph->h->srv->loop, &q->expiry);
    st_free(q->bare);
    st_free(q);
}

static void quiet_over(st_loop *l, st_timer *t)
{
    push_quiet *q = t->ud;
    st_map_del(&q->ph->quiet, q->bare);
    quiet_free(q);
}

static int push_init(st_host *h, void **state)
{
    push_host *ph = st_calloc(1, sizeof *ph);
    if (!ph) return -1;
    ph->h = h;
    st_map_init(&ph->sessions);
    st_map_init(&ph->limits);
    st_map_init(&ph->quiet);
    *state = ph;
    return 0;
}

static int each_sess_free(void *ud, const char *k, void *v)
{
    sess_free(v);
    return 0;
}

static int each_rl_free(void *ud, const char *k, void *v)
{
    rl_free(v);
    return 0;
}

static int each_quiet_free(void *ud, const char *k, void *v)
{
    quiet_free(v);
    return 0;
}

static void push_fini(st_host *h, void *state)
{
    push_host *ph = state;
    if (!ph) return;
    st_map_each(&ph->sessions, each_sess_free, NULL);
    st_map_each(&ph->limits, each_rl_free, NULL);
    st_map_each(&ph->quiet, each_quiet_free, NULL);
    st_map_free(&ph->sessions);
    st_map_free(&ph->limits);
    st_map_free(&ph->quiet);
    st_free(ph);
}

/* The state of the host named name if it still runs this module, or NULL. */
static push_host *state_of(st_server *srv, const char *name)
{
    st_host *h = st_server_host(srv, name);
    return h ? st_host_mod_state(h, &mod_push) : NULL;
}

/* ---- publishing ---- */

typedef struct publish_ctx {
    st_server *srv;
    char host[1024];
    char user[1024];
    char *jid, *node; /* owned */
} publish_ctx;

static void start_disable(st_server *srv, const char *host, const char *user, const char *jid,
                          const char *node, st_iq_pending *p);

/* Conditions that say "later", not "never" (RFC 6120 §8.3.3). */
static int transient(const char *type, const char *cond)
{
    static const char *const soft[] = {"internal-server-error", "resource-constraint",
                                       "remote-server-timeout", "recipient-unavailable", NULL};
    if (type && strcmp(type, "wait") == 0) return 1;
    for (size_t i = 0; cond && soft[i]; i++)
        if (strcmp(cond, soft[i]) == 0) return 1;
    return 0;
}

static void publish_done(void *ud, st_stanza *reply)
{
    publish_ctx *pc = ud;
    const char *type = reply ? st_get(reply, "type") : NULL;
    if (!reply) {
        st_info("mod_push", "%s@%s: no answer from %s (node %s); registration kept", pc->user,
                pc->host, pc->jid, pc->node);
    } else if (type && strcmp(type, "error") == 0) {
        st_node *e = st_child(reply->root, "error", NULL);
        const char *etype = e ? st_attr_get(e, "type") : NULL, *cond = NULL;
        for (st_node *c = e ? st_first_elem(e) : NULL; c; c = st_next_elem(c))
            if (strcmp(c->ns, ST_NS_STANZAS_ERR) == 0 && strcmp(c->name, "text") != 0) {
                cond = c->name;
                break;
            }
        if (transient(etype, cond)) {
            st_info("mod_push", "%s@%s: %s (node %s) answered %s; registration kept", pc->user,
                    pc->host, pc->jid, pc->node, cond ? cond : "an error");
        } else {
            /* XEP-0357 §7.1: the jid+node combination is disabled */
            st_info("mod_push", "%s@%s: %s (node %s) answered %s; disabling the registration",
                    pc->user, pc->host, pc->jid, pc->node, cond ? cond : "an error");
            start_disable(pc->srv, pc->host, pc->user, pc->jid, pc->node, NULL);
        }
    } else {
        st_debug("mod_push", "%s@%s: notification accepted by %s", pc->user, pc->host, pc->jid);
    }
    st_free(pc->jid);
    st_free(pc->node);
    st_free(pc);
}

/* A field of the summary form. */
static void field(st_stanza *s, const char *var, const char *type, const char *value)
{
    st_tag(s, "field", NULL);
    st_attr_set(s, "var", var);
    if (type) st_attr_set(s, "type", type);
    st_text_tag(s, "value", value);
    st_up(s);
}

/* At most MAX_BODY bytes of body, not cutting a UTF-8 sequence. Yours to free. */
static char *cut_body(const char *body)
{
    size_t n = strlen(body);
    if (n > MAX_BODY) {
        n = MAX_BODY;
        while (n > 0 && ((unsigned char)body[n] & 0xC0) == 0x80) n--;
    }
    return st_strndup(body, n);
}

/* Publish what rl has pending now, and start its cooldown. */
static void publish(push_rl *rl)
{
    st_host *h = rl->ph->h;
    st_server *srv = h->srv;
    publish_ctx *pc = NULL;
    char count[16];
    st_stanza *iq = st_iq_new("set", NULL);
    long long min = st_host_opt_num(h, &mod_push, "min_interval");

    snprintf(count, sizeof count, "%u", rl->pending);
    st_attr_set(iq, "from", rl->bare); /* the publisher is the user (§3.2: publish-only) */
    st_attr_set(iq, "to", rl->reg.jid);
    st_tag(iq, "pubsub", NS_PUBSUB);
    st_tag(iq, "publish", NULL);
    st_attr_set(iq, "node", rl->reg.node);
    st_tag(iq, "item", NULL);
    st_tag(iq, "notification", NS_PUSH);
    st_tag(iq, "x", NS_XDATA);
    st_attr_set(iq, "type", "form");
    field(iq, "FORM_TYPE", "hidden", SUMMARY);
    field(iq, "message-count", NULL, count);
    if (rl->sender) field(iq, "last-message-sender", NULL, rl->sender);
    if (rl->body) field(iq, "last-message-body", NULL, rl->body);
    st_up(iq); /* x */
    st_up(iq); /* notification */
    st_up(iq); /* item */
    st_up(iq); /* publish */
    if (rl->reg.form) {
        st_tag(iq, "publish-options", NULL);
        st_add_copy(iq, rl->reg.form->root);
        st_up(iq);
    }
    rl->pending = 0;
    st_free(rl->sender);
    st_free(rl->body);
    rl->sender = rl->body = NULL;
    if (min > 0) st_timer_set(srv->loop, &rl->cooldown, (uint64_t)min * 1000);

    const char *at = strchr(rl->bare, '@');
    if (!iq || !st_stanza_ok(iq) || !at || !(pc = st_calloc(1, sizeof *pc))) goto fail;
    pc->srv = srv;
    snprintf(pc->user, sizeof pc->user, "%.*s", (int)(at - rl->bare), rl->bare);
    snprintf(pc->host, sizeof pc->host, "%s", h->name);
    if (!(pc->jid = st_strdup(rl->reg.jid)) || !(pc->node = st_strdup(rl->reg.node))) goto fail;
    st_debug("mod_push", "%s: notifying %s (node %s)", rl->bare, rl->reg.jid, rl->reg.node);
    /* the answer may come at once (an error routed back synchronously);
     * publish_done owns pc from here */
    if (st_server_iq(srv, iq, PUBLISH_TIMEOUT_MS, publish_done, pc) != 0) goto fail;
    st_stanza_unref(iq);
    return;
fail:
    st_warn("mod_push", "%s: out of memory while notifying %s", rl->bare, rl->reg.jid);
    if (pc) {
        st_free(pc->jid);
        st_free(pc->node);
        st_free(pc);
    }
    st_stanza_unref(iq);
}

static void cooldown_over(st_loop *l, st_timer *t)
{
    push_rl *rl = t->ud;
    if (!rl->pending) {
        rl_drop(rl);
        return;
    }
    st_session *s = rl->by_full[0] ? st_session_find(rl->ph->h->srv, rl->by_full) : NULL;
    if (s && s->serial == rl->by_serial && s->conn && !st_conn_is_closed(s->conn)) {
        /* the device is back and has the messages: nothing to wake it for */
        rl_drop(rl);
        return;
    }
    publish(rl);
    if (!st_timer_armed(&rl->cooldown)) rl_drop(rl);
}

/* Something for registration reg of bare arrived: publish now, or count it
 * for the publish at the end of the cooldown. by: the hibernated session
 * it stands in for, or NULL (the user is offline). */
static void notify(push_host *ph, const char *bare, const push_reg *reg, const char *sender,
                   const char *body, const st_session *by)
{
    st_buf key;
    push_rl *rl = NULL;
    st_buf_init(&key, 3 * 3100 + 16);
    if (st_buf_printf(&key, "%s\n%s\n%s", bare, reg->jid, reg->node) != 0) goto oom;
    rl = st_map_get(&ph->limits, key.data);
    if (!rl) {
        if (!(rl = st_calloc(1, sizeof *rl))) goto oom;
        rl->ph = ph;
        st_timer_init(&rl->cooldown, cooldown_over, rl);
        if (reg_copy(&rl->reg, reg->jid, reg->node, reg->form) != 0 ||
            !(rl->bare = st_strdup(bare)) || !(rl->key = st_strdup(key.data)) ||
            st_map_put(&ph->limits, rl->key, rl) != 0) {
            rl_free(rl);
            goto oom;
        }
    } else if (reg->form != rl->reg.form) {
        /* the newest publish-options win (§5) */
        st_stanza_unref(rl->reg.form);
        rl->reg.form = reg->form ? st_stanza_ref(reg->form) : NULL;
    }
    rl->pending++;
    st_free(rl->sender);
    st_free(rl->body);
    rl->sender = sender && *sender ? st_strdup(sender) : NULL;
    rl->body = body && st_host_opt_bool(ph->h, &mod_push, "include_body") ? cut_body(body) : NULL;
    snprintf(rl->by_full, sizeof rl->by_full, "%s", by ? by->full : "");
    rl->by_serial = by ? by->serial : 0;
    if (!st_timer_armed(&rl->cooldown)) {
        publish(rl);
        if (!st_timer_armed(&rl->cooldown)) rl_drop(rl); /* no cooldown: nothing to keep */
    }
    st_buf_free(&key);
    return;
oom:
    st_warn("mod_push", "%s: out of memory while queueing a notification", bare);
    st_buf_free(&key);
}

/* ---- stored registrations ---- */

/* Parse a stored <enable/> (key "jid\nnode") into r. 0 or -1. */
static int reg_parse(push_reg *r, const char *key, const char *val, size_t len)
{
    const char *nl = strchr(key, '\n');
    const char *err = NULL;
    st_stanza *st = NULL;
    int rc = -1;
    memset(r, 0, sizeof *r);
    if (!nl) goto out;
    if (!(r->jid = st_strndup(key, (size_t)(nl - key))) || !(r->node = st_strdup(nl + 1))) goto out;
    if (!(st = st_xml_parse_element(val, len, &err))) goto out;
    st_node *x = st_child(st->root, "x", NS_XDATA);
    if (x && !(r->form = st_stanza_from_node(x))) goto out;
    rc = 0;
out:
    if (rc != 0) reg_clear(r);
    st_stanza_unref(st);
    return rc;
}

typedef struct kv_entry {
    char *key, *val;
    size_t len;
} kv_entry;

/* A storage job about one user's registrations. */
typedef struct reg_job {
    st_server *srv;
    char host[1024];
    char user[1024];
    int rc;
    /* offline pushes: what the message was */
    char *sender, *body;
    kv_entry *entries;
    size_t n, cap;
    /* enable / disable */
    st_iq_pending *p;   /* the client's IQ, or NULL (disabled after an error) */
    char full[3100];    /* enable: the session that asked */
    unsigned long long serial;
    char *jid, *node;   /* disable: node NULL = every node of jid */
    char *xml;          /* enable: what is stored */
    size_t xml_len;
    st_stanza *form;    /* enable: the publish-options (a reference) or NULL */
    size_t max;
} reg_job;

static void job_free(reg_job *j)
{
    for (size_t i = 0; i < j->n; i++) {
        st_free(j->entries[i].key);
        st_free(j->entries[i].val);
    }
    st_free(j->entries);
    st_free(j->sender);
    st_free(j->body);
    st_free(j->jid);
    st_free(j->node);
    st_free(j->xml);
    st_stanza_unref(j->form);
    st_free(j);
}

/* kv_list callback (storage thread): keep a copy of each entry. */
static void collect(void *ud, const char *key, const char *val, size_t len)
{
    reg_job *j = ud;
    if (j->rc < 0 || j->n >= j->max) return;
    if (j->n == j->cap) {
        size_t cap = j->cap ? 2 * j->cap : 8;
        kv_entry *e = st_realloc(j->entries, cap * sizeof *e);
        if (!e) {
            j->rc = -1;
            return;
        }
        j->entries = e;
        j->cap = cap;
    }
    kv_entry *e = &j->entries[j->n];
    e->key = st_strdup(key);
    e->val = st_strndup(val, len);
    e->len = len;
    if (!e->key || !e->val) {
        st_free(e->key);
        st_free(e->val);
        j->rc = -1;
        return;
    }
    j->n++;
}

static void list_work(void *h, void *arg)
{
    reg_job *j = arg;
    if (st_storage_ops(j->srv->store)->kv_list(h, j->host, j->user, STORE, collect, j) < 0)
        j->rc = -1;
}

/* The user is offline: push to every stored registration. */
static void offline_done(void *arg)
{
    reg_job *j = arg;
    push_host *ph = state_of(j->srv, j->host);
    char bare[2100];
    snprintf(bare, sizeof bare, "%s@%s", j->user, j->host);
    if (j->rc < 0) st_error("mod_push", "%s: reading push registrations failed", bare);
    for (size_t i = 0; ph && i < j->n; i++) {
        push_reg r;
        if (reg_parse(&r, j->entries[i].key, j->entries[i].val, j->entries[i].len) != 0) {
            st_warn("mod_push", "%s: skipping a damaged push registration", bare);
            continue;
        }
        notify(ph, bare, &r, j->sender, j->body, NULL);
        reg_clear(&r);
    }
    job_free(j);
}

static void offline_push(push_host *ph, const char *node, const char *sender, const char *body)
{
    st_server *srv = ph->h->srv;
    reg_job *j = st_calloc(1, sizeof *j);
    if (!j) goto fail;
    j->srv = srv;
    j->max = (size_t)st_host_opt_num(ph->h, &mod_push, "max_registrations");
    snprintf(j->host, sizeof j->host, "%s", ph->h->name);
    snprintf(j->user, sizeof j->user, "%s", node);
    if (sender && *sender && !(j->sender = st_strdup(sender))) goto fail;
    if (body && !(j->body = st_strdup(body))) goto fail;
    if (st_storage_submit(srv->store, list_work, offline_done, j) != 0) goto fail;
    return;
fail:
    st_warn("mod_push", "%s@%s: could not look up push registrations", node, ph->h->name);
    if (j) job_free(j);
}

/* ---- disabling ---- */

/* Does the stored key "jid\nnode" belong to jid (and node, if given)? */
static int key_matches(const char *key, const char *jid, const char *node)
{
    size_t n = strlen(jid);
    if (strncmp(key, jid, n) != 0 || key[n] != '\n') return 0;
    return !node || strcmp(key + n + 1, node) == 0;
}

static void disable_work(void *h, void *arg)
{
    reg_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    j->max = (size_t)-1;
    if (ops->kv_list(h, j->host, j->user, STORE, collect, j) < 0) j->rc = -1;
    for (size_t i = 0; j->rc == 0 && i < j->n; i++)
        if (key_matches(j->entries[i].key, j->jid, j->node) &&
            ops->kv_del(h, j->host, j->user, STORE, j->entries[i].key) < 0)
            j->rc = -1;
}

typedef struct drop_ctx {
    const char *bare, *jid, *node;
    push_rl **rl;
    size_t n, cap;
    int oom;
} drop_ctx;

static int collect_rl(void *ud, const char *k, void *v)
{
    drop_ctx *d = ud;
    push_rl *rl = v;
    if (strcmp(rl->bare, d->bare) != 0 || strcmp(rl->reg.jid, d->jid) != 0 ||
        (d->node && strcmp(rl->reg.node, d->node) != 0))
        return 0;
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 8;
        push_rl **n = st_realloc(d->rl, cap * sizeof *n);
        if (!n) {
            d->oom = 1; /* TODO: the rest cools down and then publishes once more */
            return 1;
        }
        d->rl = n;
        d->cap = cap;
    }
    d->rl[d->n++] = rl;
    return 0;
}

/* Forget jid (+node) in every session of the user and in the rate limiter. */
static void forget(push_host *ph, st_server *srv, const char *bare, const char *jid,
                   const char *node)
{
    st_user *u = st_user_find(srv, bare);
    for (st_session *s = u ? u->sessions : NULL; s; s = s->next_of_user) {
        push_sess *ps = st_map_get(&ph->sessions, s->full);
        if (!ps || ps->serial != s->serial) continue;
        size_t k = 0;
        for (size_t i = 0; i < ps->n; i++) {
            if (strcmp(ps->regs[i].jid, jid) == 0 && (!node || strcmp(ps->regs[i].node, node) == 0))
                reg_clear(&ps->regs[i]);
            else
                ps->regs[k++] = ps->regs[i];
        }
        ps->n = k;
    }
    /* rate-limit entries: collected first, the map must not change while walked */
    drop_ctx d = {.bare = bare, .jid = jid, .node = node};
    st_map_each(&ph->limits, collect_rl, &d);
    for (size_t i = 0; i < d.n; i++) rl_drop(d.rl[i]);
    st_free(d.rl);
    if (d.oom) st_warn("mod_push", "%s: out of memory while disabling %s", bare, jid);
}

static void disable_done(void *arg)
{
    reg_job *j = arg;
    push_host *ph = state_of(j->srv, j->host);
    char bare[2100];
    snprintf(bare, sizeof bare, "%s@%s", j->user, j->host);
    if (ph) forget(ph, j->srv, bare, j->jid, j->node);
    if (j->rc < 0) st_error("mod_push", "%s: removing a push registration failed", bare);
    else st_info("mod_push", "%s: push disabled for %s%s%s", bare, j->jid, j->node ? " node " : "",
                 j->node ? j->node : "");
    if (j->p) {
        if (j->rc < 0) st_iq_pending_error(j->p, "internal-server-error", NULL);
        else st_iq_pending_result(j->p, NULL);
        j->p = NULL;
    }
    job_free(j);
}

/* Remove jid (+node, or every node) for user; answer p if given. */
static void start_disable(st_server *srv, const char *host, const char *user, const char *jid,
                          const char *node, st_iq_pending *p)
{
    reg_job *j = st_calloc(1, sizeof *j);
    if (!j) goto fail;
    j->srv = srv;
    snprintf(j->host, sizeof j->host, "%s", host);
    snprintf(j->user, sizeof j->user, "%s", user);
    if (!(j->jid = st_strdup(jid)) || (node && !(j->node = st_strdup(node)))) goto fail;
    j->p = p;
    if (st_storage_submit(srv->store, disable_work, disable_done, j) != 0) goto fail;
    return;
fail:
    st_warn("mod_push", "%s@%s: could not queue disabling %s", user, host, jid);
    if (j) {
        j->p = NULL;
        job_free(j);
    }
    if (p) st_iq_pending_error(p, "internal-server-error", NULL);
}

/* ---- enabling ---- */

enum { EN_OK = 0, EN_FULL = 1 };

static void count_one(void *ud, const char *key, const char *val, size_t len)
{
}

static void enable_work(void *h, void *arg)
{
    reg_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    char key[3100 + MAX_NODE + 2], *val = NULL;
    size_t len;
    snprintf(key, sizeof key, "%s\n%s", j->jid, j->node);
    int r = ops->kv_get(h, j->host, j->user, STORE, key, &val, &len);
    st_free(val);
    if (r < 0) {
        j->rc = -1;
        return;
    }
    if (r == 0) { /* a new registration: within the limit? */
        int n = ops->kv_list(h, j->host, j->user, STORE, count_one, j);
        if (n < 0) {
            j->rc = -1;
            return;
        }
        if ((size_t)n >= j->max) {
            j->rc = EN_FULL;
            return;
        }
    }
    j->rc = ops->kv_put(h, j->host, j->user, STORE, key, j->xml, j->xml_len) == 0 ? EN_OK : -1;
}

static void enable_done(void *arg)
{
    reg_job *j = arg;
    push_host *ph = state_of(j->srv, j->host);
    st_session *s = st_session_find(j->srv, j->full);
    if (j->rc == EN_FULL) {
        st_iq_pending_error(j->p, "resource-constraint", "too many push registrations");
        goto out;
    }
    if (j->rc != EN_OK) {
        st_error("mod_push", "%s: storing a push registration failed", j->full);
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        goto out;
    }
    if (ph && s && s->serial == j->serial) {
        /* the session remembers it: its absence is what pushes stand in for */
        push_sess *ps = st_map_get(&ph->sessions, s->full);
        push_reg *r = NULL;
        if (!ps) {
            if (!(ps = st_calloc(1, sizeof *ps)) || !(ps->full = st_strdup(s->full)) ||
                st_map_put(&ph->sessions, ps->full, ps) != 0) {
                if (ps) sess_free(ps);
                goto oom;
            }
            ps->serial = s->serial;
        }
        for (size_t i = 0; i < ps->n && !r; i++)
            if (strcmp(ps->regs[i].jid, j->jid) == 0 && strcmp(ps->regs[i].node, j->node) == 0)
                r = &ps->regs[i];
        if (r) { /* enabled again: the last publish-options win (§5) */
            st_stanza_unref(r->form);
            r->form = j->form ? st_stanza_ref(j->form) : NULL;
        } else {
            push_reg *nr = st_realloc(ps->regs, (ps->n + 1) * sizeof *nr);
            if (!nr) goto oom;
            ps->regs = nr;
            if (reg_copy(&ps->regs[ps->n], j->jid, j->node, j->form) != 0) goto oom;
            ps->n++;
        }
    }
    st_info("mod_push", "%s: push enabled for %s node %s", j->full, j->jid, j->node);
    st_iq_pending_result(j->p, NULL);
    goto out;
oom:
    /* stored, but this session will not push while it hibernates */
    st_warn("mod_push", "%s: out of memory while enabling push", j->full);
    st_iq_pending_error(j->p, "internal-server-error", NULL);
out:
    j->p = NULL;
    job_free(j);
}

/* The FORM_TYPE of a data form, or NULL. */
static const char *form_type(const st_node *x)
{
    for (st_node *f = st_first_elem(x); f; f = st_next_elem(f)) {
        const char *var = st_attr_get(f, "var");
        if (strcmp(f->name, "field") == 0 && var && strcmp(var, "FORM_TYPE") == 0)
            return st_child_text(f, "value", x->ns);
    }
    return NULL;
}

/* Read jid (normalised, yours to free) and node from an <enable/> or
 * <disable/>; answers the error itself and returns -1 on bad input. */
static int read_target(st_iq_ctx *c, char **jid, const char **node, int need_node)
{
    const char *j = st_attr_get(c->payload, "jid");
    st_jid pj;
    *jid = NULL;
    *node = st_attr_get(c->payload, "node");
    if (!j || !*j) {
        st_iq_error(c, "bad-request", "the push service 'jid' is missing");
        return -1;
    }
    if (st_jid_parse(&pj, j, strlen(j)) != 0) {
        st_iq_error(c, "jid-malformed", NULL);
        return -1;
    }
    *jid = st_jid_full(&pj);
    st_jid_free(&pj);
    if (!*jid) {
        st_iq_error(c, "internal-server-error", NULL);
        return -1;
    }
    if ((need_node && (!*node || !**node)) || (*node && strlen(*node) > MAX_NODE)) {
        st_iq_error(c, "bad-request", need_node && (!*node || !**node)
                                          ? "the push service 'node' is missing"
                                          : "the node name is too long");
        st_free(*jid);
        *jid = NULL;
        return -1;
    }
    return 0;
}

static st_verdict enable_iq(st_iq_ctx *c)
{
    reg_job *j = NULL;
    st_stanza *stored = NULL;
    st_buf b;
    char *jid = NULL;
    const char *node;
    st_buf_init(&b, MAX_STORED);
    if (!c->session) {
        st_iq_error(c, "not-allowed", NULL);
        goto out;
    }
    if (read_target(c, &jid, &node, 1) != 0) goto out;
    st_node *x = st_child(c->payload, "x", NS_XDATA);
    if (x) {
        const char *ft = form_type(x);
        if (!ft || strcmp(ft, PUBLISH_OPTIONS) != 0) {
            st_iq_error(c, "bad-request", "the form must be " PUBLISH_OPTIONS);
            goto out;
        }
    }
    if (!(j = st_calloc(1, sizeof *j))) goto oom;
    j->srv = c->srv;
    j->max = (size_t)st_host_opt_num(c->host, &mod_push, "max_registrations");
    j->serial = c->session->serial;
    snprintf(j->full, sizeof j->full, "%s", c->session->full);
    snprintf(j->host, sizeof j->host, "%s", c->host->name);
    snprintf(j->user, sizeof j->user, "%s", c->session->jid.node);
    if (!(j->jid = st_strdup(jid)) || !(j->node = st_strdup(node))) goto oom;
    if (x && !(j->form = st_stanza_from_node(x))) goto oom;
    /* what is stored: the request, with the normalised jid */
    if (!(stored = st_stanza_new("enable", NS_PUSH))) goto oom;
    st_attr_set(stored, "jid", jid);
    st_attr_set(stored, "node", node);
    if (x) st_add_copy(stored, x);
    if (!st_stanza_ok(stored)) goto oom;
    if (st_serialize(stored->root, "", &b) != 0) {
        st_iq_error(c, "not-acceptable", "the publish-options are too large");
        goto out;
    }
    if (!(j->xml = st_buf_steal(&b, &j->xml_len))) goto oom;
    if (!(j->p = st_iq_defer(c))) goto oom;
    if (st_storage_submit(c->srv->store, enable_work, enable_done, j) != 0) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        j->p = NULL;
        goto out;
    }
    j = NULL;
    goto out;
oom:
    st_iq_error(c, "internal-server-error", NULL);
out:
    if (j) job_free(j);
    st_stanza_unref(stored);
    st_buf_free(&b);
    st_free(jid);
    return ST_HANDLED;
}

static st_verdict disable_iq(st_iq_ctx *c)
{
    char *jid = NULL;
    const char *node;
    if (!c->session) {
        st_iq_error(c, "not-allowed", NULL);
        return ST_HANDLED;
    }
    if (read_target(c, &jid, &node, 0) != 0) return ST_HANDLED;
    st_iq_pending *p = st_iq_defer(c);
    if (!p) st_iq_error(c, "internal-server-error", NULL);
    else start_disable(c->srv, c->host->name, c->session->jid.node, jid, node, p);
    st_free(jid);
    return ST_HANDLED;
}

/* ---- hooks ---- */

/* Chat and normal messages with something to read deserve a push. */
static const char *push_body(const st_stanza *st)
{
    const char *type = st_get(st, "type");
    if (type && strcmp(type, "chat") != 0 && strcmp(type, "normal") != 0) return NULL;
    const char *body = st_child_text(st->root, "body", ST_NS_CLIENT);
    return body && *body ? body : NULL;
}

typedef struct seen_regs {
    const push_reg *r[MAX_PER_MESSAGE];
    size_t n;
} seen_regs;

/* If s would miss the message (hibernated) and enabled push, push for it. */
static void for_session(push_host *ph, st_session *s, const char *bare, const char *sender,
                        const char *body, seen_regs *seen)
{
    push_sess *ps = st_map_get(&ph->sessions, s->full);
    if (!ps || ps->serial != s->serial) return;
    if (s->conn || !s->sm) { /* live (or closing): it gets the message itself */
        ps->pushed = 0;
        return;
    }
    if (ps->n) ps->pushed++; /* this device hears of it (through one of its registrations) */
    for (size_t i = 0; i < ps->n && seen->n < MAX_PER_MESSAGE; i++) {
        const push_reg *r = &ps->regs[i];
        int dup = 0;
        for (size_t k = 0; k < seen->n && !dup; k++)
            dup = strcmp(seen->r[k]->jid, r->jid) == 0 && strcmp(seen->r[k]->node, r->node) == 0;
        if (dup) continue;
        seen->r[seen->n++] = r;
        notify(ph, bare, r, sender, body, s);
    }
}

static st_verdict message_in(st_server *srv, st_host *h, st_stanza *st, const st_jid *from,
                             const st_jid *to, int navailable)
{
    push_host *ph = st_host_mod_state(h, &mod_push);
    const char *body = push_body(st);
    char bare[2100], sender[3100] = "";
    seen_regs seen = {.n = 0};
    if (!ph || !body || !to->node || st_jid_format(to, 0, bare, sizeof bare) < 0) return ST_PASS;
    if (from && st_jid_format(from, 1, sender, sizeof sender) < 0) sender[0] = '\0';
    if (navailable == 0) {
        /* offline: mod_offline (below us) stores it; every registration hears */
        push_quiet *q = st_map_get(&ph->quiet, bare);
        if (!q) {
            offline_push(ph, to->node, sender, body);
        } else if (--q->left == 0) { /* pushed already, while it hibernated */
            st_map_del(&ph->quiet, q->bare);
            quiet_free(q);
        }
        return ST_PASS;
    }
    if (to->resource) {
        char full[3100];
        st_session *s = st_jid_format(to, 1, full, sizeof full) >= 0 ? st_session_find(srv, full) : NULL;
        if (s) for_session(ph, s, bare, sender, body, &seen);
        return ST_PASS;
    }
    /* to the bare JID: the sessions the router delivers to (router.c policy) */
    st_user *u = st_user_find(srv, bare);
    int best = -1; /* chat and normal (push_body) go to the best priority only */
    for (st_session *x = u ? u->sessions : NULL; x; x = x->next_of_user)
        if (x->available && x->priority >= 0 && x->priority > best) best = x->priority;
    for (st_session *x = u ? u->sessions : NULL; x; x = x->next_of_user)
        if (x->available && x->priority >= 0 && x->priority == best)
            for_session(ph, x, bare, sender, body, &seen);
    return ST_PASS;
}

/* How many messages in the session's unacknowledged queue stream
 * management will route again that deserve a push (sm.c redeliver()). */
static unsigned pushable_in_queue(const st_session *s)
{
    const st_sm *sm = s->sm;
    unsigned n = 0;
    for (size_t i = 0; i < sm->qlen; i++) {
        st_stanza *st = sm->q[(sm->qhead + i) % sm->qcap].st;
        const char *from = st_get(st, "from");
        if (strcmp(st_name(st), "message") != 0 || !push_body(st)) continue;
        if (from && strcmp(from, s->bare) == 0) continue; /* own copies are not redelivered */
        n++;
    }
    return n;
}

static void session_end(st_session *s)
{
    push_host *ph = st_host_mod_state(s->host, &mod_push);
    push_sess *ps = ph ? st_map_get(&ph->sessions, s->full) : NULL;
    if (!ps || ps->serial != s->serial) return;
    unsigned n = !s->conn && s->sm && ps->pushed ? pushable_in_queue(s) : 0;
    if (n && n <= ps->pushed && !st_map_get(&ph->quiet, s->bare)) {
        push_quiet *q = st_calloc(1, sizeof *q);
        if (q && (q->bare = st_strdup(s->bare)) && st_map_put(&ph->quiet, q->bare, q) == 0) {
            q->ph = ph;
            q->left = n;
            st_timer_init(&q->expiry, quiet_over, q);
            st_timer_set(s->srv->loop, &q->expiry, QUIET_MS);
            st_debug("mod_push", "%s: %u redelivered messages were pushed already", s->full, n);
        } else if (q) {
            st_free(q->bare);
            st_free(q);
        }
    }
    st_map_del(&ph->sessions, s->full);
    sess_free(ps);
}

static const char *const features[] = {NS_PUSH, NULL};

static const st_iq_handler iqs[] = {
    {NS_PUSH, "enable", ST_IQ_SET, ST_TO_ACCOUNT, enable_iq},
    {NS_PUSH, "disable", ST_IQ_SET, ST_TO_ACCOUNT, disable_iq},
    {0},
};

static const st_module_opt opts[] = {
    {"include_body", ST_OPT_BOOL, "false", 0, 0,
     "send the message body to the app server (privacy: it passes through third parties)"},
    {"min_interval", ST_OPT_DURATION, "5s", 0, 86400,
     "least time between two notifications to one registration; messages meanwhile are "
     "summed up in one notification at its end"},
    {"max_registrations", ST_OPT_INT, "16", 1, 1000, "push registrations one account may have"},
    {0},
};

static const st_hooks hooks = {
    .message_in = message_in,
};

const st_module mod_push = {
    .name = "push",
    .spec = "XEP-0357",
    .title = "Push Notifications",
    .features = features,
    .iqs = iqs,
    .opts = opts,
    .host_init = push_init,
    .host_fini = push_fini,
    .session_end = session_end,
    .hooks = &hooks,
    .priority = 96, /* sees offline messages before mod_offline (95) takes them */
};
