/* test_clip_api.c — the public embedding entry points the Python package stands on:
 * carseg_clip_preprocess / encode_images / encode_tokens / config_json give the same bits as
 * encode_image_rgb / encode_texts, and refuse bad input (hostile token ids, NaN pixels) with a
 * message naming it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carseg.h"
#include "check.h"
#include "clip.h"
#include "util.h"

TEST(clip_api_tokens_pixels_config) {
    const char *mp = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *vp = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    const char *ip = shared_path("data/photos/chelsea.png");
    if (!mp || !vp || !ip || !file_exists(mp) || !file_exists(vp) || !file_exists(ip))
        SKIP("fixtures missing (clip_sg model, vocabulary, chelsea.png)");
    carseg_clip *m;
    carseg_tokenizer *tok;
    REQUIRE(carseg_clip_load(mp, &m) == CARSEG_OK);
    REQUIRE(carseg_tokenizer_open(vp, &tok) == CARSEG_OK);
    int E = carseg_clip_embed_dim(m), S = carseg_clip_image_size(m);
    const char *texts[3] = {"a photo of a cat.", "sky", "2 cars & 3 buses"};
    float a[3 * 64], b[3 * 64];
    int32_t ids[3 * CARSEG_CONTEXT];
    for (int i = 0; i < 3; i++) CHECK(carseg_tokenize(tok, texts[i], ids + i * CARSEG_CONTEXT, CARSEG_CONTEXT) > 0);
    REQUIRE(E <= 64);
    CHECK_OK(carseg_clip_encode_texts(m, tok, texts, 3, a));
    CHECK_OK(carseg_clip_encode_tokens(m, ids, 3, CARSEG_CONTEXT, b));
    CHECK(!memcmp(a, b, sizeof(float) * 3 * E));
    /* the second text alone: the same bits (batch-invariant) */
    CHECK_OK(carseg_clip_encode_tokens(m, ids + CARSEG_CONTEXT, 1, CARSEG_CONTEXT, b));
    CHECK(!memcmp(a + E, b, sizeof(float) * E));
    /* errors: context length, token out of range (named), bad n_blocks, NaN pixels */
    CHECK(carseg_clip_encode_tokens(m, ids, 1, 76, b) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "ctx 76"));
    ids[CARSEG_CONTEXT + 2] = 49408;
    CHECK(carseg_clip_encode_tokens(m, ids, 2, CARSEG_CONTEXT, b) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "text 1 token 2 is 49408"));

    uint8_t *rgb;
    int w, h;
    REQUIRE(carseg_image_load(ip, &rgb, &w, &h) == CARSEG_OK);
    float *x = malloc(sizeof(float) * 3 * S * S * 2);
    REQUIRE(x);
    CHECK_OK(carseg_clip_preprocess(m, rgb, w, h, x));
    memcpy(x + 3 * S * S, x, sizeof(float) * 3 * S * S);
    CHECK_OK(carseg_clip_encode_image_rgb(m, rgb, w, h, 0, a));
    CHECK_OK(carseg_clip_encode_images(m, x, 2, 0, b));
    CHECK(!memcmp(a, b, sizeof(float) * E) && !memcmp(a, b + E, sizeof(float) * E));
    CHECK_OK(carseg_clip_encode_image_rgb(m, rgb, w, h, 1, a));
    CHECK_OK(carseg_clip_encode_images(m, x, 1, 1, b));
    CHECK(!memcmp(a, b, sizeof(float) * E));
    CHECK(carseg_clip_encode_images(m, x, 1, 99, b) == CARSEG_EINVAL);
    /* another size: at the native one the same bits; at 2S x S (a 2:1 grid) the engine's own
     * resized-positional-embedding path, and not the native features */
    CHECK_OK(carseg_clip_encode_images_hw(m, x, 2, S, S, 1, b));
    CHECK(!memcmp(a, b, sizeof(float) * E) && !memcmp(a, b + E, sizeof(float) * E));
    float *x2 = malloc(sizeof(float) * 3 * S * 2 * S), c[64];
    REQUIRE(x2);
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < S; y++)
            for (int xx = 0; xx < 2 * S; xx++)
                x2[((size_t)ch * S + y) * 2 * S + xx] = x[((size_t)ch * S + y) * S + xx % S];
    CHECK_OK(carseg_clip_encode_images_hw(m, x2, 1, S, 2 * S, 0, b));
    CHECK_OK(clip_encode_images(m, x2, 1, S, 2 * S, 0, c));
    CHECK(!memcmp(b, c, sizeof(float) * E));
    CHECK_OK(carseg_clip_encode_image_rgb(m, rgb, w, h, 0, a));
    CHECK(memcmp(a, b, sizeof(float) * E) != 0);
    for (int i = 0; i < E; i++) CHECK(isfinite(b[i]));
    CHECK(carseg_clip_encode_images_hw(m, x2, 1, S, 2 * S - 1, 0, b) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "carseg_clip_encode_images_hw") && strstr(carseg_last_error(), "patch"));
    CHECK(carseg_clip_encode_images_hw(m, x2, 1, 0, S, 0, b) == CARSEG_EINVAL);
    CHECK(carseg_clip_encode_images_hw(NULL, x2, 1, S, S, 0, b) == CARSEG_EINVAL);
    x2[7] = INFINITY;
    CHECK(carseg_clip_encode_images_hw(m, x2, 1, S, 2 * S, 0, b) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "image 0"));
    free(x2);
    x[3 * S * S + 5] = NAN;
    CHECK(carseg_clip_encode_images(m, x, 2, 0, b) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "image 1"));

    char *js = NULL;
    CHECK_OK(carseg_clip_config_json(m, &js));
    CHECK(js && strstr(js, "\"embed\": 32") && strstr(js, "\"image_size\": 224"));
    free(js);
    free(x);
    carseg_image_free(rgb);
    carseg_tokenizer_close(tok);
    carseg_clip_free(m);
}
