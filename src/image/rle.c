/* rle.c — COCO compressed RLE (see rle.h), the same bytes as pycocotools' maskApi.c. */
#include "rle.h"

#include <stdlib.h>
#include <string.h>

size_t cs_rle_counts(const uint8_t *mask, int h, int w, uint32_t *counts) {
    if (h < 0 || w < 0) return 0;
    uint64_t a = (uint64_t)h * (uint64_t)w;
    if (a > UINT32_MAX) return 0;
    size_t k = 0;
    uint32_t c = 0;
    int p = 0;
    for (int x = 0; x < w; x++)
        for (int y = 0; y < h; y++) {
            int v = mask[(size_t)y * (size_t)w + (size_t)x] != 0;
            if (v != p) { counts[k++] = c; c = 0; p = v; }
            c++;
        }
    counts[k++] = c;
    return k;
}

char *cs_rle_string(const uint32_t *counts, size_t n) {
    /* a delta lies in (-2^32, 2^32): 34 bits with the sign, 7 groups of 5 at most */
    if (n > (SIZE_MAX - 1) / 7) return NULL;
    char *s = malloc(n * 7 + 1);
    if (!s) return NULL;
    size_t p = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t x = (int64_t)counts[i];
        if (i > 2) x -= (int64_t)counts[i - 2];
        int more = 1;
        while (more) {
            int c = (int)(x & 0x1f);
            x = (x - c) / 32;                 /* arithmetic shift by 5, without relying on >> */
            more = (c & 0x10) ? x != -1 : x != 0;
            if (more) c |= 0x20;
            s[p++] = (char)(c + 48);
        }
    }
    s[p] = 0;
    return s;
}

int cs_rle_parse(const char *s, uint64_t hw, uint32_t **counts, size_t *n) {
    *counts = NULL;
    *n = 0;
    size_t len = strlen(s);
    uint32_t *cnts = len ? malloc(len * sizeof *cnts) : NULL;   /* >= 1 char per count */
    if (len && !cnts) return -1;
    size_t m = 0, p = 0;
    uint64_t sum = 0;
    while (s[p]) {
        uint64_t ux = 0;
        int k = 0, more = 1, neg = 0;
        while (more) {
            unsigned char ch = (unsigned char)s[p];
            if (ch < 48 || ch > 48 + 63) goto bad;   /* also catches the NUL of a cut group */
            int c = ch - 48;
            if (k == 7) goto bad;                     /* beyond 35 bits: no 32-bit count */
            ux |= (uint64_t)(c & 0x1f) << (5 * k);
            more = c & 0x20;
            p++;
            k++;
            if (!more && (c & 0x10)) neg = 1;
        }
        int64_t x = neg ? (int64_t)ux - ((int64_t)1 << (5 * k)) : (int64_t)ux;
        if (m > 2) x += (int64_t)cnts[m - 2];
        if (x < 0 || x > (int64_t)UINT32_MAX) goto bad;
        sum += (uint64_t)x;
        if (sum > hw) goto bad;
        cnts[m++] = (uint32_t)x;
    }
    *counts = cnts;
    *n = m;
    if (!m) { free(cnts); *counts = NULL; }
    return 0;
bad:
    free(cnts);
    return -1;
}

int cs_rle_to_mask(const uint32_t *counts, size_t n, int h, int w, uint8_t *mask) {
    if (h < 0 || w < 0) return -1;
    uint64_t a = (uint64_t)h * (uint64_t)w, sum = 0;
    for (size_t j = 0; j < n; j++) {
        sum += counts[j];
        if (sum > a) return -1;
    }
    if (sum != a) return -1;
    uint64_t x = 0;   /* column-major position */
    uint8_t v = 0;
    for (size_t j = 0; j < n; j++, v = !v)
        for (uint32_t k = 0; k < counts[j]; k++, x++) {
            uint64_t col = x / (uint64_t)h, row = x % (uint64_t)h;
            mask[row * (uint64_t)w + col] = v;
        }
    return 0;
}

uint64_t cs_rle_area(const uint32_t *counts, size_t n) {
    uint64_t a = 0;
    for (size_t j = 1; j < n; j += 2) a += counts[j];
    return a;
}

void cs_rle_bbox(const uint32_t *counts, size_t n, int h, double bbox[4]) {
    size_t m = n / 2 * 2;
    bbox[0] = bbox[1] = bbox[2] = bbox[3] = 0;
    if (m == 0 || h <= 0) return;
    uint64_t H = (uint64_t)h, xs = UINT64_MAX, ys = H, xe = 0, ye = 0, cc = 0, xp = 0;
    for (size_t j = 0; j < m; j++) {
        cc += counts[j];
        if (cc < j % 2) continue;   /* leading empty runs (not produced by an encoder) */
        uint64_t t = cc - j % 2, y = t % H, x = t / H;
        if (j % 2 == 0) xp = x;
        else if (xp < x) { ys = 0; ye = H - 1; }
        if (x < xs) xs = x;
        if (x > xe) xe = x;
        if (y < ys) ys = y;
        if (y > ye) ye = y;
    }
    if (xs == UINT64_MAX) return;
    bbox[0] = (double)xs;
    bbox[2] = (double)(xe - xs + 1);
    bbox[1] = (double)ys;
    bbox[3] = (double)(ye - ys + 1);
}

// ---------------------------------------------------------------------------------------------
// public wrappers (carseg.h)

#include "util.h"

carseg_status carseg_rle_encode(const uint8_t *mask, int h, int w, char **rle_out) {
    *rle_out = NULL;
    if (h < 0 || w < 0 || (uint64_t)h * (uint64_t)w > UINT32_MAX)
        return set_err(CARSEG_EINVAL, "rle encode: mask size %dx%d out of range", h, w);
    if ((h == 0 || w == 0) || mask) {
        size_t hw = (size_t)h * (size_t)w;
        uint32_t *cnts = malloc((hw + 1) * sizeof *cnts);
        if (!cnts) return set_err(CARSEG_ENOMEM, "rle encode: out of memory");
        size_t n = cs_rle_counts(mask, h, w, cnts);
        *rle_out = cs_rle_string(cnts, n);
        free(cnts);
        if (!*rle_out) return set_err(CARSEG_ENOMEM, "rle encode: out of memory");
        return CARSEG_OK;
    }
    return set_err(CARSEG_EINVAL, "rle encode: mask is NULL");
}

carseg_status carseg_rle_decode(const char *rle, int h, int w, uint8_t *mask, uint64_t *area,
                                double bbox[4]) {
    if (!rle) return set_err(CARSEG_EINVAL, "rle decode: string is NULL");
    if (h < 0 || w < 0 || (uint64_t)h * (uint64_t)w > UINT32_MAX)
        return set_err(CARSEG_EINVAL, "rle decode: mask size %dx%d out of range", h, w);
    uint64_t hw = (uint64_t)h * (uint64_t)w, sum = 0;
    uint32_t *cnts;
    size_t n;
    if (cs_rle_parse(rle, hw, &cnts, &n) != 0)
        return set_err(CARSEG_EFORMAT, "rle decode: malformed counts string (bad character, cut "
                       "group, overflow, negative count, or runs beyond %dx%d)", h, w);
    for (size_t j = 0; j < n; j++) sum += cnts[j];
    if (sum != hw) {
        free(cnts);
        return set_err(CARSEG_EFORMAT, "rle decode: runs cover %llu pixels, the mask has %llu",
                       (unsigned long long)sum, (unsigned long long)hw);
    }
    if (mask) cs_rle_to_mask(cnts, n, h, w, mask);
    if (area) *area = cs_rle_area(cnts, n);
    if (bbox) cs_rle_bbox(cnts, n, h, bbox);
    free(cnts);
    return CARSEG_OK;
}
