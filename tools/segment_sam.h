/* segment_sam.h — `carseg segment`'s CaR + SAM options (the hook cmd_segment.c calls):
 *   --sam MODEL       run HQ-SAM's automatic mask generator in-process, once per image
 *                     (--sam-points N, --sam-pred-iou T, --sam-stability T, --sam-nms T: CaR's
 *                     64 / 0.88 / 0.95 / 0.7 by default)
 *   --sam-masks DIR   SAM generator records computed beforehand: DIR/NAME.sam.json for image NAME
 *                     (as `carseg sam --auto` and segment_anything write them)
 *   --sam-iom T       φ_iom (default 0.7, the paper's; VOC config 0.6)
 *   --sam-min-pred T  min-pred threshold (default 0.05)
 *   --sam-iou T       φ_iou (default 0.7, the paper's; the reference code's default 0.9)
 * Each image's SAM masks are read once, whatever the class list, and refine every pass's CRF
 * masks before the label map (carseg_options.sam_masks). */
#ifndef CARSEG_SEGMENT_SAM_H
#define CARSEG_SEGMENT_SAM_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

typedef struct {
    const char *masks_dir;
    const char *model_path;         /* --sam MODEL */
    carseg_sam_amg_params amg;
    carseg_sam_params cp;
    int on;
    carseg_sam *model;              /* loaded on first use */
} segment_sam_opts;

typedef struct {
    carseg_sam_masks sm;
    uint32_t **counts;
    size_t *n_counts;
    carseg_sam_records *recs;       /* --sam MODEL: the generator's records (sm points into them) */
} segment_sam_masks;

extern const char segment_sam_help[];
void segment_sam_init(segment_sam_opts *o);
/* 1 when argv[*i] is one of the options above (value consumed), else 0 */
int segment_sam_opt(segment_sam_opts *o, int argc, char **argv, int *i);
/* EINVAL naming the option when a value is out of range or the folder is missing */
carseg_status segment_sam_check(const segment_sam_opts *o);
/* the SAM masks of image `name` (rgb, w x h): generated with --sam MODEL, or read with
 * --sam-masks; a missing or malformed file is the image's error */
carseg_status segment_sam_load(segment_sam_opts *o, const char *name, const uint8_t *rgb, int w,
                               int h, segment_sam_masks *out);
/* frees the model --sam loaded */
void segment_sam_close(segment_sam_opts *o);
void segment_sam_free(segment_sam_masks *m);
/* reads a NAME.sam.json file (exposed for tests) */
carseg_status segment_sam_read_json(const char *path, int w, int h, segment_sam_masks *out);

#endif
