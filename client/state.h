/* state.h - a client's persistent state on disk: for now the error-feedback
 * residual, so a restarted shoal-client loses nothing it did not send.
 *
 * File DIR/residual, all little-endian:
 *   "SHRS" | u32 format 1 | u32 dim | dim x f32 | u64 FNV-1a of all before
 * Written atomically: DIR/residual.tmp, fsync, rename, fsync DIR. */
#ifndef SHOAL_CLIENT_STATE_H
#define SHOAL_CLIENT_STATE_H

#include <stddef.h>

#include "shoal/err.h"

/* Errors: SHOAL_EIO (with errno's reason logged). */
shoal_err cli_state_save_residual(const char *dir, const float *residual, size_t dim);
/* Errors: SHOAL_EIO (no file: errno ENOENT; unreadable), SHOAL_EFORMAT (bad
 * magic, version or checksum), SHOAL_EDIM (saved for another model),
 * SHOAL_ETRUNC. residual untouched on error. */
shoal_err cli_state_load_residual(const char *dir, float *residual, size_t dim);

#endif
