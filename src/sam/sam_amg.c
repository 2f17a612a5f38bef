/* sam_amg.c — SAM's automatic mask generator: grid, batches, filters, NMS, RLE, records.
 * See sam_amg.h for the exact upstream semantics each step follows. */
#include "sam_amg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rle.h"
#include "util.h"

void cs_amg_params_init(cs_amg_params *p) {
    memset(p, 0, sizeof *p);
    p->points_per_side = 32;
    p->points_per_batch = 64;
    p->pred_iou_thresh = 0.88;
    p->stability_score_thresh = 0.95;
    p->stability_score_offset = 1.0;
    p->box_nms_thresh = 0.7;
    p->mask_threshold = 0.0;
    p->min_mask_region_area = 0;
}

void cs_amg_params_car(cs_amg_params *p) {
    cs_amg_params_init(p);
    p->points_per_side = 64;
}

carseg_status cs_amg_params_check(const cs_amg_params *p) {
    if (!p) return set_err(CARSEG_EINVAL, "sam generator: no parameters");
    if (p->points_per_side < 1 || p->points_per_side > 1024)
        return set_err(CARSEG_EINVAL, "sam generator: points_per_side %d is not in 1..1024",
                       p->points_per_side);
    if (p->points_per_batch < 1 || p->points_per_batch > 65536)
        return set_err(CARSEG_EINVAL, "sam generator: points_per_batch %d is not in 1..65536",
                       p->points_per_batch);
    struct { const char *name; double v; } f[] = {
        {"pred_iou_thresh", p->pred_iou_thresh},
        {"stability_score_thresh", p->stability_score_thresh},
        {"stability_score_offset", p->stability_score_offset},
        {"box_nms_thresh", p->box_nms_thresh},
        {"mask_threshold", p->mask_threshold},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!isfinite(f[i].v))
            return set_err(CARSEG_EINVAL, "sam generator: %s is not a finite number", f[i].name);
    if (p->box_nms_thresh < 0 || p->box_nms_thresh > 1)
        return set_err(CARSEG_EINVAL, "sam generator: box_nms_thresh %g is not in [0, 1]",
                       p->box_nms_thresh);
    if (p->stability_score_offset < 0)
        return set_err(CARSEG_EINVAL, "sam generator: stability_score_offset %g is negative",
                       p->stability_score_offset);
    if (p->min_mask_region_area < 0)
        return set_err(CARSEG_EINVAL, "sam generator: min_mask_region_area %d is negative",
                       p->min_mask_region_area);
    return CARSEG_OK;
}

void cs_amg_result_free(cs_amg_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) free(r->masks[i].counts);
    free(r->masks);
    memset(r, 0, sizeof *r);
}

carseg_status cs_amg_result_mask(const cs_amg_result *r, int k, uint8_t *mask) {
    if (!r || k < 0 || k >= r->n) return set_err(CARSEG_EINVAL, "sam: mask %d out of range", k);
    if (cs_rle_to_mask(r->masks[k].counts, r->masks[k].n_counts, r->h, r->w, mask) != 0)
        return set_err(CARSEG_EINVAL, "sam: mask %d: RLE does not cover %dx%d", k, r->w, r->h);
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// point grid: np.linspace(offset, 1 - offset, n) (y[i] = i*step + start, y[-1] = stop), x fastest

double *cs_amg_point_grid(int n) {
    if (n < 1 || n > 1024) return NULL;
    double *g = malloc((size_t)n * n * 2 * sizeof *g);
    double *side = malloc((size_t)n * sizeof *side);
    if (!g || !side) { free(g); free(side); return NULL; }
    double offset = 1.0 / (2 * n), start = offset, stop = 1 - offset;
    int div = n - 1;
    double delta = stop - start;
    if (div > 0) {
        double step = delta / div;
        for (int i = 0; i < n; i++) {
            double y = (double)i;
            if (step == 0) y = y / div * delta;
            else y = y * step;
            side[i] = y + start;
        }
        side[n - 1] = stop;
    } else {
        side[0] = 0.0 * delta + start;
    }
    for (int yi = 0; yi < n; yi++)
        for (int xi = 0; xi < n; xi++) {
            g[((size_t)yi * n + xi) * 2 + 0] = side[xi];
            g[((size_t)yi * n + xi) * 2 + 1] = side[yi];
        }
    free(side);
    return g;
}

double *cs_amg_points_for_image(int n, int w, int h) {
    double *g = cs_amg_point_grid(n);
    if (!g) return NULL;
    for (size_t i = 0; i < (size_t)n * n; i++) {
        g[2 * i] *= (double)w;
        g[2 * i + 1] *= (double)h;
    }
    return g;
}

// ---------------------------------------------------------------------------------------------
// torch.sort(descending=True), CPU, stable=False: std::sort over (value, index) pairs with
// KeyValueCompDesc (NaN first, then larger first). A port of libstdc++'s introsort (GCC 12), so
// that equal scores end in the same order as torch's.

typedef struct { float v; int64_t i; } kv;

static inline int kv_less(kv a, kv b) {   /* comp(a, b): a goes before b */
    return (isnan(a.v) && !isnan(b.v)) || (a.v > b.v);
}
static inline void kv_swap(kv *a, kv *b) { kv t = *a; *a = *b; *b = t; }

static void kv_push_heap(kv *f, long hole, long top, kv val) {
    long parent = (hole - 1) / 2;
    while (hole > top && kv_less(f[parent], val)) {
        f[hole] = f[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    f[hole] = val;
}

static void kv_adjust_heap(kv *f, long hole, long len, kv val) {
    long top = hole, second = hole;
    while (second < (len - 1) / 2) {
        second = 2 * (second + 1);
        if (kv_less(f[second], f[second - 1])) second--;
        f[hole] = f[second];
        hole = second;
    }
    if ((len & 1) == 0 && second == (len - 2) / 2) {
        second = 2 * (second + 1);
        f[hole] = f[second - 1];
        hole = second - 1;
    }
    kv_push_heap(f, hole, top, val);
}

static void kv_make_heap(kv *f, long len) {
    if (len < 2) return;
    long parent = (len - 2) / 2;
    for (;;) {
        kv v = f[parent];
        kv_adjust_heap(f, parent, len, v);
        if (parent == 0) return;
        parent--;
    }
}

static void kv_pop_heap(kv *f, long last, long result) {
    kv v = f[result];
    f[result] = f[0];
    kv_adjust_heap(f, 0, last, v);
}

static void kv_partial_sort_all(kv *f, long len) {   /* __partial_sort(first, last, last) */
    kv_make_heap(f, len);
    for (long last = len; last > 1;) {
        --last;
        kv_pop_heap(f, last, last);
    }
}

static void kv_move_median_to_first(kv *res, kv *a, kv *b, kv *c) {
    if (kv_less(*a, *b)) {
        if (kv_less(*b, *c)) kv_swap(res, b);
        else if (kv_less(*a, *c)) kv_swap(res, c);
        else kv_swap(res, a);
    } else if (kv_less(*a, *c)) kv_swap(res, a);
    else if (kv_less(*b, *c)) kv_swap(res, c);
    else kv_swap(res, b);
}

static kv *kv_unguarded_partition(kv *first, kv *last, kv *pivot) {
    for (;;) {
        while (kv_less(*first, *pivot)) ++first;
        --last;
        while (kv_less(*pivot, *last)) --last;
        if (!(first < last)) return first;
        kv_swap(first, last);
        ++first;
    }
}

static void kv_introsort_loop(kv *first, kv *last, long depth) {
    while (last - first > 16) {
        if (depth == 0) {
            kv_partial_sort_all(first, last - first);
            return;
        }
        --depth;
        kv *mid = first + (last - first) / 2;
        kv_move_median_to_first(first, first + 1, mid, last - 1);
        kv *cut = kv_unguarded_partition(first + 1, last, first);
        kv_introsort_loop(cut, last, depth);
        last = cut;
    }
}

static void kv_unguarded_linear_insert(kv *last) {
    kv val = *last;
    kv *next = last - 1;
    while (kv_less(val, *next)) {
        *last = *next;
        last = next;
        --next;
    }
    *last = val;
}

static void kv_insertion_sort(kv *first, kv *last) {
    if (first == last) return;
    for (kv *i = first + 1; i != last; ++i) {
        if (kv_less(*i, *first)) {
            kv val = *i;
            memmove(first + 1, first, (size_t)(i - first) * sizeof *first);
            *first = val;
        } else {
            kv_unguarded_linear_insert(i);
        }
    }
}

static void kv_std_sort(kv *first, long n) {
    if (n <= 0) return;
    long lg = 0;
    for (long m = n; m > 1; m >>= 1) lg++;
    kv_introsort_loop(first, first + n, 2 * lg);
    if (n > 16) {
        kv_insertion_sort(first, first + 16);
        for (kv *i = first + 16; i != first + n; ++i) kv_unguarded_linear_insert(i);
    } else {
        kv_insertion_sort(first, first + n);
    }
}

void cs_amg_torch_sort_desc(const float *scores, int n, int64_t *idx) {
    if (n <= 0) return;
    kv *a = malloc((size_t)n * sizeof *a);
    if (!a) {   /* cannot happen in practice; fall back to a plain order */
        for (int i = 0; i < n; i++) idx[i] = i;
        return;
    }
    for (int i = 0; i < n; i++) { a[i].v = scores[i]; a[i].i = i; }
    kv_std_sort(a, n);
    for (int i = 0; i < n; i++) idx[i] = a[i].i;
    free(a);
}

// ---------------------------------------------------------------------------------------------
// NMS: torchvision's CPU nms kernel (stable descending sort; IoU in float32; '>' against a double)

/* scores[a] goes before scores[b] in a stable descending sort (NaN first, as KeyValueCompDesc) */
static inline int desc_before(const float *sc, int a, int b) {
    float va = sc[a], vb = sc[b];
    return (isnan(va) && !isnan(vb)) || va > vb;
}

/* stable merge sort of the indices ord[0..n) by descending score (tmp: n ints) */
static void stable_sort_desc(int *ord, int *tmp, int n, const float *sc) {
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int i = lo, j = mid, o = lo;
            while (i < mid && j < hi) tmp[o++] = desc_before(sc, ord[j], ord[i]) ? ord[j++] : ord[i++];
            while (i < mid) tmp[o++] = ord[i++];
            while (j < hi) tmp[o++] = ord[j++];
        }
        memcpy(ord, tmp, (size_t)n * sizeof *ord);
    }
}

static int nms_kernel(const float *b, const float *scores, int n, double thr, int *keep) {
    if (n <= 0) return 0;
    int *order = malloc((size_t)n * sizeof *order);
    uint8_t *sup = calloc((size_t)n, 1);
    float *areas = malloc((size_t)n * sizeof *areas);
    if (!order || !sup || !areas) { free(order); free(sup); free(areas); return -1; }
    for (int i = 0; i < n; i++) {
        order[i] = i;
        areas[i] = (b[4 * i + 2] - b[4 * i + 0]) * (b[4 * i + 3] - b[4 * i + 1]);
    }
    int *tmp = malloc((size_t)n * sizeof *tmp);
    if (!tmp) { free(order); free(sup); free(areas); return -1; }
    stable_sort_desc(order, tmp, n, scores);   /* scores.sort(stable=True, descending=True) */
    free(tmp);
    int nk = 0;
    for (int ii = 0; ii < n; ii++) {
        int i = order[ii];
        if (sup[i]) continue;
        keep[nk++] = i;
        float ix1 = b[4 * i], iy1 = b[4 * i + 1], ix2 = b[4 * i + 2], iy2 = b[4 * i + 3];
        float iarea = areas[i];
        for (int jj = ii + 1; jj < n; jj++) {
            int j = order[jj];
            if (sup[j]) continue;
            float xx1 = fmaxf(ix1, b[4 * j]), yy1 = fmaxf(iy1, b[4 * j + 1]);
            float xx2 = fminf(ix2, b[4 * j + 2]), yy2 = fminf(iy2, b[4 * j + 3]);
            float ww = xx2 - xx1 > 0.0f ? xx2 - xx1 : 0.0f;
            float hh = yy2 - yy1 > 0.0f ? yy2 - yy1 : 0.0f;
            float inter = ww * hh;
            float ovr = inter / (iarea + areas[j] - inter);
            if ((double)ovr > thr) sup[j] = 1;
        }
    }
    free(order); free(sup); free(areas);
    return nk;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int cs_amg_batched_nms(const float *boxes, const float *scores, int n, double thr, int *keep) {
    if (n <= 0) return 0;
    int nk = nms_kernel(boxes, scores, n, thr, keep);
    if (nk < 0) return -1;
    if ((size_t)n * 4 > 4000) {
        /* _batched_nms_vanilla: keep_indices ascending, then scores[keep].sort(descending=True) */
        qsort(keep, (size_t)nk, sizeof *keep, cmp_int);
        float *s = malloc((size_t)(nk ? nk : 1) * sizeof *s);
        int64_t *perm = malloc((size_t)(nk ? nk : 1) * sizeof *perm);
        int *k2 = malloc((size_t)(nk ? nk : 1) * sizeof *k2);
        if (!s || !perm || !k2) { free(s); free(perm); free(k2); return -1; }
        for (int i = 0; i < nk; i++) s[i] = scores[keep[i]];
        cs_amg_torch_sort_desc(s, nk, perm);
        for (int i = 0; i < nk; i++) k2[i] = keep[perm[i]];
        memcpy(keep, k2, (size_t)nk * sizeof *keep);
        free(s); free(perm); free(k2);
    }
    return nk;
}

// ---------------------------------------------------------------------------------------------
// remove_small_regions: 8-connected components (labels in raster order of their first pixel)

static int find_root(int *par, int x) {
    while (par[x] != x) { par[x] = par[par[x]]; x = par[x]; }
    return x;
}

int cs_amg_remove_small_regions(uint8_t *mask, int h, int w, double area_thresh, int islands) {
    size_t hw = (size_t)h * w;
    if (hw == 0) return 0;
    int *lab = malloc(hw * sizeof *lab);
    int *par = malloc((hw + 1) * sizeof *par);
    if (!lab || !par) { free(lab); free(par); return -1; }
    int nprov = 0;
    /* working = holes ? !mask : mask; provisional labels, union-find over 8 neighbours */
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            size_t p = (size_t)y * w + x;
            int on = islands ? (mask[p] != 0) : (mask[p] == 0);
            if (!on) { lab[p] = 0; continue; }
            int best = 0;
            const int dy[4] = {0, -1, -1, -1}, dx[4] = {-1, -1, 0, 1};
            for (int k = 0; k < 4; k++) {
                int yy = y + dy[k], xx = x + dx[k];
                if (yy < 0 || xx < 0 || xx >= w) continue;
                int l = lab[(size_t)yy * w + xx];
                if (!l) continue;
                if (!best) best = find_root(par, l);
                else {
                    int r1 = find_root(par, best), r2 = find_root(par, l);
                    if (r1 != r2) {
                        if (r1 < r2) par[r2] = r1; else par[r1] = r2;
                    }
                    best = find_root(par, best);
                }
            }
            if (!best) { best = ++nprov; par[best] = best; }
            lab[p] = best;
        }
    /* final labels 1..n in the order of the roots (the smallest provisional label of a component
     * is that of its first pixel in raster order) */
    int *final = calloc((size_t)nprov + 1, sizeof *final);
    if (!final) { free(lab); free(par); return -1; }
    int n = 0;
    for (int l = 1; l <= nprov; l++) {
        int r = find_root(par, l);
        if (r == l) final[l] = ++n;
    }
    for (int l = 1; l <= nprov; l++) final[l] = final[find_root(par, l)];
    int64_t *size = calloc((size_t)n + 1, sizeof *size);
    uint8_t *fill = calloc((size_t)n + 1, 1);
    if (!size || !fill) { free(lab); free(par); free(final); free(size); free(fill); return -1; }
    for (size_t p = 0; p < hw; p++) {
        lab[p] = final[lab[p]];
        size[lab[p]]++;
    }
    int n_small = 0;
    for (int l = 1; l <= n; l++)
        if ((double)size[l] < area_thresh) n_small++;
    int changed = 0;
    if (n_small > 0) {
        changed = 1;
        if (!islands) {
            fill[0] = 1;
            for (int l = 1; l <= n; l++) fill[l] = (double)size[l] < area_thresh;
        } else {
            int any = 0;
            for (int l = 1; l <= n; l++) {
                fill[l] = !((double)size[l] < area_thresh);
                any |= fill[l];
            }
            if (!any) {   /* every region is small: keep the largest (first of equal sizes) */
                int best = 1;
                for (int l = 2; l <= n; l++) if (size[l] > size[best]) best = l;
                fill[best] = 1;
            }
        }
        for (size_t p = 0; p < hw; p++) mask[p] = fill[lab[p]];
    }
    free(lab); free(par); free(final); free(size); free(fill);
    return changed;
}

// ---------------------------------------------------------------------------------------------
// the selection stage

typedef struct {
    uint32_t *counts;
    size_t n_counts;
    int box[4];            /* XYXY, inclusive */
    float iou, stab;
    double pt[2];
} amg_rec;

struct cs_amg_sel {
    cs_amg_params p;
    int h, w;
    amg_rec *rec;
    int n, cap;
};

carseg_status cs_amg_sel_new(const cs_amg_params *p, int h, int w, cs_amg_sel **out) {
    *out = NULL;
    TRY(cs_amg_params_check(p));
    if (h < 1 || w < 1 || (int64_t)h * w > ((int64_t)1 << 31) - 1)
        return set_err(CARSEG_EINVAL, "sam generator: image size %dx%d not supported", w, h);
    cs_amg_sel *s = calloc(1, sizeof *s);
    if (!s) return set_err(CARSEG_ENOMEM, "sam generator: out of memory");
    s->p = *p;
    s->h = h;
    s->w = w;
    *out = s;
    return CARSEG_OK;
}

void cs_amg_sel_free(cs_amg_sel *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) free(s->rec[i].counts);
    free(s->rec);
    free(s);
}

/* isclose(a, b, atol, rtol=0) in float32 as torch.isclose */
static int isclose_f(float a, float b, float atol) {
    if (a == b) return 1;
    if (isnan(a) || isnan(b)) return 0;
    return fabsf(a - b) <= atol;
}

static void mask_to_box(const uint8_t *m, int h, int w, int box[4]) {
    int x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (int y = 0; y < h; y++) {
        const uint8_t *r = m + (size_t)y * w;
        int rx0 = -1, rx1 = -1;
        for (int x = 0; x < w; x++)
            if (r[x]) { if (rx0 < 0) rx0 = x; rx1 = x; }
        if (rx0 < 0) continue;
        if (y0 == h) y0 = y;
        y1 = y;
        if (rx0 < x0) x0 = rx0;
        if (rx1 > x1) x1 = rx1;
    }
    if (x1 < x0 || y1 < y0) { box[0] = box[1] = box[2] = box[3] = 0; return; }
    box[0] = x0; box[1] = y0; box[2] = x1; box[3] = y1;
}

carseg_status cs_amg_sel_add(cs_amg_sel *s, const float *logits, const float *iou,
                             const double *points, int n_points, int n_masks) {
    if (!s || n_points < 0 || n_masks < 1 || (n_points && (!logits || !iou || !points)))
        return set_err(CARSEG_EINVAL, "sam generator: bad batch arguments");
    int h = s->h, w = s->w;
    size_t hw = (size_t)h * w;
    int nm = n_points * n_masks;
    const float t_iou = (float)s->p.pred_iou_thresh;
    const float t_hi = (float)(s->p.mask_threshold + s->p.stability_score_offset);
    const float t_lo = (float)(s->p.mask_threshold - s->p.stability_score_offset);
    const float t_m = (float)s->p.mask_threshold;
    const float t_stab = (float)s->p.stability_score_thresh;
    amg_rec *out = calloc((size_t)(nm ? nm : 1), sizeof *out);
    uint8_t *keep = calloc((size_t)(nm ? nm : 1), 1);
    if (!out || !keep) { free(out); free(keep); return set_err(CARSEG_ENOMEM, "sam generator: out of memory"); }
    int oom = 0;
    #pragma omp parallel
    {
        uint8_t *m = malloc(hw);
        uint32_t *counts = malloc((hw + 1) * sizeof *counts);
        if (!m || !counts) {
            #pragma omp atomic write
            oom = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int k = 0; k < nm; k++) {
            if (!m || !counts) continue;
            float pi = iou[k];
            if (s->p.pred_iou_thresh > 0.0 && !(pi > t_iou)) continue;
            const float *lg = logits + (size_t)k * hw;
            int64_t ni = 0, nu = 0;
            for (size_t q = 0; q < hw; q++) {
                ni += lg[q] > t_hi;
                nu += lg[q] > t_lo;
            }
            float stab = (float)ni / (float)nu;
            if (s->p.stability_score_thresh > 0.0 && !(stab >= t_stab)) continue;
            for (size_t q = 0; q < hw; q++) m[q] = lg[q] > t_m;
            amg_rec *r = &out[k];
            mask_to_box(m, h, w, r->box);
            /* is_box_near_crop_edge(box, crop, orig, atol 20): with crop_n_layers = 0 the crop
             * is the whole image, so a box near the crop's edge is near the image's: never true */
            const float crop[4] = {0, 0, (float)w, (float)h}, orig[4] = {0, 0, (float)w, (float)h};
            int near = 0;
            for (int c = 0; c < 4; c++) {
                float bv = (float)r->box[c] + crop[c & 1];   /* uncrop_boxes_xyxy */
                near |= isclose_f(bv, crop[c], 20.0f) && !isclose_f(bv, orig[c], 20.0f);
            }
            if (near) continue;
            size_t nc = cs_rle_counts(m, h, w, counts);
            r->counts = malloc(nc * sizeof *r->counts);
            if (!r->counts) {
                #pragma omp atomic write
                oom = 1;
                continue;
            }
            memcpy(r->counts, counts, nc * sizeof *counts);
            r->n_counts = nc;
            r->iou = pi;
            r->stab = stab;
            r->pt[0] = points[2 * (k / n_masks)];
            r->pt[1] = points[2 * (k / n_masks) + 1];
            keep[k] = 1;
        }
        free(m);
        free(counts);
    }
    int nk = 0;
    for (int k = 0; k < nm; k++) nk += keep[k];
    if (!oom && s->n + nk > s->cap) {
        int cap = s->cap ? s->cap : 256;
        while (cap < s->n + nk) cap *= 2;
        amg_rec *r = realloc(s->rec, (size_t)cap * sizeof *r);
        if (!r) oom = 1;
        else { s->rec = r; s->cap = cap; }
    }
    if (oom) {
        for (int k = 0; k < nm; k++) free(out[k].counts);
        free(out); free(keep);
        return set_err(CARSEG_ENOMEM, "sam generator: out of memory");
    }
    for (int k = 0; k < nm; k++)
        if (keep[k]) s->rec[s->n++] = out[k];
    free(out);
    free(keep);
    return CARSEG_OK;
}

/* keeps s->rec[keep[0..nk)] in that order */
static void sel_filter(cs_amg_sel *s, const int *keep, int nk, amg_rec *tmp) {
    uint8_t *used = calloc((size_t)(s->n ? s->n : 1), 1);
    for (int i = 0; i < nk; i++) { tmp[i] = s->rec[keep[i]]; if (used) used[keep[i]] = 1; }
    for (int i = 0; i < s->n; i++)
        if (!used || !used[i]) free(s->rec[i].counts);
    memcpy(s->rec, tmp, (size_t)nk * sizeof *tmp);
    s->n = nk;
    free(used);
}

static carseg_status sel_nms(cs_amg_sel *s, const float *scores, double thr) {
    int n = s->n;
    if (n == 0) return CARSEG_OK;
    float *boxes = malloc((size_t)n * 4 * sizeof *boxes);
    int *keep = malloc((size_t)n * sizeof *keep);
    amg_rec *tmp = malloc((size_t)n * sizeof *tmp);
    if (!boxes || !keep || !tmp) {
        free(boxes); free(keep); free(tmp);
        return set_err(CARSEG_ENOMEM, "sam generator: out of memory");
    }
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 4; c++) boxes[4 * i + c] = (float)s->rec[i].box[c];
    int nk = cs_amg_batched_nms(boxes, scores, n, thr, keep);
    if (nk < 0) {
        free(boxes); free(keep); free(tmp);
        return set_err(CARSEG_ENOMEM, "sam generator: out of memory");
    }
    sel_filter(s, keep, nk, tmp);
    free(boxes); free(keep); free(tmp);
    return CARSEG_OK;
}

static carseg_status sel_small_regions(cs_amg_sel *s) {
    int n = s->n, h = s->h, w = s->w;
    if (n == 0) return CARSEG_OK;
    size_t hw = (size_t)h * w;
    double thr = s->p.box_nms_thresh > 0.7 ? s->p.box_nms_thresh : 0.7;   /* crop_nms_thresh */
    double area = (double)s->p.min_mask_region_area;
    float *scores = malloc((size_t)n * sizeof *scores);
    float *boxes = malloc((size_t)n * 4 * sizeof *boxes);
    int *nbox = malloc((size_t)n * 4 * sizeof *nbox);
    uint32_t **ncounts = calloc((size_t)n, sizeof *ncounts);   /* new RLEs of changed masks */
    size_t *nnc = calloc((size_t)n, sizeof *nnc);
    int *keep = malloc((size_t)n * sizeof *keep);
    amg_rec *tmp = malloc((size_t)n * sizeof *tmp);
    uint8_t *m = malloc(hw);
    uint32_t *counts = malloc((hw + 1) * sizeof *counts);
    carseg_status st = CARSEG_OK;
    if (!scores || !boxes || !nbox || !ncounts || !nnc || !keep || !tmp || !m || !counts) goto oom;
    for (int i = 0; i < n; i++) {
        amg_rec *r = &s->rec[i];
        cs_rle_to_mask(r->counts, r->n_counts, h, w, m);
        int c1 = cs_amg_remove_small_regions(m, h, w, area, 0);
        int c2 = c1 < 0 ? -1 : cs_amg_remove_small_regions(m, h, w, area, 1);
        if (c1 < 0 || c2 < 0) goto oom;
        scores[i] = (c1 || c2) ? 0.0f : 1.0f;
        memcpy(nbox + 4 * i, r->box, sizeof r->box);
        if (c1 || c2) {
            mask_to_box(m, h, w, nbox + 4 * i);
            size_t nc = cs_rle_counts(m, h, w, counts);
            if (!(ncounts[i] = malloc(nc * sizeof *counts))) goto oom;
            memcpy(ncounts[i], counts, nc * sizeof *counts);
            nnc[i] = nc;
        }
        for (int c = 0; c < 4; c++) boxes[4 * i + c] = (float)nbox[4 * i + c];
    }
    int nk = cs_amg_batched_nms(boxes, scores, n, thr, keep);
    if (nk < 0) goto oom;
    for (int i = 0; i < nk; i++) {   /* survivors that changed take the new RLE and box */
        int k = keep[i];
        if (scores[k] == 0.0f) {
            free(s->rec[k].counts);
            s->rec[k].counts = ncounts[k];
            s->rec[k].n_counts = nnc[k];
            ncounts[k] = NULL;
            memcpy(s->rec[k].box, nbox + 4 * k, sizeof s->rec[k].box);
        }
    }
    sel_filter(s, keep, nk, tmp);
    goto done;
oom:
    st = set_err(CARSEG_ENOMEM, "sam generator: out of memory");
done:
    if (ncounts)
        for (int i = 0; i < n; i++) free(ncounts[i]);
    free(scores); free(boxes); free(nbox); free(ncounts); free(nnc); free(keep); free(tmp);
    free(m); free(counts);
    return st;
}

carseg_status cs_amg_sel_finish(cs_amg_sel *s, cs_amg_result *out) {
    memset(out, 0, sizeof *out);
    if (!s) return set_err(CARSEG_EINVAL, "sam generator: no selection state");
    if (s->n > 0) {
        float *scores = malloc((size_t)s->n * sizeof *scores);
        if (!scores) return set_err(CARSEG_ENOMEM, "sam generator: out of memory");
        for (int i = 0; i < s->n; i++) scores[i] = s->rec[i].iou;
        carseg_status st = sel_nms(s, scores, s->p.box_nms_thresh);
        free(scores);
        TRY(st);
    }
    if (s->p.min_mask_region_area > 0) TRY(sel_small_regions(s));
    out->h = s->h;
    out->w = s->w;
    out->n = s->n;
    out->masks = calloc((size_t)(s->n ? s->n : 1), sizeof *out->masks);
    if (!out->masks) return set_err(CARSEG_ENOMEM, "sam generator: out of memory");
    for (int i = 0; i < s->n; i++) {
        amg_rec *r = &s->rec[i];
        cs_amg_mask *o = &out->masks[i];
        o->counts = r->counts;
        o->n_counts = r->n_counts;
        r->counts = NULL;
        o->bbox[0] = r->box[0];
        o->bbox[1] = r->box[1];
        o->bbox[2] = r->box[2] - r->box[0];
        o->bbox[3] = r->box[3] - r->box[1];
        o->area = cs_rle_area(o->counts, o->n_counts);
        o->predicted_iou = r->iou;
        o->stability_score = r->stab;
        o->point[0] = r->pt[0];
        o->point[1] = r->pt[1];
    }
    s->n = 0;
    return CARSEG_OK;
}

carseg_status cs_amg_run(cs_amg_predict_fn predict, void *ctx, int n_masks, int h, int w,
                         const cs_amg_params *p, cs_amg_result *out) {
    memset(out, 0, sizeof *out);
    if (!predict || n_masks < 1 || n_masks > 16)
        return set_err(CARSEG_EINVAL, "sam generator: bad predictor (n_masks %d)", n_masks);
    cs_amg_sel *s;
    TRY(cs_amg_sel_new(p, h, w, &s));
    int np = p->points_per_side * p->points_per_side;
    int bs = p->points_per_batch < np ? p->points_per_batch : np;
    double *pts = cs_amg_points_for_image(p->points_per_side, w, h);
    size_t per = (size_t)h * w * n_masks;
    float *logits = NULL, *iou = NULL;
    size_t nl;
    carseg_status st = CARSEG_OK;
    if (!pts || !cs_mul_ok(&nl, per, (size_t)bs, sizeof(float)) || !(logits = cs_malloc(nl)) ||
        !(iou = malloc((size_t)bs * n_masks * sizeof *iou))) {
        st = set_err(CARSEG_ENOMEM, "sam generator: out of memory (%d points of %dx%d logits)", bs, w, h);
        goto done;
    }
    for (int b0 = 0; b0 < np; b0 += bs) {
        int n = np - b0 < bs ? np - b0 : bs;
        st = predict(ctx, pts + 2 * (size_t)b0, n, logits, iou);
        if (st != CARSEG_OK) goto done;
        st = cs_amg_sel_add(s, logits, iou, pts + 2 * (size_t)b0, n, n_masks);
        if (st != CARSEG_OK) goto done;
    }
    st = cs_amg_sel_finish(s, out);
done:
    cs_amg_sel_free(s);
    free(pts);
    cs_free(logits);
    free(iou);
    return st;
}
