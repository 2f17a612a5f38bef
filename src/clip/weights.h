/* weights.h — model files: every tensor of a CLIP checkpoint, by canonical name, as float32.
 *
 * Formats (detected from the bytes, not the file name):
 *   - safetensors (F32/F16/BF16), OpenAI/open_clip names or Hugging Face CLIPModel names;
 *   - TorchScript archives as OpenAI's clip.load downloads them (zip, data.pkl + data/N storages);
 *   - torch.save(state_dict) zip files (open_clip style).
 * Canonical names are OpenAI's (`visual.transformer.resblocks.0.attn.in_proj_weight`, ...);
 * Hugging Face names are mapped (q/k/v concatenated, projections transposed) so the CLIP module
 * sees one layout. Every tensor is converted to float32 once at load; the weights are immutable
 * afterwards. Every offset and length in a file is checked; errors name the file and the tensor.
 */
#ifndef CARSEG_WEIGHTS_H
#define CARSEG_WEIGHTS_H

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

/* Opens and fully converts a model file. On error *out is NULL and carseg_last_error() says
 * "PATH: what (tensor NAME)". */
carseg_status wfile_open(const char *path, wfile **out);
void wfile_close(wfile *f);
/* Tensor by canonical name, or NULL. */
const wtensor *wfile_get(const wfile *f, const char *name);
const char *wformat_name(wformat f);
const char *wdtype_name(wdtype d);

/* Same as wfile_open on bytes already in memory (fuzzers, tests); path only names the data in
 * messages. buf is not kept. */
carseg_status wfile_open_mem(const char *path, const uint8_t *buf, size_t len, wfile **out);

/* The architecture read off the tensors (clip_config is in clip.h): widths from the tensor
 * shapes, layers by counting resblocks, patch from conv1, grid from the positional embedding
 * rows, heads = width / 64, cfg->logit_scale = exp(stored logit_scale). CARSEG_EMODEL naming the
 * tensor when one is missing or has an inconsistent shape. */
struct clip_config;
carseg_status clip_config_from_weights(const wfile *f, struct clip_config *cfg);

// ---------------------------------------------------------------------------------------------
// internal: the format readers (safetensors.c, torchzip.c) append tensors under the names found
// in the file; wfile_open_mem then maps Hugging Face / prefixed names to canonical ones.

/* Appends a tensor; takes ownership of name and data (freed on failure too). */
carseg_status wfile_add(wfile *f, char *name, int ndim, const int64_t *shape, wdtype src,
                        float *data);
/* Converts count little-endian elements of dtype src at p to float32. */
void wdt_to_f32(wdtype src, const uint8_t *p, size_t count, float *out);
size_t wdt_size(wdtype d);
float f16_to_f32(uint16_t h);

carseg_status st_read(wfile *f, const uint8_t *buf, size_t len);   /* safetensors.c */
carseg_status tz_read(wfile *f, const uint8_t *buf, size_t len);   /* torchzip.c */
/* 1 (default): zip entries' CRC-32 are checked. Fuzzers and the corruption tests clear it to
 * reach the parsers behind the checksum. */
extern int tz_verify_crc;

#endif
