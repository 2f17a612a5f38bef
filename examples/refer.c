// refer.c — referring segmentation with CaR: phrases describing one object -> one mask, and the
// same prepared image segmented again with a class list.
// usage: refer IMAGE OUT.png PHRASE... [--models GENERATOR CLASSIFIER VOCAB]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "carseg.h"

int main(int argc, char **argv) {
    const char *gen = "ViT-B/16", *cls = "ViT-B/16", *vocab = NULL;   // refcoco's classifier
    if (argc >= 5 && !strcmp(argv[argc - 4], "--models"))
        gen = argv[argc - 3], cls = argv[argc - 2], vocab = argv[argc - 1], argc -= 4;
    if (argc < 4) {
        fprintf(stderr, "usage: refer IMAGE OUT.png PHRASE... [--models GENERATOR CLASSIFIER VOCAB]\n");
        return 2;
    }
    carseg_car_model *model = NULL;
    carseg_segmenter *seg = NULL;
    carseg_prepared *im = NULL;
    carseg_result *res = NULL, *sem = NULL;
    uint8_t *rgb = NULL;
    int w, h, rc = 1;
    carseg_options opts;
    carseg_options_preset(&opts, "refcoco");
    if (carseg_car_model_open(gen, cls, vocab, &model) != CARSEG_OK ||
        carseg_segmenter_new(model, &seg) != CARSEG_OK ||
        carseg_image_load(argv[1], &rgb, &w, &h) != CARSEG_OK ||
        carseg_prepare(seg, rgb, w, h, &opts, &im) != CARSEG_OK ||   // trunk + affinity, once
        carseg_refer(seg, im, (const char *const *)argv + 3, argc - 3, &opts, &res) != CARSEG_OK ||
        carseg_labels_save_png(argv[2], carseg_result_labels(res), w, h) != CARSEG_OK)
        goto fail;
    size_t area = 0;
    for (size_t i = 0; i < (size_t)w * h; i++) area += carseg_result_labels(res)[i];
    printf("mask: %zu of %d pixels, %d rounds\n", area, w * h, carseg_result_rounds(res));
    for (int k = 0; k < carseg_result_count(res); k++)
        printf("phrase \"%s\": score %.4f\n", carseg_result_class(res, k), carseg_result_score(res, k));
    // the prepared image again, now with a class list and the VOC settings
    const char *classes[] = {"person", "background object"};
    carseg_options_preset(&opts, "voc");
    if (carseg_segment(seg, im, classes, 2, &opts, &sem) != CARSEG_OK) goto fail;
    printf("semantic: %s %.4f, %s %.4f\n", classes[0], carseg_result_score(sem, 0), classes[1],
           carseg_result_score(sem, 1));
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "refer: %s\n", carseg_last_error());
out:
    carseg_result_free(res);
    carseg_result_free(sem);
    carseg_prepared_free(im);
    carseg_image_free(rgb);
    carseg_segmenter_free(seg);
    carseg_car_model_close(model);
    return rc;
}
