/* bench_api.c — CaR through the public API only (carseg.h), on the tiny fixture CLIPs
 * (fixtures/clip_sg generator + fixtures/models/sc classifier) and the coffee300_voc image:
 * the first image with a fresh segmenter (its text caches empty), the next image (caches warm),
 * and one prepared image segmented with a second class list (no trunk + affinity again).
 * Prints ms per stage from carseg_result_timing; skips when the fixtures are missing. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "carseg.h"

static const char *shared(const char *rel, char *buf, size_t n) {
    const char *root = getenv("CARSEG_SHARED");
    static const char *tries[] = {"../shared", "../../shared"};
    for (int i = 0; !root && i < 2; i++) {
        char probe[512];
        snprintf(probe, sizeof probe, "%s/fixtures", tries[i]);
        if (access(probe, R_OK) == 0) root = tries[i];
    }
    snprintf(buf, n, "%s/%s", root ? root : "../shared", rel);
    return buf;
}

static void line(const char *what, const carseg_result *r) {
    printf("bench_api %-28s %6.0f ms (prepare %.0f, text %.0f, cam %.0f, prompts %.0f, classifier %.0f, "
           "crf %.0f), %d rounds\n", what, carseg_result_timing(r, "total"), carseg_result_timing(r, "prepare"),
           carseg_result_timing(r, "text"), carseg_result_timing(r, "cam"), carseg_result_timing(r, "prompt"),
           carseg_result_timing(r, "classify"), carseg_result_timing(r, "crf"), carseg_result_rounds(r));
}

int main(void) {
    char g[1024], c[1024], v[1024], ip[1024];
    shared("fixtures/clip_sg/model_f16.safetensors", g, sizeof g);
    shared("fixtures/models/sc_f16.safetensors", c, sizeof c);
    shared("clip/bpe_simple_vocab_16e6.txt.gz", v, sizeof v);
    shared("fixtures/car/coffee300_voc/input.png", ip, sizeof ip);
    if (access(g, R_OK) || access(c, R_OK) || access(v, R_OK) || access(ip, R_OK)) {
        printf("bench_api: fixtures missing (set CARSEG_SHARED), skipped\n");
        return 0;
    }
    carseg_car_model *m = NULL;
    carseg_segmenter *s = NULL;
    carseg_prepared *p = NULL;
    carseg_result *r1 = NULL, *r2 = NULL, *r3 = NULL;
    uint8_t *rgb = NULL;
    int w, h;
    carseg_options o;
    carseg_options_preset(&o, "voc");
    o.theta = 0.06f;   /* the fixture's setting: 20 -> 2 -> 1 -> 1 */
    static const char *const other[] = {"cup", "saucer", "table", "spoon", "wall"};
    if (carseg_car_model_open(g, c, v, &m) || carseg_segmenter_new(m, &s) ||
        carseg_image_load(ip, &rgb, &w, &h) ||
        carseg_segment_rgb(s, rgb, w, h, NULL, 0, &o, &r1) ||      /* the preset's 20 classes */
        carseg_prepare(s, rgb, w, h, &o, &p) || carseg_segment(s, p, NULL, 0, &o, &r2) ||
        carseg_segment(s, p, other, 5, &o, &r3)) {
        fprintf(stderr, "bench_api: %s\n", carseg_last_error());
        return 1;
    }
    printf("bench_api: %dx%d, fixture CLIPs, %d threads\n", w, h, carseg_get_threads());
    line("first image, 20 VOC classes", r1);
    line("next image, caches warm", r2);
    line("same image, 5 other classes", r3);
    carseg_result_free(r1), carseg_result_free(r2), carseg_result_free(r3);
    carseg_prepared_free(p);
    carseg_image_free(rgb);
    carseg_segmenter_free(s);
    carseg_car_model_close(m);
    return 0;
}
