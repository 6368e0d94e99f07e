/* noise.h - differential-privacy primitives: L2 clipping, exact discrete
 * samplers (Bernoulli(exp(-g)), discrete Laplace, discrete Gaussian), lattice
 * Gaussian noise for central DP and the randomized Hadamard rotation used
 * before integer encoding in distributed DP (DESIGN.md section 5).
 *
 * All randomness comes from an rng (privacy/rng.h) passed in, so a run replays
 * from its seed. The discrete samplers follow Canonne, Kamath and Steinke,
 * "The Discrete Gaussian for Differential Privacy" (2020), Algorithms 1-3:
 * every decision compares uniform integers with integers, no floating point,
 * so the output distribution is exactly the stated one for rational
 * parameters (up to events of probability below exp(-2^22), noted below).
 *
 * Continuous Gaussian noise and Mironov 2012. A textbook float Gaussian
 * sampler (Box-Muller, polar, ziggurat on doubles) produces values whose low
 * bits are irregular: the set of values x + noise can reach, after rounding,
 * depends on x, so one output can rule out a neighbouring input outright and
 * the privacy loss is unbounded. dp_gaussian_noise_add therefore does this:
 *   1. step = 2^(floor(log2 stddev) - DP_GAUSS_LATTICE_BITS), so the lattice
 *      step is at most stddev * 2^-19 and at least stddev * 2^-20;
 *   2. each x[i] is rounded (deterministically, to nearest) onto step*Z;
 *   3. an exact discrete Gaussian N with variance parameter (stddev/step)^2 is
 *      added there: x[i] = round(x[i]/step)*step + N*step. Both terms are
 *      multiples of a power of two, so the sum is exact in double for any
 *      |x[i]| < 2^52 * step, and it is rounded to float32 once.
 * Step 4 is post-processing of the exact lattice value, so it leaks nothing;
 * the set of reachable outputs no longer depends on x beyond its lattice
 * point. What remains, stated honestly:
 *   - step 2 is a change of the query: the L2 sensitivity measured after
 *     rounding is at most Delta + step*sqrt(n), i.e. Delta + stddev *
 *     2^-19 * sqrt(n) (for n = 10^6 coordinates, under 0.2% of stddev); the
 *     accountant should charge that (or callers pre-round themselves);
 *   - (stddev/step)^2 is used rounded to the nearest multiple of 2^-20,
 *     a relative error below 2^-58 of the variance;
 *   - the discrete Gaussian's guarantee is the CKS one (1/2 eps^2-zCDP with
 *     eps = sensitivity/stddev), not the continuous Gaussian's, though at
 *     2^19 lattice points per stddev the two agree to far below any
 *     accountant's precision;
 *   - timing: the samplers are rejection loops, their running time depends
 *     on the sampled values (CKS section 5 discusses this); only run them
 *     where the attacker cannot time individual samples.
 */
#ifndef SHOAL_DP_NOISE_H
#define SHOAL_DP_NOISE_H

#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"
#include "privacy/rng.h"

#define DP_NOISE_WUR __attribute__((warn_unused_result))

/* Discrete Gaussian parameter range: sigma^2 = num/den with
 * 1 <= den <= DP_DG_MAX_DEN and 1 <= num <= den * DP_DG_MAX_SIGMA2. */
#define DP_DG_MAX_DEN (UINT64_C(1) << 20)
#define DP_DG_MAX_SIGMA2 (UINT64_C(1) << 40)
/* Discrete Laplace scale t/s: s >= 1, 1 <= t <= DP_DLAP_MAX_T. */
#define DP_DLAP_MAX_T (UINT64_C(1) << 40)
/* Sampler failure sentinel (never a sample: samples satisfy |y| <= 2^62). */
#define DP_SAMPLE_INVALID INT64_MIN
/* Lattice Gaussian: 2^19 to 2^20 lattice points per standard deviation. */
#define DP_GAUSS_LATTICE_BITS 19
/* Supported stddev for the lattice Gaussian: 0 (no noise) or in
 * [DP_GAUSS_MIN_STDDEV, DP_GAUSS_MAX_STDDEV]. */
#define DP_GAUSS_MIN_STDDEV 0x1p-60
#define DP_GAUSS_MAX_STDDEV 0x1p60
/* Largest dimension the Hadamard rotation accepts (2^40 coordinates). */
#define DP_RHT_MAX_DIM ((size_t)1 << 40)
#define DP_RHT_SEED_BYTES 32

/* L2 norm of x, accumulated in double. NaN if x holds a NaN, +Inf if it holds
 * an Inf and no NaN. 0 for n == 0. */
double dp_l2_norm(const float *x, size_t n);

/* Scales x in place so that dp_l2_norm(x) <= c and returns the norm before
 * clipping. A vector already within c is untouched. After rounding to float
 * the result is re-checked and shrunk again if needed, so the bound holds
 * exactly as dp_l2_norm computes it (the clipped norm is c to within a few
 * float ulps).
 * Errors (x untouched, returns NaN): c not finite or c <= 0; any NaN or Inf
 * in x. */
double dp_clip_l2(float *x, size_t n, double c);

/* 1 with probability exp(-num/den), else 0 (CKS Algorithm 1; num may exceed
 * den). Errors: SHOAL_EINVAL if den == 0. */
int dp_bernoulli_exp(rng *r, uint64_t num, uint64_t den);

/* One sample y with P(y) proportional to exp(-|y| * s/t), i.e. scale t/s
 * (CKS Algorithm 2). Outcomes beyond +-2^62 are redrawn, which conditions on
 * an event of probability below exp(-2^22). Errors: DP_SAMPLE_INVALID if s == 0, t == 0 or
 * t > DP_DLAP_MAX_T. */
int64_t dp_discrete_laplace(rng *r, uint64_t s, uint64_t t);

/* SHOAL_OK if sigma^2 = num/den is in the supported range (see
 * DP_DG_MAX_DEN, DP_DG_MAX_SIGMA2), else SHOAL_EINVAL. */
DP_NOISE_WUR shoal_err dp_discrete_gaussian_check(uint64_t sigma2_num, uint64_t sigma2_den);

/* One sample y with P(y) proportional to exp(-y^2 / (2 sigma^2)),
 * sigma^2 = num/den, exactly (CKS Algorithm 3). Errors: DP_SAMPLE_INVALID
 * when dp_discrete_gaussian_check fails. */
int64_t dp_discrete_gaussian(rng *r, uint64_t sigma2_num, uint64_t sigma2_den);

/* The lattice step dp_gaussian uses for this stddev (a power of two), or
 * NaN if stddev is out of range (0 has no lattice: returns NaN too). */
double dp_gaussian_step(double stddev);

/* One lattice Gaussian sample N*step (see the file comment), exact in double.
 * 0 for stddev == 0. Errors: NaN if stddev is not 0 or in
 * [DP_GAUSS_MIN_STDDEV, DP_GAUSS_MAX_STDDEV]. */
double dp_gaussian(rng *r, double stddev);

/* x[i] = float(round_to_lattice(x[i]) + N_i*step) for independent lattice
 * Gaussians N_i (see the file comment); a sum beyond FLT_MAX becomes +-Inf.
 * stddev == 0 leaves x untouched.
 * Errors (x untouched): SHOAL_EINVAL for stddev out of range or x == NULL
 * with n > 0; SHOAL_ENONFINITE if x holds a NaN or Inf. */
DP_NOISE_WUR shoal_err dp_gaussian_noise_add(rng *r, float *x, size_t n, double stddev);

/* Smallest power of two >= n (1 for n <= 1); 0 if n > DP_RHT_MAX_DIM.
 * The rotation works on that many coordinates: the caller pads the vector
 * with zeros to this length and drops the padding after the inverse. */
size_t dp_rht_dim(size_t n);

/* x <- H D x / sqrt(n) for the n x n Walsh-Hadamard matrix H and the random
 * +-1 diagonal D drawn from ChaCha20 keyed by seed (the round's public
 * rotation seed; Kairouz, Liu, Steinke 2021). Preserves the L2 norm up to
 * float rounding; O(n log n), in place.
 * Errors: SHOAL_EINVAL if n is not a power of two in [1, DP_RHT_MAX_DIM] or
 * x == NULL. */
DP_NOISE_WUR shoal_err dp_rht_forward(float *x, size_t n, const uint8_t seed[DP_RHT_SEED_BYTES]);

/* x <- D H x / sqrt(n): the inverse of dp_rht_forward with the same seed.
 * Errors: as dp_rht_forward. */
DP_NOISE_WUR shoal_err dp_rht_inverse(float *x, size_t n, const uint8_t seed[DP_RHT_SEED_BYTES]);

/* Internal, exported for tests/test_noise.c: a^2 = q*d + rem for 128-bit a
 * and 0 < d < 2^127 (limbs little-endian), q saturated at UINT64_MAX. The
 * discrete Gaussian's acceptance test uses it; its 256-bit branch is only
 * reached beyond ~16 sigma, too rarely for the sampler tests to cover. */
void dp_square_divmod(const uint64_t a[2], const uint64_t d[2], uint64_t *q, uint64_t rem[2]);

#endif
