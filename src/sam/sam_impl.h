/* sam_impl.h — internals shared by the SAM modules (sam_model.c, sam_encoder.c, sam_decoder.c,
 * sam_ops.c): the model's weights as pointers into the loaded file, the image object, and the
 * layer operations SAM needs beyond nn.c (LayerNorm with its eps, exact GELU, convolutions as
 * products). Not part of any public API. */
#ifndef CARSEG_SAM_IMPL_H
#define CARSEG_SAM_IMPL_H

#include "sam.h"
#include "weights.h"

typedef struct { const float *w, *b; } sam_lin;   /* nn.Linear (out, in) + bias; LayerNorm w, b */

typedef struct {
    sam_lin norm1, norm2, qkv, proj, lin1, lin2;
    const float *rel_h, *rel_w;   /* (2S-1, head dim) */
    int window;                   /* 0 = global */
} sam_vblock;

typedef struct { sam_lin q, k, v, o; int internal; } sam_dattn;   /* decoder Attention */

typedef struct {
    sam_dattn self, t2i, i2t;
    sam_lin norm1, norm2, norm3, norm4, mlp1, mlp2;
} sam_dlayer;

typedef struct {   /* conv 3x3 pad 1: weights reordered to 9 x (Cout, Cin), bias */
    float *w;
    const float *b;
    int cin, cout;
} sam_conv3;

struct sam_model {
    sam_config c;
    wfile *wf;
    char *path;
    /* image encoder */
    const float *patch_w, *patch_b, *pos;   /* (embed, 3*p*p), (embed), (64*64, embed) or NULL */
    sam_vblock *blk;
    const float *neck0;                     /* (out, embed) */
    sam_lin neck1, neck3;
    sam_conv3 neck2;
    /* prompt encoder */
    const float *pe_gauss;                  /* (2, dim/2) */
    const float *point_emb[4], *not_a_point, *no_mask;
    float *dense_pe;                        /* (64*64, dim) get_dense_pe, channels-last */
    /* mask decoder */
    sam_dlayer *dl;
    sam_dattn fin;
    sam_lin norm_fin;
    const float *iou_token, *mask_tokens, *hf_token;
    sam_lin up0, up1, up3;                  /* ConvT (dim, dim/4, 2, 2); LN2d; ConvT (dim/4, dim/8) */
    float *up0r, *up3r;                     /* their weights by sam_convt2_reorder */
    float *up0pk, *up3pk;                   /* those packed (sam_convt2_pack) or NULL */
    /* the first ConvT through the two norm4 of a 2-layer two-way transformer (decoder_prepare in
     * sam_model.c, czt_band in sam_decoder.c): W12 = diag(g1 g2) W, W2 = diag(g2) W (D, 4 * D/4) with W = up0r, their packings
     * (or NULL), and the vectors c12, c2 (column sums), u1, u2, e; NULL: not used */
    float *cz_w12, *cz_w2, *cz_w12pk, *cz_w2pk, *cz_vec;
    sam_lin *hyper;                         /* n_mask_tokens x 3 layers */
    sam_lin hf_mlp[3];
    sam_lin *iou_head;                      /* iou_depth layers */
    sam_lin cvf0, cvf1, cvf3;               /* compress_vit_feat: ConvT(embed,dim), LN2d, ConvT(dim,dim/8) */
    sam_lin ee0, ee1, ee3;                  /* embedding_encoder: ConvT(dim,dim/4), LN2d, ConvT(dim/4,dim/8) */
    sam_conv3 mf0;                          /* embedding_maskfeature.0: (dim/8 -> dim/4) */
    float *mf0_wino;                        /* its Winograd weights (sam_conv3_wino_pack) or NULL */
    sam_lin mf1;
    const float *mf3_w, *mf3_b;             /* embedding_maskfeature.3 as stored (dim/8, dim/4, 3, 3) */
    size_t params;
};

struct sam_image {
    const sam_model *m;
    int ow, oh;            /* original size */
    int iw, ih;            /* resized input size (long side 1024) */
    float *emb;            /* (4096, dim) */
    float *interm;         /* (4096, embed) HQ only */
    /* filled by the first sam_predict (all prompts share them) */
    float *hq_feat;        /* (256*256, dim/8) HQ: embedding_encoder(emb) + compress_vit_feat(interm) */
    float *src0;           /* (4096, dim) emb + no_mask_embed */
    float *kpe0;           /* (4096, dim) src0 + dense pe */
    float *k0, *v0, *q0;   /* layer 0: t2i k_proj(kpe0), t2i v_proj(src0), i2t q_proj(kpe0) */
    float *cz_p0;          /* (4096, D) src0 W12 when the model has cz_w12 */
    float *k0pk, *v0pk;    /* k0, v0 per head packed for gemm_f32_prepacked (NULL: not packed) */
};

/* ops (sam_ops.c) */
/* out (N, C) = LayerNorm(x) * w + b with eps; out may be x. */
void sam_layernorm(float *out, const float *x, const float *w, const float *b, int N, int C,
                   float eps);
/* x (N, C) = LayerNorm(x + bias) * w + b, in place, serially (rows a thread's own) */
void sam_bias_layernorm(float *x, const float *bias, const float *w, const float *b, int N, int C,
                        float eps);
/* out (N, C) = LayerNorm(x + (a + bo)) (a: an attention's output before its bias, overwritten
 * with the sum), and sum = out + pe when sum is not NULL: the decoder's residual + norm4. stats
 * (NULL or 2N floats): each row's mean and 1/sqrt(var + eps), as the norm used them. */
void sam_resid_layernorm(float *out, float *sum, const float *x, float *a, const float *bo,
                         const float *w, const float *b, const float *pe, int N, int C, float eps,
                         float *stats);
void sam_gelu(float *x, size_t n);        /* GELU x/2 (1 + erf(x/sqrt 2)) (nn_gelu_rows) */
void sam_relu(float *x, size_t n);
/* ConvTranspose2d kernel 2 stride 2 (weights (Cin, Cout, 2, 2), bias): x (H*W, Cin) channels-last
 * -> out (2H*2W, Cout). tmp: H*W*Cout*4 floats. */
void sam_convt2(float *out, const float *x, const float *w, const float *b, int H, int W, int cin,
                int cout, float *tmp);
/* The same with the weights reordered by sam_convt2_reorder to (Cin, 4 * Cout), column
 * (2 dy + dx) * Cout + co, and the rest fused: output pixel (2y+dy, 2x+dx) at
 * out + (o0 + (2y+dy) * ow + 2x+dx) * Cout (ow: the output's row stride in pixels, o0 its origin:
 * a zero-padded map's interior), + bias, then LayerNorm2d (ln, eps) when ln is not NULL, GELU when
 * gelu. tmp: H*W*4*Cout floats. w4pk: w4 packed by sam_convt2_pack, or NULL; taken (serially, no
 * packing per call) inside a parallel region; the same bits either way. */
void sam_convt2_fused(float *out, size_t o0, int ow, const float *x, const float *w4,
                      const float *w4pk, const float *b, int H, int W, int cin, int cout,
                      const sam_lin *ln, float eps, int gelu, float *tmp);
/* sam_convt2_fused after its product: tmp (H*W, 4 * Cout) the product, b NULL: no bias */
void sam_convt2_epilogue(float *out, size_t o0, int ow, const float *tmp, const float *b, int H,
                         int W, int cout, const sam_lin *ln, float eps, int gelu);
float *sam_convt2_reorder(const float *w, int cin, int cout);
/* w4 (Cin, 4 * Cout) packed for gemm_f32_prepacked, the w4pk of sam_convt2_fused (NULL without
 * the AVX2 kernel or memory: sam_convt2_fused then takes nn_sgemm on w4) */
float *sam_convt2_pack(const float *w4, int cin, int cout);
/* Conv2d 3x3 padding 1 as one product over the zero-padded input (the nine taps as segments of
 * the inner sum): x (H*W, Cin) -> out (H*W, Cout). pad: ((H+2)*(W+2)+2)*Cin floats, acc:
 * H*(W+2)*Cout floats. */
void sam_conv3x3(float *out, const float *x, const sam_conv3 *c, int H, int W, float *pad,
                 float *acc);
/* Its product alone, without bias: pad the zero-padded input (((H+2)*(W+2)+2) pixels of Cin),
 * acc (H*(W+2), Cout): pixel (y, x) at row y*(W+2) + x; rows x = W, W+1 are junk. */
void sam_conv3x3_padded(float *acc, const float *pad, const sam_conv3 *c, int H, int W);
/* sam_conv3x3_padded's product by Winograd F(4x4, 3x3) (H, W multiples of SAM_WINO_ROWS): upk
 * the 36 transformed, packed weight matrices of sam_conv3_wino_pack (torch weights
 * (Cout, Cin, 3, 3); NULL without AVX2/FMA), work sam_conv3_wino_work(Cin, Cout) floats; serial.
 * -1 (nothing done) when it cannot run: the caller takes sam_conv3x3_padded. 36 products per
 * 4 x 4 outputs instead of 144; within ~5e-6 of the largest output (F(2x2, 3x3): ~3e-7, at 64
 * products per 4 x 4), not the direct sum's bits. */
#define SAM_WINO_ROWS 4
float *sam_conv3_wino_pack(const float *w, int cout, int cin);
size_t sam_conv3_wino_work(int cin, int cout);
int sam_conv3x3_wino(float *acc, const float *pad, const float *upk, int cin, int cout, int H,
                     int W, float *work);
/* Reorders torch conv weights (Cout, Cin, 3, 3) to (Cout, 9 * Cin): k = tap * Cin + ci. */
float *sam_conv3_reorder(const float *w, int cout, int cin);
/* out (H, W) = for each pixel (y, x): sum over k < noff, c < C of
 * base[(y * rs + x) * C + off[k] + c] * w[k * C + c] (rs: the row stride in pixels): a 3x3
 * convolution to one channel (nine offsets) or a per-pixel dot product (one). AVX2 where
 * gemm_f32_available(), else scalar code doing the same operations (the same bits). */
void sam_dot_pixels(float *out, const float *base, int rs, const size_t *off, int noff,
                    const float *w, int C, int H, int W);
/* F.interpolate(mode="bilinear", align_corners=False) of a single-channel map src (sh, sw), row
 * stride ld (a crop of a larger map), to dst (dh, dw); torch 1.13's CPU kernel arithmetic.
 * -1 when out of memory. */
int sam_bilinear(float *dst, int dw, int dh, const float *src, int ld, int sw, int sh);
/* The same, only the output's top-left cw x ch (rows dw apart): the part a crop reads */
int sam_bilinear_part(float *dst, int dw, int dh, int cw, int ch, const float *src, int ld, int sw,
                      int sh);

#endif
