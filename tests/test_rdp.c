/* test_rdp.c - the Renyi-DP accountant (privacy/rdp.h) and shoal-dp.
 *
 * Reference values come from outside shoal: Google dp_accounting's and
 * Opacus' own tests, and a numerical integration of A_alpha written here
 * (not the series the library sums). Then the edge cases of the mechanism,
 * the conversion, calibration, the accountant's composition, peek and its
 * saved form (round trip, every truncation, corruption), and the built
 * shoal-dp binary. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/testutil.h"
#include "tests/dptool.h"

#include "privacy/rdp.h"


static void
assert_rel(double got, double want, double tol)
{
	double rel = fabs(got - want) / fabs(want);

	if (!(rel <= tol)) {
		fprintf(stderr, "got %.17g want %.17g (relative error %.3g > %.3g)\n", got, want,
		        rel, tol);
		fail();
	}
}

/* dp_accounting's rdp_privacy_accountant_test: q = 0.01, sigma = 2.5, 50
 * steps. Its value at order 1.5 (6.70579741e-04) is a bound it uses for
 * orders below 2; the exact RDP, which Opacus' series and the integration
 * below agree on, is 6.5007090e-04. */
static void
test_rdp_dp_accounting_vectors(void **state)
{
	static const double orders[] = {2.5, 5, 50, 100};
	static const double want[] = {1.08548710e-03, 2.18075656e-03, 2.38460375e-02,
	                              1.67416308e+02};

	for (size_t i = 0; i < sizeof orders / sizeof orders[0]; i++)
		assert_rel(50 * dp_rdp_sgm(0.01, 2.5, orders[i]), want[i], 1e-4);
	assert_true(isinf(dp_rdp_sgm(0.01, 2.5, INFINITY)));
	assert_rel(50 * dp_rdp_sgm(0.01, 2.5, 1.5), 6.5007090e-04, 1e-7);
	assert_false(fabs(50 * dp_rdp_sgm(0.01, 2.5, 1.5) - 6.70579741e-04) < 1e-5);
}

/* A_alpha - 1 = E_{z ~ N(0, s^2)} [((1-q) + q e^{(2z-1)/(2 s^2)})^alpha - 1]
 * by the trapezoid rule in long double over [-40 s, alpha + 40 s] (the
 * integrand peaks in [0, alpha] with width s). The integrand is analytic
 * in a strip of half-width pi s^2 (where the base turns negative), so the
 * rule converges geometrically once h is well below s^2 and s. */
static double
rdp_by_integration(double q, double s, double alpha)
{
	const long double lo = -40.0L * s, hi = alpha + 40.0L * s;
	const long double h = fminl(s / 64.0L, s * s / 8.0L), s2 = (long double)s * s;
	const long n = (long)((hi - lo) / h) + 1;
	long double sum = 0.0L;

	for (long k = 0; k <= n; k++) {
		long double z = lo + k * h;
		long double g = expm1l(alpha * log1pl(q * expm1l((2 * z - 1) / (2 * s2))));
		long double w = expl(-z * z / (2 * s2)) / (sqrtl(2 * 3.14159265358979323846L) * s);

		sum += (k == 0 || k == n ? 0.5L : 1.0L) * w * g;
	}
	return (double)(log1pl(sum * h) / (alpha - 1));
}

static void
test_rdp_matches_integration(void **state)
{
	static const double c[][3] = {
		/* q, sigma, alpha: fractional orders, then integer ones */
		{0.01, 2.5, 1.5}, {0.01, 2.5, 2.5},  {0.04, 1.5, 3.9},  {0.1, 0.8, 2.7},
		{0.001, 10, 7.5}, {0.2, 0.5, 10.9},  {0.5, 5, 1.25},    {0.3, 30, 1.1},
		{0.9, 1, 4.4},    {0.05, 0.3, 6.6},  {1e-4, 100, 1.5},  {0.04, 1.0, 1.1},
		{0.5, 0.4, 3.3},  {0.7, 3, 12.5},    {1e-4, 0.5, 1.5},  {1e-3, 0.7, 2.5},
		{0.05, 1, 8},     {0.01, 4, 32},     {0.5, 2, 2},       {0.9, 0.6, 5},
		{1e-4, 100, 3},
	};

	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		double got = dp_rdp_sgm(c[i][0], c[i][1], c[i][2]);
		double want = rdp_by_integration(c[i][0], c[i][1], c[i][2]);

		fprintf(stderr, "q %g sigma %g alpha %g: %.17g vs %.17g\n", c[i][0], c[i][1],
		        c[i][2], got, want);
		assert_rel(got, want, 1e-10);
	}
}

/* Opacus' test_rdp_accountant: 2250 steps one at a time at the default
 * orders, assertAlmostEqual (7 places). */
static void
test_rdp_opacus_epsilon(void **state)
{
	dp_accountant acc;
	double eps, order, orders[DP_DEFAULT_ORDERS];

	assert_int_equal(dp_default_orders(orders), DP_DEFAULT_ORDERS);
	assert_true(orders[0] == 1.1 && orders[98] == 10.9 && orders[99] == 12 &&
	            orders[DP_DEFAULT_ORDERS - 1] == 63);
	assert_int_equal(dp_accountant_init(&acc, NULL, 0, 1e-5), SHOAL_OK);
	for (int i = 0; i < 2250; i++)
		assert_int_equal(dp_accountant_add(&acc, 0.04, 1.5, 1), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&acc, &eps, &order), SHOAL_OK);
	assert_true(fabs(eps - 7.32911117143) < 5e-8);
	assert_true(order == 3.9);
	dp_accountant_fini(&acc);
}

/* eps = 8, delta = 1e-5, q = 0.04, 2000 steps: the boundary sigma, to 1e-6. */
static void
test_rdp_calibrate(void **state)
{
	double orders[DP_DEFAULT_ORDERS], sigma, e_at, e_below;
	dp_accountant acc;

	dp_default_orders(orders);
	assert_int_equal(dp_calibrate_sigma(0.04, 2000, 1e-5, 8.0, NULL, 0, &sigma), SHOAL_OK);
	assert_true(fabs(sigma - 1.356134) < 1.5e-6);
	assert_int_equal(dp_accountant_init(&acc, orders, DP_DEFAULT_ORDERS, 1e-5), SHOAL_OK);
	assert_int_equal(dp_accountant_peek(&acc, 0.04, sigma, 2000, &e_at), SHOAL_OK);
	assert_int_equal(dp_accountant_peek(&acc, 0.04, sigma - 1e-6, 2000, &e_below), SHOAL_OK);
	assert_true(e_at <= 8.0);
	assert_true(e_below > 8.0);
	dp_accountant_fini(&acc);

	/* No reachable answer: the conversion alone costs more than 0.01. */
	assert_int_equal(dp_calibrate_sigma(0.04, 2000, 1e-5, 0.01, NULL, 0, &sigma),
	                 SHOAL_EINVAL);
	/* q = 0 needs no noise. */
	assert_int_equal(dp_calibrate_sigma(0.0, 2000, 1e-5, 8.0, NULL, 0, &sigma), SHOAL_OK);
	assert_true(sigma == 0.0);
	assert_int_equal(dp_calibrate_sigma(0.04, 2000, 0.0, 8.0, NULL, 0, &sigma), SHOAL_EINVAL);
	assert_int_equal(dp_calibrate_sigma(1.5, 2000, 1e-5, 8.0, NULL, 0, &sigma), SHOAL_EINVAL);
}

static void
test_rdp_edge_cases(void **state)
{
	static const double alphas[] = {1.1, 1.5, 2, 3.7, 32, 255.5, 256};
	static const double sigmas[] = {0.3, 1, 7.5, 100};

	for (size_t i = 0; i < sizeof alphas / sizeof alphas[0]; i++)
		for (size_t j = 0; j < sizeof sigmas / sizeof sigmas[0]; j++) {
			double a = alphas[i], s = sigmas[j];

			assert_true(dp_rdp_sgm(1.0, s, a) == a / (2 * s * s));
			assert_true(dp_rdp_sgm(0.0, s, a) == 0.0);
			assert_true(isinf(dp_rdp_sgm(0.01, 0.0, a)));
		}
	assert_true(dp_rdp_sgm(0.0, 1.0, INFINITY) == 0.0);
	assert_true(isinf(dp_rdp_sgm(1e-6, 50.0, INFINITY)));
	assert_true(isinf(dp_rdp_sgm(1.0, 1.0, INFINITY)));
	/* Outside the domain: NaN. */
	assert_true(isnan(dp_rdp_sgm(-0.1, 1.0, 2.0)));
	assert_true(isnan(dp_rdp_sgm(1.1, 1.0, 2.0)));
	assert_true(isnan(dp_rdp_sgm(0.1, -1.0, 2.0)));
	assert_true(isnan(dp_rdp_sgm(0.1, 1.0, 1.0)));
	assert_true(isnan(dp_rdp_sgm(0.1, 1.0, 0.5)));
	assert_true(isnan(dp_rdp_sgm(0.1, 1.0, NAN)));
	assert_true(isnan(dp_rdp_sgm(NAN, 1.0, 2.0)));
	assert_true(isnan(dp_rdp_sgm(0.1, 1.0, 2 * DP_ORDER_MAX)));
}

/* Over sigma in [0.3, 100], q from 1e-4 to 0.9 and orders up to 256: finite,
 * 0 <= RDP <= alpha / (2 sigma^2) (subsampling never hurts), non-decreasing
 * in alpha (as every Renyi divergence), non-increasing in sigma. */
static void
test_rdp_stable_and_monotone(void **state)
{
	static const double qs[] = {1e-4, 0.01, 0.1, 0.5, 0.9};
	static const double sigmas[] = {0.3, 0.5, 1, 2, 5, 10, 30, 100};
	double orders[DP_DEFAULT_ORDERS + 4];
	size_t n = dp_default_orders(orders);

	orders[n++] = 128;
	orders[n++] = 200.5;
	orders[n++] = 255.5;
	orders[n++] = 256;
	for (size_t iq = 0; iq < sizeof qs / sizeof qs[0]; iq++)
		for (size_t is = 0; is < sizeof sigmas / sizeof sigmas[0]; is++) {
			double q = qs[iq], s = sigmas[is], prev = 0.0;

			for (size_t k = 0; k < n; k++) {
				double r = dp_rdp_sgm(q, s, orders[k]);
				double looser = is > 0 ? dp_rdp_sgm(q, sigmas[is - 1], orders[k]) : INFINITY;

				if (!(isfinite(r) && r >= 0.0 && r <= orders[k] / (2 * s * s) * (1 + 1e-12) &&
				      r >= prev * (1 - 1e-12) && r <= looser)) {
					fprintf(stderr, "q %g sigma %g alpha %g: rdp %.17g (previous order %.17g, "
					        "smaller sigma %.17g)\n", q, s, orders[k], r, prev, looser);
					fail();
				}
				prev = r;
			}
		}
}

static void
test_rdp_epsilon_conversion(void **state)
{
	const double o1[] = {2.0}, r1[] = {0.5};
	const double o2[] = {2.0, 8.0, INFINITY, NAN, 0.5}, r2[] = {NAN, 1.0, 0.25, 0.0, 0.0};
	const double r3[] = {INFINITY, INFINITY, INFINITY, INFINITY, INFINITY};
	double eps, order;

	/* 0.5 - (log 1e-5 + log 2) / 1 + log(1/2), by hand. */
	assert_int_equal(dp_epsilon(o1, r1, 1, 1e-5, &eps, &order), SHOAL_OK);
	assert_rel(eps, 10.626631103850338, 1e-15);
	assert_true(order == 2.0);
	/* NaN RDP, NaN and sub-1 orders are skipped; an infinite order counts
	 * with its limit, the RDP itself. */
	assert_int_equal(dp_epsilon(o2, r2, 5, 1e-5, &eps, &order), SHOAL_OK);
	assert_true(eps == 0.25 && isinf(order));
	assert_int_equal(dp_epsilon(o2, r3, 5, 1e-5, &eps, &order), SHOAL_OK);
	assert_true(isinf(eps) && order == 2.0); /* the first of equal minima */
	assert_int_equal(dp_epsilon(o2 + 3, r2 + 3, 2, 1e-5, &eps, &order), SHOAL_OK);
	assert_true(isinf(eps) && isnan(order));
	assert_int_equal(dp_epsilon(o1, r1, 1, 0.0, &eps, NULL), SHOAL_EINVAL);
	assert_int_equal(dp_epsilon(o1, r1, 1, 1.0, &eps, NULL), SHOAL_EINVAL);
	assert_int_equal(dp_epsilon(o1, r1, 0, 1e-5, &eps, NULL), SHOAL_EINVAL);
}

/* Spent RDP per order, read back through the saved form. */
static void
spent_rdp(const dp_accountant *acc, double *rdp)
{
	uint8_t buf[DP_SAVE_BYTES(DP_DEFAULT_ORDERS)];
	dp_accountant copy;

	assert_true(acc->n <= DP_DEFAULT_ORDERS);
	assert_int_equal(dp_accountant_save(acc, buf, sizeof buf), (int)DP_SAVE_BYTES(acc->n));
	assert_int_equal(dp_accountant_load(&copy, buf, sizeof buf), (int)DP_SAVE_BYTES(acc->n));
	memcpy(rdp, copy.rdp, acc->n * sizeof *rdp);
	dp_accountant_fini(&copy);
}

static void
test_rdp_accountant_composition(void **state)
{
	dp_accountant a, b, c;
	double ra[DP_DEFAULT_ORDERS], rb[DP_DEFAULT_ORDERS], ea, eb;

	assert_int_equal(dp_accountant_init(&a, NULL, 0, 1e-5), SHOAL_OK);
	assert_int_equal(dp_accountant_init(&b, NULL, 0, 1e-5), SHOAL_OK);
	assert_int_equal(dp_accountant_init(&c, NULL, 0, 1e-5), SHOAL_OK);
	/* Twice one step is one add of two. */
	assert_int_equal(dp_accountant_add(&a, 0.02, 1.1, 1), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&a, 0.02, 1.1, 1), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&b, 0.02, 1.1, 2), SHOAL_OK);
	spent_rdp(&a, ra);
	spent_rdp(&b, rb);
	assert_memory_equal(ra, rb, sizeof ra);
	assert_int_equal(dp_accountant_epsilon(&a, &ea, NULL), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&b, &eb, NULL), SHOAL_OK);
	assert_true(ea == eb && ea > 0.0);
	/* Mechanisms that differ per call add up per order. */
	assert_int_equal(dp_accountant_add(&c, 0.02, 1.1, 1), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&c, 0.1, 3.0, 3), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&c, 0.02, 1.1, 1), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&c, 0.0, 1.0, 1000), SHOAL_OK);
	spent_rdp(&c, rb);
	for (size_t i = 0; i < DP_DEFAULT_ORDERS; i++)
		assert_rel(rb[i], 2 * dp_rdp_sgm(0.02, 1.1, c.orders[i]) +
		                      3 * dp_rdp_sgm(0.1, 3.0, c.orders[i]), 1e-14);
	/* Bad mechanisms leave the state alone. */
	assert_int_equal(dp_accountant_add(&c, 1.5, 1.0, 1), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_add(&c, 0.1, 0.0, 1), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_add(&c, 0.1, NAN, 1), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_add(&c, 0.1, INFINITY, 1), SHOAL_EINVAL);
	spent_rdp(&c, ra);
	assert_memory_equal(ra, rb, sizeof ra);
	dp_accountant_fini(&a);
	dp_accountant_fini(&b);
	dp_accountant_fini(&c);
}

static void
test_rdp_accountant_peek(void **state)
{
	dp_accountant a, b;
	uint8_t before[DP_SAVE_BYTES(DP_DEFAULT_ORDERS)], after[sizeof before];
	double e0, e1, peek, direct;

	assert_int_equal(dp_accountant_init(&a, NULL, 0, 1e-6), SHOAL_OK);
	assert_int_equal(dp_accountant_init(&b, NULL, 0, 1e-6), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&a, 0.01, 1.0, 300), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&b, 0.01, 1.0, 300), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&a, &e0, NULL), SHOAL_OK);
	assert_int_equal(dp_accountant_save(&a, before, sizeof before), (int)sizeof before);
	/* Same mechanism, then another one: neither changes what was spent. */
	assert_int_equal(dp_accountant_peek(&a, 0.01, 1.0, 50, &peek), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&b, 0.01, 1.0, 50), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&b, &direct, NULL), SHOAL_OK);
	assert_true(peek == direct && peek > e0);
	assert_int_equal(dp_accountant_peek(&a, 0.05, 0.8, 1, &peek), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&a, &e1, NULL), SHOAL_OK);
	assert_true(e1 == e0 && peek > e0);
	assert_int_equal(dp_accountant_save(&a, after, sizeof after), (int)sizeof after);
	assert_memory_equal(before, after, sizeof before);
	assert_int_equal(dp_accountant_peek(&a, 0.01, 1.0, 0, &peek), SHOAL_OK);
	assert_true(peek == e0);
	assert_int_equal(dp_accountant_peek(&a, 2.0, 1.0, 1, &peek), SHOAL_EINVAL);
	dp_accountant_fini(&a);
	dp_accountant_fini(&b);
}

static void
test_rdp_accountant_init_errors(void **state)
{
	const double bad1[] = {2.0, 1.0}, bad2[] = {2.0, NAN}, bad3[] = {2.0, 1e9};
	const double ok[] = {1.5, 2.0, INFINITY};
	dp_accountant a;
	double eps, order;

	assert_int_equal(dp_accountant_init(&a, bad1, 2, 1e-5), SHOAL_EINVAL);
	dp_accountant_fini(&a); /* safe after a failed init */
	assert_int_equal(dp_accountant_init(&a, bad2, 2, 1e-5), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_init(&a, bad3, 2, 1e-5), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_init(&a, ok, 0, 1e-5), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_init(&a, ok, DP_MAX_ORDERS + 1, 1e-5), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_init(&a, ok, 3, 0.0), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_init(&a, ok, 3, 1.0), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_init(&a, ok, 3, NAN), SHOAL_EINVAL);
	assert_int_equal(dp_accountant_init(&a, ok, 3, 1e-5), SHOAL_OK);
	/* Nothing spent: the conversion alone, at the largest finite order. */
	assert_int_equal(dp_accountant_epsilon(&a, &eps, &order), SHOAL_OK);
	assert_true(eps == 0.0 && isinf(order));
	dp_accountant_fini(&a);
}

/* A saved accountant with a few orders and some RDP spent. */
static int
saved(uint8_t *buf, size_t cap)
{
	const double orders[] = {1.5, 2.0, 8.0, INFINITY};
	dp_accountant a;
	int n;

	assert_int_equal(dp_accountant_init(&a, orders, 4, 1e-5), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&a, 0.01, 2.0, 100), SHOAL_OK);
	n = dp_accountant_save(&a, buf, cap);
	dp_accountant_fini(&a);
	return n;
}

static void
put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Rewrites the FNV-1a 64 checksum after a deliberate edit. */
static void
reseal(uint8_t *buf, size_t size)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < size - 8; i++) {
		h ^= buf[i];
		h *= 0x100000001b3ull;
	}
	put_le64(buf + size - 8, h);
}

static void
put_double(uint8_t *p, double d)
{
	uint64_t v;

	memcpy(&v, &d, sizeof v);
	put_le64(p, v);
}

/* The documented example at the top of rdp.c, byte for byte. */
static void
test_rdp_save_known_bytes(void **state)
{
	static const uint8_t want[60] = {
		0x53, 0x48, 0x44, 0x41, 0x01, 0x00, 0x00, 0x00, 0xf1, 0x68, 0xe3, 0x88,
		0xb5, 0xf8, 0xe4, 0x3e, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x40,
		0xe0, 0xcc, 0xc3, 0x30, 0x5c, 0x44, 0x67, 0x3f, 0x8f, 0x63, 0x52, 0x6c,
		0x8a, 0xbf, 0xa9, 0x3f, 0xc9, 0xc1, 0x04, 0x85, 0x5d, 0xab, 0xc4, 0x6d,
	};
	const double orders[] = {2.0, 32.0};
	uint8_t buf[64];
	dp_accountant a;

	assert_int_equal(dp_accountant_init(&a, orders, 2, 1e-5), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&a, 0.01, 2.0, 100), SHOAL_OK);
	assert_int_equal(dp_accountant_save(&a, buf, 59), SHOAL_ETOOBIG);
	assert_int_equal(dp_accountant_save(&a, buf, sizeof buf), 60);
	assert_memory_equal(buf, want, sizeof want);
	dp_accountant_fini(&a);
}

static void
test_rdp_save_load_round_trip(void **state)
{
	uint8_t buf[DP_SAVE_BYTES(4) + 7], again[DP_SAVE_BYTES(4)];
	const int size = (int)DP_SAVE_BYTES(4);
	dp_accountant a;
	double eps, order;

	assert_int_equal(saved(buf, sizeof buf), size);
	/* Trailing bytes are the caller's. */
	memset(buf + size, 0xee, sizeof buf - (size_t)size);
	assert_int_equal(dp_accountant_load(&a, buf, sizeof buf), size);
	assert_int_equal(a.n, 4);
	assert_true(a.delta == 1e-5);
	assert_true(isinf(a.orders[3]) && isinf(a.rdp[3]));
	assert_rel(a.rdp[1], 100 * dp_rdp_sgm(0.01, 2.0, 2.0), 1e-15);
	assert_int_equal(dp_accountant_save(&a, again, sizeof again), size);
	assert_memory_equal(buf, again, sizeof again);
	/* The loaded accountant goes on accounting. */
	assert_int_equal(dp_accountant_add(&a, 0.01, 2.0, 100), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&a, &eps, &order), SHOAL_OK);
	assert_rel(a.rdp[1] + 100 * a.step[1], 200 * dp_rdp_sgm(0.01, 2.0, 2.0), 1e-15);
	assert_true(isfinite(eps) && order == 8.0);
	dp_accountant_fini(&a);
}

static void
test_rdp_load_rejects(void **state)
{
	uint8_t good[DP_SAVE_BYTES(4)], buf[sizeof good];
	const size_t size = sizeof good;
	dp_accountant a;

	assert_int_equal(saved(good, sizeof good), (int)size);
	/* Every truncation. */
	for (size_t len = 0; len < size; len++) {
		assert_int_equal(dp_accountant_load(&a, good, len), SHOAL_ETRUNC);
		assert_null(a.orders);
	}
	/* Any flipped bit anywhere. */
	for (size_t i = 0; i < size; i++)
		for (int bit = 0; bit < 8; bit++) {
			memcpy(buf, good, size);
			buf[i] ^= (uint8_t)(1u << bit);
			assert_true(dp_accountant_load(&a, buf, size) < 0);
			assert_null(a.orders);
		}
	memcpy(buf, good, size);
	buf[0] = 'X';
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_EFORMAT);
	memcpy(buf, good, size);
	buf[4] = 2; /* version 2, even with a valid checksum */
	reseal(buf, size);
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_EVERSION);
	memcpy(buf, good, size);
	buf[size - 1] ^= 0x80;
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_EMALFORMED);
	memcpy(buf, good, size);
	buf[20 + 8 * 5] ^= 1; /* an RDP value */
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_EMALFORMED);
	memcpy(buf, good, size);
	memset(buf + 16, 0, 4); /* n = 0 */
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_EFORMAT);
	memcpy(buf, good, size);
	memset(buf + 16, 0xff, 4); /* n = 2^32 - 1 */
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_ETOOBIG);
	memcpy(buf, good, size);
	buf[16] = 5; /* n = 5: needs 16 more bytes than there are */
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_ETRUNC);
	/* Sealed but invalid values. */
	memcpy(buf, good, size);
	put_double(buf + 20 + 8, NAN);
	reseal(buf, size);
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_ENONFINITE);
	memcpy(buf, good, size);
	put_double(buf + 8, NAN);
	reseal(buf, size);
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_ENONFINITE);
	memcpy(buf, good, size);
	put_double(buf + 20 + 8, 0.5); /* order below 1 */
	reseal(buf, size);
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_EINVAL);
	memcpy(buf, good, size);
	put_double(buf + 8, 1.5); /* delta */
	reseal(buf, size);
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_EINVAL);
	memcpy(buf, good, size);
	put_double(buf + 20 + 8 * 4, -1.0); /* negative RDP */
	reseal(buf, size);
	assert_int_equal(dp_accountant_load(&a, buf, size), SHOAL_EINVAL);
	assert_null(a.orders);
}


static double
json_num(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	assert_non_null(v);
	assert_true(json_is_number(v));
	return json_number_value(v);
}

static void
test_rdp_cli(void **state)
{
	static const char *const eps_args[] = {"epsilon", "--q", "0.04", "--sigma", "1.5",
	                                       "--steps", "2250", "--delta", "1e-5", NULL};
	static const char *const cal_args[] = {"calibrate", "--q", "0.04", "--steps", "2000",
	                                       "--delta", "1e-5", "--epsilon", "8", NULL};
	static const char *const rdp_args[] = {"rdp", "--q", "0.01", "--sigma", "2.5",
	                                       "--steps", "50", "--order", "1.5", NULL};
	static const char *const bad_args[] = {"epsilon", "--q", "0.04", "--sigma", "1.5", NULL};
	char out[4096];
	json_error_t jerr;
	json_t *o;

	assert_int_equal(dptool_run(eps_args, out, sizeof out), 0);
	/* One line. */
	assert_true(strlen(out) > 0 && strchr(out, '\n') == out + strlen(out) - 1);
	o = json_loads(out, 0, &jerr);
	assert_non_null(o);
	assert_true(fabs(json_num(o, "epsilon") - 7.32911117143) < 5e-8);
	assert_true(json_num(o, "order") == 3.9);
	assert_true(json_num(o, "delta") == 1e-5);
	assert_true(json_num(o, "steps") == 2250);
	assert_true(json_num(o, "orders") == DP_DEFAULT_ORDERS);
	json_decref(o);

	assert_int_equal(dptool_run(cal_args, out, sizeof out), 0);
	o = json_loads(out, 0, &jerr);
	assert_non_null(o);
	assert_true(fabs(json_num(o, "sigma") - 1.356134) < 1.5e-6);
	assert_true(json_num(o, "epsilon") <= 8.0);
	json_decref(o);

	assert_int_equal(dptool_run(rdp_args, out, sizeof out), 0);
	o = json_loads(out, 0, &jerr);
	assert_non_null(o);
	assert_rel(json_num(o, "rdp"), 6.5007090e-04, 1e-7);
	assert_true(json_num(o, "order") == 1.5);
	json_decref(o);

	/* Usage errors: exit 2, nothing on stdout. */
	assert_int_equal(dptool_run(bad_args, out, sizeof out), 2);
	assert_string_equal(out, "");
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rdp_dp_accounting_vectors),
		cmocka_unit_test(test_rdp_matches_integration),
		cmocka_unit_test(test_rdp_opacus_epsilon),
		cmocka_unit_test(test_rdp_calibrate),
		cmocka_unit_test(test_rdp_edge_cases),
		cmocka_unit_test(test_rdp_stable_and_monotone),
		cmocka_unit_test(test_rdp_epsilon_conversion),
		cmocka_unit_test(test_rdp_accountant_composition),
		cmocka_unit_test(test_rdp_accountant_peek),
		cmocka_unit_test(test_rdp_accountant_init_errors),
		cmocka_unit_test(test_rdp_save_known_bytes),
		cmocka_unit_test(test_rdp_save_load_round_trip),
		cmocka_unit_test(test_rdp_load_rejects),
		cmocka_unit_test(test_rdp_cli),
	};

	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
