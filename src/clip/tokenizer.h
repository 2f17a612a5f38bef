/* tokenizer.h — OpenAI CLIP's byte-level BPE tokenizer (simple_tokenizer.py), in C.
 * Vocabulary from bpe_simple_vocab_16e6.txt.gz (gzip, as OpenAI ships it) or a Hugging Face
 * merges.txt. ftfy.fix_text is not reproduced (no C equivalent): see the README. */
#ifndef CARSEG_TOKENIZER_H
#define CARSEG_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

#define CLIP_SOT 49406
#define CLIP_EOT 49407
#define CLIP_CONTEXT 77
#define CLIP_VOCAB 49408
#define CLIP_NMERGES (49152 - 256 - 2)   /* merge lines used: [1 : 49152-256-2+1] */

typedef struct carseg_tokenizer tokenizer;   /* the public carseg_tokenizer */
carseg_status tok_open(const char *path, tokenizer **out);
/* Same from a file's bytes in memory (gzip or plain); `name` names it in error messages. */
carseg_status tok_open_mem(const void *data, size_t len, const char *name, tokenizer **out);
void tok_close(tokenizer *t);
/* BPE ids of text without SOT/EOT (SimpleTokenizer.encode). Returns count (may exceed max:
 * then only max were written), or -1 on error. */
int tok_encode(const tokenizer *t, const char *text, int32_t *ids, int max);
/* clip.tokenize(text, truncate=True): SOT ids... EOT, zero-padded to ctx. Returns the number of
 * non-padding tokens (SOT..EOT inclusive). */
int tok_tokenize(const tokenizer *t, const char *text, int32_t *out, int ctx);
/* 1 when the vocabulary's merges are exactly OpenAI's (checked by sha256 at open). */
int tok_is_openai(const tokenizer *t);

#endif
