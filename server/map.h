/* map.h - string-keyed hash map (chained, power-of-two buckets, grows at 3/4).
 *
 * Keys are borrowed: the caller keeps each key alive while its entry exists
 * (sessions key by their own full-JID string). Used for the session
 * registry (full JID -> session, bare JID -> user) and small per-module
 * tables. Not thread-safe: one map belongs to one loop. */
#ifndef STARLING_MAP_H
#define STARLING_MAP_H
#include <stddef.h>

typedef struct st_map_entry {
    const char *key;
    void *value;
    size_t hash;
    struct st_map_entry *next;
} st_map_entry;

typedef struct st_map {
    st_map_entry **buckets;
    size_t nbuckets, count;
} st_map;

void st_map_init(st_map *m);
void st_map_free(st_map *m); /* frees entries, not keys or values */
void *st_map_get(const st_map *m, const char *key);
int st_map_put(st_map *m, const char *key, void *value); /* replaces; 0 or -1 (OOM) */
void *st_map_del(st_map *m, const char *key);           /* returns the old value */
/* Iterate: fn returns nonzero to stop. Do not modify the map inside. */
void st_map_each(const st_map *m, int (*fn)(void *ud, const char *key, void *value), void *ud);

#endif
