/* test_carsam.c — CaR + SAM refinement (§4.3) against the fixtures' "carsam" results: stand-in
 * CRF masks matched against the first synthetic AMG run for three threshold triples. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "car.h"
#include "carsam.h"
#include "clip.h"
#include "image.h"
#include "presets.h"
#include "tokenizer.h"
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

/* car_segment with job.sam: the refinement sits between the CRF and the label map */
TEST(carsam_in_car_segment) {
    const char *g = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *c = shared_path("fixtures/models/sc_f16.safetensors");
    const char *v = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    const char *ip = shared_path("fixtures/car/coffee300_voc/input.png");
    if (!g || !c || !v || !ip || !file_exists(g) || !file_exists(c) || !file_exists(ip))
        SKIP("CLIP/CaR fixtures missing");
    clip_model *gen, *cls;
    tokenizer *tok;
    car_ctx *ctx;
    REQUIRE(clip_load(g, &gen) == CARSEG_OK && clip_load(c, &cls) == CARSEG_OK);
    REQUIRE(tok_open(v, &tok) == CARSEG_OK && car_ctx_new(gen, cls, tok, &ctx) == CARSEG_OK);
    image_u8 im;
    REQUIRE(image_load_rgb(ip, &im) == CARSEG_OK);
    car_image *ci;
    REQUIRE(car_image_new(ctx, &im, NULL, &ci) == CARSEG_OK);
    int W = im.w, H = im.h;
    size_t hw = (size_t)W * H;
    static const char *cl[] = {"cup", "person", "table"};
    car_job job;
    memset(&job, 0, sizeof job);
    job.classes = cl, job.n_classes = 3, job.bg = CAR_BG_WORDS, job.nb = 23;
    job.p = car_default_params(), job.p.theta = 0, job.stuff_p = job.p;
    uint16_t *l0 = malloc(hw * 2), *l1 = malloc(hw * 2);
    uint8_t *m0 = malloc(hw * 3);
    float sc[3], sc1[3];
    CHECK_OK(car_segment(ctx, ci, &job, NULL, l0, sc, m0, NULL));
    int top = -1;
    for (int k = 0; k < 3; k++) {
        size_t a = 0;
        for (size_t t = 0; t < hw; t++) a += m0[(size_t)k * hw + t];
        if (sc[k] > 0 && a > 0 && (top < 0 || sc[k] >= sc[top])) top = k;
    }
    REQUIRE(top >= 0);
    /* one SAM mask = the whole image */
    uint32_t whole[2] = {0, (uint32_t)hw};
    const uint32_t *wc[1] = {whole};
    size_t wn[1] = {2};
    cs_sam_masks sm = {H, W, 1, wc, wn};
    job.sam = &sm;
    cs_carsam_params_init(&job.sam_p);
    job.sam_p.iom_thres = 0, job.sam_p.iou_thres = 0;   /* every non-empty mask becomes the image */
    car_stats st;
    memset(&st, 0, sizeof st);
    CHECK_OK(car_segment(ctx, ci, &job, NULL, l1, sc1, NULL, &st));
    size_t bad = 0;
    for (size_t t = 0; t < hw; t++) bad += l1[t] != top + 1;
    CHECK_MSG(bad == 0, "%zu pixels not labelled with the top class %d", bad, top);
    CHECK(memcmp(sc, sc1, sizeof sc) == 0);
    job.sam_p.iou_thres = 1;   /* never replaced: the labels without SAM */
    CHECK_OK(car_segment(ctx, ci, &job, NULL, l1, sc1, NULL, NULL));
    CHECK(memcmp(l0, l1, hw * 2) == 0);
    cs_sam_masks wrong = {H + 1, W, 1, wc, wn};
    job.sam = &wrong;
    CHECK(car_segment(ctx, ci, &job, NULL, l1, sc1, NULL, NULL) == CARSEG_EINVAL);
    free(l0); free(l1); free(m0);
    car_image_free(ci);
    image_free(&im);
    car_ctx_free(ctx);
    tok_close(tok);
    clip_free(cls);
    clip_free(gen);
}

/* `carseg segment --sam-masks DIR` end to end, and its bad inputs */
static int write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(s, f);
    return fclose(f);
}

static int run_cmd(const char *cmd, const char *errfile, char *err, size_t n) {
    int rc = test_run(cmd);
    err[0] = 0;
    FILE *f = fopen(errfile, "r");
    if (f) { size_t k = fread(err, 1, n - 1, f); err[k] = 0; fclose(f); }
    return rc;
}

TEST(carsam_cli_segment_sam_masks) {
    const char *bin = getenv("CARSEG_BIN");
    const char *g = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *c = shared_path("fixtures/models/sc_f16.safetensors");
    const char *v = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    const char *ip = shared_path("fixtures/car/coffee300_voc/input.png");
    if (!bin) SKIP("CARSEG_BIN not set");
    if (!g || !c || !v || !ip || !file_exists(ip)) SKIP("fixtures missing");
    image_u8 im;
    REQUIRE(image_load_rgb(ip, &im) == CARSEG_OK);
    int W = im.w, H = im.h;
    image_free(&im);
    const char *dir = test_tmpdir();
    char cmd[8192], path[1024], err[4096], base[3000], js[512];
    snprintf(base, sizeof base, "%s segment %s --classes 'cup,person,table' --theta 0 --generator %s "
             "--classifier %s --vocab %s --quiet", bin, ip, g, c, v);
    snprintf(path, sizeof path, "%s/sam", dir);
    REQUIRE(mkdir_p(path) == CARSEG_OK);
    uint32_t whole[2] = {0, (uint32_t)(W * H)};
    char *rs = cs_rle_string(whole, 2);
    snprintf(js, sizeof js, "[{\"segmentation\": {\"size\": [%d, %d], \"counts\": \"%s\"}, \"area\": %d}]",
             H, W, rs, W * H);
    free(rs);
    snprintf(path, sizeof path, "%s/sam/input.sam.json", dir);
    REQUIRE(write_text(path, js) == 0);
    /* no SAM, SAM that never replaces (--sam-iou 1), SAM that replaces everything */
    snprintf(cmd, sizeof cmd, "%s --out %s/o0 > /dev/null 2>%s/e", base, dir, dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s --sam-masks %s/sam --sam-iou 1 --out %s/o1 > /dev/null 2>%s/e", base, dir, dir, dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s --sam-masks %s/sam --sam-iom 0 --sam-iou 0 --out %s/o2 > /dev/null 2>%s/e", base, dir, dir, dir);
    CHECK(system(cmd) == 0);
    image_u8 l0 = {0}, l1 = {0}, l2 = {0};
    snprintf(path, sizeof path, "%s/o0/input.png", dir);
    CHECK_OK(image_load_indexed(path, &l0));
    snprintf(path, sizeof path, "%s/o1/input.png", dir);
    CHECK_OK(image_load_indexed(path, &l1));
    snprintf(path, sizeof path, "%s/o2/input.png", dir);
    CHECK_OK(image_load_indexed(path, &l2));
    if (l0.px && l1.px && l2.px) {
        size_t hw = (size_t)W * H, diff = 0, other = 0;
        for (size_t i = 0; i < hw; i++) diff += l0.px[i] != l1.px[i], other += l2.px[i] != l2.px[0];
        CHECK_MSG(diff == 0, "--sam-iou 1 changed %zu labels", diff);
        CHECK_MSG(l2.px[0] != 0 && other == 0, "whole-image SAM mask: label %d, %zu pixels differ", l2.px[0], other);
    }
    image_free(&l0); image_free(&l1); image_free(&l2);
    /* bad inputs: one line naming the file/option, non-zero exit */
    snprintf(cmd, sizeof cmd, "%s --sam-masks %s/sam --sam-iom 2 --out %s/b0 > /dev/null 2>%s/e", base, dir, dir, dir);
    snprintf(path, sizeof path, "%s/e", dir);
    CHECK(run_cmd(cmd, path, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "--sam-iom") != NULL, "stderr: %s", err);
    snprintf(cmd, sizeof cmd, "%s --sam-masks %s/nowhere --out %s/b1 > /dev/null 2>%s/e", base, dir, dir, dir);
    CHECK(run_cmd(cmd, path, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "not a folder") != NULL, "stderr: %s", err);
    const char *bad[] = {
        "[{\"segmentation\": {\"size\": [10, 10], \"counts\": \"0PP1\"}}]",   /* wrong size */
        "[{\"segmentation\": {\"size\": [%d, %d], \"counts\": \"0\\u0000P\"}}]",
        "[{\"segmentation\": {\"size\": [%d, %d], \"counts\": \"~~~\"}}]",     /* not RLE */
        "[{\"segmentation\": {\"size\": [%d, %d], \"counts\": \"06\"}}]",      /* too short */
        "{\"segmentation\": 1}",
        "[{\"segmentation\": {\"size\": [%d, %d], \"counts\": \"0PP1",        /* truncated */
        "[{\"segm\": 1}]",
    };
    const char *expect[] = {"is not the image's", "not a COCO compressed RLE", "malformed RLE",
                            "RLE covers", "not a JSON array", "input.sam.json", "no \"segmentation\""};
    for (int k = 0; k < 7; k++) {
        snprintf(js, sizeof js, bad[k], H, W);
        snprintf(path, sizeof path, "%s/sam/input.sam.json", dir);
        REQUIRE(write_text(path, js) == 0);
        snprintf(cmd, sizeof cmd, "%s --sam-masks %s/sam --out %s/bad%d > /dev/null 2>%s/e", base, dir, dir, k, dir);
        snprintf(path, sizeof path, "%s/e", dir);
        CHECK_MSG(run_cmd(cmd, path, err, sizeof err) != 0, "bad case %d accepted", k);
        CHECK_MSG(strstr(err, expect[k]) && strstr(err, "input.sam.json"), "bad case %d: stderr: %s", k, err);
        snprintf(path, sizeof path, "%s/bad%d/input.png", dir, k);
        CHECK_MSG(!file_exists(path), "bad case %d wrote labels", k);
    }
    /* an image without its file */
    snprintf(path, sizeof path, "%s/sam/input.sam.json", dir);
    remove(path);
    snprintf(cmd, sizeof cmd, "%s --sam-masks %s/sam --out %s/b9 > /dev/null 2>%s/e", base, dir, dir, dir);
    snprintf(path, sizeof path, "%s/e", dir);
    CHECK(run_cmd(cmd, path, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "no SAM masks"), "stderr: %s", err);
}
