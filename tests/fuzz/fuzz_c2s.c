/* fuzz_c2s.c - libFuzzer target for the whole c2s state machine.
 *
 * One real starlingd (config, SQLite store in a temporary directory, every
 * default module) lives for the whole fuzzing run. Each input is one client
 * connection over a socketpair: the first byte chooses whether the bytes
 * come from an unauthenticated client (straight after connecting) or from
 * an authenticated, bound one (the harness logs in first with a real
 * SCRAM-SHA-256 exchange, driven by our own client-side SCRAM and stream
 * parser). The rest of the input is written to the server in chunks while
 * the loop runs; then the client hangs up and the harness runs the loop
 * until the connection and its session are gone. Any crash, leak or
 * sanitizer report is a finding.
 *
 * The stream is plaintext (require_encryption = false): TLS is fuzzed by
 * OpenSSL's own fuzzers, and plaintext lets the fuzzer reach everything
 * behind it. */
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "server/c2s.h"
#include "server/log.h"
#include "server/server.h"
#include "starling/base64.h"
#include "starling/scram.h"
#include "starling/xmlstream.h"

static st_server *srv;
static unsigned char salted[32];
static int have_salted;

/* ---- a tiny client: collects what the server sends ---- */

typedef struct client {
    int fd;
    st_xmlstream *xs;
    st_stanza *last; /* last complete element */
    int opened;
    int closed;
} client;

static void c_open(void *ud, const st_node *h)
{
    ((client *)ud)->opened = 1;
}

static void c_stanza(void *ud, st_stanza *s)
{
    client *c = ud;
    st_stanza_unref(c->last);
    c->last = s;
}

static void c_close(void *ud)
{
    ((client *)ud)->closed = 1;
}

static const st_xml_handlers client_handlers = {c_open, c_stanza, c_close};

/* Run the server loop for a few rounds (waiting up to wait_ms in each, for
 * storage completions) and read what it sent. */
static void pump_wait(client *c, int rounds, int wait_ms)
{
    char buf[16384];
    for (int i = 0; i < rounds; i++) {
        st_loop_run_once(srv->loop, wait_ms);
        for (;;) {
            ssize_t n = read(c->fd, buf, sizeof buf);
            if (n <= 0) break;
            if (c->xs) st_xmlstream_feed(c->xs, buf, (size_t)n);
        }
    }
}

static void pump(client *c, int rounds)
{
    pump_wait(c, rounds, 0);
}

static void send_str(client *c, const char *s)
{
    size_t n = strlen(s), off = 0;
    while (off < n) {
        ssize_t w = write(c->fd, s + off, n - off);
        if (w <= 0) {
            pump(c, 1);
            continue;
        }
        off += (size_t)w;
    }
}

/* Wait for an element named name (or the stream header when name is NULL). */
static st_stanza *await(client *c, const char *name)
{
    for (int i = 0; i < 2000; i++) {
        if (!name && c->opened) return NULL;
        if (name && c->last && strcmp(st_name(c->last), name) == 0) {
            st_stanza *s = c->last;
            c->last = NULL;
            return s;
        }
        pump_wait(c, 1, 1);
    }
    return NULL;
}

static void restart(client *c)
{
    st_xmlstream_free(c->xs);
    c->xs = st_xmlstream_new(NULL, &client_handlers, c);
    c->opened = 0;
    st_stanza_unref(c->last);
    c->last = NULL;
}

#define HEADER "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' " \
               "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"

/* A real login: SCRAM-SHA-256 and bind. Returns 0 when bound. */
static int login(client *c)
{
    st_buf b, first;
    st_buf_init(&b, 0);
    st_buf_init(&first, 0);
    int ok = -1;
    st_scram_client *sc = st_scram_client_new(ST_SCRAM_SHA256, "fuzz", "fuzz pw", NULL, NULL, 0, 0);
    if (!sc) goto out;
    if (have_salted) st_scram_client_set_salted_password(sc, salted, sizeof salted);
    send_str(c, HEADER);
    st_stanza *f = await(c, "features");
    st_stanza_unref(f);
    if (!f) goto out;
    if (st_scram_client_first(sc, &first) != 0) goto out;
    st_buf_appends(&b, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>");
    st_base64_encode(first.data, first.len, &b);
    st_buf_appends(&b, "</auth>");
    send_str(c, b.data);
    st_stanza *ch = await(c, "challenge");
    if (!ch) goto out;
    st_buf dec, fin;
    st_buf_init(&dec, 0);
    st_buf_init(&fin, 0);
    const char *t = st_node_text(ch->root);
    int r = st_base64_decode(t, strlen(t), &dec) == 0 &&
            st_scram_client_final(sc, dec.data ? dec.data : "", dec.len, &fin) == 0;
    st_stanza_unref(ch);
    if (!have_salted && r) {
        size_t n;
        const unsigned char *sp = st_scram_client_salted_password(sc, &n);
        if (sp && n == sizeof salted) {
            memcpy(salted, sp, n);
            have_salted = 1; /* PBKDF2 once per run, not once per input */
        }
    }
    st_buf_reset(&b);
    st_buf_appends(&b, "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
    st_base64_encode(fin.data, fin.len, &b);
    st_buf_appends(&b, "</response>");
    st_buf_free(&dec);
    st_buf_free(&fin);
    if (!r) goto out;
    send_str(c, b.data);
    st_stanza *su = await(c, "success");
    if (!su) goto out;
    st_stanza_unref(su);
    restart(c);
    send_str(c, HEADER);
    f = await(c, "features");
    st_stanza_unref(f);
    if (!f) goto out;
    send_str(c, "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                "<resource>fuzz</resource></bind></iq>");
    /* the bind answer, not a late reply to the previous input's session */
    st_stanza *res = NULL;
    for (int i = 0; i < 16; i++) {
        res = await(c, "iq");
        if (!res) goto out;
        const char *id = st_get(res, "id");
        if (id && strcmp(id, "b") == 0) break;
        st_stanza_unref(res);
        res = NULL;
    }
    if (!res) goto out;
    ok = strcmp(st_get(res, "type") ? st_get(res, "type") : "", "result") == 0 ? 0 : -1;
    st_stanza_unref(res);
out:
    st_scram_client_free(sc);
    st_buf_free(&b);
    st_buf_free(&first);
    return ok;
}

/* ---- set-up, once ---- */

static void make_user(const char *dsn)
{
    void *h = NULL;
    char err[256];
    st_user_creds creds;
    if (st_store_sqlite.open(&h, dsn, err, sizeof err) != 0) abort();
    if (st_user_creds_make(&creds, "fuzz pw") != 0) abort();
    st_store_sqlite.user_create(h, "localhost", "fuzz", &creds);
    st_store_sqlite.user_create(h, "localhost", "other", &creds);
    st_store_sqlite.close(h);
}

/* The in-process server both targets use: a fresh directory and store
 * with the harness's accounts, plain c2s on an unused port number (inputs
 * arrive over socketpairs), the common settings, then global_extra and,
 * under [host localhost], host_extra. who names the target in errors. */
static void start_server(const char *who, const char *tmpl, const char *global_extra,
                         const char *host_extra)
{
    char dir[64];
    snprintf(dir, sizeof dir, "%s", tmpl);
    if (!mkdtemp(dir)) abort();
    char path[512], dsn[512], conf[4096];
    snprintf(path, sizeof path, "%s/starling.conf", dir);
    snprintf(dsn, sizeof dsn, "%s/starling.db", dir);
    snprintf(conf, sizeof conf,
             "data_dir = %s\nbind = 127.0.0.1\nc2s_ports = 1\nc2s_tls_ports =\n"
             "require_encryption = false\nlog_level = error\nadmin_socket = %s/admin.sock\n"
             "sm_resume_timeout = 0\n"
             /* every input comes from one address: failed logins in inputs
              * must not lock the harness's own login out */
             "auth_failures_per_ip = 1000000\n%s"
             "[host localhost]\n%s",
             dir, dir, global_extra, host_extra);
    FILE *f = fopen(path, "w");
    if (!f) abort();
    fputs(conf, f);
    fclose(f);
    st_buf errs;
    st_buf_init(&errs, 0);
    st_config *cfg = st_config_load(path, &errs);
    if (!cfg) {
        fprintf(stderr, "%s: config: %s\n", who, errs.data ? errs.data : "?");
        abort();
    }
    st_buf_free(&errs);
    st_log_set_level(ST_LOG_ERROR);
    make_user(dsn);
    char err[512];
    srv = st_server_new(cfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "%s: %s\n", who, err);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    start_server("fuzz_c2s", "/tmp/starling-fuzz-XXXXXX", "", "register.allow = true\n");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int authenticated = data[0] & 1;
    size_t chunk = 1 + (data[0] >> 1) * 8; /* 1..1017 bytes per write */
    data++;
    size--;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) abort();
    client c = {.fd = sv[1]};
    c.xs = st_xmlstream_new(NULL, &client_handlers, &c);
    if (!st_conn_accept(srv, sv[0], "127.0.0.1:1", 0)) abort();
    if (authenticated && login(&c) != 0) {
        fprintf(stderr, "fuzz_c2s: the harness could not log in\n");
        abort();
    }
    for (size_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        ssize_t w = write(c.fd, data + off, n);
        (void)w; /* the server may have closed already: fine */
        pump(&c, 2);
        /* Every other chunk, let the connection rest as the server's idle
         * sweep would (parser released, rebuilt by the next chunk). */
        if ((off / chunk) & 1)
            for (st_conn *k = srv->conns; k; k = st_conn_next(k))
                st_conn_rest(k, st_now_ms(), 0);
    }
    pump_wait(&c, 3, 1); /* let storage work started by the input finish */
    close(c.fd);
    c.fd = -1;
    /* run until the connection, its session and storage work are gone */
    for (int i = 0; i < 2000 && (srv->nconns || srv->sessions.count ||
                                 st_storage_inflight(srv->store));
         i++)
        st_loop_run_once(srv->loop, 1);
    for (int i = 0; i < 20; i++) st_loop_run_once(srv->loop, 0);
    st_stanza_unref(c.last);
    st_xmlstream_free(c.xs);
    return 0;
}
