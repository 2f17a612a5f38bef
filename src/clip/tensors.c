/* tensors.c — the tensor container of a model file (wfile: named float32 tensors, see tensors.h)
 * and the stored dtypes' conversion to float32. The format readers (safetensors.c, torchzip.c)
 * fill it; weights.c opens files and maps names. */
#include "tensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util.h"

const char *wformat_name(wformat f) {
    switch (f) {
    case WF_SAFETENSORS: return "safetensors";
    case WF_TORCHSCRIPT: return "torchscript";
    case WF_TORCH_STATE: return "torch-state-dict";
    }
    return "?";
}

const char *wdtype_name(wdtype d) {
    switch (d) {
    case WDT_F32: return "F32";
    case WDT_F16: return "F16";
    case WDT_BF16: return "BF16";
    }
    return "?";
}

size_t wdt_size(wdtype d) { return d == WDT_F32 ? 4 : 2; }

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);                   /* inf / nan */
    } else if (exp == 0) {
        if (man == 0) bits = sign;                                  /* +-0 */
        else {                                                      /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static _Thread_local int g_src_mapped;
void wdt_source_mapped(int on) { g_src_mapped = on; }

/* the whole pages inside [p, p + n) back to the kernel (a file mapping: see wdt_source_mapped) */
static void release_source(const uint8_t *p, size_t n) {
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    if (n < (1u << 20) || pg == 0 || pg & (pg - 1)) return;
    uintptr_t a = ((uintptr_t)p + pg - 1) & ~(pg - 1), e = ((uintptr_t)p + n) & ~(pg - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_DONTNEED);
}

void wdt_to_f32(wdtype src, const uint8_t *p, size_t count, float *out) {
    const int par = count >= (1u << 20);   /* big tensors only: threads cost more than small copies */
    switch (src) {
    case WDT_F32:
        #pragma omp parallel for if (par) schedule(static)
        for (size_t i = 0; i < count; i++) {
            uint32_t b = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                         (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&out[i], &b, 4);
        }
        break;
    case WDT_F16:
        #pragma omp parallel for if (par) schedule(static)
        for (size_t i = 0; i < count; i++) out[i] = f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    case WDT_BF16:
        #pragma omp parallel for if (par) schedule(static)
        for (size_t i = 0; i < count; i++) {
            uint32_t b = ((uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8) << 16;
            memcpy(&out[i], &b, 4);
        }
        break;
    }
    if (g_src_mapped) release_source(p, count * (src == WDT_F32 ? 4 : 2));
}

carseg_status wfile_add(wfile *f, char *name, int ndim, const int64_t *shape, wdtype src,
                        float *data) {
    if (!name || ndim < 0 || ndim > 4) {
        carseg_status st = name ? set_err(CARSEG_EFORMAT, "%s: %d dimensions, at most 4 supported (tensor %s)",
                                          f->path, ndim, name)
                                : set_err(CARSEG_ENOMEM, "%s: out of memory", f->path);
        free(name);
        cs_free(data);
        return st;
    }
    free(f->order);   /* the name index is rebuilt by finish() */
    f->order = NULL;
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 64;
        wtensor *t = realloc(f->t, (size_t)cap * sizeof *t);
        if (!t) {
            free(name);
            cs_free(data);
            return set_err(CARSEG_ENOMEM, "%s: out of memory", f->path);
        }
        f->t = t;
        f->cap = cap;
    }
    wtensor *t = &f->t[f->n++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->ndim = ndim;
    t->count = 1;
    for (int i = 0; i < ndim; i++) { t->shape[i] = shape[i]; t->count *= (size_t)shape[i]; }
    t->src_dtype = src;
    t->data = data;
    return CARSEG_OK;
}

void wfile_free_tensors(wtensor *t, int n) {
    for (int i = 0; i < n; i++) { free(t[i].name); cs_free(t[i].data); }
    free(t);
}

void wfile_close(wfile *f) {
    if (!f) return;
    wfile_free_tensors(f->t, f->n);
    free(f->order);
    free(f->path);
    free(f);
}

/* sorting an index array by tensor name (qsort has no context pointer: a thread-local one) */
static _Thread_local const wtensor *g_sort_t;
static int cmp_idx(const void *a, const void *b) {
    return strcmp(g_sort_t[*(const int *)a].name, g_sort_t[*(const int *)b].name);
}

int *wtensor_name_index(const wtensor *t, int n) {
    int *o = malloc((size_t)(n ? n : 1) * sizeof *o);
    if (!o) return NULL;
    for (int i = 0; i < n; i++) o[i] = i;
    g_sort_t = t;
    qsort(o, (size_t)n, sizeof *o, cmp_idx);
    return o;
}

const wtensor *wtensor_index_find(const wtensor *t, const int *o, int n, const char *name) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(t[o[mid]].name, name);
        if (c == 0) return &t[o[mid]];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

const wtensor *wfile_get(const wfile *f, const char *name) {
    if (!f || !name) return NULL;
    if (f->order) return wtensor_index_find(f->t, f->order, f->n, name);
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}
