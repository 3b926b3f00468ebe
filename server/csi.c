/* csi.c - XEP-0352 client state indication; see csi.h. */
#include <string.h>
#include "server/csi.h"
#include "starling/alloc.h"

#define MAX_HELD 2000 /* beyond this an inactive client just gets its traffic */

typedef struct held {
    st_stanza *st;
    char *to;
} held;

typedef struct csi_state {
    int inactive;
    held *items;
    size_t n, cap;
} csi_state;

static csi_state *state(st_session *sess, int create)
{
    csi_state *c = sess->mod_data[ST_SLOT_CSI];
    if (!c && create) {
        c = st_calloc(1, sizeof *c);
        sess->mod_data[ST_SLOT_CSI] = c;
    }
    return c;
}

int st_csi_urgent(const st_stanza *st)
{
    const char *name = st_name(st);
    const char *type = st_get(st, "type");
    if (strcmp(name, "iq") == 0) return 1;
    if (type && strcmp(type, "error") == 0) return 1;
    if (strcmp(name, "message") == 0) return st_child(st->root, "body", NULL) != NULL;
    return 0; /* presence */
}

int st_csi_hold(st_session *sess, st_stanza *st, const char *to)
{
    csi_state *c = state(sess, 0);
    if (!c || !c->inactive) return -1;
    if (c->n >= MAX_HELD) return -1;
    if (strcmp(st_name(st), "presence") == 0) {
        /* a newer presence from the same sender replaces the held one */
        const char *from = st_get(st, "from");
        for (size_t i = 0; from && i < c->n; i++) {
            const char *f = st_get(c->items[i].st, "from");
            if (f && strcmp(f, from) == 0 && strcmp(st_name(c->items[i].st), "presence") == 0) {
                const char *t = st_get(st, "type");
                const char *ot = st_get(c->items[i].st, "type");
                /* subscription requests are not presence updates: keep them */
                int sub = (t && strncmp(t, "sub", 3) == 0) || (t && strncmp(t, "unsub", 5) == 0);
                int osub = (ot && strncmp(ot, "sub", 3) == 0) || (ot && strncmp(ot, "unsub", 5) == 0);
                if (sub || osub) continue;
                st_stanza_unref(c->items[i].st);
                st_free(c->items[i].to);
                memmove(&c->items[i], &c->items[i + 1], (c->n - i - 1) * sizeof *c->items);
                c->n--;
                break;
            }
        }
    }
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 16;
        held *ni = st_realloc(c->items, ncap * sizeof *ni);
        if (!ni) return -1;
        c->items = ni;
        c->cap = ncap;
    }
    char *tcopy = NULL;
    if (to && !(tcopy = st_strdup(to))) return -1;
    c->items[c->n].st = st_stanza_ref(st);
    c->items[c->n].to = tcopy;
    c->n++;
    return 0;
}

void st_csi_flush(st_session *sess)
{
    csi_state *c = state(sess, 0);
    if (!c || !c->n) return;
    held *items = c->items;
    size_t n = c->n;
    c->items = NULL;
    c->n = c->cap = 0;
    int was = c->inactive;
    c->inactive = 0; /* so the sends below go out */
    for (size_t i = 0; i < n; i++) {
        if (items[i].to) st_session_send_to(sess, items[i].st, items[i].to);
        else st_session_send(sess, items[i].st);
        st_stanza_unref(items[i].st);
        st_free(items[i].to);
    }
    st_free(items);
    c = state(sess, 0); /* a send may not free the session (kills are deferred) */
    if (c) c->inactive = was;
}

void st_csi_set_active(st_session *sess, int active)
{
    csi_state *c = state(sess, !active);
    if (!c) return;
    if (active) {
        c->inactive = 0;
        st_csi_flush(sess);
    } else {
        c->inactive = 1;
    }
}

void st_csi_free(st_session *sess)
{
    csi_state *c = state(sess, 0);
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) {
        st_stanza_unref(c->items[i].st);
        st_free(c->items[i].to);
    }
    st_free(c->items);
    st_free(c);
    sess->mod_data[ST_SLOT_CSI] = NULL;
}
