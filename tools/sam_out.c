/* sam_out.c — `carseg sam` outputs: NAME.sam.json records and NAME.sam.png. See sam_out.h. */
#include "sam_out.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "rle.h"
#include "util.h"

static void put_num(FILE *f, double v) {
    if (!isfinite(v)) { fputs("null", f); return; }
    if (v == floor(v) && fabs(v) < 1e15) fprintf(f, "%.1f", v);
    else fprintf(f, "%.17g", v);
}

/* a fixed palette: well-separated hues from the golden-ratio sequence */
static void mask_color(int k, uint8_t c[3]) {
    double hue = fmod(0.13 + 0.618033988749895 * k, 1.0) * 6.0;
    int i = (int)hue;
    double f = hue - i, s = 0.75, v = 0.95;
    double p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    double rgb[6][3] = {{v, t, p}, {q, v, p}, {p, v, t}, {p, q, v}, {t, p, v}, {v, p, q}};
    for (int j = 0; j < 3; j++) c[j] = (uint8_t)lrint(255 * rgb[i % 6][j]);
}

static uint64_t rec_area(const sam_out_rec *r) { return cs_rle_area(r->counts, r->n_counts); }

carseg_status sam_write_outputs(const char *dir, const char *name, const uint8_t *rgb, int w, int h,
                                const sam_out_rec *recs, int n) {
    TRY(mkdir_p(dir));
    size_t hw = (size_t)w * h;
    char *path = malloc(strlen(dir) + strlen(name) + 16);
    if (!path) return set_err(CARSEG_ENOMEM, "sam: out of memory");
    /* JSON */
    sprintf(path, "%s/%s.sam.json", dir, name);
    atomic_file af;
    carseg_status st = atomic_open(&af, path);
    if (st != CARSEG_OK) { free(path); return st; }
    FILE *f = af.f;
    fputc('[', f);
    for (int k = 0; k < n; k++) {
        const sam_out_rec *r = &recs[k];
        char *s = cs_rle_string(r->counts, r->n_counts);
        if (!s) { atomic_abort(&af); free(path); return set_err(CARSEG_ENOMEM, "sam: out of memory"); }
        fprintf(f, "%s\n {\"segmentation\": {\"size\": [%d, %d], \"counts\": ", k ? "," : "", h, w);
        json_write_str(f, s);
        free(s);
        fprintf(f, "}, \"area\": %llu, \"bbox\": [", (unsigned long long)rec_area(r));
        for (int c = 0; c < 4; c++) { if (c) fputs(", ", f); put_num(f, r->bbox[c]); }
        fputs("], \"predicted_iou\": ", f);
        put_num(f, r->predicted_iou);
        fputs(", \"point_coords\": [", f);
        for (int p = 0; p < r->n_points; p++) {
            fputs(p ? ", [" : "[", f);
            put_num(f, r->points[2 * p]);
            fputs(", ", f);
            put_num(f, r->points[2 * p + 1]);
            fputc(']', f);
        }
        fputc(']', f);
        if (!isnan(r->stability_score)) {
            fputs(", \"stability_score\": ", f);
            put_num(f, r->stability_score);
        }
        if (r->has_crop_box) fprintf(f, ", \"crop_box\": [0, 0, %d, %d]", w, h);
        fputc('}', f);
    }
    fputs(n ? "\n]\n" : "]\n", f);
    st = atomic_commit(&af);
    if (st != CARSEG_OK) { free(path); return st; }
    /* PNG: masks blended over the image, largest first (as segment_anything's show_anns) */
    uint8_t *out = malloc(hw * 3), *m = malloc(hw);
    int *ord = malloc(sizeof(int) * (size_t)(n ? n : 1));
    if (!out || !m || !ord) {
        free(out); free(m); free(ord); free(path);
        return set_err(CARSEG_ENOMEM, "sam: out of memory");
    }
    memcpy(out, rgb, hw * 3);
    for (int k = 0; k < n; k++) ord[k] = k;
    for (int i = 1; i < n; i++) {   /* stable insertion sort by area, descending */
        int v = ord[i], j = i - 1;
        while (j >= 0 && rec_area(&recs[ord[j]]) < rec_area(&recs[v])) { ord[j + 1] = ord[j]; j--; }
        ord[j + 1] = v;
    }
    for (int i = 0; i < n; i++) {
        int k = ord[i];
        if (cs_rle_to_mask(recs[k].counts, recs[k].n_counts, h, w, m) != 0) continue;
        uint8_t c[3];
        mask_color(k, c);
        for (size_t t = 0; t < hw; t++)
            if (m[t])
                for (int j = 0; j < 3; j++) out[3 * t + j] = (uint8_t)((out[3 * t + j] + c[j] + 1) / 2);
    }
    sprintf(path, "%s/%s.sam.png", dir, name);
    st = image_save_png_rgb(path, out, w, h);
    free(out); free(m); free(ord); free(path);
    return st;
}
