/* arena.h - region allocator: one per stanza (and per other short lifetimes).
 *
 * Allocations are never freed one by one; the whole region goes at once.
 * A parsed stanza lives in exactly one arena, so freeing it is one walk over
 * a handful of blocks, and its memory cost is easy to account for. */
#ifndef STARLING_ARENA_H
#define STARLING_ARENA_H
#include <stddef.h>

typedef struct st_arena st_arena;

st_arena *st_arena_new(size_t first_block); /* 0 = default size; NULL on OOM */
void *st_arena_alloc(st_arena *a, size_t n); /* 8-byte aligned; NULL on OOM */
char *st_arena_strndup(st_arena *a, const char *s, size_t n); /* NUL-terminates */
char *st_arena_strdup(st_arena *a, const char *s);
size_t st_arena_bytes(const st_arena *a); /* bytes held, including headers */
void st_arena_free(st_arena *a);

#endif
