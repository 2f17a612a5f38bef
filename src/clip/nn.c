/* nn.c — forward kernels of CLIP's transformer layers (see nn.h). Mirrors the PyTorch 1.13 CPU ops
 * used by OpenAI clip/model.py: F.layer_norm, F.linear, F.multi_head_attention_forward (q scaled by
 * 1/sqrt(head dim), optional additive causal mask, softmax, head-averaged weights), QuickGELU.
 */
#include "nn.h"

#include "gemm_f32.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The elementwise kernels are built for AVX2 and the baseline and picked at load time (GCC
 * target_clones, x86-64 + glibc), and without trapping math so that the branch-free clamps of
 * expf_fast if-convert and the loops vectorise. Results do not depend on the clone beyond the
 * order of the vectorised sums (LayerNorm, softmax), which follows the vector width: so there is
 * no AVX-512 clone, and every x86-64 CPU with AVX2 runs the same instructions here, Intel and AMD
 * alike (with the fma-chain products, the float32 results are meant to be the same bits on all of
 * them: docs/threads.md). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NN_HOT __attribute__((target_clones("avx2", "default")))
#else
#define NN_HOT
#endif
#define NN_INLINE static inline

// ---------------------------------------------------------------------------------------------
// threads and the matrix product

/* OpenBLAS runs single-threaded inside every nn_* call: a carseg product is split into tiles by
 * nn_tiles, each tile one single-threaded OpenBLAS call, because OpenBLAS's own threads split a
 * product by their count and its kernels give other bits for an element when the product is
 * split elsewhere (measured with its Haswell kernels on a Zen 4: docs/threads.md). The first of
 * the overlapping nn_* calls (any thread) saves OpenBLAS's thread count and sets 1; the last one
 * gives it back, so serial callers outside carseg keep OpenBLAS's threading and no carseg call
 * ever sees more than one OpenBLAS thread, however many threads call carseg at once. */
static pthread_mutex_t g_solo_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_solo_depth, g_solo_prev;

static void blas_solo_begin(void) {
    pthread_mutex_lock(&g_solo_mu);
    if (g_solo_depth++ == 0) {
        g_solo_prev = openblas_get_num_threads();
        if (g_solo_prev > 1) openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&g_solo_mu);
}
static void blas_solo_end(void) {
    pthread_mutex_lock(&g_solo_mu);
    if (--g_solo_depth == 0 && g_solo_prev > 1) openblas_set_num_threads(g_solo_prev);
    pthread_mutex_unlock(&g_solo_mu);
}

static int nn_threads(void) {
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* The tiles of C (M, N) for a product with inner size K: a function of the shape alone (never of
 * the thread count), so every element is computed by the same OpenBLAS call, and so to the same
 * bits, whichever thread runs which tile and however many threads there are.
 * Sizes: tiles of at least NN_TILE_MIN_M rows and NN_TILE_MIN_N columns (each tile packs its rows
 * of A and its columns of B again: smaller tiles cost more, see docs/threads.md), as many as
 * needed for NN_TILE_TARGET tiles where the product is big enough, multiples of 16, rows and
 * columns split evenly; among the splits reaching the target the one packing the least. Products
 * under 4 MFLOP are one tile. */
#ifndef NN_TILE_MIN_M
#define NN_TILE_MIN_M 256
#endif
#ifndef NN_TILE_MIN_N
#define NN_TILE_MIN_N 256
#endif
#ifndef NN_TILE_TARGET
#define NN_TILE_TARGET 64
#endif

static int even16(int len, int parts) {   /* the tile length splitting len into parts */
    int t = (len + parts - 1) / parts;
    t = (t + 15) & ~15;
    return t < len ? t : len;
}

static nn_tiling tiles_target(int M, int N, int K, int target) {
    nn_tiling t = {M > 0 ? M : 1, N > 0 ? N : 1, 1, 1};
    if (M <= 0 || N <= 0 || 2.0 * M * N * K < 4e6) return t;
    int tm_max = M / NN_TILE_MIN_M > 1 ? M / NN_TILE_MIN_M : 1;
    int tn_max = N / NN_TILE_MIN_N > 1 ? N / NN_TILE_MIN_N : 1;
    double best = 0;
    for (int tm = 1; tm <= tm_max; tm++) {
        int tn = (target + tm - 1) / tm;
        tn = tn < tn_max ? tn : tn_max;
        int mt = even16(M, tm), nt = even16(N, tn);
        int rm = (M + mt - 1) / mt, rn = (N + nt - 1) / nt, T = rm * rn;
        /* short of the target: fewer tiles are worse; then the packed volume (rn M + rm N) */
        double score = (T < target ? 1e15 * (target - T) : 0) +
                       (double)rn * M + (double)rm * N;
        if (tm == 1 || score < best) best = score, t = (nn_tiling){mt, nt, rm, rn};
    }
    return t;
}

nn_tiling nn_tiles(int M, int N, int K) { return tiles_target(M, N, K, NN_TILE_TARGET); }

/* The tiles for the fma-chain kernel: its bits do not depend on the tiles, so they may follow the
 * thread count: about 8 tiles per thread (nn_tiles's rules, at least 256 x 256, with that target),
 * their number rounded up to a multiple of th where that is cheap (3 tiles on 2 threads leave one
 * idle a third of the time). Measured on an AMD EPYC (avx2) at 2 threads (noisy, one alternated
 * run each): nn_tiles's 64 tiles made ViT-B/16 at 512 x 384 ~6 % slower than 4 (1 018 against
 * 954 ms), while with 2 tiles per thread the whole method's classifier stage took 1.17x the
 * time of the code before thread invariance (29.7 against 25.5 s) and with 8 per thread 0.95-0.98x. */
static nn_tiling tiles_for_threads(int M, int N, int K, int th) {
    nn_tiling t = tiles_target(M, N, K, th > 1 ? 8 * th : 1);
    int T = t.tm * t.tn;
    if (th <= 1 || T % th == 0 || 2.0 * M * N * K < 4e6) return t;
    for (int tn = t.tn + 1; tn <= t.tn + th; tn++) {   /* more column tiles, whole 16-column panels */
        int nt = (N + tn - 1) / tn;
        nt = (nt + 15) & ~15;
        int rn = (N + nt - 1) / nt;
        if (nt >= 16 && (t.tm * rn) % th == 0) return (nn_tiling){t.mt, nt, t.tm, rn};
    }
    for (int tm = t.tm + 1; tm <= t.tm + th; tm++) {   /* else more row tiles */
        int mt = (M + tm - 1) / tm;
        int rm = (M + mt - 1) / mt;
        if ((rm * t.tn) % th == 0) return (nn_tiling){mt, t.nt, rm, t.tn};
    }
    return t;
}

void nn_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    enum CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    /* carseg's fma-chain kernel (gemm_f32.h) where it runs: the bits do not depend on the tiles */
    int own = K > 0 && (beta == 0.0f || beta == 1.0f) && gemm_f32_available(), th = nn_threads();
    nn_tiling tl = own ? tiles_for_threads(M, N, K, th) : nn_tiles(M, N, K);
    int nt = tl.tm * tl.tn;
    th = th < nt ? th : nt;
    if (!own) blas_solo_begin();
    /* tiles in row-major order, handed out one at a time to whichever thread is free */
#pragma omp parallel for schedule(dynamic, 1) num_threads(th) if (th > 1)
    for (int t = 0; t < nt; t++) {
        int i0 = t / tl.tn * tl.mt, j0 = t % tl.tn * tl.nt;
        int m = M - i0 < tl.mt ? M - i0 : tl.mt, n = N - j0 < tl.nt ? N - j0 : tl.nt;
        const float *At = ta ? A + i0 : A + (size_t)i0 * lda;
        const float *Bt = tb ? B + (size_t)j0 * ldb : B + j0;
        float *Ct = C + (size_t)i0 * ldc + j0;
        if (own) gemm_f32(ta, tb, m, n, K, alpha, At, lda, Bt, ldb, beta != 0.0f, Ct, ldc);
        else cblas_sgemm(CblasRowMajor, TA, TB, m, n, K, alpha, At, lda, Bt, ldb, beta, Ct, ldc);
    }
    if (!own) blas_solo_end();
}

// ---------------------------------------------------------------------------------------------
// elementwise

/* Cephes-style expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n from the exponent
 * bits. Branch-free so that `omp simd` loops vectorise it. Max error ~2 ulp on [-87, 88]. Its
 * constants are shared with exp_fma and exp8 below (the same steps as fused multiply-adds). */
#define EXP_HI 88.3762626647949f
#define EXP_LO -87.3365447504f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_ROUND 12582912.0f   /* round to nearest via the 1.5*2^23 trick */
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO 2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f
NN_INLINE float expf_fast(float x) {
    x = x < EXP_HI ? x : EXP_HI;
    x = x > EXP_LO ? x : EXP_LO;
    float t = x * EXP_LOG2E + EXP_ROUND;
    float n = t - EXP_ROUND;
    float r = x - n * EXP_LN2_HI;
    r = r - n * -EXP_LN2_LO;
    float p = EXP_P0;
    p = p * r + EXP_P1;
    p = p * r + EXP_P2;
    p = p * r + EXP_P3;
    p = p * r + EXP_P4;
    p = p * r + EXP_P5;
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

/* softmax over each column of x (rows, cols; row stride ld) of x * scale, serial: the max, the
 * exponentials and their sums run down the rows, one lane per column (the same operations at any
 * vector width: each column's sum is a chain in row order) */
NN_HOT static void softmax_cols_span(float *restrict x, int rows, int cols, int ld, float scale,
                                     float *restrict mx, float *restrict sum) {
    for (int j = 0; j < cols; j++) mx[j] = -INFINITY, sum[j] = 0.0f;
    for (int i = 0; i < rows; i++) {
        const float *r = x + (size_t)i * ld;
#pragma omp simd
        for (int j = 0; j < cols; j++) {
            float v = r[j] * scale;
            mx[j] = v > mx[j] ? v : mx[j];
        }
    }
    for (int i = 0; i < rows; i++) {
        float *r = x + (size_t)i * ld;
#pragma omp simd
        for (int j = 0; j < cols; j++) {
            float e = expf_fast(r[j] * scale - mx[j]);
            r[j] = e;
            sum[j] += e;
        }
    }
    for (int j = 0; j < cols; j++) sum[j] = 1.0f / sum[j];
    for (int i = 0; i < rows; i++) {
        float *r = x + (size_t)i * ld;
#pragma omp simd
        for (int j = 0; j < cols; j++) r[j] *= sum[j];
    }
}

void nn_softmax_cols(float *x, int rows, int cols, int ld, float scale) {
    float mx[64], sum[64];
    for (int j0 = 0; j0 < cols; j0 += 64)
        softmax_cols_span(x + j0, rows, cols - j0 < 64 ? cols - j0 : 64, ld, scale, mx, sum);
}

/* softmax of x * scale over short rows (n <= 64), serial */
NN_HOT static void softmax_short(float *restrict x, int rows, int n, float scale) {
    for (int i = 0; i < rows; i++, x += n) {
        float mx = -INFINITY, e[64], sum = 0.0f;
        for (int j = 0; j < n; j++) {
            float v = x[j] * scale;
            mx = v > mx ? v : mx;
        }
#pragma omp simd
        for (int j = 0; j < n; j++) e[j] = expf_fast(x[j] * scale - mx);
        for (int j = 0; j < n; j++) sum += e[j];
        float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < n; j++) x[j] = e[j] * inv;
    }
}

void nn_softmax_short_rows(float *x, int rows, int n, float scale) {
    if (n > 64) {
        for (int i = 0; i < rows; i++) {
            float *r = x + (size_t)i * n;
            for (int j = 0; j < n; j++) r[j] *= scale;
            softmax_row(r, n);
        }
        return;
    }
    softmax_short(x, rows, n, scale);
}

/* GELU with erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, the size of torch's own
 * vectorised erf's error) and expf_fast's polynomial, every step a fused multiply-add where one
 * fits: gelu1 in scalar fmaf, gelu8 the same operations on 8 lanes (AVX2 + FMA), so the bits do not
 * depend on which of the two ran */
static inline float exp_fma(float x) {
    x = x < EXP_HI ? x : EXP_HI;
    x = x > EXP_LO ? x : EXP_LO;
    float n = fmaf(x, EXP_LOG2E, EXP_ROUND) - EXP_ROUND;
    float r = fmaf(n, -EXP_LN2_HI, x);
    r = fmaf(n, EXP_LN2_LO, r);
    float p = fmaf(EXP_P0, r, EXP_P1);
    p = fmaf(p, r, EXP_P2);
    p = fmaf(p, r, EXP_P3);
    p = fmaf(p, r, EXP_P4);
    p = fmaf(p, r, EXP_P5);
    p = fmaf(p, r * r, r) + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float sc;
    memcpy(&sc, &e, sizeof sc);
    return p * sc;
}
static inline float gelu1(float v) {
    float z = v * 0.70710678118654752f, a = fabsf(z);
    float t = 1.0f / fmaf(0.3275911f, a, 1.0f);
    float r = fmaf(1.061405429f, t, -1.453152027f);
    r = fmaf(r, t, 1.421413741f);
    r = fmaf(r, t, -0.284496736f);
    r = fmaf(r, t, 0.254829592f);
    float y = fmaf(-(r * t), exp_fma(-(a * a)), 1.0f);
    return 0.5f * v * (1.0f + copysignf(y, z));
}
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
    x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));
    const __m256 magic = _mm256_set1_ps(EXP_ROUND);
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(EXP_LOG2E), magic), magic);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-EXP_LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(EXP_P0), r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
__attribute__((target("avx2,fma"))) static void gelu_avx2(float *x, size_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 z = _mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f));
        __m256 a = _mm256_andnot_ps(sign, z);
        __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, one));
        __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(1.061405429f), t, _mm256_set1_ps(-1.453152027f));
        r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(1.421413741f));
        r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(-0.284496736f));
        r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(0.254829592f));
        __m256 ex = exp8(_mm256_xor_ps(sign, _mm256_mul_ps(a, a)));
        __m256 y = _mm256_fmadd_ps(_mm256_xor_ps(sign, _mm256_mul_ps(r, t)), ex, one);
        y = _mm256_or_ps(_mm256_andnot_ps(sign, y), _mm256_and_ps(sign, z));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(one, y)));
    }
    for (; i < n; i++) x[i] = gelu1(x[i]);
}
#endif

void nn_gelu_rows(float *x, size_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (gemm_f32_available()) {
        gelu_avx2(x, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) x[i] = gelu1(x[i]);
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

/* static, with the extern nn_epilogue a plain call to it: GCC gives an extern target_clones
 * function (its ifunc and .resolver) default visibility whatever -fvisibility says, which would
 * export it from libcarseg.so */
static NN_HOT void epilogue_clones(float *restrict o, int ldo, const float *restrict c, int ldc,
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

void nn_epilogue(float *restrict o, int ldo, const float *restrict c, int ldc, const float *restrict b,
                 int rows, int cols, int flags) {
    epilogue_clones(o, ldo, c, ldc, b, rows, cols, flags);
}

/* The tile loop of nn_linear_items on the fma-chain kernel (gemm_f32.h): a row's bits do not
 * depend on its place in the product, so the whole batch is one product, tiled by its shape. */
static void linear_f32(float *out, const float *x, const float *w, const float *b, int N, int IC,
                       int OC, int flags) {
    int th = nn_threads();
    nn_tiling tl = tiles_for_threads(N, OC, IC, th);
    int nt = tl.tm * tl.tn;
    th = th < nt ? th : nt;
#pragma omp parallel for schedule(dynamic, 1) num_threads(th) if (th > 1)
    for (int t = 0; t < nt; t++) {
        int i0 = t / tl.tn * tl.mt, j0 = t % tl.tn * tl.nt;
        int m = N - i0 < tl.mt ? N - i0 : tl.mt, n = OC - j0 < tl.nt ? OC - j0 : tl.nt;
        gemm_f32_linear(out + (size_t)i0 * OC + j0, OC, x + (size_t)i0 * IC, IC, w + (size_t)j0 * IC,
                        IC, b ? b + j0 : NULL, m, n, IC, nn_epilogue, flags);
    }
}

void nn_linear_items(float *out, const float *x, const float *w, const float *b, int items,
                     int rows, int IC, int OC, int flags) {
    if (items <= 0 || rows <= 0 || OC <= 0) return;
    if (IC > 0 && gemm_f32_available()) {
        linear_f32(out, x, w, b, items * rows, IC, OC, flags);
        return;
    }
    /* no AVX2 + FMA: OpenBLAS, item by item */
    nn_tiling tl = nn_tiles(rows, OC, IC);   /* the tiles of one item's product */
    int per = tl.tm * tl.tn, th = nn_threads();
    long nt = (long)items * per;
    th = th < nt ? th : (int)nt;
    float beta = (flags & NN_ACCUMULATE) ? 1.0f : 0.0f;
    int gelu = (flags & NN_GELU) != 0;
    blas_solo_begin();
    /* one parallel region: each tile's product, then its bias (+ GELU) while it is in cache */
#pragma omp parallel for schedule(dynamic, 1) num_threads(th) if (th > 1)
    for (long t = 0; t < nt; t++) {
        int it = (int)(t / per), tt = (int)(t % per);
        int i0 = tt / tl.tn * tl.mt, j0 = tt % tl.tn * tl.nt;
        int m = rows - i0 < tl.mt ? rows - i0 : tl.mt, n = OC - j0 < tl.nt ? OC - j0 : tl.nt;
        size_t r0 = (size_t)it * rows + i0;
        float *o = out + r0 * OC + j0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, IC, 1.0f, x + r0 * IC, IC,
                    w + (size_t)j0 * IC, IC, beta, o, OC);
        bias_gelu_block(o, OC, b ? b + j0 : NULL, m, n, gelu);
    }
    blas_solo_end();
}

void nn_linear_ex(float *out, const float *x, const float *w, const float *b, int N, int IC, int OC,
                  int flags) {
    nn_linear_items(out, x, w, b, 1, N, IC, OC, flags);
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
    int th = nn_threads(), par = B * NH * nrb > 1 && th > 1, own = hd > 0 && gemm_f32_available();
    blas_solo_begin();
    /* work items of a shape-only size, each on one thread: the same bits for any thread count */
#pragma omp parallel for schedule(dynamic, 1) num_threads(th) if (par)
    for (int it = 0; it < B * NH * nrb; it++) {
        int bh = it / nrb, r0 = (it % nrb) * RB, r1 = r0 + RB < L ? r0 + RB : L;
        int b = bh / NH, h = bh % NH, ncol = causal ? r1 : L;
        const float *q = qkv + ((size_t)b * L + r0) * C3 + h * hd;
        const float *k = qkv + (size_t)b * L * C3 + C + h * hd;
        const float *v = k + C;
        float *P = probs + ((size_t)bh * L + r0) * L;
        if (own) gemm_f32(0, 1, r1 - r0, ncol, hd, scale, q, C3, k, C3, 0, P, L);
        else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, ncol, hd, scale, q, C3, k,
                         C3, 0.0f, P, L);
        for (int i = r0; i < r1; i++) {
            float *row = P + (size_t)(i - r0) * L;
            int n = causal ? i + 1 : L;
            softmax_row(row, n);
            if (n < L) memset(row + n, 0, sizeof(float) * (L - n));
        }
        float *o = out + ((size_t)b * L + r0) * C + h * hd;
        if (own) gemm_f32(0, 0, r1 - r0, hd, ncol, 1.0f, P, L, v, C3, 0, o, C);
        else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, hd, ncol, 1.0f, P, L,
                         v, C3, 0.0f, o, C);
    }
    blas_solo_end();
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
