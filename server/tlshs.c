/* tlshs.c - the server side of the common TLS 1.3 handshake (RFC 8446 §4),
 * OpenSSL's for everything else (API and the reasons in server/tlshs.h,
 * design in docs/internals/tls.md).
 *
 *   client                                    server (us)
 *   ClientHello (+key_share, +pre_shared_key) -->  peeked, checked, taken
 *                              <--  ServerHello (+key_share, +pre_shared_key)
 *                                   [change_cipher_spec]
 *                                   {EncryptedExtensions}
 *                                   {Certificate, CertificateVerify}  full only
 *                                   {Finished}
 *   [change_cipher_spec] {Finished}  -->  checked
 *                              <--  [NewSessionTicket]  (st_tlsrec from here)
 *
 * The key schedule is §7.1 with HMAC written over a fetched digest (the
 * one-shot HMAC() of OpenSSL 3.0 fetches its MAC on every call: 1.7 us
 * against 0.4 us here, and a handshake does about 25 of them).
 *
 * Tickets are ours alone: AES-256-GCM under a key made at random with the
 * st_tlshs_ctx, holding the resumption PSK, its suite, when it was issued
 * and its age_add. OpenSSL's own tickets (from connections it handled)
 * are not ours: such a ClientHello goes to OpenSSL, which resumes them. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sodium.h>
#include "starling/alloc.h"
#include "starling/buf.h"
#include "starling/hmac.h"
#include "server/tls.h"
#include "server/tls13.h"
#include "server/tlshs.h"
#include "server/x25519.h"

#define HDR TLS13_HDR
#define MAX_PLAIN TLS13_MAX_PLAIN
#define MAX_CT TLS13_MAX_CT
#define MAX_HASH 48
#define SCRATCH (2 * (HDR + MAX_CT))
#define TICKET_LIFETIME 7200 /* s, OpenSSL's default too */
#define TICKET_PLAIN (1 + 2 + 8 + 4 + 4 + 1 + MAX_HASH)
#define TICKET_LEN (12 + TICKET_PLAIN + 16)

/* Extension types (§4.2, RFC 6066, RFC 7301). */
enum {
    EXT_SERVER_NAME = 0,
    EXT_MAX_FRAGMENT_LENGTH = 1,
    EXT_SUPPORTED_GROUPS = 10,
    EXT_SIGNATURE_ALGORITHMS = 13,
    EXT_ALPN = 16,
    EXT_PRE_SHARED_KEY = 41,
    EXT_EARLY_DATA = 42,
    EXT_SUPPORTED_VERSIONS = 43,
    EXT_COOKIE = 44,
    EXT_PSK_MODES = 45,
    EXT_KEY_SHARE = 51,
};
#define GROUP_SECP256R1 0x0017
#define GROUP_X25519 0x001d

struct st_tlshs_ctx {
    int refs;
    EVP_PKEY *key;
    uint16_t scheme;      /* the SignatureScheme our key makes */
    const EVP_MD *sig_md; /* NULL for Ed25519 */
    int rsa_pss;
    EVP_PKEY_CTX *sign;      /* made once, for the digest-signing schemes */
    unsigned char *cert_msg; /* the whole Certificate handshake message */
    size_t cert_msg_len;
    unsigned char end_point[64];
    size_t end_point_len; /* 0: none (Ed25519) */
    unsigned char ticket_key[32];
    uint32_t ticket_lifetime;
};

static const struct suite {
    uint16_t id;
    const char *name;
    int sha384;
} suites[] = {
    {0x1301, "TLS_AES_128_GCM_SHA256", 0},
    {0x1302, "TLS_AES_256_GCM_SHA384", 1},
    {0x1303, "TLS_CHACHA20_POLY1305_SHA256", 0},
};

enum { S_HELLO, S_FLIGHT, S_FINISHED, S_DONE, S_OVER };

struct st_tlshs {
    st_tlshs_ctx *x;
    int state;
    unsigned direct_tls : 1, resumed : 1, alpn : 1, have_exporter : 1;
    const struct suite *s;
    const EVP_MD *md;
    size_t hl;           /* hash length */
    EVP_MD_CTX *th;      /* the transcript hash (§4.4.1) */
    EVP_MD_CTX *scratch; /* for HMAC and snapshots */
    st_tlsrec *hsrec;    /* records under the handshake traffic secrets */
    st_tlsrec *app;      /* what st_tlshs_finish hands out */
    unsigned char master[MAX_HASH];
    unsigned char c_finished[MAX_HASH]; /* the verify_data we expect */
    unsigned char exporter[32];
    unsigned char fin[4 + MAX_HASH]; /* the client's Finished, reassembled */
    size_t fin_len;
    unsigned char *out; /* our flight; out_off of out_len bytes sent */
    size_t out_len, out_off;
    st_buf in; /* an incomplete record of the client's second flight */
    const char *error;
};

/* ---- setup ---- */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const EVP_MD *sha256, *sha384;
static EVP_CIPHER *aes256gcm;

static void init_once(void)
{
    if (sodium_init() < 0) return;
    sha256 = st_md("SHA256"); /* fetched once, shared (starling/hmac.h) */
    sha384 = st_md("SHA384");
    aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

static unsigned char *scratch(void)
{
    static _Thread_local unsigned char *s;
    if (!s) s = st_malloc(SCRATCH);
    return s;
}

static void put16(unsigned char *p, size_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put24(unsigned char *p, size_t v)
{
    p[0] = (unsigned char)(v >> 16);
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)v;
}

static size_t get16(const unsigned char *p)
{
    return (size_t)p[0] << 8 | p[1];
}

static size_t get24(const unsigned char *p)
{
    return (size_t)p[0] << 16 | (size_t)p[1] << 8 | p[2];
}

/* The Certificate message (§4.4.2) for the context's chain. */
static int build_cert_msg(st_tlshs_ctx *x, SSL_CTX *ctx)
{
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    STACK_OF(X509) *chain = NULL;
    if (!leaf) return -1;
    if (!SSL_CTX_get0_chain_certs(ctx, &chain) || !chain || sk_X509_num(chain) == 0)
        SSL_CTX_get_extra_chain_certs(ctx, &chain);
    int n = chain ? sk_X509_num(chain) : 0;
    size_t total = 4 + 1 + 3;
    for (int i = -1; i < n; i++) {
        int len = i2d_X509(i < 0 ? leaf : sk_X509_value(chain, i), NULL);
        if (len <= 0) return -1;
        total += 3 + (size_t)len + 2;
    }
    if (total - 4 >= (1u << 24)) return -1;
    unsigned char *m = st_malloc(total), *p = m + 8;
    if (!m) return -1;
    m[0] = HS_CERTIFICATE;
    put24(m + 1, total - 4);
    m[4] = 0; /* certificate_request_context */
    put24(m + 5, total - 8);
    for (int i = -1; i < n; i++) {
        X509 *c = i < 0 ? leaf : sk_X509_value(chain, i);
        unsigned char *der = p + 3;
        int len = i2d_X509(c, &der);
        put24(p, (size_t)len);
        p += 3 + (size_t)len;
        put16(p, 0); /* no extensions */
        p += 2;
    }
    x->cert_msg = m;
    x->cert_msg_len = total;
    return 0;
}

st_tlshs_ctx *st_tlshs_ctx_new(SSL_CTX *ctx, char *err, size_t errlen)
{
    if (pthread_once(&once, init_once) != 0 || !sha256 || !sha384 || !aes256gcm) {
        snprintf(err, errlen, "cannot fetch SHA-256, SHA-384 and AES-256-GCM");
        return NULL;
    }
    EVP_PKEY *key = SSL_CTX_get0_privatekey(ctx);
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    if (!key || !leaf) {
        snprintf(err, errlen, "no certificate or key loaded");
        return NULL;
    }
    st_tlshs_ctx *x = st_calloc(1, sizeof *x);
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    x->refs = 1;
    x->ticket_lifetime = TICKET_LIFETIME;
    char group[32] = "";
    size_t glen = 0;
    switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_EC:
        if (!EVP_PKEY_get_group_name(key, group, sizeof group, &glen)) break;
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0) {
            x->scheme = 0x0403; /* ecdsa_secp256r1_sha256 */
            x->sig_md = sha256;
        } else if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0) {
            x->scheme = 0x0503; /* ecdsa_secp384r1_sha384 */
            x->sig_md = sha384;
        }
        break;
    case EVP_PKEY_RSA:
        x->scheme = 0x0804; /* rsa_pss_rsae_sha256 */
        x->sig_md = sha256;
        x->rsa_pss = 1;
        break;
    case EVP_PKEY_ED25519:
        x->scheme = 0x0807;
        break;
    default:
        break;
    }
    ERR_clear_error();
    if (!x->scheme) {
        snprintf(err, errlen, "key type not signed with here (%s)",
                 EVP_PKEY_get0_type_name(key) ? EVP_PKEY_get0_type_name(key) : "unknown");
        goto fail;
    }
    if (build_cert_msg(x, ctx) != 0 || RAND_bytes(x->ticket_key, sizeof x->ticket_key) != 1 ||
        !EVP_PKEY_up_ref(key)) {
        ERR_clear_error();
        snprintf(err, errlen, "cannot prepare the certificate message");
        goto fail;
    }
    x->key = key;
    if (x->sig_md) {
        x->sign = EVP_PKEY_CTX_new(key, NULL);
        int ok = x->sign && EVP_PKEY_sign_init(x->sign) == 1 &&
                 EVP_PKEY_CTX_set_signature_md(x->sign, x->sig_md) == 1;
        if (ok && x->rsa_pss)
            ok = EVP_PKEY_CTX_set_rsa_padding(x->sign, RSA_PKCS1_PSS_PADDING) == 1 &&
                 EVP_PKEY_CTX_set_rsa_pss_saltlen(x->sign, RSA_PSS_SALTLEN_DIGEST) == 1;
        if (!ok) {
            ERR_clear_error();
            snprintf(err, errlen, "cannot set up signing with the key");
            goto fail;
        }
    }
    if (st_tls_cert_end_point(leaf, x->end_point, &x->end_point_len) != 0) x->end_point_len = 0;
    return x;
fail:
    st_tlshs_ctx_unref(x);
    return NULL;
}

void st_tlshs_ctx_ref(st_tlshs_ctx *x)
{
    x->refs++;
}

void st_tlshs_ctx_unref(st_tlshs_ctx *x)
{
    if (!x || --x->refs > 0) return;
    EVP_PKEY_CTX_free(x->sign);
    EVP_PKEY_free(x->key);
    st_free(x->cert_msg);
    OPENSSL_cleanse(x, sizeof *x);
    st_free(x);
}

void st_tlshs_ctx_set_ticket_lifetime(st_tlshs_ctx *x, uint32_t seconds)
{
    x->ticket_lifetime = seconds > 604800 ? 604800 : seconds; /* §4.6.1: 7 days at most */
}

st_tlshs *st_tlshs_new(st_tlshs_ctx *x, int direct_tls)
{
    st_tlshs *h = st_calloc(1, sizeof *h);
    if (!h) return NULL;
    h->th = EVP_MD_CTX_new();
    h->scratch = EVP_MD_CTX_new();
    if (!h->th || !h->scratch || !scratch()) {
        EVP_MD_CTX_free(h->th);
        EVP_MD_CTX_free(h->scratch);
        st_free(h);
        return NULL;
    }
    h->x = x;
    st_tlshs_ctx_ref(x);
    h->direct_tls = direct_tls != 0;
    st_buf_init(&h->in, HDR + MAX_CT);
    return h;
}

void st_tlshs_free(st_tlshs *h)
{
    if (!h) return;
    EVP_MD_CTX_free(h->th);
    EVP_MD_CTX_free(h->scratch);
    st_tlsrec_free(h->hsrec);
    st_tlsrec_free(h->app);
    st_free(h->out);
    st_buf_free(&h->in);
    st_tlshs_ctx_unref(h->x);
    OPENSSL_cleanse(h, sizeof *h);
    st_free(h);
}

/* ---- the key schedule (§7.1) ---- */

static int hmac(st_tlshs *h, const unsigned char *key, size_t klen, const unsigned char *d,
                size_t n, unsigned char *out)
{
    return st_tls13_hmac(h->md, key, klen, d, n, out);
}

static int expand_label(st_tlshs *h, const unsigned char *secret, const char *label,
                        const unsigned char *ctx, size_t clen, unsigned char *out, size_t n)
{
    return st_tls13_expand_label(h->md, secret, label, ctx, clen, out, n);
}

/* Hash of the transcript so far, or of nothing (th NULL). */
static int snapshot(st_tlshs *h, EVP_MD_CTX *th, unsigned char *out)
{
    unsigned int l = 0;
    if (!th) return EVP_Digest("", 0, out, &l, h->md, NULL) == 1 ? 0 : -1;
    return EVP_MD_CTX_copy_ex(h->scratch, th) == 1 && EVP_DigestFinal_ex(h->scratch, out, &l) == 1
               ? 0
               : -1;
}

/* Derive-Secret(secret, label, messages) with the messages' hash given. */
static int derive_secret(st_tlshs *h, const unsigned char *secret, const char *label,
                         const unsigned char *hash, unsigned char *out)
{
    return expand_label(h, secret, label, hash, h->hl, out, h->hl);
}

static void set_suite(st_tlshs *h, const struct suite *s)
{
    h->s = s;
    h->md = s->sha384 ? sha384 : sha256;
    h->hl = s->sha384 ? 48 : 32;
}

/* ---- the ClientHello (§4.1.2) ---- */

typedef struct {
    const unsigned char *msg; /* the handshake message, header included */
    size_t len;
    const unsigned char *sid;
    size_t sid_len;
    const struct suite *suite;
    uint16_t group;
    const unsigned char *share;
    int sig_ok, alpn, psk_dhe;
    const unsigned char *psk_id, *binder;
    size_t psk_id_len, binder_len, binders_at; /* binders_at: offset in msg */
    uint32_t psk_age;
    const char *why; /* set when it is not ours */
} hello;

static int not_ours(hello *c, const char *why)
{
    c->why = why;
    return -1;
}

/* Walk an extension list: each entry checked against its end. */
static int parse_extensions(st_tlshs *h, hello *c, const unsigned char *p, const unsigned char *end)
{
    uint64_t seen = 0;
    int groups_x25519 = 0, groups_p256 = 0, versions = 0, have_share = 0;
    while (p < end) {
        if (end - p < 4) return not_ours(c, "truncated extension");
        size_t type = get16(p), len = get16(p + 2);
        const unsigned char *d = p + 4;
        if ((size_t)(end - d) < len) return not_ours(c, "truncated extension");
        p = d + len;
        if (type < 64) {
            if (seen & (UINT64_C(1) << type)) return not_ours(c, "extension sent twice");
            seen |= UINT64_C(1) << type;
        }
        if (seen & (UINT64_C(1) << EXT_PRE_SHARED_KEY) && type != EXT_PRE_SHARED_KEY)
            return not_ours(c, "pre_shared_key not last");
        switch (type) {
        case EXT_SUPPORTED_VERSIONS:
            if (len < 3 || d[0] != len - 1 || d[0] % 2)
                return not_ours(c, "bad supported_versions");
            for (size_t i = 1; i < len; i += 2)
                if (get16(d + i) == 0x0304) versions = 1;
            break;
        case EXT_SUPPORTED_GROUPS:
            if (len < 4 || get16(d) != len - 2 || len % 2)
                return not_ours(c, "bad supported_groups");
            for (size_t i = 2; i < len; i += 2) {
                if (get16(d + i) == GROUP_X25519) groups_x25519 = 1;
                if (get16(d + i) == GROUP_SECP256R1) groups_p256 = 1;
            }
            break;
        case EXT_KEY_SHARE: {
            if (len < 2 || get16(d) != len - 2) return not_ours(c, "bad key_share");
            int x = 0, e = 0;
            for (size_t i = 2; i < len;) {
                if (len - i < 4) return not_ours(c, "bad key_share");
                size_t g = get16(d + i), kl = get16(d + i + 2);
                const unsigned char *k = d + i + 4;
                if (kl == 0 || len - i - 4 < kl) return not_ours(c, "bad key_share");
                i += 4 + kl;
                if (g == GROUP_X25519 && x++ == 0 && kl != 32)
                    return not_ours(c, "bad X25519 share");
                if (g == GROUP_SECP256R1 && e++ == 0 && (kl != 65 || k[0] != 4))
                    return not_ours(c, "bad P-256 share");
                if (!c->share && (g == GROUP_X25519 || g == GROUP_SECP256R1)) {
                    c->group = (uint16_t)g;
                    c->share = k;
                }
            }
            if (x > 1 || e > 1) return not_ours(c, "a key share twice");
            have_share = 1;
            break;
        }
        case EXT_SIGNATURE_ALGORITHMS:
            if (len < 4 || get16(d) != len - 2 || len % 2)
                return not_ours(c, "bad signature_algorithms");
            for (size_t i = 2; i < len; i += 2)
                if (get16(d + i) == h->x->scheme) c->sig_ok = 1;
            break;
        case EXT_ALPN:
            if (len < 3 || get16(d) != len - 2) return not_ours(c, "bad ALPN");
            for (size_t i = 2; i < len;) {
                size_t l = d[i];
                if (l == 0 || len - i - 1 < l) return not_ours(c, "bad ALPN");
                if (l == 11 && memcmp(d + i + 1, "xmpp-client", 11) == 0) c->alpn = 1;
                i += 1 + l;
            }
            break;
        case EXT_SERVER_NAME:
            if (len < 2 || get16(d) != len - 2) return not_ours(c, "bad server_name");
            for (size_t i = 2; i < len;) {
                if (len - i < 3 || len - i - 3 < get16(d + i + 1))
                    return not_ours(c, "bad server_name");
                i += 3 + get16(d + i + 1);
            }
            break;
        case EXT_PSK_MODES:
            if (len < 2 || d[0] != len - 1) return not_ours(c, "bad psk_key_exchange_modes");
            for (size_t i = 1; i < len; i++)
                if (d[i] == 1) c->psk_dhe = 1;
            break;
        case EXT_PRE_SHARED_KEY: {
            /* identities<7..2^16-1>, binders<33..2^16-1> (§4.2.11) */
            if (len < 2) return not_ours(c, "bad pre_shared_key");
            size_t il = get16(d), ids = 0, bs = 0;
            if (il < 7 || len - 2 < il + 2) return not_ours(c, "bad pre_shared_key");
            for (size_t i = 2; i < 2 + il; ids++) {
                if (2 + il - i < 2) return not_ours(c, "bad pre_shared_key");
                size_t l = get16(d + i);
                if (l == 0 || 2 + il - i - 2 < l + 4) return not_ours(c, "bad pre_shared_key");
                if (!ids) {
                    c->psk_id = d + i + 2;
                    c->psk_id_len = l;
                    const unsigned char *a = d + i + 2 + l;
                    c->psk_age =
                        (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
                }
                i += 2 + l + 4;
            }
            const unsigned char *b = d + 2 + il;
            size_t bl = get16(b);
            if (bl < 33 || bl != len - 2 - il - 2) return not_ours(c, "bad pre_shared_key");
            c->binders_at = (size_t)(b - c->msg);
            for (size_t i = 2; i < 2 + bl; bs++) {
                size_t l = b[i];
                if (l < 32 || 2 + bl - i - 1 < l) return not_ours(c, "bad pre_shared_key");
                if (!bs) {
                    c->binder = b + i + 1;
                    c->binder_len = l;
                }
                i += 1 + l;
            }
            if (ids != bs) return not_ours(c, "identities and binders differ in number");
            break;
        }
        case EXT_EARLY_DATA:
            return not_ours(c, "early_data");
        case EXT_COOKIE:
            return not_ours(c, "cookie");
        case EXT_MAX_FRAGMENT_LENGTH:
            return not_ours(c, "max_fragment_length");
        default:
            break; /* others are not ours to answer: padding, status_request, ... */
        }
    }
    if (!versions) return not_ours(c, "no TLS 1.3 offered");
    if (!have_share || !c->share) return not_ours(c, "no X25519 or P-256 key share");
    if ((c->group == GROUP_X25519 && !groups_x25519) ||
        (c->group == GROUP_SECP256R1 && !groups_p256))
        return not_ours(c, "key share for a group not in supported_groups");
    if (c->psk_id && !(seen & (UINT64_C(1) << EXT_PSK_MODES)))
        return not_ours(c, "pre_shared_key without psk_key_exchange_modes");
    return 0;
}

/* Our order, as tls.c gives OpenSSL: AES-128-GCM (the cheapest with AES
 * instructions: SHA-256 has them too, SHA-384 not), ChaCha20, AES-256-GCM;
 * but ChaCha20 when the client puts it first, as clients without AES
 * instructions do (SSL_OP_PRIORITIZE_CHACHA). */
static const struct suite *choose_suite(const unsigned char *list, size_t n)
{
    static const int order[] = {0, 2, 1}; /* indexes into suites[] */
    const struct suite *first = NULL;
    int offered[3] = {0, 0, 0};
    for (size_t i = 0; i < n; i += 2)
        for (size_t k = 0; k < 3; k++)
            if (get16(list + i) == suites[k].id) {
                offered[k] = 1;
                if (!first) first = &suites[k];
            }
    if (first == &suites[2]) return first;
    for (size_t k = 0; k < 3; k++)
        if (offered[order[k]]) return &suites[order[k]];
    return NULL;
}

static int parse_hello(st_tlshs *h, hello *c, const unsigned char *m, size_t len)
{
    const unsigned char *p = m + 4, *end = m + len;
    c->msg = m;
    c->len = len;
    if (len < 4 + 2 + 32 + 1 || get16(p) != 0x0303)
        return not_ours(c, "legacy_version not TLS 1.2");
    p += 2 + 32;
    c->sid_len = *p++;
    c->sid = p;
    if (c->sid_len > 32 || (size_t)(end - p) < c->sid_len + 2) return not_ours(c, "bad session id");
    p += c->sid_len;
    size_t cs = get16(p);
    p += 2;
    if (cs < 2 || cs % 2 || (size_t)(end - p) < cs + 1) return not_ours(c, "bad cipher_suites");
    c->suite = choose_suite(p, cs);
    p += cs;
    if (!c->suite) return not_ours(c, "no TLS 1.3 suite of ours");
    size_t comp = *p++;
    if (comp != 1 || (size_t)(end - p) < 1 + 2 || p[0] != 0) return not_ours(c, "compression");
    p++;
    size_t el = get16(p);
    p += 2;
    if ((size_t)(end - p) != el) return not_ours(c, "extensions do not fill the message");
    return parse_extensions(h, c, p, end);
}

/* ---- tickets ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const unsigned char ticket_aad[] = "starling tlshs ticket 1";

/* Seal or open (enc = 1 / 0) a ticket body with the context's key. */
static int ticket_crypt(const st_tlshs_ctx *x, int enc, const unsigned char *iv,
                        const unsigned char *in, size_t n, unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l = 0, ok = c && EVP_CipherInit_ex(c, aes256gcm, NULL, x->ticket_key, iv, enc) == 1 &&
                    EVP_CipherUpdate(c, NULL, &l, ticket_aad, sizeof ticket_aad - 1) == 1 &&
                    EVP_CipherUpdate(c, out, &l, in, (int)n) == 1;
    if (ok && !enc) ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, 16, tag) == 1;
    ok = ok && EVP_CipherFinal_ex(c, out + l, &l) == 1;
    if (ok && enc) ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(c);
    ERR_clear_error();
    return ok ? 0 : -1;
}

/* The PSK in a ticket of ours fit for this handshake's hash, or -1 (the
 * client's PSK is then ignored and the handshake is a full one, §4.2.11). */
static int ticket_open(st_tlshs *h, const hello *c, unsigned char *psk)
{
    unsigned char pt[TICKET_PLAIN];
    const unsigned char *t = c->psk_id;
    if (c->psk_id_len != TICKET_LEN) return -1;
    if (ticket_crypt(h->x, 0, t, t + 12, TICKET_PLAIN, pt,
                     (unsigned char *)t + 12 + TICKET_PLAIN) != 0)
        return -1;
    uint64_t issued = 0;
    for (int i = 0; i < 8; i++)
        issued = issued << 8 | pt[3 + i];
    uint32_t lifetime =
        (uint32_t)pt[11] << 24 | (uint32_t)pt[12] << 16 | (uint32_t)pt[13] << 8 | pt[14];
    uint64_t now = now_ms();
    int ok = pt[0] == 1 && pt[1] == (h->s->id >> 8) && pt[2] == (h->s->id & 0xff) &&
             pt[19] == h->hl && now >= issued && now - issued <= (uint64_t)lifetime * 1000;
    if (ok) memcpy(psk, pt + 20, h->hl);
    OPENSSL_cleanse(pt, sizeof pt);
    return ok ? 0 : -1;
}

/* A NewSessionTicket (§4.6.1) from the resumption master secret. */
static size_t ticket_msg(st_tlshs *h, const unsigned char *res, unsigned char *m)
{
    static const unsigned char nonce[1] = {0}; /* one ticket per connection */
    unsigned char pt[TICKET_PLAIN] = {0}, rnd[4 + 12], *age_add = rnd;
    uint32_t life = h->x->ticket_lifetime;
    uint64_t issued = now_ms();
    randombytes_buf(rnd, sizeof rnd); /* getrandom: a third of RAND_bytes' time */
    memcpy(m + 4 + 4 + 4 + 2 + 2, rnd + 4, 12); /* the ticket's iv */
    pt[0] = 1;
    put16(pt + 1, h->s->id);
    for (int i = 0; i < 8; i++)
        pt[3 + i] = (unsigned char)(issued >> (56 - 8 * i));
    pt[11] = (unsigned char)(life >> 24);
    pt[12] = (unsigned char)(life >> 16);
    pt[13] = (unsigned char)(life >> 8);
    pt[14] = (unsigned char)life;
    memcpy(pt + 15, age_add, 4);
    pt[19] = (unsigned char)h->hl;
    if (expand_label(h, res, "resumption", nonce, 1, pt + 20, h->hl) != 0) return 0;
    unsigned char *p = m + 4;
    memcpy(p, pt + 11, 4); /* ticket_lifetime */
    memcpy(p + 4, age_add, 4);
    p[8] = 1;
    p[9] = nonce[0];
    put16(p + 10, TICKET_LEN);
    unsigned char *t = p + 12; /* iv (drawn above), body, tag */
    int e = ticket_crypt(h->x, 1, t, pt, TICKET_PLAIN, t + 12, t + 12 + TICKET_PLAIN);
    OPENSSL_cleanse(pt, sizeof pt);
    if (e != 0) return 0;
    put16(t + TICKET_LEN, 0); /* no extensions */
    size_t len = 4 + 4 + 1 + 1 + 2 + TICKET_LEN + 2;
    m[0] = HS_NEW_SESSION_TICKET;
    put24(m + 1, len);
    return 4 + len;
}

/* ---- the server flight ---- */

/* Our key share and the shared secret: X25519 (RFC 7748) or P-256.
 * 0; -2 when the client's share is refused (a point not on the curve, an
 * all-zero X25519 result: §4.2.8.2, §7.4.2); -1 on an internal error. */
static int key_exchange(const hello *c, unsigned char *priv, unsigned char *pub, size_t *pub_len,
                        unsigned char *shared)
{
    EVP_PKEY *ours = NULL, *peer = NULL;
    EVP_PKEY_CTX *d = NULL;
    size_t n = 32;
    int ok = 0, bad_share = 0;
    if (c->group == GROUP_X25519) {
        /* libsodium: the same arithmetic without OpenSSL's key objects
         * (65 us for both multiplications against 88 us); it refuses an
         * all-zero result (§7.4.2). Our public key comes from the Ed25519
         * base point table (x25519.h: 21 us against the ladder's 39). */
        *pub_len = 32;
        int e = st_x25519_public(pub, priv) != 0                 ? -1
                : crypto_scalarmult(shared, priv, c->share) != 0 ? -2
                                                                 : 0;
        OPENSSL_cleanse(priv, 32);
        return e;
    } else {
        unsigned char *enc = NULL;
        ours = EVP_EC_gen("P-256");
        if (!ours) goto out;
        *pub_len = EVP_PKEY_get1_encoded_public_key(ours, &enc);
        if (*pub_len != 65 || !enc) {
            OPENSSL_free(enc);
            goto out;
        }
        memcpy(pub, enc, 65);
        OPENSSL_free(enc);
        peer = EVP_PKEY_new();
        if (!peer || EVP_PKEY_copy_parameters(peer, ours) != 1) goto out;
        if (EVP_PKEY_set1_encoded_public_key(peer, c->share, 65) != 1) {
            EVP_PKEY_free(peer);
            peer = NULL;
            bad_share = 1;
            goto out;
        }
    }
    d = peer ? EVP_PKEY_CTX_new_from_pkey(NULL, ours, NULL) : NULL;
    ok = d && EVP_PKEY_derive_init(d) == 1 && EVP_PKEY_derive_set_peer(d, peer) == 1 &&
         EVP_PKEY_derive(d, shared, &n) == 1 && n == 32;
out:
    EVP_PKEY_CTX_free(d);
    EVP_PKEY_free(peer);
    EVP_PKEY_free(ours);
    ERR_clear_error();
    return ok ? 0 : bad_share ? -2 : -1;
}

/* CertificateVerify (§4.4.3) over the transcript hash so far. */
static size_t cert_verify(st_tlshs *h, unsigned char *m, size_t room)
{
    static const char ctxstr[] = "TLS 1.3, server CertificateVerify";
    unsigned char content[64 + sizeof ctxstr + MAX_HASH];
    memset(content, 0x20, 64);
    memcpy(content + 64, ctxstr, sizeof ctxstr); /* with its 0 byte */
    if (snapshot(h, h->th, content + 64 + sizeof ctxstr) != 0) return 0;
    size_t clen = 64 + sizeof ctxstr + h->hl, sig = room - 8;
    int ok;
    if (h->x->sign) {
        /* ECDSA and RSA-PSS sign the content's digest (§4.4.3) */
        unsigned char dg[EVP_MAX_MD_SIZE];
        unsigned int dl = 0;
        ok = EVP_Digest(content, clen, dg, &dl, h->x->sig_md, NULL) == 1 &&
             EVP_PKEY_sign(h->x->sign, m + 8, &sig, dg, dl) == 1;
    } else { /* Ed25519 signs the content itself */
        EVP_MD_CTX *mc = EVP_MD_CTX_new();
        ok = mc && EVP_DigestSignInit(mc, NULL, NULL, NULL, h->x->key) == 1 &&
             EVP_DigestSign(mc, m + 8, &sig, content, clen) == 1;
        EVP_MD_CTX_free(mc);
    }
    ok = ok && sig < 65536;
    ERR_clear_error();
    if (!ok) return 0;
    m[0] = HS_CERTIFICATE_VERIFY;
    put24(m + 1, 4 + sig);
    put16(m + 4, h->x->scheme);
    put16(m + 6, sig);
    return 8 + sig;
}

static int add(st_tlshs *h, const unsigned char *m, size_t n)
{
    return EVP_DigestUpdate(h->th, m, n) == 1 ? 0 : -1;
}

/* Everything from the ServerHello to our Finished into h->out, and the
 * secrets for what follows. 0; -2 when the client's key share is refused;
 * -1 on an internal failure (nothing was sent either way). */
static int build_flight(st_tlshs *h, const hello *c, const unsigned char *psk)
{
    unsigned char pub[65], shared[32], secret[MAX_HASH], derived[MAX_HASH], empty[MAX_HASH];
    unsigned char hash[MAX_HASH], c_hs[MAX_HASH], s_hs[MAX_HASH], zeros[MAX_HASH] = {0};
    unsigned char fk[MAX_HASH];
    size_t pub_len = 0, n = 0;
    size_t cap = 6 + 18 + (psk ? 0 : h->x->cert_msg_len + 8 + 1024) + 4 + MAX_HASH;
    int ok = 0;
    unsigned char *plain = NULL;
    unsigned char rnd[32 + 32]; /* the ServerHello's random, an X25519 key */
    randombytes_buf(rnd, sizeof rnd); /* the kernel's CSPRNG, as OpenSSL's seed is */
    int kx = key_exchange(c, rnd + 32, pub, &pub_len, shared);
    if (kx != 0) return kx;

    /* ServerHello (§4.1.3) in its record */
    unsigned char sh[HDR + 4 + 2 + 32 + 1 + 32 + 2 + 1 + 2 + 6 + 8 + 65 + 6];
    unsigned char *p = sh + HDR + 4;
    put16(p, 0x0303);
    p += 2;
    memcpy(p, rnd, 32);
    p += 32;
    *p++ = (unsigned char)c->sid_len;
    memcpy(p, c->sid, c->sid_len);
    p += c->sid_len;
    put16(p, h->s->id);
    p += 2;
    *p++ = 0;
    unsigned char *ext = p;
    p += 2;
    put16(p, EXT_SUPPORTED_VERSIONS);
    put16(p + 2, 2);
    put16(p + 4, 0x0304);
    p += 6;
    put16(p, EXT_KEY_SHARE);
    put16(p + 2, 4 + pub_len);
    put16(p + 4, c->group);
    put16(p + 6, pub_len);
    memcpy(p + 8, pub, pub_len);
    p += 8 + pub_len;
    if (psk) {
        put16(p, EXT_PRE_SHARED_KEY);
        put16(p + 2, 2);
        put16(p + 4, 0); /* selected_identity */
        p += 6;
    }
    put16(ext, (size_t)(p - ext - 2));
    size_t sh_len = (size_t)(p - sh);
    sh[0] = CT_HANDSHAKE;
    sh[1] = 3;
    sh[2] = 3;
    put16(sh + 3, sh_len - HDR);
    sh[HDR] = HS_SERVER_HELLO;
    put24(sh + HDR + 1, sh_len - HDR - 4);

    if (EVP_DigestInit_ex(h->th, h->md, NULL) != 1 || add(h, c->msg, c->len) != 0 ||
        add(h, sh + HDR, sh_len - HDR) != 0)
        goto out;

    /* §7.1 */
    if (snapshot(h, NULL, empty) != 0 ||
        hmac(h, zeros, h->hl, psk ? psk : zeros, h->hl, secret) != 0 ||
        derive_secret(h, secret, "derived", empty, derived) != 0 ||
        hmac(h, derived, h->hl, shared, 32, secret) != 0 || snapshot(h, h->th, hash) != 0 ||
        derive_secret(h, secret, "c hs traffic", hash, c_hs) != 0 ||
        derive_secret(h, secret, "s hs traffic", hash, s_hs) != 0 ||
        derive_secret(h, secret, "derived", empty, derived) != 0 ||
        hmac(h, derived, h->hl, zeros, h->hl, h->master) != 0)
        goto out;
    h->hsrec = st_tlsrec_new(h->s->id, c_hs, s_hs, h->hl);
    if (!h->hsrec) goto out;

    /* EncryptedExtensions, Certificate, CertificateVerify, Finished */
    plain = st_malloc(cap);
    if (!plain) goto out;
    plain[n] = HS_ENCRYPTED_EXTENSIONS;
    if (h->alpn) {
        put24(plain + 1, 2 + 4 + 2 + 1 + 11);
        put16(plain + 4, 4 + 2 + 1 + 11);
        put16(plain + 6, EXT_ALPN);
        put16(plain + 8, 2 + 1 + 11);
        put16(plain + 10, 1 + 11);
        plain[12] = 11;
        memcpy(plain + 13, "xmpp-client", 11);
        n = 24;
    } else {
        put24(plain + 1, 2);
        put16(plain + 4, 0);
        n = 6;
    }
    if (add(h, plain, n) != 0) goto out;
    if (!psk) {
        memcpy(plain + n, h->x->cert_msg, h->x->cert_msg_len);
        if (add(h, plain + n, h->x->cert_msg_len) != 0) goto out;
        n += h->x->cert_msg_len;
        size_t cv = cert_verify(h, plain + n, cap - n - 4 - MAX_HASH);
        if (!cv || add(h, plain + n, cv) != 0) goto out;
        n += cv;
    }
    plain[n] = HS_FINISHED;
    put24(plain + n + 1, h->hl);
    if (snapshot(h, h->th, hash) != 0 ||
        expand_label(h, s_hs, "finished", NULL, 0, fk, h->hl) != 0 ||
        hmac(h, fk, h->hl, hash, h->hl, plain + n + 4) != 0 || add(h, plain + n, 4 + h->hl) != 0)
        goto out;
    n += 4 + h->hl;
    /* what follows our Finished (§7.1): the client's Finished, and our
     * application key, which protects all we send from now on (§A.2),
     * alerts included */
    if (snapshot(h, h->th, hash) != 0 ||
        expand_label(h, c_hs, "finished", NULL, 0, fk, h->hl) != 0 ||
        hmac(h, fk, h->hl, hash, h->hl, h->c_finished) != 0 ||
        derive_secret(h, h->master, "c ap traffic", hash, c_hs) != 0 ||
        derive_secret(h, h->master, "s ap traffic", hash, s_hs) != 0 ||
        !(h->app = st_tlsrec_new(h->s->id, c_hs, s_hs, h->hl)) ||
        derive_secret(h, h->master, "exp master", hash, secret) != 0 ||
        derive_secret(h, secret, "EXPORTER-Channel-Binding", empty, derived) != 0 ||
        expand_label(h, derived, "exporter", empty, h->hl, h->exporter, 32) != 0)
        goto out;
    h->have_exporter = 1;

    /* on the wire: ServerHello, the compatibility change_cipher_spec
     * (§D.4: when the client sent a session id), the protected records */
    static const unsigned char ccs[] = {CT_CCS, 3, 3, 0, 1, 1};
    size_t records = (n + MAX_PLAIN - 1) / MAX_PLAIN;
    h->out = st_malloc(sh_len + sizeof ccs + n + records * (HDR + 17));
    if (!h->out) goto out;
    memcpy(h->out, sh, sh_len);
    h->out_len = sh_len;
    if (c->sid_len) {
        memcpy(h->out + h->out_len, ccs, sizeof ccs);
        h->out_len += sizeof ccs;
    }
    for (size_t off = 0; off < n; off += MAX_PLAIN) {
        size_t k = n - off < MAX_PLAIN ? n - off : MAX_PLAIN;
        unsigned char *rec = h->out + h->out_len;
        memcpy(rec + HDR, plain + off, k);
        size_t len = st_tlsrec_seal(h->hsrec, rec, k, CT_HANDSHAKE);
        if (!len) goto out;
        h->out_len += len;
    }
    ok = 1;
out:
    if (plain) {
        OPENSSL_cleanse(plain, cap);
        st_free(plain);
    }
    OPENSSL_cleanse(shared, sizeof shared);
    OPENSSL_cleanse(secret, sizeof secret);
    OPENSSL_cleanse(derived, sizeof derived);
    OPENSSL_cleanse(c_hs, sizeof c_hs);
    OPENSSL_cleanse(s_hs, sizeof s_hs);
    OPENSSL_cleanse(fk, sizeof fk);
    return ok ? 0 : -1;
}

/* ---- sending ---- */

/* Push out what is left of our flight: 1 when all went, 0 when the socket
 * is full, -1 on error. */
static int flush_out(st_tlshs *h, int fd)
{
    while (h->out_off < h->out_len) {
        ssize_t k = send(fd, h->out + h->out_off, h->out_len - h->out_off, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
            return -1;
        }
        h->out_off += (size_t)k;
    }
    st_free(h->out);
    h->out = NULL;
    h->out_len = h->out_off = 0;
    return 1;
}

static int failed(st_tlshs *h, const char *why)
{
    if (!h->error) h->error = why;
    h->state = S_OVER;
    return ST_TLSHS_FAILED;
}

/* A fatal alert (§6.2): in the clear before our ServerHello, under our
 * handshake key after it. Best effort: the connection ends either way. */
static int fatal(st_tlshs *h, int fd, int alert, const char *why)
{
    unsigned char rec[HDR + 2 + 1 + 16] = {CT_ALERT, 3, 3, 0, 2, 2, (unsigned char)alert};
    size_t len = HDR + 2;
    st_tlsrec *keys = h->app ? h->app : h->hsrec; /* after our Finished: the application key */
    if (keys) {
        rec[HDR] = 2;
        rec[HDR + 1] = (unsigned char)alert;
        len = st_tlsrec_seal(keys, rec, 2, CT_ALERT);
    }
    if (len && h->out_off == h->out_len && send(fd, rec, len, MSG_NOSIGNAL) < 0) {
        /* nothing more to do: the connection is over */
    }
    return failed(h, why);
}

/* ---- the steps ---- */

/* Check a ticket-based PSK (§4.2.11): 1 resumed (psk set), 0 full
 * handshake, -1 when the binder does not verify (decrypt_error). */
static int check_psk(st_tlshs *h, const hello *c, unsigned char *psk)
{
    unsigned char early[MAX_HASH], empty[MAX_HASH], key[MAX_HASH], hash[MAX_HASH], want[MAX_HASH];
    unsigned char zeros[MAX_HASH] = {0};
    unsigned int l = 0;
    if (!c->psk_id || !c->psk_dhe || ticket_open(h, c, psk) != 0) return 0;
    int r = -1;
    if (c->binder_len == h->hl && EVP_Digest(c->msg, c->binders_at, hash, &l, h->md, NULL) == 1 &&
        snapshot(h, NULL, empty) == 0 && hmac(h, zeros, h->hl, psk, h->hl, early) == 0 &&
        derive_secret(h, early, "res binder", empty, key) == 0 &&
        expand_label(h, key, "finished", NULL, 0, key, h->hl) == 0 &&
        hmac(h, key, h->hl, hash, h->hl, want) == 0 && CRYPTO_memcmp(want, c->binder, h->hl) == 0)
        r = 1;
    OPENSSL_cleanse(early, sizeof early);
    OPENSSL_cleanse(key, sizeof key);
    if (r < 0) OPENSSL_cleanse(psk, MAX_HASH);
    return r;
}

static int on_hello(st_tlshs *h, int fd)
{
    unsigned char *buf = scratch(), psk[MAX_HASH];
    if (!buf) return failed(h, "out of memory");
    ssize_t k = recv(fd, buf, HDR + MAX_PLAIN, MSG_PEEK);
    if (k < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return ST_TLSHS_READ;
        return failed(h, "recv failed");
    }
    if (k == 0) return failed(h, "connection closed before the ClientHello");
    h->error = "ClientHello not all here";
    if (k < HDR + 4 || buf[0] != CT_HANDSHAKE || buf[1] != 3) return ST_TLSHS_OPENSSL;
    size_t len = get16(buf + 3);
    if ((size_t)k < HDR + len || len > MAX_PLAIN) return ST_TLSHS_OPENSSL;
    h->error = "ClientHello not alone in its record";
    if (buf[HDR] != HS_CLIENT_HELLO || get24(buf + HDR + 1) + 4 != len) return ST_TLSHS_OPENSSL;
    hello c;
    memset(&c, 0, sizeof c);
    if (parse_hello(h, &c, buf + HDR, len) != 0) {
        h->error = c.why;
        return ST_TLSHS_OPENSSL;
    }
    set_suite(h, c.suite);
    int resumed = check_psk(h, &c, psk);
    if (resumed == 0 && !c.sig_ok) {
        h->error = "no signature scheme for our key";
        return ST_TLSHS_OPENSSL;
    }
    h->error = NULL;
    h->resumed = resumed > 0;
    h->alpn = h->direct_tls && c.alpn;
    /* Ours from here: take the ClientHello off the socket (the bytes just
     * peeked, so they land where they already are). */
    if (recv(fd, buf, HDR + len, 0) != (ssize_t)(HDR + len)) return failed(h, "recv failed");
    if (resumed < 0) return fatal(h, fd, AL_DECRYPT_ERROR, "PSK binder does not verify");
    int e = build_flight(h, &c, h->resumed ? psk : NULL);
    OPENSSL_cleanse(psk, sizeof psk);
    if (e == -2) return fatal(h, fd, AL_ILLEGAL_PARAMETER, "client key share refused");
    if (e != 0) return fatal(h, fd, AL_INTERNAL_ERROR, "cannot build the server flight");
    h->state = S_FLIGHT;
    return ST_TLSHS_WRITE; /* step() sends it now */
}

/* The client's Finished (§4.4.4) is whole in h->fin: check it, derive what
 * the record layer needs, send our ticket. */
static int on_client_finished(st_tlshs *h, int fd, const unsigned char *more, size_t n_more)
{
    unsigned char hash[MAX_HASH], res[MAX_HASH], m[4 + 12 + 2 + TICKET_LEN + 2];
    /* its type and length were checked as it came in (on_record) */
    if (CRYPTO_memcmp(h->fin + 4, h->c_finished, h->hl) != 0)
        return fatal(h, fd, AL_DECRYPT_ERROR, "bad client Finished");
    if (add(h, h->fin, 4 + h->hl) != 0 || snapshot(h, h->th, hash) != 0 ||
        derive_secret(h, h->master, "res master", hash, res) != 0)
        return fatal(h, fd, AL_INTERNAL_ERROR, "key schedule failed");
    size_t n = ticket_msg(h, res, m);
    OPENSSL_cleanse(res, sizeof res);
    OPENSSL_cleanse(h->master, sizeof h->master);
    st_tlsrec_free(h->hsrec);
    h->hsrec = NULL;
    /* Sent at once: some clients (GnuTLS's) wait for it only briefly
     * after the handshake. Without one the client only cannot resume. */
    int e = n ? st_tlsrec_write_handshake(h->app, fd, m, n) : 0;
    OPENSSL_cleanse(m, sizeof m);
    if (e != 0) return failed(h, "send failed");
    if (n_more && st_tlsrec_preload(h->app, more, n_more) != 0) return failed(h, "out of memory");
    h->state = S_DONE;
    return ST_TLSHS_DONE;
}

/* One record of the client's second flight, complete at rec. 1 when it
 * completed the Finished, 0 to go on, or a FAILED result (< 0 as -r). */
static int on_record(st_tlshs *h, int fd, unsigned char *rec, size_t ct, int *result)
{
    if (h->fin_len && rec[0] != CT_DATA) {
        *result = fatal(h, fd, AL_UNEXPECTED_MESSAGE, "record inside a fragmented Finished");
        return -1;
    }
    switch (rec[0]) {
    case CT_CCS:
        /* §5: dropped, if it is the one byte 1 */
        if (ct != 1 || rec[HDR] != 1) {
            *result = fatal(h, fd, AL_UNEXPECTED_MESSAGE, "bad change_cipher_spec");
            return -1;
        }
        return 0;
    case CT_ALERT:
        *result = failed(h, "peer sent an alert");
        return -1;
    case CT_DATA:
        break;
    default:
        *result = fatal(h, fd, AL_UNEXPECTED_MESSAGE, "unprotected record after the ServerHello");
        return -1;
    }
    int type = 0;
    size_t n = 0;
    int o = st_tlsrec_open(h->hsrec, rec, ct, &type, &n);
    if (o == -1) {
        *result = fatal(h, fd, AL_BAD_RECORD_MAC, "record does not authenticate");
        return -1;
    }
    if (o == -3) {
        *result = fatal(h, fd, AL_RECORD_OVERFLOW, "record plaintext over 2^14 + 1 bytes");
        return -1;
    }
    if (o != 0) {
        *result = fatal(h, fd, AL_UNEXPECTED_MESSAGE, "record without a content type");
        return -1;
    }
    if (type == CT_ALERT) {
        *result = failed(h, "peer sent an alert");
        return -1;
    }
    if (type != CT_HANDSHAKE || n == 0) {
        *result = fatal(h, fd, AL_UNEXPECTED_MESSAGE, "expected the client Finished");
        return -1;
    }
    /* the Finished, perhaps across records: its type and length are
     * checked as soon as they are in */
    const unsigned char *p = rec + HDR;
    for (size_t i = 0; i < n; i++) {
        if (h->fin_len == 4 + h->hl) {
            /* §5.1: a message before a key change ends its record */
            *result = fatal(h, fd, AL_UNEXPECTED_MESSAGE, "data after the client Finished");
            return -1;
        }
        h->fin[h->fin_len++] = p[i];
        if (h->fin_len == 1 && h->fin[0] != HS_FINISHED) {
            *result = fatal(h, fd, AL_UNEXPECTED_MESSAGE, "expected the client Finished");
            return -1;
        }
        if (h->fin_len == 4 && get24(h->fin + 1) != h->hl) {
            *result = fatal(h, fd, AL_DECODE_ERROR, "client Finished of the wrong length");
            return -1;
        }
    }
    return h->fin_len == 4 + h->hl ? 1 : 0;
}

/* The client's second flight, up to its Finished. At most one record's
 * worth is read at a time, so what comes after the Finished (the client's
 * first application data) fits the record layer's input buffer. */
static int on_second_flight(st_tlshs *h, int fd)
{
    unsigned char *buf = scratch();
    if (!buf) return failed(h, "out of memory");
    size_t have = h->in.len;
    if (have) memcpy(buf, h->in.data, have);
    ssize_t k = recv(fd, buf + have, HDR + MAX_CT - have, 0);
    if (k < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return ST_TLSHS_READ;
        return failed(h, "recv failed");
    }
    if (k == 0) return failed(h, "connection closed during the handshake");
    st_buf_reset(&h->in);
    size_t total = have + (size_t)k, off = 0;
    int result = ST_TLSHS_READ;
    while (total - off >= HDR) {
        unsigned char *rec = buf + off;
        size_t ct = get16(rec + 3);
        if (ct > MAX_CT) return fatal(h, fd, AL_RECORD_OVERFLOW, "record over 2^14 + 256 bytes");
        if (total - off < HDR + ct) break;
        off += HDR + ct;
        int r = on_record(h, fd, rec, ct, &result);
        if (r < 0) return result;
        if (r == 1) {
            st_buf_free(&h->in);
            return on_client_finished(h, fd, buf + off, total - off);
        }
    }
    if (total > off && st_buf_append(&h->in, buf + off, total - off) != 0)
        return failed(h, "out of memory");
    return ST_TLSHS_READ;
}

int st_tlshs_step(st_tlshs *h, int fd)
{
    switch (h->state) {
    case S_HELLO: {
        int r = on_hello(h, fd);
        if (r != ST_TLSHS_WRITE || h->state != S_FLIGHT) return r;
    } /* fall through: send the flight at once */
    /* fall through */
    case S_FLIGHT: {
        int f = flush_out(h, fd);
        if (f < 0) return failed(h, "send failed");
        if (f == 0) return ST_TLSHS_WRITE;
        h->state = S_FINISHED;
        /* The client's Finished is a round trip away: a recv now would
         * only say EAGAIN. The caller waits for the socket. */
        return ST_TLSHS_READ;
    }
    case S_FINISHED:
        return on_second_flight(h, fd);
    case S_DONE:
        return ST_TLSHS_DONE;
    default:
        return ST_TLSHS_FAILED;
    }
}

st_tlsrec *st_tlshs_finish(st_tlshs *h)
{
    st_tlsrec *r = h->state == S_DONE ? h->app : NULL;
    if (r) h->app = NULL;
    return r;
}

int st_tlshs_exporter(const st_tlshs *h, unsigned char out[32])
{
    if (h->state != S_DONE || !h->have_exporter) return -1;
    memcpy(out, h->exporter, 32);
    return 0;
}

int st_tlshs_server_end_point(const st_tlshs *h, unsigned char out[64], size_t *len)
{
    if (h->state != S_DONE || !h->x->end_point_len) return -1;
    memcpy(out, h->x->end_point, h->x->end_point_len);
    *len = h->x->end_point_len;
    return 0;
}

int st_tlshs_resumed(const st_tlshs *h)
{
    return h->resumed;
}

const char *st_tlshs_cipher(const st_tlshs *h)
{
    return h->s && h->state != S_HELLO ? h->s->name : NULL;
}

const char *st_tlshs_alpn(const st_tlshs *h)
{
    return h->alpn ? "xmpp-client" : NULL;
}

const char *st_tlshs_error(const st_tlshs *h)
{
    return h->error;
}
