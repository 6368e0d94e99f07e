/* bench.h - subcommands of shoal-bench that live in their own files. Each
 * prints one JSON object per result on stdout ({"bench", "params", "value",
 * "unit"}) and everything else on stderr; returns the process exit code. */
#ifndef SHOAL_BENCH_H
#define SHOAL_BENCH_H

int bench_codec(int argc, char **argv); /* bench/codec.c */

#endif
