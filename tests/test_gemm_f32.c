/* test_gemm_f32.c — carseg's own float32 product (gemm_f32.c): the same bits as its scalar twin,
 * a row's bits independent of its place in the product, the epilogues, and nn_linear_items's
 * batch invariance on both of its paths (the kernel and OpenBLAS item by item). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm_f32.h"
#include "nn.h"

static float *rnd(size_t n, unsigned *s, float scale) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = scale * test_randf(s);
    return p;
}

#define NEED_KERNEL()                                                                        \
    do {                                                                                     \
        if (!gemm_f32_available()) SKIP("needs AVX2 and FMA (x86-64): this CPU or build lacks them"); \
    } while (0)

TEST(gemm_f32_equals_scalar_fma_chains) {
    NEED_KERNEL();
    unsigned s = 7;
    /* every edge: rows around the 6-row panels, columns around the 16-column panels and the 8 x 8
     * transpose blocks of the packing, K from 1, row strides larger than K */
    static const int ms[] = {1, 5, 6, 7, 13, 37}, ns[] = {1, 8, 15, 16, 17, 40}, ks[] = {1, 7, 8, 9, 100, 777};
    for (int a = 0; a < 6; a++)
        for (int b = 0; b < 6; b++)
            for (int c = 0; c < 6; c++) {
                int m = ms[a], n = ns[b], K = ks[c], lda = K + 3, ldw = K + 5, ldc = n + 2;
                float *x = rnd((size_t)m * lda, &s, 1), *w = rnd((size_t)n * ldw, &s, 1);
                float *c1 = rnd((size_t)m * ldc, &s, 1), *c2 = malloc(sizeof(float) * m * ldc);
                memcpy(c2, c1, sizeof(float) * m * ldc);
                CHECK(gemm_f32_linear(c1, ldc, x, lda, w, ldw, NULL, m, n, K, nn_epilogue, 0) == 0);
                gemm_f32_nt_ref(c2, ldc, x, lda, w, ldw, m, n, K);
                CHECK_MSG(!memcmp(c1, c2, sizeof(float) * m * ldc), "m %d n %d K %d: not the scalar chains' bits "
                          "(or the padding between rows was written)", m, n, K);
                free(x), free(w), free(c1), free(c2);
            }
}

TEST(gemm_f32_row_bits_independent_of_place) {
    NEED_KERNEL();
    unsigned s = 11;
    int M = 50, N = 70, K = 300;
    float *x = rnd((size_t)M * K, &s, 1), *w = rnd((size_t)N * K, &s, 1);
    float *all = malloc(sizeof(float) * M * N), *one = malloc(sizeof(float) * N), *part = malloc(sizeof(float) * M * N);
    CHECK(gemm_f32_linear(all, N, x, K, w, K, NULL, M, N, K, nn_epilogue, 0) == 0);
    for (int i = 0; i < M; i++) {   /* each row alone */
        gemm_f32_linear(one, N, x + (size_t)i * K, K, w, K, NULL, 1, N, K, nn_epilogue, 0);
        CHECK_MSG(!memcmp(one, all + (size_t)i * N, sizeof(float) * N), "row %d alone differs", i);
    }
    /* the product cut at rows 13 and 31 and at column 21 */
    int rc[] = {0, 13, 31, M}, cc[] = {0, 21, N};
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++)
            gemm_f32_linear(part + (size_t)rc[r] * N + cc[c], N, x + (size_t)rc[r] * K, K, w + (size_t)cc[c] * K, K,
                            NULL, rc[r + 1] - rc[r], cc[c + 1] - cc[c], K, nn_epilogue, 0);
    CHECK_MSG(!memcmp(part, all, sizeof(float) * M * N), "the product cut in blocks differs");
    free(x), free(w), free(all), free(one), free(part);
}

TEST(gemm_f32_epilogues) {
    NEED_KERNEL();
    unsigned s = 13;
    int m = 19, n = 33, K = 65;
    float *x = rnd((size_t)m * K, &s, 1), *w = rnd((size_t)n * K, &s, 0.2f), *b = rnd(n, &s, 1);
    float *sum = malloc(sizeof(float) * m * n), *o1 = rnd((size_t)m * n, &s, 1), *o2 = malloc(sizeof(float) * m * n);
    gemm_f32_nt_ref(sum, n, x, K, w, K, m, n, K);
    static const int flags[] = {0, NN_ACCUMULATE, NN_GELU};
    for (int f = 0; f < 3; f++) {
        memcpy(o2, o1, sizeof(float) * m * n);
        CHECK(gemm_f32_linear(o1, n, x, K, w, K, b, m, n, K, nn_epilogue, flags[f]) == 0);
        nn_epilogue(o2, n, sum, n, b, m, n, flags[f]);
        CHECK_MSG(!memcmp(o1, o2, sizeof(float) * m * n), "flags %d: not nn_epilogue on the sums", flags[f]);
    }
    CHECK(gemm_f32_linear(o1, n, x, K, w, K, b, m, n, 0, nn_epilogue, 0) == -1);
    free(x), free(w), free(b), free(sum), free(o1), free(o2);
}

/* items of rows rows: the batch's outputs equal each item's alone, bit for bit */
static void items_invariant(const char *path) {
    unsigned s = 17;
    enum { ITEMS = 7, ROWS = 11, IC = 96, OC = 300 };
    float *x = rnd((size_t)ITEMS * ROWS * IC, &s, 1), *w = rnd((size_t)OC * IC, &s, 0.1f), *b = rnd(OC, &s, 1);
    float *all = rnd((size_t)ITEMS * ROWS * OC, &s, 1), *one = malloc(sizeof(float) * ROWS * OC);
    float *res = malloc(sizeof(float) * ITEMS * ROWS * OC);
    memcpy(res, all, sizeof(float) * ITEMS * ROWS * OC);
    nn_linear_items(all, x, w, b, ITEMS, ROWS, IC, OC, NN_ACCUMULATE);
    for (int it = 0; it < ITEMS; it++) {
        memcpy(one, res + (size_t)it * ROWS * OC, sizeof(float) * ROWS * OC);
        nn_linear_items(one, x + (size_t)it * ROWS * IC, w, b, 1, ROWS, IC, OC, NN_ACCUMULATE);
        CHECK_MSG(!memcmp(one, all + (size_t)it * ROWS * OC, sizeof(float) * ROWS * OC),
                  "%s: item %d of the batch differs from the item alone", path, it);
    }
    float *ref = malloc(sizeof(float) * ITEMS * ROWS * OC);
    memcpy(ref, res, sizeof(float) * ITEMS * ROWS * OC);
    float *lin = malloc(sizeof(float) * ITEMS * ROWS * OC);
    nn_linear_naive(lin, x, w, b, ITEMS * ROWS, IC, OC);
    for (size_t i = 0; i < (size_t)ITEMS * ROWS * OC; i++) ref[i] += lin[i];
    CHECK_CLOSE(path, all, ref, (size_t)ITEMS * ROWS * OC, 1e-5, 1e-5);
    free(x), free(w), free(b), free(all), free(one), free(res), free(ref), free(lin);
}

TEST(nn_linear_items_batch_invariant_both_paths) {
    int had = gemm_f32_available();
    if (had) items_invariant("fma-chain kernel");
    gemm_f32_set_enabled(0);
    items_invariant("OpenBLAS item by item");
    gemm_f32_set_enabled(1);
    CHECK(gemm_f32_available() == had);
}
