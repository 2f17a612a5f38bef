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

#include "car.h"
#include "cli.h"
#include "segment_sam.h"
#include "clip.h"
#include "font5x7.h"
#include "image.h"
#include "label.h"
#include "models.h"
#include "presets.h"
#include "prompts.h"
#include "tokenizer.h"
#include "util.h"

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
    int np;
    const car_preset *ps = preset_all(&np);
    for (int i = 0; i < np; i++) fprintf(f, "%s%s", ps[i].name, i + 1 < np ? ", " : "\n");
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
// model cache (models.c), downloaded on first use unless CARSEG_OFFLINE is set

static carseg_status segment_resolve_model(const char *given, const char *dflt, char *out, size_t n) {
    char *p = NULL;
    TRY(models_resolve(given ? given : dflt, &p));
    snprintf(out, n, "%s", p);
    free(p);
    return CARSEG_OK;
}

static carseg_status segment_resolve_vocab(const char *given, char *out, size_t n) {
    char *p = NULL;
    TRY(models_resolve_vocab(given, &p));
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

static carseg_status write_overlay(const char *path, const image_u8 *im, const uint16_t *lab,
                                   const char *const *names, const int *found, int nf) {
    int w = im->w, h = im->h;
    size_t n = (size_t)w * h;
    uint8_t c[3];
    uint8_t *o = malloc(n * 3);
    if (!o) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    memcpy(o, im->px, n * 3);
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
    carseg_status st = image_save_png_rgb(path, o, w, h);
    free(o);
    return st;
}

// ---------------------------------------------------------------------------------------------

static carseg_status write_json(const char *path, const char *image, int w, int h,
                                const char *const *names, int nc, const float *scores,
                                const uint16_t *lab, int rounds, const car_stats *st, double ms_total,
                                int refer, const char *precision) {
    size_t n = (size_t)w * h;
    long *cnt = calloc((size_t)nc + 1, sizeof(long));
    int *bb = malloc(sizeof(int) * 4 * ((size_t)nc + 1));
    if (!cnt || !bb) { free(cnt); free(bb); return set_err(CARSEG_ENOMEM, "%s: out of memory", path); }
    for (int k = 0; k <= nc; k++) bb[4 * k] = w, bb[4 * k + 1] = h, bb[4 * k + 2] = -1, bb[4 * k + 3] = -1;
    for (size_t i = 0; i < n; i++) {
        int k = lab[i], x = (int)(i % (size_t)w), y = (int)(i / (size_t)w);
        if (k > nc) continue;
        cnt[k]++;
        if (x < bb[4 * k]) bb[4 * k] = x;
        if (y < bb[4 * k + 1]) bb[4 * k + 1] = y;
        if (x > bb[4 * k + 2]) bb[4 * k + 2] = x;
        if (y > bb[4 * k + 3]) bb[4 * k + 3] = y;
    }
    atomic_file af;
    carseg_status s = atomic_open(&af, path);
    if (s != CARSEG_OK) { free(cnt); free(bb); return s; }
    FILE *f = af.f;
    fputs("{\n  \"image\": ", f);
    json_write_str(f, image);
    fprintf(f, ",\n  \"width\": %d,\n  \"height\": %d,\n  \"mode\": \"%s\",\n  \"precision\": \"%s\",\n"
               "  \"classes\": [", w, h, refer ? "refer" : "semantic", precision);
    int first = 1;
    for (int k = 1; k <= nc; k++) {
        if (!cnt[k] && !(scores[k - 1] > 0)) continue;
        fprintf(f, "%s\n    {\"label\": %d, \"name\": ", first ? "" : ",", k);
        json_write_str(f, names[k - 1]);
        fprintf(f, ", \"score\": %.6g, \"pixels\": %ld, \"bbox\": ", scores[k - 1], cnt[k]);
        if (cnt[k]) fprintf(f, "[%d, %d, %d, %d]}", bb[4 * k], bb[4 * k + 1], bb[4 * k + 2], bb[4 * k + 3]);
        else fputs("null}", f);
        first = 0;
    }
    fprintf(f, "%s],\n  \"background_pixels\": %ld,\n  \"rounds\": %d,\n", first ? "" : "\n  ", cnt[0], rounds);
    fprintf(f, "  \"timings_ms\": {\"prepare\": %.1f, \"text\": %.1f, \"cam\": %.1f, \"prompts\": %.1f, "
               "\"classifier\": %.1f, \"crf\": %.1f, \"total\": %.1f}\n}\n",
            st->ms_prepare, st->ms_text, st->ms_cam, st->ms_prompt, st->ms_cls, st->ms_crf, ms_total);
    free(cnt);
    free(bb);
    return atomic_commit(&af);
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
    clip_model *gen = NULL, *cls = NULL;
    tokenizer *tok = NULL;
    car_ctx *ctx = NULL;
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
    const car_preset *pr = NULL;
    if (preset_name) {
        pr = preset_find(preset_name);
        if (!pr) FAIL("unknown preset '%s' (see carseg segment --help)", preset_name);
        if (pr->refer && refer.n == 0)
            FAIL("preset '%s' is a referring preset: give the phrases with --refer", preset_name);
    }
    int modes = (have_classes > 0) + (pr && !pr->refer) + (refer.n > 0);
    if (modes != 1) FAIL("give exactly one of --classes, --classes-file, --preset, --refer");
    if (have_classes > 1) FAIL("give --classes or --classes-file once");
    if (have_classes && classes.n == 0) FAIL("the class list is empty");
    if (have_bg && bgw.n == 0) FAIL("--bg-words: empty list");
    if ((eta != -1 && (eta < 0 || eta > 1)) || (theta != -2 && (theta < -1 || theta > 1)) ||
        (lambda != -1 && (lambda < 0 || lambda > 1)))
        FAIL("--eta, --theta and --lambda must lie in [0, 1]");
    if (templates != -1 && templates != 0 && templates != 15) FAIL("--templates must be 15 or 0");
    unsigned vp_types = 0;
    if (prompts && vp_parse(prompts, &vp_types) != CARSEG_OK) { rc = cli_fail_status(CARSEG_EINVAL); goto out; }
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
    int is_refer = refer.n > 0;
    const char *want_cls = pr ? pr->classifier : is_refer ? "ViT-B/16" : "ViT-L/14";
    char gbuf[4096], cbuf[4096], vbuf[4096];
    if ((st = segment_resolve_model(gen_path, "ViT-B/16", gbuf, sizeof gbuf)) != CARSEG_OK ||
        (st = segment_resolve_model(cls_path, want_cls, cbuf, sizeof cbuf)) != CARSEG_OK ||
        (st = segment_resolve_vocab(vocab, vbuf, sizeof vbuf)) != CARSEG_OK) {
        rc = cli_fail_status(st);
        goto out;
    }
    if (!quiet) fprintf(stderr, "carseg: loading %s and %s\n", gbuf, cbuf);
    if ((st = clip_load(gbuf, &gen)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }
    if (!strcmp(gbuf, cbuf)) cls = gen;
    else if ((st = clip_load(cbuf, &cls)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }
    /* the towers' precision (Grad-CAM's backward on the generator's last block stays float32) */
    if ((st = carseg_clip_set_precision(gen, prec)) != CARSEG_OK ||
        (st = carseg_clip_set_precision(cls, prec)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }
    if (gen->cfg.v_patch <= 0 || gen->cfg.v_layers < 2 || cls->cfg.v_layers < 1) {
        rc = cli_fail("%s: not a CLIP vision transformer usable as mask generator", gbuf);
        goto out;
    }
    if ((st = tok_open(vbuf, &tok)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }
    if ((st = car_ctx_new(gen, cls, tok, &ctx)) != CARSEG_OK) { rc = cli_fail_status(st); goto out; }

    /* ---- job ---- */
    car_params p = car_default_params();
    car_job job;
    memset(&job, 0, sizeof job);
    if (pr) {
        p.eta = pr->eta, p.theta = pr->theta, p.lambda = pr->lambda;
        vp_parse(pr->prompts, &p.prompts);
        p.n_templates = pr->templates;
        p.bg_factor = pr->bg_factor;
    } else if (is_refer) {   /* refcoco defaults */
        const car_preset *rc0 = preset_find("refcoco");
        p.eta = rc0->eta, p.theta = rc0->theta, p.lambda = rc0->lambda;
        vp_parse(rc0->prompts, &p.prompts);
        p.n_templates = 0;
    }
    if (eta != -1) p.eta = (float)eta;
    if (theta != -2) p.theta = (float)theta;
    if (lambda != -1) p.lambda = (float)lambda;
    if (prompts) p.prompts = vp_types;
    if (templates != -1) p.n_templates = templates;
    p.crf = !no_crf;
    p.fix_zero_guard = p.fix_duplicates = p.fix_gray = p.fix_crf_colors = p.fix_center_crop =
        p.fix_box_clamp = fix;
    if (fixes) {
        slist fl = {0};
        if (sl_split(&fl, fixes)) FAIL("out of memory");
        for (int k = 0; k < fl.n; k++) {
            const char *f = fl.v[k];
            if (!strcasecmp(f, "q1")) p.cam_raw_names = 1;
            else if (!strcasecmp(f, "q3")) p.fix_gray = 1;
            else if (!strcasecmp(f, "q4")) p.fix_crf_colors = 1;
            else if (!strcasecmp(f, "q7")) p.fix_box_clamp = 1;
            else if (!strcasecmp(f, "q8")) p.fix_center_crop = 1;
            else if (!strcasecmp(f, "q9")) p.fix_zero_guard = 1;
            else if (!strcasecmp(f, "q17")) p.fix_duplicates = 1;
            else { sl_free(&fl); FAIL("--fix: unknown quirk '%s' (q1, q3, q4, q7, q8, q9, q17)", f); }
        }
        sl_free(&fl);
    }
    job.p = p;
    job.stuff_p = p;
    if (pr && pr->stuff_prompts && !prompts) vp_parse(pr->stuff_prompts, &job.stuff_p.prompts);
    job.stuff_p.bg_factor = pr ? pr->stuff_bg_factor : 1;
    job.bg = have_bg ? (const char *const *)bgw.v : CAR_BG_WORDS;
    job.nb = have_bg ? bgw.n : 23;
    if (pr && pr->list) {
        job.classes = pr->list->classes, job.n_classes = pr->list->n;
        job.things = pr->list->things, job.n_things = pr->list->n_things;
        job.stuff = pr->list->stuff, job.n_stuff = pr->list->n_stuff;
    } else if (!is_refer) {
        job.classes = (const char *const *)classes.v, job.n_classes = classes.n;
    }
    const char *const *names = is_refer ? (const char *const *)refer.v : job.classes;
    int nc = is_refer ? 1 : job.n_classes;
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
        double t0 = now_ms();
        const char *ipath = in.v[ii].path;
        char path[4096], ddir[4096];
        image_u8 im;
        label_run_start(run, ii, 0, 0);
        if ((st = image_load_rgb(ipath, &im)) == CARSEG_OK && max_px > 0 &&
            (double)im.w * im.h > max_px) {
            st = set_err(CARSEG_EFORMAT, "%s: image too large (%dx%d, --max-pixels %.0f)", ipath,
                         im.w, im.h, max_px);
            image_free(&im);
        }
        if (st != CARSEG_OK) {   /* a bad image: reported, the run goes on (--fail-fast: stops) */
            if (label_run_image_failed(run, ii, carseg_last_error())) break;
            continue;
        }
        label_run_start(run, ii, im.w, im.h);
        size_t hw = (size_t)im.w * im.h;
        car_stats cs;
        memset(&cs, 0, sizeof cs);
        car_image *ci = NULL;
        int nq = is_refer ? refer.n : nc, io_err = 0;
        uint16_t *lab = malloc(sizeof(uint16_t) * hw);
        float *scores = calloc((size_t)nq, sizeof(float));
        uint8_t *masks = dump_dir ? malloc(hw * (size_t)nq) : NULL;
        uint8_t *m1 = is_refer ? malloc(hw) : NULL;
        car_dump dump = {NULL, "", NULL, NULL};
        if (!lab || !scores || (dump_dir && !masks) || (is_refer && !m1)) {
            st = set_err(CARSEG_ENOMEM, "%s: out of memory", ipath);
            goto img_fail;
        }
        if (dump_dir) {
            if (in.n > 1) snprintf(ddir, sizeof ddir, "%s/%s", dump_dir, in.v[ii].name);
            else snprintf(ddir, sizeof ddir, "%s", dump_dir);
            if ((st = mkdir_p(ddir)) != CARSEG_OK) goto img_fail;
            dump.dir = ddir;
        }
        if ((st = car_image_new(ctx, &im, &cs, &ci)) != CARSEG_OK) goto img_fail;
        float fscore = 0;
        if (is_refer) {
            st = car_refer(ctx, ci, (const char *const *)refer.v, refer.n, job.bg, job.nb, &p,
                           dump.dir ? &dump : NULL, m1, scores, masks, &cs);
            for (size_t i = 0; i < hw && st == CARSEG_OK; i++) lab[i] = m1[i];
            for (int j = 0; j < refer.n; j++) fscore = scores[j] > fscore ? scores[j] : fscore;
        } else {
            segment_sam_masks sm = {0};
            if (samo.on && (st = segment_sam_load(&samo, in.v[ii].name, im.w, im.h, &sm)) == CARSEG_OK)
                job.sam = &sm.sm, job.sam_p = samo.cp;
            if (st == CARSEG_OK)
                st = car_segment(ctx, ci, &job, dump.dir ? &dump : NULL, lab, scores, masks, &cs);
            job.sam = NULL;
            segment_sam_free(&sm);
        }
        if (st != CARSEG_OK) { err_prefix("%s", ipath); goto img_fail; }
        /* outputs: from here on an error is not the image's fault: the run stops */
        io_err = 1;
        if (fmt & LABEL_FMT_PNG) {
            if ((st = label_out_path(run, ii, ".png", path, sizeof path)) != CARSEG_OK ||
                (st = image_save_labels(path, lab, im.w, im.h, nc + 1)) != CARSEG_OK)
                goto img_fail;
            fprintf(stdout, "%s\n", path);
        }
        if (dump.dir) {
            char lp[4200];
            snprintf(lp, sizeof lp, "%s/labels.png", dump.dir);
            if ((st = image_save_labels(lp, lab, im.w, im.h, nc + 1)) != CARSEG_OK) goto img_fail;
        }
        if (fmt & LABEL_FMT_OVERLAY) {
            int *found = malloc(sizeof(int) * (size_t)(nc + 1)), nf = 0;
            char *present = calloc((size_t)nc + 2, 1);
            if (!found || !present) { free(found); free(present); st = set_err(CARSEG_ENOMEM, "out of memory"); goto img_fail; }
            for (size_t i = 0; i < hw; i++) if (lab[i] && lab[i] <= nc) present[lab[i]] = 1;
            for (int k = 1; k <= nc; k++) if (present[k]) found[nf++] = k;
            st = label_out_path(run, ii, ".overlay.png", path, sizeof path);
            if (st == CARSEG_OK) st = write_overlay(path, &im, lab, names, found, nf);
            free(found);
            free(present);
            if (st != CARSEG_OK) goto img_fail;
            fprintf(stdout, "%s\n", path);
        }
        if (fmt & LABEL_FMT_JSON) {
            float rs = fscore;
            st = label_out_path(run, ii, ".json", path, sizeof path);
            if (st == CARSEG_OK)
                st = write_json(path, ipath, im.w, im.h, names, nc, is_refer ? &rs : scores, lab,
                                cs.rounds_total, &cs, now_ms() - t0, is_refer,
                                carseg_precision_name(carseg_clip_get_precision(cls)));
            if (st != CARSEG_OK) goto img_fail;
            fprintf(stdout, "%s\n", path);
        }
        if (dump.dir) {
            int64_t shape[3] = {nq, im.h, im.w};   /* uint8 0/1, one mask per class */
            snprintf(path, sizeof path, "%s/final_masks.npy", dump.dir);
            st = npy_write(path, NPY_U8, masks, 3, shape);
            if (st != CARSEG_OK) goto img_fail;
        }
        {   /* masks / CVAT per-image files, then the journal line: image ii is done */
            float rs = fscore;
            if ((st = label_run_image_done(run, ii, lab, im.w, im.h, is_refer ? &rs : scores)) != CARSEG_OK)
                goto img_fail;
        }
        if (label_run_plain(run))
            fprintf(stderr, "carseg:   %d rounds, %.0f ms (cam %.0f, classifier %.0f, crf %.0f)\n",
                    cs.rounds_total, now_ms() - t0, cs.ms_cam, cs.ms_cls, cs.ms_crf);
    img_fail:
        car_image_free(ci);
        image_free(&im);
        free(lab), free(scores), free(masks), free(m1);
        if (st != CARSEG_OK) {
            if (io_err || st == CARSEG_ENOMEM) { rc = cli_fail_status(st); goto out; }
            if (label_run_image_failed(run, ii, carseg_last_error())) break;
        }
    }
    rc = label_run_finish(run);
out:
    car_ctx_free(ctx);
    tok_close(tok);
    if (cls != gen) clip_free(cls);
    clip_free(gen);
    label_run_close(run);
    label_inputs_free(&in);
    free(config);
    sl_free(&images), sl_free(&classes), sl_free(&refer), sl_free(&bgw);
    return rc;
#undef FAIL
}

CLI_COMMAND("segment", "CaR segmentation of images: class list, preset or referring phrase", cmd_segment)
