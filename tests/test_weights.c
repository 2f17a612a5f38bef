/* test_weights.c — model file loaders: safetensors (OpenAI and Hugging Face names), TorchScript
 * archives, torch.save zips; every tensor compared across formats; hostile (truncated, corrupted)
 * files must fail cleanly with "PATH: what" messages. */
#include "check.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "clip.h"
#include "util.h"
#include "torchzip.h"
#include "weights.h"

static int same_tensors(const wfile *a, const wfile *b) {
    int bad = 0;
    for (int i = 0; i < a->n; i++) {
        const wtensor *x = &a->t[i], *y = wfile_get(b, x->name);
        if (!y) { fprintf(stderr, "  %s: missing in %s\n", x->name, b->path); bad++; continue; }
        int same = x->ndim == y->ndim && x->count == y->count;
        for (int d = 0; same && d < x->ndim; d++) same = x->shape[d] == y->shape[d];
        if (!same) { fprintf(stderr, "  %s: shape differs\n", x->name); bad++; continue; }
        if (memcmp(x->data, y->data, x->count * sizeof(float)) != 0) {
            fprintf(stderr, "  %s: values differ\n", x->name);
            bad++;
        }
    }
    if (a->n != b->n) { fprintf(stderr, "  %d vs %d tensors\n", a->n, b->n); bad++; }
    return bad;
}

TEST(weights_f16_conversion) {
    CHECK(f16_to_f32(0x3c00) == 1.0f);
    CHECK(f16_to_f32(0xc000) == -2.0f);
    CHECK(f16_to_f32(0x7bff) == 65504.0f);
    CHECK(f16_to_f32(0x0001) == ldexpf(1.0f, -24));   /* smallest subnormal */
    CHECK(f16_to_f32(0x03ff) == ldexpf(1023.0f, -24));
    CHECK(f16_to_f32(0x0400) == ldexpf(1.0f, -14));   /* smallest normal */
    CHECK(isinf(f16_to_f32(0x7c00)) && f16_to_f32(0x7c00) > 0);
    CHECK(isinf(f16_to_f32(0xfc00)) && f16_to_f32(0xfc00) < 0);
    CHECK(isnan(f16_to_f32(0x7e00)));
    CHECK(signbit(f16_to_f32(0x8000)) && f16_to_f32(0x8000) == 0.0f);
    uint8_t bf[2] = {0x80, 0x3f}, f16[2] = {0x00, 0x3c}, f32[4] = {0, 0, 0x80, 0x3f};
    float o;
    wdt_to_f32(WDT_BF16, bf, 1, &o); CHECK(o == 1.0f);
    wdt_to_f32(WDT_F16, f16, 1, &o); CHECK(o == 1.0f);
    wdt_to_f32(WDT_F32, f32, 1, &o); CHECK(o == 1.0f);
}

TEST(weights_safetensors_hf_matches_openai) {
    const char *pa = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *pb = shared_path("fixtures/clip_sg/model_hf.safetensors");
    if (!pa) SKIP("shared fixtures missing");
    wfile *a = NULL, *b = NULL;
    CHECK_OK(wfile_open(pa, &a));
    CHECK_OK(wfile_open(pb, &b));
    REQUIRE(a && b);
    CHECK(a->format == WF_SAFETENSORS && b->format == WF_SAFETENSORS);
    CHECK(!a->hf_names && b->hf_names);
    CHECK(a->n == 62);
    CHECK(same_tensors(a, b) == 0);
    const wtensor *t = wfile_get(b, "visual.transformer.resblocks.1.attn.in_proj_weight");
    REQUIRE(t);
    CHECK(t->ndim == 2 && t->shape[0] == 384 && t->shape[1] == 128 && t->src_dtype == WDT_F16);
    t = wfile_get(b, "visual.proj");
    REQUIRE(t);
    CHECK(t->ndim == 2 && t->shape[0] == 128 && t->shape[1] == 32);
    t = wfile_get(a, "logit_scale");
    REQUIRE(t);
    CHECK(t->ndim == 0 && t->count == 1);
    wfile_close(a);
    wfile_close(b);
}

TEST(weights_config_from_tensors) {
    const char *p = shared_path("fixtures/clip_sg/model_hf.safetensors");
    if (!p) SKIP("shared fixtures missing");
    wfile *f = NULL;
    CHECK_OK(wfile_open(p, &f));
    REQUIRE(f);
    clip_config c;
    CHECK_OK(clip_config_from_weights(f, &c));
    CHECK(c.v_width == 128 && c.v_layers == 2 && c.v_heads == 2 && c.v_patch == 16 && c.v_grid == 14);
    CHECK(c.v_mlp == 512);
    CHECK(c.t_width == 64 && c.t_layers == 2 && c.t_heads == 1 && c.t_ctx == 77 && c.t_vocab == 49408);
    CHECK(c.embed == 32);
    CHECK_NEAR(c.logit_scale, 14.29852294921875, 1e-4);
    wfile_close(f);
}

// ---------------------------------------------------------------------------------------------
// a small safetensors file built here, for the hostile-input tests

static uint8_t *make_st(size_t *len) {
    const char *hdr =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
        "\"c\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[32,34]},"
        "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[34,50]}}";
    size_t n = strlen(hdr), dl = 50;
    uint8_t *b = calloc(1, 8 + n + dl);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, hdr, n);
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    memcpy(b + 8 + n, a, 24);
    uint16_t h[4] = {0x3c00, 0xc000, 0x3800, 0};
    memcpy(b + 8 + n + 24, h, 8);
    b[8 + n + 32] = 0x80; b[8 + n + 33] = 0x3f;   /* bf16 1.0 */
    *len = 8 + n + dl;
    return b;
}

TEST(weights_safetensors_small) {
    size_t len;
    uint8_t *b = make_st(&len);
    wfile *f = NULL;
    CHECK_OK(wfile_open_mem("small", b, len, &f));
    REQUIRE(f);
    CHECK(f->n == 3);   /* ids (I64) skipped */
    const wtensor *a = wfile_get(f, "a"), *h = wfile_get(f, "b"), *c = wfile_get(f, "c");
    REQUIRE(a && h && c);
    CHECK(a->ndim == 2 && a->shape[1] == 3 && a->data[2] == 3.5f && a->data[4] == 1e-3f);
    CHECK(h->src_dtype == WDT_F16 && h->data[1] == -2.0f && h->data[2] == 0.5f);
    CHECK(c->ndim == 0 && c->src_dtype == WDT_BF16 && c->data[0] == 1.0f);
    wfile_close(f);
    free(b);
}

/* Truncations at every length and deterministic byte flips: must fail (or load) cleanly, with a
 * message naming the file. */
TEST(weights_safetensors_hostile) {
    size_t len;
    uint8_t *b = make_st(&len);
    uint8_t *c = malloc(len);
    for (size_t cut = 0; cut < len; cut++) {
        wfile *f = NULL;
        memcpy(c, b, cut);
        carseg_status st = wfile_open_mem("cut", c, cut, &f);
        CHECK_MSG(st != CARSEG_OK && !f, "cut at %zu loaded", cut);
        CHECK_MSG(strncmp(carseg_last_error(), "cut: ", 5) == 0, "%s", carseg_last_error());
    }
    unsigned seed = 7;
    for (int k = 0; k < 3000; k++) {
        memcpy(c, b, len);
        int nflip = 1 + k % 3;
        for (int j = 0; j < nflip; j++) {
            seed = seed * 1664525u + 1013904223u;
            size_t pos = (seed >> 8) % len;
            seed = seed * 1664525u + 1013904223u;
            c[pos] ^= (uint8_t)(1u << ((seed >> 16) & 7));
        }
        wfile *f = NULL;
        carseg_status st = wfile_open_mem("flip", c, len, &f);
        if (st == CARSEG_OK) wfile_close(f);
        else CHECK_MSG(strncmp(carseg_last_error(), "flip: ", 6) == 0, "%s", carseg_last_error());
    }
    free(c);
    free(b);
}

TEST(weights_open_errors) {
    wfile *f = NULL;
    CHECK(wfile_open("/nonexistent/model.safetensors", &f) == CARSEG_EIO && !f);
    CHECK(strstr(carseg_last_error(), "/nonexistent/model.safetensors") != NULL);
    CHECK(wfile_open_mem("junk", (const uint8_t *)"hello world", 11, &f) == CARSEG_EFORMAT);
    const char *bad[] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",          /* span mismatch */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,400]}}",        /* past the end */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}",        /* shape */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",         /* shape */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}",  /* ndim */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}",
        "[1,2]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t n = strlen(bad[i]);
        uint8_t buf[512] = {0};
        for (int k = 0; k < 8; k++) buf[k] = (uint8_t)((uint64_t)n >> (8 * k));
        memcpy(buf + 8, bad[i], n);
        carseg_status st = wfile_open_mem("bad.safetensors", buf, 8 + n + 16, &f);
        CHECK_MSG(st == CARSEG_EFORMAT && !f, "case %zu", i);
        CHECK_MSG(strstr(carseg_last_error(), "bad.safetensors: ") == carseg_last_error(), "%s",
                  carseg_last_error());
        if (i < 7) CHECK_MSG(strstr(carseg_last_error(), "(tensor a)") != NULL, "%s", carseg_last_error());
    }
}

TEST(weights_torchscript_and_state_match_safetensors) {
    const char *ps = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *pj = shared_path("fixtures/clip_sg/model_jit.pt");
    const char *pt = shared_path("fixtures/clip_sg/model_state.pt");
    if (!ps) SKIP("shared fixtures missing");
    wfile *s = NULL, *j = NULL, *t = NULL;
    CHECK_OK(wfile_open(ps, &s));
    CHECK_OK(wfile_open(pj, &j));
    CHECK_OK(wfile_open(pt, &t));
    REQUIRE(s && j && t);
    CHECK(j->format == WF_TORCHSCRIPT && t->format == WF_TORCH_STATE);
    CHECK(same_tensors(s, j) == 0);
    CHECK(same_tensors(s, t) == 0);
    CHECK(wfile_get(j, "visual.conv1.weight")->src_dtype == WDT_F16);
    wfile_close(s);
    wfile_close(j);
    wfile_close(t);
}

// ---------------------------------------------------------------------------------------------
// every format written by scripts/gen_model_files.py, against its .npy dump

#include <dirent.h>

static const char *gen_dir(void) {
    static char dir[600];
    static int state;   /* 0 not tried, 1 ok, 2 failed */
    if (state == 0) {
        state = 2;
        if (!file_exists("/usr/bin/python3") || !file_exists("scripts/gen_model_files.py")) return NULL;
        snprintf(dir, sizeof dir, "%s/gen", test_tmpdir());
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 scripts/gen_model_files.py %s 2>&1", dir);
        FILE *p = popen(cmd, "r");
        if (!p) return NULL;
        char line[512];
        while (fgets(line, sizeof line, p)) fprintf(stderr, "  gen: %s", line);
        if (pclose(p) == 0) state = 1;
    }
    return state == 1 ? dir : NULL;
}

/* Every ref/<name>.npy equals the loaded tensor bit for bit; no other tensor is loaded. */
static void check_against_refs(const char *dir, const char *refsub, const wfile *f) {
    char rd[700];
    snprintf(rd, sizeof rd, "%s/%s", dir, refsub);
    DIR *d = opendir(rd);
    REQUIRE(d);
    struct dirent *e;
    int nref = 0;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".npy") != 0) continue;
        char name[256], p[1000];
        snprintf(name, sizeof name, "%.*s", (int)(l - 4), e->d_name);
        snprintf(p, sizeof p, "%s/%s", rd, e->d_name);
        nref++;
        float *ref = NULL;
        int nd = 0;
        int64_t sh[8];
        CHECK_OK(npy_read_f32(p, &ref, &nd, sh));
        const wtensor *t = wfile_get(f, name);
        CHECK_MSG(t != NULL, "%s: %s missing", f->path, name);
        if (t && ref) {
            int same = t->ndim == nd;
            for (int k = 0; same && k < nd; k++) same = t->shape[k] == sh[k];
            CHECK_MSG(same, "%s: %s shape differs", f->path, name);
            if (same) CHECK_MSG(memcmp(t->data, ref, t->count * sizeof(float)) == 0, "%s: %s values differ", f->path, name);
        }
        free(ref);
    }
    closedir(d);
    CHECK_MSG(f->n == nref, "%s: %d tensors loaded, %d references", f->path, f->n, nref);
}

TEST(weights_gen_every_format) {
    const char *dir = gen_dir();
    if (!dir) SKIP("/usr/bin/python3 with torch could not run scripts/gen_model_files.py");
    static const struct { const char *file; wformat fmt; int hf; wdtype dt; } cases[] = {
        {"jit_f16.pt", WF_TORCHSCRIPT, 0, WDT_F16},
        {"state_f16.pt", WF_TORCH_STATE, 0, WDT_F16},
        {"state_f32.pt", WF_TORCH_STATE, 0, WDT_F32},
        {"state_bf16.pt", WF_TORCH_STATE, 0, WDT_BF16},
        {"state_f16_zip64.pt", WF_TORCH_STATE, 0, WDT_F16},
        {"st_f16.safetensors", WF_SAFETENSORS, 0, WDT_F16},
        {"st_f32.safetensors", WF_SAFETENSORS, 0, WDT_F32},
        {"st_bf16.safetensors", WF_SAFETENSORS, 0, WDT_BF16},
        {"hf_f32.safetensors", WF_SAFETENSORS, 1, WDT_F32},
        {"hf_bf16.safetensors", WF_SAFETENSORS, 1, WDT_BF16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char p[800];
        snprintf(p, sizeof p, "%s/%s", dir, cases[i].file);
        wfile *f = NULL;
        CHECK_OK(wfile_open(p, &f));
        if (!f) continue;
        CHECK_MSG(f->format == cases[i].fmt && f->hf_names == cases[i].hf, "%s", p);
        const wtensor *t = wfile_get(f, "visual.transformer.resblocks.1.mlp.c_fc.weight");
        CHECK_MSG(t && t->src_dtype == cases[i].dt, "%s: dtype", p);
        check_against_refs(dir, "ref", f);
        clip_config c;
        CHECK_OK(clip_config_from_weights(f, &c));
        CHECK(c.v_width == 128 && c.v_layers == 2 && c.v_heads == 2 && c.v_patch == 8 && c.v_grid == 4);
        CHECK(c.t_width == 64 && c.t_layers == 1 && c.t_heads == 1 && c.t_ctx == 8 && c.t_vocab == 50);
        CHECK(c.embed == 32 && c.v_mlp == 512);
        CHECK_NEAR(c.logit_scale, expf(2.671875f), 1e-5);
        wfile_close(f);
    }
}

TEST(weights_gen_strided_views) {
    const char *dir = gen_dir();
    if (!dir) SKIP("/usr/bin/python3 with torch could not run scripts/gen_model_files.py");
    char p[800];
    snprintf(p, sizeof p, "%s/views.pt", dir);
    wfile *f = NULL;
    CHECK_OK(wfile_open(p, &f));
    REQUIRE(f);
    check_against_refs(dir, "views", f);
    wfile_close(f);
}

TEST(weights_gen_tiny_torchscript_tree) {
    const char *dir = gen_dir();
    if (!dir) SKIP("/usr/bin/python3 with torch could not run scripts/gen_model_files.py");
    char p[800];
    snprintf(p, sizeof p, "%s/tiny_jit.pt", dir);
    wfile *f = NULL;
    CHECK_OK(wfile_open(p, &f));
    REQUIRE(f);
    CHECK(f->format == WF_TORCHSCRIPT);
    check_against_refs(dir, "tiny", f);
    wfile_close(f);
}

// ---------------------------------------------------------------------------------------------
// hostile PyTorch zips

#include <zlib.h>

static void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v & 0xffff); put16(p + 2, v >> 16); }

/* A stored zip of n entries (as PyTorch writes them, without data descriptors). */
static uint8_t *zip_build(int n, const char **names, const uint8_t **data, const size_t *lens, size_t *out_len) {
    size_t cap = 22;
    for (int i = 0; i < n; i++) cap += 30 + 46 + 2 * strlen(names[i]) + lens[i];
    uint8_t *b = calloc(1, cap), *p = b;
    uint32_t offs[16];
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        offs[i] = (uint32_t)(p - b);
        put32(p, 0x04034b50); put16(p + 4, 20);
        put32(p + 14, (uint32_t)crc32(0, data[i], (uInt)lens[i]));
        put32(p + 18, (uint32_t)lens[i]); put32(p + 22, (uint32_t)lens[i]);
        put16(p + 26, (unsigned)nl);
        memcpy(p + 30, names[i], nl);
        if (lens[i]) memcpy(p + 30 + nl, data[i], lens[i]);
        p += 30 + nl + lens[i];
    }
    uint8_t *cd = p;
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        put32(p, 0x02014b50); put16(p + 4, 20); put16(p + 6, 20);
        put32(p + 16, (uint32_t)crc32(0, data[i], (uInt)lens[i]));
        put32(p + 20, (uint32_t)lens[i]); put32(p + 24, (uint32_t)lens[i]);
        put16(p + 28, (unsigned)nl);
        put32(p + 42, offs[i]);
        memcpy(p + 46, names[i], nl);
        p += 46 + nl;
    }
    put32(p, 0x06054b50); put16(p + 8, (unsigned)n); put16(p + 10, (unsigned)n);
    put32(p + 12, (uint32_t)(p - cd)); put32(p + 16, (uint32_t)(cd - b));
    p += 22;
    *out_len = (size_t)(p - b);
    return b;
}

static uint8_t *slurp(const char *dir, const char *rel, size_t *len) {
    char p[800];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    uint8_t *b = NULL;
    if (read_file(p, &b, len) != CARSEG_OK) return NULL;
    return b;
}

/* Loads must fail cleanly with a message that starts with the file's name. */
static int try_load(const char *name, const uint8_t *b, size_t len) {
    wfile *f = NULL;
    carseg_status st = wfile_open_mem(name, b, len, &f);
    if (st == CARSEG_OK) { wfile_close(f); return 1; }
    size_t nl = strlen(name);
    CHECK_MSG(!f && strncmp(carseg_last_error(), name, nl) == 0 && carseg_last_error()[nl] == ':',
              "%s", carseg_last_error());
    return 0;
}

static void flips(const char *name, const uint8_t *b, size_t len, size_t lo, size_t hi, int n, unsigned seed) {
    uint8_t *c = malloc(len);
    for (int k = 0; k < n; k++) {
        memcpy(c, b, len);
        for (int j = 0; j < 1 + k % 4; j++) {
            seed = seed * 1664525u + 1013904223u;
            size_t pos = lo + (seed >> 4) % (hi - lo);
            seed = seed * 1664525u + 1013904223u;
            c[pos] ^= (uint8_t)(1u << ((seed >> 16) & 7));
            if (k % 7 == 3) c[pos] = (uint8_t)(seed >> 24);   /* sometimes a random byte */
        }
        try_load(name, c, len);
    }
    free(c);
}

TEST(weights_torchzip_hostile) {
    const char *dir = gen_dir();
    if (!dir) SKIP("/usr/bin/python3 with torch could not run scripts/gen_model_files.py");
    size_t vlen, plen, slen, tlen, jlen;
    uint8_t *v = slurp(dir, "views.pt", &vlen), *pk = slurp(dir, "views_parts/data.pkl", &plen),
            *sg = slurp(dir, "views_parts/0", &slen), *tj = slurp(dir, "tiny_jit.pt", &tlen),
            *jj = slurp(dir, "jit_f16.pt", &jlen);
    REQUIRE(v && pk && sg && tj && jj);
    /* the whole file cut at every length */
    for (size_t cut = 0; cut < vlen; cut++) CHECK_MSG(!try_load("cut.pt", v, cut), "cut %zu loaded", cut);
    /* the pickle cut at every length, re-zipped with correct CRCs */
    const char *names[2] = {"archive/data.pkl", "archive/data/0"};
    int ok_full = 0;
    for (size_t cut = 0; cut <= plen; cut++) {
        const uint8_t *d[2] = {pk, sg};
        size_t l[2] = {cut, slen}, zl;
        uint8_t *z = zip_build(2, names, d, l, &zl);
        int ok = try_load("pkl.pt", z, zl);
        if (cut < plen) CHECK_MSG(!ok, "pickle cut at %zu loaded", cut);
        else ok_full = ok;
        free(z);
    }
    CHECK(ok_full);   /* the re-zipped archive itself is fine */
    /* the storage cut at every length: names the tensor */
    for (size_t cut = 0; cut < slen; cut++) {
        const uint8_t *d[2] = {pk, sg};
        size_t l[2] = {plen, cut}, zl;
        uint8_t *z = zip_build(2, names, d, l, &zl);
        CHECK_MSG(!try_load("stor.pt", z, zl), "storage cut at %zu loaded", cut);
        CHECK_MSG(strstr(carseg_last_error(), "(tensor ") != NULL, "%s", carseg_last_error());
        free(z);
    }
    /* a storage byte flipped: the CRC catches it */
    uint8_t *c = malloc(jlen);
    memcpy(c, jj, jlen);
    c[jlen / 2] ^= 0x10;
    CHECK(!try_load("crc.pt", c, jlen));
    CHECK_MSG(strstr(carseg_last_error(), "CRC") != NULL, "%s", carseg_last_error());
    free(c);
    /* flips anywhere, checksums off so the parsers behind them see the damage */
    tz_verify_crc = 0;
    flips("flip.pt", v, vlen, 0, vlen, 3000, 1);
    flips("flip.pt", tj, tlen, 0, tlen, 3000, 2);
    flips("flip.pt", jj, jlen, jlen - 40000 < jlen ? jlen - 40000 : 0, jlen, 300, 3);   /* pickle, code, directory */
    tz_verify_crc = 1;
    free(v); free(pk); free(sg); free(tj); free(jj);
}

/* flips in the JSON headers of real-sized files (OpenAI and Hugging Face names), and cuts */
TEST(weights_safetensors_hostile_gen) {
    const char *dir = gen_dir();
    if (!dir) SKIP("/usr/bin/python3 with torch could not run scripts/gen_model_files.py");
    carseg_set_log_level(CARSEG_LOG_ERROR);   /* mangled HF names warn */
    const char *files[] = {"hf_bf16.safetensors", "st_f16.safetensors"};
    for (int i = 0; i < 2; i++) {
        size_t len;
        uint8_t *b = slurp(dir, files[i], &len);
        REQUIRE(b && len > 8);
        size_t hl = (size_t)b[0] | (size_t)b[1] << 8 | (size_t)b[2] << 16;
        REQUIRE(hl + 8 < len);
        flips("hdr.safetensors", b, len, 0, 8 + hl, 400, 11u + (unsigned)i);
        for (int k = 0; k < 64; k++) {
            size_t cut = k < 32 ? (size_t)k * (8 + hl) / 32 : 8 + hl + (size_t)(k - 32) * (len - 8 - hl) / 32;
            CHECK_MSG(!try_load("cut.safetensors", b, cut), "%s cut at %zu loaded", files[i], cut);
        }
        free(b);
    }
    carseg_set_log_level(CARSEG_LOG_WARN);
}

TEST(weights_cli_inspect) {
    const char *bin = getenv("CARSEG_BIN");
    const char *p = shared_path("fixtures/clip_sg/model_jit.pt");
    if (!bin) SKIP("CARSEG_BIN not set (run through make test)");
    if (!p) SKIP("shared fixtures missing");
    char cmd[1200], out[16384] = {0};
    snprintf(cmd, sizeof cmd, "%s inspect %s 2>&1", bin, p);
    FILE *f = popen(cmd, "r");
    REQUIRE(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    CHECK(pclose(f) == 0);
    CHECK(strstr(out, "format: torchscript") != NULL);
    CHECK(strstr(out, "vision: width 128, layers 2, heads 2, patch 16, grid 14, resolution 224") != NULL);
    CHECK(strstr(out, "text: width 64, layers 2, heads 1, context 77, vocab 49408") != NULL);
    CHECK(strstr(out, "embed: 32") != NULL);
    CHECK(strstr(out, "visual.transformer.resblocks.1.attn.in_proj_weight") != NULL);
    snprintf(cmd, sizeof cmd, "%s inspect %s/fixtures/README.md 2>&1", bin, shared_path(""));
    f = popen(cmd, "r");
    REQUIRE(f);
    n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    CHECK(pclose(f) != 0);
    CHECK(strstr(out, "carseg: error: ") != NULL && strstr(out, "README.md: not a safetensors file") != NULL);
}

/* Inputs whose cost could explode: many tensors, a module DAG that shares sub-objects. */
TEST(weights_hostile_complexity) {
    /* 50k zero-size tensors named like resblocks: linear-ish time everywhere */
    int n = 50000;
    size_t cap = (size_t)n * 160 + 64, hl = 0;
    char *h = malloc(cap);
    hl += (size_t)snprintf(h + hl, cap - hl, "{");
    for (int i = 0; i < n; i++)
        hl += (size_t)snprintf(h + hl, cap - hl, "%s\"visual.transformer.resblocks.%d.attn.in_proj_weight\":"
                               "{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[0,0]}", i ? "," : "", i);
    hl += (size_t)snprintf(h + hl, cap - hl, "}");
    uint8_t *b = malloc(8 + hl);
    for (int k = 0; k < 8; k++) b[k] = (uint8_t)((uint64_t)hl >> (8 * k));
    memcpy(b + 8, h, hl);
    double t0 = now_ms();
    wfile *f = NULL;
    CHECK_OK(wfile_open_mem("many.safetensors", b, 8 + hl, &f));
    if (f) {
        CHECK(f->n == n);
        clip_config c;
        CHECK(clip_config_from_weights(f, &c) != CARSEG_OK);
        wfile_close(f);
    }
    CHECK_MSG(now_ms() - t0 < 20000, "took %.0f ms", now_ms() - t0);
    free(b);
    free(h);

    /* pickle DAG: object i's state is {a: object i-1, b: object i-1}, 30 levels (2^30 paths) */
    uint8_t pk[4096];
    size_t p = 0;
    pk[p++] = 0x80; pk[p++] = 2;
    memcpy(pk + p, "c__torch__\nM\n", 13); p += 13;
    pk[p++] = 'q'; pk[p++] = 0;
    pk[p++] = 'h'; pk[p++] = 0; pk[p++] = ')'; pk[p++] = 0x81; pk[p++] = '}'; pk[p++] = 'b';
    pk[p++] = 'q'; pk[p++] = 1;
    for (int i = 1; i <= 30; i++) {
        pk[p++] = 'h'; pk[p++] = 0; pk[p++] = ')'; pk[p++] = 0x81; pk[p++] = '}'; pk[p++] = '(';
        pk[p++] = 'U'; pk[p++] = 1; pk[p++] = 'a'; pk[p++] = 'h'; pk[p++] = (uint8_t)i;
        pk[p++] = 'U'; pk[p++] = 1; pk[p++] = 'b'; pk[p++] = 'h'; pk[p++] = (uint8_t)i;
        pk[p++] = 'u'; pk[p++] = 'b'; pk[p++] = 'q'; pk[p++] = (uint8_t)(i + 1);
    }
    pk[p++] = '.';
    const char *names[1] = {"archive/data.pkl"};
    const uint8_t *d[1] = {pk};
    size_t l[1] = {p}, zl;
    uint8_t *z = zip_build(1, names, d, l, &zl);
    t0 = now_ms();
    CHECK(!try_load("dag.pt", z, zl));
    CHECK_MSG(strstr(carseg_last_error(), "revisits") != NULL, "%s", carseg_last_error());
    CHECK(now_ms() - t0 < 5000);
    free(z);
}

static carseg_status open_hdr(const char *name, const char *hdr, size_t data_len, wfile **f) {
    size_t n = strlen(hdr);
    uint8_t *buf = calloc(1, 8 + n + data_len);
    for (int k = 0; k < 8; k++) buf[k] = (uint8_t)((uint64_t)n >> (8 * k));
    memcpy(buf + 8, hdr, n);
    carseg_status st = wfile_open_mem(name, buf, 8 + n + data_len, f);
    free(buf);
    return st;
}

TEST(weights_name_errors) {
    wfile *f = NULL;
    CHECK(open_hdr("dup.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &f) == CARSEG_EFORMAT);
    CHECK_MSG(strstr(carseg_last_error(), "dup.safetensors: duplicate tensor name (tensor a)"), "%s", carseg_last_error());
    /* HF attention without k_proj */
    CHECK(open_hdr("hf.safetensors",
                   "{\"vision_model.encoder.layers.0.self_attn.q_proj.weight\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]},"
                   "\"vision_model.encoder.layers.0.self_attn.v_proj.weight\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]}}",
                   4, &f) == CARSEG_EMODEL);
    CHECK_MSG(strstr(carseg_last_error(), "hf.safetensors: ") == carseg_last_error() &&
              strstr(carseg_last_error(), "k_proj"), "%s", carseg_last_error());
    /* unsupported float dtypes are skipped (with a warning) */
    carseg_set_log_level(CARSEG_LOG_ERROR);
    CHECK(open_hdr("f64.safetensors", "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, &f) == CARSEG_EMODEL);
    CHECK_MSG(strstr(carseg_last_error(), "f64.safetensors: no float tensors"), "%s", carseg_last_error());
    carseg_set_log_level(CARSEG_LOG_WARN);
    /* "module." prefixes are dropped */
    CHECK_OK(open_hdr("m.safetensors", "{\"module.logit_scale\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, &f));
    CHECK(f && wfile_get(f, "logit_scale"));
    wfile_close(f);
}

/* the resident pages of the mapping that holds p, from /proc/self/smaps (kB; -1: not found) */
static long mapping_rss_kb(const void *p) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    long rss = -1;
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)p >= a && (uintptr_t)p < b;
            continue;
        }
        if (in && sscanf(line, "Rss: %ld kB", &rss) == 1) break;
    }
    fclose(f);
    return in ? rss : -1;
}

/* wfile_open gives back the file's pages as it converts each tensor (wdt_source_mapped): a big
 * tensor's values are intact, and wdt_to_f32 on a mapping with the flag on leaves its pages
 * unmapped from the process (smaps Rss drops), with the flag off keeps them. */
TEST(weights_mapped_source_pages_given_back) {
    const size_t n = 1 << 20;   /* 4 MB of float32 */
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr, "{\"big\": {\"dtype\": \"F32\", \"shape\": [%zu], \"data_offsets\": [0, %zu]}}", n, 4 * n);
    while (hl % 8) hdr[hl++] = ' ';
    char path[1024];
    snprintf(path, sizeof path, "%s/big.safetensors", test_tmpdir());
    FILE *fp = fopen(path, "wb");
    REQUIRE(fp);
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    fwrite(le, 1, 8, fp), fwrite(hdr, 1, (size_t)hl, fp);
    for (size_t i = 0; i < n; i++) {
        float v = (float)i * 0.25f - 7.0f;
        fwrite(&v, 4, 1, fp);
    }
    REQUIRE(fclose(fp) == 0);
    wfile *f = NULL;
    CHECK_OK(wfile_open(path, &f));
    REQUIRE(f);
    const wtensor *t = wfile_get(f, "big");
    REQUIRE(t && t->count == n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += t->data[i] != (float)i * 0.25f - 7.0f;
    CHECK_MSG(bad == 0, "%zu of %zu values differ", bad, n);
    wfile_close(f);
    /* the release itself, on a mapping of the file */
    int fd = open(path, O_RDONLY);
    REQUIRE(fd >= 0);
    size_t len = 8 + (size_t)hl + 4 * n;
    uint8_t *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    REQUIRE(m != MAP_FAILED);
    float *out = malloc(4 * n);
    REQUIRE(out);
    wdt_to_f32(WDT_F32, m + 8 + hl, n, out);   /* flag off: the pages stay */
    long kept = mapping_rss_kb(m);
    wdt_source_mapped(1);
    wdt_to_f32(WDT_F32, m + 8 + hl, n, out);
    wdt_source_mapped(0);
    long after = mapping_rss_kb(m);
    CHECK_MSG(kept >= 3000 && after >= 0 && after < kept / 4, "mapping Rss %ld kB, then %ld kB", kept, after);
    CHECK(out[n - 1] == (float)(n - 1) * 0.25f - 7.0f);
    /* read again: the file's bytes come back */
    wdt_to_f32(WDT_F32, m + 8 + hl, n, out);
    CHECK(out[12345] == 12345 * 0.25f - 7.0f);
    munmap(m, len);
    free(out);
}
