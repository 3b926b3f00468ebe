/* csi.h - XEP-0352 client state indication: a quiet radio for idle phones.
 *
 * While a client says it is inactive, non-urgent traffic for it is held
 * instead of sent: presence updates (merged, so each contact's latest one
 * is kept, at most one per contact), and messages without a body (chat
 * states, receipts, PEP events). An urgent stanza — a message with a body,
 * or any iq — flushes what was held, in order, then goes out; so does
 * <active/>. Held stanzas have not been sent, so stream management counts
 * them only when they really leave. */
#ifndef STARLING_CSI_H
#define STARLING_CSI_H
#include "server/server.h"

#define ST_NS_CSI "urn:xmpp:csi:0"

/* 1 if st must not wait (message with a body, iq, error). */
int st_csi_urgent(const st_stanza *st);
/* Hold st for an inactive session (merging presence). 0, or -1 if it
 * could not be held (send it now instead). */
int st_csi_hold(st_session *sess, st_stanza *st, const char *to);
/* Send everything held (after <active/>, or before an urgent stanza). */
void st_csi_flush(st_session *sess);
void st_csi_set_active(st_session *sess, int active);
void st_csi_free(st_session *sess);

#endif
