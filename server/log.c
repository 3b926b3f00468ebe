/* log.c - server log lines on stderr.
 *
 *     2026-12-01T17:00:00.123Z info  c2s: client 127.0.0.1:5000 connected
 *
 * UTC timestamps with milliseconds, a level padded to five columns, the
 * subsystem, the message. Each line is formatted into one stack buffer and
 * written with a single write(), so lines from the loop and the storage
 * thread never interleave (pipes guarantee that up to PIPE_BUF; journald and
 * files opened O_APPEND take whole writes too) and no lock is needed. The
 * level is an atomic so st_log_set_level (SIGHUP reload) is race-free.
 *
 * Messages often carry peer-controlled text (JIDs, stream ids): control
 * characters are escaped as \xNN so a peer cannot forge a log line. A
 * newline becomes a continuation line indented by four spaces (for
 * multi-line reports such as config errors): it can never start with a
 * timestamp, so it cannot pass for a line of its own either. A trailing
 * newline in the message is dropped. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include "server/log.h"

#define LOG_LINE_MAX 2048

static _Atomic int log_level = ST_LOG_INFO;

static const char *const level_names[] = {"debug", "info ", "warn ", "error"};

void st_log_set_level(st_log_level l)
{
    if (l < ST_LOG_DEBUG) l = ST_LOG_DEBUG;
    if (l > ST_LOG_ERROR) l = ST_LOG_ERROR;
    atomic_store(&log_level, (int)l);
}

int st_log_level_parse(const char *s, st_log_level *out)
{
    static const struct {
        const char *name;
        st_log_level level;
    } names[] = {
        {"debug", ST_LOG_DEBUG},  {"info", ST_LOG_INFO},   {"warn", ST_LOG_WARN},
        {"warning", ST_LOG_WARN}, {"error", ST_LOG_ERROR},
    };
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    return -1;
}

void st_log(st_log_level l, const char *sub, const char *fmt, ...)
{
    if ((int)l < atomic_load(&log_level)) return;
    if (l < ST_LOG_DEBUG || l > ST_LOG_ERROR) l = ST_LOG_ERROR;

    char msg[LOG_LINE_MAX], line[LOG_LINE_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    int mn = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (mn < 0) mn = 0;

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[l], sub ? sub : "-");
    if (n < 0 || (size_t)n >= sizeof line) n = 0;

    /* Copy the message, escaping control bytes; keep room for "...\n". */
    size_t pos = (size_t)n, room = sizeof line - 5;
    int cut = (size_t)mn >= sizeof msg;
    size_t ml = strlen(msg);
    while (ml && msg[ml - 1] == '\n')
        msg[--ml] = '\0';
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        if (*p == '\n') {
            if (pos + 5 > room) {
                cut = 1;
                break;
            }
            memcpy(line + pos, "\n    ", 5);
            pos += 5;
        } else if (*p < 0x20 || *p == 0x7f) {
            if (pos + 4 > room) {
                cut = 1;
                break;
            }
            static const char hex[] = "0123456789abcdef";
            line[pos++] = '\\';
            line[pos++] = 'x';
            line[pos++] = hex[*p >> 4];
            line[pos++] = hex[*p & 15];
        } else {
            if (pos + 1 > room) {
                cut = 1;
                break;
            }
            line[pos++] = (char)*p;
        }
    }
    if (cut) {
        memcpy(line + pos, "...", 3);
        pos += 3;
    }
    line[pos++] = '\n';

    /* One write() per line; a short write to stderr is not worth a retry
     * loop that could split the line anyway. */
    ssize_t w = write(STDERR_FILENO, line, pos);
    (void)w;
}
