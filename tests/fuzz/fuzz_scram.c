/* fuzz_scram.c - libFuzzer target for the SCRAM server (and client) parsers.
 *
 * Input layout: one flag byte, then the first peer message, a 0xFF byte, and
 * the second peer message. 0xFF can never occur in valid UTF-8, so using it
 * as the separator hides nothing a real peer could send.
 *
 * Flag bits:  0-1 TLS: 0 none, 1 both bindings, 2 tls-exporter only,
 *                  3 tls-server-end-point only
 *             2   client chose -PLUS        3  server advertised -PLUS
 *             4   SHA-256 (else SHA-1)      5  unknown user (cred NULL)
 *             6   client mode: feed server-first / server-final to a client
 *
 * The server nonce part is fixed ("SNONCE") and the credential is the real
 * one for password "pencil" with a fixed salt, so seed files recorded from a
 * real exchange replay all the way to a successful v=. The client side uses a
 * preset SaltedPassword so no input makes us run PBKDF2. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "starling/buf.h"
#include "starling/scram.h"

static const unsigned char exporter[32] = "0123456789abcdef0123456789abcdef";
static const unsigned char endpoint[32] = "cert-hash-cert-hash-cert-hash-!!";
static const unsigned char salt[12] = "fuzz-salt-12";

static st_scram_cred creds[2];
static int ready;

static void setup(void)
{
    if (ready)
        return;
    if (st_scram_cred_make(&creds[0], ST_SCRAM_SHA1, "pencil", salt, sizeof salt, 4096) != 0 ||
        st_scram_cred_make(&creds[1], ST_SCRAM_SHA256, "pencil", salt, sizeof salt, 4096) != 0)
        abort();
    ready = 1;
}

static void run_server(unsigned flags, const char *m1, size_t l1, const char *m2, size_t l2)
{
    st_scram_cbind cb = {exporter, 32, endpoint, 32};
    st_scram_hash h = (flags & 16) ? ST_SCRAM_SHA256 : ST_SCRAM_SHA1;
    const char *user = NULL, *err = NULL;
    st_buf out;

    switch (flags & 3) {
    case 2:
        cb.tls_server_end_point = NULL;
        cb.tls_server_end_point_len = 0;
        break;
    case 3:
        cb.tls_exporter = NULL;
        cb.tls_exporter_len = 0;
        break;
    }
    st_buf_init(&out, 4096);
    st_scram_server *ss = st_scram_server_new(h, flags & 4, flags & 8, (flags & 3) ? &cb : NULL);
    if (!ss)
        abort();
    st_scram_server_set_nonce(ss, "SNONCE");
    if (st_scram_server_start(ss, m1, l1, &user, &err) != 0) {
        if (!err || user)
            abort();
        goto done;
    }
    if (!user)
        abort();
    if (st_scram_server_challenge(ss, (flags & 32) ? NULL : &creds[h], &out) != 0)
        goto done;
    st_buf_reset(&out);
    err = NULL;
    if (st_scram_server_finish(ss, m2, l2, &out, &err) == 0) {
        if (flags & 32)
            abort(); /* an unknown user must never get in */
        if (out.len < 3 || memcmp(out.data, "v=", 2) != 0)
            abort();
    } else if (!err) {
        abort();
    }

done:
    st_scram_server_free(ss);
    st_buf_free(&out);
}

static void run_client(unsigned flags, const char *m1, size_t l1, const char *m2, size_t l2)
{
    st_scram_hash h = (flags & 16) ? ST_SCRAM_SHA256 : ST_SCRAM_SHA1;
    unsigned char sp[32] = {0};
    st_buf out;

    st_buf_init(&out, 4096);
    st_scram_client *sc = (flags & 4)
        ? st_scram_client_new(h, "user", "pencil", "tls-exporter", exporter, 32, 1)
        : st_scram_client_new(h, "user", "pencil", NULL, NULL, 0, flags & 8);
    if (!sc)
        abort();
    st_scram_client_set_nonce(sc, "CNONCE");
    if (st_scram_client_set_salted_password(sc, sp, st_scram_hash_len(h)) != 0 ||
        st_scram_client_first(sc, &out) != 0)
        abort();
    st_buf_reset(&out);
    if (st_scram_client_final(sc, m1, l1, &out) == 0)
        st_scram_client_verify(sc, m2, l2);
    st_scram_client_free(sc);
    st_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    const char *sep = memchr(p, 0xff, n);
    size_t l1 = sep ? (size_t)(sep - p) : n;
    const char *m2 = sep ? sep + 1 : p + n;
    size_t l2 = sep ? n - l1 - 1 : 0;

    /* Copy each message into its own allocation so ASan sees any read past
     * the length we gave. */
    char *a = malloc(l1 ? l1 : 1), *b = malloc(l2 ? l2 : 1);
    if (!a || !b)
        abort();
    memcpy(a, p, l1);
    memcpy(b, m2, l2);
    if (flags & 64)
        run_client(flags, a, l1, b, l2);
    else
        run_server(flags, a, l1, b, l2);
    free(a);
    free(b);
    return 0;
}
