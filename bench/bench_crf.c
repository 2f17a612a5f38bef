/* bench_crf.c — speed of the dense CRF (crf_run) on a 500×375 image, 10 iterations, CaR's
 * parameters, with 3 and 21 labels, plus how time grows with image size and label count.
 * Colour features: the voc8_3 fixture's when ../shared is found, else a synthetic image.
 * Usage: build/bench/bench_crf [threads (default 2)] [repeats (default 3)] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crf.h"
#include "lattice.h"
#include "util.h"

static double cpu_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static unsigned rng = 12345;
static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / 16777216.0f;
}

/* feat (H, W, 3): tiled from the fixture's features or a synthetic blobby image */
static void make_feat(uint8_t *feat, int W, int H, const uint8_t *src, int sw, int sh) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) {
                uint8_t v;
                if (src) v = src[(((size_t)(y % sh)) * sw + (x % sw)) * 3 + c];
                else v = (uint8_t)(((x / 40 + y / 30 + c) % 5) * 50 + (x * 7 + y * 3) % 13);
                feat[((size_t)y * W + x) * 3 + c] = v;
            }
}

/* probs (C, H, W): smooth blobs per label plus noise, normalised */
static void make_probs(float *p, int C, int W, int H) {
    size_t N = (size_t)W * H;
    for (size_t i = 0; i < N; i++) {
        int x = (int)(i % W), y = (int)(i / W);
        float s = 0;
        for (int c = 0; c < C; c++) {
            float v = 0.05f + frand() * 0.3f + (((x / 60) * 7 + (y / 50) * 3) % C == c ? 1.0f : 0.0f);
            p[(size_t)c * N + i] = v;
            s += v;
        }
        for (int c = 0; c < C; c++) p[(size_t)c * N + i] /= s;
    }
}

static double last_cpu;   /* process CPU seconds of the best run */

static double time_crf(int C, int W, int H, const uint8_t *src, int sw, int sh, int reps) {
    size_t N = (size_t)W * H;
    uint8_t *feat = malloc(N * 3);
    float *p = malloc(N * C * sizeof(float));
    uint16_t *lab = malloc(N * sizeof(uint16_t));
    make_feat(feat, W, H, src, sw, sh);
    make_probs(p, C, W, H);
    crf_params prm = crf_default_params();
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now_ms(), c = cpu_ms();
        if (crf_run(p, C, H, W, feat, &prm, lab, NULL) != CARSEG_OK) {
            fprintf(stderr, "crf_run: %s\n", carseg_last_error());
            exit(1);
        }
        t = now_ms() - t;
        c = cpu_ms() - c;
        if (t < best) {
            best = t;
            last_cpu = c / 1000.0;
        }
    }
    free(feat);
    free(p);
    free(lab);
    return best / 1000.0;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    carseg_set_threads(threads);
    const char *sh = getenv("CARSEG_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/crf/voc8_3/features.npy", sh ? sh : "../shared");
    npy_array fx = {0};
    const uint8_t *src = NULL;
    int sw = 0, shh = 0;
    if (npy_read(path, &fx) == CARSEG_OK && fx.dtype == NPY_U8 && fx.ndim == 3 && fx.shape[2] == 3) {
        src = fx.data;
        shh = (int)fx.shape[0];
        sw = (int)fx.shape[1];
    }
    printf("dense CRF, 10 iterations, CaR parameters, %d threads, best of %d; features: %s\n", threads,
           reps, src ? "voc8_3 fixture (tiled)" : "synthetic");

    /* lattice sizes and build time for the 500x375 image */
    {
        int W = 500, H = 375;
        size_t N = (size_t)W * H;
        uint8_t *feat = malloc(N * 3);
        float *fg = malloc(N * 2 * sizeof(float)), *fb = malloc(N * 5 * sizeof(float));
        make_feat(feat, W, H, src, sw, shh);
        crf_gaussian_features(W, H, 1, 1, fg);
        crf_bilateral_features(W, H, 67, 67, 3, 3, 3, feat, fb);
        lattice lg, lb;
        double t0 = now_ms();
        lattice_build(&lg, fg, (int)N, 2, 1);
        double t1 = now_ms();
        lattice_build(&lb, fb, (int)N, 5, 1);
        double t2 = now_ms();
        float *v = malloc(N * 21 * sizeof(float));
        for (size_t i = 0; i < N * 21; i++) v[i] = frand();
        double fl[2][2];
        for (int c = 0; c < 2; c++) {
            int vs = c ? 21 : 3;
            double a = now_ms();
            lattice_filter(&lg, v, v, vs, 0, NULL);
            double b = now_ms();
            lattice_filter(&lb, v, v, vs, 0, NULL);
            fl[c][0] = b - a;
            fl[c][1] = now_ms() - b;
        }
        printf("500x375: Gaussian lattice %d vertices (build %.1f ms), bilateral %d vertices (build %.1f ms)\n",
               lg.m, t1 - t0, lb.m, t2 - t1);
        printf("one filtering, 3 values: Gaussian %.1f ms, bilateral %.1f ms; 21 values: %.1f ms, %.1f ms\n",
               fl[0][0], fl[0][1], fl[1][0], fl[1][1]);
        lattice_free(&lg);
        lattice_free(&lb);
        free(v);
        free(feat);
        free(fg);
        free(fb);
    }

    double t3 = time_crf(3, 500, 375, src, sw, shh, reps);
    double c3 = last_cpu;
    printf("500x375, 3 labels: CPU %.3f s\n", c3);
    double t21 = time_crf(21, 500, 375, src, sw, shh, reps);
    double c21 = last_cpu;
    (void)c21;
    printf("500x375, 3 labels: %.3f s (target <= 0.3 s)\n", t3);
    printf("500x375, 21 labels: %.3f s, CPU %.3f s (target <= 1.0 s)\n", t21, c21);

    printf("growth with labels (500x375):");
    int labs[] = {2, 6, 11, 41, 81, 151};
    for (int i = 0; i < 6; i++) printf("  C=%d %.3f s", labs[i], time_crf(labs[i], 500, 375, src, sw, shh, reps));
    printf("\ngrowth with size (3 labels):");
    int sz[][2] = {{250, 188}, {1000, 750}, {2000, 1500}};
    for (int i = 0; i < 3; i++)
        printf("  %dx%d %.3f s", sz[i][0], sz[i][1], time_crf(3, sz[i][0], sz[i][1], src, sw, shh, reps));
    printf("\n");
    npy_free(&fx);
    return 0;
}
