/* crf.h — Krähenbühl & Koltun's fully connected CRF (NeurIPS 2011) with Gaussian edge
 * potentials, mean-field inference on the permutohedral lattice (Adams et al. 2010), as
 * pydensecrf's DenseCRF2D does it: Potts compatibility, diagonal kernel, symmetric normalisation.
 */
#ifndef CARSEG_CRF_H
#define CARSEG_CRF_H

#include <stdint.h>
#include "carseg.h"

typedef struct {
    int iters;                        /* mean-field iterations (CaR: 10) */
    float pos_sxy, pos_w;             /* Gaussian kernel: sxy 1, weight (compat) 3 */
    float bi_sxy, bi_srgb, bi_w;      /* bilateral kernel: sxy 67, srgb 3, weight 4 */
} crf_params;

crf_params crf_default_params(void);  /* CaR's values (car_method.md §4.1) */

/* probs: (C, H, W) probabilities (not renormalised); unary = -log(clip(p, 1e-5, 1)).
 * feat: (H, W, 3) uint8 colour features used as-is. labels: (H, W) argmax of Q, or NULL.
 * q_out: (C, H, W) marginals after the last iteration, or NULL. */
carseg_status crf_run(const float *probs, int C, int H, int W, const uint8_t *feat,
                      const crf_params *p, uint16_t *labels, float *q_out);

/* CaR's colour features (Q4): float RGB -> BGR, minus (104.008, 116.669, 122.675), cast to uint8
 * with wrap-around (trunc(x) mod 256). rgb, feat: (H, W, 3). */
void crf_features_car(const uint8_t *rgb, int W, int H, uint8_t *feat);

#endif
