/* test_server_tlsrec.c - the TLS 1.3 record layer that takes a connection
 * over from OpenSSL after the handshake (server/tlsrec.h), against a real
 * OpenSSL client, checked against RFC 8446 §5 (records), §4.6.3
 * (KeyUpdate) and §6 (alerts).
 *
 * Each test is one connection over a socketpair: the server end is an SSL
 * from st_tls_ctx_new, handed to st_tlsrec_take once SSL_accept returns 1;
 * the client end is plain OpenSSL. The client reads from its socket, but
 * writes into a memory BIO that the harness moves to the socket itself
 * (c_flush), so a test can deliver the client's records one byte at a time
 * or tamper with them. That client end, and the rest of the harness this
 * file shares with test_server_tlshs.c, is in tls13_client.h and
 * tls13_harness.h.
 *
 * The hostile cases need records OpenSSL would never send. The harness
 * builds them with the client's own keys: the client SSL_CTX has a keylog
 * callback (CLIENT_TRAFFIC_SECRET_0), and key and IV come from
 * HKDF-Expand-Label (RFC 8446 §7.1, §7.3) written with OpenSSL's HMAC in
 * tls13_harness.h, independently of server/tlsrec.c. harness_crafted_keys_open_openssl_records
 * checks the harness against the client's own records. A hostile test
 * first sends a valid crafted record and sees it arrive, so the one that
 * is then refused differs from an accepted one only in what is tested.
 *
 * Every loop is bounded: nothing here waits on a socket, both ends are
 * non-blocking and in this process. */
#include <errno.h>
#include <fcntl.h>
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
#include <unistd.h>
#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "starling/alloc.h"
#include "server/tls.h"
#include "server/tlsrec.h"
#define TLS13_HARNESS_DIR "/tmp/st-tlsrec-test-XXXXXX"
#include "tls13_harness.h"

#define MAX_INNER (16384 + 1) /* RFC 8446 §5.4: TLSInnerPlaintext */
#define SPINS 2000            /* upper bound for "until nothing more happens" loops */

/* what a test expects besides the alerts of tls13_harness.h */
enum {
    A_CLOSED = -3, /* no alert back: the client sent close_notify */
};

/* ---- the client end ---- */

typedef struct client {
    SSL *ssl;
    BIO *out; /* memory BIO: what the client SSL writes */
    int fd;
    unsigned char *wire; /* taken from out, not yet written to fd */
    size_t woff, wlen, wcap;
    int hold; /* c_flush collects into wire but does not write */

    /* from the keylog */
    unsigned char csecret[48], ssecret[48];
    size_t clen, slen;

    /* what the client saw (message and info callbacks) */
    int alert, alert_level; /* last alert read, -1 none */
    int key_updates;        /* KeyUpdates read from the server */
    int ku_bad_request;     /* one of them had request_update != 0 */
    int server_hellos;      /* 2 after a HelloRetryRequest */
    int tickets;            /* NewSessionTickets read */
    char events[256];       /* inner content types read: 'K'eyUpdate, 'A'pp data, 'T'icket */
    size_t nevents;
    int zero_return, failed;

    /* crafting records with the client's write key */
    keys k;
    unsigned char secret[48];       /* its application traffic secret */
    unsigned char last[MAX_RECORD]; /* the last record sealed */
    size_t lastlen;
} client;

typedef struct conn {
    client c;
    int sfd;
    SSL *server; /* until taken over */
    st_tlsrec *rec;
} conn;

typedef struct opts {
    const char *suite; /* client ciphersuites, NULL = OpenSSL's default */
    int max_version;   /* 0 = TLS 1.3 */
    int tickets;       /* server NewSessionTickets, -1 = default */
    SSL_SESSION *resume;
    const char *groups;  /* client groups, NULL = default */
    const char *early;   /* written by the client right after its Finished */
    SSL_CTX *server_ctx; /* NULL = st_tls */
    int sndbuf;          /* SO_SNDBUF on the server socket, 0 = default */
    int no_take;         /* leave the SSL with the test */
} opts;

#define NCONN 4
#include "tls13_client.h"

static SSL_SESSION *live_session; /* freed by cleanup() */

static void keylog_cb(const SSL *ssl, const char *line)
{
    client *c = SSL_get_app_data(ssl);
    const char *sp;
    if (!c) return;
    if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0 && (sp = strchr(line + 24, ' ')))
        hex_decode(sp + 1, c->csecret, &c->clen, sizeof c->csecret);
    else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0 && (sp = strchr(line + 24, ' ')))
        hex_decode(sp + 1, c->ssecret, &c->slen, sizeof c->ssecret);
}

static void msg_cb(int write_p, int version, int type, const void *buf, size_t len, SSL *ssl,
                   void *arg)
{
    client *c = SSL_get_app_data(ssl);
    const unsigned char *b = buf;
    if (!c || write_p || len < 1) return;
    if (type == SSL3_RT_HANDSHAKE) {
        char e = 0;
        if (b[0] == SSL3_MT_SERVER_HELLO) c->server_hellos++;
        if (b[0] == SSL3_MT_NEWSESSION_TICKET) {
            c->tickets++;
            e = 'T';
        }
        if (b[0] == SSL3_MT_KEY_UPDATE) {
            c->key_updates++;
            if (len != 5 || b[4] != 0) c->ku_bad_request = 1;
            e = 'K';
        }
        if (e && c->nevents < sizeof c->events - 1) c->events[c->nevents++] = e;
    } else if (type == SSL3_RT_INNER_CONTENT_TYPE && b[0] == SSL3_RT_APPLICATION_DATA) {
        if (c->nevents < sizeof c->events - 1) c->events[c->nevents++] = 'A';
    }
}

/* Move what the client SSL wrote to the wire buffer, and as much of the
 * wire as the socket takes to the socket. 1 when all of it is written. */
static int c_flush(conn *k)
{
    client *c = &k->c;
    unsigned char tmp[16384];
    int n;
    while ((n = BIO_read(c->out, tmp, sizeof tmp)) > 0)
        wire_append(c, tmp, (size_t)n);
    while (c->wlen > 0 && !c->hold) {
        ssize_t w = write(c->fd, c->wire + c->woff, c->wlen);
        if (w <= 0) break;
        c->woff += (size_t)w;
        c->wlen -= (size_t)w;
    }
    if (c->wlen == 0) c->woff = 0;
    return c->wlen == 0;
}

/* The client reads exactly n bytes and they are p. */
static void c_expect(conn *k, const void *p, size_t n)
{
    unsigned char *buf = tmalloc(n + 1);
    size_t got = 0;
    c_read_now(k, buf, n + 1, &got);
    if (got != n) print_error("client read %zu bytes, expected %zu\n", got, n);
    assert_int_equal(got, n);
    assert_memory_equal(buf, p, n);
    assert_false(k->c.failed);
    tfree(buf);
}

/* ---- the server end ---- */

/* st_tlsrec_read (at most step bytes a call) until it has nothing (-2)
 * or the connection is over (0), appending at out[*got]. Returns -2 or 0. */
static ssize_t s_read(conn *k, unsigned char *out, size_t cap, size_t *got, size_t step)
{
    for (int i = 0; i < 100000; i++) {
        size_t want = cap - *got < step ? cap - *got : step;
        if (want == 0) want = 1; /* reads past cap are a failure below */
        unsigned char tmp[1];
        ssize_t r = st_tlsrec_read(k->rec, k->sfd, *got < cap ? out + *got : tmp, want);
        if (r == -2 || r == 0) return r;
        assert_true(r > 0);
        assert_true((size_t)r <= want);
        assert_true(*got + (size_t)r <= cap);
        *got += (size_t)r;
    }
    fail_msg("st_tlsrec_read did not stop");
    return 0;
}

/* The server reads exactly n bytes, they are p, and then -2. */
static void s_expect(conn *k, const void *p, size_t n)
{
    unsigned char *buf = tmalloc(n + 1);
    size_t got = 0;
    ssize_t r = s_read(k, buf, n + 1, &got, n + 1);
    if (got != n)
        print_error("server read %zu bytes, expected %zu (%zd, %s)\n", got, n, r,
                    st_tlsrec_error(k->rec) ? st_tlsrec_error(k->rec) : "no error");
    assert_int_equal(got, n);
    assert_memory_equal(buf, p, n);
    assert_int_equal(r, -2);
    assert_null(st_tlsrec_error(k->rec));
    tfree(buf);
}

/* st_tlsrec_write of all n bytes to an empty socket. */
static void s_write(conn *k, const void *p, size_t n)
{
    size_t off = 0;
    for (int i = 0; i < SPINS && off < n; i++) {
        ssize_t w = st_tlsrec_write(k->rec, k->sfd, (const char *)p + off, n - off);
        assert_true(w > 0);
        off += (size_t)w;
    }
    assert_int_equal(off, n);
    assert_int_equal(st_tlsrec_unsent(k->rec), 0);
}

/* ---- connecting ---- */

/* Connect, run both handshakes to completion, and (unless o->no_take) hand
 * the server SSL to st_tlsrec_take and free it. Returns 0, or -1 if a
 * handshake failed. */
static int conn_open(conn *k, SSL_CTX *cctx, const opts *o)
{
    static const opts none = {.tickets = -1};
    int sv[2];
    if (!o) o = &none;
    memset(k, 0, sizeof *k);
    pool_mark(k, 1);
    k->c.alert = k->c.alert_level = -1;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    k->sfd = sv[0];
    k->c.fd = sv[1];
    nonblock(k->sfd);
    nonblock(k->c.fd);
    if (o->sndbuf)
        assert_int_equal(setsockopt(k->sfd, SOL_SOCKET, SO_SNDBUF, &o->sndbuf, sizeof o->sndbuf),
                         0);

    if (o->server_ctx) {
        k->server = SSL_new(o->server_ctx);
        assert_non_null(k->server);
        assert_int_equal(SSL_set_fd(k->server, k->sfd), 1);
        SSL_set_accept_state(k->server);
    } else {
        k->server = st_tls_new_ssl(tls, k->sfd, 1);
        assert_non_null(k->server);
    }
    if (o->tickets >= 0) assert_int_equal(SSL_set_num_tickets(k->server, (size_t)o->tickets), 1);

    client *c = &k->c;
    client_ssl_new(k, cctx);
    if (o->resume) assert_int_equal(SSL_set_session(c->ssl, o->resume), 1);
    if (o->groups) assert_int_equal(SSL_set1_groups_list(c->ssl, o->groups), 1);

    int cdone = 0, sdone = 0;
    for (int i = 0; i < 100 && !(cdone && sdone); i++) {
        if (!cdone) {
            int r = SSL_connect(c->ssl);
            if (r == 1) {
                cdone = 1;
                if (o->early)
                    assert_int_equal(SSL_write(c->ssl, o->early, (int)strlen(o->early)),
                                     (int)strlen(o->early));
            } else if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ) {
                c_flush(k);
                return -1;
            }
        }
        c_flush(k);
        if (!sdone) {
            int r = SSL_accept(k->server);
            if (r == 1)
                sdone = 1;
            else if (SSL_get_error(k->server, r) != SSL_ERROR_WANT_READ &&
                     SSL_get_error(k->server, r) != SSL_ERROR_WANT_WRITE)
                return -1;
        }
    }
    if (!(cdone && sdone)) return -1;
    if (o->no_take) return 0;
    k->rec = st_tlsrec_take(k->server);
    if (!k->rec) {
        print_error("st_tlsrec_take declined a %s %s connection\n", SSL_get_version(k->server),
                    SSL_get_cipher_name(k->server));
        return -1;
    }
    SSL_free(k->server);
    k->server = NULL;
    return 0;
}

static void conn_close(conn *k)
{
    st_tlsrec_free(k->rec);
    SSL_free(k->server);
    conn_release(k);
}

/* per-test teardown: whatever a failed test left behind */
static int cleanup(void **state)
{
    pool_close_all();
    tfree_all();
    SSL_SESSION_free(live_session);
    live_session = NULL;
    st_set_alloc_hooks(NULL);
    return 0;
}

/* A taken-over connection to a client on cctx, checked to carry data both
 * ways before the test starts. */
static conn *open_checked(SSL_CTX *cctx)
{
    conn *k = conn_new();
    assert_int_equal(conn_open(k, cctx, NULL), 0);
    exchange(k);
    return k;
}

static void close_all(conn *k, SSL_CTX *cctx)
{
    conn_close(k);
    tfree(cctx);
}

/* ---- crafting client records (RFC 8446 §5.2, §7.1, §7.3) ---- */

/* From the keylog: the client's application write key, sequence 0 (the
 * client has sent no application record yet). */
static void craft_init(conn *k)
{
    client *c = &k->c;
    keys_from_secret(c->ssl, c->csecret, c->clen, &c->k);
    memcpy(c->secret, c->csecret, c->clen);
}

/* RFC 8446 §7.2: application_traffic_secret_N+1, sequence 0 */
static void craft_key_update(client *c)
{
    unsigned char next[48];
    size_t n = (size_t)EVP_MD_get_size(c->k.md);
    hkdf_expand_label(c->k.md, c->secret, n, "traffic upd", next, n);
    memcpy(c->secret, next, n);
    keys_from_secret(c->ssl, c->secret, n, &c->k);
}

/* ---- the end of a connection ---- */

/* The server ends the connection: st_tlsrec_read returns 0 (not data, not
 * -2 forever), says why, stays ended, writes nothing more (unless it was
 * the client's close_notify: TLS 1.3 allows a half-close); and the client
 * reads the fatal alert, or for A_NONE / A_CLOSED nothing: the server got
 * an alert and does not answer it. */
static void expect_fatal(conn *k, int alert)
{
    unsigned char buf[MAX_INNER];
    ssize_t r = -2;
    size_t got = 0;
    for (int i = 0; i < 100 && r == -2; i++) {
        c_flush(k);
        r = s_read(k, buf, sizeof buf, &got, sizeof buf);
    }
    if (got) print_error("server took %zu bytes of application data from a hostile input\n", got);
    assert_int_equal(got, 0);
    assert_int_equal(r, 0);
    assert_non_null(st_tlsrec_error(k->rec));
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), 0);
    if (alert != A_CLOSED) assert_int_equal(st_tlsrec_write(k->rec, k->sfd, "late", 4), -1);

    got = 0;
    c_read_now(k, buf, sizeof buf, &got);
    assert_int_equal(got, 0);
    if (alert == A_UNEXP_OR_NONE) alert = k->c.alert == -1 ? A_NONE : A_UNEXPECTED_MESSAGE;
    if (alert == A_NONE || alert == A_CLOSED) {
        assert_int_equal(k->c.alert, -1);
        return;
    }
    if (k->c.alert != alert)
        print_error("client read alert %d (level %d), expected %d; server: %s\n", k->c.alert,
                    k->c.alert_level, alert, st_tlsrec_error(k->rec));
    assert_int_equal(k->c.alert, alert);
    assert_int_equal(k->c.alert_level, 2); /* fatal */
    assert_true(k->c.failed || k->c.zero_return);
    /* RFC 8446 §6.1, §6.2: after an error alert nothing more, not even a
     * close_notify */
    int queued = -1;
    st_tlsrec_close_notify(k->rec, k->sfd);
    assert_int_equal(ioctl(k->c.fd, FIONREAD, &queued), 0);
    assert_int_equal(queued, 0);
}

/* ---- setup ---- */

static int setup(void **state)
{
    if (harness_setup() != 0) return -1;
    /* st_tls may do this itself; it must not matter that we do it again */
    if (st_tlsrec_prepare_ctx(st_tls_ctx_get(tls)) != 0) return -1;
    return 0;
}

static int teardown(void **state)
{
    return harness_teardown();
}

static void fill_random(unsigned char *p, size_t n, uint32_t seed)
{
    uint32_t x = seed ? seed : 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        p[i] = (unsigned char)x;
    }
}

/* ==== the harness itself ==== */

/* The crafting keys open what the client's OpenSSL seals, and what they
 * seal reaches the server: otherwise the hostile tests prove nothing. */
static void harness_crafted_keys_open_openssl_records(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        assert_int_equal(conn_open(k, cctx, NULL), 0);
        craft_init(k);
        k->c.hold = 1;
        assert_int_equal(SSL_write(k->c.ssl, "abc", 3), 3);
        c_flush(k);
        unsigned char out[64];
        size_t n = 0;
        assert_int_equal(k->c.wlen, 5 + 3 + 1 + 16);
        assert_int_equal(open_record(&k->c.k, 0, k->c.wire + k->c.woff, k->c.wlen, out, &n), 23);
        assert_int_equal(n, 3);
        assert_memory_equal(out, "abc", 3);
        k->c.hold = 0;
        c_flush(k);
        s_expect(k, "abc", 3);
        /* a crafted record continues the client's sequence */
        k->c.k.seq = 1;
        send_rec(k, 23, "def", 3, 0);
        s_expect(k, "def", 3);
        close_all(k, cctx);
    }
}

/* ==== taking over ==== */

static void rfc8446_5_application_data_both_ways_after_takeover(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    assert_int_equal(conn_open(k, cctx, NULL), 0);
    assert_string_equal(st_tlsrec_version(k->rec), "TLSv1.3");
    assert_null(st_tlsrec_error(k->rec));
    assert_int_equal(st_tlsrec_pending(k->rec), 0);
    assert_int_equal(st_tlsrec_unsent(k->rec), 0);
    /* nothing there yet */
    unsigned char buf[64];
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), -2);
    exchange(k);
    for (int i = 0; i < 20; i++) {
        char m[32];
        int n = snprintf(m, sizeof m, "<message id='%d'/>", i);
        s_write(k, m, (size_t)n);
        c_write(k, m, (size_t)n);
        c_expect(k, m, (size_t)n);
        s_expect(k, m, (size_t)n);
    }
    /* a one-byte record each way */
    s_write(k, " ", 1);
    c_expect(k, " ", 1);
    c_write(k, " ", 1);
    s_expect(k, " ", 1);
    close_all(k, cctx);
    st_tlsrec_free(NULL);
}

static void rfc8446_9_1_each_tls13_suite_is_taken_over(void **state)
{
    unsigned char *big = tmalloc(40000);
    assert_non_null(big);
    fill_random(big, 40000, 7);
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        assert_int_equal(conn_open(k, cctx, NULL), 0);
        assert_string_equal(st_tlsrec_cipher(k->rec), suites[s]);
        assert_string_equal(st_tlsrec_version(k->rec), "TLSv1.3");
        exchange(k);
        s_write(k, big, 40000);
        c_expect(k, big, 40000);
        c_write(k, big, 40000);
        s_expect(k, big, 40000);
        close_all(k, cctx);
    }
    tfree(big);
}

/* RFC 8446 §4.6.1: the tickets go under the server's application key, so
 * our first record's sequence number is the number of tickets sent. */
static void rfc8446_4_6_1_first_record_after_session_tickets_decrypts(void **state)
{
    static const int counts[] = {0, 1, 2, 5};
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        for (int s = 0; s < NSUITES; s++) {
            SSL_CTX *cctx = client_ctx(suites[s], 0);
            conn *k = conn_new();
            opts o = {.tickets = counts[i]};
            assert_int_equal(conn_open(k, cctx, &o), 0);
            s_write(k, "first", 5);
            c_expect(k, "first", 5);
            assert_int_equal(k->c.tickets, counts[i]);
            s_write(k, "second", 6);
            c_expect(k, "second", 6);
            close_all(k, cctx);
        }
    }
    /* and with OpenSSL's default (2, in st_tls) */
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = open_checked(cctx);
    assert_true(k->c.tickets >= 1);
    close_all(k, cctx);
}

static void rfc8446_2_2_takeover_after_resumed_handshake(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new(), *q = conn_new();
        assert_int_equal(conn_open(k, cctx, NULL), 0);
        exchange(k); /* the client takes in the tickets */
        SSL_SESSION *sess = SSL_get1_session(k->c.ssl);
        assert_non_null(sess);
        live_session = sess;
        assert_true(SSL_SESSION_is_resumable(sess));
        /* resume while the first is still open: SSL_free without
         * SSL_shutdown makes OpenSSL's client drop the session */
        opts o = {.tickets = -1, .resume = sess};
        assert_int_equal(conn_open(q, cctx, &o), 0);
        assert_true(SSL_session_reused(q->c.ssl));
        assert_string_equal(st_tlsrec_cipher(q->rec), suites[s]);
        exchange(q);
        exchange(q);
        exchange(k); /* the first goes on too */
        conn_close(q);
        conn_close(k);
        SSL_SESSION_free(sess);
        live_session = NULL;
        tfree(cctx);
    }
}

/* RFC 8446 §4.1.4: the client's key share is for a group we do not take
 * (P-521), so the server asks again; keys and sequence numbers are the
 * usual ones afterwards. */
static void rfc8446_4_1_4_takeover_after_hello_retry_request(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.tickets = -1, .groups = "P-521:X25519"};
    assert_int_equal(conn_open(k, cctx, &o), 0);
    assert_int_equal(k->c.server_hellos, 2);
    exchange(k);
    close_all(k, cctx);
}

/* The client's first application record may be in the socket before
 * SSL_accept returns (it is sent right after the client's Finished):
 * OpenSSL must not have eaten it, and the record layer reads it. */
static void rfc8446_5_client_data_sent_with_its_finished_is_read_after_takeover(void **state)
{
    static const char early[] = "<stream:stream to='example.org'>";
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        opts o = {.tickets = -1, .early = early};
        assert_int_equal(conn_open(k, cctx, &o), 0);
        s_expect(k, early, sizeof early - 1);
        exchange(k);
        close_all(k, cctx);
    }
}

static void tlsrec_take_declines_tls12_and_the_ssl_keeps_working(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, TLS1_2_VERSION);
    conn *k = conn_new();
    opts o = {.tickets = -1, .no_take = 1};
    assert_int_equal(conn_open(k, cctx, &o), 0);
    assert_int_equal(SSL_version(k->server), TLS1_2_VERSION);
    assert_null(st_tlsrec_take(k->server));
    assert_int_equal(SSL_write(k->server, "hello", 5), 5);
    c_expect(k, "hello", 5);
    c_write(k, "world", 5);
    char buf[16];
    int r = -1;
    for (int i = 0; i < 10 && r <= 0; i++)
        r = SSL_read(k->server, buf, sizeof buf);
    assert_int_equal(r, 5);
    assert_memory_equal(buf, "world", 5);
    close_all(k, cctx);
}

/* A context without st_tlsrec_prepare_ctx: the secrets were never seen. */
static void tlsrec_take_declines_ssl_from_unprepared_ctx(void **state)
{
    SSL_CTX *sctx = ctx_track(SSL_CTX_new(TLS_server_method()));
    assert_int_equal(SSL_CTX_use_certificate_chain_file(sctx, cert_path), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(sctx, key_path, SSL_FILETYPE_PEM), 1);
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.tickets = -1, .server_ctx = sctx, .no_take = 1};
    assert_int_equal(conn_open(k, cctx, &o), 0);
    assert_int_equal(SSL_version(k->server), TLS1_3_VERSION);
    assert_null(st_tlsrec_take(k->server));
    assert_int_equal(SSL_write(k->server, "hello", 5), 5);
    c_expect(k, "hello", 5);
    close_all(k, cctx);
    tfree(sctx);
}

static void tlsrec_prepare_ctx_is_idempotent(void **state)
{
    SSL_CTX *sctx = ctx_track(SSL_CTX_new(TLS_server_method()));
    assert_int_equal(SSL_CTX_use_certificate_chain_file(sctx, cert_path), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(sctx, key_path, SSL_FILETYPE_PEM), 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(st_tlsrec_prepare_ctx(sctx), 0);
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.tickets = -1, .server_ctx = sctx};
    assert_int_equal(conn_open(k, cctx, &o), 0);
    exchange(k);
    conn_close(k);
    /* and the st_tls context, prepared by setup() and maybe by st_tls */
    assert_int_equal(st_tlsrec_prepare_ctx(st_tls_ctx_get(tls)), 0);
    assert_int_equal(conn_open(k, cctx, NULL), 0);
    exchange(k);
    close_all(k, cctx);
    tfree(sctx);
}

/* OpenSSL has read a part of a record the client sent after the
 * handshake: those bytes are inside the SSL, so the take-over declines
 * and the SSL goes on. */
static void tlsrec_take_declines_when_openssl_holds_unread_data(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.tickets = -1, .no_take = 1};
    assert_int_equal(conn_open(k, cctx, &o), 0);
    c_write(k, "0123456789", 10);
    char buf[16];
    int r = -1;
    for (int i = 0; i < 10 && r <= 0; i++)
        r = SSL_read(k->server, buf, 3);
    assert_int_equal(r, 3);
    assert_int_equal(SSL_pending(k->server), 7);
    assert_null(st_tlsrec_take(k->server));
    assert_int_equal(SSL_read(k->server, buf, sizeof buf), 7);
    assert_memory_equal(buf, "3456789", 7);
    assert_int_equal(SSL_write(k->server, "ok", 2), 2);
    c_expect(k, "ok", 2);
    close_all(k, cctx);
}

/* OpenSSL itself moved the sequence numbers (and maybe the keys) on before
 * the take-over: data both ways, and a KeyUpdate the client asked for.
 * Either the record layer continues exactly where OpenSSL stands, or it
 * declines and the SSL carries on; what the client sees must be right. */
static void tlsrec_take_after_openssl_exchanged_data_and_key_update(void **state)
{
    for (int variant = 0; variant < 2; variant++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = conn_new();
        opts o = {.tickets = -1, .no_take = 1};
        char buf[64];
        int r = -1;
        assert_int_equal(conn_open(k, cctx, &o), 0);
        assert_int_equal(SSL_write(k->server, "pre", 3), 3);
        c_expect(k, "pre", 3);
        if (variant == 1) assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
        c_write(k, "one", 3);
        for (int i = 0; i < 10 && r <= 0; i++)
            r = SSL_read(k->server, buf, sizeof buf);
        assert_int_equal(r, 3);
        k->rec = st_tlsrec_take(k->server);
        print_message("take-over after OpenSSL %s: %s\n",
                      variant ? "read a KeyUpdate(update_requested)" : "exchanged data",
                      k->rec ? "taken" : "declined");
        if (k->rec) {
            SSL_free(k->server);
            k->server = NULL;
            s_write(k, "two", 3);
        } else {
            assert_int_equal(SSL_write(k->server, "two", 3), 3);
        }
        c_expect(k, "two", 3);
        /* RFC 8446 §4.6.3: our KeyUpdate before our next application data */
        if (variant == 1) {
            assert_int_equal(k->c.key_updates, 1);
            assert_false(k->c.ku_bad_request);
        }
        c_write(k, "three", 5);
        if (k->rec) {
            s_expect(k, "three", 5);
        } else {
            r = -1;
            for (int i = 0; i < 10 && r <= 0; i++)
                r = SSL_read(k->server, buf, sizeof buf);
            assert_int_equal(r, 5);
        }
        close_all(k, cctx);
    }
}

/* ==== bulk data, partial writes, small reads ==== */

#define MIB (1u << 20)

static void rfc8446_5_1_one_mebibyte_to_client_through_a_small_send_buffer(void **state)
{
    unsigned char *src = tmalloc(MIB), *dst = tmalloc(MIB + 1);
    assert_non_null(src);
    assert_non_null(dst);
    fill_random(src, MIB, 42);
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        opts o = {.tickets = -1, .sndbuf = 4096};
        assert_int_equal(conn_open(k, cctx, &o), 0);
        exchange(k);
        size_t off = 0, got = 0, max_unsent = 0;
        int zeros = 0, done = 0;
        for (int i = 0; i < 200000 && !(done && got == MIB); i++) {
            ssize_t w;
            if (off < MIB) {
                w = st_tlsrec_write(k->rec, k->sfd, src + off, MIB - off);
                assert_true(w >= 0);
                assert_true((size_t)w <= MIB - off);
                if (w == 0) zeros++;
                off += (size_t)w;
            } else {
                w = st_tlsrec_write(k->rec, k->sfd, NULL, 0);
                assert_true(w == 0 || w == 1);
                done = w == 1;
            }
            size_t u = st_tlsrec_unsent(k->rec);
            if (u > max_unsent) max_unsent = u;
            /* let the client take some, not all, so the socket stays tight */
            if (i % 2 == 0) c_read_now(k, dst, MIB + 1, &got);
        }
        assert_int_equal(off, MIB);
        assert_true(done);
        assert_int_equal(st_tlsrec_unsent(k->rec), 0);
        c_read_now(k, dst, MIB + 1, &got);
        assert_int_equal(got, MIB);
        assert_memory_equal(dst, src, MIB);
        assert_false(k->c.failed);
        /* the small buffer did what it is here for */
        print_message("%s: %d writes took nothing, max unsent %zu\n", suites[s], zeros, max_unsent);
        assert_true(zeros > 0);
        assert_true(max_unsent > 0);
        assert_true(max_unsent <= MAX_RECORD); /* at most one record is kept */
        assert_int_equal(st_tlsrec_write(k->rec, k->sfd, NULL, 0), 1);
        close_all(k, cctx);
    }
    tfree(src);
    tfree(dst);
}

static void rfc8446_5_1_one_mebibyte_from_client(void **state)
{
    unsigned char *src = tmalloc(MIB), *dst = tmalloc(MIB + 1);
    assert_non_null(src);
    assert_non_null(dst);
    fill_random(src, MIB, 4242);
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = open_checked(cctx);
        c_write(k, src, MIB); /* 64 records into the wire buffer */
        size_t got = 0;
        ssize_t r = -2;
        for (int i = 0; i < 100000 && got < MIB && r == -2; i++) {
            c_flush(k);
            r = s_read(k, dst, MIB + 1, &got, 5000);
        }
        assert_int_equal(r, -2);
        assert_int_equal(got, MIB);
        assert_memory_equal(dst, src, MIB);
        assert_int_equal(st_tlsrec_pending(k->rec), 0);
        exchange(k);
        close_all(k, cctx);
    }
    tfree(src);
    tfree(dst);
}

/* A full 2^14-byte record read 7 bytes at a time: after the first call the
 * rest is pending and comes out before anything more is read from the
 * socket. The client has hung up behind the record, so a read that went to
 * the socket would see EOF instead of the data. */
static void tlsrec_read_small_n_drains_a_record_before_the_socket(void **state)
{
    unsigned char src[16384], dst[16384 + 7];
    fill_random(src, sizeof src, 99);
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = open_checked(cctx);
    k->c.hold = 1;
    c_write(k, src, sizeof src);
    assert_int_equal(k->c.wlen, 5 + 16384 + 1 + 16); /* one record */
    k->c.hold = 0;
    assert_true(c_flush(k));
    assert_int_equal(shutdown(k->c.fd, SHUT_WR), 0);

    size_t got = 0, pending = 0;
    int calls = 0;
    while (got < sizeof src && calls < 10000) {
        ssize_t r = st_tlsrec_read(k->rec, k->sfd, dst + got, 7);
        calls++;
        if (r != 7 && got + (size_t)(r > 0 ? r : 0) != sizeof src)
            print_error("call %d returned %zd after %zu bytes (pending %zu)\n", calls, r, got,
                        pending);
        assert_true(r > 0);
        assert_true(r == 7 || got + (size_t)r == sizeof src);
        if (calls > 1) assert_int_equal(st_tlsrec_pending(k->rec), pending - (size_t)r);
        got += (size_t)r;
        pending = st_tlsrec_pending(k->rec);
        assert_int_equal(pending, sizeof src - got);
    }
    assert_int_equal(got, sizeof src);
    assert_memory_equal(dst, src, sizeof src);
    assert_int_equal(st_tlsrec_pending(k->rec), 0);
    /* now the EOF */
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, dst, 7), 0);
    close_all(k, cctx);
}

/* RFC 8446 §5.1: records arrive in pieces. Every byte goes to the socket
 * on its own; st_tlsrec_read says -2 until a record is complete, and at the
 * last byte of an application data record gives all of its data. */
static void rfc8446_5_1_records_split_at_every_byte(void **state)
{
    unsigned char big[16384], want[5 + 16384 + 8 + 3];
    fill_random(big, sizeof big, 5);
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = open_checked(cctx);
        k->c.hold = 1;
        /* records: "first", 2^14 bytes, KeyUpdate, "after-ku", "end" */
        c_write(k, "first", 5);
        c_write(k, big, sizeof big);
        assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
        c_write(k, "after-ku", 8);
        c_write(k, "end", 3);
        static const size_t data_of[] = {5, 16384, 0, 8, 3};
        memcpy(want, "first", 5);
        memcpy(want + 5, big, sizeof big);
        memcpy(want + 5 + sizeof big, "after-kuend", 11);

        unsigned char *w = k->c.wire + k->c.woff;
        size_t wlen = k->c.wlen, rec = 0, rec_end = 0, got = 0, expect = 0;
        unsigned char *dst = tmalloc(sizeof want + 1);
        assert_non_null(dst);
        for (size_t i = 0; i < wlen; i++) {
            if (i == rec_end) { /* a header starts here */
                assert_true(i + 5 <= wlen);
                assert_int_equal(w[i], 23);
                rec_end = i + 5 + (((size_t)w[i + 3] << 8) | w[i + 4]);
            }
            assert_int_equal(write(k->c.fd, w + i, 1), 1);
            size_t before = got;
            ssize_t r = s_read(k, dst, sizeof want + 1, &got, sizeof want + 1);
            assert_int_equal(r, -2);
            if (i + 1 < rec_end) {
                if (got != before) print_error("data before the end of record %zu\n", rec);
                assert_int_equal(got, before);
            } else {
                assert_true(rec < sizeof data_of / sizeof *data_of);
                expect += data_of[rec++];
                assert_int_equal(got, expect);
            }
        }
        assert_int_equal(rec, 5);
        assert_int_equal(got, sizeof want);
        assert_memory_equal(dst, want, sizeof want);
        tfree(dst);
        k->c.wlen = 0;
        k->c.hold = 0;
        exchange(k);
        close_all(k, cctx);
    }
}

/* RFC 8446 §5.4 padding is optional; tlsrec.h says we add none: a
 * record of n bytes is 5 + n + 1 + 16 on the wire. */
static void rfc8446_5_4_records_we_send_carry_no_padding(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    assert_int_equal(conn_open(k, cctx, NULL), 0);
    exchange(k); /* tickets read */
    s_write(k, "hello", 5);
    unsigned char peek[64];
    assert_int_equal(recv(k->c.fd, peek, sizeof peek, MSG_PEEK), 5 + 5 + 1 + 16);
    assert_int_equal(peek[0], 23);
    assert_int_equal(peek[1], 3);
    assert_int_equal(peek[2], 3);
    assert_int_equal((peek[3] << 8) | peek[4], 5 + 1 + 16);
    c_expect(k, "hello", 5);
    close_all(k, cctx);
}

/* st_tlsrec_drained: after a read that emptied the socket, the next read
 * (before anything new arrives) is -2, so the caller may wait for epoll. */
static void tlsrec_drained_after_a_read_that_emptied_the_socket(void **state)
{
    unsigned char buf[256];
    unsigned char *big = tmalloc(MIB), *dst = tmalloc(MIB + 1);
    fill_random(big, MIB, 21);
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = open_checked(cctx);
    c_write(k, "abc", 3);
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), 3);
    assert_int_equal(st_tlsrec_drained(k->rec), 1);
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), -2);
    /* plaintext kept: not drained */
    c_write(k, "0123456789", 10);
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, 4), 4);
    assert_int_equal(st_tlsrec_drained(k->rec), 0);
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, 4), 4);
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, 4), 2);
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, 4), -2);
    /* a full socket: whenever drained says so, the next read is -2 */
    c_write(k, big, MIB);
    size_t got = 0;
    int claims = 0;
    for (int i = 0; i < 100000 && got < MIB; i++) {
        c_flush(k);
        ssize_t r = st_tlsrec_read(k->rec, k->sfd, dst + got, MIB + 1 - got);
        assert_true(r > 0 || r == -2);
        if (r < 0) continue;
        got += (size_t)r;
        if (st_tlsrec_drained(k->rec)) {
            claims++;
            assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), -2);
        }
    }
    assert_int_equal(got, MIB);
    assert_memory_equal(dst, big, MIB);
    assert_true(claims > 0);
    close_all(k, cctx);
}

/* A connection with crafting keys, one exchange done, and the client's
 * wire held: what send_rec crafts waits in k->c.wire until c_flush. */
static conn *open_holding(SSL_CTX *cctx)
{
    conn *k = conn_new();
    assert_int_equal(conn_open(k, cctx, NULL), 0);
    craft_init(k);
    s_write(k, "hello", 5);
    c_expect(k, "hello", 5);
    k->c.hold = 1;
    return k;
}

/* Records handed over with st_tlsrec_preload (what our handshake read past
 * the client's Finished): the read that returns them finds the socket
 * empty (EAGAIN) and says drained, so the caller waits for epoll instead
 * of reading again for nothing. */
static void tlsrec_drained_after_preloaded_records_and_an_empty_socket(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = open_holding(cctx);
    unsigned char buf[256];
    send_rec(k, 23, "<stream:stream>", 15, 0);
    assert_int_equal(st_tlsrec_preload(k->rec, k->c.wire + k->c.woff, k->c.wlen), 0);
    k->c.wlen = 0;
    k->c.hold = 0;
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), 15);
    assert_memory_equal(buf, "<stream:stream>", 15);
    assert_int_equal(st_tlsrec_drained(k->rec), 1);
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), -2);
    close_all(k, cctx);
}

/* The read that returns data also met the end of the connection (the
 * client's close_notify or a bad record right behind the data, in one
 * segment): the next read is 0, not -2, so drained must not say "wait for
 * epoll": the fd will not become readable again, and the caller would
 * never learn that the connection is over. */
static void tlsrec_drained_is_not_claimed_when_the_same_read_ended_the_connection(void **state)
{
    int wrong = 0;
    for (int variant = 0; variant < 3; variant++) {
        SSL_CTX *cctx = client_ctx(NULL, 0);
        conn *k = open_holding(cctx);
        unsigned char buf[256];
        send_rec(k, 23, "</stream:stream>", 16, 0);
        if (variant == 0) send_rec(k, 21, "\x01\x00", 2, 0);             /* close_notify */
        if (variant == 1) send_rec(k, 21, "\x02\x28", 2, 0);             /* fatal alert */
        if (variant == 2) send_rec(k, 22, "\x18\x00\x00\x01\x05", 5, 0); /* bad KeyUpdate */
        k->c.hold = 0;
        assert_true(c_flush(k)); /* both records in one write */
        assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), 16);
        int drained = st_tlsrec_drained(k->rec);
        ssize_t next = st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf);
        if (drained && next != -2) {
            print_error("variant %d: drained said wait for epoll, but the next read is %zd (%s)\n",
                        variant, next, st_tlsrec_error(k->rec));
            wrong++;
        }
        assert_int_equal(next, 0);
        close_all(k, cctx);
    }
    assert_int_equal(wrong, 0);
}

/* ==== KeyUpdate (RFC 8446 §4.6.3) ==== */

static void rfc8446_4_6_3_key_update_not_requested_then_data(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = open_checked(cctx);
        assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
        c_write(k, "after", 5);
        s_expect(k, "after", 5);
        s_write(k, "reply", 5);
        c_expect(k, "reply", 5);
        /* not asked for: tlsrec.h updates our key only when asked */
        assert_int_equal(k->c.key_updates, 0);
        exchange(k);
        close_all(k, cctx);
    }
}

/* update_requested: the server's next application data goes under a new
 * key, announced by a KeyUpdate of its own with update_not_requested. */
static void rfc8446_4_6_3_key_update_requested_is_answered_before_next_data(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = open_checked(cctx);
        assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
        c_write(k, "after", 5);
        s_expect(k, "after", 5);
        size_t mark = k->c.nevents;
        s_write(k, "reply", 5);
        c_expect(k, "reply", 5);
        assert_int_equal(k->c.key_updates, 1);
        assert_false(k->c.ku_bad_request);
        /* in that order: KeyUpdate, then the data */
        assert_true(k->c.nevents >= mark + 2);
        assert_int_equal(k->c.events[mark], 'K');
        assert_int_equal(k->c.events[mark + 1], 'A');
        /* and both directions go on under the new keys */
        exchange(k);
        exchange(k);
        assert_int_equal(k->c.key_updates, 1);
        close_all(k, cctx);
    }
}

static void rfc8446_4_6_3_several_key_updates_in_a_row(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        char m[32];
        assert_int_equal(conn_open(k, cctx, NULL), 0);
        exchange(k);
        /* five not requested, each with data */
        for (int i = 0; i < 5; i++) {
            assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
            int n = snprintf(m, sizeof m, "nr-%d", i);
            c_write(k, m, (size_t)n);
            s_expect(k, m, (size_t)n);
        }
        /* three in a row with nothing between (each its own record) */
        for (int i = 0; i < 3; i++) {
            assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
            assert_int_equal(SSL_do_handshake(k->c.ssl), 1);
        }
        c_flush(k);
        c_write(k, "three", 5);
        s_expect(k, "three", 5);
        /* requested ones, answered one at a time */
        for (int i = 0; i < 3; i++) {
            int before = k->c.key_updates;
            assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
            int n = snprintf(m, sizeof m, "rq-%d", i);
            c_write(k, m, (size_t)n);
            s_expect(k, m, (size_t)n);
            s_write(k, m, (size_t)n);
            c_expect(k, m, (size_t)n);
            assert_int_equal(k->c.key_updates, before + 1);
        }
        /* three requested back to back before the server writes: it owes
         * at least one KeyUpdate (it may fold them into one) */
        int before = k->c.key_updates;
        for (int i = 0; i < 3; i++) {
            assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
            assert_int_equal(SSL_do_handshake(k->c.ssl), 1);
        }
        c_flush(k);
        c_write(k, "burst", 5);
        s_expect(k, "burst", 5);
        s_write(k, "burst-reply", 11);
        c_expect(k, "burst-reply", 11);
        assert_true(k->c.key_updates > before);
        assert_true(k->c.key_updates <= before + 3);
        assert_false(k->c.ku_bad_request);
        exchange(k);
        close_all(k, cctx);
    }
}

/* ==== closing (RFC 8446 §6.1) ==== */

static void rfc8446_6_1_client_close_notify_ends_reading(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = open_checked(cctx);
    c_write(k, "last words", 10);
    assert_int_equal(SSL_shutdown(k->c.ssl), 0); /* sent, not yet received */
    c_flush(k);
    unsigned char buf[64];
    size_t got = 0;
    /* the data before close_notify still arrives */
    assert_int_equal(s_read(k, buf, sizeof buf, &got, sizeof buf), 0);
    assert_int_equal(got, 10);
    assert_memory_equal(buf, "last words", 10);
    assert_non_null(st_tlsrec_error(k->rec));
    print_message("after close_notify: \"%s\"\n", st_tlsrec_error(k->rec));
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf), 0);
    /* RFC 8446 §6.1: each side sends its close_notify before closing its
     * write side; the peer's does not stop ours */
    st_tlsrec_close_notify(k->rec, k->sfd);
    got = 0;
    c_read_now(k, buf, sizeof buf, &got);
    assert_int_equal(got, 0);
    assert_true(k->c.zero_return);
    assert_false(k->c.failed);
    close_all(k, cctx);
}

static void rfc8446_6_1_our_close_notify_is_zero_return_for_the_client(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = open_checked(cctx);
    s_write(k, "bye", 3);
    st_tlsrec_close_notify(k->rec, k->sfd);
    assert_int_equal(st_tlsrec_unsent(k->rec), 0);
    /* nothing is written after it */
    assert_int_equal(st_tlsrec_write(k->rec, k->sfd, "more", 4), -1);
    unsigned char buf[16];
    size_t got = 0;
    c_read_now(k, buf, sizeof buf, &got);
    assert_int_equal(got, 3);
    assert_memory_equal(buf, "bye", 3);
    assert_true(k->c.zero_return);
    assert_int_equal(SSL_get_error(k->c.ssl, SSL_read(k->c.ssl, buf, sizeof buf)),
                     SSL_ERROR_ZERO_RETURN);
    assert_int_equal(k->c.alert, A_CLOSE_NOTIFY);
    /* the client may still send (half-close) and answer with its own */
    assert_int_equal(SSL_shutdown(k->c.ssl), 1);
    c_flush(k);
    got = 0;
    ssize_t r = s_read(k, buf, sizeof buf, &got, sizeof buf);
    assert_int_equal(r, 0);
    close_all(k, cctx);
}

/* A record is kept when close_notify is queued: it goes first, the alert
 * after it, once the socket takes them. */
static void rfc8446_6_1_close_notify_goes_after_the_kept_record(void **state)
{
    unsigned char *src = tmalloc(200000), *dst = tmalloc(200001);
    assert_non_null(src);
    assert_non_null(dst);
    fill_random(src, 200000, 3);
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.tickets = -1, .sndbuf = 4096};
    assert_int_equal(conn_open(k, cctx, &o), 0);
    exchange(k);
    size_t off = 0;
    for (int i = 0; i < 1000 && off < 200000 && !st_tlsrec_unsent(k->rec); i++) {
        ssize_t w = st_tlsrec_write(k->rec, k->sfd, src + off, 200000 - off);
        assert_true(w >= 0);
        off += (size_t)w;
    }
    assert_true(off < 200000);
    assert_true(st_tlsrec_unsent(k->rec) > 0);
    st_tlsrec_close_notify(k->rec, k->sfd);
    size_t got = 0;
    for (int i = 0; i < 10000 && !k->c.zero_return && !k->c.failed; i++) {
        c_read_now(k, dst, 200001, &got);
        st_tlsrec_write(k->rec, k->sfd, NULL, 0); /* push what is kept */
    }
    assert_true(k->c.zero_return);
    assert_false(k->c.failed);
    assert_int_equal(got, off);
    assert_memory_equal(dst, src, off);
    assert_int_equal(st_tlsrec_unsent(k->rec), 0);
    close_all(k, cctx);
    tfree(src);
    tfree(dst);
}

/* A TCP EOF without close_notify (RFC 8446 §6.1 truncation): over, with a
 * reason; also in the middle of a record. */
static void rfc8446_6_1_eof_without_close_notify_ends_reading(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    for (int mid = 0; mid < 2; mid++) {
        conn *k = conn_new();
        unsigned char buf[64];
        size_t got = 0;
        assert_int_equal(conn_open(k, cctx, NULL), 0);
        exchange(k);
        if (mid) {
            k->c.hold = 1;
            c_write(k, "cut short", 9);
            assert_int_equal(write(k->c.fd, k->c.wire + k->c.woff, 10), 10);
            k->c.wlen = 0;
        }
        assert_int_equal(shutdown(k->c.fd, SHUT_WR), 0);
        /* the fd stays readable (level-triggered loop), so a -2 before
         * the 0 costs one more call; it must come to 0 */
        ssize_t r = -2;
        int calls = 0;
        while (r == -2 && calls < 4) {
            r = s_read(k, buf, sizeof buf, &got, sizeof buf);
            calls++;
        }
        if (calls > 1)
            print_message("EOF%s: %d calls to see it\n", mid ? " inside a record" : "", calls);
        assert_int_equal(r, 0);
        assert_int_equal(got, 0);
        assert_non_null(st_tlsrec_error(k->rec));
        print_message("EOF%s: \"%s\"\n", mid ? " inside a record" : "", st_tlsrec_error(k->rec));
        conn_close(k);
    }
    tfree(cctx);
}

/* ==== resting ==== */

static void tlsrec_rest_then_data_flows_both_ways(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = open_checked(cctx);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(st_tlsrec_rest(k->rec), 1);
            assert_int_equal(st_tlsrec_rest(k->rec), 0);
            exchange(k);
        }
        /* resting between the two directions */
        s_write(k, "a", 1);
        assert_int_equal(st_tlsrec_rest(k->rec), 1);
        c_write(k, "b", 1);
        s_expect(k, "b", 1);
        assert_int_equal(st_tlsrec_rest(k->rec), 1);
        c_expect(k, "a", 1);
        s_write(k, "c", 1);
        c_expect(k, "c", 1);
        close_all(k, cctx);
    }
}

/* Resting gives back only what is empty: pending plaintext and a kept
 * record survive it. */
static void tlsrec_rest_keeps_pending_plaintext_and_the_kept_record(void **state)
{
    unsigned char src[100], dst[101];
    fill_random(src, sizeof src, 11);
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.tickets = -1, .sndbuf = 4096};
    assert_int_equal(conn_open(k, cctx, &o), 0);
    exchange(k);
    c_write(k, src, sizeof src);
    assert_int_equal(st_tlsrec_read(k->rec, k->sfd, dst, 10), 10);
    assert_int_equal(st_tlsrec_pending(k->rec), 90);
    st_tlsrec_rest(k->rec);
    assert_int_equal(st_tlsrec_pending(k->rec), 90);
    size_t got = 10;
    assert_int_equal(s_read(k, dst, sizeof dst, &got, sizeof dst), -2);
    assert_int_equal(got, 100);
    assert_memory_equal(dst, src, 100);

    unsigned char *big = tmalloc(100000), *out = tmalloc(100001);
    assert_non_null(big);
    assert_non_null(out);
    fill_random(big, 100000, 12);
    size_t off = 0;
    for (int i = 0; i < 1000 && off < 100000 && !st_tlsrec_unsent(k->rec); i++) {
        ssize_t w = st_tlsrec_write(k->rec, k->sfd, big + off, 100000 - off);
        assert_true(w >= 0);
        off += (size_t)w;
    }
    size_t kept = st_tlsrec_unsent(k->rec);
    assert_true(kept > 0);
    st_tlsrec_rest(k->rec);
    assert_int_equal(st_tlsrec_unsent(k->rec), kept);
    got = 0;
    int done = 0;
    for (int i = 0; i < 100000 && !(done && got == off); i++) {
        c_read_now(k, out, 100001, &got);
        if (!done) {
            ssize_t w = st_tlsrec_write(k->rec, k->sfd, NULL, 0);
            assert_true(w == 0 || w == 1);
            done = w == 1;
        }
        if (i % 3 == 0) st_tlsrec_rest(k->rec);
    }
    assert_int_equal(got, off);
    assert_memory_equal(out, big, off);
    exchange(k);
    tfree(big);
    tfree(out);
    close_all(k, cctx);
}

/* The rebuilt contexts use the keys as they stand after KeyUpdates. */
static void tlsrec_rest_after_key_update_uses_the_updated_keys(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = open_checked(cctx);
        assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
        c_write(k, "ku", 2);
        s_expect(k, "ku", 2);
        assert_int_equal(st_tlsrec_rest(k->rec), 1);
        s_write(k, "after-rest", 10);
        c_expect(k, "after-rest", 10);
        assert_int_equal(k->c.key_updates, 1);
        assert_int_equal(st_tlsrec_rest(k->rec), 1);
        exchange(k);
        assert_int_equal(st_tlsrec_rest(k->rec), 1);
        /* an update arriving while resting */
        assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
        c_write(k, "ku2", 3);
        s_expect(k, "ku2", 3);
        assert_int_equal(st_tlsrec_rest(k->rec), 1);
        exchange(k);
        assert_int_equal(k->c.key_updates, 2);
        close_all(k, cctx);
    }
}

/* ==== out of memory ==== */

/* One connection's life with the allocator broken at allocation fail_at:
 * take-over, a read drained in small pieces, a record split across reads,
 * a record kept by a full socket. Every step either works exactly or ends
 * the connection cleanly (read 0 / write -1, with a reason); a declined
 * take-over leaves a working SSL. Returns the allocations counted. */
static long tlsrec_workload(SSL_CTX *cctx)
{
    static unsigned char big[40000], dst[40001];
    unsigned char buf[128];
    conn *k = conn_new();
    opts o = {.tickets = -1, .sndbuf = 4096, .no_take = 1};
    fill_random(big, sizeof big, 31);
    assert_int_equal(conn_open(k, cctx, &o), 0);
    alloc_count = 0;
    st_set_alloc_hooks(&torture_hooks);
    k->rec = st_tlsrec_take(k->server);
    if (!k->rec) {
        st_set_alloc_hooks(NULL);
        assert_int_equal(SSL_write(k->server, "ok", 2), 2);
        c_expect(k, "ok", 2);
        goto out;
    }
    SSL_free(k->server);
    k->server = NULL;

    /* 100 bytes read 10 at a time: the rest is kept */
    c_write(k, big, 100);
    size_t got = 0;
    for (int i = 0; i < 50 && got < 100; i++) {
        ssize_t r = st_tlsrec_read(k->rec, k->sfd, dst + got, 10);
        if (r == 0) goto ended;
        assert_true(r > 0);
        got += (size_t)r;
    }
    assert_memory_equal(dst, big, 100);
    st_tlsrec_rest(k->rec);

    /* a record in two pieces */
    k->c.hold = 1;
    c_write(k, "split", 5);
    assert_int_equal(write(k->c.fd, k->c.wire + k->c.woff, 7), 7);
    k->c.woff += 7;
    k->c.wlen -= 7;
    ssize_t r = st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf);
    if (r == 0) goto ended;
    assert_int_equal(r, -2);
    k->c.hold = 0;
    c_flush(k);
    r = st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf);
    if (r == 0) goto ended;
    assert_int_equal(r, 5);
    assert_memory_equal(buf, "split", 5);

    /* writes through a full socket: a record kept */
    size_t off = 0;
    got = 0;
    for (int i = 0; i < 20000 && got < sizeof big; i++) {
        ssize_t w = off < sizeof big ? st_tlsrec_write(k->rec, k->sfd, big + off, sizeof big - off)
                                     : st_tlsrec_write(k->rec, k->sfd, NULL, 0);
        if (w < 0) goto ended;
        if (off < sizeof big) off += (size_t)w;
        c_read_now(k, dst, sizeof dst, &got);
        assert_false(k->c.failed);
        if (i % 5 == 0) st_tlsrec_rest(k->rec);
    }
    assert_int_equal(got, sizeof big);
    assert_memory_equal(dst, big, sizeof big);
    goto out;
ended:
    assert_non_null(st_tlsrec_error(k->rec));
out:
    st_set_alloc_hooks(NULL);
    conn_close(k);
    return alloc_count;
}

/* STYLE 14: count the allocations, then fail each one in turn. */
static void tlsrec_alloc_failure_torture(void **state)
{
    SSL_CTX *cctx = client_ctx(NULL, 0);
    fail_at = -1;
    long total = tlsrec_workload(cctx);
    print_message("%ld allocations in the workload\n", total);
    assert_true(total >= 3);
    for (fail_at = 1; fail_at <= total + 1; fail_at++)
        tlsrec_workload(cctx);
    fail_at = -1;
    tfree(cctx);
}

/* ==== crafted records ==== */

enum { S_REC, S_RAW, S_FLIP, S_REPLAY, S_SKIPSEQ, S_ROTATE, S_EXPECT };

typedef struct step {
    int kind;
    int type;          /* S_REC: inner content type; -1: none (all zeros) */
    const char *bytes; /* content (S_REC, S_RAW) or expected data (S_EXPECT) */
    size_t len;        /* of bytes; or, when bytes is NULL, that many 'A's */
    size_t pad;        /* S_REC: zeros after the type; S_FLIP: byte to flip */
} step;

#define REC(t, s)                                                                                  \
    {                                                                                              \
        S_REC, t, s, sizeof s - 1, 0                                                               \
    }
#define RAW(s)                                                                                     \
    {                                                                                              \
        S_RAW, 0, s, sizeof s - 1, 0                                                               \
    }
#define EXPECT(s)                                                                                  \
    {                                                                                              \
        S_EXPECT, 0, s, sizeof s - 1, 0                                                            \
    }
#define ROTATE                                                                                     \
    {                                                                                              \
        S_ROTATE, 0, NULL, 0, 0                                                                    \
    }

static void run_step(conn *k, const step *st)
{
    unsigned char *fill = NULL;
    const void *bytes = st->bytes;
    if (!bytes && st->len) {
        fill = tmalloc(st->len);
        assert_non_null(fill);
        memset(fill, 'A', st->len);
        bytes = fill;
    }
    switch (st->kind) {
    case S_REC:
        send_rec(k, st->type, bytes, st->len, st->pad);
        break;
    case S_RAW:
        send_raw(k, bytes, st->len);
        break;
    case S_FLIP: { /* an application data record with one bit flipped */
        seal(&k->c, &k->c.k, 23, "tampered", 8, 0);
        size_t at = st->pad < k->c.lastlen ? st->pad : k->c.lastlen - 1;
        k->c.last[at] ^= 0x10;
        send_raw(k, k->c.last, k->c.lastlen);
        break;
    }
    case S_REPLAY: /* the last record again */
        send_raw(k, k->c.last, k->c.lastlen);
        break;
    case S_SKIPSEQ:
        k->c.k.seq++;
        break;
    case S_ROTATE:
        craft_key_update(&k->c);
        break;
    case S_EXPECT:
        s_expect(k, bytes, st->len);
        break;
    }
    tfree(fill);
}

/* For each suite: connect, the client reads the tickets and our first
 * record, a crafted record arrives (the keys are right), then the steps;
 * then either the fatal alert (alert >= 0 or A_NONE), or (alert == -2) the
 * connection still works both ways. */
#define WORKS (-2)
static void run_steps(const step *steps, size_t n, int alert)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        assert_int_equal(conn_open(k, cctx, NULL), 0);
        craft_init(k);
        s_write(k, "hello", 5);
        c_expect(k, "hello", 5);
        send_rec(k, 23, "ping", 4, 0);
        s_expect(k, "ping", 4);
        for (size_t i = 0; i < n; i++)
            run_step(k, &steps[i]);
        if (alert == WORKS) {
            send_rec(k, 23, "still here", 10, 0);
            s_expect(k, "still here", 10);
            s_write(k, "so am I", 7);
            c_expect(k, "so am I", 7);
        } else {
            expect_fatal(k, alert);
        }
        close_all(k, cctx);
    }
}

#define CASE(name, alert, ...)                                                                     \
    static void name(void **state)                                                                 \
    {                                                                                              \
        static const step s[] = {__VA_ARGS__};                                                     \
        run_steps(s, sizeof s / sizeof *s, alert);                                                 \
    }

/* -- accepted -- */

CASE(rfc8446_4_6_3_key_update_split_across_two_records_is_accepted, WORKS, REC(22, "\x18\x00"),
     REC(22, "\x00\x01\x00"), ROTATE, REC(23, "after"), EXPECT("after"))
CASE(rfc8446_4_6_3_key_update_split_at_every_byte_is_accepted, WORKS, REC(22, "\x18"),
     REC(22, "\x00"), REC(22, "\x00"), REC(22, "\x01"), REC(22, "\x00"), ROTATE, REC(23, "x"),
     EXPECT("x"))
CASE(rfc8446_5_4_padding_is_removed, WORKS, {S_REC, 23, "padded", 6, 100}, EXPECT("padded"),
     {S_REC, 23, "p", 1, 16384 - 1}, EXPECT("p"))
CASE(rfc8446_5_4_zero_length_application_data_is_accepted, WORKS, REC(23, ""),
     {S_REC, 23, "", 0, 30}, REC(23, "x"), EXPECT("x"))
CASE(rfc8446_5_4_inner_plaintext_of_2_14_plus_1_is_accepted, WORKS, {S_REC, 23, NULL, 16384, 0},
     {S_EXPECT, 0, NULL, 16384, 0})
CASE(rfc8446_6_fatal_alert_from_client_ends_without_answer, A_NONE, REC(21, "\x02\x28"))
CASE(rfc8446_6_1_crafted_close_notify_ends_reading, A_CLOSED, REC(21, "\x01\x00"))

/* -- refused -- */

CASE(rfc8446_5_2_flipped_bit_in_ciphertext_is_bad_record_mac, A_BAD_RECORD_MAC,
     {S_FLIP, 0, NULL, 0, 5 + 2})
CASE(rfc8446_5_2_flipped_bit_in_tag_is_bad_record_mac, A_BAD_RECORD_MAC,
     {S_FLIP, 0, NULL, 0, 5 + 9 + 15})
CASE(rfc8446_5_2_replayed_record_is_bad_record_mac, A_BAD_RECORD_MAC, REC(23, "once"),
     EXPECT("once"), {S_REPLAY, 0, NULL, 0, 0})
CASE(rfc8446_5_3_skipped_sequence_number_is_bad_record_mac, A_BAD_RECORD_MAC,
     {S_SKIPSEQ, 0, NULL, 0, 0}, REC(23, "late"))
CASE(rfc8446_5_2_ciphertext_shorter_than_the_tag_is_bad_record_mac, A_BAD_RECORD_MAC,
     RAW("\x17\x03\x03\x00\x05"
         "abcde"))
CASE(rfc8446_5_2_old_key_after_key_update_is_bad_record_mac, A_BAD_RECORD_MAC,
     REC(22, "\x18\x00\x00\x01\x00"), REC(23, "old key"))
CASE(rfc8446_5_4_all_zero_inner_plaintext_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     {S_REC, -1, "", 0, 10})
CASE(rfc8446_5_4_empty_inner_plaintext_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     {S_REC, -1, "", 0, 0})
CASE(rfc8446_5_4_inner_plaintext_over_2_14_plus_1_is_record_overflow, A_RECORD_OVERFLOW,
     {S_REC, 23, NULL, 16385, 0})
CASE(rfc8446_5_4_padding_past_2_14_plus_1_is_record_overflow, A_RECORD_OVERFLOW,
     {S_REC, 23, NULL, 16384, 1})
CASE(rfc8446_5_4_zero_length_handshake_record_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     REC(22, ""))
CASE(rfc8446_5_4_zero_length_alert_record_is_unexpected_message, A_UNEXPECTED_MESSAGE, REC(21, ""))
CASE(rfc8446_5_4_zero_length_handshake_record_with_padding_is_unexpected_message,
     A_UNEXPECTED_MESSAGE, {S_REC, 22, "", 0, 20})
CASE(rfc8446_5_protected_change_cipher_spec_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     REC(20, "\x01"))
CASE(rfc8446_5_unknown_inner_content_type_is_unexpected_message, A_UNEXPECTED_MESSAGE, REC(99, "x"))
CASE(rfc8446_5_inner_heartbeat_is_unexpected_message, A_UNEXPECTED_MESSAGE, REC(24, "\x01\x00\x00"))
CASE(rfc8446_4_6_1_new_session_ticket_from_client_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     REC(22, "\x04\x00\x00\x0e"
             "\x00\x00\x00\x3c\x00\x00\x00\x01\x00\x00\x01\xaa\x00\x00"))
CASE(rfc8446_4_client_hello_after_handshake_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     REC(22, "\x01\x00\x00\x00"))
CASE(rfc8446_4_4_4_finished_after_handshake_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     REC(22, "\x14\x00\x00\x20"
             "0123456789abcdef0123456789abcdef"))
CASE(rfc8446_4_6_3_key_update_request_2_is_illegal_parameter, A_ILLEGAL_PARAMETER,
     REC(22, "\x18\x00\x00\x01\x02"))
CASE(rfc8446_4_6_3_key_update_of_two_bytes_is_decode_error, A_DECODE_ERROR,
     REC(22, "\x18\x00\x00\x02\x00\x00"))
CASE(rfc8446_4_6_3_empty_key_update_is_decode_error, A_DECODE_ERROR, REC(22, "\x18\x00\x00\x00"))
CASE(rfc8446_5_1_application_data_inside_a_fragmented_handshake_message_is_unexpected,
     A_UNEXPECTED_MESSAGE, REC(22, "\x18\x00"), REC(23, "x"))
/* RFC 8446 §5.1 forbids the interleaving but names no alert; taking the
 * close_notify as what it is also ends the connection */
CASE(rfc8446_5_1_alert_inside_a_fragmented_handshake_message_ends_it, A_UNEXP_OR_NONE,
     REC(22, "\x18\x00\x00"), REC(21, "\x01\x00"))
CASE(rfc8446_5_1_key_update_not_at_a_record_boundary_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     REC(22, "\x18\x00\x00\x01\x00\x18"))
CASE(rfc8446_5_1_two_key_updates_in_one_record_are_unexpected_message, A_UNEXPECTED_MESSAGE,
     REC(22, "\x18\x00\x00\x01\x00\x18\x00\x00\x01\x00"))
CASE(rfc8446_5_2_ciphertext_over_2_14_plus_256_is_record_overflow, A_RECORD_OVERFLOW,
     RAW("\x17\x03\x03\x41\x01"), {S_RAW, 0, NULL, 16641, 0})
CASE(rfc8446_5_2_ciphertext_of_2_14_plus_256_is_not_overflow_but_bad_record_mac, A_BAD_RECORD_MAC,
     RAW("\x17\x03\x03\x41\x00"), {S_RAW, 0, NULL, 16640, 0})
CASE(rfc8446_5_unprotected_change_cipher_spec_after_handshake_is_unexpected_message,
     A_UNEXPECTED_MESSAGE, RAW("\x14\x03\x03\x00\x01\x01"))
CASE(rfc8446_5_outer_type_handshake_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     RAW("\x16\x03\x03\x00\x05\x18\x00\x00\x01\x00"))
CASE(rfc8446_5_outer_type_alert_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     RAW("\x15\x03\x03\x00\x02\x01\x00"))
CASE(rfc8446_5_outer_type_heartbeat_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     RAW("\x18\x03\x03\x00\x03\x01\x00\x00"))
CASE(rfc8446_5_outer_type_zero_is_unexpected_message, A_UNEXPECTED_MESSAGE,
     RAW("\x00\x03\x03\x00\x03xyz"))

/* Write until a record is kept in st_tlsrec (the small send buffer is
 * full). Returns how much was taken. */
static size_t fill_until_kept(conn *k, const unsigned char *src, size_t n)
{
    size_t off = 0;
    for (int i = 0; i < 1000 && off < n && !st_tlsrec_unsent(k->rec); i++) {
        ssize_t w = st_tlsrec_write(k->rec, k->sfd, src + off, n - off);
        assert_true(w >= 0);
        off += (size_t)w;
    }
    assert_true(st_tlsrec_unsent(k->rec) > 0);
    return off;
}

/* The client asks for a KeyUpdate while one of our records is half sent:
 * that record finishes under the old key, then our KeyUpdate, then the
 * rest of the data under the new key (RFC 8446 §4.6.3, §5.3). */
static void rfc8446_4_6_3_key_update_answered_while_a_record_is_kept(void **state)
{
    enum { N = 300000 };
    unsigned char *src = tmalloc(N), *dst = tmalloc(N + 1);
    fill_random(src, N, 77);
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        opts o = {.tickets = -1, .sndbuf = 4096};
        assert_int_equal(conn_open(k, cctx, &o), 0);
        exchange(k);
        size_t off = fill_until_kept(k, src, N);
        assert_int_equal(SSL_key_update(k->c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
        c_write(k, "ku", 2);
        s_expect(k, "ku", 2);
        size_t got = 0;
        for (int i = 0; i < 100000 && got < N; i++) {
            if (off < N) {
                ssize_t w = st_tlsrec_write(k->rec, k->sfd, src + off, N - off);
                assert_true(w >= 0);
                off += (size_t)w;
            } else {
                assert_true(st_tlsrec_write(k->rec, k->sfd, NULL, 0) >= 0);
            }
            c_read_now(k, dst, N + 1, &got);
            assert_false(k->c.failed);
        }
        assert_int_equal(got, N);
        assert_memory_equal(dst, src, N);
        assert_int_equal(k->c.key_updates, 1);
        assert_false(k->c.ku_bad_request);
        exchange(k);
        close_all(k, cctx);
    }
}

/* A hostile record while one of our records is half sent: the record
 * completes, and the fatal alert follows it (RFC 8446 §6.2). */
static void rfc8446_6_2_fatal_alert_goes_after_the_kept_record(void **state)
{
    enum { N = 100000 };
    unsigned char *src = tmalloc(N), *dst = tmalloc(N + 1);
    fill_random(src, N, 78);
    SSL_CTX *cctx = client_ctx(NULL, 0);
    conn *k = conn_new();
    opts o = {.tickets = -1, .sndbuf = 4096};
    assert_int_equal(conn_open(k, cctx, &o), 0);
    craft_init(k);
    s_write(k, "hello", 5);
    c_expect(k, "hello", 5);
    size_t off = fill_until_kept(k, src, N);
    seal(&k->c, &k->c.k, 23, "tampered", 8, 0);
    k->c.last[7] ^= 1;
    send_raw(k, k->c.last, k->c.lastlen);
    unsigned char buf[64];
    size_t none = 0;
    assert_int_equal(s_read(k, buf, sizeof buf, &none, sizeof buf), 0);
    assert_int_equal(none, 0);
    size_t got = 0;
    for (int i = 0; i < 100000 && k->c.alert < 0 && !k->c.failed; i++) {
        st_tlsrec_write(k->rec, k->sfd, NULL, 0);
        c_read_now(k, dst, N + 1, &got);
    }
    assert_int_equal(got, off);
    assert_memory_equal(dst, src, off);
    assert_int_equal(k->c.alert, A_BAD_RECORD_MAC);
    assert_int_equal(st_tlsrec_unsent(k->rec), 0);
    close_all(k, cctx);
}

/* update_requested in a crafted KeyUpdate: the server answers with its own
 * (update_not_requested) before its next data, and keeps reading under the
 * client's new key. */
static void rfc8446_4_6_3_crafted_key_update_requested_is_answered(void **state)
{
    for (int s = 0; s < NSUITES; s++) {
        SSL_CTX *cctx = client_ctx(suites[s], 0);
        conn *k = conn_new();
        assert_int_equal(conn_open(k, cctx, NULL), 0);
        craft_init(k);
        s_write(k, "hello", 5);
        c_expect(k, "hello", 5);
        for (int round = 0; round < 3; round++) {
            send_rec(k, 22, "\x18\x00\x00\x01\x01", 5, 0);
            craft_key_update(&k->c);
            send_rec(k, 23, "new key", 7, 0);
            s_expect(k, "new key", 7);
            s_write(k, "reply", 5);
            c_expect(k, "reply", 5);
            assert_int_equal(k->c.key_updates, round + 1);
            assert_false(k->c.ku_bad_request);
        }
        close_all(k, cctx);
    }
}

#define T(f) cmocka_unit_test_teardown(f, cleanup)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(harness_crafted_keys_open_openssl_records),
        /* taking over */
        T(rfc8446_5_application_data_both_ways_after_takeover),
        T(rfc8446_9_1_each_tls13_suite_is_taken_over),
        T(rfc8446_4_6_1_first_record_after_session_tickets_decrypts),
        T(rfc8446_2_2_takeover_after_resumed_handshake),
        T(rfc8446_4_1_4_takeover_after_hello_retry_request),
        T(rfc8446_5_client_data_sent_with_its_finished_is_read_after_takeover),
        T(tlsrec_take_declines_tls12_and_the_ssl_keeps_working),
        T(tlsrec_take_declines_ssl_from_unprepared_ctx),
        T(tlsrec_prepare_ctx_is_idempotent),
        T(tlsrec_take_declines_when_openssl_holds_unread_data),
        T(tlsrec_take_after_openssl_exchanged_data_and_key_update),
        /* bulk, partial, small */
        T(rfc8446_5_1_one_mebibyte_to_client_through_a_small_send_buffer),
        T(rfc8446_5_1_one_mebibyte_from_client),
        T(tlsrec_read_small_n_drains_a_record_before_the_socket),
        T(rfc8446_5_1_records_split_at_every_byte),
        T(rfc8446_5_4_records_we_send_carry_no_padding),
        T(tlsrec_drained_after_a_read_that_emptied_the_socket),
        T(tlsrec_drained_is_not_claimed_when_the_same_read_ended_the_connection),
        T(tlsrec_drained_after_preloaded_records_and_an_empty_socket),
        /* KeyUpdate */
        T(rfc8446_4_6_3_key_update_not_requested_then_data),
        T(rfc8446_4_6_3_key_update_requested_is_answered_before_next_data),
        T(rfc8446_4_6_3_several_key_updates_in_a_row),
        T(rfc8446_4_6_3_crafted_key_update_requested_is_answered),
        T(rfc8446_4_6_3_key_update_answered_while_a_record_is_kept),
        T(rfc8446_4_6_3_key_update_split_across_two_records_is_accepted),
        T(rfc8446_4_6_3_key_update_split_at_every_byte_is_accepted),
        /* closing */
        T(rfc8446_6_1_client_close_notify_ends_reading),
        T(rfc8446_6_1_our_close_notify_is_zero_return_for_the_client),
        T(rfc8446_6_1_close_notify_goes_after_the_kept_record),
        T(rfc8446_6_1_eof_without_close_notify_ends_reading),
        T(rfc8446_6_2_fatal_alert_goes_after_the_kept_record),
        T(rfc8446_6_1_crafted_close_notify_ends_reading),
        T(rfc8446_6_fatal_alert_from_client_ends_without_answer),
        /* resting */
        T(tlsrec_rest_then_data_flows_both_ways),
        T(tlsrec_rest_keeps_pending_plaintext_and_the_kept_record),
        T(tlsrec_rest_after_key_update_uses_the_updated_keys),
        T(tlsrec_alloc_failure_torture),
        /* what the record layer accepts */
        T(rfc8446_5_4_padding_is_removed),
        T(rfc8446_5_4_zero_length_application_data_is_accepted),
        T(rfc8446_5_4_inner_plaintext_of_2_14_plus_1_is_accepted),
        /* and what it refuses */
        T(rfc8446_5_2_flipped_bit_in_ciphertext_is_bad_record_mac),
        T(rfc8446_5_2_flipped_bit_in_tag_is_bad_record_mac),
        T(rfc8446_5_2_replayed_record_is_bad_record_mac),
        T(rfc8446_5_3_skipped_sequence_number_is_bad_record_mac),
        T(rfc8446_5_2_ciphertext_shorter_than_the_tag_is_bad_record_mac),
        T(rfc8446_5_2_old_key_after_key_update_is_bad_record_mac),
        T(rfc8446_5_2_ciphertext_over_2_14_plus_256_is_record_overflow),
        T(rfc8446_5_2_ciphertext_of_2_14_plus_256_is_not_overflow_but_bad_record_mac),
        T(rfc8446_5_4_all_zero_inner_plaintext_is_unexpected_message),
        T(rfc8446_5_4_empty_inner_plaintext_is_unexpected_message),
        T(rfc8446_5_4_inner_plaintext_over_2_14_plus_1_is_record_overflow),
        T(rfc8446_5_4_padding_past_2_14_plus_1_is_record_overflow),
        T(rfc8446_5_4_zero_length_handshake_record_is_unexpected_message),
        T(rfc8446_5_4_zero_length_alert_record_is_unexpected_message),
        T(rfc8446_5_4_zero_length_handshake_record_with_padding_is_unexpected_message),
        T(rfc8446_5_protected_change_cipher_spec_is_unexpected_message),
        T(rfc8446_5_unknown_inner_content_type_is_unexpected_message),
        T(rfc8446_5_inner_heartbeat_is_unexpected_message),
        T(rfc8446_4_6_1_new_session_ticket_from_client_is_unexpected_message),
        T(rfc8446_4_client_hello_after_handshake_is_unexpected_message),
        T(rfc8446_4_4_4_finished_after_handshake_is_unexpected_message),
        T(rfc8446_4_6_3_key_update_request_2_is_illegal_parameter),
        T(rfc8446_4_6_3_key_update_of_two_bytes_is_decode_error),
        T(rfc8446_4_6_3_empty_key_update_is_decode_error),
        T(rfc8446_5_1_application_data_inside_a_fragmented_handshake_message_is_unexpected),
        T(rfc8446_5_1_alert_inside_a_fragmented_handshake_message_ends_it),
        T(rfc8446_5_1_key_update_not_at_a_record_boundary_is_unexpected_message),
        T(rfc8446_5_1_two_key_updates_in_one_record_are_unexpected_message),
        T(rfc8446_5_unprotected_change_cipher_spec_after_handshake_is_unexpected_message),
        T(rfc8446_5_outer_type_handshake_is_unexpected_message),
        T(rfc8446_5_outer_type_alert_is_unexpected_message),
        T(rfc8446_5_outer_type_heartbeat_is_unexpected_message),
        T(rfc8446_5_outer_type_zero_is_unexpected_message),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
