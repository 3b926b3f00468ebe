/* stanza.h - XML element trees in one arena, a fluent builder and the serializer.
 *
 * A stanza (st_stanza) owns one arena that holds every node, attribute and
 * string of its tree. Stanzas are reference counted: a parsed stanza starts
 * with one reference owned by whoever received it; st_stanza_ref() adds one,
 * st_stanza_unref() drops one and frees the arena with the last. A stanza with
 * more than one reference is shared and must be treated as immutable; its
 * serialised bytes are cached (st_stanza_wire) so a presence broadcast or a
 * MUC message is serialised once for all recipients.
 *
 * Building is fluent, after Prosody's util/stanza: the stanza keeps a cursor;
 * st_tag() opens a child and moves into it, st_text() adds text at the cursor,
 * st_up() moves to the parent. Builder calls return the stanza so they chain,
 * and become no-ops after an allocation failure; check st_stanza_ok() once at
 * the end instead of after every call.
 *
 *     st_stanza *r = st_iq_reply(iq);              // type='result', ids swapped
 *     st_tag(r, "query", "jabber:iq:version");
 *     st_text_tag(r, "name", "Starling");
 *     st_text_tag(r, "version", STARLING_VERSION);
 *     if (!st_stanza_ok(r)) ...
 *
 * Namespaces: every element carries its namespace URI (ns). The serializer
 * writes an xmlns attribute only where an element's ns differs from its
 * parent's (or, for the root, from the stream's default namespace), so
 * jabber:client stanzas go on the wire without one. Attribute values and text
 * are stored unescaped; escaping happens in exactly one place, the serializer.
 */
#ifndef STARLING_STANZA_H
#define STARLING_STANZA_H
#include <stddef.h>
#include "starling/arena.h"
#include "starling/buf.h"

#define ST_NS_CLIENT "jabber:client"
#define ST_NS_SERVER "jabber:server"
#define ST_NS_STREAM "http://etherx.jabber.org/streams"
#define ST_NS_STREAMS_ERR "urn:ietf:params:xml:ns:xmpp-streams"
#define ST_NS_STANZAS_ERR "urn:ietf:params:xml:ns:xmpp-stanzas"
#define ST_NS_TLS "urn:ietf:params:xml:ns:xmpp-tls"
#define ST_NS_SASL "urn:ietf:params:xml:ns:xmpp-sasl"
#define ST_NS_BIND "urn:ietf:params:xml:ns:xmpp-bind"
#define ST_NS_SESSION "urn:ietf:params:xml:ns:xmpp-session"
#define ST_NS_XML "http://www.w3.org/XML/1998/namespace"

typedef struct st_attr {
    const char *name;  /* local name */
    const char *ns;    /* NULL for ordinary attributes; ST_NS_XML for xml:lang */
    const char *value; /* unescaped, NUL-terminated */
    struct st_attr *next;
} st_attr;

typedef struct st_node {
    int is_text;
    struct st_node *parent, *next, *children, *last_child;
    /* elements */
    const char *name; /* local name */
    const char *ns;   /* namespace URI, never NULL for elements */
    st_attr *attrs;
    /* text nodes (adjacent character data is merged into one node) */
    const char *text;
    size_t text_len;
} st_node;

typedef struct st_stanza {
    st_arena *arena;
    st_node *root;
    st_node *cursor; /* builder position */
    int refs;
    int failed; /* an allocation failed while building */
    char *wire; /* cached serialisation (default ns jabber:client), owned, or NULL */
    size_t wire_len;
} st_stanza;

/* ---- life cycle ---- */
st_stanza *st_stanza_new(const char *name, const char *ns); /* NULL on OOM; refs = 1 */
st_stanza *st_stanza_ref(st_stanza *s);
void st_stanza_unref(st_stanza *s); /* NULL is fine */
st_stanza *st_stanza_copy(const st_stanza *s); /* deep copy, new arena, refs = 1 */
/* The same, in an arena sized to fit (one malloc of about the stanza's own
 * size rather than a 1 KB block): for stanzas kept a long time, such as a
 * session's last presence. */
st_stanza *st_stanza_copy_tight(const st_stanza *s);
/* A new stanza whose root is a deep copy of node n. */
st_stanza *st_stanza_from_node(const st_node *n);

/* ---- builder (acts at the cursor; returns s) ---- */
st_stanza *st_tag(st_stanza *s, const char *name, const char *ns /* NULL = parent's */);
st_stanza *st_attr_set(st_stanza *s, const char *name, const char *value); /* replaces */
st_stanza *st_text(st_stanza *s, const char *text);
st_stanza *st_textn(st_stanza *s, const char *text, size_t n);
st_stanza *st_text_tag(st_stanza *s, const char *name, const char *text); /* tag, text, up */
st_stanza *st_up(st_stanza *s);
st_stanza *st_top(st_stanza *s); /* cursor back to root */
st_stanza *st_add_copy(st_stanza *s, const st_node *n); /* deep-copies n under the cursor */
int st_stanza_ok(const st_stanza *s);

/* Convenience constructors. */
st_stanza *st_message_new(const char *to, const char *type, const char *body);
st_stanza *st_iq_new(const char *type, const char *id);
/* type='result' reply to an iq: to = original from, from = original to, same id. */
st_stanza *st_iq_reply(const st_stanza *iq);

/* ---- mutation of a node of s (invalidates the wire cache) ---- */
int st_node_set_attr(st_stanza *s, st_node *n, const char *name, const char *value);
void st_node_remove_attr(st_stanza *s, st_node *n, const char *name);
void st_node_remove(st_stanza *s, st_node *n); /* unlink from its parent */
void st_stanza_touch(st_stanza *s); /* drop the wire cache */

/* ---- queries ---- */
const char *st_attr_get(const st_node *n, const char *name);          /* NULL if absent */
const char *st_attr_get_ns(const st_node *n, const char *name, const char *ns);
const char *st_name(const st_stanza *s);                              /* root local name */
const char *st_get(const st_stanza *s, const char *attr);             /* root attribute */
/* First element child with that name (NULL = any name) and ns (NULL = any ns). */
st_node *st_child(const st_node *n, const char *name, const char *ns);
st_node *st_first_elem(const st_node *n);
st_node *st_next_elem(const st_node *n); /* next element sibling */
/* Text of the first text child, "" if none (borrowed). */
const char *st_node_text(const st_node *n);
/* Text of child name/ns, NULL if the child is absent. */
const char *st_child_text(const st_node *n, const char *name, const char *ns);

/* ---- serialisation (the one place that escapes) ---- */
/* Append the XML of n to out; an xmlns attribute is written when n->ns differs
 * from parent_ns. Returns 0 or -1 (buffer limit / OOM). */
int st_serialize(const st_node *n, const char *parent_ns, st_buf *out);
/* Cached serialisation of the whole stanza with jabber:client as the default
 * namespace. Borrowed; valid until the stanza is modified or freed. NULL on OOM. */
const char *st_stanza_wire(st_stanza *s, size_t *len);

#endif
