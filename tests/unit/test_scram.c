/* test_scram.c - SCRAM server and client against the RFC examples, channel
 * binding, downgrade detection, unknown users and malformed peer input.
 *
 * The two RFC conversations are replayed byte for byte in both directions:
 * our client must say exactly what the RFC client says, and our server must
 * answer exactly what the RFC server answers. The bad-input tables keep each
 * case on one line with the SASL condition we must answer with. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "starling/alloc.h"
#include "starling/base64.h"
#include "starling/scram.h"

/* ---- the RFC conversations ---- */

typedef struct rfc_case {
    st_scram_hash hash;
    const char *cnonce, *snonce, *salt_b64;
    const char *client_first, *server_first, *client_final, *server_final;
} rfc_case;

static const rfc_case rfc5802_5 = {
    ST_SCRAM_SHA1,
    "fyko+d2lbbFgONRv9qkxdawL",
    "3rfcNHYJY1ZVvWVs7j",
    "QSXCR+Q6sek8bf92",
    "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
};

static const rfc_case rfc7677_3 = {
    ST_SCRAM_SHA256,
    "rOprNGfwEbeRWgbNEkqO",
    "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    "W22ZaJ0SNY7soEsUEjb6gQ==",
    "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
};

static void make_cred(st_scram_cred *cred, st_scram_hash h, const char *pw,
                      const char *salt_b64)
{
    st_buf salt;
    st_buf_init(&salt, 0);
    assert_int_equal(st_base64_decode(salt_b64, strlen(salt_b64), &salt), 0);
    assert_int_equal(st_scram_cred_make(cred, h, pw, (const unsigned char *)salt.data,
                                        salt.len, 4096),
                     0);
    st_buf_free(&salt);
}

static void rfc_client_side(const rfc_case *rc)
{
    st_buf out;
    st_buf_init(&out, 0);
    st_scram_client *sc = st_scram_client_new(rc->hash, "user", "pencil", NULL, NULL, 0, 0);
    assert_non_null(sc);
    st_scram_client_set_nonce(sc, rc->cnonce);

    /* client sends: */
    assert_int_equal(st_scram_client_first(sc, &out), 0);
    assert_string_equal(out.data, rc->client_first);
    /* client receives server-first, sends: */
    st_buf_reset(&out);
    assert_int_equal(
        st_scram_client_final(sc, rc->server_first, strlen(rc->server_first), &out), 0);
    assert_string_equal(out.data, rc->client_final);
    /* client receives server-final and trusts the server: */
    assert_int_equal(st_scram_client_verify(sc, rc->server_final, strlen(rc->server_final)),
                     0);
    size_t n = 0;
    assert_non_null(st_scram_client_salted_password(sc, &n));
    assert_int_equal(n, st_scram_hash_len(rc->hash));
    st_scram_client_free(sc);
    st_buf_free(&out);
}

static void rfc_server_side(const rfc_case *rc)
{
    st_scram_cred cred;
    const char *user = NULL, *err = NULL;
    st_buf out;
    st_buf_init(&out, 0);
    make_cred(&cred, rc->hash, "pencil", rc->salt_b64);

    st_scram_server *ss = st_scram_server_new(rc->hash, 0, 0, NULL);
    assert_non_null(ss);
    st_scram_server_set_nonce(ss, rc->snonce);
    /* server receives client-first: */
    assert_int_equal(st_scram_server_start(ss, rc->client_first, strlen(rc->client_first),
                                           &user, &err),
                     0);
    assert_string_equal(user, "user");
    assert_null(st_scram_server_authzid(ss));
    /* server sends: */
    assert_int_equal(st_scram_server_challenge(ss, &cred, &out), 0);
    assert_string_equal(out.data, rc->server_first);
    /* server receives client-final, sends: */
    st_buf_reset(&out);
    assert_int_equal(st_scram_server_finish(ss, rc->client_final, strlen(rc->client_final),
                                            &out, &err),
                     0);
    assert_string_equal(out.data, rc->server_final);
    st_scram_server_free(ss);
    st_buf_free(&out);
}

static void rfc5802_5_sha1_exchange(void **state)
{
    rfc_client_side(&rfc5802_5);
    rfc_server_side(&rfc5802_5);
}

static void rfc7677_3_sha256_exchange(void **state)
{
    rfc_client_side(&rfc7677_3);
    rfc_server_side(&rfc7677_3);
}

/* ---- a full exchange between our client and our server ---- */

typedef struct exch {
    st_scram_hash hash;
    const char *password;            /* what the client types */
    int known;                       /* 0: server has no such user */
    int plus, plus_advertised;       /* server side */
    const st_scram_cbind *cb;        /* server side TLS data */
    const char *cb_name;             /* client side */
    const unsigned char *cb_data;
    size_t cb_len;
    int client_supports_plus;
} exch;

/* Returns NULL on success, or the SASL condition the server failed with. */
static const char *run_exchange(const exch *x)
{
    st_scram_cred cred;
    const char *user = NULL, *err = "(none)";
    st_buf c1, s1, c2, s2;
    st_buf_init(&c1, 0);
    st_buf_init(&s1, 0);
    st_buf_init(&c2, 0);
    st_buf_init(&s2, 0);
    assert_int_equal(st_scram_cred_make(&cred, x->hash, "pencil", NULL, 0, 0), 0);

    st_scram_client *sc = st_scram_client_new(x->hash, "user", x->password, x->cb_name,
                                              x->cb_data, x->cb_len,
                                              x->client_supports_plus);
    st_scram_server *ss = st_scram_server_new(x->hash, x->plus, x->plus_advertised, x->cb);
    assert_non_null(sc);
    assert_non_null(ss);

    assert_int_equal(st_scram_client_first(sc, &c1), 0);
    if (st_scram_server_start(ss, c1.data, c1.len, &user, &err) != 0)
        goto done;
    assert_string_equal(user, "user");
    assert_int_equal(st_scram_server_challenge(ss, x->known ? &cred : NULL, &s1), 0);
    assert_int_equal(st_scram_client_final(sc, s1.data, s1.len, &c2), 0);
    if (st_scram_server_finish(ss, c2.data, c2.len, &s2, &err) != 0)
        goto done;
    assert_int_equal(st_scram_client_verify(sc, s2.data, s2.len), 0);
    err = NULL;

done:
    st_scram_client_free(sc);
    st_scram_server_free(ss);
    st_buf_free(&c1);
    st_buf_free(&s1);
    st_buf_free(&c2);
    st_buf_free(&s2);
    return err;
}

static void rfc5802_5_roundtrip_both_hashes(void **state)
{
    exch x = {.password = "pencil", .known = 1};
    x.hash = ST_SCRAM_SHA1;
    assert_null(run_exchange(&x));
    x.hash = ST_SCRAM_SHA256;
    assert_null(run_exchange(&x));
}

static void rfc5802_9_wrong_password_not_authorized(void **state)
{
    exch x = {.hash = ST_SCRAM_SHA256, .password = "pencil2", .known = 1};
    assert_string_equal(run_exchange(&x), "not-authorized");
}

static void rfc6120_6_5_unknown_user_fake_challenge(void **state)
{
    st_buf a, b, c;
    const char *user, *err;
    st_buf_init(&a, 0);
    st_buf_init(&b, 0);
    st_buf_init(&c, 0);
    const char *first = "n,,n=nobody,r=abc";
    const char *first2 = "n,,n=someone,r=abc";

    /* Same name twice: same salt and count, as a real account would show. */
    st_scram_server *s1 = st_scram_server_new(ST_SCRAM_SHA256, 0, 0, NULL);
    st_scram_server *s2 = st_scram_server_new(ST_SCRAM_SHA256, 0, 0, NULL);
    st_scram_server *s3 = st_scram_server_new(ST_SCRAM_SHA256, 0, 0, NULL);
    st_scram_server_set_nonce(s1, "X");
    st_scram_server_set_nonce(s2, "X");
    st_scram_server_set_nonce(s3, "X");
    assert_int_equal(st_scram_server_start(s1, first, strlen(first), &user, &err), 0);
    assert_int_equal(st_scram_server_start(s2, first, strlen(first), &user, &err), 0);
    assert_int_equal(st_scram_server_start(s3, first2, strlen(first2), &user, &err), 0);
    assert_int_equal(st_scram_server_challenge(s1, NULL, &a), 0);
    assert_int_equal(st_scram_server_challenge(s2, NULL, &b), 0);
    assert_int_equal(st_scram_server_challenge(s3, NULL, &c), 0);
    assert_string_equal(a.data, b.data);
    assert_string_not_equal(a.data, c.data);
    /* r=abcX,s=<16 bytes = 24 chars>,i=4096 */
    assert_int_equal(strncmp(a.data, "r=abcX,s=", 9), 0);
    assert_int_equal(strlen(a.data), 9 + 24 + 7);
    assert_string_equal(a.data + 9 + 24, ",i=4096");
    st_scram_server_free(s1);
    st_scram_server_free(s2);
    st_scram_server_free(s3);

    /* Whatever the client proves, the answer is the same as a bad password. */
    exch x = {.hash = ST_SCRAM_SHA1, .password = "pencil", .known = 0};
    assert_string_equal(run_exchange(&x), "not-authorized");
    st_buf_free(&a);
    st_buf_free(&b);
    st_buf_free(&c);
}

/* ---- channel binding ---- */

static const unsigned char exporter[32] = "0123456789abcdef0123456789abcdef";
static const unsigned char other_exporter[32] = "XXXXXXXXXXabcdef0123456789abcdef";
static const unsigned char endpoint[32] = "cert-hash-cert-hash-cert-hash-!!";

static void rfc9266_tls_exporter_binding(void **state)
{
    st_scram_cbind cb = {exporter, 32, endpoint, 32};
    exch x = {.hash = ST_SCRAM_SHA256, .password = "pencil", .known = 1, .plus = 1,
              .plus_advertised = 1, .cb = &cb, .cb_name = "tls-exporter",
              .cb_data = exporter, .cb_len = 32, .client_supports_plus = 1};
    assert_null(run_exchange(&x));
    /* A relay terminates TLS itself: the client's exporter differs. */
    x.cb_data = other_exporter;
    assert_string_equal(run_exchange(&x), "not-authorized");
}

static void rfc5929_tls_server_end_point_binding(void **state)
{
    st_scram_cbind cb = {exporter, 32, endpoint, 32};
    exch x = {.hash = ST_SCRAM_SHA1, .password = "pencil", .known = 1, .plus = 1,
              .plus_advertised = 1, .cb = &cb, .cb_name = "tls-server-end-point",
              .cb_data = endpoint, .cb_len = 32, .client_supports_plus = 1};
    assert_null(run_exchange(&x));
    x.cb_data = exporter;
    assert_string_equal(run_exchange(&x), "not-authorized");
    /* Same data, shorter: c= no longer matches. */
    x.cb_data = endpoint;
    x.cb_len = 31;
    assert_string_equal(run_exchange(&x), "malformed-request");
}

static void rfc9266_binding_type_unavailable(void **state)
{
    st_scram_cbind cb = {NULL, 0, endpoint, 32};
    exch x = {.hash = ST_SCRAM_SHA256, .password = "pencil", .known = 1, .plus = 1,
              .plus_advertised = 1, .cb = &cb, .cb_name = "tls-exporter",
              .cb_data = exporter, .cb_len = 32, .client_supports_plus = 1};
    assert_string_equal(run_exchange(&x), "malformed-request");
    x.cb_name = "tls-unique";
    cb.tls_exporter = exporter;
    cb.tls_exporter_len = 32;
    assert_string_equal(run_exchange(&x), "malformed-request");
}

static void rfc6120_6_5_plus_without_tls_encryption_required(void **state)
{
    exch x = {.hash = ST_SCRAM_SHA256, .password = "pencil", .known = 1, .plus = 1,
              .plus_advertised = 0, .cb = NULL, .cb_name = "tls-exporter",
              .cb_data = exporter, .cb_len = 32, .client_supports_plus = 1};
    assert_string_equal(run_exchange(&x), "encryption-required");
}

static void rfc5802_6_downgrade_detected(void **state)
{
    st_scram_cbind cb = {exporter, 32, endpoint, 32};
    /* We offered -PLUS; the client says "y": it could bind but believes we
     * cannot, so the offer was stripped on the way. */
    exch x = {.hash = ST_SCRAM_SHA256, .password = "pencil", .known = 1, .plus = 0,
              .plus_advertised = 1, .cb = &cb, .client_supports_plus = 1};
    assert_string_equal(run_exchange(&x), "not-authorized");
    /* Without the offer "y" is honest and fine. */
    x.plus_advertised = 0;
    assert_null(run_exchange(&x));
    /* A client that cannot bind says "n" and is fine either way. */
    x.plus_advertised = 1;
    x.client_supports_plus = 0;
    assert_null(run_exchange(&x));
}

static void rfc5802_6_plus_mechanism_requires_binding(void **state)
{
    st_scram_cbind cb = {exporter, 32, endpoint, 32};
    exch x = {.hash = ST_SCRAM_SHA256, .password = "pencil", .known = 1, .plus = 1,
              .plus_advertised = 1, .cb = &cb, .client_supports_plus = 0};
    assert_string_equal(run_exchange(&x), "malformed-request");
    x.client_supports_plus = 1;
    assert_string_equal(run_exchange(&x), "malformed-request");
}

/* ---- XEP-0474 downgrade protection ---- */

/* Table: lists in any order -> the value of "h". The first row is the
 * XEP's own example (§5.3, SCRAM-SHA-1). */
static void xep0474_ssdp_value_table(void **state)
{
    static const struct {
        st_scram_hash h;
        const char *mechs[6];
        const char *cbs[3];
        const char *want;
    } rows[] = {
        {ST_SCRAM_SHA1, {"SCRAM-SHA-1-PLUS", "SCRAM-SHA-1"}, {"tls-server-end-point", "tls-exporter"},
         "G6k/rBLDqgOhRRaCuuatSDFkJ08="},
        {ST_SCRAM_SHA256,
         {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"},
         {"tls-exporter", "tls-server-end-point"},
         "HsVT3zgfiif56i/w96g+XTr+Rx/Yfkw1VkxOAdVb9Wk="},
        /* no XEP-0440 advertisement: no %x1F at all */
        {ST_SCRAM_SHA256, {"SCRAM-SHA-256", "SCRAM-SHA-1"}, {NULL},
         "0/NIECGLXv63MqTb7NyUI9Tqxi40YVZyx61umRrH924="},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        size_t nm = 0, nc = 0;
        while (nm < 6 && rows[i].mechs[nm]) nm++;
        while (nc < 3 && rows[i].cbs[nc]) nc++;
        st_buf out;
        st_buf_init(&out, 0);
        assert_int_equal(st_scram_ssdp_value(rows[i].h, rows[i].mechs, nm,
                                             nc ? rows[i].cbs : NULL, nc, &out),
                         0);
        assert_string_equal(out.data, rows[i].want);
        st_buf_free(&out);
    }
}

/* The server puts h= after i= in server-first, for known and unknown users
 * alike, and the exchange still verifies (the attribute is part of
 * AuthMessage, so the client's proof covers it). */
static void xep0474_server_first_carries_h_attribute(void **state)
{
    static const char *const mechs[] = {"SCRAM-SHA-256", "SCRAM-SHA-1"};
    const char *user, *err;
    const char *c1 = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    st_buf out;
    st_buf_init(&out, 0);
    for (int known = 0; known < 2; known++) {
        st_scram_cred cred;
        make_cred(&cred, ST_SCRAM_SHA256, "pencil", "W22ZaJ0SNY7soEsUEjb6gQ==");
        st_scram_server *ss = st_scram_server_new(ST_SCRAM_SHA256, 0, 0, NULL);
        assert_non_null(ss);
        st_scram_server_set_nonce(ss, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_int_equal(st_scram_server_set_ssdp(ss, mechs, 2, NULL, 0), 0);
        assert_int_equal(st_scram_server_start(ss, c1, strlen(c1), &user, &err), 0);
        st_buf_reset(&out);
        assert_int_equal(st_scram_server_challenge(ss, known ? &cred : NULL, &out), 0);
        const char *h = strstr(out.data, ",i=4096,h=");
        assert_non_null(h);
        assert_string_equal(h + 10, "0/NIECGLXv63MqTb7NyUI9Tqxi40YVZyx61umRrH924=");
        st_scram_server_free(ss);
    }
    st_buf_free(&out);

    /* a whole exchange with our client, which ignores the extension */
    st_scram_cred cred;
    const char *u2, *e2 = NULL;
    st_buf s1, cf, s2;
    st_buf_init(&s1, 0);
    st_buf_init(&cf, 0);
    st_buf_init(&s2, 0);
    assert_int_equal(st_scram_cred_make(&cred, ST_SCRAM_SHA256, "pencil", NULL, 0, 0), 0);
    st_scram_client *sc = st_scram_client_new(ST_SCRAM_SHA256, "user", "pencil", NULL, NULL, 0, 0);
    st_scram_server *ss = st_scram_server_new(ST_SCRAM_SHA256, 0, 0, NULL);
    assert_int_equal(st_scram_server_set_ssdp(ss, mechs, 2, NULL, 0), 0);
    assert_int_equal(st_scram_client_first(sc, &cf), 0);
    assert_int_equal(st_scram_server_start(ss, cf.data, cf.len, &u2, &e2), 0);
    assert_int_equal(st_scram_server_challenge(ss, &cred, &s1), 0);
    st_buf_reset(&cf);
    assert_int_equal(st_scram_client_final(sc, s1.data, s1.len, &cf), 0);
    assert_int_equal(st_scram_server_finish(ss, cf.data, cf.len, &s2, &e2), 0);
    assert_int_equal(st_scram_client_verify(sc, s2.data, s2.len), 0);
    st_scram_client_free(sc);
    st_scram_server_free(ss);
    st_buf_free(&s1);
    st_buf_free(&cf);
    st_buf_free(&s2);
}

/* ---- authzid and saslname ---- */

static void rfc5802_5_1_saslname_and_authzid(void **state)
{
    const char *user, *err;
    const char *m = "n,a=admin@example.com,n=us=2Cer=3D,r=abc";
    st_scram_server *ss = st_scram_server_new(ST_SCRAM_SHA1, 0, 0, NULL);
    assert_int_equal(st_scram_server_start(ss, m, strlen(m), &user, &err), 0);
    assert_string_equal(user, "us,er=");
    assert_string_equal(st_scram_server_authzid(ss), "admin@example.com");
    st_scram_server_free(ss);

    /* A client name with ',' and '=' is escaped on the wire. */
    st_buf out;
    st_buf_init(&out, 0);
    st_scram_client *sc = st_scram_client_new(ST_SCRAM_SHA1, "a,b=c", "p", NULL, NULL, 0, 0);
    st_scram_client_set_nonce(sc, "N");
    assert_int_equal(st_scram_client_first(sc, &out), 0);
    assert_string_equal(out.data, "n,,n=a=2Cb=3Dc,r=N");
    st_scram_client_free(sc);
    st_buf_free(&out);
}

/* ---- malformed client-first-message ---- */

typedef struct bad_case {
    const char *msg;
    const char *err;
} bad_case;

static const bad_case bad_first[] = {
    {"", "malformed-request"},
    {"n", "malformed-request"},
    {"n,", "malformed-request"},
    {"n,,", "malformed-request"},
    {"x,,n=user,r=abc", "malformed-request"},           /* unknown cbind flag */
    {"n,,n=user", "malformed-request"},                 /* no nonce */
    {"n,,n=user,r=", "malformed-request"},              /* empty nonce */
    {"n,,n=,r=abc", "malformed-request"},               /* empty username */
    {"n,,r=abc,n=user", "malformed-request"},           /* wrong order */
    {"n,,m=ext,n=user,r=abc", "malformed-request"},     /* mandatory extension */
    {"n,,n=us=41er,r=abc", "malformed-request"},        /* '=' not =2C / =3D */
    {"n,,n=user=,r=abc", "malformed-request"},          /* '=' at the end */
    {"n,,n=user=2,r=abc", "malformed-request"},
    {"n,,n=user,r=ab\x7f", "malformed-request"},        /* nonce not printable */
    {"n,,n=user,r=ab c", "malformed-request"},
    {"n,,n=\xff\xfe,r=abc", "malformed-request"},       /* not UTF-8 */
    {"n,,n=user,r=abc,", "malformed-request"},          /* empty extension */
    {"n,,n=user,r=abc,1=x", "malformed-request"},       /* extension name not ALPHA */
    {"n,,n=user,r=abc,x=", "malformed-request"},
    {"n,a=,n=user,r=abc", "malformed-request"},         /* empty authzid */
    {"n,a=@@,n=user,r=abc", "invalid-authzid"},         /* authzid not a JID */
    {"n,b=x,n=user,r=abc", "malformed-request"},
    {"n,,,n=user,r=abc", "malformed-request"},
    {"p,,n=user,r=abc", "malformed-request"},
    {"p=,,n=user,r=abc", "malformed-request"},
    {"p=tls exporter,,n=user,r=abc", "malformed-request"},
    {"p=tls-exporter,,n=user,r=abc", "malformed-request"}, /* -PLUS not chosen */
    {"y,,n=user,r=abc", "not-authorized"},              /* downgrade (see setup) */
};

static void rfc5802_7_malformed_client_first(void **state)
{
    for (size_t i = 0; i < sizeof bad_first / sizeof bad_first[0]; i++) {
        const char *user = "junk", *err = NULL;
        st_scram_cbind cb = {exporter, 32, endpoint, 32};
        st_scram_server *ss = st_scram_server_new(ST_SCRAM_SHA256, 0, 1, &cb);
        assert_non_null(ss);
        const char *m = bad_first[i].msg;
        int rc = st_scram_server_start(ss, m, strlen(m), &user, &err);
        if (rc != -1 || !err || strcmp(err, bad_first[i].err) != 0)
            fail_msg("case %zu \"%s\": rc %d err %s", i, m, rc, err ? err : "NULL");
        assert_null(user);
        st_scram_server_free(ss);
    }
    /* An embedded NUL is refused however the rest looks. */
    const char *user, *err;
    st_scram_server *ss = st_scram_server_new(ST_SCRAM_SHA256, 0, 0, NULL);
    assert_int_equal(st_scram_server_start(ss, "n,,n=us\0er,r=abc", 16, &user, &err), -1);
    assert_string_equal(err, "malformed-request");
    st_scram_server_free(ss);
}

/* ---- malformed client-final-message ---- */

/* The server side is at "r=fyko...3rfc...,s=...,i=4096" of RFC 5802 §5. */
static const bad_case bad_final[] = {
    {"", "malformed-request"},
    {"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", "malformed-request"},
    {"c=biws,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", "malformed-request"},    /* no r= */
    {"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j", "malformed-request"},
    {"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=", "malformed-request"},
    {"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8", "malformed-request"},
    {"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts",
     "malformed-request"},                                  /* bad base64 */
    {"c=eSws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
     "malformed-request"},                                  /* c= says "y,," */
    {"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7X,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
     "malformed-request"},                                  /* nonce changed */
    {"c=biws,r=fyko+d2lbbFgONRv9qkxdawL,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
     "malformed-request"},                                  /* server part dropped */
    {"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,c=biws,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
     "malformed-request"},                                  /* wrong order */
    {"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=,x=1",
     "malformed-request"},                                  /* proof not last */
    {"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=AAX8v3Bz2T0CJGbJQyF0X+HI4Ts=",
     "not-authorized"},                                     /* wrong proof */
};

static void rfc5802_7_malformed_client_final(void **state)
{
    st_scram_cred cred;
    make_cred(&cred, ST_SCRAM_SHA1, "pencil", rfc5802_5.salt_b64);
    for (size_t i = 0; i < sizeof bad_final / sizeof bad_final[0]; i++) {
        const char *user, *err = NULL;
        st_buf out;
        st_buf_init(&out, 0);
        st_scram_server *ss = st_scram_server_new(ST_SCRAM_SHA1, 0, 0, NULL);
        st_scram_server_set_nonce(ss, rfc5802_5.snonce);
        const char *c1 = rfc5802_5.client_first;
        assert_int_equal(st_scram_server_start(ss, c1, strlen(c1), &user, &err), 0);
        assert_int_equal(st_scram_server_challenge(ss, &cred, &out), 0);
        st_buf_reset(&out);
        const char *m = bad_final[i].msg;
        int rc = st_scram_server_finish(ss, m, strlen(m), &out, &err);
        if (rc != -1 || !err || strcmp(err, bad_final[i].err) != 0)
            fail_msg("case %zu \"%s\": rc %d err %s", i, m, rc, err ? err : "NULL");
        assert_int_equal(out.len, 0);
        st_scram_server_free(ss);
        st_buf_free(&out);
    }
}

static void rfc5802_7_extensions_in_client_final_ignored(void **state)
{
    /* RFC 5802 §5.1: unknown optional attributes are ignored, so "x=ext"
     * before the proof is well formed; it is part of AuthMessage, so the
     * RFC proof (computed without it) no longer matches: not-authorized,
     * not malformed-request. */
    st_scram_cred cred;
    const char *user, *err = NULL;
    st_buf out;
    st_buf_init(&out, 0);
    make_cred(&cred, ST_SCRAM_SHA1, "pencil", rfc5802_5.salt_b64);
    st_scram_server *ss = st_scram_server_new(ST_SCRAM_SHA1, 0, 0, NULL);
    st_scram_server_set_nonce(ss, rfc5802_5.snonce);
    const char *c1 = rfc5802_5.client_first;
    assert_int_equal(st_scram_server_start(ss, c1, strlen(c1), &user, &err), 0);
    assert_int_equal(st_scram_server_challenge(ss, &cred, &out), 0);
    const char *m = "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,x=ext,"
                    "p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=";
    assert_int_equal(st_scram_server_finish(ss, m, strlen(m), &out, &err), -1);
    assert_string_equal(err, "not-authorized");
    st_scram_server_free(ss);
    st_buf_free(&out);
}

static void scram_server_steps_out_of_order_fail(void **state)
{
    st_scram_cred cred;
    const char *user, *err = NULL;
    st_buf out;
    st_buf_init(&out, 0);
    make_cred(&cred, ST_SCRAM_SHA1, "pencil", rfc5802_5.salt_b64);
    st_scram_server *ss = st_scram_server_new(ST_SCRAM_SHA1, 0, 0, NULL);
    assert_int_equal(st_scram_server_challenge(ss, &cred, &out), -1);
    assert_int_equal(st_scram_server_finish(ss, rfc5802_5.client_final,
                                            strlen(rfc5802_5.client_final), &out, &err),
                     -1);
    st_scram_server_free(ss);

    /* A credential for another hash is our bug, not the peer's. */
    ss = st_scram_server_new(ST_SCRAM_SHA256, 0, 0, NULL);
    const char *c1 = rfc5802_5.client_first;
    assert_int_equal(st_scram_server_start(ss, c1, strlen(c1), &user, &err), 0);
    assert_int_equal(st_scram_server_challenge(ss, &cred, &out), -1);
    st_scram_server_free(ss);
    st_buf_free(&out);
}

/* ---- client refuses a bad server ---- */

static void rfc5802_5_client_rejects_bad_server(void **state)
{
    static const char *bad_server_first[] = {
        "",
        "r=fyko+d2lbbFgONRv9qkxdawL,s=QSXCR+Q6sek8bf92,i=4096",   /* nonce not extended */
        "r=XXXX+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=4096", /* nonce replaced */
        "r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf9,i=4096",  /* bad base64 */
        "r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=,i=4096",                 /* empty salt */
        "r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=1",    /* too cheap */
        "r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=999999999",
        "r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=4x96",
        "r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92",
        "m=x,r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=4096",
    };
    for (size_t i = 0; i < sizeof bad_server_first / sizeof bad_server_first[0]; i++) {
        st_buf out;
        st_buf_init(&out, 0);
        st_scram_client *sc = st_scram_client_new(ST_SCRAM_SHA1, "user", "pencil", NULL,
                                                  NULL, 0, 0);
        st_scram_client_set_nonce(sc, rfc5802_5.cnonce);
        assert_int_equal(st_scram_client_first(sc, &out), 0);
        st_buf_reset(&out);
        const char *m = bad_server_first[i];
        if (st_scram_client_final(sc, m, strlen(m), &out) != -1)
            fail_msg("case %zu \"%s\" accepted", i, m);
        st_scram_client_free(sc);
        st_buf_free(&out);
    }

    static const char *bad_server_final[] = {
        "v=rmF9pqV8S7suAoZWja4dJRkFsKQ",   /* bad base64 */
        "v=AmF9pqV8S7suAoZWja4dJRkFsKQ=",  /* wrong signature */
        "e=invalid-proof",
        "",
    };
    for (size_t i = 0; i < sizeof bad_server_final / sizeof bad_server_final[0]; i++) {
        st_buf out;
        st_buf_init(&out, 0);
        st_scram_client *sc = st_scram_client_new(ST_SCRAM_SHA1, "user", "pencil", NULL,
                                                  NULL, 0, 0);
        st_scram_client_set_nonce(sc, rfc5802_5.cnonce);
        assert_int_equal(st_scram_client_first(sc, &out), 0);
        const char *s1 = rfc5802_5.server_first;
        assert_int_equal(st_scram_client_final(sc, s1, strlen(s1), &out), 0);
        const char *m = bad_server_final[i];
        if (st_scram_client_verify(sc, m, strlen(m)) != -1)
            fail_msg("case %zu \"%s\" accepted", i, m);
        st_scram_client_free(sc);
        st_buf_free(&out);
    }
}

static void scram_client_precomputed_salted_password(void **state)
{
    /* A load generator derives SaltedPassword once and reuses it. */
    const rfc_case *rc = &rfc5802_5;
    st_buf out;
    st_buf_init(&out, 0);
    st_scram_client *a = st_scram_client_new(rc->hash, "user", "pencil", NULL, NULL, 0, 0);
    st_scram_client_set_nonce(a, rc->cnonce);
    assert_int_equal(st_scram_client_first(a, &out), 0);
    assert_int_equal(st_scram_client_final(a, rc->server_first, strlen(rc->server_first),
                                           &out),
                     0);
    size_t n;
    const unsigned char *sp = st_scram_client_salted_password(a, &n);

    st_scram_client *b = st_scram_client_new(rc->hash, "user", "wrong", NULL, NULL, 0, 0);
    st_scram_client_set_nonce(b, rc->cnonce);
    assert_int_equal(st_scram_client_set_salted_password(b, sp, n - 1), -1);
    assert_int_equal(st_scram_client_set_salted_password(b, sp, n), 0);
    st_buf_reset(&out);
    assert_int_equal(st_scram_client_first(b, &out), 0);
    st_buf_reset(&out);
    assert_int_equal(st_scram_client_final(b, rc->server_first, strlen(rc->server_first),
                                           &out),
                     0);
    assert_string_equal(out.data, rc->client_final);
    st_scram_client_free(a);
    st_scram_client_free(b);
    st_buf_free(&out);
}

/* ---- credentials and PLAIN ---- */

static void rfc6120_6_4_plain_cred_check(void **state)
{
    st_scram_cred cred;
    assert_int_equal(st_scram_cred_make(&cred, ST_SCRAM_SHA256, "pencil", NULL, 0, 0), 0);
    assert_int_equal(cred.iterations, ST_SCRAM_DEFAULT_ITERATIONS);
    assert_int_equal(cred.salt_len, 16);
    assert_int_equal(st_scram_cred_check(&cred, "pencil"), 1);
    assert_int_equal(st_scram_cred_check(&cred, "Pencil"), 0);
    assert_int_equal(st_scram_cred_check(&cred, ""), 0);
    /* Bytes that are not UTF-8 can never match. */
    assert_int_equal(st_scram_cred_check(&cred, "pen\xff"), 0);
    /* Two calls pick different random salts. */
    st_scram_cred c2;
    assert_int_equal(st_scram_cred_make(&c2, ST_SCRAM_SHA256, "pencil", NULL, 0, 0), 0);
    assert_memory_not_equal(cred.salt, c2.salt, 16);
    /* Salt too long for the stored form. */
    unsigned char big[ST_SCRAM_SALT_MAX + 1] = {0};
    assert_int_equal(st_scram_cred_make(&c2, ST_SCRAM_SHA1, "p", big, sizeof big, 0), -1);
}

static void rfc4013_3_saslprep_password(void **state)
{
    /* RFC 4013 §3: "I<U+00AD>X" prepares to "IX"; U+00AA to "a". */
    st_scram_cred a, b;
    unsigned char salt[4] = {1, 2, 3, 4};
    assert_int_equal(st_scram_cred_make(&a, ST_SCRAM_SHA1, "I\xc2\xadX", salt, 4, 4096), 0);
    assert_int_equal(st_scram_cred_make(&b, ST_SCRAM_SHA1, "IX", salt, 4, 4096), 0);
    assert_memory_equal(a.stored_key, b.stored_key, 20);
    assert_int_equal(st_scram_cred_check(&a, "IX"), 1);
    assert_int_equal(st_scram_cred_check(&a, "\xc2\xaa"), 0);
    /* U+0007 is prohibited. */
    assert_int_equal(st_scram_cred_make(&a, ST_SCRAM_SHA1, "\x07", salt, 4, 4096), -1);
}

static void scram_names_and_helpers(void **state)
{
    assert_int_equal(st_scram_hash_len(ST_SCRAM_SHA1), 20);
    assert_int_equal(st_scram_hash_len(ST_SCRAM_SHA256), 32);
    assert_string_equal(st_scram_mech_name(ST_SCRAM_SHA1, 0), "SCRAM-SHA-1");
    assert_string_equal(st_scram_mech_name(ST_SCRAM_SHA1, 1), "SCRAM-SHA-1-PLUS");
    assert_string_equal(st_scram_mech_name(ST_SCRAM_SHA256, 0), "SCRAM-SHA-256");
    assert_string_equal(st_scram_mech_name(ST_SCRAM_SHA256, 1), "SCRAM-SHA-256-PLUS");
    assert_true(st_ct_equal("abc", "abc", 3));
    assert_false(st_ct_equal("abc", "abd", 3));
    assert_true(st_ct_equal("a", "b", 0));
}

/* ---- break the allocator on purpose ---- */

static long alloc_budget = -1; /* -1 = unlimited */
static long alloc_count;

static void *fail_malloc(size_t n)
{
    alloc_count++;
    if (alloc_budget >= 0 && alloc_count > alloc_budget)
        return NULL;
    return malloc(n);
}

static void *fail_realloc(void *p, size_t n)
{
    alloc_count++;
    if (alloc_budget >= 0 && alloc_count > alloc_budget)
        return NULL;
    return realloc(p, n);
}

static const st_alloc_hooks fail_hooks = {fail_malloc, fail_realloc, free};

/* One tls-exporter exchange with a known user; returns 0 only on success,
 * never crashes or leaks whichever allocation fails. */
static int exchange_under_budget(void)
{
    st_scram_cbind cb = {exporter, 32, endpoint, 32};
    st_scram_cred cred;
    const char *user, *err;
    int rc = -1;
    st_buf c1, s1, c2, s2;
    st_buf_init(&c1, 0);
    st_buf_init(&s1, 0);
    st_buf_init(&c2, 0);
    st_buf_init(&s2, 0);
    st_scram_client *sc = NULL;
    st_scram_server *ss = NULL;

    if (st_scram_cred_make(&cred, ST_SCRAM_SHA256, "pencil", NULL, 0, 4096) != 0)
        goto done;
    sc = st_scram_client_new(ST_SCRAM_SHA256, "user", "pencil", "tls-exporter", exporter,
                             32, 1);
    ss = st_scram_server_new(ST_SCRAM_SHA256, 1, 1, &cb);
    if (!sc || !ss)
        goto done;
    if (st_scram_client_first(sc, &c1) != 0 ||
        st_scram_server_start(ss, c1.data, c1.len, &user, &err) != 0 ||
        st_scram_server_challenge(ss, &cred, &s1) != 0 ||
        st_scram_client_final(sc, s1.data, s1.len, &c2) != 0 ||
        st_scram_server_finish(ss, c2.data, c2.len, &s2, &err) != 0 ||
        st_scram_client_verify(sc, s2.data, s2.len) != 0)
        goto done;
    rc = 0;

done:
    st_scram_client_free(sc);
    st_scram_server_free(ss);
    st_buf_free(&c1);
    st_buf_free(&s1);
    st_buf_free(&c2);
    st_buf_free(&s2);
    return rc;
}

static void scram_survives_each_allocation_failing(void **state)
{
    st_set_alloc_hooks(&fail_hooks);
    alloc_budget = -1;
    alloc_count = 0;
    assert_int_equal(exchange_under_budget(), 0);
    long total = alloc_count;
    assert_true(total > 0);
    for (long i = 0; i < total; i++) {
        alloc_budget = i;
        alloc_count = 0;
        assert_int_equal(exchange_under_budget(), -1);
    }
    st_set_alloc_hooks(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc5802_5_sha1_exchange),
        cmocka_unit_test(rfc7677_3_sha256_exchange),
        cmocka_unit_test(rfc5802_5_roundtrip_both_hashes),
        cmocka_unit_test(rfc5802_9_wrong_password_not_authorized),
        cmocka_unit_test(rfc6120_6_5_unknown_user_fake_challenge),
        cmocka_unit_test(rfc9266_tls_exporter_binding),
        cmocka_unit_test(rfc5929_tls_server_end_point_binding),
        cmocka_unit_test(rfc9266_binding_type_unavailable),
        cmocka_unit_test(rfc6120_6_5_plus_without_tls_encryption_required),
        cmocka_unit_test(rfc5802_6_downgrade_detected),
        cmocka_unit_test(rfc5802_6_plus_mechanism_requires_binding),
        cmocka_unit_test(xep0474_ssdp_value_table),
        cmocka_unit_test(xep0474_server_first_carries_h_attribute),
        cmocka_unit_test(rfc5802_5_1_saslname_and_authzid),
        cmocka_unit_test(rfc5802_7_malformed_client_first),
        cmocka_unit_test(rfc5802_7_malformed_client_final),
        cmocka_unit_test(rfc5802_7_extensions_in_client_final_ignored),
        cmocka_unit_test(scram_server_steps_out_of_order_fail),
        cmocka_unit_test(rfc5802_5_client_rejects_bad_server),
        cmocka_unit_test(scram_client_precomputed_salted_password),
        cmocka_unit_test(rfc6120_6_4_plain_cred_check),
        cmocka_unit_test(rfc4013_3_saslprep_password),
        cmocka_unit_test(scram_names_and_helpers),
        cmocka_unit_test(scram_survives_each_allocation_failing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
