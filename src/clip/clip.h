/* clip.h — the CLIP engine: text tower, image tower, and the internals Grad-CAM needs.
 * Mirrors OpenAI clip/model.py (VisionTransformer, Transformer, encode_text, encode_image).
 * Architecture is read off the tensors (widths, layers, heads = width/64, patch, context,
 * vocabulary, embedding size). Computation in float32. The model is immutable after load
 * and may be shared between threads.
 */
#ifndef CARSEG_CLIP_H
#define CARSEG_CLIP_H

#include <stdint.h>
#include "carseg.h"
#include "gemm_amx.h"
#include "tensors.h"

typedef struct clip_config {
    /* vision */
    int v_width, v_layers, v_heads, v_patch, v_grid;  /* v_grid = image_resolution / patch */
    int v_mlp;                                        /* 4*width */
    /* text */
    int t_width, t_layers, t_heads, t_ctx, t_vocab;
    int embed;                                        /* joint embedding size E */
    float logit_scale;                                /* exp(logit_scale) as stored */
} clip_config;

/* The architecture read off a model file's tensors (clip_config.c): widths from the tensor
 * shapes, layers by counting resblocks, patch from conv1, grid from the positional embedding
 * rows, heads = width / 64, cfg->logit_scale = exp(stored logit_scale). CARSEG_EMODEL naming the
 * tensor when one is missing or has an inconsistent shape. */
carseg_status clip_config_from_weights(const wfile *f, clip_config *cfg);

/* One residual attention block, pointers into the wfile (shapes as in OpenAI's state dict). */
typedef struct {
    const float *ln1_w, *ln1_b;        /* (C) */
    const float *in_w, *in_b;          /* (3C, C), (3C) */
    const float *out_w, *out_b;        /* (C, C), (C) */
    const float *ln2_w, *ln2_b;        /* (C) */
    const float *fc_w, *fc_b;          /* (4C, C), (4C) */
    const float *proj_w, *proj_b;      /* (C, 4C), (C) */
    /* AMX precision modes (clip_set_precision): packed in_proj rows 0..C (q), rows C..3C (k|v),
     * out_proj, c_fc, c_proj; NULL in float32 (the default) and for the text tower */
    const gemm_pack *pk;               /* 5 packs or NULL */
} clip_block;

typedef struct clip_model {
    clip_config cfg;
    wfile *wf;                         /* owns the tensors */
    /* vision */
    const float *conv1;                /* (C, 3, P, P) */
    const float *class_emb;            /* (C) */
    const float *v_pos;                /* (1 + grid*grid, C) */
    const float *ln_pre_w, *ln_pre_b, *ln_post_w, *ln_post_b;
    const float *v_proj;               /* (C, E) */
    clip_block *v_blocks;              /* v_layers */
    /* text */
    const float *tok_emb;              /* (vocab, Ct) */
    const float *t_pos;                /* (ctx, Ct) */
    const float *ln_final_w, *ln_final_b;
    const float *t_proj;               /* (Ct, E) */
    clip_block *t_blocks;              /* t_layers */
    /* precision of the image tower's products (GEMM_FP32 default, GEMM_BF16X3, GEMM_BF16) and its
     * packed weights: conv1 as (C, 3*P*P), then 5 per block (clip_block.pk points into them) */
    int precision;
    gemm_pack *packs;                  /* 1 + 5 * v_layers, or NULL */
    /* ownership of the tensors: release(owner) runs in clip_free (wfile_close for clip_load,
     * the weight arena for clip_init_random) */
    void *owner;
    void (*release)(void *owner);
} clip_model;

/* Sets the precision of the image tower's matrix products (patch embedding, in_proj, out_proj,
 * c_fc, c_proj; the attention products, LayerNorm, softmax and the text tower stay float32):
 * GEMM_FP32 (the default: nn.c, gemm_f32.c), GEMM_BF16X3 or GEMM_BF16 (Intel AMX, gemm_amx.h). Packs the
 * weights once (freeing the previous packs); AMX missing -> CARSEG_EINVAL saying why, the model
 * unchanged; out of memory while packing -> CARSEG_ENOMEM, the model then in float32. In bf16x3,
 * a model that owns its tensors keeps the packs of lossless matrices (fp16 checkpoints: all but
 * the last block's, whose float32 weights Grad-CAM needs) in the float32 matrices' own memory,
 * and back to float32 restores those matrices bit for bit. Not thread-safe: call it before
 * sharing the model. */
carseg_status clip_set_precision(clip_model *m, int precision);
/* Bytes the packed weights hold beyond the float32 weights (0 in float32). */
size_t clip_packed_bytes(const clip_model *m);

/* Loads any supported model file (see weights.h). */
carseg_status clip_load(const char *path, clip_model **out);
void clip_free(clip_model *m);

/* Builds a model on the tensors of wf (canonical OpenAI names). The model points into wf and
 * does not own it (m->owner/release are NULL: set them to hand over ownership). Errors name
 * wf->path and the missing or misshapen tensor. */
carseg_status clip_from_wfile(const wfile *wf, clip_model **out);

/* A model of the given shapes with random weights (deterministic in seed; for benchmarks and
 * tests): Gaussian-like weights with std 0.02 rounded through fp16 (as OpenAI's checkpoints),
 * LayerNorm weights 1 and biases 0, logit scale 100
 * unless cfg->logit_scale > 0. Fields v_mlp and *_heads are derived when 0. */
carseg_status clip_init_random(const clip_config *cfg, unsigned seed, clip_model **out);

/* The FLOP count of one image forward (gh x gw grid, n_blocks blocks, the matrix products only)
 * and of the text tower on sequences of length L: for GFLOP/s figures. */
double clip_image_flops(const clip_config *c, int gh, int gw, int n_blocks);
double clip_text_flops(const clip_config *c, int L);

/* Text features, unnormalised: tokens (n, ctx) as from tok_tokenize -> out (n, E). */
carseg_status clip_encode_text(const clip_model *m, const int32_t *tokens, int n, float *out);
/* The same features, batch-invariant: each prompt's features depend on its own tokens only (never
 * on the other prompts of the call, their number or order): prompts go in batches of a fixed size
 * and one EOT position. The text caches and carseg_clip_encode_texts use this. */
carseg_status clip_encode_text_stable(const clip_model *m, const int32_t *tokens, int n, float *out);

/* Image features, unnormalised. x: (3, H, W) normalised pixels, H and W multiples of the patch.
 * n_blocks: how many transformer blocks to run (0 = all; CaR's classifier uses layers-1, Q2).
 * ln_post on CLS, then @ proj. out: (E). The positional embedding is used as stored at the native
 * grid (OpenAI encode_image) and resized + rounded through fp16 otherwise (CaR's wrapper, Q16);
 * for OpenAI's fp16 checkpoints the rounding is the identity at the native grid. */
carseg_status clip_encode_image(const clip_model *m, const float *x, int H, int W, int n_blocks,
                                float *out);

/* Positional embedding for a gh x gw grid: the patch part bilinearly resized (align_corners=False)
 * when the grid differs, CLS row first, rounded through fp16 when round_fp16 (Q16).
 * out: (1 + gh*gw, C). */
void clip_pos_embed(const clip_model *m, int gh, int gw, int round_fp16, float *out);

/* The image trunk: patch embedding + pos (clip_pos_embed, rounded as the reference: Q16) +
 * ln_pre + the first n_blocks blocks. tokens_out: (1 + gh*gw, C). attn_out: if not NULL,
 * (n_blocks, L, L) head-averaged attention probabilities of each block, L = 1 + gh*gw. */
carseg_status clip_image_trunk(const clip_model *m, const float *x, int H, int W, int n_blocks,
                               float *tokens_out, float *attn_out);
/* The same, keeping only the attentions of blocks first_attn..n_blocks-1 (attn_out holds
 * n_blocks - first_attn maps): the mask generator needs only the last few, and at large sizes
 * each map is L*L floats (a 2000x1500 image: 550 MB a block). */
carseg_status clip_image_trunk_from(const clip_model *m, const float *x, int H, int W, int n_blocks,
                                    int first_attn, float *tokens_out, float *attn_out);

/* One ResidualAttentionBlock (x += MHA(ln_1(x)); x += MLP(ln_2(x))) on x (B, L, C) in place, with
 * M = MLP width and NH heads; causal for the text tower. attn: (B, L, L) head-averaged attention
 * probabilities, or NULL. For callers that run single blocks (cam.c: the last visual block). */
carseg_status clip_block_forward(const clip_block *bk, float *x, int B, int L, int C, int M, int NH,
                                 int causal, float *attn);

/* n images of the same size at once (x: (n, 3, H, W)) -> out (n, E): one batch through the
 * matrix products, faster than n calls for the classifier's prompted images. */
carseg_status clip_encode_images(const clip_model *m, const float *x, int n, int H, int W,
                                 int n_blocks, float *out);

#endif
