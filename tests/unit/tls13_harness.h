/* tls13_harness.h - what the cmocka tests of our own TLS 1.3 code
 * (test_server_tlsrec.c, test_server_tlshs.c) share, apart from the
 * client end (tls13_client.h): resources a failed assertion must not leak,
 * the certificate and st_tls_ctx the server runs on, an allocator that
 * fails on purpose, and the crafting keys.
 *
 * The crafting keys are written here with OpenSSL's HMAC and EVP AEADs,
 * independently of server/tlsrec.c and server/tlshs.c on purpose, so that
 * the tests never check the implementation with itself: HKDF-Expand-Label
 * (RFC 8446 §7.1), traffic keys and IVs (§7.3), the per-record nonce
 * (§5.3) and opening a record (§5.2). Sealing one is in tls13_client.h,
 * as it writes into the client.
 *
 * Define TLS13_HARNESS_DIR (the mkdtemp template) before including it. */
#ifndef STARLING_TEST_TLS13_HARNESS_H
#define STARLING_TEST_TLS13_HARNESS_H
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include "starling/alloc.h"
#include "server/tls.h"

#define MAX_CIPHERTEXT (16384 + 256) /* RFC 8446 §5.2 */
#define MAX_RECORD (5 + MAX_CIPHERTEXT)

static const char *const suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                     "TLS_CHACHA20_POLY1305_SHA256"};
#define NSUITES 3

/* alert descriptions, RFC 8446 §6, and what a test may expect instead */
enum {
    A_CLOSE_NOTIFY = 0,
    A_UNEXPECTED_MESSAGE = 10,
    A_BAD_RECORD_MAC = 20,
    A_RECORD_OVERFLOW = 22,
    A_HANDSHAKE_FAILURE = 40,
    A_ILLEGAL_PARAMETER = 47,
    A_DECODE_ERROR = 50,
    A_DECRYPT_ERROR = 51,
    A_NONE = -1,          /* no alert back: the client sent a fatal one */
    A_UNEXP_OR_NONE = -4, /* unexpected_message, or taken as the alert it is */
};

/* ---- what a test holds ---- */

/* Everything a test allocates is tracked with the function that frees it,
 * so that a failed assertion (a longjmp out of the test) still frees it in
 * the test's cleanup() (tfree_all) and ASan reports only real leaks. */
#define NTRACKED 64

static struct {
    void *p;
    void (*free)(void *);
} tracked[NTRACKED];

/* p (not NULL), to be freed with fn by tfree or tfree_all. */
static void *track(void *p, void (*fn)(void *))
{
    assert_non_null(p);
    for (int i = 0; i < NTRACKED; i++)
        if (!tracked[i].p) {
            tracked[i].p = p;
            tracked[i].free = fn;
            return p;
        }
    fail_msg("too many tracked resources");
    return NULL;
}

/* Frees p, which track returned, with its own function; NULL is nothing. */
static void tfree(void *p)
{
    if (!p) return;
    for (int i = 0; i < NTRACKED; i++)
        if (tracked[i].p == p) {
            void (*fn)(void *) = tracked[i].free;
            tracked[i].p = NULL;
            fn(p);
            return;
        }
    fail_msg("tfree of a pointer the harness does not track");
}

static void tfree_all(void)
{
    for (int i = 0; i < NTRACKED; i++)
        if (tracked[i].p) tfree(tracked[i].p);
}

static void *tmalloc(size_t n)
{
    return track(malloc(n ? n : 1), free);
}

static void free_ssl_ctx(void *x)
{
    SSL_CTX_free(x);
}

static SSL_CTX *ctx_track(SSL_CTX *x)
{
    return track(x, free_ssl_ctx);
}

/* ---- the server's certificate ---- */

static char base[] = TLS13_HARNESS_DIR;
static char cert_path[256], key_path[256];
static st_tls_ctx *tls; /* on cert_path, key_path */

/* The temporary directory, a certificate for example.org and tls on it. */
static int harness_setup(void)
{
    char err[512];
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(base)) return -1;
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", base);
    snprintf(key_path, sizeof key_path, "%s/key.pem", base);
    static const char *const hosts[] = {"example.org"};
    if (st_tls_ensure_cert(cert_path, key_path, hosts, 1, err, sizeof err) != 0) {
        fprintf(stderr, "ensure_cert: %s\n", err);
        return -1;
    }
    tls = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    if (!tls) {
        fprintf(stderr, "ctx_new: %s\n", err);
        return -1;
    }
    return 0;
}

static int harness_teardown(void)
{
    char cmd[512];
    st_tls_ctx_free(tls);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- out of memory ---- */

/* st_set_alloc_hooks(&torture_hooks): allocation number fail_at fails;
 * alloc_count counts them. */
static long alloc_count, fail_at = -1;

static void *t_malloc(size_t n)
{
    if (++alloc_count == fail_at) return NULL;
    return malloc(n);
}

static void *t_realloc(void *p, size_t n)
{
    if (++alloc_count == fail_at) return NULL;
    return realloc(p, n);
}

static const st_alloc_hooks torture_hooks = {t_malloc, t_realloc, free};

/* ---- crafting keys (RFC 8446 §5.2, §5.3, §7.1, §7.3) ---- */

/* a traffic secret from the keylog */
typedef struct secret {
    unsigned char b[48];
    size_t n;
} secret;

/* one direction's record protection, and its next sequence number */
typedef struct keys {
    const EVP_CIPHER *aead;
    const EVP_MD *md;
    size_t keylen;
    unsigned char key[32], iv[12];
    uint64_t seq;
} keys;

/* Lowercase hex (a keylog line's secret) into out, at most cap bytes. */
static void hex_decode(const char *h, unsigned char *out, size_t *len, size_t cap)
{
    size_t n = 0;
    while (h[0] && h[1] && n < cap) {
        unsigned v;
        if (sscanf(h, "%2x", &v) != 1) break;
        out[n++] = (unsigned char)v;
        h += 2;
    }
    *len = n;
}

static void hkdf_expand_label_ctx(const EVP_MD *md, const unsigned char *secret, size_t slen,
                                  const char *label, const unsigned char *ctx, size_t ctxlen,
                                  unsigned char *out, size_t outlen)
{
    unsigned char info[2 + 1 + 255 + 1 + 255], t[EVP_MAX_MD_SIZE],
        in[EVP_MAX_MD_SIZE + sizeof info + 1];
    size_t il = 0, tlen = 0, done = 0, lablen = strlen(label);
    unsigned char ctr = 1;
    info[il++] = (unsigned char)(outlen >> 8);
    info[il++] = (unsigned char)outlen;
    info[il++] = (unsigned char)(6 + lablen);
    memcpy(info + il, "tls13 ", 6);
    il += 6;
    memcpy(info + il, label, lablen);
    il += lablen;
    info[il++] = (unsigned char)ctxlen;
    if (ctxlen) memcpy(info + il, ctx, ctxlen);
    il += ctxlen;
    while (done < outlen) {
        unsigned int ml = 0;
        size_t n = tlen;
        memcpy(in, t, tlen);
        memcpy(in + n, info, il);
        n += il;
        in[n++] = ctr++;
        assert_non_null(HMAC(md, secret, (int)slen, in, n, t, &ml));
        tlen = ml;
        size_t take = tlen < outlen - done ? tlen : outlen - done;
        memcpy(out + done, t, take);
        done += take;
    }
}

/* with an empty context */
static void hkdf_expand_label(const EVP_MD *md, const unsigned char *secret, size_t slen,
                              const char *label, unsigned char *out, size_t outlen)
{
    hkdf_expand_label_ctx(md, secret, slen, label, NULL, 0, out, outlen);
}

/* Keys for the suite ssl negotiated from traffic secret s (n bytes, the
 * suite's hash size), sequence 0. */
static void keys_from_secret(const SSL *ssl, const unsigned char *s, size_t n, keys *out)
{
    const char *name = SSL_CIPHER_standard_name(SSL_get_current_cipher(ssl));
    memset(out, 0, sizeof *out);
    if (strcmp(name, "TLS_AES_128_GCM_SHA256") == 0) {
        out->aead = EVP_aes_128_gcm(), out->md = EVP_sha256(), out->keylen = 16;
    } else if (strcmp(name, "TLS_AES_256_GCM_SHA384") == 0) {
        out->aead = EVP_aes_256_gcm(), out->md = EVP_sha384(), out->keylen = 32;
    } else {
        assert_string_equal(name, "TLS_CHACHA20_POLY1305_SHA256");
        out->aead = EVP_chacha20_poly1305(), out->md = EVP_sha256(), out->keylen = 32;
    }
    assert_int_equal(n, (size_t)EVP_MD_get_size(out->md));
    hkdf_expand_label(out->md, s, n, "key", out->key, out->keylen);
    hkdf_expand_label(out->md, s, n, "iv", out->iv, 12);
}

static void nonce(const keys *x, uint64_t seq, unsigned char out[12])
{
    memcpy(out, x->iv, 12);
    for (int i = 0; i < 8; i++)
        out[11 - i] ^= (unsigned char)(seq >> (8 * i));
}

/* Open one record under x at sequence seq: the inner content type (after
 * the padding), the content into out. -1 if it does not open. */
static int open_record(const keys *x, uint64_t seq, const unsigned char *r, size_t rlen,
                       unsigned char *out, size_t *outlen)
{
    unsigned char nc[12];
    int l, ok;
    if (rlen < 5 + 17 || r[0] != 23) return -1;
    size_t len = ((size_t)r[3] << 8) | r[4];
    if (len + 5 != rlen) return -1;
    nonce(x, seq, nc);
    EVP_CIPHER_CTX *e = EVP_CIPHER_CTX_new();
    assert_non_null(e);
    ok = EVP_DecryptInit_ex(e, x->aead, NULL, x->key, nc) == 1 &&
         EVP_DecryptUpdate(e, NULL, &l, r, 5) == 1 &&
         EVP_DecryptUpdate(e, out, &l, r + 5, (int)(len - 16)) == 1 &&
         EVP_CIPHER_CTX_ctrl(e, EVP_CTRL_AEAD_SET_TAG, 16, (void *)(r + rlen - 16)) == 1 &&
         EVP_DecryptFinal_ex(e, out + l, &l) == 1;
    EVP_CIPHER_CTX_free(e);
    if (!ok) return -1;
    size_t n = len - 16;
    while (n > 0 && out[n - 1] == 0)
        n--;
    if (n == 0) return -1;
    *outlen = n - 1;
    return out[n - 1];
}
#endif
