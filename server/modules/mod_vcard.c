/* mod_vcard.c - XEP-0054 vcard-temp: each user's vCard, stored by the server
 * and served to anyone who asks for it at the user's bare JID.
 *
 * The vCard is kept as its serialised XML (kv store "vcard", key "vcard"),
 * at most vcard.max_bytes long; the server does not look inside it. Reads
 * and writes run on the storage thread; the IQ is answered when they finish.
 *
 * Answers where XEP-0054 lets the server choose: our own vCard, when none is
 * stored, is an empty <vCard/> result (§3.1 allows that or item-not-found,
 * and clients handle the empty one better); another user's missing vCard is
 * item-not-found whether or not the account exists (§3.3 asks for the same
 * answer in both cases, so accounts cannot be discovered this way); setting
 * another user's vCard is forbidden (§3.2). A vCard over the limit is
 * refused with not-acceptable and a text that says the limit. */
#include <stdio.h>
#include <string.h>
#include "server/log.h"
#include "server/server.h"
#include "starling/alloc.h"
#include "starling/xmlstream.h"

#define NS_VCARD "vcard-temp"
#define STORE "vcard"
#define KEY "vcard"
#define SERIALIZE_CAP (32u * 1024 * 1024)

extern const st_module mod_vcard;

typedef struct vc_job {
    st_server *srv;
    st_iq_pending *p;
    char host[1024], node[1024];
    int set;   /* put val, else get into val */
    int own;   /* get: the requester's own vCard */
    char *val; /* owned */
    size_t len;
    int rc;
} vc_job;

static void vc_work(void *h, void *arg)
{
    vc_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->srv->store);
    if (j->set) j->rc = ops->kv_put(h, j->host, j->node, STORE, KEY, j->val, j->len);
    else j->rc = ops->kv_get(h, j->host, j->node, STORE, KEY, &j->val, &j->len);
}

static void vc_get_done(vc_job *j)
{
    st_stanza *stored = NULL, *r = NULL;
    if (j->rc < 0) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        return;
    }
    if (j->rc == 1) {
        const char *err = NULL;
        stored = st_xml_parse_element(j->val, j->len, &err);
        if (!stored) st_error("mod_vcard", "%s@%s: the stored vCard does not parse (%s)", j->node,
                              j->host, err ? err : "?");
    }
    if (!stored && !j->own) {
        st_iq_pending_error(j->p, "item-not-found", NULL);
        return;
    }
    if (!(r = st_iq_reply(st_iq_pending_iq(j->p)))) goto fail;
    if (stored) st_add_copy(r, stored->root);
    else st_tag(r, "vCard", NS_VCARD); /* none yet: an empty one */
    if (!st_stanza_ok(r)) goto fail;
    st_iq_pending_result(j->p, r);
    st_stanza_unref(r);
    st_stanza_unref(stored);
    return;
fail:
    st_stanza_unref(r);
    st_stanza_unref(stored);
    st_iq_pending_error(j->p, "internal-server-error", NULL);
}

static void vc_done(void *arg)
{
    vc_job *j = arg;
    if (!j->set) vc_get_done(j);
    else if (j->rc == 0) st_iq_pending_result(j->p, NULL);
    else st_iq_pending_error(j->p, "internal-server-error", NULL);
    st_free(j->val);
    st_free(j);
}

/* Queue the job (it owns val); answers the IQ itself on failure. */
static void submit(st_iq_ctx *c, const char *node, int set, int own, char *val, size_t len)
{
    vc_job *j = st_calloc(1, sizeof *j);
    if (!j || !(j->p = st_iq_defer(c))) {
        st_free(j);
        st_free(val);
        st_iq_error(c, "internal-server-error", NULL);
        return;
    }
    j->srv = c->srv;
    j->set = set;
    j->own = own;
    j->val = val;
    j->len = len;
    snprintf(j->host, sizeof j->host, "%s", c->host->name);
    snprintf(j->node, sizeof j->node, "%s", node);
    if (st_storage_submit(c->srv->store, vc_work, vc_done, j) != 0) {
        st_iq_pending_error(j->p, "internal-server-error", NULL);
        st_free(j->val);
        st_free(j);
    }
}

static st_verdict vc_get_own(st_iq_ctx *c)
{
    submit(c, c->from->node, 0, 1, NULL, 0);
    return ST_HANDLED;
}

static st_verdict vc_get_user(st_iq_ctx *c)
{
    submit(c, c->to->node, 0, 0, NULL, 0);
    return ST_HANDLED;
}

static st_verdict vc_set(st_iq_ctx *c)
{
    long long max = st_host_opt_num(c->host, &mod_vcard, "max_bytes");
    st_buf b;
    /* The payload is already bounded by the stanza size limit; the buffer's
     * own cap only keeps the rule that every buffer has one. */
    st_buf_init(&b, SERIALIZE_CAP);
    if (st_serialize(c->payload, NULL, &b) != 0) {
        st_buf_free(&b);
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    if (b.len > (size_t)max) {
        char text[96];
        st_buf_free(&b);
        snprintf(text, sizeof text, "the vCard is larger than this server's limit of %lld bytes", max);
        st_iq_error(c, "not-acceptable", text);
        return ST_HANDLED;
    }
    size_t len;
    char *val = st_buf_steal(&b, &len);
    if (!val) { /* an empty serialisation cannot happen; treat as OOM */
        st_iq_error(c, "internal-server-error", NULL);
        return ST_HANDLED;
    }
    submit(c, c->from->node, 1, 0, val, len);
    return ST_HANDLED;
}

static st_verdict vc_set_other(st_iq_ctx *c)
{
    st_iq_error(c, "forbidden", "you can only change your own vCard");
    return ST_HANDLED;
}

static const char *const feats[] = {NS_VCARD, NULL};

static const st_iq_handler iqs[] = {
    {NS_VCARD, "vCard", ST_IQ_GET, ST_TO_ACCOUNT, vc_get_own},
    {NS_VCARD, "vCard", ST_IQ_GET, ST_TO_USER, vc_get_user},
    {NS_VCARD, "vCard", ST_IQ_SET, ST_TO_ACCOUNT, vc_set},
    {NS_VCARD, "vCard", ST_IQ_SET, ST_TO_USER, vc_set_other},
    {0},
};

static const st_module_opt opts[] = {
    {"max_bytes", ST_OPT_SIZE, "64k", 256, 16 * 1024 * 1024, "largest vCard a user may store, in bytes"},
    {0},
};

const st_module mod_vcard = {
    .name = "vcard",
    .spec = "XEP-0054",
    .title = "vcard-temp",
    .features = feats,
    .iqs = iqs,
    .opts = opts,
};
