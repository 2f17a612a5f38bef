/* tokenizer.h — OpenAI CLIP's byte-level BPE tokenizer (simple_tokenizer.py), in C.
 * Vocabulary from bpe_simple_vocab_16e6.txt.gz (gzip, as OpenAI ships it) or a Hugging Face
 * merges.txt. ftfy.fix_text is not reproduced (no C equivalent): see the README. */
#ifndef CARSEG_TOKENIZER_H
#define CARSEG_TOKENIZER_H

#include <stdint.h>
#include "carseg.h"

#define CLIP_SOT 49406
#define CLIP_EOT 49407
#define CLIP_CONTEXT 77

typedef struct tokenizer tokenizer;
carseg_status tok_open(const char *path, tokenizer **out);
void tok_close(tokenizer *t);
/* BPE ids of text without SOT/EOT (SimpleTokenizer.encode). Returns count (may exceed max:
 * then only max were written), or -1 on error. */
int tok_encode(const tokenizer *t, const char *text, int32_t *ids, int max);
/* clip.tokenize(text, truncate=True): SOT ids... EOT, zero-padded to ctx. Returns the number of
 * non-padding tokens (SOT..EOT inclusive). */
int tok_tokenize(const tokenizer *t, const char *text, int32_t *out, int ctx);

#endif
