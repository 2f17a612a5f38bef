/* test_label.c — issue #15, labeling image collections:
 *   COCO RLE (src/image/rle.c) against pycocotools' known answers, round trips at many sizes,
 *   the parser's hostile-input checks;
 *   the CLI's labeling modules (tools/collect.c, label_run.c, outputs.c, eval_coco.c: compiled
 *   into this file, as run_tests links the library only): inputs, journal, records, zip;
 *   `carseg segment` end to end on the fixture models: folders, @lists, every output format,
 *   bad images, progress, --force, SIGKILL at random moments then resume (outputs equal to an
 *   uninterrupted run byte for byte), and `carseg eval` on COCO RLE predictions. */
#include "check.h"

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "carseg.h"
#include "eval.h"
#include "image.h"
#include "rle.h"
#include "util.h"

#include "../tools/collect.c"
#include "../tools/eval_coco.c"
#include "../tools/label_run.c"
#include "../tools/outputs.c"

static unsigned lcg(unsigned *s) { *s = *s * 1103515245u + 12345u; return (*s >> 16) & 0x7fff; }

/* encode -> string -> parse -> mask gives the mask back, through both APIs */
static int roundtrip(const uint8_t *mask, int h, int w) {
    size_t hw = (size_t)h * w;
    uint32_t *cnts = malloc((hw + 1) * sizeof *cnts);
    uint8_t *back = malloc(hw + 1);
    size_t n = cs_rle_counts(mask, h, w, cnts);
    char *s = cs_rle_string(cnts, n);
    uint32_t *pc = NULL;
    size_t pn = 0;
    int ok = n >= 1 && s && cs_rle_parse(s, hw, &pc, &pn) == 0 && pn == n &&
             (!n || memcmp(pc, cnts, n * sizeof *cnts) == 0) &&
             cs_rle_to_mask(pc, pn, h, w, back) == 0;
    for (size_t i = 0; ok && i < hw; i++) ok = back[i] == (mask[i] != 0);
    char *s2 = NULL;
    if (ok) ok = carseg_rle_encode(mask, h, w, &s2) == CARSEG_OK && strcmp(s, s2) == 0;
    if (ok) {
        memset(back, 7, hw);
        uint64_t area = 0;
        double bb[4];
        ok = carseg_rle_decode(s, h, w, back, &area, bb) == CARSEG_OK;
        uint64_t want = 0;
        for (size_t i = 0; ok && i < hw; i++) { ok = back[i] == (mask[i] != 0); want += mask[i] != 0; }
        ok = ok && area == want;
    }
    free(s2); free(s); free(pc); free(cnts); free(back);
    return ok;
}

TEST(rle_known_answers) {
    uint32_t c1[] = {0, 6, 1, 3};
    char *s = cs_rle_string(c1, 4);
    CHECK(s && strcmp(s, "061M") == 0);
    free(s);
    uint32_t c2[] = {0, 1024};
    s = cs_rle_string(c2, 2);
    CHECK(s && strcmp(s, "0PP1") == 0);
    free(s);
    /* h=4, w=5, rows 1-2 and columns 1-3 set */
    uint8_t m[20] = {0};
    for (int y = 1; y <= 2; y++) for (int x = 1; x <= 3; x++) m[y * 5 + x] = 1;
    char *r = NULL;
    CHECK_OK(carseg_rle_encode(m, 4, 5, &r));
    CHECK(r && strcmp(r, "5220003") == 0);
    uint64_t area = 0;
    double bb[4] = {0};
    uint8_t back[20];
    CHECK_OK(carseg_rle_decode(r, 4, 5, back, &area, bb));
    CHECK(memcmp(back, m, 20) == 0);
    CHECK(area == 6);
    CHECK(bb[0] == 1 && bb[1] == 1 && bb[2] == 3 && bb[3] == 2);
    free(r);
    uint32_t *pc;
    size_t pn;
    CHECK(cs_rle_parse("061M", 10, &pc, &pn) == 0 && pn == 4 && pc[0] == 0 && pc[1] == 6 &&
          pc[2] == 1 && pc[3] == 3);
    free(pc);
}

/* strings, areas and boxes produced by pycocotools 2.0 (maskApi.c rleEncode/rleToString/rleArea/
 * rleToBbox) on masks M[x*h+y] = (lcg(seed) % 3 == 0), filled x outer, y inner... here row-major
 * y outer: the generator below draws in the same order as the reference script did */
TEST(rle_pycocotools_parity) {
    static const struct { int h, w; unsigned seed; const char *s; unsigned area; double bb[4]; } ref[] = {
        {7, 5, 1, "5120O0000330OMN11", 15, {0, 0, 5, 6}},
        {13, 17, 2, "1240OO00N00120OO002060H04020I21NO25NM002NN1000O1002O40O0M0N031M13N0011LO012O016OJ0010O20N02000", 66, {0, 0, 17, 13}},
        {32, 9, 3, "2142MN40N1NO000020O10O20M0020N1000030MO1011OO02OO1O10N011OO0022NO081G00O50K020N10O0050O1LO411OL1000OO050N1O0OOO020O0O141MN2021L00O115OJ00130L", 107, {0, 0, 9, 32}},
        {3, 64, 4, "1141MO20O041K33L30J00070J0O0101130LOO13OM10O2040J0110O24NLO001d0OB1LO0031LOO032M", 59, {0, 0, 64, 3}},
    };
    for (size_t t = 0; t < sizeof ref / sizeof *ref; t++) {
        int h = ref[t].h, w = ref[t].w;
        unsigned s = ref[t].seed;
        uint8_t *m = malloc((size_t)h * w);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) m[y * w + x] = (lcg(&s) % 3) == 0;
        char *r = NULL;
        CHECK_OK(carseg_rle_encode(m, h, w, &r));
        CHECK_MSG(r && strcmp(r, ref[t].s) == 0, "%dx%d: got %s", h, w, r ? r : "NULL");
        uint64_t area;
        double bb[4];
        CHECK_OK(carseg_rle_decode(ref[t].s, h, w, NULL, &area, bb));
        CHECK(area == ref[t].area);
        CHECK(memcmp(bb, ref[t].bb, sizeof bb) == 0);
        CHECK(roundtrip(m, h, w));
        free(r);
        free(m);
    }
}

TEST(rle_sizes) {
    uint8_t one[1] = {0};
    char *r = NULL;
    CHECK_OK(carseg_rle_encode(one, 1, 1, &r));
    CHECK(r && strcmp(r, "1") == 0);
    free(r);
    one[0] = 1;
    CHECK_OK(carseg_rle_encode(one, 1, 1, &r));
    CHECK(r && strcmp(r, "01") == 0);
    free(r);
    CHECK_OK(carseg_rle_encode(NULL, 0, 0, &r));   /* an empty mask: one zero-length run */
    CHECK(r && strcmp(r, "0") == 0);
    free(r);
    CHECK(carseg_rle_encode(one, -1, 1, &r) == CARSEG_EINVAL && !r);
    CHECK(carseg_rle_encode(one, 70000, 70000, &r) == CARSEG_EINVAL);
    unsigned st = 11;
    for (int h = 1; h <= 33; h += 4)
        for (int w = 1; w <= 33; w += 3) {
            size_t hw = (size_t)h * w;
            uint8_t *m = malloc(hw);
            memset(m, 0, hw);
            CHECK_MSG(roundtrip(m, h, w), "zeros %dx%d", h, w);
            uint32_t c[2];
            CHECK(cs_rle_counts(m, h, w, c) == 1 && c[0] == hw);
            memset(m, 255, hw);   /* any nonzero byte is "in" */
            CHECK_MSG(roundtrip(m, h, w), "ones %dx%d", h, w);
            CHECK(cs_rle_counts(m, h, w, c) == 2 && c[0] == 0 && c[1] == hw);
            for (int dens = 1; dens < 10; dens += 4) {
                for (size_t i = 0; i < hw; i++) m[i] = (uint8_t)((lcg(&st) % 10) < (unsigned)dens);
                CHECK_MSG(roundtrip(m, h, w), "random %dx%d", h, w);
            }
            free(m);
        }
}

/* runs of 2^24 and more: 6 groups per count; deltas near 2^32: 7 groups */
TEST(rle_long_runs) {
    int h = 4099, w = 4099;   /* 16.8 M pixels > 2^24 */
    size_t hw = (size_t)h * w;
    uint8_t *m = calloc(hw, 1);
    REQUIRE(m);
    CHECK(roundtrip(m, h, w));
    for (int y = 0; y < h; y++) m[(size_t)y * w + w - 1] = 1;   /* last column */
    m[0] = 1;
    CHECK(roundtrip(m, h, w));
    uint32_t c[4];
    CHECK(cs_rle_counts(m, h, w, c) == 4 && c[0] == 0 && c[1] == 1 && c[2] == hw - 1 - (size_t)h &&
          c[3] == (uint32_t)h);
    free(m);
    uint32_t big[] = {0, 3000000000u, 1, 1, 4294967295u, 0};
    char *s = cs_rle_string(big, 6);
    REQUIRE(s);
    uint32_t *pc;
    size_t pn;
    CHECK(cs_rle_parse(s, UINT64_MAX, &pc, &pn) == 0 && pn == 6 && memcmp(pc, big, sizeof big) == 0);
    free(pc);
    CHECK(cs_rle_parse(s, 3000000002ull, &pc, &pn) == -1);   /* sums beyond hw */
    free(s);
}

TEST(rle_hostile) {
    uint32_t *pc = (uint32_t *)1;
    size_t pn = 9;
    const char *bad[] = {
        "06 1M",          /* space (below '0') */
        "06p",            /* 'p' is 48 + 64 */
        "0P",             /* group cut short by the end of the string */
        "0PPPPPPPP1",     /* 9 groups: overflows any 32-bit count */
        "0PPPPPPP1",      /* 8 groups: more than a 32-bit count can need */
        "O",              /* first count -1 */
        "06O",            /* third count -1 (no delta before the fourth) */
        "011M",           /* 0, 1, 1, then 1 + (-3) < 0: negative count */
        "0PPPPPP?",       /* 7 groups, 15 * 2^30: beyond 2^32 - 1 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK_MSG(cs_rle_parse(bad[i], UINT64_MAX, &pc, &pn) == -1 && pc == NULL && pn == 0,
                  "%s accepted", bad[i]);
    /* negative deltas that give valid counts are fine: 0, 6, 1, 6 + (-3) */
    CHECK(cs_rle_parse("061M", 10, &pc, &pn) == 0 && pn == 4 && pc[3] == 3);
    free(pc);
    CHECK(cs_rle_parse("061M", 9, &pc, &pn) == -1);   /* 0+6+1+3 = 10 > 9 */
    CHECK(cs_rle_parse("", 9, &pc, &pn) == 0 && pn == 0 && pc == NULL);
    uint8_t m[20];
    CHECK(carseg_rle_decode("5220003", 4, 5, m, NULL, NULL) == CARSEG_OK);
    CHECK(carseg_rle_decode("522000", 4, 5, m, NULL, NULL) == CARSEG_EFORMAT);   /* short */
    CHECK(strstr(carseg_last_error(), "cover") != NULL);
    CHECK(carseg_rle_decode("52200031", 4, 5, m, NULL, NULL) == CARSEG_EFORMAT); /* long */
    CHECK(carseg_rle_decode("5220003", 5, 4, m, NULL, NULL) == CARSEG_OK);       /* same area */
    uint32_t c[] = {3, 4};
    CHECK(cs_rle_to_mask(c, 2, 2, 3, m) == -1);
    CHECK(cs_rle_to_mask(c, 2, 7, 1, m) == 0);
}

// =============================================================================================
// helpers

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) { fputs(text, f); fclose(f); }
}

static void mkdirs(const char *root, const char *rel) {
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    mkdir_p(p);
}

/* a w x h RGB image cut from one of the shared photos (scaled), saved as PNG */
static int tiny_png(const char *path, const char *photo, int w, int h) {
    image_u8 src, dst;
    const char *pp = shared_path(photo);
    if (!pp || image_load_rgb(pp, &src) != CARSEG_OK) return 0;
    int ok = image_resize_bicubic(&src, w, h, &dst) == CARSEG_OK &&
             image_save_png_rgb(path, dst.px, w, h) == CARSEG_OK;
    image_free(&src);
    if (ok) image_free(&dst);
    return ok;
}

// =============================================================================================
// inputs (collect.c)

static int find_item(const label_inputs *in, const char *name) {
    for (int i = 0; i < in->n; i++) if (!strcmp(in->v[i].name, name)) return i;
    return -1;
}

TEST(label_collect_inputs) {
    const char *d = test_tmpdir();
    char p[2048], q[2048];
    mkdirs(d, "in/b/c");
    mkdirs(d, "in/.hidden");
    mkdirs(d, "in/out");
    mkdirs(d, "other");
    static const char *files[] = {"in/z.png", "in/a.JPG", "in/x.jpg", "in/x.png", "in/b/c/deep.jpeg",
                                  "in/b/one.png", "in/notes.txt", "in/.hidden/h.png", "in/.dot.png",
                                  "in/out/old.png", "other/x.jpg", "other/y.png", "in/b/c/img.jpe"};
    for (size_t k = 0; k < sizeof files / sizeof *files; k++) {
        snprintf(p, sizeof p, "%s/%s", d, files[k]);
        write_text(p, "not decoded here");
    }
    snprintf(p, sizeof p, "%s/in/b/c/loop", d);      /* a symlink loop */
    CHECK(symlink("../..", p) == 0);
    snprintf(p, sizeof p, "%s/in/dangling.png", d);
    CHECK(symlink("/nonexistent/target.png", p) == 0);
    /* a list: relative to its folder, a folder entry, comments, an absolute path, "..": base name */
    snprintf(p, sizeof p, "%s/other/list.txt", d);
    snprintf(q, sizeof q, "# a comment\n\n  y.png  \r\nx.jpg\n%s/other/x.jpg\n../other/y.png\n", d);
    write_text(p, q);
    snprintf(p, sizeof p, "%s/in", d);
    char lst[2048], out[2048], plain[2048];
    snprintf(lst, sizeof lst, "@%s/other/list.txt", d);
    snprintf(out, sizeof out, "%s/in/out", d);
    snprintf(plain, sizeof plain, "%s/other/x.jpg", d);
    char *args[] = {p, lst, plain};
    label_inputs in;
    REQUIRE(label_collect(args, 3, out, &in) == CARSEG_OK);
    /* the folder, sorted bytewise per folder, images only, no hidden, no out, loop walked once */
    static const char *want_rel[] = {"a.JPG", "b/c/deep.jpeg", "b/c/img.jpe", "b/one.png", "dangling.png",
                                     "x.jpg", "x.png", "z.png", "y.png", "x.jpg", "x.jpg", "y.png", "x.jpg"};
    CHECK_MSG(in.n == 13, "%d inputs", in.n);
    for (int i = 0; i < in.n && i < 13; i++)
        CHECK_MSG(!strcmp(in.v[i].rel, want_rel[i]), "[%d] rel %s, want %s", i, in.v[i].rel, want_rel[i]);
    /* names: unique; extension kept where two collide; ~k for the same rel under two roots */
    for (int i = 0; i < in.n; i++)
        for (int j = 0; j < i; j++) CHECK_MSG(strcmp(in.v[i].name, in.v[j].name), "dup %s", in.v[i].name);
    CHECK(find_item(&in, "a") == 0);
    CHECK(find_item(&in, "b/c/deep") == 1);
    CHECK(find_item(&in, "z") == 7);
    CHECK(find_item(&in, "x.png") == 6);
    CHECK(find_item(&in, "x.jpg") == 5);
    CHECK(find_item(&in, "x.jpg~2") == 9);
    CHECK(find_item(&in, "x.jpg~3") == 10);
    CHECK(find_item(&in, "x.jpg~4") == 12);
    CHECK(find_item(&in, "y.png") == 8 && find_item(&in, "y.png~2") == 11);
    snprintf(q, sizeof q, "%s/other/y.png", d);
    CHECK(!strcmp(in.v[8].path, q));
    label_inputs_free(&in);
    /* a missing path fails, naming it (and the list it came from) */
    char miss[2048];
    snprintf(miss, sizeof miss, "%s/nope.png", d);
    char *a2[] = {miss};
    CHECK(label_collect(a2, 1, NULL, &in) == CARSEG_EIO && strstr(carseg_last_error(), "nope.png"));
    snprintf(p, sizeof p, "%s/bad.txt", d);
    write_text(p, "missing.png\n");
    snprintf(lst, sizeof lst, "@%s/bad.txt", d);
    char *a3[] = {lst};
    CHECK(label_collect(a3, 1, NULL, &in) == CARSEG_EIO && strstr(carseg_last_error(), "bad.txt"));
    CHECK(label_is_image_name("A.PnG") && !label_is_image_name(".png") && !label_is_image_name("x.gif"));
}

// =============================================================================================
// journal file side (src/eval/journal.c jlog)

static int count_lines(void *user, const char *line, size_t len) {
    if (len && line[0] != '{') return 1;   /* "unparsable" */
    (*(int *)user)++;
    return 0;
}

TEST(label_jlog) {
    const char *d = test_tmpdir();
    char p[1024];
    snprintf(p, sizeof p, "%s/j.journal", d);
    FILE *f;
    int n = 0, torn = 0;
    CHECK_OK(jlog_open(p, "HDR", 0, count_lines, &n, &f, &torn));
    CHECK(n == 0 && torn == 0);
    CHECK_OK(jlog_append(f, "{1}\n", 0));
    CHECK_OK(jlog_append(f, "{2}\n", 1));
    FILE *f2;   /* a second writer is refused */
    CHECK(jlog_open(p, "HDR", 0, count_lines, &n, &f2, &torn) == CARSEG_EIO);
    fclose(f);
    FILE *g = fopen(p, "ab");   /* a torn tail */
    fputs("{3", g);
    fclose(g);
    n = 0;
    CHECK_OK(jlog_open(p, "HDR", 0, count_lines, &n, &f, &torn));
    CHECK(n == 2 && torn == 1);
    CHECK_OK(jlog_append(f, "{4}\n", 0));
    fclose(f);
    uint8_t *buf;
    size_t len;
    CHECK_OK(read_file(p, &buf, &len));
    CHECK(len == 16 && !memcmp(buf, "HDR\n{1}\n{2}\n{4}\n", 16));
    free(buf);
    /* an unparsable complete line stops the reading there (it is cut off) */
    g = fopen(p, "ab");
    fputs("xx\n{5}\n", g);
    fclose(g);
    n = 0;
    CHECK_OK(jlog_open(p, "HDR", 0, count_lines, &n, &f, &torn));
    CHECK(n == 3 && torn == 1);
    fclose(f);
    CHECK(jlog_open(p, "OTHER", 0, count_lines, &n, &f, &torn) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "different run") != NULL);
    n = 0;
    CHECK_OK(jlog_open(p, "OTHER", 1, count_lines, &n, &f, &torn));   /* fresh */
    CHECK(n == 0);
    fclose(f);
    CHECK_OK(read_file(p, &buf, &len));
    CHECK(len == 6 && !memcmp(buf, "OTHER\n", 6));
    free(buf);
}

// =============================================================================================
// records, masks names, formats, zip

TEST(label_records) {
    int w = 5, h = 4;
    uint16_t lab[20] = {0};
    for (int y = 1; y <= 2; y++) for (int x = 1; x <= 3; x++) lab[y * 5 + x] = 2;
    lab[19] = 3;
    float sc[3] = {0.5f, 0.25f, 0.125f};
    char *line = label_rec_format("a/b", lab, w, h, sc, 3);
    REQUIRE(line);
    CHECK_MSG(!strcmp(line, "{\"id\":\"a/b\",\"w\":5,\"h\":4,\"a\":[[2,0.25,\"5220003\"],[3,0.125,\"c01\"]]}\n"),
              "%s", line);
    label_rec r;
    CHECK(label_rec_parse(line, strlen(line) - 1, 3, &r) == 0);
    CHECK(r.w == 5 && r.h == 4 && r.n_ann == 2 && r.ann[0].k == 2 && r.ann[1].k == 3 &&
          r.ann[0].score == 0.25 && !strcmp(r.ann[0].rle, "5220003") && !strcmp(r.name, "a/b"));
    label_rec_free(&r);
    CHECK(label_rec_parse(line, strlen(line) - 1, 2, &r) != 0);   /* label 3 beyond 2 classes */
    free(line);
    static const char *bad[] = {"{\"id\":\"x\",\"w\":5,\"h\":4,\"a\":[[1,1,\"5220004\"]]}",  /* > hw */
                                "{\"id\":\"x\",\"w\":5,\"h\":4,\"a\":[[0,1,\"5220003\"]]}",  /* label 0 */
                                "{\"id\":\"\",\"w\":5,\"h\":4,\"a\":[]}",
                                "{\"id\":\"x\",\"w\":0,\"h\":4,\"a\":[]}",
                                "{\"id\":\"x\",\"w\":5,\"h\":4,\"a\":[[1,1]]}",
                                "{\"id\":\"x\",\"w\":5,\"h\":4,\"a\":[[1,1,\"52 0003\"]]}",
                                "{\"id\":\"x\",\"w\":5,\"h\":4,\"a\":[[1,1,\"5220003\"]"};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++)
        CHECK_MSG(label_rec_parse(bad[k], strlen(bad[k]), 3, &r) != 0, "%s accepted", bad[k]);
    /* mask file names: no '/', no hidden names, unique */
    const char *names[] = {"a/b", "a_b", ".x", "", "cat"};
    char **mn = label_mask_names(names, 5);
    REQUIRE(mn);
    CHECK(!strcmp(mn[0], "a_b") && !strcmp(mn[1], "a_b_2") && !strcmp(mn[2], "_.x") &&
          !strcmp(mn[3], "_") && !strcmp(mn[4], "cat"));
    for (int k = 0; k < 5; k++) free(mn[k]);
    free(mn);
    unsigned fmt;
    char err[160];
    CHECK(label_formats_parse("png,masks,cvat", &fmt, err, sizeof err) == 0 &&
          fmt == (LABEL_FMT_PNG | LABEL_FMT_MASKS | LABEL_FMT_CVAT));
    CHECK(label_formats_parse("png,svg", &fmt, err, sizeof err) == -1 && strstr(err, "svg"));
    uint8_t c[3];
    label_class_color(1, c);
    CHECK(c[0] == 128 && c[1] == 0 && c[2] == 0);
}

static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static unsigned rd16(const uint8_t *p) { return p[0] | p[1] << 8; }

TEST(label_zip) {
    const char *d = test_tmpdir();
    char p[1024];
    snprintf(p, sizeof p, "%s/t.zip", d);
    zipw *z;
    CHECK_OK(zipw_open(p, &z));
    CHECK_OK(zipw_add(z, "a.txt", "hello\n", 6));
    CHECK_OK(zipw_add(z, "dir/empty", "", 0));
    uint8_t big[5000];
    for (int i = 0; i < 5000; i++) big[i] = (uint8_t)(i * 7);
    CHECK_OK(zipw_add(z, "dir/b.bin", big, sizeof big));
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    CHECK(file_exists(tmp) && !file_exists(p));   /* nothing under the final name until close */
    CHECK_OK(zipw_close(z));
    CHECK(!file_exists(tmp));
    uint8_t *b;
    size_t len;
    REQUIRE(read_file(p, &b, &len) == CARSEG_OK);
    /* walk it as an unzip would: EOCD -> central directory -> local headers -> CRC */
    REQUIRE(len >= 22);
    const uint8_t *e = b + len - 22;
    CHECK(rd32(e) == 0x06054b50 && rd16(e + 8) == 3 && rd16(e + 10) == 3);
    uint32_t cd = rd32(e + 16), cdn = rd32(e + 12);
    CHECK(cd + cdn + 22 == len);
    const char *want[] = {"a.txt", "dir/empty", "dir/b.bin"};
    const uint8_t *q = b + cd;
    for (int k = 0; k < 3 && q + 46 <= e; k++) {
        CHECK(rd32(q) == 0x02014b50);
        unsigned nl = rd16(q + 28);
        CHECK(nl == strlen(want[k]) && !memcmp(q + 46, want[k], nl));
        uint32_t off = rd32(q + 42), crc = rd32(q + 16), sz = rd32(q + 24);
        const uint8_t *l = b + off;
        CHECK(rd32(l) == 0x04034b50 && rd16(l + 8) == 0 && rd32(l + 14) == crc && rd32(l + 22) == sz);
        const uint8_t *data = l + 30 + rd16(l + 26) + rd16(l + 28);
        CHECK(crc32(crc32(0, Z_NULL, 0), data, sz) == crc);
        q += 46 + nl;
    }
    free(b);
    if (access("/usr/bin/python3", X_OK) == 0) {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import zipfile,sys; z=zipfile.ZipFile('%s'); "
                 "sys.exit(z.testzip() is not None or z.read('a.txt')!=b'hello\\n' or len(z.read('dir/b.bin'))!=5000)\"", p);
        CHECK_MSG(system(cmd) == 0, "python's zipfile rejects the zip");
    }
}

// =============================================================================================
// `carseg segment` end to end (fixture models, tiny images: a few hundred ms a run)

typedef struct {
    const char *bin;
    char models[3000];
    char root[1024];   /* test dir */
    char in[1100];     /* the input folder */
} cli_env;

/* 6 tiny images in IN/ (nested) from the shared photos; 0 when fixtures are missing */
static int cli_setup(cli_env *E) {
    E->bin = getenv("CARSEG_BIN");
    const char *g = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *c = shared_path("fixtures/models/sc_f16.safetensors");
    const char *v = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (!E->bin || !g || !c || !v || !file_exists(g) || !file_exists(c)) return 0;
    snprintf(E->models, sizeof E->models, "--generator %s --classifier %s --vocab %s --no-crf", g, c, v);
    snprintf(E->root, sizeof E->root, "%s", test_tmpdir());
    snprintf(E->in, sizeof E->in, "%s/in", E->root);
    mkdirs(E->in, "sub/deep");
    static const struct { const char *rel, *photo; int w, h; } ims[] = {
        {"a.png", "data/photos/coffee.png", 40, 32},     {"sub/b.png", "data/photos/chelsea.png", 48, 36},
        {"sub/deep/c.png", "data/photos/astronaut.png", 32, 32}, {"d.png", "data/photos/camera.png", 44, 30},
        {"sub/e.png", "data/photos/coffee.png", 36, 40}, {"f.png", "data/photos/chelsea.png", 34, 34}};
    for (size_t k = 0; k < sizeof ims / sizeof *ims; k++) {
        char p[1300];
        snprintf(p, sizeof p, "%s/%s", E->in, ims[k].rel);
        if (!tiny_png(p, ims[k].photo, ims[k].w, ims[k].h)) return 0;
    }
    return 1;
}

static int exit_of(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0); }

static char *slurp(const char *path) {
    uint8_t *d;
    size_t n;
    if (read_file(path, &d, &n) != CARSEG_OK) return NULL;
    return (char *)d;
}

/* every regular file below dir, relative, sorted */
static void list_files(const char *dir, const char *rel, char ***v, int *n) {
    char p[2048];
    snprintf(p, sizeof p, "%s%s%s", dir, *rel ? "/" : "", rel);
    DIR *d = opendir(p);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char r[2048], full[4200];
        snprintf(r, sizeof r, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        snprintf(full, sizeof full, "%s/%s", dir, r);
        struct stat sb;
        if (lstat(full, &sb) != 0) continue;
        if (S_ISDIR(sb.st_mode)) list_files(dir, r, v, n);
        else {
            *v = realloc(*v, sizeof **v * (size_t)(*n + 1));
            (*v)[(*n)++] = strdup(r);
        }
    }
    closedir(d);
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* drops the lines holding "timings_ms" (they measure the run, the one thing two runs differ in) */
static void drop_timings(char *s) {
    char *o = s, *p = s;
    while (*p) {
        char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p + 1) : strlen(p);
        int drop = memmem(p, l, "\"timings_ms\"", 12) != NULL;
        if (!drop) { memmove(o, p, l); o += l; }
        p += l;
    }
    *o = 0;
}

/* the two output trees hold the same files with the same bytes (NAME.json: but the timings) */
static int same_tree(const char *a, const char *b, char *why, size_t wn) {
    char **va = NULL, **vb = NULL;
    int na = 0, nb = 0, ok = 1;
    list_files(a, "", &va, &na);
    list_files(b, "", &vb, &nb);
    if (na) qsort(va, (size_t)na, sizeof *va, cmp_cstr);
    if (nb) qsort(vb, (size_t)nb, sizeof *vb, cmp_cstr);
    if (na != nb) { snprintf(why, wn, "%d files vs %d", na, nb); ok = 0; }
    for (int i = 0; ok && i < na; i++) {
        if (strcmp(va[i], vb[i])) { snprintf(why, wn, "%s vs %s", va[i], vb[i]); ok = 0; break; }
        char pa[4200], pb[4200];
        snprintf(pa, sizeof pa, "%s/%s", a, va[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, vb[i]);
        uint8_t *da, *db;
        size_t la, lb;
        if (read_file(pa, &da, &la) || read_file(pb, &db, &lb)) { snprintf(why, wn, "%s unreadable", va[i]); ok = 0; break; }
        size_t l = strlen(va[i]);
        if (l > 5 && !strcmp(va[i] + l - 5, ".json")) {
            drop_timings((char *)da), drop_timings((char *)db);
            la = strlen((char *)da), lb = strlen((char *)db);
        }
        if (la != lb || memcmp(da, db, la)) { snprintf(why, wn, "%s differs", va[i]); ok = 0; }
        free(da), free(db);
    }
    for (int i = 0; i < na; i++) free(va[i]);
    for (int i = 0; i < nb; i++) free(vb[i]);
    free(va), free(vb);
    return ok;
}

/* no file under its final name is half-written: PNGs decode, JSON parses, the zip ends well */
static int all_whole(const char *dir, char *why, size_t wn) {
    char **v = NULL;
    int n = 0, ok = 1;
    list_files(dir, "", &v, &n);
    for (int i = 0; i < n; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, v[i]);
        size_t l = strlen(v[i]);
        if (strstr(v[i], ".tmp.")) { free(v[i]); continue; }
        if (l > 4 && !strcmp(v[i] + l - 4, ".png")) {
            image_u8 im;
            if (image_load_rgb(p, &im) != CARSEG_OK) { snprintf(why, wn, "%s: %s", v[i], carseg_last_error()); ok = 0; }
            else image_free(&im);
        } else if (l > 5 && !strcmp(v[i] + l - 5, ".json")) {
            json *j = json_parse_file(p);
            if (!j) { snprintf(why, wn, "%s: %s", v[i], carseg_last_error()); ok = 0; }
            json_free(j);
        } else if (l > 4 && !strcmp(v[i] + l - 4, ".zip")) {
            uint8_t *d;
            size_t len;
            if (read_file(p, &d, &len) || len < 22 || rd32(d + len - 22) != 0x06054b50) { snprintf(why, wn, "%s cut", v[i]); ok = 0; }
            if (d) free(d);
        }
        free(v[i]);
    }
    free(v);
    return ok;
}

static const char *ALL_FMT = "--format png,overlay,json,masks,cvat";

static int run_segment(const cli_env *E, const char *out, const char *extra, const char *err_file) {
    char cmd[8000];
    snprintf(cmd, sizeof cmd, "%s segment %s --classes cat,cup,table,person %s --out %s --coco %s/coco.json "
             "%s %s > /dev/null 2>%s", E->bin, E->in, E->models, out, out, ALL_FMT, extra ? extra : "",
             err_file ? err_file : "/dev/null");
    return exit_of(system(cmd));
}

TEST(label_cli_folder_outputs) {
    cli_env E;
    if (!cli_setup(&E)) SKIP("CARSEG_BIN or the fixture models / photos missing");
    char out[1200], err[1200], p[2400];
    snprintf(out, sizeof out, "%s/out", E.root);
    snprintf(err, sizeof err, "%s/err.txt", E.root);
    REQUIRE(run_segment(&E, out, NULL, err) == 0);
    static const char *names[] = {"a", "d", "f", "sub/b", "sub/deep/c", "sub/e"};   /* sorted walk */
    static const char *rels[] = {"a.png", "d.png", "f.png", "sub/b.png", "sub/deep/c.png", "sub/e.png"};
    const char *cls[] = {"cat", "cup", "table", "person"};
    json *coco = NULL;
    snprintf(p, sizeof p, "%s/coco.json", out);
    REQUIRE((coco = json_parse_file(p)));
    const json *imgs = json_get(coco, "images"), *cats = json_get(coco, "categories"),
               *anns = json_get(coco, "annotations");
    REQUIRE(imgs && cats && anns && imgs->len == 6 && cats->len == 4);
    CHECK(anns->len >= 6);   /* every image has some class (the fixture models' outputs) */
    for (int k = 0; k < 4; k++)
        CHECK(json_num(cats->kids[k], "id", 0) == k + 1 && !strcmp(json_str(cats->kids[k], "name", ""), cls[k]));
    size_t ai = 0;
    long next_id = 1;
    char *cvat_list = NULL;
    snprintf(p, sizeof p, "%s/cvat/ImageSets/Segmentation/default.txt", out);
    cvat_list = slurp(p);
    CHECK(cvat_list && !strcmp(cvat_list, "a\nd\nf\nsub/b\nsub/deep/c\nsub/e\n"));
    free(cvat_list);
    for (int i = 0; i < 6; i++) {
        const json *im = imgs->kids[i];
        CHECK(json_num(im, "id", 0) == i + 1);
        CHECK_MSG(!strcmp(json_str(im, "file_name", ""), rels[i]), "file_name %s", json_str(im, "file_name", ""));
        for (int f = 0; f < 3; f++) {
            static const char *suf[] = {".png", ".overlay.png", ".json"};
            snprintf(p, sizeof p, "%s/%s%s", out, names[i], suf[f]);
            CHECK_MSG(file_exists(p), "missing %s", p);
        }
        int w, h;
        uint16_t *lab = NULL;
        snprintf(p, sizeof p, "%s/%s.png", out, names[i]);
        REQUIRE(labels_read(p, &w, &h, &lab) == CARSEG_OK);
        CHECK(json_num(im, "width", 0) == w && json_num(im, "height", 0) == h);
        int present[5] = {0};
        for (int k = 0; k < w * h; k++) if (lab[k] <= 4) present[lab[k]] = 1;
        /* cvat: the label map in the label map's colours */
        image_u8 cv;
        snprintf(p, sizeof p, "%s/cvat/SegmentationClass/%s.png", out, names[i]);
        if (image_load_rgb(p, &cv) == CARSEG_OK) {
            int bad = cv.w != w || cv.h != h;
            for (int k = 0; !bad && k < w * h; k++) {
                uint8_t c[3];
                label_class_color(lab[k], c);
                bad = memcmp(cv.px + 3 * k, c, 3) != 0;
            }
            CHECK_MSG(!bad, "%s: cvat colours", names[i]);
            image_free(&cv);
        } else CHECK_MSG(0, "%s", carseg_last_error());
        for (int k = 1; k <= 4; k++) {
            /* masks/NAME/CLASS.png exactly for the classes found */
            snprintf(p, sizeof p, "%s/masks/%s/%s.png", out, names[i], cls[k - 1]);
            CHECK_MSG(file_exists(p) == present[k], "%s", p);
            if (present[k]) {
                image_u8 m;
                if (image_load_indexed(p, &m) == CARSEG_OK) {
                    int bad = 0;
                    for (int q = 0; q < w * h; q++) bad += m.px[q] != (lab[q] == k);
                    CHECK_MSG(!bad, "%s: %d pixels differ", p, bad);
                    image_free(&m);
                }
                /* one COCO annotation per class found, in order, its RLE the class's mask */
                REQUIRE(ai < anns->len);
                const json *a = anns->kids[ai++];
                CHECK(json_num(a, "id", 0) == next_id++ && json_num(a, "image_id", 0) == i + 1 &&
                      json_num(a, "category_id", 0) == k && json_num(a, "iscrowd", -1) == 0);
                const json *seg = json_get(a, "segmentation"), *sz = json_get(seg, "size");
                CHECK(sz && sz->len == 2 && sz->kids[0]->num == h && sz->kids[1]->num == w);
                uint8_t *mm = malloc((size_t)w * h);
                uint64_t area;
                double bb[4];
                CHECK_OK(carseg_rle_decode(json_str(seg, "counts", ""), h, w, mm, &area, bb));
                int bad = 0, x0 = w, y0 = h, x1 = -1, y1 = -1;
                uint64_t want = 0;
                for (int q = 0; q < w * h; q++) {
                    int on = lab[q] == k;
                    bad += mm[q] != on;
                    if (on) {
                        want++;
                        int x = q % w, y = q / w;
                        x0 = x < x0 ? x : x0, y0 = y < y0 ? y : y0, x1 = x > x1 ? x : x1, y1 = y > y1 ? y : y1;
                    }
                }
                CHECK_MSG(!bad, "annotation %zu: %d pixels differ", ai, bad);
                CHECK(json_num(a, "area", -1) == (double)want && area == want);
                const json *jb = json_get(a, "bbox");
                CHECK(jb && jb->len == 4 && jb->kids[0]->num == x0 && jb->kids[1]->num == y0 &&
                      jb->kids[2]->num == x1 - x0 + 1 && jb->kids[3]->num == y1 - y0 + 1);
                CHECK(json_get(a, "score") && json_get(a, "score")->type == JSON_NUM);
                free(mm);
            }
        }
        free(lab);
    }
    CHECK(ai == anns->len);
    json_free(coco);
    /* the zip holds labelmap.txt, default.txt and the staged PNGs, byte for byte */
    snprintf(p, sizeof p, "%s/cvat.zip", out);
    uint8_t *z;
    size_t zl;
    REQUIRE(read_file(p, &z, &zl) == CARSEG_OK && zl > 22);
    const uint8_t *e = z + zl - 22;
    CHECK(rd16(e + 10) == 8);
    const uint8_t *q = z + rd32(e + 16);
    for (unsigned k = 0; k < rd16(e + 10) && q + 46 <= e; k++) {
        unsigned nl = rd16(q + 28);
        char name[600];
        snprintf(name, sizeof name, "%.*s", (int)nl, (const char *)q + 46);
        const uint8_t *l = z + rd32(q + 42);
        const uint8_t *data = l + 30 + rd16(l + 26);
        snprintf(p, sizeof p, "%s/cvat/%s", out, name);
        uint8_t *f;
        size_t fl;
        CHECK_MSG(read_file(p, &f, &fl) == CARSEG_OK && fl == rd32(q + 24) && !memcmp(f, data, fl),
                  "zip entry %s", name);
        if (!strcmp(name, "labelmap.txt"))
            CHECK(fl > 0 && strstr((char *)f, "background:0,0,0::\ncat:128,0,0::\ncup:0,128,0::\n"));
        free(f);
        q += 46 + nl;
    }
    free(z);
    /* plain progress lines when stderr is not a terminal */
    char *log = slurp(err);
    CHECK(log && strstr(log, "carseg: [1/6] ") && strstr(log, "carseg: [6/6] ") &&
          strstr(log, "6 of 6 images done (6 this run, 0 from the journal), 0 failed"));
    free(log);
    /* again: nothing to do; --quiet: silent */
    REQUIRE(run_segment(&E, out, "--quiet", err) == 0);
    log = slurp(err);
    CHECK_MSG(log && !*log, "quiet run said: %s", log ? log : "");
    free(log);
    REQUIRE(run_segment(&E, out, NULL, err) == 0);
    log = slurp(err);
    CHECK(log && strstr(log, "(0 this run, 6 from the journal)"));
    free(log);
    /* --force redoes all */
    REQUIRE(run_segment(&E, out, "--force", err) == 0);
    log = slurp(err);
    CHECK(log && strstr(log, "(6 this run, 0 from the journal)"));
    free(log);
    /* another class list on the same --out: refused (the journal belongs to another run) */
    char cmd[8000];
    snprintf(cmd, sizeof cmd, "%s segment %s --classes dog %s --out %s 2>%s >/dev/null", E.bin, E.in,
             E.models, out, err);
    CHECK(exit_of(system(cmd)) == 1);
    log = slurp(err);
    CHECK(log && strstr(log, "--force") && strstr(log, "different run"));
    free(log);
    /* on a terminal: a bar with done/total, images per minute, ETA */
    if (access("/usr/bin/script", X_OK) == 0) {
        snprintf(cmd, sizeof cmd, "/usr/bin/script -qec \"%s segment %s --classes cat,cup %s --out %s/tty "
                 ">/dev/null\" /dev/null > %s 2>&1", E.bin, E.in, E.models, E.root, err);
        CHECK(exit_of(system(cmd)) == 0);
        log = slurp(err);
        CHECK_MSG(log && strstr(log, "\r") && strstr(log, "img/min") && strstr(log, "ETA") &&
                  strstr(log, "] 6/6") && !strstr(log, "carseg: [1/6]"), "tty: %s", log ? log : "");
        free(log);
    }
}

/* SIGKILL at random moments of a folder run, then the same command again (killed again or not):
 * every time, nothing under a final name is half-written, and the finished tree equals an
 * uninterrupted run's byte for byte (the per-image JSON's timings_ms line aside; the journal,
 * COCO JSON, zip, PNGs all identical). */
TEST(label_cli_kill_resume) {
    cli_env E;
    if (!cli_setup(&E)) SKIP("CARSEG_BIN or the fixture models / photos missing");
    char ref[1200], why[600];
    snprintf(ref, sizeof ref, "%s/ref", E.root);
    double t0 = now_ms();
    REQUIRE(run_segment(&E, ref, NULL, NULL) == 0);
    double T = now_ms() - t0;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    fprintf(stderr, "  uninterrupted run %.0f ms; kill seed %u\n", T, seed);
    int kills = 0, resumed_mid = 0;
    for (int trial = 0; trial < 5; trial++) {
        char out[1200], cmd[8000];
        snprintf(out, sizeof out, "%s/kill%d", E.root, trial);
        snprintf(cmd, sizeof cmd, "exec %s segment %s --classes cat,cup,table,person %s --out %s --coco %s/coco.json "
                 "%s > /dev/null 2>/dev/null", E.bin, E.in, E.models, out, out, ALL_FMT);
        for (int k = 0; k < 1 + trial % 3; k++) {   /* 1 to 3 kills, then a run to the end */
            pid_t pid = fork();
            REQUIRE(pid >= 0);
            if (pid == 0) { execl("/bin/sh", "sh", "-c", cmd, (char *)NULL); _exit(127); }
            seed = seed * 1103515245u + 12345u;
            /* within the first 70 % of an uninterrupted run's time: later runs are often faster than the
             * first (warm page cache), so a later draw can fall after the run has ended */
            double at = (double)((seed >> 8) % 1000) / 1000.0 * T * 0.7;
            usleep((useconds_t)(at * 1000));
            kill(pid, SIGKILL);
            int st;
            waitpid(pid, &st, 0);
            kills += WIFSIGNALED(st);
            CHECK_MSG(all_whole(out, why, sizeof why), "trial %d kill %d at %.0f ms: %s", trial, k, at, why);
            char jp[1300];
            snprintf(jp, sizeof jp, "%s/carseg-segment.journal", out);
            char *j = slurp(jp);
            int lines = 0;
            for (char *c = j; c && *c; c++) lines += *c == '\n';
            resumed_mid += lines > 1 && lines < 7;
            free(j);
        }
        int rc = exit_of(system(cmd + 5));   /* without "exec" */
        CHECK_MSG(rc == 0, "trial %d: the resumed run exits %d", trial, rc);
        CHECK_MSG(same_tree(ref, out, why, sizeof why), "trial %d (seed %u): %s", trial, seed, why);
    }
    CHECK_MSG(kills >= 3, "only %d of 10 runs were killed", kills);
    fprintf(stderr, "  %d kills, %d left a partial journal\n", kills, resumed_mid);
}

/* bad images do not stop the run: reported as they happen and at the end, exit 1;
 * --fail-fast stops at the first; a resumed run tries them again */
TEST(label_cli_bad_images) {
    cli_env E;
    if (!cli_setup(&E)) SKIP("CARSEG_BIN or the fixture models / photos missing");
    char p[2400], out[1200], err[1200], cmd[8000];
    snprintf(p, sizeof p, "%s/b0_junk.png", E.in);
    write_text(p, "this is not an image\n");
    /* truncated: the first half of a real PNG */
    snprintf(p, sizeof p, "%s/a.png", E.in);
    uint8_t *d;
    size_t n;
    REQUIRE(read_file(p, &d, &n) == CARSEG_OK);
    snprintf(p, sizeof p, "%s/sub/c_trunc.png", E.in);
    FILE *f = fopen(p, "wb");
    fwrite(d, 1, n / 2, f);
    fclose(f);
    free(d);
    /* too large: over --max-pixels */
    snprintf(p, sizeof p, "%s/sub/deep/big.png", E.in);
    REQUIRE(tiny_png(p, "data/photos/camera.png", 60, 50));
    int unreadable = geteuid() != 0;   /* root reads anything */
    if (unreadable) {
        snprintf(p, sizeof p, "%s/e_noperm.png", E.in);
        REQUIRE(tiny_png(p, "data/photos/camera.png", 20, 20));
        chmod(p, 0);
    }
    snprintf(out, sizeof out, "%s/out", E.root);
    snprintf(err, sizeof err, "%s/err.txt", E.root);
    int rc = run_segment(&E, out, "--max-pixels 2500", err);
    CHECK(rc == 1);
    char *log = slurp(err);
    REQUIRE(log);
    CHECK_MSG(strstr(log, "b0_junk.png: not a JPEG or PNG") && strstr(log, "c_trunc.png") &&
              strstr(log, "big.png: image too large (60x50"), "%s", log);
    int nfail = 3 + unreadable;
    char want[200];
    snprintf(want, sizeof want, "6 of %d images done (6 this run, 0 from the journal), %d failed", 6 + nfail, nfail);
    CHECK_MSG(strstr(log, want) && strstr(log, "failed images:"), "%s", log);
    /* reported as it happens: before the next image's progress line */
    const char *at = strstr(log, "carseg: error: "), *next = at ? strstr(at, "carseg: [") : NULL;
    CHECK(at && next && next < strstr(log, "failed images:"));
    free(log);
    static const char *good[] = {"a", "d", "f", "sub/b", "sub/deep/c", "sub/e"};
    for (int k = 0; k < 6; k++) {
        snprintf(p, sizeof p, "%s/%s.png", out, good[k]);
        CHECK_MSG(file_exists(p), "%s", p);
    }
    snprintf(p, sizeof p, "%s/coco.json", out);
    json *coco = json_parse_file(p);
    CHECK(coco && json_get(coco, "images") && json_get(coco, "images")->len == 6);
    json_free(coco);
    /* again: the 6 from the journal, the bad ones tried again (and failing again) */
    CHECK(run_segment(&E, out, "--max-pixels 2500", err) == 1);
    log = slurp(err);
    snprintf(want, sizeof want, "6 of %d images done (0 this run, 6 from the journal), %d failed", 6 + nfail, nfail);
    CHECK_MSG(log && strstr(log, want), "%s", log ? log : "");
    free(log);
    /* --fail-fast: stops at b0_junk.png (sorted after a.png, before d.png) */
    snprintf(out, sizeof out, "%s/ff", E.root);
    CHECK(run_segment(&E, out, "--max-pixels 2500 --fail-fast", err) == 1);
    log = slurp(err);
    CHECK_MSG(log && strstr(log, "b0_junk.png") && strstr(log, "--fail-fast") && !strstr(log, "c_trunc"), "%s", log ? log : "");
    free(log);
    snprintf(p, sizeof p, "%s/a.png", out);
    CHECK(file_exists(p));
    snprintf(p, sizeof p, "%s/d.png", out);
    CHECK(!file_exists(p));
    /* a missing input is an error before anything is written */
    snprintf(out, sizeof out, "%s/none", E.root);
    snprintf(cmd, sizeof cmd, "%s segment %s/nope.png --classes cat %s --out %s 2>%s >/dev/null", E.bin, E.in,
             E.models, out, err);
    CHECK(exit_of(system(cmd)) == 1 && !file_exists(out));
    /* @list with a folder entry and a file entry */
    snprintf(p, sizeof p, "%s/list.txt", E.root);
    write_text(p, "in/sub/deep\n# comment\nin/d.png\n");
    snprintf(out, sizeof out, "%s/fromlist", E.root);
    snprintf(cmd, sizeof cmd, "%s segment @%s/list.txt --classes cat %s --out %s --max-pixels 2500 --quiet "
             "2>%s >/dev/null", E.bin, E.root, E.models, out, err);
    CHECK(exit_of(system(cmd)) == 1);   /* big.png under sub/deep fails */
    snprintf(p, sizeof p, "%s/c.png", out);   /* the folder entry: relative to the folder */
    CHECK(file_exists(p));
    snprintf(p, sizeof p, "%s/in/d.png", out);   /* the file entry: its path in the list */
    CHECK(file_exists(p));
    if (unreadable) {
        snprintf(p, sizeof p, "%s/e_noperm.png", E.in);
        chmod(p, 0644);
    }
}

/* `carseg eval --predictions FILE.json` scores COCO RLE predictions exactly as the same label
 * maps given as PNGs: a 3-image VOC-like dataset segmented by `carseg segment --coco` */
TEST(label_cli_eval_coco) {
    cli_env E;
    if (!cli_setup(&E)) SKIP("CARSEG_BIN or the fixture models / photos missing");
    char base[1300], p[2400], cmd[8000];
    snprintf(base, sizeof base, "%s/voc/VOCdevkit/VOC2012", E.root);
    mkdirs(base, "JPEGImages");
    mkdirs(base, "SegmentationClass");
    mkdirs(base, "ImageSets/Segmentation");
    static const char *ids[] = {"2007_000001", "2007_000002", "2007_000003"};
    static const char *src[] = {"a.png", "sub/b.png", "d.png"};
    char list[200] = "";
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", E.in, src[i]);
        uint8_t *d;
        size_t n;
        REQUIRE(read_file(p, &d, &n) == CARSEG_OK);
        snprintf(p, sizeof p, "%s/JPEGImages/%s.jpg", base, ids[i]);   /* PNG bytes: sniffed */
        FILE *f = fopen(p, "wb");
        fwrite(d, 1, n, f);
        fclose(f);
        free(d);
        image_u8 im;
        snprintf(p, sizeof p, "%s/%s", E.in, src[i]);
        REQUIRE(image_load_rgb(p, &im) == CARSEG_OK);
        uint16_t *gt = malloc(sizeof *gt * (size_t)im.w * im.h);
        for (int y = 0; y < im.h; y++)   /* blocks of background, person (15), chair (9), 255 */
            for (int x = 0; x < im.w; x++)
                gt[y * im.w + x] = x < im.w / 3 ? 0 : y < im.h / 2 ? 15 : x == im.w - 1 ? 255 : 9;
        snprintf(p, sizeof p, "%s/SegmentationClass/%s.png", base, ids[i]);
        CHECK_OK(carseg_labels_save_png(p, gt, im.w, im.h));
        free(gt);
        image_free(&im);
        strcat(list, ids[i]);
        strcat(list, "\n");
    }
    snprintf(p, sizeof p, "%s/ImageSets/Segmentation/val.txt", base);
    write_text(p, list);
    snprintf(cmd, sizeof cmd, "%s segment %s/JPEGImages --preset voc %s --out %s/seg --coco %s/seg/coco.json "
             "--format png --quiet > /dev/null", E.bin, base, E.models, E.root, E.root);
    REQUIRE(exit_of(system(cmd)) == 0);
    json *res[2];
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s/voc --predictions %s/seg%s --out %s/ev%d "
                 "--quiet > /dev/null", E.bin, E.root, E.root, k ? "/coco.json" : "", E.root, k);
        CHECK(exit_of(system(cmd)) == 0);
        snprintf(p, sizeof p, "%s/ev%d/results.json", E.root, k);
        res[k] = json_parse_file(p);
    }
    REQUIRE(res[0] && res[1]);
    CHECK(json_num(res[0], "n_images", 0) == 3 && json_num(res[1], "n_images", 0) == 3);
    const json *c0 = json_get(res[0], "confusion"), *c1 = json_get(res[1], "confusion");
    REQUIRE(c0 && c1 && c0->len == 21 && c1->len == 21);
    int diff = 0;
    double total = 0;
    for (int g = 0; g < 21; g++)
        for (size_t q = 0; q < c0->kids[g]->len; q++) {
            diff += c0->kids[g]->kids[q]->num != c1->kids[g]->kids[q]->num;
            total += c0->kids[g]->kids[q]->num;
        }
    CHECK(diff == 0 && total > 0);
    CHECK(json_num(res[0], "miou", -1) == json_num(res[1], "miou", -2));
    json_free(res[0]);
    json_free(res[1]);
    /* a polygon segmentation is refused, naming the annotation */
    snprintf(p, sizeof p, "%s/poly.json", E.root);
    write_text(p, "{\"images\":[{\"id\":1,\"file_name\":\"2007_000001.jpg\",\"width\":40,\"height\":32}],"
                  "\"annotations\":[{\"id\":1,\"image_id\":1,\"category_id\":15,\"segmentation\":[[0,0,5,0,5,5]]}]}");
    snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s/voc --predictions %s --out %s/ev9 --quiet "
             "> /dev/null 2>%s/err.txt", E.bin, E.root, p, E.root, E.root);
    CHECK(exit_of(system(cmd)) == 1);
    snprintf(p, sizeof p, "%s/err.txt", E.root);
    char *log = slurp(p);
    CHECK_MSG(log && strstr(log, "annotations[0]") && strstr(log, "polygons"), "%s", log ? log : "");
    free(log);
}
