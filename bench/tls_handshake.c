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
 *
 * --tickets T sets how many TLS 1.3 session tickets the server sends (the
 * daemon keeps OpenSSL's default of 2); --group picks the client's key
 * share (X25519 by default, as most clients send). Prints one JSON line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <getopt.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include "server/tls.h"
#include "server/tlsrec.h"

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = 2000, tickets = -1;
    int tls12 = 0, take = 1;
    const char *group = "X25519";
    static const struct option opts[] = {{"tickets", 1, 0, 't'},
                                         {"tls12", 0, 0, '2'},
                                         {"group", 1, 0, 'g'},
                                         {"no-take", 0, 0, 'k'},
                                         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        switch (ch) {
        case 'n': n = atol(optarg); break;
        case 't': tickets = atol(optarg); break;
        case '2': tls12 = 1; break;
        case 'g': group = optarg; break;
        case 'k': take = 0; break;
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
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);

    double server_s = 0, t0 = thread_cpu();
    long taken = 0;
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
