/* cli.c — `carseg SUBCOMMAND ...`: dispatch to the registered subcommands. */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct { const char *name, *summary; cli_fn fn; } cli_entry;
static cli_entry g_cmds[64];
static int g_ncmds;

void cli_register(const char *name, const char *summary, cli_fn fn) {
    if (g_ncmds < 64) g_cmds[g_ncmds++] = (cli_entry){name, summary, fn};
}

int cli_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("carseg: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_fail_status(carseg_status st) {
    const char *m = carseg_last_error();
    return cli_fail("%s", m && *m ? m : carseg_status_str(st));
}

const char *cli_opt(int argc, char **argv, int *i, const char *name) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] != 0) return NULL;
    if (*i + 1 >= argc) {
        fprintf(stderr, "carseg: error: option %s needs a value\n", name);
        exit(2);
    }
    return argv[++*i];
}

int cli_flag(char **argv, int i, const char *name) { return strcmp(argv[i], name) == 0; }

double cli_num(const char *opt, const char *v) {
    char *end;
    double d = strtod(v, &end);
    if (end == v || *end) {
        fprintf(stderr, "carseg: error: %s expects a number, got '%s'\n", opt, v);
        exit(2);
    }
    return d;
}

carseg_precision cli_precision(const char *v) {
    carseg_precision p;
    if (carseg_precision_parse(v, &p) != CARSEG_OK) {
        fprintf(stderr, "carseg: error: --precision expects fp32, bf16x3, bf16 or auto, got '%s'\n", v);
        exit(2);
    }
    return p;
}

static int cmp_cmd(const void *a, const void *b) {
    return strcmp(((const cli_entry *)a)->name, ((const cli_entry *)b)->name);
}

static void usage(FILE *f) {
    fprintf(f, "carseg %s — CLIP as RNN: training-free open-vocabulary segmentation\n\n"
               "usage: carseg COMMAND [options]   (carseg COMMAND --help for details)\n\ncommands:\n",
            CARSEG_VERSION);
    for (int i = 0; i < g_ncmds; i++) fprintf(f, "  %-10s %s\n", g_cmds[i].name, g_cmds[i].summary);
}

int main(int argc, char **argv) {
    qsort(g_cmds, (size_t)g_ncmds, sizeof *g_cmds, cmp_cmd);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("carseg %s\n", CARSEG_VERSION);
        return 0;
    }
    for (int i = 0; i < g_ncmds; i++)
        if (!strcmp(argv[1], g_cmds[i].name)) return g_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "carseg: error: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

void cli_json_str(FILE *f, const char *s) { json_write_str(f, s); }   /* util.c's writer */
