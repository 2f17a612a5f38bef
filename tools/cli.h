/* cli.h — the `carseg` command's subcommand registry and shared option helpers.
 * Each tools/cmd_*.c registers its subcommands with CLI_COMMAND; cli.c dispatches. */
#ifndef CARSEG_CLI_H
#define CARSEG_CLI_H

#include <stdio.h>

#include "carseg.h"

typedef int (*cli_fn)(int argc, char **argv);   /* argv[0] is the subcommand name */
void cli_register(const char *name, const char *summary, cli_fn fn);

#define CLI_COMMAND(name, summary, fn) \
    __attribute__((constructor)) static void cli_reg_##fn(void) { cli_register(name, summary, fn); }

/* Prints "carseg: error: <msg>" to stderr; returns exit code 1. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "carseg: error: <carseg_last_error()>"; returns exit code 1. */
int cli_fail_status(carseg_status st);

/* Option parsing helpers: `--name VALUE` or `--name=VALUE`. Returns the value and advances *i,
 * or NULL when argv[*i] is not that option. A missing value is reported and exits(2). */
const char *cli_opt(int argc, char **argv, int *i, const char *name);
int cli_flag(char **argv, int i, const char *name);
double cli_num(const char *opt, const char *v);   /* strict number parse; exits(2) on junk */
/* --precision VALUE (fp32, bf16x3, bf16, auto; exits(2) on anything else) for the commands that run
 * image towers; applied with carseg_clip_set_precision after loading. */
carseg_precision cli_precision(const char *v);
/* s as a JSON string literal (quotes, \" \\ \n \r \t, other control bytes as \u00XX; UTF-8 as is) */
void cli_json_str(FILE *f, const char *s);
#define CLI_PRECISION_HELP                                                                      \
    "  --precision P        image tower products: fp32 (default, the reference's arithmetic),\n" \
    "                       bf16x3 (near fp32, ~3x faster), bf16 (fastest) or auto (bf16x3\n"  \
    "                       where the CPU has Intel AMX, else fp32); bf16x3/bf16 fail\n"      \
    "                       without AMX (see README)\n"

#endif
