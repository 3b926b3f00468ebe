/* tlsrec.c - the TLS 1.3 record layer after OpenSSL's handshake (API and
 * the reasons in server/tlsrec.h, design in docs/internals/tls.md).
 *
 * A record on the wire (RFC 8446 §5.2):
 *
 *   23 03 03 len16 | AEAD(key, iv ^ seq, aad = those 5 bytes,
 *                         content || content_type || zero padding) || tag16
 *
 * The nonce is the 64-bit sequence number, big-endian and left-padded to
 * the 12-byte IV, XORed with the IV (§5.3). Keys and IVs come from the
 * traffic secret by HKDF-Expand-Label (§7.1, §7.3); a KeyUpdate replaces
 * the secret with HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)
 * and restarts that direction's sequence at 0 (§7.2).
 *
 * Input goes through a per-thread scratch buffer: recv as much as fits,
 * decrypt every complete record in place, hand the plaintext over; only an
 * incomplete record (rx) or plaintext beyond what the caller asked for (pt)
 * is copied into the connection's own buffers, and those are freed when
 * they empty. Output is sealed one record at a time into the scratch and
 * sent at once; what the socket does not take (tx, at most a record) waits
 * for the next call. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "starling/alloc.h"
#include "starling/buf.h"
#include "starling/hmac.h"
#include "server/tls13.h"
#include "server/tlsrec.h"

#define HDR TLS13_HDR
#define MAX_PLAIN TLS13_MAX_PLAIN
#define MAX_CT TLS13_MAX_CT
#define TAG TLS13_TAG
#define IV_LEN 12
#define MAX_SECRET 48             /* SHA-384 */
#define SCRATCH (4 * (HDR + MAX_CT))
/* RFC 8446 §5.5: AES-GCM may protect at most 2^24.5 full records per key;
 * we update our key well before that. */
#define REKEY_AFTER (UINT64_C(1) << 24)

typedef struct {
    unsigned char secret[MAX_SECRET];
    unsigned char key[32];
    unsigned char iv[IV_LEN];
    uint64_t seq;
    EVP_CIPHER_CTX *ctx; /* NULL at rest; built from key on the next record */
} direction;

struct st_tlsrec {
    direction rd, wr;
    const EVP_CIPHER *cipher;
    const EVP_MD *md;
    const char *suite;
    unsigned char hash_len, key_len;
    unsigned char hs[5];  /* a KeyUpdate split across records */
    unsigned char hs_len;
    unsigned update_owed : 1; /* the peer asked: ours goes before our next data */
    unsigned read_over : 1;   /* nothing more is read */
    unsigned write_over : 1;  /* close_notify or an alert sent, or a send failed */
    unsigned drained : 1;     /* the last recv got less than it asked for */
    const char *error;
    st_buf rx; /* ciphertext of an incomplete record */
    st_buf pt; /* plaintext decrypted and not yet returned */
    st_buf tx; /* ciphertext taken and not yet sent */
};

/* ---- the three suites of RFC 8446 §9.1 ---- */

static struct suite {
    uint16_t id;
    const char *name, *cipher_name, *md_name;
    unsigned char key_len;
    EVP_CIPHER *cipher;
    const EVP_MD *md;
} suites[] = {
    {0x1301, "TLS_AES_128_GCM_SHA256", "AES-128-GCM", "SHA256", 16, NULL, NULL},
    {0x1302, "TLS_AES_256_GCM_SHA384", "AES-256-GCM", "SHA384", 32, NULL, NULL},
    {0x1303, "TLS_CHACHA20_POLY1305_SHA256", "ChaCha20-Poly1305", "SHA256", 32, NULL, NULL},
};

/* What the callbacks saw during one handshake (SSL ex_data). */
typedef struct {
    unsigned char client[MAX_SECRET], server[MAX_SECRET];
    unsigned char client_len, server_len;
    unsigned long written_after; /* records written under SERVER_TRAFFIC_SECRET_0 */
    unsigned long read_after;    /* records read under CLIENT_TRAFFIC_SECRET_0 */
} capture;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int cap_idx = -1;

static void capture_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    if (!ptr) return;
    OPENSSL_cleanse(ptr, sizeof(capture));
    st_free(ptr);
}

/* Fetched once: the implicit fetch of EVP_aes_128_gcm() and friends would
 * otherwise run on every context rebuilt after a rest. */
static void init_once(void)
{
    cap_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, capture_free);
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        suites[i].cipher = EVP_CIPHER_fetch(NULL, suites[i].cipher_name, NULL);
        suites[i].md = st_md(suites[i].md_name);
    }
}

static capture *capture_of(const SSL *ssl, int create)
{
    capture *c = SSL_get_ex_data(ssl, cap_idx);
    if (c || !create) return c;
    c = st_calloc(1, sizeof *c);
    /* the callbacks get a const SSL; ex_data is ours to set */
    if (c && SSL_set_ex_data((SSL *)ssl, cap_idx, c) != 1) {
        st_free(c);
        c = NULL;
    }
    return c;
}

static int unhex(const char *s, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char ch = s[2 * i + k];
            int d = ch >= '0' && ch <= '9'   ? ch - '0'
                    : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                    : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                             : -1;
            if (d < 0) return -1;
            v = v * 16 + d;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

/* "LABEL <client random, 64 hex> <secret hex>" (the NSS key log format).
 * Only the two application traffic secrets are kept; each one restarts the
 * record count of the direction it protects. */
static void keylog_cb(const SSL *ssl, const char *line)
{
    static const char cl[] = "CLIENT_TRAFFIC_SECRET_0 ", sv[] = "SERVER_TRAFFIC_SECRET_0 ";
    int client = strncmp(line, cl, sizeof cl - 1) == 0;
    if (!client && strncmp(line, sv, sizeof sv - 1) != 0) return;
    const char *p = strchr(line + sizeof cl - 1, ' ');
    if (!p) return;
    p++;
    size_t hex = strlen(p);
    if (hex % 2 || hex / 2 > MAX_SECRET || hex == 0) return;
    capture *c = capture_of(ssl, 1);
    if (!c) return;
    unsigned char *dst = client ? c->client : c->server;
    if (unhex(p, hex / 2, dst) != 0) return;
    if (client) {
        c->client_len = (unsigned char)(hex / 2);
        c->read_after = 0;
    } else {
        c->server_len = (unsigned char)(hex / 2);
        c->written_after = 0;
    }
}

/* Every record header OpenSSL writes or reads passes here as
 * SSL3_RT_HEADER; those after a secret took effect were protected by it. */
static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                   SSL *ssl, void *arg)
{
    if (content_type != SSL3_RT_HEADER) return;
    capture *c = capture_of(ssl, 0);
    if (!c) return;
    if (write_p && c->server_len) c->written_after++;
    if (!write_p && c->client_len) c->read_after++;
}

int st_tlsrec_prepare_ctx(SSL_CTX *ctx)
{
    if (pthread_once(&once, init_once) != 0 || cap_idx < 0) return -1;
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++)
        if (!suites[i].cipher || !suites[i].md) return -1;
    SSL_CTX_set_keylog_callback(ctx, keylog_cb);
    SSL_CTX_set_msg_callback(ctx, msg_cb);
    return 0;
}

/* ---- keys ---- */

/* HMAC over a fetched digest (starling/hmac.h), for keys no longer than
 * its block. */
int st_tls13_hmac(const EVP_MD *md, const unsigned char *key, size_t klen, const unsigned char *d,
                  size_t n, unsigned char *out)
{
    if (klen > (size_t)EVP_MD_get_block_size(md)) return -1;
    return st_hmac(md, key, klen, d, n, out);
}

/* HKDF-Expand-Label(secret, label, context, n) for n <= Hash.length: a
 * single HMAC block, T(1) = HMAC(secret, HkdfLabel || 0x01) (RFC 5869
 * §2.3, RFC 8446 §7.1). */
int st_tls13_expand_label(const EVP_MD *md, const unsigned char *secret, const char *label,
                          const unsigned char *ctx, size_t clen, unsigned char *out, size_t n)
{
    unsigned char info[2 + 1 + 6 + 32 + 1 + 64 + 1], block[EVP_MAX_MD_SIZE];
    size_t ll = strlen(label), k = 0, hl = (size_t)EVP_MD_get_size(md);
    if (ll > 32 || clen > 64 || n > hl) return -1;
    info[k++] = (unsigned char)(n >> 8);
    info[k++] = (unsigned char)n;
    info[k++] = (unsigned char)(6 + ll);
    memcpy(info + k, "tls13 ", 6);
    k += 6;
    memcpy(info + k, label, ll);
    k += ll;
    info[k++] = (unsigned char)clen;
    if (clen) memcpy(info + k, ctx, clen);
    k += clen;
    info[k++] = 1; /* the block counter */
    if (st_tls13_hmac(md, secret, hl, info, k, block) != 0) return -1;
    memcpy(out, block, n);
    OPENSSL_cleanse(block, sizeof block);
    return 0;
}

static int expand_label(const st_tlsrec *r, const unsigned char *secret, const char *label,
                        unsigned char *out, size_t n)
{
    return st_tls13_expand_label(r->md, secret, label, NULL, 0, out, n);
}

/* Key and IV from d->secret; the context is rebuilt on first use. */
static int derive(const st_tlsrec *r, direction *d)
{
    EVP_CIPHER_CTX_free(d->ctx);
    d->ctx = NULL;
    d->seq = 0;
    if (expand_label(r, d->secret, "key", d->key, r->key_len) != 0) return -1;
    return expand_label(r, d->secret, "iv", d->iv, IV_LEN);
}

/* §7.2: the next generation of a direction's traffic secret. */
static int update_secret(const st_tlsrec *r, direction *d)
{
    unsigned char next[MAX_SECRET];
    if (expand_label(r, d->secret, "traffic upd", next, r->hash_len) != 0) return -1;
    memcpy(d->secret, next, r->hash_len);
    OPENSSL_cleanse(next, sizeof next);
    return derive(r, d);
}

static EVP_CIPHER_CTX *ctx_of(const st_tlsrec *r, direction *d, int enc)
{
    if (d->ctx) return d->ctx;
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    if (!x || EVP_CipherInit_ex(x, r->cipher, NULL, d->key, NULL, enc) != 1) {
        EVP_CIPHER_CTX_free(x);
        return NULL;
    }
    d->ctx = x;
    return x;
}

static void nonce_for(const direction *d, unsigned char nonce[IV_LEN])
{
    memcpy(nonce, d->iv, IV_LEN);
    for (int i = 0; i < 8; i++) nonce[IV_LEN - 1 - i] ^= (unsigned char)(d->seq >> (8 * i));
}

/* Seal the n content bytes at rec + HDR as one record of type `type`:
 * writes the header, the type byte and the tag around them. rec must have
 * room for HDR + n + 1 + TAG. Returns the record's length, or 0. */
static size_t seal(st_tlsrec *r, unsigned char *rec, size_t n, int type)
{
    direction *d = &r->wr;
    EVP_CIPHER_CTX *x = ctx_of(r, d, 1);
    unsigned char nonce[IV_LEN];
    size_t inner = n + 1, ct = inner + TAG;
    int l = 0;
    if (!x || d->seq == UINT64_MAX) return 0;
    rec[0] = CT_DATA;
    rec[1] = 3;
    rec[2] = 3;
    rec[3] = (unsigned char)(ct >> 8);
    rec[4] = (unsigned char)ct;
    rec[HDR + n] = (unsigned char)type;
    nonce_for(d, nonce);
    if (EVP_CipherInit_ex(x, NULL, NULL, NULL, nonce, 1) != 1 ||
        EVP_CipherUpdate(x, NULL, &l, rec, HDR) != 1 ||
        EVP_CipherUpdate(x, rec + HDR, &l, rec + HDR, (int)inner) != 1 || (size_t)l != inner ||
        EVP_CipherFinal_ex(x, rec + HDR + inner, &l) != 1 ||
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, TAG, rec + HDR + inner) != 1)
        return 0;
    d->seq++;
    return HDR + ct;
}

/* Decrypt the record at rec (its ct bytes after the header) in place.
 * 0, or -1 if it does not authenticate. */
static int open_record(st_tlsrec *r, unsigned char *rec, size_t ct)
{
    direction *d = &r->rd;
    EVP_CIPHER_CTX *x = ctx_of(r, d, 0);
    unsigned char nonce[IV_LEN];
    int l = 0;
    if (!x || d->seq == UINT64_MAX) return -1;
    nonce_for(d, nonce);
    size_t body = ct - TAG;
    if (EVP_CipherInit_ex(x, NULL, NULL, NULL, nonce, 0) != 1 ||
        EVP_CipherUpdate(x, NULL, &l, rec, HDR) != 1 ||
        EVP_CipherUpdate(x, rec + HDR, &l, rec + HDR, (int)body) != 1 ||
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, TAG, rec + HDR + body) != 1 ||
        EVP_CipherFinal_ex(x, rec + HDR + l, &l) != 1)
        return -1;
    d->seq++;
    return 0;
}

/* ---- taking over ---- */

static const struct suite *suite_of(uint16_t id)
{
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++)
        if (suites[i].id == id) return &suites[i];
    return NULL;
}

st_tlsrec *st_tlsrec_new(uint16_t suite, const unsigned char *client_secret,
                         const unsigned char *server_secret, size_t len)
{
    if (pthread_once(&once, init_once) != 0) return NULL;
    const struct suite *s = suite_of(suite);
    if (!s || !s->cipher || !s->md || len != (size_t)EVP_MD_get_size(s->md)) return NULL;
    st_tlsrec *r = st_calloc(1, sizeof *r);
    if (!r) return NULL;
    r->cipher = s->cipher;
    r->md = s->md;
    r->suite = s->name;
    r->key_len = s->key_len;
    r->hash_len = (unsigned char)len;
    memcpy(r->rd.secret, client_secret, len);
    memcpy(r->wr.secret, server_secret, len);
    if (derive(r, &r->rd) != 0 || derive(r, &r->wr) != 0) {
        st_tlsrec_free(r);
        return NULL;
    }
    st_buf_init(&r->rx, HDR + MAX_CT);
    st_buf_init(&r->pt, SCRATCH);
    st_buf_init(&r->tx, 2 * (HDR + MAX_CT));
    return r;
}

st_tlsrec *st_tlsrec_take(SSL *ssl)
{
    st_tlsrec *r = NULL;
    capture *c = cap_idx >= 0 ? capture_of(ssl, 0) : NULL;
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    SSL_set_msg_callback(ssl, NULL); /* nothing more to count either way */
    if (!c || !cipher || SSL_version(ssl) != TLS1_3_VERSION || !SSL_is_server(ssl)) goto out;
    /* Bytes OpenSSL read and did not hand out, or a record of the client's
     * already read under its application key: not where we would start. */
    if (SSL_has_pending(ssl) || c->read_after != 0) goto out;
    if (c->client_len != c->server_len) goto out;
    r = st_tlsrec_new(SSL_CIPHER_get_protocol_id(cipher), c->client, c->server, c->client_len);
    if (r) r->wr.seq = c->written_after; /* NewSessionTickets went out under it */
out:
    if (c) {
        SSL_set_ex_data(ssl, cap_idx, NULL);
        capture_free(NULL, c, NULL, 0, 0, NULL);
    }
    return r;
}

void st_tlsrec_free(st_tlsrec *r)
{
    if (!r) return;
    EVP_CIPHER_CTX_free(r->rd.ctx);
    EVP_CIPHER_CTX_free(r->wr.ctx);
    st_buf_free(&r->rx);
    st_buf_free(&r->pt);
    st_buf_free(&r->tx);
    OPENSSL_cleanse(r, sizeof *r);
    st_free(r);
}

/* The per-thread buffer records are decrypted and sealed in. */
static unsigned char *scratch(void)
{
    static _Thread_local unsigned char *s;
    if (!s) s = st_malloc(SCRATCH);
    return s;
}

/* ---- output ---- */

/* Send what is kept: 1 when nothing is left, 0 if some is, -1 on error. */
static int flush_tx(st_tlsrec *r, int fd)
{
    while (r->tx.len) {
        ssize_t k = send(fd, r->tx.data, r->tx.len, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
            r->write_over = 1;
            if (!r->error) r->error = "send failed";
            return -1;
        }
        st_buf_consume(&r->tx, (size_t)k);
    }
    st_buf_free(&r->tx);
    return 1;
}

/* Send a sealed record, or keep it (all of it if something is already
 * waiting, so the order holds; the rest of it if the socket took part). */
static int emit(st_tlsrec *r, int fd, const unsigned char *rec, size_t len)
{
    ssize_t k = 0;
    if (!r->tx.len) {
        k = send(fd, rec, len, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                r->write_over = 1;
                if (!r->error) r->error = "send failed";
                return -1;
            }
            k = 0;
        }
    }
    if ((size_t)k < len && st_buf_append(&r->tx, rec + k, len - (size_t)k) != 0) {
        r->write_over = 1;
        if (!r->error) r->error = "out of memory";
        return -1;
    }
    return 0;
}

/* A record with a few bytes of content (an alert, our KeyUpdate). */
static int emit_small(st_tlsrec *r, int fd, int type, const unsigned char *p, size_t n)
{
    unsigned char rec[HDR + 8 + 1 + TAG];
    memcpy(rec + HDR, p, n);
    size_t len = seal(r, rec, n, type);
    int e = len ? emit(r, fd, rec, len) : -1;
    OPENSSL_cleanse(rec, sizeof rec);
    return e;
}

/* Our KeyUpdate (§4.6.3), then the new write key. */
static int send_key_update(st_tlsrec *r, int fd)
{
    static const unsigned char ku[5] = {HS_KEY_UPDATE, 0, 0, 1, 0}; /* update_not_requested */
    if (emit_small(r, fd, CT_HANDSHAKE, ku, sizeof ku) != 0 || update_secret(r, &r->wr) != 0) {
        r->write_over = 1;
        if (!r->error) r->error = "key update failed";
        return -1;
    }
    r->update_owed = 0;
    return 0;
}

static void send_alert(st_tlsrec *r, int fd, int desc)
{
    unsigned char a[2] = {desc == AL_CLOSE_NOTIFY ? 1 : 2, (unsigned char)desc};
    if (r->write_over) return;
    if (emit_small(r, fd, CT_ALERT, a, 2) == 0) flush_tx(r, fd);
    r->write_over = 1;
}

size_t st_tlsrec_unsent(const st_tlsrec *r)
{
    return r->tx.len;
}

ssize_t st_tlsrec_write(st_tlsrec *r, int fd, const void *p, size_t n)
{
    int f = flush_tx(r, fd);
    if (f < 0) return -1;
    if (!p || !n) return f;
    if (r->write_over) return -1;
    if (!f) return 0;
    unsigned char *s = scratch();
    if (!s) return -1;
    size_t taken = 0;
    while (taken < n && !r->tx.len) {
        if ((r->update_owed || r->wr.seq >= REKEY_AFTER) && send_key_update(r, fd) != 0) break;
        if (r->tx.len) break;
        size_t m = n - taken > MAX_PLAIN ? MAX_PLAIN : n - taken;
        memcpy(s + HDR, (const char *)p + taken, m);
        size_t len = seal(r, s, m, CT_DATA);
        if (!len) {
            r->write_over = 1;
            if (!r->error) r->error = "encryption failed";
            break;
        }
        if (emit(r, fd, s, len) != 0) break;
        taken += m;
    }
    if (!taken && r->write_over) return -1;
    return (ssize_t)taken;
}

void st_tlsrec_close_notify(st_tlsrec *r, int fd)
{
    send_alert(r, fd, AL_CLOSE_NOTIFY);
}

/* ---- input ---- */

/* Our fatal alert and the end of the connection. */
static void fail(st_tlsrec *r, int fd, int alert, const char *why)
{
    if (!r->error) r->error = why;
    r->read_over = 1;
    send_alert(r, fd, alert);
}

/* Post-handshake handshake messages (§4.6): only KeyUpdate may come from a
 * client, and it must end its record (§5.1: messages before a key change
 * align with a record boundary). Returns -1 after failing the connection. */
static int on_handshake(st_tlsrec *r, int fd, const unsigned char *p, size_t n)
{
    if (n == 0) {
        fail(r, fd, AL_UNEXPECTED_MESSAGE, "empty handshake record");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        r->hs[r->hs_len++] = p[i];
        if (r->hs_len == 1 && r->hs[0] != HS_KEY_UPDATE) {
            fail(r, fd, AL_UNEXPECTED_MESSAGE, "handshake message after the handshake");
            return -1;
        }
        if (r->hs_len == 4 && (r->hs[1] || r->hs[2] || r->hs[3] != 1)) {
            fail(r, fd, AL_DECODE_ERROR, "KeyUpdate of the wrong length");
            return -1;
        }
        if (r->hs_len < 5) continue;
        r->hs_len = 0;
        if (r->hs[4] > 1) {
            fail(r, fd, AL_ILLEGAL_PARAMETER, "KeyUpdate request_update not 0 or 1");
            return -1;
        }
        if (i + 1 < n) {
            fail(r, fd, AL_UNEXPECTED_MESSAGE, "KeyUpdate not at the end of its record");
            return -1;
        }
        if (r->hs[4]) r->update_owed = 1;
        if (update_secret(r, &r->rd) != 0) {
            fail(r, fd, AL_INTERNAL_ERROR, "key update failed");
            return -1;
        }
    }
    return 0;
}

static int on_alert(st_tlsrec *r, int fd, const unsigned char *p, size_t n)
{
    if (n == 0) { /* §5.1: no zero-length fragments but application data */
        fail(r, fd, AL_UNEXPECTED_MESSAGE, "empty alert record");
        return -1;
    }
    if (n != 2) {
        fail(r, fd, AL_DECODE_ERROR, "malformed alert");
        return -1;
    }
    if (p[1] == AL_USER_CANCELED) return 0; /* §6.1: a close_notify follows */
    r->read_over = 1;
    if (p[1] == AL_CLOSE_NOTIFY) {
        /* §6.1: only the peer's direction closes; we may still answer */
        r->error = "peer sent close_notify";
    } else {
        /* §6.2: after a fatal alert both sides close at once, sending
         * nothing more */
        r->error = "peer sent an alert";
        r->write_over = 1;
    }
    return -1;
}

/* Decrypt and dispatch one complete record at rec; application data goes
 * to out (up to room bytes, *got counts them) and the rest to pt.
 * -1 when the connection is over. */
static int on_record(st_tlsrec *r, int fd, unsigned char *rec, size_t ct, char *out, size_t room,
                     size_t *got)
{
    int type = 0;
    size_t n = 0;
    unsigned char *p = rec + HDR;
    switch (st_tlsrec_open(r, rec, ct, &type, &n)) {
    case 0:
        break;
    case -1:
        fail(r, fd, AL_BAD_RECORD_MAC, "record does not authenticate");
        return -1;
    case -3:
        fail(r, fd, AL_RECORD_OVERFLOW, "record plaintext over 2^14 + 1 bytes");
        return -1;
    default:
        fail(r, fd, AL_UNEXPECTED_MESSAGE, "record without a content type");
        return -1;
    }
    if (r->hs_len && type != CT_HANDSHAKE) {
        fail(r, fd, AL_UNEXPECTED_MESSAGE, "record inside a fragmented handshake message");
        return -1;
    }
    switch (type) {
    case CT_DATA: {
        size_t k = n < room - *got ? n : room - *got;
        memcpy(out + *got, p, k);
        *got += k;
        if (k < n && st_buf_append(&r->pt, p + k, n - k) != 0) {
            fail(r, fd, AL_INTERNAL_ERROR, "out of memory");
            return -1;
        }
        return 0;
    }
    case CT_HANDSHAKE:
        return on_handshake(r, fd, p, n);
    case CT_ALERT:
        return on_alert(r, fd, p, n);
    default:
        fail(r, fd, AL_UNEXPECTED_MESSAGE, "unexpected content type");
        return -1;
    }
}

size_t st_tlsrec_pending(const st_tlsrec *r)
{
    return r->pt.len;
}

int st_tlsrec_drained(const st_tlsrec *r)
{
    /* read_over: the next read says 0, which nothing on fd would tell */
    return r->drained && !r->pt.len && !r->read_over;
}

ssize_t st_tlsrec_read(st_tlsrec *r, int fd, void *p, size_t n)
{
    if (r->pt.len) {
        size_t k = r->pt.len < n ? r->pt.len : n;
        memcpy(p, r->pt.data, k);
        st_buf_consume(&r->pt, k);
        if (!r->pt.len) st_buf_free(&r->pt);
        return (ssize_t)k;
    }
    if (r->read_over) return 0;
    unsigned char *s = scratch();
    if (!s) {
        fail(r, fd, AL_INTERNAL_ERROR, "out of memory");
        return 0;
    }
    size_t have = r->rx.len, off = 0, got = 0;
    if (have) memcpy(s, r->rx.data, have);
    st_buf_free(&r->rx);
    ssize_t k = recv(fd, s + have, SCRATCH - have, 0);
    /* empty: a short recv, or none at all (after records preloaded) */
    r->drained = (k >= 0 && (size_t)k < SCRATCH - have) ||
                 (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) k = -2;
    if (k > 0) have += (size_t)k;
    while (have - off >= HDR) {
        unsigned char *rec = s + off;
        size_t ct = (size_t)rec[3] << 8 | rec[4];
        if (rec[0] != CT_DATA) {
            /* §5: after the handshake every record is protected, and a
             * change_cipher_spec is no longer dropped */
            fail(r, fd, AL_UNEXPECTED_MESSAGE, "unprotected record after the handshake");
            break;
        }
        if (ct > MAX_CT) {
            fail(r, fd, AL_RECORD_OVERFLOW, "record over 2^14 + 256 bytes");
            break;
        }
        if (ct < TAG) {
            fail(r, fd, AL_BAD_RECORD_MAC, "record shorter than its tag");
            break;
        }
        if (have - off < HDR + ct) break;
        off += HDR + ct;
        if (on_record(r, fd, rec, ct, p, n, &got) != 0) break;
    }
    if (!r->read_over && have > off && st_buf_append(&r->rx, s + off, have - off) != 0)
        fail(r, fd, AL_INTERNAL_ERROR, "out of memory");
    if (!r->read_over && (k == 0 || k == -1)) {
        r->read_over = 1;
        if (!r->error) r->error = k == 0 ? "connection closed without close_notify" : "recv failed";
    }
    if (got) return (ssize_t)got;
    if (r->read_over) return 0;
    return -2;
}

int st_tlsrec_rest(st_tlsrec *r)
{
    int freed = r->rd.ctx || r->wr.ctx || (r->rx.data && !r->rx.len) ||
                (r->pt.data && !r->pt.len) || (r->tx.data && !r->tx.len);
    EVP_CIPHER_CTX_free(r->rd.ctx);
    EVP_CIPHER_CTX_free(r->wr.ctx);
    r->rd.ctx = r->wr.ctx = NULL;
    if (!r->rx.len) st_buf_free(&r->rx);
    if (!r->pt.len) st_buf_free(&r->pt);
    if (!r->tx.len) st_buf_free(&r->tx);
    return freed;
}

const char *st_tlsrec_error(const st_tlsrec *r)
{
    return r->error;
}

const char *st_tlsrec_version(const st_tlsrec *r)
{
    return "TLSv1.3";
}

const char *st_tlsrec_cipher(const st_tlsrec *r)
{
    return r->suite;
}

/* ---- for tlshs.c ---- */

size_t st_tlsrec_seal(st_tlsrec *r, unsigned char *rec, size_t n, int type)
{
    return n <= MAX_PLAIN ? seal(r, rec, n, type) : 0;
}

/* TLSInnerPlaintext: content, type, zeros (§5.2, §5.4), at most 2^14 + 1
 * bytes with its padding. Our own reads (on_record) come here too. */
int st_tlsrec_open(st_tlsrec *r, unsigned char *rec, size_t ct, int *type, size_t *n)
{
    if (ct < TAG || ct > MAX_CT || open_record(r, rec, ct) != 0) return -1;
    size_t k = ct - TAG;
    if (k > MAX_PLAIN + 1) return -3;
    while (k && rec[HDR + k - 1] == 0)
        k--;
    if (!k) return -2;
    *type = rec[HDR + k - 1];
    *n = k - 1;
    return 0;
}

int st_tlsrec_write_handshake(st_tlsrec *r, int fd, const void *msg, size_t n)
{
    unsigned char rec[HDR + 512 + 1 + TAG];
    if (n > 512 || r->write_over) return -1;
    memcpy(rec + HDR, msg, n);
    size_t len = seal(r, rec, n, CT_HANDSHAKE);
    int e = len ? emit(r, fd, rec, len) : -1;
    OPENSSL_cleanse(rec, sizeof rec);
    return e;
}

int st_tlsrec_preload(st_tlsrec *r, const void *p, size_t n)
{
    return r->rx.len ? -1 : st_buf_append(&r->rx, p, n);
}

size_t st_tlsrec_buffered(const st_tlsrec *r)
{
    return r->rx.len + r->pt.len;
}
