/* image.h — decoding, encoding and Pillow-exact resampling of 8-bit images.
 *
 * Decoding is bit-identical to Pillow 9.4 on Debian (libjpeg-turbo with Pillow's default settings,
 * libpng). Images are interleaved, top row first, no padding.
 */
#ifndef CARSEG_IMAGE_H
#define CARSEG_IMAGE_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

typedef struct {
    int w, h, c;         /* c = 1 (gray/index) or 3 (RGB) */
    uint8_t *px;         /* h*w*c bytes, malloc'd */
} image_u8;

/* Loads a JPEG or PNG as RGB (c = 3): gray, palette, 16-bit and alpha are converted the way
 * Pillow's Image.convert("RGB") does. */
carseg_status image_load_rgb(const char *path, image_u8 *out);
/* Loads a palette (or 8-bit gray) PNG as its raw indices (c = 1): VOC-style ground truth. */
carseg_status image_load_indexed(const char *path, image_u8 *out);
/* Loads a 16-bit (or 8-bit) single-channel PNG or TIFF label image into uint16. */
carseg_status image_load_labels16(const char *path, int *w, int *h, uint16_t **out);
void image_free(image_u8 *im);
/* The same decoders on a buffer in memory (name is used in error messages only). */
carseg_status image_decode_rgb(const char *name, const uint8_t *data, size_t len, image_u8 *out);
carseg_status image_decode_indexed(const char *name, const uint8_t *data, size_t len, image_u8 *out);
carseg_status image_decode_labels16(const char *name, const uint8_t *data, size_t len, int *w,
                                    int *h, uint16_t **out);

/* Writers (atomic: temp file + rename). */
carseg_status image_save_png_rgb(const char *path, const uint8_t *rgb, int w, int h);
carseg_status image_save_png_palette(const char *path, const uint8_t *idx, int w, int h,
                                     const uint8_t *palette_rgb, int n_colors);
carseg_status image_save_png_gray16(const char *path, const uint16_t *v, int w, int h);
/* A label map: 8-bit palette PNG (VOC colours) when n_labels <= 256, else 16-bit gray PNG. */
carseg_status image_save_labels(const char *path, const uint16_t *labels, int w, int h, int n_labels);
/* The same label PNG into memory (*png malloc'd); name is for messages. */
carseg_status image_encode_labels(const char *name, const uint16_t *labels, int w, int h,
                                  int n_labels, uint8_t **png, size_t *len);
/* Width and height from a JPEG's SOFn or a PNG's IHDR without decoding: 1 if found, else 0. */
int image_probe_size(const uint8_t *data, size_t len, int64_t *w, int64_t *h);
/* The VOC colour map (256 entries, RGB). */
void voc_palette(uint8_t pal[256 * 3]);

/* Pillow Image.resize(size, BICUBIC) on 8-bit data (any c), antialiased when shrinking,
 * 22-bit fixed point, horizontal pass then vertical, exactly as Pillow's Resample.c. */
carseg_status image_resize_bicubic(const image_u8 *src, int out_w, int out_h, image_u8 *dst);
/* The same with Pillow's BILINEAR filter (support 1), as torchvision's resize of a PIL image with
 * the default interpolation (SAM's ResizeLongestSide). */
carseg_status image_resize_bilinear(const image_u8 *src, int out_w, int out_h, image_u8 *dst);

/* CLIP preprocessing as torchvision does it:
 *   clip_preprocess: Resize(size) (shorter side -> size, other side int(size*long/short)),
 *   CenterCrop(size) (offset round((h-size)/2)), /255, Normalize(CLIP mean, std).
 *   out: (3, size, size) float32, caller-allocated.
 *   clip_preprocess_exact: resize to (out_w, out_h) directly (no crop), same normalisation;
 *   out: (3, out_h, out_w). The CaR generator uses it with ceil16 sizes. */
carseg_status clip_preprocess(const image_u8 *rgb, int size, float *out);
carseg_status clip_preprocess_exact(const image_u8 *rgb, int out_w, int out_h, float *out);
extern const float CLIP_MEAN[3], CLIP_STD[3];

#endif
