/* loadgen.c - XMPP client load generator for the Starling benchmarks.
 *
 * One process, one thread, one epoll loop driving thousands of non-blocking
 * c2s connections through a full login (stream, optional STARTTLS or direct
 * TLS, SASL SCRAM-SHA-1 or PLAIN, bind, initial presence), then one of four
 * scenarios: a login storm, idle sessions, 1:1 messages, presence fan-out.
 * It is written against the same sans-I/O core as the server (st_xmlstream
 * parses, st_scram_client_* authenticates), and prints one JSON line per run
 * on stdout; progress and problems go to stderr.
 *
 * Design note: the generator must never be what limits a measurement, so the
 * expensive parts are paid once. SCRAM's SaltedPassword (4096 PBKDF2 rounds)
 * is derived on a user's first login and cached with the salt and iteration
 * count the server sent; later logins of that user only do the three HMACs.
 * Output is coalesced: handlers append to per-connection buffers and every
 * dirty connection is flushed once per epoll batch. When --server-pid is
 * given, the generator samples the server's CPU time and RSS itself at the
 * phase boundaries it alone knows (after setup, after the drain), so setup
 * work (logins, subscriptions) is never charged to a messaging scenario.
 *
 * Every loop is bounded: by count (-n, pairs, groups) and by time (-t, the
 * drain limit and --timeout, which aborts the whole run). Traffic goes to
 * the address given with --host, meant to be loopback; --src spreads the
 * connections over 127.0.0.1..127.0.0.N so 50k connections do not run out of
 * ephemeral ports on one source address. */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "starling/base64.h"
#include "starling/buf.h"
#include "starling/scram.h"
#include "starling/stanza.h"
#include "starling/xmlstream.h"

#define READ_CHUNK 16384
#define OUT_MAX (4u << 20)    /* per-connection output limit */
#define LAT_BUCKETS 1000000u  /* latency histogram: 1 us buckets up to 1 s */
#define DRAIN_MS 5000         /* after the send phase, wait this long for stragglers */
#define SETTLE_MS 1000        /* let the server settle before sampling RSS */
#define SP_MAX ST_SCRAM_KEY_MAX

enum scenario { SC_LOGIN, SC_IDLE, SC_MSG, SC_PRESENCE };
enum tls_mode { TLS_NONE, TLS_STARTTLS, TLS_DIRECT };
enum mech { MECH_SCRAM1, MECH_PLAIN };

enum cstate {
    CS_FREE,
    CS_CONNECTING, /* TCP connect in progress */
    CS_HANDSHAKE,  /* TLS handshake in progress (direct or after <proceed/>) */
    CS_STREAM,     /* header sent, waiting for features */
    CS_STARTTLS,   /* <starttls/> sent, waiting for <proceed/> */
    CS_SASL,       /* <auth/> sent */
    CS_BIND,       /* bind (and maybe session) iq sent */
    CS_READY,      /* bound, initial presence sent */
    CS_CLOSING,    /* </stream:stream> sent, waiting for the server's */
};

typedef struct opts {
    enum scenario scenario;
    const char *host, *domain, *prefix, *password;
    int port;
    int nsrc;
    enum tls_mode tls;
    enum mech mech;
    long users, user_base;
    long n, inflight;
    long pairs, window;
    double seconds, rate;
    long contacts, groups;
    int server_pid;
    double timeout;
    double idle_wait; /* idle: seconds the sessions stay quiet before the second RSS sample */
    const char *label;
    const char *sp_cache; /* file keeping the SaltedPassword cache between runs */
} opts;

/* Cached SCRAM secret of one user: valid while the server keeps its salt. */
typedef struct spcache {
    unsigned char sp[SP_MAX];
    unsigned char salt[ST_SCRAM_SALT_MAX];
    size_t salt_len;
    unsigned iter;
    int valid;
} spcache;

typedef struct conn {
    int idx;
    int fd;
    enum cstate state;
    SSL *ssl;
    int secure, authed, want_session, dirty, dead, ev_out;
    st_xmlstream *xs;
    st_buf out;
    long user;     /* user index (0-based, without user_base) */
    long resource; /* resource number */
    char *jid;     /* bound full JID, owned */
    st_scram_client *scram;
    double t_start; /* connect time, for login latency */
    double t_close; /* when we sent </stream:stream> */
    /* scenario state */
    int peer;        /* msg: partner connection index */
    uint64_t sent;   /* messages / broadcasts sent */
    uint64_t recv;   /* msg: received from the partner */
    uint64_t subs_in; /* presence setup: subscribed received */
} conn;

/* ---- process-wide state (one generator per process, one thread) ---- */
static opts o;
static int ep = -1;
static conn *conns;
static long nconns;
static SSL_CTX *ssl_ctx;
static spcache *cache;
static struct sockaddr_in dst;
static int *dirty_list;
static long ndirty;
static long started, ready, failed, closed_ok;
static int phase_running; /* msg/presence: the measured phase is on */
static uint32_t *lat_hist; /* microseconds */
static uint64_t lat_count;
static uint64_t deliveries; /* msg: messages received; presence: broadcasts received */
static uint64_t expected_deliveries;
static uint64_t pkt_misc; /* unexpected stanzas, for the report */
static double t0;
static const char *first_error;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The first few problems are printed; a storm of the same one is counted. */
static long nerrors;
static void note_error(conn *c, const char *what)
{
    if (!first_error)
        first_error = what;
    if (++nerrors <= 10)
        fprintf(stderr, "loadgen: conn %d (user %ld): %s\n", c->idx, c->user + o.user_base,
                what);
}

/* ---- server accounting from /proc (the server's whole process tree) ---- */

typedef struct usage {
    double cpu_s; /* utime + stime of the tree, and of reaped children */
    long rss_kb;
} usage;

/* Fields 4 (ppid), 14-17 (utime stime cutime cstime) of /proc/PID/stat. */
static int read_stat(int pid, int *ppid, double *cpu)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* comm may contain spaces and parentheses: parse after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long ut, st;
    long cut, cst;
    int pp;
    if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld", &pp, &ut,
               &st, &cut, &cst) != 5)
        return -1;
    *ppid = pp;
    *cpu = (double)(ut + st + (unsigned long)cut + (unsigned long)cst) /
           (double)sysconf(_SC_CLK_TCK);
    return 0;
}

static long read_rss_kb(int pid)
{
    char path[64], line[256];
    long kb = 0;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* The root and every descendant alive now (ejabberd's beam.smp has
 * erl_child_setup under it; threads are already in the process's stat). */
static usage server_usage(void)
{
    usage u = {0, 0};
    if (o.server_pid <= 0)
        return u;
    enum { MAXP = 4096 };
    static int pids[MAXP], ppids[MAXP];
    static double cpus[MAXP];
    int np = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return u;
    struct dirent *e;
    while ((e = readdir(d)) && np < MAXP) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        int pid = atoi(e->d_name);
        if (read_stat(pid, &ppids[np], &cpus[np]) == 0)
            pids[np++] = pid;
    }
    closedir(d);
    /* Breadth-first over the tree; in[] marks members. */
    static char in[MAXP];
    memset(in, 0, sizeof in);
    for (int i = 0; i < np; i++)
        if (pids[i] == o.server_pid)
            in[i] = 1;
    for (int changed = 1; changed;) {
        changed = 0;
        for (int i = 0; i < np; i++) {
            if (in[i])
                continue;
            for (int j = 0; j < np; j++)
                if (in[j] && pids[j] == ppids[i]) {
                    in[i] = 1;
                    changed = 1;
                    break;
                }
        }
    }
    for (int i = 0; i < np; i++)
        if (in[i]) {
            u.cpu_s += cpus[i];
            u.rss_kb += read_rss_kb(pids[i]);
        }
    return u;
}

/* ---- latency histogram ---- */

static void lat_add(double seconds)
{
    double us = seconds * 1e6;
    uint32_t b = us < 0 ? 0 : us >= LAT_BUCKETS - 1 ? LAT_BUCKETS - 1 : (uint32_t)us;
    lat_hist[b]++;
    lat_count++;
}

static double lat_pct(double p) /* milliseconds */
{
    if (lat_count == 0)
        return -1;
    uint64_t want = (uint64_t)(p * (double)lat_count);
    if (want >= lat_count)
        want = lat_count - 1;
    uint64_t acc = 0;
    for (uint32_t i = 0; i < LAT_BUCKETS; i++) {
        acc += lat_hist[i];
        if (acc > want)
            return (i + 0.5) / 1000.0;
    }
    return LAT_BUCKETS / 1000.0;
}

/* ---- connections: output ---- */

static void mark_dirty(conn *c)
{
    if (!c->dirty && c->fd >= 0) {
        c->dirty = 1;
        dirty_list[ndirty++] = c->idx;
    }
}

static void send_str(conn *c, const char *s)
{
    if (st_buf_appends(&c->out, s) != 0) {
        note_error(c, "output buffer full");
        c->dead = 1;
    }
    mark_dirty(c);
}

static void send_fmt(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_fmt(conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = st_buf_vprintf(&c->out, fmt, ap);
    va_end(ap);
    if (r != 0) {
        note_error(c, "output buffer full");
        c->dead = 1;
    }
    mark_dirty(c);
}

/* Only touch epoll when the interest changes: a syscall per message sent
 * would make the generator, not the server, the measured cost. */
static void set_events(conn *c, int want_out)
{
    if (c->ev_out == want_out)
        return;
    c->ev_out = want_out;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.u32 = (uint32_t)c->idx};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write as much of c->out as the socket takes. -1 on a fatal error. */
static int flush_out(conn *c)
{
    while (c->out.len > 0) {
        ssize_t w;
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_write(c->ssl, c->out.data, (int)c->out.len);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    set_events(c, 1);
                    return 0;
                }
                return -1;
            }
            w = r;
        } else {
            w = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    set_events(c, 1);
                    return 0;
                }
                return -1;
            }
        }
        st_buf_consume(&c->out, (size_t)w);
    }
    set_events(c, 0);
    return 0;
}

/* ---- connections: life cycle ---- */

static void xs_open(void *ud, const st_node *h);
static void xs_stanza(void *ud, st_stanza *s);
static void xs_close(void *ud);
static const st_xml_handlers handlers = {xs_open, xs_stanza, xs_close};

static void conn_release(conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    if (c->ssl)
        SSL_free(c->ssl);
    st_xmlstream_free(c->xs);
    st_scram_client_free(c->scram);
    st_buf_free(&c->out);
    free(c->jid);
    c->fd = -1;
    c->ssl = NULL;
    c->xs = NULL;
    c->scram = NULL;
    c->jid = NULL;
    c->state = CS_FREE;
}

/* A connection that broke before it was done: a failure for every scenario. */
static void conn_fail(conn *c, const char *why)
{
    if (c->state != CS_CLOSING && c->state != CS_FREE) {
        failed++;
        note_error(c, why);
    }
    conn_release(c);
}

static void send_header(conn *c)
{
    send_fmt(c,
             "<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
             "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
             o.domain);
    c->state = CS_STREAM;
}

static int conn_start(conn *c, long user, long resource)
{
    memset(c, 0, offsetof(conn, peer));
    c->idx = (int)(c - conns);
    c->user = user;
    c->resource = resource;
    c->fd = -1;
    st_buf_init(&c->out, OUT_MAX);
    c->t_start = now_s();
    c->xs = st_xmlstream_new(NULL, &handlers, c);
    if (!c->xs)
        return -1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        note_error(c, "socket() failed (fd limit?)");
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (o.nsrc > 1) {
        /* Let connect() pick the port per destination, so each source
         * address has its own ephemeral range. */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(c->idx % o.nsrc));
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0) {
            note_error(c, "bind() to the source address failed");
            return -1;
        }
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)c->idx};
    c->ev_out = 1;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS) {
        note_error(c, "connect() failed");
        return -1;
    }
    c->state = CS_CONNECTING;
    started++;
    return 0;
}

static int tls_begin(conn *c)
{
    c->ssl = SSL_new(ssl_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        return -1;
    SSL_set_tlsext_host_name(c->ssl, o.domain);
    SSL_set_connect_state(c->ssl);
    c->state = CS_HANDSHAKE;
    return 0;
}

/* Drive the TLS handshake; on completion start the (new) stream. */
static int tls_step(conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->secure = 1;
        send_header(c);
        return 0;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        set_events(c, 0);
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        set_events(c, 1);
        return 0;
    }
    return -1;
}

/* ---- SASL ---- */

static void user_name(long user, char *out, size_t n)
{
    snprintf(out, n, "%s%ld", o.prefix, user + o.user_base);
}

static void send_b64(conn *c, const char *head, const void *data, size_t n, const char *tail)
{
    st_buf b;
    st_buf_init(&b, 8192);
    if (st_buf_appends(&b, head) != 0 || st_base64_encode(data, n, &b) != 0 ||
        st_buf_appends(&b, tail) != 0) {
        note_error(c, "SASL message too large");
        c->dead = 1;
    } else {
        send_str(c, b.data);
    }
    st_buf_free(&b);
}

static int node_has_mech(const st_node *mechs, const char *name)
{
    if (!mechs)
        return 0;
    for (st_node *m = st_first_elem(mechs); m; m = st_next_elem(m))
        if (strcmp(m->name, "mechanism") == 0 && strcmp(st_node_text(m), name) == 0)
            return 1;
    return 0;
}

static void sasl_start(conn *c, const st_node *mechs)
{
    char user[128];
    user_name(c->user, user, sizeof user);
    if (o.mech == MECH_PLAIN) {
        if (!node_has_mech(mechs, "PLAIN")) {
            c->dead = 1;
            note_error(c, "server does not offer PLAIN");
            return;
        }
        char msg[512];
        int n = snprintf(msg, sizeof msg, "%c%s%c%s", 0, user, 0, o.password);
        send_b64(c, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>", msg,
                 (size_t)n, "</auth>");
        c->state = CS_SASL;
        return;
    }
    if (!node_has_mech(mechs, "SCRAM-SHA-1")) {
        c->dead = 1;
        note_error(c, "server does not offer SCRAM-SHA-1");
        return;
    }
    /* gs2 "n": the benchmark measures plain SCRAM on every server alike. */
    c->scram = st_scram_client_new(ST_SCRAM_SHA1, user, o.password, NULL, NULL, 0, 0);
    st_buf first;
    st_buf_init(&first, 4096);
    if (!c->scram || st_scram_client_first(c->scram, &first) != 0) {
        c->dead = 1;
        note_error(c, "SCRAM client start failed");
    } else {
        send_b64(c, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>",
                 first.data, first.len, "</auth>");
        c->state = CS_SASL;
    }
    st_buf_free(&first);
}

/* Pull s= and i= out of a server-first-message to key the cache. */
static int parse_salt_iter(const char *m, size_t len, st_buf *salt, unsigned *iter)
{
    const char *s = NULL, *i = NULL, *end = m + len;
    size_t sl = 0;
    for (const char *p = m; p < end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *fe = comma ? comma : end;
        if (fe - p >= 2 && p[1] == '=') {
            if (p[0] == 's') {
                s = p + 2;
                sl = (size_t)(fe - s);
            } else if (p[0] == 'i') {
                i = p + 2;
            }
        }
        p = comma ? comma + 1 : end;
    }
    if (!s || !i || st_base64_decode(s, sl, salt) != 0)
        return -1;
    *iter = (unsigned)strtoul(i, NULL, 10);
    return 0;
}

static void sasl_challenge(conn *c, const st_node *n)
{
    st_buf sf, out;
    st_buf_init(&sf, 8192);
    st_buf_init(&out, 8192);
    const char *t = st_node_text(n);
    spcache *pc = &cache[c->user];
    if (!c->scram || st_base64_decode(t, strlen(t), &sf) != 0) {
        c->dead = 1;
        note_error(c, "bad SASL challenge");
        goto done;
    }
    st_buf salt;
    unsigned iter = 0;
    st_buf_init(&salt, ST_SCRAM_SALT_MAX);
    int keyed = parse_salt_iter(sf.data, sf.len, &salt, &iter) == 0;
    int hit = keyed && pc->valid && pc->iter == iter && pc->salt_len == salt.len &&
              memcmp(pc->salt, salt.data, salt.len) == 0;
    if (hit)
        st_scram_client_set_salted_password(c->scram, pc->sp, st_scram_hash_len(ST_SCRAM_SHA1));
    if (st_scram_client_final(c->scram, sf.data, sf.len, &out) != 0) {
        c->dead = 1;
        note_error(c, "SCRAM client-final failed");
    } else {
        if (!hit && keyed) {
            size_t spn = 0;
            const unsigned char *sp = st_scram_client_salted_password(c->scram, &spn);
            if (sp && spn <= SP_MAX) {
                memcpy(pc->sp, sp, spn);
                memcpy(pc->salt, salt.data, salt.len);
                pc->salt_len = salt.len;
                pc->iter = iter;
                pc->valid = 1;
            }
        }
        send_b64(c, "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>", out.data, out.len,
                 "</response>");
    }
    st_buf_free(&salt);
done:
    st_buf_free(&sf);
    st_buf_free(&out);
}

static void sasl_success(conn *c, const st_node *n)
{
    if (c->scram) {
        st_buf sv;
        st_buf_init(&sv, 8192);
        const char *t = st_node_text(n);
        if (st_base64_decode(t, strlen(t), &sv) != 0 ||
            st_scram_client_verify(c->scram, sv.data, sv.len) != 0) {
            c->dead = 1;
            note_error(c, "server signature does not verify");
        }
        st_buf_free(&sv);
        st_scram_client_free(c->scram);
        c->scram = NULL;
    }
    c->authed = 1;
    st_xmlstream_restart(c->xs);
    send_header(c);
}

/* ---- scenario hooks ---- */

static void scenario_ready(conn *c);

static void send_presence_initial(conn *c)
{
    send_str(c, "<presence/>");
}

static void on_features(conn *c, const st_node *f)
{
    if (o.tls == TLS_STARTTLS && !c->secure) {
        if (!st_child(f, "starttls", ST_NS_TLS)) {
            c->dead = 1;
            note_error(c, "server does not offer STARTTLS");
            return;
        }
        send_str(c, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        c->state = CS_STARTTLS;
        return;
    }
    if (!c->authed) {
        sasl_start(c, st_child(f, "mechanisms", ST_NS_SASL));
        return;
    }
    st_node *sess = st_child(f, "session", ST_NS_SESSION);
    c->want_session = sess && !st_child(sess, "optional", NULL);
    send_fmt(c,
             "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
             "<resource>r%ld</resource></bind></iq>",
             c->resource);
    c->state = CS_BIND;
}

static void on_bound(conn *c)
{
    c->state = CS_READY;
    /* RFC 6121 §2.1.6: only a resource that asked for the roster is
     * "interested" and gets subscription requests (Prosody enforces it). */
    if (o.scenario == SC_PRESENCE)
        send_str(c, "<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>");
    send_presence_initial(c);
    ready++;
    lat_add(now_s() - c->t_start);
    scenario_ready(c);
}

static void on_iq(conn *c, st_stanza *s)
{
    const char *type = st_get(s, "type"), *id = st_get(s, "id");
    if (!type || !id)
        return;
    if (c->state == CS_BIND && strcmp(id, "bind") == 0) {
        if (strcmp(type, "result") != 0) {
            c->dead = 1;
            note_error(c, "bind refused");
            return;
        }
        st_node *b = st_child(s->root, "bind", ST_NS_BIND);
        const char *j = b ? st_child_text(b, "jid", NULL) : NULL;
        if (!j) {
            c->dead = 1;
            note_error(c, "bind result without a jid");
            return;
        }
        c->jid = strdup(j);
        if (c->want_session) {
            send_str(c, "<iq type='set' id='sess'><session "
                        "xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
            return;
        }
        on_bound(c);
        return;
    }
    if (c->state == CS_BIND && strcmp(id, "sess") == 0) {
        on_bound(c);
        return;
    }
    /* Server pings (XEP-0199) and roster pushes get a result; anything
     * else we were asked gets service-unavailable, as a client should. */
    if (strcmp(type, "get") == 0 || strcmp(type, "set") == 0) {
        st_node *q = st_first_elem(s->root);
        int known = q && (strcmp(q->ns, "urn:xmpp:ping") == 0 ||
                          strcmp(q->ns, "jabber:iq:roster") == 0);
        st_stanza *r = st_iq_reply(s);
        if (r && !known) {
            st_attr_set(r, "type", "error");
            st_tag(r, "error", NULL);
            st_attr_set(r, "type", "cancel");
            st_tag(r, "service-unavailable", ST_NS_STANZAS_ERR);
        }
        size_t len;
        const char *w = r && st_stanza_ok(r) ? st_stanza_wire(r, &len) : NULL;
        if (w)
            send_str(c, w);
        st_stanza_unref(r);
    }
}

/* One chat message to the partner, stamped with the send time: the
 * receiver's clock is ours, so latency needs no synchronisation. */
static void msg_send(conn *c)
{
    conn *p = &conns[c->peer];
    send_fmt(c, "<message to='%s' type='chat'><body>t%" PRIu64 "</body></message>", p->jid,
             now_ns());
    c->sent++;
}

static void on_message(conn *c, st_stanza *s)
{
    const char *body = st_child_text(s->root, "body", NULL);
    if (!body || body[0] != 't') {
        pkt_misc++;
        return;
    }
    char *end;
    uint64_t ts = strtoull(body + 1, &end, 10);
    lat_add((double)(now_ns() - ts) / 1e9);
    deliveries++;
    c->recv++;
    conn *p = &conns[c->peer];
    /* Window mode: the partner may send one more now. */
    if (o.rate <= 0 && phase_running && p->state == CS_READY && !p->dead)
        while (p->sent - c->recv < (uint64_t)o.window)
            msg_send(p);
}

/* presence: setup = subscription exchange; phase = broadcast counting. */
static long group_of(long user)
{
    return user / (o.contacts + 1);
}

static void presence_send_status(conn *c);

static void on_presence(conn *c, st_stanza *s)
{
    const char *type = st_get(s, "type"), *from = st_get(s, "from");
    if (!from)
        return;
    if (type && strcmp(type, "subscribe") == 0) {
        /* Accept, and ask back if we have not asked this contact yet
         * (the lower-numbered user of a pair asks first). */
        char bare[256];
        size_t bl = strcspn(from, "/");
        if (bl >= sizeof bare)
            return;
        memcpy(bare, from, bl);
        bare[bl] = 0;
        send_fmt(c, "<presence to='%s' type='subscribed'/>", bare);
        long other = strtol(bare + strlen(o.prefix), NULL, 10) - o.user_base;
        if (other < c->user)
            send_fmt(c, "<presence to='%s' type='subscribe'/>", bare);
        return;
    }
    if (type && strcmp(type, "subscribed") == 0) {
        c->subs_in++;
        return;
    }
    if (type)
        return;
    st_node *st = st_child(s->root, "status", NULL);
    const char *txt = st ? st_node_text(st) : NULL;
    if (!txt || txt[0] != 'b')
        return;
    char *end;
    long sender = strtol(txt + 1, &end, 10);
    uint64_t ts = strtoull(end + 1, NULL, 10);
    if (sender < 0 || sender >= nconns || sender == c->idx)
        return; /* our own presence, reflected to us */
    lat_add((double)(now_ns() - ts) / 1e9);
    deliveries++;
    conns[sender].recv++;
    conn *p = &conns[sender];
    /* A broadcaster sends its next update once every contact has the last
     * one (or the window allows more outstanding). */
    if (phase_running && p->state == CS_READY)
        while (p->sent * (uint64_t)o.contacts - p->recv < (uint64_t)(o.window * o.contacts) &&
               phase_running)
            presence_send_status(p);
}

static void presence_send_status(conn *c)
{
    send_fmt(c, "<presence><status>b%d %" PRIu64 "</status></presence>", c->idx, now_ns());
    c->sent++;
}

static void xs_open(void *ud, const st_node *h)
{
    (void)ud;
    (void)h;
}

static void xs_close(void *ud)
{
    conn *c = ud;
    if (c->state == CS_CLOSING)
        closed_ok++;
    else
        note_error(c, "server closed the stream");
    c->dead = 1;
    st_xmlstream_stop(c->xs);
}

static void xs_stanza(void *ud, st_stanza *s)
{
    conn *c = ud;
    const char *name = st_name(s);
    const char *ns = s->root->ns;
    if (strcmp(ns, ST_NS_STREAM) == 0) {
        if (strcmp(name, "features") == 0 && c->state == CS_STREAM)
            on_features(c, s->root);
        else if (strcmp(name, "error") == 0) {
            st_node *cond = st_first_elem(s->root);
            fprintf(stderr, "loadgen: conn %d: stream error <%s/>\n", c->idx,
                    cond ? cond->name : "?");
            c->dead = 1;
            if (!first_error)
                first_error = "stream error";
        }
    } else if (strcmp(ns, ST_NS_TLS) == 0) {
        if (strcmp(name, "proceed") == 0 && c->state == CS_STARTTLS) {
            st_xmlstream_restart(c->xs);
            c->state = CS_HANDSHAKE; /* TLS starts after the loop flushes */
        } else {
            c->dead = 1;
            note_error(c, "STARTTLS failed");
        }
    } else if (strcmp(ns, ST_NS_SASL) == 0) {
        if (strcmp(name, "challenge") == 0)
            sasl_challenge(c, s->root);
        else if (strcmp(name, "success") == 0)
            sasl_success(c, s->root);
        else {
            c->dead = 1;
            note_error(c, "SASL failure (wrong password, or user missing?)");
        }
    } else if (strcmp(name, "iq") == 0) {
        on_iq(c, s);
    } else if (strcmp(name, "message") == 0) {
        on_message(c, s);
    } else if (strcmp(name, "presence") == 0) {
        on_presence(c, s);
    } else {
        pkt_misc++;
    }
    st_stanza_unref(s);
}

/* ---- socket events ---- */

static void conn_readable(conn *c)
{
    char buf[READ_CHUNK];
    for (int rounds = 0; rounds < 8 && !c->dead; rounds++) {
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, buf, sizeof buf);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    return;
                if (e == SSL_ERROR_ZERO_RETURN && c->state == CS_CLOSING)
                    closed_ok++;
                c->dead = 1;
                if (c->state != CS_CLOSING)
                    note_error(c, "TLS read failed or connection closed");
                return;
            }
            n = r;
        } else {
            n = recv(c->fd, buf, sizeof buf, 0);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return;
                c->dead = 1;
                if (c->state != CS_CLOSING)
                    note_error(c, errno == ECONNRESET ? "connection reset by the server"
                                                      : "read failed");
                return;
            }
            if (n == 0) {
                c->dead = 1;
                if (c->state != CS_CLOSING)
                    note_error(c, "connection closed by the server");
                return;
            }
        }
        if (st_xmlstream_feed(c->xs, buf, (size_t)n) != 0) {
            c->dead = 1;
            fprintf(stderr, "loadgen: conn %d: XML error %s: %s\n", c->idx,
                    st_xmlstream_error(c->xs), st_xmlstream_error_text(c->xs));
            return;
        }
        /* <proceed/> arrived: start TLS on the raw socket now. */
        if (c->state == CS_HANDSHAKE && !c->ssl) {
            if (tls_begin(c) != 0 || tls_step(c) != 0)
                c->dead = 1;
            return;
        }
        if ((size_t)n < sizeof buf && !c->ssl)
            return;
    }
}

static void conn_event(conn *c, uint32_t ev)
{
    if (c->state == CS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            conn_fail(c, strerror(err));
            return;
        }
        if (o.tls == TLS_DIRECT) {
            if (tls_begin(c) != 0 || tls_step(c) != 0)
                c->dead = 1;
        } else {
            send_header(c);
        }
    } else if (c->state == CS_HANDSHAKE && c->ssl) {
        if (tls_step(c) != 0)
            c->dead = 1;
    } else {
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
            conn_readable(c);
        if ((ev & EPOLLOUT) && !c->dead)
            mark_dirty(c);
    }
}

static void flush_dirty(void)
{
    for (long i = 0; i < ndirty; i++) {
        conn *c = &conns[dirty_list[i]];
        c->dirty = 0;
        if (c->state == CS_FREE)
            continue;
        /* Died as a side effect of another connection's event (its output
         * overflowed): release here, after the batch, like reap_dead. */
        if (c->dead) {
            if (c->state == CS_CLOSING)
                conn_release(c);
            else
                conn_fail(c, "output overflow");
            continue;
        }
        if (c->state == CS_HANDSHAKE && !c->ssl)
            continue;
        if (flush_out(c) != 0)
            c->dead = 1;
    }
    ndirty = 0;
}

static void begin_close(conn *c)
{
    send_str(c, "</stream:stream>");
    c->state = CS_CLOSING;
    c->t_close = now_s();
}

/* A server that never answers our </stream:stream> must not hold a slot:
 * after CLOSE_WAIT_S the connection is dropped (and counted). */
#define CLOSE_WAIT_S 2.0
static long close_timeouts;
static void sweep_closing(double now)
{
    static double last;
    if (now - last < 0.1)
        return;
    last = now;
    for (long i = 0; i < nconns; i++)
        if (conns[i].state == CS_CLOSING && now - conns[i].t_close > CLOSE_WAIT_S) {
            close_timeouts++;
            conn_release(&conns[i]);
        }
}

/* ---- the loop ---- */

typedef int (*step_fn)(double now); /* 1 = phase finished */

/* Close connections that died in this batch: after the batch, so no handler
 * ever sees a freed connection. */
static void reap_dead(long *dead_idx, long nd)
{
    for (long i = 0; i < nd; i++) {
        conn *c = &conns[dead_idx[i]];
        if (c->state == CS_FREE || !c->dead)
            continue;
        if (c->state == CS_CLOSING)
            conn_release(c);
        else
            conn_fail(c, "connection lost");
    }
}

/* Run the loop until step() says done or the deadline passes. */
static int run_loop(step_fn step, double deadline, int tick_ms)
{
    enum { MAXEV = 512 };
    struct epoll_event evs[MAXEV];
    long dead_idx[MAXEV];
    for (;;) {
        double now = now_s();
        sweep_closing(now);
        if (step(now))
            return 0;
        if (now > deadline || now - t0 > o.timeout)
            return -1;
        flush_dirty();
        int n = epoll_wait(ep, evs, MAXEV, tick_ms);
        long nd = 0;
        for (int i = 0; i < n; i++) {
            conn *c = &conns[evs[i].data.u32];
            if (c->state == CS_FREE)
                continue;
            conn_event(c, evs[i].events);
            if (c->dead)
                dead_idx[nd++] = c->idx;
        }
        flush_dirty();
        reap_dead(dead_idx, nd);
    }
}

/* ---- scenarios ---- */

static long next_login; /* login storm: next login number to start */

static void scenario_ready(conn *c)
{
    if (o.scenario == SC_LOGIN)
        begin_close(c);
}

/* Keep K logins in flight until N are started; free slots as they finish. */
static int login_step(double now)
{
    (void)now;
    long inflight = started - ready - failed;
    while (inflight < o.inflight && next_login < o.n) {
        /* find a free slot; login storms cycle through nconns slots */
        conn *c = NULL;
        for (long tries = 0; tries < nconns; tries++) {
            conn *t = &conns[(next_login + tries) % nconns];
            if (t->state == CS_FREE) {
                c = t;
                break;
            }
        }
        if (!c)
            break;
        long user = next_login % o.users;
        long res = o.scenario == SC_LOGIN ? next_login : next_login / o.users;
        if (conn_start(c, user, res) != 0) {
            failed++;
            conn_release(c);
        }
        next_login++;
        inflight++;
    }
    return ready + failed >= o.n;
}

static double phase_end;
static int wait_closed_step(double now)
{
    (void)now;
    for (long i = 0; i < nconns; i++)
        if (conns[i].state == CS_CLOSING)
            return 0;
    return 1;
}

static int sleep_step(double now)
{
    return now >= phase_end;
}

static void close_all(void)
{
    for (long i = 0; i < nconns; i++)
        if (conns[i].state == CS_READY)
            begin_close(&conns[i]);
    run_loop(wait_closed_step, now_s() + 3, 10);
    for (long i = 0; i < nconns; i++)
        if (conns[i].state != CS_FREE)
            conn_release(&conns[i]);
}

static void emit_common(st_buf *j)
{
    st_buf_printf(j,
                  "{\"scenario\":\"%s\",\"label\":\"%s\",\"tls\":\"%s\",\"mech\":\"%s\"",
                  o.scenario == SC_LOGIN   ? "login"
                  : o.scenario == SC_IDLE  ? "idle"
                  : o.scenario == SC_MSG   ? "msg"
                                           : "presence",
                  o.label, o.tls == TLS_NONE ? "none" : o.tls == TLS_STARTTLS ? "starttls" : "direct",
                  o.mech == MECH_PLAIN ? "PLAIN" : "SCRAM-SHA-1");
}

/* The generator's own CPU time: when it nears the elapsed time, the
 * generator (not the server) was the limit of that run. */
static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double gen_cpu_mark;

static void emit(st_buf *j)
{
    st_buf_printf(j,
                  ",\"gen_cpu_s\":%.2f,\"closed_politely\":%ld,\"other_stanzas\":%" PRIu64
                  ",\"failed\":%ld,\"error\":\"%s\"}\n",
                  self_cpu_s() - gen_cpu_mark, closed_ok, pkt_misc, failed,
                  first_error ? first_error : "");
    fputs(j->data, stdout);
    fflush(stdout);
    st_buf_free(j);
}

/* Log in `count` sessions (K in flight) and keep them. 0 when all made it. */
static int login_all(long count)
{
    o.n = count;
    next_login = 0;
    double deadline = now_s() + o.timeout;
    int r = run_loop(login_step, deadline, 10);
    if (r != 0 || failed > 0) {
        fprintf(stderr, "loadgen: only %ld of %ld sessions logged in (%ld failed)\n", ready,
                count, failed);
        return -1;
    }
    return 0;
}

static int scenario_login(void)
{
    /* Warm-up, not measured: one login per user fills the SaltedPassword
     * cache, so the storm measures the server, not our PBKDF2. */
    long n = o.n;
    o.n = n < o.users ? n : o.users;
    next_login = 0;
    long cached = 0;
    for (long i = 0; i < o.n; i++)
        cached += cache[i].valid;
    if (cached == o.n)
        o.n = 0; /* every user is cached from an earlier run */
    if (o.n && run_loop(login_step, now_s() + o.timeout, 10) != 0) {
        fprintf(stderr, "loadgen: warm-up logins timed out\n");
        return 1;
    }
    if (failed)
        fprintf(stderr, "loadgen: %ld of %ld warm-up logins failed\n", failed, o.n);
    run_loop(wait_closed_step, now_s() + 3, 10);
    o.n = n;
    started = ready = failed = close_timeouts = 0;
    first_error = NULL;
    memset(lat_hist, 0, LAT_BUCKETS * sizeof *lat_hist);
    lat_count = 0;
    gen_cpu_mark = self_cpu_s();
    usage u0 = server_usage();
    double ts = now_s();
    next_login = 0;
    int r = run_loop(login_step, ts + o.timeout, 10);
    double el = now_s() - ts;
    /* wait for the closes to finish so teardown is charged to the logins */
    run_loop(wait_closed_step, now_s() + 3, 10);
    usage u1 = server_usage();
    st_buf j;
    st_buf_init(&j, 0);
    emit_common(&j);
    double cpu_ms = (u1.cpu_s - u0.cpu_s) * 1000.0;
    st_buf_printf(&j,
                  ",\"n\":%ld,\"inflight\":%ld,\"ok\":%ld,\"elapsed_s\":%.3f,\"logins_per_s\":%.1f,"
                  "\"server_cpu_ms\":%.0f,\"cpu_ms_per_login\":%.4f,\"login_p50_ms\":%.2f,"
                  "\"login_p99_ms\":%.2f,\"close_timeouts\":%ld,\"timed_out\":%d",
                  o.n, o.inflight, ready, el, ready / el, cpu_ms, ready ? cpu_ms / ready : -1,
                  lat_pct(0.5), lat_pct(0.99), close_timeouts, r != 0);
    emit(&j);
    return r != 0 || failed;
}

static int scenario_idle(void)
{
    usage u0 = server_usage();
    double ts = now_s();
    int r = login_all(o.n);
    double el = now_s() - ts;
    phase_end = now_s() + SETTLE_MS / 1000.0;
    run_loop(sleep_step, phase_end + 1, 50);
    usage u1 = server_usage();
    /* Sessions that stay quiet: a server may give back per-connection
     * memory it can rebuild (Starling's parsers), a collector may run. The
     * same wait applies to every server; bytes_per_session is the figure
     * after it, bytes_per_session_fresh the one right after the logins. */
    usage u2 = u1;
    if (o.idle_wait > 0) {
        phase_end = now_s() + o.idle_wait;
        run_loop(sleep_step, phase_end + 1, 50);
        u2 = server_usage();
    }
    long alive = 0;
    for (long i = 0; i < nconns; i++)
        alive += conns[i].state == CS_READY;
    st_buf j;
    st_buf_init(&j, 0);
    emit_common(&j);
    st_buf_printf(&j,
                  ",\"n\":%ld,\"ok\":%ld,\"alive\":%ld,\"login_s\":%.2f,\"rss_before_kb\":%ld,"
                  "\"rss_after_kb\":%ld,\"idle_wait_s\":%.0f,\"rss_idle_kb\":%ld,"
                  "\"bytes_per_session_fresh\":%.0f,\"bytes_per_session\":%.0f",
                  o.n, ready, alive, el, u0.rss_kb, u1.rss_kb, o.idle_wait, u2.rss_kb,
                  alive ? (double)(u1.rss_kb - u0.rss_kb) * 1024.0 / (double)alive : -1,
                  alive ? (double)(u2.rss_kb - u0.rss_kb) * 1024.0 / (double)alive : -1);
    emit(&j);
    close_all();
    return r;
}

/* msg, fixed rate: send due messages round-robin over both directions. */
static uint64_t rate_sent;
static long rr;
static double phase_start;

static int msg_step(double now)
{
    if (now >= phase_end) {
        phase_running = 0;
        return 1;
    }
    if (o.rate > 0) {
        uint64_t due = (uint64_t)((now - phase_start) * o.rate);
        /* A stall is not made up with a burst larger than 1/10 s. */
        if (due > rate_sent + (uint64_t)(o.rate / 10) + 1)
            rate_sent = due - (uint64_t)(o.rate / 10) - 1;
        for (; rate_sent < due; rate_sent++) {
            conn *c = &conns[rr];
            rr = (rr + 1) % nconns;
            if (c->state == CS_READY)
                msg_send(c);
        }
    }
    return 0;
}

static int drain_step(double now)
{
    (void)now;
    return deliveries >= expected_deliveries;
}

static uint64_t total_sent(void)
{
    uint64_t s = 0;
    for (long i = 0; i < nconns; i++)
        s += conns[i].sent;
    return s;
}

static int scenario_msg(void)
{
    if (login_all(nconns) != 0)
        return 1;
    /* let initial presence traffic settle before the clock starts */
    phase_end = now_s() + 0.5;
    run_loop(sleep_step, phase_end + 1, 10);
    for (long i = 0; i < nconns; i++)
        conns[i].peer = (int)(i ^ 1);
    memset(lat_hist, 0, LAT_BUCKETS * sizeof *lat_hist);
    lat_count = 0;
    deliveries = 0;
    gen_cpu_mark = self_cpu_s();
    usage u0 = server_usage();
    phase_start = now_s();
    phase_end = phase_start + o.seconds;
    phase_running = 1;
    if (o.rate <= 0)
        for (long i = 0; i < nconns; i++)
            for (long w = 0; w < o.window; w++)
                msg_send(&conns[i]);
    run_loop(msg_step, phase_end + 1, o.rate > 0 ? 1 : 10);
    phase_running = 0;
    double send_el = now_s() - phase_start;
    expected_deliveries = total_sent();
    run_loop(drain_step, now_s() + DRAIN_MS / 1000.0, 10);
    double el = now_s() - phase_start;
    usage u1 = server_usage();
    uint64_t sent = total_sent();
    long lossy_pairs = 0;
    for (long i = 0; i < nconns; i++)
        if (conns[i].sent != conns[conns[i].peer].recv)
            lossy_pairs++;
    double cpu_ms = (u1.cpu_s - u0.cpu_s) * 1000.0;
    st_buf j;
    st_buf_init(&j, 0);
    emit_common(&j);
    st_buf_printf(&j,
                  ",\"pairs\":%ld,\"mode\":\"%s\",\"rate\":%.0f,\"window\":%ld,\"seconds\":%.2f,"
                  "\"sent\":%" PRIu64 ",\"delivered\":%" PRIu64 ",\"lost\":%" PRId64
                  ",\"lossy_directions\":%ld,\"msgs_per_s\":%.0f,\"lat_p50_ms\":%.3f,"
                  "\"lat_p90_ms\":%.3f,\"lat_p99_ms\":%.3f,\"lat_max_ms\":%.3f,\"server_cpu_ms\":%.0f,"
                  "\"cpu_ms_per_1000_msgs\":%.3f",
                  o.pairs, o.rate > 0 ? "rate" : "window", o.rate, o.window, send_el, sent,
                  deliveries, (int64_t)(sent - deliveries), lossy_pairs, deliveries / el,
                  lat_pct(0.5), lat_pct(0.9), lat_pct(0.99), lat_pct(1.0), cpu_ms,
                  deliveries ? cpu_ms * 1000.0 / (double)deliveries : -1);
    emit(&j);
    close_all();
    return sent != deliveries;
}

/* presence: subscribe every pair of a group, then broadcast status updates. */
static uint64_t subs_expected;
static int subs_step(double now)
{
    (void)now;
    uint64_t got = 0;
    for (long i = 0; i < nconns; i++)
        got += conns[i].subs_in;
    return got >= subs_expected;
}

static int presence_step(double now)
{
    if (now >= phase_end) {
        phase_running = 0;
        return 1;
    }
    return 0;
}

static int scenario_presence(void)
{
    if (login_all(nconns) != 0)
        return 1;
    char user[128];
    uint64_t pairs = 0;
    /* Each pair (a < b): a subscribes to b; b accepts and asks back; a
     * accepts. Two <subscribed/> arrive per pair. */
    for (long a = 0; a < nconns; a++)
        for (long b = a + 1; b < nconns && group_of(b) == group_of(a); b++) {
            user_name(conns[b].user, user, sizeof user);
            send_fmt(&conns[a], "<presence to='%s@%s' type='subscribe'/>", user, o.domain);
            pairs++;
        }
    subs_expected = 2 * pairs;
    double ts = now_s();
    int r = run_loop(subs_step, ts + o.timeout / 2, 10);
    double setup_s = now_s() - ts;
    uint64_t got = 0;
    for (long i = 0; i < nconns; i++)
        got += conns[i].subs_in;
    if (r != 0) {
        st_buf j;
        st_buf_init(&j, 0);
        emit_common(&j);
        st_buf_printf(&j,
                      ",\"supported\":false,\"subscribed_expected\":%" PRIu64
                      ",\"subscribed_got\":%" PRIu64 ",\"setup_s\":%.1f",
                      subs_expected, got, setup_s);
        emit(&j);
        close_all();
        return 2;
    }
    phase_end = now_s() + 1.0;
    run_loop(sleep_step, phase_end + 1, 10);
    memset(lat_hist, 0, LAT_BUCKETS * sizeof *lat_hist);
    lat_count = 0;
    deliveries = 0;
    for (long i = 0; i < nconns; i++)
        conns[i].recv = conns[i].sent = 0;
    gen_cpu_mark = self_cpu_s();
    usage u0 = server_usage();
    phase_start = now_s();
    phase_end = phase_start + o.seconds;
    phase_running = 1;
    for (long i = 0; i < nconns; i++)
        for (long w = 0; w < o.window; w++)
            presence_send_status(&conns[i]);
    run_loop(presence_step, phase_end + 1, 10);
    phase_running = 0;
    double send_el = now_s() - phase_start;
    expected_deliveries = total_sent() * (uint64_t)o.contacts;
    run_loop(drain_step, now_s() + DRAIN_MS / 1000.0, 10);
    double el = now_s() - phase_start;
    usage u1 = server_usage();
    double cpu_ms = (u1.cpu_s - u0.cpu_s) * 1000.0;
    st_buf j;
    st_buf_init(&j, 0);
    emit_common(&j);
    st_buf_printf(&j,
                  ",\"supported\":true,\"users\":%ld,\"contacts\":%ld,\"setup_s\":%.1f,"
                  "\"seconds\":%.2f,\"broadcasts\":%" PRIu64 ",\"deliveries\":%" PRIu64
                  ",\"expected\":%" PRIu64 ",\"lost\":%" PRId64
                  ",\"deliveries_per_s\":%.0f,\"lat_p50_ms\":%.3f,\"lat_p99_ms\":%.3f,"
                  "\"server_cpu_ms\":%.0f,\"cpu_ms_per_1000_deliveries\":%.3f",
                  nconns, o.contacts, setup_s, send_el, total_sent(), deliveries,
                  expected_deliveries, (int64_t)(expected_deliveries - deliveries),
                  deliveries / el, lat_pct(0.5), lat_pct(0.99), cpu_ms,
                  deliveries ? cpu_ms * 1000.0 / (double)deliveries : -1);
    emit(&j);
    close_all();
    return expected_deliveries != deliveries;
}

/* ---- set-up ---- */

static void usage_exit(void)
{
    fputs("usage: loadgen -s login|idle|msg|presence [options]\n"
          "  --host ADDR (127.0.0.1) --port N (5222) --domain D (bench.local)\n"
          "  --tls none|starttls|direct  --mech scram|plain\n"
          "  --prefix u --password pw --users U --user-base B\n"
          "  -n N (logins / sessions)  -k K (logins in flight, 100)\n"
          "  --pairs P --window W --seconds T --rate R (msg/s total; 0 = window mode)\n"
          "  --contacts C (100) --groups G (presence)\n"
          "  --src N (source addresses 127.0.0.1..N) --server-pid PID\n"
          "  --timeout S (abort the run after S seconds, 300) --label TEXT\n"
          "  --sp-cache FILE (keep derived SCRAM keys between runs against one server)\n"
          "  --idle-wait S (idle: sample RSS again after S quiet seconds, 0)\n",
          stderr);
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    o = (opts){.scenario = SC_LOGIN, .host = "127.0.0.1", .domain = "bench.local",
               .prefix = "u", .password = "bench-pw", .port = 5222, .nsrc = 1,
               .tls = TLS_NONE, .mech = MECH_SCRAM1, .users = 1000, .n = 1000,
               .inflight = 100, .pairs = 100, .window = 8, .seconds = 10, .contacts = 100,
               .groups = 2, .timeout = 300, .label = ""};
    static const struct option lo[] = {
        {"scenario", 1, 0, 's'}, {"host", 1, 0, 'H'},      {"port", 1, 0, 'P'},
        {"domain", 1, 0, 'd'},   {"tls", 1, 0, 'T'},       {"mech", 1, 0, 'm'},
        {"prefix", 1, 0, 'x'},   {"password", 1, 0, 'w'},  {"users", 1, 0, 'u'},
        {"user-base", 1, 0, 'b'}, {"pairs", 1, 0, 'p'},    {"window", 1, 0, 'W'},
        {"seconds", 1, 0, 't'},  {"rate", 1, 0, 'r'},      {"contacts", 1, 0, 'c'},
        {"groups", 1, 0, 'g'},   {"src", 1, 0, 'S'},       {"server-pid", 1, 0, 'i'},
        {"timeout", 1, 0, 'O'},  {"label", 1, 0, 'l'},     {"sp-cache", 1, 0, 'C'},
        {"idle-wait", 1, 0, 'I'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "s:n:k:t:", lo, NULL)) != -1) {
        switch (ch) {
        case 's':
            o.scenario = !strcmp(optarg, "login")  ? SC_LOGIN
                         : !strcmp(optarg, "idle") ? SC_IDLE
                         : !strcmp(optarg, "msg")  ? SC_MSG
                         : !strcmp(optarg, "presence") ? SC_PRESENCE
                                                       : (usage_exit(), SC_LOGIN);
            break;
        case 'H': o.host = optarg; break;
        case 'P': o.port = atoi(optarg); break;
        case 'd': o.domain = optarg; break;
        case 'T':
            o.tls = !strcmp(optarg, "none")       ? TLS_NONE
                    : !strcmp(optarg, "starttls") ? TLS_STARTTLS
                    : !strcmp(optarg, "direct")   ? TLS_DIRECT
                                                  : (usage_exit(), TLS_NONE);
            break;
        case 'm': o.mech = !strcmp(optarg, "plain") ? MECH_PLAIN : MECH_SCRAM1; break;
        case 'x': o.prefix = optarg; break;
        case 'w': o.password = optarg; break;
        case 'u': o.users = atol(optarg); break;
        case 'b': o.user_base = atol(optarg); break;
        case 'n': o.n = atol(optarg); break;
        case 'k': o.inflight = atol(optarg); break;
        case 'p': o.pairs = atol(optarg); break;
        case 'W': o.window = atol(optarg); break;
        case 't': o.seconds = atof(optarg); break;
        case 'r': o.rate = atof(optarg); break;
        case 'c': o.contacts = atol(optarg); break;
        case 'g': o.groups = atol(optarg); break;
        case 'S': o.nsrc = atoi(optarg); break;
        case 'i': o.server_pid = atoi(optarg); break;
        case 'O': o.timeout = atof(optarg); break;
        case 'l': o.label = optarg; break;
        case 'C': o.sp_cache = optarg; break;
        case 'I': o.idle_wait = atof(optarg); break;
        default: usage_exit();
        }
    }
    if (o.users < 1 || o.n < 1 || o.inflight < 1 || o.pairs < 1 || o.window < 1 ||
        o.contacts < 1 || o.groups < 1 || o.nsrc < 1 || o.nsrc > 250 || o.timeout <= 0 ||
        o.seconds <= 0 || o.seconds > 3600 || o.idle_wait < 0 || o.idle_wait > 600)
        usage_exit();
}

/* The cache file is a plain array of spcache for users 0..users-1 of this
 * server (salts differ per server, so the runner keeps one per server). */
static void cache_load(void)
{
    FILE *f = o.sp_cache ? fopen(o.sp_cache, "rb") : NULL;
    if (!f)
        return;
    size_t n = fread(cache, sizeof *cache, (size_t)o.users, f);
    for (size_t i = n; i < (size_t)o.users; i++)
        cache[i].valid = 0;
    fclose(f);
}

static void cache_save(void)
{
    if (!o.sp_cache)
        return;
    FILE *f = fopen(o.sp_cache, "wb");
    if (!f)
        return;
    fwrite(cache, sizeof *cache, (size_t)o.users, f);
    fclose(f);
}

static void raise_fd_limit(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)need + 64;
    if (rl.rlim_cur >= want)
        return;
    if (rl.rlim_max < want)
        rl.rlim_max = want; /* root may raise the hard limit */
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        fprintf(stderr, "loadgen: cannot raise the fd limit to %ld: %s\n", (long)want,
                strerror(errno));
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    t0 = now_s();
    switch (o.scenario) {
    case SC_LOGIN: nconns = 8 * o.inflight; break; /* closing ones hold a slot */
    case SC_IDLE: nconns = o.n; break;
    case SC_MSG: nconns = 2 * o.pairs; break;
    case SC_PRESENCE: nconns = o.groups * (o.contacts + 1); break;
    }
    if (o.scenario != SC_LOGIN && o.scenario != SC_IDLE && nconns > o.users) {
        fprintf(stderr, "loadgen: this scenario needs %ld distinct users, --users is %ld\n",
                nconns, o.users);
        return 2;
    }
    raise_fd_limit(nconns);
    if (inet_pton(AF_INET, o.host, &dst.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address\n");
        return 2;
    }
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)o.port);

    int rc = 1;
    conns = calloc((size_t)nconns, sizeof *conns);
    dirty_list = calloc((size_t)nconns, sizeof *dirty_list);
    cache = calloc((size_t)o.users, sizeof *cache);
    lat_hist = calloc(LAT_BUCKETS, sizeof *lat_hist);
    ep = epoll_create1(EPOLL_CLOEXEC);
    ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!conns || !dirty_list || !cache || !lat_hist || ep < 0 || !ssl_ctx) {
        fprintf(stderr, "loadgen: out of memory\n");
        goto done;
    }
    for (long i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].idx = (int)i;
    }
    /* Self-signed certificates everywhere: the benchmark measures cost, not
     * trust. Buffers are released while idle so 50k TLS sessions stay cheap
     * on our side too. */
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ssl_ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    cache_load();
    switch (o.scenario) {
    case SC_LOGIN: rc = scenario_login(); break;
    case SC_IDLE: rc = scenario_idle(); break;
    case SC_MSG: rc = scenario_msg(); break;
    case SC_PRESENCE: rc = scenario_presence(); break;
    }
    cache_save();
done:
    for (long i = 0; conns && i < nconns; i++)
        if (conns[i].state != CS_FREE)
            conn_release(&conns[i]);
    free(conns);
    free(dirty_list);
    free(cache);
    free(lat_hist);
    SSL_CTX_free(ssl_ctx);
    if (ep >= 0)
        close(ep);
    return rc;
}
