/* gemm.h - the one matrix product the models use, row-major
 *   C (M x N) = alpha * op(A) (M x K) . op(B) (K x N) + beta * C
 * with op(X) = X or X^T, the cblas_sgemm(CblasRowMajor, ...) contract.
 *
 * Two builds (CMake option SHOAL_BLAS): ON calls OpenBLAS through CBLAS;
 * OFF uses the portable packed GEMM of gemm.c, written with GCC vector
 * extensions so that it compiles to SSE on x86-64 and NEON on aarch64
 * without a BLAS: the small static edge binary (DESIGN.md section 6).
 * The portable GEMM is single-threaded; beta == 0 overwrites C (NaNs in C
 * do not survive), as BLAS does. */
#ifndef SHOAL_ML_GEMM_H
#define SHOAL_ML_GEMM_H

#include <stdbool.h>

/* trans_a / trans_b: false for X, true for X^T; lda, ldb, ldc are the row
 * strides of A, B, C as stored. */
void ml_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* "openblas" or "portable". */
const char *ml_gemm_backend(void);

/* Threads the backend may use per call (OpenBLAS; the portable GEMM uses
 * one whatever n is). */
void ml_gemm_set_threads(int n);

#endif
