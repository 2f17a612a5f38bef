/* car.c — the CaR recurrence and its post-processing (car_method.md §1.2, §4, §7).
 *
 * Mirrors clip_as_rnn/modeling/model/car.py (CaR._forward_car / _forward_stage /
 * _filter_texts), crf.py (PostProcess.apply_crf), evaluate.py (assign_label and the
 * thing + stuff passes) and utils/merge_mask.py (merge_masks_simple). Every quirk of the
 * reference is kept by default; the bugs have fixes behind car_params flags (see car.h).
 */
#include "car.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crf.h"
#include "presets.h"
#include "prompts.h"
#include "util.h"

#define CAR_TICK(st, stage, t0, c0) \
    do { if (st) (st)->ms_##stage += now_ms() - (t0), (st)->cpu_##stage += cpu_ms() - (c0); } while (0)

/* process CPU time in ms (all threads): the stable figure on a shared machine */
static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

car_params car_default_params(void) {
    car_params p;
    memset(&p, 0, sizeof p);
    p.eta = 0.4f, p.theta = 0.6f, p.lambda = 0.4f;
    p.prompts = VP_CIRCLE | VP_BLUR;
    p.n_templates = 15;
    p.templates = CAR_TEMPLATES;
    p.bg_factor = 1.0f;
    p.crf = 1;
    return p;
}

struct car_ctx {
    const clip_model *gen, *cls;
    const tokenizer *tok;
    text_cache *tc_gen, *tc_cls;
};

carseg_status car_ctx_new(const clip_model *gen, const clip_model *cls, const tokenizer *tok,
                          car_ctx **out) {
    *out = NULL;
    if (!gen || !cls || !tok) return set_err(CARSEG_EINVAL, "car: missing model or tokenizer");
    car_ctx *c = calloc(1, sizeof *c);
    if (!c) return set_err(CARSEG_ENOMEM, "car: out of memory");
    c->gen = gen, c->cls = cls, c->tok = tok;
    carseg_status st = tc_new(gen, tok, &c->tc_gen);
    if (st == CARSEG_OK) st = tc_new(cls, tok, &c->tc_cls);
    if (st != CARSEG_OK) {
        car_ctx_free(c);
        return st;
    }
    *out = c;
    return CARSEG_OK;
}

void car_ctx_free(car_ctx *c) {
    if (!c) return;
    tc_free(c->tc_gen);
    tc_free(c->tc_cls);
    free(c);
}

void car_ctx_text_counts(const car_ctx *c, long *gen, long *cls) {
    if (gen) *gen = tc_encoded(c->tc_gen);
    if (cls) *cls = tc_encoded(c->tc_cls);
}

enum { MAX_VP = 8 };
/* prompted images per classifier batch: bounds the memory of a round to CLS_CHUNK images
 * (H x W x 3 bytes + 3 x 224 x 224 floats each) whatever the number of queries; a multiple of
 * clip_encode_images' batch at ViT-L/14 (7 images of 257 tokens) */
enum { CLS_CHUNK = 28 };
struct car_image {
    image_u8 rgb;                 /* owned copy */
    cam_image *ci;                /* trunk + affinity of the generator */
    uint8_t *crf_feat;            /* (H, W, 3) Q4 colour features, lazily */
    int crf_feat_fixed;           /* crf_feat holds the raw RGB (the Q4 fix) */
    vp_ctx vp[MAX_VP];            /* prepared prompt contexts, one per prompt set */
    int n_vp;
    float *orig_feat[2];          /* (E) classifier feature of the unprompted image, lazily, per
                                     Q8 setting (fix_center_crop 0 / 1: different preprocessing) */
};

void car_image_size(const car_image *im, int *w, int *h) {
    *w = im->rgb.w;
    *h = im->rgb.h;
}

carseg_status car_image_new(car_ctx *c, const image_u8 *rgb, car_stats *st, car_image **out) {
    *out = NULL;
    if (!rgb || rgb->c != 3 || rgb->w <= 0 || rgb->h <= 0)
        return set_err(CARSEG_EINVAL, "car: expected an RGB image");
    car_image *im = calloc(1, sizeof *im);
    if (!im) return set_err(CARSEG_ENOMEM, "car: out of memory");
    size_t n = (size_t)rgb->w * rgb->h * 3;
    im->rgb = (image_u8){rgb->w, rgb->h, 3, malloc(n)};
    if (!im->rgb.px) {
        free(im);
        return set_err(CARSEG_ENOMEM, "car: out of memory (%dx%d image)", rgb->w, rgb->h);
    }
    memcpy(im->rgb.px, rgb->px, n);
    double t0 = now_ms(), c0 = cpu_ms();
    carseg_status s = cam_prepare(c->gen, &im->rgb, &im->ci);
    CAR_TICK(st, prepare, t0, c0);
    if (s != CARSEG_OK) {
        car_image_free(im);
        return s;
    }
    *out = im;
    return CARSEG_OK;
}

void car_image_free(car_image *im) {
    if (!im) return;
    cam_image_free(im->ci);
    for (int i = 0; i < im->n_vp; i++) vp_release(&im->vp[i]);
    free(im->crf_feat);
    free(im->orig_feat[0]);
    free(im->orig_feat[1]);
    free(im->rgb.px);
    free(im);
}

static carseg_status get_vp(car_image *im, unsigned types, const vp_ctx **out) {
    for (int i = 0; i < im->n_vp; i++)
        if (im->vp[i].types == types) {
            *out = &im->vp[i];
            return CARSEG_OK;
        }
    if (im->n_vp == MAX_VP) {
        vp_release(&im->vp[0]);
        memmove(&im->vp[0], &im->vp[1], sizeof(vp_ctx) * (MAX_VP - 1));
        im->n_vp--;
    }
    TRY(vp_prepare(im->rgb.px, im->rgb.w, im->rgb.h, types, &im->vp[im->n_vp]));
    *out = &im->vp[im->n_vp++];
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// helpers

typedef struct {
    char **s;
    int n;
} strvec;

static void sv_free(strvec *v) {
    for (int i = 0; i < v->n; i++) free(v->s[i]);
    free(v->s);
    v->s = NULL, v->n = 0;
}

/* strs[i] = format(tpl, q[idx[i]]) (tpl NULL: the raw string) */
static carseg_status sv_format(strvec *v, const char *tpl, const char *const *q, const int *idx,
                               int n) {
    v->n = 0;
    v->s = calloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    if (!v->s) return set_err(CARSEG_ENOMEM, "car: out of memory");
    for (int i = 0; i < n; i++) {
        const char *src = q[idx ? idx[i] : i];
        v->s[i] = tpl ? car_format(tpl, src) : cs_strdup(src);
        if (!v->s[i]) {
            sv_free(v);
            return set_err(CARSEG_ENOMEM, "car: out of memory");
        }
        v->n = i + 1;
    }
    return CARSEG_OK;
}

/* strs[t * n + i] = format(tpls[t], q[idx[i]]) for the T templates */
static carseg_status sv_format_all(strvec *v, const char *const *tpls, int T, const char *const *q,
                                   const int *idx, int n) {
    v->n = 0;
    v->s = calloc((size_t)(T * n > 0 ? T * n : 1), sizeof(char *));
    if (!v->s) return set_err(CARSEG_ENOMEM, "car: out of memory");
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++) {
            char *f = car_format(tpls[t], q[idx[i]]);
            if (!f) {
                sv_free(v);
                return set_err(CARSEG_ENOMEM, "car: out of memory");
            }
            v->s[v->n++] = f;
        }
    return CARSEG_OK;
}

/* Text features; naive mode bypasses the cache (fresh cache per call). */
static carseg_status text_feats(car_ctx *c, int gen, const strvec *v, int naive, float *out) {
    if (!naive) return tc_get(gen ? c->tc_gen : c->tc_cls, (const char *const *)v->s, v->n, out);
    text_cache *tc;
    TRY(tc_new(gen ? c->gen : c->cls, c->tok, &tc));
    carseg_status st = tc_get(tc, (const char *const *)v->s, v->n, out);
    tc_free(tc);
    return st;
}

static carseg_status dump_round(const car_dump *d, int round, const char *const *queries,
                                const int *live, int nl, const float *diag, const int *keep,
                                int nk, const float *masks, int H, int W) {
    if (!d || !d->on_round) return CARSEG_OK;
    car_round r = {d->prefix ? d->prefix : "", round, queries, live, nl, diag, keep, nk, masks, H, W};
    return d->on_round(&r, d->user);
}

/* CRF (or plain argmax) of probs (C, H, W) -> labels (H, W) */
static carseg_status label_probs(car_image *im, const float *probs, int C, int H, int W, int crf,
                                 const crf_params *crf_p, int fix_colors, uint16_t *labels) {
    size_t hw = (size_t)H * W;
    if (crf) {
        if (!im->crf_feat || im->crf_feat_fixed != fix_colors) {
            if (!im->crf_feat) im->crf_feat = malloc(hw * 3);
            if (!im->crf_feat) return set_err(CARSEG_ENOMEM, "car: out of memory");
            if (fix_colors) memcpy(im->crf_feat, im->rgb.px, hw * 3);
            else crf_features_car(im->rgb.px, W, H, im->crf_feat);
            im->crf_feat_fixed = fix_colors;
        }
        crf_params cp = crf_p ? *crf_p : crf_default_params();
        return crf_run(probs, C, H, W, im->crf_feat, &cp, labels, NULL);
    }
    for (size_t i = 0; i < hw; i++) {
        int best = 0;
        for (int k = 1; k < C; k++)
            if (probs[(size_t)k * hw + i] > probs[(size_t)best * hw + i]) best = k;
        labels[i] = (uint16_t)best;
    }
    return CARSEG_OK;
}

/* PostProcess: rows (m, H, W) -> refined binary masks (m, H, W). */
static carseg_status post_process(car_image *im, const float *rows, int m, int H, int W,
                                  const car_params *p, uint8_t *refined, car_stats *st) {
    size_t hw = (size_t)H * W;
    double t0 = now_ms(), c0 = cpu_ms();
    int C = p->refer ? 2 : m + 1;
    float *probs = malloc(sizeof(float) * hw * (size_t)C);
    uint16_t *lab = malloc(sizeof(uint16_t) * hw);
    if (!probs || !lab) {
        free(probs), free(lab);
        return set_err(CARSEG_ENOMEM, "car: out of memory (CRF of %d labels)", C);
    }
    carseg_status s = CARSEG_OK;
    if (p->refer) {
        for (int j = 0; j < m && s == CARSEG_OK; j++) {
            const float *cam = rows + (size_t)j * hw;
            for (size_t i = 0; i < hw; i++) {
                probs[i] = powf(1.0f - cam[i], p->bg_factor);
                probs[hw + i] = cam[i];
            }
            s = label_probs(im, probs, 2, H, W, p->crf, p->crf_p, p->fix_crf_colors, lab);
            for (size_t i = 0; i < hw; i++) refined[(size_t)j * hw + i] = lab[i] == 1;
        }
    } else {
        for (size_t i = 0; i < hw; i++) {
            float mx = -INFINITY;
            for (int j = 0; j < m; j++) mx = fmaxf(mx, rows[(size_t)j * hw + i]);
            probs[i] = powf(1.0f - mx, p->bg_factor);
        }
        memcpy(probs + hw, rows, sizeof(float) * hw * (size_t)m);
        s = label_probs(im, probs, C, H, W, p->crf, p->crf_p, p->fix_crf_colors, lab);
        for (int j = 0; j < m; j++)
            for (size_t i = 0; i < hw; i++) refined[(size_t)j * hw + i] = lab[i] == j + 1;
    }
    free(probs), free(lab);
    CAR_TICK(st, crf, t0, c0);
    return s;
}

// ---------------------------------------------------------------------------------------------
// the recurrence

/* statistics, kept out of the method's flow: CAR_TICK adds the wall and CPU ms since (t0, c0)
 * to the stage's pair of car_stats fields; round_stats records round `round` (1-based) as the
 * difference of *st from its copy st0 taken at the round's start */
static void round_stats_reset(car_stats *st) {   /* per-round figures are of this pass */
    if (!st) return;
    memset(st->r_live, 0, sizeof st->r_live), memset(st->r_encodes, 0, sizeof st->r_encodes);
    memset(st->r_ms_cam, 0, sizeof st->r_ms_cam), memset(st->r_ms_prompt, 0, sizeof st->r_ms_prompt);
    memset(st->r_ms_cls, 0, sizeof st->r_ms_cls);
    memset(st->r_cpu_cls, 0, sizeof st->r_cpu_cls), memset(st->r_cpu_cam, 0, sizeof st->r_cpu_cam);
}
static void round_stats(car_stats *st, const car_stats *st0, int round, int nl) {
    if (!st || round > CAR_STATS_ROUNDS) return;
    int r = round - 1;
    st->r_live[r] = nl;
    st->r_encodes[r] = st->image_encodes - st0->image_encodes;
    st->r_ms_cam[r] = st->ms_cam - st0->ms_cam;
    st->r_ms_prompt[r] = st->ms_prompt - st0->ms_prompt;
    st->r_ms_cls[r] = st->ms_cls - st0->ms_cls;
    st->r_cpu_cls[r] = st->cpu_cls - st0->cpu_cls;
    st->r_cpu_cam[r] = st->cpu_cam - st0->cpu_cam;
}

/* The state of one pass: the queries, the live set and the buffers of a round. The round's masks
 * and the previous round's are allocated per round at their sizes (nl, H, W) (the larger
 * buffers); everything else is sized for all n queries at the start as one block (round_alloc,
 * round_free). */
typedef struct {
    car_ctx *c;
    car_image *im;
    const char *const *queries;
    int n, nb;                 /* queries, background words */
    const car_params *p;
    car_stats *st;
    int H, W, T, Eg, Ec;       /* image size, templates, generator and classifier widths */
    size_t hw;
    const char *const *tpls;   /* the classifier's templates (T of them) */
    unsigned vpt;              /* visual prompt types */
    const vp_ctx *vp;          /* the prepared prompts (hoisted path) */
    cam_image *ci_naive;       /* the naive path's trunk + affinity of this round */
    /* the round */
    int round, nl, nk, nprev;  /* live, kept and previous-round queries */
    int *live, *keep, *prev_live, *enc_src;
    float *bgf, *fg, *masks, *prev, *imgf, *txt, *P, *diag, *rsc, *encf;
    uint8_t *pim;              /* (CLS_CHUNK or 1, H, W, 3) prompted images */
    void *block;
} car_run;

static carseg_status round_alloc(car_run *r) {
    size_t n = (size_t)r->n, nch = r->p->naive ? 1 : (size_t)(r->n < CLS_CHUNK ? r->n : CLS_CHUNK);
    size_t nbg = (size_t)(r->nb > 0 ? r->nb : 1);
    size_t ints = 4 * n, floats = nbg * r->Eg + n * r->Eg + n * r->Ec +
                  (size_t)r->T * n * r->Ec + n * n + 2 * n + nch * r->Ec;
    size_t bytes = ints * sizeof(int) + floats * sizeof(float) + nch * r->hw * 3;
    char *b = r->block = malloc(bytes);
    if (!b) return set_err(CARSEG_ENOMEM, "car: out of memory (%d queries on %dx%d)", r->n, r->W, r->H);
    float *f = (float *)b;   /* floats first (aligned), then ints, then bytes */
    r->bgf = f, f += nbg * r->Eg;
    r->fg = f, f += n * r->Eg;
    r->imgf = f, f += n * r->Ec;
    r->txt = f, f += (size_t)r->T * n * r->Ec;
    r->P = f, f += n * n;
    r->diag = f, f += n;
    r->rsc = f, f += n;
    r->encf = f, f += nch * r->Ec;
    int *q = (int *)f;
    r->live = q, q += n;
    r->keep = q, q += n;
    r->prev_live = q, q += n;
    r->enc_src = q, q += n;
    r->pim = (uint8_t *)q;
    return CARSEG_OK;
}

static void round_free(car_run *r) {
    cam_image_free(r->ci_naive);
    free(r->masks), free(r->prev), free(r->block);
}

/* text features of strings format(tpl, query) of the live queries (tpl NULL: the raw names) */
static carseg_status live_text(car_run *r, int gen, const char *tpl, float *out) {
    strvec v = {0};
    TRY(sv_format(&v, tpl, r->queries, r->live, r->nl));
    carseg_status s = text_feats(r->c, gen, &v, r->p->naive, out);
    sv_free(&v);
    return s;
}

/* Step 1: one mask proposal per live query (Grad-CAM of the generator against the background
 * words, §2): the CAM template from round 2 on (Q5), masks (nl, H, W). */
static carseg_status propose(car_run *r) {
    const car_params *p = r->p;
    double t0 = now_ms(), c0 = cpu_ms();
    TRY(live_text(r, 1, (r->round == 1 || p->cam_raw_names) ? NULL : CAR_CAM_TEMPLATE, r->fg));
    CAR_TICK(r->st, text, t0, c0);
    t0 = now_ms(), c0 = cpu_ms();
    if (!(r->masks = malloc(sizeof(float) * r->hw * (size_t)r->nl)))
        return set_err(CARSEG_ENOMEM, "car: out of memory (%d masks of %dx%d)", r->nl, r->W, r->H);
    cam_image *ci = r->im->ci;
    if (p->naive) {   /* re-run the trunk and the affinity as the reference does */
        cam_image_free(r->ci_naive);
        r->ci_naive = NULL;
        TRY(cam_prepare(r->c->gen, &r->im->rgb, &r->ci_naive));
        ci = r->ci_naive;
    }
    cam_params cp = {p->lambda, 0, p->fix_box_clamp};
    carseg_status s = CARSEG_OK;
    if (p->refer)   /* each phrase against the background words alone */
        for (int j = 0; j < r->nl && s == CARSEG_OK; j++)
            s = cam_proposals(ci, r->fg + (size_t)j * r->Eg, 1, r->bgf, r->nb, &cp,
                              r->masks + (size_t)j * r->hw, NULL, NULL);
    else
        s = cam_proposals(ci, r->fg, r->nl, r->bgf, r->nb, &cp, r->masks, NULL, NULL);
    CAR_TICK(r->st, cam, t0, c0);
    return s;
}

/* Step 2: each mask becomes a visually prompted image, encoded by the classifier: imgf (nl, Ec).
 * The prompted images go in chunks of CLS_CHUNK, one batch each; a mask with sum <= 1 leaves the
 * original image, whose features are encoded once per car_image (per Q8 setting). */
static carseg_status prompt_images(car_run *r) {
    car_image *im = r->im;
    int q8 = r->p->fix_center_crop != 0, W = r->W, H = r->H;
    size_t hw = r->hw, Ec = (size_t)r->Ec;
    for (int j0 = 0; j0 < r->nl; j0 += CLS_CHUNK) {
        int j1 = j0 + CLS_CHUNK < r->nl ? j0 + CLS_CHUNK : r->nl, ne = 0, orig_j = -1;
        double t0 = now_ms(), c0 = cpu_ms();
        for (int j = j0; j < j1; j++) {
            int v = vp_apply(r->vp, r->masks + (size_t)j * hw, r->p->eta, r->pim + (size_t)ne * hw * 3);
            if (v < 0) return set_err(CARSEG_ENOMEM, "car: out of memory (visual prompt)");
            r->enc_src[j] = -1;
            if (v == 0 && (im->orig_feat[q8] || orig_j >= 0)) continue;   /* copied below */
            if (v == 0) orig_j = j;
            r->enc_src[j] = ne++;
        }
        CAR_TICK(r->st, prompt, t0, c0);
        t0 = now_ms(), c0 = cpu_ms();
        TRY(cls_encode_images(r->c->cls, r->pim, ne, W, H, r->p->fix_center_crop, r->encf));
        if (r->st) r->st->image_encodes += ne;
        if (orig_j >= 0) {
            if (!(im->orig_feat[q8] = malloc(sizeof(float) * Ec))) return set_err(CARSEG_ENOMEM, "car: out of memory");
            memcpy(im->orig_feat[q8], r->encf + (size_t)r->enc_src[orig_j] * Ec, sizeof(float) * Ec);
        }
        for (int j = j0; j < j1; j++) {
            const float *src = r->enc_src[j] >= 0 ? r->encf + (size_t)r->enc_src[j] * Ec : im->orig_feat[q8];
            memcpy(r->imgf + (size_t)j * Ec, src, sizeof(float) * Ec);
        }
        CAR_TICK(r->st, cls, t0, c0);
    }
    return CARSEG_OK;
}

/* the classifier's text features txt (T, nl, Ec) of the live queries in every template: all
 * templates in one request, so the uncached strings go in few, full batches */
static carseg_status class_texts(car_run *r) {
    strvec v = {0};
    TRY(sv_format_all(&v, r->tpls, r->T, r->queries, r->live, r->nl));
    carseg_status s = text_feats(r->c, 0, &v, 0, r->txt);
    sv_free(&v);
    return s;
}

/* The naive twins (car_params.naive, tests only): every prompt drawn from scratch per mask as the
 * reference does, each prompted image encoded once per template, each template's texts encoded
 * apart, no caches (and propose re-runs the trunk and the affinity every round). */
static carseg_status prompt_images_naive(car_run *r) {
    for (int j = 0; j < r->nl; j++) {
        double t0 = now_ms(), c0 = cpu_ms();
        if (vp_apply_naive(r->im->rgb.px, r->W, r->H, r->vpt, r->masks + (size_t)j * r->hw, r->p->eta, r->pim) < 0)
            return set_err(CARSEG_ENOMEM, "car: out of memory (visual prompt)");
        CAR_TICK(r->st, prompt, t0, c0);
        t0 = now_ms(), c0 = cpu_ms();
        for (int k = 0; k < r->T; k++) {
            TRY(cls_encode_image(r->c->cls, r->pim, r->W, r->H, r->p->fix_center_crop, r->imgf + (size_t)j * r->Ec));
            if (r->st) r->st->image_encodes++;
        }
        CAR_TICK(r->st, cls, t0, c0);
    }
    return CARSEG_OK;
}

static carseg_status class_texts_naive(car_run *r) {
    for (int t = 0; t < r->T; t++) TRY(live_text(r, 0, r->tpls[t], r->txt + (size_t)t * r->nl * r->Ec));
    return CARSEG_OK;
}

/* Step 3: the classifier's probabilities P (nl, nl) of every prompted image against every live
 * query over the templates (§3). */
static carseg_status classify(car_run *r) {
    double t0 = now_ms(), c0 = cpu_ms();
    TRY(r->p->naive ? class_texts_naive(r) : class_texts(r));
    CAR_TICK(r->st, text, t0, c0);
    t0 = now_ms(), c0 = cpu_ms();
    cls_probs(r->imgf, r->nl, r->txt, r->T, r->Ec, r->c->cls->cfg.logit_scale, r->p->n_templates > 0,
              NULL, r->P);
    CAR_TICK(r->st, cls, t0, c0);
    return CARSEG_OK;
}

/* Step 4: keep the queries whose own score is strictly above theta, the best one if none (§1.2);
 * rsc holds the kept scores (0 for the dropped). */
static void filter(car_run *r) {
    int nl = r->nl, amax = 0;
    r->nk = 0;
    for (int j = 0; j < nl; j++) {
        r->diag[j] = r->P[(size_t)j * nl + j];
        if (r->diag[j] > r->diag[amax]) amax = j;
        if (r->diag[j] > r->p->theta) r->keep[r->nk++] = j;
    }
    if (r->nk == 0) r->keep[r->nk++] = amax;
    memset(r->rsc, 0, sizeof(float) * (size_t)nl);
    for (int k = 0; k < r->nk; k++) r->rsc[r->keep[k]] = r->diag[r->keep[k]];
}

/* The round's masks become the previous round's, with the all-zero guard (Q9): when every mask is
 * zero the reference keeps the previous round's masks (and crashes in round 1, where there are
 * none: here the zeros stay). Upstream keeps those rows as they are, later zipped positionally
 * with this round's survivors; fix_zero_guard takes the same queries' rows instead. */
static void carry_masks(car_run *r) {
    size_t hw = r->hw;
    float mx = 0;
    for (size_t i = 0; i < hw * (size_t)r->nl; i++) mx = fmaxf(mx, r->masks[i]);
    if (mx == 0 && r->nprev > 0) {
        if (!r->p->fix_zero_guard) {   /* prev, nprev and prev_live stay */
            free(r->masks);
            r->masks = NULL;
            return;
        }
        for (int j = 0; j < r->nl; j++) {
            int k = 0;
            while (k < r->nprev && r->prev_live[k] != r->live[j]) k++;
            if (k < r->nprev) memcpy(r->masks + (size_t)j * hw, r->prev + (size_t)k * hw, sizeof(float) * hw);
        }
    }
    free(r->prev);
    r->prev = r->masks, r->masks = NULL;
    r->nprev = r->nl;
    memcpy(r->prev_live, r->live, sizeof(int) * (size_t)r->nl);
}

/* After the last round: the CRF on its masks, and zip(survivor ids, refined rows, positional
 * scores) as the reference does (Q17: a duplicate name goes to its first index). */
static carseg_status finish(car_run *r, uint8_t *masks_out, float *scores_out, float *cams_out) {
    size_t hw = r->hw;
    uint8_t *refined = malloc(hw * (size_t)(r->nprev > 0 ? r->nprev : 1));
    if (!refined) return set_err(CARSEG_ENOMEM, "car: out of memory");
    carseg_status s = post_process(r->im, r->prev, r->nprev, r->H, r->W, r->p, refined, r->st);
    int nz = r->nk < r->nprev ? r->nk : r->nprev;
    for (int j = 0; j < nz && s == CARSEG_OK; j++) {
        int idx = r->live[r->keep[j]];
        if (!r->p->fix_duplicates)   /* init_clip_text.index(): the first equal string */
            for (int k = 0; k < r->n; k++)
                if (!strcmp(r->queries[k], r->queries[idx])) { idx = k; break; }
        memcpy(masks_out + (size_t)idx * hw, refined + (size_t)j * hw, hw);
        scores_out[idx] = r->rsc[j];
        if (cams_out) memcpy(cams_out + (size_t)idx * hw, r->prev + (size_t)j * hw, sizeof(float) * hw);
    }
    free(refined);
    return s;
}

/* The method (§1.2): propose, prompt, classify, filter, until the live set stops shrinking. */
carseg_status car_pass(car_ctx *c, car_image *im, const char *const *queries, int n,
                       const char *const *bg, int nb, const car_params *p, const car_dump *dump,
                       uint8_t *masks_out, float *scores_out, float *cams_out, car_stats *st) {
    if (n <= 0) return set_err(CARSEG_EINVAL, "car: empty query list");
    car_run r = {.c = c, .im = im, .queries = queries, .n = n, .nb = nb > 0 ? nb : 0, .p = p, .st = st};
    r.H = im->rgb.h, r.W = im->rgb.w, r.hw = (size_t)r.H * r.W;
    r.Eg = c->gen->cfg.embed, r.Ec = c->cls->cfg.embed;
    r.T = p->n_templates > 0 ? p->n_templates : 1;
    r.tpls = p->n_templates > 0 ? p->templates : &CAR_CAM_TEMPLATE;
    r.vpt = p->prompts | (p->fix_gray ? VP_GRAY_RGB : 0);
    memset(masks_out, 0, r.hw * (size_t)n);
    memset(scores_out, 0, sizeof(float) * (size_t)n);
    if (cams_out) memset(cams_out, 0, sizeof(float) * r.hw * (size_t)n);
    TRY(round_alloc(&r));
    for (int i = 0; i < n; i++) r.live[i] = i;
    r.nl = n;
    round_stats_reset(st);

    double t0 = now_ms(), c0 = cpu_ms();   /* the background words in the CAM template, once */
    carseg_status s = CARSEG_OK;
    if (r.nb > 0) {
        strvec v = {0};
        s = sv_format(&v, CAR_CAM_TEMPLATE, bg, NULL, r.nb);
        if (s == CARSEG_OK) s = text_feats(c, 1, &v, p->naive, r.bgf);
        sv_free(&v);
    }
    CAR_TICK(st, text, t0, c0);
    if (s == CARSEG_OK && !p->naive) s = get_vp(im, r.vpt, &r.vp);

    for (int last = 0; s == CARSEG_OK;) {
        r.round++;
        car_stats st0 = st ? *st : (car_stats){0};
        if ((s = propose(&r)) != CARSEG_OK) break;
        if ((s = (p->naive ? prompt_images_naive : prompt_images)(&r)) != CARSEG_OK) break;
        if ((s = classify(&r)) != CARSEG_OK) break;
        round_stats(st, &st0, r.round, r.nl);
        filter(&r);
        s = dump_round(dump, r.round, queries, r.live, r.nl, r.diag, r.keep, r.nk, r.masks, r.H, r.W);
        if (s != CARSEG_OK) break;
        carry_masks(&r);
        int kpos = 0;   /* the loop ends when the number of positive scores stops changing */
        for (int j = 0; j < r.nl; j++) kpos += r.rsc[j] > 0;
        if (st) st->rounds = r.round;
        if (kpos == last) break;
        last = kpos;
        for (int k = 0; k < r.nk; k++) r.live[k] = r.live[r.keep[k]];
        r.nl = r.nk;
    }
    if (st) st->rounds_total += r.round;
    if (s == CARSEG_OK) s = finish(&r, masks_out, scores_out, cams_out);
    round_free(&r);
    return s;
}

// ---------------------------------------------------------------------------------------------
// semantic label map (evaluate.assign_label) and the thing + stuff passes (§4.2, §4.4)

static void assign_pass(uint16_t *labels, size_t hw, const int *ids, int n, const float *scores,
                        const uint8_t *masks) {
    /* ascending score (stable), score > 0, mask > 0.5 -> id + 1 */
    int *ord = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!ord) return;
    for (int i = 0; i < n; i++) ord[i] = i;
    for (int i = 1; i < n; i++) {   /* insertion sort: stable */
        int v = ord[i], j = i - 1;
        while (j >= 0 && scores[ord[j]] > scores[v]) { ord[j + 1] = ord[j]; j--; }
        ord[j + 1] = v;
    }
    for (int k = 0; k < n; k++) {
        int i = ord[k];
        if (!(scores[i] > 0)) continue;
        const uint8_t *m = masks + (size_t)i * hw;
        for (size_t t = 0; t < hw; t++)
            if (m[t]) labels[t] = (uint16_t)(ids[i] + 1);
    }
    free(ord);
}

carseg_status car_segment(car_ctx *c, car_image *im, const car_job *job, const car_dump *dump,
                          uint16_t *labels, float *scores, uint8_t *masks, car_stats *st) {
    int H = im->rgb.h, W = im->rgb.w;
    size_t hw = (size_t)H * W;
    int N = job->n_classes;
    if (N <= 0) return set_err(CARSEG_EINVAL, "car: empty class list");
    if (N > 65535) return set_err(CARSEG_EINVAL, "car: too many classes (%d > 65535)", N);
    memset(labels, 0, sizeof(uint16_t) * hw);
    memset(scores, 0, sizeof(float) * (size_t)N);
    if (masks) memset(masks, 0, hw * (size_t)N);
    if (job->cams) memset(job->cams, 0, sizeof(float) * hw * (size_t)N);
    int *all = NULL;
    const int *things = job->things;
    int nt = job->n_things;
    if (!things) {
        all = malloc(sizeof(int) * (size_t)N);
        if (!all) return set_err(CARSEG_ENOMEM, "car: out of memory");
        for (int i = 0; i < N; i++) all[i] = i;
        things = all, nt = N;
    }
    int passes = job->stuff && job->n_stuff > 0 ? 2 : 1;
    carseg_status s = CARSEG_OK;
    uint8_t *pm = NULL;
    float *ps = NULL, *pc = NULL;
    const char **q = NULL, **bgq = NULL;
    for (int pass = 0; pass < passes && s == CARSEG_OK; pass++) {
        int stuff = passes == 2 && pass == 0;   /* the stuff pass first, things overwrite */
        const int *ids = stuff ? job->stuff : things;
        int n = stuff ? job->n_stuff : nt;
        if (n <= 0) continue;
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= N) {
                s = set_err(CARSEG_EINVAL, "car: class id %d out of range", ids[i]);
                break;
            }
        if (s != CARSEG_OK) break;
        free(q), free(bgq), free(pm), free(ps);
        q = malloc(sizeof(char *) * (size_t)n);
        bgq = malloc(sizeof(char *) * (size_t)(nt > 0 ? nt : 1));
        pm = malloc(hw * (size_t)n);
        ps = malloc(sizeof(float) * (size_t)n);
        if (!q || !bgq || !pm || !ps) {
            s = set_err(CARSEG_ENOMEM, "car: out of memory (%d classes of %dx%d)", n, W, H);
            break;
        }
        for (int i = 0; i < n; i++) q[i] = job->classes[ids[i]];
        const char *const *bg = job->bg;
        int nb = job->nb;
        if (stuff) {   /* stuff pass: the thing names are the background (Q11) */
            for (int i = 0; i < nt; i++) bgq[i] = job->classes[things[i]];
            bg = bgq, nb = nt;
        }
        car_dump d = {passes == 2 ? (stuff ? "stuff_" : "things_") : "", dump ? dump->on_round : NULL,
                      dump ? dump->user : NULL};
        free(pc);
        pc = NULL;
        if (job->cams && !(pc = malloc(sizeof(float) * hw * (size_t)n))) {
            s = set_err(CARSEG_ENOMEM, "car: out of memory (%d CAMs of %dx%d)", n, W, H);
            break;
        }
        s = car_pass(c, im, q, n, bg, nb, stuff ? &job->stuff_p : &job->p, &d, pm, ps, pc, st);
        if (s != CARSEG_OK) break;
        if (job->sam) {   /* CaR + SAM: refine the CRF masks, then the label map as usual */
            double t0 = now_ms();
            s = cs_carsam_refine(job->sam, &job->sam_p, pm, n, H, W, NULL);
            if (st) st->ms_sam += now_ms() - t0;
            if (s != CARSEG_OK) break;
        }
        assign_pass(labels, hw, ids, n, ps, pm);
        for (int i = 0; i < n; i++) {
            scores[ids[i]] = ps[i];
            if (masks) memcpy(masks + (size_t)ids[i] * hw, pm + (size_t)i * hw, hw);
            if (pc) memcpy(job->cams + (size_t)ids[i] * hw, pc + (size_t)i * hw, sizeof(float) * hw);
        }
    }
    free(q), free(bgq), free(pm), free(ps), free(pc), free(all);
    return s;
}

// ---------------------------------------------------------------------------------------------
// referring mode (§7, merge_masks_simple)

carseg_status car_refer(car_ctx *c, car_image *im, const char *const *phrases, int n,
                        const char *const *bg, int nb, const car_params *p, const car_dump *dump,
                        uint8_t *mask, float *scores, uint8_t *masks, float *cams, car_stats *st) {
    int H = im->rgb.h, W = im->rgb.w;
    size_t hw = (size_t)H * W;
    if (n <= 0) return set_err(CARSEG_EINVAL, "car: empty phrase list");
    car_params rp = *p;
    rp.refer = 1;
    uint8_t *pm = malloc(hw * (size_t)n);
    if (!pm) return set_err(CARSEG_ENOMEM, "car: out of memory");
    carseg_status s = car_pass(c, im, phrases, n, bg, nb, &rp, dump, pm, scores, cams, st);
    if (s == CARSEG_OK) {
        float tot = 0;
        for (int j = 0; j < n; j++) tot += scores[j];
        size_t area = 0;
        for (size_t i = 0; i < hw; i++) {
            float v = 0;
            for (int j = 0; j < n; j++) v += pm[(size_t)j * hw + i] * scores[j];
            v /= tot;   /* NaN when every score is 0: nothing passes, the fallback below */
            mask[i] = v >= 0.5f;
            area += mask[i];
        }
        if ((double)area <= 0.05 * (double)hw)
            for (size_t i = 0; i < hw; i++) {
                uint8_t u = 0;
                for (int j = 0; j < n; j++) u |= pm[(size_t)j * hw + i];
                mask[i] = u;
            }
        if (masks) memcpy(masks, pm, hw * (size_t)n);
    }
    free(pm);
    return s;
}
