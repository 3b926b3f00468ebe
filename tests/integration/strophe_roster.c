/* strophe_roster.c - a libstrophe client that accepts subscriptions and
 * reports presence, for the RFC 6121 interoperability tests.
 *
 *     strophe_roster [-v] [-t SECONDS] JID PASSWORD HOST PORT
 *
 * Fetches the roster (so it gets roster pushes), sends initial presence and
 * then reports what happens as one line per event on stdout:
 *
 *     online JID                  bound and available
 *     request FROM                a subscription request; answered with
 *                                 subscribed, then a subscribe of our own
 *     presence FROM TYPE          any other presence (TYPE "available" when
 *                                 the stanza has no type)
 *     push JID SUBSCRIPTION [ASK] a roster push (answered with a result)
 *     message FROM BODY           a chat message; "ping" is answered "pong",
 *                                 "bye" ends the run with exit status 0
 *
 * A test reads the lines and talks to it through the server. The daemon's
 * certificate is self-signed, so certificate checks are off
 * (XMPP_CONN_FLAG_TRUST_TLS); TLS itself is mandatory. Exit status: 0 after
 * "bye", 1 failed (auth, disconnect), 2 usage, 3 timeout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <strophe.h>

typedef struct roster_state {
    int done;    /* 1 after "bye", -1 failure, 0 still running */
    int stopped; /* the connection is gone */
} roster_state;

static const char *or_dash(const char *s)
{
    return s ? s : "-";
}

/* Send <presence to='to' type='type'/>. */
static void send_presence(xmpp_conn_t *conn, const char *to, const char *type)
{
    xmpp_stanza_t *p = xmpp_presence_new(xmpp_conn_get_context(conn));
    if (!p)
        return;
    xmpp_stanza_set_to(p, to);
    xmpp_stanza_set_type(p, type);
    xmpp_send(conn, p);
    xmpp_stanza_release(p);
}

static int on_presence(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    const char *from = xmpp_stanza_get_from(stanza);
    const char *type = xmpp_stanza_get_type(stanza);

    (void)userdata;
    if (!from)
        return 1;
    if (type && strcmp(type, "subscribe") == 0) {
        printf("request %s\n", from);
        send_presence(conn, from, "subscribed");
        send_presence(conn, from, "subscribe");
    } else {
        printf("presence %s %s\n", from, type ? type : "available");
    }
    fflush(stdout);
    return 1;
}

static int on_roster_push(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    const char *type = xmpp_stanza_get_type(stanza);
    xmpp_stanza_t *query, *item, *reply;

    (void)userdata;
    if (!type || strcmp(type, "set") != 0)
        return 1;
    query = xmpp_stanza_get_child_by_ns(stanza, "jabber:iq:roster");
    item = query ? xmpp_stanza_get_child_by_name(query, "item") : NULL;
    if (item) {
        const char *ask = xmpp_stanza_get_attribute(item, "ask");
        printf("push %s %s%s%s\n", or_dash(xmpp_stanza_get_attribute(item, "jid")),
               or_dash(xmpp_stanza_get_attribute(item, "subscription")), ask ? " " : "",
               ask ? ask : "");
        fflush(stdout);
    }
    reply = xmpp_stanza_reply(stanza); /* ours to release */
    if (reply) {
        xmpp_stanza_set_type(reply, "result");
        xmpp_send(conn, reply);
        xmpp_stanza_release(reply);
    }
    return 1;
}

static int on_message(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    roster_state *st = userdata;
    xmpp_ctx_t *ctx = xmpp_conn_get_context(conn);
    const char *from = xmpp_stanza_get_from(stanza);
    char *body = xmpp_message_get_body(stanza); /* ours to free */

    if (!body || !from) {
        if (body)
            xmpp_free(ctx, body);
        return 1;
    }
    printf("message %s %s\n", from, body);
    fflush(stdout);
    if (strcmp(body, "ping") == 0) {
        xmpp_stanza_t *m = xmpp_message_new(ctx, "chat", from, NULL);
        if (m && xmpp_message_set_body(m, "pong") == XMPP_EOK)
            xmpp_send(conn, m);
        if (m)
            xmpp_stanza_release(m);
    } else if (strcmp(body, "bye") == 0) {
        st->done = 1;
        xmpp_disconnect(conn);
    }
    xmpp_free(ctx, body);
    return 1;
}

static void on_conn(xmpp_conn_t *conn, xmpp_conn_event_t status, int error,
                    xmpp_stream_error_t *stream_error, void *userdata)
{
    roster_state *st = userdata;
    xmpp_ctx_t *ctx = xmpp_conn_get_context(conn);

    (void)stream_error;
    if (status != XMPP_CONN_CONNECT) {
        if (!st->done) {
            fprintf(stderr, "strophe_roster: disconnected (status %d, error %d)\n", (int)status,
                    error);
            st->done = -1;
        }
        st->stopped = 1;
        xmpp_stop(ctx);
        return;
    }
    xmpp_handler_add(conn, on_presence, NULL, "presence", NULL, st);
    xmpp_handler_add(conn, on_message, NULL, "message", NULL, st);
    xmpp_handler_add(conn, on_roster_push, "jabber:iq:roster", "iq", NULL, st);

    /* the roster first: it makes this resource "interested" (RFC 6121 §2.1.6) */
    xmpp_stanza_t *iq = xmpp_iq_new(ctx, "get", "roster1");
    xmpp_stanza_t *query = xmpp_stanza_new(ctx);
    if (iq && query) {
        xmpp_stanza_set_name(query, "query");
        xmpp_stanza_set_ns(query, "jabber:iq:roster");
        xmpp_stanza_add_child(iq, query);
        xmpp_send(conn, iq);
    }
    if (query)
        xmpp_stanza_release(query);
    if (iq)
        xmpp_stanza_release(iq);
    xmpp_stanza_t *pres = xmpp_presence_new(ctx);
    if (pres) {
        xmpp_send(conn, pres);
        xmpp_stanza_release(pres);
    }
    printf("online %s\n", xmpp_conn_get_bound_jid(conn));
    fflush(stdout);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    roster_state st = {0};
    int verbose = 0, opt, rc = 1;
    double timeout = 20, deadline;
    xmpp_ctx_t *ctx = NULL;
    xmpp_conn_t *conn = NULL;

    while ((opt = getopt(argc, argv, "vt:")) != -1) {
        switch (opt) {
        case 'v': verbose = 1; break;
        case 't': timeout = atof(optarg); break;
        default: goto usage;
        }
    }
    if (argc - optind != 4 || timeout <= 0)
        goto usage;

    xmpp_initialize();
    ctx = xmpp_ctx_new(NULL, verbose ? xmpp_get_default_logger(XMPP_LEVEL_DEBUG) : NULL);
    if (!ctx || !(conn = xmpp_conn_new(ctx)))
        goto out;
    if (xmpp_conn_set_flags(conn, XMPP_CONN_FLAG_MANDATORY_TLS | XMPP_CONN_FLAG_TRUST_TLS) !=
        XMPP_EOK)
        goto out;
    xmpp_conn_set_jid(conn, argv[optind]);
    xmpp_conn_set_pass(conn, argv[optind + 1]);
    if (xmpp_connect_client(conn, argv[optind + 2], (unsigned short)atoi(argv[optind + 3]),
                            on_conn, &st) != XMPP_EOK) {
        fprintf(stderr, "strophe_roster: cannot connect\n");
        goto out;
    }
    /* Our own loop so that every run is bounded. */
    deadline = now() + timeout;
    while (!st.stopped && now() < deadline)
        xmpp_run_once(ctx, 50);
    if (!st.stopped) {
        fprintf(stderr, "strophe_roster: timed out after %.0fs\n", timeout);
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
usage:
    fprintf(stderr, "usage: strophe_roster [-v] [-t SECONDS] JID PASSWORD HOST PORT\n");
    return 2;
}
