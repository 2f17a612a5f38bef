/* test_prompts.c — visual prompts against the spec's vector, OpenCV 4.6 and the CaR fixtures. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "image.h"
#include "prompts.h"
#include "util.h"

TEST(prompts_parse) {
    unsigned t;
    CHECK_OK(vp_parse("circle,blur", &t));
    CHECK(t == (VP_CIRCLE | VP_BLUR));
    char buf[64];
    vp_format(t, buf, sizeof buf);
    CHECK(!strcmp(buf, "blur,circle"));
    CHECK_OK(vp_parse("gray, blur", &t));
    CHECK(t == (VP_GRAY | VP_BLUR));
    CHECK(vp_parse("circle,sparkles", &t) == CARSEG_EINVAL);
}

/* car_method.md §11 / utils_test.py: 5x5 ones, M = rows/cols 1..4, circle -> centre (2,2), axes (2,2) */
TEST(prompts_circle_5x5) {
    uint8_t img[5 * 5 * 3];
    memset(img, 1, sizeof img);
    float mask[25] = {0};
    for (int y = 1; y <= 4; y++)
        for (int x = 1; x <= 4; x++) mask[y * 5 + x] = 1;
    vp_ctx ctx;
    CHECK_OK(vp_prepare(img, 5, 5, VP_CIRCLE, &ctx));
    uint8_t out[75];
    CHECK(vp_apply(&ctx, mask, 0.5f, out) == 1);
    static const int on[8][2] = {{0, 2}, {1, 1}, {1, 3}, {2, 0}, {2, 4}, {3, 1}, {3, 3}, {4, 2}};
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 5; x++) {
            int expect = 0;
            for (int k = 0; k < 8; k++) expect |= on[k][0] == y && on[k][1] == x;
            CHECK_MSG(out[(y * 5 + x) * 3] == (expect ? 255 : 1), "pixel (%d,%d)", y, x);
        }
    /* sum(mask) <= 1: the original image */
    float tiny[25] = {0};
    tiny[3] = 1.0f;
    CHECK(vp_apply(&ctx, tiny, 0.5f, out) == 0);
    CHECK(!memcmp(out, img, sizeof img));
    vp_release(&ctx);
}

static const char *gen_vectors(const char *img) {
    static char dir[700];
    snprintf(dir, sizeof dir, "%s/pv", test_tmpdir());
    char cmd[2000];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import cv2, scipy' 2>/dev/null && "
             "/usr/bin/python3 scripts/gen_prompt_vectors.py %s %s", dir, img ? img : "");
    if (system(cmd) != 0) return NULL;
    return dir;
}

static void *load(const char *dir, const char *name, npy_array *a) {
    char p[900];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (npy_read(p, a) != CARSEG_OK) return NULL;
    return a->data;
}

TEST(prompts_draw_vs_opencv) {
    const char *dir = gen_vectors(NULL);
    if (!dir) SKIP("/usr/bin/python3 with cv2 + scipy not available");
    npy_array P, X;
    REQUIRE(load(dir, "ellipse_params.npy", &P) && load(dir, "ellipse_px.npy", &X));
    const uint8_t one[3] = {1, 0, 0};
    int bad = 0;
    for (int i = 0; i < P.shape[0]; i++) {
        const int32_t *p = (const int32_t *)P.data + 6 * i;
        int w = p[0], h = p[1];
        uint8_t *img = calloc((size_t)w * h * 3, 1);
        vp_draw_ellipse(img, w, h, p[2], p[3], p[4], p[5], one);
        const uint8_t *ref = (const uint8_t *)X.data + (size_t)i * 64 * 64;
        int diff = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) diff += img[(y * w + x) * 3] != ref[y * 64 + x];
        if (diff && bad++ < 5)
            fprintf(stderr, "  ellipse %d (w%d h%d c%d,%d a%d,%d): %d px differ\n", i, w, h, p[2],
                    p[3], p[4], p[5], diff);
        free(img);
    }
    CHECK(bad == 0);
    npy_free(&P), npy_free(&X);
    REQUIRE(load(dir, "rect_params.npy", &P) && load(dir, "rect_px.npy", &X));
    bad = 0;
    for (int i = 0; i < P.shape[0]; i++) {
        const int32_t *p = (const int32_t *)P.data + 6 * i;
        int w = p[0], h = p[1];
        uint8_t *img = calloc((size_t)w * h * 3, 1);
        vp_draw_rect(img, w, h, p[2], p[3], p[4], p[5], one);
        const uint8_t *ref = (const uint8_t *)X.data + (size_t)i * 64 * 64;
        int diff = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) diff += img[(y * w + x) * 3] != ref[y * 64 + x];
        if (diff && bad++ < 5) fprintf(stderr, "  rect %d: %d px differ\n", i, diff);
        free(img);
    }
    CHECK(bad == 0);
    npy_free(&P), npy_free(&X);
    REQUIRE(load(dir, "contour_masks.npy", &P) && load(dir, "contour_px.npy", &X));
    bad = 0;
    for (int i = 0; i < P.shape[0]; i++) {
        const uint8_t *m = (const uint8_t *)P.data + (size_t)i * 48 * 48;
        uint8_t img[48 * 48 * 3] = {0};
        CHECK_OK(vp_draw_contour(img, 48, 48, m, one));
        const uint8_t *ref = (const uint8_t *)X.data + (size_t)i * 48 * 48;
        int diff = 0;
        for (int k = 0; k < 48 * 48; k++) diff += img[k * 3] != ref[k];
        if (diff && bad++ < 5) fprintf(stderr, "  contour %d: %d px differ\n", i, diff);
    }
    CHECK(bad == 0);
    npy_free(&P), npy_free(&X);
}

/* Full apply_visual_prompts (upstream operations in cv2) on a real photo, several combinations;
 * hoisted (vp_prepare/vp_apply) and naive paths must both be bit-exact. */
TEST(prompts_apply_vs_opencv) {
    const char *photo = shared_path("data/photos/chelsea.png");
    if (!photo) SKIP("shared data missing");
    const char *dir = gen_vectors(photo);
    if (!dir) SKIP("/usr/bin/python3 with cv2 + scipy not available");
    npy_array I, M;
    REQUIRE(load(dir, "prompt_image.npy", &I) && load(dir, "prompt_masks.npy", &M));
    int h = (int)I.shape[0], w = (int)I.shape[1], nm = (int)M.shape[0];
    size_t n = (size_t)w * h;
    static const char *combos[] = {"circle,blur", "blur,gray", "gray,blur", "black,rectangle",
                                   "contour", "circle"};
    uint8_t *out = malloc(n * 3), *out2 = malloc(n * 3);
    for (int c = 0; c < 6; c++) {
        char name[64];
        snprintf(name, sizeof name, "prompt_%s.npy", combos[c]);
        for (char *q = name; *q; q++) if (*q == ',') *q = '_';
        npy_array R;
        REQUIRE(load(dir, name, &R));
        unsigned t;
        CHECK_OK(vp_parse(combos[c], &t));
        vp_ctx ctx;
        CHECK_OK(vp_prepare(I.data, w, h, t, &ctx));
        for (int k = 0; k < nm; k++) {
            const float *m = (const float *)M.data + (size_t)k * n;
            const uint8_t *ref = (const uint8_t *)R.data + (size_t)k * n * 3;
            CHECK(vp_apply(&ctx, m, 0.4f, out) == 1);
            CHECK(vp_apply_naive(I.data, w, h, t, m, 0.4f, out2) == 1);
            size_t d1 = 0, d2 = 0;
            for (size_t i = 0; i < n * 3; i++) d1 += out[i] != ref[i], d2 += out2[i] != ref[i];
            CHECK_MSG(d1 == 0 && d2 == 0, "%s mask %d: %zu / %zu bytes differ", combos[c], k, d1, d2);
        }
        vp_release(&ctx);
        npy_free(&R);
    }
    free(out), free(out2);
    npy_free(&I), npy_free(&M);
}

/* The prompted images stored by the upstream pipeline (iterNN/prompted_NN.png from input.png
 * and masks.npy with that case's eta and prompts). */
TEST(prompts_fixture_images) {
    static const struct { const char *c; float eta; const char *types; } cases[] = {
        {"coffee300_voc", 0.4f, "circle,blur"}, {"astronaut_cocolike", 0.5f, "blur,gray"}};
    int ran = 0;
    for (int ci = 0; ci < 2; ci++) {
        char rel[200];
        snprintf(rel, sizeof rel, "fixtures/car/%s/input.png", cases[ci].c);
        const char *inp = shared_path(rel);
        if (!inp) continue;
        image_u8 im;
        CHECK_OK(image_load_rgb(inp, &im));
        unsigned t;
        CHECK_OK(vp_parse(cases[ci].types, &t));
        vp_ctx ctx;
        CHECK_OK(vp_prepare(im.px, im.w, im.h, t, &ctx));
        size_t n = (size_t)im.w * im.h;
        uint8_t *out = malloc(n * 3);
        for (int it = 1; it <= 3; it++) {
            snprintf(rel, sizeof rel, "fixtures/car/%s/iter%02d/masks.npy", cases[ci].c, it);
            const char *mp = shared_path(rel);
            if (!mp || !file_exists(mp)) continue;
            float *masks;
            int nd;
            int64_t sh[8];
            CHECK_OK(npy_read_f32(mp, &masks, &nd, sh));
            for (int k = 0; k < sh[0] && k < 3; k++) {
                snprintf(rel, sizeof rel, "fixtures/car/%s/iter%02d/prompted_%02d.png", cases[ci].c,
                         it, k);
                const char *pp = shared_path(rel);
                if (!pp || !file_exists(pp)) continue;
                image_u8 ref;
                CHECK_OK(image_load_rgb(pp, &ref));
                REQUIRE(ref.w == im.w && ref.h == im.h);
                vp_apply(&ctx, masks + (size_t)k * n, cases[ci].eta, out);
                size_t d = 0;
                for (size_t i = 0; i < n * 3; i++) d += out[i] != ref.px[i];
                CHECK_MSG(d == 0, "%s iter%02d prompted_%02d: %zu bytes differ", cases[ci].c, it, k, d);
                image_free(&ref);
                ran++;
            }
            free(masks);
        }
        free(out);
        vp_release(&ctx);
        image_free(&im);
    }
    if (!ran) SKIP("CaR fixtures missing");
}

/* Q3: the reference's gray uses BGR2GRAY weights on RGB data; VP_GRAY_RGB is the fix. */
TEST(prompts_gray_quirk_q3) {
    uint8_t img[2 * 1 * 3] = {255, 0, 0, 255, 0, 0}, out[6];
    float mask[2] = {1.5f, 0};   /* pixel 0 inside, pixel 1 outside; sum > 1 */
    CHECK(vp_apply_naive(img, 2, 1, VP_GRAY, mask, 0.5f, out) == 1);
    CHECK(out[0] == 255 && out[1] == 0);               /* inside: colour kept */
    CHECK(out[3] == 29 && out[4] == 29 && out[5] == 29);   /* (255*1868 + 8192) >> 14: red as blue */
    CHECK(vp_apply_naive(img, 2, 1, VP_GRAY | VP_GRAY_RGB, mask, 0.5f, out) == 1);
    CHECK(out[3] == 76);                                /* (255*4899 + 8192) >> 14, cv2 RGB2GRAY */
    vp_ctx ctx;
    CHECK_OK(vp_prepare(img, 2, 1, VP_GRAY | VP_GRAY_RGB, &ctx));
    CHECK(vp_apply(&ctx, mask, 0.5f, out) == 1 && out[3] == 76);
    vp_release(&ctx);
}
