/* test_xmlstream.c - the XMPP stream parser: RFC 6120 §11 restrictions, limits,
 * restarts, and incremental feeding.
 *
 * Each test feeds bytes as a peer would send them and checks the transcript
 * of events (open / stanza / close / error) the parser produced. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include "starling/alloc.h"
#include "starling/xmlstream.h"

#define HDR "<?xml version='1.0'?><stream:stream xmlns='jabber:client' " \
            "xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"

/* ---- a recording peer ---- */

typedef struct rec {
    st_buf log;
    st_xmlstream *x;
    int restart_on_success; /* restart after <success/> or <proceed/> */
    int stop_on;            /* stop after this many stanzas (0 = never) */
    int stanzas;
    int opens;
} rec;

static void on_open(void *ud, const st_node *h)
{
    rec *r = ud;
    r->opens++;
    st_buf_printf(&r->log, "open(%s|%s", h->name, h->ns);
    for (const st_attr *a = h->attrs; a; a = a->next)
        st_buf_printf(&r->log, " %s%s=%s", a->ns ? "ns:" : "", a->name, a->value);
    st_buf_appends(&r->log, ")\n");
}

static void on_stanza(void *ud, st_stanza *s)
{
    rec *r = ud;
    size_t len;
    const char *w = st_stanza_wire(s, &len);
    st_buf_appends(&r->log, "stanza(");
    st_buf_append(&r->log, w ? w : "OOM", w ? len : 3);
    st_buf_appends(&r->log, ")\n");
    r->stanzas++;
    if (r->restart_on_success &&
        (strcmp(st_name(s), "success") == 0 || strcmp(st_name(s), "proceed") == 0))
        st_xmlstream_restart(r->x);
    if (r->stop_on && r->stanzas == r->stop_on)
        st_xmlstream_stop(r->x);
    st_stanza_unref(s);
}

static void on_close(void *ud)
{
    rec *r = ud;
    st_buf_appends(&r->log, "close\n");
}

static const st_xml_handlers handlers = { on_open, on_stanza, on_close };

static void rec_init(rec *r, const st_xml_limits *lim)
{
    memset(r, 0, sizeof *r);
    st_buf_init(&r->log, 0);
    st_buf_appends(&r->log, "");
    r->x = st_xmlstream_new(lim, &handlers, r);
    assert_non_null(r->x);
}

static void rec_free(rec *r)
{
    st_xmlstream_free(r->x);
    st_buf_free(&r->log);
}

/* Feed data in chunks of `step` bytes (0 = all at once); log any error. */
static int feed_in_steps(rec *r, const char *data, size_t len, size_t step)
{
    int rc = 0;
    if (!step)
        step = len ? len : 1;
    for (size_t off = 0; off < len && rc == 0; off += step) {
        size_t n = len - off < step ? len - off : step;
        rc = st_xmlstream_feed(r->x, data + off, n);
    }
    if (rc < 0)
        st_buf_printf(&r->log, "error(%s)\n", st_xmlstream_error(r->x));
    return rc;
}

/* Parse a whole input with default limits; return the condition or NULL. */
static const char *error_of(const char *data, size_t len)
{
    static char cond[64];
    rec r;
    rec_init(&r, NULL);
    const char *e = NULL;
    if (feed_in_steps(&r, data, len, 0) < 0) {
        snprintf(cond, sizeof cond, "%s", st_xmlstream_error(r.x));
        e = cond;
    }
    rec_free(&r);
    return e;
}

static void assert_error(const char *doc, const char *want)
{
    const char *got = error_of(doc, strlen(doc));
    if (!want) {
        if (got)
            fail_msg("unexpected %s for: %s", got, doc);
        return;
    }
    if (!got || strcmp(got, want) != 0)
        fail_msg("wanted %s, got %s for: %s", want, got ? got : "(none)", doc);
}

/* ---- the happy path ---- */

static void rfc6120_4_client_stream_transcript(void **state)
{
    rec r;
    rec_init(&r, NULL);
    const char *in = HDR
        "<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>\n  "
        "<message to='juliet@example.com' xml:lang='en'><body>hi &amp; bye</body></message>"
        "<presence/></stream:stream>";
    assert_int_equal(feed_in_steps(&r, in, strlen(in), 0), 0);
    assert_string_equal(r.log.data,
        "open(stream|http://etherx.jabber.org/streams xmlns=jabber:client to=example.com version=1.0)\n"
        "stanza(<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>)\n"
        "stanza(<message to='juliet@example.com' xml:lang='en'><body>hi &amp; bye</body></message>)\n"
        "stanza(<presence/>)\n"
        "close\n");
    assert_int_equal(st_xmlstream_pending_bytes(r.x), 0);
    rec_free(&r);
}

static void xmlstream_adjacent_text_merged(void **state)
{
    rec r;
    rec_init(&r, NULL);
    const char *in = HDR "<message><body>a&amp;b&#x41;<![CDATA[<c>]]>d</body></message>";
    for (size_t i = 0; in[i]; i++)
        st_xmlstream_feed(r.x, in + i, 1);
    assert_string_equal(r.log.data + strcspn(r.log.data, "\n") + 1,
                        "stanza(<message><body>a&amp;bA&lt;c&gt;d</body></message>)\n");
    rec_free(&r);
}

static void xmlstream_whitespace_keepalive_between_stanzas(void **state)
{
    rec r;
    rec_init(&r, NULL);
    assert_int_equal(feed_in_steps(&r, HDR, strlen(HDR), 0), 0);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(st_xmlstream_feed(r.x, " \n", 2), 0);
    assert_int_equal(feed_in_steps(&r, "<presence/>", 11, 0), 0);
    assert_int_equal(r.stanzas, 1);
    rec_free(&r);
}

/* ---- RFC 6120 §11.1 restricted XML ---- */

static void rfc6120_11_1_doctype_refused(void **state)
{
    assert_error("<!DOCTYPE stream>" HDR, "restricted-xml");
    assert_error("<?xml version='1.0'?><!DOCTYPE stream:stream SYSTEM 'http://x/evil.dtd'>"
                 "<stream:stream/>", "restricted-xml");
}

static void rfc6120_11_1_comment_refused(void **state)
{
    assert_error(HDR "<!-- hi -->", "restricted-xml");
    assert_error(HDR "<message><!-- hi --></message>", "restricted-xml");
    assert_error("<!-- before -->" HDR, "restricted-xml");
}

static void rfc6120_11_1_processing_instruction_refused(void **state)
{
    assert_error(HDR "<message><?php echo 1; ?></message>", "restricted-xml");
    assert_error("<?xml-stylesheet href='a'?>" HDR, "restricted-xml");
}

static void rfc6120_11_1_xml_declaration_allowed(void **state)
{
    assert_error("<?xml version='1.0' encoding='UTF-8'?><stream:stream "
                 "xmlns:stream='http://etherx.jabber.org/streams'><presence/>", NULL);
    assert_error(HDR "<presence/>", NULL);
}

static void rfc6120_11_1_entity_reference_refused(void **state)
{
    assert_error(HDR "<message><body>&nbsp;</body></message>", "restricted-xml");
    assert_error(HDR "<message a='&foo;'/>", "restricted-xml");
    /* The five predefined entities and character references are fine. */
    assert_error(HDR "<m a='&lt;&gt;&amp;&quot;&apos;'>&#169;&#xA9;</m>", NULL);
}

static void billion_laughs_refused(void **state)
{
    const char *bomb =
        "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
        "<!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>"
        "<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]>"
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"
        "<message><body>&lol3;</body></message>";
    assert_error(bomb, "restricted-xml");
    rec r;
    rec_init(&r, NULL);
    feed_in_steps(&r, bomb, strlen(bomb), 1);
    assert_string_equal(r.log.data, "error(restricted-xml)\n"); /* nothing got through */
    rec_free(&r);
}

static void invalid_utf8_not_well_formed(void **state)
{
    static const char *bad[] = {
        "\xff",             /* never valid */
        "\xc0\xaf",         /* overlong '/' */
        "\xe0\x80\xaf",     /* overlong */
        "\xed\xa0\x80",     /* UTF-16 surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xc3",             /* truncated, then ASCII */
        "\x80",             /* lone continuation */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char doc[256];
        snprintf(doc, sizeof doc, HDR "<message><body>a%sb</body></message>", bad[i]);
        assert_error(doc, "not-well-formed");
        snprintf(doc, sizeof doc, HDR "<message to='%s'/>", bad[i]);
        assert_error(doc, "not-well-formed");
    }
    assert_error(HDR "<message><body>\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80</body></message>", NULL);
}

static void nul_byte_not_well_formed(void **state)
{
    static const char in1[] = HDR "<message><body>a\0b</body></message>";
    assert_string_equal(error_of(in1, sizeof in1 - 1), "not-well-formed");
    static const char in2[] = HDR "<message to='a\0'/>";
    assert_string_equal(error_of(in2, sizeof in2 - 1), "not-well-formed");
    static const char in3[] = "\0" HDR;
    assert_string_equal(error_of(in3, sizeof in3 - 1), "not-well-formed");
}

static void rfc6120_4_9_3_table_of_malformed_input(void **state)
{
    static const struct {
        const char *in, *cond;
    } cases[] = {
        { HDR "hello", "bad-format" },
        { HDR "<presence/>text<presence/>", "bad-format" },
        { HDR "<message></iq>", "not-well-formed" },
        { HDR "<message a='1' a='2'/>", "not-well-formed" },
        { HDR "<foo:bar/>", "bad-namespace-prefix" },
        { HDR "<message foo:a='1'/>", "bad-namespace-prefix" },
        { HDR "</stream:stream><presence/>", "not-well-formed" },
        { "<stream:stream>", "bad-namespace-prefix" },
        { "plain text", "not-well-formed" },
        { HDR "<a><![CDATA[ok]]></a>", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_error(cases[i].in, cases[i].cond);
}

/* ---- limits ---- */

static void xmlstream_stanza_limit_enforced_while_parsing(void **state)
{
    const size_t max = 262144, total = 10u << 20, chunk = 16384;
    /* Twice: a huge text body (expat reports it piecemeal) and a huge
     * attribute value (expat reports nothing until the tag ends). */
    static const char *const openers[] = { "<message><body>", "<message to='" };
    for (size_t k = 0; k < 2; k++) {
        rec r;
        rec_init(&r, NULL);
        assert_int_equal(feed_in_steps(&r, HDR, strlen(HDR), 0), 0);
        char *buf = malloc(chunk);
        memset(buf, 'a', chunk);
        size_t olen = strlen(openers[k]);
        memcpy(buf, openers[k], olen);
        size_t fed = 0;
        int rc = 0;
        while (fed < total && (rc = st_xmlstream_feed(r.x, buf, chunk)) == 0) {
            fed += chunk;
            assert_true(st_xmlstream_pending_bytes(r.x) <= max);
            memset(buf, 'a', olen);
        }
        assert_int_equal(rc, -1);
        assert_string_equal(st_xmlstream_error(r.x), "policy-violation");
        /* It fired in the chunk that crossed the limit, not at the end. */
        assert_true(fed <= max && fed + chunk > max);
        assert_int_equal(st_xmlstream_feed(r.x, "<presence/>", 11), -1);
        free(buf);
        rec_free(&r);
    }
}

static void xmlstream_stanza_exactly_at_limit_accepted(void **state)
{
    st_xml_limits lim = { .max_stanza_bytes = 100 };
    for (size_t body = 70; body < 90; body++) {
        char doc[512];
        int n = snprintf(doc, sizeof doc, "<message><body>%0*d</body></message>", (int)body, 0);
        rec r;
        rec_init(&r, &lim);
        feed_in_steps(&r, HDR, strlen(HDR), 0);
        int rc = feed_in_steps(&r, doc, (size_t)n, 7);
        if ((size_t)n <= 100)
            assert_int_equal(rc, 0);
        else
            assert_string_equal(st_xmlstream_error(r.x), "policy-violation");
        rec_free(&r);
    }
}

static void xmlstream_header_limit(void **state)
{
    st_xml_limits lim = { .max_header_bytes = 200 };
    rec r;
    rec_init(&r, &lim);
    char doc[1024];
    snprintf(doc, sizeof doc, "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
                              "to='%0500d'>", 0);
    assert_int_equal(feed_in_steps(&r, doc, strlen(doc), 1), -1);
    assert_string_equal(st_xmlstream_error(r.x), "policy-violation");
    assert_int_equal(r.opens, 0);
    rec_free(&r);
    rec_init(&r, &lim);
    assert_int_equal(feed_in_steps(&r, HDR, strlen(HDR), 1), 0);
    assert_int_equal(r.opens, 1);
    rec_free(&r);
}

static void xmlstream_depth_and_attribute_limits(void **state)
{
    st_xml_limits lim = { .max_depth = 3, .max_attrs = 4 };
    static const struct {
        const char *in;
        int ok;
    } cases[] = {
        { "<a><b><c/></b></a>", 1 },
        { "<a><b><c><d/></c></b></a>", 0 },
        { "<a p='1' q='2' r='3' s='4'/>", 1 },
        { "<a p='1' q='2' r='3' s='4' t='5'/>", 0 },
        { "<a xmlns:x='1' xmlns:y='2' xmlns:z='3' xmlns:w='4' xmlns:v='5'/>", 0 },
        { "<a xmlns:x='1' xmlns:y='2' xmlns:z='3' xmlns:w='4' p='1' q='2' r='3' s='4'/>", 1 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rec r;
        rec_init(&r, &lim);
        feed_in_steps(&r, HDR, strlen(HDR), 0);
        int rc = feed_in_steps(&r, cases[i].in, strlen(cases[i].in), 0);
        if (cases[i].ok) {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, -1);
            assert_string_equal(st_xmlstream_error(r.x), "policy-violation");
            assert_non_null(st_xmlstream_error_text(r.x));
        }
        rec_free(&r);
    }
}

/* ---- restart and stop ---- */

static void xmlstream_restart_after_sasl_success_same_feed(void **state)
{
    rec r;
    rec_init(&r, NULL);
    r.restart_on_success = 1;
    const char *in = HDR "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
                     "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     "xmlns:stream='http://etherx.jabber.org/streams' to='example.com' "
                     "version='1.0'><iq type='set' id='b'/>";
    assert_int_equal(feed_in_steps(&r, in, strlen(in), 0), 0);
    assert_int_equal(r.opens, 2);
    assert_string_equal(strstr(r.log.data, "stanza(<success"),
        "stanza(<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>)\n"
        "open(stream|http://etherx.jabber.org/streams xmlns=jabber:client to=example.com version=1.0)\n"
        "stanza(<iq type='set' id='b'/>)\n");
    rec_free(&r);
}

static void xmlstream_restart_after_starttls_later_feed(void **state)
{
    rec r;
    rec_init(&r, NULL);
    r.restart_on_success = 1;
    const char *a = HDR "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
    assert_int_equal(feed_in_steps(&r, a, strlen(a), 0), 0);
    assert_int_equal(feed_in_steps(&r, HDR, strlen(HDR), 0), 0); /* a second XML declaration is fine */
    assert_int_equal(r.opens, 2);
    rec_free(&r);
}

static void xmlstream_restart_outside_handler(void **state)
{
    rec r;
    rec_init(&r, NULL);
    assert_int_equal(feed_in_steps(&r, HDR "<message><body>half", strlen(HDR) + 19, 0), 0);
    st_xmlstream_restart(r.x);
    assert_int_equal(st_xmlstream_pending_bytes(r.x), 0);
    assert_int_equal(feed_in_steps(&r, HDR "<presence/>", strlen(HDR) + 11, 0), 0);
    assert_int_equal(r.opens, 2);
    assert_int_equal(r.stanzas, 1);
    rec_free(&r);
}

static void xmlstream_stop_ignores_rest(void **state)
{
    rec r;
    rec_init(&r, NULL);
    r.stop_on = 1;
    const char *in = HDR "<presence/><presence/>garbage<<<";
    assert_int_equal(feed_in_steps(&r, in, strlen(in), 0), 0);
    assert_int_equal(st_xmlstream_feed(r.x, "more", 4), 0);
    assert_int_equal(r.stanzas, 1);
    assert_null(st_xmlstream_error(r.x));
    rec_free(&r);
}

static void xmlstream_error_is_sticky(void **state)
{
    rec r;
    rec_init(&r, NULL);
    assert_int_equal(feed_in_steps(&r, HDR "<a></b>", strlen(HDR) + 7, 0), -1);
    assert_int_equal(st_xmlstream_feed(r.x, "<presence/>", 11), -1);
    assert_int_equal(st_xmlstream_feed(r.x, "", 0), -1);
    assert_string_equal(st_xmlstream_error(r.x), "not-well-formed");
    rec_free(&r);
}

/* ---- incremental feeding ---- */

static const char transcript[] =
    "<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>"
    "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "to='example.com' version='1.0'>"
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>"
    "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com'>"
    "<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>balcony"
    "</resource></bind></iq>\r\n "
    "<message from='juliet@example.com/balcony' to='romeo@example.net' type='chat' xml:lang='en'>"
    "<body>Art thou not Romeo, and a Montague? &lt;3 &#x2665; caf\xc3\xa9</body>"
    "<x xmlns:a='urn:a' a:b='c'/></message>"
    "<presence><show>away</show><status>\xe2\x98\x95</status></presence>"
    "</stream:stream>";

static char *transcript_log(size_t step)
{
    rec r;
    rec_init(&r, NULL);
    r.restart_on_success = 1;
    feed_in_steps(&r, transcript, sizeof transcript - 1, step);
    char *log = st_buf_steal(&r.log, NULL);
    rec_free(&r);
    return log;
}

static void xmlstream_split_at_every_byte(void **state)
{
    char *whole = transcript_log(0);
    assert_non_null(strstr(whole, "close\n"));
    assert_null(strstr(whole, "error"));
    assert_int_equal(strstr(whole, "open(") != NULL, 1);
    char *bytewise = transcript_log(1);
    assert_string_equal(bytewise, whole);
    st_free(bytewise);
    /* And every two-piece split. */
    size_t len = sizeof transcript - 1;
    for (size_t cut = 1; cut < len; cut++) {
        rec r;
        rec_init(&r, NULL);
        r.restart_on_success = 1;
        assert_int_equal(st_xmlstream_feed(r.x, transcript, cut), 0);
        assert_int_equal(st_xmlstream_feed(r.x, transcript + cut, len - cut), 0);
        assert_string_equal(r.log.data, whole);
        rec_free(&r);
    }
    st_free(whole);
}

static void xmlstream_stanza_delivered_on_completing_byte(void **state)
{
    /* Batching must never hold back a complete element: the '>' in the
     * attribute value is not the end, the last byte is. */
    static const char *docs[] = {
        "<message to='a>b' id=\"c>d\"><body>x > y</body></message>",
        "<message><body><![CDATA[a>b]]></body></message>",
        "<presence/>",
    };
    for (size_t k = 0; k < sizeof docs / sizeof docs[0]; k++) {
        rec r;
        rec_init(&r, NULL);
        assert_int_equal(feed_in_steps(&r, HDR, strlen(HDR), 1), 0);
        assert_int_equal(r.opens, 1);
        size_t len = strlen(docs[k]);
        for (size_t i = 0; i < len; i++) {
            assert_int_equal(st_xmlstream_feed(r.x, docs[k] + i, 1), 0);
            assert_int_equal(r.stanzas, i == len - 1 ? 1 : 0);
        }
        rec_free(&r);
    }
}

static void xmlstream_trickled_tag_costs_linear_time(void **state)
{
    /* A 256 KiB start tag sent one byte per feed: expat alone would rescan
     * the partial tag on every feed (about 3e10 byte steps). */
    rec r;
    rec_init(&r, NULL);
    feed_in_steps(&r, HDR, strlen(HDR), 0);
    feed_in_steps(&r, "<message to='", 13, 0);
    clock_t t0 = clock();
    size_t n = 0;
    while (st_xmlstream_feed(r.x, "a", 1) == 0)
        n++;
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    assert_string_equal(st_xmlstream_error(r.x), "policy-violation");
    assert_true(n < 262144);
    assert_true(secs < 5.0);
    rec_free(&r);
}

/* ---- st_xml_parse_element ---- */

static void parse_element_table(void **state)
{
    static const struct {
        const char *in, *err;
    } cases[] = {
        { "<item jid='a@b'><group>g</group></item>", NULL },
        { "<?xml version='1.0'?><a/>", NULL },
        { "<a>", "not-well-formed" },
        { "<a/><b/>", "not-well-formed" },
        { "", "not-well-formed" },
        { "<!DOCTYPE a><a/>", "restricted-xml" },
        { "<a><!--c--></a>", "restricted-xml" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *err = "unset";
        st_stanza *s = st_xml_parse_element(cases[i].in, strlen(cases[i].in), &err);
        if (!cases[i].err) {
            assert_non_null(s);
            assert_null(err);
        } else {
            assert_null(s);
            assert_string_equal(err, cases[i].err);
        }
        st_stanza_unref(s);
    }
    const char *err;
    const char *doc = "<item xmlns='jabber:iq:roster' jid='a@b'><group>g</group></item>";
    st_stanza *s = st_xml_parse_element(doc, strlen(doc), &err);
    assert_string_equal(st_name(s), "item");
    assert_string_equal(s->root->ns, "jabber:iq:roster");
    assert_string_equal(st_child_text(s->root, "group", "jabber:iq:roster"), "g");
    st_stanza_unref(s);
}

/* ---- compaction (idle connections) ---- */

/* Feed in steps, compacting after every feed; returns how often the parser
 * was released. */
static int feed_compacting(rec *r, const char *data, size_t len, size_t step)
{
    int released = 0, rc = 0;
    for (size_t off = 0; off < len && rc == 0; off += step) {
        size_t n = len - off < step ? len - off : step;
        rc = st_xmlstream_feed(r->x, data + off, n);
        released += st_xmlstream_compact(r->x);
    }
    if (rc < 0)
        st_buf_printf(&r->log, "error(%s)\n", st_xmlstream_error(r->x));
    return released;
}

/* A header with its own prefix for the stream namespace and a prefix that
 * only the header declares: both must still be bound after a rebuild. */
static const char compact_doc[] =
    "<?xml version='1.0'?><s:stream xmlns='jabber:client' "
    "xmlns:s='http://etherx.jabber.org/streams' xmlns:e='urn:example:ext' to='example.com' "
    "version='1.0'><presence><e:x e:a='1'/></presence> \n"
    "<message to='a@b'><body>hi &amp; bye</body></message>"
    "<iq type='get' id='1'><e:q/></iq></s:stream>";

static void xmlstream_compact_at_rest_changes_no_event(void **state)
{
    static const size_t steps[] = { 1, 2, 3, 7, 64, sizeof compact_doc - 1 };
    rec ref;
    rec_init(&ref, NULL);
    assert_int_equal(feed_in_steps(&ref, compact_doc, sizeof compact_doc - 1, 0), 0);
    assert_non_null(strstr(ref.log.data, "urn:example:ext"));
    assert_non_null(strstr(ref.log.data, "close\n"));
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        rec r;
        rec_init(&r, NULL);
        int released = feed_compacting(&r, compact_doc, sizeof compact_doc - 1, steps[k]);
        assert_string_equal(r.log.data, ref.log.data);
        assert_int_equal(r.opens, 1);
        if (steps[k] == 1)
            assert_true(released >= 3); /* after each of the three stanzas at least */
        rec_free(&r);
    }
    rec_free(&ref);
    /* With restarts (STARTTLS, SASL): the new stream's header is the one kept. */
    char *whole = transcript_log(0);
    rec r;
    rec_init(&r, NULL);
    r.restart_on_success = 1;
    assert_true(feed_compacting(&r, transcript, sizeof transcript - 1, 1) > 0);
    assert_string_equal(r.log.data, whole);
    rec_free(&r);
    st_free(whole);
}

static void xmlstream_compact_only_at_rest(void **state)
{
    rec r;
    rec_init(&r, NULL);
    assert_int_equal(st_xmlstream_compact(r.x), 0); /* no header yet */
    assert_int_equal(st_xmlstream_feed(r.x, HDR, strlen(HDR)), 0);
    assert_int_equal(st_xmlstream_compact(r.x), 1);
    assert_int_equal(st_xmlstream_compact(r.x), 0); /* already released */
    assert_int_equal(st_xmlstream_feed(r.x, "<message><body>hi", 17), 0);
    assert_int_equal(st_xmlstream_compact(r.x), 0); /* inside an element */
    assert_int_equal(st_xmlstream_feed(r.x, "</body></message><pres", 22), 0);
    assert_int_equal(r.stanzas, 1);
    assert_int_equal(st_xmlstream_compact(r.x), 0); /* half a tag held */
    assert_int_equal(st_xmlstream_feed(r.x, "ence/>", 6), 0);
    assert_int_equal(r.stanzas, 2);
    assert_int_equal(st_xmlstream_compact(r.x), 1);
    /* half a UTF-8 character or entity reference at stream level: expat
     * holds it without an event, and it must reach the rebuilt parser */
    assert_int_equal(st_xmlstream_feed(r.x, "\xc3", 1), 0);
    assert_int_equal(st_xmlstream_compact(r.x), 0);
    assert_int_equal(feed_in_steps(&r, "\xa9", 1, 0), -1); /* text at stream level */
    assert_string_equal(st_xmlstream_error(r.x), "bad-format");
    rec_free(&r);
    rec_init(&r, NULL);
    assert_int_equal(st_xmlstream_feed(r.x, HDR " \n", strlen(HDR) + 2), 0);
    assert_int_equal(st_xmlstream_compact(r.x), 1); /* whitespace keepalives do not count */
    assert_int_equal(st_xmlstream_feed(r.x, "&am", 3), 0);
    assert_int_equal(st_xmlstream_compact(r.x), 0);
    assert_int_equal(feed_in_steps(&r, "<a></b>", 7, 0), -1);
    assert_int_equal(st_xmlstream_compact(r.x), 0); /* after an error */
    assert_string_equal(st_xmlstream_error(r.x), "not-well-formed");
    rec_free(&r);
}

static void xmlstream_limits_hold_after_compact(void **state)
{
    st_xml_limits lim = { .max_stanza_bytes = 64 };
    char ok[64], big[100];
    memset(ok, 'x', sizeof ok);
    memcpy(ok, "<message>", 9);
    memcpy(ok + sizeof ok - 10, "</message>", 10);
    memset(big, 'x', sizeof big);
    memcpy(big, "<message>", 9);
    memcpy(big + sizeof big - 10, "</message>", 10);
    rec r;
    rec_init(&r, &lim);
    assert_int_equal(st_xmlstream_feed(r.x, HDR, strlen(HDR)), 0);
    assert_int_equal(st_xmlstream_compact(r.x), 1);
    assert_int_equal(st_xmlstream_feed(r.x, ok, sizeof ok), 0); /* exactly at the limit */
    assert_int_equal(r.stanzas, 1);
    assert_int_equal(st_xmlstream_compact(r.x), 1);
    assert_int_equal(feed_in_steps(&r, big, sizeof big, 0), -1);
    assert_string_equal(st_xmlstream_error(r.x), "policy-violation");
    rec_free(&r);
}

/* ---- allocation failure torture ---- */

static long alloc_count, fail_at;
static void *t_malloc(size_t n)
{
    if (++alloc_count == fail_at)
        return NULL;
    return malloc(n);
}
static void *t_realloc(void *p, size_t n)
{
    if (++alloc_count == fail_at)
        return NULL;
    return realloc(p, n);
}
static const st_alloc_hooks torture_hooks = { t_malloc, t_realloc, free };

static void torture_stanza(void *ud, st_stanza *s)
{
    st_xmlstream *x = *(st_xmlstream **)ud;
    st_stanza_wire(s, NULL);
    if (strcmp(st_name(s), "success") == 0 || strcmp(st_name(s), "proceed") == 0)
        st_xmlstream_restart(x);
    st_stanza_unref(s);
}

static void xmlstream_workload(size_t step, int compact)
{
    st_xml_handlers h = { NULL, torture_stanza, NULL };
    st_xmlstream *x = NULL;
    x = st_xmlstream_new(NULL, &h, &x);
    if (!x)
        return;
    size_t len = sizeof transcript - 1;
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        int rc = st_xmlstream_feed(x, transcript + off, n);
        if (compact && rc == 0)
            st_xmlstream_compact(x); /* the rebuild allocates too */
        if (rc < 0) {
            /* A failure is reported as an error, never a crash. (Expat reports
             * some of its own OOMs as other errors, e.g. an unbound prefix.) */
            assert_non_null(st_xmlstream_error(x));
            assert_true(alloc_count >= fail_at);
            break;
        }
    }
    st_xmlstream_free(x);
}

static void xmlstream_alloc_failure_torture(void **state)
{
    static const size_t steps[] = { 4096, 13, 13 };
    for (size_t k = 0; k < 3; k++) {
        alloc_count = 0;
        fail_at = -1;
        st_set_alloc_hooks(&torture_hooks);
        xmlstream_workload(steps[k], k == 2);
        st_set_alloc_hooks(NULL);
        long total = alloc_count;
        assert_true(total > 10);
        for (fail_at = 1; fail_at <= total; fail_at++) {
            alloc_count = 0;
            st_set_alloc_hooks(&torture_hooks);
            xmlstream_workload(steps[k], k == 2);
            st_set_alloc_hooks(NULL);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc6120_4_client_stream_transcript),
        cmocka_unit_test(xmlstream_adjacent_text_merged),
        cmocka_unit_test(xmlstream_whitespace_keepalive_between_stanzas),
        cmocka_unit_test(rfc6120_11_1_doctype_refused),
        cmocka_unit_test(rfc6120_11_1_comment_refused),
        cmocka_unit_test(rfc6120_11_1_processing_instruction_refused),
        cmocka_unit_test(rfc6120_11_1_xml_declaration_allowed),
        cmocka_unit_test(rfc6120_11_1_entity_reference_refused),
        cmocka_unit_test(billion_laughs_refused),
        cmocka_unit_test(invalid_utf8_not_well_formed),
        cmocka_unit_test(nul_byte_not_well_formed),
        cmocka_unit_test(rfc6120_4_9_3_table_of_malformed_input),
        cmocka_unit_test(xmlstream_stanza_limit_enforced_while_parsing),
        cmocka_unit_test(xmlstream_stanza_exactly_at_limit_accepted),
        cmocka_unit_test(xmlstream_header_limit),
        cmocka_unit_test(xmlstream_depth_and_attribute_limits),
        cmocka_unit_test(xmlstream_restart_after_sasl_success_same_feed),
        cmocka_unit_test(xmlstream_restart_after_starttls_later_feed),
        cmocka_unit_test(xmlstream_restart_outside_handler),
        cmocka_unit_test(xmlstream_stop_ignores_rest),
        cmocka_unit_test(xmlstream_error_is_sticky),
        cmocka_unit_test(xmlstream_split_at_every_byte),
        cmocka_unit_test(xmlstream_stanza_delivered_on_completing_byte),
        cmocka_unit_test(xmlstream_trickled_tag_costs_linear_time),
        cmocka_unit_test(parse_element_table),
        cmocka_unit_test(xmlstream_compact_at_rest_changes_no_event),
        cmocka_unit_test(xmlstream_compact_only_at_rest),
        cmocka_unit_test(xmlstream_limits_hold_after_compact),
        cmocka_unit_test(xmlstream_alloc_failure_torture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
