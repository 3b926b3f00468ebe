/* ctl.h - what the starlingctl command files share.
 *
 * Each command is one function plus one row in the table in main.c; the
 * table declares the arity and whether the config is needed, and main()
 * enforces both, so a command never re-checks its argument count.
 *
 * Conventions: a command prints its results on stdout and every error as one
 * sentence on stderr (through ctl_err), and returns the exit status: 0 done,
 * 1 failed. Usage errors exit 2 from main(). Nothing here ever prints or
 * logs a password. */
#ifndef STARLING_CTL_H
#define STARLING_CTL_H
#include <stdio.h>

#include "server/config.h"

#define CTL_OK 0
#define CTL_FAIL 1
#define CTL_USAGE 2

/* One error sentence on stderr, prefixed "starlingctl: ". */
void ctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Commands: cfg is NULL for commands whose row says they need no config. */
int ctl_cmd_adduser(st_config *cfg, int argc, char **argv);
int ctl_cmd_passwd(st_config *cfg, int argc, char **argv);
int ctl_cmd_deluser(st_config *cfg, int argc, char **argv);
int ctl_cmd_users(st_config *cfg, int argc, char **argv);
int ctl_cmd_sessions(st_config *cfg, int argc, char **argv);
int ctl_cmd_kick(st_config *cfg, int argc, char **argv);
int ctl_cmd_status(st_config *cfg, int argc, char **argv);
int ctl_cmd_reload(st_config *cfg, int argc, char **argv);
/* check loads the config itself so it can report every load error. */
int ctl_cmd_check(const char *config_path);

/* Send one request line to the daemon's admin socket. Text lines of the
 * answer go to out (NULL = discard). Returns 0 when the daemon said "ok",
 * 1 when it said "error ..." (message copied to err), -1 when it could not
 * be reached or the answer was cut short (a full sentence in err). */
int ctl_admin_request(const char *socket_path, const char *line, FILE *out, char *err,
                      size_t errlen);

#endif
