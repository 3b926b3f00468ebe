/* test_server_tlshs.c - our own server side of the common TLS 1.3
 * handshake (server/tlshs.h), against a real OpenSSL client, checked
 * against RFC 8446 §4 (handshake), §5 (records before the client's
 * Finished), §6 (alerts), RFC 9266 / RFC 5929 (channel bindings) and the
 * contract of tlshs.h (what goes to OpenSSL, untouched).
 *
 * Each test is one or more connections over a socketpair (a few over
 * loopback TCP): the server end is driven by st_tlshs_step on its fd; the
 * client end is plain OpenSSL, reading from its socket and writing into a
 * memory BIO that the harness moves to the socket (c_flush), so a test can
 * hold the client's bytes, deliver them in pieces, or replace them. That
 * client end, and the rest of the harness this file shares with
 * test_server_tlsrec.c, is in tls13_client.h and tls13_harness.h.
 *
 * On ST_TLSHS_OPENSSL the harness checks the header's promise first: the
 * server socket holds exactly the bytes the client wrote (recv MSG_PEEK,
 * compared with a log of everything written) and nothing reached the
 * client; then an SSL from st_tls_new_ssl on the same fd runs the
 * handshake with the same client.
 *
 * The hostile second flights need records OpenSSL would never send. The
 * client SSL_CTX has a keylog callback, and key and IV come from
 * HKDF-Expand-Label (RFC 8446 §7.1, §7.3) written with OpenSSL's HMAC in
 * tls13_harness.h, independently of server/tlshs.c. The harness decrypts the client's
 * own Finished with CLIENT_HANDSHAKE_TRAFFIC_SECRET (checked by
 * harness_handshake_keys_open_the_clients_finished) and seals variants of
 * it; the server's alert is read by the client's OpenSSL, and also opened
 * here with the server's secrets to say which key it was sealed under
 * (RFC 8446 §4.4.4: after its Finished the server writes under the
 * application traffic key, "this includes any alerts").
 *
 * Every loop is bounded: both ends are non-blocking and in this process. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include "starling/alloc.h"
#include "server/tls.h"
#include "server/tlshs.h"
#include "server/tlsrec.h"
#define TLS13_HARNESS_DIR "/tmp/st-tlshs-test-XXXXXX"
#include "tls13_harness.h"

#define LOGMAX 65536 /* what the harness remembers of the client's bytes */
#define SPINS 300    /* upper bound for "until nothing more happens" loops */

/* what a test expects besides the alerts of tls13_harness.h */
enum {
    A_ANY = -2,  /* over; the RFC names no alert (EOF) */
    WORKS = -10, /* not fatal: the handshake completes */
};

enum { G_X25519 = 0x001d, G_P256 = 0x0017, G_P384 = 0x0018 };
enum {
    EXT_SUPPORTED_GROUPS = 0x000a,
    EXT_SIGALGS = 0x000d,
    EXT_ALPN = 0x0010,
    EXT_PSK = 0x0029,
    EXT_EARLY_DATA = 0x002a,
    EXT_SUPPORTED_VERSIONS = 0x002b,
    EXT_COOKIE = 0x002c,
    EXT_PSK_MODES = 0x002d,
    EXT_KEY_SHARE = 0x0033,
};

static const unsigned suite_ids[] = {0x1301, 0x1302, 0x1303}; /* of suites[] */

static char rsa_cert[256], rsa_key[256];
static st_tls_ctx *tls_rsa; /* on rsa_cert, rsa_key */
static st_tlshs_ctx *hsx;   /* from tls, for most tests */

/* ---- the client end ---- */

typedef struct client {
    SSL *ssl;
    BIO *out; /* memory BIO: what the client SSL writes */
    int fd;
    unsigned char *wire; /* taken from out, not yet written to fd */
    size_t woff, wlen, wcap;
    int hold;                  /* c_flush collects into wire but does not write */
    unsigned char log[LOGMAX]; /* everything written to fd */
    size_t loglen;
    unsigned char ch[8192]; /* the client's first output: its ClientHello */
    size_t chlen;
    int ch_taken;

    secret chs, shs, cap, sap; /* from the keylog */

    int alert, alert_level; /* last alert read, -1 none */
    int done, failed, zero_return;
    char hs[64]; /* handshake message types read, in order */
    size_t nhs;
    int tickets;
    uint32_t ticket_lifetime;

    keys k;                         /* crafting: the client's handshake write key */
    unsigned char last[MAX_RECORD]; /* the last record sealed */
    size_t lastlen;
} client;

typedef struct conn {
    client c;
    int sfd;
    int tcp, direct;
    st_tlshs *h;
    int last; /* last st_tlshs_step result, 0 none */
    st_tlsrec *rec;
    SSL *server; /* OpenSSL's, after ST_TLSHS_OPENSSL */
    st_tls_ctx *fallback;
    unsigned char flight[32768]; /* the server's first flight as the client saw it */
    size_t flightlen;
    unsigned char fin[4 + 48]; /* the client's Finished message, decrypted */
    size_t finlen;
} conn;

typedef struct opts {
    const char *suite; /* client TLS 1.3 suites, NULL = OpenSSL's default */
    const char *groups;
    const char *sigalgs;
    const char *alpn; /* comma list */
    int no_compat;    /* clear SSL_OP_ENABLE_MIDDLEBOX_COMPAT */
    SSL_SESSION *resume;
    st_tlshs_ctx *x;      /* NULL = hsx */
    st_tls_ctx *fallback; /* NULL = tls */
    int direct;           /* direct_tls */
    int tcp;              /* loopback TCP instead of a socketpair */
    int allow_null;       /* st_tlshs_new may return NULL (allocation torture) */
} opts;

#define NCONN 3
#include "tls13_client.h"

static void free_session(void *s)
{
    SSL_SESSION_free(s);
}

static SSL_SESSION *sess_track(SSL_SESSION *s)
{
    return track(s, free_session);
}

static void free_tlshs_ctx(void *x)
{
    st_tlshs_ctx_unref(x);
}

static st_tlshs_ctx *x_track(st_tlshs_ctx *x)
{
    return track(x, free_tlshs_ctx);
}

static st_tlshs_ctx *x_new(st_tls_ctx *t)
{
    char err[256] = "";
    st_tlshs_ctx *x = st_tlshs_ctx_new(st_tls_ctx_get(t), err, sizeof err);
    if (!x) print_error("st_tlshs_ctx_new: %s\n", err);
    return x_track(x);
}

static void keylog_cb(const SSL *ssl, const char *line)
{
    static const struct {
        const char *label;
        size_t off;
    } labels[] = {
        {"CLIENT_HANDSHAKE_TRAFFIC_SECRET ", offsetof(client, chs)},
        {"SERVER_HANDSHAKE_TRAFFIC_SECRET ", offsetof(client, shs)},
        {"CLIENT_TRAFFIC_SECRET_0 ", offsetof(client, cap)},
        {"SERVER_TRAFFIC_SECRET_0 ", offsetof(client, sap)},
    };
    client *c = SSL_get_app_data(ssl);
    if (!c) return;
    for (size_t i = 0; i < sizeof labels / sizeof *labels; i++) {
        size_t l = strlen(labels[i].label);
        const char *sp;
        if (strncmp(line, labels[i].label, l) == 0 && (sp = strchr(line + l, ' '))) {
            secret *s = (secret *)((char *)c + labels[i].off);
            hex_decode(sp + 1, s->b, &s->n, sizeof s->b);
        }
    }
}

static void msg_cb(int write_p, int version, int type, const void *buf, size_t len, SSL *ssl,
                   void *arg)
{
    client *c = SSL_get_app_data(ssl);
    const unsigned char *b = buf;
    if (!c || write_p || len < 1 || type != SSL3_RT_HANDSHAKE) return;
    if (c->nhs < sizeof c->hs - 1) c->hs[c->nhs++] = (char)b[0];
    if (b[0] == SSL3_MT_NEWSESSION_TICKET) {
        c->tickets++;
        if (len >= 8) c->ticket_lifetime = (uint32_t)b[4] << 24 | b[5] << 16 | b[6] << 8 | b[7];
    }
}

static int queued(int fd)
{
    int q = -1;
    assert_int_equal(ioctl(fd, FIONREAD, &q), 0);
    return q;
}

/* Loopback TCP: data written is normally there at once, but not always;
 * wait (bounded) for fd to have at least n bytes queued. */
static void wait_queued(int fd, int n, int ms)
{
    for (int i = 0; i < ms && queued(fd) < n; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 1);
        if (queued(fd) >= n) break;
        usleep(1000);
    }
}

static void log_sent(client *c, const unsigned char *p, size_t n)
{
    size_t take = n < LOGMAX - c->loglen ? n : LOGMAX - c->loglen;
    memcpy(c->log + c->loglen, p, take);
    c->loglen += take;
}

/* Move what the client SSL wrote to the wire buffer (the first of it is
 * kept as the ClientHello), and as much of the wire as the socket takes
 * to the socket. 1 when all of it is written. */
static int c_flush(conn *k)
{
    client *c = &k->c;
    unsigned char tmp[16384];
    int n, got = 0;
    while ((n = BIO_read(c->out, tmp, sizeof tmp)) > 0) {
        if (!c->ch_taken && c->chlen + (size_t)n <= sizeof c->ch) {
            memcpy(c->ch + c->chlen, tmp, (size_t)n);
            c->chlen += (size_t)n;
        }
        got = 1;
        wire_append(c, tmp, (size_t)n);
    }
    if (got) c->ch_taken = 1;
    while (c->wlen > 0 && !c->hold) {
        ssize_t w = write(c->fd, c->wire + c->woff, c->wlen);
        if (w <= 0) break;
        log_sent(c, c->wire + c->woff, (size_t)w);
        c->woff += (size_t)w;
        c->wlen -= (size_t)w;
    }
    if (c->wlen == 0) c->woff = 0;
    return c->wlen == 0;
}

/* One step of the client's handshake, then c_flush. */
static void c_connect(conn *k)
{
    client *c = &k->c;
    if (!c->done && !c->failed) {
        int r = SSL_connect(c->ssl);
        if (r == 1) {
            c->done = 1;
        } else {
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) c->failed = e;
        }
    }
    c_flush(k);
}

/* Whatever the client can read now, appended at out[*got] (at most cap). */
static void c_read(conn *k, unsigned char *out, size_t cap, size_t *got)
{
    if (k->tcp) wait_queued(k->c.fd, 1, 50);
    c_read_now(k, out, cap, got);
}

static void c_expect(conn *k, const void *p, size_t n)
{
    unsigned char *buf = tmalloc(n + 1);
    size_t got = 0;
    for (int i = 0; i < 20 && got < n && !k->c.failed && !k->c.zero_return; i++)
        c_read(k, buf, n + 1, &got);
    if (got != n) print_error("client read %zu bytes, expected %zu\n", got, n);
    assert_int_equal(got, n);
    assert_memory_equal(buf, p, n);
    assert_false(k->c.failed);
    tfree(buf);
}

/* ---- the server end ---- */

static const char *step_name(int r)
{
    switch (r) {
    case ST_TLSHS_READ:
        return "READ";
    case ST_TLSHS_WRITE:
        return "WRITE";
    case ST_TLSHS_DONE:
        return "DONE";
    case ST_TLSHS_OPENSSL:
        return "OPENSSL";
    case ST_TLSHS_FAILED:
        return "FAILED";
    }
    return "(not a result)";
}

static int over(int r)
{
    return r == ST_TLSHS_DONE || r == ST_TLSHS_OPENSSL || r == ST_TLSHS_FAILED;
}

/* One st_tlshs_step, checked against tlshs.h: one of the five values;
 * a reason on OPENSSL and FAILED, none on DONE. */
static int s_step(conn *k)
{
    int r = st_tlshs_step(k->h, k->sfd);
    if (r < ST_TLSHS_READ || r > ST_TLSHS_FAILED) fail_msg("st_tlshs_step returned %d", r);
    k->last = r;
    if (r == ST_TLSHS_OPENSSL || r == ST_TLSHS_FAILED) assert_non_null(st_tlshs_error(k->h));
    if (r == ST_TLSHS_OPENSSL) assert_null(st_tlshs_cipher(k->h)); /* no ServerHello of ours */
    if (r == ST_TLSHS_DONE) {
        if (st_tlshs_error(k->h)) print_error("DONE with error \"%s\"\n", st_tlshs_error(k->h));
        assert_null(st_tlshs_error(k->h));
        assert_non_null(st_tlshs_cipher(k->h));
    }
    return r;
}

/* Step the server until it is over or waits for the client (READ with
 * nothing more in its socket). */
static int s_steps(conn *k)
{
    int r = 0;
    for (int i = 0; i < SPINS; i++) {
        r = s_step(k);
        if (over(r)) return r;
        if (r == ST_TLSHS_READ) {
            if (k->tcp) {
                wait_queued(k->sfd, 1, 20);
                usleep(1000);
            }
            if (queued(k->sfd) == 0) return r;
        }
    }
    return r;
}

/* Both ends until ours says DONE, OPENSSL or FAILED. */
static int hs_run(conn *k)
{
    for (int i = 0; i < SPINS; i++) {
        c_connect(k);
        if (k->tcp) wait_queued(k->sfd, 1, 20);
        int r = s_step(k);
        if (over(r)) return r;
        if (k->tcp && !k->c.done) wait_queued(k->c.fd, 1, 20);
    }
    fail_msg("the handshake did not end (last step %s)", step_name(k->last));
    return 0;
}

static void make_pair(conn *k, int tcp)
{
    int sv[2];
    if (!tcp) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        assert_true(l >= 0);
        assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
        assert_int_equal(listen(l, 1), 0);
        assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
        sv[1] = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(sv[1] >= 0);
        assert_int_equal(connect(sv[1], (struct sockaddr *)&a, sizeof a), 0);
        sv[0] = accept(l, NULL, NULL);
        assert_true(sv[0] >= 0);
        close(l);
        setsockopt(sv[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(sv[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    k->sfd = sv[0];
    k->c.fd = sv[1];
    nonblock(k->sfd);
    nonblock(k->c.fd);
}

/* alpn "a,b" to the wire format */
static void set_alpn(SSL *ssl, const char *list)
{
    unsigned char w[256];
    size_t n = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        w[n++] = (unsigned char)l;
        memcpy(w + n, p, l);
        n += l;
        p += l + (e ? 1 : 0);
    }
    assert_int_equal(SSL_set_alpn_protos(ssl, w, (unsigned)n), 0);
}

/* A connection with its st_tlshs and client SSL, nothing sent yet. */
static void conn_start(conn *k, SSL_CTX *cctx, const opts *o)
{
    static const opts none;
    if (!o) o = &none;
    pool_mark(k, 1);
    make_pair(k, o->tcp);
    k->tcp = o->tcp;
    k->direct = o->direct;
    k->fallback = o->fallback ? o->fallback : tls;
    k->c.alert = k->c.alert_level = -1;
    k->h = st_tlshs_new(o->x ? o->x : hsx, o->direct);
    if (!o->allow_null) assert_non_null(k->h);
    if (k->h) {
        assert_null(st_tlshs_error(k->h));
        assert_null(st_tlshs_cipher(k->h));
        assert_null(st_tlshs_finish(k->h));
    }

    client *c = &k->c;
    client_ssl_new(k, cctx);
    if (o->resume) assert_int_equal(SSL_set_session(c->ssl, o->resume), 1);
    if (o->groups) assert_int_equal(SSL_set1_groups_list(c->ssl, o->groups), 1);
    if (o->sigalgs) assert_int_equal(SSL_set1_sigalgs_list(c->ssl, o->sigalgs), 1);
    if (o->suite) assert_int_equal(SSL_set_ciphersuites(c->ssl, o->suite), 1);
    if (o->alpn) set_alpn(c->ssl, o->alpn);
    if (o->no_compat) SSL_clear_options(c->ssl, SSL_OP_ENABLE_MIDDLEBOX_COMPAT);
}

static void conn_close(conn *k)
{
    st_tlsrec_free(k->rec);
    st_tlshs_free(k->h);
    SSL_free(k->server);
    /* SSL_free without a shutdown makes OpenSSL's client mark its session
     * not resumable; the tests keep sessions to resume them */
    if (k->c.ssl) SSL_set_shutdown(k->c.ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    conn_release(k);
}

/* per-test teardown: whatever a failed test left behind */
static int cleanup(void **state)
{
    st_set_alloc_hooks(NULL);
    pool_close_all();
    tfree_all();
    return 0;
}

/* ---- after the handshake ---- */

/* After DONE: the record layer, once. */
static void hs_finish(conn *k)
{
    if (k->last != ST_TLSHS_DONE)
        print_error("handshake ended %s (%s)\n", step_name(k->last), st_tlshs_error(k->h));
    assert_int_equal(k->last, ST_TLSHS_DONE);
    assert_true(k->c.done);
    k->rec = st_tlshs_finish(k->h);
    assert_non_null(k->rec);
    assert_null(st_tlshs_finish(k->h)); /* once */
    assert_string_equal(st_tlsrec_version(k->rec), "TLSv1.3");
    assert_string_equal(st_tlsrec_cipher(k->rec), st_tlshs_cipher(k->h));
}

static ssize_t s_read(conn *k, unsigned char *out, size_t cap, size_t *got)
{
    for (int i = 0; i < 10000; i++) {
        if (k->tcp) wait_queued(k->sfd, 1, 10);
        unsigned char tmp[1];
        ssize_t r = st_tlsrec_read(k->rec, k->sfd, *got < cap ? out + *got : tmp,
                                   *got < cap ? cap - *got : 1);
        if (r == -2 || r == 0) return r;
        assert_true(r > 0);
        assert_true(*got + (size_t)r <= cap);
        *got += (size_t)r;
    }
    fail_msg("st_tlsrec_read did not stop");
    return 0;
}

static void s_expect(conn *k, const void *p, size_t n)
{
    unsigned char *buf = tmalloc(n + 1);
    size_t got = 0;
    ssize_t r = -2;
    for (int i = 0; i < 20 && got < n && r == -2; i++)
        r = s_read(k, buf, n + 1, &got);
    if (got != n)
        print_error("server read %zu bytes, expected %zu (%zd, %s)\n", got, n, r,
                    st_tlsrec_error(k->rec) ? st_tlsrec_error(k->rec) : "no error");
    assert_int_equal(got, n);
    assert_memory_equal(buf, p, n);
    assert_null(st_tlsrec_error(k->rec));
    tfree(buf);
}

static void s_write(conn *k, const void *p, size_t n)
{
    size_t off = 0;
    for (int i = 0; i < SPINS && off < n; i++) {
        ssize_t w = st_tlsrec_write(k->rec, k->sfd, (const char *)p + off, n - off);
        assert_true(w >= 0);
        off += (size_t)w;
    }
    assert_int_equal(off, n);
    for (int i = 0; i < SPINS && st_tlsrec_unsent(k->rec); i++)
        assert_true(st_tlsrec_write(k->rec, k->sfd, NULL, 0) >= 0);
    assert_int_equal(st_tlsrec_unsent(k->rec), 0);
}

/* Both close: ours is zero_return for the client, the client's ends our
 * reading. */
static void close_both(conn *k)
{
    unsigned char buf[16];
    size_t got = 0;
    st_tlsrec_close_notify(k->rec, k->sfd);
    c_read(k, buf, sizeof buf, &got);
    assert_int_equal(got, 0);
    assert_true(k->c.zero_return);
    assert_int_equal(SSL_shutdown(k->c.ssl), 1);
    c_flush(k);
    got = 0;
    assert_int_equal(s_read(k, buf, sizeof buf, &got), 0);
    assert_int_equal(got, 0);
}

/* RFC 9266 tls-exporter and RFC 5929 tls-server-end-point: the same
 * bytes on both ends. */
static void check_bindings(conn *k)
{
    unsigned char a[32], b[32], b2[32], e1[64], e2[64];
    size_t l1 = 0, l2 = 0;
    static const char label[] = "EXPORTER-Channel-Binding";
    assert_int_equal(st_tlshs_exporter(k->h, a), 0);
    assert_int_equal(
        SSL_export_keying_material(k->c.ssl, b, 32, label, sizeof label - 1, NULL, 0, 0), 1);
    /* TLS 1.3: no context and an empty one are the same (RFC 8446 §7.5) */
    assert_int_equal(SSL_export_keying_material(k->c.ssl, b2, 32, label, sizeof label - 1,
                                                (const unsigned char *)"", 0, 1),
                     1);
    assert_memory_equal(b, b2, 32);
    assert_memory_equal(a, b, 32);
    /* -1 on both ends when the certificate's signature has no single hash
     * (Ed25519) */
    int rc = st_tls_server_end_point(k->c.ssl, e2, &l2);
    assert_int_equal(st_tlshs_server_end_point(k->h, e1, &l1), rc);
    if (rc != 0) return;
    assert_int_equal(l1, l2);
    assert_true(l1 >= 32 && l1 <= 64);
    assert_memory_equal(e1, e2, l1);
}

/* DONE, then the record layer, data both ways, channel bindings. */
static void expect_done(conn *k)
{
    if (k->last != ST_TLSHS_DONE)
        print_error("handshake ended %s (%s); client %s\n", step_name(k->last),
                    st_tlshs_error(k->h) ? st_tlshs_error(k->h) : "no reason",
                    k->c.failed ? "failed" : "ok");
    assert_int_equal(k->last, ST_TLSHS_DONE);
    check_bindings(k);
    hs_finish(k);
    exchange(k);
}

/* ---- OpenSSL's turn ---- */

/* tlshs.h: on ST_TLSHS_OPENSSL nothing was read or sent: the socket holds
 * exactly every byte the client wrote, and the client got nothing. */
static void assert_untouched(conn *k)
{
    unsigned char *buf = tmalloc(LOGMAX + 1);
    if (k->tcp) wait_queued(k->sfd, (int)k->c.loglen, 200);
    ssize_t n = recv(k->sfd, buf, LOGMAX + 1, MSG_PEEK);
    if (n < 0) n = 0;
    if ((size_t)n != k->c.loglen)
        print_error("after OPENSSL the socket holds %zd bytes, the client wrote %zu\n", n,
                    k->c.loglen);
    assert_int_equal((size_t)n, k->c.loglen);
    assert_memory_equal(buf, k->c.log, (size_t)n);
    int q = queued(k->c.fd);
    if (q) print_error("after OPENSSL the client has %d bytes from the server\n", q);
    assert_int_equal(q, 0);
    assert_null(st_tlshs_finish(k->h));
    unsigned char x[32];
    assert_int_equal(st_tlshs_exporter(k->h, x), -1);
    tfree(buf);
}

/* After OPENSSL: an SSL from st_tls_new_ssl on the same fd runs the
 * handshake with the same client. 0 when both ends finished, -1 when one
 * failed (the client has then read what the server sent). */
static int openssl_takeover(conn *k)
{
    assert_int_equal(k->last, ST_TLSHS_OPENSSL);
    assert_untouched(k);
    k->server = st_tls_new_ssl(k->fallback, k->sfd, k->direct);
    assert_non_null(k->server);
    int sdone = 0, sfail = 0;
    for (int i = 0; i < SPINS && !(sdone && k->c.done) && !sfail && !k->c.failed; i++) {
        c_connect(k);
        if (k->tcp) wait_queued(k->sfd, 1, 10);
        if (!sdone) {
            int r = SSL_accept(k->server);
            if (r == 1)
                sdone = 1;
            else if (SSL_get_error(k->server, r) != SSL_ERROR_WANT_READ &&
                     SSL_get_error(k->server, r) != SSL_ERROR_WANT_WRITE)
                sfail = 1;
        }
        if (k->tcp) wait_queued(k->c.fd, 1, 10);
    }
    if (sfail || k->c.failed) { /* let the client read the alert */
        for (int i = 0; i < 5; i++)
            c_connect(k);
        ERR_clear_error();
        return -1;
    }
    return sdone && k->c.done ? 0 : -1;
}

/* OPENSSL, and OpenSSL completes it; data both ways. */
static void expect_openssl_completes(conn *k)
{
    if (k->last != ST_TLSHS_OPENSSL)
        print_error("expected OPENSSL, got %s (%s)\n", step_name(k->last), st_tlshs_error(k->h));
    assert_int_equal(k->last, ST_TLSHS_OPENSSL);
    print_message("to OpenSSL: \"%s\"\n", st_tlshs_error(k->h));
    assert_int_equal(openssl_takeover(k), 0);
    char buf[16];
    int r = -1;
    assert_int_equal(SSL_write(k->server, "hello", 5), 5);
    c_expect(k, "hello", 5);
    c_write(k, "world", 5);
    for (int i = 0; i < 50 && r <= 0; i++) {
        if (k->tcp) wait_queued(k->sfd, 1, 10);
        r = SSL_read(k->server, buf, sizeof buf);
    }
    assert_int_equal(r, 5);
    assert_memory_equal(buf, "world", 5);
}

/* OPENSSL, and OpenSSL refuses it with a fatal alert the client reads. */
static void expect_openssl_alert(conn *k)
{
    if (k->last != ST_TLSHS_OPENSSL)
        print_error("expected OPENSSL, got %s (%s)\n", step_name(k->last), st_tlshs_error(k->h));
    assert_int_equal(k->last, ST_TLSHS_OPENSSL);
    assert_int_equal(openssl_takeover(k), -1);
    print_message("to OpenSSL (\"%s\"), which sent alert %d\n", st_tlshs_error(k->h), k->c.alert);
    assert_true(k->c.alert > 0);
    assert_int_equal(k->c.alert_level, 2);
}

/* ---- a full handshake ---- */

static int full(conn *k, SSL_CTX *cctx, const opts *o)
{
    conn_start(k, cctx, o);
    return hs_run(k);
}

/* The client's session with our ticket, from a finished connection whose
 * client has read the ticket (exchange). */
static SSL_SESSION *ticket_of(conn *k)
{
    assert_true(k->c.tickets >= 1);
    SSL_SESSION *s = sess_track(SSL_get1_session(k->c.ssl));
    assert_true(SSL_SESSION_is_resumable(s));
    return s;
}

/* A finished connection on x, its client's session kept. */
static SSL_SESSION *get_ticket(SSL_CTX *cctx, st_tlshs_ctx *x)
{
    conn *k = conn_new();
    opts o = {.x = x};
    full(k, cctx, &o);
    expect_done(k);
    SSL_SESSION *s = ticket_of(k);
    conn_close(k);
    return s;
}

/* ---- record crafting (RFC 8446 §5.2, §7.1, §7.3) ---- */

/* Keys for the client's negotiated suite from one of the keylog secrets. */
static void keys_from(conn *k, const secret *s, keys *out)
{
    keys_from_secret(k->c.ssl, s->b, s->n, out);
}

/* records in a byte string: offsets and lengths (header included) */
typedef struct recs {
    size_t off[32], len[32];
    int type[32];
    int n;
    int complete; /* the last one is whole */
} recs;

static void split_records(const unsigned char *p, size_t n, recs *r)
{
    size_t i = 0;
    memset(r, 0, sizeof *r);
    r->complete = 1;
    while (i < n && r->n < 32) {
        if (n - i < 5) {
            r->complete = 0;
            break;
        }
        size_t l = 5 + (((size_t)p[i + 3] << 8) | p[i + 4]);
        if (l > n - i) {
            r->complete = 0;
            break;
        }
        r->off[r->n] = i;
        r->len[r->n] = l;
        r->type[r->n] = p[i];
        r->n++;
        i += l;
    }
}

/* ---- the second flight ---- */

/* Wait (TCP) until the server's flight in the client socket stops growing,
 * and keep a copy of it. */
static void capture_flight(conn *k)
{
    int prev = -1;
    for (int i = 0; i < 50; i++) {
        int q = queued(k->c.fd);
        if (q > 0 && q == prev) break;
        prev = q;
        if (!k->tcp && q > 0) break;
        usleep(1000);
    }
    ssize_t n = recv(k->c.fd, k->flight, sizeof k->flight, MSG_PEEK);
    k->flightlen = n > 0 ? (size_t)n : 0;
}

/* The ClientHello in, the server's flight out, the client's answer (its
 * change_cipher_spec and Finished) held in c->wire, unsent. Returns the
 * step result: READ when that is where we are. */
static int to_second_flight(conn *k)
{
    client *c = &k->c;
    c_connect(k); /* the ClientHello */
    assert_int_equal(c->wlen, 0);
    c->hold = 1;
    if (k->tcp) wait_queued(k->sfd, (int)c->loglen, 200);
    int r = 0;
    for (int i = 0; i < SPINS; i++) {
        r = s_step(k);
        if (over(r)) return r;
        if (r == ST_TLSHS_READ && queued(c->fd) > 0) break;
        if (k->tcp) wait_queued(c->fd, 1, 10);
        if (r == ST_TLSHS_READ && queued(c->fd) > 0) break;
    }
    if (r != ST_TLSHS_READ) return r;
    capture_flight(k);
    for (int i = 0; i < SPINS && !c->done && !c->failed; i++) {
        c_connect(k);
        if (k->tcp && !c->done) wait_queued(c->fd, 1, 10);
    }
    if (!c->done) print_error("the client did not finish on our flight (error %d)\n", c->failed);
    assert_true(c->done);
    assert_true(c->wlen > 0);
    return r;
}

/* From the held second flight: the crafting keys (the client's handshake
 * write key, sequence 0) and its Finished message decrypted. */
static void craft_init(conn *k)
{
    client *c = &k->c;
    recs r;
    unsigned char out[MAX_RECORD];
    size_t n = 0;
    keys_from(k, &c->chs, &c->k);
    split_records(c->wire + c->woff, c->wlen, &r);
    assert_true(r.complete);
    assert_true(r.n >= 1);
    int last = r.n - 1;
    assert_int_equal(r.type[last], 23);
    assert_int_equal(open_record(&c->k, 0, c->wire + c->woff + r.off[last], r.len[last], out, &n),
                     22);
    assert_int_equal(n, 4 + (size_t)EVP_MD_get_size(c->k.md));
    assert_int_equal(out[0], 20); /* Finished */
    memcpy(k->fin, out, n);
    k->finlen = n;
}

/* ---- what the server sent when it failed ---- */

/* Describe the first record in the client's socket: which key opens it
 * (the server's application key per RFC 8446 §4.4.4, or its handshake
 * key), and the alert in it. *desc = the alert description or -1; *nrec
 * = records queued. */
static void diag_server_bytes(conn *k, char *how, size_t howlen, int *desc, int *nrec)
{
    unsigned char buf[4096], out[4096];
    size_t n = 0;
    recs r;
    *desc = -1;
    *nrec = 0;
    if (k->tcp) wait_queued(k->c.fd, 1, 50);
    ssize_t got = recv(k->c.fd, buf, sizeof buf, MSG_PEEK);
    if (got <= 0) {
        snprintf(how, howlen, "nothing");
        return;
    }
    split_records(buf, (size_t)got, &r);
    *nrec = r.n + !r.complete;
    if (r.n == 0) {
        snprintf(how, howlen, "%zd bytes, not a whole record", got);
        return;
    }
    if (r.type[0] == 21) {
        if (r.len[0] == 7) *desc = buf[6];
        snprintf(how, howlen, "a plaintext alert %d", *desc);
        return;
    }
    if (r.type[0] != 23) {
        snprintf(how, howlen, "a plaintext record of type %d", r.type[0]);
        return;
    }
    keys x;
    if (k->c.sap.n) {
        keys_from(k, &k->c.sap, &x);
        int t = open_record(&x, 0, buf, r.len[0], out, &n);
        if (t >= 0) {
            if (t == 21 && n == 2) *desc = out[1];
            snprintf(how, howlen, "type %d (alert %d) under the server application key", t, *desc);
            return;
        }
    }
    if (k->c.shs.n) {
        keys_from(k, &k->c.shs, &x);
        for (uint64_t seq = 0; seq < 12; seq++) {
            int t = open_record(&x, seq, buf, r.len[0], out, &n);
            if (t >= 0) {
                if (t == 21 && n == 2) *desc = out[1];
                snprintf(how, howlen,
                         "type %d (alert %d) under the server HANDSHAKE key, seq %d (RFC 8446 "
                         "§4.4.4 wants the application key after the server's Finished)",
                         t, *desc, (int)seq);
                return;
            }
        }
    }
    snprintf(how, howlen, "a record (%zu bytes) no server key opens", r.len[0]);
}

/* FAILED, with the alert the RFC names read by the client's OpenSSL
 * (A_NONE: nothing sent back; A_ANY: not checked), and nothing after it. */
static void expect_hs_fatal(conn *k, int alert)
{
    char how[256];
    int desc, nrec;
    if (k->last != ST_TLSHS_FAILED)
        print_error("expected FAILED, got %s (%s)\n", step_name(k->last),
                    st_tlshs_error(k->h) ? st_tlshs_error(k->h) : "no reason");
    assert_int_equal(k->last, ST_TLSHS_FAILED);
    assert_non_null(st_tlshs_error(k->h));
    assert_null(st_tlshs_finish(k->h));
    unsigned char x[32];
    assert_int_equal(st_tlshs_exporter(k->h, x), -1);
    diag_server_bytes(k, how, sizeof how, &desc, &nrec);
    print_message("FAILED \"%s\"; the server sent %s\n", st_tlshs_error(k->h), how);
    if (alert == A_ANY) return;
    if (alert == A_UNEXP_OR_NONE) alert = nrec == 0 ? A_NONE : A_UNEXPECTED_MESSAGE;
    if (alert == A_NONE) {
        if (nrec) print_error("expected no answer to the client's alert, got %s\n", how);
        assert_int_equal(nrec, 0);
        return;
    }
    assert_int_equal(nrec, 1); /* the alert, nothing after it (RFC 8446 §6.2) */
    /* the client's OpenSSL reads it */
    unsigned char buf[64];
    size_t got = 0;
    if (k->c.done)
        c_read(k, buf, sizeof buf, &got);
    else
        for (int i = 0; i < 5; i++)
            c_connect(k);
    assert_int_equal(got, 0);
    if (k->c.alert != alert)
        print_error("client read alert %d (level %d), expected %d; on the wire: %s\n", k->c.alert,
                    k->c.alert_level, alert, how);
    assert_int_equal(desc, alert);
    assert_int_equal(k->c.alert, alert);
    assert_int_equal(k->c.alert_level, 2);
    ERR_clear_error();
}

/* ---- ClientHello surgery ---- */

typedef struct ext {
    unsigned type;
    const unsigned char *data;
    size_t len;
} ext;

typedef struct chinfo {
    size_t reclen;               /* of the first record, header included */
    size_t sid_off;              /* legacy_session_id length byte */
    size_t suites_off, comp_off; /* their length fields */
    size_t ext_off;              /* the extensions' 2-byte length */
    size_t exts_end;             /* the end of the extensions */
    ext e[64];
    int n;
} chinfo;

static uint16_t be16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* Parse the ClientHello record at p (n bytes, maybe more records after). */
static void ch_parse(const unsigned char *p, size_t n, chinfo *ci)
{
    memset(ci, 0, sizeof *ci);
    assert_true(n >= 5 + 4 + 2 + 32 + 1);
    assert_int_equal(p[0], 22);
    ci->reclen = 5 + be16(p + 3);
    assert_true(ci->reclen <= n);
    assert_int_equal(p[5], 1); /* client_hello */
    size_t hlen = (size_t)p[6] << 16 | (size_t)p[7] << 8 | p[8];
    assert_int_equal(hlen + 4, ci->reclen - 5);
    size_t i = 9 + 2 + 32;
    ci->sid_off = i;
    i += 1 + p[i];
    ci->suites_off = i;
    i += 2 + be16(p + i); /* cipher_suites */
    ci->comp_off = i;
    i += 1 + p[i]; /* legacy_compression_methods */
    ci->ext_off = i;
    size_t end = i + 2 + be16(p + i);
    assert_int_equal(end, ci->reclen);
    ci->exts_end = end;
    i += 2;
    while (i + 4 <= end && ci->n < 64) {
        ext *e = &ci->e[ci->n++];
        e->type = be16(p + i);
        e->len = be16(p + i + 2);
        e->data = p + i + 4;
        i += 4 + e->len;
    }
    assert_int_equal(i, end);
}

static const ext *ch_find(const chinfo *ci, unsigned type)
{
    for (int i = 0; i < ci->n; i++)
        if (ci->e[i].type == type) return &ci->e[i];
    return NULL;
}

/* The group of the first key share in the ClientHello. */
static unsigned ch_share_group(const chinfo *ci)
{
    const ext *e = ch_find(ci, EXT_KEY_SHARE);
    if (!e || e->len < 4) return 0;
    return be16(e->data + 2);
}

/* A ClientHello record like p but with the cipher_suites and
 * legacy_compression_methods vectors given (whole, with their length
 * fields; NULL: p's) and the extensions es[0..n). */
static size_t ch_build2(const unsigned char *p, const chinfo *ci, const unsigned char *suites,
                        size_t sl, const unsigned char *comp, size_t cl, const ext *es, int n,
                        unsigned char *out, size_t cap)
{
    size_t i = ci->suites_off;
    if (!suites) suites = p + ci->suites_off, sl = ci->comp_off - ci->suites_off;
    if (!comp) comp = p + ci->comp_off, cl = ci->ext_off - ci->comp_off;
    assert_true(i + sl + cl + 2 <= cap);
    memcpy(out, p, i);
    memcpy(out + i, suites, sl);
    i += sl;
    memcpy(out + i, comp, cl);
    i += cl;
    size_t ext_off = i;
    i += 2;
    for (int j = 0; j < n; j++) {
        assert_true(i + 4 + es[j].len <= cap);
        out[i] = (unsigned char)(es[j].type >> 8), out[i + 1] = (unsigned char)es[j].type;
        out[i + 2] = (unsigned char)(es[j].len >> 8), out[i + 3] = (unsigned char)es[j].len;
        memcpy(out + i + 4, es[j].data, es[j].len);
        i += 4 + es[j].len;
    }
    size_t el = i - ext_off - 2, hl = i - 9, rl = i - 5;
    out[ext_off] = (unsigned char)(el >> 8), out[ext_off + 1] = (unsigned char)el;
    out[6] = (unsigned char)(hl >> 16), out[7] = (unsigned char)(hl >> 8),
    out[8] = (unsigned char)hl;
    out[3] = (unsigned char)(rl >> 8), out[4] = (unsigned char)rl;
    return i;
}

static size_t ch_build(const unsigned char *p, const chinfo *ci, const ext *es, int n,
                       unsigned char *out, size_t cap)
{
    return ch_build2(p, ci, NULL, 0, NULL, 0, es, n, out, cap);
}

/* RFC 8446 §4.2.11.2, §7.1: recompute the (first) PSK binder of the
 * resumption ClientHello record ch for the session's PSK (OpenSSL keeps
 * the resumption PSK as the session's master key), so that a ClientHello
 * changed elsewhere still carries a binder that verifies. */
static void fix_binder(unsigned char *ch, size_t n, SSL_SESSION *sess)
{
    chinfo ci;
    unsigned char psk[64], zeros[64] = {0}, early[64], empty[64], bkey[64], fkey[64], th[64];
    unsigned int ml = 0;
    ch_parse(ch, n, &ci);
    const ext *e = &ci.e[ci.n - 1];
    assert_int_equal(e->type, EXT_PSK);
    const EVP_MD *md = SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(sess));
    size_t h = (size_t)EVP_MD_get_size(md);
    assert_int_equal(SSL_SESSION_get_master_key(sess, psk, sizeof psk), h);
    size_t binders = (size_t)(e->data - ch) + 2 + be16(e->data);  /* offset of binders<> */
    assert_non_null(HMAC(md, zeros, (int)h, psk, h, early, &ml)); /* HKDF-Extract(0, PSK) */
    assert_int_equal(EVP_Digest("", 0, empty, &ml, md, NULL), 1);
    hkdf_expand_label_ctx(md, early, h, "res binder", empty, h, bkey, h);
    hkdf_expand_label(md, bkey, h, "finished", fkey, h);
    assert_int_equal(EVP_Digest(ch + 5, binders - 5, th, &ml, md, NULL), 1); /* truncated CH */
    assert_int_equal(ch[binders + 2], h);
    assert_non_null(HMAC(md, fkey, (int)h, th, h, ch + binders + 3, &ml));
}

/* Start a connection and hold the client's ClientHello (not sent). */
static void hold_client_hello(conn *k, SSL_CTX *cctx, const opts *o)
{
    conn_start(k, cctx, o);
    k->c.hold = 1;
    c_connect(k);
    assert_true(k->c.chlen > 0);
    assert_true(k->c.wlen > 0);
}

/* Replace the held ClientHello with p (and send it). */
static void send_instead(conn *k, const unsigned char *p, size_t n)
{
    k->c.wlen = k->c.woff = 0;
    k->c.hold = 0;
    send_raw(k, p, n);
}

/* ---- setup ---- */

static int write_key_cert(EVP_PKEY *key, const char *cp, const char *kp)
{
    X509 *x = X509_new();
    int ok = x && X509_set_version(x, 2) && ASN1_INTEGER_set(X509_get_serialNumber(x), 7) &&
             X509_gmtime_adj(X509_getm_notBefore(x), -60) &&
             X509_gmtime_adj(X509_getm_notAfter(x), 86400) && X509_set_pubkey(x, key);
    X509_NAME *n = ok ? X509_get_subject_name(x) : NULL;
    ok = ok &&
         X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"example.org", -1,
                                    -1, 0) &&
         X509_set_issuer_name(x, n) &&
         X509_sign(x, key, EVP_PKEY_get_id(key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256()) > 0;
    FILE *f = ok ? fopen(cp, "w") : NULL;
    ok = f && PEM_write_X509(f, x);
    if (f) fclose(f);
    f = ok ? fopen(kp, "w") : NULL;
    ok = f && PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    if (f) fclose(f);
    X509_free(x);
    return ok ? 0 : -1;
}

static int setup(void **state)
{
    char err[512];
    if (harness_setup() != 0) return -1;
    snprintf(rsa_cert, sizeof rsa_cert, "%s/rsa-cert.pem", base);
    snprintf(rsa_key, sizeof rsa_key, "%s/rsa-key.pem", base);
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    if (!rsa || write_key_cert(rsa, rsa_cert, rsa_key) != 0) return -1;
    EVP_PKEY_free(rsa);
    tls_rsa = st_tls_ctx_new(rsa_cert, rsa_key, err, sizeof err);
    if (!tls_rsa) {
        fprintf(stderr, "ctx_new (RSA): %s\n", err);
        return -1;
    }
    hsx = st_tlshs_ctx_new(st_tls_ctx_get(tls), err, sizeof err);
    if (!hsx) {
        fprintf(stderr, "st_tlshs_ctx_new: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    st_tlshs_ctx_unref(hsx);
    st_tls_ctx_free(tls_rsa);
    return harness_teardown();
}

/* ==== the harness itself ==== */

/* The crafting keys open the client's own Finished, and a Finished the
 * harness seals with them completes the handshake: otherwise the hostile
 * tests prove nothing. */
static void harness_handshake_keys_open_the_clients_finished(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        conn_start(k, cctx, NULL);
        assert_int_equal(to_second_flight(k), ST_TLSHS_READ);
        craft_init(k);
        recs r;
        split_records(k->c.wire + k->c.woff, k->c.wlen, &r);
        assert_int_equal(r.n, 2); /* middlebox compatibility: CCS, Finished */
        assert_int_equal(r.type[0], 20);
        /* resealed by the harness: the same bytes as OpenSSL's */
        seal(&k->c, &k->c.k, 22, k->fin, k->finlen, 0);
        assert_int_equal(k->c.lastlen, r.len[1]);
        assert_memory_equal(k->c.last, k->c.wire + k->c.woff + r.off[1], r.len[1]);
        k->c.wlen = 0;
        k->c.hold = 0;
        send_raw(k, "\x14\x03\x03\x00\x01\x01", 6);
        send_raw(k, k->c.last, k->c.lastlen);
        s_steps(k);
        expect_done(k);
        conn_close(k);
        tfree(cctx);
    }
}

/* The harness's ClientHello surgery rebuilds a ClientHello byte for byte. */
static void harness_client_hello_rebuilt_unchanged_is_identical(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    chinfo ci;
    unsigned char *out = tmalloc(8192);
    hold_client_hello(k, cctx, NULL);
    ch_parse(k->c.ch, k->c.chlen, &ci);
    assert_int_equal(ci.reclen, k->c.chlen);
    assert_int_equal(ch_build(k->c.ch, &ci, ci.e, ci.n, out, 8192), k->c.chlen);
    assert_memory_equal(out, k->c.ch, k->c.chlen);
    send_instead(k, out, k->c.chlen);
    hs_run(k);
    expect_done(k);
    conn_close(k);
    tfree(out);
    tfree(cctx);
}

/* ==== full handshakes ==== */

/* RFC 8446 §9.1: each suite, with an X25519 and with a secp256r1 share. */
/* The suite is chosen in our order (tlshs.c, as tls.c gives OpenSSL):
 * AES-128-GCM, ChaCha20, AES-256-GCM among those the client offers; but
 * ChaCha20 when the client lists it first. */
static void tlshs_suite_is_ours_with_chacha20_when_the_client_puts_it_first(void **state)
{
    static const struct {
        const char *offer, *chosen;
    } cases[] = {
        {"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
         "TLS_AES_128_GCM_SHA256"},
        {"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256"},
        {"TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"},
        {"TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        SSL_CTX *cctx = client_ctx(cases[i].offer, 0);
        conn *k = conn_new();
        opts o = {0};
        full(k, cctx, &o);
        expect_done(k);
        assert_string_equal(st_tlshs_cipher(k->h), cases[i].chosen);
        assert_string_equal(SSL_CIPHER_standard_name(SSL_get_current_cipher(k->c.ssl)),
                            cases[i].chosen);
        exchange(k);
        close_both(k);
        conn_close(k);
        tfree(cctx);
    }
}

static void rfc8446_9_1_each_suite_with_x25519_and_p256_completes(void **state)
{
    static const struct {
        const char *groups;
        unsigned group;
    } gs[] = {{"X25519", G_X25519}, {"P-256", G_P256}, {"P-256:X25519", G_P256}};
    for (int s = 0; s < NSUITES; s++)
        for (size_t g = 0; g < sizeof gs / sizeof *gs; g++) {
            SSL_CTX *cctx = client_ctx(suites[s], 0);
            conn *k = conn_new();
            opts o = {.groups = gs[g].groups};
            chinfo ci;
            full(k, cctx, &o);
            ch_parse(k->c.ch, k->c.chlen, &ci);
            assert_int_equal(ch_share_group(&ci), gs[g].group); /* the harness offers that */
            expect_done(k);
            assert_string_equal(st_tlshs_cipher(k->h), suites[s]);
            assert_string_equal(SSL_CIPHER_standard_name(SSL_get_current_cipher(k->c.ssl)),
                                suites[s]);
            assert_int_equal(SSL_version(k->c.ssl), TLS1_3_VERSION);
            assert_int_equal(SSL_session_reused(k->c.ssl), 0);
            assert_int_equal(st_tlshs_resumed(k->h), 0);
            assert_null(st_tlshs_alpn(k->h));
            /* RFC 8446 §2: SH, then {EE, Certificate, CertificateVerify,
             * Finished}, then one NewSessionTicket (tlshs.h) */
            assert_int_equal(k->c.nhs, 6);
            assert_memory_equal(k->c.hs, "\x02\x08\x0b\x0f\x14\x04", 6);
            assert_int_equal(k->c.tickets, 1);
            for (int i = 0; i < 3; i++)
                exchange(k);
            close_both(k);
            conn_close(k);
            tfree(cctx);
        }
}

/* RFC 8446 §4.1.3: the ServerHello, as bytes: legacy_version 0x0303, a
 * random without the downgrade sentinels or the HelloRetryRequest value,
 * the client's legacy_session_id echoed, the suite, compression 0, and
 * only supported_versions (0x0304) and key_share (the client's group, a
 * key of the right size); then (Appendix D.4) a change_cipher_spec when
 * the client sent a session id, and only protected records after. */
static void check_server_hello(conn *k, int want_psk)
{
    static const unsigned char hrr[32] = {0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11,
                                          0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
                                          0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E,
                                          0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C};
    const unsigned char *f = k->flight;
    chinfo ci;
    recs r;
    ch_parse(k->c.ch, k->c.chlen, &ci);
    split_records(f, k->flightlen, &r);
    assert_true(r.complete);
    assert_true(r.n >= 2);
    assert_int_equal(r.type[0], 22);
    for (int i = 0; i < r.n; i++)
        assert_int_equal(be16(f + r.off[i] + 1), 0x0303); /* §5.1 legacy_record_version */
    const unsigned char *sh = f + 5, *end = f + r.len[0];
    assert_int_equal(sh[0], 2); /* server_hello */
    assert_int_equal(((size_t)sh[1] << 16 | sh[2] << 8 | sh[3]) + 4,
                     r.len[0] - 5); /* one message */
    const unsigned char *p = sh + 4;
    assert_int_equal(be16(p), 0x0303);
    p += 2;
    assert_memory_not_equal(p, hrr, 32);
    assert_memory_not_equal(p + 24, "DOWNGRD\x01", 8);
    assert_memory_not_equal(p + 24, "DOWNGRD\x00", 8);
    p += 32;
    size_t sidlen = k->c.ch[ci.sid_off];
    assert_int_equal(p[0], sidlen);
    assert_memory_equal(p + 1, k->c.ch + ci.sid_off + 1, sidlen);
    p += 1 + sidlen;
    const char *name = SSL_CIPHER_standard_name(SSL_get_current_cipher(k->c.ssl));
    unsigned suite = be16(p);
    int found = 0;
    for (int s = 0; s < NSUITES; s++)
        if (suite == suite_ids[s]) {
            assert_string_equal(name, suites[s]);
            found = 1;
        }
    assert_true(found);
    p += 2;
    assert_int_equal(p[0], 0);
    p += 1;
    assert_int_equal(be16(p) + 2, (size_t)(end - p));
    p += 2;
    int sv = 0, ks = 0, psk = 0;
    while (p < end) {
        assert_true(end - p >= 4);
        unsigned t = be16(p), l = be16(p + 2);
        const unsigned char *d = p + 4;
        assert_true(d + l <= end);
        if (t == EXT_SUPPORTED_VERSIONS) {
            assert_int_equal(l, 2);
            assert_int_equal(be16(d), 0x0304);
            sv++;
        } else if (t == EXT_KEY_SHARE) {
            unsigned g = be16(d), kl = be16(d + 2);
            assert_int_equal(l, 4 + kl);
            assert_int_equal(g, ch_share_group(&ci));
            assert_int_equal(kl, g == G_X25519 ? 32 : 65);
            if (g == G_P256) assert_int_equal(d[4], 4); /* uncompressed point */
            ks++;
        } else if (t == EXT_PSK) {
            assert_int_equal(l, 2);
            assert_int_equal(be16(d), 0); /* the one identity OpenSSL offers */
            psk++;
        } else {
            fail_msg("ServerHello extension %u (RFC 8446 §4.2: not allowed there)", t);
        }
        p = d + l;
    }
    assert_int_equal(sv, 1);
    assert_int_equal(ks, 1);
    assert_int_equal(psk, want_psk);
    int i = 1;
    if (sidlen) {
        assert_int_equal(r.len[1], 6);
        assert_memory_equal(f + r.off[1], "\x14\x03\x03\x00\x01\x01", 6);
        i = 2;
    }
    for (; i < r.n; i++)
        assert_int_equal(r.type[i], 23);
}

static void rfc8446_4_1_3_server_hello_is_well_formed(void **state)
{
    for (int s = 0; s < NSUITES; s++)
        for (int g = 0; g < 2; g++) {
            SSL_CTX *cctx = client_ctx(suites[s], 0);
            conn *k = conn_new();
            opts o = {.groups = g ? "P-256" : "X25519"};
            conn_start(k, cctx, &o);
            assert_int_equal(to_second_flight(k), ST_TLSHS_READ);
            assert_string_equal(st_tlshs_cipher(k->h), suites[s]); /* after our ServerHello */
            check_server_hello(k, 0);
            k->c.hold = 0;
            c_flush(k);
            s_steps(k);
            expect_done(k);
            conn_close(k);
            tfree(cctx);
        }
}

/* RFC 8446 Appendix D.4: with SSL_OP_ENABLE_MIDDLEBOX_COMPAT the client
 * sends a 32-byte legacy_session_id and a change_cipher_spec before its
 * Finished; the server echoes the id and sends its own change_cipher_spec
 * right after the ServerHello. Without it: an empty id, and (tlshs.h: "a
 * change_cipher_spec when the client sent a legacy session id"; the RFC
 * allows one either way, OpenSSL sends it) none from either side. */
static void rfc8446_d_4_middlebox_compatibility_on_and_off(void **state)
{
    for (int off = 0; off < 2; off++)
        for (int s = 0; s < NSUITES; s++) {
            SSL_CTX *cctx = client_ctx(suites[s], 0);
            conn *k = conn_new();
            opts o = {.no_compat = off};
            chinfo ci;
            recs r;
            conn_start(k, cctx, &o);
            assert_int_equal(to_second_flight(k), ST_TLSHS_READ);
            ch_parse(k->c.ch, k->c.chlen, &ci);
            assert_int_equal(k->c.ch[ci.sid_off], off ? 0 : 32);
            check_server_hello(k, 0);
            split_records(k->c.wire + k->c.woff, k->c.wlen, &r);
            assert_int_equal(r.n, off ? 1 : 2); /* the client's [CCS,] Finished */
            k->c.hold = 0;
            c_flush(k);
            s_steps(k);
            expect_done(k);
            close_both(k);
            conn_close(k);
            tfree(cctx);
        }
}

/* ==== channel bindings ==== */

static void rfc9266_exporter_and_rfc5929_server_end_point_match_the_client(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        unsigned char a[32], b[32], e[64];
        size_t el = 0;
        conn_start(k, cctx, NULL);
        assert_int_equal(st_tlshs_exporter(k->h, a), -1); /* not before DONE */
        assert_int_equal(st_tlshs_server_end_point(k->h, e, &el), -1);
        hs_run(k);
        check_bindings(k);
        /* and the same as st_tls_exporter on the client SSL */
        assert_int_equal(st_tlshs_exporter(k->h, a), 0);
        assert_int_equal(st_tls_exporter(k->c.ssl, b), 0);
        assert_memory_equal(a, b, 32);
        /* SHA-256: our certificate is signed with ecdsa-with-SHA256 */
        assert_int_equal(st_tlshs_server_end_point(k->h, e, &el), 0);
        assert_int_equal(el, 32);
        hs_finish(k);
        exchange(k);
        conn_close(k);
        tfree(cctx);
    }
}

/* tlshs.h: "After ST_TLSHS_DONE" - a SCRAM-PLUS exchange comes after the
 * stream restart, once st_tlshs_finish has handed the connection over. */
static void tlshs_channel_bindings_stay_available_after_finish(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    unsigned char before[32], after[32], e1[64], e2[64];
    size_t l1 = 0, l2 = 0;
    full(k, cctx, NULL);
    assert_int_equal(k->last, ST_TLSHS_DONE);
    assert_int_equal(st_tlshs_exporter(k->h, before), 0);
    assert_int_equal(st_tlshs_server_end_point(k->h, e1, &l1), 0);
    hs_finish(k);
    exchange(k);
    assert_int_equal(st_tlshs_exporter(k->h, after), 0);
    assert_memory_equal(before, after, 32);
    assert_int_equal(st_tlshs_server_end_point(k->h, e2, &l2), 0);
    assert_int_equal(l1, l2);
    assert_memory_equal(e1, e2, l1);
    conn_close(k);
    tfree(cctx);
}

/* ==== resumption (RFC 8446 §2.2, §4.2.11, §4.6.1) ==== */

static void rfc8446_2_2_ticket_resumes_with_psk_dhe_ke(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        SSL_SESSION *sess = get_ticket(cctx, hsx);
        for (int round = 0; round < 2; round++) {
            conn *k = conn_new();
            opts o = {.resume = sess};
            chinfo ci;
            conn_start(k, cctx, &o);
            assert_int_equal(to_second_flight(k), ST_TLSHS_READ);
            ch_parse(k->c.ch, k->c.chlen, &ci);
            assert_non_null(ch_find(&ci, EXT_PSK));
            check_server_hello(k, 1);
            k->c.hold = 0;
            c_flush(k);
            s_steps(k);
            assert_int_equal(k->last, ST_TLSHS_DONE);
            assert_int_equal(SSL_session_reused(k->c.ssl), 1);
            assert_int_equal(st_tlshs_resumed(k->h), 1);
            expect_done(k); /* bindings still match */
            /* no Certificate, no CertificateVerify; a new ticket */
            assert_int_equal(k->c.nhs, 4);
            assert_memory_equal(k->c.hs, "\x02\x08\x14\x04", 4);
            exchange(k);
            close_both(k);
            if (round == 0) { /* resume again from the new ticket */
                SSL_SESSION *next = ticket_of(k);
                tfree(sess);
                sess = next;
            }
            conn_close(k);
        }
        tfree(sess);
        tfree(cctx);
    }
}

/* Tickets are under the st_tlshs_ctx's own random key: another context
 * cannot open it, and the handshake is a full one. */
static void tlshs_ticket_from_another_ctx_is_not_resumed_but_completes(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    SSL_SESSION *sess = get_ticket(cctx, hsx);
    st_tlshs_ctx *other = x_new(tls);
    conn *k = conn_new();
    opts o = {.resume = sess, .x = other};
    full(k, cctx, &o);
    print_message("foreign ticket: %s\n", step_name(k->last));
    if (k->last == ST_TLSHS_OPENSSL) {
        expect_openssl_completes(k);
    } else {
        expect_done(k);
        assert_int_equal(st_tlshs_resumed(k->h), 0);
        assert_memory_equal(k->c.hs, "\x02\x08\x0b\x0f\x14\x04", 6);
    }
    assert_int_equal(SSL_session_reused(k->c.ssl), 0);
    conn_close(k);
    tfree(other);
    tfree(sess);
    tfree(cctx);
}

/* A ticket OpenSSL issued (the connection went to OpenSSL) is not one of
 * ours: never taken as resumed by us. */
static void tlshs_ticket_issued_by_openssl_is_not_taken_as_ours(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.groups = "P-384"}; /* goes to OpenSSL */
    full(k, cctx, &o);
    expect_openssl_completes(k);
    assert_true(k->c.tickets >= 1);
    SSL_SESSION *sess = sess_track(SSL_get1_session(k->c.ssl));
    conn_close(k);
    opts o2 = {.resume = sess};
    full(k, cctx, &o2);
    print_message("OpenSSL's ticket: %s\n", step_name(k->last));
    if (k->last == ST_TLSHS_OPENSSL) {
        expect_openssl_completes(k);
    } else {
        expect_done(k);
        assert_int_equal(st_tlshs_resumed(k->h), 0);
        assert_int_equal(SSL_session_reused(k->c.ssl), 0);
    }
    conn_close(k);
    tfree(sess);
    tfree(cctx);
}

/* RFC 8446 §4.6.1: ticket_lifetime is the lifetime set on the context,
 * and the default is at most 7 days. */
static void rfc8446_4_6_1_ticket_lifetime_is_the_one_set(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    full(k, cctx, NULL);
    expect_done(k);
    print_message("default ticket_lifetime %u s\n", k->c.ticket_lifetime);
    assert_true(k->c.ticket_lifetime > 0);
    assert_true(k->c.ticket_lifetime <= 604800);
    conn_close(k);
    st_tlshs_ctx *x = x_new(tls);
    st_tlshs_ctx_set_ticket_lifetime(x, 3600);
    opts o = {.x = x};
    full(k, cctx, &o);
    expect_done(k);
    assert_int_equal(k->c.ticket_lifetime, 3600);
    SSL_SESSION *sess = ticket_of(k);
    assert_int_equal(SSL_SESSION_get_ticket_lifetime_hint(sess), 3600);
    conn_close(k);
    tfree(sess);
    tfree(x);
    tfree(cctx);
}

/* tlshs.h: "Seconds a ticket we issue stays valid": one past its lifetime
 * is a full handshake. The client is made to offer it anyway. */
static void tlshs_ticket_past_its_lifetime_is_not_resumed(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    st_tlshs_ctx *x = x_new(tls);
    st_tlshs_ctx_set_ticket_lifetime(x, 1);
    SSL_SESSION *sess = get_ticket(cctx, x);
    sleep(3);
    SSL_SESSION_set_time(sess, (long)time(NULL)); /* the client still offers it */
    conn *k = conn_new();
    opts o = {.resume = sess, .x = x};
    conn_start(k, cctx, &o);
    hs_run(k);
    chinfo ci;
    ch_parse(k->c.ch, k->c.chlen, &ci);
    assert_non_null(ch_find(&ci, EXT_PSK)); /* it was offered */
    if (k->last == ST_TLSHS_OPENSSL) {
        expect_openssl_completes(k);
    } else {
        expect_done(k);
        assert_int_equal(st_tlshs_resumed(k->h), 0);
    }
    assert_int_equal(SSL_session_reused(k->c.ssl), 0);
    conn_close(k);
    tfree(sess);
    tfree(x);
    tfree(cctx);
}

/* RFC 8446 §4.2.11: "If this value does not validate, the server MUST
 * abort the handshake"; §6.2: decrypt_error is for "being unable to ...
 * validate ... a PSK binder" (OpenSSL 3.0 sends illegal_parameter). A
 * binder with one bit flipped is never a ServerHello. Going to OpenSSL
 * (which cannot open our ticket) is also allowed by tlshs.h. */
static void rfc8446_4_2_11_bad_binder_is_not_accepted(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    SSL_SESSION *sess = get_ticket(cctx, hsx);
    conn *k = conn_new();
    opts o = {.resume = sess};
    chinfo ci;
    unsigned char *ch = tmalloc(8192);
    hold_client_hello(k, cctx, &o);
    ch_parse(k->c.ch, k->c.chlen, &ci);
    assert_int_equal(ci.e[ci.n - 1].type, EXT_PSK);
    memcpy(ch, k->c.ch, ci.reclen);
    ch[ci.reclen - 1] ^= 0x01; /* the last byte of the binder */
    send_instead(k, ch, ci.reclen);
    int r = s_step(k);
    print_message("bad binder: %s (%s)\n", step_name(r), st_tlshs_error(k->h));
    if (r == ST_TLSHS_OPENSSL) {
        assert_untouched(k);
    } else {
        assert_int_equal(r, ST_TLSHS_FAILED);
        char how[256];
        int desc, nrec;
        diag_server_bytes(k, how, sizeof how, &desc, &nrec);
        print_message("the server sent %s\n", how);
        assert_int_equal(nrec, 1);
        assert_int_equal(desc, A_DECRYPT_ERROR);
    }
    assert_int_equal(st_tlshs_resumed(k->h), 0);
    conn_close(k);
    tfree(ch);
    tfree(sess);
    tfree(cctx);
}

/* A ticket identity with a byte changed does not open: never resumed. */
static void rfc8446_4_2_11_altered_ticket_is_not_resumed(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    SSL_SESSION *sess = get_ticket(cctx, hsx);
    conn *k = conn_new();
    opts o = {.resume = sess};
    chinfo ci;
    unsigned char *ch = tmalloc(8192);
    hold_client_hello(k, cctx, &o);
    ch_parse(k->c.ch, k->c.chlen, &ci);
    const ext *psk = ch_find(&ci, EXT_PSK);
    assert_non_null(psk);
    memcpy(ch, k->c.ch, ci.reclen);
    ch[(size_t)(psk->data - k->c.ch) + 2 + 2 + 10] ^= 0x40; /* inside the first identity */
    send_instead(k, ch, ci.reclen);
    for (int i = 0; i < SPINS && !over(k->last); i++) {
        s_step(k);
        c_connect(k); /* the client fails on our Finished: another transcript */
    }
    print_message("altered ticket: %s (%s)\n", step_name(k->last), st_tlshs_error(k->h));
    assert_int_not_equal(k->last, ST_TLSHS_DONE);
    assert_int_equal(st_tlshs_resumed(k->h), 0);
    if (k->last == ST_TLSHS_OPENSSL) assert_untouched(k);
    conn_close(k);
    tfree(ch);
    tfree(sess);
    tfree(cctx);
}

/* ==== ALPN (RFC 7301, XEP-0368) ==== */

static void xep0368_alpn_xmpp_client_selected_on_direct_tls(void **state)
{
    static const char *const offers[] = {"xmpp-client", "h2,xmpp-client"};
    for (int i = 0; i < 2; i++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = conn_new();
        opts o = {.direct = 1, .alpn = offers[i]};
        const unsigned char *sel = NULL;
        unsigned sl = 0;
        full(k, cctx, &o);
        expect_done(k);
        SSL_get0_alpn_selected(k->c.ssl, &sel, &sl);
        assert_int_equal(sl, 11);
        assert_memory_equal(sel, "xmpp-client", 11);
        assert_non_null(st_tlshs_alpn(k->h));
        assert_string_equal(st_tlshs_alpn(k->h), "xmpp-client");
        conn_close(k);
        tfree(cctx);
    }
}

/* A handshake with o completes with no protocol selected on either end. */
static void expect_no_alpn(const opts *o)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    const unsigned char *sel = NULL;
    unsigned sl = 0;
    full(k, cctx, o);
    expect_done(k);
    SSL_get0_alpn_selected(k->c.ssl, &sel, &sl);
    assert_int_equal(sl, 0);
    assert_null(st_tlshs_alpn(k->h));
    conn_close(k);
    tfree(cctx);
}

static void xep0368_no_alpn_after_starttls(void **state)
{
    opts o = {.direct = 0, .alpn = "xmpp-client"};
    expect_no_alpn(&o);
}

/* COMPAT (tls.c): a direct TLS client offering only other protocols is let
 * in without ALPN rather than failed with no_application_protocol. */
static void xep0368_direct_tls_client_offering_only_h2_gets_no_alpn(void **state)
{
    opts o = {.direct = 1, .alpn = "h2"};
    expect_no_alpn(&o);
}

/* ==== what goes to OpenSSL ==== */

static void tlshs_tls12_client_goes_to_openssl(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, TLS1_2_VERSION);
    conn *k = conn_new();
    full(k, cctx, NULL);
    expect_openssl_completes(k);
    assert_int_equal(SSL_version(k->server), TLS1_2_VERSION);
    assert_int_equal(SSL_version(k->c.ssl), TLS1_2_VERSION);
    conn_close(k);
    tfree(cctx);
}

/* A client that offers only P-384: no share we can use. */
static void tlshs_client_offering_only_p384_goes_to_openssl(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.groups = "P-384"};
    full(k, cctx, &o);
    expect_openssl_completes(k);
    assert_int_equal(SSL_version(k->c.ssl), TLS1_3_VERSION);
    assert_int_equal(k->c.hs[0], 2);
    conn_close(k);
    tfree(cctx);
}

/* RFC 8446 §4.1.4: the client's only key share is for a group we do not
 * take, X25519 supported second. P-384: OpenSSL (which has P-384 in
 * st_tls's groups) uses that share; P-521: OpenSSL sends the
 * HelloRetryRequest (the client sees two ServerHellos). */
static void rfc8446_4_1_4_share_we_do_not_take_goes_to_openssl_and_its_hello_retry(void **state)
{
    static const struct {
        const char *groups;
        unsigned share;
        int server_hellos;
    } cases[] = {{"P-384:X25519", G_P384, 1}, {"P-521:X25519", 0x0019, 2}};
    for (int i = 0; i < 2; i++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = conn_new();
        opts o = {.groups = cases[i].groups};
        chinfo ci;
        full(k, cctx, &o);
        ch_parse(k->c.ch, k->c.chlen, &ci);
        assert_int_equal(ch_share_group(&ci), cases[i].share);
        assert_non_null(ch_find(&ci, EXT_KEY_SHARE));
        expect_openssl_completes(k);
        int shs = 0;
        for (size_t j = 0; j < k->c.nhs; j++)
            shs += k->c.hs[j] == 2;
        assert_int_equal(shs, cases[i].server_hellos);
        conn_close(k);
        tfree(cctx);
    }
}

/* No suite of RFC 8446 §9.1 in common (TLS 1.3 only, CCM): OpenSSL's. */
static void tlshs_client_without_our_suites_goes_to_openssl(void **state)
{
    SSL_CTX *cctx = client_ctx("TLS_AES_128_CCM_SHA256", 0);
    assert_int_equal(SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION), 1);
    conn *k = conn_new();
    full(k, cctx, NULL);
    expect_openssl_alert(k);
    assert_int_equal(k->c.alert, A_HANDSHAKE_FAILURE);
    conn_close(k);
    tfree(cctx);
}

/* tlshs.h: the ClientHello must have arrived whole; a part of it is not
 * taken (READ, nothing consumed, or OPENSSL), and the handshake completes
 * either way once the rest is there. At several split points, over a
 * socketpair and over loopback TCP. */
static void tlshs_client_hello_in_two_parts_completes(void **state)
{
    for (int tcp = 0; tcp < 2; tcp++)
        for (int at = 0; at < 5; at++) {
            SSL_CTX *cctx = client_ctx(NULL, 0);
            conn *k = conn_new();
            opts o = {.tcp = tcp};
            hold_client_hello(k, cctx, &o);
            size_t n = k->c.wlen, cut;
            static const int cuts[] = {1, 5, 9, 0, -1};
            cut = cuts[at] > 0 ? (size_t)cuts[at] : cuts[at] == 0 ? n / 2 : n - 1;
            unsigned char *ch = tmalloc(n);
            memcpy(ch, k->c.wire + k->c.woff, n);
            k->c.wlen = k->c.woff = 0;
            k->c.hold = 0;
            send_raw(k, ch, cut);
            if (tcp) wait_queued(k->sfd, (int)cut, 200);
            int r = s_step(k);
            if (r != ST_TLSHS_READ && r != ST_TLSHS_OPENSSL)
                print_error("first %zu of %zu bytes: %s\n", cut, n, step_name(r));
            assert_true(r == ST_TLSHS_READ || r == ST_TLSHS_OPENSSL);
            if (r == ST_TLSHS_READ) {
                assert_int_equal(queued(k->sfd), (int)cut); /* nothing consumed */
                assert_int_equal(queued(k->c.fd), 0);       /* nothing sent */
                assert_null(st_tlshs_cipher(k->h));
            }
            send_raw(k, ch + cut, n - cut);
            print_message("%s, split at %zu of %zu: %s first, ", tcp ? "TCP" : "socketpair", cut, n,
                          step_name(r));
            if (r == ST_TLSHS_READ) hs_run(k);
            print_message("then %s\n", step_name(k->last));
            if (k->last == ST_TLSHS_OPENSSL)
                expect_openssl_completes(k);
            else
                expect_done(k);
            conn_close(k);
            tfree(ch);
            tfree(cctx);
        }
}

/* tlshs.h: a ClientHello split across two records is OpenSSL's (RFC 8446
 * §5.1 allows it), which completes it. */
static void rfc8446_5_1_client_hello_fragmented_across_records_goes_to_openssl(void **state)
{
    static const size_t cuts[] = {1, 4, 100};
    for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = conn_new();
        chinfo ci;
        unsigned char *two = tmalloc(8192);
        hold_client_hello(k, cctx, NULL);
        ch_parse(k->c.ch, k->c.chlen, &ci);
        size_t hl = ci.reclen - 5, a = cuts[c], b = hl - a;
        memcpy(two, k->c.ch, 3);
        two[3] = (unsigned char)(a >> 8), two[4] = (unsigned char)a;
        memcpy(two + 5, k->c.ch + 5, a);
        memcpy(two + 5 + a, k->c.ch, 3);
        two[5 + a + 3] = (unsigned char)(b >> 8), two[5 + a + 4] = (unsigned char)b;
        memcpy(two + 10 + a, k->c.ch + 5 + a, b);
        send_instead(k, two, 10 + hl);
        s_step(k);
        expect_openssl_completes(k);
        conn_close(k);
        tfree(two);
        tfree(cctx);
    }
}

/* RFC 8446 §4.2: "There MUST NOT be more than one extension of the same
 * type in a given extension block": OpenSSL's to refuse. */
static void rfc8446_4_2_duplicated_extension_goes_to_openssl(void **state)
{
    static const unsigned types[] = {EXT_SUPPORTED_GROUPS, EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS,
                                     EXT_SIGALGS};
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = conn_new();
        chinfo ci;
        ext es[65];
        int n = 0;
        unsigned char *ch = tmalloc(8192);
        hold_client_hello(k, cctx, NULL);
        ch_parse(k->c.ch, k->c.chlen, &ci);
        assert_non_null(ch_find(&ci, types[t]));
        for (int i = 0; i < ci.n; i++) {
            es[n++] = ci.e[i];
            if (ci.e[i].type == types[t]) es[n++] = ci.e[i]; /* twice, next to each other */
        }
        size_t len = ch_build(k->c.ch, &ci, es, n, ch, 8192);
        send_instead(k, ch, len);
        s_step(k);
        print_message("extension %#x twice: ", types[t]);
        expect_openssl_alert(k);
        conn_close(k);
        tfree(ch);
        tfree(cctx);
    }
}

/* RFC 8446 §4.2.11: pre_shared_key MUST be the last extension; servers
 * "MUST check that it is the last extension and otherwise fail the
 * handshake with an illegal_parameter alert": OpenSSL's to do. */
static void rfc8446_4_2_11_pre_shared_key_not_last_goes_to_openssl(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    SSL_SESSION *sess = get_ticket(cctx, hsx);
    conn *k = conn_new();
    opts o = {.resume = sess};
    chinfo ci;
    ext es[64];
    unsigned char *ch = tmalloc(8192);
    hold_client_hello(k, cctx, &o);
    ch_parse(k->c.ch, k->c.chlen, &ci);
    assert_int_equal(ci.e[ci.n - 1].type, EXT_PSK);
    es[0] = ci.e[ci.n - 1]; /* first instead of last */
    for (int i = 0; i < ci.n - 1; i++)
        es[i + 1] = ci.e[i];
    size_t len = ch_build(k->c.ch, &ci, es, ci.n, ch, 8192);
    send_instead(k, ch, len);
    s_step(k);
    expect_openssl_alert(k);
    assert_int_equal(k->c.alert, A_ILLEGAL_PARAMETER);
    conn_close(k);
    tfree(ch);
    tfree(sess);
    tfree(cctx);
}

/* tlshs.h: no early_data. An early_data extension put into a ClientHello
 * goes to OpenSSL untouched. */
static void rfc8446_4_2_10_early_data_extension_goes_to_openssl(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    chinfo ci;
    ext es[65];
    int n = 0;
    unsigned char *ch = tmalloc(8192);
    hold_client_hello(k, cctx, NULL);
    ch_parse(k->c.ch, k->c.chlen, &ci);
    for (int i = 0; i < ci.n; i++)
        es[n++] = ci.e[i];
    es[n++] = (ext){EXT_EARLY_DATA, (const unsigned char *)"", 0};
    size_t len = ch_build(k->c.ch, &ci, es, n, ch, 8192);
    send_instead(k, ch, len);
    s_step(k);
    assert_int_equal(k->last, ST_TLSHS_OPENSSL);
    print_message("to OpenSSL: \"%s\"\n", st_tlshs_error(k->h));
    /* OpenSSL's handshake then fails: the client's transcript is not the
     * ClientHello we sent; only that it was OpenSSL's matters here */
    assert_int_equal(openssl_takeover(k), -1);
    conn_close(k);
    tfree(ch);
    tfree(cctx);
}

/* A real 0-RTT attempt: the client resumes our ticket (told it may send
 * early data) and sends early data behind its ClientHello. OpenSSL gets
 * all of it, cannot open our ticket, rejects the early data (skipping its
 * records, RFC 8446 §4.2.10) and completes a full handshake. */
static void rfc8446_4_2_10_real_early_data_goes_to_openssl_which_rejects_it(void **state)
{
    SSL_CTX *cctx = client_ctx("TLS_AES_128_GCM_SHA256", 0);
    SSL_SESSION *sess = get_ticket(cctx, hsx);
    assert_int_equal(SSL_SESSION_set_max_early_data(sess, 16384), 1);
    conn *k = conn_new();
    opts o = {.resume = sess};
    size_t w = 0;
    conn_start(k, cctx, &o);
    assert_int_equal(SSL_write_early_data(k->c.ssl, "early", 5, &w), 1);
    assert_int_equal(w, 5);
    c_flush(k);
    chinfo ci;
    ch_parse(k->c.ch, k->c.chlen, &ci);
    assert_non_null(ch_find(&ci, EXT_EARLY_DATA));
    assert_true(k->c.loglen > ci.reclen); /* early data behind the ClientHello */
    s_step(k);
    expect_openssl_completes(k);
    assert_int_equal(SSL_get_early_data_status(k->c.ssl), SSL_EARLY_DATA_REJECTED);
    conn_close(k);
    tfree(sess);
    tfree(cctx);
}

/* RFC 8446 §4.2.3, §4.4.3: the client's signature_algorithms do not
 * include what our key makes (an ECDSA P-256 key: ecdsa_secp256r1_sha256):
 * OpenSSL's, which finds no scheme either. */
static void rfc8446_4_2_3_client_without_our_signature_scheme_goes_to_openssl(void **state)
{
    static const char *const lists[] = {"RSA-PSS+SHA256", "ECDSA+SHA384", "RSA+SHA256:ed25519"};
    for (int i = 0; i < 3; i++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        assert_int_equal(SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION), 1);
        conn *k = conn_new();
        opts o = {.sigalgs = lists[i]};
        full(k, cctx, &o);
        print_message("signature_algorithms %s: ", lists[i]);
        expect_openssl_alert(k);
        assert_int_equal(k->c.alert, A_HANDSHAKE_FAILURE);
        conn_close(k);
        tfree(cctx);
    }
    /* and with only ours, it is ours */
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.sigalgs = "ECDSA+SHA256"};
    full(k, cctx, &o);
    expect_done(k);
    int nid = 0;
    assert_int_equal(SSL_get_peer_signature_nid(k->c.ssl, &nid), 1);
    assert_int_equal(nid, NID_sha256);
    assert_int_equal(SSL_get_peer_signature_type_nid(k->c.ssl, &nid), 1);
    assert_int_equal(nid, EVP_PKEY_EC);
    conn_close(k);
    tfree(cctx);
}

/* RFC 8446 §4.4.3: an RSA key signs with RSASSA-PSS (rsa_pss_rsae_*),
 * never PKCS#1 v1.5, in TLS 1.3. */
static void rfc8446_4_4_3_rsa_key_signs_with_rsa_pss_rsae_sha256(void **state)
{
    st_tlshs_ctx *x = x_new(tls_rsa);
    static const char *const lists[] = {"RSA-PSS+SHA256", NULL};
    for (int i = 0; i < 2; i++)
        for (int s = 0; s < NSUITES; s++) {
            SSL_CTX *cctx = client_ctx(suites[s], 0);
            conn *k = conn_new();
            opts o = {.x = x, .fallback = tls_rsa, .sigalgs = lists[i]};
            full(k, cctx, &o);
            expect_done(k);
            int nid = 0;
            assert_int_equal(SSL_get_peer_signature_type_nid(k->c.ssl, &nid), 1);
            assert_int_equal(nid, EVP_PKEY_RSA_PSS);
            assert_int_equal(SSL_get_peer_signature_nid(k->c.ssl, &nid), 1);
            if (lists[i]) assert_int_equal(nid, NID_sha256);
            assert_memory_equal(k->c.hs, "\x02\x08\x0b\x0f\x14\x04", 6);
            conn_close(k);
            tfree(cctx);
        }
    /* PKCS#1 v1.5 only: not ours to sign (OpenSSL refuses it too) */
    SSL_CTX *cctx = client_ctx(NULL, 0);
    assert_int_equal(SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION), 1);
    conn *k = conn_new();
    opts o = {.x = x, .fallback = tls_rsa, .sigalgs = "RSA+SHA256"};
    full(k, cctx, &o);
    expect_openssl_alert(k);
    conn_close(k);
    tfree(cctx);
    tfree(x);
}

/* tlshs.h: st_tlshs_ctx_new is NULL with a reason for a key of a kind we
 * do not sign with; if it accepts one, what it signs must be right
 * (RFC 8446 §4.2.3: ecdsa_secp384r1_sha384 for P-384, ed25519). */
static void tlshs_ctx_new_with_other_key_kinds_is_null_or_signs_right(void **state)
{
    static const struct {
        const char *name;
        int type_nid, md_nid;
    } kinds[] = {{"P-384", EVP_PKEY_EC, NID_sha384}, {"ED25519", EVP_PKEY_ED25519, NID_undef}};
    char cp[300], kp[300], err[256];
    for (int i = 0; i < 2; i++) {
        EVP_PKEY *key = i == 0 ? EVP_EC_gen("P-384") : EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        assert_non_null(key);
        snprintf(cp, sizeof cp, "%s/other-%d-cert.pem", base, i);
        snprintf(kp, sizeof kp, "%s/other-%d-key.pem", base, i);
        assert_int_equal(write_key_cert(key, cp, kp), 0);
        EVP_PKEY_free(key);
        st_tls_ctx *t = st_tls_ctx_new(cp, kp, err, sizeof err);
        assert_non_null(t);
        err[0] = 0;
        st_tlshs_ctx *x = st_tlshs_ctx_new(st_tls_ctx_get(t), err, sizeof err);
        if (!x) {
            print_message("%s key: NULL, \"%s\"\n", kinds[i].name, err);
            assert_true(err[0] != 0);
            st_tls_ctx_free(t);
            continue;
        }
        x_track(x);
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = conn_new();
        opts o = {.x = x, .fallback = t};
        full(k, cctx, &o);
        print_message("%s key: %s\n", kinds[i].name, step_name(k->last));
        if (k->last == ST_TLSHS_OPENSSL) {
            expect_openssl_completes(k);
        } else {
            expect_done(k);
            int nid = 0;
            assert_int_equal(SSL_get_peer_signature_type_nid(k->c.ssl, &nid), 1);
            assert_int_equal(nid, kinds[i].type_nid);
            if (kinds[i].md_nid != NID_undef) {
                assert_int_equal(SSL_get_peer_signature_nid(k->c.ssl, &nid), 1);
                assert_int_equal(nid, kinds[i].md_nid);
            }
        }
        conn_close(k);
        tfree(cctx);
        tfree(x);
        st_tls_ctx_free(t);
    }
}

/* ==== ClientHellos the RFC says must be refused ==== */

/* Find extension type in the ServerHello at the start of the flight the
 * client socket holds (peeked); 1 if there. *suite: its cipher suite. */
static int sh_has_ext(conn *k, unsigned type, unsigned *suite)
{
    unsigned char f[4096];
    ssize_t n = recv(k->c.fd, f, sizeof f, MSG_PEEK);
    assert_true(n > 5 + 4 + 2 + 32 + 1);
    assert_int_equal(f[0], 22);
    assert_int_equal(f[5], 2);
    const unsigned char *p = f + 9 + 2 + 32, *end = f + 5 + be16(f + 3);
    assert_true(end <= f + n);
    p += 1 + p[0];
    if (suite) *suite = be16(p);
    p += 2 + 1 + 2;
    while (p + 4 <= end) {
        if (be16(p) == type) return 1;
        p += 4 + be16(p + 2);
    }
    return 0;
}

/* A ClientHello the server must not answer with a ServerHello: FAILED
 * with one of the alerts given (a plaintext alert, before any ServerHello),
 * or OPENSSL with the socket untouched (OpenSSL then decides). */
static int client_hello_refused(conn *k, const int *alerts, int n)
{
    int r = s_step(k);
    print_message("%s (%s)", step_name(r), st_tlshs_error(k->h) ? st_tlshs_error(k->h) : "-");
    if (r == ST_TLSHS_OPENSSL) {
        assert_untouched(k);
        int rc = openssl_takeover(k);
        print_message("; then OpenSSL: %s, client read alert %d\n", rc ? "failed" : "completed",
                      k->c.alert);
        return 1;
    }
    if (r != ST_TLSHS_FAILED) {
        print_message("\n");
        print_error("the server answered a ClientHello it must refuse: %s\n", step_name(r));
    }
    assert_int_equal(r, ST_TLSHS_FAILED);
    char how[256];
    int desc, nrec, ok = 0;
    diag_server_bytes(k, how, sizeof how, &desc, &nrec);
    print_message("; the server sent %s\n", how);
    for (int i = 0; i < n; i++)
        ok |= desc == alerts[i];
    if (!ok) print_error("alert %d is not the one RFC 8446 names (%d)\n", desc, alerts[0]);
    return ok;
}

static void expect_client_hello_refused(conn *k, const int *alerts, int n)
{
    assert_true(client_hello_refused(k, alerts, n));
}

/* The held ClientHello's key share replaced: group, key bytes. */
static size_t ch_with_share(conn *k, unsigned group, const unsigned char *key, size_t kl,
                            unsigned char *out)
{
    chinfo ci;
    ext es[64];
    unsigned char ks[2 + 4 + 133];
    ch_parse(k->c.ch, k->c.chlen, &ci);
    ks[0] = (unsigned char)((4 + kl) >> 8), ks[1] = (unsigned char)(4 + kl);
    ks[2] = (unsigned char)(group >> 8), ks[3] = (unsigned char)group;
    ks[4] = (unsigned char)(kl >> 8), ks[5] = (unsigned char)kl;
    memcpy(ks + 6, key, kl);
    for (int i = 0; i < ci.n; i++) {
        es[i] = ci.e[i];
        if (es[i].type == EXT_KEY_SHARE) es[i].data = ks, es[i].len = 6 + kl;
    }
    return ch_build(k->c.ch, &ci, es, ci.n, out, 8192);
}

/* RFC 8446 §7.4.2: "For X25519 and X448, implementations MUST check
 * whether the computed Diffie-Hellman shared secret is the all-zero value
 * and abort if so"; §4.2.8.2: a P-256 share must be a valid point; a
 * share of the wrong size is malformed. illegal_parameter (§6.2), or
 * decode_error for the size. */
static void rfc8446_7_4_2_invalid_key_shares_are_refused(void **state)
{
    static const int alerts[] = {A_ILLEGAL_PARAMETER, A_DECODE_ERROR, A_HANDSHAKE_FAILURE};
    int wrong = 0;
    for (int v = 0; v < 6; v++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = conn_new();
        opts o = {.groups = v < 3 ? "X25519" : "P-256"};
        unsigned char key[133], *ch = tmalloc(8192);
        chinfo ci;
        hold_client_hello(k, cctx, &o);
        ch_parse(k->c.ch, k->c.chlen, &ci);
        const ext *e = ch_find(&ci, EXT_KEY_SHARE);
        size_t kl = be16(e->data + 4), len;
        memcpy(key, e->data + 6, kl);
        static const char *const what[] = {"X25519 all zero",       "X25519 u = 1 (low order)",
                                           "X25519 of 31 bytes",    "P-256 point off the curve",
                                           "P-256 compressed form", "P-256 of 64 bytes"};
        switch (v) {
        case 0:
            memset(key, 0, 32);
            break;
        case 1:
            memset(key, 0, 32), key[0] = 1;
            break;
        case 2:
            kl = 31;
            break;
        case 3:
            key[1 + 31] ^= 0x01; /* the last byte of x: almost surely no point */
            break;
        case 4:
            key[0] = 0x02;
            break;
        case 5:
            kl = 64;
            break;
        }
        len = ch_with_share(k, v < 3 ? G_X25519 : G_P256, key, kl, ch);
        send_instead(k, ch, len);
        print_message("%s: ", what[v]);
        wrong += !client_hello_refused(k, alerts, 3);
        conn_close(k);
        tfree(ch);
        tfree(cctx);
    }
    assert_int_equal(wrong, 0);
}

/* RFC 8446 §4.1.2: legacy_compression_methods "MUST contain exactly one
 * byte, set to zero ... the server MUST abort the handshake with an
 * illegal_parameter alert". */
static void rfc8446_4_1_2_compression_methods_other_than_null_are_refused(void **state)
{
    static const int alerts[] = {A_ILLEGAL_PARAMETER};
    static const unsigned char comps[][3] = {{2, 1, 0}, {1, 1}, {2, 0, 0}};
    static const size_t cls[] = {3, 2, 3};
    for (int v = 0; v < 3; v++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        assert_int_equal(SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION), 1);
        conn *k = conn_new();
        chinfo ci;
        unsigned char *ch = tmalloc(8192);
        hold_client_hello(k, cctx, NULL);
        ch_parse(k->c.ch, k->c.chlen, &ci);
        size_t len = ch_build2(k->c.ch, &ci, NULL, 0, comps[v], cls[v], ci.e, ci.n, ch, 8192);
        send_instead(k, ch, len);
        expect_client_hello_refused(k, alerts, 1);
        conn_close(k);
        tfree(ch);
        tfree(cctx);
    }
}

/* RFC 8446 §9.2: a key_share needs supported_groups, and without a
 * pre_shared_key both signature_algorithms and supported_groups are
 * needed: "MUST abort the handshake with a missing_extension alert". */
static void rfc8446_9_2_missing_mandatory_extensions_are_refused(void **state)
{
    static const int alerts[] = {109 /* missing_extension */};
    static const unsigned drop[] = {EXT_SUPPORTED_GROUPS, EXT_SIGALGS};
    for (int v = 0; v < 2; v++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = conn_new();
        chinfo ci;
        ext es[64];
        int n = 0;
        unsigned char *ch = tmalloc(8192);
        hold_client_hello(k, cctx, NULL);
        ch_parse(k->c.ch, k->c.chlen, &ci);
        for (int i = 0; i < ci.n; i++)
            if (ci.e[i].type != drop[v]) es[n++] = ci.e[i];
        assert_int_equal(n, ci.n - 1);
        size_t len = ch_build(k->c.ch, &ci, es, n, ch, 8192);
        send_instead(k, ch, len);
        print_message("without extension %#x: ", drop[v]);
        expect_client_hello_refused(k, alerts, 1);
        conn_close(k);
        tfree(ch);
        tfree(cctx);
    }
}

/* The harness's binder: recomputed over the client's own resumption
 * ClientHello it is the client's, byte for byte. */
static void harness_recomputed_binder_is_the_clients(void **state)
{
    for (int s = 0; s < 2; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        SSL_SESSION *sess = get_ticket(cctx, hsx);
        conn *k = conn_new();
        opts o = {.resume = sess};
        chinfo ci;
        unsigned char *ch = tmalloc(8192);
        hold_client_hello(k, cctx, &o);
        ch_parse(k->c.ch, k->c.chlen, &ci);
        memcpy(ch, k->c.ch, ci.reclen);
        size_t h =
            (size_t)EVP_MD_get_size(SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(sess)));
        memset(ch + ci.reclen - h, 0, h);
        fix_binder(ch, ci.reclen, sess);
        assert_memory_equal(ch, k->c.ch, ci.reclen);
        send_instead(k, ch, ci.reclen);
        hs_run(k);
        expect_done(k);
        assert_int_equal(st_tlshs_resumed(k->h), 1);
        conn_close(k);
        tfree(ch);
        tfree(sess);
        tfree(cctx);
    }
}

/* A resumption ClientHello changed by f, its binder recomputed: the
 * server's first answer. */
static int resume_changed(conn *k, SSL_CTX *cctx, SSL_SESSION *sess,
                          size_t (*f)(const unsigned char *, const chinfo *, unsigned char *))
{
    opts o = {.resume = sess};
    chinfo ci;
    unsigned char *ch = tmalloc(8192);
    hold_client_hello(k, cctx, &o);
    ch_parse(k->c.ch, k->c.chlen, &ci);
    assert_int_equal(ci.e[ci.n - 1].type, EXT_PSK);
    size_t len = f(k->c.ch, &ci, ch);
    fix_binder(ch, len, sess);
    send_instead(k, ch, len);
    int r = s_step(k);
    tfree(ch);
    return r;
}

static size_t only_psk_ke(const unsigned char *p, const chinfo *ci, unsigned char *out)
{
    ext es[64];
    static const unsigned char ke[] = {1, 0}; /* psk_ke only */
    for (int i = 0; i < ci->n; i++) {
        es[i] = ci->e[i];
        if (es[i].type == EXT_PSK_MODES) es[i].data = ke, es[i].len = 2;
    }
    return ch_build(p, ci, es, ci->n, out, 8192);
}

static size_t no_psk_modes(const unsigned char *p, const chinfo *ci, unsigned char *out)
{
    ext es[64];
    int n = 0;
    for (int i = 0; i < ci->n; i++)
        if (ci->e[i].type != EXT_PSK_MODES) es[n++] = ci->e[i];
    assert_int_equal(n, ci->n - 1);
    return ch_build(p, ci, es, n, out, 8192);
}

static size_t only_aes256(const unsigned char *p, const chinfo *ci, unsigned char *out)
{
    static const unsigned char s[] = {0, 2, 0x13, 0x02};
    return ch_build2(p, ci, s, sizeof s, NULL, 0, ci->e, ci->n, out, 8192);
}

static size_t only_sha256_suites(const unsigned char *p, const chinfo *ci, unsigned char *out)
{
    static const unsigned char s[] = {0, 4, 0x13, 0x01, 0x13, 0x03};
    return ch_build2(p, ci, s, sizeof s, NULL, 0, ci->e, ci->n, out, 8192);
}

/* RFC 8446 §4.2.9: "Servers MUST NOT select a key exchange mode that is
 * not listed by the client"; tlshs.h resumes psk_dhe_ke only. A client
 * offering only psk_ke (with a binder that verifies) is not resumed. */
static void rfc8446_4_2_9_psk_ke_only_client_is_not_resumed(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    SSL_SESSION *sess = get_ticket(cctx, hsx);
    conn *k = conn_new();
    int r = resume_changed(k, cctx, sess, only_psk_ke);
    print_message("psk_ke only: %s (%s)\n", step_name(r), st_tlshs_error(k->h));
    if (r == ST_TLSHS_OPENSSL) {
        assert_untouched(k);
    } else if (r == ST_TLSHS_READ) {
        assert_int_equal(sh_has_ext(k, EXT_PSK, NULL), 0); /* a full handshake */
        assert_int_equal(st_tlshs_resumed(k->h), 0);
    } else {
        assert_int_equal(r, ST_TLSHS_FAILED);
    }
    conn_close(k);
    tfree(sess);
    tfree(cctx);
}

/* RFC 8446 §4.2.9: "If clients offer pre_shared_key without a
 * psk_key_exchange_modes extension, servers MUST abort the handshake." */
static void rfc8446_4_2_9_pre_shared_key_without_psk_modes_is_refused(void **state)
{
    static const int alerts[] = {109 /* missing_extension */, A_ILLEGAL_PARAMETER};
    SSL_CTX *cctx = client_ctx(NULL, 0);
    SSL_SESSION *sess = get_ticket(cctx, hsx);
    conn *k = conn_new();
    opts o = {.resume = sess};
    chinfo ci;
    unsigned char *ch = tmalloc(8192);
    hold_client_hello(k, cctx, &o);
    ch_parse(k->c.ch, k->c.chlen, &ci);
    size_t len = no_psk_modes(k->c.ch, &ci, ch);
    fix_binder(ch, len, sess);
    send_instead(k, ch, len);
    expect_client_hello_refused(k, alerts, 2);
    assert_int_equal(st_tlshs_resumed(k->h), 0);
    conn_close(k);
    tfree(ch);
    tfree(sess);
    tfree(cctx);
}

/* RFC 8446 §4.2.11: "the server MUST ensure that it selects a compatible
 * PSK (if any) and cipher suite": a ticket from a SHA-256 suite is not
 * used with TLS_AES_256_GCM_SHA384, nor a SHA-384 one with the SHA-256
 * suites (binders recomputed, so only the suites are wrong). */
static void rfc8446_4_2_11_ticket_not_used_with_a_suite_of_another_hash(void **state)
{
    for (int v = 0; v < 2; v++) {
        SSL_CTX *cctx = client_ctx(v ? suites[1] : suites[0], 0);
        SSL_SESSION *sess = get_ticket(cctx, hsx);
        conn *k = conn_new();
        int r = resume_changed(k, cctx, sess, v ? only_sha256_suites : only_aes256);
        unsigned suite = 0;
        print_message("%s ticket, other suites: %s (%s)\n", suites[v], step_name(r),
                      st_tlshs_error(k->h));
        if (r == ST_TLSHS_OPENSSL) {
            assert_untouched(k);
        } else if (r == ST_TLSHS_READ) {
            int psk = sh_has_ext(k, EXT_PSK, &suite);
            print_message("  ServerHello: suite %#x, pre_shared_key %s\n", suite,
                          psk ? "accepted" : "not used");
            assert_int_equal(psk, 0);
            assert_int_equal(st_tlshs_resumed(k->h), 0);
        } else {
            assert_int_equal(r, ST_TLSHS_FAILED);
        }
        conn_close(k);
        tfree(sess);
        tfree(cctx);
    }
}

/* ==== the socket: full, split, bytes behind ==== */

/* Fill fd's send buffer until not even one byte more goes in. */
static size_t fill_socket(int fd)
{
    static unsigned char junk[4096];
    size_t total = 0, chunk = sizeof junk;
    for (int i = 0; i < 100000 && chunk; i++) {
        ssize_t w = write(fd, junk, chunk);
        if (w > 0)
            total += (size_t)w;
        else
            chunk /= 2;
    }
    return total;
}

static void drain_exact(int fd, size_t n)
{
    unsigned char buf[4096];
    for (int i = 0; i < 100000 && n; i++) {
        ssize_t r = read(fd, buf, n < sizeof buf ? n : sizeof buf);
        if (r > 0) n -= (size_t)r;
    }
    assert_int_equal(n, 0);
}

/* tlshs.h: ST_TLSHS_WRITE when the socket does not take the flight; the
 * step goes on when it is writable. Also for the NewSessionTicket after
 * the client's Finished (sent, or kept for the record layer). */
static void tlshs_write_when_the_socket_is_full_then_completes(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        conn_start(k, cctx, NULL);
        c_connect(k); /* the ClientHello */
        size_t junk = fill_socket(k->sfd);
        assert_true(junk > 0);
        assert_int_equal(s_step(k), ST_TLSHS_WRITE);
        assert_int_equal(s_step(k), ST_TLSHS_WRITE);
        drain_exact(k->c.fd, junk);
        assert_int_equal(s_steps(k), ST_TLSHS_READ);
        k->c.hold = 1;
        for (int i = 0; i < SPINS && !k->c.done; i++)
            c_connect(k);
        assert_true(k->c.done);
        junk = fill_socket(k->sfd);
        k->c.hold = 0;
        c_flush(k);
        int r = s_step(k), writes = 0;
        for (int i = 0; i < 5 && r == ST_TLSHS_WRITE; i++, writes++)
            r = s_step(k);
        drain_exact(k->c.fd, junk);
        for (int i = 0; i < SPINS && r == ST_TLSHS_WRITE; i++)
            r = s_step(k);
        print_message("%s: the ticket behind a full socket: %d WRITE, then %s\n", suites[s], writes,
                      step_name(r));
        assert_int_equal(r, ST_TLSHS_DONE);
        hs_finish(k);
        for (int i = 0; i < SPINS && st_tlsrec_unsent(k->rec); i++)
            assert_true(st_tlsrec_write(k->rec, k->sfd, NULL, 0) >= 0);
        exchange(k);
        assert_int_equal(k->c.tickets, 1);
        conn_close(k);
        tfree(cctx);
    }
}

/* RFC 8446 §5.1: the record with the client's Finished arrives one byte
 * at a time (two TCP writes and more): READ until the last byte, then
 * DONE. Over a socketpair and loopback TCP. */
static void rfc8446_5_1_client_finished_arriving_byte_by_byte_completes(void **state)
{
    for (int tcp = 0; tcp < 2; tcp++)
        for (int s = 0; s < NSUITES; s++) {
            SSL_CTX *cctx = client_ctx(suites[s], 0);
            conn *k = conn_new();
            opts o = {.tcp = tcp};
            conn_start(k, cctx, &o);
            assert_int_equal(to_second_flight(k), ST_TLSHS_READ);
            size_t n = k->c.wlen;
            unsigned char *w = tmalloc(n);
            memcpy(w, k->c.wire + k->c.woff, n);
            k->c.wlen = k->c.woff = 0;
            k->c.hold = 0;
            for (size_t i = 0; i < n; i++) {
                assert_int_equal(write(k->c.fd, w + i, 1), 1);
                if (tcp) wait_queued(k->sfd, 1, 100);
                int r = s_step(k);
                if (i + 1 < n && r != ST_TLSHS_READ)
                    print_error("byte %zu of %zu: %s (%s)\n", i + 1, n, step_name(r),
                                st_tlshs_error(k->h));
                if (i + 1 < n) assert_int_equal(r, ST_TLSHS_READ);
            }
            if (k->last != ST_TLSHS_DONE) s_steps(k);
            expect_done(k);
            tfree(w);
            conn_close(k);
            tfree(cctx);
        }
}

/* tlshs.h: "What the handshake read past the client's Finished (its first
 * application data, often in the same segment) is handed to the record
 * layer": whatever of it is not in the socket any more is in
 * st_tlsrec_buffered, and st_tlsrec_read returns it at once. Also with a
 * KeyUpdate (update_requested) between the Finished and the data. */
static void tlshs_client_data_behind_its_finished_reaches_the_record_layer(void **state)
{
    static const char early[] = "<stream:stream to='example.org'>";
    for (int s = 0; s < NSUITES; s++)
        for (int resumed = 0; resumed < 3; resumed++) {
            int ku = resumed == 2;
            SSL_CTX *cctx = client_ctx(suites[s], 0);
            SSL_SESSION *sess = resumed == 1 ? get_ticket(cctx, hsx) : NULL;
            conn *k = conn_new();
            opts o = {.resume = sess};
            conn_start(k, cctx, &o);
            assert_int_equal(to_second_flight(k), ST_TLSHS_READ);
            size_t before = k->c.wlen;
            if (ku) assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
            assert_int_equal(SSL_write(k->c.ssl, early, (int)sizeof early - 1),
                             (int)sizeof early - 1);
            c_flush(k);
            size_t data = k->c.wlen - before;
            assert_int_equal(data, (ku ? 5 + 5 + 1 + 16 : 0) + 5 + sizeof early - 1 + 1 + 16);
            k->c.hold = 0;
            assert_true(c_flush(k)); /* Finished and data in one write */
            s_steps(k);
            assert_int_equal(k->last, ST_TLSHS_DONE);
            assert_int_equal(st_tlshs_resumed(k->h), resumed == 1);
            int left = queued(k->sfd);
            check_bindings(k);
            hs_finish(k);
            size_t held = st_tlsrec_buffered(k->rec);
            if ((size_t)left + held != data)
                print_error("%s%s: %zu bytes behind the Finished, %d left in the socket, %zu "
                            "buffered\n",
                            suites[s],
                            resumed == 1 ? " resumed"
                            : ku         ? " KeyUpdate"
                                         : "",
                            data, left, held);
            assert_int_equal((size_t)left + held, data);
            unsigned char buf[64];
            if (left == 0) { /* read at once, the fd is not readable */
                assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), sizeof early - 1);
                assert_memory_equal(buf, early, sizeof early - 1);
            } else {
                s_expect(k, early, sizeof early - 1);
            }
            exchange(k);
            conn_close(k);
            if (sess) tfree(sess);
            tfree(cctx);
        }
}

/* RFC 8446 §5: a change_cipher_spec right behind the ClientHello, in the
 * same write, is dropped (the client's own comes again later). */
static void rfc8446_5_change_cipher_spec_right_behind_client_hello_is_dropped(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    unsigned char *two = tmalloc(8192);
    hold_client_hello(k, cctx, NULL);
    size_t n = k->c.wlen;
    memcpy(two, k->c.wire + k->c.woff, n);
    memcpy(two + n, "\x14\x03\x03\x00\x01\x01", 6);
    send_instead(k, two, n + 6);
    hs_run(k);
    expect_done(k);
    conn_close(k);
    tfree(two);
    tfree(cctx);
}

/* ==== the hostile second flight (RFC 8446 §4.4.4, §5, §6) ==== */

enum {
    H_CCS,       /* the client's change_cipher_spec */
    H_FIN,       /* its Finished, sealed by the harness */
    H_REC,       /* a record sealed with the client's handshake key */
    H_RAW,       /* bytes as they are */
    H_FIN_FLIP,  /* Finished with bit 0 of verify_data[arg] flipped */
    H_FIN_LEN,   /* Finished with arg bytes more (or fewer) of verify_data */
    H_CT_FLIP,   /* the Finished record with a bit of byte arg flipped (< 0: from the end) */
    H_FIN_SPLIT, /* the Finished in two handshake records, the first of arg bytes */
    H_FIN_PAD,   /* Finished with arg zeros of padding */
    H_FIN_PLUS,  /* Finished and bytes after it in the same record */
    H_APPKEY,    /* application data under the client's application key */
    H_FIN_PART,  /* the first arg bytes of the Finished record */
    H_EOF,       /* the client shuts down its write side */
};

typedef struct hstep {
    int kind;
    int type;          /* H_REC: inner content type, -1 none */
    const char *bytes; /* H_REC, H_RAW, H_FIN_PLUS; NULL: len 'A's */
    size_t len;
    long arg; /* H_REC: padding; see above */
} hstep;

#define HREC(t, s)                                                                                 \
    {                                                                                              \
        H_REC, t, s, sizeof s - 1, 0                                                               \
    }
#define HRAW(s)                                                                                    \
    {                                                                                              \
        H_RAW, 0, s, sizeof s - 1, 0                                                               \
    }
#define HK(kind, arg)                                                                              \
    {                                                                                              \
        kind, 0, NULL, 0, arg                                                                      \
    }
#define CCS HK(H_CCS, 0)
#define FIN HK(H_FIN, 0)

static void run_hstep(conn *k, const hstep *st)
{
    client *c = &k->c;
    unsigned char *fill = NULL, m[4 + 64 + 64];
    const void *bytes = st->bytes;
    if (!bytes && st->len) {
        fill = tmalloc(st->len);
        memset(fill, 'A', st->len);
        bytes = fill;
    }
    size_t h = k->finlen - 4;
    switch (st->kind) {
    case H_CCS:
        send_raw(k, "\x14\x03\x03\x00\x01\x01", 6);
        break;
    case H_FIN:
        send_rec(k, 22, k->fin, k->finlen, 0);
        break;
    case H_REC:
        send_rec(k, st->type, bytes, st->len, (size_t)st->arg);
        break;
    case H_RAW:
        send_raw(k, bytes, st->len);
        break;
    case H_FIN_FLIP:
        memcpy(m, k->fin, k->finlen);
        m[4 + (st->arg >= 0 ? (size_t)st->arg : h - (size_t)-st->arg)] ^= 0x01;
        send_rec(k, 22, m, k->finlen, 0);
        break;
    case H_FIN_LEN: {
        size_t vl = (size_t)((long)h + st->arg);
        memset(m, 0, sizeof m);
        memcpy(m, k->fin, vl < h ? 4 + vl : k->finlen);
        m[1] = 0, m[2] = 0, m[3] = (unsigned char)vl;
        send_rec(k, 22, m, 4 + vl, 0);
        break;
    }
    case H_CT_FLIP: {
        seal(c, &c->k, 22, k->fin, k->finlen, 0);
        size_t at = st->arg >= 0 ? (size_t)st->arg : c->lastlen - (size_t)(-st->arg);
        c->last[at] ^= 0x10;
        send_raw(k, c->last, c->lastlen);
        break;
    }
    case H_FIN_SPLIT:
        send_rec(k, 22, k->fin, (size_t)st->arg, 0);
        send_rec(k, 22, k->fin + st->arg, k->finlen - (size_t)st->arg, 0);
        break;
    case H_FIN_PAD:
        send_rec(k, 22, k->fin, k->finlen, (size_t)st->arg);
        break;
    case H_FIN_PLUS:
        memcpy(m, k->fin, k->finlen);
        memcpy(m + k->finlen, bytes, st->len);
        send_rec(k, 22, m, k->finlen + st->len, 0);
        break;
    case H_APPKEY: {
        keys app;
        keys_from(k, &c->cap, &app);
        seal(c, &app, 23, "too soon", 8, 0);
        send_raw(k, c->last, c->lastlen);
        break;
    }
    case H_FIN_PART:
        seal(c, &c->k, 22, k->fin, k->finlen, 0);
        send_raw(k, c->last, (size_t)st->arg);
        break;
    case H_EOF:
        assert_int_equal(shutdown(c->fd, SHUT_WR), 0);
        break;
    }
    tfree(fill);
}

/* For each suite: the handshake up to the client's second flight (which
 * is dropped), then the steps instead, the server stepped after each;
 * then WORKS (DONE, data both ways) or FAILED with that alert. */
static void run_hostile(const hstep *steps, size_t n, int alert)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        conn_start(k, cctx, NULL);
        assert_int_equal(to_second_flight(k), ST_TLSHS_READ);
        craft_init(k);
        k->c.wlen = k->c.woff = 0; /* the client's own second flight */
        k->c.hold = 0;
        for (size_t i = 0; i < n && !over(k->last); i++) {
            run_hstep(k, &steps[i]);
            s_steps(k);
            if (i + 1 < n && over(k->last) && alert == WORKS)
                print_error("%s after step %zu of %zu\n", step_name(k->last), i + 1, n);
        }
        if (k->last == ST_TLSHS_READ) s_steps(k);
        if (alert == WORKS) {
            expect_done(k);
            assert_int_equal(k->c.tickets, 1);
        } else {
            if (k->last == ST_TLSHS_READ)
                print_error("%s: still READ after the hostile input\n", suites[s]);
            expect_hs_fatal(k, alert);
        }
        conn_close(k);
        tfree(cctx);
    }
}

#define HCASE(name, alert, ...)                                                                    \
    static void name(void **state)                                                                 \
    {                                                                                              \
        static const hstep s[] = {__VA_ARGS__};                                                    \
        run_hostile(s, sizeof s / sizeof *s, alert);                                               \
    }

/* -- accepted -- */

HCASE(rfc8446_5_client_finished_after_change_cipher_spec_is_accepted, WORKS, CCS, FIN)
HCASE(rfc8446_5_client_finished_without_change_cipher_spec_is_accepted, WORKS, FIN)
/* "MUST simply drop it": any number of them before the Finished */
HCASE(rfc8446_5_two_change_cipher_specs_before_finished_are_dropped, WORKS, CCS, CCS, FIN)
HCASE(rfc8446_5_1_client_finished_fragmented_across_two_records_is_accepted, WORKS, CCS,
      HK(H_FIN_SPLIT, 2))
HCASE(rfc8446_5_1_client_finished_header_split_from_its_body_is_accepted, WORKS, CCS,
      HK(H_FIN_SPLIT, 4))
HCASE(rfc8446_5_4_padded_finished_record_is_accepted, WORKS, CCS, HK(H_FIN_PAD, 200))

/* -- refused -- */

HCASE(rfc8446_4_4_4_finished_with_a_flipped_bit_is_decrypt_error, A_DECRYPT_ERROR, CCS,
      HK(H_FIN_FLIP, 0))
HCASE(rfc8446_4_4_4_finished_with_its_last_byte_changed_is_decrypt_error, A_DECRYPT_ERROR, CCS,
      HK(H_FIN_FLIP, -1))
HCASE(rfc8446_5_2_flipped_bit_in_finished_ciphertext_is_bad_record_mac, A_BAD_RECORD_MAC, CCS,
      HK(H_CT_FLIP, 5 + 2))
HCASE(rfc8446_5_2_flipped_bit_in_finished_tag_is_bad_record_mac, A_BAD_RECORD_MAC, CCS,
      HK(H_CT_FLIP, -3))
HCASE(rfc8446_4_4_4_finished_one_byte_short_is_decode_error, A_DECODE_ERROR, CCS, HK(H_FIN_LEN, -1))
HCASE(rfc8446_4_4_4_finished_one_byte_long_is_decode_error, A_DECODE_ERROR, CCS, HK(H_FIN_LEN, 1))
HCASE(rfc8446_4_4_4_empty_finished_is_decode_error, A_DECODE_ERROR, CCS,
      HREC(22, "\x14\x00\x00\x00"))
HCASE(rfc8446_4_key_update_instead_of_finished_is_unexpected_message, A_UNEXPECTED_MESSAGE, CCS,
      HREC(22, "\x18\x00\x00\x01\x00"))
HCASE(rfc8446_4_4_2_client_certificate_not_requested_is_unexpected_message, A_UNEXPECTED_MESSAGE,
      CCS, HREC(22, "\x0b\x00\x00\x04\x00\x00\x00\x00"))
HCASE(rfc8446_4_5_end_of_early_data_without_early_data_is_unexpected_message, A_UNEXPECTED_MESSAGE,
      CCS, HREC(22, "\x05\x00\x00\x00"))
HCASE(rfc8446_4_unknown_handshake_type_is_unexpected_message, A_UNEXPECTED_MESSAGE, CCS,
      HREC(22, "\xfe\x00\x00\x00"))
/* §5.1: a Finished must end its record (a key change follows it) */
HCASE(rfc8446_5_1_handshake_bytes_after_finished_in_its_record_are_unexpected_message,
      A_UNEXPECTED_MESSAGE, CCS, {H_FIN_PLUS, 0, "\x18\x00\x00\x01\x00", 5, 0})
/* §5: "An implementation which receives any other change_cipher_spec
 * value or which receives a protected change_cipher_spec record MUST abort
 * the handshake with an unexpected_message alert" (OpenSSL 3.0 itself
 * sends illegal_parameter for the first two) */
HCASE(rfc8446_5_change_cipher_spec_with_value_2_is_unexpected_message, A_UNEXPECTED_MESSAGE,
      HRAW("\x14\x03\x03\x00\x01\x02"), FIN)
HCASE(rfc8446_5_change_cipher_spec_of_two_bytes_is_unexpected_message, A_UNEXPECTED_MESSAGE,
      HRAW("\x14\x03\x03\x00\x02\x01\x01"), FIN)
HCASE(rfc8446_5_protected_change_cipher_spec_is_unexpected_message, A_UNEXPECTED_MESSAGE, CCS,
      HREC(20, "\x01"), FIN)
HCASE(rfc8446_5_application_data_before_finished_is_unexpected_message, A_UNEXPECTED_MESSAGE, CCS,
      HREC(23, "too soon"), FIN)
HCASE(rfc8446_5_2_application_key_before_finished_is_bad_record_mac, A_BAD_RECORD_MAC, CCS,
      HK(H_APPKEY, 0))
HCASE(rfc8446_5_2_garbage_protected_record_is_bad_record_mac, A_BAD_RECORD_MAC, CCS,
      {H_RAW, 0,
       "\x17\x03\x03\x00\x28"
       "0123456789012345678901234567890123456789",
       45, 0})
HCASE(rfc8446_5_plaintext_handshake_record_after_server_hello_is_unexpected_message,
      A_UNEXPECTED_MESSAGE, CCS,
      HRAW("\x16\x03\x03\x00\x24\x14\x00\x00\x20"
           "0123456789abcdef0123456789abcdef"))
HCASE(rfc8446_5_unknown_record_type_is_unexpected_message, A_UNEXPECTED_MESSAGE, CCS,
      HRAW("\x00\x03\x03\x00\x03xyz"))
HCASE(rfc8446_5_2_ciphertext_over_2_14_plus_256_is_record_overflow, A_RECORD_OVERFLOW, CCS,
      HRAW("\x17\x03\x03\x41\x01"), {H_RAW, 0, NULL, 16641, 0})
HCASE(rfc8446_5_4_inner_plaintext_over_2_14_plus_1_is_record_overflow, A_RECORD_OVERFLOW, CCS,
      {H_REC, 22, NULL, 16385, 0})
HCASE(rfc8446_5_4_all_zero_inner_plaintext_is_unexpected_message, A_UNEXPECTED_MESSAGE, CCS,
      {H_REC, -1, "", 0, 10})
HCASE(rfc8446_5_4_zero_length_handshake_record_is_unexpected_message, A_UNEXPECTED_MESSAGE, CCS,
      HREC(22, ""))
/* the client's alerts: it rejected our certificate (protected), or could
 * not read our ServerHello (plaintext); no answer to a fatal alert */
HCASE(rfc8446_6_2_protected_fatal_alert_from_client_ends_without_answer, A_NONE, CCS,
      HREC(21, "\x02\x2a"))
HCASE(rfc8446_6_plaintext_alert_from_client_ends_the_handshake, A_UNEXP_OR_NONE,
      HRAW("\x15\x03\x03\x00\x02\x02\x28"))
HCASE(rfc8446_6_1_close_notify_during_handshake_ends_it, A_ANY, CCS, HREC(21, "\x01\x00"))
HCASE(tlshs_eof_before_client_finished_fails, A_ANY, CCS, HK(H_EOF, 0))
HCASE(tlshs_eof_in_the_middle_of_client_finished_fails, A_ANY, CCS, HK(H_FIN_PART, 20),
      HK(H_EOF, 0))
HCASE(tlshs_eof_in_a_record_header_fails, A_ANY, HRAW("\x14\x03"), HK(H_EOF, 0))

/* ==== lifecycle ==== */

/* Accessors before the handshake, references, frees. */
static void tlshs_accessors_references_and_free(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    char err[256];
    st_tlshs_ctx *x = st_tlshs_ctx_new(st_tls_ctx_get(tls), err, sizeof err);
    assert_non_null(x);
    st_tlshs_ctx_ref(x);
    st_tlshs_ctx_unref(x); /* still the creator's */
    conn *k = conn_new();
    opts o = {.x = x};
    conn_start(k, cctx, &o);
    st_tlshs_ctx_unref(x); /* the st_tlshs holds its own reference */
    unsigned char e[64];
    size_t el = 0;
    assert_int_equal(st_tlshs_resumed(k->h), 0);
    assert_null(st_tlshs_alpn(k->h));
    assert_int_equal(st_tlshs_server_end_point(k->h, e, &el), -1);
    hs_run(k);
    expect_done(k);
    conn_close(k); /* frees the last reference */
    st_tlshs_ctx_unref(NULL);
    st_tlshs_free(NULL);
    /* a st_tlshs never stepped, and one freed in the middle */
    st_tlshs_free(st_tlshs_new(hsx, 0));
    conn_start(k, cctx, NULL);
    assert_int_equal(to_second_flight(k), ST_TLSHS_READ);
    conn_close(k);
    tfree(cctx);
}

/* ==== out of memory ==== */

static long seen_failed, seen_openssl, seen_done_degraded, seen_null, seen_broken;

/* One connection with the allocator broken at allocation fail_at: the
 * handshake (full or resumed), the hand-over, data both ways. Every
 * outcome must be clean: NULL from st_tlshs_new, FAILED, OPENSSL with
 * the socket untouched (and OpenSSL completes), or DONE. Returns the
 * allocations counted up to the hand-over in *hs and in all. */
static long hs_workload(SSL_CTX *cctx, SSL_SESSION *resume, long *hs)
{
    conn *k = conn_new();
    opts o = {.resume = resume, .direct = 1, .alpn = "xmpp-client", .allow_null = 1};
    alloc_count = 0;
    st_set_alloc_hooks(&torture_hooks);
    conn_start(k, cctx, &o);
    if (!k->h) {
        seen_null++;
        goto out;
    }
    int r = hs_run(k);
    if (r == ST_TLSHS_OPENSSL) {
        seen_openssl++;
        st_set_alloc_hooks(NULL);
        assert_int_equal(openssl_takeover(k), 0);
        goto out;
    }
    if (r == ST_TLSHS_FAILED) {
        seen_failed++;
        goto out;
    }
    assert_int_equal(r, ST_TLSHS_DONE);
    if (fail_at < 0) assert_int_equal(st_tlshs_resumed(k->h), resume != NULL);
    unsigned char x[32];
    st_tlshs_exporter(k->h, x);
    k->rec = st_tlshs_finish(k->h);
    if (hs) *hs = alloc_count;
    if (!k->rec) {
        seen_done_degraded++;
        goto out;
    }
    if (fail_at > 0 && fail_at <= alloc_count) seen_done_degraded++; /* e.g. no ticket */
    /* data both ways; the record layer may fail cleanly too */
    ssize_t w = st_tlsrec_write(k->rec, k->sfd, "ping", 4);
    if (w == 4) {
        unsigned char buf[16];
        size_t got = 0;
        c_read(k, buf, sizeof buf, &got);
        if (k->c.failed || got != 4) {
            unsigned long e = ERR_peek_error();
            print_error("allocation %ld failing: DONE, but the client cannot read what the record "
                        "layer sent (got %zu, error %d: %s; %d tickets)\n",
                        fail_at, got, k->c.failed, e ? ERR_reason_error_string(e) : "-",
                        k->c.tickets);
            seen_broken++;
            goto out;
        }
        c_write(k, "pong", 4);
        got = 0;
        ssize_t rr = s_read(k, buf, sizeof buf, &got);
        if (rr == 0)
            assert_non_null(st_tlsrec_error(k->rec));
        else
            assert_int_equal(got, 4);
    } else {
        assert_true(w == -1 || w == 0);
    }
out:
    st_set_alloc_hooks(NULL);
    conn_close(k);
    return alloc_count;
}

/* STYLE 14: count the allocations, then fail each one in turn; under
 * ASan a leak or a bad free on any of those paths is a failure. Full and
 * resumed handshakes, and st_tlshs_ctx_new itself. */
static void tlshs_alloc_failure_torture(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    SSL_SESSION *sess = get_ticket(cctx, hsx);
    long broken = 0;
    for (int resumed = 0; resumed < 2; resumed++) {
        long hs = 0;
        fail_at = -1;
        seen_failed = seen_openssl = seen_done_degraded = seen_null = seen_broken = 0;
        long total = hs_workload(cctx, resumed ? sess : NULL, &hs);
        print_message("%s: %ld allocations up to the hand-over, %ld in all\n",
                      resumed ? "resumed" : "full", hs, total);
        assert_true(hs >= 1);
        for (fail_at = 1; fail_at <= total + 1; fail_at++)
            hs_workload(cctx, resumed ? sess : NULL, NULL);
        fail_at = -1;
        print_message("  outcomes: %ld NULL, %ld FAILED, %ld OPENSSL, %ld DONE degraded, %ld "
                      "DONE broken\n",
                      seen_null, seen_failed, seen_openssl, seen_done_degraded, seen_broken);
        broken += seen_broken;
    }
    /* st_tlshs_ctx_new: NULL with a reason, or a context that works */
    for (fail_at = 1; fail_at <= 64; fail_at++) {
        char err[256] = "";
        alloc_count = 0;
        st_set_alloc_hooks(&torture_hooks);
        st_tlshs_ctx *x = st_tlshs_ctx_new(st_tls_ctx_get(tls), err, sizeof err);
        st_set_alloc_hooks(NULL);
        if (!x) {
            assert_true(err[0] != 0);
            continue;
        }
        x_track(x);
        conn *k = conn_new();
        opts o = {.x = x};
        full(k, cctx, &o);
        expect_done(k);
        conn_close(k);
        tfree(x);
        if (fail_at > alloc_count) break; /* past the last one */
    }
    fail_at = -1;
    tfree(sess);
    tfree(cctx);
    /* DONE with a record layer the client cannot read is not a clean end */
    assert_int_equal(broken, 0);
}

#define T(f) cmocka_unit_test_teardown(f, cleanup)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(harness_handshake_keys_open_the_clients_finished),
        T(harness_client_hello_rebuilt_unchanged_is_identical),
        /* full handshakes */
        T(rfc8446_9_1_each_suite_with_x25519_and_p256_completes),
        T(tlshs_suite_is_ours_with_chacha20_when_the_client_puts_it_first),
        T(rfc8446_4_1_3_server_hello_is_well_formed),
        T(rfc8446_d_4_middlebox_compatibility_on_and_off),
        T(rfc9266_exporter_and_rfc5929_server_end_point_match_the_client),
        T(tlshs_channel_bindings_stay_available_after_finish),
        /* resumption */
        T(rfc8446_2_2_ticket_resumes_with_psk_dhe_ke),
        T(tlshs_ticket_from_another_ctx_is_not_resumed_but_completes),
        T(tlshs_ticket_issued_by_openssl_is_not_taken_as_ours),
        T(rfc8446_4_6_1_ticket_lifetime_is_the_one_set),
        T(tlshs_ticket_past_its_lifetime_is_not_resumed),
        T(rfc8446_4_2_11_bad_binder_is_not_accepted),
        T(rfc8446_4_2_11_altered_ticket_is_not_resumed),
        /* ALPN */
        T(xep0368_alpn_xmpp_client_selected_on_direct_tls),
        T(xep0368_no_alpn_after_starttls),
        T(xep0368_direct_tls_client_offering_only_h2_gets_no_alpn),
        /* OpenSSL's */
        T(tlshs_tls12_client_goes_to_openssl),
        T(tlshs_client_offering_only_p384_goes_to_openssl),
        T(rfc8446_4_1_4_share_we_do_not_take_goes_to_openssl_and_its_hello_retry),
        T(tlshs_client_without_our_suites_goes_to_openssl),
        T(tlshs_client_hello_in_two_parts_completes),
        T(rfc8446_5_1_client_hello_fragmented_across_records_goes_to_openssl),
        T(rfc8446_4_2_duplicated_extension_goes_to_openssl),
        T(rfc8446_4_2_11_pre_shared_key_not_last_goes_to_openssl),
        T(rfc8446_4_2_10_early_data_extension_goes_to_openssl),
        T(rfc8446_4_2_10_real_early_data_goes_to_openssl_which_rejects_it),
        T(rfc8446_4_2_3_client_without_our_signature_scheme_goes_to_openssl),
        T(rfc8446_4_4_3_rsa_key_signs_with_rsa_pss_rsae_sha256),
        T(tlshs_ctx_new_with_other_key_kinds_is_null_or_signs_right),
        /* ClientHellos the RFC says must be refused */
        T(harness_recomputed_binder_is_the_clients),
        T(rfc8446_7_4_2_invalid_key_shares_are_refused),
        T(rfc8446_4_1_2_compression_methods_other_than_null_are_refused),
        T(rfc8446_9_2_missing_mandatory_extensions_are_refused),
        T(rfc8446_4_2_9_psk_ke_only_client_is_not_resumed),
        T(rfc8446_4_2_9_pre_shared_key_without_psk_modes_is_refused),
        T(rfc8446_4_2_11_ticket_not_used_with_a_suite_of_another_hash),
        /* the socket */
        T(tlshs_write_when_the_socket_is_full_then_completes),
        T(rfc8446_5_1_client_finished_arriving_byte_by_byte_completes),
        T(tlshs_client_data_behind_its_finished_reaches_the_record_layer),
        T(rfc8446_5_change_cipher_spec_right_behind_client_hello_is_dropped),
        /* the second flight: accepted */
        T(rfc8446_5_client_finished_after_change_cipher_spec_is_accepted),
        T(rfc8446_5_client_finished_without_change_cipher_spec_is_accepted),
        T(rfc8446_5_two_change_cipher_specs_before_finished_are_dropped),
        T(rfc8446_5_1_client_finished_fragmented_across_two_records_is_accepted),
        T(rfc8446_5_1_client_finished_header_split_from_its_body_is_accepted),
        T(rfc8446_5_4_padded_finished_record_is_accepted),
        /* and refused */
        T(rfc8446_4_4_4_finished_with_a_flipped_bit_is_decrypt_error),
        T(rfc8446_4_4_4_finished_with_its_last_byte_changed_is_decrypt_error),
        T(rfc8446_5_2_flipped_bit_in_finished_ciphertext_is_bad_record_mac),
        T(rfc8446_5_2_flipped_bit_in_finished_tag_is_bad_record_mac),
        T(rfc8446_4_4_4_finished_one_byte_short_is_decode_error),
        T(rfc8446_4_4_4_finished_one_byte_long_is_decode_error),
        T(rfc8446_4_4_4_empty_finished_is_decode_error),
        T(rfc8446_4_key_update_instead_of_finished_is_unexpected_message),
        T(rfc8446_4_4_2_client_certificate_not_requested_is_unexpected_message),
        T(rfc8446_4_5_end_of_early_data_without_early_data_is_unexpected_message),
        T(rfc8446_4_unknown_handshake_type_is_unexpected_message),
        T(rfc8446_5_1_handshake_bytes_after_finished_in_its_record_are_unexpected_message),
        T(rfc8446_5_change_cipher_spec_with_value_2_is_unexpected_message),
        T(rfc8446_5_change_cipher_spec_of_two_bytes_is_unexpected_message),
        T(rfc8446_5_protected_change_cipher_spec_is_unexpected_message),
        T(rfc8446_5_application_data_before_finished_is_unexpected_message),
        T(rfc8446_5_2_application_key_before_finished_is_bad_record_mac),
        T(rfc8446_5_2_garbage_protected_record_is_bad_record_mac),
        T(rfc8446_5_plaintext_handshake_record_after_server_hello_is_unexpected_message),
        T(rfc8446_5_unknown_record_type_is_unexpected_message),
        T(rfc8446_5_2_ciphertext_over_2_14_plus_256_is_record_overflow),
        T(rfc8446_5_4_inner_plaintext_over_2_14_plus_1_is_record_overflow),
        T(rfc8446_5_4_all_zero_inner_plaintext_is_unexpected_message),
        T(rfc8446_5_4_zero_length_handshake_record_is_unexpected_message),
        T(rfc8446_6_2_protected_fatal_alert_from_client_ends_without_answer),
        T(rfc8446_6_plaintext_alert_from_client_ends_the_handshake),
        T(rfc8446_6_1_close_notify_during_handshake_ends_it),
        T(tlshs_eof_before_client_finished_fails),
        T(tlshs_eof_in_the_middle_of_client_finished_fails),
        T(tlshs_eof_in_a_record_header_fails),
        /* lifecycle, memory */
        T(tlshs_accessors_references_and_free),
        T(tlshs_alloc_failure_torture),
    };
    /* TLSHS_TEST=pattern runs only the matching tests */
    if (getenv("TLSHS_TEST")) cmocka_set_test_filter(getenv("TLSHS_TEST"));
    return cmocka_run_group_tests(tests, setup, teardown);
}
