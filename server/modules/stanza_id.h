/* stanza_id.h - XEP-0359 stanza ids the server mints for its users, shared
 * by mod_mam (the archive id) and mod_offline (the id of a stored message),
 * so one message has one id in the live copy, the offline copy and the
 * archive.
 *
 * An id is 12 random bytes and a truncated HMAC-SHA256, under a key drawn
 * once per process, over (by, peer, random), in hex. That lets the server
 * recognise, without storage and without memory, a <stanza-id by='user'/>
 * it minted itself: a message that stream management routes again after
 * its session ended (sm.c) still carries it, keeps it, and is not archived
 * a second time. Any other <stanza-id/> claiming to be by our user is
 * forged (XEP-0359 §5) and removed. peer is the other party's bare JID
 * (the stanza's 'from' for a received message, its 'to' for a sent one),
 * so an id a peer learned cannot be replayed on someone else's message.
 * The key does not survive a restart, and neither do the sessions whose
 * messages could come back. */
#ifndef STARLING_STANZA_ID_H
#define STARLING_STANZA_ID_H
#include "starling/stanza.h"

#define ST_NS_SID "urn:xmpp:sid:0"
#define ST_SID_MAX 48 /* room for an id we mint, with its NUL */

/* Remove from st (which must not be shared) every top-level <stanza-id/>
 * whose 'by' is the bare JID by, except the first one we minted for this
 * pair; copy that one's id to out (ST_SID_MAX) and return 1, else 0.
 * outgoing: st was sent by 'by' (peer = 'to'), else received (peer = 'from'). */
int st_sid_clean(st_stanza *st, const char *by, int outgoing, char *out);
/* Mint an id for (by, st's peer) into out (ST_SID_MAX). 0 or -1. */
int st_sid_make(const st_stanza *st, const char *by, int outgoing, char *out);
/* Append <stanza-id xmlns='urn:xmpp:sid:0' id by/> to st. 0 or -1 (OOM). */
int st_sid_attach(st_stanza *st, const char *by, const char *id);

#endif
