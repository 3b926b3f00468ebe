/* alloc.c - the one allocator every core allocation goes through.
 *
 * The hooks are the only mutable global in the core: tests swap them to count
 * allocations and fail the Nth one (curl torture mode, SQLite OOM tests). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "starling/alloc.h"

static st_alloc_hooks hooks = { malloc, realloc, free };

void st_set_alloc_hooks(const st_alloc_hooks *h)
{
    if (h) {
        hooks = *h;
    } else {
        hooks.malloc_fn = malloc;
        hooks.realloc_fn = realloc;
        hooks.free_fn = free;
    }
}

void *st_malloc(size_t n)
{
    /* malloc(0) may return NULL or a unique pointer; make it always a pointer. */
    return hooks.malloc_fn(n ? n : 1);
}

void *st_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = st_malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void *st_realloc(void *p, size_t n)
{
    return hooks.realloc_fn(p, n ? n : 1);
}

void st_free(void *p)
{
    if (p)
        hooks.free_fn(p);
}

/* Like strndup: copies at most n bytes, stopping early at a NUL. */
char *st_strndup(const char *s, size_t n)
{
    n = strnlen(s, n);
    char *d = st_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *st_strdup(const char *s)
{
    return st_strndup(s, strlen(s));
}
