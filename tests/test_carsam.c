/* test_carsam.c — CaR + SAM refinement (§4.3) against the fixtures' "carsam" results: stand-in
 * CRF masks matched against the first synthetic AMG run for three threshold triples. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carsam.h"
#include "check.h"
#include "rle.h"
#include "util.h"

static int parse_rle(const json *seg, int h, int w, uint32_t **c, size_t *n) {
    const char *s = json_str(seg, "counts", NULL);
    return s ? cs_rle_parse(s, (uint64_t)h * w, c, n) : -1;
}

TEST(carsam_fixtures) {
    const char *path = shared_path("fixtures/sam/coffee_360x240/meta.json");
    if (!path || !file_exists(path)) SKIP("../shared/fixtures/sam missing");
    json *meta = json_parse_file(path);
    REQUIRE(meta);
    const json *cs = json_get(meta, "carsam");
    REQUIRE(cs);
    const json *recs = json_get(json_get(json_get(meta, "amg"), "synthetic_p16"), "records");
    const json *crf = json_get(cs, "crf_in");
    REQUIRE(recs && crf);
    int h = 240, w = 360, M = (int)recs->len, K = (int)crf->len;
    size_t hw = (size_t)h * w;
    uint32_t **counts = calloc((size_t)M, sizeof *counts);
    size_t *nc = calloc((size_t)M, sizeof *nc);
    for (int m = 0; m < M; m++)
        REQUIRE(parse_rle(json_get(json_at(recs, (size_t)m), "segmentation"), h, w, &counts[m], &nc[m]) == 0);
    cs_sam_masks sm = {h, w, M, (const uint32_t *const *)counts, nc};
    uint8_t *in = malloc(hw * K), *masks = malloc(hw * K);
    for (int i = 0; i < K; i++) {
        uint32_t *c; size_t n;
        REQUIRE(parse_rle(json_at(crf, (size_t)i), h, w, &c, &n) == 0);
        REQUIRE(cs_rle_to_mask(c, n, h, w, in + (size_t)i * hw) == 0);
        free(c);
    }
    int ran = 0;
    for (size_t t = 0; t < cs->len; t++) {
        const json *c = cs->kids[t];
        if (c->type != JSON_OBJ || !json_get(c, "info")) continue;
        cs_carsam_params p;
        p.iom_thres = json_num(c, "iom_thres", -1);
        p.min_pred = json_num(c, "min_pred_threshold", -1);
        p.iou_thres = json_num(c, "matching_thresh", -1);
        cs_carsam_info info[8];
        REQUIRE(K <= 8);
        memcpy(masks, in, hw * K);
        CHECK_OK(cs_carsam_refine(&sm, &p, masks, K, h, w, info));
        const json *ei = json_get(c, "info"), *er = json_get(c, "refined");
        for (int i = 0; i < K; i++) {
            const json *e = json_at(ei, (size_t)i), *ek = json_get(e, "kept");
            int same = (size_t)info[i].n_kept == ek->len;
            for (int j = 0; same && j < info[i].n_kept; j++) same = info[i].kept[j] == json_at(ek, (size_t)j)->num;
            CHECK_MSG(same, "%s class %d: %d kept, expected %zu", cs->keys[t], i, info[i].n_kept, ek->len);
            const json *eiou = json_get(e, "iou");
            if (eiou->type == JSON_NULL) CHECK(isnan(info[i].iou));
            else CHECK_NEAR(info[i].iou, eiou->num, 1e-12);
            CHECK(info[i].replaced == (int)json_get(e, "replaced")->num);
            uint32_t *got = malloc((hw + 1) * 4);
            size_t ng = cs_rle_counts(masks + (size_t)i * hw, h, w, got);
            char *gs = cs_rle_string(got, ng);
            CHECK_MSG(strcmp(gs, json_str(json_at(er, (size_t)i), "counts", "")) == 0,
                      "%s class %d: refined mask differs", cs->keys[t], i);
            free(gs); free(got);
        }
        cs_carsam_info_free(info, K);
        ran++;
    }
    CHECK(ran == 3);
    /* a different size or broken runs: EINVAL naming the mask */
    cs_sam_masks bad = sm;
    bad.w = 100;
    cs_carsam_params p;
    cs_carsam_params_init(&p);
    CHECK(cs_carsam_refine(&bad, &p, masks, K, h, w, NULL) == CARSEG_EINVAL);
    size_t nc2[1] = {1};
    uint32_t short_run[1] = {5};
    const uint32_t *sr[1] = {short_run};
    cs_sam_masks br = {h, w, 1, sr, nc2};
    CHECK(cs_carsam_refine(&br, &p, masks, K, h, w, NULL) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "SAM mask 0") != NULL);
    p.iom_thres = 2;
    CHECK(cs_carsam_refine(&sm, &p, masks, K, h, w, NULL) == CARSEG_EINVAL);
    /* no SAM masks: nothing changes */
    cs_carsam_params_init(&p);
    cs_sam_masks none = {h, w, 0, NULL, NULL};
    memcpy(masks, in, hw * K);
    CHECK_OK(cs_carsam_refine(&none, &p, masks, K, h, w, NULL));
    CHECK(memcmp(masks, in, hw * K) == 0);
    for (int m = 0; m < M; m++) free(counts[m]);
    free(counts); free(nc); free(in); free(masks);
    json_free(meta);
}

TEST(carsam_defaults) {
    cs_carsam_params p;
    cs_carsam_params_init(&p);
    CHECK(p.iom_thres == 0.7 && p.min_pred == 0.05 && p.iou_thres == 0.7);
    CHECK_OK(cs_carsam_params_check(&p));
}
