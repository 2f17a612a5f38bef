/* nn.h — transformer layer kernels (forward), llm.c style: plain loops on float*, outputs first,
 * then inputs, then sizes; shapes in the comments. Mirrors the PyTorch ops OpenAI CLIP uses
 * (LayerNorm in fp32 with eps 1e-5, nn.Linear, nn.MultiheadAttention, QuickGELU).
 *
 * Threads: carseg parallelises with OpenMP, and no result depends on the thread count. Where the
 * CPU has AVX2 + FMA every product runs on carseg's fma-chain kernel (gemm_f32.h): an element's bits
 * depend on its own row and column only, so the tiles, handed out to whichever thread is free, may
 * follow the thread count. Elsewhere a product is cut into tiles of C whose sizes are a function of
 * its shape alone (nn_tiles), each tile one single-threaded OpenBLAS call: every element comes from
 * the same call, so from the same arithmetic, at any thread count (docs/threads.md). OpenBLAS's own
 * thread count is 1 while any nn_* call on it runs and is given back after the last one, so
 * carseg_set_threads bounds the threads, OpenBLAS's threads never run inside ours (the pthread and
 * the OpenMP builds of libopenblas behave the same), and a plain cblas_sgemm from serial code
 * elsewhere still gets OpenBLAS's threads. Called inside a parallel region, the nn_* functions run
 * serially (the same tiles, one after the other).
 */
#ifndef CARSEG_NN_H
#define CARSEG_NN_H

#include <stddef.h>

/* The tiles of a product C (M, N) with inner size K: tm x tn tiles of mt x nt (the last row and
 * column of tiles may be smaller), row-major. A function of M, N, K only. */
typedef struct {
    int mt, nt, tm, tn;
} nn_tiling;
nn_tiling nn_tiles(int M, int N, int K);

/* Row-major C(M,N) = alpha * op(A) op(B) + beta * C, like cblas_sgemm(CblasRowMajor, ...),
 * in tiles over the OpenMP threads (the kernel's for beta 0 or 1, else nn_tiles(M, N, K) on
 * OpenBLAS). ta/tb: 0 = as stored, 1 = transposed. A is (M,K) or (K,M) when ta, B is (K,N) or (N,K)
 * when tb. Safe to call inside a parallel region (runs serially). */
void nn_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* out (N, C) = layernorm(x (N, C)) * w (C) + b (C); eps 1e-5, biased variance. out may be x. */
void nn_layernorm(float *out, const float *x, const float *w, const float *b, int N, int C);

/* out (N, OC) = x (N, IC) @ w (OC, IC)^T + b (OC); b may be NULL. (torch.nn.Linear) */
void nn_linear(float *out, const float *x, const float *w, const float *b, int N, int IC, int OC);
/* nn_linear with fused epilogues, in one parallel region:
 *   NN_ACCUMULATE: out += x @ w^T + b (the residual connection; out holds the residual)
 *   NN_GELU:       out = QuickGELU(x @ w^T + b) */
enum { NN_ACCUMULATE = 1, NN_GELU = 2 };
void nn_linear_ex(float *out, const float *x, const float *w, const float *b, int N, int IC, int OC,
                  int flags);
/* nn_linear_ex on a batch of items (sequences, images) of rows rows each, x (items * rows, IC):
 * every item's product is cut into the tiles of its own shape (rows, OC, IC), so an item's
 * output depends on its own rows only, never on the other items of the batch or their number.
 * (OpenBLAS's kernels give other bits for a row at another place in a product on some CPUs:
 * docs/threads.md.) */
void nn_linear_items(float *out, const float *x, const float *w, const float *b, int items,
                     int rows, int IC, int OC, int flags);
/* nn_linear_ex's epilogue for other product kernels (gemm_amx.c), on a block o (rows, cols; row
 * stride ldo) and the product's sums c (rows, cols; row stride ldc): o = c (or o + c with
 * NN_ACCUMULATE), + b (b may be NULL), QuickGELU with NN_GELU; the same float operations in the
 * same order as nn_linear_ex's. */
void nn_epilogue(float *o, int ldo, const float *c, int ldc, const float *b, int rows, int cols,
                 int flags);
/* The naive triple loop twin of nn_linear, for tests. */
void nn_linear_naive(float *out, const float *x, const float *w, const float *b, int N, int IC,
                     int OC);

/* x (n) <- x * sigmoid(1.702 x), in place. */
void nn_quickgelu(float *x, size_t n);

/* Row-wise softmax in place: x (rows, cols). */
void nn_softmax(float *x, int rows, int cols);
/* The same, serial (for callers inside their own parallel region). */
void nn_softmax_rows(float *x, int rows, int cols);

/* Serial softmaxes of x * scale (for callers inside their own parallel region):
 * nn_softmax_cols over each column of x (rows, cols; row stride ld), down the rows;
 * nn_softmax_short_rows over each of rows consecutive runs of n values (x (rows, n)). */
void nn_softmax_cols(float *x, int rows, int cols, int ld, float scale);
void nn_softmax_short_rows(float *x, int rows, int n, float scale);
/* Exact-form GELU x/2 (1 + erf(x / sqrt 2)) in place, serial, with a vectorised erf of |error| <=
 * 1.5e-7 (Abramowitz & Stegun 7.1.26; torch's CPU GELU uses an approximation of the same size).
 * Its AVX2 path runs where gemm_f32_available() (so CARSEG_NO_GEMM_F32=1 turns it off too); the
 * scalar path does the same fused operations: the same bits either way, only slower. */
void nn_gelu_rows(float *x, size_t n);

/* Row-wise L2 normalisation in place: x (rows, cols) <- x / ||x|| (rows of zeros stay zero). */
void nn_l2norm(float *x, int rows, int cols);

/* exp(x) for float with ~2 ulp error, vectorisable (used by the softmax and QuickGELU). */
float nn_expf(float x);

/* Multi-head scaled dot-product attention, as torch.nn.functional.multi_head_attention_forward
 * after the input projection (the caller runs nn_linear with in_proj, then this, then out_proj).
 *   out   (B, L, C): concatenated head outputs (before out_proj)
 *   probs (B, NH, L, L): per-head attention probabilities (required: it is also the scratch;
 *         Grad-CAM's backward reads it)
 *   avg   (B, L, L) or NULL: probabilities averaged over the heads (need_weights=True)
 *   qkv   (B, L, 3C): [q | k | v] per token; head h uses columns h*C/NH .. (h+1)*C/NH - 1
 *   causal: mask j > i (CLIP's text tower). Head dim = C / NH; q is scaled by 1/sqrt(head dim). */
void nn_attention(float *out, float *probs, float *avg, const float *qkv, int B, int L, int C,
                  int NH, int causal);
/* avg (B, L, L) = probs (B, NH, L, L) summed over the heads / NH (nn_attention's avg). */
void nn_attention_avg(float *avg, const float *probs, int B, int L, int NH);

/* Float32 -> fp16 (round to nearest even, subnormals, inf/nan) -> float32. */
float nn_round_fp16(float x);

#endif
