/* c2s.c - client connections: stream negotiation, TLS, SASL and SASL2, bind
 * and Bind2.
 *
 * Design note. A connection is a small state machine driven by two inputs:
 * socket readiness (loop callbacks) and parsed elements (xmlstream
 * handlers). Bytes go socket -> (TLS) -> st_xmlstream -> on_stanza(); replies
 * go into one bounded output buffer that is written as soon as possible.
 *
 *   accept -> [direct TLS handshake] -> header -> features
 *          -> [<starttls/> -> TLS handshake -> header -> features]
 *          -> <auth/> ... <success/> -> header -> features -> bind -> BOUND
 *          or <authenticate/> ... <success/> (XEP-0388: no restart; Bind2,
 *             SM resumption and FAST tokens inline, XEP-0386/0198/0484) -> BOUND
 *
 * Fairness and limits live here because they are per connection: a token
 * bucket on bytes read (c2s_rate/c2s_burst), a read budget per loop
 * iteration, a bounded output queue (a reader too slow is disconnected, never
 * buffered without bound), a handshake timeout and an idle ping.
 *
 * Closing: a stream error is queued, then </stream:stream>; once the output
 * is flushed we shut down our side and keep draining (discarding) input for
 * a short linger, so the peer sees the error instead of a TCP reset. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "server/c2s.h"
#include "server/guard.h"
#include "server/sm.h"
#include "server/csi.h"
#include "server/fast.h"
#include "server/log.h"
#include "server/tls.h"
#include "server/tlshs.h"
#include "server/tlsrec.h"
#include "starling/alloc.h"
#include "starling/base64.h"
#include "starling/error.h"
#include "starling/scram.h"
#include "starling/xmlstream.h"

#define READ_CHUNK 16384
#define READ_BUDGET (4 * READ_CHUNK) /* bytes per connection per loop iteration */
#define LINGER_MS 2000
#define MAX_HELD 8
#define NS_SASL_CB "urn:xmpp:sasl-cb:0"
#define NS_LIMITS "urn:xmpp:stream-limits:0"
#define NS_SASL2 "urn:xmpp:sasl:2"
#define NS_BIND2 "urn:xmpp:bind:0"
#define NS_CARBONS "urn:xmpp:carbons:2"
#define BIND2_TAG_MAX 32 /* bytes of a client's <tag/> kept in its resource */

enum c2s_state {
    C_TLS_ACCEPT,  /* direct TLS or after <proceed/>: handshake running */
    C_WAIT_HEADER, /* waiting for <stream:stream> */
    C_OPEN,        /* header exchanged, negotiating */
    C_CLOSING,     /* error/close queued: flushing, then linger */
    C_CLOSED,
};

enum sasl_mech { M_NONE, M_PLAIN, M_SCRAM, M_HT };

/* What only negotiation needs (about 2.5 KB, most of it the account name
 * buffer): allocated with the connection, wiped and freed once a session
 * is bound or resumed and no authentication work is pending (drop_auth),
 * so an established connection does not carry it. */
typedef struct c2s_auth {
    char account[2100]; /* user@host of the current SASL attempt, for throttling */
    char mech_name[24];
    st_scram_server *scram;
    unsigned char cb_exporter[32];
    size_t cb_exporter_len;
    unsigned char cb_endpoint[64];
    size_t cb_endpoint_len;
    st_stanza *held[MAX_HELD]; /* elements that arrived while sasl_pending */
    size_t nheld;
    /* SASL2 (XEP-0388), for the current attempt */
    st_stanza *sasl2_req;    /* its <authenticate/>: the inline requests */
    char *agent;             /* <user-agent id/>, NULL if none */
    st_buf sasl2_data;       /* <additional-data/> for <success/> */
    char fast_secret[ST_FAST_SECRET_MAX]; /* a token to hand out, "" if none; wiped */
    st_fast_token fast_next;              /* its stored record */
} c2s_auth;

struct st_conn {
    st_server *srv;
    int fd;
    st_io io;
    enum c2s_state state;
    int direct_tls;
    st_tlshs *hs;    /* our TLS 1.3 handshake while it runs (tlshs.h) */
    SSL *ssl;        /* OpenSSL's handshake, and after it on TLS 1.2 */
    st_tlsrec *rec;  /* after a TLS 1.3 handshake: our record layer, no SSL */
    int secure;
    int starttls_requested; /* <starttls/> seen in this feed */
    int starttls_pending;   /* <proceed/> queued; start TLS once flushed */
    int drained;            /* the last read emptied the socket: wait for epoll */
    st_xmlstream *xs;
    st_buf out;
    int refs;
    int header_sent; /* our stream header for the current stream */
    char stream_id[40];
    st_host *host;

    /* SASL */
    int authenticated;
    char *username; /* nodeprep'd, after success */
    enum sasl_mech mech;
    int sasl_failures;
    int sasl_pending; /* waiting for storage */
    int sasl2;        /* the current attempt speaks SASL2 (XEP-0388) */
    c2s_auth *auth;   /* negotiation state; NULL once the session runs */

    st_session *session;

    /* limits */
    double tokens;
    uint64_t refill_ms;
    int read_paused;
    uint64_t last_input_ms;
    int ping_outstanding;
    st_timer handshake_timer, idle_timer, resume_timer, linger_timer, fail_timer;

    char peer[64];
    char peer_ip[48];
    st_conn *prev, *next;
    st_deferred free_d;
    int free_queued;
    st_deferred kill_d;
    int dying; /* a send failed: finish after the current batch */
    st_deferred flush_d;
    int flush_queued; /* output waits for the end of the event batch */
};

static void conn_on_io(st_loop *l, st_io *io, unsigned ev);
static void on_open(void *ud, const st_node *header);
static void on_stanza(void *ud, st_stanza *st);
static void on_close(void *ud);
static void conn_flush(st_conn *c);
static void conn_finish(st_conn *c);
static void conn_kill_later(st_conn *c);
static void handle_element(st_conn *c, st_stanza *st);

static const st_xml_handlers handlers = {on_open, on_stanza, on_close};

/* ------------------------------------------------------------------ */
/* life cycle                                                          */

static st_xmlstream *new_parser(st_conn *c)
{
    const st_config *cfg = c->srv->cfg;
    st_xml_limits lim = {
        .max_stanza_bytes = cfg->max_stanza_bytes,
        .max_depth = cfg->max_depth,
        .max_attrs = cfg->max_attrs,
    };
    return st_xmlstream_new(&lim, &handlers, c);
}

static void on_handshake_timeout(st_loop *l, st_timer *t)
{
    st_conn *c = t->ud;
    if (c->session) return;
    st_info("c2s", "client %s: handshake timeout", c->peer);
    st_conn_close(c, "connection-timeout", "negotiation took too long");
}

static void send_ping(st_conn *c)
{
    char id[48];
    st_server_make_id(c->srv, id, sizeof id);
    st_stanza *p = st_iq_new("get", id);
    if (!p) return;
    st_attr_set(p, "from", c->host->name);
    st_attr_set(p, "to", c->session->full);
    st_tag(p, "ping", "urn:xmpp:ping");
    if (st_stanza_ok(p)) st_conn_send(c, p);
    st_stanza_unref(p);
}

static void on_idle(st_loop *l, st_timer *t)
{
    st_conn *c = t->ud;
    const st_config *cfg = c->srv->cfg;
    uint64_t idle = st_now_ms() - c->last_input_ms;
    if (c->state != C_OPEN || !c->session) return;
    if (c->ping_outstanding) {
        if (idle >= (uint64_t)cfg->ping_timeout * 1000) {
            st_info("c2s", "client %s (%s): no answer to ping", c->peer, c->session->full);
            st_conn_close(c, "connection-timeout", "no answer to ping");
            return;
        }
        st_timer_set(c->srv->loop, t, (uint64_t)cfg->ping_timeout * 1000);
        return;
    }
    if (idle >= (uint64_t)cfg->idle_timeout * 1000) {
        if (st_host_has(c->host, "ping")) {
            /* XEP-0199 §4.2: server-to-client ping of an idle client */
            send_ping(c);
            c->ping_outstanding = 1;
            st_timer_set(c->srv->loop, t, (uint64_t)cfg->ping_timeout * 1000);
        } else {
            st_timer_set(c->srv->loop, t, (uint64_t)cfg->idle_timeout * 1000);
        }
        return;
    }
    st_timer_set(c->srv->loop, t, (uint64_t)cfg->idle_timeout * 1000 - idle);
}

/* Output not yet on the socket: the queue, and a record our TLS layer
 * sealed and the socket did not take all of. */
static int out_pending(const st_conn *c)
{
    return c->out.len || (c->rec && st_tlsrec_unsent(c->rec));
}

static void on_resume(st_loop *l, st_timer *t)
{
    st_conn *c = t->ud;
    c->read_paused = 0;
    if (c->state == C_CLOSED) return;
    unsigned ev = ST_EV_READ | (out_pending(c) ? ST_EV_WRITE : 0);
    st_io_set(l, &c->io, ev);
    /* TLS may hold decrypted bytes epoll cannot see: run the reader now. */
    conn_on_io(l, &c->io, ST_EV_READ);
}

static void on_linger(st_loop *l, st_timer *t)
{
    conn_finish(t->ud);
}

static void on_fail_timer(st_loop *l, st_timer *t);

st_conn *st_conn_accept(st_server *s, int fd, const char *peer, int direct_tls)
{
    st_conn *c = st_calloc(1, sizeof *c);
    if (!c) goto fail;
    c->srv = s;
    c->fd = fd;
    c->refs = 1;
    c->direct_tls = direct_tls;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    snprintf(c->peer_ip, sizeof c->peer_ip, "%s", peer);
    char *colon = strrchr(c->peer_ip, ':');
    if (colon) *colon = '\0';
    if (c->peer_ip[0] == '[') {
        memmove(c->peer_ip, c->peer_ip + 1, strlen(c->peer_ip));
        char *rb = strchr(c->peer_ip, ']');
        if (rb) *rb = '\0';
    }
    st_buf_init(&c->out, s->cfg->max_send_queue);
    if (!(c->auth = st_calloc(1, sizeof *c->auth))) goto fail;
    st_buf_init(&c->auth->sasl2_data, 1024);
    c->xs = new_parser(c);
    if (!c->xs) goto fail;
    c->tokens = (double)s->cfg->c2s_burst;
    c->refill_ms = c->last_input_ms = st_now_ms();
    st_timer_init(&c->handshake_timer, on_handshake_timeout, c);
    st_timer_init(&c->idle_timer, on_idle, c);
    st_timer_init(&c->resume_timer, on_resume, c);
    st_timer_init(&c->linger_timer, on_linger, c);
    st_timer_init(&c->fail_timer, on_fail_timer, c);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (direct_tls) {
        c->hs = st_tls_new_hs(s->tls, 1);
        if (!c->hs && !(c->ssl = st_tls_new_ssl(s->tls, fd, 1))) goto fail;
        c->state = C_TLS_ACCEPT;
    } else {
        c->state = C_WAIT_HEADER;
    }
    if (st_io_add(s->loop, &c->io, fd, ST_EV_READ, conn_on_io, c) != 0) goto fail;
    st_timer_set(s->loop, &c->handshake_timer, (uint64_t)s->cfg->handshake_timeout * 1000);
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    st_debug("c2s", "client %s: connected%s", c->peer, direct_tls ? " (direct TLS)" : "");
    return c;
fail:
    if (c) {
        st_tlshs_free(c->hs);
        if (c->ssl) SSL_free(c->ssl);
        st_xmlstream_free(c->xs);
        st_buf_free(&c->out);
        st_free(c->auth);
        st_free(c);
    }
    close(fd);
    return NULL;
}

static void auth_free(c2s_auth *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->nheld; i++) st_stanza_unref(a->held[i]);
    st_scram_server_free(a->scram);
    st_stanza_unref(a->sasl2_req);
    st_free(a->agent);
    if (a->sasl2_data.data) OPENSSL_cleanse(a->sasl2_data.data, a->sasl2_data.len);
    st_buf_free(&a->sasl2_data);
    OPENSSL_cleanse(a, sizeof *a); /* the FAST secret, SCRAM keys' traces, the cb data */
    st_free(a);
}

/* Negotiation is over once a session runs and nothing of the login is
 * pending (a SASL2 login storing its token keeps sasl_pending until its
 * <success/> is out; held elements are replayed before that clears). */
static void drop_auth(st_conn *c)
{
    if (!c->auth || !c->session || c->sasl_pending || c->auth->nheld) return;
    auth_free(c->auth);
    c->auth = NULL;
}

static void conn_free(void *ud)
{
    st_conn *c = ud;
    auth_free(c->auth);
    st_xmlstream_free(c->xs);
    st_tlshs_free(c->hs);
    if (c->ssl) SSL_free(c->ssl);
    st_tlsrec_free(c->rec);
    st_buf_free(&c->out);
    st_free(c->username);
    st_free(c);
}

st_conn *st_conn_ref(st_conn *c)
{
    c->refs++;
    return c;
}

void st_conn_unref(st_conn *c)
{
    if (--c->refs > 0) return;
    if (!c->free_queued) {
        c->free_queued = 1;
        /* Freed after the current batch of events: a later event in the same
         * epoll batch may still point at this connection's st_io. */
        st_loop_defer(c->srv->loop, &c->free_d, conn_free, c);
    }
}

int st_conn_is_closed(const st_conn *c)
{
    return c->state >= C_CLOSING;
}

/* Release the socket and everything tied to the live stream. */
static void conn_finish(st_conn *c)
{
    st_server *s = c->srv;
    if (c->state == C_CLOSED) return;
    c->state = C_CLOSED;
    st_timer_cancel(s->loop, &c->handshake_timer);
    st_timer_cancel(s->loop, &c->idle_timer);
    st_timer_cancel(s->loop, &c->resume_timer);
    st_timer_cancel(s->loop, &c->linger_timer);
    if (st_timer_armed(&c->fail_timer)) {
        st_timer_cancel(s->loop, &c->fail_timer);
        st_conn_unref(c); /* the delayed failure's reference */
    }
    st_guard_disconnect(s, c->peer_ip);
    if (c->session) {
        st_session *sess = c->session;
        c->session = NULL;
        sess->conn = NULL;
        if (sess->sm && sess->sm->resumable && !s->stopping) {
            /* XEP-0198 §5: the connection is gone, the session waits */
            st_info("sm", "%s: connection lost, hibernating for %us", sess->full,
                    sess->sm->max_s);
            st_sm_hibernate(sess->sm);
        } else {
            st_session_end(sess);
        }
    }
    st_io_del(s->loop, &c->io);
    if (c->ssl) SSL_shutdown(c->ssl);
    if (c->rec) st_tlsrec_close_notify(c->rec, c->fd);
    close(c->fd);
    c->fd = -1;
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    st_debug("c2s", "client %s: closed", c->peer);
    st_conn_unref(c);
}

/* ------------------------------------------------------------------ */
/* output                                                              */

static ssize_t raw_write(st_conn *c, const char *p, size_t n, int *want_read)
{
    *want_read = 0;
    if (c->rec) return st_tlsrec_write(c->rec, c->fd, p, n);
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_write(c->ssl, p, (int)(n > INT32_MAX ? INT32_MAX : n));
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE) return 0;
        if (e == SSL_ERROR_WANT_READ) {
            *want_read = 1;
            return 0;
        }
        return -1;
    }
    ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
    if (r >= 0) return r;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    return -1;
}

static void start_tls(st_conn *c);

/* Input waiting inside TLS, where epoll cannot see it: plaintext not yet
 * returned, or records read with the handshake's last message. */
static int tls_buffered(const st_conn *c)
{
    if (c->rec) return st_tlsrec_buffered(c->rec) > 0;
    return c->ssl && SSL_has_pending(c->ssl);
}

static void conn_flush(st_conn *c)
{
    if (c->state == C_CLOSED || c->state == C_TLS_ACCEPT || c->dying) return;
    while (c->out.len) {
        int wr;
        ssize_t n = raw_write(c, c->out.data, c->out.len, &wr);
        if (n < 0) {
            st_debug("c2s", "client %s: write failed", c->peer);
            conn_kill_later(c);
            return;
        }
        if (n == 0) break;
        st_buf_consume(&c->out, (size_t)n);
    }
    /* the queue is out; a record the socket took only part of may not be */
    if (!c->out.len && c->rec && st_tlsrec_unsent(c->rec) &&
        st_tlsrec_write(c->rec, c->fd, NULL, 0) < 0) {
        conn_kill_later(c);
        return;
    }
    unsigned ev = (c->read_paused ? 0 : ST_EV_READ) | (out_pending(c) ? ST_EV_WRITE : 0);
    st_io_set(c->srv->loop, &c->io, ev);
    if (out_pending(c)) return;
    if (c->starttls_pending) {
        c->starttls_pending = 0;
        start_tls(c);
        return;
    }
    if (c->state == C_CLOSING && !st_timer_armed(&c->linger_timer)) {
        /* Everything is out: half-close and drain for a moment so the peer
         * reads our error rather than a reset. */
        if (c->ssl) SSL_shutdown(c->ssl);
        if (c->rec) st_tlsrec_close_notify(c->rec, c->fd);
        shutdown(c->fd, SHUT_WR);
        st_timer_set(c->srv->loop, &c->linger_timer, LINGER_MS);
    }
}

static void kill_now(void *ud)
{
    st_conn *c = ud;
    conn_finish(c);
    st_conn_unref(c);
}

/* Sends happen in the middle of routing (a loop over a user's sessions, a
 * presence broadcast): ending the connection and its session right there
 * would free what the caller is iterating over. So a connection whose send
 * fails stops taking output at once and is finished after the batch. */
static void conn_kill_later(st_conn *c)
{
    if (c->dying || c->state == C_CLOSED) return;
    c->dying = 1;
    st_io_set(c->srv->loop, &c->io, 0);
    st_loop_defer(c->srv->loop, &c->kill_d, kill_now, st_conn_ref(c));
}

#define FLUSH_AT 16384

static void flush_now(void *ud)
{
    st_conn *c = ud;
    c->flush_queued = 0;
    conn_flush(c);
    st_conn_unref(c);
}

static void flush_later(st_conn *c)
{
    if (c->flush_queued) return;
    c->flush_queued = 1;
    st_loop_defer(c->srv->loop, &c->flush_d, flush_now, st_conn_ref(c));
}

int st_conn_send_raw(st_conn *c, const char *data, size_t len)
{
    if (c->state == C_CLOSED || c->dying) return -1;
    if (st_buf_append(&c->out, data, len) != 0) {
        /* The client does not read fast enough: drop it rather than buffer
         * without bound (with stream management, what it did not
         * acknowledge is routed again when the session ends). */
        st_warn("c2s", "client %s: output queue over %zu bytes, disconnecting", c->peer,
                c->out.max);
        conn_kill_later(c);
        return -1;
    }
    if (c->out.len == len && c->state != C_TLS_ACCEPT && !c->starttls_pending) {
        /* Written at the end of the event batch, so what the batch routes
         * to this client (a sender's pipelined messages, a fan-out) goes
         * out in one write (one TLS record) rather than one per stanza;
         * at once if that much is queued already. */
        if (c->out.len >= FLUSH_AT) conn_flush(c);
        else flush_later(c);
    } else if (c->out.len >= FLUSH_AT && c->flush_queued) {
        conn_flush(c);
    } else if (c->state != C_CLOSED && !c->flush_queued) {
        st_io_set(c->srv->loop, &c->io, (c->read_paused ? 0 : ST_EV_READ) | ST_EV_WRITE);
    }
    return 0;
}

int st_conn_send_to(st_conn *c, st_stanza *st, const char *to)
{
    size_t len;
    const char *w = st_stanza_wire(st, &len);
    if (!w || len < 3 || w[0] != '<') return -1;
    /* splice " to='...'" after the element name of the cached bytes */
    size_t name = 1;
    while (name < len && w[name] != ' ' && w[name] != '>' && w[name] != '/') name++;
    st_buf b;
    st_buf_init(&b, 0);
    int r = st_buf_append(&b, w, name);
    if (r == 0) r = st_buf_appends(&b, " to='");
    if (r == 0) r = st_buf_append_escaped(&b, to, strlen(to));
    if (r == 0) r = st_buf_append(&b, "'", 1);
    if (r == 0) r = st_buf_append(&b, w + name, len - name);
    if (r == 0) r = st_conn_send_raw(c, b.data, b.len);
    st_buf_free(&b);
    return r;
}

int st_conn_send(st_conn *c, st_stanza *st)
{
    size_t len;
    const char *w = st_stanza_wire(st, &len);
    if (!w) return -1;
    return st_conn_send_raw(c, w, len);
}

static void send_header(st_conn *c)
{
    char buf[512];
    if (c->header_sent) return;
    st_server_make_id(c->srv, c->stream_id, sizeof c->stream_id);
    int n = snprintf(buf, sizeof buf,
                     "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     "xmlns:stream='http://etherx.jabber.org/streams' id='%s'%s%s%s "
                     "version='1.0' xml:lang='en'>",
                     c->stream_id, c->host ? " from='" : "", c->host ? c->host->name : "",
                     c->host ? "'" : "");
    c->header_sent = 1;
    st_conn_send_raw(c, buf, (size_t)n);
}

void st_conn_close(st_conn *c, const char *condition, const char *text)
{
    if (c->state >= C_CLOSING) return;
    if (c->state == C_TLS_ACCEPT) {
        conn_finish(c);
        return;
    }
    if (condition) {
        st_buf b;
        st_buf_init(&b, 0);
        send_header(c);
        if (st_stream_error_xml(&b, condition, text) == 0) st_conn_send_raw(c, b.data, b.len);
        st_buf_free(&b);
        st_debug("c2s", "client %s: stream error %s%s%s", c->peer, condition, text ? ": " : "",
                 text ? text : "");
    }
    if (c->header_sent) st_conn_send_raw(c, "</stream:stream>", 16);
    if (c->state == C_CLOSED) return;
    c->state = C_CLOSING;
    st_xmlstream_stop(c->xs);
    if (c->session) {
        /* The session ends now: nothing more is routed to this stream. */
        st_session *sess = c->session;
        c->session = NULL;
        sess->conn = NULL;
        st_session_end(sess);
    }
    conn_flush(c);
}

/* ------------------------------------------------------------------ */
/* TLS                                                                 */

static void tls_established(st_conn *c)
{
    c->secure = 1;
    c->auth->cb_endpoint_len = 0;
    c->auth->cb_exporter_len = 0;
    size_t n = 0;
    if (c->hs) {
        if (st_tlshs_server_end_point(c->hs, c->auth->cb_endpoint, &n) == 0)
            c->auth->cb_endpoint_len = n;
        if (st_tlshs_exporter(c->hs, c->auth->cb_exporter) == 0) c->auth->cb_exporter_len = 32;
        c->rec = st_tlshs_finish(c->hs);
        st_debug("c2s", "client %s: TLSv1.3 established (%s%s)", c->peer, st_tlshs_cipher(c->hs),
                 st_tlshs_resumed(c->hs) ? ", resumed" : "");
        st_tlshs_free(c->hs);
        c->hs = NULL;
        c->state = C_WAIT_HEADER;
        return;
    }
    if (st_tls_server_end_point(c->ssl, c->auth->cb_endpoint, &n) == 0) c->auth->cb_endpoint_len = n;
    if (st_tls_exporter(c->ssl, c->auth->cb_exporter) == 0) c->auth->cb_exporter_len = 32;
    st_debug("c2s", "client %s: %s established", c->peer, SSL_get_version(c->ssl));
    /* TLS 1.3: the record layer is ours from here and the SSL goes (14 KB
     * a connection; ARCHITECTURE.md 32). TLS 1.2 stays with OpenSSL. */
    c->rec = st_tlsrec_take(c->ssl);
    if (c->rec) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    c->state = C_WAIT_HEADER;
}

/* Our handshake (tlshs.h); on ST_TLSHS_OPENSSL an SSL takes over the
 * untouched socket. 1 when the handshake goes on in OpenSSL. */
static int tls_handshake_ours(st_conn *c)
{
    switch (st_tlshs_step(c->hs, c->fd)) {
    case ST_TLSHS_READ:
        st_io_set(c->srv->loop, &c->io, ST_EV_READ);
        return 0;
    case ST_TLSHS_WRITE:
        st_io_set(c->srv->loop, &c->io, ST_EV_WRITE);
        return 0;
    case ST_TLSHS_DONE:
        tls_established(c);
        st_io_set(c->srv->loop, &c->io, ST_EV_READ | (out_pending(c) ? ST_EV_WRITE : 0));
        return 0;
    case ST_TLSHS_OPENSSL:
        st_debug("c2s", "client %s: TLS handshake left to OpenSSL: %s", c->peer,
                 st_tlshs_error(c->hs));
        st_tlshs_free(c->hs);
        c->hs = NULL;
        c->ssl = st_tls_new_ssl(c->srv->tls, c->fd, c->direct_tls);
        if (c->ssl) return 1;
        st_error("c2s", "client %s: cannot create TLS state", c->peer);
        conn_finish(c);
        return 0;
    default:
        st_info("c2s", "client %s: TLS handshake failed: %s", c->peer, st_tlshs_error(c->hs));
        conn_finish(c);
        return 0;
    }
}

static void tls_handshake(st_conn *c)
{
    if (c->hs && !tls_handshake_ours(c)) return;
    ERR_clear_error();
    int r = SSL_accept(c->ssl);
    if (r == 1) {
        tls_established(c);
        st_io_set(c->srv->loop, &c->io, ST_EV_READ | (out_pending(c) ? ST_EV_WRITE : 0));
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        st_io_set(c->srv->loop, &c->io, ST_EV_READ);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        st_io_set(c->srv->loop, &c->io, ST_EV_WRITE);
        return;
    }
    unsigned long err = ERR_peek_error();
    st_info("c2s", "client %s: TLS handshake failed: %s", c->peer,
            err ? ERR_reason_error_string(err) : "connection closed");
    conn_finish(c);
}

static void start_tls(st_conn *c)
{
    c->hs = st_tls_new_hs(c->srv->tls, 0);
    if (!c->hs) c->ssl = st_tls_new_ssl(c->srv->tls, c->fd, 0);
    if (!c->hs && !c->ssl) {
        st_error("c2s", "client %s: cannot create TLS state", c->peer);
        conn_finish(c);
        return;
    }
    c->state = C_TLS_ACCEPT;
    c->header_sent = 0;
    /* The ClientHello is a round trip away (the client waits for
     * <proceed/>, RFC 6120 §5.4.3.3), and it arrives in the socket, where
     * epoll sees it: the handshake starts from conn_on_io, which also reads
     * what the handshake leaves buffered. Stepping it here, inside a read,
     * would cost a recv that finds nothing, and a handshake ending here
     * would leave the client's first records unread. */
}

/* ------------------------------------------------------------------ */
/* input                                                               */

static ssize_t raw_read(st_conn *c, char *p, size_t n)
{
    if (c->rec) {
        ssize_t r = st_tlsrec_read(c->rec, c->fd, p, n);
        if (r == 0 && st_tlsrec_error(c->rec))
            st_debug("c2s", "client %s: %s", c->peer, st_tlsrec_error(c->rec));
        c->drained = r > 0 && st_tlsrec_drained(c->rec);
        return r;
    }
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, p, (int)n);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return -2;
        return 0; /* closed or failed: end the connection */
    }
    ssize_t r = recv(c->fd, p, n, 0);
    if (r > 0) {
        /* Less than asked: the socket is empty, and another recv would
         * only say EAGAIN (epoll, level-triggered, tells us of more). */
        c->drained = (size_t)r < n;
        return r;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return -2;
    return 0;
}

/* Token bucket: refill, then say how many bytes we may read now. */
static size_t read_allowance(st_conn *c)
{
    const st_config *cfg = c->srv->cfg;
    uint64_t now = st_now_ms();
    c->tokens += (double)(now - c->refill_ms) * (double)cfg->c2s_rate / 1000.0;
    if (c->tokens > (double)cfg->c2s_burst) c->tokens = (double)cfg->c2s_burst;
    c->refill_ms = now;
    return c->tokens < 1 ? 0 : (size_t)c->tokens;
}

static void pause_reading(st_conn *c, uint64_t ms)
{
    c->read_paused = 1;
    st_io_set(c->srv->loop, &c->io, out_pending(c) ? ST_EV_WRITE : 0);
    st_timer_set(c->srv->loop, &c->resume_timer, ms);
}

static void conn_read(st_conn *c)
{
    char buf[READ_CHUNK];
    size_t budget = READ_BUDGET;
    c->drained = 0;
    while (budget > 0 && c->state != C_CLOSED && c->state != C_TLS_ACCEPT) {
        if (c->read_paused || c->sasl_pending || c->drained) return;
        size_t want = sizeof buf;
        if (c->state != C_CLOSING) {
            size_t allow = read_allowance(c);
            if (allow == 0) {
                /* Over the rate: wait until a chunk's worth has refilled. */
                uint64_t ms = (uint64_t)(READ_CHUNK * 1000.0 / (double)c->srv->cfg->c2s_rate) + 1;
                pause_reading(c, ms);
                return;
            }
            if (want > allow) want = allow;
        }
        ssize_t n = raw_read(c, buf, want);
        if (n == -2) return;
        if (n <= 0) {
            conn_finish(c);
            return;
        }
        budget -= (size_t)n > budget ? budget : (size_t)n;
        if (c->state == C_CLOSING) continue; /* draining */
        c->tokens -= (double)n;
        c->last_input_ms = st_now_ms();
        c->ping_outstanding = 0;
        if (st_xmlstream_feed(c->xs, buf, (size_t)n) != 0) {
            const char *cond = st_xmlstream_error(c->xs);
            st_info("c2s", "client %s: %s: %s", c->peer, cond ? cond : "parse error",
                    st_xmlstream_error_text(c->xs));
            st_conn_close(c, cond ? cond : "not-well-formed", NULL);
            return;
        }
        if (c->starttls_requested) {
            /* nothing more in plaintext: a fresh parser for the TLS stream */
            c->starttls_requested = 0;
            st_xmlstream_free(c->xs);
            c->xs = new_parser(c);
            if (!c->xs) {
                conn_finish(c);
                return;
            }
            c->starttls_pending = 1;
            conn_flush(c);
            return;
        }
    }
    /* Budget used up: let the others run and come back (TLS may have bytes
     * buffered that epoll cannot see, so do not rely on readiness). */
    if (c->state == C_OPEN || c->state == C_WAIT_HEADER) pause_reading(c, 0);
}

size_t st_conn_queued(const st_conn *c)
{
    return c ? c->out.len : 0;
}

int st_conn_rest(st_conn *c, uint64_t now_ms, uint64_t idle_ms)
{
    if (c->state != C_OPEN || c->read_paused || c->dying || now_ms - c->last_input_ms < idle_ms)
        return 0;
    drop_auth(c);
    if (!c->out.len) st_buf_free(&c->out); /* keeps its limit; grows again on the next send */
    if (c->rec) st_tlsrec_rest(c->rec);
    return st_xmlstream_compact(c->xs);
}

/* Read what the socket has, then shed the login's state if it is done. */
static void conn_read_all(st_conn *c)
{
    conn_read(c);
    drop_auth(c);
}

static void conn_on_io(st_loop *l, st_io *io, unsigned ev)
{
    st_conn *c = io->ud;
    st_conn_ref(c);
    if (c->state == C_TLS_ACCEPT) {
        tls_handshake(c);
        if (c->state == C_WAIT_HEADER) {
            conn_flush(c);
            /* the handshake may have read the client's first records */
            if (tls_buffered(c)) ev |= ST_EV_READ;
        }
    }
    if ((ev & ST_EV_WRITE) && c->state != C_CLOSED && c->state != C_TLS_ACCEPT) conn_flush(c);
    if ((ev & ST_EV_READ) && c->state != C_CLOSED && c->state != C_TLS_ACCEPT) conn_read_all(c);
    st_conn_unref(c);
}

/* ------------------------------------------------------------------ */
/* stream negotiation                                                  */

/* The mechanisms, strongest first, as they are offered. */
static const struct {
    const char *name;
    int plus;
} mechs[] = {
    {"SCRAM-SHA-256-PLUS", 1}, {"SCRAM-SHA-1-PLUS", 1}, {"SCRAM-SHA-256", 0},
    {"SCRAM-SHA-1", 0},        {"PLAIN", 0},
};

static int fast_enabled(const st_conn *c)
{
    return c->secure && c->srv->cfg->fast_token_lifetime > 0;
}

/* Is this mechanism available on this connection right now? */
static int mech_offered(const st_conn *c, const char *name)
{
    const st_config *cfg = c->srv->cfg;
    if (!st_config_mech_enabled(cfg, name)) return 0;
    if (strcmp(name, "PLAIN") == 0) return c->secure && cfg->allow_plain;
    if (strstr(name, "-PLUS")) return c->auth->cb_endpoint_len || c->auth->cb_exporter_len;
    return 1;
}

/* The mechanisms this stream offers, in offer order (out: >= 8 slots). */
static size_t advertised_mechs(const st_conn *c, const char **out)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof mechs / sizeof mechs[0]; i++)
        if (mech_offered(c, mechs[i].name)) out[n++] = mechs[i].name;
    return n;
}

/* The XEP-0440 channel-binding types this stream advertises (out: >= 2). */
static size_t advertised_cbs(const st_conn *c, const char **out)
{
    const st_config *cfg = c->srv->cfg;
    size_t n = 0;
    if (!st_config_mech_enabled(cfg, "SCRAM-SHA-256-PLUS") &&
        !st_config_mech_enabled(cfg, "SCRAM-SHA-1-PLUS"))
        return 0;
    if (c->auth->cb_exporter_len) out[n++] = "tls-exporter";
    if (c->auth->cb_endpoint_len) out[n++] = "tls-server-end-point";
    return n;
}

/* Does a module of this host take this IQ set payload from an account? */
static int host_handles_set(const st_host *h, const char *ns, const char *name)
{
    for (size_t i = 0; i < h->nmods; i++)
        for (const st_iq_handler *ih = h->mods[i]->iqs; ih && ih->ns; ih++)
            if ((ih->types & ST_IQ_SET) && (ih->where & ST_TO_ACCOUNT) &&
                strcmp(ih->ns, ns) == 0 && (!ih->name || strcmp(ih->name, name) == 0))
                return 1;
    return 0;
}

static void add_feature_var(st_stanza *f, const char *var)
{
    st_tag(f, "feature", NULL);
    st_attr_set(f, "var", var);
    st_up(f);
}

/* XEP-0388 <authentication/> with what can be done inline: Bind2 (and the
 * session features it can enable), FAST, SM resumption. */
static void add_sasl2(st_conn *c, st_stanza *f, const char *const *ms, size_t nm)
{
    st_tag(f, "authentication", NS_SASL2);
    for (size_t i = 0; i < nm; i++) st_text_tag(f, "mechanism", ms[i]);
    st_tag(f, "inline", NULL);
    st_tag(f, "bind", NS_BIND2); /* XEP-0386 §2.1 */
    st_tag(f, "inline", NULL);
    if (host_handles_set(c->host, NS_CARBONS, "enable")) add_feature_var(f, NS_CARBONS);
    add_feature_var(f, ST_NS_CSI);
    add_feature_var(f, ST_NS_SM);
    st_up(f);
    st_up(f);
    if (fast_enabled(c)) {
        st_tag(f, "fast", ST_NS_FAST); /* XEP-0484 §3.1: the token mechanisms */
        st_text_tag(f, "mechanism", ST_FAST_HT_NONE);
        st_up(f);
    }
    st_tag(f, "sm", ST_NS_SM); /* XEP-0198 §7: <resume/> inside <authenticate/> */
    st_up(f);
    st_up(f);
    st_up(f);
}

static void add_mechanisms(st_conn *c, st_stanza *f)
{
    const char *ms[8], *cbs[2];
    size_t nm = advertised_mechs(c, ms), ncb = advertised_cbs(c, cbs);
    st_tag(f, "mechanisms", ST_NS_SASL);
    for (size_t i = 0; i < nm; i++) st_text_tag(f, "mechanism", ms[i]);
    st_up(f);
    add_sasl2(c, f, ms, nm);
    if (ncb) {
        /* XEP-0440: which channel-binding types we can do on this stream */
        st_tag(f, "sasl-channel-binding", NS_SASL_CB);
        for (size_t i = 0; i < ncb; i++) {
            st_tag(f, "channel-binding", NULL);
            st_attr_set(f, "type", cbs[i]);
            st_up(f);
        }
        st_up(f);
    }
}

static void add_limits(st_conn *c, st_stanza *f)
{
    char n[32];
    /* XEP-0478: announce what we enforce */
    st_tag(f, "limits", NS_LIMITS);
    snprintf(n, sizeof n, "%zu", c->srv->cfg->max_stanza_bytes);
    st_text_tag(f, "max-bytes", n);
    snprintf(n, sizeof n, "%d", c->srv->cfg->idle_timeout);
    st_text_tag(f, "idle-seconds", n);
    st_up(f);
}

/* Which features a stream is offered depends on the host and the
 * configuration and, within them, on these bits of the stream's state
 * only (send_features, add_mechanisms and the modules' stream_features
 * read nothing else; module.h says so for the latter). */
static unsigned features_key(const st_conn *c)
{
    unsigned k = (c->secure ? 1u : 0) | (c->srv->tls ? 2u : 0);
    if (c->authenticated) return k | 4u;
    return k | (c->auth->cb_exporter_len ? 8u : 0) | (c->auth->cb_endpoint_len ? 16u : 0);
}

/* The features for this stream from the host's cache: built and
 * serialised once per state and configuration, not at every stream header
 * (28k instructions each, three per STARTTLS login). 1 when sent. */
static int send_cached_features(st_conn *c, unsigned key)
{
    st_host *h = c->host;
    if (h->features_gen != c->srv->cfg_gen) {
        for (size_t i = 0; i < sizeof h->features / sizeof h->features[0]; i++) {
            st_free(h->features[i]);
            h->features[i] = NULL;
        }
        h->features_gen = c->srv->cfg_gen;
    }
    if (!h->features[key]) return 0;
    st_conn_send_raw(c, h->features[key], h->features_len[key]);
    return 1;
}

static void send_features(st_conn *c)
{
    unsigned key = features_key(c);
    if (send_cached_features(c, key)) return;
    st_stanza *f = st_stanza_new("features", ST_NS_STREAM);
    if (!f) {
        st_conn_close(c, "internal-server-error", NULL);
        return;
    }
    int need_tls = !c->secure && c->srv->tls;
    if (need_tls) {
        st_tag(f, "starttls", ST_NS_TLS);
        if (c->srv->cfg->require_encryption) st_tag(f, "required", NULL), st_up(f);
        st_up(f);
    }
    if (!c->authenticated) {
        if (!need_tls || !c->srv->cfg->require_encryption) add_mechanisms(c, f);
    } else {
        st_tag(f, "bind", ST_NS_BIND);
        st_up(f);
        st_tag(f, "sm", ST_NS_SM); /* XEP-0198: enable after bind, or resume instead */
        st_up(f);
        st_tag(f, "csi", ST_NS_CSI); /* XEP-0352 */
        st_up(f);
        /* RFC 6121 §C / draft-cridland-xmpp-session: advertised, optional */
        st_tag(f, "session", ST_NS_SESSION);
        st_tag(f, "optional", NULL);
        st_up(f);
        st_up(f);
    }
    if (!need_tls || !c->srv->cfg->require_encryption) {
        for (size_t i = 0; i < c->host->nmods; i++)
            if (c->host->mods[i]->stream_features)
                c->host->mods[i]->stream_features(c, f, c->authenticated);
    }
    add_limits(c, f);
    if (!st_stanza_ok(f)) {
        st_stanza_unref(f);
        st_conn_close(c, "internal-server-error", NULL);
        return;
    }
    st_buf b;
    st_buf_init(&b, 0);
    st_buf_appends(&b, "<stream:features>");
    for (st_node *n = st_first_elem(f->root); n; n = st_next_elem(n))
        st_serialize(n, ST_NS_STREAM, &b);
    if (st_buf_appends(&b, "</stream:features>") == 0) {
        st_conn_send_raw(c, b.data, b.len);
        char *copy = st_malloc(b.len); /* no copy, no cache: built again next time */
        if (copy) {
            memcpy(copy, b.data, b.len);
            c->host->features[key] = copy;
            c->host->features_len[key] = b.len;
        }
    }
    st_buf_free(&b);
    st_stanza_unref(f);
}

static void on_open(void *ud, const st_node *h)
{
    st_conn *c = ud;
    const char *to = st_attr_get(h, "to");
    const char *ver = st_attr_get(h, "version");
    const char *defns = st_attr_get(h, "xmlns");
    char dom[1024];

    if (c->state != C_WAIT_HEADER) {
        st_conn_close(c, "bad-format", "unexpected stream header");
        return;
    }
    c->state = C_OPEN;
    if (strcmp(h->name, "stream") != 0 || strcmp(h->ns, ST_NS_STREAM) != 0) {
        st_conn_close(c, "invalid-namespace", "the stream must be <stream:stream>");
        return;
    }
    if (!defns || strcmp(defns, ST_NS_CLIENT) != 0) {
        st_conn_close(c, "invalid-namespace", "the default namespace must be jabber:client");
        return;
    }
    st_host *host = NULL;
    if (to && st_nameprep(to, dom, sizeof dom) > 0) host = st_server_host(c->srv, dom);
    if (!host || (c->host && c->host != host)) {
        st_conn_close(c, "host-unknown", "this server does not serve that domain");
        return;
    }
    c->host = host;
    if (!ver || atoi(ver) < 1) {
        st_conn_close(c, "unsupported-version", "XMPP 1.0 streams only");
        return;
    }
    send_header(c);
    send_features(c);
}

static void on_close(void *ud)
{
    st_conn *c = ud;
    st_debug("c2s", "client %s: closed its stream", c->peer);
    st_conn_close(c, NULL, NULL);
}

static void restart_stream(st_conn *c)
{
    c->header_sent = 0;
    c->state = C_WAIT_HEADER;
    st_xmlstream_restart(c->xs);
}

/* ---- SASL (RFC 6120 §6) and SASL2 (XEP-0388) ----
 *
 * Both profiles share the mechanisms, the credential lookup, the guard and
 * the failure count; they differ in the wrapping. SASL1 speaks <auth/>,
 * <challenge/>, <response/>, <success/> in the xmpp-sasl namespace and
 * restarts the stream after success. SASL2 speaks <authenticate/> and the
 * rest in urn:xmpp:sasl:2; its <authenticate/> also carries the requests
 * to run once authenticated (FAST <request-token/>, SM <resume/>, Bind2
 * <bind/>), and its <success/> ends negotiation without a restart.
 * c->sasl2 says which profile the current attempt uses; the request stays
 * referenced (c->auth->sasl2_req) until the attempt ends either way. */

/* Forget the current SASL2 attempt (its request, agent and any secret). */
static void sasl2_reset(st_conn *c)
{
    c->sasl2 = 0;
    st_stanza_unref(c->auth->sasl2_req);
    c->auth->sasl2_req = NULL;
    st_free(c->auth->agent);
    c->auth->agent = NULL;
    if (c->auth->sasl2_data.data) OPENSSL_cleanse(c->auth->sasl2_data.data, c->auth->sasl2_data.len);
    st_buf_reset(&c->auth->sasl2_data);
    OPENSSL_cleanse(c->auth->fast_secret, sizeof c->auth->fast_secret);
    memset(&c->auth->fast_next, 0, sizeof c->auth->fast_next);
}

static void sasl_send(st_conn *c, const char *name, const char *payload, size_t n)
{
    st_buf b;
    st_buf_init(&b, 0);
    st_buf_printf(&b, "<%s xmlns='%s'>", name, c->sasl2 ? NS_SASL2 : ST_NS_SASL);
    if (payload && n) st_base64_encode(payload, n, &b);
    else if (payload && strcmp(name, "success") != 0) st_buf_appends(&b, "=");
    if (st_buf_printf(&b, "</%s>", name) == 0) st_conn_send_raw(c, b.data, b.len);
    st_buf_free(&b);
}

static void sasl_fail(st_conn *c, const char *condition, const char *text)
{
    st_buf b;
    st_buf_init(&b, 0);
    /* XEP-0388 §2.6.3: the RFC 6120 condition, in its own namespace */
    if (c->sasl2)
        st_buf_printf(&b, "<failure xmlns='%s'><%s xmlns='%s'/>", NS_SASL2, condition, ST_NS_SASL);
    else
        st_buf_printf(&b, "<failure xmlns='%s'><%s/>", ST_NS_SASL, condition);
    if (text) {
        st_buf_appends(&b, "<text xml:lang='en'>");
        st_buf_append_escaped(&b, text, strlen(text));
        st_buf_appends(&b, "</text>");
    }
    if (st_buf_appends(&b, "</failure>") == 0) st_conn_send_raw(c, b.data, b.len);
    st_buf_free(&b);
    st_scram_server_free(c->auth->scram);
    c->auth->scram = NULL;
    c->mech = M_NONE;
    sasl2_reset(c);
    if (strcmp(condition, "aborted") == 0) return;
    /* RFC 6120 §6.4.5: a reasonable number of retries, then close. */
    if (++c->sasl_failures >= c->srv->cfg->sasl_max_failures)
        st_conn_close(c, "policy-violation", "too many failed authentication attempts");
}

/* A wrong password. The answer waits a little longer after each recent
 * failure for the same account (guard.c): guessing gets slow, while the
 * owner, who fails once, hardly notices. */
static void sasl_reject(st_conn *c)
{
    unsigned delay = st_guard_auth_failed(c->srv, c->peer_ip, c->auth->account);
    st_info("c2s", "client %s: authentication failed for %s", c->peer,
            c->auth->account[0] ? c->auth->account : "an unknown user");
    if (!delay) {
        sasl_fail(c, "not-authorized", NULL);
        return;
    }
    c->sasl_pending = 1; /* read nothing until we have answered */
    st_conn_ref(c);
    st_timer_set(c->srv->loop, &c->fail_timer, delay);
}

static void on_fail_timer(st_loop *l, st_timer *t)
{
    st_conn *c = t->ud;
    c->sasl_pending = 0;
    if (c->state == C_OPEN) {
        sasl_fail(c, "not-authorized", NULL);
        if (c->state == C_OPEN) pause_reading(c, 0);
    }
    st_conn_unref(c);
}

static void sasl2_after_auth(st_conn *c);

/* final: the mechanism's last message (SCRAM server-final, HT responder),
 * sent as SASL1 <success/> text or SASL2 <additional-data/>. */
static void sasl_succeed(st_conn *c, const char *user, const char *final, size_t n)
{
    st_free(c->username);
    c->username = st_strdup(user);
    if (!c->username) {
        st_conn_close(c, "internal-server-error", NULL);
        return;
    }
    c->authenticated = 1;
    st_guard_auth_ok(c->srv, c->auth->account);
    st_scram_server_free(c->auth->scram);
    c->auth->scram = NULL;
    st_info("c2s", "client %s: authenticated as %s@%s (%s%s)", c->peer, user, c->host->name,
            c->auth->mech_name, c->sasl2 ? ", SASL2" : "");
    if (!c->sasl2) {
        sasl_send(c, "success", final, n);
        restart_stream(c);
        return;
    }
    if (final && n && st_buf_append(&c->auth->sasl2_data, final, n) != 0) {
        st_conn_close(c, "internal-server-error", NULL);
        return;
    }
    sasl2_after_auth(c);
}

typedef struct cred_job {
    st_conn *c;
    char host[1024];
    char user[1024];
    char *password; /* PLAIN only; wiped after use */
    st_user_creds creds;
    int found;      /* 1, 0, -1 */
    int plain_ok;
} cred_job;

static void cred_work(void *h, void *arg)
{
    cred_job *j = arg;
    const st_store_ops *ops = st_storage_ops(j->c->srv->store);
    j->found = ops->user_get(h, j->host, j->user, &j->creds);
    if (j->password) {
        /* PBKDF2 here, on the storage thread, keeps the event loop free. */
        j->plain_ok = j->found == 1 && st_scram_cred_check(&j->creds.sha256, j->password) == 1;
        OPENSSL_cleanse(j->password, strlen(j->password));
    }
}

static void process_held(st_conn *c)
{
    size_t n = c->auth->nheld, i = 0;
    st_stanza *held[MAX_HELD];
    memcpy(held, c->auth->held, n * sizeof *held);
    c->auth->nheld = 0;
    for (; i < n && c->state == C_OPEN && !c->sasl_pending; i++) {
        handle_element(c, held[i]);
        st_stanza_unref(held[i]);
    }
    /* An element that started another storage round trip (a SASL2 login
     * storing its FAST token) leaves the rest waiting for that one. */
    for (; i < n; i++) {
        if (c->state == C_OPEN && c->auth->nheld < MAX_HELD) c->auth->held[c->auth->nheld++] = held[i];
        else st_stanza_unref(held[i]);
    }
}

/* After a storage round trip of the authentication: answer what was held
 * and read what the client sent meanwhile. Read interest stayed on, so
 * what is in the socket wakes us anyway; only what TLS holds needs a
 * nudge (the zero-delay resume), which costs two epoll_ctl calls. */
static void sasl_resume_input(st_conn *c)
{
    if (c->state != C_OPEN) return;
    process_held(c);
    if ((c->state == C_OPEN || c->state == C_WAIT_HEADER) && tls_buffered(c)) pause_reading(c, 0);
}

static void cred_done(void *arg)
{
    cred_job *j = arg;
    st_conn *c = j->c;
    c->sasl_pending = 0;
    if (c->state != C_OPEN) goto out;
    if (j->found < 0) {
        sasl_fail(c, "temporary-auth-failure", NULL);
    } else if (c->mech == M_PLAIN) {
        if (j->plain_ok) {
            /* SASL1 restarts the stream after success: what came after
             * <auth/> belongs to a stream that will not exist. SASL2 does
             * not restart, so pipelined stanzas simply follow. */
            if (c->auth->nheld && !c->sasl2) {
                st_conn_close(c, "policy-violation", "pipelining is not supported");
                goto out;
            }
            sasl_succeed(c, j->user, NULL, 0);
        } else {
            sasl_reject(c);
        }
    } else if (c->mech == M_SCRAM && c->auth->scram) {
        st_scram_hash hash = st_scram_server_hash(c->auth->scram);
        const st_scram_cred *cred =
            j->found == 1 ? (hash == ST_SCRAM_SHA1 ? &j->creds.sha1 : &j->creds.sha256) : NULL;
        st_buf b;
        st_buf_init(&b, 4096);
        if (st_scram_server_challenge(c->auth->scram, cred, &b) == 0)
            sasl_send(c, "challenge", b.data, b.len);
        else
            sasl_fail(c, "temporary-auth-failure", NULL);
        st_buf_free(&b);
    }
    sasl_resume_input(c);
out:
    OPENSSL_cleanse(&j->creds, sizeof j->creds);
    if (j->password) st_free(j->password);
    st_free(j);
    st_conn_unref(c);
}

static int submit_cred_job(st_conn *c, const char *user, const char *password)
{
    cred_job *j = st_calloc(1, sizeof *j);
    if (!j) return -1;
    snprintf(j->host, sizeof j->host, "%s", c->host->name);
    snprintf(j->user, sizeof j->user, "%s", user);
    if (password && !(j->password = st_strdup(password))) {
        st_free(j);
        return -1;
    }
    j->c = st_conn_ref(c);
    if (st_storage_submit(c->srv->store, cred_work, cred_done, j) != 0) {
        st_conn_unref(c);
        st_free(j->password);
        st_free(j);
        return -1;
    }
    c->sasl_pending = 1;
    return 0;
}

/* Decode the base64 payload of <auth>/<response>/<initial-response>. "="
 * means empty (RFC 6120 §6.4.2); n NULL (no initial response) too. */
static int sasl_payload(const st_node *n, st_buf *out)
{
    if (!n) return 0;
    const char *t = st_node_text(n);
    size_t len = strlen(t);
    while (len && (t[len - 1] == ' ' || t[len - 1] == '\n' || t[len - 1] == '\r' ||
                   t[len - 1] == '\t'))
        len--;
    while (len && (*t == ' ' || *t == '\n' || *t == '\r' || *t == '\t')) t++, len--;
    if (len == 1 && t[0] == '=') return 0;
    return st_base64_decode(t, len, out);
}

/* ---- FAST token logins and issue (XEP-0484) ---- */

typedef struct fast_job {
    st_conn *c;
    st_fast_login l;
} fast_job;

static void fast_login_work(void *h, void *arg)
{
    fast_job *j = arg;
    st_fast_login_work(st_storage_ops(j->c->srv->store), h, &j->l);
}

static void fast_login_done(void *arg)
{
    fast_job *j = arg;
    st_conn *c = j->c;
    c->sasl_pending = 0;
    if (c->state != C_OPEN) goto out;
    if (j->l.result == 0) {
        /* no successor stored: nothing to hand out */
        if (!j->l.rotated) OPENSSL_cleanse(c->auth->fast_secret, sizeof c->auth->fast_secret);
        sasl_succeed(c, j->l.user, (const char *)j->l.responder, sizeof j->l.responder);
    } else if (j->l.result == 1) {
        sasl_reject(c);
    } else if (j->l.result == 2) {
        st_info("c2s", "client %s: expired FAST token for %s", c->peer, c->auth->account);
        sasl_fail(c, "credentials-expired", NULL);
    } else {
        sasl_fail(c, "temporary-auth-failure", NULL);
    }
    sasl_resume_input(c);
out:
    OPENSSL_cleanse(j, sizeof *j);
    st_free(j);
    st_conn_unref(c);
}

/* Parse a count attribute: -1 if absent, -2 if malformed. */
static long long fast_count(const char *s)
{
    char *end;
    if (!s) return -1;
    if (!*s || *s == '-') return -2;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || v > (unsigned long long)INT64_MAX) return -2;
    return (long long)v;
}

/* Prepare the token <success/> will hand out (the secret stays in
 * c->auth->fast_secret until then). 0 or -1. */
static int fast_prepare_token(st_conn *c)
{
    long long expiry = (long long)time(NULL) + c->srv->cfg->fast_token_lifetime;
    return st_fast_token_new(expiry, c->auth->fast_secret, sizeof c->auth->fast_secret, &c->auth->fast_next);
}

/* Does the SASL2 request ask for a token of a mechanism we issue? */
static int fast_token_requested(const st_conn *c)
{
    const st_node *rt = c->auth->sasl2_req ? st_child(c->auth->sasl2_req->root, "request-token", ST_NS_FAST)
                                     : NULL;
    const char *m = rt ? st_attr_get(rt, "mechanism") : NULL;
    return m && strcmp(m, ST_FAST_HT_NONE) == 0;
}

/* HT-SHA-256-NONE inside SASL2: check the token on the storage thread. */
static void fast_begin(st_conn *c, const st_buf *in)
{
    char user[1024], authcid[1024];
    const st_node *f = st_child(c->auth->sasl2_req->root, "fast", ST_NS_FAST);
    if (!fast_enabled(c)) {
        sasl_fail(c, "invalid-mechanism", NULL);
        return;
    }
    fast_job *j = st_calloc(1, sizeof *j);
    if (!j) {
        sasl_fail(c, "temporary-auth-failure", NULL);
        return;
    }
    snprintf(c->auth->mech_name, sizeof c->auth->mech_name, "%s", ST_FAST_HT_NONE);
    if (st_fast_parse(in->data, in->len, authcid, sizeof authcid, j->l.proof) != 0) {
        sasl_fail(c, "malformed-request", NULL);
        goto fail;
    }
    const char *inv = f ? st_attr_get(f, "invalidate") : NULL;
    j->l.count = fast_count(f ? st_attr_get(f, "count") : NULL);
    if (j->l.count == -2) {
        sasl_fail(c, "malformed-request", "invalid count");
        goto fail;
    }
    /* tokens belong to a user agent: without its id there is none to use */
    if (!c->auth->agent || st_nodeprep(authcid, user, sizeof user) <= 0) {
        c->auth->account[0] = '\0';
        sasl_reject(c);
        goto fail;
    }
    c->mech = M_HT;
    snprintf(c->auth->account, sizeof c->auth->account, "%s@%s", user, c->host->name);
    snprintf(j->l.host, sizeof j->l.host, "%s", c->host->name);
    snprintf(j->l.user, sizeof j->l.user, "%s", user);
    snprintf(j->l.agent, sizeof j->l.agent, "%s", c->auth->agent);
    j->l.invalidate = inv && (strcmp(inv, "true") == 0 || strcmp(inv, "1") == 0);
    j->l.want_new = fast_token_requested(c);
    j->l.half_life = c->srv->cfg->fast_token_lifetime / 2;
    /* a successor, in case the login rotates (the work decides) */
    if (fast_prepare_token(c) != 0) {
        sasl_fail(c, "temporary-auth-failure", NULL);
        goto fail;
    }
    j->l.next = c->auth->fast_next;
    j->c = st_conn_ref(c);
    if (st_storage_submit(c->srv->store, fast_login_work, fast_login_done, j) != 0) {
        st_conn_unref(c);
        sasl_fail(c, "temporary-auth-failure", NULL);
        goto fail;
    }
    c->sasl_pending = 1;
    return;
fail:
    OPENSSL_cleanse(j, sizeof *j);
    st_free(j);
}

typedef struct token_job {
    st_conn *c;
    char host[1024], user[1024], agent[ST_FAST_AGENT_MAX + 1];
    st_fast_token rec;
    int ok;
} token_job;

static void token_work(void *h, void *arg)
{
    token_job *j = arg;
    long long id = 0;
    j->ok = st_storage_ops(j->c->srv->store)
                ->fast_put(h, j->host, j->user, j->agent, &j->rec, ST_FAST_MAX_PER_AGENT, &id) == 0;
}

static void sasl2_complete(st_conn *c);

static void token_done(void *arg)
{
    token_job *j = arg;
    st_conn *c = j->c;
    c->sasl_pending = 0;
    if (c->state != C_OPEN) goto out;
    if (!j->ok) {
        /* the login stands; the client just gets no token this time */
        st_warn("c2s", "client %s: could not store a FAST token for %s", c->peer, c->auth->account);
        OPENSSL_cleanse(c->auth->fast_secret, sizeof c->auth->fast_secret);
    }
    sasl2_complete(c);
    sasl_resume_input(c);
out:
    OPENSSL_cleanse(j, sizeof *j);
    st_free(j);
    st_conn_unref(c);
}

/* Authenticated over SASL2: store a requested token first (one storage
 * round trip), then bind/resume and answer. A token login has already
 * stored its successor, if any. */
static void sasl2_after_auth(st_conn *c)
{
    if (c->mech == M_HT || !fast_enabled(c) || !c->auth->agent || !fast_token_requested(c)) {
        sasl2_complete(c);
        return;
    }
    token_job *j = st_calloc(1, sizeof *j);
    if (!j || fast_prepare_token(c) != 0) {
        st_free(j);
        OPENSSL_cleanse(c->auth->fast_secret, sizeof c->auth->fast_secret);
        sasl2_complete(c);
        return;
    }
    snprintf(j->host, sizeof j->host, "%s", c->host->name);
    snprintf(j->user, sizeof j->user, "%s", c->username);
    snprintf(j->agent, sizeof j->agent, "%s", c->auth->agent);
    j->rec = c->auth->fast_next;
    j->c = st_conn_ref(c);
    if (st_storage_submit(c->srv->store, token_work, token_done, j) != 0) {
        st_conn_unref(c);
        st_free(j);
        OPENSSL_cleanse(c->auth->fast_secret, sizeof c->auth->fast_secret);
        sasl2_complete(c);
        return;
    }
    c->sasl_pending = 1;
}

/* ---- mechanisms shared by both profiles ---- */

/* What this connection advertises (XEP-0474 hashes exactly these). */
static size_t advertised_mechs(const st_conn *c, const char **out);
static size_t advertised_cbs(const st_conn *c, const char **out);

/* Start mechanism mech with the payload in node pl (SASL1 <auth/>, SASL2
 * <initial-response/>, NULL for none). */
static void sasl_start(st_conn *c, const char *mech, const st_node *pl)
{
    st_buf in;
    char user[1024];
    if (!c->secure && c->srv->cfg->require_encryption) {
        sasl_fail(c, "encryption-required", NULL);
        return;
    }
    st_buf_init(&in, 16384);
    c->auth->account[0] = '\0';
    if (st_guard_auth_blocked(c->srv, c->peer_ip)) {
        sasl_fail(c, "temporary-auth-failure",
                  "too many failed logins from your address; try again later");
        goto out;
    }
    if (!mech) {
        sasl_fail(c, "invalid-mechanism", NULL);
        goto out;
    }
    if (sasl_payload(pl, &in) != 0) {
        sasl_fail(c, "incorrect-encoding", NULL);
        goto out;
    }
    if (c->sasl2 && strcmp(mech, ST_FAST_HT_NONE) == 0) {
        fast_begin(c, &in);
        goto out;
    }
    int plus = 0;
    st_scram_hash hash;
    if (!mech_offered(c, mech)) {
        sasl_fail(c, "invalid-mechanism", NULL);
        goto out;
    }
    snprintf(c->auth->mech_name, sizeof c->auth->mech_name, "%s", mech);
    if (strcmp(mech, "PLAIN") == 0) {
        /* RFC 4616: [authzid] NUL authcid NUL passwd */
        const char *p = in.data ? in.data : "";
        const char *e = p + in.len;
        const char *n1 = memchr(p, 0, in.len);
        const char *n2 = n1 ? memchr(n1 + 1, 0, (size_t)(e - n1 - 1)) : NULL;
        if (!n1 || !n2 || memchr(n2 + 1, 0, (size_t)(e - n2 - 1))) {
            sasl_fail(c, "malformed-request", NULL);
            goto out;
        }
        char authcid[1024], password[1024];
        size_t al = (size_t)(n2 - n1 - 1), pl = (size_t)(e - n2 - 1);
        if (al == 0 || al >= sizeof authcid || pl == 0 || pl >= sizeof password) {
            sasl_fail(c, "not-authorized", NULL);
            goto out;
        }
        memcpy(authcid, n1 + 1, al);
        authcid[al] = '\0';
        memcpy(password, n2 + 1, pl);
        password[pl] = '\0';
        if (n1 != p) {
            /* an authzid must name the same account */
            char want[2100];
            snprintf(want, sizeof want, "%s@%s", authcid, c->host->name);
            if ((size_t)(n1 - p) != strlen(want) || memcmp(p, want, (size_t)(n1 - p)) != 0) {
                OPENSSL_cleanse(password, sizeof password);
                sasl_fail(c, "invalid-authzid", NULL);
                goto out;
            }
        }
        if (st_nodeprep(authcid, user, sizeof user) <= 0) {
            OPENSSL_cleanse(password, sizeof password);
            sasl_fail(c, "not-authorized", NULL);
            goto out;
        }
        c->mech = M_PLAIN;
        snprintf(c->auth->account, sizeof c->auth->account, "%s@%s", user, c->host->name);
        int r = submit_cred_job(c, user, password);
        OPENSSL_cleanse(password, sizeof password);
        if (r != 0) sasl_fail(c, "temporary-auth-failure", NULL);
        goto out;
    }
    if (strcmp(mech, "SCRAM-SHA-1") == 0) hash = ST_SCRAM_SHA1;
    else if (strcmp(mech, "SCRAM-SHA-256") == 0) hash = ST_SCRAM_SHA256;
    else if (strcmp(mech, "SCRAM-SHA-1-PLUS") == 0) hash = ST_SCRAM_SHA1, plus = 1;
    else if (strcmp(mech, "SCRAM-SHA-256-PLUS") == 0) hash = ST_SCRAM_SHA256, plus = 1;
    else {
        sasl_fail(c, "invalid-mechanism", NULL);
        goto out;
    }
    int cb_offered = c->auth->cb_endpoint_len || c->auth->cb_exporter_len;
    if (plus && !cb_offered) {
        sasl_fail(c, "invalid-mechanism", NULL);
        goto out;
    }
    st_scram_cbind cb = {
        .tls_exporter = c->auth->cb_exporter_len ? c->auth->cb_exporter : NULL,
        .tls_exporter_len = c->auth->cb_exporter_len,
        .tls_server_end_point = c->auth->cb_endpoint_len ? c->auth->cb_endpoint : NULL,
        .tls_server_end_point_len = c->auth->cb_endpoint_len,
    };
    /* COMPAT: RFC 5802 §6 says a "y" from the client while we offer -PLUS
     * means a downgrade. But clients such as slixmpp send "y" whenever they
     * could do tls-unique, which TLS 1.3 lacks and we do not offer, so the
     * check would lock them out. With XEP-0440 listing our types, "y" only
     * says the client found none it shares with us; sasl_cb_strict = true
     * restores the RFC behaviour. XEP-0474 (below) lets a client that
     * checks it detect a stripped list cryptographically. */
    int downgrade_check = cb_offered && c->srv->cfg->sasl_cb_strict;
    c->auth->scram = st_scram_server_new(hash, plus, downgrade_check, c->secure ? &cb : NULL);
    if (!c->auth->scram) {
        sasl_fail(c, "temporary-auth-failure", NULL);
        goto out;
    }
    /* XEP-0474: sign the lists this stream advertised into server-first.
     * Both profiles advertise the same mechanisms, so one list serves. */
    const char *ms[8], *cbs[2];
    size_t nm = advertised_mechs(c, ms), ncb = advertised_cbs(c, cbs);
    if (st_scram_server_set_ssdp(c->auth->scram, ms, nm, ncb ? cbs : NULL, ncb) != 0) {
        sasl_fail(c, "temporary-auth-failure", NULL);
        goto out;
    }
    const char *name = NULL, *err = NULL;
    if (st_scram_server_start(c->auth->scram, in.data ? in.data : "", in.len, &name, &err) != 0) {
        sasl_fail(c, err ? err : "malformed-request", NULL);
        goto out;
    }
    const char *authz = st_scram_server_authzid(c->auth->scram);
    if (st_nodeprep(name, user, sizeof user) <= 0) {
        /* not a possible username: run the fake exchange to the end */
        user[0] = '\0';
    }
    if (authz) {
        char want[2100];
        snprintf(want, sizeof want, "%s@%s", user, c->host->name);
        if (strcmp(authz, want) != 0) {
            sasl_fail(c, "invalid-authzid", NULL);
            goto out;
        }
    }
    c->mech = M_SCRAM;
    if (user[0]) snprintf(c->auth->account, sizeof c->auth->account, "%s@%s", user, c->host->name);
    if (!user[0]) {
        st_buf b;
        st_buf_init(&b, 4096);
        if (st_scram_server_challenge(c->auth->scram, NULL, &b) == 0)
            sasl_send(c, "challenge", b.data, b.len);
        else
            sasl_fail(c, "temporary-auth-failure", NULL);
        st_buf_free(&b);
    } else if (submit_cred_job(c, user, NULL) != 0) {
        sasl_fail(c, "temporary-auth-failure", NULL);
    }
out:
    if (in.data) OPENSSL_cleanse(in.data, in.len); /* may hold a password or a proof */
    st_buf_free(&in);
}

static int sasl_busy(st_conn *c)
{
    if (c->authenticated || c->sasl_pending || c->mech != M_NONE) {
        st_conn_close(c, "policy-violation", "authentication already in progress or done");
        return 1;
    }
    return 0;
}

static void sasl_auth(st_conn *c, const st_node *n)
{
    if (sasl_busy(c)) return;
    c->sasl2 = 0;
    sasl_start(c, st_attr_get(n, "mechanism"), n);
}

/* XEP-0388 §2.4: <authenticate mechanism=...><initial-response/>
 * <user-agent id=.../> and the inline requests. */
static void sasl2_authenticate(st_conn *c, st_stanza *st)
{
    const st_node *n = st->root;
    if (sasl_busy(c)) return;
    c->sasl2 = 1;
    c->auth->sasl2_req = st_stanza_ref(st);
    const st_node *ua = st_child(n, "user-agent", NS_SASL2);
    const char *id = ua ? st_attr_get(ua, "id") : NULL;
    if (id) {
        /* the id keys FAST tokens and stable resources: bound it */
        if (!*id || strlen(id) > ST_FAST_AGENT_MAX) {
            sasl_fail(c, "malformed-request", "user-agent id must be 1 to 256 bytes");
            return;
        }
        if (!(c->auth->agent = st_strdup(id))) {
            sasl_fail(c, "temporary-auth-failure", NULL);
            return;
        }
    }
    sasl_start(c, st_attr_get(n, "mechanism"), st_child(n, "initial-response", NS_SASL2));
}

static void sasl_response(st_conn *c, const st_node *n, int sasl2)
{
    st_buf in, outb;
    if (c->mech != M_SCRAM || !c->auth->scram || c->sasl_pending || c->sasl2 != sasl2) {
        st_conn_close(c, "policy-violation", "unexpected SASL response");
        return;
    }
    st_buf_init(&in, 16384);
    st_buf_init(&outb, 4096);
    if (sasl_payload(n, &in) != 0) {
        sasl_fail(c, "incorrect-encoding", NULL);
        goto out;
    }
    const char *err = NULL;
    if (st_scram_server_finish(c->auth->scram, in.data ? in.data : "", in.len, &outb, &err) != 0) {
        if (!err || strcmp(err, "not-authorized") == 0) sasl_reject(c);
        else sasl_fail(c, err, NULL);
        goto out;
    }
    char user[1024];
    const char *name = st_scram_server_username(c->auth->scram);
    if (!name || st_nodeprep(name, user, sizeof user) <= 0) {
        sasl_fail(c, "not-authorized", NULL);
        goto out;
    }
    sasl_succeed(c, user, outb.data, outb.len);
out:
    st_buf_free(&in);
    st_buf_free(&outb);
}

/* ---- resource binding (RFC 6120 §7, XEP-0386 Bind2) ---- */

static void iq_error(st_conn *c, st_stanza *iq, const char *cond, const char *text)
{
    st_stanza *e = st_error_reply(iq, cond, text);
    if (e) st_conn_send(c, e);
    st_stanza_unref(e);
}

/* Bind res (already resourceprep'd) to this connection: both binds end
 * here. NULL with *cond set on failure. */
static st_session *bind_session(st_conn *c, const char *res, const char **cond)
{
    st_jid jid;
    if (st_jid_make(&jid, c->username, c->host->name, res) != 0) {
        *cond = "bad-request";
        return NULL;
    }
    st_session *sess = st_session_bind(c->srv, c->host, c, &jid);
    st_jid_free(&jid);
    if (!sess) {
        *cond = "resource-constraint";
        return NULL;
    }
    c->session = sess;
    st_timer_cancel(c->srv->loop, &c->handshake_timer);
    st_timer_set(c->srv->loop, &c->idle_timer, (uint64_t)c->srv->cfg->idle_timeout * 1000);
    st_info("c2s", "client %s: bound %s", c->peer, sess->full);
    return sess;
}

/* After the client has the answer to its bind: the modules' turn (they may
 * send to the new session at once, e.g. offline messages). */
static void run_session_bound(st_conn *c)
{
    st_session *sess = c->session;
    for (size_t i = 0; sess && i < c->host->nmods; i++)
        if (c->host->mods[i]->session_bound) c->host->mods[i]->session_bound(sess);
}

static void do_bind(st_conn *c, st_stanza *iq, const st_node *bind)
{
    char res[1024];
    const char *cond = NULL;
    const char *want = st_child_text(bind, "resource", ST_NS_BIND);
    if (want && *want) {
        if (st_resourceprep(want, res, sizeof res) <= 0) {
            iq_error(c, iq, "bad-request", "invalid resource");
            return;
        }
    } else {
        unsigned char rnd[8];
        RAND_bytes(rnd, sizeof rnd);
        snprintf(res, sizeof res, "starling-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1],
                 rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    }
    st_session *sess = bind_session(c, res, &cond);
    if (!sess) {
        iq_error(c, iq, cond, strcmp(cond, "bad-request") == 0 ? "invalid resource" : NULL);
        return;
    }
    st_stanza *r = st_iq_reply(iq);
    if (!r) return;
    st_attr_set(r, "to", NULL);
    st_attr_set(r, "from", NULL);
    st_tag(r, "bind", ST_NS_BIND);
    st_text_tag(r, "jid", sess->full);
    if (st_stanza_ok(r)) st_conn_send(c, r);
    st_stanza_unref(r);
    run_session_bound(c);
}

/* XEP-0386 §3.2.1: the server part of a Bind2 resource. With a user-agent
 * id it is stable for (account, tag, agent) for the life of the process:
 * an HMAC under a per-process random key, so it neither shows the id nor
 * can be guessed, and a client that binds again replaces its own old
 * session (the XEP's SHOULD) through the usual resource conflict rule.
 * Without an id it is random. out gets 12 hex digits. */
static void bind2_id(const st_conn *c, const char *tag, char *out, size_t outsz)
{
    static unsigned char key[32];
    static int have_key;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    int ok = 0;
    if (!have_key) have_key = RAND_bytes(key, sizeof key) == 1;
    if (c->auth->agent && have_key) {
        st_buf m;
        st_buf_init(&m, 0);
        /* NUL separators: no two (tag, agent) pairs give the same input */
        ok = st_buf_printf(&m, "%s@%s", c->username, c->host->name) == 0 &&
             st_buf_append(&m, "", 1) == 0 && st_buf_appends(&m, tag) == 0 &&
             st_buf_append(&m, "", 1) == 0 && st_buf_appends(&m, c->auth->agent) == 0 &&
             HMAC(EVP_sha256(), key, sizeof key, (const unsigned char *)m.data, m.len, md, &mlen);
        st_buf_free(&m);
    }
    if (!ok) RAND_bytes(md, 6);
    snprintf(out, outsz, "%02x%02x%02x%02x%02x%02x", md[0], md[1], md[2], md[3], md[4], md[5]);
}

/* A Bind2 session feature that is a module's IQ (carbons' <enable/>): run
 * the module's own handler, as if the new session had sent the IQ. The IQ
 * has no 'from', so its answer has no 'to' and is dropped by st_route: the
 * XEP wants no answer, and the module's logic stays in one place. */
static void bind2_module_iq(st_conn *c, const st_node *payload)
{
    st_session *sess = c->session;
    st_jid to;
    st_stanza *iq = st_iq_new("set", "bind2-inline");
    if (!iq) return;
    st_add_copy(iq, payload);
    if (!st_stanza_ok(iq) || st_jid_make(&to, NULL, c->host->name, NULL) != 0) goto out;
    st_iq_ctx ctx = {
        .srv = c->srv, .host = c->host, .session = sess, .iq = iq,
        .payload = st_first_elem(iq->root), .from = &sess->jid, .to = &to, .type = ST_IQ_SET,
    };
    int done = 0;
    for (size_t i = 0; !done && i < c->host->nmods; i++)
        for (const st_iq_handler *ih = c->host->mods[i]->iqs; !done && ih && ih->ns; ih++)
            if ((ih->types & ST_IQ_SET) && (ih->where & ST_TO_ACCOUNT) &&
                strcmp(ih->ns, payload->ns) == 0 &&
                (!ih->name || strcmp(ih->name, payload->name) == 0))
                done = ih->fn(&ctx) == ST_HANDLED;
    st_jid_free(&to);
out:
    st_stanza_unref(iq);
}

static void sm_enable_xml(st_conn *c, const st_node *r, st_buf *out);

/* XEP-0386 §3.2: bind a resource "[tag]/[id]" and enable the requested
 * session features; out gets <bound/> with their answers. 0 or -1. */
static int bind2(st_conn *c, const st_node *bind, st_buf *out)
{
    char tag[1024] = "", id[16], res[1100];
    const char *cond = NULL;
    const char *t = st_child_text(bind, "tag", NS_BIND2);
    /* an unusable tag is dropped, not fatal: it is only a label */
    if (!t || strlen(t) > BIND2_TAG_MAX || strchr(t, '/') ||
        st_resourceprep(t, tag, sizeof tag) <= 0)
        tag[0] = '\0';
    bind2_id(c, tag, id, sizeof id);
    snprintf(res, sizeof res, "%s%s%s", tag, tag[0] ? "/" : "", id);
    if (!bind_session(c, res, &cond)) {
        st_info("c2s", "client %s: Bind2 failed: %s", c->peer, cond);
        return -1;
    }
    st_buf_appends(out, "<bound xmlns='" NS_BIND2 "'>");
    for (const st_node *f = st_first_elem(bind); f && c->session; f = st_next_elem(f)) {
        if (strcmp(f->ns, ST_NS_SM) == 0 && strcmp(f->name, "enable") == 0)
            sm_enable_xml(c, f, out); /* XEP-0198 §7: <enabled/> inside <bound/> */
        else if (strcmp(f->ns, NS_CARBONS) == 0 && strcmp(f->name, "enable") == 0)
            bind2_module_iq(c, f);
        else if (strcmp(f->ns, ST_NS_CSI) == 0 && strcmp(f->name, "inactive") == 0)
            st_csi_set_active(c->session, 0); /* the session starts inactive */
        else if (strcmp(f->ns, ST_NS_CSI) == 0 && strcmp(f->name, "active") == 0)
            st_csi_set_active(c->session, 1);
    }
    return st_buf_appends(out, "</bound>");
}

static int is_iq_payload(const st_stanza *st, const char *name, const char *ns, st_node **out)
{
    if (strcmp(st_name(st), "iq") != 0) return 0;
    st_node *p = st_first_elem(st->root);
    if (!p || strcmp(p->name, name) != 0 || strcmp(p->ns, ns) != 0) return 0;
    *out = p;
    return 1;
}

/* ---- stream management (XEP-0198) ---- */

static void sm_failed_xml(st_buf *out, const char *condition, const st_sm *sm)
{
    if (sm)
        st_buf_printf(out,
                      "<failed xmlns='" ST_NS_SM "' h='%u'><%s xmlns='" ST_NS_STANZAS_ERR
                      "'/></failed>",
                      (unsigned)sm->h_in, condition);
    else
        st_buf_printf(out,
                      "<failed xmlns='" ST_NS_SM "'><%s xmlns='" ST_NS_STANZAS_ERR "'/></failed>",
                      condition);
}

static int parse_h(const char *s, uint32_t *out)
{
    char *end;
    if (!s || !*s || *s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Take over the hibernating (or still attached) session that <resume/>
 * names; out gets <resumed/> or <failed/>. The session, now this
 * connection's, or NULL. The caller replays the queue after sending out. */
static st_session *sm_take_over(st_conn *c, const st_node *r, st_buf *out)
{
    const char *previd = st_attr_get(r, "previd");
    uint32_t h;
    st_session *sess = previd ? st_sm_find(c->srv, previd) : NULL;
    char bare[2100];
    snprintf(bare, sizeof bare, "%s@%s", c->username, c->host->name);
    if (c->session || !sess || !sess->sm || strcmp(sess->bare, bare) != 0) {
        sm_failed_xml(out, "item-not-found", NULL);
        return NULL;
    }
    if (parse_h(st_attr_get(r, "h"), &h) != 0 || st_sm_ack(sess->sm, h) != 0) {
        sm_failed_xml(out, "unexpected-request", sess->sm);
        return NULL;
    }
    if (sess->conn) {
        /* the old connection is still here (its TCP death not noticed yet):
         * take the session away from it first, then close it */
        st_conn *old = sess->conn;
        old->session = NULL;
        sess->conn = NULL;
        st_conn_close(old, "conflict", "the session was resumed elsewhere");
    }
    st_timer_cancel(c->srv->loop, &sess->sm->hibernate);
    sess->conn = c;
    c->session = sess;
    st_timer_cancel(c->srv->loop, &c->handshake_timer);
    st_timer_set(c->srv->loop, &c->idle_timer, (uint64_t)c->srv->cfg->idle_timeout * 1000);
    st_buf_printf(out, "<resumed xmlns='" ST_NS_SM "' previd='%s' h='%u'/>", sess->sm->id,
                  (unsigned)sess->sm->h_in);
    st_info("sm", "client %s: resumed %s, resending %zu stanzas", c->peer, sess->full,
            sess->sm->qlen);
    return sess;
}

static void sm_resume(st_conn *c, const st_node *r)
{
    st_buf b;
    st_buf_init(&b, 1024);
    st_session *sess = sm_take_over(c, r, &b);
    if (b.len) st_conn_send_raw(c, b.data, b.len);
    st_buf_free(&b);
    if (sess) st_sm_replay(sess->sm);
}

/* <enable/> on the bound session; out gets <enabled/> or <failed/>. */
static void sm_enable_xml(st_conn *c, const st_node *r, st_buf *out)
{
    st_session *sess = c->session;
    if (!sess || sess->sm) {
        sm_failed_xml(out, "unexpected-request", NULL);
        return;
    }
    const char *res = st_attr_get(r, "resume");
    int resume = res && (strcmp(res, "true") == 0 || strcmp(res, "1") == 0) &&
                 c->srv->cfg->sm_resume_timeout > 0;
    unsigned max = (unsigned)c->srv->cfg->sm_resume_timeout;
    const char *m = st_attr_get(r, "max");
    uint32_t want;
    if (m && parse_h(m, &want) == 0 && want > 0 && want < max) max = want;
    sess->sm = st_sm_enable(sess, resume, max);
    if (!sess->sm) {
        sm_failed_xml(out, "internal-server-error", NULL);
        return;
    }
    if (resume)
        st_buf_printf(out, "<enabled xmlns='" ST_NS_SM "' id='%s' resume='true' max='%u'/>",
                      sess->sm->id, max);
    else
        st_buf_printf(out, "<enabled xmlns='" ST_NS_SM "' id='%s'/>", sess->sm->id);
}

/* An <a/> promises the client that the server has taken responsibility for
 * its stanzas: a message stored for an offline user must then survive a
 * kill -9. Storage runs jobs in order on one thread, so a no-op job queued
 * now completes only after every write the counted stanzas caused (offline
 * storage, archive, roster); the answer waits for it. SQLite in WAL mode
 * has committed those writes by then, which survives a process crash:
 * with group commit too, since a grouped job's done() runs only after its
 * group committed. */
typedef struct ack_job {
    st_conn *c;
    uint32_t h;
    unsigned long gen; /* srv->held_gen when queued */
    int tries;
} ack_job;

static void ack_barrier_work(void *h, void *arg)
{
}

static void ack_barrier_done(void *arg)
{
    ack_job *j = arg;
    st_conn *c = j->c;
    st_server *s = c->srv;
    /* A module may hold some of the counted stanzas (a blocklist loading)
     * and route them only now, queuing their storage work behind this
     * barrier: go round once more until nothing was held or released
     * meanwhile (bounded, so a busy server still answers). */
    if ((s->held_stanzas || s->held_gen != j->gen) && j->tries < 64 && !st_conn_is_closed(c)) {
        j->tries++;
        j->gen = s->held_gen;
        if (st_storage_submit_grouped(s->store, ack_barrier_work, ack_barrier_done, j) == 0) return;
    }
    if (!st_conn_is_closed(c) && !c->dying) {
        char buf[96];
        int n = snprintf(buf, sizeof buf, "<a xmlns='" ST_NS_SM "' h='%u'/>", (unsigned)j->h);
        st_conn_send_raw(c, buf, (size_t)n);
    }
    st_conn_unref(c);
    st_free(j);
}

static void sm_ack_when_durable(st_conn *c, uint32_t h)
{
    ack_job *j = st_calloc(1, sizeof *j);
    if (!j) {
        st_conn_close(c, "internal-server-error", NULL);
        return;
    }
    j->c = st_conn_ref(c);
    j->h = h;
    j->gen = c->srv->held_gen;
    /* Grouped: the barrier does nothing, so it can share a transaction and
     * run again freely; grouped or not, its done() runs only after every
     * job queued before it committed (a group's done() waits for its
     * commit), which is all the answer needs. */
    if (st_storage_submit_grouped(c->srv->store, ack_barrier_work, ack_barrier_done, j) != 0) {
        st_conn_unref(c);
        st_free(j);
        st_conn_close(c, "internal-server-error", NULL);
    }
}

static void sm_element(st_conn *c, const st_node *r)
{
    st_session *sess = c->session;
    st_sm *sm = sess ? sess->sm : NULL;
    if (strcmp(r->name, "resume") == 0) {
        sm_resume(c, r);
    } else if (strcmp(r->name, "enable") == 0) {
        st_buf b;
        st_buf_init(&b, 1024);
        sm_enable_xml(c, r, &b);
        if (b.len) st_conn_send_raw(c, b.data, b.len);
        st_buf_free(&b);
    } else if (strcmp(r->name, "r") == 0 && sm) {
        sm_ack_when_durable(c, sm->h_in);
    } else if (strcmp(r->name, "a") == 0 && sm) {
        uint32_t h;
        if (parse_h(st_attr_get(r, "h"), &h) != 0) {
            st_conn_close(c, "bad-format", "invalid h in <a/>");
        } else if (st_sm_ack(sm, h) != 0) {
            /* XEP-0198 §4: acknowledging more than we sent */
            st_conn_close(c, "undefined-condition", "handled-count-too-high");
        }
    } else {
        st_conn_close(c, "unsupported-stanza-type", NULL);
    }
}

/* ---- SASL2 success (XEP-0388 §2.6.2) ----
 *
 * Authenticated; the token (if any) is stored. Now the inline requests, in
 * the order XEP-0386 §3.2 gives: resumption first, and only if it fails a
 * new bind; then one <success/> carries every answer, and only after it
 * do the queued stanzas (resumed) or the modules (bound) speak. */
static void sasl2_complete(st_conn *c)
{
    const st_node *req = c->auth->sasl2_req ? c->auth->sasl2_req->root : NULL;
    const st_node *resume = req ? st_child(req, "resume", ST_NS_SM) : NULL;
    const st_node *bind = req ? st_child(req, "bind", NS_BIND2) : NULL;
    st_session *resumed = NULL;
    int bound = 0;
    st_buf b, inl;
    st_buf_init(&b, 0);
    st_buf_init(&inl, 0);
    if (resume) resumed = sm_take_over(c, resume, &inl);
    if (!resumed && bind) bound = bind2(c, bind, &inl) == 0;
    const char *authz = c->session ? c->session->full : NULL;
    char bare[2100];
    snprintf(bare, sizeof bare, "%s@%s", c->username, c->host->name);
    int r = st_buf_appends(&b, "<success xmlns='" NS_SASL2 "'>");
    if (r == 0 && c->auth->sasl2_data.len) {
        r = st_buf_appends(&b, "<additional-data>");
        if (r == 0) r = st_base64_encode(c->auth->sasl2_data.data, c->auth->sasl2_data.len, &b);
        if (r == 0) r = st_buf_appends(&b, "</additional-data>");
    }
    /* the full JID once bound or resumed, else the bare one (§2.6.2) */
    if (r == 0) r = st_buf_appends(&b, "<authorization-identifier>");
    if (r == 0) r = st_buf_append_escaped(&b, authz ? authz : bare, strlen(authz ? authz : bare));
    if (r == 0) r = st_buf_appends(&b, "</authorization-identifier>");
    if (r == 0 && inl.len) r = st_buf_append(&b, inl.data, inl.len);
    if (r == 0 && c->auth->fast_secret[0]) {
        /* XEP-0484 §3.3: the new token and when it ends (XEP-0082) */
        char when[32];
        time_t e = (time_t)c->auth->fast_next.expiry;
        struct tm tmv;
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&e, &tmv));
        r = st_buf_printf(&b, "<token xmlns='" ST_NS_FAST "' expiry='%s' token='%s'/>", when,
                          c->auth->fast_secret);
    }
    if (r == 0) r = st_buf_appends(&b, "</success>");
    if (r == 0) st_conn_send_raw(c, b.data, b.len);
    else st_conn_close(c, "internal-server-error", NULL);
    if (b.data) OPENSSL_cleanse(b.data, b.len); /* it held the token */
    st_buf_free(&b);
    st_buf_free(&inl);
    sasl2_reset(c);
    if (r != 0 || c->state != C_OPEN) return;
    if (resumed) st_sm_replay(resumed->sm);
    else if (bound) run_session_bound(c);
}

static void handle_element(st_conn *c, st_stanza *st)
{
    const st_node *r = st->root;
    if (strcmp(r->ns, ST_NS_TLS) == 0 && strcmp(r->name, "starttls") == 0) {
        if (c->secure || !c->srv->tls || c->authenticated) {
            static const char fail[] = "<failure xmlns='" ST_NS_TLS "'/>";
            st_conn_send_raw(c, fail, sizeof fail - 1);
            st_conn_close(c, NULL, NULL);
            return;
        }
        static const char proceed[] = "<proceed xmlns='" ST_NS_TLS "'/>";
        st_conn_send_raw(c, proceed, sizeof proceed - 1);
        /* RFC 6120 §5.4.3.3: the client must not send more in the clear; the
         * parser starts afresh inside TLS. */
        st_xmlstream_stop(c->xs);
        c->starttls_requested = 1; /* conn_read swaps the parser after this feed */
        return;
    }
    if (!c->secure && c->srv->tls && c->srv->cfg->require_encryption) {
        /* RFC 6120 §5.3.1: TLS is mandatory-to-negotiate here */
        st_conn_close(c, "policy-violation", "use STARTTLS first");
        return;
    }
    if (strcmp(r->ns, ST_NS_CSI) == 0 && c->session) {
        /* XEP-0352 nonzas: no answer */
        if (strcmp(r->name, "active") == 0) st_csi_set_active(c->session, 1);
        else if (strcmp(r->name, "inactive") == 0) st_csi_set_active(c->session, 0);
        else st_conn_close(c, "unsupported-stanza-type", NULL);
        return;
    }
    if (strcmp(r->ns, ST_NS_SM) == 0 && c->authenticated) {
        sm_element(c, r);
        return;
    }
    if ((strcmp(r->ns, ST_NS_SASL) == 0 || strcmp(r->ns, NS_SASL2) == 0) && !c->auth) {
        /* the login state is gone with the login: answer as sasl_busy does */
        st_conn_close(c, "policy-violation", "authentication already in progress or done");
        return;
    }
    if (strcmp(r->ns, ST_NS_SASL) == 0) {
        if (strcmp(r->name, "auth") == 0) sasl_auth(c, r);
        else if (strcmp(r->name, "response") == 0) sasl_response(c, r, 0);
        else if (strcmp(r->name, "abort") == 0 && !c->authenticated && !c->sasl2)
            sasl_fail(c, "aborted", NULL);
        else st_conn_close(c, "policy-violation", "unexpected SASL element");
        return;
    }
    if (strcmp(r->ns, NS_SASL2) == 0) {
        if (strcmp(r->name, "authenticate") == 0) sasl2_authenticate(c, st);
        else if (strcmp(r->name, "response") == 0) sasl_response(c, r, 1);
        else if (strcmp(r->name, "abort") == 0 && !c->authenticated && c->sasl2)
            sasl_fail(c, "aborted", NULL);
        else st_conn_close(c, "policy-violation", "unexpected SASL2 element");
        return;
    }
    if (strcmp(r->ns, ST_NS_CLIENT) != 0) {
        st_conn_close(c, "unsupported-stanza-type", NULL);
        return;
    }
    const char *name = r->name;
    if (strcmp(name, "message") && strcmp(name, "presence") && strcmp(name, "iq")) {
        st_conn_close(c, "unsupported-stanza-type", NULL);
        return;
    }
    st_node *p;
    if (!c->authenticated) {
        const char *to = st_get(st, "to");
        char dom[1024];
        /* XEP-0077 before login: no 'to', or our own domain */
        int to_us = !to || (st_nameprep(to, dom, sizeof dom) > 0 && strcmp(dom, c->host->name) == 0);
        if (strcmp(name, "iq") == 0 && st_first_elem(r) &&
            strcmp(st_first_elem(r)->ns, "jabber:iq:register") == 0 && to_us) {
            st_router_preauth_iq(c, c->host, st);
            return;
        }
        st_conn_close(c, "not-authorized", "authenticate first");
        return;
    }
    if (!c->session) {
        if (is_iq_payload(st, "bind", ST_NS_BIND, &p)) {
            const char *type = st_get(st, "type");
            if (type && strcmp(type, "set") == 0) do_bind(c, st, p);
            else iq_error(c, st, "bad-request", NULL);
            return;
        }
        st_conn_close(c, "not-authorized", "bind a resource first");
        return;
    }
    if (c->session->sm && (is_iq_payload(st, "session", ST_NS_SESSION, &p) ||
                           is_iq_payload(st, "bind", ST_NS_BIND, &p)))
        c->session->sm->h_in++; /* answered here, but counted like any stanza */
    if (is_iq_payload(st, "session", ST_NS_SESSION, &p)) {
        st_stanza *res = st_iq_reply(st);
        if (res) {
            st_attr_set(res, "to", NULL);
            st_attr_set(res, "from", NULL);
            st_conn_send(c, res);
        }
        st_stanza_unref(res);
        return;
    }
    if (is_iq_payload(st, "bind", ST_NS_BIND, &p)) {
        iq_error(c, st, "not-allowed", "already bound");
        return;
    }
    if (c->session->sm) c->session->sm->h_in++;
    st_router_from_client(c->session, st);
}

static void on_stanza(void *ud, st_stanza *st)
{
    st_conn *c = ud;
    if (c->state != C_OPEN) {
        st_stanza_unref(st);
        return;
    }
    if (c->sasl_pending) {
        if (c->auth->nheld == MAX_HELD) {
            st_stanza_unref(st);
            st_conn_close(c, "policy-violation", "too many stanzas during authentication");
            return;
        }
        c->auth->held[c->auth->nheld++] = st;
        return;
    }
    st_conn_ref(c);
    handle_element(c, st);
    st_stanza_unref(st);
    st_conn_unref(c);
}

/* ------------------------------------------------------------------ */
/* accessors                                                           */

const char *st_conn_peer(const st_conn *c)
{
    return c->peer;
}

const char *st_conn_peer_ip(const st_conn *c)
{
    return c->peer_ip;
}

int st_conn_is_secure(const st_conn *c)
{
    return c->secure;
}

const char *st_conn_tls_version(const st_conn *c)
{
    if (c->rec) return st_tlsrec_version(c->rec);
    return c->ssl && c->secure ? SSL_get_version(c->ssl) : "none";
}

st_session *st_conn_session(const st_conn *c)
{
    return c->session;
}

void st_conn_detach_session(st_conn *c)
{
    c->session = NULL;
}

void st_conn_close_now(st_conn *c)
{
    conn_finish(c);
}

st_conn *st_conn_next(const st_conn *c)
{
    return c->next;
}

st_host *st_conn_host(const st_conn *c)
{
    return c->host;
}
