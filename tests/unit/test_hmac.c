/* test_hmac.c - st_hmac (starling/hmac.h): RFC 2202 and RFC 4231 test
 * vectors, keys shorter than, equal to and longer than the block (hashed
 * first, RFC 2104 §3), and agreement with OpenSSL's own HMAC() for many
 * key and data lengths on every digest st_md knows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/hmac.h>

#include "starling/hmac.h"

static size_t unhex(const char *h, unsigned char *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(h + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
    return n;
}

static void rfc2202_rfc4231_test_vectors(void **state)
{
    static const char large[] = "Test Using Larger Than Block-Size Key - Hash Key First";
    unsigned char k20[20], k80[80], k131[131];
    memset(k20, 0x0b, sizeof k20);
    memset(k80, 0xaa, sizeof k80);
    memset(k131, 0xaa, sizeof k131);
    static const struct {
        const char *md;
        int key; /* 0: 20 x 0x0b, 1: 80 x 0xaa, 2: 131 x 0xaa */
        const char *data, *mac;
    } v[] = {
        /* RFC 2202 §3, test cases 1 and 6 */
        {"SHA1", 0, "Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"},
        {"SHA1", 1, large, "aa4ae5e15272d00e95705637ce8a3b55ed402112"},
        /* RFC 4231 §4.2 and §4.7 */
        {"SHA256", 0, "Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"SHA384", 0, "Hi There",
         "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b"
         "2"
         "fa9cb6"},
        {"SHA256", 2, large, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        {"SHA512", 2, large,
         "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215"
         "d"
         "6a1e5295e64f73f63f0aec8b915a985d786598"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        const unsigned char *key = v[i].key == 0 ? k20 : v[i].key == 1 ? k80 : k131;
        size_t klen = v[i].key == 0 ? 20 : v[i].key == 1 ? 80 : 131;
        unsigned char want[64], got[64];
        size_t n = unhex(v[i].mac, want);
        const EVP_MD *md = st_md(v[i].md);
        assert_non_null(md);
        assert_int_equal(st_hmac(md, key, klen, v[i].data, strlen(v[i].data), got), 0);
        assert_memory_equal(got, want, n);
    }
}

static void hmac_equals_openssl_for_every_key_length(void **state)
{
    static const char *names[] = {"SHA1", "SHA256", "SHA384", "SHA512"};
    unsigned char key[300], data[300];
    srand(2104);
    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (unsigned char)rand();
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)rand();
    for (size_t m = 0; m < 4; m++) {
        const EVP_MD *md = st_md(names[m]);
        assert_non_null(md);
        for (size_t kl = 0; kl <= sizeof key; kl += 7) {
            size_t dl = (kl * 13) % sizeof data;
            unsigned char ours[64], theirs[64];
            unsigned int tl = 0;
            assert_int_equal(st_hmac(md, key, kl, data, dl, ours), 0);
            assert_non_null(HMAC(md, key, (int)kl, data, dl, theirs, &tl));
            assert_int_equal(tl, EVP_MD_get_size(md));
            assert_memory_equal(ours, theirs, tl);
        }
    }
}

static void md_by_name_is_fetched_once(void **state)
{
    assert_ptr_equal(st_md("SHA256"), st_md("SHA256"));
    assert_int_equal(EVP_MD_get_size(st_md("SHA1")), 20);
    assert_null(st_md("MD4-or-whatever"));
    unsigned char out[64];
    assert_int_equal(st_hmac(NULL, "k", 1, "d", 1, out), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc2202_rfc4231_test_vectors),
        cmocka_unit_test(hmac_equals_openssl_for_every_key_length),
        cmocka_unit_test(md_by_name_is_fetched_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
