/* fuzz_torchzip.c — libFuzzer target: arbitrary bytes through the PyTorch zip reader (central
 * directory, zip64, local headers), the pickle interpreter and tensor views. CRC checks are off
 * so mutations reach the parsers behind them.
 *   make fuzz && build/fuzz/fuzz_torchzip -max_total_time=60 -max_len=65536 CORPUS_DIR fuzz/seeds/torchzip
 * Seeds: fuzz/seeds/torchzip (views.pt, tiny_jit.pt from scripts/gen_model_files.py). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "torchzip.h"
#include "weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int init;
    if (!init) { carseg_set_log_level(-1); tz_verify_crc = 0; init = 1; }
    if (size < 4 || memcmp(data, "PK\x03\x04", 4) != 0) return 0;
    wfile *f = NULL;
    if (wfile_open_mem("fuzz.pt", data, size, &f) == CARSEG_OK) {
        for (int i = 0; i < f->n; i++) {
            volatile float s = 0;
            for (size_t k = 0; k < f->t[i].count; k++) s += f->t[i].data[k];
            (void)s;
        }
        wfile_close(f);
    } else if (strncmp(carseg_last_error(), "fuzz.pt: ", 9) != 0) {
        abort();
    }
    return 0;
}
