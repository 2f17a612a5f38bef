/* fuzz_rle.c — libFuzzer target for the COCO RLE parser (src/rle.c): any string must be
 * rejected cleanly or give counts that decode, re-encode to the same counts and stay within h*w.
 *   make fuzz && build/fuzz/fuzz_rle -max_len=4096 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carseg.h"
#include "rle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int h = 1 + data[0] % 24, w = 1 + data[1] % 24;   /* the first two bytes pick the size */
    char *s = malloc(size - 1);
    if (!s) return 0;
    memcpy(s, data + 2, size - 2);
    s[size - 2] = 0;
    uint64_t hw = (uint64_t)h * (uint64_t)w;
    uint32_t *cnts = NULL;
    size_t n = 0;
    if (cs_rle_parse(s, hw, &cnts, &n) == 0) {
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++) sum += cnts[i];
        if (sum > hw) abort();
        uint8_t *m = malloc((size_t)hw);
        if (m && sum == hw && cs_rle_to_mask(cnts, n, h, w, m) == 0) {
            /* the canonical encoding of the decoded mask parses back to the same mask */
            char *r = NULL;
            uint8_t *m2 = malloc((size_t)hw);
            if (carseg_rle_encode(m, h, w, &r) == CARSEG_OK && m2) {
                if (carseg_rle_decode(r, h, w, m2, NULL, NULL) != CARSEG_OK) abort();
                if (memcmp(m, m2, (size_t)hw) != 0) abort();
            }
            free(r);
            free(m2);
        }
        free(m);
        double bb[4];
        cs_rle_bbox(cnts, n, h, bb);
        (void)cs_rle_area(cnts, n);
        char *again = cs_rle_string(cnts, n);
        uint32_t *c2 = NULL;
        size_t n2 = 0;
        if (again && (cs_rle_parse(again, hw, &c2, &n2) != 0 || n2 != n ||
                      (n && memcmp(c2, cnts, n * sizeof *cnts) != 0)))
            abort();
        free(c2);
        free(again);
    }
    uint8_t mm[24 * 24];
    (void)carseg_rle_decode(s, h, w, mm, NULL, NULL);
    free(cnts);
    free(s);
    return 0;
}
