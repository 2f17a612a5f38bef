/* gemm_f32.c — float32 x @ w^T with one fma chain per element (see gemm_f32.h). */
#include "gemm_f32.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GEMM_F32_X86 1
#endif

enum { MR = 6, NR = 16 };


void gemm_f32_nt_ref(float *c, int ldc, const float *a, int lda, const float *w, int ldw, int m,
                     int n, int K) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc = fmaf(a[(size_t)i * lda + k], w[(size_t)j * ldw + k], acc);
            c[(size_t)i * ldc + j] = acc;
        }
}

static int g_off;   /* gemm_f32_set_enabled(0) */
void gemm_f32_set_enabled(int on) { __atomic_store_n(&g_off, !on, __ATOMIC_RELAXED); }

#ifdef GEMM_F32_X86
int gemm_f32_available(void) {
    static int known = -1;
    if (__atomic_load_n(&g_off, __ATOMIC_RELAXED)) return 0;
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (k < 0) {
        __builtin_cpu_init();
        const char *off = getenv("CARSEG_NO_GEMM_F32");
        k = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !(off && *off && strcmp(off, "0"));
        __atomic_store_n(&known, k, __ATOMIC_RELAXED);
    }
    return k;
}

/* c (MR x NR, row stride ldc) = the sums over K steps of MR rows of A (row stride lda) and one
 * B panel (K x NR): 12 accumulators, each element's fma chain in k order from zero */
__attribute__((target("avx2,fma"))) static void kernel_6x16(int K, const float *pa, size_t lda,
                                                           const float *pb, float *c, int ldc) {
    const float *a0 = pa, *a1 = pa + lda, *a2 = pa + 2 * lda, *a3 = pa + 3 * lda,
                *a4 = pa + 4 * lda, *a5 = pa + 5 * lda;
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    __m256 d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0;
#pragma GCC unroll 4
    for (int k = 0; k < K; k++) {
        __m256 b0 = _mm256_load_ps(pb), b1 = _mm256_load_ps(pb + 8), x;
        x = _mm256_broadcast_ss(a0 + k), c0 = _mm256_fmadd_ps(x, b0, c0), d0 = _mm256_fmadd_ps(x, b1, d0);
        x = _mm256_broadcast_ss(a1 + k), c1 = _mm256_fmadd_ps(x, b0, c1), d1 = _mm256_fmadd_ps(x, b1, d1);
        x = _mm256_broadcast_ss(a2 + k), c2 = _mm256_fmadd_ps(x, b0, c2), d2 = _mm256_fmadd_ps(x, b1, d2);
        x = _mm256_broadcast_ss(a3 + k), c3 = _mm256_fmadd_ps(x, b0, c3), d3 = _mm256_fmadd_ps(x, b1, d3);
        x = _mm256_broadcast_ss(a4 + k), c4 = _mm256_fmadd_ps(x, b0, c4), d4 = _mm256_fmadd_ps(x, b1, d4);
        x = _mm256_broadcast_ss(a5 + k), c5 = _mm256_fmadd_ps(x, b0, c5), d5 = _mm256_fmadd_ps(x, b1, d5);
        pb += NR;
    }
    _mm256_storeu_ps(c + 0 * (size_t)ldc, c0), _mm256_storeu_ps(c + 0 * (size_t)ldc + 8, d0);
    _mm256_storeu_ps(c + 1 * (size_t)ldc, c1), _mm256_storeu_ps(c + 1 * (size_t)ldc + 8, d1);
    _mm256_storeu_ps(c + 2 * (size_t)ldc, c2), _mm256_storeu_ps(c + 2 * (size_t)ldc + 8, d2);
    _mm256_storeu_ps(c + 3 * (size_t)ldc, c3), _mm256_storeu_ps(c + 3 * (size_t)ldc + 8, d3);
    _mm256_storeu_ps(c + 4 * (size_t)ldc, c4), _mm256_storeu_ps(c + 4 * (size_t)ldc + 8, d4);
    _mm256_storeu_ps(c + 5 * (size_t)ldc, c5), _mm256_storeu_ps(c + 5 * (size_t)ldc + 8, d5);
}

/* rows [0, r_n) of w (row stride ldw), K columns, into one panel pb[k * NR + r] = w[r][k], zero
 * rows past r_n: whole 8 x 8 blocks through an AVX transpose, the rest one by one */
__attribute__((target("avx2,fma"))) static void pack_panel(float *pb, const float *w, int ldw,
                                                          int r_n, int K) {
    int k = 0;
    if (r_n == NR)
        for (; k + 8 <= K; k += 8)
            for (int h = 0; h < NR; h += 8) {
                const float *s = w + (size_t)h * ldw + k;
                __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ldw),
                       r2 = _mm256_loadu_ps(s + 2 * (size_t)ldw), r3 = _mm256_loadu_ps(s + 3 * (size_t)ldw),
                       r4 = _mm256_loadu_ps(s + 4 * (size_t)ldw), r5 = _mm256_loadu_ps(s + 5 * (size_t)ldw),
                       r6 = _mm256_loadu_ps(s + 6 * (size_t)ldw), r7 = _mm256_loadu_ps(s + 7 * (size_t)ldw);
                __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                       t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
                       t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                       t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
                __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                       u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                       u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                       u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                float *d = pb + (size_t)k * NR + h;
                _mm256_store_ps(d + 0 * NR, _mm256_permute2f128_ps(u0, u4, 0x20));
                _mm256_store_ps(d + 1 * NR, _mm256_permute2f128_ps(u1, u5, 0x20));
                _mm256_store_ps(d + 2 * NR, _mm256_permute2f128_ps(u2, u6, 0x20));
                _mm256_store_ps(d + 3 * NR, _mm256_permute2f128_ps(u3, u7, 0x20));
                _mm256_store_ps(d + 4 * NR, _mm256_permute2f128_ps(u0, u4, 0x31));
                _mm256_store_ps(d + 5 * NR, _mm256_permute2f128_ps(u1, u5, 0x31));
                _mm256_store_ps(d + 6 * NR, _mm256_permute2f128_ps(u2, u6, 0x31));
                _mm256_store_ps(d + 7 * NR, _mm256_permute2f128_ps(u3, u7, 0x31));
            }
    for (; k < K; k++) {
        float *d = pb + (size_t)k * NR;
        for (int r = 0; r < r_n; r++) d[r] = w[(size_t)r * ldw + k];
        for (int r = r_n; r < NR; r++) d[r] = 0.0f;
    }
}

/* Blocking: one B panel (16 rows of w over the whole K: 48 KB at K 768, in L2) at a time against
 * every 6-row panel of A, read in place (A's rows are contiguous in k; the last, partial panel is
 * copied with zero rows below it). No K blocks: each element's chain runs through K in registers
 * (measured on an AVX2 Zen 3 on 256 x 256 tiles with K 768-4096: as fast as K blocks of 384-512,
 * and OpenBLAS's speed within the noise), and the epilogue runs on each register tile at once. */
int gemm_f32_linear(float *c, int ldc, const float *a, int lda, const float *w, int ldw,
                    const float *b, int m, int n, int K, gemm_f32_epilogue ep, int flags) {
    if (m <= 0 || n <= 0) return 0;
    if (K <= 0) return -1;
    int mp = (m + MR - 1) / MR, me = m % MR;   /* me: rows of the last, partial panel (0: none) */
    size_t nb = (size_t)NR * K, ne = me ? (size_t)MR * K : 0, cap = 0;
    char *buf = cs_spare_take(CS_SPARE_GEMM_F32, sizeof(float) * (nb + ne) + 64, &cap);
    if (!buf) {   /* no room for the packed panel: the same sums element by element */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float acc;
                gemm_f32_nt_ref(&acc, 1, a + (size_t)i * lda, lda, w + (size_t)j * ldw, ldw, 1, 1, K);
                ep(c + (size_t)i * ldc + j, ldc, &acc, 1, b ? b + j : NULL, 1, 1, flags);
            }
        return 0;
    }
    float *pb = (float *)(((uintptr_t)buf + 63) & ~(uintptr_t)63), *pe = pb + nb, tmp[MR * NR];
    for (int r = 0; r < (me ? MR : 0); r++) {
        if (r < me) memcpy(pe + (size_t)r * K, a + (size_t)(m - me + r) * lda, sizeof(float) * K);
        else memset(pe + (size_t)r * K, 0, sizeof(float) * K);
    }
    for (int j = 0; j < n; j += NR) {
        int nj = n - j < NR ? n - j : NR;
        pack_panel(pb, w + (size_t)j * ldw, ldw, nj, K);
        for (int p = 0; p < mp; p++) {
            int i = p * MR, mi = m - i < MR ? m - i : MR;
            if (mi == MR) kernel_6x16(K, a + (size_t)i * lda, (size_t)lda, pb, tmp, NR);
            else kernel_6x16(K, pe, (size_t)K, pb, tmp, NR);
            ep(c + (size_t)i * ldc + j, ldc, tmp, NR, b ? b + j : NULL, mi, nj, flags);
        }
    }
    cs_spare_give(CS_SPARE_GEMM_F32, buf, cap);
    return 0;
}
#else
int gemm_f32_available(void) { return 0 * __atomic_load_n(&g_off, __ATOMIC_RELAXED); }
int gemm_f32_linear(float *c, int ldc, const float *a, int lda, const float *w, int ldw,
                    const float *b, int m, int n, int K, gemm_f32_epilogue ep, int flags) {
    (void)ep, (void)c, (void)ldc, (void)a, (void)lda, (void)w, (void)ldw, (void)b, (void)m, (void)n, (void)K;
    (void)flags;
    return -1;
}
#endif
