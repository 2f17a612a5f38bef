/* segment_sam.c — CaR + SAM for `carseg segment`: options, and the SAM masks of an image read
 * from NAME.sam.json records (every byte treated as hostile). See segment_sam.h. */
#include "segment_sam.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "carsam.h"
#include "cli.h"
#include "rle.h"
#include "util.h"

const char segment_sam_help[] =
    "  --sam MODEL          CaR + SAM: refine the CRF masks with the masks of HQ-SAM's (or SAM's)\n"
    "                       automatic mask generator, run once per image (docs/sam.md)\n"
    "  --sam-points N       the generator's points per side (default 64, CaR's)\n"
    "  --sam-pred-iou T     its predicted-IoU threshold (default 0.88)\n"
    "  --sam-stability T    its stability-score threshold (default 0.95)\n"
    "  --sam-nms T          its box NMS threshold (default 0.7)\n"
    "  --sam-masks DIR      CaR + SAM: refine the CRF masks with SAM's generator masks read from\n"
    "                       DIR/NAME.sam.json (carseg sam --auto, or segment_anything's records)\n"
    "  --sam-iom T          CaR + SAM phi_iom (default 0.7, the paper's; VOC config 0.6)\n"
    "  --sam-min-pred T     CaR + SAM min-pred threshold (default 0.05)\n"
    "  --sam-iou T          CaR + SAM phi_iou (default 0.7, the paper's; reference code 0.9)\n";

void segment_sam_init(segment_sam_opts *o) {
    memset(o, 0, sizeof *o);
    cs_carsam_params_init(&o->cp);
    carseg_sam_amg_init(&o->amg);
}

void segment_sam_close(segment_sam_opts *o) {
    carseg_sam_free(o->model);
    o->model = NULL;
}

int segment_sam_opt(segment_sam_opts *o, int argc, char **argv, int *i) {
    const char *v;
    if ((v = cli_opt(argc, argv, i, "--sam-masks"))) { o->masks_dir = v; o->on = 1; }
    else if ((v = cli_opt(argc, argv, i, "--sam"))) { o->model_path = v; o->on = 1; }
    else if ((v = cli_opt(argc, argv, i, "--sam-points"))) o->amg.points_per_side = (int)cli_num("--sam-points", v);
    else if ((v = cli_opt(argc, argv, i, "--sam-pred-iou"))) o->amg.pred_iou_thresh = cli_num("--sam-pred-iou", v);
    else if ((v = cli_opt(argc, argv, i, "--sam-stability"))) o->amg.stability_score_thresh = cli_num("--sam-stability", v);
    else if ((v = cli_opt(argc, argv, i, "--sam-nms"))) o->amg.box_nms_thresh = cli_num("--sam-nms", v);
    else if ((v = cli_opt(argc, argv, i, "--sam-iom"))) o->cp.iom_thres = cli_num("--sam-iom", v);
    else if ((v = cli_opt(argc, argv, i, "--sam-min-pred"))) o->cp.min_pred = cli_num("--sam-min-pred", v);
    else if ((v = cli_opt(argc, argv, i, "--sam-iou"))) o->cp.iou_thres = cli_num("--sam-iou", v);
    else return 0;
    return 1;
}

carseg_status segment_sam_check(const segment_sam_opts *o) {
    const struct { const char *opt; double v; } t[] = {
        {"--sam-iom", o->cp.iom_thres}, {"--sam-min-pred", o->cp.min_pred}, {"--sam-iou", o->cp.iou_thres}};
    for (int k = 0; k < 3; k++)
        if (!(t[k].v >= 0 && t[k].v <= 1))
            return set_err(CARSEG_EINVAL, "%s %g: not in [0, 1]", t[k].opt, t[k].v);
    if (!o->on) return CARSEG_OK;
    if (o->model_path && o->masks_dir)
        return set_err(CARSEG_EINVAL, "--sam and --sam-masks: give one of them");
    if (o->amg.points_per_side < 1 || o->amg.points_per_side > 1024)
        return set_err(CARSEG_EINVAL, "--sam-points %d: not in [1, 1024]", o->amg.points_per_side);
    if (o->model_path)   /* load it now (a file or a known name): a bad checkpoint stops the run
                            before any image */
        return ((segment_sam_opts *)o)->model ? CARSEG_OK
                                              : carseg_sam_load(o->model_path, &((segment_sam_opts *)o)->model);
    struct stat sb;
    if (stat(o->masks_dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return set_err(CARSEG_EINVAL, "--sam-masks %s: not a folder", o->masks_dir);
    return CARSEG_OK;
}

void segment_sam_free(segment_sam_masks *m) {
    if (!m) return;
    for (int k = 0; m->counts && k < m->sm.n; k++) free(m->counts[k]);
    free(m->counts);
    free(m->n_counts);
    carseg_sam_records_free(m->recs);
    memset(m, 0, sizeof *m);
}

carseg_status segment_sam_read_json(const char *path, int w, int h, segment_sam_masks *out) {
    memset(out, 0, sizeof *out);
    json *j = json_parse_file(path);
    if (!j) return CARSEG_EFORMAT;   /* the error names the file, line and column */
    carseg_status st = CARSEG_OK;
    if (j->type != JSON_ARR) { st = set_err(CARSEG_EFORMAT, "%s: not a JSON array of mask records", path); goto done; }
    if (j->len > 1000000) { st = set_err(CARSEG_EFORMAT, "%s: %zu records (more than 1000000)", path, j->len); goto done; }
    size_t n = j->len;
    out->counts = calloc(n ? n : 1, sizeof *out->counts);
    out->n_counts = calloc(n ? n : 1, sizeof *out->n_counts);
    if (!out->counts || !out->n_counts) { st = set_err(CARSEG_ENOMEM, "%s: out of memory", path); goto done; }
    uint64_t hw = (uint64_t)w * h;
    for (size_t k = 0; k < n; k++) {
        const json *r = j->kids[k], *seg = json_get(r, "segmentation"), *size = json_get(seg, "size");
        const json *c = json_get(seg, "counts");
        if (!seg || seg->type != JSON_OBJ) { st = set_err(CARSEG_EFORMAT, "%s: record %zu: no \"segmentation\" object", path, k); goto done; }
        if (!size || size->type != JSON_ARR || size->len != 2 || size->kids[0]->type != JSON_NUM ||
            size->kids[1]->type != JSON_NUM) {
            st = set_err(CARSEG_EFORMAT, "%s: record %zu: segmentation \"size\" is not [height, width]", path, k);
            goto done;
        }
        if (size->kids[0]->num != h || size->kids[1]->num != w) {
            st = set_err(CARSEG_EFORMAT, "%s: record %zu: segmentation size %gx%g (height x width) is not the image's %dx%d",
                         path, k, size->kids[0]->num, size->kids[1]->num, h, w);
            goto done;
        }
        if (!c || c->type != JSON_STR || strlen(c->str) != c->len) {
            st = set_err(CARSEG_EFORMAT, "%s: record %zu: segmentation \"counts\" is not a COCO compressed RLE string", path, k);
            goto done;
        }
        uint32_t *cnt;
        size_t nc;
        if (cs_rle_parse(c->str, hw, &cnt, &nc) != 0) {
            st = set_err(CARSEG_EFORMAT, "%s: record %zu: malformed RLE counts", path, k);
            goto done;
        }
        uint64_t tot = 0;
        for (size_t q = 0; q < nc; q++) tot += cnt[q];
        out->counts[k] = cnt;
        out->n_counts[k] = nc;
        out->sm.n = (int)k + 1;
        if (tot != hw) {
            st = set_err(CARSEG_EFORMAT, "%s: record %zu: RLE covers %llu pixels, the image has %llu",
                         path, k, (unsigned long long)tot, (unsigned long long)hw);
            goto done;
        }
    }
    out->sm.h = h;
    out->sm.w = w;
    out->sm.n = (int)n;
    out->sm.counts = (const uint32_t *const *)out->counts;
    out->sm.n_counts = out->n_counts;
done:
    json_free(j);
    if (st != CARSEG_OK) segment_sam_free(out);
    return st;
}

carseg_status segment_sam_load(segment_sam_opts *o, const char *name, const uint8_t *rgb, int w,
                               int h, segment_sam_masks *out) {
    memset(out, 0, sizeof *out);
    if (!o->on) return set_err(CARSEG_EINVAL, "CaR + SAM is off");
    if (o->model_path) {
        if (!o->model) TRY(carseg_sam_load(o->model_path, &o->model));
        carseg_sam_image *im = NULL;
        carseg_status st = carseg_sam_set_image(o->model, rgb, w, h, &im);
        if (st == CARSEG_OK) st = carseg_sam_generate(o->model, im, &o->amg, &out->recs);
        if (st == CARSEG_OK) st = carseg_sam_records_masks(out->recs, &out->sm);
        carseg_sam_image_free(im);
        if (st != CARSEG_OK) segment_sam_free(out);
        return st;
    }
    size_t len = strlen(o->masks_dir) + strlen(name) + 16;
    char *path = malloc(len);
    if (!path) return set_err(CARSEG_ENOMEM, "out of memory");
    snprintf(path, len, "%s/%s.sam.json", o->masks_dir, name);
    carseg_status st = file_exists(path) ? segment_sam_read_json(path, w, h, out)
                                         : set_err(CARSEG_EIO, "%s: no SAM masks for this image (--sam-masks)", path);
    free(path);
    return st;
}
