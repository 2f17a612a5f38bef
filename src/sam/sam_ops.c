/* sam_ops.c — the layer operations SAM needs beyond nn.c: LayerNorm with SAM's eps (1e-6 in the
 * encoder and LayerNorm2d, 1e-5 in the two-way transformer), exact GELU (nn.GELU), ReLU, the
 * 2x2 stride-2 transposed convolutions and 3x3 convolutions as products on nn_sgemm (shape-only
 * tiles: the same bits at any thread count), and torch's bilinear interpolation.
 * Every row-wise reduction is done by one thread, so results never depend on the thread count. */
#include "sam_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "util.h"

static void ln_row(float *o, const float *x, const float *w, const float *b, int C, float eps) {
    float s = 0;
    for (int c = 0; c < C; c++) s += x[c];
    float m = s / C, ss = 0;
    for (int c = 0; c < C; c++) ss += (x[c] - m) * (x[c] - m);
    float rstd = 1.0f / sqrtf(ss / C + eps);
    for (int c = 0; c < C; c++) o[c] = (x[c] - m) * rstd * w[c] + b[c];
}

void sam_layernorm(float *out, const float *x, const float *w, const float *b, int N, int C,
                   float eps) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > 32768)
    for (int i = 0; i < N; i++) ln_row(out + (size_t)i * C, x + (size_t)i * C, w, b, C, eps);
}

void sam_gelu(float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
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

float *sam_conv3_reorder(const float *w, int cout, int cin) {
    float *r = cs_malloc(sizeof(float) * 9 * (size_t)cout * cin);
    if (!r) return NULL;
    for (int k = 0; k < 9; k++)
        for (int co = 0; co < cout; co++)
            for (int ci = 0; ci < cin; ci++)
                r[((size_t)k * cout + co) * cin + ci] = w[((size_t)co * cin + ci) * 9 + k];
    return r;
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
    const int M = H * Wp;
    for (int k = 0; k < 9; k++) {
        int ky = k / 3, kx = k % 3;
        nn_sgemm(0, 1, M, cout, cin, 1.0f, pad + ((size_t)ky * Wp + kx) * cin, cin,
                 c->w + (size_t)k * cout * cin, cin, k ? 1.0f : 0.0f, acc, cout);
    }
#pragma omp parallel for schedule(static) if ((size_t)H * W * cout > 65536)
    for (int y = 0; y < H; y++)
        for (int xx = 0; xx < W; xx++) {
            const float *a = acc + ((size_t)y * Wp + xx) * cout;
            float *o = out + ((size_t)y * W + xx) * cout;
            for (int co = 0; co < cout; co++) o[co] = a[co] + (c->b ? c->b[co] : 0.0f);
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
#pragma omp parallel for schedule(static) if ((size_t)dw * dh > 65536)
    for (int y = 0; y < dh; y++) {
        const float *r0 = src + (size_t)y0[y] * ld, *r1 = src + (size_t)y1[y] * ld;
        float h0 = wy0[y], h1 = wy1[y];
        float *o = dst + (size_t)y * dw;
        for (int x = 0; x < dw; x++) {
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
