/* jid.c - XMPP addresses: RFC 7622 syntax, RFC 6122 stringprep normalisation.
 *
 * Why stringprep and not PRECIS: Prosody and ejabberd normalise with the
 * Nodeprep/Nameprep/Resourceprep profiles, and their stored rosters and
 * accounts are keyed by those forms. Using the same profiles keeps "the same
 * JID" meaning the same thing across the federation (docs/internals/
 * jid-and-scram.md). The syntax rules (where parts split, which are empty,
 * the 1023-byte limit, IP literals, one trailing dot) follow RFC 7622.
 *
 * Design: every part goes through prep_part(), which validates UTF-8, runs
 * the libidn profile on a scratch copy and enforces the length limit; a parsed
 * st_jid keeps its three NUL-terminated parts in one allocation (mem) so that
 * freeing and copying are a single call. */
#include "starling/jid.h"
#include "starling/utf8.h"
#include "starling/alloc.h"

#include <arpa/inet.h>
#include <idna.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stringprep.h>

/* Longest input we are willing to prepare for one part. A longer input could
 * in theory shrink below 1023 bytes (characters mapped to nothing), but only
 * an attacker sends that; refusing bounds the work per JID. */
#define PREP_INPUT_MAX (4 * ST_JID_PART_MAX)
/* Scratch size cap: NFKC can expand a code point up to 18 times. */
#define PREP_SCRATCH_MAX (18 * PREP_INPUT_MAX + 64)

/* Run one stringprep profile over in[0..n) into out. maxlen caps the result
 * (0 = only outsz limits it). Empty results are refused unless allow_empty.
 * Returns the prepared length, -1 if the input is refused, -2 if memory
 * ran out (callers outside this file see < 0 either way). */
/* 1 if the profile maps in[0..n) to itself and refuses none of it, known
 * without libidn: printable ASCII (no space) that the profile neither case
 * folds (nodeprep and nameprep map A-Z, RFC 3454 table B.2) nor prohibits
 * (nodeprep: "&'/:<>@, RFC 6122 A.5). ASCII has nothing else to map, to
 * normalise or to check for bidi. Nearly every part is such, and libidn
 * spends some 15,000 instructions on one; test_jid compares every ASCII
 * character's verdict with libidn's. */
static int ascii_identity(const Stringprep_profile *profile, const char *in, size_t n)
{
    int node = profile == stringprep_xmpp_nodeprep;
    int fold = node || profile == stringprep_nameprep;
    if (!fold && profile != stringprep_xmpp_resourceprep && profile != stringprep_saslprep)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c < 0x21 || c > 0x7e || (fold && c >= 'A' && c <= 'Z'))
            return 0;
        if (node && strchr("\"&'/:<>@", c))
            return 0;
    }
    return 1;
}

static int prep_part(const Stringprep_profile *profile, Stringprep_profile_flags flags,
                     const char *in, size_t n, char *out, size_t outsz, size_t maxlen,
                     int allow_empty)
{
    char *tmp = NULL;
    size_t cap;
    int rc = -1;

    if (ascii_identity(profile, in, n)) {
        if ((n == 0 && !allow_empty) || (maxlen && n > maxlen) || n >= outsz)
            return -1;
        memcpy(out, in, n);
        out[n] = '\0';
        return (int)n;
    }
    if (!st_utf8_valid(in, n))
        goto done;
    if (maxlen && n > PREP_INPUT_MAX)
        goto done;

    /* stringprep() works in place and may grow the string; retry with a
     * bigger scratch buffer until it fits or we hit the cap. */
    cap = n + 64;
    for (;;) {
        tmp = st_malloc(cap);
        if (!tmp) {
            rc = -2; /* out of memory: no verdict on the input */
            goto done;
        }
        memcpy(tmp, in, n);
        tmp[n] = '\0';
        int r = stringprep(tmp, cap, flags, profile);
        if (r == STRINGPREP_OK)
            break;
        st_free(tmp);
        tmp = NULL;
        if (r == STRINGPREP_MALLOC_ERROR)
            rc = -2;
        if (r != STRINGPREP_TOO_SMALL_BUFFER || cap >= PREP_SCRATCH_MAX ||
            cap > SIZE_MAX / 4)
            goto done;
        cap *= 4;
        if (maxlen && cap > PREP_SCRATCH_MAX)
            cap = PREP_SCRATCH_MAX;
    }

    size_t len = strlen(tmp);
    if ((len == 0 && !allow_empty) || (maxlen && len > maxlen) || len >= outsz)
        goto done;
    memcpy(out, tmp, len + 1);
    rc = (int)len;

done:
    st_free(tmp);
    return rc;
}

/* libidn's tables are Unicode 3.2, so refusing unassigned code points
 * (RFC 3454 §7 "stored strings") would refuse every emoji resource that
 * clients send today. COMPAT: Prosody's default (non-strict) prep allows
 * them, and so do we. */
#define JID_PREP_FLAGS ((Stringprep_profile_flags)0)
int st_nodeprep(const char *in, char *out, size_t outsz)
{
    int r = prep_part(stringprep_xmpp_nodeprep, JID_PREP_FLAGS, in, strlen(in), out, outsz,
                      ST_JID_PART_MAX, 0);
    return r < 0 ? -1 : r;
}

int st_resourceprep(const char *in, char *out, size_t outsz)
{
    int r = prep_part(stringprep_xmpp_resourceprep, JID_PREP_FLAGS, in, strlen(in), out, outsz,
                      ST_JID_PART_MAX, 0);
    return r < 0 ? -1 : r;
}

/* Nameprep alone, without the domain syntax checks of prep_domain(). */
int st_nameprep(const char *in, char *out, size_t outsz)
{
    int r = prep_part(stringprep_nameprep, JID_PREP_FLAGS, in, strlen(in), out, outsz,
                      ST_JID_PART_MAX, 0);
    return r < 0 ? -1 : r;
}

/* Passwords are "queries" in RFC 4013 terms: unassigned code points are
 * allowed so that a client on a newer Unicode still authenticates. An empty
 * result is legal; the caller decides whether an empty password is. */
int st_saslprep(const char *in, char *out, size_t outsz)
{
    int r = prep_part(stringprep_saslprep, 0, in, strlen(in), out, outsz, 0, 1);
    return r < 0 ? -1 : r;
}

/* "[v6]" literal: validated with inet_pton, kept as written but lowercased
 * (RFC 7622 §3.2 says the brackets stay; hex digits compare case-free). */
static int prep_ipv6(const char *in, size_t n, char *out, size_t outsz)
{
    char addr[INET6_ADDRSTRLEN + 8];
    unsigned char bin[16];

    if (n < 4 || in[0] != '[' || in[n - 1] != ']' || n - 2 >= sizeof addr || n >= outsz)
        return -1;
    memcpy(addr, in + 1, n - 2);
    addr[n - 2] = '\0';
    if (strchr(addr, '%')) /* zone ids are not part of a JID */
        return -1;
    if (inet_pton(AF_INET6, addr, bin) != 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[n] = '\0';
    return (int)n;
}

/* The other label separators of RFC 3490 §3.1 become '.', in a copy. */
static size_t map_dots(const char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = (const unsigned char *)in + i;
        if (n - i >= 3 && ((p[0] == 0xe3 && p[1] == 0x80 && p[2] == 0x82) ||  /* U+3002 */
                           (p[0] == 0xef && p[1] == 0xbc && p[2] == 0x8e) ||  /* U+FF0E */
                           (p[0] == 0xef && p[1] == 0xbd && p[2] == 0xa1))) { /* U+FF61 */
            out[o++] = '.';
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    return o;
}

/* Domainpart: IP literal, or nameprep plus the IDNA ToASCII check with
 * STD3 rules (letters, digits, hyphen; labels 1..63), as Prosody does. */
static int prep_domain(const char *in, size_t n, char *out, size_t outsz)
{
    char *mapped = NULL;
    char *ascii = NULL;
    int rc = -1;

    if (n > 0 && in[0] == '[')
        return prep_ipv6(in, n, out, outsz);
    if (n > PREP_INPUT_MAX)
        return -1;

    mapped = st_malloc(n + 1);
    if (!mapped) {
        rc = -2;
        goto done;
    }
    size_t m = map_dots(in, n, mapped);
    /* One trailing dot is the DNS root, not part of the name (RFC 7622 §3.2). */
    if (m > 0 && mapped[m - 1] == '.')
        m--;
    if (m == 0)
        goto done;

    int len = prep_part(stringprep_nameprep, JID_PREP_FLAGS, mapped, m, out,
                        outsz, ST_JID_PART_MAX, 0);
    if (len < 0) {
        rc = len;
        goto done;
    }

    /* NFKC can turn e.g. U+2024 into '.', so check labels after prep too:
     * no empty label anywhere (that also refuses a dot left at the end). */
    if (out[0] == '.' || out[len - 1] == '.' || strstr(out, ".."))
        goto done;
    /* libidn allocates the ASCII form with malloc; we only want the verdict. */
    int ir = idna_to_ascii_8z(out, &ascii, IDNA_USE_STD3_ASCII_RULES);
    if (ir != IDNA_SUCCESS) {
        if (ir == IDNA_MALLOC_ERROR)
            rc = -2;
        goto done;
    }
    rc = len;

done:
    free(ascii);
    st_free(mapped);
    if (rc < 0 && outsz > 0)
        out[0] = '\0';
    return rc;
}

/* ---- a cache of prepared parts ----
 *
 * Every stanza's 'to' (and many a 'from') is parsed, and stringprep costs
 * some 15,000 instructions per part: three quarters of the server's CPU
 * per routed message went to libidn. The same few JIDs come back again and
 * again, and preparation is a pure function of the bytes, so each thread
 * keeps a small direct-mapped cache per kind of part: raw bytes -> prepared
 * bytes, or "refused". A hit is a hash, a compare and a copy. Parts longer
 * than JC_MAX bytes (rare) are prepared every time. Thread-local, because
 * the storage thread parses JIDs too; no locks, no allocation. */
#define JC_SLOTS 256
#define JC_MAX 47
enum { JC_NODE, JC_DOMAIN, JC_RESOURCE, JC_KINDS };

typedef struct jc_entry {
    unsigned char state; /* 0 empty, 1 prepared, 2 refused */
    unsigned char klen, vlen;
    char key[JC_MAX];
    char val[JC_MAX + 1];
} jc_entry;

static __thread jc_entry jcache[JC_KINDS][JC_SLOTS];

static jc_entry *jc_slot(int kind, const char *in, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)in[i]) * 16777619u;
    return &jcache[kind][(h ^ (h >> 16)) & (JC_SLOTS - 1)];
}

/* Prepare in[0..n) as a part of this kind into out (outsz >= JC_MAX + 1 for
 * the cache to be used); the result of prep_part / prep_domain. */
static int prep_cached(int kind, const char *in, size_t n, char *out, size_t outsz)
{
    jc_entry *e = NULL;
    if (n <= JC_MAX && outsz > JC_MAX) {
        e = jc_slot(kind, in, n);
        if (e->state && e->klen == n && memcmp(e->key, in, n) == 0) {
            if (e->state == 2)
                return -1;
            memcpy(out, e->val, (size_t)e->vlen + 1);
            return e->vlen;
        }
    }
    int r = kind == JC_DOMAIN ? prep_domain(in, n, out, outsz)
            : prep_part(kind == JC_NODE ? stringprep_xmpp_nodeprep : stringprep_xmpp_resourceprep,
                        JID_PREP_FLAGS, in, n, out, outsz, ST_JID_PART_MAX, 0);
    /* Cache verdicts (prepared, refused), never an out-of-memory (-2). */
    if (e && r != -2 && r <= JC_MAX) {
        e->state = r >= 0 ? 1 : 2;
        e->klen = (unsigned char)n;
        memcpy(e->key, in, n);
        e->vlen = (unsigned char)(r >= 0 ? r : 0);
        if (r >= 0)
            memcpy(e->val, out, (size_t)r + 1);
    }
    return r;
}

/* Build out from raw parts [ptr, len); node/res may be absent (ptr NULL). */
static int jid_build(st_jid *out, const char *node, size_t node_len, const char *dom,
                     size_t dom_len, const char *res, size_t res_len)
{
    /* Each part is at most PART_MAX bytes plus a NUL once prepared. */
    char parts[3][ST_JID_PART_MAX + 1];
    int nl = -1, dl, rl = -1;

    memset(out, 0, sizeof *out);

    if (node) {
        nl = prep_cached(JC_NODE, node, node_len, parts[0], sizeof parts[0]);
        if (nl < 0)
            return -1;
    }
    dl = prep_cached(JC_DOMAIN, dom, dom_len, parts[1], sizeof parts[1]);
    if (dl < 0)
        return -1;
    if (res) {
        rl = prep_cached(JC_RESOURCE, res, res_len, parts[2], sizeof parts[2]);
        if (rl < 0)
            return -1;
    }

    size_t total = (size_t)(nl + 1) + (size_t)dl + 1 + (size_t)(rl + 1);
    char *mem = st_malloc(total);
    if (!mem)
        return -1;
    char *p = mem;
    if (nl >= 0) {
        memcpy(p, parts[0], (size_t)nl + 1);
        out->node = p;
        p += nl + 1;
    }
    memcpy(p, parts[1], (size_t)dl + 1);
    out->domain = p;
    p += dl + 1;
    if (rl >= 0) {
        memcpy(p, parts[2], (size_t)rl + 1);
        out->resource = p;
    }
    out->mem = mem;
    return 0;
}

int st_jid_parse(st_jid *out, const char *s, size_t len)
{
    const char *node = NULL, *res = NULL;
    size_t node_len = 0, res_len = 0;
    const char *dom = s;
    size_t dom_len;

    memset(out, 0, sizeof *out);
    if (!s || len == 0 || memchr(s, '\0', len))
        return -1;

    /* RFC 7622 §3.1: the resource starts at the first '/', and may itself
     * contain '@' and '/'; the localpart ends at the first '@' before it. */
    const char *slash = memchr(s, '/', len);
    size_t pre_len = slash ? (size_t)(slash - s) : len;
    if (slash) {
        res = slash + 1;
        res_len = len - pre_len - 1;
        if (res_len == 0)
            return -1;
    }
    const char *at = memchr(s, '@', pre_len);
    if (at) {
        node = s;
        node_len = (size_t)(at - s);
        if (node_len == 0)
            return -1;
        dom = at + 1;
    }
    dom_len = (size_t)(s + pre_len - dom);
    if (dom_len == 0)
        return -1;

    return jid_build(out, node, node_len, dom, dom_len, res, res_len);
}

int st_jid_make(st_jid *out, const char *node, const char *domain, const char *resource)
{
    memset(out, 0, sizeof *out);
    if (!domain)
        return -1;
    return jid_build(out, node, node ? strlen(node) : 0, domain, strlen(domain), resource,
                     resource ? strlen(resource) : 0);
}

void st_jid_free(st_jid *j)
{
    if (!j)
        return;
    st_free(j->mem);
    memset(j, 0, sizeof *j);
}

int st_jid_copy(st_jid *dst, const st_jid *src)
{
    memset(dst, 0, sizeof *dst);
    if (!src || !src->domain)
        return -1;
    size_t nl = src->node ? strlen(src->node) + 1 : 0;
    size_t dl = strlen(src->domain) + 1;
    size_t rl = src->resource ? strlen(src->resource) + 1 : 0;
    char *mem = st_malloc(nl + dl + rl);
    if (!mem)
        return -1;
    char *p = mem;
    if (src->node) {
        memcpy(p, src->node, nl);
        dst->node = p;
        p += nl;
    }
    memcpy(p, src->domain, dl);
    dst->domain = p;
    p += dl;
    if (src->resource) {
        memcpy(p, src->resource, rl);
        dst->resource = p;
    }
    dst->mem = mem;
    return 0;
}

/* Length of the formatted JID, not counting the NUL. */
static size_t jid_len(const st_jid *j, int with_resource)
{
    size_t n = strlen(j->domain);
    if (j->node)
        n += strlen(j->node) + 1;
    if (with_resource && j->resource)
        n += strlen(j->resource) + 1;
    return n;
}

int st_jid_format(const st_jid *j, int with_resource, char *out, size_t outsz)
{
    if (!j || !j->domain)
        return -1;
    size_t need = jid_len(j, with_resource);
    if (need >= outsz || need > (size_t)INT32_MAX)
        return -1;
    char *p = out;
    if (j->node) {
        size_t n = strlen(j->node);
        memcpy(p, j->node, n);
        p += n;
        *p++ = '@';
    }
    size_t d = strlen(j->domain);
    memcpy(p, j->domain, d);
    p += d;
    if (with_resource && j->resource) {
        size_t r = strlen(j->resource);
        *p++ = '/';
        memcpy(p, j->resource, r);
        p += r;
    }
    *p = '\0';
    return (int)need;
}

static char *jid_alloc_format(const st_jid *j, int with_resource)
{
    if (!j || !j->domain)
        return NULL;
    size_t n = jid_len(j, with_resource) + 1;
    char *s = st_malloc(n);
    if (!s)
        return NULL;
    if (st_jid_format(j, with_resource, s, n) < 0) {
        st_free(s);
        return NULL;
    }
    return s;
}

char *st_jid_bare(const st_jid *j)
{
    return jid_alloc_format(j, 0);
}

char *st_jid_full(const st_jid *j)
{
    return jid_alloc_format(j, 1);
}

static int part_equal(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

int st_jid_equal(const st_jid *a, const st_jid *b, int with_resource)
{
    if (!a || !b || !a->domain || !b->domain)
        return 0;
    return part_equal(a->node, b->node) && part_equal(a->domain, b->domain) &&
           (!with_resource || part_equal(a->resource, b->resource));
}
