/* xmlstream.h - incremental, sans-I/O XML stream parser for XMPP (on expat).
 *
 * Bytes go in with st_xmlstream_feed(); the stream header, each complete
 * top-level child (a stanza, or a nonza such as <starttls/>) and the stream
 * close come out through handlers. No sockets, no globals: the server, the
 * client library, the fuzzers and byte-exact tests drive the same code.
 *
 * Security (RFC 6120 §11.1): a DOCTYPE, an entity declaration, a processing
 * instruction or a comment is refused with "restricted-xml" and never
 * expanded. Invalid UTF-8, a NUL byte or any other XML error gives
 * "not-well-formed". Limits are enforced while parsing, before the bytes are
 * buffered: more than max_stanza_bytes inside one top-level element, deeper
 * than max_depth, or more than max_attrs attributes on one element gives
 * "policy-violation". After an error the parser refuses further input.
 *
 * Error conditions are RFC 6120 §4.9.3 stream error names, so the caller can
 * send <stream:error> with st_xmlstream_error() as the condition.
 */
#ifndef STARLING_XMLSTREAM_H
#define STARLING_XMLSTREAM_H
#include <stddef.h>
#include "starling/stanza.h"

typedef struct st_xml_limits {
    size_t max_stanza_bytes; /* bytes of one top-level element; default 262144 */
    size_t max_header_bytes; /* bytes before the stream header completes; default 8192 */
    unsigned max_depth;      /* element depth below the stream root; default 32 */
    unsigned max_attrs;      /* attributes per element; default 64 */
} st_xml_limits;

typedef struct st_xml_handlers {
    /* Stream header. header->name is "stream" with ns ST_NS_STREAM for a
     * well-formed XMPP stream (the callee checks, and answers
     * invalid-namespace otherwise). Its attributes are those of the tag; the
     * default namespace declared on it, if any, is given as an attribute named
     * "xmlns" (ns NULL). header is valid only during the call. */
    void (*open)(void *ud, const st_node *header);
    /* A complete top-level element. The callee owns the one reference. */
    void (*stanza)(void *ud, st_stanza *s);
    /* </stream:stream> */
    void (*close)(void *ud);
} st_xml_handlers;

typedef struct st_xmlstream st_xmlstream;

/* limits may be NULL for the defaults; zero fields take the defaults. */
st_xmlstream *st_xmlstream_new(const st_xml_limits *limits, const st_xml_handlers *h, void *ud);
void st_xmlstream_free(st_xmlstream *x);

/* Parse len bytes. Returns 0, or -1 after an error (see st_xmlstream_error).
 * Handlers run inside this call. */
int st_xmlstream_feed(st_xmlstream *x, const char *data, size_t len);

/* From a handler: start a new stream after the current element (after SASL
 * success or STARTTLS). Bytes after that element, in this or later feeds, are
 * parsed as the beginning of a fresh document. Outside a handler it resets at
 * once. */
void st_xmlstream_restart(st_xmlstream *x);
/* From a handler: deliver nothing more; the rest of this feed and any later
 * feed are ignored (feed returns 0). Used when the caller closes the stream. */
void st_xmlstream_stop(st_xmlstream *x);

/* The RFC 6120 stream error condition of the last failure, or NULL. */
const char *st_xmlstream_error(const st_xmlstream *x);
/* Human-readable detail for logs and the <text/> of the stream error. */
const char *st_xmlstream_error_text(const st_xmlstream *x);
/* Bytes of the element being parsed so far (0 between stanzas). */
size_t st_xmlstream_pending_bytes(const st_xmlstream *x);

/* Release the parser's working memory (expat's parser, buffers and
 * tables: about 10 KB) while the stream rests between top-level elements;
 * what stays is this object and a copy of the stream header's start tag.
 * The next feed rebuilds the parser from that copy, so the namespace
 * context is the same and open() is not called again. For idle
 * connections: rebuilding costs about as much as parsing a small stanza.
 * Returns 1 if released, 0 if the stream is not at rest (before the
 * header, inside an element, with bytes held back, after an error or a
 * stop, inside a handler) or already compact. */
int st_xmlstream_compact(st_xmlstream *x);

/* Parse one standalone XML element (a test helper, and for stored XML).
 * Same restrictions as the stream. Returns NULL on error. */
st_stanza *st_xml_parse_element(const char *data, size_t len, const char **error);

#endif
