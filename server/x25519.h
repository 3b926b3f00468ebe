/* x25519.h - an X25519 public key (RFC 7748 §6.1) from its private key,
 * by way of the Edwards curve.
 *
 * Our handshake makes a new key share for every full TLS 1.3 handshake.
 * libsodium's crypto_scalarmult_base runs the Montgomery ladder on the
 * base point (about 40 us here), as if the point were unknown; the same
 * multiple of the Ed25519 base point comes from a precomputed table in
 * less than half the time (crypto_scalarmult_ed25519_base_noclamp). The
 * two curves are birationally equivalent (RFC 7748 §4.1): the Edwards
 * point (x, y) is the Montgomery point u = (1 + y) / (1 - y), and the map
 * carries one base point to the other, so [s]B_edwards gives u([s]B) for
 * one field inversion more (about 4 us). The field arithmetic is ours
 * (radix 2^51, constant time); test_server_x25519 checks the result against
 * crypto_scalarmult_base. The shared secret stays libsodium's
 * crypto_scalarmult, which needs the ladder anyway. */
#ifndef STARLING_SERVER_X25519_H
#define STARLING_SERVER_X25519_H

/* pub = X25519(priv, 9): priv is clamped as RFC 7748 §5 says (a copy;
 * priv itself is not changed). 0, or -1 if libsodium refused (it cannot
 * for a clamped scalar). */
int st_x25519_public(unsigned char pub[32], const unsigned char priv[32]);

#endif
