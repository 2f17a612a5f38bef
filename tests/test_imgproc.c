/* test_imgproc.c — GaussianBlur / BGR2GRAY / resize against Debian's python3-opencv 4.6 outputs
 * (scripts/gen_image_fixtures.py cv, run at test time), plus fixed vectors that need no Python. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "image_fixtures.h"
#include "imgproc.h"
#include "util.h"

TEST(imgproc_blur_gray_match_opencv) {
    const char *why;
    const json *m = image_fixtures("cv", &why);
    if (!m) SKIP("%s", why);
    const json *cases = json_get(m, "cases");
    REQUIRE(cases && cases->len >= 10);
    int n = 0;
    for (size_t i = 0; i < cases->len; i++) {
        const json *c = json_at(cases, i);
        for (int pass = 0; pass < 2; pass++) {   /* 3 channels, then 1 channel */
            const char *ik = pass ? "img_c1" : "img";
            if (!json_str(c, ik, NULL)) continue;
            npy_array in;
            if (!fx_npy(json_str(c, ik, ""), NPY_U8, &in)) continue;
            int h = (int)in.shape[0], w = (int)in.shape[1], ch = in.ndim == 3 ? (int)in.shape[2] : 1;
            uint8_t *out = malloc(in.count);
            static const int ks[] = {15, 3, 5, 7, 9, 31};
            for (int t = 0; t < 6; t++) {
                char key[32];
                snprintf(key, sizeof key, "blur%d%s", ks[t], pass ? "_c1" : "");
                const char *ref = json_str(c, key, NULL);
                npy_array r;
                if (!ref || !fx_npy(ref, NPY_U8, &r)) continue;
                cv_gaussian_blur_u8(out, in.data, w, h, ch, ks[t]);
                size_t bad = 0;
                for (size_t k = 0; k < in.count; k++) bad += out[k] != ((uint8_t *)r.data)[k];
                CHECK_MSG(bad == 0 && r.count == in.count, "%s k=%d %dx%dx%d: %zu pixels differ",
                          json_str(c, ik, ""), ks[t], w, h, ch, bad);
                n++;
                npy_free(&r);
            }
            npy_array g;
            if (!pass && ch == 3 && fx_npy(json_str(c, "gray", ""), NPY_U8, &g)) {
                cv_bgr2gray_u8(out, in.data, w, h);
                CHECK_MSG(g.count == (size_t)w * h && !memcmp(out, g.data, g.count), "gray %dx%d", w, h);
                npy_free(&g);
            }
            free(out);
            npy_free(&in);
        }
    }
    fprintf(stderr, "  %d blurs compared with cv2.GaussianBlur\n", n);
    CHECK(n > 30);
}

TEST(imgproc_resize_match_opencv) {
    const char *why;
    const json *m = image_fixtures("cv", &why);
    if (!m) SKIP("%s", why);
    const json *rs = json_get(m, "resize");
    REQUIRE(rs && rs->len > 20);
    double worst = 0;
    int nn_bad = 0;
    for (size_t i = 0; i < rs->len; i++) {
        const json *c = json_at(rs, i);
        npy_array src, lin, nn;
        if (!fx_npy(json_str(c, "map", ""), NPY_F32, &src)) continue;
        int sh = (int)src.shape[0], sw = (int)src.shape[1];
        int w = (int)json_num(c, "w", 0), h = (int)json_num(c, "h", 0);
        float *out = malloc(sizeof(float) * w * h);
        if (fx_npy(json_str(c, "lin", ""), NPY_F32, &lin)) {
            cv_resize_linear_f32(out, w, h, src.data, sw, sh);
            double md = 0;
            for (size_t k = 0; k < lin.count; k++) {
                double d = fabs(out[k] - ((float *)lin.data)[k]);
                if (!(d <= md)) md = d;
            }
            CHECK_MSG(md <= 1e-6, "linear %dx%d -> %dx%d: max diff %g", sw, sh, w, h, md);
            if (md > 0 && getenv("IMGPROC_VERBOSE")) fprintf(stderr, "  linear %dx%d -> %dx%d: %g\n", sw, sh, w, h, md);
            if (md > worst) worst = md;
            npy_free(&lin);
        }
        if (fx_npy(json_str(c, "nn", ""), NPY_F32, &nn)) {
            cv_resize_nearest_f32(out, w, h, src.data, sw, sh);
            int bad = memcmp(out, nn.data, sizeof(float) * w * h) != 0;
            CHECK_MSG(!bad, "nearest %dx%d -> %dx%d differs", sw, sh, w, h);
            nn_bad += bad;
            npy_free(&nn);
        }
        free(out);
        npy_free(&src);
    }
    fprintf(stderr, "  %zu resizes: linear max |diff| %g, nearest exact\n", rs->len, worst);
}

/* Vectors that need no OpenCV: a 1-pixel image is unchanged; a constant image stays constant;
 * the taps of the 15x15 kernel (sigma 2.6) give a known impulse response. */
TEST(imgproc_blur_fixed_vectors) {
    uint8_t one = 77, o1;
    cv_gaussian_blur_u8(&o1, &one, 1, 1, 1, 15);
    CHECK(o1 == 77);
    uint8_t cst[9 * 4 * 3], oc[9 * 4 * 3];
    memset(cst, 200, sizeof cst);
    cv_gaussian_blur_u8(oc, cst, 9, 4, 3, 15);
    int bad = 0;
    for (size_t i = 0; i < sizeof oc; i++) bad += oc[i] != 200;
    CHECK(bad == 0);
    /* impulse of 255 in a 31x31 image: centre = round(255 * 40 * 40 / 65536) = 62 (taps ..36 40 36..) */
    uint8_t imp[31 * 31] = {0}, oi[31 * 31];
    imp[15 * 31 + 15] = 255;
    cv_gaussian_blur_u8(oi, imp, 31, 31, 1, 15);
    CHECK(oi[15 * 31 + 15] == (255 * 40 * 40 + 32768) >> 16);
    CHECK(oi[15 * 31 + 16] == (255 * 40 * 36 + 32768) >> 16);
    CHECK(oi[0] == 0);
    uint8_t px[3] = {10, 20, 30}, g;
    cv_bgr2gray_u8(&g, px, 1, 1);
    CHECK(g == 22);   /* cv2.cvtColor([[[10, 20, 30]]], COLOR_BGR2GRAY) */
    /* pixels where the 14-bit formula of older OpenCV is off by one (cv2 4.6 values) */
    static const uint8_t v[][4] = {{17, 231, 137, 179}, {244, 47, 7, 57}, {108, 17, 91, 49},
                                   {61, 223, 156, 185}, {61, 218, 119, 171}};
    for (int i = 0; i < 5; i++) {
        cv_bgr2gray_u8(&g, v[i], 1, 1);
        CHECK_MSG(g == v[i][3], "gray(%d,%d,%d) = %d, cv2 gives %d", v[i][0], v[i][1], v[i][2], g, v[i][3]);
    }
    float s[4] = {0, 1, 2, 3}, d[8];
    cv_resize_linear_f32(d, 4, 2, s, 2, 2);   /* (0 1 / 2 3) -> x: 0 .25 .75 1 */
    /* same height: rows copied; x: centres -0.25 (clamped), 0.25, 0.75, 1.25 (clamped) */
    CHECK(d[0] == 0 && d[1] == 0.25f && d[2] == 0.75f && d[3] == 1 && d[4] == 2 && d[7] == 3);
    cv_resize_nearest_f32(d, 4, 2, s, 2, 2);
    CHECK(d[0] == 0 && d[1] == 0 && d[2] == 1 && d[3] == 1 && d[4] == 2);
}
