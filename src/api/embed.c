/* embed.c — CLIP features for users who only want them (carseg.h): zero-shot classification
 * with the standard recipe over the public encoders. */
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "clip.h"
#include "nn.h"
#include "presets.h"
#include "util.h"

int carseg_car_templates(const char *const **templates) {
    if (templates) *templates = CAR_TEMPLATES;
    return 15;
}

carseg_status carseg_clip_classify(const carseg_clip *m, const carseg_tokenizer *tok,
                                   const uint8_t *rgb, int w, int h, int n_blocks,
                                   const char *const *classes, int n_classes,
                                   const char *const *templates, int n_templates, float *probs) {
    if (!m || !tok || !rgb || !classes || !probs)
        return set_err(CARSEG_EINVAL, "carseg_clip_classify: NULL argument");
    if (w <= 0 || h <= 0) return set_err(CARSEG_EINVAL, "carseg_clip_classify: bad image size %dx%d", w, h);
    if (n_classes <= 0) return set_err(CARSEG_EINVAL, "carseg_clip_classify: empty class list");
    if (!templates || n_templates <= 0) templates = CAR_TEMPLATES, n_templates = 15;
    for (int t = 0; t < n_templates; t++)
        if (!templates[t] || !strstr(templates[t], "{}"))
            return set_err(CARSEG_EINVAL, "carseg_clip_classify: template %d has no {}", t);
    for (int c = 0; c < n_classes; c++)
        if (!classes[c]) return set_err(CARSEG_EINVAL, "carseg_clip_classify: class %d is NULL", c);
    int E = m->cfg.embed, nt = n_templates, nc = n_classes;
    size_t nx = (size_t)nt * nc;
    const char **texts = calloc(nx, sizeof(char *));
    float *tf = malloc(sizeof(float) * nx * E), *cls = calloc((size_t)nc * E, sizeof(float));
    float *img = malloc(sizeof(float) * (size_t)E), *logit = malloc(sizeof(float) * (size_t)nc);
    carseg_status st = CARSEG_OK;
    if (!texts || !tf || !cls || !img || !logit) st = set_err(CARSEG_ENOMEM, "carseg_clip_classify: out of memory");
    for (int c = 0; st == CARSEG_OK && c < nc; c++)
        for (int t = 0; t < nt; t++)
            if (!(texts[(size_t)c * nt + t] = car_format(templates[t], classes[c])))
                st = set_err(CARSEG_ENOMEM, "carseg_clip_classify: out of memory");
    if (st == CARSEG_OK) st = carseg_clip_encode_texts(m, tok, texts, (int)nx, tf);
    if (st == CARSEG_OK) st = carseg_clip_encode_image_rgb(m, rgb, w, h, n_blocks, img);
    if (st == CARSEG_OK) {
        /* class embedding = normalise(mean_t normalise(text_t)) */
        nn_l2norm(tf, (int)nx, E);
        for (int c = 0; c < nc; c++)
            for (int t = 0; t < nt; t++)
                for (int k = 0; k < E; k++) cls[(size_t)c * E + k] += tf[((size_t)c * nt + t) * E + k] / nt;
        nn_l2norm(cls, nc, E);
        nn_l2norm(img, 1, E);
        for (int c = 0; c < nc; c++) {
            double d = 0;
            for (int k = 0; k < E; k++) d += (double)img[k] * cls[(size_t)c * E + k];
            logit[c] = (float)(m->cfg.logit_scale * d);
        }
        nn_softmax(logit, 1, nc);
        memcpy(probs, logit, sizeof(float) * (size_t)nc);
    }
    for (size_t i = 0; texts && i < nx; i++) free((char *)texts[i]);
    free(texts), free(tf), free(cls), free(img), free(logit);
    return st;
}
