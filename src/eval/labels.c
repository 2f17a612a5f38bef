/* labels.c — label-map files for evaluation (ground truth and predictions), on top of image.c:
 * palette PNGs are read as their raw indices (VOC ground truth, np.asarray(Image.open(p))),
 * gray 8/16-bit PNGs and 8/16-bit TIFFs as values; written as a VOC-palette PNG when every id
 * is < 256, else as a 16-bit gray PNG. */
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "image.h"

carseg_status labels_read(const char *path, int *w, int *h, uint16_t **out) {
    *out = NULL;
    uint8_t *d;
    size_t n;
    TRY(read_file(path, &d, &n));
    /* PNG: signature (8) + IHDR length (4) + "IHDR" (4) + width, height (8) + depth (1) + type */
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    int palette = n > 25 && !memcmp(d, sig, 8) && !memcmp(d + 12, "IHDR", 4) && d[25] == 3;
    carseg_status st;
    if (palette) {
        image_u8 im;
        st = image_decode_indexed(path, d, n, &im);
        if (!st) {
            size_t np = (size_t)im.w * im.h;
            uint16_t *v = malloc((np ? np : 1) * sizeof *v);
            if (!v) st = set_err(CARSEG_ENOMEM, "%s: %dx%d labels", path, im.w, im.h);
            else {
                for (size_t i = 0; i < np; i++) v[i] = im.px[i];
                *w = im.w;
                *h = im.h;
                *out = v;
            }
            image_free(&im);
        }
    } else {
        st = image_decode_labels16(path, d, n, w, h, out);
    }
    free(d);
    return st;
}

carseg_status labels_write_png(const char *path, const uint16_t *v, int w, int h) {
    if (w <= 0 || h <= 0) return set_err(CARSEG_EINVAL, "%s: bad label map size %dx%d", path, w, h);
    size_t n = (size_t)w * h;
    uint16_t mx = 0;
    for (size_t i = 0; i < n; i++) if (v[i] > mx) mx = v[i];
    if (mx > 255) return image_save_png_gray16(path, v, w, h);
    uint8_t *idx = malloc(n), pal[256 * 3];
    if (!idx) return set_err(CARSEG_ENOMEM, "%s: %dx%d labels", path, w, h);
    for (size_t i = 0; i < n; i++) idx[i] = (uint8_t)v[i];
    voc_palette(pal);
    carseg_status st = image_save_png_palette(path, idx, w, h, pal, 256);
    free(idx);
    return st;
}
