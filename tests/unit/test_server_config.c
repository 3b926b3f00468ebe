/* test_server_config.c - starling.conf loading and validation.
 *
 * Each case is a whole config file and the exact error text the admin would
 * see, so a case reads like the terminal session it stands for. Files are
 * written as "test.conf" in a scratch directory we chdir into, which keeps
 * the "file:line:" prefixes short and stable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "starling/alloc.h"
#include "starling/buf.h"
#include "server/config.h"
#include "server/module.h"

static char scratch[] = "/tmp/st-config-test-XXXXXX";

static void write_conf(const char *name, const char *text)
{
    FILE *f = fopen(name, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Load text as test.conf; returns the config (or NULL) and the errors. */
static st_config *load(const char *text, st_buf *errors)
{
    st_buf_init(errors, 0);
    write_conf("test.conf", text);
    return st_config_load("test.conf", errors);
}

static const char *errtext(const st_buf *b)
{
    return b->data ? b->data : "";
}

/* ---- error cases: the file and every line the admin should see ---- */

#define X10 "xxxxxxxxxx"
#define X100 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10

typedef struct err_case {
    const char *name;
    const char *conf;
    const char *errors;
} err_case;

static const err_case err_cases[] = {
    {"unknown_key_suggests_nearest", "c2s_port = 5222\n[host localhost]\n",
     "test.conf:1: unknown setting 'c2s_port'; did you mean 'c2s_ports'?\n"},
    {"unknown_key_transposition", "requier_encryption = true\n[host localhost]\n",
     "test.conf:1: unknown setting 'requier_encryption'; did you mean 'require_encryption'?\n"},
    {"unknown_key_without_suggestion", "colour = blue\n[host localhost]\n",
     "test.conf:1: unknown setting 'colour'\n"},
    {"bad_port", "c2s_ports = abc\n[host localhost]\n",
     "test.conf:1: c2s_ports: expected a port number 1..65535, got 'abc'\n"},
    {"port_zero", "c2s_ports = 5222 0\n[host localhost]\n",
     "test.conf:1: c2s_ports: expected a port number 1..65535, got '0'\n"},
    {"port_too_big", "c2s_tls_ports = 65536\n[host localhost]\n",
     "test.conf:1: c2s_tls_ports: expected a port number 1..65535, got '65536'\n"},
    {"port_with_suffix", "c2s_ports = 5k\n[host localhost]\n",
     "test.conf:1: c2s_ports: expected a port number 1..65535, got '5k'\n"},
    {"port_twice", "c2s_ports = 5222 5222\n[host localhost]\n",
     "test.conf:1: c2s_ports: port 5222 is listed twice\n"},
    {"port_in_both_lists", "c2s_ports = 5222\nc2s_tls_ports = 5222\n[host localhost]\n",
     "test.conf:2: c2s_tls_ports: port 5222 is also in c2s_ports\n"},
    {"no_listener_at_all", "c2s_ports =\nc2s_tls_ports =\n[host localhost]\n",
     "test.conf:1: c2s_ports and c2s_tls_ports are both empty: the server would not listen at "
     "all\n"},
    {"line_without_equals", "data_dir = /tmp\nhello world\n[host localhost]\n",
     "test.conf:2: expected 'key = value' or '[host NAME]', got 'hello world'\n"},
    {"missing_key", "= 5\n[host localhost]\n", "test.conf:1: missing key before '='\n"},
    {"bad_bool", "allow_plain = maybe\n[host localhost]\n",
     "test.conf:1: allow_plain: expected true or false, got 'maybe'\n"},
    {"bad_size", "max_stanza_bytes = 12q\n[host localhost]\n",
     "test.conf:1: max_stanza_bytes: expected a size like 65536, 64k or 1M, got '12q'\n"},
    {"size_out_of_range", "max_stanza_bytes = 10\n[host localhost]\n",
     "test.conf:1: max_stanza_bytes: 10 is out of range 1024..67108864\n"},
    {"bad_duration", "idle_timeout = soon\n[host localhost]\n",
     "test.conf:1: idle_timeout: expected a duration like 30s, 5m or 1h, got 'soon'\n"},
    {"duration_out_of_range", "handshake_timeout = 2h\n[host localhost]\n",
     "test.conf:1: handshake_timeout: 7200 is out of range 1..3600\n"},
    {"int_refuses_size_suffix", "max_connections = 10k\n[host localhost]\n",
     "test.conf:1: max_connections: expected a whole number, got '10k'\n"},
    {"int_overflow", "max_connections = 99999999999999999999999\n[host localhost]\n",
     "test.conf:1: max_connections: expected a whole number, got '99999999999999999999999'\n"},
    {"negative", "sasl_max_failures = -1\n[host localhost]\n",
     "test.conf:1: sasl_max_failures: -1 is out of range 1..100\n"},
    {"bad_enum", "log_level = loud\n[host localhost]\n",
     "test.conf:1: log_level: expected one of debug, info, warn, error, got 'loud'\n"},
    {"bad_store", "store = mysql\n[host localhost]\n",
     "test.conf:1: store: expected one of sqlite, postgresql, got 'mysql'\n"},
    {"postgresql_needs_dsn", "store = postgresql\n[host localhost]\n",
     "test.conf:1: store = postgresql needs store_dsn (a connection string)\n"},
    {"empty_string", "data_dir =\n[host localhost]\n",
     "test.conf:1: data_dir: expected a value, got nothing\n"},
    {"bad_bind", "bind = 127.0.0.1 localhost\n[host localhost]\n",
     "test.conf:1: bind: expected an IPv4 or IPv6 address, got 'localhost'\n"},
    {"empty_bind", "bind =\n[host localhost]\n",
     "test.conf:1: bind: expected at least one IP address\n"},
    {"global_set_twice", "data_dir = /a\ndata_dir = /b\n[host localhost]\n",
     "test.conf:2: data_dir: already set at line 1\n"},
    {"admin_socket_too_long", "data_dir = /tmp/" X100 "xxxxxx\n[host localhost]\n",
     "test.conf: admin_socket: '/tmp/" X100 "xxxxxx/admin.sock' is longer than the 107 bytes a "
     "Unix socket path may have\n"},
    {"duplicate_host_after_normalisation", "[host Example.ORG]\n[host example.org]\n",
     "test.conf:2: host 'example.org' is already defined at line 1\n"},
    {"invalid_host_name", "[host user@example.org]\n",
     "test.conf:1: 'user@example.org' is not a valid domain name for a host\n"},
    {"host_without_name", "[host]\n[host localhost]\n",
     "test.conf:1: [host] needs a domain name, as in [host example.org]\n"},
    {"unknown_section", "[server]\nfoo = 1\n[host localhost]\n",
     "test.conf:1: unknown section '[server]'; sections look like [host example.org]\n"},
    {"unterminated_section", "[host localhost\n[host a.example]\n",
     "test.conf:1: section header is missing its ']': [host localhost\n"},
    {"global_key_in_host", "[host localhost]\nc2s_ports = 5222\n",
     "test.conf:2: 'c2s_ports' is a global setting; move it above the first [host ...] section\n"},
    {"host_key_at_top_level", "modules = ping\nregister.allow = true\n[host localhost]\n",
     "test.conf:1: 'modules' is a host setting; put it after a [host NAME] line\n"
     "test.conf:2: 'register.allow' is a host setting; put it after a [host NAME] line\n"},
    {"unknown_module", "[host localhost]\nmodules = disco pnig\n",
     "test.conf:2: modules: unknown module 'pnig'; did you mean 'ping'?\n"},
    {"module_listed_twice", "[host localhost]\nmodules = ping ping\n",
     "test.conf:2: modules: 'ping' is listed twice\n"},
    {"modules_set_twice", "[host localhost]\nmodules = ping\nmodules = disco\n",
     "test.conf:3: modules: already set for host 'localhost' at line 2\n"},
    {"option_for_module_not_enabled", "[host x]\nmodules = disco ping\nregister.allow = true\n",
     "test.conf:3: option 'register.allow' for module 'register' which is not enabled for host "
     "'x'; add it to modules\n"},
    {"option_before_modules_line_counts", "[host x]\nregister.allow = true\nmodules = disco\n",
     "test.conf:2: option 'register.allow' for module 'register' which is not enabled for host "
     "'x'; add it to modules\n"},
    {"unknown_module_option_suggests", "[host localhost]\nregister.alow = true\n",
     "test.conf:2: unknown setting 'register.alow'; did you mean 'register.allow'?\n"},
    {"unknown_module_option", "[host localhost]\nregister.colour = blue\n",
     "test.conf:2: unknown setting 'register.colour': module 'register' has no option 'colour'\n"},
    {"option_of_unknown_module", "[host localhost]\nfrobnicate.level = 3\n",
     "test.conf:2: unknown setting 'frobnicate.level': there is no module 'frobnicate'\n"},
    {"module_option_bad_value", "[host localhost]\nregister.allow = perhaps\n",
     "test.conf:2: register.allow: expected true or false, got 'perhaps'\n"},
    {"module_duration_option_bad_value", "[host localhost]\nregister.window = forever\n",
     "test.conf:2: register.window: expected a duration like 30s or 5m, got 'forever'\n"},
    {"module_int_option_out_of_range", "[host localhost]\nregister.limit = -1\n",
     "test.conf:2: register.limit: -1 is out of range 0..1000000\n"},
    {"module_option_of_other_module_suggests", "[host localhost]\nversion.show_o = true\n",
     "test.conf:2: unknown setting 'version.show_o'; did you mean 'version.show_os'?\n"},
    {"module_option_set_twice", "[host localhost]\nregister.allow = true\nregister.allow = false\n",
     "test.conf:3: register.allow: already set for host 'localhost' at line 2\n"},
    {"unknown_key_in_host", "[host localhost]\nmodlues = ping\n",
     "test.conf:2: unknown setting 'modlues'; did you mean 'modules'?\n"},
    /* Every mistake in one run, in file order, then the file-wide ones. */
    {"all_errors_reported_together",
     "c2s_port = 5222\n"
     "c2s_ports = abc\n"
     "# a comment\n"
     "\n"
     "nonsense\n"
     "[host a.example]\n"
     "modules = disco ping\n"
     "register.allow = true\n"
     "[host A.example]\n",
     "test.conf:1: unknown setting 'c2s_port'; did you mean 'c2s_ports'?\n"
     "test.conf:2: c2s_ports: expected a port number 1..65535, got 'abc'\n"
     "test.conf:5: expected 'key = value' or '[host NAME]', got 'nonsense'\n"
     "test.conf:8: option 'register.allow' for module 'register' which is not enabled for host "
     "'a.example'; add it to modules\n"
     "test.conf:9: host 'a.example' is already defined at line 6\n"},
};

static void test_config_errors(void **state)
{
    for (size_t i = 0; i < sizeof err_cases / sizeof err_cases[0]; i++) {
        const err_case *t = &err_cases[i];
        st_buf errors;
        st_config *c = load(t->conf, &errors);
        if (c || strcmp(errtext(&errors), t->errors) != 0)
            print_error("case %s:\nexpected:\n%sgot (%s):\n%s", t->name, t->errors,
                        c ? "loaded" : "failed", errtext(&errors));
        assert_null(c);
        assert_string_equal(errtext(&errors), t->errors);
        st_buf_free(&errors);
    }
}

static void test_config_missing_file(void **state)
{
    st_buf errors;
    st_buf_init(&errors, 0);
    assert_null(st_config_load("nonexistent.conf", &errors));
    assert_string_equal(errtext(&errors),
                        "nonexistent.conf: cannot open: No such file or directory\n");
    st_buf_free(&errors);
    /* A NULL error buffer is allowed: the caller only wants yes or no. */
    write_conf("test.conf", "bogus\n");
    assert_null(st_config_load("test.conf", NULL));
}

/* ---- valid files ---- */

static void test_config_defaults_minimal_file(void **state)
{
    st_buf errors;
    st_config *c = load("[host localhost]\n", &errors);
    assert_non_null(c);
    assert_string_equal(errtext(&errors), "");
    assert_string_equal(c->path, "test.conf");
    assert_string_equal(c->data_dir, "/var/lib/starling");
    assert_string_equal(c->store, "sqlite");
    assert_string_equal(c->store_dsn, "/var/lib/starling/starling.db");
    assert_string_equal(c->certificate, "/var/lib/starling/cert.pem");
    assert_string_equal(c->private_key, "/var/lib/starling/key.pem");
    assert_string_equal(c->admin_socket, "/var/lib/starling/admin.sock");
    assert_int_equal(c->nbind, 2);
    assert_string_equal(c->bind[0], "127.0.0.1");
    assert_string_equal(c->bind[1], "::1");
    assert_int_equal(c->nc2s_ports, 1);
    assert_int_equal(c->c2s_ports[0], 5222);
    assert_int_equal(c->nc2s_tls_ports, 1);
    assert_int_equal(c->c2s_tls_ports[0], 5223);
    assert_int_equal(c->require_encryption, 1);
    assert_int_equal(c->allow_plain, 1);
    assert_int_equal(c->max_stanza_bytes, 262144);
    assert_int_equal(c->max_depth, 32);
    assert_int_equal(c->max_attrs, 64);
    assert_int_equal(c->max_connections, 10000);
    assert_int_equal(c->handshake_timeout, 30);
    assert_int_equal(c->idle_timeout, 300);
    assert_int_equal(c->ping_timeout, 60);
    assert_int_equal(c->c2s_rate, 65536);
    assert_int_equal(c->c2s_burst, 262144);
    assert_int_equal(c->max_send_queue, 1048576);
    assert_int_equal(c->sasl_max_failures, 3);
    assert_string_equal(c->log_level, "info");

    /* A host without a modules line gets st_default_modules. */
    assert_int_equal(c->nhosts, 1);
    const st_host_conf *h = st_config_host(c, "localhost");
    assert_non_null(h);
    assert_int_equal(h->line, 1);
    size_t n = 0;
    while (st_default_modules[n]) {
        assert_true(st_host_has_module(h, st_default_modules[n]));
        n++;
    }
    assert_int_equal(h->nmodules, n);
    assert_int_equal(h->nopts, 0);
    st_config_free(c);
    st_buf_free(&errors);
}

static void test_config_defaults_without_file(void **state)
{
    st_config *c = st_config_defaults();
    assert_non_null(c);
    assert_int_equal(c->nhosts, 0);
    assert_string_equal(c->store_dsn, "/var/lib/starling/starling.db");
    assert_int_equal(c->c2s_ports[0], 5222);
    assert_int_equal(c->max_stanza_bytes, 262144);
    st_config_free(c);
    st_config_free(NULL);
}

static void test_config_full_file(void **state)
{
    st_buf errors;
    st_config *c = load("# Starling\n"
                        "  data_dir = /srv/xmpp/  \n"
                        "certificate = \"/etc/ssl/xmpp cert.pem\"\n"
                        "bind = 0.0.0.0, ::\n"
                        "c2s_ports = 5222 5322\n"
                        "c2s_tls_ports =\n"
                        "require_encryption = off\n"
                        "allow_plain = No\n"
                        "max_stanza_bytes = 1M\n"
                        "max_depth = 16\n"
                        "max_attrs = 100\n"
                        "max_connections = 50000\n"
                        "handshake_timeout = 1m\n"
                        "idle_timeout = 1h\n"
                        "ping_timeout = 45s\n"
                        "c2s_rate = 64k\n"
                        "c2s_burst = 512K\n"
                        "max_send_queue = 2M\n"
                        "sasl_max_failures = 5\n"
                        "log_level = debug\n"
                        "; another comment style\n"
                        "\n"
                        "[host Example.COM]\n"
                        "modules = disco ping register\n"
                        "register.allow = yes\n"
                        "register.window = 30m\n"
                        "\n"
                        "[ host  chat.example.net ]\n"
                        "modules =\n",
                        &errors);
    if (!c) print_error("%s", errtext(&errors));
    assert_non_null(c);
    assert_string_equal(c->data_dir, "/srv/xmpp/");
    assert_string_equal(c->store_dsn, "/srv/xmpp/starling.db");
    assert_string_equal(c->certificate, "/etc/ssl/xmpp cert.pem");
    assert_string_equal(c->private_key, "/srv/xmpp/key.pem");
    assert_string_equal(c->admin_socket, "/srv/xmpp/admin.sock");
    assert_int_equal(c->nbind, 2);
    assert_string_equal(c->bind[0], "0.0.0.0");
    assert_string_equal(c->bind[1], "::");
    assert_int_equal(c->nc2s_ports, 2);
    assert_int_equal(c->c2s_ports[1], 5322);
    assert_int_equal(c->nc2s_tls_ports, 0); /* empty list disables direct TLS */
    assert_int_equal(c->require_encryption, 0);
    assert_int_equal(c->allow_plain, 0);
    assert_int_equal(c->max_stanza_bytes, 1048576);
    assert_int_equal(c->max_depth, 16);
    assert_int_equal(c->max_attrs, 100);
    assert_int_equal(c->max_connections, 50000);
    assert_int_equal(c->handshake_timeout, 60);
    assert_int_equal(c->idle_timeout, 3600);
    assert_int_equal(c->ping_timeout, 45);
    assert_int_equal(c->c2s_rate, 65536);
    assert_int_equal(c->c2s_burst, 524288);
    assert_int_equal(c->max_send_queue, 2097152);
    assert_int_equal(c->sasl_max_failures, 5);
    assert_string_equal(c->log_level, "debug");

    assert_int_equal(c->nhosts, 2);
    /* Host names are normalised (nameprep lowercases). */
    assert_null(st_config_host(c, "Example.COM"));
    const st_host_conf *h = st_config_host(c, "example.com");
    assert_non_null(h);
    assert_string_equal(h->file, "test.conf");
    assert_int_equal(h->line, 23);
    assert_int_equal(h->nmodules, 3);
    assert_true(st_host_has_module(h, "register"));
    assert_false(st_host_has_module(h, "version"));
    const st_conf_kv *kv = st_host_opt(h, "register.allow");
    assert_non_null(kv);
    assert_string_equal(kv->value, "yes");
    assert_int_equal(kv->line, 25);
    assert_null(st_host_opt(h, "register.other"));
    /* options are kept raw; the module parses them with the shared parsers */
    long long window = 0;
    assert_int_equal(st_parse_duration(st_host_opt(h, "register.window")->value, &window), 0);
    assert_int_equal(window, 1800);
    assert_int_equal(h->nopts, 2);

    /* "modules =" with nothing enables no modules at all. */
    const st_host_conf *h2 = st_config_host(c, "chat.example.net");
    assert_non_null(h2);
    assert_int_equal(h2->nmodules, 0);
    assert_false(st_host_has_module(h2, "ping"));
    st_config_free(c);
    st_buf_free(&errors);
}

/* A file without any [host] loads (starlingd warns about it). */
static void test_config_no_hosts_is_allowed(void **state)
{
    st_buf errors;
    st_config *c = load("data_dir = /tmp/st\n", &errors);
    assert_non_null(c);
    assert_int_equal(c->nhosts, 0);
    assert_null(st_config_host(c, "localhost"));
    assert_string_equal(c->store_dsn, "/tmp/st/starling.db");
    st_config_free(c);
    st_buf_free(&errors);
}

static void test_config_postgresql_with_dsn(void **state)
{
    st_buf errors;
    st_config *c = load("store = postgresql\nstore_dsn = host=/run/pg dbname=starling\n"
                        "[host localhost]\n",
                        &errors);
    assert_non_null(c);
    assert_string_equal(c->store_dsn, "host=/run/pg dbname=starling");
    st_config_free(c);
    st_buf_free(&errors);
}

/* Numeric module options are checked against the module's bounds; find
 * one in the real tables so the test follows them as they change. */
static void test_config_module_option_bounds(void **state)
{
    const st_module *m = NULL;
    const st_module_opt *o = NULL;
    for (size_t i = 0; !o && st_builtin_modules[i]; i++)
        for (const st_module_opt *p = st_builtin_modules[i]->opts; p && p->name; p++)
            if (p->type == ST_OPT_INT || p->type == ST_OPT_SIZE || p->type == ST_OPT_DURATION) {
                m = st_builtin_modules[i];
                o = p;
                break;
            }
    if (!o) skip();
    char conf[512], want[512];
    snprintf(conf, sizeof conf, "[host localhost]\nmodules = %s\n%s.%s = %lld\n", m->name, m->name,
             o->name, o->max + 1);
    snprintf(want, sizeof want, "test.conf:3: %s.%s: %lld is out of range %lld..%lld\n", m->name,
             o->name, o->max + 1, o->min, o->max);
    st_buf errors;
    assert_null(load(conf, &errors));
    assert_string_equal(errtext(&errors), want);
    st_buf_free(&errors);

    /* and its default is itself a valid value */
    char why[128];
    if (o->def) assert_int_equal(st_module_opt_check(o, o->def, why, sizeof why), 0);
}

/* Every option default in every module table must pass its own check. */
static void test_config_module_defaults_are_valid(void **state)
{
    char why[256];
    for (size_t i = 0; st_builtin_modules[i]; i++)
        for (const st_module_opt *o = st_builtin_modules[i]->opts; o && o->name; o++) {
            if (!o->def) continue;
            if (st_module_opt_check(o, o->def, why, sizeof why) != 0)
                print_error("%s.%s default '%s': %s\n", st_builtin_modules[i]->name, o->name,
                            o->def, why);
            assert_int_equal(st_module_opt_check(o, o->def, why, sizeof why), 0);
        }
}

/* ---- value parsers ---- */

static void test_parse_values(void **state)
{
    static const struct {
        const char *s;
        int ok;
        int v;
    } bools[] = {
        {"true", 0, 1}, {"TRUE", 0, 1},  {"yes", 0, 1}, {"on", 0, 1},
        {"1", 0, 1},    {"false", 0, 0}, {"no", 0, 0},  {"Off", 0, 0},
        {"0", 0, 0},    {"", -1, 0},     {"ja", -1, 0}, {"truee", -1, 0},
    };
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        int v = -7;
        assert_int_equal(st_parse_bool(bools[i].s, &v), bools[i].ok);
        if (bools[i].ok == 0) assert_int_equal(v, bools[i].v);
    }
    static const struct {
        const char *s;
        int ok;
        long long v;
    } sizes[] =
        {
            {"0", 0, 0},
            {"65536", 0, 65536},
            {"64k", 0, 65536},
            {"64K", 0, 65536},
            {"1M", 0, 1048576},
            {"1m", 0, 1048576},
            {"2G", 0, 2147483648LL},
            {"-5", 0, -5},
            {"", -1, 0},
            {"k", -1, 0},
            {"1.5M", -1, 0},
            {"1MB", -1, 0},
            {" 1", -1, 0},
            {"1 ", -1, 0},
            {"9223372036854775807", 0, 9223372036854775807LL},
            {"9223372036854775808", -1, 0},
            {"9007199254740992G", -1, 0},
        },
      durations[] = {
          {"30", 0, 30}, {"30s", 0, 30}, {"5m", 0, 300}, {"1h", 0, 3600}, {"2d", 0, 172800},
          {"1M", -1, 0}, {"s", -1, 0},   {"1hm", -1, 0}, {"", -1, 0},
      };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        long long v = -7;
        int r = st_parse_size(sizes[i].s, &v);
        if (r != sizes[i].ok) print_error("size '%s'\n", sizes[i].s);
        assert_int_equal(r, sizes[i].ok);
        if (r == 0) assert_true(v == sizes[i].v);
    }
    for (size_t i = 0; i < sizeof durations / sizeof durations[0]; i++) {
        long long v = -7;
        int r = st_parse_duration(durations[i].s, &v);
        if (r != durations[i].ok) print_error("duration '%s'\n", durations[i].s);
        assert_int_equal(r, durations[i].ok);
        if (r == 0) assert_true(v == durations[i].v);
    }
}

static void test_config_locate(void **state)
{
    unsetenv("STARLING_CONFIG");
    assert_string_equal(st_config_locate("/x/y.conf"), "/x/y.conf");
    unlink("starling.conf");
    assert_string_equal(st_config_locate(NULL), "/etc/starling/starling.conf");
    write_conf("starling.conf", "[host localhost]\n");
    assert_string_equal(st_config_locate(NULL), "./starling.conf");
    setenv("STARLING_CONFIG", "/from/env.conf", 1);
    assert_string_equal(st_config_locate(NULL), "/from/env.conf");
    assert_string_equal(st_config_locate("/x/y.conf"), "/x/y.conf");
    setenv("STARLING_CONFIG", "", 1); /* empty = unset */
    assert_string_equal(st_config_locate(NULL), "./starling.conf");
    unsetenv("STARLING_CONFIG");
    unlink("starling.conf");
}

/* ---- break the allocator on purpose ---- */

static long alloc_budget = -1; /* allocations left before failing; -1 = never */
static long alloc_count;

static void *fail_malloc(size_t n)
{
    alloc_count++;
    if (alloc_budget == 0) return NULL;
    if (alloc_budget > 0) alloc_budget--;
    return malloc(n);
}

static void *fail_realloc(void *p, size_t n)
{
    alloc_count++;
    if (alloc_budget == 0) return NULL;
    if (alloc_budget > 0) alloc_budget--;
    return realloc(p, n);
}

static void test_config_oom(void **state)
{
    static const st_alloc_hooks hooks = {fail_malloc, fail_realloc, free};
    const char *conf = "data_dir = /srv\nbind = 127.0.0.1 ::1\nc2s_ports = 5222 5223\n"
                       "c2s_tls_ports = 5224\nlog_level = warn\n"
                       "[host a.example]\nmodules = disco register\nregister.allow = true\n"
                       "[host b.example]\n";
    write_conf("test.conf", conf);
    st_set_alloc_hooks(&hooks);
    alloc_budget = -1;
    alloc_count = 0;
    st_config *c = st_config_load("test.conf", NULL);
    long total = alloc_count;
    assert_true(total > 20); /* the hooks really are in the path */
    assert_non_null(c);
    st_config_free(c);
    /* Fail each allocation in turn: never a crash, never a leak (ASan). */
    for (long i = 0; i < total; i++) {
        st_buf errors = {0};
        alloc_budget = i;
        c = st_config_load("test.conf", &errors);
        alloc_budget = -1;
        assert_null(c);
        st_buf_free(&errors);
    }
    for (long i = 0; i < 40; i++) {
        alloc_budget = i;
        c = st_config_defaults();
        alloc_budget = -1;
        st_config_free(c);
    }
    st_set_alloc_hooks(NULL);
}

static int setup(void **state)
{
    if (!mkdtemp(scratch) || chdir(scratch) != 0) return -1;
    return 0;
}

static int teardown(void **state)
{
    unlink("test.conf");
    unlink("starling.conf");
    if (chdir("/") != 0) return -1;
    rmdir(scratch);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_config_missing_file),
        cmocka_unit_test(test_config_defaults_minimal_file),
        cmocka_unit_test(test_config_defaults_without_file),
        cmocka_unit_test(test_config_full_file),
        cmocka_unit_test(test_config_no_hosts_is_allowed),
        cmocka_unit_test(test_config_postgresql_with_dsn),
        cmocka_unit_test(test_config_module_option_bounds),
        cmocka_unit_test(test_config_module_defaults_are_valid),
        cmocka_unit_test(test_parse_values),
        cmocka_unit_test(test_config_locate),
        cmocka_unit_test(test_config_oom),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
