/* test_nn.c — the layer kernels against naive twins (nn.c). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm_f32.h"
#include "nn.h"
#include "util.h"

static float *rand_buf(size_t n, unsigned *s, float scale) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = scale * test_randf(s);
    return p;
}

TEST(nn_linear_matches_naive) {
    unsigned s = 1;
    /* odd sizes, both split directions (N >= M and M > N) and a tiny one */
    int shapes[][3] = {{97, 256, 700}, {333, 67, 45}, {3, 5, 7}, {1, 128, 48}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int N = shapes[k][0], IC = shapes[k][1], OC = shapes[k][2];
        float *x = rand_buf((size_t)N * IC, &s, 1), *w = rand_buf((size_t)OC * IC, &s, 0.1f);
        float *b = rand_buf(OC, &s, 1);
        float *o1 = malloc(sizeof(float) * N * OC), *o2 = malloc(sizeof(float) * N * OC);
        nn_linear(o1, x, w, b, N, IC, OC);
        nn_linear_naive(o2, x, w, b, N, IC, OC);
        CHECK_CLOSE("linear", o1, o2, (size_t)N * OC, 1e-5, 0);
        nn_linear(o1, x, w, NULL, N, IC, OC);
        nn_linear_naive(o2, x, w, NULL, N, IC, OC);
        CHECK_CLOSE("linear nobias", o1, o2, (size_t)N * OC, 1e-5, 0);
        free(x), free(w), free(b), free(o1), free(o2);
    }
}

TEST(nn_sgemm_transposes) {
    unsigned s = 2;
    int M = 70, N = 90, K = 33;
    float *A = rand_buf((size_t)M * K, &s, 1), *B = rand_buf((size_t)K * N, &s, 1);
    float *C = calloc((size_t)M * N, 4), *R = calloc((size_t)M * N, 4);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < K; k++) acc += (double)A[i * K + k] * B[k * N + j];
            R[i * N + j] = (float)acc;
        }
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            /* build the transposed copies when asked */
            float *At = malloc(sizeof(float) * M * K), *Bt = malloc(sizeof(float) * K * N);
            for (int i = 0; i < M; i++)
                for (int k = 0; k < K; k++) At[ta ? k * M + i : i * K + k] = A[i * K + k];
            for (int k = 0; k < K; k++)
                for (int j = 0; j < N; j++) Bt[tb ? j * K + k : k * N + j] = B[k * N + j];
            memset(C, 0, sizeof(float) * M * N);
            nn_sgemm(ta, tb, M, N, K, 1.0f, At, ta ? M : K, Bt, tb ? K : N, 0.0f, C, N);
            if (!CHECK_CLOSE("sgemm", C, R, (size_t)M * N, 1e-5, 0)) fprintf(stderr, "  ta=%d tb=%d\n", ta, tb);
            free(At), free(Bt);
        }
    free(A), free(B), free(C), free(R);
}

TEST(nn_expf_accuracy) {
    double worst = 0;
    for (float x = -87.0f; x < 88.0f; x += 0.0137f) {
        double r = exp((double)x), e = fabs(nn_expf(x) - r) / r;
        if (e > worst) worst = e;
    }
    CHECK_MSG(worst < 4e-7, "worst relative error %g", worst);
    CHECK(nn_expf(-1000.0f) < 1e-37f && nn_expf(-1000.0f) >= 0);
}

TEST(nn_round_fp16) {
    CHECK(nn_round_fp16(1.0f) == 1.0f);
    CHECK(nn_round_fp16(65504.0f) == 65504.0f);
    CHECK(isinf(nn_round_fp16(65520.0f)));
    CHECK(nn_round_fp16(65519.0f) == 65504.0f);
    CHECK(nn_round_fp16(1.0f + 0x1p-11f) == 1.0f);                /* tie -> even */
    CHECK(nn_round_fp16(1.0f + 3 * 0x1p-11f) == 1.0f + 0x1p-9f);  /* tie -> even (up) */
    CHECK(nn_round_fp16(1.0f + 0x1p-11f + 0x1p-20f) == 1.0f + 0x1p-10f);
    CHECK(nn_round_fp16(0x1p-25f) == 0.0f);                       /* tie to even zero */
    CHECK(nn_round_fp16(0x1.8p-25f) == 0x1p-24f);
    CHECK(nn_round_fp16(-0x1.8p-24f) == -0x1p-23f);               /* subnormal tie -> even */
    CHECK(nn_round_fp16(0.1f) == 0.0999755859375f);
}

TEST(nn_layernorm_softmax_gelu) {
    unsigned s = 3;
    int N = 5, C = 77;
    float *x = rand_buf((size_t)N * C, &s, 3), *w = rand_buf(C, &s, 1), *b = rand_buf(C, &s, 1);
    float *o = malloc(sizeof(float) * N * C);
    nn_layernorm(o, x, w, b, N, C);
    for (int i = 0; i < N; i++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[i * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[i * C + c] - m) * (x[i * C + c] - m);
        v /= C;
        for (int c = 0; c < C; c++) {
            double r = (x[i * C + c] - m) / sqrt(v + 1e-5) * w[c] + b[c];
            CHECK_NEAR(o[i * C + c], r, 1e-5);
        }
    }
    memcpy(o, x, sizeof(float) * N * C);
    nn_softmax(o, N, C);
    for (int i = 0; i < N; i++) {
        double mx = -1e30, sum = 0;
        for (int c = 0; c < C; c++) mx = fmax(mx, x[i * C + c]);
        for (int c = 0; c < C; c++) sum += exp(x[i * C + c] - mx);
        for (int c = 0; c < C; c++) CHECK_NEAR(o[i * C + c], exp(x[i * C + c] - mx) / sum, 1e-7);
    }
    memcpy(o, x, sizeof(float) * N * C);
    nn_quickgelu(o, (size_t)N * C);
    for (int i = 0; i < N * C; i++) CHECK_NEAR(o[i], x[i] / (1 + exp(-1.702 * x[i])), 1e-6);
    nn_l2norm(o, N, C);
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += o[i * C + c] * o[i * C + c];
        CHECK_NEAR(ss, 1.0, 1e-5);
    }
    free(x), free(w), free(b), free(o);
}

/* naive multi-head attention on qkv (B, L, 3C) */
static void attention_naive(float *out, float *avg, const float *qkv, int B, int L, int C, int NH,
                            int causal) {
    int hd = C / NH;
    double *p = malloc(sizeof(double) * L);
    memset(avg, 0, sizeof(float) * B * L * L);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < L; i++) {
                const float *q = qkv + ((size_t)b * L + i) * 3 * C + h * hd;
                double mx = -1e300, sum = 0;
                for (int j = 0; j < L; j++) {
                    const float *k = qkv + ((size_t)b * L + j) * 3 * C + C + h * hd;
                    double d = 0;
                    for (int t = 0; t < hd; t++) d += (double)q[t] * k[t];
                    p[j] = causal && j > i ? -INFINITY : d / sqrt((double)hd);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < L; j++) sum += (p[j] = exp(p[j] - mx));
                for (int j = 0; j < L; j++) p[j] /= sum, avg[((size_t)b * L + i) * L + j] += (float)(p[j] / NH);
                for (int t = 0; t < hd; t++) {
                    double acc = 0;
                    for (int j = 0; j < L; j++)
                        acc += p[j] * qkv[((size_t)b * L + j) * 3 * C + 2 * C + h * hd + t];
                    out[((size_t)b * L + i) * C + h * hd + t] = (float)acc;
                }
            }
    free(p);
}

TEST(nn_attention_matches_naive) {
    unsigned s = 4;
    int cfg[][5] = {{2, 13, 128, 2, 0}, {3, 9, 64, 1, 1}, {1, 50, 192, 3, 1}};
    for (size_t k = 0; k < sizeof cfg / sizeof *cfg; k++) {
        int B = cfg[k][0], L = cfg[k][1], C = cfg[k][2], NH = cfg[k][3], causal = cfg[k][4];
        float *qkv = rand_buf((size_t)B * L * 3 * C, &s, 0.5f);
        float *o1 = malloc(sizeof(float) * B * L * C), *o2 = malloc(sizeof(float) * B * L * C);
        float *a1 = malloc(sizeof(float) * B * L * L), *a2 = malloc(sizeof(float) * B * L * L);
        float *probs = malloc(sizeof(float) * B * NH * L * L);
        nn_attention(o1, probs, a1, qkv, B, L, C, NH, causal);
        attention_naive(o2, a2, qkv, B, L, C, NH, causal);
        CHECK_CLOSE("attention out", o1, o2, (size_t)B * L * C, 1e-5, 0);
        CHECK_CLOSE("attention avg", a1, a2, (size_t)B * L * L, 1e-5, 0);
        free(qkv), free(o1), free(o2), free(a1), free(a2), free(probs);
    }
}

TEST(nn_linear_fused_epilogues) {
    unsigned s = 5;
    int shapes[][3] = {{97, 256, 700}, {300, 40, 24}, {2, 9, 5}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int N = shapes[k][0], IC = shapes[k][1], OC = shapes[k][2];
        float *x = rand_buf((size_t)N * IC, &s, 1), *w = rand_buf((size_t)OC * IC, &s, 0.1f);
        float *b = rand_buf(OC, &s, 1), *res = rand_buf((size_t)N * OC, &s, 1);
        float *o1 = malloc(sizeof(float) * N * OC), *o2 = malloc(sizeof(float) * N * OC);
        /* residual: o1 = res + x w^T + b */
        memcpy(o1, res, sizeof(float) * N * OC);
        nn_linear_ex(o1, x, w, b, N, IC, OC, NN_ACCUMULATE);
        nn_linear_naive(o2, x, w, b, N, IC, OC);
        for (int i = 0; i < N * OC; i++) o2[i] += res[i];
        CHECK_CLOSE("linear accumulate", o1, o2, (size_t)N * OC, 1e-5, 0);
        /* GELU epilogue */
        nn_linear_ex(o1, x, w, b, N, IC, OC, NN_GELU);
        nn_linear_naive(o2, x, w, b, N, IC, OC);
        for (int i = 0; i < N * OC; i++) o2[i] = (float)(o2[i] / (1 + exp(-1.702 * o2[i])));
        CHECK_CLOSE("linear gelu", o1, o2, (size_t)N * OC, 1e-5, 0);
        free(x), free(w), free(b), free(res), free(o1), free(o2);
    }
}

TEST(nn_openblas_threads_restored) {
    /* nn_* run OpenBLAS single-threaded inside their calls and give its setting back */
    int before = openblas_get_num_threads();
    unsigned s = 6;
    int N = 64, IC = 256, OC = 512;
    float *x = rand_buf((size_t)N * IC, &s, 1), *w = rand_buf((size_t)OC * IC, &s, 1);
    float *o = malloc(sizeof(float) * N * OC), *qkv = rand_buf((size_t)N * 3 * 128, &s, 1);
    float *p = malloc(sizeof(float) * 2 * N * N), *a = malloc(sizeof(float) * N * 128);
    nn_linear(o, x, w, NULL, N, IC, OC);
    CHECK(openblas_get_num_threads() == before);
    nn_sgemm(0, 1, N, OC, IC, 1, x, IC, w, IC, 0, o, OC);
    CHECK(openblas_get_num_threads() == before);
    nn_attention(a, p, NULL, qkv, 1, N, 128, 2, 1);
    CHECK(openblas_get_num_threads() == before);
    free(x), free(w), free(o), free(qkv), free(p), free(a);
}

/* The tiles are a function of the shape alone: multiples of 16 (but for a dimension shorter than
 * a tile), covering C exactly, one tile under 4 MFLOP, and enough tiles on the ViT shapes to keep
 * many cores busy (B/16 at 512x384: 769 tokens; batches of 2048 tokens; the text tower) */
TEST(nn_tiles_shape_only) {
    int shapes[][3] = {{769, 2304, 768}, {769, 768, 768}, {769, 3072, 768}, {769, 768, 3072},
                       {1799, 3072, 1024}, {1799, 4096, 1024}, {1799, 1024, 4096},
                       {640, 1536, 512}, {640, 512, 2048}, {5140, 4096, 1024}, {7, 9, 11},
                       {33, 1000, 60}, {4000, 17, 300}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int M = shapes[k][0], N = shapes[k][1], K = shapes[k][2];
        nn_tiling t = nn_tiles(M, N, K);
        CHECK_MSG(t.mt > 0 && t.nt > 0 && (t.tm - 1) * t.mt < M && t.tm * t.mt >= M &&
                      (t.tn - 1) * t.nt < N && t.tn * t.nt >= N,
                  "%d x %d x %d: tiles %d x %d of %d x %d do not cover C exactly", M, N, K, t.tm,
                  t.tn, t.mt, t.nt);
        CHECK_MSG((t.mt % 16 == 0 || t.tm == 1) && (t.nt % 16 == 0 || t.tn == 1),
                  "%d x %d x %d: tile %d x %d not a multiple of 16", M, N, K, t.mt, t.nt);
        if (2.0 * M * N * K < 4e6) CHECK(t.tm == 1 && t.tn == 1);
        nn_tiling u = nn_tiles(M, N, K);
        CHECK(!memcmp(&t, &u, sizeof t));
    }
    /* the big products of the image towers: many tiles */
    CHECK(nn_tiles(769, 3072, 768).tm * nn_tiles(769, 3072, 768).tn >= 32);
    CHECK(nn_tiles(1799, 4096, 1024).tm * nn_tiles(1799, 4096, 1024).tn >= 32);
}

/* Every product kernel gives the same bits at any thread count, OpenMP's and OpenBLAS's alike:
 * sgemm in its four transposes, the fused linear epilogues, the attention (causal or not), on
 * shapes that cut into several tiles. The products are split by shape only (nn_tiles), so this
 * holds with any OpenBLAS kernel; a split by thread count fails here with kernels whose bits
 * depend on where a product is cut (OPENBLAS_CORETYPE=Haswell on a Zen 4: docs/threads.md). */
TEST(nn_products_thread_invariant) {
    static const int counts[] = TEST_THREAD_COUNTS;
    const int nc = (int)(sizeof counts / sizeof *counts);
    unsigned s = 11;
    int M = 769, K = 320, N = 1040, L = 197, C = 256, NH = 4;
    float *A = rand_buf((size_t)M * K, &s, 1), *B = rand_buf((size_t)K * N, &s, 0.1f);
    float *bias = rand_buf(N, &s, 1), *res = rand_buf((size_t)M * N, &s, 1);
    float *qkv = rand_buf((size_t)2 * L * 3 * C, &s, 1);
    size_t nmn = (size_t)M * N, natt = (size_t)2 * L * C, nprob = (size_t)2 * NH * L * L;
    /* per thread count: 4 sgemm, 3 linear, 2 attention outputs + their probabilities */
    size_t per = 7 * nmn + 2 * (natt + nprob + (size_t)2 * L * L);
    float *out[8];
    int nt0 = carseg_get_threads(), bt0 = openblas_get_num_threads();
    for (int c = 0; c < nc; c++) {
        carseg_set_threads(counts[c]);
        openblas_set_num_threads(counts[c]);
        float *o = out[c] = malloc(per * sizeof(float));
        REQUIRE(o);
        for (int t = 0; t < 4; t++) {   /* op(A) op(B) with the operands stored to match */
            int ta = t & 1, tb = t >> 1;
            nn_sgemm(ta, tb, M, N, K, 0.5f, A, ta ? M : K, B, tb ? K : N, 0.0f, o, N);
            o += nmn;
        }
        memcpy(o, res, nmn * sizeof(float));
        nn_linear_ex(o, A, B, bias, M, K, N, NN_ACCUMULATE);   /* B read as (N, K) */
        o += nmn;
        nn_linear_ex(o, A, B, bias, M, K, N, NN_GELU);
        o += nmn;
        nn_linear(o, A, B, NULL, M, K, N);
        o += nmn;
        for (int causal = 0; causal < 2; causal++) {
            float *att = o, *pr = o + natt, *avg = pr + nprob;
            nn_attention(att, pr, avg, qkv, 2, L, C, NH, causal);
            o += natt + nprob + (size_t)2 * L * L;
        }
    }
    carseg_set_threads(nt0);
    openblas_set_num_threads(bt0);
    for (int c = 1; c < nc; c++) {
        CHECK_MSG(!memcmp(out[0], out[c], 4 * nmn * sizeof(float)),
                  "nn_sgemm: 1 and %d threads differ", counts[c]);
        CHECK_MSG(!memcmp(out[0] + 4 * nmn, out[c] + 4 * nmn, 3 * nmn * sizeof(float)),
                  "nn_linear_ex: 1 and %d threads differ", counts[c]);
        CHECK_MSG(!memcmp(out[0] + 7 * nmn, out[c] + 7 * nmn, (per - 7 * nmn) * sizeof(float)),
                  "nn_attention: 1 and %d threads differ", counts[c]);
    }
    /* the same product from buffers at other alignments: the same bits (OpenBLAS packs the
     * operands; a kernel whose sums followed the addresses would show here) */
    float *A2 = malloc(((size_t)M * K + 3) * sizeof(float)), *C2 = malloc((nmn + 5) * sizeof(float));
    memcpy(A2 + 3, A, (size_t)M * K * sizeof(float));
    nn_sgemm(0, 0, M, N, K, 0.5f, A2 + 3, K, B, N, 0.0f, C2 + 5, N);
    CHECK_MSG(!memcmp(out[0], C2 + 5, nmn * sizeof(float)), "sgemm bits follow the alignment");
    for (int c = 0; c < nc; c++) free(out[c]);
    free(A), free(B), free(bias), free(res), free(qkv), free(A2), free(C2);
}

/* nn_gelu_rows: the AVX2 and the scalar code give the same bits, within 6e-7 of the exact GELU;
 * nn_softmax_cols and nn_softmax_short_rows against double-precision softmaxes */
TEST(nn_gelu_rows_paths_and_softmaxes) {
    unsigned s = 5;
    size_t n = 100003;
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) a[i] = b[i] = -9.0f + 18.0f * (float)i / (float)n;
    a[0] = b[0] = 0.0f, a[1] = b[1] = -0.0f;
    nn_gelu_rows(a, n);
    gemm_f32_set_enabled(0);
    nn_gelu_rows(b, n);
    gemm_f32_set_enabled(1);
    CHECK_MSG(!memcmp(a, b, sizeof(float) * n), "nn_gelu_rows: the vector and scalar code differ");
    double me = 0;
    for (size_t i = 2; i < n; i++) {
        double x = -9.0f + 18.0f * (float)i / (float)n, g = 0.5 * x * (1 + erf(x / sqrt(2.0)));
        me = fmax(me, fabs(a[i] - g));
    }
    CHECK_MSG(me < 6e-7, "nn_gelu_rows: max error %.3g", me);
    const int R = 300, C = 70, T = 5;
    float *x = rand_buf((size_t)R * C, &s, 4), *y = malloc(sizeof(float) * R * C);
    memcpy(y, x, sizeof(float) * R * C);
    nn_softmax_cols(y, R, C, C, 0.5f);
    double e1 = 0, e2 = 0;
    for (int j = 0; j < C; j++) {
        double mx = -1e30, sum = 0;
        for (int i = 0; i < R; i++) mx = fmax(mx, 0.5 * x[i * C + j]);
        for (int i = 0; i < R; i++) sum += exp(0.5 * x[i * C + j] - mx);
        for (int i = 0; i < R; i++) e1 = fmax(e1, fabs(y[i * C + j] - exp(0.5 * x[i * C + j] - mx) / sum));
    }
    memcpy(y, x, sizeof(float) * R * C);
    nn_softmax_short_rows(y, R * C / T, T, 0.25f);
    for (int r = 0; r < R * C / T; r++) {
        double mx = -1e30, sum = 0;
        for (int j = 0; j < T; j++) mx = fmax(mx, 0.25 * x[r * T + j]);
        for (int j = 0; j < T; j++) sum += exp(0.25 * x[r * T + j] - mx);
        for (int j = 0; j < T; j++) e2 = fmax(e2, fabs(y[r * T + j] - exp(0.25 * x[r * T + j] - mx) / sum));
    }
    CHECK_MSG(e1 < 1e-6 && e2 < 1e-6, "softmax errors: columns %.3g, short rows %.3g", e1, e2);
    free(a), free(b), free(x), free(y);
}
