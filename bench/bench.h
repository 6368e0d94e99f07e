/* bench.h - subcommands of shoal-bench that live in their own files. Each
 * prints one JSON object per result on stdout ({"bench", "params", "value",
 * "unit"}) and everything else on stderr; returns the process exit code. */
#ifndef SHOAL_BENCH_H
#define SHOAL_BENCH_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

int bench_codec(int argc, char **argv); /* bench/codec.c */
int bench_accountant(int argc, char **argv); /* bench/dp.c */
int bench_secagg(int argc, char **argv); /* bench/secagg.c */
int bench_footprint(int argc, char **argv); /* bench/footprint.c */
int bench_load(int argc, char **argv); /* bench/load.c */
int bench_indexset(int argc, char **argv); /* bench/indexset.c */

/* Shared by the subcommands (bench/bench.c). */
double bench_now_s(void);                /* monotonic seconds */
/* The head of a subcommand's option loop, at argv[*i] (sub names the
 * subcommand in messages): "--help" or "-h" prints usage on stdout and
 * returns 0; an option with no value after it is reported, with usage on
 * stderr, and returns 2. Otherwise *val is the value, *i steps over it and
 * the result is -1: match the option. */
int bench_option_value(const char *sub, int argc, char **argv, int *i, void (*print_usage)(FILE *),
                       const char **val);
/* The tail of the same loop, after matching option a with value v: known
 * false (no option matched) reports an unknown option with usage on stderr,
 * ok false (the value did not parse) reports a bad value; both return 2.
 * Otherwise -1: go on with the next option. */
int bench_option_check(const char *sub, const char *a, const char *v, bool known, bool ok,
                       void (*print_usage)(FILE *));
double bench_median(double *v, long n);  /* sorts v */
/* One result line on stdout: {"bench", "params", "value", "unit"}. */
void bench_emit(const char *bench, json_t *params, double value, const char *unit);
/* A "Key:   123 kB" line of /proc/PID/status (pid 0: this process), in
 * bytes; 0 if absent. */
double bench_status_bytes(long pid, const char *key);

#endif
