/* eval.c — segmentation metrics: confusion-matrix mIoU, pixel accuracy, referring IoU.
 *
 * Mirrors the reference's evaluate.py: `_fast_hist` + `semantic_iou` (semantic mode) and
 * `compute_iou` + the precision@K / overall-IoU bookkeeping of `evaluate()` (refer mode).
 * The mmsegmentation convention (IoUMetric) is available as an option; see carseg.h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

carseg_status carseg_confusion_init(carseg_confusion *cm, int n_class) {
    memset(cm, 0, sizeof *cm);
    if (n_class < 1 || n_class > 65536)
        return set_err(CARSEG_EINVAL, "confusion matrix: bad class count %d", n_class);
    cm->counts = cs_calloc((size_t)n_class * (size_t)(n_class + 1), sizeof(uint64_t));
    if (!cm->counts) return set_err(CARSEG_ENOMEM, "confusion matrix: %d classes", n_class);
    cm->n_class = n_class;
    return CARSEG_OK;
}

void carseg_confusion_free(carseg_confusion *cm) {
    if (!cm) return;
    cs_free(cm->counts);
    cm->counts = NULL;
    cm->n_class = 0;
}

void carseg_confusion_add(carseg_confusion *cm, const uint16_t *gt, const uint16_t *pred,
                          size_t n_px) {
    const unsigned n = (unsigned)cm->n_class, stride = n + 1;
    uint64_t *c = cm->counts;
    for (size_t i = 0; i < n_px; i++) {
        unsigned g = gt[i], p = pred[i];
        if (g >= n) continue;          /* ignored GT (255, 65535, out of range) */
        if (p > n) p = n;              /* predicted id outside the classes: last column */
        c[(size_t)g * stride + p]++;
    }
}

carseg_status carseg_confusion_merge(carseg_confusion *cm, const carseg_confusion *other) {
    if (cm->n_class != other->n_class)
        return set_err(CARSEG_EINVAL, "confusion matrices differ in size (%d vs %d classes)",
                       cm->n_class, other->n_class);
    size_t m = (size_t)cm->n_class * (size_t)(cm->n_class + 1);
    for (size_t i = 0; i < m; i++) cm->counts[i] += other->counts[i];
    return CARSEG_OK;
}

void carseg_miou_free(carseg_miou *m) {
    if (!m) return;
    free(m->iou);
    free(m->scored);
    m->iou = NULL;
    m->scored = NULL;
}

/* Scores the confusion matrix. Reference (numpy) semantics, with hist = counts[:, :n]:
 *   ignore_background: hist = hist[1:, 1:]
 *   acc = trace / sum;  acc_cls = nanmean(diag / rowsum);  iu = diag / (rowsum + colsum - diag)
 *   mIoU = nanmean(iu[rowsum > 0]) (0 if none);  fwIoU = sum(freq * iu) over freq > 0
 * The extra "predicted out of range" column adds to the row sums (a miss) and to the total. */
carseg_status carseg_confusion_score(const carseg_confusion *cm, int ignore_background,
                                     carseg_miou_convention conv, carseg_miou *out) {
    memset(out, 0, sizeof *out);
    const int n = cm->n_class, stride = n + 1;
    out->n_class = n;
    out->iou = malloc((size_t)n * sizeof(double));
    out->scored = calloc((size_t)n, 1);
    double *row = calloc((size_t)n, sizeof(double)), *col = calloc((size_t)n, sizeof(double));
    if (!out->iou || !out->scored || !row || !col) {
        free(row);
        free(col);
        carseg_miou_free(out);
        return set_err(CARSEG_ENOMEM, "scoring %d classes", n);
    }
    const int c0 = ignore_background ? 1 : 0;   /* first class kept */
    /* Reference drops column 0 too; mmseg keeps predicted-0 pixels as misses of the GT class. */
    const int keep_pred0 = ignore_background && conv == CARSEG_MIOU_MMSEG;
    double total = 0, trace = 0;
    for (int g = c0; g < n; g++) {
        const uint64_t *r = cm->counts + (size_t)g * stride;
        for (int p = 0; p <= n; p++) {
            if (p < c0 && !keep_pred0) continue;
            double v = (double)r[p];
            row[g] += v;
            if (p >= c0 && p < n) col[p] += v;
            total += v;
        }
        trace += (double)r[g];
    }
    double sum_iou = 0, sum_acc = 0, fw = 0;
    int n_iou = 0, n_acc = 0;
    for (int c = 0; c < n; c++) {
        out->iou[c] = NAN;
        if (c < c0) continue;
        double d = (double)cm->counts[(size_t)c * stride + c];
        double uni = row[c] + col[c] - d;
        double iu = uni > 0 ? d / uni : NAN;
        out->iou[c] = iu * 100.0;
        if (row[c] > 0) {
            sum_acc += d / row[c];
            n_acc++;
            fw += (row[c] / total) * iu;   /* iu is finite when row > 0 */
        }
        int scored = conv == CARSEG_MIOU_MMSEG ? uni > 0 : row[c] > 0;
        if (scored) {
            out->scored[c] = 1;
            sum_iou += iu;
            n_iou++;
        }
    }
    out->n_scored = n_iou;
    out->miou = n_iou ? 100.0 * sum_iou / n_iou : 0.0;
    out->pixel_acc = total > 0 ? 100.0 * trace / total : NAN;
    out->mean_acc = n_acc ? 100.0 * sum_acc / n_acc : NAN;
    out->fwiou = total > 0 ? 100.0 * fw : NAN;
    free(row);
    free(col);
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// referring segmentation

static const float k_prec_thr[5] = {0.5f, 0.6f, 0.7f, 0.8f, 0.9f};

void carseg_mask_iou(const uint8_t *pred, const uint8_t *gt, size_t n_px, uint64_t *inter,
                     uint64_t *uni) {
    uint64_t i_ = 0, u_ = 0;
    for (size_t k = 0; k < n_px; k++) {
        int a = pred[k] != 0, b = gt[k] != 0;
        i_ += (uint64_t)(a & b);
        u_ += (uint64_t)(a | b);
    }
    *inter = i_;
    *uni = u_;
}

void carseg_refer_add(carseg_refer_stats *s, uint64_t inter, uint64_t uni) {
    /* compute_iou: float32 I*1.0/U (torch), 0 when the union is empty; compared against the
     * thresholds as float32 (a 0-d float tensor against a Python float). */
    float iou = uni ? (float)inter / (float)uni : 0.0f;
    s->n++;
    s->cum_i += inter;
    s->cum_u += uni;
    s->sum_iou += iou;
    for (int k = 0; k < 5; k++) s->correct[k] += iou >= k_prec_thr[k];
}

void carseg_refer_summary(const carseg_refer_stats *s, double *miou, double *oiou,
                          double prec[5]) {
    *miou = s->n ? 100.0 * s->sum_iou / (double)s->n : 0.0;
    *oiou = s->cum_u ? 100.0 * (double)s->cum_i / (double)s->cum_u : 0.0;
    for (int k = 0; k < 5; k++) prec[k] = s->n ? 100.0 * (double)s->correct[k] / (double)s->n : 0.0;
}
