/* classify.h — CaR's mask classifier (car_method.md §3.1, §3.3) and the text-feature cache.
 *
 * Mirrors car.py CaR.get_mask_confidence + clip_wrapper.forward_clip: each prompted image is
 * preprocessed like CLIP (resize shorter side, centre crop 224: Q8), encoded with all but the
 * last visual block (Q2), CLS -> ln_post -> proj, normalised; per template k
 * S_k = softmax_j(s * cos(img_i, txt_kj)) with s the classifier's own logit scale (Q19);
 * semantic mode: P = softmax_j(sum_k S_k) (Q5); refer mode: P = S (one template).
 * The reference re-encodes the images once per template; here each image is encoded once.
 */
#ifndef CARSEG_CLASSIFY_H
#define CARSEG_CLASSIFY_H

#include <stdint.h>
#include "carseg.h"
#include "clip.h"
#include "tokenizer.h"

/* Text features of strings, L2-normalised, cached per (model, string) for the process
 * lifetime of the cache. Not thread-safe: one cache per thread. */
typedef struct text_cache text_cache;
carseg_status tc_new(const clip_model *m, const tokenizer *tok, text_cache **out);
void tc_free(text_cache *tc);
/* out: (n, E). Strings not seen before are encoded batch-invariantly (clip_encode_text_stable):
 * a text's features never depend on the other strings of a call or on what the cache saw before. */
carseg_status tc_get(text_cache *tc, const char *const *strs, int n, float *out);
/* Encoded strings so far (for tests of the hoisting). */
long tc_encoded(const text_cache *tc);

/* One prompted image (h, w, 3) RGB -> feat (E), L2-normalised. no_crop: the Q8 fix, resize the
 * whole image to 224x224 instead of the reference's shorter-side resize + centre crop. */
carseg_status cls_encode_image(const clip_model *cls, const uint8_t *rgb, int w, int h,
                               int no_crop, float *feat);

/* n prompted images of the same size, rgb: (n, h, w, 3) -> feats (n, E), L2-normalised: one
 * batch through clip_encode_images (the same features as n cls_encode_image calls). */
carseg_status cls_encode_images(const clip_model *cls, const uint8_t *rgb, int n, int w, int h,
                                int no_crop, float *feats);

/* img: (n, E) normalised image features; txt: (T, n, E) normalised text features.
 * S_out: (T, n, n) per-template softmax (may be NULL); P: (n, n).
 * double_softmax: semantic mode (P = softmax(sum_k S_k)); else P = S_0 (T must be 1). */
void cls_probs(const float *img, int n, const float *txt, int T, int E, float scale,
               int double_softmax, float *S_out, float *P);

/* Python str.format(template, q) for a template with one "{}". Returns malloc'd string. */
char *car_format(const char *tpl, const char *q);

#endif
