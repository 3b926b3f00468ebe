/* tlshs.h - our own server side of the common TLS 1.3 handshake
 * (RFC 8446 §4), with OpenSSL's kept for everything else.
 *
 * Why: OpenSSL 3.0 spends 0.25-0.33 ms of server CPU on one TLS 1.3
 * handshake on our 2-core machine (bench/tls_handshake), of which the
 * elliptic-curve arithmetic is about 0.11 ms; the rest is its machinery
 * (provider fetches, locks, allocation, SSL_new/SSL_free). Clients that
 * log in over STARTTLS pay that on every connection (ARCHITECTURE.md 34).
 *
 * What is handled here, and only this: a ClientHello that arrived whole in
 * one record, offers TLS 1.3 (supported_versions), one of the three suites
 * of RFC 8446 §9.1, a key share for X25519 or secp256r1, and a signature
 * scheme our key can make; no early_data, no cookie, no extension twice,
 * pre_shared_key last if present. The server flight (ServerHello, a
 * change_cipher_spec when the client sent a legacy session id,
 * EncryptedExtensions, Certificate, CertificateVerify, Finished) goes out
 * in one send; the client's Finished is checked; one NewSessionTicket is
 * sent under the application key, and the connection continues in an
 * st_tlsrec (tlsrec.h). A ClientHello with a pre_shared_key naming one of
 * our tickets (psk_dhe_ke) resumes: binder checked, no Certificate.
 *
 * Everything else goes to OpenSSL, untouched: the ClientHello is read with
 * MSG_PEEK and consumed only when we take it, so on ST_TLSHS_OPENSSL the
 * socket still holds every byte the client sent and an SSL made as before
 * (st_tls_new_ssl) starts from the beginning. That covers TLS 1.2, a
 * HelloRetryRequest (no share we can use), malformed ClientHellos (OpenSSL
 * sends the alert), a ClientHello split across records or not all arrived
 * yet, and contexts whose key we do not sign with.
 *
 * After our ServerHello the connection is ours: a client Finished that
 * does not verify, a record that does not authenticate, an alert or any
 * other message ends it with the alert RFC 8446 §6 names (sealed under
 * our application key, as everything after our Finished, §4.4.4). What the handshake read past the client's
 * Finished (its first application data, often in the same segment) is
 * handed to the record layer, so after ST_TLSHS_DONE read from the
 * st_tlsrec at once when st_tlsrec_buffered says so, without waiting for
 * fd to become readable.
 *
 * One thread at a time per st_tlshs and per st_tlshs_ctx. */
#ifndef STARLING_TLSHS_H
#define STARLING_TLSHS_H
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include "server/tlsrec.h"

typedef struct st_tlshs_ctx st_tlshs_ctx;
typedef struct st_tlshs st_tlshs;

/* Built from a loaded server SSL_CTX: its certificate and chain, its
 * private key, a fresh random ticket key (so tickets do not survive a
 * reload or a restart). NULL with a reason in err when the key is of a
 * kind we do not sign with here (then every handshake is OpenSSL's) or
 * on allocation failure. Reference counted: the creator holds one. */
st_tlshs_ctx *st_tlshs_ctx_new(SSL_CTX *ctx, char *err, size_t errlen);
void st_tlshs_ctx_ref(st_tlshs_ctx *x);
void st_tlshs_ctx_unref(st_tlshs_ctx *x); /* NULL is fine */

/* Seconds a ticket we issue stays valid (also its ticket_lifetime). */
void st_tlshs_ctx_set_ticket_lifetime(st_tlshs_ctx *x, uint32_t seconds);

/* One handshake on a connected socket; holds a reference to x.
 * direct_tls = 1 on XEP-0368 ports: ALPN "xmpp-client" is selected when
 * offered (and a client offering only other protocols is let in without
 * ALPN, as tls.c does). NULL on allocation failure. */
st_tlshs *st_tlshs_new(st_tlshs_ctx *x, int direct_tls);

enum {
    ST_TLSHS_READ = 1, /* call again when fd is readable */
    ST_TLSHS_WRITE,    /* call again when fd is writable */
    ST_TLSHS_DONE,     /* st_tlshs_finish gives the record layer */
    ST_TLSHS_OPENSSL,  /* not ours: nothing was read or sent; use an SSL */
    ST_TLSHS_FAILED,   /* over; st_tlshs_error says why (alert sent if any) */
};

/* Advance the handshake on fd (non-blocking). Returns one of the above. */
int st_tlshs_step(st_tlshs *h, int fd);

/* After ST_TLSHS_DONE: the record layer that continues the connection
 * (the caller owns it), once; NULL otherwise. */
st_tlsrec *st_tlshs_finish(st_tlshs *h);

/* After ST_TLSHS_DONE, for SCRAM-*-PLUS: tls-exporter (RFC 9266, the
 * 32-byte TLS-Exporter("EXPORTER-Channel-Binding", "", 32)), and
 * tls-server-end-point (RFC 5929 §4.1, as st_tls_server_end_point).
 * 0, or -1 when not available. */
int st_tlshs_exporter(const st_tlshs *h, unsigned char out[32]);
int st_tlshs_server_end_point(const st_tlshs *h, unsigned char out[64], size_t *len);

/* 1 when the handshake resumed a ticket of ours. */
int st_tlshs_resumed(const st_tlshs *h);
/* The negotiated suite's IANA name, or NULL before the ServerHello. */
const char *st_tlshs_cipher(const st_tlshs *h);
/* The ALPN protocol selected ("xmpp-client") or NULL. */
const char *st_tlshs_alpn(const st_tlshs *h);
/* Why it failed or went to OpenSSL ("TLS 1.2 only", "bad client
 * Finished", ...), NULL while fine. */
const char *st_tlshs_error(const st_tlshs *h);

/* Wipes the secrets and frees (nothing is sent). NULL is fine. */
void st_tlshs_free(st_tlshs *h);

#endif
