/* rdp.c - Renyi-DP of the Poisson-subsampled Gaussian mechanism, the
 * (epsilon, delta) conversion, sigma calibration and the server's accountant
 * (see rdp.h).
 *
 * Saved accountant, version 1, all integers and doubles little-endian
 * (doubles as their IEEE 754 binary64 bit pattern):
 *
 *   offset     size  field
 *   0          4     magic "SHDA"
 *   4          4     u32 version = 1
 *   8          8     f64 delta, in (0, 1)
 *   16         4     u32 n, the number of orders, 1..DP_MAX_ORDERS
 *   20         8n    f64 orders[n], each in (1, DP_ORDER_MAX] or +inf
 *   20 + 8n    8n    f64 rdp[n], the RDP spent at each order, >= 0 (+inf allowed)
 *   20 + 16n   8     u64 FNV-1a 64 of bytes [0, 20 + 16n)
 *
 * so DP_SAVE_BYTES(n) = 28 + 16n. Example (60 bytes): orders {2, 32},
 * delta 1e-5, after 100 steps of q = 0.01, sigma = 2 (rdp 0.00284021...,
 * 0.0502894...; epsilon 0.278 at order 32):
 *
 *   53484441 01000000 f168e388b5f8e43e 02000000    "SHDA", 1, 1e-5, n = 2
 *   0000000000000040 0000000000004040              orders 2.0, 32.0
 *   e0ccc3305c44673f 8f63526c8abfa93f              rdp
 *   c9c104855dabc46d                               FNV-1a 64
 */
#include "privacy/rdp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOG_HALF (-0.69314718055994530942)
#define LOG_PI 1.14472988584940017414

/* The fractional-order series stops once a term is below e^-SERIES_STOP
 * times the sum so far, or its accelerated tail has converged, or after
 * SERIES_MAX_TERMS terms. */
#define SERIES_STOP 36.0
#define SERIES_SKIP 60.0
#define SERIES_MAX_TERMS 100000

#define CALIBRATE_TOL 1e-6
#define CALIBRATE_SIGMA_MAX 1048576.0

/* log(erfc(x)); erfc underflows near x = 26.5, so past 25 the asymptotic
 * series erfc(x) = e^{-x^2} / (x sqrt(pi)) * sum_k (-1)^k (2k-1)!! / (2x^2)^k,
 * whose seventh term is below 1e-17 there. */
static double
log_erfc(double x)
{
	double r, t = 1.0, s = 1.0;

	if (x < 25.0)
		return log(erfc(x));
	r = 1.0 / (2.0 * x * x);
	for (int k = 1; k <= 7; k++) {
		t *= -(2.0 * k - 1.0) * r;
		s += t;
	}
	return -x * x - log(x) - 0.5 * LOG_PI + log(s);
}

/* log|e^x - 1|. */
static double
log_expm1(double x)
{
	if (x > 30.0)
		return x + log1p(-exp(-x));
	if (x < -30.0)
		return log1p(-exp(x));
	return log(fabs(expm1(x)));
}

/* A signed sum of terms given as log magnitudes, kept as e^m * s so that
 * no term overflows. */
typedef struct lsum {
	double m, s;
} lsum;

static void
lsum_add(lsum *a, double log_mag, double sign)
{
	if (log_mag == -INFINITY)
		return;
	if (log_mag > a->m) {
		a->s = a->s * exp(a->m - log_mag) + sign;
		a->m = log_mag;
	} else {
		a->s += sign * exp(log_mag - a->m);
	}
}

/* log(A_alpha) for an integer alpha >= 2. The binomial weights sum to one,
 * so A - 1 = sum_{i>=2} C(a,i) q^i (1-q)^(a-i) (e^{(i^2-i)/(2 sigma^2)} - 1),
 * a sum of positive terms: log(A) stays accurate when it is tiny (large
 * sigma, small q), where summing A itself would round it away. */
static double
log_a_int(double q, double sigma, double alpha)
{
	const long a = (long)alpha;
	const double lq = log(q), l1q = log1p(-q), inv2s2 = 0.5 / (sigma * sigma);
	double lc = 0.0; /* log C(a, i) */
	lsum sum = {-INFINITY, 0.0};
	double l;

	for (long i = 1; i <= a; i++) {
		double di = (double)i;

		lc += log((double)(a - i + 1) / di);
		if (i < 2)
			continue;
		lsum_add(&sum,
		         lc + di * lq + (double)(a - i) * l1q + log_expm1((di * di - di) * inv2s2),
		         1.0);
	}
	l = sum.m + log(sum.s); /* log(A - 1) */
	return l > 0.0 ? l + log1p(exp(-l)) : log1p(exp(l));
}

/* log(0.5 erfc(u)) = log P(N(0,1) > u sqrt(2)), accurate also where it is
 * near 0 (u < 0: log1p of the small complement). */
static double
log_half_erfc(double u)
{
	return u < -1.0 ? log1p(-0.5 * erfc(-u)) : LOG_HALF + log_erfc(u);
}

/* A signed series summed term by term whose tail alternates: besides the
 * plain partial sum it keeps the last SERIES_AVG + 1 partial sums (in the
 * lsum's scale, a ring from `head`) for the iterated-averaging (Euler)
 * estimate of the limit. */
#define SERIES_AVG 8

typedef struct series {
	lsum sum;
	double win[SERIES_AVG + 1];
	int filled, head;
} series;

static void
series_add(series *sr, double log_mag, double sign)
{
	double m = sr->sum.m;

	if (log_mag < m - SERIES_SKIP)
		return;
	lsum_add(&sr->sum, log_mag, sign);
	if (sr->sum.m != m)
		for (int k = 0; k < sr->filled; k++)
			sr->win[k] *= exp(m - sr->sum.m);
}

/* Records the partial sum after one more alternating term. */
static void
series_mark(series *sr)
{
	if (sr->filled < SERIES_AVG + 1) {
		sr->win[sr->filled++] = sr->sum.s;
	} else {
		sr->win[sr->head] = sr->sum.s;
		sr->head = (sr->head + 1) % (SERIES_AVG + 1);
	}
}

/* Averaging adjacent partial sums SERIES_AVG times over is the binomial
 * mean sum_k C(SERIES_AVG, k) S_{n-SERIES_AVG+k} / 2^SERIES_AVG. */
static double
series_euler(const series *sr)
{
	static const double w[SERIES_AVG + 1] = {1, 8, 28, 56, 70, 56, 28, 8, 1};
	double e = 0.0;

	for (int k = 0; k <= SERIES_AVG; k++)
		e += w[k] * sr->win[(sr->head + k) % (SERIES_AVG + 1)];
	return e / 256.0;
}

/* log(A_alpha) for a non-integer alpha > 1 (Mironov, Talwar, Zhang 2019,
 * section 3.3). Split the expectation at z0, where (1-q) N(0,s^2) and
 * q N(1,s^2) have equal density, and expand ((1-q) + q r)^alpha binomially
 * in q r / (1-q) below z0 and in (1-q) / (q r) above; each term is then a
 * Gaussian tail, so A = sum_i C(alpha, i) (a_i + b_i) with j = alpha - i,
 *   a_i = (1-q)^j q^i e^{(i^2-i)/2s^2} P(N(i,s^2) <= z0),
 *   b_i = q^j (1-q)^i e^{(j^2-j)/2s^2} P(N(j,s^2) > z0).
 * A - 1 is what matters (it can be ~1e-15), so 1 is subtracted term by
 * term: for q <= 1/2, sum_i C(alpha, i) (1-q)^j q^i = 1 (the binomial
 * series), and a_i - (1-q)^j q^i = (1-q)^j q^i expm1((i^2-i)/2s^2 + log P),
 * with no cancellation against 1; for q > 1/2 the same with b_i.
 *
 * Past i = alpha the coefficients alternate in sign. The sum stops when a
 * term is below e^-SERIES_STOP of the sum, or, as the tail decays only
 * polynomially when sigma log(1/q - 1) is small, when the iterated-average
 * (Euler) estimate of the alternating tail has converged. */
static double
log_a_frac(double q, double sigma, double alpha)
{
	const double lq = log(q), l1q = log1p(-q), s2 = sigma * sigma, inv2s2 = 0.5 / s2;
	const double z0 = s2 * (l1q - lq) + 0.5, c = 1.0 / (sqrt(2.0) * sigma);
	const bool low = q <= 0.5; /* subtract 1 from the a_i (else the b_i) */
	double lc = 0.0, sign = 1.0;  /* log|C(alpha, i)| and its sign */
	double prev = NAN, l;
	int calm = 0;
	series sr = {{-INFINITY, 0.0}, {0}, 0, 0};

	for (long i = 0;; i++) {
		const double di = (double)i, j = alpha - di;
		const double e0 = (di * di - di) * inv2s2, e1 = (j * j - j) * inv2s2;
		const double lw0 = lc + j * l1q + di * lq, lw1 = lc + j * lq + di * l1q;
		const double u0 = (di - z0) * c, u1 = (z0 - j) * c; /* P = erfc(u) / 2 */
		/* Log magnitudes of the tail kept as is (lo) and of the one 1 is
		 * taken from (ls, |e^x - 1| with x = e + log P); as P <= 1, lw + e
		 * bounds both, and a term below SERIES_SKIP of the largest is not
		 * evaluated. */
		const double floor = sr.sum.m - SERIES_SKIP;
		double lo = -INFINITY, ls = -INFINITY, lsb = -INFINITY, xs = 0.0, est;

		if ((low ? lw1 + e1 : lw0 + e0) >= floor)
			lo = low ? lw1 + e1 + log_half_erfc(u1) : lw0 + e0 + log_half_erfc(u0);
		if ((low ? lw0 + e0 : lw1 + fmax(e1, 0.0)) >= floor) {
			xs = low ? e0 + log_half_erfc(u0) : e1 + log_half_erfc(u1);
			ls = (low ? lw0 : lw1) + log_expm1(xs);
			lsb = (low ? lw0 : lw1) + fmax(xs, 0.0);
		}
		/* Past alpha, e^lo, C w e^x and C w (w = e^lw) all shrink as i
		 * grows, and |term| <= e^lo + C w max(e^x, 1): once that is
		 * negligible, so is the rest (|e^x - 1| itself can dip to 0 and
		 * rise again, so it is not the test). */
		if (di > alpha + 1.0 &&
		    exp(fmax(lo, lsb) - sr.sum.m + SERIES_STOP - LOG_HALF) < fabs(sr.sum.s))
			break;
		series_add(&sr, lo, sign);
		series_add(&sr, ls, xs < 0.0 ? -sign : sign);
		if (di > alpha) {
			series_mark(&sr);
			if (sr.filled == SERIES_AVG + 1) {
				est = series_euler(&sr);
				calm = fabs(est - prev) <= 0x1p-50 * fabs(est) ? calm + 1 : 0;
				prev = est;
				if (calm == 2 || i >= SERIES_MAX_TERMS) {
					sr.sum.s = est;
					break;
				}
			}
		}
		lc += log(fabs(j / (di + 1.0)));
		if (j < 0.0)
			sign = -sign;
	}
	if (sr.sum.s == 0.0) /* every term underflowed: A - 1 is 0 in doubles */
		return 0.0;
	if (!(sr.sum.s > 0.0))
		return NAN;
	l = sr.sum.m + log(sr.sum.s); /* log(A - 1) */
	return l > 0.0 ? l + log1p(exp(-l)) : log1p(exp(l));
}

double
dp_rdp_sgm(double q, double sigma, double alpha)
{
	if (!(q >= 0.0 && q <= 1.0) || !(sigma >= 0.0) || !(alpha > 1.0) ||
	    (alpha > DP_ORDER_MAX && alpha != INFINITY))
		return NAN;
	if (q == 0.0 || sigma == INFINITY)
		return 0.0;
	if (sigma == 0.0 || alpha == INFINITY)
		return INFINITY;
	if (q == 1.0)
		return alpha / (2.0 * sigma * sigma);
	if (!(0.5 / (sigma * sigma) < INFINITY))
		return INFINITY;
	if (alpha == floor(alpha))
		return log_a_int(q, sigma, alpha) / (alpha - 1.0);
	return log_a_frac(q, sigma, alpha) / (alpha - 1.0);
}

size_t
dp_default_orders(double out[DP_DEFAULT_ORDERS])
{
	size_t k = 0;

	for (int x = 1; x <= 99; x++)
		out[k++] = 1.0 + x / 10.0;
	for (int a = 12; a <= 63; a++)
		out[k++] = a;
	return k;
}

/* One order's epsilon; NaN when the order cannot be used. */
static double
order_epsilon(double alpha, double rdp, double log_delta)
{
	if (!(alpha > 1.0) || isnan(rdp))
		return NAN;
	if (alpha == INFINITY)
		return rdp;
	return rdp - (log_delta + log(alpha)) / (alpha - 1.0) + log((alpha - 1.0) / alpha);
}

/* The running minimum over orders of the per-order epsilon. */
typedef struct eps_min {
	double eps, order;
	bool found;
} eps_min;

#define EPS_MIN_INIT {INFINITY, NAN, false}

static void
eps_min_add(eps_min *m, double alpha, double rdp, double log_delta)
{
	double e = order_epsilon(alpha, rdp, log_delta);

	if (!isnan(e) && (!m->found || e < m->eps)) {
		m->eps = e;
		m->order = alpha;
		m->found = true;
	}
}

shoal_err
dp_epsilon(const double *orders, const double *rdp, size_t n, double delta, double *eps,
           double *best_order)
{
	eps_min m = EPS_MIN_INIT;
	double ld;

	if (orders == NULL || rdp == NULL || eps == NULL || n == 0 || !(delta > 0.0 && delta < 1.0))
		return SHOAL_EINVAL;
	ld = log(delta);
	for (size_t i = 0; i < n; i++)
		eps_min_add(&m, orders[i], rdp[i], ld);
	*eps = m.eps;
	if (best_order != NULL)
		*best_order = m.order;
	return SHOAL_OK;
}

static bool
order_ok(double a)
{
	return a > 1.0 && (a <= DP_ORDER_MAX || a == INFINITY);
}

static bool
orders_ok(const double *orders, size_t n)
{
	if (n == 0 || n > DP_MAX_ORDERS)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!order_ok(orders[i]))
			return false;
	return true;
}

/* Epsilon after `steps` steps of (q, sigma), without storing the RDP. */
static double
epsilon_at(double q, double sigma, uint64_t steps, double log_delta, const double *orders,
           size_t n)
{
	eps_min m = EPS_MIN_INIT;

	for (size_t i = 0; i < n; i++)
		eps_min_add(&m, orders[i],
		            steps == 0 ? 0.0 : (double)steps * dp_rdp_sgm(q, sigma, orders[i]),
		            log_delta);
	return m.eps;
}

shoal_err
dp_calibrate_sigma(double q, uint64_t steps, double delta, double target_eps,
                   const double *orders, size_t n, double *sigma)
{
	double def[DP_DEFAULT_ORDERS], lo = 0.0, hi = 1.0, ld;

	if (orders == NULL)
		n = dp_default_orders(def), orders = def;
	if (sigma == NULL || !(q >= 0.0 && q <= 1.0) || !(delta > 0.0 && delta < 1.0) ||
	    !isfinite(target_eps) || !orders_ok(orders, n))
		return SHOAL_EINVAL;
	ld = log(delta);
	if (q == 0.0 || steps == 0) {
		if (epsilon_at(q, 0.0, steps, ld, orders, n) > target_eps)
			return SHOAL_EINVAL;
		*sigma = 0.0;
		return SHOAL_OK;
	}
	/* Bracket: eps(lo) > target >= eps(hi); eps(0) is +inf. */
	while (epsilon_at(q, hi, steps, ld, orders, n) > target_eps) {
		lo = hi;
		hi *= 2.0;
		if (hi > CALIBRATE_SIGMA_MAX)
			return SHOAL_EINVAL;
	}
	while (hi - lo > CALIBRATE_TOL) {
		double mid = 0.5 * (lo + hi);

		if (epsilon_at(q, mid, steps, ld, orders, n) <= target_eps)
			hi = mid;
		else
			lo = mid;
	}
	*sigma = hi;
	return SHOAL_OK;
}

/* Zeroes *acc and allocates its vectors; the caller fills orders. */
static shoal_err
acc_alloc(dp_accountant *acc, size_t n, double delta)
{
	double *buf;

	memset(acc, 0, sizeof *acc);
	if (n == 0 || n > DP_MAX_ORDERS || !(delta > 0.0 && delta < 1.0))
		return SHOAL_EINVAL;
	if ((buf = calloc(3 * n, sizeof *buf)) == NULL)
		return SHOAL_ENOMEM;
	acc->n = n;
	acc->delta = delta;
	acc->orders = buf;
	acc->rdp = buf + n;
	acc->step = buf + 2 * n;
	return SHOAL_OK;
}

shoal_err
dp_accountant_init(dp_accountant *acc, const double *orders, size_t n, double delta)
{
	shoal_err err;

	if (orders == NULL)
		n = DP_DEFAULT_ORDERS;
	else if (!orders_ok(orders, n)) {
		memset(acc, 0, sizeof *acc);
		return SHOAL_EINVAL;
	}
	if ((err = acc_alloc(acc, n, delta)) != SHOAL_OK)
		return err;
	if (orders == NULL)
		dp_default_orders(acc->orders);
	else
		memcpy(acc->orders, orders, n * sizeof *orders);
	return SHOAL_OK;
}

void
dp_accountant_fini(dp_accountant *acc)
{
	free(acc->orders);
	memset(acc, 0, sizeof *acc);
}

/* The RDP spent at order i, plus `extra` steps of the cached mechanism. */
static double
spent(const dp_accountant *acc, size_t i, uint64_t extra)
{
	uint64_t k = acc->step_n + extra;

	return k == 0 ? acc->rdp[i] : acc->rdp[i] + (double)k * acc->step[i];
}

/* Folds the pending steps into rdp. */
static void
flush(dp_accountant *acc)
{
	for (size_t i = 0; i < acc->n && acc->step_n > 0; i++)
		acc->rdp[i] = spent(acc, i, 0);
	acc->step_n = 0;
}

/* Makes acc->step the per-step RDP of (q, sigma), flushing the steps of
 * the mechanism cached before. */
static shoal_err
use_mechanism(dp_accountant *acc, double q, double sigma)
{
	if (!(q >= 0.0 && q <= 1.0) || !(sigma > 0.0 && sigma < INFINITY))
		return SHOAL_EINVAL;
	if (acc->step_ok && acc->step_q == q && acc->step_sigma == sigma)
		return SHOAL_OK;
	flush(acc);
	for (size_t i = 0; i < acc->n; i++)
		acc->step[i] = dp_rdp_sgm(q, sigma, acc->orders[i]);
	acc->step_q = q;
	acc->step_sigma = sigma;
	acc->step_ok = true;
	return SHOAL_OK;
}

shoal_err
dp_accountant_add(dp_accountant *acc, double q, double sigma, uint64_t steps)
{
	shoal_err err = use_mechanism(acc, q, sigma);

	if (err != SHOAL_OK)
		return err;
	if (steps > UINT64_MAX - acc->step_n)
		flush(acc);
	acc->step_n += steps;
	return SHOAL_OK;
}

/* Epsilon with `extra` more steps of the cached mechanism. */
static void
acc_epsilon(const dp_accountant *acc, uint64_t extra, double *eps, double *best_order)
{
	eps_min m = EPS_MIN_INIT;
	const double ld = log(acc->delta);

	for (size_t i = 0; i < acc->n; i++)
		eps_min_add(&m, acc->orders[i], spent(acc, i, extra), ld);
	*eps = m.eps;
	if (best_order != NULL)
		*best_order = m.order;
}

shoal_err
dp_accountant_epsilon(const dp_accountant *acc, double *eps, double *best_order)
{
	if (eps == NULL || acc->n == 0)
		return SHOAL_EINVAL;
	acc_epsilon(acc, 0, eps, best_order);
	return SHOAL_OK;
}

shoal_err
dp_accountant_peek(dp_accountant *acc, double q, double sigma, uint64_t steps,
                   double *eps_after)
{
	shoal_err err = use_mechanism(acc, q, sigma);

	if (err != SHOAL_OK || eps_after == NULL)
		return err != SHOAL_OK ? err : SHOAL_EINVAL;
	if (steps > UINT64_MAX - acc->step_n)
		flush(acc);
	acc_epsilon(acc, steps, eps_after, NULL);
	return SHOAL_OK;
}

shoal_err
dp_accountant_use_rdp(dp_accountant *acc, const double *step)
{
	if (step == NULL || acc->n == 0)
		return SHOAL_EINVAL;
	for (size_t i = 0; i < acc->n; i++)
		if (!(step[i] >= 0.0))
			return SHOAL_EINVAL;
	flush(acc);
	memcpy(acc->step, step, acc->n * sizeof *step);
	acc->step_q = NAN; /* never equal: dp_accountant_add recomputes */
	acc->step_sigma = NAN;
	acc->step_ok = true;
	return SHOAL_OK;
}

shoal_err
dp_accountant_add_cached(dp_accountant *acc, uint64_t steps)
{
	if (!acc->step_ok)
		return SHOAL_EINVAL;
	if (steps > UINT64_MAX - acc->step_n)
		flush(acc);
	acc->step_n += steps;
	return SHOAL_OK;
}

shoal_err
dp_accountant_peek_cached(dp_accountant *acc, uint64_t steps, double *eps_after)
{
	if (!acc->step_ok || eps_after == NULL)
		return SHOAL_EINVAL;
	if (steps > UINT64_MAX - acc->step_n)
		flush(acc);
	acc_epsilon(acc, steps, eps_after, NULL);
	return SHOAL_OK;
}

/* ---- the distributed discrete Gaussian (see rdp.h) */

size_t
dp_ddg_orders(double out[DP_DDG_ORDERS])
{
	size_t k = 0;

	for (int a = 2; a <= 128; a++)
		out[k++] = a;
	out[k++] = 256;
	return k;
}

double
dp_ddg_tau(double sigma2, uint32_t n)
{
	const double c = -2.0 * 9.86960440108935861883 * sigma2; /* -2 pi^2 sigma2 */
	double t = 0.0;

	/* k / (k+1) grows with k: the terms shrink, so stop at the first 0. */
	for (uint32_t k = 1; k < n; k++) {
		double v = exp(c * k / (k + 1.0));
		if (v == 0.0)
			break;
		t += v;
	}
	return 10.0 * t;
}

static bool
ddg_ok(const dp_ddg *m)
{
	return m != NULL && m->sigma2 >= 0.25 && isfinite(m->sigma2) && m->n >= 1 &&
	       m->dim >= 1 && isfinite(m->dim) && m->l2 >= 0 && isfinite(m->l2) &&
	       m->l1 >= 0 && isfinite(m->l1) &&
	       (m->sub == DP_DDG_SUB_GENERAL || m->sub == DP_DDG_SUB_BINOMIAL);
}

/* Proposition 14 of Kairouz et al. without sampling; tau precomputed. */
static double
ddg_rdp1(const dp_ddg *m, double tau, double alpha)
{
	const double sd = sqrt((double)m->n * m->sigma2);
	const double s2 = m->l2 / sd, s1 = m->l1 / sd, h = alpha / 2.0;
	double t1 = h * s2 * s2 + tau * m->dim;
	double t2 = h * (s2 * s2 + 2.0 * s1 * tau + tau * tau * m->dim);
	double t3 = h * (s2 + sqrt(m->dim) * tau) * (s2 + sqrt(m->dim) * tau);
	return fmin(t1, fmin(t2, t3));
}

/* Zhu and Wang's general bound for Poisson subsampling at integer a >= 2,
 * 0 < q < 1, summed in log space; with weight 1 instead of 3 for the
 * binomial bound (rdp.h). */
static double
zw_bound(const dp_ddg *m, double tau, double q, long a)
{
	const double lq = log(q), l1q = log1p(-q);
	const double lw = m->sub == DP_DDG_SUB_BINOMIAL ? 0.0 : log(3.0);
	lsum s = {-INFINITY, 0.0};
	double lc = log((double)a) + log((double)(a - 1)) + LOG_HALF; /* log C(a, 2) */

	lsum_add(&s, (double)(a - 1) * l1q + log1p((double)(a - 1) * q), 1.0);
	lsum_add(&s, lc + 2.0 * lq + (double)(a - 2) * l1q + ddg_rdp1(m, tau, 2.0), 1.0);
	for (long l = 3; l <= a; l++) {
		double dl = (double)l;
		lc += log((double)(a - l + 1) / dl);
		lsum_add(&s, lw + lc + dl * lq + (double)(a - l) * l1q +
		                 (dl - 1.0) * ddg_rdp1(m, tau, dl), 1.0);
	}
	double r = (s.m + log(s.s)) / (double)(a - 1);
	return r > 0.0 ? r : 0.0;
}

static double
ddg_rdp(const dp_ddg *m, double tau, double q, double alpha)
{
	if (q == 0.0)
		return 0.0;
	double base = ddg_rdp1(m, tau, alpha);
	if (q == 1.0)
		return base;
	return fmin(base, zw_bound(m, tau, q, (long)alpha));
}

static bool
ddg_args_ok(const dp_ddg *m, double q, double alpha)
{
	if (!ddg_ok(m) || !(q >= 0.0 && q <= 1.0) || !(alpha > 1.0) || alpha > DP_ORDER_MAX)
		return false;
	return q == 1.0 || (alpha >= 2.0 && alpha == floor(alpha));
}

double
dp_rdp_ddg(const dp_ddg *m, double q, double alpha)
{
	if (!ddg_args_ok(m, q, alpha))
		return NAN;
	return ddg_rdp(m, dp_ddg_tau(m->sigma2, m->n), q, alpha);
}

static double
ddg_eps_at(const dp_ddg *m, double q, uint64_t steps, double log_delta, double *best_order)
{
	double orders[DP_DDG_ORDERS], tau = dp_ddg_tau(m->sigma2, m->n);
	size_t n = dp_ddg_orders(orders);
	eps_min e = EPS_MIN_INIT;

	for (size_t i = 0; i < n; i++)
		eps_min_add(&e, orders[i],
		            steps == 0 ? 0.0 : (double)steps * ddg_rdp(m, tau, q, orders[i]),
		            log_delta);
	if (best_order != NULL)
		*best_order = e.order;
	return e.eps;
}

shoal_err
dp_ddg_epsilon(const dp_ddg *m, double q, uint64_t steps, double delta, double *eps,
               double *best_order)
{
	if (!ddg_ok(m) || !(q >= 0.0 && q <= 1.0) || !(delta > 0.0 && delta < 1.0) || eps == NULL)
		return SHOAL_EINVAL;
	*eps = ddg_eps_at(m, q, steps, log(delta), best_order);
	return SHOAL_OK;
}

/* Epsilon with noise multiplier z (sigma2 = (z l2)^2 / n); +inf when the
 * noise is below the theorem's sigma >= 1/2. */
static double
ddg_eps_z(const dp_ddg *m, double z, double q, uint64_t steps, double log_delta)
{
	dp_ddg t = *m;
	t.sigma2 = z * z * m->l2 * m->l2 / m->n;
	if (!(t.sigma2 >= 0.25))
		return INFINITY;
	return ddg_eps_at(&t, q, steps, log_delta, NULL);
}

shoal_err
dp_ddg_calibrate(const dp_ddg *m, double q, uint64_t steps, double delta, double target_eps,
                 double *z)
{
	double lo = 0.0, hi = 1.0, ld;
	dp_ddg t;

	if (m == NULL || z == NULL)
		return SHOAL_EINVAL;
	t = *m;
	t.sigma2 = 1.0; /* checked below through ddg_ok; not used */
	if (!ddg_ok(&t) || !(t.l2 > 0) || !(q > 0.0 && q <= 1.0) || steps == 0 ||
	    !(delta > 0.0 && delta < 1.0) || !(target_eps > 0) || !isfinite(target_eps))
		return SHOAL_EINVAL;
	ld = log(delta);
	while (ddg_eps_z(&t, hi, q, steps, ld) > target_eps) {
		lo = hi;
		hi *= 2.0;
		if (hi > CALIBRATE_SIGMA_MAX)
			return SHOAL_EINVAL;
	}
	while (hi - lo > CALIBRATE_TOL) {
		double mid = 0.5 * (lo + hi);
		if (ddg_eps_z(&t, mid, q, steps, ld) <= target_eps)
			hi = mid;
		else
			lo = mid;
	}
	*z = hi;
	return SHOAL_OK;
}

/* Serialization. */

static const uint8_t MAGIC[4] = {'S', 'H', 'D', 'A'};

static uint64_t
fnv1a64(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static void
put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void
put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void
put_f64(uint8_t *p, double d)
{
	uint64_t v;

	memcpy(&v, &d, sizeof v);
	put_u64(p, v);
}

static uint32_t
get_u32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

static uint64_t
get_u64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static double
get_f64(const uint8_t *p)
{
	uint64_t v = get_u64(p);
	double d;

	memcpy(&d, &v, sizeof d);
	return d;
}

_Static_assert(sizeof(double) == 8, "doubles are IEEE 754 binary64");

int
dp_accountant_save(const dp_accountant *acc, uint8_t *out, size_t cap)
{
	const size_t n = acc->n, size = DP_SAVE_BYTES(n);

	if (cap < size)
		return SHOAL_ETOOBIG;
	memcpy(out, MAGIC, 4);
	put_u32(out + 4, DP_SAVE_VERSION);
	put_f64(out + 8, acc->delta);
	put_u32(out + 16, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		put_f64(out + 20 + 8 * i, acc->orders[i]);
		put_f64(out + 20 + 8 * (n + i), spent(acc, i, 0));
	}
	put_u64(out + size - 8, fnv1a64(out, size - 8));
	return (int)size;
}

int
dp_accountant_load(dp_accountant *acc, const uint8_t *in, size_t len)
{
	uint32_t n;
	size_t size;
	double delta;
	shoal_err err;

	memset(acc, 0, sizeof *acc);
	if (len < 4)
		return SHOAL_ETRUNC;
	if (memcmp(in, MAGIC, 4) != 0)
		return SHOAL_EFORMAT;
	if (len < 8)
		return SHOAL_ETRUNC;
	if (get_u32(in + 4) != DP_SAVE_VERSION)
		return SHOAL_EVERSION;
	if (len < 20)
		return SHOAL_ETRUNC;
	n = get_u32(in + 16);
	if (n == 0)
		return SHOAL_EFORMAT;
	if (n > DP_MAX_ORDERS)
		return SHOAL_ETOOBIG;
	size = DP_SAVE_BYTES(n);
	if (len < size)
		return SHOAL_ETRUNC;
	if (get_u64(in + size - 8) != fnv1a64(in, size - 8))
		return SHOAL_EMALFORMED;
	delta = get_f64(in + 8);
	if (isnan(delta))
		return SHOAL_ENONFINITE;
	for (size_t i = 0; i < 2 * (size_t)n; i++)
		if (isnan(get_f64(in + 20 + 8 * i)))
			return SHOAL_ENONFINITE;
	for (size_t i = 0; i < n; i++)
		if (!order_ok(get_f64(in + 20 + 8 * i)) || !(get_f64(in + 20 + 8 * (n + i)) >= 0.0))
			return SHOAL_EINVAL;
	if ((err = acc_alloc(acc, n, delta)) != SHOAL_OK)
		return err;
	for (size_t i = 0; i < n; i++) {
		acc->orders[i] = get_f64(in + 20 + 8 * i);
		acc->rdp[i] = get_f64(in + 20 + 8 * (n + i));
	}
	return (int)size;
}
