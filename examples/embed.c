// embed.c — CLIP features only: text and image embeddings and their cosine similarities.
// usage: embed MODEL IMAGE TEXT... [--vocab VOCAB] (MODEL: a name such as ViT-B/16, or a path)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "carseg.h"

static double cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) ab += a[i] * b[i], aa += a[i] * a[i], bb += b[i] * b[i];
    return ab / (sqrt(aa) * sqrt(bb));
}

int main(int argc, char **argv) {
    const char *vocab = NULL;
    if (argc >= 3 && !strcmp(argv[argc - 2], "--vocab")) vocab = argv[argc - 1], argc -= 2;
    if (argc < 4) {
        fprintf(stderr, "usage: embed MODEL IMAGE TEXT... [--vocab VOCAB]\n");
        return 2;
    }
    int n = argc - 3, rc = 1;
    carseg_clip *m = NULL;              // immutable once loaded: share it between threads
    carseg_tokenizer *tok = NULL;
    uint8_t *rgb = NULL;
    float *txt = NULL, *img = NULL;
    int w, h;
    if (carseg_clip_load(argv[1], &m) != CARSEG_OK || carseg_tokenizer_open(vocab, &tok) != CARSEG_OK ||
        carseg_image_load(argv[2], &rgb, &w, &h) != CARSEG_OK)
        goto fail;
    int E = carseg_clip_embed_dim(m);
    txt = malloc(sizeof(float) * (size_t)n * E);
    img = malloc(sizeof(float) * (size_t)E);
    if (!txt || !img) goto out;
    if (carseg_clip_encode_texts(m, tok, (const char *const *)argv + 3, n, txt) != CARSEG_OK ||
        carseg_clip_encode_image_rgb(m, rgb, w, h, 0, img) != CARSEG_OK)   // 0: all blocks
        goto fail;
    printf("embedding size %d, logit scale %.2f\n", E, carseg_clip_logit_scale(m));
    for (int i = 0; i < n; i++)
        printf("%-40s cosine %.5f\n", argv[3 + i], cosine(txt + (size_t)i * E, img, E));
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "embed: %s\n", carseg_last_error());
out:
    free(txt), free(img);
    carseg_image_free(rgb);
    carseg_tokenizer_close(tok);
    carseg_clip_free(m);
    return rc;
}
