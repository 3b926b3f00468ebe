/* base64.c - RFC 4648 §4 base64 (standard alphabet, padded).
 *
 * The decoder is strict on purpose: SASL (RFC 6120 §6.4.2) and SCRAM require
 * that a receiver reject anything that is not the one canonical encoding, so
 * we refuse whitespace, missing or misplaced padding, a length that is not a
 * multiple of four and non-zero pad bits (RFC 4648 §3.5). Accepting several
 * spellings of the same bytes would let c= comparisons in SCRAM be fooled. */
#include "starling/base64.h"

#include <stdint.h>

static const char enc_tab[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 0..63, or -1 for a character outside the alphabet (including '='). */
static int dec_char(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Undo a partial append so that a failed call leaves out unchanged. */
static void buf_truncate(st_buf *b, size_t len)
{
    if (b->data && b->len > len) {
        b->len = len;
        b->data[len] = '\0';
    }
}

int st_base64_encode(const void *data, size_t n, st_buf *out)
{
    const unsigned char *p = data;
    size_t orig = out->len;
    char chunk[256]; /* multiple of 4 so groups never straddle a flush */
    size_t used = 0;

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        size_t left = n - i;
        if (left > 1)
            v |= (uint32_t)p[i + 1] << 8;
        if (left > 2)
            v |= p[i + 2];
        chunk[used++] = enc_tab[(v >> 18) & 63];
        chunk[used++] = enc_tab[(v >> 12) & 63];
        chunk[used++] = left > 1 ? enc_tab[(v >> 6) & 63] : '=';
        chunk[used++] = left > 2 ? enc_tab[v & 63] : '=';
        if (used == sizeof chunk) {
            if (st_buf_append(out, chunk, used) != 0)
                goto fail;
            used = 0;
        }
    }
    /* Appending zero bytes still makes data non-NULL, which callers expect
     * after a successful encode of an empty input. */
    if (st_buf_append(out, chunk, used) != 0)
        goto fail;
    return 0;

fail:
    buf_truncate(out, orig);
    return -1;
}

int st_base64_decode(const char *s, size_t n, st_buf *out)
{
    size_t orig = out->len;
    unsigned char chunk[192]; /* multiple of 3 */
    size_t used = 0;

    if (n % 4 != 0)
        return -1;

    /* Validate everything before producing output, so a bad character at the
     * end cannot leave half a decoding behind. */
    for (size_t i = 0; i < n; i += 4) {
        int last = (i + 4 == n);
        int a = dec_char((unsigned char)s[i]);
        int b = dec_char((unsigned char)s[i + 1]);
        int c = dec_char((unsigned char)s[i + 2]);
        int d = dec_char((unsigned char)s[i + 3]);
        if (a < 0 || b < 0)
            return -1;
        if (c < 0 || d < 0) {
            if (!last)
                return -1;
            if (c < 0) {
                /* "xx==": one byte; the low 4 bits of b must be zero. */
                if (s[i + 2] != '=' || s[i + 3] != '=' || (b & 0x0f) != 0)
                    return -1;
            } else {
                /* "xxx=": two bytes; the low 2 bits of c must be zero. */
                if (s[i + 3] != '=' || (c & 0x03) != 0)
                    return -1;
            }
        }
    }

    for (size_t i = 0; i < n; i += 4) {
        int a = dec_char((unsigned char)s[i]);
        int b = dec_char((unsigned char)s[i + 1]);
        int c = dec_char((unsigned char)s[i + 2]);
        int d = dec_char((unsigned char)s[i + 3]);
        uint32_t v = ((uint32_t)a << 18) | ((uint32_t)b << 12) |
                     ((uint32_t)(c < 0 ? 0 : c) << 6) | (uint32_t)(d < 0 ? 0 : d);
        chunk[used++] = (unsigned char)(v >> 16);
        if (c >= 0)
            chunk[used++] = (unsigned char)(v >> 8);
        if (d >= 0)
            chunk[used++] = (unsigned char)v;
        if (used + 3 > sizeof chunk) {
            if (st_buf_append(out, chunk, used) != 0)
                goto fail;
            used = 0;
        }
    }
    if (st_buf_append(out, chunk, used) != 0)
        goto fail;
    return 0;

fail:
    buf_truncate(out, orig);
    return -1;
}
