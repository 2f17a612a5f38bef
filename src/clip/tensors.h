/* tensors.h — the tensors of a model file by name, as float32 (tensors.c): what the format
 * readers (safetensors.c, torchzip.c) fill and weights.c maps onto canonical names. */
#ifndef CARSEG_TENSORS_H
#define CARSEG_TENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

typedef enum { WDT_F32 = 0, WDT_F16, WDT_BF16 } wdtype;
typedef enum { WF_SAFETENSORS = 0, WF_TORCHSCRIPT, WF_TORCH_STATE } wformat;

typedef struct {
    char *name;          /* canonical (OpenAI) name */
    int ndim;
    int64_t shape[4];
    size_t count;        /* number of elements */
    wdtype src_dtype;    /* dtype stored in the file */
    float *data;         /* float32, owned by the wfile */
} wtensor;

typedef struct {
    char *path;
    wformat format;
    int hf_names;        /* 1 if the file used Hugging Face names */
    int n;
    wtensor *t;
    int cap;             /* allocated entries of t (internal) */
    int *order;          /* indices of t sorted by name, for wfile_get (internal) */
} wfile;

void wfile_close(wfile *f);
/* Tensor by canonical name, or NULL. */
const wtensor *wfile_get(const wfile *f, const char *name);
const char *wformat_name(wformat f);
const char *wdtype_name(wdtype d);

/* Appends a tensor; takes ownership of name and data (freed on failure too). */
carseg_status wfile_add(wfile *f, char *name, int ndim, const int64_t *shape, wdtype src,
                        float *data);
/* Converts count little-endian elements of dtype src at p to float32. */
void wdt_to_f32(wdtype src, const uint8_t *p, size_t count, float *out);
/* wfile_open: on (1) while this thread converts from wfile_open's read-only file mapping, so that
 * wdt_to_f32 gives back the source pages it has read (madvise MADV_DONTNEED: they stay in the page
 * cache, and a read would map them again). The file's bytes and the converted copy are then not
 * both resident: peak memory about the model once, not twice. */
void wdt_source_mapped(int on);
size_t wdt_size(wdtype d);
float f16_to_f32(uint16_t h);

/* Frees n tensors (names and data) and the array. */
void wfile_free_tensors(wtensor *t, int n);
/* An index array of t sorted by name (malloc'd, NULL when out of memory) and the lookup in it. */
int *wtensor_name_index(const wtensor *t, int n);
const wtensor *wtensor_index_find(const wtensor *t, const int *o, int n, const char *name);

#endif
