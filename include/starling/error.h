/* error.h - protocol errors as data (RFC 6120 §4.9 stream errors, §8.3 stanza errors).
 *
 * Every error sent to a peer is built here from {condition, text}; the error
 * type (cancel/modify/auth/wait) comes from one table keyed by condition. */
#ifndef STARLING_ERROR_H
#define STARLING_ERROR_H
#include "starling/stanza.h"

/* The default RFC 6120 §8.3.3 type for a stanza error condition ("cancel", ...). */
const char *st_stanza_error_type(const char *condition);
/* Is this a defined RFC 6120 §4.9.3 stream error condition? */
int st_is_stream_condition(const char *condition);

/* Error reply to stanza orig: same name and id, to/from swapped, type='error',
 * with <error type=... by=...><condition/><text/></error>. text may be NULL.
 * The original payload is not echoed. NULL on OOM. */
st_stanza *st_error_reply(const st_stanza *orig, const char *condition, const char *text);

/* Append "<stream:error><condition xmlns=.../><text .../></stream:error>" to out. */
int st_stream_error_xml(st_buf *out, const char *condition, const char *text);

#endif
