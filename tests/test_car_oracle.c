/* test_car_oracle.c — the C CaR pipeline (`carseg segment ... --dump DIR`) against the independent
 * Python oracle scripts/car_oracle.py on NEW small cases that the upstream fixtures do not cover:
 * odd image sizes, custom class lists (duplicates that both survive: Q17; a single class), a flat
 * grey image, all six prompt types at once, the argmax fallback (no score above theta),
 * refer mode (§7) with 1 and 3 sentences, and the thing + stuff two-pass mode (§4.4, through the
 * `context` preset: the oracle gets the preset's class list and stuff ids from data/presets/).
 *
 * The oracle was validated against the three upstream fixture cases (scripts/car_oracle_selfcheck.py).
 * Both sides get the same image (the oracle writes the exact pipeline input to oracle/input.png) and the
 * same fixture models (generator clip_sg/model_f16, classifier models/sc_f16, CLIP BPE vocabulary).
 * Compared: the number of rounds, per round the live queries and survivors (equal), the diagonal
 * scores (1e-4) and the refined CAMs (1e-3), then the label map (>= 99.9 % of pixels equal).
 * The oracle's CRF step is the C `carseg crf` (pydensecrf cannot be installed), so the label-map
 * check is not independent of the C CRF; everything before it is.
 *
 * SKIPs (with the reason) when /usr/bin/python3 lacks torch/cv2/scipy, when the shared fixtures are
 * missing, when `$CARSEG_BIN segment --help` fails (the segment CLI has not landed), or when the
 * segment help does not mention the flag a mode needs (--refer, --preset). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "image.h"
#include "util.h"

typedef enum { MODE_SEMANTIC, MODE_REFER, MODE_TWOPASS } oracle_mode;

typedef struct {
    const char *name;
    const char *image;        /* under the shared folder */
    const char *prep;         /* oracle --resize/--crop arguments */
    oracle_mode mode;
    const char *queries[6];   /* classes, sentences (refer), or the preset name (two-pass) */
    int n;
    int n_stuff;              /* two-pass: number of stuff classes (informative) */
    double eta, theta, lam;
    int q17;                  /* duplicate names */
    const char *prompts;
    const char *stuff_prompts;
    double cam_tol;           /* 0: 1e-3 */
    double label_min;         /* 0: 0.999 */
} oracle_case;

static char g_help[16384];

/* 1 when `$CARSEG_BIN segment --help` exits 0 (its text in g_help). */
static int segment_available(const char *bin) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' segment --help 2>/dev/null", bin);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    size_t n = fread(g_help, 1, sizeof g_help - 1, p);
    g_help[n] = 0;
    return pclose(p) == 0;
}

static int python_ok(void) {
    static int ok = -1;
    if (ok < 0)
        ok = system("/usr/bin/python3 -c 'import torch, cv2, scipy, PIL, regex' >/dev/null 2>&1") == 0;
    return ok;
}

static int crf_available(const char *bin) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' crf --help >/dev/null 2>&1", bin);
    return system(cmd) == 0;
}

static const char *pj(const char *a, const char *b) {
    static char buf[8][1024];
    static int k;
    char *o = buf[k++ & 7];
    snprintf(o, 1024, "%s/%s", a, b);
    return o;
}

/* Appends " 'text'" to cmd (texts in these cases have no single quotes). */
static void arg(char *cmd, size_t cap, const char *text) {
    size_t n = strlen(cmd);
    snprintf(cmd + n, cap - n, " '%s'", text);
}

static int str_array_eq(const json *a, const json *b) {
    if (!a || !b || a->type != JSON_ARR || b->type != JSON_ARR || a->len != b->len) return 0;
    for (size_t i = 0; i < a->len; i++) {
        const json *x = a->kids[i], *y = b->kids[i];
        if (x->type != JSON_STR || y->type != JSON_STR || strcmp(x->str, y->str)) return 0;
    }
    return 1;
}

static double label_agreement(const char *a, const char *b) {
    image_u8 x = {0}, y = {0};
    double r = -1;
    if (image_load_indexed(a, &x) == CARSEG_OK && image_load_indexed(b, &y) == CARSEG_OK &&
        x.w == y.w && x.h == y.h) {
        size_t n = (size_t)x.w * x.h, same = 0;
        for (size_t i = 0; i < n; i++) same += x.px[i] == y.px[i];
        r = (double)same / (double)n;
    }
    image_free(&x);
    image_free(&y);
    return r;
}

/* Compares the rounds of one CaR call: oracle files <odir>/<prefix>round<k>.json / _cams.npy against
 * the C dump <cdir>/<cprefix>round<k>... . */
static void compare_rounds(const char *name, const char *odir, const char *prefix, const char *cdir,
                           const char *cprefix, double cam_tol) {
    int k = 1;
    char f[512];
    for (;; k++) {
        snprintf(f, sizeof f, "%sround%d.json", prefix, k);
        if (!file_exists(pj(odir, f))) break;
        json *o = json_parse_file(pj(odir, f));
        snprintf(f, sizeof f, "%sround%d.json", cprefix, k);
        json *c = json_parse_file(pj(cdir, f));
        CHECK_MSG(o != NULL, "%s: oracle %s unreadable", name, f);
        CHECK_MSG(c != NULL, "%s: C dump %s missing or unreadable: %s", name, pj(cdir, f),
                  carseg_last_error());
        if (!o || !c) {
            json_free(o);
            json_free(c);
            return;
        }
        CHECK_MSG(str_array_eq(json_get(o, "queries"), json_get(c, "queries")),
                  "%s round %d: live queries differ", name, k);
        CHECK_MSG(str_array_eq(json_get(o, "survivors"), json_get(c, "survivors")),
                  "%s round %d: survivors differ", name, k);
        const json *os = json_get(o, "scores"), *cs = json_get(c, "scores");
        CHECK_MSG(os && cs && os->len == cs->len, "%s round %d: score counts differ", name, k);
        if (os && cs && os->len == cs->len)
            for (size_t i = 0; i < os->len; i++)
                CHECK_MSG(fabs(os->kids[i]->num - cs->kids[i]->num) <= 1e-4,
                          "%s round %d: score %zu: C %.7f vs oracle %.7f", name, k, i, cs->kids[i]->num,
                          os->kids[i]->num);
        json_free(o);
        json_free(c);
        float *oc = NULL, *cc = NULL;
        int ond = 0, cnd = 0;
        int64_t osh[8] = {0}, csh[8] = {0};
        snprintf(f, sizeof f, "%sround%d_cams.npy", prefix, k);
        CHECK_OK(npy_read_f32(pj(odir, f), &oc, &ond, osh));
        snprintf(f, sizeof f, "%sround%d_cams.npy", cprefix, k);
        CHECK_OK(npy_read_f32(pj(cdir, f), &cc, &cnd, csh));
        if (oc && cc) {
            int same = ond == 3 && cnd == 3 && osh[0] == csh[0] && osh[1] == csh[1] && osh[2] == csh[2];
            CHECK_MSG(same, "%s round %d: CAM shapes differ (C %lld x %lld x %lld)", name, k,
                      (long long)csh[0], (long long)csh[1], (long long)csh[2]);
            if (same) {
                char what[128];
                snprintf(what, sizeof what, "%s round %d CAMs", name, k);
                CHECK_CLOSE(what, cc, oc, (size_t)(osh[0] * osh[1] * osh[2]), 0, cam_tol);
            }
        }
        free(oc);
        free(cc);
    }
    CHECK_MSG(k > 2, "%s: the oracle wrote fewer than 2 rounds", name);
    snprintf(f, sizeof f, "%sround%d.json", cprefix, k);
    CHECK_MSG(!file_exists(pj(cdir, f)), "%s: the C pipeline ran more rounds than the oracle (%d)", name,
              k - 1);
}

/* Joins the non-empty lines of a text file with sep; 0 if unreadable or too long. */
static int read_lines_joined(const char *path, const char *sep, char *out, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512];
    size_t n = 0;
    out[0] = 0;
    int ok = 1;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        size_t need = strlen(line) + (n ? strlen(sep) : 0);
        if (n + need + 1 > cap) { ok = 0; break; }
        if (n) strcat(out, sep);
        strcat(out, line);
        n += need;
    }
    fclose(f);
    return ok && n > 0;
}

static void run_case(const oracle_case *tc) {
    const char *bin = getenv("CARSEG_BIN");
    if (!bin || access(bin, X_OK)) SKIP("CARSEG_BIN not set");
    if (!segment_available(bin))
        SKIP("`carseg segment` not available yet (`$CARSEG_BIN segment --help` failed)");
    if (tc->mode == MODE_REFER && !strstr(g_help, "--refer"))
        SKIP("`carseg segment --help` does not mention --refer (refer mode)");
    if (tc->mode == MODE_TWOPASS && !strstr(g_help, "--preset"))
        SKIP("`carseg segment --help` does not mention --preset (the thing + stuff presets)");
    if (!python_ok()) SKIP("/usr/bin/python3 lacks torch/cv2/scipy/PIL/regex (the oracle needs them)");
    const char *img = shared_path(tc->image);
    const char *gen = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *cls = shared_path("fixtures/models/sc_f16.safetensors");
    const char *voc = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (!img || !gen || !cls || !voc || !file_exists(img) || !file_exists(gen) || !file_exists(cls) ||
        !file_exists(voc))
        SKIP("shared fixtures/data missing");
    int crf = crf_available(bin);
    const char *dir = test_tmpdir();
    char odir[600], cdir[600], cout[600];
    snprintf(odir, sizeof odir, "%s/oracle", dir);
    snprintf(cdir, sizeof cdir, "%s/c", dir);
    snprintf(cout, sizeof cout, "%s/c_out", dir);

    /* --- the oracle --- */
    static char cmd[16384];
    static char joined[8192];
    char num[64], stuff_ids[1024] = "";
    joined[0] = 0;
    if (tc->mode == MODE_TWOPASS) {
        /* the preset's class list (dataset order, label = id + 1) and its stuff ids */
        char path[256];
        snprintf(path, sizeof path, "data/presets/%s.txt", tc->queries[0]);
        if (!read_lines_joined(path, "|", joined, sizeof joined)) SKIP("%s missing", path);
        snprintf(path, sizeof path, "data/presets/%s.stuff.txt", tc->queries[0]);
        if (!read_lines_joined(path, ",", stuff_ids, sizeof stuff_ids)) SKIP("%s missing", path);
    } else {
        for (int i = 0; i < tc->n; i++) {
            if (i) strcat(joined, "|");
            strcat(joined, tc->queries[i]);
        }
    }
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 scripts/car_oracle.py '%s' --out '%s' %s", img, odir,
             tc->prep);
    strcat(cmd, tc->mode == MODE_REFER ? " --refer" : " --classes");
    arg(cmd, sizeof cmd, joined);
    if (tc->mode == MODE_TWOPASS) {
        strcat(cmd, " --stuff");
        arg(cmd, sizeof cmd, stuff_ids);
        strcat(cmd, " --stuff-prompts");
        arg(cmd, sizeof cmd, tc->stuff_prompts);
    }
    strcat(cmd, " --generator");
    arg(cmd, sizeof cmd, gen);
    strcat(cmd, " --classifier");
    arg(cmd, sizeof cmd, cls);
    strcat(cmd, " --vocab");
    arg(cmd, sizeof cmd, voc);
    snprintf(num, sizeof num, " --eta %.9g --theta %.9g --lambda %.9g", tc->eta, tc->theta, tc->lam);
    strcat(cmd, num);
    strcat(cmd, " --prompts");
    arg(cmd, sizeof cmd, tc->prompts);
    if (crf) {
        strcat(cmd, " --crf carseg --carseg");
        arg(cmd, sizeof cmd, bin);
    } else {
        strcat(cmd, " --crf none");
    }
    strcat(cmd, " >");
    arg(cmd, sizeof cmd, pj(dir, "oracle.log"));
    strcat(cmd, " 2>&1");
    if (system(cmd) != 0) {
        fprintf(stderr, "  %s: oracle failed: %s (log %s)\n", tc->name, cmd, pj(dir, "oracle.log"));
        REQUIRE(0);
    }

    /* --- the C pipeline on the exact same input image --- */
    snprintf(cmd, sizeof cmd, "'%s' segment", bin);
    arg(cmd, sizeof cmd, pj(odir, "input.png"));
    if (tc->mode == MODE_REFER) {
        for (int i = 0; i < tc->n; i++) {
            strcat(cmd, " --refer");
            arg(cmd, sizeof cmd, tc->queries[i]);
        }
    } else if (tc->mode == MODE_TWOPASS) {
        strcat(cmd, " --preset");   /* its own per-pass prompts (things / stuff) */
        arg(cmd, sizeof cmd, tc->queries[0]);
    } else {
        char classes[1024] = "";
        for (int i = 0; i < tc->n; i++) {
            if (i) strcat(classes, ",");
            strcat(classes, tc->queries[i]);
        }
        strcat(cmd, " --classes");
        arg(cmd, sizeof cmd, classes);
    }
    strcat(cmd, " --generator");
    arg(cmd, sizeof cmd, gen);
    strcat(cmd, " --classifier");
    arg(cmd, sizeof cmd, cls);
    strcat(cmd, " --vocab");
    arg(cmd, sizeof cmd, voc);
    strcat(cmd, num);
    if (tc->mode != MODE_TWOPASS) {
        strcat(cmd, " --prompts");
        arg(cmd, sizeof cmd, tc->prompts);
    }
    strcat(cmd, " --quiet --dump");
    arg(cmd, sizeof cmd, cdir);
    strcat(cmd, " --out");
    arg(cmd, sizeof cmd, cout);
    strcat(cmd, " >");
    arg(cmd, sizeof cmd, pj(dir, "c.log"));
    strcat(cmd, " 2>&1");
    if (system(cmd) != 0) {
        fprintf(stderr, "  %s: carseg segment failed: %s (log %s)\n", tc->name, cmd, pj(dir, "c.log"));
        REQUIRE(0);
    }

    /* --- compare --- */
    double cam_tol = tc->cam_tol > 0 ? tc->cam_tol : 1e-3;
    double label_min = tc->label_min > 0 ? tc->label_min : 0.999;
    if (tc->mode == MODE_TWOPASS) {
        compare_rounds(tc->name, odir, "things_", cdir, "things_", cam_tol);
        compare_rounds(tc->name, odir, "stuff_", cdir, "stuff_", cam_tol);
    } else {
        compare_rounds(tc->name, odir, "", cdir, "", cam_tol);
    }
    if (!crf) {
        fprintf(stderr, "  %s: no `carseg crf`: label maps not compared\n", tc->name);
        return;
    }
    double agree = label_agreement(pj(cdir, "labels.png"), pj(odir, "labels.png"));
    const char *which = "reference";
    if (tc->q17) {
        /* duplicate names (Q17): the oracle's duplicate CAMs differ by float32 ulps and the CRF
         * breaks that near-tie arbitrarily; accept the exact-tie variant (what a port with
         * identical duplicate CAMs gives under the reference rule) and, with --fix q17, the
         * variant that keeps each survivor at its own index. */
        static const char *alt[2] = {"labels_q17tie.png", "labels_q17fixed.png"};
        for (int v = 0; v < 2; v++) {
            double a2 = label_agreement(pj(cdir, "labels.png"), pj(odir, alt[v]));
            if (a2 > agree) agree = a2, which = alt[v];
        }
    }
    CHECK_MSG(agree >= label_min, "%s: label maps agree on %.4f%% of the pixels (best: %s)", tc->name,
              100 * agree, which);
}

/* Cases: small images (the C and Python sides each take ~1-3 s per case). */
static const oracle_case CASES[] = {
    {"odd_17x23", "data/photos/chelsea.png", "--resize 23x17", MODE_SEMANTIC,
     {"cat", "dog", "sofa"}, 3, 0, 0.4, 0.3, 0.4, 0, "circle,blur", NULL, 0, 0},
    {"dup_names", "data/voc_samples/294.png", "--resize 61x47", MODE_SEMANTIC,
     {"car", "person", "car", "road"}, 4, 0, 0.5, 0.1, 0.5, 1, "blur,gray", NULL, 0, 0},  /* both "car" survive */
    {"one_class", "data/voc_samples/8.png", "--crop 100,60,300,260 --resize 40x33", MODE_SEMANTIC,
     {"horse"}, 1, 0, 0.4, 0.6, 0.4, 0, "circle,blur", NULL, 0, 0},
    {"all_prompts", "data/voc_samples/120.png", "--resize 72x56", MODE_SEMANTIC,
     {"bicycle", "bottle", "person", "wall", "tree"}, 5, 0, 0.45, 0.15, 0.5, 0,
     "contour,rectangle,black,gray,blur,circle", NULL, 0, 0},
    {"flat_grey", "data/photos/camera.png", "--resize 48x36 --fill 128,128,128", MODE_SEMANTIC,
     {"cat", "dog"}, 2, 0, 0.4, 0.6, 0.4, 0, "circle,blur", NULL,
     /* ill-conditioned: a flat image gives a nearly flat refined CAM whose min-max amplifies
      * rounding; the oracle in float32 vs float64 differs by 4.7e-4 here (the C port by 2.3e-4
      * from float64), so 3e-3 and 99.5 % */
     3e-3, 0.995},
    {"refer_3", "data/voc_samples/582.png", "--resize 64x48", MODE_REFER,
     {"a man riding a motorbike", "the person on the bike", "red motorcycle"}, 3, 0, 0.2, 0.1, 0.5, 0,
     "circle,blur", NULL, 0, 0},
    {"refer_1", "data/voc_samples/60.png", "--resize 45x39", MODE_REFER,
     {"the bird on the left"}, 1, 0, 0.5, 0.3, 0.5, 0, "circle", NULL, 0, 0},
    {"argmax_fallback", "data/voc_samples/23.png", "--resize 64x64", MODE_SEMANTIC,   /* no score > theta */
     {"aeroplane", "sky", "bird", "grass", "sheep", "water"}, 6, 0, 0.4, 0.3, 0.4, 0, "circle,blur", NULL,
     0, 0},
    /* the context preset (38 things + 21 stuff, ids interleaved) with its own settings. With the
     * tiny random models the stuff CAMs are nearly identical to each other when many survive
     * (theta 0.04: top-2 CRF input gap ~1e-6), which makes the CRF argmax meaningless; at the
     * preset's theta one class survives per pass and the maps agree exactly. */
    {"twopass_context", "data/voc_samples/294.png", "--resize 40x30", MODE_TWOPASS,
     {"context"}, 59, 21, 0.6, 0.25, 0.4, 0, "blur,circle", "blur,gray", 0, 0},
};

TEST(car_oracle_odd_size) { run_case(&CASES[0]); }
TEST(car_oracle_duplicate_names) { run_case(&CASES[1]); }
TEST(car_oracle_one_class) { run_case(&CASES[2]); }
TEST(car_oracle_all_prompt_types) { run_case(&CASES[3]); }
TEST(car_oracle_flat_image) { run_case(&CASES[4]); }
TEST(car_oracle_refer_three_sentences) { run_case(&CASES[5]); }
TEST(car_oracle_refer_one_sentence) { run_case(&CASES[6]); }
TEST(car_oracle_argmax_fallback) { run_case(&CASES[7]); }
TEST(car_oracle_two_pass) { run_case(&CASES[8]); }
