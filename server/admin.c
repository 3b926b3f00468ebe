/* admin.c - the admin socket: sessions, kick, status for starlingctl.
 *
 * The socket is mode 0600 in a 0700 directory, so only the server's own user
 * (or root) can connect. Requests are one short line and answers a few
 * lines, so each request is served synchronously with a one-second socket
 * timeout: simple, and bounded even for a client that stalls. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "server/admin.h"
#include "server/c2s.h"
#include "server/log.h"
#include "server/server.h"
#include "starling/buf.h"

static int reply_session(void *ud, const char *key, void *value)
{
    st_buf *out = ud;
    st_session *s = value;
    const char *peer = s->conn ? st_conn_peer(s->conn) : "detached";
    const char *tls = s->conn ? st_conn_tls_version(s->conn) : "-";
    struct tm tm;
    char since[32];
    gmtime_r(&s->since, &tm);
    strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", &tm);
    st_buf_printf(out, "%s %s %s %s priority=%d%s\n", s->full, peer, tls, since, s->priority,
                  s->available ? " available" : "");
    return 0;
}

static void handle(st_server *s, char *line, st_buf *out)
{
    char *arg = strchr(line, ' ');
    if (arg) *arg++ = '\0';
    if (strcmp(line, "sessions") == 0) {
        st_map_each(&s->sessions, reply_session, out);
        st_buf_appends(out, "ok\n");
    } else if (strcmp(line, "kick") == 0 && arg && *arg) {
        st_session *sess = st_session_find(s, arg);
        if (!sess) {
            st_buf_printf(out, "error no session %s\n", arg);
            return;
        }
        st_info("admin", "kicking %s", sess->full);
        if (sess->conn) st_conn_close(sess->conn, "policy-violation", "kicked by an administrator");
        else st_session_end(sess);
        st_buf_appends(out, "ok\n");
    } else if (strcmp(line, "status") == 0) {
        st_buf_printf(out,
                      "starlingd %s\nuptime %lds\nconnections %zu\nsessions %zu\n"
                      "parsers_rested %llu\n",
                      STARLING_VERSION, (long)(time(NULL) - s->started), s->nconns,
                      s->sessions.count, (unsigned long long)s->parsers_rested);
        for (size_t i = 0; i < s->nhosts; i++)
            if (!s->hosts[i]->removed) st_buf_printf(out, "host %s\n", s->hosts[i]->name);
        st_buf_appends(out, "ok\n");
    } else if (strcmp(line, "reload") == 0) {
        if (st_server_reload(s) == 0) st_buf_appends(out, "ok\n");
        else st_buf_appends(out, "error the configuration has errors; see the server log\n");
    } else {
        st_buf_printf(out, "error unknown command '%s' (sessions, kick JID, status, reload)\n",
                      line);
    }
}

static void on_admin(st_loop *l, st_io *io, unsigned ev)
{
    st_server *s = io->ud;
    int fd = accept4(io->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) return;
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char line[1200];
    size_t n = 0;
    while (n < sizeof line - 1) {
        ssize_t r = read(fd, line + n, sizeof line - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        if (memchr(line, '\n', n)) break;
    }
    line[n] = '\0';
    char *nl = strpbrk(line, "\r\n");
    if (nl) *nl = '\0';
    st_buf out;
    st_buf_init(&out, 1 << 24);
    if (n == 0) st_buf_appends(&out, "error empty request\n");
    else handle(s, line, &out);
    for (size_t off = 0; off < out.len;) {
        ssize_t w = send(fd, out.data + off, out.len - off, MSG_NOSIGNAL);
        if (w <= 0) break;
        off += (size_t)w;
    }
    st_buf_free(&out);
    close(fd);
}

int st_admin_open(st_server *s, char *err, size_t errlen)
{
    const char *path = s->cfg->admin_socket;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || !*path) return 0;
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "admin_socket path too long: %s", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    /* A stale socket from a crashed run: remove it only if nobody answers. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        if (connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
            close(probe);
            snprintf(err, errlen, "another starlingd is running (admin socket %s answers)", path);
            return -1;
        }
        close(probe);
    }
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto fail;
    mode_t old = umask(0177);
    int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (r != 0 || listen(fd, 16) != 0) {
        close(fd);
        goto fail;
    }
    s->admin_fd = fd;
    if (st_io_add(s->loop, &s->admin_io, fd, ST_EV_READ, on_admin, s) != 0) goto fail;
    return 0;
fail:
    snprintf(err, errlen, "cannot open admin socket %s: %s", path, strerror(errno));
    return -1;
}

void st_admin_close(st_server *s)
{
    if (s->admin_fd < 0) return;
    st_io_del(s->loop, &s->admin_io);
    close(s->admin_fd);
    s->admin_fd = -1;
    if (s->cfg->admin_socket) unlink(s->cfg->admin_socket);
}
