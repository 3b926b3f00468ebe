/* scram.c - SCRAM-SHA-1/-256 and -PLUS (RFC 5802, RFC 7677, RFC 5929,
 * RFC 9266), server and client, sans-I/O, on OpenSSL 3 primitives.
 *
 * Design. The server keeps only what the exchange needs between steps: the
 * gs2 header (it must come back base64'd in c=), client-first-message-bare
 * and server-first-message (both go into AuthMessage), the combined nonce and
 * a copy of the credential. Every message from the peer is parsed with a
 * small cursor that never reads past len and refuses NUL bytes, and every
 * failure is returned as an RFC 6120 §6.5 SASL condition string, so the
 * caller can put it straight into <failure/>.
 *
 * Unknown users get a challenge that looks like a real one: the salt is an
 * HMAC of the username under a per-process random key (stable for the life
 * of the process, so asking twice gives the same salt), the iteration count
 * is the default, and the stored keys are random, so finish always fails with
 * the same "not-authorized" a wrong password gives.
 *
 * Secrets (passwords, salted passwords, keys) are wiped with OPENSSL_cleanse
 * before their memory is freed. Nothing here logs. */
#include "starling/scram.h"
#include "starling/utf8.h"
#include "starling/alloc.h"
#include "starling/base64.h"
#include "starling/hmac.h"
#include "starling/jid.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <string.h>

/* No SCRAM message we accept is anywhere near this; it bounds the work a
 * peer can make us do before authentication. */
#define SCRAM_MSG_MAX 8192
/* Server nonce part: 18 random bytes = 24 base64 characters. */
#define SNONCE_BYTES 18
#define CNONCE_BYTES 18
#define FAKE_SALT_LEN 16
/* A client refuses counts a hostile server could use to stall it (upper) or
 * to make the salted password cheap to crack (lower, RFC 7677 §4). */
#define CLIENT_ITER_MIN 4096
#define CLIENT_ITER_MAX 1000000
#define CLIENT_SALT_MAX 1024
#define CBIND_MAX 128

static const char ERR_MALFORMED[] = "malformed-request";
static const char ERR_NOT_AUTHORIZED[] = "not-authorized";
static const char ERR_INVALID_AUTHZID[] = "invalid-authzid";
static const char ERR_ENCRYPTION[] = "encryption-required";
static const char ERR_TEMPORARY[] = "temporary-auth-failure";

/* ---- primitives ---- */

size_t st_scram_hash_len(st_scram_hash h)
{
    switch (h) {
    case ST_SCRAM_SHA1:
        return 20;
    case ST_SCRAM_SHA256:
        return 32;
    }
    return 0;
}

const char *st_scram_mech_name(st_scram_hash h, int plus)
{
    switch (h) {
    case ST_SCRAM_SHA1:
        return plus ? "SCRAM-SHA-1-PLUS" : "SCRAM-SHA-1";
    case ST_SCRAM_SHA256:
        return plus ? "SCRAM-SHA-256-PLUS" : "SCRAM-SHA-256";
    }
    return NULL;
}

/* Returns 1 if the n bytes at a and b are equal, else 0, in time that does
 * not depend on where they differ. */
int st_ct_equal(const void *a, const void *b, size_t n)
{
    if (n == 0)
        return 1;
    return CRYPTO_memcmp(a, b, n) == 0;
}

/* Fetched once (starling/hmac.h): the legacy EVP_sha1() would be looked
 * up again by every hash and HMAC of every login. */
static const EVP_MD *md_of(st_scram_hash h)
{
    const EVP_MD *m = st_md(h == ST_SCRAM_SHA256 ? "SHA256" : "SHA1");
    return m ? m : h == ST_SCRAM_SHA256 ? EVP_sha256() : EVP_sha1();
}

static int hmac(st_scram_hash h, const void *key, size_t klen, const void *data, size_t n,
                unsigned char *out)
{
    return st_hmac(md_of(h), key, klen, data, n, out);
}

static int digest(st_scram_hash h, const void *data, size_t n, unsigned char *out)
{
    unsigned int olen = 0;
    if (EVP_Digest(data, n, out, &olen, md_of(h), NULL) != 1)
        return -1;
    return olen == st_scram_hash_len(h) ? 0 : -1;
}

/* SaltedPassword := Hi(Normalize(password), salt, i), password already prepped. */
static int salted_password(st_scram_hash h, const char *pw, const unsigned char *salt,
                           size_t salt_len, unsigned iter, unsigned char *out)
{
    size_t pl = strlen(pw);
    if (iter == 0 || iter > INT_MAX || pl > INT_MAX || salt_len > INT_MAX)
        return -1;
    if (PKCS5_PBKDF2_HMAC(pw, (int)pl, salt, (int)salt_len, (int)iter, md_of(h),
                          (int)st_scram_hash_len(h), out) != 1)
        return -1;
    return 0;
}

/* ClientKey, StoredKey and ServerKey from SaltedPassword. */
static int derive_keys(st_scram_hash h, const unsigned char *sp, unsigned char *client_key,
                       unsigned char *stored_key, unsigned char *server_key)
{
    size_t hl = st_scram_hash_len(h);
    if (hmac(h, sp, hl, "Client Key", 10, client_key) != 0)
        return -1;
    if (digest(h, client_key, hl, stored_key) != 0)
        return -1;
    if (hmac(h, sp, hl, "Server Key", 10, server_key) != 0)
        return -1;
    return 0;
}

/* SASLprep into a fresh allocation; NULL if invalid or on OOM. NFKC may
 * expand a code point up to 18 times, hence the size. */
static char *saslprep_dup(const char *in)
{
    size_t n = strlen(in);
    if (n > SCRAM_MSG_MAX)
        return NULL;
    size_t cap = 18 * n + 16;
    char *out = st_malloc(cap);
    if (!out)
        return NULL;
    if (st_saslprep(in, out, cap) < 0) {
        OPENSSL_cleanse(out, cap);
        st_free(out);
        return NULL;
    }
    return out;
}

static void free_secret(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        st_free(s);
    }
}

int st_scram_cred_make(st_scram_cred *out, st_scram_hash h, const char *password,
                       const unsigned char *salt, size_t salt_len, unsigned iterations)
{
    unsigned char sp[ST_SCRAM_KEY_MAX], ck[ST_SCRAM_KEY_MAX];
    char *pw = NULL;
    int rc = -1;

    memset(out, 0, sizeof *out);
    if (st_scram_hash_len(h) == 0 || !password)
        goto done;
    if (iterations == 0)
        iterations = ST_SCRAM_DEFAULT_ITERATIONS;
    if (salt) {
        if (salt_len == 0 || salt_len > ST_SCRAM_SALT_MAX)
            goto done;
        memcpy(out->salt, salt, salt_len);
        out->salt_len = salt_len;
    } else {
        if (RAND_bytes(out->salt, 16) != 1)
            goto done;
        out->salt_len = 16;
    }
    out->hash = h;
    out->iterations = iterations;

    pw = saslprep_dup(password);
    if (!pw)
        goto done;
    if (salted_password(h, pw, out->salt, out->salt_len, iterations, sp) != 0)
        goto done;
    if (derive_keys(h, sp, ck, out->stored_key, out->server_key) != 0)
        goto done;
    rc = 0;

done:
    OPENSSL_cleanse(sp, sizeof sp);
    OPENSSL_cleanse(ck, sizeof ck);
    free_secret(pw);
    if (rc != 0)
        OPENSSL_cleanse(out, sizeof *out);
    return rc;
}

int st_scram_cred_check(const st_scram_cred *c, const char *password)
{
    unsigned char sp[ST_SCRAM_KEY_MAX], ck[ST_SCRAM_KEY_MAX], stk[ST_SCRAM_KEY_MAX],
        svk[ST_SCRAM_KEY_MAX];
    char *pw = NULL;
    int rc = -1;
    size_t hl = c ? st_scram_hash_len(c->hash) : 0;

    if (hl == 0 || !password || c->salt_len == 0 || c->salt_len > ST_SCRAM_SALT_MAX)
        goto done;
    pw = saslprep_dup(password);
    if (!pw) {
        /* A password that cannot be prepared cannot match any credential. */
        rc = 0;
        goto done;
    }
    if (salted_password(c->hash, pw, c->salt, c->salt_len, c->iterations, sp) != 0)
        goto done;
    if (derive_keys(c->hash, sp, ck, stk, svk) != 0)
        goto done;
    rc = st_ct_equal(stk, c->stored_key, hl) ? 1 : 0;

done:
    OPENSSL_cleanse(sp, sizeof sp);
    OPENSSL_cleanse(ck, sizeof ck);
    OPENSSL_cleanse(stk, sizeof stk);
    OPENSSL_cleanse(svk, sizeof svk);
    free_secret(pw);
    return rc;
}

/* ---- message parsing ---- */

/* A read cursor over one peer message; never reads at or past end. */
typedef struct cursor {
    const char *p, *end;
} cursor;

/* Take "<name>=value" up to the next ',' or the end (the ',' stays). */
static int take_attr(cursor *c, char name, const char **val, size_t *vlen)
{
    if (c->end - c->p < 2 || c->p[0] != name || c->p[1] != '=')
        return -1;
    const char *v = c->p + 2;
    const char *comma = memchr(v, ',', (size_t)(c->end - v));
    const char *e = comma ? comma : c->end;
    *val = v;
    *vlen = (size_t)(e - v);
    c->p = e;
    return 0;
}

static int take_comma(cursor *c)
{
    if (c->p >= c->end || *c->p != ',')
        return -1;
    c->p++;
    return 0;
}

/* extensions = attr-val *("," attr-val), attr-val = ALPHA "=" 1*value-char;
 * the cursor is at the ',' before the first one, or at the end. We accept and
 * ignore them, as RFC 5802 §5.1 asks of unknown optional attributes. */
static int skip_extensions(cursor *c)
{
    while (c->p < c->end) {
        const char *v;
        size_t vl;
        if (take_comma(c) != 0 || c->p >= c->end)
            return -1;
        char a = *c->p;
        if (!((a >= 'a' && a <= 'z') || (a >= 'A' && a <= 'Z')))
            return -1;
        if (take_attr(c, a, &v, &vl) != 0 || vl == 0)
            return -1;
    }
    return 0;
}

/* printable = %x21-2B / %x2D-7E (no ','), at least one. */
static int nonce_ok(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch > 0x7e || ch == ',')
            return 0;
    }
    return 1;
}

/* cb-name = 1*(ALPHA / DIGIT / "." / "-") */
static int cbname_ok(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '-'))
            return 0;
    }
    return 1;
}

/* Decode a saslname ("=2C" is ',', "=3D" is '='; any other '=' is an error,
 * RFC 5802 §5.1) into a fresh NUL-terminated string; NULL on error or OOM. */
static char *saslname_decode(const char *s, size_t n)
{
    char *out, *o;

    if (n == 0 || memchr(s, '\0', n))
        return NULL;
    out = st_malloc(n + 1);
    if (!out)
        return NULL;
    o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '=') {
            *o++ = s[i];
            continue;
        }
        if (n - i < 3)
            goto fail;
        if (s[i + 1] == '2' && s[i + 2] == 'C')
            *o++ = ',';
        else if (s[i + 1] == '3' && s[i + 2] == 'D')
            *o++ = '=';
        else
            goto fail;
        i += 2;
    }
    *o = '\0';
    return out;

fail:
    st_free(out);
    return NULL;
}

/* Encode a name for n= (',' and '=' escaped). */
static int saslname_encode(st_buf *out, const char *s)
{
    for (; *s; s++) {
        int rc;
        if (*s == ',')
            rc = st_buf_appends(out, "=2C");
        else if (*s == '=')
            rc = st_buf_appends(out, "=3D");
        else
            rc = st_buf_append(out, s, 1);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* ---- per-process key for fake salts ---- */

static pthread_once_t fake_once = PTHREAD_ONCE_INIT;
static unsigned char fake_key[32];
static int fake_key_ok;

static void fake_key_init(void)
{
    fake_key_ok = RAND_bytes(fake_key, sizeof fake_key) == 1;
}

/* ---- server ---- */

enum cb_kind { CB_NONE, CB_EXPORTER, CB_END_POINT };
enum server_state { SS_NEW, SS_STARTED, SS_CHALLENGED, SS_DONE };

struct st_scram_server {
    st_scram_hash h;
    int plus, plus_advertised;
    int have_tls;                   /* cb was given: the stream is TLS */
    unsigned char exporter[CBIND_MAX];
    size_t exporter_len;            /* 0 = unavailable */
    unsigned char end_point[CBIND_MAX];
    size_t end_point_len;
    enum server_state state;
    enum cb_kind cb;                /* what the client bound to */
    char *username, *authzid;       /* decoded, owned */
    char *snonce_override;          /* tests only */
    st_buf gs2_header;              /* "n,,", "p=tls-exporter,a=...," */
    st_buf first_bare;              /* client-first-message-bare */
    st_buf server_first;
    st_buf nonce;                   /* c-nonce + s-nonce */
    st_buf ssdp;                    /* XEP-0474 "h" value (base64), empty if unused */
    st_scram_cred cred;
    int fake;                       /* unknown user: never succeed */
};

st_scram_server *st_scram_server_new(st_scram_hash h, int plus, int plus_advertised,
                                     const st_scram_cbind *cb)
{
    if (st_scram_hash_len(h) == 0)
        return NULL;
    st_scram_server *ss = st_calloc(1, sizeof *ss);
    if (!ss)
        return NULL;
    ss->h = h;
    ss->plus = plus != 0;
    ss->plus_advertised = plus_advertised != 0;
    /* Copy the binding data: the TLS layer's buffers need not outlive us.
     * Data too long to be a real binding is treated as unavailable. */
    if (cb) {
        ss->have_tls = 1;
        if (cb->tls_exporter && cb->tls_exporter_len > 0 &&
            cb->tls_exporter_len <= CBIND_MAX) {
            memcpy(ss->exporter, cb->tls_exporter, cb->tls_exporter_len);
            ss->exporter_len = cb->tls_exporter_len;
        }
        if (cb->tls_server_end_point && cb->tls_server_end_point_len > 0 &&
            cb->tls_server_end_point_len <= CBIND_MAX) {
            memcpy(ss->end_point, cb->tls_server_end_point, cb->tls_server_end_point_len);
            ss->end_point_len = cb->tls_server_end_point_len;
        }
    }
    st_buf_init(&ss->gs2_header, SCRAM_MSG_MAX);
    st_buf_init(&ss->first_bare, SCRAM_MSG_MAX);
    st_buf_init(&ss->server_first, SCRAM_MSG_MAX);
    st_buf_init(&ss->nonce, SCRAM_MSG_MAX);
    st_buf_init(&ss->ssdp, 256);
    return ss;
}

void st_scram_server_free(st_scram_server *ss)
{
    if (!ss)
        return;
    st_free(ss->username);
    st_free(ss->authzid);
    st_free(ss->snonce_override);
    st_buf_free(&ss->gs2_header);
    st_buf_free(&ss->first_bare);
    st_buf_free(&ss->server_first);
    st_buf_free(&ss->nonce);
    st_buf_free(&ss->ssdp);
    OPENSSL_cleanse(ss, sizeof *ss);
    st_free(ss);
}

void st_scram_server_set_nonce(st_scram_server *ss, const char *nonce)
{
    st_free(ss->snonce_override);
    ss->snonce_override = nonce ? st_strdup(nonce) : NULL;
}

const char *st_scram_server_authzid(const st_scram_server *ss)
{
    return ss->authzid;
}

st_scram_hash st_scram_server_hash(const st_scram_server *ss)
{
    return ss->h;
}

const char *st_scram_server_username(const st_scram_server *ss)
{
    return ss->username;
}

/* ---- XEP-0474 downgrade protection ---- */

static int cmp_name(const void *a, const void *b)
{
    /* strcmp compares as unsigned char: the i;octet collation (RFC 4790 §9.3) */
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Append the names sorted, joined with %x1E. */
static int append_sorted(st_buf *s, const char *const *names, size_t n)
{
    const char *sorted[ST_SCRAM_SSDP_MAX];
    if (n > ST_SCRAM_SSDP_MAX)
        return -1;
    if (n == 0)
        return 0;
    memcpy(sorted, names, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_name);
    for (size_t i = 0; i < n; i++)
        if ((i && st_buf_append(s, "\x1e", 1) != 0) || st_buf_appends(s, sorted[i]) != 0)
            return -1;
    return 0;
}

int st_scram_ssdp_value(st_scram_hash h, const char *const *mechs, size_t nmechs,
                        const char *const *cb_types, size_t ncb, st_buf *out)
{
    unsigned char md[ST_SCRAM_KEY_MAX];
    st_buf s;
    int rc = -1;
    st_buf_init(&s, 4096);
    if (st_scram_hash_len(h) == 0 || (nmechs && !mechs))
        goto done;
    if (append_sorted(&s, mechs, nmechs) != 0)
        goto done;
    if (cb_types && ncb &&
        (st_buf_append(&s, "\x1f", 1) != 0 || append_sorted(&s, cb_types, ncb) != 0))
        goto done;
    if (digest(h, s.len ? s.data : "", s.len, md) != 0)
        goto done;
    rc = st_base64_encode(md, st_scram_hash_len(h), out);
done:
    st_buf_free(&s);
    return rc;
}

int st_scram_server_set_ssdp(st_scram_server *ss, const char *const *mechs, size_t nmechs,
                             const char *const *cb_types, size_t ncb)
{
    if (ss->state != SS_NEW && ss->state != SS_STARTED)
        return -1;
    st_buf_reset(&ss->ssdp);
    return st_scram_ssdp_value(ss->h, mechs, nmechs, cb_types, ncb, &ss->ssdp);
}

/* Check the gs2-cbind-flag against what was negotiated. NULL = fine. */
static const char *check_binding(st_scram_server *ss, char flag, const char *name,
                                 size_t nlen)
{
    if (ss->plus && !ss->have_tls)
        return ERR_ENCRYPTION;
    if (flag == 'n')
        return ss->plus ? ERR_MALFORMED : NULL;
    if (flag == 'y') {
        if (ss->plus)
            return ERR_MALFORMED;
        /* RFC 5802 §6: the client could bind and thinks we cannot, yet we
         * offered -PLUS: someone stripped it from our feature list. */
        return ss->plus_advertised ? ERR_NOT_AUTHORIZED : NULL;
    }
    /* flag == 'p' */
    if (!ss->plus)
        return ERR_MALFORMED;
    if (nlen == 12 && memcmp(name, "tls-exporter", 12) == 0) {
        if (ss->exporter_len == 0)
            return ERR_MALFORMED;
        ss->cb = CB_EXPORTER;
        return NULL;
    }
    if (nlen == 20 && memcmp(name, "tls-server-end-point", 20) == 0) {
        if (ss->end_point_len == 0)
            return ERR_MALFORMED;
        ss->cb = CB_END_POINT;
        return NULL;
    }
    /* tls-unique does not exist in TLS 1.3, and we bind to nothing else. */
    return ERR_MALFORMED;
}

int st_scram_server_start(st_scram_server *ss, const char *msg, size_t len,
                          const char **username, const char **err)
{
    cursor c = {msg, msg + len};
    const char *v, *cbname = NULL;
    size_t vl, cbname_len = 0;
    char flag;
    const char *e = ERR_MALFORMED;

    *username = NULL;
    if (ss->state != SS_NEW)
        goto fail;
    ss->state = SS_DONE; /* one attempt per object */
    if (!msg || len == 0 || len > SCRAM_MSG_MAX || memchr(msg, '\0', len))
        goto fail;

    /* gs2-header = gs2-cbind-flag "," [ authzid ] "," */
    flag = *c.p;
    if (flag == 'n' || flag == 'y') {
        c.p++;
    } else if (flag == 'p') {
        if (take_attr(&c, 'p', &cbname, &cbname_len) != 0 || !cbname_ok(cbname, cbname_len))
            goto fail;
    } else {
        goto fail;
    }
    if (take_comma(&c) != 0)
        goto fail;
    if (c.p < c.end && *c.p == 'a') {
        if (take_attr(&c, 'a', &v, &vl) != 0)
            goto fail;
        /* value-safe-char is UTF-8; refusing bad sequences here keeps
         * garbage out of account lookups and logs. */
        ss->authzid = saslname_decode(v, vl);
        if (!ss->authzid || !st_utf8_valid(ss->authzid, strlen(ss->authzid)))
            goto fail;
        /* In XMPP an authzid is a JID (RFC 6120 §6.3.8). */
        st_jid j;
        if (st_jid_parse(&j, ss->authzid, strlen(ss->authzid)) != 0) {
            e = ERR_INVALID_AUTHZID;
            goto fail;
        }
        st_jid_free(&j);
    }
    if (take_comma(&c) != 0)
        goto fail;
    if (st_buf_append(&ss->gs2_header, msg, (size_t)(c.p - msg)) != 0)
        goto fail;

    /* client-first-message-bare = [reserved-mext ","] username "," nonce
     * ["," extensions]; m= means an extension we must understand, and we
     * understand none. */
    const char *bare = c.p;
    if (take_attr(&c, 'n', &v, &vl) != 0)
        goto fail;
    ss->username = saslname_decode(v, vl);
    if (!ss->username || !st_utf8_valid(ss->username, strlen(ss->username)))
        goto fail;
    if (take_comma(&c) != 0 || take_attr(&c, 'r', &v, &vl) != 0 || !nonce_ok(v, vl))
        goto fail;
    if (st_buf_append(&ss->nonce, v, vl) != 0)
        goto fail;
    if (skip_extensions(&c) != 0)
        goto fail;
    if (st_buf_append(&ss->first_bare, bare, (size_t)(c.end - bare)) != 0)
        goto fail;

    /* Syntax first, policy second: a garbled message is malformed even when
     * the binding would also be wrong. */
    e = check_binding(ss, flag, cbname, cbname_len);
    if (e)
        goto fail;

    ss->state = SS_STARTED;
    *username = ss->username;
    return 0;

fail:
    if (err)
        *err = e;
    return -1;
}

static int append_nonce_part(st_scram_server *ss)
{
    unsigned char rnd[SNONCE_BYTES];
    if (ss->snonce_override)
        return st_buf_appends(&ss->nonce, ss->snonce_override);
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return -1;
    return st_base64_encode(rnd, sizeof rnd, &ss->nonce);
}

int st_scram_server_challenge(st_scram_server *ss, const st_scram_cred *cred, st_buf *out)
{
    if (ss->state != SS_STARTED)
        return -1;
    ss->state = SS_DONE;

    if (cred) {
        if (cred->hash != ss->h || cred->iterations == 0 || cred->iterations > INT_MAX ||
            cred->salt_len == 0 || cred->salt_len > ST_SCRAM_SALT_MAX)
            return -1;
        ss->cred = *cred;
        ss->fake = 0;
    } else {
        /* Same salt for the same name every time in this process, so that
         * probing twice does not reveal the account is missing. */
        unsigned char mac[32];
        pthread_once(&fake_once, fake_key_init);
        if (!fake_key_ok)
            return -1;
        if (hmac(ST_SCRAM_SHA256, fake_key, sizeof fake_key, ss->username, strlen(ss->username),
                 mac) != 0)
            return -1;
        memset(&ss->cred, 0, sizeof ss->cred);
        ss->cred.hash = ss->h;
        ss->cred.iterations = ST_SCRAM_DEFAULT_ITERATIONS;
        memcpy(ss->cred.salt, mac, FAKE_SALT_LEN);
        ss->cred.salt_len = FAKE_SALT_LEN;
        if (RAND_bytes(ss->cred.stored_key, sizeof ss->cred.stored_key) != 1 ||
            RAND_bytes(ss->cred.server_key, sizeof ss->cred.server_key) != 1)
            return -1;
        ss->fake = 1;
    }

    if (append_nonce_part(ss) != 0)
        return -1;
    st_buf *sf = &ss->server_first;
    if (st_buf_appends(sf, "r=") != 0 || st_buf_append(sf, ss->nonce.data, ss->nonce.len) != 0 ||
        st_buf_appends(sf, ",s=") != 0 ||
        st_base64_encode(ss->cred.salt, ss->cred.salt_len, sf) != 0 ||
        st_buf_printf(sf, ",i=%u", ss->cred.iterations) != 0)
        return -1;
    /* XEP-0474: an extension attribute, so it is covered by AuthMessage and
     * thus by the client's proof; unknown users get it too (same shape). */
    if (ss->ssdp.len && (st_buf_appends(sf, ",h=") != 0 ||
                         st_buf_append(sf, ss->ssdp.data, ss->ssdp.len) != 0))
        return -1;
    if (st_buf_append(out, sf->data, sf->len) != 0)
        return -1;
    ss->state = SS_CHALLENGED;
    return 0;
}

int st_scram_server_finish(st_scram_server *ss, const char *msg, size_t len, st_buf *out,
                           const char **err)
{
    const char *e = ERR_MALFORMED;
    const char *v;
    size_t vl, hl = st_scram_hash_len(ss->h);
    st_buf tmp, am;
    unsigned char sig[ST_SCRAM_KEY_MAX], ck[ST_SCRAM_KEY_MAX], stk[ST_SCRAM_KEY_MAX];
    int rc = -1;

    st_buf_init(&tmp, SCRAM_MSG_MAX);
    st_buf_init(&am, 3 * SCRAM_MSG_MAX);
    if (ss->state != SS_CHALLENGED) {
        e = ERR_NOT_AUTHORIZED;
        goto done;
    }
    ss->state = SS_DONE;
    if (!msg || len == 0 || len > SCRAM_MSG_MAX || memchr(msg, '\0', len))
        goto done;

    /* The proof is last and its base64 holds no ',', so it starts after the
     * last comma; everything before is client-final-message-without-proof. */
    const char *last = memrchr(msg, ',', len);
    if (!last)
        goto done;
    size_t wp_len = (size_t)(last - msg);
    cursor pc = {last + 1, msg + len};
    const char *proof;
    size_t proof_len;
    if (take_attr(&pc, 'p', &proof, &proof_len) != 0 || pc.p != pc.end)
        goto done;

    /* channel-binding "," nonce ["," extensions] */
    cursor c = {msg, msg + wp_len};
    if (take_attr(&c, 'c', &v, &vl) != 0)
        goto done;
    /* c= is base64(gs2-header || cbind-data): it repeats the header so that
     * a man in the middle cannot have changed the flag or the authzid. */
    if (st_base64_decode(v, vl, &tmp) != 0)
        goto done;
    {
        const unsigned char *cbd = NULL;
        size_t cbl = 0;
        if (ss->cb == CB_EXPORTER) {
            cbd = ss->exporter;
            cbl = ss->exporter_len;
        } else if (ss->cb == CB_END_POINT) {
            cbd = ss->end_point;
            cbl = ss->end_point_len;
        }
        size_t gl = ss->gs2_header.len;
        if (tmp.len != gl + cbl || memcmp(tmp.data, ss->gs2_header.data, gl) != 0) {
            goto done;
        }
        if (cbl && !st_ct_equal(tmp.data + gl, cbd, cbl)) {
            /* Well formed, but bound to another TLS session: a relay. */
            e = ERR_NOT_AUTHORIZED;
            goto done;
        }
    }
    if (take_comma(&c) != 0 || take_attr(&c, 'r', &v, &vl) != 0)
        goto done;
    if (vl != ss->nonce.len || memcmp(v, ss->nonce.data, vl) != 0)
        goto done;
    if (skip_extensions(&c) != 0)
        goto done;

    st_buf_reset(&tmp);
    if (st_base64_decode(proof, proof_len, &tmp) != 0 || tmp.len != hl)
        goto done;

    /* AuthMessage := client-first-message-bare + "," + server-first-message
     *                + "," + client-final-message-without-proof */
    e = ERR_TEMPORARY;
    if (st_buf_append(&am, ss->first_bare.data, ss->first_bare.len) != 0 ||
        st_buf_append(&am, ",", 1) != 0 ||
        st_buf_append(&am, ss->server_first.data, ss->server_first.len) != 0 ||
        st_buf_append(&am, ",", 1) != 0 || st_buf_append(&am, msg, wp_len) != 0)
        goto done;

    /* ClientKey := ClientProof XOR HMAC(StoredKey, AuthMessage);
     * valid iff H(ClientKey) == StoredKey. */
    if (hmac(ss->h, ss->cred.stored_key, hl, am.data, am.len, sig) != 0)
        goto done;
    for (size_t i = 0; i < hl; i++)
        ck[i] = (unsigned char)tmp.data[i] ^ sig[i];
    if (digest(ss->h, ck, hl, stk) != 0)
        goto done;
    e = ERR_NOT_AUTHORIZED;
    if (!st_ct_equal(stk, ss->cred.stored_key, hl) || ss->fake)
        goto done;

    /* ServerSignature := HMAC(ServerKey, AuthMessage) */
    e = ERR_TEMPORARY;
    if (hmac(ss->h, ss->cred.server_key, hl, am.data, am.len, sig) != 0)
        goto done;
    size_t orig = out->len;
    if (st_buf_appends(out, "v=") != 0)
        goto done;
    if (st_base64_encode(sig, hl, out) != 0) {
        if (out->data) {
            out->len = orig;
            out->data[orig] = '\0';
        }
        goto done;
    }
    rc = 0;

done:
    OPENSSL_cleanse(sig, sizeof sig);
    OPENSSL_cleanse(ck, sizeof ck);
    OPENSSL_cleanse(stk, sizeof stk);
    st_buf_free(&tmp);
    st_buf_free(&am);
    if (rc != 0 && err)
        *err = e;
    return rc;
}

/* ---- client ---- */

enum client_state { SC_NEW, SC_FIRST_SENT, SC_FINAL_SENT, SC_DONE };

struct st_scram_client {
    st_scram_hash h;
    enum client_state state;
    char *password;              /* SASLprep'd; wiped on free */
    st_buf user;                 /* saslname-encoded username */
    st_buf gs2_header;
    unsigned char cbdata[CBIND_MAX];
    size_t cb_len;
    char *cnonce_override;
    st_buf cnonce;
    st_buf first_bare;
    unsigned char sp[ST_SCRAM_KEY_MAX];
    int have_sp;
    unsigned char server_sig[ST_SCRAM_KEY_MAX];
};

st_scram_client *st_scram_client_new(st_scram_hash h, const char *username,
                                     const char *password, const char *cb_name,
                                     const unsigned char *cb_data, size_t cb_len,
                                     int client_supports_plus)
{
    st_scram_client *sc = NULL;
    char *user = NULL;

    if (st_scram_hash_len(h) == 0 || !username || !password)
        return NULL;
    if (cb_name && (!cbname_ok(cb_name, strlen(cb_name)) || !cb_data || cb_len == 0 ||
                    cb_len > CBIND_MAX))
        return NULL;
    sc = st_calloc(1, sizeof *sc);
    if (!sc)
        return NULL;
    sc->h = h;
    st_buf_init(&sc->user, SCRAM_MSG_MAX);
    st_buf_init(&sc->gs2_header, SCRAM_MSG_MAX);
    st_buf_init(&sc->cnonce, SCRAM_MSG_MAX);
    st_buf_init(&sc->first_bare, SCRAM_MSG_MAX);

    /* RFC 5802 §5.1: the client SHOULD SASLprep the username. */
    user = saslprep_dup(username);
    if (!user || !*user)
        goto fail;
    if (saslname_encode(&sc->user, user) != 0)
        goto fail;
    sc->password = saslprep_dup(password);
    if (!sc->password)
        goto fail;

    int rc;
    if (cb_name) {
        rc = st_buf_printf(&sc->gs2_header, "p=%s,,", cb_name);
        memcpy(sc->cbdata, cb_data, cb_len);
        sc->cb_len = cb_len;
    } else {
        rc = st_buf_appends(&sc->gs2_header, client_supports_plus ? "y,," : "n,,");
    }
    if (rc != 0)
        goto fail;
    st_free(user);
    return sc;

fail:
    st_free(user);
    st_scram_client_free(sc);
    return NULL;
}

void st_scram_client_free(st_scram_client *sc)
{
    if (!sc)
        return;
    free_secret(sc->password);
    st_free(sc->cnonce_override);
    st_buf_free(&sc->user);
    st_buf_free(&sc->gs2_header);
    st_buf_free(&sc->cnonce);
    st_buf_free(&sc->first_bare);
    OPENSSL_cleanse(sc, sizeof *sc);
    st_free(sc);
}

void st_scram_client_set_nonce(st_scram_client *sc, const char *nonce)
{
    st_free(sc->cnonce_override);
    sc->cnonce_override = nonce ? st_strdup(nonce) : NULL;
}

int st_scram_client_set_salted_password(st_scram_client *sc, const unsigned char *sp, size_t n)
{
    if (n != st_scram_hash_len(sc->h))
        return -1;
    memcpy(sc->sp, sp, n);
    sc->have_sp = 1;
    return 0;
}

const unsigned char *st_scram_client_salted_password(const st_scram_client *sc, size_t *n)
{
    if (!sc->have_sp)
        return NULL;
    if (n)
        *n = st_scram_hash_len(sc->h);
    return sc->sp;
}

int st_scram_client_first(st_scram_client *sc, st_buf *out)
{
    unsigned char rnd[CNONCE_BYTES];

    if (sc->state != SC_NEW)
        return -1;
    st_buf_reset(&sc->cnonce);
    st_buf_reset(&sc->first_bare);
    if (sc->cnonce_override) {
        if (st_buf_appends(&sc->cnonce, sc->cnonce_override) != 0)
            return -1;
    } else {
        if (RAND_bytes(rnd, sizeof rnd) != 1 ||
            st_base64_encode(rnd, sizeof rnd, &sc->cnonce) != 0)
            return -1;
    }
    if (!nonce_ok(sc->cnonce.data, sc->cnonce.len))
        return -1;
    if (st_buf_appends(&sc->first_bare, "n=") != 0 ||
        st_buf_append(&sc->first_bare, sc->user.data, sc->user.len) != 0 ||
        st_buf_appends(&sc->first_bare, ",r=") != 0 ||
        st_buf_append(&sc->first_bare, sc->cnonce.data, sc->cnonce.len) != 0)
        return -1;
    size_t orig = out->len;
    if (st_buf_append(out, sc->gs2_header.data, sc->gs2_header.len) != 0)
        return -1;
    if (st_buf_append(out, sc->first_bare.data, sc->first_bare.len) != 0) {
        if (out->data) {
            out->len = orig;
            out->data[orig] = '\0';
        }
        return -1;
    }
    sc->state = SC_FIRST_SENT;
    return 0;
}

int st_scram_client_final(st_scram_client *sc, const char *server_first, size_t len,
                          st_buf *out)
{
    cursor c = {server_first, server_first + len};
    const char *nonce, *v;
    size_t nonce_len, vl, hl = st_scram_hash_len(sc->h);
    st_buf salt, wp, am;
    unsigned char ck[ST_SCRAM_KEY_MAX], stk[ST_SCRAM_KEY_MAX], svk[ST_SCRAM_KEY_MAX],
        sig[ST_SCRAM_KEY_MAX];
    unsigned long iter = 0;
    int rc = -1;

    st_buf_init(&salt, CLIENT_SALT_MAX);
    st_buf_init(&wp, SCRAM_MSG_MAX);
    st_buf_init(&am, 3 * SCRAM_MSG_MAX);
    if (sc->state != SC_FIRST_SENT)
        goto done;
    sc->state = SC_DONE;
    if (!server_first || len == 0 || len > SCRAM_MSG_MAX || memchr(server_first, '\0', len))
        goto done;

    /* server-first-message = [reserved-mext ","] nonce "," salt ","
     *                        iteration-count ["," extensions] */
    if (take_attr(&c, 'r', &nonce, &nonce_len) != 0 || !nonce_ok(nonce, nonce_len))
        goto done;
    /* The server must extend our nonce, not replace it. */
    if (nonce_len <= sc->cnonce.len || memcmp(nonce, sc->cnonce.data, sc->cnonce.len) != 0)
        goto done;
    if (take_comma(&c) != 0 || take_attr(&c, 's', &v, &vl) != 0)
        goto done;
    if (st_base64_decode(v, vl, &salt) != 0 || salt.len == 0)
        goto done;
    if (take_comma(&c) != 0 || take_attr(&c, 'i', &v, &vl) != 0 || vl == 0 || vl > 9)
        goto done;
    for (size_t i = 0; i < vl; i++) {
        if (v[i] < '0' || v[i] > '9')
            goto done;
        iter = iter * 10 + (unsigned long)(v[i] - '0');
    }
    if (iter < CLIENT_ITER_MIN || iter > CLIENT_ITER_MAX)
        goto done;
    if (skip_extensions(&c) != 0)
        goto done;

    if (!sc->have_sp) {
        if (salted_password(sc->h, sc->password, (const unsigned char *)salt.data, salt.len,
                            (unsigned)iter, sc->sp) != 0)
            goto done;
        sc->have_sp = 1;
    }
    if (derive_keys(sc->h, sc->sp, ck, stk, svk) != 0)
        goto done;

    /* client-final-message-without-proof = "c=" base64(gs2-header ||
     * cbind-data) "," "r=" nonce */
    {
        st_buf cbi;
        st_buf_init(&cbi, SCRAM_MSG_MAX);
        int r = st_buf_append(&cbi, sc->gs2_header.data, sc->gs2_header.len);
        if (r == 0 && sc->cb_len)
            r = st_buf_append(&cbi, sc->cbdata, sc->cb_len);
        if (r == 0)
            r = st_buf_appends(&wp, "c=");
        if (r == 0)
            r = st_base64_encode(cbi.data, cbi.len, &wp);
        st_buf_free(&cbi);
        if (r != 0)
            goto done;
    }
    if (st_buf_appends(&wp, ",r=") != 0 || st_buf_append(&wp, nonce, nonce_len) != 0)
        goto done;

    if (st_buf_append(&am, sc->first_bare.data, sc->first_bare.len) != 0 ||
        st_buf_append(&am, ",", 1) != 0 || st_buf_append(&am, server_first, len) != 0 ||
        st_buf_append(&am, ",", 1) != 0 || st_buf_append(&am, wp.data, wp.len) != 0)
        goto done;

    /* ClientProof := ClientKey XOR HMAC(StoredKey, AuthMessage) */
    if (hmac(sc->h, stk, hl, am.data, am.len, sig) != 0)
        goto done;
    for (size_t i = 0; i < hl; i++)
        sig[i] ^= ck[i];
    if (hmac(sc->h, svk, hl, am.data, am.len, sc->server_sig) != 0)
        goto done;
    if (st_buf_appends(&wp, ",p=") != 0 || st_base64_encode(sig, hl, &wp) != 0)
        goto done;
    if (st_buf_append(out, wp.data, wp.len) != 0)
        goto done;
    sc->state = SC_FINAL_SENT;
    rc = 0;

done:
    OPENSSL_cleanse(ck, sizeof ck);
    OPENSSL_cleanse(stk, sizeof stk);
    OPENSSL_cleanse(svk, sizeof svk);
    OPENSSL_cleanse(sig, sizeof sig);
    st_buf_free(&salt);
    st_buf_free(&wp);
    st_buf_free(&am);
    return rc;
}

int st_scram_client_verify(st_scram_client *sc, const char *server_final, size_t len)
{
    cursor c = {server_final, server_final + len};
    const char *v;
    size_t vl, hl = st_scram_hash_len(sc->h);
    st_buf sig;
    int rc = -1;

    st_buf_init(&sig, 256);
    if (sc->state != SC_FINAL_SENT)
        goto done;
    sc->state = SC_DONE;
    if (!server_final || len > SCRAM_MSG_MAX || memchr(server_final, '\0', len))
        goto done;
    /* server-final-message = (server-error / verifier) ["," extensions];
     * "e=..." is a failure whatever it says. */
    if (take_attr(&c, 'v', &v, &vl) != 0 || skip_extensions(&c) != 0)
        goto done;
    if (st_base64_decode(v, vl, &sig) != 0 || sig.len != hl)
        goto done;
    if (st_ct_equal(sig.data, sc->server_sig, hl))
        rc = 0;

done:
    st_buf_free(&sig);
    return rc;
}
