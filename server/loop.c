/* loop.c - epoll event loop with a timer heap and deferred work.
 *
 * Level-triggered epoll: a connection that stops reading because of its rate
 * limit or read budget is simply woken again on the next iteration, which is
 * what keeps one flooding client from starving the others. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>
#include "server/loop.h"
#include "starling/alloc.h"

#define MAX_EVENTS 256

struct st_loop {
    int epfd;
    int stop;
    st_timer **heap;
    size_t nheap, capheap;
    st_deferred *deferred;
    void (*before_wait)(void *ud);
    void *before_wait_ud;
};

uint64_t st_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

st_loop *st_loop_new(void)
{
    st_loop *l = st_calloc(1, sizeof *l);
    if (!l) return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        st_free(l);
        return NULL;
    }
    return l;
}

void st_loop_free(st_loop *l)
{
    if (!l) return;
    close(l->epfd);
    st_free(l->heap);
    st_free(l);
}

static uint32_t to_epoll(unsigned ev)
{
    uint32_t e = 0;
    if (ev & ST_EV_READ) e |= EPOLLIN | EPOLLRDHUP;
    if (ev & ST_EV_WRITE) e |= EPOLLOUT;
    return e;
}

int st_io_add(st_loop *l, st_io *io, int fd, unsigned events, st_io_cb cb, void *ud)
{
    struct epoll_event e = {.events = to_epoll(events), .data.ptr = io};
    io->fd = fd;
    io->events = events;
    io->cb = cb;
    io->ud = ud;
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &e) != 0) return -1;
    io->added = 1;
    return 0;
}

int st_io_set(st_loop *l, st_io *io, unsigned events)
{
    if (!io->added) return -1;
    if (io->events == events) return 0;
    struct epoll_event e = {.events = to_epoll(events), .data.ptr = io};
    io->events = events;
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, io->fd, &e);
}

void st_io_del(st_loop *l, st_io *io)
{
    if (!io->added) return;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    io->added = 0;
    io->cb = NULL;
}

/* ---- timer heap (min-heap on due_ms; idx is 1-based so 0 means unarmed) ---- */

static void heap_swap(st_loop *l, size_t a, size_t b)
{
    st_timer *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->idx = a + 1;
    l->heap[b]->idx = b + 1;
}

static void heap_up(st_loop *l, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (l->heap[p]->due_ms <= l->heap[i]->due_ms) break;
        heap_swap(l, p, i);
        i = p;
    }
}

static void heap_down(st_loop *l, size_t i)
{
    for (;;) {
        size_t c = 2 * i + 1, m = i;
        if (c < l->nheap && l->heap[c]->due_ms < l->heap[m]->due_ms) m = c;
        if (c + 1 < l->nheap && l->heap[c + 1]->due_ms < l->heap[m]->due_ms) m = c + 1;
        if (m == i) break;
        heap_swap(l, i, m);
        i = m;
    }
}

void st_timer_init(st_timer *t, st_timer_cb cb, void *ud)
{
    memset(t, 0, sizeof *t);
    t->cb = cb;
    t->ud = ud;
}

int st_timer_armed(const st_timer *t)
{
    return t->idx != 0;
}

void st_timer_cancel(st_loop *l, st_timer *t)
{
    if (!t->idx) return;
    size_t i = t->idx - 1;
    t->idx = 0;
    l->nheap--;
    if (i == l->nheap) return;
    l->heap[i] = l->heap[l->nheap];
    l->heap[i]->idx = i + 1;
    heap_up(l, i);
    heap_down(l, l->heap[i]->idx - 1);
}

void st_timer_set(st_loop *l, st_timer *t, uint64_t in_ms)
{
    st_timer_cancel(l, t);
    if (l->nheap == l->capheap) {
        size_t n = l->capheap ? l->capheap * 2 : 64;
        st_timer **h = st_realloc(l->heap, n * sizeof *h);
        if (!h) return; /* TODO: surface OOM; the timer simply does not fire */
        l->heap = h;
        l->capheap = n;
    }
    t->due_ms = st_now_ms() + in_ms;
    l->heap[l->nheap] = t;
    t->idx = ++l->nheap;
    heap_up(l, l->nheap - 1);
}

void st_loop_defer(st_loop *l, st_deferred *d, void (*fn)(void *), void *ud)
{
    d->fn = fn;
    d->ud = ud;
    d->next = l->deferred;
    l->deferred = d;
}

static void run_deferred(st_loop *l)
{
    while (l->deferred) {
        st_deferred *d = l->deferred;
        l->deferred = d->next;
        d->fn(d->ud);
    }
}

void st_loop_run_deferred(st_loop *l)
{
    run_deferred(l);
}

static void run_timers(st_loop *l)
{
    uint64_t now = st_now_ms();
    while (l->nheap && l->heap[0]->due_ms <= now) {
        st_timer *t = l->heap[0];
        st_timer_cancel(l, t);
        t->cb(l, t);
    }
}

void st_loop_before_wait(st_loop *l, void (*fn)(void *ud), void *ud)
{
    l->before_wait = fn;
    l->before_wait_ud = ud;
}

void st_loop_stop(st_loop *l)
{
    l->stop = 1;
}

/* One round: wait up to timeout_ms (-1 = until the next timer), run what
 * is ready, the deferred work and the due timers. 0 or -1. */
int st_loop_run_once(st_loop *l, int timeout_ms)
{
    struct epoll_event ev[MAX_EVENTS];
    int timeout = timeout_ms;
    if (l->before_wait) l->before_wait(l->before_wait_ud);
    if (l->nheap) {
        uint64_t now = st_now_ms(), due = l->heap[0]->due_ms;
        int t = due <= now ? 0 : (int)(due - now > 60000 ? 60000 : due - now);
        if (timeout < 0 || t < timeout) timeout = t;
    }
    int n = epoll_wait(l->epfd, ev, MAX_EVENTS, timeout);
    if (n < 0) return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        st_io *io = ev[i].data.ptr;
        if (!io->added || !io->cb) continue;
        unsigned e = 0;
        if (ev[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) e |= ST_EV_READ;
        if (ev[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) e |= ST_EV_WRITE;
        io->cb(l, io, e);
    }
    run_deferred(l);
    run_timers(l);
    run_deferred(l);
    return 0;
}

int st_loop_run(st_loop *l)
{
    while (!l->stop)
        if (st_loop_run_once(l, -1) != 0) return -1;
    return 0;
}
