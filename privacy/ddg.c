/* ddg.c - the distributed discrete Gaussian's client encoding and server
 * decoding (see ddg.h). */
#include "privacy/ddg.h"

#include <math.h>
#include <string.h>

#include <sodium.h>

#include "privacy/noise.h"

uint64_t
dp_ddg_l2max2(double c, uint32_t dim)
{
	const double cc = c * (1.0 + 0x1p-20), d = (double)dim;
	double b1 = (cc + sqrt(d)) * (cc + sqrt(d));
	double b2 = cc * cc + d / 4.0 + sqrt(2.0 * log(1.0 / DP_DDG_BETA)) * (cc + sqrt(d) / 2.0);
	double b = fmin(b1, b2);
	if (!(b >= 1.0))
		return 1;
	if (!(b < 0x1p63))
		return UINT64_C(1) << 63;
	return (uint64_t)floor(b);
}

shoal_err
dp_ddg_check(const dp_ddg_enc *p)
{
	if (p == NULL || p->n_idx == 0 || dp_rht_dim(p->n_idx) != p->dim ||
	    !(p->clip > 0) || !isfinite(p->clip) || !(p->gamma > 0) || !isfinite(p->gamma) ||
	    !(p->clip / p->gamma <= DP_DDG_MAX_SCALED) || p->l2max2 == 0 ||
	    dp_discrete_gaussian_check(p->s2_num, p->s2_den) != SHOAL_OK)
		return SHOAL_EINVAL;
	return SHOAL_OK;
}

double
dp_ddg_sum_bound(const dp_ddg_enc *p, uint32_t n)
{
	const double c = p->clip / p->gamma, sd = sqrt((double)p->s2_num / p->s2_den);
	return n * (DP_DDG_TAIL * c / sqrt((double)p->dim) + 1.0) + DP_DDG_TAIL * sqrt((double)n) * sd;
}

shoal_err
dp_ddg_ring_bits(const dp_ddg_enc *p, uint32_t n, uint32_t *m)
{
	double b = dp_ddg_sum_bound(p, n);

	for (uint32_t k = 2; k <= 32; k++) {
		double h = ldexp(1.0, (int)k - 1);
		if (b < h && (double)n < h) {
			*m = k;
			return SHOAL_OK;
		}
	}
	return SHOAL_EINVAL;
}

void
dp_ddg_rotation_seed(const uint8_t session[32], uint8_t seed[DP_DDG_SEED_BYTES])
{
	static const char label[] = "shoal-dp-rht";
	uint8_t in[sizeof label - 1 + 32];

	memcpy(in, label, sizeof label - 1);
	memcpy(in + sizeof label - 1, session, 32);
	crypto_generichash(seed, DP_DDG_SEED_BYTES, in, sizeof in, session, 32);
}

shoal_err
dp_ddg_encode(const dp_ddg_enc *p, const float *v, const uint8_t seed[DP_DDG_SEED_BYTES],
              uint32_t m, rng *r, float *scratch, uint32_t *x)
{
	if (dp_ddg_check(p) != SHOAL_OK || v == NULL || seed == NULL || r == NULL ||
	    scratch == NULL || x == NULL || m < 2 || m > 32)
		return SHOAL_EINVAL;
	const uint32_t mask = m == 32 ? UINT32_MAX : (UINT32_C(1) << m) - 1;
	shoal_err e = SHOAL_OK;

	for (uint32_t j = 0; j < p->n_idx; j++)
		if (!isfinite(v[j]))
			return SHOAL_ENONFINITE;
	memcpy(scratch, v, (size_t)p->n_idx * sizeof *scratch);
	memset(scratch + p->n_idx, 0, (size_t)(p->dim - p->n_idx) * sizeof *scratch);
	if ((e = dp_rht_forward(scratch, p->dim, seed)) != SHOAL_OK)
		goto out;
	for (uint32_t j = 0; j < p->dim; j++)
		if (!(fabs((double)scratch[j] / p->gamma) <= DP_DDG_MAX_SCALED)) {
			e = SHOAL_EINVAL;
			goto out;
		}
	/* Conditional randomized rounding: a try that ends above the bound is
	 * dropped whole, so the result is the rounding conditioned on the
	 * event ||y||^2 <= l2max2 (stopping a try early changes nothing). */
	for (int tries = 0;; tries++) {
		if (tries == DP_DDG_MAX_TRIES) {
			e = SHOAL_ETIMEDOUT;
			goto out;
		}
		uint64_t ss = 0;
		uint32_t j;
		for (j = 0; j < p->dim; j++) {
			double y = (double)scratch[j] / p->gamma, f = floor(y);
			double u = (double)(rng_u64(r) >> 11) * 0x1p-53;
			int64_t yi = (int64_t)f + (u < y - f);
			ss += (uint64_t)(yi * yi); /* |yi| <= 2^30 + 1: no overflow below */
			if (ss > p->l2max2)
				break;
			x[j] = (uint32_t)(uint64_t)yi & mask;
		}
		if (j == p->dim)
			break;
	}
	for (uint32_t j = 0; j < p->dim; j++) {
		int64_t z = dp_discrete_gaussian(r, p->s2_num, p->s2_den);
		x[j] = (x[j] + (uint32_t)(uint64_t)z) & mask;
	}
out:
	sodium_memzero(scratch, (size_t)p->dim * sizeof *scratch);
	return e;
}

shoal_err
dp_ddg_decode(const dp_ddg_enc *p, const uint32_t *sum, uint32_t m,
              const uint8_t seed[DP_DDG_SEED_BYTES], float *scratch, double *out)
{
	if (dp_ddg_check(p) != SHOAL_OK || sum == NULL || seed == NULL || scratch == NULL ||
	    out == NULL || m < 2 || m > 32)
		return SHOAL_EINVAL;
	const int64_t mod = (int64_t)1 << m, half = mod >> 1;
	for (uint32_t j = 0; j < p->dim; j++) {
		int64_t s = (int64_t)sum[j] & (mod - 1);
		if (s >= half)
			s -= mod;
		scratch[j] = (float)((double)s * p->gamma);
	}
	shoal_err e = dp_rht_inverse(scratch, p->dim, seed);
	if (e != SHOAL_OK)
		return e;
	for (uint32_t j = 0; j < p->n_idx; j++)
		out[j] = scratch[j];
	return SHOAL_OK;
}
