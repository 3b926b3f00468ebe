/* check.c - starlingctl check: find what would stop starlingd, before it does.
 *
 * Like prosodyctl check: each problem is printed with the fix, and the run
 * ends with "All checks passed." or "N problems found." (exit 0 or 1).
 * Warnings (a certificate expiring soon) are printed but do not fail.
 *
 * The checks look without touching: the store is only opened if its file
 * already exists (opening a SQLite file creates it), and ports are probed by
 * binding and closing at once. A port that is busy because starlingd itself
 * holds it is fine; we know it is starlingd when its admin socket answers. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ctl/ctl.h"
#include "server/storage/storage.h"
#include "starling/buf.h"

#define EXPIRY_WARN_DAYS 30

typedef struct checker {
    const st_config *cfg;
    int problems;
    int warnings;
    int daemon_running; /* -1 not asked yet */
} checker;

static void say(const char *tag, const char *fix, const char *fmt, va_list ap)
{
    printf("  %-8s ", tag);
    vprintf(fmt, ap);
    putchar('\n');
    if (fix) printf("  %-8s fix: %s\n", "", fix);
}

static void ok(checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ok(checker *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say("ok", NULL, fmt, ap);
    va_end(ap);
}

static void note(checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(checker *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say("note", NULL, fmt, ap);
    va_end(ap);
}

static void warn(checker *c, const char *fix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn(checker *c, const char *fix, const char *fmt, ...)
{
    va_list ap;
    c->warnings++;
    va_start(ap, fmt);
    say("warning", fix, fmt, ap);
    va_end(ap);
}

static void problem(checker *c, const char *fix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(checker *c, const char *fix, const char *fmt, ...)
{
    va_list ap;
    c->problems++;
    va_start(ap, fmt);
    say("PROBLEM", fix, fmt, ap);
    va_end(ap);
}

static int daemon_running(checker *c)
{
    if (c->daemon_running < 0) {
        char err[512];
        c->daemon_running =
            ctl_admin_request(c->cfg->admin_socket, "status\n", NULL, err, sizeof err) >= 0;
    }
    return c->daemon_running;
}

/* ---- data directory ---- */

static int check_data_dir(checker *c)
{
    const char *dir = c->cfg->data_dir;
    char fix[1024];
    struct stat sb;

    if (stat(dir, &sb) != 0) {
        snprintf(fix, sizeof fix,
                 "create it with mkdir -p %s (owned by the user starlingd runs as), "
                 "or set data_dir",
                 dir);
        problem(c, fix, "data directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(sb.st_mode)) {
        problem(c, "set data_dir to a directory", "data directory %s is not a directory", dir);
        return -1;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        snprintf(fix, sizeof fix, "run check as the user starlingd runs as, or chown that user %s",
                 dir);
        problem(c, fix, "data directory %s is not writable: %s", dir, strerror(errno));
        return -1;
    }
    ok(c, "data directory %s is writable", dir);
    return 0;
}

/* ---- certificate and key ---- */

/* Never prompt for a passphrase: starlingd cannot either. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

static int is_default_path(const st_config *cfg, const char *path, const char *file)
{
    char def[4096];
    size_t dl = strlen(cfg->data_dir);
    snprintf(def, sizeof def, "%s%s%s", cfg->data_dir,
             dl && cfg->data_dir[dl - 1] == '/' ? "" : "/", file);
    return strcmp(path, def) == 0;
}

static X509 *load_cert(checker *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        problem(c, "set certificate to a readable PEM file, or check its permissions",
                "certificate %s: %s", path, strerror(errno));
        return NULL;
    }
    X509 *x = PEM_read_X509(f, NULL, no_passphrase, NULL);
    fclose(f);
    if (!x)
        problem(c, "give a PEM certificate (-----BEGIN CERTIFICATE-----), leaf first",
                "certificate %s is not a PEM certificate", path);
    return x;
}

static EVP_PKEY *load_key(checker *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        problem(c, "set private_key to a readable PEM file, or check its permissions",
                "private key %s: %s", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
    fclose(f);
    if (!k)
        problem(c, "give an unencrypted PEM private key (openssl pkey -in KEY -out KEY.pem)",
                "private key %s is not an unencrypted PEM private key", path);
    return k;
}

static void check_validity(checker *c, X509 *x, const char *path)
{
    time_t soon = time(NULL) + (time_t)EXPIRY_WARN_DAYS * 86400;
    const ASN1_TIME *na = X509_get0_notAfter(x);
    const ASN1_TIME *nb = X509_get0_notBefore(x);
    int days = 0, secs = 0;

    ASN1_TIME_diff(&days, &secs, NULL, na);
    if (X509_cmp_current_time(na) <= 0) {
        problem(c, "renew the certificate (or delete both generated files to get new ones)",
                "certificate %s expired %d days ago", path, -days);
        return;
    }
    if (X509_cmp_current_time(nb) >= 0) {
        problem(c, "check the system clock, or use a certificate that is valid now",
                "certificate %s is not valid yet", path);
        return;
    }
    if (X509_cmp_time(na, &soon) <= 0)
        warn(c, "renew it soon", "certificate %s expires in %d days", path, days);
    else
        ok(c, "certificate %s is valid for %d more days", path, days);
}

static void check_tls(checker *c)
{
    const st_config *cfg = c->cfg;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    int have_cert = access(cfg->certificate, F_OK) == 0;
    int have_key = access(cfg->private_key, F_OK) == 0;

    if (!have_cert && !have_key && is_default_path(cfg, cfg->certificate, "cert.pem") &&
        is_default_path(cfg, cfg->private_key, "key.pem")) {
        note(c, "no certificate yet: starlingd generates a self-signed one in %s on first start",
             cfg->data_dir);
        return;
    }
    x = load_cert(c, cfg->certificate);
    k = load_key(c, cfg->private_key);
    if (x && k) {
        if (X509_check_private_key(x, k) != 1)
            problem(c, "set private_key to the key the certificate was issued for",
                    "private key %s does not match certificate %s", cfg->private_key,
                    cfg->certificate);
        else
            ok(c, "private key %s matches the certificate", cfg->private_key);
    }
    if (x) {
        check_validity(c, x, cfg->certificate);
        for (size_t i = 0; i < cfg->nhosts; i++) {
            const char *name = cfg->hosts[i].name;
            char fix[512];
            if (X509_check_host(x, name, 0, 0, NULL) == 1) {
                ok(c, "certificate covers host %s", name);
                continue;
            }
            snprintf(fix, sizeof fix,
                     "get a certificate whose subjectAltName includes %s (clients will "
                     "refuse this one)",
                     name);
            problem(c, fix, "certificate %s does not cover host %s", cfg->certificate, name);
        }
    }
    X509_free(x);
    EVP_PKEY_free(k);
}

/* ---- ports ---- */

static void check_port(checker *c, const char *addr, int port, const char *what)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    char fix[512];
    int fd = -1, one = 1;

    memset(&ss, 0, sizeof ss);
    if (inet_pton(AF_INET, addr, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        sl = sizeof *sin;
    } else if (inet_pton(AF_INET6, addr, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        sl = sizeof *sin6;
    } else {
        problem(c, "set bind to IP addresses", "bind address '%s' is not an IP address", addr);
        return;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        problem(c, NULL, "cannot create a socket for %s: %s", addr, strerror(errno));
        return;
    }
    /* As the daemon does: connections in TIME_WAIT do not make a port busy. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) == 0) {
        ok(c, "%s port %d on %s is free", what, port, addr);
    } else if (errno == EADDRINUSE) {
        if (daemon_running(c)) {
            ok(c, "%s port %d on %s is held by the running starlingd", what, port, addr);
        } else {
            snprintf(fix, sizeof fix,
                     "stop the program using it (ss -ltnp 'sport = :%d' shows it), or "
                     "choose another port in the config",
                     port);
            problem(c, fix, "%s port %d on %s is in use by another program", what, port, addr);
        }
    } else if (errno == EACCES) {
        problem(c,
                "start starlingd as root (it can drop privileges) or give it "
                "CAP_NET_BIND_SERVICE, or use a port above 1023",
                "%s port %d on %s needs privileges to bind", what, port, addr);
    } else if (errno == EADDRNOTAVAIL) {
        problem(c, "remove it from bind, or configure the address on an interface",
                "bind address %s does not exist on this machine", addr);
    } else {
        problem(c, NULL, "cannot bind %s port %d on %s: %s", what, port, addr, strerror(errno));
    }
    close(fd);
}

static void check_ports(checker *c)
{
    const st_config *cfg = c->cfg;
    for (size_t a = 0; a < cfg->nbind; a++) {
        for (size_t i = 0; i < cfg->nc2s_ports; i++)
            check_port(c, cfg->bind[a], cfg->c2s_ports[i], "c2s");
        for (size_t i = 0; i < cfg->nc2s_tls_ports; i++)
            check_port(c, cfg->bind[a], cfg->c2s_tls_ports[i], "c2s direct TLS");
    }
}

/* ---- store ---- */

static void check_store(checker *c, int data_dir_ok)
{
    const st_config *cfg = c->cfg;
    const st_store_ops *ops = st_store_find(cfg->store);
    char err[512] = "";
    void *h = NULL;

    if (!ops) {
        problem(c, "set store = sqlite", "store '%s' is not supported by this build", cfg->store);
        return;
    }
    if (strcmp(ops->name, "sqlite") == 0 && access(cfg->store_dsn, F_OK) != 0) {
        /* Opening would create the file; say what the first start will do,
         * provided it can (a missing data_dir was reported already). */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", cfg->store_dsn);
        char *slash = strrchr(dir, '/');
        if (slash)
            *(slash == dir ? slash + 1 : slash) = 0;
        else
            snprintf(dir, sizeof dir, ".");
        if (access(dir, W_OK | X_OK) == 0)
            note(c, "store %s does not exist yet: it is created on first start", cfg->store_dsn);
        else if (data_dir_ok || strcmp(dir, cfg->data_dir) != 0)
            problem(c, "create that directory, or set store_dsn",
                    "the directory %s for store %s is not writable: %s", dir, cfg->store_dsn,
                    strerror(errno));
        return;
    }
    if (ops->open(&h, cfg->store_dsn, err, sizeof err) != 0) {
        problem(c, "check store_dsn, and that the file and its directory are writable",
                "cannot open the %s store: %s", ops->name, err);
        return;
    }
    ok(c, "%s store %s opens (schema version %d)", ops->name, cfg->store_dsn,
       ops->schema_version(h));
    ops->close(h);
}

int ctl_cmd_check(const char *config_path)
{
    checker c = {.problems = 0, .daemon_running = -1};
    st_buf errors;
    st_config *cfg;

    st_buf_init(&errors, 64 * 1024);
    printf("Checking %s\n", config_path);
    if (access(config_path, R_OK) != 0) {
        printf("  %-8s cannot read the config %s: %s\n", "PROBLEM", config_path, strerror(errno));
        printf("  %-8s fix: give one with -c FILE or $STARLING_CONFIG (docs/config.md)\n", "");
        printf("1 problem found.\n");
        return CTL_FAIL;
    }
    cfg = st_config_load(config_path, &errors);
    if (!cfg) {
        /* The loader already wrote "file:line: message" lines; count them. */
        int n = 0;
        for (size_t i = 0; i < errors.len; i++)
            n += errors.data[i] == '\n';
        if (errors.len && errors.data[errors.len - 1] != '\n') n++;
        if (n == 0) n = 1;
        if (errors.len) {
            fputs(errors.data, stdout);
            if (errors.data[errors.len - 1] != '\n') putchar('\n');
        } else {
            printf("%s: cannot load the config\n", config_path);
        }
        printf("%d problem%s found in the config; fix %s and run check again.\n", n,
               n == 1 ? "" : "s", n == 1 ? "it" : "them");
        st_buf_free(&errors);
        return CTL_FAIL;
    }
    st_buf_free(&errors);
    c.cfg = cfg;
    ok(&c, "config %s loaded (%zu host%s)", cfg->path ? cfg->path : config_path, cfg->nhosts,
       cfg->nhosts == 1 ? "" : "s");

    int dir_ok = check_data_dir(&c) == 0;
    check_tls(&c);
    check_ports(&c);
    check_store(&c, dir_ok);

    if (c.problems == 0)
        printf("All checks passed.\n");
    else
        printf("%d problem%s found.\n", c.problems, c.problems == 1 ? "" : "s");
    st_config_free(cfg);
    return c.problems ? CTL_FAIL : CTL_OK;
}
