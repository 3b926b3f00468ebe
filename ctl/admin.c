/* admin.c - starlingctl sessions, kick, status, reload: the live daemon.
 *
 * The admin socket protocol (the daemon side is server/admin.c) is one
 * request line from us, then any number of text lines from the daemon, then
 * a final line that is exactly "ok" or starts with "error " followed by the
 * message. The socket is a unix socket in the data directory, so the file
 * permissions decide who may administer the server. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "starling/alloc.h"
#include "starling/jid.h"

#define ADMIN_TIMEOUT_S 30
#define ADMIN_LINE_MAX 65536

int ctl_admin_request(const char *socket_path, const char *line, FILE *out, char *err,
                      size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {.tv_sec = ADMIN_TIMEOUT_S};
    FILE *in = NULL;
    char *resp = NULL;
    size_t respcap = 0;
    int fd = -1, ret = -1;

    if (!socket_path || strlen(socket_path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "the admin socket path %s is too long for a unix socket",
                 socket_path ? socket_path : "(none)");
        return -1;
    }
    memcpy(sa.sun_path, socket_path, strlen(socket_path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create a unix socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        snprintf(err, errlen, "starlingd is not running (cannot connect to %s: %s)", socket_path,
                 strerror(errno));
        goto fail;
    }
    /* A wedged daemon must not hang a script forever. */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    size_t len = strlen(line);
    for (size_t off = 0; off < len;) {
        ssize_t n = send(fd, line + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            snprintf(err, errlen, "cannot send to starlingd on %s: %s", socket_path,
                     strerror(errno));
            goto fail;
        }
        off += (size_t)n;
    }
    in = fdopen(fd, "r");
    if (!in) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    fd = -1; /* owned by in now */
    for (;;) {
        errno = 0;
        ssize_t n = getline(&resp, &respcap, in);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                snprintf(err, errlen, "starlingd did not answer within %d seconds",
                         ADMIN_TIMEOUT_S);
            else
                snprintf(err, errlen, "starlingd closed the connection before answering");
            goto fail;
        }
        if (n > ADMIN_LINE_MAX) {
            snprintf(err, errlen, "starlingd sent a line longer than %d bytes", ADMIN_LINE_MAX);
            goto fail;
        }
        if (n && resp[n - 1] == '\n') resp[--n] = 0;
        if (n && resp[n - 1] == '\r') resp[--n] = 0;
        if (strcmp(resp, "ok") == 0) {
            ret = 0;
            break;
        }
        if (strncmp(resp, "error ", 6) == 0 || strcmp(resp, "error") == 0) {
            snprintf(err, errlen, "%s", resp[5] ? resp + 6 : "starlingd reported an error");
            ret = 1;
            break;
        }
        if (out) fprintf(out, "%s\n", resp);
    }
fail:
    free(resp); /* getline allocates with malloc */
    if (in) fclose(in);
    if (fd >= 0) close(fd);
    return ret;
}

/* Run one request and map the answer to an exit status. */
static int ask(const st_config *cfg, const char *line)
{
    char err[1024] = "";
    int rc = ctl_admin_request(cfg->admin_socket, line, stdout, err, sizeof err);
    if (rc == 0) return CTL_OK;
    ctl_err("%s", err);
    return CTL_FAIL;
}

int ctl_cmd_sessions(st_config *cfg, int argc, char **argv)
{
    return ask(cfg, "sessions\n");
}

int ctl_cmd_status(st_config *cfg, int argc, char **argv)
{
    return ask(cfg, "status\n");
}

int ctl_cmd_reload(st_config *cfg, int argc, char **argv)
{
    return ask(cfg, "reload\n");
}

int ctl_cmd_kick(st_config *cfg, int argc, char **argv)
{
    st_jid j = {0};
    char full[3 * (ST_JID_PART_MAX + 1) + 8];
    char line[sizeof full + 8];
    int ret = CTL_FAIL;

    if (st_jid_parse(&j, argv[0], strlen(argv[0])) != 0) {
        ctl_err("'%s' is not a valid JID; give a session as user@host/resource", argv[0]);
        return CTL_FAIL;
    }
    if (!j.node || !j.resource) {
        ctl_err("'%s' is not a full JID; kick needs user@host/resource (see "
                "'starlingctl sessions')",
                argv[0]);
        goto fail;
    }
    /* Send the normalised form so the daemon matches it byte for byte. */
    if (st_jid_format(&j, 1, full, sizeof full) < 0) {
        ctl_err("the JID '%s' is too long", argv[0]);
        goto fail;
    }
    snprintf(line, sizeof line, "kick %s\n", full);
    ret = ask(cfg, line);
fail:
    st_jid_free(&j);
    return ret;
}
