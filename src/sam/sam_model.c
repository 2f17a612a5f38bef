/* sam_model.c — SAM / HQ-SAM checkpoints: the tensors of a state dict (torch.save zip or
 * safetensors, through the CLIP engine's readers in weights.c) bound to the model, the
 * architecture read off their shapes (segment_anything's build_sam / build_sam_hq):
 *   embed, patch       image_encoder.patch_embed.proj.weight (embed, 3, patch, patch)
 *   depth              blocks counted
 *   heads              embed / width of blocks.0.attn.rel_pos_h (the head dim)
 *   window / global    rel_pos_h rows: 2*64-1 global, 2*w-1 windowed with window w
 *   out_chans          neck.0.weight (out, embed, 1, 1)
 *   decoder            layers counted; MLP from mlp.lin1; attention downsample from the cross
 *                      attentions' q_proj rows; heads 8 (TwoWayTransformer(num_heads=8)) unless a
 *                      safetensors __metadata__ "sam_config" JSON says "dheads"
 *   HQ-SAM             mask_decoder.hf_token.weight present
 * Every tensor's shape is checked against that architecture before any is used. */
#include "sam_impl.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "util.h"

typedef struct {
    const wfile *f;
    const char *path;
    carseg_status st;
} loader;

/* The tensor `name` with ndim dims of the given sizes (-1: any); NULL + st set otherwise. */
static const float *get(loader *L, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2,
                        int64_t d3) {
    if (L->st != CARSEG_OK) return NULL;
    const wtensor *t = wfile_get(L->f, name);
    if (!t) {
        L->st = set_err(CARSEG_EMODEL, "%s: missing tensor %s (not a SAM / HQ-SAM checkpoint?)",
                        L->path, name);
        return NULL;
    }
    int64_t want[4] = {d0, d1, d2, d3};
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = want[i] < 0 || t->shape[i] == want[i];
    if (!ok) {
        char have[96] = "", need[96] = "";
        size_t a = 0, b = 0;
        for (int i = 0; i < t->ndim && a < sizeof have - 24; i++)
            a += snprintf(have + a, sizeof have - a, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        for (int i = 0; i < ndim && b < sizeof need - 24; i++) {
            if (want[i] < 0) b += snprintf(need + b, sizeof need - b, "%s*", i ? ", " : "");
            else b += snprintf(need + b, sizeof need - b, "%s%lld", i ? ", " : "", (long long)want[i]);
        }
        L->st = set_err(CARSEG_EMODEL, "%s: tensor %s has shape (%s), expected (%s)", L->path, name,
                        have, need);
        return NULL;
    }
    return t->data;
}

static const wtensor *has(const loader *L, const char *fmt, int i) {
    char nm[200];
    snprintf(nm, sizeof nm, fmt, i);
    return wfile_get(L->f, nm);
}

#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)

static sam_lin lin(loader *L, const char *prefix, int out, int in) {
    char nm[200];
    sam_lin r;
    r.w = get(L, NAME("%s.weight", prefix), 2, out, in, 0, 0);
    r.b = get(L, NAME("%s.bias", prefix), 1, out, 0, 0, 0);
    return r;
}
static sam_lin norm(loader *L, const char *prefix, int c) {
    char nm[200];
    sam_lin r;
    r.w = get(L, NAME("%s.weight", prefix), 1, c, 0, 0, 0);
    r.b = get(L, NAME("%s.bias", prefix), 1, c, 0, 0, 0);
    return r;
}
static sam_lin convt(loader *L, const char *prefix, int cin, int cout) {
    char nm[200];
    sam_lin r;
    r.w = get(L, NAME("%s.weight", prefix), 4, cin, cout, 2, 2);
    r.b = get(L, NAME("%s.bias", prefix), 1, cout, 0, 0, 0);
    return r;
}
static sam_dattn dattn(loader *L, const char *prefix, int dim, int internal) {
    char nm[200];
    sam_dattn a;
    a.internal = internal;
    a.q = lin(L, NAME("%s.q_proj", prefix), internal, dim);
    a.k = lin(L, NAME("%s.k_proj", prefix), internal, dim);
    a.v = lin(L, NAME("%s.v_proj", prefix), internal, dim);
    a.o = lin(L, NAME("%s.out_proj", prefix), dim, internal);
    return a;
}

/* "dheads" from a safetensors file's __metadata__.sam_config, or -1 (not safetensors / absent). */
static int meta_dheads(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    uint8_t h8[8];
    int r = -1;
    if (fread(h8, 1, 8, fp) == 8) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = n << 8 | h8[i];
        if (n > 0 && n < (100u << 20)) {
            char *buf = malloc((size_t)n);
            if (buf && fread(buf, 1, (size_t)n, fp) == n && buf[0] == '{') {
                char err[80];
                json *j = json_parse(buf, (size_t)n, err, sizeof err);
                const json *md = j ? json_get(j, "__metadata__") : NULL;
                const char *cfg = md ? json_str(md, "sam_config", NULL) : NULL;
                if (cfg) {
                    json *c = json_parse(cfg, strlen(cfg), err, sizeof err);
                    double d = c ? json_num(c, "dheads", -1) : -1;
                    if (d >= 1 && d <= 256 && d == (int)d) r = (int)d;
                    json_free(c);
                }
                json_free(j);
            }
            free(buf);
        }
    }
    fclose(fp);
    return r;
}

/* The first upscaling ConvT read through the last two norm4 of the two-way transformer (exact
 * algebra). With r, m a row's 1/sqrt(var + eps) and mean in a norm, G = diag(its weight):
 *   y1 = src0 + S1 Vt1 + bo1,  k1 = LN(y1) = r1 (y1 - m1) G1 + b1   (layer 1's i2t + norm4)
 *   y2 = k1 + S2 Vt2 + bo2,    k2 = LN(y2) = r2 (y2 - m2) G2 + b2   (layer 2's)
 * (S: an i2t's attention, N x NH*T; Vt: its values through out_proj, NH*T x D), and the ConvT's
 * product with its bias is
 *   k2 W + bias = r2 (r1 (P0 + S1 V1' + u1 - m1 c12) + S2 V2' + u2 - m2 c2) + e
 * with W12 = G1 G2 W, W2 = G2 W, P0 = src0 W12 (once per image), V1' = Vt1 W12, V2' = Vt2 W2
 * (NH*T rows each, per prompt), c12, c2 the column sums of W12, W2, u1 = bo1 W12,
 * u2 = (b1 + bo2) W2, e = b2 W + bias. Per prompt, one product of N x 2 NH*T x D
 * ([r1 S1 | S2] [V1'; V2']) instead of N x D x D. */
static carseg_status decoder_prepare(sam_model *m) {
    if (m->c.dec_depth != 2 || m->c.dim % 4) return CARSEG_OK;
    const int D = m->c.dim, C4 = D / 4, n4 = 4 * C4;
    const size_t nw = sizeof(float) * (size_t)D * n4;
    float *w12 = cs_malloc(nw), *w2 = cs_malloc(nw), *v = cs_malloc(sizeof(float) * 5 * (size_t)n4);
    if (!w12 || !w2 || !v) {
        cs_free(w12), cs_free(w2), cs_free(v);
        return set_err(CARSEG_ENOMEM, "sam: out of memory (mask decoder weights)");
    }
    const float *W = m->up0r, *g1 = m->dl[0].norm4.w, *g2 = m->dl[1].norm4.w;
    const float *b1 = m->dl[0].norm4.b, *b2 = m->dl[1].norm4.b;
    const float *bo1 = m->dl[0].i2t.o.b, *bo2 = m->dl[1].i2t.o.b;
    for (int c = 0; c < D; c++)
        for (int n = 0; n < n4; n++) {
            w2[(size_t)c * n4 + n] = g2[c] * W[(size_t)c * n4 + n];
            w12[(size_t)c * n4 + n] = g1[c] * w2[(size_t)c * n4 + n];
        }
    for (int n = 0; n < n4; n++) {
        double c12 = 0, c2 = 0, u1 = 0, u2 = 0, e = m->up0.b[n % C4];
        for (int c = 0; c < D; c++) {
            double a12 = w12[(size_t)c * n4 + n], a2 = w2[(size_t)c * n4 + n];
            c12 += a12, c2 += a2, u1 += (double)bo1[c] * a12, u2 += ((double)b1[c] + bo2[c]) * a2;
            e += (double)b2[c] * W[(size_t)c * n4 + n];
        }
        v[n] = (float)c12, v[n4 + n] = (float)c2, v[2 * n4 + n] = (float)u1;
        v[3 * n4 + n] = (float)u2, v[4 * n4 + n] = (float)e;
    }
    m->cz_w12 = w12, m->cz_w2 = w2, m->cz_vec = v;
    m->cz_w12pk = sam_convt2_pack(w12, D, C4), m->cz_w2pk = sam_convt2_pack(w2, D, C4);
    return CARSEG_OK;
}

static carseg_status bind(sam_model *m, loader *L) {
    sam_config *c = &m->c;
    const char *path = L->path;
    char nm[200];
    const wtensor *pw = wfile_get(L->f, "image_encoder.patch_embed.proj.weight");
    if (!pw) return set_err(CARSEG_EMODEL, "%s: missing tensor image_encoder.patch_embed.proj.weight "
                            "(not a SAM / HQ-SAM checkpoint?)", path);
    if (pw->ndim != 4 || pw->shape[1] != 3 || pw->shape[2] != pw->shape[3] || pw->shape[0] < 1 ||
        pw->shape[0] > 8192)
        return set_err(CARSEG_EMODEL, "%s: tensor image_encoder.patch_embed.proj.weight: bad shape",
                       path);
    c->embed = (int)pw->shape[0];
    c->patch = (int)pw->shape[2];
    if (c->patch * SAM_GRID != SAM_IMG)
        return set_err(CARSEG_EMODEL, "%s: tensor image_encoder.patch_embed.proj.weight: patch %d, "
                       "only 16 (a 64x64 grid on 1024 pixels) is supported", path, c->patch);
    c->depth = 0;
    while (c->depth < 1000 && has(L, "image_encoder.blocks.%d.norm1.weight", c->depth)) c->depth++;
    if (c->depth == 0) return set_err(CARSEG_EMODEL, "%s: no image_encoder.blocks.N tensors", path);
    const wtensor *rp = wfile_get(L->f, "image_encoder.blocks.0.attn.rel_pos_h");
    if (!rp || rp->ndim != 2 || rp->shape[1] < 1 || c->embed % rp->shape[1] != 0)
        return set_err(CARSEG_EMODEL, "%s: tensor image_encoder.blocks.0.attn.rel_pos_h missing or of "
                       "a shape that gives no head count (relative positions are required)", path);
    int hd = (int)rp->shape[1];
    c->heads = c->embed / hd;
    const wtensor *l1 = wfile_get(L->f, "image_encoder.blocks.0.mlp.lin1.weight");
    if (!l1 || l1->ndim != 2 || l1->shape[0] < 1 || l1->shape[0] > 65536)
        return set_err(CARSEG_EMODEL, "%s: tensor image_encoder.blocks.0.mlp.lin1.weight missing or "
                       "of a bad shape", path);
    c->mlp = (int)l1->shape[0];
    const wtensor *n0 = wfile_get(L->f, "image_encoder.neck.0.weight");
    if (!n0 || n0->ndim != 4 || n0->shape[0] < 8 || n0->shape[0] > 8192)
        return set_err(CARSEG_EMODEL, "%s: tensor image_encoder.neck.0.weight missing or of a bad "
                       "shape", path);
    c->out_chans = (int)n0->shape[0];
    c->dim = c->out_chans;
    if (c->dim % 8 || c->dim > 1024)
        return set_err(CARSEG_EMODEL, "%s: tensor image_encoder.neck.0.weight: width %d, need a multiple "
                       "of 8 up to 1024", path, c->dim);

    /* image encoder */
    const int E = c->embed, G = SAM_GRID;
    m->patch_w = get(L, "image_encoder.patch_embed.proj.weight", 4, E, 3, c->patch, c->patch);
    m->patch_b = get(L, "image_encoder.patch_embed.proj.bias", 1, E, 0, 0, 0);
    m->pos = wfile_get(L->f, "image_encoder.pos_embed")
                 ? get(L, "image_encoder.pos_embed", 4, 1, G, G, E) : NULL;
    m->blk = calloc((size_t)c->depth, sizeof *m->blk);
    if (!m->blk) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    c->window = 0;
    c->n_global = 0;
    for (int i = 0; i < c->depth && L->st == CARSEG_OK; i++) {
        sam_vblock *b = &m->blk[i];
        char p[120];
        snprintf(p, sizeof p, "image_encoder.blocks.%d", i);
        const wtensor *rh = wfile_get(L->f, NAME("%s.attn.rel_pos_h", p));
        if (!rh || rh->ndim != 2 || rh->shape[0] % 2 == 0 || rh->shape[0] > 2 * G - 1)
            return set_err(CARSEG_EMODEL, "%s: tensor %s.attn.rel_pos_h missing or its rows are not "
                           "2*w-1 for a window w <= 64", path, p);
        int S = (int)(rh->shape[0] + 1) / 2;
        b->window = S == G ? 0 : S;
        if (b->window) {
            if (c->window && c->window != S)
                return set_err(CARSEG_EMODEL, "%s: tensor %s.attn.rel_pos_h: window %d, an earlier block has %d",
                               path, p, S, c->window);
            c->window = S;
        } else {
            if (c->n_global == 8)
                return set_err(CARSEG_EMODEL, "%s: more than 8 global attention blocks", path);
            c->global[c->n_global++] = i;
        }
        b->rel_h = get(L, NAME("%s.attn.rel_pos_h", p), 2, 2 * S - 1, hd, 0, 0);
        b->rel_w = get(L, NAME("%s.attn.rel_pos_w", p), 2, 2 * S - 1, hd, 0, 0);
        b->norm1 = norm(L, NAME("%s.norm1", p), E);
        b->norm2 = norm(L, NAME("%s.norm2", p), E);
        b->qkv = lin(L, NAME("%s.attn.qkv", p), 3 * E, E);
        b->proj = lin(L, NAME("%s.attn.proj", p), E, E);
        b->lin1 = lin(L, NAME("%s.mlp.lin1", p), c->mlp, E);
        b->lin2 = lin(L, NAME("%s.mlp.lin2", p), E, c->mlp);
    }
    const int D = c->dim;
    m->neck0 = get(L, "image_encoder.neck.0.weight", 4, D, E, 1, 1);
    m->neck1 = norm(L, "image_encoder.neck.1", D);
    const float *n2 = get(L, "image_encoder.neck.2.weight", 4, D, D, 3, 3);
    m->neck3 = norm(L, "image_encoder.neck.3", D);

    /* prompt encoder */
    m->pe_gauss = get(L, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", 2, 2, D / 2, 0, 0);
    for (int i = 0; i < 4; i++)
        m->point_emb[i] = get(L, NAME("prompt_encoder.point_embeddings.%d.weight", i), 2, 1, D, 0, 0);
    m->not_a_point = get(L, "prompt_encoder.not_a_point_embed.weight", 2, 1, D, 0, 0);
    m->no_mask = get(L, "prompt_encoder.no_mask_embed.weight", 2, 1, D, 0, 0);

    /* mask decoder */
    c->dec_depth = 0;
    while (c->dec_depth < 64 && has(L, "mask_decoder.transformer.layers.%d.norm1.weight", c->dec_depth))
        c->dec_depth++;
    if (L->st != CARSEG_OK) return L->st;
    if (c->dec_depth == 0)
        return set_err(CARSEG_EMODEL, "%s: missing tensor mask_decoder.transformer.layers.0.norm1.weight", path);
    const wtensor *q = wfile_get(L->f, "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight");
    const wtensor *ml = wfile_get(L->f, "mask_decoder.transformer.layers.0.mlp.lin1.weight");
    if (!q || q->ndim != 2 || q->shape[0] < 1 || D % q->shape[0] != 0)
        return set_err(CARSEG_EMODEL, "%s: tensor mask_decoder.transformer.layers.0.cross_attn_token_to_image"
                       ".q_proj.weight missing or of a bad shape", path);
    if (!ml || ml->ndim != 2 || ml->shape[0] < 1 || ml->shape[0] > 65536)
        return set_err(CARSEG_EMODEL, "%s: tensor mask_decoder.transformer.layers.0.mlp.lin1.weight "
                       "missing or of a bad shape", path);
    c->ds = D / (int)q->shape[0];
    c->dec_mlp = (int)ml->shape[0];
    int dh = meta_dheads(path);
    c->dec_heads = dh > 0 ? dh : 8;
    if ((D / c->ds) % c->dec_heads != 0)
        return set_err(CARSEG_EMODEL, "%s: decoder heads %d do not divide the attention width %d", path,
                       c->dec_heads, D / c->ds);
    m->dl = calloc((size_t)c->dec_depth, sizeof *m->dl);
    if (!m->dl) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < c->dec_depth; i++) {
        sam_dlayer *l = &m->dl[i];
        char p[120];
        snprintf(p, sizeof p, "mask_decoder.transformer.layers.%d", i);
        l->self = dattn(L, NAME("%s.self_attn", p), D, D);
        l->t2i = dattn(L, NAME("%s.cross_attn_token_to_image", p), D, D / c->ds);
        l->i2t = dattn(L, NAME("%s.cross_attn_image_to_token", p), D, D / c->ds);
        l->norm1 = norm(L, NAME("%s.norm1", p), D);
        l->norm2 = norm(L, NAME("%s.norm2", p), D);
        l->norm3 = norm(L, NAME("%s.norm3", p), D);
        l->norm4 = norm(L, NAME("%s.norm4", p), D);
        l->mlp1 = lin(L, NAME("%s.mlp.lin1", p), c->dec_mlp, D);
        l->mlp2 = lin(L, NAME("%s.mlp.lin2", p), D, c->dec_mlp);
    }
    m->fin = dattn(L, "mask_decoder.transformer.final_attn_token_to_image", D, D / c->ds);
    m->norm_fin = norm(L, "mask_decoder.transformer.norm_final_attn", D);
    const wtensor *mt = wfile_get(L->f, "mask_decoder.mask_tokens.weight");
    if (!mt || mt->ndim != 2 || mt->shape[0] < 1 || mt->shape[0] > 16)
        return set_err(CARSEG_EMODEL, "%s: tensor mask_decoder.mask_tokens.weight missing or of a bad "
                       "shape", path);
    c->n_mask_tokens = (int)mt->shape[0];
    m->mask_tokens = get(L, "mask_decoder.mask_tokens.weight", 2, c->n_mask_tokens, D, 0, 0);
    m->iou_token = get(L, "mask_decoder.iou_token.weight", 2, 1, D, 0, 0);
    m->up0 = convt(L, "mask_decoder.output_upscaling.0", D, D / 4);
    m->up1 = norm(L, "mask_decoder.output_upscaling.1", D / 4);
    m->up3 = convt(L, "mask_decoder.output_upscaling.3", D / 4, D / 8);
    m->hyper = calloc((size_t)c->n_mask_tokens * 3, sizeof *m->hyper);
    if (!m->hyper) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < c->n_mask_tokens; i++)
        for (int j = 0; j < 3; j++)
            m->hyper[i * 3 + j] = lin(L, NAME("mask_decoder.output_hypernetworks_mlps.%d.layers.%d", i, j),
                                      j == 2 ? D / 8 : D, D);
    c->iou_depth = 0;
    while (c->iou_depth < 16 && has(L, "mask_decoder.iou_prediction_head.layers.%d.weight", c->iou_depth))
        c->iou_depth++;
    const wtensor *ih = wfile_get(L->f, "mask_decoder.iou_prediction_head.layers.0.weight");
    if (c->iou_depth < 2 || !ih || ih->ndim != 2 || ih->shape[0] < 1 || ih->shape[0] > 4096)
        return set_err(CARSEG_EMODEL, "%s: mask_decoder.iou_prediction_head: fewer than 2 layers or a "
                       "bad shape", path);
    c->iou_hidden = (int)ih->shape[0];
    m->iou_head = calloc((size_t)c->iou_depth, sizeof *m->iou_head);
    if (!m->iou_head) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    for (int j = 0; j < c->iou_depth; j++)
        m->iou_head[j] = lin(L, NAME("mask_decoder.iou_prediction_head.layers.%d", j),
                             j == c->iou_depth - 1 ? c->n_mask_tokens : c->iou_hidden,
                             j == 0 ? D : c->iou_hidden);
    c->hq = wfile_get(L->f, "mask_decoder.hf_token.weight") != NULL;
    const float *mf0 = NULL;
    if (c->hq) {
        m->hf_token = get(L, "mask_decoder.hf_token.weight", 2, 1, D, 0, 0);
        for (int j = 0; j < 3; j++)
            m->hf_mlp[j] = lin(L, NAME("mask_decoder.hf_mlp.layers.%d", j), j == 2 ? D / 8 : D, D);
        m->cvf0 = convt(L, "mask_decoder.compress_vit_feat.0", E, D);
        m->cvf1 = norm(L, "mask_decoder.compress_vit_feat.1", D);
        m->cvf3 = convt(L, "mask_decoder.compress_vit_feat.3", D, D / 8);
        m->ee0 = convt(L, "mask_decoder.embedding_encoder.0", D, D / 4);
        m->ee1 = norm(L, "mask_decoder.embedding_encoder.1", D / 4);
        m->ee3 = convt(L, "mask_decoder.embedding_encoder.3", D / 4, D / 8);
        mf0 = get(L, "mask_decoder.embedding_maskfeature.0.weight", 4, D / 4, D / 8, 3, 3);
        m->mf0.b = get(L, "mask_decoder.embedding_maskfeature.0.bias", 1, D / 4, 0, 0, 0);
        m->mf1 = norm(L, "mask_decoder.embedding_maskfeature.1", D / 4);
        m->mf3_w = get(L, "mask_decoder.embedding_maskfeature.3.weight", 4, D / 8, D / 4, 3, 3);
        m->mf3_b = get(L, "mask_decoder.embedding_maskfeature.3.bias", 1, D / 8, 0, 0, 0);
        if (c->n_global < 1 && L->st == CARSEG_OK)
            return set_err(CARSEG_EMODEL, "%s: HQ-SAM needs a global attention block (its early "
                           "feature), the encoder has none", path);
    }
    if (L->st != CARSEG_OK) return L->st;

    /* derived: reordered 3x3 convolutions, the dense positional encoding */
    m->neck2 = (sam_conv3){sam_conv3_reorder(n2, D, D), NULL, D, D};
    m->up0r = sam_convt2_reorder(m->up0.w, D, D / 4);
    m->up3r = sam_convt2_reorder(m->up3.w, D / 4, D / 8);
    if (!m->neck2.w || !m->up0r || !m->up3r) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    carseg_status zs = decoder_prepare(m);
    if (zs != CARSEG_OK) return zs;
    /* packed (NULL: nn_sgemm on up0r / up3r); up0 only where czt does not replace it */
    if (!m->cz_w12) m->up0pk = sam_convt2_pack(m->up0r, D, D / 4);
    m->up3pk = sam_convt2_pack(m->up3r, D / 4, D / 8);
    if (c->hq) {
        m->mf0.w = sam_conv3_reorder(mf0, D / 4, D / 8);
        m->mf0_wino = sam_conv3_wino_pack(mf0, D / 4, D / 8);   /* NULL: the direct product */
        m->mf0.cin = D / 8, m->mf0.cout = D / 4;
        if (!m->mf0.w) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    }
    m->dense_pe = cs_malloc(sizeof(float) * G * G * D);
    if (!m->dense_pe) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    const int F = D / 2;
    const float two_pi = (float)(2 * 3.14159265358979323846);
    for (int y = 0; y < G; y++)
        for (int x = 0; x < G; x++) {
            /* PositionEmbeddingRandom.forward: (cumsum - 0.5) / size, then _pe_encoding */
            float cx = 2 * ((x + 0.5f) / G) - 1, cy = 2 * ((y + 0.5f) / G) - 1;
            float *o = m->dense_pe + ((size_t)y * G + x) * D;
            for (int f = 0; f < F; f++) {
                float v = cx * m->pe_gauss[f] + cy * m->pe_gauss[F + f];
                v = two_pi * v;
                o[f] = sinf(v);
                o[F + f] = cosf(v);
            }
        }
    m->params = 0;
    for (int i = 0; i < L->f->n; i++)
        if (strncmp(L->f->t[i].name, "prompt_encoder.mask_downscaling.", 32) != 0)
            m->params += L->f->t[i].count;
    return CARSEG_OK;
}

carseg_status sam_load(const char *path, sam_model **out) {
    *out = NULL;
    if (!path) return set_err(CARSEG_EINVAL, "sam_load: no path");
    wfile *f;
    TRY(wfile_open(path, &f));
    sam_model *m = calloc(1, sizeof *m);
    if (!m) {
        wfile_close(f);
        return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    }
    m->wf = f;
    m->path = cs_strdup(path);
    loader L = {f, path, CARSEG_OK};
    carseg_status st = m->path ? bind(m, &L) : set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    if (st != CARSEG_OK) {
        sam_free(m);
        return st;
    }
    *out = m;
    return CARSEG_OK;
}

void sam_free(sam_model *m) {
    if (!m) return;
    wfile_close(m->wf);
    free(m->path);
    free(m->blk);
    free(m->dl);
    free(m->hyper);
    free(m->iou_head);
    cs_free(m->neck2.w);
    cs_free(m->mf0.w);
    cs_free(m->up0r), cs_free(m->up3r), cs_free(m->mf0_wino), cs_free(m->up0pk), cs_free(m->up3pk);
    cs_free(m->cz_w12), cs_free(m->cz_w2), cs_free(m->cz_w12pk), cs_free(m->cz_w2pk), cs_free(m->cz_vec);
    cs_free(m->dense_pe);
    free(m);
}

const sam_config *sam_model_config(const sam_model *m) { return &m->c; }
size_t sam_model_params(const sam_model *m) { return m->params; }

int sam_masks_per_prompt(const sam_model *m, int multimask) {
    if (m->c.hq) return 1;
    return multimask ? m->c.n_mask_tokens - 1 : 1;
}
