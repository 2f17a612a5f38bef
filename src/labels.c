/* labels.c — label-map files: ground truth and predictions as PNG (palette indices, 8/16-bit
 * gray) or TIFF (8/16-bit, one channel), read as raw ids (what np.asarray(Image.open(p)) gives
 * for these modes), written as palette PNG (ids < 256) or 16-bit gray PNG. */
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>

#include "eval.h"

#define LABELS_MAX_PIXELS (1u << 28)   /* 16384 x 16384: anything larger is rejected */

/* libpng's default handlers print to stderr; the library reports through set_err instead */
static void png_err_quiet(png_structp png, png_const_charp msg) {
    (void)msg;
    png_longjmp(png, 1);
}
static void png_warn_quiet(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static carseg_status read_png(const char *path, FILE *f, int *w, int *h, uint16_t **out) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, png_err_quiet, png_warn_quiet);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint16_t *volatile v = NULL;       /* volatile: modified between setjmp and longjmp */
    uint8_t *volatile rowbuf = NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return set_err(CARSEG_ENOMEM, "%s: cannot start PNG decoder", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(v);
        free(rowbuf);
        return set_err(CARSEG_EFORMAT, "%s: corrupt or truncated PNG", path);
    }
    png_init_io(png, f);
    png_read_info(png, info);
    png_uint_32 pw = png_get_image_width(png, info), ph = png_get_image_height(png, info);
    int depth = png_get_bit_depth(png, info), ctype = png_get_color_type(png, info);
    int interlace = png_get_interlace_type(png, info);
    if (ctype != PNG_COLOR_TYPE_PALETTE && ctype != PNG_COLOR_TYPE_GRAY) {
        png_destroy_read_struct(&png, &info, NULL);
        return set_err(CARSEG_EFORMAT,
                       "%s: label PNG must be palette or single-channel gray (colour type %d)",
                       path, ctype);
    }
    if (pw == 0 || ph == 0 || (uint64_t)pw * ph > LABELS_MAX_PIXELS) {
        png_destroy_read_struct(&png, &info, NULL);
        return set_err(CARSEG_EFORMAT, "%s: bad image size %ux%u", path, (unsigned)pw, (unsigned)ph);
    }
    if (depth < 8) png_set_packing(png);      /* 1/2/4-bit -> one byte per pixel, raw value */
    if (depth == 16) png_set_swap(png);       /* little-endian uint16 in memory */
    if (interlace != PNG_INTERLACE_NONE) png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t rb = png_get_rowbytes(png, info);
    size_t bpp = depth == 16 ? 2 : 1;
    if (rb < (size_t)pw * bpp) png_error(png, "row size");
    v = malloc((size_t)pw * ph * sizeof(uint16_t));
    rowbuf = malloc(rb * (interlace != PNG_INTERLACE_NONE ? ph : 1));
    if (!v || !rowbuf) png_error(png, "out of memory");
    if (interlace != PNG_INTERLACE_NONE) {
        png_bytep *rows = malloc(ph * sizeof(png_bytep));
        if (!rows) png_error(png, "out of memory");
        for (png_uint_32 y = 0; y < ph; y++) rows[y] = rowbuf + y * rb;
        png_read_image(png, rows);
        free(rows);
        for (png_uint_32 y = 0; y < ph; y++)
            for (png_uint_32 x = 0; x < pw; x++)
                v[(size_t)y * pw + x] = bpp == 2 ? ((uint16_t *)(rowbuf + y * rb))[x] : rowbuf[y * rb + x];
    } else {
        for (png_uint_32 y = 0; y < ph; y++) {
            png_read_row(png, rowbuf, NULL);
            for (png_uint_32 x = 0; x < pw; x++) {
                uint16_t val;
                if (bpp == 2) memcpy(&val, rowbuf + 2 * x, 2);
                else val = rowbuf[x];
                v[(size_t)y * pw + x] = val;
            }
        }
    }
    png_destroy_read_struct(&png, &info, NULL);
    free(rowbuf);
    *w = (int)pw;
    *h = (int)ph;
    *out = v;
    return CARSEG_OK;
}

static void tiff_quiet(const char *mod, const char *fmt, va_list ap) {
    (void)mod; (void)fmt; (void)ap;
}

static carseg_status read_tiff(const char *path, int *w, int *h, uint16_t **out) {
    TIFFSetErrorHandler(tiff_quiet);
    TIFFSetWarningHandler(tiff_quiet);
    TIFF *t = TIFFOpen(path, "r");
    if (!t) return set_err(CARSEG_EFORMAT, "%s: not a readable TIFF", path);
    uint32_t tw = 0, th = 0;
    uint16_t bps = 0, spp = 1, fmt = SAMPLEFORMAT_UINT;
    TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &tw);
    TIFFGetField(t, TIFFTAG_IMAGELENGTH, &th);
    TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bps);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &fmt);
    if (tw == 0 || th == 0 || (uint64_t)tw * th > LABELS_MAX_PIXELS || spp != 1 ||
        (bps != 8 && bps != 16) || (fmt != SAMPLEFORMAT_UINT && fmt != SAMPLEFORMAT_INT)) {
        TIFFClose(t);
        return set_err(CARSEG_EFORMAT,
                       "%s: label TIFF must be one 8/16-bit unsigned channel (%ux%u, %u bits, %u samples)",
                       path, (unsigned)tw, (unsigned)th, (unsigned)bps, (unsigned)spp);
    }
    tmsize_t sl = TIFFScanlineSize(t);
    if (sl < (tmsize_t)((size_t)tw * (bps / 8))) {
        TIFFClose(t);
        return set_err(CARSEG_EFORMAT, "%s: TIFF scanline size %ld too small", path, (long)sl);
    }
    uint16_t *v = malloc((size_t)tw * th * sizeof(uint16_t));
    uint8_t *buf = malloc((size_t)sl);
    if (!v || !buf) {
        free(v);
        free(buf);
        TIFFClose(t);
        return set_err(CARSEG_ENOMEM, "%s: %ux%u labels", path, (unsigned)tw, (unsigned)th);
    }
    for (uint32_t y = 0; y < th; y++) {
        if (TIFFReadScanline(t, buf, y, 0) < 0) {
            free(v);
            free(buf);
            TIFFClose(t);
            return set_err(CARSEG_EFORMAT, "%s: truncated TIFF (row %u)", path, (unsigned)y);
        }
        for (uint32_t x = 0; x < tw; x++) {
            uint16_t val;
            if (bps == 16) memcpy(&val, buf + 2 * x, 2);   /* libtiff returns host order */
            else val = buf[x];
            v[(size_t)y * tw + x] = val;
        }
    }
    free(buf);
    TIFFClose(t);
    *w = (int)tw;
    *h = (int)th;
    *out = v;
    return CARSEG_OK;
}

carseg_status labels_read(const char *path, int *w, int *h, uint16_t **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(CARSEG_EIO, "%s: cannot open label file", path);
    uint8_t sig[8] = {0};
    size_t got = fread(sig, 1, 8, f);
    carseg_status st;
    if (got == 8 && !png_sig_cmp(sig, 0, 8)) {
        rewind(f);
        st = read_png(path, f, w, h, out);
        fclose(f);
    } else if (got >= 4 && ((sig[0] == 'I' && sig[1] == 'I') || (sig[0] == 'M' && sig[1] == 'M'))) {
        fclose(f);
        st = read_tiff(path, w, h, out);
    } else {
        fclose(f);
        st = set_err(CARSEG_EFORMAT, "%s: label file is neither PNG nor TIFF", path);
    }
    return st;
}

static void voc_colormap(uint8_t pal[256 * 3]) {
    for (int i = 0; i < 256; i++) {
        int r = 0, g = 0, b = 0, c = i;
        for (int j = 7; j >= 0; j--) {
            r |= ((c >> 0) & 1) << j;
            g |= ((c >> 1) & 1) << j;
            b |= ((c >> 2) & 1) << j;
            c >>= 3;
        }
        pal[3 * i] = (uint8_t)r;
        pal[3 * i + 1] = (uint8_t)g;
        pal[3 * i + 2] = (uint8_t)b;
    }
}

carseg_status labels_write_png(const char *path, const uint16_t *v, int w, int h) {
    if (w <= 0 || h <= 0) return set_err(CARSEG_EINVAL, "%s: bad label map size %dx%d", path, w, h);
    size_t n = (size_t)w * h;
    uint16_t mx = 0;
    for (size_t i = 0; i < n; i++) if (v[i] > mx) mx = v[i];
    int sixteen = mx > 255;
    atomic_file af;
    TRY(atomic_open(&af, path));
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, png_err_quiet, png_warn_quiet);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint8_t *row = malloc((size_t)w * 2);
    if (!info || !row) {
        png_destroy_write_struct(&png, &info);
        free(row);
        atomic_abort(&af);
        return set_err(CARSEG_ENOMEM, "%s: cannot start PNG encoder", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(row);
        atomic_abort(&af);
        return set_err(CARSEG_EIO, "%s: PNG write failed", path);
    }
    png_init_io(png, af.f);
    png_set_compression_level(png, 1);
    if (sixteen) {
        png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 16, PNG_COLOR_TYPE_GRAY,
                     PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    } else {
        uint8_t pal[256 * 3];
        png_color colors[256];
        voc_colormap(pal);
        for (int i = 0; i < 256; i++) colors[i] = (png_color){pal[3 * i], pal[3 * i + 1], pal[3 * i + 2]};
        png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_PALETTE,
                     PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_set_PLTE(png, info, colors, 256);
    }
    png_write_info(png, info);
    for (int y = 0; y < h; y++) {
        const uint16_t *src = v + (size_t)y * w;
        if (sixteen) {
            for (int x = 0; x < w; x++) {
                row[2 * x] = (uint8_t)(src[x] >> 8);   /* PNG is big-endian */
                row[2 * x + 1] = (uint8_t)src[x];
            }
        } else {
            for (int x = 0; x < w; x++) row[x] = (uint8_t)src[x];
        }
        png_write_row(png, row);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(row);
    return atomic_commit(&af);
}
