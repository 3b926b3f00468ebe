/* hmac.h - HMAC (RFC 2104) over a digest fetched once.
 *
 * OpenSSL 3.0's one-shot HMAC() fetches its MAC implementation on every
 * call, and EVP_sha1() and friends make EVP_DigestInit_ex look the digest
 * up again each time: about 1.6 us per HMAC-SHA-1 here, against 0.4 us
 * for the same two hashes over a fetched digest and a context kept per
 * thread. SCRAM makes two HMACs per login, the TLS 1.3 key schedule some
 * thirty per handshake. */
#ifndef STARLING_HMAC_H
#define STARLING_HMAC_H

#include <stddef.h>

#include <openssl/evp.h>

/* The digest by name ("SHA1", "SHA256", "SHA384", "SHA512"), fetched on
 * first use and kept; NULL if OpenSSL has none by that name. */
const EVP_MD *st_md(const char *name);

/* out = HMAC(md, key, data): EVP_MD_get_size(md) bytes. Keys longer than
 * the digest's block are hashed first, as RFC 2104 §3 says. 0 or -1. */
int st_hmac(const EVP_MD *md, const void *key, size_t klen, const void *data, size_t n,
            unsigned char *out);

#endif
