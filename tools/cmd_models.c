/* cmd_models.c — `carseg models list|pull|path`: the known checkpoints and vocabulary, the cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: carseg models list              known models, whether cached, size, path\n"
            "       carseg models pull NAME...      download into the cache (sha256 checked)\n"
            "       carseg models path NAME         where NAME's file is cached (exit 1: not yet)\n\n"
            "NAME: ViT-B/16, ViT-L/14, ViT-B/32, ViT-L/14@336px, bpe (the BPE vocabulary),\n"
            "sam_hq_vit_b, sam_hq_vit_l, sam_hq_vit_h (HQ-SAM, for carseg sam / segment --sam);\n"
            "case and punctuation are ignored (vit-b16, ViT-B-16.pt).\n"
            "Cache: $CARSEG_CACHE, else $XDG_CACHE_HOME/carseg, else ~/.cache/carseg.\n"
            "Offline: download the URL that `list` shows and put the file at the path it shows,\n"
            "or pass the file's path wherever a model name is accepted.\n"
            "Environment: CARSEG_MODELS_URL=BASE fetches BASE/FILE instead (a mirror);\n"
            "CARSEG_OFFLINE=1 stops other commands from downloading on their own.\n");
}

static int cmd_list(void) {
    char *dir;
    carseg_status st = carseg_models_cache_dir(&dir);
    if (st) return cli_fail_status(st);
    fprintf(stderr, "cache: %s\n", dir);
    free(dir);
    printf("%-16s %-6s %-8s %10s  %s\n", "NAME", "KIND", "STATUS", "SIZE", "PATH / URL");
    for (int i = 0; i < carseg_models_count(); i++) {
        const carseg_model_info *m = carseg_models_get(i);
        char *path;
        if ((st = carseg_models_cache_path(m->name, &path))) return cli_fail_status(st);
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode))
            printf("%-16s %-6s %-8s %7.1f MB  %s\n", m->name, m->kind, "cached", (double)sb.st_size / 1e6, path);
        else
            printf("%-16s %-6s %-8s %10s  %s\n%-16s %-6s %-8s %10s  <- %s\n", m->name, m->kind, "missing", "-", path,
                   "", "", "", "", m->url);
        free(path);
    }
    return 0;
}

static int cmd_models(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) { usage(stdout); return 0; }
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
    if (!strcmp(sub, "list")) {
        if (argc != 2) return cli_fail("models list takes no arguments");
        return cmd_list();
    }
    if (!strcmp(sub, "pull")) {
        if (argc < 3) return cli_fail("models pull: which model? (e.g. ViT-B/16)");
        for (int i = 2; i < argc; i++) {
            char *path;
            carseg_status st = carseg_models_pull(argv[i], &path);
            if (st) return cli_fail_status(st);
            printf("%s\n", path);
            free(path);
        }
        return 0;
    }
    if (!strcmp(sub, "path")) {
        if (argc != 3) return cli_fail("models path takes one model name");
        char *path;
        carseg_status st = carseg_models_cache_path(argv[2], &path);
        if (st) return cli_fail_status(st);
        printf("%s\n", path);
        struct stat sb;
        int have = stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
        free(path);
        if (!have) {
            fprintf(stderr, "carseg: %s is not downloaded yet: carseg models pull '%s'\n",
                    carseg_models_find(argv[2])->name, carseg_models_find(argv[2])->name);
            return 1;
        }
        return 0;
    }
    fprintf(stderr, "carseg: error: unknown models subcommand '%s'\n", sub);
    usage(stderr);
    return 2;
}
CLI_COMMAND("models", "list, download (pull) and locate CLIP checkpoints", cmd_models)
