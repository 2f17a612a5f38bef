/* sam_out.h — the one writer of `carseg sam`'s outputs (prompt mode and --auto):
 *   DIR/NAME.sam.json  a JSON array, one record per mask, as segment_anything's records:
 *                      {"segmentation": {"size": [H, W], "counts": COCO compressed RLE},
 *                       "area": N, "bbox": [x, y, w, h], "predicted_iou": F,
 *                       "point_coords": [[x, y], ...], "stability_score": F (where defined),
 *                       "crop_box": [0, 0, W, H] (generator records only)}
 *   DIR/NAME.sam.png   the image with the masks coloured (largest drawn first, 50 % blend).
 * Both written atomically (temp + rename). */
#ifndef CARSEG_SAM_OUT_H
#define CARSEG_SAM_OUT_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

typedef struct {
    const uint32_t *counts;      /* COCO RLE runs of an h*w mask (column-major, first run zeros) */
    size_t n_counts;
    double bbox[4];              /* XYWH as the producer defines it (the generator: upstream's) */
    double predicted_iou;
    double stability_score;      /* NaN: not written */
    const double *points;        /* n_points (x, y) prompts in input pixels (may be 0) */
    int n_points;
    int has_crop_box;            /* 1: "crop_box": the whole image (generator records) */
} sam_out_rec;

/* name: the base name (NAME.sam.json / NAME.sam.png under dir, which is created) */
carseg_status sam_write_outputs(const char *dir, const char *name, const uint8_t *rgb, int w, int h,
                                const sam_out_rec *recs, int n);

#endif
