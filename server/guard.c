/* guard.c - per-address and per-account limits; see guard.h. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "server/guard.h"
#include "server/server.h"
#include "starling/alloc.h"

#define MAX_ENTRIES 100000

typedef struct ip_entry {
    char ip[48];
    int conns;
    double tokens;
    uint64_t refill_ms;
    int fails;
    time_t fail_start;
} ip_entry;

typedef struct acct_entry {
    char *key;
    int fails;
    time_t last;
} acct_entry;

typedef struct sweep_ctx {
    time_t now, window;
    const char *keys[256];
    int n;
    int accounts;
} sweep_ctx;

static int collect_idle(void *ud, const char *k, void *v)
{
    sweep_ctx *c = ud;
    if (c->accounts) {
        acct_entry *a = v;
        if (c->now - a->last > c->window) c->keys[c->n++] = k;
    } else {
        ip_entry *e = v;
        if (e->conns == 0 && (e->fails == 0 || c->now - e->fail_start > c->window))
            c->keys[c->n++] = k;
    }
    return c->n == 256;
}

/* Keep the tables bounded: drop idle entries when they grow large. */
static void sweep(st_server *s, st_map *m, int accounts)
{
    if (m->count < MAX_ENTRIES) return;
    sweep_ctx c = {.now = time(NULL), .window = s->cfg->auth_failure_window, .accounts = accounts};
    st_map_each(m, collect_idle, &c);
    for (int i = 0; i < c.n; i++) {
        void *v = st_map_del(m, c.keys[i]);
        if (accounts) st_free(((acct_entry *)v)->key);
        st_free(v);
    }
}

static ip_entry *ip_get(st_server *s, const char *ip, int create)
{
    ip_entry *e = st_map_get(&s->guard_ips, ip);
    if (e || !create) return e;
    sweep(s, &s->guard_ips, 0);
    e = st_calloc(1, sizeof *e);
    if (!e) return NULL;
    snprintf(e->ip, sizeof e->ip, "%s", ip);
    e->tokens = 2.0 * s->cfg->connect_rate_per_ip;
    e->refill_ms = st_now_ms();
    if (st_map_put(&s->guard_ips, e->ip, e) != 0) {
        st_free(e);
        return NULL;
    }
    return e;
}

int st_guard_connect(st_server *s, const char *ip, const char **why)
{
    ip_entry *e = ip_get(s, ip, 1);
    if (!e) {
        *why = "out of memory";
        return -1;
    }
    uint64_t now = st_now_ms();
    double burst = 2.0 * s->cfg->connect_rate_per_ip;
    e->tokens += (double)(now - e->refill_ms) * s->cfg->connect_rate_per_ip / 1000.0;
    if (e->tokens > burst) e->tokens = burst;
    e->refill_ms = now;
    if (e->conns >= s->cfg->max_connections_per_ip) {
        *why = "too many connections from this address (max_connections_per_ip)";
        return -1;
    }
    if (e->tokens < 1.0) {
        *why = "connecting too fast (connect_rate_per_ip)";
        return -1;
    }
    e->tokens -= 1.0;
    e->conns++;
    return 0;
}

void st_guard_disconnect(st_server *s, const char *ip)
{
    ip_entry *e = ip_get(s, ip, 0);
    if (e && e->conns > 0) e->conns--;
}

int st_guard_auth_blocked(st_server *s, const char *ip)
{
    ip_entry *e = ip_get(s, ip, 0);
    if (!e || !e->fails) return 0;
    if (time(NULL) - e->fail_start > s->cfg->auth_failure_window) {
        e->fails = 0;
        return 0;
    }
    return e->fails >= s->cfg->auth_failures_per_ip;
}

unsigned st_guard_auth_failed(st_server *s, const char *ip, const char *account)
{
    time_t now = time(NULL);
    ip_entry *e = ip_get(s, ip, 1);
    if (e) {
        if (!e->fails || now - e->fail_start > s->cfg->auth_failure_window) {
            e->fails = 0;
            e->fail_start = now;
        }
        e->fails++;
    }
    if (!account || !*account) return 0;
    acct_entry *a = st_map_get(&s->guard_accounts, account);
    if (!a) {
        sweep(s, &s->guard_accounts, 1);
        a = st_calloc(1, sizeof *a);
        if (!a || !(a->key = st_strdup(account)) || st_map_put(&s->guard_accounts, a->key, a) != 0) {
            if (a) st_free(a->key);
            st_free(a);
            return 0;
        }
    }
    if (now - a->last > s->cfg->auth_failure_window) a->fails = 0;
    a->last = now;
    a->fails++;
    /* the first failure answers at once; then 250 ms, doubling, to 4 s */
    if (a->fails <= 1) return 0;
    unsigned d = 250u << (a->fails - 2 > 4 ? 4 : a->fails - 2);
    return d > 4000 ? 4000 : d;
}

void st_guard_auth_ok(st_server *s, const char *account)
{
    acct_entry *a = account ? st_map_del(&s->guard_accounts, account) : NULL;
    if (a) {
        st_free(a->key);
        st_free(a);
    }
}

static int free_ip(void *ud, const char *k, void *v)
{
    st_free(v);
    return 0;
}

static int free_acct(void *ud, const char *k, void *v)
{
    st_free(((acct_entry *)v)->key);
    st_free(v);
    return 0;
}

void st_guard_free(st_server *s)
{
    st_map_each(&s->guard_ips, free_ip, NULL);
    st_map_free(&s->guard_ips);
    st_map_each(&s->guard_accounts, free_acct, NULL);
    st_map_free(&s->guard_accounts);
}
