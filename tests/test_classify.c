/* test_classify.c — the mask classifier's scores against the upstream fixtures (Q5, Q19). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "classify.h"
#include "util.h"

/* exp of CLIP's initial logit_scale, log(1/0.07), rounded through fp16 (both tiny fixture models) */
#define FIXTURE_SCALE 14.29852294921875f

TEST(classify_format) {
    char *s = car_format("a clean origami {}.", "bird avian");
    CHECK(!strcmp(s, "a clean origami bird avian."));
    free(s);
    s = car_format("This is a photo of a {}", "x");
    CHECK(!strcmp(s, "This is a photo of a x"));
    free(s);
}

/* cls_image_emb + cls_text_emb -> cls_S (per template softmax) and cls_P (double softmax) */
TEST(classify_scores_fixture) {
    static const char *cases[] = {"chelsea_voc/iter01", "coffee300_voc/iter01", "coffee300_voc/iter02",
                                  "coffee300_voc/iter03", "astronaut_cocolike/iter01"};
    int ran = 0;
    for (int c = 0; c < 5; c++) {
        char rel[256];
        float *img, *txt, *S, *P;
        int nd;
        int64_t si[8], st[8], ss[8], sp[8];
        snprintf(rel, sizeof rel, "fixtures/car/%s/cls_image_emb.npy", cases[c]);
        const char *p = shared_path(rel);
        if (!p) continue;
        REQUIRE(npy_read_f32(p, &img, &nd, si) == CARSEG_OK);
        snprintf(rel, sizeof rel, "fixtures/car/%s/cls_text_emb.npy", cases[c]);
        REQUIRE(npy_read_f32(shared_path(rel), &txt, &nd, st) == CARSEG_OK);
        snprintf(rel, sizeof rel, "fixtures/car/%s/cls_S.npy", cases[c]);
        REQUIRE(npy_read_f32(shared_path(rel), &S, &nd, ss) == CARSEG_OK);
        snprintf(rel, sizeof rel, "fixtures/car/%s/cls_P.npy", cases[c]);
        REQUIRE(npy_read_f32(shared_path(rel), &P, &nd, sp) == CARSEG_OK);
        int n = (int)si[0], E = (int)si[1], T = (int)st[0];
        REQUIRE(st[1] == n && st[2] == E && T == 15);
        /* astronaut uses the generator model as classifier: same initial logit scale */
        float *gS = malloc(sizeof(float) * (size_t)T * n * n), *gP = malloc(sizeof(float) * (size_t)n * n);
        cls_probs(img, n, txt, T, E, FIXTURE_SCALE, 1, gS, gP);
        CHECK_CLOSE(cases[c], gS, S, (size_t)T * n * n, 0, 1e-5);
        CHECK_CLOSE(cases[c], gP, P, (size_t)n * n, 0, 1e-5);
        free(img), free(txt), free(S), free(P), free(gS), free(gP);
        ran++;
    }
    if (!ran) SKIP("CaR fixtures missing");
}

/* single template (refer mode): P = S */
TEST(classify_single_softmax) {
    float img[4] = {1, 0, 0, 1}, txt[4] = {1, 0, 0.6f, 0.8f}, P[4], S[4];
    cls_probs(img, 2, txt, 1, 2, 10.0f, 0, S, P);
    CHECK(!memcmp(S, P, sizeof P));
    CHECK_NEAR(P[0] + P[1], 1.0, 1e-6);
    CHECK_NEAR(P[0], 1.0 / (1.0 + exp(10.0 * (0.6 - 1.0))), 1e-6);
}
