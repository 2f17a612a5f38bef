/* sam_decoder.c — SamPredictor.predict_torch: the prompt encoder (random Fourier features of the
 * points and box corners, the padding point, the no-mask embedding), the two-way transformer, the
 * mask decoder (MaskDecoder / MaskDecoderHQ: hypernetwork MLPs, IoU head, multimask rule, HQ-SAM's
 * HQ token over embedding_maskfeature(upscaled) + hq_features), and postprocess_masks.
 *
 * Many prompts against one image: upstream's predict_masks copies the image embedding and its
 * positional encoding once per prompt (repeat_interleave) and recomputes everything that depends
 * on the image alone. Here the image-only parts are computed once per image and kept in the
 * sam_image (embedding + no-mask embedding, + dense PE, the first layer's image-side projections,
 * HQ-SAM's hq_features); each prompt then runs only its own part, in the same float operations
 * whatever else is decoded with it. Exact algebraic shortcuts: the attention between the tokens
 * and the image is contracted through its projections (t2i, i2t below: products of N x D x 8T
 * instead of projections of the whole image), the upscaling's first ConvT is read through the
 * last two norm4 (czt: N x 2*8T x D per prompt instead of N x D x D; decoder_prepare in
 * sam_model.c), the last attention runs for the tokens read after it (HQ-SAM: the IoU token
 * first, then only the mask token it chose and the HQ token), only the mask tokens whose masks
 * are returned get their hypernetwork product, and HQ-SAM's last embedding_maskfeature
 * convolution is folded into the HQ token's hypernetwork vector (hyper . (W z + b + f) = (hyper W) z + hyper . (b + f)), one
 * output channel instead of dim/8. Its first convolution runs as Winograd F(4x4, 3x3)
 * (sam_ops.c). The upscaling and the masks run in bands of rows that stay in cache. Each prompt
 * is decoded by one thread, in a scratch block kept per thread (cs_spare). */
#include "sam_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_in_parallel(void) { return 1; }
#endif

#include "carseg.h"
#include "gemm_f32.h"
#include "nn.h"
#include "util.h"

#define LN_DEC 1e-5f   /* nn.LayerNorm in the two-way transformer */
#define LN_2D 1e-6f    /* LayerNorm2d */

static float *alloc_f(size_t n) { return cs_malloc(sizeof(float) * (n ? n : 1)); }

/* ---------------------------------------------------------------------------------------------
 * the per-image cache */

static void add_rows(float *o, const float *a, const float *rowvec, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) o[(size_t)i * C + c] = a[(size_t)i * C + c] + rowvec[c];
}
static void add_mat(float *o, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) o[i] = a[i] + b[i];
}

/* ConvT(2x2) -> LayerNorm2d -> GELU -> ConvT(2x2): (H*W, cin) -> (4H*4W, cout2) */
static carseg_status up2x2(float *out, const float *x, int H, int W, int cin, sam_lin a, int cmid,
                           sam_lin n, sam_lin b, int cout) {
    float *t = alloc_f((size_t)H * W * cmid * 4), *mid = alloc_f((size_t)H * W * 4 * cmid);
    float *t2 = alloc_f((size_t)H * W * 4 * cout * 4);
    if (!t || !mid || !t2) {
        cs_free(t), cs_free(mid), cs_free(t2);
        return set_err(CARSEG_ENOMEM, "sam: out of memory (mask decoder)");
    }
    sam_convt2(mid, x, a.w, a.b, H, W, cin, cmid, t);
    sam_layernorm(mid, mid, n.w, n.b, 4 * H * W, cmid, LN_2D);
    sam_gelu(mid, (size_t)4 * H * W * cmid);
    sam_convt2(out, mid, b.w, b.b, 2 * H, 2 * W, cmid, cout, t2);
    cs_free(t), cs_free(mid), cs_free(t2);
    return CARSEG_OK;
}

static carseg_status ensure_cache(const sam_model *m, sam_image *im) {
    if (im->src0) return CARSEG_OK;
    const int N = SAM_GRID * SAM_GRID, D = m->c.dim, I = m->dl[0].t2i.internal;
    float *src0 = alloc_f((size_t)N * D), *kpe0 = alloc_f((size_t)N * D);
    float *k0 = alloc_f((size_t)N * I), *v0 = alloc_f((size_t)N * I), *q0 = alloc_f((size_t)N * I);
    float *hq = NULL, *hq2 = NULL, *p0 = m->cz_w12 ? alloc_f((size_t)N * D) : NULL;
    if (m->c.hq) {
        hq = alloc_f((size_t)SAM_LOWRES * SAM_LOWRES * (D / 8));
        hq2 = alloc_f((size_t)SAM_LOWRES * SAM_LOWRES * (D / 8));
    }
    carseg_status st = CARSEG_OK;
    if (!src0 || !kpe0 || !k0 || !v0 || !q0 || (m->c.hq && (!hq || !hq2)) || (m->cz_w12 && !p0)) {
        st = set_err(CARSEG_ENOMEM, "sam: out of memory (mask decoder)");
        goto fail;
    }
    add_rows(src0, im->emb, m->no_mask, N, D);
    add_mat(kpe0, src0, m->dense_pe, (size_t)N * D);
    const sam_dlayer *l = &m->dl[0];
    nn_linear(k0, kpe0, l->t2i.k.w, l->t2i.k.b, N, D, I);
    nn_linear(v0, src0, l->t2i.v.w, l->t2i.v.b, N, D, I);
    nn_linear(q0, kpe0, l->i2t.q.w, l->i2t.q.b, N, D, l->i2t.internal);
    if (p0) nn_sgemm(0, 0, N, D, D, 1.0f, src0, D, m->cz_w12, D, 0.0f, p0, D);
    /* k0 (as B^T) and v0 (as B) per head, packed once for every prompt's first attention */
    const int NH = m->c.dec_heads, hd = I / NH;
    const size_t pks = gemm_f32_packed_size(N, hd), pvs = gemm_f32_packed_size(hd, N);
    float *k0pk = gemm_f32_available() ? alloc_f(NH * pks) : NULL, *v0pk = k0pk ? alloc_f(NH * pvs) : NULL;
    for (int h = 0; v0pk && h < NH; h++)
        if (gemm_f32_pack_b(k0pk + h * pks, 1, k0 + h * hd, I, N, hd) ||
            gemm_f32_pack_b(v0pk + h * pvs, 0, v0 + h * hd, I, hd, N)) {
            cs_free(k0pk), cs_free(v0pk);
            k0pk = v0pk = NULL;
        }
    if (!v0pk) cs_free(k0pk), k0pk = NULL;
    im->k0pk = k0pk, im->v0pk = v0pk;
    if (m->c.hq) {
        /* hq_features = embedding_encoder(image_embeddings) + compress_vit_feat(interm[0]) */
        if ((st = up2x2(hq, im->emb, SAM_GRID, SAM_GRID, D, m->ee0, D / 4, m->ee1, m->ee3, D / 8)))
            goto fail;
        if ((st = up2x2(hq2, im->interm, SAM_GRID, SAM_GRID, m->c.embed, m->cvf0, D, m->cvf1, m->cvf3,
                        D / 8)))
            goto fail;
        add_mat(hq, hq, hq2, (size_t)SAM_LOWRES * SAM_LOWRES * (D / 8));
        cs_free(hq2);
        im->hq_feat = hq;
    }
    im->src0 = src0, im->kpe0 = kpe0, im->k0 = k0, im->v0 = v0, im->q0 = q0, im->cz_p0 = p0;
    return CARSEG_OK;
fail:
    cs_free(src0), cs_free(kpe0), cs_free(k0), cs_free(v0), cs_free(q0), cs_free(hq), cs_free(hq2);
    cs_free(p0);
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * the prompt encoder */

static void pe_encode(const sam_model *m, float x, float y, float *o) {
    /* forward_with_coords: / input_image_size, then _pe_encoding */
    const int F = m->c.dim / 2;
    const float two_pi = (float)(2 * 3.14159265358979323846);
    float cx = 2 * (x / (float)SAM_IMG) - 1, cy = 2 * (y / (float)SAM_IMG) - 1;
    for (int f = 0; f < F; f++) {
        float v = cx * m->pe_gauss[f] + cy * m->pe_gauss[F + f];
        v = two_pi * v;
        o[f] = sinf(v);
        o[F + f] = cosf(v);
    }
}

/* ResizeLongestSide.apply_coords: double arithmetic, then float (torch.as_tensor(dtype=float)) */
static void map_xy(const sam_image *im, float x, float y, float *ox, float *oy) {
    *ox = (float)((double)x * ((double)im->iw / im->ow));
    *oy = (float)((double)y * ((double)im->ih / im->oh));
}

static int n_sparse(const sam_prompt *p) { return p->n_points + (p->box ? 2 : 1); }

static void embed_prompt(const sam_model *m, const sam_image *im, const sam_prompt *p, float *o) {
    const int D = m->c.dim;
    int k = 0;
    for (int i = 0; i < p->n_points; i++, k++) {
        float x, y;
        map_xy(im, p->points[2 * i], p->points[2 * i + 1], &x, &y);
        float *e = o + (size_t)k * D;
        int lab = p->labels[i];
        if (lab == -1) {
            for (int c = 0; c < D; c++) e[c] = m->not_a_point[c];
            continue;
        }
        pe_encode(m, x + 0.5f, y + 0.5f, e);
        for (int c = 0; c < D; c++) e[c] += m->point_emb[lab][c];
    }
    if (!p->box) {   /* the padding point (label -1) */
        float *e = o + (size_t)k * D;
        for (int c = 0; c < D; c++) e[c] = m->not_a_point[c];
        return;
    }
    for (int j = 0; j < 2; j++, k++) {
        float x, y;
        map_xy(im, p->box[2 * j], p->box[2 * j + 1], &x, &y);
        float *e = o + (size_t)k * D;
        pe_encode(m, x + 0.5f, y + 0.5f, e);
        for (int c = 0; c < D; c++) e[c] += m->point_emb[2 + j][c];
    }
}

/* ---------------------------------------------------------------------------------------------
 * the per-prompt scratch: one block per thread (cs_spare), carved into the arrays below */

typedef struct {
    float *keys, *kp, *A, *S;                       /* image side: (N, D) x 3, (N, NH*T) */
    float *tq, *tp, *tQ, *tK, *tV, *tO, *tA, *th;   /* token side (T rows) */
    float *Qt, *U, *cb;                             /* contracted attention: (NH*T, D) x 2, ... */
    float *up_t, *up_mid, *ups;                     /* upscaling; ups on the zero-padded grid */
    float *zb, *hqm, *w1, *dot, *wino;              /* HQ branch */
    float *hyp;                                     /* the hypernetwork vectors used */
    float *czS, *czV, *czVpk, *czst;                /* czt: [r1 S1 | S2], [V1'; V2'], stats */
    float *tok, *lr, *full;
    void *block;
    size_t cap;
} scratch;

#define PADN(h, w) ((size_t)((h) + 2) * ((w) + 2) + 2)   /* a zero-padded map's pixels */
#define SAM_BAND 4   /* rows of the upscaling's 128 x 128 map per band (even) */

/* out (Nq, I) = softmax(Q K^T / sqrt(hd)) V per head; P: Nq*Nk (the first layer's token-to-image
 * attention on the cached k0, v0) */
static void mha(float *out, const float *Q, const float *K, const float *V, int Nq, int Nk, int I,
                int NH, float *P, const float *Kpk, const float *Vpk) {
    const int hd = I / NH;
    const float sq = sqrtf((float)hd);
    const size_t pks = gemm_f32_packed_size(Nk, hd), pvs = gemm_f32_packed_size(hd, Nk);
    for (int h = 0; h < NH; h++) {
        if (!Kpk || gemm_f32_prepacked(Nq, Nk, hd, Q + h * hd, I, Kpk + h * pks, P, Nk))
            nn_sgemm(0, 1, Nq, Nk, hd, 1.0f, Q + h * hd, I, K + h * hd, I, 0.0f, P, Nk);
        size_t n = (size_t)Nq * Nk;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) P[i] = P[i] / sq;
        nn_softmax(P, Nq, Nk);
        if (!Vpk || gemm_f32_prepacked(Nq, hd, Nk, P, Nk, Vpk + h * pvs, out + h * hd, I))
            nn_sgemm(0, 0, Nq, hd, Nk, 1.0f, P, Nk, V + h * hd, I, 0.0f, out + h * hd, I);
    }
}

/* queries (T, D) += Attention(q = tq_in, k = kin, v = vin) over T tokens (self attention) */
static void token_self(const sam_dattn *a, scratch *s, const float *qin, const float *vin, int T,
                       int D, int NH, float *out) {
    nn_linear(s->tQ, qin, a->q.w, a->q.b, T, D, a->internal);
    nn_linear(s->tK, qin, a->k.w, a->k.b, T, D, a->internal);
    nn_linear(s->tV, vin, a->v.w, a->v.b, T, D, a->internal);
    mha(s->tO, s->tQ, s->tK, s->tV, T, T, a->internal, NH, s->S, NULL, NULL);
    nn_linear(out, s->tO, a->o.w, a->o.b, T, a->internal, D);
}

static void add_inplace(float *o, const float *a, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) o[i] += a[i];
}

/* per head h: o (T, cols) at o + h * ldo_h = x_h (T, hd: columns h*hd of x, row stride ldx) times
 * a weight block: tb 0 w_h (hd, cols) = rows h*hd of w (row stride ldw); tb 1 w_h^T with w_h the
 * hd columns h*hd of w (cols, ldw) */
static void per_head(float *o, size_t ldo_h, int ldo, const float *x, int ldx, const float *w, int ldw,
                     int tb, int T, int cols, int NH, int hd) {
    for (int h = 0; h < NH; h++)
        nn_sgemm(0, tb, T, cols, hd, 1.0f, x + h * hd, ldx, tb ? w + h * hd : w + (size_t)h * hd * ldw,
                 ldw, 0.0f, o + h * ldo_h, ldo);
}

/* Tokens to image, contracted through the projections (exact algebra, fewer products): with keys
 * k = (XP) Wk^T + bk and values v = X Wv^T + bv, q_h . k_h = (q_h Wk_h) . XP + q_h . bk_h, whose
 * last term is the same for every image token and drops out of the softmax; and sum_j p_j v_j =
 * (sum_j p_j X_j) Wv^T + bv as the p_j sum to one. So S^T (N, NH*T) = XP Qt^T with Qt_h = q_h Wk_h
 * (T, D), softmax down the image tokens, U (NH*T, D) = P X, out_h = U_h Wv_h^T + bv_h: two
 * products of N x D x NH*T instead of two projections of the whole image (N x D x I each) and the
 * per-head products. out (T, D) = out_proj(attention). */
static void t2i(const sam_dattn *a, scratch *s, const float *X, const float *XP, const float *qin,
                int T, int D, int NH, float *out) {
    const int N = SAM_GRID * SAM_GRID, I = a->internal, hd = I / NH, R = NH * T;
    nn_linear(s->tQ, qin, a->q.w, a->q.b, T, D, I);
    per_head(s->Qt, (size_t)T * D, D, s->tQ, I, a->k.w, D, 0, T, D, NH, hd);
    nn_sgemm(0, 1, N, R, D, 1.0f, XP, D, s->Qt, D, 0.0f, s->S, R);
    nn_softmax_cols(s->S, N, R, R, 1.0f / sqrtf((float)hd));
    /* U^T (D, R) = X^T S: the same sums as S^T X (each over the image tokens in order), with the
     * smaller S packed instead of X */
    nn_sgemm(1, 0, D, R, N, 1.0f, X, D, s->S, R, 0.0f, s->U, R);
    for (int h = 0; h < NH; h++)   /* U_h (T, D) times Wv_h^T (D, hd) */
        nn_sgemm(1, 1, T, hd, D, 1.0f, s->U + (size_t)h * T, R, a->v.w + (size_t)h * hd * D, D,
                 0.0f, s->tO + h * hd, I);
    for (int t = 0; t < T; t++)
        for (int c = 0; c < I; c++) s->tO[(size_t)t * I + c] += a->v.b[c];
    nn_linear(out, s->tO, a->o.w, a->o.b, T, I, D);
}

/* Image to tokens, contracted: q = (XP) Wq^T + bq (or the cached Q0 (N, I) of the first layer),
 * k = kin Wk^T + bk, v = vin Wv^T + bv over the T tokens. Scores q_h . k_h = XP . (k_h Wq_h) +
 * bq_h . k_h (per token: a column constant), and out_proj(sum_j p_j v_j) = sum_h P_h (v_h Wo_h^T)
 * + bo. So S (N, NH*T) = XP Kt^T + c (Q0: per head Q0_h k_h^T), softmax over
 * each head's T tokens, A (N, D) = S Vt with Vt_h = v_h Wo_h^T (T, D); A gets out_proj's bias in
 * the caller. */
static void i2t(const sam_dattn *a, scratch *s, const float *XP, const float *Q0, const float *kin,
                const float *vin, int T, int D, int NH, float *A) {
    const int N = SAM_GRID * SAM_GRID, I = a->internal, hd = I / NH, R = NH * T;
    nn_linear(s->tK, kin, a->k.w, a->k.b, T, D, I);
    nn_linear(s->tV, vin, a->v.w, a->v.b, T, D, I);
    if (Q0) {   /* per head: S_h (N, T) = Q0_h k_h^T */
        for (int h = 0; h < NH; h++)
            nn_sgemm(0, 1, N, T, hd, 1.0f, Q0 + h * hd, I, s->tK + h * hd, I, 0.0f, s->S + h * T, R);
    } else {
        per_head(s->Qt, (size_t)T * D, D, s->tK, I, a->q.w, D, 0, T, D, NH, hd);
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                float c = 0;
                for (int j = 0; j < hd; j++) c += a->q.b[h * hd + j] * s->tK[(size_t)t * I + h * hd + j];
                s->cb[h * T + t] = c;
            }
        nn_sgemm(0, 1, N, R, D, 1.0f, XP, D, s->Qt, D, 0.0f, s->S, R);
#pragma omp parallel for schedule(static) if ((size_t)N * R > 65536)
        for (int i = 0; i < N; i++)
            for (int r = 0; r < R; r++) s->S[(size_t)i * R + r] += s->cb[r];
    }
    nn_softmax_short_rows(s->S, N * NH, T, 1.0f / sqrtf((float)hd));
    per_head(s->Qt, (size_t)T * D, D, s->tV, I, a->o.w, I, 1, T, D, NH, hd);
    nn_sgemm(0, 0, N, D, R, 1.0f, s->S, R, s->Qt, D, 0.0f, A, D);
}

/* the two-way transformer's layers; its last attention is final_attn */
static void transformer(const sam_model *m, const sam_image *im, scratch *s, const float *tok, int T) {
    const int N = SAM_GRID * SAM_GRID, D = m->c.dim, NH = m->c.dec_heads;
    const float *pe = tok;   /* query_pe = the initial tokens */
    float *q = s->tq;
    memcpy(q, tok, sizeof(float) * T * D);
    for (int li = 0; li < m->c.dec_depth; li++) {
        const sam_dlayer *l = &m->dl[li];
        /* (1) self attention (the first layer without PE and without its residual) */
        if (li == 0) {
            token_self(&l->self, s, q, q, T, D, NH, s->tA);
            memcpy(q, s->tA, sizeof(float) * T * D);
        } else {
            add_mat(s->tp, q, pe, (size_t)T * D);
            token_self(&l->self, s, s->tp, q, T, D, NH, s->tA);
            add_inplace(q, s->tA, (size_t)T * D);
        }
        sam_layernorm(q, q, l->norm1.w, l->norm1.b, T, D, LN_DEC);
        /* (2) tokens to image (keys: the image embedding in the first layer, cached projections) */
        const float *X = li == 0 ? im->src0 : s->keys, *XP = li == 0 ? im->kpe0 : s->kp;
        add_mat(s->tp, q, pe, (size_t)T * D);
        if (li == 0) {
            const int I = l->t2i.internal;
            nn_linear(s->tQ, s->tp, l->t2i.q.w, l->t2i.q.b, T, D, I);
            mha(s->tO, s->tQ, im->k0, im->v0, T, N, I, NH, s->S, im->k0pk, im->v0pk);
            nn_linear(s->tA, s->tO, l->t2i.o.w, l->t2i.o.b, T, I, D);
        } else {
            t2i(&l->t2i, s, X, XP, s->tp, T, D, NH, s->tA);
        }
        add_inplace(q, s->tA, (size_t)T * D);
        sam_layernorm(q, q, l->norm2.w, l->norm2.b, T, D, LN_DEC);
        /* (3) MLP (ReLU) */
        nn_linear(s->th, q, l->mlp1.w, l->mlp1.b, T, D, m->c.dec_mlp);
        sam_relu(s->th, (size_t)T * m->c.dec_mlp);
        nn_linear_ex(q, s->th, l->mlp2.w, l->mlp2.b, T, m->c.dec_mlp, D, NN_ACCUMULATE);
        sam_layernorm(q, q, l->norm3.w, l->norm3.b, T, D, LN_DEC);
        /* (4) image to tokens: q = keys + key_pe, k = queries + query_pe, v = queries */
        add_mat(s->tp, q, pe, (size_t)T * D);
        i2t(&l->i2t, s, XP, li == 0 ? im->q0 : NULL, s->tp, q, T, D, NH, s->A);
        const int cz = m->cz_w12 != NULL, R = NH * T;
        sam_resid_layernorm(s->keys, s->kp, X, s->A, l->i2t.o.b, l->norm4.w, l->norm4.b, m->dense_pe, N, D,
                            LN_DEC, cz ? s->czst + (size_t)li * 2 * N : NULL);
        if (cz) {   /* czt: V' = Vt W12 (layer 1) or Vt W2 (layer 2); [r1 S1 | S2] */
            float *vp = s->czV + (size_t)li * R * D;
            const float *w = li == 0 ? m->cz_w12 : m->cz_w2, *wpk = li == 0 ? m->cz_w12pk : m->cz_w2pk;
            if (!wpk || gemm_f32_prepacked(R, D, D, s->Qt, D, wpk, vp, D))
                nn_sgemm(0, 0, R, D, D, 1.0f, s->Qt, D, w, D, 0.0f, vp, D);
            const float *st = s->czst;
#pragma omp parallel for schedule(static) if ((size_t)N * R > 65536)
            for (int i = 0; i < N; i++) {
                float *o = s->czS + (size_t)i * 2 * R + (size_t)li * R;
                const float *si = s->S + (size_t)i * R, r1 = li == 0 ? st[2 * (size_t)i + 1] : 1.0f;
#pragma omp simd
                for (int r = 0; r < R; r++) o[r] = r1 * si[r];
            }
        }
    }
}

/* the last attention, tokens to image, for the nkeep tokens keep[] alone (each query token's
 * attention is its own; the tokens read after the transformer) */
static void final_attn(const sam_model *m, scratch *s, const float *tok, const int *keep, int nkeep) {
    const int D = m->c.dim, NH = m->c.dec_heads;
    const float *pe = tok;
    float *q = s->tq;
    for (int r = 0; r < nkeep; r++)
        add_mat(s->tp + (size_t)r * D, q + (size_t)keep[r] * D, pe + (size_t)keep[r] * D, (size_t)D);
    t2i(&m->fin, s, s->keys, s->kp, s->tp, nkeep, D, NH, s->tA);
    for (int r = 0; r < nkeep; r++) {
        float *qr = q + (size_t)keep[r] * D;
        add_inplace(qr, s->tA + (size_t)r * D, (size_t)D);
        sam_layernorm(qr, qr, m->norm_fin.w, m->norm_fin.b, 1, D, LN_DEC);
    }
}

/* MLP with ReLU between layers: x (in) -> out; tmp: 2 * max width */
static void mlp_vec(const sam_lin *L, int nl, const int *widths, const float *x, float *out, float *tmp) {
    const float *in = x;
    for (int j = 0; j < nl; j++) {
        float *o = j == nl - 1 ? out : tmp + (j % 2) * 4096;
        nn_linear(o, in, L[j].w, L[j].b, 1, widths[j], widths[j + 1]);
        if (j < nl - 1) sam_relu(o, (size_t)widths[j + 1]);
        in = o;
    }
}

/* czt: the first ConvT of the upscaling for the rows [y0, y1) of the 64 x 64 map, through
 * decoder_prepare's algebra (sam_model.c): tmp = [r1 S1 | S2] [V1'; V2'] (K = k; [V1'; V2']
 * packed in vpk, or NULL), then per row
 * r2 (r1 (P0 + u1 - m1 c12) + tmp + u2 - m2 c2) + e, and LayerNorm2d + GELU into up_mid */
static void czt_band(const sam_model *m, const sam_image *im, scratch *s, int k, const float *vpk,
                     int y0, int y1) {
    const int G = SAM_GRID, D = m->c.dim, n4 = D, rows = (y1 - y0) * G;
    const size_t i0 = (size_t)y0 * G;
    float *t = s->up_t;
    if (!vpk || gemm_f32_prepacked(rows, n4, k, s->czS + i0 * k, k, vpk, t, n4))
        nn_sgemm(0, 0, rows, n4, k, 1.0f, s->czS + i0 * k, k, s->czV, n4, 0.0f, t, n4);
    const float *c12 = m->cz_vec, *c2 = c12 + n4, *u1 = c2 + n4, *u2 = u1 + n4, *e = u2 + n4;
    const float *st1 = s->czst, *st2 = s->czst + 2 * (size_t)G * G;
#pragma omp parallel for schedule(static) if ((size_t)rows * n4 > 65536)
    for (int i = 0; i < rows; i++) {
        const size_t g = i0 + i;
        const float m1 = st1[2 * g], r1 = st1[2 * g + 1], m2 = st2[2 * g], r2 = st2[2 * g + 1];
        const float *p0 = im->cz_p0 + g * n4;
        float *ti = t + (size_t)i * n4;
#pragma omp simd
        for (int n = 0; n < n4; n++)
            ti[n] = r2 * (r1 * (p0[n] + u1[n] - m1 * c12[n]) + ti[n] + u2[n] - m2 * c2[n]) + e[n];
    }
    sam_convt2_epilogue(s->up_mid, 0, 2 * G, t, NULL, y1 - y0, G, D / 4, &m->up1, LN_2D, 1);
}

static carseg_status decode_one(const sam_model *m, sam_image *im, scratch *s, const sam_prompt *p,
                                int multimask, int hq_only, float *iou_out, float *lowres_out) {
    const sam_config *c = &m->c;
    const int D = c->dim, nmt = c->n_mask_tokens, hq = c->hq, ns = n_sparse(p);
    const int T = 1 + nmt + hq + ns;
    float *tok = s->tok;
    memcpy(tok, m->iou_token, sizeof(float) * D);
    memcpy(tok + D, m->mask_tokens, sizeof(float) * nmt * D);
    if (hq) memcpy(tok + (size_t)(1 + nmt) * D, m->hf_token, sizeof(float) * D);
    embed_prompt(m, im, p, tok + (size_t)(1 + nmt + hq) * D);
    transformer(m, im, s, tok, T);
    const float *hs = s->tq;
    /* the tokens read below: the IoU token and the SAM masks' tokens; for HQ-SAM, once the IoU
     * has chosen (multimask), the one mask token used and the HQ token */
    int j0 = multimask ? 1 : 0, j1 = multimask ? nmt : 1;   /* the SAM masks returned */
    int keep[20], nkeep = 0;
    keep[nkeep++] = 0;
    for (int j = j0; !hq && j < j1; j++) keep[nkeep++] = 1 + j;
    final_attn(m, s, tok, keep, nkeep);

    /* IoU head */
    float iou[16], tmp[2 * 4096];
    int wi[18];
    wi[0] = D;
    for (int j = 1; j < c->iou_depth; j++) wi[j] = c->iou_hidden;
    wi[c->iou_depth] = nmt;
    mlp_vec(m->iou_head, c->iou_depth, wi, hs, iou, tmp);

    /* The upscaling and the masks, in bands of BAND rows of the 128 x 128 map, each band's rows
     * used while they are in cache (the whole maps are 4-8 MB per prompt, and two prompts at a
     * time overflow the caches): ConvT, LayerNorm2d, GELU (up_mid, one band), ConvT, GELU (ups,
     * 256 x 256 x D/8 on the zero-padded grid), then what those rows allow: for HQ-SAM a row of
     * z = GELU(LN2d(conv3x3(ups))) needs the rows of ups either side and a row of the HQ mask
     * the rows of z either side. Every value is computed once, by the same operations as on the
     * whole maps. */
    const int G = SAM_GRID, L = SAM_LOWRES, Lp = L + 2, C8 = D / 8, C4 = D / 4, NP = L * L;
    int hw[4] = {D, D, D, C8};
    float hf[1024], cb = 0;
    size_t off0 = 0, off9[9];
    if (hq) {
        /* multimask: the best of the multimask tokens by predicted IoU (torch.max, first max) */
        int j = j0;
        for (int t = 2; multimask && t < nmt; t++)
            if (iou[t] > iou[j]) j = t;
        iou_out[0] = iou[j];
        j0 = j, j1 = hq_only ? j : j + 1;   /* its hypernetwork vector unless hq_only */
        nkeep = 0;
        if (!hq_only) keep[nkeep++] = 1 + j;
        keep[nkeep++] = 1 + nmt;
        final_attn(m, s, tok, keep, nkeep);
        /* the HQ mask: hf_mlp(token), folded into embedding_maskfeature.3: w1 (9 x (1, C4)) =
         * sum_co hf[co] W3[co, ci, k], the constant hf . b3 */
        mlp_vec(m->hf_mlp, 3, hw, hs + (size_t)(1 + nmt) * D, hf, tmp);
        for (int co = 0; co < C8; co++) cb += hf[co] * m->mf3_b[co];
        for (int k = 0; k < 9; k++)
            for (int ci = 0; ci < C4; ci++) {
                float a = 0;
                for (int co = 0; co < C8; co++) a += hf[co] * m->mf3_w[((size_t)co * C4 + ci) * 9 + k];
                s->w1[k * C4 + ci] = a;
            }
        for (int k = 0; k < 9; k++) off9[k] = ((size_t)(k / 3) * Lp + k % 3) * C4;
    } else {
        for (int j = j0; j < j1; j++) iou_out[j - j0] = iou[j];
    }
    for (int j = j0; j < j1; j++)
        mlp_vec(m->hyper + 3 * j, 3, hw, hs + (size_t)(1 + j) * D, s->hyp + (size_t)(j - j0) * C8, tmp);

    memset(s->ups, 0, sizeof(float) * C8 * (Lp + 1));   /* the borders of the padded grids */
    memset(s->ups + (size_t)(PADN(L, L) - Lp - 1) * C8, 0, sizeof(float) * C8 * (Lp + 1));
    for (int y = 1; y <= L; y++) memset(s->ups + ((size_t)y * Lp + L + 1) * C8, 0, sizeof(float) * 2 * C8);
    float *zacc = s->zb + (size_t)(Lp + 1) * C4;   /* z pixel (0, 0); rows Lp apart */
    if (hq) {
        memset(s->zb, 0, sizeof(float) * C4 * (Lp + 1));
        memset(zacc + (size_t)L * Lp * C4, 0, sizeof(float) * C4 * Lp);
    }
    const float *ups0 = s->ups + (size_t)(Lp + 1) * C8;   /* ups pixel (0, 0); rows Lp apart */
    int zdone = 0, done = 0;   /* rows of z, of the masks, done */
    const int czk = m->cz_w12 ? 2 * c->dec_heads * T : 0;   /* czt: the product's inner size */
    const float *vpk = czk && !gemm_f32_pack_b(s->czVpk, 0, s->czV, D, D, czk) ? s->czVpk : NULL;
    for (int b0 = 0; b0 < 2 * G; b0 += SAM_BAND) {
        const int b1 = b0 + SAM_BAND < 2 * G ? b0 + SAM_BAND : 2 * G, last = b1 == 2 * G;
        if (czk) czt_band(m, im, s, czk, vpk, b0 / 2, b1 / 2);
        else
            sam_convt2_fused(s->up_mid, 0, 2 * G, s->keys + (size_t)(b0 / 2) * G * D, m->up0r, m->up0pk,
                             m->up0.b, (b1 - b0) / 2, G, D, C4, &m->up1, LN_2D, 1, s->up_t);
        sam_convt2_fused(s->ups, (size_t)Lp + 1 + (size_t)2 * b0 * Lp, Lp, s->up_mid, m->up3r, m->up3pk,
                         m->up3.b, b1 - b0, 2 * G, C4, C8, NULL, 0, 1, s->up_t);
        int r1 = last ? L : 2 * b1;   /* the rows of ups done */
        if (hq) {
            /* whole tiles of z (SAM_WINO_ROWS rows) whose rows of ups are done: z row y reads
             * ups rows y - 1 .. y + 1 */
            const int z1 = last ? L : (r1 - 1) / SAM_WINO_ROWS * SAM_WINO_ROWS;
            float *za = zacc + (size_t)zdone * Lp * C4;
            const float *ua = s->ups + (size_t)zdone * Lp * C8;
            if (sam_conv3x3_wino(za, ua, m->mf0_wino, C8, C4, z1 - zdone, L, s->wino))
                sam_conv3x3_padded(za, ua, &m->mf0, z1 - zdone, L);
#pragma omp parallel for schedule(static)
            for (int y = zdone; y < z1; y++) {
                float *r = zacc + (size_t)y * Lp * C4;
                sam_bias_layernorm(r, m->mf0.b, m->mf1.w, m->mf1.b, L, C4, LN_2D);
                nn_gelu_rows(r, (size_t)L * C4);
                memset(r + (size_t)L * C4, 0, sizeof(float) * 2 * C4);
            }
            zdone = z1;
            r1 = last ? L : z1 - 1;   /* the rows of the masks that z allows */
        }
        const int nr = r1 - done;
        if (nr <= 0) continue;
        const float *ur = ups0 + (size_t)done * Lp * C8;
        if (hq) {
            /* hqm = conv(z; w1) + hf . hq_features + cb; the mask: hyper . ups + hqm */
            float *hm = s->hqm + (size_t)done * L, *dt = s->dot + (size_t)done * L;
            float *lr = lowres_out + (size_t)done * L;
            sam_dot_pixels(hm, s->zb + (size_t)done * Lp * C4, Lp, off9, 9, s->w1, C4, nr, L);
            sam_dot_pixels(dt, im->hq_feat + (size_t)done * L * C8, L, &off0, 1, hf, C8, nr, L);
            for (int q = 0; q < nr * L; q++) hm[q] += cb + dt[q];
            if (hq_only) {
                memcpy(lr, hm, sizeof(float) * nr * L);
            } else {
                sam_dot_pixels(lr, ur, Lp, &off0, 1, s->hyp, C8, nr, L);
                for (int q = 0; q < nr * L; q++) lr[q] += hm[q];
            }
        } else {
            for (int j = j0; j < j1; j++)
                sam_dot_pixels(lowres_out + (size_t)(j - j0) * NP + (size_t)done * L, ur, Lp, &off0, 1,
                               s->hyp + (size_t)(j - j0) * C8, C8, nr, L);
        }
        done = r1;
    }
    return CARSEG_OK;
}

static void scratch_free(scratch *s) { cs_spare_give(CS_SPARE_SAM_DEC, s->block, s->cap); }

/* k_lr: low-res masks kept in the scratch (0: the caller's buffer); full: the 1024 x 1024 map of
 * postprocess */
static carseg_status scratch_alloc(const sam_model *m, scratch *s, int Tmax, int k_lr, int full) {
    memset(s, 0, sizeof *s);
    const size_t N = SAM_GRID * SAM_GRID, D = m->c.dim, NP = SAM_LOWRES * SAM_LOWRES;
    const size_t T = (size_t)Tmax, W = D > (size_t)m->c.dec_mlp ? D : (size_t)m->c.dec_mlp;
    const size_t R = (size_t)m->c.dec_heads * T, C4 = D / 4, C8 = D / 8, Lp = SAM_LOWRES + 2;
    const size_t I = (size_t)m->dl[0].t2i.internal > D ? (size_t)m->dl[0].t2i.internal : D;
    struct { float **p; size_t n; } parts[] = {
        {&s->keys, N * D}, {&s->kp, N * D}, {&s->A, N * D}, {&s->S, N * (R > T ? R : T) + T * T},
        {&s->tq, T * D}, {&s->tp, T * D}, {&s->tQ, T * I}, {&s->tK, T * I}, {&s->tV, T * I},
        {&s->tO, T * I}, {&s->tA, T * D}, {&s->th, T * W}, {&s->Qt, R * D}, {&s->U, R * D},
        {&s->cb, R}, {&s->up_t, (size_t)SAM_BAND * SAM_GRID * D},
        {&s->up_mid, (size_t)SAM_BAND * 2 * SAM_GRID * C4}, {&s->hyp, (size_t)m->c.n_mask_tokens * C8},
        {&s->czS, m->cz_w12 ? N * 2 * R : 0}, {&s->czV, m->cz_w12 ? 2 * R * D : 0},
        {&s->czVpk, m->cz_w12 ? gemm_f32_packed_size((int)D, (int)(2 * R)) : 0},
        {&s->czst, m->cz_w12 ? 4 * N : 0},
        {&s->ups, PADN(SAM_LOWRES, SAM_LOWRES) * C8},
        {&s->zb, m->c.hq ? ((Lp + 1) + SAM_LOWRES * Lp + Lp) * C4 : 0}, {&s->hqm, m->c.hq ? NP : 0},
        {&s->w1, m->c.hq ? 9 * C4 : 0}, {&s->dot, m->c.hq ? NP : 0},
        {&s->wino, m->c.hq ? sam_conv3_wino_work((int)C8, (int)C4) : 0}, {&s->tok, T * D},
        {&s->lr, NP * (size_t)k_lr}, {&s->full, full ? (size_t)SAM_IMG * SAM_IMG : 0},
    };
    const int np = (int)(sizeof parts / sizeof parts[0]);
    size_t total = 0;
    for (int i = 0; i < np; i++) total += (parts[i].n + 15) & ~(size_t)15;   /* 64-byte aligned */
    s->block = cs_spare_take(CS_SPARE_SAM_DEC, sizeof(float) * total, &s->cap);
    if (!s->block) return set_err(CARSEG_ENOMEM, "sam: out of memory (mask decoder scratch)");
    float *f = s->block;
    for (int i = 0; i < np; i++) {
        *parts[i].p = f;
        f += (parts[i].n + 15) & ~(size_t)15;
    }
    return CARSEG_OK;
}

static carseg_status postprocess(const sam_image *im, const float *lowres, float *full, float *out) {
    /* the 1024 x 1024 upscale only where the crop [:ih, :iw] reads it */
    if (sam_bilinear_part(full, SAM_IMG, SAM_IMG, im->iw, im->ih, lowres, SAM_LOWRES, SAM_LOWRES,
                          SAM_LOWRES) ||
        sam_bilinear(out, im->ow, im->oh, full, SAM_IMG, im->iw, im->ih))
        return set_err(CARSEG_ENOMEM, "sam: out of memory (postprocess)");
    return CARSEG_OK;
}

carseg_status sam_postprocess(const sam_image *im, const float *lowres, float *out) {
    float *full = alloc_f((size_t)SAM_IMG * SAM_IMG);
    if (!full) return set_err(CARSEG_ENOMEM, "sam: out of memory (postprocess)");
    carseg_status st = postprocess(im, lowres, full, out);
    cs_free(full);
    return st;
}

carseg_status sam_predict(const sam_model *m, sam_image *im, const sam_prompt *prompts, int n,
                          int multimask, int hq_only, float *iou, float *lowres, float *logits) {
    if (!m || !im || im->m != m || n < 0 || (n > 0 && (!prompts || !iou)))
        return set_err(CARSEG_EINVAL, "sam_predict: bad arguments");
    int Tmax = 0;
    for (int i = 0; i < n; i++) {
        const sam_prompt *p = &prompts[i];
        if (p->n_points < 0 || p->n_points > 256 || (p->n_points > 0 && (!p->points || !p->labels)) ||
            (p->n_points == 0 && !p->box))
            return set_err(CARSEG_EINVAL, "sam_predict: prompt %d has no points and no box (or more "
                           "than 256 points)", i);
        for (int j = 0; j < p->n_points; j++) {
            if (p->labels[j] < -1 || p->labels[j] > 1)
                return set_err(CARSEG_EINVAL, "sam_predict: prompt %d point %d: label %d (need 1 "
                               "foreground, 0 background or -1 not a point)", i, j, p->labels[j]);
            if (!isfinite(p->points[2 * j]) || !isfinite(p->points[2 * j + 1]))
                return set_err(CARSEG_EINVAL, "sam_predict: prompt %d point %d: not a finite "
                               "coordinate", i, j);
        }
        for (int j = 0; p->box && j < 4; j++)
            if (!isfinite(p->box[j]))
                return set_err(CARSEG_EINVAL, "sam_predict: prompt %d: box coordinate %d not finite", i, j);
        int T = 1 + m->c.n_mask_tokens + m->c.hq + n_sparse(p);
        if (T > Tmax) Tmax = T;
    }
    if (n == 0) return CARSEG_OK;
    TRY(ensure_cache(m, im));
    const int k = sam_masks_per_prompt(m, multimask);
    const size_t NP = SAM_LOWRES * SAM_LOWRES, HW = (size_t)im->ow * im->oh;
    /* several prompts: one prompt per thread at a time (each decoded serially, in the same
     * operations as alone, so the bits do not depend on the thread count); one prompt: the
     * threads share its products */
    int nt = n > 1 && !omp_in_parallel() ? carseg_get_threads() : 1;
    nt = nt < n ? nt : n;
    carseg_status st = CARSEG_OK;
    char msg[512] = "";
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        scratch s;
        carseg_status ts = scratch_alloc(m, &s, Tmax, lowres ? 0 : k, logits != NULL);
        const int have = ts == CARSEG_OK;
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n; i++) {
            if (ts != CARSEG_OK) continue;
            float *lr = lowres ? lowres + (size_t)i * k * NP : s.lr;
            ts = decode_one(m, im, &s, &prompts[i], multimask, hq_only, iou + (size_t)i * k, lr);
            for (int j = 0; j < k && ts == CARSEG_OK && logits; j++)
                ts = postprocess(im, lr + j * NP, s.full, logits + ((size_t)i * k + j) * HW);
        }
        if (have) scratch_free(&s);
#pragma omp critical
        if (ts != CARSEG_OK && st == CARSEG_OK) {
            st = ts;
            snprintf(msg, sizeof msg, "%s", carseg_last_error());
        }
    }
    if (st != CARSEG_OK) return set_err(st, "%s", msg);   /* a worker's message, here */
    return CARSEG_OK;
}
