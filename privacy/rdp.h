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
