/* storage.h - the storage interface: synchronous back ends behind an
 * asynchronous front.
 *
 * A back end (sqlite.c, later postgresql.c) implements st_store_ops with plain
 * blocking calls. starlingd never calls them on its event loop: st_storage
 * runs them on a storage thread and hands the completion back to the loop
 * (an eventfd the loop watches; st_storage_dispatch() runs the done
 * callbacks on the loop thread). starlingctl, used offline, calls the back end
 * directly.
 *
 * Users are keyed by (host, username) where username is already nodeprep'd.
 * Passwords are never stored: only SCRAM credentials for SHA-1 and SHA-256.
 * The schema is versioned; st_store_ops.open migrates an older schema forward. */
#ifndef STARLING_STORAGE_H
#define STARLING_STORAGE_H
#include <stddef.h>
#include "starling/scram.h"

typedef struct st_user_creds {
    st_scram_cred sha1;
    st_scram_cred sha256;
} st_user_creds;

/* Derive both credentials from a password (random salts, default iterations). */
int st_user_creds_make(st_user_creds *out, const char *password);

/* ---- rosters (RFC 6121 §2, versioning XEP-0237) ---- */
typedef enum { ST_SUB_NONE = 0, ST_SUB_TO = 1, ST_SUB_FROM = 2, ST_SUB_BOTH = 3 } st_sub;

/* One contact of one user. Besides the visible roster items, the same row
 * carries subscription state the client does not see as an item: a stored
 * inbound request from a contact who is not in the roster (in_roster = 0,
 * pending_in = 1), and tombstones of removed items (removed = 1) kept so
 * that a client with an old roster version gets "remove" pushes. */
typedef struct st_roster_item {
    char *jid;        /* bare contact JID, normalised (owned) */
    char *name;       /* NULL if none (owned) */
    char **groups;    /* owned, ngroups entries */
    size_t ngroups;
    st_sub sub;
    int ask_out;      /* we sent subscribe, no answer yet (ask='subscribe') */
    int pending_in;   /* the contact asked to subscribe to us, not answered */
    int approved;     /* pre-approved (RFC 6121 §3.4) */
    int in_roster;    /* a visible roster item */
    int removed;      /* tombstone */
    char *pending_in_xml; /* the stored subscribe stanza, NULL if none (owned) */
    long long ver;    /* roster version at which this row last changed */
} st_roster_item;

/* ---- FAST tokens (XEP-0484) ---- */
#define ST_FAST_MECH_MAX 32
#define ST_FAST_HASH_LEN 32 /* SHA-256 */
typedef struct st_fast_token {
    long long id;      /* assigned by fast_put */
    char mech[ST_FAST_MECH_MAX]; /* "HT-SHA-256-NONE": a token works only with its mechanism */
    unsigned char initiator_hash[ST_FAST_HASH_LEN]; /* SHA-256 of the expected initiator proof */
    unsigned char responder[ST_FAST_HASH_LEN];      /* the server's proof, sent in <success/> */
    long long expiry;  /* unix seconds */
    long long count;   /* highest XEP-0484 count seen, -1 none yet */
} st_fast_token;

void st_roster_item_free(st_roster_item *it);          /* frees the members, not it */
void st_roster_items_free(st_roster_item *items, size_t n); /* frees members and array */
int st_roster_item_copy(st_roster_item *dst, const st_roster_item *src); /* 0 or -1 */

struct st_mam_entry; /* the archive ops' types: server/storage/archive.h */
struct st_mam_query;
struct st_mam_page;

typedef struct st_store_ops {
    const char *name; /* "sqlite" */
    /* dsn: for sqlite, the database file path. 0 or -1 with a message in err. */
    int (*open)(void **h, const char *dsn, char *err, size_t errlen);
    void (*close)(void *h);
    int (*schema_version)(void *h); /* current version, -1 on error */
    /* 1 found, 0 not found, -1 error */
    int (*user_get)(void *h, const char *host, const char *user, st_user_creds *out);
    /* 0 created, 1 already exists, -1 error */
    int (*user_create)(void *h, const char *host, const char *user, const st_user_creds *c);
    /* 0 changed, 1 no such user, -1 error */
    int (*user_set_creds)(void *h, const char *host, const char *user, const st_user_creds *c);
    /* 0 deleted (with everything the user owns: roster, offline messages,
     * keyed data), 1 no such user, -1 error */
    int (*user_delete)(void *h, const char *host, const char *user);
    /* Calls each() for every user of host, in name order. Count or -1. */
    int (*user_list)(void *h, const char *host, void (*each)(void *ud, const char *user),
                     void *ud);

    /* -- roster -- */
    /* Every row of the user's roster (visible items, pending-in holders and,
     * with tombstones = 1, removed items), in contact JID order, and the
     * current roster version (0 for an empty roster). *items is an array
     * the caller frees with st_roster_items_free. 0 or -1. */
    int (*roster_get)(void *h, const char *host, const char *user, int tombstones,
                      st_roster_item **items, size_t *n, long long *version);
    /* One row (any state), 1 found, 0 not found (out untouched), -1 error. */
    int (*roster_get_item)(void *h, const char *host, const char *user, const char *jid,
                           st_roster_item *out);
    /* Insert or replace the row for it->jid; the roster version goes up by one
     * and becomes the row's ver; *version gets it. A row with removed = 1 is
     * stored as a tombstone. max_items > 0 refuses a new visible item beyond
     * that many (returns 1). 0, 1 or -1. */
    int (*roster_put)(void *h, const char *host, const char *user, const st_roster_item *it,
                      size_t max_items, long long *version);
    /* Forget a row entirely (no tombstone): 0, 1 if absent, -1. */
    int (*roster_purge)(void *h, const char *host, const char *user, const char *jid);

    /* -- offline messages (XEP-0160) -- */
    /* Append one stanza (serialised XML). max_count > 0 refuses beyond that
     * many stored for the user (returns 1). 0, 1 or -1. */
    int (*offline_push)(void *h, const char *host, const char *user, const char *xml, size_t len,
                        size_t max_count);
    /* Calls each() for every stored stanza, oldest first, with its id.
     * Count or -1. */
    int (*offline_list)(void *h, const char *host, const char *user,
                        void (*each)(void *ud, long long id, const char *xml, size_t len),
                        void *ud);
    /* Delete stored stanzas with id <= upto. Count deleted or -1. */
    int (*offline_delete)(void *h, const char *host, const char *user, long long upto);
    int (*offline_count)(void *h, const char *host, const char *user);

    /* -- per-user keyed data: vCards, private XML, PEP nodes and items,
     *    blocklists, last activity. store names a namespace of keys. -- */
    /* 1 found (*val owned by the caller, NUL-terminated), 0 not found, -1. */
    int (*kv_get)(void *h, const char *host, const char *user, const char *store,
                  const char *key, char **val, size_t *len);
    /* Insert or replace; a replaced key becomes the newest. 0 or -1. */
    int (*kv_put)(void *h, const char *host, const char *user, const char *store,
                  const char *key, const char *val, size_t len);
    /* 0 deleted, 1 absent, -1. key NULL deletes the whole store. */
    int (*kv_del)(void *h, const char *host, const char *user, const char *store,
                  const char *key);
    /* Calls each() oldest first (by last put). Count or -1. */
    int (*kv_list)(void *h, const char *host, const char *user, const char *store,
                   void (*each)(void *ud, const char *key, const char *val, size_t len),
                   void *ud);
    /* Keep only the newest keep entries of the store. Count deleted or -1. */
    int (*kv_trim)(void *h, const char *host, const char *user, const char *store, size_t keep);

    /* -- XEP-0484 FAST tokens, per user and SASL2 user-agent id (agent) --
     * A token is never stored: only what checking and answering a login
     * needs (st_fast_token, see server/fast.h), like SCRAM's StoredKey and
     * ServerKey. */
    /* Store t (its id is assigned, *id gets it) and keep only the newest
     * keep tokens of (user, agent): the current one and its successor. 0/-1. */
    int (*fast_put)(void *h, const char *host, const char *user, const char *agent,
                    const struct st_fast_token *t, size_t keep, long long *id);
    /* Up to max tokens of (user, agent), newest first, expired ones
     * included (the caller tells "expired" from "wrong"). Count or -1. */
    int (*fast_list)(void *h, const char *host, const char *user, const char *agent,
                     struct st_fast_token *out, size_t max);
    /* A login used token id with XEP-0484 count (-1: none given): the
     * count must exceed the stored one (replay). Older tokens of the agent
     * are dropped, since the client has the newer one. 0 used, 1 refused
     * (gone, or count not higher), -1. */
    int (*fast_use)(void *h, const char *host, const char *user, const char *agent,
                    long long id, long long count);
    /* Forget token id of (user, agent), or all of the agent's with id 0.
     * Count deleted or -1. */
    int (*fast_del)(void *h, const char *host, const char *user, const char *agent,
                    long long id);

    /* -- message archive (XEP-0313; types in server/storage/archive.h) -- */
    /* Append n entries in one transaction (a group commit); result[i] gets
     * ST_MAM_STORED, ST_MAM_DUPLICATE (the id is already in that archive),
     * ST_MAM_NO_USER or ST_MAM_FAILED. 0, or -1 if the batch failed as a whole. */
    int (*mam_append)(void *h, const struct st_mam_entry *entries, size_t n, int *result);
    /* One page of the user's archive. 0, 1 if an id the query names is not in
     * the archive (item-not-found), -1 error. The page is the caller's. */
    int (*mam_query)(void *h, const char *host, const char *user, const struct st_mam_query *q,
                     struct st_mam_page *page);
    /* Delete the host's archived messages older than before (microseconds).
     * Count deleted or -1. */
    int (*mam_expire)(void *h, const char *host, long long before);

    /* -- group commit (optional: all four NULL if the back end cannot) --
     * st_storage runs a run of grouped jobs (st_storage_submit_grouped) as
     * group_begin, the jobs, group_commit: one transaction for all of them.
     * While a group is open, an op's own transaction becomes a nested one
     * (a savepoint: the op stays all-or-nothing inside the group), and no
     * write may commit on its own: if the group's transaction ended early,
     * a later write fails rather than committing alone. */
    /* Open a group (never nested). 0, or -1 (then the jobs run alone). */
    int (*group_begin)(void *h);
    /* 1 while the group's transaction stands; 0 once it ended early (the
     * back end rolled it back by itself, e.g. on a full disk). */
    int (*group_alive)(void *h);
    /* 0 committed and closed; -1 not committed, still open: call
     * group_rollback. */
    int (*group_commit)(void *h);
    /* Undo everything since group_begin, in whatever state the group is,
     * and close it. */
    void (*group_rollback)(void *h);
} st_store_ops;

extern const st_store_ops st_store_sqlite;
const st_store_ops *st_store_find(const char *name); /* NULL if unknown */

/* ---- asynchronous front ---- */
typedef struct st_storage st_storage;

/* Opens the back end on a new storage thread. NULL with a message in err. */
st_storage *st_storage_start(const st_store_ops *ops, const char *dsn, char *err, size_t errlen);
/* Finishes queued work, closes the back end, joins the thread. */
void st_storage_stop(st_storage *s);
/* Readable when completions are waiting; the loop then calls dispatch. */
int st_storage_fd(const st_storage *s);
void st_storage_dispatch(st_storage *s);

/* Run work(h, arg) on the storage thread with the back end handle, then
 * done(arg) on the loop thread from st_storage_dispatch(). arg belongs to the
 * caller throughout; done must free it. If the requester went away meanwhile,
 * done still runs and must notice (e.g. a cancelled flag in arg). 0 or -1. */
int st_storage_submit(st_storage *s, void (*work)(void *h, void *arg), void (*done)(void *arg),
                      void *arg);
/* Like st_storage_submit, for a job that may share one transaction with
 * the grouped jobs queued next to it (group commit: one commit for many
 * writes). The contract work must keep:
 *
 *  - work may run inside a transaction shared with neighbouring grouped
 *    jobs, and if that transaction fails (its commit, or the back end
 *    rolling it back), it runs again, alone, after the rollback. So it
 *    must read its inputs from arg only and overwrite its results in arg,
 *    never accumulate into them (no counters, no appending, no allocating
 *    into arg without freeing what a previous run left), and it must have
 *    no effect outside the store and arg.
 *  - It sees the writes of the grouped jobs before it (they are in the
 *    same transaction), just as it would running after them alone.
 *
 * In exchange: done() of every job of a group runs only after the group
 * committed (or after the job's own run alone committed), in submission
 * order with every other job, grouped or not; so when done() runs, the
 * job's writes are as durable as a plain job's. Jobs submitted with
 * st_storage_submit never share a transaction. A group is what is queued
 * when the storage thread gets to it, at most ST_STORAGE_GROUP_MAX jobs:
 * nothing waits for a group to fill. 0 or -1. */
#define ST_STORAGE_GROUP_MAX 256
int st_storage_submit_grouped(st_storage *s, void (*work)(void *h, void *arg),
                              void (*done)(void *arg), void *arg);
const st_store_ops *st_storage_ops(const st_storage *s);

/* Wake-ups in batches (for an event loop): after st_storage_batch_wakeups,
 * submitting only queues, and the storage thread is woken by the next
 * st_storage_kick, which the loop calls once before it waits for events.
 * The jobs one batch of events submits then cost the two threads one
 * hand-over instead of one each (on a single core, every hand-over is a
 * pair of context switches). Without it every submit wakes the thread.
 * Loop thread only. */
void st_storage_batch_wakeups(st_storage *s);
void st_storage_kick(st_storage *s);
/* Jobs submitted whose done() has not run yet (call on the loop thread). */
long st_storage_inflight(const st_storage *s);

#endif
