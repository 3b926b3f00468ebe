/* stanza.c - XML element trees in one arena, the fluent builder and the serializer.
 *
 * Design: a stanza, its nodes, attributes and strings all live in one arena,
 * so a stanza is freed in one go and its memory is easy to account for. The
 * st_stanza header itself is the arena's first allocation. Only the wire
 * cache is malloc'ed separately, because it is dropped and rebuilt when the
 * tree changes.
 *
 * Tree walks (copy, serialise) are iterative over the parent pointers rather
 * than recursive, so a deep tree built by code (not bound by the parser's
 * depth limit) cannot exhaust the C stack.
 *
 * The serializer is the one place that escapes: values in the tree are always
 * the plain text. */
#include <stdio.h>
#include <string.h>
#include "starling/alloc.h"
#include "starling/stanza.h"

#define STANZA_ARENA_BLOCK 1024

/* ---- internal helpers ---- */

static void stanza_fail(st_stanza *s)
{
    s->failed = 1;
}

static void append_child(st_node *parent, st_node *child)
{
    child->parent = parent;
    child->next = NULL;
    if (parent->last_child)
        parent->last_child->next = child;
    else
        parent->children = child;
    parent->last_child = child;
}

/* Allocate an element in a. ns is reused if it is the parent's pointer. */
static st_node *new_elem(st_arena *a, const char *name, const char *ns, const st_node *parent)
{
    st_node *n = st_arena_alloc(a, sizeof *n);
    if (!n)
        return NULL;
    memset(n, 0, sizeof *n);
    n->name = st_arena_strdup(a, name);
    if (parent && (ns == parent->ns || strcmp(ns, parent->ns) == 0))
        n->ns = parent->ns; /* share the string: most children keep the parent's ns */
    else
        n->ns = st_arena_strdup(a, ns);
    if (!n->name || !n->ns)
        return NULL;
    return n;
}

static st_node *new_text(st_arena *a, const char *text, size_t len)
{
    st_node *n = st_arena_alloc(a, sizeof *n);
    if (!n)
        return NULL;
    memset(n, 0, sizeof *n);
    n->is_text = 1;
    n->text = st_arena_strndup(a, text, len);
    n->text_len = len;
    return n->text ? n : NULL;
}

/* Add text under parent, merging with a preceding text node. */
static int add_text(st_arena *a, st_node *parent, const char *text, size_t len)
{
    st_node *last = parent->last_child;
    if (last && last->is_text) {
        char *t = st_arena_alloc(a, last->text_len + len + 1);
        if (!t)
            return -1;
        memcpy(t, last->text, last->text_len);
        memcpy(t + last->text_len, text, len);
        t[last->text_len + len] = '\0';
        last->text = t;
        last->text_len += len;
        return 0;
    }
    st_node *n = new_text(a, text, len);
    if (!n)
        return -1;
    append_child(parent, n);
    return 0;
}

/* "xml:lang" names the attribute lang in the XML namespace. */
static const char *split_xml_prefix(const char *name, const char **ns)
{
    if (strncmp(name, "xml:", 4) == 0) {
        *ns = ST_NS_XML;
        return name + 4;
    }
    *ns = NULL;
    return name;
}

static int ns_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return a == b || strcmp(a, b) == 0;
}

static st_attr *find_attr(const st_node *n, const char *name, const char *ns)
{
    if (!n || n->is_text)
        return NULL;
    for (st_attr *at = n->attrs; at; at = at->next)
        if (strcmp(at->name, name) == 0 && ns_eq(at->ns, ns))
            return at;
    return NULL;
}

static int set_attr(st_arena *a, st_node *n, const char *name, const char *value)
{
    const char *ns;
    const char *local = split_xml_prefix(name, &ns);
    char *v = st_arena_strdup(a, value);
    if (!v)
        return -1;
    st_attr *at = find_attr(n, local, ns);
    if (at) {
        at->value = v;
        return 0;
    }
    at = st_arena_alloc(a, sizeof *at);
    if (!at)
        return -1;
    at->name = st_arena_strdup(a, local);
    if (!at->name)
        return -1;
    at->ns = ns; /* a static string: ST_NS_XML or NULL */
    at->value = v;
    at->next = NULL;
    /* Keep document order: append at the tail. */
    st_attr **pp = &n->attrs;
    while (*pp)
        pp = &(*pp)->next;
    *pp = at;
    return 0;
}

static void remove_attr(st_node *n, const char *name)
{
    const char *ns;
    const char *local = split_xml_prefix(name, &ns);
    for (st_attr **pp = &n->attrs; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, local) == 0 && ns_eq((*pp)->ns, ns)) {
            *pp = (*pp)->next;
            return;
        }
    }
}

/* Deep-copy the subtree at src into arena a; the copy's parent is set to
 * dst_parent (and it is appended there if dst_parent is not NULL). */
static st_node *copy_tree(st_arena *a, const st_node *src, st_node *dst_parent)
{
    if (src->is_text) {
        st_node *t = new_text(a, src->text, src->text_len);
        if (t && dst_parent)
            append_child(dst_parent, t);
        return t;
    }
    st_node *top = NULL, *dst = dst_parent;
    const st_node *cur = src;
    for (;;) {
        /* Copy cur under dst. */
        st_node *c;
        if (cur->is_text) {
            c = new_text(a, cur->text, cur->text_len);
        } else {
            c = new_elem(a, cur->name, cur->ns, dst);
            st_attr **tail = c ? &c->attrs : NULL;
            for (const st_attr *at = cur->attrs; c && at; at = at->next) {
                st_attr *na = st_arena_alloc(a, sizeof *na);
                if (!na)
                    return NULL;
                na->name = st_arena_strdup(a, at->name);
                na->ns = at->ns ? (strcmp(at->ns, ST_NS_XML) == 0 ? ST_NS_XML
                                                                   : st_arena_strdup(a, at->ns))
                                : NULL;
                na->value = st_arena_strdup(a, at->value);
                na->next = NULL;
                if (!na->name || !na->value || (at->ns && !na->ns))
                    return NULL;
                *tail = na;
                tail = &na->next;
            }
        }
        if (!c)
            return NULL;
        if (dst)
            append_child(dst, c);
        if (!top)
            top = c;
        /* Move on: down first, else next sibling, else up until one has a sibling. */
        if (!cur->is_text && cur->children) {
            dst = c;
            cur = cur->children;
            continue;
        }
        while (cur != src && !cur->next) {
            cur = cur->parent;
            dst = dst->parent;
        }
        if (cur == src)
            break;
        cur = cur->next;
    }
    top->parent = dst_parent;
    return top;
}

static st_stanza *stanza_alloc_sized(size_t first_block)
{
    st_arena *a = st_arena_new(first_block);
    if (!a)
        return NULL;
    st_stanza *s = st_arena_alloc(a, sizeof *s);
    if (!s) {
        st_arena_free(a);
        return NULL;
    }
    memset(s, 0, sizeof *s);
    s->arena = a;
    s->refs = 1;
    return s;
}

static st_stanza *stanza_alloc(void)
{
    return stanza_alloc_sized(STANZA_ARENA_BLOCK);
}

/* ---- life cycle ---- */

st_stanza *st_stanza_new(const char *name, const char *ns)
{
    st_stanza *s = stanza_alloc();
    if (!s)
        return NULL;
    s->root = new_elem(s->arena, name, ns ? ns : ST_NS_CLIENT, NULL);
    if (!s->root) {
        st_arena_free(s->arena);
        return NULL;
    }
    s->cursor = s->root;
    return s;
}

st_stanza *st_stanza_ref(st_stanza *s)
{
    if (s)
        s->refs++;
    return s;
}

void st_stanza_unref(st_stanza *s)
{
    if (!s || --s->refs > 0)
        return;
    st_free(s->wire);
    st_arena_free(s->arena); /* s itself lives in the arena */
}

st_stanza *st_stanza_from_node(const st_node *n)
{
    if (!n || n->is_text)
        return NULL;
    st_stanza *s = stanza_alloc();
    if (!s)
        return NULL;
    s->root = copy_tree(s->arena, n, NULL);
    if (!s->root) {
        st_arena_free(s->arena);
        return NULL;
    }
    s->cursor = s->root;
    return s;
}

st_stanza *st_stanza_copy(const st_stanza *s)
{
    return s ? st_stanza_from_node(s->root) : NULL;
}

#define A8(n) (((n) + 7u) & ~(size_t)7u)

/* An upper bound of what copy_tree allocates for the subtree at n (every
 * namespace counted as its own string); 0 if deeper than we care to walk. */
static size_t tree_bytes(const st_node *n, unsigned depth)
{
    if (depth > 64)
        return 0;
    if (n->is_text)
        return A8(sizeof *n) + A8(n->text_len + 1);
    size_t b = A8(sizeof *n) + A8(strlen(n->name) + 1) + A8(strlen(n->ns) + 1);
    for (const st_attr *at = n->attrs; at; at = at->next)
        b += A8(sizeof *at) + A8(strlen(at->name) + 1) + A8(strlen(at->value) + 1) +
             (at->ns ? A8(strlen(at->ns) + 1) : 0);
    for (const st_node *c = n->children; c; c = c->next) {
        size_t cb = tree_bytes(c, depth + 1);
        if (!cb)
            return 0;
        b += cb;
    }
    return b;
}

st_stanza *st_stanza_copy_tight(const st_stanza *s)
{
    if (!s || !s->root || s->root->is_text)
        return NULL;
    size_t need = tree_bytes(s->root, 0);
    if (!need)
        return st_stanza_copy(s);
    /* the arena's own header and the st_stanza come first in the block */
    st_stanza *c = stanza_alloc_sized(need + A8(sizeof *c) + 64);
    if (!c)
        return NULL;
    c->root = copy_tree(c->arena, s->root, NULL);
    if (!c->root) {
        st_arena_free(c->arena);
        return NULL;
    }
    c->cursor = c->root;
    return c;
}

/* ---- builder ---- */

static int builder_usable(const st_stanza *s)
{
    return s && !s->failed && s->cursor;
}

st_stanza *st_tag(st_stanza *s, const char *name, const char *ns)
{
    if (!builder_usable(s))
        return s;
    st_node *n = new_elem(s->arena, name, ns ? ns : s->cursor->ns, s->cursor);
    if (!n) {
        stanza_fail(s);
        return s;
    }
    append_child(s->cursor, n);
    s->cursor = n;
    st_stanza_touch(s);
    return s;
}

st_stanza *st_attr_set(st_stanza *s, const char *name, const char *value)
{
    if (!builder_usable(s))
        return s;
    if (!value)
        remove_attr(s->cursor, name);
    else if (set_attr(s->arena, s->cursor, name, value) < 0)
        stanza_fail(s);
    st_stanza_touch(s);
    return s;
}

st_stanza *st_textn(st_stanza *s, const char *text, size_t n)
{
    if (!builder_usable(s) || !text)
        return s;
    if (add_text(s->arena, s->cursor, text, n) < 0)
        stanza_fail(s);
    st_stanza_touch(s);
    return s;
}

st_stanza *st_text(st_stanza *s, const char *text)
{
    return st_textn(s, text, text ? strlen(text) : 0);
}

st_stanza *st_text_tag(st_stanza *s, const char *name, const char *text)
{
    return st_up(st_text(st_tag(s, name, NULL), text));
}

st_stanza *st_up(st_stanza *s)
{
    if (builder_usable(s) && s->cursor->parent)
        s->cursor = s->cursor->parent;
    return s;
}

st_stanza *st_top(st_stanza *s)
{
    if (s && !s->failed)
        s->cursor = s->root;
    return s;
}

st_stanza *st_add_copy(st_stanza *s, const st_node *n)
{
    if (!builder_usable(s) || !n)
        return s;
    if (!copy_tree(s->arena, n, s->cursor))
        stanza_fail(s);
    st_stanza_touch(s);
    return s;
}

int st_stanza_ok(const st_stanza *s)
{
    return s && !s->failed;
}

/* Hand back a stanza only if building it succeeded. */
static st_stanza *finish(st_stanza *s)
{
    if (!st_stanza_ok(s)) {
        st_stanza_unref(s);
        return NULL;
    }
    return st_top(s);
}

st_stanza *st_message_new(const char *to, const char *type, const char *body)
{
    st_stanza *s = st_stanza_new("message", ST_NS_CLIENT);
    if (to)
        st_attr_set(s, "to", to);
    if (type)
        st_attr_set(s, "type", type);
    if (body)
        st_text_tag(s, "body", body);
    return finish(s);
}

st_stanza *st_iq_new(const char *type, const char *id)
{
    st_stanza *s = st_stanza_new("iq", ST_NS_CLIENT);
    if (type)
        st_attr_set(s, "type", type);
    if (id)
        st_attr_set(s, "id", id);
    return finish(s);
}

st_stanza *st_iq_reply(const st_stanza *iq)
{
    if (!iq || !iq->root)
        return NULL;
    const char *from = st_attr_get(iq->root, "from");
    const char *to = st_attr_get(iq->root, "to");
    const char *id = st_attr_get(iq->root, "id");
    st_stanza *s = st_stanza_new("iq", iq->root->ns);
    if (from)
        st_attr_set(s, "to", from);
    if (to)
        st_attr_set(s, "from", to);
    st_attr_set(s, "type", "result");
    if (id)
        st_attr_set(s, "id", id);
    return finish(s);
}

/* ---- mutation ---- */

void st_stanza_touch(st_stanza *s)
{
    if (!s || !s->wire)
        return;
    st_free(s->wire);
    s->wire = NULL;
    s->wire_len = 0;
}

int st_node_set_attr(st_stanza *s, st_node *n, const char *name, const char *value)
{
    if (!s || !n || n->is_text)
        return -1;
    st_stanza_touch(s);
    if (!value) {
        remove_attr(n, name);
        return 0;
    }
    return set_attr(s->arena, n, name, value);
}

void st_node_remove_attr(st_stanza *s, st_node *n, const char *name)
{
    if (!s || !n || n->is_text)
        return;
    st_stanza_touch(s);
    remove_attr(n, name);
}

void st_node_remove(st_stanza *s, st_node *n)
{
    if (!s || !n || !n->parent)
        return; /* the root has no parent to leave */
    st_node *p = n->parent;
    /* A cursor inside the removed subtree would dangle outside the tree. */
    for (st_node *c = s->cursor; c; c = c->parent)
        if (c == n) {
            s->cursor = p;
            break;
        }
    st_node *prev = NULL;
    for (st_node *c = p->children; c && c != n; c = c->next)
        prev = c;
    if (prev)
        prev->next = n->next;
    else if (p->children == n)
        p->children = n->next;
    else
        return; /* not actually a child: leave the tree alone */
    if (p->last_child == n)
        p->last_child = prev;
    n->parent = NULL;
    n->next = NULL;
    st_stanza_touch(s);
}

/* ---- queries ---- */

const char *st_attr_get(const st_node *n, const char *name)
{
    const char *ns;
    const char *local = split_xml_prefix(name, &ns);
    st_attr *at = find_attr(n, local, ns);
    return at ? at->value : NULL;
}

const char *st_attr_get_ns(const st_node *n, const char *name, const char *ns)
{
    st_attr *at = find_attr(n, name, ns);
    return at ? at->value : NULL;
}

const char *st_name(const st_stanza *s)
{
    return s && s->root ? s->root->name : NULL;
}

const char *st_get(const st_stanza *s, const char *attr)
{
    return s ? st_attr_get(s->root, attr) : NULL;
}

st_node *st_child(const st_node *n, const char *name, const char *ns)
{
    if (!n || n->is_text)
        return NULL;
    for (st_node *c = n->children; c; c = c->next) {
        if (c->is_text)
            continue;
        if ((!name || strcmp(c->name, name) == 0) && (!ns || strcmp(c->ns, ns) == 0))
            return c;
    }
    return NULL;
}

st_node *st_first_elem(const st_node *n)
{
    return st_child(n, NULL, NULL);
}

st_node *st_next_elem(const st_node *n)
{
    if (!n)
        return NULL;
    for (st_node *c = n->next; c; c = c->next)
        if (!c->is_text)
            return c;
    return NULL;
}

const char *st_node_text(const st_node *n)
{
    if (!n)
        return "";
    if (n->is_text)
        return n->text;
    for (st_node *c = n->children; c; c = c->next)
        if (c->is_text)
            return c->text;
    return "";
}

const char *st_child_text(const st_node *n, const char *name, const char *ns)
{
    st_node *c = st_child(n, name, ns);
    return c ? st_node_text(c) : NULL;
}

/* ---- serialisation ---- */

/* Text: & < > must be escaped; \r too, or the reader's line-end
 * normalisation would turn it into \n. */
static int put_text(st_buf *out, const char *s, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e;
        switch (s[i]) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '\r': e = "&#13;"; break;
        default: continue;
        }
        if (st_buf_append(out, s + start, i - start) < 0 || st_buf_appends(out, e) < 0)
            return -1;
        start = i + 1;
    }
    return st_buf_append(out, s + start, n - start);
}

/* Attribute values: all five specials, plus the whitespace characters the
 * reader's attribute-value normalisation would turn into spaces. */
static int put_attr_value(st_buf *out, const char *s)
{
    size_t n = strlen(s), start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e;
        switch (s[i]) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '"': e = "&quot;"; break;
        case '\'': e = "&apos;"; break;
        case '\t': e = "&#9;"; break;
        case '\n': e = "&#10;"; break;
        case '\r': e = "&#13;"; break;
        default: continue;
        }
        if (st_buf_append(out, s + start, i - start) < 0 || st_buf_appends(out, e) < 0)
            return -1;
        start = i + 1;
    }
    return st_buf_append(out, s + start, n - start);
}

static int put_attr(st_buf *out, const char *prefix, const char *name, const char *value)
{
    if (st_buf_append(out, " ", 1) < 0)
        return -1;
    if (prefix && (st_buf_appends(out, prefix) < 0 || st_buf_append(out, ":", 1) < 0))
        return -1;
    if (st_buf_appends(out, name) < 0 || st_buf_append(out, "='", 2) < 0 ||
        put_attr_value(out, value) < 0 || st_buf_append(out, "'", 1) < 0)
        return -1;
    return 0;
}

static int put_start_tag(st_buf *out, const st_node *n, const char *parent_ns)
{
    if (st_buf_append(out, "<", 1) < 0 || st_buf_appends(out, n->name) < 0)
        return -1;
    if (!ns_eq(n->ns, parent_ns) && put_attr(out, NULL, "xmlns", n->ns) < 0)
        return -1;
    unsigned k = 0;
    for (const st_attr *at = n->attrs; at; at = at->next, k++) {
        if (!at->ns) {
            /* The element's ns field is its namespace; a stray attribute
             * called xmlns would contradict (or duplicate) it. */
            if (strcmp(at->name, "xmlns") == 0)
                continue;
            if (put_attr(out, NULL, at->name, at->value) < 0)
                return -1;
        } else if (strcmp(at->ns, ST_NS_XML) == 0) {
            if (put_attr(out, "xml", at->name, at->value) < 0)
                return -1;
        } else {
            /* A namespaced attribute needs a prefix: nsK, where K is the
             * position of the first attribute of this element in the same
             * namespace, declared there. Scoped to this element, so it
             * cannot clash with anything. */
            unsigned first = 0;
            const st_attr *f = n->attrs;
            while (f != at && !(f->ns && strcmp(f->ns, at->ns) == 0)) {
                f = f->next;
                first++;
            }
            char prefix[24];
            snprintf(prefix, sizeof prefix, "ns%u", first);
            if (f == at && (st_buf_printf(out, " xmlns:%s='", prefix) < 0 ||
                            put_attr_value(out, at->ns) < 0 || st_buf_append(out, "'", 1) < 0))
                return -1;
            if (put_attr(out, prefix, at->name, at->value) < 0)
                return -1;
        }
    }
    return st_buf_append(out, n->children ? ">" : "/>", n->children ? 1 : 2);
}

static int put_end_tag(st_buf *out, const st_node *n)
{
    if (!n->children)
        return 0; /* written as an empty-element tag */
    if (st_buf_append(out, "</", 2) < 0 || st_buf_appends(out, n->name) < 0 ||
        st_buf_append(out, ">", 1) < 0)
        return -1;
    return 0;
}

int st_serialize(const st_node *n, const char *parent_ns, st_buf *out)
{
    if (!n)
        return -1;
    size_t start_len = out->len;
    const st_node *cur = n;
    for (;;) {
        const char *pns = cur == n ? parent_ns : cur->parent->ns;
        if (cur->is_text) {
            if (put_text(out, cur->text, cur->text_len) < 0)
                goto fail;
        } else {
            if (put_start_tag(out, cur, pns) < 0)
                goto fail;
            if (cur->children) {
                cur = cur->children;
                continue;
            }
        }
        /* Close elements until one has a next sibling (or we are back at n). */
        for (;;) {
            if (!cur->is_text && put_end_tag(out, cur) < 0)
                goto fail;
            if (cur == n)
                return 0;
            if (cur->next) {
                cur = cur->next;
                break;
            }
            cur = cur->parent;
        }
    }
fail:
    /* Leave out as it was, so a caller never sends half an element. */
    out->len = start_len;
    if (out->data)
        out->data[start_len] = '\0';
    return -1;
}

const char *st_stanza_wire(st_stanza *s, size_t *len)
{
    if (!s || !s->root)
        return NULL;
    if (!s->wire) {
        st_buf b;
        st_buf_init(&b, 0);
        if (st_serialize(s->root, ST_NS_CLIENT, &b) < 0) {
            st_buf_free(&b);
            return NULL;
        }
        s->wire = st_buf_steal(&b, &s->wire_len);
        if (!s->wire)
            return NULL;
    }
    if (len)
        *len = s->wire_len;
    return s->wire;
}
