/* x25519.c - the X25519 public key from the Ed25519 base point table
 * (see x25519.h).
 *
 * Field elements mod p = 2^255 - 19 are five 51-bit limbs. No branch and
 * no memory index depends on a limb's value: the private scalar decides y,
 * and y decides everything here. */
#include "server/x25519.h"

#include <sodium.h>
#include <stdint.h>
#include <string.h>

typedef uint64_t fe[5];
typedef unsigned __int128 u128;

#define MASK51 ((UINT64_C(1) << 51) - 1)

static uint64_t load64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void store64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* The 255 low bits of s (little-endian); bit 255 is dropped. */
static void fe_frombytes(fe h, const unsigned char s[32])
{
    uint64_t w0 = load64(s), w1 = load64(s + 8), w2 = load64(s + 16), w3 = load64(s + 24);
    h[0] = w0 & MASK51;
    h[1] = (w0 >> 51 | w1 << 13) & MASK51;
    h[2] = (w1 >> 38 | w2 << 26) & MASK51;
    h[3] = (w2 >> 25 | w3 << 39) & MASK51;
    h[4] = (w3 >> 12) & MASK51;
}

/* One carry pass: limbs back under 2^51, except that the top carry,
 * folded in as 19 (2^255 = 19 mod p), may leave h[0] a little above. */
static void fe_reduce(fe h)
{
    h[1] += h[0] >> 51, h[0] &= MASK51;
    h[2] += h[1] >> 51, h[1] &= MASK51;
    h[3] += h[2] >> 51, h[2] &= MASK51;
    h[4] += h[3] >> 51, h[3] &= MASK51;
    h[0] += 19 * (h[4] >> 51), h[4] &= MASK51;
}

/* h from the five column sums of a product */
static inline void fe_carry_wide(fe h, u128 r0, u128 r1, u128 r2, u128 r3, u128 r4)
{
    r1 += (uint64_t)(r0 >> 51);
    r2 += (uint64_t)(r1 >> 51);
    r3 += (uint64_t)(r2 >> 51);
    r4 += (uint64_t)(r3 >> 51);
    uint64_t c = (uint64_t)(r4 >> 51);
    h[0] = ((uint64_t)r0 & MASK51) + 19 * c;
    h[1] = ((uint64_t)r1 & MASK51) + (h[0] >> 51);
    h[0] &= MASK51;
    h[2] = (uint64_t)r2 & MASK51;
    h[3] = (uint64_t)r3 & MASK51;
    h[4] = (uint64_t)r4 & MASK51;
}

/* h = f * g; limbs in under 2^52, out under 2^51 plus a little in h[1]. */
static void fe_mul(fe h, const fe f, const fe g)
{
    uint64_t g1 = 19 * g[1], g2 = 19 * g[2], g3 = 19 * g[3], g4 = 19 * g[4];
    u128 r0 =
        (u128)f[0] * g[0] + (u128)f[1] * g4 + (u128)f[2] * g3 + (u128)f[3] * g2 + (u128)f[4] * g1;
    u128 r1 =
        (u128)f[0] * g[1] + (u128)f[1] * g[0] + (u128)f[2] * g4 + (u128)f[3] * g3 + (u128)f[4] * g2;
    u128 r2 = (u128)f[0] * g[2] + (u128)f[1] * g[1] + (u128)f[2] * g[0] + (u128)f[3] * g4 +
              (u128)f[4] * g3;
    u128 r3 = (u128)f[0] * g[3] + (u128)f[1] * g[2] + (u128)f[2] * g[1] + (u128)f[3] * g[0] +
              (u128)f[4] * g4;
    u128 r4 = (u128)f[0] * g[4] + (u128)f[1] * g[3] + (u128)f[2] * g[2] + (u128)f[3] * g[1] +
              (u128)f[4] * g[0];
    fe_carry_wide(h, r0, r1, r2, r3, r4);
}

/* h = f^2, fe_mul with the equal products paired */
static void fe_sq(fe h, const fe f)
{
    uint64_t d0 = 2 * f[0], d1 = 2 * f[1], d2 = 2 * f[2];
    uint64_t f3_19 = 19 * f[3], f4_19 = 19 * f[4];
    u128 r0 = (u128)f[0] * f[0] + (u128)d1 * f4_19 + (u128)d2 * f3_19;
    u128 r1 = (u128)d0 * f[1] + (u128)d2 * f4_19 + (u128)f[3] * f3_19;
    u128 r2 = (u128)d0 * f[2] + (u128)f[1] * f[1] + (u128)(2 * f[3]) * f4_19;
    u128 r3 = (u128)d0 * f[3] + (u128)d1 * f[2] + (u128)f[4] * f4_19;
    u128 r4 = (u128)d0 * f[4] + (u128)d1 * f[3] + (u128)f[2] * f[2];
    fe_carry_wide(h, r0, r1, r2, r3, r4);
}

/* h = f^(2^n) */
static void fe_sqn(fe h, const fe f, int n)
{
    fe t;
    memcpy(t, f, sizeof t);
    for (int i = 0; i < n; i++)
        fe_sq(t, t);
    memcpy(h, t, sizeof t);
}

/* h = z^(p - 2) = 1/z (Fermat), the usual chain of 254 squarings and 11
 * multiplications. */
static void fe_invert(fe h, const fe z)
{
    fe z2, z9, z11, a, b, c;
    fe_sq(z2, z);        /* 2 */
    fe_sqn(a, z2, 2);    /* 8 */
    fe_mul(z9, a, z);    /* 9 */
    fe_mul(z11, z9, z2); /* 11 */
    fe_sq(a, z11);       /* 22 */
    fe_mul(a, a, z9);    /* 2^5 - 1 */
    fe_sqn(b, a, 5);     /* 2^10 - 2^5 */
    fe_mul(a, b, a);     /* 2^10 - 1 */
    fe_sqn(b, a, 10);    /* 2^20 - 2^10 */
    fe_mul(b, b, a);     /* 2^20 - 1 */
    fe_sqn(c, b, 20);    /* 2^40 - 2^20 */
    fe_mul(b, c, b);     /* 2^40 - 1 */
    fe_sqn(b, b, 10);    /* 2^50 - 2^10 */
    fe_mul(a, b, a);     /* 2^50 - 1 */
    fe_sqn(b, a, 50);    /* 2^100 - 2^50 */
    fe_mul(b, b, a);     /* 2^100 - 1 */
    fe_sqn(c, b, 100);   /* 2^200 - 2^100 */
    fe_mul(b, c, b);     /* 2^200 - 1 */
    fe_sqn(b, b, 50);    /* 2^250 - 2^50 */
    fe_mul(a, b, a);     /* 2^250 - 1 */
    fe_sqn(a, a, 5);     /* 2^255 - 2^5 */
    fe_mul(h, a, z11);   /* 2^255 - 21 = p - 2 */
}

/* The canonical encoding (the value reduced below p), as
 * curve25519-donna's fcontract does it: offset by 19 so that values from
 * p up wrap past 2^255, then add 2^255 - 19 and drop bit 255. */
static void fe_tobytes(unsigned char s[32], const fe f)
{
    fe h;
    memcpy(h, f, sizeof h);
    fe_reduce(h);
    fe_reduce(h); /* h is now below 2^255, carried */
    h[0] += 19;
    fe_reduce(h); /* between 19 and 2^255 - 1, offset by 19 */
    h[0] += (UINT64_C(1) << 51) - 19;
    for (int i = 1; i < 5; i++)
        h[i] += (UINT64_C(1) << 51) - 1;
    /* between 2^255 and 2^256 - 20, offset by 2^255: carry without the fold */
    h[1] += h[0] >> 51, h[0] &= MASK51;
    h[2] += h[1] >> 51, h[1] &= MASK51;
    h[3] += h[2] >> 51, h[2] &= MASK51;
    h[4] += h[3] >> 51, h[3] &= MASK51;
    h[4] &= MASK51;
    store64(s, h[0] | h[1] << 51);
    store64(s + 8, h[1] >> 13 | h[2] << 38);
    store64(s + 16, h[2] >> 26 | h[3] << 25);
    store64(s + 24, h[3] >> 39 | h[4] << 12);
}

int st_x25519_public(unsigned char pub[32], const unsigned char priv[32])
{
    unsigned char s[32], ed[32];
    memcpy(s, priv, 32);
    s[0] &= 248; /* RFC 7748 §5 */
    s[31] &= 127;
    s[31] |= 64;
    int r = crypto_scalarmult_ed25519_base_noclamp(ed, s);
    sodium_memzero(s, sizeof s);
    if (r != 0) return -1;
    /* ed: y, and x's sign in the top bit, which u does not need */
    fe y, one = {1, 0, 0, 0, 0}, num, den, inv, u;
    fe_frombytes(y, ed);
    for (int i = 0; i < 5; i++)
        num[i] = one[i] + y[i];
    /* 1 - y as 2p + 1 - y, so no limb goes below zero */
    den[0] = UINT64_C(0xfffffffffffda) + 1 - y[0];
    for (int i = 1; i < 5; i++)
        den[i] = UINT64_C(0xffffffffffffe) - y[i];
    fe_invert(inv, den);
    fe_mul(u, num, inv);
    fe_tobytes(pub, u);
    sodium_memzero(ed, sizeof ed);
    return 0;
}
