/* nn.c — forward kernels of CLIP's transformer layers (see nn.h). Mirrors the PyTorch 1.13 CPU ops
 * used by OpenAI clip/model.py: F.layer_norm, F.linear, F.multi_head_attention_forward (q scaled by
 * 1/sqrt(head dim), optional additive causal mask, softmax, head-averaged weights), QuickGELU.
 */
#include "nn.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The elementwise kernels are built for AVX-512, AVX2 and the baseline and picked at load time
 * (GCC target_clones, x86-64 + glibc), and without trapping math so that the branch-free clamps
 * of expf_fast if-convert and the loops vectorise. Results do not depend on the clone beyond the
 * order of the vectorised sums. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NN_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NN_HOT
#endif
#define NN_INLINE static inline

// ---------------------------------------------------------------------------------------------
// threads and the matrix product

/* While one of our parallel regions calls BLAS, OpenBLAS runs single-threaded (each OpenMP thread
 * computes its own block); afterwards its thread count is restored, so serial callers elsewhere
 * keep OpenBLAS's own threading. Only the count is global: concurrent callers can at worst see
 * each other's setting for one call (a matter of speed, not of results). */
static int blas_solo_begin(void) {
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;   /* the caller's region: leave the setting alone */
#endif
    int prev = openblas_get_num_threads();
    if (prev > 1) openblas_set_num_threads(1);
    return prev;
}
static void blas_solo_end(int prev) {
    if (prev > 1) openblas_set_num_threads(prev);
}

static int nn_threads(void) {
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Column (or row) blocks of the product for nt threads: multiples of 16 so the kernels stay
 * aligned. Returns the block length; *split_n says which dimension is split. */
static int gemm_chunk(int M, int N, int K, int *nt, int *split_n) {
    if (*nt > 1 && 2.0 * M * N * K < 4e6) *nt = 1;   /* too small to split */
    *split_n = N >= M;
    int len = *split_n ? N : M;
    int chunk = (len + *nt - 1) / *nt;
    chunk = (chunk + 15) & ~15;
    return chunk < len ? chunk : len;
}

void nn_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    int nt = nn_threads(), split_n;
    enum CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    int chunk = gemm_chunk(M, N, K, &nt, &split_n), len = split_n ? N : M;
    int nblk = (len + chunk - 1) / chunk;
    int prev = blas_solo_begin();   /* also with one block: the OpenMP thread count is the limit */
#pragma omp parallel for schedule(static, 1) num_threads(nt) if (nblk > 1)
    for (int t = 0; t < nblk; t++) {
        int s = t * chunk, e = s + chunk < len ? s + chunk : len;
        if (split_n) {
            const float *Bt = tb ? B + (size_t)s * ldb : B + s;
            cblas_sgemm(CblasRowMajor, TA, TB, M, e - s, K, alpha, A, lda, Bt, ldb, beta, C + s,
                        ldc);
        } else {
            const float *At = ta ? A + s : A + (size_t)s * lda;
            cblas_sgemm(CblasRowMajor, TA, TB, e - s, N, K, alpha, At, lda, B, ldb, beta,
                        C + (size_t)s * ldc, ldc);
        }
    }
    blas_solo_end(prev);
}

// ---------------------------------------------------------------------------------------------
// elementwise

/* Cephes-style expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n from the exponent
 * bits. Branch-free so that `omp simd` loops vectorise it. Max error ~2 ulp on [-87, 88]. */
NN_INLINE float expf_fast(float x) {
    x = x < 88.3762626647949f ? x : 88.3762626647949f;
    x = x > -87.3365447504f ? x : -87.3365447504f;
    float t = x * 1.44269504088896341f + 12582912.0f;   /* round to nearest via the 1.5*2^23 trick */
    float n = t - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}
float nn_expf(float x) { return expf_fast(x); }

NN_HOT static void quickgelu_span(float *restrict x, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf_fast(-1.702f * x[i]));
}

void nn_quickgelu(float *x, size_t n) {
    /* x * sigmoid(1.702 x) */
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t s = 0; s < n; s += 4096) quickgelu_span(x + s, s + 4096 < n ? 4096 : n - s);
}

NN_HOT static void softmax_row(float *restrict x, int n) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        float e = expf_fast(x[j] - mx);
        x[j] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < n; j++) x[j] *= inv;
}

void nn_softmax_rows(float *x, int rows, int cols) {
    for (int i = 0; i < rows; i++) softmax_row(x + (size_t)i * cols, cols);
}

void nn_softmax(float *x, int rows, int cols) {
#pragma omp parallel for schedule(static) if ((size_t)rows * cols > 65536)
    for (int i = 0; i < rows; i++) softmax_row(x + (size_t)i * cols, cols);
}

void nn_l2norm(float *x, int rows, int cols) {
    for (int i = 0; i < rows; i++) {
        float *r = x + (size_t)i * cols;
        double ss = 0;
        for (int j = 0; j < cols; j++) ss += (double)r[j] * r[j];
        if (ss <= 0) continue;
        float nrm = (float)sqrt(ss);
        for (int j = 0; j < cols; j++) r[j] /= nrm;
    }
}

float nn_round_fp16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    uint32_t sign = v.u & 0x80000000u, ax = v.u & 0x7fffffffu;
    if (ax >= 0x7f800000u) return f;                       /* inf, nan */
    if (ax < 0x38800000u) {                                /* below 2^-14: fp16 subnormal grid */
        float q = 0x1p-24f;
        return rintf(f / q) * q;                           /* exact scaling, ties to even */
    }
    uint32_t lsb = (ax >> 13) & 1u;
    ax = (ax + 0xfffu + lsb) & ~0x1fffu;                   /* keep 10 mantissa bits, RNE */
    if (ax >= 0x47800000u) ax = 0x7f800000u;               /* >= 65520 overflows to inf */
    v.u = sign | ax;
    return v.f;
}

// ---------------------------------------------------------------------------------------------
// layers

NN_HOT static void layernorm_row(float *restrict o, const float *restrict x,
                                 const float *restrict w, const float *restrict b, int C) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int c = 0; c < C; c++) s += x[c];
    float m = s / C, ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++) ss += (x[c] - m) * (x[c] - m);
    float rstd = 1.0f / sqrtf(ss / C + 1e-5f);
#pragma omp simd
    for (int c = 0; c < C; c++) o[c] = (x[c] - m) * rstd * w[c] + b[c];
}

void nn_layernorm(float *out, const float *x, const float *w, const float *b, int N, int C) {
    if (out == x) {   /* in place: through a row buffer (the kernel takes restrict pointers) */
#pragma omp parallel if ((size_t)N * C > 32768)
        {
            float *tmp = malloc(sizeof(float) * C);
#pragma omp for schedule(static)
            for (int i = 0; i < N; i++) {
                memcpy(tmp, x + (size_t)i * C, sizeof(float) * C);
                layernorm_row(out + (size_t)i * C, tmp, w, b, C);
            }
            free(tmp);
        }
        return;
    }
#pragma omp parallel for schedule(static) if ((size_t)N * C > 32768)
    for (int i = 0; i < N; i++) layernorm_row(out + (size_t)i * C, x + (size_t)i * C, w, b, C);
}

NN_HOT static void bias_gelu_block(float *restrict o, int ldo, const float *restrict b, int rows,
                                   int cols, int gelu) {
    for (int i = 0; i < rows; i++) {
        float *r = o + (size_t)i * ldo;
        if (b) {
#pragma omp simd
            for (int j = 0; j < cols; j++) r[j] += b[j];
        }
        if (gelu) {
#pragma omp simd
            for (int j = 0; j < cols; j++) r[j] = r[j] / (1.0f + expf_fast(-1.702f * r[j]));
        }
    }
}

NN_HOT void nn_epilogue(float *restrict o, int ldo, const float *restrict c, int ldc,
                        const float *restrict b, int rows, int cols, int flags) {
    for (int i = 0; i < rows; i++) {
        float *r = o + (size_t)i * ldo;
        const float *cr = c + (size_t)i * ldc;
        if (flags & NN_ACCUMULATE) {
#pragma omp simd
            for (int j = 0; j < cols; j++) r[j] += cr[j];
        } else {
            memcpy(r, cr, sizeof(float) * cols);
        }
    }
    bias_gelu_block(o, ldo, b, rows, cols, (flags & NN_GELU) != 0);
}

void nn_linear_ex(float *out, const float *x, const float *w, const float *b, int N, int IC, int OC,
                  int flags) {
    if (N <= 0 || OC <= 0) return;
    int nt = nn_threads(), split_n;
    int chunk = gemm_chunk(N, OC, IC, &nt, &split_n), len = split_n ? OC : N;
    int nblk = (len + chunk - 1) / chunk;
    int prev = blas_solo_begin();
    float beta = (flags & NN_ACCUMULATE) ? 1.0f : 0.0f;
    int gelu = (flags & NN_GELU) != 0;
    /* one parallel region: each thread's block of the product, then its bias (+ GELU) */
#pragma omp parallel for schedule(static, 1) num_threads(nt) if (nblk > 1)
    for (int t = 0; t < nblk; t++) {
        int s = t * chunk, e = s + chunk < len ? s + chunk : len;
        if (split_n) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, e - s, IC, 1.0f, x, IC,
                        w + (size_t)s * IC, IC, beta, out + s, OC);
            bias_gelu_block(out + s, OC, b ? b + s : NULL, N, e - s, gelu);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, e - s, OC, IC, 1.0f,
                        x + (size_t)s * IC, IC, w, IC, beta, out + (size_t)s * OC, OC);
            bias_gelu_block(out + (size_t)s * OC, OC, b, e - s, OC, gelu);
        }
    }
    blas_solo_end(prev);
}

void nn_linear(float *out, const float *x, const float *w, const float *b, int N, int IC, int OC) {
    nn_linear_ex(out, x, w, b, N, IC, OC, 0);
}

void nn_linear_naive(float *out, const float *x, const float *w, const float *b, int N, int IC,
                     int OC) {
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double acc = b ? b[o] : 0.0;
            for (int k = 0; k < IC; k++) acc += (double)x[(size_t)i * IC + k] * w[(size_t)o * IC + k];
            out[(size_t)i * OC + o] = (float)acc;
        }
}

void nn_attention(float *out, float *probs, float *avg, const float *qkv, int B, int L, int C,
                  int NH, int causal) {
    int hd = C / NH;
    float scale = 1.0f / sqrtf((float)hd);
    int C3 = 3 * C;
    /* work items: (batch, head, block of query rows). Per block: S = q k^T (sgemm, only the
     * columns a causal row can see), fused mask + softmax, out = P v (sgemm). The block of P
     * stays in cache (L2) between the three steps. */
    int RB = 256;   /* larger blocks repack K less often; the block of P stays within ~1 MB */
    while (RB > 16 && (size_t)RB * L * sizeof(float) > (1u << 20)) RB /= 2;
    int nrb = (L + RB - 1) / RB;
    int par = B * NH * nrb > 1 && nn_threads() > 1;
    int prev = blas_solo_begin();
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int it = 0; it < B * NH * nrb; it++) {
        int bh = it / nrb, r0 = (it % nrb) * RB, r1 = r0 + RB < L ? r0 + RB : L;
        int b = bh / NH, h = bh % NH, ncol = causal ? r1 : L;
        const float *q = qkv + ((size_t)b * L + r0) * C3 + h * hd;
        const float *k = qkv + (size_t)b * L * C3 + C + h * hd;
        const float *v = k + C;
        float *P = probs + ((size_t)bh * L + r0) * L;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, ncol, hd, scale, q, C3, k,
                    C3, 0.0f, P, L);
        for (int i = r0; i < r1; i++) {
            float *row = P + (size_t)(i - r0) * L;
            int n = causal ? i + 1 : L;
            softmax_row(row, n);
            if (n < L) memset(row + n, 0, sizeof(float) * (L - n));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, hd, ncol, 1.0f, P, L, v,
                    C3, 0.0f, out + ((size_t)b * L + r0) * C + h * hd, C);
    }
    blas_solo_end(prev);
    if (avg) nn_attention_avg(avg, probs, B, L, NH);
}

void nn_attention_avg(float *avg, const float *probs, int B, int L, int NH) {
    float fnh = (float)NH;
#pragma omp parallel for schedule(static) if ((size_t)B * L * L * NH > 65536)
    for (int bi = 0; bi < B * L; bi++) {
        int b = bi / L, i = bi % L;
        float *a = avg + (size_t)bi * L;
        memcpy(a, probs + ((size_t)b * NH * L + i) * L, sizeof(float) * L);
        for (int h = 1; h < NH; h++) {
            const float *p = probs + (((size_t)b * NH + h) * L + i) * L;
#pragma omp simd
            for (int j = 0; j < L; j++) a[j] += p[j];
        }
#pragma omp simd
        for (int j = 0; j < L; j++) a[j] /= fnh;   /* sum over heads / NH, as torch */
    }
}
