/* guard.h - per-address and per-account limits against floods and guessing.
 *
 * Per client address: open connections (max_connections_per_ip), a token
 * bucket on new connections (connect_rate_per_ip, bursts of twice that), and
 * failed authentications within a window (auth_failures_per_ip), after which
 * the address may not try again until the window has passed. Per account:
 * failed authentications slow the next failure reply down (250 ms doubling
 * to 4 s) instead of locking the account, so an attacker cannot lock its
 * owner out. Tables are bounded: idle entries are dropped when they grow. */
#ifndef STARLING_GUARD_H
#define STARLING_GUARD_H
#include <stdint.h>

struct st_server;

/* 0 = accept (counted until st_guard_disconnect), -1 = refuse (*why says why). */
int st_guard_connect(struct st_server *s, const char *ip, const char **why);
void st_guard_disconnect(struct st_server *s, const char *ip);
/* 1 if this address has used up its failed authentications for now. */
int st_guard_auth_blocked(struct st_server *s, const char *ip);
/* Record a failure; returns how long (ms) to wait before answering it. */
unsigned st_guard_auth_failed(struct st_server *s, const char *ip, const char *account);
void st_guard_auth_ok(struct st_server *s, const char *account);
void st_guard_free(struct st_server *s);

#endif
