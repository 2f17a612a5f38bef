/* crf.c — the dense CRF post-processing of CaR (modeling/model/crf.py): pydensecrf's DenseCRF2D
 * with setUnaryEnergy(-log(clip(p, 1e-5, 1))), addPairwiseGaussian(sxy, compat),
 * addPairwiseBilateral(sxy, srgb, rgbim, compat), inference(iters), argmax.
 *
 * Mirrors DenseCRF 2.x (densecrf.cpp, pairwise.cpp, labelcompatibility.cpp): DIAG_KERNEL with unit
 * parameters (features used as built), NORMALIZE_SYMMETRIC (norm = 1/sqrt(K·1 + 1e-20), applied
 * before and after filtering), PottsCompatibility (out = -w·KQ, subtracted from the energy), no
 * removal of the self term (the lattice filter includes each pixel's own Q), kernels summed in the
 * order they were added (Gaussian, then bilateral), expAndNormalize subtracting the per-pixel max.
 * All in float like the reference. Differences: expf and a plain sum in the softmax instead of
 * Eigen's vectorised exp and sum (last-bit differences), parallel loops.
 */
#include "crf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lattice.h"
#include "util.h"

crf_params crf_default_params(void) {
    crf_params p = {.iters = 10, .pos_sxy = 1, .pos_w = 3, .bi_sxy = 67, .bi_srgb = 3, .bi_w = 4};
    return p;
}

carseg_crf_params carseg_crf_defaults(void) { return crf_default_params(); }

void crf_features_car(const uint8_t *rgb, int W, int H, uint8_t *feat) {
    /* float RGB[..., ::-1] - (104.008, 116.669, 122.675) in float64, then .astype(uint8): the
     * conversion truncates toward zero and keeps the low 8 bits (x86 NumPy) */
    static const double mean_bgr[3] = {104.008, 116.669, 122.675};
    size_t n = (size_t)W * (size_t)H;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            double x = (double)rgb[i * 3 + 2 - c] - mean_bgr[c];
            feat[i * 3 + c] = (uint8_t)((int)x & 255);
        }
}

void carseg_crf_features_car(const uint8_t *rgb, int W, int H, uint8_t *feat) {
    crf_features_car(rgb, W, H, feat);
}

void crf_gaussian_features(int W, int H, float sx, float sy, float *out) {
#pragma omp parallel for schedule(static)
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            float *f = out + ((size_t)y * W + x) * 2;
            f[0] = (float)x / sx;
            f[1] = (float)y / sy;
        }
}

void crf_bilateral_features(int W, int H, float sx, float sy, float sr, float sg, float sb,
                            const uint8_t *im, float *out) {
#pragma omp parallel for schedule(static)
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            size_t i = (size_t)y * W + x;
            float *f = out + i * 5;
            f[0] = (float)x / sx;
            f[1] = (float)y / sy;
            f[2] = (float)im[i * 3 + 0] / sr;
            f[3] = (float)im[i * 3 + 1] / sg;
            f[4] = (float)im[i * 3 + 2] / sb;
        }
}

/* q = softmax(e) per variable (expAndNormalize: subtract the max, exp, divide by the sum); then,
 * when unary is given, e = -unary (the next iteration's starting energy, fused into this pass). */
static void softmax_rows(float *e, float *q, int N, int C, const float *unary) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *x = e + (size_t)i * C;
        float *o = q + (size_t)i * C;
        float mx = x[0];
        for (int c = 1; c < C; c++) mx = x[c] > mx ? x[c] : mx;
        float s = 0;
        for (int c = 0; c < C; c++) {
            o[c] = expf(x[c] - mx);
            s += o[c];
        }
        for (int c = 0; c < C; c++) o[c] = o[c] / s;
        if (unary)
            for (int c = 0; c < C; c++) x[c] = -unary[(size_t)i * C + c];
    }
}

carseg_status crf_inference(const float *unary, int N, int C, const crf_kernel *k, int nk, int iters,
                            float *q) {
    if (N < 1 || C < 1) return set_err(CARSEG_EINVAL, "crf: empty problem (%d variables, %d labels)", N, C);
    if (iters < 0) return set_err(CARSEG_EINVAL, "crf: negative iteration count %d", iters);
    size_t nc;
    if (!cs_mul_ok(&nc, (size_t)N, (size_t)C, sizeof(float)))
        return set_err(CARSEG_EINVAL, "crf: %d x %d labels overflow", N, C);
    nc = (size_t)N * C;

    lattice lat[8];
    float *norm[8] = {0};
    float w[8];
    int nl = 0;
    float *acc = NULL, *work = NULL;
    carseg_status st = CARSEG_OK;
    memset(lat, 0, sizeof lat);
    int kj[8];   /* the kernels in use, in order */
    for (int j = 0; j < nk; j++) {
        if (k[j].w == 0 || iters == 0) continue;
        if (!isfinite(k[j].w)) {
            st = set_err(CARSEG_EINVAL, "crf: kernel %d has weight %g", j, (double)k[j].w);
            goto done;
        }
        if (nl == 8) {
            st = set_err(CARSEG_EINVAL, "crf: more than 8 kernels");
            goto done;
        }
        kj[nl++] = j;
    }
    /* built last to first: the small grid lattice's construction leaves the allocator in a state
     * that slows the bilateral construction after it by ~10 ms (page faults); order-free otherwise */
    for (int l = nl - 1; l >= 0; l--) {
        const int j = kj[l];
        const int gw = k[j].grid_w;
        st = gw > 0 && N % gw == 0 ? lattice_build_grid(&lat[l], k[j].feat, gw, N / gw, k[j].d, 1)
                                   : lattice_build(&lat[l], k[j].feat, N, k[j].d, 1);
        if (st != CARSEG_OK) {
            err_prefix("crf kernel %d", j);
            goto done;
        }
        /* symmetric normalisation: n = 1/sqrt(K·1 + 1e-20), in double as the reference */
        norm[l] = cs_malloc((size_t)N * sizeof(float));
        if (!norm[l]) {
            st = set_err(CARSEG_ENOMEM, "crf: out of memory (%d pixels)", N);
            goto done;
        }
        float *nv = norm[l];
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++) nv[i] = 1.0f;
        if ((st = lattice_filter(&lat[l], nv, nv, 1, 0, NULL)) != CARSEG_OK) goto done;
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++) nv[i] = (float)(1.0 / sqrt((double)nv[i] + 1e-20));
        w[l] = k[j].w;
    }

    size_t wf = 0;
    for (int j = 0; j < nl; j++) {
        size_t f = lattice_work_floats(&lat[j], C);
        wf = f > wf ? f : wf;
    }
    acc = cs_malloc(nc * sizeof(float));   /* (N, C) energies */
    work = wf ? cs_malloc(wf * sizeof(float)) : NULL;
    if (!acc || (wf && !work)) {
        st = set_err(CARSEG_ENOMEM, "crf: out of memory (%d pixels x %d labels)", N, C);
        goto done;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < (int64_t)nc; i++) acc[i] = -unary[i];
    softmax_rows(acc, q, N, C, iters > 0 ? unary : NULL);

    for (int it = 0; it < iters; it++) {
        for (int j = 0; j < nl; j++)   /* Potts: energy -= -w · n ⊙ K(n ⊙ Q) */
            if ((st = lattice_filter_potts(&lat[j], q, norm[j], w[j], acc, C, work)) != CARSEG_OK) goto done;
        softmax_rows(acc, q, N, C, it + 1 < iters ? unary : NULL);
    }

done:
    for (int j = 0; j < nl; j++) {
        lattice_free(&lat[j]);
        cs_free(norm[j]);
    }
    cs_free(acc);
    cs_free(work);
    return st;
}

static carseg_status check_params(const crf_params *p) {
    if (p->iters < 0 || p->iters > 100000)
        return set_err(CARSEG_EINVAL, "crf: iterations %d not in 0..100000", p->iters);
    const float v[6] = {p->pos_sxy, p->pos_w, p->bi_sxy, p->bi_srgb, p->bi_w, 0};
    const char *name[5] = {"pos-sxy", "pos-w", "bi-sxy", "bi-srgb", "bi-w"};
    for (int i = 0; i < 5; i++)
        if (!isfinite(v[i])) return set_err(CARSEG_EINVAL, "crf: %s is not finite", name[i]);
    if (!(p->pos_sxy > 0) || !(p->bi_sxy > 0) || !(p->bi_srgb > 0))
        return set_err(CARSEG_EINVAL, "crf: standard deviations must be > 0 (pos-sxy %g, bi-sxy %g, bi-srgb %g)",
                       (double)p->pos_sxy, (double)p->bi_sxy, (double)p->bi_srgb);
    return CARSEG_OK;
}

carseg_status crf_run(const float *probs, int C, int H, int W, const uint8_t *feat,
                      const crf_params *p, uint16_t *labels, float *q_out) {
    if (H < 1 || W < 1) return set_err(CARSEG_EINVAL, "crf: empty image (%d x %d)", W, H);
    if (C < 1 || C > 65535) return set_err(CARSEG_EINVAL, "crf: label count %d not in 1..65535", C);
    if (!probs) return set_err(CARSEG_EINVAL, "crf: no probabilities");
    crf_params dp = crf_default_params();
    if (!p) p = &dp;
    TRY(check_params(p));
    if (!feat && p->bi_w != 0) return set_err(CARSEG_EINVAL, "crf: the bilateral kernel needs colour features");
    size_t N = (size_t)H * (size_t)W, tot;
    if (!cs_mul_ok(&tot, N, (size_t)C, 5 * sizeof(float)) || N > (size_t)INT32_MAX / 8)
        return set_err(CARSEG_EINVAL, "crf: image %d x %d with %d labels is too large", W, H, C);

    float *u = cs_malloc(N * C * sizeof(float));             /* (N, C) unary */
    float *q = cs_malloc(N * C * sizeof(float));             /* (N, C) marginals */
    float *fg = cs_malloc(N * 2 * sizeof(float));            /* (N, 2) Gaussian features */
    float *fb = feat ? cs_malloc(N * 5 * sizeof(float)) : NULL;   /* (N, 5) bilateral features */
    carseg_status st = CARSEG_OK;
    if (!u || !q || !fg || (feat && !fb)) {
        st = set_err(CARSEG_ENOMEM, "crf: out of memory (%d x %d, %d labels)", W, H, C);
        goto done;
    }
    /* unary_from_softmax: -log(clip(p, 1e-5, 1)) in float32; NaN (which clip keeps) is refused */
    int64_t first_nan = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : first_nan)
    for (int64_t i = 0; i < (int64_t)N; i++)
        for (int c = 0; c < C; c++) {
            float x = probs[(size_t)c * N + i];
            if (isnan(x) && (int64_t)((size_t)c * N + i) < first_nan) first_nan = (int64_t)((size_t)c * N + i);
            x = x < 1e-5f ? 1e-5f : x > 1.0f ? 1.0f : x;
            u[i * C + c] = -logf(x);
        }
    if (first_nan != INT64_MAX) {
        size_t c = (size_t)first_nan / N, i = (size_t)first_nan % N;
        st = set_err(CARSEG_EINVAL, "probability of label %zu at (x %zu, y %zu) is NaN", c, i % (size_t)W,
                     i / (size_t)W);
        goto done;
    }
    crf_gaussian_features(W, H, p->pos_sxy, p->pos_sxy, fg);
    if (fb) crf_bilateral_features(W, H, p->bi_sxy, p->bi_sxy, p->bi_srgb, p->bi_srgb, p->bi_srgb, feat, fb);
    /* the bilateral lattice numbered over pixel tiles (lattice_build_grid: same bits, 3-5 % less
     * time for 3 labels on two threads); the Gaussian one gained nothing measurable from it */
    crf_kernel k[2] = {{2, fg, p->pos_w, 0}, {5, fb, fb ? p->bi_w : 0, W}};
    if ((st = crf_inference(u, (int)N, C, k, 2, p->iters, q)) != CARSEG_OK) goto done;

    if (labels)
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < N; i++) {
            const float *x = q + i * C;
            int best = 0;
            for (int c = 1; c < C; c++)
                if (x[c] > x[best]) best = c;
            labels[i] = (uint16_t)best;
        }
    if (q_out)
#pragma omp parallel for schedule(static)
        for (int c = 0; c < C; c++)
            for (size_t i = 0; i < N; i++) q_out[(size_t)c * N + i] = q[i * C + c];

done:
    cs_free(u);
    cs_free(q);
    cs_free(fg);
    cs_free(fb);
    return st;
}

carseg_status carseg_crf(const float *probs, int C, int H, int W, const uint8_t *feat,
                         const carseg_crf_params *p, uint16_t *labels, float *q) {
    return crf_run(probs, C, H, W, feat, p, labels, q);
}
