/* rdp.h - Renyi-DP accounting for the Poisson-subsampled Gaussian mechanism.
 *
 * One step of the mechanism: every record (client) joins the batch
 * independently with probability q, the sum of the (clipped, sensitivity 1)
 * contributions gets N(0, sigma^2) noise per coordinate. Its RDP at order
 * alpha is log(A_alpha) / (alpha - 1) with (Mironov, Talwar, Zhang 2019)
 *   A_alpha = E_{z ~ N(0, sigma^2)} [((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha].
 * RDP composes by addition per order; an (epsilon, delta) bound follows by
 * the conversion of Balle et al. 2020 (Theorem 21), minimised over orders,
 * the same formula Opacus' get_privacy_spent uses.
 *
 * The accountant is what the server keeps: the RDP spent so far per order,
 * with peek to ask what one more round would cost before running it, and a
 * small binary form (format at the top of rdp.c) for checkpoints. */
#ifndef SHOAL_PRIVACY_RDP_H
#define SHOAL_PRIVACY_RDP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

/* Opacus' default orders: 1.1, 1.2, ..., 10.9 (99), then 12, 13, ..., 63 (52). */
#define DP_DEFAULT_ORDERS 151
/* Most orders an accountant (or a saved one) holds. */
#define DP_MAX_ORDERS 4096
/* Largest finite order dp_rdp_sgm evaluates (its series is O(alpha) terms). */
#define DP_ORDER_MAX 65536.0
/* Saved accountant size for n orders (see rdp.c). */
#define DP_SAVE_BYTES(n) (28u + 16u * (size_t)(n))
#define DP_SAVE_VERSION 1u

/* RDP at order alpha of one step with sampling rate q and noise multiplier
 * sigma (noise stddev over L2 sensitivity). q == 0 gives 0, q == 1 gives
 * alpha / (2 sigma^2), alpha == +inf gives +inf when q > 0, sigma == 0
 * gives +inf when q > 0. NaN for arguments outside q in [0, 1], sigma >= 0,
 * alpha in (1, DP_ORDER_MAX] or +inf. Integer orders use the finite binomial
 * sum, other orders the two-sided series of Mironov et al. 2019; both are
 * summed in log space (large alpha or small sigma do not overflow) as
 * A_alpha - 1 (a tiny RDP keeps its digits). Against numerical integration
 * the relative error is below 1e-10 for sigma in [0.3, 100] and q in
 * [1e-4, 0.9], the worst at q = 1/2 with large sigma. */
double dp_rdp_sgm(double q, double sigma, double alpha);

/* Writes Opacus' DP_DEFAULT_ORDERS default orders to out; returns the count. */
size_t dp_default_orders(double out[DP_DEFAULT_ORDERS]);

/* The (epsilon, delta) bound from RDP values rdp[i] at orders[i]:
 *   eps_i = rdp_i - (log(delta) + log(alpha_i)) / (alpha_i - 1) + log((alpha_i - 1) / alpha_i),
 * minimised over i (first minimum wins). An order of +inf contributes its
 * limit rdp_i; NaN terms (NaN rdp, orders <= 1 or NaN) are skipped. If none
 * is left, *eps = +inf and *best_order = NaN. The value is not clamped at 0.
 * best_order may be NULL. Errors: SHOAL_EINVAL (NULL arrays or eps, n == 0,
 * delta outside (0, 1)). */
shoal_err dp_epsilon(const double *orders, const double *rdp, size_t n, double delta,
                     double *eps, double *best_order);

/* The smallest sigma, to 1e-6, with which `steps` steps at rate q stay within
 * (target_eps, delta) at the given orders (NULL: the defaults, n ignored).
 * Bisection on [0, 2^20] (epsilon is non-increasing in sigma) returns the
 * upper end of a final bracket of width <= 1e-6, so eps(*sigma) <=
 * target_eps < eps(*sigma - 1e-6). q == 0 (or steps == 0) needs no noise:
 * *sigma = 0 if the conversion alone meets the target. Errors: SHOAL_EINVAL
 * (arguments out of range, orders invalid as for dp_accountant_init, or
 * target_eps out of reach with sigma <= 2^20). */
shoal_err dp_calibrate_sigma(double q, uint64_t steps, double delta, double target_eps,
                             const double *orders, size_t n, double *sigma);

/* The RDP spent so far, per order: rdp[i] + step_n * step[i]. The per-step
 * vector of the last mechanism is cached and its steps are only counted, so
 * a run of identical rounds costs O(1) each and T steps are one product. */
typedef struct dp_accountant {
	size_t n;
	double delta;
	double *orders; /* n orders, each in (1, DP_ORDER_MAX] or +inf */
	double *rdp;    /* n: RDP spent before the cached mechanism's steps */
	double *step;   /* n: per-step RDP of (step_q, step_sigma) if step_ok */
	uint64_t step_n; /* steps of the cached mechanism not yet in rdp */
	double step_q, step_sigma;
	bool step_ok;
} dp_accountant;

/* Starts at zero RDP. orders == NULL means the default orders (n ignored).
 * Errors: SHOAL_EINVAL (n == 0 or > DP_MAX_ORDERS, an order NaN, <= 1 or
 * > DP_ORDER_MAX and finite, delta outside (0, 1)), SHOAL_ENOMEM. On error
 * *acc is zeroed, so dp_accountant_fini is always safe. */
shoal_err dp_accountant_init(dp_accountant *acc, const double *orders, size_t n, double delta);
void dp_accountant_fini(dp_accountant *acc);

/* Adds `steps` steps of the mechanism (q, sigma). Errors: SHOAL_EINVAL (q
 * outside [0, 1], sigma not finite and > 0); the state is unchanged then. */
shoal_err dp_accountant_add(dp_accountant *acc, double q, double sigma, uint64_t steps);

/* Epsilon spent so far at the accountant's delta (see dp_epsilon);
 * best_order may be NULL. SHOAL_EINVAL for a NULL eps. */
shoal_err dp_accountant_epsilon(const dp_accountant *acc, double *eps, double *best_order);

/* Epsilon if `steps` more steps of (q, sigma) were added; the RDP spent is
 * not changed (only how it is held: the cache switches to (q, sigma)).
 * Errors as dp_accountant_add, SHOAL_EINVAL for a NULL eps_after. */
shoal_err dp_accountant_peek(dp_accountant *acc, double q, double sigma, uint64_t steps,
                             double *eps_after);

/* A per-step RDP vector (one value per order of acc, each >= 0 or +inf)
 * as the cached mechanism, for mechanisms other than the subsampled
 * Gaussian (the distributed discrete Gaussian below); the pending steps of
 * the mechanism cached before are folded in first. Errors: SHOAL_EINVAL
 * (NULL, a NaN or negative value); the state is unchanged then. */
shoal_err dp_accountant_use_rdp(dp_accountant *acc, const double *step);
/* Adds `steps` steps of the cached mechanism; peeks at the epsilon they
 * would bring. SHOAL_EINVAL if no mechanism is cached (or a NULL eps). */
shoal_err dp_accountant_add_cached(dp_accountant *acc, uint64_t steps);
shoal_err dp_accountant_peek_cached(dp_accountant *acc, uint64_t steps, double *eps_after);

/* ---- the distributed discrete Gaussian ----------------------------------
 *
 * Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for
 * Federated Learning with Secure Aggregation" (ICML 2021): n clients each
 * add independent discrete Gaussian noise N_Z(0, sigma2) to every one of
 * dim integer coordinates, and secure aggregation reveals only the sum.
 * If one client's integer vector has L2 norm <= l2 and L1 norm <= l1, the
 * sum has, at order alpha (their Proposition 14, the RDP form of
 * Theorem 1), with s2 = l2 / sqrt(n sigma2), s1 = l1 / sqrt(n sigma2) and
 * tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma2 k / (k+1)),
 *   rdp(alpha) = min( alpha/2 s2^2 + tau dim,
 *                     alpha/2 (s2^2 + 2 s1 tau + tau^2 dim),
 *                     alpha/2 (s2 + sqrt(dim) tau)^2 ).
 * tau accounts for the sum of n discrete Gaussians not being a discrete
 * Gaussian; it underflows to 0 once sigma2 is above ~40. Poisson
 * subsampling at rate q < 1 uses the general upper bound of Zhu and Wang
 * ("Poisson Subsampled Renyi Differential Privacy", ICML 2019), valid for
 * any mechanism given its RDP at integer orders 2..alpha:
 *   exp((alpha-1) rdp_q(alpha)) <= (1-q)^(alpha-1) (1 + (alpha-1) q)
 *     + C(alpha,2) q^2 (1-q)^(alpha-2) e^{rdp(2)}
 *     + 3 sum_{l=3}^{alpha} C(alpha,l) q^l (1-q)^(alpha-l) e^{(l-1) rdp(l)},
 * and the smaller of that and rdp(alpha). This is the accounting of the
 * paper's reference code (google-research/federated, distributed_dp,
 * accounting_utils: compute_rdp_dgaussian with the subsampled bound), at
 * its orders 2..128 and 256: DP_DDG_SUB_GENERAL, a proof for any noise.
 * Its factor 3 makes it loose where the noise is large: at q = 0.1 and
 * 100 rounds, epsilon 1 needs a noise multiplier of 16 against 4.3 for
 * the subsampled Gaussian (epsilon 8: 1.11 against 0.99).
 *
 * DP_DDG_SUB_BINOMIAL drops the factor 3 (all weights 1). For the
 * direction "client added" (the mixture against the sum without the
 * client) that sum is the exact binomial expansion of
 * E[((1-q) + q p1/p0)^alpha] for integer alpha, so it is a proof there;
 * for the direction "client removed" it assumes what Mironov, Talwar and
 * Zhang (2019) prove only for Gaussian noise, that this direction is
 * dominated. With tau = 0 it equals the subsampled Gaussian's RDP at the
 * effective noise multiplier z = sqrt(n sigma2) / l2, i.e. the sum's
 * noise accounted as the Gaussian N(0, (z l2)^2) of central DP. */
enum { DP_DDG_SUB_GENERAL = 0, DP_DDG_SUB_BINOMIAL = 1 };

typedef struct dp_ddg {
	double sigma2; /* per-client noise variance, integer units, >= 1/4 */
	uint32_t n;    /* clients whose noise is (at least) in the sum, >= 1 */
	double dim;    /* integer coordinates, >= 1 */
	double l2, l1; /* sensitivity of the sum: one client's L2 and L1 norm */
	int sub;       /* DP_DDG_SUB_GENERAL or DP_DDG_SUB_BINOMIAL */
} dp_ddg;

/* Orders of the distributed accountant: 2, 3, ..., 128 and 256. */
#define DP_DDG_ORDERS 128
size_t dp_ddg_orders(double out[DP_DDG_ORDERS]);

/* tau of the file comment (0 when every term underflows). */
double dp_ddg_tau(double sigma2, uint32_t n);

/* RDP at integer order alpha >= 2 of one round sampled at rate q in
 * [0, 1] (q == 1: no sampling, any alpha > 1). NaN for arguments out of
 * range (including a fractional alpha with q < 1). */
double dp_rdp_ddg(const dp_ddg *m, double q, double alpha);

/* Epsilon at delta after `steps` rounds (the distributed orders); the
 * best order in *best_order (may be NULL). SHOAL_EINVAL for bad
 * arguments. */
shoal_err dp_ddg_epsilon(const dp_ddg *m, double q, uint64_t steps, double delta, double *eps,
                         double *best_order);

/* The smallest z, to 1e-6, such that sigma2 = (z l2)^2 / n keeps `steps`
 * rounds within (target_eps, delta); m->sigma2 is ignored. Bisection on
 * [0, 2^20] like dp_calibrate_sigma. SHOAL_EINVAL if out of reach. */
shoal_err dp_ddg_calibrate(const dp_ddg *m, double q, uint64_t steps, double delta,
                           double target_eps, double *z);

/* Serializes to out[0, DP_SAVE_BYTES(n)); returns the bytes written or
 * SHOAL_ETOOBIG when cap is smaller. */
int dp_accountant_save(const dp_accountant *acc, uint8_t *out, size_t cap);

/* Initializes *acc from a saved accountant at in[0, len); returns the bytes
 * consumed (trailing bytes are the caller's). Each field is checked as it
 * is reached: SHOAL_ETRUNC (input ends inside a field), SHOAL_EFORMAT (bad
 * magic, n == 0), SHOAL_EVERSION (version != 1), SHOAL_ETOOBIG (n >
 * DP_MAX_ORDERS); then over the whole: SHOAL_EMALFORMED (checksum
 * mismatch), SHOAL_ENONFINITE (a NaN delta, order or RDP), SHOAL_EINVAL (an
 * order or delta out of range, a negative RDP), SHOAL_ENOMEM. On error
 * *acc is zeroed (dp_accountant_fini is safe). */
int dp_accountant_load(dp_accountant *acc, const uint8_t *in, size_t len);

#endif
