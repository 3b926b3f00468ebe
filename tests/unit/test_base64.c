/* test_base64.c - RFC 4648 base64: the §10 test vectors both ways, and the
 * strict decoder refusing everything that is not the canonical encoding
 * (RFC 6120 §6.4.2 makes SASL receivers reject bad base64). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "starling/alloc.h"
#include "starling/base64.h"

static const struct {
    const char *plain, *encoded;
} vectors[] = {
    /* RFC 4648 §10 */
    {"", ""},
    {"f", "Zg=="},
    {"fo", "Zm8="},
    {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="},
    {"fooba", "Zm9vYmE="},
    {"foobar", "Zm9vYmFy"},
};

static void rfc4648_10_test_vectors(void **state)
{
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        st_buf b;
        st_buf_init(&b, 0);
        assert_int_equal(st_base64_encode(vectors[i].plain, strlen(vectors[i].plain), &b), 0);
        assert_non_null(b.data);
        assert_string_equal(b.data, vectors[i].encoded);
        st_buf_reset(&b);
        assert_int_equal(
            st_base64_decode(vectors[i].encoded, strlen(vectors[i].encoded), &b), 0);
        assert_int_equal(b.len, strlen(vectors[i].plain));
        assert_memory_equal(b.data, vectors[i].plain, b.len);
        st_buf_free(&b);
    }
}

static void rfc4648_4_all_bytes_round_trip(void **state)
{
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    /* Every length exercises every padding case and the chunked output. */
    for (size_t n = 0; n <= sizeof all; n++) {
        st_buf e, d;
        st_buf_init(&e, 0);
        st_buf_init(&d, 0);
        assert_int_equal(st_base64_encode(all, n, &e), 0);
        assert_int_equal(e.len, (n + 2) / 3 * 4);
        assert_int_equal(st_base64_decode(e.data, e.len, &d), 0);
        assert_int_equal(d.len, n);
        if (n)
            assert_memory_equal(d.data, all, n);
        st_buf_free(&e);
        st_buf_free(&d);
    }
}

static const char *const invalid[] = {
    "Zg",       /* padding missing */
    "Zg=",      /* length not a multiple of 4 */
    "Zg===",
    "Z===",     /* one character cannot make a byte */
    "====",
    "=Zg=",     /* padding first */
    "Zg==Zg==", /* padding in the middle */
    "Zm9v\n",   /* whitespace */
    "Zm 9",
    " Zm9",
    "Zm9-",     /* base64url alphabet */
    "Zm9_",
    "Zm9v!A==",
    "Zh==",     /* non-zero pad bits: not the canonical "Zg==" */
    "Zm9=",     /* non-zero pad bits: not the canonical "Zm8=" */
    "Zm=v",
};

static void rfc4648_3_strict_decoder(void **state)
{
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        st_buf b;
        st_buf_init(&b, 0);
        assert_int_equal(st_buf_appends(&b, "keep"), 0);
        if (st_base64_decode(invalid[i], strlen(invalid[i]), &b) != -1)
            fail_msg("case %zu \"%s\" accepted", i, invalid[i]);
        /* A refused input leaves what was there before untouched. */
        assert_string_equal(b.data, "keep");
        st_buf_free(&b);
    }
    /* An embedded NUL is just another invalid character. */
    st_buf b;
    st_buf_init(&b, 0);
    assert_int_equal(st_base64_decode("Zm\0v", 4, &b), -1);
    /* len, not a NUL, ends the input. */
    assert_int_equal(st_base64_decode("Zm9vXXXX", 4, &b), 0);
    assert_string_equal(b.data, "foo");
    st_buf_free(&b);
}

static void buf_max_respected_and_output_unchanged(void **state)
{
    st_buf b;
    st_buf_init(&b, 6);
    assert_int_equal(st_buf_appends(&b, "ab"), 0);
    /* "foobar" encodes to 8 characters: over the limit, nothing appended. */
    assert_int_equal(st_base64_encode("foobar", 6, &b), -1);
    assert_string_equal(b.data, "ab");
    assert_int_equal(st_base64_encode("f", 1, &b), 0);
    assert_string_equal(b.data, "abZg==");
    st_buf_free(&b);

    /* A long input that fails late (limit) leaves no partial output. */
    char big[3000];
    memset(big, 'A', sizeof big);
    st_buf_init(&b, 1000);
    assert_int_equal(st_base64_decode(big, sizeof big, &b), -1);
    assert_int_equal(b.len, 0);
    st_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc4648_10_test_vectors),
        cmocka_unit_test(rfc4648_4_all_bytes_round_trip),
        cmocka_unit_test(rfc4648_3_strict_decoder),
        cmocka_unit_test(buf_max_respected_and_output_unchanged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
