/* test_api.c — the public API (include/carseg.h): the ABI version, the model/segmenter split
 * against the internal path bit for bit, threads, prepared images, determinism of the text
 * caches, in-memory image decode and label PNG, every error path. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "car.h"
#include "carseg.h"
#include "check.h"
#include "classify.h"
#include "clip.h"
#include "crf.h"
#include "image.h"
#include "presets.h"
#include "prompts.h"
#include "tokenizer.h"
#include "util.h"

TEST(api_abi_version_matches_header) {
    CHECK(carseg_abi_version() == CARSEG_ABI_VERSION);
    CHECK(CARSEG_ABI_VERSION >= 1);
    CHECK(!strcmp(carseg_version(), CARSEG_VERSION));
}

static const char *GEN = "fixtures/clip_sg/model_f16.safetensors";
static const char *CLS = "fixtures/models/sc_f16.safetensors";
static const char *VOCAB = "clip/bpe_simple_vocab_16e6.txt.gz";
static const char *IMG = "fixtures/car/coffee300_voc/input.png";

/* 1 loaded, 0 fixtures missing (skip), -1 load failure */
static int open_model(carseg_car_model **m, char paths[3][512]) {
    const char *rel[3] = {GEN, CLS, VOCAB};
    for (int i = 0; i < 3; i++) {
        const char *p = shared_path(rel[i]);
        if (!p || !file_exists(p)) return 0;
        snprintf(paths[i], 512, "%s", p);
    }
    return carseg_car_model_open(paths[0], paths[1], paths[2], m) == CARSEG_OK ? 1 : -1;
}

#define OPEN_OR_SKIP(m, paths)                                   \
    do {                                                         \
        int r_ = open_model(&(m), paths);                        \
        if (r_ == 0) SKIP("fixtures missing");                   \
        REQUIRE(r_ == 1);                                        \
    } while (0)

static int load_image(image_u8 *im) {
    const char *p = shared_path(IMG);
    return p && image_load_rgb(p, im) == CARSEG_OK;
}

static const char *const CLASSES_A[] = {"cup", "table", "spoon", "coffee"};
static const char *const CLASSES_B[] = {"mug", "saucer", "wood"};

/* labels, scores and masks of two results are the same bits */
static int same_result(const carseg_result *a, const carseg_result *b) {
    int w = carseg_result_width(a), h = carseg_result_height(a), n = carseg_result_count(a);
    if (w != carseg_result_width(b) || h != carseg_result_height(b) || n != carseg_result_count(b))
        return 0;
    size_t hw = (size_t)w * h;
    if (memcmp(carseg_result_labels(a), carseg_result_labels(b), hw * sizeof(uint16_t))) return 0;
    for (int k = 0; k < n; k++) {
        float sa = carseg_result_score(a, k), sb = carseg_result_score(b, k);
        if (memcmp(&sa, &sb, sizeof sa)) return 0;
        if (memcmp(carseg_result_mask(a, k), carseg_result_mask(b, k), hw)) return 0;
    }
    return 1;
}

/* The public path equals car_segment with the parameters `carseg segment` builds, bit for bit:
 * a semantic preset with its thing/stuff-free list, user classes with fixes, bg words, single
 * template, CRF parameters; and the rounds record matches the internal per-round figures. */
TEST(api_segment_equals_internal) {
    carseg_car_model *m = NULL;
    char paths[3][512];
    OPEN_OR_SKIP(m, paths);
    image_u8 im;
    REQUIRE(load_image(&im));
    size_t hw = (size_t)im.w * im.h;
    clip_model *g = NULL, *c = NULL;
    tokenizer *tok = NULL;
    car_ctx *ctx = NULL;
    REQUIRE(clip_load(paths[0], &g) == CARSEG_OK && clip_load(paths[1], &c) == CARSEG_OK);
    REQUIRE(tok_open(paths[2], &tok) == CARSEG_OK && car_ctx_new(g, c, tok, &ctx) == CARSEG_OK);
    carseg_segmenter *s = NULL;
    CHECK_OK(carseg_segmenter_new(m, &s));
    static const char *const bgw[] = {"ground", "wall", "sky"};
    for (int variant = 0; variant < 2; variant++) {
        const car_preset *pr = preset_find("voc");
        car_params p = car_default_params();
        carseg_options o;
        carseg_options_init(&o);
        car_job job;
        memset(&job, 0, sizeof job);
        crf_params cp = crf_default_params();
        const char *const *cls;
        int n;
        if (variant == 0) {   /* the preset's settings and list, theta lowered for more rounds */
            CHECK_OK(carseg_options_preset(&o, "voc"));
            o.theta = 0.06f;
            p.eta = pr->eta, p.theta = 0.06f, p.lambda = pr->lambda;
            vp_parse(pr->prompts, &p.prompts);
            p.n_templates = pr->templates, p.bg_factor = pr->bg_factor;
            cls = pr->list->classes, n = pr->list->n;
            job.bg = CAR_BG_WORDS, job.nb = 23;
        } else {   /* user classes, every option off its default */
            o.eta = 0.3f, o.lambda = 0.5f, o.prompts = "circle,gray", o.templates = "single";
            o.fixes = CARSEG_FIX_Q3 | CARSEG_FIX_Q7 | CARSEG_FIX_Q17 | CARSEG_FIX_Q1;
            o.bg_words = bgw, o.n_bg_words = 3;
            o.crf_params.iters = 5, o.crf_params.bi_w = 3;
            p.eta = 0.3f, p.lambda = 0.5f, p.prompts = VP_CIRCLE | VP_GRAY, p.n_templates = 0;
            p.fix_gray = p.fix_box_clamp = p.fix_duplicates = p.cam_raw_names = 1;
            cp.iters = 5, cp.bi_w = 3;
            p.crf_p = &cp;
            cls = CLASSES_A, n = 4;
            job.bg = bgw, job.nb = 3;
        }
        job.p = job.stuff_p = p;
        job.classes = cls, job.n_classes = n;
        uint16_t *lab = malloc(hw * sizeof *lab);
        float *sc = malloc(sizeof(float) * (size_t)n);
        uint8_t *mk = malloc(hw * (size_t)n);
        car_stats st;
        memset(&st, 0, sizeof st);
        car_image *ci = NULL;
        REQUIRE(lab && sc && mk);
        CHECK_OK(car_image_new(ctx, &im, &st, &ci));
        CHECK_OK(car_segment(ctx, ci, &job, NULL, lab, sc, mk, &st));
        carseg_result *r = NULL;
        CHECK_OK(carseg_segment_rgb(s, im.px, im.w, im.h, variant == 0 ? NULL : cls, variant == 0 ? 0 : n,
                                    &o, &r));
        REQUIRE(r);
        CHECK(carseg_result_count(r) == n);
        CHECK(!memcmp(carseg_result_labels(r), lab, hw * sizeof *lab));
        for (int k = 0; k < n; k++) {
            CHECK(!memcmp(&sc[k], &(float){carseg_result_score(r, k)}, sizeof(float)));
            CHECK(!memcmp(carseg_result_mask(r, k), mk + (size_t)k * hw, hw));
            CHECK(!strcmp(carseg_result_class(r, k), cls[k]));
        }
        CHECK(carseg_result_rounds(r) == st.rounds_total);
        for (int i = 0; i < carseg_result_rounds(r) && i < CAR_STATS_ROUNDS; i++) {
            const int *live;
            const float *scores;
            const uint8_t *surv;
            int nl = carseg_result_round(r, i, &live, &scores, &surv);
            CHECK(nl == st.r_live[i]);
            int ns = 0;
            for (int j = 0; j < nl; j++) {
                ns += surv[j];
                CHECK(live[j] >= 0 && live[j] < n);
            }
            /* the next round's live queries are this round's survivors */
            if (i + 1 < carseg_result_rounds(r)) CHECK(carseg_result_round(r, i + 1, NULL, NULL, NULL) == ns);
            CHECK(carseg_result_round_pass(r, i) == 0);
        }
        CHECK(carseg_result_round(r, -1, NULL, NULL, NULL) == -1);
        CHECK(carseg_result_timing(r, "total") >= carseg_result_timing(r, "cam"));
        CHECK(carseg_result_timing(r, "prepare") > 0);
        CHECK(carseg_result_timing(r, "nonsense") == -1);
        /* CPU ms per stage, and the rounds' shares, which add up to the stage (one pass here) */
        static const char *const stages[6] = {"prepare", "text", "cam", "prompt", "classify", "crf"};
        for (int k = 0; k < 6; k++) {
            char nm[32];
            snprintf(nm, sizeof nm, "%s.cpu", stages[k]);
            CHECK(carseg_result_timing(r, nm) >= 0);
        }
        CHECK(carseg_result_timing(r, "cam.cpu") > 0 && carseg_result_timing(r, "prepare.cpu") > 0);
        int nr = carseg_result_rounds(r);
        REQUIRE(nr >= 2 && nr <= 8);
        double sum[3] = {0, 0, 0};
        static const char *const rs[3] = {"cam", "prompt", "classify"};
        for (int i = 1; i <= nr; i++)
            for (int k = 0; k < 3; k++) {
                char nm[32];
                snprintf(nm, sizeof nm, "round%d.%s", i, rs[k]);
                double t = carseg_result_timing(r, nm);
                CHECK(t >= 0);
                sum[k] += t;
            }
        for (int k = 0; k < 3; k++)
            CHECK(fabs(sum[k] - carseg_result_timing(r, rs[k])) < 1e-6 * (1 + sum[k]));
        CHECK(carseg_result_timing(r, "round1.cam.cpu") > 0);
        CHECK(carseg_result_timing(r, "round1.classify.cpu") >= 0);
        char nm[32];
        snprintf(nm, sizeof nm, "round%d.cam", nr + 1);
        CHECK(carseg_result_timing(r, nm) == -1);
        CHECK(carseg_result_timing(r, "round0.cam") == -1);
        CHECK(carseg_result_timing(r, "round1.crf") == -1);
        CHECK(carseg_result_timing(r, "round1.prompt.cpu") == -1);
        CHECK(carseg_result_timing(r, "cam.wall") == -1);
        CHECK(carseg_result_timing(r, "camx") == -1);
        CHECK(carseg_result_cams(r, 0) == NULL);
        char *js = NULL;
        CHECK_OK(carseg_result_json(r, "x.png", &js));
        CHECK(js && strstr(js, "\"mode\": \"semantic\"") && strstr(js, "\"image\": \"x.png\""));
        free(js);
        carseg_result_free(r);
        car_image_free(ci);
        free(lab), free(sc), free(mk);
    }
    carseg_segmenter_free(s);
    car_ctx_free(ctx);
    tok_close(tok);
    clip_free(c), clip_free(g);
    image_free(&im);
    carseg_car_model_close(m);
}

/* keep_cams: each surviving class's CAM is the last round's proposal (car_pass's cams_out);
 * the observer sees every round with the CAMs. */
typedef struct { int calls; int last_round; float cam_sum; } obs_t;
static int observe(const carseg_round *r, void *u) {
    obs_t *o = u;
    o->calls++;
    o->last_round = r->round;
    for (size_t i = 0; i < (size_t)r->n_live * r->w * r->h; i++) o->cam_sum += r->cams[i];
    return 0;
}
static int stop_now(const carseg_round *r, void *u) { (void)r, (void)u; return 1; }

TEST(api_keep_cams_and_observer) {
    carseg_car_model *m = NULL;
    char paths[3][512];
    OPEN_OR_SKIP(m, paths);
    image_u8 im;
    REQUIRE(load_image(&im));
    carseg_segmenter *s = NULL;
    CHECK_OK(carseg_segmenter_new(m, &s));
    carseg_options o;
    carseg_options_init(&o);
    o.keep_cams = 1;
    obs_t ob = {0, 0, 0};
    o.on_round = observe, o.on_round_user = &ob;
    carseg_result *r = NULL;
    CHECK_OK(carseg_segment_rgb(s, im.px, im.w, im.h, CLASSES_A, 4, &o, &r));
    REQUIRE(r);
    CHECK(ob.calls == carseg_result_rounds(r) && ob.calls >= 1 && ob.cam_sum > 0);
    size_t hw = (size_t)im.w * im.h;
    int live_any = 0;
    for (int k = 0; k < 4; k++) {
        const float *cm = carseg_result_cams(r, k);
        REQUIRE(cm);
        double sum = 0;
        for (size_t i = 0; i < hw; i++) sum += cm[i];
        if (carseg_result_score(r, k) > 0) {
            CHECK(sum > 0);
            live_any = 1;
        } else {
            CHECK(sum == 0);
        }
    }
    CHECK(live_any);
    /* the same run without keep_cams gives the same bits */
    carseg_result *r2 = NULL;
    o.keep_cams = 0, o.on_round = NULL;
    CHECK_OK(carseg_segment_rgb(s, im.px, im.w, im.h, CLASSES_A, 4, &o, &r2));
    CHECK(r2 && same_result(r, r2));
    o.on_round = stop_now;
    carseg_result *r3 = NULL;
    CHECK(carseg_segment_rgb(s, im.px, im.w, im.h, CLASSES_A, 4, &o, &r3) == CARSEG_EINVAL && !r3);
    CHECK(strstr(carseg_last_error(), "observer"));
    carseg_result_free(r), carseg_result_free(r2);
    carseg_segmenter_free(s);
    image_free(&im);
    carseg_car_model_close(m);
}

/* Determinism: a text's features do not depend on the other texts of the call nor on what the
 * cache saw before. */
TEST(api_text_features_independent_of_batch_and_history) {
    const char *gp = shared_path(CLS), *vp = shared_path(VOCAB);
    if (!gp || !vp || !file_exists(gp) || !file_exists(vp)) SKIP("fixtures missing");
    clip_model *mdl = NULL;
    tokenizer *tok = NULL;
    REQUIRE(clip_load(gp, &mdl) == CARSEG_OK && tok_open(vp, &tok) == CARSEG_OK);
    int E = mdl->cfg.embed;
    const char *one[] = {"a photo of a cat."};
    const char *many[] = {"a clean origami dog with a very long description of its many features.",
                          "x", "a photo of a cat.", "the sky", "a bright photo of a large red bus."};
    float *a = malloc(sizeof(float) * E), *b = malloc(sizeof(float) * 5 * E), *c2 = malloc(sizeof(float) * E);
    text_cache *t1 = NULL, *t2 = NULL;
    CHECK_OK(tc_new(mdl, tok, &t1));
    CHECK_OK(tc_new(mdl, tok, &t2));
    CHECK_OK(tc_get(t1, one, 1, a));
    CHECK_OK(tc_get(t2, many, 5, b));
    CHECK(!memcmp(a, b + 2 * (size_t)E, sizeof(float) * E));
    CHECK_OK(tc_get(t2, one, 1, c2));   /* from the cache */
    CHECK(!memcmp(a, c2, sizeof(float) * E));
    /* among many prompts of the same token length (several batches), in two orders, and through
     * the public encoder */
    const char *same[12] = {"a photo of a dog.", "a photo of a cow.", "a photo of a pig.",
                            "a photo of a bus.", "a photo of a car.", "a photo of a cat.",
                            "a photo of a bat.", "a photo of a fox.", "a photo of a owl.",
                            "a photo of a hen.", "a photo of a elk.", "a photo of a yak."};
    const char *rev[12];
    for (int i = 0; i < 12; i++) rev[i] = same[11 - i];
    float *s1 = malloc(sizeof(float) * 12 * E), *s2 = malloc(sizeof(float) * 12 * E);
    text_cache *t3 = NULL;
    CHECK_OK(tc_new(mdl, tok, &t3));
    CHECK_OK(tc_get(t3, same, 12, s1));
    CHECK(!memcmp(a, s1 + 5 * (size_t)E, sizeof(float) * E));
    CHECK_OK(carseg_clip_encode_texts(mdl, tok, rev, 12, s2));   /* unnormalised */
    float *u = malloc(sizeof(float) * E);
    CHECK_OK(carseg_clip_encode_texts(mdl, tok, one, 1, u));
    CHECK(!memcmp(u, s2 + 6 * (size_t)E, sizeof(float) * E));
    CHECK_OK(carseg_clip_encode_texts(mdl, tok, many, 5, s2));
    CHECK(!memcmp(u, s2 + 2 * (size_t)E, sizeof(float) * E));
    tc_free(t3);
    free(s1), free(s2), free(u);
    tc_free(t1), tc_free(t2);
    free(a), free(b), free(c2);
    tok_close(tok);
    clip_free(mdl);
}

/* A prepared image reused across class lists equals fresh runs; a segmenter whose caches saw
 * other lists first gives the same bits. */
TEST(api_prepared_reuse_equals_fresh) {
    carseg_car_model *m = NULL;
    char paths[3][512];
    OPEN_OR_SKIP(m, paths);
    image_u8 im;
    REQUIRE(load_image(&im));
    carseg_segmenter *s = NULL, *f1 = NULL, *f2 = NULL;
    CHECK_OK(carseg_segmenter_new(m, &s));
    CHECK_OK(carseg_segmenter_new(m, &f1));
    CHECK_OK(carseg_segmenter_new(m, &f2));
    carseg_prepared *p = NULL;
    CHECK_OK(carseg_prepare(s, im.px, im.w, im.h, NULL, &p));
    REQUIRE(p && carseg_prepared_width(p) == im.w && carseg_prepared_height(p) == im.h);
    carseg_result *ra = NULL, *rb = NULL, *fa = NULL, *fb = NULL, *rq = NULL, *fq = NULL;
    CHECK_OK(carseg_segment(s, p, CLASSES_A, 4, NULL, &ra));
    CHECK_OK(carseg_segment(s, p, CLASSES_B, 3, NULL, &rb));
    CHECK(carseg_result_timing(rb, "prepare") == 0);   /* reported once, by the first result */
    CHECK_OK(carseg_segment_rgb(f1, im.px, im.w, im.h, CLASSES_A, 4, NULL, &fa));
    CHECK_OK(carseg_segment_rgb(f2, im.px, im.w, im.h, CLASSES_B, 3, NULL, &fb));
    CHECK(ra && rb && fa && fb && same_result(ra, fa) && same_result(rb, fb));
    /* the Q8 fix on the same prepared image (its unprompted feature differs) */
    carseg_options o;
    carseg_options_init(&o);
    o.fixes = CARSEG_FIX_BUGS;
    CHECK_OK(carseg_segment(s, p, CLASSES_A, 4, &o, &rq));
    CHECK_OK(carseg_segment_rgb(f2, im.px, im.w, im.h, CLASSES_A, 4, &o, &fq));
    CHECK(rq && fq && same_result(rq, fq));
    carseg_result_free(ra), carseg_result_free(rb), carseg_result_free(fa);
    carseg_result_free(fb), carseg_result_free(rq), carseg_result_free(fq);
    carseg_prepared_free(p);
    carseg_segmenter_free(s), carseg_segmenter_free(f1), carseg_segmenter_free(f2);
    image_free(&im);
    carseg_car_model_close(m);
}

typedef struct {
    const carseg_car_model *m;
    const image_u8 *im;
    carseg_result *r;
    carseg_status st;
} job_t;

static void *thread_run(void *u) {
    job_t *j = u;
    carseg_segmenter *s = NULL;
    j->st = carseg_segmenter_new(j->m, &s);
    if (j->st == CARSEG_OK)
        j->st = carseg_segment_rgb(s, j->im->px, j->im->w, j->im->h, CLASSES_A, 4, NULL, &j->r);
    carseg_segmenter_free(s);
    return NULL;
}

/* Two threads, two segmenters, one model: the same bits as one thread. */
TEST(api_two_threads_one_model) {
    carseg_car_model *m = NULL;
    char paths[3][512];
    OPEN_OR_SKIP(m, paths);
    image_u8 im;
    REQUIRE(load_image(&im));
    job_t one = {m, &im, NULL, CARSEG_OK}, t[2] = {{m, &im, NULL, CARSEG_OK}, {m, &im, NULL, CARSEG_OK}};
    thread_run(&one);
    CHECK_OK(one.st);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) REQUIRE(pthread_create(&th[i], NULL, thread_run, &t[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK_OK(t[i].st);
        CHECK(t[i].r && one.r && same_result(t[i].r, one.r));
        carseg_result_free(t[i].r);
    }
    carseg_result_free(one.r);
    image_free(&im);
    carseg_car_model_close(m);
}

/* Referring mode equals car_refer with the CLI's refer settings (refcoco's, one template). */
TEST(api_refer_equals_internal) {
    carseg_car_model *m = NULL;
    char paths[3][512];
    OPEN_OR_SKIP(m, paths);
    image_u8 im;
    REQUIRE(load_image(&im));
    size_t hw = (size_t)im.w * im.h;
    clip_model *g = NULL, *c = NULL;
    tokenizer *tok = NULL;
    car_ctx *ctx = NULL;
    REQUIRE(clip_load(paths[0], &g) == CARSEG_OK && clip_load(paths[1], &c) == CARSEG_OK);
    REQUIRE(tok_open(paths[2], &tok) == CARSEG_OK && car_ctx_new(g, c, tok, &ctx) == CARSEG_OK);
    static const char *const ph[] = {"a cup of coffee", "the white cup"};
    const car_preset *rc0 = preset_find("refcoco");
    car_params p = car_default_params();
    p.eta = rc0->eta, p.theta = rc0->theta, p.lambda = rc0->lambda, p.n_templates = 0;
    vp_parse(rc0->prompts, &p.prompts);
    car_image *ci = NULL;
    uint8_t *mask = malloc(hw), *masks = malloc(hw * 2);
    float sc[2];
    CHECK_OK(car_image_new(ctx, &im, NULL, &ci));
    float *cams = malloc(sizeof(float) * hw * 2);
    CHECK_OK(car_refer(ctx, ci, ph, 2, CAR_BG_WORDS, 23, &p, NULL, mask, sc, masks, cams, NULL));
    carseg_segmenter *s = NULL;
    carseg_prepared *pi = NULL;
    carseg_result *r = NULL;
    CHECK_OK(carseg_segmenter_new(m, &s));
    CHECK_OK(carseg_prepare(s, im.px, im.w, im.h, NULL, &pi));
    carseg_options ko;
    carseg_options_init(&ko);
    ko.keep_cams = 1;
    CHECK_OK(carseg_refer(s, pi, ph, 2, &ko, &r));
    REQUIRE(r);
    for (int k = 0; k < 2; k++)
        CHECK(carseg_result_cams(r, k) && !memcmp(carseg_result_cams(r, k), cams + (size_t)k * hw, sizeof(float) * hw));
    free(cams);
    CHECK(carseg_result_is_refer(r) && carseg_result_count(r) == 2);
    const uint16_t *lab = carseg_result_labels(r);
    size_t diff = 0;
    for (size_t i = 0; i < hw; i++) diff += lab[i] != mask[i];
    CHECK(diff == 0);
    for (int k = 0; k < 2; k++) {
        CHECK(!memcmp(&sc[k], &(float){carseg_result_score(r, k)}, sizeof(float)));
        CHECK(!memcmp(carseg_result_mask(r, k), masks + (size_t)k * hw, hw));
    }
    CHECK(carseg_result_rounds(r) >= 1);
    char *js = NULL;
    CHECK_OK(carseg_result_json(r, NULL, &js));
    CHECK(js && strstr(js, "\"mode\": \"refer\"") && strstr(js, "\"image\": null"));
    free(js);
    /* a semantic call refuses a referring preset */
    carseg_options o;
    CHECK_OK(carseg_options_preset(&o, "refcoco"));
    carseg_result *bad = NULL;
    CHECK(carseg_segment(s, pi, CLASSES_A, 4, &o, &bad) == CARSEG_EINVAL && !bad);
    CHECK(strstr(carseg_last_error(), "referring preset"));
    carseg_result_free(r);
    carseg_prepared_free(pi);
    carseg_segmenter_free(s);
    car_image_free(ci);
    free(mask), free(masks);
    car_ctx_free(ctx);
    tok_close(tok);
    clip_free(c), clip_free(g);
    image_free(&im);
    carseg_car_model_close(m);
}

#define CHECK_EINVAL(expr, word)                                                   \
    do {                                                                           \
        CHECK((expr) == CARSEG_EINVAL);                                            \
        CHECK(carseg_last_error()[0] && strstr(carseg_last_error(), word));        \
    } while (0)

/* Every error path: EINVAL with a message naming the problem; outputs set to NULL. */
TEST(api_errors) {
    unsigned fx = 0;
    CHECK_EINVAL(carseg_fixes_parse("q1,q2", &fx), "'q2'");
    CHECK_OK(carseg_fixes_parse("Q3, q17", &fx));
    CHECK(fx == (CARSEG_FIX_Q3 | CARSEG_FIX_Q17));
    CHECK_OK(carseg_fixes_parse("bugs", &fx));
    CHECK(fx == CARSEG_FIX_BUGS);
    CHECK_OK(carseg_fixes_parse("all", &fx));
    CHECK(fx == CARSEG_FIX_ALL);
    CHECK_OK(carseg_fixes_parse("", &fx));
    CHECK(fx == 0);
    CHECK_EINVAL(carseg_fixes_parse(NULL, &fx), "NULL");
    CHECK(!strcmp(carseg_fix_name(CARSEG_FIX_Q8), "q8") && carseg_fix_name(CARSEG_FIX_Q1 | CARSEG_FIX_Q3) == NULL);
    carseg_options o;
    CHECK_EINVAL(carseg_options_preset(&o, "nonsense"), "voc");
    const char *const *cl;
    int n;
    CHECK_OK(carseg_preset_classes("voc", &cl, &n));
    CHECK(n == 20 && cl && cl[0]);
    CHECK_OK(carseg_preset_classes("refcoco", &cl, &n));
    CHECK(n == 0 && cl == NULL);
    CHECK_EINVAL(carseg_preset_classes("x", &cl, &n), "unknown preset");
    CHECK(carseg_presets_count() >= 9 && carseg_preset_name(0) && !carseg_preset_name(-1));
    carseg_car_model *m = (carseg_car_model *)1;
    CHECK(carseg_car_model_open("/nonexistent/g.safetensors", "/nonexistent/c", "/nonexistent/v", &m) != CARSEG_OK);
    CHECK(m == NULL && strstr(carseg_last_error(), "/nonexistent/g.safetensors"));
    CHECK_EINVAL(carseg_car_model_open(NULL, NULL, NULL, NULL), "out");
    CHECK_EINVAL(carseg_segmenter_new(NULL, &(carseg_segmenter *){0}), "model");
    CHECK_EINVAL(carseg_car_model_set_precision(NULL, CARSEG_PRECISION_FP32), "model");
    /* with a model */
    char paths[3][512];
    int r_ = open_model(&m, paths);
    if (r_ == 0) SKIP("fixtures missing");
    REQUIRE(r_ == 1);
    image_u8 im;
    REQUIRE(load_image(&im));
    carseg_segmenter *s = NULL;
    CHECK_OK(carseg_segmenter_new(m, &s));
    carseg_result *r = (carseg_result *)1;
    carseg_prepared *p = (carseg_prepared *)1;
    CHECK_EINVAL(carseg_prepare(NULL, im.px, im.w, im.h, NULL, &p), "segmenter");
    CHECK(p == NULL);
    CHECK_EINVAL(carseg_prepare(s, NULL, im.w, im.h, NULL, &p), "rgb");
    CHECK_EINVAL(carseg_prepare(s, im.px, 0, im.h, NULL, &p), "size");
    CHECK_EINVAL(carseg_segment(s, NULL, CLASSES_A, 4, NULL, &r), "image");
    CHECK(r == NULL);
    CHECK_OK(carseg_prepare(s, im.px, im.w, im.h, NULL, &p));
    CHECK_EINVAL(carseg_segment(NULL, p, CLASSES_A, 4, NULL, &r), "segmenter");
    CHECK_EINVAL(carseg_segment(s, p, CLASSES_A, 4, NULL, NULL), "out");
    CHECK_EINVAL(carseg_segment(s, p, CLASSES_A, 0, NULL, &r), "empty class list");
    CHECK_EINVAL(carseg_segment(s, p, NULL, 0, NULL, &r), "no class list");
    static const char *const holes[] = {"cup", ""};
    CHECK_EINVAL(carseg_segment(s, p, holes, 2, NULL, &r), "class 1 is empty");
    CHECK_EINVAL(carseg_refer(s, p, NULL, 1, NULL, &r), "phrases");
    CHECK_EINVAL(carseg_refer(s, p, holes, 0, NULL, &r), "empty phrase list");
#define BAD_OPT(field_set, word)                                                       \
    do {                                                                               \
        carseg_options_init(&o);                                                       \
        field_set;                                                                     \
        CHECK_EINVAL(carseg_segment(s, p, CLASSES_A, 4, &o, &r), word);                \
        CHECK(r == NULL);                                                              \
    } while (0)
    BAD_OPT(o.size = sizeof o - 8, "options.size");
    BAD_OPT(o.size = 0, "options.size");
    BAD_OPT(o.preset = "vocx", "unknown preset 'vocx'");
    BAD_OPT(o.prompts = "circle,glow", "'glow'");
    BAD_OPT(o.prompts = "", "prompts: empty");
    BAD_OPT(o.stuff_prompts = "halo", "'halo'");
    BAD_OPT(o.templates = "fifteen", "templates");
    BAD_OPT(o.fixes = 0x100, "fixes");
    BAD_OPT(o.eta = 1.5f, "eta");
    BAD_OPT(o.theta = -3, "theta");
    BAD_OPT(o.lambda = -0.1f, "lambda");
    BAD_OPT(o.crf = 2, "crf");
    BAD_OPT(o.crf_params.iters = -1, "crf");
    BAD_OPT((o.bg_words = CLASSES_A, o.n_bg_words = 0), "bg_words");
    BAD_OPT((o.bg_words = holes, o.n_bg_words = 2), "bg_words[1]");
    carseg_options_init(&o);
    o.size = 1;
    CHECK_EINVAL(carseg_segment_rgb(s, im.px, im.w, im.h, CLASSES_A, 4, &o, &r), "options.size");
    CHECK_EINVAL(carseg_prepare(s, im.px, im.w, im.h, &o, &(carseg_prepared *){0}), "options.size");
    /* an image prepared for another model */
    carseg_car_model *m2 = NULL;
    carseg_segmenter *s2 = NULL;
    CHECK_OK(carseg_car_model_open(paths[0], paths[0], paths[2], &m2));
    CHECK_OK(carseg_segmenter_new(m2, &s2));
    CHECK_EINVAL(carseg_segment(s2, p, CLASSES_A, 4, NULL, &r), "another model");
    /* accessors out of range */
    CHECK(carseg_result_class(NULL, 0) == NULL && carseg_result_mask(NULL, 0) == NULL);
    CHECK(carseg_result_count(NULL) == 0 && carseg_result_rounds(NULL) == 0);
    CHECK_EINVAL(carseg_result_json(NULL, NULL, &(char *){0}), "result");
    carseg_segmenter_free(s2);
    carseg_car_model_close(m2);
    carseg_prepared_free(p);
    carseg_segmenter_free(s);
    image_free(&im);
    carseg_car_model_close(m);
}

/* The in-memory label PNG is byte for byte the file; the decoder's pixel cap is checked from the
 * header and the decode equals carseg_image_load. */
TEST(api_image_decode_and_label_png) {
    const char *dir = test_tmpdir();
    char path[600];
    uint16_t lab[6 * 4];
    for (int i = 0; i < 24; i++) lab[i] = (uint16_t)(i % 5);
    for (int variant = 0; variant < 2; variant++) {
        if (variant) lab[7] = 300;   /* 16-bit */
        snprintf(path, sizeof path, "%s/l%d.png", dir, variant);
        CHECK_OK(carseg_labels_save_png(path, lab, 6, 4));
        uint8_t *f = NULL, *png = NULL;
        size_t fn = 0, pn = 0;
        CHECK_OK(read_file(path, &f, &fn));
        CHECK_OK(carseg_labels_encode_png(lab, 6, 4, 0, &png, &pn));
        CHECK(fn == pn && fn > 8 && !memcmp(f, png, fn));
        free(png);
        /* the CLI's count: classes + 1 */
        CHECK_OK(image_save_labels(path, lab, 6, 4, 400));
        free(f);
        CHECK_OK(read_file(path, &f, &fn));
        CHECK_OK(carseg_labels_encode_png(lab, 6, 4, 400, &png, &pn));
        CHECK(fn == pn && !memcmp(f, png, fn));
        free(png), free(f);
    }
    uint8_t *png = (uint8_t *)1;
    size_t pn;
    CHECK(carseg_labels_encode_png(NULL, 6, 4, 0, &png, &pn) == CARSEG_EINVAL && png == NULL);
    CHECK(carseg_labels_encode_png(lab, 0, 4, 0, &png, &pn) == CARSEG_EINVAL);
    const char *imgs[2] = {shared_path(IMG),
                           shared_path("data/voc_mini/VOCdevkit/VOC2012/JPEGImages/2011_000003.jpg")};
    for (int i = 0; i < 2; i++) {
        if (!imgs[i] || !file_exists(imgs[i])) continue;
        uint8_t *d = NULL, *rgb = NULL, *ref = NULL;
        size_t n = 0;
        int w, h, rw, rh;
        CHECK_OK(read_file(imgs[i], &d, &n));
        CHECK_OK(carseg_image_load(imgs[i], &ref, &rw, &rh));
        CHECK_OK(carseg_image_decode(d, n, 0, &rgb, &w, &h));
        CHECK(w == rw && h == rh && !memcmp(rgb, ref, (size_t)w * h * 3));
        carseg_image_free(rgb);
        CHECK_OK(carseg_image_decode(d, n, (int64_t)w * h, &rgb, &w, &h));
        carseg_image_free(rgb);
        rgb = (uint8_t *)1;
        CHECK(carseg_image_decode(d, n, (int64_t)w * h - 1, &rgb, &w, &h) == CARSEG_EFORMAT);
        CHECK(rgb == NULL && strstr(carseg_last_error(), "image too large"));
        int64_t pw = 0, ph = 0;
        CHECK(image_probe_size(d, n, &pw, &ph) == 1 && pw == rw && ph == rh);
        /* a truncated header: no size, the decoder refuses it */
        CHECK(carseg_image_decode(d, 20, 10, &rgb, &w, &h) == CARSEG_EFORMAT);
        carseg_image_free(ref);
        free(d);
    }
    /* a JPEG the header probe cannot read (junk bytes before a marker, which libjpeg skips with
     * a warning) is still refused by the decoder before its pixels are allocated */
    const char *jp = imgs[1];
    if (jp && file_exists(jp)) {
        uint8_t *d = NULL;
        size_t n = 0;
        CHECK_OK(read_file(jp, &d, &n));
        REQUIRE(n > 8 && d[2] == 0xFF);
        size_t seg = 4 + ((size_t)d[4] << 8 | d[5]);   /* after SOI + the first segment */
        uint8_t *j2 = malloc(n + 3);
        memcpy(j2, d, seg);
        j2[seg] = j2[seg + 1] = j2[seg + 2] = 0x00;
        memcpy(j2 + seg + 3, d + seg, n - seg);
        int64_t pw = 0, ph = 0;
        CHECK(image_probe_size(j2, n + 3, &pw, &ph) == 0);
        uint8_t *rgb2 = NULL;
        int w2, h2;
        CHECK_OK(carseg_image_decode(j2, n + 3, 0, &rgb2, &w2, &h2));   /* it decodes */
        carseg_image_free(rgb2);
        rgb2 = (uint8_t *)1;
        CHECK(carseg_image_decode(j2, n + 3, (int64_t)w2 * h2 - 1, &rgb2, &w2, &h2) == CARSEG_EFORMAT);
        CHECK(rgb2 == NULL && strstr(carseg_last_error(), "image too large (") == carseg_last_error());
        free(j2), free(d);
    }
    /* a forged header that claims a huge image is refused before any decoding */
    uint8_t fake[33] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                        0, 1, 0, 0, 0, 1, 0, 0, 8, 2, 0, 0, 0};
    uint8_t *rgb = NULL;
    int w, h;
    CHECK(carseg_image_decode(fake, sizeof fake, 1000000, &rgb, &w, &h) == CARSEG_EFORMAT);
    CHECK(strstr(carseg_last_error(), "65536x65536 > 1000000"));
    CHECK(carseg_image_decode(NULL, 0, 0, &rgb, &w, &h) == CARSEG_EINVAL);
    CHECK(carseg_image_decode(fake, sizeof fake, -1, &rgb, &w, &h) == CARSEG_EINVAL);
}

/* The lower-level CLIP pieces equal the one-call encoders bit for bit; zero-shot classification
 * gives probabilities. */
TEST(api_clip_pieces) {
    const char *mp = shared_path(CLS), *vp = shared_path(VOCAB), *ip = shared_path(IMG);
    if (!mp || !vp || !ip || !file_exists(mp) || !file_exists(vp) || !file_exists(ip)) SKIP("fixtures missing");
    carseg_clip *m = NULL;
    carseg_tokenizer *tok = NULL;
    REQUIRE(carseg_clip_load(mp, &m) == CARSEG_OK && carseg_tokenizer_open(vp, &tok) == CARSEG_OK);
    int E = carseg_clip_embed_dim(m), R = carseg_clip_image_size(m);
    const char *texts[3] = {"a cup", "a photo of a cat.", "x"};
    int32_t ids[3 * CARSEG_CONTEXT];
    for (int i = 0; i < 3; i++) CHECK(carseg_tokenize(tok, texts[i], ids + i * CARSEG_CONTEXT, CARSEG_CONTEXT) > 0);
    float *a = malloc(sizeof(float) * 3 * E), *b = malloc(sizeof(float) * 3 * E);
    CHECK_OK(carseg_clip_encode_texts(m, tok, texts, 3, a));
    CHECK_OK(carseg_clip_encode_tokens(m, ids, 3, CARSEG_CONTEXT, b));
    CHECK(!memcmp(a, b, sizeof(float) * 3 * E));
    CHECK(carseg_clip_encode_tokens(m, ids, 3, 10, b) == CARSEG_EINVAL);
    uint8_t *rgb = NULL;
    int w, h;
    CHECK_OK(carseg_image_load(ip, &rgb, &w, &h));
    float *x = malloc(sizeof(float) * 2 * 3 * R * R), *f2 = malloc(sizeof(float) * 2 * E), *f1 = malloc(sizeof(float) * E);
    CHECK_OK(carseg_clip_preprocess(m, rgb, w, h, x));
    CHECK_OK(carseg_clip_preprocess(m, rgb, w / 2, h, x + 3 * R * R));   /* another image: the left half's rows */
    CHECK_OK(carseg_clip_encode_images(m, x, 2, 0, f2));
    CHECK_OK(carseg_clip_encode_image_rgb(m, rgb, w, h, 0, f1));
    CHECK(!memcmp(f1, f2, sizeof(float) * E));
    CHECK_OK(carseg_clip_encode_image_rgb(m, rgb, w / 2, h, 0, f1));
    CHECK(!memcmp(f1, f2 + E, sizeof(float) * E));
    char *js = NULL;
    CHECK_OK(carseg_clip_config_json(m, &js));
    CHECK(js && strstr(js, "\"embed\": ") && strstr(js, "\"precision\": \"fp32\""));
    free(js);
    const char *classes[2] = {"cup", "dog"};
    float p[2];
    CHECK_OK(carseg_clip_classify(m, tok, rgb, w, h, 0, classes, 2, NULL, 0, p));
    CHECK_NEAR(p[0] + p[1], 1.0, 1e-5);
    const char *bad_tpl[1] = {"no placeholder"};
    CHECK(carseg_clip_classify(m, tok, rgb, w, h, 0, classes, 2, bad_tpl, 1, p) == CARSEG_EINVAL);
    const char *const *tpls;
    CHECK(carseg_car_templates(&tpls) == 15 && strstr(tpls[0], "{}"));
    free(a), free(b), free(x), free(f1), free(f2);
    carseg_image_free(rgb);
    carseg_tokenizer_close(tok);
    carseg_clip_free(m);
}

/* A preset with thing + stuff passes: each round's live queries are class indices of its own pass
 * (round 1 of a pass: all of them), and the pass flag says which. */
TEST(api_rounds_of_two_passes) {
    carseg_car_model *m = NULL;
    char paths[3][512];
    OPEN_OR_SKIP(m, paths);
    image_u8 im;
    REQUIRE(load_image(&im));
    const car_preset *pr = preset_find("context");
    REQUIRE(pr && pr->list && pr->list->n_stuff > 0 && pr->list->n_things > 0);
    carseg_segmenter *s = NULL;
    carseg_result *r = NULL;
    CHECK_OK(carseg_segmenter_new(m, &s));
    carseg_options o;
    CHECK_OK(carseg_options_preset(&o, "context"));
    CHECK_OK(carseg_segment_rgb(s, im.px, im.w, im.h, NULL, 0, &o, &r));
    REQUIRE(r && carseg_result_count(r) == pr->list->n);
    int seen_pass[2] = {0, 0};
    for (int i = 0; i < carseg_result_rounds(r); i++) {
        const int *live;
        int nl = carseg_result_round(r, i, &live, NULL, NULL), pass = carseg_result_round_pass(r, i);
        REQUIRE(pass == 0 || pass == 1);
        const int *ids = pass ? pr->list->stuff : pr->list->things;
        int nids = pass ? pr->list->n_stuff : pr->list->n_things;
        if (!seen_pass[pass]++) CHECK(nl == nids);
        for (int j = 0; j < nl; j++) {
            int in = 0;
            for (int k = 0; k < nids && !in; k++) in = ids[k] == live[j];
            CHECK(in);
        }
    }
    CHECK(seen_pass[0] && seen_pass[1]);
    CHECK(carseg_result_round_pass(r, 0) == 1);   /* the stuff pass runs first */
    carseg_result_free(r);
    carseg_segmenter_free(s);
    image_free(&im);
    carseg_car_model_close(m);
}
