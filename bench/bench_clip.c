/* bench_clip.c — speed of the CLIP engine on the real shapes through the public API (random
 * weights of OpenAI's ViT-B/16 and ViT-L/14 shapes, written as safetensors files to a temporary
 * folder and loaded with carseg_clip_load: bench_common.h): ViT-B/16 image forward at 224x224
 * and 512x384 (the CaR generator's VOC size, carseg_clip_encode_images_hw), ViT-L/14 at 224x224
 * (the classifier), the ViT-B/16 text tower on 300 prompts (carseg_clip_encode_tokens). For each:
 * milliseconds, GFLOP/s, the ratio to the sgemm throughput on that tower's own block products (the
 * ceiling: single-threaded OpenBLAS cblas_sgemm calls in nn_sgemm's OpenMP tiles), and the
 * ratio to Debian's PyTorch on the same shapes and thread count (scripts/bench_torch_clip.py,
 * skipped with a message when /usr/bin/python3 lacks torch).
 * A one-thread pass (ViT-B/16 224x224 and its sgemm ceiling) gives an efficiency figure that does
 * not depend on the other core being free.
 * The AMX precision modes (carseg_clip_set_precision: bf16x3 "near fp32", bf16) get their own
 * rows for the three image cases, in the same run as PyTorch: milliseconds, effective GFLOP/s
 * (the float32 FLOP count over the time), the ratio to PyTorch, and the resident memory the
 * mode's packed weights added. Skipped with the reason where AMX is missing.
 * Env: CARSEG_BENCH_REPS (default 5 for carseg, 2 for PyTorch), CARSEG_BENCH_NO_TORCH=1.
 */
#include <cblas.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_common.h"

#define now_ms bench_now_ms
#define cpu_ms bench_cpu_ms

static int g_reps = 5;

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

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static float *falloc(size_t n) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63);
    if (!p) {
        fprintf(stderr, "bench_clip: out of memory\n");
        exit(1);
    }
    return p;
}

/* The tiles of nn_sgemm (src/clip/nn.c, nn_tiles): a product under 4 MFLOP is one tile; else tiles of at
 * least 256 x 256, multiples of 16, about 64 of them, the split packing the least. */
typedef struct { int mt, nt, tm, tn; } tiling;
static int even16(int len, int parts) {
    int t = (len + parts - 1) / parts;
    t = (t + 15) & ~15;
    return t < len ? t : len;
}
static tiling tiles(int M, int N, int K) {
    tiling t = {M, N, 1, 1};
    if (2.0 * M * N * K < 4e6) return t;
    int tm_max = M / 256 > 1 ? M / 256 : 1, tn_max = N / 256 > 1 ? N / 256 : 1;
    double best = 0;
    for (int tm = 1; tm <= tm_max; tm++) {
        int tn = (64 + tm - 1) / tm;
        tn = tn < tn_max ? tn : tn_max;
        int mt = even16(M, tm), nt = even16(N, tn);
        int rm = (M + mt - 1) / mt, rn = (N + nt - 1) / nt, T = rm * rn;
        double score = (T < 64 ? 1e15 * (64 - T) : 0) + (double)rn * M + (double)rm * N;
        if (tm == 1 || score < best) best = score, t = (tiling){mt, nt, rm, rn};
    }
    return t;
}
/* y (N, Nout) = x (N, K) @ w (Nout, K)^T: single-threaded OpenBLAS on each tile, the tiles shared
 * out to carseg_get_threads() OpenMP threads (nn_sgemm's tiles, OpenBLAS's kernel: the ceiling) */
static void tiled_sgemm(int N, int Nout, int K, const float *x, const float *w, float *y) {
    tiling tl = tiles(N, Nout, K);
    int nt = tl.tm * tl.tn, th = carseg_get_threads();
    th = th < nt ? th : nt;
#pragma omp parallel for schedule(dynamic, 1) num_threads(th) if (th > 1)
    for (int t = 0; t < nt; t++) {
        int i0 = t / tl.tn * tl.mt, j0 = t % tl.tn * tl.nt;
        int m = N - i0 < tl.mt ? N - i0 : tl.mt, n = Nout - j0 < tl.nt ? Nout - j0 : tl.nt;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, K, 1, x + (size_t)i0 * K, K,
                    w + (size_t)j0 * K, K, 0, y + (size_t)i0 * Nout + j0, Nout);
    }
}

/* The four products of one block (qkv, out, fc, proj) on N tokens, width C, MLP M: wall GFLOP/s
 * and GFLOP per CPU-second (*per_cpu). */
static double block_sgemm_gflops(int N, int C, int M, double *per_cpu) {
    float *x = falloc((size_t)N * M), *w = falloc((size_t)3 * C * M);
    float *y = falloc((size_t)N * (M > 3 * C ? M : 3 * C));
    uint64_t s = 1;
    for (size_t i = 0; i < (size_t)N * M; i++) x[i] = frand(&s);
    for (size_t i = 0; i < (size_t)3 * C * M; i++) w[i] = 0.02f * frand(&s);
    double flops = 2.0 * N * C * (3.0 * C + C + 2.0 * M);
    int prev = openblas_get_num_threads();
    openblas_set_num_threads(1);
    timing t;
    TIME_BEST(({
        tiled_sgemm(N, 3 * C, C, x, w, y);
        tiled_sgemm(N, C, C, x, w, y);
        tiled_sgemm(N, M, C, x, w, y);
        tiled_sgemm(N, C, M, x, w, y);
    }), t);
    openblas_set_num_threads(prev);
    free(x), free(w), free(y);
    if (per_cpu) *per_cpu = flops / (t.cpu * 1e6);
    return flops / (t.wall * 1e6);
}

/* One product with OpenBLAS's own threads (for comparison with the OpenMP tiles). */
static double openblas_threaded_gflops(int N, int K, int Nout, int nt) {
    float *x = falloc((size_t)N * K), *w = falloc((size_t)Nout * K);
    float *y = falloc((size_t)N * Nout);
    uint64_t s = 2;
    for (size_t i = 0; i < (size_t)N * K; i++) x[i] = frand(&s);
    for (size_t i = 0; i < (size_t)Nout * K; i++) w[i] = frand(&s);
    int prev = openblas_get_num_threads();
    openblas_set_num_threads(nt);
    timing t;
    TIME_BEST(cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Nout, K, 1, x, K, w, K, 0, y,
                          Nout), t);
    openblas_set_num_threads(prev);
    free(x), free(w), free(y);
    return 2.0 * N * K * Nout / (t.wall * 1e6);
}

static timing time_image(const carseg_clip *m, int H, int W, float *feat) {
    float *x = falloc((size_t)3 * H * W);
    uint64_t s = 3;
    for (size_t i = 0; i < (size_t)3 * H * W; i++) x[i] = frand(&s);
    timing t;
    TIME_BEST(({
        if (carseg_clip_encode_images_hw(m, x, 1, H, W, 0, feat) != CARSEG_OK) {
            fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
            exit(1);
        }
    }), t);
    free(x);
    return t;
}

/* the prompts of scripts/bench_torch_clip.py: lengths 5..16 (SOT ... EOT) */
static int32_t *make_prompts(int n, int ctx, double *flops, const bench_clip_shape *c) {
    int32_t *t = calloc((size_t)n * ctx, sizeof(int32_t));
    uint64_t s = 4;
    *flops = 0;
    for (int i = 0; i < n; i++) {
        int len = 5 + (i * 7) % 12;
        t[(size_t)i * ctx] = CARSEG_TOKEN_SOT;
        for (int j = 1; j < len - 1; j++) t[(size_t)i * ctx + j] = 1 + (int)((frand(&s) + 1) * 24000);
        t[(size_t)i * ctx + len - 1] = CARSEG_TOKEN_EOT;
        *flops += bench_text_flops(c, len);
    }
    return t;
}

/* the model files, and the peak resident memory outside their loading */
static char g_dir[512], g_b16[600], g_l14[600];
static double g_peak;
static int g_no_reset;   /* the peak could not be reset: it includes the loading */
static void note_peak(void) {
    double p = bench_status_mb("VmHWM:");
    if (p > g_peak) g_peak = p;
}
static carseg_clip *load(const char *path) {
    note_peak();
    carseg_clip *m = NULL;
    if (carseg_clip_load(path, &m) != CARSEG_OK) {
        fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
        exit(1);
    }
    if (bench_reset_peak_rss() != 0) g_no_reset = 1;
    return m;
}
static void remove_files(void) {
    unlink(g_b16), unlink(g_l14), rmdir(g_dir);
}

/* runs the PyTorch baseline; fills ms per case or returns 0 when unavailable */
typedef struct { timing b16_224, b16_512, l14_224, text300; char version[32]; } torch_times;

static int run_torch(int threads, torch_times *tt) {
    memset(tt, 0, sizeof *tt);
    if (getenv("CARSEG_BENCH_NO_TORCH")) { printf("  (PyTorch baseline skipped: CARSEG_BENCH_NO_TORCH)\n"); return 0; }
    if (access("scripts/bench_torch_clip.py", R_OK)) {
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
    if (!strchr(buf, '{')) { printf("  (PyTorch baseline: unreadable output)\n"); return 0; }
    const char *keys[4] = {"b16_224", "b16_512x384", "l14_224", "text300"};
    timing *dst[4] = {&tt->b16_224, &tt->b16_512, &tt->l14_224, &tt->text300};
    for (int k = 0; k < 4; k++) {
        char ck[64];
        snprintf(ck, sizeof ck, "%s_cpu", keys[k]);
        dst[k]->wall = bench_json_num(buf, keys[k], 0);
        dst[k]->cpu = bench_json_num(buf, ck, 0);
    }
    bench_json_str(buf, "torch", tt->version, sizeof tt->version);
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

/* the image cases in the AMX modes (model m: ViT-B/16 when !l14, else ViT-L/14); each mode set
 * from float32, so that the resident memory it adds is its own packs' */
static void amx_rows(carseg_clip *m, int l14, const torch_times *tt) {
    static const carseg_precision modes[2] = {CARSEG_PRECISION_BF16X3, CARSEG_PRECISION_BF16};
    const bench_clip_shape *c = l14 ? &BENCH_L14 : &BENCH_B16;
    float feat[1024];
    for (int k = 0; k < 2; k++) {
        malloc_trim(0);
        double rss0 = bench_status_mb("VmRSS:");
        if (carseg_clip_set_precision(m, modes[k]) != CARSEG_OK) {
            fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
            exit(1);
        }
        double added = bench_status_mb("VmRSS:") - rss0;
        const char *mn = carseg_precision_name(modes[k]);
        char name[64];
        if (!l14) {
            snprintf(name, sizeof name, "ViT-B/16 224x224 %s", mn);
            row_amx(name, time_image(m, 224, 224, feat), bench_image_flops(c, 14, 14, 12) * 1e-9,
                    tt->b16_224);
            snprintf(name, sizeof name, "ViT-B/16 512x384 %s", mn);
            row_amx(name, time_image(m, 384, 512, feat), bench_image_flops(c, 24, 32, 12) * 1e-9,
                    tt->b16_512);
        } else {
            snprintf(name, sizeof name, "ViT-L/14 224x224 %s", mn);
            row_amx(name, time_image(m, 224, 224, feat), bench_image_flops(c, 16, 16, 24) * 1e-9,
                    tt->l14_224);
        }
        if (modes[k] == CARSEG_PRECISION_BF16X3)
            printf("    packed weights: %.0f MB beyond the float32 weights (resident memory added by "
                   "the mode; the lossless planes live in the float32 matrices; the last block and "
                   "the patch embedding apart)\n", added * 1.048576);
        else
            printf("    packed weights %.0f MB beside the float32 weights (resident memory added by the "
                   "mode; Grad-CAM reads those)\n", added * 1.048576);
        carseg_clip_set_precision(m, CARSEG_PRECISION_FP32);
    }
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
    printf("sgemm (single-threaded OpenBLAS in nn_sgemm's OpenMP tiles) on the block products,\n"
           "GFLOP/s wall (GFLOP per CPU-second):\n");
    printf("  ViT-B/16 197 tokens %.1f (%.1f), 769 tokens %.1f (%.1f), ViT-L/14 257 tokens %.1f (%.1f),\n"
           "  text 768 rows %.1f (%.1f)\n", w_b16, c_b16, w_b16l, c_b16l, w_l14, c_l14, w_txt, c_txt);
    printf("  OpenBLAS's own %d threads on 197x768 @ 768x3072: %.1f GFLOP/s wall\n", nt,
           openblas_threaded_gflops(197, 768, 3072, nt));

    torch_times tt;
    int have_torch = run_torch(nt, &tt);
    if (have_torch) printf("PyTorch %s baseline, %d threads (scripts/bench_torch_clip.py)\n", tt.version, nt);

    const bench_clip_shape *cb = &BENCH_B16, *cl = &BENCH_L14;
    if (bench_tmpdir(g_dir, sizeof g_dir)) {
        perror("bench_clip: temporary folder");
        return 1;
    }
    snprintf(g_b16, sizeof g_b16, "%s/vit-b16-random.safetensors", g_dir);
    snprintf(g_l14, sizeof g_l14, "%s/vit-l14-random.safetensors", g_dir);
    atexit(remove_files);
    if (bench_write_clip(g_b16, cb, 1) || bench_write_clip(g_l14, cl, 2)) {
        perror("bench_clip: writing the random models");
        return 1;
    }
    carseg_clip *m = load(g_b16);
    float feat[1024];
    timing ms = time_image(m, 224, 224, feat);
    for (int i = 0; i < cb->embed; i++)
        if (!isfinite(feat[i])) { fprintf(stderr, "bench_clip: non-finite feature\n"); return 1; }
    printf("towers:\n");
    row("ViT-B/16 image 224x224", ms, bench_image_flops(cb, 14, 14, 12) * 1e-9, c_b16, tt.b16_224);
    ms = time_image(m, 384, 512, feat);
    row("ViT-B/16 image 512x384", ms, bench_image_flops(cb, 24, 32, 12) * 1e-9, c_b16l, tt.b16_512);
    /* text: 300 prompts */
    double tfl;
    int32_t *tok = make_prompts(300, CARSEG_CONTEXT, &tfl, cb);
    float *tf = malloc(sizeof(float) * 300 * cb->embed);
    timing best;
    TIME_BEST(({
        if (carseg_clip_encode_tokens(m, tok, 300, CARSEG_CONTEXT, tf) != CARSEG_OK) {
            fprintf(stderr, "bench_clip: %s\n", carseg_last_error());
            return 1;
        }
    }), best);
    row("ViT-B/16 text, 300 prompts", best, tfl * 1e-9, c_txt, tt.text300);
    printf("  (text GFLOP counts each prompt up to its EOT token, as computed; PyTorch runs all 77\n"
           "   positions: %.1f GFLOP)\n", 300 * bench_text_flops(cb, 77) * 1e-9);
    free(tok), free(tf);
    /* AMX: available when the mode can be set (else the reason, from the library) */
    int amx = carseg_clip_set_precision(m, CARSEG_PRECISION_BF16X3) == CARSEG_OK;
    if (amx) {
        carseg_clip_set_precision(m, CARSEG_PRECISION_FP32);
        amx_rows(m, 0, &tt);
    } else {
        printf("  (AMX rows skipped: %s)\n", carseg_last_error());
    }
    carseg_clip_free(m);
    m = load(g_l14);
    ms = time_image(m, 224, 224, feat);
    row("ViT-L/14 image 224x224", ms, bench_image_flops(cl, 16, 16, 24) * 1e-9, c_l14, tt.l14_224);
    if (amx) amx_rows(m, 1, &tt);
    carseg_clip_free(m);

    /* one thread: the efficiency of the tower against sgemm without waiting on a second core */
    carseg_set_threads(1);
    double c1;
    double w1 = block_sgemm_gflops(197, 768, 3072, &c1);
    m = load(g_b16);
    ms = time_image(m, 224, 224, feat);
    timing none = {0, 0};
    printf("one thread (sgemm on the block products %.1f GFLOP/s, %.1f per CPU-second):\n", w1, c1);
    row("ViT-B/16 image 224x224", ms, bench_image_flops(cb, 14, 14, 12) * 1e-9, c1, none);
    carseg_clip_free(m);
    carseg_set_threads(nt);
    note_peak();
    if (!g_no_reset) {
        printf("peak resident memory of this run: %.0f MB (outside the loading of the model files)\n", g_peak);
    } else {
        printf("peak resident memory of this run: %.0f MB (with the loading of the model files)\n",
               bench_status_mb("VmHWM:"));
    }
    return 0;
}
