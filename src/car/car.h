/* car.h — CLIP as RNN: the recurrence over text queries and its post-processing
 * (car_method.md §1.2, §4, §7). Mirrors clip_as_rnn/modeling/model/car.py (CaR._forward_car,
 * _forward_stage, _filter_texts), crf.py (PostProcess), evaluate.py (assign_label, the
 * thing + stuff passes) and utils/merge_mask.py (merge_masks_simple).
 *
 * Hoisting (results identical to the reference's order of work):
 *   - per image: the generator trunk + affinity (cam_prepare) once, the blurred/gray "outside"
 *     image of the visual prompts once (vp_prepare);
 *   - per round: each prompted image encoded once (not once per template);
 *   - text features of every string once per process (text_cache), background features once.
 */
#ifndef CARSEG_CAR_H
#define CARSEG_CAR_H

#include <stdint.h>
#include "carseg.h"
#include "cam.h"
#include "classify.h"
#include "clip.h"
#include "image.h"
#include "tokenizer.h"
#include "carsam.h"

typedef struct {
    float eta;              /* mask_threshold: binarise the CAM for the visual prompt (> eta) */
    float theta;            /* confidence_threshold: keep query i iff P[i,i] > theta */
    float lambda;           /* clipes_threshold: Grad-CAM box threshold */
    unsigned prompts;       /* VP_* bits */
    int n_templates;        /* classifier templates (15 semantic); 0 = refer: one string,
                               "a clean origami {q}.", single softmax */
    const char *const *templates;
    float bg_factor;        /* CRF background (1 - max cam)^bg_factor */
    int refer;              /* per-query generator calls, per-query 2-label CRFs */
    int crf;                /* 1: dense CRF; 0: argmax of (bg, cams) without the CRF */
    const carseg_crf_params *crf_p;   /* CRF parameters; NULL = CaR's (crf_default_params) */
    /* Fixes of reference quirks (0 = reference behaviour): */
    int fix_zero_guard;     /* Q9: an all-zero round keeps the previous masks of the SAME
                               queries (reference: previous rows, misaligned) */
    int fix_duplicates;     /* Q17: duplicate query strings keep their own masks (reference:
                               the first occurrence gets the last one's mask, others nothing) */
    int fix_box_clamp;      /* Q7: boxes cover the whole component (reference: last grid row/column
                               never inside a box, an off-by-one inherited from CLIP-ES) */
    int fix_gray;           /* Q3: the gray prompt with RGB weights (reference: BGR2GRAY on RGB) */
    int fix_crf_colors;     /* Q4: the CRF's colour features are the RGB image (reference: BGR
                               minus the mean, wrapped to uint8) */
    int fix_center_crop;    /* Q8: the classifier sees the whole prompted image resized to
                               224x224 (reference: centre crop, the sides are lost) */
    int cam_raw_names;      /* Q1: raw names in the CAM text in every round (reference: raw in
                               round 1, "a clean origami {q}." afterwards) */
    int naive;              /* testing: no hoisting (re-prepare the image every round, encode
                               every prompted image once per template, no text cache) */
} car_params;

/* Reference defaults (VOC values); callers override from a preset. */
car_params car_default_params(void);

typedef struct car_ctx car_ctx;
/* Models are borrowed (must outlive the context). gen: mask generator; cls: classifier. */
carseg_status car_ctx_new(const clip_model *gen, const clip_model *cls, const tokenizer *tok,
                          car_ctx **out);
void car_ctx_free(car_ctx *c);
/* Number of strings each text encoder has encoded so far (cache misses). */
void car_ctx_text_counts(const car_ctx *c, long *gen, long *cls);

/* Timings (ms) and counters, accumulated by the calls below. */
typedef struct {
    double ms_prepare, ms_text, ms_cam, ms_prompt, ms_cls, ms_crf;
    double ms_sam;          /* CaR + SAM matching (the generator's time is the caller's) */
    double cpu_prepare, cpu_text, cpu_cam, cpu_prompt, cpu_cls, cpu_crf;   /* process CPU ms */
    int rounds;             /* rounds of the last pass */
    int rounds_total;
    int image_encodes;      /* classifier image forwards */
    /* per round of the last pass (the first CAR_STATS_ROUNDS rounds): live queries at the
     * round's start, classifier image forwards, and ms of cam / prompts / classifier */
    int r_live[8], r_encodes[8];
    double r_ms_cam[8], r_ms_prompt[8], r_ms_cls[8], r_cpu_cam[8], r_cpu_cls[8];
} car_stats;
enum { CAR_STATS_ROUNDS = 8 };

typedef struct car_image car_image;
carseg_status car_image_new(car_ctx *c, const image_u8 *rgb, car_stats *st, car_image **out);
void car_image_free(car_image *im);

/* One round of a pass, as seen by a car_dump observer (valid during the call only). */
typedef struct {
    const char *prefix;          /* the pass: "" (only pass), "things_" or "stuff_" */
    int round;                   /* 1-based */
    const char *const *queries;  /* the pass's queries */
    const int *live;             /* (n_live) indices into queries, the round's live queries */
    int n_live;
    const float *scores;         /* (n_live) P[i,i] */
    const int *keep;             /* (n_keep) indices into live: the survivors */
    int n_keep;
    const float *cams;           /* (n_live, H, W) the round's CAMs */
    int H, W;
} car_round;
typedef carseg_status (*car_round_fn)(const car_round *r, void *user);

/* The per-round observer (called once per round; a non-OK return stops the pass with that
 * status). The public on_round (carseg_options) and through it `carseg segment --dump` and the
 * JSON's rounds are built on it. */
typedef struct {
    const char *prefix;     /* "" or "stuff_" ... */
    car_round_fn on_round;  /* NULL: none */
    void *user;
} car_dump;

/* One CaR pass over n queries with nb background words.
 * masks_out: (n, H, W) uint8 0/1 final masks (zero for dropped queries);
 * scores_out: (n) final scores (0 for dropped queries);
 * cams_out: optional (n, H, W) float, the last round's CAMs (zero for dropped queries). */
carseg_status car_pass(car_ctx *c, car_image *im, const char *const *queries, int n,
                       const char *const *bg, int nb, const car_params *p, const car_dump *dump,
                       uint8_t *masks_out, float *scores_out, float *cams_out, car_stats *st);

/* Semantic segmentation of a class list (label = class index + 1, 0 = background).
 * things/stuff: 0-based class ids of the two passes (stuff may be NULL: one pass over
 * `things`, or over all classes when things is NULL too). The stuff pass uses the thing class
 * names as background (§4.4). labels: (H, W); scores: (n_classes) final scores;
 * masks: optional (n_classes, H, W) final binary masks. */
typedef struct {
    const char *const *classes;
    int n_classes;
    const int *things;
    int n_things;
    const int *stuff;
    int n_stuff;
    const char *const *bg;
    int nb;
    car_params p, stuff_p;
    /* CaR + SAM (§4.3, carsam.h): NULL = off; else each pass's CRF masks are refined by these
     * SAM masks (computed once per image by the caller) before the label map */
    const cs_sam_masks *sam;
    cs_carsam_params sam_p;
    float *cams;            /* optional (n_classes, H, W): each class's last-round CAM (0 if dropped) */
} car_job;
carseg_status car_segment(car_ctx *c, car_image *im, const car_job *job, const car_dump *dump,
                          uint16_t *labels, float *scores, uint8_t *masks, car_stats *st);

/* Referring segmentation: all phrases describe one object (refer mode). mask: (H, W) 0/1
 * merged with merge_masks_simple (score-weighted mean >= 0.5, union fallback at <= 5% area).
 * scores: (n) final scores; masks: optional (n, H, W) per-phrase masks; cams: optional (n, H, W)
 * each phrase's last-round CAM (car_pass's cams_out). */
carseg_status car_refer(car_ctx *c, car_image *im, const char *const *phrases, int n,
                        const char *const *bg, int nb, const car_params *p, const car_dump *dump,
                        uint8_t *mask, float *scores, uint8_t *masks, float *cams, car_stats *st);

void car_image_size(const car_image *im, int *w, int *h);

#endif
