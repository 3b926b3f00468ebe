/* tls.c - OpenSSL 3 server contexts, the first-start self-signed
 * certificate, and channel bindings for SCRAM-*-PLUS (API in server/tls.h,
 * design in docs/internals/tls.md).
 *
 * Policy in one place: TLS 1.2 or newer; for TLS 1.2 only ECDHE key exchange
 * with AEAD ciphers (forward secrecy, no CBC padding oracles); no
 * renegotiation (a peer-triggered CPU sink with a history of bugs); no
 * compression (CRIME); session tickets on, so reconnecting mobile clients
 * skip the full handshake; SSL_MODE_RELEASE_BUFFERS, because most XMPP
 * connections are idle most of the time and the 2 x 16 KiB record buffers
 * per connection would otherwise dominate memory at scale. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <idna.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include "starling/alloc.h"
#include "server/tls.h"
#include "server/tlshs.h"
#include "server/tlsrec.h"

struct st_tls_ctx {
    SSL_CTX *ctx;     /* current; one reference owned by us */
    st_tlshs_ctx *hs; /* our TLS 1.3 handshake for it, or NULL (tlshs.h) */
    char hs_why[160]; /* why hs is NULL */
};

#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
/* In our order (server preference): AES-128-GCM first, the cheapest where
 * the CPU has AES instructions (its SHA-256 has them too, SHA-384 not);
 * ChaCha20 when the client lists it first (SSL_OP_PRIORITIZE_CHACHA),
 * as clients without AES instructions do. tlshs.c chooses the same way. */
#define TLS13_SUITES "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
#define TLS_GROUPS "X25519:P-256:P-384"
#define CERT_DAYS 3652 /* ten years, leap days included */

/* ex_data slot marking SSLs accepted on a direct-TLS (XEP-0368) port. */
static int direct_tls_idx = -1;

/* "what: reason" from the OpenSSL error queue, which is then cleared so
 * the next failure does not report this one. */
static void tls_err(char *err, size_t errlen, const char *what, const char *path)
{
    unsigned long e = ERR_peek_last_error();
    char reason[256] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    if (path)
        snprintf(err, errlen, "%s %s: %s", what, path, e ? reason : "failed");
    else
        snprintf(err, errlen, "%s: %s", what, e ? reason : "failed");
}

/* XEP-0368: direct TLS clients may offer ALPN "xmpp-client". Select it
 * when offered. COMPAT: a client offering only other protocols is let in
 * without ALPN rather than failed with no_application_protocol; XML
 * framing tells us soon enough whether it speaks XMPP. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char proto[] = "\x0bxmpp-client";
    unsigned char *sel = NULL;
    if (!SSL_get_ex_data(ssl, direct_tls_idx)) return SSL_TLSEXT_ERR_NOACK;
    if (SSL_select_next_proto(&sel, outlen, proto, sizeof proto - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* SNI: one certificate serves every host for now (its SAN lists them all),
 * so any name is accepted. Per-host certificates would switch SSL_CTX here. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *ctx_build(const char *cert_path, const char *key_path, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_err(err, errlen, "SSL_CTX_new", NULL);
        return NULL;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) ||
        !SSL_CTX_set_ciphersuites(ctx, TLS13_SUITES) ||
        !SSL_CTX_set1_groups_list(ctx, TLS_GROUPS)) {
        tls_err(err, errlen, "TLS policy", NULL);
        goto fail;
    }
    /* IGNORE_UNEXPECTED_EOF: a client vanishing without close_notify reads
     * as a plain EOF; XMPP's own framing detects truncation. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_PRIORITIZE_CHACHA);
    SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    if (!SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"starling", 8)) {
        tls_err(err, errlen, "session id context", NULL);
        goto fail;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* c2s authenticates with SASL */
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    /* TLS 1.3 connections leave OpenSSL after the handshake (tlsrec.h) */
    if (st_tlsrec_prepare_ctx(ctx) != 0) {
        tls_err(err, errlen, "TLS record layer", NULL);
        goto fail;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);

    if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1) {
        tls_err(err, errlen, "cannot load certificate", cert_path);
        goto fail;
    }
    /* use_PrivateKey already compares the key with the certificate; name
     * that case plainly, it is the usual mistake after renewing a cert. */
    int loaded = SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) == 1;
    if (!loaded && ERR_GET_REASON(ERR_peek_last_error()) != X509_R_KEY_VALUES_MISMATCH) {
        tls_err(err, errlen, "cannot load private key", key_path);
        goto fail;
    }
    if (!loaded || SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "private key %s does not match certificate %s", key_path, cert_path);
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

st_tls_ctx *st_tls_ctx_new(const char *cert_path, const char *key_path, char *err, size_t errlen)
{
    st_tls_ctx *t = NULL;
    if (direct_tls_idx < 0) {
        direct_tls_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        if (direct_tls_idx < 0) {
            tls_err(err, errlen, "SSL_get_ex_new_index", NULL);
            return NULL;
        }
    }
    t = st_calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    t->ctx = ctx_build(cert_path, key_path, err, errlen);
    if (!t->ctx) goto fail;
    t->hs = st_tlshs_ctx_new(t->ctx, t->hs_why, sizeof t->hs_why);
    return t;
fail:
    st_free(t);
    return NULL;
}

int st_tls_ctx_reload(st_tls_ctx *t, const char *cert_path, const char *key_path, char *err,
                      size_t errlen)
{
    SSL_CTX *n = ctx_build(cert_path, key_path, err, errlen);
    if (!n) return -1;
    /* Connections made from the old context hold their own references
     * (SSL_new takes one); this drops only ours. */
    SSL_CTX_free(t->ctx);
    t->ctx = n;
    /* handshakes under way keep their own reference to the old one */
    st_tlshs_ctx_unref(t->hs);
    t->hs = st_tlshs_ctx_new(n, t->hs_why, sizeof t->hs_why);
    return 0;
}

void st_tls_ctx_free(st_tls_ctx *t)
{
    if (!t) return;
    SSL_CTX_free(t->ctx);
    st_tlshs_ctx_unref(t->hs);
    st_free(t);
}

SSL_CTX *st_tls_ctx_get(const st_tls_ctx *t)
{
    return t->ctx;
}

st_tlshs *st_tls_new_hs(st_tls_ctx *t, int direct_tls)
{
    return t->hs ? st_tlshs_new(t->hs, direct_tls) : NULL;
}

const char *st_tls_hs_unavailable(const st_tls_ctx *t)
{
    return t->hs ? NULL : t->hs_why;
}

SSL *st_tls_new_ssl(st_tls_ctx *t, int fd, int direct_tls)
{
    SSL *ssl = SSL_new(t->ctx);
    if (!ssl) goto fail;
    if (fd >= 0 && SSL_set_fd(ssl, fd) != 1) goto fail;
    if (direct_tls && SSL_set_ex_data(ssl, direct_tls_idx, (void *)1) != 1) goto fail;
    SSL_set_accept_state(ssl);
    return ssl;
fail:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}

/* ---- first-start certificate ---- */

/* mkdir -p for the directory part of path; directories we create are 0700
 * (the key lives there). */
static int make_parent_dirs(const char *path, char *err, size_t errlen)
{
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) {
        snprintf(err, errlen, "path too long: %s", path);
        return -1;
    }
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0; /* current directory or / */
    *slash = '\0';
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
            return -1;
        }
        *p = c;
        if (!c) break;
    }
    return 0;
}

/* Write PEM through a temporary file renamed into place, so a crash never
 * leaves a half-written key behind. mkstemp creates the file 0600. */
static int write_pem(const char *path, EVP_PKEY *key, X509 *cert, mode_t mode, char *err,
                     size_t errlen)
{
    char tmp[4096];
    int fd = -1, ok = 0;
    BIO *bio = NULL;
    if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "path too long: %s", path);
        return -1;
    }
    fd = mkstemp(tmp);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    if (fchmod(fd, mode) != 0) {
        snprintf(err, errlen, "cannot chmod %s: %s", tmp, strerror(errno));
        goto fail;
    }
    bio = BIO_new_fd(fd, BIO_NOCLOSE);
    if (!bio) goto ssl_fail;
    if (key ? !PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)
            : !PEM_write_bio_X509(bio, cert))
        goto ssl_fail;
    if (BIO_flush(bio) != 1) goto ssl_fail;
    if (fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    ok = 1;
    goto fail;
ssl_fail:
    tls_err(err, errlen, "cannot write", path);
fail:
    BIO_free(bio);
    if (fd >= 0) close(fd);
    if (!ok) unlink(tmp);
    return ok ? 0 : -1;
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &v3, nid, value);
    if (!ext) return -1;
    int r = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return r == 1 ? 0 : -1;
}

/* subjectAltName: an iPAddress for IP-literal hosts, else a dNSName in
 * its A-label (IDNA) form, which is what clients compare against. */
static int add_san(X509 *x, const char *const *hosts, size_t n, char *err, size_t errlen)
{
    GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
    int ok = 0;
    if (!names) goto oom;
    for (size_t i = 0; i < n; i++) {
        unsigned char ip[16];
        int iplen = 0;
        char lit[64];
        const char *h = hosts[i];
        size_t hl = strlen(h);
        /* "[::1]" as an XMPP domain is an IPv6 literal */
        if (hl > 2 && hl < sizeof lit && h[0] == '[' && h[hl - 1] == ']') {
            snprintf(lit, sizeof lit, "%.*s", (int)(hl - 2), h + 1);
            if (inet_pton(AF_INET6, lit, ip) == 1) iplen = 16;
        } else if (inet_pton(AF_INET, h, ip) == 1) {
            iplen = 4;
        } else if (inet_pton(AF_INET6, h, ip) == 1) {
            iplen = 16;
        }
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_STRING *s = iplen ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
        if (!gn || !s) {
            GENERAL_NAME_free(gn);
            ASN1_STRING_free(s);
            goto oom;
        }
        if (iplen) {
            if (!ASN1_STRING_set(s, ip, iplen)) goto gn_oom;
            GENERAL_NAME_set0_value(gn, GEN_IPADD, s);
        } else {
            char *ace = NULL;
            if (idna_to_ascii_8z(h, &ace, 0) != IDNA_SUCCESS) {
                free(ace);
                GENERAL_NAME_free(gn);
                ASN1_STRING_free(s);
                snprintf(err, errlen, "host '%s' has no IDNA form for the certificate", h);
                goto fail;
            }
            int r = ASN1_STRING_set(s, ace, (int)strlen(ace));
            free(ace); /* libidn allocates with malloc */
            if (!r) goto gn_oom;
            GENERAL_NAME_set0_value(gn, GEN_DNS, s);
        }
        if (!sk_GENERAL_NAME_push(names, gn)) {
            GENERAL_NAME_free(gn);
            goto oom;
        }
        continue;
    gn_oom:
        GENERAL_NAME_free(gn);
        ASN1_STRING_free(s);
        goto oom;
    }
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, 0) != 1) goto oom;
    ok = 1;
    goto fail;
oom:
    tls_err(err, errlen, "subjectAltName", NULL);
fail:
    GENERAL_NAMES_free(names);
    return ok ? 0 : -1;
}

static X509 *make_cert(EVP_PKEY *key, const char *const *hosts, size_t n, char *err, size_t errlen)
{
    X509 *x = X509_new();
    BIGNUM *bn = NULL;
    unsigned char serial[16];
    if (!x) goto ssl_fail;
    if (!X509_set_version(x, 2)) goto ssl_fail; /* v3 */
    /* 127 random bits, positive and non-zero (RFC 5280 §4.1.2.2) */
    if (RAND_bytes(serial, sizeof serial) != 1) goto ssl_fail;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    if (!(bn = BN_bin2bn(serial, sizeof serial, NULL)) ||
        !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
        goto ssl_fail;
    /* an hour of slack for clients whose clocks run behind */
    if (!X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_time_adj_ex(X509_getm_notAfter(x), CERT_DAYS, 0, NULL))
        goto ssl_fail;
    if (!X509_set_pubkey(x, key)) goto ssl_fail;
    X509_NAME *name = X509_get_subject_name(x);
    /* CN is limited to 64 characters (RFC 5280 ub-common-name); a longer
     * name is still in the SAN, which is what clients check. */
    if (strlen(hosts[0]) <= 64 &&
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)hosts[0], -1,
                                    -1, 0))
        goto ssl_fail;
    if (!X509_set_issuer_name(x, name)) goto ssl_fail;
    if (add_ext(x, NID_basic_constraints, "critical,CA:FALSE") ||
        add_ext(x, NID_key_usage, "critical,digitalSignature") ||
        add_ext(x, NID_ext_key_usage, "serverAuth,clientAuth") ||
        add_ext(x, NID_subject_key_identifier, "hash"))
        goto ssl_fail;
    if (add_san(x, hosts, n, err, errlen) != 0) goto fail;
    if (!X509_sign(x, key, EVP_sha256())) goto ssl_fail;
    BN_free(bn);
    return x;
ssl_fail:
    tls_err(err, errlen, "cannot build certificate", NULL);
fail:
    BN_free(bn);
    X509_free(x);
    return NULL;
}

int st_tls_ensure_cert(const char *cert_path, const char *key_path, const char *const *hostnames,
                       size_t n, char *err, size_t errlen)
{
    struct stat st;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    int have_cert, have_key, rc = -1;

    errno = 0;
    have_cert = stat(cert_path, &st) == 0;
    if (!have_cert && errno != ENOENT) {
        snprintf(err, errlen, "cannot access certificate %s: %s", cert_path, strerror(errno));
        return -1;
    }
    errno = 0;
    have_key = stat(key_path, &st) == 0;
    if (!have_key && errno != ENOENT) {
        snprintf(err, errlen, "cannot access private key %s: %s", key_path, strerror(errno));
        return -1;
    }
    if (have_cert && have_key) return 0;
    if (have_cert) {
        snprintf(err, errlen,
                 "certificate %s exists but its private key %s is missing; restore the key, or "
                 "remove the certificate to have a new self-signed pair generated",
                 cert_path, key_path);
        return -1;
    }
    if (have_key) {
        snprintf(err, errlen,
                 "private key %s exists but its certificate %s is missing; restore the "
                 "certificate, or remove the key to have a new self-signed pair generated",
                 key_path, cert_path);
        return -1;
    }
    if (n == 0 || !hostnames[0] || !*hostnames[0]) {
        snprintf(err, errlen, "no host names to put in a self-signed certificate");
        return -1;
    }

    key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!key) {
        tls_err(err, errlen, "cannot generate EC P-256 key", NULL);
        goto fail;
    }
    if (!(cert = make_cert(key, hostnames, n, err, errlen))) goto fail;
    if (make_parent_dirs(key_path, err, errlen) || make_parent_dirs(cert_path, err, errlen))
        goto fail;
    /* Key first: a crash between the two renames leaves "key without
     * certificate", which the check above reports instead of silently
     * generating a second key. */
    if (write_pem(key_path, key, NULL, 0600, err, errlen) != 0) goto fail;
    if (write_pem(cert_path, NULL, cert, 0644, err, errlen) != 0) {
        unlink(key_path);
        goto fail;
    }
    rc = 0;
fail:
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

/* ---- channel bindings ---- */

int st_tls_server_end_point(SSL *ssl, unsigned char out[64], size_t *len)
{
    X509 *cert = SSL_is_server(ssl) ? SSL_get_certificate(ssl) : SSL_get0_peer_certificate(ssl);
    return st_tls_cert_end_point(cert, out, len);
}

int st_tls_cert_end_point(X509 *cert, unsigned char out[64], size_t *len)
{
    int mdnid = NID_undef, pknid = NID_undef;
    unsigned int n = 0;
    if (!cert) return -1;
    if (!X509_get_signature_info(cert, &mdnid, &pknid, NULL, NULL) || mdnid == NID_undef) {
        ERR_clear_error();
        return -1; /* e.g. Ed25519: RFC 5929 defines no hash for it */
    }
    /* RFC 5929 §4.1: MD5 and SHA-1 are replaced by SHA-256 */
    if (mdnid == NID_md5 || mdnid == NID_sha1) mdnid = NID_sha256;
    const EVP_MD *md = EVP_get_digestbynid(mdnid);
    if (!md || EVP_MD_get_size(md) > 64 || !X509_digest(cert, md, out, &n)) {
        ERR_clear_error();
        return -1;
    }
    *len = n;
    return 0;
}

int st_tls_exporter(SSL *ssl, unsigned char out[32])
{
    static const char label[] = "EXPORTER-Channel-Binding";
    if (SSL_version(ssl) != TLS1_3_VERSION || !SSL_is_init_finished(ssl)) return -1;
    if (SSL_export_keying_material(ssl, out, 32, label, sizeof label - 1, NULL, 0, 0) != 1) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}
