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
#include <stdint.h>

typedef struct cam_image cam_image;   /* per-image state: trunk output, attentions, affinity */

carseg_status cam_prepare(const clip_model *gen, const image_u8 *rgb, cam_image **out);
void cam_image_free(cam_image *ci);

typedef struct {
    float lambda;          /* clipes_threshold (box threshold) */
    float logit_scale;     /* the model's exp(logit_scale) (Q19); <= 0 means take it from the model */
    int fix_box_clamp;     /* Q7 fix: boxes cover their whole component (the reference clamps the
                              exclusive end to gw-1/gh-1, so the last grid row/column is never in) */
} cam_params;

/* fg: (n, E) L2-normalised text features of the live queries; bg: (nb, E) normalised background
 * features (nb may be 0). masks: (n, H, W) float32 in [0,1] at the ORIGINAL image size.
 * grid_out: if not NULL, (n, gh, gw) raw Grad-CAM after min-max (fixture gradcam_grid.npy).
 * probs_out: if not NULL, (n + nb) softmax probabilities (fixture gen_probs.npy, one row). */
carseg_status cam_proposals(cam_image *ci, const float *fg, int n, const float *bg, int nb,
                            const cam_params *p, float *masks, float *grid_out, float *probs_out);

/* Geometry of a prepared image. */
void cam_image_dims(const cam_image *ci, int *H, int *W, int *gh, int *gw);

// ---------------------------------------------------------------------------------------------
// Lower-level entry points (tests, fixture parity, benchmarks)

/* cam_prepare from the trunk's results: x_in (L, C) = output of the trunk (block L-2's output,
 * L = 1 + gh*gw), attn (n_attn, L, L) = head-averaged attentions of the trunk blocks (oldest
 * first). Runs the last block forward (kept for the backward) and builds the affinity.
 * H, W: the original image size (masks are resized to it). */
carseg_status cam_prepare_tokens(const clip_model *gen, const float *x_in, int gh, int gw,
                                 const float *attn, int n_attn, int H, int W, cam_image **out);

/* The deliberately naive path (tests): per query, rebuilds the last block forward and the
 * affinity from scratch and runs a single-row full backward (every d p / d a entry), as the
 * reference does. Same outputs as cam_proposals. */
carseg_status cam_proposals_naive(const clip_model *gen, const float *x_in, int gh, int gw,
                                  const float *attn, int n_attn, int H, int W,
                                  const float *fg, int n, const float *bg, int nb,
                                  const cam_params *p, float *masks, float *grid_out,
                                  float *probs_out);

/* Full Grad-CAM gradient, straightforward backward (tests): text rows T (K, E) (normalised here),
 * logit scale s; for each target row idx[i] (i < n) G (n, L, C) = d softmax(s e.T^T)[idx[i]] / d a,
 * a = the last block's ln_1 output. probs: if not NULL, (K). */
carseg_status cam_grad_full(const cam_image *ci, const float *T, int K, float s, const int *idx,
                            int n, float *G, float *probs);

/* The last block's ln_1 output a (L, C) (the Grad-CAM activations) and head-averaged attention
 * (L, L) of a prepared image, and its (Np, Np) refinement matrix. */
const float *cam_image_activations(const cam_image *ci);
const float *cam_image_last_attn(const cam_image *ci);
const float *cam_image_affinity(const cam_image *ci);

/* CLIP-ES scoremap2bbox (multi-contour) + box mask: s8 = uint8(cam*255) (wrapping), thr =
 * int(lambda*max(s8)), binary = s8 > thr (lambda lowered by 0.1 while empty), 8-connected
 * components -> bounding boxes [x0, y0, x1, y1] with x1 = min(x+w, gw-1), y1 = min(y+h, gh-1).
 * Writes up to max_boxes boxes (boxes may be NULL), returns the count (>= 1: an empty map gives
 * the single box [0,0,0,0] as the reference does). mask: if not NULL, (gh*gw) set to 1 inside
 * B[y0:y1, x0:x1] (exclusive ends) of every box, else 0. */
int cam_boxes(const float *cam, int gh, int gw, float lambda, int (*boxes)[4], int max_boxes,
              uint8_t *mask);
/* The same with the Q7 fix selectable: fix_clamp = 1 gives x1 = x+w, y1 = y+h (no clamp). */
int cam_boxes_q7(const float *cam, int gh, int gw, float lambda, int (*boxes)[4], int max_boxes,
                 uint8_t *mask, int fix_clamp);

/* The CLIP-ES refinement matrix from the attention average A (Np, Np), in place: 3 rounds of
 * (column-normalise, row-normalise), symmetrise, square. scratch: Np*Np floats. */
void cam_affinity_refine(float *A, int Np, float *scratch);

#endif
