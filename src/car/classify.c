/* classify.c — the mask classifier of CaR and the text-feature cache (car_method.md §3).
 * Mirrors clip_as_rnn/modeling/model/car.py get_mask_confidence and clip_wrapper.py
 * forward_clip / CLIPWrapper.forward (use_cls_token=True, repeat_last=False). */
#include "classify.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "nn.h"
#include "util.h"

char *car_format(const char *tpl, const char *q) {
    const char *p = strstr(tpl, "{}");
    size_t lt = strlen(tpl), lq = strlen(q);
    char *s = malloc(lt + lq + 1);
    if (!s) return NULL;
    if (!p) {
        memcpy(s, tpl, lt + 1);
        return s;
    }
    size_t a = (size_t)(p - tpl);
    memcpy(s, tpl, a);
    memcpy(s + a, q, lq);
    memcpy(s + a + lq, p + 2, lt - a - 2 + 1);
    return s;
}

// ---------------------------------------------------------------------------------------------
// text cache: open addressing on a string hash

struct text_cache {
    const clip_model *m;
    const tokenizer *tok;
    int E;
    size_t cap, used;
    char **keys;      /* cap */
    float **vals;     /* cap, each (E) */
    long encoded;
};

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull;
    return h;
}

carseg_status tc_new(const clip_model *m, const tokenizer *tok, text_cache **out) {
    *out = NULL;
    text_cache *tc = calloc(1, sizeof *tc);
    if (!tc) return set_err(CARSEG_ENOMEM, "text cache: out of memory");
    tc->m = m, tc->tok = tok, tc->E = m->cfg.embed;
    tc->cap = 256;
    tc->keys = calloc(tc->cap, sizeof *tc->keys);
    tc->vals = calloc(tc->cap, sizeof *tc->vals);
    if (!tc->keys || !tc->vals) {
        tc_free(tc);
        return set_err(CARSEG_ENOMEM, "text cache: out of memory");
    }
    *out = tc;
    return CARSEG_OK;
}

void tc_free(text_cache *tc) {
    if (!tc) return;
    for (size_t i = 0; i < tc->cap; i++) {
        free(tc->keys ? tc->keys[i] : NULL);
        free(tc->vals ? tc->vals[i] : NULL);
    }
    free(tc->keys);
    free(tc->vals);
    free(tc);
}

long tc_encoded(const text_cache *tc) { return tc->encoded; }

static size_t tc_slot(const text_cache *tc, const char *s) {
    size_t i = (size_t)(hash_str(s) & (tc->cap - 1));
    while (tc->keys[i] && strcmp(tc->keys[i], s)) i = (i + 1) & (tc->cap - 1);
    return i;
}

static carseg_status tc_grow(text_cache *tc) {
    size_t oc = tc->cap;
    char **ok = tc->keys;
    float **ov = tc->vals;
    tc->cap = oc * 2;
    tc->keys = calloc(tc->cap, sizeof *tc->keys);
    tc->vals = calloc(tc->cap, sizeof *tc->vals);
    if (!tc->keys || !tc->vals) {
        free(tc->keys), free(tc->vals);
        tc->keys = ok, tc->vals = ov, tc->cap = oc;
        return set_err(CARSEG_ENOMEM, "text cache: out of memory");
    }
    for (size_t i = 0; i < oc; i++)
        if (ok[i]) {
            size_t j = tc_slot(tc, ok[i]);
            tc->keys[j] = ok[i], tc->vals[j] = ov[i];
        }
    free(ok), free(ov);
    return CARSEG_OK;
}

static void l2norm(float *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)v[i] * v[i];
    float inv = (float)(1.0 / sqrt(s > 0 ? s : 1e-30));
    for (int i = 0; i < n; i++) v[i] *= inv;
}

carseg_status tc_get(text_cache *tc, const char *const *strs, int n, float *out) {
    int E = tc->E, ctx = tc->m->cfg.t_ctx;
    /* collect the missing strings (unique) */
    int nmiss = 0;
    int *miss = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!miss) return set_err(CARSEG_ENOMEM, "text cache: out of memory");
    for (int i = 0; i < n; i++) {
        size_t s = tc_slot(tc, strs[i]);
        if (tc->keys[s]) continue;
        int dup = 0;
        for (int k = 0; k < nmiss && !dup; k++) dup = !strcmp(strs[miss[k]], strs[i]);
        if (!dup) miss[nmiss++] = i;
    }
    carseg_status st = CARSEG_OK;
    if (nmiss) {
        int32_t *tok = calloc((size_t)nmiss * ctx, sizeof(int32_t));
        float *f = malloc(sizeof(float) * (size_t)nmiss * E);
        if (!tok || !f) {
            free(tok), free(f), free(miss);
            return set_err(CARSEG_ENOMEM, "text cache: out of memory");
        }
        for (int k = 0; k < nmiss; k++) tok_tokenize(tc->tok, strs[miss[k]], tok + (size_t)k * ctx, ctx);
        /* batch-invariant: a text's features depend on the text alone, never on which other
         * strings were missing from the cache in the same call */
        st = clip_encode_text_stable(tc->m, tok, nmiss, f);
        for (int k = 0; st == CARSEG_OK && k < nmiss; k++) {
            if ((tc->used + 1) * 2 > tc->cap && (st = tc_grow(tc)) != CARSEG_OK) break;
            float *v = malloc(sizeof(float) * (size_t)E);
            char *key = cs_strdup(strs[miss[k]]);
            if (!v || !key) {
                free(v), free(key);
                st = set_err(CARSEG_ENOMEM, "text cache: out of memory");
                break;
            }
            memcpy(v, f + (size_t)k * E, sizeof(float) * (size_t)E);
            l2norm(v, E);
            size_t s = tc_slot(tc, key);
            tc->keys[s] = key, tc->vals[s] = v;
            tc->used++;
            tc->encoded++;
        }
        free(tok), free(f);
    }
    free(miss);
    if (st != CARSEG_OK) return st;
    for (int i = 0; i < n; i++) {
        size_t s = tc_slot(tc, strs[i]);
        memcpy(out + (size_t)i * E, tc->vals[s], sizeof(float) * (size_t)E);
    }
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// classifier

carseg_status cls_encode_image(const clip_model *cls, const uint8_t *rgb, int w, int h,
                               int no_crop, float *feat) {
    int size = cls->cfg.v_grid * cls->cfg.v_patch;
    float *x = malloc(sizeof(float) * 3 * (size_t)size * size);
    if (!x) return set_err(CARSEG_ENOMEM, "classifier: out of memory");
    image_u8 im = {w, h, 3, (uint8_t *)rgb};
    carseg_status st = no_crop ? clip_preprocess_exact(&im, size, size, x)
                               : clip_preprocess(&im, size, x);
    if (st == CARSEG_OK) {
        int nb = cls->cfg.v_layers - 1;   /* Q2: all but the last visual block */
        if (nb < 1) nb = cls->cfg.v_layers;
        st = clip_encode_image(cls, x, size, size, nb, feat);
    }
    free(x);
    if (st == CARSEG_OK) l2norm(feat, cls->cfg.embed);
    return st;
}

carseg_status cls_encode_images(const clip_model *cls, const uint8_t *rgb, int n, int w, int h,
                                int no_crop, float *feats) {
    if (n <= 0) return CARSEG_OK;
    int size = cls->cfg.v_grid * cls->cfg.v_patch;
    size_t px = 3 * (size_t)size * size, hw3 = (size_t)w * h * 3;
    float *x = cs_malloc(sizeof(float) * px * (size_t)n);   /* (n, 3, size, size) */
    if (!x) return set_err(CARSEG_ENOMEM, "classifier: out of memory (%d images)", n);
    carseg_status st = CARSEG_OK;
    for (int i = 0; i < n && st == CARSEG_OK; i++) {
        image_u8 im = {w, h, 3, (uint8_t *)rgb + (size_t)i * hw3};
        st = no_crop ? clip_preprocess_exact(&im, size, size, x + (size_t)i * px)
                     : clip_preprocess(&im, size, x + (size_t)i * px);
    }
    if (st == CARSEG_OK) {
        int nb = cls->cfg.v_layers - 1;   /* Q2: all but the last visual block */
        if (nb < 1) nb = cls->cfg.v_layers;
        st = clip_encode_images(cls, x, n, size, size, nb, feats);
    }
    cs_free(x);
    for (int i = 0; st == CARSEG_OK && i < n; i++) l2norm(feats + (size_t)i * cls->cfg.embed, cls->cfg.embed);
    return st;
}

static void softmax_row(float *v, int n) {
    float m = v[0];
    for (int i = 1; i < n; i++) if (v[i] > m) m = v[i];
    float s = 0;
    for (int i = 0; i < n; i++) s += (v[i] = expf(v[i] - m));
    for (int i = 0; i < n; i++) v[i] /= s;
}

void cls_probs(const float *img, int n, const float *txt, int T, int E, float scale,
               int double_softmax, float *S_out, float *P) {
    float *L = malloc(sizeof(float) * (size_t)n * n);   /* (n, n) logits of one template */
    memset(P, 0, sizeof(float) * (size_t)n * n);
    for (int t = 0; t < T; t++) {
        /* L = scale * img @ txt_t^T */
        nn_sgemm(0, 1, n, n, E, scale, img, E, txt + (size_t)t * n * E, E, 0.0f, L, n);
        for (int i = 0; i < n; i++) {
            float *S = L + (size_t)i * n;
            softmax_row(S, n);
            if (S_out) memcpy(S_out + ((size_t)t * n + i) * n, S, sizeof(float) * (size_t)n);
            for (int j = 0; j < n; j++) P[(size_t)i * n + j] += S[j];
        }
    }
    if (double_softmax)
        for (int i = 0; i < n; i++) softmax_row(P + (size_t)i * n, n);
    free(L);
}
