/* private.h - what other modules use of mod_private (XEP-0049): read and
 * write one entry of a user's private XML storage, e.g. the XEP-0048
 * bookmarks (<storage xmlns='storage:bookmarks'/>) that a PEP module keeps
 * in step with its node.
 *
 * An entry is one element, keyed by its name and namespace. Both calls run
 * on the storage thread and call back on the loop; neither checks whether
 * the account exists, or whether the namespace is one a client may use (the
 * IQ handler refuses jabber:client, jabber:server and jabber:iq:private; a
 * module may store what it likes). */
#ifndef STARLING_PRIVATE_H
#define STARLING_PRIVATE_H
#include "server/server.h"

/* rc: 1 found (elem is the stored element, borrowed for the call), 0 no
 * entry (elem NULL), -1 storage error or a stored value that does not parse. */
typedef void (*st_private_get_fn)(void *ud, int rc, st_stanza *elem);
/* rc: 0 stored, 1 refused (the user's private storage would exceed
 * private.max_bytes), -1 storage error. */
typedef void (*st_private_put_fn)(void *ud, int rc);

/* Read the entry {ns}name of node@host. 0, or -1 (OOM; fn never runs). */
int st_private_get(st_server *s, const char *host, const char *node, const char *name,
                   const char *ns, st_private_get_fn fn, void *ud);
/* Store elem (serialised now; the caller keeps elem) as the entry for its
 * name and namespace, replacing any. fn may be NULL. 0, or -1 (OOM, or elem
 * too large to serialise; fn never runs). The size limit is the host's
 * private.max_bytes when the module is enabled there, else its default. */
int st_private_put(st_server *s, const char *host, const char *node, const st_node *elem,
                   st_private_put_fn fn, void *ud);

#endif
