/* tls13_fuzz.h - what the TLS 1.3 fuzz targets (fuzz_tlsrec.c,
 * fuzz_tlshs.c) share: the server's st_tls_ctx, the client's SSL_CTX, and
 * for sealing records with the client's own keys a secret from a keylog
 * line and HKDF-Expand-Label (RFC 8446 §7.1). The keys are written here with OpenSSL's HMAC,
 * independently of server/tlsrec.c, so that the targets do not check the implementation with
 * itself; a harness failure aborts. (tests/unit/tls13_harness.h is the same for the unit tests,
 * with cmocka's assertions.) */
#ifndef STARLING_TEST_TLS13_FUZZ_H
#define STARLING_TEST_TLS13_FUZZ_H
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include "server/tls.h"

/* SIGPIPE ignored, and an st_tls_ctx on a new certificate for example.org
 * in dir (a mkdtemp template), which is removed once it is loaded. */
static st_tls_ctx *fuzz_tls_ctx(char *dir)
{
    char cert[256], key[256], err[512];
    static const char *const hosts[] = {"example.org"};
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(dir)) abort();
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    if (st_tls_ensure_cert(cert, key, hosts, 1, err, sizeof err) != 0) abort();
    st_tls_ctx *t = st_tls_ctx_new(cert, key, err, sizeof err);
    if (!t) abort();
    unlink(cert);
    unlink(key);
    rmdir(dir);
    return t;
}

/* A client for one TLS 1.3 suite, from min_version up, no verification,
 * no session cache; info_cb may be NULL. */
static SSL_CTX *fuzz_client_ctx(const char *suite, int min_version,
                                void (*keylog_cb)(const SSL *, const char *),
                                void (*info_cb)(const SSL *, int, int))
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    if (!c) abort();
    SSL_CTX_set_min_proto_version(c, min_version);
    SSL_CTX_set_ciphersuites(c, suite);
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_keylog_callback(c, keylog_cb);
    if (info_cb) SSL_CTX_set_info_callback(c, info_cb);
    return c;
}

/* The hex of a keylog line's secret (after its last space) into out, at
 * most cap bytes; returns how many. */
static size_t hex_secret(const char *sp, unsigned char *out, size_t cap)
{
    size_t n = 0;
    while (sp[0] && sp[1] && n < cap) {
        unsigned v;
        if (sscanf(sp, "%2x", &v) != 1) break;
        out[n++] = (unsigned char)v;
        sp += 2;
    }
    return n;
}

/* outlen at most the hash's size (one HMAC block); an empty context */
static void expand_label(const EVP_MD *md, const unsigned char *secret, size_t slen,
                         const char *label, unsigned char *out, size_t outlen)
{
    unsigned char info[64], t[EVP_MAX_MD_SIZE];
    size_t il = 0, ll = strlen(label);
    unsigned int ml = 0;
    info[il++] = (unsigned char)(outlen >> 8);
    info[il++] = (unsigned char)outlen;
    info[il++] = (unsigned char)(6 + ll);
    memcpy(info + il, "tls13 ", 6);
    il += 6;
    memcpy(info + il, label, ll);
    il += ll;
    info[il++] = 0;
    info[il++] = 1; /* outlen <= Hash.length: one block */
    if (!HMAC(md, secret, (int)slen, info, il, t, &ml) || ml < outlen) abort();
    memcpy(out, t, outlen);
}
#endif
