/* test_server_tls.c - first-start certificates, the server TLS policy and
 * channel bindings, with a real client and server handshaking in-process
 * over an OpenSSL BIO pair (no sockets, no threads).
 *
 * The client side is plain OpenSSL, computed independently of server/tls.c
 * where it matters (the tls-server-end-point hash and the tls-exporter
 * value), so the tests check the RFCs rather than our code against itself. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include "server/tls.h"

static char base[] = "/tmp/st-tls-test-XXXXXX";
static char cert_path[256], key_path[256];
static const char *const hosts[] = {"example.org", "chat.example.org", "127.0.0.1",
                                    "bücher.example"};

static void path(char *out, size_t n, const char *rel)
{
    snprintf(out, n, "%s/%s", base, rel);
}

static int setup(void **state)
{
    char err[512];
    if (!mkdtemp(base)) return -1;
    /* nested, not yet existing directories: they get created 0700 */
    path(cert_path, sizeof cert_path, "data/tls/cert.pem");
    path(key_path, sizeof key_path, "data/tls/key.pem");
    if (st_tls_ensure_cert(cert_path, key_path, hosts, 4, err, sizeof err) != 0) {
        fprintf(stderr, "ensure_cert: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    return system(cmd) == 0 ? 0 : -1;
}

static X509 *read_cert(const char *p)
{
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    return x;
}

static EVP_PKEY *read_key(const char *p)
{
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

static mode_t mode_of(const char *p)
{
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    return st.st_mode & 07777;
}

/* ---- the generated certificate ---- */

static void tls_cert_file_modes(void **state)
{
    char d[256];
    assert_int_equal(mode_of(key_path), 0600);
    assert_int_equal(mode_of(cert_path), 0644);
    path(d, sizeof d, "data");
    assert_int_equal(mode_of(d), 0700);
    path(d, sizeof d, "data/tls");
    assert_int_equal(mode_of(d), 0700);
}

static void tls_cert_is_v3_self_signed_for_all_hosts(void **state)
{
    X509 *x = read_cert(cert_path);
    EVP_PKEY *k = read_key(key_path);

    assert_int_equal(X509_get_version(x), 2); /* v3 */
    assert_int_equal(X509_check_private_key(x, k), 1);
    assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);
    assert_int_equal(X509_verify(x, k), 1); /* signed by its own key */

    char cn[128];
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn) >
                0);
    assert_string_equal(cn, "example.org");

    /* EC P-256 key, ECDSA-SHA256 signature */
    char group[64];
    size_t glen;
    assert_int_equal(EVP_PKEY_get_group_name(k, group, sizeof group, &glen), 1);
    assert_string_equal(group, "prime256v1");
    assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);

    /* ten years, give or take the hour of slack and leap days */
    int days, secs;
    assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)),
                     1);
    assert_in_range(days, 3650, 3653);

    /* positive, non-zero random serial */
    BIGNUM *serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    assert_non_null(serial);
    assert_false(BN_is_negative(serial));
    assert_true(BN_num_bits(serial) > 64);
    BN_free(serial);

    /* a leaf, for TLS servers (and clients, for s2s later) */
    assert_int_equal(X509_check_ca(x), 0);
    assert_true(X509_get_extended_key_usage(x) & XKU_SSL_SERVER);

    /* subjectAltName: DNS for names (IDNs in A-label form), IP for literals */
    GENERAL_NAMES *san = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    assert_non_null(san);
    assert_int_equal(sk_GENERAL_NAME_num(san), 4);
    static const char *const want_dns[] = {"example.org", "chat.example.org", NULL,
                                           "xn--bcher-kva.example"};
    for (int i = 0; i < 4; i++) {
        GENERAL_NAME *gn = sk_GENERAL_NAME_value(san, i);
        int type;
        ASN1_STRING *v = GENERAL_NAME_get0_value(gn, &type);
        if (want_dns[i]) {
            assert_int_equal(type, GEN_DNS);
            assert_int_equal(ASN1_STRING_length(v), strlen(want_dns[i]));
            assert_memory_equal(ASN1_STRING_get0_data(v), want_dns[i], strlen(want_dns[i]));
        } else {
            assert_int_equal(type, GEN_IPADD);
            assert_int_equal(ASN1_STRING_length(v), 4);
            assert_memory_equal(ASN1_STRING_get0_data(v), "\x7f\x00\x00\x01", 4);
        }
    }
    GENERAL_NAMES_free(san);
    /* and OpenSSL's own hostname matching agrees */
    assert_int_equal(X509_check_host(x, "chat.example.org", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(x, "other.example.org", 0, 0, NULL), 0);
    assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);

    X509_free(x);
    EVP_PKEY_free(k);
}

static char *slurp(const char *p)
{
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    static char buf[2][8192];
    static int which;
    char *b = buf[which++ & 1];
    size_t n = fread(b, 1, sizeof buf[0] - 1, f);
    b[n] = '\0';
    fclose(f);
    return b;
}

static void tls_ensure_cert_keeps_existing_pair(void **state)
{
    char err[512];
    char *before = strdup(slurp(key_path));
    assert_int_equal(st_tls_ensure_cert(cert_path, key_path, hosts, 1, err, sizeof err), 0);
    assert_string_equal(slurp(key_path), before);
    free(before);
}

static void tls_ensure_cert_refuses_half_a_pair(void **state)
{
    char err[512], c[256], k[256], d[256];
    path(d, sizeof d, "half");
    assert_int_equal(mkdir(d, 0755), 0);
    path(c, sizeof c, "half/cert.pem");
    path(k, sizeof k, "half/key.pem");

    /* certificate without its key */
    FILE *f = fopen(c, "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(st_tls_ensure_cert(c, k, hosts, 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "private key"));
    assert_non_null(strstr(err, k));
    assert_non_null(strstr(err, "is missing"));
    assert_int_equal(access(k, F_OK), -1); /* nothing generated */

    /* key without its certificate */
    assert_int_equal(rename(c, k), 0);
    assert_int_equal(st_tls_ensure_cert(c, k, hosts, 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "its certificate"));
    assert_non_null(strstr(err, c));
    assert_int_equal(access(c, F_OK), -1);

    /* no host names */
    unlink(k);
    assert_int_equal(st_tls_ensure_cert(c, k, hosts, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "no host names"));
}

/* ---- contexts ---- */

static void tls_ctx_errors_name_the_file(void **state)
{
    char err[512], c2[256], k2[256], missing[256];
    path(missing, sizeof missing, "nope.pem");
    assert_null(st_tls_ctx_new(missing, key_path, err, sizeof err));
    assert_non_null(strstr(err, "cannot load certificate"));
    assert_non_null(strstr(err, missing));

    /* a key from another pair */
    path(c2, sizeof c2, "other/cert.pem");
    path(k2, sizeof k2, "other/key.pem");
    assert_int_equal(st_tls_ensure_cert(c2, k2, hosts, 1, err, sizeof err), 0);
    assert_null(st_tls_ctx_new(cert_path, k2, err, sizeof err));
    assert_non_null(strstr(err, "does not match"));
    assert_int_equal(ERR_peek_error(), 0); /* the error queue is left clean */

    st_tls_ctx *t = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    assert_non_null(t);
    SSL_CTX *ctx = st_tls_ctx_get(t);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    assert_true(SSL_CTX_get_mode(ctx) & SSL_MODE_RELEASE_BUFFERS);
    assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION);
    assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_COMPRESSION);
    assert_false(SSL_CTX_get_options(ctx) & SSL_OP_NO_TICKET);
    /* a failed reload keeps the working context */
    assert_int_equal(st_tls_ctx_reload(t, missing, key_path, err, sizeof err), -1);
    assert_ptr_equal(st_tls_ctx_get(t), ctx);
    st_tls_ctx_free(t);
    st_tls_ctx_free(NULL);
}

/* ---- in-process handshakes ---- */

typedef struct pair {
    SSL *client, *server;
} pair;

static SSL_CTX *client_ctx(int min, int max, const char *ciphers)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    assert_non_null(c);
    assert_int_equal(SSL_CTX_set_min_proto_version(c, min), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(c, max), 1);
    if (ciphers) assert_int_equal(SSL_CTX_set_cipher_list(c, ciphers), 1);
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL); /* self-signed */
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT);
    return c;
}

/* Connect client and server SSLs through a BIO pair and run both
 * handshakes to completion. Returns 0, or -1 if either side fails. */
static int handshake(pair *p, SSL_CTX *cctx, st_tls_ctx *t, int direct, int alpn,
                     SSL_SESSION *resume)
{
    BIO *cb, *sb;
    assert_int_equal(BIO_new_bio_pair(&cb, 0, &sb, 0), 1);
    p->client = SSL_new(cctx);
    p->server = st_tls_new_ssl(t, -1, direct);
    assert_non_null(p->client);
    assert_non_null(p->server);
    SSL_set_bio(p->client, cb, cb);
    SSL_set_bio(p->server, sb, sb);
    SSL_set_connect_state(p->client);
    SSL_set_tlsext_host_name(p->client, "example.org");
    if (alpn) SSL_set_alpn_protos(p->client, (const unsigned char *)"\x0bxmpp-client", 12);
    if (resume) SSL_set_session(p->client, resume);
    int cdone = 0, sdone = 0;
    for (int i = 0; i < 50 && !(cdone && sdone); i++) {
        if (!cdone) {
            int r = SSL_do_handshake(p->client);
            if (r == 1)
                cdone = 1;
            else if (SSL_get_error(p->client, r) != SSL_ERROR_WANT_READ)
                return -1;
        }
        if (!sdone) {
            int r = SSL_do_handshake(p->server);
            if (r == 1)
                sdone = 1;
            else if (SSL_get_error(p->server, r) != SSL_ERROR_WANT_READ)
                return -1;
        }
    }
    return cdone && sdone ? 0 : -1;
}

static void pair_free(pair *p)
{
    SSL_free(p->client);
    SSL_free(p->server);
    ERR_clear_error();
}

/* Server says "hello"; the client reads it, which also takes in the TLS 1.3
 * session tickets sent after the handshake. */
static void exchange(pair *p)
{
    char buf[16];
    assert_int_equal(SSL_write(p->server, "hello", 5), 5);
    assert_int_equal(SSL_read(p->client, buf, sizeof buf), 5);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(SSL_write(p->client, "<x/>", 4), 4);
    assert_int_equal(SSL_read(p->server, buf, sizeof buf), 4);
}

static void rfc9266_tls_exporter_matches_on_both_sides(void **state)
{
    char err[512];
    st_tls_ctx *t = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    assert_non_null(t);
    SSL_CTX *cctx = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION, NULL);
    pair p;
    assert_int_equal(handshake(&p, cctx, t, 1, 1, NULL), 0);
    assert_int_equal(SSL_version(p.server), TLS1_3_VERSION);
    exchange(&p);

    unsigned char s[32], c[32], again[32];
    assert_int_equal(st_tls_exporter(p.server, s), 0);
    static const char label[] = "EXPORTER-Channel-Binding";
    assert_int_equal(
        SSL_export_keying_material(p.client, c, 32, label, sizeof label - 1, NULL, 0, 0), 1);
    assert_memory_equal(s, c, 32);
    assert_int_equal(st_tls_exporter(p.client, again), 0);
    assert_memory_equal(again, c, 32);

    /* a different connection has a different binding */
    pair q;
    assert_int_equal(handshake(&q, cctx, t, 1, 1, NULL), 0);
    assert_int_equal(st_tls_exporter(q.server, again), 0);
    assert_memory_not_equal(again, s, 32);

    pair_free(&q);
    pair_free(&p);
    SSL_CTX_free(cctx);
    st_tls_ctx_free(t);
}

static void rfc5929_tls_server_end_point_matches_peer_cert_hash(void **state)
{
    char err[512];
    st_tls_ctx *t = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    assert_non_null(t);
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_3_VERSION, NULL);
    pair p;
    assert_int_equal(handshake(&p, cctx, t, 0, 0, NULL), 0);

    unsigned char s[64], c[64], mine[64];
    size_t slen = 0, mlen = 0;
    unsigned int clen = 0;
    assert_int_equal(st_tls_server_end_point(p.server, s, &slen), 0);
    /* client side, by hand: ECDSA-SHA256 certificate -> SHA-256 of its DER */
    X509 *peer = SSL_get0_peer_certificate(p.client);
    assert_non_null(peer);
    assert_int_equal(X509_digest(peer, EVP_sha256(), c, &clen), 1);
    assert_int_equal(slen, 32);
    assert_int_equal(clen, 32);
    assert_memory_equal(s, c, 32);
    /* and our helper on the client side agrees */
    assert_int_equal(st_tls_server_end_point(p.client, mine, &mlen), 0);
    assert_int_equal(mlen, 32);
    assert_memory_equal(mine, c, 32);

    pair_free(&p);
    SSL_CTX_free(cctx);
    st_tls_ctx_free(t);
}

static void xep0368_direct_tls_selects_alpn_xmpp_client(void **state)
{
    char err[512];
    st_tls_ctx *t = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    assert_non_null(t);
    SSL_CTX *cctx = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION, NULL);
    const unsigned char *proto;
    unsigned int len;

    pair p;
    assert_int_equal(handshake(&p, cctx, t, 1, 1, NULL), 0);
    SSL_get0_alpn_selected(p.client, &proto, &len);
    assert_int_equal(len, 11);
    assert_memory_equal(proto, "xmpp-client", 11);
    /* the client's SNI reached the server */
    assert_string_equal(SSL_get_servername(p.server, TLSEXT_NAMETYPE_host_name), "example.org");
    pair_free(&p);

    /* after STARTTLS, ALPN is not part of the protocol: none selected */
    assert_int_equal(handshake(&p, cctx, t, 0, 1, NULL), 0);
    SSL_get0_alpn_selected(p.client, &proto, &len);
    assert_int_equal(len, 0);
    pair_free(&p);

    /* a direct-TLS client without ALPN is fine too */
    assert_int_equal(handshake(&p, cctx, t, 1, 0, NULL), 0);
    pair_free(&p);

    SSL_CTX_free(cctx);
    st_tls_ctx_free(t);
}

static void tls12_uses_ecdhe_aead_and_has_no_exporter(void **state)
{
    char err[512];
    st_tls_ctx *t = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    assert_non_null(t);
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION, NULL);
    pair p;
    assert_int_equal(handshake(&p, cctx, t, 1, 1, NULL), 0);
    assert_int_equal(SSL_version(p.server), TLS1_2_VERSION);
    const char *cipher = SSL_get_cipher_name(p.server);
    assert_non_null(strstr(cipher, "ECDHE"));
    assert_true(strstr(cipher, "GCM") || strstr(cipher, "CHACHA20"));
    exchange(&p);
    unsigned char out[64];
    size_t len;
    /* RFC 9266 is for TLS 1.3 only: no tls-exporter on 1.2 */
    assert_int_equal(st_tls_exporter(p.server, out), -1);
    /* tls-server-end-point works on any version */
    assert_int_equal(st_tls_server_end_point(p.server, out, &len), 0);
    pair_free(&p);
    SSL_CTX_free(cctx);

    /* CBC suites are refused even with ECDHE */
    cctx = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION,
                      "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384");
    assert_int_equal(handshake(&p, cctx, t, 1, 0, NULL), -1);
    pair_free(&p);
    SSL_CTX_free(cctx);

    /* and so is anything older than TLS 1.2 */
    cctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(cctx);
    SSL_CTX_set_security_level(cctx, 0); /* let the client at least try */
    SSL_CTX_set_min_proto_version(cctx, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(cctx, TLS1_1_VERSION);
    assert_int_equal(handshake(&p, cctx, t, 1, 0, NULL), -1);
    pair_free(&p);
    SSL_CTX_free(cctx);
    st_tls_ctx_free(t);
}

static void tls13_session_ticket_resumes(void **state)
{
    char err[512];
    st_tls_ctx *t = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    assert_non_null(t);
    SSL_CTX *cctx = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION, NULL);
    pair p, q;
    assert_int_equal(handshake(&p, cctx, t, 1, 1, NULL), 0);
    exchange(&p);
    SSL_SESSION *sess = SSL_get1_session(p.client);
    assert_non_null(sess);
    assert_true(SSL_SESSION_is_resumable(sess));
    assert_int_equal(handshake(&q, cctx, t, 1, 1, sess), 0);
    assert_true(SSL_session_reused(q.client));
    SSL_SESSION_free(sess);
    pair_free(&q);
    pair_free(&p);
    SSL_CTX_free(cctx);
    st_tls_ctx_free(t);
}

/* OpenSSL's handshakes (TLS 1.2, unusual ClientHellos) choose TLS 1.3
 * suites as ours does (tlshs.c): AES-128-GCM, ChaCha20, AES-256-GCM among
 * those offered, ChaCha20 when the client lists it first. */
static void tls13_suite_order_is_ours_with_chacha20_when_the_client_puts_it_first(void **state)
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
    char err[512];
    st_tls_ctx *t = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    assert_non_null(t);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        SSL_CTX *cctx = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION, NULL);
        assert_int_equal(SSL_CTX_set_ciphersuites(cctx, cases[i].offer), 1);
        pair p;
        assert_int_equal(handshake(&p, cctx, t, 0, 0, NULL), 0);
        assert_string_equal(SSL_CIPHER_standard_name(SSL_get_current_cipher(p.client)),
                            cases[i].chosen);
        pair_free(&p);
        SSL_CTX_free(cctx);
    }
    st_tls_ctx_free(t);
}

static int same_cert(SSL *client, const char *pem_path)
{
    X509 *want = read_cert(pem_path);
    int r = X509_cmp(SSL_get0_peer_certificate(client), want) == 0;
    X509_free(want);
    return r;
}

/* SIGHUP: new connections get the new certificate; one made before the
 * reload still completes with the old one, whose SSL_CTX lives on through
 * that connection's reference (ASan would catch a use after free). */
static void tls_reload_swaps_certificate_for_new_connections(void **state)
{
    char err[512], c2[256], k2[256];
    path(c2, sizeof c2, "reload/cert.pem");
    path(k2, sizeof k2, "reload/key.pem");
    static const char *const other[] = {"other.example"};
    assert_int_equal(st_tls_ensure_cert(c2, k2, other, 1, err, sizeof err), 0);

    st_tls_ctx *t = st_tls_ctx_new(cert_path, key_path, err, sizeof err);
    assert_non_null(t);
    SSL_CTX *cctx = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION, NULL);

    BIO *cb, *sb;
    assert_int_equal(BIO_new_bio_pair(&cb, 0, &sb, 0), 1);
    SSL *old_server = st_tls_new_ssl(t, -1, 1);
    SSL *old_client = SSL_new(cctx);
    SSL_set_bio(old_server, sb, sb);
    SSL_set_bio(old_client, cb, cb);
    SSL_set_connect_state(old_client);

    if (st_tls_ctx_reload(t, c2, k2, err, sizeof err) != 0) print_error("%s\n", err);
    assert_int_equal(st_tls_ctx_reload(t, c2, k2, err, sizeof err), 0);

    pair p;
    assert_int_equal(handshake(&p, cctx, t, 1, 0, NULL), 0);
    assert_true(same_cert(p.client, c2));
    pair_free(&p);

    /* finish the connection that started before the reload */
    int cdone = 0, sdone = 0;
    for (int i = 0; i < 50 && !(cdone && sdone); i++) {
        if (!cdone) cdone = SSL_do_handshake(old_client) == 1;
        if (!sdone) sdone = SSL_do_handshake(old_server) == 1;
    }
    assert_true(cdone && sdone);
    assert_true(same_cert(old_client, cert_path));
    SSL_free(old_client);
    SSL_free(old_server);

    SSL_CTX_free(cctx);
    st_tls_ctx_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tls_cert_file_modes),
        cmocka_unit_test(tls_cert_is_v3_self_signed_for_all_hosts),
        cmocka_unit_test(tls_ensure_cert_keeps_existing_pair),
        cmocka_unit_test(tls_ensure_cert_refuses_half_a_pair),
        cmocka_unit_test(tls_ctx_errors_name_the_file),
        cmocka_unit_test(rfc9266_tls_exporter_matches_on_both_sides),
        cmocka_unit_test(rfc5929_tls_server_end_point_matches_peer_cert_hash),
        cmocka_unit_test(xep0368_direct_tls_selects_alpn_xmpp_client),
        cmocka_unit_test(tls12_uses_ecdhe_aead_and_has_no_exporter),
        cmocka_unit_test(tls13_session_ticket_resumes),
        cmocka_unit_test(tls13_suite_order_is_ours_with_chacha20_when_the_client_puts_it_first),
        cmocka_unit_test(tls_reload_swaps_certificate_for_new_connections),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
