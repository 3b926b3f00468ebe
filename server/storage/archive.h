/* archive.h - the types of the message archive ops (XEP-0313) in st_store_ops.
 *
 * The archive is per user (host, username): rows in archive order, each with
 * its archive id (the XEP-0359 stanza-id the server gave the message), a
 * timestamp in microseconds, the other party (bare JID and resource apart,
 * so a 'with' filter can ask for either), the direction and the serialised
 * message. These types live in their own header so storage.h only grows by
 * the op entries at the end of st_store_ops.
 *
 * Ownership: st_mam_entry and st_mam_query only borrow their strings; an
 * st_mam_page owns its rows (free it with st_mam_page_free). */
#ifndef STARLING_STORAGE_ARCHIVE_H
#define STARLING_STORAGE_ARCHIVE_H
#include <limits.h>
#include <stddef.h>
#include "starling/alloc.h"

/* One message to archive (mam_append). */
typedef struct st_mam_entry {
    const char *host, *user; /* whose archive */
    const char *id;          /* archive id, unique within the user's archive */
    long long ts;            /* microseconds since the epoch */
    const char *with_bare;   /* the other party, bare JID (normalised) */
    const char *with_res;    /* its resource, "" if none */
    int outgoing;            /* 1: sent by the user, 0: received */
    const char *xml;         /* the message, serialised with its namespace declared */
    size_t len;
} st_mam_entry;

/* The result of one entry of a mam_append batch. */
enum { ST_MAM_STORED = 0, ST_MAM_DUPLICATE = 1, ST_MAM_NO_USER = 2, ST_MAM_FAILED = -1 };

/* A query (XEP-0313 §4 filters, XEP-0059 paging). Every member is optional:
 * NULL / 0 / the documented "none" value means no restriction. */
typedef struct st_mam_query {
    const char *with_bare;    /* NULL: any party */
    const char *with_res;     /* with with_bare: NULL any resource, else exactly this one */
    long long start, end;     /* inclusive, microseconds; LLONG_MIN / LLONG_MAX: none */
    const char *after_id;     /* form after-id / before-id: exclusive bounds */
    const char *before_id;
    const char *const *ids;   /* form ids: only these (nids of them) */
    size_t nids;
    /* RSM: after / before (before_set with before NULL or "": the last page)
     * / index (-1: none). max 0 asks for the count only. */
    const char *rsm_after;
    const char *rsm_before;
    int rsm_before_set;
    long long rsm_index;
    size_t max;
} st_mam_query;

typedef struct st_mam_row {
    char *id;
    long long ts;
    int outgoing;
    char *xml; /* NUL-terminated */
    size_t len;
} st_mam_row;

typedef struct st_mam_page {
    st_mam_row *rows; /* chronological order */
    size_t n;
    long long count;       /* rows matching the filters, paging aside */
    long long first_index; /* position of rows[0] among them, -1 if n == 0 */
    int complete;          /* no more rows in the paging direction */
} st_mam_page;

static inline void st_mam_page_free(st_mam_page *p)
{
    for (size_t i = 0; p && i < p->n; i++) {
        st_free(p->rows[i].id);
        st_free(p->rows[i].xml);
    }
    if (p) {
        st_free(p->rows);
        p->rows = NULL;
        p->n = 0;
    }
}

static inline void st_mam_query_init(st_mam_query *q)
{
    *q = (st_mam_query){.start = LLONG_MIN, .end = LLONG_MAX, .rsm_index = -1};
}

#endif
