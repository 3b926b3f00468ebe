/* buf.c - growable byte buffer with a hard maximum (like curl's dynbuf).
 *
 * Growth doubles the capacity but never beyond max + 1 (for the terminator),
 * so a buffer near its limit does not reserve memory it may never use. A
 * failed append leaves the buffer exactly as it was. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "starling/alloc.h"
#include "starling/buf.h"

#define BUF_MIN_CAP 64

void st_buf_init(st_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max; /* 0 = unlimited, see buf_max() */
}

static size_t buf_max(const st_buf *b)
{
    /* A zero-initialised st_buf (never st_buf_init'ed) is unlimited too. */
    return b->max ? b->max : SIZE_MAX - 1;
}

/* Make room for len + extra bytes plus the terminator. */
static int buf_reserve(st_buf *b, size_t extra)
{
    size_t max = buf_max(b);
    if (extra > max - b->len)
        return -1;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : BUF_MIN_CAP;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > max + 1)
        cap = max + 1;
    char *p = st_realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int st_buf_append(st_buf *b, const void *p, size_t n)
{
    /* Fits already (the serializer appends many short pieces): cap never
     * exceeds max + 1, so this also keeps the limit. */
    if (n < b->cap - b->len) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
        return 0;
    }
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int st_buf_appends(st_buf *b, const char *s)
{
    return st_buf_append(b, s, strlen(s));
}

int st_buf_vprintf(st_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0 || buf_reserve(b, (size_t)n) < 0)
        return -1;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int st_buf_printf(st_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = st_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

static const char *escape_of(char c)
{
    switch (c) {
    case '&': return "&amp;";
    case '<': return "&lt;";
    case '>': return "&gt;";
    case '"': return "&quot;";
    case '\'': return "&apos;";
    default: return NULL;
    }
}

int st_buf_append_escaped(st_buf *b, const char *s, size_t n)
{
    /* Size the result first so that a failure leaves b unchanged. */
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = escape_of(s[i]);
        out += e ? strlen(e) : 1;
    }
    if (buf_reserve(b, out) < 0)
        return -1;
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = escape_of(s[i]);
        if (!e)
            continue;
        memcpy(b->data + b->len, s + start, i - start);
        b->len += i - start;
        size_t el = strlen(e);
        memcpy(b->data + b->len, e, el);
        b->len += el;
        start = i + 1;
    }
    memcpy(b->data + b->len, s + start, n - start);
    b->len += n - start;
    if (b->data)
        b->data[b->len] = '\0';
    return 0;
}

void st_buf_consume(st_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void st_buf_reset(st_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void st_buf_free(st_buf *b)
{
    st_free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

char *st_buf_steal(st_buf *b, size_t *len)
{
    char *d = b->data;
    if (len)
        *len = b->len;
    if (!d)
        d = st_strdup("");  /* the caller always gets a string (NULL only on OOM) */
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return d;
}
