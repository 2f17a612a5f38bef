/* cmd_segment.c — `carseg segment`: CaR semantic / referring segmentation of images.
 * Writes NAME.png (label map), NAME.overlay.png (colour overlay + legend), NAME.json per image;
 * --dump DIR adds the per-round state (round<k>.json, round<k>_cams.npy, final_masks.npy,
 * labels.png). Progress goes to stderr; stdout only names the files written.
 * Inputs may be folders and @lists; the run is resumable and writes COCO / CVAT / mask outputs:
 * that side lives in label.h (collect.c, label_run.c, outputs.c). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "carseg.h"
#include "cli.h"
#include "font5x7.h"
#include "label.h"
#include "segment_sam.h"
#include "util.h"   /* generic file helpers only: atomic writes, npy, JSON strings, mkdir_p */

static void usage(FILE *f) {
    fprintf(f,
        "usage: carseg segment INPUT... (--classes \"a,b,c\" | --classes-file F | --preset NAME |\n"
        "                                --refer \"phrase\" [--refer \"phrase\" ...]) [options]\n"
        "\n"
        "  INPUT                an image file, a folder (every .jpg/.jpeg/.png below it, sorted) or\n"
        "                       @LIST (a text file, one path per line); outputs keep each image's\n"
        "                       path below its folder: OUT/sub/x.png\n"
        "  --classes LIST       class names, comma separated; use '|' as the separator when a\n"
        "                       name itself holds commas (\"person with clothes,people,human|dog\")\n"
        "  --classes-file F     one class name per line ('#' comments, blank lines ignored)\n"
        "  --preset NAME        a dataset preset of the reference (class list and settings):\n"
        "                       ");
    int np = carseg_presets_count();
    for (int i = 0; i < np; i++) fprintf(f, "%s%s", carseg_preset_name(i), i + 1 < np ? ", " : "\n");
    fprintf(f,
        "  --refer PHRASE       referring mode: the phrases (repeatable) describe one object\n"
        "  --generator M        mask generator CLIP: a file or a known name (default ViT-B/16,\n"
        "                       fetched into the model cache on first use)\n"
        "  --classifier M       mask classifier CLIP (default ViT-L/14; ViT-B/16 for refcoco,\n"
        "                       refcoco+, refcocog and --refer without a preset)\n"
        "  --vocab F            CLIP BPE vocabulary (default: bpe_simple_vocab_16e6 from the cache)\n"
        "  --out DIR            output folder (default .); holds the journal that makes a killed\n"
        "                       run resume where it stopped (same command again)\n"
        "  --format LIST        per-image outputs: png,overlay,json (default), masks (masks/NAME/\n"
        "                       CLASS.png), cvat (cvat.zip: CVAT Segmentation Mask 1.1)\n"
        "  --coco FILE          COCO instances JSON of the whole run (compressed RLE masks)\n"
        "  --force              redo every image (a new journal)\n"
        "  --fail-fast          stop at the first image that fails (default: report it, go on,\n"
        "                       exit 1 at the end)\n"
        "  --max-pixels N       refuse images larger than N pixels (default: the decoder's limit)\n"
        "  --fsync              fsync the journal after every image (power-loss safe)\n"
        "  --dump DIR           per-round state: DIR[/NAME]/round<k>.json, round<k>_cams.npy, ...\n"
        "  --eta X              mask binarisation threshold of the visual prompt\n"
        "  --theta X            query filter threshold (keep P[i,i] > theta)\n"
        "  --lambda X           Grad-CAM box threshold\n"
        "  --prompts LIST       visual prompts: blur,gray,black,circle,rectangle,contour\n"
        "  --templates N        15 (the reference's semantic templates) or 0 (one template)\n"
        "  --bg-words LIST      background words, comma separated (default: the reference's 23)\n"
        "  --no-crf             skip the dense CRF (argmax of background and CAMs instead)\n"
        "  --fix LIST           fix reference quirks: q1 (raw names in the CAM every round), q3 (gray\n"
        "                       prompt with RGB weights), q4 (CRF colours = the RGB image), q7 (boxes\n"
        "                       include the last grid row/column), q8 (no centre crop in the\n"
        "                       classifier), q9 (zero-mask guard), q17 (duplicates)\n"
        "  --fix-quirks         all the bug fixes: q3,q4,q7,q8,q9,q17\n"
        "  --threads N          compute threads (default: all cores)\n"
        CLI_PRECISION_HELP
        "%s"
        "  --quiet              no progress on stderr (failures are still reported)\n"
        "See docs/labeling.md: labeling a folder, importing into CVAT and Label Studio.\n",
        segment_sam_help);
}

typedef struct {
    char **v;
    int n, cap;
} slist;

static int sl_push(slist *l, const char *s, size_t len) {
    if (l->n == l->cap) {
        int nc = l->cap ? l->cap * 2 : 16;
        char **nv = realloc(l->v, sizeof(char *) * (size_t)nc);
        if (!nv) return -1;
        l->v = nv, l->cap = nc;
    }
    while (len && isspace((unsigned char)*s)) s++, len--;
    while (len && isspace((unsigned char)s[len - 1])) len--;
    if (!len) return 0;
    char *c = malloc(len + 1);
    if (!c) return -1;
    memcpy(c, s, len);
    c[len] = 0;
    l->v[l->n++] = c;
    return 0;
}

static void sl_free(slist *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int sl_split(slist *l, const char *s) {
    char sep = strchr(s, '|') ? '|' : ',';
    const char *p = s;
    for (;;) {
        const char *e = strchr(p, sep);
        if (sl_push(l, p, e ? (size_t)(e - p) : strlen(p))) return -1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

static int sl_file(slist *l, const char *path) {
    uint8_t *d;
    size_t len;
    if (read_file(path, &d, &len) != CARSEG_OK) return -1;
    const char *p = (const char *)d, *end = p + len;
    while (p < end) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) e = end;
        size_t k = (size_t)(e - p);
        if (k && p[k - 1] == '\r') k--;
        const char *q = p;
        while (q < p + k && isspace((unsigned char)*q)) q++;
        if (q < p + k && *q != '#' && sl_push(l, p, k)) { free(d); return -1; }
        p = e + 1;
    }
    free(d);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// model resolution: an existing file is used as is; a known name ("ViT-B/16") comes from the
// model cache (carseg_models_resolve), downloaded on first use unless CARSEG_OFFLINE is set

static carseg_status segment_resolve_model(const char *given, const char *dflt, char *out, size_t n) {
    char *p = NULL;
    TRY(carseg_models_resolve(given ? given : dflt, &p));
    snprintf(out, n, "%s", p);
    free(p);
    return CARSEG_OK;
}

static carseg_status segment_resolve_vocab(const char *given, char *out, size_t n) {
    char *p = NULL;
    TRY(carseg_models_resolve_vocab(given, &p));
    snprintf(out, n, "%s", p);
    free(p);
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// overlay with a legend

static void put_rect(uint8_t *rgb, int w, int h, int x0, int y0, int x1, int y1, const uint8_t *c,
                     int alpha256) {
    for (int y = y0 < 0 ? 0 : y0; y < y1 && y < h; y++)
        for (int x = x0 < 0 ? 0 : x0; x < x1 && x < w; x++) {
            uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            for (int k = 0; k < 3; k++) p[k] = (uint8_t)((p[k] * (256 - alpha256) + c[k] * alpha256) >> 8);
        }
}

static void put_text(uint8_t *rgb, int w, int h, int x, int y, const char *s, const uint8_t *c,
                     int scale) {
    for (; *s; s++, x += 6 * scale) {
        int ch = (unsigned char)*s;
        if (ch < 32 || ch > 126) ch = '?';
        for (int col = 0; col < 5; col++)
            for (int row = 0; row < 7; row++)
                if (FONT5X7[ch - 32][col] >> row & 1)
                    put_rect(rgb, w, h, x + col * scale, y + row * scale, x + (col + 1) * scale,
                             y + (row + 1) * scale, c, 256);
    }
}

static carseg_status write_overlay(const char *path, const uint8_t *rgb, int w, int h,
                                   const uint16_t *lab, const char *const *names, const int *found,
                                   int nf) {
    size_t n = (size_t)w * h;
    uint8_t c[3];
    uint8_t *o = malloc(n * 3);
    if (!o) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    memcpy(o, rgb, n * 3);
    for (size_t i = 0; i < n; i++)
        if (lab[i]) {
            label_class_color(lab[i], c);
            for (int k = 0; k < 3; k++) o[3 * i + k] = (uint8_t)((o[3 * i + k] + c[k]) / 2);
        }
    int scale = w >= 640 ? 2 : 1, lh = 9 * scale, y = 2;
    static const uint8_t black[3] = {0, 0, 0}, white[3] = {255, 255, 255};
    for (int k = 0; k < nf && y + lh <= h; k++, y += lh) {
        char label[96];
        snprintf(label, sizeof label, "%.80s", names[found[k] - 1]);
        int tw = (int)strlen(label) * 6 * scale;
        put_rect(o, w, h, 0, y - 1, 2 + lh + 3 + tw + 2, y + lh - 1, black, 160);
        label_class_color(found[k], c);
        put_rect(o, w, h, 2, y, 2 + lh - 2, y + lh - 2, c, 256);
        put_text(o, w, h, 2 + lh + 2, y, label, white, scale);
    }
    carseg_status st = carseg_image_save_png(path, o, w, h);
    free(o);
    return st;
}

// ---------------------------------------------------------------------------------------------

/* NAME.json: carseg_result_json, written atomically */
static carseg_status write_json(const char *path, const carseg_result *r, const char *image) {
    char *js = NULL;
    TRY(carseg_result_json(r, image, &js));
    carseg_status st = write_file_atomic(path, js, strlen(js));
    free(js);
    return st;
}

/* the label PNG (`n_labels` = classes + 1), atomically */
static carseg_status write_labels(const char *path, const uint16_t *lab, int w, int h, int n_labels) {
    uint8_t *png = NULL;
    size_t len = 0;
    TRY(carseg_labels_encode_png(lab, w, h, n_labels, &png, &len));
    carseg_status st = write_file_atomic(path, png, len);
    free(png);
    return st;
}

/* --dump: round<k>.json and round<k>_cams.npy of every round, from the round observer */
typedef struct {
    const char *dir;
    const char *const *names;   /* the call's classes (phrases) */
    carseg_status st;           /* a failed write (the observer then stops the run) */
} dump_ctx;

static int dump_round(const carseg_round *r, void *user) {
    dump_ctx *d = user;
    const char *prefix = r->n_passes == 2 ? (r->pass ? "stuff_" : "things_") : "";
    char path[4600];
    snprintf(path, sizeof path, "%s/%sround%d.json", d->dir, prefix, r->round);
    atomic_file af;
    if ((d->st = atomic_open(&af, path)) != CARSEG_OK) return 1;
    FILE *f = af.f;
    fprintf(f, "{\n  \"round\": %d,\n  \"queries\": [", r->round);
    for (int i = 0; i < r->n_live; i++) {
        if (i) fputs(", ", f);
        json_write_str(f, d->names[r->live[i]]);
    }
    fputs("],\n  \"scores\": [", f);
    for (int i = 0; i < r->n_live; i++) fprintf(f, "%s%.9g", i ? ", " : "", r->scores[i]);
    fputs("],\n  \"kept_idx\": [", f);
    int first = 1;
    for (int i = 0; i < r->n_live; i++)
        if (r->survived[i]) fprintf(f, "%s%d", first ? "" : ", ", i), first = 0;
    fputs("],\n  \"survivors\": [", f);
    first = 1;
    for (int i = 0; i < r->n_live; i++)
        if (r->survived[i]) {
            if (!first) fputs(", ", f);
            json_write_str(f, d->names[r->live[i]]);
            first = 0;
        }
    fputs("]\n}\n", f);
    if ((d->st = atomic_commit(&af)) != CARSEG_OK) return 1;
    snprintf(path, sizeof path, "%s/%sround%d_cams.npy", d->dir, prefix, r->round);
    int64_t shape[3] = {r->n_live, r->h, r->w};
    d->st = npy_write(path, NPY_F32, r->cams, 3, shape);
    return d->st != CARSEG_OK;
}

static int cmd_segment(int argc, char **argv) {
    slist images = {0}, classes = {0}, refer = {0}, bgw = {0};
    const char *preset_name = NULL, *gen_path = NULL, *cls_path = NULL, *vocab = NULL;
    const char *out_dir = ".", *dump_dir = NULL, *prompts = NULL, *fixes = NULL, *v;
    double eta = -1, theta = -2, lambda = -1;
    int templates = -1, no_crf = 0, fix = 0, quiet = 0, threads = 0, have_classes = 0, have_bg = 0;
    int rc = 1;
    /* labeling image collections (label.h) */
    const char *formats_s = NULL, *coco_path = NULL;
    int force = 0, fail_fast = 0, fsync_each = 0;
    double max_px = 0;
    unsigned fmt = LABEL_FMT_DEFAULT;
    label_inputs in = {0};
    label_run *run = NULL;
    char *config = NULL;
    carseg_precision prec = CARSEG_PRECISION_FP32;
    carseg_car_model *model = NULL;
    carseg_segmenter *seg = NULL;
    carseg_options opt;
    carseg_options_init(&opt);
    carseg_status st;
    segment_sam_opts samo;
    segment_sam_init(&samo);
#define FAIL(...) do { rc = cli_fail(__VA_ARGS__); goto out; } while (0)
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) { usage(stdout); rc = 0; goto out; }
        else if ((v = cli_opt(argc, argv, &i, "--classes"))) { have_classes++; if (sl_split(&classes, v)) FAIL("out of memory"); }
        else if ((v = cli_opt(argc, argv, &i, "--classes-file"))) {
            have_classes++;
            if (sl_file(&classes, v)) FAIL("%s: cannot read the class list", v);
        }
        else if ((v = cli_opt(argc, argv, &i, "--preset"))) preset_name = v;
        else if ((v = cli_opt(argc, argv, &i, "--refer"))) { if (sl_push(&refer, v, strlen(v))) FAIL("out of memory"); }
        else if ((v = cli_opt(argc, argv, &i, "--generator"))) gen_path = v;
        else if ((v = cli_opt(argc, argv, &i, "--classifier"))) cls_path = v;
        else if ((v = cli_opt(argc, argv, &i, "--vocab"))) vocab = v;
        else if ((v = cli_opt(argc, argv, &i, "--out"))) out_dir = v;
        else if ((v = cli_opt(argc, argv, &i, "--dump"))) dump_dir = v;
        else if ((v = cli_opt(argc, argv, &i, "--eta"))) eta = cli_num("--eta", v);
        else if ((v = cli_opt(argc, argv, &i, "--theta"))) theta = cli_num("--theta", v);
        else if ((v = cli_opt(argc, argv, &i, "--lambda"))) lambda = cli_num("--lambda", v);
        else if ((v = cli_opt(argc, argv, &i, "--prompts"))) prompts = v;
        else if ((v = cli_opt(argc, argv, &i, "--templates"))) templates = (int)cli_num("--templates", v);
        else if ((v = cli_opt(argc, argv, &i, "--bg-words"))) { have_bg = 1; if (sl_split(&bgw, v)) FAIL("out of memory"); }
        else if ((v = cli_opt(argc, argv, &i, "--threads"))) threads = (int)cli_num("--threads", v);
        else if ((v = cli_opt(argc, argv, &i, "--precision"))) prec = cli_precision(v);
        else if (cli_flag(argv, i, "--no-crf")) no_crf = 1;
        else if (cli_flag(argv, i, "--fix-quirks")) fix = 1;
        else if ((v = cli_opt(argc, argv, &i, "--fix"))) fixes = v;
        else if (cli_flag(argv, i, "--quiet")) quiet = 1;
        else if ((v = cli_opt(argc, argv, &i, "--format"))) formats_s = v;
        else if ((v = cli_opt(argc, argv, &i, "--coco"))) coco_path = v;
        else if ((v = cli_opt(argc, argv, &i, "--max-pixels"))) max_px = cli_num("--max-pixels", v);
        else if (cli_flag(argv, i, "--force")) force = 1;
        else if (cli_flag(argv, i, "--fail-fast")) fail_fast = 1;
        else if (cli_flag(argv, i, "--fsync")) fsync_each = 1;
        else if (segment_sam_opt(&samo, argc, argv, &i)) continue;   /* CaR + SAM (segment_sam.c) */
        else if (argv[i][0] == '-' && argv[i][1]) FAIL("unknown option %s (see carseg segment --help)", argv[i]);
        else if (sl_push(&images, argv[i], strlen(argv[i]))) FAIL("out of memory");
    }
    /* ---- validate everything before loading models or writing anything ---- */
    if (images.n == 0) { usage(stderr); rc = 2; goto out; }
    if ((st = segment_sam_check(&samo)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }
    int pr_refer = preset_name ? carseg_preset_is_refer(preset_name) : 0;
    if (pr_refer < 0) FAIL("unknown preset '%s' (see carseg segment --help)", preset_name);
    if (pr_refer && refer.n == 0)
        FAIL("preset '%s' is a referring preset: give the phrases with --refer", preset_name);
    int modes = (have_classes > 0) + (preset_name && !pr_refer) + (refer.n > 0);
    if (modes != 1) FAIL("give exactly one of --classes, --classes-file, --preset, --refer");
    if (have_classes > 1) FAIL("give --classes or --classes-file once");
    if (have_classes && classes.n == 0) FAIL("the class list is empty");
    if (have_bg && bgw.n == 0) FAIL("--bg-words: empty list");
    if ((eta != -1 && (eta < 0 || eta > 1)) || (theta != -2 && (theta < -1 || theta > 1)) ||
        (lambda != -1 && (lambda < 0 || lambda > 1)))
        FAIL("--eta, --theta and --lambda must lie in [0, 1]");
    if (templates != -1 && templates != 0 && templates != 15) FAIL("--templates must be 15 or 0");
    int is_refer = refer.n > 0;
    /* ---- the run's options (carseg_options: checked here, before any model is loaded) ---- */
    opt.preset = preset_name;
    if (eta != -1) opt.eta = (float)eta;
    if (theta != -2) opt.theta = (float)theta;
    if (lambda != -1) opt.lambda = (float)lambda;
    opt.prompts = prompts;
    if (templates != -1) opt.templates = templates == 15 ? "semantic" : "single";
    opt.crf = !no_crf;
    if (fix) opt.fixes = CARSEG_FIX_BUGS;
    if (fixes) {
        unsigned fb = 0;
        if (carseg_fixes_parse(fixes, &fb) != CARSEG_OK)
            FAIL("--fix: %s", carseg_last_error() + (strncmp(carseg_last_error(), "fixes: ", 7) ? 0 : 7));
        opt.fixes |= fb;
    }
    if (have_bg) opt.bg_words = (const char *const *)bgw.v, opt.n_bg_words = bgw.n;
    if (samo.on) opt.sam = samo.cp;
    if ((st = carseg_options_check(&opt, is_refer)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }
    if (formats_s) {
        char e[160];
        if (label_formats_parse(formats_s, &fmt, e, sizeof e)) FAIL("%s", e);
    }
    if (max_px < 0) FAIL("--max-pixels must be positive");
    /* folders and @lists expanded, output names made unique (a missing path fails here) */
    if ((st = label_collect(images.v, images.n, out_dir, &in)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }
    if (in.n == 0) FAIL("no images found (folders are searched for .jpg, .jpeg, .jpe and .png files)");
    if (!(config = label_config(argc, argv))) FAIL("out of memory");
    if (threads > 0) carseg_set_threads(threads);

    /* ---- models ---- */
    const char *want_cls = preset_name ? carseg_preset_classifier(preset_name) : is_refer ? "ViT-B/16" : "ViT-L/14";
    char gbuf[4096], cbuf[4096], vbuf[4096];
    if ((st = segment_resolve_model(gen_path, "ViT-B/16", gbuf, sizeof gbuf)) != CARSEG_OK ||
        (st = segment_resolve_model(cls_path, want_cls, cbuf, sizeof cbuf)) != CARSEG_OK ||
        (st = segment_resolve_vocab(vocab, vbuf, sizeof vbuf)) != CARSEG_OK) {
        rc = cli_fail_status(st);
        goto out;
    }
    if (!quiet) fprintf(stderr, "carseg: loading %s and %s\n", gbuf, cbuf);
    /* the towers' precision (Grad-CAM's backward on the generator's last block stays float32) */
    if ((st = carseg_car_model_open(gbuf, cbuf, vbuf, &model)) != CARSEG_OK ||
        (st = carseg_car_model_set_precision(model, prec)) != CARSEG_OK ||
        (st = carseg_segmenter_new(model, &seg)) != CARSEG_OK) {
        rc = cli_fail_status(st);
        goto out;
    }
    const char *const *names = is_refer ? (const char *const *)refer.v : (const char *const *)classes.v;
    int nc = is_refer ? 1 : classes.n;
    if (preset_name && !is_refer) carseg_preset_classes(preset_name, &names, &nc);
    char refer_name[512];
    if (is_refer) {
        snprintf(refer_name, sizeof refer_name, "%s", refer.v[0]);
        static const char *rn[1];
        rn[0] = refer_name;
        names = rn;
    }

    label_opts lo = {out_dir, coco_path, fmt, force, fail_fast, quiet, fsync_each, config,
                     names, nc};
    if ((st = label_run_open(&lo, &in, &run)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }
    for (int ii = 0; ii < in.n; ii++) {
        if (label_run_is_done(run, ii)) continue;
        const char *ipath = in.v[ii].path;
        char path[4096], ddir[4096];
        uint8_t *rgb = NULL;
        int iw = 0, ih = 0;
        label_run_start(run, ii, 0, 0);
        if (max_px > 0) {   /* the cap is checked from the header, before the pixels exist */
            uint8_t *data = NULL;
            size_t len = 0;
            if ((st = read_file(ipath, &data, &len)) == CARSEG_OK &&
                (st = carseg_image_decode(data, len, (int64_t)max_px, &rgb, &iw, &ih)) != CARSEG_OK) {
                char e[512];   /* the decoder names its input "image": name the file instead */
                snprintf(e, sizeof e, "%s", carseg_last_error());
                set_err(st, "%s: %s", ipath, strncmp(e, "image: ", 7) ? e : e + 7);
            }
            free(data);
        } else {
            st = carseg_image_load(ipath, &rgb, &iw, &ih);
        }
        if (st != CARSEG_OK) {   /* a bad image: reported, the run goes on (--fail-fast: stops) */
            if (label_run_image_failed(run, ii, carseg_last_error())) break;
            continue;
        }
        label_run_start(run, ii, iw, ih);
        size_t hw = (size_t)iw * ih;
        carseg_prepared *pim = NULL;
        carseg_result *res = NULL;
        int nq = is_refer ? refer.n : nc, io_err = 0;
        dump_ctx dctx = {NULL, NULL, CARSEG_OK};
        segment_sam_masks sm = {0};
        opt.on_round = NULL, opt.on_round_user = NULL, opt.sam_masks = NULL;
        if (dump_dir) {
            if (in.n > 1) snprintf(ddir, sizeof ddir, "%s/%s", dump_dir, in.v[ii].name);
            else snprintf(ddir, sizeof ddir, "%s", dump_dir);
            if ((st = mkdir_p(ddir)) != CARSEG_OK) goto img_fail;
            dctx.dir = ddir;
            dctx.names = is_refer ? (const char *const *)refer.v : names;
            opt.on_round = dump_round, opt.on_round_user = &dctx;
        }
        if ((st = carseg_prepare(seg, rgb, iw, ih, &opt, &pim)) != CARSEG_OK) goto img_fail;
        float fscore = 0;
        if (is_refer) {
            st = carseg_refer(seg, pim, (const char *const *)refer.v, refer.n, &opt, &res);
            for (int j = 0; st == CARSEG_OK && j < refer.n; j++)
                fscore = carseg_result_score(res, j) > fscore ? carseg_result_score(res, j) : fscore;
        } else {
            if (samo.on && (st = segment_sam_load(&samo, in.v[ii].name, rgb, iw, ih, &sm)) == CARSEG_OK)
                opt.sam_masks = &sm.sm;
            if (st == CARSEG_OK)
                st = carseg_segment(seg, pim, preset_name ? NULL : names, preset_name ? 0 : nc, &opt, &res);
        }
        if (st != CARSEG_OK && dctx.st != CARSEG_OK) {   /* the dump's write failed: its error */
            st = dctx.st;
            io_err = 1;
            goto img_fail;
        }
        if (st != CARSEG_OK) { err_prefix("%s", ipath); goto img_fail; }
        const uint16_t *lab = carseg_result_labels(res);
        /* outputs: from here on an error is not the image's fault: the run stops */
        io_err = 1;
        if (fmt & LABEL_FMT_PNG) {
            if ((st = label_out_path(run, ii, ".png", path, sizeof path)) != CARSEG_OK ||
                (st = write_labels(path, lab, iw, ih, nc + 1)) != CARSEG_OK)
                goto img_fail;
            fprintf(stdout, "%s\n", path);
        }
        if (dctx.dir) {
            char lp[4200];
            snprintf(lp, sizeof lp, "%s/labels.png", dctx.dir);
            if ((st = write_labels(lp, lab, iw, ih, nc + 1)) != CARSEG_OK) goto img_fail;
        }
        if (fmt & LABEL_FMT_OVERLAY) {
            int *found = malloc(sizeof(int) * (size_t)(nc + 1)), nf = 0;
            char *present = calloc((size_t)nc + 2, 1);
            if (!found || !present) { free(found); free(present); st = set_err(CARSEG_ENOMEM, "out of memory"); goto img_fail; }
            for (size_t i = 0; i < hw; i++) if (lab[i] && lab[i] <= nc) present[lab[i]] = 1;
            for (int k = 1; k <= nc; k++) if (present[k]) found[nf++] = k;
            st = label_out_path(run, ii, ".overlay.png", path, sizeof path);
            if (st == CARSEG_OK) st = write_overlay(path, rgb, iw, ih, lab, names, found, nf);
            free(found);
            free(present);
            if (st != CARSEG_OK) goto img_fail;
            fprintf(stdout, "%s\n", path);
        }
        if (fmt & LABEL_FMT_JSON) {
            st = label_out_path(run, ii, ".json", path, sizeof path);
            if (st == CARSEG_OK) st = write_json(path, res, ipath);
            if (st != CARSEG_OK) goto img_fail;
            fprintf(stdout, "%s\n", path);
        }
        if (dctx.dir) {
            int64_t shape[3] = {nq, ih, iw};   /* uint8 0/1, one mask per class */
            snprintf(path, sizeof path, "%s/final_masks.npy", dctx.dir);
            st = npy_write(path, NPY_U8, carseg_result_mask(res, 0), 3, shape);
            if (st != CARSEG_OK) goto img_fail;
        }
        {   /* masks / CVAT per-image files, then the journal line: image ii is done */
            float rs = fscore;
            float *sc = malloc(sizeof(float) * (size_t)nq);
            if (!sc) { st = set_err(CARSEG_ENOMEM, "out of memory"); goto img_fail; }
            for (int k = 0; k < nq; k++) sc[k] = carseg_result_score(res, k);
            st = label_run_image_done(run, ii, lab, iw, ih, is_refer ? &rs : sc);
            free(sc);
            if (st != CARSEG_OK) goto img_fail;
        }
        if (label_run_plain(run))
            fprintf(stderr, "carseg:   %d rounds, %.0f ms (cam %.0f, classifier %.0f, crf %.0f)\n",
                    carseg_result_rounds(res), carseg_result_timing(res, "total"),
                    carseg_result_timing(res, "cam"), carseg_result_timing(res, "classify"),
                    carseg_result_timing(res, "crf"));
    img_fail:
        segment_sam_free(&sm);
        opt.sam_masks = NULL;
        carseg_result_free(res);
        carseg_prepared_free(pim);
        carseg_image_free(rgb);
        if (st != CARSEG_OK) {
            if (io_err || st == CARSEG_ENOMEM) { rc = cli_fail_status(st); goto out; }
            if (label_run_image_failed(run, ii, carseg_last_error())) break;
        }
    }
    rc = label_run_finish(run);
out:
    carseg_segmenter_free(seg);
    carseg_car_model_close(model);
    segment_sam_close(&samo);
    label_run_close(run);
    label_inputs_free(&in);
    free(config);
    sl_free(&images), sl_free(&classes), sl_free(&refer), sl_free(&bgw);
    return rc;
#undef FAIL
}

CLI_COMMAND("segment", "CaR segmentation of images: class list, preset or referring phrase", cmd_segment)
