/* tls13.h - RFC 8446's wire constants, shared by our record layer
 * (tlsrec.c) and our handshake (tlshs.c). */
#ifndef STARLING_TLS13_H
#define STARLING_TLS13_H

#define TLS13_HDR 5                          /* a record's header, §5.1 */
#define TLS13_MAX_PLAIN 16384                /* 2^14, §5.1 */
#define TLS13_MAX_CT (TLS13_MAX_PLAIN + 256) /* §5.2 */
#define TLS13_TAG 16                         /* the AEAD tag of our suites */

/* Content types (§5.1). */
enum { CT_CCS = 20, CT_ALERT = 21, CT_HANDSHAKE = 22, CT_DATA = 23 };

/* Handshake message types (§4). */
enum {
    HS_CLIENT_HELLO = 1,
    HS_SERVER_HELLO = 2,
    HS_NEW_SESSION_TICKET = 4,
    HS_ENCRYPTED_EXTENSIONS = 8,
    HS_CERTIFICATE = 11,
    HS_CERTIFICATE_VERIFY = 15,
    HS_FINISHED = 20,
    HS_KEY_UPDATE = 24,
};

/* The alerts we send (§6). */
enum {
    AL_CLOSE_NOTIFY = 0,
    AL_UNEXPECTED_MESSAGE = 10,
    AL_BAD_RECORD_MAC = 20,
    AL_RECORD_OVERFLOW = 22,
    AL_ILLEGAL_PARAMETER = 47,
    AL_DECODE_ERROR = 50,
    AL_DECRYPT_ERROR = 51,
    AL_INTERNAL_ERROR = 80,
    AL_USER_CANCELED = 90,
};

#endif
