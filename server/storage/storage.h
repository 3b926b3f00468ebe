/* storage.h - the storage interface: synchronous back ends behind an
 * asynchronous front.
 *
 * A back end (sqlite.c, later postgresql.c) implements st_store_ops with plain
 * blocking calls. starlingd never calls them on its event loop: st_storage
 * runs them on a storage thread and hands the completion back to the loop
 * (an eventfd the loop watches; st_storage_dispatch() runs the done
 * callbacks on the loop thread). starlingctl, used offline, calls the back end
 * directly.
 *
 * Users are keyed by (host, username) where username is already nodeprep'd.
 * Passwords are never stored: only SCRAM credentials for SHA-1 and SHA-256.
 * The schema is versioned; st_store_ops.open migrates an older schema forward. */
#ifndef STARLING_STORAGE_H
#define STARLING_STORAGE_H
#include <stddef.h>
#include "starling/scram.h"

typedef struct st_user_creds {
    st_scram_cred sha1;
    st_scram_cred sha256;
} st_user_creds;

/* Derive both credentials from a password (random salts, default iterations). */
int st_user_creds_make(st_user_creds *out, const char *password);

typedef struct st_store_ops {
    const char *name; /* "sqlite" */
    /* dsn: for sqlite, the database file path. 0 or -1 with a message in err. */
    int (*open)(void **h, const char *dsn, char *err, size_t errlen);
    void (*close)(void *h);
    int (*schema_version)(void *h); /* current version, -1 on error */
    /* 1 found, 0 not found, -1 error */
    int (*user_get)(void *h, const char *host, const char *user, st_user_creds *out);
    /* 0 created, 1 already exists, -1 error */
    int (*user_create)(void *h, const char *host, const char *user, const st_user_creds *c);
    /* 0 changed, 1 no such user, -1 error */
    int (*user_set_creds)(void *h, const char *host, const char *user, const st_user_creds *c);
    /* 0 deleted (with everything the user owns), 1 no such user, -1 error */
    int (*user_delete)(void *h, const char *host, const char *user);
    /* Calls each() for every user of host, in name order. Count or -1. */
    int (*user_list)(void *h, const char *host, void (*each)(void *ud, const char *user),
                     void *ud);
} st_store_ops;

extern const st_store_ops st_store_sqlite;
const st_store_ops *st_store_find(const char *name); /* NULL if unknown */

/* ---- asynchronous front ---- */
typedef struct st_storage st_storage;

/* Opens the back end on a new storage thread. NULL with a message in err. */
st_storage *st_storage_start(const st_store_ops *ops, const char *dsn, char *err, size_t errlen);
/* Finishes queued work, closes the back end, joins the thread. */
void st_storage_stop(st_storage *s);
/* Readable when completions are waiting; the loop then calls dispatch. */
int st_storage_fd(const st_storage *s);
void st_storage_dispatch(st_storage *s);

/* Run work(h, arg) on the storage thread with the back end handle, then
 * done(arg) on the loop thread from st_storage_dispatch(). arg belongs to the
 * caller throughout; done must free it. If the requester went away meanwhile,
 * done still runs and must notice (e.g. a cancelled flag in arg). 0 or -1. */
int st_storage_submit(st_storage *s, void (*work)(void *h, void *arg), void (*done)(void *arg),
                      void *arg);
const st_store_ops *st_storage_ops(const st_storage *s);

#endif
