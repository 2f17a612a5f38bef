/* test_sam_amg.c — the automatic mask generator's selection stage against upstream's records:
 * the fixtures' synthetic-logit runs (../shared/fixtures/sam, made with SysCV/sam-hq's
 * segment_anything), and tests/data/sam (the same generator on more stand-in logits: small-region
 * post-processing, > 1000 boxes with tied scores through torchvision's vanilla batched_nms path;
 * torch's sort and batched_nms orderings). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "rle.h"
#include "sam_amg.h"
#include "util.h"

static double frac(double v) { return v - floor(v); }

/* The stand-in predictor: grid point i at (px, py):
 *   r = 12 + 60 frac(0.618034 i), a = 2 + 30 frac(0.414214 i) (float64, then float32),
 *   logit = a (r - sqrt((x-px)^2 + (1.3 (y-py))^2)) / 4 [+ c (((7x + 13y) mod 17) - 8)],
 *   IoU = 0.3 + 0.7 frac(0.732051 i), or with ties 0.25 floor(4 frac(0.732051 i)) + 0.5. */
typedef struct { int next, h, w, ties; float c; } synth_ctx;

static carseg_status synth_predict(void *vctx, const double *pts, int n, float *lg, float *iou) {
    synth_ctx *c = vctx;
    int h = c->h, w = c->w;
    for (int k = 0; k < n; k++) {
        int i = c->next++;
        float r = (float)(12 + 60 * frac(0.618034 * i));
        float a = (float)(2 + 30 * frac(0.414214 * i));
        float px = (float)pts[2 * k], py = (float)pts[2 * k + 1];
        float *o = lg + (size_t)k * h * w;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float dx = (float)x - px, dy = 1.3f * ((float)y - py);
                float v = a * (r - sqrtf(dx * dx + dy * dy)) / 4.0f;
                if (c->c != 0.0f) v = v + c->c * (float)(((x * 7 + y * 13) % 17) - 8);
                o[(size_t)y * w + x] = v;
            }
        iou[k] = c->ties ? (float)(0.25 * floor(4 * frac(0.732051 * i)) + 0.5)
                         : (float)(0.3 + 0.7 * frac(0.732051 * i));
    }
    return CARSEG_OK;
}

static void params_from(const json *pj, cs_amg_params *p) {
    cs_amg_params_init(p);
    p->points_per_side = (int)json_num(pj, "points_per_side", p->points_per_side);
    p->points_per_batch = (int)json_num(pj, "points_per_batch", p->points_per_batch);
    p->pred_iou_thresh = json_num(pj, "pred_iou_thresh", p->pred_iou_thresh);
    p->stability_score_thresh = json_num(pj, "stability_score_thresh", p->stability_score_thresh);
    p->box_nms_thresh = json_num(pj, "box_nms_thresh", p->box_nms_thresh);
}

/* records equal: same masks bit for bit (RLE strings), order, boxes, areas, points; scores 1e-5 */
static int compare_records(const char *what, const cs_amg_result *r, const json *recs) {
    int bad = 0;
    CHECK_MSG(recs && recs->type == JSON_ARR, "%s: no records", what);
    if (!recs || recs->type != JSON_ARR) return 1;
    CHECK_MSG((size_t)r->n == recs->len, "%s: %d records, expected %zu", what, r->n, recs->len);
    if ((size_t)r->n != recs->len) bad = 1;
    for (int k = 0; k < r->n && (size_t)k < recs->len && bad < 5; k++) {
        const json *e = json_at(recs, (size_t)k);
        const cs_amg_mask *m = &r->masks[k];
        char *s = cs_rle_string(m->counts, m->n_counts);
        const char *es = json_str(json_get(e, "segmentation"), "counts", "");
        int ok = s && strcmp(s, es) == 0;
        const json *bb = json_get(e, "bbox"), *pc = json_at(json_get(e, "point_coords"), 0);
        for (int c = 0; c < 4; c++) ok &= json_at(bb, (size_t)c) && m->bbox[c] == json_at(bb, (size_t)c)->num;
        ok &= (double)m->area == json_num(e, "area", -1);
        ok &= fabs(m->predicted_iou - json_num(e, "predicted_iou", -9)) <= 1e-5;
        ok &= fabs(m->stability_score - json_num(e, "stability_score", -9)) <= 1e-5;
        ok &= pc && m->point[0] == json_at(pc, 0)->num && m->point[1] == json_at(pc, 1)->num;
        CHECK_MSG(ok, "%s: record %d differs: bbox [%d %d %d %d] area %llu iou %.9g stab %.9g pt (%g, %g) rle %s vs %s",
                  what, k, m->bbox[0], m->bbox[1], m->bbox[2], m->bbox[3],
                  (unsigned long long)m->area, m->predicted_iou, m->stability_score, m->point[0],
                  m->point[1], s ? s : "(null)", es);
        if (!ok) bad++;
        free(s);
    }
    return bad;
}

TEST(sam_amg_synthetic_fixtures) {
    const char *cases[] = {"coffee_360x240", "astronaut_256x320"};
    int ran = 0;
    for (int ci = 0; ci < 2; ci++) {
        char rel[128];
        snprintf(rel, sizeof rel, "fixtures/sam/%s/meta.json", cases[ci]);
        const char *path = shared_path(rel);
        if (!path || !file_exists(path)) SKIP("../shared/fixtures/sam missing");
        json *meta = json_parse_file(path);
        REQUIRE(meta);
        const json *size = json_get(meta, "size"), *amg = json_get(meta, "amg");
        int h = (int)json_at(size, 0)->num, w = (int)json_at(size, 1)->num;
        for (size_t i = 0; amg && i < amg->len; i++) {
            if (strncmp(amg->keys[i], "synthetic", 9) != 0) continue;
            const json *c = amg->kids[i];
            cs_amg_params p;
            params_from(json_get(c, "params"), &p);
            synth_ctx ctx = {0, h, w, 0, 0.0f};
            cs_amg_result r;
            CHECK_OK(cs_amg_run(synth_predict, &ctx, 1, h, w, &p, &r));
            CHECK(ctx.next == p.points_per_side * p.points_per_side);
            char what[160];
            snprintf(what, sizeof what, "%s %s", cases[ci], amg->keys[i]);
            CHECK(compare_records(what, &r, json_get(c, "records")) == 0);
            CHECK(r.n > 0);
            cs_amg_result_free(&r);
            ran++;
        }
        json_free(meta);
    }
    CHECK(ran == 2);
}

TEST(sam_amg_extra_cases) {
    if (!file_exists("tests/data/sam/amg_extra.json")) SKIP("tests/data/sam missing (run from the repo root)");
    json *d = json_parse_file("tests/data/sam/amg_extra.json");
    REQUIRE(d);
    const json *cases = json_get(d, "cases");
    REQUIRE(cases && cases->len >= 4);
    for (size_t i = 0; i < cases->len; i++) {
        const json *c = json_at(cases, i);
        cs_amg_params p;
        params_from(json_get(c, "params"), &p);
        p.min_mask_region_area = (int)json_num(c, "min_area", 0);
        int h = (int)json_num(c, "h", 0), w = (int)json_num(c, "w", 0);
        synth_ctx ctx = {0, h, w, (int)json_num(c, "ties", 0), (float)json_num(c, "c", 0)};
        cs_amg_result r;
        CHECK_OK(cs_amg_run(synth_predict, &ctx, 1, h, w, &p, &r));
        CHECK(compare_records(json_str(c, "name", "?"), &r, json_get(c, "records")) == 0);
        cs_amg_result_free(&r);
    }
    json_free(d);
}

/* the same records whatever the batch size and thread count */
TEST(sam_amg_batches_and_threads) {
    int h = 60, w = 80;
    cs_amg_params p;
    cs_amg_params_init(&p);
    p.points_per_side = 12;
    p.pred_iou_thresh = 0.4;
    p.stability_score_thresh = 0.5;
    cs_amg_result ref;
    synth_ctx c0 = {0, h, w, 1, 0.5f};
    CHECK_OK(cs_amg_run(synth_predict, &c0, 1, h, w, &p, &ref));
    REQUIRE(ref.n > 3);
    int batches[] = {1, 7, 144, 1000};
    int threads_before = carseg_get_threads();
    for (int b = 0; b < 4; b++) {
        p.points_per_batch = batches[b];
        carseg_set_threads(b + 1);
        synth_ctx c = {0, h, w, 1, 0.5f};
        cs_amg_result r;
        CHECK_OK(cs_amg_run(synth_predict, &c, 1, h, w, &p, &r));
        CHECK(r.n == ref.n);
        for (int k = 0; k < r.n && k < ref.n; k++) {
            CHECK(r.masks[k].n_counts == ref.masks[k].n_counts &&
                  memcmp(r.masks[k].counts, ref.masks[k].counts, r.masks[k].n_counts * 4) == 0);
            CHECK(r.masks[k].predicted_iou == ref.masks[k].predicted_iou);
        }
        cs_amg_result_free(&r);
    }
    carseg_set_threads(threads_before);
    cs_amg_result_free(&ref);
}

static int64_t *parse_ints(const char *s, int n) {
    int64_t *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    char *e;
    for (int i = 0; i < n; i++) { v[i] = strtoll(s, &e, 10); s = e; }
    return v;
}

TEST(sam_amg_torch_sort_and_nms_orders) {
    uint8_t *txt;
    size_t len;
    if (!file_exists("tests/data/sam/nms_ref.txt")) SKIP("tests/data/sam missing (run from the repo root)");
    CHECK_OK(read_file("tests/data/sam/nms_ref.txt", &txt, &len));
    int n_sort = 0, n_nms = 0;
    for (char *line = strtok((char *)txt, "\n"); line; line = strtok(NULL, "\n")) {
        char name[32];
        int n, off;
        if (sscanf(line, "sort %31s %d %n", name, &n, &off) == 2) {
            float *v = malloc((size_t)n * sizeof *v);
            for (int i = 0; i < n; i++) {
                switch (name[0]) {
                case 'a': v[i] = (float)(((i * 7919) % 13) / 4.0); break;
                case 'b': v[i] = i % 97 == 5 ? NAN : (float)(((i * 31) % 7) * 0.25); break;
                case 'c': v[i] = 1.0f; break;
                default:  v[i] = i % 3 ? (float)(n - i) : 0.5f; break;
                }
            }
            int64_t *exp = parse_ints(line + off, n), *got = malloc((size_t)n * sizeof *got);
            cs_amg_torch_sort_desc(v, n, got);
            CHECK_MSG(memcmp(exp, got, (size_t)n * sizeof *got) == 0, "sort %s differs from torch's", name);
            free(v); free(exp); free(got);
            n_sort++;
            continue;
        }
        double thr;
        int nk;
        if (sscanf(line, "nms %d %lf %d %n", &n, &thr, &nk, &off) == 3) {
            float *b = malloc((size_t)n * 4 * sizeof *b), *s = malloc((size_t)n * sizeof *s);
            for (int i = 0; i < n; i++) {
                int x0 = (i * 37) % 300, y0 = (i * 53) % 200, bw = 5 + (i * 11) % 60, bh = 5 + (i * 17) % 50;
                if (i % 29 == 3) bw = 0;
                b[4 * i] = (float)x0; b[4 * i + 1] = (float)y0;
                b[4 * i + 2] = (float)(x0 + bw); b[4 * i + 3] = (float)(y0 + bh);
                s[i] = (float)(((i * 13) % 5) * 0.2);
            }
            int64_t *exp = parse_ints(line + off, nk);
            int *keep = malloc((size_t)n * sizeof *keep);
            int got = cs_amg_batched_nms(b, s, n, thr, keep);
            int same = got == nk;
            for (int i = 0; same && i < nk; i++) same = keep[i] == exp[i];
            CHECK_MSG(same, "batched_nms n=%d thr=%g: %d kept, torchvision %d, or another order", n, thr, got, nk);
            free(b); free(s); free(exp); free(keep);
            n_nms++;
        }
    }
    free(txt);
    CHECK(n_sort == 20 && n_nms == 6);
}

TEST(sam_amg_point_grid) {
    double *g = cs_amg_point_grid(4);
    REQUIRE(g);
    const double side[4] = {0.125, 0.375, 0.625, 0.875};
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) {
            CHECK(g[(y * 4 + x) * 2] == side[x]);
            CHECK(g[(y * 4 + x) * 2 + 1] == side[y]);
        }
    free(g);
    g = cs_amg_point_grid(1);
    REQUIRE(g);
    CHECK(g[0] == 0.5 && g[1] == 0.5);
    free(g);
    CHECK(cs_amg_point_grid(0) == NULL);
}

TEST(sam_amg_remove_small_regions_basic) {
    /* 8x8: a 4x4 block with a 1-pixel hole, a 1-pixel island touching it only diagonally
     * (8-connected: same region), and a separate 2-pixel island */
    uint8_t m[64] = {0};
    for (int y = 1; y < 5; y++) for (int x = 1; x < 5; x++) m[y * 8 + x] = 1;
    m[2 * 8 + 2] = 0;           /* hole */
    m[5 * 8 + 5] = 1;           /* diagonal neighbour of (4,4) */
    m[7 * 8 + 0] = m[7 * 8 + 1] = 1;
    uint8_t a[64];
    memcpy(a, m, 64);
    CHECK(cs_amg_remove_small_regions(a, 8, 8, 2, 0) == 1);   /* the hole (1 px < 2) filled */
    CHECK(a[2 * 8 + 2] == 1);
    CHECK(cs_amg_remove_small_regions(a, 8, 8, 2, 1) == 0);   /* islands: 16 and 2 px: none < 2 */
    CHECK(cs_amg_remove_small_regions(a, 8, 8, 3, 1) == 1);   /* the 2-px island goes */
    CHECK(a[7 * 8] == 0 && a[7 * 8 + 1] == 0 && a[5 * 8 + 5] == 1);
    uint8_t e[64] = {0};
    CHECK(cs_amg_remove_small_regions(e, 8, 8, 10, 1) == 0);  /* empty: nothing to remove */
    e[0] = 1; e[63] = 1; e[62] = 1;
    CHECK(cs_amg_remove_small_regions(e, 8, 8, 10, 1) == 1);  /* all small: the largest stays */
    CHECK(e[0] == 0 && e[62] == 1 && e[63] == 1);
}

TEST(sam_amg_bad_params) {
    cs_amg_params p;
    cs_amg_params_init(&p);
    cs_amg_sel *s = NULL;
    p.points_per_side = 0;
    CHECK(cs_amg_sel_new(&p, 10, 10, &s) == CARSEG_EINVAL && !s);
    CHECK(strstr(carseg_last_error(), "points_per_side") != NULL);
    cs_amg_params_init(&p);
    p.box_nms_thresh = NAN;
    CHECK(cs_amg_sel_new(&p, 10, 10, &s) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "box_nms_thresh") != NULL);
    cs_amg_params_init(&p);
    CHECK(cs_amg_sel_new(&p, 0, 10, &s) == CARSEG_EINVAL);
    CHECK_OK(cs_amg_sel_new(&p, 10, 10, &s));
    CHECK(cs_amg_sel_add(s, NULL, NULL, NULL, 3, 1) == CARSEG_EINVAL);
    cs_amg_result r;
    CHECK_OK(cs_amg_sel_finish(s, &r));
    CHECK(r.n == 0);
    cs_amg_result_free(&r);
    cs_amg_sel_free(s);
}
