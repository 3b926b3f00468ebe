/* tls13_client.h - the client end that test_server_tlsrec.c and
 * test_server_tlshs.c share: a plain OpenSSL client that reads from its
 * socket but writes into a memory BIO, which the test moves to the socket
 * itself (c_flush), so that it can hold, split or replace the client's
 * bytes; and the pool of connections a test holds.
 *
 * Each test file keeps a client of its own layout (what its callbacks
 * record differs), so this goes after tls13_harness.h and after the file
 * has defined NCONN (the pool size), SPINS (the bound of its loops) and
 *   client: ssl, out, fd, wire, woff, wlen, wcap, alert, alert_level,
 *           zero_return, failed, keys k (the crafting keys),
 *           last[MAX_RECORD], lastlen;
 *   conn:   client c, sfd.
 * The file defines the functions declared below: its keylog and message
 * callbacks, c_flush, conn_close, c_expect, s_write and s_expect. */
#ifndef STARLING_TEST_TLS13_CLIENT_H
#define STARLING_TEST_TLS13_CLIENT_H
#include <fcntl.h>
#include <openssl/err.h>
#include <unistd.h>

static void keylog_cb(const SSL *ssl, const char *line);
static void msg_cb(int write_p, int version, int type, const void *buf, size_t len, SSL *ssl,
                   void *arg);
static int c_flush(conn *k);
static void conn_close(conn *k);
static void c_expect(conn *k, const void *p, size_t n);
static void s_write(conn *k, const void *p, size_t n);
static void s_expect(conn *k, const void *p, size_t n);

/* ---- the connections a test holds (conn_close and cleanup free them) ---- */

static conn pool[NCONN];
static int pool_used[NCONN];

static conn *conn_new(void)
{
    for (int i = 0; i < NCONN; i++)
        if (!pool_used[i]) {
            pool_used[i] = 1;
            memset(&pool[i], 0, sizeof pool[i]);
            pool[i].sfd = pool[i].c.fd = -1;
            return &pool[i];
        }
    fail_msg("conn pool exhausted");
    return NULL;
}

/* k, when it is one of the pool's, is in use (1) or free (0). */
static void pool_mark(conn *k, int used)
{
    for (int i = 0; i < NCONN; i++)
        if (k == &pool[i]) pool_used[i] = used;
}

/* The client SSL, both sockets and the wire buffer; then k is free in the
 * pool. conn_close frees what the server end holds first. */
static void conn_release(conn *k)
{
    SSL_free(k->c.ssl);
    if (k->sfd >= 0) close(k->sfd);
    if (k->c.fd >= 0) close(k->c.fd);
    free(k->c.wire);
    ERR_clear_error();
    memset(k, 0, sizeof *k);
    k->sfd = k->c.fd = -1;
    pool_mark(k, 0);
}

static void pool_close_all(void)
{
    for (int i = 0; i < NCONN; i++)
        if (pool_used[i]) conn_close(&pool[i]);
}

/* ---- the client end ---- */

/* the alerts the client reads (not those it writes) */
static void info_cb(const SSL *ssl, int where, int ret)
{
    client *c = SSL_get_app_data(ssl);
    if (c && (where & SSL_CB_ALERT) && (where & SSL_CB_READ)) { /* not SSL_CB_WRITE_ALERT */
        c->alert = ret & 0xff;
        c->alert_level = ret >> 8;
    }
}

static SSL_CTX *client_ctx(const char *suite, int max_version)
{
    SSL_CTX *x = ctx_track(SSL_CTX_new(TLS_client_method()));
    assert_int_equal(SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(x, max_version ? max_version : TLS1_3_VERSION),
                     1);
    if (suite) assert_int_equal(SSL_CTX_set_ciphersuites(x, suite), 1);
    SSL_CTX_set_verify(x, SSL_VERIFY_NONE, NULL); /* self-signed */
    SSL_CTX_set_session_cache_mode(x, SSL_SESS_CACHE_CLIENT);
    SSL_CTX_set_mode(x, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_keylog_callback(x, keylog_cb);
    SSL_CTX_set_info_callback(x, info_cb);
    SSL_CTX_set_msg_callback(x, msg_cb);
    return x;
}

static void nonblock(int fd)
{
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

/* The client SSL for k->c on its fd: reading from the socket, writing into
 * the memory BIO c_flush empties; SNI example.org. */
static void client_ssl_new(conn *k, SSL_CTX *cctx)
{
    client *c = &k->c;
    c->ssl = SSL_new(cctx);
    assert_non_null(c->ssl);
    BIO *in = BIO_new_socket(c->fd, BIO_NOCLOSE);
    c->out = BIO_new(BIO_s_mem());
    assert_non_null(in);
    assert_non_null(c->out);
    SSL_set_bio(c->ssl, in, c->out);
    SSL_set_app_data(c->ssl, c);
    SSL_set_connect_state(c->ssl);
    SSL_set_tlsext_host_name(c->ssl, "example.org");
}

/* n bytes after what the wire holds (c_flush writes it out) */
static void wire_append(client *c, const void *p, size_t n)
{
    if (n == 0) return;
    if (c->woff + c->wlen + n > c->wcap) {
        if (c->wlen) memmove(c->wire, c->wire + c->woff, c->wlen);
        c->woff = 0;
        if (c->wlen + n > c->wcap) {
            c->wcap = (c->wlen + n) * 2;
            c->wire = realloc(c->wire, c->wcap);
            assert_non_null(c->wire);
        }
    }
    memcpy(c->wire + c->woff + c->wlen, p, n);
    c->wlen += n;
}

/* Client SSL_write of all n bytes (into the memory BIO, so it never
 * blocks), then c_flush. */
static void c_write(conn *k, const void *p, size_t n)
{
    size_t off = 0;
    for (int i = 0; i < SPINS && off < n; i++) {
        int w = SSL_write(k->c.ssl, (const char *)p + off, (int)(n - off));
        assert_true(w > 0);
        off += (size_t)w;
    }
    assert_int_equal(off, n);
    c_flush(k);
}

/* Whatever the client can read now, appended at out[*got] (at most cap).
 * Sets zero_return / failed when the connection ends for the client. */
static void c_read_now(conn *k, unsigned char *out, size_t cap, size_t *got)
{
    for (int i = 0; i < 100000 && *got < cap; i++) {
        size_t want = cap - *got > (1u << 20) ? (1u << 20) : cap - *got;
        int r = SSL_read(k->c.ssl, out + *got, (int)want);
        if (r > 0) {
            *got += (size_t)r;
            continue;
        }
        int e = SSL_get_error(k->c.ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            k->c.zero_return = 1;
        else if (e != SSL_ERROR_WANT_READ)
            k->c.failed = e;
        break;
    }
}

/* Bytes to the server socket as they are (not from the client SSL). */
static void send_raw(conn *k, const void *p, size_t n)
{
    wire_append(&k->c, p, n);
    c_flush(k);
}

/* The first exchange on the record layer, both ways: the client reads the
 * server's first record after the NewSessionTickets it sent (their
 * sequence numbers), the server the client's first after its Finished. */
static void exchange(conn *k)
{
    static const char hello[] = "<stream:features/>", x[] = "<iq type='get' id='1'/>";
    s_write(k, hello, sizeof hello - 1);
    c_expect(k, hello, sizeof hello - 1);
    c_write(k, x, sizeof x - 1);
    s_expect(k, x, sizeof x - 1);
}

/* ---- crafting client records (RFC 8446 §5.2) ---- */

/* Seal TLSInnerPlaintext = content || type || pad zeros into c->last
 * under x at x->seq++; type -1: no type byte (content and zeros only). */
static void seal(client *c, keys *x, int type, const void *content, size_t n, size_t pad)
{
    size_t inner = n + (type >= 0) + pad;
    unsigned char *pt = tmalloc(inner + 1), nc[12];
    int l;
    memset(pt, 0, inner + 1);
    assert_true(5 + inner + 16 <= sizeof c->last);
    if (n) memcpy(pt, content, n);
    if (type >= 0) pt[n] = (unsigned char)type;
    unsigned char *r = c->last;
    size_t len = inner + 16;
    r[0] = 23, r[1] = 3, r[2] = 3, r[3] = (unsigned char)(len >> 8), r[4] = (unsigned char)len;
    nonce(x, x->seq++, nc);
    EVP_CIPHER_CTX *e = EVP_CIPHER_CTX_new();
    assert_non_null(e);
    assert_int_equal(EVP_EncryptInit_ex(e, x->aead, NULL, x->key, nc), 1);
    assert_int_equal(EVP_EncryptUpdate(e, NULL, &l, r, 5), 1);
    assert_int_equal(EVP_EncryptUpdate(e, r + 5, &l, pt, (int)inner), 1);
    assert_int_equal(EVP_EncryptFinal_ex(e, r + 5 + l, &l), 1);
    assert_int_equal(EVP_CIPHER_CTX_ctrl(e, EVP_CTRL_AEAD_GET_TAG, 16, r + 5 + inner), 1);
    EVP_CIPHER_CTX_free(e);
    c->lastlen = 5 + len;
    tfree(pt);
}

/* A record sealed with the crafting keys, to the server. */
static void send_rec(conn *k, int type, const void *content, size_t n, size_t pad)
{
    seal(&k->c, &k->c.k, type, content, n, pad);
    send_raw(k, k->c.last, k->c.lastlen);
}
#endif
