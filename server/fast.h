/* fast.h - XEP-0484 FAST tokens with the HT-SHA-256-NONE mechanism
 * (draft-schmaus-kitten-sasl-ht): log in again with a token instead of the
 * password, in one round trip.
 *
 * The client proves it holds the token T with
 *     initial response = authcid NUL HMAC-SHA-256(T, "Initiator" || cb-data)
 * and the server answers with HMAC-SHA-256(T, "Responder" || cb-data) in
 * <success/>. With the -NONE variant cb-data is empty, so both values are
 * fixed for a token: the server never needs T itself. We store only
 * SHA-256 of the initiator value (checked by hashing what arrives and
 * comparing in constant time) and the responder value, so a copy of the
 * database logs nobody in, just as SCRAM's StoredKey does not. The
 * channel-binding variants (-ENDP, -EXPR, -UNIQ) bind to per-connection
 * data and would need T in the clear (or reversibly encrypted) at rest;
 * that trade is why only -NONE is offered.
 *
 * A token is tied to the account, the SASL2 user-agent id and the
 * mechanism. Rotation: a login with a token may ask for (or, past half its
 * lifetime, get) a successor; both stay valid until the successor is used
 * once, then the old one is gone (storage fast_use). The optional XEP-0484
 * count must grow with every login (replay protection). */
#ifndef STARLING_FAST_H
#define STARLING_FAST_H
#include <stddef.h>
#include "server/storage/storage.h"

#define ST_NS_FAST "urn:xmpp:fast:0"
#define ST_FAST_HT_NONE "HT-SHA-256-NONE"
#define ST_FAST_SECRET_MAX 64   /* base64 of 32 random bytes, with NUL */
#define ST_FAST_AGENT_MAX 256   /* longest user-agent id we keep */
#define ST_FAST_MAX_PER_AGENT 2 /* the current token and its successor */

/* A new token expiring at expiry (unix seconds): the client's copy in
 * secret (NUL-terminated base64; wipe it after sending) and the record to
 * store in rec. 0 or -1. */
int st_fast_token_new(long long expiry, char *secret, size_t secret_sz, st_fast_token *rec);

/* Split an HT initial response into the authcid (NUL-terminated into user)
 * and the 32-byte proof. 0, or -1 if it is not one. */
int st_fast_parse(const char *msg, size_t len, char *user, size_t usz, unsigned char *proof);

/* The token among recs that proof opens, or -1. Every record is compared
 * in constant time, whether or not an earlier one matched. */
int st_fast_match(const unsigned char *proof, const st_fast_token *recs, size_t n);

/* A token login, run on the storage thread with st_fast_login_work(). */
typedef struct st_fast_login {
    /* in */
    char host[1024], user[1024], agent[ST_FAST_AGENT_MAX + 1];
    unsigned char proof[32];
    long long count;      /* -1: none given */
    int invalidate;       /* <fast invalidate='true'/>: end the token after this login */
    int want_new;         /* <request-token/>: hand out a successor */
    long long half_life;  /* seconds; a token with less left than this is rotated anyway */
    st_fast_token next;   /* the successor's record, prepared by the caller */
    /* out */
    int result;           /* 0 ok, 1 not-authorized, 2 credentials-expired, -1 error */
    int rotated;          /* next was stored: send its secret */
    unsigned char responder[32];
} st_fast_login;

void st_fast_login_work(const st_store_ops *ops, void *h, st_fast_login *l);

#endif
