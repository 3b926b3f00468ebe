/* test_buf.c - st_buf and st_arena: limits, escaping, ownership.
 *
 * Every buffer has a maximum; these tests pin down that an append which
 * would cross it fails and leaves the buffer exactly as it was. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "starling/alloc.h"
#include "starling/arena.h"
#include "starling/buf.h"

static void buf_append_keeps_nul_terminator(void **state)
{
    st_buf b;
    st_buf_init(&b, 0);
    assert_int_equal(st_buf_append(&b, "abc", 3), 0);
    assert_int_equal(st_buf_appends(&b, "def"), 0);
    assert_int_equal(b.len, 6);
    assert_string_equal(b.data, "abcdef");
    st_buf_free(&b);
}

static void buf_max_refuses_and_leaves_unchanged(void **state)
{
    st_buf b;
    st_buf_init(&b, 8);
    assert_int_equal(st_buf_appends(&b, "12345678"), 0);
    assert_int_equal(st_buf_append(&b, "9", 1), -1);
    assert_int_equal(b.len, 8);
    assert_string_equal(b.data, "12345678");
    assert_int_equal(st_buf_printf(&b, "%d", 1), -1);
    assert_int_equal(st_buf_append_escaped(&b, "&", 1), -1);
    assert_string_equal(b.data, "12345678");
    assert_true(b.cap <= 9); /* never reserves past max + terminator */
    st_buf_free(&b);
    assert_int_equal(b.max, 8); /* free keeps max */
}

static void buf_printf_formats(void **state)
{
    st_buf b;
    st_buf_init(&b, 0);
    assert_int_equal(st_buf_printf(&b, "<%s id='%d'>", "iq", 42), 0);
    assert_string_equal(b.data, "<iq id='42'>");
    st_buf_free(&b);
}

static void buf_escape_table(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "plain", "plain" },
        { "a&b", "a&amp;b" },
        { "<x>", "&lt;x&gt;" },
        { "\"'", "&quot;&apos;" },
        { "", "" },
        { "&&", "&amp;&amp;" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_buf b;
        st_buf_init(&b, 0);
        assert_int_equal(st_buf_append_escaped(&b, cases[i].in, strlen(cases[i].in)), 0);
        assert_string_equal(b.data, cases[i].out);
        st_buf_free(&b);
    }
}

static void buf_consume_reset_steal(void **state)
{
    st_buf b;
    st_buf_init(&b, 0);
    st_buf_appends(&b, "hello world");
    st_buf_consume(&b, 6);
    assert_string_equal(b.data, "world");
    st_buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    st_buf_appends(&b, "xyz");
    st_buf_reset(&b);
    assert_int_equal(b.len, 0);
    st_buf_appends(&b, "kept");
    size_t len;
    char *s = st_buf_steal(&b, &len);
    assert_string_equal(s, "kept");
    assert_int_equal(len, 4);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    st_free(s);
    st_buf_free(&b);
}

static void buf_grows_to_large_sizes(void **state)
{
    st_buf b;
    st_buf_init(&b, 1 << 20);
    char chunk[1000];
    memset(chunk, 'x', sizeof chunk);
    size_t total = 0;
    while (st_buf_append(&b, chunk, sizeof chunk) == 0)
        total += sizeof chunk;
    assert_int_equal(total, (1 << 20) / 1000 * 1000);
    assert_int_equal(b.len, total);
    st_buf_free(&b);
}

static void arena_alloc_aligned_and_accounted(void **state)
{
    st_arena *a = st_arena_new(0);
    assert_non_null(a);
    size_t before = st_arena_bytes(a);
    for (int i = 1; i < 200; i++) {
        void *p = st_arena_alloc(a, (size_t)i);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 8, 0);
        memset(p, 0xab, (size_t)i);
    }
    void *big = st_arena_alloc(a, 100000); /* larger than any block so far */
    assert_non_null(big);
    memset(big, 0, 100000);
    assert_true(st_arena_bytes(a) > before + 100000);
    char *s = st_arena_strndup(a, "hello", 3);
    assert_string_equal(s, "hel");
    assert_string_equal(st_arena_strdup(a, "world"), "world");
    st_arena_free(a);
    st_arena_free(NULL);
}

static int fail_at, alloc_count;
static void *counting_malloc(size_t n)
{
    if (++alloc_count == fail_at)
        return NULL;
    return malloc(n);
}
static void *counting_realloc(void *p, size_t n)
{
    if (++alloc_count == fail_at)
        return NULL;
    return realloc(p, n);
}
static const st_alloc_hooks counting = { counting_malloc, counting_realloc, free };

static void buf_and_arena_survive_oom(void **state)
{
    for (fail_at = 1; fail_at < 40; fail_at++) {
        alloc_count = 0;
        st_set_alloc_hooks(&counting);
        st_buf b;
        st_buf_init(&b, 0);
        for (int i = 0; i < 100; i++) {
            size_t len = b.len;
            if (st_buf_appends(&b, "0123456789abcdef") < 0)
                assert_int_equal(b.len, len);
        }
        st_buf_free(&b);
        st_arena *a = st_arena_new(64);
        for (int i = 0; a && i < 100; i++)
            st_arena_alloc(a, 100);
        st_arena_free(a);
        st_set_alloc_hooks(NULL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buf_append_keeps_nul_terminator),
        cmocka_unit_test(buf_max_refuses_and_leaves_unchanged),
        cmocka_unit_test(buf_printf_formats),
        cmocka_unit_test(buf_escape_table),
        cmocka_unit_test(buf_consume_reset_steal),
        cmocka_unit_test(buf_grows_to_large_sizes),
        cmocka_unit_test(arena_alloc_aligned_and_accounted),
        cmocka_unit_test(buf_and_arena_survive_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
