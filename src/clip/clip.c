/* clip.c — the CLIP engine. Mirrors OpenAI clip/model.py (build_model, VisionTransformer,
 * Transformer, ResidualAttentionBlock, encode_text, encode_image) and the parts of CaR's
 * clip_wrapper.py that change the image path: the resized positional embedding rounded through
 * fp16 (Q16) and the classifier stopping one block early (Q2).
 *
 * Layout: a sequence batch x (B, L, C) goes through pre-LN residual blocks
 *   x += out_proj(MHA(ln_1(x)));  x += c_proj(QuickGELU(c_fc(ln_2(x))))
 * with every product in nn_sgemm. The text tower stops each prompt at its EOT token: with the
 * causal mask no earlier position sees a later one, so the EOT feature is the same as with the
 * full 77-token context, at a fraction of the cost.
 */
#include "clip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm_f32.h"
#include "image.h"
#include "nn.h"
#include "tokenizer.h"
#include "util.h"
#include "weights.h"

// ---------------------------------------------------------------------------------------------
// model from tensors

typedef struct {
    const wfile *wf;
    carseg_status st;
} loader;

/* Tensor `name` with the given shape (-1 = any); NULL + error when missing or misshapen. */
static const float *get(loader *ld, const char *name, int ndim, int64_t d0, int64_t d1,
                        int64_t d2, int64_t d3) {
    if (ld->st != CARSEG_OK) return NULL;
    const wtensor *t = wfile_get(ld->wf, name);
    if (!t) {
        ld->st = set_err(CARSEG_EMODEL, "%s: missing tensor (tensor %s)", ld->wf->path, name);
        return NULL;
    }
    int64_t want[4] = {d0, d1, d2, d3};
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = want[i] < 0 || t->shape[i] == want[i];
    if (!ok) {
        char got[96] = "", exp[96] = "";
        for (int i = 0; i < t->ndim && i < 4; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "",
                     (long long)t->shape[i]);
        for (int i = 0; i < ndim; i++)
            snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%lld", i ? "," : "",
                     (long long)want[i]);
        ld->st = set_err(CARSEG_EMODEL, "%s: shape (%s), expected (%s) (tensor %s)", ld->wf->path,
                         got, exp, name);
        return NULL;
    }
    return t->data;
}

static void get_block(loader *ld, clip_block *b, const char *prefix, int i, int C, int M) {
    char n[200];
#define G(field, suffix, nd, a, bb)                                         \
    snprintf(n, sizeof n, "%sresblocks.%d.%s", prefix, i, suffix);          \
    b->field = get(ld, n, nd, a, bb, -1, -1)
    G(ln1_w, "ln_1.weight", 1, C, -1);
    G(ln1_b, "ln_1.bias", 1, C, -1);
    G(in_w, "attn.in_proj_weight", 2, 3 * C, C);
    G(in_b, "attn.in_proj_bias", 1, 3 * C, -1);
    G(out_w, "attn.out_proj.weight", 2, C, C);
    G(out_b, "attn.out_proj.bias", 1, C, -1);
    G(ln2_w, "ln_2.weight", 1, C, -1);
    G(ln2_b, "ln_2.bias", 1, C, -1);
    G(fc_w, "mlp.c_fc.weight", 2, M, C);
    G(fc_b, "mlp.c_fc.bias", 1, M, -1);
    G(proj_w, "mlp.c_proj.weight", 2, C, M);
    G(proj_b, "mlp.c_proj.bias", 1, C, -1);
#undef G
}

carseg_status clip_from_wfile(const wfile *wf, clip_model **out) {
    *out = NULL;
    clip_config c;
    TRY(clip_config_from_weights(wf, &c));   /* weights.c: architecture off the shapes */
    clip_model *m = calloc(1, sizeof *m);
    if (!m) return set_err(CARSEG_ENOMEM, "%s: out of memory", wf->path);
    m->cfg = c;
    m->v_blocks = calloc((size_t)c.v_layers, sizeof *m->v_blocks);
    m->t_blocks = calloc((size_t)c.t_layers, sizeof *m->t_blocks);
    if (!m->v_blocks || !m->t_blocks) {
        clip_free(m);
        return set_err(CARSEG_ENOMEM, "%s: out of memory", wf->path);
    }
    loader ld = {wf, CARSEG_OK};
    int C = c.v_width, P = c.v_patch, Ct = c.t_width, E = c.embed;
    m->conv1 = get(&ld, "visual.conv1.weight", 4, C, 3, P, P);
    m->class_emb = get(&ld, "visual.class_embedding", 1, C, -1, -1, -1);
    m->v_pos = get(&ld, "visual.positional_embedding", 2, 1 + c.v_grid * c.v_grid, C, -1, -1);
    m->ln_pre_w = get(&ld, "visual.ln_pre.weight", 1, C, -1, -1, -1);
    m->ln_pre_b = get(&ld, "visual.ln_pre.bias", 1, C, -1, -1, -1);
    m->ln_post_w = get(&ld, "visual.ln_post.weight", 1, C, -1, -1, -1);
    m->ln_post_b = get(&ld, "visual.ln_post.bias", 1, C, -1, -1, -1);
    m->v_proj = get(&ld, "visual.proj", 2, C, E, -1, -1);
    m->tok_emb = get(&ld, "token_embedding.weight", 2, c.t_vocab, Ct, -1, -1);
    m->t_pos = get(&ld, "positional_embedding", 2, c.t_ctx, Ct, -1, -1);
    m->ln_final_w = get(&ld, "ln_final.weight", 1, Ct, -1, -1, -1);
    m->ln_final_b = get(&ld, "ln_final.bias", 1, Ct, -1, -1, -1);
    m->t_proj = get(&ld, "text_projection", 2, Ct, E, -1, -1);
    for (int i = 0; i < c.v_layers; i++)
        get_block(&ld, &m->v_blocks[i], "visual.transformer.", i, C, c.v_mlp);
    for (int i = 0; i < c.t_layers; i++)
        get_block(&ld, &m->t_blocks[i], "transformer.", i, Ct, 4 * Ct);
    if (ld.st != CARSEG_OK) {
        clip_free(m);
        return ld.st;
    }
    *out = m;
    return CARSEG_OK;
}

static void free_packs(clip_model *m) {
    if (!m->packs) return;
    for (int i = 0; i < 1 + 5 * m->cfg.v_layers; i++) gemm_pack_free(&m->packs[i]);
    free(m->packs);
    m->packs = NULL;
    for (int l = 0; l < m->cfg.v_layers; l++) m->v_blocks[l].pk = NULL;
}

void clip_free(clip_model *m) {
    if (!m) return;
    if (m->v_blocks) free_packs(m);
    if (m->release) m->release(m->owner);
    free(m->v_blocks);
    free(m->t_blocks);
    free(m);
}

// ---------------------------------------------------------------------------------------------
// random model (benchmarks, tests)

static uint64_t rng_next(uint64_t *s) {   /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_random(float *p, size_t n, float std, uint64_t *s) {
    /* sum of 4 uniforms ~ Gaussian (variance 4/12 * (2a)^2 / 4...) scaled to std */
    const float k = std * 1.7320508f;   /* uniform in [-1,1) has std 1/sqrt(3) */
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(s);
        float a = (float)(r & 0xffff) / 32768.0f - 1.0f, b = (float)((r >> 16) & 0xffff) / 32768.0f - 1.0f;
        float c = (float)((r >> 32) & 0xffff) / 32768.0f - 1.0f, d = (float)(r >> 48) / 32768.0f - 1.0f;
        p[i] = nn_round_fp16(k * 0.5f * (a + b + c + d));   /* fp16 values, as OpenAI's files */
    }
}

static void release_arena(void *p) { cs_free(p); }

carseg_status clip_init_random(const clip_config *cfg, unsigned seed, clip_model **out) {
    *out = NULL;
    clip_config c = *cfg;
    if (c.v_heads <= 0) c.v_heads = c.v_width / 64;
    if (c.t_heads <= 0) c.t_heads = c.t_width / 64;
    if (c.v_mlp <= 0) c.v_mlp = 4 * c.v_width;
    if (c.logit_scale <= 0) c.logit_scale = 100.0f;
    if (c.v_width <= 0 || c.v_layers <= 0 || c.v_heads <= 0 || c.v_width % c.v_heads ||
        c.v_patch <= 0 || c.v_grid <= 0 || c.t_width <= 0 || c.t_layers <= 0 || c.t_heads <= 0 ||
        c.t_width % c.t_heads || c.t_ctx <= 0 || c.t_vocab <= 0 || c.embed <= 0)
        return set_err(CARSEG_EINVAL, "clip_init_random: invalid configuration");
    int C = c.v_width, P = c.v_patch, Ct = c.t_width, E = c.embed, M = c.v_mlp, Mt = 4 * Ct;
    size_t blk_v = (size_t)4 * C + 3 * C * C + 3 * C + C * C + C + 2 * (size_t)M * C + M + C;
    size_t blk_t = (size_t)4 * Ct + 3 * Ct * Ct + 3 * Ct + Ct * Ct + Ct + 2 * (size_t)Mt * Ct + Mt + Ct;
    size_t np = (size_t)1 + c.v_grid * c.v_grid;
    size_t total = (size_t)C * 3 * P * P + C + np * C + 4 * C + (size_t)C * E + blk_v * c.v_layers +
                   (size_t)c.t_vocab * Ct + (size_t)c.t_ctx * Ct + 2 * Ct + (size_t)Ct * E +
                   blk_t * c.t_layers;
    float *arena = cs_malloc(total * sizeof(float));
    clip_model *m = calloc(1, sizeof *m);
    if (m) {
        m->v_blocks = calloc((size_t)c.v_layers, sizeof *m->v_blocks);
        m->t_blocks = calloc((size_t)c.t_layers, sizeof *m->t_blocks);
    }
    if (!arena || !m || !m->v_blocks || !m->t_blocks) {
        cs_free(arena);
        if (m) { free(m->v_blocks); free(m->t_blocks); free(m); }
        return set_err(CARSEG_ENOMEM, "clip_init_random: out of memory (%zu floats)", total);
    }
    m->cfg = c;
    m->owner = arena;
    m->release = release_arena;
    uint64_t s = seed;
    float *p = arena;
#define TAKE(n, std) (fill_random(p, (n), (std), &s), p += (n), p - (n))
#define ONES(n) (p += (n), p - (n))
    m->conv1 = TAKE((size_t)C * 3 * P * P, 0.02f);
    m->class_emb = TAKE((size_t)C, 0.02f);
    m->v_pos = TAKE(np * C, 0.01f);
    float *lnw = p;
    m->ln_pre_w = ONES((size_t)C); m->ln_pre_b = ONES((size_t)C);
    m->ln_post_w = ONES((size_t)C); m->ln_post_b = ONES((size_t)C);
    for (int i = 0; i < C; i++) lnw[i] = 1, lnw[C + i] = 0, lnw[2 * C + i] = 1, lnw[3 * C + i] = 0;
    m->v_proj = TAKE((size_t)C * E, 0.02f);
    for (int t = 0; t < 2; t++) {
        int W = t ? Ct : C, MM = t ? Mt : M, n = t ? c.t_layers : c.v_layers;
        clip_block *bl = t ? m->t_blocks : m->v_blocks;
        for (int i = 0; i < n; i++) {
            clip_block *b = &bl[i];
            float *ln = p;
            b->ln1_w = ONES((size_t)W); b->ln1_b = ONES((size_t)W);
            b->ln2_w = ONES((size_t)W); b->ln2_b = ONES((size_t)W);
            for (int j = 0; j < W; j++) ln[j] = 1, ln[W + j] = 0, ln[2 * W + j] = 1, ln[3 * W + j] = 0;
            b->in_w = TAKE((size_t)3 * W * W, 0.02f);
            b->in_b = TAKE((size_t)3 * W, 0.01f);
            b->out_w = TAKE((size_t)W * W, 0.02f);
            b->out_b = TAKE((size_t)W, 0.01f);
            b->fc_w = TAKE((size_t)MM * W, 0.02f);
            b->fc_b = TAKE((size_t)MM, 0.01f);
            b->proj_w = TAKE((size_t)W * MM, 0.02f);
            b->proj_b = TAKE((size_t)W, 0.01f);
        }
    }
    m->tok_emb = TAKE((size_t)c.t_vocab * Ct, 0.02f);
    m->t_pos = TAKE((size_t)c.t_ctx * Ct, 0.01f);
    lnw = p;
    m->ln_final_w = ONES((size_t)Ct); m->ln_final_b = ONES((size_t)Ct);
    for (int i = 0; i < Ct; i++) lnw[i] = 1, lnw[Ct + i] = 0;
    m->t_proj = TAKE((size_t)Ct * E, 0.02f);
#undef TAKE
#undef ONES
    CS_ASSERT((size_t)(p - arena) == total);
    *out = m;
    return CARSEG_OK;
}

double clip_image_flops(const clip_config *c, int gh, int gw, int n_blocks) {
    double L = 1.0 + (double)gh * gw, C = c->v_width, M = c->v_mlp;
    double per_block = 2 * L * C * (3 * C + C + 2 * M) + 2.0 * 2 * L * L * C;
    double patch = 2.0 * gh * gw * C * 3 * c->v_patch * c->v_patch;
    return patch + per_block * n_blocks + 2 * C * c->embed;
}

double clip_text_flops(const clip_config *c, int L) {
    double C = c->t_width;
    double per_block = 2.0 * L * C * (3 * C + C + 8 * C) + 2.0 * 2 * L * L * C;
    return per_block * c->t_layers + 2 * C * c->embed;
}

// ---------------------------------------------------------------------------------------------
// transformer

typedef struct {
    float *ln;     /* (BL, C) */
    float *qkv;    /* (BL, 3C) */
    float *att;    /* (BL, C) */
    float *hid;    /* (BL, M) */
    float *probs;  /* (B, NH, L, L) */
    gemm_work wk;  /* the AMX products' packed activations */
    void *arena;   /* the five arrays above, in one block of cap bytes */
    size_t cap;
} scratch;

/* The arrays come from one block, the calling thread's spare (cs_spare_take) when it is large
 * enough: every forward needs the same buffers again, and fresh ones from the kernel cost page
 * faults and zeroing (3600 per ViT-L/14 forward, ~5 % of its time). */
static carseg_status scratch_alloc(scratch *s, int B, int L, int C, int M, int NH) {
    size_t BL = (size_t)B * L, off[5], n = 0;
    const size_t sz[5] = {BL * C, BL * 3 * C, BL * C, BL * M, (size_t)B * NH * L * L};
    for (int i = 0; i < 5; i++) {
        off[i] = n;
        n += (sz[i] * sizeof(float) + 63) & ~(size_t)63;
    }
    s->arena = cs_spare_take(CS_SPARE_CLIP_ACT, n, &s->cap);
    s->wk.p = cs_spare_take(CS_SPARE_GEMM_WORK, 0, &s->wk.n);
    if (!s->arena) return set_err(CARSEG_ENOMEM, "clip: out of memory for %d x %d tokens", B, L);
    char *a = s->arena;
    s->ln = (float *)(a + off[0]);
    s->qkv = (float *)(a + off[1]);
    s->att = (float *)(a + off[2]);
    s->hid = (float *)(a + off[3]);
    s->probs = (float *)(a + off[4]);
    return CARSEG_OK;
}
static void scratch_free(scratch *s) {
    cs_spare_give(CS_SPARE_CLIP_ACT, s->arena, s->cap);
    cs_spare_give(CS_SPARE_GEMM_WORK, s->wk.p, s->wk.n);
    s->arena = s->wk.p = NULL;
    s->cap = s->wk.n = 0;
}

/* out (B * R, OC; row stride ldo) = x (B * R, IC) @ w^T + b with nn_linear_ex's flags, for B
 * items (sequences) of R rows: the packed AMX product when pk (a reduced precision mode), else
 * float32 item by item (nn_linear_items; ldo must then be OC). Either way a row's result does not
 * depend on the other items of the batch. */
static void linear(float *out, int ldo, const float *x, const float *w, const float *b, int B,
                   int R, int IC, int OC, int flags, const gemm_pack *pk, gemm_work *wk) {
    if (pk) gemm_linear(out, ldo, x, B * R, pk, b, flags, wk);
    else nn_linear_items(out, x, w, b, B, R, IC, OC, flags);
}

/* One ResidualAttentionBlock on x (B, L, C) in place. avg: (B, L, L) head-averaged attention
 * or NULL. */
static void block_forward(const clip_block *bk, float *x, scratch *s, int B, int L, int C, int M,
                          int NH, int causal, float *avg) {
    size_t BL = (size_t)B * L;
    const gemm_pack *pk = bk->pk;
    if (pk && !causal && !avg) {   /* the whole block in one parallel region */
        gemm_block_w bw = {pk, bk->ln1_w, bk->ln1_b, bk->in_b, bk->out_b, bk->ln2_w, bk->ln2_b,
                           bk->fc_b, bk->proj_b};
        if (gemm_block(x, s->ln, s->qkv, s->att, s->hid, B, L, C, M, NH, &bw, &s->wk)) return;
    }
    if (pk) {   /* q and k|v are packed apart (block_forward_rows needs them apart) */
        if (C % 32 == 0) {   /* ln_1 inside the product's parallel region */
            gemm_linear_ln(s->qkv, 3 * C, x, (int)BL, bk->ln1_w, bk->ln1_b, s->ln, &pk[0], &pk[1],
                           bk->in_b, 0, &s->wk);
        } else {
            gemm_linear_ln(s->qkv, 3 * C, x, (int)BL, bk->ln1_w, bk->ln1_b, s->ln, &pk[0], NULL,
                           bk->in_b, 0, &s->wk);
            gemm_linear(s->qkv + C, 3 * C, s->ln, (int)BL, &pk[1], bk->in_b + C, 0, &s->wk);
        }
    } else {
        nn_layernorm(s->ln, x, bk->ln1_w, bk->ln1_b, (int)BL, C);
        nn_linear_items(s->qkv, s->ln, bk->in_w, bk->in_b, B, L, C, 3 * C, 0);
    }
    /* AMX attention: probs are only scratch here unless avg is wanted */
    if (!pk || causal ||
        !gemm_attention(s->att, avg ? s->probs : NULL, avg, s->qkv, B, L, C, NH, pk[0].mode))
        nn_attention(s->att, s->probs, avg, s->qkv, B, L, C, NH, causal);
    linear(x, C, s->att, bk->out_w, bk->out_b, B, L, C, C, NN_ACCUMULATE, pk ? &pk[2] : NULL,
           &s->wk);
    if (pk) {   /* ln_2 inside c_fc's parallel region */
        gemm_linear_ln(s->hid, M, x, (int)BL, bk->ln2_w, bk->ln2_b, s->ln, &pk[3], NULL, bk->fc_b,
                       NN_GELU, &s->wk);
    } else {
        nn_layernorm(s->ln, x, bk->ln2_w, bk->ln2_b, (int)BL, C);
        nn_linear_items(s->hid, s->ln, bk->fc_w, bk->fc_b, B, L, C, M, NN_GELU);
    }
    linear(x, C, s->hid, bk->proj_w, bk->proj_b, B, L, M, C, NN_ACCUMULATE,
           pk ? &pk[4] : NULL, &s->wk);
}

/* The last block when only one row per sequence is read afterwards (CLS for images, EOT for
 * text): keys and values for all rows, everything else for that row only. x (B, L, C) is read;
 * out (B, C) receives the block's output at row[b]. The same operations as block_forward on those
 * rows; the products after k|v run row by row (one-row items), so a row's bits do not follow B,
 * but they may differ in the last bits from block_forward's (OpenBLAS's kernels give a row other
 * bits at another place in a product on some CPUs). s->qkv holds (B*L, 2C) k|v here. */
static carseg_status block_forward_rows(const clip_block *bk, const float *x, const int *row,
                                        float *out, scratch *s, int B, int L, int C, int M, int NH,
                                        int causal) {
    size_t BL = (size_t)B * L;
    int hd = C / NH, C2 = 2 * C;
    float scale = 1.0f / sqrtf((float)hd);
    const gemm_pack *pk = bk->pk;
    nn_layernorm(s->ln, x, bk->ln1_w, bk->ln1_b, (int)BL, C);
    linear(s->qkv, C2, s->ln, bk->in_w + (size_t)C * C, bk->in_b + C, B, L, C, C2, 0,
           pk ? &pk[1] : NULL, &s->wk);   /* k | v */
    float *q = cs_malloc(sizeof(float) * ((size_t)3 * B * C + (size_t)B * M));
    if (!q) return set_err(CARSEG_ENOMEM, "clip: out of memory");
    float *att = q + (size_t)B * C, *h2 = att + (size_t)B * C, *hid = h2 + (size_t)B * C;
    for (int b = 0; b < B; b++)
        memcpy(out + (size_t)b * C, s->ln + ((size_t)b * L + row[b]) * C, sizeof(float) * C);
    linear(q, C, out, bk->in_w, bk->in_b, B, 1, C, C, 0, pk ? &pk[0] : NULL, &s->wk);
    /* one query per (sequence, head): scores over the visible keys, softmax, weighted values */
#pragma omp parallel for schedule(static) if (B * NH > 1 && (size_t)B * L * C > 65536)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH, n = causal ? row[b] + 1 : L;
        const float *qh = q + (size_t)b * C + h * hd;
        const float *kv = s->qkv + (size_t)b * L * C2;
        float *p = s->probs + (size_t)bh * L;
        for (int j = 0; j < n; j++) {
            const float *k = kv + (size_t)j * C2 + h * hd;
            float d = 0;
            for (int t = 0; t < hd; t++) d += qh[t] * k[t];
            p[j] = d * scale;
        }
        nn_softmax(p, 1, n);
        float *o = att + (size_t)b * C + h * hd;
        memset(o, 0, sizeof(float) * hd);
        for (int j = 0; j < n; j++) {
            const float *v = kv + (size_t)j * C2 + C + h * hd;
            for (int t = 0; t < hd; t++) o[t] += p[j] * v[t];
        }
    }
    for (int b = 0; b < B; b++)
        memcpy(out + (size_t)b * C, x + ((size_t)b * L + row[b]) * C, sizeof(float) * C);
    linear(out, C, att, bk->out_w, bk->out_b, B, 1, C, C, NN_ACCUMULATE, pk ? &pk[2] : NULL,
           &s->wk);
    nn_layernorm(h2, out, bk->ln2_w, bk->ln2_b, B, C);
    linear(hid, M, h2, bk->fc_w, bk->fc_b, B, 1, C, M, NN_GELU, pk ? &pk[3] : NULL, &s->wk);
    linear(out, C, hid, bk->proj_w, bk->proj_b, B, 1, M, C, NN_ACCUMULATE, pk ? &pk[4] : NULL,
           &s->wk);
    cs_free(q);
    return CARSEG_OK;
}

carseg_status clip_block_forward(const clip_block *bk, float *x, int B, int L, int C, int M, int NH,
                                 int causal, float *attn) {
    if (B <= 0 || L <= 0 || C <= 0 || M <= 0 || NH <= 0 || C % NH)
        return set_err(CARSEG_EINVAL, "clip_block_forward: invalid sizes B %d L %d C %d M %d NH %d",
                       B, L, C, M, NH);
    scratch s = {0};
    carseg_status st = scratch_alloc(&s, B, L, C, M, NH);
    if (st == CARSEG_OK) block_forward(bk, x, &s, B, L, C, M, NH, causal, attn);
    scratch_free(&s);
    return st;
}

// ---------------------------------------------------------------------------------------------
// text tower

static int eot_pos(const int32_t *t, int ctx) {   /* torch argmax: first maximum */
    int best = 0;
    for (int j = 1; j < ctx; j++)
        if (t[j] > t[best]) best = j;
    return best;
}

carseg_status clip_encode_text(const clip_model *m, const int32_t *tokens, int n, float *out) {
    const clip_config *c = &m->cfg;
    int C = c->t_width, ctx = c->t_ctx, E = c->embed;
    if (n <= 0) return CARSEG_OK;
    for (size_t i = 0; i < (size_t)n * ctx; i++)
        if (tokens[i] < 0 || tokens[i] >= c->t_vocab)
            return set_err(CARSEG_EINVAL, "clip_encode_text: token %d of prompt %zu is outside "
                           "the vocabulary (%d)", tokens[i], i / ctx, c->t_vocab);
    /* prompts sorted by EOT position, batched so that each batch runs to its longest EOT */
    int *order = malloc(sizeof(int) * n), *eot = malloc(sizeof(int) * n);
    int *rows = malloc(sizeof(int) * n);
    if (!order || !eot || !rows) {
        free(order); free(eot); free(rows);
        return set_err(CARSEG_ENOMEM, "clip_encode_text: out of memory");
    }
    for (int i = 0; i < n; i++) eot[i] = eot_pos(tokens + (size_t)i * ctx, ctx), order[i] = i;
    for (int i = 1; i < n; i++) {   /* insertion sort by eot (n is small) */
        int v = order[i], j = i - 1;
        while (j >= 0 && eot[order[j]] > eot[v]) order[j + 1] = order[j], j--;
        order[j + 1] = v;
    }
    const int maxB = 64;
    int Bcap = n < maxB ? n : maxB;
    scratch s = {0};
    float *x = cs_malloc((size_t)Bcap * ctx * C * sizeof(float));
    float *feat = cs_malloc((size_t)Bcap * C * sizeof(float));
    carseg_status st = scratch_alloc(&s, Bcap, ctx, C, 4 * C, c->t_heads);
    if (st == CARSEG_OK && (!x || !feat))
        st = set_err(CARSEG_ENOMEM, "clip_encode_text: out of memory");
    for (int b0 = 0; st == CARSEG_OK && b0 < n; b0 += maxB) {
        int B = n - b0 < maxB ? n - b0 : maxB;
        int L = eot[order[b0 + B - 1]] + 1;
        /* x = token_embedding[tokens] + positional_embedding  (B, L, C) */
        for (int b = 0; b < B; b++) {
            const int32_t *t = tokens + (size_t)order[b0 + b] * ctx;
            for (int j = 0; j < L; j++) {
                float *xr = x + ((size_t)b * L + j) * C;
                const float *te = m->tok_emb + (size_t)t[j] * C, *pe = m->t_pos + (size_t)j * C;
                for (int k = 0; k < C; k++) xr[k] = te[k] + pe[k];
            }
        }
        for (int l = 0; l < c->t_layers - 1; l++)
            block_forward(&m->t_blocks[l], x, &s, B, L, C, 4 * C, c->t_heads, 1, NULL);
        /* the last block at the EOT rows only, ln_final there, @ text_projection */
        for (int b = 0; b < B; b++) rows[b] = eot[order[b0 + b]];
        st = block_forward_rows(&m->t_blocks[c->t_layers - 1], x, rows, feat, &s, B, L, C, 4 * C,
                                c->t_heads, 1);
        if (st != CARSEG_OK) break;
        nn_layernorm(feat, feat, m->ln_final_w, m->ln_final_b, B, C);
        float *o = s.ln;   /* (B, E) */
        for (int b = 0; b < B; b++)   /* prompt by prompt: a row's bits do not follow B */
            nn_sgemm(0, 0, 1, E, C, 1.0f, feat + (size_t)b * C, C, m->t_proj, E, 0.0f, o + (size_t)b * E, E);
        for (int b = 0; b < B; b++)
            memcpy(out + (size_t)order[b0 + b] * E, o + (size_t)b * E, sizeof(float) * E);
    }
    scratch_free(&s);
    cs_free(x);
    cs_free(feat);
    free(order);
    free(eot);
    free(rows);
    return st;
}

/* Batch-invariant text encoding: a prompt's features depend on its own tokens only, not on the
 * other prompts of the call, their number or their order. On the fma-chain kernel (gemm_f32.h)
 * that holds for clip_encode_text itself. Elsewhere (OpenBLAS) prompts are grouped by their EOT
 * position and each group is encoded on its own (in batches of up to TEXT_GROUP), so every prompt
 * goes through activations of its own length (EOT + 1), the products run sequence by sequence
 * (nn_linear_items), and the padded length, which changes OpenBLAS's sums in the attention, is
 * always the prompt's own. */
enum { TEXT_GROUP = 64 };
carseg_status clip_encode_text_stable(const clip_model *m, const int32_t *tokens, int n, float *out) {
    const clip_config *c = &m->cfg;
    int ctx = c->t_ctx, E = c->embed;
    if (n <= 0) return CARSEG_OK;
    /* On the fma-chain kernel a row's bits follow neither the batch nor the padded length (the
     * causal attention's extra columns add exact zeros to a chain): free batching is invariant. */
    if (gemm_f32_available()) return clip_encode_text(m, tokens, n, out);
    int *eot = malloc(sizeof(int) * (size_t)n), *idx = malloc(sizeof(int) * TEXT_GROUP);
    int32_t *tk = malloc(sizeof(int32_t) * (size_t)TEXT_GROUP * ctx);
    float *f = malloc(sizeof(float) * (size_t)TEXT_GROUP * E);
    unsigned char *done = calloc((size_t)n, 1);
    carseg_status st = CARSEG_OK;
    if (!eot || !idx || !tk || !f || !done) st = set_err(CARSEG_ENOMEM, "clip_encode_text: out of memory");
    for (int i = 0; st == CARSEG_OK && i < n; i++) eot[i] = eot_pos(tokens + (size_t)i * ctx, ctx);
    for (int i = 0; st == CARSEG_OK && i < n; i++) {
        if (done[i]) continue;
        /* the next TEXT_GROUP prompts (from i on) with i's EOT position */
        int k = 0;
        for (int j = i; j < n && k < TEXT_GROUP; j++)
            if (!done[j] && eot[j] == eot[i]) idx[k++] = j, done[j] = 1;
        for (int b = 0; b < k; b++)
            memcpy(tk + (size_t)b * ctx, tokens + (size_t)idx[b] * ctx, sizeof(int32_t) * (size_t)ctx);
        st = clip_encode_text(m, tk, k, f);
        for (int b = 0; st == CARSEG_OK && b < k; b++)
            memcpy(out + (size_t)idx[b] * E, f + (size_t)b * E, sizeof(float) * (size_t)E);
    }
    free(eot), free(idx), free(tk), free(f), free(done);
    return st;
}

// ---------------------------------------------------------------------------------------------
// image tower

/* PyTorch 1.13 upsample_bilinear2d on a contiguous NCHW tensor (align_corners=False, size given):
 * the scale is in/out in float, the source index is formed in double (area_pixel_compute_source_index
 * mixes the float scale with a double 0.5), lambda1 = float(src - i0), lambda0 = 1 - lambda1 in float.
 * Together with the fused multiply-adds of its AVX2 kernel (see clip_pos_embed) this reproduces
 * PyTorch bit for bit, which matters because the result is then rounded to fp16 (Q16). */
static void bilinear_coeff(int in, int out, int i, int *i0, int *i1, float *l0, float *l1) {
    float scale = (float)in / (float)out;
    double src = (double)scale * ((double)i + 0.5) - 0.5;
    if (src < 0) src = 0;
    int a = (int)src;
    if (a > in - 1) a = in - 1;
    float lam = (float)(src - a);
    if (lam < 0) lam = 0;
    if (lam > 1) lam = 1;
    *i0 = a;
    *i1 = a + (a < in - 1 ? 1 : 0);
    *l1 = lam;
    *l0 = 1.0f - lam;
}

void clip_pos_embed(const clip_model *m, int gh, int gw, int round_fp16, float *out) {
    int C = m->cfg.v_width, g = m->cfg.v_grid;
    const float *pos = m->v_pos;
    memcpy(out, pos, sizeof(float) * C);   /* CLS row */
    if (gh == g && gw == g) {
        memcpy(out + C, pos + C, sizeof(float) * (size_t)g * g * C);
    } else {
        const float *pp = pos + C;   /* (g*g, C): row-major (y, x) */
        for (int y = 0; y < gh; y++) {
            int y0, y1;
            float hy0, hy1;
            bilinear_coeff(g, gh, y, &y0, &y1, &hy0, &hy1);
            for (int xx = 0; xx < gw; xx++) {
                int x0, x1;
                float wx0, wx1;
                bilinear_coeff(g, gw, xx, &x0, &x1, &wx0, &wx1);
                const float *a = pp + ((size_t)y0 * g + x0) * C, *b = pp + ((size_t)y0 * g + x1) * C;
                const float *cc = pp + ((size_t)y1 * g + x0) * C, *d = pp + ((size_t)y1 * g + x1) * C;
                float *o = out + (1 + (size_t)y * gw + xx) * C;
                /* t0 * w0 + t1 * w1 contracted to fma(t0, w0, t1 * w1), width then height */
                for (int k = 0; k < C; k++) {
                    float top = fmaf(a[k], wx0, b[k] * wx1);
                    float bot = fmaf(cc[k], wx0, d[k] * wx1);
                    o[k] = fmaf(top, hy0, bot * hy1);
                }
            }
        }
    }
    if (round_fp16)
        for (size_t i = 0; i < (size_t)(1 + gh * gw) * C; i++) out[i] = nn_round_fp16(out[i]);
}

static carseg_status check_size(const clip_model *m, int H, int W, const char *fn) {
    int P = m->cfg.v_patch;
    if (H <= 0 || W <= 0 || H % P || W % P)
        return set_err(CARSEG_EINVAL, "%s: image %dx%d is not a positive multiple of the patch %d",
                       fn, W, H, P);
    return CARSEG_OK;
}

/* Embeds B images x (B, 3, H, W) into tok (B, L, C): class token, patch matmul (conv1 without
 * bias), + positional embedding, ln_pre. */
static carseg_status embed_images(const clip_model *m, const float *x, int B, int H, int W,
                                  int round_pos, float *tok) {
    const clip_config *c = &m->cfg;
    int C = c->v_width, P = c->v_patch, gh = H / P, gw = W / P, Np = gh * gw, L = 1 + Np;
    int K = 3 * P * P;
    float *patches = cs_malloc((size_t)Np * K * sizeof(float));
    float *pos = cs_malloc((size_t)L * C * sizeof(float));
    if (!patches || !pos) {
        cs_free(patches); cs_free(pos);
        return set_err(CARSEG_ENOMEM, "clip: out of memory for a %dx%d image", W, H);
    }
    clip_pos_embed(m, gh, gw, round_pos, pos);
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * 3 * H * W;
        /* patches (Np, 3*P*P), column order (channel, ky, kx) as conv1.weight (C, 3, P, P) */
        for (int py = 0; py < gh; py++)
            for (int px = 0; px < gw; px++) {
                float *d = patches + ((size_t)py * gw + px) * K;
                for (int ch = 0; ch < 3; ch++)
                    for (int ky = 0; ky < P; ky++)
                        memcpy(d + (ch * P + ky) * P,
                               xb + ((size_t)ch * H + py * P + ky) * W + px * P, sizeof(float) * P);
            }
        float *tb = tok + (size_t)b * L * C;
        if (m->packs) gemm_linear(tb + C, C, patches, Np, &m->packs[0], NULL, 0, NULL);
        else nn_sgemm(0, 1, Np, C, K, 1.0f, patches, K, m->conv1, K, 0.0f, tb + C, C);
        memcpy(tb, m->class_emb, sizeof(float) * C);
        for (size_t i = 0; i < (size_t)L * C; i++) tb[i] += pos[i];
        nn_layernorm(tb, tb, m->ln_pre_w, m->ln_pre_b, L, C);
    }
    cs_free(patches);
    cs_free(pos);
    return CARSEG_OK;
}

static int resolve_blocks(const clip_model *m, int n_blocks) {
    return n_blocks <= 0 || n_blocks > m->cfg.v_layers ? m->cfg.v_layers : n_blocks;
}

carseg_status clip_encode_images(const clip_model *m, const float *x, int n, int H, int W,
                                 int n_blocks, float *out) {
    TRY(check_size(m, H, W, "clip_encode_image"));
    if (n <= 0) return CARSEG_OK;
    const clip_config *c = &m->cfg;
    int C = c->v_width, P = c->v_patch, gh = H / P, gw = W / P, L = 1 + gh * gw, E = c->embed;
    int nb = resolve_blocks(m, n_blocks);
    int round_pos = !(gh == c->v_grid && gw == c->v_grid);
    /* batch so that about 2048 tokens go through each product */
    int maxB = 2048 / L > 1 ? 2048 / L : 1;
    if (maxB > n) maxB = n;
    scratch s = {0};
    float *tok = cs_malloc((size_t)maxB * L * C * sizeof(float));
    float *cls = cs_malloc((size_t)maxB * C * sizeof(float));
    int *zero_rows = calloc((size_t)maxB, sizeof(int));
    carseg_status st = scratch_alloc(&s, maxB, L, C, c->v_mlp, c->v_heads);
    if (st == CARSEG_OK && (!tok || !cls || !zero_rows))
        st = set_err(CARSEG_ENOMEM, "clip_encode_image: out of memory");
    for (int b0 = 0; st == CARSEG_OK && b0 < n; b0 += maxB) {
        int B = n - b0 < maxB ? n - b0 : maxB;
        st = embed_images(m, x + (size_t)b0 * 3 * H * W, B, H, W, round_pos, tok);
        if (st != CARSEG_OK) break;
        for (int l = 0; l < nb - 1; l++)
            block_forward(&m->v_blocks[l], tok, &s, B, L, C, c->v_mlp, c->v_heads, 0, NULL);
        /* the last block at the CLS rows only, then ln_post there */
        st = block_forward_rows(&m->v_blocks[nb - 1], tok, zero_rows, cls, &s, B, L, C, c->v_mlp,
                                c->v_heads, 0);
        if (st != CARSEG_OK) break;
        nn_layernorm(cls, cls, m->ln_post_w, m->ln_post_b, B, C);
        for (int b = 0; b < B; b++)   /* image by image: a row's bits do not follow B */
            nn_sgemm(0, 0, 1, E, C, 1.0f, cls + (size_t)b * C, C, m->v_proj, E, 0.0f,
                     out + (size_t)(b0 + b) * E, E);
    }
    scratch_free(&s);
    cs_free(tok);
    cs_free(cls);
    free(zero_rows);
    return st;
}

carseg_status clip_encode_image(const clip_model *m, const float *x, int H, int W, int n_blocks,
                                float *out) {
    return clip_encode_images(m, x, 1, H, W, n_blocks, out);
}

carseg_status clip_image_trunk(const clip_model *m, const float *x, int H, int W, int n_blocks,
                               float *tokens_out, float *attn_out) {
    return clip_image_trunk_from(m, x, H, W, n_blocks, 0, tokens_out, attn_out);
}

carseg_status clip_image_trunk_from(const clip_model *m, const float *x, int H, int W, int n_blocks,
                                    int first_attn, float *tokens_out, float *attn_out) {
    TRY(check_size(m, H, W, "clip_image_trunk"));
    const clip_config *c = &m->cfg;
    int C = c->v_width, P = c->v_patch, L = 1 + (H / P) * (W / P);
    if (n_blocks < 0 || n_blocks > c->v_layers)
        return set_err(CARSEG_EINVAL, "clip_image_trunk: %d blocks, the model has %d", n_blocks,
                       c->v_layers);
    scratch s = {0};
    carseg_status st = scratch_alloc(&s, 1, L, C, c->v_mlp, c->v_heads);
    if (st == CARSEG_OK) st = embed_images(m, x, 1, H, W, 1, tokens_out);
    for (int l = 0; st == CARSEG_OK && l < n_blocks; l++)
        block_forward(&m->v_blocks[l], tokens_out, &s, 1, L, C, c->v_mlp, c->v_heads, 0,
                      attn_out && l >= first_attn ? attn_out + (size_t)(l - first_attn) * L * L
                                                  : NULL);
    scratch_free(&s);
    return st;
}

// ---------------------------------------------------------------------------------------------
// precision

/* The float32 matrices of the image blocks whose bf16x3 planes moved into them (move_planes),
 * back from the planes; those packs are emptied (they borrowed the memory). tmp: scratch of
 * the largest matrix, or NULL to allocate it here (ENOMEM, nothing changed, when that fails). */
static carseg_status restore_planes(clip_model *m, float *tmp) {
    int n = 1 + 5 * m->cfg.v_layers;
    size_t big = 0;
    for (int i = 0; m->packs && i < n; i++)
        if (m->packs[i].moved && (size_t)m->packs[i].OC * m->packs[i].IC > big)
            big = (size_t)m->packs[i].OC * m->packs[i].IC;
    if (!big) return CARSEG_OK;
    float *own = tmp ? NULL : cs_malloc(big * sizeof(float));
    if (!tmp && !own)
        return set_err(CARSEG_ENOMEM, "clip_set_precision: out of memory (restoring the float32 "
                                      "weights)");
    if (!tmp) tmp = own;
    for (int i = 0; i < n; i++) {
        gemm_pack *p = &m->packs[i];
        if (!p->moved) continue;
        gemm_unpack_weights(p, tmp);
        memcpy(p->hi, tmp, (size_t)p->OC * p->IC * sizeof(float));   /* the matrix's memory */
        memset(p, 0, sizeof *p);
    }
    cs_free(own);
    return CARSEG_OK;
}

/* bf16x3 packs that hold their matrix losslessly (fp16 checkpoints) move into the matrix's
 * memory, so that the mode costs no memory beyond the float32 weights; block l's right after it
 * is packed, so that at most one block's packs are held apart at a time. Only for a model that
 * owns its tensors, and not for the last block (Grad-CAM runs it, forward and backward, in
 * float32 from the float32 weights) nor the patch embedding (small; its K is often not a multiple
 * of 32). While moved, a block's float32 pointers of those matrices hold the planes: every
 * image-tower path reads the packs when there are packs (block_forward, block_forward_rows). */
static void move_planes(const clip_model *m, int l, gemm_pack *q, int precision) {
    if (!m->release || precision != GEMM_BF16X3 || l + 1 >= m->cfg.v_layers) return;
    const clip_block *b = &m->v_blocks[l];
    size_t C = (size_t)m->cfg.v_width;
    float *mem[5] = {(float *)b->in_w, (float *)b->in_w + C * C, (float *)b->out_w,
                     (float *)b->fc_w, (float *)b->proj_w};
    for (int i = 0; i < 5; i++)
        if (gemm_pack_lossless(&q[i], mem[i])) gemm_pack_move(&q[i], mem[i]);
}

carseg_status clip_set_precision(clip_model *m, int precision) {
    if (precision != GEMM_FP32 && precision != GEMM_BF16X3 && precision != GEMM_BF16)
        return set_err(CARSEG_EINVAL, "clip_set_precision: unknown precision %d", precision);
    if (precision == m->precision) return CARSEG_OK;
    if (precision != GEMM_FP32) TRY(gemm_amx_check());
    /* back to float32 weights first (the new packs are made from them) */
    TRY(restore_planes(m, NULL));
    free_packs(m);
    m->precision = GEMM_FP32;
    if (precision == GEMM_FP32) return CARSEG_OK;
    const clip_config *c = &m->cfg;
    int C = c->v_width, M = c->v_mlp, n = 1 + 5 * c->v_layers;
    gemm_pack *pk = calloc((size_t)n, sizeof *pk);
    /* scratch to put moved planes back should packing fail half-way */
    size_t big = (size_t)(M > 2 * C ? M : 2 * C) * C;   /* the largest of the five matrices */
    float *undo = precision == GEMM_BF16X3 && m->release ? cs_malloc(sizeof(float) * big) : NULL;
    if (!pk || (precision == GEMM_BF16X3 && m->release && !undo)) {
        free(pk), cs_free(undo);
        return set_err(CARSEG_ENOMEM, "clip_set_precision: out of memory");
    }
    carseg_status st = gemm_pack_weights(&pk[0], m->conv1, C, 3 * c->v_patch * c->v_patch, precision);
    for (int l = 0; st == CARSEG_OK && l < c->v_layers; l++) {
        const clip_block *b = &m->v_blocks[l];
        gemm_pack *q = pk + 1 + 5 * l;
        st = gemm_pack_weights(&q[0], b->in_w, C, C, precision);
        if (st == CARSEG_OK) st = gemm_pack_weights(&q[1], b->in_w + (size_t)C * C, 2 * C, C, precision);
        if (st == CARSEG_OK) st = gemm_pack_weights(&q[2], b->out_w, C, C, precision);
        if (st == CARSEG_OK) st = gemm_pack_weights(&q[3], b->fc_w, M, C, precision);
        if (st == CARSEG_OK) st = gemm_pack_weights(&q[4], b->proj_w, C, M, precision);
        if (st == CARSEG_OK) move_planes(m, l, q, precision);
    }
    if (st != CARSEG_OK) {
        m->packs = pk;   /* planes already moved go back into their matrices */
        restore_planes(m, undo);
        m->packs = NULL;
        for (int i = 0; i < n; i++) gemm_pack_free(&pk[i]);
        free(pk), cs_free(undo);
        return st;
    }
    cs_free(undo);
    m->packs = pk;
    for (int l = 0; l < c->v_layers; l++) m->v_blocks[l].pk = pk + 1 + 5 * l;
    m->precision = precision;
    return CARSEG_OK;
}

size_t clip_packed_bytes(const clip_model *m) {
    size_t n = 0;
    for (int i = 0; m->packs && i < 1 + 5 * m->cfg.v_layers; i++)
        if (!m->packs[i].moved) n += gemm_pack_bytes(&m->packs[i]);
    return n;
}

// ---------------------------------------------------------------------------------------------
// loading

static void release_wfile(void *wf) { wfile_close(wf); }

carseg_status clip_load(const char *path, clip_model **out) {
    *out = NULL;
    wfile *wf;
    TRY(wfile_open(path, &wf));
    carseg_status st = clip_from_wfile(wf, out);
    if (st != CARSEG_OK) {
        wfile_close(wf);
        return st;
    }
    (*out)->owner = wf;
    (*out)->release = release_wfile;
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// public API (carseg.h)

void carseg_clip_free(carseg_clip *m) { clip_free(m); }
int carseg_clip_embed_dim(const carseg_clip *m) { return m->cfg.embed; }
int carseg_clip_image_size(const carseg_clip *m) { return m->cfg.v_patch * m->cfg.v_grid; }
float carseg_clip_logit_scale(const carseg_clip *m) { return m->cfg.logit_scale; }

carseg_status carseg_clip_encode_texts(const carseg_clip *m, const carseg_tokenizer *tok,
                                       const char *const *texts, int n, float *out) {
    if (!m || !tok || (n > 0 && (!texts || !out)) || n < 0)
        return set_err(CARSEG_EINVAL, "carseg_clip_encode_texts: invalid argument");
    int ctx = m->cfg.t_ctx;
    int32_t *ids = calloc((size_t)n * ctx + 1, sizeof(int32_t));
    if (!ids) return set_err(CARSEG_ENOMEM, "carseg_clip_encode_texts: out of memory");
    for (int i = 0; i < n; i++)
        if (tok_tokenize(tok, texts[i], ids + (size_t)i * ctx, ctx) < 0) {
            free(ids);
            return set_err(CARSEG_EINVAL, "carseg_clip_encode_texts: cannot tokenize text %d", i);
        }
    /* batch-invariant: a text's features never depend on the other texts of the call */
    carseg_status st = clip_encode_text_stable(m, ids, n, out);
    free(ids);
    return st;
}

carseg_status carseg_clip_encode_image_rgb(const carseg_clip *m, const uint8_t *rgb, int w, int h,
                                           int n_blocks, float *out) {
    if (!m || !rgb || !out || w <= 0 || h <= 0)
        return set_err(CARSEG_EINVAL, "carseg_clip_encode_image_rgb: invalid argument");
    int S = carseg_clip_image_size(m);
    image_u8 im = {.w = w, .h = h, .c = 3, .px = (uint8_t *)rgb};
    float *x = cs_malloc(sizeof(float) * 3 * S * S);
    if (!x) return set_err(CARSEG_ENOMEM, "carseg_clip_encode_image_rgb: out of memory");
    carseg_status st = clip_preprocess(&im, S, x);
    if (st == CARSEG_OK) st = clip_encode_image(m, x, S, S, n_blocks, out);
    cs_free(x);
    return st;
}

carseg_status carseg_clip_set_precision(carseg_clip *m, carseg_precision p) {
    if (!m) return set_err(CARSEG_EINVAL, "carseg_clip_set_precision: NULL model");
    if (p == CARSEG_PRECISION_AUTO) p = gemm_amx_check() == CARSEG_OK ? CARSEG_PRECISION_BF16X3
                                                                      : CARSEG_PRECISION_FP32;
    return clip_set_precision(m, (int)p);
}

carseg_precision carseg_clip_get_precision(const carseg_clip *m) {
    return (carseg_precision)m->precision;
}

static const char *const g_precision_names[] = {"fp32", "bf16x3", "bf16", "auto"};

carseg_status carseg_precision_parse(const char *name, carseg_precision *out) {
    for (int i = 0; name && i < 4; i++)
        if (!strcmp(name, g_precision_names[i])) {
            *out = (carseg_precision)i;
            return CARSEG_OK;
        }
    return set_err(CARSEG_EINVAL, "unknown precision '%s' (expected fp32, bf16x3, bf16 or auto)",
                   name ? name : "(null)");
}

const char *carseg_precision_name(carseg_precision p) {
    return (unsigned)p < 4 ? g_precision_names[p] : "?";
}
