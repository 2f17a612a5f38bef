/* imgproc.c — the OpenCV 4.6 operations the reference uses, reproduced bit for bit.
 *
 *   cv2.GaussianBlur(img, (k, k), 0) on uint8  -> cv_gaussian_blur_u8   (visual prompt "blur")
 *   cv2.cvtColor(img, COLOR_BGR2GRAY) on uint8 -> cv_bgr2gray_u8        (visual prompt "gray")
 *     OpenCV 4.6 uses 15-bit weights here, Y = (3735 B + 19235 G + 9798 R + 2^14) >> 15, not the
 *     14-bit 1868/9617/4899 of older releases (they differ on ~0.2% of random pixels); checked
 *     against cv2 on all 2^24 colours.
 *   cv2.resize(map, size, INTER_LINEAR) float  -> cv_resize_linear_f32  (CAM -> image size)
 *   cv2.resize(map, size, INTER_NEAREST) float -> cv_resize_nearest_f32
 *
 * GaussianBlur on 8-bit data takes OpenCV's "bit-exact" path: the 1-D kernel is computed in
 * (soft) double, sigma = 0.15*k + 0.35 as one fused multiply-add, then quantised to unsigned
 * 8.8 fixed point with error diffusion from the outer taps inwards, the centre tap taking what
 * is left so the taps sum to exactly 256 (k <= 7 use OpenCV's fixed binomial-like tables).
 * Rows are filtered first (8.8 results, exact), then columns (16.16), and the result is rounded
 * half up: out = (sum_ij ky_i kx_j src + 2^15) >> 16. All integer, so summation order does not
 * matter. Borders: BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), repeated for images narrower
 * than the kernel, a 1-pixel axis reads its only pixel.
 * Verified against Debian's python3-opencv 4.6 by tests/test_imgproc.c.
 */
#include "imgproc.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* OpenCV borderInterpolate for BORDER_REFLECT_101. */
static int reflect101(int p, int len) {
    if (len == 1) return 0;
    while (p < 0 || p >= len) p = p < 0 ? -p : 2 * len - 2 - p;
    return p;
}

/* The fixed-point (8 fractional bits) Gaussian taps OpenCV uses for CV_8U with sigma = 0. */
static void gaussian_taps_q8(int n, int *k) {
    static const int t3[] = {64, 128, 64}, t5[] = {16, 64, 96, 64, 16},
                     t7[] = {8, 28, 56, 72, 56, 28, 8};
    if (n == 1) { k[0] = 256; return; }
    if (n == 3 || n == 5 || n == 7) {
        memcpy(k, n == 3 ? t3 : n == 5 ? t5 : t7, sizeof(int) * n);
        return;
    }
    /* getGaussianKernelBitExact: sigma = fma(n, 0.15, 0.35); taps exp(-x^2 / (8 sigma^2)) with
     * x = 2i - (n-1) (half-steps), normalised by 1 / (2 * sum(outer) + 1). */
    double sigma = fma((double)n, 0.15, 0.35);
    double scale2 = -0.125 / (sigma * sigma);
    int h = (n - 1) / 2;
    double *v = malloc(sizeof(double) * (h + 1));
    CS_ASSERT(v);
    double sum = 0;
    for (int i = 0, x = 1 - n; i < h; i++, x += 2) {
        v[i] = exp((double)(x * x) * scale2);
        sum += v[i];
    }
    sum = sum * 2 + 1.0;
    double mul = 1.0 / sum;
    /* getGaussianKernelFixedPoint_ED: error diffusion from the outside in, centre = remainder */
    double err = 0;
    int isum = 0;
    for (int i = 0; i < h; i++) {
        double adj = v[i] * mul * 256.0 + err;
        int q = (int)nearbyint(adj);
        err = adj - q;
        k[i] = k[n - 1 - i] = q;
        isum += q;
    }
    k[h] = 256 - 2 * isum;
    free(v);
}

void cv_gaussian_blur_u8(uint8_t *dst, const uint8_t *src, int w, int h, int c, int ksize) {
    CS_ASSERT(ksize > 0 && (ksize & 1) && w > 0 && h > 0 && c > 0 && dst != src);
    int k[512];
    int *kk = ksize <= 512 ? k : malloc(sizeof(int) * ksize);
    CS_ASSERT(kk);
    gaussian_taps_q8(ksize, kk);
    const int r = ksize / 2;
    const size_t row = (size_t)w * c;
    int *yi = malloc(sizeof(int) * ((size_t)h + 2 * r));
    uint16_t *tmp = malloc(sizeof(uint16_t) * row * h);   /* rows filtered, 8.8 fixed point */
    CS_ASSERT(yi && tmp);
    for (int i = 0; i < h + 2 * r; i++) yi[i] = reflect101(i - r, h);
    #pragma omp parallel if (row * h > 65536)
    {
        /* one source row with its reflected border: (w + 2r) * c samples */
        uint8_t *pad = malloc((size_t)(w + 2 * r) * c);
        uint32_t *acc = malloc(sizeof(uint32_t) * row);
        CS_ASSERT(pad && acc);
        #pragma omp for schedule(static)
        for (int y = 0; y < h; y++) {
            const uint8_t *s = src + (size_t)y * row;
            for (int i = 0; i < w + 2 * r; i++)
                memcpy(pad + (size_t)i * c, s + (size_t)reflect101(i - r, w) * c, (size_t)c);
            uint16_t *o = tmp + (size_t)y * row;
            for (size_t i = 0; i < row; i++) acc[i] = 0;
            for (int j = 0; j < ksize; j++) {
                const uint32_t kj = (uint32_t)kk[j];
                const uint8_t *q = pad + (size_t)j * c;
                for (size_t i = 0; i < row; i++) acc[i] += kj * q[i];
            }
            for (size_t i = 0; i < row; i++) o[i] = (uint16_t)acc[i];   /* <= 255 * 256 */
        }
        #pragma omp for schedule(static)
        for (int y = 0; y < h; y++) {
            for (size_t i = 0; i < row; i++) acc[i] = 1u << 15;
            for (int j = 0; j < ksize; j++) {
                const uint32_t kj = (uint32_t)kk[j];
                const uint16_t *q = tmp + (size_t)yi[y + j] * row;
                for (size_t i = 0; i < row; i++) acc[i] += kj * q[i];
            }
            uint8_t *o = dst + (size_t)y * row;
            for (size_t i = 0; i < row; i++) o[i] = (uint8_t)(acc[i] >> 16);
        }
        free(pad);
        free(acc);
    }
    free(tmp), free(yi);
    if (kk != k) free(kk);
}

void cv_bgr2gray_u8(uint8_t *dst, const uint8_t *src, int w, int h) {
    size_t n = (size_t)w * h;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = src + 3 * i;
        /* OpenCV 4.6 RGB2Gray<uchar>: 15-bit weights (sum 32768), round half up */
        dst[i] = (uint8_t)((p[0] * 3735 + p[1] * 19235 + p[2] * 9798 + (1 << 14)) >> 15);
    }
}

/* Linear taps per output coordinate as cv::resize computes them (float, half-pixel centres,
 * clamped at both ends): out[d] = in[i0[d]] * a0[d] + in[i1[d]] * a1[d]. */
/* clamp_weights: cv::resize clamps the horizontal taps at the borders (weight 1 on the edge
 * pixel) but not the vertical ones: there only the row indices are clamped, the weights stay
 * (1 - f, f), so an edge row comes out as v*(1-f) + v*f, which may differ from v by an ulp. */
static void linear_taps(int dn, int sn, int clamp_weights, int *i0, int *i1, float *a0, float *a1) {
    double scale = 1.0 / ((double)dn / sn);
    for (int d = 0; d < dn; d++) {
        float f = (float)((d + 0.5) * scale - 0.5);
        int s = (int)floorf(f);
        f -= (float)s;
        if (clamp_weights) {
            if (s < 0) f = 0, s = 0;
            if (s >= sn - 1) f = 0, s = sn - 1;
        }
        i0[d] = s < 0 ? 0 : s > sn - 1 ? sn - 1 : s;
        i1[d] = s + 1 < 0 ? 0 : s + 1 > sn - 1 ? sn - 1 : s + 1;
        a0[d] = 1.0f - f;
        a1[d] = f;
    }
}

void cv_resize_linear_f32(float *dst, int dw, int dh, const float *src, int sw, int sh) {
    CS_ASSERT(dw > 0 && dh > 0 && sw > 0 && sh > 0);
    if (dw == sw && dh == sh) {
        memmove(dst, src, sizeof(float) * (size_t)sw * sh);
        return;
    }
    if (dw * 2 == sw && dh * 2 == sh) {
        /* cv::resize turns an exact 2x downscale into INTER_AREA's fast path (same weights,
         * other rounding): 4-wide SIMD blocks add (a+b)+(c+d), the scalar tail ((a+b)+c)+d. */
        for (int y = 0; y < dh; y++) {
            const float *a = src + (size_t)(2 * y) * sw, *b = a + sw;
            int x = 0;
            for (; x < dw / 4 * 4; x++)
                dst[(size_t)y * dw + x] = ((a[2 * x] + a[2 * x + 1]) + (b[2 * x] + b[2 * x + 1])) * 0.25f;
            for (; x < dw; x++)
                dst[(size_t)y * dw + x] = (((a[2 * x] + a[2 * x + 1]) + b[2 * x]) + b[2 * x + 1]) * 0.25f;
        }
        return;
    }
    int *xi = malloc(sizeof(int) * 2 * dw), *yi = malloc(sizeof(int) * 2 * dh);
    float *xa = malloc(sizeof(float) * 2 * dw), *ya = malloc(sizeof(float) * 2 * dh);
    CS_ASSERT(xi && yi && xa && ya);
    linear_taps(dw, sw, 1, xi, xi + dw, xa, xa + dw);
    linear_taps(dh, sh, 0, yi, yi + dh, ya, ya + dh);
    #pragma omp parallel for schedule(static) if ((size_t)dw * dh > 65536)
    for (int y = 0; y < dh; y++) {
        const float *r0 = src + (size_t)yi[y] * sw, *r1 = src + (size_t)yi[dh + y] * sw;
        const float b0 = ya[y], b1 = ya[dh + y];
        float *o = dst + (size_t)y * dw;
        for (int x = 0; x < dw; x++) {
            /* horizontal pass per source row, then the vertical blend, all in float */
            float h0 = r0[xi[x]] * xa[x] + r0[xi[dw + x]] * xa[dw + x];
            float h1 = r1[xi[x]] * xa[x] + r1[xi[dw + x]] * xa[dw + x];
            o[x] = h0 * b0 + h1 * b1;
        }
    }
    free(xi), free(yi), free(xa), free(ya);
}

void cv_resize_nearest_f32(float *dst, int dw, int dh, const float *src, int sw, int sh) {
    CS_ASSERT(dw > 0 && dh > 0 && sw > 0 && sh > 0);
    double ifx = 1.0 / ((double)dw / sw), ify = 1.0 / ((double)dh / sh);
    int *xo = malloc(sizeof(int) * dw);
    CS_ASSERT(xo);
    for (int x = 0; x < dw; x++) {
        int s = (int)floor(x * ifx);
        xo[x] = s < sw - 1 ? s : sw - 1;
    }
    for (int y = 0; y < dh; y++) {
        int s = (int)floor(y * ify);
        const float *r = src + (size_t)(s < sh - 1 ? s : sh - 1) * sw;
        for (int x = 0; x < dw; x++) dst[(size_t)y * dw + x] = r[xo[x]];
    }
    free(xo);
}
