/* fuzz_tlshs.c - libFuzzer target for our server side of the TLS 1.3
 * handshake (server/tlshs.c): a real st_tlshs on one end of a socketpair
 * per input, fed what the input says, checked against tlshs.h.
 *
 * Input: a flags byte, then one of two layouts.
 *
 *   flags bit 0   mode: 0 RAW, 1 REAL
 *         bit 1   direct_tls
 *         bits 2-3 suite of the REAL client (% 3)
 *         bit 4   REAL client's key share P-256 (else X25519)
 *         bit 5   REAL client without middlebox compatibility
 *         bit 6   REAL client resumes a ticket of this process's context
 *         bit 7   REAL client offers ALPN "xmpp-client"
 *
 *   RAW:  chunks, each a 2-byte big-endian length and that many bytes; the
 *         first is the ClientHello (seeds start from real ones), each is
 *         written to the socket and the server stepped after it.
 *   REAL: a real OpenSSL client makes the ClientHello; one byte n (% 8),
 *         then n mutations (2-byte offset, xor byte) applied to it; it is
 *         written, the server stepped, the server's bytes go to the
 *         client, which (if it can) answers with its second flight; that
 *         is held, and the rest of the input is operations, an op byte
 *         (% 9) and its arguments:
 *
 *   0 REAL                  the client's own second flight
 *   1 FIN                   its Finished, sealed again by the harness
 *   2 CCS                   a change_cipher_spec (14 03 03 00 01 01)
 *   3 REC type pad8 len8 ..  a record sealed with the client's handshake key
 *   4 RAW len8 ..           bytes as they are
 *   5 FINMUT idx8 xor8      the Finished with one byte changed, sealed
 *   6 SPLITFIN cut8         the Finished in two handshake records
 *   7 TRICKLE               the client's second flight one byte a step
 *   8 EOF                   the client shuts down its write side
 *
 * After DONE the bytes of later operations go to the st_tlsrec.
 *
 * Promises checked (abort on a broken one): st_tlshs_step returns one of
 * the five values; OPENSSL never after our ServerHello, and then the
 * socket holds exactly every byte written (recv MSG_PEEK against a log)
 * and nothing was sent; READ before anything was sent leaves every byte
 * in the socket (the ClientHello is only peeked); FAILED and OPENSSL give
 * a reason, DONE none and a record layer once; and, for an unmutated REAL
 * ClientHello, a small model of RFC 8446 §4.4.4/§5: DONE only after the
 * client's Finished with nothing but change_cipher_specs before it, and
 * DONE (not FAILED) when that is exactly what was sent; after DONE, data
 * from the record layer reaches the client's OpenSSL. Alert codes and the
 * key an alert is sealed under are left to tests/unit/test_server_tlshs.c. */
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
#include "server/tlshs.h"
#include "server/tlsrec.h"
#include "tls13_fuzz.h"

#define LOG_MAX (1u << 20)
#define MAX_CT (16384 + 256)

static const char *const suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                     "TLS_CHACHA20_POLY1305_SHA256"};
static st_tls_ctx *tls;
static st_tlshs_ctx *hsx;
static SSL_CTX *cctx[3];
static SSL_SESSION *sess[3];

typedef struct fz {
    int sfd, cfd;
    st_tlshs *h;
    int last;
    st_tlsrec *rec;
    unsigned char *log; /* every byte written to the server socket */
    size_t written;
    size_t from_server; /* bytes the server sent */
    int eof;
    /* the REAL client */
    SSL *c;
    BIO *in, *out;
    unsigned char chs[48], cap[48], sap[48];
    size_t chslen, caplen, saplen;
    const EVP_CIPHER *aead;
    const EVP_MD *md;
    size_t keylen;
    unsigned char key[32], iv[12];
    uint64_t seq;
    int keyed;
    unsigned char fin[4 + 48];
    size_t finlen;
    unsigned char flight2[1024];
    size_t flight2len;
    /* the model: the bytes written before DONE, the Finished records the
     * harness sealed (exact bytes, and which part of the Finished) */
    int modeled;
    unsigned char pre[16384];
    size_t prelen;
    struct {
        unsigned char r[5 + 4 + 48 + 1 + 16];
        size_t len, off, n;
    } good[8];
    int ngood;
    unsigned char sealbuf[5 + MAX_CT];
} fz;

static void keylog_cb(const SSL *ssl, const char *line)
{
    fz *f = SSL_get_app_data(ssl);
    unsigned char *dst = NULL;
    size_t *len = NULL, l;
    const char *sp;
    if (!f) return;
    if (strncmp(line, "CLIENT_HANDSHAKE_TRAFFIC_SECRET ", l = 32) == 0)
        dst = f->chs, len = &f->chslen;
    else if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", l = 24) == 0)
        dst = f->cap, len = &f->caplen;
    else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", l = 24) == 0)
        dst = f->sap, len = &f->saplen;
    if (!dst || !(sp = strchr(line + l, ' '))) return;
    *len = hex_secret(sp + 1, dst, 48);
}

/* ---- keys (RFC 8446 §7.3; expand_label in tls13_fuzz.h) and sealing (§5.2) ---- */

static void keys_for(fz *f, const unsigned char *secret, size_t slen, unsigned char *key,
                     unsigned char *iv)
{
    if (slen != (size_t)EVP_MD_get_size(f->md)) abort();
    expand_label(f->md, secret, slen, "key", key, f->keylen);
    expand_label(f->md, secret, slen, "iv", iv, 12);
}

static int crypt_record(fz *f, const unsigned char *key, const unsigned char *iv, uint64_t seq,
                        int enc, unsigned char *r, size_t inner)
{
    unsigned char nc[12];
    int l, ok;
    memcpy(nc, iv, 12);
    for (int i = 0; i < 8; i++)
        nc[11 - i] ^= (unsigned char)(seq >> (8 * i));
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    if (!x) abort();
    if (enc)
        ok = EVP_EncryptInit_ex(x, f->aead, NULL, key, nc) == 1 &&
             EVP_EncryptUpdate(x, NULL, &l, r, 5) == 1 &&
             EVP_EncryptUpdate(x, r + 5, &l, r + 5, (int)inner) == 1 &&
             EVP_EncryptFinal_ex(x, r + 5 + l, &l) == 1 &&
             EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, r + 5 + inner) == 1;
    else
        ok = EVP_DecryptInit_ex(x, f->aead, NULL, key, nc) == 1 &&
             EVP_DecryptUpdate(x, NULL, &l, r, 5) == 1 &&
             EVP_DecryptUpdate(x, r + 5, &l, r + 5, (int)inner) == 1 &&
             EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, 16, r + 5 + inner) == 1 &&
             EVP_DecryptFinal_ex(x, r + 5 + l, &l) == 1;
    EVP_CIPHER_CTX_free(x);
    if (enc && !ok) abort();
    return ok;
}

/* ---- the two ends ---- */

static int queued(int fd)
{
    int q = 0;
    if (ioctl(fd, FIONREAD, &q) != 0) abort();
    return q;
}

static void put(fz *f, const void *p, size_t n)
{
    if (f->eof || n == 0) return;
    ssize_t w = write(f->cfd, p, n);
    if (w < 0) w = 0; /* the server's socket is full: the rest is lost */
    if (f->written + (size_t)w <= LOG_MAX) memcpy(f->log + f->written, p, (size_t)w);
    f->written += (size_t)w;
    if ((size_t)w < n) f->modeled = 0;
    if (f->modeled && f->last != ST_TLSHS_DONE) {
        if (f->prelen + (size_t)w > sizeof f->pre) {
            f->modeled = 0;
        } else {
            memcpy(f->pre + f->prelen, p, (size_t)w);
            f->prelen += (size_t)w;
        }
    }
}

/* A Finished record (or a part of it: content = fin[off, off + n)) that a
 * genuine client could send, sealed now: remember its exact bytes. */
static void good_record(fz *f, const unsigned char *r, size_t len, size_t off, size_t n)
{
    if (f->ngood >= 8 || len > sizeof f->good[0].r) return;
    memcpy(f->good[f->ngood].r, r, len);
    f->good[f->ngood].len = len, f->good[f->ngood].off = off, f->good[f->ngood].n = n;
    f->ngood++;
}

/* RFC 8446 §5, §5.1, §4.4.4 on the bytes written after our flight: 1 when
 * they are change_cipher_specs (at most *ccs of them) and then the whole
 * Finished in records a genuine client sealed, no other record type inside
 * it; 0 when they are that so far but the Finished is not complete; -1
 * when anything else came before the end of the Finished. */
static int model(fz *f, int *ccs)
{
    size_t i = 0, acc = 0;
    *ccs = 0;
    while (i + 5 <= f->prelen && acc < f->finlen) {
        size_t len = 5 + ((size_t)f->pre[i + 3] << 8 | f->pre[i + 4]);
        if (i + len > f->prelen) return 0; /* not all there yet */
        const unsigned char *r = f->pre + i;
        if (len == 6 && memcmp(r, "\x14\x03\x03\x00\x01\x01", 6) == 0 && acc == 0) {
            ++*ccs;
        } else {
            int k;
            for (k = 0; k < f->ngood; k++)
                if (f->good[k].len == len && f->good[k].off == acc &&
                    memcmp(f->good[k].r, r, len) == 0)
                    break;
            if (k == f->ngood) return -1;
            acc += f->good[k].n;
        }
        i += len;
    }
    if (acc == f->finlen && f->finlen) return 1;
    /* a partial record at the end: only if what is there could start one */
    return 0;
}

/* What the server sent: counted, and given to the REAL client. */
static void drain_server(fz *f)
{
    unsigned char buf[16384];
    ssize_t r;
    while ((r = recv(f->cfd, buf, sizeof buf, 0)) > 0) {
        f->from_server += (size_t)r;
        if (f->c) BIO_write(f->in, buf, (int)r);
    }
}

/* tlshs.h: on OPENSSL nothing was read or sent. */
static void check_untouched(fz *f)
{
    if (f->from_server) abort();
    if ((size_t)queued(f->sfd) != f->written) abort();
    if (f->written <= LOG_MAX) {
        unsigned char *buf = malloc(f->written + 1);
        if (!buf) abort();
        ssize_t n = recv(f->sfd, buf, f->written + 1, MSG_PEEK);
        if (n < 0 || (size_t)n != f->written || memcmp(buf, f->log, f->written) != 0) abort();
        free(buf);
    }
}

static void read_rec(fz *f)
{
    unsigned char buf[4096];
    for (int i = 0; i < 64; i++) {
        ssize_t r = st_tlsrec_read(f->rec, f->sfd, buf, sizeof buf);
        if (r == 0 || r == -2) return;
        if (r < 0 || (size_t)r > sizeof buf) abort();
    }
}

static int over(int r)
{
    return r == ST_TLSHS_DONE || r == ST_TLSHS_OPENSSL || r == ST_TLSHS_FAILED;
}

static void step(fz *f)
{
    if (over(f->last)) {
        if (f->rec) read_rec(f);
        return;
    }
    for (int i = 0; i < 16; i++) {
        int r = st_tlshs_step(f->h, f->sfd);
        if (r < ST_TLSHS_READ || r > ST_TLSHS_FAILED) abort();
        int sent_before = f->from_server > 0;
        f->last = r;
        drain_server(f);
        if (r == ST_TLSHS_OPENSSL) {
            if (sent_before) abort(); /* after our ServerHello it is ours */
            if (!st_tlshs_error(f->h) || st_tlshs_cipher(f->h) || st_tlshs_finish(f->h)) abort();
            check_untouched(f);
            return;
        }
        if (r == ST_TLSHS_FAILED) {
            if (!st_tlshs_error(f->h) || st_tlshs_finish(f->h)) abort();
            return;
        }
        if (r == ST_TLSHS_DONE) {
            unsigned char x[32], e[64];
            size_t el = 0;
            if (st_tlshs_error(f->h) || !st_tlshs_cipher(f->h)) abort();
            if (st_tlshs_exporter(f->h, x) != 0) abort();
            if (st_tlshs_server_end_point(f->h, e, &el) != 0 || el < 32 || el > 64) abort();
            f->rec = st_tlshs_finish(f->h);
            if (!f->rec || st_tlshs_finish(f->h)) abort();
            read_rec(f);
            return;
        }
        if (r == ST_TLSHS_READ) {
            /* not taken yet: the ClientHello is only peeked */
            if (!f->from_server && (size_t)queued(f->sfd) != f->written) abort();
            return;
        }
        /* WRITE: the client socket was drained, so it is writable again */
    }
}

static void send_sealed2(fz *f, int type, const unsigned char *content, size_t n, size_t pad,
                         long fin_off)
{
    size_t inner = n + 1 + pad;
    if (inner + 16 > MAX_CT) return;
    unsigned char *r = f->sealbuf;
    memcpy(r + 5, content, n);
    r[5 + n] = (unsigned char)type;
    memset(r + 5 + n + 1, 0, pad);
    size_t len = inner + 16;
    r[0] = 23, r[1] = 3, r[2] = 3, r[3] = (unsigned char)(len >> 8), r[4] = (unsigned char)len;
    crypt_record(f, f->key, f->iv, f->seq++, 1, r, inner);
    if (fin_off >= 0 && type == 22 && pad == 0) good_record(f, r, 5 + len, (size_t)fin_off, n);
    put(f, r, 5 + len);
}

static void send_sealed(fz *f, int type, const unsigned char *content, size_t n, size_t pad)
{
    send_sealed2(f, type, content, n, pad, -1);
}

/* ---- the REAL client ---- */

static void client_new(fz *f, uint8_t flags)
{
    int suite = (flags >> 2 & 3) % 3;
    f->c = SSL_new(cctx[suite]);
    f->in = BIO_new(BIO_s_mem());
    f->out = BIO_new(BIO_s_mem());
    if (!f->c || !f->in || !f->out) abort();
    BIO_set_mem_eof_return(f->in, -1);
    SSL_set_bio(f->c, f->in, f->out);
    SSL_set_app_data(f->c, f);
    SSL_set_connect_state(f->c);
    SSL_set_tlsext_host_name(f->c, "example.org");
    SSL_set1_groups_list(f->c, flags & 0x10 ? "P-256:X25519" : "X25519:P-256");
    if (flags & 0x20) SSL_clear_options(f->c, SSL_OP_ENABLE_MIDDLEBOX_COMPAT);
    if (flags & 0x40 && sess[suite]) SSL_set_session(f->c, sess[suite]);
    if (flags & 0x80) SSL_set_alpn_protos(f->c, (const unsigned char *)"\x0bxmpp-client", 12);
}

static size_t client_out(fz *f, unsigned char *buf, size_t cap)
{
    size_t n = 0;
    int r;
    while (n < cap && (r = BIO_read(f->out, buf + n, (int)(cap - n))) > 0)
        n += (size_t)r;
    return n;
}

/* After our flight: the client answers; keep its second flight, derive the
 * crafting keys and decrypt its Finished. */
static void client_answer(fz *f)
{
    if (!f->c || !f->from_server) return;
    for (int i = 0; i < 4; i++)
        if (SSL_connect(f->c) == 1) break;
    ERR_clear_error();
    if (!SSL_is_init_finished(f->c)) return;
    f->flight2len = client_out(f, f->flight2, sizeof f->flight2);
    const char *name = SSL_CIPHER_standard_name(SSL_get_current_cipher(f->c));
    if (strcmp(name, suites[0]) == 0)
        f->aead = EVP_aes_128_gcm(), f->md = EVP_sha256(), f->keylen = 16;
    else if (strcmp(name, suites[1]) == 0)
        f->aead = EVP_aes_256_gcm(), f->md = EVP_sha384(), f->keylen = 32;
    else
        f->aead = EVP_chacha20_poly1305(), f->md = EVP_sha256(), f->keylen = 32;
    keys_for(f, f->chs, f->chslen, f->key, f->iv);
    /* the last record is the Finished */
    size_t off = 0, last = 0;
    while (off + 5 <= f->flight2len) {
        last = off;
        off += 5 + ((size_t)f->flight2[off + 3] << 8 | f->flight2[off + 4]);
    }
    if (off != f->flight2len) abort();
    unsigned char r[5 + 4 + 48 + 1 + 16];
    size_t rl = f->flight2len - last;
    if (rl > sizeof r || rl < 5 + 17) abort();
    memcpy(r, f->flight2 + last, rl);
    if (!crypt_record(f, f->key, f->iv, 0, 0, r, rl - 5 - 16)) abort();
    f->finlen = rl - 5 - 16 - 1;
    if (r[5 + f->finlen] != 22 || r[5] != 20) abort();
    memcpy(f->fin, r + 5, f->finlen);
    f->keyed = 1;
    good_record(f, f->flight2 + last, rl, 0, f->finlen);
}

/* After DONE on the genuine path: what the record layer sends, the
 * client reads (its ticket first). */
static void check_client_reads(fz *f)
{
    unsigned char buf[64];
    int got = 0;
    if (!f->rec || !f->c || f->eof) return;
    ssize_t w = st_tlsrec_write(f->rec, f->sfd, "ping", 4);
    if (w != 4) return; /* the record layer may have ended on later bytes */
    drain_server(f);
    for (int i = 0; i < 8 && got < 4; i++) {
        int r = SSL_read(f->c, buf + got, (int)sizeof buf - got);
        if (r > 0)
            got += r;
        else if (SSL_get_error(f->c, r) != SSL_ERROR_WANT_READ)
            break;
    }
    ERR_clear_error();
    if (got != 4 || memcmp(buf, "ping", 4) != 0) abort();
}

static void init(void)
{
    static char dir[] = "/tmp/fuzz-tlshs-XXXXXX";
    char err[512];
    tls = fuzz_tls_ctx(dir);
    hsx = st_tlshs_ctx_new(st_tls_ctx_get(tls), err, sizeof err);
    if (!hsx) abort();
    for (int i = 0; i < 3; i++)
        cctx[i] = fuzz_client_ctx(suites[i], TLS1_2_VERSION, keylog_cb, NULL);
}

/* A connection over a new socketpair with its st_tlshs on hsx. */
static fz *fz_new(int direct)
{
    fz *f = calloc(1, sizeof *f);
    int sv[2];
    if (!f || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) abort();
    f->sfd = sv[0], f->cfd = sv[1];
    fcntl(f->sfd, F_SETFL, O_NONBLOCK);
    fcntl(f->cfd, F_SETFL, O_NONBLOCK);
    f->log = malloc(LOG_MAX);
    f->h = st_tlshs_new(hsx, direct);
    if (!f->log || !f->h) abort();
    return f;
}

/* One genuine handshake per suite, for the tickets bit 6 resumes. */
static void get_tickets(void)
{
    for (int s = 0; s < 3; s++) {
        fz *f = fz_new(0);
        client_new(f, (uint8_t)(1 | s << 2));
        unsigned char buf[4096];
        SSL_connect(f->c);
        size_t n = client_out(f, buf, sizeof buf);
        put(f, buf, n);
        step(f);
        client_answer(f);
        put(f, f->flight2, f->flight2len);
        step(f);
        if (f->last != ST_TLSHS_DONE) abort();
        check_client_reads(f); /* reads the ticket */
        sess[s] = SSL_get1_session(f->c);
        if (!sess[s] || !SSL_SESSION_is_resumable(sess[s])) abort();
        SSL_set_shutdown(f->c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(f->c);
        st_tlsrec_free(f->rec);
        st_tlshs_free(f->h);
        close(f->sfd);
        close(f->cfd);
        free(f->log);
        free(f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        init();
        get_tickets();
        ready = 1;
    }
    if (size < 1) return 0;
    uint8_t flags = data[0];
    fz *f = fz_new(flags >> 1 & 1);
    if (st_tlshs_cipher(f->h) || st_tlshs_error(f->h) || st_tlshs_finish(f->h)) abort();
    size_t i = 1;

    if (!(flags & 1)) { /* RAW */
        while (i + 2 <= size && !(over(f->last) && !f->rec)) {
            size_t n = (size_t)data[i] << 8 | data[i + 1];
            i += 2;
            if (n > size - i) n = size - i;
            put(f, data + i, n);
            i += n;
            step(f);
        }
        step(f);
        goto done;
    }

    /* REAL */
    client_new(f, flags);
    unsigned char *ch = malloc(16384);
    if (!ch) abort();
    SSL_connect(f->c);
    ERR_clear_error();
    size_t chlen = client_out(f, ch, 16384);
    int muts = i < size ? data[i++] % 8 : 0;
    for (int m = 0; m < muts && i + 3 <= size; m++, i += 3) {
        size_t off = ((size_t)data[i] << 8 | data[i + 1]) % (chlen ? chlen : 1);
        if (chlen) ch[off] ^= data[i + 2] ? data[i + 2] : 1;
    }
    put(f, ch, chlen);
    free(ch);
    step(f);
    client_answer(f);
    f->modeled = muts == 0 && f->keyed;
    f->prelen = 0; /* from here: the client's second flight */

#define NEED(n)                                                                                    \
    if (i + (n) > size) goto settle
    while (i < size && !(over(f->last) && !f->rec)) {
        int op = data[i++] % 9, before_done = f->last != ST_TLSHS_DONE, ccs = 0;
        switch (op) {
        case 0:
            put(f, f->flight2, f->flight2len);
            break;
        case 1:
            if (f->keyed) send_sealed2(f, 22, f->fin, f->finlen, 0, 0);
            break;
        case 2:
            put(f, "\x14\x03\x03\x00\x01\x01", 6);
            break;
        case 3: {
            NEED(3);
            int type = data[i];
            size_t pad = data[i + 1], n = data[i + 2];
            i += 3;
            if (n > size - i) n = size - i;
            if (f->keyed)
                send_sealed(f, type, data + i, n, pad);
            else
                put(f, data + i, n);
            i += n;
            break;
        }
        case 4: {
            NEED(1);
            size_t n = data[i++];
            if (n > size - i) n = size - i;
            put(f, data + i, n);
            i += n;
            break;
        }
        case 5: {
            NEED(2);
            unsigned char m[4 + 48];
            memcpy(m, f->fin, sizeof m);
            size_t at = f->finlen ? data[i] % f->finlen : 0;
            m[at] ^= data[i + 1] ? data[i + 1] : 1;
            i += 2;
            if (f->keyed) send_sealed(f, 22, m, f->finlen, 0);
            break;
        }
        case 6: {
            NEED(1);
            size_t cut = f->finlen > 1 ? 1 + data[i] % (f->finlen - 1) : 0;
            i++;
            if (f->keyed && cut) {
                send_sealed2(f, 22, f->fin, cut, 0, 0);
                send_sealed2(f, 22, f->fin + cut, f->finlen - cut, 0, (long)cut);
            }
            break;
        }
        case 7:
            for (size_t j = 0; j < f->flight2len && !over(f->last); j++) {
                put(f, f->flight2 + j, 1);
                step(f);
                if (f->modeled && f->last == ST_TLSHS_DONE && model(f, &ccs) != 1)
                    abort(); /* DONE before its Finished was all there */
            }
            break;
        case 8:
            shutdown(f->cfd, SHUT_WR);
            f->eof = 1;
            break;
        }
        step(f);
        if (f->modeled && before_done) {
            int m = model(f, &ccs);
            /* DONE exactly when the Finished is all there, after change_cipher_specs only */
            if (f->last == ST_TLSHS_DONE && m != 1) abort(); /* accepted a hostile flight */
            if (m == 1 && ccs <= 2 && !f->eof && f->last != ST_TLSHS_DONE) abort();
        }
    }
settle:
    step(f);
    if (f->modeled && f->last == ST_TLSHS_DONE) check_client_reads(f);
done:
    st_tlsrec_free(f->rec);
    st_tlshs_free(f->h);
    if (f->c) {
        SSL_set_shutdown(f->c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(f->c);
    }
    close(f->sfd);
    close(f->cfd);
    free(f->log);
    free(f);
    ERR_clear_error();
    return 0;
}
