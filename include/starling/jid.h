/* jid.h - XMPP addresses (RFC 7622 syntax), normalised with stringprep.
 *
 * Normalisation uses the RFC 3920/6122 stringprep profiles (Nodeprep,
 * Nameprep, Resourceprep) from libidn, as Prosody and ejabberd do, so that
 * JIDs compare the same way across the federation; see docs/ARCHITECTURE.md.
 * Each part is at most 1023 bytes after preparation; an empty localpart or
 * resource after a separator ("@d", "d/") is invalid; IP literals are kept.
 *
 * A parsed st_jid owns one allocation holding all three parts. */
#ifndef STARLING_JID_H
#define STARLING_JID_H
#include <stddef.h>

#define ST_JID_PART_MAX 1023

typedef struct st_jid {
    char *node;     /* NULL if absent */
    char *domain;   /* never NULL after a successful parse */
    char *resource; /* NULL if absent */
    char *mem;      /* the one allocation (owned) */
} st_jid;

/* Parse and normalise. Returns 0, or -1 if the string is not a valid JID
 * (the stanza error is jid-malformed). out is zeroed on failure. */
int st_jid_parse(st_jid *out, const char *s, size_t len);
void st_jid_free(st_jid *j);
int st_jid_copy(st_jid *dst, const st_jid *src);
/* Build from parts (each may be NULL except domain); parts are normalised. */
int st_jid_make(st_jid *out, const char *node, const char *domain, const char *resource);

/* "node@domain" or "node@domain/resource"; caller frees with st_free. */
char *st_jid_bare(const st_jid *j);
char *st_jid_full(const st_jid *j);
/* Write into a caller buffer; returns length or -1 if it does not fit. */
int st_jid_format(const st_jid *j, int with_resource, char *out, size_t outsz);

/* Compare normalised JIDs; with_resource = 0 compares bare JIDs. */
int st_jid_equal(const st_jid *a, const st_jid *b, int with_resource);

/* Prepare one part. Returns length written, or -1 if invalid / too long. */
int st_nodeprep(const char *in, char *out, size_t outsz);
int st_nameprep(const char *in, char *out, size_t outsz);
int st_resourceprep(const char *in, char *out, size_t outsz);
/* SASLprep (RFC 4013) for passwords and SASL usernames. */
int st_saslprep(const char *in, char *out, size_t outsz);

#endif
