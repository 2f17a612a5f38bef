/* gemm_f32.c — float32 products with one fma chain per element (see gemm_f32.h). */
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

/* op(a)[i][k] and op(b)[k][j] of a cblas-style row-major product */
static inline float at_a(const float *a, int lda, int ta, int i, int k) {
    return ta ? a[(size_t)k * lda + i] : a[(size_t)i * lda + k];
}
static inline float at_b(const float *b, int ldb, int tb, int k, int j) {
    return tb ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j];
}

void gemm_f32_ref(int ta, int tb, int m, int n, int K, const float *a, int lda, const float *b,
                  int ldb, float *c, int ldc) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) acc = fmaf(at_a(a, lda, ta, i, k), at_b(b, ldb, tb, k, j), acc);
            c[(size_t)i * ldc + j] = acc;
        }
}

/* what becomes of a block of sums: the linear layers' epilogue, or alpha * sums (+ c) */
typedef struct {
    gemm_f32_epilogue ep;   /* NULL: c = alpha * sums, or c + alpha * sums with acc */
    const float *bias;      /* ep's bias (n) or NULL */
    int flags, acc;
    float alpha;
} out_op;

static void put(float *c, int ldc, const float *t, int ldt, int j, int mi, int nj, const out_op *o) {
    if (o->ep) {
        o->ep(c, ldc, t, ldt, o->bias ? o->bias + j : NULL, mi, nj, o->flags);
        return;
    }
    if (o->alpha == 1.0f && !o->acc) {   /* the common case: a copy */
        for (int r = 0; r < mi; r++) {
            float *restrict cr = c + (size_t)r * ldc;
            const float *restrict tr = t + (size_t)r * ldt;
            if (nj == NR)
                for (int q = 0; q < NR; q++) cr[q] = tr[q];
            else
                for (int q = 0; q < nj; q++) cr[q] = tr[q];
        }
        return;
    }
    if (o->alpha == 1.0f) {
        for (int r = 0; r < mi; r++) {
            float *restrict cr = c + (size_t)r * ldc;
            const float *restrict tr = t + (size_t)r * ldt;
            if (nj == NR)
                for (int q = 0; q < NR; q++) cr[q] += tr[q];
            else
                for (int q = 0; q < nj; q++) cr[q] += tr[q];
        }
        return;
    }
    for (int r = 0; r < mi; r++) {
        float *cr = c + (size_t)r * ldc;
        const float *tr = t + (size_t)r * ldt;
        for (int q = 0; q < nj; q++) {
            float v = o->alpha * tr[q];
            cr[q] = o->acc ? cr[q] + v : v;
        }
    }
}

/* the element-by-element chains (no buffers needed): the same bits, slowly */
static void run_ref(int ta, int tb, int m, int n, int K, const float *a, int lda, const float *b,
                    int ldb, float *c, int ldc, const out_op *o) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float acc;
            gemm_f32_ref(ta, tb, 1, 1, K, ta ? a + i : a + (size_t)i * lda, lda,
                         tb ? b + (size_t)j * ldb : b + j, ldb, &acc, 1);
            put(c + (size_t)i * ldc + j, ldc, &acc, 1, j, 1, 1, o);
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

/* t (MR x NR, row stride NR) = the sums over nseg segments of K steps of MR rows of A (row r,
 * segment s, step k at pa + off[s] + r * ars + k * aks; off NULL: one segment at 0) and one B
 * panel (nseg K x NR): 12 accumulators, each element's fma chain in (segment, k) order from zero.
 * wide 0 (a constant at every call): the panel's first 8 columns only, 6 accumulators, half the
 * work (the last panel when it has at most 8 columns; still NR wide in memory). */
__attribute__((target("avx2,fma"), always_inline)) static inline void
kernel_segs_body(const int wide, int nseg, const size_t *off, int K, const float *pa, size_t ars,
                 size_t aks, const float *pb, float *t, size_t ldt) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    __m256 d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0;
    for (int sg = 0; sg < nseg; sg++) {
        const float *s0 = pa + (off ? off[sg] : 0);
        const float *a0 = s0, *a1 = s0 + ars, *a2 = s0 + 2 * ars, *a3 = s0 + 3 * ars,
                    *a4 = s0 + 4 * ars, *a5 = s0 + 5 * ars;
#pragma GCC unroll 4
        for (int k = 0; k < K; k++) {
            __m256 b0 = _mm256_load_ps(pb), b1 = wide ? _mm256_load_ps(pb + 8) : b0, x;
            size_t o = (size_t)k * aks;
#define KROW(i)                                                            \
    x = _mm256_broadcast_ss(a##i + o), c##i = _mm256_fmadd_ps(x, b0, c##i); \
    if (wide) d##i = _mm256_fmadd_ps(x, b1, d##i);
            KROW(0) KROW(1) KROW(2) KROW(3) KROW(4) KROW(5)
#undef KROW
            pb += NR;
        }
    }
#define KSTORE(i)                                               \
    _mm256_storeu_ps(t + i * ldt, c##i);                        \
    if (wide) _mm256_storeu_ps(t + i * ldt + 8, d##i);
    KSTORE(0) KSTORE(1) KSTORE(2) KSTORE(3) KSTORE(4) KSTORE(5)
#undef KSTORE
}

/* A's rows contiguous in k (op(a) = a), A stored transposed (op(a) = a^T: k strides lda), and A
 * in segments (gemm_f32_segs: row r of segment s at pa + off[s] + r * ars, contiguous in k);
 * narrow: the panel's first 8 columns only. The tile goes to t, rows ldt apart. */
__attribute__((target("avx2,fma"))) static void kernel_rows(int K, const float *pa, size_t ars,
                                                           const float *pb, float *t, size_t ldt,
                                                           int narrow) {
    if (narrow) kernel_segs_body(0, 1, NULL, K, pa, ars, 1, pb, t, ldt);
    else kernel_segs_body(1, 1, NULL, K, pa, ars, 1, pb, t, ldt);
}
__attribute__((target("avx2,fma"))) static void kernel_cols(int K, const float *pa, size_t aks,
                                                           const float *pb, float *t, size_t ldt,
                                                           int narrow) {
    if (narrow) kernel_segs_body(0, 1, NULL, K, pa, 1, aks, pb, t, ldt);
    else kernel_segs_body(1, 1, NULL, K, pa, 1, aks, pb, t, ldt);
}
__attribute__((target("avx2,fma"))) static void kernel_segs(int nseg, const size_t *off, int klen,
                                                           const float *pa, size_t ars,
                                                           const float *pb, float *t, size_t ldt,
                                                           int narrow) {
    if (narrow) kernel_segs_body(0, nseg, off, klen, pa, ars, 1, pb, t, ldt);
    else kernel_segs_body(1, nseg, off, klen, pa, ars, 1, pb, t, ldt);
}

/* op(b) = b^T (b holds the panel's columns as rows: nn.Linear's w): rows [0, r_n) of w (row
 * stride ldw), K columns, into one panel pb[k * NR + r] = w[r][k], zero
 * rows past r_n: whole 8 x 8 blocks through an AVX transpose, the rest one by one */
__attribute__((target("avx2,fma"))) static void pack_panel_t(float *pb, const float *w, int ldw,
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

/* op(b) = b (K x N, row stride ldb): columns [0, r_n) into one panel pb[k * NR + r] = b[k][r] */
static void pack_panel_n(float *pb, const float *b, int ldb, int r_n, int K) {
    for (int k = 0; k < K; k++) {
        float *d = pb + (size_t)k * NR;
        memcpy(d, b + (size_t)k * ldb, sizeof(float) * r_n);
        for (int r = r_n; r < NR; r++) d[r] = 0.0f;
    }
}

/* Blocking: every 16-column panel of op(b) is packed once (k-major, the whole K); op(a) is read in
 * place in blocks of rows that stay in L2 (A_BLOCK bytes: 6-row panels, at least one), each block
 * against every panel. No K blocks: each element's chain runs through K in registers, and the
 * output runs on each register tile at once. (Measured on an AMD EPYC (avx2), noisy: at 2 threads
 * on ViT-B/16 at 512 x 384 the row blocks were no faster than packing one panel at a time and
 * streaming A per panel, 1017-1028 ms against 1017; at one thread, K blocks of 384-512 with the
 * partial sums stored between them were no faster than none.) */
enum { A_BLOCK = 192 << 10 };
/* A in segments: nseg > 1 splits k into nseg runs of K / nseg, run s of row i at
 * a + i * lda + off[s] (ta 0 only) */
typedef struct { int nseg; const size_t *off; } a_segs;
static const a_segs one_seg = {1, NULL};
static const float *const no_pre = NULL;

static float a_elem(const float *a, int lda, int ta, const a_segs *sg, int klen, int i, int k) {
    if (sg->nseg > 1) return a[(size_t)i * lda + sg->off[k / klen] + k % klen];
    return at_a(a, lda, ta, i, k);
}

/* pre: op(b) already packed (gemm_f32_pack_b), b unused */
static int run(int ta, int tb, int m, int n, int K, const float *a, int lda, const a_segs *sg,
               const float *b, int ldb, const float *pre, float *c, int ldc, const out_op *o) {
    if (m <= 0 || n <= 0) return 0;
    if (K <= 0 || !gemm_f32_available()) return -1;
    int mp = (m + MR - 1) / MR, me = m % MR;   /* me: rows of the last, partial panel (0: none) */
    int np = (n + NR - 1) / NR;
    int bp = (int)(A_BLOCK / ((size_t)MR * K * sizeof(float)));   /* row panels per block */
    bp = bp < 1 ? 1 : bp;
    size_t nb = pre ? 0 : (size_t)np * NR * K, ne = me ? ((size_t)MR * K + 15) & ~(size_t)15 : 0, cap = 0;
    char *buf = cs_spare_take(CS_SPARE_GEMM_F32, sizeof(float) * (nb + ne + MR * NR) + 64, &cap);
    const int klen = K / sg->nseg;
    if (!buf) {
        if (sg->nseg > 1 || pre) return -1;
        run_ref(ta, tb, m, n, K, a, lda, b, ldb, c, ldc, o);
        return 0;
    }
    /* nb and ne are multiples of 16 floats: the panels, the edge rows and t 64-byte aligned */
    float *pw = (float *)(((uintptr_t)buf + 63) & ~(uintptr_t)63), *pe = pw + nb, *t = pe + ne;
    const float *pb = pre ? pre : pw;
    for (int r = 0; r < (me ? MR : 0); r++)
        for (int k = 0; k < K; k++) pe[(size_t)r * K + k] = r < me ? a_elem(a, lda, ta, sg, klen, m - me + r, k) : 0.0f;
    for (int jp = 0; jp < (pre ? 0 : np); jp++) {
        int j = jp * NR, nj = n - j < NR ? n - j : NR;
        float *d = pw + (size_t)jp * NR * K;
        if (tb) pack_panel_t(d, b + (size_t)j * ldb, ldb, nj, K);
        else pack_panel_n(d, b + j, ldb, nj, K);
    }
    const int copy = !o->ep && o->alpha == 1.0f && !o->acc;
    for (int p0 = 0; p0 < mp; p0 += bp) {
        int p1 = p0 + bp < mp ? p0 + bp : mp;
        for (int jp = 0; jp < np; jp++) {
            int j = jp * NR, nj = n - j < NR ? n - j : NR, narrow = nj <= 8;
            const float *pj = pb + (size_t)jp * NR * K;
            for (int p = p0; p < p1; p++) {
                int i = p * MR, mi = m - i < MR ? m - i : MR;
                /* a whole tile that is a plain copy goes straight from the registers to c */
                float *ct = c + (size_t)i * ldc + j;
                int direct = copy && mi == MR && nj == (narrow ? 8 : NR);
                float *tt = direct ? ct : t;
                size_t ldt = direct ? (size_t)ldc : NR;
                if (mi < MR) kernel_rows(K, pe, (size_t)K, pj, tt, ldt, narrow);
                else if (ta) kernel_cols(K, a + i, (size_t)lda, pj, tt, ldt, narrow);
                else if (sg->nseg > 1) kernel_segs(sg->nseg, sg->off, klen, a + (size_t)i * lda, (size_t)lda, pj, tt, ldt, narrow);
                else kernel_rows(K, a + (size_t)i * lda, (size_t)lda, pj, tt, ldt, narrow);
                if (!direct) put(ct, ldc, t, NR, j, mi, nj, o);
            }
        }
    }
    cs_spare_give(CS_SPARE_GEMM_F32, buf, cap);
    return 0;
}
#else
int gemm_f32_available(void) { return 0 * __atomic_load_n(&g_off, __ATOMIC_RELAXED); }
typedef struct { int nseg; const size_t *off; } a_segs;
static const a_segs one_seg = {1, NULL};
static const float *const no_pre = NULL;
static int run(int ta, int tb, int m, int n, int K, const float *a, int lda, const a_segs *sg,
               const float *b, int ldb, const float *pre, float *c, int ldc, const out_op *o) {
    (void)sg, (void)pre, (void)ta, (void)tb, (void)m, (void)n, (void)K, (void)a, (void)lda, (void)b, (void)ldb;
    (void)c, (void)ldc, (void)o, (void)run_ref;
    return -1;
}
#endif

int gemm_f32_linear(float *c, int ldc, const float *a, int lda, const float *w, int ldw,
                    const float *b, int m, int n, int K, gemm_f32_epilogue ep, int flags) {
    out_op o = {ep, b, flags, 0, 1.0f};
    return run(0, 1, m, n, K, a, lda, &one_seg, w, ldw, no_pre, c, ldc, &o);
}

int gemm_f32(int ta, int tb, int m, int n, int K, float alpha, const float *a, int lda,
             const float *b, int ldb, int accumulate, float *c, int ldc) {
    out_op o = {NULL, NULL, 0, accumulate != 0, alpha};
    return run(ta, tb, m, n, K, a, lda, &one_seg, b, ldb, no_pre, c, ldc, &o);
}

int gemm_f32_segs(int m, int n, int nseg, const size_t *off, int klen, const float *a, int ars,
                  const float *w, float *c, int ldc) {
    if (nseg < 1 || klen < 1) return -1;
    out_op o = {NULL, NULL, 0, 0, 1.0f};
    a_segs sg = {nseg, off};
    return run(0, 1, m, n, nseg * klen, a, ars, &sg, w, nseg * klen, no_pre, c, ldc, &o);
}

size_t gemm_f32_packed_size(int n, int K) { return (size_t)((n + NR - 1) / NR) * NR * (size_t)K; }

int gemm_f32_pack_b(float *pb, int tb, const float *b, int ldb, int n, int K) {
#ifdef GEMM_F32_X86
    if (n <= 0 || K <= 0 || !gemm_f32_available()) return -1;
    for (int j = 0; j < n; j += NR) {
        int nj = n - j < NR ? n - j : NR;
        float *d = pb + (size_t)j * K;
        if (tb) pack_panel_t(d, b + (size_t)j * ldb, ldb, nj, K);
        else pack_panel_n(d, b + j, ldb, nj, K);
    }
    return 0;
#else
    (void)pb, (void)tb, (void)b, (void)ldb, (void)n, (void)K;
    return -1;
#endif
}

int gemm_f32_prepacked(int m, int n, int K, const float *a, int lda, const float *pb, float *c,
                       int ldc) {
    out_op o = {NULL, NULL, 0, 0, 1.0f};
    return run(0, 0, m, n, K, a, lda, &one_seg, NULL, 0, pb, c, ldc, &o);
}
