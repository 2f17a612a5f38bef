/* label_run.c — a resumable `carseg segment` run over many images (label.h).
 *
 * OUT/carseg-segment.journal: line 1 names the run's config (a hash of the options and models
 * that decide the outputs); then one line per finished image (label_rec: its size, the classes
 * found, their scores and COCO RLE), appended and flushed only after every per-image output of
 * that image has been renamed into place. A run killed at any moment and started again with the
 * same command skips the images of the journal and redoes the others (overwriting whatever they
 * left); the whole-run outputs (COCO JSON, CVAT zip) are made at the end from the journal alone,
 * so a resumed run ends with the same bytes as an uninterrupted one. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eval.h"
#include "label.h"
#include "util.h"

struct label_run {
    label_opts o;
    const label_inputs *in;
    label_rec **rec;          /* per input: the journal record once done */
    unsigned char *failed;    /* per input */
    char **fail_msg;
    int n_done, n_done_before, n_failed, n_new;
    FILE *jf;
    char jpath[4096];
    char **mask_names;
    double t0, last_draw;
    int tty;
    int bar_shown;
    /* lookup of names -> input index (sorted) */
    int *by_name;
};

static const label_inputs *g_sort_in;
static int cmp_idx(const void *a, const void *b) {
    return strcmp(g_sort_in->v[*(const int *)a].name, g_sort_in->v[*(const int *)b].name);
}

static int find_name(const label_run *r, const char *name) {
    int lo = 0, hi = r->in->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(r->in->v[r->by_name[mid]].name, name);
        if (!c) return r->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static int take_line(void *user, const char *line, size_t len) {
    label_run *r = user;
    label_rec rec;
    if (label_rec_parse(line, len, r->o.n_names, &rec)) return 1;
    int i = find_name(r, rec.name);
    if (i < 0 || r->rec[i]) {   /* an image no longer among the inputs (or twice): not counted */
        label_rec_free(&rec);
        return 0;
    }
    r->rec[i] = malloc(sizeof rec);
    if (!r->rec[i]) { label_rec_free(&rec); return 1; }
    *r->rec[i] = rec;
    r->n_done++;
    return 0;
}

/* NAME.tmp.PID files left by a killed run (util.c's atomic_open): never a final output */
static int is_stale_tmp(const char *n) {
    const char *t = strstr(n, ".tmp.");
    while (t) {
        const char *p = t + 5;
        if (*p) {
            while (*p >= '0' && *p <= '9') p++;
            if (!*p) return 1;
        }
        t = strstr(t + 1, ".tmp.");
    }
    return 0;
}

/* removes DIR/NAME.tmp.PID whose final name is one of ours (.png, .json, .txt, .zip, .journal);
 * one folder, not recursive: OUT may be "." in a big tree */
static void remove_stale_in(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    static const char *ours[] = {".png", ".json", ".txt", ".zip", ".journal"};
    while ((e = readdir(d))) {
        const char *t = strstr(e->d_name, ".tmp.");
        if (!t || !is_stale_tmp(e->d_name)) continue;
        while (strstr(t + 1, ".tmp.")) t = strstr(t + 1, ".tmp.");
        int mine = 0;
        for (size_t k = 0; k < sizeof ours / sizeof *ours && !mine; k++) {
            size_t l = strlen(ours[k]);
            mine = (size_t)(t - e->d_name) > l && !strncmp(t - l, ours[k], l);
        }
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (mine && lstat(p, &sb) == 0 && S_ISREG(sb.st_mode)) remove(p);
    }
    closedir(d);
}

/* every folder this run writes into */
static void remove_stale(const label_run *r) {
    const char *out = r->o.out_dir;
    char p[8192];
    remove_stale_in(out);
    const char *sub[] = {"cvat", "cvat/ImageSets/Segmentation", "cvat/SegmentationClass"};
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, "%s/%s", out, sub[k]);
        remove_stale_in(p);
    }
    for (int i = 0; i < r->in->n; i++) {
        const char *name = r->in->v[i].name, *sl = strrchr(name, '/');
        if (r->o.formats & LABEL_FMT_MASKS) {
            snprintf(p, sizeof p, "%s/masks/%s", out, name);
            remove_stale_in(p);
        }
        if (!sl) continue;
        const char *pn = i > 0 ? r->in->v[i - 1].name : NULL, *psl = pn ? strrchr(pn, '/') : NULL;
        if (psl && psl - pn == sl - name && !strncmp(pn, name, (size_t)(sl - name)))
            continue;   /* the same folder as the previous image */
        snprintf(p, sizeof p, "%s/%.*s", out, (int)(sl - name), name);
        remove_stale_in(p);
        snprintf(p, sizeof p, "%s/cvat/SegmentationClass/%.*s", out, (int)(sl - name), name);
        remove_stale_in(p);
    }
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

carseg_status label_run_open(const label_opts *o, const label_inputs *in, label_run **out) {
    *out = NULL;
    label_run *r = calloc(1, sizeof *r);
    if (!r) return set_err(CARSEG_ENOMEM, "out of memory");
    r->o = *o;
    r->in = in;
    int n = in->n ? in->n : 1;
    r->rec = calloc((size_t)n, sizeof *r->rec);
    r->failed = calloc((size_t)n, 1);
    r->fail_msg = calloc((size_t)n, sizeof *r->fail_msg);
    r->by_name = malloc(sizeof(int) * (size_t)n);
    r->mask_names = label_mask_names(o->names, o->n_names);
    carseg_status st = CARSEG_OK;
    if (!r->rec || !r->failed || !r->fail_msg || !r->by_name || !r->mask_names) {
        st = set_err(CARSEG_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < in->n; i++) r->by_name[i] = i;
    g_sort_in = in;
    qsort(r->by_name, (size_t)in->n, sizeof(int), cmp_idx);
    if ((st = mkdir_p(o->out_dir))) goto fail;
    remove_stale(r);
    if (o->coco_path) {   /* the COCO file may live outside OUT: its folder, its temp files */
        char d[4096];
        snprintf(d, sizeof d, "%s", o->coco_path);
        char *sl = strrchr(d, '/');
        const char *base = sl ? sl + 1 : d;
        if (sl && sl != d) { *sl = 0; if ((st = mkdir_p(d))) goto fail; }
        const char *dir = !sl ? "." : sl == d ? "/" : d;
        size_t bl = strlen(base);
        DIR *dd = opendir(dir);
        struct dirent *e;
        while (dd && (e = readdir(dd)))
            if (!strncmp(e->d_name, base, bl) && !strncmp(e->d_name + bl, ".tmp.", 5) &&
                is_stale_tmp(e->d_name + bl)) {
                char p[8192];
                snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
                remove(p);
            }
        if (dd) closedir(dd);
    }
    char header[256];
    snprintf(header, sizeof header, "{\"journal\":\"carseg segment\",\"version\":1,\"config\":\"%016llx\"}",
             (unsigned long long)fnv1a(o->config ? o->config : ""));
    snprintf(r->jpath, sizeof r->jpath, "%s/carseg-segment.journal", o->out_dir);
    int torn = 0;
    st = jlog_open(r->jpath, header, o->force, take_line, r, &r->jf, &torn);
    if (st) {
        if (st == CARSEG_EINVAL) err_prefix("the options or models differ from the run in %s; "
                                            "give --force to redo it all, or another --out", o->out_dir);
        goto fail;
    }
    r->n_done_before = r->n_done;
    r->tty = isatty(2);
    r->t0 = now_ms();
    if (!o->quiet && r->n_done)
        fprintf(stderr, "carseg: resuming: %d of %d images done (journal %s)\n", r->n_done, in->n, r->jpath);
    *out = r;
    return CARSEG_OK;
fail:
    label_run_close(r);
    return st;
}

void label_run_close(label_run *r) {
    if (!r) return;
    int n = r->in ? r->in->n : 0;
    for (int i = 0; i < n; i++) {
        if (r->rec && r->rec[i]) { label_rec_free(r->rec[i]); free(r->rec[i]); }
        if (r->fail_msg) free(r->fail_msg[i]);
    }
    if (r->mask_names) for (int k = 0; k < r->o.n_names; k++) free(r->mask_names[k]);
    free(r->mask_names);
    free(r->rec), free(r->failed), free(r->fail_msg), free(r->by_name);
    if (r->jf) fclose(r->jf);
    free(r);
}

int label_run_is_done(const label_run *r, int i) { return r->rec[i] != NULL; }
int label_run_plain(const label_run *r) { return !r->o.quiet && !r->tty; }

// ---------------------------------------------------------------------------------------------
// progress

static void fmt_dur(char *b, size_t n, double s) {
    if (!isfinite(s) || s < 0) snprintf(b, n, "--");
    else if (s < 60) snprintf(b, n, "%.0fs", s);
    else if (s < 3600) snprintf(b, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(b, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void clear_bar(label_run *r) {
    if (r->bar_shown) { fputs("\r\033[K", stderr); r->bar_shown = 0; }
}

static void draw_bar(label_run *r, const char *what) {
    int total = r->in->n, done = r->n_done + r->n_failed;
    double el = (now_ms() - r->t0) / 60000.0;   /* minutes */
    double rate = r->n_new > 0 && el > 0 ? r->n_new / el : 0;
    double eta = rate > 0 ? (total - done) / rate * 60 : NAN;
    char etab[32], bar[32];
    fmt_dur(etab, sizeof etab, eta);
    int bw = 24, fill = total ? (int)((double)done / total * bw) : bw;
    for (int k = 0; k < bw; k++) bar[k] = k < fill ? '#' : '.';
    bar[bw] = 0;
    fprintf(stderr, "\r\033[K[%s] %d/%d  %.1f img/min  ETA %s", bar, done, total, rate, etab);
    if (r->n_failed) fprintf(stderr, "  %d failed", r->n_failed);
    if (what) fprintf(stderr, "  %.60s", what);
    r->bar_shown = 1;
    r->last_draw = now_ms();
}

void label_run_start(label_run *r, int i, int w, int h) {
    if (r->o.quiet) return;
    int total = r->in->n, done = r->n_done + r->n_failed;
    if (r->tty) { draw_bar(r, r->in->v[i].rel); return; }
    if (w > 0) fprintf(stderr, "carseg: [%d/%d] %s (%dx%d)\n", done + 1, total, r->in->v[i].path, w, h);
}

carseg_status label_out_path(const label_run *r, int i, const char *suffix, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s%s", r->o.out_dir, r->in->v[i].name, suffix);
    char *sl = strrchr(buf, '/');
    if (!sl || !strchr(r->in->v[i].name, '/')) return CARSEG_OK;
    *sl = 0;
    carseg_status st = mkdir_p(buf);
    *sl = '/';
    return st;
}

carseg_status label_run_image_done(label_run *r, int i, const uint16_t *lab, int w, int h,
                                   const float *scores) {
    const char *name = r->in->v[i].name;
    if (r->o.formats & LABEL_FMT_MASKS)
        TRY(label_write_masks(r->o.out_dir, name, lab, w, h, r->mask_names, r->o.n_names));
    if (r->o.formats & LABEL_FMT_CVAT) TRY(label_write_cvat_png(r->o.out_dir, name, lab, w, h));
    char *line = label_rec_format(name, lab, w, h, scores, r->o.n_names);
    if (!line) return set_err(CARSEG_ENOMEM, "%s: journal record", name);
    /* what the journal holds is what the end of the run reads: parse it back */
    label_rec rec;
    if (label_rec_parse(line, strlen(line) - 1, r->o.n_names, &rec)) {
        free(line);
        return set_err(CARSEG_EFORMAT, "%s: bad journal record", name);
    }
    carseg_status st = jlog_append(r->jf, line, r->o.fsync);
    free(line);
    if (st) { label_rec_free(&rec); return st; }
    r->rec[i] = malloc(sizeof rec);
    if (!r->rec[i]) { label_rec_free(&rec); return set_err(CARSEG_ENOMEM, "out of memory"); }
    *r->rec[i] = rec;
    r->n_done++;
    r->n_new++;
    if (!r->o.quiet && r->tty) draw_bar(r, NULL);
    return CARSEG_OK;
}

int label_run_image_failed(label_run *r, int i, const char *msg) {
    if (!r->failed[i]) {
        r->failed[i] = 1;
        r->n_failed++;
        r->fail_msg[i] = cs_strdup(msg);
    }
    clear_bar(r);   /* failures are reported even with --quiet */
    fprintf(stderr, "carseg: error: %s\n", msg);
    if (!r->o.quiet && r->tty) draw_bar(r, NULL);
    return r->o.fail_fast;
}

int label_run_finish(label_run *r) {
    int rc = 0;
    carseg_status st = CARSEG_OK;
    const label_inputs *in = r->in;
    clear_bar(r);
    if (r->o.coco_path) {
        st = label_write_coco(r->o.coco_path, in, (const label_rec *const *)r->rec, r->o.names, r->o.n_names);
        if (st) { fprintf(stderr, "carseg: error: %s\n", carseg_last_error()); rc = 1; }
        else if (!r->o.quiet) fprintf(stderr, "carseg: wrote %s\n", r->o.coco_path);
    }
    if (r->o.formats & LABEL_FMT_CVAT) {
        const char **dn = malloc(sizeof *dn * (size_t)(in->n ? in->n : 1));
        int nd = 0;
        if (!dn) st = set_err(CARSEG_ENOMEM, "out of memory");
        else {
            for (int i = 0; i < in->n; i++) if (r->rec[i]) dn[nd++] = in->v[i].name;
            st = label_write_cvat(r->o.out_dir, r->o.names, r->o.n_names, dn, nd);
        }
        free(dn);
        if (st) { fprintf(stderr, "carseg: error: %s\n", carseg_last_error()); rc = 1; }
        else if (!r->o.quiet) fprintf(stderr, "carseg: wrote %s/cvat.zip\n", r->o.out_dir);
    }
    int not_done = in->n - r->n_done - r->n_failed;   /* --fail-fast stopped early */
    if (!r->o.quiet || r->n_failed)
        fprintf(stderr, "carseg: %d of %d images done (%d this run, %d from the journal), %d failed%s\n",
                r->n_done, in->n, r->n_done - r->n_done_before, r->n_done_before, r->n_failed,
                not_done > 0 ? ", the rest not started (--fail-fast)" : "");
    if (r->n_failed) {
        fprintf(stderr, "carseg: failed images:\n");
        for (int i = 0; i < in->n; i++)
            if (r->failed[i]) fprintf(stderr, "  %s\n", r->fail_msg[i] ? r->fail_msg[i] : in->v[i].path);
        rc = 1;
    }
    return rc;
}

/* The journal's identity: `carseg segment`'s arguments without the inputs and without the
 * options that change nothing in the outputs (progress, threads, where the outputs go, resume
 * control). Options without a value are listed here; every other option takes one. */
char *label_config(int argc, char **argv) {
    static const char *no_value[] = {"--no-crf", "--fix-quirks", "--quiet", "--force",
                                     "--fail-fast", "--fsync", "--help", "-h"};
    static const char *ignored[] = {"--quiet", "--force", "--fail-fast", "--fsync", "--threads",
                                    "--out", "--coco", "--dump"};
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fputs("segment", f);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || !a[1]) continue;   /* an input */
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        int takes = !eq;
        for (size_t k = 0; k < sizeof no_value / sizeof *no_value && takes; k++)
            if (strlen(no_value[k]) == nl && !strncmp(a, no_value[k], nl)) takes = 0;
        int skip = 0;
        for (size_t k = 0; k < sizeof ignored / sizeof *ignored && !skip; k++)
            skip = strlen(ignored[k]) == nl && !strncmp(a, ignored[k], nl);
        const char *val = eq ? eq + 1 : takes && i + 1 < argc ? argv[i + 1] : NULL;
        if (takes && i + 1 < argc) i++;
        if (skip) continue;
        fprintf(f, "\n%.*s", (int)nl, a);
        if (val) fprintf(f, "=%s", val);
    }
    if (fclose(f) != 0) { free(buf); return NULL; }
    return buf;
}
