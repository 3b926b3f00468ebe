/* sqlite.c - the embedded default store: st_store_ops on libsqlite3.
 *
 * One database file holds everything. The calls here block; starlingd only
 * makes them from the storage thread (store.c), starlingctl makes them
 * directly while offline or next to a running daemon.
 *
 * Design notes
 *
 * - Journal: WAL. Readers never block the writer and the writer never blocks
 *   readers, so starlingctl can add a user while starlingd is running; the
 *   busy timeout covers the short moments two writers meet.
 * - Durability: synchronous=NORMAL. In WAL mode a committed transaction is in
 *   the WAL file (in the OS page cache) before the call returns, so it
 *   survives the process being killed (kill -9, a crash, OOM killer), which is
 *   what our tests check. What NORMAL gives up is the last transactions on a
 *   power loss or kernel panic, because the WAL is only fsync'ed at
 *   checkpoints. synchronous=FULL (fsync on every commit) closes that gap at
 *   the cost of one fsync per write; it is the obvious option to add later.
 * - Schema: a table schema_version with one row, and `migrations`, an ordered
 *   array whose element i takes the schema from version i to i+1. open()
 *   applies the missing steps in one IMMEDIATE transaction, so two processes
 *   opening a fresh file at once cannot both migrate, and a failed step leaves
 *   the file as it was. Steps are append-only: never edit a released step.
 * - Everything a user owns (roster, offline messages, keyed data) references
 *   users(host, username) with ON DELETE CASCADE, so user_delete is one
 *   statement. foreign_keys is a per-connection setting, off by default, so
 *   open() turns it on and checks that it took before anything else runs.
 * - A write that depends on what it reads (roster_put's quota and version)
 *   runs in one BEGIN IMMEDIATE transaction; where one statement can do
 *   both (offline_push's quota, kv_put's seq) it does, since a statement
 *   is its own transaction.
 * - Values (offline stanzas, kv values) are BLOBs with an explicit length,
 *   so they may hold any bytes; what we hand back is NUL-terminated as a
 *   convenience. Rows we did not write (bad types, out-of-range values) are
 *   reported as errors, never trusted.
 * - Statements are prepared once at open and kept in the handle; each use
 *   binds, steps and resets. A handle is used by one thread at a time.
 * - The file is created 0600 before SQLite opens it: it holds credentials.
 *   SQLite gives the -wal and -shm files the same mode as the database.
 * - Group commit (group_begin .. group_commit): one BEGIN IMMEDIATE
 *   transaction around many jobs. While it is open, sq_run turns an op's
 *   own BEGIN / COMMIT / ROLLBACK into SAVEPOINT / RELEASE / ROLLBACK TO +
 *   RELEASE, so every op stays all-or-nothing inside the group, and a
 *   single-statement op simply joins it. SQLite may end a transaction by
 *   itself (SQLITE_FULL, IOERR, BUSY, NOMEM, a RAISE(ROLLBACK)); after that
 *   the next statement would run in autocommit mode and commit alone, and
 *   the group's re-run would store it a second time. So while a group is
 *   open the commit hook refuses every commit but the group's own, and the
 *   rollback hook marks the group dead for group_alive. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "starling/alloc.h"
#include "server/log.h"
#include "server/storage/storage.h"
#include "server/storage/archive.h"

#define SQ_BUSY_TIMEOUT_MS 5000

/* migrations[i] moves the schema from version i to i + 1. */
static const char *const migrations[] = {
    /* v1: accounts. Both SCRAM credentials are kept so a client can pick
     * either mechanism; the password itself is never stored. */
    "CREATE TABLE users ("
    "  host          TEXT    NOT NULL,"
    "  username      TEXT    NOT NULL,"
    "  sha1_salt     BLOB    NOT NULL,"
    "  sha1_iter     INTEGER NOT NULL,"
    "  sha1_stored   BLOB    NOT NULL,"
    "  sha1_server   BLOB    NOT NULL,"
    "  sha256_salt   BLOB    NOT NULL,"
    "  sha256_iter   INTEGER NOT NULL,"
    "  sha256_stored BLOB    NOT NULL,"
    "  sha256_server BLOB    NOT NULL,"
    "  created       INTEGER NOT NULL," /* unix seconds */
    "  PRIMARY KEY (host, username)"
    ");",

    /* v2: what a user owns besides the account. Every table references
     * users with ON DELETE CASCADE, so user_delete stays one statement.
     *
     * roster: one row per contact, visible or not (pending-in holders and
     * tombstones live here too, see storage.h). Groups are rows of their own
     * rather than an encoded list, so any group name (commas, quotes,
     * unicode) round-trips byte for byte and pos keeps the client's order.
     * roster_version is the per-user counter XEP-0237 versions come from;
     * it is never reset, so a version a client holds always means the same
     * state. offline: AUTOINCREMENT so an id is never reused, even after the
     * newest row was deleted: a client's "delete up to id" can never hit a
     * message stored later. kv: seq orders a store by last put. */
    "CREATE TABLE roster ("
    "  host           TEXT    NOT NULL,"
    "  username       TEXT    NOT NULL,"
    "  jid            TEXT    NOT NULL," /* bare contact JID */
    "  name           TEXT,"
    "  sub            INTEGER NOT NULL CHECK (sub BETWEEN 0 AND 3),"
    "  ask_out        INTEGER NOT NULL,"
    "  pending_in     INTEGER NOT NULL,"
    "  approved       INTEGER NOT NULL,"
    "  in_roster      INTEGER NOT NULL,"
    "  removed        INTEGER NOT NULL,"
    "  pending_in_xml TEXT,"
    "  ver            INTEGER NOT NULL," /* roster version of the last change */
    "  PRIMARY KEY (host, username, jid),"
    "  FOREIGN KEY (host, username) REFERENCES users (host, username) ON DELETE CASCADE"
    ");"
    "CREATE TABLE roster_groups ("
    "  host     TEXT    NOT NULL,"
    "  username TEXT    NOT NULL,"
    "  jid      TEXT    NOT NULL,"
    "  pos      INTEGER NOT NULL," /* 0-based, the order the client gave */
    "  grp      TEXT    NOT NULL,"
    "  PRIMARY KEY (host, username, jid, pos),"
    "  FOREIGN KEY (host, username, jid) REFERENCES roster (host, username, jid)"
    "    ON DELETE CASCADE"
    ");"
    "CREATE TABLE roster_version ("
    "  host     TEXT    NOT NULL,"
    "  username TEXT    NOT NULL,"
    "  ver      INTEGER NOT NULL,"
    "  PRIMARY KEY (host, username),"
    "  FOREIGN KEY (host, username) REFERENCES users (host, username) ON DELETE CASCADE"
    ");"
    "CREATE TABLE offline ("
    "  id       INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  host     TEXT    NOT NULL,"
    "  username TEXT    NOT NULL,"
    "  xml      BLOB    NOT NULL,"
    "  stored   INTEGER NOT NULL," /* unix seconds */
    "  FOREIGN KEY (host, username) REFERENCES users (host, username) ON DELETE CASCADE"
    ");"
    /* Listing, counting and deleting are per user in id order; the cascade
     * from users needs the (host, username) prefix too. */
    "CREATE INDEX offline_user ON offline (host, username, id);"
    "CREATE TABLE kv ("
    "  host     TEXT    NOT NULL,"
    "  username TEXT    NOT NULL,"
    "  store    TEXT    NOT NULL,"
    "  key      TEXT    NOT NULL,"
    "  val      BLOB    NOT NULL,"
    "  seq      INTEGER NOT NULL,"
    "  PRIMARY KEY (host, username, store, key),"
    "  FOREIGN KEY (host, username) REFERENCES users (host, username) ON DELETE CASCADE"
    ");"
    /* kv_list, kv_trim and the next seq of a put all walk a store by seq. */
    "CREATE UNIQUE INDEX kv_seq ON kv (host, username, store, seq);",

    /* v3: XEP-0484 FAST tokens. Never the token itself: the hash of the
     * proof a client must present and the server's answering proof (see
     * server/fast.h), so a copy of the file does not log anyone in. One
     * row per token; a user agent has its current token and, after a
     * rotation, its successor (ids grow, so the newest is the highest).
     * A new password ends every token of the account (the trigger), as a
     * password change is what a user does when a device is lost. */
    "CREATE TABLE fast_tokens ("
    "  id             INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  host           TEXT    NOT NULL,"
    "  username       TEXT    NOT NULL,"
    "  agent          TEXT    NOT NULL," /* SASL2 <user-agent id='...'/> */
    "  mech           TEXT    NOT NULL,"
    "  initiator_hash BLOB    NOT NULL,"
    "  responder      BLOB    NOT NULL,"
    "  expiry         INTEGER NOT NULL," /* unix seconds */
    "  count          INTEGER NOT NULL," /* highest count seen, -1 none */
    "  created        INTEGER NOT NULL,"
    "  FOREIGN KEY (host, username) REFERENCES users (host, username) ON DELETE CASCADE"
    ");"
    "CREATE INDEX fast_tokens_agent ON fast_tokens (host, username, agent, id);"
    "CREATE TRIGGER fast_tokens_password AFTER UPDATE OF sha256_stored ON users"
    " BEGIN DELETE FROM fast_tokens WHERE host = old.host AND username = old.username; END;",
    /* v4: the message archive (XEP-0313), one table for every user's.
     * seq is the archive order: messages are archived in the order the one
     * loop routed them, so it is chronological, and AUTOINCREMENT never
     * reuses a value, so an RSM position stays meaningful after a purge.
     * id is the XEP-0359 stanza-id the user's clients saw, unique per
     * archive and the RSM/after-id key. The other party is split into bare
     * JID and resource so a 'with' filter on either is an index range.
     * ts (microseconds) answers start/end and retention. */
    "CREATE TABLE mam ("
    "  seq       INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  host      TEXT    NOT NULL,"
    "  username  TEXT    NOT NULL,"
    "  id        TEXT    NOT NULL,"
    "  ts        INTEGER NOT NULL," /* microseconds since the epoch */
    "  with_bare TEXT    NOT NULL,"
    "  with_res  TEXT    NOT NULL," /* '' for a bare JID */
    "  outgoing  INTEGER NOT NULL,"
    "  xml       BLOB    NOT NULL,"
    "  UNIQUE (host, username, id),"
    "  FOREIGN KEY (host, username) REFERENCES users (host, username) ON DELETE CASCADE"
    ");"
    "CREATE INDEX mam_user ON mam (host, username, seq);"
    "CREATE INDEX mam_with ON mam (host, username, with_bare, seq);"
    "CREATE INDEX mam_ts ON mam (host, ts);",
};
#define SQ_SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

enum {
    Q_USER_GET,
    Q_USER_CREATE,
    Q_USER_SET,
    Q_USER_DELETE,
    Q_USER_LIST,
    Q_VERSION,
    Q_BEGIN_READ,
    Q_BEGIN_WRITE,
    Q_COMMIT,
    Q_ROLLBACK,
    Q_SAVEPOINT,
    Q_RELEASE,
    Q_ROLLBACK_TO,
    Q_ROSTER_GET,
    Q_ROSTER_GET_ITEM,
    Q_ROSTER_VERSION,
    Q_ROSTER_BUMP,
    Q_ROSTER_VISIBLE,
    Q_ROSTER_PUT,
    Q_ROSTER_GROUPS_DEL,
    Q_ROSTER_GROUP_ADD,
    Q_ROSTER_PURGE,
    Q_OFFLINE_PUSH,
    Q_OFFLINE_LIST,
    Q_OFFLINE_DELETE,
    Q_OFFLINE_COUNT,
    Q_KV_GET,
    Q_KV_PUT,
    Q_KV_DEL,
    Q_KV_DEL_STORE,
    Q_KV_LIST,
    Q_KV_TRIM,
    Q_FAST_PUT,
    Q_FAST_TRIM,
    Q_FAST_LIST,
    Q_FAST_USE,
    Q_FAST_DROP_OLDER,
    Q_FAST_DEL,
    Q_MAM_APPEND,
    Q_MAM_SEQ,
    Q_MAM_EXPIRE,
    Q_COUNT
};

/* The roster columns in the order sq_roster_collect() reads them; the
 * LEFT JOIN gives one result row per group (or one with grp NULL), and the
 * ORDER BY keeps the rows of one contact together, groups in order. */
#define SQ_ROSTER_SELECT                                                                           \
    "SELECT r.jid, r.name, r.sub, r.ask_out, r.pending_in, r.approved, r.in_roster, r.removed,"    \
    " r.pending_in_xml, r.ver, g.grp"                                                              \
    " FROM roster r LEFT JOIN roster_groups g"                                                     \
    " ON g.host = r.host AND g.username = r.username AND g.jid = r.jid"                            \
    " WHERE r.host = ?1 AND r.username = ?2"

static const char *const queries[Q_COUNT] = {
    [Q_USER_GET] = "SELECT sha1_salt, sha1_iter, sha1_stored, sha1_server,"
                   " sha256_salt, sha256_iter, sha256_stored, sha256_server"
                   " FROM users WHERE host = ?1 AND username = ?2",
    [Q_USER_CREATE] = "INSERT INTO users (host, username,"
                      " sha1_salt, sha1_iter, sha1_stored, sha1_server,"
                      " sha256_salt, sha256_iter, sha256_stored, sha256_server, created)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                      " ON CONFLICT (host, username) DO NOTHING",
    [Q_USER_SET] = "UPDATE users SET sha1_salt = ?3, sha1_iter = ?4, sha1_stored = ?5,"
                   " sha1_server = ?6, sha256_salt = ?7, sha256_iter = ?8,"
                   " sha256_stored = ?9, sha256_server = ?10"
                   " WHERE host = ?1 AND username = ?2",
    [Q_USER_DELETE] = "DELETE FROM users WHERE host = ?1 AND username = ?2",
    [Q_USER_LIST] = "SELECT username FROM users WHERE host = ?1 ORDER BY username",
    [Q_VERSION] = "SELECT version FROM schema_version",
    [Q_BEGIN_READ] = "BEGIN",
    /* IMMEDIATE: take the write lock before reading what the write depends
     * on (the visible count, the version), so nobody changes it meanwhile. */
    [Q_BEGIN_WRITE] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    /* An op's transaction inside a group (sq_run); ops never nest theirs. */
    [Q_SAVEPOINT] = "SAVEPOINT st_op",
    [Q_RELEASE] = "RELEASE st_op",
    [Q_ROLLBACK_TO] = "ROLLBACK TO st_op",
    [Q_ROSTER_GET] = SQ_ROSTER_SELECT " AND (?3 OR r.removed = 0) ORDER BY r.jid, g.pos",
    [Q_ROSTER_GET_ITEM] = SQ_ROSTER_SELECT " AND r.jid = ?3 ORDER BY g.pos",
    [Q_ROSTER_VERSION] = "SELECT ver FROM roster_version WHERE host = ?1 AND username = ?2",
    [Q_ROSTER_BUMP] = "INSERT INTO roster_version (host, username, ver) VALUES (?1, ?2, 1)"
                      " ON CONFLICT (host, username) DO UPDATE SET ver = ver + 1"
                      " RETURNING ver",
    /* How many visible items, and whether ?3 is one of them. */
    [Q_ROSTER_VISIBLE] = "SELECT count(*), coalesce(sum(jid = ?3), 0) FROM roster"
                         " WHERE host = ?1 AND username = ?2 AND in_roster <> 0 AND removed = 0",
    [Q_ROSTER_PUT] = "INSERT INTO roster (host, username, jid, name, sub, ask_out, pending_in,"
                     " approved, in_roster, removed, pending_in_xml, ver)"
                     " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                     " ON CONFLICT (host, username, jid) DO UPDATE SET"
                     " name = excluded.name, sub = excluded.sub, ask_out = excluded.ask_out,"
                     " pending_in = excluded.pending_in, approved = excluded.approved,"
                     " in_roster = excluded.in_roster, removed = excluded.removed,"
                     " pending_in_xml = excluded.pending_in_xml, ver = excluded.ver",
    [Q_ROSTER_GROUPS_DEL] = "DELETE FROM roster_groups"
                            " WHERE host = ?1 AND username = ?2 AND jid = ?3",
    [Q_ROSTER_GROUP_ADD] = "INSERT INTO roster_groups (host, username, jid, pos, grp)"
                           " VALUES (?1, ?2, ?3, ?4, ?5)",
    /* roster_groups rows go with it (ON DELETE CASCADE). */
    [Q_ROSTER_PURGE] = "DELETE FROM roster WHERE host = ?1 AND username = ?2 AND jid = ?3",
    /* Count and insert in one statement, so one implicit transaction: two
     * writers cannot both see room for the last message. ?5 = 0: no quota. */
    [Q_OFFLINE_PUSH] = "INSERT INTO offline (host, username, xml, stored)"
                       " SELECT ?1, ?2, ?3, ?4 WHERE ?5 = 0 OR"
                       " (SELECT count(*) FROM offline WHERE host = ?1 AND username = ?2) < ?5",
    [Q_OFFLINE_LIST] = "SELECT id, xml FROM offline WHERE host = ?1 AND username = ?2"
                       " ORDER BY id",
    [Q_OFFLINE_DELETE] = "DELETE FROM offline WHERE host = ?1 AND username = ?2 AND id <= ?3",
    [Q_OFFLINE_COUNT] = "SELECT count(*) FROM offline WHERE host = ?1 AND username = ?2",
    [Q_KV_GET] = "SELECT val FROM kv WHERE host = ?1 AND username = ?2 AND store = ?3"
                 " AND key = ?4",
    /* The new seq is one past the newest of the store, whether the key is
     * new or replaced, so a replaced key becomes the newest. One statement,
     * so the max cannot change between reading it and writing it. */
    [Q_KV_PUT] = "INSERT INTO kv (host, username, store, key, val, seq)"
                 " VALUES (?1, ?2, ?3, ?4, ?5, (SELECT coalesce(max(seq), 0) + 1 FROM kv"
                 " WHERE host = ?1 AND username = ?2 AND store = ?3))"
                 " ON CONFLICT (host, username, store, key) DO UPDATE SET"
                 " val = excluded.val, seq = excluded.seq",
    [Q_KV_DEL] = "DELETE FROM kv WHERE host = ?1 AND username = ?2 AND store = ?3 AND key = ?4",
    [Q_KV_DEL_STORE] = "DELETE FROM kv WHERE host = ?1 AND username = ?2 AND store = ?3",
    [Q_KV_LIST] = "SELECT key, val FROM kv WHERE host = ?1 AND username = ?2 AND store = ?3"
                  " ORDER BY seq",
    /* The subquery is the seq of the newest entry not kept (NULL when there
     * are no more than ?4 entries, and then nothing matches). */
    [Q_KV_TRIM] = "DELETE FROM kv WHERE host = ?1 AND username = ?2 AND store = ?3 AND seq <="
                  " (SELECT seq FROM kv WHERE host = ?1 AND username = ?2 AND store = ?3"
                  " ORDER BY seq DESC LIMIT 1 OFFSET ?4)",
    [Q_FAST_PUT] = "INSERT INTO fast_tokens (host, username, agent, mech, initiator_hash,"
                   " responder, expiry, count, created)"
                   " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
    /* Like kv_trim: the newest ?4 of the agent stay. */
    [Q_FAST_TRIM] = "DELETE FROM fast_tokens WHERE host = ?1 AND username = ?2 AND agent = ?3"
                    " AND id <= (SELECT id FROM fast_tokens WHERE host = ?1 AND username = ?2"
                    " AND agent = ?3 ORDER BY id DESC LIMIT 1 OFFSET ?4)",
    [Q_FAST_LIST] = "SELECT id, mech, initiator_hash, responder, expiry, count FROM fast_tokens"
                    " WHERE host = ?1 AND username = ?2 AND agent = ?3 ORDER BY id DESC LIMIT ?4",
    /* The count check and its update are one statement: two logins with
     * the same count cannot both pass. ?5 < 0: the client sent none. */
    [Q_FAST_USE] = "UPDATE fast_tokens SET count = max(count, ?5)"
                   " WHERE host = ?1 AND username = ?2 AND agent = ?3 AND id = ?4"
                   " AND (?5 < 0 OR count < ?5)",
    [Q_FAST_DROP_OLDER] = "DELETE FROM fast_tokens WHERE host = ?1 AND username = ?2"
                          " AND agent = ?3 AND id < ?4",
    [Q_FAST_DEL] = "DELETE FROM fast_tokens WHERE host = ?1 AND username = ?2 AND agent = ?3"
                   " AND (?4 = 0 OR id = ?4)",    /* DO NOTHING: an id already archived (a message routed again) is not a
     * second copy (XEP-0313 §5.1.1: each message once per archive). */
    [Q_MAM_APPEND] = "INSERT INTO mam (host, username, id, ts, with_bare, with_res, outgoing, xml)"
                     " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                     " ON CONFLICT (host, username, id) DO NOTHING",
    [Q_MAM_SEQ] = "SELECT seq FROM mam WHERE host = ?1 AND username = ?2 AND id = ?3",
    [Q_MAM_EXPIRE] = "DELETE FROM mam WHERE host = ?1 AND ts < ?2",
};

typedef struct sq_handle {
    sqlite3 *db;
    char *path; /* for log lines */
    sqlite3_stmt *q[Q_COUNT];
    int group;      /* a group transaction is open (group_begin .. commit/rollback) */
    int group_dead; /* it ended early: SQLite rolled it back, or a commit was refused */
    int committing; /* the group's own COMMIT: the one commit the hook lets through */
} sq_handle;

static void sq_fail(const sq_handle *h, const char *while_doing)
{
    if (sqlite3_extended_errcode(h->db) == SQLITE_CONSTRAINT_COMMITHOOK)
        st_error("storage",
                 "sqlite %s: the group transaction had ended, so the write was not committed on "
                 "its own (the job runs again alone), while %s",
                 h->path, while_doing);
    else
        st_error("storage", "sqlite %s: %s, while %s", h->path, sqlite3_errmsg(h->db), while_doing);
}

/* Take a cached statement, reset and unbound, ready for binding. */
static sqlite3_stmt *sq_stmt(sq_handle *h, int which)
{
    sqlite3_stmt *st = h->q[which];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

/* Leave a statement idle so it holds no read transaction open (which would
 * stop WAL checkpoints from completing). */
static void sq_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Any commit while a group is open, other than the group's own, is a
 * statement running in autocommit mode after SQLite ended the group's
 * transaction: refuse it (SQLite rolls it back), so the write cannot land
 * alone and again when the group's jobs are re-run. */
static int sq_commit_hook(void *p)
{
    sq_handle *h = p;
    if (!h->group || h->committing) return 0;
    h->group_dead = 1;
    return 1;
}

/* A whole-transaction rollback while a group is open (not ROLLBACK TO,
 * not one failed statement) means the group's transaction is gone. */
static void sq_rollback_hook(void *p)
{
    sq_handle *h = p;
    if (h->group) h->group_dead = 1;
}

static int sq_exec(sqlite3 *db, const char *sql, char *err, size_t errlen, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", what, msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* Create the file 0600 if it does not exist, so it is never readable by
 * others even for an instant; an existing file keeps its mode. */
static int sq_create_private(const char *path, char *err, size_t errlen)
{
    /* In-memory and URI databases have no file of ours to create. */
    if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0) return 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    if (errno == EEXIST) return 0;
    snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
    return -1;
}

static int sq_read_version(sqlite3 *db, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT version FROM schema_version", -1, &st, NULL);
    if (rc != SQLITE_OK) return -1;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int(st, 0);
    else if (rc == SQLITE_DONE)
        *out = 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/* Bring the schema up to SQ_SCHEMA_VERSION inside one transaction. */
static int sq_migrate(sqlite3 *db, char *err, size_t errlen)
{
    int version = 0;
    sqlite3_stmt *st = NULL;

    /* IMMEDIATE takes the write lock now, so the version we read cannot
     * change under us (another process opening the same new file). */
    if (sq_exec(db, "BEGIN IMMEDIATE", err, errlen, "starting the schema migration") < 0) return -1;
    if (sq_exec(db, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", err,
                errlen, "creating schema_version") < 0)
        goto fail;
    if (sq_read_version(db, &version) < 0) {
        snprintf(err, errlen, "reading the schema version: %s", sqlite3_errmsg(db));
        goto fail;
    }
    if (version > SQ_SCHEMA_VERSION) {
        snprintf(err, errlen,
                 "the database has schema version %d, newer than this Starling knows (%d); "
                 "use a newer Starling",
                 version, SQ_SCHEMA_VERSION);
        goto fail;
    }
    if (version == SQ_SCHEMA_VERSION)
        return sq_exec(db, "COMMIT", err, errlen, "ending the schema check") < 0 ? -1 : 0;
    for (int v = version; v < SQ_SCHEMA_VERSION; v++) {
        char what[64];
        snprintf(what, sizeof what, "migrating the schema to version %d", v + 1);
        if (sq_exec(db, migrations[v], err, errlen, what) < 0) goto fail;
    }
    if (sq_exec(db, "DELETE FROM schema_version", err, errlen, "updating schema_version") < 0)
        goto fail;
    if (sqlite3_prepare_v2(db, "INSERT INTO schema_version (version) VALUES (?1)", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_bind_int(st, 1, SQ_SCHEMA_VERSION) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE) {
        snprintf(err, errlen, "updating schema_version: %s", sqlite3_errmsg(db));
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sq_exec(db, "COMMIT", err, errlen, "committing the schema migration") < 0) goto fail;
    if (version > 0)
        st_info("storage", "migrated the schema from version %d to %d", version, SQ_SCHEMA_VERSION);
    return 0;
fail:
    sqlite3_finalize(st);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

static void sq_close(void *hp)
{
    sq_handle *h = hp;
    if (!h) return;
    for (int i = 0; i < Q_COUNT; i++)
        sqlite3_finalize(h->q[i]);
    /* sqlite3_close_v2 checkpoints the WAL when we are the last connection. */
    sqlite3_close_v2(h->db);
    st_free(h->path);
    st_free(h);
}

static int sq_open(void **out, const char *dsn, char *err, size_t errlen)
{
    sq_handle *h = NULL;
    sqlite3_stmt *st = NULL;
    char *msg = NULL;
    int rc;

    *out = NULL;
    if (!dsn || !*dsn) {
        snprintf(err, errlen, "no database file given");
        return -1;
    }
    if (sq_create_private(dsn, err, errlen) < 0) return -1;
    h = st_calloc(1, sizeof *h);
    if (!h || !(h->path = st_strdup(dsn))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* NOMUTEX: a handle is used by one thread at a time (the storage thread),
     * so SQLite's per-connection mutex would be pure cost. */
    rc = sqlite3_open_v2(dsn, &h->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", dsn,
                 h->db ? sqlite3_errmsg(h->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(h->db, 1);
    sqlite3_busy_timeout(h->db, SQ_BUSY_TIMEOUT_MS);

    /* journal_mode answers with the mode in force: anything but "wal" means
     * the file cannot do WAL (e.g. on a network file system). Switching a
     * new file needs its exclusive lock, and when several processes open it
     * at once (starlingctl adduser run in parallel) SQLite answers BUSY at
     * once, without the busy handler (two shared locks each waiting for the
     * other would deadlock): so wait and try again, within the timeout. */
    rc = sqlite3_prepare_v2(h->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    for (int waited = 0; (rc & 0xff) == SQLITE_BUSY && waited < SQ_BUSY_TIMEOUT_MS; waited += 5) {
        sqlite3_reset(st);
        sqlite3_sleep(5);
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_ROW) {
        snprintf(err, errlen, "%s: cannot switch to WAL mode: %s", dsn, sqlite3_errmsg(h->db));
        goto fail;
    }
    if (strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0) {
        snprintf(err, errlen, "%s: the file system does not support WAL mode (got %s)", dsn,
                 sqlite3_column_text(st, 0));
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_exec(h->db, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;", NULL, NULL,
                     &msg) != SQLITE_OK) {
        snprintf(err, errlen, "%s: setting pragmas: %s", dsn, msg ? msg : "?");
        goto fail;
    }
    /* The pragma is silently ignored by a SQLite built without foreign keys;
     * then user_delete would leave everything the user owned behind. */
    rc = sqlite3_prepare_v2(h->db, "PRAGMA foreign_keys", -1, &st, NULL);
    if (rc != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0) != 1) {
        snprintf(err, errlen, "%s: this SQLite does not enforce foreign keys", dsn);
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sq_migrate(h->db, err, errlen) < 0) goto fail;
    for (int i = 0; i < Q_COUNT; i++) {
        if (sqlite3_prepare_v3(h->db, queries[i], -1, SQLITE_PREPARE_PERSISTENT, &h->q[i], NULL) !=
            SQLITE_OK) {
            snprintf(err, errlen, "%s: preparing statement %d: %s", dsn, i, sqlite3_errmsg(h->db));
            goto fail;
        }
    }
    /* Both only act while a group is open; see the design notes. */
    sqlite3_commit_hook(h->db, sq_commit_hook, h);
    sqlite3_rollback_hook(h->db, sq_rollback_hook, h);
    *out = h;
    return 0;
fail:
    sqlite3_free(msg);
    sqlite3_finalize(st);
    sq_close(h);
    return -1;
}

static int sq_schema_version(void *hp)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = sq_stmt(h, Q_VERSION);
    int v = -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    else
        sq_fail(h, "reading the schema version");
    sq_done(st);
    return v;
}

static int sq_bind_key(sqlite3_stmt *st, const char *host, const char *user)
{
    if (sqlite3_bind_text(st, 1, host, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, user, -1, SQLITE_STATIC) != SQLITE_OK)
        return -1;
    return 0;
}

/* Bind one credential at parameters first..first+3. */
static int sq_bind_cred(sqlite3_stmt *st, int first, const st_scram_cred *c)
{
    size_t klen = st_scram_hash_len(c->hash);
    if (c->salt_len == 0 || c->salt_len > ST_SCRAM_SALT_MAX || klen == 0 || c->iterations == 0)
        return -1;
    if (sqlite3_bind_blob(st, first, c->salt, (int)c->salt_len, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(st, first + 1, c->iterations) != SQLITE_OK ||
        sqlite3_bind_blob(st, first + 2, c->stored_key, (int)klen, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(st, first + 3, c->server_key, (int)klen, SQLITE_STATIC) != SQLITE_OK)
        return -1;
    return 0;
}

static int sq_bind_creds(sqlite3_stmt *st, const st_user_creds *c)
{
    if (c->sha1.hash != ST_SCRAM_SHA1 || c->sha256.hash != ST_SCRAM_SHA256) return -1;
    if (sq_bind_cred(st, 3, &c->sha1) < 0 || sq_bind_cred(st, 7, &c->sha256) < 0) return -1;
    return 0;
}

/* Read one credential from columns first..first+3; -1 if the row is not
 * something we wrote (wrong lengths), so a damaged row never authenticates. */
static int sq_column_cred(sqlite3_stmt *st, int first, st_scram_hash hash, st_scram_cred *c)
{
    size_t klen = st_scram_hash_len(hash);
    const void *salt = sqlite3_column_blob(st, first);
    int salt_len = sqlite3_column_bytes(st, first);
    sqlite3_int64 iter = sqlite3_column_int64(st, first + 1);
    const void *stored = sqlite3_column_blob(st, first + 2);
    int stored_len = sqlite3_column_bytes(st, first + 2);
    const void *server = sqlite3_column_blob(st, first + 3);
    int server_len = sqlite3_column_bytes(st, first + 3);

    if (!salt || salt_len <= 0 || salt_len > ST_SCRAM_SALT_MAX || iter <= 0 || iter > 0x7fffffff ||
        !stored || (size_t)stored_len != klen || !server || (size_t)server_len != klen)
        return -1;
    memset(c, 0, sizeof *c);
    c->hash = hash;
    c->iterations = (unsigned)iter;
    memcpy(c->salt, salt, (size_t)salt_len);
    c->salt_len = (size_t)salt_len;
    memcpy(c->stored_key, stored, klen);
    memcpy(c->server_key, server, klen);
    return 0;
}

static int sq_user_get(void *hp, const char *host, const char *user, st_user_creds *out)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = sq_stmt(h, Q_USER_GET);
    int ret = -1, rc = 0;

    if (sq_bind_key(st, host, user) < 0) {
        sq_fail(h, "looking up a user");
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        ret = 0;
    } else if (rc == SQLITE_ROW) {
        if (sq_column_cred(st, 0, ST_SCRAM_SHA1, &out->sha1) < 0 ||
            sq_column_cred(st, 4, ST_SCRAM_SHA256, &out->sha256) < 0) {
            st_error("storage", "sqlite %s: damaged credentials for %s@%s", h->path, user, host);
            memset(out, 0, sizeof *out);
        } else {
            ret = 1;
        }
    } else {
        sq_fail(h, "looking up a user");
    }
done:
    sq_done(st);
    return ret;
}

static int sq_user_create(void *hp, const char *host, const char *user, const st_user_creds *c)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = sq_stmt(h, Q_USER_CREATE);
    int ret = -1;

    if (sq_bind_key(st, host, user) < 0 || sq_bind_creds(st, c) < 0 ||
        sqlite3_bind_int64(st, 11, (sqlite3_int64)time(NULL)) != SQLITE_OK) {
        st_error("storage", "sqlite %s: invalid credentials for a new user", h->path);
        goto done;
    }
    if (sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "creating a user");
        goto done;
    }
    /* ON CONFLICT DO NOTHING: no row changed means the user existed. */
    ret = sqlite3_changes(h->db) == 0 ? 1 : 0;
done:
    sq_done(st);
    return ret;
}

static int sq_user_set_creds(void *hp, const char *host, const char *user, const st_user_creds *c)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = sq_stmt(h, Q_USER_SET);
    int ret = -1;

    if (sq_bind_key(st, host, user) < 0 || sq_bind_creds(st, c) < 0) {
        st_error("storage", "sqlite %s: invalid credentials for a password change", h->path);
        goto done;
    }
    if (sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "changing a password");
        goto done;
    }
    ret = sqlite3_changes(h->db) == 0 ? 1 : 0;
done:
    sq_done(st);
    return ret;
}

static int sq_user_delete(void *hp, const char *host, const char *user)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = sq_stmt(h, Q_USER_DELETE);
    int ret = -1;

    if (sq_bind_key(st, host, user) < 0) {
        sq_fail(h, "deleting a user");
        goto done;
    }
    if (sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "deleting a user");
        goto done;
    }
    ret = sqlite3_changes(h->db) == 0 ? 1 : 0;
done:
    sq_done(st);
    return ret;
}

static int sq_user_list(void *hp, const char *host, void (*each)(void *ud, const char *user),
                        void *ud)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = sq_stmt(h, Q_USER_LIST);
    int n = 0, rc;

    if (sqlite3_bind_text(st, 1, host, -1, SQLITE_STATIC) != SQLITE_OK) {
        sq_fail(h, "listing users");
        n = -1;
        goto done;
    }
    /* each() must not call back into this handle: the statement is shared. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (name) each(ud, name);
        n++;
    }
    if (rc != SQLITE_DONE) {
        sq_fail(h, "listing users");
        n = -1;
    }
done:
    sq_done(st);
    return n;
}

/* ---- helpers for the per-user tables ---- */

/* Run a cached statement that returns no rows, as it is. */
static int sq_step(sq_handle *h, int which)
{
    sqlite3_stmt *st = sq_stmt(h, which);
    int rc = sqlite3_step(st);
    sq_done(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* An op's BEGIN (read or write), COMMIT or ROLLBACK. Inside a group they
 * become a savepoint, so the op is still all-or-nothing but commits with
 * the group. The outer BEGIN IMMEDIATE already holds the write lock that
 * an op's own BEGIN IMMEDIATE would take. */
static int sq_run(sq_handle *h, int which)
{
    if (!h->group) return sq_step(h, which);
    switch (which) {
    case Q_BEGIN_READ:
    case Q_BEGIN_WRITE:
        return sq_step(h, Q_SAVEPOINT);
    case Q_COMMIT:
        return sq_step(h, Q_RELEASE);
    case Q_ROLLBACK: {
        /* ROLLBACK TO undoes the op but keeps the savepoint open. If the
         * group's transaction is gone, both fail and there is nothing to
         * undo. */
        int rc = sq_step(h, Q_ROLLBACK_TO);
        return sq_step(h, Q_RELEASE) < 0 ? -1 : rc;
    }
    default:
        return sq_step(h, which);
    }
}

/* Log a failed write. A foreign key failure is the one a caller can cause
 * (writing for a user who does not exist, or was just deleted), so it gets
 * words a reader understands. Call before ROLLBACK, which resets errmsg. */
static void sq_write_fail(const sq_handle *h, const char *host, const char *user,
                          const char *while_doing)
{
    if (sqlite3_extended_errcode(h->db) == SQLITE_CONSTRAINT_FOREIGNKEY)
        st_error("storage", "sqlite %s: no such user %s@%s, while %s", h->path, user, host,
                 while_doing);
    else
        sq_fail(h, while_doing);
}

static void sq_bad_args(const sq_handle *h, const char *while_doing)
{
    st_error("storage", "sqlite %s: invalid arguments, while %s", h->path, while_doing);
}

static int sq_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    int rc = s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
    return rc == SQLITE_OK ? 0 : -1;
}

/* Bind len bytes as a BLOB. SQLite binds NULL for a NULL pointer whatever
 * the length, so an empty value gets a non-NULL pointer and stays a BLOB.
 * Too big for SQLite (SQLITE_MAX_LENGTH) fails here with SQLITE_TOOBIG. */
static int sq_bind_bytes(sqlite3_stmt *st, int i, const char *p, size_t len)
{
    if (!p && len) return -1;
    return sqlite3_bind_blob64(st, i, len ? p : "", len, SQLITE_STATIC) == SQLITE_OK ? 0 : -1;
}

/* A count from our callers as an SQLite integer (which is signed). */
static sqlite3_int64 sq_int64(size_t n)
{
    return n > (uint64_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)n;
}

static int sq_clamp_int(sqlite3_int64 n)
{
    return n > INT_MAX ? INT_MAX : (int)n;
}

/* A column's value as NUL-terminated bytes (SQLite adds the NUL when it
 * converts to text) and their length, valid until the next step or reset.
 * NULL for SQL NULL, which none of our value columns may hold, or when
 * SQLite runs out of memory converting. */
static const char *sq_column_bytes(sqlite3_stmt *st, int col, size_t *len)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL) return NULL;
    const char *p = (const char *)sqlite3_column_text(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (!p) {
        if (n != 0) return NULL; /* out of memory */
        p = "";                  /* an empty value may come back as NULL */
    }
    *len = (size_t)n;
    return p;
}

/* Make room for element n of an array that grows by doubling: the capacity
 * is the smallest power of two >= n, so it is full exactly when n is a power
 * of two (or 0) and needs no field of its own. The array, moved or not, or
 * NULL on overflow or out of memory (the old one is still valid). */
static void *sq_grow(void *arr, size_t n, size_t size)
{
    if (n & (n - 1)) return arr;
    size_t cap = n ? n * 2 : 1;
    if (cap > SIZE_MAX / size) return NULL;
    return st_realloc(arr, cap * size);
}

/* ---- roster ---- */

static int sq_column_strdup(sqlite3_stmt *st, int col, char **out)
{
    *out = NULL;
    if (sqlite3_column_type(st, col) == SQLITE_NULL) return 0;
    const char *s = (const char *)sqlite3_column_text(st, col);
    if (!s || !(*out = st_strdup(s))) return -1;
    return 0;
}

/* Fill it from the roster columns of the current row (groups aside).
 * On failure it is left empty. */
static int sq_roster_row(const sq_handle *h, sqlite3_stmt *st, st_roster_item *it)
{
    sqlite3_int64 sub = sqlite3_column_int64(st, 2);

    memset(it, 0, sizeof *it);
    if (sub < ST_SUB_NONE || sub > ST_SUB_BOTH) {
        st_error("storage", "sqlite %s: damaged roster row (subscription %lld)", h->path,
                 (long long)sub);
        return -1;
    }
    if (sq_column_strdup(st, 0, &it->jid) < 0 || !it->jid ||
        sq_column_strdup(st, 1, &it->name) < 0 || sq_column_strdup(st, 8, &it->pending_in_xml) < 0)
        goto fail;
    it->sub = (st_sub)sub;
    it->ask_out = sqlite3_column_int64(st, 3) != 0;
    it->pending_in = sqlite3_column_int64(st, 4) != 0;
    it->approved = sqlite3_column_int64(st, 5) != 0;
    it->in_roster = sqlite3_column_int64(st, 6) != 0;
    it->removed = sqlite3_column_int64(st, 7) != 0;
    it->ver = sqlite3_column_int64(st, 9);
    return 0;
fail:
    st_error("storage", "sqlite %s: out of memory or damaged row, while reading a roster", h->path);
    st_roster_item_free(it);
    return -1;
}

/* Step a SQ_ROSTER_SELECT query to the end, appending its contacts to
 * *items / *n. The rows of one contact are adjacent, one per group. On
 * failure what was read so far stays in *items for the caller to free. */
static int sq_roster_collect(sq_handle *h, sqlite3_stmt *st, st_roster_item **items, size_t *n)
{
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *jid = (const char *)sqlite3_column_text(st, 0);
        st_roster_item *it = *n ? &(*items)[*n - 1] : NULL;
        if (!jid) {
            st_error("storage", "sqlite %s: damaged roster row (no JID)", h->path);
            return -1;
        }
        if (!it || strcmp(it->jid, jid) != 0) {
            st_roster_item *grown = sq_grow(*items, *n, sizeof **items);
            if (!grown) goto oom;
            *items = grown;
            it = &grown[*n];
            if (sq_roster_row(h, st, it) < 0) return -1;
            (*n)++;
        }
        if (sqlite3_column_type(st, 10) != SQLITE_NULL) {
            const char *g = (const char *)sqlite3_column_text(st, 10);
            char **groups = sq_grow(it->groups, it->ngroups, sizeof *it->groups);
            if (!g || !groups) goto oom;
            it->groups = groups;
            if (!(groups[it->ngroups] = st_strdup(g))) goto oom;
            it->ngroups++;
        }
    }
    if (rc != SQLITE_DONE) {
        sq_fail(h, "reading a roster");
        return -1;
    }
    return 0;
oom:
    st_error("storage", "sqlite %s: out of memory, while reading a roster", h->path);
    return -1;
}

static int sq_roster_get(void *hp, const char *host, const char *user, int tombstones,
                         st_roster_item **items, size_t *n, long long *version)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    st_roster_item *list = NULL;
    size_t count = 0;
    long long ver = 0;
    int in_tx = 0, ret = -1, rc = 0;

    if (!host || !user || !items || !n) {
        sq_bad_args(h, "reading a roster");
        return -1;
    }
    /* One read transaction, so the version and the rows are one snapshot
     * even if another process writes between the two statements. */
    if (sq_run(h, Q_BEGIN_READ) < 0) {
        sq_fail(h, "reading a roster");
        goto done;
    }
    in_tx = 1;
    st = sq_stmt(h, Q_ROSTER_VERSION);
    if (sq_bind_key(st, host, user) < 0 ||
        ((rc = sqlite3_step(st)) != SQLITE_ROW && rc != SQLITE_DONE)) {
        sq_fail(h, "reading a roster version");
        goto done;
    }
    if (rc == SQLITE_ROW) ver = sqlite3_column_int64(st, 0);
    sq_done(st);
    st = sq_stmt(h, Q_ROSTER_GET);
    if (sq_bind_key(st, host, user) < 0 || sqlite3_bind_int(st, 3, tombstones != 0) != SQLITE_OK) {
        sq_fail(h, "reading a roster");
        goto done;
    }
    if (sq_roster_collect(h, st, &list, &count) < 0) goto done;
    sq_done(st);
    st = NULL;
    if (sq_run(h, Q_COMMIT) < 0) {
        sq_fail(h, "reading a roster");
        goto done;
    }
    in_tx = 0;
    *items = list;
    *n = count;
    if (version) *version = ver;
    list = NULL;
    count = 0;
    ret = 0;
done:
    if (st) sq_done(st);
    if (in_tx) sq_run(h, Q_ROLLBACK);
    st_roster_items_free(list, count);
    return ret;
}

static int sq_roster_get_item(void *hp, const char *host, const char *user, const char *jid,
                              st_roster_item *out)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    st_roster_item *list = NULL;
    size_t count = 0;
    int ret = -1;

    if (!host || !user || !jid || !out) {
        sq_bad_args(h, "reading a roster item");
        return -1;
    }
    st = sq_stmt(h, Q_ROSTER_GET_ITEM);
    if (sq_bind_key(st, host, user) < 0 || sq_bind_text(st, 3, jid) < 0) {
        sq_fail(h, "reading a roster item");
        goto done;
    }
    if (sq_roster_collect(h, st, &list, &count) < 0) goto done;
    if (count > 0) {
        /* Move the first out; the primary key makes it the only one. */
        *out = list[0];
        memset(&list[0], 0, sizeof list[0]);
        ret = 1;
    } else {
        ret = 0;
    }
done:
    sq_done(st);
    st_roster_items_free(list, count);
    return ret;
}

static int sq_roster_item_valid(const st_roster_item *it)
{
    if (!it || !it->jid || (unsigned)it->sub > ST_SUB_BOTH) return 0;
    if (it->ngroups && !it->groups) return 0;
    for (size_t i = 0; i < it->ngroups; i++)
        if (!it->groups[i]) return 0;
    return 1;
}

static int sq_roster_put(void *hp, const char *host, const char *user, const st_roster_item *it,
                         size_t max_items, long long *version)
{
    static const char what[] = "storing a roster item";
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    long long ver;
    int in_tx = 0, ret = -1;

    if (!host || !user || !sq_roster_item_valid(it)) {
        sq_bad_args(h, what);
        return -1;
    }
    if (sq_run(h, Q_BEGIN_WRITE) < 0) {
        sq_fail(h, what);
        goto done;
    }
    in_tx = 1;
    /* The quota is on visible items; only a put that makes a contact
     * visible which was not can go beyond it. Everything else (changing an
     * item, storing a request or a tombstone) is always allowed. */
    if (max_items > 0 && it->in_roster && !it->removed) {
        st = sq_stmt(h, Q_ROSTER_VISIBLE);
        if (sq_bind_key(st, host, user) < 0 || sq_bind_text(st, 3, it->jid) < 0 ||
            sqlite3_step(st) != SQLITE_ROW) {
            sq_fail(h, what);
            goto done;
        }
        sqlite3_int64 visible = sqlite3_column_int64(st, 0);
        int already = sqlite3_column_int64(st, 1) != 0;
        sq_done(st);
        st = NULL;
        if (!already && visible >= sq_int64(max_items)) {
            ret = 1; /* nothing written: the rollback below ends the transaction */
            goto done;
        }
    }
    st = sq_stmt(h, Q_ROSTER_BUMP);
    if (sq_bind_key(st, host, user) < 0 || sqlite3_step(st) != SQLITE_ROW) {
        sq_write_fail(h, host, user, what);
        goto done;
    }
    ver = sqlite3_column_int64(st, 0);
    /* RETURNING: the statement is only finished when stepped to the end. */
    if (sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, what);
        goto done;
    }
    sq_done(st);
    st = sq_stmt(h, Q_ROSTER_PUT);
    if (sq_bind_key(st, host, user) < 0 || sq_bind_text(st, 3, it->jid) < 0 ||
        sq_bind_text(st, 4, it->name) < 0 || sqlite3_bind_int(st, 5, (int)it->sub) != SQLITE_OK ||
        sqlite3_bind_int(st, 6, it->ask_out != 0) != SQLITE_OK ||
        sqlite3_bind_int(st, 7, it->pending_in != 0) != SQLITE_OK ||
        sqlite3_bind_int(st, 8, it->approved != 0) != SQLITE_OK ||
        sqlite3_bind_int(st, 9, it->in_roster != 0) != SQLITE_OK ||
        sqlite3_bind_int(st, 10, it->removed != 0) != SQLITE_OK ||
        sq_bind_text(st, 11, it->pending_in_xml) < 0 ||
        sqlite3_bind_int64(st, 12, ver) != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE) {
        sq_write_fail(h, host, user, what);
        goto done;
    }
    sq_done(st);
    st = sq_stmt(h, Q_ROSTER_GROUPS_DEL);
    if (sq_bind_key(st, host, user) < 0 || sq_bind_text(st, 3, it->jid) < 0 ||
        sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, what);
        goto done;
    }
    for (size_t i = 0; i < it->ngroups; i++) {
        sq_done(st);
        st = sq_stmt(h, Q_ROSTER_GROUP_ADD);
        if (sq_bind_key(st, host, user) < 0 || sq_bind_text(st, 3, it->jid) < 0 ||
            sqlite3_bind_int64(st, 4, sq_int64(i)) != SQLITE_OK ||
            sq_bind_text(st, 5, it->groups[i]) < 0 || sqlite3_step(st) != SQLITE_DONE) {
            sq_fail(h, what);
            goto done;
        }
    }
    sq_done(st);
    st = NULL;
    if (sq_run(h, Q_COMMIT) < 0) {
        sq_fail(h, what);
        goto done;
    }
    in_tx = 0;
    if (version) *version = ver;
    ret = 0;
done:
    if (st) sq_done(st);
    if (in_tx) sq_run(h, Q_ROLLBACK);
    return ret;
}

static int sq_roster_purge(void *hp, const char *host, const char *user, const char *jid)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int ret = -1;

    if (!host || !user || !jid) {
        sq_bad_args(h, "purging a roster item");
        return -1;
    }
    st = sq_stmt(h, Q_ROSTER_PURGE);
    if (sq_bind_key(st, host, user) < 0 || sq_bind_text(st, 3, jid) < 0 ||
        sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "purging a roster item");
        goto done;
    }
    ret = sqlite3_changes(h->db) == 0 ? 1 : 0;
done:
    sq_done(st);
    return ret;
}

/* ---- offline messages ---- */

static int sq_offline_push(void *hp, const char *host, const char *user, const char *xml,
                           size_t len, size_t max_count)
{
    static const char what[] = "storing an offline message";
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int ret = -1;

    if (!host || !user || (!xml && len)) {
        sq_bad_args(h, what);
        return -1;
    }
    st = sq_stmt(h, Q_OFFLINE_PUSH);
    if (sq_bind_key(st, host, user) < 0 || sq_bind_bytes(st, 3, xml, len) < 0 ||
        sqlite3_bind_int64(st, 4, (sqlite3_int64)time(NULL)) != SQLITE_OK ||
        sqlite3_bind_int64(st, 5, sq_int64(max_count)) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE) {
        sq_write_fail(h, host, user, what);
        goto done;
    }
    /* The quota condition is the only way the INSERT writes nothing. */
    ret = sqlite3_changes(h->db) == 0 ? 1 : 0;
done:
    sq_done(st);
    return ret;
}

static int sq_offline_list(void *hp, const char *host, const char *user,
                           void (*each)(void *ud, long long id, const char *xml, size_t len),
                           void *ud)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int n = -1, rc;

    if (!host || !user || !each) {
        sq_bad_args(h, "listing offline messages");
        return -1;
    }
    st = sq_stmt(h, Q_OFFLINE_LIST);
    if (sq_bind_key(st, host, user) < 0) {
        sq_fail(h, "listing offline messages");
        goto done;
    }
    n = 0;
    /* each() must not call back into this handle: the statement is shared. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        const char *xml = sq_column_bytes(st, 1, &len);
        if (!xml) {
            st_error("storage", "sqlite %s: damaged offline message, while listing them", h->path);
            n = -1;
            goto done;
        }
        each(ud, sqlite3_column_int64(st, 0), xml, len);
        if (n < INT_MAX) n++;
    }
    if (rc != SQLITE_DONE) {
        sq_fail(h, "listing offline messages");
        n = -1;
    }
done:
    sq_done(st);
    return n;
}

static int sq_offline_delete(void *hp, const char *host, const char *user, long long upto)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int n = -1;

    if (!host || !user) {
        sq_bad_args(h, "deleting offline messages");
        return -1;
    }
    st = sq_stmt(h, Q_OFFLINE_DELETE);
    if (sq_bind_key(st, host, user) < 0 || sqlite3_bind_int64(st, 3, upto) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "deleting offline messages");
        goto done;
    }
    n = sqlite3_changes(h->db);
done:
    sq_done(st);
    return n;
}

static int sq_offline_count(void *hp, const char *host, const char *user)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int n = -1;

    if (!host || !user) {
        sq_bad_args(h, "counting offline messages");
        return -1;
    }
    st = sq_stmt(h, Q_OFFLINE_COUNT);
    if (sq_bind_key(st, host, user) < 0 || sqlite3_step(st) != SQLITE_ROW) {
        sq_fail(h, "counting offline messages");
        goto done;
    }
    n = sq_clamp_int(sqlite3_column_int64(st, 0));
done:
    sq_done(st);
    return n;
}

/* ---- keyed data ---- */

static int sq_bind_store(sqlite3_stmt *st, const char *host, const char *user, const char *store)
{
    return sq_bind_key(st, host, user) < 0 || sq_bind_text(st, 3, store) < 0 ? -1 : 0;
}

static int sq_kv_get(void *hp, const char *host, const char *user, const char *store,
                     const char *key, char **val, size_t *len)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int ret = -1, rc = 0;

    if (!host || !user || !store || !key || !val) {
        sq_bad_args(h, "reading keyed data");
        return -1;
    }
    st = sq_stmt(h, Q_KV_GET);
    if (sq_bind_store(st, host, user, store) < 0 || sq_bind_text(st, 4, key) < 0 ||
        ((rc = sqlite3_step(st)) != SQLITE_ROW && rc != SQLITE_DONE)) {
        sq_fail(h, "reading keyed data");
        goto done;
    }
    if (rc == SQLITE_DONE) {
        ret = 0;
        goto done;
    }
    size_t n;
    const char *p = sq_column_bytes(st, 0, &n);
    char *copy = p && n < SIZE_MAX ? st_malloc(n + 1) : NULL;
    if (!copy) {
        st_error("storage", "sqlite %s: out of memory or damaged value, while reading keyed data",
                 h->path);
        goto done;
    }
    memcpy(copy, p, n + 1); /* with SQLite's NUL */
    *val = copy;
    if (len) *len = n;
    ret = 1;
done:
    sq_done(st);
    return ret;
}

static int sq_kv_put(void *hp, const char *host, const char *user, const char *store,
                     const char *key, const char *val, size_t len)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int ret = -1;

    if (!host || !user || !store || !key || (!val && len)) {
        sq_bad_args(h, "storing keyed data");
        return -1;
    }
    st = sq_stmt(h, Q_KV_PUT);
    if (sq_bind_store(st, host, user, store) < 0 || sq_bind_text(st, 4, key) < 0 ||
        sq_bind_bytes(st, 5, val, len) < 0 || sqlite3_step(st) != SQLITE_DONE) {
        sq_write_fail(h, host, user, "storing keyed data");
        goto done;
    }
    ret = 0;
done:
    sq_done(st);
    return ret;
}

static int sq_kv_del(void *hp, const char *host, const char *user, const char *store,
                     const char *key)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int ret = -1;

    if (!host || !user || !store) {
        sq_bad_args(h, "deleting keyed data");
        return -1;
    }
    st = sq_stmt(h, key ? Q_KV_DEL : Q_KV_DEL_STORE);
    if (sq_bind_store(st, host, user, store) < 0 || (key && sq_bind_text(st, 4, key) < 0) ||
        sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "deleting keyed data");
        goto done;
    }
    ret = sqlite3_changes(h->db) == 0 ? 1 : 0;
done:
    sq_done(st);
    return ret;
}

static int sq_kv_list(void *hp, const char *host, const char *user, const char *store,
                      void (*each)(void *ud, const char *key, const char *val, size_t len),
                      void *ud)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int n = -1, rc;

    if (!host || !user || !store || !each) {
        sq_bad_args(h, "listing keyed data");
        return -1;
    }
    st = sq_stmt(h, Q_KV_LIST);
    if (sq_bind_store(st, host, user, store) < 0) {
        sq_fail(h, "listing keyed data");
        goto done;
    }
    n = 0;
    /* each() must not call back into this handle: the statement is shared. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        const char *key = (const char *)sqlite3_column_text(st, 0);
        const char *val = sq_column_bytes(st, 1, &len);
        if (!key || !val) {
            st_error("storage", "sqlite %s: damaged keyed data, while listing it", h->path);
            n = -1;
            goto done;
        }
        each(ud, key, val, len);
        if (n < INT_MAX) n++;
    }
    if (rc != SQLITE_DONE) {
        sq_fail(h, "listing keyed data");
        n = -1;
    }
done:
    sq_done(st);
    return n;
}

static int sq_kv_trim(void *hp, const char *host, const char *user, const char *store, size_t keep)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int n = -1;

    if (!host || !user || !store) {
        sq_bad_args(h, "trimming keyed data");
        return -1;
    }
    st = sq_stmt(h, Q_KV_TRIM);
    if (sq_bind_store(st, host, user, store) < 0 ||
        sqlite3_bind_int64(st, 4, sq_int64(keep)) != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "trimming keyed data");
        goto done;
    }
    n = sqlite3_changes(h->db);
done:
    sq_done(st);
    return n;
}

/* ---- FAST tokens (XEP-0484) ---- */

static int sq_bind_agent(sqlite3_stmt *st, const char *host, const char *user, const char *agent)
{
    return sq_bind_key(st, host, user) < 0 || sq_bind_text(st, 3, agent) < 0 ? -1 : 0;
}

static int sq_fast_put(void *hp, const char *host, const char *user, const char *agent,
                       const st_fast_token *t, size_t keep, long long *id)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int ret = -1;

    if (!host || !user || !agent || !t || !t->mech[0] || keep == 0) {
        sq_bad_args(h, "storing a FAST token");
        return -1;
    }
    if (sq_run(h, Q_BEGIN_WRITE) < 0) {
        sq_fail(h, "storing a FAST token");
        return -1;
    }
    st = sq_stmt(h, Q_FAST_PUT);
    if (sq_bind_agent(st, host, user, agent) < 0 || sq_bind_text(st, 4, t->mech) < 0 ||
        sqlite3_bind_blob(st, 5, t->initiator_hash, ST_FAST_HASH_LEN, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(st, 6, t->responder, ST_FAST_HASH_LEN, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(st, 7, t->expiry) != SQLITE_OK ||
        sqlite3_bind_int64(st, 8, t->count) != SQLITE_OK ||
        sqlite3_bind_int64(st, 9, (sqlite3_int64)time(NULL)) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        sq_write_fail(h, host, user, "storing a FAST token");
        goto rollback;
    }
    if (id) *id = sqlite3_column_int64(st, 0);
    sq_done(st);
    st = sq_stmt(h, Q_FAST_TRIM);
    if (sq_bind_agent(st, host, user, agent) < 0 ||
        sqlite3_bind_int64(st, 4, sq_int64(keep)) != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "dropping old FAST tokens");
        goto rollback;
    }
    sq_done(st);
    st = NULL;
    if (sq_run(h, Q_COMMIT) < 0) {
        sq_fail(h, "storing a FAST token");
        goto rollback;
    }
    return 0;
rollback:
    if (st) sq_done(st);
    sq_run(h, Q_ROLLBACK);
    return ret;
}

static int sq_fast_list(void *hp, const char *host, const char *user, const char *agent,
                        st_fast_token *out, size_t max)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int n = -1, rc;

    if (!host || !user || !agent || (!out && max)) {
        sq_bad_args(h, "reading FAST tokens");
        return -1;
    }
    st = sq_stmt(h, Q_FAST_LIST);
    if (sq_bind_agent(st, host, user, agent) < 0 ||
        sqlite3_bind_int64(st, 4, sq_int64(max)) != SQLITE_OK) {
        sq_fail(h, "reading FAST tokens");
        goto done;
    }
    n = 0;
    while ((size_t)n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        st_fast_token *t = &out[n];
        const char *mech = (const char *)sqlite3_column_text(st, 1);
        const void *ih = sqlite3_column_blob(st, 2);
        int ihl = sqlite3_column_bytes(st, 2);
        const void *rs = sqlite3_column_blob(st, 3);
        int rsl = sqlite3_column_bytes(st, 3);
        /* a row we did not write is damage, never a login */
        if (!mech || strlen(mech) >= sizeof t->mech || !ih || ihl != ST_FAST_HASH_LEN || !rs ||
            rsl != ST_FAST_HASH_LEN) {
            st_error("storage", "sqlite %s: damaged FAST token row, while reading it", h->path);
            n = -1;
            goto done;
        }
        memset(t, 0, sizeof *t);
        t->id = sqlite3_column_int64(st, 0);
        snprintf(t->mech, sizeof t->mech, "%s", mech);
        memcpy(t->initiator_hash, ih, ST_FAST_HASH_LEN);
        memcpy(t->responder, rs, ST_FAST_HASH_LEN);
        t->expiry = sqlite3_column_int64(st, 4);
        t->count = sqlite3_column_int64(st, 5);
        n++;
    }
    if ((size_t)n < max && rc != SQLITE_DONE) {
        sq_fail(h, "reading FAST tokens");
        n = -1;
    }
done:
    sq_done(st);
    return n;
}

static int sq_fast_use(void *hp, const char *host, const char *user, const char *agent,
                       long long id, long long count)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int ret = -1;

    if (!host || !user || !agent || id <= 0) {
        sq_bad_args(h, "using a FAST token");
        return -1;
    }
    if (sq_run(h, Q_BEGIN_WRITE) < 0) {
        sq_fail(h, "using a FAST token");
        return -1;
    }
    st = sq_stmt(h, Q_FAST_USE);
    if (sq_bind_agent(st, host, user, agent) < 0 || sqlite3_bind_int64(st, 4, id) != SQLITE_OK ||
        sqlite3_bind_int64(st, 5, count) != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "using a FAST token");
        goto rollback;
    }
    if (sqlite3_changes(h->db) == 0) {
        ret = 1;
        goto rollback;
    }
    sq_done(st);
    st = sq_stmt(h, Q_FAST_DROP_OLDER);
    if (sq_bind_agent(st, host, user, agent) < 0 || sqlite3_bind_int64(st, 4, id) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "dropping replaced FAST tokens");
        goto rollback;
    }
    sq_done(st);
    st = NULL;
    if (sq_run(h, Q_COMMIT) < 0) {
        sq_fail(h, "using a FAST token");
        goto rollback;
    }
    return 0;
rollback:
    if (st) sq_done(st);
    sq_run(h, Q_ROLLBACK);
    return ret;
}

static int sq_fast_del(void *hp, const char *host, const char *user, const char *agent,
                       long long id)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int n = -1;

    if (!host || !user || !agent || id < 0) {
        sq_bad_args(h, "deleting FAST tokens");
        return -1;
    }
    st = sq_stmt(h, Q_FAST_DEL);
    if (sq_bind_agent(st, host, user, agent) < 0 || sqlite3_bind_int64(st, 4, id) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "deleting FAST tokens");
        goto done;
    }
    n = sqlite3_changes(h->db);
done:
    sq_done(st);
    return n;
}

/* ---- message archive (XEP-0313) ---- */

static int sq_mam_append(void *hp, const st_mam_entry *e, size_t n, int *result)
{
    static const char what[] = "archiving messages";
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;

    if ((!e || !result) && n) {
        sq_bad_args(h, what);
        return -1;
    }
    for (size_t i = 0; i < n; i++) result[i] = ST_MAM_FAILED;
    if (n == 0) return 0;
    /* One transaction for the batch: one WAL commit for many messages. */
    if (sq_run(h, Q_BEGIN_WRITE) < 0) {
        sq_fail(h, what);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const st_mam_entry *x = &e[i];
        if (!x->host || !x->user || !x->id || !x->with_bare || !x->with_res || (!x->xml && x->len)) {
            sq_bad_args(h, what);
            continue;
        }
        st = sq_stmt(h, Q_MAM_APPEND);
        int rc = SQLITE_ERROR;
        if (sq_bind_key(st, x->host, x->user) == 0 && sq_bind_text(st, 3, x->id) == 0 &&
            sqlite3_bind_int64(st, 4, x->ts) == SQLITE_OK && sq_bind_text(st, 5, x->with_bare) == 0 &&
            sq_bind_text(st, 6, x->with_res) == 0 &&
            sqlite3_bind_int(st, 7, x->outgoing ? 1 : 0) == SQLITE_OK &&
            sq_bind_bytes(st, 8, x->xml, x->len) == 0)
            rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            result[i] = sqlite3_changes(h->db) == 0 ? ST_MAM_DUPLICATE : ST_MAM_STORED;
        else if (sqlite3_extended_errcode(h->db) == SQLITE_CONSTRAINT_FOREIGNKEY)
            result[i] = ST_MAM_NO_USER; /* the account is gone (or never was) */
        else
            sq_fail(h, what); /* this row only: the statement failed, the transaction stands */
        sq_done(st);
    }
    if (sq_run(h, Q_COMMIT) < 0) {
        sq_fail(h, what);
        sq_run(h, Q_ROLLBACK);
        for (size_t i = 0; i < n; i++) result[i] = ST_MAM_FAILED;
        return -1;
    }
    return 0;
}

/* The seq of archive id in the user's archive: 1 found, 0 not, -1 error. */
static int sq_mam_seq(sq_handle *h, const char *host, const char *user, const char *id,
                      sqlite3_int64 *seq)
{
    sqlite3_stmt *st = sq_stmt(h, Q_MAM_SEQ);
    int ret = -1, rc = SQLITE_ERROR;
    if (sq_bind_key(st, host, user) == 0 && sq_bind_text(st, 3, id) == 0) rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *seq = sqlite3_column_int64(st, 0);
        ret = 1;
    } else if (rc == SQLITE_DONE) {
        ret = 0;
    } else {
        sq_fail(h, "looking up an archive id");
    }
    sq_done(st);
    return ret;
}

/* The resolved filters of a query. Parameters: ?1 host, ?2 user, ?3 with
 * bare, ?4 with resource, ?5 start, ?6 end, ?7 after-id seq, ?8 before-id
 * seq, ?9 the paging cursor, ?20... the ids. */
typedef struct sq_mam_f {
    const st_mam_query *q;
    sqlite3_int64 after, before; /* form after-id / before-id seqs, 0 = none */
} sq_mam_f;

#define SQ_MAM_IDS_PARAM 20

/* Append the WHERE clause for f to b (bounded). 0, or -1 if it did not fit. */
static int sq_mam_where(const sq_mam_f *f, char *b, size_t cap, size_t *len)
{
    const st_mam_query *q = f->q;
    size_t n = *len;
#define SQ_ADD(...)                                                                                \
    do {                                                                                           \
        int w_ = snprintf(b + n, cap - n, __VA_ARGS__);                                            \
        if (w_ < 0 || (size_t)w_ >= cap - n) return -1;                                            \
        n += (size_t)w_;                                                                           \
    } while (0)
    SQ_ADD(" WHERE host = ?1 AND username = ?2");
    if (q->with_bare) SQ_ADD(" AND with_bare = ?3");
    if (q->with_bare && q->with_res) SQ_ADD(" AND with_res = ?4");
    if (q->start != LLONG_MIN) SQ_ADD(" AND ts >= ?5");
    if (q->end != LLONG_MAX) SQ_ADD(" AND ts <= ?6");
    if (f->after) SQ_ADD(" AND seq > ?7");
    if (f->before) SQ_ADD(" AND seq < ?8");
    if (q->nids) {
        SQ_ADD(" AND id IN (");
        for (size_t i = 0; i < q->nids; i++)
            SQ_ADD("%s?%zu", i ? ", " : "", (size_t)SQ_MAM_IDS_PARAM + i);
        SQ_ADD(")");
    }
#undef SQ_ADD
    *len = n;
    return 0;
}

static int sq_mam_bind(sqlite3_stmt *st, const char *host, const char *user, const sq_mam_f *f)
{
    const st_mam_query *q = f->q;
    if (sq_bind_key(st, host, user) < 0) return -1;
    if (q->with_bare && sq_bind_text(st, 3, q->with_bare) < 0) return -1;
    if (q->with_bare && q->with_res && sq_bind_text(st, 4, q->with_res) < 0) return -1;
    if (q->start != LLONG_MIN && sqlite3_bind_int64(st, 5, q->start) != SQLITE_OK) return -1;
    if (q->end != LLONG_MAX && sqlite3_bind_int64(st, 6, q->end) != SQLITE_OK) return -1;
    if (f->after && sqlite3_bind_int64(st, 7, f->after) != SQLITE_OK) return -1;
    if (f->before && sqlite3_bind_int64(st, 8, f->before) != SQLITE_OK) return -1;
    for (size_t i = 0; i < q->nids; i++)
        if (sq_bind_text(st, (int)(SQ_MAM_IDS_PARAM + i), q->ids[i]) < 0) return -1;
    return 0;
}

/* Prepare "head WHERE <filters> tail" (the statement is the caller's). */
static sqlite3_stmt *sq_mam_prepare(sq_handle *h, const char *host, const char *user,
                                    const sq_mam_f *f, const char *head, const char *tail)
{
    size_t cap = 512 + f->q->nids * 16, len = 0;
    char *sql = st_malloc(cap);
    sqlite3_stmt *st = NULL;
    if (!sql) return NULL;
    int w = snprintf(sql, cap, "%s", head);
    if (w < 0 || (size_t)w >= cap) goto out;
    len = (size_t)w;
    if (sq_mam_where(f, sql, cap, &len) < 0) goto out;
    w = snprintf(sql + len, cap - len, "%s", tail);
    if (w < 0 || (size_t)w >= cap - len) goto out;
    if (sqlite3_prepare_v2(h->db, sql, -1, &st, NULL) != SQLITE_OK) {
        sq_fail(h, "preparing an archive query");
        st = NULL;
        goto out;
    }
    if (sq_mam_bind(st, host, user, f) < 0) {
        sq_fail(h, "binding an archive query");
        sqlite3_finalize(st);
        st = NULL;
    }
out:
    st_free(sql);
    return st;
}

/* count(*) of the filtered rows, with seq < below if below > 0. -1 on error. */
static sqlite3_int64 sq_mam_count(sq_handle *h, const char *host, const char *user,
                                  const sq_mam_f *f, sqlite3_int64 below)
{
    sqlite3_stmt *st = sq_mam_prepare(h, host, user, f, "SELECT count(*) FROM mam",
                                      below > 0 ? " AND seq < ?9" : "");
    sqlite3_int64 n = -1;
    if (!st) return -1;
    if ((below <= 0 || sqlite3_bind_int64(st, 9, below) == SQLITE_OK) &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    else
        sq_fail(h, "counting archived messages");
    sqlite3_finalize(st);
    return n;
}

static int sq_mam_query(void *hp, const char *host, const char *user, const st_mam_query *q,
                        st_mam_page *page)
{
    static const char what[] = "querying the archive";
    sq_handle *h = hp;
    sq_mam_f f = {.q = q};
    sqlite3_stmt *st = NULL;
    sqlite3_int64 cursor = 0, after = 0, first_seq = 0;
    int ret = -1, r, rc, backwards = q && q->rsm_before_set;
    char tail[128];
    size_t want;

    if (!host || !user || !q || !page || (q->nids && !q->ids)) {
        sq_bad_args(h, what);
        return -1;
    }
    *page = (st_mam_page){.first_index = -1};
    /* Every id the query names must be in the archive (XEP-0313 §4.1.2,
     * XEP-0059 §2.5): otherwise item-not-found, not an empty page. */
    if (q->after_id && (r = sq_mam_seq(h, host, user, q->after_id, &f.after)) != 1) goto idfail;
    if (q->before_id && (r = sq_mam_seq(h, host, user, q->before_id, &f.before)) != 1) goto idfail;
    for (size_t i = 0; i < q->nids; i++) {
        sqlite3_int64 unused;
        if ((r = sq_mam_seq(h, host, user, q->ids[i], &unused)) != 1) goto idfail;
    }
    /* RSM: <before/> pages backwards from its id (or from the end when
     * empty); <after/> forwards. Both at once is undefined (XEP-0313
     * §4.3.2): before wins, after is still checked. */
    if (q->rsm_after && (r = sq_mam_seq(h, host, user, q->rsm_after, &after)) != 1) goto idfail;
    if (!backwards) cursor = after;
    if (backwards && q->rsm_before && *q->rsm_before &&
        (r = sq_mam_seq(h, host, user, q->rsm_before, &cursor)) != 1)
        goto idfail;
    if ((page->count = sq_mam_count(h, host, user, &f, 0)) < 0) return -1;
    if (q->max == 0) {
        page->complete = page->count == 0;
        return 0;
    }
    /* One row more than asked tells whether the page is the last one. */
    want = q->max;
    snprintf(tail, sizeof tail, "%s ORDER BY seq %s LIMIT %zu OFFSET %lld",
             cursor ? (backwards ? " AND seq < ?9" : " AND seq > ?9") : "",
             backwards ? "DESC" : "ASC", want + 1,
             !cursor && !backwards && q->rsm_index > 0 ? q->rsm_index : 0LL);
    st = sq_mam_prepare(h, host, user, &f, "SELECT seq, id, ts, outgoing, xml FROM mam", tail);
    if (!st || (cursor && sqlite3_bind_int64(st, 9, cursor) != SQLITE_OK)) goto done;
    if (!(page->rows = st_calloc(want, sizeof *page->rows))) goto done;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (page->n == want) break; /* the extra row: more remain */
        size_t len;
        const char *id = (const char *)sqlite3_column_text(st, 1);
        const char *xml = sq_column_bytes(st, 4, &len);
        st_mam_row *row = &page->rows[page->n];
        if (!id || !xml) {
            st_error("storage", "sqlite %s: damaged archive row, while %s", h->path, what);
            goto done;
        }
        if (!(row->id = st_strdup(id)) || !(row->xml = st_strndup(xml, len))) {
            st_free(row->id);
            row->id = NULL;
            goto done;
        }
        row->len = len;
        row->ts = sqlite3_column_int64(st, 2);
        row->outgoing = sqlite3_column_int(st, 3) != 0;
        if (page->n == 0 || backwards) first_seq = sqlite3_column_int64(st, 0);
        page->n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        sq_fail(h, what);
        goto done;
    }
    page->complete = rc == SQLITE_DONE;
    if (backwards) /* fetched newest first: give them back in chronological order */
        for (size_t i = 0; i < page->n / 2; i++) {
            st_mam_row t = page->rows[i];
            page->rows[i] = page->rows[page->n - 1 - i];
            page->rows[page->n - 1 - i] = t;
        }
    if (page->n) {
        sqlite3_int64 before = sq_mam_count(h, host, user, &f, first_seq);
        if (before < 0) goto done;
        page->first_index = before;
    }
    ret = 0;
done:
    sqlite3_finalize(st);
    if (ret != 0) st_mam_page_free(page);
    return ret;
idfail:
    return r == 0 ? 1 : -1;
}

static int sq_mam_expire(void *hp, const char *host, long long before)
{
    sq_handle *h = hp;
    sqlite3_stmt *st = NULL;
    int n = -1;

    if (!host) {
        sq_bad_args(h, "expiring archived messages");
        return -1;
    }
    st = sq_stmt(h, Q_MAM_EXPIRE);
    if (sqlite3_bind_text(st, 1, host, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, before) != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE) {
        sq_fail(h, "expiring archived messages");
        goto done;
    }
    n = sqlite3_changes(h->db);
done:
    sq_done(st);
    return n;
}

/* ---- group commit ---- */

static int sq_group_begin(void *hp)
{
    sq_handle *h = hp;
    if (h->group) return -1;
    if (sq_step(h, Q_BEGIN_WRITE) < 0) {
        sq_fail(h, "starting a group commit");
        return -1;
    }
    h->group = 1;
    h->group_dead = 0;
    return 0;
}

static int sq_group_alive(void *hp)
{
    sq_handle *h = hp;
    return h->group && !h->group_dead && !sqlite3_get_autocommit(h->db);
}

static int sq_group_commit(void *hp)
{
    sq_handle *h = hp;
    if (!sq_group_alive(h)) return -1;
    h->committing = 1;
    int rc = sq_step(h, Q_COMMIT);
    h->committing = 0;
    if (rc < 0) {
        sq_fail(h, "committing a group");
        return -1;
    }
    h->group = 0;
    return 0;
}

static void sq_group_rollback(void *hp)
{
    sq_handle *h = hp;
    h->group = 0;
    h->group_dead = 0;
    /* Already rolled back by SQLite: nothing left to undo. */
    if (!sqlite3_get_autocommit(h->db) && sq_step(h, Q_ROLLBACK) < 0)
        sq_fail(h, "rolling back a group commit");
}

const st_store_ops st_store_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .schema_version = sq_schema_version,
    .user_get = sq_user_get,
    .user_create = sq_user_create,
    .user_set_creds = sq_user_set_creds,
    .user_delete = sq_user_delete,
    .user_list = sq_user_list,
    .roster_get = sq_roster_get,
    .roster_get_item = sq_roster_get_item,
    .roster_put = sq_roster_put,
    .roster_purge = sq_roster_purge,
    .offline_push = sq_offline_push,
    .offline_list = sq_offline_list,
    .offline_delete = sq_offline_delete,
    .offline_count = sq_offline_count,
    .kv_get = sq_kv_get,
    .kv_put = sq_kv_put,
    .kv_del = sq_kv_del,
    .kv_list = sq_kv_list,
    .kv_trim = sq_kv_trim,
    .fast_put = sq_fast_put,
    .fast_list = sq_fast_list,
    .fast_use = sq_fast_use,
    .fast_del = sq_fast_del,
    .mam_append = sq_mam_append,
    .mam_query = sq_mam_query,
    .mam_expire = sq_mam_expire,
    .group_begin = sq_group_begin,
    .group_alive = sq_group_alive,
    .group_commit = sq_group_commit,
    .group_rollback = sq_group_rollback,
};
