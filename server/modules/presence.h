/* presence.h - what other modules use of mod_presence (RFC 6121 §3-4). */
#ifndef STARLING_PRESENCE_H
#define STARLING_PRESENCE_H
#include "server/server.h"

/* Send a subscription stanza (subscribe, subscribed, unsubscribe,
 * unsubscribed) from user u to contact (bare JID), with the full outbound
 * processing on u's roster, as if u's client had sent it. */
void st_presence_send_subscription(st_user *u, const char *contact, const char *type);

#endif
