/* users.c - starlingctl adduser, passwd, deluser, users: accounts, offline.
 *
 * These open the store directly with the back end's blocking calls rather
 * than asking the daemon, so they work before the first start and while the
 * daemon is down; SQLite's WAL mode and busy timeout let them run next to a
 * live starlingd too.
 *
 * Passwords: on a terminal, asked twice with echo off; otherwise exactly one
 * line is read from stdin, so scripts can pipe a password in. The password
 * is derived into SCRAM credentials at once and wiped; it is never printed,
 * logged or stored. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "server/storage/storage.h"
#include "starling/alloc.h"
#include "starling/jid.h"

#define PASSWORD_MAX 1023

/* ---- reading a password ---- */

/* Restored by the signal handler if the user hits ^C with echo off. */
static struct termios saved_tio;
static volatile sig_atomic_t echo_off;

static void restore_echo(int sig)
{
    if (echo_off) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* One line from stdin without its newline. 0, or -1 with a message. */
static int read_line(char *out, size_t outsz, const char **why)
{
    if (!fgets(out, (int)outsz, stdin)) {
        *why = "no password was given on standard input";
        return -1;
    }
    size_t n = strlen(out);
    if (n && out[n - 1] == '\n')
        out[--n] = 0;
    else if (!feof(stdin))
        n = outsz; /* the line did not fit */
    if (n > PASSWORD_MAX) {
        explicit_bzero(out, outsz);
        *why = "the password is too long (the limit is 1023 bytes)";
        return -1;
    }
    return 0;
}

static int prompt_hidden(const char *prompt, char *out, size_t outsz, const char **why)
{
    struct termios tio;
    int rc;

    if (tcgetattr(STDIN_FILENO, &saved_tio) != 0) return read_line(out, outsz, why);
    tio = saved_tio;
    tio.c_lflag &= ~(tcflag_t)ECHO;
    tio.c_lflag |= ECHONL;
    signal(SIGINT, restore_echo);
    signal(SIGTERM, restore_echo);
    signal(SIGHUP, restore_echo);
    fputs(prompt, stderr);
    fflush(stderr);
    echo_off = 1;
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &tio);
    rc = read_line(out, outsz, why);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
    echo_off = 0;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    return rc;
}

/* Fills pw (PASSWORD_MAX + 2 bytes) with a non-empty password. */
static int get_password(char *pw, size_t pwsz)
{
    const char *why = NULL;
    int rc = -1;

    if (isatty(STDIN_FILENO)) {
        char again[PASSWORD_MAX + 2];
        if (prompt_hidden("Password: ", pw, pwsz, &why) == 0 &&
            prompt_hidden("Password (again): ", again, sizeof again, &why) == 0) {
            if (strcmp(pw, again) != 0)
                why = "the two passwords do not match";
            else
                rc = 0;
        }
        explicit_bzero(again, sizeof again);
    } else {
        rc = read_line(pw, pwsz, &why);
    }
    if (rc == 0 && !*pw) {
        why = "an empty password is not allowed";
        rc = -1;
    }
    if (rc != 0) {
        explicit_bzero(pw, pwsz);
        ctl_err("%s", why ? why : "cannot read the password");
    }
    return rc;
}

/* ---- JIDs and hosts ---- */

static void list_hosts(const st_config *cfg, char *out, size_t outsz)
{
    size_t off = 0;
    out[0] = 0;
    for (size_t i = 0; i < cfg->nhosts && off < outsz; i++) {
        int n = snprintf(out + off, outsz - off, "%s%s", i ? ", " : "", cfg->hosts[i].name);
        if (n < 0) break;
        off += (size_t)n;
    }
}

static int require_host(const st_config *cfg, const char *domain)
{
    char hosts[512];
    if (st_config_host(cfg, domain)) return 0;
    list_hosts(cfg, hosts, sizeof hosts);
    if (cfg->nhosts)
        ctl_err("host '%s' is not configured in %s; configured hosts: %s", domain, cfg->path,
                hosts);
    else
        ctl_err("host '%s' is not configured: %s has no [host] section", domain, cfg->path);
    return -1;
}

/* Parse an account JID: user@host, host configured, no resource. */
static int parse_account(const st_config *cfg, const char *s, st_jid *j)
{
    if (st_jid_parse(j, s, strlen(s)) != 0) {
        ctl_err("'%s' is not a valid JID; give an account as user@host", s);
        return -1;
    }
    if (!j->node) {
        ctl_err("'%s' has no user name; give an account as user@host", s);
        goto fail;
    }
    if (j->resource) {
        ctl_err("'%s' has a resource; give the account without it, as user@host", s);
        goto fail;
    }
    if (require_host(cfg, j->domain) < 0) goto fail;
    return 0;
fail:
    st_jid_free(j);
    return -1;
}

/* ---- the store ---- */

typedef struct store {
    const st_store_ops *ops;
    void *h;
} store;

static int store_open(const st_config *cfg, store *s)
{
    char err[512] = "";
    s->h = NULL;
    s->ops = st_store_find(cfg->store);
    if (!s->ops) {
        ctl_err("store '%s' is not supported by this build of starlingctl", cfg->store);
        return -1;
    }
    /* Before the first start of the daemon the data directory may not exist
     * yet; create it the way starlingd would (0700). */
    if (cfg->data_dir && mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        ctl_err("cannot create the data directory %s: %s", cfg->data_dir, strerror(errno));
        return -1;
    }
    if (s->ops->open(&s->h, cfg->store_dsn, err, sizeof err) != 0) {
        ctl_err("cannot open the %s store: %s", s->ops->name, err);
        return -1;
    }
    return 0;
}

static void store_close(store *s)
{
    if (s->h) s->ops->close(s->h);
    s->h = NULL;
}

/* ---- commands ---- */

/* adduser and passwd differ only in whether the account must exist. */
static int set_password(st_config *cfg, const char *arg, int create)
{
    st_jid j = {0};
    store s = {0};
    st_user_creds creds, old;
    char pw[PASSWORD_MAX + 2];
    int ret = CTL_FAIL, rc;

    memset(&creds, 0, sizeof creds);
    if (parse_account(cfg, arg, &j) < 0) return CTL_FAIL;
    if (store_open(cfg, &s) < 0) goto fail;
    /* Look first so a typo is reported before the password is typed. */
    rc = s.ops->user_get(s.h, j.domain, j.node, &old);
    explicit_bzero(&old, sizeof old);
    if (rc < 0) {
        ctl_err("cannot read the store %s (see the message above)", cfg->store_dsn);
        goto fail;
    }
    if (create && rc == 1) {
        ctl_err("user %s@%s already exists; use 'starlingctl passwd' to change the password",
                j.node, j.domain);
        goto fail;
    }
    if (!create && rc == 0) {
        ctl_err("no such user %s@%s", j.node, j.domain);
        goto fail;
    }
    if (get_password(pw, sizeof pw) < 0) goto fail;
    rc = st_user_creds_make(&creds, pw);
    explicit_bzero(pw, sizeof pw);
    if (rc < 0) {
        ctl_err("cannot use this password (it is not valid under SASLprep)");
        goto fail;
    }
    rc = create ? s.ops->user_create(s.h, j.domain, j.node, &creds)
                : s.ops->user_set_creds(s.h, j.domain, j.node, &creds);
    if (rc < 0) {
        ctl_err("cannot write to the store %s (see the message above)", cfg->store_dsn);
        goto fail;
    }
    if (rc == 1) {
        /* Someone else got there between our look and our write. */
        ctl_err(create ? "user %s@%s already exists" : "no such user %s@%s", j.node, j.domain);
        goto fail;
    }
    printf(create ? "Created %s@%s.\n" : "Changed the password of %s@%s.\n", j.node, j.domain);
    ret = CTL_OK;
fail:
    explicit_bzero(&creds, sizeof creds);
    store_close(&s);
    st_jid_free(&j);
    return ret;
}

int ctl_cmd_adduser(st_config *cfg, int argc, char **argv)
{
    return set_password(cfg, argv[0], 1);
}

int ctl_cmd_passwd(st_config *cfg, int argc, char **argv)
{
    return set_password(cfg, argv[0], 0);
}

int ctl_cmd_deluser(st_config *cfg, int argc, char **argv)
{
    st_jid j = {0};
    store s = {0};
    int ret = CTL_FAIL, rc;

    if (parse_account(cfg, argv[0], &j) < 0) return CTL_FAIL;
    if (store_open(cfg, &s) < 0) goto fail;
    rc = s.ops->user_delete(s.h, j.domain, j.node);
    if (rc < 0) {
        ctl_err("cannot write to the store %s (see the message above)", cfg->store_dsn);
        goto fail;
    }
    if (rc == 1) {
        ctl_err("no such user %s@%s", j.node, j.domain);
        goto fail;
    }
    printf("Deleted %s@%s.\n", j.node, j.domain);
    ret = CTL_OK;
fail:
    store_close(&s);
    st_jid_free(&j);
    return ret;
}

static void print_user(void *ud, const char *user)
{
    printf("%s@%s\n", user, (const char *)ud);
}

int ctl_cmd_users(st_config *cfg, int argc, char **argv)
{
    store s = {0};
    const st_host_conf *only = NULL;
    int ret = CTL_FAIL;

    if (argc == 1) {
        char name[ST_JID_PART_MAX + 1];
        if (st_nameprep(argv[0], name, sizeof name) <= 0) {
            ctl_err("'%s' is not a valid host name", argv[0]);
            return CTL_FAIL;
        }
        if (require_host(cfg, name) < 0) return CTL_FAIL;
        only = st_config_host(cfg, name);
    }
    if (store_open(cfg, &s) < 0) goto fail;
    for (size_t i = 0; i < cfg->nhosts; i++) {
        const st_host_conf *h = &cfg->hosts[i];
        if (only && h != only) continue;
        if (s.ops->user_list(s.h, h->name, print_user, h->name) < 0) {
            ctl_err("cannot read the store %s (see the message above)", cfg->store_dsn);
            goto fail;
        }
    }
    ret = CTL_OK;
fail:
    store_close(&s);
    return ret;
}
