/* bench_car.c — the CaR recurrence (hoisted: trunk and affinity once per image, each prompted
 * image encoded once, text features cached) through the public API, on the tiny fixture CLIPs
 * (fixtures/clip_sg + fixtures/models/sc) and the coffee300_voc case with the 20 VOC classes:
 * a fresh segmenter (first-image cost), then a second image with its text caches warm. Prints
 * wall times per stage (carseg_result_timing); skips when the fixtures are missing.
 * (The reference's order of work, which the tests run as car_params.naive, is not an option of
 * the public API: docs/prompts.md has the measured comparison.) */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench_common.h"

int main(void) {
    char g[1024], c[1024], v[1024], ip[1024];
    bench_shared("fixtures/clip_sg/model_f16.safetensors", g, sizeof g);
    bench_shared("fixtures/models/sc_f16.safetensors", c, sizeof c);
    bench_shared("clip/bpe_simple_vocab_16e6.txt.gz", v, sizeof v);
    bench_shared("fixtures/car/coffee300_voc/input.png", ip, sizeof ip);
    if (access(g, R_OK) || access(c, R_OK) || access(v, R_OK) || access(ip, R_OK)) {
        printf("bench_car: fixtures missing (set CARSEG_SHARED), skipped\n");
        return 0;
    }
    carseg_car_model *m = NULL;
    carseg_segmenter *s = NULL;
    carseg_result *r1 = NULL, *r2 = NULL;
    uint8_t *rgb = NULL;
    int w, h;
    carseg_options o;
    carseg_options_preset(&o, "voc");
    o.theta = 0.06f;   /* the fixture's setting: 20 -> 2 -> 1 -> 1 */
    const char *const *voc;
    int n;
    carseg_preset_classes("voc", &voc, &n);
    if (carseg_car_model_open(g, c, v, &m) || carseg_segmenter_new(m, &s) ||   /* fresh text caches */
        carseg_image_load(ip, &rgb, &w, &h) ||
        carseg_segment_rgb(s, rgb, w, h, voc, n, &o, &r1) ||
        carseg_segment_rgb(s, rgb, w, h, voc, n, &o, &r2)) {   /* the next image: caches warm */
        fprintf(stderr, "bench_car: %s\n", carseg_last_error());
        return 1;
    }
    printf("bench_car %-7s %dx%d, %d VOC classes, %d rounds: %7.0f ms (text %.0f, cam %.0f, "
           "prompts %.0f, classifier %.0f, crf %.0f); next image %.0f ms\n",
           "hoisted", w, h, n, carseg_result_rounds(r1), carseg_result_timing(r1, "total"),
           carseg_result_timing(r1, "text"), carseg_result_timing(r1, "cam"),
           carseg_result_timing(r1, "prompt"), carseg_result_timing(r1, "classify"),
           carseg_result_timing(r1, "crf"), carseg_result_timing(r2, "total"));
    carseg_result_free(r1), carseg_result_free(r2);
    carseg_image_free(rgb);
    carseg_segmenter_free(s);
    carseg_car_model_close(m);
    return 0;
}
