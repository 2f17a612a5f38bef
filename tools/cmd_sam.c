/* cmd_sam.c — `carseg sam`: SAM / HQ-SAM on its own, through the public API's SAM section.
 *   prompt mode: one prompt per --point and per --box, in the order given (SamPredictor.predict:
 *                multimask unless --single); --logits writes the image-size logits as .npy
 *   --auto:      the automatic mask generator (SamAutomaticMaskGenerator, crop_n_layers 0)
 * Both write DIR/NAME.sam.json and DIR/NAME.sam.png (tools/sam_out.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carseg.h"
#include "cli.h"
#include "rle.h"
#include "sam_out.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: carseg sam IMAGE --model M [--point x,y[,label]]... [--box x0,y0,x1,y1]...\n"
            "                  [--single] [--hq-only] [--logits FILE.npy] --out DIR\n"
            "       carseg sam IMAGE --model M --auto [--points-per-side N] [--points-per-batch N]\n"
            "                  [--pred-iou T] [--stability T] [--nms T] [--min-region A] --out DIR\n\n"
            "SAM / HQ-SAM (segment_anything of SysCV/sam-hq, exact). Writes DIR/NAME.sam.json (one\n"
            "record per mask: segmentation as COCO compressed RLE, bbox XYWH, area, predicted_iou,\n"
            "stability_score where defined, point_coords) and DIR/NAME.sam.png (the masks coloured).\n\n"
            "  --model M          a SAM or HQ-SAM checkpoint (.pth as released, or .safetensors), or a\n"
            "                     known name: sam_hq_vit_b, sam_hq_vit_l, sam_hq_vit_h (model cache)\n"
            "  --point x,y[,l]    a point prompt in image pixels (label 1 foreground, 0 background)\n"
            "  --box x0,y0,x1,y1  a box prompt in image pixels\n"
            "  --single           one mask per prompt (multimask_output=False); SAM gives 3 otherwise\n"
            "  --hq-only          HQ-SAM: the HQ token's mask alone (hq_token_only=True)\n"
            "  --logits FILE.npy  the prompts' logits at the image size, float32 (n, k, H, W)\n"
            "  --auto             the automatic mask generator over a grid of points; settings\n"
            "                     default to CaR's: --points-per-side 64, --points-per-batch 64,\n"
            "                     --pred-iou 0.88, --stability 0.95, --nms 0.7, --min-region 0\n"
            "                     (upstream's own default is 32 points per side)\n"
            "  --out DIR          output folder (created)\n"
            "Prompt-mode records: bbox is the mask's tight box (COCO's toBbox: w, h in pixels);\n"
            "generator records: upstream's (w = x1 - x0).\n");
}

static int parse_floats(const char *opt, const char *v, float *out, int min, int max) {
    int n = 0;
    const char *p = v;
    while (*p && n < max) {
        char *end;
        double d = strtod(p, &end);
        if (end == p || !isfinite(d)) break;
        out[n++] = (float)d;
        p = end;
        if (*p == ',') p++;
        else break;
    }
    if (*p || n < min) {
        fprintf(stderr, "carseg: error: %s expects %d%s comma-separated numbers, got '%s'\n", opt,
                min, max > min ? " or more" : "", v);
        exit(2);
    }
    return n;
}

static const char *stem_of(const char *path, char *buf, size_t n) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(buf, n, "%s", b);
    char *dot = strrchr(buf, '.');
    if (dot && dot != buf) *dot = 0;
    return buf;
}

typedef struct {
    float pts[2];
    int label;
    float box[4];
    int is_box;
} prompt_arg;

/* appends the prompt of one --point / --box value; 0, or the exit status of the error */
static int add_prompt(prompt_arg **pa, int *np, const char *v, int is_box) {
    prompt_arg *q = realloc(*pa, sizeof *q * (size_t)(*np + 1));
    if (!q) return cli_fail("out of memory");
    *pa = q;
    prompt_arg *a = &q[(*np)++];
    memset(a, 0, sizeof *a);
    a->is_box = is_box;
    if (is_box) {
        parse_floats("--box", v, a->box, 4, 4);
        if (!(a->box[2] >= a->box[0] && a->box[3] >= a->box[1]))
            return cli_fail("--box %s: expected x0,y0,x1,y1 with x1 >= x0 and y1 >= y0", v);
        return 0;
    }
    float t[3] = {0, 0, 1};
    int n = parse_floats("--point", v, t, 2, 3);
    if (n == 3 && t[2] != 0 && t[2] != 1)
        return cli_fail("--point %s: the label must be 1 (foreground) or 0 (background)", v);
    a->pts[0] = t[0], a->pts[1] = t[1], a->label = n == 3 ? (int)t[2] : 1;
    return 0;
}

static int cmd_sam(int argc, char **argv) {
    const char *image = NULL, *model = NULL, *out = NULL, *logits_path = NULL, *v;
    int single = 0, hq_only = 0, autogen = 0;
    carseg_sam_amg_params ap;
    carseg_sam_amg_init(&ap);
    prompt_arg *pa = NULL;
    int np = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) {
            usage(stdout);
            free(pa);
            return 0;
        } else if ((v = cli_opt(argc, argv, &i, "--model"))) model = v;
        else if ((v = cli_opt(argc, argv, &i, "--out"))) out = v;
        else if ((v = cli_opt(argc, argv, &i, "--logits"))) logits_path = v;
        else if ((v = cli_opt(argc, argv, &i, "--point")) || (v = cli_opt(argc, argv, &i, "--box"))) {
            /* cli_opt matched one of the two: the option is argv[i] ("--box=...") or the one before */
            int is_box = !strncmp(strchr(argv[i], '=') ? argv[i] : argv[i - 1], "--box", 5);
            int rc = add_prompt(&pa, &np, v, is_box);
            if (rc) {
                free(pa);
                return rc;
            }
        } else if (cli_flag(argv, i, "--single")) single = 1;
        else if (cli_flag(argv, i, "--hq-only")) hq_only = 1;
        else if (cli_flag(argv, i, "--auto")) autogen = 1;
        else if ((v = cli_opt(argc, argv, &i, "--points-per-side"))) ap.points_per_side = (int)cli_num("--points-per-side", v);
        else if ((v = cli_opt(argc, argv, &i, "--points-per-batch"))) ap.points_per_batch = (int)cli_num("--points-per-batch", v);
        else if ((v = cli_opt(argc, argv, &i, "--pred-iou"))) ap.pred_iou_thresh = cli_num("--pred-iou", v);
        else if ((v = cli_opt(argc, argv, &i, "--stability"))) ap.stability_score_thresh = cli_num("--stability", v);
        else if ((v = cli_opt(argc, argv, &i, "--nms"))) ap.box_nms_thresh = cli_num("--nms", v);
        else if ((v = cli_opt(argc, argv, &i, "--min-region"))) ap.min_mask_region_area = (int)cli_num("--min-region", v);
        else if (argv[i][0] == '-' && argv[i][1]) {
            free(pa);
            fprintf(stderr, "carseg: error: unknown option %s (carseg sam --help)\n", argv[i]);
            return 2;
        } else if (!image) image = argv[i];
        else {
            free(pa);
            fprintf(stderr, "carseg: error: one IMAGE only (got '%s' too)\n", argv[i]);
            return 2;
        }
    }
    if (!image || !model || !out) {
        free(pa);
        usage(stderr);
        return 2;
    }
    if (autogen && (np || single || hq_only || logits_path)) {
        free(pa);
        return cli_fail("--auto takes no --point, --box, --single, --hq-only or --logits");
    }
    if (!autogen && np == 0) {
        free(pa);
        return cli_fail("give prompts (--point, --box) or --auto");
    }
    carseg_sam *m = NULL;
    carseg_sam_image *im = NULL;
    carseg_sam_records *recs = NULL;
    uint8_t *rgb = NULL, *mask = NULL;
    float *iou = NULL, *lg = NULL;
    uint32_t *counts = NULL, **own = NULL;   /* prompt mode: a scratch run buffer, each record's runs */
    sam_out_rec *ro = NULL;
    double *ptd = NULL;
    int w = 0, h = 0, rc = 1, nrec = 0;
    char stem[512];
    carseg_status st = carseg_image_load(image, &rgb, &w, &h);
    if (st == CARSEG_OK) st = carseg_sam_load(model, &m);
    if (st == CARSEG_OK) st = carseg_sam_set_image(m, rgb, w, h, &im);
    if (st != CARSEG_OK) goto fail;
    if (autogen) {
        st = carseg_sam_generate(m, im, &ap, &recs);
        if (st != CARSEG_OK) goto fail;
        nrec = carseg_sam_records_count(recs);
        ro = calloc((size_t)nrec + 1, sizeof *ro);
        ptd = calloc((size_t)nrec * 2 + 2, sizeof *ptd);
        if (!ro || !ptd) { st = set_err(CARSEG_ENOMEM, "out of memory"); goto fail; }
        for (int k = 0; k < nrec; k++) {
            int bb[4];
            uint64_t area;
            float piou, stab;
            carseg_sam_record(recs, k, &ro[k].counts, &ro[k].n_counts, bb, &area, &piou, &stab,
                              ptd + 2 * k);
            for (int j = 0; j < 4; j++) ro[k].bbox[j] = bb[j];
            ro[k].predicted_iou = piou, ro[k].stability_score = stab;
            ro[k].points = ptd + 2 * k, ro[k].n_points = 1, ro[k].has_crop_box = 1;
        }
    } else {
        int k = carseg_sam_masks_per_prompt(m, !single);
        size_t hw = (size_t)w * h;
        carseg_sam_prompt *pr = calloc((size_t)np, sizeof *pr);
        iou = calloc((size_t)np * k, sizeof *iou);
        lg = malloc(sizeof *lg * (size_t)np * k * hw);
        mask = malloc(hw);
        counts = malloc(sizeof *counts * (hw + 1));
        own = calloc((size_t)np * k, sizeof *own);
        ro = calloc((size_t)np * k, sizeof *ro);
        ptd = calloc((size_t)np * 2, sizeof *ptd);
        if (!pr || !iou || !lg || !mask || !counts || !own || !ro || !ptd) {
            free(pr);
            st = set_err(CARSEG_ENOMEM, "out of memory");
            goto fail;
        }
        for (int i = 0; i < np; i++) {
            if (pa[i].is_box) pr[i] = (carseg_sam_prompt){0, NULL, NULL, pa[i].box};
            else pr[i] = (carseg_sam_prompt){1, pa[i].pts, &pa[i].label, NULL};
        }
        st = carseg_sam_predict(m, im, pr, np, !single, hq_only, iou, lg);
        free(pr);
        if (st != CARSEG_OK) goto fail;
        for (int i = 0; i < np; i++)
            for (int j = 0; j < k; j++) {
                const float *l = lg + ((size_t)i * k + j) * hw;
                for (size_t t = 0; t < hw; t++) mask[t] = l[t] > 0.0f;
                size_t nc = cs_rle_counts(mask, h, w, counts);
                uint32_t *cp = own[nrec] = malloc(sizeof *cp * nc);
                if (!cp) { st = set_err(CARSEG_ENOMEM, "out of memory"); goto fail; }
                memcpy(cp, counts, sizeof *cp * nc);
                sam_out_rec *r = &ro[nrec++];
                r->counts = cp, r->n_counts = nc;
                cs_rle_bbox(cp, nc, h, r->bbox);
                r->predicted_iou = iou[(size_t)i * k + j];
                r->stability_score = NAN;
                if (!pa[i].is_box) {
                    ptd[2 * i] = pa[i].pts[0], ptd[2 * i + 1] = pa[i].pts[1];
                    r->points = ptd + 2 * i, r->n_points = 1;
                }
            }
        if (logits_path) {
            int64_t shape[4] = {np, k, h, w};
            st = npy_write(logits_path, NPY_F32, lg, 4, shape);
            if (st != CARSEG_OK) goto fail;
        }
    }
    st = sam_write_outputs(out, stem_of(image, stem, sizeof stem), rgb, w, h, ro, nrec);
    if (st != CARSEG_OK) goto fail;
    printf("%s/%s.sam.json\n%s/%s.sam.png\n", out, stem, out, stem);
    fprintf(stderr, "carseg: %d mask%s\n", nrec, nrec == 1 ? "" : "s");
    rc = 0;
    goto done;
fail:
    rc = cli_fail_status(st);
done:
    for (int k = 0; own && k < nrec; k++) free(own[k]);
    free(pa), free(iou), free(lg), free(mask), free(counts), free(own), free(ro), free(ptd);
    carseg_sam_records_free(recs);
    carseg_sam_image_free(im);
    carseg_sam_free(m);
    carseg_image_free(rgb);
    return rc;
}

CLI_COMMAND("sam", "SAM / HQ-SAM: masks from point and box prompts, or the automatic generator", cmd_sam)
