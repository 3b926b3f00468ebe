/* test_error.c - protocol errors as data: RFC 6120 §8.3.3 types, §4.9.3 stream
 * conditions, error replies and <stream:error/> bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "starling/alloc.h"
#include "starling/error.h"

static void rfc6120_8_3_3_condition_types(void **state)
{
    static const struct {
        const char *cond, *type;
    } cases[] = {
        { "bad-request", "modify" },
        { "conflict", "cancel" },
        { "feature-not-implemented", "cancel" },
        { "forbidden", "auth" },
        { "gone", "cancel" },
        { "internal-server-error", "cancel" },
        { "item-not-found", "cancel" },
        { "jid-malformed", "modify" },
        { "not-acceptable", "modify" },
        { "not-allowed", "cancel" },
        { "not-authorized", "auth" },
        { "policy-violation", "modify" },
        { "recipient-unavailable", "wait" },
        { "redirect", "modify" },
        { "registration-required", "auth" },
        { "remote-server-not-found", "cancel" },
        { "remote-server-timeout", "wait" },
        { "resource-constraint", "wait" },
        { "service-unavailable", "cancel" },
        { "subscription-required", "auth" },
        { "undefined-condition", "cancel" },
        { "unexpected-request", "wait" },
        { "no-such-condition", "cancel" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_string_equal(st_stanza_error_type(cases[i].cond), cases[i].type);
}

static void rfc6120_4_9_3_stream_conditions(void **state)
{
    static const char *defined[] = {
        "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout", "host-gone",
        "host-unknown", "improper-addressing", "internal-server-error", "invalid-from",
        "invalid-namespace", "invalid-xml", "not-authorized", "not-well-formed",
        "policy-violation", "remote-connection-failed", "reset", "resource-constraint",
        "restricted-xml", "see-other-host", "system-shutdown", "undefined-condition",
        "unsupported-encoding", "unsupported-feature", "unsupported-stanza-type",
        "unsupported-version",
    };
    for (size_t i = 0; i < sizeof defined / sizeof defined[0]; i++)
        assert_true(st_is_stream_condition(defined[i]));
    assert_false(st_is_stream_condition("item-not-found"));
    assert_false(st_is_stream_condition(""));
    assert_false(st_is_stream_condition(NULL));
}

static void rfc6120_8_3_error_reply_swaps_addresses(void **state)
{
    st_stanza *iq = st_iq_new("get", "42");
    st_attr_set(iq, "from", "romeo@example.net/orchard");
    st_attr_set(iq, "to", "juliet@example.com");
    st_tag(iq, "query", "jabber:iq:private");
    st_top(iq);
    st_stanza *e = st_error_reply(iq, "service-unavailable", "not <here> & now");
    assert_non_null(e);
    assert_string_equal(st_stanza_wire(e, NULL),
        "<iq to='romeo@example.net/orchard' from='juliet@example.com' type='error' id='42'>"
        "<error type='cancel' by='juliet@example.com'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>not &lt;here&gt; &amp; now</text>"
        "</error></iq>");
    st_stanza_unref(e);

    st_stanza *m = st_message_new("a@b", "chat", "payload");
    e = st_error_reply(m, "forbidden", NULL);
    assert_string_equal(st_stanza_wire(e, NULL),
        "<message from='a@b' type='error'><error type='auth' by='a@b'>"
        "<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>");
    assert_null(st_child(e->root, "body", NULL)); /* payload not echoed */
    assert_string_equal(st_get(e, "from"), "a@b");
    assert_null(st_get(e, "to"));
    st_stanza_unref(e);
    e = st_error_reply(m, "made-up", NULL);
    assert_non_null(st_child(st_child(e->root, "error", NULL), "undefined-condition",
                             "urn:ietf:params:xml:ns:xmpp-stanzas"));
    st_stanza_unref(e);
    st_stanza_unref(m);
    st_stanza_unref(iq);
}

static void rfc6120_4_9_stream_error_xml(void **state)
{
    static const struct {
        const char *cond, *text, *want;
    } cases[] = {
        { "not-well-formed", NULL,
          "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
          "</stream:error>" },
        { "policy-violation", "too <big> & 'bad'",
          "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
          "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>too &lt;big&gt; &amp; "
          "&apos;bad&apos;</text></stream:error>" },
        { "<script>", NULL,
          "<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
          "</stream:error>" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_buf b;
        st_buf_init(&b, 0);
        assert_int_equal(st_stream_error_xml(&b, cases[i].cond, cases[i].text), 0);
        assert_string_equal(b.data, cases[i].want);
        st_buf_free(&b);
    }
    st_buf b;
    st_buf_init(&b, 30);
    st_buf_appends(&b, "queued");
    assert_int_equal(st_stream_error_xml(&b, "reset", NULL), -1);
    assert_string_equal(b.data, "queued"); /* nothing half-written */
    st_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc6120_8_3_3_condition_types),
        cmocka_unit_test(rfc6120_4_9_3_stream_conditions),
        cmocka_unit_test(rfc6120_8_3_error_reply_swaps_addresses),
        cmocka_unit_test(rfc6120_4_9_stream_error_xml),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
