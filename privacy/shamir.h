/* shamir.h - Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p = 2^61 - 1.
 *
 * Field. p = 2^61 - 1 is a Mersenne prime: a product of two elements fits in
 * 128 bits and reduces with one shift, one mask and one add (2^61 = 1 mod p),
 * so no division and no Montgomery form. Every uint32 x is a valid, distinct
 * nonzero evaluation point, so any number of holders up to 2^32 - 1 (the
 * holder's id, x >= 1) can take part.
 *
 * Secret to field elements. The 32 secret bytes are cut into five limbs,
 * each read little-endian: bytes [0,7) [7,14) [14,21) [21,28) give four
 * 56-bit limbs and bytes [28,32) a 32-bit limb. Every limb is < 2^56 < p and
 * is shared with its own random polynomial of degree t - 1 (constant term =
 * the limb). Reconstructing a limb that is not below its bound (2^56, or
 * 2^32 for the last) proves the shares were inconsistent.
 *
 * Wire form of a share: its five y values, each a uint64 little-endian
 * (SA_SHARE_BYTES = 40 bytes). The x coordinate is not on the wire; the
 * protocol knows which holder a share belongs to.
 *
 *   e.g. y = {1, 2, 3, 4, 0x1fffffffffffffff - 1}
 *     01 00 00 00 00 00 00 00  02 00 .. 00  03 00 .. 00  04 00 .. 00
 *     fe ff ff ff ff ff ff 1f
 */
#ifndef SHOAL_SA_SHAMIR_H
#define SHOAL_SA_SHAMIR_H

#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"
#include "privacy/rng.h"

#ifndef SA_MUST_CHECK
#define SA_MUST_CHECK __attribute__((warn_unused_result))
#endif

#define SA_P ((UINT64_C(1) << 61) - 1) /* the field modulus */
#define SA_SECRET_BYTES 32
#define SA_SHARE_LIMBS 5   /* 32 bytes as little-endian 7-byte chunks: 4x7 + 1x4 bytes, each < 2^56 < p */
#define SA_SHARE_BYTES (8 * SA_SHARE_LIMBS) /* wire form of one share's y values: 5 x uint64 LE */

typedef struct sa_share {
	uint32_t x;                   /* evaluation point, nonzero */
	uint64_t y[SA_SHARE_LIMBS];   /* one y per limb, each < p */
} sa_share;

/* Splits secret into n shares at x = xs[i] (distinct, nonzero), any t of
 * which reconstruct it; 1 <= t <= n. out[i] is the share at xs[i].
 * Coefficients come from r, or from libsodium's randombytes_buf when
 * r == NULL; they live in sodium_malloc'd memory and are wiped.
 * Errors: SHOAL_EINVAL (t, n, duplicate or zero x), SHOAL_ENOMEM. */
SA_MUST_CHECK shoal_err sa_shamir_split(const uint8_t secret[SA_SECRET_BYTES], uint32_t t, uint32_t n,
                                        const uint32_t *xs, rng *r, sa_share *out);

/* Lagrange coefficients at 0 for one set of t holders: computed once, reused
 * for every secret shared among the same holders. Not secret. */
typedef struct sa_lagrange {
	uint32_t t;
	uint32_t *x;      /* [t] holders */
	uint64_t *lambda; /* [t] lambda[i] = prod_{j != i} x[j] / (x[j] - x[i]) mod p */
} sa_lagrange;

/* Errors: SHOAL_EINVAL (t == 0, duplicate or zero x), SHOAL_ENOMEM. On error
 * *L is left zeroed, so sa_lagrange_fini is always safe. O(t^2). */
SA_MUST_CHECK shoal_err sa_lagrange_init(sa_lagrange *L, const uint32_t *xs, uint32_t t);
void sa_lagrange_fini(sa_lagrange *L);

/* ys[i] are the y limbs of the share held at L->x[i]. Errors:
 * SHOAL_EMALFORMED if a reconstructed limb is out of range (>= 2^56, or
 * >= 2^32 for the last limb): the shares are inconsistent; secret is then
 * zeroed. A wrong share passes unnoticed with probability about 2^-5 per
 * changed 56-bit limb, so this is a consistency check, not an authenticator. */
SA_MUST_CHECK shoal_err sa_shamir_combine(const sa_lagrange *L, const uint64_t (*ys)[SA_SHARE_LIMBS],
                                          uint8_t secret[SA_SECRET_BYTES]);

/* y limbs only, little-endian. */
void sa_share_write(const sa_share *s, uint8_t out[SA_SHARE_BYTES]);
/* Errors: SHOAL_EMALFORMED if a limb >= p (*s untouched). */
SA_MUST_CHECK shoal_err sa_share_read(sa_share *s, uint32_t x, const uint8_t in[SA_SHARE_BYTES]);

/* GF(p) arithmetic, exposed for tests. Inputs < p; outputs < p.
 * sa_gf_inv(0) returns 0. */
uint64_t sa_gf_add(uint64_t a, uint64_t b);
uint64_t sa_gf_sub(uint64_t a, uint64_t b);
uint64_t sa_gf_mul(uint64_t a, uint64_t b);
uint64_t sa_gf_inv(uint64_t a);

#endif
