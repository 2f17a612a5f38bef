/* serve_car.c — `carseg serve`: the compute side, on the public API (carseg.h) only.
 * /v1/segment (semantic or referring segmentation of an uploaded image → JSON or the label PNG;
 * with --sam, CaR + SAM), /v1/embed (CLIP features of texts and images), /v1/models. The models
 * are opened once (carseg_car_model and the carseg_sam, shared read-only); each compute thread
 * owns a carseg_segmenter, and a CaR + SAM request its own carseg_sam_image. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "serve.h"

struct serve_engine {
    const serve_cfg *cfg;
    carseg_car_model *model;
    carseg_sam *sam;            /* --sam MODEL, or NULL */
    char gen_name[512], cls_name[512], sam_name[512];
};

struct serve_worker {
    serve_engine *e;
    carseg_segmenter *seg;
};

/* a name given by the user is a file path or a registry name: shown as given */
carseg_status serve_engine_open(const serve_cfg *cfg, serve_engine **out) {
    *out = NULL;
    serve_engine *e = calloc(1, sizeof *e);
    if (!e) return CARSEG_ENOMEM;
    e->cfg = cfg;
    snprintf(e->gen_name, sizeof e->gen_name, "%s", cfg->generator ? cfg->generator : "ViT-B/16");
    snprintf(e->cls_name, sizeof e->cls_name, "%s", cfg->classifier ? cfg->classifier : "ViT-L/14");
    carseg_status st = carseg_car_model_open(e->gen_name, e->cls_name, cfg->vocab, &e->model);
    if (st == CARSEG_OK) st = carseg_car_model_set_precision(e->model, cfg->precision);
    if (st == CARSEG_OK && cfg->sam) {
        snprintf(e->sam_name, sizeof e->sam_name, "%s", cfg->sam);
        st = carseg_sam_load(cfg->sam, &e->sam);
    }
    if (st != CARSEG_OK) {
        carseg_car_model_close(e->model);
        carseg_sam_free(e->sam);
        free(e);
        return st;
    }
    *out = e;
    return CARSEG_OK;
}

void serve_engine_close(serve_engine *e) {
    if (!e) return;
    carseg_car_model_close(e->model);
    carseg_sam_free(e->sam);
    free(e);
}

int serve_engine_has_sam(const serve_engine *e) { return e && e->sam; }

carseg_status serve_worker_new(serve_engine *e, serve_worker **out) {
    *out = NULL;
    serve_worker *w = calloc(1, sizeof *w);
    if (!w) return CARSEG_ENOMEM;
    w->e = e;
    carseg_status st = carseg_segmenter_new(e->model, &w->seg);
    if (st != CARSEG_OK) { free(w); return st; }
    *out = w;
    return CARSEG_OK;
}

void serve_worker_free(serve_worker *w) {
    if (!w) return;
    carseg_segmenter_free(w->seg);
    free(w);
}

// ---------------------------------------------------------------------------------------------
// /v1/models

static void clip_json(sbuf *b, const char *name, const carseg_clip *m) {
    sb_puts(b, "{\"name\": ");
    sb_json_str(b, name);
    sb_printf(b, ", \"embed_dim\": %d, \"image_size\": %d}", carseg_clip_embed_dim(m),
              carseg_clip_image_size(m));
}

void serve_models_json(const serve_engine *e, sbuf *b) {
    const serve_cfg *c = e->cfg;
    sb_puts(b, "{\"generator\": ");
    clip_json(b, e->gen_name, carseg_car_model_generator(e->model));
    sb_puts(b, ", \"classifier\": ");
    clip_json(b, e->cls_name, carseg_car_model_classifier(e->model));
    sb_puts(b, ", \"sam\": ");
    if (e->sam) {   /* CaR + SAM: the model and the generator's defaults (carseg_sam_amg_init) */
        carseg_sam_amg_params a;
        carseg_sam_amg_init(&a);
        if (a.points_per_side > c->max_sam_points) a.points_per_side = c->max_sam_points;
        sb_puts(b, "{\"name\": ");
        sb_json_str(b, e->sam_name);
        sb_printf(b, ", \"hq\": %s, \"points_per_side\": %d, \"pred_iou\": %g, \"stability\": %g, "
                     "\"nms\": %g, \"max_points_per_side\": %d}",
                  carseg_sam_is_hq(e->sam) ? "true" : "false", a.points_per_side, a.pred_iou_thresh,
                  a.stability_score_thresh, a.box_nms_thresh, c->max_sam_points);
    } else {
        sb_puts(b, "null");
    }
    sb_puts(b, ", \"precision\": ");
    sb_json_str(b, carseg_precision_name(carseg_car_model_precision(e->model)));
    sb_puts(b, ", \"presets\": [");
    for (int i = 0; i < carseg_presets_count(); i++) {
        const char *p = carseg_preset_name(i);
        const char *const *cl = NULL;
        int n = 0;
        carseg_preset_classes(p, &cl, &n);
        sb_puts(b, i ? ", {\"name\": " : "{\"name\": ");
        sb_json_str(b, p);
        sb_printf(b, ", \"referring\": %s, \"classes\": [", n ? "false" : "true");
        for (int k = 0; k < n; k++) {
            if (k) sb_puts(b, ", ");
            sb_json_str(b, cl[k]);
        }
        sb_puts(b, "]}");
    }
    sb_puts(b, "], \"fixes\": [");
    int first = 1;
    for (unsigned bit = 1; bit && bit <= CARSEG_FIX_ALL; bit <<= 1) {
        const char *n = carseg_fix_name(bit);
        if (!n) continue;
        if (!first) sb_puts(b, ", ");
        sb_json_str(b, n);
        first = 0;
    }
    sb_printf(b, "], \"limits\": {\"max_body_bytes\": %zu, \"max_pixels\": %lld, \"max_classes\": %d, "
                 "\"request_timeout_s\": %d, \"idle_timeout_s\": %d, \"max_queue\": %d, \"workers\": %d, "
                 "\"max_sam_points\": %d}}\n",
              c->max_body, (long long)c->max_pixels, c->max_classes, c->request_timeout_s,
              c->idle_timeout_s, c->max_queue, c->workers, c->max_sam_points);
}

// ---------------------------------------------------------------------------------------------
// the request's settings, parsed from the form

#define MAX_NAME_BYTES 1000   /* one class name / phrase / text */

typedef struct {
    char **v;
    int n, cap;
} strv;

static void strv_free(strv *s) {
    for (int i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* appends s[0..len) trimmed; empty items are skipped. -1: out of memory */
static int strv_push(strv *s, const char *p, size_t len) {
    while (len && isspace((unsigned char)*p)) p++, len--;
    while (len && isspace((unsigned char)p[len - 1])) len--;
    if (!len) return 0;
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 16;
        char **nv = realloc(s->v, sizeof *nv * (size_t)nc);
        if (!nv) return -1;
        s->v = nv, s->cap = nc;
    }
    char *c = malloc(len + 1);
    if (!c) return -1;
    memcpy(c, p, len);
    c[len] = 0;
    s->v[s->n++] = c;
    return 0;
}

/* the CLI's --classes rule: '|' separates when present, else ','; stops past `limit` items */
static int strv_split(strv *s, const char *text, int limit) {
    char sep = strchr(text, '|') ? '|' : ',';
    const char *p = text;
    for (;;) {
        const char *e = strchr(p, sep);
        if (strv_push(s, p, e ? (size_t)(e - p) : strlen(p))) return -1;
        if (!e || s->n > limit) break;
        p = e + 1;
    }
    return 0;
}

typedef struct {
    carseg_options o;
    strv classes, refer, bg;
    char *prompts, *stuff_prompts, *preset, *templates;
    int want_png;     /* the field format=png (beside the Accept header) */
    int with_png;     /* the field label_png=1: the JSON holds the label PNG (base64) */
    int sam;          /* CaR + SAM (the field sam; default on when the server has a SAM model) */
    carseg_sam_amg_params amg;   /* the generator's settings (sam_points, sam_pred_iou, ...) */
    const serve_field *image;
} seg_req;

static void seg_req_free(seg_req *q) {
    strv_free(&q->classes), strv_free(&q->refer), strv_free(&q->bg);
    free(q->prompts), free(q->stuff_prompts), free(q->preset), free(q->templates);
    memset(q, 0, sizeof *q);
}

static int parse_dbl(const char *field, const char *v, double lo, double hi, double *out, serve_reply *r) {
    char *end;
    while (isspace((unsigned char)*v)) v++;
    double d = strtod(v, &end);
    while (isspace((unsigned char)*end)) end++;
    if (end == v || *end || !isfinite(d)) {
        reply_err(r, 400, "field '%s': expected a number, got '%.40s'", field, v);
        return 1;
    }
    if (d < lo || d > hi) {
        reply_err(r, 400, "field '%s': %g is outside [%g, %g]", field, d, lo, hi);
        return 1;
    }
    *out = d;
    return 0;
}

static int parse_num(const char *field, const char *v, double lo, double hi, float *out, serve_reply *r) {
    double d;
    if (parse_dbl(field, v, lo, hi, &d, r)) return 1;
    *out = (float)d;
    return 0;
}

/* an integer in [lo, hi]; `limit` names where hi comes from in the error, or NULL */
static int parse_int(const char *field, const char *v, int lo, int hi, const char *limit, int *out,
                     serve_reply *r) {
    double d;
    if (parse_dbl(field, v, -1e18, 1e18, &d, r)) return 1;
    if (d != (double)(long long)d) {
        reply_err(r, 400, "field '%s': expected an integer, got '%.40s'", field, v);
        return 1;
    }
    if (d < lo || d > hi) {
        reply_err(r, 400, "field '%s': %.0f is outside [%d, %d]%s%s", field, d, lo, hi, limit ? " " : "",
                  limit ? limit : "");
        return 1;
    }
    *out = (int)d;
    return 0;
}

static int parse_bool(const char *field, const char *v, int *out, serve_reply *r) {
    static const char *yes[] = {"1", "true", "on", "yes"}, *no[] = {"0", "false", "off", "no"};
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(v, yes[i])) { *out = 1; return 0; }
        if (!strcasecmp(v, no[i])) { *out = 0; return 0; }
    }
    reply_err(r, 400, "field '%s': expected 1/0, true/false or on/off, got '%.40s'", field, v);
    return 1;
}

static char *dup_or_null(const char *s, int *oom) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = 1;
    return d;
}

/* every text field must be UTF-8 without NUL bytes (the form keeps lengths; strings do not) */
static int field_text_ok(const serve_field *x, serve_reply *r) {
    if (strlen((const char *)x->data) != x->len) {
        reply_err(r, 400, "field '%.60s': holds a NUL byte", x->name);
        return 0;
    }
    return 1;
}

static int names_ok(const strv *s, const char *what, int max, serve_reply *r) {
    if (s->n > max) {
        reply_err(r, 400, "too many %s: more than %d (--max-classes)", what, max);
        return 0;
    }
    for (int i = 0; i < s->n; i++)
        if (strlen(s->v[i]) > MAX_NAME_BYTES) {
            reply_err(r, 400, "%s %d is longer than %d bytes", what, i + 1, MAX_NAME_BYTES);
            return 0;
        }
    return 1;
}

/* the CaR + SAM fields beside `sam`: the generator's settings, then the matching thresholds */
#define SAM_FIELDS "sam_points", "sam_pred_iou", "sam_stability", "sam_nms", "sam_iom", "sam_min_pred", "sam_iou"

/* CaR + SAM: on by default when the server has a SAM model and the request is semantic; a SAM
 * field the request cannot use (no model, sam=0, refer) is an error, not ignored. The defaults are
 * carseg_sam_amg_init's (CaR's), with points per side capped at --max-sam-points. */
static int sam_parse(const serve_engine *e, const serve_form *f, seg_req *q, serve_reply *r) {
    static const char *fields[] = {SAM_FIELDS};
    const char *given = NULL, *v;
    for (size_t k = 0; k < sizeof fields / sizeof *fields && !given; k++)
        if (form_get(f, fields[k])) given = fields[k];
    q->sam = e->sam && !q->refer.n;
    if ((v = form_str(f, "sam")) && parse_bool("sam", v, &q->sam, r)) return 1;
    if (!e->sam && (q->sam || given)) {
        reply_err(r, 400, "field '%s': this server has no SAM model (start it with --sam MODEL; "
                          "/v1/models says \"sam\": null)", given && !q->sam ? given : "sam");
        return 1;
    }
    if (q->sam && q->refer.n) {
        reply_err(r, 400, "field 'sam': CaR + SAM refines semantic segmentation ('classes' or 'preset'), "
                          "not 'refer'");
        return 1;
    }
    if (!q->sam && given) {
        reply_err(r, 400, "field '%s': CaR + SAM is off for this request (%s)", given,
                  q->refer.n ? "'refer'" : "sam=0");
        return 1;
    }
    if (!q->sam) return 0;
    carseg_sam_amg_params *a = &q->amg;
    carseg_sam_params *m = &q->o.sam;
    if (a->points_per_side > e->cfg->max_sam_points) a->points_per_side = e->cfg->max_sam_points;
    if ((v = form_str(f, "sam_points")) &&
        parse_int("sam_points", v, 1, e->cfg->max_sam_points, "(--max-sam-points)", &a->points_per_side, r))
        return 1;
    if ((v = form_str(f, "sam_pred_iou")) && parse_dbl("sam_pred_iou", v, 0, 1, &a->pred_iou_thresh, r)) return 1;
    if ((v = form_str(f, "sam_stability")) && parse_dbl("sam_stability", v, 0, 1, &a->stability_score_thresh, r)) return 1;
    if ((v = form_str(f, "sam_nms")) && parse_dbl("sam_nms", v, 0, 1, &a->box_nms_thresh, r)) return 1;
    if ((v = form_str(f, "sam_iom")) && parse_dbl("sam_iom", v, 0, 1, &m->iom_thres, r)) return 1;
    if ((v = form_str(f, "sam_min_pred")) && parse_dbl("sam_min_pred", v, 0, 1, &m->min_pred, r)) return 1;
    if ((v = form_str(f, "sam_iou")) && parse_dbl("sam_iou", v, 0, 1, &m->iou_thres, r)) return 1;
    return 0;
}

/* fills q from the form; 0 = fine, else the 4xx answer is in *r */
static int seg_parse(const serve_engine *e, const serve_form *f, seg_req *q, serve_reply *r) {
    static const char *known[] = {"image", "classes", "preset", "refer", "theta", "eta", "lambda",
                                  "prompts", "stuff_prompts", "bg_words", "crf", "fix",
                                  "templates", "format", "label_png", "sam", SAM_FIELDS};
    const size_t nk = sizeof known / sizeof *known;
    memset(q, 0, sizeof *q);
    carseg_options_init(&q->o);
    carseg_sam_amg_init(&q->amg);
    int max = e->cfg->max_classes, oom = 0;
    for (int i = 0; i < f->n; i++) {
        const serve_field *x = &f->v[i];
        size_t k = 0;
        while (k < nk && strcmp(x->name, known[k])) k++;
        if (k == nk) {
            char list[400] = "";
            for (size_t j = 0, n = 0; j < nk && n < sizeof list; j++)
                n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", j ? ", " : "", known[j]);
            reply_err(r, 400, "unknown field '%.60s' (fields: %s)", x->name, list);
            return 1;
        }
        if (!strcmp(x->name, "image")) continue;
        if (!field_text_ok(x, r)) return 1;
        if (strcmp(x->name, "refer") && form_count(f, x->name) > 1) {
            reply_err(r, 400, "field '%s' given %d times (only 'refer' repeats)", x->name, form_count(f, x->name));
            return 1;
        }
    }
    const serve_field *im = form_get(f, "image");
    if (!im) { reply_err(r, 400, "no 'image' field: send the image as a multipart file field named 'image'"); return 1; }
    if (form_count(f, "image") > 1) { reply_err(r, 400, "field 'image' given %d times (one image per request)", form_count(f, "image")); return 1; }
    if (im->len == 0) { reply_err(r, 400, "field 'image' is empty"); return 1; }
    q->image = im;
    const char *v;
    if ((v = form_str(f, "preset")) && *v) {
        q->preset = dup_or_null(v, &oom);
        if (!oom && carseg_options_preset(&q->o, q->preset) != CARSEG_OK) {
            reply_err(r, 400, "field 'preset': %s", carseg_last_error());
            return 1;
        }
    }
    if ((v = form_str(f, "classes")) && strv_split(&q->classes, v, max)) oom = 1;
    for (int i = 0; i < f->n && !oom; i++)
        if (!strcmp(f->v[i].name, "refer") && strv_push(&q->refer, (const char *)f->v[i].data, f->v[i].len)) oom = 1;
    if (oom) { reply_err(r, 500, "out of memory"); return 1; }
    if (form_get(f, "classes") && q->classes.n == 0) { reply_err(r, 400, "field 'classes' is empty"); return 1; }
    if (form_get(f, "refer") && q->refer.n == 0) { reply_err(r, 400, "field 'refer' is empty"); return 1; }
    if (!names_ok(&q->classes, "classes", max, r) || !names_ok(&q->refer, "refer phrases", max, r)) return 1;
    const char *const *pcl = NULL;
    int pn = 0;
    if (q->preset) carseg_preset_classes(q->preset, &pcl, &pn);
    if (q->preset && pn == 0 && q->refer.n == 0) {
        reply_err(r, 400, "preset '%s' is a referring preset: give the phrases as 'refer' fields", q->preset);
        return 1;
    }
    int modes = (q->classes.n > 0) + (q->preset && pn > 0) + (q->refer.n > 0);   /* as the CLI */
    if (modes != 1) {
        reply_err(r, 400, "give exactly one of 'classes', 'preset' (with its class list) or 'refer'");
        return 1;
    }
    if (!q->classes.n && !q->refer.n && pn > max) {
        reply_err(r, 400, "preset '%s' has %d classes, more than %d (--max-classes)", q->preset, pn, max);
        return 1;
    }
    if ((v = form_str(f, "theta")) && parse_num("theta", v, -1, 1, &q->o.theta, r)) return 1;
    if ((v = form_str(f, "eta")) && parse_num("eta", v, 0, 1, &q->o.eta, r)) return 1;
    if ((v = form_str(f, "lambda")) && parse_num("lambda", v, 0, 1, &q->o.lambda, r)) return 1;
    if ((v = form_str(f, "crf")) && parse_bool("crf", v, &q->o.crf, r)) return 1;
    if ((v = form_str(f, "fix")) && carseg_fixes_parse(v, &q->o.fixes) != CARSEG_OK) {
        reply_err(r, 400, "field 'fix': %s", carseg_last_error());
        return 1;
    }
    if ((v = form_str(f, "templates"))) {
        const char *t = !strcmp(v, "15") ? "semantic" : !strcmp(v, "0") || !strcmp(v, "1") ? "single" : v;
        if (strcmp(t, "semantic") && strcmp(t, "single")) {
            reply_err(r, 400, "field 'templates': expected semantic (15) or single (0), got '%.40s'", v);
            return 1;
        }
        q->templates = dup_or_null(t, &oom);
        q->o.templates = q->templates;
    }
    if ((v = form_str(f, "prompts")) && *v) q->o.prompts = q->prompts = dup_or_null(v, &oom);
    if ((v = form_str(f, "stuff_prompts")) && *v) q->o.stuff_prompts = q->stuff_prompts = dup_or_null(v, &oom);
    if ((v = form_str(f, "bg_words"))) {
        if (strv_split(&q->bg, v, 10000)) oom = 1;
        if (!oom && q->bg.n == 0) { reply_err(r, 400, "field 'bg_words' is empty"); return 1; }
        if (!oom && !names_ok(&q->bg, "background words", 1000, r)) return 1;
        q->o.bg_words = (const char *const *)q->bg.v;
        q->o.n_bg_words = q->bg.n;
    }
    if ((v = form_str(f, "label_png")) && parse_bool("label_png", v, &q->with_png, r)) return 1;
    if ((v = form_str(f, "format"))) {
        if (!strcasecmp(v, "png")) q->want_png = 1;
        else if (strcasecmp(v, "json")) { reply_err(r, 400, "field 'format': expected json or png, got '%.40s'", v); return 1; }
    }
    if (oom) { reply_err(r, 500, "out of memory"); return 1; }
    if (sam_parse(e, f, q, r)) return 1;
    q->o.threads = e->cfg->threads;
    return 0;
}

int serve_segment_check(const serve_engine *e, const serve_form *f, serve_reply *out) {
    seg_req q;
    int bad = seg_parse(e, f, &q, out);
    seg_req_free(&q);
    return bad;
}

// ---------------------------------------------------------------------------------------------
// /v1/segment

/* a library failure as an HTTP answer: a caller's mistake is 400, the rest 500 */
static void reply_lib(serve_reply *r, carseg_status st, const char *what) {
    const char *m = carseg_last_error();
    int code = st == CARSEG_EINVAL || st == CARSEG_EFORMAT ? 400 : st == CARSEG_ENOMEM ? 503 : 500;
    reply_err(r, code, "%s%s%s", what, *what ? ": " : "", m && *m ? m : carseg_status_str(st));
}

typedef struct {
    double deadline;
    int timed_out;
} round_guard;

static int on_round(const carseg_round *rd, void *user) {
    (void)rd;
    round_guard *g = user;
    if (serve_now_ms() > g->deadline) { g->timed_out = 1; return 1; }
    return 0;
}

static void put_int_array(sbuf *b, const int *v, int n) {
    sb_puts(b, "[");
    for (int i = 0; i < n; i++) sb_printf(b, i ? ", %d" : "%d", v[i]);
    sb_puts(b, "]");
}

/* the answer's JSON: the CLI's per-image JSON (same keys, same values, same number formats)
 * plus each found class's mask (COCO RLE), every query's final score and the recurrence */
static void sb_base64(sbuf *b, const uint8_t *p, size_t n) {
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char q[4];
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        q[0] = T[v >> 18 & 63], q[1] = T[v >> 12 & 63];
        q[2] = i + 1 < n ? T[v >> 6 & 63] : '=';
        q[3] = i + 2 < n ? T[v & 63] : '=';
        sb_put(b, q, 4);
    }
}

/* what CaR + SAM did in a request (the answer's "sam" object) */
typedef struct {
    const carseg_sam_amg_params *amg;
    const carseg_sam_params *match;
    int masks;                  /* the generator's records */
    double ms_encoder, ms_generator;   /* carseg_sam_set_image; carseg_sam_generate */
} sam_info;

static void sam_json(sbuf *b, const sam_info *s) {
    const carseg_sam_amg_params *a = s->amg;
    sb_printf(b, "  \"sam\": {\"masks\": %d, \"points_per_side\": %d, \"pred_iou\": %.9g, "
                 "\"stability\": %.9g, \"nms\": %.9g, \"iom\": %.9g, \"min_pred\": %.9g, \"iou\": %.9g, "
                 "\"encoder_ms\": %.1f, \"generator_ms\": %.1f},\n",
              s->masks, a->points_per_side, a->pred_iou_thresh, a->stability_score_thresh,
              a->box_nms_thresh, s->match->iom_thres, s->match->min_pred, s->match->iou_thres,
              s->ms_encoder, s->ms_generator);
}

static int result_json(const carseg_result *res, const char *image_name, carseg_precision prec,
                       const uint8_t *png, size_t png_len, const sam_info *sam, double ms_total,
                       sbuf *b) {
    int w = carseg_result_width(res), h = carseg_result_height(res), refer = carseg_result_is_refer(res);
    int n = carseg_result_count(res), nc = refer ? 1 : n;
    size_t np = (size_t)w * h;
    const uint16_t *lab = carseg_result_labels(res);
    long *cnt = calloc((size_t)nc + 1, sizeof(long));
    int *bb = malloc(sizeof(int) * 4 * ((size_t)nc + 1));
    uint8_t *mask = malloc(np ? np : 1);
    if (!cnt || !bb || !mask) { free(cnt), free(bb), free(mask); return -1; }
    for (int k = 0; k <= nc; k++) bb[4 * k] = w, bb[4 * k + 1] = h, bb[4 * k + 2] = -1, bb[4 * k + 3] = -1;
    for (size_t i = 0; i < np; i++) {
        int k = lab[i], x = (int)(i % (size_t)w), y = (int)(i / (size_t)w);
        if (k > nc) continue;
        cnt[k]++;
        if (x < bb[4 * k]) bb[4 * k] = x;
        if (y < bb[4 * k + 1]) bb[4 * k + 1] = y;
        if (x > bb[4 * k + 2]) bb[4 * k + 2] = x;
        if (y > bb[4 * k + 3]) bb[4 * k + 3] = y;
    }
    float rs = 0;
    for (int j = 0; refer && j < n; j++) rs = carseg_result_score(res, j) > rs ? carseg_result_score(res, j) : rs;
    sb_puts(b, "{\n  \"image\": ");
    if (image_name && *image_name) sb_json_str(b, image_name);
    else sb_puts(b, "null");
    sb_printf(b, ",\n  \"width\": %d,\n  \"height\": %d,\n  \"mode\": \"%s\",\n  \"precision\": \"%s\",\n"
                 "  \"classes\": [", w, h, refer ? "refer" : "semantic",
              carseg_precision_name(prec));
    int first = 1, rc = 0;
    for (int k = 1; k <= nc; k++) {
        float sc = refer ? rs : carseg_result_score(res, k - 1);
        if (!cnt[k] && !(sc > 0)) continue;
        sb_printf(b, "%s\n    {\"label\": %d, \"name\": ", first ? "" : ",", k);
        sb_json_str(b, refer ? carseg_result_class(res, 0) : carseg_result_class(res, k - 1));
        sb_printf(b, ", \"score\": %.6g, \"pixels\": %ld, \"bbox\": ", sc, cnt[k]);
        if (cnt[k]) sb_printf(b, "[%d, %d, %d, %d]", bb[4 * k], bb[4 * k + 1], bb[4 * k + 2], bb[4 * k + 3]);
        else sb_puts(b, "null");
        for (size_t i = 0; i < np; i++) mask[i] = lab[i] == k;
        char *rle = NULL;
        if (carseg_rle_encode(mask, h, w, &rle) != CARSEG_OK) { rc = -1; break; }
        sb_printf(b, ", \"mask\": {\"size\": [%d, %d], \"counts\": ", h, w);
        sb_json_str(b, rle);
        sb_puts(b, "}}");
        free(rle);
        first = 0;
    }
    sb_printf(b, "%s],\n  \"background_pixels\": %ld,\n  \"rounds\": %d,\n", first ? "" : "\n  ", cnt[0],
              carseg_result_rounds(res));
    /* all queries (classes or phrases) with their final scores, found or not */
    sb_printf(b, "  \"queries\": [");
    for (int k = 0; k < n; k++) {
        sb_puts(b, k ? ", {\"name\": " : "{\"name\": ");
        sb_json_str(b, carseg_result_class(res, k));
        sb_printf(b, ", \"score\": %.6g}", carseg_result_score(res, k));
    }
    sb_puts(b, "],\n  \"recurrence\": [");
    for (int i = 0; i < carseg_result_rounds(res); i++) {
        const int *live = NULL;
        const float *sc = NULL;
        const uint8_t *sv = NULL;
        int m = carseg_result_round(res, i, &live, &sc, &sv);
        if (m < 0) continue;
        sb_printf(b, "%s\n    {\"pass\": %d, \"live\": ", i ? "," : "", carseg_result_round_pass(res, i));
        if (live) put_int_array(b, live, m);
        else sb_puts(b, "null");
        sb_puts(b, ", \"scores\": [");
        for (int j = 0; j < m && sc; j++) sb_printf(b, j ? ", %.6g" : "%.6g", sc[j]);
        sb_puts(b, "], \"survived\": [");
        for (int j = 0; j < m && sv; j++) sb_printf(b, j ? ", %d" : "%d", sv[j] ? 1 : 0);
        sb_puts(b, "]}");
    }
    sb_printf(b, "%s],\n", carseg_result_rounds(res) ? "\n  " : "");
    if (sam) sam_json(b, sam);
    if (png) {
        sb_puts(b, "  \"label_png\": \"");
        sb_base64(b, png, png_len);
        sb_puts(b, "\",\n");
    }
    sb_printf(b, "  \"timings_ms\": {\"prepare\": %.1f, \"text\": %.1f, \"cam\": %.1f, \"prompts\": %.1f, "
                 "\"classifier\": %.1f, \"crf\": %.1f, \"total\": %.1f}\n}\n",
              carseg_result_timing(res, "prepare"), carseg_result_timing(res, "text"),
              carseg_result_timing(res, "cam"), carseg_result_timing(res, "prompt"),
              carseg_result_timing(res, "classify"), carseg_result_timing(res, "crf"), ms_total);
    free(cnt), free(bb), free(mask);
    return rc;
}

/* a file name fit for Content-Disposition and the JSON: the upload's base name, sanitised */
static void safe_name(const char *fn, char *out, size_t n) {
    const char *base = fn ? fn : "";
    for (const char *p = base; *p; p++)
        if (*p == '/' || *p == '\\') base = p + 1;
    size_t k = 0;
    for (const char *p = base; *p && k + 1 < n; p++) {
        unsigned char c = (unsigned char)*p;
        out[k++] = isalnum(c) || c == '.' || c == '-' || c == '_' ? (char)c : '_';
    }
    out[k] = 0;
}

void serve_segment(serve_worker *w, const serve_form *f, int want_png, serve_reply *out) {
    double t0 = serve_now_ms();
    const serve_cfg *cfg = w->e->cfg;
    seg_req q;
    if (seg_parse(w->e, f, &q, out)) { seg_req_free(&q); return; }
    want_png |= q.want_png;
    uint8_t *rgb = NULL;
    int iw = 0, ih = 0;
    carseg_result *res = NULL;
    carseg_prepared *prep = NULL;
    carseg_sam_image *sim = NULL;
    carseg_sam_records *recs = NULL;
    carseg_sam_masks sm;
    sam_info si = {&q.amg, &q.o.sam, 0, 0, 0};
    carseg_status st = carseg_image_decode(q.image->data, q.image->len, cfg->max_pixels, &rgb, &iw, &ih);
    if (st != CARSEG_OK) {
        const char *m = carseg_last_error();
        reply_err(out, strstr(m, "too large") ? 413 : 400, "field 'image'%s%s%s: %s",
                  q.image->filename ? " (" : "", q.image->filename ? q.image->filename : "",
                  q.image->filename ? ")" : "", m);
        goto done;
    }
    int nq = q.refer.n ? q.refer.n : q.classes.n;
    if (!nq) {
        const char *const *pcl = NULL;
        carseg_preset_classes(q.preset, &pcl, &nq);
    }
    if ((double)iw * ih * (nq + 1) > cfg->max_mask_bytes) {
        reply_err(out, 413, "image %dx%d with %d classes needs more than %.0f MB of masks (limit: --max-pixels x classes)",
                  iw, ih, nq, cfg->max_mask_bytes / 1e6);
        goto done;
    }
    /* the generator's batch of logit maps (float, at the image's size) counts as masks too */
    double sam_bytes = q.sam ? 4.0 * iw * ih * q.amg.points_per_batch * carseg_sam_masks_per_prompt(w->e->sam, 1) : 0;
    if (sam_bytes > cfg->max_mask_bytes) {
        reply_err(out, 413, "image %dx%d: CaR + SAM's generator needs %.0f MB for one batch of logit maps, "
                  "more than the %.0f MB of masks a request may use", iw, ih, sam_bytes / 1e6,
                  cfg->max_mask_bytes / 1e6);
        goto done;
    }
    round_guard g = {t0 + cfg->request_timeout_s * 1e3, 0};
    q.o.on_round = on_round;
    q.o.on_round_user = &g;
    st = carseg_prepare(w->seg, rgb, iw, ih, &q.o, &prep);
    if (st == CARSEG_OK && q.sam) {   /* as `carseg segment --sam`: the generator once per image */
        double ts = serve_now_ms();
        st = carseg_sam_set_image(w->e->sam, rgb, iw, ih, &sim);
        si.ms_encoder = serve_now_ms() - ts;
        ts = serve_now_ms();
        if (st == CARSEG_OK) st = carseg_sam_generate(w->e->sam, sim, &q.amg, &recs);
        if (st == CARSEG_OK) st = carseg_sam_records_masks(recs, &sm);
        carseg_sam_image_free(sim);   /* the embedding is done with; the records stay */
        sim = NULL;
        si.ms_generator = serve_now_ms() - ts;
        si.masks = carseg_sam_records_count(recs);
        if (st == CARSEG_OK) q.o.sam_masks = &sm;
        if (serve_now_ms() > g.deadline) g.timed_out = 1;   /* the generator cannot stop half way */
        else if (st != CARSEG_OK) { reply_lib(out, st, "CaR + SAM"); goto done; }
    }
    if (st == CARSEG_OK && !g.timed_out) {
        if (q.refer.n) st = carseg_refer(w->seg, prep, (const char *const *)q.refer.v, q.refer.n, &q.o, &res);
        else if (q.classes.n) st = carseg_segment(w->seg, prep, (const char *const *)q.classes.v, q.classes.n, &q.o, &res);
        else st = carseg_segment(w->seg, prep, NULL, 0, &q.o, &res);
    }
    if (g.timed_out) {
        reply_err(out, 503, "the computation ran past %d s (--request-timeout)", cfg->request_timeout_s);
        goto done;
    }
    if (st != CARSEG_OK) { reply_lib(out, st, ""); goto done; }
    char base[80];
    safe_name(q.image->filename, base, sizeof base);
    char *dot = strrchr(base, '.');
    if (dot && dot != base) *dot = 0;
    uint8_t *png = NULL;
    size_t len = 0;
    if (want_png || q.with_png) {   /* the label PNG exactly as `carseg segment` writes NAME.png */
        int n = carseg_result_count(res), nl = carseg_result_is_refer(res) ? 2 : n + 1;
        st = carseg_labels_encode_png(carseg_result_labels(res), iw, ih, nl, &png, &len);
        if (st != CARSEG_OK) { reply_lib(out, st, "label PNG"); goto done; }
    }
    if (want_png) {
        reply_free(out);
        out->status = 200;
        out->ctype = "image/png";
        out->body = png;
        out->len = len;
        snprintf(out->filename, sizeof out->filename, "%s.png", *base ? base : "labels");
    } else {
        sbuf b = {0};
        int bad = result_json(res, q.image->filename, carseg_car_model_precision(w->e->model), png, len,
                              q.sam ? &si : NULL, serve_now_ms() - t0, &b);
        free(png);
        if (bad) {
            sb_free(&b);
            reply_err(out, 503, "out of memory while writing the answer");
            goto done;
        }
        reply_take(out, 200, "application/json", &b);
    }
done:
    carseg_result_free(res);
    carseg_prepared_free(prep);
    carseg_sam_records_free(recs);
    carseg_sam_image_free(sim);
    carseg_image_free(rgb);
    seg_req_free(&q);
}

// ---------------------------------------------------------------------------------------------
// /v1/embed: fields text (repeatable), image (repeatable files), model (classifier | generator),
// blocks (image blocks to run, 0 = all), normalize. Answer as `carseg embed` prints.

typedef struct {
    const carseg_clip *m;
    int blocks, norm;
    const char *model;
} embed_req;

static int embed_parse(const serve_engine *e, const serve_form *f, embed_req *q, serve_reply *r) {
    memset(q, 0, sizeof *q);
    q->m = carseg_car_model_classifier(e->model);
    q->model = "classifier";
    int nt = 0, ni = 0;
    for (int i = 0; i < f->n; i++) {
        const serve_field *x = &f->v[i];
        if (!strcmp(x->name, "text")) {
            if (!field_text_ok(x, r)) return 1;
            if (x->len > MAX_NAME_BYTES) { reply_err(r, 400, "text %d is longer than %d bytes", nt + 1, MAX_NAME_BYTES); return 1; }
            nt++;
        } else if (!strcmp(x->name, "image")) {
            if (!x->len) { reply_err(r, 400, "image %d is empty", ni + 1); return 1; }
            ni++;
        } else if (!strcmp(x->name, "model") || !strcmp(x->name, "blocks") || !strcmp(x->name, "normalize")) {
            if (!field_text_ok(x, r)) return 1;
            if (form_count(f, x->name) > 1) { reply_err(r, 400, "field '%s' given more than once", x->name); return 1; }
        } else {
            reply_err(r, 400, "unknown field '%.60s' (fields: text, image, model, blocks, normalize)", x->name);
            return 1;
        }
    }
    if (!nt && !ni) { reply_err(r, 400, "nothing to embed: give 'text' fields and/or 'image' files"); return 1; }
    if (nt + ni > e->cfg->max_classes) {
        reply_err(r, 400, "too many texts and images: %d, more than %d (--max-classes)", nt + ni, e->cfg->max_classes);
        return 1;
    }
    const char *v;
    if ((v = form_str(f, "model"))) {
        if (!strcmp(v, "classifier")) ;
        else if (!strcmp(v, "generator")) q->m = carseg_car_model_generator(e->model), q->model = "generator";
        else { reply_err(r, 400, "field 'model': expected classifier or generator, got '%.40s'", v); return 1; }
    }
    if ((v = form_str(f, "blocks"))) {
        float b;
        if (parse_num("blocks", v, 0, 1000, &b, r)) return 1;
        if (b != (int)b) { reply_err(r, 400, "field 'blocks': expected an integer"); return 1; }
        q->blocks = (int)b;
    }
    if ((v = form_str(f, "normalize")) && parse_bool("normalize", v, &q->norm, r)) return 1;
    return 0;
}

int serve_embed_check(const serve_engine *e, const serve_form *f, serve_reply *out) {
    embed_req q;
    return embed_parse(e, f, &q, out);
}

static void put_rows(sbuf *b, const char *key, const float *v, int n, int E, int last) {
    sb_printf(b, "  \"%s\": [", key);
    for (int i = 0; i < n; i++) {
        sb_puts(b, i ? ",\n    [" : "\n    [");
        for (int k = 0; k < E; k++) sb_printf(b, k ? ", %.9g" : "%.9g", v[(size_t)i * E + k]);
        sb_puts(b, "]");
    }
    sb_printf(b, n ? "\n  ]%s\n" : "]%s\n", last ? "" : ",");
}

static void l2norm(float *v, int n, int E) {
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int k = 0; k < E; k++) s += (double)v[(size_t)i * E + k] * v[(size_t)i * E + k];
        float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.f;
        for (int k = 0; k < E; k++) v[(size_t)i * E + k] *= inv;
    }
}

void serve_embed(serve_worker *w, const serve_form *f, serve_reply *out) {
    embed_req q;
    if (embed_parse(w->e, f, &q, out)) return;
    const serve_cfg *cfg = w->e->cfg;
    if (cfg->threads > 0) carseg_set_threads(cfg->threads);
    int E = carseg_clip_embed_dim(q.m), nt = form_count(f, "text"), ni = form_count(f, "image");
    float *tf = calloc((size_t)nt * E + 1, sizeof(float)), *imf = calloc((size_t)ni * E + 1, sizeof(float));
    const char **texts = calloc((size_t)nt + 1, sizeof *texts);
    carseg_status st = CARSEG_OK;
    if (!tf || !imf || !texts) { reply_err(out, 503, "out of memory"); goto done; }
    int it = 0, ii = 0;
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->v[i].name, "text")) texts[it++] = (const char *)f->v[i].data;
    if (nt && (st = carseg_clip_encode_texts(q.m, carseg_car_model_tokenizer(w->e->model), texts, nt, tf)) != CARSEG_OK) {
        reply_lib(out, st, "text");
        goto done;
    }
    for (int i = 0; i < f->n; i++) {
        const serve_field *x = &f->v[i];
        if (strcmp(x->name, "image")) continue;
        uint8_t *rgb = NULL;
        int iw, ih;
        st = carseg_image_decode(x->data, x->len, cfg->max_pixels, &rgb, &iw, &ih);
        if (st != CARSEG_OK) {
            const char *m = carseg_last_error();
            reply_err(out, strstr(m, "too large") ? 413 : 400, "image %d%s%s: %s", ii + 1,
                      x->filename ? " " : "", x->filename ? x->filename : "", m);
            goto done;
        }
        st = carseg_clip_encode_image_rgb(q.m, rgb, iw, ih, q.blocks, imf + (size_t)ii * E);
        carseg_image_free(rgb);
        if (st != CARSEG_OK) { reply_lib(out, st, "image"); goto done; }
        ii++;
    }
    if (q.norm) l2norm(tf, nt, E), l2norm(imf, ni, E);
    sbuf b = {0};
    sb_puts(&b, "{\n");
    put_rows(&b, "text", tf, nt, E, 0);
    put_rows(&b, "image", imf, ni, E, 1);
    sb_puts(&b, "}\n");
    reply_take(out, 200, "application/json", &b);
done:
    free(tf), free(imf), free(texts);
}
