/* fuzz_xmlstream.c - libFuzzer target for the XMPP stream parser and serializer.
 *
 * Input layout: byte 0 picks the limits, bytes 1..4 are a cycle of chunk
 * sizes (1..256), the rest is the stream. Every stanza that comes out is
 * serialised standalone and parsed again; it must parse, and serialise to
 * the same bytes (abort() otherwise: the round-trip property). <success/>
 * and <proceed/> restart the stream, <stop/> stops it, so those paths are
 * reached from the corpus. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "starling/alloc.h"
#include "starling/xmlstream.h"

typedef struct fuzz_ctx {
    st_xmlstream *x;
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
    (void)st_attr_get(header, "to");
}

static void on_stanza(void *ud, st_stanza *s)
{
    fuzz_ctx *c = ud;
    check_round_trip(s);
    size_t len;
    if (!st_stanza_wire(s, &len))
        abort();
    const char *name = st_name(s);
    if (strcmp(name, "success") == 0 || strcmp(name, "proceed") == 0)
        st_xmlstream_restart(c->x);
    else if (strcmp(name, "stop") == 0)
        st_xmlstream_stop(c->x);
    st_stanza_unref(s);
}

static void on_close(void *ud)
{
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

    fuzz_ctx c;
    st_xml_handlers h = { on_open, on_stanza, on_close };
    c.x = st_xmlstream_new(&lim, &h, &c);
    if (!c.x)
        return 0;
    size_t off = 0;
    for (int i = 0; off < size; i = (i + 1) & 3) {
        size_t n = size - off < steps[i] ? size - off : steps[i];
        if (st_xmlstream_feed(c.x, (const char *)data + off, n) < 0) {
            if (!st_xmlstream_error(c.x) || !st_xmlstream_error_text(c.x))
                abort();
            if (st_xmlstream_feed(c.x, "<a/>", 4) != -1)
                abort(); /* errors are sticky */
            break;
        }
        off += n;
    }
    st_xmlstream_free(c.x);

    /* The same bytes as one standalone element (stored XML path). */
    st_stanza *s = st_xml_parse_element((const char *)data, size, NULL);
    if (s)
        check_round_trip(s);
    st_stanza_unref(s);
    return 0;
}
