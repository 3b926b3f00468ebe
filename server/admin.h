/* admin.h - the local admin socket that starlingctl talks to.
 *
 * A unix stream socket (mode 0600, in the data directory by default). One
 * request line per connection ("sessions", "kick JID", "status"); the answer
 * is zero or more text lines and a last line "ok" or "error MESSAGE". */
#ifndef STARLING_ADMIN_H
#define STARLING_ADMIN_H
#include <stddef.h>

struct st_server;
int st_admin_open(struct st_server *s, char *err, size_t errlen);
void st_admin_close(struct st_server *s);

#endif
