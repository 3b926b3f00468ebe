/* scram.h - SCRAM-SHA-1 / SCRAM-SHA-256 and their -PLUS variants (RFC 5802,
 * RFC 7677, channel binding RFC 5929 tls-server-end-point and RFC 9266
 * tls-exporter), sans-I/O, on OpenSSL primitives.
 *
 * Servers store only st_scram_cred (salt, iterations, StoredKey, ServerKey),
 * never the password. The server side is split into three steps because the
 * credential lookup in between is asynchronous:
 *
 *   st_scram_server_start(ss, client_first)  -> username to look up
 *   st_scram_server_challenge(ss, cred)      -> server-first (cred NULL for an
 *                                               unknown user: a fake challenge,
 *                                               so users cannot be enumerated)
 *   st_scram_server_finish(ss, client_final) -> server-final, or failure
 *
 * Messages in and out are the raw SCRAM strings (not base64). */
#ifndef STARLING_SCRAM_H
#define STARLING_SCRAM_H
#include <stddef.h>
#include "starling/buf.h"

typedef enum { ST_SCRAM_SHA1 = 0, ST_SCRAM_SHA256 = 1 } st_scram_hash;
#define ST_SCRAM_KEY_MAX 32
#define ST_SCRAM_SALT_MAX 64
#define ST_SCRAM_DEFAULT_ITERATIONS 4096

typedef struct st_scram_cred {
    st_scram_hash hash;
    unsigned iterations;
    unsigned char salt[ST_SCRAM_SALT_MAX];
    size_t salt_len;
    unsigned char stored_key[ST_SCRAM_KEY_MAX]; /* first hash_len bytes used */
    unsigned char server_key[ST_SCRAM_KEY_MAX];
} st_scram_cred;

size_t st_scram_hash_len(st_scram_hash h); /* 20 or 32 */
const char *st_scram_mech_name(st_scram_hash h, int plus); /* "SCRAM-SHA-1-PLUS" ... */

/* Derive the stored credential. The password is SASLprep'd here. salt NULL =
 * 16 random bytes; iterations 0 = default. Returns 0 or -1. */
int st_scram_cred_make(st_scram_cred *out, st_scram_hash h, const char *password,
                       const unsigned char *salt, size_t salt_len, unsigned iterations);
/* Check a plaintext password against a stored credential (for SASL PLAIN);
 * constant-time compare. 1 = match, 0 = no match, -1 = error. */
int st_scram_cred_check(const st_scram_cred *c, const char *password);

/* Channel-binding data the server can offer, from the TLS layer. */
typedef struct st_scram_cbind {
    const unsigned char *tls_exporter; /* RFC 9266, 32 bytes; NULL if unavailable */
    size_t tls_exporter_len;
    const unsigned char *tls_server_end_point; /* RFC 5929 hash of our cert; NULL if none */
    size_t tls_server_end_point_len;
} st_scram_cbind;

typedef struct st_scram_server st_scram_server;

/* plus: the client chose the -PLUS mechanism. cb: what this connection can
 * bind to (NULL without TLS). When the server advertised -PLUS but the client
 * says "y" (RFC 5802 §6), authentication fails (downgrade). */
st_scram_server *st_scram_server_new(st_scram_hash h, int plus, int plus_advertised,
                                     const st_scram_cbind *cb);
void st_scram_server_free(st_scram_server *ss);
/* Tests only: use this server nonce part instead of a random one. */
void st_scram_server_set_nonce(st_scram_server *ss, const char *nonce);

/* Step 1. Parses client-first-message. On success *username points to the
 * decoded authcid (borrowed, owned by ss) and 0 is returned. On failure -1 and
 * *err names the SASL failure condition ("malformed-request", "invalid-authzid"...). */
int st_scram_server_start(st_scram_server *ss, const char *msg, size_t len,
                          const char **username, const char **err);
/* The hash this exchange uses. */
st_scram_hash st_scram_server_hash(const st_scram_server *ss);
/* The decoded authcid from client-first (borrowed), NULL before start. */
const char *st_scram_server_username(const st_scram_server *ss);
/* The authzid the client asked for, or NULL (borrowed). */
const char *st_scram_server_authzid(const st_scram_server *ss);
/* XEP-0474 (SASL SCRAM Downgrade Protection, v0.5): the value of the "h"
 * attribute for the SASL mechanisms and XEP-0440 channel-binding types the
 * server advertised on this stream. Both lists are sorted (i;octet) and
 * joined with %x1E, the binding list follows a %x1F; cb_types NULL (or
 * ncb 0) means XEP-0440 was not used. The string is hashed with h and its
 * base64 appended to out. 0, or -1 (OOM, more than ST_SCRAM_SSDP_MAX names). */
#define ST_SCRAM_SSDP_MAX 32
int st_scram_ssdp_value(st_scram_hash h, const char *const *mechs, size_t nmechs,
                        const char *const *cb_types, size_t ncb, st_buf *out);
/* Include h=<SSDP value> in server-first-message (call before the challenge).
 * Without this call server-first is exactly RFC 5802's. 0 or -1. */
int st_scram_server_set_ssdp(st_scram_server *ss, const char *const *mechs, size_t nmechs,
                             const char *const *cb_types, size_t ncb);
/* Step 2. Appends server-first-message to out. cred NULL = unknown user. */
int st_scram_server_challenge(st_scram_server *ss, const st_scram_cred *cred, st_buf *out);
/* Step 3. Verifies client-final-message, appends server-final-message ("v=...")
 * to out and returns 0; or returns -1 with *err ("not-authorized",
 * "malformed-request", ...). */
int st_scram_server_finish(st_scram_server *ss, const char *msg, size_t len, st_buf *out,
                           const char **err);

/* ---- client side (libstarling, bench load generator, tests) ---- */
typedef struct st_scram_client st_scram_client;
/* cb_name: NULL (no binding, gs2 "n" or "y" when supports_plus says the client
 * could bind but the server did not offer -PLUS), or "tls-exporter" /
 * "tls-server-end-point" with cb_data. */
st_scram_client *st_scram_client_new(st_scram_hash h, const char *username,
                                     const char *password, const char *cb_name,
                                     const unsigned char *cb_data, size_t cb_len,
                                     int client_supports_plus);
void st_scram_client_free(st_scram_client *sc);
void st_scram_client_set_nonce(st_scram_client *sc, const char *nonce); /* tests */
/* Precomputed keys so a load generator derives them once per user. */
int st_scram_client_set_salted_password(st_scram_client *sc, const unsigned char *sp, size_t n);
int st_scram_client_first(st_scram_client *sc, st_buf *out);
int st_scram_client_final(st_scram_client *sc, const char *server_first, size_t len,
                          st_buf *out);
/* 0 if the server signature verifies, -1 otherwise. */
int st_scram_client_verify(st_scram_client *sc, const char *server_final, size_t len);
/* After client_final: SaltedPassword for caching (borrowed, hash_len bytes). */
const unsigned char *st_scram_client_salted_password(const st_scram_client *sc, size_t *n);

/* Constant-time comparison. */
int st_ct_equal(const void *a, const void *b, size_t n);

#endif
