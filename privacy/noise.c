/* noise.c - DP clipping, exact discrete samplers, lattice Gaussian noise and
 * the randomized Hadamard rotation (see noise.h for the why and the limits).
 *
 * Integer sizes in the discrete Gaussian, sigma^2 = n/d with d <= 2^20 and
 * n/d <= 2^40 (so n <= 2^60), t = floor(sigma) + 1 <= 2^20 + 1:
 *   acceptance exponent g = (|y| d t - n)^2 / (2 n d t^2);
 *   the denominator 2 n d t^2 < 2^122 fits in 128 bits; the numerator's root
 *   a = | |y| d t - n | < 2^104 for |y| <= 2^62 fits too, but a^2 needs up to
 *   208 bits, so floor(g) and the remainder come from a 256-by-128-bit long
 *   division when a >= 2^64 (|y| beyond about 16 sigma, rare). */
#include "noise.h"

#include <math.h>
#include <string.h>

#include <sodium.h>

__extension__ typedef unsigned __int128 u128;

/* Samples are kept within +-2^62 so negation and int64 never overflow. */
#define MAX_ABS_SAMPLE (UINT64_C(1) << 62)

_Static_assert(DP_GAUSS_LATTICE_BITS >= 1 && 84 - 2 * DP_GAUSS_LATTICE_BITS >= 1,
               "lattice sigma^2 must round to a multiple of 2^-20 below 2^40");

/* ---- uniform integers (rejection on a power-of-two mask: no modulo bias) */

static uint64_t
u64_below(rng *r, uint64_t bound)
{
	if (bound <= 1)
		return 0;
	int bits = 64 - __builtin_clzll(bound - 1);
	uint64_t mask = bits == 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
	for (;;) {
		uint64_t v = rng_u64(r) & mask;
		if (v < bound)
			return v;
	}
}

static u128
u128_below(rng *r, u128 bound)
{
	if ((uint64_t)(bound >> 64) == 0)
		return u64_below(r, (uint64_t)bound);
	uint64_t top = (uint64_t)((bound - 1) >> 64);
	int bits = 64 - __builtin_clzll(top);
	uint64_t mask = bits == 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
	for (;;) {
		uint64_t hi = rng_u64(r) & mask;
		uint64_t lo = rng_u64(r);
		u128 v = ((u128)hi << 64) | lo;
		if (v < bound)
			return v;
	}
}

/* Bernoulli(num/den), den >= 1. */
static int
bern_ratio(rng *r, u128 num, u128 den)
{
	if (num == 0)
		return 0;
	if (num >= den)
		return 1;
	return u128_below(r, den) < num;
}

/* ---- Bernoulli(exp(-g)), CKS Algorithm 1 */

/* g = num/den in [0, 1]. Bernoulli(g/k) is drawn as Bernoulli(g) and
 * Bernoulli(1/k) together (independent, so the probabilities multiply), which
 * keeps every uniform draw below den or below k: no den*k product to
 * overflow. */
static int
bern_exp_unit(rng *r, u128 num, u128 den)
{
	uint64_t k = 1;
	for (;;) {
		if (!bern_ratio(r, num, den))
			break;
		if (k > 1 && u64_below(r, k) != 0)
			break;
		k++;
	}
	return (int)(k & 1);
}

/* g = whole + rem/den with rem < den: floor(g) draws of Bernoulli(exp(-1))
 * and one of Bernoulli(exp(-rem/den)), all of which must be 1. whole may be
 * saturated at UINT64_MAX; the loop ends at the first 0, which comes after
 * about 1.6 draws, so the saturation changes the probability by less than
 * exp(-2^64). */
static int
bern_exp(rng *r, uint64_t whole, u128 rem, u128 den)
{
	for (uint64_t i = 0; i < whole; i++)
		if (!bern_exp_unit(r, 1, 1))
			return 0;
	return bern_exp_unit(r, rem, den);
}

int
dp_bernoulli_exp(rng *r, uint64_t num, uint64_t den)
{
	if (den == 0)
		return SHOAL_EINVAL;
	return bern_exp(r, num / den, num % den, den);
}

/* ---- discrete Laplace, CKS Algorithm 2 */

/* s >= 1, 1 <= t <= DP_DLAP_MAX_T. Outcomes beyond +-2^62 are redrawn: they
 * need V >= 2^22 successive Bernoulli(exp(-1)) successes, probability below
 * exp(-2^22). */
static int64_t
dlap(rng *r, uint64_t s, uint64_t t)
{
	for (;;) {
		uint64_t u = u64_below(r, t);
		if (!bern_exp_unit(r, u, t))
			continue;
		uint64_t v = 0;
		while (bern_exp_unit(r, 1, 1))
			v++;
		u128 y = ((u128)u + (u128)t * v) / s;
		int neg = (int)(rng_u64(r) & 1);
		if (neg && y == 0)
			continue;
		if (y > MAX_ABS_SAMPLE)
			continue;
		return neg ? -(int64_t)y : (int64_t)y;
	}
}

int64_t
dp_discrete_laplace(rng *r, uint64_t s, uint64_t t)
{
	if (s == 0 || t == 0 || t > DP_DLAP_MAX_T)
		return DP_SAMPLE_INVALID;
	return dlap(r, s, t);
}

/* ---- discrete Gaussian, CKS Algorithm 3 */

struct dg {
	uint64_t num;  /* sigma^2 = num/den */
	uint64_t t;    /* floor(sigma) + 1 */
	u128 dt;       /* den * t */
	u128 den2;     /* 2 num den t^2 */
};

shoal_err
dp_discrete_gaussian_check(uint64_t num, uint64_t den)
{
	if (den == 0 || den > DP_DG_MAX_DEN || num == 0 || num / den > DP_DG_MAX_SIGMA2 ||
	    (num / den == DP_DG_MAX_SIGMA2 && num % den != 0))
		return SHOAL_EINVAL;
	return SHOAL_OK;
}

static shoal_err
dg_setup(struct dg *g, uint64_t num, uint64_t den)
{
	shoal_err err = dp_discrete_gaussian_check(num, den);
	if (err != SHOAL_OK)
		return err;
	/* floor(sqrt(num/den)) = largest m with m^2 den <= num; m <= 2^20. */
	uint64_t lo = 0, hi = (UINT64_C(1) << 20) + 1;
	while (hi - lo > 1) {
		uint64_t mid = lo + (hi - lo) / 2;
		if ((u128)mid * mid * den <= num)
			lo = mid;
		else
			hi = mid;
	}
	g->num = num;
	g->t = lo + 1;
	g->dt = (u128)den * g->t;
	g->den2 = 2 * (u128)num * den * g->t * g->t;
	return SHOAL_OK;
}

/* a^2 as a 256-bit (hi, lo) pair. */
static void
square128(u128 a, u128 *hi, u128 *lo)
{
	uint64_t ah = (uint64_t)(a >> 64), al = (uint64_t)a;
	u128 mid = (u128)ah * al;
	u128 l = (u128)al * al, h = (u128)ah * ah;
	for (int i = 0; i < 2; i++) {
		u128 s = l + (mid << 64);
		h += (s < l) + (mid >> 64);
		l = s;
	}
	*hi = h;
	*lo = l;
}

/* a^2 = q * d + rem, with q saturated at UINT64_MAX; d < 2^127. */
static void
square_divmod(u128 a, u128 d, uint64_t *q, u128 *rem)
{
	if ((uint64_t)(a >> 64) == 0) {
		u128 sq = a * a;
		u128 qq = sq / d;
		*q = qq > UINT64_MAX ? UINT64_MAX : (uint64_t)qq;
		*rem = sq % d;
		return;
	}
	u128 hi, lo;
	square128(a, &hi, &lo);
	u128 rm = 0;
	uint64_t qs = 0;
	for (int i = 255; i >= 0; i--) {
		unsigned bit = i >= 128 ? (unsigned)(hi >> (i - 128)) & 1 : (unsigned)(lo >> i) & 1;
		rm = (rm << 1) | bit;
		unsigned qb = 0;
		if (rm >= d) {
			rm -= d;
			qb = 1;
		}
		qs = qs > UINT64_MAX / 2 ? UINT64_MAX : 2 * qs + qb;
	}
	*q = qs;
	*rem = rm;
}

void
dp_square_divmod(const uint64_t a[2], const uint64_t d[2], uint64_t *q, uint64_t rem[2])
{
	u128 rm;
	square_divmod(((u128)a[1] << 64) | a[0], ((u128)d[1] << 64) | d[0], q, &rm);
	rem[0] = (uint64_t)rm;
	rem[1] = (uint64_t)(rm >> 64);
}

static int64_t
dg_sample(rng *r, const struct dg *g)
{
	for (;;) {
		int64_t y = dlap(r, 1, g->t);
		uint64_t ay = y < 0 ? (uint64_t)-y : (uint64_t)y;
		u128 p = (u128)ay * g->dt;
		u128 a = p >= g->num ? p - g->num : g->num - p;
		uint64_t whole;
		u128 rem;
		square_divmod(a, g->den2, &whole, &rem);
		if (bern_exp(r, whole, rem, g->den2))
			return y;
	}
}

int64_t
dp_discrete_gaussian(rng *r, uint64_t num, uint64_t den)
{
	struct dg g;
	if (dg_setup(&g, num, den) != SHOAL_OK)
		return DP_SAMPLE_INVALID;
	return dg_sample(r, &g);
}

/* ---- lattice Gaussian for central DP */

struct lattice {
	double step;
	struct dg g;
};

static int
stddev_ok(double stddev)
{
	return stddev >= DP_GAUSS_MIN_STDDEV && stddev <= DP_GAUSS_MAX_STDDEV;
}

/* stddev = f 2^e with f in [1/2, 1); step = 2^(e-1-K), so stddev/step =
 * f 2^(K+1) lies in [2^K, 2^(K+1)). With m = f 2^53 (an integer),
 * (stddev/step)^2 = m^2 2^(2K+2-106), which is rounded to num/2^20. */
static void
lattice_setup(struct lattice *l, double stddev)
{
	enum { K = DP_GAUSS_LATTICE_BITS, SHIFT = 84 - 2 * K };
	int e;
	double f = frexp(stddev, &e);
	uint64_t m = (uint64_t)ldexp(f, 53);
	u128 sq = (u128)m * m;
	uint64_t num = (uint64_t)((sq + ((u128)1 << (SHIFT - 1))) >> SHIFT);
	l->step = ldexp(1.0, e - 1 - K);
	/* num < 2^(2K+22) <= 2^60 and num >= 2^(2K+20): always in range. */
	(void)dg_setup(&l->g, num, UINT64_C(1) << 20);
}

double
dp_gaussian_step(double stddev)
{
	if (!stddev_ok(stddev))
		return NAN;
	int e;
	(void)frexp(stddev, &e);
	return ldexp(1.0, e - 1 - DP_GAUSS_LATTICE_BITS);
}

double
dp_gaussian(rng *r, double stddev)
{
	if (stddev == 0)
		return 0;
	if (!stddev_ok(stddev))
		return NAN;
	struct lattice l;
	lattice_setup(&l, stddev);
	return (double)dg_sample(r, &l.g) * l.step;
}

shoal_err
dp_gaussian_noise_add(rng *r, float *x, size_t n, double stddev)
{
	if ((x == NULL && n > 0) || !(stddev == 0 || stddev_ok(stddev)))
		return SHOAL_EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return SHOAL_ENONFINITE;
	if (stddev == 0)
		return SHOAL_OK;
	struct lattice l;
	lattice_setup(&l, stddev);
	for (size_t i = 0; i < n; i++) {
		/* Both terms are multiples of step: the sum is exact in double
		 * and the one rounding to float is post-processing. */
		double base = rint((double)x[i] / l.step) * l.step;
		double v = base + (double)dg_sample(r, &l.g) * l.step;
		x[i] = (float)v;
	}
	return SHOAL_OK;
}

/* ---- clipping */

double
dp_l2_norm(const float *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (double)x[i] * (double)x[i];
	return sqrt(s);
}

static void
scale(float *x, size_t n, double f)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (float)((double)x[i] * f);
}

double
dp_clip_l2(float *x, size_t n, double c)
{
	if (!(c > 0) || !isfinite(c) || (x == NULL && n > 0))
		return NAN;
	double norm = dp_l2_norm(x, n);
	if (!isfinite(norm))
		return NAN;
	if (norm <= c)
		return norm;
	double f = c / norm;
	/* Rounding to float can leave the norm a few ulps above c; shrink by
	 * a growing margin until it is not (f reaches 0 at it == 26). */
	for (int it = 0;; it++) {
		scale(x, n, f);
		double m = dp_l2_norm(x, n);
		if (m <= c)
			break;
		f = c / m * (1.0 - ldexp(1.0, it - 26));
	}
	return norm;
}

/* ---- randomized Hadamard rotation */

size_t
dp_rht_dim(size_t n)
{
	if (n > DP_RHT_MAX_DIM)
		return 0;
	size_t d = 1;
	while (d < n)
		d <<= 1;
	return d;
}

static int
rht_dim_ok(size_t n)
{
	return n >= 1 && n <= DP_RHT_MAX_DIM && (n & (n - 1)) == 0;
}

/* x[i] *= s, negated where bit i of the ChaCha20-IETF keystream (key = seed,
 * nonce "shoal-rht-v1", counter from 0) is 1. 2^40 coordinates need 2^31
 * keystream blocks: the 32-bit counter does not wrap. */
static void
signs_scale(float *x, size_t n, float s, const uint8_t seed[DP_RHT_SEED_BYTES])
{
	static const uint8_t zero[256];
	static const uint8_t nonce[crypto_stream_chacha20_ietf_NONCEBYTES] = {
		's', 'h', 'o', 'a', 'l', '-', 'r', 'h', 't', '-', 'v', '1'};
	uint8_t ks[sizeof zero];
	const size_t per = 8 * sizeof ks;

	for (size_t base = 0; base < n; base += per) {
		uint32_t ic = (uint32_t)(base / 512);
		crypto_stream_chacha20_ietf_xor_ic(ks, zero, sizeof ks, nonce, ic, seed);
		size_t m = n - base < per ? n - base : per;
		for (size_t j = 0; j < m; j++) {
			float v = x[base + j] * s;
			x[base + j] = (ks[j >> 3] >> (j & 7)) & 1 ? -v : v;
		}
	}
	sodium_memzero(ks, sizeof ks);
}

static void
scale_f(float *x, size_t n, float s)
{
	for (size_t i = 0; i < n; i++)
		x[i] *= s;
}

/* In-place unnormalized Walsh-Hadamard transform, n a power of two. */
static void
fwht(float *x, size_t n)
{
	for (size_t h = 1; h < n; h <<= 1)
		for (size_t i = 0; i < n; i += 2 * h)
			for (size_t j = i; j < i + h; j++) {
				float a = x[j], b = x[j + h];
				x[j] = a + b;
				x[j + h] = a - b;
			}
}

shoal_err
dp_rht_forward(float *x, size_t n, const uint8_t seed[DP_RHT_SEED_BYTES])
{
	if (x == NULL || seed == NULL || !rht_dim_ok(n))
		return SHOAL_EINVAL;
	/* Scale before the transform so large inputs cannot overflow in it. */
	signs_scale(x, n, (float)(1.0 / sqrt((double)n)), seed);
	fwht(x, n);
	return SHOAL_OK;
}

shoal_err
dp_rht_inverse(float *x, size_t n, const uint8_t seed[DP_RHT_SEED_BYTES])
{
	if (x == NULL || seed == NULL || !rht_dim_ok(n))
		return SHOAL_EINVAL;
	scale_f(x, n, (float)(1.0 / sqrt((double)n)));
	fwht(x, n);
	signs_scale(x, n, 1.0f, seed);
	return SHOAL_OK;
}
