/* bench_crf.c — speed of the dense CRF (carseg_crf) on a 500×375 image, 10 iterations, CaR's
 * parameters, with 3 and 21 labels, plus how time grows with image size and label count.
 * Colour features: the voc8_3 fixture's when ../shared is found, else a synthetic image.
 * Usage: build/bench/bench_crf [threads (default 2)] [repeats (default 3)]
 * (The lattice's own figures, vertex counts and one filtering, are internals: not measured
 * here; the CRF's tests cover the lattice.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"

#define cpu_ms bench_cpu_ms
#define now_ms bench_now_ms

/* the uint8 (H, W, 3) array of a C-order .npy file; NULL when absent or of another kind */
static uint8_t *read_u8_npy(const char *path, int *w, int *h) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char pre[10];
    uint8_t *data = NULL;
    char hdr[1024];
    size_t hl = 0;
    if (fread(pre, 1, 10, f) == 10 && !memcmp(pre, "\x93NUMPY", 6) && pre[6] == 1 &&
        (hl = pre[8] | (size_t)pre[9] << 8) < sizeof hdr && fread(hdr, 1, hl, f) == hl) {
        hdr[hl] = 0;
        long H = 0, W = 0, Cc = 0;
        const char *sp = strstr(hdr, "'shape': (");
        if (strstr(hdr, "'|u1'") && strstr(hdr, "'fortran_order': False") && sp &&
            sscanf(sp, "'shape': (%ld, %ld, %ld)", &H, &W, &Cc) == 3 && Cc == 3 && H > 0 && W > 0 &&
            (data = malloc((size_t)H * W * 3)) && fread(data, 3, (size_t)H * W, f) == (size_t)H * W) {
            *w = (int)W, *h = (int)H;
        } else {
            free(data);
            data = NULL;
        }
    }
    fclose(f);
    return data;
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
    carseg_crf_params prm = carseg_crf_defaults();
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now_ms(), c = cpu_ms();
        if (carseg_crf(p, C, H, W, feat, &prm, lab, NULL) != CARSEG_OK) {
            fprintf(stderr, "carseg_crf: %s\n", carseg_last_error());
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
    char path[1024];
    bench_shared("fixtures/crf/voc8_3/features.npy", path, sizeof path);
    int sw = 0, shh = 0;
    uint8_t *src = read_u8_npy(path, &sw, &shh);
    printf("dense CRF, 10 iterations, CaR parameters, %d threads, best of %d; features: %s\n", threads,
           reps, src ? "voc8_3 fixture (tiled)" : "synthetic");

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
    free(src);
    return 0;
}
