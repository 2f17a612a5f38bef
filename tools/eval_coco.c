/* eval_coco.c — COCO RLE predictions for `carseg eval --predictions FILE.json` (label.h). */
#include <stdlib.h>
#include <string.h>

#include "label.h"
#include "rle.h"
#include "util.h"

typedef struct {
    int image;        /* index into imgs */
    int label;
    double score;
    const json *seg;  /* the annotation's "segmentation" (owned by the DOM) */
    int idx;          /* position in the file (ties keep file order) */
} coco_ann;

typedef struct { char *key; int img; } img_key;

struct coco_preds {
    char *path;
    json *doc;
    int n_img;
    img_key *keys;    /* 2 per image (stem, file_name without extension), sorted */
    int n_keys;
    int *first, *count;   /* per image: its annotations in anns (grouped, by score) */
    coco_ann *anns;
    int n_ann;
};

static int cmp_key(const void *a, const void *b) {
    return strcmp(((const img_key *)a)->key, ((const img_key *)b)->key);
}

static int cmp_ann(const void *a, const void *b) {
    const coco_ann *x = a, *y = b;
    if (x->image != y->image) return x->image < y->image ? -1 : 1;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

static char *drop_ext(const char *s, int drop_dirs) {
    const char *b = drop_dirs && strrchr(s, '/') ? strrchr(s, '/') + 1 : s;
    char *r = cs_strdup(b);
    if (!r) return NULL;
    char *dot = strrchr(r, '.'), *sl = strrchr(r, '/');
    if (dot && dot != r && (!sl || dot > sl + 1)) *dot = 0;
    return r;
}

void coco_preds_close(coco_preds *c) {
    if (!c) return;
    for (int k = 0; k < c->n_keys; k++) free(c->keys[k].key);
    free(c->keys);
    free(c->first), free(c->count), free(c->anns);
    json_free(c->doc);
    free(c->path);
    free(c);
}

static int whole_num(const json *v, double *out) {
    if (!v || v->type != JSON_NUM || v->num != (double)(long long)v->num) return 0;
    *out = v->num;
    return 1;
}

carseg_status coco_preds_open(const char *path, char *const *class_names, int n_class,
                              coco_preds **out) {
    *out = NULL;
    coco_preds *c = calloc(1, sizeof *c);
    if (!c) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    carseg_status st = CARSEG_OK;
    c->path = cs_strdup(path);
    c->doc = json_parse_file(path);
    if (!c->doc) { coco_preds_close(c); return CARSEG_EFORMAT; }
    const json *imgs = json_get(c->doc, "images"), *cats = json_get(c->doc, "categories"),
               *anns = json_get(c->doc, "annotations");
    if (!imgs || imgs->type != JSON_ARR || !anns || anns->type != JSON_ARR ||
        (cats && cats->type != JSON_ARR)) {
        st = set_err(CARSEG_EFORMAT, "%s: not a COCO instances file (needs \"images\" and "
                     "\"annotations\" arrays)", path);
        goto fail;
    }
    c->n_img = (int)imgs->len;
    c->keys = calloc(2 * imgs->len + 1, sizeof *c->keys);
    double *img_ids = calloc(imgs->len + 1, sizeof *img_ids);
    if (!c->keys || !img_ids) { free(img_ids); st = set_err(CARSEG_ENOMEM, "%s: out of memory", path); goto fail; }
    for (size_t j = 0; j < imgs->len; j++) {
        const json *im = imgs->kids[j], *fn = json_get(im, "file_name");
        if (!whole_num(json_get(im, "id"), &img_ids[j]) || !fn || fn->type != JSON_STR) {
            free(img_ids);
            st = set_err(CARSEG_EFORMAT, "%s: images[%zu] needs an integer id and a file_name", path, j);
            goto fail;
        }
        for (int d = 0; d < 2; d++) {
            char *k = drop_ext(fn->str, d == 0);
            if (!k) { free(img_ids); st = set_err(CARSEG_ENOMEM, "out of memory"); goto fail; }
            c->keys[c->n_keys++] = (img_key){k, (int)j};
        }
    }
    qsort(c->keys, (size_t)c->n_keys, sizeof *c->keys, cmp_key);
    /* categories: by name when the dataset has that class, else id = label */
    size_t nc = cats ? cats->len : 0;
    double *cat_ids = calloc(nc + 1, sizeof *cat_ids);
    int *cat_lab = calloc(nc + 1, sizeof *cat_lab);
    if (!cat_ids || !cat_lab) { free(img_ids), free(cat_ids), free(cat_lab); st = set_err(CARSEG_ENOMEM, "out of memory"); goto fail; }
    for (size_t q = 0; q < nc; q++) {
        const json *ca = cats->kids[q];
        const char *name = json_str(ca, "name", NULL);
        if (!whole_num(json_get(ca, "id"), &cat_ids[q])) {
            free(img_ids), free(cat_ids), free(cat_lab);
            st = set_err(CARSEG_EFORMAT, "%s: categories[%zu] needs an integer id", path, q);
            goto fail;
        }
        cat_lab[q] = (int)cat_ids[q];
        for (int k = 0; name && k < n_class; k++)
            if (class_names && class_names[k] && !strcmp(class_names[k], name)) { cat_lab[q] = k; break; }
    }
    c->anns = calloc(anns->len + 1, sizeof *c->anns);
    c->first = calloc((size_t)c->n_img + 1, sizeof(int));
    c->count = calloc((size_t)c->n_img + 1, sizeof(int));
    if (!c->anns || !c->first || !c->count) { free(img_ids), free(cat_ids), free(cat_lab); st = set_err(CARSEG_ENOMEM, "out of memory"); goto fail; }
    for (size_t a = 0; a < anns->len && !st; a++) {
        const json *an = anns->kids[a];
        double iid, cid;
        const json *seg = json_get(an, "segmentation");
        if (!whole_num(json_get(an, "image_id"), &iid) || !whole_num(json_get(an, "category_id"), &cid)) {
            st = set_err(CARSEG_EFORMAT, "%s: annotations[%zu] needs integer image_id and category_id", path, a);
            break;
        }
        if (!seg || seg->type != JSON_OBJ || !json_get(seg, "counts")) {
            st = set_err(CARSEG_EFORMAT, "%s: annotations[%zu]: the segmentation is not RLE "
                         "({\"size\", \"counts\"}); polygons are not read", path, a);
            break;
        }
        int im = -1;
        for (int j = 0; j < c->n_img && im < 0; j++) if (img_ids[j] == iid) im = j;
        if (im < 0) { st = set_err(CARSEG_EFORMAT, "%s: annotations[%zu]: no image with id %.0f", path, a, iid); break; }
        int lab = (int)cid;
        for (size_t q = 0; q < nc; q++) if (cat_ids[q] == cid) { lab = cat_lab[q]; break; }
        if (lab < 0 || lab > 65535) { st = set_err(CARSEG_EFORMAT, "%s: annotations[%zu]: label %d out of range", path, a, lab); break; }
        c->anns[c->n_ann++] = (coco_ann){im, lab, json_num(an, "score", 1), seg, (int)a};
    }
    free(img_ids), free(cat_ids), free(cat_lab);
    if (st) goto fail;
    qsort(c->anns, (size_t)c->n_ann, sizeof *c->anns, cmp_ann);
    for (int a = c->n_ann - 1; a >= 0; a--) c->first[c->anns[a].image] = a, c->count[c->anns[a].image]++;
    *out = c;
    return CARSEG_OK;
fail:
    coco_preds_close(c);
    return st;
}

/* counts of an RLE segmentation: compressed string or uncompressed list; checks size */
static carseg_status seg_counts(const coco_preds *c, const json *seg, int w, int h, uint32_t **cnts,
                                size_t *n) {
    const json *size = json_get(seg, "size"), *counts = json_get(seg, "counts");
    double sh, sw;
    if (!size || size->type != JSON_ARR || size->len != 2 || !whole_num(size->kids[0], &sh) ||
        !whole_num(size->kids[1], &sw))
        return set_err(CARSEG_EFORMAT, "%s: an RLE without a [h, w] size", c->path);
    if (sh != h || sw != w)
        return set_err(CARSEG_EFORMAT, "%s: an RLE of %.0fx%.0f (h x w) for an image of %dx%d", c->path,
                       sh, sw, h, w);
    uint64_t hw = (uint64_t)h * (uint64_t)w;
    if (counts->type == JSON_STR) {
        if (cs_rle_parse(counts->str, hw, cnts, n) != 0)
            return set_err(CARSEG_EFORMAT, "%s: malformed RLE counts \"%.40s\"", c->path, counts->str);
        return CARSEG_OK;
    }
    if (counts->type != JSON_ARR) return set_err(CARSEG_EFORMAT, "%s: RLE counts neither string nor list", c->path);
    *cnts = malloc((counts->len ? counts->len : 1) * sizeof **cnts);
    if (!*cnts) return set_err(CARSEG_ENOMEM, "out of memory");
    uint64_t sum = 0;
    for (size_t k = 0; k < counts->len; k++) {
        double v;
        if (!whole_num(counts->kids[k], &v) || v < 0 || v > 4294967295.0 || (sum += (uint64_t)v) > hw) {
            free(*cnts);
            *cnts = NULL;
            return set_err(CARSEG_EFORMAT, "%s: bad RLE count list", c->path);
        }
        (*cnts)[k] = (uint32_t)v;
    }
    *n = counts->len;
    return CARSEG_OK;
}

carseg_status coco_preds_labels(const coco_preds *c, const char *id, int refer, int w, int h,
                                uint16_t *out) {
    img_key key = {(char *)id, 0};
    const img_key *e = bsearch(&key, c->keys, (size_t)c->n_keys, sizeof *c->keys, cmp_key);
    if (!e) return set_err(CARSEG_EIO, "%s: no image for sample %s", c->path, id);
    int im = e->img;
    size_t hw = (size_t)w * h;
    uint8_t *m = malloc(hw ? hw : 1);
    if (!m) return set_err(CARSEG_ENOMEM, "out of memory");
    carseg_status st = CARSEG_OK;
    for (int a = c->first[im]; a < c->first[im] + c->count[im] && !st; a++) {
        uint32_t *cnts = NULL;
        size_t n = 0;
        st = seg_counts(c, c->anns[a].seg, w, h, &cnts, &n);
        if (!st && cs_rle_to_mask(cnts, n, h, w, m) != 0)
            st = set_err(CARSEG_EFORMAT, "%s: the RLE of sample %s does not cover %dx%d", c->path, id, w, h);
        free(cnts);
        uint16_t v = refer ? 1 : (uint16_t)c->anns[a].label;
        for (size_t i = 0; !st && i < hw; i++) if (m[i]) out[i] = v;
    }
    free(m);
    return st;
}
