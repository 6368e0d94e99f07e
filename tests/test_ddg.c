/* test_ddg.c - distributed differential privacy: the distributed discrete
 * Gaussian's accountant against independently computed values, the client
 * encoding and server decoding (privacy/ddg.h), the TASK "sa" DP block, and
 * the server and client cores running --dp distributed in memory: the
 * noise in an unmasked sum of zero updates has the sized variance,
 * training through the rotation and the ring works, too few survivors
 * abort, epsilon per round is what the accountant formula and shoal-dp
 * say, and the configurations distributed DP needs are enforced. */
#include "testutil.h"
#include "dptool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "client/core.h"
#include "common/msg.h"
#include "ml/ml.h"
#include "privacy/ddg.h"
#include "privacy/noise.h"
#include "privacy/rdp.h"
#include "privacy/secagg.h"
#include "server/core.h"
#include "server/dp.h"


static bool
close_rel(double a, double b, double tol)
{
	return fabs(a - b) <= tol * fabs(b);
}

/* ---- accounting ------------------------------------------------------------ */

/* Reference values from an independent Python implementation (mpmath at 40
 * digits) of Kairouz et al.'s Proposition 14 and Zhu and Wang's general
 * subsampling bound, written from the formulas of the paper's reference
 * code (google-research/federated distributed_dp/accounting_utils.py),
 * orders 2..128 and 256. */
static void
test_ddg_epsilon_reference(void **state)
{
	static const struct {
		double sigma2;
		uint32_t n;
		double dim, l2, l1, q;
		uint64_t steps;
		double delta, eps, order, tau;
	} v[] = {
	    /* the shape of a logreg run: tau underflows */
	    {1e6, 75, 8192, 2049, 2049 * 90.50966799187809, 0.1, 100, 1e-5, 2.6392399712122483, 7,
	     0},
	    /* small noise: tau matters */
	    {1, 10, 1000, 3, 9, 0.1, 50, 1e-5, 6.811914265318404, 3, 0.0005435242581620002},
	    {0.5, 100, 64, 2, 4, 1.0, 1, 1e-5, 7.141672697855458, 4, 0.16579943130749372},
	    {25, 50, 4096, 20, 400, 0.05, 200, 1e-6, 3.252944295903007, 7, 6.952351975877423e-107},
	};
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		dp_ddg m = {v[i].sigma2, v[i].n, v[i].dim, v[i].l2, v[i].l1, DP_DDG_SUB_GENERAL};
		double eps, order;
		assert_int_equal(dp_ddg_epsilon(&m, v[i].q, v[i].steps, v[i].delta, &eps, &order),
		                 SHOAL_OK);
		assert_true(close_rel(eps, v[i].eps, 1e-9));
		assert_true(order == v[i].order);
		double tau = dp_ddg_tau(v[i].sigma2, v[i].n);
		assert_true(v[i].tau == 0 ? tau == 0 : close_rel(tau, v[i].tau, 1e-9));
	}
	/* Single orders of the second case, general and binomial. */
	dp_ddg m = {1, 10, 1000, 3, 9, DP_DDG_SUB_GENERAL};
	assert_true(close_rel(dp_rdp_ddg(&m, 0.1, 2), 0.014572832317750806, 1e-9));
	assert_true(close_rel(dp_rdp_ddg(&m, 0.1, 5), 0.1758038494521938, 1e-9));
	assert_true(close_rel(dp_rdp_ddg(&m, 0.1, 32), 12.112804481559246, 1e-9));
	m.sub = DP_DDG_SUB_BINOMIAL;
	assert_true(close_rel(dp_rdp_ddg(&m, 0.1, 5), 0.08513656177253989, 1e-9));
	assert_true(close_rel(dp_rdp_ddg(&m, 0.1, 32), 12.077365375473178, 1e-9));
	/* q = 1 takes fractional orders; q < 1 only integer ones. */
	dp_ddg c = {0.5, 100, 64, 2, 4, DP_DDG_SUB_GENERAL};
	assert_true(close_rel(dp_rdp_ddg(&c, 1.0, 2.5), 2.5336319181398705, 1e-9));
	assert_true(isnan(dp_rdp_ddg(&c, 0.5, 2.5)));
	assert_true(dp_rdp_ddg(&c, 0.0, 3) == 0);
	c.sigma2 = 0.2; /* below the theorem's sigma >= 1/2 */
	assert_true(isnan(dp_rdp_ddg(&c, 0.5, 3)));
}

/* With tau = 0 the binomial bound is the subsampled Gaussian's RDP at the
 * effective noise multiplier sqrt(n sigma2) / l2 (rdp.h), and the general
 * bound is never below it. */
static void
test_ddg_binomial_is_subsampled_gaussian(void **state)
{
	const double z = 1.3, l2 = 2000;
	dp_ddg m = {z * z * l2 * l2 / 50, 50, 8192, l2, l2 * 90.5, DP_DDG_SUB_BINOMIAL};
	assert_true(dp_ddg_tau(m.sigma2, m.n) == 0);
	for (int a = 2; a <= 128; a += 7) {
		double b = dp_rdp_ddg(&m, 0.1, a), g = dp_rdp_sgm(0.1, z, a);
		assert_true(close_rel(b, g, 1e-9));
		m.sub = DP_DDG_SUB_GENERAL;
		assert_true(dp_rdp_ddg(&m, 0.1, a) >= b * (1 - 1e-12));
		m.sub = DP_DDG_SUB_BINOMIAL;
	}
}

static void
test_ddg_calibrate(void **state)
{
	dp_ddg m = {1, 75, 8192, 2049, 2049 * 90.5, DP_DDG_SUB_GENERAL};
	const double targets[] = {1, 4, 8};
	for (int s = 0; s < 2; s++, m.sub = DP_DDG_SUB_BINOMIAL)
		for (size_t i = 0; i < 3; i++) {
			double z, eps;
			assert_int_equal(dp_ddg_calibrate(&m, 0.1, 100, 1e-5, targets[i], &z), SHOAL_OK);
			dp_ddg t = m;
			t.sigma2 = z * z * m.l2 * m.l2 / m.n;
			assert_int_equal(dp_ddg_epsilon(&t, 0.1, 100, 1e-5, &eps, NULL), SHOAL_OK);
			assert_true(eps <= targets[i]);
			double z0 = z - 1e-6;
			t.sigma2 = z0 * z0 * m.l2 * m.l2 / m.n;
			assert_int_equal(dp_ddg_epsilon(&t, 0.1, 100, 1e-5, &eps, NULL), SHOAL_OK);
			assert_true(eps > targets[i]);
		}
	double z;
	assert_int_equal(dp_ddg_calibrate(&m, 0.1, 100, 1e-5, 1e-4, &z), SHOAL_EINVAL);
	assert_int_equal(dp_ddg_calibrate(&m, 0.0, 100, 1e-5, 1, &z), SHOAL_EINVAL);
}

/* A custom per-step vector in the accountant: cached steps, peek, a switch
 * to the Gaussian and back, and the save format. */
static void
test_ddg_accountant_cached_vector(void **state)
{
	double orders[DP_DDG_ORDERS], step[DP_DDG_ORDERS], eps, peek, want;
	size_t n = dp_ddg_orders(orders);
	dp_accountant acc;
	dp_ddg m = {4e4, 20, 4096, 300, 300 * 64, DP_DDG_SUB_GENERAL};

	assert_int_equal(n, DP_DDG_ORDERS);
	assert_true(orders[0] == 2 && orders[126] == 128 && orders[127] == 256);
	assert_int_equal(dp_accountant_init(&acc, orders, n, 1e-5), SHOAL_OK);
	assert_int_equal(dp_accountant_add_cached(&acc, 1), SHOAL_EINVAL); /* none cached */
	for (size_t i = 0; i < n; i++)
		step[i] = dp_rdp_ddg(&m, 0.2, orders[i]);
	step[3] = -1;
	assert_int_equal(dp_accountant_use_rdp(&acc, step), SHOAL_EINVAL);
	step[3] = dp_rdp_ddg(&m, 0.2, orders[3]);
	assert_int_equal(dp_accountant_use_rdp(&acc, step), SHOAL_OK);
	assert_int_equal(dp_accountant_peek_cached(&acc, 30, &peek), SHOAL_OK);
	assert_int_equal(dp_accountant_add_cached(&acc, 30), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&acc, &eps, NULL), SHOAL_OK);
	assert_int_equal(dp_ddg_epsilon(&m, 0.2, 30, 1e-5, &want, NULL), SHOAL_OK);
	assert_true(eps == peek);
	assert_true(close_rel(eps, want, 1e-12));
	/* Gaussian steps in between, then the cached vector again. */
	assert_int_equal(dp_accountant_add(&acc, 0.2, 2.0, 5), SHOAL_OK);
	assert_int_equal(dp_accountant_use_rdp(&acc, step), SHOAL_OK);
	assert_int_equal(dp_accountant_add_cached(&acc, 10), SHOAL_OK);
	double rdp[DP_DDG_ORDERS];
	for (size_t i = 0; i < n; i++)
		rdp[i] = 40 * step[i] + 5 * dp_rdp_sgm(0.2, 2.0, orders[i]);
	assert_int_equal(dp_epsilon(orders, rdp, n, 1e-5, &want, NULL), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&acc, &eps, NULL), SHOAL_OK);
	assert_true(close_rel(eps, want, 1e-12));
	/* Saved and loaded, the spent RDP is the same. */
	uint8_t buf[DP_SAVE_BYTES(DP_DDG_ORDERS)];
	assert_int_equal(dp_accountant_save(&acc, buf, sizeof buf), (int)sizeof buf);
	dp_accountant b;
	assert_int_equal(dp_accountant_load(&b, buf, sizeof buf), (int)sizeof buf);
	assert_int_equal(dp_accountant_epsilon(&b, &want, NULL), SHOAL_OK);
	assert_true(close_rel(eps, want, 1e-15));
	dp_accountant_fini(&b);
	dp_accountant_fini(&acc);
}

/* ---- encoding ---------------------------------------------------------------- */

static void
enc_init(dp_ddg_enc *p, uint32_t n_idx, double clip, double gamma, uint64_t num, uint32_t den)
{
	p->n_idx = n_idx;
	p->dim = (uint32_t)dp_rht_dim(n_idx);
	p->clip = clip;
	p->gamma = gamma;
	p->l2max2 = dp_ddg_l2max2(clip / gamma, p->dim);
	p->s2_num = num;
	p->s2_den = den;
}

static void
random_vector(rng *r, float *v, uint32_t n, double norm)
{
	for (uint32_t j = 0; j < n; j++)
		v[j] = (float)((double)(rng_u64(r) >> 11) * 0x1p-53 - 0.5);
	double s = dp_l2_norm(v, n);
	for (uint32_t j = 0; j < n; j++)
		v[j] = (float)(v[j] * norm / s);
	(void)dp_clip_l2(v, n, norm);
}

static void
test_ddg_bounds(void **state)
{
	/* c = 2048 in 8192 coordinates: c^2 + 2048 + (2048 + 45.25) */
	uint64_t b = dp_ddg_l2max2(2048, 8192);
	double c = 2048 * (1 + 0x1p-20);
	assert_true(b == (uint64_t)floor(c * c + 2048 + c + sqrt(8192) / 2));
	c = 3.7 * (1 + 0x1p-20);
	assert_true(dp_ddg_l2max2(3.7, 16) == (uint64_t)floor(c * c + 4 + c + 2));

	dp_ddg_enc p;
	enc_init(&p, 7850, 1.0, 1.0 / 2048, 700000ull << 20, 1u << 20);
	assert_int_equal(p.dim, 8192);
	assert_int_equal(dp_ddg_check(&p), SHOAL_OK);
	double bound = dp_ddg_sum_bound(&p, 100);
	assert_true(close_rel(bound, 100 * (10 * 2048 / sqrt(8192) + 1) + 10 * 10 * sqrt(700000.0),
	                      1e-12));
	uint32_t m, m2;
	assert_int_equal(dp_ddg_ring_bits(&p, 100, &m), SHOAL_OK);
	assert_true(bound < ldexp(1, (int)m - 1) && bound >= ldexp(1, (int)m - 2));
	assert_int_equal(dp_ddg_ring_bits(&p, 10000, &m2), SHOAL_OK);
	assert_true(m2 > m);
	p.s2_num = 1ull << 60; /* sigma^2 = 2^40: too wide for 32 bits with many clients */
	assert_int_equal(dp_ddg_ring_bits(&p, 65535, &m), SHOAL_EINVAL);
	p.dim = 4096; /* not the padded size */
	assert_int_equal(dp_ddg_check(&p), SHOAL_EINVAL);
}

/* n clients' vectors through encode, the ring sum and decode, with noise
 * too small to draw anything but 0 (sigma^2 = 2^-20): the decoded sum is
 * the true sum up to the rounding, whose error vector has squared norm
 * about n dim / 6 steps^2 (at most n dim / 4 in expectation). Values are
 * negative too, so two's complement wraps are exercised. */
static void
test_ddg_round_trip_through_ring(void **state)
{
	enum { N_IDX = 1000, N = 7 };
	dp_ddg_enc p;
	enc_init(&p, N_IDX, 2.0, 2.0 / 512, 1, 1u << 20);
	uint32_t m;
	assert_int_equal(dp_ddg_ring_bits(&p, N, &m), SHOAL_OK);
	uint8_t session[32], seed[DP_DDG_SEED_BYTES];
	for (int i = 0; i < 32; i++)
		session[i] = (uint8_t)i;
	dp_ddg_rotation_seed(session, seed);
	float *v = malloc(N_IDX * sizeof *v), *scratch = malloc(p.dim * sizeof *scratch);
	uint32_t *x = malloc(p.dim * sizeof *x), *sum = calloc(p.dim, sizeof *sum);
	double *truth = calloc(N_IDX, sizeof *truth), *out = malloc(N_IDX * sizeof *out);
	rng r;
	rng_init(&r, 3, 4);
	const uint32_t mask = (UINT32_C(1) << m) - 1;
	for (int i = 0; i < N; i++) {
		random_vector(&r, v, N_IDX, i == 0 ? 2.0 : 0.25 * (i + 1));
		for (uint32_t j = 0; j < N_IDX; j++)
			truth[j] += v[j];
		assert_int_equal(dp_ddg_encode(&p, v, seed, m, &r, scratch, x), SHOAL_OK);
		for (uint32_t j = 0; j < p.dim; j++) {
			assert_true(x[j] <= mask);
			sum[j] = (sum[j] + x[j]) & mask;
		}
		for (uint32_t j = 0; j < p.dim; j++) /* wiped */
			assert_true(scratch[j] == 0);
	}
	assert_int_equal(dp_ddg_decode(&p, sum, m, seed, scratch, out), SHOAL_OK);
	double err2 = 0, amax = 0;
	for (uint32_t j = 0; j < N_IDX; j++) {
		err2 += (out[j] - truth[j]) * (out[j] - truth[j]);
		amax = fmax(amax, fabs(truth[j]));
	}
	double step2 = p.gamma * p.gamma;
	assert_true(err2 <= N * p.dim * step2 / 4 * 1.2);
	assert_true(err2 >= N * p.dim * step2 / 6 * 0.5); /* it did round */
	assert_true(amax > 10 * sqrt(err2 / N_IDX));
	/* Another seed decodes to something else entirely. */
	seed[0] ^= 1;
	assert_int_equal(dp_ddg_decode(&p, sum, m, seed, scratch, out), SHOAL_OK);
	double bad = 0;
	for (uint32_t j = 0; j < N_IDX; j++)
		bad += (out[j] - truth[j]) * (out[j] - truth[j]);
	assert_true(bad > 100 * err2);
	rng_fini(&r);
	free(v);
	free(scratch);
	free(x);
	free(sum);
	free(truth);
	free(out);
}

/* The conditional rounding: every encoded vector (noise ~0) has squared
 * norm <= l2max2 in the integer domain, even at exactly the clip norm
 * where plain rounding would often exceed c^2; a vector far beyond the
 * clip is refused rather than sent with a larger sensitivity. */
static void
test_ddg_conditional_rounding(void **state)
{
	enum { N_IDX = 100 };
	dp_ddg_enc p;
	enc_init(&p, N_IDX, 1.0, 1.0 / 16, 1, 1u << 20); /* c = 16: rounding is coarse */
	uint32_t m = 24, x[128];
	float v[N_IDX], scratch[128];
	uint8_t seed[DP_DDG_SEED_BYTES] = {7};
	rng r;
	rng_init(&r, 9, 9);
	uint64_t worst = 0, above_c2 = 0;
	for (int t = 0; t < 300; t++) {
		random_vector(&r, v, N_IDX, 1.0);
		assert_int_equal(dp_ddg_encode(&p, v, seed, m, &r, scratch, x), SHOAL_OK);
		uint64_t ss = 0;
		for (uint32_t j = 0; j < p.dim; j++) {
			int64_t y = x[j] >= (1u << 23) ? (int64_t)x[j] - (1 << 24) : (int64_t)x[j];
			ss += (uint64_t)(y * y);
		}
		assert_true(ss <= p.l2max2);
		worst = ss > worst ? ss : worst;
		above_c2 += ss > 256;
	}
	assert_true(above_c2 > 0); /* rounding does inflate the norm */
	assert_true(worst <= p.l2max2);
	random_vector(&r, v, N_IDX, 20.0);
	assert_int_equal(dp_ddg_encode(&p, v, seed, m, &r, scratch, x), SHOAL_ETIMEDOUT);
	v[5] = NAN;
	assert_int_equal(dp_ddg_encode(&p, v, seed, m, &r, scratch, x), SHOAL_ENONFINITE);
	rng_fini(&r);
}

/* t clients encode zero vectors: the signed ring sum is the sum of their
 * noise, whose sample variance over the coordinates is t sigma_c^2. */
static void
test_ddg_noise_variance_of_sum(void **state)
{
	enum { N_IDX = 16000, T = 5 };
	dp_ddg_enc p;
	/* sigma_c^2 = 1234.5678 as a rational with denominator 2^20 */
	uint64_t num = (uint64_t)llround(1234.5678 * 1048576);
	enc_init(&p, N_IDX, 1.0, 1.0 / 1024, num, 1u << 20);
	double s2 = (double)num / (1u << 20);
	uint32_t m;
	assert_int_equal(dp_ddg_ring_bits(&p, T, &m), SHOAL_OK);
	const uint32_t mask = (UINT32_C(1) << m) - 1;
	float *v = calloc(N_IDX, sizeof *v), *scratch = malloc(p.dim * sizeof *scratch);
	uint32_t *x = malloc(p.dim * sizeof *x), *sum = calloc(p.dim, sizeof *sum);
	uint8_t seed[DP_DDG_SEED_BYTES] = {1, 2, 3};
	rng r;
	rng_init(&r, 77, 1);
	for (int i = 0; i < T; i++) {
		assert_int_equal(dp_ddg_encode(&p, v, seed, m, &r, scratch, x), SHOAL_OK);
		for (uint32_t j = 0; j < p.dim; j++)
			sum[j] = (sum[j] + x[j]) & mask;
	}
	double s1 = 0, sq = 0;
	for (uint32_t j = 0; j < p.dim; j++) {
		int64_t y = sum[j] >= (mask >> 1) + 1 ? (int64_t)sum[j] - (int64_t)mask - 1
		                                       : (int64_t)sum[j];
		s1 += (double)y;
		sq += (double)y * (double)y;
	}
	double n = p.dim, mean = s1 / n, var = (sq - s1 * mean) / (n - 1);
	/* the sample variance of 16384 values: relative sd sqrt(2/n) = 1.1% */
	assert_true(close_rel(var, T * s2, 5 * sqrt(2 / n)));
	assert_true(fabs(mean) < 5 * sqrt(T * s2 / n));
	rng_fini(&r);
	free(v);
	free(scratch);
	free(x);
	free(sum);
}

/* ---- TASK "sa" DP block ------------------------------------------------------ */

static void
test_ddg_task_block(void **state)
{
	uint32_t idx[5] = {3, 200, 201, 1000, 7000};
	sa_task t = {0}, u;
	t.c = (sa_config){.n = 3, .k = 2, .t = 2, .m = 20, .d = 9, .round = 7, .ddp = true};
	for (int i = 0; i < 32; i++)
		t.c.session[i] = (uint8_t)i;
	t.me = 2;
	t.phase_ms = 30000;
	t.scale = 1.0f / 2048;
	t.levels = 1;
	t.wmax = 1;
	t.n_idx = 5;
	t.idx = idx;
	t.clip = 0.5f;
	t.s2_num = UINT64_C(58698627373);
	t.s2_den = 1u << 20;
	t.l2max2 = UINT64_C(4198453);
	uint8_t buf[256];
	long len = sa_task_write(&t, buf, sizeof buf);
	assert_true(len == 81 + SA_TASK_DDP_BYTES + 1 + 2 + 1 + 2 + 2);
	assert_int_equal(buf[56], 2); /* flags bit 1 */
	assert_int_equal(sa_task_read(&u, buf, (size_t)len, 7850), SHOAL_OK);
	assert_true(u.c.ddp && u.clip == 0.5f && u.s2_num == t.s2_num && u.s2_den == t.s2_den &&
	            u.l2max2 == t.l2max2 && u.scale == t.scale && u.n_idx == 5 && u.c.d == 9);
	assert_memory_equal(u.idx, idx, sizeof idx);
	sa_task_fini(&u);
	for (long l = 0; l < len; l++) {
		shoal_err e = sa_task_read(&u, buf, (size_t)l, 7850);
		assert_true(e == SHOAL_ETRUNC || e == SHOAL_EMALFORMED);
		sa_task_fini(&u);
	}
	/* d must be the padded size + 1; levels and wmax 1; a sane variance. */
	t.c.d = 6;
	assert_true(sa_task_write(&t, buf, sizeof buf) < 0);
	t.c.d = 9;
	t.levels = 127;
	assert_true(sa_task_write(&t, buf, sizeof buf) < 0);
	t.levels = 1;
	t.s2_den = 0;
	assert_true(sa_task_write(&t, buf, sizeof buf) < 0);
	t.s2_den = 1u << 20;
	len = sa_task_write(&t, buf, sizeof buf);
	uint8_t bad[256];
	memcpy(bad, buf, (size_t)len);
	bad[56] = 0; /* without the DP bit d = 9 does not fit 5 indices */
	assert_int_equal(sa_task_read(&u, bad, (size_t)len, 7850), SHOAL_EMALFORMED);
	sa_task_fini(&u);
	memcpy(bad, buf, (size_t)len);
	bad[56] = 4; /* unknown flag */
	assert_int_equal(sa_task_read(&u, bad, (size_t)len, 7850), SHOAL_EMALFORMED);
	sa_task_fini(&u);
	memcpy(bad, buf, (size_t)len);
	memset(bad + 81 + 12, 0, 4); /* s2_den = 0 */
	assert_int_equal(sa_task_read(&u, bad, (size_t)len, 7850), SHOAL_EMALFORMED);
	sa_task_fini(&u);
	memcpy(bad, buf, (size_t)len);
	memset(bad + 81, 0, 4); /* clip = 0 */
	assert_int_equal(sa_task_read(&u, bad, (size_t)len, 7850), SHOAL_EMALFORMED);
	sa_task_fini(&u);
}

/* ---- the cores, in memory --------------------------------------------------- */

#define NC 8
#define MAXR 16

typedef struct ddp_run {
	/* in */
	uint32_t n, rounds, t_min, secagg;
	double q, z, lr;
	bool train;           /* else every client sends a zero update */
	uint32_t drop_round, drop_phase, drop_count; /* clients that die */
	/* out */
	srv_round_stats end[MAXR + 1];
	uint32_t n_ends, abandoned;
	double var_ratio[MAXR + 1]; /* sample variance of the model's change /
	                               the variance the noise was sized for */
	double mean_change[MAXR + 1];
	double acc;
	dp_ddg mech;
	dp_ddg_enc enc;
} ddp_run;

static ml_dataset TRAIN, TEST;
static ml_partition PART;
static bool HAVE_DATA;

static void
load_data(void)
{
	if (HAVE_DATA)
		return;
	assert_int_equal(ml_mnist_load(SHOAL_DATA_DIR, "train", &TRAIN), SHOAL_OK);
	assert_int_equal(ml_mnist_load(SHOAL_DATA_DIR, "t10k", &TEST), SHOAL_OK);
	assert_int_equal(ml_partition_make("iid", &TRAIN, NC, 5, &PART), SHOAL_OK);
	HAVE_DATA = true;
}

static void
ddp_config(srv_config *c, const ddp_run *o)
{
	srv_config_defaults(c);
	c->model = "logreg";
	c->rounds = o->rounds;
	c->clients_per_round = 4;
	c->min_clients = o->n;
	c->min_reports = 1;
	c->secagg = o->secagg ? o->secagg : SRV_SECAGG_FULL;
	c->secagg_phase_ms = 1000;
	c->round_timeout_ms = 5000;
	c->lr = (float)(o->lr > 0 ? o->lr : 0.1);
	c->test = &TEST;
	c->seed = 11;
	c->compress = "none";
	c->downlink_q8 = false; /* the released change is exactly params' change */
	c->sampling = SRV_SAMPLING_POISSON;
	c->sample_rate = o->q;
	c->dp = SRV_DP_DISTRIBUTED;
	c->clip = 1.0;
	c->noise_multiplier = o->z;
	c->dp_min_clients = o->t_min;
}

static void
ddp_run_cores(ddp_run *o)
{
	load_data();
	srv_config cfg;
	ddp_config(&cfg, o);
	srv_core *s;
	assert_int_equal(srv_core_new(&cfg, &s), SHOAL_OK);
	size_t dim;
	srv_core_params(s, &dim);
	const srv_dp *dp = srv_core_dp(s);
	assert_non_null(srv_dp_ddg(dp));
	o->enc = *srv_dp_ddg(dp);
	o->mech = *srv_dp_ddg_mechanism(dp);
	float *prev = malloc(dim * sizeof *prev);
	memcpy(prev, srv_core_params(s, NULL), dim * sizeof *prev);

	cli_core *c[NC];
	ml_model *model;
	assert_int_equal(ml_model_new("logreg", 10, &model), SHOAL_OK);
	for (uint32_t i = 0; i < o->n; i++) {
		char name[16];
		snprintf(name, sizeof name, "c%u", i);
		cli_config cc = {.name = name, .model = "logreg", .dim = (uint32_t)dim,
		                 .n_examples = PART.start[i + 1] - PART.start[i],
		                 .cx_caps = MSG_CX_ALL, .error_feedback = true, .seed = 5,
		                 .dp_noise_from_seed = i % 2 == 0};
		assert_int_equal(cli_core_new(&cc, &c[i]), SHOAL_OK);
	}
	bool pending[NC] = {false}, dead[NC] = {false};
	uint32_t dropped = 0;
	uint64_t now = 0;
	int done = 0, guard = 0;
	while (done < (int)o->n && guard++ < 200000) {
		done = 0;
		for (uint32_t i = 0; i < o->n; i++) {
			if (dead[i]) {
				done++;
				continue;
			}
			if (pending[i])
				continue;
			cli_step st;
			cli_core_step(c[i], now, &st);
			if (st.action == CLI_DONE) {
				assert_int_equal(st.err, SHOAL_OK);
				done++;
			} else if (st.action == CLI_TRAIN) {
				if (o->train) {
					const uint32_t *idx = PART.idx + PART.start[i];
					size_t n = PART.start[i + 1] - PART.start[i];
					ml_sgd_config sc = {.epochs = st.epochs, .batch = st.batch, .lr = st.lr,
					                    .seed = st.seed};
					double loss;
					assert_int_equal(ml_train_sgd(model, st.params, &TRAIN, idx, n, &sc, &loss),
					                 SHOAL_OK);
				}
				assert_int_equal(cli_core_submit(c[i], 100, 1.0f, now), SHOAL_OK);
			} else if (st.action == CLI_SEND) {
				msg sm;
				if (dropped < o->drop_count && msg_decode(st.buf, st.len, &sm) > 0 &&
				    sm.type == MSG_SA && sm.round == o->drop_round &&
				    sm.phase == o->drop_phase) {
					dead[i] = true;
					dropped++;
					continue;
				}
				pending[i] = true;
				srv_core_on_request(s, (uint64_t)i, st.buf, st.len, now);
			}
		}
		srv_core_on_timer(s, now);
		srv_reply r;
		while (srv_core_pop_reply(s, &r)) {
			assert_true(pending[r.req]);
			pending[r.req] = false;
			cli_core_on_reply(c[r.req], r.buf, r.len, now);
			free(r.buf);
		}
		srv_event ev;
		while (srv_core_pop_event(s, &ev)) {
			if (ev.kind != SRV_EV_ROUND_END)
				continue;
			uint32_t rd = ev.stats.round;
			assert_true(rd >= 1 && rd <= MAXR);
			o->end[rd] = ev.stats;
			o->n_ends++;
			o->abandoned += ev.stats.abandoned;
			const float *pr = srv_core_params(s, NULL);
			double s1 = 0, sq = 0;
			for (size_t j = 0; j < dim; j++) {
				double d = (double)pr[j] - prev[j];
				s1 += d;
				sq += d * d;
			}
			double mean = s1 / dim, var = (sq - s1 * mean) / (dim - 1);
			double denom = o->q * o->n, s2 = (double)o->enc.s2_num / o->enc.s2_den;
			o->mean_change[rd] = mean;
			o->var_ratio[rd] = var / (ev.stats.reported * s2 * o->enc.gamma * o->enc.gamma /
			                          (denom * denom));
			if (ev.stats.abandoned)
				assert_true(sq == 0); /* nothing released */
			else
				o->acc = ev.stats.accuracy;
			memcpy(prev, pr, dim * sizeof *prev);
		}
		now += 10;
	}
	assert_int_equal(done, (int)o->n);
	assert_true(srv_core_finished(s));
	assert_int_equal(dropped, o->drop_count);
	assert_int_equal(srv_dp_steps(dp), o->rounds);
	for (uint32_t i = 0; i < o->n; i++)
		cli_core_free(c[i]);
	ml_model_free(model);
	free(prev);
	srv_core_free(s);
}


static double
tool_epsilon(const dp_ddg *m, double q, uint32_t steps, double delta)
{
	char a[8][40];
	snprintf(a[0], 40, "%.17g", q);
	snprintf(a[1], 40, "%u", steps);
	snprintf(a[2], 40, "%.17g", delta);
	snprintf(a[3], 40, "%.17g", m->dim);
	snprintf(a[4], 40, "%u", m->n);
	snprintf(a[5], 40, "%.17g", m->l2);
	snprintf(a[6], 40, "%.17g", m->l1);
	snprintf(a[7], 40, "%.17g", m->sigma2);
	const char *args[] = {"ddg", "--q", a[0], "--steps", a[1], "--delta", a[2], "--dim", a[3],
	                      "--clients", a[4], "--l2", a[5], "--l1", a[6], "--sigma2", a[7],
	                      "--accounting",
	                      m->sub == DP_DDG_SUB_GENERAL ? "bound" : "gaussian", NULL};
	json_t *o = dptool_json(args);
	double e = json_real_value(json_object_get(o, "epsilon"));
	json_decref(o);
	return e;
}

/* Zero updates through real client and server cores: what the server
 * releases is the unmasked noise alone, gamma times the rotated-back sum
 * over the fixed denominator q n. Its sample variance over the 7850
 * coordinates (relative sd 1.6%) matches |U3| sigma_c^2 gamma^2 / (q n)^2,
 * and epsilon after each round is the accountant formula's and shoal-dp's. */
static void
test_ddp_zero_updates_unmask_to_sized_noise(void **state)
{
	ddp_run o = {.n = 6, .rounds = 3, .t_min = 6, .q = 1.0, .z = 1.0};
	ddp_run_cores(&o);
	assert_int_equal(o.n_ends, 3);
	assert_int_equal(o.abandoned, 0);
	for (uint32_t r = 1; r <= 3; r++) {
		assert_int_equal(o.end[r].reported, 6);
		assert_true(fabs(o.var_ratio[r] - 1) < 0.08);
		double eps;
		assert_int_equal(dp_ddg_epsilon(&o.mech, 1.0, r, 1e-5, &eps, NULL), SHOAL_OK);
		assert_true(close_rel(o.end[r].epsilon, eps, 1e-12));
	}
	/* The variance the clients drew is the one sized for t_min clients. */
	double s2 = (double)o.enc.s2_num / o.enc.s2_den;
	assert_true(s2 >= o.mech.sigma2 && s2 < o.mech.sigma2 * (1 + 1e-9));
	assert_true(close_rel(sqrt(6 * o.mech.sigma2), o.z * o.mech.l2, 1e-12));
	assert_true(close_rel(o.end[3].epsilon, tool_epsilon(&o.mech, 1.0, 3, 1e-5), 1e-9));
}

/* Training through the rotation, the rounding and the ring with little
 * noise: the model learns as in a plain secure run (test_loop). */
static void
test_ddp_trains(void **state)
{
	ddp_run o = {.n = 6, .rounds = 3, .t_min = 4, .q = 1.0, .z = 0.002, .train = true,
	             .secagg = SRV_SECAGG_PLUS};
	ddp_run_cores(&o);
	assert_int_equal(o.abandoned, 0);
	assert_true(o.acc >= 0.85);
}

/* Fewer than t_min masked inputs: the round is aborted, nothing is
 * released, the round is still charged; the other rounds complete. With
 * Poisson sampling, rounds that sample fewer than t_min close at once. */
static void
test_ddp_too_few_survivors_abort(void **state)
{
	ddp_run o = {.n = 6, .rounds = 3, .t_min = 6, .q = 1.0, .z = 1.0, .drop_round = 3,
	             .drop_phase = SA_PH_MASKED, .drop_count = 1};
	ddp_run_cores(&o);
	assert_int_equal(o.n_ends, 3);
	assert_int_equal(o.abandoned, 1);
	assert_false(o.end[2].abandoned);
	assert_true(o.end[3].abandoned);
	assert_int_equal(o.end[3].reported, 5);
	double eps;
	assert_int_equal(dp_ddg_epsilon(&o.mech, 1.0, 3, 1e-5, &eps, NULL), SHOAL_OK);
	assert_true(close_rel(o.end[3].epsilon, eps, 1e-12));

	ddp_run p = {.n = 8, .rounds = 12, .t_min = 4, .q = 0.5, .z = 1.0};
	ddp_run_cores(&p);
	uint32_t small = 0;
	for (uint32_t r = 1; r <= 12; r++) {
		/* What round r sampled: stream r of the seed over c0..c7. */
		uint32_t v[8] = {0, 1, 2, 3, 4, 5, 6, 7};
		rng g;
		rng_init(&g, 11, r);
		uint32_t k = srv_poisson_select(&g, 0.5, v, 8);
		rng_fini(&g);
		assert_true(p.end[r].abandoned == (k < 4));
		assert_int_equal(p.end[r].selected, k < 4 ? 0 : k);
		small += k < 4;
		if (!p.end[r].abandoned)
			assert_true(fabs(p.var_ratio[r] - 1) < 0.08);
		double e;
		assert_int_equal(dp_ddg_epsilon(&p.mech, 0.5, r, 1e-5, &e, NULL), SHOAL_OK);
		assert_true(close_rel(p.end[r].epsilon, e, 1e-12));
	}
	assert_true(small > 0 && small < 12);
}

static void
test_ddp_config_refused(void **state)
{
	ddp_run o = {.n = 6, .rounds = 3, .t_min = 6, .q = 0.5, .z = 1.0};
	srv_config c;
	srv_core *s;

	ddp_config(&c, &o);
	assert_int_equal(srv_core_new(&c, &s), SHOAL_OK);
	srv_core_free(s);
	ddp_config(&c, &o);
	c.secagg = SRV_SECAGG_OFF; /* the server would see each noised update */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	assert_null(s);
	ddp_config(&c, &o);
	c.sampling = SRV_SAMPLING_FIXED; /* not what the accountant assumes */
	c.sample_rate = 0;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	ddp_config(&c, &o);
	c.clip = 0;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	ddp_config(&c, &o);
	c.target_epsilon = 4; /* and a noise multiplier */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	ddp_config(&c, &o);
	c.dp_min_clients = 1;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	ddp_config(&c, &o);
	c.dp_gamma = 10; /* coarser than the clip norm */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	ddp_config(&c, &o);
	c.noise_multiplier = 5000; /* beyond the sampler's sigma^2 <= 2^40 */
	c.dp_min_clients = 2;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	ddp_config(&c, &o);
	c.max_clients = 65535; /* the signal of 65535 sums does not fit 32 bits */
	c.dp_gamma = 1.0 / 300000;
	c.noise_multiplier = 0.001;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	c.max_clients = 1000; /* it does for 1000 */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_OK);
	srv_core_free(s);
	ddp_config(&c, &o);
	c.noise_multiplier = 1e-5; /* below the sampler's sigma >= 1/2 */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	/* Knobs of distributed DP need it. */
	ddp_config(&c, &o);
	c.dp = SRV_DP_CENTRAL;
	c.secagg = SRV_SECAGG_OFF;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL); /* dp_min_clients set */
	c.dp_min_clients = 0;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_OK);
	srv_core_free(s);
	c.dp_accounting = SRV_DP_ACCT_GAUSSIAN;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	/* --target-epsilon calibrates z with the distributed accountant. */
	ddp_config(&c, &o);
	c.noise_multiplier = 0;
	c.target_epsilon = 8;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_OK);
	const dp_ddg *m = srv_dp_ddg_mechanism(srv_core_dp(s));
	double z;
	assert_int_equal(dp_ddg_calibrate(m, 0.5, 3, 1e-5, 8, &z), SHOAL_OK);
	assert_true(srv_dp_noise_multiplier(srv_core_dp(s)) == z);
	srv_core_free(s);
	/* The default t_min: q * min_clients * (1 - dropout), at least 2. */
	ddp_config(&c, &o);
	c.dp_min_clients = 0;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_OK);
	assert_int_equal(srv_dp_min_clients(srv_core_dp(s)), 2); /* floor(0.5 * 6 * 0.8) */
	srv_core_free(s);
}

static int
teardown(void **state)
{
	if (HAVE_DATA) {
		ml_partition_fini(&PART);
		ml_dataset_fini(&TRAIN);
		ml_dataset_fini(&TEST);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ddg_epsilon_reference),
		cmocka_unit_test(test_ddg_binomial_is_subsampled_gaussian),
		cmocka_unit_test(test_ddg_calibrate),
		cmocka_unit_test(test_ddg_accountant_cached_vector),
		cmocka_unit_test(test_ddg_bounds),
		cmocka_unit_test(test_ddg_round_trip_through_ring),
		cmocka_unit_test(test_ddg_conditional_rounding),
		cmocka_unit_test(test_ddg_noise_variance_of_sum),
		cmocka_unit_test(test_ddg_task_block),
		cmocka_unit_test(test_ddp_zero_updates_unmask_to_sized_noise),
		cmocka_unit_test(test_ddp_trains),
		cmocka_unit_test(test_ddp_too_few_survivors_abort),
		cmocka_unit_test(test_ddp_config_refused),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, teardown);
}
