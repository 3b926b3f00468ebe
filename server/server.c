/* server.c - starlingd's life cycle: hosts, listeners, signals, storage
 * completions, reload and shutdown.
 *
 * Signals arrive through a signalfd on the loop, so SIGTERM/SIGHUP handling
 * is ordinary loop code (no async-signal-safety puzzles). SIGTERM closes every
 * stream with <system-shutdown/> and stops once they are flushed (or after a
 * short deadline). SIGHUP reloads the config file and the certificates; a
 * config with errors is reported and the running one kept. */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>
#include "server/admin.h"
#include "server/c2s.h"
#include "server/guard.h"
#include "server/log.h"
#include "server/server.h"
#include "server/tls.h"
#include "starling/alloc.h"

#define SHUTDOWN_DEADLINE_MS 3000

static char id_prefix[17];
static int signal_fd = -1;
static st_io signal_io;

void st_server_note_held(st_server *s, long delta)
{
    s->held_stanzas += delta;
    s->held_gen++;
}

void st_server_make_id(st_server *s, char *out, size_t outsz)
{
    snprintf(out, outsz, "%s%llx", id_prefix, ++s->next_id);
}

/* ---- IQs from the server, with a callback for the answer ---- */

typedef struct pending_iq {
    char id[64];
    char to[3100]; /* only the addressee may answer */
    st_timer timer;
    st_server *srv;
    void (*cb)(void *ud, st_stanza *reply);
    void *ud;
} pending_iq;

static void pending_iq_timeout(st_loop *l, st_timer *t)
{
    pending_iq *p = t->ud;
    st_map_del(&p->srv->pending_iqs, p->id);
    p->cb(p->ud, NULL);
    st_free(p);
}

int st_server_iq(st_server *s, st_stanza *iq, unsigned timeout_ms,
                 void (*cb)(void *ud, st_stanza *reply), void *ud)
{
    pending_iq *p = st_calloc(1, sizeof *p);
    if (!p) return -1;
    st_server_make_id(s, p->id, sizeof p->id);
    if (st_node_set_attr(iq, iq->root, "id", p->id) != 0 ||
        st_map_put(&s->pending_iqs, p->id, p) != 0) {
        st_free(p);
        return -1;
    }
    snprintf(p->to, sizeof p->to, "%s", st_get(iq, "to") ? st_get(iq, "to") : "");
    p->srv = s;
    p->cb = cb;
    p->ud = ud;
    st_timer_init(&p->timer, pending_iq_timeout, p);
    st_timer_set(s->loop, &p->timer, timeout_ms);
    st_route(s, iq);
    return 0;
}

int st_server_iq_reply(st_server *s, st_stanza *reply)
{
    const char *id = st_get(reply, "id");
    pending_iq *p = id ? st_map_get(&s->pending_iqs, id) : NULL;
    if (!p) return 0;
    const char *from = st_get(reply, "from");
    if (!from || strcmp(from, p->to) != 0) return 0; /* someone else guessing ids */
    st_map_del(&s->pending_iqs, id);
    st_timer_cancel(s->loop, &p->timer);
    p->cb(p->ud, reply);
    st_free(p);
    return 1;
}

static int drop_pending_iq(void *ud, const char *k, void *v)
{
    pending_iq *p = v;
    st_timer_cancel(p->srv->loop, &p->timer);
    p->cb(p->ud, NULL);
    st_free(p);
    return 0;
}

/* ---- hosts ---- */

static void host_free(st_host *h)
{
    for (size_t i = 0; i < h->nmods; i++)
        if (h->mods[i]->host_fini) h->mods[i]->host_fini(h, h->mod_state[i]);
    for (size_t i = 0; i < sizeof h->features / sizeof h->features[0]; i++) st_free(h->features[i]);
    st_free(h->name);
    st_free(h);
}

/* (Re)apply a host's config: module list and per-module state. */
static int host_configure(st_host *h, const st_host_conf *hc)
{
    const st_module *mods[ST_MAX_HOST_MODULES];
    void *state[ST_MAX_HOST_MODULES];
    size_t n = 0;
    for (size_t i = 0; i < hc->nmodules && n < ST_MAX_HOST_MODULES; i++) {
        const st_module *m = st_module_find(hc->modules[i]);
        if (!m) continue; /* the config loader already refused unknown modules */
        void *st = NULL;
        int found = 0;
        for (size_t k = 0; k < h->nmods; k++) {
            if (h->mods[k] == m) {
                st = h->mod_state[k];
                h->mods[k] = NULL; /* carried over */
                found = 1;
            }
        }
        if (!found && m->host_init && m->host_init(h, &st) != 0) {
            st_error("server", "host %s: module %s failed to start", hc->name, m->name);
            continue;
        }
        mods[n] = m;
        state[n++] = st;
    }
    for (size_t k = 0; k < h->nmods; k++)
        if (h->mods[k] && h->mods[k]->host_fini) h->mods[k]->host_fini(h, h->mod_state[k]);
    /* Hooks and handlers run by the modules' own priority, highest first;
     * the order of the config's modules line does not matter (stable). */
    for (size_t i = 1; i < n; i++) {
        for (size_t k = i; k > 0 && mods[k]->priority > mods[k - 1]->priority; k--) {
            const st_module *tm = mods[k];
            void *ts = state[k];
            mods[k] = mods[k - 1];
            state[k] = state[k - 1];
            mods[k - 1] = tm;
            state[k - 1] = ts;
        }
    }
    memcpy(h->mods, mods, n * sizeof *mods);
    memcpy(h->mod_state, state, n * sizeof *state);
    h->nmods = n;
    h->conf = hc;
    return 0;
}

st_host *st_server_host(st_server *s, const char *domain)
{
    for (size_t i = 0; i < s->nhosts; i++)
        if (!s->hosts[i]->removed && strcmp(s->hosts[i]->name, domain) == 0) return s->hosts[i];
    return NULL;
}

static st_host *find_host_any(st_server *s, const char *domain)
{
    for (size_t i = 0; i < s->nhosts; i++)
        if (strcmp(s->hosts[i]->name, domain) == 0) return s->hosts[i];
    return NULL;
}

static int apply_hosts(st_server *s, const st_config *cfg)
{
    for (size_t i = 0; i < s->nhosts; i++) s->hosts[i]->removed = 1;
    for (size_t i = 0; i < cfg->nhosts; i++) {
        st_host *h = find_host_any(s, cfg->hosts[i].name);
        if (!h) {
            st_host **nh = st_realloc(s->hosts, (s->nhosts + 1) * sizeof *nh);
            if (!nh) return -1;
            s->hosts = nh;
            h = st_calloc(1, sizeof *h);
            if (!h || !(h->name = st_strdup(cfg->hosts[i].name))) {
                st_free(h);
                return -1;
            }
            h->srv = s;
            s->hosts[s->nhosts++] = h;
        }
        h->removed = 0;
        host_configure(h, &cfg->hosts[i]);
    }
    return 0;
}

int st_host_has(const st_host *h, const char *module)
{
    for (size_t i = 0; i < h->nmods; i++)
        if (strcmp(h->mods[i]->name, module) == 0) return 1;
    return 0;
}

void *st_host_mod_state(const st_host *h, const st_module *m)
{
    for (size_t i = 0; i < h->nmods; i++)
        if (h->mods[i] == m) return h->mod_state[i];
    return NULL;
}

static const char *opt_value(const st_host *h, const st_module *m, const char *opt)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->name, opt);
    const st_conf_kv *kv = st_host_opt(h->conf, key);
    if (kv) return kv->value;
    const st_module_opt *o = st_module_opt_find(m, opt);
    return o ? o->def : NULL;
}

long long st_host_opt_num(const st_host *h, const st_module *m, const char *opt)
{
    const st_module_opt *o = st_module_opt_find(m, opt);
    const char *v = opt_value(h, m, opt);
    long long n = 0;
    if (!v || !o) return 0;
    if (o->type == ST_OPT_DURATION) st_parse_duration(v, &n);
    else st_parse_size(v, &n);
    return n;
}

int st_host_opt_bool(const st_host *h, const st_module *m, const char *opt)
{
    int b = 0;
    const char *v = opt_value(h, m, opt);
    if (v) st_parse_bool(v, &b);
    return b;
}

const char *st_host_opt_str(const st_host *h, const st_module *m, const char *opt)
{
    return opt_value(h, m, opt);
}

/* ---- listeners ---- */

typedef struct listener {
    st_io io;
    int direct_tls;
    st_server *srv;
} listener;

static void on_accept(st_loop *l, st_io *io, unsigned ev)
{
    listener *ln = io->ud;
    st_server *s = ln->srv;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                st_warn("server", "accept: %s", strerror(errno));
            return;
        }
        char host[INET6_ADDRSTRLEN] = "?", peer[80];
        int port = 0;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
            snprintf(peer, sizeof peer, "%s:%d", host, port);
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
            snprintf(peer, sizeof peer, "[%s]:%d", host, port);
        }
        if (s->stopping || (int)s->nconns >= s->cfg->max_connections) {
            if (!ln->direct_tls) {
                static const char msg[] =
                    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
                    "<stream:error><resource-constraint "
                    "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
                    "</stream:stream>";
                ssize_t w = send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL);
                (void)w;
            }
            st_warn("server", "client %s: refused, %zu connections (max_connections)", peer,
                    s->nconns);
            close(fd);
            continue;
        }
        const char *why = NULL;
        if (st_guard_connect(s, host, &why) != 0) {
            if (!ln->direct_tls) {
                static const char msg[] =
                    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
                    "<stream:error><policy-violation "
                    "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
                    "</stream:stream>";
                ssize_t w = send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL);
                (void)w;
            }
            st_info("server", "client %s: refused, %s", peer, why);
            close(fd);
            continue;
        }
        if (!st_conn_accept(s, fd, peer, ln->direct_tls)) st_guard_disconnect(s, host);
    }
}

static int listen_one(st_server *s, const char *addr, int port, int direct_tls, char *err,
                      size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    int fam;
    if (strchr(addr, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = fam = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, addr, &a->sin6_addr) != 1) goto bad;
        sl = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = fam = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, addr, &a->sin_addr) != 1) goto bad;
        sl = sizeof *a;
    }
    int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto sys;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fam == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        close(fd);
        if (fam == AF_INET6 && (e == EADDRNOTAVAIL || e == EAFNOSUPPORT)) {
            st_warn("server", "IPv6 address %s not available, not listening on it", addr);
            return 1;
        }
        snprintf(err, errlen, "cannot listen on %s port %d: %s%s", addr, port, strerror(e),
                 e == EADDRINUSE ? " (another server running? see `starlingctl check`)" : "");
        return -1;
    }
    listener *ln = st_calloc(1, sizeof *ln);
    size_t n = s->nlisten + 1;
    int *fds = st_realloc(s->listen_fds, n * sizeof *fds);
    if (fds) s->listen_fds = fds;
    st_io **ios = (st_io **)s->listen_io;
    ios = st_realloc(ios, n * sizeof *ios);
    if (!ln || !fds || !ios) {
        st_free(ln);
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->listen_io = (st_io *)ios;
    ln->srv = s;
    ln->direct_tls = direct_tls;
    if (st_io_add(s->loop, &ln->io, fd, ST_EV_READ, on_accept, ln) != 0) {
        st_free(ln);
        close(fd);
        goto sys;
    }
    fds[s->nlisten] = fd;
    ios[s->nlisten] = &ln->io;
    s->nlisten = n;
    st_info("server", "listening on %s%s%s:%d (%s)", fam == AF_INET6 ? "[" : "", addr,
            fam == AF_INET6 ? "]" : "", port, direct_tls ? "direct TLS" : "STARTTLS");
    return 0;
bad:
    snprintf(err, errlen, "bind address '%s' is not an IP address", addr);
    return -1;
sys:
    snprintf(err, errlen, "cannot listen on %s port %d: %s", addr, port, strerror(errno));
    return -1;
}

/* ---- giving up root once the privileged work is done ---- */

/* Give path to the daemon's user. A file that is not there is fine (no
 * -shm yet, no admin socket configured); lchown because these are our own
 * files and a symlink planted among them must not hand over its target. */
static int give(const char *path, const struct passwd *pw, char *err, size_t errlen)
{
    if (!path || !*path) return 0;
    if (lchown(path, pw->pw_uid, pw->pw_gid) == 0 || errno == ENOENT) return 0;
    snprintf(err, errlen, "cannot give %s to user %s: %s", path, pw->pw_name, strerror(errno));
    return -1;
}

static int give_suffixed(const char *path, const char *suffix, const struct passwd *pw,
                         char *err, size_t errlen)
{
    char p[4096];
    if ((size_t)snprintf(p, sizeof p, "%s%s", path, suffix) >= sizeof p) return 0;
    return give(p, pw, err, errlen);
}

/* Is path inside dir? Only those certificates are ours to chown: a key
 * under /etc/letsencrypt belongs to whoever put it there. */
static int inside(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* Run as the new user: warn, naming the first directory it cannot enter,
 * when path's directory cannot be traversed and written. SQLite opens the
 * -wal and -shm files by path after start (and deletes -wal at close), so
 * an open database handle is not enough. */
static void check_dir_usable(const char *what, const char *path, const char *user)
{
    char p[4096];
    if ((size_t)snprintf(p, sizeof p, "%s", path) >= sizeof p) return;
    char *slash = strrchr(p, '/');
    if (!slash) return; /* relative to the working directory: nothing to walk */
    if (slash == p) slash[1] = '\0';
    else *slash = '\0';
    if (access(p, W_OK | X_OK) == 0) return;
    int e = errno;
    /* find the first component the user cannot enter */
    for (char *q = p + 1; q && *q; q = strchr(q + 1, '/')) {
        char c = *q;
        if (c == '/') {
            *q = '\0';
            if (access(p, X_OK) != 0) {
                st_warn("server", "%s %s: user %s cannot traverse %s; give it search permission "
                        "(chmod o+x %s) or move the file", what, path, user, p, p);
                return;
            }
            *q = c;
        }
    }
    st_warn("server", "%s %s: user %s cannot write its directory %s (%s); SQLite needs to "
            "create and remove files there", what, path, user, p, strerror(e));
}

/* When started as root, hand the data to the configured user and become
 * it; the sockets that needed root (ports below 1024) are open by now and
 * stay open. A user that does not exist is a warning, never a failed start:
 * a fresh install without the system user must still come up. Once we have
 * decided to drop, any failure is an error: half-dropped is worse than
 * either state. setgroups/setgid/setuid act on every thread (glibc
 * broadcasts them), which matters because the storage thread is running. */
static int drop_privileges(st_server *s, char *err, size_t errlen)
{
    const st_config *c = s->cfg;
    if (geteuid() != 0) return 0; /* already unprivileged: nothing to give up */
    if (!c->user || !*c->user || strcmp(c->user, "root") == 0) {
        st_info("server", "running as root (user = %s)", c->user && *c->user ? c->user : "\"\"");
        return 0;
    }
    errno = 0;
    struct passwd *pw = getpwnam(c->user);
    if (!pw) {
        st_warn("server",
                "user '%s' does not exist, so starlingd keeps running as root; create it with "
                "`adduser --system --group --no-create-home %s` and restart, or set user = root "
                "to say that root is intended",
                c->user, c->user);
        return 0;
    }
    if (pw->pw_uid == 0) {
        st_info("server", "user %s has uid 0: running as root", c->user);
        return 0;
    }
    /* The data the daemon writes from now on, and the certificate it
     * generated: SIGHUP re-reads the certificate and key as the new user. */
    if (give(c->data_dir, pw, err, errlen) != 0) return -1;
    if (strcmp(c->store, "sqlite") == 0 && c->store_dsn) {
        if (give(c->store_dsn, pw, err, errlen) != 0 ||
            give_suffixed(c->store_dsn, "-wal", pw, err, errlen) != 0 ||
            give_suffixed(c->store_dsn, "-shm", pw, err, errlen) != 0)
            return -1;
    }
    if (inside(c->certificate, c->data_dir) && give(c->certificate, pw, err, errlen) != 0)
        return -1;
    if (inside(c->private_key, c->data_dir) && give(c->private_key, pw, err, errlen) != 0)
        return -1;
    if (give(c->admin_socket, pw, err, errlen) != 0) return -1;

    gid_t gid = pw->pw_gid;
    uid_t uid = pw->pw_uid;
    /* initgroups, not setgroups(1, &gid): the admin may have put the user
     * in a group that can read the key (Debian's ssl-cert) */
    if (initgroups(pw->pw_name, gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
        snprintf(err, errlen, "cannot drop privileges to user %s: %s", c->user, strerror(errno));
        return -1;
    }
    /* Trust, but verify: with a saved set-user-ID of 0 left behind, any
     * bug in the daemon would be one setuid(0) away from root. */
    if (setuid(0) != -1 || setgid(0) != -1 || getuid() != uid || geteuid() != uid ||
        getgid() != gid || getegid() != gid) {
        snprintf(err, errlen, "dropped to user %s but root could be regained; refusing to run",
                 c->user);
        return -1;
    }
    st_info("server", "dropped root privileges: running as user %s (uid %u, gid %u)", c->user,
            (unsigned)uid, (unsigned)gid);
    if (strcmp(c->store, "sqlite") == 0 && c->store_dsn)
        check_dir_usable("database", c->store_dsn, c->user);
    if (access(c->path, R_OK) != 0)
        st_warn("server", "config %s is not readable by user %s: a reload (SIGHUP) would fail",
                c->path, c->user);
    if (access(c->certificate, R_OK) != 0)
        st_warn("server", "certificate %s is not readable by user %s: a reload (SIGHUP) "
                "would keep the old one", c->certificate, c->user);
    if (access(c->private_key, R_OK) != 0)
        st_warn("server", "private key %s is not readable by user %s: a reload (SIGHUP) "
                "would keep the old one", c->private_key, c->user);
    return 0;
}

/* Every SWEEP_MS, connections quiet for REST_AFTER_MS give back their
 * parser memory and empty buffers (st_conn_rest): most sessions of a chat
 * server are idle most of the time, and expat's state is about 10 KB of a
 * connection's 14. glibc keeps freed memory in its heap; when a sweep has
 * released enough, malloc_trim hands the free pages back to the kernel so
 * the process's RSS shows it (and other processes can use it). */
#define SWEEP_MS 2000
#define REST_AFTER_MS 5000
#define TRIM_AFTER_RELEASES 64

static void on_sweep(st_loop *l, st_timer *t)
{
    st_server *s = t->ud;
    uint64_t now = st_now_ms();
    size_t released = 0;
    for (st_conn *c = s->conns; c; c = st_conn_next(c))
        released += (size_t)st_conn_rest(c, now, REST_AFTER_MS);
    s->released_since_trim += released;
    s->parsers_rested += released;
    if (s->released_since_trim >= TRIM_AFTER_RELEASES) {
        malloc_trim(0);
        s->released_since_trim = 0;
    }
    if (!s->stopping) st_timer_set(l, t, SWEEP_MS);
}

/* Open the client ports and the admin socket, then give up root: after
 * this returns, the process runs as cfg->user if it was started as root. */
int st_server_listen(st_server *s, char *err, size_t errlen)
{
    const st_config *c = s->cfg;
    int ok = 0;
    for (size_t b = 0; b < c->nbind; b++) {
        for (size_t i = 0; i < c->nc2s_ports; i++) {
            int r = listen_one(s, c->bind[b], c->c2s_ports[i], 0, err, errlen);
            if (r < 0) return -1;
            ok += r == 0;
        }
        for (size_t i = 0; i < c->nc2s_tls_ports; i++) {
            int r = listen_one(s, c->bind[b], c->c2s_tls_ports[i], 1, err, errlen);
            if (r < 0) return -1;
            ok += r == 0;
        }
    }
    if (!ok) {
        snprintf(err, errlen, "no listening socket could be opened");
        return -1;
    }
    if (st_admin_open(s, err, errlen) != 0) return -1;
    st_timer_init(&s->sweep_timer, on_sweep, s);
    st_timer_set(s->loop, &s->sweep_timer, SWEEP_MS);
    return drop_privileges(s, err, errlen);
}

/* ---- signals, storage, shutdown ---- */

static void on_stop_timer(st_loop *l, st_timer *t)
{
    st_server *s = t->ud;
    static uint64_t deadline;
    if (!deadline) deadline = st_now_ms() + SHUTDOWN_DEADLINE_MS;
    if (s->nconns == 0 || st_now_ms() >= deadline) {
        st_loop_stop(l);
        return;
    }
    st_timer_set(l, t, 20);
}

static void end_detached_sessions(st_server *s);

void st_server_shutdown(st_server *s)
{
    if (s->stopping) return;
    s->stopping = 1;
    st_info("server", "shutting down: closing %zu streams", s->nconns);
    for (st_conn *c = s->conns, *next; c; c = next) {
        next = st_conn_next(c);
        st_conn_close(c, "system-shutdown", NULL);
    }
    end_detached_sessions(s);
    st_timer_init(&s->stop_timer, on_stop_timer, s);
    st_timer_set(s->loop, &s->stop_timer, 0);
}

int st_server_reload(st_server *s)
{
    st_buf errs;
    st_buf_init(&errs, 1 << 16);
    st_info("server", "reloading %s", s->cfg->path);
    st_config *n = st_config_load(s->cfg->path, &errs);
    if (!n) {
        st_error("server", "reload failed, keeping the running configuration:\n%s",
                 errs.data ? errs.data : "");
        st_buf_free(&errs);
        return -1;
    }
    st_buf_free(&errs);
    char err[256];
    if (s->tls && st_tls_ctx_reload(s->tls, n->certificate, n->private_key, err, sizeof err) != 0)
        st_error("server", "certificate reload failed, keeping the old one: %s", err);
    else if (s->tls && st_tls_hs_unavailable(s->tls))
        st_info("server", "TLS handshakes left to OpenSSL: %s", st_tls_hs_unavailable(s->tls));
    /* Listeners, storage and the admin socket stay as they are: changing
     * them needs a restart (said in docs/config.md). */
    apply_hosts(s, n);
    st_log_level lvl;
    if (st_log_level_parse(n->log_level, &lvl) == 0) st_log_set_level(lvl);
    st_config *old = s->cfg;
    s->cfg = n;
    s->cfg_gen++; /* what was derived from the old one (c2s's features) is stale */
    st_config_free(old);
    st_info("server", "reloaded: %zu hosts", n->nhosts);
    return 0;
}

static void on_signal(st_loop *l, st_io *io, unsigned ev)
{
    st_server *s = io->ud;
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) st_server_reload(s);
        else st_server_shutdown(s);
    }
}

static void kick_storage(void *ud)
{
    st_storage_kick(ud);
}

static void on_storage(st_loop *l, st_io *io, unsigned ev)
{
    st_storage_dispatch(((st_server *)io->ud)->store);
}

static int ensure_dir(const char *path, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) return 0;
        snprintf(err, errlen, "data_dir %s is not a directory", path);
        return -1;
    }
    if (mkdir(path, 0700) != 0) {
        snprintf(err, errlen, "cannot create data_dir %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

st_server *st_server_new(st_config *cfg, char *err, size_t errlen)
{
    st_server *s = st_calloc(1, sizeof *s);
    if (!s) {
        st_config_free(cfg);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = cfg;
    s->admin_fd = -1;
    s->started = time(NULL);
    st_map_init(&s->sessions);
    st_map_init(&s->users);
    st_map_init(&s->pending_iqs);
    st_map_init(&s->sm_ids);
    st_map_init(&s->guard_ips);
    st_map_init(&s->guard_accounts);
    unsigned char r[4];
    RAND_bytes(r, sizeof r);
    snprintf(id_prefix, sizeof id_prefix, "%02x%02x%02x%02x-", r[0], r[1], r[2], r[3]);

    /* Block the signals before any thread starts (the storage thread would
     * inherit an open mask and take SIGTERM's default action); they are
     * read from a signalfd on the loop instead. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (ensure_dir(cfg->data_dir, err, errlen) != 0) goto fail;
    s->loop = st_loop_new();
    if (!s->loop) {
        snprintf(err, errlen, "cannot create the event loop");
        goto fail;
    }
    const char **names = st_calloc(cfg->nhosts + 1, sizeof *names);
    if (!names) goto oom;
    for (size_t i = 0; i < cfg->nhosts; i++) names[i] = cfg->hosts[i].name;
    if (!cfg->nhosts) names[0] = "localhost";
    int tr = st_tls_ensure_cert(cfg->certificate, cfg->private_key, names,
                                cfg->nhosts ? cfg->nhosts : 1, err, errlen);
    st_free(names);
    if (tr != 0) goto fail;
    s->tls = st_tls_ctx_new(cfg->certificate, cfg->private_key, err, errlen);
    if (!s->tls) goto fail;
    if (st_tls_hs_unavailable(s->tls))
        st_info("server", "TLS handshakes left to OpenSSL: %s", st_tls_hs_unavailable(s->tls));

    const st_store_ops *ops = st_store_find(cfg->store);
    if (!ops) {
        snprintf(err, errlen, "unknown store '%s'", cfg->store);
        goto fail;
    }
    s->store = st_storage_start(ops, cfg->store_dsn, err, errlen);
    if (!s->store) goto fail;
    /* what one round of events submits wakes the storage thread once */
    st_storage_batch_wakeups(s->store);
    st_loop_before_wait(s->loop, kick_storage, s->store);
    if (st_io_add(s->loop, &s->store_io, st_storage_fd(s->store), ST_EV_READ, on_storage, s) != 0)
        goto oom;

    signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (signal_fd < 0 || st_io_add(s->loop, &signal_io, signal_fd, ST_EV_READ, on_signal, s) != 0) {
        snprintf(err, errlen, "cannot set up signal handling: %s", strerror(errno));
        goto fail;
    }
    if (apply_hosts(s, cfg) != 0) goto oom;
    return s;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    st_server_free(s);
    return NULL;
}

int st_server_run(st_server *s)
{
    return st_loop_run(s->loop);
}

static int first_session(void *ud, const char *k, void *v)
{
    *(st_session **)ud = v;
    return 1;
}

static void end_detached_sessions(st_server *s)
{
    st_session *sess;
    for (;;) {
        sess = NULL;
        st_map_each(&s->sessions, first_session, &sess);
        if (!sess) break;
        if (sess->conn) st_conn_close_now(sess->conn);
        else st_session_end(sess);
    }
    st_loop_run_deferred(s->loop);
}

void st_server_free(st_server *s)
{
    if (!s) return;
    while (s->conns) st_conn_close_now(s->conns);
    /* sessions hibernating for stream management have no connection:
     * end them too (their unacknowledged messages go to offline storage
     * while the storage thread still runs) */
    end_detached_sessions(s);
    /* Let the work those endings started finish (stanzas held while a
     * blocklist loads, offline storage of unacknowledged messages) while
     * storage still runs: bounded, a few seconds at most. */
    for (int i = 0; i < 5000 && s->store && (st_storage_inflight(s->store) || s->held_stanzas); i++)
        st_loop_run_once(s->loop, 1);
    st_admin_close(s);
    for (size_t i = 0; i < s->nlisten; i++) {
        st_io *io = ((st_io **)s->listen_io)[i];
        st_io_del(s->loop, io);
        close(s->listen_fds[i]);
        st_free(io);
    }
    st_free(s->listen_fds);
    st_free(s->listen_io);
    if (s->store) {
        st_io_del(s->loop, &s->store_io);
        /* runs the completions still queued: they hold connection references */
        st_storage_stop(s->store);
    }
    if (s->loop) st_loop_run_deferred(s->loop);
    if (signal_fd >= 0) {
        st_io_del(s->loop, &signal_io);
        close(signal_fd);
        signal_fd = -1;
    }
    st_guard_free(s);
    st_map_each(&s->pending_iqs, drop_pending_iq, NULL);
    st_map_free(&s->pending_iqs);
    st_map_free(&s->sm_ids);
    for (size_t i = 0; i < s->nhosts; i++) host_free(s->hosts[i]);
    st_free(s->hosts);
    st_map_free(&s->sessions);
    st_map_free(&s->users);
    if (s->tls) st_tls_ctx_free(s->tls);
    st_loop_free(s->loop);
    st_config_free(s->cfg);
    st_free(s);
}
