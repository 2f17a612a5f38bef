/* carsam.c — CaR + SAM refinement of the CRF class masks (§4.3). See carsam.h. */
#include "carsam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void cs_carsam_params_init(cs_carsam_params *p) {
    p->iom_thres = 0.7;
    p->min_pred = 0.05;
    p->iou_thres = 0.7;
}

carseg_status cs_carsam_params_check(const cs_carsam_params *p) {
    struct { const char *name; double v; } f[] = {
        {"sam iom threshold", p->iom_thres}, {"sam min-pred threshold", p->min_pred},
        {"sam iou threshold", p->iou_thres}};
    for (int i = 0; i < 3; i++)
        if (!isfinite(f[i].v) || f[i].v < 0 || f[i].v > 1)
            return set_err(CARSEG_EINVAL, "%s %g is not in [0, 1]", f[i].name, f[i].v);
    return CARSEG_OK;
}

void cs_carsam_info_free(cs_carsam_info *info, int k) {
    if (!info) return;
    for (int i = 0; i < k; i++) { free(info[i].kept); info[i].kept = NULL; }
}

/* checks that runs sum to hw */
static int runs_ok(const uint32_t *c, size_t n, uint64_t hw) {
    uint64_t t = 0;
    for (size_t i = 0; i < n; i++) t += c[i];
    return t == hw;
}

carseg_status cs_carsam_refine(const cs_sam_masks *sam, const cs_carsam_params *p, uint8_t *masks,
                               int k, int h, int w, cs_carsam_info *info) {
    if (info) memset(info, 0, sizeof *info * (size_t)(k > 0 ? k : 0));
    if (!sam || !p || k < 0 || (k > 0 && !masks))
        return set_err(CARSEG_EINVAL, "car+sam: bad arguments");
    TRY(cs_carsam_params_check(p));
    if (sam->h != h || sam->w != w)
        return set_err(CARSEG_EINVAL, "car+sam: SAM masks are %dx%d, the class masks %dx%d",
                       sam->w, sam->h, w, h);
    int M = sam->n;
    size_t hw = (size_t)h * w;
    if (M < 0 || (M > 0 && (!sam->counts || !sam->n_counts)))
        return set_err(CARSEG_EINVAL, "car+sam: bad SAM mask list");
    for (int m = 0; m < M; m++)
        if (!sam->counts[m] || !runs_ok(sam->counts[m], sam->n_counts[m], hw))
            return set_err(CARSEG_EINVAL, "car+sam: SAM mask %d: its runs do not cover %dx%d", m, w, h);
    if (k == 0 || M == 0) {   /* nothing to match against: argmax of nothing; keep c */
        for (int i = 0; i < k && info; i++) {
            size_t a = 0;
            for (size_t t = 0; t < hw; t++) a += masks[(size_t)i * hw + t] != 0;
            info[i].iou = a ? 0.0 : NAN;
        }
        return CARSEG_OK;
    }
    uint32_t *pre = malloc((hw + 1) * sizeof *pre);   /* column-major prefix sums of c */
    uint64_t *sarea = malloc((size_t)M * sizeof *sarea);
    double *iom = malloc((size_t)M * sizeof *iom);
    int *kept = malloc((size_t)M * sizeof *kept);
    uint8_t *u = malloc(hw);
    carseg_status st = CARSEG_OK;
    if (!pre || !sarea || !iom || !kept || !u) {
        st = set_err(CARSEG_ENOMEM, "car+sam: out of memory");
        goto done;
    }
    for (int m = 0; m < M; m++) {
        uint64_t a = 0;
        for (size_t r = 1; r < sam->n_counts[m]; r += 2) a += sam->counts[m][r];
        sarea[m] = a;
    }
    for (int i = 0; i < k; i++) {
        uint8_t *c = masks + (size_t)i * hw;
        uint64_t ca = 0;
        pre[0] = 0;
        size_t q = 0;
        for (int x = 0; x < w; x++)
            for (int y = 0; y < h; y++, q++) {
                int on = c[(size_t)y * w + x] != 0;
                ca += on;
                pre[q + 1] = pre[q] + (uint32_t)on;
            }
        if (info) info[i].iou = NAN;
        if (ca == 0) continue;   /* an empty class mask stays empty */
        for (int m = 0; m < M; m++) {
            uint64_t inter = 0, pos = 0;
            const uint32_t *r = sam->counts[m];
            for (size_t j = 0; j < sam->n_counts[m]; j++) {
                if (j & 1) inter += pre[pos + r[j]] - pre[pos];
                pos += r[j];
            }
            double iom_t = sarea[m] ? (double)inter / (double)sarea[m] : 0.0;
            double iom_p = (double)inter / (double)ca;
            if (iom_p < p->min_pred) iom_t = 0.0;
            iom[m] = iom_t > iom_p ? iom_t : iom_p;   /* np.maximum: no NaN can occur here */
        }
        int nk = 0;
        for (int m = 0; m < M; m++)
            if (iom[m] > p->iom_thres) kept[nk++] = m;
        if (nk == 0) {
            int best = 0;
            for (int m = 1; m < M; m++) if (iom[m] > iom[best]) best = m;
            kept[nk++] = best;
        }
        memset(u, 0, hw);
        for (int j = 0; j < nk; j++) {
            const uint32_t *r = sam->counts[kept[j]];
            size_t pos = 0;
            for (size_t t = 0; t < sam->n_counts[kept[j]]; t++) {
                if (t & 1)
                    for (size_t z = pos; z < pos + r[t]; z++)
                        u[(z % (size_t)h) * (size_t)w + z / (size_t)h] = 1;
                pos += r[t];
            }
        }
        uint64_t in = 0, un = 0;
        for (size_t t = 0; t < hw; t++) {
            int a = c[t] != 0, b = u[t];
            in += a & b;
            un += a | b;
        }
        double iou = (double)in / (double)un;
        int rep = iou > p->iou_thres;
        if (rep) memcpy(c, u, hw);
        if (info) {
            info[i].iou = iou;
            info[i].replaced = rep;
            info[i].n_kept = nk;
            info[i].kept = malloc((size_t)nk * sizeof *info[i].kept);
            if (!info[i].kept) { st = set_err(CARSEG_ENOMEM, "car+sam: out of memory"); goto done; }
            memcpy(info[i].kept, kept, (size_t)nk * sizeof *kept);
        }
    }
done:
    if (st != CARSEG_OK) cs_carsam_info_free(info, k);
    free(pre); free(sarea); free(iom); free(kept); free(u);
    return st;
}
