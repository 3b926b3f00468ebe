/* server.h - starlingd's runtime: the server, its hosts, sessions and routing.
 *
 * Ownership: st_server owns the config, the loop, the storage front, the TLS
 * context, the hosts and every connection. A connection (st_conn, c2s.c)
 * owns its socket, TLS state and parser. A session (st_session) is a bound
 * resource: it is registered by full JID, points at its connection, and is
 * designed to outlive it (stream management will detach conn and keep the
 * session), so routing always goes through the session, never the socket. */
#ifndef STARLING_SERVER_H
#define STARLING_SERVER_H
#include <stdint.h>
#include <time.h>
#include "server/config.h"
#include "server/loop.h"
#include "server/map.h"
#include "server/module.h"
#include "server/storage/storage.h"
#include "starling/jid.h"
#include "starling/stanza.h"

#define ST_MAX_HOST_MODULES 64

typedef struct st_conn st_conn;
struct st_tls_ctx;

typedef struct st_host {
    char *name;
    const st_host_conf *conf; /* points into srv->cfg; replaced on reload */
    const st_module *mods[ST_MAX_HOST_MODULES];
    void *mod_state[ST_MAX_HOST_MODULES];
    size_t nmods;
    int removed; /* dropped by a reload: refuse new streams */
    struct st_server *srv;
    /* c2s: <stream:features/> serialised per stream state (c2s.c
     * features_key), valid while features_gen equals srv->cfg_gen */
    char *features[32];
    size_t features_len[32];
    unsigned long features_gen;
} st_host;

struct st_user;

typedef struct st_session {
    struct st_server *srv;
    st_host *host;
    struct st_user *user;
    st_conn *conn; /* NULL while detached */
    st_jid jid;    /* full JID */
    char *full;    /* "user@host/resource" (key in srv->sessions) */
    char *bare;    /* "user@host" */
    int available; /* sent available presence */
    int initial_sent;    /* has sent its initial presence (RFC 6121 §4.2) */
    int interested;      /* requested the roster: gets roster pushes (§2.1.6) */
    int priority;
    st_stanza *presence; /* last broadcast available presence, or NULL */
    st_map directed;     /* JIDs it sent directed presence to (§4.6), value unused */
    time_t since;
    void *mod_data[8];   /* small per-session slots for modules (see st_session_slot) */
    struct st_sm *sm;    /* stream management state (XEP-0198), or NULL */
    int ending;          /* st_session_end_later() queued */
    unsigned long long serial; /* tells a new session from an old one at the same address */
    struct st_session *next_of_user;
} st_session;

struct st_roster;
struct st_roster_wait;

/* A user known to the server right now: while it has sessions, or while an
 * operation on its roster is under way (an offline user receiving a
 * subscription request). Its roster is loaded once and kept in memory while
 * it lives; every change is written through to storage. */
typedef struct st_user {
    struct st_server *srv;
    st_host *host;
    char *bare; /* key in srv->users */
    char *node;
    st_session *sessions;
    size_t nsessions;
    struct st_roster *roster;      /* NULL until loaded */
    int roster_loading;
    struct st_roster_wait *waiters; /* work waiting for the roster */
    int holds;                      /* operations keeping this user alive */
} st_user;

typedef struct st_server {
    st_config *cfg;
    unsigned long cfg_gen; /* bumped by every reload that took */
    st_loop *loop;
    st_storage *store;
    st_io store_io;
    struct st_tls_ctx *tls;
    st_host **hosts;
    size_t nhosts;
    st_map sessions; /* full JID -> st_session */
    st_map users;    /* bare JID -> st_user */
    st_conn *conns;  /* every live connection */
    size_t nconns;
    int *listen_fds;
    st_io *listen_io;
    size_t nlisten;
    int admin_fd;
    st_io admin_io;
    time_t started;
    int stopping;
    st_timer stop_timer;
    st_timer sweep_timer; /* idle connections give back memory (server.c) */
    size_t released_since_trim;
    unsigned long long parsers_rested; /* idle parsers released so far (status) */
    unsigned long long next_id;
    st_map pending_iqs; /* id -> struct pending_iq (server.c) */
    st_map sm_ids;      /* stream management id -> resumable st_session */
    long held_stanzas;     /* stanzas a module holds for later (blocklist loading) */
    unsigned long held_gen; /* bumped whenever stanzas are held or released */
    st_map guard_ips;      /* client address -> limits state (guard.c) */
    st_map guard_accounts; /* account -> recent authentication failures (guard.c) */
} st_server;

/* ---- server life cycle (server.c) ---- */
st_server *st_server_new(st_config *cfg, char *err, size_t errlen); /* takes cfg */
int st_server_listen(st_server *s, char *err, size_t errlen);
int st_server_run(st_server *s);
void st_server_shutdown(st_server *s); /* system-shutdown to every stream, then stop */
int st_server_reload(st_server *s);    /* SIGHUP: config and certificates */
void st_server_free(st_server *s);
st_host *st_server_host(st_server *s, const char *domain); /* NULL if not served */
/* A unique id for stanzas and streams ("st-" + counter + random). */
void st_server_make_id(st_server *s, char *out, size_t outsz);

/* A module holds (delta > 0) or releases (delta < 0) stanzas it will route
 * later. Stream management acks and shutdown wait for held stanzas, so
 * "acknowledged" and "stopped" never leave a message behind. */
void st_server_note_held(st_server *s, long delta);

/* ---- hosts and module options ---- */
int st_host_has(const st_host *h, const char *module);
void *st_host_mod_state(const st_host *h, const st_module *m);
long long st_host_opt_num(const st_host *h, const st_module *m, const char *opt);
int st_host_opt_bool(const st_host *h, const st_module *m, const char *opt);
const char *st_host_opt_str(const st_host *h, const st_module *m, const char *opt);

/* ---- sessions (session.c) ---- */
/* Register a bound session. If the full JID is taken, the old session's
 * stream is closed with <conflict/> first (RFC 6120 §7.7.2.2 policy: the new
 * session wins). NULL on OOM. */
st_session *st_session_bind(st_server *s, st_host *h, st_conn *c, const st_jid *full);
void st_session_end(st_session *sess); /* unregister and free */
/* End it after the current batch of events (safe inside routing loops). */
void st_session_end_later(st_session *sess);
st_session *st_session_find(st_server *s, const char *full);
st_user *st_user_find(st_server *s, const char *bare);
/* Find or create the user object for node@host (no storage lookup: the
 * account may not exist). NULL on OOM. Pair with st_user_hold/release. */
st_user *st_user_get(st_server *s, st_host *h, const char *node);
void st_user_hold(st_user *u);
/* Frees the user once it has no sessions and no holds. */
void st_user_release(st_user *u);
/* Slot numbers for st_session.mod_data, one per module that needs one. */
enum { ST_SLOT_CARBONS, ST_SLOT_CSI, ST_SLOT_CAPS, ST_SLOT_BLOCKING, ST_SLOT_SM };
/* Queue a stanza to the session's client. Borrows st (refs it if kept). */
int st_session_send(st_session *sess, st_stanza *st);

/* ---- routing (router.c) ---- */
/* A stanza from a bound client session: stamp from, route per RFC 6120 §8/§10. */
void st_router_from_client(st_session *sess, st_stanza *st);
/* A pre-authentication IQ from a connection (XEP-0077). */
void st_router_preauth_iq(st_conn *c, st_host *h, st_stanza *st);
/* Route a stanza generated by the server itself (from already set). Borrows. */
void st_route(st_server *s, st_stanza *st);
/* Run the filter hooks (blocking) for a stanza between local user and peer.
 * ST_HANDLED = it must not pass. For modules that deliver by themselves. */
st_verdict st_route_filter(st_server *s, st_host *h, st_stanza *st, const st_jid *user,
                           const st_jid *peer, int outbound);
/* Queue st to a session with its 'to' set to the given JID, without copying
 * or reserialising the shared stanza (it must have no 'to' of its own).
 * This is how one presence is serialised once for all its recipients. */
int st_session_send_to(st_session *sess, st_stanza *st, const char *to);
/* Send an error reply to st unless st is itself an error or an iq result. */
void st_route_error(st_server *s, st_stanza *st, const char *condition, const char *text);

/* ---- IQs the server sends (e.g. disco#info to a client's caps node) ---- */
/* Route iq (type get/set, 'from' our domain, an 'id' we choose) and call
 * cb(ud, reply) with the result/error, or cb(ud, NULL) after timeout_ms.
 * The reply is borrowed. 0 or -1 (cb never runs). */
int st_server_iq(st_server *s, st_stanza *iq, unsigned timeout_ms,
                 void (*cb)(void *ud, st_stanza *reply), void *ud);
/* Called by the router for results/errors addressed to one of our hosts:
 * 1 if it answered a pending st_server_iq. */
int st_server_iq_reply(st_server *s, st_stanza *reply);

/* ---- IQ helpers for modules ---- */
void st_iq_result(st_iq_ctx *c, st_stanza *reply); /* reply NULL = empty result; borrows */
void st_iq_error(st_iq_ctx *c, const char *condition, const char *text);

/* An IQ answered later (after storage): captures where the answer goes. */
typedef struct st_iq_pending st_iq_pending;
st_iq_pending *st_iq_defer(st_iq_ctx *c);
st_stanza *st_iq_pending_iq(st_iq_pending *p);
st_server *st_iq_pending_server(st_iq_pending *p);
void st_iq_pending_result(st_iq_pending *p, st_stanza *reply); /* frees p */
void st_iq_pending_error(st_iq_pending *p, const char *condition, const char *text); /* frees p */

#endif
