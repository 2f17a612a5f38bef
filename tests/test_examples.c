/* test_examples.c — the programs in examples/ compile against the built libcarseg.so with the
 * public header alone (-Wall -Wextra -Werror), run on the fixture models, and give what the API
 * gives in process; the example at the top of carseg.h is examples/segment.c verbatim. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carseg.h"
#include "check.h"
#include "image.h"
#include "util.h"

static const char *GEN = "fixtures/clip_sg/model_f16.safetensors";
static const char *CLS = "fixtures/models/sc_f16.safetensors";
static const char *VOCAB = "clip/bpe_simple_vocab_16e6.txt.gz";
static const char *IMG = "fixtures/car/coffee300_voc/input.png";

/* Builds examples/NAME.c into the temp dir; returns the executable's path (static buffer). */
static const char *build_example(const char *name) {
    static char exe[700];
    const char *b = getenv("CARSEG_BUILD_DIR");
    if (!b) return NULL;
    const char *cc = getenv("CARSEG_CC"), *ldf = getenv("CARSEG_LDFLAGS");
    if (!cc || !*cc) cc = "cc";
    snprintf(exe, sizeof exe, "%s/%s", test_tmpdir(), name);
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "%s -std=c11 -Wall -Wextra -Werror -Iinclude %s -o '%s' examples/%s.c "
             "-L'%s' -Wl,-rpath,'%s' -lcarseg -lm", cc, ldf ? ldf : "", exe, name, b, b);
    if (system(cmd) != 0) {
        fprintf(stderr, "  build failed: %s\n", cmd);
        return "";
    }
    return exe;
}

/* The opening comment of carseg.h holds examples/segment.c line for line. */
TEST(examples_header_example_is_segment_c) {
    uint8_t *h = NULL, *e = NULL;
    size_t hn = 0, en = 0;
    REQUIRE(read_file("include/carseg.h", &h, &hn) == CARSEG_OK);
    REQUIRE(read_file("examples/segment.c", &e, &en) == CARSEG_OK);
    /* the header example: its lines start with a star and 5 spaces (or are a lone star), from
     * the first line naming segment.c to the end of the comment */
    char *start = strstr((char *)h, " *     // segment.c");
    REQUIRE(start);
    char *end = strstr(start, "\n */");
    REQUIRE(end);
    *end = 0;
    size_t cap = strlen(start) + 2, k = 0;
    char *got = malloc(cap);
    REQUIRE(got);
    for (char *line = start; line && *line;) {
        char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len >= 7 && !strncmp(line, " *     ", 7)) memcpy(got + k, line + 7, len - 7), k += len - 7;
        else CHECK_MSG(len == 2 && !strncmp(line, " *", 2), "unexpected header line: %.*s", (int)len, line);
        got[k++] = '\n';
        line = nl ? nl + 1 : NULL;
    }
    got[k] = 0;
    char *want = malloc(en + 1);
    REQUIRE(want);
    memcpy(want, e, en);
    want[en] = 0;
    CHECK_MSG(!strcmp(got, want), "the example in carseg.h differs from examples/segment.c");
    free(got), free(want), free(h), free(e);
}

static int fixtures(const char **g, const char **c, const char **v, const char **im) {
    *g = shared_path(GEN), *c = shared_path(CLS), *v = shared_path(VOCAB), *im = shared_path(IMG);
    return *g && *c && *v && *im && file_exists(*g) && file_exists(*c) && file_exists(*v) && file_exists(*im);
}

/* the palette PNG at path holds labels (w x h) */
static int same_png_labels(const char *path, const uint16_t *labels, int w, int h) {
    image_u8 im;
    if (image_load_indexed(path, &im) != CARSEG_OK) return 0;
    int ok = im.w == w && im.h == h && im.c == 1;
    for (size_t i = 0; ok && i < (size_t)w * h; i++) ok = im.px[i] == labels[i];
    image_free(&im);
    return ok;
}

/* examples/segment.c: the label PNG and the scores it prints are the in-process API's. */
TEST(examples_segment_runs_on_fixtures) {
    const char *g, *c, *v, *ip;
    if (!fixtures(&g, &c, &v, &ip)) SKIP("fixtures missing");
    const char *exe = build_example("segment");
    if (!exe) SKIP("CARSEG_BUILD_DIR not set (run through make test)");
    REQUIRE(*exe);
    char cmd[4000], out_png[700];
    snprintf(out_png, sizeof out_png, "%s/seg.png", test_tmpdir());
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' '%s' '%s' '%s'", exe, ip, out_png, g, c, v);
    char *text = test_capture(cmd, NULL);
    REQUIRE(text);
    /* the same through the API here */
    carseg_car_model *m = NULL;
    carseg_segmenter *s = NULL;
    carseg_result *r = NULL;
    uint8_t *rgb = NULL;
    int w, h;
    CHECK_OK(carseg_car_model_open(g, c, v, &m));
    CHECK_OK(carseg_segmenter_new(m, &s));
    CHECK_OK(carseg_image_load(ip, &rgb, &w, &h));
    carseg_options o;
    CHECK_OK(carseg_options_preset(&o, "voc"));
    const char *classes[] = {"cat", "dog", "sofa"};
    CHECK_OK(carseg_segment_rgb(s, rgb, w, h, classes, 3, &o, &r));
    REQUIRE(r);
    char want[400];
    size_t k = 0;
    for (int i = 0; i < 3; i++)
        k += (size_t)snprintf(want + k, sizeof want - k, "%s: score %.4f\n", classes[i], carseg_result_score(r, i));
    CHECK_MSG(!strcmp(text, want), "segment printed:\n%s\nexpected:\n%s", text, want);
    CHECK(same_png_labels(out_png, carseg_result_labels(r), w, h));
    /* a bad image: exit 1 with the library's message */
    snprintf(cmd, sizeof cmd, "'%s' /nonexistent.png '%s' '%s' '%s' '%s' 2> '%s/err.txt'", exe, out_png, g, c, v,
             test_tmpdir());
    CHECK(system(cmd) != 0);
    free(text);
    carseg_result_free(r);
    carseg_image_free(rgb);
    carseg_segmenter_free(s);
    carseg_car_model_close(m);
}

/* examples/embed.c: one line per text with the cosine to the image, as the API computes it. */
TEST(examples_embed_runs_on_fixtures) {
    const char *g, *c, *v, *ip;
    if (!fixtures(&g, &c, &v, &ip)) SKIP("fixtures missing");
    const char *exe = build_example("embed");
    if (!exe) SKIP("CARSEG_BUILD_DIR not set (run through make test)");
    REQUIRE(*exe);
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' 'a cup of coffee' 'a dog' --vocab '%s'", exe, c, ip, v);
    char *text = test_capture(cmd, NULL);
    REQUIRE(text);
    CHECK(strstr(text, "embedding size ") == text);
    CHECK(strstr(text, "a cup of coffee") && strstr(text, "a dog"));
    int lines = 0;
    for (char *p = text; *p; p++) lines += *p == '\n';
    CHECK(lines == 3);
    /* the cup is closer to the coffee photo than the dog is, with the fixture classifier too */
    double cup = 0, dog = 0;
    char *p = strstr(text, "a cup of coffee"), *q = strstr(text, "a dog");
    REQUIRE(p && q && (p = strstr(p, "cosine ")) && (q = strstr(q, "cosine ")));
    cup = atof(p + 7), dog = atof(q + 7);
    CHECK(cup != 0 && dog != 0 && cup >= -1 && cup <= 1);
    free(text);
    snprintf(cmd, sizeof cmd, "'%s' '%s' > /dev/null 2>&1", exe, c);
    CHECK(system(cmd) != 0);   /* usage */
}

/* examples/refer.c: the merged mask it writes is carseg_refer's. */
TEST(examples_refer_runs_on_fixtures) {
    const char *g, *c, *v, *ip;
    if (!fixtures(&g, &c, &v, &ip)) SKIP("fixtures missing");
    const char *exe = build_example("refer");
    if (!exe) SKIP("CARSEG_BUILD_DIR not set (run through make test)");
    REQUIRE(*exe);
    char cmd[4000], out_png[700];
    snprintf(out_png, sizeof out_png, "%s/refer.png", test_tmpdir());
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' 'a cup of coffee' 'the white cup' --models '%s' '%s' '%s'", exe,
             ip, out_png, g, c, v);
    char *text = test_capture(cmd, NULL);
    REQUIRE(text);
    CHECK(strstr(text, "mask: ") == text && strstr(text, "phrase \"the white cup\"") && strstr(text, "semantic: "));
    carseg_car_model *m = NULL;
    carseg_segmenter *s = NULL;
    carseg_prepared *pi = NULL;
    carseg_result *r = NULL;
    uint8_t *rgb = NULL;
    int w, h;
    CHECK_OK(carseg_car_model_open(g, c, v, &m));
    CHECK_OK(carseg_segmenter_new(m, &s));
    CHECK_OK(carseg_image_load(ip, &rgb, &w, &h));
    CHECK_OK(carseg_prepare(s, rgb, w, h, NULL, &pi));
    carseg_options o;
    CHECK_OK(carseg_options_preset(&o, "refcoco"));
    const char *ph[] = {"a cup of coffee", "the white cup"};
    CHECK_OK(carseg_refer(s, pi, ph, 2, &o, &r));
    REQUIRE(r);
    CHECK(same_png_labels(out_png, carseg_result_labels(r), w, h));
    free(text);
    carseg_result_free(r);
    carseg_prepared_free(pi);
    carseg_image_free(rgb);
    carseg_segmenter_free(s);
    carseg_car_model_close(m);
}
