/* ddg.h - the distributed discrete Gaussian mechanism on secure
 * aggregation's ring (Kairouz, Liu, Steinke, "The Distributed Discrete
 * Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML
 * 2021, Algorithms 1 and 2): what a client does to its update before
 * masking, and what the server does to the unmasked sum. PROTOCOL.md
 * sections 13.7 and 14.2 give the wire side; the accounting is dp_rdp_ddg
 * in privacy/rdp.h.
 *
 * Client, for its n_idx values v on the round's shared index set, already
 * clipped to L2 norm <= C by the caller:
 *   1. pad v with zeros to dim = dp_rht_dim(n_idx) coordinates and rotate
 *      it, v <- H D v / sqrt(dim) (dp_rht_forward), with the public
 *      per-round seed of dp_ddg_rotation_seed: the rotation spreads the
 *      vector's mass evenly over the coordinates, so each rotated value is
 *      about C / sqrt(dim) and a small ring holds the sum;
 *   2. scale, y = v / gamma, and round every coordinate stochastically to
 *      floor(y) or floor(y) + 1 (probability: the fractional part), and
 *      start over while the rounded vector's squared L2 norm exceeds
 *      l2max2 (conditional randomized rounding, their Section 4.1): the
 *      integer vector's L2 norm is then at most sqrt(l2max2) whatever the
 *      rounding drew, which is the sensitivity the accountant uses;
 *   3. add independent discrete Gaussian noise N_Z(0, sigma_c^2) to every
 *      coordinate (dp_discrete_gaussian: exact, CKS 2020), sigma_c^2 the
 *      rational s2_num / s2_den;
 *   4. reduce modulo 2^m (two's complement) into the masked vector.
 * Server: read the unmasked sum as signed integers, multiply by gamma,
 * rotate back (dp_rht_inverse) and keep the first n_idx coordinates.
 *
 * Ring width: the sum of n clients' values cannot wrap when every
 * coordinate's absolute value stays below 2^(m-1). dp_ddg_sum_bound takes
 *   B(n) = n (K c / sqrt(dim) + 1) + K sqrt(n) sigma_c,   c = C / gamma,
 * with K = DP_DDG_TAIL = 10 standard deviations: a rotated coordinate is a
 * Rademacher sum of variance ||v||^2 / dim <= c^2 / dim, so by Hoeffding
 * it exceeds K c / sqrt(dim) with probability at most 2 exp(-K^2 / 2) =
 * 4e-22 (the n clients share the rotation, so the signal of the sum is
 * the rotation of a vector of norm <= n c); rounding adds at most 1 per
 * client; the sum of n discrete Gaussians is sub-Gaussian with variance
 * proxy n sigma_c^2 (CKS 2020), beyond K of its deviations with
 * probability at most 2 exp(-K^2 / 2). Over dim coordinates and n clients
 * a round wraps with probability at most dim (2n + 2) 2 e^-50, e.g. 3e-11
 * for dim = 2^20 and n = 2^16. A wrapped coordinate decodes 2^m off
 * (Kairouz et al. call it modular clipping): that damages the model, not
 * privacy, since the server sees a function of the noised sum either way. */
#ifndef SHOAL_PRIVACY_DDG_H
#define SHOAL_PRIVACY_DDG_H

#include <stddef.h>
#include <stdint.h>

#include "privacy/rng.h"
#include "shoal/err.h"

#define DP_DDG_SEED_BYTES 32
/* Standard deviations of the ring-width bound. */
#define DP_DDG_TAIL 10.0
/* beta of the conditional rounding: a try is rejected with probability at
 * most beta, so the expected number of tries is below 1 / (1 - beta) =
 * 2.5 (in practice 1: the bound has slack). exp(-1/2), as in the paper's
 * experiments. */
#define DP_DDG_BETA 0.60653065971263342360
/* Tries of the conditional rounding before giving up (probability below
 * beta^1000 = 1e-217). */
#define DP_DDG_MAX_TRIES 1000
/* Largest |value / gamma| a client encodes (keeps squares in 64 bits). */
#define DP_DDG_MAX_SCALED 0x1p30

/* What the TASK of a distributed-DP round tells a client. */
typedef struct dp_ddg_enc {
	uint32_t n_idx;    /* values per client: the shared index set */
	uint32_t dim;      /* dp_rht_dim(n_idx): rotated, padded coordinates */
	double clip;       /* C: L2 bound of the n_idx values */
	double gamma;      /* one integer step, in the update's units */
	uint64_t l2max2;   /* bound on the rounded vector's squared L2 norm */
	uint64_t s2_num;   /* per-client noise variance s2_num / s2_den */
	uint32_t s2_den;
} dp_ddg_enc;

/* floor of the conditional rounding bound for a real vector of L2 norm
 * <= c in dim coordinates (Kairouz et al., Theorem 1 with DP_DDG_BETA):
 *   min(c^2 + dim/4 + sqrt(2 ln(1/beta)) (c + sqrt(dim)/2), (c + sqrt(dim))^2),
 * with c raised by 2^-20 for the float rounding of the rotation. */
uint64_t dp_ddg_l2max2(double c, uint32_t dim);

/* SHOAL_OK if p is usable: dim = dp_rht_dim(n_idx), clip and gamma finite
 * and > 0, clip / gamma <= DP_DDG_MAX_SCALED, l2max2 >= 1, the variance
 * in the range of dp_discrete_gaussian_check. Else SHOAL_EINVAL. */
shoal_err dp_ddg_check(const dp_ddg_enc *p);

/* B(n) of the file comment. */
double dp_ddg_sum_bound(const dp_ddg_enc *p, uint32_t n);

/* The smallest m in 2..32 with B(n) < 2^(m-1) and n < 2^(m-1) (the weight
 * element). SHOAL_EINVAL if none. */
shoal_err dp_ddg_ring_bits(const dp_ddg_enc *p, uint32_t n, uint32_t *m);

/* The rotation seed of a round: BLAKE2b-256 keyed with the 32-byte session
 * id over "shoal-dp-rht" || session (public, like the session). */
void dp_ddg_rotation_seed(const uint8_t session[32], uint8_t seed[DP_DDG_SEED_BYTES]);

/* Client steps 1-4: v[0..n_idx) (L2 <= clip, the caller clips) into
 * x[0..dim) in Z/2^m. r: the noise stream (secret); scratch: dim floats,
 * wiped before return. Errors: SHOAL_EINVAL (p, m or the arguments; a
 * value beyond DP_DDG_MAX_SCALED steps), SHOAL_ENONFINITE (NaN/Inf in v),
 * SHOAL_ETIMEDOUT (DP_DDG_MAX_TRIES roundings all too long: v was not
 * clipped). x is unspecified on error. */
shoal_err dp_ddg_encode(const dp_ddg_enc *p, const float *v,
                        const uint8_t seed[DP_DDG_SEED_BYTES], uint32_t m, rng *r,
                        float *scratch, uint32_t *x);

/* Server: out[0..n_idx) = gamma times the inverse rotation of the signed
 * sum[0..dim) (in Z/2^m). scratch: dim floats. SHOAL_EINVAL for bad
 * arguments. */
shoal_err dp_ddg_decode(const dp_ddg_enc *p, const uint32_t *sum, uint32_t m,
                        const uint8_t seed[DP_DDG_SEED_BYTES], float *scratch, double *out);

#endif
