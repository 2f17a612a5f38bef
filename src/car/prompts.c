/* prompts.c — visual prompts v(x, m) of CaR, pixel-exact with OpenCV 4.6 (car_method.md §3.2).
 *
 * Mirrors clip_as_rnn/modeling/model/utils.py (apply_visual_prompts, mask2chw) and
 * car.py (CaR.apply_visual_prompts). Drawing follows OpenCV's imgproc/drawing.cpp:
 * cv2.ellipse with thickness 1 = ellipse2Poly points in 16-bit fixed point (sine table, angular
 * step by axis size) joined by the fixed-point 8-connected line rasteriser (Line2) after
 * clipLine; cv2.rectangle with shift 0 = integer lines clipped to the image.
 */
#include "prompts.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "imgproc.h"
#include "util.h"

static const uint8_t RED[3] = {255, 0, 0};   /* (255,0,0) in an RGB array: red (car_method §3.2) */

static const char *const VP_NAMES[6] = {"blur", "gray", "black", "circle", "rectangle", "contour"};

carseg_status vp_parse(const char *list, unsigned *types) {
    *types = 0;
    if (!list) return CARSEG_OK;
    const char *rest = list, *p;
    size_t n;
    while ((p = cs_list_next(&rest, &n))) {
        int found = -1;
        for (int i = 0; i < 6; i++)
            if (strlen(VP_NAMES[i]) == n && !strncmp(p, VP_NAMES[i], n)) found = i;
        if (found < 0)
            return set_err(CARSEG_EINVAL,
                           "prompts: unknown visual prompt '%.*s' (known: blur, gray, black, "
                           "circle, rectangle, contour)", (int)n, p);
        *types |= 1u << found;
    }
    return CARSEG_OK;
}

void vp_format(unsigned types, char *buf, size_t n) {
    size_t k = 0;
    if (n == 0) return;
    buf[0] = 0;
    for (int i = 0; i < 6; i++) {
        if (!(types & (1u << i))) continue;
        int w = snprintf(buf + k, n - k, "%s%s", k ? "," : "", VP_NAMES[i]);
        if (w < 0 || (size_t)w >= n - k) break;
        k += (size_t)w;
    }
}

// ---------------------------------------------------------------------------------------------
// OpenCV drawing (thickness 1)

enum { XY_SHIFT = 16, XY_ONE = 1 << XY_SHIFT };

/* imgproc/drawing.cpp SinTable: sin(i degrees) for i = 0..450, stored to 7 decimals as floats. */
static float g_sin_table[451];
static int g_sin_init;

static void sin_table_init(void) {
    if (g_sin_init) return;
    /* OpenCV's table holds the values rounded to 7 decimals (then to float); reproduce that. */
    for (int i = 0; i <= 450; i++) {
        double s = sin((double)i * M_PI / 180.0);
        double r = nearbyint(s * 1e7) / 1e7;
        if (r == 0) r = 0;           /* sign of zero is irrelevant for the products used */
        g_sin_table[i] = (float)r;
    }
    g_sin_init = 1;
}

static inline void put_px(uint8_t *img, int w, int h, int64_t x, int64_t y, const uint8_t c[3]) {
    if (x >= 0 && x < w && y >= 0 && y < h) {
        uint8_t *p = img + ((size_t)y * (size_t)w + (size_t)x) * 3;
        p[0] = c[0], p[1] = c[1], p[2] = c[2];
    }
}

/* clipLine(Size2l, Point2l&, Point2l&) */
static int clip_line(int64_t width, int64_t height, int64_t *x1, int64_t *y1, int64_t *x2,
                     int64_t *y2) {
    int64_t right = width - 1, bottom = height - 1;
    if (width <= 0 || height <= 0) return 0;
    int c1 = (*x1 < 0) + (*x1 > right) * 2 + (*y1 < 0) * 4 + (*y1 > bottom) * 8;
    int c2 = (*x2 < 0) + (*x2 > right) * 2 + (*y2 < 0) * 4 + (*y2 > bottom) * 8;
    if ((c1 & c2) == 0 && (c1 | c2) != 0) {
        int64_t a;
        if (c1 & 12) {
            a = c1 < 8 ? 0 : bottom;
            *x1 += (a - *y1) * (*x2 - *x1) / (*y2 - *y1);
            *y1 = a;
            c1 = (*x1 < 0) + (*x1 > right) * 2;
        }
        if (c2 & 12) {
            a = c2 < 8 ? 0 : bottom;
            *x2 += (a - *y2) * (*x2 - *x1) / (*y2 - *y1);
            *y2 = a;
            c2 = (*x2 < 0) + (*x2 > right) * 2;
        }
        if ((c1 & c2) == 0 && (c1 | c2) != 0) {
            if (c1) {
                a = c1 == 1 ? 0 : right;
                *y1 += (a - *x1) * (*y2 - *y1) / (*x2 - *x1);
                *x1 = a;
                c1 = 0;
            }
            if (c2) {
                a = c2 == 1 ? 0 : right;
                *y2 += (a - *x2) * (*y2 - *y1) / (*x2 - *x1);
                *x2 = a;
                c2 = 0;
            }
        }
    }
    return (c1 | c2) == 0;
}

/* Line2: 8-connected line between two points in XY_SHIFT fixed point. */
static void line2(uint8_t *img, int w, int h, int64_t x1, int64_t y1, int64_t x2, int64_t y2,
                  const uint8_t c[3]) {
    if (!clip_line((int64_t)w << XY_SHIFT, (int64_t)h << XY_SHIFT, &x1, &y1, &x2, &y2)) return;
    int64_t dx = x2 - x1, dy = y2 - y1;
    int64_t j = dx < 0 ? -1 : 0, ax = (dx ^ j) - j;
    int64_t i = dy < 0 ? -1 : 0, ay = (dy ^ i) - i;
    int64_t x_step, y_step;
    int ecount;
    if (ax > ay) {
        dy = (dy ^ j) - j;
        x1 ^= x2 & j; x2 ^= x1 & j; x1 ^= x2 & j;
        y1 ^= y2 & j; y2 ^= y1 & j; y1 ^= y2 & j;
        x_step = XY_ONE;
        y_step = (dy * XY_ONE) / (ax | 1);
        ecount = (int)((x2 - x1) >> XY_SHIFT);
    } else {
        dx = (dx ^ i) - i;
        x1 ^= x2 & i; x2 ^= x1 & i; x1 ^= x2 & i;
        y1 ^= y2 & i; y2 ^= y1 & i; y1 ^= y2 & i;
        x_step = (dx * XY_ONE) / (ay | 1);
        y_step = XY_ONE;
        ecount = (int)((y2 - y1) >> XY_SHIFT);
    }
    x1 += XY_ONE >> 1;
    y1 += XY_ONE >> 1;
    put_px(img, w, h, (x2 + (XY_ONE >> 1)) >> XY_SHIFT, (y2 + (XY_ONE >> 1)) >> XY_SHIFT, c);
    if (ax > ay) {
        x1 >>= XY_SHIFT;
        while (ecount >= 0) {
            put_px(img, w, h, x1, y1 >> XY_SHIFT, c);
            x1++;
            y1 += y_step;
            ecount--;
        }
    } else {
        y1 >>= XY_SHIFT;
        while (ecount >= 0) {
            put_px(img, w, h, x1 >> XY_SHIFT, y1, c);
            x1 += x_step;
            y1++;
            ecount--;
        }
    }
}

void vp_draw_ellipse(uint8_t *rgb, int w, int h, int cx, int cy, int ax, int ay,
                     const uint8_t color[3]) {
    sin_table_init();
    if (ax < 0) ax = -ax;
    if (ay < 0) ay = -ay;
    int64_t CX = (int64_t)cx * XY_ONE, CY = (int64_t)cy * XY_ONE;   /* cx << XY_SHIFT */
    int64_t AX = (int64_t)ax * XY_ONE, AY = (int64_t)ay * XY_ONE;
    int delta = (int)(((AX > AY ? AX : AY) + (XY_ONE >> 1)) >> XY_SHIFT);
    delta = delta < 3 ? 90 : delta < 10 ? 30 : delta < 15 ? 18 : 5;
    /* ellipse2Poly, angle 0 (alpha = cos 0 = 1, beta = sin 0 = 0), arc 0..360 */
    int64_t px[80], py[80];
    int n = 0;
    double alpha = g_sin_table[450], beta = g_sin_table[0];
    for (int i = 0; i < 360 + delta; i += delta) {
        int a = i > 360 ? 360 : i;
        double x = (double)AX * g_sin_table[450 - a];
        double y = (double)AY * g_sin_table[a];
        double fx = (double)CX + x * alpha - y * beta;
        double fy = (double)CY + x * beta + y * alpha;
        int64_t qx = (int64_t)lrint(fx / XY_ONE) * XY_ONE;
        int64_t qy = (int64_t)lrint(fy / XY_ONE) * XY_ONE;
        qx += (int64_t)lrint(fx - (double)qx);
        qy += (int64_t)lrint(fy - (double)qy);
        if (n == 0 || qx != px[n - 1] || qy != py[n - 1]) {
            px[n] = qx;
            py[n] = qy;
            n++;
        }
    }
    if (n == 1) {
        px[0] = px[1] = CX;
        py[0] = py[1] = CY;
        n = 2;
    }
    /* PolyLine, open, thickness 1, LINE_8, shift XY_SHIFT -> Line2 per segment */
    for (int i = 1; i < n; i++) line2(rgb, w, h, px[i - 1], py[i - 1], px[i], py[i], color);
}

/* Integer 8-connected line (LineIterator path), enough for the axis-aligned rectangle sides. */
static void line_int(uint8_t *img, int w, int h, int64_t x1, int64_t y1, int64_t x2, int64_t y2,
                     const uint8_t c[3]) {
    if (!clip_line(w, h, &x1, &y1, &x2, &y2)) return;
    int64_t dx = x2 - x1, dy = y2 - y1;
    int64_t adx = dx < 0 ? -dx : dx, ady = dy < 0 ? -dy : dy;
    int64_t steps = adx > ady ? adx : ady;
    if (steps == 0) {
        put_px(img, w, h, x1, y1, c);
        return;
    }
    if (dx != 0 && dy != 0 && adx != ady) {
        /* general slope: Bresenham as LineIterator (left to right, 8-connected) */
        if (dx < 0) {
            int64_t t = x1; x1 = x2; x2 = t;
            t = y1; y1 = y2; y2 = t;
            dx = -dx; dy = -dy;
        }
        int64_t sy = dy < 0 ? -1 : 1;
        int64_t ddy = dy < 0 ? -dy : dy;
        int swap = ddy > dx;
        int64_t a = swap ? ddy : dx, b = swap ? dx : ddy;
        int64_t err = a - (b + b), x = x1, y = y1;
        for (int64_t k = 0; k <= a; k++) {
            put_px(img, w, h, x, y, c);
            int64_t mask = err < 0 ? -1 : 0;
            err += (-(b + b)) + ((a + a) & mask);
            if (swap) { y += sy; if (mask) x++; }
            else { x++; if (mask) y += sy; }
        }
        return;
    }
    int64_t sx = dx > 0 ? 1 : dx < 0 ? -1 : 0, sy = dy > 0 ? 1 : dy < 0 ? -1 : 0;
    for (int64_t k = 0; k <= steps; k++) put_px(img, w, h, x1 + k * sx, y1 + k * sy, c);
}

void vp_draw_rect(uint8_t *rgb, int w, int h, int x0, int y0, int x1, int y1,
                  const uint8_t color[3]) {
    int64_t X[4] = {x0, x1, x1, x0}, Y[4] = {y0, y0, y1, y1};
    /* closed PolyLine: (3,0), (0,1), (1,2), (2,3) */
    for (int i = 0; i < 4; i++) {
        int p = (i + 3) % 4;
        line_int(rgb, w, h, X[p], Y[p], X[i], Y[i], color);
    }
}

carseg_status vp_draw_contour(uint8_t *rgb, int w, int h, const uint8_t *bin,
                              const uint8_t color[3]) {
    size_t n = (size_t)w * (size_t)h;
    /* binary_fill_holes: background not 4-connected to the image border becomes foreground */
    uint8_t *outside = cs_calloc(n, 1);
    int *stack = cs_malloc(n * sizeof(int) + 1);
    if (!outside || !stack) {
        cs_free(outside);
        cs_free(stack);
        return set_err(CARSEG_ENOMEM, "prompts: out of memory (contour of %dx%d)", w, h);
    }
    size_t sp = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            if (y != 0 && y != h - 1 && x != 0 && x != w - 1) continue;
            size_t k = (size_t)y * w + x;
            if (!bin[k] && !outside[k]) { outside[k] = 1; stack[sp++] = (int)k; }
        }
    while (sp) {
        int k = stack[--sp], x = k % w, y = k / w;
        int nb[4][2] = {{x - 1, y}, {x + 1, y}, {x, y - 1}, {x, y + 1}};
        for (int t = 0; t < 4; t++) {
            int u = nb[t][0], v = nb[t][1];
            if (u < 0 || v < 0 || u >= w || v >= h) continue;
            size_t q = (size_t)v * w + u;
            if (!bin[q] && !outside[q]) { outside[q] = 1; stack[sp++] = (int)q; }
        }
    }
    /* filled = !outside. Border pixels: filled pixels with a 4-neighbour outside the region
     * (or the image frame, which findContours pads with zeros). */
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            size_t k = (size_t)y * w + x;
            if (outside[k]) continue;
            int border = x == 0 || y == 0 || x == w - 1 || y == h - 1 || outside[k - 1] ||
                         outside[k + 1] || outside[k - w] || outside[k + w];
            if (border) put_px(rgb, w, h, x, y, color);
        }
    cs_free(outside);
    cs_free(stack);
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// prompts

/* mask2chw over M == 1: centre = int(mean rows/cols), extent = max - min + 1. 0 if empty. */
static int mask_chw(const uint8_t *bin, int w, int h, int *cy, int *cx, int *mh, int *mw) {
    double sr = 0, sc = 0;
    size_t cnt = 0;
    int r0 = h, r1 = -1, c0 = w, c1 = -1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if (bin[(size_t)y * w + x]) {
                sr += y, sc += x, cnt++;
                if (y < r0) r0 = y;
                if (y > r1) r1 = y;
                if (x < c0) c0 = x;
                if (x > c1) c1 = x;
            }
    if (!cnt) return 0;
    *cy = (int)(sr / (double)cnt);
    *cx = (int)(sc / (double)cnt);
    *mh = r1 - r0 + 1;
    *mw = c1 - c0 + 1;
    return 1;
}

static void draw_shapes(uint8_t *out, int w, int h, unsigned types, const uint8_t *bin) {
    int cy, cx, mh, mw;
    /* the reference would raise on an empty binary mask (mean of nothing): draw nothing */
    if ((types & (VP_CIRCLE | VP_RECTANGLE)) && mask_chw(bin, w, h, &cy, &cx, &mh, &mw)) {
        if (types & VP_CIRCLE) vp_draw_ellipse(out, w, h, cx, cy, mw / 2, mh / 2, RED);
        if (types & VP_RECTANGLE)
            vp_draw_rect(out, w, h, cx - mw / 2, cy - mh / 2, cx + mw / 2, cy + mh / 2, RED);
    }
    if (types & VP_CONTOUR) (void)vp_draw_contour(out, w, h, bin, RED);
}

/* COLOR_BGR2GRAY on the RGB array (Q3: weights 0.114 R, 0.587 G, 0.299 B), or with the fix the
 * proper RGB weights (the same fixed point with the channels swapped). */
static void gray_of(uint8_t *g, const uint8_t *rgb, int w, int h, unsigned types) {
    if (!(types & VP_GRAY_RGB)) {
        cv_bgr2gray_u8(g, rgb, w, h);
        return;
    }
    for (size_t i = 0; i < (size_t)w * h; i++) {
        const uint8_t *p = rgb + 3 * i;
        g[i] = (uint8_t)((p[2] * 1868 + p[1] * 9617 + p[0] * 4899 + 8192) >> 14);
    }
}

static int mask_trivial(const float *mask, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += mask[i];
    return s <= 1.0;
}

carseg_status vp_prepare(const uint8_t *rgb, int w, int h, unsigned types, vp_ctx *ctx) {
    memset(ctx, 0, sizeof *ctx);
    if (w <= 0 || h <= 0) return set_err(CARSEG_EINVAL, "prompts: empty image (%dx%d)", w, h);
    ctx->w = w, ctx->h = h, ctx->types = types, ctx->rgb = rgb;
    if (!(types & (VP_BLUR | VP_GRAY | VP_BLACK))) return CARSEG_OK;
    size_t n = (size_t)w * (size_t)h;
    uint8_t *o = cs_malloc(n * 3);
    if (!o) return set_err(CARSEG_ENOMEM, "prompts: out of memory (%dx%d)", w, h);
    if (types & VP_BLUR) cv_gaussian_blur_u8(o, rgb, w, h, 3, 15);
    else memcpy(o, rgb, n * 3);
    if (types & VP_GRAY) {
        uint8_t *g = cs_malloc(n);
        if (!g) { cs_free(o); return set_err(CARSEG_ENOMEM, "prompts: out of memory"); }
        gray_of(g, o, w, h, types);
        for (size_t i = 0; i < n; i++) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = g[i];
        cs_free(g);
    }
    if (types & VP_BLACK) memset(o, 0, n * 3);
    ctx->outside = o;
    return CARSEG_OK;
}

void vp_release(vp_ctx *ctx) {
    if (!ctx) return;
    cs_free(ctx->outside);
    ctx->outside = NULL;
}

int vp_apply(const vp_ctx *ctx, const float *mask, float eta, uint8_t *out) {
    int w = ctx->w, h = ctx->h;
    size_t n = (size_t)w * (size_t)h;
    memcpy(out, ctx->rgb, n * 3);
    if (mask_trivial(mask, n)) return 0;
    uint8_t *bin = cs_malloc(n);
    if (!bin) return -1;
    for (size_t i = 0; i < n; i++) bin[i] = mask[i] > eta;
    if (ctx->outside)
        for (size_t i = 0; i < n; i++)
            if (!bin[i]) memcpy(out + 3 * i, ctx->outside + 3 * i, 3);
    draw_shapes(out, w, h, ctx->types, bin);
    cs_free(bin);
    return 1;
}

int vp_apply_naive(const uint8_t *rgb, int w, int h, unsigned types, const float *mask, float eta,
                   uint8_t *out) {
    size_t n = (size_t)w * (size_t)h;
    memcpy(out, rgb, n * 3);
    if (mask_trivial(mask, n)) return 0;
    uint8_t *bin = cs_malloc(n), *tmp = cs_malloc(n * 3), *g = cs_malloc(n);
    if (!bin || !tmp || !g) { cs_free(bin); cs_free(tmp); cs_free(g); return -1; }
    for (size_t i = 0; i < n; i++) bin[i] = mask[i] > eta;
    if (types & VP_BLUR) {   /* sharp inside + blurred outside (cv2.add of disjoint parts) */
        cv_gaussian_blur_u8(tmp, out, w, h, 3, 15);
        for (size_t i = 0; i < n; i++)
            if (!bin[i]) memcpy(out + 3 * i, tmp + 3 * i, 3);
    }
    if (types & VP_GRAY) {
        gray_of(g, out, w, h, types);
        for (size_t i = 0; i < n; i++)
            if (!bin[i]) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = g[i];
    }
    if (types & VP_BLACK)
        for (size_t i = 0; i < n; i++)
            if (!bin[i]) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = 0;
    draw_shapes(out, w, h, types, bin);
    cs_free(bin); cs_free(tmp); cs_free(g);
    return 1;
}
