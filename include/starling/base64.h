/* base64.h - RFC 4648 base64 (standard alphabet, with padding), strict decoder. */
#ifndef STARLING_BASE64_H
#define STARLING_BASE64_H
#include <stddef.h>
#include "starling/buf.h"

/* Append the encoding of n bytes to out. 0 or -1 (buffer limit / OOM). */
int st_base64_encode(const void *data, size_t n, st_buf *out);
/* Append the decoding to out. -1 on any invalid character, bad padding or
 * wrong length (SASL requires strict decoding, RFC 6120 §6.4.2). */
int st_base64_decode(const char *s, size_t n, st_buf *out);

#endif
