/* models.h — known checkpoints and the vocabulary: names, URLs, checksums, the local cache and
 * downloads (libcurl + OpenSSL sha256). The public side is carseg_models_* in carseg.h. */
#ifndef CARSEG_MODELS_H
#define CARSEG_MODELS_H

#include "carseg.h"

/* An existing file path is returned as is (a malloc'd copy); a known name (aliases allowed)
 * gives its cached file, downloading it first when it is missing and downloads are allowed. */
carseg_status models_resolve(const char *name_or_path, char **path_out);
/* models_resolve for a loader of one kind ("clip", "vocab", "sam"): a known name of another kind
 * is refused (EINVAL naming both kinds) before any download. */
carseg_status models_resolve_kind(const char *name_or_path, const char *kind, char **path_out);
/* The same for the BPE vocabulary; NULL means the default (OpenAI's bpe_simple_vocab_16e6). */
carseg_status models_resolve_vocab(const char *path_or_null, char **path_out);
/* Adds an entry to the registry (tests: files with a checksum they chose). name, url and sha256
 * (64 hex digits) are copied; the cache file name is the URL's last component. */
carseg_status models_register(const char *name, const char *url, const char *sha256, const char *kind);

#endif
