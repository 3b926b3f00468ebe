/* tlsrec.h - the TLS 1.3 record layer (RFC 8446 §5), run by us once
 * OpenSSL has finished the handshake.
 *
 * An OpenSSL SSL object costs about 14 KB for as long as the connection
 * lives (the SSL structure with its 32 pipelined record slots, the session,
 * two cipher contexts), and most XMPP connections sit idle for hours. After
 * a TLS 1.3 handshake the connection needs much less: per direction a
 * traffic secret, a key, an IV and a sequence number. So the handshake is
 * OpenSSL's, and then the connection is handed over: st_tlsrec_take builds
 * a record layer from the application traffic secrets, the SSL is freed,
 * and st_tlsrec_read/st_tlsrec_write speak the record protocol on the
 * socket from there on. A resting connection (st_tlsrec_rest) keeps about
 * 400 bytes of TLS state; its cipher contexts are rebuilt from the keys on
 * the next record.
 *
 * How the hand-over knows the keys and where the sequence numbers stand:
 * st_tlsrec_prepare_ctx installs a keylog callback on the SSL_CTX (it sees
 * CLIENT_TRAFFIC_SECRET_0 and SERVER_TRAFFIC_SECRET_0 as they are derived)
 * and a message callback counting the records written and read after each
 * secret took effect (the NewSessionTickets OpenSSL sends under the
 * server's application key advance its sequence number). OpenSSL reads
 * without read-ahead, so after SSL_accept returns 1 nothing of the
 * client's application data has been consumed from the socket.
 * st_tlsrec_take checks all of it and declines (NULL: keep using the SSL)
 * when anything is not as expected: TLS 1.2, a suite other than the three
 * of RFC 8446 §9.1 (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305), a secret
 * not seen, bytes buffered inside OpenSSL.
 *
 * What the record layer does after the hand-over (RFC 8446 §5, §4.6.3, §6):
 * application data both ways in records of at most 2^14 bytes;
 * KeyUpdate from the peer (its read key is updated, and when it asks for
 * it we update ours and answer with our own KeyUpdate before the next
 * application data); close_notify both ways; every other alert, any other
 * post-handshake message (NewSessionTicket from a client, a stray
 * change_cipher_spec), a record that fails to decrypt, is too long or has
 * no content type ends the connection with the alert the RFC names
 * (unexpected_message, bad_record_mac, record_overflow, decode_error,
 * illegal_parameter). No padding is added to what we send.
 *
 * Everything is for one thread at a time per st_tlsrec; the scratch
 * buffer is per thread. */
#ifndef STARLING_TLSREC_H
#define STARLING_TLSREC_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/ssl.h>

typedef struct st_tlsrec st_tlsrec;

/* Install the callbacks st_tlsrec_take needs on a server SSL_CTX.
 * Replaces any keylog or message callback set before. 0 or -1. */
int st_tlsrec_prepare_ctx(SSL_CTX *ctx);

/* After SSL_accept returned 1 on a server SSL made from a prepared
 * context: a record layer continuing the connection, or NULL
 * when it cannot take over (see above) or is out of memory; the caller
 * then goes on with the SSL. On success the caller frees the SSL without
 * SSL_shutdown (the record layer owns the connection's TLS state now).
 * The captured secrets are wiped either way. */
st_tlsrec *st_tlsrec_take(SSL *ssl);

/* Read and decrypt from fd into p (at most n > 0 bytes). Returns the
 * number of plaintext bytes (> 0); -2 when no application data is
 * available now (the socket would block, or only records without
 * application data were read: come back when fd is readable); 0 when the
 * connection is over: the peer's close_notify, its alert, a TCP EOF, or a
 * protocol error on our side (the fatal alert has then been sent;
 * st_tlsrec_error says what it was). Plaintext decrypted beyond n is kept
 * and returned by the next calls before anything is read from fd, so the
 * caller must not rely on readiness of fd alone while st_tlsrec_pending
 * is non-zero. */
ssize_t st_tlsrec_read(st_tlsrec *r, int fd, void *p, size_t n);

/* Plaintext bytes decrypted and not yet returned by st_tlsrec_read. */
size_t st_tlsrec_pending(const st_tlsrec *r);

/* After a read that returned data: 1 if it found the socket empty (its
 * recv got less than it asked for), kept no plaintext and did not see the
 * connection end (a close_notify or alert behind the data), so another
 * read before fd is readable again would only return -2. */
int st_tlsrec_drained(const st_tlsrec *r);

/* Encrypt and send from p (n bytes). Returns how many bytes of p were
 * taken (> 0, possibly fewer than n); 0 when the socket takes nothing
 * now (wait for fd to be writable and call again, with the same or other
 * bytes: what was taken is never asked for again); -1 when the connection
 * failed (a send error, or it is over). Taken bytes that the socket did
 * not accept yet, at most one record, are kept and go first on the next
 * call. With n == 0 (p may be NULL) it only pushes out what is kept, and
 * the result means something else: 1 when nothing is kept any more, 0
 * while some still is, -1 on error. */
ssize_t st_tlsrec_write(st_tlsrec *r, int fd, const void *p, size_t n);

/* Bytes sealed and taken that the socket has not accepted yet. */
size_t st_tlsrec_unsent(const st_tlsrec *r);

/* Queue our close_notify (RFC 8446 §6.1) and push out what can be
 * pushed without blocking. Nothing is written after it. */
void st_tlsrec_close_notify(st_tlsrec *r, int fd);

/* Give back what an idle connection does not need: the cipher contexts
 * (rebuilt from the kept keys on the next record) and empty buffers.
 * Returns 1 if anything was freed. */
int st_tlsrec_rest(st_tlsrec *r);

/* Why the connection ended: NULL while it is fine, else a short reason
 * ("peer sent close_notify", "bad_record_mac", ...). */
const char *st_tlsrec_error(const st_tlsrec *r);

/* "TLSv1.3" and the suite's IANA name, for logs and status. */
const char *st_tlsrec_version(const st_tlsrec *r);
const char *st_tlsrec_cipher(const st_tlsrec *r);

/* Wipes the keys and frees everything (nothing is sent). NULL is fine. */
void st_tlsrec_free(st_tlsrec *r);

/* ---- for server/tlshs.c, our own handshake (tlshs.h) ----
 *
 * A record layer from traffic secrets of len bytes (the suite's hash
 * length) for suite 0x1301, 0x1302 or 0x1303; both sequence numbers start
 * at 0. NULL for another suite or length, or out of memory. The handshake
 * uses one with its handshake traffic secrets for the records it seals and
 * opens itself, then one with the application secrets for the rest. */
st_tlsrec *st_tlsrec_new(uint16_t suite, const unsigned char *client_secret,
                         const unsigned char *server_secret, size_t len);

/* Seal the n bytes at rec + 5 in place as one protected record of inner
 * content type `type` (22 handshake, 21 alert, 23 data), n <= 2^14; rec
 * has room for 5 + n + 17 bytes. Returns the record's length, 0 on error. */
size_t st_tlsrec_seal(st_tlsrec *r, unsigned char *rec, size_t n, int type);

/* Open the complete protected record at rec (its ct bytes after the
 * 5-byte header) in place: 0 with *type and the content in rec + 5,
 * *n bytes (padding and type removed); -1 if it does not authenticate;
 * -2 if it has no content type; -3 if its plaintext is over 2^14 + 1
 * bytes. */
int st_tlsrec_open(st_tlsrec *r, unsigned char *rec, size_t ct, int *type, size_t *n);

/* Seal a handshake message (a NewSessionTicket, at most 512 bytes) as
 * one record and send it, keeping what the socket does not take, as
 * st_tlsrec_write does with data. 0, or -1 when the connection failed. */
int st_tlsrec_write_handshake(st_tlsrec *r, int fd, const void *msg, size_t n);

/* Ciphertext the handshake read from the socket past its own end (the
 * client's first records), to be read before anything from fd. Only on a
 * fresh record layer. 0 or -1. */
int st_tlsrec_preload(st_tlsrec *r, const void *p, size_t n);

/* Bytes held that st_tlsrec_read will work on before reading fd again:
 * ciphertext not yet decrypted, plaintext not yet returned. */
size_t st_tlsrec_buffered(const st_tlsrec *r);

/* The key schedule's two primitives (RFC 8446 §7.1), for md = SHA-256 or
 * SHA-384 as fetched: HMAC with a key no longer than the hash's block,
 * and HKDF-Expand-Label(secret, label, context, n) with n <= Hash.length,
 * label at most 32 bytes, context at most 64. 0 or -1. */
int st_tls13_hmac(const EVP_MD *md, const unsigned char *key, size_t klen, const unsigned char *d,
                  size_t n, unsigned char *out);
int st_tls13_expand_label(const EVP_MD *md, const unsigned char *secret, const char *label,
                          const unsigned char *ctx, size_t clen, unsigned char *out, size_t n);

#endif
