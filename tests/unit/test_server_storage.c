/* test_server_storage.c - the SQLite store and the asynchronous front.
 *
 * Each test works on a fresh database in its own temporary directory. The
 * async tests check the two promises the event loop relies on: work runs on
 * the storage thread, completions come back in order on the thread that
 * calls st_storage_dispatch(). */
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
#include <unistd.h>

#include <sqlite3.h>

#include "server/storage/storage.h"

typedef struct fixture {
    char dir[64];
    char path[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/st-storage-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/starling.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    const char *suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char p[160];
        snprintf(p, sizeof p, "%s%s", f->path, suffix[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

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

static void test_async_start_reports_open_failure(void **state)
{
    char err[256] = "";
    st_storage *s = st_storage_start(&st_store_sqlite, "/nonexistent/dir/x.db", err, sizeof err);
    assert_null(s);
    assert_non_null(strstr(err, "/nonexistent/dir/x.db"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_find_knows_sqlite),
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
        cmocka_unit_test_setup_teardown(test_async_completions_in_order_on_dispatching_thread,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_stop_finishes_queued_jobs, setup, teardown),
        cmocka_unit_test(test_async_start_reports_open_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
