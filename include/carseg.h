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

/* Semantic segmentation: a confusion matrix accumulated over a split, scored the way the
 * reference's evaluate.semantic_iou does (or the mmsegmentation way). Rows are ground-truth
 * classes 0..n_class-1; columns are predicted classes 0..n_class-1 plus one last column for
 * predicted ids outside [0, n_class) (they count as misses of the GT class). Ground-truth pixels
 * outside [0, n_class) (255, 65535, ...) are ignored, as in the reference. */
typedef struct {
    int n_class;
    uint64_t *counts;   /* n_class x (n_class + 1), row-major: counts[gt * (n_class + 1) + pred] */
} carseg_confusion;

carseg_status carseg_confusion_init(carseg_confusion *cm, int n_class);   /* zeroed */
void carseg_confusion_free(carseg_confusion *cm);
/* Adds one image (n_px pixels of ground truth and prediction, same layout). */
void carseg_confusion_add(carseg_confusion *cm, const uint16_t *gt, const uint16_t *pred,
                          size_t n_px);
/* cm += other (same n_class, else CARSEG_EINVAL). */
carseg_status carseg_confusion_merge(carseg_confusion *cm, const carseg_confusion *other);

typedef enum {
    /* evaluate.semantic_iou: with ignore_background, row AND column 0 are dropped (pixels
     * predicted 0 are not counted at all, quirk Q13); IoU over classes with >= 1 GT pixel. */
    CARSEG_MIOU_REFERENCE = 0,
    /* mmsegmentation: with ignore_background only GT 0 is ignored (predicting 0 is a miss);
     * IoU over classes with a non-empty union (predicted-but-absent classes score 0). */
    CARSEG_MIOU_MMSEG = 1
} carseg_miou_convention;

typedef struct {
    double miou;          /* percent; 0 when no class is scored (as the reference)           */
    double pixel_acc;     /* percent: correctly labelled / counted pixels                     */
    double mean_acc;      /* percent: mean over classes with GT of per-class recall            */
    double fwiou;         /* percent: frequency-weighted IoU                                    */
    int n_scored;         /* classes that entered the mIoU mean                                 */
    double *iou;          /* n_class values in percent; NAN where 0/0 or dropped (class 0)      */
    unsigned char *scored;/* n_class flags: 1 if the class entered the mIoU mean                */
    int n_class;
} carseg_miou;

carseg_status carseg_confusion_score(const carseg_confusion *cm, int ignore_background,
                                     carseg_miou_convention conv, carseg_miou *out);
void carseg_miou_free(carseg_miou *m);

/* Referring segmentation (evaluate.py refer mode): per-sample IoU of binary masks,
 * mean IoU, overall IoU (sum I / sum U) and precision at IoU >= 0.5, 0.6, 0.7, 0.8, 0.9.
 * A sample with an empty union scores IoU 0 (as the reference). */
typedef struct {
    uint64_t n, cum_i, cum_u;
    double sum_iou;
    uint64_t correct[5];
} carseg_refer_stats;

void carseg_refer_add(carseg_refer_stats *s, uint64_t inter, uint64_t uni);
/* Percentages. */
void carseg_refer_summary(const carseg_refer_stats *s, double *miou, double *oiou,
                          double prec[5]);
/* Intersection and union of two binary masks (nonzero = inside). */
void carseg_mask_iou(const uint8_t *pred, const uint8_t *gt, size_t n_px, uint64_t *inter,
                     uint64_t *uni);



#ifdef __cplusplus
}
#endif
#endif /* CARSEG_H */
