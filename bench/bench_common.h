/* bench_common.h — what the benchmarks share besides include/carseg.h: clocks, the ../shared
 * finder, memory figures, a reader of flat JSON numbers, the towers' FLOP counts, and the
 * random-weight CLIP files the real-shape benches load through carseg_clip_load /
 * carseg_car_model_open (safetensors, OpenAI's tensor names, F16 values of a fixed seed).
 * Benchmarks use the public API only (scripts/check_layers.py refuses any other project
 * header); this file is static functions, included by each bench. */
#ifndef CARSEG_BENCH_COMMON_H
#define CARSEG_BENCH_COMMON_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "carseg.h"

static inline double bench_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* CPU time of the process (all threads), ms */
static inline double bench_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* ROOT/rel in buf: ROOT is $CARSEG_SHARED, else the first of ../shared, ../../shared and
 * /work/shared holding rel, else ../shared. */
static inline const char *bench_shared(const char *rel, char *buf, size_t n) {
    const char *root = getenv("CARSEG_SHARED");
    static const char *const tries[] = {"../shared", "../../shared", "/work/shared"};
    for (int i = 0; !root && i < 3; i++) {
        snprintf(buf, n, "%s/%s", tries[i], rel);
        if (access(buf, R_OK) == 0) root = tries[i];
    }
    snprintf(buf, n, "%s/%s", root ? root : "../shared", rel);
    return buf;
}

/* a field of /proc/self/status in MB ("VmRSS:", "VmHWM:"); 0 when unknown */
static inline double bench_status_mb(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    double kb = 0;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n)) kb = atof(line + n);
    fclose(f);
    return kb / 1024;
}
/* Resets the peak (VmHWM) to the current RSS (Linux >= 4.0): the peak of what follows, without
 * the model files' transient mappings while loading. Returns 0 on success. */
static inline int bench_reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* The number after "key": in a flat JSON object (def when absent). */
static inline double bench_json_num(const char *js, const char *key, double def) {
    char pat[96];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(js, pat);
    if (!p || !(p = strchr(p + strlen(pat), ':'))) return def;
    char *end;
    double v = strtod(p + 1, &end);
    return end == p + 1 ? def : v;
}
/* The string after "key": (copied into out; "?" when absent). */
static inline void bench_json_str(const char *js, const char *key, char *out, size_t n) {
    char pat[96];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(js, pat);
    snprintf(out, n, "?");
    if (!p || !(p = strchr(p + strlen(pat), ':')) || !(p = strchr(p, '"'))) return;
    const char *e = strchr(p + 1, '"');
    if (e) snprintf(out, n, "%.*s", (int)(e - p - 1), p + 1);
}

// ---------------------------------------------------------------------------------------------
// CLIP shapes, FLOP counts and random-weight files

typedef struct {
    int v_width, v_layers, v_patch, v_grid;    /* vision: width, blocks, patch, native grid */
    int t_width, t_layers, t_ctx, t_vocab;     /* text */
    int embed;
} bench_clip_shape;

/* OpenAI's ViT-B/16 and ViT-L/14 */
static const bench_clip_shape BENCH_B16 = {768, 12, 16, 14, 512, 12, 77, 49408, 512};
static const bench_clip_shape BENCH_L14 = {1024, 24, 14, 16, 768, 12, 77, 49408, 768};

/* FLOPs of one image forward at a gh x gw grid through n_blocks blocks (the matrix products) and
 * of the text tower on one prompt of L tokens (computed up to its EOT). */
static inline double bench_image_flops(const bench_clip_shape *c, int gh, int gw, int n_blocks) {
    double L = 1.0 + (double)gh * gw, C = c->v_width, M = 4.0 * C;
    double per_block = 2 * L * C * (3 * C + C + 2 * M) + 2.0 * 2 * L * L * C;
    double patch = 2.0 * gh * gw * C * 3 * c->v_patch * c->v_patch;
    return patch + per_block * n_blocks + 2 * C * c->embed;
}
static inline double bench_text_flops(const bench_clip_shape *c, int L) {
    double C = c->t_width;
    double per_block = 2.0 * L * C * (3 * C + C + 8 * C) + 2.0 * 2 * L * L * C;
    return per_block * c->t_layers + 2 * C * c->embed;
}
/* parameters (floats) of a model of this shape */
static inline double bench_clip_params(const bench_clip_shape *c) {
    double C = c->v_width, P = c->v_patch, Ct = c->t_width, E = c->embed, M = 4 * C, Mt = 4 * Ct;
    double np = 1.0 + (double)c->v_grid * c->v_grid;
    double bv = 4 * C + 3 * C * C + 3 * C + C * C + C + 2 * M * C + M + C;
    double bt = 4 * Ct + 3 * Ct * Ct + 3 * Ct + Ct * Ct + Ct + 2 * Mt * Ct + Mt + Ct;
    return C * 3 * P * P + C + np * C + 4 * C + C * E + bv * c->v_layers + (double)c->t_vocab * Ct +
           (double)c->t_ctx * Ct + 2 * Ct + Ct * E + bt * c->t_layers + 1;
}

static inline uint64_t bench_rng(uint64_t *s) {   /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* IEEE binary16 bits of f, rounded to nearest even (finite, normal-range inputs as here) */
static inline uint16_t bench_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x47800000u) return (uint16_t)(sign | 0x7c00u);   /* overflow: inf */
    if (ax < 0x38800000u) {                                      /* subnormal or zero */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f));   /* units of 2^-24 */
    }
    uint32_t m = ax + 0xfffu + ((ax >> 13) & 1u);   /* round the 13 dropped bits to even */
    return (uint16_t)(sign | ((m - 0x38000000u) >> 13));
}

typedef struct {
    FILE *f;
    uint64_t s;
    uint16_t buf[1 << 16];
} bench_writer;

/* n F16 values: a Gaussian-like std (sum of four uniforms), or `fill` when std is 0 */
static inline int bench_put(bench_writer *w, size_t n, float std, float fill) {
    const float k = std * 1.7320508f;   /* a uniform on [-1, 1) has std 1/sqrt(3) */
    while (n > 0) {
        size_t c = n < (1u << 16) ? n : (1u << 16);
        for (size_t i = 0; i < c; i++) {
            float v = fill;
            if (std > 0) {
                uint64_t r = bench_rng(&w->s);
                float a = (float)(r & 0xffff) / 32768.0f - 1.0f, b = (float)((r >> 16) & 0xffff) / 32768.0f - 1.0f;
                float cc = (float)((r >> 32) & 0xffff) / 32768.0f - 1.0f, d = (float)(r >> 48) / 32768.0f - 1.0f;
                v = k * 0.5f * (a + b + cc + d);
            }
            w->buf[i] = bench_f16(v);
        }
        if (fwrite(w->buf, 2, c, w->f) != c) return -1;
        n -= c;
    }
    return 0;
}

/* The tensors of an OpenAI CLIP state dict: name, shape (up to 4 dims, 0 ends it), std of the
 * random values (0: the constant `fill`). i indexes them; returns 0 past the end. The order (and
 * the generator below) is that of the library's own clip_init_random (src/clip/clip.c), which the
 * benches used before they went through the public API: the same seed gives the same weights. */
typedef struct {
    char name[96];
    int64_t shape[4];
    float std, fill;
} bench_tensor;

static inline int bench_tensor_set(bench_tensor *t, const char *name, int64_t d0, int64_t d1, float std,
                                   float fill) {
    snprintf(t->name, sizeof t->name, "%s", name);
    t->shape[0] = d0, t->shape[1] = d1, t->std = std, t->fill = fill;
    return 1;
}

static inline int bench_tensor_at(const bench_clip_shape *c, int i, bench_tensor *t) {
    memset(t, 0, sizeof *t);
    static const char *const blk[12] = {"ln_1.weight", "ln_1.bias", "attn.in_proj_weight",
                                        "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                                        "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                                        "mlp.c_proj.weight", "mlp.c_proj.bias"};
    int C = c->v_width, Ct = c->t_width, E = c->embed;
    int nvb = 12 * c->v_layers, ntb = 12 * c->t_layers;
    if (i == 0) {
        bench_tensor_set(t, "visual.conv1.weight", C, 3, 0.02f, 0);
        t->shape[2] = t->shape[3] = c->v_patch;
        return 1;
    }
    if (i == 1) return bench_tensor_set(t, "visual.class_embedding", C, 0, 0.02f, 0);
    if (i == 2)
        return bench_tensor_set(t, "visual.positional_embedding", 1 + (int64_t)c->v_grid * c->v_grid, C,
                                0.01f, 0);
    if (i == 3) return bench_tensor_set(t, "visual.ln_pre.weight", C, 0, 0, 1);
    if (i == 4) return bench_tensor_set(t, "visual.ln_pre.bias", C, 0, 0, 0);
    if (i == 5) return bench_tensor_set(t, "visual.ln_post.weight", C, 0, 0, 1);
    if (i == 6) return bench_tensor_set(t, "visual.ln_post.bias", C, 0, 0, 0);
    if (i == 7) return bench_tensor_set(t, "visual.proj", C, E, 0.02f, 0);
    i -= 8;
    for (int tower = 0; tower < 2; tower++) {
        int nb = tower ? ntb : nvb, W = tower ? Ct : C;
        if (i < nb) {
            int l = i / 12, k = i % 12;
            char nm[96];
            snprintf(nm, sizeof nm, "%stransformer.resblocks.%d.%s", tower ? "" : "visual.", l, blk[k]);
            const int64_t rows[12] = {W, W, 3 * W, 3 * W, W, W, W, W, 4 * W, 4 * W, W, W};
            const int64_t cols[12] = {0, 0, W, 0, W, 0, 0, 0, W, 0, 4 * W, 0};
            int ln = k == 0 || k == 1 || k == 6 || k == 7;
            return bench_tensor_set(t, nm, rows[k], cols[k], ln ? 0 : cols[k] ? 0.02f : 0.01f,
                                    k == 0 || k == 6 ? 1 : 0);
        }
        i -= nb;
    }
    if (i == 0) return bench_tensor_set(t, "token_embedding.weight", c->t_vocab, Ct, 0.02f, 0);
    if (i == 1) return bench_tensor_set(t, "positional_embedding", c->t_ctx, Ct, 0.01f, 0);
    if (i == 2) return bench_tensor_set(t, "ln_final.weight", Ct, 0, 0, 1);
    if (i == 3) return bench_tensor_set(t, "ln_final.bias", Ct, 0, 0, 0);
    if (i == 4) return bench_tensor_set(t, "text_projection", Ct, E, 0.02f, 0);
    return 0;
}

static inline size_t bench_tensor_count(const bench_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < 4 && t->shape[d]; d++) n *= (size_t)t->shape[d];
    return n;
}

/* Writes a CLIP of shape c with random weights (deterministic in seed: std 0.02 for the
 * matrices and embeddings, 0.01 for biases and positions, LayerNorms 1 and 0, logit scale 100)
 * as a safetensors file that carseg_clip_load reads: F16 tensors under OpenAI's names, plus
 * logit_scale (F32, log 100). Returns 0, or -1 with errno set. */
static inline int bench_write_clip(const char *path, const bench_clip_shape *c, unsigned seed) {
    size_t cap = 1 << 20, len = 0;
    char *hdr = malloc(cap);
    if (!hdr) return -1;
    uint64_t off = 0;
    len += (size_t)snprintf(hdr + len, cap - len, "{\"logit_scale\":{\"dtype\":\"F32\",\"shape\":[],"
                            "\"data_offsets\":[0,4]}");
    off = 4;
    bench_tensor t;
    for (int i = 0; bench_tensor_at(c, i, &t); i++) {
        size_t n = bench_tensor_count(&t);
        len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"F16\",\"shape\":[", t.name);
        for (int d = 0; d < 4 && t.shape[d]; d++)
            len += (size_t)snprintf(hdr + len, cap - len, "%s%lld", d ? "," : "", (long long)t.shape[d]);
        len += (size_t)snprintf(hdr + len, cap - len, "],\"data_offsets\":[%llu,%llu]}",
                                (unsigned long long)off, (unsigned long long)(off + 2 * n));
        off += 2 * n;
        if (len + 512 > cap) {
            free(hdr);
            errno = EOVERFLOW;
            return -1;
        }
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8) hdr[len++] = ' ';   /* the data 8-byte aligned, as safetensors writes it */
    bench_writer *w = malloc(sizeof *w);
    FILE *f = fopen(path, "wb");
    int rc = -1;
    if (w && f) {
        w->f = f, w->s = seed;
        uint8_t n8[8];
        for (int i = 0; i < 8; i++) n8[i] = (uint8_t)((uint64_t)len >> (8 * i));
        float ls = logf(100.0f);
        rc = fwrite(n8, 1, 8, f) == 8 && fwrite(hdr, 1, len, f) == len && fwrite(&ls, 4, 1, f) == 1 ? 0 : -1;
        for (int i = 0; rc == 0 && bench_tensor_at(c, i, &t); i++)
            rc = bench_put(w, bench_tensor_count(&t), t.std, t.fill);
    }
    if (f && fclose(f) != 0) rc = -1;
    if (rc != 0 && f) unlink(path);
    free(w), free(hdr);
    return rc;
}

/* A temporary folder for model files ($TMPDIR or /tmp); dir: at least 64 bytes. */
static inline int bench_tmpdir(char *dir, size_t n) {
    const char *t = getenv("TMPDIR");
    snprintf(dir, n, "%s/carseg-bench-XXXXXX", t && *t ? t : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

#endif
