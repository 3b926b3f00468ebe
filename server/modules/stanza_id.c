/* stanza_id.c - minting and recognising our XEP-0359 stanza ids; see
 * stanza_id.h for why an id carries a MAC. */
#include <stdio.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include "server/modules/stanza_id.h"
#include "starling/jid.h"

#define SID_RAND 12
#define SID_MAC 8

/* One key per process, drawn on first use (the loop thread only). */
static unsigned char sid_key[32];
static int sid_have_key;

static int key_ready(void)
{
    if (!sid_have_key && RAND_bytes(sid_key, sizeof sid_key) == 1) sid_have_key = 1;
    return sid_have_key;
}

/* The peer of st as a bare JID into out ("" if it has none or it does not parse). */
static void peer_of(const st_stanza *st, int outgoing, char *out, size_t outsz)
{
    const char *a = st_get(st, outgoing ? "to" : "from");
    st_jid j;
    out[0] = '\0';
    if (!a || st_jid_parse(&j, a, strlen(a)) != 0) return;
    if (st_jid_format(&j, 0, out, outsz) < 0) out[0] = '\0';
    st_jid_free(&j);
}

static int mac(const char *by, const char *peer, const unsigned char *rnd, unsigned char *out)
{
    unsigned char msg[2 * 3100 + SID_RAND], full[EVP_MAX_MD_SIZE];
    unsigned int flen = 0;
    size_t bl = strlen(by), pl = strlen(peer), n = 0;
    if (bl + pl + 2 + SID_RAND > sizeof msg) return -1;
    memcpy(msg + n, by, bl + 1); /* with the NUL: "ab"+"c" differs from "a"+"bc" */
    n += bl + 1;
    memcpy(msg + n, peer, pl + 1);
    n += pl + 1;
    memcpy(msg + n, rnd, SID_RAND);
    n += SID_RAND;
    if (!HMAC(EVP_sha256(), sid_key, sizeof sid_key, msg, n, full, &flen) || flen < SID_MAC)
        return -1;
    memcpy(out, full, SID_MAC);
    return 0;
}

static void hex(const unsigned char *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) snprintf(out + 2 * i, 3, "%02x", p[i]);
}

static int unhex(const char *s, unsigned char *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        if (!strchr("0123456789abcdef", s[2 * i]) || !strchr("0123456789abcdef", s[2 * i + 1]))
            return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

static int minted(const char *id, const char *by, const char *peer)
{
    unsigned char r[SID_RAND], m[SID_MAC], want[SID_MAC];
    if (!id || strlen(id) != 2 * (SID_RAND + SID_MAC) || !sid_have_key) return 0;
    if (unhex(id, r, SID_RAND) < 0 || unhex(id + 2 * SID_RAND, m, SID_MAC) < 0) return 0;
    if (mac(by, peer, r, want) < 0) return 0;
    return CRYPTO_memcmp(m, want, SID_MAC) == 0;
}

int st_sid_make(const st_stanza *st, const char *by, int outgoing, char *out)
{
    unsigned char r[SID_RAND], m[SID_MAC];
    char peer[3100];
    if (!key_ready() || RAND_bytes(r, sizeof r) != 1) return -1;
    peer_of(st, outgoing, peer, sizeof peer);
    if (mac(by, peer, r, m) < 0) return -1;
    hex(r, SID_RAND, out);
    hex(m, SID_MAC, out + 2 * SID_RAND);
    return 0;
}

/* Is 'by' the bare JID want? (Normalised comparison; unparsable = no.) */
static int by_is(const char *by, const char *want)
{
    st_jid a, b;
    int eq = 0;
    if (!by || st_jid_parse(&a, by, strlen(by)) != 0) return 0;
    if (st_jid_parse(&b, want, strlen(want)) == 0) {
        eq = !a.resource && st_jid_equal(&a, &b, 0);
        st_jid_free(&b);
    }
    st_jid_free(&a);
    return eq;
}

int st_sid_clean(st_stanza *st, const char *by, int outgoing, char *out)
{
    char peer[3100];
    int found = 0;
    peer_of(st, outgoing, peer, sizeof peer);
    st_node *n = st_first_elem(st->root);
    while (n) {
        st_node *next = st_next_elem(n);
        if (strcmp(n->name, "stanza-id") == 0 && strcmp(n->ns, ST_NS_SID) == 0 &&
            by_is(st_attr_get(n, "by"), by)) {
            const char *id = st_attr_get(n, "id");
            if (!found && minted(id, by, peer)) {
                snprintf(out, ST_SID_MAX, "%s", id);
                found = 1;
            } else {
                st_node_remove(st, n); /* XEP-0359 §5: only we say what our user's ids are */
            }
        }
        n = next;
    }
    return found;
}

int st_sid_attach(st_stanza *st, const char *by, const char *id)
{
    st_top(st);
    st_tag(st, "stanza-id", ST_NS_SID);
    st_attr_set(st, "id", id);
    st_attr_set(st, "by", by);
    st_up(st);
    st_stanza_touch(st);
    return st_stanza_ok(st) ? 0 : -1;
}
