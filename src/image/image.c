/* image.c — image decoding/encoding and the pixel-exact preprocessing of the reference.
 *
 * Mirrors, bit for bit, what the reference gets from Pillow 9.4 (Debian bookworm):
 *   PIL.Image.open(p).convert("RGB")            -> image_load_rgb
 *   np.array(PIL.Image.open(gt))                -> image_load_indexed (VOC palette ground truth)
 *   Image.resize((w, h), Image.BICUBIC)         -> image_resize_bicubic (Resample.c, 8 bpc path)
 *   CLIP's _transform(n_px) (torchvision Resize(int) + CenterCrop + ToTensor + Normalize)
 *                                               -> clip_preprocess
 *   CaR generator: Resize((H', W')) + ToTensor + Normalize -> clip_preprocess_exact
 *
 * JPEG: libjpeg-turbo (the library Pillow links) with Pillow's default decoder settings: ISLOW
 * IDCT, fancy upsampling, no scaling; 1 component -> "L" then replicated, 3 -> JCS_RGB,
 * 4 -> CMYK read as Adobe-inverted ("CMYK;I") then Pillow's cmyk2rgb.
 * PNG: libpng for the bitstream; the conversion to RGB follows Pillow's modes and unpackers
 * (Pillow has its own PNG decoder), e.g. 16-bit gray is mode "I" whose RGB conversion clips
 * to 0..255, 16-bit colour keeps the high byte, palette indices past the PLTE length map to the
 * gray ramp Pillow initialises palettes with, alpha and tRNS are dropped.
 * Every file is hostile: libjpeg/libpng/libtiff errors longjmp back into a clean error status;
 * nothing is printed.
 */
#include "image.h"
#include "util.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#include <png.h>
#include <tiffio.h>

const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* Pillow refuses images over 2 * MAX_IMAGE_PIXELS (178956970) as decompression bombs. */
#define MAX_PIXELS ((size_t)2 * 89478485)

void image_free(image_u8 *im) {
    if (!im) return;
    free(im->px);
    im->px = NULL;
    im->w = im->h = im->c = 0;
}

/* carseg_image_decode's pixel cap while it decodes (0: none): refused before the pixels are
 * allocated even when the header probe found no size */
static _Thread_local int64_t tl_max_pixels;

static carseg_status alloc_image(image_u8 *im, int w, int h, int c, const char *path) {
    size_t n;
    if (w <= 0 || h <= 0 || !cs_mul_ok(&n, (size_t)w, (size_t)h, 1) || n > MAX_PIXELS)
        return set_err(CARSEG_EFORMAT, "%s: unsupported image size %dx%d", path, w, h);
    if (tl_max_pixels > 0 && (int64_t)n > tl_max_pixels)
        return set_err(CARSEG_EFORMAT, "%s: image too large (%dx%d > %lld pixels)", path, w, h,
                       (long long)tl_max_pixels);
    im->px = malloc(n * (size_t)c);
    if (!im->px) return set_err(CARSEG_ENOMEM, "%s: out of memory for %dx%d image", path, w, h);
    im->w = w, im->h = h, im->c = c;
    return CARSEG_OK;
}

static int is_jpeg(const uint8_t *d, size_t n) { return n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF; }
static int is_png(const uint8_t *d, size_t n) { return n >= 8 && !memcmp(d, "\x89PNG\r\n\x1a\n", 8); }
static int is_tiff(const uint8_t *d, size_t n) {
    return n >= 4 && (!memcmp(d, "II*\0", 4) || !memcmp(d, "MM\0*", 4));
}

// ---------------------------------------------------------------------------------------------
// JPEG (libjpeg-turbo)

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    cinfo->err->format_message(cinfo, e->msg);
    longjmp(e->jb, 1);
}

/* Warnings: libjpeg recovers from most corruption (as Pillow lets it), but a premature end of
 * data makes Pillow raise "image file is truncated", so that one is an error here too. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    if (level < 0) {
        if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
            cinfo->err->format_message(cinfo, e->msg);
            longjmp(e->jb, 1);
        }
        cinfo->err->num_warnings++;
    }
}

/* Pillow Convert.c cmyk2rgb: nk = 255 - k; out = nk - nk*c/255 (MULDIV255 rounding). */
static inline uint8_t muldiv255(int a, int b) {
    int t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

static carseg_status load_jpeg(const char *path, const uint8_t *data, size_t len, image_u8 *out,
                               int want_rgb) {
    struct jpeg_decompress_struct ci;
    jpeg_err err;
    uint8_t *volatile row = NULL;
    memset(&ci, 0, sizeof ci);
    memset(out, 0, sizeof *out);
    ci.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.pub.emit_message = jpeg_on_message;
    err.msg[0] = 0;
    if (setjmp(err.jb)) {
        jpeg_destroy_decompress(&ci);
        free(row);
        image_free(out);
        return set_err(CARSEG_EFORMAT, "%s: bad JPEG: %s", path, err.msg);
    }
    jpeg_create_decompress(&ci);
    if (len > ULONG_MAX) len = ULONG_MAX;
    jpeg_mem_src(&ci, data, (unsigned long)len);
    jpeg_read_header(&ci, TRUE);
    int nc = ci.num_components;
    if (nc == 1) ci.out_color_space = JCS_GRAYSCALE;
    else if (nc == 3) ci.out_color_space = JCS_RGB;
    else if (nc == 4) ci.out_color_space = JCS_CMYK;
    else {
        jpeg_destroy_decompress(&ci);
        return set_err(CARSEG_EFORMAT, "%s: JPEG with %d components is not supported", path, nc);
    }
    /* Pillow's defaults (no draft mode): accurate integer IDCT, fancy upsampling. */
    ci.dct_method = JDCT_ISLOW;
    ci.do_fancy_upsampling = TRUE;
    ci.scale_num = ci.scale_denom = 1;
    jpeg_start_decompress(&ci);
    int w = (int)ci.output_width, h = (int)ci.output_height, oc = ci.output_components;
    int c = want_rgb ? 3 : 1;
    if (!want_rgb && nc != 1) {
        jpeg_destroy_decompress(&ci);
        return set_err(CARSEG_EFORMAT, "%s: colour JPEG where a single-channel image is expected",
                       path);
    }
    carseg_status st = alloc_image(out, w, h, c, path);
    if (st) {
        jpeg_destroy_decompress(&ci);
        return st;
    }
    row = malloc((size_t)w * (size_t)oc);
    if (!row) {
        jpeg_destroy_decompress(&ci);
        image_free(out);
        return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    }
    while (ci.output_scanline < ci.output_height) {
        int y = (int)ci.output_scanline;
        JSAMPROW rp = row;
        if (jpeg_read_scanlines(&ci, &rp, 1) != 1) continue;
        uint8_t *o = out->px + (size_t)y * w * c;
        if (c == 1) {
            memcpy(o, row, (size_t)w);
        } else if (oc == 1) {
            for (int x = 0; x < w; x++) o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = row[x];
        } else if (oc == 3) {
            memcpy(o, row, (size_t)w * 3);
        } else {
            /* "CMYK;I": Pillow assumes Adobe's inverted CMYK, then cmyk2rgb. */
            for (int x = 0; x < w; x++) {
                const uint8_t *q = row + 4 * x;
                int nk = q[3];   /* 255 - (255 - K) */
                for (int k = 0; k < 3; k++) {
                    int v = nk - muldiv255(255 - q[k], nk);
                    o[3 * x + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
            }
        }
    }
    jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    free(row);
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// PNG (libpng)

typedef struct {
    const uint8_t *data;
    size_t len, pos;
    char msg[256];
} png_src;

static void png_on_error(png_structp p, png_const_charp msg) {
    png_src *s = png_get_error_ptr(p);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(p, 1);
}
static void png_on_warning(png_structp p, png_const_charp msg) { (void)p, (void)msg; }

static void png_read_mem(png_structp p, png_bytep dst, png_size_t n) {
    png_src *s = png_get_io_ptr(p);
    if (n > s->len - s->pos) png_error(p, "truncated file");
    memcpy(dst, s->data + s->pos, n);
    s->pos += n;
}

enum { PNG_WANT_RGB, PNG_WANT_INDEX, PNG_WANT_U16 };

/* Decodes to one of: RGB (c=3, Pillow's convert("RGB")), raw indices/gray (c=1), or uint16
 * single channel (*u16). */
static carseg_status load_png(const char *path, const uint8_t *data, size_t len, int want,
                              image_u8 *out, int *ow, int *oh, uint16_t **u16) {
    png_src src = {data, len, 0, {0}};
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
    if (!p) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    png_infop info = png_create_info_struct(p);
    uint8_t *volatile raw = NULL;          /* decoded rows, native layout */
    png_bytep *volatile rows = NULL;
    if (out) memset(out, 0, sizeof *out);
    if (u16) *u16 = NULL;
    if (!info || setjmp(png_jmpbuf(p))) {
        png_destroy_read_struct(&p, info ? &info : NULL, NULL);
        free(raw);
        free(rows);
        if (out) image_free(out);
        if (u16) { free(*u16); *u16 = NULL; }
        return set_err(src.msg[0] ? CARSEG_EFORMAT : CARSEG_ENOMEM, "%s: bad PNG: %s", path,
                       src.msg[0] ? src.msg : "out of memory");
    }
    /* Pillow reads with its own decoder and does not stop at bad ancillary CRCs or benign
     * errors; keep libpng lenient there too. */
    png_set_crc_action(p, PNG_CRC_WARN_DISCARD, PNG_CRC_WARN_USE);
    png_set_benign_errors(p, 1);
    png_set_user_limits(p, 0x7fffffff, 0x7fffffff);
    png_set_read_fn(p, &src, png_read_mem);
    png_read_info(p, info);
    png_uint_32 w = png_get_image_width(p, info), h = png_get_image_height(p, info);
    int bd = png_get_bit_depth(p, info), ct = png_get_color_type(p, info);
    size_t npx;
    if (w == 0 || h == 0 || w > INT_MAX || h > INT_MAX ||
        !cs_mul_ok(&npx, (size_t)w, (size_t)h, 1) || npx > MAX_PIXELS) {
        snprintf(src.msg, sizeof src.msg, "unsupported image size %ux%u", (unsigned)w, (unsigned)h);
        png_longjmp(p, 1);
    }
    if (tl_max_pixels > 0 && (int64_t)npx > tl_max_pixels) {
        snprintf(src.msg, sizeof src.msg, "image too large (%ux%u > %lld pixels)", (unsigned)w,
                 (unsigned)h, (long long)tl_max_pixels);
        png_longjmp(p, 1);
    }
    /* Samples: 1/2/4-bit packed to one byte per sample (no scaling yet); 16-bit kept big-endian. */
    if (bd < 8) png_set_packing(p);
    int passes = png_set_interlace_handling(p);
    (void)passes;
    png_read_update_info(p, info);
    size_t rb = png_get_rowbytes(p, info);
    int channels = png_get_channels(p, info);
    size_t total;
    if (!cs_mul_ok(&total, rb, (size_t)h, 1)) {
        snprintf(src.msg, sizeof src.msg, "image too large");
        png_longjmp(p, 1);
    }
    raw = malloc(total);
    rows = malloc(sizeof(png_bytep) * h);
    if (!raw || !rows) {
        snprintf(src.msg, sizeof src.msg, "out of memory");
        png_longjmp(p, 1);
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = raw + y * rb;
    png_read_image(p, rows);
    png_read_end(p, NULL);

    /* palette (Pillow: a 256-entry gray ramp, the first num_palette entries from PLTE) */
    uint8_t pal[256 * 3];
    for (int i = 0; i < 256; i++) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = (uint8_t)i;
    if (ct == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte = NULL;
        int np = 0;
        if (png_get_PLTE(p, info, &plte, &np) & PNG_INFO_PLTE) {
            for (int i = 0; i < np && i < 256; i++) {
                pal[3 * i] = plte[i].red, pal[3 * i + 1] = plte[i].green, pal[3 * i + 2] = plte[i].blue;
            }
        }
    }
    int W = (int)w, H = (int)h;
    const int gray_scale = bd == 1 ? 255 : bd == 2 ? 85 : bd == 4 ? 17 : 1;
    if (want == PNG_WANT_U16) {
        if (channels != 1 || ct == PNG_COLOR_TYPE_PALETTE) {
            snprintf(src.msg, sizeof src.msg, "label PNG must be single-channel gray (colour type %d)", ct);
            png_longjmp(p, 1);
        }
        uint16_t *v = malloc(npx * sizeof *v);
        if (!v) {
            snprintf(src.msg, sizeof src.msg, "out of memory");
            png_longjmp(p, 1);
        }
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                v[(size_t)y * W + x] = bd == 16 ? (uint16_t)(rows[y][2 * x] << 8 | rows[y][2 * x + 1])
                                                : rows[y][x];
        *u16 = v;
        *ow = W, *oh = H;
    } else if (want == PNG_WANT_INDEX) {
        if (channels != 1 || bd == 16) {
            snprintf(src.msg, sizeof src.msg,
                     "index PNG must be palette or 8-bit gray (colour type %d, depth %d)", ct, bd);
            png_longjmp(p, 1);
        }
        if (alloc_image(out, W, H, 1, path)) png_longjmp(p, 1);
        /* P: the raw indices; L: the gray value (1/2/4-bit scaled to 0..255 as Pillow's L;n) */
        int sc = ct == PNG_COLOR_TYPE_PALETTE ? 1 : gray_scale;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) out->px[(size_t)y * W + x] = (uint8_t)(rows[y][x] * sc);
    } else {
        if (alloc_image(out, W, H, 3, path)) png_longjmp(p, 1);
        int bps = bd == 16 ? 2 : 1;   /* bytes per sample; 16-bit: high byte first */
        for (int y = 0; y < H; y++) {
            const uint8_t *r = rows[y];
            uint8_t *o = out->px + (size_t)y * W * 3;
            for (int x = 0; x < W; x++, o += 3) {
                const uint8_t *s = r + (size_t)x * channels * bps;
                switch (ct) {
                case PNG_COLOR_TYPE_GRAY:
                    if (bd == 16) {   /* mode "I": convert("RGB") clips to 0..255 */
                        int v = s[0] << 8 | s[1];
                        o[0] = o[1] = o[2] = (uint8_t)(v > 255 ? 255 : v);
                    } else {
                        o[0] = o[1] = o[2] = (uint8_t)(s[0] * gray_scale);
                    }
                    break;
                case PNG_COLOR_TYPE_GRAY_ALPHA: o[0] = o[1] = o[2] = s[0]; break;
                case PNG_COLOR_TYPE_PALETTE: memcpy(o, pal + 3 * s[0], 3); break;
                default: /* RGB, RGBA */
                    o[0] = s[0], o[1] = s[bps], o[2] = s[2 * bps];
                }
            }
        }
    }
    png_destroy_read_struct(&p, &info, NULL);
    free(raw);
    free(rows);
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// TIFF (libtiff), single-channel 8/16-bit labels

static _Thread_local char g_tiff_msg[256];
static void tiff_on_error(const char *mod, const char *fmt, va_list ap) {
    (void)mod;
    vsnprintf(g_tiff_msg, sizeof g_tiff_msg, fmt, ap);
}
static void tiff_on_warning(const char *mod, const char *fmt, va_list ap) { (void)mod, (void)fmt, (void)ap; }

typedef struct { const uint8_t *data; size_t len, pos; } tiff_mem;
static tsize_t tm_read(thandle_t h, tdata_t buf, tsize_t n) {
    tiff_mem *m = (tiff_mem *)h;
    if (n < 0) return -1;
    size_t k = m->pos < m->len ? m->len - m->pos : 0;
    if ((size_t)n < k) k = (size_t)n;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return (tsize_t)k;
}
static tsize_t tm_write(thandle_t h, tdata_t buf, tsize_t n) { (void)h, (void)buf, (void)n; return -1; }
static toff_t tm_seek(thandle_t h, toff_t off, int whence) {
    tiff_mem *m = (tiff_mem *)h;
    uint64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? m->pos : m->len;
    uint64_t np = base + off;
    if (np > (uint64_t)SIZE_MAX / 2) return (toff_t)-1;
    m->pos = (size_t)np;
    return np;
}
static int tm_close(thandle_t h) { (void)h; return 0; }
static toff_t tm_size(thandle_t h) { return ((tiff_mem *)h)->len; }
static int tm_map(thandle_t h, tdata_t *base, toff_t *size) { (void)h, (void)base, (void)size; return 0; }
static void tm_unmap(thandle_t h, tdata_t base, toff_t size) { (void)h, (void)base, (void)size; }

static carseg_status load_tiff_u16(const char *path, const uint8_t *data, size_t len, int *ow,
                                   int *oh, uint16_t **out) {
    TIFFSetErrorHandler(tiff_on_error);
    TIFFSetWarningHandler(tiff_on_warning);
    g_tiff_msg[0] = 0;
    tiff_mem m = {data, len, 0};
    TIFF *t = TIFFClientOpen(path, "rm", (thandle_t)&m, tm_read, tm_write, tm_seek, tm_close,
                             tm_size, tm_map, tm_unmap);
    if (!t) return set_err(CARSEG_EFORMAT, "%s: bad TIFF: %s", path, g_tiff_msg);
    uint32_t w = 0, h = 0;
    uint16_t bps = 0, spp = 1, fmt = SAMPLEFORMAT_UINT, planar = PLANARCONFIG_CONTIG;
    carseg_status st = CARSEG_OK;
    uint8_t *buf = NULL;
    uint16_t *v = NULL;
    size_t npx = 0;
    TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h);
    TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bps);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &fmt);
    TIFFGetFieldDefaulted(t, TIFFTAG_PLANARCONFIG, &planar);
    if (w == 0 || h == 0 || w > INT_MAX || h > INT_MAX ||
        !cs_mul_ok(&npx, w, h, 1) || npx > MAX_PIXELS) {
        st = set_err(CARSEG_EFORMAT, "%s: unsupported TIFF size %ux%u", path, (unsigned)w, (unsigned)h);
        goto done;
    }
    if (spp != 1 || (bps != 8 && bps != 16) || (fmt != SAMPLEFORMAT_UINT && fmt != SAMPLEFORMAT_INT)) {
        st = set_err(CARSEG_EFORMAT,
                     "%s: label TIFF must be one 8/16-bit integer channel (%u samples, %u bits)",
                     path, (unsigned)spp, (unsigned)bps);
        goto done;
    }
    v = malloc(npx * sizeof *v);
    if (!v) { st = set_err(CARSEG_ENOMEM, "%s: out of memory", path); goto done; }
    int bpp = bps / 8;
    if (TIFFIsTiled(t)) {
        uint32_t tw = 0, th = 0;
        TIFFGetField(t, TIFFTAG_TILEWIDTH, &tw);
        TIFFGetField(t, TIFFTAG_TILELENGTH, &th);
        tmsize_t ts = TIFFTileSize(t);
        if (tw == 0 || th == 0 || ts <= 0 || (uint64_t)tw * th * bpp > (uint64_t)ts) {
            st = set_err(CARSEG_EFORMAT, "%s: bad TIFF tiles", path);
            goto done;
        }
        buf = malloc((size_t)ts);
        if (!buf) { st = set_err(CARSEG_ENOMEM, "%s: out of memory", path); goto done; }
        for (uint32_t ty = 0; ty < h; ty += th)
            for (uint32_t tx = 0; tx < w; tx += tw) {
                if (TIFFReadTile(t, buf, tx, ty, 0, 0) < 0) {
                    st = set_err(CARSEG_EFORMAT, "%s: bad TIFF tile: %s", path, g_tiff_msg);
                    goto done;
                }
                for (uint32_t y = ty; y < h && y < ty + th; y++)
                    for (uint32_t x = tx; x < w && x < tx + tw; x++) {
                        const uint8_t *s = buf + ((size_t)(y - ty) * tw + (x - tx)) * bpp;
                        uint16_t val = s[0];
                        if (bpp == 2) memcpy(&val, s, 2);
                        v[(size_t)y * w + x] = val;
                    }
            }
    } else {
        tmsize_t sl = TIFFScanlineSize(t);
        if (sl <= 0 || (uint64_t)sl < (uint64_t)w * bpp) {
            st = set_err(CARSEG_EFORMAT, "%s: bad TIFF scanline size", path);
            goto done;
        }
        buf = malloc((size_t)sl);
        if (!buf) { st = set_err(CARSEG_ENOMEM, "%s: out of memory", path); goto done; }
        for (uint32_t y = 0; y < h; y++) {
            if (TIFFReadScanline(t, buf, y, 0) < 0) {
                st = set_err(CARSEG_EFORMAT, "%s: bad TIFF data at row %u: %s", path, (unsigned)y,
                             g_tiff_msg);
                goto done;
            }
            for (uint32_t x = 0; x < w; x++) {
                const uint8_t *s = buf + (size_t)x * bpp;
                uint16_t val;
                if (bpp == 2) memcpy(&val, s, 2);   /* libtiff returns native byte order */
                else val = s[0];
                v[(size_t)y * w + x] = val;
            }
        }
    }
done:
    TIFFClose(t);
    free(buf);
    if (st) { free(v); return st; }
    *ow = (int)w, *oh = (int)h, *out = v;
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// public loaders

carseg_status image_decode_rgb(const char *name, const uint8_t *d, size_t n, image_u8 *out) {
    memset(out, 0, sizeof *out);
    if (is_jpeg(d, n)) return load_jpeg(name, d, n, out, 1);
    if (is_png(d, n)) return load_png(name, d, n, PNG_WANT_RGB, out, NULL, NULL, NULL);
    return set_err(CARSEG_EFORMAT, "%s: not a JPEG or PNG file", name);
}

carseg_status image_decode_indexed(const char *name, const uint8_t *d, size_t n, image_u8 *out) {
    memset(out, 0, sizeof *out);
    if (is_png(d, n)) return load_png(name, d, n, PNG_WANT_INDEX, out, NULL, NULL, NULL);
    return set_err(CARSEG_EFORMAT, "%s: not a PNG file (label maps must be lossless)", name);
}

carseg_status image_decode_labels16(const char *name, const uint8_t *d, size_t n, int *w, int *h,
                                    uint16_t **out) {
    *out = NULL;
    if (is_png(d, n)) return load_png(name, d, n, PNG_WANT_U16, NULL, w, h, out);
    if (is_tiff(d, n)) return load_tiff_u16(name, d, n, w, h, out);
    return set_err(CARSEG_EFORMAT, "%s: not a PNG or TIFF label file", name);
}

carseg_status image_load_rgb(const char *path, image_u8 *out) {
    uint8_t *d;
    size_t n;
    memset(out, 0, sizeof *out);
    TRY(read_file(path, &d, &n));
    carseg_status st = image_decode_rgb(path, d, n, out);
    free(d);
    return st;
}

carseg_status image_load_indexed(const char *path, image_u8 *out) {
    uint8_t *d;
    size_t n;
    memset(out, 0, sizeof *out);
    TRY(read_file(path, &d, &n));
    carseg_status st = image_decode_indexed(path, d, n, out);
    free(d);
    return st;
}

carseg_status image_load_labels16(const char *path, int *w, int *h, uint16_t **out) {
    uint8_t *d;
    size_t n;
    *out = NULL;
    TRY(read_file(path, &d, &n));
    carseg_status st = image_decode_labels16(path, d, n, w, h, out);
    free(d);
    return st;
}

// ---------------------------------------------------------------------------------------------
// writers

typedef struct { uint8_t *buf; size_t len, cap; int failed; } png_dst;

static void png_write_cb(png_structp p, png_bytep d, png_size_t n) {
    png_dst *s = png_get_io_ptr(p);
    if (s->len + n > s->cap) {
        size_t nc = s->cap ? s->cap : 4096;
        while (nc < s->len + n) nc *= 2;
        uint8_t *nb = realloc(s->buf, nc);
        if (!nb) {
            s->failed = 1;
            png_error(p, "out of memory");
        }
        s->buf = nb, s->cap = nc;
    }
    memcpy(s->buf + s->len, d, n);
    s->len += n;
}
static void png_flush_cb(png_structp p) { (void)p; }

/* kind: 0 RGB8, 1 palette8, 2 gray16; the PNG into memory (*out malloc'd). */
static carseg_status encode_png(const char *path, int kind, const void *px, int w, int h,
                                const uint8_t *pal, int n_colors, uint8_t **out, size_t *out_len) {
    *out = NULL, *out_len = 0;
    if (w <= 0 || h <= 0 || !px)
        return set_err(CARSEG_EINVAL, "%s: cannot write a %dx%d image", path, w, h);
    if (kind == 1 && (n_colors < 1 || n_colors > 256 || !pal))
        return set_err(CARSEG_EINVAL, "%s: palette must have 1..256 colours (got %d)", path, n_colors);
    png_dst dst;
    memset(&dst, 0, sizeof dst);
    png_src errs = {NULL, 0, 0, {0}};
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, &errs, png_on_error, png_on_warning);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    int bpr = kind == 0 ? 3 * w : kind == 1 ? w : 2 * w;
    uint8_t *volatile row = malloc((size_t)bpr);
    if (!p || !info || !row) {
        png_destroy_write_struct(&p, &info);
        free(row);
        return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        free(row);
        free(dst.buf);
        return set_err(dst.failed ? CARSEG_ENOMEM : CARSEG_EINVAL, "%s: cannot write PNG: %s", path,
                       errs.msg);
    }
    png_set_write_fn(p, &dst, png_write_cb, png_flush_cb);
    int ct = kind == 0 ? PNG_COLOR_TYPE_RGB : kind == 1 ? PNG_COLOR_TYPE_PALETTE : PNG_COLOR_TYPE_GRAY;
    png_set_IHDR(p, info, (png_uint_32)w, (png_uint_32)h, kind == 2 ? 16 : 8, ct, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (kind == 1) {
        png_color c[256];
        for (int i = 0; i < n_colors; i++)
            c[i].red = pal[3 * i], c[i].green = pal[3 * i + 1], c[i].blue = pal[3 * i + 2];
        png_set_PLTE(p, info, c, n_colors);
    }
    png_write_info(p, info);
    for (int y = 0; y < h; y++) {
        if (kind == 2) {
            const uint16_t *s = (const uint16_t *)px + (size_t)y * w;
            for (int x = 0; x < w; x++) row[2 * x] = (uint8_t)(s[x] >> 8), row[2 * x + 1] = (uint8_t)s[x];
        } else {
            memcpy(row, (const uint8_t *)px + (size_t)y * bpr, (size_t)bpr);
        }
        png_write_row(p, row);
    }
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    free(row);
    *out = dst.buf, *out_len = dst.len;
    return CARSEG_OK;
}

/* bytes -> path, atomically (temp file + rename) */
static carseg_status write_atomic(const char *path, const uint8_t *d, size_t n) {
    atomic_file af;
    TRY(atomic_open(&af, path));
    if (n && fwrite(d, 1, n, af.f) != n) {
        atomic_abort(&af);
        return set_err(CARSEG_EIO, "%s: write failed", path);
    }
    return atomic_commit(&af);
}

static carseg_status save_png(const char *path, int kind, const void *px, int w, int h,
                              const uint8_t *pal, int n_colors) {
    uint8_t *d;
    size_t n;
    TRY(encode_png(path, kind, px, w, h, pal, n_colors, &d, &n));
    carseg_status st = write_atomic(path, d, n);
    free(d);
    return st;
}

carseg_status image_save_png_rgb(const char *path, const uint8_t *rgb, int w, int h) {
    return save_png(path, 0, rgb, w, h, NULL, 0);
}
carseg_status image_save_png_palette(const char *path, const uint8_t *idx, int w, int h,
                                     const uint8_t *palette_rgb, int n_colors) {
    if (idx && palette_rgb && w > 0 && h > 0 && n_colors >= 1 && n_colors <= 256) {
        for (size_t i = 0, n = (size_t)w * h; i < n; i++)
            if (idx[i] >= n_colors && n_colors < 256) {
                /* out-of-palette indices are legal PNG only with a full palette: pad it */
                uint8_t full[256 * 3] = {0};
                memcpy(full, palette_rgb, (size_t)n_colors * 3);
                return save_png(path, 1, idx, w, h, full, 256);
            }
    }
    return save_png(path, 1, idx, w, h, palette_rgb, n_colors);
}
carseg_status image_save_png_gray16(const char *path, const uint16_t *v, int w, int h) {
    return save_png(path, 2, v, w, h, NULL, 0);
}

void voc_palette(uint8_t pal[256 * 3]) {
    /* the VOC devkit colour map: bits of the index spread over the high bits of R, G, B */
    for (int i = 0; i < 256; i++) {
        int r = 0, g = 0, b = 0, c = i;
        for (int j = 0; j < 8; j++) {
            r |= ((c >> 0) & 1) << (7 - j);
            g |= ((c >> 1) & 1) << (7 - j);
            b |= ((c >> 2) & 1) << (7 - j);
            c >>= 3;
        }
        pal[3 * i] = (uint8_t)r, pal[3 * i + 1] = (uint8_t)g, pal[3 * i + 2] = (uint8_t)b;
    }
}

// ---------------------------------------------------------------------------------------------
// Pillow 9.4 Resample.c, bicubic and bilinear, 8 bits per channel

#define PRECISION_BITS (32 - 8 - 2)

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Filter taps for one axis: out pixel i reads in[bounds[2i] .. +bounds[2i+1]) with integer
 * weights kk[i*ksize ..] (22-bit fixed point). Returns ksize, 0 on allocation failure. */
static double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

typedef struct { double (*fn)(double); double support; const char *name; } rs_filter;
static const rs_filter RS_BICUBIC = {bicubic_filter, 2.0, "image_resize_bicubic"};
static const rs_filter RS_BILINEAR = {bilinear_filter, 1.0, "image_resize_bilinear"};

static int precompute_coeffs(int in_size, int out_size, const rs_filter *flt, int **boundsp,
                             int32_t **kkp) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = flt->support * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *k = malloc(sizeof(double) * ksize);
    int *bounds = malloc(sizeof(int) * 2 * out_size);
    int32_t *kk = malloc(sizeof(int32_t) * (size_t)out_size * ksize);
    if (!k || !bounds || !kk) {
        free(k), free(bounds), free(kk);
        return 0;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        int x = 0;
        for (; x < xmax; x++) {
            double wgt = flt->fn((x + xmin - center + 0.5) * ss);
            k[x] = wgt;
            ww += wgt;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        int32_t *o = kk + (size_t)xx * ksize;
        for (x = 0; x < ksize; x++) {
            double v = x < xmax ? k[x] : 0.0;   /* normalize_coeffs_8bpc */
            o[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                         : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    free(k);
    *boundsp = bounds;
    *kkp = kk;
    return ksize;
}

static inline uint8_t clip8(int32_t v) {
    v >>= PRECISION_BITS;   /* arithmetic shift, as Pillow's lookup table index */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static carseg_status resample(const image_u8 *src, int out_w, int out_h, image_u8 *dst,
                              const rs_filter *flt) {
    memset(dst, 0, sizeof *dst);
    if (!src || !src->px || src->w <= 0 || src->h <= 0 || src->c <= 0 || out_w <= 0 || out_h <= 0)
        return set_err(CARSEG_EINVAL, "%s: bad size %dx%d -> %dx%d", flt->name,
                       src ? src->w : 0, src ? src->h : 0, out_w, out_h);
    const int c = src->c, iw = src->w, ih = src->h;
    TRY(alloc_image(dst, out_w, out_h, c, flt->name));
    int need_h = out_w != iw, need_v = out_h != ih;
    if (!need_h && !need_v) {
        memcpy(dst->px, src->px, (size_t)iw * ih * c);
        return CARSEG_OK;
    }
    int *bh = NULL, *bv = NULL;
    int32_t *kh = NULL, *kv = NULL;
    int ksh = 0, ksv = 0;
    ksv = precompute_coeffs(ih, out_h, flt, &bv, &kv);
    if (need_h) ksh = precompute_coeffs(iw, out_w, flt, &bh, &kh);
    if (!ksv || (need_h && !ksh)) goto oom;
    /* rows of the source the vertical pass reads */
    int y0 = bv[0], y1 = bv[2 * (out_h - 1)] + bv[2 * (out_h - 1) + 1];
    const uint8_t *vin = src->px;   /* input of the vertical pass: (y1-y0 or ih) rows x out_w */
    uint8_t *tmp = NULL;
    if (need_h) {
        int rows = need_v ? y1 - y0 : ih, yoff = need_v ? y0 : 0;
        tmp = need_v ? malloc((size_t)rows * out_w * c) : dst->px;
        if (!tmp) goto oom;
        #pragma omp parallel for schedule(static) if ((size_t)rows * out_w > 65536)
        for (int y = 0; y < rows; y++) {
            const uint8_t *in = src->px + (size_t)(y + yoff) * iw * c;
            uint8_t *o = tmp + (size_t)y * out_w * c;
            for (int xx = 0; xx < out_w; xx++) {
                int xmin = bh[2 * xx], xmax = bh[2 * xx + 1];
                const int32_t *k = kh + (size_t)xx * ksh;
                for (int ch = 0; ch < c; ch++) {
                    int32_t ss = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < xmax; x++) ss += in[(size_t)(x + xmin) * c + ch] * k[x];
                    o[(size_t)xx * c + ch] = clip8(ss);
                }
            }
        }
        vin = tmp;
        if (need_v)
            for (int i = 0; i < out_h; i++) bv[2 * i] -= y0;
    }
    if (need_v) {
        /* input of the vertical pass: out_w columns (== iw when there was no horizontal pass);
         * accumulated row-wise, the same integer sums as Pillow's per-pixel loop */
        const size_t rowlen = (size_t)out_w * c;
        int fail = 0;
        #pragma omp parallel if ((size_t)out_h * out_w > 65536)
        {
            int32_t *acc = malloc(sizeof(int32_t) * rowlen);
            if (!acc) {
                #pragma omp atomic write
                fail = 1;
            }
            #pragma omp for schedule(static)
            for (int yy = 0; yy < out_h; yy++) {
                if (!acc) continue;
                int ymin = bv[2 * yy], ymax = bv[2 * yy + 1];
                const int32_t *k = kv + (size_t)yy * ksv;
                for (size_t i = 0; i < rowlen; i++) acc[i] = 1 << (PRECISION_BITS - 1);
                for (int y = 0; y < ymax; y++) {
                    const uint8_t *r = vin + (size_t)(y + ymin) * rowlen;
                    const int32_t ky = k[y];
                    for (size_t i = 0; i < rowlen; i++) acc[i] += r[i] * ky;
                }
                uint8_t *o = dst->px + (size_t)yy * rowlen;
                for (size_t i = 0; i < rowlen; i++) o[i] = clip8(acc[i]);
            }
            free(acc);
        }
        if (need_h) free(tmp);
        if (fail) goto oom;
    }
    free(bh), free(bv), free(kh), free(kv);
    return CARSEG_OK;
oom:
    free(bh), free(bv), free(kh), free(kv);
    image_free(dst);
    return set_err(CARSEG_ENOMEM, "%s: out of memory", flt->name);
}

carseg_status image_resize_bicubic(const image_u8 *src, int out_w, int out_h, image_u8 *dst) {
    return resample(src, out_w, out_h, dst, &RS_BICUBIC);
}

carseg_status image_resize_bilinear(const image_u8 *src, int out_w, int out_h, image_u8 *dst) {
    return resample(src, out_w, out_h, dst, &RS_BILINEAR);
}

// ---------------------------------------------------------------------------------------------
// CLIP preprocessing (torchvision transforms on a PIL image, float32 arithmetic)

/* ToTensor + Normalize: ((float)v / 255 - mean) / std, each op rounded to float32 as torch does. */
static void normalize_chw(const uint8_t *rgb, int stride_px, int x0, int y0, int w, int h, float *out) {
    for (int ch = 0; ch < 3; ch++) {
        const float m = CLIP_MEAN[ch], s = CLIP_STD[ch];
        float *o = out + (size_t)ch * w * h;
        for (int y = 0; y < h; y++) {
            const uint8_t *r = rgb + ((size_t)(y + y0) * stride_px + x0) * 3 + ch;
            for (int x = 0; x < w; x++) {
                float t = (float)r[3 * x] / 255.0f;
                o[(size_t)y * w + x] = (t - m) / s;
            }
        }
    }
}

carseg_status clip_preprocess(const image_u8 *rgb, int size, float *out) {
    if (!rgb || !rgb->px || rgb->c != 3 || rgb->w <= 0 || rgb->h <= 0 || size <= 0 || !out)
        return set_err(CARSEG_EINVAL, "clip_preprocess: need an RGB image and size > 0");
    /* torchvision Resize(int): shorter side -> size, longer side int(size * long / short) */
    int w = rgb->w, h = rgb->h, nw, nh;
    if (w <= h) nw = size, nh = (int)((double)size * h / w);
    else nh = size, nw = (int)((double)size * w / h);
    image_u8 r;
    TRY(image_resize_bicubic(rgb, nw, nh, &r));
    /* CenterCrop: offsets int(round((h - size) / 2.0)) with Python's round-half-even */
    if (nw < size || nh < size) {
        image_free(&r);
        return set_err(CARSEG_EINVAL, "clip_preprocess: resized image %dx%d smaller than %d", nw, nh, size);
    }
    int top = (int)nearbyint((nh - size) / 2.0), left = (int)nearbyint((nw - size) / 2.0);
    normalize_chw(r.px, nw, left, top, size, size, out);
    image_free(&r);
    return CARSEG_OK;
}

carseg_status clip_preprocess_exact(const image_u8 *rgb, int out_w, int out_h, float *out) {
    if (!rgb || !rgb->px || rgb->c != 3 || out_w <= 0 || out_h <= 0 || !out)
        return set_err(CARSEG_EINVAL, "clip_preprocess_exact: need an RGB image and a size > 0");
    image_u8 r;
    TRY(image_resize_bicubic(rgb, out_w, out_h, &r));
    normalize_chw(r.px, out_w, 0, 0, out_w, out_h, out);
    image_free(&r);
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// label maps and the public image API

carseg_status image_encode_labels(const char *name, const uint16_t *labels, int w, int h,
                                  int n_labels, uint8_t **png, size_t *len) {
    if (n_labels > 256) return encode_png(name, 2, labels, w, h, NULL, 0, png, len);
    size_t n = (size_t)w * (size_t)h;
    uint8_t *idx = malloc(n ? n : 1), pal[256 * 3];
    if (!idx) return set_err(CARSEG_ENOMEM, "%s: out of memory", name);
    for (size_t i = 0; i < n; i++) idx[i] = (uint8_t)labels[i];
    voc_palette(pal);
    carseg_status st = encode_png(name, 1, idx, w, h, pal, 256, png, len);
    free(idx);
    return st;
}

carseg_status image_save_labels(const char *path, const uint16_t *labels, int w, int h, int n_labels) {
    uint8_t *d;
    size_t n;
    TRY(image_encode_labels(path, labels, w, h, n_labels, &d, &n));
    carseg_status st = write_atomic(path, d, n);
    free(d);
    return st;
}

/* Width and height from a JPEG's SOFn or a PNG's IHDR, without decoding; 0 when not found. */
int image_probe_size(const uint8_t *d, size_t n, int64_t *w, int64_t *h) {
    if (is_png(d, n)) {
        if (n < 24 || memcmp(d + 12, "IHDR", 4)) return 0;
        *w = (int64_t)((uint32_t)d[16] << 24 | (uint32_t)d[17] << 16 | (uint32_t)d[18] << 8 | d[19]);
        *h = (int64_t)((uint32_t)d[20] << 24 | (uint32_t)d[21] << 16 | (uint32_t)d[22] << 8 | d[23]);
        return 1;
    }
    if (!is_jpeg(d, n)) return 0;
    size_t i = 2;
    while (i + 4 <= n) {
        if (d[i] != 0xFF) return 0;
        uint8_t m = d[i + 1];
        if (m == 0xFF) { i++; continue; }                               /* fill byte */
        if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { i += 2; continue; }
        if (m == 0xD9 || m == 0xDA) return 0;                          /* EOI / SOS before SOF */
        size_t L = (size_t)d[i + 2] << 8 | d[i + 3];
        if (L < 2) return 0;
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (i + 9 > n || L < 7) return 0;
            *h = (int64_t)d[i + 5] << 8 | d[i + 6];
            *w = (int64_t)d[i + 7] << 8 | d[i + 8];
            return 1;
        }
        i += 2 + L;
    }
    return 0;
}

carseg_status carseg_image_load(const char *path, uint8_t **rgb, int *w, int *h) {
    image_u8 im;
    *rgb = NULL;
    TRY(image_load_rgb(path, &im));
    *rgb = im.px;
    *w = im.w;
    *h = im.h;
    return CARSEG_OK;
}

void carseg_image_free(uint8_t *rgb) { free(rgb); }

carseg_status carseg_labels_save_png(const char *path, const uint16_t *labels, int w, int h) {
    if (!path || !labels || w <= 0 || h <= 0) return set_err(CARSEG_EINVAL, "carseg_labels_save_png: bad arguments");
    int mx = 0;
    for (size_t i = 0; i < (size_t)w * (size_t)h; i++) mx = labels[i] > mx ? labels[i] : mx;
    return image_save_labels(path, labels, w, h, mx + 1);
}

carseg_status carseg_image_decode(const uint8_t *data, size_t len, int64_t max_pixels,
                                  uint8_t **rgb, int *w, int *h) {
    if (!rgb || !w || !h) return set_err(CARSEG_EINVAL, "carseg_image_decode: NULL output");
    *rgb = NULL;
    if (!data) return set_err(CARSEG_EINVAL, "carseg_image_decode: data is NULL");
    if (max_pixels < 0) return set_err(CARSEG_EINVAL, "carseg_image_decode: max_pixels %lld < 0", (long long)max_pixels);
    if (max_pixels > 0) {
        int64_t iw = 0, ih = 0;
        /* a header without a size is left to the decoder, which then fails on it */
        if (image_probe_size(data, len, &iw, &ih) && iw * ih > max_pixels)
            return set_err(CARSEG_EFORMAT, "image too large (%lldx%lld > %lld pixels)",
                           (long long)iw, (long long)ih, (long long)max_pixels);
    }
    image_u8 im;
    tl_max_pixels = max_pixels;   /* the decoders refuse before allocating too (alloc_image) */
    carseg_status dst = image_decode_rgb("image", data, len, &im);
    tl_max_pixels = 0;
    if (dst != CARSEG_OK) {
        const char *e = carseg_last_error();   /* "image: image too large (...)" -> without the name */
        if (!strncmp(e, "image: image too large", 22)) {
            char m[256];
            snprintf(m, sizeof m, "%s", e + 7);
            return set_err(dst, "%s", m);
        }
        return dst;
    }
    if (max_pixels > 0 && (int64_t)im.w * im.h > max_pixels) {   /* a lying header */
        carseg_status st = set_err(CARSEG_EFORMAT, "image too large (%dx%d > %lld pixels)",
                                   im.w, im.h, (long long)max_pixels);
        image_free(&im);
        return st;
    }
    *rgb = im.px, *w = im.w, *h = im.h;
    return CARSEG_OK;
}

carseg_status carseg_labels_encode_png(const uint16_t *labels, int w, int h, int n_labels,
                                       uint8_t **png, size_t *len) {
    if (!png || !len) return set_err(CARSEG_EINVAL, "carseg_labels_encode_png: NULL output");
    *png = NULL, *len = 0;
    if (!labels || w <= 0 || h <= 0 || n_labels < 0)
        return set_err(CARSEG_EINVAL, "carseg_labels_encode_png: bad arguments (%dx%d, %d labels)", w, h, n_labels);
    if (n_labels == 0) {
        int mx = 0;
        for (size_t i = 0; i < (size_t)w * (size_t)h; i++) mx = labels[i] > mx ? labels[i] : mx;
        n_labels = mx + 1;
    }
    return image_encode_labels("labels", labels, w, h, n_labels, png, len);
}

carseg_status carseg_image_save_png(const char *path, const uint8_t *rgb, int w, int h) {
    if (!path || !rgb || w <= 0 || h <= 0) return set_err(CARSEG_EINVAL, "carseg_image_save_png: bad arguments");
    return image_save_png_rgb(path, rgb, w, h);
}
