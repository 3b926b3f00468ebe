/* roster.h - rosters in memory, written through to storage (RFC 6121 §2).
 *
 * A user's roster is loaded once (asynchronously) when something first
 * needs it and stays in memory while the user object lives (while it has
 * sessions, or while an operation holds it). All reads come from memory;
 * every change bumps the roster version, is queued to the storage thread,
 * and is pushed to the user's interested resources. Because every change
 * for a user goes through this one cache on the one loop, and the storage
 * thread runs jobs in order, the stored version always equals the cached
 * one. */
#ifndef STARLING_ROSTER_H
#define STARLING_ROSTER_H
#include "server/server.h"

typedef struct st_roster {
    st_map items;      /* contact bare JID -> st_roster_item* (owned; key is item->jid) */
    long long version; /* current roster version */
    size_t nvisible;   /* visible items (in_roster && !removed) */
    int exists;        /* the account exists in storage */
} st_roster;

/* Called when u->roster is ready; u->roster is NULL if loading failed. */
typedef void (*st_roster_fn)(st_user *u, void *ud);

/* Run fn(u, ud) as soon as u's roster is loaded: at once if it is, else
 * after the load. u is held meanwhile. 0, or -1 (OOM: fn never runs). */
int st_roster_with(st_user *u, st_roster_fn fn, void *ud);
void st_roster_free(st_roster *r);

static inline int st_roster_visible(const st_roster_item *it)
{
    return it->in_roster && !it->removed;
}

/* The row for a contact (any state, tombstones included), or NULL. */
st_roster_item *st_roster_find(st_user *u, const char *jid);
/* Store a copy of *it as the contact's row: version bump, write-through,
 * and a roster push to interested resources when the visible roster
 * changes. 0, 1 if a new visible item would exceed max_items, -1 on OOM. */
int st_roster_store(st_user *u, const st_roster_item *it, size_t max_items);
/* Iterate over rows; fn returns nonzero to stop. */
void st_roster_each(st_user *u, int (*fn)(void *ud, st_roster_item *it), void *ud);

/* Append <item/> for it at the stanza's cursor (subscription='remove' for
 * rows that are not visible). */
void st_roster_item_xml(st_stanza *s, const st_roster_item *it);

#define ST_NS_ROSTER "jabber:iq:roster"
/* Rows of all kinds one roster may hold, whatever roster.max_items says. */
#define ST_ROSTER_HARD_MAX 100000

#endif
