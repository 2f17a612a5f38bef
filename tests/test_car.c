/* test_car.c — the CaR recurrence against the upstream fixtures (fixtures/car/<case>), the
 * hoisted path against a naive one, edge cases, and the `carseg segment` CLI end to end. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "car.h"
#include "check.h"
#include "gemm_amx.h"
#include "classify.h"
#include "clip.h"
#include "image.h"
#include "presets.h"
#include "prompts.h"
#include "tokenizer.h"
#include "util.h"

/* Acceptance: scores within 1e-4 of the reference (the -O2 build gets ~2e-5). The sanitizer
 * build (-O1, no vectorisation) moves a few CAM values across the prompt threshold eta, which
 * changes a prompted image by some pixels: 1.2e-4 was seen there. */
#if defined(__SANITIZE_ADDRESS__)
#define SCORE_TOL 3e-4
#else
#define SCORE_TOL 1e-4
#endif

typedef struct {
    clip_model *gen, *cls;
    tokenizer *tok;
    car_ctx *ctx;
} models;

static int load_models(models *m, int cls_is_gen) {
    memset(m, 0, sizeof *m);
    const char *g = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *c = shared_path("fixtures/models/sc_f16.safetensors");
    const char *v = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (!g || !c || !v || !file_exists(g) || !file_exists(c) || !file_exists(v)) return 0;
    if (clip_load(g, &m->gen) != CARSEG_OK) return -1;
    if (cls_is_gen) m->cls = m->gen;
    else if (clip_load(c, &m->cls) != CARSEG_OK) return -1;
    if (tok_open(v, &m->tok) != CARSEG_OK) return -1;
    if (car_ctx_new(m->gen, m->cls, m->tok, &m->ctx) != CARSEG_OK) return -1;
    return 1;
}

static void free_models(models *m) {
    car_ctx_free(m->ctx);
    tok_close(m->tok);
    if (m->cls != m->gen) clip_free(m->cls);
    clip_free(m->gen);
}

static const char *fx(const char *cs, const char *rel) {
    char buf[512];
    snprintf(buf, sizeof buf, "fixtures/car/%s/%s", cs, rel);
    return shared_path(buf);
}

/* The rounds of a pass as the observer saw them: each round's scores, survivors and CAMs. */
enum { MAX_ROUNDS = 16 };
typedef struct {
    int n;
    int n_live[MAX_ROUNDS], n_keep[MAX_ROUNDS];
    float *scores[MAX_ROUNDS], *cams[MAX_ROUNDS];
    char **survivors[MAX_ROUNDS];
    int H, W;
} rounds_seen;

static carseg_status see_round(const car_round *r, void *user) {
    rounds_seen *rs = user;
    if (rs->n == MAX_ROUNDS) return CARSEG_OK;
    int k = rs->n++;
    size_t cam_n = (size_t)r->n_live * r->H * r->W;
    rs->n_live[k] = r->n_live, rs->n_keep[k] = r->n_keep, rs->H = r->H, rs->W = r->W;
    rs->scores[k] = malloc(sizeof(float) * (size_t)r->n_live);
    rs->cams[k] = malloc(sizeof(float) * cam_n);
    rs->survivors[k] = malloc(sizeof(char *) * (size_t)r->n_keep);
    memcpy(rs->scores[k], r->scores, sizeof(float) * (size_t)r->n_live);
    memcpy(rs->cams[k], r->cams, sizeof(float) * cam_n);
    for (int i = 0; i < r->n_keep; i++) rs->survivors[k][i] = (char *)r->queries[r->live[r->keep[i]]];
    return CARSEG_OK;
}

static void rounds_free(rounds_seen *rs) {
    for (int k = 0; k < rs->n; k++) free(rs->scores[k]), free(rs->cams[k]), free(rs->survivors[k]);
}

/* Runs one fixture case through car_pass with a round observer, compares round by round. */
static void run_fixture(const char *cs) {
    const char *mp = fx(cs, "meta.json");
    if (!mp || !file_exists(mp)) SKIP("CaR fixtures missing");
    json *meta = json_parse_file(mp);
    REQUIRE(meta);
    const json *args = json_get(meta, "args");
    int cls_is_gen = !strcmp(json_str(args, "cls", ""), "sg");
    models M;
    int lm = load_models(&M, cls_is_gen);
    if (lm == 0) { json_free(meta); SKIP("fixture models or vocabulary missing"); }
    REQUIRE(lm == 1);
    image_u8 im;
    CHECK_OK(image_load_rgb(fx(cs, "input.png"), &im));
    const json *q = json_get(meta, "queries"), *bgj = json_get(meta, "bg_cls");
    int n = (int)q->len, nb = (int)bgj->len;
    const char **queries = malloc(sizeof(char *) * (size_t)n), **bg = malloc(sizeof(char *) * (size_t)nb);
    for (int i = 0; i < n; i++) queries[i] = json_at(q, (size_t)i)->str;
    for (int i = 0; i < nb; i++) bg[i] = json_at(bgj, (size_t)i)->str;
    car_params p = car_default_params();
    p.eta = (float)json_num(meta, "mask_threshold_eta", 0.4);
    p.theta = (float)json_num(meta, "confidence_threshold_theta", 0.6);
    p.lambda = (float)json_num(meta, "clipes_threshold_lambda", 0.4);
    const json *vpt = json_get(meta, "visual_prompt_type");
    p.prompts = 0;
    for (size_t i = 0; i < vpt->len; i++) {
        unsigned t;
        CHECK_OK(vp_parse(json_at(vpt, i)->str, &t));
        p.prompts |= t;
    }
    rounds_seen seen = {0};
    car_dump dump = {"", see_round, &seen};
    car_stats st;
    memset(&st, 0, sizeof st);
    car_image *ci = NULL;
    CHECK_OK(car_image_new(M.ctx, &im, &st, &ci));
    REQUIRE(ci);
    size_t hw = (size_t)im.w * im.h;
    uint8_t *masks = malloc(hw * (size_t)n);
    float *scores = malloc(sizeof(float) * (size_t)n);
    CHECK_OK(car_pass(M.ctx, ci, queries, n, bg, nb, &p, &dump, masks, scores, NULL, &st));
    int nit = (int)json_num(meta, "n_iterations", 0);
    double worst_s = 0, worst_c = 0;
    CHECK_MSG(st.rounds == nit, "%s: %d rounds, reference %d", cs, st.rounds, nit);
    CHECK_MSG(seen.n == st.rounds, "%s: the observer saw %d rounds of %d", cs, seen.n, st.rounds);
    for (int r = 1; r <= nit && r <= seen.n; r++) {
        char rel[64];
        snprintf(rel, sizeof rel, "iter%02d/stage.json", r);
        json *ref = json_parse_file(fx(cs, rel));
        REQUIRE(ref);
        const json *rs = json_get(ref, "diag_scores");
        REQUIRE(rs && (int)rs->len == seen.n_live[r - 1]);
        double worst = 0;
        for (size_t i = 0; i < rs->len; i++) {
            double d = fabs(seen.scores[r - 1][i] - json_at(rs, i)->num);
            worst = d > worst ? d : worst;
        }
        CHECK_MSG(worst <= SCORE_TOL, "%s round %d: diagonal scores off by %.3g", cs, r, worst);
        worst_s = worst > worst_s ? worst : worst_s;
        const json *rsv = json_get(ref, "survivors");
        REQUIRE(rsv);
        int nk = seen.n_keep[r - 1];
        CHECK_MSG(nk == (int)rsv->len, "%s round %d: %d survivors, reference %zu", cs, r, nk, rsv->len);
        for (int i = 0; i < nk && i < (int)rsv->len; i++) {
            char *t = car_format(CAR_CAM_TEMPLATE, seen.survivors[r - 1][i]);
            CHECK_MSG(!strcmp(t, json_at(rsv, (size_t)i)->str), "%s round %d survivor %d: %s vs %s", cs, r, i,
                      t, json_at(rsv, (size_t)i)->str);
            free(t);
        }
        /* CAMs of the round (where the fixture kept them) */
        snprintf(rel, sizeof rel, "iter%02d/masks.npy", r);
        const char *mref = fx(cs, rel);
        if (mref && file_exists(mref)) {
            float *b;
            int nd;
            int64_t sb[8];
            CHECK_OK(npy_read_f32(mref, &b, &nd, sb));
            REQUIRE(sb[0] == seen.n_live[r - 1] && sb[1] == seen.H && sb[2] == seen.W);
            const float *a = seen.cams[r - 1];
            CHECK_CLOSE("CAMs", a, b, (size_t)(sb[0] * sb[1] * sb[2]), 0, 1e-3);
            for (size_t k = 0; k < (size_t)(sb[0] * sb[1] * sb[2]); k++)
                worst_c = fabs(a[k] - b[k]) > worst_c ? fabs(a[k] - b[k]) : worst_c;
            free(b);
        }
        json_free(ref);
    }
    /* final scores and the label map */
    float *fs;
    int nd;
    int64_t sh[8];
    CHECK_OK(npy_read_f32(fx(cs, "final_scores.npy"), &fs, &nd, sh));
    CHECK_CLOSE("final scores", scores, fs, (size_t)n, 0, SCORE_TOL);
    free(fs);
    npy_array lref;
    CHECK_OK(npy_read(fx(cs, "label_map.npy"), &lref));
    uint16_t *lab = calloc(hw, sizeof(uint16_t));
    int *ids = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = i;
    /* assign_label over this single pass */
    for (int i = 0; i < n; i++)
        if (scores[i] > 0)
            for (size_t t = 0; t < hw; t++)
                if (masks[(size_t)i * hw + t]) lab[t] = (uint16_t)(i + 1);
    size_t same = 0;
    for (size_t t = 0; t < hw; t++) same += lab[t] == ((int32_t *)lref.data)[t];
    CHECK_MSG(same >= hw * 999 / 1000, "%s: label map equal on %zu of %zu pixels", cs, same, hw);
    fprintf(stderr, "  %s: %d rounds, scores within %.2g, CAMs within %.2g, label map equal on %.4f%% of pixels\n",
            cs, st.rounds, worst_s, worst_c, 100.0 * same / hw);
    npy_free(&lref);
    free(lab), free(ids), free(masks), free(scores), free(queries), free(bg);
    rounds_free(&seen);
    car_image_free(ci);
    image_free(&im);
    free_models(&M);
    json_free(meta);
}

TEST(car_fixture_chelsea_voc) { run_fixture("chelsea_voc"); }
TEST(car_fixture_coffee300_voc) { run_fixture("coffee300_voc"); }
TEST(car_fixture_astronaut_cocolike) { run_fixture("astronaut_cocolike"); }

/* The hoisted path (trunk once, prompts prepared once, images encoded once, text cache) gives
 * exactly the naive path's result (trunk per round, images encoded per template, no cache). */
TEST(car_hoisted_equals_naive) {
    models M;
    int lm = load_models(&M, 0);
    if (lm == 0) SKIP("fixture models or vocabulary missing");
    REQUIRE(lm == 1);
    image_u8 im;
    const char *ip = fx("coffee300_voc", "input.png");
    if (!ip) SKIP("CaR fixtures missing");
    CHECK_OK(image_load_rgb(ip, &im));
    static const char *q[] = {"cup", "person with clothes,people,human", "table"};
    car_params p = car_default_params();
    p.theta = 0.2f;
    size_t hw = (size_t)im.w * im.h;
    uint8_t *m1 = malloc(hw * 3), *m2 = malloc(hw * 3);
    float s1[3], s2[3], *c1 = malloc(sizeof(float) * hw * 3), *c2 = malloc(sizeof(float) * hw * 3);
    car_stats a, b;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
    car_image *ci;
    CHECK_OK(car_image_new(M.ctx, &im, &a, &ci));
    long g0, k0, g1, k1, g2, k2;
    car_ctx_text_counts(M.ctx, &g0, &k0);
    CHECK_OK(car_pass(M.ctx, ci, q, 3, CAR_BG_WORDS, 23, &p, NULL, m1, s1, c1, &a));
    car_ctx_text_counts(M.ctx, &g1, &k1);
    /* second run: every text feature comes from the cache */
    CHECK_OK(car_pass(M.ctx, ci, q, 3, CAR_BG_WORDS, 23, &p, NULL, m1, s1, c1, &a));
    car_ctx_text_counts(M.ctx, &g2, &k2);
    CHECK(g2 == g1 && k2 == k1 && k1 > k0);
    car_params pn = p;
    pn.naive = 1;
    CHECK_OK(car_pass(M.ctx, ci, q, 3, CAR_BG_WORDS, 23, &pn, NULL, m2, s2, c2, &b));
    CHECK(a.rounds == b.rounds);
    CHECK(!memcmp(s1, s2, sizeof s1));
    CHECK(!memcmp(m1, m2, hw * 3));
    CHECK(!memcmp(c1, c2, sizeof(float) * hw * 3));
    CHECK(b.image_encodes == 15 * a.image_encodes / 2);   /* a counted two passes */
    free(m1), free(m2), free(c1), free(c2);
    car_image_free(ci);
    image_free(&im);
    free_models(&M);
}

/* More live queries than one classifier chunk (CLS_CHUNK = 28): the chunked batches give
 * exactly the naive path's result (one template keeps the naive path cheap). */
TEST(car_hoisted_equals_naive_chunks) {
    models M;
    int lm = load_models(&M, 0);
    if (lm == 0) SKIP("fixture models or vocabulary missing");
    REQUIRE(lm == 1);
    image_u8 im;
    const char *ip = fx("coffee300_voc", "input.png");
    if (!ip) SKIP("CaR fixtures missing");
    CHECK_OK(image_load_rgb(ip, &im));
    const car_preset *coco = preset_find("coco-object");
    REQUIRE(coco && coco->list && coco->list->n >= 40);
    enum { N = 40 };
    const char *const *q = coco->list->classes;
    car_params p = car_default_params();
    p.n_templates = 1;
    p.theta = 0.03f;
    size_t hw = (size_t)im.w * im.h;
    uint8_t *m1 = malloc(hw * N), *m2 = malloc(hw * N);
    float s1[N], s2[N];
    car_stats a, b;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
    car_image *ci;
    CHECK_OK(car_image_new(M.ctx, &im, &a, &ci));
    CHECK_OK(car_pass(M.ctx, ci, q, N, CAR_BG_WORDS, 23, &p, NULL, m1, s1, NULL, &a));
    car_params pn = p;
    pn.naive = 1;
    CHECK_OK(car_pass(M.ctx, ci, q, N, CAR_BG_WORDS, 23, &pn, NULL, m2, s2, NULL, &b));
    CHECK(a.rounds == b.rounds && a.r_live[0] == N);
    CHECK(!memcmp(s1, s2, sizeof s1));
    CHECK(!memcmp(m1, m2, hw * N));
    free(m1), free(m2);
    car_image_free(ci);
    image_free(&im);
    free_models(&M);
}

/* A class list of 1 and of 200, a 17x23 image, duplicate names, an all-background guard. */
TEST(car_edge_cases) {
    models M;
    int lm = load_models(&M, 0);
    if (lm == 0) SKIP("fixture models or vocabulary missing");
    REQUIRE(lm == 1);
    const char *ip = fx("coffee300_voc", "input.png");
    if (!ip) SKIP("CaR fixtures missing");
    image_u8 big, im;
    CHECK_OK(image_load_rgb(ip, &big));
    CHECK_OK(image_resize_bicubic(&big, 23, 17, &im));
    size_t hw = (size_t)im.w * im.h;
    car_image *ci;
    CHECK_OK(car_image_new(M.ctx, &im, NULL, &ci));
    car_params p = car_default_params();
    /* one class: P = [[1]] -> it survives, two rounds */
    static const char *one[] = {"cup"};
    uint8_t *m = malloc(hw * 200);
    float sc[200];
    car_stats st;
    memset(&st, 0, sizeof st);
    CHECK_OK(car_pass(M.ctx, ci, one, 1, CAR_BG_WORDS, 23, &p, NULL, m, sc, NULL, &st));
    CHECK(st.rounds == 2);
    CHECK_NEAR(sc[0], 1.0, 1e-6);
    /* 200 classes (the COCO list and numbered variants) */
    const car_preset *coco = preset_find("coco-object");
    char *names[200];
    for (int i = 0; i < 200; i++) {
        names[i] = malloc(96);
        if (i < 80) snprintf(names[i], 96, "%s", coco->list->classes[i]);
        else snprintf(names[i], 96, "%s number %d", coco->list->classes[i % 80], i / 80);
    }
    CHECK_OK(car_pass(M.ctx, ci, (const char *const *)names, 200, CAR_BG_WORDS, 23, &p, NULL, m, sc, NULL, &st));
    int pos = 0;
    for (int i = 0; i < 200; i++) pos += sc[i] > 0;
    CHECK(pos >= 1);
    for (int i = 0; i < 200; i++) free(names[i]);
    /* duplicates: reference behaviour maps both to the first; the fix keeps them apart */
    static const char *dup[] = {"cup", "cup", "person"};
    p.theta = 0;
    CHECK_OK(car_pass(M.ctx, ci, dup, 3, CAR_BG_WORDS, 23, &p, NULL, m, sc, NULL, &st));
    CHECK(sc[1] == 0);
    p.fix_duplicates = 1;
    CHECK_OK(car_pass(M.ctx, ci, dup, 3, CAR_BG_WORDS, 23, &p, NULL, m, sc, NULL, &st));
    CHECK(sc[0] > 0 && sc[1] > 0 && sc[2] > 0);
    /* Q9: an image within one 16x16 patch gets all-zero CAMs (the box clamp of Q7 leaves no box);
     * upstream crashes in round 1 here, carseg keeps the zeros, in both guard modes */
    {
        image_u8 tiny;
        CHECK_OK(image_resize_bicubic(&big, 12, 10, &tiny));
        car_image *ti;
        CHECK_OK(car_image_new(M.ctx, &tiny, NULL, &ti));
        static const char *q3[] = {"cup", "person", "table"};
        car_params pz = car_default_params();
        pz.theta = 0;
        float *cams = malloc(sizeof(float) * 120 * 3);
        for (int fixg = 0; fixg <= 1; fixg++) {
            pz.fix_zero_guard = fixg;
            memset(&st, 0, sizeof st);
            CHECK_OK(car_pass(M.ctx, ti, q3, 3, CAR_BG_WORDS, 23, &pz, NULL, m, sc, cams, &st));
            float mx = 0;
            size_t on = 0;
            for (int i = 0; i < 360; i++) mx = cams[i] > mx ? cams[i] : mx, on += m[i];
            CHECK(mx == 0 && on == 0 && st.rounds == 2);
        }
        free(cams);
        car_image_free(ti);
        image_free(&tiny);
    }
    /* the quirk fixes run (Q1, Q3, Q4, Q8): a valid result, the reference's path is tested above */
    static const char *three[] = {"cup", "person", "table"};
    car_params pf = car_default_params();
    pf.prompts = VP_GRAY | VP_BLUR | VP_CIRCLE;
    pf.fix_gray = pf.fix_crf_colors = pf.fix_center_crop = pf.cam_raw_names = 1;
    CHECK_OK(car_pass(M.ctx, ci, three, 3, CAR_BG_WORDS, 23, &pf, NULL, m, sc, NULL, &st));
    CHECK(sc[0] > 0 || sc[1] > 0 || sc[2] > 0);
    /* semantic job with a thing/stuff split (the stuff pass uses the things as background) */
    static const char *ts[] = {"cup", "table", "wall", "floor"};
    static const int th[] = {0, 1}, su[] = {2, 3};
    car_job job;
    memset(&job, 0, sizeof job);
    job.classes = ts, job.n_classes = 4, job.things = th, job.n_things = 2, job.stuff = su, job.n_stuff = 2;
    job.bg = CAR_BG_WORDS, job.nb = 23, job.p = car_default_params(), job.stuff_p = job.p;
    uint16_t *lab = malloc(sizeof(uint16_t) * hw);
    CHECK_OK(car_segment(M.ctx, ci, &job, NULL, lab, sc, NULL, &st));
    int okl = 1;
    for (size_t i = 0; i < hw; i++) okl &= lab[i] <= 4;
    CHECK(okl);
    /* referring mode */
    static const char *ph[] = {"a person drinking coffee", "the man"};
    uint8_t *rm = malloc(hw);
    CHECK_OK(car_refer(M.ctx, ci, ph, 2, CAR_BG_WORDS, 23, &p, NULL, rm, sc, NULL, NULL, &st));
    size_t area = 0;
    for (size_t i = 0; i < hw; i++) area += rm[i];
    CHECK(area > 0);
    free(lab), free(rm), free(m);
    car_image_free(ci);
    image_free(&im), image_free(&big);
    free_models(&M);
}

/* `carseg segment` end to end, and its error paths (one line, non-zero, nothing written). */
TEST(car_cli_segment) {
    const char *bin = getenv("CARSEG_BIN");
    const char *g = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *c = shared_path("fixtures/models/sc_f16.safetensors");
    const char *v = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    const char *ip = fx("coffee300_voc", "input.png");
    if (!bin) SKIP("CARSEG_BIN not set");
    if (!g || !c || !v || !ip) SKIP("fixtures missing");
    const char *dir = test_tmpdir();
    char cmd[4096], path[1024];
    snprintf(cmd, sizeof cmd,
             "%s segment %s --preset voc --theta 0.06 --generator %s --classifier %s --vocab %s "
             "--out %s/out --dump %s/dump --quiet > %s/stdout.txt",
             bin, ip, g, c, v, dir, dir, dir);
    CHECK(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/out/input.png", dir);
    image_u8 lab;
    CHECK_OK(image_load_indexed(path, &lab));
    npy_array lref;
    CHECK_OK(npy_read(fx("coffee300_voc", "label_map.npy"), &lref));
    if (lab.px && lref.data) {
        size_t hw = (size_t)lab.w * lab.h, same = 0;
        for (size_t i = 0; i < hw; i++) same += lab.px[i] == ((int32_t *)lref.data)[i];
        CHECK_MSG(same >= hw * 999 / 1000, "CLI label map equal on %zu of %zu", same, hw);
    }
    image_free(&lab);
    npy_free(&lref);
    static const char *files[] = {"out/input.overlay.png", "out/input.json", "dump/round1.json",
                                  "dump/round1_cams.npy", "dump/round3.json", "dump/final_masks.npy",
                                  "dump/labels.png"};
    for (int i = 0; i < 7; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        CHECK_MSG(file_exists(path), "missing %s", files[i]);
    }
    snprintf(path, sizeof path, "%s/out/input.json", dir);
    json *j = json_parse_file(path);
    CHECK(j && json_num(j, "rounds", 0) == 3);
    CHECK_MSG(j && !strcmp(json_str(j, "precision", ""), "fp32"), "precision: %s",
              j ? json_str(j, "precision", "(none)") : "(no json)");
    json_free(j);
    /* referring mode with a referring preset */
    snprintf(cmd, sizeof cmd,
             "%s segment %s --preset refcoco --refer 'a cup of coffee' --refer 'the cup' "
             "--generator %s --classifier %s --vocab %s --out %s/ref --quiet --precision auto "
             "> /dev/null", bin, ip, g, c, v, dir);
    CHECK(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/ref/input.json", dir);
    j = json_parse_file(path);   /* auto: bf16x3 where AMX runs, else fp32 */
    const char *want = gemm_amx_check() == CARSEG_OK ? "bf16x3" : "fp32";
    CHECK_MSG(j && !strcmp(json_str(j, "precision", ""), want), "precision: %s, expected %s",
              j ? json_str(j, "precision", "(none)") : "(no json)", want);
    json_free(j);
    snprintf(path, sizeof path, "%s/ref/input.png", dir);
    CHECK_OK(image_load_indexed(path, &lab));
    if (lab.px) {
        int ok01 = 1;
        for (size_t i = 0; i < (size_t)lab.w * lab.h; i++) ok01 &= lab.px[i] <= 1;
        CHECK(ok01);
    }
    image_free(&lab);
    /* errors: one line on stderr, exit 1, no output folder created */
    static const char *bad[] = {"--preset nonsense", "--classes ''", "--classes-file /nonexistent",
                                "--classes cat --generator /nonexistent.safetensors"};
    for (int i = 0; i < 4; i++) {
        snprintf(cmd, sizeof cmd, "CARSEG_OFFLINE=1 %s segment %s %s --vocab %s --classifier %s --out %s/bad%d 2>%s/err.txt",
                 bin, ip, bad[i], v, c, dir, i, dir);
        int rc = system(cmd);
        CHECK_MSG(rc != 0, "'%s' succeeded", bad[i]);
        snprintf(path, sizeof path, "%s/bad%d", dir, i);
        CHECK_MSG(!file_exists(path), "'%s' created the output folder", bad[i]);
        snprintf(path, sizeof path, "%s/err.txt", dir);
        uint8_t *err;
        size_t len;
        if (read_file(path, &err, &len) == CARSEG_OK) {
            size_t lines = 0;
            for (size_t k = 0; k < len; k++) lines += err[k] == '\n';
            CHECK_MSG(lines == 1 && !strncmp((char *)err, "carseg: error: ", 15), "'%s': stderr '%s'",
                      bad[i], (char *)err);
            free(err);
        }
    }
    /* a model of the wrong kind (the vocabulary file given as the generator) */
    snprintf(cmd, sizeof cmd, "%s segment %s --classes cat --generator %s --classifier %s --vocab %s "
             "--out %s/bad8 2>%s/err.txt", bin, ip, v, c, v, dir, dir);
    CHECK(system(cmd) != 0);
    snprintf(path, sizeof path, "%s/bad8", dir);
    CHECK(!file_exists(path));
    snprintf(cmd, sizeof cmd, "%s segment /nonexistent.png --classes cat --generator %s --classifier %s "
             "--vocab %s --out %s/bad9 2>/dev/null", bin, g, c, v, dir);
    CHECK(system(cmd) != 0);
    snprintf(path, sizeof path, "%s/bad9", dir);
    CHECK(!file_exists(path));
}

/* A 2000×1500 image through the whole method (issue 3). The generator then sees 2000×1504
 * (125×94 patches, an 11750² affinity squared once): ~45 s and ~3.6 GB with the tiny fixture
 * models on 2 cores, so it is opt-in: CARSEG_HEAVY=big (or any list containing "big"). */
TEST(car_large_image_2000x1500) {
    const char *h = getenv("CARSEG_HEAVY");
    if (!h || !strstr(h, "big")) SKIP("set CARSEG_HEAVY=big to run the 2000x1500 image (~45 s, ~3.6 GB)");
    models M;
    int lm = load_models(&M, 0);
    if (lm == 0) SKIP("fixture models or vocabulary missing");
    REQUIRE(lm == 1);
    const char *ip = fx("astronaut_cocolike", "input.png");
    if (!ip) SKIP("CaR fixtures missing");
    image_u8 src, im;
    CHECK_OK(image_load_rgb(ip, &src));
    CHECK_OK(image_resize_bicubic(&src, 2000, 1500, &im));
    car_image *ci;
    CHECK_OK(car_image_new(M.ctx, &im, NULL, &ci));
    car_params p = car_default_params();
    static const char *cls[] = {"person", "rocket", "flag", "sky"};
    size_t hw = (size_t)im.w * im.h;
    uint8_t *m = malloc(hw * 4);
    float sc[4];
    car_stats st;
    memset(&st, 0, sizeof st);
    CHECK_OK(car_pass(M.ctx, ci, cls, 4, CAR_BG_WORDS, 23, &p, NULL, m, sc, NULL, &st));
    CHECK(st.rounds >= 2);
    int alive = 0;
    for (int i = 0; i < 4; i++) alive += sc[i] > 0;
    CHECK(alive >= 1);   /* at least one query always survives */
    size_t on = 0;
    for (size_t i = 0; i < hw * 4; i++) {
        CHECK(m[i] <= 1);
        on += m[i];
    }
    CHECK(on > 0);
    free(m);
    car_image_free(ci);
    image_free(&im);
    image_free(&src);
    free_models(&M);
}

/* The whole method gives the same bits at any thread count (OpenMP's and OpenBLAS's): a semantic
 * job on a fixture image with the fixture models (both towers, Grad-CAM proposals, the
 * classifier's prompted images, the CRF, the label map): labels, scores and masks, and a
 * referring pass's mask and scores. A fresh context per count, so no text feature is cached from
 * another count. Thread counts 1, 2, 3, 4, 7 (16 is in the per-stage tests). */
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
TEST(car_thread_count_invariant) {
    models M;
    int lm = load_models(&M, 0);
    if (lm == 0) SKIP("fixture models or vocabulary missing");
    REQUIRE(lm == 1);
    const char *ip = fx("chelsea_voc", "input.png");
    if (!ip || !file_exists(ip)) {
        free_models(&M);
        SKIP("CaR fixtures missing");
    }
    image_u8 im;
    CHECK_OK(image_load_rgb(ip, &im));
    static const char *cls[] = {"cat", "dog", "sofa", "person", "tv monitor"};
    static const char *ph[] = {"a cat lying down", "the cat"};
    enum { N = 5 };
    static const int counts[] = TEST_THREAD_COUNTS;
    enum { NC = sizeof counts / sizeof counts[0] };
    car_job job;
    memset(&job, 0, sizeof job);
    job.classes = cls, job.n_classes = N, job.bg = CAR_BG_WORDS, job.nb = 23;
    job.p = car_default_params();
    job.p.n_templates = 2;   /* the text tower still runs on every query, at a fraction of the time */
    job.stuff_p = job.p;
    size_t hw = (size_t)im.w * im.h;
    uint16_t *lab[NC];
    uint8_t *mk[NC], *rm[NC];
    float sc[NC][N], rs[NC][2];
    int nt0 = carseg_get_threads(), bt0 = openblas_get_num_threads();
    for (int t = 0; t < NC; t++) {
        carseg_set_threads(counts[t]);
        openblas_set_num_threads(counts[t]);
        lab[t] = malloc(hw * sizeof(uint16_t)), mk[t] = malloc(hw * N), rm[t] = malloc(hw);
        car_ctx *ctx = NULL;
        CHECK_OK(car_ctx_new(M.gen, M.cls, M.tok, &ctx));
        REQUIRE(ctx);
        car_image *ci = NULL;
        CHECK_OK(car_image_new(ctx, &im, NULL, &ci));
        REQUIRE(ci);
        CHECK_OK(car_segment(ctx, ci, &job, NULL, lab[t], sc[t], mk[t], NULL));
        CHECK_OK(car_refer(ctx, ci, ph, 2, CAR_BG_WORDS, 23, &job.p, NULL, rm[t], rs[t], NULL, NULL, NULL));
        car_image_free(ci);
        car_ctx_free(ctx);
    }
    carseg_set_threads(nt0);
    openblas_set_num_threads(bt0);
    for (int t = 1; t < NC; t++) {
        CHECK_MSG(!memcmp(lab[0], lab[t], hw * sizeof(uint16_t)), "label maps of 1 and %d threads differ", counts[t]);
        CHECK_MSG(!memcmp(sc[0], sc[t], sizeof sc[0]), "scores of 1 and %d threads differ", counts[t]);
        CHECK_MSG(!memcmp(mk[0], mk[t], hw * N), "masks of 1 and %d threads differ", counts[t]);
        CHECK_MSG(!memcmp(rm[0], rm[t], hw) && !memcmp(rs[0], rs[t], sizeof rs[0]),
                  "referring mask or scores of 1 and %d threads differ", counts[t]);
    }
    for (int t = 0; t < NC; t++) free(lab[t]), free(mk[t]), free(rm[t]);
    image_free(&im);
    free_models(&M);
}
