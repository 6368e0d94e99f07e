/* test_codec.c - the compressed-update codec (common/codec.c): the
 * known-answer bytes of PROTOCOL.md section 12, unbiased stochastic
 * quantization and rand-k, top-k against a full sort, round trips at many
 * densities in every value mode, the error-feedback identity, index size
 * against log2 C(d,k), and every decoder rejection (each must leave the
 * accumulator untouched), plus seeded garbage. No timing here. */
#include "tests/testutil.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/codec.h"

/* ---- helpers ------------------------------------------------------------ */

/* splitmix64: a simple seeded cx_rand_fn for tests. */
static uint64_t
sm64(void *ctx)
{
	uint64_t *s = ctx, z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double
unif(uint64_t *s) /* (0, 1) */
{
	return ((double)(sm64(s) >> 11) + 0.5) * 0x1p-53;
}

/* Laplace(0, scale) values: a stand-in for a model delta. */
static void
fill_laplace(float *x, size_t n, double scale, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		double u = unif(&seed);
		x[i] = (float)(u < 0.5 ? scale * log(2 * u) : -scale * log(2 * (1 - u)));
	}
}

static void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	assert_non_null(p);
	return p;
}

static uint32_t
rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
wr32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void
wrf(uint8_t *p, float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	wr32(p, u);
}

static float
rdf(const uint8_t *p)
{
	uint32_t u = rd32(p);
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Every decoder must return `want` on buf and leave its output exactly as
 * it was (accumulator, dense output, parameters). */
static void
expect_reject(const uint8_t *buf, size_t len, uint32_t dim, long want)
{
	double *acc = xmalloc(dim * sizeof *acc), *acc0 = xmalloc(dim * sizeof *acc0);
	float *out = xmalloc(dim * sizeof *out), *out0 = xmalloc(dim * sizeof *out0);
	uint32_t *scratch = xmalloc(dim * sizeof *scratch);

	for (uint32_t i = 0; i < dim; i++) {
		acc[i] = acc0[i] = 0.25 * i - 3.0;
		out[i] = out0[i] = (float)i * 0.5f + 1.0f;
	}
	assert_int_equal(cx_accumulate(buf, len, dim, 3.0, acc, scratch), want);
	assert_memory_equal(acc, acc0, dim * sizeof *acc);
	assert_int_equal(cx_decode(buf, len, dim, out, scratch), want);
	assert_memory_equal(out, out0, dim * sizeof *out);
	assert_int_equal(cx_decode_add(buf, len, dim, out, scratch), want);
	assert_memory_equal(out, out0, dim * sizeof *out);
	free(acc);
	free(acc0);
	free(out);
	free(out0);
	free(scratch);
}

/* Encodes the top-k of a seeded Laplace vector; returns its length. */
static long
make_update(uint32_t dim, uint32_t k, cx_values vm, uint32_t block, cx_index im, uint64_t seed,
            uint8_t *out, size_t cap)
{
	float *x = xmalloc(dim * sizeof *x), *val = xmalloc(dim * sizeof *val);
	uint32_t *idx = xmalloc(dim * sizeof *idx);
	cx_config cfg = { CX_SELECT_TOPK, 1.0, vm, block, im };
	long n;

	fill_laplace(x, dim, 1.0, seed);
	assert_int_equal(cx_topk(x, dim, k, idx), SHOAL_OK);
	for (uint32_t j = 0; j < k; j++)
		val[j] = x[idx[j]];
	n = cx_encode(dim, k, idx, val, &cfg, sm64, &seed, out, cap, NULL);
	assert_true(n > 0);
	free(x);
	free(val);
	free(idx);
	return n;
}

/* An independent Rice writer for crafting streams (gaps as given, even
 * invalid ones); returns the byte length. */
static uint32_t
rice_craft(const uint32_t *gaps, uint32_t k, unsigned b, uint8_t *out)
{
	uint64_t pos = 0;

	memset(out, 0, 64);
	for (uint32_t j = 0; j < k; j++) {
		uint32_t q = gaps[j] >> b;
		pos += q; /* zeros */
		out[pos >> 3] |= (uint8_t)(1u << (pos & 7));
		pos++;
		for (unsigned t = 0; t < b; t++, pos++)
			if ((gaps[j] >> t) & 1)
				out[pos >> 3] |= (uint8_t)(1u << (pos & 7));
	}
	return (uint32_t)((pos + 7) / 8);
}

/* A q8 update (block 64, all scales 0.5, all values 1) over a crafted
 * index section. */
static size_t
craft_q8(uint8_t *out, uint8_t im, uint8_t rb, uint32_t dim, uint32_t k, const uint8_t *index,
         uint32_t ib)
{
	uint32_t nb = (k + 63) / 64;
	uint8_t *p = out;

	*p++ = 1;
	*p++ = CX_VALUES_Q8;
	*p++ = im;
	*p++ = rb;
	*p++ = 64;
	*p++ = 0;
	wr32(p, dim);
	wr32(p + 4, k);
	wr32(p + 8, ib);
	p += 12;
	memcpy(p, index, ib);
	p += ib;
	for (uint32_t i = 0; i < nb; i++, p += 4)
		wrf(p, 0.5f);
	memset(p, 1, k);
	return (size_t)(p + k - out);
}

/* ---- known answer ---------------------------------------------------------- */

/* The worked example of codec.c and PROTOCOL.md section 12, derived by
 * hand there (gaps, Rice bits, float32 bit patterns). */
static const uint8_t kat[31] = {
	0x01, 0x01, 0x01, 0x01, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x03,
	0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x1e, 0x01, 0x04, 0x02,
	0x01, 0x3c, 0x04, 0x02, 0x01, 0x3b, 0x5f, 0x81, 0x7f,
};

static void
test_known_answer(void **state)
{
	uint32_t idx[3] = { 2, 3, 9 }, scratch[32];
	float val[3] = { 0.75f, -1.0f, 0.25f }, deq[3], out[32];
	double acc[32] = { 0 };
	cx_config cfg = { CX_SELECT_TOPK, 1.0, CX_VALUES_Q8, 2, CX_INDEX_AUTO };
	uint8_t buf[64];
	long n = cx_encode(32, 3, idx, val, &cfg, NULL, NULL, buf, sizeof buf, deq);

	(void)state;
	assert_int_equal(n, sizeof kat);
	assert_memory_equal(buf, kat, sizeof kat);
	assert_true(deq[0] == 95.0f * (1.0f / 127.0f) && deq[1] == -1.0f && deq[2] == 0.25f);
	assert_int_equal(cx_decode(kat, sizeof kat, 32, out, scratch), sizeof kat);
	for (int i = 0; i < 32; i++)
		assert_true(out[i] == (i == 2 ? deq[0] : i == 3 ? -1.0f : i == 9 ? 0.25f : 0.0f));
	assert_int_equal(cx_accumulate(kat, sizeof kat, 32, 2.0, acc, scratch), sizeof kat);
	assert_true(acc[2] == 2.0 * (double)deq[0] && acc[3] == -2.0 && acc[9] == 0.5);
	/* A shorter stream than its bitmap: the same example at d = 16 ties
	 * (2 bytes each) and the encoder takes the bitmap. */
	n = cx_encode(16, 3, idx, val, &cfg, NULL, NULL, buf, sizeof buf, NULL);
	assert_int_equal(n, 31);
	assert_int_equal(buf[2], CX_INDEX_BITMAP);
	assert_int_equal(buf[18], 0x0c);
	assert_int_equal(buf[19], 0x02);
}

/* ---- quantization ------------------------------------------------------------- */

/* Mean of N stochastic dequantizations vs the input. For a value at v = x/s
 * with fractional part f, q*s takes floor(v)*s or (floor(v)+1)*s, so its
 * variance is s^2 f (1 - f) <= s^2/4 and the mean of N draws has standard
 * deviation sigma = s sqrt(f (1 - f) / N). We accept |mean - x| <= 6 sigma
 * plus 4 float32 roundings of |x| + s (the scale and the product are
 * float32): a false alarm per coordinate has probability < 2e-9, and the
 * seed is fixed. A biased rounding (e.g. floor) is off by s f ~ s/2, i.e.
 * 0.5 sqrt(N) ~ 30 sigma at N = 4000, so it cannot pass. */
static void
check_unbiased(int qmax)
{
	enum { N = 4000, D = 96, BLOCK = 32 };
	float x[D], scales[(D + BLOCK - 1) / BLOCK], y[D];
	int8_t q[D];
	double sum[D] = { 0 };
	uint64_t seed = 77;

	fill_laplace(x, D, 1.0, 5);
	x[7] = 0.0f;
	x[40] = -x[41]; /* exact ties of magnitude */
	for (int r = 0; r < N; r++) {
		if (qmax == CX_Q8_MAX)
			cx_quantize_q8_ref(x, D, BLOCK, scales, q, sm64, &seed);
		else
			cx_quantize_q4_ref(x, D, BLOCK, scales, q, sm64, &seed);
		cx_dequantize_ref(scales, q, D, BLOCK, y);
		for (int i = 0; i < D; i++) {
			assert_true(q[i] >= -qmax && q[i] <= qmax);
			sum[i] += y[i];
		}
	}
	for (int i = 0; i < D; i++) {
		double s = scales[i / BLOCK], v = x[i] / s, f = v - floor(v);
		double sigma = s * sqrt(f * (1 - f) / N);
		double tol = 6 * sigma + 4 * 0x1p-24 * (fabs(x[i]) + s);
		if (fabs(sum[i] / N - x[i]) > tol)
			fail_msg("coordinate %d: mean %.9g vs %.9g (tol %.3g)", i, sum[i] / N, x[i], tol);
	}
}

static void
test_quantize_q8_unbiased(void **state)
{
	(void)state;
	check_unbiased(CX_Q8_MAX);
}

static void
test_quantize_q4_unbiased(void **state)
{
	(void)state;
	check_unbiased(CX_Q4_MAX);
}

/* All-zero blocks get scale 0 and q 0 (no division); nearest rounding is
 * within s/2, stochastic within s; q never leaves -qmax..qmax. */
static void
test_quantize_zero_block_and_error(void **state)
{
	enum { D = 200, BLOCK = 50 };
	float x[D], scales[D / BLOCK], y[D];
	int8_t q[D];
	uint64_t seed = 3;

	(void)state;
	fill_laplace(x, D, 2.0, 9);
	for (int i = 50; i < 100; i++)
		x[i] = (i & 1) ? 0.0f : -0.0f;
	x[150] = 1e-45f; /* a block whose scale underflows to 0 */
	for (int i = 151; i < 200; i++)
		x[i] = 0.0f;
	for (int mode = 0; mode < 4; mode++) {
		int qmax = mode < 2 ? CX_Q8_MAX : CX_Q4_MAX;
		bool stochastic = mode & 1;

		if (qmax == CX_Q8_MAX)
			cx_quantize_q8_ref(x, D, BLOCK, scales, q, stochastic ? sm64 : NULL, &seed);
		else
			cx_quantize_q4_ref(x, D, BLOCK, scales, q, stochastic ? sm64 : NULL, &seed);
		cx_dequantize_ref(scales, q, D, BLOCK, y);
		assert_true(scales[1] == 0.0f && scales[3] == 0.0f);
		for (int i = 0; i < D; i++) {
			double s = scales[i / BLOCK], err = fabs((double)y[i] - x[i]);
			assert_true(q[i] >= -qmax && q[i] <= qmax);
			if (s == 0.0) {
				assert_int_equal(q[i], 0);
				continue;
			}
			assert_true(err <= (stochastic ? 1.0 : 0.5) * s * (1 + 1e-6));
		}
	}
}

/* The encoder puts exactly cx_quantize_*_ref's scales and values on the
 * wire (same random stream), q4 packed low nibble first. */
static void
test_quantize_ref_matches_wire(void **state)
{
	enum { D = 301, BLOCK = 40, NB = (D + BLOCK - 1) / BLOCK };
	float x[D], scales[NB], deq[D], y[D];
	int8_t q[D];
	uint8_t buf[2048];

	(void)state;
	fill_laplace(x, D, 1.0, 11);
	for (int m = 0; m < 2; m++) {
		cx_values vm = m == 0 ? CX_VALUES_Q8 : CX_VALUES_Q4;
		cx_config cfg = { CX_SELECT_TOPK, 1.0, vm, BLOCK, CX_INDEX_DENSE };
		uint64_t s1 = 99, s2 = 99;
		long n = cx_encode(D, D, NULL, x, &cfg, sm64, &s1, buf, sizeof buf, deq);
		const uint8_t *sp = buf + CX_HEADER_BYTES, *vp = sp + 4 * NB;

		assert_true(n > 0);
		if (vm == CX_VALUES_Q8)
			cx_quantize_q8_ref(x, D, BLOCK, scales, q, sm64, &s2);
		else
			cx_quantize_q4_ref(x, D, BLOCK, scales, q, sm64, &s2);
		cx_dequantize_ref(scales, q, D, BLOCK, y);
		assert_memory_equal(deq, y, sizeof y);
		for (int b = 0; b < NB; b++)
			assert_true(rdf(sp + 4 * b) == scales[b]);
		for (int i = 0; i < D; i++) {
			int w = vm == CX_VALUES_Q8 ? (int)(int8_t)vp[i]
			                           : (((vp[i / 2] >> (4 * (i & 1))) & 0xf) ^ 8) - 8;
			assert_int_equal(w, q[i]);
		}
		assert_int_equal(n, CX_HEADER_BYTES + 4 * NB + (vm == CX_VALUES_Q8 ? D : (D + 1) / 2));
	}
}

/* ---- selection ---------------------------------------------------------------- */

static const float *ref_x;

static int
cmp_rank(const void *a, const void *b) /* |x| descending, then index ascending */
{
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
	float xi = fabsf(ref_x[i]), xj = fabsf(ref_x[j]);
	if (xi != xj)
		return xi > xj ? -1 : 1;
	return (i > j) - (i < j);
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static void
check_topk(const float *x, uint32_t dim, uint32_t k)
{
	uint32_t *ref = xmalloc(dim * sizeof *ref), *got = xmalloc((k + 1) * sizeof *got);

	for (uint32_t i = 0; i < dim; i++)
		ref[i] = i;
	ref_x = x;
	qsort(ref, dim, sizeof *ref, cmp_rank);
	qsort(ref, k, sizeof *ref, cmp_u32);
	assert_int_equal(cx_topk(x, dim, k, got), SHOAL_OK);
	assert_memory_equal(got, ref, k * sizeof *ref);
	free(ref);
	free(got);
}

/* Exactly the k largest |x|, ties to the lower index, against a full sort;
 * heavy ties (few distinct magnitudes, +-0), continuous data, and ties that
 * cross every radix level. */
static void
test_topk_matches_sort(void **state)
{
	enum { D = 5000 };
	float *x = xmalloc(D * sizeof *x);
	uint64_t s = 1;
	static const uint32_t ks[] = { 0, 1, 2, 7, 100, 1666, 2500, 4999, 5000 };

	(void)state;
	for (int kind = 0; kind < 4; kind++) {
		for (uint32_t i = 0; i < D; i++) {
			uint64_t r = sm64(&s);
			switch (kind) {
			case 0: /* few magnitudes, both signs, -0.0 */
				x[i] = (float)((int)(r % 7) - 3);
				if (x[i] == 0.0f && (r & 64))
					x[i] = -0.0f;
				break;
			case 1:
				x[i] = (float)(unif(&s) - 0.5);
				break;
			case 2: /* differ only in the lowest mantissa bits */
				x[i] = 1.0f + (float)(r % 5) * 0x1p-23f;
				if (r & 8)
					x[i] = -x[i];
				break;
			default: /* all equal */
				x[i] = 0.125f;
			}
		}
		for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++)
			check_topk(x, D, ks[t]);
	}
	fill_laplace(x, D, 1e-3, 4);
	check_topk(x, D, 50);
	x[17] = NAN;
	{
		uint32_t *idx = xmalloc(50 * sizeof *idx);
		assert_int_equal(cx_topk(x, D, 50, idx), SHOAL_ENONFINITE);
		free(idx);
	}
	free(x);
}

/* The rand-k probabilities by the literature's iteration: cap, rescale the
 * rest, repeat until nothing new is capped (Wangni et al. 2018). */
static void
ref_randk_p(const float *x, int d, int k, double *p)
{
	bool capped[64] = { false };
	int changed = 1;

	while (changed) {
		double rest = 0;
		int nc = 0;
		changed = 0;
		for (int i = 0; i < d; i++) {
			if (capped[i])
				nc++;
			else
				rest += fabs(x[i]);
		}
		for (int i = 0; i < d; i++) {
			p[i] = capped[i] ? 1.0 : (k - nc) * fabs(x[i]) / rest;
			if (p[i] >= 1.0 && !capped[i]) {
				capped[i] = true;
				changed = 1;
			}
		}
	}
}

/* E[sent_i] = x_i: mean over N draws within 6 sigma, sigma^2 =
 * x_i^2 (1 - p_i) / (p_i N) from the reference probabilities; the kept count
 * averages k within 6 sigma (sigma^2 = sum p_i (1 - p_i) / N). */
static void
test_randk_unbiased(void **state)
{
	enum { D = 64, K = 12, N = 20000 };
	float x[D], val[D];
	uint32_t idx[D], n;
	double p[D], sum[D] = { 0 }, count = 0, var_count = 0, psum = 0;
	uint64_t seed = 8;

	(void)state;
	fill_laplace(x, D, 1.0, 21);
	x[3] = 40.0f; /* capped at p = 1 */
	x[30] = -25.0f;
	x[5] = 0.0f;
	ref_randk_p(x, D, K, p);
	for (int i = 0; i < D; i++) {
		psum += p[i];
		var_count += p[i] * (1 - p[i]) / N;
	}
	assert_true(fabs(psum - K) < 1e-9);
	assert_true(p[3] == 1.0 && p[30] == 1.0 && p[5] == 0.0);
	for (int r = 0; r < N; r++) {
		assert_int_equal(cx_randk(x, D, K, sm64, &seed, idx, val, &n), SHOAL_OK);
		count += n;
		for (uint32_t j = 0; j < n; j++) {
			assert_true(j == 0 || idx[j] > idx[j - 1]);
			sum[idx[j]] += val[j];
			if (p[idx[j]] == 1.0)
				assert_true(val[j] == x[idx[j]]);
		}
	}
	assert_true(fabs(count / N - K) <= 6 * sqrt(var_count));
	for (int i = 0; i < D; i++) {
		double sigma = p[i] > 0 ? fabs(x[i]) * sqrt((1 - p[i]) / (p[i] * N)) : 0;
		if (fabs(sum[i] / N - x[i]) > 6 * sigma + 1e-6 * fabs(x[i]))
			fail_msg("coordinate %d: mean %.6g vs %.6g (sigma %.3g)", i, sum[i] / N, x[i],
			         sigma);
	}
}

/* ---- round trips ---------------------------------------------------------------- */

/* Densities 1e-4..1 in every value mode: decode gives the kept values
 * (exactly for f32, within one scale for stochastic q8/q4) and 0 elsewhere;
 * cx_decode equals the encoder's deq; cx_accumulate adds weight*(double)v;
 * cx_decode_add adds v in float32. */
static void
test_roundtrip_densities(void **state)
{
	enum { D = 20000 };
	static const double rho[] = { 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0 };
	static const cx_values vms[] = { CX_VALUES_F32, CX_VALUES_Q8, CX_VALUES_Q4 };
	float *x = xmalloc(D * sizeof *x), *val = xmalloc(D * sizeof *val);
	float *deq = xmalloc(D * sizeof *deq), *out = xmalloc(D * sizeof *out);
	float *par = xmalloc(D * sizeof *par);
	double *acc = xmalloc(D * sizeof *acc);
	uint32_t *idx = xmalloc(D * sizeof *idx), *scratch = xmalloc(D * sizeof *scratch);
	size_t cap = 5 * D + 1024;
	uint8_t *buf = xmalloc(cap);
	uint64_t seed = 5;

	(void)state;
	fill_laplace(x, D, 0.01, 31);
	for (size_t r = 0; r < sizeof rho / sizeof rho[0]; r++)
		for (size_t m = 0; m < 3; m++) {
			uint32_t k = cx_k_for_ratio(D, rho[r]), block = m == 1 ? 64 : 33;
			cx_config cfg = { CX_SELECT_TOPK, rho[r], vms[m], block, CX_INDEX_AUTO };
			long n;

			assert_int_equal(cx_topk(x, D, k, idx), SHOAL_OK);
			for (uint32_t j = 0; j < k; j++)
				val[j] = x[idx[j]];
			n = cx_encode(D, k, idx, val, &cfg, sm64, &seed, buf, cap, deq);
			assert_true(n > 0 && (size_t)n <= cx_encoded_size_max(D, k, &cfg));
			assert_int_equal(cx_decode(buf, (size_t)n, D, out, scratch), n);
			for (uint32_t i = 0, j = 0; i < D; i++) {
				if (j < k && idx[j] == i) {
					float s = vms[m] == CX_VALUES_F32 ? 0.0f
					                                  : rdf(buf + CX_HEADER_BYTES + rd32(buf + 14) + 4 * (j / block));
					assert_true(out[i] == deq[j]);
					assert_true(fabsf(out[i] - val[j]) <= s * 1.000001f);
					j++;
				} else {
					assert_true(out[i] == 0.0f);
				}
			}
			for (uint32_t i = 0; i < D; i++) {
				acc[i] = i;
				par[i] = (float)i * 0.5f;
			}
			assert_int_equal(cx_accumulate(buf, (size_t)n, D, 3.0, acc, scratch), n);
			assert_int_equal(cx_decode_add(buf, (size_t)n, D, par, scratch), n);
			for (uint32_t i = 0; i < D; i++) {
				assert_true(acc[i] == (double)i + 3.0 * (double)out[i]);
				assert_true(par[i] == (float)i * 0.5f + out[i]);
			}
		}
	free(x);
	free(val);
	free(deq);
	free(out);
	free(par);
	free(acc);
	free(idx);
	free(scratch);
	free(buf);
}

/* Error feedback: after each step residual_new == fl(u - v) bit for bit
 * (u = fl(x + residual_old), v = what the receiver decodes, 0 if unsent),
 * hence |x + r_old - (v + r_new)| <= 2^-24 (|u| + |r_new|): only the two
 * float32 roundings of u and of u - v. Several steps, top-k and rand-k,
 * every value mode. */
static void
test_residual_identity(void **state)
{
	enum { D = 3000, STEPS = 4 };
	float *x = xmalloc(D * sizeof *x), *r = xmalloc(D * sizeof *r), *r0 = xmalloc(D * sizeof *r0);
	float *v = xmalloc(D * sizeof *v);
	uint32_t *scratch = xmalloc(D * sizeof *scratch);
	size_t cap;
	uint8_t *buf;
	cx_work w;
	uint64_t seed = 17;

	(void)state;
	assert_int_equal(cx_work_init(&w, D), SHOAL_OK);
	for (int sel = 0; sel < 2; sel++)
		for (int m = 0; m < 3; m++) {
			cx_config cfg = { sel ? CX_SELECT_RANDK : CX_SELECT_TOPK, 0.02, (cx_values)m, 0,
			                  CX_INDEX_AUTO };
			cap = cx_encoded_size_max(D, D, &cfg);
			buf = xmalloc(cap);
			memset(r, 0, D * sizeof *r);
			for (int step = 0; step < STEPS; step++) {
				long n;
				fill_laplace(x, D, 0.01, 100 + step);
				memcpy(r0, r, D * sizeof *r);
				n = cx_encode_ef(&cfg, x, r, D, sm64, &seed, &w, buf, cap);
				assert_true(n > 0);
				assert_int_equal(cx_decode(buf, (size_t)n, D, v, scratch), n);
				for (int i = 0; i < D; i++) {
					float u = x[i] + r0[i], want = u - v[i];
					double lhs = (double)x[i] + (double)r0[i], rhs = (double)v[i] + r[i];
					assert_memory_equal(&r[i], &want, sizeof want);
					assert_true(fabs(lhs - rhs) <= 0x1p-24 * (fabs(u) + fabs(r[i])));
				}
			}
			free(buf);
		}
	/* Errors leave the residual alone. */
	{
		cx_config cfg = cx_config_default(0.02);
		uint8_t small[8];
		memcpy(r0, r, D * sizeof *r);
		assert_int_equal(cx_encode_ef(&cfg, x, r, D, sm64, &seed, &w, small, sizeof small),
		                 SHOAL_ETOOBIG);
		x[5] = INFINITY;
		assert_int_equal(cx_encode_ef(&cfg, x, r, D, sm64, &seed, &w, small, sizeof small),
		                 SHOAL_ENONFINITE);
		assert_memory_equal(r, r0, D * sizeof *r);
	}
	cx_work_fini(&w);
	free(x);
	free(r);
	free(r0);
	free(v);
	free(scratch);
}

/* Top-k error feedback is streamed: with a scratch of only k entries it
 * writes the same bytes and leaves the same residual as the definition
 * (u = x + r stored, cx_topk on u, cx_encode of the k values); without a
 * residual it encodes x itself. Too small a scratch is refused. */
static void
test_ef_streamed_matches_definition(void **state)
{
	enum { D = 5000 };
	float *x = xmalloc(D * sizeof *x), *r = xmalloc(D * sizeof *r), *u = xmalloc(D * sizeof *u);
	float *want_r = xmalloc(D * sizeof *want_r), val[100], deq[100];
	uint32_t idx[100];
	cx_config cfg = cx_config_default(0.02); /* k = 100 */
	size_t cap = cx_encoded_size_max(D, 100, &cfg);
	uint8_t *got = xmalloc(cap), *want = xmalloc(cap);
	uint64_t s1, s2;
	cx_work w, small;
	long n, m;

	(void)state;
	assert_int_equal(cx_work_entries(D, &cfg), 100);
	assert_int_equal(cx_work_init(&w, 100), SHOAL_OK);
	assert_int_equal(cx_work_init(&small, 99), SHOAL_OK);
	fill_laplace(r, D, 0.02, 5);
	for (int step = 0; step < 3; step++) {
		fill_laplace(x, D, 0.01, 40 + step);
		for (int i = 0; i < D; i++)
			u[i] = x[i] + r[i];
		assert_int_equal(cx_topk(u, D, 100, idx), SHOAL_OK);
		for (int j = 0; j < 100; j++)
			val[j] = u[idx[j]];
		s1 = s2 = 99 + (uint64_t)step;
		m = cx_encode(D, 100, idx, val, &cfg, sm64, &s1, want, cap, deq);
		assert_true(m > 0);
		memcpy(want_r, u, D * sizeof *u);
		for (int j = 0; j < 100; j++)
			want_r[idx[j]] = u[idx[j]] - deq[j];
		assert_int_equal(cx_encode_ef(&cfg, x, r, D, sm64, &s2, &small, got, cap),
		                 SHOAL_EINVAL);
		n = cx_encode_ef(&cfg, x, r, D, sm64, &s2, &w, got, cap);
		assert_int_equal(n, m);
		assert_memory_equal(got, want, (size_t)m);
		assert_memory_equal(r, want_r, D * sizeof *r);
	}
	/* No residual: the encoding of x alone. */
	assert_int_equal(cx_topk(x, D, 100, idx), SHOAL_OK);
	for (int j = 0; j < 100; j++)
		val[j] = x[idx[j]];
	s1 = s2 = 7;
	m = cx_encode(D, 100, idx, val, &cfg, sm64, &s1, want, cap, NULL);
	n = cx_encode_ef(&cfg, x, NULL, D, sm64, &s2, &w, got, cap);
	assert_int_equal(n, m);
	assert_memory_equal(got, want, (size_t)m);
	/* A non-finite sum is found without storing it; r is untouched. */
	memcpy(want_r, r, D * sizeof *r);
	r[D - 1] = INFINITY;
	x[D - 1] = -1.0f;
	want_r[D - 1] = INFINITY;
	assert_int_equal(cx_encode_ef(&cfg, x, r, D, sm64, &s2, &w, got, cap), SHOAL_ENONFINITE);
	assert_memory_equal(r, want_r, D * sizeof *r);
	cx_work_fini(&w);
	cx_work_fini(&small);
	free(x);
	free(r);
	free(u);
	free(want_r);
	free(got);
	free(want);
}

/* ---- index coding ------------------------------------------------------------------ */

/* d = 1e6, rho = 0.01: the Rice index is within 5% of log2 C(d, k), and
 * the whole q8 update costs <= 0.021 bytes per parameter. */
static void
test_index_near_bound(void **state)
{
	enum { D = 1000000 };
	float *x = xmalloc(D * sizeof *x), *r = calloc(D, sizeof(float));
	cx_config cfg = cx_config_default(0.01);
	size_t cap = cx_encoded_size_max(D, 10000, &cfg);
	uint8_t *buf = xmalloc(cap);
	uint64_t seed = 1;
	cx_work w;
	long n;
	double bits, bound;

	(void)state;
	assert_non_null(r);
	assert_int_equal(cx_work_init(&w, D), SHOAL_OK);
	fill_laplace(x, D, 1e-3, 12);
	n = cx_encode_ef(&cfg, x, r, D, sm64, &seed, &w, buf, cap);
	assert_true(n > 0);
	assert_int_equal(rd32(buf + 10), 10000);
	assert_int_equal(buf[2], CX_INDEX_RICE);
	bits = 8.0 * rd32(buf + 14);
	bound = cx_index_bound_bits(D, 10000);
	assert_true(bound > 80000 && bound < 81000); /* 8.0785 bits per entry */
	if (bits > 1.05 * bound)
		fail_msg("index %.0f bits vs bound %.0f", bits, bound);
	assert_true(n <= 21000);
	cx_work_fini(&w);
	free(x);
	free(r);
	free(buf);
}

/* The smallest index wins: Rice when sparse, a bitmap when dense (at
 * rho = 0.5 Rice needs ~2.33 bits per kept entry, 1.17 per coordinate,
 * against the bitmap's 1), nothing at k = d; forced modes decode the
 * same. */
static void
test_index_mode_choice(void **state)
{
	enum { D = 4000 };
	size_t cap = 5 * D + 512;
	uint8_t *a = xmalloc(cap), *b = xmalloc(cap);
	static const struct { uint32_t k; cx_index want; } t[] = {
		{ 40, CX_INDEX_RICE }, { 400, CX_INDEX_RICE }, { 2000, CX_INDEX_BITMAP },
		{ 3999, CX_INDEX_BITMAP }, { 4000, CX_INDEX_DENSE },
	};
	float *o1 = xmalloc(D * sizeof *o1), *o2 = xmalloc(D * sizeof *o2);
	uint32_t *scratch = xmalloc(D * sizeof *scratch);

	(void)state;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		long n = make_update(D, t[i].k, CX_VALUES_Q8, 64, CX_INDEX_AUTO, 7, a, cap);
		assert_int_equal(a[2], t[i].want);
		assert_int_equal(cx_decode(a, (size_t)n, D, o1, scratch), n);
		for (int forced = CX_INDEX_RICE; forced <= CX_INDEX_BITMAP; forced++) {
			long m = make_update(D, t[i].k, CX_VALUES_Q8, 64, (cx_index)forced, 7, b, cap);
			assert_int_equal(b[2], forced);
			assert_true(m >= n);
			assert_int_equal(cx_decode(b, (size_t)m, D, o2, scratch), m);
			assert_memory_equal(o1, o2, D * sizeof *o1);
		}
	}
	free(a);
	free(b);
	free(o1);
	free(o2);
	free(scratch);
}

/* ---- rejections ---------------------------------------------------------------------- */

/* Every strict prefix of a valid encoding, in every mode, is truncated. */
static void
test_reject_truncation(void **state)
{
	enum { D = 300 };
	uint8_t buf[2048];
	static const struct { uint32_t k; cx_values vm; cx_index im; } t[] = {
		{ 7, CX_VALUES_Q8, CX_INDEX_RICE },   { 7, CX_VALUES_Q4, CX_INDEX_RICE },
		{ 7, CX_VALUES_F32, CX_INDEX_RICE },  { 150, CX_VALUES_Q8, CX_INDEX_BITMAP },
		{ 151, CX_VALUES_Q4, CX_INDEX_BITMAP }, { 300, CX_VALUES_Q8, CX_INDEX_DENSE },
		{ 300, CX_VALUES_F32, CX_INDEX_DENSE }, { 0, CX_VALUES_Q8, CX_INDEX_RICE },
	};

	(void)state;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		long n = make_update(D, t[i].k, t[i].vm, 16, t[i].im, 3, buf, sizeof buf);
		for (long len = 0; len < n; len++)
			expect_reject(buf, (size_t)len, D, SHOAL_ETRUNC);
	}
}

/* One declared byte too many, or garbage after the end. */
static void
test_reject_trailing(void **state)
{
	enum { D = 300 };
	uint8_t buf[2048];
	long n = make_update(D, 9, CX_VALUES_Q8, 64, CX_INDEX_AUTO, 4, buf, sizeof buf - 8);

	(void)state;
	memset(buf + n, 0, 8);
	expect_reject(buf, (size_t)n + 1, D, SHOAL_EMALFORMED);
	expect_reject(buf, (size_t)n + 8, D, SHOAL_EMALFORMED);
	n = make_update(D, D, CX_VALUES_F32, 0, CX_INDEX_AUTO, 4, buf, sizeof buf);
	expect_reject(buf, (size_t)n - 1, D, SHOAL_ETRUNC);
}

static void
test_reject_wrong_dim(void **state)
{
	uint8_t buf[1024];
	long n = make_update(100, 10, CX_VALUES_Q8, 64, CX_INDEX_AUTO, 5, buf, sizeof buf);

	(void)state;
	expect_reject(buf, (size_t)n, 99, SHOAL_EDIM);
	expect_reject(buf, (size_t)n, 101, SHOAL_EDIM);
}

static void
test_reject_k_gt_dim(void **state)
{
	uint8_t buf[1024], idx[8] = { 0 };
	size_t n = craft_q8(buf, CX_INDEX_RICE, 0, 20, 21, idx, 3);

	(void)state;
	expect_reject(buf, n, 20, SHOAL_ETOOBIG);
	n = craft_q8(buf, CX_INDEX_DENSE, 0, 20, 21, idx, 0);
	expect_reject(buf, n, 20, SHOAL_ETOOBIG);
}

/* Indices past the end: a Rice gap that lands on d, a huge unary run, a
 * bitmap bit in the padding after d. */
static void
test_reject_index_out_of_range(void **state)
{
	uint8_t buf[1024], ix[64];
	uint32_t gaps[3] = { 5, 10, 25 }, ib; /* 4, 14, 39 = d */
	size_t n;

	(void)state;
	ib = rice_craft(gaps, 3, 2, ix);
	n = craft_q8(buf, CX_INDEX_RICE, 2, 39, 3, ix, ib);
	expect_reject(buf, n, 39, SHOAL_ETOOBIG);
	gaps[2] = 24; /* 38: valid */
	ib = rice_craft(gaps, 3, 2, ix);
	n = craft_q8(buf, CX_INDEX_RICE, 2, 39, 3, ix, ib);
	expect_reject(buf, n + 1, 39, SHOAL_EMALFORMED); /* sanity: only the tail differs */
	{
		uint32_t scratch[39];
		float out[39];
		assert_int_equal(cx_decode(buf, n, 39, out, scratch), (long)n);
		assert_true(out[38] == 0.5f && out[4] == 0.5f && out[14] == 0.5f);
	}
	gaps[0] = 400; /* a long unary run (b = 0) */
	ib = rice_craft(gaps, 3, 0, ix);
	n = craft_q8(buf, CX_INDEX_RICE, 0, 39, 3, ix, ib);
	expect_reject(buf, n, 39, SHOAL_ETOOBIG);
	memset(ix, 0, sizeof ix); /* bitmap d = 13: bits 0, 5, 13 (padding) */
	ix[0] = 0x21;
	ix[1] = 0x20;
	n = craft_q8(buf, CX_INDEX_BITMAP, 0, 13, 3, ix, 2);
	expect_reject(buf, n, 13, SHOAL_ETOOBIG);
}

/* A zero gap is a repeated index (gaps are i_j - i_{j-1}, i_{-1} = -1). */
static void
test_reject_non_increasing(void **state)
{
	uint8_t buf[1024], ix[64];
	uint32_t gaps[4] = { 3, 2, 0, 4 }, ib;
	size_t n;

	(void)state;
	for (unsigned b = 0; b < 3; b++) {
		ib = rice_craft(gaps, 4, b, ix);
		n = craft_q8(buf, CX_INDEX_RICE, (uint8_t)b, 50, 4, ix, ib);
		expect_reject(buf, n, 50, SHOAL_EMALFORMED);
	}
	gaps[0] = 0; /* index -1 + 0 */
	gaps[2] = 1;
	ib = rice_craft(gaps, 4, 1, ix);
	n = craft_q8(buf, CX_INDEX_RICE, 1, 50, 4, ix, ib);
	expect_reject(buf, n, 50, SHOAL_EMALFORMED);
}

/* A finite scale so large that q * scale overflows float32 would put Inf
 * into the sum (found by tests/fuzz/fuzz_codec: a q8 update whose scale
 * 0x7d20eb10 = 1.3e37 times q = 127 is Inf). Refused; the largest scales
 * whose products stay finite are accepted, and every value is finite. */
static void
test_reject_scale_overflow(void **state)
{
	enum { D = 200 };
	uint8_t buf[2048];
	float out[D];
	uint32_t scratch[D];

	(void)state;
	static const struct {
		cx_values vm;
		float bad, good;
	} c[] = { { CX_VALUES_Q8, 1.3e37f, FLT_MAX / 128 }, { CX_VALUES_Q4, 1e38f, FLT_MAX / 8 } };
	for (int i = 0; i < 2; i++) {
		long n = make_update(D, 40, c[i].vm, 16, CX_INDEX_AUTO, 6, buf, sizeof buf);
		uint8_t *scale = buf + CX_HEADER_BYTES + rd32(buf + 14); /* the first block's */
		wrf(scale, c[i].bad);
		expect_reject(buf, (size_t)n, D, SHOAL_ENONFINITE);
		wrf(scale, c[i].good);
		assert_int_equal(cx_decode(buf, (size_t)n, D, out, scratch), n);
		for (int j = 0; j < D; j++)
			assert_true(isfinite(out[j]));
	}
}

/* NaN, +Inf, -Inf in a scale or an f32 value; a negative scale. */
static void
test_reject_nonfinite(void **state)
{
	enum { D = 200 };
	uint8_t buf[2048];
	static const float bad[] = { NAN, INFINITY, -INFINITY };
	long n;

	(void)state;
	for (int i = 0; i < 3; i++) {
		uint32_t ib, nb;
		n = make_update(D, 40, CX_VALUES_Q8, 16, CX_INDEX_AUTO, 6, buf, sizeof buf);
		ib = rd32(buf + 14);
		nb = 3;
		wrf(buf + CX_HEADER_BYTES + ib + 4 * (nb - 1), bad[i]); /* last scale */
		expect_reject(buf, (size_t)n, D, SHOAL_ENONFINITE);
		n = make_update(D, 40, CX_VALUES_F32, 0, CX_INDEX_AUTO, 6, buf, sizeof buf);
		wrf(buf + n - 4 * (i + 1), bad[i]);
		expect_reject(buf, (size_t)n, D, SHOAL_ENONFINITE);
	}
	n = make_update(D, 40, CX_VALUES_Q4, 16, CX_INDEX_AUTO, 6, buf, sizeof buf);
	wrf(buf + CX_HEADER_BYTES + rd32(buf + 14), -0.5f);
	expect_reject(buf, (size_t)n, D, SHOAL_EMALFORMED);
	wrf(buf + CX_HEADER_BYTES + rd32(buf + 14), -0.0f); /* -0.0 is a valid zero scale */
	{
		uint32_t scratch[D];
		float out[D];
		assert_int_equal(cx_decode(buf, (size_t)n, D, out, scratch), n);
	}
}

/* Header fields and values outside their ranges, one fault each. */
typedef struct mut {
	const char *what;
	cx_values vm;
	cx_index im;
	uint32_t k;
	size_t off;   /* byte to overwrite */
	int from_end; /* off counts back from the last byte */
	uint8_t set, mask; /* byte = (byte & ~mask) | set */
	long want;
} mut;

static const mut muts[] = {
	{ "version 0", CX_VALUES_Q8, CX_INDEX_RICE, 10, 0, 0, 0x00, 0xff, SHOAL_EVERSION },
	{ "version 2", CX_VALUES_Q8, CX_INDEX_RICE, 10, 0, 0, 0x02, 0xff, SHOAL_EVERSION },
	{ "value mode 3", CX_VALUES_Q8, CX_INDEX_RICE, 10, 1, 0, 0x03, 0xff, SHOAL_EMALFORMED },
	{ "value mode 255", CX_VALUES_Q8, CX_INDEX_RICE, 10, 1, 0, 0xff, 0xff, SHOAL_EMALFORMED },
	{ "index mode 3", CX_VALUES_Q8, CX_INDEX_RICE, 10, 2, 0, 0x03, 0xff, SHOAL_EMALFORMED },
	{ "index mode 255", CX_VALUES_Q8, CX_INDEX_RICE, 10, 2, 0, 0xff, 0xff, SHOAL_EMALFORMED },
	{ "rice b 32", CX_VALUES_Q8, CX_INDEX_RICE, 10, 3, 0, 0x20, 0xff, SHOAL_EMALFORMED },
	{ "b set for bitmap", CX_VALUES_Q8, CX_INDEX_BITMAP, 150, 3, 0, 0x01, 0xff, SHOAL_EMALFORMED },
	{ "b set for dense", CX_VALUES_Q8, CX_INDEX_DENSE, 300, 3, 0, 0x01, 0xff, SHOAL_EMALFORMED },
	{ "q8 block 0", CX_VALUES_Q8, CX_INDEX_RICE, 10, 4, 0, 0x00, 0xff, SHOAL_EMALFORMED },
	{ "f32 block 1", CX_VALUES_F32, CX_INDEX_RICE, 10, 4, 0, 0x01, 0xff, SHOAL_EMALFORMED },
	{ "dense k < d", CX_VALUES_Q8, CX_INDEX_RICE, 10, 2, 0, 0x00, 0xff, SHOAL_EMALFORMED },
	{ "rice as bitmap", CX_VALUES_Q8, CX_INDEX_RICE, 10, 2, 0, 0x02, 0xff, SHOAL_EMALFORMED },
	{ "dense index bytes", CX_VALUES_Q8, CX_INDEX_DENSE, 300, 14, 0, 0x01, 0xff, SHOAL_EMALFORMED },
	{ "q8 value -128", CX_VALUES_Q8, CX_INDEX_RICE, 10, 0, 1, 0x80, 0xff, SHOAL_EMALFORMED },
	{ "q4 nibble -8 low", CX_VALUES_Q4, CX_INDEX_RICE, 10, 0, 1, 0x08, 0x0f, SHOAL_EMALFORMED },
	{ "q4 nibble -8 high", CX_VALUES_Q4, CX_INDEX_RICE, 10, 0, 1, 0x80, 0xf0, SHOAL_EMALFORMED },
	{ "q4 unused nibble", CX_VALUES_Q4, CX_INDEX_RICE, 11, 0, 1, 0x10, 0xf0, SHOAL_EMALFORMED },
	{ "bitmap extra bit", CX_VALUES_Q8, CX_INDEX_BITMAP, 150, 0, 0, 0, 0, SHOAL_EMALFORMED },
	{ "bitmap missing bit", CX_VALUES_Q8, CX_INDEX_BITMAP, 150, 0, 0, 0, 0, SHOAL_EMALFORMED },
};

static void
test_reject_bad_fields(void **state)
{
	enum { D = 300 };
	uint8_t buf[2048];

	(void)state;
	for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
		const mut *m = &muts[i];
		long n = make_update(D, m->k, m->vm, m->vm == CX_VALUES_F32 ? 0 : 64, m->im, 8 + i,
		                     buf, sizeof buf);
		uint8_t *ix = buf + CX_HEADER_BYTES;

		if (strcmp(m->what, "bitmap extra bit") == 0) {
			uint32_t t = 0; /* set the first clear bit */
			while ((ix[t >> 3] >> (t & 7)) & 1)
				t++;
			assert_true(t < D);
			ix[t >> 3] |= (uint8_t)(1u << (t & 7));
		} else if (strcmp(m->what, "bitmap missing bit") == 0) {
			uint32_t t = 0; /* clear the first set bit */
			while (!((ix[t >> 3] >> (t & 7)) & 1))
				t++;
			ix[t >> 3] &= (uint8_t)~(1u << (t & 7));
		} else {
			size_t off = m->from_end ? (size_t)n - 1 - m->off : m->off;
			buf[off] = (uint8_t)((buf[off] & ~m->mask) | m->set);
		}
		printf("# %s\n", m->what);
		expect_reject(buf, (size_t)n, D, m->want);
	}
}

/* Rice streams that end wrong: an extra all-zero byte, a stream cut
 * before its last code (index bytes one short, total length adjusted),
 * a code that runs into the end, a padding bit set. */
static void
test_reject_rice_stream(void **state)
{
	uint8_t buf[1024], ix[64];
	uint32_t gaps[3] = { 5, 10, 20 }, ib;
	size_t n;

	(void)state;
	ib = rice_craft(gaps, 3, 3, ix);
	n = craft_q8(buf, CX_INDEX_RICE, 3, 100, 3, ix, ib + 1); /* ix[ib] == 0 */
	expect_reject(buf, n, 100, SHOAL_EMALFORMED);
	n = craft_q8(buf, CX_INDEX_RICE, 3, 100, 3, ix, ib - 1);
	expect_reject(buf, n, 100, SHOAL_EMALFORMED);
	n = craft_q8(buf, CX_INDEX_RICE, 3, 100, 4, ix, ib); /* a 4th code of zeros only */
	expect_reject(buf, n, 100, SHOAL_EMALFORMED);
	assert_int_equal(ib, 2); /* 4 + 5 + 6 = 15 bits: bit 15 is padding */
	ix[1] |= 0x80;
	n = craft_q8(buf, CX_INDEX_RICE, 3, 100, 3, ix, ib);
	expect_reject(buf, n, 100, SHOAL_EMALFORMED);
	ix[1] &= 0x7f;
	n = craft_q8(buf, CX_INDEX_RICE, 3, 100, 3, ix, ib);
	{
		uint32_t scratch[100];
		float out[100];
		assert_int_equal(cx_decode(buf, n, 100, out, scratch), (long)n);
		assert_true(out[4] == 0.5f && out[14] == 0.5f && out[34] == 0.5f);
	}
}

/* Seeded garbage: random bytes behind a valid header start, and valid
 * encodings with random bytes changed or cut. Nothing may crash (ASan),
 * a rejection leaves the accumulator untouched, an acceptance consumes
 * the whole buffer. */
static void
test_reject_garbage(void **state)
{
	enum { D = 500 };
	uint8_t buf[4096], base[4096];
	double acc[D], acc0[D];
	uint32_t scratch[D];
	uint64_t s = 2024;

	(void)state;
	for (int it = 0; it < 3000; it++) {
		size_t len;
		long r;

		if (it % 3 == 0) {
			len = CX_HEADER_BYTES + sm64(&s) % 200;
			for (size_t i = 0; i < len; i++)
				buf[i] = (uint8_t)sm64(&s);
			buf[0] = 1;
			buf[1] %= 3;
			buf[2] %= 3;
			wr32(buf + 6, D);
			wr32(buf + 10, rd32(buf + 10) % 40);
		} else {
			static const cx_values vms[] = { CX_VALUES_F32, CX_VALUES_Q8, CX_VALUES_Q4 };
			cx_values vm = vms[sm64(&s) % 3];
			uint32_t k = (uint32_t)(sm64(&s) % (D + 1));
			long n = make_update(D, k, vm, vm == CX_VALUES_F32 ? 0 : 1 + sm64(&s) % 100,
			                     CX_INDEX_AUTO, it, base, sizeof base);
			len = (size_t)n;
			memcpy(buf, base, len);
			for (int f = 0, nf = 1 + (int)(sm64(&s) % 3); f < nf; f++)
				buf[sm64(&s) % len] ^= (uint8_t)(1 + sm64(&s) % 255);
			if (sm64(&s) % 4 == 0)
				len = sm64(&s) % (len + 1);
		}
		for (int i = 0; i < D; i++)
			acc[i] = acc0[i] = i;
		r = cx_accumulate(buf, len, D, 1.0, acc, scratch);
		if (r < 0)
			assert_memory_equal(acc, acc0, sizeof acc);
		else
			assert_int_equal(r, (long)len);
	}
}

/* ---- downlink, dense path, arguments ------------------------------------------------ */

/* The downlink q8 encoding is deterministic (round to nearest), decodes to
 * within s/2, and applying it gives bit-identical parameters on both
 * sides. */
static void
test_downlink_deterministic(void **state)
{
	enum { D = 10007, BLOCK = 128, NB = (D + BLOCK - 1) / BLOCK };
	float *x = xmalloc(D * sizeof *x), *p1 = xmalloc(D * sizeof *p1),
	      *p2 = xmalloc(D * sizeof *p2), *y = xmalloc(D * sizeof *y);
	float scales[NB];
	int8_t *q = xmalloc(D);
	size_t cap = CX_HEADER_BYTES + 4 * NB + D;
	uint8_t *a = xmalloc(cap), *b = xmalloc(cap);
	long n;

	(void)state;
	fill_laplace(x, D, 1e-2, 44);
	for (int i = 100; i < 300; i++)
		x[i] = 0.0f; /* a zero block */
	n = cx_encode_downlink(x, D, BLOCK, a, cap);
	assert_int_equal(n, (long)cap);
	assert_int_equal(cx_encode_downlink(x, D, BLOCK, b, cap), n);
	assert_memory_equal(a, b, cap);
	assert_int_equal(cx_encode_downlink(x, D, BLOCK, b, cap - 1), SHOAL_ETOOBIG);
	cx_quantize_q8_ref(x, D, BLOCK, scales, q, NULL, NULL);
	cx_dequantize_ref(scales, q, D, BLOCK, y);
	for (int i = 0; i < D; i++) {
		p1[i] = p2[i] = (float)i * 1e-3f;
		assert_true(fabsf(y[i] - x[i]) <= 0.5f * scales[i / BLOCK] * 1.000001f);
	}
	assert_int_equal(cx_decode_add(a, (size_t)n, D, p1, NULL), n); /* server */
	assert_int_equal(cx_decode_add(b, (size_t)n, D, p2, NULL), n); /* client */
	assert_memory_equal(p1, p2, D * sizeof *p1);
	for (int i = 0; i < D; i++)
		assert_true(p1[i] == (float)i * 1e-3f + y[i]);
	free(x);
	free(p1);
	free(p2);
	free(y);
	free(q);
	free(a);
	free(b);
}

/* The uncompressed path adds weight * f_i exactly like the scalar loop,
 * for lengths around the unrolled step. */
static void
test_dense_accumulate(void **state)
{
	enum { D = 103 };
	float x[D];
	uint8_t wire[4 * D];
	double acc[D], ref[D];

	(void)state;
	fill_laplace(x, D, 1.0, 50);
	for (int i = 0; i < D; i++)
		wrf(wire + 4 * i, x[i]);
	for (size_t dim = 0; dim <= D; dim += (dim < 40 ? 1 : 21)) {
		for (size_t i = 0; i < D; i++) {
			acc[i] = ref[i] = (double)i;
		}
		cx_accumulate_dense(wire, dim, 7.0, acc);
		for (size_t i = 0; i < dim; i++) {
			ref[i] += 7.0 * (double)x[i];
		}
		assert_memory_equal(acc, ref, sizeof acc);
	}
}

/* Argument errors of the encoders and decoders. */
static void
test_api_errors(void **state)
{
	float x[16] = { 1, 2, 3 }, out[16];
	uint32_t idx[4] = { 3, 3, 5, 7 }, scratch[16];
	double acc[16] = { 0 };
	uint8_t buf[256];
	cx_config cfg = cx_config_default(0.25), bad = cfg;
	long n;

	(void)state;
	assert_int_equal(cx_k_for_ratio(100, 0.0), 0);
	assert_int_equal(cx_k_for_ratio(100, 1.5), 0);
	assert_int_equal(cx_k_for_ratio(100, 1e-9), 1);
	assert_int_equal(cx_k_for_ratio(1000000, 0.01), 10000);
	assert_int_equal(cx_topk(x, 16, 17, idx), SHOAL_EINVAL);
	assert_int_equal(cx_encode(16, 2, idx, x, &cfg, NULL, NULL, buf, sizeof buf, NULL),
	                 SHOAL_EINVAL); /* repeated index */
	idx[1] = 16;
	assert_int_equal(cx_encode(16, 2, idx, x, &cfg, NULL, NULL, buf, sizeof buf, NULL),
	                 SHOAL_EINVAL); /* out of range */
	idx[1] = 4;
	bad.index = CX_INDEX_DENSE;
	assert_int_equal(cx_encode(16, 2, idx, x, &bad, NULL, NULL, buf, sizeof buf, NULL),
	                 SHOAL_EINVAL);
	bad = cfg;
	bad.values = (cx_values)7;
	assert_int_equal(cx_encode(16, 2, idx, x, &bad, NULL, NULL, buf, sizeof buf, NULL),
	                 SHOAL_EINVAL);
	assert_int_equal(cx_encoded_size_max(16, 2, &bad), 0);
	x[1] = NAN;
	assert_int_equal(cx_encode(16, 2, idx, x, &cfg, NULL, NULL, buf, sizeof buf, NULL),
	                 SHOAL_ENONFINITE);
	x[1] = 2;
	assert_int_equal(cx_encode(16, 2, idx, x, &cfg, NULL, NULL, buf, 20, NULL), SHOAL_ETOOBIG);
	n = cx_encode(16, 2, idx, x, &cfg, NULL, NULL, buf, sizeof buf, NULL);
	assert_true(n > 0);
	assert_int_equal(cx_accumulate(buf, (size_t)n, 16, NAN, acc, scratch), SHOAL_EINVAL);
	assert_int_equal(cx_accumulate(buf, (size_t)n, 16, 1.0, acc, NULL), SHOAL_EINVAL);
	assert_int_equal(cx_decode(buf, (size_t)n, 16, NULL, scratch), SHOAL_EINVAL);
	assert_int_equal(cx_decode(NULL, 0, 16, out, scratch), SHOAL_ETRUNC);
	{
		uint32_t kept;
		assert_int_equal(cx_randk(x, 16, 2, NULL, NULL, idx, out, &kept), SHOAL_EINVAL);
	}
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_answer),
		cmocka_unit_test(test_quantize_q8_unbiased),
		cmocka_unit_test(test_quantize_q4_unbiased),
		cmocka_unit_test(test_quantize_zero_block_and_error),
		cmocka_unit_test(test_quantize_ref_matches_wire),
		cmocka_unit_test(test_topk_matches_sort),
		cmocka_unit_test(test_randk_unbiased),
		cmocka_unit_test(test_roundtrip_densities),
		cmocka_unit_test(test_residual_identity),
	cmocka_unit_test(test_ef_streamed_matches_definition),
		cmocka_unit_test(test_index_near_bound),
		cmocka_unit_test(test_index_mode_choice),
		cmocka_unit_test(test_reject_truncation),
		cmocka_unit_test(test_reject_trailing),
		cmocka_unit_test(test_reject_wrong_dim),
		cmocka_unit_test(test_reject_k_gt_dim),
		cmocka_unit_test(test_reject_index_out_of_range),
		cmocka_unit_test(test_reject_non_increasing),
		cmocka_unit_test(test_reject_nonfinite),
		cmocka_unit_test(test_reject_scale_overflow),
		cmocka_unit_test(test_reject_bad_fields),
		cmocka_unit_test(test_reject_rice_stream),
		cmocka_unit_test(test_reject_garbage),
		cmocka_unit_test(test_downlink_deterministic),
		cmocka_unit_test(test_dense_accumulate),
		cmocka_unit_test(test_api_errors),
	};

	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
