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
