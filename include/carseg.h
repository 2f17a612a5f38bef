/* carseg.h — CLIP as RNN (CaR): training-free open-vocabulary segmentation in C.
 *
 * This header is the library's manual. Every function that can fail returns a carseg_status;
 * carseg_last_error() then holds one line naming the file/tensor/argument and the problem.
 * The library never exits and never writes to stdout; diagnostics go to the log callback
 * (stderr by default). Objects opened with an _open or _new call are released with the matching _close or _free,
 * which accept NULL. A loaded model is immutable and may be shared by threads; scratch state
 * belongs to one thread at a time.
 */
#ifndef CARSEG_H
#define CARSEG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CARSEG_VERSION "0.1.0"

// ---------------------------------------------------------------------------------------------
// Status and diagnostics

typedef enum {
    CARSEG_OK = 0,
    CARSEG_EIO,       /* a file could not be opened, read or written                      */
    CARSEG_EFORMAT,   /* a file is malformed (weights, vocabulary, image, .npy, JSON)      */
    CARSEG_EMODEL,    /* weights lack a tensor, have an unexpected shape or wrong kind     */
    CARSEG_ENOMEM,    /* allocation failed                                                 */
    CARSEG_EINVAL,    /* bad argument: a caller error                                      */
    CARSEG_ENET       /* a download failed (no network, HTTP error, checksum mismatch)     */
} carseg_status;

/* Static name of a status ("ok", "i/o error", ...). Never NULL. */
const char *carseg_status_str(carseg_status st);
/* The message of the last failure in this thread ("" if none). Valid until the next failure. */
const char *carseg_last_error(void);

enum { CARSEG_LOG_ERROR = 0, CARSEG_LOG_WARN = 1, CARSEG_LOG_INFO = 2, CARSEG_LOG_DEBUG = 3 };
typedef void (*carseg_log_fn)(int level, const char *msg, void *user);
/* Replaces the log sink (default: messages up to `max_level` CARSEG_LOG_WARN go to stderr).
 * fn = NULL silences the library. */
void carseg_set_log(carseg_log_fn fn, void *user);
void carseg_set_log_level(int max_level);

/* Threads used by compute kernels (0 = all cores; default 0). */
void carseg_set_threads(int n);
int carseg_get_threads(void);

// ---------------------------------------------------------------------------------------------
// Models: known checkpoints, cache, download (models.c)
// (section: add declarations here)



// ---------------------------------------------------------------------------------------------
// Tokenizer (tokenizer.c)
// (section: add declarations here)



// ---------------------------------------------------------------------------------------------
// Images (image.c)
// (section: add declarations here)



// ---------------------------------------------------------------------------------------------
// Model files and CLIP encoders (weights.c, clip.c)
// (section: add declarations here)



// ---------------------------------------------------------------------------------------------
// Mask proposals: Grad-CAM + affinity (cam.c)
// (section: add declarations here)



// ---------------------------------------------------------------------------------------------
// Dense CRF (crf.c, lattice.c)
// (section: add declarations here)

/* Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun 2011) as CaR runs it
 * through pydensecrf's DenseCRF2D: Potts compatibility, symmetric normalisation, mean field on the
 * permutohedral lattice. Kernels: a Gaussian on (x/pos_sxy, y/pos_sxy) with weight pos_w and a
 * bilateral one on (x/bi_sxy, y/bi_sxy, f0/bi_srgb, f1/bi_srgb, f2/bi_srgb) with weight bi_w,
 * x the column, f0..f2 the three feature channels in the order given. */
typedef struct carseg_crf_params {
    int iters;                        /* mean-field iterations (CaR: 10) */
    float pos_sxy, pos_w;             /* Gaussian kernel: sxy 1, weight 3 */
    float bi_sxy, bi_srgb, bi_w;      /* bilateral kernel: sxy 67, srgb 3, weight 4 */
} carseg_crf_params;

/* CaR's parameters (10 iterations; 1, 3; 67, 3, 4). */
carseg_crf_params carseg_crf_defaults(void);

/* probs: (C, H, W) float probabilities, used as given (unary = -log(clip(p, 1e-5, 1)), no
 * renormalisation); NaN is rejected. feat: (H, W, 3) uint8 colour features, used as-is.
 * labels: (H, W) argmax of the marginals (first maximum), or NULL. q: (C, H, W) marginals after the
 * last iteration, or NULL. Any C >= 1 (labels hold up to 65535). Uses carseg_set_threads threads. */
carseg_status carseg_crf(const float *probs, int C, int H, int W, const uint8_t *feat,
                         const carseg_crf_params *p, uint16_t *labels, float *q);

/* CaR's colour features (its quirk Q4): RGB -> BGR, minus (104.008, 116.669, 122.675), truncated
 * to an integer and wrapped modulo 256 as NumPy's uint8 cast does. rgb, feat: (H, W, 3). */
void carseg_crf_features_car(const uint8_t *rgb, int W, int H, uint8_t *feat);




// ---------------------------------------------------------------------------------------------
// Visual prompts, presets, the CaR method (prompts.c, presets.c, classify.c, car.c)
// (section: add declarations here)



// ---------------------------------------------------------------------------------------------
// Evaluation: datasets and metrics (eval.c, datasets.c)
// (section: add declarations here)



#ifdef __cplusplus
}
#endif
#endif /* CARSEG_H */
