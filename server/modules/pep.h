/* pep.h - what other modules use of mod_pep (XEP-0163 Personal Eventing).
 *
 * Modules that convert between PEP and older storage (XEP-0398 avatars to
 * vCard, XEP-0402 bookmarks to XEP-0048 private XML) listen for changes of
 * one node name and can publish or retract as the account owner. All of it
 * runs on the loop thread. */
#ifndef STARLING_PEP_H
#define STARLING_PEP_H
#include "server/server.h"

#define ST_NS_PUBSUB "http://jabber.org/protocol/pubsub"
#define ST_NS_PUBSUB_EVENT "http://jabber.org/protocol/pubsub#event"

enum { ST_PEP_PRESENCE = 0, ST_PEP_OPEN = 1, ST_PEP_WHITELIST = 2 };

/* Node configuration (the basics of XEP-0060 §16.4.4 pubsub#node_config). */
typedef struct st_pep_config {
    int access;          /* ST_PEP_* */
    long long max_items; /* -1 = "max" (the pep.max_items option) */
    int persist;         /* persist_items */
} st_pep_config;

/* A node of owner_bare changed: item published (payload is the item's
 * payload element, borrowed, id its id), item retracted (payload NULL, id
 * set), or node purged or deleted (payload and id NULL). */
typedef void (*st_pep_fn)(st_host *h, const char *owner_bare, const char *node, const char *id,
                          const st_node *payload);
/* Listeners are process-wide, registered once each (up to 16). 0 or -1. */
int st_pep_listen(const char *node, st_pep_fn fn);

/* Publish payload (copied) as item id on node of the local account
 * owner_node@h, creating the node with cfg (or the defaults, cfg NULL) if
 * it does not exist. Notifications go out as for a client's publish. The
 * work happens once the account's PEP service is loaded. 0 or -1 (OOM). */
int st_pep_publish(st_host *h, const char *owner_node, const char *node, const char *id,
                   const st_node *payload, const st_pep_config *cfg);
int st_pep_retract(st_host *h, const char *owner_node, const char *node, const char *id);

/* Items of a node of a loaded PEP service, oldest first, without waiting:
 * fn(ud, id, payload) for each (borrowed). 1 if the service is in memory
 * and has the node, 0 if not. */
int st_pep_peek(st_host *h, const char *owner_bare, const char *node,
                void (*fn)(void *ud, const char *id, const st_node *payload), void *ud);

/* Run fn(ud, h, owner_bare) once the PEP service of owner_node@h is loaded
 * (at once if it is); the account's roster is loaded too. If loading fails
 * fn still runs, with h and owner_bare NULL, so it can free ud. 0 or -1
 * (fn never runs). */
int st_pep_with(st_host *h, const char *owner_node,
                void (*fn)(void *ud, st_host *h, const char *owner_bare), void *ud);

#endif
