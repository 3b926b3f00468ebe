/* main.c - starlingctl: the admin tool for starlingd.
 *
 * User management (adduser, passwd, deluser, users) works on the store
 * directly, so it works whether or not the daemon runs (SQLite's WAL lets
 * both write). Live commands (sessions, kick, status, reload) ask the running daemon
 * over its admin socket. check reviews a config before the daemon is started
 * with it. docs/starlingctl.md is the reference.
 *
 * The command table below is the whole dispatcher: main() checks the
 * argument count and loads the config as the row says, then calls the
 * command. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <expat.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <stringprep.h>

#include "ctl/ctl.h"
#include "starling/buf.h"

#ifndef STARLING_VERSION
#define STARLING_VERSION "unknown"
#endif

typedef struct ctl_cmd {
    const char *name;
    const char *args; /* for usage */
    int min_args, max_args;
    int needs_config;
    int (*run)(st_config *cfg, int argc, char **argv);
    const char *help;
} ctl_cmd;

static int cmd_about(st_config *cfg, int argc, char **argv);
static int cmd_help(st_config *cfg, int argc, char **argv);

static const ctl_cmd commands[] = {
    {"adduser", "JID", 1, 1, 1, ctl_cmd_adduser, "create an account (asks for the password)"},
    {"passwd", "JID", 1, 1, 1, ctl_cmd_passwd, "change an account's password"},
    {"deluser", "JID", 1, 1, 1, ctl_cmd_deluser, "delete an account and all its data"},
    {"users", "[HOST]", 0, 1, 1, ctl_cmd_users, "list accounts, one JID per line"},
    {"sessions", "", 0, 0, 1, ctl_cmd_sessions, "list the sessions of the running daemon"},
    {"kick", "FULLJID", 1, 1, 1, ctl_cmd_kick, "disconnect one session"},
    {"status", "", 0, 0, 1, ctl_cmd_status, "show whether starlingd runs, and its counters"},
    {"reload", "", 0, 0, 1, ctl_cmd_reload, "make the running daemon reload its config"},
    /* run NULL: check loads the config itself, to report every error in it. */
    {"check", "", 0, 0, 0, NULL, "check the config, certificates, ports and store"},
    {"about", "", 0, 0, 0, cmd_about, "show the versions of starlingctl and its libraries"},
    {"help", "", 0, 0, 0, cmd_help, "show this help"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

void ctl_err(const char *fmt, ...)
{
    va_list ap;
    fputs("starlingctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: starlingctl [-c CONFIG] COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char left[32];
        snprintf(left, sizeof left, "%s %s", commands[i].name, commands[i].args);
        fprintf(f, "  %-18s %s\n", left, commands[i].help);
    }
    fprintf(f, "\nThe config is CONFIG, else $STARLING_CONFIG, else ./starling.conf,\n"
               "else /etc/starling/starling.conf. See docs/starlingctl.md.\n");
}

static int cmd_help(st_config *cfg, int argc, char **argv)
{
    usage(stdout);
    return CTL_OK;
}

static int cmd_about(st_config *cfg, int argc, char **argv)
{
    const char *idn = stringprep_check_version(NULL);
    printf("starlingctl %s\n\n", STARLING_VERSION);
    printf("  %-8s %s\n", "OpenSSL", OpenSSL_version(OPENSSL_VERSION));
    printf("  %-8s %s\n", "SQLite", sqlite3_libversion());
    printf("  %-8s %s\n", "expat", XML_ExpatVersion());
    printf("  %-8s %s\n", "libidn", idn ? idn : "unknown");
    printf("\n  %-8s %s%s\n", "config", st_config_locate(NULL),
           access(st_config_locate(NULL), R_OK) == 0 ? "" : " (not found)");
    return CTL_OK;
}

static st_config *load_config(const char *path)
{
    st_buf errors;
    if (access(path, R_OK) != 0) {
        ctl_err("cannot read the config %s: %s; give one with -c FILE or $STARLING_CONFIG", path,
                strerror(errno));
        return NULL;
    }
    st_buf_init(&errors, 64 * 1024);
    st_config *cfg = st_config_load(path, &errors);
    if (!cfg) {
        /* Each line already reads "file:line: message". */
        fputs(errors.len ? errors.data : "cannot load the config\n", stderr);
        if (errors.len && errors.data[errors.len - 1] != '\n') fputc('\n', stderr);
        ctl_err("the config %s has errors; run 'starlingctl check' for details", path);
    }
    st_buf_free(&errors);
    return cfg;
}

int main(int argc, char **argv)
{
    const char *config_arg = NULL;
    int i = 1;

    /* Options come before the command; everything after belongs to it. */
    while (i < argc && argv[i][0] == '-' && argv[i][1]) {
        if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                ctl_err("option %s needs a file name", argv[i]);
                return CTL_USAGE;
            }
            config_arg = argv[i + 1];
            i += 2;
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config_arg = argv[i] + 9;
            i++;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return CTL_OK;
        } else if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
            printf("starlingctl %s\n", STARLING_VERSION);
            return CTL_OK;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            ctl_err("unknown option '%s'; run 'starlingctl help' for usage", argv[i]);
            return CTL_USAGE;
        }
    }
    if (i >= argc) {
        usage(stdout);
        return CTL_OK;
    }

    const char *name = argv[i];
    const ctl_cmd *cmd = NULL;
    for (size_t k = 0; k < NCOMMANDS; k++)
        if (strcmp(commands[k].name, name) == 0) cmd = &commands[k];
    if (!cmd) {
        ctl_err("unknown command '%s'; run 'starlingctl help' for the list", name);
        return CTL_USAGE;
    }
    int nargs = argc - i - 1;
    if (nargs < cmd->min_args || nargs > cmd->max_args) {
        if (*cmd->args)
            ctl_err("usage: starlingctl %s %s", cmd->name, cmd->args);
        else
            ctl_err("'%s' takes no arguments", cmd->name);
        return CTL_USAGE;
    }

    const char *path = st_config_locate(config_arg);
    if (!cmd->run) return ctl_cmd_check(path);

    st_config *cfg = NULL;
    if (cmd->needs_config && !(cfg = load_config(path))) return CTL_FAIL;
    int rc = cmd->run(cfg, nargs, argv + i + 1);
    if (cfg) st_config_free(cfg);
    if (fflush(stdout) != 0 && rc == CTL_OK) {
        ctl_err("cannot write the output");
        rc = CTL_FAIL;
    }
    return rc;
}
