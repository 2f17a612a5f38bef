/* sam_api.c — the public SAM section of carseg.h over src/sam (the network) and sam_amg (the
 * automatic mask generator's selection stage): the generator runs the decoder on each batch of
 * grid points and feeds the selection. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carseg.h"
#include "models.h"
#include "sam.h"
#include "sam_amg.h"
#include "util.h"

carseg_status carseg_sam_load(const char *path, carseg_sam **out) {
    if (!path || !out) return set_err(CARSEG_EINVAL, "carseg_sam_load: NULL argument");
    *out = NULL;
    char *file = NULL;   /* a known name (sam_hq_vit_b, ...) through the model cache */
    TRY(models_resolve_kind(path, "sam", &file));
    carseg_status st = sam_load(file, out);
    free(file);
    return st;
}

void carseg_sam_free(carseg_sam *m) { sam_free(m); }
int carseg_sam_is_hq(const carseg_sam *m) { return m ? sam_model_config(m)->hq : 0; }
int carseg_sam_masks_per_prompt(const carseg_sam *m, int multimask) {
    return m ? sam_masks_per_prompt(m, multimask) : 0;
}

carseg_status carseg_sam_set_image(const carseg_sam *m, const uint8_t *rgb, int w, int h,
                                   carseg_sam_image **out) {
    if (!m || !rgb || !out || w <= 0 || h <= 0)
        return set_err(CARSEG_EINVAL, "carseg_sam_set_image: invalid argument");
    return sam_set_image(m, rgb, w, h, out);
}

void carseg_sam_image_free(carseg_sam_image *im) { sam_image_free(im); }

carseg_status carseg_sam_predict(const carseg_sam *m, carseg_sam_image *im,
                                 const carseg_sam_prompt *prompts, int n, int multimask,
                                 int hq_only, float *iou, float *logits) {
    if (!m || !im || n < 0 || (n > 0 && (!prompts || !iou)))
        return set_err(CARSEG_EINVAL, "carseg_sam_predict: invalid argument");
    if (n == 0) return CARSEG_OK;
    /* carseg_sam_prompt and sam_prompt have the same members in the same order */
    sam_prompt *sp = malloc(sizeof *sp * (size_t)n);
    if (!sp) return set_err(CARSEG_ENOMEM, "carseg_sam_predict: out of memory");
    for (int i = 0; i < n; i++)
        sp[i] = (sam_prompt){prompts[i].n_points, prompts[i].points, prompts[i].labels,
                             prompts[i].box};
    carseg_status st = sam_predict(m, im, sp, n, multimask, hq_only, iou, NULL, logits);
    free(sp);
    return st;
}

void carseg_sam_amg_init(carseg_sam_amg_params *p) {
    if (!p) return;
    cs_amg_params q;
    cs_amg_params_car(&q);
    *p = (carseg_sam_amg_params){q.points_per_side, q.points_per_batch, q.pred_iou_thresh,
                                 q.stability_score_thresh, q.stability_score_offset,
                                 q.box_nms_thresh, q.min_mask_region_area};
}

struct carseg_sam_records {
    cs_amg_result r;
    const uint32_t **counts;   /* for carseg_sam_records_masks */
    size_t *n_counts;
};

typedef struct {
    const sam_model *m;
    sam_image *im;
    sam_prompt *prompts;
    float *pts;
    int *labels;
    int cap;
} amg_ctx;

/* the generator's predictor call: one single-point prompt per grid point, multimask logits at the
 * image's size (SamPredictor.predict_torch(points, labels, multimask_output=True,
 * return_logits=True) as the generator calls it) */
static carseg_status amg_predict(void *vctx, const double *points, int n, float *logits,
                                 float *iou) {
    amg_ctx *c = vctx;
    if (n > c->cap) {
        free(c->prompts), free(c->pts), free(c->labels);
        c->prompts = malloc(sizeof *c->prompts * (size_t)n);
        c->pts = malloc(sizeof(float) * 2 * (size_t)n);
        c->labels = malloc(sizeof(int) * (size_t)n);
        c->cap = n;
        if (!c->prompts || !c->pts || !c->labels) {
            c->cap = 0;
            return set_err(CARSEG_ENOMEM, "carseg_sam_generate: out of memory");
        }
    }
    for (int i = 0; i < n; i++) {
        /* upstream: the grid points (float64) become a float32 tensor before apply_coords */
        c->pts[2 * i] = (float)points[2 * i], c->pts[2 * i + 1] = (float)points[2 * i + 1];
        c->labels[i] = 1;
        c->prompts[i] = (sam_prompt){1, c->pts + 2 * i, c->labels + i, NULL};
    }
    /* the first prompt alone (it fills the image's decoder cache), then the others in parallel,
     * one prompt per task: each is decoded exactly as it would be alone (inside a parallel region
     * the nn_* products run serially with the same tiles), so the bits do not depend on the
     * thread count */
    TRY(sam_predict(c->m, c->im, c->prompts, 1, 1, 0, iou, NULL, logits));
    if (n == 1) return CARSEG_OK;
    const int k = sam_masks_per_prompt(c->m, 1);
    const size_t hw = (size_t)sam_image_width(c->im) * sam_image_height(c->im);
    carseg_status fst = CARSEG_OK;
    char msg[512] = "";
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(carseg_get_threads())
    for (int i = 1; i < n; i++) {
        int stop;
#pragma omp atomic read
        stop = failed;
        if (stop) continue;
        carseg_status s = sam_predict(c->m, c->im, c->prompts + i, 1, 1, 0, iou + (size_t)i * k,
                                      NULL, logits + (size_t)i * k * hw);
        if (s != CARSEG_OK) {
#pragma omp critical
            if (!failed) {
                fst = s;
                snprintf(msg, sizeof msg, "%s", carseg_last_error());
#pragma omp atomic write
                failed = 1;
            }
        }
    }
    if (fst != CARSEG_OK) return set_err(fst, "%s", msg);   /* the worker's message, here */
    return CARSEG_OK;
}

carseg_status carseg_sam_generate(const carseg_sam *m, carseg_sam_image *im,
                                  const carseg_sam_amg_params *p, carseg_sam_records **out) {
    if (!m || !im || !out) return set_err(CARSEG_EINVAL, "carseg_sam_generate: NULL argument");
    *out = NULL;
    cs_amg_params q;
    cs_amg_params_car(&q);
    if (p) {
        q.points_per_side = p->points_per_side, q.points_per_batch = p->points_per_batch;
        q.pred_iou_thresh = p->pred_iou_thresh, q.stability_score_thresh = p->stability_score_thresh;
        q.stability_score_offset = p->stability_score_offset, q.box_nms_thresh = p->box_nms_thresh;
        q.min_mask_region_area = p->min_mask_region_area;
    }
    TRY(cs_amg_params_check(&q));
    carseg_sam_records *r = calloc(1, sizeof *r);
    if (!r) return set_err(CARSEG_ENOMEM, "carseg_sam_generate: out of memory");
    amg_ctx c = {m, im, NULL, NULL, NULL, 0};
    carseg_status st = cs_amg_run(amg_predict, &c, sam_masks_per_prompt(m, 1),
                                  sam_image_height(im), sam_image_width(im), &q, &r->r);
    free(c.prompts), free(c.pts), free(c.labels);
    if (st != CARSEG_OK) {
        free(r);
        return st;
    }
    *out = r;
    return CARSEG_OK;
}

void carseg_sam_records_free(carseg_sam_records *r) {
    if (!r) return;
    cs_amg_result_free(&r->r);
    free(r->counts), free(r->n_counts);
    free(r);
}

int carseg_sam_records_count(const carseg_sam_records *r) { return r ? r->r.n : 0; }

int carseg_sam_record(const carseg_sam_records *r, int k, const uint32_t **counts,
                      size_t *n_counts, int bbox[4], uint64_t *area, float *predicted_iou,
                      float *stability_score, double point[2]) {
    if (!r || k < 0 || k >= r->r.n) return -1;
    const cs_amg_mask *m = &r->r.masks[k];
    if (counts) *counts = m->counts;
    if (n_counts) *n_counts = m->n_counts;
    if (bbox) memcpy(bbox, m->bbox, sizeof m->bbox);
    if (area) *area = m->area;
    if (predicted_iou) *predicted_iou = m->predicted_iou;
    if (stability_score) *stability_score = m->stability_score;
    if (point) point[0] = m->point[0], point[1] = m->point[1];
    return 0;
}

carseg_status carseg_sam_records_masks(const carseg_sam_records *r, carseg_sam_masks *out) {
    if (!r || !out) return set_err(CARSEG_EINVAL, "carseg_sam_records_masks: NULL argument");
    carseg_sam_records *w = (carseg_sam_records *)r;   /* the arrays are a cache of r's */
    if (!w->counts && r->r.n > 0) {
        w->counts = malloc(sizeof *w->counts * (size_t)r->r.n);
        w->n_counts = malloc(sizeof *w->n_counts * (size_t)r->r.n);
        if (!w->counts || !w->n_counts) {
            free(w->counts), free(w->n_counts);
            w->counts = NULL, w->n_counts = NULL;
            return set_err(CARSEG_ENOMEM, "carseg_sam_records_masks: out of memory");
        }
        for (int k = 0; k < r->r.n; k++)
            w->counts[k] = r->r.masks[k].counts, w->n_counts[k] = r->r.masks[k].n_counts;
    }
    *out = (carseg_sam_masks){r->r.h, r->r.w, r->r.n, w->counts, w->n_counts};
    return CARSEG_OK;
}
