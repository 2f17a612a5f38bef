/* outputs.c — what `carseg segment` writes for labeling tools (label.h): the journal record of
 * an image (classes found, score, COCO RLE), per-class mask PNGs, the CVAT "Segmentation Mask 1.1"
 * zip and the COCO instances JSON. Every file goes through temp + rename.
 *
 * The zip is written here (stored entries, zlib's crc32) rather than with libzip: the archive
 * holds PNGs (already deflated), a zip of stored entries is ~80 lines, and fixed timestamps make
 * the bytes reproducible (a resumed run ends with the same zip as an uninterrupted one). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "image.h"
#include "label.h"
#include "rle.h"
#include "util.h"

// ---------------------------------------------------------------------------------------------
// formats, colours

int label_formats_parse(const char *list, unsigned *fmt, char *err, size_t errlen) {
    static const struct { const char *name; unsigned bit; } tab[] = {
        {"png", LABEL_FMT_PNG}, {"overlay", LABEL_FMT_OVERLAY}, {"json", LABEL_FMT_JSON},
        {"masks", LABEL_FMT_MASKS}, {"cvat", LABEL_FMT_CVAT}};
    *fmt = 0;
    const char *p = list;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        size_t k = 0;
        for (; k < sizeof tab / sizeof *tab; k++)
            if (strlen(tab[k].name) == l && !strncmp(tab[k].name, p, l)) break;
        if (k == sizeof tab / sizeof *tab) {
            snprintf(err, errlen, "--format: unknown format '%.*s' (png, overlay, json, masks, cvat)",
                     (int)(l > 64 ? 64 : l), p);
            return -1;
        }
        *fmt |= tab[k].bit;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

void label_class_color(int k, uint8_t rgb[3]) {
    if (k >= 0 && k < 256) {
        uint8_t pal[768];
        voc_palette(pal);
        memcpy(rgb, pal + 3 * k, 3);
    } else {   /* beyond the VOC palette: a hashed colour */
        unsigned v = (unsigned)k * 2654435761u;
        rgb[0] = (uint8_t)(v >> 8), rgb[1] = (uint8_t)(v >> 16), rgb[2] = (uint8_t)(v >> 24);
    }
}

// ---------------------------------------------------------------------------------------------
// journal records: {"id":"a/b","w":40,"h":32,"a":[[3,0.912345,"RLE"],...]}

char *label_rec_format(const char *name, const uint16_t *lab, int w, int h, const float *scores,
                       int n_names) {
    size_t hw = (size_t)w * h;
    char *present = calloc((size_t)n_names + 1, 1);
    uint8_t *m = malloc(hw ? hw : 1);
    uint32_t *cnts = malloc((hw + 1) * sizeof *cnts);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = present && m && cnts ? open_memstream(&buf, &len) : NULL;
    if (!f) { free(present), free(m), free(cnts); return NULL; }
    for (size_t i = 0; i < hw; i++) if (lab[i] >= 1 && lab[i] <= n_names) present[lab[i]] = 1;
    fputs("{\"id\":", f);
    json_write_str(f, name);
    fprintf(f, ",\"w\":%d,\"h\":%d,\"a\":[", w, h);
    int first = 1, bad = 0;
    for (int k = 1; k <= n_names && !bad; k++) {
        if (!present[k]) continue;
        for (size_t i = 0; i < hw; i++) m[i] = lab[i] == k;
        size_t n = cs_rle_counts(m, h, w, cnts);
        char *s = n ? cs_rle_string(cnts, n) : NULL;
        if (!s) { bad = 1; break; }
        /* (RLE characters run '0'..'o': '\\' among them, so it goes through the JSON escaper) */
        fprintf(f, "%s[%d,%.9g,", first ? "" : ",", k, isfinite(scores[k - 1]) ? (double)scores[k - 1] : 0.0);
        json_write_str(f, s);
        fputc(']', f);
        free(s);
        first = 0;
    }
    fputs("]}\n", f);
    free(present), free(m), free(cnts);
    if (fclose(f) != 0 || bad) { free(buf); return NULL; }
    return buf;
}

void label_rec_free(label_rec *r) {
    if (!r) return;
    for (int j = 0; j < r->n_ann; j++) free(r->ann[j].rle);
    free(r->ann);
    free(r->name);
    memset(r, 0, sizeof *r);
}

int label_rec_parse(const char *line, size_t len, int n_names, label_rec *r) {
    memset(r, 0, sizeof *r);
    char err[128];
    json *j = json_parse(line, len, err, sizeof err);
    if (!j) return 1;
    int bad = 1;
    const json *id = json_get(j, "id"), *a = json_get(j, "a");
    double w = json_num(j, "w", -1), h = json_num(j, "h", -1);
    if (!id || id->type != JSON_STR || !id->len || !a || a->type != JSON_ARR) goto out;
    if (!(w >= 1 && h >= 1 && w <= 1e6 && h <= 1e6 && w == (int)w && h == (int)h) || w * h > 4e9) goto out;
    r->name = cs_strdup(id->str);
    r->w = (int)w, r->h = (int)h;
    r->ann = calloc(a->len ? a->len : 1, sizeof *r->ann);
    if (!r->name || !r->ann) goto out;
    for (size_t k = 0; k < a->len; k++) {
        const json *t = a->kids[k];
        if (t->type != JSON_ARR || t->len != 3 || t->kids[0]->type != JSON_NUM ||
            t->kids[1]->type != JSON_NUM || t->kids[2]->type != JSON_STR)
            goto out;
        double kk = t->kids[0]->num;
        if (!(kk >= 1 && kk <= n_names && kk == (int)kk)) goto out;
        uint32_t *c;
        size_t n;
        if (cs_rle_parse(t->kids[2]->str, (uint64_t)r->w * (uint64_t)r->h, &c, &n) != 0) goto out;
        free(c);
        label_ann *an = &r->ann[r->n_ann++];
        an->k = (int)kk;
        an->score = t->kids[1]->num;
        if (!(an->rle = cs_strdup(t->kids[2]->str))) goto out;
    }
    bad = 0;
out:
    json_free(j);
    if (bad) label_rec_free(r);
    return bad;
}

// ---------------------------------------------------------------------------------------------
// masks/NAME/CLASS.png

char **label_mask_names(const char *const *names, int n) {
    char **v = calloc((size_t)(n ? n : 1), sizeof *v);
    if (!v) return NULL;
    for (int k = 0; k < n; k++) {
        size_t l = strlen(names[k]);
        char *s = malloc(l + 16);
        if (!s) goto fail;
        for (size_t i = 0; i < l; i++) {
            unsigned char c = (unsigned char)names[k][i];
            s[i] = (c == '/' || c == '\\' || c < 0x20 || c == 0x7f) ? '_' : (char)c;
        }
        s[l] = 0;
        if (!l || !strcmp(s, ".") || !strcmp(s, "..") || s[0] == '.') {   /* no hidden/empty names */
            memmove(s + 1, s, l + 1);
            s[0] = '_';
        }
        int clash = 0;
        for (int j = 0; j < k && !clash; j++) clash = !strcmp(v[j], s);
        if (clash) snprintf(s + strlen(s), 16, "_%d", k + 1);   /* label ids are unique */
        v[k] = s;
    }
    return v;
fail:
    for (int k = 0; k < n; k++) free(v[k]);
    free(v);
    return NULL;
}

carseg_status label_write_masks(const char *out_dir, const char *name, const uint16_t *lab, int w,
                                int h, char *const *mask_names, int n_names) {
    size_t hw = (size_t)w * h;
    char *present = calloc((size_t)n_names + 1, 1);
    uint8_t *m = malloc(hw ? hw : 1);
    if (!present || !m) { free(present), free(m); return set_err(CARSEG_ENOMEM, "masks: out of memory"); }
    for (size_t i = 0; i < hw; i++) if (lab[i] >= 1 && lab[i] <= n_names) present[lab[i]] = 1;
    char dir[4096], path[8192];
    snprintf(dir, sizeof dir, "%s/masks/%s", out_dir, name);
    carseg_status st = mkdir_p(dir);
    uint8_t gray[6] = {0, 0, 0, 255, 255, 255};
    for (int k = 1; k <= n_names && st == CARSEG_OK; k++) {
        if (!present[k]) continue;
        for (size_t i = 0; i < hw; i++) m[i] = lab[i] == k;
        snprintf(path, sizeof path, "%s/%s.png", dir, mask_names[k - 1]);
        st = image_save_png_palette(path, m, w, h, gray, 2);
    }
    free(present), free(m);
    return st;
}

// ---------------------------------------------------------------------------------------------
// CVAT Segmentation Mask 1.1

carseg_status label_write_cvat_png(const char *out_dir, const char *name, const uint16_t *lab,
                                   int w, int h) {
    size_t hw = (size_t)w * h;
    uint8_t *rgb = malloc(hw ? hw * 3 : 1);
    if (!rgb) return set_err(CARSEG_ENOMEM, "cvat mask: out of memory");
    int last = -1;
    uint8_t c[3] = {0, 0, 0};
    for (size_t i = 0; i < hw; i++) {
        if (lab[i] != last) { last = lab[i]; label_class_color(last, c); }
        memcpy(rgb + 3 * i, c, 3);
    }
    char path[8192];
    snprintf(path, sizeof path, "%s/cvat/SegmentationClass/%s.png", out_dir, name);
    char *sl = strrchr(path, '/');
    *sl = 0;
    carseg_status st = mkdir_p(path);
    *sl = '/';
    if (st == CARSEG_OK) st = image_save_png_rgb(path, rgb, w, h);
    free(rgb);
    return st;
}

static char *labelmap_text(const char *const *names, int n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fputs("# label:color_rgb:parts:actions\nbackground:0,0,0::\n", f);
    for (int k = 1; k <= n; k++) {
        uint8_t c[3];
        label_class_color(k, c);
        for (const char *p = names[k - 1]; *p; p++)   /* ':' and line breaks are the separators */
            fputc(*p == ':' || *p == '\n' || *p == '\r' ? '_' : *p, f);
        fprintf(f, ":%d,%d,%d::\n", c[0], c[1], c[2]);
    }
    if (fclose(f) != 0) { free(buf); return NULL; }
    return buf;
}

carseg_status label_write_cvat(const char *out_dir, const char *const *names, int n_names,
                               const char *const *done_names, int n_done) {
    char path[8192];
    char *lm = labelmap_text(names, n_names);
    char *list = NULL;
    size_t list_len = 0;
    FILE *lf = open_memstream(&list, &list_len);
    if (!lm || !lf) { free(lm); if (lf) fclose(lf); free(list); return set_err(CARSEG_ENOMEM, "cvat: out of memory"); }
    for (int i = 0; i < n_done; i++) fprintf(lf, "%s\n", done_names[i]);
    if (fclose(lf) != 0) { free(lm); free(list); return set_err(CARSEG_ENOMEM, "cvat: out of memory"); }
    snprintf(path, sizeof path, "%s/cvat/ImageSets/Segmentation", out_dir);
    carseg_status st = mkdir_p(path);
    if (!st) { snprintf(path, sizeof path, "%s/cvat/labelmap.txt", out_dir); st = write_file_atomic(path, lm, strlen(lm)); }
    if (!st) {
        snprintf(path, sizeof path, "%s/cvat/ImageSets/Segmentation/default.txt", out_dir);
        st = write_file_atomic(path, list, list_len);
    }
    zipw *z = NULL;
    if (!st) { snprintf(path, sizeof path, "%s/cvat.zip", out_dir); st = zipw_open(path, &z); }
    if (!st) st = zipw_add(z, "labelmap.txt", lm, strlen(lm));
    if (!st) st = zipw_add(z, "ImageSets/Segmentation/default.txt", list, list_len);
    for (int i = 0; i < n_done && !st; i++) {
        char entry[4200];
        snprintf(entry, sizeof entry, "SegmentationClass/%s.png", done_names[i]);
        snprintf(path, sizeof path, "%s/cvat/%s", out_dir, entry);
        uint8_t *d;
        size_t len;
        st = read_file(path, &d, &len);
        if (st) { err_prefix("cvat.zip (rerun with --force to remake it)"); break; }
        st = zipw_add(z, entry, d, len);
        free(d);
    }
    if (z) {
        if (st) zipw_abort(z);
        else st = zipw_close(z);
    }
    free(lm);
    free(list);
    return st;
}

// ---------------------------------------------------------------------------------------------
// COCO instances JSON

carseg_status label_write_coco(const char *path, const label_inputs *in, const label_rec *const *recs,
                               const char *const *names, int n_names) {
    atomic_file af;
    TRY(atomic_open(&af, path));
    FILE *f = af.f;
    fputs("{\n\"images\": [", f);
    int first = 1;
    for (int j = 0; j < in->n; j++) {
        if (!recs[j]) continue;
        fprintf(f, "%s\n  {\"id\": %d, \"file_name\": ", first ? "" : ",", j + 1);
        json_write_str(f, in->v[j].rel);
        fprintf(f, ", \"width\": %d, \"height\": %d}", recs[j]->w, recs[j]->h);
        first = 0;
    }
    fputs("\n],\n\"categories\": [", f);
    for (int k = 1; k <= n_names; k++) {
        fprintf(f, "%s\n  {\"id\": %d, \"name\": ", k > 1 ? "," : "", k);
        json_write_str(f, names[k - 1]);
        fputs(", \"supercategory\": \"\"}", f);
    }
    fputs("\n],\n\"annotations\": [", f);
    long aid = 0;
    carseg_status st = CARSEG_OK;
    for (int j = 0; j < in->n && !st; j++) {
        const label_rec *r = recs[j];
        if (!r) continue;
        for (int a = 0; a < r->n_ann; a++) {
            uint32_t *c;
            size_t n;
            if (cs_rle_parse(r->ann[a].rle, (uint64_t)r->w * (uint64_t)r->h, &c, &n) != 0) {
                st = set_err(CARSEG_EFORMAT, "%s: bad RLE in the journal", r->name);
                break;
            }
            double bb[4];
            cs_rle_bbox(c, n, r->h, bb);
            uint64_t area = cs_rle_area(c, n);
            free(c);
            fprintf(f, "%s\n  {\"id\": %ld, \"image_id\": %d, \"category_id\": %d, \"segmentation\": "
                       "{\"size\": [%d, %d], \"counts\": ", aid ? "," : "", aid + 1, j + 1, r->ann[a].k,
                    r->h, r->w);
            json_write_str(f, r->ann[a].rle);
            fprintf(f, "}, \"area\": %" PRIu64 ", \"bbox\": [%.0f, %.0f, %.0f, %.0f], \"score\": %.6g, "
                       "\"iscrowd\": 0}", area, bb[0], bb[1], bb[2], bb[3], r->ann[a].score);
            aid++;
        }
    }
    fputs("\n]\n}\n", f);
    if (st) { atomic_abort(&af); return st; }
    return atomic_commit(&af);
}

// ---------------------------------------------------------------------------------------------
// zip (stored)

struct zipw {
    atomic_file af;
    uint64_t off;
    char *cd;           /* central directory, built as entries are added */
    size_t cd_len;
    FILE *cdf;
    unsigned n;
};

static void put16(FILE *f, unsigned v) { fputc((int)(v & 255), f); fputc((int)(v >> 8 & 255), f); }
static void put32(FILE *f, uint32_t v) { put16(f, v & 0xffff); put16(f, v >> 16); }

carseg_status zipw_open(const char *path, zipw **out) {
    *out = NULL;
    zipw *z = calloc(1, sizeof *z);
    if (!z) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    carseg_status st = atomic_open(&z->af, path);
    if (st) { free(z); return st; }
    z->cdf = open_memstream(&z->cd, &z->cd_len);
    if (!z->cdf) { atomic_abort(&z->af); free(z); return set_err(CARSEG_ENOMEM, "%s: out of memory", path); }
    *out = z;
    return CARSEG_OK;
}

carseg_status zipw_add(zipw *z, const char *name, const void *data, size_t len) {
    size_t nl = strlen(name);
    if (z->n >= 65535 || nl > 65535 || len >= 0xffffffffu || z->off + 30 + nl + len >= 0xffffffffu)
        return set_err(CARSEG_EINVAL, "%s: more than 65535 files or 4 GiB (zip64 is not written)",
                       z->af.path);
    uLong crc = crc32(0L, Z_NULL, 0);
    const Bytef *p = data;
    for (size_t left = len; left;) {   /* crc32 takes uInt lengths */
        uInt k = left > (1u << 30) ? (1u << 30) : (uInt)left;
        crc = crc32(crc, p, k);
        p += k, left -= k;
    }
    const unsigned flags = 0x0800, time = 0, date = (0 << 9) | (1 << 5) | 1;   /* UTF-8, 1980-01-01 */
    FILE *f = z->af.f;
    put32(f, 0x04034b50); put16(f, 20); put16(f, flags); put16(f, 0); put16(f, time); put16(f, date);
    put32(f, (uint32_t)crc); put32(f, (uint32_t)len); put32(f, (uint32_t)len);
    put16(f, (unsigned)nl); put16(f, 0);
    fwrite(name, 1, nl, f);
    if (len) fwrite(data, 1, len, f);
    FILE *c = z->cdf;
    put32(c, 0x02014b50); put16(c, 0x0314); put16(c, 20); put16(c, flags); put16(c, 0);
    put16(c, time); put16(c, date); put32(c, (uint32_t)crc); put32(c, (uint32_t)len);
    put32(c, (uint32_t)len); put16(c, (unsigned)nl); put16(c, 0); put16(c, 0); put16(c, 0);
    put16(c, 0); put32(c, 0100644u << 16); put32(c, (uint32_t)z->off);
    fwrite(name, 1, nl, c);
    z->off += 30 + nl + len;
    z->n++;
    if (ferror(f)) return set_err(CARSEG_EIO, "%s: write failed: %s", z->af.path, strerror(errno));
    return CARSEG_OK;
}

void zipw_abort(zipw *z) {
    if (!z) return;
    if (z->cdf) fclose(z->cdf);
    free(z->cd);
    atomic_abort(&z->af);
    free(z);
}

carseg_status zipw_close(zipw *z) {
    if (fclose(z->cdf) != 0) {
        z->cdf = NULL;
        zipw_abort(z);
        return set_err(CARSEG_ENOMEM, "zip: out of memory");
    }
    z->cdf = NULL;
    FILE *f = z->af.f;
    if (z->cd_len) fwrite(z->cd, 1, z->cd_len, f);
    put32(f, 0x06054b50); put16(f, 0); put16(f, 0); put16(f, z->n); put16(f, z->n);
    put32(f, (uint32_t)z->cd_len); put32(f, (uint32_t)z->off); put16(f, 0);
    carseg_status st = atomic_commit(&z->af);
    free(z->cd);
    free(z);
    return st;
}
