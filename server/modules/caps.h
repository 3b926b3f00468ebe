/* caps.h - what other modules use of mod_caps (XEP-0115 Entity Capabilities).
 *
 * mod_caps learns which features each client session supports from the
 * <c/> element of its available presence (a cached, verified disco#info
 * answer, or a fresh disco#info query to the client). PEP uses this to send
 * notifications only to resources that asked for NODE+notify. */
#ifndef STARLING_CAPS_H
#define STARLING_CAPS_H
#include <stddef.h>
#include "server/server.h"

#define ST_NS_CAPS "http://jabber.org/protocol/caps"

/* 1 if the session's client announced feature, 0 if not or still unknown. */
int st_caps_has(const st_session *s, const char *feature);
/* 1 once the session's feature set is known. */
int st_caps_known(const st_session *s);

/* fn(s) runs whenever the feature set of a session becomes known or
 * changes (a presence with a new ver). Listeners are process-wide and
 * registered at most once each; up to 8. 0 or -1. */
int st_caps_listen(void (*fn)(st_session *s));

/* The XEP-0115 §5.1 verification string of a disco#info <query/> element,
 * hashed with SHA-1 and base64-encoded into out (28 bytes + NUL). Fails
 * (-1) on what §5.4 calls invalid: duplicate identities or features,
 * several forms with one FORM_TYPE, or absurd sizes. */
int st_caps_ver(const st_node *query, char *out, size_t outsz);

#endif
