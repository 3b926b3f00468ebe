/* fuzz_config.c - libFuzzer target for the config loader (server/config.c).
 *
 * starling.conf is written by admins, not attackers, but it is still input
 * that the daemon, `starlingd -t` and `starlingctl check` all parse, so a
 * crash on a typo is a bug. Each input is written to a temporary file and
 * loaded with st_config_load, which also runs the module option checks
 * against the real module tables (server/modules.c). Beyond "never crash",
 * it checks what the loader promises:
 *
 *   - a failed load reports at least one "file:...: message" line, and a
 *     successful one reports nothing (errors are data, not silence);
 *   - a loaded config is complete: every path and list has its default,
 *     every host can be found by its own name, every host option by its key;
 *   - the value parsers shared with module options round-trip: a value they
 *     accept, printed back as plain seconds/bytes, parses to itself.
 *
 * The parsers are also run on each line of the input on its own, so the
 * fuzzer reaches them without having to build a whole valid file first. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "server/config.h"
#include "server/log.h"

static char conf_path[] = "/tmp/starling-fuzz-config-XXXXXX";
static int conf_fd = -1;

static void remove_conf(void)
{
    unlink(conf_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* One file for the whole run, rewritten per input: creating a file per
     * input would make the file system, not the loader, the bottleneck. */
    conf_fd = mkstemp(conf_path);
    if (conf_fd < 0) abort();
    atexit(remove_conf);
    st_log_set_level(ST_LOG_ERROR);
    return 0;
}

static void check_number_parser(int (*parse)(const char *, long long *), const char *s)
{
    long long v, w;
    char back[32];
    if (parse(s, &v) != 0) return;
    /* no suffix is the unit (bytes, seconds): the plain number must mean
     * the same, or a value shown in an error could not be pasted back */
    snprintf(back, sizeof back, "%lld", v);
    if (parse(back, &w) != 0 || w != v) abort();
}

static void check_parsers(const char *s)
{
    int b = -1;
    if (st_parse_bool(s, &b) == 0 && b != 0 && b != 1) abort();
    check_number_parser(st_parse_size, s);
    check_number_parser(st_parse_duration, s);
}

/* The parsers on every line (NUL-terminated copy; a line with a NUL byte is
 * simply cut there, as a C string would be). */
static void parse_slices(const uint8_t *data, size_t size)
{
    char *line = malloc(size + 1);
    if (!line) return;
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != '\n') continue;
        size_t n = i - start;
        memcpy(line, data + start, n);
        line[n] = '\0';
        check_parsers(line);
        /* and the value part of "key = value", trimmed the way the loader does */
        char *eq = strchr(line, '=');
        if (eq) {
            char *v = eq + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t vl = strlen(v);
            while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t' || v[vl - 1] == '\r'))
                v[--vl] = '\0';
            check_parsers(v);
        }
        start = i + 1;
    }
    free(line);
}

static void check_loaded(const st_config *c, const st_buf *errs, const uint8_t *data, size_t size)
{
    if (errs->len) abort(); /* success with an error message */
    if (!c->data_dir || !c->store || !c->certificate || !c->private_key || !c->admin_socket ||
        !c->log_level || !c->bind || c->nbind == 0)
        abort(); /* a default was not filled in */
    if (strcmp(c->store, "sqlite") == 0 && !c->store_dsn) abort();
    if (c->nc2s_ports + c->nc2s_tls_ports == 0) abort(); /* cross_checks refuses that */
    for (size_t i = 0; i < c->nhosts; i++) {
        const st_host_conf *h = &c->hosts[i];
        if (st_config_host(c, h->name) != h) abort(); /* a duplicate host got in */
        for (size_t j = 0; j < h->nopts; j++)
            if (st_host_opt(h, h->opts[j].key) != &h->opts[j]) abort(); /* duplicate option */
        for (size_t j = 0; j < h->nmodules; j++)
            if (!st_host_has_module(h, h->modules[j])) abort();
    }
    /* the mechanism filter on words taken from the input */
    char word[64];
    size_t n = size < sizeof word - 1 ? size : sizeof word - 1;
    memcpy(word, data, n);
    word[n] = '\0';
    (void)st_config_mech_enabled(c, word);
    (void)st_config_mech_enabled(c, "SCRAM-SHA-256");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ftruncate(conf_fd, 0) != 0) abort();
    for (size_t off = 0; off < size;) {
        ssize_t w = pwrite(conf_fd, data + off, size - off, (off_t)off);
        if (w <= 0) abort();
        off += (size_t)w;
    }
    st_buf errs;
    st_buf_init(&errs, 1 << 20);
    st_config *c = st_config_load(conf_path, &errs);
    if (c) {
        check_loaded(c, &errs, data, size);
        st_config_free(c);
    } else if (errs.len == 0 || !memchr(errs.data, ':', errs.len)) {
        abort(); /* refused without saying where and why */
    }
    st_buf_free(&errs);
    parse_slices(data, size);
    return 0;
}
