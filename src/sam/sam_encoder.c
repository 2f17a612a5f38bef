/* sam_encoder.c — SamPredictor.set_image: ResizeLongestSide(1024).apply_image (Pillow bilinear
 * through torchvision), Sam.preprocess ((x - mean) / std, zero padding right and down to 1024),
 * and ImageEncoderViT: 16x16 patch embedding, absolute positions, blocks (LayerNorm eps 1e-6,
 * windowed attention on zero-padded whole windows or global attention, decomposed relative
 * positions added to the scaled scores, exact-GELU MLP), the neck (1x1 conv, LayerNorm2d, 3x3
 * conv, LayerNorm2d). HQ-SAM keeps the first global block's output (interm_embeddings[0]).
 * Channels-last throughout; the products are nn.c's. */
#include "sam_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "nn.h"
#include "util.h"

static const float PIX_MEAN[3] = {123.675f, 116.28f, 103.53f};
static const float PIX_STD[3] = {58.395f, 57.12f, 57.375f};

void sam_preprocess_shape(int h, int w, int target, int *nh, int *nw) {
    double scale = target * 1.0 / (h > w ? h : w);
    double fh = h * scale, fw = w * scale;
    *nw = (int)(fw + 0.5);
    *nh = (int)(fh + 0.5);
}

carseg_status sam_resize_image(const uint8_t *rgb, int w, int h, uint8_t **out, int *nw, int *nh) {
    *out = NULL;
    if (!rgb || w <= 0 || h <= 0) return set_err(CARSEG_EINVAL, "sam: bad image size %dx%d", w, h);
    sam_preprocess_shape(h, w, SAM_IMG, nh, nw);
    if (*nw < 1 || *nh < 1)
        return set_err(CARSEG_EINVAL, "sam: image %dx%d too narrow to resize to a long side of %d",
                       w, h, SAM_IMG);
    image_u8 src = {w, h, 3, (uint8_t *)rgb}, dst;
    TRY(image_resize_bilinear(&src, *nw, *nh, &dst));
    *out = dst.px;
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// attention with decomposed relative positions, over windows (or the whole grid)

/* out (nwin*L, C) from qkv (nwin*L, 3C), L = S*S tokens per window, row-major (y, x) in it.
 * Work items (window, head, block of query rows) of a shape-only size, each on one thread. */
static carseg_status vit_attention(float *out, const float *qkv, int nwin, int S, int C, int NH,
                                   const float *rph, const float *rpw) {
    const int L = S * S, hd = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hd);
    int RB = 256;
    while (RB > 16 && (size_t)RB * L * sizeof(float) > (1u << 20)) RB /= 2;
    if (RB > L) RB = L;
    const int nrb = (L + RB - 1) / RB, items = nwin * NH * nrb;
    int fail = 0;
#pragma omp parallel if (items > 1)
    {
        float *P = malloc(sizeof(float) * ((size_t)RB * L + (size_t)RB * hd + 2 * (size_t)S));
        if (!P) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < items; it++) {
            if (!P) continue;
            int wh = it / nrb, r0 = (it % nrb) * RB, r1 = r0 + RB < L ? r0 + RB : L;
            int win = wh / NH, h = wh % NH, nr = r1 - r0;
            const float *base = qkv + (size_t)win * L * C3;
            const float *q = base + (size_t)r0 * C3 + h * hd, *k = base + C + h * hd, *v = k + C;
            float *qs = P + (size_t)RB * L, *rel = qs + (size_t)RB * hd;
            /* attn = (q * scale) @ k^T */
            for (int i = 0; i < nr; i++)
                for (int d = 0; d < hd; d++) qs[(size_t)i * hd + d] = q[(size_t)i * C3 + d] * scale;
            nn_sgemm(0, 1, nr, L, hd, 1.0f, qs, hd, k, C3, 0.0f, P, L);
            for (int i = 0; i < nr; i++) {
                /* + rel_h[qy, ky] + rel_w[qx, kx], with rel_h = q . Rh[qy - ky + S - 1] (q unscaled) */
                int qi = r0 + i, qy = qi / S, qx = qi % S;
                const float *qr = q + (size_t)i * C3;
                for (int kk = 0; kk < S; kk++) {
                    const float *a = rph + (size_t)(qy - kk + S - 1) * hd;
                    const float *b = rpw + (size_t)(qx - kk + S - 1) * hd;
                    float sa = 0, sb = 0;
                    for (int d = 0; d < hd; d++) sa += qr[d] * a[d], sb += qr[d] * b[d];
                    rel[kk] = sa, rel[S + kk] = sb;
                }
                float *row = P + (size_t)i * L;
                for (int ky = 0; ky < S; ky++)
                    for (int kx = 0; kx < S; kx++) row[ky * S + kx] += rel[ky] + rel[S + kx];
            }
            nn_softmax_rows(P, nr, L);
            nn_sgemm(0, 0, nr, hd, L, 1.0f, P, L, v, C3, 0.0f,
                     out + ((size_t)win * L + r0) * C + h * hd, C);
        }
        free(P);
    }
    return fail ? set_err(CARSEG_ENOMEM, "sam: out of memory (attention)") : CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// the encoder

static void gelu_rows(float *x, size_t n) { sam_gelu(x, n); }

carseg_status sam_encode(const sam_model *m, const float *x, int orig_w, int orig_h, int in_w,
                         int in_h, sam_image **out) {
    *out = NULL;
    const sam_config *c = &m->c;
    const int E = c->embed, G = SAM_GRID, N = G * G, P = c->patch, D = c->dim, NH = c->heads;
    const int ws = c->window ? c->window : G, nwg = (G + ws - 1) / ws, Np = nwg * nwg * ws * ws;
    const int Nmax = Np > N ? Np : N;
    sam_image *im = calloc(1, sizeof *im);
    float *xt = cs_malloc(sizeof(float) * N * E);                   /* the residual stream */
    float *h = cs_malloc(sizeof(float) * (size_t)N * E);   /* normed tokens; the unpartitioned attention */
    float *qkv = cs_malloc(sizeof(float) * (size_t)Nmax * 3 * E);
    float *ao = cs_malloc(sizeof(float) * (size_t)Nmax * E);
    /* mlp: the MLP's hidden rows, the patches, a block's qkv before partition, its proj */
    size_t wide = (size_t)(c->mlp > 3 * E ? c->mlp : 3 * E);
    size_t big = (size_t)N * (wide > (size_t)3 * P * P ? wide : (size_t)3 * P * P);
    float *mlp = cs_malloc(sizeof(float) * big);
    carseg_status st = CARSEG_OK;
    if (!im || !xt || !h || !qkv || !ao || !mlp) {
        st = set_err(CARSEG_ENOMEM, "sam: out of memory (image encoder)");
        goto done;
    }
    im->m = m, im->ow = orig_w, im->oh = orig_h, im->iw = in_w, im->ih = in_h;
    /* patch embedding: im2col (N, 3*P*P) in the weights' (ci, ky, kx) order */
    float *col = mlp;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N; t++) {
        int py = t / G, px = t % G;
        float *o = col + (size_t)t * 3 * P * P;
        for (int ci = 0; ci < 3; ci++)
            for (int ky = 0; ky < P; ky++)
                memcpy(o + (ci * P + ky) * P,
                       x + ((size_t)ci * SAM_IMG + (size_t)py * P + ky) * SAM_IMG + (size_t)px * P,
                       sizeof(float) * P);
    }
    nn_linear(xt, col, m->patch_w, m->patch_b, N, 3 * P * P, E);
    if (m->pos)
        for (size_t i = 0; i < (size_t)N * E; i++) xt[i] += m->pos[i];

    for (int bi = 0; bi < c->depth; bi++) {
        const sam_vblock *b = &m->blk[bi];
        const int S = b->window ? b->window : G;
        const int nw = b->window ? (G + S - 1) / S : 1, ntok = nw * nw * S * S;
        sam_layernorm(h, xt, b->norm1.w, b->norm1.b, N, E, 1e-6f);
        if (b->window) {
            /* window_partition pads the normed tokens with zeros, whose qkv is the bias: the
             * product for the real tokens only (in mlp, free here), then partitioned, the padded
             * tokens' rows the bias (also the product's bits, 0 + bias) */
            float *q4 = mlp;
            nn_linear(q4, h, b->qkv.w, b->qkv.b, N, E, 3 * E);
#pragma omp parallel for schedule(static)
            for (int t = 0; t < ntok; t++) {
                int win = t / (S * S), li = t % (S * S);
                int y = (win / nw) * S + li / S, xx = (win % nw) * S + li % S;
                memcpy(qkv + (size_t)t * 3 * E,
                       y < G && xx < G ? q4 + ((size_t)y * G + xx) * 3 * E : b->qkv.b,
                       sizeof(float) * 3 * E);
            }
        } else {
            nn_linear(qkv, h, b->qkv.w, b->qkv.b, N, E, 3 * E);
        }
        st = vit_attention(ao, qkv, nw * nw, S, E, NH, b->rel_h, b->rel_w);
        if (st != CARSEG_OK) goto done;
        const float *att = ao;
        if (b->window) {   /* window_unpartition first: proj for the real tokens only */
#pragma omp parallel for schedule(static)
            for (int y = 0; y < G; y++)
                for (int xx = 0; xx < G; xx++)
                    memcpy(h + ((size_t)y * G + xx) * E,
                           ao + ((size_t)((y / S) * nw + xx / S) * S * S + (y % S) * S + xx % S) * E,
                           sizeof(float) * E);
            att = h;
        }
        nn_linear(mlp, att, b->proj.w, b->proj.b, N, E, E);
        /* x = shortcut + attn */
#pragma omp parallel for schedule(static)
        for (int t = 0; t < N; t++) {
            float *o = xt + (size_t)t * E;
            const float *a = mlp + (size_t)t * E;
            for (int e = 0; e < E; e++) o[e] += a[e];
        }
        /* x = x + mlp(norm2(x)) */
        sam_layernorm(h, xt, b->norm2.w, b->norm2.b, N, E, 1e-6f);
        nn_linear(mlp, h, b->lin1.w, b->lin1.b, N, E, c->mlp);
        gelu_rows(mlp, (size_t)N * c->mlp);
        nn_linear_ex(xt, mlp, b->lin2.w, b->lin2.b, N, c->mlp, E, NN_ACCUMULATE);
        if (c->hq && !b->window && !im->interm) {
            im->interm = cs_malloc(sizeof(float) * N * E);
            if (!im->interm) {
                st = set_err(CARSEG_ENOMEM, "sam: out of memory (image encoder)");
                goto done;
            }
            memcpy(im->interm, xt, sizeof(float) * N * E);
        }
    }
    /* neck: 1x1 conv (no bias), LayerNorm2d, 3x3 conv (no bias), LayerNorm2d */
    im->emb = cs_malloc(sizeof(float) * N * D);
    float *pad = cs_malloc(sizeof(float) * ((size_t)(G + 2) * (G + 2) + 2) * D);
    float *acc = cs_malloc(sizeof(float) * (size_t)G * (G + 2) * D);
    if (!im->emb || !pad || !acc) {
        cs_free(pad), cs_free(acc);
        st = set_err(CARSEG_ENOMEM, "sam: out of memory (image encoder)");
        goto done;
    }
    nn_linear(h, xt, m->neck0, NULL, N, E, D);
    sam_layernorm(h, h, m->neck1.w, m->neck1.b, N, D, 1e-6f);
    sam_conv3x3(im->emb, h, &m->neck2, G, G, pad, acc);
    sam_layernorm(im->emb, im->emb, m->neck3.w, m->neck3.b, N, D, 1e-6f);
    cs_free(pad), cs_free(acc);
done:
    cs_free(xt), cs_free(h), cs_free(qkv), cs_free(ao), cs_free(mlp);
    if (st != CARSEG_OK) {
        sam_image_free(im);
        return st;
    }
    *out = im;
    return CARSEG_OK;
}

carseg_status sam_set_image(const sam_model *m, const uint8_t *rgb, int w, int h, sam_image **out) {
    *out = NULL;
    uint8_t *rs;
    int nw, nh;
    TRY(sam_resize_image(rgb, w, h, &rs, &nw, &nh));
    float *x = cs_calloc((size_t)3 * SAM_IMG * SAM_IMG, sizeof(float));
    if (!x) {
        free(rs);
        return set_err(CARSEG_ENOMEM, "sam: out of memory (input image)");
    }
    /* (x - mean) / std in float32, then F.pad with zeros right and down */
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < nh; y++)
            for (int xx = 0; xx < nw; xx++)
                x[((size_t)ch * SAM_IMG + y) * SAM_IMG + xx] =
                    ((float)rs[((size_t)y * nw + xx) * 3 + ch] - PIX_MEAN[ch]) / PIX_STD[ch];
    free(rs);
    carseg_status st = sam_encode(m, x, w, h, nw, nh, out);
    cs_free(x);
    return st;
}

void sam_image_free(sam_image *im) {
    if (!im) return;
    cs_free(im->emb);
    cs_free(im->interm);
    cs_free(im->hq_feat);
    cs_free(im->src0);
    cs_free(im->kpe0);
    cs_free(im->k0);
    cs_free(im->v0);
    cs_free(im->q0);
    cs_free(im->cz_p0);
    cs_free(im->k0pk);
    cs_free(im->v0pk);
    free(im);
}

int sam_image_width(const sam_image *im) { return im->ow; }
int sam_image_height(const sam_image *im) { return im->oh; }
const float *sam_image_embedding(const sam_image *im) { return im->emb; }
const float *sam_image_interm(const sam_image *im) { return im->interm; }
