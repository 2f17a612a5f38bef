/* test_gemm_f32.c — carseg's own float32 product (gemm_f32.c): the same bits as its scalar twin,
 * a row's bits independent of its place in the product, the epilogues, and nn_linear_items's
 * batch invariance on both of its paths (the kernel and OpenBLAS item by item). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm_f32.h"
#include "nn.h"
#include "util.h"

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
                gemm_f32_ref(0, 1, m, n, K, x, lda, w, ldw, c2, ldc);
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
    gemm_f32_ref(0, 1, m, n, K, x, K, w, K, sum, n);
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

TEST(gemm_f32_layouts_alpha_accumulate) {
    NEED_KERNEL();
    unsigned s = 19;
    int m = 23, n = 37, K = 41, lda = 50, ldb = 60, ldc = 40;
    float *a = rnd((size_t)50 * 50, &s, 1), *b = rnd((size_t)60 * 60, &s, 1);
    float *c0 = rnd((size_t)m * ldc, &s, 1), *c = malloc(sizeof(float) * m * ldc), *r = malloc(sizeof(float) * m * ldc);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int acc = 0; acc < 2; acc++)
                for (int al = 0; al < 2; al++) {
                    float alpha = al ? 0.37f : 1.0f;
                    memcpy(c, c0, sizeof(float) * m * ldc);
                    CHECK(gemm_f32(ta, tb, m, n, K, alpha, a, lda, b, ldb, acc, c, ldc) == 0);
                    gemm_f32_ref(ta, tb, m, n, K, a, lda, b, ldb, r, ldc);
                    int bad = 0;
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < n; j++) {
                            float v = al ? alpha * r[i * ldc + j] : r[i * ldc + j];
                            float want = acc ? c0[i * ldc + j] + v : v;
                            bad += memcmp(&want, &c[i * ldc + j], sizeof want) != 0;
                        }
                    for (int i = 0; i < m; i++)   /* the columns past n untouched */
                        bad += memcmp(c + i * ldc + n, c0 + i * ldc + n, sizeof(float) * (ldc - n)) != 0;
                    CHECK_MSG(!bad, "ta %d tb %d accumulate %d alpha %g: %d elements differ", ta, tb, acc, alpha, bad);
                }
    free(a), free(b), free(c0), free(c), free(r);
}

/* Two identical queries must get identical CAMs (the reference's duplicate-name case, Q17): rows
 * of A that are equal give equal rows of C, and equal columns of B equal columns, wherever they
 * sit in a product and however it is tiled over threads (nn_sgemm, every layout). */
TEST(nn_sgemm_equal_rows_equal_bits) {
    NEED_KERNEL();
    unsigned s = 23;
    int M = 300, N = 290, K = 200;
    float *A = rnd((size_t)M * K, &s, 1), *B = rnd((size_t)K * N, &s, 1);
    /* rows 7 and 257 = row 3, columns 20 and 281 = column 5: with Debian's OpenBLAS 0.3.21 on a
     * AMD EPYC (avx2), rows 3 and 7 and columns 5 and 20 of this product come out with other bits */
    memcpy(A + (size_t)7 * K, A + (size_t)3 * K, sizeof(float) * K);
    memcpy(A + (size_t)257 * K, A + (size_t)3 * K, sizeof(float) * K);
    for (int k = 0; k < K; k++) B[(size_t)k * N + 20] = B[(size_t)k * N + 281] = B[(size_t)k * N + 5];
    float *C = malloc(sizeof(float) * M * N);
    nn_sgemm(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    CHECK_MSG(!memcmp(C + (size_t)3 * N, C + (size_t)7 * N, sizeof(float) * N) &&
              !memcmp(C + (size_t)3 * N, C + (size_t)257 * N, sizeof(float) * N), "equal rows of A, other rows of C");
    int bad = 0;
    for (int i = 0; i < M; i++)
        bad += memcmp(&C[(size_t)i * N + 5], &C[(size_t)i * N + 20], sizeof(float)) != 0 ||
               memcmp(&C[(size_t)i * N + 5], &C[(size_t)i * N + 281], sizeof(float)) != 0;
    CHECK_MSG(!bad, "equal columns of B, %d rows where the columns of C differ", bad);
    free(A), free(B), free(C);
}

/* gemm_f32_segs (the 3x3 convolutions' product): the bits of gemm_f32 on the gathered A; and
 * gemm_f32_prepacked: the bits of gemm_f32 with the same B */
TEST(gemm_f32_segments_and_prepacked) {
    NEED_KERNEL();
    unsigned s = 11;
    static const int ms[] = {1, 6, 7, 40}, ns[] = {1, 8, 16, 33}, kl[] = {1, 5, 32};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++)
            for (int c = 0; c < 3; c++) {
                int m = ms[a], n = ns[b], klen = kl[c], nseg = 9, K = nseg * klen, ars = klen + 2;
                size_t off[9];
                for (int g = 0; g < nseg; g++) off[g] = (size_t)((g * 7) % 11) * ars + (g % 3);
                size_t na = (size_t)(m + 12) * ars + 64;
                float *x = rnd(na, &s, 1), *w = rnd((size_t)n * K, &s, 1);
                float *ga = malloc(sizeof(float) * m * K), *c1 = malloc(sizeof(float) * m * n),
                      *c2 = malloc(sizeof(float) * m * n);
                for (int i = 0; i < m; i++)
                    for (int g = 0; g < nseg; g++)
                        memcpy(ga + (size_t)i * K + g * klen, x + (size_t)i * ars + off[g], sizeof(float) * klen);
                CHECK(gemm_f32_segs(m, n, nseg, off, klen, x, ars, w, c1, n) == 0);
                CHECK(gemm_f32(0, 1, m, n, K, 1.0f, ga, K, w, K, 0, c2, n) == 0);
                CHECK_MSG(!memcmp(c1, c2, sizeof(float) * m * n), "segs m %d n %d klen %d: other bits", m, n, klen);
                float *pb = cs_malloc(sizeof(float) * gemm_f32_packed_size(n, K));
                CHECK(gemm_f32_pack_b(pb, 1, w, K, n, K) == 0);
                CHECK(gemm_f32_prepacked(m, n, K, ga, K, pb, c1, n) == 0);
                CHECK_MSG(!memcmp(c1, c2, sizeof(float) * m * n), "prepacked m %d n %d K %d: other bits", m, n, K);
                cs_free(pb);
                free(x), free(w), free(ga), free(c1), free(c2);
            }
    gemm_f32_set_enabled(0);
    float pb[16];
    CHECK(gemm_f32_pack_b(pb, 0, pb, 1, 1, 1) == -1);   /* without the kernel: refused */
    gemm_f32_set_enabled(1);
}
