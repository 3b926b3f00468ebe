/* loop.h - the event loop: epoll for I/O, a binary heap for timers.
 *
 * Watches and timers are embedded in their owners (no allocation per event),
 * so registering is free and a closed connection cannot leave a dangling
 * callback behind: st_io_del/st_timer_cancel remove them synchronously.
 * Objects that close during a batch of events are freed only after the batch
 * (st_loop_defer), so a later event in the same batch never touches freed
 * memory. One loop per thread; nothing here is shared between loops. */
#ifndef STARLING_LOOP_H
#define STARLING_LOOP_H
#include <stddef.h>
#include <stdint.h>

typedef struct st_loop st_loop;

#define ST_EV_READ 1u
#define ST_EV_WRITE 2u

typedef struct st_io st_io;
typedef void (*st_io_cb)(st_loop *l, st_io *io, unsigned events);
struct st_io {
    int fd;
    unsigned events; /* registered interest */
    int added;
    st_io_cb cb;
    void *ud;
};

typedef struct st_timer st_timer;
typedef void (*st_timer_cb)(st_loop *l, st_timer *t);
struct st_timer {
    uint64_t due_ms;
    size_t idx; /* position in the heap + 1; 0 = not armed */
    st_timer_cb cb;
    void *ud;
};

typedef struct st_deferred {
    void (*fn)(void *ud);
    void *ud;
    struct st_deferred *next;
} st_deferred;

st_loop *st_loop_new(void);
void st_loop_free(st_loop *l);
uint64_t st_now_ms(void); /* monotonic */

/* Start watching io->fd for events (ST_EV_*); 0 or -1 (errno set). */
int st_io_add(st_loop *l, st_io *io, int fd, unsigned events, st_io_cb cb, void *ud);
int st_io_set(st_loop *l, st_io *io, unsigned events);
void st_io_del(st_loop *l, st_io *io);

void st_timer_init(st_timer *t, st_timer_cb cb, void *ud);
void st_timer_set(st_loop *l, st_timer *t, uint64_t in_ms); /* (re)arm */
void st_timer_cancel(st_loop *l, st_timer *t);
int st_timer_armed(const st_timer *t);

/* Run d->fn(d->ud) after the current batch of events (d is owned by caller
 * and must stay valid until then). */
void st_loop_defer(st_loop *l, st_deferred *d, void (*fn)(void *), void *ud);

/* fn(ud) at the start of every round, before waiting for events: for
 * work the round before accumulated and wants to hand on at once (one
 * hook per loop; NULL removes it). */
void st_loop_before_wait(st_loop *l, void (*fn)(void *ud), void *ud);

/* Run the deferred work now (teardown). */
void st_loop_run_deferred(st_loop *l);

/* One round of the loop, waiting at most timeout_ms (-1: until a timer).
 * For tests and fuzzers that drive the server step by step. */
int st_loop_run_once(st_loop *l, int timeout_ms);

/* Run until st_loop_stop. Returns 0, -1 on epoll failure. */
int st_loop_run(st_loop *l);
void st_loop_stop(st_loop *l);

#endif
