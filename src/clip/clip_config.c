/* clip_config.c — the CLIP architecture read off a model file's tensors (clip_config_from_weights,
 * see clip.h). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "clip.h"
#include "util.h"

// ---------------------------------------------------------------------------------------------
// architecture

static const wtensor *need(const wfile *f, const char *name, int ndim, carseg_status *st) {
    const wtensor *t = wfile_get(f, name);
    if (*st != CARSEG_OK) return t;
    if (!t) *st = set_err(CARSEG_EMODEL, "%s: missing tensor (tensor %s)", f->path, name);
    else if (t->ndim != ndim)
        *st = set_err(CARSEG_EMODEL, "%s: expected %d dimensions, found %d (tensor %s)", f->path, ndim,
                      t->ndim, name);
    return t;
}

static int count_blocks(const wfile *f, const char *prefix) {
    int n = 0;
    for (;;) {
        char nm[256];
        snprintf(nm, sizeof nm, "%s%d.attn.in_proj_weight", prefix, n);
        if (!wfile_get(f, nm)) return n;
        n++;
    }
}

carseg_status clip_config_from_weights(const wfile *f, clip_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    carseg_status st = CARSEG_OK;
    if (wfile_get(f, "visual.attnpool.positional_embedding") || wfile_get(f, "visual.layer1.0.conv1.weight"))
        return set_err(CARSEG_EMODEL, "%s: ResNet CLIP image towers are not supported, only ViT (tensor "
                       "visual.attnpool.positional_embedding)", f->path);
    const wtensor *conv1 = need(f, "visual.conv1.weight", 4, &st);
    const wtensor *vpos = need(f, "visual.positional_embedding", 2, &st);
    const wtensor *vproj = need(f, "visual.proj", 2, &st);
    const wtensor *tok = need(f, "token_embedding.weight", 2, &st);
    const wtensor *tpos = need(f, "positional_embedding", 2, &st);
    const wtensor *tproj = need(f, "text_projection", 2, &st);
    const wtensor *ls = need(f, "logit_scale", 0, &st);
    if (st != CARSEG_OK) return st;
    int C = (int)conv1->shape[0];
    if (conv1->shape[1] != 3 || conv1->shape[2] != conv1->shape[3] || conv1->shape[2] < 1)
        return set_err(CARSEG_EMODEL, "%s: conv1 must be (width, 3, P, P) (tensor visual.conv1.weight)", f->path);
    cfg->v_width = C;
    cfg->v_patch = (int)conv1->shape[2];
    int64_t rows = vpos->shape[0] - 1, g = 0;
    while ((g + 1) * (g + 1) <= rows) g++;
    if (rows < 1 || g * g != rows || vpos->shape[1] != C)
        return set_err(CARSEG_EMODEL, "%s: positional embedding must be (1 + grid^2, %d) (tensor "
                       "visual.positional_embedding)", f->path, C);
    cfg->v_grid = (int)g;
    cfg->v_layers = count_blocks(f, "visual.transformer.resblocks.");
    if (cfg->v_layers < 1)
        return set_err(CARSEG_EMODEL, "%s: missing tensor (tensor visual.transformer.resblocks.0.attn.in_proj_weight)", f->path);
    const wtensor *vfc = need(f, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2, &st);
    if (st != CARSEG_OK) return st;
    cfg->v_mlp = (int)vfc->shape[0];
    if (C % 64 != 0)
        return set_err(CARSEG_EMODEL, "%s: vision width %d is not a multiple of 64 (heads = width/64) "
                       "(tensor visual.conv1.weight)", f->path, C);
    cfg->v_heads = C / 64;
    int Ct = (int)tok->shape[1];
    cfg->t_width = Ct;
    cfg->t_vocab = (int)tok->shape[0];
    cfg->t_ctx = (int)tpos->shape[0];
    if (tpos->shape[1] != Ct)
        return set_err(CARSEG_EMODEL, "%s: text positional embedding width %lld != %d (tensor positional_embedding)",
                       f->path, (long long)tpos->shape[1], Ct);
    cfg->t_layers = count_blocks(f, "transformer.resblocks.");
    if (cfg->t_layers < 1)
        return set_err(CARSEG_EMODEL, "%s: missing tensor (tensor transformer.resblocks.0.attn.in_proj_weight)", f->path);
    if (Ct % 64 != 0)
        return set_err(CARSEG_EMODEL, "%s: text width %d is not a multiple of 64 (heads = width/64) "
                       "(tensor token_embedding.weight)", f->path, Ct);
    cfg->t_heads = Ct / 64;
    if (vproj->shape[0] != C)
        return set_err(CARSEG_EMODEL, "%s: projection rows %lld != vision width %d (tensor visual.proj)",
                       f->path, (long long)vproj->shape[0], C);
    if (tproj->shape[0] != Ct || tproj->shape[1] != vproj->shape[1])
        return set_err(CARSEG_EMODEL, "%s: text projection must be (%d, %lld) (tensor text_projection)",
                       f->path, Ct, (long long)vproj->shape[1]);
    cfg->embed = (int)vproj->shape[1];
    cfg->logit_scale = expf(ls->data[0]);
    return CARSEG_OK;
}
