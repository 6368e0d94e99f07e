/* state.h - a client's persistent state on disk: its identity key and the
 * error-feedback residual, so a restarted shoal-client keeps its identity
 * and loses nothing it did not send.
 *
 * File DIR/residual, all little-endian:
 *   "SHRS" | u32 format 1 | u32 dim | dim x f32 | u64 FNV-1a of all before
 * Written atomically: DIR/residual.tmp, fsync, rename, fsync DIR.
 *
 * File DIR/identity (mode 0600; PROTOCOL.md section 16), 80 bytes:
 *   "SHID" | u32 format 1 | 32-byte Ed25519 seed | 32-byte public key |
 *   u64 FNV-1a of all before
 * The public key must be the seed's (a second check besides the sum).
 * Created once, never replaced: written to DIR/identity.tmp, fsynced, then
 * linked to DIR/identity, which fails if another process created it first
 * (then its key is used), and DIR is fsynced. */
#ifndef SHOAL_CLIENT_STATE_H
#define SHOAL_CLIENT_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

/* Errors: SHOAL_EIO (with errno's reason logged). */
shoal_err cli_state_save_residual(const char *dir, const float *residual, size_t dim);
/* Errors: SHOAL_EIO (no file: errno ENOENT; unreadable), SHOAL_EFORMAT (bad
 * magic, version or checksum), SHOAL_EDIM (saved for another model),
 * SHOAL_ETRUNC. residual untouched on error. */
shoal_err cli_state_load_residual(const char *dir, float *residual, size_t dim);

/* The client's Ed25519 secret key (64 bytes, libsodium layout) from
 * DIR/identity into sk, which should be sodium_malloc'd; with create, a
 * missing file is made first from a fresh key pair (*created set). A
 * damaged file is never replaced (the key is the client's identity).
 * Errors: SHOAL_EIO (errno's reason logged; no file and not create:
 * errno ENOENT), SHOAL_EFORMAT (bad magic, version, checksum or key; logged),
 * SHOAL_ENOMEM. */
shoal_err cli_state_identity(const char *dir, bool create, uint8_t *sk, bool *created);

#endif
