/* buf.h - growable byte buffer with a hard maximum (like curl's dynbuf).
 *
 * Every buffer in Starling has a maximum: network input, output queues and
 * serialisation all use st_buf so that no peer can make us grow without bound.
 * The data is always NUL-terminated (the terminator is not counted in len). */
#ifndef STARLING_BUF_H
#define STARLING_BUF_H
#include <stddef.h>
#include <stdarg.h>

typedef struct st_buf {
    char *data;   /* owned; NULL until first append */
    size_t len;   /* bytes in use */
    size_t cap;   /* bytes allocated */
    size_t max;   /* hard limit on len; 0 = SIZE_MAX */
} st_buf;

void st_buf_init(st_buf *b, size_t max);
/* Append n bytes. Returns 0, or -1 if the result would exceed max or on OOM
 * (the buffer is left unchanged). */
int st_buf_append(st_buf *b, const void *p, size_t n);
int st_buf_appends(st_buf *b, const char *s);
int st_buf_printf(st_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int st_buf_vprintf(st_buf *b, const char *fmt, va_list ap);
/* Append s with the five XML special characters escaped (&<>"'). */
int st_buf_append_escaped(st_buf *b, const char *s, size_t n);
/* Drop n bytes from the front. */
void st_buf_consume(st_buf *b, size_t n);
void st_buf_reset(st_buf *b);  /* len = 0, keeps memory */
void st_buf_free(st_buf *b);   /* frees memory, keeps max */
/* Take ownership of the data (caller frees with st_free); buffer is emptied. */
char *st_buf_steal(st_buf *b, size_t *len);

#endif
