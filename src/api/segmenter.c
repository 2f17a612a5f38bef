/* segmenter.c — the public CaR API (include/carseg.h): models shared by threads, one segmenter
 * (text caches) per thread, options with an initializer and an ABI size check, images prepared
 * once, results read through accessors. Everything here is glue over src/car (car.h): the
 * method itself is car_segment / car_refer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "car.h"
#include "carsam.h"
#include "clip.h"
#include "crf.h"
#include "image.h"
#include "models.h"
#include "presets.h"
#include "prompts.h"
#include "tokenizer.h"
#include "util.h"

struct carseg_car_model {
    clip_model *gen, *cls;   /* cls == gen when both are the same file */
    tokenizer *tok;
};

struct carseg_segmenter {
    const carseg_car_model *m;
    car_ctx *ctx;
};

struct carseg_prepared {
    const carseg_car_model *m;
    car_image *ci;
    image_u8 rgb;       /* own copy */
    double ms_prepare;  /* not yet reported by a result */
    double cpu_prepare; /* its process CPU ms, likewise */
};

typedef struct {
    int pass, round, n;
    int *live;
    float *scores;
    uint8_t *survived;
} round_rec;

struct carseg_result {
    int w, h, n, refer;
    char **names;
    float *scores;
    uint16_t *labels;
    uint8_t *masks;     /* (n, h, w) */
    float *cams;        /* (n, h, w) or NULL */
    round_rec *rounds;
    int n_rounds, cap_rounds;
    car_stats st;
    double ms_total;
    carseg_precision precision;
};

// ---------------------------------------------------------------------------------------------
// models and segmenters

carseg_status carseg_car_model_open(const char *generator, const char *classifier,
                                    const char *vocab, carseg_car_model **out) {
    if (!out) return set_err(CARSEG_EINVAL, "carseg_car_model_open: out is NULL");
    *out = NULL;
    carseg_car_model *m = calloc(1, sizeof *m);
    if (!m) return set_err(CARSEG_ENOMEM, "carseg_car_model_open: out of memory");
    char *gp = NULL, *cp = NULL, *vp = NULL;
    carseg_status s = models_resolve(generator ? generator : "ViT-B/16", &gp);
    if (s == CARSEG_OK) s = models_resolve(classifier ? classifier : "ViT-L/14", &cp);
    if (s == CARSEG_OK) s = models_resolve_vocab(vocab, &vp);
    if (s == CARSEG_OK) s = clip_load(gp, &m->gen);
    if (s == CARSEG_OK) {
        if (!strcmp(gp, cp)) m->cls = m->gen;
        else s = clip_load(cp, &m->cls);
    }
    if (s == CARSEG_OK && (m->gen->cfg.v_layers < 2 || m->gen->cfg.v_patch <= 0))
        s = set_err(CARSEG_EMODEL, "%s: not a CLIP vision transformer usable as mask generator", gp);
    if (s == CARSEG_OK && m->cls->cfg.v_layers < 1)
        s = set_err(CARSEG_EMODEL, "%s: not a CLIP vision transformer usable as mask classifier", cp);
    if (s == CARSEG_OK) s = tok_open(vp, &m->tok);
    free(gp), free(cp), free(vp);
    if (s != CARSEG_OK) {
        carseg_car_model_close(m);
        return s;
    }
    *out = m;
    return CARSEG_OK;
}

carseg_status carseg_car_model_set_precision(carseg_car_model *m, carseg_precision p) {
    if (!m) return set_err(CARSEG_EINVAL, "carseg_car_model_set_precision: model is NULL");
    TRY(carseg_clip_set_precision(m->gen, p));
    if (m->cls != m->gen) TRY(carseg_clip_set_precision(m->cls, p));
    return CARSEG_OK;
}

carseg_precision carseg_car_model_precision(const carseg_car_model *m) {
    return m ? carseg_clip_get_precision(m->cls) : CARSEG_PRECISION_FP32;
}

void carseg_car_model_close(carseg_car_model *m) {
    if (!m) return;
    tok_close(m->tok);
    if (m->cls != m->gen) clip_free(m->cls);
    clip_free(m->gen);
    free(m);
}

const carseg_clip *carseg_car_model_generator(const carseg_car_model *m) { return m ? m->gen : NULL; }
const carseg_clip *carseg_car_model_classifier(const carseg_car_model *m) { return m ? m->cls : NULL; }
const carseg_tokenizer *carseg_car_model_tokenizer(const carseg_car_model *m) { return m ? m->tok : NULL; }

carseg_status carseg_segmenter_new(const carseg_car_model *m, carseg_segmenter **out) {
    if (!out) return set_err(CARSEG_EINVAL, "carseg_segmenter_new: out is NULL");
    *out = NULL;
    if (!m) return set_err(CARSEG_EINVAL, "carseg_segmenter_new: model is NULL");
    carseg_segmenter *s = calloc(1, sizeof *s);
    if (!s) return set_err(CARSEG_ENOMEM, "carseg_segmenter_new: out of memory");
    s->m = m;
    carseg_status st = car_ctx_new(m->gen, m->cls, m->tok, &s->ctx);
    if (st != CARSEG_OK) {
        free(s);
        return st;
    }
    *out = s;
    return CARSEG_OK;
}

void carseg_segmenter_free(carseg_segmenter *s) {
    if (!s) return;
    car_ctx_free(s->ctx);
    free(s);
}

// ---------------------------------------------------------------------------------------------
// options

static const struct { const char *name; unsigned bit; } FIXES[] = {
    {"q1", CARSEG_FIX_Q1}, {"q3", CARSEG_FIX_Q3}, {"q4", CARSEG_FIX_Q4}, {"q7", CARSEG_FIX_Q7},
    {"q8", CARSEG_FIX_Q8}, {"q9", CARSEG_FIX_Q9}, {"q17", CARSEG_FIX_Q17},
};
enum { N_FIXES = (int)(sizeof FIXES / sizeof FIXES[0]) };

carseg_status carseg_fixes_parse(const char *list, unsigned *fixes) {
    if (!list || !fixes) return set_err(CARSEG_EINVAL, "carseg_fixes_parse: NULL argument");
    unsigned f = 0;
    const char *rest = list, *p;
    size_t n;
    while ((p = cs_list_next(&rest, &n))) {
        unsigned bit = 0;
        for (int i = 0; i < N_FIXES && !bit; i++)
            if (strlen(FIXES[i].name) == n && !strncasecmp(p, FIXES[i].name, n)) bit = FIXES[i].bit;
        if (!bit && n == 4 && !strncasecmp(p, "bugs", 4)) bit = CARSEG_FIX_BUGS;
        if (!bit && n == 3 && !strncasecmp(p, "all", 3)) bit = CARSEG_FIX_ALL;
        if (!bit && !(n == 4 && !strncasecmp(p, "none", 4)))
            return set_err(CARSEG_EINVAL, "fixes: unknown quirk '%.*s' (known: q1, q3, q4, q7, q8, "
                           "q9, q17, bugs, all, none)", (int)n, p);
        f |= bit;
    }
    *fixes = f;
    return CARSEG_OK;
}

const char *carseg_fix_name(unsigned one_fix) {
    for (int i = 0; i < N_FIXES; i++)
        if (FIXES[i].bit == one_fix) return FIXES[i].name;
    return NULL;
}

void carseg_options_init(carseg_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->eta = o->theta = o->lambda = NAN;
    o->crf = 1;
    o->crf_params = crf_default_params();
    o->precision = CARSEG_PRECISION_FP32;
    cs_carsam_params_init(&o->sam);
}

static carseg_status unknown_preset(const char *name) {
    char known[512];
    size_t k = 0;
    int np;
    const car_preset *ps = preset_all(&np);
    known[0] = 0;
    for (int i = 0; i < np && k < sizeof known; i++)
        k += (size_t)snprintf(known + k, sizeof known - k, "%s%s", i ? ", " : "", ps[i].name);
    return set_err(CARSEG_EINVAL, "preset: unknown preset '%s' (known: %s)", name, known);
}

carseg_status carseg_options_preset(carseg_options *o, const char *name) {
    if (!o || !name) return set_err(CARSEG_EINVAL, "carseg_options_preset: NULL argument");
    const car_preset *p = preset_find(name);
    if (!p) return unknown_preset(name);
    carseg_options_init(o);
    o->preset = p->name;
    return CARSEG_OK;
}

carseg_status carseg_preset_classes(const char *name, const char *const **classes, int *n) {
    if (!name || !classes || !n) return set_err(CARSEG_EINVAL, "carseg_preset_classes: NULL argument");
    const car_preset *p = preset_find(name);
    if (!p) return unknown_preset(name);
    *classes = p->list ? p->list->classes : NULL;
    *n = p->list ? p->list->n : 0;
    return CARSEG_OK;
}

const char *carseg_preset_classifier(const char *name) {
    const car_preset *p = name ? preset_find(name) : NULL;
    return p ? p->classifier : NULL;
}

int carseg_preset_is_refer(const char *name) {
    const car_preset *p = name ? preset_find(name) : NULL;
    return p ? p->refer != 0 : -1;
}

int carseg_presets_count(void) {
    int np;
    preset_all(&np);
    return np;
}

const char *carseg_preset_name(int i) {
    int np;
    const car_preset *ps = preset_all(&np);
    return i >= 0 && i < np ? ps[i].name : NULL;
}

/* A run's settings from the options, as `carseg segment` builds them. */
typedef struct {
    const car_preset *pr;
    car_params p, sp;
    crf_params crf;
    const char *const *bg;
    int nb;
} run_params;

static carseg_status check_opts(const char *fn, const carseg_options *o) {
    if (o && o->size != sizeof(carseg_options))
        return set_err(CARSEG_EINVAL, "%s: options.size is %zu, this library's carseg_options has "
                       "%zu bytes (initialise with carseg_options_init; rebuild against this "
                       "carseg.h)", fn, o->size, sizeof(carseg_options));
    return CARSEG_OK;
}

static carseg_status build_params(const carseg_options *o, int refer, run_params *r) {
    memset(r, 0, sizeof *r);
    car_params p = car_default_params();
    const car_preset *pr = NULL;
    if (o->preset) {
        if (!(pr = preset_find(o->preset))) return unknown_preset(o->preset);
        if (pr->refer && !refer)
            return set_err(CARSEG_EINVAL, "preset: '%s' is a referring preset: use carseg_refer",
                           pr->name);
        p.eta = pr->eta, p.theta = pr->theta, p.lambda = pr->lambda;
        TRY(vp_parse(pr->prompts, &p.prompts));
        p.n_templates = pr->templates;
        p.bg_factor = pr->bg_factor;
    } else if (refer) {   /* refcoco's settings, one template */
        const car_preset *rc0 = preset_find("refcoco");
        p.eta = rc0->eta, p.theta = rc0->theta, p.lambda = rc0->lambda;
        TRY(vp_parse(rc0->prompts, &p.prompts));
        p.n_templates = 0;
    }
    if (!isnan(o->eta)) {
        if (!(o->eta >= 0 && o->eta <= 1)) return set_err(CARSEG_EINVAL, "eta: %g is not in [0, 1]", o->eta);
        p.eta = o->eta;
    }
    if (!isnan(o->theta)) {
        if (!(o->theta >= -1 && o->theta <= 1))
            return set_err(CARSEG_EINVAL, "theta: %g is not in [-1, 1]", o->theta);
        p.theta = o->theta;
    }
    if (!isnan(o->lambda)) {
        if (!(o->lambda >= 0 && o->lambda <= 1))
            return set_err(CARSEG_EINVAL, "lambda: %g is not in [0, 1]", o->lambda);
        p.lambda = o->lambda;
    }
    if (o->prompts) {
        TRY(vp_parse(o->prompts, &p.prompts));
        if (!p.prompts) return set_err(CARSEG_EINVAL, "prompts: empty list");
    }
    if (o->templates) {
        if (!strcasecmp(o->templates, "semantic")) p.n_templates = 15;
        else if (!strcasecmp(o->templates, "single")) p.n_templates = 0;
        else return set_err(CARSEG_EINVAL, "templates: unknown set '%s' (known: semantic, single)",
                            o->templates);
    }
    if (o->crf != 0 && o->crf != 1 && o->crf != -1)
        return set_err(CARSEG_EINVAL, "crf: %d is not 0 (off) or 1 (on)", o->crf);
    p.crf = o->crf != 0;
    r->crf = o->crf_params;
    if (p.crf) {   /* the CRF's own checks, on a 1x1 image, so that a bad value fails here */
        float pr1 = 1;
        uint8_t f[3] = {0, 0, 0};
        uint16_t l;
        TRY(crf_run(&pr1, 1, 1, 1, f, &r->crf, &l, NULL));
    }
    p.crf_p = &r->crf;   /* set again by the caller after the struct is copied (see fix_ptrs) */
    if (o->fixes & ~CARSEG_FIX_ALL)
        return set_err(CARSEG_EINVAL, "fixes: unknown bits 0x%x", o->fixes & ~CARSEG_FIX_ALL);
    p.cam_raw_names = !!(o->fixes & CARSEG_FIX_Q1);
    p.fix_gray = !!(o->fixes & CARSEG_FIX_Q3);
    p.fix_crf_colors = !!(o->fixes & CARSEG_FIX_Q4);
    p.fix_box_clamp = !!(o->fixes & CARSEG_FIX_Q7);
    p.fix_center_crop = !!(o->fixes & CARSEG_FIX_Q8);
    p.fix_zero_guard = !!(o->fixes & CARSEG_FIX_Q9);
    p.fix_duplicates = !!(o->fixes & CARSEG_FIX_Q17);
    car_params sp = p;
    if (o->stuff_prompts) {
        TRY(vp_parse(o->stuff_prompts, &sp.prompts));
        if (!sp.prompts) return set_err(CARSEG_EINVAL, "stuff_prompts: empty list");
    } else if (pr && pr->stuff_prompts && !o->prompts) {
        TRY(vp_parse(pr->stuff_prompts, &sp.prompts));
    }
    sp.bg_factor = pr ? pr->stuff_bg_factor : 1;
    if (o->bg_words) {
        if (o->n_bg_words <= 0) return set_err(CARSEG_EINVAL, "bg_words: empty list (n_bg_words %d)", o->n_bg_words);
        for (int i = 0; i < o->n_bg_words; i++)
            if (!o->bg_words[i] || !o->bg_words[i][0])
                return set_err(CARSEG_EINVAL, "bg_words[%d]: empty or NULL", i);
        r->bg = o->bg_words, r->nb = o->n_bg_words;
    } else {
        r->bg = CAR_BG_WORDS, r->nb = 23;
    }
    if (o->sam_masks) {
        if (refer) return set_err(CARSEG_EINVAL, "sam_masks: CaR + SAM is for semantic segmentation only");
        TRY(cs_carsam_params_check(&o->sam));
    }
    r->pr = pr, r->p = p, r->sp = sp;
    return CARSEG_OK;
}

carseg_status carseg_options_check(const carseg_options *o, int refer) {
    if (!o) return set_err(CARSEG_EINVAL, "carseg_options_check: options is NULL");
    TRY(check_opts("carseg_options_check", o));
    run_params rp;
    return build_params(o, refer, &rp);
}

static void fix_ptrs(run_params *r) { r->p.crf_p = r->sp.crf_p = &r->crf; }

// ---------------------------------------------------------------------------------------------
// prepared images

static carseg_status prepare_image(carseg_segmenter *s, carseg_prepared *p) {
    car_stats st;
    memset(&st, 0, sizeof st);
    car_image_free(p->ci);
    p->ci = NULL;
    TRY(car_image_new(s->ctx, &p->rgb, &st, &p->ci));
    p->ms_prepare += st.ms_prepare;
    p->cpu_prepare += st.cpu_prepare;
    return CARSEG_OK;
}

carseg_status carseg_prepare(carseg_segmenter *s, const uint8_t *rgb, int w, int h,
                             const carseg_options *o, carseg_prepared **out) {
    if (!out) return set_err(CARSEG_EINVAL, "carseg_prepare: out is NULL");
    *out = NULL;
    if (!s || !rgb) return set_err(CARSEG_EINVAL, "carseg_prepare: %s is NULL", s ? "rgb" : "segmenter");
    if (w <= 0 || h <= 0) return set_err(CARSEG_EINVAL, "carseg_prepare: bad image size %dx%d", w, h);
    TRY(check_opts("carseg_prepare", o));
    if (o && o->threads > 0) carseg_set_threads(o->threads);
    size_t n;
    if (!cs_mul_ok(&n, (size_t)w, (size_t)h, 3))
        return set_err(CARSEG_EINVAL, "carseg_prepare: image %dx%d is too large", w, h);
    carseg_prepared *p = calloc(1, sizeof *p);
    if (!p || !(p->rgb.px = malloc(n))) {
        free(p);
        return set_err(CARSEG_ENOMEM, "carseg_prepare: out of memory (%dx%d image)", w, h);
    }
    memcpy(p->rgb.px, rgb, n);
    p->rgb.w = w, p->rgb.h = h, p->rgb.c = 3;
    p->m = s->m;
    carseg_status st = prepare_image(s, p);
    if (st != CARSEG_OK) {
        carseg_prepared_free(p);
        return st;
    }
    *out = p;
    return CARSEG_OK;
}

void carseg_prepared_free(carseg_prepared *p) {
    if (!p) return;
    car_image_free(p->ci);
    image_free(&p->rgb);
    free(p);
}

int carseg_prepared_width(const carseg_prepared *p) { return p ? p->rgb.w : 0; }
int carseg_prepared_height(const carseg_prepared *p) { return p ? p->rgb.h : 0; }

// ---------------------------------------------------------------------------------------------
// results

void carseg_result_free(carseg_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n && r->names; i++) free(r->names[i]);
    free(r->names);
    for (int i = 0; i < r->n_rounds; i++)
        free(r->rounds[i].live), free(r->rounds[i].scores), free(r->rounds[i].survived);
    free(r->rounds);
    free(r->scores), free(r->labels), free(r->masks), free(r->cams);
    free(r);
}

static carseg_status result_new(int w, int h, const char *const *names, int n, int refer,
                                int cams, carseg_result **out) {
    size_t hw = (size_t)w * h;
    carseg_result *r = calloc(1, sizeof *r);
    if (!r) return set_err(CARSEG_ENOMEM, "out of memory");
    r->w = w, r->h = h, r->refer = refer;
    r->names = calloc((size_t)n, sizeof(char *));
    r->scores = calloc((size_t)n, sizeof(float));
    r->labels = calloc(hw, sizeof(uint16_t));
    r->masks = calloc(hw * (size_t)n, 1);
    if (cams) r->cams = calloc(hw * (size_t)n, sizeof(float));
    if (!r->names || !r->scores || !r->labels || !r->masks || (cams && !r->cams)) {
        carseg_result_free(r);
        return set_err(CARSEG_ENOMEM, "out of memory (%d classes of %dx%d)", n, w, h);
    }
    for (int i = 0; i < n; i++) {
        if (!(r->names[i] = cs_strdup(names[i]))) {
            r->n = i;
            carseg_result_free(r);
            return set_err(CARSEG_ENOMEM, "out of memory");
        }
    }
    r->n = n;
    *out = r;
    return CARSEG_OK;
}

/* The observer of car_pass: records each round (class indices of the result) and calls the
 * user's observer. The pass's queries point into r->names (car_segment passes them through). */
typedef struct {
    carseg_result *r;
    int n_passes;
    const carseg_options *o;
    const char *const *qmap_for;   /* the queries array idx was built for */
    int *idx, n_idx;
} observer;

static carseg_status on_round(const car_round *cr, void *user) {
    observer *ob = user;
    carseg_result *r = ob->r;
    /* a new pass (round 1; its query array may reuse the last pass's freed address): map its
     * queries to class indices */
    if (cr->round == 1 || cr->queries != ob->qmap_for) {
        int nq = 0;
        for (int j = 0; j < cr->n_live; j++) nq = cr->live[j] + 1 > nq ? cr->live[j] + 1 : nq;
        /* the first round of a pass has every query live: nq is the pass's query count */
        free(ob->idx);
        if (!(ob->idx = malloc(sizeof(int) * (size_t)(nq > 0 ? nq : 1))))
            return set_err(CARSEG_ENOMEM, "out of memory");
        for (int i = 0; i < nq; i++) {
            ob->idx[i] = -1;
            for (int k = 0; k < r->n; k++)
                if (cr->queries[i] == r->names[k]) { ob->idx[i] = k; break; }
        }
        ob->n_idx = nq, ob->qmap_for = cr->queries;
    }
    if (r->n_rounds == r->cap_rounds) {
        int nc = r->cap_rounds ? 2 * r->cap_rounds : 8;
        round_rec *nr = realloc(r->rounds, sizeof(round_rec) * (size_t)nc);
        if (!nr) return set_err(CARSEG_ENOMEM, "out of memory");
        r->rounds = nr, r->cap_rounds = nc;
    }
    round_rec *rr = &r->rounds[r->n_rounds];
    memset(rr, 0, sizeof *rr);
    int n = cr->n_live;
    rr->pass = !strcmp(cr->prefix, "stuff_");
    rr->round = cr->round, rr->n = n;
    rr->live = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    rr->scores = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    rr->survived = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!rr->live || !rr->scores || !rr->survived) {
        free(rr->live), free(rr->scores), free(rr->survived);
        return set_err(CARSEG_ENOMEM, "out of memory");
    }
    r->n_rounds++;
    for (int j = 0; j < n; j++) {
        int q = cr->live[j];
        rr->live[j] = q >= 0 && q < ob->n_idx ? ob->idx[q] : -1;
        rr->scores[j] = cr->scores[j];
    }
    for (int k = 0; k < cr->n_keep; k++)
        if (cr->keep[k] >= 0 && cr->keep[k] < n) rr->survived[cr->keep[k]] = 1;
    if (ob->o->on_round) {
        carseg_round pub = {rr->pass, ob->n_passes, rr->round, n, rr->live, rr->scores,
                            rr->survived, cr->cams, cr->W, cr->H};
        if (ob->o->on_round(&pub, ob->o->on_round_user))
            return set_err(CARSEG_EINVAL, "stopped by the round observer (pass %d, round %d)",
                           rr->pass, rr->round);
    }
    return CARSEG_OK;
}

static carseg_status check_names(const char *fn, const char *what, const char *const *v, int n) {
    if (n <= 0) return set_err(CARSEG_EINVAL, "%s: empty %s list (n = %d)", fn, what, n);
    if (n > 65535) return set_err(CARSEG_EINVAL, "%s: too many %s names (%d > 65535)", fn, what, n);
    for (int i = 0; i < n; i++)
        if (!v[i] || !v[i][0]) return set_err(CARSEG_EINVAL, "%s: %s %d is %s", fn, what, i, v[i] ? "empty" : "NULL");
    return CARSEG_OK;
}

static carseg_status run(carseg_segmenter *s, carseg_prepared *im, const char *const *classes,
                         int n, const carseg_options *o, int refer, carseg_result **out) {
    const char *fn = refer ? "carseg_refer" : "carseg_segment";
    if (!out) return set_err(CARSEG_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (!s || !im) return set_err(CARSEG_EINVAL, "%s: %s is NULL", fn, s ? "image" : "segmenter");
    if (im->m != s->m)
        return set_err(CARSEG_EINVAL, "%s: the image was prepared for another model", fn);
    TRY(check_opts(fn, o));
    carseg_options dflt;
    if (!o) carseg_options_init(&dflt), o = &dflt;
    double t0 = now_ms();
    run_params rp;
    TRY(build_params(o, refer, &rp));
    fix_ptrs(&rp);
    car_job job;
    memset(&job, 0, sizeof job);
    job.p = rp.p, job.stuff_p = rp.sp;
    job.bg = rp.bg, job.nb = rp.nb;
    if (refer) {
        if (!classes) return set_err(CARSEG_EINVAL, "%s: phrases is NULL", fn);
        TRY(check_names(fn, "phrase", classes, n));
    } else if (!classes) {
        if (!rp.pr || !rp.pr->list)
            return set_err(CARSEG_EINVAL, "%s: no class list (give classes, or a semantic preset "
                           "in options.preset)", fn);
        const preset_list *l = rp.pr->list;
        classes = l->classes, n = l->n;
        job.things = l->things, job.n_things = l->n_things;
        job.stuff = l->stuff, job.n_stuff = l->n_stuff;
    } else {
        TRY(check_names(fn, "class", classes, n));
    }
    if (o->threads > 0) carseg_set_threads(o->threads);
    int w = im->rgb.w, h = im->rgb.h;
    size_t hw = (size_t)w * h;
    carseg_result *r = NULL;
    TRY(result_new(w, h, classes, n, refer, o->keep_cams != 0, &r));
    r->precision = carseg_clip_get_precision(s->m->cls);
    observer ob = {r, job.stuff && job.n_stuff > 0 ? 2 : 1, o, NULL, NULL, 0};
    car_dump dump = {"", on_round, &ob};
    carseg_status st;
    if (refer) {
        uint8_t *m1 = malloc(hw);
        if (!m1) st = set_err(CARSEG_ENOMEM, "%s: out of memory", fn);
        else st = car_refer(s->ctx, im->ci, (const char *const *)r->names, n, job.bg, job.nb,
                            &job.p, &dump, m1, r->scores, r->masks, r->cams, &r->st);
        for (size_t i = 0; st == CARSEG_OK && i < hw; i++) r->labels[i] = m1[i];
        free(m1);
    } else {
        job.classes = (const char *const *)r->names, job.n_classes = n;
        job.cams = r->cams;
        if (o->sam_masks) {
            if (o->sam_masks->w != w || o->sam_masks->h != h) {
                carseg_result_free(r);
                return set_err(CARSEG_EINVAL, "%s: sam_masks are %dx%d, the image %dx%d", fn,
                               o->sam_masks->w, o->sam_masks->h, w, h);
            }
            job.sam = o->sam_masks, job.sam_p = o->sam;
        }
        st = car_segment(s->ctx, im->ci, &job, &dump, r->labels, r->scores, r->masks, &r->st);
    }
    free(ob.idx);
    if (st != CARSEG_OK) {
        carseg_result_free(r);
        return st;
    }
    r->st.ms_prepare = im->ms_prepare;   /* the image's preparation, reported once */
    r->st.cpu_prepare = im->cpu_prepare;
    im->ms_prepare = im->cpu_prepare = 0;
    r->ms_total = now_ms() - t0 + r->st.ms_prepare;
    *out = r;
    return CARSEG_OK;
}

carseg_status carseg_segment(carseg_segmenter *s, carseg_prepared *im, const char *const *classes,
                             int n, const carseg_options *o, carseg_result **out) {
    return run(s, im, classes, n, o, 0, out);
}

carseg_status carseg_refer(carseg_segmenter *s, carseg_prepared *im, const char *const *phrases,
                           int n, const carseg_options *o, carseg_result **out) {
    return run(s, im, phrases, n, o, 1, out);
}

carseg_status carseg_segment_rgb(carseg_segmenter *s, const uint8_t *rgb, int w, int h,
                                 const char *const *classes, int n, const carseg_options *o,
                                 carseg_result **out) {
    if (!out) return set_err(CARSEG_EINVAL, "carseg_segment_rgb: out is NULL");
    *out = NULL;
    TRY(check_opts("carseg_segment_rgb", o));
    carseg_prepared *p;
    TRY(carseg_prepare(s, rgb, w, h, o, &p));
    carseg_status st = carseg_segment(s, p, classes, n, o, out);
    carseg_prepared_free(p);
    return st;
}

int carseg_result_width(const carseg_result *r) { return r ? r->w : 0; }
int carseg_result_height(const carseg_result *r) { return r ? r->h : 0; }
int carseg_result_is_refer(const carseg_result *r) { return r ? r->refer : 0; }
int carseg_result_count(const carseg_result *r) { return r ? r->n : 0; }

const char *carseg_result_class(const carseg_result *r, int k) {
    return r && k >= 0 && k < r->n ? r->names[k] : NULL;
}
float carseg_result_score(const carseg_result *r, int k) {
    return r && k >= 0 && k < r->n ? r->scores[k] : 0;
}
const uint16_t *carseg_result_labels(const carseg_result *r) { return r ? r->labels : NULL; }
const uint8_t *carseg_result_mask(const carseg_result *r, int k) {
    return r && k >= 0 && k < r->n ? r->masks + (size_t)k * r->w * r->h : NULL;
}
const float *carseg_result_cams(const carseg_result *r, int k) {
    return r && r->cams && k >= 0 && k < r->n ? r->cams + (size_t)k * r->w * r->h : NULL;
}
int carseg_result_rounds(const carseg_result *r) { return r ? r->n_rounds : 0; }

int carseg_result_round(const carseg_result *r, int i, const int **live, const float **scores,
                        const uint8_t **survived) {
    if (!r || i < 0 || i >= r->n_rounds) return -1;
    const round_rec *rr = &r->rounds[i];
    if (live) *live = rr->live;
    if (scores) *scores = rr->scores;
    if (survived) *survived = rr->survived;
    return rr->n;
}

int carseg_result_round_pass(const carseg_result *r, int i) {
    return r && i >= 0 && i < r->n_rounds ? r->rounds[i].pass : -1;
}

/* "STAGE", "STAGE.cpu", "roundK.STAGE" and "roundK.STAGE.cpu" (carseg.h) */
double carseg_result_timing(const carseg_result *r, const char *stage) {
    if (!r || !stage) return -1;
    const car_stats *s = &r->st;
    int round = 0, used = 0;
    if (sscanf(stage, "round%d.%n", &round, &used) == 1 && used > 0) {
        if (round < 1 || round > CAR_STATS_ROUNDS || round > s->rounds) return -1;
        int k = round - 1;
        const char *t = stage + used;
        if (!strcmp(t, "cam")) return s->r_ms_cam[k];
        if (!strcmp(t, "cam.cpu")) return s->r_cpu_cam[k];
        if (!strcmp(t, "prompt")) return s->r_ms_prompt[k];
        if (!strcmp(t, "classify")) return s->r_ms_cls[k];
        if (!strcmp(t, "classify.cpu")) return s->r_cpu_cls[k];
        return -1;
    }
    static const char *const names[6] = {"prepare", "text", "cam", "prompt", "classify", "crf"};
    const double wall[6] = {s->ms_prepare, s->ms_text, s->ms_cam, s->ms_prompt, s->ms_cls, s->ms_crf};
    const double cpu[6] = {s->cpu_prepare, s->cpu_text, s->cpu_cam, s->cpu_prompt, s->cpu_cls, s->cpu_crf};
    for (int i = 0; i < 6; i++) {
        size_t n = strlen(names[i]);
        if (strncmp(stage, names[i], n)) continue;
        if (!stage[n]) return wall[i];
        if (!strcmp(stage + n, ".cpu")) return cpu[i];
    }
    if (!strcmp(stage, "sam")) return s->ms_sam;
    if (!strcmp(stage, "total")) return r->ms_total;
    return -1;
}

/* The JSON of `carseg segment` (NAME.json). Refer: one entry named after the first phrase with
 * the best phrase score. */
carseg_status carseg_result_json(const carseg_result *r, const char *image_name, char **out) {
    if (!out) return set_err(CARSEG_EINVAL, "carseg_result_json: json is NULL");
    *out = NULL;
    if (!r) return set_err(CARSEG_EINVAL, "carseg_result_json: result is NULL");
    int w = r->w, h = r->h, nc = r->refer ? 1 : r->n;
    float rs = 0;
    for (int j = 0; r->refer && j < r->n; j++) rs = r->scores[j] > rs ? r->scores[j] : rs;
    const float *scores = r->refer ? &rs : r->scores;
    size_t n = (size_t)w * h;
    long *cnt = calloc((size_t)nc + 1, sizeof(long));
    int *bb = malloc(sizeof(int) * 4 * ((size_t)nc + 1));
    char *buf = NULL;
    size_t len = 0;
    FILE *f = NULL;
    if (!cnt || !bb || !(f = open_memstream(&buf, &len))) {
        free(cnt), free(bb);
        return set_err(CARSEG_ENOMEM, "carseg_result_json: out of memory");
    }
    for (int k = 0; k <= nc; k++) bb[4 * k] = w, bb[4 * k + 1] = h, bb[4 * k + 2] = -1, bb[4 * k + 3] = -1;
    for (size_t i = 0; i < n; i++) {
        int k = r->labels[i], x = (int)(i % (size_t)w), y = (int)(i / (size_t)w);
        if (k > nc) continue;
        cnt[k]++;
        if (x < bb[4 * k]) bb[4 * k] = x;
        if (y < bb[4 * k + 1]) bb[4 * k + 1] = y;
        if (x > bb[4 * k + 2]) bb[4 * k + 2] = x;
        if (y > bb[4 * k + 3]) bb[4 * k + 3] = y;
    }
    fputs("{\n  \"image\": ", f);
    if (image_name) json_write_str(f, image_name);
    else fputs("null", f);
    fprintf(f, ",\n  \"width\": %d,\n  \"height\": %d,\n  \"mode\": \"%s\",\n  \"precision\": \"%s\",\n"
               "  \"classes\": [", w, h, r->refer ? "refer" : "semantic",
            carseg_precision_name(r->precision));
    int first = 1;
    for (int k = 1; k <= nc; k++) {
        if (!cnt[k] && !(scores[k - 1] > 0)) continue;
        fprintf(f, "%s\n    {\"label\": %d, \"name\": ", first ? "" : ",", k);
        json_write_str(f, r->names[k - 1]);
        fprintf(f, ", \"score\": %.6g, \"pixels\": %ld, \"bbox\": ", scores[k - 1], cnt[k]);
        if (cnt[k]) fprintf(f, "[%d, %d, %d, %d]}", bb[4 * k], bb[4 * k + 1], bb[4 * k + 2], bb[4 * k + 3]);
        else fputs("null}", f);
        first = 0;
    }
    const car_stats *st = &r->st;
    fprintf(f, "%s],\n  \"background_pixels\": %ld,\n  \"rounds\": %d,\n", first ? "" : "\n  ", cnt[0],
            st->rounds_total);
    fprintf(f, "  \"timings_ms\": {\"prepare\": %.1f, \"text\": %.1f, \"cam\": %.1f, \"prompts\": %.1f, "
               "\"classifier\": %.1f, \"crf\": %.1f, \"total\": %.1f}\n}\n",
            st->ms_prepare, st->ms_text, st->ms_cam, st->ms_prompt, st->ms_cls, st->ms_crf, r->ms_total);
    free(cnt), free(bb);
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return set_err(CARSEG_ENOMEM, "carseg_result_json: out of memory");
    }
    *out = buf;
    return CARSEG_OK;
}

const char *carseg_version(void) { return CARSEG_VERSION; }
