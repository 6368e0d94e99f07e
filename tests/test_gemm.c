/* test_gemm.c - ml_sgemm (ml/gemm.h) against a double-precision triple
 * loop, for whichever backend the build has (OpenBLAS, or the portable
 * GEMM of SHOAL_BLAS=OFF): every transpose, alpha and beta, padded leading
 * dimensions, the models' shapes and shapes that cut the portable GEMM's
 * register tiles and cache blocks (MR, NR, KC = 256, MC, NC = 480) short.
 * The error bound is the textbook one for a K-term float dot product,
 * |c - ref| <= 2 K eps (|alpha| sum|a||b| + |beta c0|). */
#include "tests/testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ml/gemm.h"
#include "ml/ml.h"

typedef struct gemm_case {
	int m, n, k;
} gemm_case;

static const gemm_case shapes[] = {
	{1, 1, 1},      {3, 5, 7},       {4, 8, 16},     {8, 12, 3},    {9, 13, 17},
	{10, 200, 560}, {10, 784, 200},  {560, 200, 10}, {10, 10, 200}, {65, 481, 257},
	{129, 97, 600}, {300, 17, 1000}, {2, 960, 513},
};

static float
val(ml_rng *r)
{
	return (float)(ml_rng_uniform(r) * 2.0 - 1.0);
}

/* One product: random A, B, C with row strides padded by 3, against the
 * double reference; the padding must come out untouched. */
static void
check(const gemm_case *g, bool ta, bool tb, float alpha, float beta, uint64_t seed)
{
	int ar = ta ? g->k : g->m, ac = ta ? g->m : g->k; /* A as stored */
	int br = tb ? g->n : g->k, bc = tb ? g->k : g->n;
	int lda = ac + 3, ldb = bc + 3, ldc = g->n + 3;
	float *a = malloc((size_t)ar * (size_t)lda * sizeof *a);
	float *b = malloc((size_t)br * (size_t)ldb * sizeof *b);
	float *c = malloc((size_t)g->m * (size_t)ldc * sizeof *c);
	float *c0 = malloc((size_t)g->m * (size_t)ldc * sizeof *c0);
	ml_rng r;

	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(c);
	assert_non_null(c0);
	ml_rng_seed(&r, seed);
	for (size_t i = 0; i < (size_t)ar * (size_t)lda; i++)
		a[i] = val(&r);
	for (size_t i = 0; i < (size_t)br * (size_t)ldb; i++)
		b[i] = val(&r);
	for (size_t i = 0; i < (size_t)g->m * (size_t)ldc; i++)
		c0[i] = beta == 0.0f ? NAN : val(&r); /* beta = 0 must overwrite NaN */
	memcpy(c, c0, (size_t)g->m * (size_t)ldc * sizeof *c);

	ml_sgemm(ta, tb, g->m, g->n, g->k, alpha, a, lda, b, ldb, beta, c, ldc);

	for (int i = 0; i < g->m; i++) {
		for (int j = 0; j < g->n; j++) {
			double ref = 0.0, mag = 0.0, tol, got = c[(size_t)i * (size_t)ldc + (size_t)j];
			double cij = c0[(size_t)i * (size_t)ldc + (size_t)j];

			for (int p = 0; p < g->k; p++) {
				double x = ta ? a[(size_t)p * (size_t)lda + (size_t)i]
				              : a[(size_t)i * (size_t)lda + (size_t)p];
				double y = tb ? b[(size_t)j * (size_t)ldb + (size_t)p]
				              : b[(size_t)p * (size_t)ldb + (size_t)j];

				ref += x * y;
				mag += fabs(x * y);
			}
			ref *= alpha;
			mag *= fabs(alpha);
			if (beta != 0.0f) {
				ref += beta * cij;
				mag += fabs(beta * cij);
			}
			tol = 2.0 * (g->k + 2) * FLT_EPSILON * mag + 1e-30;
			if (!(fabs(got - ref) <= tol))
				fail_msg("%dx%dx%d ta=%d tb=%d alpha=%g beta=%g: C[%d][%d] = %.9g, "
				         "reference %.9g (tolerance %.3g)", g->m, g->n, g->k, ta, tb,
				         (double)alpha, (double)beta, i, j, got, ref, tol);
		}
		for (int j = g->n; j < ldc; j++) /* padding untouched */
			assert_memory_equal(&c[(size_t)i * (size_t)ldc + (size_t)j],
			                    &c0[(size_t)i * (size_t)ldc + (size_t)j], sizeof *c);
	}
	free(a);
	free(b);
	free(c);
	free(c0);
}

static void
test_gemm_matches_reference(void **state)
{
	static const float ab[][2] = {{1.0f, 1.0f}, {1.0f, 0.0f}, {-0.01f, 1.0f}, {0.5f, 0.25f}};
	uint64_t seed = 1;

	/* Every transpose of every shape, each with one (alpha, beta) pair in
	 * turn, so every pair meets every transpose (and the run stays short
	 * under qemu). */
	for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
		for (int t = 0; t < 4; t++) {
			size_t v = (s + (size_t)t) % (sizeof ab / sizeof ab[0]);

			check(&shapes[s], t & 1, t >> 1, ab[v][0], ab[v][1], seed++);
		}
}

/* K = 0 or alpha = 0 only scales C by beta; M or N = 0 touches nothing. */
static void
test_gemm_degenerate(void **state)
{
	float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, c[4] = {1, 2, 3, 4};

	ml_sgemm(false, false, 2, 2, 0, 1.0f, a, 2, b, 2, 2.0f, c, 2);
	assert_true(c[0] == 2.0f && c[1] == 4.0f && c[2] == 6.0f && c[3] == 8.0f);
	ml_sgemm(false, false, 2, 2, 2, 0.0f, a, 2, b, 2, 0.5f, c, 2);
	assert_true(c[0] == 1.0f && c[1] == 2.0f && c[2] == 3.0f && c[3] == 4.0f);
	ml_sgemm(false, false, 0, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
	ml_sgemm(false, false, 2, 0, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
	assert_true(c[0] == 1.0f && c[3] == 4.0f);
	/* [1 2; 3 4] . [5 6; 7 8] = [19 22; 43 50], exact in float. */
	ml_sgemm(false, false, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
	assert_true(c[0] == 19.0f && c[1] == 22.0f && c[2] == 43.0f && c[3] == 50.0f);
	assert_true(strcmp(ml_gemm_backend(), "openblas") == 0 ||
	            strcmp(ml_gemm_backend(), "portable") == 0);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_gemm_matches_reference),
		cmocka_unit_test(test_gemm_degenerate),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
