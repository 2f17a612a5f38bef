/* bench_car.c — the CaR recurrence, hoisted vs the reference's order of work (naive), on the
 * tiny fixture CLIPs (fixtures/clip_sg + fixtures/models/sc) and the coffee300_voc case with the
 * 20 VOC classes. Prints wall times per stage; skips when the fixtures are missing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "car.h"
#include "presets.h"
#include "util.h"

static const char *shared(const char *rel, char *buf, size_t n) {
    const char *root = getenv("CARSEG_SHARED");
    static const char *tries[] = {"../shared", "../../shared"};
    for (int i = 0; !root && i < 2; i++) {
        char probe[512];
        snprintf(probe, sizeof probe, "%s/fixtures", tries[i]);
        if (file_exists(probe)) root = tries[i];
    }
    snprintf(buf, n, "%s/%s", root ? root : "../shared", rel);
    return buf;
}

int main(void) {
    char g[1024], c[1024], v[1024], ip[1024];
    shared("fixtures/clip_sg/model_f16.safetensors", g, sizeof g);
    shared("fixtures/models/sc_f16.safetensors", c, sizeof c);
    shared("clip/bpe_simple_vocab_16e6.txt.gz", v, sizeof v);
    shared("fixtures/car/coffee300_voc/input.png", ip, sizeof ip);
    if (!file_exists(g) || !file_exists(c) || !file_exists(v) || !file_exists(ip)) {
        printf("bench_car: fixtures missing (set CARSEG_SHARED), skipped\n");
        return 0;
    }
    clip_model *gen, *cls;
    tokenizer *tok;
    image_u8 im;
    if (clip_load(g, &gen) || clip_load(c, &cls) || tok_open(v, &tok) || image_load_rgb(ip, &im)) {
        fprintf(stderr, "bench_car: %s\n", carseg_last_error());
        return 1;
    }
    const car_preset *voc = preset_find("voc");
    car_params p = car_default_params();
    p.theta = 0.06f;   /* the fixture's setting: 20 -> 2 -> 1 -> 1 */
    size_t hw = (size_t)im.w * im.h;
    uint8_t *m = malloc(hw * 20);
    float sc[20];
    for (int naive = 1; naive >= 0; naive--) {
        car_ctx *ctx;
        car_ctx_new(gen, cls, tok, &ctx);   /* fresh text cache: first-image cost */
        car_stats st;
        memset(&st, 0, sizeof st);
        double t0 = now_ms();
        car_image *ci;
        car_image_new(ctx, &im, &st, &ci);
        p.naive = naive;
        if (car_pass(ctx, ci, voc->list->classes, 20, CAR_BG_WORDS, 23, &p, NULL, m, sc, NULL, &st)) {
            fprintf(stderr, "bench_car: %s\n", carseg_last_error());
            return 1;
        }
        double total = now_ms() - t0, warm = total;
        if (!naive) {   /* a second image with the text cache warm */
            car_stats st2;
            memset(&st2, 0, sizeof st2);
            double t1 = now_ms();
            car_image_free(ci);
            car_image_new(ctx, &im, &st2, &ci);
            car_pass(ctx, ci, voc->list->classes, 20, CAR_BG_WORDS, 23, &p, NULL, m, sc, NULL, &st2);
            warm = now_ms() - t1;
        }
        printf("bench_car %-7s 300x200, 20 VOC classes, %d rounds: %7.0f ms (text %.0f, cam %.0f, "
               "prompts %.0f, classifier %.0f over %d image encodes, crf %.0f); next image %.0f ms\n",
               naive ? "naive" : "hoisted", st.rounds, total, st.ms_text, st.ms_cam, st.ms_prompt,
               st.ms_cls, st.image_encodes, st.ms_crf, warm);
        car_image_free(ci);
        car_ctx_free(ctx);
    }
    free(m);
    image_free(&im);
    tok_close(tok);
    clip_free(gen);
    clip_free(cls);
    return 0;
}
