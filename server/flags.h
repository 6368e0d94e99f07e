/* flags.h - command-line flags of the training algorithm, shared by
 * shoal-server and shoal-sim so both spell and check them the same way:
 * client momentum, weight decay, FedProx mu, lr decay, the server optimizer,
 * an accuracy target that ends training early, the update encodings
 * (--compress, --downlink), secure aggregation (--secagg ...), client
 * sampling and differential privacy (--sampling, --dp ...), a local
 * time budget with FedNova aggregation (--local-budget), and asynchronous
 * buffered rounds (--async, --concurrency, --max-staleness). */
#ifndef SHOAL_SERVER_FLAGS_H
#define SHOAL_SERVER_FLAGS_H

#include <getopt.h>
#include <stdio.h>

#include "server/core.h"

/* getopt_long ids of these flags are SRV_FLAG_BASE + index. */
#define SRV_FLAG_BASE 1000
#define SRV_FLAG_COUNT 37

/* SRV_FLAG_COUNT entries (not terminated): append them to a program's own
 * option table. */
extern const struct option srv_flag_options[SRV_FLAG_COUNT];

/* Apply flag `id` with argument arg to cfg. Returns 0 when applied, 1 when id
 * is not one of these flags, -1 after printing "PROG: --flag 'x': why" to
 * stderr for a bad value. */
int srv_flag_apply(const char *prog, int id, const char *arg, srv_config *cfg);

/* The help block for these flags, with the defaults of srv_config_defaults. */
void srv_flag_help(FILE *f);

/* Copy a program's options (n, not terminated) and these into out (room for
 * n + SRV_FLAG_COUNT + 1), terminated. */
void srv_flag_merge(struct option *out, const struct option *own, size_t n);

#endif
