/* fast.c - XEP-0484 FAST tokens, HT-SHA-256-NONE; see fast.h. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "server/fast.h"
#include "starling/base64.h"
#include "starling/scram.h"

#define TOKEN_BYTES 32

/* HMAC-SHA-256(key, label), the HT proof for empty cb-data. */
static int ht_proof(const char *key, size_t klen, const char *label, unsigned char *out)
{
    unsigned int n = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)label, strlen(label), out, &n))
        return -1;
    return n == 32 ? 0 : -1;
}

static int sha256(const unsigned char *in, size_t n, unsigned char *out)
{
    unsigned int olen = 0;
    return EVP_Digest(in, n, out, &olen, EVP_sha256(), NULL) == 1 && olen == 32 ? 0 : -1;
}

int st_fast_token_new(long long expiry, char *secret, size_t secret_sz, st_fast_token *rec)
{
    unsigned char rnd[TOKEN_BYTES], init[32];
    st_buf b;
    int rc = -1;
    st_buf_init(&b, ST_FAST_SECRET_MAX);
    memset(rec, 0, sizeof *rec);
    if (RAND_bytes(rnd, sizeof rnd) != 1 || st_base64_encode(rnd, sizeof rnd, &b) != 0 ||
        b.len >= secret_sz)
        goto done;
    memcpy(secret, b.data, b.len);
    secret[b.len] = '\0';
    /* The client uses the token text (its UTF-8 bytes) as the HMAC key. */
    if (ht_proof(secret, b.len, "Initiator", init) != 0 ||
        sha256(init, sizeof init, rec->initiator_hash) != 0 ||
        ht_proof(secret, b.len, "Responder", rec->responder) != 0)
        goto done;
    snprintf(rec->mech, sizeof rec->mech, "%s", ST_FAST_HT_NONE);
    rec->expiry = expiry;
    rec->count = -1;
    rc = 0;
done:
    if (rc != 0 && secret_sz) OPENSSL_cleanse(secret, secret_sz);
    OPENSSL_cleanse(rnd, sizeof rnd);
    OPENSSL_cleanse(init, sizeof init);
    if (b.data) OPENSSL_cleanse(b.data, b.len);
    st_buf_free(&b);
    return rc;
}

int st_fast_parse(const char *msg, size_t len, char *user, size_t usz, unsigned char *proof)
{
    const char *nul = msg ? memchr(msg, '\0', len) : NULL;
    if (!nul) return -1;
    size_t ul = (size_t)(nul - msg);
    if (ul == 0 || ul >= usz || len - ul - 1 != 32) return -1;
    memcpy(user, msg, ul);
    user[ul] = '\0';
    memcpy(proof, nul + 1, 32);
    return 0;
}

int st_fast_match(const unsigned char *proof, const st_fast_token *recs, size_t n)
{
    unsigned char h[32];
    int found = -1;
    if (sha256(proof, 32, h) != 0) return -1;
    for (size_t i = 0; i < n; i++) {
        /* no early exit: the time does not say which record matched */
        int eq = st_ct_equal(h, recs[i].initiator_hash, sizeof h);
        if (eq && found < 0) found = (int)i;
    }
    OPENSSL_cleanse(h, sizeof h);
    return found;
}

void st_fast_login_work(const st_store_ops *ops, void *h, st_fast_login *l)
{
    st_fast_token recs[ST_FAST_MAX_PER_AGENT + 2];
    long long now = (long long)time(NULL);
    l->result = -1;
    l->rotated = 0;
    int n = ops->fast_list(h, l->host, l->user, l->agent, recs, sizeof recs / sizeof recs[0]);
    if (n < 0) goto done;
    int i = st_fast_match(l->proof, recs, (size_t)n);
    /* a token works only with the mechanism it was issued for */
    if (i < 0 || strcmp(recs[i].mech, ST_FAST_HT_NONE) != 0) {
        l->result = 1;
        goto done;
    }
    if (recs[i].expiry <= now) {
        ops->fast_del(h, l->host, l->user, l->agent, recs[i].id);
        l->result = 2;
        goto done;
    }
    int r = ops->fast_use(h, l->host, l->user, l->agent, recs[i].id, l->count);
    if (r != 0) {
        l->result = r < 0 ? -1 : 1; /* 1: a count that did not grow is a replay */
        goto done;
    }
    memcpy(l->responder, recs[i].responder, sizeof l->responder);
    if (l->invalidate) {
        /* a logout: no token of this device may work any more */
        if (ops->fast_del(h, l->host, l->user, l->agent, 0) < 0) goto done;
    } else if (l->want_new || recs[i].expiry - now < l->half_life) {
        /* the successor joins the used token; fast_use retires the old
         * one when the successor is first used */
        long long id = 0;
        l->rotated = ops->fast_put(h, l->host, l->user, l->agent, &l->next,
                                   ST_FAST_MAX_PER_AGENT, &id) == 0;
    }
    l->result = 0;
done:
    OPENSSL_cleanse(recs, sizeof recs);
}
