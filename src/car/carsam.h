/* carsam.h — CaR + SAM (car_method.md §4.3): each CRF class mask refined by the union of the SAM
 * automatic-mask-generator masks that match it.
 *
 * For each non-empty class mask c and SAM mask s (float64 ratios of pixel counts):
 *   inter = |c ∧ s|, iom_t = inter / |s|, iom_p = inter / |c|, iom_t = 0 where iom_p < min_pred,
 *   iom = max(iom_t, iom_p); kept = the s with iom > iom_thres, or the first argmax of iom when
 *   none; U = their union; c := U iff IoU(U, c) > iou_thres; an empty c stays empty.
 * Defaults are the paper's φ_iom 0.7, min-pred 0.05, φ_iou 0.7. Documented alternatives: the VOC
 * config's iom_thres 0.6 with min_pred 0.05, and the reference code's matching_thresh default 0.9
 * (the config key is missing there, quirk Q10). An empty SAM mask (never produced by the generator
 * with its thresholds) has iom_t = 0 here (upstream would divide 0 by 0).
 *
 * The seam: car never includes the SAM headers. Whoever runs the generator (src/api, the CLI)
 * hands the masks over as RLE runs in a cs_sam_masks; they are computed once per image and may be
 * reused for any class list. */
#ifndef CARSEG_CARSAM_H
#define CARSEG_CARSAM_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

/* the public carseg_sam_masks (include/carseg.h) */
typedef carseg_sam_masks cs_sam_masks;

/* the producer side of the seam: runs SAM's generator on an RGB image and fills *out (owned by
 * the producer until release is called) */
typedef carseg_status (*cs_sam_generate_fn)(void *ctx, const uint8_t *rgb, int w, int h,
                                            cs_sam_masks *out);

/* the public carseg_sam_params: iom_thres (φ_iom 0.7, paper; VOC config 0.6), min_pred (0.05),
 * iou_thres (φ_iou 0.7, paper; reference code default 0.9) */
typedef carseg_sam_params cs_carsam_params;

void cs_carsam_params_init(cs_carsam_params *p);   /* 0.7 / 0.05 / 0.7 */
carseg_status cs_carsam_params_check(const cs_carsam_params *p);

typedef struct {
    int n_kept;
    int *kept;            /* malloc'd indices into the SAM masks (NULL for an empty class mask) */
    double iou;           /* IoU(U, c); NaN for an empty class mask */
    int replaced;
} cs_carsam_info;
void cs_carsam_info_free(cs_carsam_info *info, int k);

/* Refines k row-major (h, w) 0/1 masks in place. info: optional, k entries. The SAM masks must be
 * of the same size (EINVAL otherwise; malformed runs: EINVAL naming the mask). */
carseg_status cs_carsam_refine(const cs_sam_masks *sam, const cs_carsam_params *p, uint8_t *masks,
                               int k, int h, int w, cs_carsam_info *info);

#endif
