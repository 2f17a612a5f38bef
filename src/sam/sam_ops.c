/* sam_ops.c — the layer operations SAM needs beyond nn.c: LayerNorm with SAM's eps (1e-6 in the
 * encoder and LayerNorm2d, 1e-5 in the two-way transformer), GELU (nn.GELU, nn_gelu_rows), ReLU,
 * the 2x2 stride-2 transposed convolutions (with their LayerNorm2d / GELU fused), 3x3
 * convolutions as one product with the taps as segments of k (gemm_f32_segs) or by Winograd
 * F(2x2, 3x3), per-pixel dot products, and torch's bilinear interpolation.
 * Every row-wise reduction is done by one thread in a fixed order of lanes, so results never
 * depend on the thread count or the vector width. */
#include "sam_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gemm_f32.h"
#include "nn.h"
#include "util.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SAM_X86 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

static int free_threads(void) {
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

/* LayerNorm of one row: the sums in 16 lanes (lane l: the channels c = l mod 16, in order), then
 * a fixed tree: the same operations at any vector width */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SAM_HOT __attribute__((target_clones("avx2", "default")))
#else
#define SAM_HOT
#endif
static float lanes_sum(const float *t) {
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}
static float lanes16_sum(const float *t) { return lanes_sum(t) + lanes_sum(t + 8); }
SAM_HOT static void ln_row(float *o, const float *x, const float *restrict w,
                           const float *restrict b, int C, float eps, float *st) {
    float acc[16] = {0}, acc2[16] = {0};
    int c16 = C & ~15;
    for (int c = 0; c < c16; c += 16)
#pragma omp simd
        for (int l = 0; l < 16; l++) acc[l] += x[c + l];
    for (int c = c16; c < C; c++) acc[c - c16] += x[c];
    float m = lanes16_sum(acc) / C;
    for (int c = 0; c < c16; c += 16)
#pragma omp simd
        for (int l = 0; l < 16; l++) {
            float d = x[c + l] - m;
            acc2[l] += d * d;
        }
    for (int c = c16; c < C; c++) acc2[c - c16] += (x[c] - m) * (x[c] - m);
    float rstd = 1.0f / sqrtf(lanes16_sum(acc2) / C + eps);
    if (st) st[0] = m, st[1] = rstd;
#pragma omp simd
    for (int c = 0; c < C; c++) o[c] = (x[c] - m) * rstd * w[c] + b[c];
}

SAM_HOT static void resid_row(float *a, const float *x, const float *bo, int C) {
#pragma omp simd
    for (int c = 0; c < C; c++) a[c] = x[c] + (a[c] + bo[c]);
}
SAM_HOT static void add_row(float *o, const float *a, const float *b, int C) {
#pragma omp simd
    for (int c = 0; c < C; c++) o[c] = a[c] + b[c];
}

SAM_HOT static void bias_row(float *x, const float *b, int C) {
#pragma omp simd
    for (int c = 0; c < C; c++) x[c] += b[c];
}

void sam_bias_layernorm(float *x, const float *bias, const float *w, const float *b, int N, int C,
                        float eps) {
    for (int i = 0; i < N; i++) {
        bias_row(x + (size_t)i * C, bias, C);
        ln_row(x + (size_t)i * C, x + (size_t)i * C, w, b, C, eps, NULL);
    }
}

void sam_layernorm(float *out, const float *x, const float *w, const float *b, int N, int C,
                   float eps) {
    if ((size_t)N * C <= 32768) {
        for (int i = 0; i < N; i++) ln_row(out + (size_t)i * C, x + (size_t)i * C, w, b, C, eps, NULL);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) ln_row(out + (size_t)i * C, x + (size_t)i * C, w, b, C, eps, NULL);
}

void sam_resid_layernorm(float *out, float *sum, const float *x, float *a, const float *bo,
                         const float *w, const float *b, const float *pe, int N, int C, float eps,
                         float *stats) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int i = 0; i < N; i++) {
        float *ai = a + (size_t)i * C, *oi = out + (size_t)i * C;
        resid_row(ai, x + (size_t)i * C, bo, C);
        ln_row(oi, ai, w, b, C, eps, stats ? stats + 2 * (size_t)i : NULL);
        if (sum) add_row(sum + (size_t)i * C, oi, pe + (size_t)i * C, C);
    }
}

void sam_gelu(float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i += 4096) nn_gelu_rows(x + i, n - i < 4096 ? n - i : 4096);
}

void sam_relu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0;
}

void sam_convt2(float *out, const float *x, const float *w, const float *b, int H, int W, int cin,
                int cout, float *tmp) {
    /* tmp (H*W, Cout*4): column co*4 + dy*2 + dx, as the weights (Cin, Cout, 2, 2) are stored */
    nn_sgemm(0, 0, H * W, cout * 4, cin, 1.0f, x, cin, w, cout * 4, 0.0f, tmp, cout * 4);
    int W2 = 2 * W;
#pragma omp parallel for schedule(static) if ((size_t)H * W * cout > 65536)
    for (int y = 0; y < H; y++)
        for (int xx = 0; xx < W; xx++) {
            const float *t = tmp + ((size_t)y * W + xx) * cout * 4;
            for (int d = 0; d < 4; d++) {
                float *o = out + ((size_t)(2 * y + d / 2) * W2 + 2 * xx + d % 2) * cout;
                for (int co = 0; co < cout; co++) o[co] = t[co * 4 + d] + b[co];
            }
        }
}

float *sam_convt2_pack(const float *w4, int cin, int cout) {
    const size_t n = gemm_f32_packed_size(4 * cout, cin);
    float *pk = gemm_f32_available() ? cs_malloc(sizeof(float) * n) : NULL;
    if (pk && gemm_f32_pack_b(pk, 0, w4, 4 * cout, 4 * cout, cin)) cs_free(pk), pk = NULL;
    return pk;
}

float *sam_convt2_reorder(const float *w, int cin, int cout) {
    float *r = cs_malloc(sizeof(float) * 4 * (size_t)cout * cin);
    if (!r) return NULL;
    for (int ci = 0; ci < cin; ci++)
        for (int co = 0; co < cout; co++)
            for (int d = 0; d < 4; d++)
                r[((size_t)ci * 4 + d) * cout + co] = w[((size_t)ci * cout + co) * 4 + d];
    return r;
}

void sam_convt2_fused(float *out, size_t o0, int ow, const float *x, const float *w4,
                      const float *w4pk, const float *b, int H, int W, int cin, int cout,
                      const sam_lin *ln, float eps, int gelu, float *tmp) {
    const int n4 = 4 * cout;
    if (!w4pk || free_threads() > 1 || gemm_f32_prepacked(H * W, n4, cin, x, cin, w4pk, tmp, n4))
        nn_sgemm(0, 0, H * W, n4, cin, 1.0f, x, cin, w4, n4, 0.0f, tmp, n4);
    sam_convt2_epilogue(out, o0, ow, tmp, b, H, W, cout, ln, eps, gelu);
}

void sam_convt2_epilogue(float *out, size_t o0, int ow, const float *tmp, const float *b, int H,
                         int W, int cout, const sam_lin *ln, float eps, int gelu) {
    const int n4 = 4 * cout;
#pragma omp parallel for schedule(static) if ((size_t)H * W * cout > 65536)
    for (int y = 0; y < H; y++) {
        for (int xx = 0; xx < W; xx++) {
            const float *t = tmp + ((size_t)y * W + xx) * n4;
            for (int d = 0; d < 4; d++) {
                float *o = out + (o0 + (size_t)(2 * y + d / 2) * ow + 2 * xx + d % 2) * cout;
                const float *td = t + d * cout;
                if (b)
#pragma omp simd
                    for (int co = 0; co < cout; co++) o[co] = td[co] + b[co];
                else
                    memcpy(o, td, sizeof(float) * cout);
                if (ln) ln_row(o, o, ln->w, ln->b, cout, eps, NULL);
            }
        }
        for (int dy = 0; gelu && dy < 2; dy++)
            nn_gelu_rows(out + (o0 + (size_t)(2 * y + dy) * ow) * cout, (size_t)2 * W * cout);
    }
}

float *sam_conv3_reorder(const float *w, int cout, int cin) {
    float *r = cs_malloc(sizeof(float) * 9 * (size_t)cout * cin);
    if (!r) return NULL;
    for (int co = 0; co < cout; co++)
        for (int k = 0; k < 9; k++)
            for (int ci = 0; ci < cin; ci++)
                r[((size_t)co * 9 + k) * cin + ci] = w[((size_t)co * cin + ci) * 9 + k];
    return r;
}

void sam_conv3x3_padded(float *acc, const float *pad, const sam_conv3 *c, int H, int W) {
    const int cin = c->cin, cout = c->cout, Wp = W + 2, M = H * Wp;
    size_t off[9];
    for (int k = 0; k < 9; k++) off[k] = ((size_t)(k / 3) * Wp + k % 3) * cin;
    if (!gemm_f32_available()) {   /* nine shifted products (OpenBLAS) */
        for (int k = 0; k < 9; k++)
            nn_sgemm(0, 1, M, cout, cin, 1.0f, pad + off[k], cin, c->w + (size_t)k * cin, 9 * cin,
                     k ? 1.0f : 0.0f, acc, cout);
        return;
    }
    /* one product with the taps as segments of k (each element one chain over the 9 Cin); row
     * blocks over the threads (any split gives the same bits) */
    const int th = free_threads(), nb = th > 1 ? 4 * th : 1;
    const int rows = ((M + nb - 1) / nb + 5) / 6 * 6;
#pragma omp parallel for schedule(dynamic, 1) if (nb > 1)
    for (int bi = 0; bi < nb; bi++) {
        int r0 = bi * rows, r1 = r0 + rows < M ? r0 + rows : M;
        if (r0 >= r1) continue;
        if (gemm_f32_segs(r1 - r0, cout, 9, off, cin, pad + (size_t)r0 * cin, cin, c->w,
                          acc + (size_t)r0 * cout, cout))
            for (int i = r0; i < r1; i++)   /* out of memory for the panels: the slow way */
                for (int j = 0; j < cout; j++) {
                    float a = 0.0f;
                    for (int k = 0; k < 9; k++)
                        for (int ci = 0; ci < cin; ci++)
                            a = fmaf(pad[(size_t)i * cin + off[k] + ci], c->w[((size_t)j * 9 + k) * cin + ci], a);
                    acc[(size_t)i * cout + j] = a;
                }
    }
}

void sam_conv3x3(float *out, const float *x, const sam_conv3 *c, int H, int W, float *pad,
                 float *acc) {
    const int cin = c->cin, cout = c->cout, Wp = W + 2;
    const size_t npad = (size_t)(H + 2) * Wp + 2;
    memset(pad, 0, sizeof(float) * npad * cin);
#pragma omp parallel for schedule(static) if ((size_t)H * W * cin > 65536)
    for (int y = 0; y < H; y++)
        memcpy(pad + ((size_t)(y + 1) * Wp + 1) * cin, x + (size_t)y * W * cin,
               sizeof(float) * W * cin);
    /* acc (H*(W+2), Cout) on the padded grid's rows: pixel (y, x) reads pad[(y+ky)*Wp + x+kx];
     * the two extra columns per row are never used */
    sam_conv3x3_padded(acc, pad, c, H, W);
#pragma omp parallel for schedule(static) if ((size_t)H * W * cout > 65536)
    for (int y = 0; y < H; y++)
        for (int xx = 0; xx < W; xx++) {
            const float *a = acc + ((size_t)y * Wp + xx) * cout;
            float *o = out + ((size_t)y * W + xx) * cout;
            for (int co = 0; co < cout; co++) o[co] = a[co] + (c->b ? c->b[co] : 0.0f);
        }
}

/* Winograd F(2x2, 3x3) (Lavin & Gray 2016): each 2x2 block of outputs from its 4x4 input patch d
 * as A^T [(G g G^T) . (B^T d B)] A, the 16 products per channel pair one product each of the
 * (tiles, Cin) transformed inputs and the (Cin, Cout) transformed weights: 16 multiplies for 36.
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
 * A^T = [1 1 1 0; 0 1 -1 -1]. The transforms are adds (and the halves of G), the same operations
 * at any vector width. */
enum { WINO_BT = 48 };   /* tiles per block: V (36, BT, Cin) and M (36, BT, Cout) stay in L2 */

/* Winograd F(4x4, 3x3) (Lavin & Gray): a 4 x 4 output tile from a 6 x 6 input patch by 36
 * products instead of 144, with B^T, G, A^T of the interpolation points 0, 1, -1, 2, -2, inf */
float *sam_conv3_wino_pack(const float *w, int cout, int cin) {
    if (!gemm_f32_available()) return NULL;
    const size_t ps = gemm_f32_packed_size(cout, cin);
    float *u = cs_malloc(sizeof(float) * 36 * (size_t)cin * cout), *pk = cs_malloc(sizeof(float) * 36 * ps);
    if (!u || !pk) {
        cs_free(u), cs_free(pk);
        return NULL;
    }
    static const double Gm[6][3] = {{1 / 4.0, 0, 0},           {-1 / 6.0, -1 / 6.0, -1 / 6.0},
                                    {-1 / 6.0, 1 / 6.0, -1 / 6.0}, {1 / 24.0, 1 / 12.0, 1 / 6.0},
                                    {1 / 24.0, -1 / 12.0, 1 / 6.0}, {0, 0, 1}};
    for (int co = 0; co < cout; co++)
        for (int ci = 0; ci < cin; ci++) {
            const float *g = w + ((size_t)co * cin + ci) * 9;
            double t[6][3];
            for (int i = 0; i < 6; i++)   /* G g */
                for (int j = 0; j < 3; j++)
                    t[i][j] = Gm[i][0] * g[j] + Gm[i][1] * g[3 + j] + Gm[i][2] * g[6 + j];
            for (int i = 0; i < 6; i++)   /* (G g) G^T */
                for (int j = 0; j < 6; j++)
                    u[((size_t)(6 * i + j) * cin + ci) * cout + co] =
                        (float)(t[i][0] * Gm[j][0] + t[i][1] * Gm[j][1] + t[i][2] * Gm[j][2]);
        }
    for (int x = 0; x < 36; x++)
        if (gemm_f32_pack_b(pk + x * ps, 0, u + (size_t)x * cin * cout, cout, cout, cin)) {
            cs_free(u), cs_free(pk);
            return NULL;
        }
    cs_free(u);
    return pk;
}

size_t sam_conv3_wino_work(int cin, int cout) {
    return (size_t)36 * (WINO_BT * (cin + cout) + 32) + 24 * (size_t)cout;
}

/* V[x] (x = 6a + b) of one tile: B^T d B of the patch rows p[0..5] (6 pixels of C channels) */
SAM_HOT static void wino_in(float *restrict v, size_t vs, const float *const p[6], int C) {
    for (int b = 0; b < 6; b++) {   /* rows: B^T d */
        const float *d0 = p[0] + b * C, *d1 = p[1] + b * C, *d2 = p[2] + b * C, *d3 = p[3] + b * C,
                    *d4 = p[4] + b * C, *d5 = p[5] + b * C;
        float *v0 = v + (size_t)b * vs, *v1 = v0 + 6 * vs, *v2 = v1 + 6 * vs, *v3 = v2 + 6 * vs,
              *v4 = v3 + 6 * vs, *v5 = v4 + 6 * vs;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            float a1 = d1[c], a2 = d2[c], a3 = d3[c], a4 = d4[c];
            v0[c] = (4.0f * (d0[c]) + ((-5.0f * (a2) + (a4))));
            v1[c] = (-4.0f * (a1 + a2) + (a3 + a4));
            v2[c] = (4.0f * (a1 - a2) + (a4 - a3));
            v3[c] = (2.0f * (a3 - a1) + (a4 - a2));
            v4[c] = (-2.0f * (a3 - a1) + (a4 - a2));
            v5[c] = (4.0f * (a1) + ((-5.0f * (a3) + (d5[c]))));
        }
    }
    for (int a = 0; a < 6; a++) {   /* columns: (B^T d) B, in place */
        float *t0 = v + (size_t)(6 * a) * vs, *t1 = t0 + vs, *t2 = t1 + vs, *t3 = t2 + vs, *t4 = t3 + vs,
              *t5 = t4 + vs;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            float e0 = t0[c], e1 = t1[c], e2 = t2[c], e3 = t3[c], e4 = t4[c], e5 = t5[c];
            t0[c] = (4.0f * (e0) + ((-5.0f * (e2) + (e4))));
            t1[c] = (-4.0f * (e1 + e2) + (e3 + e4));
            t2[c] = (4.0f * (e1 - e2) + (e4 - e3));
            t3[c] = (2.0f * (e3 - e1) + (e4 - e2));
            t4[c] = (-2.0f * (e3 - e1) + (e4 - e2));
            t5[c] = (4.0f * (e1) + ((-5.0f * (e3) + (e5))));
        }
    }
}

/* the 4 x 4 outputs of one tile (o[i]: output row i, 4 pixels of C channels) from M[x]
 * (x = 6a + b, C channels each, ms apart): A^T M A; s: 24 C scratch */
SAM_HOT static void wino_out(float *const o[4], const float *restrict m, size_t ms, int C,
                             float *restrict s) {
    for (int b = 0; b < 6; b++) {   /* rows: A^T M */
        const float *m0 = m + (size_t)b * ms, *m1 = m0 + 6 * ms, *m2 = m1 + 6 * ms, *m3 = m2 + 6 * ms,
                    *m4 = m3 + 6 * ms, *m5 = m4 + 6 * ms;
        float *s0 = s + (size_t)b * C, *s1 = s0 + 6 * (size_t)C, *s2 = s1 + 6 * (size_t)C,
              *s3 = s2 + 6 * (size_t)C;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            float p = m1[c] + m2[c], q = m1[c] - m2[c], r = m3[c] + m4[c], t = m3[c] - m4[c];
            s0[c] = m0[c] + p + r;
            s1[c] = (2.0f * (t) + (q));
            s2[c] = (4.0f * (r) + (p));
            s3[c] = (8.0f * (t) + (q)) + m5[c];
        }
    }
    for (int i = 0; i < 4; i++) {   /* columns: (A^T M) A */
        const float *r0 = s + (size_t)(6 * i) * C, *r1 = r0 + C, *r2 = r1 + C, *r3 = r2 + C, *r4 = r3 + C,
                    *r5 = r4 + C;
        float *oi = o[i];
#pragma omp simd
        for (int c = 0; c < C; c++) {
            float p = r1[c] + r2[c], q = r1[c] - r2[c], r = r3[c] + r4[c], t = r3[c] - r4[c];
            oi[c] = r0[c] + p + r;
            oi[C + c] = (2.0f * (t) + (q));
            oi[2 * C + c] = (4.0f * (r) + (p));
            oi[3 * C + c] = (8.0f * (t) + (q)) + r5[c];
        }
    }
}

int sam_conv3x3_wino(float *acc, const float *pad, const float *upk, int cin, int cout, int H,
                     int W, float *work) {
    if (!upk || (H | W) & 3 || !gemm_f32_available()) return -1;
    const int Wp = W + 2, tw = W / 4, nt = (H / 4) * tw;
    const size_t ps = gemm_f32_packed_size(cout, cin);
    /* the 36 matrices of a block one cache line more than their size apart: the streams of the
     * transforms on different L1 sets */
    const size_t vs = (size_t)WINO_BT * cin + 16, msz = (size_t)WINO_BT * cout + 16;
    float *V = work, *M = work + 36 * vs, *S = M + 36 * msz;
    for (int t0 = 0; t0 < nt; t0 += WINO_BT) {
        const int bt = nt - t0 < WINO_BT ? nt - t0 : WINO_BT;
        for (int i = 0; i < bt; i++) {
            int ty = (t0 + i) / tw, tx = (t0 + i) % tw;
            const float *p = pad + ((size_t)(4 * ty) * Wp + 4 * tx) * cin;
            const float *rows[6];
            for (int k = 0; k < 6; k++) rows[k] = p + (size_t)k * Wp * cin;
            wino_in(V + (size_t)i * cin, vs, rows, cin);
        }
        for (int x = 0; x < 36; x++)
            if (gemm_f32_prepacked(bt, cout, cin, V + x * vs, cin, upk + x * ps, M + x * msz, cout))
                return -1;
        for (int i = 0; i < bt; i++) {
            int ty = (t0 + i) / tw, tx = (t0 + i) % tw;
            float *o = acc + ((size_t)(4 * ty) * Wp + 4 * tx) * cout, *rows[4];
            for (int k = 0; k < 4; k++) rows[k] = o + (size_t)k * Wp * cout;
            wino_out(rows, M + (size_t)i * cout, msz, cout, S);
        }
    }
    return 0;
}

/* sam_dot_pixels: each pixel's sum in 8 lanes (lane l: the channels c = l mod 8 of every tap, in
 * (tap, c) order, one fma chain), then ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); the AVX2 code and the
 * scalar code do the same operations */
static void dot_row_scalar(float *o, const float *row, const size_t *off, int noff, const float *w,
                           int C, int W) {
    for (int x = 0; x < W; x++) {
        float acc[8] = {0};
        const float *p = row + (size_t)x * C;
        for (int k = 0; k < noff; k++)
            for (int c = 0; c < C; c++) acc[c % 8] = fmaf(p[off[k] + c], w[(size_t)k * C + c], acc[c % 8]);
        o[x] = lanes_sum(acc);
    }
}
#ifdef SAM_X86
__attribute__((target("avx2,fma"))) static void dot_row_avx2(float *o, const float *row,
                                                            const size_t *off, int noff,
                                                            const float *w, int C, int W) {
    int x = 0;
    float t[8];
    for (; x + 8 <= W; x += 8) {
        __m256 a[8];
        for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
        const float *p = row + (size_t)x * C;
        for (int k = 0; k < noff; k++) {
            const float *pk = p + off[k], *wk = w + (size_t)k * C;
            for (int c = 0; c < C; c += 8) {
                __m256 wv = _mm256_loadu_ps(wk + c);
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(pk + (size_t)i * C + c), wv, a[i]);
            }
        }
        for (int i = 0; i < 8; i++) {
            _mm256_storeu_ps(t, a[i]);
            o[x + i] = lanes_sum(t);
        }
    }
    if (x < W) dot_row_scalar(o + x, row + (size_t)x * C, off, noff, w, C, W - x);
}
#endif

void sam_dot_pixels(float *out, const float *base, int rs, const size_t *off, int noff,
                    const float *w, int C, int H, int W) {
#ifdef SAM_X86
    const int fast = C % 8 == 0 && gemm_f32_available();
#endif
#pragma omp parallel for schedule(static) if ((size_t)H * W * C * noff > 262144)
    for (int y = 0; y < H; y++) {
        const float *row = base + (size_t)y * rs * C;
#ifdef SAM_X86
        if (fast) {
            dot_row_avx2(out + (size_t)y * W, row, off, noff, w, C, W);
            continue;
        }
#endif
        dot_row_scalar(out + (size_t)y * W, row, off, noff, w, C, W);
    }
}

/* torch 1.13 compute_indices_weights_linear (align_corners False, no scale given) */
static void lin_idx(int out, int in, int *i0, int *i1, float *l0, float *l1) {
    float scale = (float)in / (float)out;
    for (int i = 0; i < out; i++) {
        float real = scale * (i + 0.5f) - 0.5f;
        if (real < 0) real = 0;
        int idx = (int)floorf(real);
        if (idx > in - 1) idx = in - 1;
        float lam = real - idx;
        lam = lam < 0 ? 0 : lam > 1 ? 1 : lam;
        i0[i] = idx;
        i1[i] = idx + (idx < in - 1 ? 1 : 0);
        l0[i] = 1.0f - lam;
        l1[i] = lam;
    }
}

int sam_bilinear(float *dst, int dw, int dh, const float *src, int ld, int sw, int sh) {
    return sam_bilinear_part(dst, dw, dh, dw, dh, src, ld, sw, sh);
}

int sam_bilinear_part(float *dst, int dw, int dh, int cw, int ch, const float *src, int ld, int sw,
                      int sh) {
    int *xi = malloc(sizeof(int) * 2 * (size_t)(dw + dh));
    float *xl = malloc(sizeof(float) * 2 * (size_t)(dw + dh));
    if (!xi || !xl) {
        free(xi), free(xl);
        return -1;
    }
    int *x0 = xi, *x1 = xi + dw, *y0 = xi + 2 * dw, *y1 = y0 + dh;
    float *wx0 = xl, *wx1 = xl + dw, *wy0 = xl + 2 * dw, *wy1 = wy0 + dh;
    lin_idx(dw, sw, x0, x1, wx0, wx1);
    lin_idx(dh, sh, y0, y1, wy0, wy1);
    cw = cw < dw ? cw : dw, ch = ch < dh ? ch : dh;
#pragma omp parallel for schedule(static) if ((size_t)cw * ch > 65536)
    for (int y = 0; y < ch; y++) {
        const float *r0 = src + (size_t)y0[y] * ld, *r1 = src + (size_t)y1[y] * ld;
        float h0 = wy0[y], h1 = wy1[y];
        float *o = dst + (size_t)y * dw;
        for (int x = 0; x < cw; x++) {
            float t0 = r0[x0[x]] * wx0[x];
            t0 += r0[x1[x]] * wx1[x];
            float t1 = r1[x0[x]] * wx0[x];
            t1 += r1[x1[x]] * wx1[x];
            float v = t0 * h0;
            v += t1 * h1;
            o[x] = v;
        }
    }
    free(xi), free(xl);
    return 0;
}
