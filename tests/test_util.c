/* test_util.c — .npy and JSON readers/writers, atomic writes. */
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "sha256.h"
#include "util.h"

TEST(util_npy_roundtrip) {
    const char *dir = test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/a.npy", dir);
    float v[6] = {1, -2, 3.5f, 0, 1e-7f, 42};
    int64_t shape[2] = {2, 3};
    CHECK_OK(npy_write(path, NPY_F32, v, 2, shape));
    npy_array a;
    CHECK_OK(npy_read(path, &a));
    CHECK(a.ndim == 2 && a.shape[0] == 2 && a.shape[1] == 3 && a.dtype == NPY_F32);
    CHECK(a.count == 6 && memcmp(a.data, v, sizeof v) == 0);
    npy_free(&a);
    int64_t s1[1] = {6};
    CHECK_OK(npy_write(path, NPY_F32, v, 1, s1));
    CHECK_OK(npy_read(path, &a));
    CHECK(a.ndim == 1 && a.shape[0] == 6);
    npy_free(&a);
}

TEST(util_npy_hostile) {
    const char *dir = test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/bad.npy", dir);
    float v[4] = {1, 2, 3, 4};
    int64_t shape[1] = {4};
    CHECK_OK(npy_write(path, NPY_F32, v, 1, shape));
    uint8_t *buf;
    size_t len;
    CHECK_OK(read_file(path, &buf, &len));
    /* every truncation must be rejected, never crash */
    for (size_t cut = 0; cut < len; cut++) {
        CHECK_OK(write_file_atomic(path, buf, cut));
        npy_array a;
        CHECK(npy_read(path, &a) == CARSEG_EFORMAT);
        CHECK(strstr(carseg_last_error(), "bad.npy") != NULL);
    }
    free(buf);
}

TEST(util_json) {
    const char *t = "{\"a\": [1, 2.5, -3e2], \"b\": \"x\\u00e9\\n\", \"c\": {\"d\": true, \"e\": null}}";
    char err[128];
    json *j = json_parse(t, strlen(t), err, sizeof err);
    REQUIRE(j);
    CHECK(json_get(j, "a")->len == 3);
    CHECK_NEAR(json_at(json_get(j, "a"), 2)->num, -300, 0);
    CHECK(strcmp(json_str(j, "b", ""), "x\xc3\xa9\n") == 0);
    CHECK(json_num(json_get(j, "c"), "d", 0) == 1);
    json_free(j);
    const char *bad[] = {"{", "[1,]", "{\"a\" 1}", "\"abc", "[1] x", "", "{\"a\":[1,{\"b\":}]}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json *b = json_parse(bad[i], strlen(bad[i]), err, sizeof err);
        CHECK_MSG(b == NULL, "accepted %s", bad[i]);
        CHECK(err[0] != 0);
        json_free(b);
    }
}

TEST(util_atomic_abort_leaves_nothing) {
    const char *dir = test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    CHECK_OK(write_file_atomic(path, "old", 3));
    atomic_file af;
    CHECK_OK(atomic_open(&af, path));
    fputs("half-written", af.f);
    atomic_abort(&af);
    uint8_t *buf;
    size_t len;
    CHECK_OK(read_file(path, &buf, &len));
    CHECK(len == 3 && memcmp(buf, "old", 3) == 0);
    free(buf);
}

TEST(util_npy_fortran_order) {
    /* some fixtures are stored column-major: check against the C-order copy NumPy makes */
    const char *p = shared_path("fixtures/car/chelsea_voc/iter01/gen_text_emb_fg.npy");
    if (!p) SKIP("shared fixtures missing");
    float *a;
    int nd;
    int64_t sh[8];
    CHECK_OK(npy_read_f32(p, &a, &nd, sh));
    REQUIRE(nd == 2);
    /* rows are L2-normalised text features: each row must have unit norm in C order */
    for (int64_t i = 0; i < sh[0]; i++) {
        double n = 0;
        for (int64_t j = 0; j < sh[1]; j++) n += (double)a[i * sh[1] + j] * a[i * sh[1] + j];
        CHECK_NEAR(n, 1.0, 1e-4);
    }
    free(a);
    /* a hand-made 2x3 Fortran array */
    const char *dir = test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/f.npy", dir);
    const char hdr[] = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
    uint8_t buf[128 + 24] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    size_t hl = 118;  /* 10 + 118 = 128 */
    buf[8] = (uint8_t)hl;
    memset(buf + 10, ' ', hl);
    memcpy(buf + 10, hdr, sizeof hdr - 1);
    buf[10 + hl - 1] = '\n';
    float col[6] = {0, 3, 1, 4, 2, 5};   /* column-major of [[0,1,2],[3,4,5]] */
    memcpy(buf + 128, col, sizeof col);
    CHECK_OK(write_file_atomic(path, buf, sizeof buf));
    CHECK_OK(npy_read_f32(path, &a, &nd, sh));
    for (int i = 0; i < 6; i++) CHECK_NEAR(a[i], i, 0);
    free(a);
}

/* cs_spare_take / cs_spare_give: one spare block per tag and thread; the larger block is kept; a
 * request larger than the spare gets a new block; another thread does not see this thread's
 * spare; carseg_release_memory empties this thread's spares. (Under AddressSanitizer the spares
 * are off and every take is a new block: only the sizes are checked then.) */
#if defined(__SANITIZE_ADDRESS__)
#define SPARES_ON 0
#else
#define SPARES_ON 1
#endif
static void *spare_other_thread(void *arg) {
    size_t k;
    void *x = cs_spare_take(CS_SPARE_GEMM_WORK, 0, &k);
    *(int *)arg = x != NULL;
    cs_spare_give(CS_SPARE_GEMM_WORK, x, k);
    cs_spare_give(CS_SPARE_GEMM_WORK, cs_malloc(1 << 16), 1 << 16);   /* kept until the thread exits */
    return NULL;
}

TEST(util_spare_blocks) {
    carseg_release_memory();
    size_t cap;
    CHECK(cs_spare_take(CS_SPARE_GEMM_WORK, 0, &cap) == NULL && cap == 0);   /* nothing kept yet */
    void *a = cs_spare_take(CS_SPARE_GEMM_WORK, 1000, &cap);
    REQUIRE(a);
    CHECK(cap == 1000 && ((uintptr_t)a & 63) == 0);
    memset(a, 1, 1000);
    cs_spare_give(CS_SPARE_GEMM_WORK, a, cap);
    void *b = cs_spare_take(CS_SPARE_GEMM_WORK, 500, &cap);   /* fits: the same block */
    REQUIRE(b);
    if (SPARES_ON) CHECK(b == a && cap == 1000);
    cs_spare_give(CS_SPARE_GEMM_WORK, b, cap);
    void *c = cs_spare_take(CS_SPARE_GEMM_WORK, 4000, &cap);   /* too small: a new block */
    REQUIRE(c);
    CHECK(cap == 4000);
    memset(c, 2, 4000);
    cs_spare_give(CS_SPARE_GEMM_WORK, c, cap);   /* replaces the 1000-byte spare */
    void *small = cs_malloc(100);
    cs_spare_give(CS_SPARE_GEMM_WORK, small, 100);   /* smaller than the spare: freed */
    void *d = cs_spare_take(CS_SPARE_GEMM_WORK, 0, &cap);
    if (SPARES_ON) CHECK(d == c && cap == 4000);
    else CHECK(d == NULL);
    cs_spare_give(CS_SPARE_GEMM_WORK, d, cap);
    /* another thread does not see this thread's spare (and its own is freed when it exits) */
    pthread_t th;
    int saw = -1;
    REQUIRE(pthread_create(&th, NULL, spare_other_thread, &saw) == 0);
    pthread_join(th, NULL);
    CHECK(saw == 0);
    if (SPARES_ON) {   /* still this thread's */
        void *e = cs_spare_take(CS_SPARE_GEMM_WORK, 0, &cap);
        CHECK(e == c);
        cs_spare_give(CS_SPARE_GEMM_WORK, e, cap);
    }
    carseg_release_memory();
    CHECK(cs_spare_take(CS_SPARE_GEMM_WORK, 0, &cap) == NULL);
}

/* cs_barrier: no thread leaves a barrier before all have arrived, over many back-to-back
 * barriers, with teams of 2 and 3 threads, sleeping at once (spin 0), after a short spin and
 * after a spin longer than any wait here (the futex path and the spin path both run). */
TEST(util_barrier) {
    enum { ROUNDS = 400 };
    const long spins[3] = {0, 2000, 1000000};
    for (int nt = 2; nt <= 3; nt++)
        for (int si = 0; si < 3; si++) {
            cs_barrier bar;
            cs_barrier_init(&bar, nt);
            bar.spin_ns = spins[si];
            int slot[3] = {0, 0, 0}, bad = 0, team = 0;
#pragma omp parallel num_threads(nt) reduction(+ : bad)
            {
                int t = omp_get_thread_num();
#pragma omp single
                team = omp_get_num_threads();
                if (team == nt) {
                    for (int r = 1; r <= ROUNDS; r++) {
                        __atomic_store_n(&slot[t], r, __ATOMIC_RELAXED);
                        cs_barrier_wait(&bar);
                        for (int u = 0; u < nt; u++) bad += __atomic_load_n(&slot[u], __ATOMIC_RELAXED) != r;
                        cs_barrier_wait(&bar);
                    }
                }
            }
            if (team != nt) {
                SKIP("OpenMP gave a team of %d threads, not %d", team, nt);
            }
            CHECK_MSG(bad == 0, "%d threads, spin %ld ns: %d early departures", nt, spins[si], bad);
        }
    cs_barrier one;
    cs_barrier_init(&one, 1);
    cs_barrier_wait(&one);   /* a team of one never waits */
}

/* sha256.c: FIPS 180-2 vectors, every length 0..200 (all padding cases) against Python's hashlib,
 * and chunked updates equal one update. */
TEST(util_sha256) {
    static const struct { const char *msg; const char *hex; } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"}};
    uint8_t dg[32];
    char hex[65];
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        sha256_ctx c;
        sha256_init(&c);
        sha256_update(&c, v[i].msg, strlen(v[i].msg));
        sha256_final(&c, dg);
        sha256_hex(dg, hex);
        CHECK_MSG(!strcmp(hex, v[i].hex), "sha256('%s') = %s", v[i].msg, hex);
    }
    /* a million 'a' in uneven chunks */
    static char mil[1000];
    memset(mil, 'a', sizeof mil);
    sha256_ctx c;
    sha256_init(&c);
    size_t done = 0;
    for (unsigned k = 1; done < 1000000; k = k * 7 % 997 + 1) {
        size_t n = k < 1000000 - done ? k : 1000000 - done;
        sha256_update(&c, mil, n);
        done += n;
    }
    sha256_final(&c, dg);
    sha256_hex(dg, hex);
    CHECK(!strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
    /* lengths 0..200 of bytes i % 251 against hashlib */
    FILE *p = popen("/usr/bin/python3 -c 'import hashlib\nfor n in range(201): "
                    "print(hashlib.sha256(bytes(i % 251 for i in range(n))).hexdigest())' 2>/dev/null", "r");
    if (!p) SKIP("cannot run /usr/bin/python3");
    uint8_t buf[201];
    for (int i = 0; i < 201; i++) buf[i] = (uint8_t)(i % 251);
    char line[128];
    int n = 0;
    while (fgets(line, sizeof line, p) && n <= 200) {
        line[strcspn(line, "\n")] = 0;
        sha256_init(&c);
        sha256_update(&c, buf, (size_t)n / 2);
        sha256_update(&c, buf + n / 2, (size_t)(n - n / 2));
        sha256_final(&c, dg);
        sha256_hex(dg, hex);
        CHECK_MSG(!strcmp(hex, line), "length %d: %s, hashlib %s", n, hex, line);
        n++;
    }
    pclose(p);
    CHECK_MSG(n == 201, "hashlib gave %d digests", n);
}
