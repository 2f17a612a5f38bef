/* test_sam.c — SAM / HQ-SAM network against ../shared/fixtures/sam (values made with SysCV/sam-hq's
 * segment_anything on the small random-weight HQ-SAM "samt"): ResizeLongestSide exact, image
 * embedding and early feature, point and box logits at the input size, low-resolution logits and
 * IoU predictions within 1e-4 of the largest reference magnitude; the torch.save file equal to the
 * safetensors file; hostile checkpoints; thread-count invariance (bit-identical). */
#include "check.h"

#include <stdint.h>
#include <unistd.h>

#include "image.h"
#include "gemm_f32.h"
#include "sam_impl.h"
#include "util.h"
#include "weights.h"

static const char *CASES[] = {"coffee_360x240", "astronaut_256x320"};

static const char *fx(const char *cs, const char *file) {
    static char buf[4][600];
    static int k;
    char rel[300];
    snprintf(rel, sizeof rel, "fixtures/sam/%s%s%s", cs ? cs : "", cs ? "/" : "", file);
    const char *p = shared_path(rel);
    if (!p) return NULL;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s", p);
    return buf[k];
}

/* max |a - b| / max |b| over n values */
static double rel_err(const float *a, const float *b, size_t n) {
    double mb, md = test_max_abs_diff(a, b, n, &mb, NULL);
    if (getenv("SAM_TEST_VERBOSE")) fprintf(stderr, "    rel err %.3g (max ref %.3g)\n", mb > 0 ? md / mb : md, mb);
    return mb > 0 ? md / mb : md;
}

static sam_model *load_samt(void) {
    const char *p = fx(NULL, "samt.safetensors");
    if (!p || !file_exists(p)) return NULL;
    sam_model *m = NULL;
    CHECK_OK(sam_load(p, &m));
    return m;
}

TEST(sam_resize_exact) {
    if (!fx(NULL, "README.md")) { SKIP("shared folder missing"); return; }
    for (int c = 0; c < 2; c++) {
        image_u8 im;
        REQUIRE(image_load_rgb(fx(CASES[c], "input.png"), &im) == CARSEG_OK);
        npy_array ref;
        REQUIRE(npy_read(fx(CASES[c], "resized_u8.npy"), &ref) == CARSEG_OK);
        uint8_t *rs;
        int nw, nh;
        CHECK_OK(sam_resize_image(im.px, im.w, im.h, &rs, &nw, &nh));
        CHECK(ref.ndim == 3 && ref.shape[0] == nh && ref.shape[1] == nw && ref.shape[2] == 3);
        if (ref.count == (size_t)nw * nh * 3) {
            size_t bad = 0;
            for (size_t i = 0; i < ref.count; i++) bad += rs[i] != ((uint8_t *)ref.data)[i];
            CHECK_MSG(bad == 0, "%s: %zu of %zu bytes differ", CASES[c], bad, ref.count);
        }
        free(rs);
        npy_free(&ref);
        image_free(&im);
    }
    int nh, nw;
    sam_preprocess_shape(240, 360, 1024, &nh, &nw);
    CHECK(nh == 683 && nw == 1024);
    sam_preprocess_shape(320, 256, 1024, &nh, &nw);
    CHECK(nh == 1024 && nw == 819);
}

TEST(sam_architecture_from_shapes) {
    sam_model *m = load_samt();
    if (!m) { SKIP("fixtures/sam missing"); return; }
    const sam_config *c = sam_model_config(m);
    CHECK(c->embed == 64 && c->depth == 4 && c->heads == 2 && c->patch == 16 && c->mlp == 256);
    CHECK(c->window == 14 && c->n_global == 2 && c->global[0] == 1 && c->global[1] == 3);
    CHECK(c->dim == 32 && c->dec_depth == 2 && c->dec_heads == 2 && c->dec_mlp == 64 && c->ds == 2);
    CHECK(c->iou_hidden == 32 && c->iou_depth == 3 && c->n_mask_tokens == 4 && c->hq == 1);
    /* the torch.save file: same tensors, no metadata, so the released models' 8 decoder heads */
    sam_model *p = NULL;
    CHECK_OK(sam_load(fx(NULL, "samt.pth"), &p));
    if (p) {
        CHECK(sam_model_config(p)->dec_heads == 8);
        CHECK(sam_model_params(p) == sam_model_params(m));
        sam_free(p);
    }
    sam_free(m);
}

/* one image set through the fixtures: embedding, early feature, all prompt kinds */
static void check_case(sam_model *m, const char *cs) {
    image_u8 im;
    REQUIRE(image_load_rgb(fx(cs, "input.png"), &im) == CARSEG_OK);
    sam_image *si = NULL;
    CHECK_OK(sam_set_image(m, im.px, im.w, im.h, &si));
    REQUIRE(si);
    const int N = 64 * 64, D = sam_model_config(m)->dim, E = sam_model_config(m)->embed;
    float *ref;
    int nd;
    int64_t sh[8];
    REQUIRE(npy_read_f32(fx(cs, "image_embeddings.npy"), &ref, &nd, sh) == CARSEG_OK);
    float *t = malloc(sizeof(float) * N * D);
    for (int ch = 0; ch < D; ch++)
        for (int i = 0; i < N; i++) t[(size_t)ch * N + i] = sam_image_embedding(si)[(size_t)i * D + ch];
    double e = rel_err(t, ref, (size_t)N * D);
    CHECK_MSG(e <= 1e-4, "%s: image embedding relative error %.3g", cs, e);
    free(t), free(ref);
    REQUIRE(npy_read_f32(fx(cs, "interm0.npy"), &ref, &nd, sh) == CARSEG_OK);
    e = rel_err(sam_image_interm(si), ref, (size_t)N * E);
    CHECK_MSG(e <= 1e-4, "%s: early feature relative error %.3g", cs, e);
    free(ref);

    char *meta_s;
    size_t ml;
    REQUIRE(read_file(fx(cs, "meta.json"), (uint8_t **)&meta_s, &ml) == CARSEG_OK);
    char err[100];
    json *meta = json_parse(meta_s, ml, err, sizeof err);
    free(meta_s);
    REQUIRE(meta);
    const json *pts = json_get(meta, "points"), *pred = json_get(meta, "predictor");
    int np = (int)pts->len;
    float *xy = malloc(sizeof(float) * 2 * np);
    int one = 1;
    sam_prompt *pr = malloc(sizeof *pr * np);
    for (int i = 0; i < np; i++) {
        xy[2 * i] = (float)json_at(json_at(pts, i), 0)->num;
        xy[2 * i + 1] = (float)json_at(json_at(pts, i), 1)->num;
        pr[i] = (sam_prompt){1, xy + 2 * i, &one, NULL};
    }
    const size_t HW = (size_t)im.w * im.h;
    float *logits = malloc(sizeof(float) * np * HW), *iou = malloc(sizeof(float) * np);
    float *lowres = malloc(sizeof(float) * np * 256 * 256);
    for (int mm = 0; mm < 2; mm++)
        for (int hq = 0; hq < 2; hq++) {
            char nm[64];
            snprintf(nm, sizeof nm, "points_mm%d_hq%d_logits.npy", mm, hq);
            CHECK_OK(sam_predict(m, si, pr, np, mm, hq, iou, mm && !hq ? lowres : NULL, logits));
            REQUIRE(npy_read_f32(fx(cs, nm), &ref, &nd, sh) == CARSEG_OK);
            CHECK(nd == 4 && sh[0] == np && sh[1] == 1 && sh[2] == im.h && sh[3] == im.w);
            e = rel_err(logits, ref, np * HW);
            CHECK_MSG(e <= 1e-4, "%s: %s relative error %.3g", cs, nm, e);
            free(ref);
            snprintf(nm, sizeof nm, "points_mm%d_hq%d", mm, hq);
            const json *ious = json_get(json_get(pred, nm), "iou");
            for (int i = 0; i < np; i++) {
                double r = json_at(json_at(ious, i), 0)->num;
                CHECK_MSG(fabs(iou[i] - r) <= 1e-4 * fabs(r) + 1e-6, "%s %s IoU %d: %.9g vs %.9g", cs,
                          nm, i, iou[i], r);
            }
            if (mm && !hq) {
                REQUIRE(npy_read_f32(fx(cs, "points_mm1_hq0_lowres.npy"), &ref, &nd, sh) == CARSEG_OK);
                e = rel_err(lowres, ref, (size_t)np * 256 * 256);
                CHECK_MSG(e <= 1e-4, "%s: low-res logits relative error %.3g", cs, e);
                free(ref);
            }
        }
    /* the box, single mask */
    const json *bx = json_get(meta, "box");
    float box[4];
    for (int j = 0; j < 4; j++) box[j] = (float)json_at(bx, j)->num;
    sam_prompt bp = {0, NULL, NULL, box};
    CHECK_OK(sam_predict(m, si, &bp, 1, 0, 0, iou, NULL, logits));
    REQUIRE(npy_read_f32(fx(cs, "box_logits.npy"), &ref, &nd, sh) == CARSEG_OK);
    e = rel_err(logits, ref, HW);
    CHECK_MSG(e <= 1e-4, "%s: box logits relative error %.3g", cs, e);
    free(ref);
    double r = json_at(json_get(json_get(pred, "box"), "iou"), 0)->num;
    CHECK_MSG(fabs(iou[0] - r) <= 1e-4 * fabs(r) + 1e-6, "%s box IoU %.9g vs %.9g", cs, iou[0], r);
    json_free(meta);
    free(xy), free(pr), free(logits), free(iou), free(lowres);
    sam_image_free(si);
    image_free(&im);
}

TEST(sam_fixture_coffee) {
    sam_model *m = load_samt();
    if (!m) { SKIP("fixtures/sam missing"); return; }
    check_case(m, CASES[0]);
    sam_free(m);
}

TEST(sam_fixture_astronaut) {
    sam_model *m = load_samt();
    if (!m) { SKIP("fixtures/sam missing"); return; }
    check_case(m, CASES[1]);
    sam_free(m);
}

TEST(sam_thread_invariance) {
    sam_model *m = load_samt();
    if (!m) { SKIP("fixtures/sam missing"); return; }
    image_u8 im;
    REQUIRE(image_load_rgb(fx(CASES[0], "input.png"), &im) == CARSEG_OK);
    int nt0 = carseg_get_threads();
    const size_t HW = (size_t)im.w * im.h, NE = 64 * 64 * 32;
    float pts[4] = {50, 60, 300, 200}, box[4] = {40, 30, 250, 200};
    int labs[2] = {1, 0};
    sam_prompt pr[2] = {{2, pts, labs, NULL}, {1, pts, labs, box}};
    float *first = NULL, *cur = malloc(sizeof(float) * (NE + 2 * HW + 2));
    for (int t = 1; t <= 3; t++) {
        carseg_set_threads(t);
        sam_image *si = NULL;
        CHECK_OK(sam_set_image(m, im.px, im.w, im.h, &si));
        REQUIRE(si);
        memcpy(cur, sam_image_embedding(si), sizeof(float) * NE);
        CHECK_OK(sam_predict(m, si, pr, 2, 1, 0, cur + NE + 2 * HW, NULL, cur + NE));
        float *alone = malloc(sizeof(float) * HW), iou1;   /* the second prompt alone: the same bits */
        CHECK_OK(sam_predict(m, si, pr + 1, 1, 1, 0, &iou1, NULL, alone));
        CHECK_MSG(!memcmp(alone, cur + NE + HW, sizeof(float) * HW) && iou1 == cur[NE + 2 * HW + 1],
                  "%d threads: a prompt decoded with another differs from it alone", t);
        free(alone);
        sam_image_free(si);
        if (!first) {
            first = malloc(sizeof(float) * (NE + 2 * HW + 2));
            memcpy(first, cur, sizeof(float) * (NE + 2 * HW + 2));
        } else {
            CHECK_MSG(memcmp(first, cur, sizeof(float) * (NE + 2 * HW + 2)) == 0,
                      "%d threads differ from 1 thread", t);
        }
    }
    carseg_set_threads(nt0);
    free(first), free(cur);
    image_free(&im);
    sam_free(m);
}

/* writes buf to a temp file, returns its path */
static const char *tmpfile_with(const void *buf, size_t len, const char *ext) {
    static char path[128];
    snprintf(path, sizeof path, "/tmp/carseg_test_sam_%d%s", (int)getpid(), ext);
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    fwrite(buf, 1, len, f);
    fclose(f);
    return path;
}

TEST(sam_hostile_checkpoints) {
    const char *p = fx(NULL, "samt.safetensors");
    if (!p || !file_exists(p)) { SKIP("fixtures/sam missing"); return; }
    uint8_t *buf;
    size_t len;
    REQUIRE(read_file(p, &buf, &len) == CARSEG_OK);
    sam_model *m = NULL;
    /* truncated at a few places */
    size_t cuts[] = {4, 100, len / 2, len - 1};
    for (int i = 0; i < 4; i++) {
        const char *t = tmpfile_with(buf, cuts[i], ".safetensors");
        REQUIRE(t);
        carseg_status st = sam_load(t, &m);
        CHECK_MSG(st != CARSEG_OK && m == NULL && strstr(carseg_last_error(), t),
                  "cut at %zu: %d %s", cuts[i], st, carseg_last_error());
        unlink(t);
    }
    /* a wrong shape: qkv of block 2 declared (192, 32) with its byte span kept (64 x 192 -> 384 x 32) */
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | buf[i];
    char *hdr = (char *)buf + 8;
    const char *key = "\"image_encoder.blocks.2.attn.qkv.weight\"";
    char *at = memmem(hdr, n, key, strlen(key));
    REQUIRE(at);
    char *shp = memmem(at, n - (size_t)(at - hdr), "[192,64]", 8);
    if (!shp) shp = memmem(at, n - (size_t)(at - hdr), "[192, 64]", 9);
    REQUIRE(shp && shp - at < 200);
    memcpy(shp, shp[5] == ' ' ? "[384, 32]" : "[384,32]", shp[5] == ' ' ? 9 : 8);
    const char *t = tmpfile_with(buf, len, ".safetensors");
    carseg_status st = sam_load(t, &m);
    CHECK_MSG(st == CARSEG_EMODEL && strstr(carseg_last_error(), "image_encoder.blocks.2.attn.qkv.weight"),
              "%d %s", st, carseg_last_error());
    unlink(t);
    free(buf);
    /* the torch.save file truncated */
    REQUIRE(read_file(fx(NULL, "samt.pth"), &buf, &len) == CARSEG_OK);
    t = tmpfile_with(buf, len - 100, ".pth");
    st = sam_load(t, &m);
    CHECK_MSG(st != CARSEG_OK && m == NULL && strstr(carseg_last_error(), t), "%d %s", st,
              carseg_last_error());
    unlink(t);
    free(buf);
    /* a CLIP-like file (no SAM tensors) */
    const char *clip = shared_path("fixtures/models");
    (void)clip;
    /* bad prompts */
    m = load_samt();
    REQUIRE(m);
    uint8_t px[3 * 8 * 8] = {0};
    sam_image *si = NULL;
    CHECK_OK(sam_set_image(m, px, 8, 8, &si));
    REQUIRE(si);
    float xy[2] = {1, 1}, iou[2];
    int bad = 7;
    sam_prompt pr = {1, xy, &bad, NULL};
    CHECK(sam_predict(m, si, &pr, 1, 1, 0, iou, NULL, NULL) == CARSEG_EINVAL);
    sam_prompt none = {0, NULL, NULL, NULL};
    CHECK(sam_predict(m, si, &none, 1, 1, 0, iou, NULL, NULL) == CARSEG_EINVAL);
    xy[0] = NAN;
    int ok = 1;
    sam_prompt nanp = {1, xy, &ok, NULL};
    CHECK(sam_predict(m, si, &nanp, 1, 1, 0, iou, NULL, NULL) == CARSEG_EINVAL);
    sam_image_free(si);
    sam_free(m);
}

/* the decoder's convolution kernels: Winograd F(4x4, 3x3) within 1e-5 of the direct product (the
 * nine taps as segments, its scalar twin written out here), and sam_dot_pixels's vector and
 * scalar code giving the same bits */
TEST(sam_conv_kernels) {
    if (!gemm_f32_available()) SKIP("needs AVX2 and FMA (x86-64): this CPU or build lacks them");
    unsigned s = 3;
    const int H = 12, W = 16, cin = 32, cout = 24, Wp = W + 2;
    const size_t np = (size_t)(H + 2) * Wp + 2;
    float *w = malloc(sizeof(float) * cout * cin * 9), *pad = calloc(np * cin, sizeof(float));
    for (int i = 0; i < cout * cin * 9; i++) w[i] = test_randf(&s);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < cin; c++) pad[((size_t)(y + 1) * Wp + x + 1) * cin + c] = test_randf(&s);
    sam_conv3 cv = {sam_conv3_reorder(w, cout, cin), NULL, cin, cout};
    float *upk = sam_conv3_wino_pack(w, cout, cin);
    float *work = malloc(sizeof(float) * sam_conv3_wino_work(cin, cout));
    float *a1 = calloc((size_t)H * Wp * cout, sizeof(float)), *a2 = calloc((size_t)H * Wp * cout, sizeof(float));
    REQUIRE(cv.w && upk);
    sam_conv3x3_padded(a1, pad, &cv, H, W);
    CHECK(sam_conv3x3_wino(a2, pad, upk, cin, cout, H, W, work) == 0);
    CHECK(sam_conv3x3_wino(a2, pad, upk, cin, cout, H - 2, W, work) == -1);   /* not whole tiles */
    double me = 0, mx = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int o = 0; o < cout; o++) {
                double ref = 0;
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++)
                        for (int c = 0; c < cin; c++)
                            ref += (double)pad[((size_t)(y + ky) * Wp + x + kx) * cin + c] *
                                   w[((size_t)o * cin + c) * 9 + ky * 3 + kx];
                size_t q = ((size_t)y * Wp + x) * cout + o;
                me = fmax(me, fmax(fabs(a1[q] - ref), fabs(a2[q] - ref)));
                mx = fmax(mx, fabs(ref));
            }
    CHECK_MSG(me < 1e-5 * mx, "conv3x3: error %.3g of %.3g", me, mx);
    size_t off[9];
    for (int k = 0; k < 9; k++) off[k] = ((size_t)(k / 3) * Wp + k % 3) * cin;
    float *d1 = malloc(sizeof(float) * H * W), *d2 = malloc(sizeof(float) * H * W);
    sam_dot_pixels(d1, pad, Wp, off, 9, w, cin, H, W);
    gemm_f32_set_enabled(0);
    sam_dot_pixels(d2, pad, Wp, off, 9, w, cin, H, W);
    gemm_f32_set_enabled(1);
    CHECK_MSG(!memcmp(d1, d2, sizeof(float) * H * W), "sam_dot_pixels: vector and scalar code differ");
    free(w), free(pad), free(work), free(a1), free(a2), free(d1), free(d2);
    cs_free(cv.w), cs_free(upk);
}
