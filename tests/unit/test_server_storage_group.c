/* test_server_storage_group.c - group commit on the storage thread.
 *
 * st_storage_submit_grouped lets consecutive jobs share one transaction.
 * What these tests hold it to, each against a fresh SQLite file:
 *
 *  - a group of N writes is one transaction: a second connection sees none
 *    of them while the group runs, all of them once any done() runs;
 *  - done() runs in submission order across grouped and plain jobs, and
 *    only once the job's write is committed (seen from outside);
 *  - a group that fails (its commit, or SQLite ending the transaction in
 *    the middle) is rolled back and every job runs again alone: every
 *    write is stored exactly once, even the one a job tried after the
 *    transaction had died;
 *  - an op keeps its all-or-nothing semantics inside a group: a roster_put
 *    that fails half-way undoes only itself;
 *  - a group never exceeds ST_STORAGE_GROUP_MAX jobs, and a back end
 *    without the group hooks runs grouped jobs alone.
 *
 * A plain "gate" job that blocks until the test has queued everything
 * makes the groups deterministic: the storage thread finds the whole queue
 * behind it. Work functions run on the storage thread, so they only record
 * what they see; the assertions run on the test's thread. */
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
#include <unistd.h>

#include <sqlite3.h>

#include "server/storage/storage.h"

#define STORAGE_FIXTURE_DIR "/tmp/st-group-XXXXXX"
#include "tests/unit/storage_fixture.h"

/* ---- an outside view of the file (any thread; no cmocka here) ---- */

/* The first column of the first row, from a connection of its own, so it
 * sees only what is committed. -1 on error. */
static int outside_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int v = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* How many stored copies of offline message xml an outside reader sees. */
static int outside_copies(const char *path, const char *xml)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM offline WHERE xml = CAST('%s' AS BLOB)", xml);
    return outside_int(path, sql);
}

static void outside_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* ---- the back end, with the group hooks counted ---- */

static struct {
    int begin, commit, rollback;
    int fail_commits; /* how many group commits to fail (without committing) */
} calls;

static int counted_begin(void *h)
{
    calls.begin++;
    return st_store_sqlite.group_begin(h);
}

static int counted_commit(void *h)
{
    if (calls.fail_commits > 0) {
        calls.fail_commits--;
        return -1; /* as a failing COMMIT: the group stays open */
    }
    int rc = st_store_sqlite.group_commit(h);
    if (rc == 0) calls.commit++;
    return rc;
}

static void counted_rollback(void *h)
{
    calls.rollback++;
    st_store_sqlite.group_rollback(h);
}

static st_store_ops counted_ops;

/* A store with alice and bob, started on its storage thread. */
static st_storage *start(const fixture *f, const st_store_ops *ops, const char *extra_sql)
{
    void *h = NULL;
    char err[256] = "";
    st_user_creds c;
    if (st_store_sqlite.open(&h, f->path, err, sizeof err) != 0) fail_msg("open: %s", err);
    assert_int_equal(st_user_creds_make(&c, "pw"), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "alice", &c), 0);
    assert_int_equal(st_store_sqlite.user_create(h, "localhost", "bob", &c), 0);
    st_store_sqlite.close(h);
    if (extra_sql) outside_exec(f->path, extra_sql);
    memset(&calls, 0, sizeof calls);
    st_storage *s = st_storage_start(ops, f->path, err, sizeof err);
    if (!s) fail_msg("start: %s", err);
    return s;
}

/* ---- the gate: a plain job that holds the thread until the queue is full ---- */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open;

static void gate_work(void *h, void *arg)
{
    pthread_mutex_lock(&gate_mu);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

static void gate_done(void *arg) {}

static void gate_close(st_storage *s)
{
    gate_open = 0;
    assert_int_equal(st_storage_submit(s, gate_work, gate_done, NULL), 0);
}

static void gate_release(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* ---- the jobs ---- */

enum {
    PUSH,        /* store offline message msg for alice */
    PUSH_DIE,    /* store msg, end the transaction (a RAISE(ROLLBACK)), store msg2 */
    ROSTER_PUT,  /* put contact jid into alice's roster, in group grp */
    ROSTER_READ, /* read alice's roster */
    NOOP,        /* an ack barrier */
};

#define MAXJOBS 400

typedef struct gjob {
    int index, action;
    const char *path;
    char msg[32], msg2[32];
    const char *jid, *grp;
    /* recorded by work (the last run's, unless said otherwise) */
    int runs;
    int rc, rc2;
    int rc2_first; /* rc2 of the first run */
    long long ver;
    size_t nitems;
    int outside; /* offline rows a second connection saw during work */
    int inside;  /* offline rows the store's own handle saw */
    /* shared */
    int *order, *ndone;
} gjob;

static void gjob_work(void *h, void *arg)
{
    gjob *j = arg;
    const st_store_ops *ops = &st_store_sqlite;
    j->runs++;
    j->rc = j->rc2 = 0;
    switch (j->action) {
    case PUSH:
        j->rc = ops->offline_push(h, "localhost", "alice", j->msg, strlen(j->msg), 0);
        break;
    case PUSH_DIE:
        j->rc = ops->offline_push(h, "localhost", "alice", j->msg, strlen(j->msg), 0);
        /* the trigger rolls back the whole transaction, as SQLite does by
         * itself on SQLITE_FULL or IOERR; this put itself always fails */
        (void)ops->kv_put(h, "localhost", "alice", "die", "k", "v", 1);
        j->rc2 = ops->offline_push(h, "localhost", "alice", j->msg2, strlen(j->msg2), 0);
        if (j->runs == 1) j->rc2_first = j->rc2;
        break;
    case ROSTER_PUT: {
        char *groups[] = {(char *)j->grp};
        st_roster_item it = {.jid = (char *)j->jid,
                             .sub = ST_SUB_BOTH,
                             .in_roster = 1,
                             .groups = groups,
                             .ngroups = 1};
        j->ver = -1;
        j->rc = ops->roster_put(h, "localhost", "alice", &it, 0, &j->ver);
        break;
    }
    case ROSTER_READ: {
        st_roster_item *items = NULL;
        j->nitems = 0;
        j->rc = ops->roster_get(h, "localhost", "alice", 0, &items, &j->nitems, &j->ver);
        st_roster_items_free(items, j->nitems);
        break;
    }
    case NOOP:
        break;
    }
    j->inside = ops->offline_count(h, "localhost", "alice");
    j->outside = outside_int(j->path, "SELECT count(*) FROM offline");
}

/* On the test's thread: in order, and the job's writes are committed. */
static void gjob_done(void *arg)
{
    gjob *j = arg;
    j->order[(*j->ndone)++] = j->index;
    if (j->action == PUSH || j->action == PUSH_DIE)
        assert_int_equal(outside_copies(j->path, j->msg), 1);
    if (j->action == PUSH_DIE) assert_int_equal(outside_copies(j->path, j->msg2), 1);
}

typedef struct run {
    gjob *jobs;
    int n, ndone;
    int order[MAXJOBS];
} run;

static gjob *add(run *r, const fixture *f, int action)
{
    assert_true(r->n < MAXJOBS);
    gjob *j = &r->jobs[r->n];
    *j = (gjob){
        .index = r->n, .action = action, .path = f->path, .order = r->order, .ndone = &r->ndone};
    snprintf(j->msg, sizeof j->msg, "m%d", r->n);
    snprintf(j->msg2, sizeof j->msg2, "m%d-after", r->n);
    r->n++;
    return j;
}

static void submit(st_storage *s, gjob *j, int grouped)
{
    int rc = grouped ? st_storage_submit_grouped(s, gjob_work, gjob_done, j)
                     : st_storage_submit(s, gjob_work, gjob_done, j);
    assert_int_equal(rc, 0);
}

/* The loop's view: wait for the fd, dispatch, until every job is done. */
static void wait_done(st_storage *s, run *r)
{
    while (r->ndone < r->n) {
        struct pollfd p = {.fd = st_storage_fd(s), .events = POLLIN};
        assert_int_equal(poll(&p, 1, 10000), 1);
        st_storage_dispatch(s);
    }
    for (int i = 0; i < r->n; i++)
        assert_int_equal(r->order[i], i);
}

static run *new_run(void)
{
    run *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->jobs = calloc(MAXJOBS, sizeof *r->jobs);
    assert_non_null(r->jobs);
    return r;
}

static void free_run(run *r)
{
    free(r->jobs);
    free(r);
}

/* The SQLite back end with the counting group hooks above. */
static st_storage *start_counted(const fixture *f, const char *extra_sql)
{
    counted_ops = st_store_sqlite;
    counted_ops.group_begin = counted_begin;
    counted_ops.group_commit = counted_commit;
    counted_ops.group_rollback = counted_rollback;
    return start(f, &counted_ops, extra_sql);
}

/* n grouped pushes queued behind the gate (so they meet in the queue and
 * form groups), then the storage thread let go. */
static void push_gated(st_storage *s, run *r, const fixture *f, int n)
{
    gate_close(s);
    for (int i = 0; i < n; i++)
        submit(s, add(r, f, PUSH), 1);
    gate_release();
}

/* ---- the tests ---- */

static void test_group_commit_n_writes_are_one_transaction(void **state)
{
    fixture *f = *state;
    enum { N = 100 };
    st_storage *s = start(f, &st_store_sqlite, NULL);
    run *r = new_run();
    gate_close(s);
    for (int i = 0; i < N; i++)
        submit(s, add(r, f, PUSH), 1);
    submit(s, add(r, f, NOOP), 1); /* an ack barrier queued behind them */
    gate_release();
    wait_done(s, r);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r->jobs[i].rc, 0);
        assert_int_equal(r->jobs[i].runs, 1);
        /* the group sees its own writes; nobody else sees any before the end */
        assert_int_equal(r->jobs[i].inside, i + 1);
        assert_int_equal(r->jobs[i].outside, 0);
    }
    assert_int_equal(r->jobs[N].outside, 0);
    assert_int_equal(outside_int(f->path, "SELECT count(*) FROM offline"), N);
    st_storage_stop(s);
    free_run(r);
}

static void test_group_commit_counts_one_commit_per_group(void **state)
{
    fixture *f = *state;
    st_storage *s = start_counted(f, NULL);
    run *r = new_run();
    push_gated(s, r, f, 50);
    wait_done(s, r);
    assert_int_equal(calls.begin, 1);
    assert_int_equal(calls.commit, 1);
    assert_int_equal(calls.rollback, 0);
    st_storage_stop(s);
    free_run(r);
}

static void test_group_commit_done_order_is_submit_order_across_mixed_jobs(void **state)
{
    fixture *f = *state;
    /* G grouped, P plain. Runs of two or more G are groups: 6 of them. */
    static const char pattern[] = "GGPGGGPPGPGGGGGGPGGPGPPGGGGGGGGGGGGGGGGGGGGGGPGG";
    st_storage *s = start_counted(f, NULL);
    run *r = new_run();
    gate_close(s);
    for (const char *p = pattern; *p; p++)
        submit(s, add(r, f, PUSH), *p == 'G');
    gate_release();
    /* and more while the thread is busy: whatever groups they form, the
     * order holds */
    for (int i = 0; i < 60; i++)
        submit(s, add(r, f, i % 7 == 3 ? NOOP : PUSH), i % 5 != 0);
    wait_done(s, r);
    assert_true(calls.begin >= 6);
    assert_int_equal(calls.commit, calls.begin);
    assert_int_equal(calls.rollback, 0);
    for (int i = 0; i < r->n; i++)
        assert_int_equal(r->jobs[i].runs, 1);
    st_storage_stop(s);
    free_run(r);
}

static void test_group_commit_caps_a_group(void **state)
{
    fixture *f = *state;
    enum { N = ST_STORAGE_GROUP_MAX + 44 };
    st_storage *s = start_counted(f, NULL);
    run *r = new_run();
    push_gated(s, r, f, N);
    wait_done(s, r);
    assert_int_equal(calls.begin, 2);
    assert_int_equal(calls.commit, 2);
    /* the first group's last job did not see the second group's writes */
    assert_int_equal(r->jobs[ST_STORAGE_GROUP_MAX - 1].inside, ST_STORAGE_GROUP_MAX);
    assert_int_equal(r->jobs[ST_STORAGE_GROUP_MAX].outside, ST_STORAGE_GROUP_MAX);
    st_storage_stop(s);
    free_run(r);
}

static void test_group_commit_failed_commit_reruns_every_job_alone_once(void **state)
{
    fixture *f = *state;
    enum { N = 20 };
    st_storage *s = start_counted(f, NULL);
    calls.fail_commits = 1;
    run *r = new_run();
    push_gated(s, r, f, N);
    wait_done(s, r); /* done() checks each message is stored exactly once */
    assert_int_equal(calls.begin, 1);
    assert_int_equal(calls.commit, 0);
    assert_int_equal(calls.rollback, 1);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r->jobs[i].runs, 2);
        assert_int_equal(r->jobs[i].rc, 0);
        /* alone, each write is committed when the job ends */
        assert_int_equal(r->jobs[i].outside, i + 1);
    }
    assert_int_equal(outside_int(f->path, "SELECT count(*) FROM offline"), N);
    st_storage_stop(s);
    free_run(r);
}

/* RAISE(ROLLBACK) ends the whole transaction, like SQLite does by itself on
 * SQLITE_FULL or SQLITE_IOERR; the statement after it would run in
 * autocommit mode. */
static const char die_trigger[] = "CREATE TRIGGER die BEFORE INSERT ON kv WHEN NEW.store = 'die'"
                                  " BEGIN SELECT RAISE(ROLLBACK, 'forced'); END;";

static void test_group_commit_transaction_dying_midway_stores_every_write_once(void **state)
{
    fixture *f = *state;
    enum { N = 10, DIE = 4 };
    st_storage *s = start_counted(f, die_trigger);
    run *r = new_run();
    gate_close(s);
    for (int i = 0; i < N; i++)
        submit(s, add(r, f, i == DIE ? PUSH_DIE : PUSH), 1);
    gate_release();
    wait_done(s, r); /* done() checks msg (and msg2) stored exactly once */
    assert_int_equal(calls.begin, 1);
    assert_int_equal(calls.commit, 0);
    assert_int_equal(calls.rollback, 1);
    for (int i = 0; i < N; i++) {
        /* the group stopped after the job that killed it; those ran twice */
        assert_int_equal(r->jobs[i].runs, i <= DIE ? 2 : 1);
        assert_int_equal(r->jobs[i].rc, 0);
    }
    /* Inside the dead group, the write after the rollback was refused
     * instead of committing alone; run alone, it was stored. */
    assert_int_equal(r->jobs[DIE].rc2_first, -1);
    assert_int_equal(r->jobs[DIE].rc2, 0);
    assert_int_equal(outside_int(f->path, "SELECT count(*) FROM offline"), N + 1);
    assert_int_equal(outside_int(f->path, "SELECT count(*) FROM kv"), 0);
    st_storage_stop(s);
    free_run(r);
}

/* RAISE(ABORT) fails one statement and leaves the transaction standing:
 * a roster_put that fails after bumping the version and writing the row. */
static const char fail_group_trigger[] =
    "CREATE TRIGGER fail_group BEFORE INSERT ON roster_groups WHEN NEW.grp = 'fail'"
    " BEGIN SELECT RAISE(ABORT, 'forced'); END;";

static void test_group_commit_failing_roster_put_rolls_back_only_itself(void **state)
{
    fixture *f = *state;
    st_storage *s = start_counted(f, fail_group_trigger);
    run *r = new_run();
    gate_close(s);
    gjob *a = add(r, f, ROSTER_PUT);
    a->jid = "a@example.org";
    a->grp = "friends";
    gjob *b = add(r, f, ROSTER_PUT);
    b->jid = "b@example.org";
    b->grp = "fail";
    gjob *c = add(r, f, ROSTER_PUT);
    c->jid = "c@example.org";
    c->grp = "work";
    gjob *m = add(r, f, PUSH);
    gjob *rd = add(r, f, ROSTER_READ);
    for (int i = 0; i < r->n; i++)
        submit(s, &r->jobs[i], 1);
    gate_release();
    wait_done(s, r);
    assert_int_equal(calls.begin, 1);
    assert_int_equal(calls.commit, 1);
    assert_int_equal(calls.rollback, 0);
    assert_int_equal(a->rc, 0);
    assert_int_equal(a->ver, 1);
    assert_int_equal(b->rc, -1);
    assert_int_equal(c->rc, 0);
    assert_int_equal(c->ver, 2); /* b's version bump was undone with b */
    assert_int_equal(m->rc, 0);
    /* a read inside the group sees the group's state */
    assert_int_equal(rd->rc, 0);
    assert_int_equal(rd->nitems, 2);
    assert_int_equal(rd->ver, 2);
    for (int i = 0; i < r->n; i++)
        assert_int_equal(r->jobs[i].runs, 1);
    st_storage_stop(s);
    /* committed: a and c with their groups, not b, version 2 */
    assert_int_equal(outside_int(f->path, "SELECT count(*) FROM roster WHERE username = 'alice'"),
                     2);
    assert_int_equal(
        outside_int(f->path, "SELECT count(*) FROM roster WHERE jid = 'b@example.org'"), 0);
    assert_int_equal(outside_int(f->path, "SELECT count(*) FROM roster_groups"), 2);
    assert_int_equal(
        outside_int(f->path, "SELECT ver FROM roster_version WHERE username = 'alice'"), 2);
    free_run(r);
}

static void test_group_commit_back_end_without_hooks_runs_jobs_alone(void **state)
{
    fixture *f = *state;
    enum { N = 10 };
    counted_ops = st_store_sqlite;
    counted_ops.group_begin = NULL;
    counted_ops.group_alive = NULL;
    counted_ops.group_commit = NULL;
    counted_ops.group_rollback = NULL;
    st_storage *s = start(f, &counted_ops, NULL);
    run *r = new_run();
    push_gated(s, r, f, N);
    wait_done(s, r);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r->jobs[i].runs, 1);
        assert_int_equal(r->jobs[i].outside, i + 1); /* committed on its own */
    }
    st_storage_stop(s);
    free_run(r);
}

static void test_group_commit_stop_runs_queued_groups(void **state)
{
    fixture *f = *state;
    enum { N = 30 };
    st_storage *s = start(f, &st_store_sqlite, NULL);
    run *r = new_run();
    gate_close(s);
    for (int i = 0; i < N; i++)
        submit(s, add(r, f, PUSH), i % 4 != 0);
    gate_release();
    st_storage_stop(s); /* runs every job and every done(), in order */
    assert_int_equal(r->ndone, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(r->order[i], i);
    assert_int_equal(outside_int(f->path, "SELECT count(*) FROM offline"), N);
    free_run(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_group_commit_n_writes_are_one_transaction, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_counts_one_commit_per_group, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_group_commit_done_order_is_submit_order_across_mixed_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_caps_a_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_failed_commit_reruns_every_job_alone_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_group_commit_transaction_dying_midway_stores_every_write_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_failing_roster_put_rolls_back_only_itself,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_back_end_without_hooks_runs_jobs_alone,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_stop_runs_queued_groups, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
