/* test_sam_cli.c — `carseg sam` (prompt mode and --auto) and `carseg segment --sam MODEL` end to
 * end on the fixture HQ-SAM (../shared/fixtures/sam): the generator's records over the real network
 * equal upstream's (masks bit for bit, scores within 1e-5), prompt logits within 1e-4 relative,
 * --sam MODEL equal to --sam-masks with the records `carseg sam --auto` wrote, hostile arguments
 * and files give one line and a non-zero exit with nothing written. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carseg.h"
#include "check.h"
#include "util.h"

static char *slurp(const char *path, size_t *n) {
    uint8_t *d = NULL;
    *n = 0;
    if (read_file(path, &d, n) != CARSEG_OK) return NULL;
    return (char *)d;
}

static const char *CASES[2] = {"coffee_360x240", "astronaut_256x320"};

static const char *fx(const char *c, const char *f) {
    static char buf[4][1024];
    static int k;
    char rel[512];
    snprintf(rel, sizeof rel, "fixtures/sam/%s%s%s", c ? c : "", c ? "/" : "", f);
    const char *p = shared_path(rel);
    if (!p || !file_exists(p)) return NULL;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s", p);
    return buf[k];
}

/* runs cmd (stderr to errf); returns the exit status */
static void compare_records(const char *what, const json *ref, const char *got_path) {
    json *got = json_parse_file(got_path);
    REQUIRE(got);
    CHECK_MSG(got->len == ref->len, "%s: %zu records, upstream %zu", what, got->len, ref->len);
    for (size_t k = 0; k < got->len && k < ref->len; k++) {
        const json *r = json_at(ref, k), *g = json_at(got, k);
        const json *rs = json_get(json_get(r, "segmentation"), "counts");
        const json *gs = json_get(json_get(g, "segmentation"), "counts");
        CHECK_MSG(rs && gs && !strcmp(rs->str, gs->str), "%s record %zu: masks differ", what, k);
        CHECK_MSG(json_num(r, "area", -1) == json_num(g, "area", -2), "%s record %zu: area", what, k);
        CHECK_MSG(fabs(json_num(r, "predicted_iou", 0) - json_num(g, "predicted_iou", 9)) < 1e-5,
                  "%s record %zu: predicted_iou %g vs %g", what, k, json_num(g, "predicted_iou", 9),
                  json_num(r, "predicted_iou", 0));
        CHECK_MSG(fabs(json_num(r, "stability_score", 0) - json_num(g, "stability_score", 9)) < 1e-5,
                  "%s record %zu: stability_score", what, k);
        const json *rb = json_get(r, "bbox"), *gb = json_get(g, "bbox");
        for (int j = 0; rb && gb && j < 4; j++)
            CHECK_MSG(json_at(rb, j)->num == json_at(gb, j)->num, "%s record %zu: bbox", what, k);
        const json *rp = json_at(json_get(r, "point_coords"), 0), *gp = json_at(json_get(g, "point_coords"), 0);
        CHECK_MSG(rp && gp && json_at(rp, 0)->num == json_at(gp, 0)->num &&
                  json_at(rp, 1)->num == json_at(gp, 1)->num, "%s record %zu: point", what, k);
    }
    json_free(got);
}

TEST(sam_cli_auto_equals_upstream) {
    const char *bin = getenv("CARSEG_BIN");
    char model_buf[1024];
    const char *model = fx(NULL, "samt.safetensors");
    if (model) model = strcpy(model_buf, model);
    if (!bin) SKIP("CARSEG_BIN not set");
    if (!model) SKIP("fixtures/sam missing (set CARSEG_SHARED)");
    const char *dir = test_tmpdir();
    int runs = 0;
    for (int c = 0; c < 2; c++) {
        char ipb[1024], mpb[1024];
        const char *ip = fx(CASES[c], "input.png"), *mp = fx(CASES[c], "meta.json");
        REQUIRE(ip && mp);
        ip = strcpy(ipb, ip), mp = strcpy(mpb, mp);
        REQUIRE(ip && mp);
        json *meta = json_parse_file(mp);
        REQUIRE(meta);
        const json *amg = json_get(meta, "amg");
        for (size_t i = 0; amg && i < amg->len; i++) {
            if (!strncmp(amg->keys[i], "synthetic", 9)) continue;   /* test_sam_amg.c's */
            const json *prm = json_get(amg->kids[i], "params");
            char cmd[4096], out[1024], opts[512];
            int o = snprintf(opts, sizeof opts, "--points-per-side %d",
                             (int)json_num(prm, "points_per_side", 32));
            /* upstream's defaults where the case leaves them */
            o += snprintf(opts + o, sizeof opts - o, " --pred-iou %.17g --stability %.17g --nms %.17g",
                          json_num(prm, "pred_iou_thresh", 0.88), json_num(prm, "stability_score_thresh", 0.95),
                          json_num(prm, "box_nms_thresh", 0.7));
            snprintf(out, sizeof out, "%s/auto_%d_%zu", dir, c, i);
            snprintf(cmd, sizeof cmd, "%s sam %s --model %s --auto %s --out %s > /dev/null 2>&1", bin,
                     ip, model, opts, out);
            CHECK_MSG(test_run(cmd) == 0, "%s", cmd);
            char what[256], path[1100];
            snprintf(what, sizeof what, "%s %s", CASES[c], amg->keys[i]);
            snprintf(path, sizeof path, "%s/input.sam.json", out);
            compare_records(what, json_get(amg->kids[i], "records"), path);
            snprintf(path, sizeof path, "%s/input.sam.png", out);
            CHECK(file_exists(path));
            runs++;
        }
        json_free(meta);
    }
    CHECK(runs >= 3);   /* coffee p16_car + p8_all, astronaut p8_all */
}

/* logits of the prompts (point, box) against upstream's predict */
TEST(sam_cli_prompts_equal_upstream) {
    const char *bin = getenv("CARSEG_BIN");
    char model_buf[1024];
    const char *model = fx(NULL, "samt.safetensors");
    if (model) model = strcpy(model_buf, model);
    if (!bin) SKIP("CARSEG_BIN not set");
    if (!model) SKIP("fixtures/sam missing (set CARSEG_SHARED)");
    const char *dir = test_tmpdir();
    for (int c = 0; c < 2; c++) {
        char ipb[1024], mpb[1024];
        const char *ip = fx(CASES[c], "input.png"), *mp = fx(CASES[c], "meta.json");
        REQUIRE(ip && mp);
        ip = strcpy(ipb, ip), mp = strcpy(mpb, mp);
        json *meta = json_parse_file(mp);
        REQUIRE(meta);
        const json *pts = json_get(meta, "points"), *box = json_get(meta, "box");
        char pargs[1024] = "", bargs[256];
        size_t o = 0;
        for (size_t k = 0; k < pts->len; k++)
            o += snprintf(pargs + o, sizeof pargs - o, " --point %.9g,%.9g", json_at(json_at(pts, k), 0)->num,
                          json_at(json_at(pts, k), 1)->num);
        snprintf(bargs, sizeof bargs, " --box %g,%g,%g,%g", json_at(box, 0)->num, json_at(box, 1)->num,
                 json_at(box, 2)->num, json_at(box, 3)->num);
        const struct { const char *flags, *args, *ref, *iou; } v[] = {
            {"", pargs, "points_mm1_hq0_logits.npy", "points_mm1_hq0"},
            {" --hq-only", pargs, "points_mm1_hq1_logits.npy", "points_mm1_hq1"},
            {" --single", pargs, "points_mm0_hq0_logits.npy", "points_mm0_hq0"},
            {" --single --hq-only", pargs, "points_mm0_hq1_logits.npy", "points_mm0_hq1"},
            {" --single", bargs, "box_logits.npy", "box"},
        };
        for (int t = 0; t < 5; t++) {
            char cmd[4096], out[1024], npy[1100];
            snprintf(out, sizeof out, "%s/p_%d_%d", dir, c, t);
            snprintf(npy, sizeof npy, "%s/logits.npy", dir);
            snprintf(cmd, sizeof cmd, "%s sam %s --model %s%s%s --logits %s --out %s > /dev/null 2>&1",
                     bin, ip, model, v[t].args, v[t].flags, npy, out);
            CHECK_MSG(test_run(cmd) == 0, "%s", cmd);
            float *a = NULL, *b = NULL;
            int na, nb;
            int64_t sa[8], sb[8];
            CHECK_OK(npy_read_f32(npy, &a, &na, sa));
            CHECK_OK(npy_read_f32(fx(CASES[c], v[t].ref), &b, &nb, sb));
            if (a && b) {
                /* predict() of one box gives (1, H, W); ours is (n = 1, k = 1, H, W) */
                if (nb == 3) sb[3] = sb[2], sb[2] = sb[1], sb[1] = 1, nb = 4;
                REQUIRE(na == 4 && nb == 4);
                CHECK_MSG(sa[0] == sb[0] && sa[1] == sb[1] && sa[2] == sb[2] && sa[3] == sb[3],
                          "%s %s: shape", CASES[c], v[t].ref);
                size_t n = (size_t)(sa[0] * sa[1] * sa[2] * sa[3]);
                double mx = 0, md = 0;
                for (size_t i = 0; i < n; i++) {
                    mx = fabs(b[i]) > mx ? fabs(b[i]) : mx;
                    md = fabs(a[i] - b[i]) > md ? fabs(a[i] - b[i]) : md;
                }
                CHECK_MSG(md <= 1e-4 * mx, "%s %s: logits off by %.3g of %.3g", CASES[c], v[t].ref, md, mx);
            }
            free(a), free(b);
            /* the records' predicted IoU against upstream's */
            char path[1100];
            snprintf(path, sizeof path, "%s/input.sam.json", out);
            json *got = json_parse_file(path);
            const json *ref = json_get(json_get(json_get(meta, "predictor"), v[t].iou), "iou");
            REQUIRE(got && ref);
            CHECK(got->len == ref->len);
            for (size_t k = 0; k < got->len && k < ref->len; k++)
            {
                /* (n, 1) per prompt; predict() of the box: (1,) */
                const json *e = json_at(ref, k);
                const json *r0 = e && e->type == JSON_ARR ? json_at(e, 0) : e;
                REQUIRE(r0);
                CHECK_MSG(fabs(json_num(json_at(got, k), "predicted_iou", 9) - r0->num) < 1e-5,
                          "%s %s record %zu: IoU", CASES[c], v[t].iou, k);
            }
            json_free(got);
        }
        json_free(meta);
    }
}

/* CaR + SAM in-process (--sam MODEL) equals --sam-masks with the records carseg sam --auto wrote */
TEST(sam_cli_segment_sam_model) {
    const char *bin = getenv("CARSEG_BIN");
    char model_buf[1024];
    const char *model = fx(NULL, "samt.safetensors");
    if (model) model = strcpy(model_buf, model);
    const char *g = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *cl = shared_path("fixtures/models/sc_f16.safetensors");
    const char *vb = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    const char *ip = shared_path("fixtures/car/coffee300_voc/input.png");
    if (!bin) SKIP("CARSEG_BIN not set");
    if (!model || !g || !cl || !vb || !ip || !file_exists(ip) || !file_exists(g)) SKIP("fixtures missing");
    const char *dir = test_tmpdir();
    char cmd[8192], base[4096];
    snprintf(cmd, sizeof cmd, "%s sam %s --model %s --auto --points-per-side 8 --pred-iou 0 --stability 0 "
             "--out %s/recs > /dev/null 2>&1", bin, ip, model, dir);
    REQUIRE(test_run(cmd) == 0);
    snprintf(base, sizeof base, "%s segment %s --classes cup,person,table --theta 0 --generator %s "
             "--classifier %s --vocab %s --quiet --sam-iom 0 --sam-iou 0", bin, ip, g, cl, vb);
    snprintf(cmd, sizeof cmd, "%s --sam-masks %s/recs --out %s/a > /dev/null 2>&1", base, dir, dir);
    CHECK(test_run(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s --sam %s --sam-points 8 --sam-pred-iou 0 --sam-stability 0 --out %s/b "
             "> /dev/null 2>&1", base, model, dir);
    CHECK(test_run(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s --out %s/c > /dev/null 2>&1", base, dir);
    CHECK(test_run(cmd) == 0);
    char pa[1100], pb[1100], pc[1100];
    snprintf(pa, sizeof pa, "%s/a/input.png", dir);
    snprintf(pb, sizeof pb, "%s/b/input.png", dir);
    snprintf(pc, sizeof pc, "%s/c/input.png", dir);
    size_t la, lb, lc;
    char *a = slurp(pa, &la), *b = slurp(pb, &lb), *c = slurp(pc, &lc);
    CHECK_MSG(a && b && la == lb && !memcmp(a, b, la), "--sam MODEL and --sam-masks give other label maps");
    /* the refinement did something (one whole-image SAM mask relabels everything) */
    CHECK_MSG(a && c && (la != lc || memcmp(a, c, la)), "CaR + SAM left the label map unchanged");
    free(a), free(b), free(c);
}

TEST(sam_cli_errors) {
    const char *bin = getenv("CARSEG_BIN");
    char model_buf[1024];
    const char *model = fx(NULL, "samt.safetensors");
    if (model) model = strcpy(model_buf, model);
    char ipb[1024];
    const char *ip = fx(CASES[0], "input.png");
    if (ip) ip = strcpy(ipb, ip);
    if (!bin) SKIP("CARSEG_BIN not set");
    if (!model || !ip) SKIP("fixtures/sam missing (set CARSEG_SHARED)");
    const char *dir = test_tmpdir();
    char trunc[1100], err[1100];
    snprintf(trunc, sizeof trunc, "%s/trunc.safetensors", dir);
    snprintf(err, sizeof err, "%s/err.txt", dir);
    size_t n;
    char *d = slurp(model, &n);
    REQUIRE(d);
    FILE *f = fopen(trunc, "wb");
    REQUIRE(f);
    fwrite(d, 1, n / 3, f);
    fclose(f);
    free(d);
    const struct { const char *args; int code; const char *msg; } v[] = {
        {"--model /nonexistent.pth --point 5,5", 1, "/nonexistent.pth"},
        {"--model TRUNC --point 5,5", 1, "trunc.safetensors"},
        {"--model MODEL --point 5", 2, "--point expects"},
        {"--model MODEL --point 5,5,7", 1, "label must be 1"},
        {"--model MODEL --box 9,9,1,1", 1, "--box 9,9,1,1"},
        {"--model MODEL --auto --point 5,5", 1, "--auto takes no"},
        {"--model MODEL", 1, "give prompts"},
        {"--model MODEL --auto --points-per-side 0", 1, "points_per_side"},
        {"--model MODEL --auto --nms 2", 1, "nms"},
        {"--model MODEL --frobnicate", 2, "unknown option"},
    };
    for (int k = 0; k < 10; k++) {
        char args[2048], cmd[4096], out[1100], e[2048];
        snprintf(args, sizeof args, "%s", v[k].args);
        char *p;
        if ((p = strstr(args, "MODEL"))) {
            char t[2048];
            snprintf(t, sizeof t, "%.*s%s%s", (int)(p - args), args, model, p + 5);
            snprintf(args, sizeof args, "%s", t);
        }
        if ((p = strstr(args, "TRUNC"))) {
            char t[2048];
            snprintf(t, sizeof t, "%.*s%s%s", (int)(p - args), args, trunc, p + 5);
            snprintf(args, sizeof args, "%s", t);
        }
        snprintf(out, sizeof out, "%s/e%d", dir, k);
        snprintf(cmd, sizeof cmd, "%s sam %s %s --out %s > /dev/null 2>%s", bin, ip, args, out, err);
        int rc = test_run(cmd);
        size_t el;
        char *es = slurp(err, &el);
        snprintf(e, sizeof e, "%s", es ? es : "");
        free(es);
        CHECK_MSG(rc == v[k].code, "`%s`: exit %d, expected %d (%s)", v[k].args, rc, v[k].code, e);
        CHECK_MSG(strstr(e, v[k].msg) != NULL, "`%s`: stderr lacks '%s': %s", v[k].args, v[k].msg, e);
        char path[1200];
        snprintf(path, sizeof path, "%s/input.sam.json", out);
        CHECK_MSG(!file_exists(path), "`%s`: wrote %s", v[k].args, path);
    }
}

/* the generator's records are the same bytes at 1, 2 and 3 threads (prompts decoded in parallel) */
TEST(sam_cli_auto_thread_invariant) {
    const char *bin = getenv("CARSEG_BIN");
    char model_buf[1024], ipb[1024];
    const char *model = fx(NULL, "samt.safetensors");
    if (model) model = strcpy(model_buf, model);
    const char *ip = fx(CASES[0], "input.png");
    if (ip) ip = strcpy(ipb, ip);
    if (!bin) SKIP("CARSEG_BIN not set");
    if (!model || !ip) SKIP("fixtures/sam missing (set CARSEG_SHARED)");
    const char *dir = test_tmpdir();
    char *ref = NULL;
    size_t nref = 0;
    for (int t = 1; t <= 3; t++) {
        char cmd[4096], path[1100];
        snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=%d %s sam %s --model %s --auto --points-per-side 6 "
                 "--pred-iou 0 --stability 0 --nms 1 --out %s/t%d > /dev/null 2>&1", t, bin, ip, model, dir, t);
        CHECK_MSG(test_run(cmd) == 0, "%s", cmd);
        snprintf(path, sizeof path, "%s/t%d/input.sam.json", dir, t);
        size_t n;
        char *d = slurp(path, &n);
        REQUIRE(d);
        if (!ref) ref = d, nref = n;
        else {
            CHECK_MSG(n == nref && !memcmp(d, ref, n), "records at %d threads differ from 1 thread", t);
            free(d);
        }
    }
    free(ref);
}
