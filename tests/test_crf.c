/* test_crf.c — the permutohedral lattice against the exact Gaussian sum, mean-field properties,
 * the reference's outputs (pydensecrf via the fixtures), hostile input and the `carseg crf` CLI. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "crf.h"
#include "image.h"
#include "lattice.h"
#include "util.h"

// ---------------------------------------------------------------------------------------------
// lattice vs brute force

/* Exact symmetric-normalised Gaussian filter: out = D^-1/2 K D^-1/2 in, K_ij = exp(-|fi-fj|²/2)
 * (self term included), D = diag(K 1). In double. */
static void exact_filter(const float *f, int n, int d, const float *in, int vs, double *out) {
    double *k1 = calloc((size_t)n, sizeof *k1);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int c = 0; c < d; c++) {
                double t = (double)f[i * d + c] - f[j * d + c];
                s += t * t;
            }
            k1[i] += exp(-0.5 * s);
        }
    for (int i = 0; i < n; i++) {
        for (int v = 0; v < vs; v++) out[i * vs + v] = 0;
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int c = 0; c < d; c++) {
                double t = (double)f[i * d + c] - f[j * d + c];
                s += t * t;
            }
            double w = exp(-0.5 * s) / sqrt(k1[i] * k1[j]);
            for (int v = 0; v < vs; v++) out[i * vs + v] += w * in[j * vs + v];
        }
    }
    free(k1);
}

/* Lattice version of the same: n ⊙ K(n ⊙ in), n = 1/sqrt(K 1). Returns the worst absolute error
 * against the exact filter and the mean one. */
static void lattice_vs_exact(const float *f, int n, int d, const float *in, int vs, double *maxerr,
                             double *meanerr) {
    lattice L;
    CHECK_OK(lattice_build(&L, f, n, d, 0));
    float *nm = malloc(n * sizeof *nm), *x = malloc((size_t)n * vs * sizeof *x);
    for (int i = 0; i < n; i++) nm[i] = 1;
    CHECK_OK(lattice_filter(&L, nm, nm, 1, 0, NULL));
    for (int i = 0; i < n; i++) nm[i] = (float)(1.0 / sqrt(nm[i] + 1e-20));
    for (int i = 0; i < n; i++)
        for (int v = 0; v < vs; v++) x[i * vs + v] = in[i * vs + v] * nm[i];
    CHECK_OK(lattice_filter(&L, x, x, vs, 0, NULL));
    double *ex = malloc((size_t)n * vs * sizeof *ex);
    exact_filter(f, n, d, in, vs, ex);
    *maxerr = 0;
    *meanerr = 0;
    for (int i = 0; i < n; i++)
        for (int v = 0; v < vs; v++) {
            double e = fabs(x[i * vs + v] * nm[i] - ex[i * vs + v]);
            *maxerr = e > *maxerr ? e : *maxerr;
            *meanerr += e;
        }
    *meanerr /= (double)n * vs;
    free(nm);
    free(x);
    free(ex);
    lattice_free(&L);
}

TEST(crf_lattice_vs_exact_gaussian) {
    /* a 24x20 pixel grid at sxy 1 and 3 (CaR's Gaussian kernel is sxy 1), and random 5-d points
     * like bilateral features; values: smooth and random label distributions in [0, 1] */
    unsigned rs = 7;
    const int W = 24, H = 20, n = W * H, vs = 3;
    float *f = malloc((size_t)n * 5 * sizeof *f), *in = malloc((size_t)n * vs * sizeof *in);
    for (int i = 0; i < n * vs; i++) in[i] = 0.5f + 0.5f * test_randf(&rs);
    double mx, mean;
    const float sxy[2] = {1, 3};
    for (int s = 0; s < 2; s++) {
        crf_gaussian_features(W, H, sxy[s], sxy[s], f);
        lattice_vs_exact(f, n, 2, in, vs, &mx, &mean);
        fprintf(stderr, "  lattice d=2 sxy %g: max |err| %.4f, mean %.4f (values in [0,1])\n", (double)sxy[s], mx, mean);
        CHECK(mx < 0.08 && mean < 0.015);   /* measured 0.040 / 0.0073 (sxy 1) */
    }
    /* bilateral-like: positions /67 would make all points one blob; use /8 and colours /3 spread
     * over ±6 so kernels overlap partially */
    uint8_t *im = malloc((size_t)n * 3);
    for (int i = 0; i < n * 3; i++) im[i] = (uint8_t)(128 + (int)(18 * test_randf(&rs)));
    crf_bilateral_features(W, H, 8, 8, 3, 3, 3, im, f);
    lattice_vs_exact(f, n, 5, in, vs, &mx, &mean);
    fprintf(stderr, "  lattice d=5 (x,y)/8 rgb/3: max |err| %.4f, mean %.4f\n", mx, mean);
    CHECK(mx < 0.4 && mean < 0.08);   /* the lattice is coarser in 5-d: measured 0.29 / 0.054 */
    /* constant input: the normalised filter of a constant is close to the constant */
    for (int i = 0; i < n * vs; i++) in[i] = 0.25f;
    lattice_vs_exact(f, n, 5, in, vs, &mx, &mean);
    CHECK(mx < 0.1);
    free(im);
    free(f);
    free(in);
}

TEST(crf_lattice_basics) {
    /* one point: the filter maps a value to itself times the lattice's self weight; the
     * normalised filter maps it exactly to itself (up to rounding) */
    float f[5] = {0.3f, -1.2f, 4.0f, 2.5f, 0.1f}, v[2] = {2.0f, -1.0f}, one = 1, o[2];
    lattice L;
    CHECK_OK(lattice_build(&L, f, 1, 5, 0));
    CHECK(L.m == 6);
    CHECK_OK(lattice_filter(&L, &one, &one, 1, 0, NULL));
    CHECK_OK(lattice_filter(&L, v, o, 2, 0, NULL));
    CHECK_NEAR(o[0] / one, 2.0, 1e-5);
    CHECK_NEAR(o[1] / one, -1.0, 1e-5);
    float bsum = 0;
    for (int j = 0; j < 6; j++) {
        CHECK(L.bary[j] >= -1e-6f && L.bary[j] <= 1 + 1e-6f);
        bsum += L.bary[j];
    }
    CHECK_NEAR(bsum, 1.0, 1e-5);
    lattice_free(&L);
    /* hostile */
    float bad[2] = {NAN, 0};
    CHECK(lattice_build(&L, bad, 1, 2, 0) == CARSEG_EINVAL);
    CHECK(lattice_build(&L, f, 0, 2, 0) == CARSEG_EINVAL);
    CHECK(lattice_build(&L, f, 1, 0, 0) == CARSEG_EINVAL);
    CHECK(lattice_build(&L, f, 1, LATTICE_MAX_D + 1, 0) == CARSEG_EINVAL);
}

/* Two lattices are the same array for array (vertex numbering included). */
static int lattice_same(const lattice *a, const lattice *b) {
    if (a->d != b->d || a->n != b->n || a->m != b->m) return 0;
    const size_t nc = (size_t)a->n * (a->d + 1), nch = (size_t)a->ch_dir[a->d + 1];
    if (memcmp(a->ch_dir, b->ch_dir, (a->d + 2) * sizeof(int32_t)) ||
        memcmp(a->ch_start, b->ch_start, (nch + 1) * sizeof(int32_t)))
        return 0;
    return !memcmp(a->offset, b->offset, nc * 4) && !memcmp(a->bary, b->bary, nc * 4) &&
           !memcmp(a->ch_v, b->ch_v, (size_t)a->ch_start[nch] * 4) &&
           !memcmp(a->sp_start, b->sp_start, ((size_t)a->m + 1) * 4) && !memcmp(a->sp_pt, b->sp_pt, nc * 4) &&
           !memcmp(a->sp_w, b->sp_w, nc * 4);
}

TEST(crf_lattice_sorted_equals_hash) {
    /* lattice_build (packed keys, radix sort, merge walks for the neighbours, in parallel) builds
     * exactly the lattice of the hash-table construction, padding vertices included, with 1 and 2
     * threads; keys too wide to pack fall back to the hash path */
    unsigned r = 7;
    const int ns[4] = {1, 203, 2000, 2001};
    const float spread[3] = {0.7f, 6.0f, 90.0f};
    int nthr = carseg_get_threads();
    for (int d = 1; d <= 6; d++)
        for (int ni = 0; ni < 4; ni++)
            for (int si = 0; si < 3; si++)
                for (int pad = 0; pad <= 1; pad++) {
                    const int n = ns[ni];
                    float *f = malloc((size_t)n * d * sizeof *f);
                    for (int i = 0; i < n * d; i++) {
                        r = r * 1664525u + 1013904223u;
                        /* integer grids (as the Gaussian kernel's) for si == 0, else random */
                        f[i] = si == 0 ? (float)((i / d) % 37 + (i % d) * ((i / d) / 37)) : spread[si] * ((float)(r >> 8) / 16777216.0f - 0.3f);
                    }
                    lattice a, b;
                    CHECK_OK(lattice_build_hash(&a, f, n, d, pad));
                    for (int t = 1; t <= 4; t++) {   /* threads 1, 2; sorted, then dense when small */
                        carseg_set_threads(1 + (t - 1) % 2);
                        lattice_allow_dense = t > 2;
                        CHECK_OK(lattice_build(&b, f, n, d, pad));
                        CHECK_MSG(lattice_same(&a, &b), "d %d n %d spread %d pad %d threads %d dense %d: lattices differ", d, n, si, pad, 1 + (t - 1) % 2, t > 2);
                        lattice_free(&b);
                    }
                    lattice_allow_dense = 1;
                    carseg_set_threads(nthr);
                    lattice_free(&a);
                    free(f);
                }
    /* wide coordinates (keys beyond 64 packed bits at d = 5): the hash path, same result */
    float big[5 * 50];
    for (int i = 0; i < 5 * 50; i++) big[i] = (float)((i * 7919) % 1000) * 20.0f - 10000.0f;
    lattice a, b;
    CHECK_OK(lattice_build_hash(&a, big, 50, 5, 1));
    CHECK_OK(lattice_build(&b, big, 50, 5, 1));
    CHECK(lattice_same(&a, &b));
    CHECK(a.m > 0);
    lattice_free(&a);
    lattice_free(&b);
    /* beyond 2^22 after elevation the float arithmetic is no longer exact: refused, both paths */
    big[7] = 2e8f;
    CHECK(lattice_build(&b, big, 50, 5, 1) == CARSEG_EINVAL);
    CHECK(lattice_build_hash(&b, big, 50, 5, 1) == CARSEG_EINVAL);
}

TEST(crf_lattice_gaussian_grid) {
    /* the Gaussian kernel's lattice (x/sxy, y/sxy on the pixel grid) takes the direct-address
     * construction; it equals the hash-table and the sorted constructions, odd sizes included */
    const int wh[7][2] = {{1, 1}, {2, 1}, {1, 7}, {7, 5}, {33, 17}, {64, 48}, {125, 91}};
    const float sxy[2] = {1.0f, 3.0f};
    int nthr = carseg_get_threads();
    for (int s = 0; s < 7; s++)
        for (int k = 0; k < 2; k++) {
            const int W = wh[s][0], H = wh[s][1], n = W * H;
            float *f = malloc((size_t)n * 2 * sizeof *f);
            crf_gaussian_features(W, H, sxy[k], sxy[k], f);
            lattice a, b, c;
            CHECK_OK(lattice_build_hash(&a, f, n, 2, 1));
            lattice_allow_dense = 0;
            CHECK_OK(lattice_build(&b, f, n, 2, 1));
            lattice_allow_dense = 1;
            for (int t = 1; t <= 2; t++) {
                carseg_set_threads(t);
                CHECK_OK(lattice_build(&c, f, n, 2, 1));
                CHECK_MSG(lattice_same(&a, &c) && lattice_same(&b, &c), "%d x %d sxy %g threads %d: lattices differ",
                          W, H, (double)sxy[k], t);
                lattice_free(&c);
            }
            carseg_set_threads(nthr);
            lattice_free(&a);
            lattice_free(&b);
            free(f);
        }
}

TEST(crf_lattice_grid_numbering) {
    /* lattice_build_grid numbers the vertices over pixel tiles: the same lattice up to that
     * permutation (same corners, weights and vertex count; a one-to-one map between the ids), and
     * filtering gives the same bits, for the bilateral-like d = 5 (sorted construction) and the
     * Gaussian grid (direct-address construction), padded or not, 1 and 2 threads */
    const int wh[6][2] = {{1, 1}, {7, 5}, {33, 17}, {64, 64}, {125, 91}, {97, 33}};
    int nthr = carseg_get_threads();
    unsigned r = 11;
    for (int s = 0; s < 6; s++)
        for (int kind = 0; kind < 2; kind++)
            for (int pad = 0; pad <= 1; pad++) {
                const int W = wh[s][0], H = wh[s][1], n = W * H, d = kind ? 5 : 2;
                float *f = malloc((size_t)n * d * sizeof *f);
                uint8_t *im = malloc((size_t)n * 3);
                for (int i = 0; i < n * 3; i++) im[i] = (uint8_t)((i / 3 % W) * 5 + (i / 3 / W) * 3 + ((unsigned)(16 + 15 * test_randf(&r)) & 31));
                if (kind) crf_bilateral_features(W, H, 9, 9, 3, 3, 3, im, f);
                else crf_gaussian_features(W, H, 1, 1, f);
                lattice a, b;
                CHECK_OK(lattice_build(&a, f, n, d, pad));
                const size_t nc = (size_t)n * (d + 1);
                int32_t *map = malloc(((size_t)a.m + 1) * sizeof *map);
                for (int t = 1; t <= 2; t++) {
                    carseg_set_threads(t);
                    CHECK_OK(lattice_build_grid(&b, f, W, H, d, pad));
                    CHECK(b.m == a.m && b.n == a.n && b.ch_start[b.ch_dir[d + 1]] == a.ch_start[a.ch_dir[d + 1]]);
                    CHECK(!memcmp(a.bary, b.bary, nc * sizeof(float)));
                    for (int v = 0; v <= a.m; v++) map[v] = -1;
                    int bij = 1, moved = 0;
                    for (size_t c = 0; c < nc && bij; c++) {
                        const int32_t x = a.offset[c], y = b.offset[c];
                        if (map[x] < 0) map[x] = y;
                        bij &= map[x] == y;
                        moved |= x != y;
                    }
                    CHECK_MSG(bij, "%d x %d d %d: the numberings are not one-to-one", W, H, d);
                    /* tiles of 32 pixels change the order once a row is wider than a tile */
                    if (W > LATTICE_TILE && H > 1) CHECK_MSG(moved, "%d x %d d %d: numbering unchanged", W, H, d);
                    for (int vs = 1; vs <= 21; vs += 10) {
                        float *in = malloc((size_t)n * vs * 4), *o1 = malloc((size_t)n * vs * 4);
                        float *o2 = malloc((size_t)n * vs * 4), *nrm = malloc((size_t)n * 4);
                        for (int i = 0; i < n * vs; i++) in[i] = test_randf(&r);
                        for (int i = 0; i < n; i++) nrm[i] = 0.5f + 0.25f * test_randf(&r);
                        CHECK_OK(lattice_filter(&a, in, o1, vs, 0, NULL));
                        CHECK_OK(lattice_filter(&b, in, o2, vs, 0, NULL));
                        CHECK_MSG(!memcmp(o1, o2, (size_t)n * vs * 4), "%d x %d d %d vs %d: filters differ", W, H, d, vs);
                        for (int i = 0; i < n * vs; i++) o1[i] = o2[i] = test_randf(&r);
                        memcpy(o2, o1, (size_t)n * vs * 4);
                        CHECK_OK(lattice_filter_potts(&a, in, nrm, 3, o1, vs, NULL));
                        CHECK_OK(lattice_filter_potts(&b, in, nrm, 3, o2, vs, NULL));
                        CHECK_MSG(!memcmp(o1, o2, (size_t)n * vs * 4), "%d x %d d %d vs %d: Potts messages differ", W, H, d, vs);
                        free(in), free(o1), free(o2), free(nrm);
                    }
                    lattice_free(&b);
                }
                carseg_set_threads(nthr);
                lattice_free(&a);
                free(map), free(f), free(im);
            }
    lattice b;
    CHECK(lattice_build_grid(&b, NULL, 0, 5, 2, 1) == CARSEG_EINVAL);
    CHECK(lattice_build_grid(&b, NULL, 70000, 70000, 2, 1) == CARSEG_EINVAL);
}

TEST(crf_lattice_widths_agree) {
    /* the kernels instantiated for constant widths 3..8 give exactly the lanes of the runtime-width
     * kernels (lanes are independent above width 2), for the plain filter and the Potts message */
    const int n = 1001, d = 5, W = 13;
    float *f = malloc((size_t)n * d * sizeof *f), *v = malloc((size_t)n * W * sizeof *v);
    float *nm = malloc(n * sizeof *nm), *ow = malloc((size_t)n * W * sizeof *ow), *o = malloc((size_t)n * W * sizeof *o);
    float *x = malloc((size_t)n * W * sizeof *x), *pw = malloc((size_t)n * W * sizeof *pw), *pn = malloc((size_t)n * W * sizeof *pn);
    unsigned r = 99;
    for (int i = 0; i < n * d; i++) f[i] = (float)((r = r * 1664525u + 1013904223u) >> 8) / 16777216.0f * 6.0f;
    for (int i = 0; i < n * W; i++) v[i] = (float)((r = r * 1664525u + 1013904223u) >> 8) / 16777216.0f;
    for (int i = 0; i < n; i++) nm[i] = 0.2f + (float)(i % 7) * 0.1f;
    lattice L;
    REQUIRE(lattice_build(&L, f, n, d, 1) == CARSEG_OK);
    CHECK_OK(lattice_filter(&L, v, ow, W, 0, NULL));
    for (int i = 0; i < n * W; i++) pw[i] = 0.5f;
    CHECK_OK(lattice_filter_potts(&L, v, nm, 3.0f, pw, W, NULL));
    for (int w = 3; w <= 8; w++) {
        for (int i = 0; i < n; i++) memcpy(x + (size_t)i * w, v + (size_t)i * W, w * sizeof *x);
        CHECK_OK(lattice_filter(&L, x, o, w, 0, NULL));
        for (int i = 0; i < n * w; i++) pn[i] = 0.5f;
        CHECK_OK(lattice_filter_potts(&L, x, nm, 3.0f, pn, w, NULL));
        size_t bad = 0;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < w; k++)
                bad += memcmp(o + (size_t)i * w + k, ow + (size_t)i * W + k, 4) != 0 ||
                       memcmp(pn + (size_t)i * w + k, pw + (size_t)i * W + k, 4) != 0;
        CHECK_MSG(bad == 0, "width %d: %zu values differ from the runtime-width kernels", w, bad);
    }
    lattice_free(&L);
    free(f), free(v), free(nm), free(ow), free(o), free(x), free(pw), free(pn);
}

// ---------------------------------------------------------------------------------------------
// mean field

TEST(crf_zero_weights_is_softmax) {
    const int C = 4, H = 9, W = 11;
    size_t n = (size_t)H * W;
    unsigned rs = 3;
    float *p = malloc(n * C * sizeof *p), *q = malloc(n * C * sizeof *q);
    uint8_t *feat = malloc(n * 3);
    for (size_t i = 0; i < n * C; i++) p[i] = 0.5f + 0.5f * test_randf(&rs);
    p[0] = 0;          /* clipped to 1e-5 */
    p[n] = 3.0f;       /* clipped to 1 */
    for (size_t i = 0; i < n * 3; i++) feat[i] = (uint8_t)(i * 37);
    crf_params prm = crf_default_params();
    prm.pos_w = 0;
    prm.bi_w = 0;
    uint16_t *lab = malloc(n * sizeof *lab);
    CHECK_OK(crf_run(p, C, H, W, feat, &prm, lab, q));
    double worst = 0;
    int labbad = 0;
    for (size_t i = 0; i < n; i++) {
        double s = 0, e[4];
        int best = 0;
        for (int c = 0; c < C; c++) {
            double x = p[c * n + i];
            x = x < 1e-5 ? 1e-5 : x > 1 ? 1 : x;
            e[c] = x;
            s += x;
            if (x > e[best]) best = c;
        }
        for (int c = 0; c < C; c++) {
            double d = fabs(q[c * n + i] - e[c] / s);
            worst = d > worst ? d : worst;
        }
        labbad += lab[i] != best;
    }
    CHECK(worst < 1e-6);
    CHECK(labbad == 0);
    /* iters = 0 gives the same with any weights */
    float *q0 = malloc(n * C * sizeof *q0);
    prm = crf_default_params();
    prm.iters = 0;
    CHECK_OK(crf_run(p, C, H, W, feat, &prm, NULL, q0));
    CHECK_CLOSE("q iters=0", q0, q, n * C, 0, 1e-6);
    free(q0);
    free(p);
    free(q);
    free(feat);
    free(lab);
}

TEST(crf_cleans_noisy_two_regions) {
    /* left half dark red, right half light blue (+ small pixel noise); probabilities 0.7/0.3 for
     * the true label, with 25% of the pixels flipped at random */
    const int W = 80, H = 60, C = 2;
    size_t n = (size_t)W * H;
    unsigned rs = 11;
    float *p = malloc(n * C * sizeof *p);
    uint8_t *feat = malloc(n * 3);
    uint16_t *lab = malloc(n * sizeof *lab);
    int noisy_wrong = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            size_t i = (size_t)y * W + x;
            int truth = x >= W / 2;
            uint8_t col[2][3] = {{150, 30, 30}, {90, 160, 230}};
            for (int c = 0; c < 3; c++) feat[i * 3 + c] = (uint8_t)(col[truth][c] + (int)(4 * test_randf(&rs)));
            int flip = test_randf(&rs) < -0.5f;   /* 25% */
            int said = flip ? 1 - truth : truth;
            p[(size_t)said * n + i] = 0.7f;
            p[(size_t)(1 - said) * n + i] = 0.3f;
            noisy_wrong += said != truth;
        }
    crf_params prm = crf_default_params();
    CHECK_OK(crf_run(p, C, H, W, feat, &prm, lab, NULL));
    int wrong = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) wrong += lab[(size_t)y * W + x] != (x >= W / 2);
    fprintf(stderr, "  noisy input: %d wrong pixels of %zu; after the CRF: %d\n", noisy_wrong, n, wrong);
    CHECK(noisy_wrong > (int)n / 6);
    CHECK(wrong <= (int)n / 200);
    free(p);
    free(feat);
    free(lab);
}

TEST(crf_features_car_wraps) {
    /* RGB -> BGR minus (104.008, 116.669, 122.675), trunc, mod 256 (NumPy's uint8 cast) */
    uint8_t rgb[6] = {0, 0, 0, 255, 120, 104}, f[6];
    crf_features_car(rgb, 2, 1, f);
    CHECK(f[0] == (uint8_t)(256 - 104) && f[1] == (uint8_t)(256 - 116) && f[2] == (uint8_t)(256 - 122));
    /* B = 104 - 104.008 = -0.008 -> trunc 0; G = 120 - 116.669 = 3.33 -> 3; R = 255 - 122.675 -> 132 */
    CHECK(f[3] == 0 && f[4] == 3 && f[5] == 132);
}

TEST(crf_features_car_match_fixtures) {
    /* CaR's crf_image_u8.npy (the array it handed to addPairwiseBilateral) from input.png */
    const char *cases[3] = {"chelsea_voc", "coffee300_voc", "astronaut_cocolike"};
    for (int c = 0; c < 3; c++) {
        char rel[256];
        snprintf(rel, sizeof rel, "fixtures/car/%s/input.png", cases[c]);
        const char *png = shared_path(rel);
        if (!png || !file_exists(png)) SKIP("%s not found (set CARSEG_SHARED)", rel);
        snprintf(rel, sizeof rel, "fixtures/car/%s/crf_image_u8.npy", cases[c]);
        const char *ref = shared_path(rel);
        image_u8 im;
        npy_array a;
        CHECK_OK(image_load_rgb(png, &im));
        CHECK_OK(npy_read(ref, &a));
        REQUIRE(a.dtype == NPY_U8 && a.ndim == 3 && a.shape[0] == im.h && a.shape[1] == im.w && a.shape[2] == 3);
        uint8_t *f = malloc((size_t)im.w * im.h * 3);
        crf_features_car(im.px, im.w, im.h, f);
        size_t diff = 0;
        for (size_t i = 0; i < a.count; i++) diff += f[i] != ((uint8_t *)a.data)[i];
        CHECK_MSG(diff == 0, "%s: %zu feature bytes differ", cases[c], diff);
        free(f);
        npy_free(&a);
        image_free(&im);
    }
}

TEST(crf_hostile_arguments) {
    float p[6] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    uint8_t feat[9] = {0};
    uint16_t lab[3];
    crf_params prm = crf_default_params();
    CHECK(crf_run(p, 2, 0, 3, feat, &prm, lab, NULL) == CARSEG_EINVAL);
    CHECK(crf_run(p, 2, 1, 0, feat, &prm, lab, NULL) == CARSEG_EINVAL);
    CHECK(crf_run(p, 0, 1, 3, feat, &prm, lab, NULL) == CARSEG_EINVAL);
    p[4] = NAN;
    CHECK(crf_run(p, 2, 1, 3, feat, &prm, lab, NULL) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "NaN") && strstr(carseg_last_error(), "label 1"));
    p[4] = 0.5f;
    prm.bi_srgb = 0;
    CHECK(crf_run(p, 2, 1, 3, feat, &prm, lab, NULL) == CARSEG_EINVAL);
    prm = crf_default_params();
    prm.pos_w = INFINITY;
    CHECK(crf_run(p, 2, 1, 3, feat, &prm, lab, NULL) == CARSEG_EINVAL);
    prm = crf_default_params();
    prm.iters = -1;
    CHECK(crf_run(p, 2, 1, 3, feat, &prm, lab, NULL) == CARSEG_EINVAL);
    CHECK(crf_run(p, 2, 1, 3, NULL, NULL, lab, NULL) == CARSEG_EINVAL);   /* bilateral needs features */
    /* a single label and a single pixel work */
    float q[1];
    CHECK_OK(crf_run(p, 1, 1, 1, feat, NULL, lab, q));
    CHECK(lab[0] == 0 && q[0] == 1.0f);
}

// ---------------------------------------------------------------------------------------------
// the reference's outputs

typedef struct {
    int C, H, W;
    float *probs, *q;
    uint8_t *feat;
} fixture;

static int load_fixture(const char *dir, const char *fn, const char *pn, const char *qn, fixture *fx) {
    char rel[256];
    npy_array a[3];
    const char *names[3] = {fn, pn, qn};
    for (int i = 0; i < 3; i++) {
        snprintf(rel, sizeof rel, "%s/%s", dir, names[i]);
        const char *path = shared_path(rel);
        if (!path || !file_exists(path)) {
            for (int k = 0; k < i; k++) npy_free(&a[k]);
            return 0;
        }
        if (npy_read(path, &a[i]) != CARSEG_OK) {
            CHECK_MSG(0, "%s: %s", path, carseg_last_error());
            for (int k = 0; k < i; k++) npy_free(&a[k]);
            return 0;
        }
    }
    int ok = a[0].dtype == NPY_U8 && a[0].ndim == 3 && a[1].dtype == NPY_F32 && a[1].ndim == 3 &&
             a[2].dtype == NPY_F32 && a[2].count == a[1].count && a[0].shape[0] == a[1].shape[1] &&
             a[0].shape[1] == a[1].shape[2];
    CHECK_MSG(ok, "%s: unexpected fixture shapes", dir);
    if (!ok) {
        for (int k = 0; k < 3; k++) npy_free(&a[k]);
        return 0;
    }
    fx->C = (int)a[1].shape[0];
    fx->H = (int)a[1].shape[1];
    fx->W = (int)a[1].shape[2];
    fx->feat = a[0].data;
    fx->probs = a[1].data;
    fx->q = a[2].data;
    return 1;
}

/* Runs the CRF on a fixture; returns the fraction of pixels whose label differs from the
 * reference's argmax and checks the marginals within 1e-3. labels_out: optional copy. */
static double run_fixture(const fixture *fx, const char *name, uint16_t **labels_out) {
    size_t n = (size_t)fx->H * fx->W;
    uint16_t *lab = malloc(n * sizeof *lab);
    float *q = malloc(n * fx->C * sizeof *q);
    crf_params prm = crf_default_params();
    double t = now_ms();
    CHECK_OK(crf_run(fx->probs, fx->C, fx->H, fx->W, fx->feat, &prm, lab, q));
    t = now_ms() - t;
    double mx = 0;
    for (size_t i = 0; i < n * fx->C; i++) {
        double e = fabs(q[i] - fx->q[i]);
        mx = e > mx ? e : mx;
    }
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        int b = 0;
        for (int c = 1; c < fx->C; c++)
            if (fx->q[c * n + i] > fx->q[b * n + i]) b = c;
        bad += lab[i] != b;
    }
    fprintf(stderr, "  %s (%dx%d, %d labels): max |q - ref| %.2g, %zu labels differ, %.0f ms\n", name,
            fx->W, fx->H, fx->C, mx, bad, t);
    CHECK_MSG(mx <= 1e-3, "%s: marginals differ by %g", name, mx);
    free(q);
    if (labels_out) *labels_out = lab;
    else free(lab);
    return (double)bad / n;
}

static void free_fixture(fixture *fx) {
    free(fx->feat);
    free(fx->probs);
    free(fx->q);
}

TEST(crf_matches_pydensecrf) {
    const char *cases[2] = {"fixtures/crf/voc8_3", "fixtures/crf/voc120_21"};
    for (int c = 0; c < 2; c++) {
        fixture fx;
        if (!load_fixture(cases[c], "features.npy", "probs.npy", "q.npy", &fx))
            SKIP("%s not found (set CARSEG_SHARED)", cases[c]);
        uint16_t *lab;
        double bad = run_fixture(&fx, cases[c], &lab);
        CHECK(bad <= 0.001);
        /* labels.npy is the reference's argmax too */
        char rel[256];
        snprintf(rel, sizeof rel, "%s/labels.npy", cases[c]);
        npy_array L;
        const char *path = shared_path(rel);
        if (path && npy_read(path, &L) == CARSEG_OK) {
            size_t n = (size_t)fx.H * fx.W, diff = 0;
            CHECK(L.count == n && L.dtype == NPY_I64);
            if (L.count == n && L.dtype == NPY_I64)
                for (size_t i = 0; i < n; i++) diff += ((int64_t *)L.data)[i] != lab[i];
            CHECK(diff <= n / 1000);
            npy_free(&L);
        }
        free(lab);
        free_fixture(&fx);
    }
}

TEST(crf_matches_car_pipeline) {
    /* CaR's own CRF inputs and outputs from the pipeline fixtures; label_map.npy assigns class ids
     * to the CRF's argmax (0 = background), so it must be a function of our labels */
    const char *cases[3] = {"fixtures/car/chelsea_voc", "fixtures/car/coffee300_voc",
                            "fixtures/car/astronaut_cocolike"};
    for (int c = 0; c < 3; c++) {
        fixture fx;
        if (!load_fixture(cases[c], "crf_image_u8.npy", "crf_probs_in.npy", "crf_q.npy", &fx))
            SKIP("%s not found (set CARSEG_SHARED)", cases[c]);
        uint16_t *lab;
        double bad = run_fixture(&fx, cases[c], &lab);
        CHECK(bad <= 0.001);
        char rel[256];
        snprintf(rel, sizeof rel, "%s/label_map.npy", cases[c]);
        const char *path = shared_path(rel);
        npy_array L;
        if (path && npy_read(path, &L) == CARSEG_OK) {
            size_t n = (size_t)fx.H * fx.W, incons = 0;
            REQUIRE(L.count == n && L.dtype == NPY_I32);
            const int32_t *lm = L.data;
            int32_t *cls = malloc(fx.C * sizeof *cls);
            for (int k = 0; k < fx.C; k++) cls[k] = -1;
            for (size_t i = 0; i < n; i++) {
                if (cls[lab[i]] < 0) cls[lab[i]] = lm[i];
                incons += cls[lab[i]] != lm[i] || ((lab[i] == 0) != (lm[i] == 0));
            }
            CHECK_MSG(incons <= n / 1000, "%s: %zu pixels of label_map disagree", cases[c], incons);
            free(cls);
            npy_free(&L);
        }
        free(lab);
        free_fixture(&fx);
    }
}

// ---------------------------------------------------------------------------------------------
// CLI

static int run_cli(const char *args, const char *errfile) {
    const char *bin = getenv("CARSEG_BIN");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' crf %s 2>'%s' >/dev/null", bin, args, errfile);
    return test_run(cmd);
}

static int file_contains(const char *path, const char *needle) {
    uint8_t *buf;
    size_t len;
    if (read_file(path, &buf, &len) != CARSEG_OK) return 0;
    int r = strstr((char *)buf, needle) != NULL;
    free(buf);
    return r;
}

TEST(crf_cli_end_to_end) {
    if (!getenv("CARSEG_BIN")) SKIP("CARSEG_BIN not set (run through make test)");
    const char *dir = test_tmpdir();
    char fp[512], pp[512], lp[512], qp[512], err[512], args[3000];
    snprintf(fp, sizeof fp, "%s/feat.npy", dir);
    snprintf(pp, sizeof pp, "%s/probs.npy", dir);
    snprintf(lp, sizeof lp, "%s/labels.npy", dir);
    snprintf(qp, sizeof qp, "%s/q.npy", dir);
    snprintf(err, sizeof err, "%s/err.txt", dir);
    const int C = 3, H = 30, W = 40;
    size_t n = (size_t)H * W;
    unsigned rs = 5;
    float *p = malloc(n * C * sizeof *p);
    uint8_t *feat = malloc(n * 3);
    for (size_t i = 0; i < n * C; i++) p[i] = 0.5f + 0.5f * test_randf(&rs);
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) feat[i * 3 + c] = (uint8_t)((i % W) < 20 ? 40 + 10 * c : 200 - 30 * c);
    int64_t fs[3] = {H, W, 3}, ps[3] = {C, H, W};
    CHECK_OK(npy_write(fp, NPY_U8, feat, 3, fs));
    CHECK_OK(npy_write(pp, NPY_F32, p, 3, ps));

    snprintf(args, sizeof args, "--features '%s' --probs '%s' --out-labels '%s' --out-marginals '%s' --iters 5 --bi-w 5",
             fp, pp, lp, qp);
    CHECK(run_cli(args, err) == 0);
    /* the library with the same parameters */
    uint16_t *lab = malloc(n * sizeof *lab);
    float *q = malloc(n * C * sizeof *q);
    crf_params prm = crf_default_params();
    prm.iters = 5;
    prm.bi_w = 5;
    CHECK_OK(crf_run(p, C, H, W, feat, &prm, lab, q));
    npy_array L, Q;
    CHECK_OK(npy_read(lp, &L));
    CHECK_OK(npy_read(qp, &Q));
    REQUIRE(L.dtype == NPY_I32 && L.ndim == 2 && L.shape[0] == H && L.shape[1] == W);
    REQUIRE(Q.dtype == NPY_F32 && Q.ndim == 3 && Q.shape[0] == C && Q.count == n * C);
    int same = 1;
    for (size_t i = 0; i < n; i++) same &= ((int32_t *)L.data)[i] == lab[i];
    CHECK(same);
    CHECK_CLOSE("cli marginals", (float *)Q.data, q, n * C, 0, 0);
    npy_free(&L);
    npy_free(&Q);
    CHECK(run_cli("--help", err) == 0);

    /* PNG in and out: features as an RGB PNG give the same result; labels as a palette PNG */
    char fpng[512], lpng[512];
    snprintf(fpng, sizeof fpng, "%s/feat.png", dir);
    snprintf(lpng, sizeof lpng, "%s/labels.png", dir);
    CHECK_OK(image_save_png_rgb(fpng, feat, W, H));
    snprintf(args, sizeof args, "--features '%s' --probs '%s' --out-labels '%s' --iters 5 --bi-w 5", fpng, pp, lpng);
    CHECK(run_cli(args, err) == 0);
    image_u8 li;
    CHECK_OK(image_load_indexed(lpng, &li));
    REQUIRE(li.w == W && li.h == H && li.c == 1);
    same = 1;
    for (size_t i = 0; i < n; i++) same &= li.px[i] == lab[i];
    CHECK(same);
    image_free(&li);
    /* more than 256 labels: a 16-bit PNG */
    {
        const int C2 = 300, H2 = 4, W2 = 5;
        size_t n2 = (size_t)H2 * W2;
        float *p2 = malloc(n2 * C2 * sizeof *p2);
        for (size_t i = 0; i < n2 * C2; i++) p2[i] = 0.01f;
        for (size_t i = 0; i < n2; i++) p2[(size_t)(290 - i) * n2 + i] = 0.9f;
        int64_t ps2[3] = {C2, H2, W2}, fs3[3] = {H2, W2, 3};
        char pp2[512], fp2[512];
        snprintf(pp2, sizeof pp2, "%s/p300.npy", dir);
        snprintf(fp2, sizeof fp2, "%s/f300.npy", dir);
        CHECK_OK(npy_write(pp2, NPY_F32, p2, 3, ps2));
        CHECK_OK(npy_write(fp2, NPY_U8, feat, 3, fs3));
        snprintf(args, sizeof args, "--features '%s' --probs '%s' --out-labels '%s' --iters 2", fp2, pp2, lpng);
        CHECK(run_cli(args, err) == 0);
        int w16, h16;
        uint16_t *l16 = NULL;
        CHECK_OK(image_load_labels16(lpng, &w16, &h16, &l16));
        if (l16 && w16 == W2 && h16 == H2)
            for (size_t i = 0; i < n2; i++) CHECK(l16[i] == 290 - i);
        free(l16);
        free(p2);
    }

    /* CaR's own CRF step from its input image (--car-features) */
    const char *cin = shared_path("fixtures/car/coffee300_voc/input.png");
    const char *cpr = shared_path("fixtures/car/coffee300_voc/crf_probs_in.npy");
    const char *cq = shared_path("fixtures/car/coffee300_voc/crf_q.npy");
    if (cin && file_exists(cin) && file_exists(cpr) && file_exists(cq)) {
        snprintf(args, sizeof args, "--features '%s' --car-features --probs '%s' --out-labels '%s' --out-marginals '%s'",
                 cin, cpr, lp, qp);
        CHECK(run_cli(args, err) == 0);
        npy_array a, b;
        CHECK_OK(npy_read(qp, &a));
        CHECK_OK(npy_read(cq, &b));
        if (a.count == b.count && a.dtype == NPY_F32 && b.dtype == NPY_F32)
            CHECK_CLOSE("car marginals via the CLI", (float *)a.data, (float *)b.data, a.count, 0, 1e-3);
        else
            CHECK(0);
        npy_free(&a);
        npy_free(&b);
    }

    /* hostile input: error naming the file, non-zero exit, no output written */
    char bad[512], lp2[512], qp2[512];
    snprintf(lp2, sizeof lp2, "%s/l2.npy", dir);
    snprintf(qp2, sizeof qp2, "%s/q2.npy", dir);
    struct {
        const char *what;
        npy_dtype dt;
        int nd;
        int64_t shape[3];
        int nan;
    } cases[] = {
        {"mismatch", NPY_F32, 3, {C, H, W + 1}, 0},
        {"nan", NPY_F32, 3, {C, H, W}, 1},
        {"zero", NPY_F32, 3, {0, H, W}, 0},
        {"u8", NPY_U8, 3, {C, H, W}, 0},
        {"ndim", NPY_F32, 2, {H, W, 0}, 0},
    };
    float *pb = calloc(n * C + C * H, sizeof *pb);
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        snprintf(bad, sizeof bad, "%s/bad_%s.npy", dir, cases[k].what);
        memcpy(pb, p, n * C * sizeof *p);
        if (cases[k].nan) pb[n + 17] = NAN;
        CHECK_OK(npy_write(bad, cases[k].dt, pb, cases[k].nd, cases[k].shape));
        snprintf(args, sizeof args, "--features '%s' --probs '%s' --out-labels '%s' --out-marginals '%s'", fp, bad,
                 lp2, qp2);
        CHECK_MSG(run_cli(args, err) == 1, "case %s", cases[k].what);
        CHECK_MSG(file_contains(err, bad), "case %s: error does not name %s", cases[k].what, bad);
        CHECK(!file_exists(lp2) && !file_exists(qp2));
    }
    /* features: wrong dtype / shape, truncated file, missing file */
    int64_t fs2[3] = {H, W, 4};
    snprintf(bad, sizeof bad, "%s/bad_feat.npy", dir);
    uint8_t *feat4 = calloc(n * 4, 1);
    CHECK_OK(npy_write(bad, NPY_U8, feat4, 3, fs2));
    free(feat4);
    snprintf(args, sizeof args, "--features '%s' --probs '%s' --out-labels '%s'", bad, pp, lp2);
    CHECK(run_cli(args, err) == 1 && file_contains(err, bad));
    CHECK_OK(write_file_atomic(bad, "\x93NUMPY\x01\x00", 8));
    CHECK(run_cli(args, err) == 1 && file_contains(err, bad));
    snprintf(args, sizeof args, "--features '%s/missing.npy' --probs '%s' --out-labels '%s'", dir, pp, lp2);
    CHECK(run_cli(args, err) == 1 && file_contains(err, "missing.npy"));
    CHECK(!file_exists(lp2));
    /* unwritable output */
    snprintf(args, sizeof args, "--features '%s' --probs '%s' --out-labels '%s/nodir/l.npy' --out-marginals '%s'",
             fp, pp, dir, qp2);
    CHECK(run_cli(args, err) == 1 && file_contains(err, "nodir"));
    CHECK(!file_exists(qp2));
    /* bad options */
    snprintf(args, sizeof args, "--features '%s' --probs '%s' --out-labels '%s' --bi-srgb 0", fp, pp, lp2);
    CHECK(run_cli(args, err) == 1 && !file_exists(lp2));
    snprintf(args, sizeof args, "--features '%s' --probs '%s'", fp, pp);
    CHECK(run_cli(args, err) == 2);
    free(pb);
    free(p);
    free(feat);
    free(lab);
    free(q);
}

/* The CRF gives the same marginals and labels, bit for bit, at any thread count: every value is
 * one thread's (splat per vertex, blur per chain, slice per pixel; the chunks only say who), and
 * the lattice is the same (crf_lattice_sorted_equals_hash checks that at 1 and 2 threads).
 * A 200x150 crop of the fixture images (VOC, 3 labels and 21 labels), 3 iterations. */
TEST(crf_thread_count_invariant) {
    const char *cases[2] = {"fixtures/crf/voc8_3", "fixtures/crf/voc120_21"};
    static const int counts[] = TEST_THREAD_COUNTS;
    enum { NC = sizeof counts / sizeof *counts };
    int nthr = carseg_get_threads();
    for (int c = 0; c < 2; c++) {
        fixture fx;
        if (!load_fixture(cases[c], "features.npy", "probs.npy", "q.npy", &fx))
            SKIP("%s not found (set CARSEG_SHARED)", cases[c]);
        /* the top-left 200 x 150 pixels: features (H, W, 3), probabilities (C, H, W) */
        int W = fx.W < 200 ? fx.W : 200, H = fx.H < 150 ? fx.H : 150;
        size_t n = (size_t)H * W;
        uint8_t *feat = malloc(n * 3);
        float *probs = malloc(n * fx.C * sizeof(float));
        for (int y = 0; y < H; y++) {
            memcpy(feat + (size_t)y * W * 3, fx.feat + (size_t)y * fx.W * 3, (size_t)W * 3);
            for (int k = 0; k < fx.C; k++)
                memcpy(probs + ((size_t)k * H + y) * W, fx.probs + ((size_t)k * fx.H + y) * fx.W,
                       (size_t)W * sizeof(float));
        }
        crf_params prm = crf_default_params();
        prm.iters = 3;
        uint16_t *lab[NC];
        float *q[NC];
        for (int t = 0; t < NC; t++) {
            carseg_set_threads(counts[t]);
            lab[t] = malloc(n * sizeof(uint16_t)), q[t] = malloc(n * fx.C * sizeof(float));
            CHECK_OK(crf_run(probs, fx.C, H, W, feat, &prm, lab[t], q[t]));
        }
        carseg_set_threads(nthr);
        for (int t = 1; t < NC; t++) {
            CHECK_MSG(!memcmp(q[0], q[t], n * fx.C * sizeof(float)),
                      "%s: marginals of 1 and %d threads differ", cases[c], counts[t]);
            CHECK_MSG(!memcmp(lab[0], lab[t], n * sizeof(uint16_t)),
                      "%s: labels of 1 and %d threads differ", cases[c], counts[t]);
        }
        for (int t = 0; t < NC; t++) free(lab[t]), free(q[t]);
        free(feat), free(probs);
        free_fixture(&fx);
    }
}
