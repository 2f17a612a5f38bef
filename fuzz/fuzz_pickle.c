/* fuzz_pickle.c — libFuzzer target: the REFER pickle reader (refer.c pickle_to_json) and the
 * journal line parser must reject any input cleanly. Journal lines are parsed the way
 * cmd_eval.c does it: inside a NUL-terminated file buffer (read_file). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    json_free(pickle_to_json(data, size, err, sizeof err));
    char *line = malloc(size + 1);
    if (!line) return 0;
    memcpy(line, data, size);
    line[size] = 0;
    journal_rec r;
    if (journal_parse(line, size, &r, 0) == 0) journal_rec_free(&r);
    if (journal_parse(line, size, &r, 1) == 0) journal_rec_free(&r);
    free(line);
    return 0;
}
