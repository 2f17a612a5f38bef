/* gemm_f32.h — carseg's own float32 matrix products, used by nn_linear_items (nn.Linear: x @ w^T),
 * nn_sgemm and nn_attention where the CPU has AVX2 and FMA.
 *
 * Every element is one chain of fused multiply-adds in k order from zero:
 *     acc = 0; for k = 0 .. K-1: acc = fma(x[i][k], w[j][k], acc)
 * so its bits depend on its own row of x and row of w alone: not on where the row sits in the
 * product, on the other rows, on how the product is cut into tiles or over threads, and not on the
 * vector width (the scalar twin gemm_f32_ref gives the same sums with fmaf). OpenBLAS's kernels
 * do not have this property on every CPU (docs/threads.md): a row's bits there can follow its
 * position in the product, which made a text's features depend on the other texts of its batch
 * and two identical queries get CAMs that differ in the last bits.
 *
 * Layout: a 6 x 16 register tile of accumulators (12 AVX2 registers) over the whole K; op(a) read
 * in place 6 rows at a time, op(b) packed 16 columns at a time (k-major, zero columns at the edge)
 * into a per-thread spare (cs_spare_take). Where that buffer cannot be had, the same chains run
 * element by element (slow, the same bits).
 */
#ifndef CARSEG_GEMM_F32_H
#define CARSEG_GEMM_F32_H

#include <stddef.h>

/* 1 when this CPU runs gemm_f32_linear's vector kernel (x86-64 with AVX2 and FMA), else 0.
 * CARSEG_NO_GEMM_F32=1 in the environment (read once) makes it 0: nn_linear_items then runs
 * OpenBLAS item by item, as on a CPU without AVX2. */
int gemm_f32_available(void);
/* Tests: 0 makes gemm_f32_available() return 0 until called again with 1 (not while products run). */
void gemm_f32_set_enabled(int on);

/* The epilogue of a block of sums (nn_epilogue's signature: o = f(o, sums, bias; flags)). */
typedef void (*gemm_f32_epilogue)(float *o, int ldo, const float *sums, int lds, const float *b,
                                  int rows, int cols, int flags);

/* c (m, n; row stride ldc) = a (m, K; row stride lda) @ w (n, K; row stride ldw)^T, through
 * ep(c block, ldc, sums, .., b + j, rows, cols, flags) on each 6 x 16 register tile as it is done
 * (nn_linear_items passes nn_epilogue: bias b (n; may be NULL), NN_ACCUMULATE, NN_GELU).
 * Single-threaded (callers tile and thread). 0 on success; -1, with nothing written, when K <= 0
 * or gemm_f32_available() is 0. */
int gemm_f32_linear(float *c, int ldc, const float *a, int lda, const float *w, int ldw,
                    const float *b, int m, int n, int K, gemm_f32_epilogue ep, int flags);

/* The general product: c (m, n) = alpha * op(a) op(b), or c + alpha * op(a) op(b) with
 * accumulate, cblas-style (row-major; ta/tb: 0 = as stored, 1 = transposed: a is (m, K) or (K, m),
 * b is (K, n) or (n, K)). The same fma chains; single-threaded; 0, or -1 (nothing written) as
 * gemm_f32_linear. */
int gemm_f32(int ta, int tb, int m, int n, int K, float alpha, const float *a, int lda,
             const float *b, int ldb, int accumulate, float *c, int ldc);

/* c = op(a) op(b) with scalar fmaf, for tests: the sums of gemm_f32 (alpha 1) and of
 * gemm_f32_linear (ta 0, tb 1, no bias, flags 0), bit for bit. */
void gemm_f32_ref(int ta, int tb, int m, int n, int K, const float *a, int lda, const float *b,
                  int ldb, float *c, int ldc);

/* Implicit-GEMM convolution: c (m, n; row stride ldc) = sum over segments s < nseg and k < klen of
 * a[i * ars + off[s] + k] * w[j * (nseg * klen) + s * klen + k] (w as nn.Linear's (n, nseg * klen)),
 * one fma chain per element in (s, k) order from zero, as gemm_f32 of the gathered A. A 3x3
 * convolution on a zero-padded channels-last input: nine segments of Cin, off[s] the tap's pixel
 * offset times Cin, rows the output pixels on the padded grid. -1 (nothing done) without AVX2/FMA or
 * out of memory. */
int gemm_f32_segs(int m, int n, int nseg, const size_t *off, int klen, const float *a, int ars,
                  const float *w, float *c, int ldc);

/* B packed once for many products (a convolution's weights): op(b) (K x n; b (n, K) when tb, else
 * (K, n)) into pb, gemm_f32_packed_size(n, K) floats, 64-byte aligned; then c (m, n) = a (m, K) times
 * it, as gemm_f32 gives. -1 without AVX2/FMA (or out of memory in the product). */
size_t gemm_f32_packed_size(int n, int K);
int gemm_f32_pack_b(float *pb, int tb, const float *b, int ldb, int n, int K);
int gemm_f32_prepacked(int m, int n, int K, const float *a, int lda, const float *pb, float *c,
                       int ldc);

#endif
