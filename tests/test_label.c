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
