/* embed.c — CLIP features for users who only want them (carseg.h): zero-shot classification
 * with the standard recipe over the public encoders. */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "clip.h"
#include "image.h"
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

carseg_status carseg_clip_encode_tokens(const carseg_clip *m, const int32_t *tokens, int n, int ctx,
                                        float *out) {
    if (!m || (n > 0 && (!tokens || !out)) || n < 0)
        return set_err(CARSEG_EINVAL, "carseg_clip_encode_tokens: invalid argument");
    if (ctx != m->cfg.t_ctx)
        return set_err(CARSEG_EINVAL, "carseg_clip_encode_tokens: ctx %d, the model's context is %d", ctx,
                       m->cfg.t_ctx);
    for (size_t i = 0; i < (size_t)n * (size_t)ctx; i++)   /* ids index the embedding table */
        if (tokens[i] < 0 || tokens[i] >= m->cfg.t_vocab)
            return set_err(CARSEG_EINVAL, "carseg_clip_encode_tokens: text %zu token %zu is %d, "
                           "outside [0, %d)", i / (size_t)ctx, i % (size_t)ctx, (int)tokens[i],
                           m->cfg.t_vocab);
    return clip_encode_text_stable(m, tokens, n, out);
}

carseg_status carseg_clip_preprocess(const carseg_clip *m, const uint8_t *rgb, int w, int h, float *out) {
    if (!m || !rgb || !out || w <= 0 || h <= 0)
        return set_err(CARSEG_EINVAL, "carseg_clip_preprocess: invalid argument");
    image_u8 im = {w, h, 3, (uint8_t *)rgb};
    return clip_preprocess(&im, carseg_clip_image_size(m), out);
}

static carseg_status encode_images(const char *fn, const carseg_clip *m, const float *x, int n, int H,
                                   int W, int n_blocks, float *out) {
    if (!m || (n > 0 && (!x || !out)) || n < 0) return set_err(CARSEG_EINVAL, "%s: invalid argument", fn);
    if (n_blocks < 0 || n_blocks > m->cfg.v_layers)
        return set_err(CARSEG_EINVAL, "%s: n_blocks %d outside [0, %d]", fn, n_blocks, m->cfg.v_layers);
    int P = m->cfg.v_patch;
    if (H <= 0 || W <= 0 || H % P || W % P)
        return set_err(CARSEG_EINVAL, "%s: image %dx%d is not a positive multiple of the patch %d", fn,
                       W, H, P);
    if ((int64_t)(H / P) * (W / P) >= (1 << 24))   /* the token count stays an int */
        return set_err(CARSEG_EINVAL, "%s: image %dx%d gives too many tokens", fn, W, H);
    if (n == 0) return CARSEG_OK;
    size_t px = (size_t)3 * H * W;
    for (size_t i = 0; i < px * (size_t)n; i++)
        if (!isfinite(x[i]))
            return set_err(CARSEG_EINVAL, "%s: image %zu has a non-finite value at %zu", fn, i / px,
                           i % px);
    return clip_encode_images(m, x, n, H, W, n_blocks, out);
}

carseg_status carseg_clip_encode_images_hw(const carseg_clip *m, const float *x, int n, int H, int W,
                                           int n_blocks, float *out) {
    return encode_images("carseg_clip_encode_images_hw", m, x, n, H, W, n_blocks, out);
}

carseg_status carseg_clip_encode_images(const carseg_clip *m, const float *x, int n, int n_blocks,
                                        float *out) {
    int S = m ? carseg_clip_image_size(m) : 0;
    return encode_images("carseg_clip_encode_images", m, x, n, S, S, n_blocks, out);
}

carseg_status carseg_clip_config_json(const carseg_clip *m, char **out) {
    if (!out) return set_err(CARSEG_EINVAL, "carseg_clip_config_json: json is NULL");
    *out = NULL;
    if (!m) return set_err(CARSEG_EINVAL, "carseg_clip_config_json: model is NULL");
    const clip_config *c = &m->cfg;
    char buf[512];
    int k = snprintf(buf, sizeof buf,
                     "{\"embed\": %d, \"image_size\": %d, \"patch\": %d, \"vision_width\": %d, "
                     "\"vision_layers\": %d, \"vision_heads\": %d, \"text_width\": %d, \"text_layers\": %d, "
                     "\"text_heads\": %d, \"context\": %d, \"vocab\": %d, \"logit_scale\": %.9g, "
                     "\"precision\": \"%s\"}",
                     c->embed, c->v_patch * c->v_grid, c->v_patch, c->v_width, c->v_layers, c->v_heads,
                     c->t_width, c->t_layers, c->t_heads, c->t_ctx, c->t_vocab, c->logit_scale,
                     carseg_precision_name(carseg_clip_get_precision(m)));
    if (k < 0 || (size_t)k >= sizeof buf || !(*out = strdup(buf)))
        return set_err(CARSEG_ENOMEM, "carseg_clip_config_json: out of memory");
    return CARSEG_OK;
}
