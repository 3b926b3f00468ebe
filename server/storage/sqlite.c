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
 * - Everything a user owns will reference users(host, username) with
 *   ON DELETE CASCADE (foreign_keys is on), so user_delete is one statement.
 * - Statements are prepared once at open and kept in the handle; each use
 *   binds, steps and resets. A handle is used by one thread at a time.
 * - The file is created 0600 before SQLite opens it: it holds credentials.
 *   SQLite gives the -wal and -shm files the same mode as the database. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "starling/alloc.h"
#include "server/log.h"
#include "server/storage/storage.h"

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
};
#define SQ_SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

enum { Q_USER_GET, Q_USER_CREATE, Q_USER_SET, Q_USER_DELETE, Q_USER_LIST, Q_VERSION, Q_COUNT };

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
};

typedef struct sq_handle {
    sqlite3 *db;
    char *path; /* for log lines */
    sqlite3_stmt *q[Q_COUNT];
} sq_handle;

static void sq_fail(const sq_handle *h, const char *while_doing)
{
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
     * the file cannot do WAL (e.g. on a network file system). */
    rc = sqlite3_prepare_v2(h->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    if (rc != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
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
    if (sq_migrate(h->db, err, errlen) < 0) goto fail;
    for (int i = 0; i < Q_COUNT; i++) {
        if (sqlite3_prepare_v3(h->db, queries[i], -1, SQLITE_PREPARE_PERSISTENT, &h->q[i], NULL) !=
            SQLITE_OK) {
            snprintf(err, errlen, "%s: preparing statement %d: %s", dsn, i, sqlite3_errmsg(h->db));
            goto fail;
        }
    }
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
    int ret = -1, rc;

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
};
