/* storage_group.c - offline-message jobs per second through st_storage,
 * one commit per job (plain) or group commit (grouped).
 *
 * Each job does what mod_offline's store_work does: user_get, then
 * offline_push of a 400-byte stanza for one account. The jobs are
 * submitted from this thread, as the event loop would, and completed
 * through the eventfd and st_storage_dispatch(). With -w, at most that many
 * are in flight (a few senders at a time); without, all are queued at once
 * (a burst). Commits are counted at the back-end boundary: a group commit
 * is one, and so is every offline_push made outside a group (one statement
 * in autocommit mode is one transaction); user_get only reads.
 *
 * Bounded: -n jobs (default 20,000), one run, one JSON line on stdout:
 *
 *   build/bench/storage_group [-m plain|grouped] [-n JOBS] [-w WINDOW] [-d DIR]
 *
 * It builds against a tree without group commit too (then only plain),
 * which is how the "before" numbers in docs/internals/storage.md were
 * taken. The database is a fresh file in DIR (default /tmp), removed after. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/storage/storage.h"

static const char *host = "localhost", *user = "alice";
static char xml[401];

/* ---- the back end, with commits counted (storage thread only) ---- */

static st_store_ops bench_ops;
static long commits, groups, in_group;

static int counted_push(void *h, const char *ho, const char *u, const char *x, size_t len,
                        size_t max)
{
    int rc = st_store_sqlite.offline_push(h, ho, u, x, len, max);
    if (!in_group && rc == 0) commits++;
    return rc;
}

#ifdef ST_STORAGE_GROUP_MAX
static int counted_begin(void *h)
{
    int rc = st_store_sqlite.group_begin(h);
    in_group = rc == 0;
    return rc;
}

static int counted_commit(void *h)
{
    int rc = st_store_sqlite.group_commit(h);
    if (rc == 0) {
        commits++;
        groups++;
        in_group = 0;
    }
    return rc;
}

static void counted_rollback(void *h)
{
    in_group = 0;
    st_store_sqlite.group_rollback(h);
}
#endif

/* ---- the jobs ---- */

typedef struct job {
    struct timespec t0;
    int rc;
} job;

static st_storage *store;
static long ndone, nfailed;
static double lat_sum, lat_max;

static double since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void store_work(void *h, void *arg)
{
    job *j = arg;
    const st_store_ops *ops = st_storage_ops(store);
    st_user_creds creds;
    int r = ops->user_get(h, host, user, &creds);
    j->rc = r == 1 ? ops->offline_push(h, host, user, xml, sizeof xml - 1, 0) : -1;
}

static void store_done(void *arg)
{
    job *j = arg;
    double l = since(&j->t0);
    lat_sum += l;
    if (l > lat_max) lat_max = l;
    if (j->rc != 0) nfailed++;
    ndone++;
}

static void dispatch_some(void)
{
    struct pollfd p = {.fd = st_storage_fd(store), .events = POLLIN};
    if (poll(&p, 1, 10000) != 1) {
        fprintf(stderr, "storage_group: no completion for 10 s\n");
        exit(1);
    }
    st_storage_dispatch(store);
}

int main(int argc, char **argv)
{
    long n = 20000, window = 0;
    int grouped = 1, opt;
    const char *dir = "/tmp";
    char tmpl[256], path[300], err[256] = "";

    while ((opt = getopt(argc, argv, "m:n:w:d:")) != -1) {
        switch (opt) {
        case 'm':
            grouped = strcmp(optarg, "grouped") == 0;
            break;
        case 'n':
            n = atol(optarg);
            break;
        case 'w':
            window = atol(optarg);
            break;
        case 'd':
            dir = optarg;
            break;
        default:
            fprintf(stderr, "usage: %s [-m plain|grouped] [-n JOBS] [-w WINDOW] [-d DIR]\n",
                    argv[0]);
            return 2;
        }
    }
#ifndef ST_STORAGE_GROUP_MAX
    if (grouped) {
        fprintf(stderr, "storage_group: this tree has no group commit; use -m plain\n");
        return 2;
    }
#endif
    if (n < 1 || n > 10000000 || window < 0) {
        fprintf(stderr, "storage_group: -n must be 1..10000000, -w >= 0\n");
        return 2;
    }
    memset(xml, 'x', sizeof xml - 1);
    memcpy(xml, "<message", 8);
    snprintf(tmpl, sizeof tmpl, "%s/st-bench-XXXXXX", dir);
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/starling.db", tmpl);

    /* the account, created directly (as starlingctl would) */
    void *h = NULL;
    st_user_creds c;
    if (st_store_sqlite.open(&h, path, err, sizeof err) != 0 || st_user_creds_make(&c, "pw") != 0 ||
        st_store_sqlite.user_create(h, host, user, &c) != 0) {
        fprintf(stderr, "storage_group: setup: %s\n", err);
        return 1;
    }
    st_store_sqlite.close(h);

    bench_ops = st_store_sqlite;
    bench_ops.offline_push = counted_push;
#ifdef ST_STORAGE_GROUP_MAX
    bench_ops.group_begin = counted_begin;
    bench_ops.group_commit = counted_commit;
    bench_ops.group_rollback = counted_rollback;
#endif
    if (!(store = st_storage_start(&bench_ops, path, err, sizeof err))) {
        fprintf(stderr, "storage_group: %s\n", err);
        return 1;
    }
    job *jobs = calloc((size_t)n, sizeof *jobs);
    if (!jobs) return 1;

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        while (window && i - ndone >= window)
            dispatch_some();
        clock_gettime(CLOCK_MONOTONIC, &jobs[i].t0);
        int rc;
#ifdef ST_STORAGE_GROUP_MAX
        if (grouped)
            rc = st_storage_submit_grouped(store, store_work, store_done, &jobs[i]);
        else
#endif
            rc = st_storage_submit(store, store_work, store_done, &jobs[i]);
        if (rc != 0) {
            fprintf(stderr, "storage_group: submit failed\n");
            return 1;
        }
    }
    while (ndone < n)
        dispatch_some();
    double secs = since(&t0);
    st_storage_stop(store);

    printf("{\"bench\":\"storage_group\",\"mode\":\"%s\",\"jobs\":%ld,\"window\":%ld,"
           "\"seconds\":%.3f,\"jobs_per_s\":%.0f,\"commits\":%ld,\"groups\":%ld,"
           "\"failed\":%ld,\"latency_ms_mean\":%.2f,\"latency_ms_max\":%.2f}\n",
           grouped ? "grouped" : "plain", n, window, secs, (double)n / secs, commits, groups,
           nfailed, lat_sum / (double)n * 1e3, lat_max * 1e3);

    free(jobs);
    const char *suffix[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[320];
        snprintf(p, sizeof p, "%s%s", path, suffix[i]);
        unlink(p);
    }
    rmdir(tmpl);
    return nfailed ? 1 : 0;
}
