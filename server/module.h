/* module.h - modules are data: one const table per module.
 *
 * A module declares its name, the spec it implements, the disco features it
 * adds, the IQ payloads it handles (namespace + element + types + where they
 * may be addressed), its options (type, default, bounds, help) and optional
 * hooks. The core enforces what the table declares: the router dispatches IQs
 * by (namespace, element, type, addressing) and answers everything unclaimed
 * with service-unavailable; the config loader validates "module.option" keys
 * against the option table; disco#info and the compliance table come from the
 * tables. Handlers never re-check what the table promises.
 *
 * Handlers answer ST_PASS (not mine, try the next) or ST_HANDLED (I took it,
 * and I answered or will answer it exactly once). */
#ifndef STARLING_MODULE_H
#define STARLING_MODULE_H
#include "starling/stanza.h"
#include "starling/jid.h"

typedef enum { ST_PASS = 0, ST_HANDLED = 1 } st_verdict;

typedef enum { ST_OPT_BOOL, ST_OPT_INT, ST_OPT_SIZE, ST_OPT_DURATION, ST_OPT_STRING } st_opt_type;

typedef struct st_module_opt {
    const char *name; /* without the "module." prefix */
    st_opt_type type;
    const char *def;  /* default, in config syntax */
    long long min, max; /* bounds for numeric types */
    const char *help;
} st_module_opt;

struct st_server;
struct st_host;
struct st_session;
struct st_conn;

/* Where an IQ may be addressed for a handler to see it. */
#define ST_IQ_GET 1
#define ST_IQ_SET 2
#define ST_TO_HOST 1     /* to the server's domain (or no 'to' after auth, for account IQs) */
#define ST_TO_ACCOUNT 2  /* no 'to', or to the sender's own bare JID (roster, vcard...) */
#define ST_TO_USER 4     /* to another local user's bare JID */
#define ST_PRE_AUTH 8    /* before authentication (XEP-0077 registration) */

typedef struct st_iq_ctx {
    struct st_server *srv;
    struct st_host *host;       /* the host the IQ is for */
    struct st_session *session; /* sender's bound session, NULL if not local/bound */
    struct st_conn *conn;       /* sender's connection for ST_PRE_AUTH, else NULL */
    st_stanza *iq;              /* the request (borrowed) */
    st_node *payload;           /* the child that matched */
    const st_jid *from;         /* NULL before authentication */
    const st_jid *to;
    int type;                   /* ST_IQ_GET or ST_IQ_SET */
} st_iq_ctx;

typedef struct st_iq_handler {
    const char *ns;
    const char *name; /* payload element, NULL = any */
    int types;        /* ST_IQ_GET | ST_IQ_SET */
    int where;        /* ST_TO_* / ST_PRE_AUTH bits */
    st_verdict (*fn)(st_iq_ctx *c);
} st_iq_handler;

/* Stanza hooks. Each is called for the modules enabled on the host that
 * the stanza concerns, highest priority first, until one answers
 * ST_HANDLED (it took the stanza: it delivered, stored, answered or dropped
 * it). The stanza is borrowed; a hook that keeps it takes a reference. A
 * hook may change the stanza only if it has a single reference. */
typedef struct st_hooks {
    /* A presence from a bound client (from stamped), before routing. */
    st_verdict (*presence_out)(struct st_session *s, st_stanza *st, const st_jid *to);
    /* A presence for a local user (to bare or full), before delivery. from
     * is the stamped sender (local user, or later a remote one). */
    st_verdict (*presence_in)(struct st_server *srv, struct st_host *h, st_stanza *st,
                              const st_jid *from, const st_jid *to);
    /* A message from a bound client, before routing (carbons of sent messages). */
    st_verdict (*message_out)(struct st_session *s, st_stanza *st, const st_jid *to);
    /* A message for a local user, before delivery. navailable is how many
     * resources would get it (0: offline storage may take it). */
    st_verdict (*message_in)(struct st_server *srv, struct st_host *h, st_stanza *st,
                             const st_jid *from, const st_jid *to, int navailable);
    /* Any stanza between a local user and anyone, in either direction
     * (outbound = 1: st is from the user). ST_HANDLED = refuse it (the hook
     * answers the sender if it should): blocking. */
    st_verdict (*filter)(struct st_server *srv, struct st_host *h, st_stanza *st,
                         const st_jid *user, const st_jid *peer, int outbound);
} st_hooks;

typedef struct st_module {
    const char *name;  /* "ping" */
    const char *spec;  /* "XEP-0199" */
    const char *title; /* "XMPP Ping" */
    const char *const *features; /* disco#info features, NULL-terminated, or NULL */
    const st_iq_handler *iqs;    /* terminated by {0}, or NULL */
    const st_module_opt *opts;   /* terminated by {0}, or NULL */
    /* Add this module's stream features (e.g. <register/>) to features,
     * for a connection in the given state; may be NULL. What it adds may
     * depend on the host, the configuration, authenticated and the
     * connection's TLS state only: c2s serialises the result once per such
     * state and reuses it until the next reload (c2s.c features_key). */
    void (*stream_features)(struct st_conn *c, st_stanza *features, int authenticated);
    /* Per-host state. */
    int (*host_init)(struct st_host *h, void **state);
    void (*host_fini)(struct st_host *h, void *state);
    /* A session was bound / is ending. */
    void (*session_bound)(struct st_session *s);
    void (*session_end)(struct st_session *s);
    const st_hooks *hooks; /* NULL if none */
    int priority;          /* order of hooks and handlers: higher runs first */
} st_module;

/* All built-in modules, NULL-terminated (server/modules.c). */
extern const st_module *const st_builtin_modules[];
const st_module *st_module_find(const char *name);
/* The modules a new host gets when its section has no "modules" line. */
extern const char *const st_default_modules[];

/* Validate a value for an option: 0 or -1 with a reason in err. */
int st_module_opt_check(const st_module_opt *o, const char *value, char *err, size_t errlen);
const st_module_opt *st_module_opt_find(const st_module *m, const char *name);

#endif
