/* test_image.c — decoders, writers, Pillow-exact bicubic resize and CLIP preprocessing,
 * compared bit for bit with Pillow 9.4 / torch 1.13 outputs made by scripts/gen_image_fixtures.py
 * at test time; hostile (truncated/corrupted) files. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jpeglib.h>
#include <tiffio.h>

#include "check.h"
#include "image.h"
#include "image_fixtures.h"
#include "util.h"

static int count_diff_u8(const uint8_t *a, const uint8_t *b, size_t n, size_t *first) {
    int d = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) {
            if (!d) *first = i;
            d++;
        }
    return d;
}

TEST(image_decode_matches_pillow) {
    const char *why;
    const json *m = image_fixtures("decode", &why);
    if (!m) SKIP("%s", why);
    const json *cases = json_get(m, "cases");
    REQUIRE(cases && cases->len > 50);
    int n_rgb = 0, n_idx = 0, n_u16 = 0;
    for (size_t i = 0; i < cases->len; i++) {
        const json *c = json_at(cases, i);
        const char *file = json_str(c, "file", ""), *rgb = json_str(c, "rgb", NULL),
                   *idx = json_str(c, "idx", NULL), *u16 = json_str(c, "u16", NULL);
        npy_array a;
        if (rgb && fx_npy(rgb, NPY_U8, &a)) {
            image_u8 im;
            carseg_status st = image_load_rgb(file, &im);
            CHECK_MSG(st == CARSEG_OK, "%s: %s", file, carseg_last_error());
            if (st == CARSEG_OK) {
                size_t first = 0;
                int ok = a.ndim == 3 && a.shape[0] == im.h && a.shape[1] == im.w && a.shape[2] == 3 && im.c == 3;
                CHECK_MSG(ok, "%s: size %dx%d", file, im.w, im.h);
                int d = ok ? count_diff_u8(im.px, a.data, a.count, &first) : 0;
                CHECK_MSG(d == 0, "%s: %d bytes differ from Pillow (first at %zu)", file, d, first);
                n_rgb++;
            }
            image_free(&im);
            npy_free(&a);
        }
        if (idx && fx_npy(idx, NPY_U8, &a)) {
            image_u8 im;
            carseg_status st = image_load_indexed(file, &im);
            int is_jpeg = strstr(file, ".jpg") != NULL;
            if (is_jpeg) {   /* indices only from lossless files */
                CHECK_MSG(st != CARSEG_OK, "%s: JPEG accepted as index image", file);
            } else {
                CHECK_MSG(st == CARSEG_OK, "%s: %s", file, carseg_last_error());
                if (st == CARSEG_OK) {
                    size_t first = 0;
                    int ok = a.ndim == 2 && a.shape[0] == im.h && a.shape[1] == im.w && im.c == 1;
                    CHECK_MSG(ok, "%s: index size", file);
                    int d = ok ? count_diff_u8(im.px, a.data, a.count, &first) : 0;
                    CHECK_MSG(d == 0, "%s: %d indices differ (first at %zu)", file, d, first);
                    n_idx++;
                }
            }
            image_free(&im);
            npy_free(&a);
        }
        if (u16 && fx_npy(u16, NPY_U16, &a)) {
            int w = 0, h = 0;
            uint16_t *v = NULL;
            carseg_status st = image_load_labels16(file, &w, &h, &v);
            CHECK_MSG(st == CARSEG_OK, "%s: %s", file, carseg_last_error());
            if (st == CARSEG_OK) {
                CHECK(a.ndim == 2 && a.shape[0] == h && a.shape[1] == w);
                CHECK_MSG(a.count == (size_t)w * h && !memcmp(v, a.data, a.count * 2), "%s: labels differ", file);
                n_u16++;
            }
            free(v);
            npy_free(&a);
        }
    }
    fprintf(stderr, "  %d RGB, %d index, %d label16 decodes compared with Pillow\n", n_rgb, n_idx, n_u16);
    CHECK(n_rgb > 50 && n_idx > 20 && n_u16 >= 6);
}

TEST(image_resize_bicubic_matches_pillow) {
    const char *why;
    const json *m = image_fixtures("resize", &why);
    if (!m) SKIP("%s", why);
    const json *cases = json_get(m, "cases");
    REQUIRE(cases && cases->len > 50);
    image_u8 src = {0};
    char cur[1024] = "";
    int n = 0;
    for (size_t i = 0; i < cases->len; i++) {
        const json *c = json_at(cases, i);
        const char *file = json_str(c, "file", "");
        int w = (int)json_num(c, "w", 0), h = (int)json_num(c, "h", 0);
        if (strcmp(cur, file)) {
            image_free(&src);
            snprintf(cur, sizeof cur, "%s", file);
            CHECK_OK(image_load_rgb(file, &src));
        }
        npy_array a;
        if (!src.px || !fx_npy(json_str(c, "out", ""), NPY_U8, &a)) continue;
        image_u8 dst;
        CHECK_OK(image_resize_bicubic(&src, w, h, &dst));
        if (dst.px && a.count == (size_t)w * h * 3) {
            size_t first = 0;
            int d = count_diff_u8(dst.px, a.data, a.count, &first);
            CHECK_MSG(d == 0, "%s %dx%d -> %dx%d: %d bytes differ from Pillow (first at %zu: %d vs %d)",
                      file, src.w, src.h, w, h, d, first, dst.px[first], ((uint8_t *)a.data)[first]);
            n++;
        } else {
            CHECK_MSG(0, "%s: size mismatch", file);
        }
        image_free(&dst);
        npy_free(&a);
    }
    image_free(&src);
    fprintf(stderr, "  %d resizes compared with Pillow\n", n);
}

TEST(image_resize_single_channel) {
    /* c = 1 and c = 3 must agree channel-wise (Pillow resizes bands independently) */
    image_u8 rgb = {0}, g = {0}, r3, r1;
    unsigned s = 7;
    rgb.w = g.w = 19, rgb.h = g.h = 11, rgb.c = 3, g.c = 1;
    rgb.px = malloc(19 * 11 * 3);
    g.px = malloc(19 * 11);
    for (int i = 0; i < 19 * 11; i++) {
        uint8_t v = (uint8_t)(test_randf(&s) * 127 + 128);
        g.px[i] = v;
        rgb.px[3 * i] = rgb.px[3 * i + 1] = rgb.px[3 * i + 2] = v;
    }
    CHECK_OK(image_resize_bicubic(&rgb, 7, 30, &r3));
    CHECK_OK(image_resize_bicubic(&g, 7, 30, &r1));
    int bad = 0;
    for (int i = 0; i < 7 * 30; i++) bad += r3.px[3 * i] != r1.px[i] || r3.px[3 * i + 2] != r1.px[i];
    CHECK(bad == 0);
    image_u8 bogus;
    CHECK(image_resize_bicubic(&g, 0, 5, &bogus) == CARSEG_EINVAL);
    image_free(&rgb), image_free(&g), image_free(&r3), image_free(&r1);
}

TEST(image_clip_preprocess_matches_torchvision) {
    const char *why;
    const json *m = image_fixtures("clip", &why);
    if (!m) SKIP("%s", why);
    const json *cases = json_get(m, "cases");
    if (!cases || !cases->len) SKIP("%s", json_str(m, "skip", "no cases"));
    float *out = malloc(sizeof(float) * 3 * 224 * 224);
    for (size_t i = 0; i < cases->len; i++) {
        const json *c = json_at(cases, i);
        const char *file = json_str(c, "file", "");
        image_u8 im;
        CHECK_OK(image_load_rgb(file, &im));
        if (!im.px) continue;
        npy_array a;
        if (fx_npy(json_str(c, "crop224", ""), NPY_F32, &a)) {
            CHECK_OK(clip_preprocess(&im, 224, out));
            CHECK(a.count == 3 * 224 * 224);
            float d = (float)test_max_abs_diff(out, a.data, a.count, NULL, NULL);
            CHECK_MSG(d == 0.0f, "%s: 224 crop differs by %g", file, d);
            npy_free(&a);
        }
        if (fx_npy(json_str(c, "crop32", ""), NPY_F32, &a)) {
            CHECK_OK(clip_preprocess(&im, 32, out));
            float d = (float)test_max_abs_diff(out, a.data, a.count, NULL, NULL);
            CHECK_MSG(d == 0.0f, "%s: 32 crop differs by %g", file, d);
            npy_free(&a);
        }
        int w16 = (int)json_num(c, "w16", 0), h16 = (int)json_num(c, "h16", 0);
        if (fx_npy(json_str(c, "exact", ""), NPY_F32, &a)) {
            float *ex = malloc(sizeof(float) * 3 * w16 * h16);
            CHECK_OK(clip_preprocess_exact(&im, w16, h16, ex));
            CHECK(a.count == (size_t)3 * w16 * h16);
            float d = (float)test_max_abs_diff(ex, a.data, a.count, NULL, NULL);
            CHECK_MSG(d == 0.0f, "%s: exact %dx%d differs by %g", file, w16, h16, d);
            free(ex);
            npy_free(&a);
        }
        image_free(&im);
    }
    free(out);
}

/* The upstream fixture: sum of each preprocessed 3x224x224 tensor (clip_sg/expected.json). */
TEST(image_clip_preprocess_fixture_sums) {
    const char *ej = shared_path("fixtures/clip_sg/expected.json");
    if (!ej || !file_exists(ej)) SKIP("clip_sg fixture missing");
    json *j = json_parse_file(ej);
    REQUIRE(j);
    const json *imgs = json_get(j, "images"), *sha = json_get(j, "preprocessed_pixel_sha");
    REQUIRE(imgs && sha && imgs->len == sha->len && imgs->len > 0);
    float *out = malloc(sizeof(float) * 3 * 224 * 224);
    for (size_t i = 0; i < imgs->len; i++) {
        const char *name = json_at(imgs, i)->str;
        const char *rel = strstr(name, ".jpg") ? "data/voc_mini/VOCdevkit/VOC2012/JPEGImages/%s"
                                               : "data/photos/%s";
        char buf[512];
        snprintf(buf, sizeof buf, rel, name);
        image_u8 im;
        CHECK_OK(image_load_rgb(shared_path(buf), &im));
        if (!im.px) continue;
        CHECK_OK(clip_preprocess(&im, 224, out));
        double s = 0;
        for (int k = 0; k < 3 * 224 * 224; k++) s += out[k];
        /* the reference summed in float32 (torch): allow its rounding, not a pixel's worth */
        CHECK_NEAR(s, json_at(sha, i)->num, 0.02);
        fprintf(stderr, "  %s: sum %.4f, upstream %.4f\n", name, s, json_at(sha, i)->num);
        image_free(&im);
    }
    free(out);
    json_free(j);
}

/* The CaR generator input: input.png -> Resize((ceil16 H, ceil16 W)) + Normalize. */
TEST(image_clip_preprocess_exact_car_gen_input) {
    const char *cases[] = {"chelsea_voc", "coffee300_voc", "astronaut_cocolike"};
    int done = 0;
    for (int i = 0; i < 3; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "fixtures/car/%s/input.png", cases[i]);
        const char *in = shared_path(rel);
        if (!in || !file_exists(in)) continue;
        image_u8 im;
        CHECK_OK(image_load_rgb(in, &im));
        if (!im.px) continue;
        snprintf(rel, sizeof rel, "fixtures/car/%s/iter01/gen_input.npy", cases[i]);
        npy_array a;
        if (fx_npy(shared_path(rel), NPY_F32, &a)) {
            int w16 = (im.w + 15) / 16 * 16, h16 = (im.h + 15) / 16 * 16;
            int o = a.ndim - 3;   /* (3, H', W') or (1, 3, H', W') */
            CHECK(o >= 0 && a.shape[o] == 3 && a.shape[o + 1] == h16 && a.shape[o + 2] == w16);
            float *ex = malloc(sizeof(float) * 3 * w16 * h16);
            CHECK_OK(clip_preprocess_exact(&im, w16, h16, ex));
            if (a.count == (size_t)3 * w16 * h16) {
                float d = (float)test_max_abs_diff(ex, a.data, a.count, NULL, NULL);
                CHECK_MSG(d == 0.0f, "%s: gen_input differs by %g", cases[i], d);
            }
            free(ex);
            npy_free(&a);
            done++;
        }
        image_free(&im);
    }
    if (!done) SKIP("car fixtures missing");
}

TEST(image_voc_palette_and_writers) {
    uint8_t pal[768];
    voc_palette(pal);
    CHECK(pal[0] == 0 && pal[1] == 0 && pal[2] == 0);
    CHECK(pal[3] == 128 && pal[4] == 0 && pal[5] == 0);                 /* 1 aeroplane */
    CHECK(pal[15 * 3] == 192 && pal[15 * 3 + 1] == 128 && pal[15 * 3 + 2] == 128);   /* 15 person */
    CHECK(pal[255 * 3] == 224 && pal[255 * 3 + 1] == 224 && pal[255 * 3 + 2] == 192); /* void */
    const char *dir = test_tmpdir();
    char path[700];
    enum { W = 13, H = 6 };
    uint8_t rgb[W * H * 3], idx[W * H];
    uint16_t v16[W * H];
    for (int i = 0; i < W * H; i++) {
        rgb[3 * i] = (uint8_t)i, rgb[3 * i + 1] = (uint8_t)(3 * i), rgb[3 * i + 2] = (uint8_t)(255 - i);
        idx[i] = (uint8_t)(i % 21);
        v16[i] = (uint16_t)(i * 811);
    }
    idx[5] = 255;
    image_u8 im;
    snprintf(path, sizeof path, "%s/rgb.png", dir);
    CHECK_OK(image_save_png_rgb(path, rgb, W, H));
    CHECK_OK(image_load_rgb(path, &im));
    CHECK(im.w == W && im.h == H && im.c == 3 && !memcmp(im.px, rgb, sizeof rgb));
    image_free(&im);
    snprintf(path, sizeof path, "%s/lab.png", dir);
    CHECK_OK(image_save_png_palette(path, idx, W, H, pal, 256));
    CHECK_OK(image_load_indexed(path, &im));
    CHECK(im.w == W && im.h == H && im.c == 1 && !memcmp(im.px, idx, sizeof idx));
    image_free(&im);
    CHECK_OK(image_load_rgb(path, &im));
    CHECK(im.px && im.px[3 * 5] == 224 && im.px[3 * 1] == 128 && im.px[3 * 1 + 1] == 0);
    image_free(&im);
    /* a short palette with out-of-range indices still gives a valid file */
    CHECK_OK(image_save_png_palette(path, idx, W, H, pal, 21));
    CHECK_OK(image_load_indexed(path, &im));
    CHECK(im.px && !memcmp(im.px, idx, sizeof idx));
    image_free(&im);
    snprintf(path, sizeof path, "%s/g16.png", dir);
    CHECK_OK(image_save_png_gray16(path, v16, W, H));
    int w = 0, h = 0;
    uint16_t *back = NULL;
    CHECK_OK(image_load_labels16(path, &w, &h, &back));
    CHECK(w == W && h == H && back && !memcmp(back, v16, sizeof v16));
    free(back);
    /* writer errors are reported, nothing left behind */
    CHECK(image_save_png_rgb("/nonexistent-dir/x.png", rgb, W, H) != CARSEG_OK);
    CHECK(image_save_png_palette(path, idx, W, H, pal, 0) == CARSEG_EINVAL);
}

// ---------------------------------------------------------------------------------------------
// hostile inputs

static size_t make_jpeg(uint8_t **buf, int gray) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    unsigned long len = 0;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, buf, &len);
    c.image_width = 24, c.image_height = 16;
    c.input_components = gray ? 1 : 3;
    c.in_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    if (!gray) jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    uint8_t row[24 * 3];
    for (int y = 0; y < 16; y++) {
        for (int x = 0; x < 24 * 3; x++) row[x] = (uint8_t)(x * 7 + y * 13);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return len;
}

static size_t make_tiff(const char *path, uint8_t **buf) {
    TIFF *t = TIFFOpen(path, "w");
    if (!t) return 0;
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 20);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, 9);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 16);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_LZW);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 4);
    uint16_t row[20];
    for (int y = 0; y < 9; y++) {
        for (int x = 0; x < 20; x++) row[x] = (uint16_t)(x * 300 + y);
        TIFFWriteScanline(t, row, y, 0);
    }
    TIFFClose(t);
    size_t len = 0;
    if (read_file(path, buf, &len) != CARSEG_OK) return 0;
    return len;
}

/* Every truncation must fail cleanly; every single-byte corruption must not crash.
 * kind: 0 RGB, 1 indexed, 2 labels16. In memory (the path loaders only add read_file). */
static carseg_status decode_kind(int kind, const char *name, const uint8_t *d, size_t n) {
    image_u8 im;
    int w, h;
    uint16_t *v = NULL;
    carseg_status st = kind == 2 ? image_decode_labels16(name, d, n, &w, &h, &v)
                     : kind == 1 ? image_decode_indexed(name, d, n, &im)
                                 : image_decode_rgb(name, d, n, &im);
    if (kind == 2) free(v);
    else if (st == CARSEG_OK) image_free(&im);
    return st;
}

static void hostile_run(const char *dir, const char *name, const uint8_t *buf, size_t len, int kind) {
    (void)dir;
    int accepted_cuts = 0;
    uint8_t *b = malloc(len);
    for (size_t cut = 0; cut <= len; cut++) {
        uint8_t *t = malloc(cut ? cut : 1);   /* exactly `cut` bytes: ASan sees over-reads */
        memcpy(t, buf, cut);
        carseg_status st = decode_kind(kind, name, t, cut);
        free(t);
        if (cut == len) {
            CHECK_MSG(st == CARSEG_OK, "%s: the intact file fails: %s", name, carseg_last_error());
        } else if (st == CARSEG_OK) {
            accepted_cuts++;
        } else {
            CHECK_MSG(strstr(carseg_last_error(), name) != NULL, "error names the file: %s", carseg_last_error());
        }
    }
    CHECK_MSG(accepted_cuts == 0, "%s: %d truncated versions accepted", name, accepted_cuts);
    unsigned s = 99;
    for (size_t i = 0; i < len; i++) {
        memcpy(b, buf, len);
        b[i] ^= (uint8_t)(1u << (i % 8)) | (uint8_t)((test_randf(&s) + 1) * 127);
        decode_kind(kind, name, b, len);
    }
    free(b);
}

TEST(image_hostile_inputs) {
    const char *dir = test_tmpdir();
    char path[700];
    uint8_t *buf = NULL;
    size_t len = make_jpeg(&buf, 0);
    REQUIRE(len > 100);
    hostile_run(dir, "p.jpg", buf, len, 0);
    free(buf);
    buf = NULL;
    len = make_jpeg(&buf, 1);
    hostile_run(dir, "g.jpg", buf, len, 0);
    free(buf);
    uint8_t pal[768], idx[11 * 7], rgb[11 * 7 * 3];
    voc_palette(pal);
    for (int i = 0; i < 11 * 7; i++) idx[i] = (uint8_t)(i % 5), rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = (uint8_t)(i * 3);
    snprintf(path, sizeof path, "%s/src.png", dir);
    REQUIRE(image_save_png_palette(path, idx, 11, 7, pal, 5) == CARSEG_OK);
    REQUIRE(read_file(path, &buf, &len) == CARSEG_OK);
    hostile_run(dir, "p.png", buf, len, 1);
    free(buf);
    REQUIRE(image_save_png_rgb(path, rgb, 11, 7) == CARSEG_OK);
    REQUIRE(read_file(path, &buf, &len) == CARSEG_OK);
    hostile_run(dir, "rgb.png", buf, len, 0);
    free(buf);
    snprintf(path, sizeof path, "%s/src.tif", dir);
    buf = NULL;
    len = make_tiff(path, &buf);
    REQUIRE(len > 100);
    hostile_run(dir, "l.tif", buf, len, 2);
    free(buf);
    /* wrong kinds */
    image_u8 im;
    snprintf(path, sizeof path, "%s/empty", dir);
    REQUIRE(write_file_atomic(path, "", 0) == CARSEG_OK);
    CHECK(image_load_rgb(path, &im) == CARSEG_EFORMAT);
    CHECK(strstr(carseg_last_error(), path) != NULL);
    CHECK(image_load_rgb("/nonexistent/x.png", &im) == CARSEG_EIO);
    /* a truncated file through the path loaders */
    uint8_t *jb = NULL;
    size_t jl = make_jpeg(&jb, 0);
    snprintf(path, sizeof path, "%s/cut.jpg", dir);
    REQUIRE(write_file_atomic(path, jb, jl / 2) == CARSEG_OK);
    CHECK(image_load_rgb(path, &im) == CARSEG_EFORMAT);
    CHECK(strstr(carseg_last_error(), "cut.jpg") != NULL);
    free(jb);
}

/* libjpeg-written variants Pillow cannot write (YCCK, RGB without colour transform, 4:1:1,
 * arithmetic coding, restart markers), each decoded by Pillow and compared. */
static int write_jpeg_variant(const char *path, int variant) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = 45, c.image_height = 29;
    int four = variant <= 1;
    c.input_components = four ? 4 : 3;
    c.in_color_space = four ? JCS_CMYK : JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 88, TRUE);
    if (variant == 0) jpeg_set_colorspace(&c, JCS_CMYK);   /* Adobe marker, transform 0 */
    if (variant == 1) jpeg_set_colorspace(&c, JCS_YCCK);   /* Adobe marker, transform 2 */
    if (variant == 2) jpeg_set_colorspace(&c, JCS_RGB);    /* Adobe transform 0, no YCbCr */
    if (variant == 3) c.comp_info[0].h_samp_factor = 4, c.comp_info[0].v_samp_factor = 1;
    if (variant == 4) c.arith_code = TRUE;
    if (variant == 5) c.restart_interval = 2, c.comp_info[0].h_samp_factor = 1,
                      c.comp_info[0].v_samp_factor = 2;
    jpeg_start_compress(&c, TRUE);
    uint8_t row[45 * 4];
    for (int y = 0; y < 29; y++) {
        for (int x = 0; x < 45 * c.input_components; x++)
            row[x] = (uint8_t)(128 + 100 * sin(x * 0.3 + y * 0.2 + (x % 4)) + (x * y % 13));
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    fclose(f);
    return 1;
}

TEST(image_decode_jpeg_variants_match_pillow) {
    if (access("/usr/bin/python3", X_OK)) SKIP("needs /usr/bin/python3 with Pillow");
    const char *dir = test_tmpdir();
    char jp[6][700], np_[6][700], cmd[8000];
    int len = snprintf(cmd, sizeof cmd,
                       "/usr/bin/python3 -c 'import sys, numpy as np; from PIL import Image\n"
                       "for i in range(1, len(sys.argv), 2): "
                       "np.save(sys.argv[i + 1], np.asarray(Image.open(sys.argv[i]).convert(\"RGB\")))'");
    for (int v = 0; v < 6; v++) {
        snprintf(jp[v], sizeof jp[v], "%s/v%d.jpg", dir, v);
        snprintf(np_[v], sizeof np_[v], "%s/v%d.npy", dir, v);
        REQUIRE(write_jpeg_variant(jp[v], v));
        len += snprintf(cmd + len, sizeof cmd - len, " '%s' '%s'", jp[v], np_[v]);
    }
    snprintf(cmd + len, sizeof cmd - len, " 2>/dev/null");
    if (system(cmd) != 0) SKIP("Pillow unavailable");
    int n = 0;
    for (int v = 0; v < 6; v++) {
        npy_array a;
        image_u8 im;
        if (!fx_npy(np_[v], NPY_U8, &a)) continue;
        carseg_status st = image_load_rgb(jp[v], &im);
        CHECK_MSG(st == CARSEG_OK, "variant %d: %s", v, carseg_last_error());
        if (st == CARSEG_OK) {
            size_t first = 0;
            int d = a.count == (size_t)im.w * im.h * 3 ? count_diff_u8(im.px, a.data, a.count, &first) : -1;
            CHECK_MSG(d == 0, "JPEG variant %d: %d bytes differ from Pillow", v, d);
            n++;
        }
        image_free(&im);
        npy_free(&a);
    }
    CHECK(n == 6);
}
