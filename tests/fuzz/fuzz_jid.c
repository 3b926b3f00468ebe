/* fuzz_jid.c - libFuzzer target for JID parsing and normalisation.
 *
 * Beyond "never crash", it checks the property the router relies on:
 * normalisation is a fixed point. Formatting a parsed JID and parsing the
 * result again must give the same JID, or two stanzas for one user could be
 * routed as if they were for two. Copy, make-from-parts, bare/full and the
 * prep functions are exercised on the same input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "starling/alloc.h"
#include "starling/jid.h"

#define FULL_MAX (3 * (ST_JID_PART_MAX + 1))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_jid j, k, m, c;
    char buf[FULL_MAX];

    if (st_jid_parse(&j, (const char *)data, size) != 0) {
        /* out is zeroed on failure */
        if (j.mem || j.domain || j.node || j.resource)
            abort();
        goto prep_only;
    }

    int n = st_jid_format(&j, 1, buf, sizeof buf);
    if (n < 0)
        abort();
    if (st_jid_parse(&k, buf, (size_t)n) != 0)
        abort(); /* a normalised JID must parse */
    if (!st_jid_equal(&j, &k, 1) || !st_jid_equal(&j, &k, 0))
        abort(); /* and parse to itself */

    char *full = st_jid_full(&j);
    char *bare = st_jid_bare(&j);
    if (full && strcmp(full, buf) != 0)
        abort();
    if (bare) {
        int bn = st_jid_format(&j, 0, buf, sizeof buf);
        if (bn < 0 || strcmp(bare, buf) != 0)
            abort();
    }
    st_free(full);
    st_free(bare);

    if (st_jid_make(&m, j.node, j.domain, j.resource) == 0) {
        if (!st_jid_equal(&j, &m, 1))
            abort();
        st_jid_free(&m);
    } else {
        abort(); /* normalised parts must be accepted as parts */
    }
    if (st_jid_copy(&c, &j) == 0) {
        if (!st_jid_equal(&j, &c, 1))
            abort();
        st_jid_free(&c);
    }
    /* A too-small buffer is refused, never overrun. */
    if (n > 0 && st_jid_format(&j, 1, buf, (size_t)n) != -1)
        abort();
    st_jid_free(&k);
    st_jid_free(&j);

prep_only:
    /* The prep functions on the raw input as a C string. */
    if (size < 4 * ST_JID_PART_MAX) {
        char *s = malloc(size + 1);
        if (!s)
            return 0;
        memcpy(s, data, size);
        s[size] = '\0';
        char out[ST_JID_PART_MAX + 1];
        char big[8 * ST_JID_PART_MAX];
        st_nodeprep(s, out, sizeof out);
        st_nameprep(s, out, sizeof out);
        st_resourceprep(s, out, sizeof out);
        int r = st_saslprep(s, big, sizeof big);
        if (r >= 0) {
            /* SASLprep is idempotent too. */
            char again[8 * ST_JID_PART_MAX];
            int r2 = st_saslprep(big, again, sizeof again);
            if (r2 != r || memcmp(big, again, (size_t)r) != 0)
                abort();
        }
        free(s);
    }
    return 0;
}
