/* cli.h - helpers shared by the command-line programs: strict number
 * parsing and the "PROG: what is wrong / Try --help" usage error. */
#ifndef SHOAL_CLI_H
#define SHOAL_CLI_H

#include <stdbool.h>
#include <stdint.h>

/* Print "prog: MESSAGE\nTry 'prog --help' for more information." to
 * stderr and return 2 (the usage-error exit status). */
int cli_usage_error(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* SIGINT and SIGTERM call handler once (a second one kills the process the
 * default way); SIGPIPE is ignored so a dead peer is an error, not a kill. */
void cli_stop_on_signals(void (*handler)(int));

/* A whole unsigned decimal in [lo, hi]: digits only, no sign, no junk. */
bool cli_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out);
bool cli_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out);
/* A finite decimal number in [lo, hi] (hi excluded when hi_open). */
bool cli_parse_number(const char *s, double lo, double hi, bool hi_open, double *out);

#endif
