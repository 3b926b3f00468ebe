/* hmac.c - HMAC over fetched digests (see hmac.h). */
#include "starling/hmac.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <string.h>

static const char *const md_names[] = {"SHA1", "SHA256", "SHA384", "SHA512"};
static EVP_MD *mds[sizeof md_names / sizeof md_names[0]];
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void fetch_mds(void)
{
    for (size_t i = 0; i < sizeof md_names / sizeof md_names[0]; i++)
        mds[i] = EVP_MD_fetch(NULL, md_names[i], NULL);
}

const EVP_MD *st_md(const char *name)
{
    pthread_once(&md_once, fetch_mds);
    for (size_t i = 0; i < sizeof md_names / sizeof md_names[0]; i++)
        if (strcmp(name, md_names[i]) == 0) return mds[i];
    return NULL;
}

/* One context per thread, freed when the thread ends (the storage thread
 * checks SCRAM credentials too): the key's destructor runs at pthread exit,
 * the thread-local pointer keeps the main thread's reachable until exit. */
static _Thread_local EVP_MD_CTX *tls_ctx;
static pthread_key_t ctx_key;
static int ctx_key_ok;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;

static void ctx_free(void *p)
{
    EVP_MD_CTX_free(p);
    tls_ctx = NULL;
}

static void make_ctx_key(void)
{
    ctx_key_ok = pthread_key_create(&ctx_key, ctx_free) == 0;
}

static EVP_MD_CTX *md_ctx(void)
{
    if (tls_ctx) return tls_ctx;
    pthread_once(&ctx_once, make_ctx_key);
    if (!ctx_key_ok || !(tls_ctx = EVP_MD_CTX_new())) return NULL;
    if (pthread_setspecific(ctx_key, tls_ctx) != 0) {
        EVP_MD_CTX_free(tls_ctx);
        tls_ctx = NULL;
    }
    return tls_ctx;
}

/* One hash of pad (the key XOR byte, block long) and then data. */
static int pad_hash(EVP_MD_CTX *c, const EVP_MD *md, unsigned char *pad, const unsigned char *key,
                    size_t klen, size_t block, unsigned char x, const void *data, size_t n,
                    unsigned char *out)
{
    unsigned int l = 0;
    for (size_t i = 0; i < block; i++)
        pad[i] = (unsigned char)((i < klen ? key[i] : 0) ^ x);
    return EVP_DigestInit_ex(c, md, NULL) == 1 && EVP_DigestUpdate(c, pad, block) == 1 &&
                   EVP_DigestUpdate(c, data, n) == 1 && EVP_DigestFinal_ex(c, out, &l) == 1
               ? 0
               : -1;
}

int st_hmac(const EVP_MD *md, const void *key, size_t klen, const void *data, size_t n,
            unsigned char *out)
{
    EVP_MD_CTX *c = md_ctx();
    unsigned char pad[128], inner[EVP_MAX_MD_SIZE], hashed[EVP_MAX_MD_SIZE];
    if (!c || !md) return -1;
    size_t block = (size_t)EVP_MD_get_block_size(md), hl = (size_t)EVP_MD_get_size(md);
    if (block > sizeof pad || hl > sizeof inner) return -1;
    const unsigned char *k = key;
    if (klen > block) { /* RFC 2104 §3: a long key is replaced by its hash */
        unsigned int l = 0;
        if (EVP_DigestInit_ex(c, md, NULL) != 1 || EVP_DigestUpdate(c, key, klen) != 1 ||
            EVP_DigestFinal_ex(c, hashed, &l) != 1)
            return -1;
        k = hashed;
        klen = hl;
    }
    int r = pad_hash(c, md, pad, k, klen, block, 0x36, data, n, inner);
    if (r == 0) r = pad_hash(c, md, pad, k, klen, block, 0x5c, inner, hl, out);
    OPENSSL_cleanse(pad, sizeof pad);
    OPENSSL_cleanse(inner, sizeof inner);
    OPENSSL_cleanse(hashed, sizeof hashed);
    return r;
}
