/* fuzz_tokenizer.c — libFuzzer target for the tokenizer: the vocabulary parser (gzip and plain
 * merges files) and the encoder on arbitrary bytes.
 *
 *   make fuzz && build/fuzz/fuzz_tokenizer -max_total_time=60 [corpus/]
 *
 * The first input byte picks the mode: even = parse the rest as a vocabulary file (and encode a
 * few texts when it opens), odd = encode the rest as text. The encoder uses OpenAI's vocabulary
 * from $CARSEG_VOCAB, ../shared/clip/ or ../../shared/clip/ when present, else a synthetic
 * vocabulary with valid but meaningless merges. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "util.h"

static tokenizer *g_tok;

static tokenizer *synthetic(void) {
    /* "#version" header + CLIP_NMERGES lines "A B" over the byte alphabet (U+0021.., U+0100..) */
    size_t cap = 64 + (size_t)CLIP_NMERGES * 16, n = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    n += (size_t)snprintf(s, cap, "#version: 0.2\n");
    for (int r = 0; r < CLIP_NMERGES; r++) {
        unsigned a = 0x21 + (unsigned)(r % 94), b = 0x100 + (unsigned)((r / 94) % 68);
        n += (size_t)snprintf(s + n, cap - n, "%c \xc4%c%s\n", (char)a, (char)(0x80 + (b - 0x100)),
                              r & 1 ? "</w>" : "");
    }
    tokenizer *t = NULL;
    if (tok_open_mem(s, n, "synthetic", &t) != CARSEG_OK)
        fprintf(stderr, "fuzz_tokenizer: synthetic vocabulary: %s\n", carseg_last_error());
    free(s);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    carseg_set_log_level(CARSEG_LOG_ERROR);   /* "not OpenAI's merges" on every mutant */
    const char *cands[] = {getenv("CARSEG_VOCAB"), "../shared/clip/bpe_simple_vocab_16e6.txt.gz",
                           "../../shared/clip/bpe_simple_vocab_16e6.txt.gz"};
    for (int i = 0; i < 3 && !g_tok; i++)
        if (cands[i] && file_exists(cands[i]) && tok_open(cands[i], &g_tok) != CARSEG_OK) g_tok = NULL;
    if (!g_tok) g_tok = synthetic();
    if (!g_tok) abort();
    return 0;
}

static void encode_all(const tokenizer *t, const char *text) {
    int32_t ids[CLIP_CONTEXT], few[3];
    int n = tok_encode(t, text, few, 3);
    int m = tok_tokenize(t, text, ids, CLIP_CONTEXT);
    if (n < 0 || m < 2 || m > CLIP_CONTEXT || ids[0] != CLIP_SOT || ids[m - 1] != CLIP_EOT) abort();
    if ((n + 2 < CLIP_CONTEXT ? n + 2 : CLIP_CONTEXT) != m) abort();   /* the two agree */
    for (int i = 1; i < m - 1; i++) if (ids[i] < 0 || ids[i] >= CLIP_VOCAB) abort();
    for (int i = 0; i < (n < 3 ? n : 3); i++) if (few[i] != ids[i + 1] && i + 1 < m - 1) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int mode = data[0] & 1;
    data++;
    size--;
    if (mode == 0) {
        tokenizer *t = NULL;
        if (tok_open_mem(data, size, "fuzz", &t) == CARSEG_OK) {
            encode_all(t, "a photo of a cat.");
            encode_all(t, "\xce\xa3 &amp; 123 <|endoftext|>");
            tok_close(t);
        }
    } else {
        char *s = malloc(size + 1);
        if (!s) return 0;
        memcpy(s, data, size);
        s[size] = 0;   /* the text ends at the first NUL, as for any C string */
        encode_all(g_tok, s);
        free(s);
    }
    return 0;
}
