/* fuzz_safetensors.c — libFuzzer target: arbitrary bytes through the model-file loader as a
 * safetensors file (header JSON, offsets, dtypes, Hugging Face name mapping).
 *   make fuzz && build/fuzz/fuzz_safetensors -max_total_time=60 CORPUS_DIR fuzz/seeds/safetensors
 * Seeds: fuzz/seeds/safetensors (OpenAI and Hugging Face names). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int init;
    if (!init) { carseg_set_log_level(-1); init = 1; }
    /* force the safetensors path: the first 8 bytes are the header length, byte 8 must be '{' */
    if (size < 9 || data[8] != '{') return 0;
    wfile *f = NULL;
    if (wfile_open_mem("fuzz.safetensors", data, size, &f) == CARSEG_OK) {
        for (int i = 0; i < f->n; i++) {   /* touch every element: ASan sees any bad size */
            volatile float s = 0;
            for (size_t k = 0; k < f->t[i].count; k++) s += f->t[i].data[k];
            (void)s;
        }
        wfile_close(f);
    } else if (strncmp(carseg_last_error(), "fuzz.safetensors: ", 18) != 0) {
        abort();   /* every error names the file */
    }
    return 0;
}
