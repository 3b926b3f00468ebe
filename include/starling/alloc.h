/* alloc.h - the one allocator every core allocation goes through.
 *
 * Routing core allocations through st_malloc/st_realloc/st_free lets the test
 * run break the allocator on purpose (count allocations, then fail each one in
 * turn) without LD_PRELOAD tricks. Default hooks are malloc/realloc/free. */
#ifndef STARLING_ALLOC_H
#define STARLING_ALLOC_H
#include <stddef.h>

void *st_malloc(size_t n);
void *st_calloc(size_t n, size_t size);
void *st_realloc(void *p, size_t n);
void st_free(void *p);
char *st_strdup(const char *s);          /* NULL on OOM; caller frees */
char *st_strndup(const char *s, size_t n);

typedef struct st_alloc_hooks {
    void *(*malloc_fn)(size_t);
    void *(*realloc_fn)(void *, size_t);
    void (*free_fn)(void *);
} st_alloc_hooks;

/* Replace the hooks (NULL restores the defaults). Not thread-safe; call before use. */
void st_set_alloc_hooks(const st_alloc_hooks *hooks);

#endif
