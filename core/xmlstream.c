/* xmlstream.c - incremental, sans-I/O XML stream parser for XMPP, on expat.
 *
 * Design. One expat parser per stream document (a restart after STARTTLS or
 * SASL success makes a fresh one). Expat runs in namespace mode with the
 * separator "\x01": that byte is not a legal XML character, so it can never
 * occur inside a namespace URI or a name, and splitting "uri\x01local" is
 * unambiguous. Expat's memory goes through st_malloc so the allocation
 * torture tests reach it too.
 *
 * Trees are built straight into one st_stanza (one arena) per top-level
 * element. Character data is collected in a bounded st_buf and written into
 * the tree as one text node when the next tag arrives, so text that expat
 * delivers in many pieces (entity references, one byte per feed) is merged
 * without quadratic copying.
 *
 * Limits are enforced while parsing, not after buffering: x->mark is the
 * absolute offset from which bytes count against the current limit (the '<'
 * of the current top-level element, or just past the last stream-level
 * event). st_xmlstream_feed hands expat at most enough bytes to exceed the
 * limit by one; if the element is still open after that, the limit is blown
 * and we fail at once. Expat therefore never holds more than about
 * max_stanza_bytes of one element, however it arrives.
 *
 * Errors, st_xmlstream_stop and st_xmlstream_restart all use
 * XML_StopParser; expat may still deliver a callback or two after a stop,
 * so every handler first checks halted(). A restart remembers the offset
 * just past the element that asked for it; feed re-feeds the rest of the
 * chunk to a fresh parser. */
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <string.h>
#include <stdint.h>
#include <expat.h>
#include "starling/alloc.h"
#include "starling/xmlstream.h"

#define NS_SEP '\x01'

#define DEFAULT_MAX_STANZA 262144
#define DEFAULT_MAX_HEADER 8192
#define DEFAULT_MAX_DEPTH 32
#define DEFAULT_MAX_ATTRS 64

typedef struct xzone xzone;

struct st_xmlstream {
    XML_Parser p;
    xzone *zone;        /* where this parser's expat allocates (see below) */
    st_xml_limits lim;
    st_xml_handlers h;
    void *ud;
    int element_mode;   /* st_xml_parse_element: the document root is the stanza */
    unsigned top_level; /* element depth at which stanzas start: 1 (stream) or 0 */

    unsigned depth;     /* open elements in the current document */
    int header_done;    /* stream mode: the stream header has been seen */
    st_stanza *cur;     /* top-level element being built, or NULL */
    st_node *node;      /* innermost open element of cur */
    st_buf text;        /* character data not yet added to the tree */
    unsigned ns_decls;  /* namespace declarations seen for the next start tag */
    char *default_ns;   /* default namespace declared on the stream header */
    char *header;       /* the stream header's start tag as received, for st_xmlstream_compact */
    size_t header_len;
    int replaying;      /* feeding header back into a rebuilt parser: no open() */

    uint64_t fed;       /* bytes given to the current expat parser */
    uint64_t mark;      /* offset from which bytes count against the limit */
    uint64_t event_end; /* offset just past the event being handled */
    uint64_t restart_at;

    int in_handler;
    int restart_pending;
    int stopped;
    int failed;
    const char *error;  /* static condition name */
    char error_text[160];

    st_stanza *result;  /* element mode: the parsed element */

    /* Bytes held back from expat until they may complete an event (see
     * st_xmlstream_feed), and the tiny lexer that decides. */
    st_buf hold;
    int lx_state;
    char lx_prev1, lx_prev2;
};

/* Lexer states: just enough XML to know where a token can end. */
enum { LX_TEXT, LX_LT, LX_TAG, LX_SQ, LX_DQ, LX_PI, LX_BANG, LX_COMMENT, LX_CDATA, LX_RAW };

/* Expat holds back no more than this between events while we batch. */
#define HOLD_MAX 4096

/* ---- expat's memory: one zone per parser ----
 *
 * Expat makes a dozen allocations per parser (its state, the DTD tables,
 * string pools, the input buffer: about 10 KB for a c2s stream), spread
 * through the heap between the connection's own objects. Freed when an
 * idle stream compacts, they leave small holes the heap cannot give back
 * to the kernel. So each parser's expat allocations come from one block
 * of its own (bump allocation with a size word in front; freeing the
 * newest allocation rolls back, others wait for the block to go), with
 * the heap as overflow. Releasing the parser then releases one 12 KB
 * block: whole pages that malloc_trim returns, and a hole the next
 * parser's block fits into.
 *
 * expat's memory suite takes no context pointer, so the zone in use is a
 * thread-local, set around every expat call that may allocate or free and
 * cleared while our handlers run (they may parse other XML). Under
 * AddressSanitizer the unused and freed parts of a zone are poisoned, so
 * expat's accesses are still checked. */
#define ZONE_SIZE (12288 - 32) /* a slot of three pages less the zone header */
#define ZONE_HDR 16

struct xzone {
    unsigned char *base, *last; /* last: the newest allocation (its user pointer) */
    size_t used;
    int slot; /* from the slot pool (else the heap) */
};

static __thread xzone *cur_zone;

#if defined(__SANITIZE_ADDRESS__)
#define ZONE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ZONE_ASAN 1
#endif
#endif
#ifdef ZONE_ASAN
#include <sanitizer/asan_interface.h>
#define ZPOISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define ZUNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define ZPOISON(p, n) ((void)(p), (void)(n))
#define ZUNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* Zones live in page-aligned slots of big anonymous mappings, not in the
 * heap: a freed zone's pages go back to the kernel at once (MADV_DONTNEED)
 * and no heap block is left behind to fragment around the connections'
 * long-lived objects. Pages are resident only once expat touches them. A
 * few freed slots are kept as they are (hot) for the next parser, so
 * st_xml_parse_element's short-lived parsers cost no system call. One
 * mutex: zones are made and freed once per parser, on any thread. If a
 * mapping cannot be made, the zone comes from the heap. */
#define ZONE_SLOT 12288 /* three pages, the zone header included */
#define SLAB_SLOTS 64   /* slots per mapping: 768 KiB of address space */
#define HOT_MAX 16

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static void **pool_cold, **pool_hot; /* free slots: released pages / kept pages */
static size_t pool_ncold, pool_nhot, pool_cap;

/* A free slot, or NULL (the caller falls back to the heap). */
static void *slot_get(void)
{
    void *p = NULL;
    pthread_mutex_lock(&pool_mu);
    if (!pool_nhot && !pool_ncold) {
        void **cold = st_realloc(pool_cold, (pool_cap + SLAB_SLOTS) * sizeof *cold);
        if (cold)
            pool_cold = cold;
        void **hot = cold ? st_realloc(pool_hot, (pool_cap + SLAB_SLOTS) * sizeof *hot) : NULL;
        if (hot)
            pool_hot = hot;
        unsigned char *slab = hot ? mmap(NULL, (size_t)ZONE_SLOT * SLAB_SLOTS,
                                         PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                                  : MAP_FAILED;
        if (slab != MAP_FAILED) {
            pool_cap += SLAB_SLOTS;
            for (size_t i = SLAB_SLOTS; i-- > 0;) /* lowest address out first */
                pool_cold[pool_ncold++] = slab + i * ZONE_SLOT;
        }
    }
    if (pool_nhot)
        p = pool_hot[--pool_nhot];
    else if (pool_ncold)
        p = pool_cold[--pool_ncold];
    pthread_mutex_unlock(&pool_mu);
    return p;
}

static void slot_put(void *p)
{
    pthread_mutex_lock(&pool_mu);
    if (pool_nhot < HOT_MAX) {
        pool_hot[pool_nhot++] = p;
        pthread_mutex_unlock(&pool_mu);
        return;
    }
    pthread_mutex_unlock(&pool_mu);
    madvise(p, ZONE_SLOT, MADV_DONTNEED); /* outside the lock: it is a system call */
    pthread_mutex_lock(&pool_mu);
    pool_cold[pool_ncold++] = p; /* room: the arrays hold every slot ever mapped */
    pthread_mutex_unlock(&pool_mu);
}

static xzone *zone_new(void)
{
    /* the header padded to 32 bytes keeps the blocks 16-byte aligned, as malloc's are */
    _Static_assert(sizeof(xzone) <= 32, "zone header");
    _Static_assert(32 + ZONE_SIZE <= ZONE_SLOT, "zone slot");
    int slot = 1;
    xzone *z = slot_get();
    if (!z) {
        slot = 0;
        if (!(z = st_malloc(32 + ZONE_SIZE)))
            return NULL;
    }
    ZUNPOISON(z, 32);
    z->base = (unsigned char *)z + 32;
    z->last = NULL;
    z->used = 0;
    z->slot = slot;
    ZPOISON(z->base, ZONE_SIZE);
    return z;
}

static void zone_free(xzone *z)
{
    if (!z)
        return;
    if (z->slot) {
        ZPOISON(z, 32); /* the whole slot stays poisoned while free */
        slot_put(z);
        return;
    }
    ZUNPOISON(z->base, ZONE_SIZE);
    st_free(z);
}

static int in_zone(const xzone *z, const void *p)
{
    return z && (const unsigned char *)p >= z->base &&
           (const unsigned char *)p < z->base + ZONE_SIZE;
}

static size_t zone_size_of(const void *p)
{
    size_t n;
    memcpy(&n, (const unsigned char *)p - ZONE_HDR, sizeof n);
    return n;
}

static void *z_malloc(size_t n)
{
    xzone *z = cur_zone;
    size_t need = ZONE_HDR + ((n + 15) & ~(size_t)15);
    if (z && n <= ZONE_SIZE && need <= ZONE_SIZE - z->used) {
        unsigned char *h = z->base + z->used;
        ZUNPOISON(h, ZONE_HDR + n);
        memcpy(h, &n, sizeof n);
        z->used += need;
        z->last = h + ZONE_HDR;
        return z->last;
    }
    return st_malloc(n);
}

static void z_free(void *p)
{
    xzone *z = cur_zone;
    if (!p)
        return;
    if (!in_zone(z, p)) {
        st_free(p);
        return;
    }
    size_t n = zone_size_of(p);
    if (p == z->last) { /* the newest: give its room back */
        z->used = (size_t)((unsigned char *)p - ZONE_HDR - z->base);
        z->last = NULL;
        ZPOISON((unsigned char *)p - ZONE_HDR, ZONE_HDR + n);
    } else {
        ZPOISON(p, n);
    }
}

static void *z_realloc(void *p, size_t n)
{
    xzone *z = cur_zone;
    if (!p)
        return z_malloc(n);
    if (!in_zone(z, p))
        return st_realloc(p, n);
    size_t old = zone_size_of(p);
    size_t off = (size_t)((unsigned char *)p - z->base);
    if (p == z->last && n <= ZONE_SIZE && off + ((n + 15) & ~(size_t)15) <= ZONE_SIZE) {
        /* the newest allocation grows (or shrinks) in place */
        if (n > old)
            ZUNPOISON((unsigned char *)p + old, n - old);
        else
            ZPOISON((unsigned char *)p + n, old - n);
        memcpy((unsigned char *)p - ZONE_HDR, &n, sizeof n);
        z->used = off + ((n + 15) & ~(size_t)15);
        return p;
    }
    void *q = z_malloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, old < n ? old : n);
    if (p != z->last || q == z->last) /* q may just have become the newest */
        ZPOISON(p, old);
    else
        z_free(p);
    return q;
}

static const XML_Memory_Handling_Suite mem_suite = { z_malloc, z_realloc, z_free };

/* Run expat calls of x with its zone in force; restore the caller's. */
#define ZONE_ENTER(x) xzone *zone_saved_ = cur_zone; cur_zone = (x)->zone
#define ZONE_LEAVE() cur_zone = zone_saved_

static int halted(const st_xmlstream *x)
{
    return x->failed || x->stopped || x->restart_pending;
}

static void fail(st_xmlstream *x, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(st_xmlstream *x, const char *cond, const char *fmt, ...)
{
    if (x->failed)
        return; /* keep the first error: it is the cause */
    x->failed = 1;
    x->error = cond;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->error_text, sizeof x->error_text, fmt, ap);
    va_end(ap);
    if (x->p)
        XML_StopParser(x->p, XML_FALSE);
}

static void oom(st_xmlstream *x)
{
    fail(x, "resource-constraint", "out of memory while parsing");
}

static uint64_t event_start(const st_xmlstream *x)
{
    XML_Index i = XML_GetCurrentByteIndex(x->p);
    return i < 0 ? x->fed : (uint64_t)i;
}

static uint64_t event_finish(const st_xmlstream *x)
{
    return event_start(x) + (uint64_t)XML_GetCurrentByteCount(x->p);
}

/* Split an expat name "uri\x01local" (or just "local"). */
static void split_name(const char *qname, const char **uri, size_t *uri_len, const char **local)
{
    const char *sep = strchr(qname, NS_SEP);
    if (sep) {
        *uri = qname;
        *uri_len = (size_t)(sep - qname);
        *local = sep + 1;
    } else {
        *uri = "";
        *uri_len = 0;
        *local = qname;
    }
}

/* Move collected character data into the tree as one text node. */
static int flush_text(st_xmlstream *x)
{
    if (!x->text.len)
        return 0;
    if (x->node) {
        st_arena *a = x->cur->arena;
        st_node *t = st_arena_alloc(a, sizeof *t);
        char *s = t ? st_arena_strndup(a, x->text.data, x->text.len) : NULL;
        if (!s) {
            oom(x);
            return -1;
        }
        memset(t, 0, sizeof *t);
        t->is_text = 1;
        t->text = s;
        t->text_len = x->text.len;
        t->parent = x->node;
        if (x->node->last_child)
            x->node->last_child->next = t;
        else
            x->node->children = t;
        x->node->last_child = t;
    }
    st_buf_reset(&x->text);
    return 0;
}

/* Create an element node from expat's name and attributes in arena a. */
static st_node *build_elem(st_xmlstream *x, st_arena *a, st_node *parent, const char *qname,
                           const char **atts)
{
    const char *uri, *local;
    size_t uri_len;
    split_name(qname, &uri, &uri_len, &local);
    st_node *n = st_arena_alloc(a, sizeof *n);
    if (!n)
        return NULL;
    memset(n, 0, sizeof *n);
    n->name = st_arena_strdup(a, local);
    /* Children nearly always share the parent's namespace: share the string. */
    if (parent && strlen(parent->ns) == uri_len && memcmp(parent->ns, uri, uri_len) == 0)
        n->ns = parent->ns;
    else
        n->ns = st_arena_strndup(a, uri, uri_len);
    if (!n->name || !n->ns)
        return NULL;
    st_attr **tail = &n->attrs;
    for (size_t i = 0; atts[i]; i += 2) {
        const char *auri, *alocal;
        size_t auri_len;
        split_name(atts[i], &auri, &auri_len, &alocal);
        st_attr *at = st_arena_alloc(a, sizeof *at);
        if (!at)
            return NULL;
        at->name = st_arena_strdup(a, alocal);
        at->value = st_arena_strdup(a, atts[i + 1]);
        if (!auri_len)
            at->ns = NULL;
        else if (auri_len == strlen(ST_NS_XML) && memcmp(auri, ST_NS_XML, auri_len) == 0)
            at->ns = ST_NS_XML; /* static, so callers may compare pointers */
        else
            at->ns = st_arena_strndup(a, auri, auri_len);
        at->next = NULL;
        if (!at->name || !at->value || (auri_len && !at->ns))
            return NULL;
        *tail = at;
        tail = &at->next;
    }
    if (parent) {
        n->parent = parent;
        if (parent->last_child)
            parent->last_child->next = n;
        else
            parent->children = n;
        parent->last_child = n;
    }
    return n;
}

/* Keep the start tag of the stream header as it arrived (expat still has
 * the bytes of the event being reported), so st_xmlstream_compact can give
 * a rebuilt parser the same namespace context. Without expat's context
 * bytes, or if out of memory, the stream simply never compacts. */
static void keep_header(st_xmlstream *x)
{
    int off = 0, size = 0, count = XML_GetCurrentByteCount(x->p);
    const char *ctx = XML_GetInputContext(x->p, &off, &size);
    st_free(x->header);
    x->header = NULL;
    x->header_len = 0;
    if (!ctx || count <= 0 || off < 0 || off + count > size)
        return;
    if ((x->header = st_malloc((size_t)count))) {
        memcpy(x->header, ctx + off, (size_t)count);
        x->header_len = (size_t)count;
    }
}

/* The stream header: build a throwaway node, hand it to open(). */
static void stream_open(st_xmlstream *x, const char *qname, const char **atts)
{
    if (x->replaying) {
        x->mark = x->event_end;
        return;
    }
    keep_header(x);
    st_stanza *hdr = st_stanza_new("stream", ST_NS_STREAM);
    st_node *n = hdr ? build_elem(x, hdr->arena, NULL, qname, atts) : NULL;
    if (n && x->default_ns) {
        st_attr *at = st_arena_alloc(hdr->arena, sizeof *at);
        const char *v = at ? st_arena_strdup(hdr->arena, x->default_ns) : NULL;
        if (!v) {
            n = NULL;
        } else {
            at->name = "xmlns";
            at->ns = NULL;
            at->value = v;
            at->next = n->attrs;
            n->attrs = at;
        }
    }
    if (!n) {
        st_stanza_unref(hdr);
        oom(x);
        return;
    }
    hdr->root = hdr->cursor = n;
    x->header_done = 1;
    x->mark = x->event_end;
    if (x->h.open) {
        x->in_handler = 1;
        {
            xzone *z_ = cur_zone; /* handlers may parse other XML */
            cur_zone = NULL;
            x->h.open(x->ud, n);
            cur_zone = z_;
        }
        x->in_handler = 0;
    }
    st_stanza_unref(hdr);
}

static void XMLCALL on_start(void *ud, const char *qname, const char **atts)
{
    st_xmlstream *x = ud;
    if (halted(x))
        return;
    /* Namespace declarations are limited like attributes but counted apart,
     * so that our own serialisation (which may redeclare prefixes) of an
     * accepted element is accepted again. */
    unsigned nattrs = 0, ndecls = x->ns_decls;
    x->ns_decls = 0;
    for (size_t i = 0; atts[i]; i += 2)
        nattrs++;
    if (nattrs > x->lim.max_attrs || ndecls > x->lim.max_attrs) {
        fail(x, "policy-violation", "element has more than %u attributes", x->lim.max_attrs);
        return;
    }
    x->event_end = event_finish(x);
    if (!x->element_mode && x->depth == 0) {
        x->depth++;
        stream_open(x, qname, atts);
        return;
    }
    /* Depth below the stream root (in element mode the root counts as 1). */
    unsigned below = x->depth - x->top_level + 1;
    if (below > x->lim.max_depth) {
        fail(x, "policy-violation", "elements nested deeper than %u", x->lim.max_depth);
        return;
    }
    if (x->depth == x->top_level) {
        x->mark = event_start(x); /* from its '<' on, bytes count against the stanza */
        st_buf_reset(&x->text);   /* whitespace between stanzas is not kept */
        x->cur = st_stanza_new("x", ST_NS_CLIENT);
        if (!x->cur) {
            oom(x);
            return;
        }
        st_node *n = build_elem(x, x->cur->arena, NULL, qname, atts);
        if (!n) {
            oom(x);
            return;
        }
        x->cur->root = x->cur->cursor = n;
        x->node = n;
    } else {
        if (flush_text(x) < 0)
            return;
        st_node *n = build_elem(x, x->cur->arena, x->node, qname, atts);
        if (!n) {
            oom(x);
            return;
        }
        x->node = n;
    }
    x->depth++;
}

static void XMLCALL on_end(void *ud, const char *qname)
{
    st_xmlstream *x = ud;
    if (halted(x))
        return;
    x->event_end = event_finish(x);
    x->depth--;
    if (!x->element_mode && x->depth == 0) {
        /* </stream:stream> */
        x->mark = x->event_end;
        if (x->h.close) {
            x->in_handler = 1;
            {
            xzone *z_ = cur_zone; /* handlers may parse other XML */
            cur_zone = NULL;
            x->h.close(x->ud);
            cur_zone = z_;
        }
            x->in_handler = 0;
        }
        return;
    }
    if (flush_text(x) < 0)
        return;
    if (x->depth > x->top_level) {
        x->node = x->node->parent;
        return;
    }
    /* A complete top-level element: hand over the one reference. */
    st_stanza *s = x->cur;
    x->cur = NULL;
    x->node = NULL;
    x->mark = x->event_end;
    s->cursor = s->root;
    if (x->element_mode) {
        x->result = s;
        return;
    }
    if (x->h.stanza) {
        x->in_handler = 1;
        {
            xzone *z_ = cur_zone; /* handlers may parse other XML */
            cur_zone = NULL;
            x->h.stanza(x->ud, s);
            cur_zone = z_;
        }
        x->in_handler = 0;
    } else {
        st_stanza_unref(s);
    }
}

static void XMLCALL on_text(void *ud, const char *s, int len)
{
    st_xmlstream *x = ud;
    if (halted(x) || len <= 0)
        return;
    if (x->depth > x->top_level) {
        if (st_buf_append(&x->text, s, (size_t)len) == 0)
            return;
        if ((size_t)len > x->text.max - x->text.len)
            fail(x, "policy-violation", "stanza exceeds %zu bytes", x->lim.max_stanza_bytes);
        else
            oom(x);
        return;
    }
    /* Stream level: only whitespace (keepalives) is allowed. */
    for (int i = 0; i < len; i++) {
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') {
            fail(x, "bad-format", "text at stream level");
            return;
        }
    }
    x->mark = event_finish(x);
}

static void XMLCALL on_ns_start(void *ud, const char *prefix, const char *uri)
{
    st_xmlstream *x = ud;
    if (halted(x))
        return;
    x->ns_decls++;
    if (!x->element_mode && x->depth == 0 && !prefix) {
        st_free(x->default_ns);
        x->default_ns = st_strdup(uri ? uri : "");
        if (!x->default_ns)
            oom(x);
    }
}

/* RFC 6120 §11.1: no DTD, no comments, no PIs, no entities but the five. */
static void XMLCALL on_doctype(void *ud, const char *name, const char *sysid, const char *pubid,
                               int has_internal_subset)
{
    fail(ud, "restricted-xml", "DOCTYPE is not allowed");
}

static void XMLCALL on_entity_decl(void *ud, const char *name, int is_param, const char *value,
                                   int value_len, const char *base, const char *sysid,
                                   const char *pubid, const char *notation)
{
    fail(ud, "restricted-xml", "entity declarations are not allowed");
}

static void XMLCALL on_pi(void *ud, const char *target, const char *data)
{
    fail(ud, "restricted-xml", "processing instructions are not allowed");
}

static void XMLCALL on_comment(void *ud, const char *data)
{
    fail(ud, "restricted-xml", "comments are not allowed");
}

static void XMLCALL on_skipped_entity(void *ud, const char *name, int is_param)
{
    fail(ud, "restricted-xml", "entity references are not allowed");
}

static int XMLCALL on_external_entity(XML_Parser p, const char *context, const char *base,
                                      const char *sysid, const char *pubid)
{
    fail(XML_GetUserData(p), "restricted-xml", "external entities are not allowed");
    return XML_STATUS_ERROR;
}



/* Free the expat parser and its zone. */
static void parser_destroy(st_xmlstream *x)
{
    if (x->p) {
        ZONE_ENTER(x);
        XML_ParserFree(x->p);
        ZONE_LEAVE();
    }
    x->p = NULL;
    zone_free(x->zone);
    x->zone = NULL;
}

/* expat's hash salt (its defence against hash flooding) would otherwise
 * cost a getrandom() call per parser, and a connection makes three at
 * login and one each time it wakes from rest. One seed per thread from the
 * kernel, then splitmix64: the salts are never visible to a peer, they
 * only have to be unpredictable to it. */
static unsigned long next_salt(void)
{
    static _Thread_local uint64_t state;
    static _Thread_local int seeded;
    if (!seeded) {
        if (getrandom(&state, sizeof state, 0) != (ssize_t)sizeof state)
            state ^= (uint64_t)(uintptr_t)&state ^ (uint64_t)time(NULL) << 20;
        seeded = 1;
    }
    uint64_t z = (state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return (unsigned long)(z ^ (z >> 31));
}

static int parser_create(st_xmlstream *x)
{
    static const XML_Char sep = NS_SEP;
    if (!x->zone && !(x->zone = zone_new()))
        return -1;
    /* "UTF-8" overrides any encoding declaration: RFC 6120 §11.6 says UTF-8 only. */
    ZONE_ENTER(x);
    x->p = XML_ParserCreate_MM("UTF-8", &mem_suite, &sep);
    ZONE_LEAVE();
    if (!x->p) {
        zone_free(x->zone);
        x->zone = NULL;
        return -1;
    }
    XML_SetHashSalt(x->p, next_salt());
    XML_SetUserData(x->p, x);
    XML_SetElementHandler(x->p, on_start, on_end);
    XML_SetCharacterDataHandler(x->p, on_text);
    XML_SetStartNamespaceDeclHandler(x->p, on_ns_start);
    XML_SetStartDoctypeDeclHandler(x->p, on_doctype);
    XML_SetEntityDeclHandler(x->p, on_entity_decl);
    XML_SetProcessingInstructionHandler(x->p, on_pi);
    XML_SetCommentHandler(x->p, on_comment);
    XML_SetSkippedEntityHandler(x->p, on_skipped_entity);
    XML_SetExternalEntityRefHandler(x->p, on_external_entity);
    XML_SetParamEntityParsing(x->p, XML_PARAM_ENTITY_PARSING_NEVER);
#if XML_MAJOR_VERSION > 2 || (XML_MAJOR_VERSION == 2 && XML_MINOR_VERSION >= 6)
    /* Reparse deferral (expat >= 2.6) may hold back a complete stanza until
     * more bytes arrive; a stream peer waits for our answer, so it would
     * stall. Our byte limits already bound the cost of reparsing. */
    XML_SetReparseDeferralEnabled(x->p, XML_FALSE);
#endif
    return 0;
}

/* Forget the current document and start a fresh parser. */
static int stream_reset(st_xmlstream *x)
{
    parser_destroy(x);
    st_stanza_unref(x->cur);
    x->cur = NULL;
    x->node = NULL;
    st_buf_reset(&x->text);
    st_free(x->default_ns);
    x->default_ns = NULL;
    st_free(x->header);
    x->header = NULL;
    x->header_len = 0;
    x->depth = 0;
    x->header_done = 0;
    x->ns_decls = 0;
    x->fed = x->mark = x->event_end = x->restart_at = 0;
    x->restart_pending = 0;
    if (parser_create(x) < 0) {
        oom(x);
        return -1;
    }
    return 0;
}

st_xmlstream *st_xmlstream_new(const st_xml_limits *limits, const st_xml_handlers *h, void *ud)
{
    st_xmlstream *x = st_calloc(1, sizeof *x);
    if (!x)
        return NULL;
    if (limits)
        x->lim = *limits;
    if (!x->lim.max_stanza_bytes)
        x->lim.max_stanza_bytes = DEFAULT_MAX_STANZA;
    if (!x->lim.max_header_bytes)
        x->lim.max_header_bytes = DEFAULT_MAX_HEADER;
    if (!x->lim.max_depth)
        x->lim.max_depth = DEFAULT_MAX_DEPTH;
    if (!x->lim.max_attrs)
        x->lim.max_attrs = DEFAULT_MAX_ATTRS;
    if (h)
        x->h = *h;
    x->ud = ud;
    x->top_level = 1;
    /* Pending text can never be larger than the stanza that holds it. */
    st_buf_init(&x->text, x->lim.max_stanza_bytes);
    st_buf_init(&x->hold, HOLD_MAX);
    if (parser_create(x) < 0) {
        st_free(x);
        return NULL;
    }
    return x;
}

void st_xmlstream_free(st_xmlstream *x)
{
    if (!x)
        return;
    parser_destroy(x);
    st_stanza_unref(x->cur);
    st_stanza_unref(x->result);
    st_buf_free(&x->text);
    st_buf_free(&x->hold);
    st_free(x->default_ns);
    st_free(x->header);
    st_free(x);
}

/* The limit that applies now, and the offset it counts from. */
static uint64_t current_limit(const st_xmlstream *x, uint64_t *base)
{
    if (!x->element_mode && !x->header_done) {
        *base = 0;
        return x->lim.max_header_bytes;
    }
    *base = x->mark;
    return x->lim.max_stanza_bytes;
}

static void map_expat_error(st_xmlstream *x)
{
    enum XML_Error e = XML_GetErrorCode(x->p);
    const char *cond = "not-well-formed";
    if (e == XML_ERROR_NO_MEMORY)
        cond = "resource-constraint";
    else if (e == XML_ERROR_UNBOUND_PREFIX)
        cond = "bad-namespace-prefix";
    else if (e == XML_ERROR_UNDEFINED_ENTITY || e == XML_ERROR_EXTERNAL_ENTITY_HANDLING)
        cond = "restricted-xml";
    fail(x, cond, "%s at line %lu column %lu", XML_ErrorString(e),
         (unsigned long)XML_GetCurrentLineNumber(x->p),
         (unsigned long)XML_GetCurrentColumnNumber(x->p));
}

/* After st_xmlstream_compact: a new parser, given the kept header so it
 * stands where the old one stood (inside the stream, between elements).
 * Offsets count from this parser's start, like after a restart. */
static int rebuild(st_xmlstream *x)
{
    if (parser_create(x) < 0) {
        oom(x);
        return -1;
    }
    x->replaying = 1;
    x->depth = 0;
    ZONE_ENTER(x);
    enum XML_Status st = XML_Parse(x->p, x->header, (int)x->header_len, XML_FALSE);
    ZONE_LEAVE();
    x->replaying = 0;
    if (x->failed)
        return -1;
    if (st != XML_STATUS_OK || x->depth != 1) {
        fail(x, "internal-server-error", "could not restore the stream parser");
        return -1;
    }
    x->fed = x->mark = x->event_end = x->header_len;
    x->restart_at = 0;
    return 0;
}

static int feed(st_xmlstream *x, const char *data, size_t len, int final)
{
    if (x->failed)
        return -1;
    if (x->stopped)
        return 0;
    if (!x->p && rebuild(x) < 0)
        return -1;
    while (len > 0 || final) {
        uint64_t base;
        uint64_t limit = current_limit(x, &base);
        uint64_t used = x->fed - base;
        /* Give expat just enough to go one byte over the limit. */
        size_t n = len;
        if (used <= limit && limit - used + 1 < n)
            n = (size_t)(limit - used + 1);
        if (n > INT32_MAX)
            n = INT32_MAX;
        int is_final = final && n == len;
        uint64_t chunk_start = x->fed;
        ZONE_ENTER(x);
        enum XML_Status st = XML_Parse(x->p, data, (int)n, is_final);
        ZONE_LEAVE();
        x->fed += n;
        if (x->failed)
            return -1;
        if (x->stopped)
            return 0;
        if (x->restart_pending) {
            /* Re-feed whatever followed the element that asked for it. */
            size_t used_bytes = (size_t)(x->restart_at - chunk_start);
            if (used_bytes > n)
                used_bytes = n;
            if (stream_reset(x) < 0)
                return -1;
            data += used_bytes;
            len -= used_bytes;
            continue;
        }
        if (st != XML_STATUS_OK) {
            map_expat_error(x);
            return -1;
        }
        data += n;
        len -= n;
        limit = current_limit(x, &base);
        if (x->fed - base > limit) {
            if (!x->element_mode && !x->header_done)
                fail(x, "policy-violation", "stream header exceeds %zu bytes",
                     x->lim.max_header_bytes);
            else
                fail(x, "policy-violation", "stanza exceeds %zu bytes", x->lim.max_stanza_bytes);
            return -1;
        }
        if (is_final)
            break;
    }
    return 0;
}

/* Scan data; return 1 if some byte of it may end a token (so expat could
 * deliver an event), or if the lexer has given up (LX_RAW). Exact for
 * well-formed XML; on malformed input it may only hold bytes a little longer,
 * which delays an error, never a stanza. */
static int lex_may_complete(st_xmlstream *x, const char *data, size_t len)
{
    int hit = x->lx_state == LX_RAW;
    for (size_t i = 0; i < len; i++) {
        /* Runs of bytes that cannot change the state are skipped fast: text
         * inside a stanza up to the next '<', a tag up to a quote or '>', a
         * quoted value up to its quote. The skipped bytes still become
         * lx_prev1/lx_prev2, as if scanned one by one. */
        size_t j = i;
        if (x->lx_state == LX_TEXT && x->depth > x->top_level) {
            const char *lt = memchr(data + i, '<', len - i);
            j = lt ? (size_t)(lt - data) : len;
        } else if (x->lx_state == LX_TAG) {
            while (j < len && data[j] != '\'' && data[j] != '"' && data[j] != '>')
                j++;
        } else if (x->lx_state == LX_SQ || x->lx_state == LX_DQ) {
            const char *q = memchr(data + i, x->lx_state == LX_SQ ? '\'' : '"', len - i);
            j = q ? (size_t)(q - data) : len;
        }
        if (j > i) {
            x->lx_prev2 = j - i >= 2 ? data[j - 2] : x->lx_prev1;
            x->lx_prev1 = data[j - 1];
            i = j;
            if (i == len)
                break;
        }
        char c = data[i];
        switch (x->lx_state) {
        case LX_TEXT:
            if (c == '<')
                x->lx_state = LX_LT;
            else if (x->depth <= x->top_level && c != ' ' && c != '\t' && c != '\r' &&
                     c != '\n')
                hit = 1; /* text outside any stanza is an error: report it now */
            break;
        case LX_LT:
            if (c == '?') {
                x->lx_state = LX_PI;
                break;
            }
            if (c == '!') {
                x->lx_state = LX_BANG;
                break;
            }
            x->lx_state = LX_TAG;
            /* c is the first byte of the tag: */
            /* fall through */
        case LX_TAG:
            if (c == '\'')
                x->lx_state = LX_SQ;
            else if (c == '"')
                x->lx_state = LX_DQ;
            else if (c == '>') {
                x->lx_state = LX_TEXT;
                hit = 1;
            }
            break;
        case LX_SQ:
            if (c == '\'')
                x->lx_state = LX_TAG;
            break;
        case LX_DQ:
            if (c == '"')
                x->lx_state = LX_TAG;
            break;
        case LX_PI:
            if (c == '>' && x->lx_prev1 == '?') {
                x->lx_state = LX_TEXT;
                hit = 1;
            }
            break;
        case LX_BANG:
            /* "<![CDATA[" or "<!--"; anything else (DOCTYPE) is refused by
             * expat as soon as it sees it, so stop batching. */
            x->lx_state = c == '[' ? LX_CDATA : c == '-' ? LX_COMMENT : LX_RAW;
            hit |= x->lx_state == LX_RAW;
            break;
        case LX_COMMENT:
            if (c == '>' && x->lx_prev1 == '-' && x->lx_prev2 == '-') {
                x->lx_state = LX_TEXT;
                hit = 1;
            }
            break;
        case LX_CDATA:
            if (c == '>' && x->lx_prev1 == ']' && x->lx_prev2 == ']') {
                x->lx_state = LX_TEXT;
                hit = 1;
            }
            break;
        default:
            hit = 1;
            break;
        }
        x->lx_prev2 = x->lx_prev1;
        x->lx_prev1 = c;
    }
    return hit;
}

int st_xmlstream_feed(st_xmlstream *x, const char *data, size_t len)
{
    if (!x)
        return -1;
    if (x->in_handler) {
        /* Re-entrant feeding would corrupt expat's state. */
        fail(x, "internal-server-error", "feed called from a handler");
        return -1;
    }
    if (x->failed)
        return -1;
    if (x->stopped)
        return 0;
    /* Batching. Expat re-scans an unfinished token from its start on every
     * XML_Parse call, so a long tag trickled in one byte per feed would cost
     * time quadratic in its length. No handler can run until a token ends,
     * so bytes that cannot end one are held back (up to HOLD_MAX) and given
     * to expat together. Handlers still run on exactly the feed that
     * completes their element. */
    if (!lex_may_complete(x, data, len) && len < HOLD_MAX - x->hold.len) {
        if (st_buf_append(&x->hold, data, len) < 0) {
            oom(x);
            return -1;
        }
        uint64_t base;
        uint64_t limit = current_limit(x, &base);
        if (x->fed + x->hold.len - base > limit) {
            if (!x->header_done)
                fail(x, "policy-violation", "stream header exceeds %zu bytes",
                     x->lim.max_header_bytes);
            else
                fail(x, "policy-violation", "stanza exceeds %zu bytes", x->lim.max_stanza_bytes);
            return -1;
        }
        return 0;
    }
    if (x->hold.len) {
        int rc = feed(x, x->hold.data, x->hold.len, 0);
        st_buf_reset(&x->hold);
        if (rc < 0 || x->stopped)
            return rc;
    }
    return feed(x, data, len, 0);
}

void st_xmlstream_restart(st_xmlstream *x)
{
    if (!x || x->failed || x->stopped)
        return;
    if (!x->in_handler) {
        /* Held bytes belong to the old document. */
        st_buf_reset(&x->hold);
        x->lx_state = LX_TEXT;
        stream_reset(x);
        return;
    }
    x->restart_pending = 1;
    x->restart_at = x->event_end;
    XML_StopParser(x->p, XML_FALSE);
}

void st_xmlstream_stop(st_xmlstream *x)
{
    if (!x || x->stopped)
        return;
    x->stopped = 1;
    if (x->in_handler && x->p)
        XML_StopParser(x->p, XML_FALSE);
}

const char *st_xmlstream_error(const st_xmlstream *x)
{
    return x && x->failed ? x->error : NULL;
}

const char *st_xmlstream_error_text(const st_xmlstream *x)
{
    return x && x->failed ? x->error_text : NULL;
}

int st_xmlstream_compact(st_xmlstream *x)
{
    /* At rest: inside the stream, no element open, nothing held back by us
     * (hold, the lexer between tokens) and nothing by expat: every byte
     * given to it ended in an event (mark, set past the last stanza, the
     * header or stream-level whitespace, is where the bytes end). Expat
     * keeps an incomplete UTF-8 sequence or entity reference without an
     * event; dropping it with the parser would lose bytes, so then the
     * stream is not at rest (found by fuzz_xmlstream). */
    if (!x || !x->p || x->element_mode || x->in_handler || x->failed || x->stopped ||
        x->restart_pending || !x->header || !x->header_done || x->depth != x->top_level ||
        x->cur || x->hold.len || x->lx_state != LX_TEXT || x->text.len || x->mark != x->fed)
        return 0;
    parser_destroy(x);
    st_buf_free(&x->text);
    st_buf_init(&x->text, x->lim.max_stanza_bytes);
    st_buf_free(&x->hold);
    st_buf_init(&x->hold, HOLD_MAX);
    return 1;
}

size_t st_xmlstream_pending_bytes(const st_xmlstream *x)
{
    if (!x || !x->cur)
        return 0;
    return (size_t)(x->fed - x->mark);
}

st_stanza *st_xml_parse_element(const char *data, size_t len, const char **error)
{
    st_stanza *s = NULL;
    /* The input is already in memory, so only structure is limited. */
    st_xml_limits lim = { .max_stanza_bytes = SIZE_MAX - 1 };
    st_xmlstream *x = st_xmlstream_new(&lim, NULL, NULL);
    if (!x) {
        if (error)
            *error = "resource-constraint";
        return NULL;
    }
    x->element_mode = 1;
    x->top_level = 0;
    x->header_done = 1;
    if (feed(x, data, len, 1) < 0 || !x->result) {
        if (error)
            *error = x->failed ? x->error : "not-well-formed";
        goto done;
    }
    s = x->result;
    x->result = NULL;
    if (error)
        *error = NULL;
done:
    st_xmlstream_free(x);
    return s;
}
