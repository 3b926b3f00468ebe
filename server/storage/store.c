/* store.c - the back-end registry, credential derivation, and the
 * asynchronous front that keeps storage off the event loop.
 *
 * Design note (the thread model)
 *
 * One storage thread owns the back-end handle: it opens it, runs every job
 * and closes it, so SQLite is only ever touched from that thread. The loop
 * thread talks to it through two FIFO queues under one mutex:
 *
 *   loop:    st_storage_submit()  -> jobs queue  -> condvar wakes the thread
 *   storage: work(h, arg)         -> done queue  -> eventfd becomes readable
 *   loop:    st_storage_dispatch() drains the eventfd, runs done(arg)
 *
 * With one thread, completions come back in submission order. The storage
 * thread allocates nothing and never calls back into the loop; a job moves
 * between the queues as one node, allocated by submit and freed by dispatch,
 * both on the loop thread. st_storage_stop() lets the thread finish every
 * queued job, joins it, then runs the outstanding done callbacks so every
 * arg gets freed by its owner.
 *
 * Design note (group commit)
 *
 * A grouped job (st_storage_submit_grouped) promises that it can share a
 * transaction and be run again. The thread takes the longest run of
 * consecutive grouped jobs at the head of the queue (only what is queued
 * already: it never waits for more) and, when the run has two jobs or more
 * and the back end has the group hooks, runs them as group_begin, work,
 * work, ..., group_commit; only then do their done() go to the done queue,
 * so an XEP-0198 ack barrier grouped behind writes still answers only
 * after they committed. Queue order is kept exactly: a plain job ends a
 * run and runs alone after it. ST_STORAGE_GROUP_MAX caps a run, which
 * bounds how long the write lock is held and how long the first job's
 * done() waits for the last.
 *
 * Failure never loses or duplicates a write. After each job the thread
 * asks group_alive(); if the transaction ended early, or the commit
 * fails, it rolls the group back and runs every job of the run alone, in
 * order: the ones that already ran (their writes were undone with the
 * group) and the rest. The back end refuses any commit but the group's
 * own while a group is open, so a job that kept writing after the
 * transaction died wrote nothing that would be stored twice. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "starling/alloc.h"
#include "server/log.h"
#include "server/storage/storage.h"

/* ---- back-end registry ---- */

static const st_store_ops *const backends[] = {
    &st_store_sqlite,
};

const st_store_ops *st_store_find(const char *name)
{
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
        if (strcmp(backends[i]->name, name) == 0) return backends[i];
    return NULL;
}

/* ---- credentials ---- */

int st_user_creds_make(st_user_creds *out, const char *password)
{
    memset(out, 0, sizeof *out);
    if (!password || !*password) return -1;
    if (st_scram_cred_make(&out->sha1, ST_SCRAM_SHA1, password, NULL, 0, 0) < 0 ||
        st_scram_cred_make(&out->sha256, ST_SCRAM_SHA256, password, NULL, 0, 0) < 0) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    return 0;
}

/* ---- roster items ---- */

void st_roster_item_free(st_roster_item *it)
{
    if (!it) return;
    st_free(it->jid);
    st_free(it->name);
    for (size_t i = 0; i < it->ngroups; i++)
        st_free(it->groups[i]);
    st_free(it->groups);
    st_free(it->pending_in_xml);
    /* Empty, not dangling: freeing it again or reusing it is harmless. */
    memset(it, 0, sizeof *it);
}

void st_roster_items_free(st_roster_item *items, size_t n)
{
    if (!items) return;
    for (size_t i = 0; i < n; i++)
        st_roster_item_free(&items[i]);
    st_free(items);
}

/* NULL stays NULL; anything else is duplicated. */
static int dup_opt(char **dst, const char *src)
{
    *dst = NULL;
    if (!src) return 0;
    return (*dst = st_strdup(src)) ? 0 : -1;
}

int st_roster_item_copy(st_roster_item *dst, const st_roster_item *src)
{
    memset(dst, 0, sizeof *dst);
    if (!src || (src->ngroups && !src->groups)) return -1;
    /* Scalars first; the owned members are replaced below. */
    *dst = *src;
    dst->jid = dst->name = dst->pending_in_xml = NULL;
    dst->groups = NULL;
    dst->ngroups = 0;
    if (dup_opt(&dst->jid, src->jid) < 0 || dup_opt(&dst->name, src->name) < 0 ||
        dup_opt(&dst->pending_in_xml, src->pending_in_xml) < 0)
        goto fail;
    if (src->ngroups) {
        if (src->ngroups > SIZE_MAX / sizeof *dst->groups) goto fail;
        dst->groups = st_calloc(src->ngroups, sizeof *dst->groups);
        if (!dst->groups) goto fail;
        /* ngroups counts what is copied, so free() after a failure sees
         * only real strings. */
        for (; dst->ngroups < src->ngroups; dst->ngroups++)
            if (!src->groups[dst->ngroups] ||
                !(dst->groups[dst->ngroups] = st_strdup(src->groups[dst->ngroups])))
                goto fail;
    }
    return 0;
fail:
    st_roster_item_free(dst);
    return -1;
}

/* ---- asynchronous front ---- */

typedef struct st_job {
    void (*work)(void *h, void *arg);
    void (*done)(void *arg);
    void *arg;
    int grouped; /* may share a transaction (st_storage_submit_grouped) */
    struct st_job *next;
} st_job;

typedef struct st_jobq {
    st_job *head, *tail;
} st_jobq;

struct st_storage {
    const st_store_ops *ops;
    char *dsn;
    void *h; /* back-end handle: storage thread only */
    pthread_t thread;
    int efd;

    pthread_mutex_t mu;
    pthread_cond_t cv; /* jobs queued, stop requested, or open finished */
    st_jobq jobs;      /* waiting to run */
    st_jobq done;      /* ran, waiting for dispatch */
    int stopping;      /* no new jobs; thread exits when jobs is empty */
    int opened;        /* 0 opening, 1 open, -1 open failed */
    char open_err[256];
    long inflight;     /* submitted, done() not yet run (loop thread only) */
    int batch_wakeups; /* submit only queues; st_storage_kick wakes (loop thread only) */
    int unwoken;       /* jobs queued since the last kick (loop thread only) */
};

static void jobq_push(st_jobq *q, st_job *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

static st_job *jobq_pop(st_jobq *q)
{
    st_job *j = q->head;
    if (j) {
        q->head = j->next;
        if (!q->head) q->tail = NULL;
        j->next = NULL;
    }
    return j;
}

/* Hand a job that ran to the loop. Called without the lock. */
static void job_finished(st_storage *s, st_job *j)
{
    uint64_t one = 1;
    pthread_mutex_lock(&s->mu);
    /* The loop takes the whole done queue per dispatch, so only a queue
     * going from empty to not needs the signal. Only fails with EAGAIN
     * when the counter would overflow, and then the fd is readable
     * anyway: the job goes out with that dispatch. */
    if (!s->done.head && write(s->efd, &one, sizeof one) < 0) {
    }
    jobq_push(&s->done, j);
    pthread_mutex_unlock(&s->mu);
}

/* Run each job of the chain alone, in order, handing each to the loop as
 * soon as it ran. */
static void run_alone(st_storage *s, void *h, st_job *j)
{
    while (j) {
        st_job *next = j->next;
        j->work(h, j->arg);
        job_finished(s, j);
        j = next;
    }
}

static int group_supported(const st_store_ops *ops)
{
    return ops->group_begin && ops->group_alive && ops->group_commit && ops->group_rollback;
}

/* Run a chain of n >= 2 grouped jobs in one transaction; see the design
 * note. */
static void run_group(st_storage *s, void *h, st_job *first, size_t n)
{
    const st_store_ops *ops = s->ops;
    size_t ran = 0;
    int ok = 1;

    if (!group_supported(ops) || ops->group_begin(h) != 0) {
        run_alone(s, h, first);
        return;
    }
    for (st_job *j = first; j; j = j->next) {
        j->work(h, j->arg);
        ran++;
        if (!ops->group_alive(h)) {
            ok = 0;
            break;
        }
    }
    if (ok && ops->group_commit(h) == 0) {
        pthread_mutex_lock(&s->mu);
        uint64_t count = n;
        if (!s->done.head && write(s->efd, &count, sizeof count) < 0) {
            /* EAGAIN: see job_finished */
        }
        for (st_job *j = first, *next; j; j = next) {
            next = j->next;
            jobq_push(&s->done, j);
        }
        pthread_mutex_unlock(&s->mu);
        return;
    }
    ops->group_rollback(h);
    if (ok)
        st_warn("storage", "a group of %zu jobs failed to commit; running them again one at a time",
                n);
    else
        st_warn("storage",
                "a group transaction ended early, after %zu of %zu jobs; running them again one "
                "at a time",
                ran, n);
    run_alone(s, h, first);
}

static void *storage_main(void *p)
{
    st_storage *s = p;
    char err[sizeof s->open_err];
    void *h = NULL;

    err[0] = 0;
    int rc = s->ops->open(&h, s->dsn, err, sizeof err);
    pthread_mutex_lock(&s->mu);
    s->h = h;
    s->opened = rc == 0 ? 1 : -1;
    if (rc != 0)
        snprintf(s->open_err, sizeof s->open_err, "%s", err[0] ? err : "cannot open the store");
    pthread_cond_broadcast(&s->cv);
    if (rc != 0) {
        pthread_mutex_unlock(&s->mu);
        return NULL;
    }
    for (;;) {
        while (!s->jobs.head && !s->stopping)
            pthread_cond_wait(&s->cv, &s->mu);
        st_job *first = s->jobs.head;
        if (!first) break; /* stopping and nothing left */
        /* Detach the head: one plain job, or the run of grouped jobs. */
        st_job *last = first;
        size_t n = 1;
        if (first->grouped)
            while (n < ST_STORAGE_GROUP_MAX && last->next && last->next->grouped) {
                last = last->next;
                n++;
            }
        s->jobs.head = last->next;
        if (!s->jobs.head) s->jobs.tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&s->mu);
        if (n == 1)
            run_alone(s, h, first);
        else
            run_group(s, h, first, n);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    s->ops->close(h);
    return NULL;
}

st_storage *st_storage_start(const st_store_ops *ops, const char *dsn, char *err, size_t errlen)
{
    st_storage *s = NULL;
    int mu_init = 0, cv_init = 0;

    if (!ops) {
        snprintf(err, errlen, "no storage back end");
        return NULL;
    }
    s = st_calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->efd = -1;
    if (!(s->dsn = st_strdup(dsn ? dsn : ""))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    s->ops = ops;
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        snprintf(err, errlen, "cannot create the storage mutex");
        goto fail;
    }
    mu_init = 1;
    if (pthread_cond_init(&s->cv, NULL) != 0) {
        snprintf(err, errlen, "cannot create the storage condition variable");
        goto fail;
    }
    cv_init = 1;
    int rc = pthread_create(&s->thread, NULL, storage_main, s);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the storage thread: %s", strerror(rc));
        goto fail;
    }
    /* Wait for open so the caller learns now whether the store works. */
    pthread_mutex_lock(&s->mu);
    while (s->opened == 0)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    if (s->opened < 0) {
        pthread_join(s->thread, NULL);
        snprintf(err, errlen, "%s", s->open_err);
        goto fail;
    }
    return s;
fail:
    if (s) {
        if (cv_init) pthread_cond_destroy(&s->cv);
        if (mu_init) pthread_mutex_destroy(&s->mu);
        if (s->efd >= 0) close(s->efd);
        st_free(s->dsn);
        st_free(s);
    }
    return NULL;
}

void st_storage_stop(st_storage *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    /* The thread ran every queued job; hand their args back to their owners. */
    st_storage_dispatch(s);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    close(s->efd);
    st_free(s->dsn);
    st_free(s);
}

int st_storage_fd(const st_storage *s)
{
    return s->efd;
}

const st_store_ops *st_storage_ops(const st_storage *s)
{
    return s->ops;
}

void st_storage_dispatch(st_storage *s)
{
    uint64_t n;
    st_jobq ready;

    /* The storage thread queues and signals under the mutex, so draining the
     * counter and taking the queue under it too keeps them in step: no
     * completion is missed and the fd is never left readable for nothing. */
    pthread_mutex_lock(&s->mu);
    if (read(s->efd, &n, sizeof n) < 0) {
        /* EAGAIN: nothing signalled (stop() dispatches without a signal). */
    }
    ready = s->done;
    s->done.head = s->done.tail = NULL;
    pthread_mutex_unlock(&s->mu);
    /* Outside the lock: done() may submit more work. */
    for (st_job *j; (j = jobq_pop(&ready));) {
        s->inflight--;
        j->done(j->arg);
        st_free(j);
    }
}

long st_storage_inflight(const st_storage *s)
{
    return s ? s->inflight : 0;
}

static int submit(st_storage *s, void (*work)(void *h, void *arg), void (*done)(void *arg),
                  void *arg, int grouped)
{
    if (!s || !work || !done) return -1;
    st_job *j = st_malloc(sizeof *j);
    if (!j) return -1;
    j->work = work;
    j->done = done;
    j->arg = arg;
    j->grouped = grouped;
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        st_free(j);
        return -1;
    }
    jobq_push(&s->jobs, j);
    s->inflight++;
    if (s->batch_wakeups)
        s->unwoken = 1;
    else
        pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void st_storage_batch_wakeups(st_storage *s)
{
    if (s) s->batch_wakeups = 1;
}

void st_storage_kick(st_storage *s)
{
    if (!s || !s->unwoken) return;
    s->unwoken = 0;
    /* The jobs were queued under the mutex, so a thread about to wait has
     * either seen them or is waiting and gets this signal. */
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int st_storage_submit(st_storage *s, void (*work)(void *h, void *arg), void (*done)(void *arg),
                      void *arg)
{
    return submit(s, work, done, arg, 0);
}

int st_storage_submit_grouped(st_storage *s, void (*work)(void *h, void *arg),
                              void (*done)(void *arg), void *arg)
{
    return submit(s, work, done, arg, 1);
}
