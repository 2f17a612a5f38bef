/* bench_sam.c — HQ-SAM through the public API only (carseg.h: carseg_sam_load, _set_image,
 * _predict, _generate): the image encoder, the decoder per prompt (a batch of 64 single-point
 * prompts, as the generator's batches), the whole automatic mask generator, and each model's peak
 * resident memory (getrusage ru_maxrss of a child process per model).
 *
 * Models: the fixture HQ-SAM ../shared/fixtures/sam/samt.safetensors (a SMALL RANDOM-WEIGHT model:
 * ViT embed 64, depth 4; its times say nothing about a real checkpoint), then a random-weight
 * HQ-SAM ViT-B of the real shapes (embed 768, depth 12, 12 heads, global blocks 2/5/8/11, window
 * 14; decoder 256 wide, 8 heads), written here as a float32 safetensors file in $TMPDIR and
 * deleted afterwards. Random weights make the masks meaningless; the work per prompt is that of
 * a real checkpoint. The thresholds are 0 so that the selection keeps every mask.
 *
 *   bench_sam [--points N] [--vitb-points N] [--arch vit_b|vit_l|vit_h] [--no-vitb] [--image FILE]
 *     --points N       the generator's points per side on the fixture model (default 16)
 *     --vitb-points N  the same on the large model (default 8: 64 prompts; CaR's setting is 64,
 *                      4 096 prompts, about 100x longer)
 *     --arch A         the large model's architecture (default vit_b; vit_h's file is 2.5 GB)
 *     --no-vitb        the fixture model only
 *     --reps N         the 64-prompt decoder call N times, the best wall time reported (default 1)
 *     --image FILE     default ../shared/fixtures/sam/coffee_360x240/input.png
 * Threads: carseg_set_threads / OMP_NUM_THREADS (default all cores). Prints the CPU (model name,
 * whether avx512f and amx_tile are present) and the load average: figures taken while the machine
 * is loaded are not figures. Skips (exit 0) when the fixtures are missing. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"
#include "carseg.h"

static double now_s(void) { return bench_now_ms() / 1e3; }

/* a stage's wall and process CPU seconds */
typedef struct { double wall, cpu; } stamp;
static stamp stamp_now(void) { return (stamp){now_s(), bench_cpu_ms() / 1e3}; }
static stamp since(stamp t0) {
    stamp t = stamp_now();
    return (stamp){t.wall - t0.wall, t.cpu - t0.cpu};
}

static int exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void print_cpu(void) {
    char line[8192], model[256] = "?";
    int avx512f = 0, amx = 0, avx2 = 0, have_flags = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (!c) continue;
        if (!strncmp(line, "model name", 10) && model[0] == '?') {
            snprintf(model, sizeof model, "%s", c + 2);
            model[strcspn(model, "\n")] = 0;
        } else if (!strncmp(line, "flags", 5) && !have_flags) {
            have_flags = 1;
            avx512f = strstr(c, " avx512f") != NULL;
            amx = strstr(c, " amx_tile") != NULL;
            avx2 = strstr(c, " avx2") != NULL;
        }
    }
    if (f) fclose(f);
    double la[3] = {-1, -1, -1};
    if ((f = fopen("/proc/loadavg", "r"))) {
        if (fscanf(f, "%lf %lf %lf", &la[0], &la[1], &la[2]) != 3) la[0] = -1;
        fclose(f);
    }
    printf("bench_sam: CPU %s (avx2 %s, avx512f %s, amx_tile %s), %ld cores online, %d threads "
           "(0 = all), load average %.2f\n", model, avx2 ? "yes" : "no", avx512f ? "yes" : "no",
           amx ? "yes" : "no", sysconf(_SC_NPROCESSORS_ONLN), carseg_get_threads(), la[0]);
    if (la[0] > 2.5)
        printf("bench_sam: WARNING: load average %.2f > 2.5: other work shares the CPU, the times "
               "below are not figures\n", la[0]);
}

// ---------------------------------------------------------------------------------------------
// a random-weight HQ-SAM of given shapes, as the tensors of segment_anything's state dict

typedef struct {
    int E, depth, heads, glob[8], n_glob, window, D, mlp, iou_hidden;
} hq_shape;

enum { K_W, K_B, K_ONE, K_ZERO, K_EMB, K_SMALL };   /* how a tensor is filled */

typedef struct {
    FILE *f;        /* pass 2: the data goes here */
    char *hdr;      /* pass 1: the JSON header grows here */
    size_t hlen, hcap;
    uint64_t off;   /* bytes of data so far */
    uint64_t rng;
    int pass, bad;
} st_writer;

static void hdr_put(st_writer *w, const char *s) {
    size_t n = strlen(s);
    if (w->hlen + n + 1 > w->hcap) {
        size_t nc = (w->hcap + n + 1) * 2;
        char *p = realloc(w->hdr, nc);
        if (!p) { w->bad = 1; return; }
        w->hdr = p, w->hcap = nc;
    }
    memcpy(w->hdr + w->hlen, s, n + 1);
    w->hlen += n;
}

static float urand(st_writer *w) {   /* uniform in [-1, 1) (xorshift64*) */
    w->rng ^= w->rng >> 12, w->rng ^= w->rng << 25, w->rng ^= w->rng >> 27;
    return (float)((w->rng * 2685821657736338717ull >> 40) / (double)(1ull << 24) * 2 - 1);
}

/* one tensor: pass 1 adds its header entry, pass 2 writes its values */
static void tensor(st_writer *w, int kind, const char *name, int nd, int d0, int d1, int d2, int d3) {
    int d[4] = {d0, d1, d2, d3};
    uint64_t n = 1, fan_in = 1;
    for (int i = 0; i < nd; i++) n *= (uint64_t)d[i];
    for (int i = 1; i < nd; i++) fan_in *= (uint64_t)d[i];
    if (w->pass == 1) {
        char e[512];
        int k = snprintf(e, sizeof e, "%s\"%s\": {\"dtype\": \"F32\", \"shape\": [", w->hlen > 1 ? ", " : "", name);
        for (int i = 0; i < nd; i++) k += snprintf(e + k, sizeof e - k, i ? ", %d" : "%d", d[i]);
        snprintf(e + k, sizeof e - k, "], \"data_offsets\": [%llu, %llu]}", (unsigned long long)w->off,
                 (unsigned long long)(w->off + 4 * n));
        hdr_put(w, e);
        w->off += 4 * n;
        return;
    }
    float buf[4096];
    float scale = kind == K_W ? 1.f / sqrtf((float)(nd > 1 ? fan_in : 1)) : kind == K_B ? 0.02f
                  : kind == K_SMALL ? 0.02f : 1.f;
    for (uint64_t i = 0; i < n;) {
        size_t m = n - i < 4096 ? (size_t)(n - i) : 4096;
        for (size_t j = 0; j < m; j++)
            buf[j] = kind == K_ONE ? 1.f : kind == K_ZERO ? 0.f : scale * urand(w);
        if (fwrite(buf, 4, m, w->f) != m) w->bad = 1;
        i += m;
    }
}

#define T1(k, n, a) tensor(w, k, n, 1, a, 0, 0, 0)
#define T2(k, n, a, b) tensor(w, k, n, 2, a, b, 0, 0)
#define T4(k, n, a, b, c, e) tensor(w, k, n, 4, a, b, c, e)

static void linear(st_writer *w, const char *pre, int out, int in) {
    char n[256];
    snprintf(n, sizeof n, "%s.weight", pre), T2(K_W, n, out, in);
    snprintf(n, sizeof n, "%s.bias", pre), T1(K_B, n, out);
}

static void norm(st_writer *w, const char *pre, int c) {
    char n[256];
    snprintf(n, sizeof n, "%s.weight", pre), T1(K_ONE, n, c);
    snprintf(n, sizeof n, "%s.bias", pre), T1(K_ZERO, n, c);
}

/* conv (out, in, k, k) or transposed conv (in, out, k, k) with a bias of `nb` */
static void conv(st_writer *w, const char *pre, int a, int b, int k, int nb) {
    char n[256];
    snprintf(n, sizeof n, "%s.weight", pre), T4(K_W, n, a, b, k, k);
    if (nb) snprintf(n, sizeof n, "%s.bias", pre), T1(K_B, n, nb);
}

static void attn(st_writer *w, const char *pre, int D, int inner) {
    char n[256];
    const char *p[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; i++) snprintf(n, sizeof n, "%s.%s", pre, p[i]), linear(w, n, inner, D);
    snprintf(n, sizeof n, "%s.out_proj", pre), linear(w, n, D, inner);
}

static void mlp3(st_writer *w, const char *pre, int in, int hid, int out) {
    char n[256];
    snprintf(n, sizeof n, "%s.layers.0", pre), linear(w, n, hid, in);
    snprintf(n, sizeof n, "%s.layers.1", pre), linear(w, n, hid, hid);
    snprintf(n, sizeof n, "%s.layers.2", pre), linear(w, n, out, hid);
}

/* the tensors of an HQ-SAM (segment_anything's sam_model_registry + MaskDecoderHQ), in the order
 * of its state dict */
static void hq_tensors(st_writer *w, const hq_shape *s) {
    const int E = s->E, D = s->D;
    char n[256], b[200];
    T4(K_SMALL, "image_encoder.pos_embed", 1, 64, 64, E);
    conv(w, "image_encoder.patch_embed.proj", E, 3, 16, E);
    for (int i = 0; i < s->depth; i++) {
        int g = 0;
        for (int j = 0; j < s->n_glob; j++) g |= s->glob[j] == i;
        int S = g ? 64 : s->window;
        snprintf(b, sizeof b, "image_encoder.blocks.%d", i);
        snprintf(n, sizeof n, "%s.norm1", b), norm(w, n, E);
        snprintf(n, sizeof n, "%s.attn.rel_pos_h", b), T2(K_SMALL, n, 2 * S - 1, E / s->heads);
        snprintf(n, sizeof n, "%s.attn.rel_pos_w", b), T2(K_SMALL, n, 2 * S - 1, E / s->heads);
        snprintf(n, sizeof n, "%s.attn.qkv", b), linear(w, n, 3 * E, E);
        snprintf(n, sizeof n, "%s.attn.proj", b), linear(w, n, E, E);
        snprintf(n, sizeof n, "%s.norm2", b), norm(w, n, E);
        snprintf(n, sizeof n, "%s.mlp.lin1", b), linear(w, n, 4 * E, E);
        snprintf(n, sizeof n, "%s.mlp.lin2", b), linear(w, n, E, 4 * E);
    }
    conv(w, "image_encoder.neck.0", D, E, 1, 0);
    norm(w, "image_encoder.neck.1", D);
    conv(w, "image_encoder.neck.2", D, D, 3, 0);
    norm(w, "image_encoder.neck.3", D);
    T2(K_EMB, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", 2, D / 2);
    for (int i = 0; i < 4; i++)
        snprintf(n, sizeof n, "prompt_encoder.point_embeddings.%d.weight", i), T2(K_EMB, n, 1, D);
    T2(K_EMB, "prompt_encoder.not_a_point_embed.weight", 1, D);
    conv(w, "prompt_encoder.mask_downscaling.0", 4, 1, 2, 4);
    norm(w, "prompt_encoder.mask_downscaling.1", 4);
    conv(w, "prompt_encoder.mask_downscaling.3", 16, 4, 2, 16);
    norm(w, "prompt_encoder.mask_downscaling.4", 16);
    conv(w, "prompt_encoder.mask_downscaling.6", D, 16, 1, D);
    T2(K_EMB, "prompt_encoder.no_mask_embed.weight", 1, D);
    for (int l = 0; l < 2; l++) {
        snprintf(b, sizeof b, "mask_decoder.transformer.layers.%d", l);
        snprintf(n, sizeof n, "%s.self_attn", b), attn(w, n, D, D);
        snprintf(n, sizeof n, "%s.norm1", b), norm(w, n, D);
        snprintf(n, sizeof n, "%s.cross_attn_token_to_image", b), attn(w, n, D, D / 2);
        snprintf(n, sizeof n, "%s.norm2", b), norm(w, n, D);
        snprintf(n, sizeof n, "%s.mlp.lin1", b), linear(w, n, s->mlp, D);
        snprintf(n, sizeof n, "%s.mlp.lin2", b), linear(w, n, D, s->mlp);
        snprintf(n, sizeof n, "%s.norm3", b), norm(w, n, D);
        snprintf(n, sizeof n, "%s.norm4", b), norm(w, n, D);
        snprintf(n, sizeof n, "%s.cross_attn_image_to_token", b), attn(w, n, D, D / 2);
    }
    attn(w, "mask_decoder.transformer.final_attn_token_to_image", D, D / 2);
    norm(w, "mask_decoder.transformer.norm_final_attn", D);
    T2(K_EMB, "mask_decoder.iou_token.weight", 1, D);
    T2(K_EMB, "mask_decoder.mask_tokens.weight", 4, D);
    conv(w, "mask_decoder.output_upscaling.0", D, D / 4, 2, D / 4);
    norm(w, "mask_decoder.output_upscaling.1", D / 4);
    conv(w, "mask_decoder.output_upscaling.3", D / 4, D / 8, 2, D / 8);
    for (int i = 0; i < 4; i++)
        snprintf(n, sizeof n, "mask_decoder.output_hypernetworks_mlps.%d", i), mlp3(w, n, D, D, D / 8);
    mlp3(w, "mask_decoder.iou_prediction_head", D, s->iou_hidden, 4);
    T2(K_EMB, "mask_decoder.hf_token.weight", 1, D);
    mlp3(w, "mask_decoder.hf_mlp", D, D, D / 8);
    conv(w, "mask_decoder.compress_vit_feat.0", E, D, 2, D);
    norm(w, "mask_decoder.compress_vit_feat.1", D);
    conv(w, "mask_decoder.compress_vit_feat.3", D, D / 8, 2, D / 8);
    conv(w, "mask_decoder.embedding_encoder.0", D, D / 4, 2, D / 4);
    norm(w, "mask_decoder.embedding_encoder.1", D / 4);
    conv(w, "mask_decoder.embedding_encoder.3", D / 4, D / 8, 2, D / 8);
    conv(w, "mask_decoder.embedding_maskfeature.0", D / 4, D / 8, 3, D / 4);
    norm(w, "mask_decoder.embedding_maskfeature.1", D / 4);
    conv(w, "mask_decoder.embedding_maskfeature.3", D / 8, D / 4, 3, D / 8);
}

/* writes the random HQ-SAM as a safetensors file; 0 = done */
static int write_hq(const char *path, const hq_shape *s, uint64_t *bytes) {
    st_writer w = {0};
    w.rng = 0x9e3779b97f4a7c15ull;
    w.pass = 1;
    hdr_put(&w, "{");
    hq_tensors(&w, s);
    hdr_put(&w, "}");
    while (!w.bad && w.hlen % 8) hdr_put(&w, " ");   /* the data starts 8-byte aligned */
    if (w.bad || !(w.f = fopen(path, "wb"))) { free(w.hdr); return -1; }
    uint64_t hl = w.hlen;
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(hl >> (8 * i));
    if (fwrite(le, 1, 8, w.f) != 8 || fwrite(w.hdr, 1, w.hlen, w.f) != w.hlen) w.bad = 1;
    uint64_t total = w.off;
    w.pass = 2;
    w.off = 0;
    if (!w.bad) hq_tensors(&w, s);
    if (fclose(w.f) != 0) w.bad = 1;
    free(w.hdr);
    *bytes = 8 + hl + total;
    return w.bad ? -1 : 0;
}

// ---------------------------------------------------------------------------------------------
// the measurements, in a child process per model (its own ru_maxrss)

static int fail(const char *what) {
    fprintf(stderr, "bench_sam: %s: %s\n", what, carseg_last_error());
    return 1;
}

static int g_reps = 1;

static int run_model(const char *label, const char *path, const char *image, int pps) {
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    if (carseg_image_load(image, &rgb, &w, &h) != CARSEG_OK) return fail(image);
    carseg_sam *m = NULL;
    stamp t0 = stamp_now();
    if (carseg_sam_load(path, &m) != CARSEG_OK) return fail(path);
    stamp t_load = since(t0);
    /* the encoder: the best of 3 by wall time (1 for a large model: it takes seconds) */
    carseg_sam_image *im = NULL;
    stamp t_enc = {1e30, 1e30};
    int reps = strstr(label, "ViT-") ? 1 : 3;
    for (int r = 0; r < reps; r++) {
        carseg_sam_image_free(im);
        im = NULL;
        t0 = stamp_now();
        if (carseg_sam_set_image(m, rgb, w, h, &im) != CARSEG_OK) return fail("carseg_sam_set_image");
        stamp t = since(t0);
        if (t.wall < t_enc.wall) t_enc = t;
    }
    /* the decoder: one prompt first (it fills the image's decoder cache, as the generator's first
     * prompt does), then 64 single-point prompts of an 8 x 8 grid in one call, multimask as the
     * generator asks */
    enum { NB = 64 };
    float pts[2 * NB], iou[4 * NB];
    int labels[NB];
    carseg_sam_prompt pr[NB];
    for (int i = 0; i < NB; i++) {
        pts[2 * i] = (float)((i % 8 + 0.5) * w / 8), pts[2 * i + 1] = (float)((i / 8 + 0.5) * h / 8);
        labels[i] = 1;
        pr[i] = (carseg_sam_prompt){1, pts + 2 * i, labels + i, NULL};
    }
    int k = carseg_sam_masks_per_prompt(m, 1);
    float *logits = malloc(sizeof(float) * (size_t)NB * k * w * h);
    if (!logits) { fprintf(stderr, "bench_sam: out of memory\n"); return 1; }
    t0 = stamp_now();
    if (carseg_sam_predict(m, im, pr, 1, 1, 0, iou, logits) != CARSEG_OK) return fail("carseg_sam_predict");
    stamp t_first = since(t0);
    stamp t_batch = {1e30, 1e30};
    for (int r = 0; r < g_reps; r++) {
        t0 = stamp_now();
        if (carseg_sam_predict(m, im, pr, NB, 1, 0, iou, logits) != CARSEG_OK) return fail("carseg_sam_predict");
        stamp t = since(t0);
        if (t.wall < t_batch.wall) t_batch = t;
    }
    free(logits);
    /* the generator on the encoded image (thresholds 0: every mask goes through the selection) */
    carseg_sam_amg_params ap;
    carseg_sam_amg_init(&ap);
    ap.points_per_side = pps;
    ap.pred_iou_thresh = 0, ap.stability_score_thresh = 0;
    carseg_sam_records *recs = NULL;
    t0 = stamp_now();
    if (carseg_sam_generate(m, im, &ap, &recs) != CARSEG_OK) return fail("carseg_sam_generate");
    stamp t_gen = since(t0);
    int n_rec = carseg_sam_records_count(recs);
    carseg_sam_records_free(recs);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double np = (double)pps * pps;
    printf("bench_sam: %s, image %dx%d, %s\n", label, w, h, carseg_sam_is_hq(m) ? "HQ-SAM" : "SAM");
    printf("                              wall s     CPU s\n");
    printf("  load                        %8.3f  %8.3f\n", t_load.wall, t_load.cpu);
    printf("  encoder (set_image)         %8.3f  %8.3f%s\n", t_enc.wall, t_enc.cpu, reps > 1 ? "  (best of 3)" : "");
    printf("  decoder, first prompt       %8.3f  %8.3f  (fills the image's decoder cache)\n", t_first.wall, t_first.cpu);
    printf("  decoder, 64 prompts / call  %8.3f  %8.3f  = %.2f ms wall, %.2f ms CPU per prompt "
           "(carseg_sam_predict, multimask%s)\n", t_batch.wall, t_batch.cpu, t_batch.wall * 1e3 / NB,
           t_batch.cpu * 1e3 / NB, g_reps > 1 ? "; best of --reps" : "");
    printf("  generator %4d x %-4d points %8.3f  %8.3f  = %.2f ms wall, %.2f ms CPU per prompt, %d records "
           "(encoder excluded)\n", pps, pps, t_gen.wall, t_gen.cpu, t_gen.wall * 1e3 / np, t_gen.cpu * 1e3 / np, n_rec);
    printf("  encoder + generator         %8.3f  %8.3f\n", t_enc.wall + t_gen.wall, t_enc.cpu + t_gen.cpu);
    printf("  peak resident memory        %9.1f MB  (ru_maxrss of this model's process)\n", ru.ru_maxrss / 1024.0);
    carseg_sam_image_free(im);
    carseg_sam_free(m);
    carseg_image_free(rgb);
    return 0;
}

/* run_model in a child process (its own ru_maxrss): 0 = it exited 0 */
static int in_child(const char *label, const char *path, const char *image, int pps) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { perror("bench_sam: fork"); return 1; }
    if (pid == 0) {
        int rc = run_model(label, path, image, pps);
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) < 0) { perror("bench_sam: waitpid"); return 1; }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    int pps = 16, vitb_pps = 8, vitb = 1;
    const char *image = NULL, *arch = "vit_b";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--points") && i + 1 < argc) pps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--vitb-points") && i + 1 < argc) vitb_pps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-vitb")) vitb = 0;
        else if (!strcmp(argv[i], "--arch") && i + 1 < argc) arch = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--image") && i + 1 < argc) image = argv[++i];
        else {
            fprintf(stderr, "usage: bench_sam [--points N] [--vitb-points N] [--arch vit_b|vit_l|vit_h] "
                            "[--no-vitb] [--reps N] [--image FILE]\n");
            return 2;
        }
    }
    /* segment_anything's build_sam_vit_{b,l,h}: embed, depth, heads, global blocks */
    static const struct { const char *name, *label; hq_shape s; } archs[] = {
        {"vit_b", "HQ-SAM ViT-B, RANDOM WEIGHTS of the real shapes", {768, 12, 12, {2, 5, 8, 11}, 4, 14, 256, 2048, 256}},
        {"vit_l", "HQ-SAM ViT-L, RANDOM WEIGHTS of the real shapes", {1024, 24, 16, {5, 11, 17, 23}, 4, 14, 256, 2048, 256}},
        {"vit_h", "HQ-SAM ViT-H, RANDOM WEIGHTS of the real shapes", {1280, 32, 16, {7, 15, 23, 31}, 4, 14, 256, 2048, 256}},
    };
    int ai = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(arch, archs[i].name)) ai = i;
    if (ai < 0) {
        fprintf(stderr, "bench_sam: --arch: unknown architecture '%s' (vit_b, vit_l or vit_h)\n", arch);
        return 2;
    }
    if (g_reps < 1 || g_reps > 1000) {
        fprintf(stderr, "bench_sam: --reps must be in [1, 1000]\n");
        return 2;
    }
    if (pps < 1 || pps > 1024 || vitb_pps < 1 || vitb_pps > 1024) {
        fprintf(stderr, "bench_sam: points per side must be in [1, 1024]\n");
        return 2;
    }
    char fx[1024], ib[1024];
    bench_shared("fixtures/sam/samt.safetensors", fx, sizeof fx);
    if (!image) image = bench_shared("fixtures/sam/coffee_360x240/input.png", ib, sizeof ib);
    if (!exists(fx) || !exists(image)) {
        printf("bench_sam: fixtures missing (%s or %s; set CARSEG_SHARED), skipped\n", fx, image);
        return 0;
    }
    print_cpu();
    int rc = in_child("fixture samt.safetensors (SMALL RANDOM-WEIGHT HQ-SAM: ViT embed 64, depth 4, "
                      "decoder 32 wide; not a real model's speed)", fx, image, pps);
    if (rc || !vitb) return rc;
    const char *tmp = getenv("TMPDIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/carseg_bench_sam_%s_%ld.safetensors", tmp && *tmp ? tmp : "/tmp",
             arch, (long)getpid());
    uint64_t bytes = 0;
    double t0 = now_s();
    if (write_hq(path, &archs[ai].s, &bytes) != 0) {
        fprintf(stderr, "bench_sam: cannot write %s (disk space?)\n", path);
        remove(path);
        return 1;
    }
    printf("bench_sam: wrote a random-weight HQ-SAM %s (real shapes, float32) to %s: %.1f MB, %.1f s\n",
           arch, path, bytes / 1048576.0, now_s() - t0);
    rc = in_child(archs[ai].label, path, image, vitb_pps);
    remove(path);
    return rc;
}
