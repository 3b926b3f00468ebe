/* config.h - starlingd configuration: global settings and virtual hosts.
 *
 * File format (docs/config.md has the reference):
 *
 *     # comment
 *     data_dir = /var/lib/starling
 *     c2s_ports = 5222
 *     [host localhost]
 *     modules = disco version ping time register
 *     register.allow = true
 *
 * "key = value" lines; "[host NAME]" starts a virtual host section; every
 * key after it belongs to that host. "module.option" keys are module options,
 * validated against the module's option table (server/module.h). Every error
 * carries "file:line:" and, for an unknown key, a suggestion ("did you mean
 * 'c2s_ports'?"). Values: integers (with optional k/K/m/M suffix for sizes),
 * booleans (true/false/yes/no/on/off), durations in seconds (optional s/m/h
 * suffix), strings, and space-separated lists. */
#ifndef STARLING_CONFIG_H
#define STARLING_CONFIG_H
#include <stddef.h>
#include "starling/buf.h"

typedef struct st_conf_kv {
    char *key;   /* "register.allow" */
    char *value; /* raw string, trimmed */
    char *file;  /* for messages */
    int line;
} st_conf_kv;

typedef struct st_host_conf {
    char *name;          /* normalised domain */
    char **modules;      /* enabled module names */
    size_t nmodules;
    st_conf_kv *opts;    /* "module.option" settings of this host */
    size_t nopts;
    char *file;
    int line;
} st_host_conf;

typedef struct st_config {
    char *path;              /* the file it came from */
    char *data_dir;          /* default /var/lib/starling */
    char *store;             /* "sqlite" (default); later "postgresql" */
    char *store_dsn;         /* default <data_dir>/starling.db */
    char *certificate;       /* PEM cert path; default <data_dir>/cert.pem (generated) */
    char *private_key;       /* PEM key path; default <data_dir>/key.pem (generated) */
    char *admin_socket;      /* default <data_dir>/admin.sock */
    char *user;              /* drop root to this user after binding; default "starling";
                                "" or "root" = stay root (server.c: drop_privileges) */
    char **bind;             /* addresses to listen on; default "127.0.0.1" "::1" */
    size_t nbind;
    int *c2s_ports;          /* default 5222 (STARTTLS) */
    size_t nc2s_ports;
    int *c2s_tls_ports;      /* default 5223 (direct TLS, XEP-0368) */
    size_t nc2s_tls_ports;
    int require_encryption;  /* default 1: no stanzas/SASL before STARTTLS */
    int allow_plain;         /* SASL PLAIN over TLS; default 1 */
    char *sasl_mechanisms;   /* space-separated list to offer; NULL = all we implement */
    int sasl_cb_strict;      /* fail SCRAM "y" when we offer -PLUS (RFC 5802 §6); default 0 */
    size_t max_stanza_bytes; /* default 262144 */
    unsigned max_depth;      /* default 32 */
    unsigned max_attrs;      /* default 64 */
    int max_connections;     /* default 10000 */
    int handshake_timeout;   /* seconds until bound; default 30 */
    int idle_timeout;        /* seconds of silence before a ping; default 300 */
    int ping_timeout;        /* seconds to answer that ping; default 60 */
    size_t c2s_rate;         /* bytes/s per connection read rate; default 65536 */
    size_t c2s_burst;        /* bucket size; default 262144 */
    size_t max_send_queue;   /* bytes queued for one slow reader; default 1048576 */
    int sasl_max_failures;   /* failures before the stream is closed; default 3 */
    int sm_resume_timeout;      /* XEP-0198 resumption window in seconds; 0 = no resumption; default 300 */
    int fast_token_lifetime;    /* XEP-0484 FAST token lifetime in seconds; 0 = no FAST; default 14 days */
    int max_connections_per_ip; /* open connections from one address; default 100 */
    int connect_rate_per_ip;    /* new connections per second from one address (burst 2x); default 20 */
    int auth_failures_per_ip;   /* failed logins from one address per window before refusing; default 20 */
    int auth_failure_window;    /* seconds; default 600 */
    char *log_level;         /* debug|info|warn|error; default info */
    st_host_conf *hosts;
    size_t nhosts;
} st_config;

/* Load and validate. On failure returns NULL and appends one line per
 * problem ("file:line: message") to errors. */
st_config *st_config_load(const char *path, st_buf *errors);
/* Defaults only, no hosts (tests). */
st_config *st_config_defaults(void);
void st_config_free(st_config *c);

const st_host_conf *st_config_host(const st_config *c, const char *domain);
int st_host_has_module(const st_host_conf *h, const char *module);
/* Raw value of "module.option" for a host, or NULL if not set. */
const st_conf_kv *st_host_opt(const st_host_conf *h, const char *key);

/* Where to find the config: path if non-NULL, else $STARLING_CONFIG, else
 * ./starling.conf if it exists, else /etc/starling/starling.conf. Borrowed. */
const char *st_config_locate(const char *path);

/* Is this SASL mechanism enabled by sasl_mechanisms? */
int st_config_mech_enabled(const st_config *c, const char *mech);

/* Parsers shared with module option validation. 0 or -1. */
int st_parse_bool(const char *s, int *out);
int st_parse_size(const char *s, long long *out);     /* 64k, 1M */
int st_parse_duration(const char *s, long long *out); /* 30, 30s, 5m, 1h -> seconds */

#endif
