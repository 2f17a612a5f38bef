/* test_clip.c — the CLIP engine against the upstream fixtures (OpenAI clip/model.py and CaR's
 * clip_wrapper.py run on tiny random-weight CLIPs): text features, the CaR trunk (positional
 * embedding, tokens after L-1 blocks, head-averaged attentions), classifier embeddings. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fixtures.h"
#include "clip.h"
#include "image.h"
#include "nn.h"
#include "util.h"

#define RTOL 1e-4

/* CARSEG_VERBOSE=1: print max |diff| / max |ref| of each generated case (README evidence) */
static void report(const char *what, const float *got, const float *ref, size_t n) {
    if (!getenv("CARSEG_VERBOSE")) return;
    double mx = 0, d = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i])), d = fmax(d, fabs(got[i] - ref[i]));
    fprintf(stderr, "  %s: max|diff|/max|ref| = %.2e\n", what, mx > 0 ? d / mx : d);
}


#define load_fixture_model fixture_clip   /* tests/fixtures.h: missing -> skip, broken -> FAIL */

/* rows of a JSON array of token lists, zero-padded to ctx */
static int32_t *tokens_from_json(const json *arr, int ctx, int *n) {
    *n = (int)arr->len;
    int32_t *t = calloc((size_t)*n * ctx, sizeof(int32_t));
    for (int i = 0; i < *n; i++) {
        const json *row = json_at(arr, i);
        for (size_t j = 0; j < row->len && j < (size_t)ctx; j++)
            t[(size_t)i * ctx + j] = (int32_t)json_at(row, j)->num;
    }
    return t;
}

static float *floats_from_json(const json *arr, size_t *n) {
    size_t rows = arr->len, cols = json_at(arr, 0)->type == JSON_ARR ? json_at(arr, 0)->len : 1;
    float *v = malloc(sizeof(float) * rows * cols);
    for (size_t i = 0; i < rows; i++) {
        const json *r = json_at(arr, i);
        if (r->type == JSON_ARR)
            for (size_t j = 0; j < cols; j++) v[i * cols + j] = (float)json_at(r, j)->num;
        else v[i] = (float)r->num;
    }
    *n = rows * cols;
    return v;
}

TEST(clip_config_from_tensors) {
    clip_model *m = load_fixture_model("fixtures/clip_sg/model_f16.safetensors");
    if (!m) SKIP("fixtures/clip_sg missing");
    const clip_config *c = &m->cfg;
    CHECK(c->v_width == 128 && c->v_layers == 2 && c->v_heads == 2 && c->v_patch == 16);
    CHECK(c->v_grid == 14 && c->v_mlp == 512);
    CHECK(c->t_width == 64 && c->t_layers == 2 && c->t_heads == 1 && c->t_ctx == 77);
    CHECK(c->t_vocab == 49408 && c->embed == 32);
    CHECK_NEAR(c->logit_scale, 14.29852294921875, 1e-4);
    clip_free(m);
}

/* text features of expected.json's tokens from model file `rel` */
static void check_text_parity(const char *rel) {
    const char *ej = shared_path("fixtures/clip_sg/expected.json");
    clip_model *m = load_fixture_model(rel);
    if (!m || !ej) { clip_free(m); SKIP("fixtures/clip_sg missing"); }
    json *j = json_parse_file(ej);
    REQUIRE(j);
    int n;
    int32_t *tok = tokens_from_json(json_get(j, "tokens"), m->cfg.t_ctx, &n);
    size_t nref;
    float *ref = floats_from_json(json_get(j, "text_features"), &nref);
    REQUIRE(nref == (size_t)n * m->cfg.embed);
    float *got = malloc(sizeof(float) * nref);
    CHECK_OK(clip_encode_text(m, tok, n, got));
    char what[300];
    snprintf(what, sizeof what, "text_features (%s)", rel);
    CHECK_CLOSE(what, got, ref, nref, RTOL, 0);
    /* one prompt at a time gives the same as the batch (batching by EOT length) */
    float one[64];
    for (int i = 0; i < n; i++) {
        CHECK_OK(clip_encode_text(m, tok + (size_t)i * m->cfg.t_ctx, 1, one));
        CHECK_CLOSE("text_features single", one, ref + (size_t)i * m->cfg.embed, m->cfg.embed,
                    RTOL, 0);
    }
    free(tok), free(ref), free(got);
    json_free(j);
    clip_free(m);
}

TEST(clip_text_features_parity) { check_text_parity("fixtures/clip_sg/model_f16.safetensors"); }
TEST(clip_text_parity_hf) { check_text_parity("fixtures/clip_sg/model_hf.safetensors"); }
TEST(clip_text_parity_torchscript) { check_text_parity("fixtures/clip_sg/model_jit.pt"); }
TEST(clip_text_parity_state_dict) { check_text_parity("fixtures/clip_sg/model_state.pt"); }

/* image features (upstream _transform(224) + encode_image) and logits_per_image */
static void check_image_parity(const char *rel) {
    static const char *paths[] = {"data/photos/chelsea.png",
                                  "data/voc_mini/VOCdevkit/VOC2012/JPEGImages/2011_000025.jpg",
                                  "data/photos/camera.png"};
    const char *ej = shared_path("fixtures/clip_sg/expected.json");
    clip_model *m = load_fixture_model(rel);
    if (!m || !ej) { clip_free(m); SKIP("fixtures/clip_sg missing"); }
    json *j = json_parse_file(ej);
    REQUIRE(j);
    int E = m->cfg.embed, S = m->cfg.v_patch * m->cfg.v_grid;
    size_t nref, nlog, nt;
    float *ref = floats_from_json(json_get(j, "image_features"), &nref);
    float *lref = floats_from_json(json_get(j, "logits_per_image"), &nlog);
    float *tf = floats_from_json(json_get(j, "text_features"), &nt);
    int ni = (int)(nref / E), ntx = (int)(nt / E);
    REQUIRE(ni == 3 && nlog == (size_t)ni * ntx);
    float *x = malloc(sizeof(float) * 3 * S * S), *got = malloc(sizeof(float) * nref);
    for (int i = 0; i < ni; i++) {
        image_u8 im;
        const char *ip = shared_path(paths[i]);
        REQUIRE(ip);
        CHECK_OK(image_load_rgb(ip, &im));
        CHECK_OK(clip_preprocess(&im, S, x));
        double sum = 0;
        for (int k = 0; k < 3 * S * S; k++) sum += x[k];
        CHECK_NEAR(sum, json_at(json_get(j, "preprocessed_pixel_sha"), i)->num, 0.05);
        CHECK_OK(clip_encode_image(m, x, S, S, 0, got + (size_t)i * E));
        image_free(&im);
    }
    char what[300];
    snprintf(what, sizeof what, "image_features (%s)", rel);
    CHECK_CLOSE(what, got, ref, nref, RTOL, 0);
    /* logits_per_image = logit_scale * normalised image @ normalised text^T */
    nn_l2norm(got, ni, E);
    nn_l2norm(tf, ntx, E);
    float *lg = malloc(sizeof(float) * nlog);
    for (int i = 0; i < ni; i++)
        for (int t = 0; t < ntx; t++) {
            double d = 0;
            for (int k = 0; k < E; k++) d += (double)got[i * E + k] * tf[t * E + k];
            lg[i * ntx + t] = (float)(m->cfg.logit_scale * d);
        }
    CHECK_CLOSE("logits_per_image", lg, lref, nlog, RTOL, 0);
    free(x), free(got), free(ref), free(lref), free(tf), free(lg);
    json_free(j);
    clip_free(m);
}

TEST(clip_image_features_parity) { check_image_parity("fixtures/clip_sg/model_f16.safetensors"); }
TEST(clip_image_parity_torchscript) { check_image_parity("fixtures/clip_sg/model_jit.pt"); }

/* normalised text features of the strings in `texts` (looked up in tokens.json) vs ref rows */
static void check_text_emb(const clip_model *m, const json *tokmap, const char **texts, int n,
                           const float *ref, const char *what) {
    int ctx = m->cfg.t_ctx, E = m->cfg.embed;
    int32_t *tok = calloc((size_t)n * ctx, sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        const json *row = json_get(tokmap, texts[i]);
        if (!row) {
            CHECK_MSG(row != NULL, "no tokens for '%s'", texts[i]);
            free(tok);
            return;
        }
        for (size_t k = 0; k < row->len && k < (size_t)ctx; k++)
            tok[(size_t)i * ctx + k] = (int32_t)json_at(row, k)->num;
    }
    float *got = malloc(sizeof(float) * n * E);
    CHECK_OK(clip_encode_text(m, tok, n, got));
    nn_l2norm(got, n, E);
    CHECK_CLOSE(what, got, ref, (size_t)n * E, RTOL, 0);
    report(what, got, ref, (size_t)n * E);
    free(got), free(tok);
}

/* npy_read_f32 for 2-D arrays that may be stored in Fortran order (some fixtures are: np.save of
 * a transposed view); util's reader accepts C order only, so rewrite the header and transpose. */
static carseg_status read_f32_any_order(const char *path, float **out, int *nd, int64_t sh[8]) {
    uint8_t *buf;
    size_t len;
    TRY(read_file(path, &buf, &len));
    char *f = len > 10 ? strstr((char *)buf + 10, "'fortran_order': True") : NULL;
    if (!f) {
        free(buf);
        return npy_read_f32(path, out, nd, sh);
    }
    char *nl = memchr(f, '\n', len - (size_t)(f - (char *)buf));
    if (!nl || nl[-1] != ' ') { free(buf); return set_err(CARSEG_EFORMAT, "%s: odd header", path); }
    memmove(f + 22, f + 21, (size_t)(nl - 1 - (f + 21)));   /* "True" -> "False", one pad less */
    memcpy(f + 17, "False", 5);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s/fortran.npy", test_tmpdir());
    carseg_status st = write_file_atomic(tmp, buf, len);
    free(buf);
    TRY(st);
    float *a;
    TRY(npy_read_f32(tmp, &a, nd, sh));
    if (*nd != 2) { free(a); return set_err(CARSEG_EFORMAT, "%s: not 2-D", path); }
    /* the data was column-major (r, c): element (i, j) at j * rows + i */
    int64_t r = sh[0], c = sh[1];
    float *t = malloc(sizeof(float) * r * c);
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) t[i * c + j] = a[j * r + i];
    free(a);
    *out = t;
    return CARSEG_OK;
}

static const char *CASES[] = {"chelsea_voc", "coffee300_voc", "astronaut_cocolike"};

TEST(clip_car_text_embeddings) {
    clip_model *sg = load_fixture_model("fixtures/clip_sg/model_f16.safetensors");
    clip_model *sc = load_fixture_model("fixtures/models/sc_f16.safetensors");
    if (!sg || !sc) { clip_free(sg); clip_free(sc); SKIP("fixture models missing"); }
    int done = 0;
    for (int c = 0; c < 3; c++) {
        char rel[256];
        snprintf(rel, sizeof rel, "fixtures/car/%s/tokens.json", CASES[c]);
        const char *tp = shared_path(rel);
        if (!tp || !file_exists(tp)) continue;
        json *tokmap = json_parse_file(tp);
        REQUIRE(tokmap);
        /* the classifier model: astronaut_cocolike uses sg for both */
        const clip_model *cls = strcmp(CASES[c], "astronaut_cocolike") == 0 ? sg : sc;
        for (int it = 1; it <= 3; it++) {
            char d[256], p[300];
            snprintf(d, sizeof d, "fixtures/car/%s/iter%02d", CASES[c], it);
            snprintf(p, sizeof p, "%s/gen_text_fg.json", d);
            const char *gp = shared_path(p);
            if (!gp || !file_exists(gp)) continue;
            json *g = json_parse_file(gp);
            const json *names = json_get(g, "classnames");
            int n = (int)names->len;
            const char **tx = malloc(sizeof(char *) * n);
            for (int i = 0; i < n; i++) tx[i] = json_at(names, i)->str;
            snprintf(p, sizeof p, "%s/gen_text_emb_fg.npy", d);
            float *ref = NULL;
            int nd;
            int64_t sh[8];
            CHECK_OK(read_f32_any_order(shared_path(p), &ref, &nd, sh));
            REQUIRE(ref && sh[0] == n);
            check_text_emb(sg, tokmap, tx, n, ref, "gen_text_emb_fg");
            free(ref), free(tx);
            json_free(g);
            /* classifier text: (templates, n, E) */
            snprintf(p, sizeof p, "%s/cls_text.json", d);
            json *ct = json_parse_file(shared_path(p));
            snprintf(p, sizeof p, "%s/cls_text_emb.npy", d);
            CHECK_OK(npy_read_f32(shared_path(p), &ref, &nd, sh));
            REQUIRE(ct && nd == 3 && sh[0] == (int64_t)ct->len);
            for (size_t t = 0; t < ct->len; t++) {
                const json *row = json_at(ct, t);
                const char **tt = malloc(sizeof(char *) * row->len);
                for (size_t i = 0; i < row->len; i++) tt[i] = json_at(row, i)->str;
                check_text_emb(cls, tokmap, tt, (int)row->len, ref + t * sh[1] * sh[2],
                               "cls_text_emb");
                free(tt);
            }
            free(ref);
            json_free(ct);
            done++;
        }
        json_free(tokmap);
    }
    CHECK(done >= 3);
    clip_free(sg);
    clip_free(sc);
}

TEST(clip_car_trunk_parity) {
    clip_model *m = load_fixture_model("fixtures/clip_sg/model_f16.safetensors");
    if (!m) SKIP("fixtures/clip_sg missing");
    int done = 0;
    for (int c = 0; c < 3; c++) {
        char p[300];
        float *x, *ref;
        int nd;
        int64_t sh[8], xs[8];
        snprintf(p, sizeof p, "fixtures/car/%s/iter01/gen_input.npy", CASES[c]);
        const char *ip = shared_path(p);
        if (!ip || !file_exists(ip)) continue;
        CHECK_OK(npy_read_f32(ip, &x, &nd, xs));
        int H = (int)xs[nd - 2], W = (int)xs[nd - 1];
        int P = m->cfg.v_patch, gh = H / P, gw = W / P, L = 1 + gh * gw, C = m->cfg.v_width;
        int nb = m->cfg.v_layers;
        /* positional embedding, resized and rounded through fp16 */
        float *pos = malloc(sizeof(float) * L * C);
        clip_pos_embed(m, gh, gw, 1, pos);
        snprintf(p, sizeof p, "fixtures/car/%s/iter01/gen_pos_embed_resized.npy", CASES[c]);
        CHECK_OK(npy_read_f32(shared_path(p), &ref, &nd, sh));
        REQUIRE(sh[0] == L && sh[1] == C);
        int exact = memcmp(pos, ref, sizeof(float) * L * C) == 0;
        CHECK_MSG(exact, "%s: positional embedding not bit-exact", CASES[c]);
        CHECK_CLOSE("gen_pos_embed_resized", pos, ref, (size_t)L * C, RTOL, 0);
        free(ref);
        /* all blocks: tokens after block L-2 come from a run of L-1 blocks */
        float *tok = malloc(sizeof(float) * L * C), *att = malloc(sizeof(float) * nb * L * L);
        CHECK_OK(clip_image_trunk(m, x, H, W, nb - 1, tok, att));
        snprintf(p, sizeof p, "fixtures/car/%s/iter01/gen_trunk_out.npy", CASES[c]);
        CHECK_OK(npy_read_f32(shared_path(p), &ref, &nd, sh));
        CHECK_CLOSE("gen_trunk_out", tok, ref, (size_t)L * C, RTOL, 0);
        free(ref);
        snprintf(p, sizeof p, "fixtures/car/%s/iter01/gen_trunk_attn.npy", CASES[c]);
        const char *ap = shared_path(p);
        if (file_exists(ap)) {
            CHECK_OK(npy_read_f32(ap, &ref, &nd, sh));
            CHECK_CLOSE("gen_trunk_attn", att, ref, (size_t)(nb - 1) * L * L, RTOL, 0);
            free(ref);
        }
        snprintf(p, sizeof p, "fixtures/car/%s/iter01/gen_last_attn.npy", CASES[c]);
        ap = shared_path(p);
        if (file_exists(ap)) {
            /* the last block alone on the trunk output gives the same attention */
            float *a1 = malloc(sizeof(float) * L * L);
            const clip_config *cf = &m->cfg;
            CHECK_OK(clip_block_forward(&m->v_blocks[nb - 1], tok, 1, L, C, cf->v_mlp, cf->v_heads, 0, a1));
            CHECK_OK(npy_read_f32(ap, &ref, &nd, sh));
            CHECK_CLOSE("gen_last_attn (clip_block_forward)", a1, ref, (size_t)L * L, RTOL, 0);
            free(ref), free(a1);
            CHECK_OK(clip_image_trunk(m, x, H, W, nb, tok, att));
            CHECK_OK(npy_read_f32(ap, &ref, &nd, sh));
            CHECK_CLOSE("gen_last_attn", att + (size_t)(nb - 1) * L * L, ref, (size_t)L * L, RTOL, 0);
            free(ref);
        }
        free(pos), free(tok), free(att), free(x);
        done++;
    }
    CHECK(done == 3);
    clip_free(m);
}

TEST(clip_bad_input) {
    clip_config c = {.v_width = 64, .v_layers = 1, .v_patch = 8, .v_grid = 2, .t_width = 64,
                     .t_layers = 1, .t_ctx = 8, .t_vocab = 100, .embed = 16};
    clip_model *m;
    CHECK_OK(clip_init_random(&c, 7, &m));
    float x[3 * 16 * 24] = {0}, out[16];
    CHECK(clip_encode_image(m, x, 15, 16, 0, out) == CARSEG_EINVAL);
    int32_t tok[8] = {1, 2, 300};
    CHECK(clip_encode_text(m, tok, 1, out) == CARSEG_EINVAL);
    CHECK(strstr(carseg_last_error(), "vocabulary") != NULL);
    tok[2] = 99;
    CHECK_OK(clip_encode_text(m, tok, 1, out));
    int32_t zeros[2 * 8] = {0};   /* all padding: EOT = argmax = position 0, one-token sequences */
    float out2[32];
    CHECK_OK(clip_encode_text(m, zeros, 2, out2));
    CHECK(memcmp(out2, out2 + 16, sizeof(float) * 16) == 0);
    CHECK_OK(clip_encode_image(m, x, 16, 24, 0, out));   /* non-square, resized positions */
    clip_free(m);
}

/* The forward's activation block is the thread's spare from its last call (cs_spare_take), dirty
 * with that call's values: results must not depend on it. Same bits for an image encoded first,
 * after a larger image and a text batch (other sizes in the same block), and after
 * carseg_release_memory; and the spare is really reused. */
TEST(clip_reused_scratch_same_bits) {
    clip_config c = {.v_width = 64, .v_layers = 2, .v_patch = 8, .v_grid = 4, .t_width = 64,
                     .t_layers = 2, .t_ctx = 8, .t_vocab = 100, .embed = 16};
    clip_model *m;
    CHECK_OK(clip_init_random(&c, 21, &m));
    unsigned r = 3;
    float *x = malloc(sizeof(float) * 3 * 64 * 48), *big = malloc(sizeof(float) * 3 * 96 * 80);
    for (int i = 0; i < 3 * 64 * 48; i++) x[i] = test_randf(&r);
    for (int i = 0; i < 3 * 96 * 80; i++) big[i] = 10 * test_randf(&r);
    int32_t tok[3 * 8] = {1, 5, 9, 99, 0, 0, 0, 0, 1, 7, 99, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 99, 0};
    float a[16], b[16], t[48], e[16];
    carseg_release_memory();
    CHECK_OK(clip_encode_image(m, x, 48, 64, 0, a));
    CHECK_OK(clip_encode_image(m, big, 80, 96, 0, e));
    CHECK_OK(clip_encode_text(m, tok, 3, t));
    CHECK_OK(clip_encode_image(m, x, 48, 64, 0, b));
    CHECK(memcmp(a, b, sizeof a) == 0);
    carseg_release_memory();
    CHECK_OK(clip_encode_image(m, x, 48, 64, 0, b));
    CHECK(memcmp(a, b, sizeof a) == 0);
    /* the spare of this thread comes back (not under AddressSanitizer, where it is off) */
    size_t cap1, cap2;
    void *p = cs_spare_take(CS_SPARE_CLIP_ACT, 1, &cap1);
    REQUIRE(p);
    cs_spare_give(CS_SPARE_CLIP_ACT, p, cap1);
    void *q = cs_spare_take(CS_SPARE_CLIP_ACT, cap1, &cap2);
    REQUIRE(q);
#if !defined(__SANITIZE_ADDRESS__)
    CHECK(q == p && cap2 == cap1 && cap1 > 1);   /* the forward's block, kept */
#endif
    cs_spare_give(CS_SPARE_CLIP_ACT, q, cap2);
    carseg_release_memory();
    free(x), free(big);
    clip_free(m);
}

// ---------------------------------------------------------------------------------------------
// cases from scripts/gen_clip_fixtures.py (tiny model committed under tests/data/clip; full
// ViT-B/16 / ViT-L/14 shapes generated on demand with CARSEG_HEAVY=B16,L14)

static float *load_npy_f32(const char *dir, const char *name, int *nd, int64_t sh[8]) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    float *v = NULL;
    if (npy_read_f32(p, &v, nd, sh) != CARSEG_OK) {
        fprintf(stderr, "  %s\n", carseg_last_error());
        return NULL;
    }
    return v;
}

/* Runs every case of dir/manifest.json; returns the number of cases checked. */
static int run_manifest(const char *dir) {
    char p[1200];
    snprintf(p, sizeof p, "%s/manifest.json", dir);
    json *man = json_parse_file(p);
    if (!man) { CHECK_MSG(0, "%s", carseg_last_error()); return 0; }
    snprintf(p, sizeof p, "%s/model_f16.safetensors", dir);
    clip_model *m = NULL;
    CHECK_OK(clip_load(p, &m));
    if (!m) { json_free(man); return 0; }
    CHECK_NEAR(m->cfg.logit_scale, json_num(man, "logit_scale_exp", 0), 1e-4);
    const json *cases = json_get(man, "cases");
    int E = m->cfg.embed, C = m->cfg.v_width, done = 0;
    for (size_t i = 0; cases && i < cases->len; i++) {
        const json *c = json_at(cases, i);
        const char *kind = json_str(c, "kind", "");
        int nd, nd2;
        int64_t sh[8], sh2[8];
        float *ref = load_npy_f32(dir, json_str(c, "expected", ""), &nd, sh);
        if (!(ref)) { CHECK(ref); continue; }
        char what[160];
        if (strcmp(kind, "text") == 0) {
            char tp[1200];
            snprintf(tp, sizeof tp, "%s/%s", dir, json_str(c, "tokens", ""));
            npy_array t;
            CHECK_OK(npy_read(tp, &t));
            if (!(t.dtype == NPY_I32 && t.ndim == 2 && t.shape[1] == m->cfg.t_ctx)) { CHECK(t.dtype == NPY_I32 && t.ndim == 2 && t.shape[1] == m->cfg.t_ctx); continue; }
            float *got = malloc(sizeof(float) * t.shape[0] * E);
            CHECK_OK(clip_encode_text(m, t.data, (int)t.shape[0], got));
            snprintf(what, sizeof what, "%s text", json_str(man, "shape", ""));
            CHECK_CLOSE(what, got, ref, (size_t)t.shape[0] * E, RTOL, 0);
            report(what, got, ref, (size_t)t.shape[0] * E);
            free(got);
            npy_free(&t);
        } else {
            float *x = load_npy_f32(dir, json_str(c, "input", ""), &nd2, sh2);
            if (!(x)) { CHECK(x); continue; }
            int H = (int)json_num(c, "H", 0), W = (int)json_num(c, "W", 0);
            int nb = (int)json_num(c, "n_blocks", 0), P = m->cfg.v_patch;
            int L = 1 + (H / P) * (W / P);
            if (strcmp(kind, "image") == 0) {
                float *got = malloc(sizeof(float) * E);
                CHECK_OK(clip_encode_image(m, x, H, W, nb, got));
                snprintf(what, sizeof what, "%s image %dx%d %d blocks", json_str(man, "shape", ""),
                         W, H, nb);
                CHECK_CLOSE(what, got, ref, (size_t)E, RTOL, 0);
                report(what, got, ref, (size_t)E);
                free(got);
            } else {
                float *tok = malloc(sizeof(float) * L * C), *att = malloc(sizeof(float) * nb * L * L);
                CHECK_OK(clip_image_trunk(m, x, H, W, nb, tok, att));
                snprintf(what, sizeof what, "%s trunk %dx%d", json_str(man, "shape", ""), W, H);
                CHECK_CLOSE(what, tok, ref, (size_t)L * C, RTOL, 0);
                report(what, tok, ref, (size_t)L * C);
                float *ra = load_npy_f32(dir, json_str(c, "attn", ""), &nd2, sh2);
                if (ra) CHECK_CLOSE("trunk attention", att, ra, (size_t)nb * L * L, RTOL, 0);
                if (ra) report("trunk attention", att, ra, (size_t)nb * L * L);
                free(ra);
                float *rp = load_npy_f32(dir, json_str(c, "pos", ""), &nd2, sh2);
                clip_pos_embed(m, H / P, W / P, 1, tok);
                if (rp) CHECK_MSG(memcmp(tok, rp, sizeof(float) * L * C) == 0,
                                  "positional embedding %dx%d not bit-exact", W, H);
                free(rp), free(tok), free(att);
            }
            free(x);
        }
        free(ref);
        done++;
    }
    clip_free(m);
    json_free(man);
    return done;
}

TEST(clip_generated_cases) {
    if (!file_exists("tests/data/clip/manifest.json")) SKIP("tests/data/clip missing (run from the repo root)");
    CHECK(run_manifest("tests/data/clip") >= 10);
}

/* Full-size shapes with random weights: CARSEG_HEAVY=B16 (and/or L14) generates them with
 * /usr/bin/python3 scripts/gen_clip_fixtures.py into the test's temp dir (~300 MB / ~850 MB). */
TEST(clip_full_size_parity) {
    const char *why = heavy_skip_reason();
    if (why) SKIP("%s", why);
    for (int k = 0; k < 2; k++) {
        char dir[800];
        int r = heavy_fixture(k, dir, sizeof dir);
        REQUIRE(r >= 0);
        if (r) CHECK(run_manifest(dir) >= 4);
    }
}

/* CaR's classifier: prompted images -> clip_preprocess(224) -> L-1 blocks -> normalised
 * (cls_image_emb rows 0.. of the stored prompted images) */
TEST(clip_car_classifier_image_emb) {
    clip_model *sg = load_fixture_model("fixtures/clip_sg/model_f16.safetensors");
    clip_model *sc = load_fixture_model("fixtures/models/sc_f16.safetensors");
    if (!sg || !sc) { clip_free(sg); clip_free(sc); SKIP("fixture models missing"); }
    int done = 0;
    for (int c = 0; c < 3; c++) {
        const clip_model *m = strcmp(CASES[c], "astronaut_cocolike") == 0 ? sg : sc;
        int E = m->cfg.embed, S = m->cfg.v_patch * m->cfg.v_grid;
        float *x = malloc(sizeof(float) * 3 * S * S), feat[256];
        for (int it = 1; it <= 3; it++) {
            char rel[300];
            snprintf(rel, sizeof rel, "fixtures/car/%s/iter%02d/cls_image_emb.npy", CASES[c], it);
            const char *rp = shared_path(rel);
            if (!rp || !file_exists(rp)) continue;
            float *ref;
            int nd;
            int64_t sh[8];
            CHECK_OK(npy_read_f32(rp, &ref, &nd, sh));
            REQUIRE(nd == 2 && sh[1] == E);
            for (int k = 0; k < sh[0]; k++) {
                snprintf(rel, sizeof rel, "fixtures/car/%s/iter%02d/prompted_%02d.png", CASES[c], it, k);
                const char *pp = shared_path(rel);
                if (!file_exists(pp)) break;
                image_u8 im;
                CHECK_OK(image_load_rgb(pp, &im));
                CHECK_OK(clip_preprocess(&im, S, x));
                image_free(&im);
                CHECK_OK(clip_encode_image(m, x, S, S, m->cfg.v_layers - 1, feat));
                nn_l2norm(feat, 1, E);
                CHECK_CLOSE(rel, feat, ref + (size_t)k * E, (size_t)E, RTOL, 0);
                report(rel, feat, ref + (size_t)k * E, (size_t)E);
                done++;
            }
            free(ref);
        }
        free(x);
    }
    CHECK(done >= 10);
    clip_free(sg);
    clip_free(sc);
}

// ---------------------------------------------------------------------------------------------
// CLI end to end: tokenizer + preprocessing + engine against the upstream expected.json

TEST(clip_cli_embed_classify) {
    const char *bin = getenv("CARSEG_BIN");
    const char *ej = shared_path("fixtures/clip_sg/expected.json");
    const char *model = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *vocab = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (!bin || !ej || !file_exists(model) || !file_exists(vocab)) SKIP("CARSEG_BIN or fixtures missing");
    json *j = json_parse_file(ej);
    REQUIRE(j);
    const json *texts = json_get(j, "texts");
    static char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s embed --model", bin);
    test_shq(cmd, sizeof cmd, model);
    strcat(cmd, " --vocab");
    test_shq(cmd, sizeof cmd, vocab);
    for (size_t i = 0; i < texts->len; i++) {
        strcat(cmd, " --text");
        test_shq(cmd, sizeof cmd, json_at(texts, i)->str);
    }
    strcat(cmd, " --image");
    test_shq(cmd, sizeof cmd, shared_path("data/photos/chelsea.png"));
    char *out = test_capture(cmd, NULL);
    REQUIRE(out);
    char err[128];
    json *o = json_parse(out, strlen(out), err, sizeof err);
    REQUIRE(o);
    size_t n1, n2, n3, n4;
    float *gt = floats_from_json(json_get(o, "text"), &n1), *rt = floats_from_json(json_get(j, "text_features"), &n2);
    float *gi = floats_from_json(json_get(o, "image"), &n3), *ri = floats_from_json(json_get(j, "image_features"), &n4);
    REQUIRE(n1 == n2 && n3 * 3 == n4);
    CHECK_CLOSE("embed text", gt, rt, n1, RTOL, 0);
    CHECK_CLOSE("embed image", gi, ri, n3, RTOL, 0);
    free(gt), free(rt), free(gi), free(ri), free(out);
    json_free(o);
    /* classify with the identity template over the texts: p = softmax(logits_per_image[0]) */
    int nc = (int)texts->len - 1;   /* the last text is "" */
    snprintf(cmd, sizeof cmd, "%s classify --json --template '{}' --model", bin);
    test_shq(cmd, sizeof cmd, model);
    strcat(cmd, " --vocab");
    test_shq(cmd, sizeof cmd, vocab);
    test_shq(cmd, sizeof cmd, shared_path("data/photos/chelsea.png"));
    for (int i = 0; i < nc; i++) {
        strcat(cmd, " --class");
        test_shq(cmd, sizeof cmd, json_at(texts, i)->str);
    }
    out = test_capture(cmd, NULL);
    REQUIRE(out);
    o = json_parse(out, strlen(out), err, sizeof err);
    REQUIRE(o && o->type == JSON_ARR && (int)o->len == nc);
    const json *lg = json_at(json_get(j, "logits_per_image"), 0);
    double mx = -1e30, sum = 0;
    for (int i = 0; i < nc; i++) mx = fmax(mx, json_at(lg, i)->num);
    for (int i = 0; i < nc; i++) sum += exp(json_at(lg, i)->num - mx);
    double prev = 2, total = 0;
    for (int k = 0; k < nc; k++) {
        const json *e = json_at(o, k);
        const char *name = json_str(e, "class", "");
        double p = json_num(e, "p", -1);
        int idx = -1;
        for (int i = 0; i < nc; i++)
            if (strcmp(json_at(texts, i)->str, name) == 0) idx = i;
        REQUIRE(idx >= 0);
        CHECK_NEAR(p, exp(json_at(lg, idx)->num - mx) / sum, 2e-5);
        CHECK(p <= prev);
        prev = p;
        total += p;
    }
    CHECK_NEAR(total, 1.0, 1e-5);
    free(out);
    json_free(o);
    /* the default: CaR's 15 templates, plain output, ranked */
    snprintf(cmd, sizeof cmd, "%s classify --model", bin);
    test_shq(cmd, sizeof cmd, model);
    strcat(cmd, " --vocab");
    test_shq(cmd, sizeof cmd, vocab);
    test_shq(cmd, sizeof cmd, shared_path("data/photos/chelsea.png"));
    strcat(cmd, " --classes cat,dog,car --top 2");
    out = test_capture(cmd, NULL);
    REQUIRE(out);
    int lines = 0;
    for (char *s = out; *s; s++) lines += *s == '\n';
    CHECK(lines == 2);
    free(out);
    json_free(j);
}

TEST(clip_public_api) {
    const char *ej = shared_path("fixtures/clip_sg/expected.json");
    const char *model = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *vocab = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (!ej || !file_exists(model) || !file_exists(vocab)) SKIP("fixtures missing");
    carseg_clip *m;
    carseg_tokenizer *tok;
    CHECK_OK(carseg_clip_load(model, &m));
    CHECK_OK(carseg_tokenizer_open(vocab, &tok));
    REQUIRE(m && tok);
    CHECK(carseg_clip_embed_dim(m) == 32 && carseg_clip_image_size(m) == 224);
    CHECK_NEAR(carseg_clip_logit_scale(m), 14.29852294921875, 1e-4);
    json *j = json_parse_file(ej);
    REQUIRE(j);
    const json *texts = json_get(j, "texts");
    const char **tx = malloc(sizeof(char *) * texts->len);
    for (size_t i = 0; i < texts->len; i++) tx[i] = json_at(texts, i)->str;
    size_t n;
    float *ref = floats_from_json(json_get(j, "text_features"), &n);
    float *got = malloc(sizeof(float) * n);
    CHECK_OK(carseg_clip_encode_texts(m, tok, tx, (int)texts->len, got));
    CHECK_CLOSE("carseg_clip_encode_texts", got, ref, n, RTOL, 0);
    free(ref);
    ref = floats_from_json(json_get(j, "image_features"), &n);
    image_u8 im;
    CHECK_OK(image_load_rgb(shared_path("data/photos/chelsea.png"), &im));
    CHECK_OK(carseg_clip_encode_image_rgb(m, im.px, im.w, im.h, 0, got));
    CHECK_CLOSE("carseg_clip_encode_image_rgb", got, ref, 32, RTOL, 0);
    CHECK(carseg_clip_encode_image_rgb(m, im.px, 0, im.h, 0, got) == CARSEG_EINVAL);
    image_free(&im);
    free(ref), free(got), free(tx);
    json_free(j);
    carseg_tokenizer_close(tok);
    carseg_clip_free(m);
}

TEST(clip_encode_images_batch) {
    clip_config c = {.v_width = 64, .v_layers = 2, .v_patch = 8, .v_grid = 3, .t_width = 64,
                     .t_layers = 1, .t_ctx = 8, .t_vocab = 100, .embed = 16};
    clip_model *m;
    CHECK_OK(clip_init_random(&c, 9, &m));
    enum { N = 12, H = 160, W = 168 };   /* L = 421: 4 per batch, so three batches */
    unsigned s = 11;
    float *x = malloc(sizeof(float) * N * 3 * H * W), *batch = malloc(sizeof(float) * N * 16);
    for (int i = 0; i < N * 3 * H * W; i++) x[i] = test_randf(&s);
    CHECK_OK(clip_encode_images(m, x, N, H, W, 1, batch));
    for (int i = 0; i < N; i++) {
        float one[16];
        CHECK_OK(clip_encode_image(m, x + (size_t)i * 3 * H * W, H, W, 1, one));
        CHECK_CLOSE("batched image", batch + (size_t)i * 16, one, 16, 1e-5, 0);
    }
    free(x), free(batch);
    clip_free(m);
}

/* Both towers give the same bits at any thread count (OpenMP's and OpenBLAS's): the image tower
 * at CaR's 512x384 VOC size (769 tokens: features, trunk tokens and every block's attention
 * maps), a batch of images, and the text tower on prompts of different lengths (the EOT-sorted
 * batches). Widths big enough that every product is cut into several tiles (docs/threads.md). */
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
TEST(clip_towers_thread_invariant) {
    clip_config c = {.v_width = 192, .v_layers = 2, .v_patch = 16, .v_grid = 14, .t_width = 256,
                     .t_layers = 2, .t_ctx = 77, .t_vocab = 1000, .embed = 64};
    clip_model *m;
    CHECK_OK(clip_init_random(&c, 21, &m));
    REQUIRE(m);
    enum { H = 384, W = 512, L = 1 + 24 * 32, NB = 3, NT = 40, E = 64, CW = 192 };
    unsigned s = 5;
    float *x = malloc(sizeof(float) * 3 * H * W), *xb = malloc(sizeof(float) * NB * 3 * 224 * 224);
    for (int i = 0; i < 3 * H * W; i++) x[i] = test_randf(&s);
    for (int i = 0; i < NB * 3 * 224 * 224; i++) xb[i] = test_randf(&s);
    int32_t *tok = calloc((size_t)NT * 77, sizeof(int32_t));
    for (int i = 0; i < NT; i++) {   /* start token, words, EOT (the largest id) at 3..76 */
        int eot = 3 + (i * 37) % 74;
        tok[(size_t)i * 77] = 998;
        for (int j = 1; j < eot; j++) tok[(size_t)i * 77 + j] = (int)(500 + 490 * test_randf(&s));
        tok[(size_t)i * 77 + eot] = 999;
    }
    static const int counts[] = TEST_THREAD_COUNTS;
    const int nc = (int)(sizeof counts / sizeof *counts);
    size_t per = E + (size_t)L * CW + (size_t)2 * L * L + (size_t)NB * E + (size_t)NT * E;
    float *out[8];
    int nt0 = carseg_get_threads(), bt0 = openblas_get_num_threads();
    for (int k = 0; k < nc; k++) {
        carseg_set_threads(counts[k]);
        openblas_set_num_threads(counts[k]);
        float *o = out[k] = malloc(per * sizeof(float));
        REQUIRE(o);
        CHECK_OK(clip_encode_image(m, x, H, W, 0, o));
        CHECK_OK(clip_image_trunk(m, x, H, W, 2, o + E, o + E + (size_t)L * CW));
        CHECK_OK(clip_encode_images(m, xb, NB, 224, 224, 0, o + E + (size_t)L * CW + (size_t)2 * L * L));
        CHECK_OK(clip_encode_text(m, tok, NT, o + per - (size_t)NT * E));
    }
    carseg_set_threads(nt0);
    openblas_set_num_threads(bt0);
    for (int k = 1; k < nc; k++) {
        CHECK_MSG(!memcmp(out[0], out[k], (E + (size_t)L * CW + (size_t)2 * L * L) * sizeof(float)),
                  "image tower at 512x384: 1 and %d threads differ", counts[k]);
        size_t o = E + (size_t)L * CW + (size_t)2 * L * L;
        CHECK_MSG(!memcmp(out[0] + o, out[k] + o, (size_t)NB * E * sizeof(float)),
                  "image batch: 1 and %d threads differ", counts[k]);
        CHECK_MSG(!memcmp(out[0] + per - (size_t)NT * E, out[k] + per - (size_t)NT * E,
                          (size_t)NT * E * sizeof(float)),
                  "text tower: 1 and %d threads differ", counts[k]);
    }
    for (int k = 0; k < nc; k++) free(out[k]);
    free(x), free(xb), free(tok);
    clip_free(m);
}

/* the fixture loader's three outcomes: a broken fixture FAILs, it is not skipped */
TEST(clip_fixture_loader_three_states) {
    const char *good = shared_path("fixtures/clip_sg/model_f16.safetensors");
    if (!good || !file_exists(good)) SKIP("fixtures/clip_sg missing");
    char bad[1024];
    snprintf(bad, sizeof bad, "%s/truncated.safetensors", test_tmpdir());
    uint8_t *d = NULL;
    size_t n = 0;
    REQUIRE(read_file(good, &d, &n) == CARSEG_OK);
    FILE *f = fopen(bad, "wb");
    REQUIRE(f);
    fwrite(d, 1, n / 2, f);
    fclose(f);
    free(d);
    int before = test_failed_checks;
    clip_model *m = fixture_clip_path(bad);
    int counted = test_failed_checks == before + 1;
    test_failed_checks = before;            /* the failure above was the point of the test */
    CHECK_MSG(m == NULL && counted, "a fixture that does not load must count as a failure");
    clip_model *g = fixture_clip("fixtures/clip_sg/model_f16.safetensors");
    CHECK(g != NULL && test_failed_checks == before);
    clip_free(g);
    CHECK(fixture_clip("fixtures/no/such/model.safetensors") == NULL && test_failed_checks == before);
}
