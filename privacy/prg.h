/* prg.h - the mask PRG of secure aggregation: seed -> one mask per coordinate in Z/2^m.
 *
 * Specification (every implementation must produce these exact values):
 *   keystream  ChaCha20 of RFC 8439 (IETF: 32-bit block counter, 96-bit
 *              nonce) with key = the 32-byte seed, nonce = 12 zero bytes,
 *              block counter starting at 0. Keystream byte i is byte i % 64
 *              of block i / 64.
 *   masks      for ring width m (1 <= m <= 32) let B = ceil(m / 8). The mask
 *              of element j is the little-endian integer formed by keystream
 *              bytes [B*j, B*j + B), reduced mod 2^m (its top 8B - m bits
 *              dropped).
 *   e.g. a keystream beginning 10 f1 e7 e4 d1 3b gives
 *        m = 13, B = 2: mask(0) = 0xf110 mod 2^13 = 0x1110,
 *                       mask(1) = 0xe4e7 mod 2^13 = 0x04e7;
 *        m = 24, B = 3: mask(0) = 0xe7f110, mask(1) = 0x3bd1e4.
 *
 * Any element range can be expanded on its own (the block counter is set
 * explicitly), so the server can split d coordinates across threads. The
 * 32-bit counter bounds the stream at 2^38 bytes: start + n <= 2^38 / B.
 * A seed must never be reused for two different masks. Both functions are
 * thread-safe; threads may work on disjoint ranges of one vector. */
#ifndef SHOAL_SA_PRG_H
#define SHOAL_SA_PRG_H

#include <stddef.h>
#include <stdint.h>

#define SA_SEED_BYTES 32

/* v[j] = (v[j] + sign * mask(start + j)) mod 2^m for j in [0, n); sign is +1
 * or -1 (anything negative counts as -1); results are < 2^m. */
void sa_prg_add(const uint8_t seed[SA_SEED_BYTES], unsigned m, uint32_t *v, size_t start, size_t n, int sign);

/* out[j] = mask(start + j) for j in [0, n). */
void sa_prg_masks(const uint8_t seed[SA_SEED_BYTES], unsigned m, uint32_t *out, size_t start, size_t n);

#endif
