/* sm.h - XEP-0198 stream management: acks, the unacknowledged queue,
 * hibernation and resumption of sessions.
 *
 * A session with stream management keeps every stanza it sends in a queue
 * until the client acknowledges it (<a h='N'/>). When the TCP connection
 * drops without a closing </stream:stream>, the session hibernates: it
 * stays registered and available, stanzas for it go into the queue, and a
 * new connection can resume it with the id within the resumption window.
 * When a session with unacknowledged stanzas ends for good, its messages
 * are routed again as undelivered (to the user's other resources or to
 * offline storage), IQ requests are answered with an error, and presence is
 * dropped: nothing accepted is lost. */
#ifndef STARLING_SM_H
#define STARLING_SM_H
#include <stdint.h>
#include "server/server.h"

#define ST_NS_SM "urn:xmpp:sm:3"

typedef struct st_sm_item {
    st_stanza *st; /* a reference */
    char *to;      /* 'to' spliced on the way out (shared presence), or NULL */
} st_sm_item;

typedef struct st_sm {
    char id[48];
    uint32_t h_in;    /* stanzas handled from the client */
    uint32_t h_sent;  /* stanzas sent to the client */
    uint32_t h_acked; /* the client's last <a h=.../> */
    st_sm_item *q;    /* ring of unacknowledged stanzas; q[head] is h_acked + 1 */
    size_t qcap, qhead, qlen;
    int resumable;
    unsigned max_s;   /* resumption window */
    unsigned since_r; /* stanzas sent since we last asked for an ack */
    st_timer hibernate;
    st_session *sess;
} st_sm;

/* Enable on a bound session. resume: the client asked for resumption. */
st_sm *st_sm_enable(st_session *sess, int resume, unsigned max_s);
/* Keep a stanza sent to the session (-1 if the queue is full: the caller
 * ends the session, since a client that never acks cannot be kept). */
int st_sm_keep(st_sm *sm, st_stanza *st, const char *to);
/* The client acknowledged h. 0, or -1 if h acknowledges more than was
 * sent (a stream error: <handled-count-too-high/>). */
int st_sm_ack(st_sm *sm, uint32_t h);
/* Should we ask for an ack now (<r/>)? Resets the counter when it says yes. */
int st_sm_want_ack(st_sm *sm);
/* Start the resumption window; at its end the session ends. */
void st_sm_hibernate(st_sm *sm);
/* Write every queued stanza to the session's (new) connection. */
void st_sm_replay(st_sm *sm);
/* The session is ending: route what it never acknowledged, free sm. */
void st_sm_end(st_sm *sm);
/* Find a resumable session by the id given in <enabled/>. */
st_session *st_sm_find(st_server *s, const char *id);

#endif
