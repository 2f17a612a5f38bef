/* sam_amg.h — SAM's automatic mask generator (SamAutomaticMaskGenerator with crop_n_layers = 0,
 * the mode CaR uses), exact to segment_anything (SysCV/sam-hq fb181f8e) + torchvision 0.14.
 *
 *   grid      points_per_side² points in [0,1]² (NumPy linspace from 1/(2n) to 1-1/(2n), x fastest),
 *             scaled by (W, H) in float64: the prompt of grid point i is (x, y) in input pixels.
 *   batches   points_per_batch points per predictor call, in grid order; each gives n_masks masks
 *             of logits at the input size (H, W) and their predicted IoUs.
 *   per batch (in this order, each filter keeping the order):
 *             predicted IoU > pred_iou_thresh (float32 compare; skipped when the threshold <= 0);
 *             stability = #(logit > thr+off) / #(logit > thr-off) in float32 (thr = the model's
 *             mask_threshold, off = stability_score_offset; the sums in double then cast to float,
 *             as torch's float32-tensor-vs-Python-float compare), kept when >= stability_score_thresh
 *             (skipped when <= 0); mask = logit > thr; box = tight XYXY with inclusive x1, y1
 *             ([0,0,0,0] when empty); the crop-edge filter (is_box_near_crop_edge: never removes
 *             anything when the crop is the whole image, kept for exactness); RLE.
 *   NMS       over all kept masks: torchvision.ops.batched_nms(boxes, iou_preds, zeros, box_nms_thresh):
 *             at most 1000 boxes → nms (stable descending sort of the scores, IoU in float32,
 *             compared in double with '>'); more → nms, then the kept indices (ascending) re-sorted by
 *             torch's non-stable sort (libstdc++'s std::sort, ported here so that ties land where
 *             torch puts them). The output order is the NMS order.
 *   optional  min_mask_region_area > 0: each mask's holes then islands smaller than the area removed
 *             (8-connected components, as cv2.connectedComponentsWithStats), changed masks scored 0,
 *             unchanged 1, batched_nms again with max(box_nms_thresh, crop_nms_thresh = 0.7); the
 *             changed survivors get their new RLE and box.
 * Records: bbox XYWH as upstream (w = x1 - x0 with x1 inclusive: one less than the pixel width),
 * area (pixels in the RLE), predicted_iou, point_coords, stability_score, crop_box = the image.
 *
 * The selection stage takes logits from any source (cs_amg_sel_*), so stand-in logits can be fed;
 * cs_amg_run drives it with a prediction callback (the network: see sam.h's generator entry). */
#ifndef CARSEG_SAM_AMG_H
#define CARSEG_SAM_AMG_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

typedef struct {
    int points_per_side;            /* 32 upstream; CaR: 64 */
    int points_per_batch;           /* 64 */
    double pred_iou_thresh;         /* 0.88 */
    double stability_score_thresh;  /* 0.95 */
    double stability_score_offset;  /* 1.0 */
    double box_nms_thresh;          /* 0.7 */
    double mask_threshold;          /* the model's: 0.0 */
    int min_mask_region_area;       /* 0 = off */
} cs_amg_params;

/* upstream SamAutomaticMaskGenerator defaults (32 points per side) */
void cs_amg_params_init(cs_amg_params *p);
/* CaR's (voc.yaml sam block): 64 points per side, 0.88, 0.95, 0.7 */
void cs_amg_params_car(cs_amg_params *p);
/* EINVAL naming the field when a value is out of range */
carseg_status cs_amg_params_check(const cs_amg_params *p);

typedef struct {
    uint32_t *counts;      /* COCO RLE runs, column-major, first run zeros */
    size_t n_counts;
    int bbox[4];           /* XYWH, upstream's (w = x1 - x0, h = y1 - y0, inclusive x1/y1) */
    uint64_t area;
    float predicted_iou;
    float stability_score;
    double point[2];       /* the prompt (x, y) in input pixels */
} cs_amg_mask;

typedef struct {
    int h, w;
    int n;
    cs_amg_mask *masks;    /* n records in upstream's output order */
} cs_amg_result;

void cs_amg_result_free(cs_amg_result *r);
/* the mask of record k as a row-major h*w 0/1 byte image (caller's buffer). */
carseg_status cs_amg_result_mask(const cs_amg_result *r, int k, uint8_t *mask);

/* n_per_side² points (x, y) in [0,1] (build_point_grid); malloc'd, free with free(); NULL on OOM. */
double *cs_amg_point_grid(int n_per_side);
/* the grid in input pixels: grid * (w, h), float64 as upstream */
double *cs_amg_points_for_image(int n_per_side, int w, int h);

/* --- the selection stage on given logits --- */
typedef struct cs_amg_sel cs_amg_sel;
carseg_status cs_amg_sel_new(const cs_amg_params *p, int h, int w, cs_amg_sel **out);
/* One predictor batch: n_points prompts (points (x, y) input pixels), n_masks masks each:
 * logits (n_points, n_masks, h, w) float32, iou (n_points, n_masks). Point-major, as
 * masks.flatten(0, 1). */
carseg_status cs_amg_sel_add(cs_amg_sel *s, const float *logits, const float *iou,
                             const double *points, int n_points, int n_masks);
/* NMS (+ small-region post-processing); *out owns its masks. s stays valid (free it). */
carseg_status cs_amg_sel_finish(cs_amg_sel *s, cs_amg_result *out);
void cs_amg_sel_free(cs_amg_sel *s);

/* --- the whole generator over a prediction callback ---
 * predict: for n points (input pixels), writes (n, n_masks, h, w) logits and (n, n_masks) IoUs
 * into the given buffers; returns a status (its error message set). */
typedef carseg_status (*cs_amg_predict_fn)(void *ctx, const double *points, int n,
                                           float *logits, float *iou);
carseg_status cs_amg_run(cs_amg_predict_fn predict, void *ctx, int n_masks, int h, int w,
                         const cs_amg_params *p, cs_amg_result *out);

/* --- pieces, exposed for tests --- */
/* torchvision.ops.batched_nms with one category: kept indices into boxes (XYXY float32) in
 * output order; returns the count. keep holds n. */
int cs_amg_batched_nms(const float *boxes, const float *scores, int n, double iou_thresh,
                       int *keep);
/* torch.sort(scores, descending=True) on CPU (non-stable: libstdc++ std::sort of (value, index)
 * pairs): writes the permutation into idx (n). */
void cs_amg_torch_sort_desc(const float *scores, int n, int64_t *idx);
/* remove_small_regions(mask, area, mode): holes (mode 0) or islands (mode 1); 8-connected.
 * Rewrites mask (h*w 0/1) in place; returns 1 when changed, 0 when not, -1 out of memory. */
int cs_amg_remove_small_regions(uint8_t *mask, int h, int w, double area_thresh, int islands);

#endif
