/* labels.c — label-map files for evaluation (ground truth and predictions), on top of image.c:
 * palette PNGs are read as their raw indices (VOC ground truth, np.asarray(Image.open(p))),
 * gray 8/16-bit PNGs and 8/16-bit TIFFs as values. (Label maps are written by the one writer,
 * carseg_labels_save_png / image_save_labels in image.c.) */
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

