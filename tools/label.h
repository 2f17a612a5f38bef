/* label.h — `carseg segment` over image collections (issue #15), kept apart from the
 * segmentation itself (cmd_segment.c calls these at a few hooks):
 *
 *   collect.c    inputs: plain files, folders (walked recursively, image extensions only, sorted,
 *                symlink loops and the output folder skipped) and @list files; each image gets
 *                a path relative to its input root and a unique output name
 *   label_run.c  the resumable run: a journal under --out (src/journal.c's jlog), failures that
 *                do not stop the run, progress (a bar on a terminal, plain lines otherwise)
 *   outputs.c    the per-class mask PNGs, the CVAT "Segmentation Mask 1.1" zip and the COCO
 *                instances JSON (compressed RLE, src/rle.c), all written with temp + rename
 */
#ifndef CARSEG_LABEL_H
#define CARSEG_LABEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "carseg.h"

// ---------------------------------------------------------------------------------------------
// inputs (collect.c)

typedef struct {
    char *path;   /* the file to read */
    char *rel;    /* path relative to its input root, with extension ("a/b.jpg"): COCO file_name */
    char *name;   /* output name: rel without extension, unique in the run ("a/b"): OUT/a/b.png */
} label_item;

typedef struct {
    label_item *v;
    int n, cap;
} label_inputs;

/* Expands the command line's inputs in order: FILE (any file named is taken; its rel is its
 * base name), DIR (every .jpg, .jpeg, .jpe and .png file below it, hidden entries skipped, entries
 * sorted bytewise per folder; rel = the path below DIR) and @LIST (one path per line, '#'
 * comments and blank lines skipped; relative paths are relative to the list's folder and keep
 * that relative path as rel; an entry may be a folder). A path that does not exist is an error
 * (CARSEG_EIO, naming it). out_dir (may not exist yet) is never walked into. Output names are
 * rel without the extension; when two collide the extension stays ("x.jpg", "x.png"), and when
 * they still collide the later ones get "~2", "~3", ... (deterministic: input order). */
carseg_status label_collect(char *const *args, int nargs, const char *out_dir, label_inputs *in);
void label_inputs_free(label_inputs *in);
/* Is this file name one of the image extensions a folder walk takes? (case-insensitive) */
int label_is_image_name(const char *name);

// ---------------------------------------------------------------------------------------------
// output formats

enum {
    LABEL_FMT_PNG = 1,       /* NAME.png: the label map (today's default) */
    LABEL_FMT_OVERLAY = 2,   /* NAME.overlay.png */
    LABEL_FMT_JSON = 4,      /* NAME.json */
    LABEL_FMT_MASKS = 8,     /* masks/NAME/CLASS.png: one binary PNG per class found */
    LABEL_FMT_CVAT = 16,     /* cvat.zip (+ the cvat/ folder it is made from) */
    LABEL_FMT_DEFAULT = 7
};
/* "png,overlay,json,masks,cvat" (any subset, comma separated). 0 ok, -1 with a message in err. */
int label_formats_parse(const char *list, unsigned *fmt, char *err, size_t errlen);
/* The colour of label k in overlays and CVAT masks: VOC palette below 256, hashed above. */
void label_class_color(int k, uint8_t rgb[3]);

// ---------------------------------------------------------------------------------------------
// the run (label_run.c)

typedef struct {
    const char *out_dir;
    const char *coco_path;          /* NULL: no COCO file */
    unsigned formats;               /* LABEL_FMT_* */
    int force, fail_fast, quiet, fsync;
    const char *config;             /* what decides the outputs (options and models): a journal
                                       made under another config is refused */
    const char *const *names;       /* the class names (COCO categories, label k = names[k-1]) */
    int n_names;
} label_opts;

typedef struct label_run label_run;

/* The journal's identity for `carseg segment` argv: the options that decide the outputs, in
 * order, without the inputs (malloc'd; NULL when out of memory). */
char *label_config(int argc, char **argv);
/* Creates OUT, removes temp files a killed run left there (NAME.tmp.PID), loads the journal
 * (OUT/carseg-segment.journal; --force starts a new one). */
carseg_status label_run_open(const label_opts *o, const label_inputs *in, label_run **out);
void label_run_close(label_run *r);
/* Recorded as done by the journal: skip it. */
int label_run_is_done(const label_run *r, int i);
/* Progress when image i starts (w, h known; 0 when not yet). */
void label_run_start(label_run *r, int i, int w, int h);
/* Are plain progress lines wanted (stderr not a terminal, not --quiet)? */
int label_run_plain(const label_run *r);
/* OUT/NAME<suffix> for image i, creating NAME's folders. */
carseg_status label_out_path(const label_run *r, int i, const char *suffix, char *buf, size_t n);
/* Image i is segmented (lab: w*h labels, 0 = background, k = names[k-1]; scores: n_names) and
 * cmd_segment has written its own outputs: writes the masks / CVAT per-image files, then the
 * journal line. After this returns, a kill loses nothing of image i. */
carseg_status label_run_image_done(label_run *r, int i, const uint16_t *lab, int w, int h,
                                   const float *scores);
/* Image i failed with msg: reported now, counted for the summary. Returns 1 when the run must
 * stop (--fail-fast). */
int label_run_image_failed(label_run *r, int i, const char *msg);
/* The whole-run outputs (COCO, CVAT zip) from the journal, the summary on stderr. Returns the
 * exit status: 0, or 1 when an image failed or an output could not be written. */
int label_run_finish(label_run *r);

// ---------------------------------------------------------------------------------------------
// outputs (outputs.c)

/* A journal record of one image: the classes found with their score and COCO RLE. */
typedef struct {
    int k;            /* label, 1..n_names */
    double score;
    char *rle;        /* COCO compressed counts */
} label_ann;
typedef struct {
    char *name;
    int w, h;
    int n_ann;
    label_ann *ann;
} label_rec;

/* One journal line (malloc'd, ends in '\n') for image `name`. */
char *label_rec_format(const char *name, const uint16_t *lab, int w, int h, const float *scores,
                       int n_names);
/* Parses a journal line; 0 ok. Labels beyond n_names or RLE that does not fit w*h are refused. */
int label_rec_parse(const char *line, size_t len, int n_names, label_rec *r);
void label_rec_free(label_rec *r);

/* The file name used for class k in masks/NAME/ (unique, no '/'), computed once per run. */
char **label_mask_names(const char *const *names, int n);
/* masks/NAME/CLASS.png for the classes found (0/255 gray PNGs, atomic). */
carseg_status label_write_masks(const char *out_dir, const char *name, const uint16_t *lab, int w,
                                int h, char *const *mask_names, int n_names);
/* cvat/SegmentationClass/NAME.png: the label map in the label map's colours (RGB, atomic). */
carseg_status label_write_cvat_png(const char *out_dir, const char *name, const uint16_t *lab,
                                   int w, int h);
/* cvat/labelmap.txt, cvat/ImageSets/Segmentation/default.txt and cvat.zip (all atomic) from the
 * done images' names (in order) and their staged PNGs. */
carseg_status label_write_cvat(const char *out_dir, const char *const *names, int n_names,
                               const char *const *done_names, int n_done);
/* COCO instances JSON (atomic). recs[j] (NULL: not done) is image j of in; image ids are j + 1. */
carseg_status label_write_coco(const char *path, const label_inputs *in, const label_rec *const *recs,
                               const char *const *names, int n_names);

/* A minimal zip writer (stored entries, CRC-32 from zlib, fixed 1980-01-01 timestamps so the
 * same inputs give the same bytes; at most 65535 entries and 4 GiB). */
typedef struct zipw zipw;
carseg_status zipw_open(const char *path, zipw **out);
carseg_status zipw_add(zipw *z, const char *name, const void *data, size_t len);
carseg_status zipw_close(zipw *z);   /* writes the central directory, renames into place */
void zipw_abort(zipw *z);

// ---------------------------------------------------------------------------------------------
// COCO predictions for `carseg eval --predictions FILE.json` (eval_coco.c)

/* A COCO instances file ({"images", "categories", "annotations"}, as `carseg segment --coco`
 * writes, or any tool) whose segmentations are RLE (compressed strings or count lists; polygons
 * are refused, naming the annotation). A sample matches the image whose file_name, without its
 * folders and extension, is the sample's id (or whose whole file_name without extension is). A
 * category maps to the dataset class of the same name, else to the label equal to its id. */
typedef struct coco_preds coco_preds;
carseg_status coco_preds_open(const char *path, char *const *class_names, int n_class,
                              coco_preds **out);
/* The label map of sample `id` at w x h (out zeroed by the caller): annotations painted in
 * increasing score, so the most confident wins; refer: every annotation is the object (1). An
 * image missing from the file is an error naming it; one without annotations is all background. */
carseg_status coco_preds_labels(const coco_preds *c, const char *id, int refer, int w, int h,
                                uint16_t *out);
void coco_preds_close(coco_preds *c);

#endif
