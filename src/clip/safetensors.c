/* safetensors.c — the safetensors format (huggingface/safetensors): 8-byte little-endian header
 * length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}, then the byte buffer the offsets index. F32/F16/BF16 tensors are
 * converted to float32; integer and bool tensors (e.g. Hugging Face's position_ids buffer) are
 * not weights and are skipped; other dtypes (F64, F8) are skipped with a warning. Every offset, length and shape is checked against the file.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "util.h"

#define ST_MAX_HEADER (100u << 20)   /* the reference implementation's limit */

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_uint(const json *j, uint64_t *out) {
    if (!j || j->type != JSON_NUM) return 0;
    double v = j->num;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != floor(v)) return 0;
    *out = (uint64_t)v;
    return 1;
}

static carseg_status st_tensor(wfile *f, const char *name, const json *e, const uint8_t *data,
                               uint64_t dlen) {
    const char *path = f->path;
    if (!e || e->type != JSON_OBJ)
        return set_err(CARSEG_EFORMAT, "%s: header entry is not an object (tensor %s)", path, name);
    const char *dt = json_str(e, "dtype", NULL);
    const json *shape = json_get(e, "shape"), *offs = json_get(e, "data_offsets");
    if (!dt) return set_err(CARSEG_EFORMAT, "%s: missing dtype (tensor %s)", path, name);
    if (!shape || shape->type != JSON_ARR)
        return set_err(CARSEG_EFORMAT, "%s: missing or bad shape (tensor %s)", path, name);
    if (!offs || offs->type != JSON_ARR || offs->len != 2)
        return set_err(CARSEG_EFORMAT, "%s: missing or bad data_offsets (tensor %s)", path, name);
    uint64_t b, e2;
    if (!json_uint(json_at(offs, 0), &b) || !json_uint(json_at(offs, 1), &e2) || b > e2)
        return set_err(CARSEG_EFORMAT, "%s: bad data_offsets (tensor %s)", path, name);
    if (e2 > dlen)
        return set_err(CARSEG_EFORMAT, "%s: data_offsets [%llu, %llu) past the end of the file's %llu data bytes "
                       "(truncated?) (tensor %s)", path, (unsigned long long)b, (unsigned long long)e2,
                       (unsigned long long)dlen, name);
    wdtype wd;
    size_t esz;
    if (strcmp(dt, "F32") == 0) wd = WDT_F32;
    else if (strcmp(dt, "F16") == 0) wd = WDT_F16;
    else if (strcmp(dt, "BF16") == 0) wd = WDT_BF16;
    else if (strcmp(dt, "I64") == 0 || strcmp(dt, "I32") == 0 || strcmp(dt, "I16") == 0 ||
             strcmp(dt, "I8") == 0 || strcmp(dt, "U8") == 0 || strcmp(dt, "U16") == 0 ||
             strcmp(dt, "U32") == 0 || strcmp(dt, "U64") == 0 || strcmp(dt, "BOOL") == 0)
        return CARSEG_OK;   /* an index buffer, not a weight */
    else {   /* F64, F8...: skipped with a warning; if CLIP needs it, clip_load names it as missing */
        cs_log(CARSEG_LOG_WARN, "%s: skipping tensor %s: unsupported dtype %s (need F32, F16 or BF16)", path,
               name, dt);
        return CARSEG_OK;
    }
    esz = wdt_size(wd);
    if (shape->len > 4)
        return set_err(CARSEG_EFORMAT, "%s: %zu dimensions, at most 4 supported (tensor %s)", path,
                       shape->len, name);
    int64_t sh[4] = {0};
    size_t count = 1;
    for (size_t i = 0; i < shape->len; i++) {
        uint64_t d;
        if (!json_uint(json_at(shape, i), &d) || d > ((uint64_t)1 << 40))
            return set_err(CARSEG_EFORMAT, "%s: bad shape (tensor %s)", path, name);
        sh[i] = (int64_t)d;
        if (!cs_mul_ok(&count, count, (size_t)d, 1))
            return set_err(CARSEG_EFORMAT, "%s: shape overflows (tensor %s)", path, name);
    }
    size_t bytes;
    if (!cs_mul_ok(&bytes, count, esz, 1) || bytes != e2 - b)
        return set_err(CARSEG_EFORMAT, "%s: data_offsets span %llu bytes, shape and dtype need %zu (tensor %s)",
                       path, (unsigned long long)(e2 - b), count * esz, name);
    float *out = cs_malloc(count * sizeof(float) + 1);
    char *nm = cs_strdup(name);
    if (!out || !nm) {
        cs_free(out);
        free(nm);
        return set_err(CARSEG_ENOMEM, "%s: out of memory (tensor %s)", path, name);
    }
    wdt_to_f32(wd, data + b, count, out);
    return wfile_add(f, nm, (int)shape->len, sh, wd, out);
}

carseg_status st_read(wfile *f, const uint8_t *buf, size_t len) {
    const char *path = f->path;
    if (len < 8) return set_err(CARSEG_EFORMAT, "%s: truncated safetensors header length", path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | buf[i];
    if (n > ST_MAX_HEADER) return set_err(CARSEG_EFORMAT, "%s: safetensors header length %llu too large",
                                          path, (unsigned long long)n);
    if (n > len - 8)
        return set_err(CARSEG_EFORMAT, "%s: safetensors header (%llu bytes) past the end of the file (truncated?)",
                       path, (unsigned long long)n);
    char err[160];
    json *h = json_parse((const char *)buf + 8, (size_t)n, err, sizeof err);
    if (!h) return set_err(CARSEG_EFORMAT, "%s: bad safetensors JSON header: %s", path, err);
    if (h->type != JSON_OBJ) {
        json_free(h);
        return set_err(CARSEG_EFORMAT, "%s: safetensors header is not a JSON object", path);
    }
    const uint8_t *data = buf + 8 + n;
    uint64_t dlen = len - 8 - n;
    carseg_status st = CARSEG_OK;
    for (size_t i = 0; i < h->len && st == CARSEG_OK; i++) {
        if (strcmp(h->keys[i], "__metadata__") == 0) continue;
        if (h->keys[i][0] == 0) {
            st = set_err(CARSEG_EFORMAT, "%s: empty tensor name", path);
            break;
        }
        st = st_tensor(f, h->keys[i], h->kids[i], data, dlen);
    }
    json_free(h);
    return st;
}
