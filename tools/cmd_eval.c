/* cmd_eval.c — `carseg eval`: run a predictor over a benchmark split and score it the way the
 * reference's evaluate.py does; resumable (journal), shardable (--shard i/n, `eval merge`) and,
 * in the MPI build, spread over ranks with dynamic load balancing (rank 0 hands out samples and
 * owns the journal). */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "eval.h"
#include "label.h"
#include "util.h"

#ifdef CARSEG_MPI
#include <mpi.h>
#endif


// ---------------------------------------------------------------------------------------------
// predictors: one sample in, one label map (semantic) or binary mask (refer) out, at GT size

typedef struct predictor predictor;
struct predictor {
    const char *name;
    /* out: h*w, zeroed by the caller. */
    carseg_status (*predict)(predictor *p, const dataset *ds, int i, int w, int h, uint16_t *out);
    void (*close)(predictor *p);
    void *ctx;
};

/* --predictions DIR: label maps made earlier (by carseg or any tool): DIR/<id>.png or .tif, in
 * the label ids the metric uses; refer: nonzero = object. */
static carseg_status pred_dir_predict(predictor *p, const dataset *ds, int i, int w, int h,
                                      uint16_t *out) {
    const char *dir = p->ctx;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.png", dir, ds->s[i].id);
    if (!file_exists(path)) snprintf(path, sizeof path, "%s/%s.tif", dir, ds->s[i].id);
    if (!file_exists(path))
        return set_err(CARSEG_EIO, "%s/%s.png: prediction missing", dir, ds->s[i].id);
    int pw, ph;
    uint16_t *v;
    TRY(labels_read(path, &pw, &ph, &v));
    if (pw != w || ph != h) {
        free(v);
        return set_err(CARSEG_EFORMAT, "%s: prediction is %dx%d, ground truth %dx%d", path, pw, ph, w, h);
    }
    size_t n = (size_t)w * h;
    if (ds->kind == DS_REFER) for (size_t k = 0; k < n; k++) out[k] = v[k] != 0;
    else memcpy(out, v, n * sizeof *out);
    free(v);
    return CARSEG_OK;
}

/* --predictions FILE.json: COCO instances with RLE masks (carseg segment --coco; eval_coco.c) */
static carseg_status pred_coco_predict(predictor *p, const dataset *ds, int i, int w, int h,
                                       uint16_t *out) {
    return coco_preds_labels(p->ctx, ds->s[i].id, ds->kind == DS_REFER, w, h, out);
}
static void pred_coco_close(predictor *p) { coco_preds_close(p->ctx); p->ctx = NULL; }

// ---------------------------------------------------------------------------------------------
// the CaR predictor (the public API, carseg.h): the method with a dataset's preset, at the
// image's own resolution; semantic: carseg_segment with the preset's class list (labels = class
// index + 1, the dataset's ids); refer: carseg_refer over the sample's sentences
// (merge_masks_simple), as evaluate.py's eval_semantic / refer branch.

typedef struct {
    carseg_car_model *model;
    carseg_segmenter *seg;
    carseg_options opt;
    int refer;
} car_pred;

static const char *preset_for(const char *ds) {
    if (!strcmp(ds, "voc20")) return "voc";
    if (!strcmp(ds, "context59")) return "context";
    if (!strcmp(ds, "coco_object")) return "coco-object";
    return ds;
}

static carseg_status car_pred_predict(predictor *P, const dataset *ds, int i, int w, int h,
                                      uint16_t *out) {
    car_pred *c = P->ctx;
    uint8_t *rgb = NULL;
    int iw, ih;
    TRY(carseg_image_load(ds->s[i].image, &rgb, &iw, &ih));
    if (iw != w || ih != h) {
        carseg_image_free(rgb);
        return set_err(CARSEG_EFORMAT, "%s: image is %dx%d, its ground truth %dx%d", ds->s[i].image,
                       iw, ih, w, h);
    }
    carseg_prepared *im = NULL;
    carseg_result *r = NULL;
    carseg_status st = carseg_prepare(c->seg, rgb, w, h, &c->opt, &im);
    if (!st && c->refer)
        st = carseg_refer(c->seg, im, (const char *const *)ds->s[i].sent, ds->s[i].n_sent, &c->opt, &r);
    else if (!st)
        st = carseg_segment(c->seg, im, NULL, 0, &c->opt, &r);
    if (!st) memcpy(out, carseg_result_labels(r), sizeof(uint16_t) * (size_t)w * h);
    carseg_result_free(r);
    carseg_prepared_free(im);
    carseg_image_free(rgb);
    return st;
}

static void car_pred_close(predictor *P) {
    car_pred *c = P->ctx;
    if (!c) return;
    carseg_segmenter_free(c->seg);
    carseg_car_model_close(c->model);
    free(c);
    P->ctx = NULL;
}

/* Loads the models named by the options (defaults: the preset's) and sets the options. */
static carseg_status car_pred_open(predictor *P, const dataset *ds, const char *preset,
                                   const char *gen_m, const char *cls_m, const char *vocab,
                                   carseg_precision prec) {
    const char *pn = preset ? preset : preset_for(ds->name);
    int is_refer = carseg_preset_is_refer(pn);
    if (is_refer < 0) return set_err(CARSEG_EINVAL, "no CaR preset '%s' (give --preset)", pn);
    if ((ds->kind == DS_REFER) != is_refer)
        return set_err(CARSEG_EINVAL, "preset '%s' is a %s preset, dataset %s is not", pn,
                       is_refer ? "referring" : "semantic", ds->name);
    const char *const *classes = NULL;
    int n = 0;
    TRY(carseg_preset_classes(pn, &classes, &n));
    if (!is_refer && n + 1 != ds->n_class && !(!strcmp(ds->name, "ade847") && n == 847))
        return set_err(CARSEG_EINVAL, "preset '%s' has %d classes, dataset %s has %d ids", pn, n,
                       ds->name, ds->n_class);
    car_pred *c = calloc(1, sizeof *c);
    if (!c) return set_err(CARSEG_ENOMEM, "CaR predictor");
    P->ctx = c;
    P->name = "car";
    P->predict = car_pred_predict;
    P->close = car_pred_close;
    c->refer = is_refer;
    TRY(carseg_options_preset(&c->opt, pn));
    char *gp = NULL, *cp = NULL;
    carseg_status st = carseg_models_resolve(gen_m ? gen_m : "ViT-B/16", &gp);
    if (!st) st = carseg_models_resolve(cls_m ? cls_m : carseg_preset_classifier(pn), &cp);
    if (!st) st = carseg_car_model_open(gp, cp, vocab, &c->model);
    /* the towers' precision (Grad-CAM's backward stays float32) */
    if (!st) st = carseg_car_model_set_precision(c->model, prec);
    if (!st) st = carseg_segmenter_new(c->model, &c->seg);
    free(gp);
    free(cp);
    return st;
}

// ---------------------------------------------------------------------------------------------
// run state

typedef struct {
    dataset ds;
    int refer;
    carseg_confusion cm;
    carseg_refer_stats rs;
    carseg_miou_convention conv;
    int ignore_background;
    /* samples of this run (after --limit and --shard), sorted ids for lookup */
    int *todo;
    int n_todo;
    unsigned char *done;      /* per dataset sample */
    int n_done;
    /* journal */
    FILE *jf;
    int fsync_each;
    /* timing */
    double t_pred, t_over;    /* ms, samples processed in this process */
    double ms_journal;        /* predictor ms of every counted record (resumed ones too) */
    int n_proc;
    const char *out;
    int save_pred;
    int quiet;
} run;

typedef struct { const char *id; int idx; } id_ent;
static int cmp_ent(const void *a, const void *b) {
    return strcmp(((const id_ent *)a)->id, ((const id_ent *)b)->id);
}

static int lookup(const id_ent *t, int n, const char *id) {
    id_ent key = {id, 0};
    const id_ent *e = bsearch(&key, t, (size_t)n, sizeof *t, cmp_ent);
    return e ? e->idx : -1;
}

/* Adds a record to the totals (once per sample). Returns 1 if it counted. */
static int take_record(run *R, const id_ent *tab, int ntab, const journal_rec *r) {
    int i = lookup(tab, ntab, r->id);
    if (i < 0 || R->done[i]) return 0;
    if (R->refer) carseg_refer_add(&R->rs, r->inter, r->uni);
    else if (journal_add_to(r, &R->cm)) return 0;
    R->done[i] = 1;
    R->n_done++;
    R->ms_journal += r->ms;
    return 1;
}

/* Reads a journal: header check, complete lines only. *good_end = offset after the last good
 * line (the writer truncates there, cutting off a torn tail). */
static carseg_status journal_load(run *R, const char *path, const id_ent *tab, int ntab,
                                  long *good_end, int *n_torn, const char *want_hdr) {
    uint8_t *buf;
    size_t len;
    *good_end = 0;
    *n_torn = 0;
    TRY(read_file(path, &buf, &len));
    char *p = (char *)buf, *end = p + len;
    int line_no = 0;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) { (*n_torn)++; break; }   /* torn last line: no newline */
        size_t l = (size_t)(nl - p);
        if (line_no == 0) {
            if (want_hdr && (l != strlen(want_hdr) - 1 || memcmp(p, want_hdr, l))) {
                free(buf);
                return set_err(CARSEG_EINVAL,
                               "%s: journal of a different run (header %.*s); use another --out",
                               path, (int)(l > 200 ? 200 : l), p);
            }
        } else {
            journal_rec r;
            if (journal_parse(p, l, &r, R->refer)) {
                (*n_torn)++;   /* unparsable: only possible as a torn tail; stop here */
                break;
            }
            take_record(R, tab, ntab, &r);
            journal_rec_free(&r);
        }
        line_no++;
        p = nl + 1;
        *good_end = (long)(p - (char *)buf);
    }
    free(buf);
    return CARSEG_OK;
}

static void json_num_or_null(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "%.17g", v);
    else fputs("null", f);
}

static carseg_status write_results(run *R, const char *path, double ov_ms, double pred_ms,
                                   carseg_miou *m) {
    atomic_file af;
    TRY(atomic_open(&af, path));
    FILE *f = af.f;
    const dataset *ds = &R->ds;
    fprintf(f, "{\n  \"dataset\": ");
    json_write_str(f, ds->name);
    fprintf(f, ",\n  \"n_images\": %d,\n", R->n_done);
    if (R->refer) {
        double mi, oi, pr[5];
        carseg_refer_summary(&R->rs, &mi, &oi, pr);
        fprintf(f, "  \"miou\": %.6f,\n  \"oiou\": %.6f,\n  \"precision\": {", mi, oi);
        for (int k = 0; k < 5; k++) fprintf(f, "%s\"0.%d\": %.6f", k ? ", " : "", k + 5, pr[k]);
        fprintf(f, "},\n  \"cum_i\": %" PRIu64 ",\n  \"cum_u\": %" PRIu64 ",\n", R->rs.cum_i, R->rs.cum_u);
    } else {
        fprintf(f, "  \"convention\": \"%s\",\n  \"ignore_background\": %s,\n  \"n_class\": %d,\n",
                R->conv == CARSEG_MIOU_MMSEG ? "mmseg" : "reference",
                R->ignore_background ? "true" : "false", ds->n_class);
        fputs("  \"miou\": ", f); json_num_or_null(f, m->miou);
        fputs(",\n  \"pixel_acc\": ", f); json_num_or_null(f, m->pixel_acc);
        fputs(",\n  \"mean_acc\": ", f); json_num_or_null(f, m->mean_acc);
        fputs(",\n  \"fwiou\": ", f); json_num_or_null(f, m->fwiou);
        fprintf(f, ",\n  \"n_scored\": %d,\n  \"iou\": {", m->n_scored);
        for (int c = 0; c < ds->n_class; c++) {
            fputs(c ? ",\n    " : "\n    ", f);
            int dup = 0;   /* keys stay unique: a repeated name gets "#id" */
            for (int e = 0; e < c && !dup; e++) dup = !strcmp(ds->class_names[e], ds->class_names[c]);
            if (dup) {
                char kb[512];
                snprintf(kb, sizeof kb, "%s#%d", ds->class_names[c], c);
                json_write_str(f, kb);
            } else {
                json_write_str(f, ds->class_names[c]);
            }
            fputs(": ", f);
            json_num_or_null(f, m->iou[c]);
        }
        fputs("\n  },\n  \"scored\": [", f);
        for (int c = 0; c < ds->n_class; c++) fprintf(f, "%s%d", c ? "," : "", m->scored[c]);
        fputs("],\n  \"confusion\": [", f);
        int n = ds->n_class;
        for (int g = 0; g < n; g++) {
            fputs(g ? ",\n    [" : "\n    [", f);
            for (int p = 0; p <= n; p++)
                fprintf(f, "%s%" PRIu64, p ? "," : "", R->cm.counts[(size_t)g * (n + 1) + p]);
            fputc(']', f);
        }
        fputs("],\n", f);
    }
    fputs("  \"timing_ms_per_image\": {\"eval_overhead\": ", f);
    json_num_or_null(f, ov_ms);
    fputs(", \"predictor\": ", f);
    json_num_or_null(f, pred_ms);
    fputs("}\n}\n", f);
    return atomic_commit(&af);
}

static void print_table(run *R, carseg_miou *m, FILE *f) {
    const dataset *ds = &R->ds;
    if (R->refer) {
        double mi, oi, pr[5];
        carseg_refer_summary(&R->rs, &mi, &oi, pr);
        fprintf(f, "%s: %d samples\nMean IoU is %.2f\n", ds->name, R->n_done, mi);
        for (int k = 0; k < 5; k++) fprintf(f, "    precision@0.%d = %.2f\n", k + 5, pr[k]);
        fprintf(f, "    overall IoU = %.2f\n", oi);
        return;
    }
    fprintf(f, "%s: %d images, %d classes, %s convention%s\n", ds->name, R->n_done, ds->n_class,
            R->conv == CARSEG_MIOU_MMSEG ? "mmseg" : "reference",
            R->ignore_background ? ", background ignored" : "");
    fprintf(f, "%-5s %-32s %8s\n", "id", "class", "IoU");
    for (int c = 0; c < ds->n_class; c++) {
        if (!isfinite(m->iou[c]) && !m->scored[c]) continue;
        fprintf(f, "%-5d %-32.32s %8.2f%s\n", c, ds->class_names[c], m->iou[c],
                m->scored[c] ? "" : "  (no ground truth: not in the mean)");
    }
    fprintf(f, "mIoU %.2f  (%d classes)  pixel acc %.2f  mean acc %.2f  fwIoU %.2f\n", m->miou,
            m->n_scored, m->pixel_acc, m->mean_acc, m->fwiou);
}

// ---------------------------------------------------------------------------------------------
// one sample

/* Runs the predictor on sample i and formats its journal line (malloc'd). */
static carseg_status process(run *R, predictor *P, int i, char **line) {
    *line = NULL;
    const dataset *ds = &R->ds;
    double t0 = now_ms();
    int w, h;
    uint16_t *gt, *pred;
    TRY(dataset_load_gt(ds, i, &w, &h, &gt));
    pred = calloc((size_t)w * h, sizeof *pred);
    if (!pred) { free(gt); return set_err(CARSEG_ENOMEM, "prediction %dx%d", w, h); }
    double t1 = now_ms();
    carseg_status st = P->predict(P, ds, i, w, h, pred);
    double t2 = now_ms();
    if (st) {
        err_prefix("%s", ds->s[i].id);
        free(gt); free(pred);
        return st;
    }
    if (R->save_pred && R->out) {
        char path[4096];
        snprintf(path, sizeof path, "%s/predictions/%s.png", R->out, ds->s[i].id);
        st = carseg_labels_save_png(path, pred, w, h);
    }
    journal_rec r = {0};
    if (!st) {
        if (R->refer) {
            uint8_t *a = malloc((size_t)w * h), *b = malloc((size_t)w * h);
            if (a && b) {
                for (size_t k = 0; k < (size_t)w * h; k++) { a[k] = pred[k] != 0; b[k] = gt[k] != 0; }
                carseg_mask_iou(a, b, (size_t)w * h, &r.inter, &r.uni);
                r.id = strdup(ds->s[i].id);
            }
            free(a); free(b);
            if (!r.id) st = set_err(CARSEG_ENOMEM, "record");
        } else {
            st = journal_from_labels(&r, ds->s[i].id, gt, pred, (size_t)w * h, ds->n_class);
        }
    }
    free(gt);
    free(pred);
    if (st) return st;
    r.ms = t2 - t1;
    *line = journal_format(&r, R->refer);
    journal_rec_free(&r);
    if (!*line) return set_err(CARSEG_ENOMEM, "journal line");
    R->t_pred += t2 - t1;
    R->t_over += (t1 - t0) + (now_ms() - t2);
    R->n_proc++;
    return CARSEG_OK;
}

/* Appends a journal line (flushed: a kill after this returns loses nothing) and counts it. */
static carseg_status commit_line(run *R, const id_ent *tab, int ntab, const char *line) {
    double t0 = now_ms();
    size_t l = strlen(line);
    if (R->jf) {
        if (fwrite(line, 1, l, R->jf) != l || fflush(R->jf) != 0)
            return set_err(CARSEG_EIO, "journal write failed: %s", strerror(errno));
        if (R->fsync_each) fdatasync(fileno(R->jf));
    }
    journal_rec r;
    if (journal_parse(line, l - 1, &r, R->refer)) return set_err(CARSEG_EFORMAT, "bad journal line");
    take_record(R, tab, ntab, &r);
    journal_rec_free(&r);
    R->t_over += now_ms() - t0;
    return CARSEG_OK;
}

static void fmt_dur(char *b, size_t n, double s) {
    if (!isfinite(s) || s < 0) snprintf(b, n, "--");
    else if (s < 60) snprintf(b, n, "%.0fs", s);
    else if (s < 3600) snprintf(b, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(b, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void progress(run *R, int n_new, double t_start, int force) {
    static double last;
    static int tty = -1;
    if (R->quiet) return;
    if (tty < 0) tty = isatty(2);
    double t = now_ms();
    if (!force && t - last < (tty ? 250 : 10000)) return;
    last = t;
    int total = R->n_todo;
    double el = (t - t_start) / 1000.0, rate = n_new > 0 ? n_new / el : 0;
    double eta = rate > 0 ? (total - R->n_done) / rate : NAN;
    char etab[32];
    fmt_dur(etab, sizeof etab, eta);
    char metric[64] = "";
    if (R->refer) {
        double mi, oi, pr[5];
        carseg_refer_summary(&R->rs, &mi, &oi, pr);
        snprintf(metric, sizeof metric, "mIoU %.2f oIoU %.2f", mi, oi);
    } else {
        carseg_miou m;
        if (!carseg_confusion_score(&R->cm, R->ignore_background, R->conv, &m)) {
            snprintf(metric, sizeof metric, "mIoU %.2f", m.miou);
            carseg_miou_free(&m);
        }
    }
    int bw = 24, fill = total ? (int)((double)R->n_done / total * bw) : bw;
    char bar[32];
    for (int k = 0; k < bw; k++) bar[k] = k < fill ? '#' : '.';
    bar[bw] = 0;
    fprintf(stderr, "%s[%s] %d/%d %5.1f%%  %.2f img/s  ETA %s  %s%s", tty ? "\r" : "", bar,
            R->n_done, total, total ? 100.0 * R->n_done / total : 100.0, rate, etab, metric,
            tty ? "   " : "\n");
    if (force && tty) fputc('\n', stderr);
}

// ---------------------------------------------------------------------------------------------
// usage

static void usage(FILE *f) {
    fprintf(f,
        "usage: carseg eval --dataset NAME --root DIR [options]\n"
        "       carseg eval merge [--out DIR] [--convention C] DIR...\n\n"
        "Runs a predictor over a benchmark split and reports what the reference's evaluate.py\n"
        "reports: semantic mIoU (confusion matrix, classes without ground truth excluded), per-class\n"
        "IoU, pixel accuracy; referring: mean IoU, overall IoU, precision@0.5..0.9.\n"
        "Progress, ETA and the running mIoU go to stderr; the final table to stdout;\n"
        "DIR/results.json holds miou, per-class iou, n_images and the confusion matrix.\n\n"
        "options:\n"
        "  --dataset NAME        see the list below\n"
        "  --root DIR            the dataset's root folder\n"
        "  --split S             default val (ADE/PC-459: validation; RefCOCO: val, testA, testB, test)\n"
        "  --limit N             only the first N samples\n"
        "  --shard I/N           only samples k with k %% N == I (combine with `carseg eval merge`)\n"
        "  --out DIR             results.json, journal and predictions go here (default eval_out)\n"
        "  --predictions DIR     score existing label maps DIR/<id>.png (or .tif) instead of running\n"
        "                        the method (ids of the metric's label space; refer: nonzero=object)\n"
        "                        (or FILE.json: COCO instances with RLE masks, e.g. from\n"
        "                        carseg segment --coco; see docs/labeling.md)\n"
        "  --save-predictions    write DIR/predictions/<id>.png (palette PNG, 16-bit if ids > 255)\n"
        "  --convention C        reference (default) or mmseg (see README)\n"
        "  --fix-ade847          score ADE-847's last class too (the reference drops it, Q14)\n"
        "  --per-sentence        RefCOCO*: one sample per sentence (usual protocol) instead of the\n"
        "                        reference's one sample per object with all its sentences\n"
        "  --class-names F       class names, one per line (ids 0..n-1) for the table/results.json\n"
        "  --fresh               ignore an existing journal in --out (start over)\n"
        "  --fsync               fsync the journal after every sample (power-loss safe)\n"
        "  --quiet               no progress on stderr\n"
        "  --preset P, --generator M, --classifier M, --vocab F, --precision fp32|bf16x3|bf16|auto: the\n"
        "                        method's settings (used when the built-in CaR predictor runs; not\n"
        "                        needed with --predictions); --precision: see carseg segment --help\n\n"
        "The journal (DIR/journal.jsonl) records every finished sample; rerunning the same command\n"
        "resumes where a killed run stopped. MPI build (make MPI=1): mpirun -np N build-mpi/carseg\n"
        "eval ... splits samples across ranks dynamically; rank 0 owns the journal.\n\ndatasets:\n");
    for (int i = 0; DATASET_NAMES[i]; i++) fprintf(f, "  %-12s %s\n", DATASET_NAMES[i], DATASET_INFO[i]);
}

// ---------------------------------------------------------------------------------------------
// merge

static int cmd_merge(int argc, char **argv) {
    const char *out = NULL, *conv_s = "reference";
    const char *dirs[256];
    int nd = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if ((v = cli_opt(argc, argv, &i, "--out"))) out = v;
        else if ((v = cli_opt(argc, argv, &i, "--convention"))) conv_s = v;
        else if (cli_flag(argv, i, "--help")) { usage(stdout); return 0; }
        else if (argv[i][0] == '-') return cli_fail("eval merge: unknown option %s", argv[i]);
        else if (nd < 256) dirs[nd++] = argv[i];
    }
    if (nd == 0) return cli_fail("eval merge: name the output folders of the shards");
    /* every shard's journal header names the dataset; results come from the journals */
    run R = {0};
    R.conv = !strcmp(conv_s, "mmseg") ? CARSEG_MIOU_MMSEG : CARSEG_MIOU_REFERENCE;
    char hdr0[1024] = "";
    char **jpaths = NULL;
    int nj = 0;
    for (int d = 0; d < nd; d++) {
        char single[4200];
        snprintf(single, sizeof single, "%s/journal.jsonl", dirs[d]);
        if (file_exists(single)) {
            jpaths = realloc(jpaths, (size_t)(nj + 1) * sizeof *jpaths);
            jpaths[nj++] = strdup(single);
        }
        DIR *dh = opendir(dirs[d]);
        if (!dh) return cli_fail("eval merge: %s: cannot open folder", dirs[d]);
        struct dirent *e;
        while ((e = readdir(dh))) {
            size_t l = strlen(e->d_name);
            if (!strncmp(e->d_name, "journal.shard-", 14) && l > 6 && !strcmp(e->d_name + l - 6, ".jsonl")) {
                char full[4600];
                snprintf(full, sizeof full, "%s/%s", dirs[d], e->d_name);
                jpaths = realloc(jpaths, (size_t)(nj + 1) * sizeof *jpaths);
                jpaths[nj++] = strdup(full);
            }
        }
        closedir(dh);
    }
    if (nj == 0) return cli_fail("eval merge: no journal*.jsonl in the folders given");
    /* header: {"carseg_eval":1,"dataset":..,"root":..,"split":..,"n_class":..,...} */
    json *hdr = NULL;
    for (int j = 0; j < nj; j++) {
        FILE *f = fopen(jpaths[j], "rb");
        char line[1024];
        if (!f || !fgets(line, sizeof line, f)) { if (f) fclose(f); return cli_fail("%s: empty journal", jpaths[j]); }
        fclose(f);
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (j == 0) {
            snprintf(hdr0, sizeof hdr0, "%s", line);
            char err[128];
            hdr = json_parse(line, strlen(line), err, sizeof err);
            if (!hdr) return cli_fail("%s: bad journal header", jpaths[j]);
        } else {
            /* same dataset, root, split, classes; the shard field may differ */
            char *a = strstr(hdr0, ",\"shard\""), *b = strstr(line, ",\"shard\"");
            size_t la = a ? (size_t)(a - hdr0) : strlen(hdr0), lb = b ? (size_t)(b - line) : strlen(line);
            if (la != lb || memcmp(hdr0, line, la))
                return cli_fail("%s: journal of a different evaluation than %s", jpaths[j], jpaths[0]);
        }
    }
    ds_options o = {0};
    o.split = json_str(hdr, "split", NULL);
    if (o.split && !*o.split) o.split = NULL;
    o.fix_ade847 = json_num(hdr, "fix_ade847", 0) != 0;
    o.per_sentence = json_num(hdr, "per_sentence", 0) != 0;
    const char *cn = json_str(hdr, "class_names", NULL);
    o.class_names = cn && *cn ? cn : NULL;
    carseg_status st = dataset_open(&R.ds, json_str(hdr, "dataset", ""), json_str(hdr, "root", ""), &o);
    if (st) { json_free(hdr); return cli_fail_status(st); }
    int limit = (int)json_num(hdr, "limit", 0);
    json_free(hdr);
    R.refer = R.ds.kind == DS_REFER;
    R.ignore_background = R.ds.ignore_background;
    int n = limit > 0 && limit < R.ds.n ? limit : R.ds.n;
    id_ent *tab = malloc((size_t)(n ? n : 1) * sizeof *tab);
    R.done = calloc((size_t)(n ? n : 1), 1);
    if (!tab || !R.done) return cli_fail("out of memory");
    for (int i = 0; i < n; i++) tab[i] = (id_ent){R.ds.s[i].id, i};
    qsort(tab, (size_t)n, sizeof *tab, cmp_ent);
    R.n_todo = n;
    if (!R.refer && (st = carseg_confusion_init(&R.cm, R.ds.n_class))) return cli_fail_status(st);
    for (int j = 0; j < nj; j++) {
        long ge;
        int torn;
        if ((st = journal_load(&R, jpaths[j], tab, n, &ge, &torn, NULL))) return cli_fail_status(st);
        if (torn) fprintf(stderr, "carseg: warning: %s: torn last line ignored\n", jpaths[j]);
        free(jpaths[j]);
    }
    free(jpaths);
    if (R.n_done < n)
        fprintf(stderr, "carseg: warning: %d of %d samples missing from the journals (partial result)\n",
                n - R.n_done, n);
    carseg_miou m = {0};
    if (!R.refer && (st = carseg_confusion_score(&R.cm, R.ignore_background, R.conv, &m)))
        return cli_fail_status(st);
    if (out) {
        char path[4096];
        if ((st = mkdir_p(out))) return cli_fail_status(st);
        snprintf(path, sizeof path, "%s/results.json", out);
        if ((st = write_results(&R, path, NAN, R.n_done ? R.ms_journal / R.n_done : NAN, &m)))
            return cli_fail_status(st);
    }
    print_table(&R, &m, stdout);
    carseg_miou_free(&m);
    carseg_confusion_free(&R.cm);
    free(tab);
    free(R.done);
    dataset_close(&R.ds);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// eval

#ifdef CARSEG_MPI
enum { TAG_REQ = 1, TAG_WORK = 2, TAG_RESULT = 3, TAG_ERR = 4 };

/* Rank 0 commits the results in sample order, as one process does: the totals are summed in the
 * same order (the referring mean IoU is a float sum) and the journal has the same lines in the
 * same order, so a run resumed from it sums as a serial run too (docs/threads.md). A result that
 * arrives before an earlier sample's waits in held (a kill loses at most those). */
typedef struct {
    char **held;   /* (npend) line of pend[k], or NULL */
    int next;      /* first position not yet committed */
} in_order;

static int pos_of(const int *pend, int npend, int idx) {   /* pend is increasing */
    int a = 0, b = npend;
    while (a < b) {
        int m = a + (b - a) / 2;
        if (pend[m] < idx) a = m + 1;
        else b = m;
    }
    return a < npend && pend[a] == idx ? a : -1;
}

/* Takes line (malloc'd) of sample idx, commits every result now in order; returns the count
 * committed (or -1 on error, st set). */
static int in_order_put(in_order *q, run *R, const id_ent *tab, int ntab, const int *pend,
                        int npend, int idx, char *line, carseg_status *st) {
    int k = pos_of(pend, npend, idx);
    if (k < 0 || q->held[k]) {
        free(line);
        *st = set_err(CARSEG_EINVAL, "eval: unexpected result for sample %d", idx);
        return -1;
    }
    q->held[k] = line;
    int n = 0;
    while (q->next < npend && q->held[q->next]) {
        *st = commit_line(R, tab, ntab, q->held[q->next]);
        free(q->held[q->next]);
        q->held[q->next++] = NULL;
        if (*st) return -1;
        n++;
    }
    return n;
}

/* The sample index of a journal line ({"id":"...",...}): looked up by id. */
static int line_sample(const char *line, int refer, const id_ent *tab, int ntab) {
    journal_rec r;
    if (journal_parse(line, strlen(line) - 1, &r, refer)) return -1;
    int i = lookup(tab, ntab, r.id);
    journal_rec_free(&r);
    return i;
}
#endif

static int cmd_eval(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "merge")) return cmd_merge(argc - 1, argv + 1);
    const char *name = NULL, *root = NULL, *out = "eval_out", *preds = NULL, *conv_s = "reference";
    const char *shard_s = NULL, *class_names = NULL;
    ds_options o = {0};
    long limit = 0;
    int save = 0, fresh = 0, fsync_each = 0, quiet = 0;
    const char *method_opt = NULL, *preset = NULL, *gen_m = NULL, *cls_m = NULL, *vocab = NULL;
    carseg_precision prec = CARSEG_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        const char *v, *arg = argv[i];
        if ((v = cli_opt(argc, argv, &i, "--dataset"))) name = v;
        else if ((v = cli_opt(argc, argv, &i, "--root"))) root = v;
        else if ((v = cli_opt(argc, argv, &i, "--split"))) o.split = v;
        else if ((v = cli_opt(argc, argv, &i, "--limit"))) limit = (long)cli_num("--limit", v);
        else if ((v = cli_opt(argc, argv, &i, "--shard"))) shard_s = v;
        else if ((v = cli_opt(argc, argv, &i, "--out"))) out = v;
        else if ((v = cli_opt(argc, argv, &i, "--predictions"))) preds = v;
        else if ((v = cli_opt(argc, argv, &i, "--convention"))) conv_s = v;
        else if ((v = cli_opt(argc, argv, &i, "--class-names"))) class_names = v;
        else if ((v = cli_opt(argc, argv, &i, "--preset"))) preset = v, method_opt = arg;
        else if ((v = cli_opt(argc, argv, &i, "--generator"))) gen_m = v, method_opt = arg;
        else if ((v = cli_opt(argc, argv, &i, "--classifier"))) cls_m = v, method_opt = arg;
        else if ((v = cli_opt(argc, argv, &i, "--vocab"))) vocab = v, method_opt = arg;
        else if ((v = cli_opt(argc, argv, &i, "--precision"))) prec = cli_precision(v), method_opt = arg;
        else if (cli_flag(argv, i, "--save-predictions")) save = 1;
        else if (cli_flag(argv, i, "--fix-ade847")) o.fix_ade847 = 1;
        else if (cli_flag(argv, i, "--per-sentence")) o.per_sentence = 1;
        else if (cli_flag(argv, i, "--fresh")) fresh = 1;
        else if (cli_flag(argv, i, "--fsync")) fsync_each = 1;
        else if (cli_flag(argv, i, "--quiet")) quiet = 1;
        else if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) { usage(stdout); return 0; }
        else return cli_fail("eval: unknown option %s (see carseg eval --help)", argv[i]);
    }
    if (!name || !root) return cli_fail("eval: --dataset and --root are required (see carseg eval --help)");
    if (strcmp(conv_s, "reference") && strcmp(conv_s, "mmseg"))
        return cli_fail("eval: --convention must be reference or mmseg");
    int shard_i = 0, shard_n = 1;
    if (shard_s) {
        char tail;
        if (sscanf(shard_s, "%d/%d%c", &shard_i, &shard_n, &tail) != 2 || shard_n < 1 ||
            shard_i < 0 || shard_i >= shard_n)
            return cli_fail("eval: --shard expects I/N with 0 <= I < N, got '%s'", shard_s);
    }
    o.class_names = class_names;

    int rank = 0, nranks = 1;
#ifdef CARSEG_MPI
    MPI_Init(NULL, NULL);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
#define EVAL_FAIL(...) do { int rc_ = cli_fail(__VA_ARGS__); MPI_Abort(MPI_COMM_WORLD, rc_); return rc_; } while (0)
#define EVAL_FAIL_ST(st) do { int rc_ = cli_fail_status(st); MPI_Abort(MPI_COMM_WORLD, rc_); return rc_; } while (0)
#else
#define EVAL_FAIL(...) return cli_fail(__VA_ARGS__)
#define EVAL_FAIL_ST(st) return cli_fail_status(st)
#endif

    run R = {0};
    R.conv = !strcmp(conv_s, "mmseg") ? CARSEG_MIOU_MMSEG : CARSEG_MIOU_REFERENCE;
    R.out = out;
    R.save_pred = save;
    R.quiet = quiet || rank != 0;
    R.fsync_each = fsync_each;
    carseg_status st = dataset_open(&R.ds, name, root, &o);
    if (st) EVAL_FAIL_ST(st);
    R.refer = R.ds.kind == DS_REFER;
    R.ignore_background = R.ds.ignore_background;

    predictor P = {0};
    if (preds && method_opt)
        EVAL_FAIL("eval: %s configures the method; it has no effect with --predictions", method_opt);
    size_t pl = preds ? strlen(preds) : 0;
    if (preds && pl > 5 && !strcmp(preds + pl - 5, ".json")) {
        coco_preds *cp = NULL;
        if ((st = coco_preds_open(preds, R.ds.class_names, R.ds.n_class, &cp))) EVAL_FAIL_ST(st);
        P = (predictor){"coco", pred_coco_predict, pred_coco_close, cp};
    } else if (preds) {
        P = (predictor){"predictions", pred_dir_predict, NULL, (void *)preds};
    } else {
        if ((st = car_pred_open(&P, &R.ds, preset, gen_m, cls_m, vocab, prec))) {
            if (P.close) P.close(&P);
            EVAL_FAIL_ST(st);
        }
    }

    /* samples of this run */
    int n = limit > 0 && limit < R.ds.n ? (int)limit : R.ds.n;
    id_ent *tab = malloc((size_t)(n ? n : 1) * sizeof *tab);
    R.done = calloc((size_t)(n ? n : 1), 1);
    R.todo = malloc((size_t)(n ? n : 1) * sizeof(int));
    if (!tab || !R.done || !R.todo) EVAL_FAIL("out of memory");
    for (int i = 0; i < n; i++) tab[i] = (id_ent){R.ds.s[i].id, i};
    qsort(tab, (size_t)n, sizeof *tab, cmp_ent);
    for (int i = 1; i < n; i++)
        if (!strcmp(tab[i].id, tab[i - 1].id)) EVAL_FAIL("eval: sample id '%s' appears twice", tab[i].id);
    for (int i = shard_i; i < n; i += shard_n) R.todo[R.n_todo++] = i;
    if (!R.refer && (st = carseg_confusion_init(&R.cm, R.ds.n_class))) EVAL_FAIL_ST(st);

    /* journal (rank 0 only) */
    char jpath[4096], hdr[3000];
    if (shard_n > 1) snprintf(jpath, sizeof jpath, "%s/journal.shard-%d-of-%d.jsonl", out, shard_i, shard_n);
    else snprintf(jpath, sizeof jpath, "%s/journal.jsonl", out);
    {
        char *hb = NULL;
        size_t hl = 0;
        FILE *hf = open_memstream(&hb, &hl);
        fputs("{\"carseg_eval\":1,\"dataset\":", hf);
        json_write_str(hf, R.ds.name);
        char *absroot = realpath(root, NULL);
        fputs(",\"root\":", hf);
        json_write_str(hf, absroot ? absroot : root);
        free(absroot);
        fputs(",\"split\":", hf);
        json_write_str(hf, o.split ? o.split : "");
        fprintf(hf, ",\"n_class\":%d,\"limit\":%ld,\"fix_ade847\":%d,\"per_sentence\":%d", R.ds.n_class,
                limit > 0 ? limit : 0, o.fix_ade847, o.per_sentence);
        fputs(",\"class_names\":", hf);
        char *abscn = class_names ? realpath(class_names, NULL) : NULL;
        json_write_str(hf, abscn ? abscn : "");
        free(abscn);
        fprintf(hf, ",\"shard\":\"%d/%d\"}\n", shard_i, shard_n);
        fclose(hf);
        snprintf(hdr, sizeof hdr, "%s", hb);
        free(hb);
    }
    int resumed = 0;
    if (rank == 0) {
        if ((st = mkdir_p(out))) EVAL_FAIL_ST(st);
        if (save) {
            char pd[4096];
            snprintf(pd, sizeof pd, "%s/predictions", out);
            if ((st = mkdir_p(pd))) EVAL_FAIL_ST(st);
        }
        long good_end = 0;
        int torn = 0;
        if (!fresh && file_exists(jpath)) {
            if ((st = journal_load(&R, jpath, tab, n, &good_end, &torn, hdr))) EVAL_FAIL_ST(st);
            resumed = R.n_done;
            if (torn) fprintf(stderr, "carseg: journal: torn last line dropped (a killed run)\n");
            if (truncate(jpath, good_end) != 0) EVAL_FAIL("%s: cannot truncate: %s", jpath, strerror(errno));
        }
        R.jf = fopen(jpath, fresh || good_end == 0 ? "wb" : "ab");
        if (!R.jf) EVAL_FAIL("%s: cannot open journal: %s", jpath, strerror(errno));
        if (fresh || good_end == 0) {
            fputs(hdr, R.jf);
            fflush(R.jf);
        }
        if (resumed && !R.quiet)
            fprintf(stderr, "carseg: resuming: %d of %d samples already in %s\n", resumed, R.n_todo, jpath);
    }
    /* pending samples, in order */
    int *pend = malloc((size_t)(R.n_todo ? R.n_todo : 1) * sizeof(int)), npend = 0;
    if (!pend) EVAL_FAIL("out of memory");
    for (int k = 0; k < R.n_todo; k++) if (!R.done[R.todo[k]]) pend[npend++] = R.todo[k];
#ifdef CARSEG_MPI
    MPI_Bcast(&npend, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(pend, npend, MPI_INT, 0, MPI_COMM_WORLD);
#endif
    double t_start = now_ms();
    int n_new = 0;
    if (rank == 0 && !R.quiet) progress(&R, 0, t_start, 1);

    if (nranks == 1) {
        for (int k = 0; k < npend; k++) {
            char *line;
            if ((st = process(&R, &P, pend[k], &line))) EVAL_FAIL_ST(st);
            st = commit_line(&R, tab, n, line);
            free(line);
            if (st) EVAL_FAIL_ST(st);
            n_new++;
            progress(&R, n_new, t_start, 0);
        }
    }
#ifdef CARSEG_MPI
    else if (rank == 0) {
        /* rank 0: answers work requests between its own samples; owns the journal */
        int next = 0, active = nranks - 1, outstanding = 0;
        in_order q = {calloc((size_t)(npend ? npend : 1), sizeof(char *)), 0};
        if (!q.held) EVAL_FAIL("out of memory");
        while (active > 0 || outstanding > 0 || next < npend) {
            int flag = 1;
            while (flag) {
                MPI_Status ms;
                if (next >= npend) { MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &ms); flag = 1; }
                else MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &ms);
                if (!flag) break;
                int cnt;
                MPI_Get_count(&ms, MPI_CHAR, &cnt);
                char *msg = malloc((size_t)cnt + 1);
                MPI_Recv(msg, cnt, MPI_CHAR, ms.MPI_SOURCE, ms.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                msg[cnt] = 0;
                if (ms.MPI_TAG == TAG_REQ) {
                    int idx = next < npend ? pend[next++] : -1;
                    if (idx >= 0) outstanding++;
                    else active--;
                    MPI_Send(&idx, 1, MPI_INT, ms.MPI_SOURCE, TAG_WORK, MPI_COMM_WORLD);
                } else if (ms.MPI_TAG == TAG_RESULT) {
                    outstanding--;
                    int c = in_order_put(&q, &R, tab, n, pend, npend,
                                         line_sample(msg, R.refer, tab, n), msg, &st);
                    msg = NULL;
                    if (c < 0) EVAL_FAIL_ST(st);
                    n_new += c;
                    if (c) progress(&R, n_new, t_start, 0);
                } else if (ms.MPI_TAG == TAG_ERR) {
                    fprintf(stderr, "carseg: error: rank %d: %s\n", ms.MPI_SOURCE, msg);
                    free(msg);
                    MPI_Abort(MPI_COMM_WORLD, 1);
                }
                free(msg);
                if (next >= npend && active == 0 && outstanding == 0) break;
            }
            if (next < npend) {
                char *line;
                int idx = pend[next++];
                if ((st = process(&R, &P, idx, &line))) EVAL_FAIL_ST(st);
                int c = in_order_put(&q, &R, tab, n, pend, npend, idx, line, &st);
                if (c < 0) EVAL_FAIL_ST(st);
                n_new += c;
                if (c) progress(&R, n_new, t_start, 0);
            }
        }
        if (q.next != npend) EVAL_FAIL("eval: %d of %d results missing", npend - q.next, npend);
        free(q.held);
    } else {
        /* worker: keep one request in flight (prefetch) so rank 0's own work never stalls us */
        MPI_Send("", 0, MPI_CHAR, 0, TAG_REQ, MPI_COMM_WORLD);
        for (;;) {
            int idx;
            MPI_Recv(&idx, 1, MPI_INT, 0, TAG_WORK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            if (idx < 0) break;
            MPI_Send("", 0, MPI_CHAR, 0, TAG_REQ, MPI_COMM_WORLD);
            char *line;
            st = process(&R, &P, idx, &line);
            if (st) {
                const char *e = carseg_last_error();
                MPI_Send(e, (int)strlen(e), MPI_CHAR, 0, TAG_ERR, MPI_COMM_WORLD);
                MPI_Finalize();
                return 1;
            }
            MPI_Send(line, (int)strlen(line), MPI_CHAR, 0, TAG_RESULT, MPI_COMM_WORLD);
            free(line);
        }
    }
    /* per-rank timing -> rank 0 */
    double tm[3] = {R.t_over, R.t_pred, (double)R.n_proc}, tsum[3];
    MPI_Reduce(tm, tsum, 3, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    int *per_rank = rank == 0 ? calloc((size_t)nranks, sizeof(int)) : NULL;
    MPI_Gather(&R.n_proc, 1, MPI_INT, per_rank, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        R.t_over = tsum[0]; R.t_pred = tsum[1]; R.n_proc = (int)tsum[2];
        if (!R.quiet && per_rank) {
            fprintf(stderr, "carseg: %d ranks, samples per rank:", nranks);
            for (int r = 0; r < nranks; r++) fprintf(stderr, " %d", per_rank[r]);
            fputc('\n', stderr);
        }
    }
    free(per_rank);
#endif
    int rc = 0;
    if (rank == 0) {
        if (!R.quiet) progress(&R, n_new, t_start, 1);
        fclose(R.jf);
        R.jf = NULL;
        carseg_miou m = {0};
        if (!R.refer && (st = carseg_confusion_score(&R.cm, R.ignore_background, R.conv, &m))) EVAL_FAIL_ST(st);
        /* overhead: this run's samples; predictor: every journaled sample (resumed ones too) */
        double ov = R.n_proc ? R.t_over / R.n_proc : NAN, pr = R.n_done ? R.ms_journal / R.n_done : NAN;
        char path[4096];
        snprintf(path, sizeof path, shard_n > 1 ? "%s/results.shard-%d-of-%d.json" : "%s/results.json",
                 out, shard_i, shard_n);
        if ((st = write_results(&R, path, ov, pr, &m))) EVAL_FAIL_ST(st);
        print_table(&R, &m, stdout);
        if (!R.quiet && R.n_proc)
            fprintf(stderr, "carseg: %d samples this run (%d resumed); per sample: evaluation overhead "
                            "%.3f ms (ground truth, metric, journal), predictor %.3f ms\n",
                    R.n_proc, resumed, ov, pr);
        carseg_miou_free(&m);
    }
    free(pend);
    free(tab);
    free(R.done);
    free(R.todo);
    carseg_confusion_free(&R.cm);
    dataset_close(&R.ds);
    if (P.close) P.close(&P);
#ifdef CARSEG_MPI
    MPI_Finalize();
#endif
    return rc;
}

CLI_COMMAND("eval", "score a method (or saved predictions) on a benchmark; resumable, shardable, MPI", cmd_eval)
