/* test_gemm_amx.c — the AMX precision modes (gemm_amx.c, clip_set_precision): bf16 rounding and
 * the hi/lo split, the packed layouts, the portable emulation against float64 sums (these run
 * everywhere), then the AMX kernels against the emulation and the whole image tower against the
 * upstream fixtures (these SKIP without AMX). */
#include <math.h>
#include <stdio.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fixtures.h"
#include "clip.h"
#include "gemm_amx.h"
#include "image.h"
#include "nn.h"
#include "util.h"
#include "weights.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TEST(amx_bf16_rounding) {
    CHECK(gemm_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(gemm_f32_to_bf16(-2.0f) == 0xc000);
    CHECK(gemm_f32_to_bf16(bits_f32(0x3f808000u)) == 0x3f80);   /* tie -> even */
    CHECK(gemm_f32_to_bf16(bits_f32(0x3f818000u)) == 0x3f82);   /* tie -> even (up) */
    CHECK(gemm_f32_to_bf16(bits_f32(0x3f808001u)) == 0x3f81);   /* above the tie */
    CHECK(gemm_f32_to_bf16(bits_f32(0x7f7fffffu)) == 0x7f80);   /* FLT_MAX rounds to inf */
    CHECK(gemm_f32_to_bf16(INFINITY) == 0x7f80);
    CHECK(gemm_f32_to_bf16(-INFINITY) == 0xff80);
    CHECK(isnan(gemm_bf16_to_f32(gemm_f32_to_bf16(NAN))));
    CHECK(gemm_f32_to_bf16(bits_f32(0x00400000u)) == 0x0000);   /* denormal -> +0 */
    CHECK(gemm_f32_to_bf16(bits_f32(0x80400000u)) == 0x8000);   /* denormal -> -0 */
    CHECK(gemm_bf16_to_f32(0x3f80) == 1.0f);
}

/* hi + lo: exact for fp16 values (the official checkpoints), within 2^-17 relative otherwise */
TEST(amx_split_error) {
    unsigned s = 11;
    enum { N = 3, K = 77 };
    float x[N * K];
    uint16_t hi[16 * 96], lo[16 * 96];
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < N * K; i++) {
            float v = test_randf(&s) * powf(2.0f, (float)(i % 40) - 20.0f);
            x[i] = pass ? v : nn_round_fp16(v);
        }
        gemm_split_ref(x, N, K, hi, lo);
        int ks = (K + 31) / 32, bad = 0, pad = 0;
        for (int r = 0; r < 16; r++)
            for (int k = 0; k < 32 * ks; k++) {
                size_t o = ((size_t)(k / 32) * 16 + r) * 32 + k % 32;
                float sum = gemm_bf16_to_f32(hi[o]) + gemm_bf16_to_f32(lo[o]);
                if (r >= N || k >= K) { pad += hi[o] != 0 || lo[o] != 0; continue; }
                float v = x[r * K + k];
                if (pass ? fabsf(sum - v) > ldexpf(fabsf(v), -17) : sum != v) bad++;
            }
        CHECK_MSG(bad == 0, "pass %d: %d values not within bound", pass, bad);
        CHECK_MSG(pad == 0, "%d padding values not zero", pad);
    }
}

/* the B-tile layout, element by element, with odd sizes (padding of OC to 16 and IC to 32) */
TEST(amx_pack_layout) {
    enum { OC = 19, IC = 37 };
    float w[OC * IC];
    unsigned s = 5;
    for (int i = 0; i < OC * IC; i++) w[i] = test_randf(&s);
    gemm_pack p;
    CHECK_OK(gemm_pack_weights(&p, w, OC, IC, GEMM_BF16X3));
    REQUIRE(p.nb == 2 && p.ks == 2 && p.lo);
    CHECK(gemm_pack_bytes(&p) == (size_t)2 * 2 * 1024 * 2);
    int bad = 0;
    for (int o = 0; o < 32; o++)
        for (int k = 0; k < 64; k++) {
            int j = o / 16, c = o % 16, st = k / 32, r = (k % 32) / 2, q = k % 2;
            size_t d = (((size_t)j * p.ks + st) * 16 + r) * 32 + 2 * c + q;
            float v = o < OC && k < IC ? w[o * IC + k] : 0.0f;
            uint16_t h = gemm_f32_to_bf16(v), l = gemm_f32_to_bf16(v - gemm_bf16_to_f32(h));
            bad += p.hi[d] != h || p.lo[d] != l;
        }
    CHECK_MSG(bad == 0, "%d packed values misplaced", bad);
    gemm_pack_free(&p);
    CHECK_OK(gemm_pack_weights(&p, w, OC, IC, GEMM_BF16));
    CHECK(p.lo == NULL && gemm_pack_bytes(&p) == (size_t)2 * 2 * 1024);
    gemm_pack_free(&p);
    CHECK(gemm_pack_weights(&p, w, 0, IC, GEMM_BF16) == CARSEG_EINVAL);
    CHECK(gemm_pack_weights(&p, w, OC, IC, GEMM_FP32) == CARSEG_EINVAL);
}

typedef struct { int N, IC, OC; } shape;
static const shape SHAPES[] = {{1, 1, 1},   {1, 64, 48},  {15, 31, 15}, {16, 32, 16},
                               {17, 33, 17}, {33, 70, 50}, {5, 588, 40}, {40, 96, 33},
                               {70, 128, 96}};

/* out = act(resid + x w^T + b) in float64; *mag = sum |x||w| per element (for error bounds) */
static void naive(double *out, double *mag, const float *x, const float *w, const float *b,
                  const float *resid, int N, int IC, int OC, int ldw, int flags) {
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double acc = 0, m = 0;
            for (int k = 0; k < IC; k++) {
                double t = (double)x[(size_t)i * IC + k] * w[(size_t)o * ldw + k];
                acc += t, m += fabs(t);
            }
            if (flags & NN_ACCUMULATE) acc += resid[(size_t)i * OC + o];
            if (b) acc += b[o];
            if (flags & NN_GELU) acc = acc / (1.0 + exp(-1.702 * acc));
            out[(size_t)i * OC + o] = acc;
            mag[(size_t)i * OC + o] = m + fabs(b ? b[o] : 0) + (flags & NN_ACCUMULATE ? fabs(resid[(size_t)i * OC + o]) : 0);
        }
}

/* Runs fn(out) for every shape, flags and mode, checks |out - exact| <= rel(mode) * sum|x w|. */
static void check_against_exact(int use_amx) {
    unsigned s = 3;
    for (size_t si = 0; si < sizeof SHAPES / sizeof *SHAPES; si++) {
        shape sh = SHAPES[si];
        float *x = malloc(sizeof(float) * sh.N * sh.IC), *w = malloc(sizeof(float) * sh.OC * sh.IC);
        float *b = malloc(sizeof(float) * sh.OC), *out = malloc(sizeof(float) * sh.N * sh.OC);
        float *resid = malloc(sizeof(float) * sh.N * sh.OC);
        double *ref = malloc(sizeof(double) * sh.N * sh.OC), *mag = malloc(sizeof(double) * sh.N * sh.OC);
        for (int i = 0; i < sh.N * sh.IC; i++) x[i] = test_randf(&s);
        for (int i = 0; i < sh.OC * sh.IC; i++) w[i] = 0.1f * test_randf(&s);
        for (int i = 0; i < sh.OC; i++) b[i] = test_randf(&s);
        for (int i = 0; i < sh.N * sh.OC; i++) resid[i] = test_randf(&s);
        for (int mode = GEMM_BF16X3; mode <= GEMM_BF16; mode++) {
            gemm_pack p;
            CHECK_OK(gemm_pack_weights(&p, w, sh.OC, sh.IC, mode));
            /* per product ~2^-16 (bf16x3: the dropped lo*lo and the residues), ~2^-8 (bf16),
             * plus the float32 accumulation */
            double rel = (mode == GEMM_BF16X3 ? ldexp(1, -15) : ldexp(1, -7)) + sh.IC * ldexp(1, -23);
            for (int flags = 0; flags < 4; flags++) {
                if (flags == 3) continue;
                memcpy(out, resid, sizeof(float) * sh.N * sh.OC);
                const float *bias = flags == 0 && si % 2 ? NULL : b;
                if (use_amx) gemm_linear(out, sh.OC, x, sh.N, &p, bias, flags, NULL);
                else gemm_linear_ref(out, sh.OC, x, sh.N, &p, bias, flags);
                naive(ref, mag, x, w, bias, resid, sh.N, sh.IC, sh.OC, sh.IC, flags);
                int bad = 0;
                double worst = 0;
                for (int i = 0; i < sh.N * sh.OC; i++) {
                    double e = fabs(out[i] - ref[i]), tol = rel * mag[i] + 1e-6 * fabs(ref[i]);
                    if (!(e <= tol)) bad++;
                    if (mag[i] > 0) worst = fmax(worst, e / mag[i]);
                }
                CHECK_MSG(bad == 0, "%s mode %d N %d IC %d OC %d flags %d: %d outside the bound "
                          "(worst |err|/sum|xw| %.2e)", use_amx ? "AMX" : "emulation", mode, sh.N,
                          sh.IC, sh.OC, flags, bad, worst);
            }
            gemm_pack_free(&p);
        }
        free(x), free(w), free(b), free(out), free(resid), free(ref), free(mag);
    }
}

/* the portable emulation of the tile products (runs everywhere) */
TEST(amx_emulation_error_bounds) { check_against_exact(0); }

#define NEED_AMX()                                                                      \
    do {                                                                                \
        if (gemm_amx_check() != CARSEG_OK) {                                            \
            char why_[400];                                                             \
            snprintf(why_, sizeof why_, "no AMX here: %s", carseg_last_error());        \
            SKIP(why_);                                                                 \
        }                                                                               \
    } while (0)

TEST(amx_kernel_error_bounds) {
    NEED_AMX();
    check_against_exact(1);
}

/* AMX kernels vs the emulation: the same products, summed in another order inside the unit */
TEST(amx_kernel_matches_emulation) {
    NEED_AMX();
    unsigned s = 9;
    const shape sh[] = {{1, 768, 40}, {17, 33, 17}, {40, 588, 33}, {33, 1100, 17}, {64, 96, 200}};
    for (size_t si = 0; si < sizeof sh / sizeof *sh; si++) {
        int N = sh[si].N, IC = sh[si].IC, OC = sh[si].OC;
        float *x = malloc(sizeof(float) * N * IC), *w = malloc(sizeof(float) * OC * IC);
        float *a = malloc(sizeof(float) * N * OC), *r = malloc(sizeof(float) * N * OC);
        for (int i = 0; i < N * IC; i++) x[i] = test_randf(&s);
        for (int i = 0; i < OC * IC; i++) w[i] = 0.05f * test_randf(&s);
        /* the vector split is the scalar one, bit for bit */
        int rb = (N + 15) / 16, ks = (IC + 31) / 32;
        size_t na = (size_t)rb * ks * 512;
        uint16_t *h1 = malloc(na * 2), *l1 = malloc(na * 2), *h2 = malloc(na * 2), *l2 = malloc(na * 2);
        gemm_split(x, N, IC, h1, l1);
        gemm_split_ref(x, N, IC, h2, l2);
        CHECK_MSG(!memcmp(h1, h2, na * 2) && !memcmp(l1, l2, na * 2), "split differs (N %d IC %d)",
                  N, IC);
        free(h1), free(l1), free(h2), free(l2);
        for (int mode = GEMM_BF16X3; mode <= GEMM_BF16; mode++) {
            gemm_pack p;
            CHECK_OK(gemm_pack_weights(&p, w, OC, IC, mode));
            gemm_linear(a, OC, x, N, &p, NULL, 0, NULL);
            gemm_linear_ref(r, OC, x, N, &p, NULL, 0);
            double worst = 0;
            for (int i = 0; i < N; i++)
                for (int o = 0; o < OC; o++) {
                    double m = 0;
                    for (int k = 0; k < IC; k++) m += fabs((double)x[i * IC + k] * w[o * IC + k]);
                    worst = fmax(worst, fabs(a[i * OC + o] - r[i * OC + o]) / (m > 0 ? m : 1));
                }
            CHECK_MSG(worst <= IC * ldexp(1, -23), "mode %d N %d IC %d OC %d: AMX vs emulation "
                      "%.2e of sum|xw|", mode, N, IC, OC, worst);
            gemm_pack_free(&p);
        }
        free(x), free(w), free(a), free(r);
    }
}

/* sub-ranges of a weight matrix (in_proj's q and k|v rows) into a wider output (ldo), and the
 * result independent of the thread count (each output is one thread's) */
TEST(amx_subrange_and_threads) {
    NEED_AMX();
    enum { N = 50, C = 40 };
    unsigned s = 21;
    float *x = malloc(sizeof(float) * N * C), *w = malloc(sizeof(float) * 3 * C * C);
    float *b = malloc(sizeof(float) * 3 * C);
    float *o1 = malloc(sizeof(float) * N * 3 * C), *o2 = malloc(sizeof(float) * N * 3 * C);
    float *full = malloc(sizeof(float) * N * 3 * C);
    for (int i = 0; i < N * C; i++) x[i] = test_randf(&s);
    for (int i = 0; i < 3 * C * C; i++) w[i] = 0.1f * test_randf(&s);
    for (int i = 0; i < 3 * C; i++) b[i] = test_randf(&s);
    gemm_pack q, kv, all;
    CHECK_OK(gemm_pack_weights(&q, w, C, C, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&kv, w + C * C, 2 * C, C, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&all, w, 3 * C, C, GEMM_BF16X3));
    int nt = carseg_get_threads();
    gemm_work wk = {0};
    for (int t = 1; t <= 2; t++) {
        carseg_set_threads(t);
        float *o = t == 1 ? o1 : o2;
        for (int i = 0; i < N * 3 * C; i++) o[i] = NAN;
        gemm_linear(o, 3 * C, x, N, &q, b, 0, &wk);
        gemm_linear(o + C, 3 * C, x, N, &kv, b + C, 0, &wk);
    }
    carseg_set_threads(nt);
    CHECK_MSG(!memcmp(o1, o2, sizeof(float) * N * 3 * C), "1 and 2 threads differ");
    nn_linear_naive(full, x, w, b, N, C, 3 * C);
    CHECK_CLOSE("q | k | v from two packed sub-ranges", o1, full, (size_t)N * 3 * C, 1e-5, 0);
    gemm_linear(o2, 3 * C, x, N, &all, b, 0, &wk);
    CHECK_MSG(!memcmp(o1, o2, sizeof(float) * N * 3 * C), "sub-range packs differ from the whole");
    /* q and k|v side by side in one call (q's OC a multiple of 32): the same bits */
    gemm_pack q2, kv2;
    enum { C2 = 64 };
    CHECK_OK(gemm_pack_weights(&q2, w, C2, C, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&kv2, w + C2 * C, 3 * C - C2, C, GEMM_BF16X3));
    for (int i = 0; i < N * 3 * C; i++) o2[i] = NAN;
    gemm_linear2(o2, 3 * C, x, N, &q2, &kv2, b, 0, &wk);
    float *o3 = malloc(sizeof(float) * N * 3 * C);
    gemm_linear(o3, 3 * C, x, N, &q2, b, 0, &wk);
    gemm_linear(o3 + C2, 3 * C, x, N, &kv2, b + C2, 0, &wk);
    CHECK_MSG(!memcmp(o2, o3, sizeof(float) * N * 3 * C), "gemm_linear2 differs from two calls");
    CHECK_CLOSE("gemm_linear2", o2, full, (size_t)N * 3 * C, 1e-5, 0);
    free(o3);
    gemm_pack_free(&q2), gemm_pack_free(&kv2);
    gemm_work_free(&wk);
    gemm_pack_free(&q), gemm_pack_free(&kv), gemm_pack_free(&all);
    free(x), free(w), free(b), free(o1), free(o2), free(full);
}

/* gemm_linear_ln (LayerNorm inside the product's parallel region) = nn_layernorm then
 * gemm_linear2 / gemm_linear, bit for bit, with 1 and 2 threads; rows not a multiple of 16 */
TEST(amx_linear_ln_same_bits) {
    NEED_AMX();
    enum { N = 201, IC = 128, O1 = 64, O2 = 192, OC = O1 + O2 };
    unsigned s = 33;
    float *x = malloc(sizeof(float) * N * IC), *w = malloc(sizeof(float) * OC * IC);
    float *b = malloc(sizeof(float) * OC), *lw = malloc(sizeof(float) * IC);
    float *lb = malloc(sizeof(float) * IC), *ln = malloc(sizeof(float) * N * IC);
    float *ln2 = malloc(sizeof(float) * N * IC), *ref = malloc(sizeof(float) * N * OC);
    float *o = malloc(sizeof(float) * N * OC);
    for (int i = 0; i < N * IC; i++) x[i] = 3 * test_randf(&s) + 0.5f;
    for (int i = 0; i < OC * IC; i++) w[i] = 0.1f * test_randf(&s);
    for (int i = 0; i < OC; i++) b[i] = test_randf(&s);
    for (int i = 0; i < IC; i++) lw[i] = 1 + 0.2f * test_randf(&s), lb[i] = 0.1f * test_randf(&s);
    gemm_pack p1, p2, pall;
    CHECK_OK(gemm_pack_weights(&p1, w, O1, IC, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&p2, w + O1 * IC, O2, IC, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&pall, w, OC, IC, GEMM_BF16X3));
    gemm_work wk = {0};
    nn_layernorm(ln, x, lw, lb, N, IC);
    int nt = carseg_get_threads();
    for (int t = 1; t <= 2; t++) {
        carseg_set_threads(t);
        /* two packs side by side, plain */
        gemm_linear2(ref, OC, ln, N, &p1, &p2, b, 0, &wk);
        for (int i = 0; i < N * OC; i++) o[i] = NAN;
        for (int i = 0; i < N * IC; i++) ln2[i] = NAN;
        gemm_linear_ln(o, OC, x, N, lw, lb, ln2, &p1, &p2, b, 0, &wk);
        CHECK_MSG(!memcmp(ln, ln2, sizeof(float) * N * IC), "threads %d: ln_out differs", t);
        CHECK_MSG(!memcmp(o, ref, sizeof(float) * N * OC), "threads %d: linear2 + ln differs", t);
        /* one pack, GELU; then accumulate */
        gemm_linear(ref, OC, ln, N, &pall, b, NN_GELU, &wk);
        gemm_linear_ln(o, OC, x, N, lw, lb, ln2, &pall, NULL, b, NN_GELU, &wk);
        CHECK_MSG(!memcmp(o, ref, sizeof(float) * N * OC), "threads %d: linear + ln differs", t);
        gemm_linear(ref, OC, ln, N, &pall, b, NN_ACCUMULATE, &wk);
        gemm_linear_ln(o, OC, x, N, lw, lb, ln2, &pall, NULL, b, NN_ACCUMULATE, &wk);
        CHECK_MSG(!memcmp(o, ref, sizeof(float) * N * OC), "threads %d: accumulate differs", t);
    }
    carseg_set_threads(nt);
    gemm_work_free(&wk);
    gemm_pack_free(&p1), gemm_pack_free(&p2), gemm_pack_free(&pall);
    free(x), free(w), free(b), free(lw), free(lb), free(ln), free(ln2), free(ref), free(o);
}

/* gemm_block (a whole block in one parallel region) = the steps one by one, bit for bit, with 1
 * and 2 threads */
TEST(amx_block_same_bits) {
    NEED_AMX();
    enum { B = 2, L = 50, C = 64, NH = 4, M = 256, N = B * L };
    unsigned s = 44;
    size_t nw = (size_t)4 * C * C + 2 * (size_t)M * C;
    float *w = malloc(sizeof(float) * nw), *bias = malloc(sizeof(float) * (5 * C + M));
    float *lnp = malloc(sizeof(float) * 4 * C), *x0 = malloc(sizeof(float) * N * C);
    float *x = malloc(sizeof(float) * N * C), *xr = malloc(sizeof(float) * N * C);
    float *ln = malloc(sizeof(float) * N * C), *qkv = malloc(sizeof(float) * N * 3 * C);
    float *att = malloc(sizeof(float) * N * C), *hid = malloc(sizeof(float) * N * M);
    for (size_t i = 0; i < nw; i++) w[i] = 0.1f * test_randf(&s);
    for (int i = 0; i < 5 * C + M; i++) bias[i] = 0.1f * test_randf(&s);
    for (int i = 0; i < 4 * C; i++) lnp[i] = (i / C) % 2 ? 0.1f * test_randf(&s) : 1 + 0.2f * test_randf(&s);
    for (int i = 0; i < N * C; i++) x0[i] = test_randf(&s);
    gemm_pack pk[5];
    CHECK_OK(gemm_pack_weights(&pk[0], w, C, C, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&pk[1], w + C * C, 2 * C, C, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&pk[2], w + 3 * C * C, C, C, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&pk[3], w + 4 * C * C, M, C, GEMM_BF16X3));
    CHECK_OK(gemm_pack_weights(&pk[4], w + 4 * C * C + M * C, C, M, GEMM_BF16X3));
    const float *in_b = bias, *out_b = bias + 3 * C, *fc_b = bias + 4 * C, *proj_b = fc_b + M;
    gemm_block_w bw = {pk, lnp, lnp + C, in_b, out_b, lnp + 2 * C, lnp + 3 * C, fc_b, proj_b};
    gemm_work wk = {0};
    int nt = carseg_get_threads();
    for (int t = 1; t <= 2; t++) {
        carseg_set_threads(t);
        memcpy(xr, x0, sizeof(float) * N * C);
        gemm_linear_ln(qkv, 3 * C, xr, N, bw.ln1_w, bw.ln1_b, ln, &pk[0], &pk[1], in_b, 0, &wk);
        REQUIRE(gemm_attention(att, NULL, NULL, qkv, B, L, C, NH, GEMM_BF16X3));
        gemm_linear(xr, C, att, N, &pk[2], out_b, NN_ACCUMULATE, &wk);
        gemm_linear_ln(hid, M, xr, N, bw.ln2_w, bw.ln2_b, ln, &pk[3], NULL, fc_b, NN_GELU, &wk);
        gemm_linear(xr, C, hid, N, &pk[4], proj_b, NN_ACCUMULATE, &wk);
        memcpy(x, x0, sizeof(float) * N * C);
        REQUIRE(gemm_block(x, ln, qkv, att, hid, B, L, C, M, NH, &bw, &wk));
        CHECK_MSG(!memcmp(x, xr, sizeof(float) * N * C), "threads %d: gemm_block differs", t);
        CHECK(memcmp(x, x0, sizeof(float) * N * C) != 0);
    }
    carseg_set_threads(nt);
    /* shapes it does not take: declined, x untouched */
    memcpy(x, x0, sizeof(float) * N * C);
    CHECK(!gemm_block(x, ln, qkv, att, hid, B, L, C, M, 8, &bw, &wk));   /* hd 8 */
    CHECK(!memcmp(x, x0, sizeof(float) * N * C));
    gemm_work_free(&wk);
    for (int i = 0; i < 5; i++) gemm_pack_free(&pk[i]);
    free(w), free(bias), free(lnp), free(x0), free(x), free(xr), free(ln), free(qkv), free(att);
    free(hid);
}

/* gemm_attention (both products on AMX) against nn_attention in float32: outputs, per-head
 * probabilities and their head average, odd and tile-straddling lengths, two sequences; the
 * result independent of the thread count; shapes it does not take are declined (returns 0). */
TEST(amx_attention_vs_fp32) {
    NEED_AMX();
    enum { B = 2, NH = 2, HD = 64, C = NH * HD };
    const int Ls[] = {1, 17, 33, 50, 97};
    unsigned s = 31;
    int nt = carseg_get_threads();
    for (size_t li = 0; li < sizeof Ls / sizeof *Ls; li++) {
        int L = Ls[li];
        size_t nq = (size_t)B * L * 3 * C, no = (size_t)B * L * C, np = (size_t)B * NH * L * L;
        float *qkv = malloc(sizeof(float) * nq), *o = malloc(sizeof(float) * no);
        float *r = malloc(sizeof(float) * no), *o2 = malloc(sizeof(float) * no);
        float *p = malloc(sizeof(float) * np), *pr = malloc(sizeof(float) * np);
        float *p2 = malloc(sizeof(float) * np);
        float *a = malloc(sizeof(float) * B * L * L), *ar = malloc(sizeof(float) * B * L * L);
        for (size_t i = 0; i < nq; i++) qkv[i] = 3.0f * test_randf(&s);
        nn_attention(r, pr, ar, qkv, B, L, C, NH, 0);
        for (int mode = GEMM_BF16X3; mode <= GEMM_BF16; mode++) {
            double tol = mode == GEMM_BF16X3 ? 1e-4 : 3e-2, m;   /* the bar; bf16 */
            carseg_set_threads(1);
            for (size_t i = 0; i < no; i++) o[i] = NAN;
            CHECK(gemm_attention(o, p, a, qkv, B, L, C, NH, mode) == 1);
            carseg_set_threads(2);
            for (size_t i = 0; i < no; i++) o2[i] = NAN;
            CHECK(gemm_attention(o2, p2, NULL, qkv, B, L, C, NH, mode) == 1);
            carseg_set_threads(nt);
            CHECK_MSG(!memcmp(o, o2, sizeof(float) * no) && !memcmp(p, p2, sizeof(float) * np),
                      "L %d mode %d: 1 and 2 threads differ", L, mode);
            /* without probs (the forward's case): the same outputs */
            CHECK(gemm_attention(o2, NULL, NULL, qkv, B, L, C, NH, mode) == 1);
            CHECK_MSG(!memcmp(o, o2, sizeof(float) * no), "L %d mode %d: probs NULL differs", L, mode);
            double d = test_max_abs_diff(o, r, no, &m, NULL);
            CHECK_MSG(d <= tol * m, "L %d mode %d: out max|diff| %.2e vs max|ref| %.2e", L, mode, d, m);
            d = test_max_abs_diff(p, pr, np, &m, NULL);
            CHECK_MSG(d <= tol * m, "L %d mode %d: probs max|diff| %.2e vs max|ref| %.2e", L, mode, d, m);
            d = test_max_abs_diff(a, ar, (size_t)B * L * L, &m, NULL);
            CHECK_MSG(d <= tol * m, "L %d mode %d: avg max|diff| %.2e vs max|ref| %.2e", L, mode, d, m);
            if (getenv("CARSEG_VERBOSE"))
                fprintf(stderr, "  L %d mode %d: out %.2e\n", L, mode, test_max_abs_diff(o, r, no, &m, NULL) / m);
        }
        free(qkv), free(o), free(r), free(o2), free(p), free(pr), free(p2), free(a), free(ar);
    }
    float dummy[3 * 40 * 2] = {0}, out[40 * 2], pr[2 * 2 * 2];
    CHECK(gemm_attention(out, pr, NULL, dummy, 1, 2, 40, 2, GEMM_BF16X3) == 0);   /* hd 20 */
}

// ---------------------------------------------------------------------------------------------
// the image tower

/* tests/fixtures.h: missing -> skip, a file that does not load -> FAIL */
static clip_model *fixture_model(void) { return fixture_clip("fixtures/clip_sg/model_f16.safetensors"); }

static double max_rel(const float *got, const float *ref, size_t n) {
    double mx = 0, d = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i])), d = fmax(d, fabs(got[i] - ref[i]));
    return mx > 0 ? d / mx : d;
}

/* the bar for bf16x3 (as the float32 parity tests); bf16's own */
#define RTOL_BF16X3 1e-4
#define RTOL_BF16 1e-2

/* image features of the three upstream images (expected.json) and the CaR trunk fixtures */
static void tower_parity(int mode, double rtol) {
    NEED_AMX();
    clip_model *m = fixture_model();
    const char *ej = shared_path("fixtures/clip_sg/expected.json");
    if (!m || !ej) { clip_free(m); SKIP("fixtures/clip_sg missing"); }
    CHECK_OK(clip_set_precision(m, mode));
    CHECK(m->precision == mode && clip_packed_bytes(m) > 0);
    json *j = json_parse_file(ej);
    REQUIRE(j);
    static const char *paths[] = {"data/photos/chelsea.png",
                                  "data/voc_mini/VOCdevkit/VOC2012/JPEGImages/2011_000025.jpg",
                                  "data/photos/camera.png"};
    int E = m->cfg.embed, S = m->cfg.v_patch * m->cfg.v_grid;
    const json *feats = json_get(j, "image_features");
    REQUIRE(feats && feats->len == 3);
    float *x = malloc(sizeof(float) * 3 * S * S), *got = malloc(sizeof(float) * 3 * E);
    float *ref = malloc(sizeof(float) * 3 * E);
    for (int i = 0; i < 3; i++) {
        image_u8 im;
        CHECK_OK(image_load_rgb(shared_path(paths[i]), &im));
        CHECK_OK(clip_preprocess(&im, S, x));
        CHECK_OK(clip_encode_image(m, x, S, S, 0, got + (size_t)i * E));
        image_free(&im);
        for (int k = 0; k < E; k++) ref[i * E + k] = (float)json_at(json_at(feats, i), k)->num;
    }
    char what[200];
    snprintf(what, sizeof what, "%s image_features", mode == GEMM_BF16X3 ? "bf16x3" : "bf16");
    CHECK_CLOSE(what, got, ref, (size_t)3 * E, rtol, 0);
    if (getenv("CARSEG_VERBOSE"))
        fprintf(stderr, "  %s: max|diff|/max|ref| = %.2e\n", what, max_rel(got, ref, (size_t)3 * E));
    free(x), free(got), free(ref);
    json_free(j);
    /* the CaR generator trunk (resized positional embedding, L-1 blocks, attentions) */
    static const char *cases[] = {"chelsea_voc", "coffee300_voc", "astronaut_cocolike"};
    for (int c = 0; c < 3; c++) {
        char p[300];
        snprintf(p, sizeof p, "fixtures/car/%s/iter01/gen_input.npy", cases[c]);
        const char *ip = shared_path(p);
        if (!ip || !file_exists(ip)) continue;
        float *in, *r;
        int nd;
        int64_t xs[8], sh[8];
        CHECK_OK(npy_read_f32(ip, &in, &nd, xs));
        int H = (int)xs[nd - 2], W = (int)xs[nd - 1], P = m->cfg.v_patch;
        int L = 1 + (H / P) * (W / P), C = m->cfg.v_width, nb = m->cfg.v_layers - 1;
        float *tok = malloc(sizeof(float) * L * C), *att = malloc(sizeof(float) * nb * L * L);
        CHECK_OK(clip_image_trunk(m, in, H, W, nb, tok, att));
        snprintf(p, sizeof p, "fixtures/car/%s/iter01/gen_trunk_out.npy", cases[c]);
        CHECK_OK(npy_read_f32(shared_path(p), &r, &nd, sh));
        snprintf(what, sizeof what, "%s %s gen_trunk_out", mode == GEMM_BF16X3 ? "bf16x3" : "bf16",
                 cases[c]);
        CHECK_CLOSE(what, tok, r, (size_t)L * C, rtol, 0);
        if (getenv("CARSEG_VERBOSE"))
            fprintf(stderr, "  %s: max|diff|/max|ref| = %.2e\n", what, max_rel(tok, r, (size_t)L * C));
        free(r);
        snprintf(p, sizeof p, "fixtures/car/%s/iter01/gen_trunk_attn.npy", cases[c]);
        if (file_exists(shared_path(p))) {
            CHECK_OK(npy_read_f32(shared_path(p), &r, &nd, sh));
            snprintf(what, sizeof what, "%s %s gen_trunk_attn",
                     mode == GEMM_BF16X3 ? "bf16x3" : "bf16", cases[c]);
            CHECK_CLOSE(what, att, r, (size_t)nb * L * L, rtol, 0);
            if (getenv("CARSEG_VERBOSE"))
                fprintf(stderr, "  %s: max|diff|/max|ref| = %.2e\n", what,
                        max_rel(att, r, (size_t)nb * L * L));
            free(r);
        }
        free(in), free(tok), free(att);
    }
    clip_free(m);
}

TEST(amx_tower_parity_bf16x3) { tower_parity(GEMM_BF16X3, RTOL_BF16X3); }
TEST(amx_tower_parity_bf16) { tower_parity(GEMM_BF16, RTOL_BF16); }

/* the default stays float32 and bit for bit the same after switching modes back and forth; the
 * text tower is never affected */
TEST(amx_fp32_default_unchanged) {
    clip_model *m = fixture_model();
    if (!m) SKIP("fixtures/clip_sg missing");
    CHECK(m->precision == GEMM_FP32 && carseg_clip_get_precision(m) == CARSEG_PRECISION_FP32);
    CHECK(clip_packed_bytes(m) == 0);
    int S = m->cfg.v_patch * m->cfg.v_grid, E = m->cfg.embed;
    float *x = malloc(sizeof(float) * 3 * S * S), *a = malloc(sizeof(float) * E);
    float *b = malloc(sizeof(float) * E), *c = malloc(sizeof(float) * E);
    unsigned s = 1;
    for (int i = 0; i < 3 * S * S; i++) x[i] = test_randf(&s);
    CHECK_OK(clip_encode_image(m, x, S, S, 0, a));
    /* two prompts, the largest id last (the EOT position is the argmax) */
    int ctx = m->cfg.t_ctx;
    int32_t *tk = calloc((size_t)2 * ctx, sizeof(int32_t));
    tk[0] = 1, tk[1] = 5, tk[2] = 7, tk[3] = m->cfg.t_vocab - 1;
    tk[ctx] = 1, tk[ctx + 1] = m->cfg.t_vocab - 1;
    float *t1 = malloc(sizeof(float) * 2 * E), *t2 = malloc(sizeof(float) * 2 * E);
    CHECK_OK(clip_encode_text(m, tk, 2, t1));
    if (gemm_amx_check() == CARSEG_OK) {
        CHECK_OK(carseg_clip_set_precision(m, CARSEG_PRECISION_BF16));
        CHECK_OK(clip_encode_image(m, x, S, S, 0, c));
        CHECK_MSG(memcmp(a, c, sizeof(float) * E) != 0, "bf16 gave the float32 result bit for bit");
        CHECK_OK(clip_encode_text(m, tk, 2, t2));
        CHECK_MSG(!memcmp(t1, t2, sizeof(float) * 2 * E), "the text tower changed");
        CHECK_OK(carseg_clip_set_precision(m, CARSEG_PRECISION_BF16X3));
        CHECK_OK(carseg_clip_set_precision(m, CARSEG_PRECISION_FP32));
        CHECK(clip_packed_bytes(m) == 0);
    }
    CHECK_OK(clip_encode_image(m, x, S, S, 0, b));
    CHECK_MSG(!memcmp(a, b, sizeof(float) * E), "float32 not bit-identical after a mode switch");
    free(x), free(a), free(b), free(c), free(t1), free(t2), free(tk);
    clip_free(m);
}

/* bf16x3 planes that hold a matrix losslessly (fp16 values) move into the matrix's memory and
 * give the same products; anything that would lose a bit stays apart (runs everywhere) */
TEST(amx_pack_move_lossless) {
    enum { OC = 32, IC = 64 };
    float *w = malloc(sizeof(float) * OC * IC), *back = malloc(sizeof(float) * OC * IC);
    float *mem = malloc(sizeof(float) * OC * IC), *x = malloc(sizeof(float) * 5 * IC);
    float o1[5 * OC], o2[5 * OC];
    unsigned s = 7;
    for (int i = 0; i < OC * IC; i++) w[i] = nn_round_fp16(test_randf(&s) * 0.1f);
    w[3] = -0.0f, w[4] = 0.0f, w[5] = nn_round_fp16(6e-8f), w[6] = 65504.0f, w[7] = -65504.0f;
    for (int i = 0; i < 5 * IC; i++) x[i] = test_randf(&s);
    gemm_pack p, q;
    CHECK_OK(gemm_pack_weights(&p, w, OC, IC, GEMM_BF16X3));
    CHECK(gemm_pack_lossless(&p, w));
    gemm_unpack_weights(&p, back);
    CHECK_MSG(!memcmp(back, w, sizeof(float) * OC * IC), "hi + lo is not the matrix bit for bit");
    gemm_linear_ref(o1, OC, x, 5, &p, NULL, 0);
    memcpy(mem, w, sizeof(float) * OC * IC);
    CHECK_OK(gemm_pack_weights(&q, mem, OC, IC, GEMM_BF16X3));
    gemm_pack_move(&q, mem);
    CHECK(q.moved && (void *)q.hi == (void *)mem && gemm_pack_bytes(&q) == sizeof(float) * OC * IC);
    gemm_linear_ref(o2, OC, x, 5, &q, NULL, 0);
    CHECK_MSG(!memcmp(o1, o2, sizeof o1), "the moved planes give other products");
    gemm_unpack_weights(&q, back);
    CHECK_MSG(!memcmp(back, w, sizeof(float) * OC * IC), "unpacking the moved planes");
    CHECK(!gemm_pack_lossless(&q, back));   /* already moved */
    gemm_pack_free(&q);                     /* borrowed: frees nothing (ASan: no bad free) */
    gemm_pack_free(&p);
    /* one value that hi + lo cannot hold (more than 8 significant bits left after hi), a float32
     * of 24 significant bits, a denormal (the bf16 conversion flushes it): kept apart */
    float keep[3] = {1.0f + 0x1p-9f + 0x1p-20f, 1.0f / 3.0f, 0x1p-140f};
    for (int k = 0; k < 3; k++) {
        float v = w[100];
        w[100] = keep[k];
        CHECK_OK(gemm_pack_weights(&p, w, OC, IC, GEMM_BF16X3));
        CHECK_MSG(!gemm_pack_lossless(&p, w), "value %d taken as lossless", k);
        gemm_pack_free(&p);
        w[100] = v;
    }
    /* padded shapes and bf16 never move */
    CHECK_OK(gemm_pack_weights(&p, w, OC - 8, IC, GEMM_BF16X3));
    CHECK(!gemm_pack_lossless(&p, w));
    gemm_pack_free(&p);
    CHECK_OK(gemm_pack_weights(&p, w, OC, IC - 16, GEMM_BF16X3));
    CHECK(!gemm_pack_lossless(&p, w));
    gemm_pack_free(&p);
    CHECK_OK(gemm_pack_weights(&p, w, OC, IC, GEMM_BF16));
    CHECK(!gemm_pack_lossless(&p, w));
    gemm_pack_free(&p);
    free(w), free(back), free(mem), free(x);
}

/* a model that owns its fp16 tensors keeps the bf16x3 planes in the float32 matrices' memory:
 * the same features as packs kept apart (a model on a borrowed wfile), no memory beyond the
 * last block's and the patch embedding's packs, and float32 restored bit for bit */
TEST(amx_bf16x3_weights_in_place) {
    NEED_AMX();
    const char *path = shared_path("fixtures/clip_sg/model_f16.safetensors");
    if (!path || !file_exists(path)) SKIP("fixtures/clip_sg missing");
    clip_model *m = NULL, *o = NULL;
    wfile *wf = NULL;
    CHECK_OK(clip_load(path, &m));
    CHECK_OK(wfile_open(path, &wf));
    CHECK_OK(clip_from_wfile(wf, &o));
    REQUIRE(m && o);
    const clip_config *c = &m->cfg;
    int S = c->v_patch * c->v_grid, E = c->embed, C = c->v_width, M = c->v_mlp;
    size_t nfc = (size_t)M * C;
    float *fc0 = malloc(sizeof(float) * nfc), *x = malloc(sizeof(float) * 3 * S * S);
    float *a = malloc(sizeof(float) * E), *b = malloc(sizeof(float) * E);
    float *a32 = malloc(sizeof(float) * E), *b32 = malloc(sizeof(float) * E);
    memcpy(fc0, m->v_blocks[0].fc_w, sizeof(float) * nfc);
    unsigned s = 3;
    for (int i = 0; i < 3 * S * S; i++) x[i] = test_randf(&s);
    CHECK_OK(clip_encode_image(o, x, S, S, 0, b32));
    CHECK_OK(clip_set_precision(m, GEMM_BF16X3));
    CHECK_OK(clip_set_precision(o, GEMM_BF16X3));
    for (int l = 0; l < c->v_layers; l++)
        for (int i = 0; i < 5; i++)
            CHECK_MSG(m->v_blocks[l].pk[i].moved == (l + 1 < c->v_layers) && !o->v_blocks[l].pk[i].moved,
                      "block %d pack %d: moved %d", l, i, m->v_blocks[l].pk[i].moved);
    size_t last = 0;
    for (int i = 0; i < 5; i++) last += gemm_pack_bytes(&m->v_blocks[c->v_layers - 1].pk[i]);
    CHECK(clip_packed_bytes(m) == gemm_pack_bytes(&m->packs[0]) + last);
    CHECK(clip_packed_bytes(o) > clip_packed_bytes(m));
    CHECK_OK(clip_encode_image(m, x, S, S, 0, a));
    CHECK_OK(clip_encode_image(o, x, S, S, 0, b));
    CHECK_MSG(!memcmp(a, b, sizeof(float) * E), "moved planes: other features");
    CHECK_MSG(memcmp(a, b32, sizeof(float) * E) != 0, "bf16x3 gave the float32 features");
    CHECK_OK(clip_set_precision(m, GEMM_BF16));   /* via the restored float32 weights */
    CHECK_MSG(!memcmp(m->v_blocks[0].fc_w, fc0, sizeof(float) * nfc), "c_fc not restored");
    CHECK_OK(clip_set_precision(m, GEMM_BF16X3));
    CHECK_OK(clip_set_precision(m, GEMM_FP32));
    CHECK(clip_packed_bytes(m) == 0);
    CHECK_MSG(!memcmp(m->v_blocks[0].fc_w, fc0, sizeof(float) * nfc), "c_fc not restored");
    CHECK_OK(clip_encode_image(m, x, S, S, 0, a32));
    CHECK_MSG(!memcmp(a32, b32, sizeof(float) * E), "float32 features after the round trip");
    free(fc0), free(x), free(a), free(b), free(a32), free(b32);
    clip_free(m);
    clip_free(o);
    wfile_close(wf);
}

/* asking for AMX where it is unavailable: a clear error, the model untouched */
TEST(amx_unavailable_error) {
    clip_model *m = fixture_model();
    if (!m) SKIP("fixtures/clip_sg missing");
    setenv("CARSEG_NO_AMX", "1", 1);
    carseg_status st = carseg_clip_set_precision(m, CARSEG_PRECISION_BF16X3);
    unsetenv("CARSEG_NO_AMX");
    CHECK(st == CARSEG_EINVAL);
    CHECK_MSG(strstr(carseg_last_error(), "AMX") != NULL, "message: %s", carseg_last_error());
    CHECK(m->precision == GEMM_FP32 && m->packs == NULL);
    CHECK(carseg_clip_set_precision(m, (carseg_precision)7) == CARSEG_EINVAL);
    carseg_precision p;
    CHECK_OK(carseg_precision_parse("bf16x3", &p));
    CHECK(p == CARSEG_PRECISION_BF16X3);
    CHECK(carseg_precision_parse("fp16", &p) == CARSEG_EINVAL);
    CHECK(!strcmp(carseg_precision_name(CARSEG_PRECISION_BF16), "bf16"));
    clip_free(m);
}

/* auto: bf16x3 where AMX runs, float32 (not an error) where it does not */
TEST(amx_precision_auto) {
    carseg_precision p;
    CHECK_OK(carseg_precision_parse("auto", &p));
    CHECK(p == CARSEG_PRECISION_AUTO && !strcmp(carseg_precision_name(p), "auto"));
    CHECK(carseg_precision_parse("avto", &p) == CARSEG_EINVAL);
    CHECK_MSG(strstr(carseg_last_error(), "auto") != NULL, "message: %s", carseg_last_error());
    clip_model *m = fixture_model();
    if (!m) SKIP("fixtures/clip_sg missing");
    setenv("CARSEG_NO_AMX", "1", 1);
    carseg_status st = carseg_clip_set_precision(m, CARSEG_PRECISION_AUTO);
    unsetenv("CARSEG_NO_AMX");
    CHECK_OK(st);
    CHECK(carseg_clip_get_precision(m) == CARSEG_PRECISION_FP32 && m->packs == NULL);
    CHECK_OK(carseg_clip_set_precision(m, CARSEG_PRECISION_AUTO));
    CHECK(carseg_clip_get_precision(m) ==
          (gemm_amx_check() == CARSEG_OK ? CARSEG_PRECISION_BF16X3 : CARSEG_PRECISION_FP32));
    clip_free(m);
}

/* CLI: --precision on `carseg embed` (the same option and helper as classify, segment, eval):
 * bf16x3 meets the parity bar end to end; an unknown value exits 2; AMX unavailable exits 1
 * with the reason */
TEST(amx_cli_precision) {
    const char *bin = getenv("CARSEG_BIN");
    const char *ej = shared_path("fixtures/clip_sg/expected.json");
    const char *model = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *img = shared_path("data/photos/chelsea.png");
    if (!bin || !ej || !file_exists(model) || !file_exists(img)) SKIP("CARSEG_BIN or fixtures missing");
    char cmd[4096], *out = NULL;
    int rc;
    snprintf(cmd, sizeof cmd, "'%s' embed --model '%s' --image '%s' --precision fp64 2>&1", bin,
             model, img);
    CHECK((out = test_capture(cmd, &rc), rc) == 2);
    CHECK_MSG(out && strstr(out, "--precision"), "output: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "CARSEG_NO_AMX=1 '%s' embed --model '%s' --image '%s' "
             "--precision bf16x3 2>&1", bin, model, img);
    CHECK((out = test_capture(cmd, &rc), rc) == 1);
    CHECK_MSG(out && strstr(out, "carseg: error:") && strstr(out, "AMX"), "output: %s",
              out ? out : "");
    free(out);
    if (gemm_amx_check() != CARSEG_OK) SKIP("no AMX here: the bf16x3 run is skipped");
    snprintf(cmd, sizeof cmd, "'%s' embed --model '%s' --image '%s' --precision bf16x3", bin,
             model, img);
    REQUIRE((out = test_capture(cmd, &rc), rc) == 0 && out);
    char err[128];
    json *o = json_parse(out, strlen(out), err, sizeof err), *j = json_parse_file(ej);
    REQUIRE(o && j);
    const json *gi = json_at(json_get(o, "image"), 0), *ri = json_at(json_get(j, "image_features"), 0);
    REQUIRE(gi && ri && gi->len == ri->len);
    float *g = malloc(sizeof(float) * gi->len), *r = malloc(sizeof(float) * gi->len);
    for (size_t i = 0; i < gi->len; i++) g[i] = (float)json_at(gi, i)->num, r[i] = (float)json_at(ri, i)->num;
    CHECK_CLOSE("embed --precision bf16x3", g, r, gi->len, RTOL_BF16X3, 0);
    free(g), free(r), free(out);
    json_free(o), json_free(j);
}

/* The blocking paths of gemm_linear at real sizes, against float32 OpenBLAS: outer k chunks
 * (257 rows, IC 2048), row groups (769 rows x 3072 outputs: the partial sums would not fit) and
 * all of A at once (257 rows, IC 1024: 1.09 MB), with the residual and GELU epilogues; bound
 * 2^-15 sum|x w| (+ float32 rounding). */
TEST(amx_blocking_paths) {
    NEED_AMX();
    const shape sh[] = {{257, 2048, 64}, {769, 768, 3072}, {257, 1024, 96}};
    unsigned s = 33;
    for (int si = 0; si < 3; si++) {
        int N = sh[si].N, IC = sh[si].IC, OC = sh[si].OC;
        float *x = malloc(sizeof(float) * N * IC), *w = malloc(sizeof(float) * OC * IC);
        float *ax = malloc(sizeof(float) * N * IC), *aw = malloc(sizeof(float) * OC * IC);
        float *b = malloc(sizeof(float) * OC), *got = malloc(sizeof(float) * N * OC);
        float *ref = malloc(sizeof(float) * N * OC), *mag = malloc(sizeof(float) * N * OC);
        for (int i = 0; i < N * IC; i++) x[i] = test_randf(&s), ax[i] = fabsf(x[i]);
        for (int i = 0; i < OC * IC; i++) w[i] = 0.05f * test_randf(&s), aw[i] = fabsf(w[i]);
        for (int i = 0; i < OC; i++) b[i] = test_randf(&s);
        for (int i = 0; i < N * OC; i++) got[i] = ref[i] = test_randf(&s);
        int flags = si != 1 ? NN_ACCUMULATE : NN_GELU;
        nn_linear_ex(ref, x, w, b, N, IC, OC, flags);
        nn_linear(mag, ax, aw, NULL, N, IC, OC);
        gemm_pack p;
        CHECK_OK(gemm_pack_weights(&p, w, OC, IC, GEMM_BF16X3));
        gemm_linear(got, OC, x, N, &p, b, flags, NULL);
        int bad = 0;
        for (int i = 0; i < N * OC; i++)
            bad += !(fabsf(got[i] - ref[i]) <= ldexp(1, -15) * mag[i] + 1e-6f * (fabsf(ref[i]) + 1));
        CHECK_MSG(bad == 0, "N %d IC %d OC %d: %d outputs outside the bound", N, IC, OC, bad);
        gemm_pack_free(&p);
        free(x), free(w), free(ax), free(aw), free(b), free(got), free(ref), free(mag);
    }
}

/* The image and trunk cases of a gen_clip_fixtures.py manifest (native, non-native and
 * non-square grids, L and L-1 blocks, trunk tokens + attention) in both AMX modes. Returns the
 * number of cases checked. */
static int amx_manifest(const char *dir) {
    char p[1200];
    snprintf(p, sizeof p, "%s/manifest.json", dir);
    json *man = json_parse_file(p);
    if (!man) { CHECK_MSG(0, "%s", carseg_last_error()); return 0; }
    snprintf(p, sizeof p, "%s/model_f16.safetensors", dir);
    clip_model *m = NULL;
    CHECK_OK(clip_load(p, &m));
    const json *cases = json_get(man, "cases");
    int done = 0, E = m ? m->cfg.embed : 0, C = m ? m->cfg.v_width : 0;
    for (int mode = GEMM_BF16X3; m && mode <= GEMM_BF16; mode++) {
        CHECK_OK(clip_set_precision(m, mode));
        double rtol = mode == GEMM_BF16X3 ? RTOL_BF16X3 : RTOL_BF16, worst = 0;
        for (size_t i = 0; cases && i < cases->len; i++) {
            const json *c = json_at(cases, i);
            const char *kind = json_str(c, "kind", "");
            if (!strcmp(kind, "text")) continue;
            int nd;
            int64_t sh[8];
            float *x = NULL, *ref = NULL;
            snprintf(p, sizeof p, "%s/%s", dir, json_str(c, "input", ""));
            CHECK_OK(npy_read_f32(p, &x, &nd, sh));
            snprintf(p, sizeof p, "%s/%s", dir, json_str(c, "expected", ""));
            CHECK_OK(npy_read_f32(p, &ref, &nd, sh));
            if (!x || !ref) { free(x), free(ref); continue; }
            int H = (int)json_num(c, "H", 0), W = (int)json_num(c, "W", 0);
            int nb = (int)json_num(c, "n_blocks", 0), P = m->cfg.v_patch, L = 1 + (H / P) * (W / P);
            size_t n = !strcmp(kind, "image") ? (size_t)E : (size_t)L * C;
            float *got = malloc(sizeof(float) * n);
            char what[200];
            snprintf(what, sizeof what, "%s %s %s %dx%d %d blocks", json_str(man, "shape", ""),
                     mode == GEMM_BF16X3 ? "bf16x3" : "bf16", kind, W, H, nb);
            if (!strcmp(kind, "image")) CHECK_OK(clip_encode_image(m, x, H, W, nb, got));
            else CHECK_OK(clip_image_trunk(m, x, H, W, nb, got, NULL));
            CHECK_CLOSE(what, got, ref, n, rtol, 0);
            worst = fmax(worst, max_rel(got, ref, n));
            free(x), free(ref), free(got);
            done++;
        }
        if (getenv("CARSEG_VERBOSE"))
            fprintf(stderr, "  %s %s: worst max|diff|/max|ref| over the image cases = %.2e\n",
                    json_str(man, "shape", ""), mode == GEMM_BF16X3 ? "bf16x3" : "bf16", worst);
    }
    clip_free(m);
    json_free(man);
    return done;
}

TEST(amx_generated_cases) {
    NEED_AMX();
    if (!file_exists("tests/data/clip/manifest.json")) SKIP("tests/data/clip missing (run from the repo root)");
    CHECK(amx_manifest("tests/data/clip") >= 18);
}

/* Full-size random ViT-B/16 / ViT-L/14 (CARSEG_HEAVY=B16,L14, as clip_full_size_parity; the
 * fixtures are generated into the test's temp dir: ~300 MB / ~850 MB, 35-75 s each). */
TEST(amx_full_size_parity) {
    const char *why = heavy_skip_reason();
    if (why) SKIP("%s", why);
    NEED_AMX();
    for (int k = 0; k < 2; k++) {
        char dir[800];
        int r = heavy_fixture(k, dir, sizeof dir);
        REQUIRE(r >= 0);
        if (r) CHECK(amx_manifest(dir) >= 4);
    }
}
