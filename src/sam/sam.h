/* sam.h — Segment Anything (SAM) and HQ-SAM: the network, exact to the upstream segment_anything
 * package of SysCV/sam-hq (which carries both), on the CLIP engine's kernels (nn.c).
 *
 *   sam_load        a checkpoint (torch.save state dict as released, or safetensors); the
 *                   architecture is read off the tensor shapes (sam_model.c)
 *   sam_set_image   SamPredictor.set_image: ResizeLongestSide(1024) (Pillow bilinear), normalise,
 *                   pad, ViT image encoder (windowed + global blocks, decomposed relative positions,
 *                   neck); HQ-SAM's early feature and its hq_features (sam_encoder.c)
 *   sam_predict     SamPredictor.predict_torch for a batch of prompts against one embedding:
 *                   prompt encoder, two-way transformer, mask decoder (multimask rule, HQ token),
 *                   IoU predictions, low-resolution logits and/or logits at the input size
 *                   (postprocess_masks) (sam_decoder.c)
 *
 * Layout: every activation is channels-last ((H*W, C), row-major), the layout the products want;
 * the fixtures' channels-first arrays are transposed by the tests. Results do not depend on the
 * thread count (the nn_* products are tiled by shape; every other reduction is done by one thread).
 * Models are immutable after sam_load and may be shared by threads; a sam_image is used by one
 * thread at a time (sam_predict fills a per-image cache on first use).
 */
#ifndef CARSEG_SAM_H
#define CARSEG_SAM_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

#define SAM_IMG 1024          /* the encoder's input size (upstream img_size) */
#define SAM_GRID 64           /* image embedding grid (1024 / patch 16) */
#define SAM_LOWRES 256        /* low-resolution mask logits (4 x the grid) */

typedef struct {
    /* image encoder */
    int embed, depth, heads, patch, mlp, out_chans;
    int window;                 /* window of the windowed blocks */
    int n_global, global[8];    /* global attention blocks (ascending) */
    /* prompt encoder / mask decoder */
    int dim;                    /* transformer dim (= prompt embed dim = out_chans) */
    int dec_depth, dec_heads, dec_mlp, ds;   /* two-way transformer; ds = attention downsample */
    int iou_hidden, iou_depth, n_mask_tokens;   /* n_mask_tokens = multimask outputs + 1 */
    int hq;                     /* 1: HQ-SAM (hf_token, hf_mlp, compress_vit_feat, ...) */
} sam_config;

typedef struct sam_model sam_model;
typedef struct sam_image sam_image;

/* Loads a checkpoint: torch.save state dict (zip) or safetensors, "module."/"sam."-less names as
 * released (image_encoder.*, prompt_encoder.*, mask_decoder.*). The decoder's head count is not
 * in any shape: 8 (the released models) unless a safetensors file's __metadata__ "sam_config"
 * JSON gives "dheads". Errors: CARSEG_EIO/EFORMAT from the reader, CARSEG_EMODEL naming the
 * tensor that is missing or has a shape that does not fit. */
carseg_status sam_load(const char *path, sam_model **out);
void sam_free(sam_model *m);
const sam_config *sam_model_config(const sam_model *m);
/* Parameters (float count) and a short name ("HQ-SAM ViT (embed 1280, depth 32)"). */
size_t sam_model_params(const sam_model *m);

/* ResizeLongestSide.get_preprocess_shape: the resized (h', w') of an (h, w) image. */
void sam_preprocess_shape(int h, int w, int target, int *nh, int *nw);
/* ResizeLongestSide(SAM_IMG).apply_image: rgb (h, w, 3) -> out (nh, nw, 3) malloc'd, Pillow
 * bilinear through torchvision's PIL path. */
carseg_status sam_resize_image(const uint8_t *rgb, int w, int h, uint8_t **out, int *nw, int *nh);

/* SamPredictor.set_image(rgb): the image embedding and HQ-SAM's early feature. */
carseg_status sam_set_image(const sam_model *m, const uint8_t *rgb, int w, int h, sam_image **out);
/* The same from an already normalised, padded encoder input x (3, 1024, 1024) (for benches and
 * tests); orig/input sizes as set_image would have them. */
carseg_status sam_encode(const sam_model *m, const float *x, int orig_w, int orig_h, int in_w,
                         int in_h, sam_image **out);
void sam_image_free(sam_image *im);
int sam_image_width(const sam_image *im);     /* original size */
int sam_image_height(const sam_image *im);
/* (64*64, out_chans) channels-last image embedding; (64*64, embed) early feature (HQ-SAM: the
 * first global block's output; NULL for plain SAM). Owned by im. */
const float *sam_image_embedding(const sam_image *im);
const float *sam_image_interm(const sam_image *im);

/* One prompt: n_points points (x, y in the ORIGINAL image's pixels, labels 1 = foreground,
 * 0 = background) and/or a box (x0, y0, x1, y1 in original pixels, NULL for none). Coordinates
 * are mapped as ResizeLongestSide.apply_coords (double, then float). */
typedef struct {
    int n_points;
    const float *points;   /* 2 * n_points */
    const int *labels;     /* n_points */
    const float *box;      /* 4 or NULL */
} sam_prompt;

/* Masks per prompt sam_predict gives: HQ-SAM 1 (best SAM mask by IoU + the HQ mask, or the HQ
 * mask alone); plain SAM 3 when multimask, else 1. */
int sam_masks_per_prompt(const sam_model *m, int multimask);

/* Decodes n prompts against im (SamPredictor.predict_torch with return_logits=True), one prompt
 * after the other on the shared image embedding (nothing is copied per prompt); every prompt is
 * decoded exactly as it would be alone. With k = sam_masks_per_prompt:
 *   iou    (n, k) predicted IoU (required)
 *   lowres (n, k, 256, 256) low-resolution logits, or NULL
 *   logits (n, k, H, W) logits at the original size (postprocess_masks), or NULL
 * hq_only: HQ-SAM's hq_token_only (ignored for plain SAM). CARSEG_EINVAL for a prompt without
 * points and box, a bad label or a non-finite coordinate. */
carseg_status sam_predict(const sam_model *m, sam_image *im, const sam_prompt *prompts, int n,
                          int multimask, int hq_only, float *iou, float *lowres, float *logits);

/* postprocess_masks of one low-resolution logit map (256, 256) to the original size (H, W):
 * bilinear to 1024 (align_corners False), crop to the resized input, bilinear to (H, W). */
carseg_status sam_postprocess(const sam_image *im, const float *lowres, float *out);

#endif
