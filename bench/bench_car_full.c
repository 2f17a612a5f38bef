/* bench_car_full.c — issue 3's benchmark: one 500x375 VOC photo with the 20 VOC classes through
 * the whole CaR method (car_segment with the voc preset: text, generator trunk + affinity, Grad-CAM
 * proposals, visual prompts, classifier, CRF, label map) on random weights of the real shapes
 * (ViT-B/16 mask generator at 512x384, ViT-L/14 classifier at 224, both with their real text
 * towers and vocabulary). Prints ms per stage and per round against the live queries, the FLOP
 * count, GFLOP/s (wall and per CPU-second), peak RSS against the weights' size, load average.
 *
 * usage: bench_car_full [threads (0 = OpenMP default)] [theta]
 * BENCH_PRECISION=fp32|bf16x3|bf16|auto (environment): the towers' precision mode (AMX modes need an AMX
 * CPU; the packing time is reported apart and not counted in the stages).
 * theta: random weights give near-uniform classifier probabilities (about 1/n per query), so the
 * voc preset's 0.6 would drop all but the argmax fallback; the default picks a threshold under
 * which this image and seed go 20 -> k -> k (see the printed rounds). Skips when the image or the
 * vocabulary is missing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "car.h"
#include "presets.h"
#include "prompts.h"
#include "util.h"

static const char *shared(const char *rel, char *buf, size_t n) {
    const char *root = getenv("CARSEG_SHARED");
    static const char *tries[] = {"../shared", "../../shared", "/work/shared"};
    for (int i = 0; !root && i < 3; i++) {
        char probe[512];
        snprintf(probe, sizeof probe, "%s/data", tries[i]);
        if (file_exists(probe)) root = tries[i];
    }
    snprintf(buf, n, "%s/%s", root ? root : "../shared", rel);
    return buf;
}

/* parameters of clip_init_random's arena (vision + text), in floats */
static double n_params(const clip_config *c) {
    double C = c->v_width, P = c->v_patch, Ct = c->t_width, E = c->embed, M = 4 * C, Mt = 4 * Ct;
    double np = 1.0 + (double)c->v_grid * c->v_grid;
    double bv = 4 * C + 3 * C * C + 3 * C + C * C + C + 2 * M * C + M + C;
    double bt = 4 * Ct + 3 * Ct * Ct + 3 * Ct + Ct * Ct + Ct + 2 * Mt * Ct + Mt + Ct;
    return C * 3 * P * P + C + np * C + 4 * C + C * E + bv * c->v_layers + (double)c->t_vocab * Ct +
           (double)c->t_ctx * Ct + 2 * Ct + Ct * E + bt * c->t_layers;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}
static double maxrss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}
static double load1(void) {
    double l[3] = {0};
    return getloadavg(l, 3) > 0 ? l[0] : -1;
}

/* text-tower FLOPs of strings format(tpl, q[i]) (tpl NULL: raw), each to its EOT */
static double text_flops(const clip_model *m, const tokenizer *tok, const char *tpl,
                         const char *const *q, int n) {
    int32_t ids[77];
    double f = 0;
    for (int i = 0; i < n; i++) {
        char *s = tpl ? car_format(tpl, q[i]) : cs_strdup(q[i]);
        int L = s ? tok_tokenize(tok, s, ids, m->cfg.t_ctx) : 0;
        f += clip_text_flops(&m->cfg, L);
        free(s);
    }
    return f;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    double theta_arg = argc > 2 ? atof(argv[2]) : -1;
    char ip[1024], v[1024];
    shared("data/voc_mini/VOCdevkit/VOC2012/JPEGImages/2011_000006.jpg", ip, sizeof ip);
    shared("clip/bpe_simple_vocab_16e6.txt.gz", v, sizeof v);
    if (!file_exists(ip) || !file_exists(v)) {
        printf("bench_car_full: %s or the vocabulary missing (set CARSEG_SHARED), skipped\n", ip);
        return 0;
    }
    if (threads > 0) carseg_set_threads(threads);
    image_u8 im;
    tokenizer *tok;
    if (image_load_rgb(ip, &im) || tok_open(v, &tok)) {
        fprintf(stderr, "bench_car_full: %s\n", carseg_last_error());
        return 1;
    }
    /* OpenAI ViT-B/16 and ViT-L/14 */
    clip_config cb = {.v_width = 768, .v_layers = 12, .v_patch = 16, .v_grid = 14, .t_width = 512,
                      .t_layers = 12, .t_ctx = 77, .t_vocab = 49408, .embed = 512};
    clip_config cl = {.v_width = 1024, .v_layers = 24, .v_patch = 14, .v_grid = 16, .t_width = 768,
                      .t_layers = 12, .t_ctx = 77, .t_vocab = 49408, .embed = 768};
    clip_model *gen, *cls;
    double t0 = now_ms();
    carseg_status ms = clip_init_random(&cb, 1, &gen);
    if (ms == CARSEG_OK && (ms = clip_init_random(&cl, 2, &cls)) != CARSEG_OK) clip_free(gen);
    if (ms == CARSEG_ENOMEM) {   /* 2.2 GB of weights */
        printf("bench_car_full: %s, skipped\n", carseg_last_error());
        return 0;
    }
    if (ms != CARSEG_OK) {
        fprintf(stderr, "bench_car_full: %s\n", carseg_last_error());
        return 1;
    }
    double ms_init = now_ms() - t0;
    carseg_precision prec = CARSEG_PRECISION_FP32;
    double ms_pack = 0;
    if (getenv("BENCH_PRECISION")) {
        double tp = now_ms();
        if (carseg_precision_parse(getenv("BENCH_PRECISION"), &prec) != CARSEG_OK ||
            carseg_clip_set_precision(gen, prec) != CARSEG_OK ||
            carseg_clip_set_precision(cls, prec) != CARSEG_OK) {
            fprintf(stderr, "bench_car_full: %s\n", carseg_last_error());
            return 1;
        }
        ms_pack = now_ms() - tp;
        prec = carseg_clip_get_precision(cls);   /* auto: the mode taken */
    }
    double wbytes = 4 * (n_params(&gen->cfg) + n_params(&cls->cfg));
    double rss_models = maxrss_mb();

    const car_preset *voc = preset_find("voc");
    car_params p = car_default_params();
    p.eta = voc->eta, p.lambda = voc->lambda, p.n_templates = voc->templates;
    p.bg_factor = voc->bg_factor;
    vp_parse(voc->prompts, &p.prompts);
    p.theta = theta_arg >= 0 ? (float)theta_arg : 0.0508f;
    car_job job;
    memset(&job, 0, sizeof job);
    job.classes = voc->list->classes, job.n_classes = voc->list->n;
    job.things = voc->list->things, job.n_things = voc->list->n_things;
    job.stuff = voc->list->stuff, job.n_stuff = voc->list->n_stuff;
    job.bg = CAR_BG_WORDS, job.nb = 23;
    job.p = p, job.stuff_p = p;
    int N = job.n_classes;
    size_t hw = (size_t)im.w * im.h;
    uint16_t *lab = malloc(sizeof(uint16_t) * hw);
    float *sc = malloc(sizeof(float) * (size_t)N);
    car_ctx *ctx;
    car_image *ci;
    car_stats st;
    memset(&st, 0, sizeof st);
    double l0 = load1(), c0 = cpu_s();
    t0 = now_ms();
    if (car_ctx_new(gen, cls, tok, &ctx) || car_image_new(ctx, &im, &st, &ci) ||
        car_segment(ctx, ci, &job, NULL, lab, sc, NULL, &st)) {
        fprintf(stderr, "bench_car_full: %s\n", carseg_last_error());
        return 1;
    }
    double total = now_ms() - t0, cpu = cpu_s() - c0, l1 = load1();
    long ng, nc;
    car_ctx_text_counts(ctx, &ng, &nc);

    /* FLOPs of the towers (matrix products; the text's last block counted at every token, though
     * only the EOT row runs, and without the padding of a batch to its longest prompt) */
    int gw = (im.w + 15) / 16, gh = (im.h + 15) / 16;
    double f_trunk = clip_image_flops(&gen->cfg, gh, gw, gen->cfg.v_layers);
    /* the classifier: 22 full blocks, then the 23rd at the CLS row only (its K and V at every
     * token: the qkv product over all rows, attention, out-proj and MLP for one row) */
    double Lc = 1.0 + cls->cfg.v_grid * cls->cfg.v_grid, Cc = cls->cfg.v_width, Mc = cls->cfg.v_mlp;
    double f_cls1 = clip_image_flops(&cls->cfg, cls->cfg.v_grid, cls->cfg.v_grid, cls->cfg.v_layers - 2) +
                    2 * Lc * Cc * 3 * Cc + 2 * Cc * (Cc + 2 * Mc) + 4 * Lc * Cc;
    double f_cls = f_cls1 * st.image_encodes;
    const char *const *q = job.classes;
    double f_text = text_flops(gen, tok, CAR_CAM_TEMPLATE, CAR_BG_WORDS, 23) +
                    text_flops(gen, tok, NULL, q, N);
    for (int t = 0; t < p.n_templates; t++) f_text += text_flops(cls, tok, p.templates[t], q, N);
    /* rounds >= 2 encode the survivors in the CAM template (the average such string's cost) */
    if (ng > 43) f_text += text_flops(gen, tok, CAR_CAM_TEMPLATE, q, N) / N * (double)(ng - 43);
    /* Grad-CAM, the affinity and the CRF are not counted (time only): the towers are the bulk */
    int nq_cam = 0;
    for (int r = 0; r < st.rounds && r < CAR_STATS_ROUNDS; r++) nq_cam += st.r_live[r];
    double f_cam = 0;
    double f_all = f_trunk + f_cls + f_text;

    printf("bench_car_full: %s %dx%d, 20 VOC classes, voc preset (theta %.4g: random weights), "
           "B/16 generator + L/14 classifier (random, %s; packing %.0f ms), %d threads\n",
           ip, im.w, im.h, p.theta, carseg_precision_name(prec), ms_pack, carseg_get_threads());
    printf("  load average %.2f -> %.2f (this machine has %ld cores); model init %.0f ms\n", l0, l1,
           sysconf(_SC_NPROCESSORS_ONLN), ms_init);
    printf("  stage             wall ms    CPU ms   GFLOP  GFLOP per CPU-s\n");
#define ROW(name, w, c, f)                                                                          \
    printf("  %-16s %8.0f  %8.0f  %6.1f  %s\n", name, w, c, (f) * 1e-9,                           \
           (f) > 0 && (c) > 0 ? (snprintf(buf, sizeof buf, "%.0f", (f) / (c) * 1e-6), buf) : "")
    char buf[32];
    ROW("text encoding", st.ms_text, st.cpu_text, f_text);
    ROW("trunk+affinity", st.ms_prepare, st.cpu_prepare, f_trunk);
    ROW("cam proposals", st.ms_cam, st.cpu_cam, f_cam);
    ROW("visual prompts", st.ms_prompt, st.cpu_prompt, 0.0);
    ROW("classifier", st.ms_cls, st.cpu_cls, f_cls);
    ROW("crf", st.ms_crf, st.cpu_crf, 0.0);
    double rest = total - (st.ms_text + st.ms_prepare + st.ms_cam + st.ms_prompt + st.ms_cls + st.ms_crf);
    double crest = cpu * 1e3 - (st.cpu_text + st.cpu_prepare + st.cpu_cam + st.cpu_prompt + st.cpu_cls + st.cpu_crf);
    ROW("other", rest, crest, 0.0);
    ROW("total", total, cpu * 1e3, f_all);
    printf("  (%ld generator + %ld classifier text strings; %d query-rounds of Grad-CAM; GFLOP of the "
           "towers' matrix products only; %d classifier forwards x %.1f GFLOP)\n", ng, nc, nq_cam, st.image_encodes,
           f_cls1 * 1e-9);
    printf("  total %.1f s wall, %.1f s CPU: %.3f TFLOP, %.0f GFLOP/s wall\n", total * 1e-3, cpu,
           f_all * 1e-12, f_all / total * 1e-6);
    printf("  rounds %d:\n", st.rounds);
    for (int r = 0; r < st.rounds && r < CAR_STATS_ROUNDS; r++)
        printf("    round %d: %2d live queries, %2d classifier forwards: cam %5.0f ms (CPU %5.0f), "
               "classifier %6.0f ms (CPU %6.0f = %4.0f per live query), prompts %3.0f ms\n",
               r + 1, st.r_live[r], st.r_encodes[r], st.r_ms_cam[r], st.r_cpu_cam[r],
               st.r_ms_cls[r], st.r_cpu_cls[r], st.r_live[r] ? st.r_cpu_cls[r] / st.r_live[r] : 0,
               st.r_ms_prompt[r]);
    int nlab = 0, seen[32] = {0};
    for (size_t i = 0; i < hw; i++)
        if (lab[i] < 32 && !seen[lab[i]]) seen[lab[i]] = 1, nlab++;
    printf("  labels in the map: %d; scores > 0:", nlab);
    for (int i = 0; i < N; i++) if (sc[i] > 0) printf(" %s %.3f", q[i], sc[i]);
    printf("\n  peak RSS %.0f MB: weights %.0f MB (RSS after init %.0f MB) + %.0f MB\n", maxrss_mb(),
           wbytes / 1048576, rss_models, maxrss_mb() - wbytes / 1048576);

    if (argc > 3 && !strcmp(argv[3], "cmp")) {   /* classifier: one image per call vs a batch */
        enum { NB = 7 };
        size_t hw3 = hw * 3;
        uint8_t *imgs = malloc(hw3 * NB);
        float *f1 = malloc(sizeof(float) * NB * cls->cfg.embed), *fb = malloc(sizeof(float) * NB * cls->cfg.embed);
        for (int i = 0; i < NB; i++) memcpy(imgs + i * hw3, im.px, hw3);
        double w0 = now_ms(), cc0 = cpu_s();
        for (int i = 0; i < NB; i++) cls_encode_image(cls, imgs + i * hw3, im.w, im.h, 0, f1 + i * cls->cfg.embed);
        double w1 = now_ms(), cc1 = cpu_s();
        cls_encode_images(cls, imgs, NB, im.w, im.h, 0, fb);
        double w2 = now_ms(), cc2 = cpu_s();
        double maxd = 0;
        for (int i = 0; i < NB * cls->cfg.embed; i++) maxd = fmax(maxd, fabs(f1[i] - fb[i]));
        printf("  classifier, %d images: one per call %.0f ms (CPU %.0f), one batch %.0f ms (CPU %.0f): "
               "x%.2f in CPU time, max |diff| of the features %.2g; load %.2f\n", NB, w1 - w0,
               (cc1 - cc0) * 1e3, w2 - w1, (cc2 - cc1) * 1e3, (cc1 - cc0) / (cc2 - cc1), maxd, load1());
        free(imgs), free(f1), free(fb);
        /* the classifier's 15 x 20 template strings: one request per template vs one request */
        int T = p.n_templates, E = cls->cfg.embed;
        char **strs = malloc(sizeof(char *) * T * N);
        float *t1 = malloc(sizeof(float) * T * N * E), *tb = malloc(sizeof(float) * T * N * E);
        for (int t = 0; t < T; t++)
            for (int i = 0; i < N; i++) strs[t * N + i] = car_format(p.templates[t], q[i]);
        text_cache *tc;
        tc_new(cls, tok, &tc);
        w0 = now_ms(), cc0 = cpu_s();
        for (int t = 0; t < T; t++) tc_get(tc, (const char *const *)strs + t * N, N, t1 + (size_t)t * N * E);
        w1 = now_ms(), cc1 = cpu_s();
        tc_free(tc);
        tc_new(cls, tok, &tc);
        double w1b = now_ms(), cc1b = cpu_s();
        tc_get(tc, (const char *const *)strs, T * N, tb);
        w2 = now_ms(), cc2 = cpu_s();
        tc_free(tc);
        maxd = 0;
        for (int i = 0; i < T * N * E; i++) maxd = fmax(maxd, fabs(t1[i] - tb[i]));
        printf("  classifier text, %d x %d strings: one request per template %.0f ms (CPU %.0f), one "
               "request %.0f ms (CPU %.0f): x%.2f in CPU time, max |diff| %.2g; load %.2f\n", T, N,
               w1 - w0, (cc1 - cc0) * 1e3, w2 - w1b, (cc2 - cc1b) * 1e3, (cc1 - cc0) / (cc2 - cc1b),
               maxd, load1());
        for (int i = 0; i < T * N; i++) free(strs[i]);
        free(strs), free(t1), free(tb);
    }
    car_image_free(ci);
    car_ctx_free(ctx);
    free(lab), free(sc);
    image_free(&im);
    tok_close(tok);
    clip_free(gen);
    clip_free(cls);
    return 0;
}
