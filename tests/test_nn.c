/* test_nn.c — the layer kernels against naive twins (nn.c). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
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
