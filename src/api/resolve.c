/* resolve.c — the public entry points that take model names: a name ("ViT-B/16", "bpe") is
 * resolved through the model cache (models.c, which may download), then the engine loads the path.
 * The engine layers below (clip/) take file paths only and never reach the downloader. */
#include <stdlib.h>

#include "clip.h"
#include "models.h"
#include "tokenizer.h"
#include "util.h"

carseg_status carseg_clip_load(const char *name_or_path, carseg_clip **out) {
    if (!out || !name_or_path) return set_err(CARSEG_EINVAL, "carseg_clip_load: NULL argument");
    *out = NULL;
    char *path = NULL;
    TRY(models_resolve_kind(name_or_path, "clip", &path));
    carseg_status st = clip_load(path, out);
    free(path);
    return st;
}

carseg_status carseg_tokenizer_open(const char *vocab, carseg_tokenizer **out) {
    if (!out) return set_err(CARSEG_EINVAL, "carseg_tokenizer_open: out is NULL");
    *out = NULL;
    char *path = NULL;
    TRY(models_resolve_vocab(vocab, &path));
    carseg_status st = tok_open(path, out);
    free(path);
    return st;
}
