/* store.h - where the simulator keeps the error-feedback residuals of
 * clients that are not in a round, so that a large population does not
 * hold one model-sized vector per client in memory.
 *
 * A store holds up to n_clients vectors of dim floats, exactly (no
 * quantization: a run is bit-identical whether or not its residuals went
 * through the store). A client gets a slot the first time it puts one.
 * Below a memory limit the slots are in memory; above it they are in an
 * unlinked temporary file (in $TMPDIR, else /tmp) read and written with
 * pread/pwrite, so they take disk and page cache, not resident memory.
 * One thread at a time. */
#ifndef SHOAL_SIM_STORE_H
#define SHOAL_SIM_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

typedef struct sim_store sim_store;

/* mem_limit: bytes of residuals to keep in memory before moving them all
 * to a file (0: always a file). Errors: SHOAL_EINVAL, SHOAL_ENOMEM. */
shoal_err sim_store_new(uint32_t n_clients, uint32_t dim, uint64_t mem_limit, sim_store **out);
void sim_store_free(sim_store *s);

/* Stores client i's residual (dim floats). Errors: SHOAL_EINVAL (i out of
 * range), SHOAL_ENOMEM, SHOAL_EIO (the file could not be written, e.g. the
 * disk is full: the message logged says where). */
shoal_err sim_store_put(sim_store *s, uint32_t i, const float *v);
/* Copies client i's residual into v and sets *found, or clears *found if
 * it has none. Errors: SHOAL_EINVAL (i out of range), SHOAL_EIO (the file
 * could not be read back, logged). */
shoal_err sim_store_get(sim_store *s, uint32_t i, float *v, bool *found);

/* Slots in use, and whether they live in a file. */
uint32_t sim_store_count(const sim_store *s);
bool sim_store_on_disk(const sim_store *s);

#endif
