/* ring.h - packing vectors of Z/2^m (1 <= m <= 32) at exactly m bits per element.
 *
 * Layout (worked example in ring.c): element j occupies bits [j*m, j*m + m)
 * of a little-endian bit stream (bit b is bit b % 8 of byte b / 8), least
 * significant bit first; the last byte's unused high bits are zero. */
#ifndef SHOAL_SA_RING_H
#define SHOAL_SA_RING_H

#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

#ifndef SA_MUST_CHECK
#define SA_MUST_CHECK __attribute__((warn_unused_result))
#endif

/* ceil(n * m / 8), without overflowing n * m. */
size_t sa_pack_size(size_t n, unsigned m);

/* Writes sa_pack_size(n, m) bytes. Bits of v[j] at or above m are ignored. */
void sa_pack(const uint32_t *v, size_t n, unsigned m, uint8_t *out);

/* Reads n elements from exactly sa_pack_size(n, m) bytes; v is untouched on
 * error. Errors: SHOAL_EINVAL (m outside [1, 32]), SHOAL_ETRUNC (len too
 * short), SHOAL_ETOOBIG (len too long), SHOAL_EMALFORMED (a pad bit is set). */
SA_MUST_CHECK shoal_err sa_unpack(const uint8_t *in, size_t len, size_t n, unsigned m, uint32_t *v);

#endif
