/* eval.h — internal API of the evaluation module: datasets (datasets.c), label-map files,
 * the REFER pickle reader (refer.c) and the per-image journal (journal.c). */
#ifndef CARSEG_EVAL_H
#define CARSEG_EVAL_H

#include <stdint.h>
#include <stdio.h>
#include "carseg.h"
#include "util.h"

// ---------------------------------------------------------------------------------------------
// label maps on disk

/* Reads a label image: PNG (palette -> raw indices, 8/16-bit gray) or TIFF (8/16-bit, one
 * channel). *out is malloc'd, w*h uint16. */
carseg_status labels_read(const char *path, int *w, int *h, uint16_t **out);
/* Label maps are written with carseg_labels_save_png (image.c): an 8-bit palette PNG (VOC
 * colours) when every value < 256, otherwise a 16-bit gray PNG. */

// ---------------------------------------------------------------------------------------------
// datasets

typedef enum { DS_SEMANTIC = 0, DS_REFER = 1 } ds_kind;

typedef struct {
    char *id;        /* unique sample id: file stem; refer: "<ref_id>" or "<ref_id>_<sent_id>" */
    char *image;     /* image path */
    char *label;     /* semantic: ground-truth label path; refer: NULL */
    int n_sent;      /* refer: sentences of this sample */
    char **sent;     /* refer: cleaned sentences (lower case, '"' and '/' removed) */
    int ann;         /* refer: index into the dataset's annotation table */
} ds_sample;

typedef struct refer_db refer_db;

typedef struct {
    const char *split;           /* NULL = the dataset's default (val / validation) */
    int fix_ade847;              /* score all 847 ADE-847 classes (quirk Q14 fixed) */
    int per_sentence;            /* refer: one sample per sentence (usual RIS protocol) */
    const char *class_names;     /* optional file: one class name per line (ids 0..n-1) */
} ds_options;

typedef struct {
    char name[32];
    ds_kind kind;
    int n_class;                 /* semantic: classes incl. 0; refer: 2 */
    int ignore_background;       /* the reference's test.ignore_background */
    int label_shift;             /* added to stored GT values (ADE-847 / PC-459: +1) */
    int label_max;               /* after the shift, values > label_max become 0 (0 = off) */
    char **class_names;          /* n_class names */
    int n;                       /* samples */
    ds_sample *s;
    refer_db *refer;             /* refer datasets only */
} dataset;

/* Names accepted by dataset_open (NULL-terminated), with a one-line description each. */
extern const char *const DATASET_NAMES[];
extern const char *const DATASET_INFO[];

/* Lists the samples of a dataset in a deterministic order (sorted ids / split file order). */
carseg_status dataset_open(dataset *ds, const char *name, const char *root, const ds_options *opt);
void dataset_close(dataset *ds);
/* Ground truth of sample i: semantic: label ids as the metric sees them (shift/clamp applied);
 * refer: the binary object mask (0/1). *out malloc'd. */
carseg_status dataset_load_gt(const dataset *ds, int i, int *w, int *h, uint16_t **out);

// ---------------------------------------------------------------------------------------------
// REFER annotations (refer.c)

/* Parses a REFER refs(*.p) pickle and instances.json. Keeps the refs of one split
 * ("val", "testA", "testB", "test", "train"; testA/testB/testC match the split's last letter
 * as REFER.getRefIds does). */
carseg_status refer_open(refer_db **db, const char *refs_pickle, const char *instances_json,
                         const char *split);
void refer_close(refer_db *db);
int refer_count(const refer_db *db);
/* ref k: ids, image file name, sentences (raw, as in the pickle). Pointers stay owned by db. */
void refer_ref(const refer_db *db, int k, long *ref_id, const char **file_name, int *n_sent,
               const char *const **sent_raw, const long **sent_ids);
/* Rasterises the referred object's mask (polygons like pycocotools frPyObjects+decode, or
 * RLE) at the image size from instances.json. *mask malloc'd, w*h uint16 0/1. */
carseg_status refer_mask(const refer_db *db, int k, int *w, int *h, uint16_t **mask);

/* Minimal, hostile-input-safe pickle reader (protocols 2-5; dicts, lists, tuples, str, bytes,
 * ints, floats, bools, None) into the util.h JSON DOM (tuples become arrays, int keys strings).*/
json *pickle_to_json(const uint8_t *data, size_t len, char *err, size_t errlen);

// ---------------------------------------------------------------------------------------------
// journal: one line per finished sample, appended and flushed, so a killed run resumes

typedef struct {
    char *id;
    /* semantic: sparse confusion contribution (triples gt, pred, count) */
    size_t n_trip;
    uint32_t *trip_gp;   /* 2 * n_trip: gt, pred */
    uint64_t *trip_n;    /* n_trip counts */
    /* refer */
    uint64_t inter, uni;
    double ms;           /* time the predictor took (informational) */
} journal_rec;

/* Formats one record as a journal line (malloc'd, ends with '\n'). */
char *journal_format(const journal_rec *r, int refer);
/* Parses one journal line (without the newline). Returns 0 on success. */
int journal_parse(const char *line, size_t len, journal_rec *r, int refer);
void journal_rec_free(journal_rec *r);
/* Builds the sparse record of one image from GT and prediction. */
carseg_status journal_from_labels(journal_rec *r, const char *id, const uint16_t *gt,
                                  const uint16_t *pred, size_t n_px, int n_class);
/* Adds a record into a confusion matrix (bounds-checked; returns nonzero if out of range). */
int journal_add_to(const journal_rec *r, carseg_confusion *cm);

/* The file side, for any line journal (eval's records above, segment's per-image records):
 * line 1 is `header` (no '\n'); then one complete line per finished item. jlog_open reads an
 * existing journal (unless fresh): a different header is an error naming the file (CARSEG_EINVAL);
 * each complete line goes to fn (fn returns nonzero for a line it cannot parse: only a torn tail
 * can be such a line, so reading stops there); what follows the last good line is cut off; the
 * file is then opened for appending and locked (another process on the same journal: an error).
 * A missing journal (or fresh) starts one with the header. *n_torn counts dropped tails. */
typedef int (*jlog_line_fn)(void *user, const char *line, size_t len);
carseg_status jlog_open(const char *path, const char *header, int fresh, jlog_line_fn fn,
                        void *user, FILE **out, int *n_torn);
/* Appends one line (must end in '\n') and flushes it (fdatasync too when sync is set): once this
 * returns, a kill loses nothing. */
carseg_status jlog_append(FILE *f, const char *line, int sync);

#endif
