/* crf.h — Krähenbühl & Koltun's fully connected CRF (NeurIPS 2011) with Gaussian edge
 * potentials, mean-field inference on the permutohedral lattice (Adams et al. 2010), as
 * pydensecrf's DenseCRF2D does it: Potts compatibility, diagonal kernel, symmetric normalisation.
 */
#ifndef CARSEG_CRF_H
#define CARSEG_CRF_H

#include <stdint.h>
#include "carseg.h"

/* The same struct as the public carseg_crf_params (include/carseg.h):
 *   iters (CaR: 10); pos_sxy, pos_w: Gaussian kernel sxy 1, weight (compat) 3;
 *   bi_sxy, bi_srgb, bi_w: bilateral kernel sxy 67, srgb 3, weight 4. */
typedef carseg_crf_params crf_params;

crf_params crf_default_params(void);  /* CaR's values (car_method.md §4.1) */

/* probs: (C, H, W) probabilities (not renormalised); unary = -log(clip(p, 1e-5, 1)).
 * feat: (H, W, 3) uint8 colour features used as-is. labels: (H, W) argmax of Q, or NULL.
 * q_out: (C, H, W) marginals after the last iteration, or NULL. */
carseg_status crf_run(const float *probs, int C, int H, int W, const uint8_t *feat,
                      const crf_params *p, uint16_t *labels, float *q_out);

/* CaR's colour features (Q4): float RGB -> BGR, minus (104.008, 116.669, 122.675), cast to uint8
 * with wrap-around (trunc(x) mod 256). rgb, feat: (H, W, 3). */
void crf_features_car(const uint8_t *rgb, int W, int H, uint8_t *feat);

/* The general model behind crf_run: N variables, C labels, nk Potts kernels.
 * kernel k: features feat (N, d) already divided by their standard deviations, weight w
 * (w == 0: the kernel is skipped). */
typedef struct {
    int d;
    const float *feat;   /* (N, d) */
    float w;
    int grid_w;          /* > 0: the variables are the pixels of a grid_w-wide image in raster
                            order (lattice_build_grid: same results, faster); 0: any points */
} crf_kernel;

/* Mean field as DenseCRF::inference: Q = softmax(-U); iters times
 * Q = softmax(-U + Σ_k w_k · n_k ⊙ K_k (n_k ⊙ Q)), n_k = 1/sqrt(K_k 1 + 1e-20) (symmetric
 * normalisation, self term included). unary, q: (N, C), label-minor; q is written. */
carseg_status crf_inference(const float *unary, int N, int C, const crf_kernel *k, int nk, int iters,
                            float *q);

/* DenseCRF2D's feature images, (H*W, 2) and (H*W, 5), row-major pixels, x the column. */
void crf_gaussian_features(int W, int H, float sx, float sy, float *out);
void crf_bilateral_features(int W, int H, float sx, float sy, float sr, float sg, float sb,
                            const uint8_t *im, float *out);

#endif
