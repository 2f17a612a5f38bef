/* bench_cam.c — the mask proposal generator on a ViT-B/16-shaped random model (width 768,
 * 12 layers, 12 heads, embed 512) and a 500x375 image (ceil16: 512x384, a 24x32 grid):
 * cam_prepare (preprocess, 11-block trunk, last block, affinity) and cam_proposals for the
 * 20 VOC queries + 23 background rows, then a 3-query round.
 * Baseline: scripts/bench_torch_cam.py (the reference's per-query loop in PyTorch).
 * Usage: bench_cam [reps] (default 1). Prints ms per call. */
#include <stdio.h>
#include <stdlib.h>

#include "cam.h"
#include "clip.h"
#include "image.h"
#include "util.h"

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 1;
    if (reps < 1) reps = 1;
    clip_config cfg = {0};
    cfg.v_width = 768, cfg.v_layers = 12, cfg.v_patch = 16, cfg.v_grid = 14;
    cfg.t_width = 512, cfg.t_layers = 1, cfg.t_ctx = 77, cfg.t_vocab = 1000, cfg.embed = 512;
    clip_model *m = NULL;
    if (clip_init_random(&cfg, 1, &m) != CARSEG_OK) {
        fprintf(stderr, "bench_cam: %s\n", carseg_last_error());
        return 1;
    }
    int W = 500, H = 375, n = 20, nb = 23, E = cfg.embed;
    unsigned s = 7;
    image_u8 im = {W, H, 3, malloc((size_t)W * H * 3)};
    for (int i = 0; i < W * H * 3; i++) im.px[i] = (uint8_t)(128 + 127 * frand(&s));
    float *T = malloc((size_t)(n + nb) * E * sizeof(float));
    for (int i = 0; i < (n + nb) * E; i++) T[i] = frand(&s);
    float *masks = malloc((size_t)n * H * W * sizeof(float));
    cam_params prm = {.lambda = 0.4f, .logit_scale = 0};
    int P = cfg.v_patch, gh = (H + P - 1) / P, gw = (W + P - 1) / P, L = 1 + gh * gw;
    int C = cfg.v_width, nt = cfg.v_layers - 1;
    float *x = malloc((size_t)3 * gh * P * gw * P * sizeof(float));
    float *tok = malloc((size_t)L * C * sizeof(float)), *attn = malloc((size_t)nt * L * L * sizeof(float));
    double tp = 0, t20 = 0, t3 = 0, ttr = 0, ttok = 0;
    for (int r = 0; r < reps; r++) {
        cam_image *ci = NULL;
        double t0 = now_ms();
        if (cam_prepare(m, &im, &ci) != CARSEG_OK) {
            fprintf(stderr, "bench_cam: %s\n", carseg_last_error());
            return 1;
        }
        double t1 = now_ms();
        if (cam_proposals(ci, T, n, T + (size_t)n * E, nb, &prm, masks, NULL, NULL) != CARSEG_OK) {
            fprintf(stderr, "bench_cam: %s\n", carseg_last_error());
            return 1;
        }
        double t2 = now_ms();
        if (cam_proposals(ci, T, 3, T + (size_t)n * E, nb, &prm, masks, NULL, NULL) != CARSEG_OK) {
            fprintf(stderr, "bench_cam: %s\n", carseg_last_error());
            return 1;
        }
        double t3_ = now_ms();
        tp += t1 - t0, t20 += t2 - t1, t3 += t3_ - t2;
        cam_image_free(ci);
        /* the same split: preprocessing + trunk, then the CAM's own per-image work */
        double t4 = now_ms();
        if (clip_preprocess_exact(&im, gw * P, gh * P, x) != CARSEG_OK ||
            clip_image_trunk(m, x, gh * P, gw * P, nt, tok, attn) != CARSEG_OK) {
            fprintf(stderr, "bench_cam: %s\n", carseg_last_error());
            return 1;
        }
        double t5 = now_ms();
        if (cam_prepare_tokens(m, tok, gh, gw, attn, nt, H, W, &ci) != CARSEG_OK) {
            fprintf(stderr, "bench_cam: %s\n", carseg_last_error());
            return 1;
        }
        double t6 = now_ms();
        ttr += t5 - t4, ttok += t6 - t5;
        cam_image_free(ci);
    }
    printf("cam ViT-B/16-shaped random model, %dx%d image (grid 24x32), %d threads:\n", W, H,
           carseg_get_threads());
    printf("  cam_prepare                       %8.1f ms\n", tp / reps);
    printf("    measured apart: preprocess + trunk %6.1f ms\n", ttr / reps);
    printf("    measured apart: last block + affinity (cam_prepare_tokens) %6.1f ms\n", ttok / reps);
    printf("  cam_proposals 20 queries + 23 bg  %8.1f ms\n", t20 / reps);
    printf("  cam_proposals  3 queries + 23 bg  %8.1f ms\n", t3 / reps);
    free(im.px), free(T), free(masks), free(x), free(tok), free(attn);
    clip_free(m);
    return 0;
}
