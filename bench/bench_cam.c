/* bench_cam.c — the mask proposal generator through the public API, on a ViT-B/16-shaped random
 * generator (width 768, 12 layers, 12 heads, embed 512; a one-block text tower) and a 500x375
 * noise image (ceil16: 512x384, a 24x32 grid): carseg_prepare (preprocess, 11-block trunk, last
 * block, affinity) and the Grad-CAM proposals of one round for the 20 VOC queries + 23
 * background rows, then for 3 queries (carseg_result_timing "round1.cam": theta -1 keeps every
 * query, the CRF is off; a tiny random classifier, whose time is not reported). The models are
 * random-weight safetensors files written to a temporary folder (bench_common.h).
 * Baseline: scripts/bench_torch_cam.py (the reference's per-query loop in PyTorch).
 * Usage: bench_cam [reps] (default 1). Prints ms per call (mean over reps; CPU ms beside).
 * Needs the BPE vocabulary (../shared/clip/); skipped without it. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench_common.h"

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static int fail(const char *what) {
    fprintf(stderr, "bench_cam: %s: %s\n", what, carseg_last_error());
    return 1;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 1;
    if (reps < 1) reps = 1;
    char v[1024];
    bench_shared("clip/bpe_simple_vocab_16e6.txt.gz", v, sizeof v);
    if (access(v, R_OK)) {
        printf("bench_cam: %s missing (set CARSEG_SHARED), skipped\n", v);
        return 0;
    }
    bench_clip_shape gs = BENCH_B16;
    gs.t_layers = 1;   /* the text tower is not what is measured */
    const bench_clip_shape cs = {64, 2, 16, 14, 64, 1, 77, 49408, 64};
    char dir[512], gp[600], cp[600];
    if (bench_tmpdir(dir, sizeof dir)) {
        perror("bench_cam: temporary folder");
        return 1;
    }
    snprintf(gp, sizeof gp, "%s/gen.safetensors", dir);
    snprintf(cp, sizeof cp, "%s/cls.safetensors", dir);
    if (bench_write_clip(gp, &gs, 1) || bench_write_clip(cp, &cs, 2)) {
        perror("bench_cam: writing the random models");
        return 1;
    }
    carseg_car_model *model = NULL;
    carseg_segmenter *seg = NULL;
    carseg_status st = carseg_car_model_open(gp, cp, v, &model);
    unlink(gp), unlink(cp), rmdir(dir);
    if (st != CARSEG_OK || carseg_segmenter_new(model, &seg) != CARSEG_OK) return fail("model");

    int W = 500, H = 375;
    unsigned s = 7;
    uint8_t *rgb = malloc((size_t)W * H * 3);
    for (int i = 0; i < W * H * 3; i++) rgb[i] = (uint8_t)(128 + 127 * frand(&s));
    carseg_options o;
    carseg_options_preset(&o, "voc");
    o.theta = -1;   /* every query survives: round 1 has all of them */
    o.crf = 0;
    const char *const *voc;
    int nv;
    carseg_preset_classes("voc", &voc, &nv);
    double tp = 0, cp_ = 0, t20 = 0, c20 = 0, t3 = 0, c3 = 0;
    for (int r = 0; r < reps; r++) {
        carseg_prepared *p = NULL;
        carseg_result *r20 = NULL, *r3 = NULL;
        if (carseg_prepare(seg, rgb, W, H, &o, &p) != CARSEG_OK ||
            carseg_segment(seg, p, voc, 20, &o, &r20) != CARSEG_OK ||
            carseg_segment(seg, p, voc, 3, &o, &r3) != CARSEG_OK)
            return fail("segment");
        tp += carseg_result_timing(r20, "prepare"), cp_ += carseg_result_timing(r20, "prepare.cpu");
        t20 += carseg_result_timing(r20, "round1.cam"), c20 += carseg_result_timing(r20, "round1.cam.cpu");
        t3 += carseg_result_timing(r3, "round1.cam"), c3 += carseg_result_timing(r3, "round1.cam.cpu");
        if (carseg_result_round(r20, 0, NULL, NULL, NULL) != 20 || carseg_result_round(r3, 0, NULL, NULL, NULL) != 3) {
            fprintf(stderr, "bench_cam: round 1 did not have the expected live queries\n");
            return 1;
        }
        carseg_result_free(r20), carseg_result_free(r3);
        carseg_prepared_free(p);
    }
    printf("cam ViT-B/16-shaped random model, %dx%d image (grid 24x32), %d threads:\n", W, H,
           carseg_get_threads());
    printf("  carseg_prepare (trunk + affinity) %8.1f ms (CPU %.1f)\n", tp / reps, cp_ / reps);
    printf("  proposals 20 queries + 23 bg      %8.1f ms (CPU %.1f)\n", t20 / reps, c20 / reps);
    printf("  proposals  3 queries + 23 bg      %8.1f ms (CPU %.1f)\n", t3 / reps, c3 / reps);
    free(rgb);
    carseg_segmenter_free(seg);
    carseg_car_model_close(model);
    return 0;
}
