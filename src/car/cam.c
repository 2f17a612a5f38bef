/* cam.c — the mask proposal generator: CLIP-ES-style Grad-CAM on the last ViT block with a
 * hand-written backward, and the class-aware affinity refinement. Mirrors
 * clip_as_rnn/modeling/model/clipcam.py (CLIPCAM.__call__), cam.py (CAM, scale_cam_image),
 * clip_wrapper.py (forward_last_layer, CustomBlock) and utils.py (scoremap2bbox)
 * (car_method.md §2, quirks Q6, Q7, Q16, Q19).
 *
 * What the reference repeats and this file does once:
 *   - the last block forward (text-independent): once per image, in cam_prepare;
 *   - the affinity matrix (last 8 attentions, Sinkhorn-like normalisation, symmetrise, square):
 *     once per image, in cam_prepare (the reference rebuilds it for every query);
 *   - the Grad-CAM backward: the gradient is linear in the upstream gradient d p[i] / d e, so
 *     one batched backward serves every query (rows of U, one per query). Grad-CAM needs only
 *     the mean over patch tokens of d p[i] / d a, so the backward through the attention is
 *     reduced to column/row sums of the softmax gradient (backward_hoisted): one
 *     (L x L)^T @ (L x rows*(d+1)) sgemm per head instead of four L*L*d products per row;
 *     half of the MLP backward is text-independent and hoisted (back_mlp_attnout); with more
 *     queries than E the backward of the E unit rows is reused (patch_grad_means).
 *
 * Layout: tokens are rows (L, C), token 0 is CLS, patch tokens are row-major over (gh, gw).
 */
#include "cam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "imgproc.h"
#include "nn.h"
#include "util.h"

#define CAM_EPS 1e-15          /* cam.py _EPSILON */
#define LN_EPS 1e-5f
#define CLIP_CONTEXT_LENGTH 77 /* clip_wrapper.py _CONTEXT_LENGTH (a quirk, see cam_prepare) */
/* parallel regions only pay off above this much work (and cost a lot on a busy machine) */
#define OMP_MIN_WORK (1u << 18)
#define AFF_LAST 8             /* clipcam.py: attention maps averaged for the affinity */

struct cam_image {
    const clip_model *m;
    int H, W;                  /* original image size */
    int gh, gw, Np, L;         /* grid, patches, tokens */
    int C, E, heads, hd, F;    /* width, embed, heads, head dim, MLP width */
    float *x_in;    /* (L, C) trunk output (block L-2) */
    float *a;       /* (L, C) ln_1 output: the Grad-CAM target activations */
    float *qkv;     /* (L, 3C) */
    float *P;       /* (heads, L, L) attention probabilities */
    float *prow;    /* (heads, L) sum over patch columns of P (rows t: sum_{s>=1} P[t,s]) */
    float *o;       /* (L, C) attention output before out_proj (heads concatenated) */
    float *xh2;     /* (L, C) normalised x2 (ln_2) */
    float *rs2;     /* (L) 1/std of x2 */
    float *dgel;    /* (L, F) QuickGELU'(pre-activation) */
    float *xw;      /* (L, F) xhat3 @ mlp.c_proj.weight (the hoisted half of the MLP backward) */
    float *xh3;     /* (L, C) normalised x3 (ln_post) */
    float *rs3;     /* (L) */
    float *en;      /* (E) normalised pooled image embedding */
    float enorm;    /* ||e|| before normalisation */
    float *attn_last; /* (L, L) head-averaged attention of the last block */
    float *aff;     /* (Np, Np) refinement matrix */
    float *Mb;      /* (E, C) or NULL: the backward of the E basis rows (see patch_grad_means) */
};

// ---------------------------------------------------------------------------------------------
// small kernels

/* out (M, N) = in (M, K) @ W^T + b, W (N, K) as in a PyTorch Linear. */
static void linear(float *out, const float *in, const float *W, const float *b, int M, int K,
                   int N) {
    nn_sgemm(0, 1, M, N, K, 1.0f, in, K, W, K, 0.0f, out, N);
    if (b) {
#pragma omp parallel for if ((size_t)M * N > OMP_MIN_WORK)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) out[(size_t)i * N + j] += b[j];
    }
}

/* LayerNorm over rows (eps 1e-5). xhat, rstd: optional saved statistics. */
static void layernorm(float *out, float *xhat, float *rstd, const float *x, const float *w,
                      const float *b, int M, int C) {
#pragma omp parallel for if ((size_t)M * C > OMP_MIN_WORK)
    for (int i = 0; i < M; i++) {
        const float *xi = x + (size_t)i * C;
        double mu = 0, var = 0;
        for (int c = 0; c < C; c++) mu += xi[c];
        mu /= C;
        for (int c = 0; c < C; c++) var += ((double)xi[c] - mu) * ((double)xi[c] - mu);
        var /= C;
        float r = (float)(1.0 / sqrt(var + LN_EPS));
        for (int c = 0; c < C; c++) {
            float h = (float)((xi[c] - mu) * r);
            if (xhat) xhat[(size_t)i * C + c] = h;
            out[(size_t)i * C + c] = h * w[c] + b[c];
        }
        if (rstd) rstd[i] = r;
    }
}

/* LayerNorm backward for one row: dx = rstd * (g~ - mean(g~) - xhat * mean(g~ * xhat)),
 * g~ = w * dy. Accumulates into dx when acc. */
static void layernorm_back_row(float *dx, const float *dy, const float *xhat, float rstd,
                               const float *w, int C, int acc) {
    double m1 = 0, m2 = 0;
    for (int c = 0; c < C; c++) {
        double g = (double)w[c] * dy[c];
        m1 += g;
        m2 += g * xhat[c];
    }
    m1 /= C;
    m2 /= C;
    for (int c = 0; c < C; c++) {
        float v = (float)(rstd * ((double)w[c] * dy[c] - m1 - xhat[c] * m2));
        dx[c] = acc ? dx[c] + v : v;
    }
}

static void softmax_row(float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        s += x[i];
    }
    float inv = (float)(1.0 / s);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

/* scale_cam_image: x -= min; x /= (max + 1e-15) (float32 divisor, as NumPy does it). */
static void minmax(float *x, int n) {
    float mn = x[0];
    for (int i = 1; i < n; i++) mn = x[i] < mn ? x[i] : mn;
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        x[i] -= mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    float den = (float)((double)mx + CAM_EPS);
    for (int i = 0; i < n; i++) x[i] /= den;
}

static int check_model(const clip_model *m) {
    const clip_config *c = &m->cfg;
    return m && c->v_width > 0 && c->v_heads > 0 && c->v_width % c->v_heads == 0 &&
           c->v_layers > 0 && c->embed > 0 && m->v_blocks && m->ln_post_w && m->ln_post_b &&
           m->v_proj;
}

// ---------------------------------------------------------------------------------------------
// per-image state: the last block forward and the affinity

void cam_image_free(cam_image *ci) {
    if (!ci) return;
    float *bufs[] = {ci->x_in, ci->a,    ci->qkv, ci->P,   ci->prow,      ci->o,  ci->xh2,
                     ci->rs2,  ci->dgel, ci->xw, ci->xh3, ci->rs3, ci->en, ci->attn_last, ci->aff, ci->Mb};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) cs_free(bufs[i]);
    free(ci);
}

void cam_image_dims(const cam_image *ci, int *H, int *W, int *gh, int *gw) {
    if (H) *H = ci->H;
    if (W) *W = ci->W;
    if (gh) *gh = ci->gh;
    if (gw) *gw = ci->gw;
}

const float *cam_image_activations(const cam_image *ci) { return ci->a; }
const float *cam_image_last_attn(const cam_image *ci) { return ci->attn_last; }
const float *cam_image_affinity(const cam_image *ci) { return ci->aff; }

static float *falloc(size_t n) { return cs_malloc(n * sizeof(float)); }

/* The last block (x_in carries no gradient), ln_post, mean over patch tokens, proj, normalise.
 * Saves everything the backward needs. */
static carseg_status head_forward(cam_image *ci) {
    const clip_model *m = ci->m;
    const clip_block *B = &m->v_blocks[m->cfg.v_layers - 1];
    int L = ci->L, C = ci->C, F = ci->F, E = ci->E, nh = ci->heads, hd = ci->hd;
    float *x2 = falloc((size_t)L * C), *tmp = falloc((size_t)L * C), *hpre = falloc((size_t)L * F);
    carseg_status st = CARSEG_OK;
    if (!x2 || !tmp || !hpre) {
        st = set_err(CARSEG_ENOMEM, "cam: out of memory (last block, %d tokens)", L);
        goto done;
    }
    layernorm(ci->a, NULL, NULL, ci->x_in, B->ln1_w, B->ln1_b, L, C);
    linear(ci->qkv, ci->a, B->in_w, B->in_b, L, C, 3 * C);
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < nh; h++) {
        float *Ph = ci->P + (size_t)h * L * L;
        const float *q = ci->qkv + h * hd, *k = ci->qkv + C + h * hd, *v = ci->qkv + 2 * C + h * hd;
        nn_sgemm(0, 1, L, L, hd, scale, q, 3 * C, k, 3 * C, 0.0f, Ph, L);
#pragma omp parallel for if ((size_t)L * L > OMP_MIN_WORK)
        for (int t = 0; t < L; t++) {
            float *row = Ph + (size_t)t * L;
            softmax_row(row, L);
            double s = 0;
            for (int u = 1; u < L; u++) s += row[u];
            ci->prow[(size_t)h * L + t] = (float)s;
        }
        nn_sgemm(0, 0, L, hd, L, 1.0f, Ph, L, v, 3 * C, 0.0f, ci->o + h * hd, C);
    }
    /* head-averaged attention (PyTorch MHA need_weights=True) */
#pragma omp parallel for if ((size_t)L * L * nh > OMP_MIN_WORK)
    for (int t = 0; t < L; t++)
        for (int u = 0; u < L; u++) {
            float s = 0;
            for (int h = 0; h < nh; h++) s += ci->P[((size_t)h * L + t) * L + u];
            ci->attn_last[(size_t)t * L + u] = s / nh;
        }
    linear(tmp, ci->o, B->out_w, B->out_b, L, C, C);
    for (size_t i = 0; i < (size_t)L * C; i++) x2[i] = ci->x_in[i] + tmp[i];
    layernorm(tmp, ci->xh2, ci->rs2, x2, B->ln2_w, B->ln2_b, L, C);
    linear(hpre, tmp, B->fc_w, B->fc_b, L, C, F);
#pragma omp parallel for if ((size_t)L * F > OMP_MIN_WORK)
    for (size_t i = 0; i < (size_t)L * F; i++) {
        float x = hpre[i], sg = 1.0f / (1.0f + expf(-1.702f * x));
        hpre[i] = x * sg;
        ci->dgel[i] = sg + 1.702f * x * sg * (1.0f - sg);
    }
    linear(tmp, hpre, B->proj_w, B->proj_b, L, F, C);
    for (size_t i = 0; i < (size_t)L * C; i++) x2[i] += tmp[i]; /* x3 */
    layernorm(tmp, ci->xh3, ci->rs3, x2, m->ln_post_w, m->ln_post_b, L, C);
    nn_sgemm(0, 0, L, F, C, 1.0f, ci->xh3, C, B->proj_w, F, 0.0f, ci->xw, F);
    double *pool = calloc((size_t)C, sizeof(double));
    if (!pool) {
        st = set_err(CARSEG_ENOMEM, "cam: out of memory");
        goto done;
    }
    for (int t = 1; t < L; t++)
        for (int c = 0; c < C; c++) pool[c] += tmp[(size_t)t * C + c];
    double nrm = 0;
    for (int k = 0; k < E; k++) {
        double s = 0;
        for (int c = 0; c < C; c++) s += (float)(pool[c] / (L - 1)) * (double)m->v_proj[(size_t)c * E + k];
        ci->en[k] = (float)s;
        nrm += s * s;
    }
    free(pool);
    ci->enorm = (float)sqrt(nrm);
    for (int k = 0; k < E; k++) ci->en[k] /= ci->enorm;
done:
    cs_free(x2);
    cs_free(tmp);
    cs_free(hpre);
    return st;
}

void cam_affinity_refine(float *A, int n, float *scratch) {
    double *s = malloc((size_t)n * sizeof(double));
    CS_ASSERT(s);
    for (int round = 0; round < 3; round++) {
        /* columns sum to 1 */
        for (int j = 0; j < n; j++) s[j] = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) s[j] += A[(size_t)i * n + j];
#pragma omp parallel for if ((size_t)n * n > OMP_MIN_WORK)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) A[(size_t)i * n + j] /= (float)s[j];
        /* rows sum to 1 */
#pragma omp parallel for if ((size_t)n * n > OMP_MIN_WORK)
        for (int i = 0; i < n; i++) {
            double r = 0;
            for (int j = 0; j < n; j++) r += A[(size_t)i * n + j];
            for (int j = 0; j < n; j++) A[(size_t)i * n + j] /= (float)r;
        }
    }
    free(s);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            scratch[(size_t)i * n + j] = (A[(size_t)i * n + j] + A[(size_t)j * n + i]) / 2;
    nn_sgemm(0, 0, n, n, n, 1.0f, scratch, n, scratch, n, 0.0f, A, n);
}

/* Average the last 8 of [trunk attentions..., last attention] without the CLS row/column. */
static void build_affinity(cam_image *ci, const float *attn, int n_attn, float *scratch) {
    int L = ci->L, Np = ci->Np;
    int total = n_attn + 1, first = total > AFF_LAST ? total - AFF_LAST : 0, cnt = total - first;
    float *A = ci->aff;
#pragma omp parallel for if ((size_t)Np * Np * cnt > OMP_MIN_WORK)
    for (int i = 0; i < Np; i++)
        for (int j = 0; j < Np; j++) {
            float s = 0;
            for (int b = first; b < total; b++) {
                const float *M = b < n_attn ? attn + (size_t)b * L * L : ci->attn_last;
                s += M[(size_t)(i + 1) * L + (j + 1)];
            }
            A[(size_t)i * Np + j] = s / cnt;
        }
    cam_affinity_refine(A, Np, scratch);
}

carseg_status cam_prepare_tokens(const clip_model *gen, const float *x_in, int gh, int gw,
                                 const float *attn, int n_attn, int H, int W, cam_image **out) {
    *out = NULL;
    if (!gen || !check_model(gen)) return set_err(CARSEG_EINVAL, "cam: generator model incomplete");
    if (!x_in || gh <= 0 || gw <= 0 || H <= 0 || W <= 0 || n_attn < 0 || (n_attn > 0 && !attn))
        return set_err(CARSEG_EINVAL, "cam: bad arguments (grid %dx%d, image %dx%d)", gh, gw, W, H);
    if ((int64_t)gh * gw > 100000)
        return set_err(CARSEG_EINVAL, "cam: grid %dx%d too large", gh, gw);
    cam_image *ci = calloc(1, sizeof *ci);
    if (!ci) return set_err(CARSEG_ENOMEM, "cam: out of memory");
    ci->m = gen;
    ci->H = H;
    ci->W = W;
    ci->gh = gh;
    ci->gw = gw;
    ci->Np = gh * gw;
    ci->L = ci->Np + 1;
    ci->C = gen->cfg.v_width;
    ci->E = gen->cfg.embed;
    ci->heads = gen->cfg.v_heads;
    ci->hd = ci->C / ci->heads;
    ci->F = 4 * ci->C;
    size_t L = ci->L, C = ci->C, Np = ci->Np;
    ci->x_in = falloc(L * C);
    ci->a = falloc(L * C);
    ci->qkv = falloc(L * 3 * C);
    ci->P = falloc((size_t)ci->heads * L * L);
    ci->prow = falloc((size_t)ci->heads * L);
    ci->o = falloc(L * C);
    ci->xh2 = falloc(L * C);
    ci->rs2 = falloc(L);
    ci->dgel = falloc(L * ci->F);
    ci->xw = falloc(L * ci->F);
    ci->xh3 = falloc(L * C);
    ci->rs3 = falloc(L);
    ci->en = falloc(ci->E);
    ci->attn_last = falloc(L * L);
    ci->aff = falloc(Np * Np);
    float *scratch = falloc(Np * Np);
    if (!ci->x_in || !ci->a || !ci->qkv || !ci->P || !ci->prow || !ci->o || !ci->xh2 || !ci->rs2 ||
        !ci->dgel || !ci->xw || !ci->xh3 || !ci->rs3 || !ci->en || !ci->attn_last || !ci->aff || !scratch) {
        cs_free(scratch);
        cam_image_free(ci);
        return set_err(CARSEG_ENOMEM, "cam: out of memory (grid %dx%d)", gh, gw);
    }
    memcpy(ci->x_in, x_in, L * C * sizeof(float));
    carseg_status st = head_forward(ci);
    if (st == CARSEG_OK) build_affinity(ci, attn, n_attn, scratch);
    cs_free(scratch);
    if (st != CARSEG_OK) {
        cam_image_free(ci);
        return st;
    }
    *out = ci;
    return CARSEG_OK;
}

carseg_status cam_prepare(const clip_model *gen, const image_u8 *rgb, cam_image **out) {
    *out = NULL;
    if (!gen || !check_model(gen) || gen->cfg.v_patch <= 0)
        return set_err(CARSEG_EINVAL, "cam: generator model incomplete");
    if (!rgb || !rgb->px || rgb->w <= 0 || rgb->h <= 0 || rgb->c != 3)
        return set_err(CARSEG_EINVAL, "cam: need an RGB image");
    int P = gen->cfg.v_patch;
    int gh = (rgb->h + P - 1) / P, gw = (rgb->w + P - 1) / P; /* ceil(H/16)*16 (scale 1.0) */
    if ((int64_t)gh * gw > 100000)
        return set_err(CARSEG_EINVAL, "cam: image %dx%d too large", rgb->w, rgb->h);
    int L = 1 + gh * gw, C = gen->cfg.v_width;
    /* clip_wrapper.CustomTransformer runs ALL blocks when the sequence length equals the text
     * context (77); forward_last_layer then applies the last block once more. Kept. */
    int n_trunk = L == CLIP_CONTEXT_LENGTH ? gen->cfg.v_layers : gen->cfg.v_layers - 1;
    float *x = falloc((size_t)3 * gh * P * gw * P), *tok = falloc((size_t)L * C);
    /* the affinity averages the last AFF_LAST attentions, the last block's included: keep only
     * the trunk's last AFF_LAST - 1 (same maps, same order, same sums) */
    int n_keep = n_trunk < AFF_LAST - 1 ? n_trunk : AFF_LAST - 1;
    float *attn = n_keep > 0 ? falloc((size_t)n_keep * L * L) : NULL;
    carseg_status st = CARSEG_OK;
    if (!x || !tok || (n_keep > 0 && !attn)) {
        st = set_err(CARSEG_ENOMEM, "cam: out of memory (image %dx%d)", rgb->w, rgb->h);
        goto done;
    }
    st = clip_preprocess_exact(rgb, gw * P, gh * P, x);
    if (st == CARSEG_OK)
        st = clip_image_trunk_from(gen, x, gh * P, gw * P, n_trunk, n_trunk - n_keep, tok, attn);
    if (st == CARSEG_OK) st = cam_prepare_tokens(gen, tok, gh, gw, attn, n_keep, rgb->h, rgb->w, out);
done:
    cs_free(x);
    cs_free(tok);
    cs_free(attn);
    return st;
}

// ---------------------------------------------------------------------------------------------
// the text-dependent part: probabilities and upstream gradients

/* T (K, E) normalised rows; z = s * e_n . T^T; p = softmax(z) (K). U row i (E) = d p[idx[i]] / d e_n. */
static void upstream(const cam_image *ci, const float *T, int K, float s, const int *idx, int n,
                     float *p, float *U) {
    int E = ci->E;
    for (int j = 0; j < K; j++) {
        double d = 0;
        for (int k = 0; k < E; k++) d += (double)(s * ci->en[k]) * T[(size_t)j * E + k];
        p[j] = (float)d;
    }
    softmax_row(p, K);
    for (int i = 0; i < n; i++) {
        int r = idx[i];
        float *u = U + (size_t)i * E;
        /* softmax backward: dz_j = p_j (delta_rj - p_r); d e_n = s * sum_j dz_j T_j */
        for (int k = 0; k < E; k++) {
            double acc = 0;
            for (int j = 0; j < K; j++) {
                double dz = (double)p[j] * ((j == r) - (double)p[r]);
                acc += dz * T[(size_t)j * E + k];
            }
            u[k] = (float)(s * acc);
        }
    }
}

/* Rows of U (n, E) = d loss / d e_n  ->  G3 (n, L, C) = d loss / d x3 (through e/||e||, proj,
 * mean over patches, ln_post). CLS rows are zero. For a patch token t,
 *   G3[r,t] = rs3_t (A_r - Beta[r,t] xhat3_t),  A_r = g~_r - mean(g~_r),  Beta[r,t] = g~_r.xhat3_t / C
 * with g~_r = ln_post_w * d pooled_r / Np; A (n, C) and Beta (n, L) are returned when not NULL. */
static void back_to_x3(const cam_image *ci, const float *U, int n, float *G3, float *A,
                       float *Beta) {
    const clip_model *m = ci->m;
    int C = ci->C, E = ci->E, L = ci->L, Np = ci->Np;
    float *ge = falloc((size_t)n * E), *v = falloc((size_t)n * C), *D = falloc((size_t)n * L);
    CS_ASSERT(ge && v && D);
    for (int r = 0; r < n; r++) {
        const float *u = U + (size_t)r * E;
        double dot = 0;
        for (int k = 0; k < E; k++) dot += (double)u[k] * ci->en[k];
        for (int k = 0; k < E; k++)
            ge[(size_t)r * E + k] = (float)((u[k] - ci->en[k] * dot) / ci->enorm);
    }
    /* d pooled = ge @ proj^T; g~ = ln_post_w * d pooled / Np (same for every patch token) */
    nn_sgemm(0, 1, n, C, E, 1.0f, ge, E, m->v_proj, E, 0.0f, v, C);
    for (int r = 0; r < n; r++)
        for (int c = 0; c < C; c++) v[(size_t)r * C + c] *= m->ln_post_w[c] / Np;
    /* D[r, t] = g~_r . xhat3_t */
    nn_sgemm(0, 1, n, L, C, 1.0f, v, C, ci->xh3, C, 0.0f, D, L);
#pragma omp parallel for collapse(2) if ((size_t)n * L * C > OMP_MIN_WORK)
    for (int r = 0; r < n; r++)
        for (int t = 0; t < L; t++) {
            float *g = G3 + ((size_t)r * L + t) * C;
            if (t == 0) {
                memset(g, 0, (size_t)C * sizeof(float));
                continue;
            }
            const float *vr = v + (size_t)r * C, *xh = ci->xh3 + (size_t)t * C;
            double mu = 0;
            for (int c = 0; c < C; c++) mu += vr[c];
            mu /= C;
            double m2 = (double)D[(size_t)r * L + t] / C;
            float rs = ci->rs3[t];
            for (int c = 0; c < C; c++) g[c] = (float)(rs * (vr[c] - mu - xh[c] * m2));
            if (Beta) Beta[(size_t)r * L + t] = (float)m2;
            if (A && t == 1)
                for (int c = 0; c < C; c++) A[(size_t)r * C + c] = (float)(vr[c] - mu);
        }
    cs_free(ge);
    cs_free(v);
    cs_free(D);
}

/* G (M, C) = d/d x3 rows  ->  d/d o (M, C), through the MLP and ln_2 (the residual carries the
 * gradient on), then out_proj. M = rows * L tokens; gg: (M, F) scratch, g2: (M, C) scratch.
 * With AW (rows, F) = A @ c_proj.weight and Beta from back_to_x3, the first MLP product
 * G3 @ c_proj.weight is rs3_t (AW_r - Beta[r,t] xw_t) (xw hoisted per image): one of the two
 * (M x C x F) products is saved. AW = NULL: the straightforward product. */
static void back_mlp_attnout(const cam_image *ci, const float *G3, int M, const float *AW,
                             const float *Beta, float *gg, float *g2, float *go) {
    const clip_block *B = &ci->m->v_blocks[ci->m->cfg.v_layers - 1];
    int C = ci->C, F = ci->F, L = ci->L;
    if (!AW)
        nn_sgemm(0, 0, M, F, C, 1.0f, G3, C, B->proj_w, F, 0.0f, gg, F);
#pragma omp parallel for if ((size_t)M * F > OMP_MIN_WORK)
    for (int i = 0; i < M; i++) {
        int t = i % L, r = i / L;
        const float *d = ci->dgel + (size_t)t * F;
        float *g = gg + (size_t)i * F;
        if (AW) {
            if (t == 0) {
                memset(g, 0, (size_t)F * sizeof(float));
                continue;
            }
            const float *aw = AW + (size_t)r * F, *xw = ci->xw + (size_t)t * F;
            float rs = ci->rs3[t], be = Beta[(size_t)r * L + t];
            for (int j = 0; j < F; j++) g[j] = rs * (aw[j] - be * xw[j]) * d[j];
        } else {
            for (int j = 0; j < F; j++) g[j] *= d[j];
        }
    }
    /* go used as scratch: d/d ln_2 output */
    nn_sgemm(0, 0, M, C, F, 1.0f, gg, F, B->fc_w, C, 0.0f, go, C);
#pragma omp parallel for if ((size_t)M * C > OMP_MIN_WORK)
    for (int i = 0; i < M; i++) {
        int t = i % L;
        float *g = g2 + (size_t)i * C;
        memcpy(g, G3 + (size_t)i * C, (size_t)C * sizeof(float));
        layernorm_back_row(g, go + (size_t)i * C, ci->xh2 + (size_t)t * C, ci->rs2[t], B->ln2_w, C,
                           1);
    }
    nn_sgemm(0, 0, M, C, C, 1.0f, g2, C, B->out_w, C, 0.0f, go, C);
}

/* Hoisted backward: rows U (n, E) -> Wc (n, C) = mean over patch tokens of d loss / d a.
 * For head h with S = q k^T / sqrt(d), P = softmax(S), o = P v and upstream go (L, d):
 *   c_t = go_t . o_t;  gS[t,s] = P[t,s] (go_t . v_s - c_t)
 *   sum_{t>=1} gq_t = 1/sqrt(d) sum_s sigma_s k_s,  sigma_s = sum_{t>=1} gS[t,s]
 *                   = v_s . (P^T (m*go))_s - (P^T (m*c))_s            (m = patch-token mask)
 *   sum_{t>=1} gk_t = 1/sqrt(d) sum_s rho_s q_s,  rho_s = sum_{t>=1} gS[s,t] = -gS[s,0]
 *   sum_{t>=1} gv_t = sum_s (sum_{t>=1} P[s,t]) go_s
 * and mean_t d/d a_t = (1/Np) (sum_t gqkv_t) @ W_in. */
static carseg_status backward_hoisted(const cam_image *ci, const float *U, int n, float *Wc) {
    const clip_block *B = &ci->m->v_blocks[ci->m->cfg.v_layers - 1];
    int C = ci->C, F = ci->F, L = ci->L, nh = ci->heads, hd = ci->hd, Np = ci->Np;
    /* rows per chunk: keep the (rows*L, F) MLP gradient near 128 MB */
    size_t per_row = (size_t)L * (F + 3 * C) * sizeof(float);
    int chunk = (int)((128u << 20) / per_row);
    if (chunk < 1) chunk = 1;
    if (chunk > n) chunk = n;
    size_t ML = (size_t)chunk * L;
    float *G3 = falloc(ML * C), *gg = falloc(ML * F), *g2 = falloc(ML * C), *go = falloc(ML * C);
    float *Z = falloc((size_t)L * chunk * (hd + 1)), *Y = falloc((size_t)L * chunk * (hd + 1));
    float *sq = falloc((size_t)chunk * 3 * C), *A = falloc((size_t)chunk * C);
    float *AW = falloc((size_t)chunk * F), *Beta = falloc((size_t)chunk * L);
    if (!G3 || !gg || !g2 || !go || !Z || !Y || !sq || !A || !AW || !Beta) {
        cs_free(G3), cs_free(gg), cs_free(g2), cs_free(go), cs_free(Z), cs_free(Y), cs_free(sq);
        cs_free(A), cs_free(AW), cs_free(Beta);
        return set_err(CARSEG_ENOMEM, "cam: out of memory (backward, %d rows)", chunk);
    }
    float isd = 1.0f / sqrtf((float)hd);
    int zc = chunk * (hd + 1);
    for (int r0 = 0; r0 < n; r0 += chunk) {
        int nr = n - r0 < chunk ? n - r0 : chunk;
        int M = nr * L;
        back_to_x3(ci, U + (size_t)r0 * ci->E, nr, G3, A, Beta);
        nn_sgemm(0, 0, nr, F, C, 1.0f, A, C, B->proj_w, F, 0.0f, AW, F);
        back_mlp_attnout(ci, G3, M, AW, Beta, gg, g2, go);
        memset(sq, 0, (size_t)nr * 3 * C * sizeof(float));
        for (int h = 0; h < nh; h++) {
            const float *Ph = ci->P + (size_t)h * L * L, *pr = ci->prow + (size_t)h * L;
            const float *q = ci->qkv + h * hd, *k = ci->qkv + C + h * hd, *v = ci->qkv + 2 * C + h * hd;
            const float *oh = ci->o + h * hd;
            /* Z[t, r*(d+1) + j] = m_t go[r,t,h*d+j];  Z[t, r*(d+1)+d] = m_t c[r,t] */
#pragma omp parallel for if ((size_t)L * nr * hd > OMP_MIN_WORK)
            for (int t = 0; t < L; t++) {
                float *z = Z + (size_t)t * zc;
                for (int r = 0; r < nr; r++) {
                    const float *g = go + ((size_t)r * L + t) * C + h * hd;
                    float *zr = z + r * (hd + 1);
                    if (t == 0) {
                        memset(zr, 0, (size_t)(hd + 1) * sizeof(float));
                        continue;
                    }
                    double c = 0;
                    for (int j = 0; j < hd; j++) {
                        zr[j] = g[j];
                        c += (double)g[j] * oh[(size_t)t * C + j];
                    }
                    zr[hd] = (float)c;
                }
            }
            nn_sgemm(1, 0, L, nr * (hd + 1), L, 1.0f, Ph, L, Z, zc, 0.0f, Y, zc);
#pragma omp parallel for if ((size_t)nr * L * hd > OMP_MIN_WORK)
            for (int r = 0; r < nr; r++) {
                double aq[512], ak[512], av[512];
                CS_ASSERT(hd <= 512);
                for (int j = 0; j < hd; j++) aq[j] = ak[j] = av[j] = 0;
                const float *g0 = go + (size_t)r * L * C + h * hd;
                for (int s = 0; s < L; s++) {
                    const float *ys = Y + (size_t)s * zc + r * (hd + 1);
                    const float *vs = v + (size_t)s * 3 * C, *ks = k + (size_t)s * 3 * C;
                    const float *qs = q + (size_t)s * 3 * C, *gs = g0 + (size_t)s * C;
                    double sig = 0, gv0 = 0, cs = 0;
                    for (int j = 0; j < hd; j++) {
                        sig += (double)vs[j] * ys[j];
                        gv0 += (double)gs[j] * v[j];            /* go_s . v_0 */
                        cs += (double)gs[j] * oh[(size_t)s * C + j]; /* c_s */
                    }
                    sig -= ys[hd];
                    double rho = -(double)Ph[(size_t)s * L] * (gv0 - cs);
                    double pv = pr[s];
                    for (int j = 0; j < hd; j++) {
                        aq[j] += sig * ks[j];
                        ak[j] += rho * qs[j];
                        av[j] += pv * gs[j];
                    }
                }
                float *o3 = sq + (size_t)r * 3 * C;
                for (int j = 0; j < hd; j++) {
                    o3[h * hd + j] = (float)(aq[j] * isd);
                    o3[C + h * hd + j] = (float)(ak[j] * isd);
                    o3[2 * C + h * hd + j] = (float)av[j];
                }
            }
        }
        nn_sgemm(0, 0, nr, C, 3 * C, 1.0f / Np, sq, 3 * C, B->in_w, C, 0.0f, Wc + (size_t)r0 * C,
                 C);
    }
    cs_free(G3), cs_free(gg), cs_free(g2), cs_free(go), cs_free(Z), cs_free(Y), cs_free(sq);
    cs_free(A), cs_free(AW), cs_free(Beta);
    return CARSEG_OK;
}

/* Straightforward single-row backward to the full d loss / d a (L, C). */
static carseg_status backward_full_row(const cam_image *ci, const float *u, float *G) {
    const clip_block *B = &ci->m->v_blocks[ci->m->cfg.v_layers - 1];
    int C = ci->C, F = ci->F, L = ci->L, nh = ci->heads, hd = ci->hd;
    float *G3 = falloc((size_t)L * C), *gg = falloc((size_t)L * F), *g2 = falloc((size_t)L * C);
    float *go = falloc((size_t)L * C), *gqkv = falloc((size_t)L * 3 * C);
    float *gP = falloc((size_t)L * L);
    if (!G3 || !gg || !g2 || !go || !gqkv || !gP) {
        cs_free(G3), cs_free(gg), cs_free(g2), cs_free(go), cs_free(gqkv), cs_free(gP);
        return set_err(CARSEG_ENOMEM, "cam: out of memory (full backward)");
    }
    back_to_x3(ci, u, 1, G3, NULL, NULL);
    back_mlp_attnout(ci, G3, L, NULL, NULL, gg, g2, go);
    float isd = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < nh; h++) {
        const float *Ph = ci->P + (size_t)h * L * L;
        const float *q = ci->qkv + h * hd, *k = ci->qkv + C + h * hd, *v = ci->qkv + 2 * C + h * hd;
        const float *gh = go + h * hd;
        /* gP = go_h v_h^T; gS = P * (gP - rowsum(gP * P)) */
        nn_sgemm(0, 1, L, L, hd, 1.0f, gh, C, v, 3 * C, 0.0f, gP, L);
        for (int t = 0; t < L; t++) {
            float *g = gP + (size_t)t * L;
            const float *p = Ph + (size_t)t * L;
            double s = 0;
            for (int u2 = 0; u2 < L; u2++) s += (double)g[u2] * p[u2];
            for (int u2 = 0; u2 < L; u2++) g[u2] = (float)(p[u2] * (g[u2] - s));
        }
        nn_sgemm(0, 0, L, hd, L, isd, gP, L, k, 3 * C, 0.0f, gqkv + h * hd, 3 * C);
        nn_sgemm(1, 0, L, hd, L, isd, gP, L, q, 3 * C, 0.0f, gqkv + C + h * hd, 3 * C);
        nn_sgemm(1, 0, L, hd, L, 1.0f, Ph, L, gh, C, 0.0f, gqkv + 2 * C + h * hd, 3 * C);
    }
    nn_sgemm(0, 0, L, C, 3 * C, 1.0f, gqkv, 3 * C, B->in_w, C, 0.0f, G, C);
    cs_free(G3), cs_free(gg), cs_free(g2), cs_free(go), cs_free(gqkv), cs_free(gP);
    return CARSEG_OK;
}

/* Rows U (n, E) -> Wc (n, C). The map is linear and text-independent, so with more rows than
 * E (ADE-847 starts with ~800 queries) the backward of the E unit rows is computed once per
 * image (Mb, E x C) and every later call is Wc = U @ Mb. */
static carseg_status patch_grad_means(cam_image *ci, const float *U, int n, float *Wc) {
    int E = ci->E, C = ci->C;
    if (!ci->Mb && n > E) {
        float *Id = falloc((size_t)E * E), *Mb = falloc((size_t)E * C);
        if (!Id || !Mb) {
            cs_free(Id), cs_free(Mb);
            return set_err(CARSEG_ENOMEM, "cam: out of memory (%d x %d basis)", E, C);
        }
        memset(Id, 0, (size_t)E * E * sizeof(float));
        for (int k = 0; k < E; k++) Id[(size_t)k * E + k] = 1.0f;
        carseg_status st = backward_hoisted(ci, Id, E, Mb);
        cs_free(Id);
        if (st != CARSEG_OK) {
            cs_free(Mb);
            return st;
        }
        ci->Mb = Mb;
    }
    if (!ci->Mb) return backward_hoisted(ci, U, n, Wc);
    nn_sgemm(0, 0, n, C, E, 1.0f, U, E, ci->Mb, C, 0.0f, Wc, C);
    return CARSEG_OK;
}

static float *normalised_rows(const float *fg, int n, const float *bg, int nb, int E) {
    float *T = falloc((size_t)(n + nb) * E);
    if (!T) return NULL;
    for (int j = 0; j < n + nb; j++) {
        const float *src = j < n ? fg + (size_t)j * E : bg + (size_t)(j - n) * E;
        double s = 0;
        for (int k = 0; k < E; k++) s += (double)src[k] * src[k];
        float nr = (float)sqrt(s);
        for (int k = 0; k < E; k++) T[(size_t)j * E + k] = src[k] / nr;
    }
    return T;
}

carseg_status cam_grad_full(const cam_image *ci, const float *Tin, int K, float s, const int *idx,
                            int n, float *G, float *probs) {
    int E = ci->E;
    if (!Tin || K <= 0 || n < 0 || (n > 0 && (!idx || !G)))
        return set_err(CARSEG_EINVAL, "cam_grad_full: bad arguments");
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= K) return set_err(CARSEG_EINVAL, "cam_grad_full: bad index");
    float *T = normalised_rows(Tin, K, NULL, 0, E), *p = falloc(K), *U = falloc((size_t)(n + 1) * E);
    carseg_status st = CARSEG_OK;
    if (!T || !p || !U) st = set_err(CARSEG_ENOMEM, "cam: out of memory");
    if (st == CARSEG_OK) {
        upstream(ci, T, K, s, idx, n, p, U);
        if (probs) memcpy(probs, p, (size_t)K * sizeof(float));
        for (int i = 0; i < n && st == CARSEG_OK; i++)
            st = backward_full_row(ci, U + (size_t)i * E, G + (size_t)i * ci->L * ci->C);
    }
    cs_free(T), cs_free(p), cs_free(U);
    return st;
}

// ---------------------------------------------------------------------------------------------
// boxes (utils.scoremap2bbox) and refinement

int cam_boxes(const float *cam, int gh, int gw, float lambda, int (*boxes)[4], int max_boxes,
              uint8_t *mask) {
    return cam_boxes_q7(cam, gh, gw, lambda, boxes, max_boxes, mask, 0);
}

int cam_boxes_q7(const float *cam, int gh, int gw, float lambda, int (*boxes)[4], int max_boxes,
                 uint8_t *mask, int fix_clamp) {
    int Np = gh * gw;
    uint8_t *s8 = malloc((size_t)Np), *bin = malloc((size_t)Np);
    int *stack = malloc((size_t)Np * sizeof(int));
    CS_ASSERT(s8 && bin && stack);
    int mx = 0;
    for (int i = 0; i < Np; i++) {
        /* (scoremap * 255).astype(np.uint8): float32 product, truncation, modulo 256 */
        float v = cam[i] * 255.0f;
        int64_t iv = isfinite(v) && fabsf(v) < 9e18f ? (int64_t)v : 0;
        s8[i] = (uint8_t)(iv & 255);
        mx = s8[i] > mx ? s8[i] : mx;
    }
    /* the threshold is Python float arithmetic: snap lambda to its decimal value first */
    double th = round((double)lambda * 1e6) / 1e6;
    if (!(fabs(th) <= 100)) th = 0; /* NaN or absurd: cam_proposals rejects these */
    int any = 0;
    for (;;) {
        int thr = (int)(th * mx); /* int() truncates toward zero */
        any = 0;
        for (int i = 0; i < Np; i++) {
            bin[i] = s8[i] > thr;
            any |= bin[i];
        }
        if (any || th <= 0) break;
        th -= 0.1;
    }
    if (mask) memset(mask, 0, (size_t)Np);
    int nbox = 0;
    if (!any) {
        if (boxes && max_boxes > 0) boxes[0][0] = boxes[0][1] = boxes[0][2] = boxes[0][3] = 0;
        free(s8), free(bin), free(stack);
        return 1;
    }
    /* 8-connected components = outer contours of cv2.findContours (RETR_TREE); hole contours
     * lie inside their outer contour's box, so they add nothing to the mask */
    for (int i0 = 0; i0 < Np; i0++) {
        if (bin[i0] != 1) continue;
        int x0 = gw, y0 = gh, x1 = -1, y1 = -1, sp = 0;
        stack[sp++] = i0;
        bin[i0] = 2;
        while (sp) {
            int i = stack[--sp], y = i / gw, x = i % gw;
            x0 = x < x0 ? x : x0, x1 = x > x1 ? x : x1;
            y0 = y < y0 ? y : y0, y1 = y > y1 ? y : y1;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int yy = y + dy, xx = x + dx;
                    if (yy < 0 || yy >= gh || xx < 0 || xx >= gw) continue;
                    int j = yy * gw + xx;
                    if (bin[j] == 1) {
                        bin[j] = 2;
                        stack[sp++] = j;
                    }
                }
        }
        /* boundingRect (x, y, w, h) -> [x, y, min(x+w, gw-1), min(y+h, gh-1)] */
        int bx1 = x1 + 1 < gw - 1 ? x1 + 1 : gw - 1, by1 = y1 + 1 < gh - 1 ? y1 + 1 : gh - 1;
        if (fix_clamp) bx1 = x1 + 1, by1 = y1 + 1;   /* Q7 fix: the whole component */
        if (boxes && nbox < max_boxes) {
            boxes[nbox][0] = x0, boxes[nbox][1] = y0, boxes[nbox][2] = bx1, boxes[nbox][3] = by1;
        }
        nbox++;
        if (mask)
            for (int y = y0; y < by1; y++)
                for (int x = x0; x < bx1; x++) mask[y * gw + x] = 1;
    }
    free(s8), free(bin), free(stack);
    return nbox;
}

/* From the Grad-CAM weights of each query to the Grad-CAM grid (ReLU, min-max). */
static void gradcam_grid(const cam_image *ci, const float *Wc, int n, float *grid) {
    int C = ci->C, Np = ci->Np;
    nn_sgemm(0, 1, n, Np, C, 1.0f, Wc, C, ci->a + C, C, 0.0f, grid, Np);
    for (int r = 0; r < n; r++) {
        float *g = grid + (size_t)r * Np;
        for (int i = 0; i < Np; i++) g[i] = g[i] > 0 ? g[i] : 0;
        minmax(g, Np); /* scale_cam_image twice (compute_cam_per_layer, aggregate_multi_layers) */
        minmax(g, Np);
    }
}

static float maxf(const float *x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* Box masks, refinement with the affinity, min-max, resize to the original size. */
static carseg_status refine(const cam_image *ci, const float *grid, int n, float lambda,
                            int fix_q7, float *masks) {
    int Np = ci->Np;
    float *BC = falloc((size_t)Np * n), *R = falloc((size_t)Np * n), *r1 = falloc(Np);
    uint8_t *B = malloc((size_t)Np);
    if (!BC || !R || !r1 || !B) {
        cs_free(BC), cs_free(R), cs_free(r1), free(B);
        return set_err(CARSEG_ENOMEM, "cam: out of memory (refinement)");
    }
    /* BC[:, i] = B_i * cam_i: zeroing column j of the affinity = zeroing cam entry j */
    for (int i = 0; i < n; i++) {
        const float *g = grid + (size_t)i * Np;
        cam_boxes_q7(g, ci->gh, ci->gw, lambda, NULL, 0, B, fix_q7);
        for (int j = 0; j < Np; j++) BC[(size_t)j * n + i] = B[j] ? g[j] : 0.0f;
    }
    nn_sgemm(0, 0, Np, n, Np, 1.0f, ci->aff, Np, BC, n, 0.0f, R, n);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < Np; j++) r1[j] = R[(size_t)j * n + i];
        minmax(r1, Np);
        cv_resize_linear_f32(masks + (size_t)i * ci->H * ci->W, ci->W, ci->H, r1, ci->gw, ci->gh);
    }
    cs_free(BC), cs_free(R), cs_free(r1), free(B);
    return CARSEG_OK;
}

static carseg_status check_args(const cam_image *ci, const float *fg, int n, const float *bg,
                                int nb, const cam_params *p, const float *masks) {
    if (!ci || !p || n < 0 || nb < 0 || (n > 0 && (!fg || !masks)) || (nb > 0 && !bg))
        return set_err(CARSEG_EINVAL, "cam_proposals: bad arguments (n %d, nb %d)", n, nb);
    if (!(fabsf(p->lambda) <= 100) || !isfinite(p->logit_scale))
        return set_err(CARSEG_EINVAL, "cam_proposals: bad lambda %g or logit scale %g",
                       (double)p->lambda, (double)p->logit_scale);
    for (int j = 0; j < n + nb; j++) {
        const float *r = j < n ? fg + (size_t)j * ci->E : bg + (size_t)(j - n) * ci->E;
        double s = 0;
        for (int k = 0; k < ci->E; k++) s += (double)r[k] * r[k];
        if (!(s > 0) || !isfinite(s))
            return set_err(CARSEG_EINVAL, "cam_proposals: text row %d is zero or not finite", j);
    }
    return CARSEG_OK;
}

carseg_status cam_proposals(cam_image *ci, const float *fg, int n, const float *bg, int nb,
                            const cam_params *p, float *masks, float *grid_out, float *probs_out) {
    TRY(check_args(ci, fg, n, bg, nb, p, masks));
    if (n == 0) return CARSEG_OK;
    int E = ci->E, C = ci->C, Np = ci->Np, K = n + nb;
    float s = p->logit_scale > 0 ? p->logit_scale : ci->m->cfg.logit_scale;
    float *T = normalised_rows(fg, n, bg, nb, E), *pr = falloc(K), *U = falloc((size_t)n * E);
    float *Wc = falloc((size_t)n * C), *grid = falloc((size_t)n * Np);
    int *idx = malloc((size_t)n * sizeof(int)), *redo = malloc((size_t)n * sizeof(int));
    carseg_status st = CARSEG_OK;
    if (!T || !pr || !U || !Wc || !grid || !idx || !redo) {
        st = set_err(CARSEG_ENOMEM, "cam: out of memory (%d queries)", n);
        goto done;
    }
    for (int i = 0; i < n; i++) idx[i] = i;
    upstream(ci, T, K, s, idx, n, pr, U);
    if (probs_out) memcpy(probs_out, pr, (size_t)K * sizeof(float));
    st = patch_grad_means(ci, U, n, Wc);
    if (st != CARSEG_OK) goto done;
    gradcam_grid(ci, Wc, n, grid);
    /* clipcam.py: a query whose Grad-CAM is all zero is redone without the background rows */
    int nr = 0;
    for (int i = 0; i < n; i++)
        if (nb > 0 && maxf(grid + (size_t)i * Np, Np) == 0) redo[nr++] = i;
    if (nr > 0) {
        upstream(ci, T, n, s, redo, nr, pr, U);
        st = patch_grad_means(ci, U, nr, Wc);
        if (st != CARSEG_OK) goto done;
        float *g2 = falloc((size_t)nr * Np);
        if (!g2) {
            st = set_err(CARSEG_ENOMEM, "cam: out of memory");
            goto done;
        }
        gradcam_grid(ci, Wc, nr, g2);
        for (int i = 0; i < nr; i++)
            memcpy(grid + (size_t)redo[i] * Np, g2 + (size_t)i * Np, (size_t)Np * sizeof(float));
        cs_free(g2);
    }
    if (grid_out) memcpy(grid_out, grid, (size_t)n * Np * sizeof(float));
    st = refine(ci, grid, n, p->lambda, p->fix_box_clamp, masks);
done:
    cs_free(T), cs_free(pr), cs_free(U), cs_free(Wc), cs_free(grid);
    free(idx), free(redo);
    return st;
}

carseg_status cam_proposals_naive(const clip_model *gen, const float *x_in, int gh, int gw,
                                  const float *attn, int n_attn, int H, int W,
                                  const float *fg, int n, const float *bg, int nb,
                                  const cam_params *p, float *masks, float *grid_out,
                                  float *probs_out) {
    if (!gen || !p || n < 0 || nb < 0 || (n > 0 && (!fg || !masks)) || (nb > 0 && !bg))
        return set_err(CARSEG_EINVAL, "cam_proposals_naive: bad arguments");
    float s = p->logit_scale > 0 ? p->logit_scale : gen->cfg.logit_scale;
    int E = gen->cfg.embed, K = n + nb;
    carseg_status st = CARSEG_OK;
    for (int i = 0; i < n && st == CARSEG_OK; i++) {
        cam_image *ci = NULL;
        st = cam_prepare_tokens(gen, x_in, gh, gw, attn, n_attn, H, W, &ci);
        if (st != CARSEG_OK) break;
        int L = ci->L, C = ci->C, Np = ci->Np;
        float *T = normalised_rows(fg, n, bg, nb, E), *pr = falloc(K), *G = falloc((size_t)L * C);
        float *g = falloc(Np), *wc = falloc(C);
        if (!T || !pr || !G || !g || !wc) st = set_err(CARSEG_ENOMEM, "cam: out of memory");
        for (int pass = 0; pass < 2 && st == CARSEG_OK; pass++) {
            int Kp = pass == 0 ? K : n;
            st = cam_grad_full(ci, T, Kp, s, &i, 1, G, pr);
            if (st != CARSEG_OK) break;
            if (pass == 0 && i == 0 && probs_out) memcpy(probs_out, pr, (size_t)K * sizeof(float));
            for (int c = 0; c < C; c++) {
                double acc = 0;
                for (int t = 1; t < L; t++) acc += G[(size_t)t * C + c];
                wc[c] = (float)(acc / Np);
            }
            for (int t = 1; t < L; t++) {
                double acc = 0;
                for (int c = 0; c < C; c++) acc += (double)wc[c] * ci->a[(size_t)t * C + c];
                g[t - 1] = acc > 0 ? (float)acc : 0.0f;
            }
            minmax(g, Np);
            minmax(g, Np);
            if (!(maxf(g, Np) == 0 && nb > 0)) break;
        }
        if (st == CARSEG_OK) {
            if (grid_out) memcpy(grid_out + (size_t)i * Np, g, (size_t)Np * sizeof(float));
            st = refine(ci, g, 1, p->lambda, p->fix_box_clamp, masks + (size_t)i * H * W);
        }
        cs_free(T), cs_free(pr), cs_free(G), cs_free(g), cs_free(wc);
        cam_image_free(ci);
    }
    return st;
}
