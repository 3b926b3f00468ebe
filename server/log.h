/* log.h - server logging: one line per event, prefixed with level and the
 * module or subsystem ("c2s", "storage", "mod_ping"), nginx-style context
 * ("client 127.0.0.1:5000, while authenticating"). Never log passwords or
 * SASL payloads. */
#ifndef STARLING_LOG_H
#define STARLING_LOG_H

typedef enum { ST_LOG_DEBUG = 0, ST_LOG_INFO, ST_LOG_WARN, ST_LOG_ERROR } st_log_level;

void st_log_set_level(st_log_level l);
int st_log_level_parse(const char *s, st_log_level *out); /* "debug".."error"; 0 or -1 */
void st_log(st_log_level l, const char *sub, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define st_debug(sub, ...) st_log(ST_LOG_DEBUG, sub, __VA_ARGS__)
#define st_info(sub, ...) st_log(ST_LOG_INFO, sub, __VA_ARGS__)
#define st_warn(sub, ...) st_log(ST_LOG_WARN, sub, __VA_ARGS__)
#define st_error(sub, ...) st_log(ST_LOG_ERROR, sub, __VA_ARGS__)

#endif
