// segment.c — semantic segmentation with CaR: the example at the top of carseg.h.
// usage: segment IMAGE OUT.png [GENERATOR CLASSIFIER [VOCAB]] (models: names or paths)
#include <stdio.h>
#include <stdlib.h>
#include "carseg.h"

int main(int argc, char **argv) {
    if (argc != 3 && argc != 5 && argc != 6) {
        fprintf(stderr, "usage: segment IMAGE OUT.png [GENERATOR CLASSIFIER [VOCAB]]\n");
        return 2;
    }
    const char *gen = argc > 3 ? argv[3] : "ViT-B/16";   // names are pulled into the model cache,
    const char *cls = argc > 3 ? argv[4] : "ViT-L/14";   // file paths are used as they are
    const char *vocab = argc > 5 ? argv[5] : NULL;       // NULL: OpenAI's BPE vocabulary
    carseg_car_model *model = NULL;   // the weights: open once, share between threads
    carseg_segmenter *seg = NULL;     // text caches and scratch: one per thread
    carseg_result *res = NULL;
    uint8_t *rgb = NULL;
    int w, h, rc = 1;
    carseg_options opts;
    carseg_options_preset(&opts, "voc");   // eta, theta, lambda, prompts of a reference config
    const char *classes[] = {"cat", "dog", "sofa"};
    if (carseg_car_model_open(gen, cls, vocab, &model) != CARSEG_OK ||
        carseg_segmenter_new(model, &seg) != CARSEG_OK ||
        carseg_image_load(argv[1], &rgb, &w, &h) != CARSEG_OK ||
        carseg_segment_rgb(seg, rgb, w, h, classes, 3, &opts, &res) != CARSEG_OK ||
        carseg_labels_save_png(argv[2], carseg_result_labels(res), w, h) != CARSEG_OK) {
        fprintf(stderr, "segment: %s\n", carseg_last_error());
        goto out;
    }
    for (int k = 0; k < carseg_result_count(res); k++)   // label k + 1 = classes[k], 0 = background
        printf("%s: score %.4f\n", carseg_result_class(res, k), carseg_result_score(res, k));
    rc = 0;
out:
    carseg_result_free(res);
    carseg_image_free(rgb);
    carseg_segmenter_free(seg);
    carseg_car_model_close(model);
    return rc;
}
