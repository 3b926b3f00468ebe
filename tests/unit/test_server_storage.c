/* test_server_storage.c - the SQLite store and the asynchronous front.
 *
 * Each test works on a fresh database in its own temporary directory. The
 * async tests check the two promises the event loop relies on: work runs on
 * the storage thread, completions come back in order on the thread that
 * calls st_storage_dispatch(). The per-user tests (roster, offline
 * messages, keyed data) are named after the requirement they check, and
 * feed the store the awkward inputs: NUL bytes, invalid UTF-8, a mebibyte,
 * commas and unicode in group names, rows damaged behind its back. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "starling/alloc.h"
#include "server/storage/storage.h"
#include "server/storage/archive.h"

#define STORAGE_FIXTURE_DIR "/tmp/st-storage-XXXXXX"
#include "tests/unit/storage_fixture.h"

static void *open_store(const fixture *f)
{
    void *h = NULL;
    char err[256] = "";
    if (st_store_sqlite.open(&h, f->path, err, sizeof err) != 0) fail_msg("open: %s", err);
    assert_non_null(h);
    return h;
}

static void make_creds(st_user_creds *c, const char *password)
{
    assert_int_equal(st_user_creds_make(c, password), 0);
}

static void assert_cred_equal(const st_scram_cred *a, const st_scram_cred *b)
{
    assert_int_equal(a->hash, b->hash);
    assert_int_equal(a->iterations, b->iterations);
    assert_int_equal(a->salt_len, b->salt_len);
    assert_memory_equal(a->salt, b->salt, a->salt_len);
    size_t n = st_scram_hash_len(a->hash);
    assert_memory_equal(a->stored_key, b->stored_key, n);
    assert_memory_equal(a->server_key, b->server_key, n);
}

/* Several processes opening a store that does not exist yet (bench/compare
 * runs `starlingctl adduser` four at a time on a fresh data directory):
 * each must get its handle, not "cannot switch to WAL mode: database is
 * locked". SQLite returns SQLITE_BUSY at once, without the busy handler,
 * when two connections holding shared locks both want the exclusive lock
 * the WAL switch needs, so the open retries. Children start together on a
 * pipe; 6 rounds of 12 processes, each bounded by the store's own timeout. */
static void test_open_by_many_processes_at_once_on_a_new_file(void **state)
{
    fixture *f = *state;
    enum { ROUNDS = 6, PROCS = 12 };
    int failed = 0;
    for (int round = 0; round < ROUNDS; round++) {
        char path[160];
        snprintf(path, sizeof path, "%s/fresh%d.db", f->dir, round);
        int go[2];
        assert_int_equal(pipe(go), 0);
        pid_t kids[PROCS];
        for (int i = 0; i < PROCS; i++) {
            kids[i] = fork();
            assert_true(kids[i] >= 0);
            if (kids[i] == 0) {
                char c, err[256];
                void *h = NULL;
                close(go[1]);
                if (read(go[0], &c, 1) < 0) _exit(3);
                if (st_store_sqlite.open(&h, path, err, sizeof err) != 0) {
                    fprintf(stderr, "open by process %d: %s\n", i, err);
                    _exit(1);
                }
                st_store_sqlite.close(h);
                _exit(0);
            }
        }
        close(go[0]);
        close(go[1]); /* all start now */
        for (int i = 0; i < PROCS; i++) {
            int status = 0;
            assert_int_equal(waitpid(kids[i], &status, 0), kids[i]);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
        }
        const char *suffix[] = {"", "-wal", "-shm"};
        for (size_t i = 0; i < 3; i++) {
            char q[180];
            snprintf(q, sizeof q, "%s%s", path, suffix[i]);
            unlink(q);
        }
    }
    assert_int_equal(failed, 0);
}

static void test_store_find_knows_sqlite(void **state)
{
    assert_ptr_equal(st_store_find("sqlite"), &st_store_sqlite);
    assert_null(st_store_find("nosuchdb"));
    assert_null(st_store_find(NULL));
}

static void test_creds_make_both_hashes_default_iterations(void **state)
{
    st_user_creds a, b;
    make_creds(&a, "secret");
    make_creds(&b, "secret");
    assert_int_equal(a.sha1.hash, ST_SCRAM_SHA1);
    assert_int_equal(a.sha256.hash, ST_SCRAM_SHA256);
    assert_int_equal(a.sha1.iterations, ST_SCRAM_DEFAULT_ITERATIONS);
    assert_int_equal(a.sha256.iterations, ST_SCRAM_DEFAULT_ITERATIONS);
    /* Random salts: the same password never gives the same record twice. */
    assert_true(a.sha256.salt_len >= 16);
    assert_memory_not_equal(a.sha256.salt, b.sha256.salt, a.sha256.salt_len);
    assert_int_equal(st_user_creds_make(&a, ""), -1);
}

static void test_user_create_get_duplicate(void **state)
{
    fixture *f = *state;
    void *h = open_store(f);
    st_user_creds c, got, other;
    make_creds(&c, "pencil");
    make_creds(&other, "other");

    assert_int_equal(st_store_sqlite.user_get(h, "localhost", "alice", &got), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "alice", &c), 0);
    assert_int_equal(st_store_sqlite.user_get(h, "localhost", "alice", &got), 1);
    assert_cred_equal(&got.sha1, &c.sha1);
    assert_cred_equal(&got.sha256, &c.sha256);

    /* A second create is refused and leaves the first credentials alone. */
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "alice", &other), 1);
    assert_int_equal(st_store_sqlite.user_get(h, "localhost", "alice", &got), 1);
    assert_cred_equal(&got.sha256, &c.sha256);

    /* Users are per host. */
    assert_int_equal(st_store_sqlite.user_get(h, "example.org", "alice", &got), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "example.org", "alice", &other), 0);
    st_store_sqlite.close(h);
}

static void test_user_set_creds(void **state)
{
    fixture *f = *state;
    void *h = open_store(f);
    st_user_creds c, c2, got;
    make_creds(&c, "old");
    make_creds(&c2, "new");

    assert_int_equal(st_store_sqlite.user_set_creds(h, "localhost", "bob", &c2), 1);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "bob", &c), 0);
    assert_int_equal(st_store_sqlite.user_set_creds(h, "localhost", "bob", &c2), 0);
    assert_int_equal(st_store_sqlite.user_get(h, "localhost", "bob", &got), 1);
    assert_cred_equal(&got.sha1, &c2.sha1);
    assert_cred_equal(&got.sha256, &c2.sha256);
    assert_int_equal(st_scram_cred_check(&got.sha256, "new"), 1);
    assert_int_equal(st_scram_cred_check(&got.sha256, "old"), 0);
    st_store_sqlite.close(h);
}

static void test_user_delete(void **state)
{
    fixture *f = *state;
    void *h = open_store(f);
    st_user_creds c, got;
    make_creds(&c, "pw");

    assert_int_equal(st_store_sqlite.user_delete(h, "localhost", "carol"), 1);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "carol", &c), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "example.org", "carol", &c), 0);
    assert_int_equal(st_store_sqlite.user_delete(h, "localhost", "carol"), 0);
    assert_int_equal(st_store_sqlite.user_get(h, "localhost", "carol", &got), 0);
    assert_int_equal(st_store_sqlite.user_delete(h, "localhost", "carol"), 1);
    /* The same name on another host is a different account. */
    assert_int_equal(st_store_sqlite.user_get(h, "example.org", "carol", &got), 1);
    st_store_sqlite.close(h);
}

typedef struct names {
    char list[8][32];
    int n;
} names;

static void collect(void *ud, const char *user)
{
    names *nm = ud;
    assert_true(nm->n < 8);
    snprintf(nm->list[nm->n++], sizeof nm->list[0], "%s", user);
}

static void ignore_name(void *ud, const char *user) {}

static void test_user_list_in_name_order_per_host(void **state)
{
    fixture *f = *state;
    void *h = open_store(f);
    st_user_creds c;
    names nm = {.n = 0};
    make_creds(&c, "pw");

    assert_int_equal(st_store_sqlite.user_list(h, "localhost", collect, &nm), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "mallory", &c), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "alice", &c), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "bob", &c), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "example.org", "zed", &c), 0);

    assert_int_equal(st_store_sqlite.user_list(h, "localhost", collect, &nm), 3);
    assert_int_equal(nm.n, 3);
    assert_string_equal(nm.list[0], "alice");
    assert_string_equal(nm.list[1], "bob");
    assert_string_equal(nm.list[2], "mallory");
    nm.n = 0;
    assert_int_equal(st_store_sqlite.user_list(h, "example.org", collect, &nm), 1);
    assert_string_equal(nm.list[0], "zed");
    st_store_sqlite.close(h);
}

/* Count rows of schema_version and check the journal mode with SQLite
 * itself, behind the back end's back. */
static int raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int v = -1;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_schema_migrates_once_and_reopen_keeps_data(void **state)
{
    fixture *f = *state;
    st_user_creds c, got;
    make_creds(&c, "pw");

    void *h = open_store(f);
    int v = st_store_sqlite.schema_version(h);
    assert_true(v >= 1);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "dave", &c), 0);
    st_store_sqlite.close(h);

    h = open_store(f);
    assert_int_equal(st_store_sqlite.schema_version(h), v);
    assert_int_equal(st_store_sqlite.user_get(h, "localhost", "dave", &got), 1);
    assert_cred_equal(&got.sha256, &c.sha256);
    st_store_sqlite.close(h);

    /* One version row, the users table created once, WAL on disk. */
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_version"), 1);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM sqlite_master WHERE name='users'"), 1);
    assert_int_equal(raw_int(f->path, "SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);
}

static void test_schema_newer_than_code_is_refused(void **state)
{
    fixture *f = *state;
    void *h = open_store(f);
    st_store_sqlite.close(h);
    raw_exec(f->path, "UPDATE schema_version SET version = 9999");

    char err[256] = "";
    h = (void *)1;
    assert_int_equal(st_store_sqlite.open(&h, f->path, err, sizeof err), -1);
    assert_null(h);
    assert_non_null(strstr(err, "9999"));
}

static void test_open_missing_directory_fails_clearly(void **state)
{
    fixture *f = *state;
    char path[160], err[256] = "";
    void *h = NULL;
    snprintf(path, sizeof path, "%s/no/such/dir/starling.db", f->dir);
    assert_int_equal(st_store_sqlite.open(&h, path, err, sizeof err), -1);
    assert_null(h);
    assert_non_null(strstr(err, path));
}

static void test_creds_survive_reopen_and_verify(void **state)
{
    fixture *f = *state;
    st_user_creds c, got;
    make_creds(&c, "correct horse");

    void *h = open_store(f);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "erin", &c), 0);
    st_store_sqlite.close(h);

    h = open_store(f);
    assert_int_equal(st_store_sqlite.user_get(h, "localhost", "erin", &got), 1);
    st_store_sqlite.close(h);
    assert_int_equal(st_scram_cred_check(&got.sha1, "correct horse"), 1);
    assert_int_equal(st_scram_cred_check(&got.sha256, "correct horse"), 1);
    assert_int_equal(st_scram_cred_check(&got.sha1, "battery staple"), 0);
    assert_int_equal(st_scram_cred_check(&got.sha256, "battery staple"), 0);
}

static void test_db_file_mode_0600_whatever_the_umask(void **state)
{
    fixture *f = *state;
    mode_t old = umask(0);
    void *h = open_store(f);
    st_user_creds c;
    make_creds(&c, "pw");
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "frank", &c), 0);

    struct stat sb;
    char wal[160];
    assert_int_equal(stat(f->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    snprintf(wal, sizeof wal, "%s-wal", f->path);
    assert_int_equal(stat(wal, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    st_store_sqlite.close(h);
    umask(old);
}

/* ---- per-user data: roster, offline messages, keyed data ---- */

static const st_store_ops *const ops = &st_store_sqlite;

/* A store with users alice and bob on localhost. */
static void *open_with_users(const fixture *f)
{
    void *h = open_store(f);
    st_user_creds c;
    make_creds(&c, "pw");
    assert_int_equal(ops->user_create(h, "localhost", "alice", &c), 0);
    assert_int_equal(ops->user_create(h, "localhost", "bob", &c), 0);
    return h;
}

static st_roster_item item(const char *jid, int in_roster, int removed)
{
    return (st_roster_item){
        .jid = (char *)jid, .sub = ST_SUB_BOTH, .in_roster = in_roster, .removed = removed};
}

static void assert_opt_string_equal(const char *a, const char *b)
{
    if (!a || !b)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void assert_roster_item_equal(const st_roster_item *got, const st_roster_item *want)
{
    assert_string_equal(got->jid, want->jid);
    assert_opt_string_equal(got->name, want->name);
    assert_int_equal(got->ngroups, want->ngroups);
    for (size_t i = 0; i < want->ngroups; i++)
        assert_string_equal(got->groups[i], want->groups[i]);
    assert_int_equal(got->sub, want->sub);
    assert_int_equal(!!got->ask_out, !!want->ask_out);
    assert_int_equal(!!got->pending_in, !!want->pending_in);
    assert_int_equal(!!got->approved, !!want->approved);
    assert_int_equal(!!got->in_roster, !!want->in_roster);
    assert_int_equal(!!got->removed, !!want->removed);
    assert_opt_string_equal(got->pending_in_xml, want->pending_in_xml);
}

static void test_rfc6121_2_roster_version_increments_on_every_change(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    st_roster_item *items = NULL, got;
    st_roster_item a = item("a@example.org", 1, 0), b = item("b@example.org", 1, 0);
    size_t n = 99;
    long long ver = -1;

    /* Never touched: empty, version 0. */
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 0, &items, &n, &ver), 0);
    assert_int_equal(n, 0);
    assert_int_equal(ver, 0);

    assert_int_equal(ops->roster_put(h, "localhost", "alice", &a, 0, &ver), 0);
    assert_int_equal(ver, 1);
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &b, 0, &ver), 0);
    assert_int_equal(ver, 2);
    a.name = "Alpha";
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &a, 0, &ver), 0);
    assert_int_equal(ver, 3);

    /* Each row remembers the version of its last change. */
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 0, &items, &n, &ver), 0);
    assert_int_equal(ver, 3);
    assert_int_equal(n, 2);
    assert_string_equal(items[0].jid, "a@example.org");
    assert_int_equal(items[0].ver, 3);
    assert_string_equal(items[0].name, "Alpha");
    assert_int_equal(items[1].ver, 2);
    st_roster_items_free(items, n);

    /* Versions are per user. */
    assert_int_equal(ops->roster_put(h, "localhost", "bob", &a, 0, &ver), 0);
    assert_int_equal(ver, 1);

    /* Purging is not a change a client sees: the version stays, and is
     * never reset (a client's cached version must keep its meaning). */
    assert_int_equal(ops->roster_purge(h, "localhost", "alice", "a@example.org"), 0);
    assert_int_equal(ops->roster_purge(h, "localhost", "alice", "a@example.org"), 1);
    assert_int_equal(ops->roster_purge(h, "localhost", "alice", "b@example.org"), 0);
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 1, &items, &n, &ver), 0);
    assert_int_equal(n, 0);
    assert_null(items);
    assert_int_equal(ver, 3);
    assert_int_equal(ops->roster_get_item(h, "localhost", "alice", "a@example.org", &got), 0);
    ops->close(h);

    /* And it survives a reopen. */
    h = open_store(f);
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &a, 0, &ver), 0);
    assert_int_equal(ver, 4);
    ops->close(h);
}

/* Every field comes back as stored, group names byte for byte. */
static void test_rfc6121_2_roster_item_round_trips_every_field(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    static char long_name[4096];
    memset(long_name, 'n', sizeof long_name - 1);
    const st_roster_item cases[] = {
        {.jid = "plain@example.org"},
        {.jid = "groups@example.org",
         .name = "Juliet",
         .groups = (char *[]){"Friends, Family", "\"quoted\" <x/> & 'apos'", "",
                              "\xd0\x94\xd1\x80\xd1\x83\xd0\xb7\xd1\x8c\xd1\x8f",
                              "\xf0\x9f\x8c\xb9 emoji", "Friends, Family"},
         .ngroups = 6,
         .sub = ST_SUB_BOTH,
         .in_roster = 1},
        {.jid = "caf\xc3\xa9@example.org",
         .name = long_name,
         .sub = ST_SUB_TO,
         .ask_out = 1,
         .in_roster = 1},
        {.jid = "asker@example.org",
         .sub = ST_SUB_NONE,
         .pending_in = 1,
         .pending_in_xml = "<presence from='asker@example.org' type='subscribe'><status>hi, "
                           "\xe4\xbd\xa0\xe5\xa5\xbd</status></presence>"},
        {.jid = "approved@example.org", .sub = ST_SUB_FROM, .approved = 1, .in_roster = 1},
        {.jid = "x-removed@example.org", .groups = (char *[]){"old"}, .ngroups = 1, .removed = 1},
    };
    const size_t ncases = sizeof cases / sizeof cases[0];
    st_roster_item *items = NULL, got;
    size_t n;
    long long ver;

    for (size_t i = 0; i < ncases; i++)
        assert_int_equal(ops->roster_put(h, "localhost", "alice", &cases[i], 0, &ver), 0);
    for (size_t i = 0; i < ncases; i++) {
        memset(&got, 0, sizeof got);
        assert_int_equal(ops->roster_get_item(h, "localhost", "alice", cases[i].jid, &got), 1);
        assert_roster_item_equal(&got, &cases[i]);
        assert_int_equal(got.ver, (long long)i + 1);
        st_roster_item_free(&got);
    }
    /* In JID order: "approved" < "asker" < "caf\xc3\xa9" < "groups" < "plain" < "x-removed". */
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 1, &items, &n, &ver), 0);
    assert_int_equal(n, ncases);
    const size_t order[] = {4, 3, 2, 1, 0, 5};
    for (size_t i = 0; i < n; i++)
        assert_roster_item_equal(&items[i], &cases[order[i]]);
    st_roster_items_free(items, n);

    /* Replacing a row replaces its groups too, not adds to them. */
    st_roster_item fewer = cases[1];
    fewer.ngroups = 1;
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &fewer, 0, &ver), 0);
    assert_int_equal(ops->roster_get_item(h, "localhost", "alice", fewer.jid, &got), 1);
    assert_roster_item_equal(&got, &fewer);
    st_roster_item_free(&got);
    ops->close(h);
}

static void test_xep0237_tombstones_returned_only_when_asked(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    st_roster_item *items = NULL;
    st_roster_item visible = item("a@example.org", 1, 0), gone = item("b@example.org", 1, 0);
    st_roster_item asker = item("c@example.org", 0, 0);
    size_t n;
    long long ver, removed_at;
    asker.pending_in = 1;
    asker.sub = ST_SUB_NONE;

    assert_int_equal(ops->roster_put(h, "localhost", "alice", &visible, 0, &ver), 0);
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &gone, 0, &ver), 0);
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &asker, 0, &ver), 0);
    gone.removed = 1;
    gone.in_roster = 0;
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &gone, 0, &removed_at), 0);
    assert_int_equal(removed_at, 4);

    /* Without tombstones: the visible item and the pending-in holder. */
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 0, &items, &n, &ver), 0);
    assert_int_equal(ver, 4);
    assert_int_equal(n, 2);
    assert_string_equal(items[0].jid, "a@example.org");
    assert_string_equal(items[1].jid, "c@example.org");
    assert_false(items[1].in_roster);
    assert_true(items[1].pending_in);
    st_roster_items_free(items, n);

    /* With them, the removal and the version it happened at, so a client
     * holding version 2 can be sent a remove push. */
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 1, &items, &n, &ver), 0);
    assert_int_equal(n, 3);
    assert_string_equal(items[1].jid, "b@example.org");
    assert_true(items[1].removed);
    assert_int_equal(items[1].ver, removed_at);
    st_roster_items_free(items, n);
    ops->close(h);
}

/* max_items = 2; each step: the row put, and what roster_put answers. */
static void test_rfc6121_roster_quota_refuses_new_visible_item_beyond_max(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    static const struct {
        const char *jid;
        int in_roster, removed, pending_in;
        int want;
    } steps[] = {
        {"a@x", 1, 0, 0, 0}, /* the first visible item */
        {"b@x", 1, 0, 0, 0}, /* the second: at the quota now */
        {"c@x", 1, 0, 0, 1}, /* a third visible item */
        {"c@x", 0, 0, 1, 0}, /* an inbound request is not a visible item */
        {"c@x", 1, 0, 1, 1}, /* turning it into one is */
        {"a@x", 1, 0, 0, 0}, /* changing a visible item always works */
        {"d@x", 0, 1, 0, 0}, /* so does storing a tombstone */
        {"b@x", 0, 1, 0, 0}, /* removing b makes room */
        {"c@x", 1, 0, 0, 0}, /* for c */
        {"b@x", 1, 0, 0, 1}, /* reviving a tombstone counts as new */
    };
    long long ver = 0, last = 0;
    int nok = 0;

    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        st_roster_item it = item(steps[i].jid, steps[i].in_roster, steps[i].removed);
        it.pending_in = steps[i].pending_in;
        long long before = ver;
        int rc = ops->roster_put(h, "localhost", "alice", &it, 2, &ver);
        if (rc != steps[i].want)
            fail_msg("step %zu (%s): got %d, want %d", i, it.jid, rc, steps[i].want);
        if (rc == 0) {
            assert_int_equal(ver, last + 1);
            last = ver;
            nok++;
        } else {
            assert_int_equal(ver, before); /* refused: nothing written, no bump */
        }
    }
    st_roster_item *items = NULL;
    size_t n;
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 0, &items, &n, &ver), 0);
    assert_int_equal(ver, nok);
    size_t visible = 0;
    for (size_t i = 0; i < n; i++)
        visible += items[i].in_roster && !items[i].removed;
    assert_int_equal(visible, 2);
    st_roster_items_free(items, n);
    ops->close(h);
}

static void test_roster_rejects_bad_input_and_unknown_users(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    st_roster_item got = {.jid = "sentinel"}, *items = NULL;
    long long ver = 42;
    size_t n;
    const st_roster_item bad[] = {
        {.jid = NULL},
        {.jid = "a@x", .sub = (st_sub)7},
        {.jid = "a@x", .sub = (st_sub)-1},
        {.jid = "a@x", .ngroups = 1, .groups = NULL},
        {.jid = "a@x", .ngroups = 2, .groups = (char *[]){"ok", NULL}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ops->roster_put(h, "localhost", "alice", &bad[i], 0, &ver), -1);
    assert_int_equal(ops->roster_put(h, "localhost", "alice", NULL, 0, &ver), -1);
    assert_int_equal(ver, 42);

    /* The row belongs to a user; there is none to belong to. */
    st_roster_item ok = item("a@x", 1, 0);
    assert_int_equal(ops->roster_put(h, "localhost", "nobody", &ok, 0, &ver), -1);
    assert_int_equal(ops->roster_put(h, NULL, "alice", &ok, 0, &ver), -1);

    /* Nothing was half-written, and the version did not move. */
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 1, &items, &n, &ver), 0);
    assert_int_equal(n, 0);
    assert_int_equal(ver, 0);
    assert_int_equal(ops->roster_get(h, "localhost", "nobody", 1, &items, &n, &ver), 0);
    assert_int_equal(n, 0);

    /* Not found leaves out alone. */
    assert_int_equal(ops->roster_get_item(h, "localhost", "alice", "a@x", &got), 0);
    assert_string_equal(got.jid, "sentinel");
    assert_int_equal(ops->roster_get_item(h, "localhost", "alice", NULL, &got), -1);
    assert_int_equal(ops->roster_purge(h, "localhost", "alice", NULL), -1);

    /* A NULL version pointer is allowed. */
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &ok, 0, NULL), 0);
    ops->close(h);
}

/* A row we did not write is an error, not a crash or a wrong answer. */
static void test_roster_damaged_row_is_an_error(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    st_roster_item ok = item("a@x", 1, 0), got, *items = NULL;
    long long ver;
    size_t n = 0;
    assert_int_equal(ops->roster_put(h, "localhost", "alice", &ok, 0, &ver), 0);
    ops->close(h);
    raw_exec(f->path, "PRAGMA ignore_check_constraints = ON; UPDATE roster SET sub = 9");

    h = open_store(f);
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 1, &items, &n, &ver), -1);
    assert_null(items);
    assert_int_equal(ops->roster_get_item(h, "localhost", "alice", "a@x", &got), -1);
    ops->close(h);
}

static void test_st_roster_item_copy_is_deep(void **state)
{
    char *jid = strdup("a@x"), *name = strdup("A"), *g0 = strdup("g0"), *xml = strdup("<p/>");
    char *groups[] = {g0};
    st_roster_item src = {.jid = jid,
                          .name = name,
                          .groups = groups,
                          .ngroups = 1,
                          .sub = ST_SUB_TO,
                          .pending_in = 1,
                          .pending_in_xml = xml,
                          .ver = 7};
    st_roster_item dst;
    assert_int_equal(st_roster_item_copy(&dst, &src), 0);
    /* Scribble over the source: the copy must not share any of it. */
    jid[0] = name[0] = g0[0] = xml[0] = '#';
    free(jid);
    free(name);
    free(g0);
    free(xml);
    assert_string_equal(dst.jid, "a@x");
    assert_string_equal(dst.name, "A");
    assert_int_equal(dst.ngroups, 1);
    assert_string_equal(dst.groups[0], "g0");
    assert_string_equal(dst.pending_in_xml, "<p/>");
    assert_int_equal(dst.sub, ST_SUB_TO);
    assert_int_equal(dst.ver, 7);
    st_roster_item_free(&dst);
    st_roster_item_free(&dst); /* freed items are empty, so this is harmless */
    st_roster_items_free(NULL, 3);

    st_roster_item none = {.jid = "b@x"};
    assert_int_equal(st_roster_item_copy(&dst, &none), 0);
    assert_null(dst.name);
    assert_null(dst.groups);
    st_roster_item_free(&dst);
}

/* Break the allocator on purpose: count the allocations a call makes, then
 * fail each in turn; the call must fail cleanly (ASan checks for leaks). */
static long alloc_budget = -1; /* allocations left before failing; -1 never */
static long alloc_count;

static void *failing_malloc(size_t n)
{
    alloc_count++;
    if (alloc_budget == 0) return NULL;
    if (alloc_budget > 0) alloc_budget--;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n)
{
    alloc_count++;
    if (alloc_budget == 0) return NULL;
    if (alloc_budget > 0) alloc_budget--;
    return realloc(p, n);
}

static const st_alloc_hooks failing_hooks = {failing_malloc, failing_realloc, free};

static void test_roster_reads_survive_every_allocation_failure(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    long long ver;
    for (int i = 0; i < 5; i++) {
        char jid[32];
        snprintf(jid, sizeof jid, "c%d@x", i);
        st_roster_item it = {.jid = jid,
                             .name = "N",
                             .groups = (char *[]){"a", "b", "c"},
                             .ngroups = (size_t)i % 4,
                             .pending_in_xml = i % 2 ? "<x/>" : NULL,
                             .in_roster = 1};
        assert_int_equal(ops->roster_put(h, "localhost", "alice", &it, 0, &ver), 0);
    }
    st_roster_item *items = NULL, got, copy;
    size_t n;

    st_set_alloc_hooks(&failing_hooks);
    alloc_budget = -1;
    alloc_count = 0;
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 1, &items, &n, &ver), 0);
    long total = alloc_count;
    st_roster_items_free(items, n);
    assert_true(total > 5);
    for (long k = 0; k < total; k++) {
        alloc_budget = k;
        items = NULL;
        n = 0;
        assert_int_equal(ops->roster_get(h, "localhost", "alice", 1, &items, &n, &ver), -1);
        assert_null(items);
    }

    alloc_budget = -1;
    assert_int_equal(ops->roster_get_item(h, "localhost", "alice", "c3@x", &got), 1);
    alloc_count = 0;
    assert_int_equal(st_roster_item_copy(&copy, &got), 0);
    total = alloc_count;
    st_roster_item_free(&copy);
    for (long k = 0; k < total; k++) {
        alloc_budget = k;
        assert_int_equal(st_roster_item_copy(&copy, &got), -1);
        assert_null(copy.jid);
    }
    alloc_budget = -1;
    st_set_alloc_hooks(NULL);
    st_roster_item_free(&got);
    ops->close(h);
}

/* ---- offline messages ---- */

typedef struct collected {
    long long id[16];
    char *val[16];
    char key[16][32];
    size_t len[16];
    int n;
} collected;

static void collect_offline(void *ud, long long id, const char *xml, size_t len)
{
    collected *c = ud;
    assert_true(c->n < 16);
    assert_int_equal(xml[len], '\0'); /* handed out NUL-terminated */
    c->id[c->n] = id;
    c->len[c->n] = len;
    c->val[c->n] = malloc(len + 1);
    assert_non_null(c->val[c->n]);
    memcpy(c->val[c->n], xml, len + 1);
    c->n++;
}

static void collected_reset(collected *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->val[i]);
    memset(c, 0, sizeof *c);
}

static void test_xep0160_offline_quota_refuses_beyond_max(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    collected c = {.n = 0};

    assert_int_equal(ops->offline_count(h, "localhost", "alice"), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ops->offline_push(h, "localhost", "alice", "<m/>", 4, 3), 0);
    assert_int_equal(ops->offline_push(h, "localhost", "alice", "<fourth/>", 9, 3), 1);
    assert_int_equal(ops->offline_count(h, "localhost", "alice"), 3);
    /* The quota is per user, and 0 means none. */
    assert_int_equal(ops->offline_push(h, "localhost", "bob", "<m/>", 4, 3), 0);
    assert_int_equal(ops->offline_push(h, "localhost", "alice", "<m/>", 4, 0), 0);
    assert_int_equal(ops->offline_count(h, "localhost", "alice"), 4);
    assert_int_equal(ops->offline_push(h, "localhost", "alice", "<m/>", 4, 5), 0);
    assert_int_equal(ops->offline_push(h, "localhost", "alice", "<m/>", 4, 5), 1);
    assert_int_equal(ops->offline_list(h, "localhost", "alice", collect_offline, &c), 5);
    for (int i = 0; i < c.n; i++)
        assert_string_equal(c.val[i], "<m/>");
    collected_reset(&c);

    /* No such user: an error, not a silent drop. */
    assert_int_equal(ops->offline_push(h, "localhost", "nobody", "<m/>", 4, 0), -1);
    assert_int_equal(ops->offline_push(h, "localhost", "alice", NULL, 4, 0), -1);
    assert_int_equal(ops->offline_count(h, "localhost", "nobody"), 0);
    ops->close(h);
}

static void test_offline_ids_grow_and_delete_upto(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    collected c = {.n = 0};
    const char *msgs[] = {"<one/>", "<two/>", "<three/>"};

    for (int i = 0; i < 3; i++)
        assert_int_equal(ops->offline_push(h, "localhost", "alice", msgs[i], strlen(msgs[i]), 0),
                         0);
    assert_int_equal(ops->offline_list(h, "localhost", "alice", collect_offline, &c), 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(c.val[i], msgs[i]); /* oldest first */
        if (i) assert_true(c.id[i] > c.id[i - 1]);
    }
    long long second = c.id[1], last = c.id[2];
    collected_reset(&c);

    /* Deleting what was delivered: everything up to the id seen. */
    assert_int_equal(ops->offline_delete(h, "localhost", "alice", second), 2);
    assert_int_equal(ops->offline_delete(h, "localhost", "alice", second), 0);
    assert_int_equal(ops->offline_count(h, "localhost", "alice"), 1);
    assert_int_equal(ops->offline_delete(h, "localhost", "alice", last), 1);

    /* With the newest deleted, a new message still gets a larger id, so a
     * stale "delete up to" can never take a message stored later. */
    assert_int_equal(ops->offline_push(h, "localhost", "alice", "<four/>", 7, 0), 0);
    assert_int_equal(ops->offline_delete(h, "localhost", "alice", last), 0);
    assert_int_equal(ops->offline_list(h, "localhost", "alice", collect_offline, &c), 1);
    assert_true(c.id[0] > last);
    collected_reset(&c);
    ops->close(h);
    h = open_store(f);
    assert_int_equal(ops->offline_push(h, "localhost", "bob", "<five/>", 7, 0), 0);
    assert_int_equal(ops->offline_list(h, "localhost", "bob", collect_offline, &c), 1);
    assert_true(c.id[0] > last + 1);
    collected_reset(&c);
    ops->close(h);
}

/* Values are bytes: NULs, invalid UTF-8, nothing at all, a mebibyte. */
typedef struct blob_case {
    const char *label;
    const char *bytes;
    size_t len;
} blob_case;

static char *mib_value(void)
{
    char *p = malloc(1 << 20);
    assert_non_null(p);
    for (size_t i = 0; i < 1 << 20; i++)
        p[i] = (char)(i * 7 % 256); /* includes NUL bytes */
    return p;
}

static void blob_cases(blob_case *out, char *mib)
{
    const blob_case fixed[] = {
        {"empty", "", 0},
        {"nul bytes", "a\0b\0\0c", 6},
        {"only nul", "\0", 1},
        {"invalid utf-8", "\xff\xfe\xc3(", 4},
        {"unicode", "<m>\xf0\x9f\x8c\xb9 \xd0\x94</m>", 14},
        {"1 MiB", mib, 1 << 20},
    };
    memcpy(out, fixed, sizeof fixed);
}
#define NBLOB 6

static void test_offline_stanzas_round_trip_any_bytes(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    char *mib = mib_value();
    blob_case cases[NBLOB];
    collected c = {.n = 0};
    blob_cases(cases, mib);

    for (int i = 0; i < NBLOB; i++)
        assert_int_equal(
            ops->offline_push(h, "localhost", "alice", cases[i].bytes, cases[i].len, 0), 0);
    assert_int_equal(ops->offline_list(h, "localhost", "alice", collect_offline, &c), NBLOB);
    for (int i = 0; i < NBLOB; i++) {
        if (c.len[i] != cases[i].len) fail_msg("%s: length %zu", cases[i].label, c.len[i]);
        assert_memory_equal(c.val[i], cases[i].bytes, cases[i].len);
    }
    collected_reset(&c);
    free(mib);
    ops->close(h);
}

/* ---- keyed data ---- */

static void collect_kv(void *ud, const char *key, const char *val, size_t len)
{
    collected *c = ud;
    assert_true(c->n < 16);
    assert_int_equal(val[len], '\0');
    snprintf(c->key[c->n], sizeof c->key[0], "%s", key);
    c->len[c->n] = len;
    c->val[c->n] = malloc(len + 1);
    assert_non_null(c->val[c->n]);
    memcpy(c->val[c->n], val, len + 1);
    c->n++;
}

static void kv_put_str(void *h, const char *store, const char *key, const char *val)
{
    assert_int_equal(ops->kv_put(h, "localhost", "alice", store, key, val, strlen(val)), 0);
}

/* The keys of a store, oldest first, joined by spaces. */
static void assert_kv_keys(void *h, const char *store, const char *want)
{
    collected c = {.n = 0};
    char got[256] = "";
    size_t used = 0;
    int n = ops->kv_list(h, "localhost", "alice", store, collect_kv, &c);
    assert_int_equal(n, c.n);
    for (int i = 0; i < c.n; i++)
        used += (size_t)snprintf(got + used, sizeof got - used, "%s%s", i ? " " : "", c.key[i]);
    collected_reset(&c);
    assert_string_equal(got, want);
}

static void test_kv_replaced_key_becomes_newest(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    char *val = NULL;
    size_t len = 0;

    kv_put_str(h, "pep", "a", "1");
    kv_put_str(h, "pep", "b", "2");
    kv_put_str(h, "pep", "c", "3");
    assert_kv_keys(h, "pep", "a b c");
    kv_put_str(h, "pep", "a", "1'");
    assert_kv_keys(h, "pep", "b c a");
    assert_int_equal(ops->kv_get(h, "localhost", "alice", "pep", "a", &val, &len), 1);
    assert_int_equal(len, 2);
    assert_string_equal(val, "1'");
    free(val);
    /* Replacing the newest keeps it newest. */
    kv_put_str(h, "pep", "a", "1''");
    assert_kv_keys(h, "pep", "b c a");
    /* Deleting the newest and putting again still orders by last put. */
    assert_int_equal(ops->kv_del(h, "localhost", "alice", "pep", "a"), 0);
    kv_put_str(h, "pep", "b", "2'");
    assert_kv_keys(h, "pep", "c b");
    ops->close(h);
}

static void test_kv_trim_keeps_newest(void **state)
{
    fixture *f = *state;
    static const struct {
        size_t keep;
        int deleted;
        const char *left;
    } cases[] = {
        {10, 0, "k1 k2 k3 k4 k5"},
        {5, 0, "k1 k2 k3 k4 k5"},
        {4, 1, "k2 k3 k4 k5"},
        {2, 3, "k4 k5"},
        {1, 4, "k5"},
        {0, 5, ""},
        {(size_t)-1, 0, "k1 k2 k3 k4 k5"},
    };
    void *h = open_with_users(f);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(ops->kv_del(h, "localhost", "alice", "mam", NULL) >= 0, 1);
        for (int k = 1; k <= 5; k++) {
            char key[8];
            snprintf(key, sizeof key, "k%d", k);
            kv_put_str(h, "mam", key, "v");
        }
        kv_put_str(h, "other", "x", "v"); /* another store is not touched */
        assert_int_equal(ops->kv_trim(h, "localhost", "alice", "mam", cases[i].keep),
                         cases[i].deleted);
        assert_kv_keys(h, "mam", cases[i].left);
        assert_kv_keys(h, "other", "x");
    }
    ops->close(h);
}

static void test_kv_get_del_per_store_and_user(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    char *val = (char *)"untouched";
    size_t len = 99;

    assert_int_equal(ops->kv_get(h, "localhost", "alice", "vcard", "", &val, &len), 0);
    assert_string_equal(val, "untouched");
    kv_put_str(h, "vcard", "", "<vCard/>"); /* the empty key is a key */
    kv_put_str(h, "private", "a", "p");
    kv_put_str(h, "private", "b", "q");
    assert_int_equal(ops->kv_put(h, "localhost", "bob", "private", "a", "bob", 3), 0);
    assert_int_equal(ops->kv_put(h, "localhost", "nobody", "private", "a", "x", 1), -1);
    assert_int_equal(ops->kv_put(h, "localhost", "alice", "private", "a", NULL, 1), -1);
    assert_int_equal(ops->kv_put(h, "localhost", "alice", NULL, "a", "x", 1), -1);

    assert_int_equal(ops->kv_get(h, "localhost", "alice", "vcard", "", &val, &len), 1);
    assert_string_equal(val, "<vCard/>");
    free(val);
    assert_int_equal(ops->kv_get(h, "localhost", "alice", "vcard", "a", &val, &len), 0);

    assert_int_equal(ops->kv_del(h, "localhost", "alice", "private", "a"), 0);
    assert_int_equal(ops->kv_del(h, "localhost", "alice", "private", "a"), 1);
    assert_int_equal(ops->kv_del(h, "localhost", "alice", "private", NULL), 0);
    assert_int_equal(ops->kv_del(h, "localhost", "alice", "private", NULL), 1);
    assert_kv_keys(h, "private", "");
    assert_kv_keys(h, "vcard", "");
    /* bob's entry of the same store and key is his own. */
    assert_int_equal(ops->kv_get(h, "localhost", "bob", "private", "a", &val, &len), 1);
    assert_string_equal(val, "bob");
    free(val);
    ops->close(h);
}

static void test_kv_values_round_trip_any_bytes(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    char *mib = mib_value();
    blob_case cases[NBLOB];
    blob_cases(cases, mib);
    /* Keys are text: unicode and a long one too. */
    char long_key[8192];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = 0;
    const char *keys[NBLOB] = {"e",      "\xe9\x8d\xb5",         "k\xf0\x9f\x8c\xb9",
                               long_key, "'; DROP TABLE kv; --", "mib"};

    for (int i = 0; i < NBLOB; i++)
        assert_int_equal(
            ops->kv_put(h, "localhost", "alice", "bytes", keys[i], cases[i].bytes, cases[i].len),
            0);
    for (int i = 0; i < NBLOB; i++) {
        char *val = NULL;
        size_t len = 0;
        assert_int_equal(ops->kv_get(h, "localhost", "alice", "bytes", keys[i], &val, &len), 1);
        if (len != cases[i].len) fail_msg("%s: length %zu", cases[i].label, len);
        assert_memory_equal(val, cases[i].bytes, len);
        assert_int_equal(val[len], '\0');
        free(val);
    }
    collected c = {.n = 0};
    assert_int_equal(ops->kv_list(h, "localhost", "alice", "bytes", collect_kv, &c), NBLOB);
    for (int i = 0; i < NBLOB; i++) {
        assert_int_equal(c.len[i], cases[i].len);
        assert_memory_equal(c.val[i], cases[i].bytes, cases[i].len);
    }
    collected_reset(&c);
    free(mib);
    ops->close(h);
}

/* ---- users own their data ---- */

static int raw_count_user(const char *path, const char *table, const char *user)
{
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM %s WHERE host = 'localhost' AND username = '%s'", table, user);
    return raw_int(path, sql);
}

static void test_user_delete_cascades_to_roster_offline_and_kv(void **state)
{
    fixture *f = *state;
    static const char *const tables[] = {"roster", "roster_groups", "roster_version", "offline",
                                         "kv"};
    void *h = open_with_users(f);
    const char *users[] = {"alice", "bob"};
    long long ver;
    for (int u = 0; u < 2; u++) {
        st_roster_item it = item("c@x", 1, 0);
        it.groups = (char *[]){"g"};
        it.ngroups = 1;
        assert_int_equal(ops->roster_put(h, "localhost", users[u], &it, 0, &ver), 0);
        assert_int_equal(ops->offline_push(h, "localhost", users[u], "<m/>", 4, 0), 0);
        assert_int_equal(ops->kv_put(h, "localhost", users[u], "s", "k", "v", 1), 0);
    }
    ops->close(h);
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++)
        assert_int_equal(raw_count_user(f->path, tables[t], "alice"), 1);

    /* A fresh connection: foreign keys must be on in every one, not just
     * the one that created the tables. */
    h = open_store(f);
    assert_int_equal(ops->user_delete(h, "localhost", "alice"), 0);
    ops->close(h);
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++) {
        assert_int_equal(raw_count_user(f->path, tables[t], "alice"), 0);
        assert_int_equal(raw_count_user(f->path, tables[t], "bob"), 1);
    }

    /* A new account of the same name starts from nothing. */
    h = open_store(f);
    st_user_creds c;
    st_roster_item *items = NULL;
    size_t n;
    make_creds(&c, "pw");
    assert_int_equal(ops->user_create(h, "localhost", "alice", &c), 0);
    assert_int_equal(ops->roster_get(h, "localhost", "alice", 1, &items, &n, &ver), 0);
    assert_int_equal(n, 0);
    assert_int_equal(ver, 0);
    assert_int_equal(ops->offline_count(h, "localhost", "alice"), 0);
    assert_kv_keys(h, "s", "");
    ops->close(h);
}

/* The v1 schema exactly as released, and one account in it. */
static const char v1_sql[] = "CREATE TABLE schema_version (version INTEGER NOT NULL);"
                             "INSERT INTO schema_version VALUES (1);"
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
                             "  created       INTEGER NOT NULL,"
                             "  PRIMARY KEY (host, username)"
                             ");";

static void test_migration_v1_to_v2_keeps_users(void **state)
{
    fixture *f = *state;
    st_user_creds c, got;
    make_creds(&c, "pencil");

    /* Write the account through SQLite directly, as v1 code would have. */
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, v1_sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "INSERT INTO users VALUES ('localhost', 'olduser', ?1, ?2,"
                                        " ?3, ?4, ?5, ?6, ?7, ?8, 1700000000)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_blob(st, 1, c.sha1.salt, (int)c.sha1.salt_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c.sha1.iterations);
    sqlite3_bind_blob(st, 3, c.sha1.stored_key, 20, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, c.sha1.server_key, 20, SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, c.sha256.salt, (int)c.sha256.salt_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, c.sha256.iterations);
    sqlite3_bind_blob(st, 7, c.sha256.stored_key, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 8, c.sha256.server_key, 32, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);

    void *h = open_store(f);
    assert_true(ops->schema_version(h) >= 2); /* v2 and anything later */
    assert_int_equal(ops->user_get(h, "localhost", "olduser", &got), 1);
    assert_cred_equal(&got.sha256, &c.sha256);
    assert_int_equal(st_scram_cred_check(&got.sha1, "pencil"), 1);

    /* The new tables work for the old account, and hang off it. */
    st_roster_item it = item("friend@x", 1, 0);
    long long ver;
    assert_int_equal(ops->roster_put(h, "localhost", "olduser", &it, 0, &ver), 0);
    assert_int_equal(ops->offline_push(h, "localhost", "olduser", "<m/>", 4, 0), 0);
    assert_int_equal(ops->kv_put(h, "localhost", "olduser", "s", "k", "v", 1), 0);
    ops->close(h);
    int v = raw_int(f->path, "SELECT version FROM schema_version");
    assert_true(v >= 2);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_version"), 1);

    /* Reopening does not migrate again. */
    h = open_store(f);
    assert_int_equal(ops->schema_version(h), v);
    assert_int_equal(ops->user_delete(h, "localhost", "olduser"), 0);
    assert_int_equal(ops->offline_count(h, "localhost", "olduser"), 0);
    ops->close(h);
    assert_int_equal(raw_count_user(f->path, "roster", "olduser"), 0);
}

/* ---- asynchronous front ---- */

#define NJOBS 50

typedef struct job {
    int index;
    int rc; /* result of the store call, set on the storage thread */
    pthread_t work_thread;
    int *order; /* shared: indexes in completion order */
    int *ndone;
    pthread_t *done_thread;
    st_user_creds *creds;
} job;

static void job_work(void *h, void *arg)
{
    job *j = arg;
    char name[32];
    j->work_thread = pthread_self();
    snprintf(name, sizeof name, "user%03d", j->index);
    j->rc = st_store_sqlite.user_create(h, "localhost", name, j->creds);
}

static void job_done(void *arg)
{
    job *j = arg;
    j->order[(*j->ndone)++] = j->index;
    *j->done_thread = pthread_self();
    assert_int_equal(j->rc, 0);
    assert_false(pthread_equal(j->work_thread, pthread_self()));
    free(j);
}

static void test_async_completions_in_order_on_dispatching_thread(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    int order[NJOBS], ndone = 0;
    pthread_t done_thread = 0;
    st_user_creds c;
    make_creds(&c, "pw");

    st_storage *s = st_storage_start(&st_store_sqlite, f->path, err, sizeof err);
    if (!s) fail_msg("start: %s", err);
    assert_ptr_equal(st_storage_ops(s), &st_store_sqlite);
    for (int i = 0; i < NJOBS; i++) {
        job *j = calloc(1, sizeof *j);
        assert_non_null(j);
        *j = (job){
            .index = i, .order = order, .ndone = &ndone, .done_thread = &done_thread, .creds = &c};
        assert_int_equal(st_storage_submit(s, job_work, job_done, j), 0);
    }
    /* The loop's view: wait for the fd, dispatch, repeat. */
    while (ndone < NJOBS) {
        struct pollfd p = {.fd = st_storage_fd(s), .events = POLLIN};
        assert_int_equal(poll(&p, 1, 5000), 1);
        st_storage_dispatch(s);
    }
    assert_true(pthread_equal(done_thread, pthread_self()));
    for (int i = 0; i < NJOBS; i++)
        assert_int_equal(order[i], i);

    /* Drained: the fd is no longer readable. */
    struct pollfd p = {.fd = st_storage_fd(s), .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0);
    st_storage_stop(s);

    /* The work really reached the database. */
    void *h = open_store(f);
    assert_int_equal(st_store_sqlite.user_list(h, "localhost", ignore_name, NULL), NJOBS);
    st_store_sqlite.close(h);
}

static void test_async_stop_finishes_queued_jobs(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    int order[NJOBS], ndone = 0;
    pthread_t done_thread = 0;
    st_user_creds c;
    make_creds(&c, "pw");

    st_storage *s = st_storage_start(&st_store_sqlite, f->path, err, sizeof err);
    assert_non_null(s);
    for (int i = 0; i < NJOBS; i++) {
        job *j = calloc(1, sizeof *j);
        assert_non_null(j);
        *j = (job){
            .index = i, .order = order, .ndone = &ndone, .done_thread = &done_thread, .creds = &c};
        assert_int_equal(st_storage_submit(s, job_work, job_done, j), 0);
    }
    /* No dispatch: stop must run every job and every done callback. */
    st_storage_stop(s);
    assert_int_equal(ndone, NJOBS);
    for (int i = 0; i < NJOBS; i++)
        assert_int_equal(order[i], i);
    assert_true(pthread_equal(done_thread, pthread_self()));
}

/* Batched wake-ups (what the server's loop uses): submitting only queues;
 * the jobs run when the loop kicks before waiting, all of them, in order.
 * A lost kick would hang every storage request, so both halves matter. */
static void test_async_batched_wakeups_run_on_the_kick_not_before(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    int order[NJOBS + 1], ndone = 0;
    pthread_t done_thread = 0;
    st_user_creds c;
    make_creds(&c, "pw");

    st_storage *s = st_storage_start(&st_store_sqlite, f->path, err, sizeof err);
    assert_non_null(s);
    st_storage_batch_wakeups(s);
    for (int i = 0; i <= NJOBS; i++) {
        job *j = calloc(1, sizeof *j);
        assert_non_null(j);
        *j = (job){
            .index = i, .order = order, .ndone = &ndone, .done_thread = &done_thread, .creds = &c};
        assert_int_equal(st_storage_submit(s, job_work, job_done, j), 0);
        if (i > 0) continue;
        /* the first one alone, kicked: afterwards the thread is idle, waiting */
        st_storage_kick(s);
        struct pollfd p = {.fd = st_storage_fd(s), .events = POLLIN};
        assert_int_equal(poll(&p, 1, 5000), 1);
        st_storage_dispatch(s);
        assert_int_equal(ndone, 1);
        usleep(100 * 1000);
    }
    /* queued, not kicked: nothing runs */
    struct pollfd p = {.fd = st_storage_fd(s), .events = POLLIN};
    assert_int_equal(poll(&p, 1, 300), 0);
    assert_int_equal(ndone, 1);
    st_storage_kick(s);
    while (ndone < NJOBS + 1) {
        p.revents = 0;
        assert_int_equal(poll(&p, 1, 5000), 1);
        st_storage_dispatch(s);
    }
    for (int i = 0; i <= NJOBS; i++)
        assert_int_equal(order[i], i);
    st_storage_stop(s);
}

static void test_async_start_reports_open_failure(void **state)
{
    char err[256] = "";
    st_storage *s = st_storage_start(&st_store_sqlite, "/nonexistent/dir/x.db", err, sizeof err);
    assert_null(s);
    assert_non_null(strstr(err, "/nonexistent/dir/x.db"));
}

/* ---- message archive (XEP-0313) ---- */

static st_mam_entry mam_entry(const char *user, const char *id, long long ts, const char *with,
                              const char *xml)
{
    return (st_mam_entry){.host = "localhost", .user = user, .id = id, .ts = ts,
                          .with_bare = with, .with_res = "r", .xml = xml, .len = strlen(xml)};
}

/* Archive n messages for alice, ids "m0".."m{n-1}", ts = i, with alternating
 * between bob and carol. */
static void mam_fill(void *h, int n)
{
    char ids[64][8];
    st_mam_entry e[64];
    int res[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++) {
        snprintf(ids[i], sizeof ids[i], "m%d", i);
        e[i] = mam_entry("alice", ids[i], i, i % 2 ? "carol@x" : "bob@x", "<message/>");
    }
    assert_int_equal(ops->mam_append(h, e, (size_t)n, res), 0);
    for (int i = 0; i < n; i++) assert_int_equal(res[i], ST_MAM_STORED);
}

static void assert_page(const st_mam_page *p, const char *first, const char *last, size_t n)
{
    assert_int_equal(p->n, n);
    if (!n) return;
    assert_string_equal(p->rows[0].id, first);
    assert_string_equal(p->rows[n - 1].id, last);
}

static void test_xep0313_archive_append_dedups_ids_and_needs_the_user(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    st_mam_entry e[3] = {mam_entry("alice", "a", 1, "bob@x", "<message><body>1</body></message>"),
                         mam_entry("alice", "a", 2, "bob@x", "<message/>"),
                         mam_entry("nobody", "b", 3, "bob@x", "<message/>")};
    int res[3];
    assert_int_equal(ops->mam_append(h, e, 3, res), 0);
    assert_int_equal(res[0], ST_MAM_STORED);
    assert_int_equal(res[1], ST_MAM_DUPLICATE); /* routed again: one copy */
    assert_int_equal(res[2], ST_MAM_NO_USER);
    /* the same id in another user's archive is another message */
    st_mam_entry b = mam_entry("bob", "a", 4, "alice@x", "<message/>");
    assert_int_equal(ops->mam_append(h, &b, 1, res), 0);
    assert_int_equal(res[0], ST_MAM_STORED);

    st_mam_query q;
    st_mam_page p;
    st_mam_query_init(&q);
    q.max = 10;
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.count, 1);
    assert_true(p.complete);
    assert_int_equal(p.rows[0].ts, 1);
    assert_string_equal(p.rows[0].xml, "<message><body>1</body></message>");
    st_mam_page_free(&p);
    /* user_delete takes the archive with it */
    assert_int_equal(ops->user_delete(h, "localhost", "alice"), 0);
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_int_equal(p.count, 0);
    st_mam_page_free(&p);
    ops->close(h);
}

static void test_xep0059_archive_pages_forwards_and_backwards_under_a_filter(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    st_mam_query q;
    st_mam_page p;
    mam_fill(h, 20); /* bob has m0, m2, ... m18 */
    st_mam_query_init(&q);
    q.with_bare = "bob@x";
    q.max = 4;
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_page(&p, "m0", "m6", 4);
    assert_int_equal(p.count, 10);
    assert_int_equal(p.first_index, 0);
    assert_false(p.complete);
    st_mam_page_free(&p);
    q.rsm_after = "m14";
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_page(&p, "m16", "m18", 2);
    assert_int_equal(p.first_index, 8);
    assert_true(p.complete);
    st_mam_page_free(&p);
    /* <before/> empty: the last page; then before its first */
    q.rsm_after = NULL;
    q.rsm_before_set = 1;
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_page(&p, "m12", "m18", 4);
    assert_int_equal(p.first_index, 6);
    assert_false(p.complete);
    st_mam_page_free(&p);
    q.rsm_before = "m4";
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_page(&p, "m0", "m2", 2);
    assert_true(p.complete);
    st_mam_page_free(&p);
    /* an id not in the archive: item-not-found */
    q.rsm_before = "nope";
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 1);
    /* max 0: the count alone */
    st_mam_query_init(&q);
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_int_equal(p.n, 0);
    assert_int_equal(p.count, 20);
    st_mam_page_free(&p);
    ops->close(h);
}

static void test_xep0313_archive_filters_time_ids_and_range(void **state)
{
    fixture *f = *state;
    void *h = open_with_users(f);
    st_mam_query q;
    st_mam_page p;
    const char *ids[] = {"m7", "m3", "m5"};
    mam_fill(h, 10);
    st_mam_query_init(&q);
    q.max = 50;
    q.start = 3;
    q.end = 5;
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_page(&p, "m3", "m5", 3);
    st_mam_page_free(&p);
    st_mam_query_init(&q);
    q.max = 50;
    q.ids = ids;
    q.nids = 3;
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_page(&p, "m3", "m7", 3); /* archive order, not the order asked */
    st_mam_page_free(&p);
    q.nids = 0;
    q.after_id = "m2";
    q.before_id = "m6";
    q.with_bare = "carol@x";
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_page(&p, "m3", "m5", 2);
    st_mam_page_free(&p);
    q.with_res = "other";
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_int_equal(p.n, 0);
    assert_true(p.complete);
    st_mam_page_free(&p);
    q.after_id = "gone";
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 1);
    /* retention: everything older than ts 6 goes, for the host */
    assert_int_equal(ops->mam_expire(h, "localhost", 6), 6);
    st_mam_query_init(&q);
    q.max = 50;
    assert_int_equal(ops->mam_query(h, "localhost", "alice", &q, &p), 0);
    assert_page(&p, "m6", "m9", 4);
    st_mam_page_free(&p);
    ops->close(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_find_knows_sqlite),
        cmocka_unit_test_setup_teardown(test_open_by_many_processes_at_once_on_a_new_file, setup,
                                        teardown),
        cmocka_unit_test(test_creds_make_both_hashes_default_iterations),
        cmocka_unit_test_setup_teardown(test_user_create_get_duplicate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_set_creds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_list_in_name_order_per_host, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schema_migrates_once_and_reopen_keeps_data, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_schema_newer_than_code_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_missing_directory_fails_clearly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_creds_survive_reopen_and_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_file_mode_0600_whatever_the_umask, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rfc6121_2_roster_version_increments_on_every_change,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_rfc6121_2_roster_item_round_trips_every_field, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_xep0237_tombstones_returned_only_when_asked, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_rfc6121_roster_quota_refuses_new_visible_item_beyond_max, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roster_rejects_bad_input_and_unknown_users, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_roster_damaged_row_is_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roster_reads_survive_every_allocation_failure, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_xep0160_offline_quota_refuses_beyond_max, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_offline_ids_grow_and_delete_upto, setup, teardown),
        cmocka_unit_test_setup_teardown(test_offline_stanzas_round_trip_any_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_replaced_key_becomes_newest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_trim_keeps_newest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_get_del_per_store_and_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_values_round_trip_any_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_delete_cascades_to_roster_offline_and_kv, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_migration_v1_to_v2_keeps_users, setup, teardown),
        cmocka_unit_test(test_st_roster_item_copy_is_deep),
        cmocka_unit_test_setup_teardown(test_async_completions_in_order_on_dispatching_thread,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_stop_finishes_queued_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_batched_wakeups_run_on_the_kick_not_before, setup,
                                        teardown),
        cmocka_unit_test(test_async_start_reports_open_failure),
        cmocka_unit_test_setup_teardown(test_xep0313_archive_append_dedups_ids_and_needs_the_user,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_xep0059_archive_pages_forwards_and_backwards_under_a_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_xep0313_archive_filters_time_ids_and_range, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
