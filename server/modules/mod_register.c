/* mod_register.c - XEP-0077 In-Band Registration: create an account before
 * logging in (off by default, per host), change password, cancel account.
 *
 * Account creation is rate limited per client address (register.limit
 * accounts per register.window). Key derivation (PBKDF2 for both SCRAM
 * hashes) runs on the storage thread with the insert, never on the loop. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/server.h"
#include "starling/alloc.h"

#define NS_REG "jabber:iq:register"
#define MAX_TRACKED 10000

extern const st_module mod_register;

typedef struct rate_entry {
    char ip[48];
    time_t start;
    int count;
} rate_entry;

typedef struct reg_state {
    st_map rates; /* ip -> rate_entry */
} reg_state;

static int reg_init(st_host *h, void **state)
{
    reg_state *r = st_calloc(1, sizeof *r);
    if (!r) return -1;
    st_map_init(&r->rates);
    *state = r;
    return 0;
}

static int free_entry(void *ud, const char *k, void *v)
{
    st_free(v);
    return 0;
}

static void reg_fini(st_host *h, void *state)
{
    reg_state *r = state;
    if (!r) return;
    st_map_each(&r->rates, free_entry, NULL);
    st_map_free(&r->rates);
    st_free(r);
}

typedef struct expired_ctx {
    time_t cutoff;
    char *keys[64];
    int n;
} expired_ctx;

static int collect_expired(void *ud, const char *k, void *v)
{
    expired_ctx *e = ud;
    if (((rate_entry *)v)->start < e->cutoff) e->keys[e->n++] = (char *)k;
    return e->n == 64;
}

/* 1 if this address may register one more account now (and count it). */
static int rate_allow(st_host *h, reg_state *r, const char *ip)
{
    time_t now = time(NULL);
    long long window = st_host_opt_num(h, &mod_register, "window");
    long long limit = st_host_opt_num(h, &mod_register, "limit");
    if (limit <= 0) return 1;
    if (r->rates.count >= MAX_TRACKED) {
        /* keep the table bounded: forget windows that are over */
        expired_ctx e = {.cutoff = now - window};
        st_map_each(&r->rates, collect_expired, &e);
        for (int i = 0; i < e.n; i++) st_free(st_map_del(&r->rates, e.keys[i]));
        if (r->rates.count >= MAX_TRACKED) return 0;
    }
    rate_entry *re = st_map_get(&r->rates, ip);
    if (!re) {
        re = st_calloc(1, sizeof *re);
        if (!re) return 0;
        snprintf(re->ip, sizeof re->ip, "%s", ip);
        re->start = now;
        if (st_map_put(&r->rates, re->ip, re) != 0) {
            st_free(re);
            return 0;
        }
    }
    if (now - re->start >= window) {
        re->start = now;
        re->count = 0;
    }
    if (re->count >= limit) return 0;
    re->count++;
    return 1;
}

/* ---- storage jobs ---- */

enum op { OP_CREATE, OP_PASSWD, OP_DELETE };

typedef struct reg_job {
    enum op op;
    st_iq_pending *p;
    char host[1024];
    char user[1024];
    char password[1024];
    int rc;
} reg_job;

static void reg_work(void *h, void *arg)
{
    reg_job *j = arg;
    const st_store_ops *ops = st_storage_ops(st_iq_pending_server(j->p)->store);
    st_user_creds creds;
    j->rc = -1;
    if (j->op != OP_DELETE && st_user_creds_make(&creds, j->password) != 0) goto out;
    if (j->op == OP_CREATE) j->rc = ops->user_create(h, j->host, j->user, &creds);
    else if (j->op == OP_PASSWD) j->rc = ops->user_set_creds(h, j->host, j->user, &creds);
    else j->rc = ops->user_delete(h, j->host, j->user);
out:
    OPENSSL_cleanse(&creds, sizeof creds);
    OPENSSL_cleanse(j->password, sizeof j->password);
}

static void close_user_sessions(st_server *s, const char *bare)
{
    st_user *u;
    /* each close ends a session and may free u: look it up again every time */
    while ((u = st_user_find(s, bare)) && u->sessions) {
        st_session *x = u->sessions;
        if (x->conn) st_conn_close(x->conn, "not-authorized", "the account was removed");
        else st_session_end(x);
    }
}

static void reg_done(void *arg)
{
    reg_job *j = arg;
    st_server *s = st_iq_pending_server(j->p);
    if (j->rc == 0) {
        st_info("mod_register", "%s %s@%s",
                j->op == OP_CREATE ? "registered" : j->op == OP_PASSWD ? "changed password of"
                                                                       : "removed",
                j->user, j->host);
        st_iq_pending_result(j->p, NULL);
        if (j->op == OP_DELETE) {
            char bare[2100];
            snprintf(bare, sizeof bare, "%s@%s", j->user, j->host);
            close_user_sessions(s, bare);
        }
    } else if (j->rc == 1) {
        st_iq_pending_error(j->p, j->op == OP_CREATE ? "conflict" : "item-not-found",
                            j->op == OP_CREATE ? "that username is taken" : NULL);
    } else {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
    }
    st_free(j);
}

static void submit(st_iq_ctx *c, enum op op, const char *user, const char *password)
{
    reg_job *j = st_calloc(1, sizeof *j);
    if (!j || !(j->p = st_iq_defer(c))) {
        st_free(j);
        st_iq_error(c, "internal-server-error", NULL);
        return;
    }
    j->op = op;
    snprintf(j->host, sizeof j->host, "%s", c->host->name);
    snprintf(j->user, sizeof j->user, "%s", user);
    if (password) snprintf(j->password, sizeof j->password, "%s", password);
    if (st_storage_submit(c->srv->store, reg_work, reg_done, j) != 0) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        OPENSSL_cleanse(j->password, sizeof j->password);
        st_free(j);
    }
}

/* ---- handlers ---- */

static st_verdict reg_get(st_iq_ctx *c)
{
    st_stanza *r = st_iq_reply(c->iq);
    if (!r) return ST_HANDLED;
    st_tag(r, "query", NS_REG);
    if (c->conn) {
        if (!st_host_opt_bool(c->host, &mod_register, "allow")) {
            st_stanza_unref(r);
            st_iq_error(c, "service-unavailable", "registration is disabled on this server");
            return ST_HANDLED;
        }
        st_text_tag(r, "instructions", "Choose a username and password for this server.");
        st_tag(r, "username", NULL), st_up(r);
        st_tag(r, "password", NULL), st_up(r);
    } else {
        st_tag(r, "registered", NULL), st_up(r);
        st_text_tag(r, "username", c->from->node);
    }
    if (st_stanza_ok(r)) st_iq_result(c, r);
    st_stanza_unref(r);
    return ST_HANDLED;
}

static st_verdict reg_set(st_iq_ctx *c)
{
    const char *user = st_child_text(c->payload, "username", NS_REG);
    const char *pass = st_child_text(c->payload, "password", NS_REG);
    int remove = st_child(c->payload, "remove", NS_REG) != NULL;
    char node[1024];

    if (c->conn) { /* before authentication: create an account */
        if (!st_host_opt_bool(c->host, &mod_register, "allow")) {
            st_iq_error(c, "service-unavailable", "registration is disabled on this server");
            return ST_HANDLED;
        }
        if (remove) {
            st_iq_error(c, "not-authorized", "log in to remove an account");
            return ST_HANDLED;
        }
        if (!st_conn_is_secure(c->conn) && c->srv->cfg->require_encryption) {
            st_iq_error(c, "not-authorized", "use TLS first");
            return ST_HANDLED;
        }
        if (!user || !pass || !*pass || st_nodeprep(user, node, sizeof node) <= 0) {
            st_iq_error(c, "not-acceptable", "a valid username and a password are required");
            return ST_HANDLED;
        }
        reg_state *rs = st_host_mod_state(c->host, &mod_register);
        if (!rs || !rate_allow(c->host, rs, st_conn_peer_ip(c->conn))) {
            st_iq_error(c, "resource-constraint",
                        "too many registrations from your address; try again later");
            return ST_HANDLED;
        }
        submit(c, OP_CREATE, node, pass);
        return ST_HANDLED;
    }
    if (remove) { /* XEP-0077 §3.2 */
        submit(c, OP_DELETE, c->from->node, NULL);
        return ST_HANDLED;
    }
    /* XEP-0077 §3.3: change password; the username must be our own */
    if (!pass || !*pass || (user && (st_nodeprep(user, node, sizeof node) <= 0 ||
                                     strcmp(node, c->from->node) != 0))) {
        st_iq_error(c, "bad-request", "username must be yours and a password is required");
        return ST_HANDLED;
    }
    submit(c, OP_PASSWD, c->from->node, pass);
    return ST_HANDLED;
}

static void features(st_conn *c, st_stanza *f, int authenticated)
{
    if (authenticated) return;
    /* advertised only where registration is open */
    st_host *h = st_conn_host(c);
    if (h && st_host_opt_bool(h, &mod_register, "allow")) {
        st_tag(f, "register", "http://jabber.org/features/iq-register");
        st_up(f);
    }
}

static const char *const feats[] = {NS_REG, NULL};

static const st_iq_handler iqs[] = {
    {NS_REG, "query", ST_IQ_GET, ST_PRE_AUTH | ST_TO_ACCOUNT | ST_TO_HOST, reg_get},
    {NS_REG, "query", ST_IQ_SET, ST_PRE_AUTH | ST_TO_ACCOUNT | ST_TO_HOST, reg_set},
    {0},
};

static const st_module_opt opts[] = {
    {"allow", ST_OPT_BOOL, "false", 0, 0, "let anyone create an account before logging in"},
    {"limit", ST_OPT_INT, "3", 0, 1000000, "accounts one address may create per window (0 = no limit)"},
    {"window", ST_OPT_DURATION, "1h", 1, 31536000, "length of the rate-limit window"},
    {0},
};

const st_module mod_register = {
    .name = "register",
    .spec = "XEP-0077",
    .title = "In-Band Registration",
    .features = feats,
    .iqs = iqs,
    .opts = opts,
    .stream_features = features,
    .host_init = reg_init,
    .host_fini = reg_fini,
};
