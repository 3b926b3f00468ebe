/* tls.h - the server's TLS: OpenSSL 3 context, first-start certificate,
 * reload on SIGHUP, channel bindings for SCRAM-*-PLUS.
 *
 * One st_tls_ctx per server. It holds the current SSL_CTX; connections are
 * created from it with st_tls_new_ssl. Every SSL holds its own reference to
 * the SSL_CTX it was made from, so st_tls_ctx_reload can swap in a new
 * certificate at any time: new connections get the new context, existing
 * ones keep theirs, and the old SSL_CTX is freed when its last SSL goes.
 * All calls are for the loop thread (reload runs from the SIGHUP handler's
 * loop callback, not from the signal handler itself).
 *
 * SSL objects come with SSL_MODE_ENABLE_PARTIAL_WRITE and
 * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER: SSL_write may write less than asked
 * (consume what it returns from the send queue), and a retried write may
 * pass a buffer that has moved (the queue may have grown in between).
 *
 * docs/internals/tls.md explains the choices. */
#ifndef STARLING_TLS_H
#define STARLING_TLS_H
#include <stddef.h>
#include <openssl/ssl.h>

typedef struct st_tls_ctx st_tls_ctx;

/* Build a server context from PEM files (the certificate file may hold the
 * chain after the leaf). NULL with a one-line reason in err on failure.
 * The caller owns the result (st_tls_ctx_free). */
st_tls_ctx *st_tls_ctx_new(const char *cert_path, const char *key_path, char *err, size_t errlen);
/* Load the files again into a fresh SSL_CTX and make it current. On failure
 * returns -1 with the reason in err and the old context stays in use. */
int st_tls_ctx_reload(st_tls_ctx *t, const char *cert_path, const char *key_path, char *err,
                      size_t errlen);
void st_tls_ctx_free(st_tls_ctx *t);

/* The current SSL_CTX, borrowed: valid until the next reload or free
 * (SSL_CTX_up_ref it to keep it longer). */
SSL_CTX *st_tls_ctx_get(const st_tls_ctx *t);
/* A new server-side SSL on fd (accept state set), or NULL. direct_tls = 1
 * for XEP-0368 ports (the ALPN "xmpp-client" is accepted there), 0 after
 * STARTTLS. The caller owns the SSL (SSL_free). */
SSL *st_tls_new_ssl(st_tls_ctx *t, int fd, int direct_tls);

/* Our own TLS 1.3 handshake for a new connection (server/tlshs.h), tried
 * before an SSL: NULL when the current context's key is not one it signs
 * with (st_tls_hs_unavailable says why) or out of memory; then use
 * st_tls_new_ssl. On ST_TLSHS_OPENSSL the caller frees it and makes the
 * SSL on the same socket. */
struct st_tlshs;
struct st_tlshs *st_tls_new_hs(st_tls_ctx *t, int direct_tls);
const char *st_tls_hs_unavailable(const st_tls_ctx *t);

/* First start: if neither file exists, generate an EC P-256 key (mode 0600)
 * and a self-signed X.509 v3 certificate for hostnames[0..n) (CN = the
 * first, a subjectAltName for each, ten years). Missing directories are
 * created 0700. Both files present: nothing to do. Only one present: an
 * error naming the missing one (we never overwrite a key the admin put
 * there). 0, or -1 with the reason in err. */
int st_tls_ensure_cert(const char *cert_path, const char *key_path, const char *const *hostnames,
                       size_t n, char *err, size_t errlen);

/* Channel bindings (RFC 5056) for SCRAM-*-PLUS.
 *
 * tls-server-end-point (RFC 5929 §4.1): the hash of the server certificate,
 * with the certificate's signature hash (MD5 and SHA-1 become SHA-256).
 * On a server SSL this is our certificate, on a client SSL the peer's, so
 * both ends compute the same bytes. Returns 0 and *len (<= 64), or -1 if
 * there is no certificate or its signature has no single hash (Ed25519).
 *
 * tls-exporter (RFC 9266): 32 bytes of SSL_export_keying_material with the
 * label "EXPORTER-Channel-Binding" and no context. Defined only for TLS 1.3
 * (RFC 9266 §3: TLS 1.2 without extended master secret is unsafe, and we do
 * not track EMS), so it returns -1 on TLS 1.2; the server then does not
 * advertise tls-exporter in its channel-binding list (XEP-0440). */
int st_tls_server_end_point(SSL *ssl, unsigned char out[64], size_t *len);
/* The same for a certificate in hand (server/tlshs.c's, computed once). */
int st_tls_cert_end_point(X509 *cert, unsigned char out[64], size_t *len);
int st_tls_exporter(SSL *ssl, unsigned char out[32]);

#endif
