/* tls_handshake.c - what one TLS handshake costs the server inside OpenSSL,
 * with nothing of XMPP around it: the floor under "server CPU per login,
 * STARTTLS" in bench/compare.
 *
 * A client and a server SSL talk over a memory BIO pair in one thread; the
 * CPU time (CLOCK_THREAD_CPUTIME_ID) spent inside the server's SSL calls
 * is summed, the client's is not. The server context is server/tls.c's own
 * (st_tls_ctx_new), so it has the daemon's policy and callbacks; options
 * vary what is worth varying:
 *
 *   tls_handshake CERT KEY [-n N] [--tickets T] [--tls12] [--group G]
 *                 [--suites S] [--ours [--resume]]
 *
 * --tickets T sets how many TLS 1.3 session tickets the server sends (the
 * daemon keeps OpenSSL's default of 2); --group picks the client's key
 * share (X25519 by default, as most clients send); --suites sets the
 * client's TLS 1.3 suites in its order of preference. --ours measures our own
 * handshake (server/tlshs.h, what the daemon runs first) instead, over a
 * socketpair since it speaks to a socket: st_tlshs_new to st_tlshs_free,
 * the record layer's creation and the ticket included; --resume offers
 * the previous connection's ticket each time. Prints one JSON line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <getopt.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "server/tls.h"
#include "server/tlshs.h"
#include "server/tlsrec.h"

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --ours: the daemon's own handshake against an OpenSSL client. */
static int run_ours(st_tls_ctx *t, SSL_CTX *cctx, long n, int resume, const char *group)
{
    char err[256];
    st_tlshs_ctx *x = st_tlshs_ctx_new(st_tls_ctx_get(t), err, sizeof err);
    if (!x) {
        fprintf(stderr, "tls_handshake: %s\n", err);
        return 1;
    }
    SSL_SESSION *sess = NULL;
    double server_s = 0, t0 = thread_cpu();
    long resumed = 0;
    for (long i = 0; i < n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 1;
        fcntl(sv[0], F_SETFL, O_NONBLOCK);
        fcntl(sv[1], F_SETFL, O_NONBLOCK);
        SSL *c = SSL_new(cctx);
        if (!c || SSL_set_fd(c, sv[0]) != 1) return 1;
        if (resume && sess) SSL_set_session(c, sess);
        SSL_set_connect_state(c);
        double a = thread_cpu();
        st_tlshs *h = st_tlshs_new(x, 0);
        server_s += thread_cpu() - a;
        int cdone = 0, r = 0;
        st_tlsrec *rec = NULL;
        for (int round = 0; round < 20 && !(cdone && rec); round++) {
            if (!cdone) cdone = SSL_do_handshake(c) == 1;
            if (rec) continue;
            a = thread_cpu();
            r = st_tlshs_step(h, sv[1]);
            if (r == ST_TLSHS_DONE) rec = st_tlshs_finish(h);
            server_s += thread_cpu() - a;
            if (r == ST_TLSHS_OPENSSL || r == ST_TLSHS_FAILED) break;
        }
        if (!cdone || !rec) {
            fprintf(stderr, "tls_handshake: handshake %ld did not finish (%s)\n", i,
                    st_tlshs_error(h) ? st_tlshs_error(h) : "?");
            return 1;
        }
        resumed += st_tlshs_resumed(h);
        a = thread_cpu();
        st_tlshs_free(h);
        st_tlsrec_free(rec);
        server_s += thread_cpu() - a;
        if (resume) { /* the client reads its ticket */
            char b[1];
            SSL_read(c, b, 1);
            SSL_SESSION_free(sess);
            sess = SSL_get1_session(c);
            /* freed without a close_notify, a session is no longer resumable */
            SSL_set_shutdown(c, SSL_SENT_SHUTDOWN);
        }
        SSL_free(c);
        close(sv[0]);
        close(sv[1]);
    }
    double all_s = thread_cpu() - t0;
    printf("{\"handshakes\":%ld,\"version\":\"TLSv1.3\",\"implementation\":\"starling tlshs\","
           "\"group\":\"%s\",\"resumed\":%ld,\"server_ms_per_handshake\":%.4f,"
           "\"both_ends_ms_per_handshake\":%.4f}\n",
           n, group, resumed, server_s * 1e3 / (double)n, all_s * 1e3 / (double)n);
    SSL_SESSION_free(sess);
    st_tlshs_ctx_unref(x);
    SSL_CTX_free(cctx);
    st_tls_ctx_free(t);
    return 0;
}

int main(int argc, char **argv)
{
    long n = 2000, tickets = -1;
    int tls12 = 0, take = 1, ours = 0, resume = 0;
    const char *group = "X25519", *suites = NULL;
    static const struct option opts[] = {{"tickets", 1, 0, 't'}, {"tls12", 0, 0, '2'},
                                         {"group", 1, 0, 'g'},   {"no-take", 0, 0, 'k'},
                                         {"ours", 0, 0, 'o'},    {"suites", 1, 0, 's'},
                                         {"resume", 0, 0, 'r'},  {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        switch (ch) {
        case 'n': n = atol(optarg); break;
        case 't': tickets = atol(optarg); break;
        case '2': tls12 = 1; break;
        case 'g': group = optarg; break;
        case 'k': take = 0; break;
        case 'o': ours = 1; break;
        case 's': suites = optarg; break;
        case 'r': resume = 1; break;
        default: return 2;
        }
    }
    if (argc - optind != 2 || n <= 0) {
        fprintf(stderr, "usage: tls_handshake CERT KEY [-n N] [--tickets T] [--tls12] "
                        "[--group G] [--no-take]\n");
        return 2;
    }
    char err[512];
    st_tls_ctx *t = st_tls_ctx_new(argv[optind], argv[optind + 1], err, sizeof err);
    if (!t) {
        fprintf(stderr, "tls_handshake: %s\n", err);
        return 1;
    }
    SSL_CTX *sctx = st_tls_ctx_get(t);
    if (tickets >= 0) SSL_CTX_set_num_tickets(sctx, (size_t)tickets);
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    if (!cctx || !SSL_CTX_set1_groups_list(cctx, group)) {
        fprintf(stderr, "tls_handshake: cannot set up the client (group %s)\n", group);
        return 1;
    }
    if (tls12) SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
    if (suites && !SSL_CTX_set_ciphersuites(cctx, suites)) {
        fprintf(stderr, "tls_handshake: bad --suites %s\n", suites);
        return 1;
    }
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);

    double server_s = 0, t0 = thread_cpu();
    long taken = 0;
    if (ours) return run_ours(t, cctx, n, resume, group);
    for (long i = 0; i < n; i++) {
        SSL *c = SSL_new(cctx), *s = SSL_new(sctx);
        BIO *cb, *sb;
        if (!c || !s || !BIO_new_bio_pair(&cb, 0, &sb, 0)) return 1;
        SSL_set_bio(c, cb, cb);
        SSL_set_bio(s, sb, sb);
        SSL_set_connect_state(c);
        SSL_set_accept_state(s);
        int cdone = 0, sdone = 0;
        for (int round = 0; round < 20 && !(cdone && sdone); round++) {
            if (!cdone) cdone = SSL_do_handshake(c) == 1;
            double a = thread_cpu();
            if (!sdone) sdone = SSL_do_handshake(s) == 1;
            server_s += thread_cpu() - a;
        }
        if (!cdone || !sdone) {
            fprintf(stderr, "tls_handshake: handshake %ld did not finish\n", i);
            ERR_print_errors_fp(stderr);
            return 1;
        }
        double a = thread_cpu();
        if (take) {
            st_tlsrec *r = st_tlsrec_take(s);
            if (r) taken++;
            st_tlsrec_free(r);
        }
        SSL_free(s);
        server_s += thread_cpu() - a;
        SSL_free(c);
    }
    double all_s = thread_cpu() - t0;
    printf("{\"handshakes\":%ld,\"version\":\"%s\",\"group\":\"%s\",\"tickets\":%ld,"
           "\"taken_over\":%ld,\"server_ms_per_handshake\":%.4f,"
           "\"both_ends_ms_per_handshake\":%.4f}\n",
           n, tls12 ? "TLSv1.2" : "TLSv1.3", group, tickets < 0 ? 2 : tickets, taken,
           server_s * 1e3 / (double)n, all_s * 1e3 / (double)n);
    SSL_CTX_free(cctx);
    st_tls_ctx_free(t);
    return 0;
}
