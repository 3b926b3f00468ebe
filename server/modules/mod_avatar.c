/* mod_avatar.c - XEP-0398 User Avatar to vCard-Based Avatars Conversion.
 *
 * Clients of XEP-0084 publish their avatar on PEP (urn:xmpp:avatar:data and
 * :metadata); clients of XEP-0153 read a hash in presence and the picture
 * from the vCard. This module bridges the two for the account owner:
 *
 *  - every available presence of the owner gets
 *    <x xmlns='vcard-temp:x:update'><photo>ID</photo></x>, ID being the
 *    current metadata item (the SHA-1 of the image, XEP-0084 §4.2), or an
 *    empty <photo/> when the metadata says there is no avatar;
 *  - when new metadata is published, the vCard (mod_vcard's kv store
 *    "vcard", key "vcard": the serialised <vCard/>) gets a PHOTO with the
 *    TYPE from the metadata and the BINVAL from the data item, and each
 *    available resource's presence is sent again, as if the client had sent
 *    it, so contacts see the new hash at once.
 *
 * Only the PEP-to-vCard direction is done; a vCard PHOTO set by an old
 * client is not published to PEP (TODO). The hash is taken from the PEP
 * service in memory, which mod_pep loads when a session binds: a first
 * presence sent before that load finishes goes out without the hash. */
#include <stdio.h>
#include <string.h>
#include "server/log.h"
#include "server/modules/pep.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/xmlstream.h"

#define NS_META "urn:xmpp:avatar:metadata"
#define NS_DATA "urn:xmpp:avatar:data"
#define NS_UPDATE "vcard-temp:x:update"
#define NS_VCARD "vcard-temp"
#define VCARD_CAP (32u * 1024 * 1024)

extern const st_module mod_avatar;

/* ---- what the metadata says ---- */

typedef struct meta {
    int found;
    char id[128];   /* "" = no avatar */
    char type[128]; /* MIME type of the image */
} meta;

static void read_meta(meta *m, const st_node *payload)
{
    m->found = 1;
    m->id[0] = m->type[0] = 0;
    for (st_node *i = st_first_elem(payload); i; i = st_next_elem(i)) {
        const char *id = st_attr_get(i, "id");
        if (strcmp(i->name, "info") || strcmp(i->ns, NS_META) || !id) continue;
        /* the first <info/> served from PEP itself (no url) is the one a
         * vCard can carry */
        if (st_attr_get(i, "url")) continue;
        snprintf(m->id, sizeof m->id, "%s", id);
        const char *t = st_attr_get(i, "type");
        snprintf(m->type, sizeof m->type, "%s", t ? t : "image/png");
        return;
    }
}

static void last_meta(void *ud, const char *id, const st_node *payload)
{
    read_meta(ud, payload); /* called oldest first: the last one wins */
}

/* The owner's current avatar, if the PEP service is in memory. */
static int current(st_host *h, const char *bare, meta *m)
{
    memset(m, 0, sizeof *m);
    return st_pep_peek(h, bare, NS_META, last_meta, m) && m->found;
}

/* ---- presence (XEP-0153 §4.1, XEP-0398 §4) ---- */

static st_verdict presence_out(st_session *s, st_stanza *st, const st_jid *to)
{
    meta m;
    if (to || st_get(st, "type") || st->refs != 1) return ST_PASS;
    if (!current(s->host, s->bare, &m)) return ST_PASS;
    /* ours replaces whatever the client said */
    st_node *x;
    while ((x = st_child(st->root, "x", NS_UPDATE)))
        st_node_remove(st, x);
    st_top(st);
    st_tag(st, "x", NS_UPDATE);
    st_tag(st, "photo", NULL);
    if (*m.id) st_text(st, m.id);
    st_up(st);
    st_up(st);
    st_top(st);
    st_stanza_touch(st);
    return ST_PASS;
}

/* Send each available resource's presence again, through the hooks. */
static void rebroadcast(st_server *srv, const char *bare)
{
    st_user *u = st_user_find(srv, bare);
    char *fulls[64];
    size_t n = 0;
    for (st_session *x = u ? u->sessions : NULL; x && n < 64; x = x->next_of_user)
        if (x->available && x->presence && (fulls[n] = st_strdup(x->full))) n++;
    for (size_t i = 0; i < n; i++) {
        /* look each up again: sending may have ended a session */
        st_session *x = st_session_find(srv, fulls[i]);
        st_stanza *p = x && x->presence ? st_stanza_copy(x->presence) : NULL;
        if (p) st_router_from_client(x, p);
        st_stanza_unref(p);
        st_free(fulls[i]);
    }
}

/* ---- the vCard PHOTO (XEP-0398 §3) ---- */

typedef struct vc_job {
    st_server *srv;
    char host[1024];
    char node[1024];
    char type[128];
    char *binval; /* NULL: remove the PHOTO */
    int rc;
} vc_job;

/* On the storage thread: read the vCard, swap its PHOTO, write it back. */
static void vc_work(void *h, void *arg)
{
    vc_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    char *val = NULL;
    size_t len = 0;
    st_stanza *old = NULL, *v = NULL;
    st_buf b;
    st_buf_init(&b, VCARD_CAP);
    j->rc = -1;
    int r = ops->kv_get(h, j->host, j->node, "vcard", "vcard", &val, &len);
    if (r < 0) goto out;
    const char *err = NULL;
    if (r == 1 && !(old = st_xml_parse_element(val, len, &err))) goto out;
    if (!(v = st_stanza_new("vCard", NS_VCARD))) goto out;
    for (st_node *c = old ? old->root->children : NULL; c; c = c->next)
        if (c->is_text || strcmp(c->name, "PHOTO") || strcmp(c->ns, NS_VCARD)) st_add_copy(v, c);
    if (j->binval) {
        st_tag(v, "PHOTO", NULL);
        st_text_tag(v, "TYPE", j->type);
        st_text_tag(v, "BINVAL", j->binval);
        st_up(v);
    }
    if (!st_stanza_ok(v) || st_serialize(v->root, NULL, &b) != 0) goto out;
    j->rc = ops->kv_put(h, j->host, j->node, "vcard", "vcard", b.data, b.len);
out:
    st_buf_free(&b);
    st_stanza_unref(old);
    st_stanza_unref(v);
    st_free(val);
}

static void vc_done(void *arg)
{
    vc_job *j = arg;
    if (j->rc != 0)
        st_warn("mod_avatar", "%s@%s: could not update the vCard PHOTO", j->node, j->host);
    st_free(j->binval);
    st_free(j);
}

typedef struct find_data {
    const char *id;
    const char *text;
} find_data;

static void data_item(void *ud, const char *id, const st_node *payload)
{
    find_data *f = ud;
    if (!strcmp(id, f->id) && !strcmp(payload->name, "data") && !strcmp(payload->ns, NS_DATA))
        f->text = st_node_text(payload);
}

static void update_vcard(st_host *h, const char *bare, const meta *m)
{
    const char *at = strchr(bare, '@');
    vc_job *j = at ? st_calloc(1, sizeof *j) : NULL;
    if (!j) return;
    j->srv = h->srv;
    snprintf(j->node, sizeof j->node, "%.*s", (int)(at - bare), bare);
    snprintf(j->host, sizeof j->host, "%s", h->name);
    snprintf(j->type, sizeof j->type, "%s", m->type);
    if (*m->id) {
        find_data f = {m->id, NULL};
        st_pep_peek(h, bare, NS_DATA, data_item, &f);
        if (!f.text) {
            /* XEP-0084 §4.1: data is published before metadata; without it
             * there is nothing to put in the vCard */
            st_info("mod_avatar", "%s: no avatar data for %s; vCard left as it is", bare, m->id);
            st_free(j);
            return;
        }
        if (!(j->binval = st_strdup(f.text))) {
            st_free(j);
            return;
        }
    }
    if (st_storage_submit(h->srv->store, vc_work, vc_done, j) != 0) {
        st_free(j->binval);
        st_free(j);
    }
}

/* A change of urn:xmpp:avatar:metadata (mod_pep listener). */
static void on_meta(st_host *h, const char *bare, const char *node, const char *id,
                    const st_node *payload)
{
    meta m;
    if (!st_host_has(h, "avatar")) return;
    if (payload) {
        memset(&m, 0, sizeof m);
        read_meta(&m, payload);
    } else if (!current(h, bare, &m)) {
        /* retracted or purged to nothing: no avatar */
        memset(&m, 0, sizeof m);
        m.found = 1;
    }
    if (st_host_has(h, "vcard")) update_vcard(h, bare, &m);
    rebroadcast(h->srv, bare);
}

static int avatar_init(st_host *h, void **state)
{
    *state = NULL;
    return st_pep_listen(NS_META, on_meta);
}

static const st_hooks hooks = {
    .presence_out = presence_out,
};

static const char *const feats[] = {"urn:xmpp:pep-vcard-conversion:0", NULL};

const st_module mod_avatar = {
    .name = "avatar",
    .spec = "XEP-0398",
    .title = "User Avatar to vCard-Based Avatars Conversion",
    .features = feats,
    .host_init = avatar_init,
    .hooks = &hooks,
    .priority = 94, /* before mod_presence (90) keeps and broadcasts the presence */
};
