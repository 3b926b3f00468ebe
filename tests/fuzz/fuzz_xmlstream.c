/* fuzz_xmlstream.c - libFuzzer target for the XMPP stream parser and serializer.
 *
 * Input layout: byte 0 picks the limits, bytes 1..4 are a cycle of chunk
 * sizes (1..256), the rest is the stream. Every stanza that comes out is
 * serialised standalone and parsed again; it must parse, and serialise to
 * the same bytes (abort() otherwise: the round-trip property). <success/>
 * and <proceed/> restart the stream, <stop/> stops it, so those paths are
 * reached from the corpus. The stream is parsed twice, in chunks and in one
 * piece, and both must deliver the same headers and stanzas. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "starling/alloc.h"
#include "starling/xmlstream.h"

typedef struct fuzz_ctx {
    st_xmlstream *x;
    st_buf log; /* every header and stanza, to compare chunked with whole */
} fuzz_ctx;

static void check_round_trip(const st_stanza *s)
{
    st_buf a, b;
    st_buf_init(&a, 0);
    st_buf_init(&b, 0);
    if (st_serialize(s->root, NULL, &a) < 0)
        abort(); /* unlimited buffer: only OOM could fail, and we do not inject any */
    const char *err = NULL;
    st_stanza *t = st_xml_parse_element(a.data, a.len, &err);
    if (!t) {
        fprintf(stderr, "round trip failed (%s): %s\n", err, a.data);
        abort();
    }
    if (st_serialize(t->root, NULL, &b) < 0 || a.len != b.len || memcmp(a.data, b.data, a.len)) {
        fprintf(stderr, "round trip changed:\n%s\n%s\n", a.data, b.data);
        abort();
    }
    st_stanza_unref(t);
    st_buf_free(&a);
    st_buf_free(&b);
}

static void on_open(void *ud, const st_node *header)
{
    fuzz_ctx *c = ud;
    st_buf_appends(&c->log, "open\n");
}

static void on_stanza(void *ud, st_stanza *s)
{
    fuzz_ctx *c = ud;
    check_round_trip(s);
    size_t len;
    const char *w = st_stanza_wire(s, &len);
    if (!w)
        abort();
    st_buf_append(&c->log, w, len);
    st_buf_appends(&c->log, "\n");
    const char *name = st_name(s);
    if (strcmp(name, "success") == 0 || strcmp(name, "proceed") == 0)
        st_xmlstream_restart(c->x);
    else if (strcmp(name, "stop") == 0)
        st_xmlstream_stop(c->x);
    st_stanza_unref(s);
}

static void on_close(void *ud)
{
    fuzz_ctx *c = ud;
    st_buf_appends(&c->log, "close\n");
}

/* Feed the stream in chunks cycling through steps (0 = all at once). */
static void run_stream(fuzz_ctx *c, const st_xml_limits *lim, const size_t *steps,
                       const uint8_t *data, size_t size, int compact)
{
    st_xml_handlers h = { on_open, on_stanza, on_close };
    st_buf_init(&c->log, 0);
    c->x = st_xmlstream_new(lim, &h, c);
    if (!c->x)
        abort();
    size_t off = 0;
    for (int i = 0; off < size; i = (i + 1) & 3) {
        size_t step = steps ? steps[i] : size;
        size_t n = size - off < step ? size - off : step;
        if (st_xmlstream_feed(c->x, (const char *)data + off, n) < 0) {
            if (!st_xmlstream_error(c->x) || !st_xmlstream_error_text(c->x))
                abort();
            if (st_xmlstream_feed(c->x, "<a/>", 4) != -1)
                abort(); /* errors are sticky */
            break;
        }
        off += n;
        if (compact)
            st_xmlstream_compact(c->x); /* an idle connection's parser, rebuilt by the next feed */
    }
    st_xmlstream_free(c->x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    /* Small limits on some inputs so the fuzzer reaches them; the limits
     * stay below st_xml_parse_element's defaults, so the round trip holds. */
    st_xml_limits lim = { 0 };
    if (data[0] & 1) {
        lim.max_stanza_bytes = 64 + (size_t)data[0] * 8;
        lim.max_header_bytes = 32 + (size_t)data[0];
        lim.max_depth = 1 + (data[0] >> 4);
        lim.max_attrs = 1 + (data[0] >> 3);
    }
    size_t steps[4];
    for (int i = 0; i < 4; i++)
        steps[i] = (size_t)data[1 + i] + 1;
    data += 5;
    size -= 5;

    /* Chunked and in one piece must give the same events: batching in the
     * parser may delay an error, never a stanza. */
    fuzz_ctx chunked, whole, rested;
    run_stream(&chunked, &lim, steps, data, size, 0);
    run_stream(&whole, &lim, NULL, data, size, 0);
    if (chunked.log.len != whole.log.len ||
        (chunked.log.len && memcmp(chunked.log.data, whole.log.data, whole.log.len))) {
        fprintf(stderr, "chunked:\n%s\nwhole:\n%s\n", chunked.log.data, whole.log.data);
        abort();
    }
    /* Compacting between feeds whenever the stream is at rest changes no event. */
    run_stream(&rested, &lim, steps, data, size, 1);
    if (rested.log.len != whole.log.len ||
        (rested.log.len && memcmp(rested.log.data, whole.log.data, whole.log.len))) {
        fprintf(stderr, "compacted:\n%s\nwhole:\n%s\n", rested.log.data, whole.log.data);
        abort();
    }
    st_buf_free(&rested.log);
    st_buf_free(&chunked.log);
    st_buf_free(&whole.log);

    /* The same bytes as one standalone element (stored XML path). */
    st_stanza *s = st_xml_parse_element((const char *)data, size, NULL);
    if (s)
        check_round_trip(s);
    st_stanza_unref(s);
    return 0;
}
