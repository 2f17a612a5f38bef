/* cam.h — the mask proposal generator (CLIP-ES-style Grad-CAM + class-aware affinity), as
 * clip_as_rnn/modeling/model/clipcam.py + cam.py do it (car_method.md §2).
 *
 * Per image (cam_prepare): resize to ceil16 size (Pillow bicubic), run the ViT-B/16 trunk
 * (blocks 0..L-2) once, keep the head-averaged attentions, and build the affinity matrix
 * (last 8 attentions, Sinkhorn-like normalisation, symmetrise, square) once.
 * Per set of queries (cam_proposals): last block forward once, backward (batched, one upstream
 * gradient per query) to the last block's ln_1 output, Grad-CAM, box mask, refinement,
 * bilinear resize to the original size.
 */
#ifndef CARSEG_CAM_H
#define CARSEG_CAM_H

#include "carseg.h"
#include "clip.h"
#include "image.h"

typedef struct cam_image cam_image;   /* per-image state: trunk output, attentions, affinity */

carseg_status cam_prepare(const clip_model *gen, const image_u8 *rgb, cam_image **out);
void cam_image_free(cam_image *ci);

typedef struct {
    float lambda;          /* clipes_threshold (box threshold) */
    float logit_scale;     /* the model's exp(logit_scale) (Q19); <= 0 means take it from the model */
} cam_params;

/* fg: (n, E) L2-normalised text features of the live queries; bg: (nb, E) normalised background
 * features (nb may be 0). masks: (n, H, W) float32 in [0,1] at the ORIGINAL image size.
 * grid_out: if not NULL, (n, gh, gw) raw Grad-CAM after min-max (fixture gradcam_grid.npy).
 * probs_out: if not NULL, (n + nb) softmax probabilities (fixture gen_probs.npy, one row). */
carseg_status cam_proposals(cam_image *ci, const float *fg, int n, const float *bg, int nb,
                            const cam_params *p, float *masks, float *grid_out, float *probs_out);

/* Geometry of a prepared image. */
void cam_image_dims(const cam_image *ci, int *H, int *W, int *gh, int *gw);

#endif
