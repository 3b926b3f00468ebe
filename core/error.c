/* error.c - protocol errors as data (RFC 6120 §4.9 stream errors, §8.3 stanza errors).
 *
 * Two tables are the whole policy: the stanza error conditions with their
 * default type (RFC 6120 §8.3.3), and the stream error conditions (§4.9.3).
 * Callers name a condition; the type and the namespaces come from here, so no
 * handler has to remember that forbidden is type='auth'. */
#include <string.h>
#include "starling/error.h"

static const struct {
    const char *condition;
    const char *type;
} stanza_conditions[] = {
    /* RFC 6120 §8.3.3.1 .. §8.3.3.22, types as in the RFC's examples. */
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
};

static const char *const stream_conditions[] = {
    /* RFC 6120 §4.9.3.1 .. §4.9.3.25 */
    "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout", "host-gone",
    "host-unknown", "improper-addressing", "internal-server-error", "invalid-from",
    "invalid-namespace", "invalid-xml", "not-authorized", "not-well-formed", "policy-violation",
    "remote-connection-failed", "reset", "resource-constraint", "restricted-xml",
    "see-other-host", "system-shutdown", "undefined-condition", "unsupported-encoding",
    "unsupported-feature", "unsupported-stanza-type", "unsupported-version",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int is_stanza_condition(const char *condition)
{
    for (size_t i = 0; condition && i < COUNT(stanza_conditions); i++)
        if (strcmp(stanza_conditions[i].condition, condition) == 0)
            return 1;
    return 0;
}

const char *st_stanza_error_type(const char *condition)
{
    for (size_t i = 0; condition && i < COUNT(stanza_conditions); i++)
        if (strcmp(stanza_conditions[i].condition, condition) == 0)
            return stanza_conditions[i].type;
    return "cancel"; /* an unknown condition goes out as undefined-condition */
}

int st_is_stream_condition(const char *condition)
{
    for (size_t i = 0; condition && i < COUNT(stream_conditions); i++)
        if (strcmp(stream_conditions[i], condition) == 0)
            return 1;
    return 0;
}

st_stanza *st_error_reply(const st_stanza *orig, const char *condition, const char *text)
{
    if (!orig || !orig->root)
        return NULL;
    /* Never emit a condition the peer cannot understand. */
    if (!is_stanza_condition(condition))
        condition = "undefined-condition";
    const st_node *r = orig->root;
    const char *from = st_attr_get(r, "from");
    const char *to = st_attr_get(r, "to");
    const char *id = st_attr_get(r, "id");
    st_stanza *s = st_stanza_new(r->name, r->ns);
    if (from)
        st_attr_set(s, "to", from);
    if (to)
        st_attr_set(s, "from", to);
    st_attr_set(s, "type", "error");
    if (id)
        st_attr_set(s, "id", id);
    st_tag(s, "error", NULL);
    st_attr_set(s, "type", st_stanza_error_type(condition));
    if (to)
        st_attr_set(s, "by", to); /* the addressed entity is the one answering */
    st_tag(s, condition, ST_NS_STANZAS_ERR);
    st_up(s);
    if (text) {
        st_tag(s, "text", ST_NS_STANZAS_ERR);
        st_text(s, text);
        st_up(s);
    }
    st_top(s);
    if (!st_stanza_ok(s)) {
        st_stanza_unref(s);
        return NULL;
    }
    return s;
}

int st_stream_error_xml(st_buf *out, const char *condition, const char *text)
{
    if (!st_is_stream_condition(condition))
        condition = "undefined-condition";
    size_t start = out->len;
    if (st_buf_printf(out, "<stream:error><%s xmlns='" ST_NS_STREAMS_ERR "'/>", condition) < 0)
        goto fail;
    if (text && (st_buf_appends(out, "<text xmlns='" ST_NS_STREAMS_ERR "'>") < 0 ||
                 st_buf_append_escaped(out, text, strlen(text)) < 0 ||
                 st_buf_appends(out, "</text>") < 0))
        goto fail;
    if (st_buf_appends(out, "</stream:error>") < 0)
        goto fail;
    return 0;
fail:
    /* Never leave half a stream error in an output queue. */
    out->len = start;
    if (out->data)
        out->data[start] = '\0';
    return -1;
}
