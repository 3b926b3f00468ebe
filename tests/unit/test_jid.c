/* test_jid.c - JID parsing and normalisation, one table row per case.
 *
 * Rows come from RFC 7622 §3.5 (examples of valid and invalid JIDs), from
 * libstrophe's tests/test_jid.c splitting cases, and from the limits we
 * promise in jid.h (1023-byte parts, IP literals, one trailing dot). A row
 * with a NULL domain expects the input to be refused (jid-malformed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "starling/alloc.h"
#include "starling/jid.h"

#include <stringprep.h>

typedef struct jid_case {
    const char *in;
    const char *node, *domain, *resource; /* domain NULL = invalid */
} jid_case;

#define BAD(s) {s, NULL, NULL, NULL}

static const jid_case cases[] = {
    /* RFC 7622 §3.5, examples of valid JIDs */
    {"juliet@example.com", "juliet", "example.com", NULL},
    {"juliet@example.com/foo", "juliet", "example.com", "foo"},
    {"juliet@example.com/foo bar", "juliet", "example.com", "foo bar"},
    {"juliet@example.com/foo@bar", "juliet", "example.com", "foo@bar"},
    {"foo\\20bar@example.com", "foo\\20bar", "example.com", NULL},
    {"fussball@example.com", "fussball", "example.com", NULL},
    {"fu\xc3\x9f" "ball@example.com", "fussball", "example.com", NULL}, /* ß folds */
    {"\xcf\x80@example.com", "\xcf\x80", "example.com", NULL},           /* π */
    {"\xce\xa3@example.com/foo", "\xcf\x83", "example.com", "foo"},      /* Σ -> σ */
    {"\xcf\x83@example.com/foo", "\xcf\x83", "example.com", "foo"},
    /* COMPAT: PRECIS keeps final sigma distinct; Nodeprep (B.2) folds it. */
    {"\xcf\x82@example.com/foo", "\xcf\x83", "example.com", "foo"},
    {"king@example.com/\xe2\x99\x9a", "king", "example.com", "\xe2\x99\x9a"},
    /* U+1F4F1 is unassigned in Unicode 3.2 but common in resources today */
    {"u@example.com/phone \xf0\x9f\x93\xb1", "u", "example.com", "phone \xf0\x9f\x93\xb1"},
    {"example.com", NULL, "example.com", NULL},
    {"example.com/foobar", NULL, "example.com", "foobar"},
    {"a.example.com/b@example.net", NULL, "a.example.com", "b@example.net"},
    /* RFC 7622 §3.5, examples of invalid JIDs */
    BAD("\"juliet\"@example.com"),
    BAD("foo bar@example.com"),
    BAD("@example.com/"),
    BAD("juliet@"),
    BAD("/foobar"),
    /* COMPAT: RFC 7622 calls these three invalid, but that is PRECIS; under
     * the stringprep profiles that Prosody and ejabberd use (and so every
     * stored roster) they are valid, and we must agree with them. */
    {"juliet@example.com/ foo", "juliet", "example.com", " foo"},
    {"henry\xe2\x85\xa3@example.com", "henryiv", "example.com", NULL}, /* NFKC */
    {"\xe2\x99\x9a@example.com", "\xe2\x99\x9a", "example.com", NULL},
    /* libstrophe tests/test_jid.c splitting */
    {"foo", NULL, "foo", NULL},
    {"foo@bar.com", "foo", "bar.com", NULL},
    {"foo@bar.com/baz", "foo", "bar.com", "baz"},
    {"foo@bar.com/baz/qux", "foo", "bar.com", "baz/qux"},
    {"bar.com/baz@qux", NULL, "bar.com", "baz@qux"},
    {"foo@bar.com/@", "foo", "bar.com", "@"},
    /* normalisation: node and domain fold case, the resource keeps it */
    {"Romeo@Example.NET/Orchard", "romeo", "example.net", "Orchard"},
    {"ROMEO@EXAMPLE.NET/ORCHARD", "romeo", "example.net", "ORCHARD"},
    {"Juliet@\xe4\xbe\x8b\xe5\xad\x90.\xe6\xb5\x8b\xe8\xaf\x95", "juliet",
     "\xe4\xbe\x8b\xe5\xad\x90.\xe6\xb5\x8b\xe8\xaf\x95", NULL},
    {"user@STRASSE.example", "user", "strasse.example", NULL},
    {"user@stra\xc3\x9f" "e.example", "user", "strasse.example", NULL},
    {"x@a\xe3\x80\x82" "b", "x", "a.b", NULL}, /* U+3002 ideographic full stop */
    {"x@a\xef\xbc\x8e" "b", "x", "a.b", NULL}, /* U+FF0E */
    {"x@xn--fsqu00a.xn--0zwm56d", "x", "xn--fsqu00a.xn--0zwm56d", NULL},
    {"u\xc2\xad" "ser@example.com", "user", "example.com", NULL}, /* soft hyphen dropped */
    /* RFC 7622 §3.2: one trailing dot is stripped, and only one */
    {"example.com.", NULL, "example.com", NULL},
    {"u@example.com./r", "u", "example.com", "r"},
    BAD("example.com.."),
    BAD("."),
    BAD(".example.com"),
    BAD("a..b"),
    /* empty parts after separators */
    BAD(""),
    BAD("@"),
    BAD("/"),
    BAD("@/"),
    BAD("@example.com"),
    BAD("example.com/"),
    BAD("u@example.com/"),
    BAD("u@/r"),
    /* Nodeprep prohibits " & ' / : < > @ in the localpart */
    BAD("a&b@example.com"),
    BAD("a'b@example.com"),
    BAD("a:b@example.com"),
    BAD("a<b@example.com"),
    BAD("a>b@example.com"),
    BAD("a@b@example.com"),
    /* domain syntax (IDNA with STD3 rules) */
    BAD("exa mple.com"),
    BAD("under_score.example"),
    BAD("-leading.example"),
    BAD("u@exa<mple.com"),
    BAD("u@\xef\xbc\x8f"), /* fullwidth '/' becomes '/' under NFKC */
    /* IP literals are kept (IPv6 lowercased) */
    {"u@192.0.2.1/r", "u", "192.0.2.1", "r"},
    {"u@[::1]", "u", "[::1]", NULL},
    {"u@[2001:DB8::1]/R", "u", "[2001:db8::1]", "R"},
    {"[::ffff:192.0.2.1]", NULL, "[::ffff:192.0.2.1]", NULL},
    BAD("u@[::1"),
    BAD("u@[]"),
    BAD("u@[not-v6]"),
    BAD("u@[::1]x"),
    BAD("u@[fe80::1%eth0]"),
    /* encoding: strict UTF-8, controls refused */
    BAD("a\xc0\xaf@example.com"),  /* overlong '/' */
    BAD("a\xed\xa0\x80@example.com"), /* surrogate */
    BAD("\xff@example.com"),
    BAD("u@example.com/\x01"),
    BAD("u@example.com/a\x7f"),
};

static void rfc7622_3_5_examples_table(void **state)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const jid_case *c = &cases[i];
        st_jid j;
        int rc = st_jid_parse(&j, c->in, strlen(c->in));
        if (!c->domain) {
            if (rc != -1)
                fail_msg("case %zu \"%s\" accepted as %s / %s / %s", i, c->in,
                         j.node ? j.node : "-", j.domain, j.resource ? j.resource : "-");
            assert_null(j.mem);
            assert_null(j.domain);
            continue;
        }
        if (rc != 0)
            fail_msg("case %zu \"%s\" refused", i, c->in);
        if (c->node)
            assert_string_equal(j.node, c->node);
        else
            assert_null(j.node);
        assert_string_equal(j.domain, c->domain);
        if (c->resource)
            assert_string_equal(j.resource, c->resource);
        else
            assert_null(j.resource);
        st_jid_free(&j);
    }
}

/* Make a part of n bytes of 'a' (domains: labels of 62 joined by dots). */
static char *part_of(size_t n, int as_domain)
{
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = (as_domain && i % 63 == 62) ? '.' : 'a';
    s[n] = '\0';
    return s;
}

static int parse3(const char *node, const char *dom, const char *res)
{
    char buf[4 * 1100];
    int n = snprintf(buf, sizeof buf, "%s%s%s%s%s", node ? node : "", node ? "@" : "", dom,
                     res ? "/" : "", res ? res : "");
    st_jid j;
    int rc = st_jid_parse(&j, buf, (size_t)n);
    st_jid_free(&j);
    return rc;
}

static void rfc7622_3_1_part_length_limits(void **state)
{
    char *p1023 = part_of(1023, 0), *p1024 = part_of(1024, 0);
    char *d1023 = part_of(1023, 1), *d1024 = part_of(1024, 1);
    assert_true(d1023[1022] == 'a'); /* ends on a label, not a dot */

    assert_int_equal(parse3(p1023, "example.com", NULL), 0);
    assert_int_equal(parse3(p1024, "example.com", NULL), -1);
    assert_int_equal(parse3("u", "example.com", p1023), 0);
    assert_int_equal(parse3("u", "example.com", p1024), -1);
    assert_int_equal(parse3("u", d1023, NULL), 0);
    assert_int_equal(parse3("u", d1024, NULL), -1);
    assert_int_equal(parse3(p1023, d1023, p1023), 0);

    /* The limit is on the prepared form: "ß" is 2 bytes but prepares to "ss". */
    char node[1100];
    memset(node, 'a', 1021);
    memcpy(node + 1021, "\xc3\x9f", 3);
    assert_int_equal(parse3(node, "example.com", NULL), 0);  /* 1021 + 2 = 1023 */
    memset(node, 'a', 1022);
    memcpy(node + 1022, "\xc3\x9f", 3);
    assert_int_equal(parse3(node, "example.com", NULL), -1); /* 1022 + 2 = 1024 */

    /* A label longer than 63 octets is not a DNS name. */
    char *label64 = part_of(64, 0);
    assert_int_equal(parse3("u", label64, NULL), -1);
    free(label64);
    free(p1023);
    free(p1024);
    free(d1023);
    free(d1024);
}

static void rfc7622_3_embedded_nul_refused(void **state)
{
    st_jid j;
    assert_int_equal(st_jid_parse(&j, "u@example.com\0/r", 16), -1);
    assert_int_equal(st_jid_parse(&j, "u\0@example.com", 14), -1);
    /* len, not the NUL, ends the input */
    assert_int_equal(st_jid_parse(&j, "u@example.comXXX", 13), 0);
    assert_string_equal(j.domain, "example.com");
    st_jid_free(&j);
}

static void rfc7622_3_equality(void **state)
{
    st_jid a, b, c, d;
    assert_int_equal(st_jid_parse(&a, "Romeo@Example.NET/Orchard", 25), 0);
    assert_int_equal(st_jid_parse(&b, "romeo@example.net/Orchard", 25), 0);
    assert_int_equal(st_jid_parse(&c, "romeo@example.net/orchard", 25), 0);
    assert_int_equal(st_jid_parse(&d, "romeo@example.net", 17), 0);
    assert_true(st_jid_equal(&a, &b, 1));
    assert_false(st_jid_equal(&a, &c, 1)); /* resources are case-sensitive */
    assert_true(st_jid_equal(&a, &c, 0));
    assert_false(st_jid_equal(&a, &d, 1));
    assert_true(st_jid_equal(&a, &d, 0));
    st_jid e;
    assert_int_equal(st_jid_parse(&e, "example.net", 11), 0);
    assert_false(st_jid_equal(&d, &e, 0)); /* no node is not an empty node */
    st_jid_free(&a);
    st_jid_free(&b);
    st_jid_free(&c);
    st_jid_free(&d);
    st_jid_free(&e);
}

static void jid_format_bare_full_copy_make(void **state)
{
    st_jid j, k, m;
    char buf[64];
    const char *in = "Juliet@Example.com/Balcony";
    assert_int_equal(st_jid_parse(&j, in, strlen(in)), 0);

    assert_int_equal(st_jid_format(&j, 1, buf, sizeof buf), 26);
    assert_string_equal(buf, "juliet@example.com/Balcony");
    assert_int_equal(st_jid_format(&j, 0, buf, sizeof buf), 18);
    assert_string_equal(buf, "juliet@example.com");
    /* exactly too small: the NUL needs room too */
    assert_int_equal(st_jid_format(&j, 1, buf, 26), -1);
    assert_int_equal(st_jid_format(&j, 1, buf, 27), 26);

    char *bare = st_jid_bare(&j), *full = st_jid_full(&j);
    assert_string_equal(bare, "juliet@example.com");
    assert_string_equal(full, "juliet@example.com/Balcony");
    st_free(bare);
    st_free(full);

    assert_int_equal(st_jid_copy(&k, &j), 0);
    assert_true(st_jid_equal(&j, &k, 1));
    assert_ptr_not_equal(k.mem, j.mem);
    assert_true(k.domain >= k.mem); /* one allocation holds every part */

    assert_int_equal(st_jid_make(&m, "JULIET", "EXAMPLE.COM", "Balcony"), 0);
    assert_true(st_jid_equal(&j, &m, 1));
    st_jid_free(&m);
    assert_int_equal(st_jid_make(&m, NULL, "example.com", NULL), 0);
    assert_null(m.node);
    assert_null(m.resource);
    bare = st_jid_bare(&m);
    assert_string_equal(bare, "example.com");
    st_free(bare);
    st_jid_free(&m);
    assert_int_equal(st_jid_make(&m, "a@b", "example.com", NULL), -1);
    assert_int_equal(st_jid_make(&m, "", "example.com", NULL), -1);
    assert_int_equal(st_jid_make(&m, "a", NULL, NULL), -1);
    assert_int_equal(st_jid_make(&m, "a", "example.com", ""), -1);

    st_jid_free(&j);
    st_jid_free(&k);
    st_jid_free(&j); /* freeing twice is harmless: free zeroes */
}

static void rfc6122_prep_functions(void **state)
{
    char out[64];
    assert_int_equal(st_nodeprep("Romeo", out, sizeof out), 5);
    assert_string_equal(out, "romeo");
    assert_int_equal(st_nodeprep("a@b", out, sizeof out), -1);
    assert_int_equal(st_nodeprep("", out, sizeof out), -1);
    assert_int_equal(st_nameprep("EXAMPLE.com", out, sizeof out), 11);
    assert_string_equal(out, "example.com");
    assert_int_equal(st_resourceprep("Orchard", out, sizeof out), 7);
    assert_string_equal(out, "Orchard");
    assert_int_equal(st_resourceprep("Orchard", out, 7), -1); /* no room for NUL */
    /* RFC 4013 §3 examples */
    assert_int_equal(st_saslprep("I\xc2\xadX", out, sizeof out), 2);
    assert_string_equal(out, "IX");
    assert_int_equal(st_saslprep("user", out, sizeof out), 4);
    assert_int_equal(st_saslprep("USER", out, sizeof out), 4);
    assert_string_equal(out, "USER");
    assert_int_equal(st_saslprep("\xc2\xaa", out, sizeof out), 1);
    assert_string_equal(out, "a");
    assert_int_equal(st_saslprep("\xe2\x85\xa8", out, sizeof out), 2);
    assert_string_equal(out, "IX");
    assert_int_equal(st_saslprep("\x07", out, sizeof out), -1);
    assert_int_equal(st_saslprep("\xd8\xa7" "1", out, sizeof out), -1); /* bidi */
}

/* ---- break the allocator on purpose ---- */

static long budget = -1, count;
static void *fail_malloc(size_t n)
{
    if (budget >= 0 && ++count > budget)
        return NULL;
    return malloc(n);
}
static void *fail_realloc(void *p, size_t n)
{
    if (budget >= 0 && ++count > budget)
        return NULL;
    return realloc(p, n);
}
static const st_alloc_hooks hooks = {fail_malloc, fail_realloc, free};

static void jid_survives_each_allocation_failing(void **state)
{
    const char *in = "Juliet@Stra\xc3\x9f" "e.example/Balcony";
    st_set_alloc_hooks(&hooks);
    for (budget = 0; budget < 64; budget++) {
        st_jid j, k;
        count = 0;
        if (st_jid_parse(&j, in, strlen(in)) != 0) {
            assert_null(j.mem);
            continue;
        }
        if (st_jid_copy(&k, &j) == 0)
            st_jid_free(&k);
        st_free(st_jid_full(&j));
        st_jid_free(&j);
    }
    budget = -1;
    st_set_alloc_hooks(NULL);
}

/* The per-thread cache of prepared parts must be invisible: the same bytes
 * give the same answer every time, in every kind of part (nodeprep folds
 * case, resourceprep does not), refusals stay refusals, and more names than
 * the cache holds (evictions, collisions) are all still right. */
static void jid_prep_cache_is_invisible(void **state)
{
    for (int round = 0; round < 3; round++) {
        st_jid j;
        assert_int_equal(st_jid_parse(&j, "Ab@EXAMPLE.com/Ab", 17), 0);
        assert_string_equal(j.node, "ab");
        assert_string_equal(j.domain, "example.com");
        assert_string_equal(j.resource, "Ab");
        st_jid_free(&j);
        assert_int_equal(st_jid_parse(&j, "Ab@Ab/Ab", 8), 0); /* same bytes, three kinds */
        assert_string_equal(j.node, "ab");
        assert_string_equal(j.domain, "ab");
        assert_string_equal(j.resource, "Ab");
        st_jid_free(&j);
        assert_int_equal(st_jid_parse(&j, "a'b@example.com", 15), -1); /* nodeprep prohibits ' */
        assert_int_equal(st_jid_parse(&j, "x@exa_mple.com", 14), -1);  /* STD3 rules */
        assert_int_equal(st_jid_parse(&j, "a'b@example.com/a'b", 19), -1);
        assert_int_equal(st_jid_parse(&j, "ab@example.com/a'b", 18), 0); /* fine as a resource */
        assert_string_equal(j.resource, "a'b");
        st_jid_free(&j);
    }
    char in[64], want[64];
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 3000; i++) {
            int n = snprintf(in, sizeof in, "User%d@Host%d.Example/Res%d", i, i % 7, i);
            snprintf(want, sizeof want, "user%d@host%d.example/Res%d", i, i % 7, i);
            st_jid j;
            assert_int_equal(st_jid_parse(&j, in, (size_t)n), 0);
            char out[128];
            assert_true(st_jid_format(&j, 1, out, sizeof out) > 0);
            assert_string_equal(out, want);
            st_jid_free(&j);
        }
}

/* libidn's own verdict on in under profile: the prepared length, or -1. */
static int libidn_prep(const Stringprep_profile *profile, const char *in, char *out, size_t outsz)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", in);
    if (stringprep(tmp, sizeof tmp, (Stringprep_profile_flags)0, profile) != STRINGPREP_OK ||
        !tmp[0] || strlen(tmp) >= outsz)
        return -1;
    strcpy(out, tmp);
    return (int)strlen(tmp);
}

/* Printable ASCII skips libidn (jid.c's ascii_identity): every character
 * alone, between letters and repeated, and random ASCII strings, must get
 * libidn's answer under each profile: the same bytes, or the same refusal
 * (nodeprep's prohibited characters, case folding in nodeprep and nameprep
 * but not in resourceprep or SASLprep, spaces and controls). */
static void rfc3454_ascii_fast_path_matches_libidn(void **state)
{
    static const struct {
        const char *name;
        int (*ours)(const char *, char *, size_t);
        const Stringprep_profile *profile;
    } p[] = {
        {"nodeprep", st_nodeprep, stringprep_xmpp_nodeprep},
        {"resourceprep", st_resourceprep, stringprep_xmpp_resourceprep},
        {"nameprep", st_nameprep, stringprep_nameprep},
        {"saslprep", st_saslprep, stringprep_saslprep},
    };
    srand(7622);
    for (size_t k = 0; k < sizeof p / sizeof p[0]; k++) {
        for (int trial = 0; trial < 128 * 3 + 2000; trial++) {
            char in[64], a[256], b[256];
            if (trial < 128 * 3) {
                int c = trial % 128 ? trial % 128 : 'a', form = trial / 128;
                if (form == 0) snprintf(in, sizeof in, "%c", c);
                else if (form == 1) snprintf(in, sizeof in, "x%cy", c);
                else snprintf(in, sizeof in, "%c%c%c", c, c, c);
            } else {
                int n = 1 + rand() % 40;
                for (int i = 0; i < n; i++) in[i] = (char)(0x20 + rand() % 0x5f);
                in[n] = '\0';
            }
            int want = libidn_prep(p[k].profile, in, b, sizeof b);
            int got = p[k].ours(in, a, sizeof a);
            if (got != want || (got >= 0 && strcmp(a, b) != 0))
                fail_msg("%s(\"%s\"): ours %d \"%s\", libidn %d \"%s\"", p[k].name, in, got,
                         got >= 0 ? a : "", want, want >= 0 ? b : "");
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc7622_3_5_examples_table),
        cmocka_unit_test(jid_prep_cache_is_invisible),
        cmocka_unit_test(rfc7622_3_1_part_length_limits),
        cmocka_unit_test(rfc7622_3_embedded_nul_refused),
        cmocka_unit_test(rfc7622_3_equality),
        cmocka_unit_test(jid_format_bare_full_copy_make),
        cmocka_unit_test(rfc6122_prep_functions),
        cmocka_unit_test(rfc3454_ascii_fast_path_matches_libidn),
        cmocka_unit_test(jid_survives_each_allocation_failing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
