/* gemm.c - row-major sgemm for the models: OpenBLAS through CBLAS when
 * built with SHOAL_BLAS=ON, else a portable packed GEMM (see gemm.h).
 *
 * The portable GEMM is the GotoBLAS/BLIS loop nest in plain C: op(B) is
 * packed KC x NC into NR-wide column slivers, op(A) MC x KC into MR-tall
 * row slivers (both zero-padded, so the transposes cost nothing after
 * packing), and a micro-kernel keeps an MR x NR block of C in vector
 * registers while it walks K, one broadcast of A times one row of B per
 * step. The vectors are GCC vector extensions of 4 floats: SSE on x86-64,
 * NEON on aarch64 (32-bit ARM keeps them on scalar VFP unless NEON's
 * denormal flushing is allowed: docs/raspberry-pi.md), and the compiler
 * fuses multiply-adds where the target has them (CMake gives this file
 * -ffp-contract=fast). Register budget: aarch64 has 32 vector registers,
 * so its tile is 8 x 12 (24 accumulators); x86-64 (SSE2 baseline) and
 * 32-bit ARM have 16, so 4 x 8.
 * Scratch is one allocation per call of at most (KC x NC + MC x KC) floats
 * (~0.6 MB); if it fails, a plain triple loop computes the same product. */
#include "ml/gemm.h"

#ifdef SHOAL_HAVE_BLAS

#include <cblas.h>

void
ml_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
         int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
	cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
	            trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
	            ldc);
}

const char *
ml_gemm_backend(void)
{
	return "openblas";
}

void
ml_gemm_set_threads(int n)
{
	openblas_set_num_threads(n > 0 ? n : 1);
}

#else /* portable */

#include <stdlib.h>
#include <string.h>

typedef float v4f __attribute__((vector_size(16)));

#if defined(__aarch64__)
#define MR 8
#define NR 12
#else
#define MR 4
#define NR 8
#endif
#define NV (NR / 4)
#define KC 256
#define MC (MR * 16)
#define NC 480 /* a multiple of both NRs */

_Static_assert(NR % 4 == 0, "NR is a whole number of 4-float vectors");
_Static_assert(NC % NR == 0 && MC % MR == 0, "blocks hold whole slivers");

static inline float
op_at(const float *X, int ld, bool trans, int r, int c)
{
	return trans ? X[(size_t)c * (size_t)ld + (size_t)r] : X[(size_t)r * (size_t)ld + (size_t)c];
}

/* Rows [i0, i0+mc) x columns [p0, p0+kc) of op(A) into MR-row slivers:
 * sliver s holds, for each p, the MR values of its rows (zero past mc). */
static void
pack_a(bool ta, const float *A, int lda, int i0, int mc, int p0, int kc, float *out)
{
	for (int ir = 0; ir < mc; ir += MR) {
		int rows = mc - ir < MR ? mc - ir : MR;

		for (int p = 0; p < kc; p++) {
			for (int r = 0; r < rows; r++)
				out[r] = op_at(A, lda, ta, i0 + ir + r, p0 + p);
			for (int r = rows; r < MR; r++)
				out[r] = 0.0f;
			out += MR;
		}
	}
}

/* Rows [p0, p0+kc) x columns [j0, j0+nc) of op(B) into NR-column slivers:
 * sliver s holds, for each p, the NR values of its columns (zero past nc). */
static void
pack_b(bool tb, const float *B, int ldb, int p0, int kc, int j0, int nc, float *out)
{
	for (int jr = 0; jr < nc; jr += NR) {
		int cols = nc - jr < NR ? nc - jr : NR;

		for (int p = 0; p < kc; p++) {
			if (!tb && cols == NR)
				memcpy(out, B + (size_t)(p0 + p) * (size_t)ldb + (size_t)(j0 + jr),
				       NR * sizeof *out);
			else {
				for (int c = 0; c < cols; c++)
					out[c] = op_at(B, ldb, tb, p0 + p, j0 + jr + c);
				for (int c = cols; c < NR; c++)
					out[c] = 0.0f;
			}
			out += NR;
		}
	}
}

/* C[0..mr) x [0..nr) += alpha * (MR-row sliver a) . (NR-column sliver b)
 * over kc steps. */
static void
kernel(int kc, const float *restrict a, const float *restrict b, float *restrict c, int ldc,
       float alpha, int mr, int nr)
{
	v4f acc[MR][NV];

	for (int r = 0; r < MR; r++)
		for (int v = 0; v < NV; v++)
			acc[r][v] = (v4f){0.0f, 0.0f, 0.0f, 0.0f};
	for (int p = 0; p < kc; p++) {
		v4f bv[NV];

		for (int v = 0; v < NV; v++)
			memcpy(&bv[v], b + 4 * v, sizeof bv[v]);
		for (int r = 0; r < MR; r++) {
			float ar = a[r];

			for (int v = 0; v < NV; v++)
				acc[r][v] += ar * bv[v];
		}
		a += MR;
		b += NR;
	}
	if (mr == MR && nr == NR) {
		for (int r = 0; r < MR; r++)
			for (int v = 0; v < NV; v++) {
				v4f cv;
				float *cp = c + (size_t)r * (size_t)ldc + 4 * (size_t)v;

				memcpy(&cv, cp, sizeof cv);
				cv += alpha * acc[r][v];
				memcpy(cp, &cv, sizeof cv);
			}
	} else {
		float t[MR][NR];

		memcpy(t, acc, sizeof t);
		for (int r = 0; r < mr; r++)
			for (int j = 0; j < nr; j++)
				c[(size_t)r * (size_t)ldc + (size_t)j] += alpha * t[r][j];
	}
}

/* The reference product, used only when the packing buffers cannot be had. */
static void
gemm_plain(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
           const float *B, int ldb, float *C, int ldc)
{
	for (int i = 0; i < M; i++)
		for (int p = 0; p < K; p++) {
			float ap = alpha * op_at(A, lda, ta, i, p);
			float *ci = C + (size_t)i * (size_t)ldc;

			for (int j = 0; j < N; j++)
				ci[j] += ap * op_at(B, ldb, tb, p, j);
		}
}

static int
round_up(int x, int m)
{
	return (x + m - 1) / m * m;
}

void
ml_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
         int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
	size_t na, nb;
	float *ap, *bp;

	if (M <= 0 || N <= 0)
		return;
	for (int i = 0; i < M; i++) {
		float *ci = C + (size_t)i * (size_t)ldc;

		if (beta == 0.0f)
			memset(ci, 0, (size_t)N * sizeof *ci);
		else if (beta != 1.0f)
			for (int j = 0; j < N; j++)
				ci[j] *= beta;
	}
	if (K <= 0 || alpha == 0.0f)
		return;

	na = (size_t)round_up(M < MC ? M : MC, MR) * (size_t)(K < KC ? K : KC);
	nb = (size_t)round_up(N < NC ? N : NC, NR) * (size_t)(K < KC ? K : KC);
	/* 64-byte aligned, sizes rounded to 64 as aligned_alloc wants. */
	ap = aligned_alloc(64, (na * sizeof *ap + 63) / 64 * 64);
	bp = aligned_alloc(64, (nb * sizeof *bp + 63) / 64 * 64);
	if (ap == NULL || bp == NULL) {
		free(ap);
		free(bp);
		gemm_plain(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, C, ldc);
		return;
	}
	for (int jc = 0; jc < N; jc += NC) {
		int nc = N - jc < NC ? N - jc : NC;

		for (int pc = 0; pc < K; pc += KC) {
			int kc = K - pc < KC ? K - pc : KC;

			pack_b(trans_b, B, ldb, pc, kc, jc, nc, bp);
			for (int ic = 0; ic < M; ic += MC) {
				int mc = M - ic < MC ? M - ic : MC;

				pack_a(trans_a, A, lda, ic, mc, pc, kc, ap);
				for (int jr = 0; jr < nc; jr += NR)
					for (int ir = 0; ir < mc; ir += MR)
						kernel(kc, ap + (size_t)ir * (size_t)kc,
						       bp + (size_t)jr * (size_t)kc,
						       C + (size_t)(ic + ir) * (size_t)ldc + (size_t)(jc + jr),
						       ldc, alpha, mc - ir < MR ? mc - ir : MR,
						       nc - jr < NR ? nc - jr : NR);
			}
		}
	}
	free(ap);
	free(bp);
}

const char *
ml_gemm_backend(void)
{
	return "portable";
}

void
ml_gemm_set_threads(int n)
{
	(void)n;
}

#endif
