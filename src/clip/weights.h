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
 * The container (wfile, wtensor) is tensors.h; the readers are safetensors.h and torchzip.h.
 */
#ifndef CARSEG_WEIGHTS_H
#define CARSEG_WEIGHTS_H

#include <stdint.h>
#include "carseg.h"
#include "tensors.h"

/* Opens and fully converts a model file. On error *out is NULL and carseg_last_error() says
 * "PATH: what (tensor NAME)". */
carseg_status wfile_open(const char *path, wfile **out);

/* Same as wfile_open on bytes already in memory (fuzzers, tests); path only names the data in
 * messages. buf is not kept. */
carseg_status wfile_open_mem(const char *path, const uint8_t *buf, size_t len, wfile **out);

#endif
