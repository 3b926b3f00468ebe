/* c2s.h - client-to-server connections (RFC 6120 streams over TCP/TLS).
 *
 * A connection negotiates TLS (STARTTLS, or direct TLS per XEP-0368), SASL
 * and resource binding, then hands stanzas to the router through its
 * session. Connections are reference counted: storage jobs and deferred IQ
 * replies hold a reference, so a connection that closes meanwhile is freed
 * only when the last holder lets go (check st_conn_is_closed first). */
#ifndef STARLING_C2S_H
#define STARLING_C2S_H
#include "server/server.h"

/* Accept-side constructor: fd is a connected non-blocking socket. */
st_conn *st_conn_accept(st_server *s, int fd, const char *peer, int direct_tls);

st_conn *st_conn_ref(st_conn *c);
void st_conn_unref(st_conn *c);
int st_conn_is_closed(const st_conn *c);

/* Queue a stanza (serialised with its cached wire form). 0 or -1. */
int st_conn_send(st_conn *c, st_stanza *st);
int st_conn_send_raw(st_conn *c, const char *data, size_t len);
/* st_conn_send with 'to' spliced in (the stanza must have no 'to'). */
int st_conn_send_to(st_conn *c, st_stanza *st, const char *to);
/* Close the stream: with a stream error if condition is non-NULL, then
 * </stream:stream>, flush, and shut the socket. */
void st_conn_close(st_conn *c, const char *condition, const char *text);

/* Drop the connection at once, without a goodbye (server teardown). */
void st_conn_close_now(st_conn *c);
st_conn *st_conn_next(const st_conn *c); /* the server's list of connections */
/* Bytes queued for the client and not yet written (0 for NULL). */
size_t st_conn_queued(const st_conn *c);
/* Release what an idle connection can rebuild when it needs it: the XML
 * parser's memory (st_xmlstream_compact), an empty output buffer, and the
 * login's state once a session runs. Only if nothing arrived for idle_ms.
 * 1 if the parser was released. The server's sweep calls this. */
int st_conn_rest(st_conn *c, uint64_t now_ms, uint64_t idle_ms);

const char *st_conn_peer(const st_conn *c);    /* "127.0.0.1:5555" */
const char *st_conn_peer_ip(const st_conn *c); /* "127.0.0.1" */
int st_conn_is_secure(const st_conn *c);
const char *st_conn_tls_version(const st_conn *c); /* "TLSv1.3" or "none" */
st_session *st_conn_session(const st_conn *c);
st_host *st_conn_host(const st_conn *c); /* NULL before the stream header */
void st_conn_detach_session(st_conn *c); /* the session no longer uses this conn */

#endif
