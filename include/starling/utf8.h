/* utf8.h - strict UTF-8 validation (RFC 3629): no overlong forms, no
 * surrogates, nothing above U+10FFFF, and no NUL. Used wherever peer text
 * reaches stringprep or SASL, which assume valid input. */
#ifndef STARLING_UTF8_H
#define STARLING_UTF8_H
#include <stddef.h>

/* 1 if s[0..n) is valid UTF-8 without NUL, else 0. */
int st_utf8_valid(const char *s, size_t n);

#endif
