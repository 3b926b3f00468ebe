/* main.c - starlingd: parse the command line, load the config, run.
 *
 *   starlingd [-c CONFIG]      run in the foreground
 *   starlingd -t [-c CONFIG]   check the config and exit (0 = valid)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "server/log.h"
#include "server/server.h"
#include "starling/buf.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: starlingd [-c CONFIG] [-t] [-v]\n"
               "  -c CONFIG  configuration file (default: $STARLING_CONFIG, ./starling.conf,\n"
               "             /etc/starling/starling.conf)\n"
               "  -t         check the configuration and exit\n"
               "  -v         print the version and exit\n");
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int test = 0, opt;
    while ((opt = getopt(argc, argv, "c:tvh")) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 't': test = 1; break;
        case 'v': printf("starlingd %s\n", STARLING_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "starlingd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    path = st_config_locate(path);
    st_buf errs;
    st_buf_init(&errs, 1 << 20);
    st_config *cfg = st_config_load(path, &errs);
    if (!cfg) {
        fprintf(stderr, "%s", errs.data ? errs.data : "starlingd: cannot load configuration\n");
        if (errs.len && errs.data[errs.len - 1] != '\n') fputc('\n', stderr);
        st_buf_free(&errs);
        return 1;
    }
    st_buf_free(&errs);
    if (test) {
        printf("%s: configuration OK (%zu host%s)\n", path, cfg->nhosts, cfg->nhosts == 1 ? "" : "s");
        st_config_free(cfg);
        return 0;
    }
    st_log_level lvl;
    if (st_log_level_parse(cfg->log_level, &lvl) == 0) st_log_set_level(lvl);
    if (cfg->nhosts == 0) st_warn("server", "%s defines no [host ...]: every stream will get host-unknown", path);

    char err[512] = "";
    st_server *s = st_server_new(cfg, err, sizeof err);
    if (!s) {
        fprintf(stderr, "starlingd: %s\n", err);
        return 1;
    }
    if (st_server_listen(s, err, sizeof err) != 0) {
        fprintf(stderr, "starlingd: %s\n", err);
        st_server_free(s);
        return 1;
    }
    st_info("server", "starlingd %s started with %s", STARLING_VERSION, path);
    int rc = st_server_run(s) == 0 ? 0 : 1;
    st_info("server", "stopped");
    st_server_free(s);
    return rc;
}
