/* strophe_client.c - a libstrophe client for the integration tests.
 *
 * Logs in to starlingd with libstrophe (a second, independent XMPP stack
 * besides slixmpp) and either sends one message or waits for one:
 *
 *     strophe_client [-d] [-v] [-t SECONDS] JID PASSWORD HOST PORT PEER MESSAGE MODE
 *
 *     MODE send         send MESSAGE to PEER (type chat), then a ping to the
 *                       server; exit once the ping is answered, so the message
 *                       has been routed before we close.
 *     MODE receive-one  send presence, say "online" on stderr, print the body
 *                       of the first chat message to stdout and exit.
 *     -d                direct TLS (XEP-0368) instead of STARTTLS
 *     -v                libstrophe's debug log on stderr
 *     -t SECONDS        give up after this long (default 15)
 *
 * The daemon's certificate is self-signed, so certificate checks are off
 * (XMPP_CONN_FLAG_TRUST_TLS); TLS itself is mandatory. libstrophe 0.12
 * picks its strongest SCRAM itself; it cannot be told which mechanism to
 * use. Exit status: 0 done, 1 failed (auth, error reply, disconnect),
 * 2 usage, 3 timeout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <strophe.h>

enum { MODE_SEND, MODE_RECEIVE_ONE };

typedef struct client_state {
    int mode;
    const char *peer;    /* borrowed from argv */
    const char *message; /* borrowed from argv */
    int done;            /* 1 success, -1 failure, 0 still running */
    int stopped;         /* the connection is gone */
} client_state;

static int on_ping_result(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    client_state *st = userdata;
    const char *type = xmpp_stanza_get_type(stanza);

    if (type && strcmp(type, "result") == 0) {
        st->done = 1;
    } else {
        fprintf(stderr, "strophe_client: ping answered with type %s\n", type ? type : "(none)");
        st->done = -1;
    }
    xmpp_disconnect(conn);
    return 0; /* one-shot */
}

static int on_message(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    client_state *st = userdata;
    const char *type = xmpp_stanza_get_type(stanza);
    char *body;

    if (type && strcmp(type, "error") == 0) {
        fprintf(stderr, "strophe_client: error message from %s\n",
                xmpp_stanza_get_from(stanza) ? xmpp_stanza_get_from(stanza) : "?");
        st->done = -1;
        xmpp_disconnect(conn);
        return 0;
    }
    body = xmpp_message_get_body(stanza); /* ours to free */
    if (!body)
        return 1; /* chat states and the like: keep waiting */
    printf("%s\n", body);
    fflush(stdout);
    xmpp_free(xmpp_conn_get_context(conn), body);
    if (st->mode == MODE_RECEIVE_ONE) {
        st->done = 1;
        xmpp_disconnect(conn);
        return 0;
    }
    return 1;
}

static int send_ping(xmpp_conn_t *conn, client_state *st)
{
    xmpp_ctx_t *ctx = xmpp_conn_get_context(conn);
    xmpp_stanza_t *iq = xmpp_iq_new(ctx, "get", "strophe-ping");
    xmpp_stanza_t *ping = xmpp_stanza_new(ctx);
    const char *jid = xmpp_conn_get_bound_jid(conn);
    const char *domain = strchr(jid, '@');

    if (!iq || !ping)
        goto fail;
    if (domain) {
        /* "user@domain/res" -> "domain" */
        char host[256];
        size_t n = strcspn(domain + 1, "/");
        if (n >= sizeof host)
            goto fail;
        memcpy(host, domain + 1, n);
        host[n] = '\0';
        xmpp_stanza_set_to(iq, host);
    }
    xmpp_stanza_set_name(ping, "ping");
    xmpp_stanza_set_ns(ping, "urn:xmpp:ping");
    xmpp_stanza_add_child(iq, ping);
    xmpp_id_handler_add(conn, on_ping_result, "strophe-ping", st);
    xmpp_send(conn, iq);
    xmpp_stanza_release(ping);
    xmpp_stanza_release(iq);
    return 0;
fail:
    if (ping)
        xmpp_stanza_release(ping);
    if (iq)
        xmpp_stanza_release(iq);
    return -1;
}

static void on_conn(xmpp_conn_t *conn, xmpp_conn_event_t status, int error,
                    xmpp_stream_error_t *stream_error, void *userdata)
{
    client_state *st = userdata;
    xmpp_ctx_t *ctx = xmpp_conn_get_context(conn);

    if (status != XMPP_CONN_CONNECT) {
        if (stream_error)
            fprintf(stderr, "strophe_client: stream error %d\n", (int)stream_error->type);
        if (!st->done) {
            fprintf(stderr, "strophe_client: disconnected (status %d, error %d)\n", (int)status,
                    error);
            st->done = -1;
        }
        st->stopped = 1;
        xmpp_stop(ctx);
        return;
    }
    fprintf(stderr, "strophe_client: online as %s (TLS %s)\n", xmpp_conn_get_bound_jid(conn),
            xmpp_conn_is_secured(conn) ? "on" : "off");
    xmpp_handler_add(conn, on_message, NULL, "message", NULL, st);

    xmpp_stanza_t *pres = xmpp_presence_new(ctx);
    if (pres) {
        xmpp_send(conn, pres);
        xmpp_stanza_release(pres);
    }
    if (st->mode == MODE_SEND) {
        xmpp_stanza_t *msg = xmpp_message_new(ctx, "chat", st->peer, "strophe-msg");
        if (!msg || xmpp_message_set_body(msg, st->message) != XMPP_EOK) {
            if (msg)
                xmpp_stanza_release(msg);
            st->done = -1;
            xmpp_disconnect(conn);
            return;
        }
        xmpp_send(conn, msg);
        xmpp_stanza_release(msg);
        if (send_ping(conn, st) < 0) {
            st->done = -1;
            xmpp_disconnect(conn);
        }
    } else {
        fprintf(stderr, "strophe_client: waiting\n");
    }
    fflush(stderr);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: strophe_client [-d] [-v] [-t SECONDS] JID PASSWORD HOST PORT PEER "
                    "MESSAGE send|receive-one\n");
}

int main(int argc, char **argv)
{
    client_state st = {0};
    int direct_tls = 0, verbose = 0, opt, rc = 1;
    double timeout = 15, deadline;
    xmpp_ctx_t *ctx = NULL;
    xmpp_conn_t *conn = NULL;
    long flags = XMPP_CONN_FLAG_MANDATORY_TLS | XMPP_CONN_FLAG_TRUST_TLS;

    while ((opt = getopt(argc, argv, "dvt:")) != -1) {
        switch (opt) {
        case 'd': direct_tls = 1; break;
        case 'v': verbose = 1; break;
        case 't': timeout = atof(optarg); break;
        default: usage(); return 2;
        }
    }
    if (argc - optind != 7 || timeout <= 0) {
        usage();
        return 2;
    }
    const char *jid = argv[optind], *password = argv[optind + 1], *host = argv[optind + 2];
    int port = atoi(argv[optind + 3]);
    st.peer = argv[optind + 4];
    st.message = argv[optind + 5];
    if (strcmp(argv[optind + 6], "send") == 0) {
        st.mode = MODE_SEND;
    } else if (strcmp(argv[optind + 6], "receive-one") == 0) {
        st.mode = MODE_RECEIVE_ONE;
    } else {
        usage();
        return 2;
    }
    if (direct_tls)
        flags = (flags & ~XMPP_CONN_FLAG_MANDATORY_TLS) | XMPP_CONN_FLAG_LEGACY_SSL;

    xmpp_initialize();
    ctx = xmpp_ctx_new(NULL, verbose ? xmpp_get_default_logger(XMPP_LEVEL_DEBUG) : NULL);
    if (!ctx)
        goto out;
    conn = xmpp_conn_new(ctx);
    if (!conn)
        goto out;
    if (xmpp_conn_set_flags(conn, flags) != XMPP_EOK) {
        fprintf(stderr, "strophe_client: bad connection flags\n");
        goto out;
    }
    xmpp_conn_set_jid(conn, jid);
    xmpp_conn_set_pass(conn, password);
    if (xmpp_connect_client(conn, host, (unsigned short)port, on_conn, &st) != XMPP_EOK) {
        fprintf(stderr, "strophe_client: cannot connect to %s:%d\n", host, port);
        goto out;
    }
    /* Our own loop so that every run is bounded. */
    deadline = now() + timeout;
    while (!st.stopped && now() < deadline)
        xmpp_run_once(ctx, 50);
    if (!st.stopped) {
        fprintf(stderr, "strophe_client: timed out after %.0fs\n", timeout);
        rc = 3;
        goto out;
    }
    rc = st.done == 1 ? 0 : 1;
out:
    if (conn)
        xmpp_conn_release(conn);
    if (ctx)
        xmpp_ctx_free(ctx);
    xmpp_shutdown();
    return rc;
}
