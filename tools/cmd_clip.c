/* cmd_clip.c — `carseg embed` (CLIP text and image features as JSON) and `carseg classify`
 * (zero-shot classification with CaR's 15 templates, the standard CLIP recipe). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carseg.h"
#include "cli.h"

typedef struct {
    const char **v;
    int n, cap;
} strlist;

static int strlist_add(strlist *l, const char *s) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        const char **nv = realloc(l->v, sizeof(char *) * cap);
        if (!nv) return -1;
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return 0;
}

static carseg_status open_model(const char *name, carseg_precision prec, carseg_clip **m) {
    carseg_status st = carseg_clip_load(name, m);   /* names through the model cache */
    if (st == CARSEG_OK && (st = carseg_clip_set_precision(*m, prec)) != CARSEG_OK) {
        carseg_clip_free(*m);
        *m = NULL;
    }
    return st;
}

/* CLIP's standard preprocessing (Resize + CenterCrop to the model's resolution) + encoder */
static carseg_status encode_image_file(const carseg_clip *m, const char *path, int n_blocks,
                                       float *feat) {
    uint8_t *rgb = NULL;
    int w, h;
    carseg_status st = carseg_image_load(path, &rgb, &w, &h);
    if (st == CARSEG_OK) {
        st = carseg_clip_encode_image_rgb(m, rgb, w, h, n_blocks, feat);
        if (st != CARSEG_OK) cli_fail("%s: %s", path, carseg_last_error());
    } else {
        cli_fail("%s", carseg_last_error());
    }
    carseg_image_free(rgb);
    return st;
}

/* rows /= their L2 norm (double sum of squares, as the engine does) */
static void l2norm(float *x, int rows, int cols) {
    for (int i = 0; i < rows; i++) {
        float *r = x + (size_t)i * cols;
        double ss = 0;
        for (int j = 0; j < cols; j++) ss += (double)r[j] * r[j];
        if (ss <= 0) continue;
        float nrm = (float)sqrt(ss);
        for (int j = 0; j < cols; j++) r[j] /= nrm;
    }
}

static void print_rows(const char *key, const float *v, int n, int E, int last) {
    printf("  \"%s\": [", key);
    for (int i = 0; i < n; i++) {
        printf(i ? ",\n    [" : "\n    [");
        for (int k = 0; k < E; k++) printf(k ? ", %.9g" : "%.9g", v[(size_t)i * E + k]);
        printf("]");
    }
    printf(n ? "\n  ]%s\n" : "]%s\n", last ? "" : ",");
}

static int parse_blocks(const char *v, int *nb) {
    double d = cli_num("--blocks", v);
    if (d < 0 || d > 1000 || d != (int)d) return cli_fail("--blocks must be an integer >= 0");
    *nb = (int)d;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// embed

static void embed_usage(FILE *f) {
    fprintf(f,
            "usage: carseg embed --model M [--vocab F] [--text T]... [--image I]... [--blocks N]\n"
            "                    [--normalize] [--precision fp32|bf16x3|bf16|auto]\n\n"
            "Prints CLIP features as JSON: {\"text\": [[...]], \"image\": [[...]]}, one row per\n"
            "--text / --image in the order given, unnormalised (OpenAI encode_text / encode_image).\n"
            "Images go through CLIP's standard preprocessing (bicubic resize of the shorter side,\n"
            "center crop to the model's resolution, CLIP mean/std).\n\n"
            "  --model M      model name (ViT-B/16, ViT-L/14, ...) or file (.pt, .safetensors)\n"
            "  --vocab F      BPE vocabulary (default: the cached one)\n"
            "  --blocks N     run only the first N image blocks (CaR's classifier: layers-1)\n"
            "  --normalize    L2-normalise every row\n"
            CLI_PRECISION_HELP);
}

static int cmd_embed(int argc, char **argv) {
    const char *model = NULL, *vocab = NULL, *v;
    strlist texts = {0}, images = {0};
    int nb = 0, norm = 0, rc;
    carseg_precision prec = CARSEG_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) { embed_usage(stdout); return 0; }
        if ((v = cli_opt(argc, argv, &i, "--model"))) { model = v; continue; }
        if ((v = cli_opt(argc, argv, &i, "--vocab"))) { vocab = v; continue; }
        if ((v = cli_opt(argc, argv, &i, "--text"))) { if (strlist_add(&texts, v)) return cli_fail("out of memory"); continue; }
        if ((v = cli_opt(argc, argv, &i, "--image"))) { if (strlist_add(&images, v)) return cli_fail("out of memory"); continue; }
        if ((v = cli_opt(argc, argv, &i, "--blocks"))) { if ((rc = parse_blocks(v, &nb))) return rc; continue; }
        if ((v = cli_opt(argc, argv, &i, "--precision"))) { prec = cli_precision(v); continue; }
        if (cli_flag(argv, i, "--normalize")) { norm = 1; continue; }
        return cli_fail("embed: unexpected argument %s (see carseg embed --help)", argv[i]);
    }
    if (!model) { embed_usage(stderr); return 2; }
    if (texts.n == 0 && images.n == 0) return cli_fail("embed: nothing to embed (give --text or --image)");
    carseg_clip *m;
    carseg_status st = open_model(model, prec, &m);
    if (st) return cli_fail_status(st);
    int E = carseg_clip_embed_dim(m), failed = 0;
    float *tf = calloc((size_t)texts.n * E + 1, sizeof(float));
    float *imf = calloc((size_t)images.n * E + 1, sizeof(float));
    carseg_tokenizer *tok = NULL;
    if (!tf || !imf) rc = cli_fail("out of memory"), failed = 1;
    if (!failed && texts.n &&
        ((st = carseg_tokenizer_open(vocab, &tok)) != CARSEG_OK ||
         (st = carseg_clip_encode_texts(m, tok, texts.v, texts.n, tf)) != CARSEG_OK))
        rc = cli_fail_status(st), failed = 1;
    for (int i = 0; !failed && i < images.n; i++)
        if (encode_image_file(m, images.v[i], nb, imf + (size_t)i * E) != CARSEG_OK) rc = 1, failed = 1;
    if (!failed) {
        rc = 0;
        if (norm) {
            l2norm(tf, texts.n, E);
            l2norm(imf, images.n, E);
        }
        printf("{\n");
        print_rows("text", tf, texts.n, E, 0);
        print_rows("image", imf, images.n, E, 1);
        printf("}\n");
        if (fflush(stdout) != 0) rc = cli_fail("cannot write the output");
    }
    carseg_tokenizer_close(tok);
    free(tf), free(imf), free(texts.v), free(images.v);
    carseg_clip_free(m);
    return rc;
}
CLI_COMMAND("embed", "CLIP text and image features as JSON", cmd_embed)

// ---------------------------------------------------------------------------------------------
// classify

static void classify_usage(FILE *f) {
    fprintf(f,
            "usage: carseg classify --model M IMAGE (--classes a,b,c | --class NAME...)\n"
            "                       [--template T]... [--vocab F] [--blocks N] [--top K] [--json]\n"
            "                       [--precision fp32|bf16x3|bf16|auto]\n\n"
            "Zero-shot classification, the standard CLIP recipe: per class, the mean of the\n"
            "L2-normalised text features over the templates, renormalised; probabilities =\n"
            "softmax(logit_scale * cos(image, class)). Prints the classes ranked, one\n"
            "\"probability<TAB>class\" line each.\n\n"
            "  --classes LIST  comma-separated class names\n"
            "  --class NAME    one class name (may contain commas); repeatable\n"
            "  --template T    a template with {} for the name; repeatable (default: CaR's 15)\n"
            "  --blocks N      image blocks to run (default all; CaR's classifier uses layers-1)\n"
            "  --top K         print only the K most probable classes\n"
            "  --json          print [{\"class\": ..., \"p\": ...}, ...] instead\n"
            CLI_PRECISION_HELP);
}

typedef struct { float p; int i; } ranked;
static int by_p_desc(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    return x->p < y->p ? 1 : x->p > y->p ? -1 : x->i - y->i;
}

static int cmd_classify(int argc, char **argv) {
    const char *model = NULL, *vocab = NULL, *image = NULL, *v;
    strlist classes = {0}, templates = {0};
    char *class_buf = NULL;
    int nb = 0, top = 0, as_json = 0, rc;
    carseg_precision prec = CARSEG_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) { classify_usage(stdout); return 0; }
        if ((v = cli_opt(argc, argv, &i, "--model"))) { model = v; continue; }
        if ((v = cli_opt(argc, argv, &i, "--vocab"))) { vocab = v; continue; }
        if ((v = cli_opt(argc, argv, &i, "--template"))) {
            if (!strstr(v, "{}")) return cli_fail("--template must contain {} (got \"%s\")", v);
            if (strlist_add(&templates, v)) return cli_fail("out of memory");
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--class"))) { if (strlist_add(&classes, v)) return cli_fail("out of memory"); continue; }
        if ((v = cli_opt(argc, argv, &i, "--classes"))) {
            free(class_buf);
            class_buf = strdup(v);
            if (!class_buf) return cli_fail("out of memory");
            for (char *s = strtok(class_buf, ","); s; s = strtok(NULL, ","))
                if (*s && strlist_add(&classes, s)) return cli_fail("out of memory");
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--blocks"))) { if ((rc = parse_blocks(v, &nb))) return rc; continue; }
        if ((v = cli_opt(argc, argv, &i, "--precision"))) { prec = cli_precision(v); continue; }
        if ((v = cli_opt(argc, argv, &i, "--top"))) {
            double d = cli_num("--top", v);
            if (d < 1 || d != (int)d || d > 1e9) return cli_fail("--top must be a positive integer");
            top = (int)d;
            continue;
        }
        if (cli_flag(argv, i, "--json")) { as_json = 1; continue; }
        if (argv[i][0] == '-' && argv[i][1] == '-') return cli_fail("classify: unknown option %s", argv[i]);
        if (image) return cli_fail("classify: one image at a time (got %s and %s)", image, argv[i]);
        image = argv[i];
    }
    if (!model || !image || classes.n == 0) { classify_usage(stderr); free(class_buf); return 2; }
    int nc = classes.n;
    carseg_clip *m;
    carseg_status st = open_model(model, prec, &m);
    if (st) { free(class_buf); return cli_fail_status(st); }
    carseg_tokenizer *tok = NULL;
    uint8_t *rgb = NULL;
    int w, h;
    float *probs = malloc(sizeof(float) * (size_t)nc);
    ranked *r = malloc(sizeof(ranked) * (size_t)nc);
    if (!probs || !r) st = CARSEG_ENOMEM, cli_fail("out of memory");
    else if ((st = carseg_tokenizer_open(vocab, &tok)) != CARSEG_OK) cli_fail_status(st);
    else if ((st = carseg_image_load(image, &rgb, &w, &h)) != CARSEG_OK) cli_fail_status(st);
    else if ((st = carseg_clip_classify(m, tok, rgb, w, h, nb, classes.v, nc,
                                        templates.n ? templates.v : NULL, templates.n, probs)) != CARSEG_OK)
        cli_fail("%s: %s", image, carseg_last_error());
    rc = st != CARSEG_OK;
    if (st == CARSEG_OK) {
        for (int c = 0; c < nc; c++) r[c].p = probs[c], r[c].i = c;
        qsort(r, (size_t)nc, sizeof *r, by_p_desc);
        int n = top && top < nc ? top : nc;
        if (as_json) printf("[");
        for (int k = 0; k < n; k++) {
            if (as_json) {
                printf(k ? ",\n {\"class\": " : "{\"class\": ");
                cli_json_str(stdout, classes.v[r[k].i]);
                printf(", \"p\": %.9g}", r[k].p);
            } else {
                printf("%.6f\t%s\n", r[k].p, classes.v[r[k].i]);
            }
        }
        if (as_json) printf("]\n");
        if (fflush(stdout) != 0) rc = cli_fail("cannot write the output");
    }
    free(probs), free(r), free(class_buf);
    free(classes.v), free(templates.v);
    carseg_image_free(rgb);
    carseg_tokenizer_close(tok);
    carseg_clip_free(m);
    return rc;
}
CLI_COMMAND("classify", "zero-shot classification of an image (CaR's 15 templates)", cmd_classify)
