/* cmd_inspect.c — `carseg inspect MODEL`: what a model file holds — format, stored dtype, the CLIP
 * architecture read off the tensors (as clip_load will see it) and the tensor list. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "clip.h"
#include "util.h"
#include "weights.h"

static void usage(FILE *f) {
    fprintf(f, "usage: carseg inspect MODEL [--no-list]\n\n"
               "Prints the format (safetensors, torchscript, torch-state-dict), the dtype stored in the\n"
               "file, the CLIP architecture read off the tensors and every tensor (canonical OpenAI name,\n"
               "shape, stored dtype). Hugging Face CLIPModel names are shown mapped.\n"
               "  --no-list   omit the tensor list\n");
}

static int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int list = 1;
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) { usage(stdout); return 0; }
        else if (cli_flag(argv, i, "--no-list")) list = 0;
        else if (argv[i][0] == '-' && argv[i][1]) return cli_fail("inspect: unknown option %s", argv[i]);
        else if (path) return cli_fail("inspect: one MODEL file expected");
        else path = argv[i];
    }
    if (!path) { usage(stderr); return 2; }
    wfile *f = NULL;
    carseg_status st = wfile_open(path, &f);
    if (st != CARSEG_OK) return cli_fail_status(st);
    size_t nparam = 0, ndt[3] = {0, 0, 0};
    for (int i = 0; i < f->n; i++) { nparam += f->t[i].count; ndt[f->t[i].src_dtype]++; }
    printf("file: %s\n", path);
    printf("format: %s%s\n", wformat_name(f->format), f->hf_names ? " (Hugging Face names, mapped)" : "");
    printf("dtype:");
    for (int d = 0; d < 3; d++) if (ndt[d]) printf(" %s (%zu tensors)", wdtype_name((wdtype)d), ndt[d]);
    printf("\ntensors: %d, parameters: %zu\n", f->n, nparam);
    clip_config c;
    st = clip_config_from_weights(f, &c);
    if (st == CARSEG_OK) {
        printf("vision: width %d, layers %d, heads %d, patch %d, grid %d, resolution %d, mlp %d\n",
               c.v_width, c.v_layers, c.v_heads, c.v_patch, c.v_grid, c.v_grid * c.v_patch, c.v_mlp);
        printf("text: width %d, layers %d, heads %d, context %d, vocab %d\n", c.t_width, c.t_layers, c.t_heads,
               c.t_ctx, c.t_vocab);
        printf("embed: %d\n", c.embed);
        const wtensor *ls = wfile_get(f, "logit_scale");
        printf("logit_scale: %.6g (exp %.6g)\n", ls ? ls->data[0] : 0.0, c.logit_scale);
    } else {
        printf("architecture: not a ViT CLIP model: %s\n", carseg_last_error());
    }
    if (list) {
        printf("\n");
        for (int i = 0; i < f->n; i++) {
            const wtensor *t = &f->t[i];
            char shape[96] = "[";
            for (int d = 0; d < t->ndim; d++)
                snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? ", " : "",
                         (long long)t->shape[d]);
            strcat(shape, "]");
            printf("%-56s %-20s %s\n", t->name, shape, wdtype_name(t->src_dtype));
        }
    }
    wfile_close(f);
    return 0;
}

CLI_COMMAND("inspect", "show a model file's format, architecture and tensors", cmd_inspect)
