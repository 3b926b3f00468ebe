/* fuzz_tlsrec.c - libFuzzer target for the TLS 1.3 record layer
 * (server/tlsrec.c) after it has taken a connection over from OpenSSL.
 *
 * Each input is one connection: a real handshake over a socketpair between
 * an st_tls server SSL and a plain OpenSSL client (a few milliseconds; the
 * depth is worth it), st_tlsrec_take, and then a sequence of operations
 * chosen by the input. Random bytes alone would never get past the AEAD,
 * so the harness holds the client's write key (from the client's keylog,
 * HKDF-Expand-Label done here, as in tests/unit/test_server_tlsrec.c) and
 * most operations send records it seals itself, with the inner content
 * type, content and padding taken from the input.
 *
 * Input layout: one byte choosing the suite (% 3) and the number of
 * NewSessionTickets (/ 3 % 3), then operations, each an op byte
 * (% 13) and its arguments:
 *
 *   0 RAW    len8, bytes           unprotected bytes to the server socket
 *   1 REC    type, pad8, len8, bytes   a record sealed with the client key
 *   2 FILL   type, byte, len16, pad16  a big sealed record of one byte value
 *   3 ROTATE                       the client key moves on (after a KeyUpdate)
 *   4 READ   n8                    st_tlsrec_read(n + 1) until -2 or 0
 *   5 WRITE  len16                 st_tlsrec_write of that many pattern bytes
 *   6 PUSH                         st_tlsrec_write(NULL, 0)
 *   7 REST                         st_tlsrec_rest
 *   8 CLOSE                        st_tlsrec_close_notify
 *   9 DRAIN                        the client reads what it can
 *  10 HOLD                         toggle: sealed records wait in the harness
 *  11 TRICKLE n8                   send n + 1 held bytes one at a time, reading
 *  12 EOF                          the client shuts down its write side
 *
 * Besides crashes, leaks and hangs, the harness aborts when the record
 * layer breaks a promise of tlsrec.h or RFC 8446: a read returning more
 * than asked or data after the end; plaintext that is not what the client
 * sealed as application data; anything the client's OpenSSL cannot read
 * (other than our alerts); data reaching the client that we were not
 * given; a write after close_notify; a read that returns anything but -2
 * after st_tlsrec_drained said 1 with nothing in the socket
 * (-DFUZZ_TLSREC_NO_DRAINED_CHECK leaves that check out).
 *
 * And, while every byte sent is a sealed record (no RAW), a small model of
 * RFC 8446 (model_record) says what the server must make of them: all the
 * application data up to the first record that ends the connection, then
 * the end (read 0), our fatal alert for a protocol error, silence after
 * the client's fatal alert. It does not check alert codes (one record may
 * break two rules; the unit tests pin the codes down) nor that our
 * KeyUpdate answers a request (the unit tests do). */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include "server/tls.h"
#include "server/tlsrec.h"
#include "tls13_fuzz.h"

#define MAX_CT (16384 + 256)
#define MAX_RECORD (5 + MAX_CT)
#define WIRE_MAX (1u << 20) /* what the harness keeps for the server socket */
#define EXP_MAX (1u << 20)  /* application data the server should return */

enum { M_FAIL = 1, M_CLOSED, M_PEER_ALERT };

static const char *const suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                     "TLS_CHACHA20_POLY1305_SHA256"};
static st_tls_ctx *tls;
static SSL_CTX *cctx[3];

typedef struct conn {
    int sfd, cfd;
    SSL *client;
    BIO *out;
    st_tlsrec *rec;
    unsigned char secret[48];
    size_t secret_len;
    /* client write key */
    const EVP_CIPHER *aead;
    const EVP_MD *md;
    size_t keylen;
    unsigned char key[32], iv[12];
    uint64_t seq;
    /* bytes for the server socket */
    unsigned char *wire;
    size_t wlen;
    int hold;
    int handshaken; /* after it, the client SSL's own output is dropped */
    /* oracles */
    int exact;           /* no unprotected bytes sent: server data == exp */
    unsigned char *exp;  /* application data the model accepted, in order */
    size_t explen, seen; /* of exp; returned by st_tlsrec_read so far */
    /* the model: what RFC 8446 makes of the records sealed so far */
    int modeled;           /* every byte sent is a modeled record */
    int m_over;            /* 0, or M_FAIL / M_CLOSED / M_PEER_ALERT */
    size_t m_over_at;      /* queued_total at the end of that record */
    unsigned char m_hs[5]; /* a KeyUpdate in pieces */
    size_t m_hslen;
    unsigned gen, m_gen;             /* key generations: ours, the server's */
    size_t queued_total, sent_total; /* bytes put on the wire; written to the socket */
    int any_close;                   /* st_tlsrec_close_notify was called */
    int read_over;                   /* st_tlsrec_read returned 0 */
    size_t taken, recvd;             /* bytes st_tlsrec_write took; the client read */
    int client_alert;                /* an alert the client read, -1 none */
    int client_done;                 /* the client's side is over (close_notify, alert) */
    int closed;                      /* st_tlsrec_close_notify was called */
    int eof;                         /* the client shut down its write side */
    unsigned char sealbuf[MAX_RECORD];
} conn;

static void keylog_cb(const SSL *ssl, const char *line)
{
    conn *k = SSL_get_app_data(ssl);
    const char *sp;
    if (!k || strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) != 0) return;
    if (!(sp = strchr(line + 24, ' '))) return;
    k->secret_len = hex_secret(sp + 1, k->secret, sizeof k->secret);
}

static void info_cb(const SSL *ssl, int where, int ret)
{
    conn *k = SSL_get_app_data(ssl);
    if (k && (where & SSL_CB_ALERT) && (where & SSL_CB_READ)) /* not our own alerts */
        k->client_alert = ret & 0xff;
}

static void init(void)
{
    static char dir[] = "/tmp/fuzz-tlsrec-XXXXXX";
    tls = fuzz_tls_ctx(dir);
    if (st_tlsrec_prepare_ctx(st_tls_ctx_get(tls)) != 0) abort();
    for (int i = 0; i < 3; i++)
        cctx[i] = fuzz_client_ctx(suites[i], TLS1_3_VERSION, keylog_cb, info_cb);
}

/* ---- keys (RFC 8446 §7.2, §7.3; expand_label in tls13_fuzz.h) and sealing (§5.2) ---- */

static void derive(conn *k)
{
    size_t h = (size_t)EVP_MD_get_size(k->md);
    expand_label(k->md, k->secret, h, "key", k->key, k->keylen);
    expand_label(k->md, k->secret, h, "iv", k->iv, 12);
    k->seq = 0;
}

static void rotate(conn *k)
{
    unsigned char next[48];
    size_t h = (size_t)EVP_MD_get_size(k->md);
    expand_label(k->md, k->secret, h, "traffic upd", next, h);
    memcpy(k->secret, next, h);
    derive(k);
    k->gen++;
}

static void wire_add(conn *k, const void *p, size_t n)
{
    if (k->wlen + n > WIRE_MAX) { /* the server is not reading: drop */
        k->modeled = 0;
        return;
    }
    memcpy(k->wire + k->wlen, p, n);
    k->wlen += n;
    k->queued_total += n;
}

/* Write up to max bytes of the wire to the server socket. */
static void wire_send(conn *k, size_t max)
{
    size_t n = k->wlen < max ? k->wlen : max;
    ssize_t w = n ? write(k->cfd, k->wire, n) : 0;
    if (w > 0) {
        memmove(k->wire, k->wire + w, k->wlen - (size_t)w);
        k->wlen -= (size_t)w;
        k->sent_total += (size_t)w;
    }
}

static void flush(conn *k)
{
    unsigned char tmp[4096];
    int n;
    /* after the handshake the client SSL writes nothing we want: the
     * harness seals the client's records, and an alert from the client
     * SSL would collide with the harness's sequence numbers */
    while ((n = BIO_read(k->out, tmp, sizeof tmp)) > 0)
        if (!k->handshaken) wire_add(k, tmp, (size_t)n);
    if (!k->hold) wire_send(k, k->wlen);
}

static int m_end(conn *k, int how, size_t rec_end)
{
    k->m_over = how;
    k->m_over_at = rec_end;
    return 0;
}

/* What a server following RFC 8446 does with the TLSInnerPlaintext p of
 * inner bytes, sealed under our key generation; rec_end is where the
 * record ends in the wire stream. Alert codes are left to the unit tests
 * (where one record breaks two rules the RFC does not say which wins). */
static int model_record(conn *k, const unsigned char *p, size_t inner, size_t rec_end)
{
    if (k->m_over || !k->modeled || k->eof) return 0;
    if (k->gen != k->m_gen) return m_end(k, M_FAIL, rec_end); /* §5.2: wrong key */
    if (inner > 16384 + 1) return m_end(k, M_FAIL, rec_end);  /* §5.4 */
    size_t n = inner;
    while (n && p[n - 1] == 0)
        n--;
    if (!n) return m_end(k, M_FAIL, rec_end); /* §5.4: no content type */
    int type = p[--n];
    if (k->m_hslen && type != 22) return m_end(k, M_FAIL, rec_end); /* §5.1 */
    switch (type) {
    case 23:
        if (k->explen + n > EXP_MAX) {
            k->modeled = 0;
            return 0;
        }
        memcpy(k->exp + k->explen, p, n);
        k->explen += n;
        return 0;
    case 21: /* §5.4, §6 */
        if (n != 2) return m_end(k, M_FAIL, rec_end);
        if (p[1] == 90) return 0; /* user_canceled: a close_notify should follow */
        return m_end(k, p[1] == 0 ? M_CLOSED : M_PEER_ALERT, rec_end);
    case 22: /* §4.6: after the handshake only KeyUpdate from a client */
        if (n == 0) return m_end(k, M_FAIL, rec_end);
        for (size_t i = 0; i < n; i++) {
            k->m_hs[k->m_hslen++] = p[i];
            if (k->m_hslen == 1 && k->m_hs[0] != 24) return m_end(k, M_FAIL, rec_end);
            if (k->m_hslen == 4 && (k->m_hs[1] || k->m_hs[2] || k->m_hs[3] != 1))
                return m_end(k, M_FAIL, rec_end);
            if (k->m_hslen < 5) continue;
            k->m_hslen = 0;
            /* §4.6.3 request_update, §5.1 a key change ends its record */
            if (k->m_hs[4] > 1 || i + 1 < n) return m_end(k, M_FAIL, rec_end);
            k->m_gen++;
        }
        return 0;
    default: /* §5: change_cipher_spec (protected), heartbeat, unknown */
        return m_end(k, M_FAIL, rec_end);
    }
}

/* Seal content || type || pad zeros and queue it; record what the server
 * should make of it (RFC 8446 §5.4: the type is the last non-zero byte). */
static void send_record(conn *k, int type, const unsigned char *content, size_t n, size_t pad)
{
    size_t inner = n + 1 + pad;
    if (inner + 16 > MAX_CT) return;
    unsigned char *r = k->sealbuf, nc[12];
    memcpy(r + 5, content, n);
    r[5 + n] = (unsigned char)type;
    memset(r + 5 + n + 1, 0, pad);
    size_t len = inner + 16;
    if (k->wlen + 5 + len > WIRE_MAX) k->modeled = 0; /* it will be dropped */
    model_record(k, r + 5, inner, k->queued_total + 5 + len);
    r[0] = 23, r[1] = 3, r[2] = 3, r[3] = (unsigned char)(len >> 8), r[4] = (unsigned char)len;
    memcpy(nc, k->iv, 12);
    for (int i = 0; i < 8; i++)
        nc[11 - i] ^= (unsigned char)(k->seq >> (8 * i));
    k->seq++;
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int l;
    if (!x || EVP_EncryptInit_ex(x, k->aead, NULL, k->key, nc) != 1 ||
        EVP_EncryptUpdate(x, NULL, &l, r, 5) != 1 ||
        EVP_EncryptUpdate(x, r + 5, &l, r + 5, (int)inner) != 1 ||
        EVP_EncryptFinal_ex(x, r + 5 + l, &l) != 1 ||
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, r + 5 + inner) != 1)
        abort();
    EVP_CIPHER_CTX_free(x);
    wire_add(k, r, 5 + len);
    flush(k);
}

/* ---- the two ends ---- */

static unsigned char pattern(size_t pos)
{
    return (unsigned char)(pos * 131 + 7);
}

static void check_read(conn *k, ssize_t r, size_t n, const unsigned char *buf)
{
    if (r == -2) {
        if (k->read_over) abort(); /* 0 is for good */
        return;
    }
    if (r == 0) {
        if (st_tlsrec_pending(k->rec) || !st_tlsrec_error(k->rec)) abort();
        k->read_over = 1;
        return;
    }
    if (r < 0 || (size_t)r > n || k->read_over) abort();
    if (k->exact) {
        if (k->seen + (size_t)r > k->explen) abort(); /* data nobody sealed */
        if (memcmp(buf, k->exp + k->seen, (size_t)r) != 0) abort();
    }
    k->seen += (size_t)r;
}

static void server_read(conn *k, size_t n)
{
    unsigned char buf[300];
    for (int i = 0; i < 8; i++) {
        ssize_t r = st_tlsrec_read(k->rec, k->sfd, buf, n);
        check_read(k, r, n, buf);
        if (r <= 0) break;
#ifndef FUZZ_TLSREC_NO_DRAINED_CHECK
        /* tlsrec.h: drained means that until fd is readable again, a read
         * returns -2. The harness sees "readable" as bytes in the socket
         * (or the client's EOF): with none, the next read must be -2. */
        int queued = 0;
        if (st_tlsrec_drained(k->rec) && !k->eof && ioctl(k->sfd, FIONREAD, &queued) == 0 &&
            queued == 0) {
            ssize_t again = st_tlsrec_read(k->rec, k->sfd, buf, n);
            if (again != -2) abort();
            check_read(k, again, n, buf);
            break;
        }
#endif
    }
}

static void client_read(conn *k)
{
    unsigned char buf[16384];
    for (int i = 0; i < 64 && !k->client_done; i++) {
        int r = SSL_read(k->client, buf, sizeof buf);
        if (r > 0) {
            for (int j = 0; j < r; j++)
                if (buf[j] != pattern(k->recvd + (size_t)j)) abort(); /* corrupted */
            k->recvd += (size_t)r;
            if (k->recvd > k->taken) abort(); /* more than we were given */
            continue;
        }
        int e = SSL_get_error(k->client, r);
        if (e == SSL_ERROR_WANT_READ) break;
        /* the end: our close_notify, or our alert; anything else means
         * we sent the client something it could not read */
        if (e == SSL_ERROR_ZERO_RETURN && !k->closed) abort();
        if (e != SSL_ERROR_ZERO_RETURN && k->client_alert < 0) {
            ERR_print_errors_fp(stderr);
            abort();
        }
        k->client_done = 1;
    }
    ERR_clear_error();
}

static void server_write(conn *k, size_t n)
{
    static unsigned char buf[65536];
    if (n == 0) return; /* (p, 0) is the push form, like (NULL, 0): not data */
    for (size_t i = 0; i < n; i++)
        buf[i] = pattern(k->taken + i);
    ssize_t w = st_tlsrec_write(k->rec, k->sfd, buf, n);
    if (w < -1 || w > (ssize_t)n) abort();
    if (w > 0 && k->closed) abort(); /* nothing is written after close_notify */
    if (w > 0) k->taken += (size_t)w;
    if (st_tlsrec_unsent(k->rec) > 2 * MAX_RECORD) abort();
}

/* Read until -2 or 0, in big pieces. */
static void server_read_all(conn *k)
{
    static unsigned char buf[65536];
    for (int i = 0; i < 10000; i++) {
        ssize_t r = st_tlsrec_read(k->rec, k->sfd, buf, sizeof buf);
        check_read(k, r, sizeof buf, buf);
        if (r <= 0) return;
    }
    abort(); /* a read that never stops */
}

/* After the settling: the server did what the model says. */
static void check_model(conn *k)
{
    int queued = 0;
    if (!k->modeled || !k->exact || ioctl(k->sfd, FIONREAD, &queued) != 0) return;
    if (!k->m_over) {
        if (k->wlen || queued) return;        /* not all of it reached the server */
        if (k->seen != k->explen) abort();    /* valid data not delivered */
        if (k->read_over && !k->eof) abort(); /* ended on valid input */
        if (k->eof && !k->read_over) abort(); /* EOF not noticed */
        return;
    }
    if (k->sent_total < k->m_over_at) return; /* the record that ends it is not there */
    if (!k->read_over) abort();               /* went on past the end */
    if (k->seen != k->explen) abort();        /* not exactly the data before it */
    if (k->m_over == M_PEER_ALERT && !k->any_close && k->client_alert >= 0)
        abort(); /* §6.2: no answer to a fatal alert */
    /* §6.2: our fatal alert reached the client (unless we had closed first) */
    if (k->m_over == M_FAIL && !k->any_close && k->client_alert < 0) abort();
}

static int open_conn(conn *k, int suite, int tickets)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) abort();
    k->sfd = sv[0];
    k->cfd = sv[1];
    fcntl(k->sfd, F_SETFL, O_NONBLOCK);
    fcntl(k->cfd, F_SETFL, O_NONBLOCK);
    int small = 8192;
    setsockopt(k->sfd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    SSL *server = st_tls_new_ssl(tls, k->sfd, 1);
    if (!server) abort();
    SSL_set_num_tickets(server, (size_t)tickets);
    k->client = SSL_new(cctx[suite]);
    BIO *in = BIO_new_socket(k->cfd, BIO_NOCLOSE);
    k->out = BIO_new(BIO_s_mem());
    if (!k->client || !in || !k->out) abort();
    SSL_set_bio(k->client, in, k->out);
    SSL_set_app_data(k->client, k);
    SSL_set_connect_state(k->client);
    int cdone = 0, sdone = 0;
    for (int i = 0; i < 50 && !(cdone && sdone); i++) {
        if (!cdone) cdone = SSL_connect(k->client) == 1;
        flush(k);
        if (!sdone) sdone = SSL_accept(server) == 1;
    }
    if (!cdone || !sdone) abort();
    k->handshaken = 1;
    k->rec = st_tlsrec_take(server);
    SSL_free(server);
    if (!k->rec) abort(); /* a TLS 1.3 connection with a §9.1 suite is taken */
    if (strcmp(st_tlsrec_cipher(k->rec), suites[suite]) != 0) abort();
    static const EVP_CIPHER *(*const aeads[3])(void) = {EVP_aes_128_gcm, EVP_aes_256_gcm,
                                                        EVP_chacha20_poly1305};
    k->aead = aeads[suite]();
    k->md = suite == 1 ? EVP_sha384() : EVP_sha256();
    k->keylen = suite == 0 ? 16 : 32;
    if (k->secret_len != (size_t)EVP_MD_get_size(k->md)) abort();
    derive(k);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        init();
        ready = 1;
    }
    if (size < 1) return 0;
    conn *k = calloc(1, sizeof *k);
    if (!k) abort();
    k->wire = malloc(WIRE_MAX);
    k->exp = malloc(EXP_MAX);
    if (!k->wire || !k->exp) abort();
    k->exact = 1;
    k->modeled = 1;
    k->client_alert = -1;
    open_conn(k, data[0] % 3, data[0] / 3 % 3);

    size_t i = 1;
#define NEED(n)                                                                                    \
    if (i + (n) > size) goto done
    while (i < size) {
        int op = data[i++] % 13;
        switch (op) {
        case 0: { /* RAW */
            NEED(1);
            size_t n = data[i++];
            if (n > size - i) n = size - i;
            wire_add(k, data + i, n);
            flush(k);
            i += n;
            k->exact = 0;
            if (n) k->modeled = 0;
            break;
        }
        case 1: { /* REC */
            NEED(3);
            int type = data[i];
            size_t pad = data[i + 1], n = data[i + 2];
            i += 3;
            if (n > size - i) n = size - i;
            send_record(k, type, data + i, n, pad);
            i += n;
            break;
        }
        case 2: { /* FILL */
            NEED(6);
            static unsigned char big[MAX_CT];
            int type = data[i];
            size_t n = ((size_t)data[i + 2] << 8 | data[i + 3]) % (MAX_CT - 16);
            size_t pad = ((size_t)data[i + 4] << 8 | data[i + 5]) % (MAX_CT - 16);
            memset(big, data[i + 1], n);
            i += 6;
            send_record(k, type, big, n, pad);
            break;
        }
        case 3:
            rotate(k);
            break;
        case 4:
            NEED(1);
            server_read(k, (size_t)data[i++] + 1);
            break;
        case 5:
            NEED(2);
            server_write(k, (size_t)data[i] << 8 | data[i + 1]);
            i += 2;
            break;
        case 6: {
            ssize_t w = st_tlsrec_write(k->rec, k->sfd, NULL, 0);
            if (w < -1 || w > 1) abort();
            if (w == 1 && st_tlsrec_unsent(k->rec)) abort();
            break;
        }
        case 7:
            st_tlsrec_rest(k->rec);
            break;
        case 8:
            st_tlsrec_close_notify(k->rec, k->sfd);
            k->closed = 1;
            k->any_close = 1;
            if (st_tlsrec_write(k->rec, k->sfd, "x", 1) != -1) abort();
            break;
        case 9:
            client_read(k);
            break;
        case 10:
            k->hold = !k->hold;
            flush(k);
            break;
        case 11: { /* TRICKLE */
            NEED(1);
            size_t n = (size_t)data[i++] + 1;
            for (size_t j = 0; j < n && k->wlen; j++) {
                wire_send(k, 1);
                server_read(k, 300);
            }
            break;
        }
        case 12:
            shutdown(k->cfd, SHUT_WR);
            k->eof = 1;
            if (k->wlen) k->modeled = 0; /* held bytes never arrive */
            break;
        }
    }
done:
    /* let everything settle: both ends read, what is kept goes out */
    k->hold = 0;
    for (int round = 0; round < 64; round++) {
        flush(k);
        server_read_all(k);
        st_tlsrec_write(k->rec, k->sfd, NULL, 0);
        client_read(k);
        if (!k->wlen && !st_tlsrec_unsent(k->rec)) break;
    }
    /* -2 says "come back when fd is readable": an EOF behind records
     * without data takes one more call */
    server_read_all(k);
    client_read(k);
    /* what the server took and the socket accepted reached the client,
     * unless the client stopped reading at an alert */
    if (!k->client_done && !st_tlsrec_unsent(k->rec) && k->recvd != k->taken) abort();
    check_model(k);

    st_tlsrec_free(k->rec);
    SSL_free(k->client);
    close(k->sfd);
    close(k->cfd);
    free(k->wire);
    free(k->exp);
    free(k);
    ERR_clear_error();
    return 0;
}
