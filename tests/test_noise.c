/* test_noise.c - DP noise and clipping primitives (privacy/noise.h):
 * frequency and goodness-of-fit tests of the exact samplers against their
 * exact distributions, a Kolmogorov-Smirnov test of the lattice Gaussian,
 * lattice membership of the added noise, determinism, clipping bounds and
 * the Hadamard rotation's inverse and norm.
 *
 * Every statistical test runs on a fixed seed, so it is deterministic; the
 * thresholds are the 0.999 quantiles (or 5 standard errors), so a correct
 * sampler passes them for almost every seed and a biased one fails. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "privacy/noise.h"

/* 0.999 quantile of chi-square with df degrees of freedom (Wilson-Hilferty;
 * slightly above the exact value for df < 5, e.g. 11.2 vs 10.83 at df = 1). */
static double
chi2_q999(int df)
{
	const double z = 3.090232306167813; /* standard normal 0.999 quantile */
	double k = df, c = 2.0 / (9.0 * k);
	double b = 1.0 - c + z * sqrt(c);
	return k * b * b * b;
}

/* ---- Bernoulli(exp(-g)) */

static void
test_bernoulli_exp_frequency(void **state)
{
	static const struct {
		uint64_t num, den;
	} g[] = {{0, 1}, {3, 10}, {1, 1}, {5, 2}, {7, 3}, {20, 1}, {123456789, 100000000}};
	const unsigned n = 200000;
	rng r;
	rng_init(&r, 11, 0);
	for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
		double p = exp(-(double)g[i].num / (double)g[i].den);
		unsigned ones = 0;
		for (unsigned j = 0; j < n; j++) {
			int b = dp_bernoulli_exp(&r, g[i].num, g[i].den);
			assert_true(b == 0 || b == 1);
			ones += (unsigned)b;
		}
		double sd = sqrt(n * p * (1 - p));
		print_message("exp(-%llu/%llu): %u of %u (expected %.1f +- %.1f)\n",
		              (unsigned long long)g[i].num, (unsigned long long)g[i].den, ones,
		              n, n * p, sd);
		/* 5 sigma binomial tolerance; +0.5 so p = 1 and tiny p are exact */
		assert_true(fabs(ones - n * p) <= 5 * sd + 0.5);
	}
	assert_int_equal(dp_bernoulli_exp(&r, 1, 0), SHOAL_EINVAL);
	assert_int_equal(dp_bernoulli_exp(&r, UINT64_MAX, 1), 0);
	rng_fini(&r);
}

/* ---- goodness of fit against an exact PMF */

typedef int64_t (*draw_fn)(rng *r, const uint64_t *par);
typedef double (*weight_fn)(int64_t y, const uint64_t *par);

struct fit {
	double chi2, q999, mean, var, want_var;
	int df;
};

/* Draws n samples, bins them over [-R, R] (outliers into the end bins),
 * merges adjacent bins until each expects >= 5, and checks chi-square
 * below its 0.999 quantile and mean and variance within 5 standard errors
 * of the PMF's (normalized over [-R, R]; R leaves a negligible tail). */
static struct fit
check_fit(const char *name, draw_fn draw, weight_fn w, const uint64_t *par, int64_t R,
          unsigned n, uint64_t seed)
{
	size_t nb = (size_t)(2 * R + 1);
	double *p = calloc(nb, sizeof *p);
	unsigned *obs = calloc(nb, sizeof *obs);
	assert_non_null(p);
	assert_non_null(obs);

	double tot = 0;
	for (int64_t y = -R; y <= R; y++)
		tot += p[y + R] = w(y, par);
	double var = 0, m4 = 0;
	for (int64_t y = -R; y <= R; y++) {
		p[y + R] /= tot;
		var += p[y + R] * (double)y * (double)y;
		m4 += p[y + R] * (double)y * (double)y * (double)y * (double)y;
	}

	rng r;
	rng_init(&r, seed, 0);
	double sum = 0, sumsq = 0;
	for (unsigned i = 0; i < n; i++) {
		int64_t y = draw(&r, par);
		assert_true(y != DP_SAMPLE_INVALID);
		sum += (double)y;
		sumsq += (double)y * (double)y;
		int64_t b = y < -R ? -R : y > R ? R : y;
		obs[b + R]++;
	}
	rng_fini(&r);

	double chi2 = 0, eacc = 0, oacc = 0, elast = 0, olast = 0;
	int bins = 0;
	for (size_t i = 0; i < nb; i++) {
		eacc += p[i] * n;
		oacc += obs[i];
		if (eacc >= 5) {
			if (bins > 0)
				chi2 += (olast - elast) * (olast - elast) / elast;
			elast = eacc;
			olast = oacc;
			eacc = oacc = 0;
			bins++;
		}
	}
	/* the leftover right tail joins the last bin */
	elast += eacc;
	olast += oacc;
	chi2 += (olast - elast) * (olast - elast) / elast;

	struct fit f;
	f.df = bins - 1;
	f.chi2 = chi2;
	f.q999 = chi2_q999(f.df);
	f.mean = sum / n;
	f.var = sumsq / n - f.mean * f.mean;
	f.want_var = var;
	print_message("%s: chi2 %.1f, df %d, 0.999 quantile %.1f; mean %.4f, var %.4f "
	              "(PMF var %.4f), n %u\n",
	              name, f.chi2, f.df, f.q999, f.mean, f.var, var, n);
	assert_true(f.df >= 1);
	assert_true(f.chi2 < f.q999);
	assert_true(fabs(f.mean) < 5 * sqrt(var / n));
	assert_true(fabs(f.var - var) < 5 * sqrt((m4 - var * var) / n));
	free(p);
	free(obs);
	return f;
}

static int64_t
draw_dg(rng *r, const uint64_t *par)
{
	return dp_discrete_gaussian(r, par[0], par[1]);
}

static double
weight_dg(int64_t y, const uint64_t *par)
{
	double s2 = (double)par[0] / (double)par[1];
	return exp(-(double)y * (double)y / (2 * s2));
}

static int64_t
draw_dlap(rng *r, const uint64_t *par)
{
	return dp_discrete_laplace(r, par[0], par[1]);
}

static double
weight_dlap(int64_t y, const uint64_t *par)
{
	return exp(-fabs((double)y) * (double)par[0] / (double)par[1]);
}

static void
test_discrete_gaussian_fit(void **state)
{
	static const uint64_t par[][2] = {{1, 2}, {4, 1}, {1000, 7}, {10000, 1}};
	const unsigned n = 200000;
	for (size_t i = 0; i < sizeof par / sizeof par[0]; i++) {
		char name[64];
		double sigma = sqrt((double)par[i][0] / (double)par[i][1]);
		snprintf(name, sizeof name, "discrete Gaussian sigma^2 %llu/%llu",
		         (unsigned long long)par[i][0], (unsigned long long)par[i][1]);
		struct fit f = check_fit(name, draw_dg, weight_dg, par[i],
		                         (int64_t)(12 * sigma) + 10, n, 100 + i);
		/* for sigma >= 1 the variance is sigma^2 to within 1e-6 (CKS) */
		if (sigma >= 1)
			assert_true(fabs(f.want_var / (sigma * sigma) - 1) < 1e-6);
	}
}

static void
test_discrete_laplace_fit(void **state)
{
	static const uint64_t par[][2] = {{1, 1}, {3, 7}, {1, 50}, {5, 2}};
	const unsigned n = 100000;
	for (size_t i = 0; i < sizeof par / sizeof par[0]; i++) {
		char name[64];
		double scale = (double)par[i][1] / (double)par[i][0];
		snprintf(name, sizeof name, "discrete Laplace scale %llu/%llu",
		         (unsigned long long)par[i][1], (unsigned long long)par[i][0]);
		check_fit(name, draw_dlap, weight_dlap, par[i], (int64_t)(40 * scale) + 10, n,
		          200 + i);
	}
}

static void
test_discrete_gaussian_range(void **state)
{
	const uint64_t D = DP_DG_MAX_DEN, S = DP_DG_MAX_SIGMA2;
	assert_int_equal(dp_discrete_gaussian_check(1, 1), SHOAL_OK);
	assert_int_equal(dp_discrete_gaussian_check(0, 1), SHOAL_EINVAL);
	assert_int_equal(dp_discrete_gaussian_check(1, 0), SHOAL_EINVAL);
	assert_int_equal(dp_discrete_gaussian_check(1, D), SHOAL_OK);
	assert_int_equal(dp_discrete_gaussian_check(1, D + 1), SHOAL_EINVAL);
	assert_int_equal(dp_discrete_gaussian_check(S, 1), SHOAL_OK);
	assert_int_equal(dp_discrete_gaussian_check(S + 1, 1), SHOAL_EINVAL);
	assert_int_equal(dp_discrete_gaussian_check(S * D, D), SHOAL_OK);
	assert_int_equal(dp_discrete_gaussian_check(S * D + 1, D), SHOAL_EINVAL);
	assert_int_equal(dp_discrete_gaussian_check(UINT64_MAX, D), SHOAL_EINVAL);

	rng r;
	rng_init(&r, 5, 0);
	assert_true(dp_discrete_gaussian(&r, 0, 1) == DP_SAMPLE_INVALID);
	assert_true(dp_discrete_gaussian(&r, S + 1, 1) == DP_SAMPLE_INVALID);
	assert_true(dp_discrete_laplace(&r, 0, 1) == DP_SAMPLE_INVALID);
	assert_true(dp_discrete_laplace(&r, 1, 0) == DP_SAMPLE_INVALID);
	assert_true(dp_discrete_laplace(&r, 1, DP_DLAP_MAX_T + 1) == DP_SAMPLE_INVALID);

	/* the largest supported sigma^2 = 2^40 with the largest denominator:
	 * sample variance within 5 standard errors (sqrt(2/n) relative) */
	const unsigned n = 20000;
	double sum = 0, sumsq = 0;
	for (unsigned i = 0; i < n; i++) {
		int64_t y = dp_discrete_gaussian(&r, S * D, D);
		assert_true(y != DP_SAMPLE_INVALID);
		sum += (double)y;
		sumsq += (double)y * (double)y;
	}
	double mean = sum / n, var = sumsq / n - mean * mean;
	print_message("sigma^2 2^40: mean %.1f, var/sigma^2 %.4f, n %u\n", mean, var / (double)S, n);
	assert_true(fabs(mean) < 5 * sqrt((double)S / n));
	assert_true(fabs(var / (double)S - 1) < 5 * sqrt(2.0 / n));
	rng_fini(&r);
}

/* Known answers from Python big integers: divmod(a*a, d), q capped. */
static void
test_square_divmod_known_answers(void **state)
{
	static const struct {
		uint64_t a[2], d[2], q, rem[2];
	} v[] = {
		{{0xffffffffffffffffull, 0x0000000000000000ull}, {0x0000000000000003ull, 0x0000000000000000ull}, 0xffffffffffffffffull, {0x0000000000000000ull, 0x0000000000000000ull}},
		{{0x0000010000000007ull, 0x0000000000000000ull}, {0x00000002dfdc1c35ull, 0x0000000000000000ull}, 0x0000590f792b772full, {0x00000000cb932f76ull, 0x0000000000000000ull}},
		{{0x0000000000000000ull, 0x0000000000000001ull}, {0x0000000000003039ull, 0x0200000000000000ull}, 0x000000000000007full, {0xffffffffffe813b9ull, 0x01ffffffffffffffull}},
		{{0x000000003ade68b1ull, 0x0000008000000000ull}, {0xffffffffffffffffull, 0x03ffffffffffffffull}, 0xffffffffffffffffull, {0x0d8988a9f1cc5918ull, 0x0268b10000100000ull}},
		{{0x789abcdef0123456ull, 0x0000000000123456ull}, {0x123456789abcdef1ull, 0x3fffffffffffffffull}, 0x0000052d9b70cfdaull, {0x048c1dc7b54054aaull, 0x2cdcad482db7bf18ull}},
		{{0x0000000000000005ull, 0x0000000000000001ull}, {0x0000000000000001ull, 0x0000000000000000ull}, 0xffffffffffffffffull, {0x0000000000000000ull, 0x0000000000000000ull}},
		{{0x0000000000000000ull, 0x0000000000000040ull}, {0x0000000000000001ull, 0x4000000000000000ull}, 0x0000000000003fffull, {0xffffffffffffc001ull, 0x3fffffffffffffffull}},
		{{0x76543210fedcba98ull, 0x00000000fedcba98ull}, {0x2a3b4c5d6e7f8091ull, 0x02b3c4d5e6f70819ull}, 0xffffffffffffffffull, {0xc42595c455eb291eull, 0x013db9fc0becf57cull}},
	};
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		uint64_t q, rem[2];
		dp_square_divmod(v[i].a, v[i].d, &q, rem);
		assert_true(q == v[i].q);
		assert_true(rem[0] == v[i].rem[0] && rem[1] == v[i].rem[1]);
	}
}

/* ---- lattice Gaussian */

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int
on_lattice(double v, double step)
{
	double k = v / step;
	return k == rint(k) && fabs(k) < 0x1p53;
}

static void
test_gaussian_ks_and_lattice(void **state)
{
	static const double sd[] = {1.7, 3e-3};
	const size_t n = 100000;
	double *v = malloc(n * sizeof *v);
	assert_non_null(v);
	for (size_t s = 0; s < sizeof sd / sizeof sd[0]; s++) {
		double step = dp_gaussian_step(sd[s]);
		/* a power of two with stddev * 2^-20 < step <= stddev * 2^-19 */
		int e;
		assert_true(frexp(step, &e) == 0.5);
		assert_true(step <= sd[s] * 0x1p-19 && step > sd[s] * 0x1p-20);
		rng r;
		rng_init(&r, 300 + s, 0);
		for (size_t i = 0; i < n; i++) {
			v[i] = dp_gaussian(&r, sd[s]);
			assert_true(on_lattice(v[i], step));
		}
		rng_fini(&r);
		qsort(v, n, sizeof *v, cmp_double);
		double d = 0;
		for (size_t i = 0; i < n; i++) {
			double F = 0.5 * erfc(-v[i] / (sd[s] * sqrt(2.0)));
			double lo = F - (double)i / n, hi = (double)(i + 1) / n - F;
			if (lo > d)
				d = lo;
			if (hi > d)
				d = hi;
		}
		print_message("Gaussian stddev %g: KS D*sqrt(n) %.3f (limit 1.95), n %zu, step 2^%d\n",
		              sd[s], d * sqrt((double)n), n, e - 1);
		assert_true(d * sqrt((double)n) < 1.95);
	}
	free(v);

	rng r;
	rng_init(&r, 1, 0);
	assert_true(dp_gaussian(&r, 0) == 0);
	assert_true(isnan(dp_gaussian(&r, -1)));
	assert_true(isnan(dp_gaussian(&r, NAN)));
	assert_true(isnan(dp_gaussian(&r, INFINITY)));
	assert_true(isnan(dp_gaussian(&r, 0x1p-61)));
	assert_true(isnan(dp_gaussian(&r, 0x1p61)));
	assert_false(isnan(dp_gaussian(&r, DP_GAUSS_MIN_STDDEV)));
	assert_false(isnan(dp_gaussian(&r, DP_GAUSS_MAX_STDDEV)));
	assert_true(isnan(dp_gaussian_step(0)));
	rng_fini(&r);
}

/* The reachable outputs depend on x only through its lattice point (the
 * Mironov 2012 attack needs them to depend on x itself): inputs that round
 * to the same lattice point give identical outputs on the same stream, and
 * every output is a lattice point. */
static void
test_gaussian_noise_add_lattice(void **state)
{
	enum { N = 4096 };
	const double sd = 0.5;
	const double step = dp_gaussian_step(sd); /* 2^-20 */
	static float a[N], b[N], c[N];
	for (int i = 0; i < N; i++) {
		a[i] = 0;
		b[i] = (float)(step / 3);              /* rounds to 0 */
		c[i] = (float)(i % 7) * 0.1f - 0.3f;   /* off the lattice */
	}
	rng r1, r2, r3;
	rng_init(&r1, 77, 0);
	rng_init(&r2, 77, 0);
	rng_init(&r3, 77, 0);
	assert_int_equal(dp_gaussian_noise_add(&r1, a, N, sd), SHOAL_OK);
	assert_int_equal(dp_gaussian_noise_add(&r2, b, N, sd), SHOAL_OK);
	assert_int_equal(dp_gaussian_noise_add(&r3, c, N, sd), SHOAL_OK);
	assert_memory_equal(a, b, sizeof a);
	double sumsq = 0;
	for (int i = 0; i < N; i++) {
		/* |noise| < 16 stddev fits float32 exactly at 2^20 points per unit */
		assert_true(on_lattice(a[i], step));
		assert_true(on_lattice(c[i], step));
		float x = (float)(i % 7) * 0.1f - 0.3f;
		double base = rint((double)x / step) * step;
		/* same stream: c's noise is a's noise */
		assert_true((double)c[i] - base == (double)a[i]);
		sumsq += (double)a[i] * a[i];
	}
	double var = sumsq / N;
	assert_true(fabs(var / (sd * sd) - 1) < 5 * sqrt(2.0 / N));

	/* errors leave x untouched */
	float x[3] = {1, NAN, 2}, y[3] = {1, 2, 3};
	const float y0[3] = {1, 2, 3};
	assert_int_equal(dp_gaussian_noise_add(&r1, x, 3, sd), SHOAL_ENONFINITE);
	assert_true(x[0] == 1 && isnan(x[1]) && x[2] == 2);
	x[1] = INFINITY;
	assert_int_equal(dp_gaussian_noise_add(&r1, x, 3, sd), SHOAL_ENONFINITE);
	assert_int_equal(dp_gaussian_noise_add(&r1, y, 3, -1), SHOAL_EINVAL);
	assert_int_equal(dp_gaussian_noise_add(&r1, y, 3, NAN), SHOAL_EINVAL);
	assert_int_equal(dp_gaussian_noise_add(&r1, y, 3, 1e300), SHOAL_EINVAL);
	assert_int_equal(dp_gaussian_noise_add(&r1, NULL, 3, 1), SHOAL_EINVAL);
	assert_int_equal(dp_gaussian_noise_add(&r1, y, 3, 0), SHOAL_OK);
	assert_memory_equal(y, y0, sizeof y);
	assert_int_equal(dp_gaussian_noise_add(&r1, NULL, 0, 1), SHOAL_OK);
	rng_fini(&r1);
	rng_fini(&r2);
	rng_fini(&r3);
}

/* ---- determinism */

static void
draw_all(uint64_t seed, uint64_t stream, int64_t *out, double *g)
{
	rng r;
	rng_init(&r, seed, stream);
	for (int i = 0; i < 16; i++) {
		out[3 * i] = dp_discrete_gaussian(&r, 1000, 7);
		out[3 * i + 1] = dp_discrete_laplace(&r, 3, 7);
		out[3 * i + 2] = dp_bernoulli_exp(&r, 1, 2);
		g[i] = dp_gaussian(&r, 2.5);
	}
	rng_fini(&r);
}

static void
test_noise_determinism(void **state)
{
	int64_t a[48], b[48], c[48];
	double ga[16], gb[16], gc[16];
	draw_all(9, 1, a, ga);
	draw_all(9, 1, b, gb);
	draw_all(9, 2, c, gc);
	assert_memory_equal(a, b, sizeof a);
	assert_memory_equal(ga, gb, sizeof ga);
	assert_memory_not_equal(a, c, sizeof a);
	assert_memory_not_equal(ga, gc, sizeof ga);
}

/* ---- clipping */

static void
test_clip_l2(void **state)
{
	float v[2] = {3, 4};
	assert_true(dp_l2_norm(v, 2) == 5);
	assert_true(dp_clip_l2(v, 2, 1) == 5);
	assert_true(dp_l2_norm(v, 2) <= 1);
	assert_true(dp_l2_norm(v, 2) > 1 - 1e-6);
	assert_true(fabs(v[0] - 0.6f) < 1e-6 && fabs(v[1] - 0.8f) < 1e-6);

	/* under the bound: untouched, bit for bit */
	float u[3] = {0.1f, -0.2f, 0.3f}, u0[3];
	memcpy(u0, u, sizeof u);
	double nu = dp_clip_l2(u, 3, 1);
	assert_true(fabs(nu - sqrt(0.01 + 0.04 + 0.09)) < 1e-7);
	assert_memory_equal(u, u0, sizeof u);
	assert_true(dp_clip_l2(u, 0, 1) == 0);

	/* random vectors: the bound holds exactly, the norm is c to 1e-6 */
	rng r;
	rng_init(&r, 21, 0);
	enum { MAXN = 5000 };
	static float x[MAXN];
	for (int t = 0; t < 200; t++) {
		size_t n = 1 + rng_below(&r, MAXN);
		double mag = ldexp(1.0, (int)rng_below(&r, 40) - 20);
		for (size_t i = 0; i < n; i++)
			x[i] = (float)(((double)rng_below(&r, 2000001) - 1000000) * 1e-6 * mag);
		double before = dp_l2_norm(x, n);
		double c = before * (0.01 + 0.98 * rng_below(&r, 1000) / 1000.0);
		if (c == 0)
			continue;
		assert_true(dp_clip_l2(x, n, c) == before);
		double after = dp_l2_norm(x, n);
		assert_true(after <= c);
		assert_true(after >= c * (1 - 1e-6));
	}
	rng_fini(&r);

	/* bad input: NaN returned, x untouched */
	float w[3] = {1, NAN, 1};
	assert_true(isnan(dp_clip_l2(w, 3, 1)));
	assert_true(w[0] == 1 && isnan(w[1]) && w[2] == 1);
	w[1] = INFINITY;
	assert_true(isnan(dp_clip_l2(w, 3, 1)));
	assert_true(w[0] == 1 && isinf(w[1]) && w[2] == 1);
	float z[2] = {3, 4};
	assert_true(isnan(dp_clip_l2(z, 2, 0)));
	assert_true(isnan(dp_clip_l2(z, 2, -1)));
	assert_true(isnan(dp_clip_l2(z, 2, NAN)));
	assert_true(isnan(dp_clip_l2(z, 2, INFINITY)));
	assert_true(z[0] == 3 && z[1] == 4);
}

/* ---- randomized Hadamard rotation */

static double
rel_err(const float *a, const float *b, size_t n)
{
	double d = 0, s = 0;
	for (size_t i = 0; i < n; i++) {
		d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		s += (double)b[i] * b[i];
	}
	return sqrt(d / s);
}

static void
test_rht_roundtrip_and_norm(void **state)
{
	static const size_t dims[] = {1, 2, 4, 8, 1024, 1 << 16};
	uint8_t seed[DP_RHT_SEED_BYTES], seed2[DP_RHT_SEED_BYTES];
	for (int i = 0; i < DP_RHT_SEED_BYTES; i++) {
		seed[i] = (uint8_t)i;
		seed2[i] = (uint8_t)(i + 1);
	}
	rng r;
	rng_init(&r, 31, 0);
	for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
		size_t n = dims[k];
		float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y),
		      *z = malloc(n * sizeof *z);
		assert_non_null(x);
		assert_non_null(y);
		assert_non_null(z);
		for (size_t i = 0; i < n; i++)
			x[i] = (float)((double)rng_below(&r, 2000001) - 1000000) * 1e-6f;
		x[0] = 1; /* never all zero */
		memcpy(y, x, n * sizeof *x);
		memcpy(z, x, n * sizeof *x);
		assert_int_equal(dp_rht_forward(y, n, seed), SHOAL_OK);
		double nx = dp_l2_norm(x, n), ny = dp_l2_norm(y, n);
		assert_true(fabs(ny / nx - 1) < 1e-5);
		if (n >= 4) {
			assert_true(rel_err(y, x, n) > 0.1);
			assert_int_equal(dp_rht_forward(z, n, seed2), SHOAL_OK);
			assert_true(rel_err(y, z, n) > 0.1); /* another seed, another rotation */
		}
		assert_int_equal(dp_rht_inverse(y, n, seed), SHOAL_OK);
		double e = rel_err(y, x, n);
		print_message("RHT n %zu: norm ratio - 1 = %.2e, roundtrip rel err %.2e\n", n,
		              ny / nx - 1, e);
		assert_true(e < 1e-5);
		free(x);
		free(y);
		free(z);
	}
	rng_fini(&r);

	/* a spike spreads evenly: every coordinate of H D e_j is +-1/sqrt(n) */
	enum { N = 256 };
	float s[N] = {0};
	s[37] = 1;
	assert_int_equal(dp_rht_forward(s, N, seed), SHOAL_OK);
	int pos = 0;
	for (int i = 0; i < N; i++) {
		assert_true(fabs(fabsf(s[i]) - 1.0 / 16) < 1e-7);
		pos += s[i] > 0;
	}
	assert_true(pos > 0 && pos < N); /* only column 0 of H is constant */
}

static void
test_rht_dims_and_padding(void **state)
{
	assert_int_equal(dp_rht_dim(0), 1);
	assert_int_equal(dp_rht_dim(1), 1);
	assert_int_equal(dp_rht_dim(3), 4);
	assert_int_equal(dp_rht_dim(1000), 1024);
	assert_int_equal(dp_rht_dim(1024), 1024);
	assert_true(dp_rht_dim(DP_RHT_MAX_DIM) == DP_RHT_MAX_DIM);
	assert_int_equal(dp_rht_dim(DP_RHT_MAX_DIM + 1), 0);

	uint8_t seed[DP_RHT_SEED_BYTES] = {7};
	float x[1000], p[1024] = {0};
	for (int i = 0; i < 1000; i++)
		x[i] = (float)(i % 13) - 6.0f;
	memcpy(p, x, sizeof x);
	assert_int_equal(dp_rht_forward(p, 1000, seed), SHOAL_EINVAL);
	assert_int_equal(dp_rht_forward(p, 0, seed), SHOAL_EINVAL);
	assert_int_equal(dp_rht_forward(NULL, 4, seed), SHOAL_EINVAL);
	assert_int_equal(dp_rht_inverse(p, 1000, seed), SHOAL_EINVAL);
	assert_int_equal(dp_rht_forward(p, dp_rht_dim(1000), seed), SHOAL_OK);
	assert_int_equal(dp_rht_inverse(p, dp_rht_dim(1000), seed), SHOAL_OK);
	assert_true(rel_err(p, x, 1000) < 1e-5);
	for (int i = 1000; i < 1024; i++)
		assert_true(fabsf(p[i]) < 1e-4f);

	/* n = 1: H = 1, so the rotation is a random sign */
	float one = 2.5f;
	assert_int_equal(dp_rht_forward(&one, 1, seed), SHOAL_OK);
	assert_true(one == 2.5f || one == -2.5f);
	assert_int_equal(dp_rht_inverse(&one, 1, seed), SHOAL_OK);
	assert_true(one == 2.5f);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bernoulli_exp_frequency),
		cmocka_unit_test(test_discrete_gaussian_fit),
		cmocka_unit_test(test_discrete_laplace_fit),
		cmocka_unit_test(test_discrete_gaussian_range),
		cmocka_unit_test(test_square_divmod_known_answers),
		cmocka_unit_test(test_gaussian_ks_and_lattice),
		cmocka_unit_test(test_gaussian_noise_add_lattice),
		cmocka_unit_test(test_noise_determinism),
		cmocka_unit_test(test_clip_l2),
		cmocka_unit_test(test_rht_roundtrip_and_norm),
		cmocka_unit_test(test_rht_dims_and_padding),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
