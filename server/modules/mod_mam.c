/* mod_mam.c - XEP-0313 Message Archive Management (urn:xmpp:mam:2 and
 * #extended) with XEP-0059 paging: every local user's messages, sent and
 * received, kept in a per-user archive the user's clients can query.
 *
 * Archiving (two hooks, priority 96: before mod_offline (95) and carbons (85))
 *
 *   message_in   a message for a local user (delivered or stored offline):
 *                it gets its XEP-0359 <stanza-id by='user@host'/> here, and
 *                that id is the archive id. mod_offline, next in line, keeps
 *                an id we minted (stanza_id.h) instead of adding its own, so
 *                the live message, the offline copy, the carbon copies and
 *                the archive all carry the same id.
 *   message_out  a message a user sends: archived in the sender's archive
 *                under an id of its own. XEP-0313 §3 wants that id in the
 *                <sent/> carbons of the sender's other resources, never on
 *                the message the contact gets: the id goes on the stanza
 *                here, mod_carbons copies it into <sent/>, and message_in on
 *                the recipient's side removes it before delivery.
 *                TODO: when s2s arrives, the outbound path must remove it
 *                too (or mod_carbons should ask us for the id).
 *
 * What is archived (XEP-0313 §6.1.1): normal and chat messages with a body,
 * a XEP-0334 <store/> hint, or a payload that is part of a conversation
 * (encryption, invitations, markers, retractions); never groupchat, headline
 * or errors, nor messages with <no-store/> or <no-permanent-store/>. A
 * message to one's own account is archived once, as received. A message for
 * an offline user is archived only if offline storage will take it: the
 * archive job checks, just before mod_offline's store job runs on the same
 * storage thread, that the account exists (the foreign key) and that the
 * offline store has room, since the archive should hold only what was
 * accepted (XEP-0313 §6.1).
 *
 * Exactly once: stream management routes a dead session's unacknowledged
 * messages again (sm.c). They carry the stanza-id we minted; message_in sees
 * it (the MAC proves it is ours, so it needs no storage or memory) and does
 * not archive again. The UNIQUE (user, id) of the table is the second net.
 *
 * Writes never block the loop: entries go into a per-host batch; a batch is
 * submitted at once when none is on the storage thread, otherwise the next
 * batch collects what arrives meanwhile and goes when the first is done, as
 * one transaction (a group commit). Anything that reads the archive (a
 * query, the purge) submits the collected batch first, so a client always
 * finds what was routed before its query.
 *
 * Preferences (§7) are stored in the kv store "mam-prefs" and applied on the
 * storage thread when the batch runs: never-list, then always-list, then the
 * default; 'roster' reads the user's roster row from storage there. That row
 * is the roster cache's (roster.c writes through, and the storage thread
 * runs jobs in order), and reading it there needs no user object and no
 * roster load for an offline recipient, so nothing waits on the loop. The
 * price: the stanza-id is attached before the preferences are known, so a
 * message the preferences exclude still carries an id that names nothing in
 * the archive (a query for it answers item-not-found).
 *
 * Retention: mam.retention (default 0 = keep forever); when set, a timer
 * deletes older messages every retention/2 (at most hourly, at least every
 * second). */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "server/log.h"
#include "server/modules/stanza_id.h"
#include "server/roster.h"
#include "server/server.h"
#include "server/storage/archive.h"
#include "starling/alloc.h"
#include "starling/xmlstream.h"

#define NS_MAM "urn:xmpp:mam:2"
#define NS_MAM_EXT "urn:xmpp:mam:2#extended"
#define NS_RSM "http://jabber.org/protocol/rsm"
#define NS_XDATA "jabber:x:data"
#define NS_FORWARD "urn:xmpp:forward:0"
#define NS_DELAY "urn:xmpp:delay"
#define NS_HINTS "urn:xmpp:hints"
#define NS_CARBONS "urn:xmpp:carbons:2"

#define PREFS_STORE "mam-prefs"
#define PREFS_KEY "prefs"
#define PAGE_DEFAULT 50  /* a query without <max/> */
#define PAGE_MAX 250     /* what one query may return, whatever it asks */
#define IDS_MAX PAGE_MAX /* ids in one 'ids' field */
#define PREFS_JIDS_MAX 1000
#define BATCH_MAX 512    /* entries in one transaction */

extern const st_module mod_mam;

/* ---- per host: the batch being collected, the purge timer ---- */

typedef struct arch_item {
    st_mam_entry e;    /* strings point into the same allocation */
    int offline;       /* for an offline recipient: archive only if mod_offline has room */
    size_t offline_max;
} arch_item;

typedef struct mam_host {
    st_host *h;
    arch_item **items; /* collected, not yet submitted */
    size_t n, cap;
    int in_flight;     /* batches on the storage thread */
    long long last_ts; /* keeps timestamps strictly increasing (archive order = time order) */
    st_timer purge;
    int purging;
} mam_host;

typedef struct batch_job {
    st_server *srv;
    char host[1024];
    arch_item **items;
    size_t n;
    int *result;
    int failed;
} batch_job;

static mam_host *state_of(st_server *srv, const char *name)
{
    st_host *h = st_server_host(srv, name);
    return h ? st_host_mod_state(h, &mod_mam) : NULL;
}

static void items_free(arch_item **items, size_t n)
{
    for (size_t i = 0; i < n; i++) st_free(items[i]);
    st_free(items);
}

/* ---- preferences on the storage thread ---- */

/* Stored form, one line each: "default always|never|roster", then
 * "always JID" / "never JID" (bare, normalised). JIDs hold no newline. */
enum { PREF_NEVER = 0, PREF_ALWAYS = 1, PREF_ROSTER = 2 };

static int pref_default(const char *word, size_t n)
{
    if (n == 5 && memcmp(word, "never", 5) == 0) return PREF_NEVER;
    if (n == 6 && memcmp(word, "roster", 6) == 0) return PREF_ROSTER;
    return PREF_ALWAYS;
}

/* What the preferences say for with: PREF_* (never wins over always). */
static int prefs_decide(const char *txt, size_t len, const char *with)
{
    int def = PREF_ALWAYS, always = 0;
    size_t wl = strlen(with);
    const char *p = txt, *end = txt + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *sp = memchr(p, ' ', (size_t)(le - p));
        if (sp) {
            size_t kl = (size_t)(sp - p), vl = (size_t)(le - sp - 1);
            if (kl == 7 && memcmp(p, "default", 7) == 0) def = pref_default(sp + 1, vl);
            else if (vl == wl && memcmp(sp + 1, with, wl) == 0) {
                if (kl == 5 && memcmp(p, "never", 5) == 0) return PREF_NEVER;
                if (kl == 6 && memcmp(p, "always", 6) == 0) always = 1;
            }
        }
        p = le + 1;
    }
    return always ? PREF_ALWAYS : def;
}

/* Should the archive keep e? Runs on the storage thread. */
static int should_archive(void *h, const st_store_ops *ops, const arch_item *it)
{
    char *txt = NULL;
    size_t len = 0;
    int keep = 1;
    int r = ops->kv_get(h, it->e.host, it->e.user, PREFS_STORE, PREFS_KEY, &txt, &len);
    if (r == 1) {
        int d = prefs_decide(txt, len, it->e.with_bare);
        if (d == PREF_NEVER) keep = 0;
        else if (d == PREF_ROSTER) {
            st_roster_item ri;
            memset(&ri, 0, sizeof ri);
            int f = ops->roster_get_item(h, it->e.host, it->e.user, it->e.with_bare, &ri);
            keep = f == 1 && st_roster_visible(&ri);
            if (f == 1) st_roster_item_free(&ri);
        }
    }
    st_free(txt);
    if (keep && it->offline && it->offline_max > 0) {
        /* mod_offline's job for this message runs right after ours */
        int n = ops->offline_count(h, it->e.host, it->e.user);
        keep = n >= 0 && (size_t)n < it->offline_max;
    }
    return keep;
}

/* ---- the batch: collect, submit, group commit ---- */

/* A grouped job (see flush): it may run a second time after a failed
 * group, so every result is overwritten before anything can fail. */
static void batch_work(void *h, void *arg)
{
    batch_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    j->failed = 0;
    for (size_t i = 0; i < j->n; i++)
        j->result[i] = ST_MAM_FAILED;
    st_mam_entry *keep = st_calloc(j->n, sizeof *keep);
    size_t *map = st_calloc(j->n, sizeof *map);
    int *res = st_calloc(j->n, sizeof *res);
    size_t k = 0;
    if (!keep || !map || !res) {
        j->failed = 1;
        goto out;
    }
    for (size_t i = 0; i < j->n; i++) {
        j->result[i] = -2; /* not archived: preferences or a full offline store */
        if (should_archive(h, ops, j->items[i])) {
            keep[k] = j->items[i]->e;
            map[k++] = i;
        }
    }
    if (ops->mam_append(h, keep, k, res) < 0) j->failed = 1;
    for (size_t i = 0; i < k; i++) j->result[map[i]] = res[i];
out:
    st_free(keep);
    st_free(map);
    st_free(res);
}

static void flush(mam_host *m);

static void batch_done(void *arg)
{
    batch_job *j = arg;
    mam_host *m = state_of(j->srv, j->host);
    size_t stored = 0;
    for (size_t i = 0; i < j->n; i++) {
        const st_mam_entry *e = &j->items[i]->e;
        if (j->result[i] == ST_MAM_STORED) stored++;
        else if (j->result[i] == ST_MAM_FAILED || j->failed)
            st_error("mod_mam", "%s@%s: could not archive message %s", e->user, e->host, e->id);
    }
    st_debug("mod_mam", "%s: archived %zu of %zu messages", j->host, stored, j->n);
    items_free(j->items, j->n);
    st_free(j->result);
    st_free(j);
    if (m) {
        m->in_flight--;
        if (m->n && !m->in_flight) flush(m); /* what arrived meanwhile: the next group */
    }
}

/* Submit what was collected as one job (at most BATCH_MAX per job). */
static void flush(mam_host *m)
{
    st_server *srv = m->h->srv;
    while (m->n) {
        size_t take = m->n < BATCH_MAX ? m->n : BATCH_MAX;
        batch_job *j = st_calloc(1, sizeof *j);
        arch_item **items = st_malloc(take * sizeof *items);
        int *res = st_calloc(take, sizeof *res);
        if (!j || !items || !res) {
            st_free(j);
            st_free(items);
            st_free(res);
            st_warn("mod_mam", "%s: out of memory while archiving; will retry", m->h->name);
            return;
        }
        memcpy(items, m->items, take * sizeof *items);
        j->srv = srv;
        snprintf(j->host, sizeof j->host, "%s", m->h->name);
        j->items = items;
        j->n = take;
        j->result = res;
        /* Grouped: batch_work reads only items and n (the entries are not
         * touched) and overwrites result and failed first thing, so a
         * re-run after a failed group answers as a lone run; its batch then
         * also shares a commit with the offline messages and barriers next
         * to it. */
        if (st_storage_submit_grouped(srv->store, batch_work, batch_done, j) != 0) {
            st_free(j);
            st_free(items);
            st_free(res);
            st_warn("mod_mam", "%s: could not queue archiving; will retry", m->h->name);
            return;
        }
        memmove(m->items, m->items + take, (m->n - take) * sizeof *m->items);
        m->n -= take;
        m->in_flight++;
    }
}

/* Collect it (m takes it) and submit unless a batch is under way; now = 1
 * submits even then (to stay ahead of a job that must come after it). */
static int collect(mam_host *m, arch_item *it, int now)
{
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 64;
        arch_item **ni = st_realloc(m->items, cap * sizeof *ni);
        if (!ni) return -1;
        m->items = ni;
        m->cap = cap;
    }
    m->items[m->n++] = it;
    if (now || !m->in_flight || m->h->srv->stopping) flush(m);
    return 0;
}

/* ---- what to archive ---- */

static int is_type(const char *t, const char *want)
{
    return t && strcmp(t, want) == 0;
}

/* Payloads that make a body-less message part of the conversation. */
static const struct {
    const char *name, *ns;
} keep_payloads[] = {
    {"encryption", "urn:xmpp:eme:0"},
    {"encrypted", "eu.siacs.conversations.axolotl"},
    {"encrypted", "urn:xmpp:omemo:2"},
    {"openpgp", "urn:xmpp:openpgp:0"},
    {"x", "jabber:x:encrypted"},
    {"x", "jabber:x:conference"},
    {"displayed", "urn:xmpp:chat-markers:0"},
    {"retract", "urn:xmpp:message-retract:1"},
};

static int archivable(const st_stanza *st)
{
    const char *type = st_get(st, "type");
    const st_node *r = st->root;
    if (type && !is_type(type, "normal") && !is_type(type, "chat")) return 0;
    if (st_child(r, "no-store", NS_HINTS) || st_child(r, "no-permanent-store", NS_HINTS)) return 0;
    /* copies and results are never conversation (a forged one included) */
    if (st_child(r, "sent", NS_CARBONS) || st_child(r, "received", NS_CARBONS) ||
        st_child(r, "result", NS_MAM))
        return 0;
    if (st_child(r, "body", ST_NS_CLIENT) || st_child(r, "store", NS_HINTS)) return 1;
    for (size_t i = 0; i < sizeof keep_payloads / sizeof keep_payloads[0]; i++)
        if (st_child(r, keep_payloads[i].name, keep_payloads[i].ns)) return 1;
    const st_node *x = st_child(r, "x", "http://jabber.org/protocol/muc#user");
    return x && st_child(x, "invite", NULL);
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One allocation for the entry and its strings. NULL on OOM or overflow. */
static arch_item *item_new(mam_host *m, const char *user, const char *id, const st_jid *with,
                           int outgoing, const char *xml, size_t len)
{
    char wb[2100];
    const char *res = with->resource ? with->resource : "";
    if (st_jid_format(with, 0, wb, sizeof wb) < 0) return NULL;
    size_t lh = strlen(m->h->name) + 1, lu = strlen(user) + 1, li = strlen(id) + 1;
    size_t lw = strlen(wb) + 1, lr = strlen(res) + 1;
    if (len > SIZE_MAX / 2) return NULL;
    arch_item *it = st_malloc(sizeof *it + lh + lu + li + lw + lr + len + 1);
    if (!it) return NULL;
    char *p = (char *)(it + 1);
    memset(it, 0, sizeof *it);
#define PUT(field, s, n)                                                                           \
    do {                                                                                           \
        memcpy(p, s, n);                                                                           \
        it->e.field = p;                                                                           \
        p += n;                                                                                    \
    } while (0)
    PUT(host, m->h->name, lh);
    PUT(user, user, lu);
    PUT(id, id, li);
    PUT(with_bare, wb, lw);
    PUT(with_res, res, lr);
    memcpy(p, xml, len);
    p[len] = '\0';
    it->e.xml = p;
#undef PUT
    it->e.len = len;
    it->e.outgoing = outgoing;
    long long ts = now_us();
    if (ts <= m->last_ts) ts = m->last_ts + 1;
    it->e.ts = m->last_ts = ts;
    return it;
}

/* Serialise st and queue it for the user's archive. */
static void archive(st_server *srv, mam_host *m, st_stanza *st, const char *user, const char *id,
                    const st_jid *with, int outgoing, int offline, size_t offline_max)
{
    st_buf b;
    arch_item *it = NULL;
    st_buf_init(&b, 2 * srv->cfg->max_stanza_bytes + 4096);
    /* parent ns "": the stored XML declares jabber:client and parses back alone */
    if (st_serialize(st->root, "", &b) == 0) {
        size_t len;
        char *xml = st_buf_steal(&b, &len);
        if (xml) it = item_new(m, user, id, with, outgoing, xml, len);
        st_free(xml);
    }
    st_buf_free(&b);
    if (it) {
        it->offline = offline;
        it->offline_max = offline_max;
    }
    if (!it || collect(m, it, offline) != 0) {
        st_free(it);
        st_warn("mod_mam", "%s@%s: out of memory, message %s not archived", user, m->h->name, id);
    }
}

/* Remove <stanza-id/>s by the sender's own bare JID: the id we gave the
 * sender's archive copy is for the sender's carbons, not for the contact
 * (XEP-0313 §3). */
static void strip_sender_ids(st_stanza *st, const st_jid *from)
{
    st_node *n = st_first_elem(st->root);
    while (n) {
        st_node *next = st_next_elem(n);
        const char *by = st_attr_get(n, "by");
        st_jid bj;
        if (strcmp(n->name, "stanza-id") == 0 && strcmp(n->ns, ST_NS_SID) == 0 && by &&
            st_jid_parse(&bj, by, strlen(by)) == 0) {
            if (!bj.resource && st_jid_equal(&bj, from, 0)) st_node_remove(st, n);
            st_jid_free(&bj);
        }
        n = next;
    }
}

static st_verdict message_in(st_server *srv, st_host *h, st_stanza *st, const st_jid *from,
                             const st_jid *to, int navailable)
{
    mam_host *m = st_host_mod_state(h, &mod_mam);
    char bare[2100], id[ST_SID_MAX];
    st_jid tb = *to;
    tb.resource = NULL;
    if (!m || !to->node || !from || is_type(st_get(st, "type"), "error")) return ST_PASS;
    if (st_jid_format(&tb, 0, bare, sizeof bare) < 0) return ST_PASS;
    int shared = st->refs > 1; /* a shared stanza must not change (module.h) */
    if (!shared && from->node && st_server_host(srv, from->domain) &&
        !(strcmp(from->node, to->node) == 0 && strcmp(from->domain, to->domain) == 0))
        strip_sender_ids(st, from);
    if (!shared && st_sid_clean(st, bare, 0, id)) {
        st_debug("mod_mam", "%s: message %s routed again, already archived", bare, id);
        return ST_PASS;
    }
    if (!archivable(st)) return ST_PASS;
    int offline = navailable == 0;
    size_t offline_max = 0;
    if (offline) {
        /* the router bounces what no module stores: not accepted, not archived */
        const st_module *off = st_module_find("offline");
        if (!off || !st_host_has(h, "offline")) return ST_PASS;
        offline_max = (size_t)st_host_opt_num(h, off, "max_messages");
    }
    /* A shared stanza keeps no id of ours: the archive still gets one (and
     * mod_offline, which skips shared stanzas too, stores it without). */
    if (st_sid_make(st, bare, 0, id) != 0) {
        st_warn("mod_mam", "%s: no randomness for a stanza id; message not archived", bare);
        return ST_PASS;
    }
    if (!shared && st_sid_attach(st, bare, id) != 0) return ST_PASS;
    archive(srv, m, st, to->node, id, from, 0, offline, offline_max);
    return ST_PASS;
}

static st_verdict message_out(st_session *s, st_stanza *st, const st_jid *to)
{
    mam_host *m = st_host_mod_state(s->host, &mod_mam);
    char id[ST_SID_MAX];
    /* to our own account: archived once, as received (message_in) */
    if (!m || !to || !to->node || st->refs > 1) return ST_PASS;
    if (strcmp(to->node, s->jid.node) == 0 && strcmp(to->domain, s->jid.domain) == 0)
        return ST_PASS;
    if (!archivable(st)) return ST_PASS;
    strip_sender_ids(st, &s->jid); /* a client may not name its archive ids either */
    if (st_sid_make(st, s->bare, 1, id) != 0 || st_sid_attach(st, s->bare, id) != 0)
        return ST_PASS;
    archive(s->srv, m, st, s->jid.node, id, to, 1, 0, 0);
    return ST_PASS;
}

/* ---- timestamps (XEP-0082) ---- */

static void format_stamp(long long us, char *out, size_t outsz)
{
    time_t secs = (time_t)(us / 1000000);
    struct tm tm;
    char base[32];
    gmtime_r(&secs, &tm);
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, outsz, "%s.%06lldZ", base, us % 1000000);
}

/* CCYY-MM-DDThh:mm:ss[.s+](Z|+hh:mm|-hh:mm) -> microseconds. 0 or -1. */
static int parse_stamp(const char *s, long long *out)
{
    int Y, M, D, h, mi, sec, n = 0;
    long long frac = 0, scale = 1000000;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &Y, &M, &D, &h, &mi, &sec, &n) != 6 || n != 19)
        return -1;
    if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || mi > 59 || sec > 60 || Y < 1970)
        return -1;
    const char *p = s + n;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p)) return -1;
        for (; isdigit((unsigned char)*p); p++)
            if (scale > 1) {
                scale /= 10;
                frac += (*p - '0') * scale;
            }
    }
    long long off = 0;
    if (*p == 'Z') p++;
    else if (*p == '+' || *p == '-') {
        int oh, om, k = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &k) != 2 || k != 5 || oh > 23 || om > 59) return -1;
        off = (oh * 3600LL + om * 60) * (*p == '-' ? -1 : 1);
        p += 6;
    } else
        return -1;
    if (*p) return -1;
    struct tm tm = {.tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D,
                    .tm_hour = h, .tm_min = mi, .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1) return -1;
    *out = ((long long)t - off) * 1000000 + frac;
    return 0;
}

/* ---- queries (§4) ---- */

typedef struct query_job {
    st_server *srv;
    st_iq_pending *p;
    char host[1024], user[1024];
    char full[3100]; /* the requesting session */
    char bare[2100];
    char *queryid;   /* owned, or NULL */
    int flip;
    int metadata;    /* a §5 metadata request instead of a query */
    st_mam_query q;
    char *strs[6];   /* owned copies q points at */
    char **ids;      /* owned */
    size_t nids;
    st_mam_page page, last; /* last: the metadata's end */
    int rc;
} query_job;

static void query_job_free(query_job *j)
{
    if (!j) return;
    for (size_t i = 0; i < sizeof j->strs / sizeof j->strs[0]; i++) st_free(j->strs[i]);
    for (size_t i = 0; i < j->nids; i++) st_free(j->ids[i]);
    st_free(j->ids);
    st_free(j->queryid);
    st_mam_page_free(&j->page);
    st_mam_page_free(&j->last);
    st_free(j);
}

/* Keep a copy of s in j (slot k); NULL on OOM. */
static const char *keep_str(query_job *j, int k, const char *s)
{
    st_free(j->strs[k]);
    return j->strs[k] = st_strdup(s);
}

static void query_work(void *h, void *arg)
{
    query_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    if (!j->metadata) {
        j->rc = ops->mam_query(h, j->host, j->user, &j->q, &j->page);
        return;
    }
    st_mam_query q;
    st_mam_query_init(&q);
    q.max = 1;
    j->rc = ops->mam_query(h, j->host, j->user, &q, &j->page);
    q.rsm_before_set = 1;
    if (j->rc == 0) j->rc = ops->mam_query(h, j->host, j->user, &q, &j->last);
}

/* <message to=full from=bare><result queryid id><forwarded><delay/><message/>... */
static st_stanza *result_message(query_job *j, const st_mam_row *row, const char *mid)
{
    const char *err = NULL;
    char stamp[48];
    st_stanza *orig = st_xml_parse_element(row->xml, row->len, &err);
    st_stanza *m = NULL;
    if (!orig) {
        st_error("mod_mam", "%s: damaged archived message %s (%s), skipped", j->bare, row->id,
                 err ? err : "?");
        return NULL;
    }
    format_stamp(row->ts, stamp, sizeof stamp);
    if ((m = st_stanza_new("message", ST_NS_CLIENT))) {
        st_attr_set(m, "to", j->full);
        st_attr_set(m, "from", j->bare);
        st_attr_set(m, "id", mid);
        st_tag(m, "result", NS_MAM);
        if (j->queryid) st_attr_set(m, "queryid", j->queryid);
        st_attr_set(m, "id", row->id);
        st_tag(m, "forwarded", NS_FORWARD);
        st_tag(m, "delay", NS_DELAY);
        st_attr_set(m, "stamp", stamp);
        st_up(m);
        st_add_copy(m, orig->root);
        if (!st_stanza_ok(m)) {
            st_stanza_unref(m);
            m = NULL;
        }
    }
    st_stanza_unref(orig);
    return m;
}

static void metadata_reply(query_job *j)
{
    st_stanza *r = st_iq_reply(st_iq_pending_iq(j->p));
    char stamp[48];
    if (!r) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        return;
    }
    st_tag(r, "metadata", NS_MAM);
    if (j->page.n && j->last.n) {
        format_stamp(j->page.rows[0].ts, stamp, sizeof stamp);
        st_tag(r, "start", NULL);
        st_attr_set(r, "id", j->page.rows[0].id);
        st_attr_set(r, "timestamp", stamp);
        st_up(r);
        format_stamp(j->last.rows[0].ts, stamp, sizeof stamp);
        st_tag(r, "end", NULL);
        st_attr_set(r, "id", j->last.rows[0].id);
        st_attr_set(r, "timestamp", stamp);
        st_up(r);
    }
    if (st_stanza_ok(r)) st_iq_pending_result(j->p, r);
    else st_iq_pending_error(j->p, "internal-server-error", NULL);
    st_stanza_unref(r);
}

static void query_done(void *arg)
{
    query_job *j = arg;
    st_stanza *r = NULL;
    if (j->rc == 1) {
        st_iq_pending_error(j->p, "item-not-found", "no such message in the archive");
        goto out;
    }
    if (j->rc != 0) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        goto out;
    }
    if (j->metadata) {
        metadata_reply(j);
        goto out;
    }
    /* The results go straight to the session that asked (not through the
     * router: they are not messages for the hooks to archive or copy). */
    st_session *s = st_session_find(j->srv, j->full);
    for (size_t k = 0; s && k < j->page.n; k++) {
        size_t i = j->flip ? j->page.n - 1 - k : k;
        char mid[64];
        st_server_make_id(j->srv, mid, sizeof mid);
        st_stanza *m = result_message(j, &j->page.rows[i], mid);
        if (m) st_session_send(s, m);
        st_stanza_unref(m);
    }
    if (!(r = st_iq_reply(st_iq_pending_iq(j->p)))) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        goto out;
    }
    char num[32];
    st_tag(r, "fin", NS_MAM);
    st_attr_set(r, "complete", j->page.complete ? "true" : "false");
    st_tag(r, "set", NS_RSM);
    if (j->page.n) {
        st_tag(r, "first", NULL);
        snprintf(num, sizeof num, "%lld", j->page.first_index);
        st_attr_set(r, "index", num);
        st_text(r, j->page.rows[0].id);
        st_up(r);
        st_text_tag(r, "last", j->page.rows[j->page.n - 1].id);
    }
    snprintf(num, sizeof num, "%lld", j->page.count);
    st_text_tag(r, "count", num);
    if (st_stanza_ok(r)) st_iq_pending_result(j->p, r);
    else st_iq_pending_error(j->p, "internal-server-error", NULL);
out:
    st_stanza_unref(r);
    query_job_free(j);
}

/* The values of a data form field (text children of <value/>), in order. */
static const char *field_value(const st_node *f)
{
    return st_child_text(f, "value", NS_XDATA);
}

/* Read the form into j; NULL, or the error condition and its text. */
static const char *read_form(query_job *j, const st_node *x, const char **text)
{
    for (const st_node *f = st_first_elem(x); f; f = st_next_elem(f)) {
        if (strcmp(f->name, "field") != 0 || strcmp(f->ns, NS_XDATA) != 0) continue;
        const char *var = st_attr_get(f, "var"), *v = field_value(f);
        if (!var) continue;
        if (strcmp(var, "FORM_TYPE") == 0) {
            if (!v || strcmp(v, NS_MAM) != 0) {
                *text = "FORM_TYPE must be " NS_MAM;
                return "bad-request";
            }
        } else if (strcmp(var, "with") == 0) {
            st_jid w;
            char b[2100];
            if (!v || st_jid_parse(&w, v, strlen(v)) != 0) {
                *text = "'with' is not a JID";
                return "bad-request";
            }
            int ok = st_jid_format(&w, 0, b, sizeof b) >= 0 && keep_str(j, 0, b) &&
                     (!w.resource || keep_str(j, 1, w.resource));
            j->q.with_bare = j->strs[0];
            j->q.with_res = w.resource ? j->strs[1] : NULL;
            st_jid_free(&w);
            if (!ok) return "internal-server-error";
        } else if (strcmp(var, "start") == 0 || strcmp(var, "end") == 0) {
            long long t;
            if (parse_stamp(v, &t) != 0) {
                *text = "timestamps are XEP-0082 DateTime";
                return "bad-request";
            }
            if (var[0] == 's') j->q.start = t;
            else j->q.end = t;
        } else if (strcmp(var, "after-id") == 0 || strcmp(var, "before-id") == 0) {
            if (!v) continue;
            int k = var[0] == 'a' ? 2 : 3;
            if (!keep_str(j, k, v)) return "internal-server-error";
            if (k == 2) j->q.after_id = j->strs[2];
            else j->q.before_id = j->strs[3];
        } else if (strcmp(var, "ids") == 0) {
            for (const st_node *val = st_first_elem(f); val; val = st_next_elem(val)) {
                if (strcmp(val->name, "value") != 0) continue;
                if (j->nids == IDS_MAX) {
                    *text = "too many ids in one query";
                    return "policy-violation";
                }
                if (!j->ids && !(j->ids = st_calloc(IDS_MAX, sizeof *j->ids)))
                    return "internal-server-error";
                if (!(j->ids[j->nids] = st_strdup(st_node_text(val)))) return "internal-server-error";
                j->nids++;
            }
            j->q.ids = (const char *const *)j->ids;
            j->q.nids = j->nids;
        } else {
            *text = "unknown field";
            return "feature-not-implemented"; /* XEP-0313 §4.1.1 */
        }
    }
    return NULL;
}

static const char *read_rsm(query_job *j, const st_node *set, const char **text)
{
    const st_node *n;
    j->q.max = PAGE_DEFAULT;
    if (!set) return NULL;
    if ((n = st_child(set, "max", NS_RSM))) {
        char *end;
        const char *t = st_node_text(n);
        long long v = strtoll(t, &end, 10);
        if (!*t || *end || v < 0) {
            *text = "<max/> is a non-negative number";
            return "bad-request";
        }
        j->q.max = v > PAGE_MAX ? PAGE_MAX : (size_t)v;
    }
    if ((n = st_child(set, "after", NS_RSM))) {
        if (!*st_node_text(n)) {
            *text = "<after/> needs an id";
            return "bad-request";
        }
        if (!(j->q.rsm_after = keep_str(j, 4, st_node_text(n)))) return "internal-server-error";
    }
    if ((n = st_child(set, "before", NS_RSM))) {
        j->q.rsm_before_set = 1;
        const char *t = st_node_text(n);
        if (*t && !(j->q.rsm_before = keep_str(j, 5, t))) return "internal-server-error";
    }
    if ((n = st_child(set, "index", NS_RSM))) {
        char *end;
        const char *t = st_node_text(n);
        long long v = strtoll(t, &end, 10);
        if (!*t || *end || v < 0) {
            *text = "<index/> is a non-negative number";
            return "bad-request";
        }
        j->q.rsm_index = v;
    }
    return NULL;
}

static query_job *job_new(st_iq_ctx *c)
{
    query_job *j = st_calloc(1, sizeof *j);
    if (!j) return NULL;
    j->srv = c->srv;
    st_mam_query_init(&j->q);
    snprintf(j->host, sizeof j->host, "%s", c->host->name);
    snprintf(j->user, sizeof j->user, "%s", c->from->node);
    snprintf(j->full, sizeof j->full, "%s", c->session->full);
    snprintf(j->bare, sizeof j->bare, "%s", c->session->bare);
    return j;
}

static void submit_query(st_iq_ctx *c, query_job *j)
{
    mam_host *m = st_host_mod_state(c->host, &mod_mam);
    if (m && m->n) flush(m); /* what was routed before this query is in it */
    if (!(j->p = st_iq_defer(c))) {
        st_iq_error(c, "internal-server-error", NULL);
        query_job_free(j);
        return;
    }
    if (st_storage_submit(c->srv->store, query_work, query_done, j) != 0) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        j->p = NULL;
        query_job_free(j);
    }
}

static st_verdict query_set(st_iq_ctx *c)
{
    const char *cond = NULL, *text = NULL;
    if (!c->session || !c->from || !c->from->node) return ST_PASS;
    query_job *j = job_new(c);
    if (!j) {
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    const char *qid = st_attr_get(c->payload, "queryid");
    if (qid && !(j->queryid = st_strdup(qid))) cond = "internal-server-error";
    const st_node *x = st_child(c->payload, "x", NS_XDATA);
    if (!cond && x) cond = read_form(j, x, &text);
    if (!cond) cond = read_rsm(j, st_child(c->payload, "set", NS_RSM), &text);
    j->flip = st_child(c->payload, "flip-page", NS_MAM) != NULL;
    if (cond) {
        st_iq_error(c, cond, text);
        query_job_free(j);
        return ST_HANDLED;
    }
    submit_query(c, j);
    return ST_HANDLED;
}

static void form_field(st_stanza *r, const char *var, const char *type, const char *value)
{
    st_tag(r, "field", NULL);
    st_attr_set(r, "var", var);
    st_attr_set(r, "type", type);
    if (value) st_text_tag(r, "value", value);
    st_up(r);
}

/* §4.1.1: the fields we understand. */
static st_verdict query_get(st_iq_ctx *c)
{
    st_stanza *r = st_iq_reply(c->iq);
    if (!r) return ST_HANDLED;
    st_tag(r, "query", NS_MAM);
    st_tag(r, "x", NS_XDATA);
    st_attr_set(r, "type", "form");
    form_field(r, "FORM_TYPE", "hidden", NS_MAM);
    form_field(r, "with", "jid-single", NULL);
    form_field(r, "start", "text-single", NULL);
    form_field(r, "end", "text-single", NULL);
    form_field(r, "before-id", "text-single", NULL);
    form_field(r, "after-id", "text-single", NULL);
    st_tag(r, "field", NULL);
    st_attr_set(r, "var", "ids");
    st_attr_set(r, "type", "list-multi");
    st_tag(r, "validate", "http://jabber.org/protocol/xdata-validate");
    st_attr_set(r, "datatype", "xs:string");
    st_tag(r, "open", NULL);
    if (st_stanza_ok(r)) st_iq_result(c, r);
    else st_iq_error(c, "internal-server-error", NULL);
    st_stanza_unref(r);
    return ST_HANDLED;
}

static st_verdict metadata_get(st_iq_ctx *c)
{
    if (!c->session || !c->from || !c->from->node) return ST_PASS;
    query_job *j = job_new(c);
    if (!j) {
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    j->metadata = 1;
    submit_query(c, j);
    return ST_HANDLED;
}

/* XEP-0313 §8.1: another user's archive is theirs alone. */
static st_verdict not_yours(st_iq_ctx *c)
{
    st_iq_error(c, "forbidden", "an archive is only for its owner");
    return ST_HANDLED;
}

/* ---- preferences (§7) ---- */

typedef struct prefs_job {
    st_server *srv;
    st_iq_pending *p;
    char host[1024], user[1024];
    char *txt; /* set: what to store; get: what was stored (owned) */
    size_t len;
    int set, rc;
} prefs_job;

static void prefs_work(void *h, void *arg)
{
    prefs_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    if (j->set) {
        j->rc = ops->kv_put(h, j->host, j->user, PREFS_STORE, PREFS_KEY, j->txt, j->len);
        return;
    }
    j->rc = ops->kv_get(h, j->host, j->user, PREFS_STORE, PREFS_KEY, &j->txt, &j->len);
}

/* <prefs default><always><jid/>...</always><never>...</never></prefs> from the text. */
static void prefs_xml(st_stanza *r, const char *txt, size_t len)
{
    const char *def = "always";
    char dbuf[8];
    for (int pass = 0; pass < 3; pass++) {
        const char *want = pass == 1 ? "always" : "never";
        if (pass == 0) {
            /* the default first: it is an attribute of <prefs/> */
            const char *p = txt;
            while (p && p < txt + len) {
                const char *le = memchr(p, '\n', (size_t)(txt + len - p));
                if (!le) le = txt + len;
                if ((size_t)(le - p) > 8 && memcmp(p, "default ", 8) == 0 &&
                    (size_t)(le - p - 8) < sizeof dbuf) {
                    memcpy(dbuf, p + 8, (size_t)(le - p - 8));
                    dbuf[le - p - 8] = '\0';
                    def = dbuf;
                }
                p = le + 1;
            }
            st_tag(r, "prefs", NS_MAM);
            st_attr_set(r, "default", def);
            continue;
        }
        st_tag(r, want, NULL);
        size_t wl = strlen(want);
        const char *p = txt;
        while (p && p < txt + len) {
            const char *le = memchr(p, '\n', (size_t)(txt + len - p));
            if (!le) le = txt + len;
            if ((size_t)(le - p) > wl + 1 && memcmp(p, want, wl) == 0 && p[wl] == ' ') {
                st_tag(r, "jid", NULL);
                st_textn(r, p + wl + 1, (size_t)(le - p - wl - 1));
                st_up(r);
            }
            p = le + 1;
        }
        st_up(r);
    }
}

static void prefs_done(void *arg)
{
    prefs_job *j = arg;
    st_stanza *r = NULL;
    if (j->rc < 0) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        goto out;
    }
    if ((r = st_iq_reply(st_iq_pending_iq(j->p)))) {
        static const char none[] = "default always\n";
        if (j->set || j->rc == 1) prefs_xml(r, j->txt, j->len);
        else prefs_xml(r, none, sizeof none - 1);
    }
    if (r && st_stanza_ok(r)) st_iq_pending_result(j->p, r);
    else st_iq_pending_error(j->p, "internal-server-error", NULL);
out:
    st_stanza_unref(r);
    st_free(j->txt);
    st_free(j);
}

/* Append "kind JID\n" for every <jid/> of list to b. NULL or an error. */
static const char *prefs_list(st_buf *b, const st_node *list, const char *kind, size_t *count)
{
    for (const st_node *n = list ? st_first_elem(list) : NULL; n; n = st_next_elem(n)) {
        if (strcmp(n->name, "jid") != 0) continue;
        const char *v = st_node_text(n);
        st_jid jj;
        char bare[2100];
        if (++*count > PREFS_JIDS_MAX) return "policy-violation";
        if (st_jid_parse(&jj, v, strlen(v)) != 0) return "jid-malformed";
        int ok = st_jid_format(&jj, 0, bare, sizeof bare) >= 0;
        st_jid_free(&jj);
        if (!ok) return "jid-malformed";
        if (st_buf_append(b, kind, strlen(kind)) != 0 || st_buf_append(b, " ", 1) != 0 ||
            st_buf_append(b, bare, strlen(bare)) != 0 || st_buf_append(b, "\n", 1) != 0)
            return "internal-server-error";
    }
    return NULL;
}

static st_verdict prefs_iq(st_iq_ctx *c)
{
    const char *cond = NULL;
    st_buf b;
    prefs_job *j = NULL;
    size_t count = 0;
    if (!c->from || !c->from->node) return ST_PASS;
    st_buf_init(&b, 256 * 1024);
    if (!(j = st_calloc(1, sizeof *j))) {
        cond = "internal-server-error";
        goto out;
    }
    j->srv = c->srv;
    j->set = c->type == ST_IQ_SET;
    snprintf(j->host, sizeof j->host, "%s", c->host->name);
    snprintf(j->user, sizeof j->user, "%s", c->from->node);
    if (j->set) {
        const char *def = st_attr_get(c->payload, "default");
        if (!def || (strcmp(def, "always") && strcmp(def, "never") && strcmp(def, "roster"))) {
            cond = "bad-request";
            goto out;
        }
        if (st_buf_append(&b, "default ", 8) != 0 || st_buf_append(&b, def, strlen(def)) != 0 ||
            st_buf_append(&b, "\n", 1) != 0) {
            cond = "internal-server-error";
            goto out;
        }
        /* never first: it wins over always (prefs_decide reads every line) */
        if ((cond = prefs_list(&b, st_child(c->payload, "never", NS_MAM), "never", &count)) ||
            (cond = prefs_list(&b, st_child(c->payload, "always", NS_MAM), "always", &count)))
            goto out;
        if (!(j->txt = st_buf_steal(&b, &j->len))) {
            cond = "internal-server-error";
            goto out;
        }
    }
    if (!(j->p = st_iq_defer(c))) {
        cond = "internal-server-error";
        goto out;
    }
    if (st_storage_submit(c->srv->store, prefs_work, prefs_done, j) != 0) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        st_free(j->txt);
        st_free(j);
    }
    j = NULL;
out:
    if (cond) st_iq_error(c, cond, NULL);
    if (j) {
        st_free(j->txt);
        st_free(j);
    }
    st_buf_free(&b);
    return ST_HANDLED;
}

/* ---- retention ---- */

typedef struct purge_job {
    st_server *srv;
    char host[1024];
    long long before;
    int n;
} purge_job;

static void purge_work(void *h, void *arg)
{
    purge_job *j = arg;
    j->n = st_storage_ops(j->srv->store)->mam_expire(h, j->host, j->before);
}

static void purge_done(void *arg)
{
    purge_job *j = arg;
    mam_host *m = state_of(j->srv, j->host);
    if (m) m->purging = 0;
    if (j->n < 0) st_error("mod_mam", "%s: expiring archived messages failed", j->host);
    else if (j->n > 0) st_info("mod_mam", "%s: expired %d archived messages", j->host, j->n);
    st_free(j);
}

static unsigned long long purge_every_ms(long long retention)
{
    long long half = retention / 2;
    if (half < 1) half = 1;
    if (half > 3600) half = 3600;
    return (unsigned long long)half * 1000;
}

static void on_purge(st_loop *l, st_timer *t)
{
    mam_host *m = t->ud;
    st_host *h = m->h;
    long long retention = st_host_opt_num(h, &mod_mam, "retention");
    /* read here, not at host_init (the host's config is not in place yet
     * then), so a reload that changes it takes effect within a minute */
    st_timer_set(l, t, retention > 0 ? purge_every_ms(retention) : 60000);
    if (retention <= 0) return;
    if (m->purging) return; /* the last one is still running */
    purge_job *j = st_calloc(1, sizeof *j);
    if (!j) return;
    j->srv = h->srv;
    snprintf(j->host, sizeof j->host, "%s", h->name);
    j->before = now_us() - retention * 1000000;
    if (m->n) flush(m);
    if (st_storage_submit(h->srv->store, purge_work, purge_done, j) != 0) {
        st_free(j);
        return;
    }
    m->purging = 1;
}

/* ---- module ---- */

static int mam_init(st_host *h, void **state)
{
    mam_host *m = st_calloc(1, sizeof *m);
    if (!m) return -1;
    m->h = h;
    st_timer_init(&m->purge, on_purge, m);
    if (h->srv && h->srv->loop) st_timer_set(h->srv->loop, &m->purge, 1000);
    *state = m;
    return 0;
}

static void mam_fini(st_host *h, void *state)
{
    mam_host *m = state;
    if (!m) return;
    if (h->srv && h->srv->loop) st_timer_cancel(h->srv->loop, &m->purge);
    /* A reload that drops the module: what was collected still goes to
     * storage (the jobs own their items and find no state when they finish).
     * At shutdown collect() has flushed at once since stopping began. */
    if (m->n && h->srv && !h->srv->stopping) flush(m);
    if (m->n) st_warn("mod_mam", "%s: %zu messages not archived at shutdown", h->name, m->n);
    items_free(m->items, m->n);
    st_free(m);
}

static const char *const features[] = {NS_MAM, NS_MAM_EXT, NULL};

static const st_iq_handler iqs[] = {
    {NS_MAM, "query", ST_IQ_SET, ST_TO_ACCOUNT, query_set},
    {NS_MAM, "query", ST_IQ_GET, ST_TO_ACCOUNT, query_get},
    {NS_MAM, "metadata", ST_IQ_GET, ST_TO_ACCOUNT, metadata_get},
    {NS_MAM, "prefs", ST_IQ_GET | ST_IQ_SET, ST_TO_ACCOUNT, prefs_iq},
    {NS_MAM, NULL, ST_IQ_GET | ST_IQ_SET, ST_TO_USER, not_yours},
    {0},
};

static const st_module_opt opts[] = {
    {"retention", ST_OPT_DURATION, "0", 0, 100LL * 366 * 86400,
     "how long archived messages are kept (0 = forever); older ones are deleted periodically"},
    {0},
};

static const st_hooks hooks = {
    .message_in = message_in,
    .message_out = message_out,
};

const st_module mod_mam = {
    .name = "mam",
    .spec = "XEP-0313",
    .title = "Message Archive Management (with XEP-0059 paging)",
    .features = features,
    .iqs = iqs,
    .opts = opts,
    .host_init = mam_init,
    .host_fini = mam_fini,
    .hooks = &hooks,
    /* above offline (95), which keeps the stanza-id we attach, and carbons
     * (85), whose copies carry it */
    .priority = 96,
};
