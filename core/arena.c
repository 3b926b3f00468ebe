/* arena.c - region allocator: one per stanza (and other short lifetimes).
 *
 * Design: a singly linked list of blocks, newest first. Allocation bumps a
 * pointer in the newest block; when it does not fit, a new block of twice the
 * previous size (or exactly the request, if larger) is pushed. Nothing is
 * freed until st_arena_free, which walks the list once. The arena header lives
 * inside the first block, so a small stanza costs one malloc. */
#include <stdint.h>
#include <string.h>
#include "starling/alloc.h"
#include "starling/arena.h"

#define ARENA_DEFAULT_BLOCK 1024
#define ARENA_MAX_BLOCK (1u << 20)  /* doubling stops here; larger requests get their own block */
#define ALIGN_UP(n) (((n) + 7u) & ~(size_t)7u)

typedef struct arena_block {
    struct arena_block *next;
    size_t size; /* usable bytes after the header */
    size_t used;
} arena_block;

struct st_arena {
    arena_block *head;
    size_t bytes;      /* everything malloc'ed, headers included */
    size_t next_size;  /* usable size for the next block */
};

#define BLOCK_HDR ALIGN_UP(sizeof(arena_block))
#define ARENA_HDR ALIGN_UP(sizeof(struct st_arena))

static unsigned char *block_mem(arena_block *b)
{
    return (unsigned char *)b + BLOCK_HDR;
}

st_arena *st_arena_new(size_t first_block)
{
    size_t size = ALIGN_UP(first_block ? first_block : ARENA_DEFAULT_BLOCK);
    if (size < ARENA_HDR + 64)
        size = ARENA_HDR + 64;
    arena_block *b = st_malloc(BLOCK_HDR + size);
    if (!b)
        return NULL;
    b->next = NULL;
    b->size = size;
    /* The arena header is the first allocation in its own first block. */
    st_arena *a = (st_arena *)block_mem(b);
    b->used = ARENA_HDR;
    a->head = b;
    a->bytes = BLOCK_HDR + size;
    a->next_size = size * 2 > ARENA_MAX_BLOCK ? ARENA_MAX_BLOCK : size * 2;
    return a;
}

void *st_arena_alloc(st_arena *a, size_t n)
{
    if (n > SIZE_MAX / 2)
        return NULL;
    n = ALIGN_UP(n ? n : 1);
    arena_block *b = a->head;
    if (b->size - b->used < n) {
        size_t size = a->next_size > n ? a->next_size : n;
        arena_block *nb = st_malloc(BLOCK_HDR + size);
        if (!nb)
            return NULL;
        nb->size = size;
        nb->used = 0;
        if (n > a->next_size && b->size - b->used > 256) {
            /* A one-off big block: keep bumping in the current block, which
             * still has useful room, by putting the big one behind it. */
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = b;
            a->head = nb;
            if (a->next_size < ARENA_MAX_BLOCK)
                a->next_size *= 2;
        }
        a->bytes += BLOCK_HDR + size;
        b = nb;
    }
    void *p = block_mem(b) + b->used;
    b->used += n;
    return p;
}

char *st_arena_strndup(st_arena *a, const char *s, size_t n)
{
    char *d = st_arena_alloc(a, n + 1);
    if (!d)
        return NULL;
    if (n)
        memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *st_arena_strdup(st_arena *a, const char *s)
{
    return st_arena_strndup(a, s, strlen(s));
}

size_t st_arena_bytes(const st_arena *a)
{
    return a->bytes;
}

void st_arena_free(st_arena *a)
{
    if (!a)
        return;
    /* The header sits in the oldest block (the tail), so read the list first. */
    arena_block *b = a->head;
    while (b) {
        arena_block *next = b->next;
        st_free(b);
        b = next;
    }
}
