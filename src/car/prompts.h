/* prompts.h — CaR's visual prompts (car_method.md §3.2), with OpenCV 4.6's exact pixels.
 *
 * Mirrors clip_as_rnn/modeling/model/utils.py apply_visual_prompts and car.py
 * CaR.apply_visual_prompts: sum(mask) <= 1 -> the original image; else binarise mask > eta and
 * apply the selected prompts in the fixed order blur -> gray -> black -> circle -> rectangle ->
 * contour (whatever order the user listed them in).
 *
 * Hoisting: the pixel prompts (blur, gray, black) are pointwise once the blurred image exists, so
 * vp_prepare computes the "outside the mask" image once per image; vp_apply then only copies
 * and draws. vp_apply_naive does every step per mask as the reference does (tests compare).
 */
#ifndef CARSEG_PROMPTS_H
#define CARSEG_PROMPTS_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

enum {
    VP_BLUR = 1u << 0,       /* GaussianBlur 15x15 (sigma 2.6) outside the mask */
    VP_GRAY = 1u << 1,       /* BGR2GRAY weights on RGB data outside the mask (Q3) */
    VP_BLACK = 1u << 2,      /* zero outside the mask */
    VP_CIRCLE = 1u << 3,     /* red ellipse around the mask, thickness 1 */
    VP_RECTANGLE = 1u << 4,  /* red rectangle around the mask, thickness 1 */
    VP_CONTOUR = 1u << 5,    /* red contour of the hole-filled mask, thickness 1 */
    VP_ALL = 63u,
    VP_GRAY_RGB = 1u << 8    /* not a prompt: the Q3 fix, gray with RGB (not BGR) weights */
};

/* "circle,blur" (comma/space separated, any order) -> bit set. Unknown name -> CARSEG_EINVAL. */
carseg_status vp_parse(const char *list, unsigned *types);
/* Canonical comma list in application order ("blur,circle"). */
void vp_format(unsigned types, char *buf, size_t n);

typedef struct {
    int w, h;
    unsigned types;
    const uint8_t *rgb;      /* (h, w, 3) the original image, borrowed */
    uint8_t *outside;        /* (h, w, 3) what pixels outside the mask become; NULL if unchanged */
} vp_ctx;

carseg_status vp_prepare(const uint8_t *rgb, int w, int h, unsigned types, vp_ctx *ctx);
void vp_release(vp_ctx *ctx);
/* mask: (h, w) soft CAM at the image size. out: (h, w, 3). Returns 1 when prompts were applied,
 * 0 when sum(mask) <= 1 and out is a copy of the original image. */
int vp_apply(const vp_ctx *ctx, const float *mask, float eta, uint8_t *out);
/* The same result computed step by step per mask, as the reference does (for tests). */
int vp_apply_naive(const uint8_t *rgb, int w, int h, unsigned types, const float *mask, float eta,
                   uint8_t *out);

/* Drawing primitives (RGB, interleaved), OpenCV 4.6 semantics. */
/* cv2.ellipse(img, (cx,cy), (ax,ay), 0, 0, 360, color, thickness=1, LINE_8) */
void vp_draw_ellipse(uint8_t *rgb, int w, int h, int cx, int cy, int ax, int ay,
                     const uint8_t color[3]);
/* cv2.rectangle(img, (x0,y0), (x1,y1), color, thickness=1) */
void vp_draw_rect(uint8_t *rgb, int w, int h, int x0, int y0, int x1, int y1,
                  const uint8_t color[3]);
/* Contour of a 0/1 mask after hole filling (scipy binary_fill_holes + cv2.findContours
 * RETR_TREE + drawContours thickness 1). */
carseg_status vp_draw_contour(uint8_t *rgb, int w, int h, const uint8_t *bin,
                              const uint8_t color[3]);

#endif
