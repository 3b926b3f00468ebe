/* test_stanza.c - stanza trees: builder, queries, mutation, serializer, wire cache.
 *
 * The serializer is the one place that escapes, and writes xmlns only where
 * the namespace changes; these tests hold it to that byte for byte. The last
 * test breaks the allocator on purpose: every allocation of a typical build
 * and serialisation fails once in turn. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "starling/alloc.h"
#include "starling/stanza.h"
#include "starling/xmlstream.h"

/* Serialise n with jabber:client as the surrounding default namespace. */
static char *xml_of(const st_node *n)
{
    st_buf b;
    st_buf_init(&b, 0);
    assert_int_equal(st_serialize(n, ST_NS_CLIENT, &b), 0);
    return st_buf_steal(&b, NULL);
}

static void assert_xml(const st_node *n, const char *want)
{
    char *got = xml_of(n);
    assert_string_equal(got, want);
    st_free(got);
}

static void builder_version_reply(void **state)
{
    st_stanza *iq = st_iq_new("get", "v1");
    st_attr_set(iq, "from", "romeo@example.net/orchard");
    st_attr_set(iq, "to", "example.net");
    st_tag(iq, "query", "jabber:iq:version");
    assert_true(st_stanza_ok(iq));

    st_stanza *r = st_iq_reply(iq);
    st_tag(r, "query", "jabber:iq:version");
    st_text_tag(r, "name", "Starling");
    st_text_tag(r, "version", "0.1");
    assert_true(st_stanza_ok(r));
    assert_xml(r->root, "<iq to='romeo@example.net/orchard' from='example.net' type='result' "
                        "id='v1'><query xmlns='jabber:iq:version'><name>Starling</name>"
                        "<version>0.1</version></query></iq>");
    st_stanza_unref(iq);
    st_stanza_unref(r);
}

static void serializer_escapes_attr_and_text(void **state)
{
    st_stanza *m = st_message_new("a&b@x", NULL, "1 < 2 & \"q\" 'a' > 0");
    st_attr_set(m, "id", "<\"'&>");
    assert_xml(m->root, "<message to='a&amp;b@x' id='&lt;&quot;&apos;&amp;&gt;'>"
                        "<body>1 &lt; 2 &amp; \"q\" 'a' &gt; 0</body></message>");
    st_stanza_unref(m);
}

static void serializer_xmlns_only_when_changed(void **state)
{
    static const struct {
        const char *parent_ns, *want;
    } cases[] = {
        { ST_NS_CLIENT, "<presence><x xmlns='urn:x'><y/></x><z/></presence>" },
        { ST_NS_SERVER, "<presence xmlns='jabber:client'><x xmlns='urn:x'><y/></x><z/></presence>" },
        { NULL, "<presence xmlns='jabber:client'><x xmlns='urn:x'><y/></x><z/></presence>" },
    };
    st_stanza *p = st_stanza_new("presence", ST_NS_CLIENT);
    st_tag(p, "x", "urn:x");
    st_tag(p, "y", NULL);
    st_up(st_up(p));
    st_tag(p, "z", NULL);
    assert_true(st_stanza_ok(p));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_buf b;
        st_buf_init(&b, 0);
        assert_int_equal(st_serialize(p->root, cases[i].parent_ns, &b), 0);
        assert_string_equal(b.data, cases[i].want);
        st_buf_free(&b);
    }
    st_stanza_unref(p);
}

static void serializer_xml_lang_prefix(void **state)
{
    st_stanza *m = st_stanza_new("message", ST_NS_CLIENT);
    st_attr_set(m, "xml:lang", "en");
    assert_string_equal(st_get(m, "xml:lang"), "en");
    assert_string_equal(st_attr_get_ns(m->root, "lang", ST_NS_XML), "en");
    assert_null(st_get(m, "lang"));
    assert_xml(m->root, "<message xml:lang='en'/>");
    st_stanza_unref(m);
}

static void serializer_declares_attribute_prefix_once(void **state)
{
    const char *doc = "<a xmlns='jabber:client' xmlns:p='urn:p' xmlns:q='urn:q' p:x='1' q:y='2' p:z='3'/>";
    st_stanza *s = st_xml_parse_element(doc, strlen(doc), NULL);
    assert_non_null(s);
    assert_string_equal(st_attr_get_ns(s->root, "z", "urn:p"), "3");
    assert_xml(s->root, "<a xmlns:ns0='urn:p' ns0:x='1' xmlns:ns1='urn:q' ns1:y='2' ns0:z='3'/>");
    st_stanza_unref(s);
}

static void serializer_round_trips_through_parser(void **state)
{
    static const char *docs[] = {
        "<message xmlns='jabber:client' to='a@b' xml:lang='fr'><body>x &amp; y</body></message>",
        "<iq xmlns='jabber:client' type='set' id='1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        "<resource>r\xc3\xa9</resource></bind></iq>",
        "<a xmlns='jabber:client' xmlns:p='urn:p' p:q='1' v='&#9;&#10;&#13;'>t&#13;</a>",
        "<a xmlns='jabber:client'><b xmlns=''/></a>",
    };
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        const char *err = NULL;
        st_stanza *s = st_xml_parse_element(docs[i], strlen(docs[i]), &err);
        assert_non_null(s);
        /* Standalone, so the root must carry its xmlns: parent_ns NULL. */
        st_buf b1, b2;
        st_buf_init(&b1, 0);
        st_buf_init(&b2, 0);
        assert_int_equal(st_serialize(s->root, NULL, &b1), 0);
        st_stanza *t = st_xml_parse_element(b1.data, b1.len, &err);
        assert_non_null(t);
        assert_int_equal(st_serialize(t->root, NULL, &b2), 0);
        assert_string_equal(b1.data, b2.data);
        st_buf_free(&b1);
        st_buf_free(&b2);
        st_stanza_unref(s);
        st_stanza_unref(t);
    }
}

static void builder_merges_adjacent_text(void **state)
{
    st_stanza *s = st_stanza_new("body", ST_NS_CLIENT);
    st_text(s, "Hello, ");
    st_textn(s, "world!!!", 6);
    assert_true(st_stanza_ok(s));
    assert_non_null(s->root->children);
    assert_null(s->root->children->next);
    assert_string_equal(st_node_text(s->root), "Hello, world!");
    st_stanza_unref(s);
}

static void queries_find_children_and_text(void **state)
{
    st_stanza *s = st_message_new("juliet@example.com", "chat", "hi");
    st_tag(s, "thread", NULL);
    st_text(s, "t1");
    st_up(s);
    st_tag(s, "x", "urn:other");
    st_top(s);
    const st_node *r = s->root;
    assert_string_equal(st_name(s), "message");
    assert_string_equal(st_get(s, "type"), "chat");
    assert_null(st_get(s, "from"));
    assert_string_equal(st_child_text(r, "body", NULL), "hi");
    assert_string_equal(st_child_text(r, "thread", ST_NS_CLIENT), "t1");
    assert_null(st_child_text(r, "thread", "urn:other"));
    assert_non_null(st_child(r, "x", "urn:other"));
    assert_null(st_child(r, "missing", NULL));
    st_node *e = st_first_elem(r);
    assert_string_equal(e->name, "body");
    e = st_next_elem(e);
    assert_string_equal(e->name, "thread");
    e = st_next_elem(e);
    assert_string_equal(e->name, "x");
    assert_null(st_next_elem(e));
    assert_string_equal(st_node_text(e), "");
    st_stanza_unref(s);
}

static void mutation_invalidates_wire_cache(void **state)
{
    st_stanza *s = st_message_new("a@b", NULL, "x");
    size_t len;
    const char *w = st_stanza_wire(s, &len);
    assert_string_equal(w, "<message to='a@b'><body>x</body></message>");
    assert_ptr_equal(st_stanza_wire(s, NULL), w); /* cached */
    assert_int_equal(st_node_set_attr(s, s->root, "id", "7"), 0);
    assert_null(s->wire);
    assert_string_equal(st_stanza_wire(s, NULL), "<message to='a@b' id='7'><body>x</body></message>");
    st_node_remove_attr(s, s->root, "to");
    st_node_remove(s, st_child(s->root, "body", NULL));
    assert_string_equal(st_stanza_wire(s, &len), "<message id='7'/>");
    assert_int_equal(len, strlen("<message id='7'/>"));
    st_stanza_unref(s);
}

static void node_remove_middle_and_last(void **state)
{
    st_stanza *s = st_stanza_new("r", ST_NS_CLIENT);
    st_text_tag(s, "a", NULL);
    st_text_tag(s, "b", NULL);
    st_text_tag(s, "c", NULL);
    st_node_remove(s, st_child(s->root, "b", NULL));
    assert_xml(s->root, "<r><a/><c/></r>");
    st_node_remove(s, st_child(s->root, "c", NULL));
    st_text_tag(s, "d", "t");
    assert_xml(s->root, "<r><a/><d>t</d></r>");
    st_stanza_unref(s);
}

/* A kept stanza costs about its own size: one block, no 1 KB default. */
static void copy_tight_is_equal_and_small(void **state)
{
    st_stanza *s = st_stanza_new("presence", ST_NS_CLIENT);
    assert_non_null(s);
    st_tag(s, "show", NULL);
    st_text(s, "away");
    st_up(s);
    st_tag(s, "c", "http://jabber.org/protocol/caps");
    st_attr_set(s, "hash", "sha-1");
    st_attr_set(s, "node", "https://example.org/client");
    st_attr_set(s, "ver", "QgayPKawpkPSDYmwT/WM94uAlu0=");
    st_attr_set(s, "xml:lang", "en");
    st_top(s);
    st_stanza *c = st_stanza_copy_tight(s);
    assert_non_null(c);
    char *a = xml_of(s->root), *b = xml_of(c->root);
    assert_string_equal(a, b);
    st_free(a);
    st_free(b);
    assert_true(st_arena_bytes(c->arena) < st_arena_bytes(s->arena));
    assert_true(st_arena_bytes(c->arena) < 1000); /* the parser and builder start at 1 KB */
    /* a big one still fits in its one block */
    st_stanza *m = st_message_new("a@b", "chat", NULL);
    for (int i = 0; i < 200; i++) {
        st_tag(m, "item", "urn:x");
        st_attr_set(m, "n", "some value");
        st_text(m, "text text text");
        st_up(m);
    }
    st_stanza *mc = st_stanza_copy_tight(m);
    assert_non_null(mc);
    a = xml_of(m->root);
    b = xml_of(mc->root);
    assert_string_equal(a, b);
    st_free(a);
    st_free(b);
    assert_true(st_arena_bytes(mc->arena) <= st_arena_bytes(m->arena));
    st_stanza_unref(s);
    st_stanza_unref(c);
    st_stanza_unref(m);
    st_stanza_unref(mc);
}

static void copy_is_deep_and_independent(void **state)
{
    st_stanza *s = st_message_new("a@b", "chat", "hello");
    st_tag(s, "x", "urn:x");
    st_attr_set(s, "xml:lang", "en");
    st_top(s);
    st_stanza *c = st_stanza_copy(s);
    assert_non_null(c);
    assert_ptr_not_equal(c->arena, s->arena);
    char *a = xml_of(s->root), *b = xml_of(c->root);
    assert_string_equal(a, b);
    st_free(a);
    st_free(b);
    st_stanza_unref(s); /* the copy must not point into s */
    assert_string_equal(st_child_text(c->root, "body", NULL), "hello");
    st_stanza *f = st_stanza_from_node(st_child(c->root, "x", NULL));
    assert_xml(f->root, "<x xmlns='urn:x' xml:lang='en'/>");
    st_stanza *g = st_stanza_new("wrap", ST_NS_CLIENT);
    st_add_copy(g, c->root);
    assert_xml(g->root, "<wrap><message to='a@b' type='chat'><body>hello</body>"
                        "<x xmlns='urn:x' xml:lang='en'/></message></wrap>");
    st_stanza_unref(c);
    st_stanza_unref(f);
    st_stanza_unref(g);
}

static void refcount_shares_one_tree(void **state)
{
    st_stanza *s = st_message_new("a@b", NULL, NULL);
    assert_ptr_equal(st_stanza_ref(s), s);
    assert_int_equal(s->refs, 2);
    st_stanza_unref(s);
    assert_int_equal(s->refs, 1);
    st_stanza_unref(s);
    st_stanza_unref(NULL);
}

static void serializer_respects_buffer_limit(void **state)
{
    st_stanza *s = st_message_new("a@b", NULL, "a fairly long body that will not fit");
    st_buf b;
    st_buf_init(&b, 20);
    st_buf_appends(&b, "pre");
    assert_int_equal(st_serialize(s->root, ST_NS_CLIENT, &b), -1);
    assert_string_equal(b.data, "pre"); /* no half element left behind */
    st_buf_free(&b);
    st_stanza_unref(s);
}

static void deep_tree_serialises_without_recursion(void **state)
{
    st_stanza *s = st_stanza_new("d", ST_NS_CLIENT);
    for (int i = 0; i < 100000; i++)
        st_tag(s, "d", NULL);
    assert_true(st_stanza_ok(s));
    size_t len;
    assert_non_null(st_stanza_wire(s, &len));
    st_stanza *c = st_stanza_copy(s);
    assert_non_null(c);
    st_stanza_unref(c);
    st_stanza_unref(s);
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

/* A typical stanza life: build, copy, serialise, reply, parse. */
static void stanza_workload(void)
{
    st_stanza *s = st_message_new("juliet@example.com", "chat", "Wherefore art thou?");
    st_tag(s, "x", "urn:xmpp:delay");
    st_attr_set(s, "stamp", "2002-09-10T23:08:25Z");
    for (int i = 0; i < 50; i++)
        st_text(s, "long text appended many times to force arena growth ");
    st_top(s);
    if (st_stanza_ok(s)) {
        st_stanza *c = st_stanza_copy(s);
        st_stanza_wire(s, NULL);
        st_stanza_wire(c, NULL);
        st_node_set_attr(s, s->root, "id", "x1");
        st_stanza_wire(s, NULL);
        st_stanza_unref(c);
    }
    st_stanza *iq = st_iq_new("get", "q1");
    st_stanza *r = iq ? st_iq_reply(iq) : NULL;
    st_stanza_unref(r);
    st_stanza_unref(iq);
    const char *doc = "<iq xmlns='jabber:client' id='1'><query xmlns='jabber:iq:roster'>"
                      "<item jid='a@b' name='A &amp; B'/></query></iq>";
    st_stanza *p = st_xml_parse_element(doc, strlen(doc), NULL);
    if (p)
        st_stanza_wire(p, NULL);
    st_stanza_unref(p);
    st_stanza_unref(s);
}

static void stanza_alloc_failure_torture(void **state)
{
    alloc_count = 0;
    fail_at = -1;
    st_set_alloc_hooks(&torture_hooks);
    stanza_workload();
    st_set_alloc_hooks(NULL);
    long total = alloc_count;
    assert_true(total > 10);
    for (fail_at = 1; fail_at <= total; fail_at++) {
        alloc_count = 0;
        st_set_alloc_hooks(&torture_hooks);
        stanza_workload(); /* must neither crash nor leak (ASan checks) */
        st_set_alloc_hooks(NULL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(builder_version_reply),
        cmocka_unit_test(copy_tight_is_equal_and_small),
        cmocka_unit_test(serializer_escapes_attr_and_text),
        cmocka_unit_test(serializer_xmlns_only_when_changed),
        cmocka_unit_test(serializer_xml_lang_prefix),
        cmocka_unit_test(serializer_declares_attribute_prefix_once),
        cmocka_unit_test(serializer_round_trips_through_parser),
        cmocka_unit_test(builder_merges_adjacent_text),
        cmocka_unit_test(queries_find_children_and_text),
        cmocka_unit_test(mutation_invalidates_wire_cache),
        cmocka_unit_test(node_remove_middle_and_last),
        cmocka_unit_test(copy_is_deep_and_independent),
        cmocka_unit_test(refcount_shares_one_tree),
        cmocka_unit_test(serializer_respects_buffer_limit),
        cmocka_unit_test(deep_tree_serialises_without_recursion),
        cmocka_unit_test(stanza_alloc_failure_torture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
