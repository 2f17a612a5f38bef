/* bench_clip.c — speed of the CLIP engine on the real shapes (random weights, clip_init_random):
 * ViT-B/16 image forward at 224x224 and 512x384 (the CaR generator's VOC size), ViT-L/14 at
 * 224x224 (the classifier), the ViT-B/16 text tower on 300 prompts. For each: milliseconds,
 * GFLOP/s, the ratio to the sgemm throughput on that tower's own block products (the ceiling),
 * and the ratio to Debian's PyTorch on the same shapes and thread count
 * (scripts/bench_torch_clip.py, skipped with a message when /usr/bin/python3 lacks torch).
 * A one-thread pass (ViT-B/16 224x224 and its sgemm ceiling) gives an efficiency figure that does
 * not depend on the other core being free.
 * The AMX precision modes (clip_set_precision: bf16x3 "near fp32", bf16) get their own rows for
 * the three image cases, in the same run as PyTorch: milliseconds, effective GFLOP/s (the float32
 * FLOP count over the time), the ratio to PyTorch, and the memory of the packed weights; plus
 * their one-thread throughput on the block products. Skipped with the reason where AMX is missing.
 * Env: CARSEG_BENCH_REPS (default 5 for carseg, 2 for PyTorch), CARSEG_BENCH_NO_TORCH=1.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "clip.h"
#include "gemm_amx.h"
#include "nn.h"
#include "util.h"

static int g_reps = 5;

/* CPU time of the process (all threads), ms: with the cores shared, GFLOP per CPU-second is the
 * figure that does not depend on when the scheduler lets the threads run. */
static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* wall ms and CPU ms of the fastest run */
typedef struct { double wall, cpu; } timing;
#define TIME_BEST(expr, out)                                                                  \
    do {                                                                                      \
        timing b_ = {1e30, 0};                                                                \
        for (int r_ = 0; r_ < g_reps + 1; r_++) {                                             \
            double w_ = now_ms(), c_ = cpu_ms();                                              \
            expr;                                                                             \
            w_ = now_ms() - w_, c_ = cpu_ms() - c_;                                           \
            if (r_ && w_ < b_.wall) b_.wall = w_, b_.cpu = c_;                                \
        }                                                                                     \
        (out) = b_;                                                                           \
    } while (0)

static clip_config cfg_b16(void) {
    clip_config c = {.v_width = 768, .v_layers = 12, .v_patch = 16, .v_grid = 14, .t_width = 512,
                     .t_layers = 12, .t_ctx = 77, .t_vocab = 49408, .embed = 512};
    return c;
}
static clip_config cfg_l14(void) {
    clip_config c = {.v_width = 1024, .v_layers = 24, .v_patch = 14, .v_grid = 16, .t_width = 768,
                     .t_layers = 12, .t_ctx = 77, .t_vocab = 49408, .embed = 768};
    return c;
}

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* The four products of one block (qkv, out, fc, proj) on N tokens, width C, MLP M: wall GFLOP/s
 * and GFLOP per CPU-second (*per_cpu). */
static double block_sgemm_gflops(int N, int C, int M, double *per_cpu) {
    float *x = cs_malloc(sizeof(float) * N * M), *w = cs_malloc(sizeof(float) * 3 * C * M);
    float *y = cs_malloc(sizeof(float) * N * (M > 3 * C ? M : 3 * C));
    uint64_t s = 1;
    for (size_t i = 0; i < (size_t)N * M; i++) x[i] = frand(&s);
    for (size_t i = 0; i < (size_t)3 * C * M; i++) w[i] = 0.02f * frand(&s);
    double flops = 2.0 * N * C * (3.0 * C + C + 2.0 * M);
    timing t;
    TIME_BEST(({
        nn_sgemm(0, 1, N, 3 * C, C, 1, x, C, w, C, 0, y, 3 * C);
        nn_sgemm(0, 1, N, C, C, 1, x, C, w, C, 0, y, C);
        nn_sgemm(0, 1, N, M, C, 1, x, C, w, C, 0, y, M);
        nn_sgemm(0, 1, N, C, M, 1, x, M, w, M, 0, y, C);
    }), t);
    cs_free(x), cs_free(w), cs_free(y);
    if (per_cpu) *per_cpu = flops / (t.cpu * 1e6);
    return flops / (t.wall * 1e6);
}

/* One product with OpenBLAS's own threads (for comparison with nn_sgemm's OpenMP blocking). */
static double openblas_threaded_gflops(int N, int K, int Nout, int nt) {
    float *x = cs_malloc(sizeof(float) * N * K), *w = cs_malloc(sizeof(float) * Nout * K);
    float *y = cs_malloc(sizeof(float) * N * Nout);
    uint64_t s = 2;
    for (size_t i = 0; i < (size_t)N * K; i++) x[i] = frand(&s);
    for (size_t i = 0; i < (size_t)Nout * K; i++) w[i] = frand(&s);
    int prev = openblas_get_num_threads();
    openblas_set_num_threads(nt);
    timing t;
    TIME_BEST(cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Nout, K, 1, x, K, w, K, 0, y,
                          Nout), t);
    openblas_set_num_threads(prev);
    cs_free(x), cs_free(w), cs_free(y);
    return 2.0 * N * K * Nout / (t.wall * 1e6);
}

static timing time_image(const clip_model *m, int H, int W, float *feat) {
    float *x = cs_malloc(sizeof(float) * 3 * H * W);
    uint64_t s = 3;
    for (size_t i = 0; i < (size_t)3 * H * W; i++) x[i] = frand(&s);
    timing t;
    TIME_BEST(({
        if (clip_encode_image(m, x, H, W, 0, feat) != CARSEG_OK) {
            fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
            exit(1);
        }
    }), t);
    cs_free(x);
    return t;
}

/* the prompts of scripts/bench_torch_clip.py: lengths 5..16 (SOT ... EOT) */
static int32_t *make_prompts(int n, int ctx, double *flops, const clip_config *c) {
    int32_t *t = calloc((size_t)n * ctx, sizeof(int32_t));
    uint64_t s = 4;
    *flops = 0;
    for (int i = 0; i < n; i++) {
        int len = 5 + (i * 7) % 12;
        t[(size_t)i * ctx] = 49406;
        for (int j = 1; j < len - 1; j++) t[(size_t)i * ctx + j] = 1 + (int)((frand(&s) + 1) * 24000);
        t[(size_t)i * ctx + len - 1] = 49407;
        *flops += clip_text_flops(c, len);
    }
    return t;
}

/* The four block products through the AMX path (packed once), as block_sgemm_gflops. */
static double block_amx_gflops(int N, int C, int M, int mode) {
    float *x = cs_malloc(sizeof(float) * N * M), *w = cs_malloc(sizeof(float) * 3 * C * M);
    float *y = cs_malloc(sizeof(float) * N * (M > 3 * C ? M : 3 * C));
    uint64_t s = 1;
    for (size_t i = 0; i < (size_t)N * M; i++) x[i] = frand(&s);
    for (size_t i = 0; i < (size_t)3 * C * M; i++) w[i] = 0.02f * frand(&s);
    gemm_pack p[4];
    gemm_work wk = {0};
    if (gemm_pack_weights(&p[0], w, 3 * C, C, mode) || gemm_pack_weights(&p[1], w, C, C, mode) ||
        gemm_pack_weights(&p[2], w, M, C, mode) || gemm_pack_weights(&p[3], w, C, M, mode)) {
        fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
        exit(1);
    }
    double flops = 2.0 * N * C * (3.0 * C + C + 2.0 * M);
    timing t;
    TIME_BEST(({
        gemm_linear(y, 3 * C, x, N, &p[0], NULL, 0, &wk);
        gemm_linear(y, C, x, N, &p[1], NULL, 0, &wk);
        gemm_linear(y, M, x, N, &p[2], NULL, 0, &wk);
        gemm_linear(y, C, x, N, &p[3], NULL, 0, &wk);
    }), t);
    for (int i = 0; i < 4; i++) gemm_pack_free(&p[i]);
    gemm_work_free(&wk);
    cs_free(x), cs_free(w), cs_free(y);
    return flops / (t.wall * 1e6);
}

/* peak resident memory of the process (VmHWM), MB; 0 when unknown */
static double peak_rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    double kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atof(line + 6);
    fclose(f);
    return kb / 1024;
}

/* runs the PyTorch baseline; fills ms per case or returns 0 when unavailable */
typedef struct { timing b16_224, b16_512, l14_224, text300; char version[32]; } torch_times;

static double json_ms(const json *j, const char *k) { return json_num(j, k, 0); }

static int run_torch(int threads, torch_times *tt) {
    memset(tt, 0, sizeof *tt);
    if (getenv("CARSEG_BENCH_NO_TORCH")) { printf("  (PyTorch baseline skipped: CARSEG_BENCH_NO_TORCH)\n"); return 0; }
    if (!file_exists("scripts/bench_torch_clip.py")) {
        printf("  (PyTorch baseline skipped: run from the repository root)\n");
        return 0;
    }
    if (system("/usr/bin/python3 -c 'import torch' 2>/dev/null") != 0) {
        printf("  (PyTorch baseline skipped: /usr/bin/python3 has no torch; apt-get install python3-torch)\n");
        return 0;
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 scripts/bench_torch_clip.py --threads %d --reps %d",
             threads, g_reps < 2 ? g_reps : 2);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, p);
    buf[n] = 0;
    if (pclose(p) != 0) { printf("  (PyTorch baseline failed)\n"); return 0; }
    char err[128];
    json *j = json_parse(buf, strlen(buf), err, sizeof err);
    if (!j) { printf("  (PyTorch baseline: unreadable output)\n"); return 0; }
    const char *keys[4] = {"b16_224", "b16_512x384", "l14_224", "text300"};
    timing *dst[4] = {&tt->b16_224, &tt->b16_512, &tt->l14_224, &tt->text300};
    for (int k = 0; k < 4; k++) {
        char ck[64];
        snprintf(ck, sizeof ck, "%s_cpu", keys[k]);
        dst[k]->wall = json_ms(j, keys[k]);
        dst[k]->cpu = json_ms(j, ck);
    }
    snprintf(tt->version, sizeof tt->version, "%s", json_str(j, "torch", "?"));
    json_free(j);
    return 1;
}

/* ceiling: the sgemm's GFLOP per CPU-second on this tower's block products */
static void row(const char *name, timing t, double gflop, double ceiling, timing torch) {
    double gfs = gflop / (t.wall * 1e-3), gfc = gflop / (t.cpu * 1e-3);
    printf("  %-26s %8.1f ms %8.1f cpu-ms %7.2f GFLOP %6.1f GFLOP/s %5.1f%% of sgemm", name, t.wall,
           t.cpu, gflop, gfs, 100 * gfc / ceiling);
    if (torch.wall > 0)
        printf(" | torch %8.1f ms %8.1f cpu-ms  x%.2f (cpu x%.2f)", torch.wall, torch.cpu,
               torch.wall / t.wall, torch.cpu / t.cpu);
    printf("\n");
}

/* an AMX row: no sgemm ceiling (the FLOP count is float32's; "effective" GFLOP/s) */
static void row_amx(const char *name, timing t, double gflop, timing torch) {
    printf("  %-26s %8.1f ms %8.1f cpu-ms %7.2f GFLOP %6.1f eff. GFLOP/s", name, t.wall, t.cpu,
           gflop, gflop / (t.wall * 1e-3));
    if (torch.wall > 0)
        printf(" | torch %8.1f ms  x%.2f (cpu x%.2f)", torch.wall, torch.wall / t.wall,
               torch.cpu / t.cpu);
    printf("\n");
}

/* the image cases in the AMX modes (model m: ViT-B/16 when !l14, else ViT-L/14) */
static void amx_rows(clip_model *m, int l14, const torch_times *tt) {
    static const char *names[3] = {"", "bf16x3", "bf16"};
    float feat[1024];
    for (int mode = GEMM_BF16X3; mode <= GEMM_BF16; mode++) {
        if (clip_set_precision(m, mode) != CARSEG_OK) {
            fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
            exit(1);
        }
        char name[64];
        if (!l14) {
            snprintf(name, sizeof name, "ViT-B/16 224x224 %s", names[mode]);
            row_amx(name, time_image(m, 224, 224, feat), clip_image_flops(&m->cfg, 14, 14, 12) * 1e-9,
                    tt->b16_224);
            snprintf(name, sizeof name, "ViT-B/16 512x384 %s", names[mode]);
            row_amx(name, time_image(m, 384, 512, feat), clip_image_flops(&m->cfg, 24, 32, 12) * 1e-9,
                    tt->b16_512);
        } else {
            snprintf(name, sizeof name, "ViT-L/14 224x224 %s", names[mode]);
            row_amx(name, time_image(m, 224, 224, feat), clip_image_flops(&m->cfg, 16, 16, 24) * 1e-9,
                    tt->l14_224);
        }
        if (mode == GEMM_BF16X3)
            printf("    packed weights: %.0f MB beyond the float32 weights (the lossless planes live in "
                   "the float32 matrices; the last block and the patch embedding apart)\n",
                   clip_packed_bytes(m) / 1e6);
        else
            printf("    packed weights %.0f MB beside the float32 weights (Grad-CAM reads those)\n",
                   clip_packed_bytes(m) / 1e6);
    }
    clip_set_precision(m, GEMM_FP32);
}

int main(void) {
    if (getenv("CARSEG_BENCH_REPS")) g_reps = atoi(getenv("CARSEG_BENCH_REPS"));
    if (g_reps < 1) g_reps = 1;
    int nt = carseg_get_threads();
    printf("bench_clip: %d threads, best of %d runs after a warm-up\n", nt, g_reps);

    /* sgemm ceilings on each tower's block products (GFLOP per CPU-second) */
    double c_b16, c_b16l, c_l14, c_txt;
    double w_b16 = block_sgemm_gflops(197, 768, 3072, &c_b16);
    double w_b16l = block_sgemm_gflops(769, 768, 3072, &c_b16l);
    double w_l14 = block_sgemm_gflops(257, 1024, 4096, &c_l14);
    double w_txt = block_sgemm_gflops(64 * 12, 512, 2048, &c_txt);
    printf("sgemm (nn_sgemm: OpenMP blocks of single-threaded OpenBLAS) on the block products,\n"
           "GFLOP/s wall (GFLOP per CPU-second):\n");
    printf("  ViT-B/16 197 tokens %.1f (%.1f), 769 tokens %.1f (%.1f), ViT-L/14 257 tokens %.1f (%.1f),\n"
           "  text 768 rows %.1f (%.1f)\n", w_b16, c_b16, w_b16l, c_b16l, w_l14, c_l14, w_txt, c_txt);
    printf("  OpenBLAS's own %d threads on 197x768 @ 768x3072: %.1f GFLOP/s wall\n", nt,
           openblas_threaded_gflops(197, 768, 3072, nt));

    torch_times tt;
    int have_torch = run_torch(nt, &tt);
    if (have_torch) printf("PyTorch %s baseline, %d threads (scripts/bench_torch_clip.py)\n", tt.version, nt);

    clip_config cb = cfg_b16(), cl = cfg_l14();
    clip_model *m;
    if (clip_init_random(&cb, 1, &m) != CARSEG_OK) {
        fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
        return 1;
    }
    float feat[1024];
    timing ms = time_image(m, 224, 224, feat);
    for (int i = 0; i < cb.embed; i++)
        if (!isfinite(feat[i])) { fprintf(stderr, "bench_clip: non-finite feature\n"); return 1; }
    printf("towers:\n");
    row("ViT-B/16 image 224x224", ms, clip_image_flops(&m->cfg, 14, 14, 12) * 1e-9, c_b16,
        tt.b16_224);
    ms = time_image(m, 384, 512, feat);
    row("ViT-B/16 image 512x384", ms, clip_image_flops(&m->cfg, 24, 32, 12) * 1e-9, c_b16l,
        tt.b16_512);
    /* text: 300 prompts */
    double tfl;
    int32_t *tok = make_prompts(300, 77, &tfl, &m->cfg);
    float *tf = malloc(sizeof(float) * 300 * cb.embed);
    timing best;
    TIME_BEST(({
        if (clip_encode_text(m, tok, 300, tf) != CARSEG_OK) {
            fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
            return 1;
        }
    }), best);
    row("ViT-B/16 text, 300 prompts", best, tfl * 1e-9, c_txt, tt.text300);
    printf("  (text GFLOP counts each prompt up to its EOT token, as computed; PyTorch runs all 77\n"
           "   positions: %.1f GFLOP)\n", 300 * clip_text_flops(&m->cfg, 77) * 1e-9);
    free(tok), free(tf);
    int amx = gemm_amx_check() == CARSEG_OK;
    if (amx) amx_rows(m, 0, &tt);
    else printf("  (AMX rows skipped: %s)\n", carseg_last_error());
    clip_free(m);
    if (clip_init_random(&cl, 2, &m) != CARSEG_OK) {
        fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
        return 1;
    }
    ms = time_image(m, 224, 224, feat);
    row("ViT-L/14 image 224x224", ms, clip_image_flops(&m->cfg, 16, 16, 24) * 1e-9, c_l14,
        tt.l14_224);
    if (amx) amx_rows(m, 1, &tt);
    clip_free(m);

    /* one thread: the efficiency of the tower against sgemm without waiting on a second core */
    omp_set_num_threads(1);
    double c1;
    double w1 = block_sgemm_gflops(197, 768, 3072, &c1);
    if (clip_init_random(&cb, 1, &m) != CARSEG_OK) return 1;
    ms = time_image(m, 224, 224, feat);
    timing none = {0, 0};
    printf("one thread (sgemm on the block products %.1f GFLOP/s, %.1f per CPU-second):\n", w1, c1);
    row("ViT-B/16 image 224x224", ms, clip_image_flops(&m->cfg, 14, 14, 12) * 1e-9, c1, none);
    clip_free(m);
    if (amx)
        printf("  AMX on the block products (effective GFLOP/s): ViT-B/16 197 tokens bf16x3 %.1f, "
               "bf16 %.1f;\n  ViT-L/14 257 tokens bf16x3 %.1f, bf16 %.1f\n",
               block_amx_gflops(197, 768, 3072, GEMM_BF16X3), block_amx_gflops(197, 768, 3072, GEMM_BF16),
               block_amx_gflops(257, 1024, 4096, GEMM_BF16X3), block_amx_gflops(257, 1024, 4096, GEMM_BF16));
    omp_set_num_threads(nt);
    printf("peak resident memory of this run: %.0f MB\n", peak_rss_mb());
    return 0;
}
