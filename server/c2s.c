/* c2s.c - client connections: stream negotiation, TLS, SASL, bind.
 *
 * Design note. A connection is a small state machine driven by two inputs:
 * socket readiness (loop callbacks) and parsed elements (xmlstream
 * handlers). Bytes go socket -> (TLS) -> st_xmlstream -> on_stanza(); replies
 * go into one bounded output buffer that is written as soon as possible.
 *
 *   accept -> [direct TLS handshake] -> header -> features
 *          -> [<starttls/> -> TLS handshake -> header -> features]
 *          -> <auth/> ... <success/> -> header -> features -> bind -> BOUND
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
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "server/c2s.h"
#include "server/guard.h"
#include "server/sm.h"
#include "server/csi.h"
#include "server/log.h"
#include "server/tls.h"
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

enum c2s_state {
    C_TLS_ACCEPT,  /* direct TLS or after <proceed/>: handshake running */
    C_WAIT_HEADER, /* waiting for <stream:stream> */
    C_OPEN,        /* header exchanged, negotiating */
    C_CLOSING,     /* error/close queued: flushing, then linger */
    C_CLOSED,
};

enum sasl_mech { M_NONE, M_PLAIN, M_SCRAM };

struct st_conn {
    st_server *srv;
    int fd;
    st_io io;
    enum c2s_state state;
    int direct_tls;
    SSL *ssl;
    int secure;
    int starttls_requested; /* <starttls/> seen in this feed */
    int starttls_pending;   /* <proceed/> queued; start TLS once flushed */
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
    char mech_name[24];
    st_scram_server *scram;
    int sasl_failures;
    int sasl_pending; /* waiting for storage */
    unsigned char cb_exporter[32];
    size_t cb_exporter_len;
    unsigned char cb_endpoint[64];
    size_t cb_endpoint_len;
    st_stanza *held[MAX_HELD]; /* elements that arrived while sasl_pending */
    size_t nheld;

    st_session *session;

    /* limits */
    double tokens;
    uint64_t refill_ms;
    int read_paused;
    uint64_t last_input_ms;
    int ping_outstanding;
    st_timer handshake_timer, idle_timer, resume_timer, linger_timer, fail_timer;
    char account[2100]; /* user@host of the current SASL attempt, for throttling */

    char peer[64];
    char peer_ip[48];
    st_conn *prev, *next;
    st_deferred free_d;
    int free_queued;
    st_deferred kill_d;
    int dying; /* a send failed: finish after the current batch */
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

static void on_resume(st_loop *l, st_timer *t)
{
    st_conn *c = t->ud;
    c->read_paused = 0;
    if (c->state == C_CLOSED) return;
    unsigned ev = ST_EV_READ | (c->out.len ? ST_EV_WRITE : 0);
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
        c->ssl = st_tls_new_ssl(s->tls, fd, 1);
        if (!c->ssl) goto fail;
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
        if (c->ssl) SSL_free(c->ssl);
        st_xmlstream_free(c->xs);
        st_buf_free(&c->out);
        st_free(c);
    }
    close(fd);
    return NULL;
}

static void conn_free(void *ud)
{
    st_conn *c = ud;
    for (size_t i = 0; i < c->nheld; i++) st_stanza_unref(c->held[i]);
    st_scram_server_free(c->scram);
    st_xmlstream_free(c->xs);
    if (c->ssl) SSL_free(c->ssl);
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
    unsigned ev = (c->read_paused ? 0 : ST_EV_READ) | (c->out.len ? ST_EV_WRITE : 0);
    st_io_set(c->srv->loop, &c->io, ev);
    if (c->out.len) return;
    if (c->starttls_pending) {
        c->starttls_pending = 0;
        start_tls(c);
        return;
    }
    if (c->state == C_CLOSING && !st_timer_armed(&c->linger_timer)) {
        /* Everything is out: half-close and drain for a moment so the peer
         * reads our error rather than a reset. */
        if (c->ssl) SSL_shutdown(c->ssl);
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
    if (c->out.len == len && c->state != C_TLS_ACCEPT && !c->starttls_pending)
        conn_flush(c);
    else if (c->state != C_CLOSED)
        st_io_set(c->srv->loop, &c->io, (c->read_paused ? 0 : ST_EV_READ) | ST_EV_WRITE);
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
    c->cb_endpoint_len = 0;
    c->cb_exporter_len = 0;
    size_t n = 0;
    if (st_tls_server_end_point(c->ssl, c->cb_endpoint, &n) == 0) c->cb_endpoint_len = n;
    if (st_tls_exporter(c->ssl, c->cb_exporter) == 0) c->cb_exporter_len = 32;
    st_debug("c2s", "client %s: %s established", c->peer, SSL_get_version(c->ssl));
    c->state = C_WAIT_HEADER;
}

static void tls_handshake(st_conn *c)
{
    ERR_clear_error();
    int r = SSL_accept(c->ssl);
    if (r == 1) {
        tls_established(c);
        st_io_set(c->srv->loop, &c->io, ST_EV_READ | (c->out.len ? ST_EV_WRITE : 0));
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
    c->ssl = st_tls_new_ssl(c->srv->tls, c->fd, 0);
    if (!c->ssl) {
        st_error("c2s", "client %s: cannot create TLS state", c->peer);
        conn_finish(c);
        return;
    }
    c->state = C_TLS_ACCEPT;
    c->header_sent = 0;
    tls_handshake(c);
}

/* ------------------------------------------------------------------ */
/* input                                                               */

static ssize_t raw_read(st_conn *c, char *p, size_t n)
{
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, p, (int)n);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return -2;
        return 0; /* closed or failed: end the connection */
    }
    ssize_t r = recv(c->fd, p, n, 0);
    if (r > 0) return r;
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
    st_io_set(c->srv->loop, &c->io, c->out.len ? ST_EV_WRITE : 0);
    st_timer_set(c->srv->loop, &c->resume_timer, ms);
}

static void conn_read(st_conn *c)
{
    char buf[READ_CHUNK];
    size_t budget = READ_BUDGET;
    while (budget > 0 && c->state != C_CLOSED && c->state != C_TLS_ACCEPT) {
        if (c->read_paused || c->sasl_pending) return;
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

static void conn_on_io(st_loop *l, st_io *io, unsigned ev)
{
    st_conn *c = io->ud;
    st_conn_ref(c);
    if (c->state == C_TLS_ACCEPT) {
        tls_handshake(c);
        if (c->state == C_WAIT_HEADER) conn_flush(c);
    }
    if ((ev & ST_EV_WRITE) && c->state != C_CLOSED && c->state != C_TLS_ACCEPT) conn_flush(c);
    if ((ev & ST_EV_READ) && c->state != C_CLOSED && c->state != C_TLS_ACCEPT) conn_read(c);
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

/* Is this mechanism available on this connection right now? */
static int mech_offered(const st_conn *c, const char *name)
{
    const st_config *cfg = c->srv->cfg;
    if (!st_config_mech_enabled(cfg, name)) return 0;
    if (strcmp(name, "PLAIN") == 0) return c->secure && cfg->allow_plain;
    if (strstr(name, "-PLUS")) return c->cb_endpoint_len || c->cb_exporter_len;
    return 1;
}

static void add_mechanisms(st_conn *c, st_stanza *f)
{
    int cb = c->cb_endpoint_len || c->cb_exporter_len;
    const st_config *cfg = c->srv->cfg;
    st_tag(f, "mechanisms", ST_NS_SASL);
    for (size_t i = 0; i < sizeof mechs / sizeof mechs[0]; i++)
        if (mech_offered(c, mechs[i].name)) st_text_tag(f, "mechanism", mechs[i].name);
    st_up(f);
    cb = cb && (st_config_mech_enabled(cfg, "SCRAM-SHA-256-PLUS") ||
                st_config_mech_enabled(cfg, "SCRAM-SHA-1-PLUS"));
    if (cb) {
        /* XEP-0440: which channel-binding types we can do on this stream */
        st_tag(f, "sasl-channel-binding", NS_SASL_CB);
        if (c->cb_exporter_len) {
            st_tag(f, "channel-binding", NULL);
            st_attr_set(f, "type", "tls-exporter");
            st_up(f);
        }
        if (c->cb_endpoint_len) {
            st_tag(f, "channel-binding", NULL);
            st_attr_set(f, "type", "tls-server-end-point");
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

static void send_features(st_conn *c)
{
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
    if (st_buf_appends(&b, "</stream:features>") == 0) st_conn_send_raw(c, b.data, b.len);
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

/* ---- SASL (RFC 6120 §6) ---- */

static void sasl_send(st_conn *c, const char *name, const char *payload, size_t n)
{
    st_buf b;
    st_buf_init(&b, 0);
    st_buf_printf(&b, "<%s xmlns='%s'>", name, ST_NS_SASL);
    if (payload && n) st_base64_encode(payload, n, &b);
    else if (payload && strcmp(name, "success") != 0) st_buf_appends(&b, "=");
    if (st_buf_printf(&b, "</%s>", name) == 0) st_conn_send_raw(c, b.data, b.len);
    st_buf_free(&b);
}

static void sasl_fail(st_conn *c, const char *condition, const char *text)
{
    st_buf b;
    st_buf_init(&b, 0);
    st_buf_printf(&b, "<failure xmlns='%s'><%s/>", ST_NS_SASL, condition);
    if (text) {
        st_buf_appends(&b, "<text xml:lang='en'>");
        st_buf_append_escaped(&b, text, strlen(text));
        st_buf_appends(&b, "</text>");
    }
    if (st_buf_appends(&b, "</failure>") == 0) st_conn_send_raw(c, b.data, b.len);
    st_buf_free(&b);
    st_scram_server_free(c->scram);
    c->scram = NULL;
    c->mech = M_NONE;
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
    unsigned delay = st_guard_auth_failed(c->srv, c->peer_ip, c->account);
    st_info("c2s", "client %s: authentication failed for %s", c->peer,
            c->account[0] ? c->account : "an unknown user");
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

static void sasl_succeed(st_conn *c, const char *user, const char *final, size_t n)
{
    st_free(c->username);
    c->username = st_strdup(user);
    if (!c->username) {
        st_conn_close(c, "internal-server-error", NULL);
        return;
    }
    c->authenticated = 1;
    st_guard_auth_ok(c->srv, c->account);
    st_scram_server_free(c->scram);
    c->scram = NULL;
    st_info("c2s", "client %s: authenticated as %s@%s (%s)", c->peer, user, c->host->name,
            c->mech_name);
    sasl_send(c, "success", final, n);
    restart_stream(c);
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
    size_t n = c->nheld;
    st_stanza *held[MAX_HELD];
    memcpy(held, c->held, n * sizeof *held);
    c->nheld = 0;
    for (size_t i = 0; i < n; i++) {
        if (c->state == C_OPEN && !c->sasl_pending) handle_element(c, held[i]);
        st_stanza_unref(held[i]);
    }
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
            if (c->nheld) {
                st_conn_close(c, "policy-violation", "pipelining is not supported");
                goto out;
            }
            sasl_succeed(c, j->user, NULL, 0);
        } else {
            sasl_reject(c);
        }
    } else if (c->mech == M_SCRAM && c->scram) {
        st_scram_hash hash = st_scram_server_hash(c->scram);
        const st_scram_cred *cred =
            j->found == 1 ? (hash == ST_SCRAM_SHA1 ? &j->creds.sha1 : &j->creds.sha256) : NULL;
        st_buf b;
        st_buf_init(&b, 4096);
        if (st_scram_server_challenge(c->scram, cred, &b) == 0)
            sasl_send(c, "challenge", b.data, b.len);
        else
            sasl_fail(c, "temporary-auth-failure", NULL);
        st_buf_free(&b);
    }
    process_held(c);
    /* resume reading what the client sent meanwhile */
    if (c->state == C_OPEN || c->state == C_WAIT_HEADER) pause_reading(c, 0);
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

/* Decode the base64 payload of <auth>/<response>. "=" means empty. */
static int sasl_payload(const st_node *n, st_buf *out)
{
    const char *t = st_node_text(n);
    size_t len = strlen(t);
    while (len && (t[len - 1] == ' ' || t[len - 1] == '\n' || t[len - 1] == '\r' ||
                   t[len - 1] == '\t'))
        len--;
    if (len == 1 && t[0] == '=') return 0;
    return st_base64_decode(t, len, out);
}

static void sasl_auth(st_conn *c, const st_node *n)
{
    const char *mech = st_attr_get(n, "mechanism");
    st_buf in;
    char user[1024];
    if (c->authenticated || c->sasl_pending || c->mech != M_NONE) {
        st_conn_close(c, "policy-violation", "authentication already in progress or done");
        return;
    }
    if (!c->secure && c->srv->cfg->require_encryption) {
        sasl_fail(c, "encryption-required", NULL);
        return;
    }
    st_buf_init(&in, 16384);
    c->account[0] = '\0';
    if (st_guard_auth_blocked(c->srv, c->peer_ip)) {
        sasl_fail(c, "temporary-auth-failure",
                  "too many failed logins from your address; try again later");
        goto out;
    }
    if (!mech) {
        sasl_fail(c, "invalid-mechanism", NULL);
        goto out;
    }
    if (sasl_payload(n, &in) != 0) {
        sasl_fail(c, "incorrect-encoding", NULL);
        goto out;
    }
    int plus = 0;
    st_scram_hash hash;
    if (!mech_offered(c, mech)) {
        sasl_fail(c, "invalid-mechanism", NULL);
        goto out;
    }
    snprintf(c->mech_name, sizeof c->mech_name, "%s", mech);
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
        snprintf(c->account, sizeof c->account, "%s@%s", user, c->host->name);
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
    int cb_offered = c->cb_endpoint_len || c->cb_exporter_len;
    if (plus && !cb_offered) {
        sasl_fail(c, "invalid-mechanism", NULL);
        goto out;
    }
    st_scram_cbind cb = {
        .tls_exporter = c->cb_exporter_len ? c->cb_exporter : NULL,
        .tls_exporter_len = c->cb_exporter_len,
        .tls_server_end_point = c->cb_endpoint_len ? c->cb_endpoint : NULL,
        .tls_server_end_point_len = c->cb_endpoint_len,
    };
    /* COMPAT: RFC 5802 §6 says a "y" from the client while we offer -PLUS
     * means a downgrade. But clients such as slixmpp send "y" whenever they
     * could do tls-unique, which TLS 1.3 lacks and we do not offer, so the
     * check would lock them out. With XEP-0440 listing our types, "y" only
     * says the client found none it shares with us; sasl_cb_strict = true
     * restores the RFC behaviour. */
    int downgrade_check = cb_offered && c->srv->cfg->sasl_cb_strict;
    c->scram = st_scram_server_new(hash, plus, downgrade_check, c->secure ? &cb : NULL);
    if (!c->scram) {
        sasl_fail(c, "temporary-auth-failure", NULL);
        goto out;
    }
    const char *name = NULL, *err = NULL;
    if (st_scram_server_start(c->scram, in.data ? in.data : "", in.len, &name, &err) != 0) {
        sasl_fail(c, err ? err : "malformed-request", NULL);
        goto out;
    }
    const char *authz = st_scram_server_authzid(c->scram);
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
    if (user[0]) snprintf(c->account, sizeof c->account, "%s@%s", user, c->host->name);
    if (!user[0]) {
        st_buf b;
        st_buf_init(&b, 4096);
        if (st_scram_server_challenge(c->scram, NULL, &b) == 0)
            sasl_send(c, "challenge", b.data, b.len);
        else
            sasl_fail(c, "temporary-auth-failure", NULL);
        st_buf_free(&b);
    } else if (submit_cred_job(c, user, NULL) != 0) {
        sasl_fail(c, "temporary-auth-failure", NULL);
    }
out:
    st_buf_free(&in);
}

static void sasl_response(st_conn *c, const st_node *n)
{
    st_buf in, outb;
    if (c->mech != M_SCRAM || !c->scram || c->sasl_pending) {
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
    if (st_scram_server_finish(c->scram, in.data ? in.data : "", in.len, &outb, &err) != 0) {
        if (!err || strcmp(err, "not-authorized") == 0) sasl_reject(c);
        else sasl_fail(c, err, NULL);
        goto out;
    }
    char user[1024];
    const char *name = st_scram_server_username(c->scram);
    if (!name || st_nodeprep(name, user, sizeof user) <= 0) {
        sasl_fail(c, "not-authorized", NULL);
        goto out;
    }
    sasl_succeed(c, user, outb.data, outb.len);
out:
    st_buf_free(&in);
    st_buf_free(&outb);
}

/* ---- resource binding (RFC 6120 §7) ---- */

static void iq_error(st_conn *c, st_stanza *iq, const char *cond, const char *text)
{
    st_stanza *e = st_error_reply(iq, cond, text);
    if (e) st_conn_send(c, e);
    st_stanza_unref(e);
}

static void do_bind(st_conn *c, st_stanza *iq, const st_node *bind)
{
    char res[1024];
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
    st_jid jid;
    if (st_jid_make(&jid, c->username, c->host->name, res) != 0) {
        iq_error(c, iq, "bad-request", "invalid resource");
        return;
    }
    st_session *sess = st_session_bind(c->srv, c->host, c, &jid);
    st_jid_free(&jid);
    if (!sess) {
        iq_error(c, iq, "resource-constraint", NULL);
        return;
    }
    c->session = sess;
    st_timer_cancel(c->srv->loop, &c->handshake_timer);
    st_timer_set(c->srv->loop, &c->idle_timer, (uint64_t)c->srv->cfg->idle_timeout * 1000);
    st_stanza *r = st_iq_reply(iq);
    if (!r) return;
    st_attr_set(r, "to", NULL);
    st_attr_set(r, "from", NULL);
    st_tag(r, "bind", ST_NS_BIND);
    st_text_tag(r, "jid", sess->full);
    if (st_stanza_ok(r)) st_conn_send(c, r);
    st_stanza_unref(r);
    st_info("c2s", "client %s: bound %s", c->peer, sess->full);
    for (size_t i = 0; i < c->host->nmods; i++)
        if (c->host->mods[i]->session_bound) c->host->mods[i]->session_bound(sess);
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

static void sm_failed(st_conn *c, const char *condition, const st_sm *sm)
{
    char buf[256];
    int n = sm ? snprintf(buf, sizeof buf,
                          "<failed xmlns='" ST_NS_SM "' h='%u'><%s xmlns='" ST_NS_STANZAS_ERR
                          "'/></failed>",
                          (unsigned)sm->h_in, condition)
               : snprintf(buf, sizeof buf,
                          "<failed xmlns='" ST_NS_SM "'><%s xmlns='" ST_NS_STANZAS_ERR
                          "'/></failed>",
                          condition);
    st_conn_send_raw(c, buf, (size_t)n);
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

static void sm_resume(st_conn *c, const st_node *r)
{
    const char *previd = st_attr_get(r, "previd");
    uint32_t h;
    st_session *sess = previd ? st_sm_find(c->srv, previd) : NULL;
    char bare[2100];
    snprintf(bare, sizeof bare, "%s@%s", c->username, c->host->name);
    if (c->session || !sess || !sess->sm || strcmp(sess->bare, bare) != 0) {
        sm_failed(c, "item-not-found", NULL);
        return;
    }
    if (parse_h(st_attr_get(r, "h"), &h) != 0 || st_sm_ack(sess->sm, h) != 0) {
        sm_failed(c, "unexpected-request", sess->sm);
        return;
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
    char buf[256];
    int n = snprintf(buf, sizeof buf, "<resumed xmlns='" ST_NS_SM "' previd='%s' h='%u'/>",
                     sess->sm->id, (unsigned)sess->sm->h_in);
    st_conn_send_raw(c, buf, (size_t)n);
    st_info("sm", "client %s: resumed %s, resending %zu stanzas", c->peer, sess->full,
            sess->sm->qlen);
    st_sm_replay(sess->sm);
}

static void sm_element(st_conn *c, const st_node *r)
{
    st_session *sess = c->session;
    st_sm *sm = sess ? sess->sm : NULL;
    char buf[256];
    if (strcmp(r->name, "resume") == 0) {
        sm_resume(c, r);
    } else if (strcmp(r->name, "enable") == 0) {
        if (!sess || sm) {
            sm_failed(c, "unexpected-request", NULL);
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
            sm_failed(c, "internal-server-error", NULL);
            return;
        }
        int n = resume ? snprintf(buf, sizeof buf,
                                  "<enabled xmlns='" ST_NS_SM "' id='%s' resume='true' max='%u'/>",
                                  sess->sm->id, max)
                       : snprintf(buf, sizeof buf, "<enabled xmlns='" ST_NS_SM "' id='%s'/>",
                                  sess->sm->id);
        st_conn_send_raw(c, buf, (size_t)n);
    } else if (strcmp(r->name, "r") == 0 && sm) {
        int n = snprintf(buf, sizeof buf, "<a xmlns='" ST_NS_SM "' h='%u'/>", (unsigned)sm->h_in);
        st_conn_send_raw(c, buf, (size_t)n);
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
    if (strcmp(r->ns, ST_NS_SASL) == 0) {
        if (strcmp(r->name, "auth") == 0) sasl_auth(c, r);
        else if (strcmp(r->name, "response") == 0) sasl_response(c, r);
        else if (strcmp(r->name, "abort") == 0 && !c->authenticated) sasl_fail(c, "aborted", NULL);
        else st_conn_close(c, "policy-violation", "unexpected SASL element");
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
        if (c->nheld == MAX_HELD) {
            st_stanza_unref(st);
            st_conn_close(c, "policy-violation", "too many stanzas during authentication");
            return;
        }
        c->held[c->nheld++] = st;
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
