/* cmd_tokenize.c — `carseg tokenize`: CLIP token ids of texts (clip.tokenize, truncate=True). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: carseg tokenize [--vocab FILE] [--bpe] [--context N] TEXT...\n\n"
            "Prints, per TEXT, one line of CLIP token ids: SOT (49406) ... EOT (49407), as\n"
            "clip.tokenize(text, truncate=True) gives them without the zero padding.\n\n"
            "  --vocab FILE   bpe_simple_vocab_16e6.txt.gz or a Hugging Face merges.txt\n"
            "                 (default: the cached vocabulary, downloaded when missing)\n"
            "  --bpe          print the BPE ids only (SimpleTokenizer.encode: no SOT/EOT, no cut)\n"
            "  --context N    context length (default 77)\n");
}

static int cmd_tokenize(int argc, char **argv) {
    const char *vocab = NULL, *v;
    int bpe = 0, ctx = CARSEG_CONTEXT, first = argc;
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) { usage(stdout); return 0; }
        if ((v = cli_opt(argc, argv, &i, "--vocab"))) { vocab = v; continue; }
        if ((v = cli_opt(argc, argv, &i, "--context"))) {
            double d = cli_num("--context", v);
            if (d < 2 || d > 1e6 || d != (int)d) return cli_fail("--context must be an integer >= 2");
            ctx = (int)d;
            continue;
        }
        if (cli_flag(argv, i, "--bpe")) { bpe = 1; continue; }
        if (cli_flag(argv, i, "--")) { first = i + 1; break; }
        if (argv[i][0] == '-' && argv[i][1] == '-') return cli_fail("tokenize: unknown option %s", argv[i]);
        first = i;
        break;
    }
    if (first >= argc) { usage(stderr); return 2; }
    carseg_tokenizer *t;
    carseg_status st = carseg_tokenizer_open(vocab, &t);
    if (st) return cli_fail_status(st);
    int rc = 0, cap = ctx;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) { carseg_tokenizer_close(t); return cli_fail("out of memory"); }
    for (int i = first; i < argc && !rc; i++) {
        int n;
        if (bpe) {
            n = carseg_tokenizer_encode(t, argv[i], ids, cap);
            if (n > cap) {
                int32_t *nb = realloc(ids, (size_t)n * sizeof *ids);
                if (!nb) { rc = cli_fail("out of memory"); break; }
                ids = nb;
                cap = n;
                n = carseg_tokenizer_encode(t, argv[i], ids, cap);
            }
        } else {
            n = carseg_tokenize(t, argv[i], ids, ctx);
        }
        if (n < 0) { rc = cli_fail_status(CARSEG_EINVAL); break; }
        for (int k = 0; k < n; k++) printf(k ? " %d" : "%d", ids[k]);
        putchar('\n');
    }
    free(ids);
    carseg_tokenizer_close(t);
    if (fflush(stdout) != 0 && !rc) rc = cli_fail("cannot write the output");
    return rc;
}
CLI_COMMAND("tokenize", "CLIP token ids of texts", cmd_tokenize)
