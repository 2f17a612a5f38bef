/* test_label.c — issue #15: COCO RLE (src/rle.c) against pycocotools' known answers and by
 * round trips at many sizes; the hostile-input checks of the parser. */
#include "check.h"

#include <stdint.h>

#include "carseg.h"
#include "rle.h"

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
