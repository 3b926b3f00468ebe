/* map.c - string-keyed chained hash map; see map.h. FNV-1a hashing. */
#include <string.h>
#include "server/map.h"
#include "starling/alloc.h"

static size_t hash_str(const char *s)
{
    size_t h = (size_t)1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= (size_t)1099511628211ULL;
    }
    return h;
}

void st_map_init(st_map *m)
{
    memset(m, 0, sizeof *m);
}

void st_map_free(st_map *m)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        st_map_entry *e = m->buckets[i];
        while (e) {
            st_map_entry *n = e->next;
            st_free(e);
            e = n;
        }
    }
    st_free(m->buckets);
    st_map_init(m);
}

static st_map_entry **find(const st_map *m, const char *key, size_t h)
{
    if (!m->nbuckets) return NULL;
    st_map_entry **pp = &m->buckets[h & (m->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0) return pp;
    return pp;
}

void *st_map_get(const st_map *m, const char *key)
{
    st_map_entry **pp = find(m, key, hash_str(key));
    return pp && *pp ? (*pp)->value : NULL;
}

static int grow(st_map *m)
{
    size_t n = m->nbuckets ? m->nbuckets * 2 : 16;
    st_map_entry **b = st_calloc(n, sizeof *b);
    if (!b) return -1;
    for (size_t i = 0; i < m->nbuckets; i++) {
        st_map_entry *e = m->buckets[i];
        while (e) {
            st_map_entry *next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    st_free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
    return 0;
}

int st_map_put(st_map *m, const char *key, void *value)
{
    size_t h = hash_str(key);
    if ((m->count + 1) * 4 > m->nbuckets * 3 && grow(m) != 0) return -1;
    st_map_entry **pp = find(m, key, h);
    if (*pp) {
        (*pp)->value = value;
        (*pp)->key = key;
        return 0;
    }
    st_map_entry *e = st_malloc(sizeof *e);
    if (!e) return -1;
    e->key = key;
    e->value = value;
    e->hash = h;
    e->next = NULL;
    *pp = e;
    m->count++;
    return 0;
}

void *st_map_del(st_map *m, const char *key)
{
    st_map_entry **pp = find(m, key, hash_str(key));
    if (!pp || !*pp) return NULL;
    st_map_entry *e = *pp;
    void *v = e->value;
    *pp = e->next;
    st_free(e);
    m->count--;
    return v;
}

void st_map_each(const st_map *m, int (*fn)(void *, const char *, void *), void *ud)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (st_map_entry *e = m->buckets[i]; e; e = e->next)
            if (fn(ud, e->key, e->value)) return;
}
