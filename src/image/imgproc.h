/* imgproc.h — the few OpenCV 4.6 operations CaR uses, reproduced exactly.
 * All images interleaved, top row first. */
#ifndef CARSEG_IMGPROC_H
#define CARSEG_IMGPROC_H

#include <stdint.h>
#include "carseg.h"

/* cv2.GaussianBlur(img, (k,k), sigmaX=0) on uint8 with c channels: sigma = 0.3*((k-1)/2-1)+0.8,
 * BORDER_REFLECT_101, OpenCV's 8-bit fixed-point separable path. dst may not alias src. */
void cv_gaussian_blur_u8(uint8_t *dst, const uint8_t *src, int w, int h, int c, int ksize);
/* cv2.cvtColor(img, COLOR_BGR2GRAY) applied to an array (first channel is taken as B):
 * Y = (c0*3735 + c1*19235 + c2*9798 + 16384) >> 15 (OpenCV 4.6's 15-bit weights; identical to
 * cv2 on all 2^24 colours — the 14-bit 1868/9617/4899 formula of older OpenCV differs). */
void cv_bgr2gray_u8(uint8_t *dst, const uint8_t *src, int w, int h);
/* cv2.resize(float map, (dw, dh), INTER_LINEAR). */
void cv_resize_linear_f32(float *dst, int dw, int dh, const float *src, int sw, int sh);
/* cv2.resize(..., INTER_NEAREST) on float maps. */
void cv_resize_nearest_f32(float *dst, int dw, int dh, const float *src, int sw, int sh);

#endif
