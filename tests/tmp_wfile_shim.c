/* tmp_wfile_shim.c — TEMPORARY stand-in for src/weights.c (the `weights` helper's module) so the
 * CLIP engine can be tested before it lands: reads safetensors F16/F32 with OpenAI names only.
 * Delete when weights.c is merged. */
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "weights.h"

static float h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0) {
        if (m == 0) u = s;
        else {
            e = 113;
            while (!(m & 0x400)) m <<= 1, e--;
            u = s | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else if (e == 31) u = s | 0x7f800000 | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

carseg_status wfile_open(const char *path, wfile **out) {
    *out = NULL;
    uint8_t *buf;
    size_t len;
    TRY(read_file(path, &buf, &len));
    uint64_t hl = 0;
    if (len >= 8) memcpy(&hl, buf, 8);
    char err[128];
    json *j = len >= 8 && hl <= len - 8 ? json_parse((char *)buf + 8, hl, err, sizeof err) : NULL;
    if (!j) { free(buf); return set_err(CARSEG_EFORMAT, "%s: not safetensors", path); }
    wfile *f = calloc(1, sizeof *f);
    f->path = cs_strdup(path);
    f->t = calloc(j->len, sizeof *f->t);
    const uint8_t *data = buf + 8 + hl;
    for (size_t i = 0; i < j->len; i++) {
        if (strcmp(j->keys[i], "__metadata__") == 0) continue;
        const json *o = j->kids[i], *sh = json_get(o, "shape"), *off = json_get(o, "data_offsets");
        const char *dt = json_str(o, "dtype", "");
        wtensor *t = &f->t[f->n++];
        t->name = cs_strdup(j->keys[i]);
        t->ndim = (int)sh->len;
        t->count = 1;
        for (int d = 0; d < t->ndim; d++) t->shape[d] = (int64_t)sh->kids[d]->num, t->count *= t->shape[d];
        size_t a = (size_t)off->kids[0]->num;
        t->data = malloc(t->count * sizeof(float));
        if (strcmp(dt, "F16") == 0) {
            t->src_dtype = WDT_F16;
            for (size_t k = 0; k < t->count; k++) {
                uint16_t h;
                memcpy(&h, data + a + 2 * k, 2);
                t->data[k] = h2f(h);
            }
        } else {
            t->src_dtype = WDT_F32;
            memcpy(t->data, data + a, t->count * 4);
        }
    }
    json_free(j);
    free(buf);
    *out = f;
    return CARSEG_OK;
}

void wfile_close(wfile *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->t[i].name), free(f->t[i].data);
    free(f->t);
    free(f->path);
    free(f);
}

const wtensor *wfile_get(const wfile *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}
