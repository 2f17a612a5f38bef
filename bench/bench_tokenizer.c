/* bench_tokenizer.c — vocabulary load time and tokenization speed (clip.tokenize of CaR-style
 * prompts) through the public API. Vocabulary: $CARSEG_VOCAB, ../shared/clip/ or
 * ../../shared/clip/; skipped otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "carseg.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

int main(void) {
    const char *cands[] = {getenv("CARSEG_VOCAB"), "../shared/clip/bpe_simple_vocab_16e6.txt.gz",
                           "../../shared/clip/bpe_simple_vocab_16e6.txt.gz"};
    const char *path = NULL;
    for (int i = 0; i < 3 && !path; i++) if (cands[i] && access(cands[i], R_OK) == 0) path = cands[i];
    if (!path) { printf("bench_tokenizer: no vocabulary found, skipped\n"); return 0; }
    carseg_tokenizer *t = NULL;
    double t0 = now_ms();
    const int nopen = 5;
    for (int i = 0; i < nopen; i++) {
        carseg_tokenizer_close(t);
        if (carseg_tokenizer_open(path, &t) != CARSEG_OK) { fprintf(stderr, "%s\n", carseg_last_error()); return 1; }
    }
    double open_ms = (now_ms() - t0) / nopen;
    static const char *texts[] = {
        "a clean origami aeroplane.", "person with clothes,people,human", "tvmonitor screen",
        "There is a large sofa in the scene.", "the man in the red shirt on the left",
        "a clean origami pottedplant.", "bird avian", "hairdrier,blowdrier", "café naïve résumé"};
    const int nt = (int)(sizeof texts / sizeof *texts), reps = 20000;
    int32_t ids[CARSEG_CONTEXT];
    long total = 0;
    t0 = now_ms();
    for (int r = 0; r < reps; r++) total += carseg_tokenize(t, texts[r % nt], ids, CARSEG_CONTEXT);
    double us = (now_ms() - t0) * 1000.0 / reps;
    printf("bench_tokenizer: vocabulary load %.1f ms (gzip), tokenize %.2f us per prompt "
           "(%.1f tokens avg, %d prompts)\n", open_ms, us, (double)total / reps, reps);
    carseg_tokenizer_close(t);
    return 0;
}
