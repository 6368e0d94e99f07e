/* dump.h - shoal-client's training record (--dump-train DIR, --replay FILE):
 * after each local training, the task's settings, the global model it
 * started from and the model it trained, so the same step can be replayed
 * on another machine (tests/cross_e2e.sh: an aarch64 client under qemu
 * against an x86 replay). A debugging aid, not part of the protocol.
 *
 * File DIR/round-R.train, all little-endian:
 *   "SHTR" | u32 format 1 | u32 round | u32 epochs | u32 batch | f32 lr |
 *   f32 momentum | f32 weight_decay | f32 prox_mu | u64 seed |
 *   u32 n_examples | u32 dim | dim x f32 global | dim x f32 trained
 * e.g. round 3, E=1, B=10, lr 0.1, seed 7, 600 examples, logreg:
 *   53 48 54 52 01 00 00 00 03 00 00 00 01 00 00 00 0a 00 00 00 cd cc cc 3d
 *   00 00 00 00 00 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00 58 02 00 00
 *   aa 1e 00 00 ...
 * Written to DIR/round-R.train.tmp, then renamed. */
#ifndef SHOAL_CLIENT_DUMP_H
#define SHOAL_CLIENT_DUMP_H

#include <stddef.h>
#include <stdint.h>

#include "shoal/client.h"
#include "shoal/err.h"

#define CLI_DUMP_HEADER 52u

/* Errors: SHOAL_EINVAL (dim over UINT32_MAX), SHOAL_EIO. */
shoal_err cli_dump_write(const char *dir, const shoal_train_info *info, uint32_t n_examples,
                         const float *global, const float *trained, size_t dim);

/* Reads a record: *global and *trained are malloc'd (free both). Errors:
 * SHOAL_EIO, SHOAL_EFORMAT (magic or format), SHOAL_ETRUNC (size does not
 * match dim), SHOAL_ENOMEM. */
shoal_err cli_dump_read(const char *path, shoal_train_info *info, uint32_t *n_examples,
                        float **global, float **trained, size_t *dim);

#endif
