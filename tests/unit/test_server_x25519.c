/* test_server_x25519.c - st_x25519_public (server/x25519.h): the X25519
 * public key made from the Ed25519 base point table must be the one the
 * Montgomery ladder gives, for RFC 7748's vectors, for every kind of
 * scalar clamping touches, and for many random keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>

#include "server/x25519.h"

static void unhex(const char *h, unsigned char *out)
{
    for (size_t i = 0; i < 32; i++) {
        unsigned v;
        assert_int_equal(sscanf(h + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
}

/* The ladder's answer (libsodium), which ours must equal byte for byte. */
static void expect_ladder(const unsigned char priv[32])
{
    unsigned char ours[32], ladder[32], copy[32];
    memcpy(copy, priv, 32);
    assert_int_equal(st_x25519_public(ours, priv), 0);
    assert_memory_equal(priv, copy, 32); /* the caller's key is not clamped in place */
    assert_int_equal(crypto_scalarmult_base(ladder, priv), 0);
    assert_memory_equal(ours, ladder, 32);
}

static void rfc7748_6_1_public_keys_of_alice_and_bob(void **state)
{
    static const char *v[][2] = {
        {"77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
         "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"},
        {"5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
         "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"},
    };
    for (size_t i = 0; i < 2; i++) {
        unsigned char priv[32], want[32], got[32];
        unhex(v[i][0], priv);
        unhex(v[i][1], want);
        assert_int_equal(st_x25519_public(got, priv), 0);
        assert_memory_equal(got, want, 32);
    }
}

/* RFC 7748 §5: the bits clamping sets or clears do not matter, and the
 * extreme scalars (all zero, all ones, one bit) give the ladder's keys. */
static void rfc7748_5_clamped_bits_and_extreme_scalars(void **state)
{
    unsigned char priv[32];
    memset(priv, 0, 32);
    expect_ladder(priv);
    memset(priv, 0xff, 32);
    expect_ladder(priv);
    for (int bit = 0; bit < 256; bit++) {
        memset(priv, 0, 32);
        priv[bit / 8] = (unsigned char)(1u << (bit % 8));
        expect_ladder(priv);
        memset(priv, 0xff, 32);
        priv[bit / 8] &= (unsigned char)~(1u << (bit % 8));
        expect_ladder(priv);
    }
    /* the same key with and without the clamped bits set */
    unsigned char a[32], b[32], pa[32], pb[32];
    randombytes_buf(a, 32);
    memcpy(b, a, 32);
    a[0] |= 7, a[31] |= 128, a[31] &= 191;
    b[0] &= 248, b[31] &= 127, b[31] |= 64;
    assert_int_equal(st_x25519_public(pa, a), 0);
    assert_int_equal(st_x25519_public(pb, b), 0);
    assert_memory_equal(pa, pb, 32);
}

static void public_key_equals_the_ladder_for_random_keys(void **state)
{
    unsigned char priv[32];
    for (int i = 0; i < 20000; i++) {
        randombytes_buf(priv, 32);
        expect_ladder(priv);
    }
}

/* The public key agrees with the ladder where it is used: both sides of
 * an exchange reach the same shared secret. */
static void rfc7748_6_1_shared_secret_from_our_public_keys(void **state)
{
    for (int i = 0; i < 200; i++) {
        unsigned char a[32], b[32], pa[32], pb[32], ka[32], kb[32];
        randombytes_buf(a, 32);
        randombytes_buf(b, 32);
        assert_int_equal(st_x25519_public(pa, a), 0);
        assert_int_equal(st_x25519_public(pb, b), 0);
        assert_int_equal(crypto_scalarmult(ka, a, pb), 0);
        assert_int_equal(crypto_scalarmult(kb, b, pa), 0);
        assert_memory_equal(ka, kb, 32);
    }
}

static int setup(void **state)
{
    return sodium_init() < 0 ? -1 : 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc7748_6_1_public_keys_of_alice_and_bob),
        cmocka_unit_test(rfc7748_5_clamped_bits_and_extreme_scalars),
        cmocka_unit_test(public_key_equals_the_ladder_for_random_keys),
        cmocka_unit_test(rfc7748_6_1_shared_secret_from_our_public_keys),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
