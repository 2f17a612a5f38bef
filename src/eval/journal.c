/* journal.c — per-sample evaluation records, one JSON line each, so that an evaluation run can
 * be killed at any moment and resumed without losing or double-counting anything.
 *
 *   semantic: {"id":"2007_000033","cm":[[gt,pred,count],...],"ms":812.5}
 *   refer:    {"id":"1234","i":5120,"u":7730,"ms":95.1}
 *
 * A line counts only when it is complete (ends in '\n') and parses; a torn last line (a kill in
 * the middle of a write) is dropped by the reader and cut off by the writer before appending.
 * jlog_open / jlog_append (end of file) are that file side for any line journal: `carseg eval`'s
 * records and `carseg segment`'s per-image records (tools/label_run.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "eval.h"

void journal_rec_free(journal_rec *r) {
    if (!r) return;
    free(r->id);
    free(r->trip_gp);
    free(r->trip_n);
    memset(r, 0, sizeof *r);
}

carseg_status journal_from_labels(journal_rec *r, const char *id, const uint16_t *gt,
                                  const uint16_t *pred, size_t n_px, int n_class) {
    memset(r, 0, sizeof *r);
    /* rows only for the GT classes present (an image holds a few dozen of ADE-847's classes):
     * a dense (present x (n_class + 1)) block instead of the whole matrix per image */
    const unsigned n = (unsigned)n_class, stride = n + 1;
    int *row_of = malloc((size_t)n * sizeof(int));
    uint32_t *cls = malloc((size_t)n * sizeof(uint32_t));
    if (!row_of || !cls) { free(row_of); free(cls); return set_err(CARSEG_ENOMEM, "journal record"); }
    for (unsigned c = 0; c < n; c++) row_of[c] = -1;
    unsigned nrows = 0;
    for (size_t i = 0; i < n_px; i++) {
        unsigned g = gt[i];
        if (g < n && row_of[g] < 0) { row_of[g] = (int)nrows; cls[nrows++] = g; }
    }
    uint64_t *blk = calloc((size_t)(nrows ? nrows : 1) * stride, sizeof(uint64_t));
    if (!blk) { free(row_of); free(cls); return set_err(CARSEG_ENOMEM, "journal record"); }
    for (size_t i = 0; i < n_px; i++) {
        unsigned g = gt[i], p = pred[i];
        if (g >= n) continue;
        if (p > n) p = n;
        blk[(size_t)row_of[g] * stride + p]++;
    }
    /* triples in (gt, pred) order */
    size_t nz = 0;
    for (size_t i = 0; i < (size_t)nrows * stride; i++) nz += blk[i] != 0;
    r->id = strdup(id);
    r->trip_gp = malloc((nz ? nz : 1) * 2 * sizeof(uint32_t));
    r->trip_n = malloc((nz ? nz : 1) * sizeof(uint64_t));
    if (!r->id || !r->trip_gp || !r->trip_n) {
        free(row_of); free(cls); free(blk);
        journal_rec_free(r);
        return set_err(CARSEG_ENOMEM, "journal record");
    }
    size_t k = 0;
    for (unsigned g = 0; g < n; g++) {
        if (row_of[g] < 0) continue;
        const uint64_t *rw = blk + (size_t)row_of[g] * stride;
        for (unsigned p = 0; p <= n; p++) {
            if (!rw[p]) continue;
            r->trip_gp[2 * k] = g;
            r->trip_gp[2 * k + 1] = p;
            r->trip_n[k] = rw[p];
            k++;
        }
    }
    r->n_trip = nz;
    free(row_of);
    free(cls);
    free(blk);
    return CARSEG_OK;
}

int journal_add_to(const journal_rec *r, carseg_confusion *cm) {
    const uint32_t n = (uint32_t)cm->n_class;
    for (size_t k = 0; k < r->n_trip; k++)
        if (r->trip_gp[2 * k] >= n || r->trip_gp[2 * k + 1] > n) return 1;
    for (size_t k = 0; k < r->n_trip; k++)
        cm->counts[(size_t)r->trip_gp[2 * k] * (n + 1) + r->trip_gp[2 * k + 1]] += r->trip_n[k];
    return 0;
}

char *journal_format(const journal_rec *r, int refer) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fputs("{\"id\":", f);
    json_write_str(f, r->id);
    if (refer) {
        fprintf(f, ",\"i\":%" PRIu64 ",\"u\":%" PRIu64, r->inter, r->uni);
    } else {
        fputs(",\"cm\":[", f);
        for (size_t k = 0; k < r->n_trip; k++)
            fprintf(f, "%s[%u,%u,%" PRIu64 "]", k ? "," : "", r->trip_gp[2 * k], r->trip_gp[2 * k + 1],
                    r->trip_n[k]);
        fputc(']', f);
    }
    fprintf(f, ",\"ms\":%.1f}\n", r->ms);
    if (fclose(f) != 0) { free(buf); return NULL; }
    return buf;
}

static int whole(const json *v, double max, uint64_t *out) {
    if (!v || v->type != JSON_NUM || v->num < 0 || v->num > max || v->num != (double)(uint64_t)v->num) return 0;
    *out = (uint64_t)v->num;
    return 1;
}

int journal_parse(const char *line, size_t len, journal_rec *r, int refer) {
    memset(r, 0, sizeof *r);
    char err[128];
    json *j = json_parse(line, len, err, sizeof err);
    if (!j) return 1;
    int bad = 1;
    const json *id = json_get(j, "id");
    if (!id || id->type != JSON_STR || !id->len) goto out;
    r->id = strdup(id->str);
    r->ms = json_num(j, "ms", 0);
    if (refer) {
        if (!whole(json_get(j, "i"), 9e15, &r->inter) || !whole(json_get(j, "u"), 9e15, &r->uni) ||
            r->inter > r->uni)
            goto out;
    } else {
        const json *cm = json_get(j, "cm");
        if (!cm || cm->type != JSON_ARR) goto out;
        r->n_trip = cm->len;
        r->trip_gp = malloc((cm->len ? cm->len : 1) * 2 * sizeof(uint32_t));
        r->trip_n = malloc((cm->len ? cm->len : 1) * sizeof(uint64_t));
        if (!r->trip_gp || !r->trip_n) goto out;
        for (size_t k = 0; k < cm->len; k++) {
            const json *t = cm->kids[k];
            uint64_t g, p, c;
            if (t->type != JSON_ARR || t->len != 3 || !whole(t->kids[0], 65536, &g) ||
                !whole(t->kids[1], 65537, &p) || !whole(t->kids[2], 9e15, &c))
                goto out;
            r->trip_gp[2 * k] = (uint32_t)g;
            r->trip_gp[2 * k + 1] = (uint32_t)p;
            r->trip_n[k] = c;
        }
    }
    bad = 0;
out:
    json_free(j);
    if (bad) journal_rec_free(r);
    return bad;
}

// ---------------------------------------------------------------------------------------------
// the file side: header, complete lines, torn tail cut off, append + flush, one writer (flock)

carseg_status jlog_open(const char *path, const char *header, int fresh, jlog_line_fn fn,
                        void *user, FILE **out, int *n_torn) {
    *out = NULL;
    if (n_torn) *n_torn = 0;
    long good_end = -1;
    if (!fresh && file_exists(path)) {
        uint8_t *buf;
        size_t len;
        TRY(read_file(path, &buf, &len));
        const char *p = (const char *)buf, *end = p + len;
        size_t hl = strlen(header);
        const char *nl = memchr(p, '\n', len);
        if (nl && ((size_t)(nl - p) != hl || memcmp(p, header, hl) != 0)) {
            carseg_status st = set_err(CARSEG_EINVAL, "%s: journal of a different run (header %.*s)",
                                       path, (int)((nl - p) > 200 ? 200 : (nl - p)), p);
            free(buf);
            return st;
        }
        if (nl) {   /* (no complete header line: a kill while starting it; start again) */
            p = nl + 1;
            good_end = (long)(p - (const char *)buf);
            while (p < end) {
                nl = memchr(p, '\n', (size_t)(end - p));
                if (!nl || fn(user, p, (size_t)(nl - p)) != 0) {
                    if (n_torn) (*n_torn)++;
                    break;
                }
                p = nl + 1;
                good_end = (long)(p - (const char *)buf);
            }
        }
        free(buf);
    }
    if (good_end < 0) {   /* a new journal: the header line, atomically */
        size_t hl = strlen(header);
        char *h = malloc(hl + 2);
        if (!h) return set_err(CARSEG_ENOMEM, "%s: journal header", path);
        memcpy(h, header, hl);
        h[hl] = '\n';
        h[hl + 1] = 0;
        carseg_status st = write_file_atomic(path, h, hl + 1);
        free(h);
        if (st) return st;
    } else if (truncate(path, good_end) != 0) {
        return set_err(CARSEG_EIO, "%s: cannot cut the torn journal tail: %s", path, strerror(errno));
    }
    FILE *f = fopen(path, "ab");
    if (!f) return set_err(CARSEG_EIO, "%s: cannot open the journal: %s", path, strerror(errno));
    if (flock(fileno(f), LOCK_EX | LOCK_NB) != 0) {
        fclose(f);
        return set_err(CARSEG_EIO, "%s: the journal is in use by another process", path);
    }
    *out = f;
    return CARSEG_OK;
}

carseg_status jlog_append(FILE *f, const char *line, int sync) {
    size_t l = strlen(line);
    if (fwrite(line, 1, l, f) != l || fflush(f) != 0)
        return set_err(CARSEG_EIO, "journal write failed: %s", strerror(errno));
    if (sync) fdatasync(fileno(f));
    return CARSEG_OK;
}
