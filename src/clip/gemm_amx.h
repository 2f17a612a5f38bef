/* gemm_amx.h — reduced-precision matrix products on Intel AMX (AMX-TILE + AMX-BF16) for the
 * linear layers of the CLIP image tower (nn.Linear: out = x @ w^T + b).
 *
 * Two modes besides the default float32 (nn.c / OpenBLAS):
 *   GEMM_BF16X3  each float x = hi + lo, hi = bf16(x), lo = bf16(x - hi) (round to nearest even);
 *                C += A_hi B_hi + A_hi B_lo + A_lo B_hi, accumulated in float32 in the AMX tiles.
 *                ~1e-5 relative error ("near fp32"); fp16 weights are exactly hi + lo.
 *   GEMM_BF16    C += A_hi B_hi only (~1e-2 relative error, 3x fewer tile products).
 *
 * Weights are packed once (gemm_pack_weights) into the AMX B-tile VNNI layout, zero-padded to
 * whole tiles (IC to a multiple of 32, OC to a multiple of 16); activations are split and packed
 * per call into A tiles. Both layouts are plain C (gemm_split_bf16, gemm_pack_weights) so that they
 * are testable without AMX; gemm_linear_ref computes the same products from the packed data
 * in portable scalar code, in the order of the tile products (the tile unit's own rounding
 * inside a product differs in the last bits).
 *
 * Packed B layout: column block j (16 output channels), k-step s (32 inputs): one 1 KB tile of
 * 16 rows (input pairs) x 16 columns x 2: element [r][c][p] = w[16 j + c][32 s + 2 r + p],
 * at ((j * ks + s) * 16 + r) * 32 + 2 c + p. Packed A layout: row block i (16 rows), k-step s:
 * [r][k] = x[16 i + r][32 s + k] at ((i * ks + s) * 16 + r) * 32 + k.
 *
 * AMX needs the CPU feature bits, the OS's XSAVE support for tile data and a per-process
 * permission (arch_prctl ARCH_REQ_XCOMP_PERM); gemm_amx_check() does all three once.
 * CARSEG_NO_AMX=1 in the environment makes carseg behave as on a machine without AMX.
 */
#ifndef CARSEG_GEMM_AMX_H
#define CARSEG_GEMM_AMX_H

#include <stddef.h>
#include <stdint.h>

#include "carseg.h"

enum { GEMM_FP32 = 0, GEMM_BF16X3 = 1, GEMM_BF16 = 2 };

typedef struct {
    int mode;            /* GEMM_BF16X3 or GEMM_BF16 */
    int OC, IC;          /* logical output / input channels */
    int nb, ks;          /* column blocks of 16 (ceil(OC/16)), k-steps of 32 (ceil(IC/32)) */
    uint16_t *hi, *lo;   /* (nb, ks, 16, 32) bf16 each; lo NULL in GEMM_BF16 */
    int moved;           /* the planes live in the float32 matrix's memory (gemm_pack_move) */
} gemm_pack;

/* Per-call scratch of gemm_linear (the packed activations), reused across calls. */
typedef struct {
    void *p;
    size_t n;
} gemm_work;
void gemm_work_free(gemm_work *w);

/* CARSEG_OK when AMX can run in this process (features, OS support, permission granted); else
 * CARSEG_EINVAL with a message saying what is missing. Thread-safe; the checks run once. */
carseg_status gemm_amx_check(void);
/* Whether the hardware and OS allow AMX here (ignores CARSEG_NO_AMX; the kernels' own check). */
int gemm_amx_usable(void);

/* Packs w (OC rows of IC floats, row stride IC) for `mode`. p is overwritten (free with
 * gemm_pack_free). Sub-ranges of a larger matrix: pass w + first_row * IC and the row count. */
carseg_status gemm_pack_weights(gemm_pack *p, const float *w, int OC, int IC, int mode);
void gemm_pack_free(gemm_pack *p);
size_t gemm_pack_bytes(const gemm_pack *p);

/* bf16x3 packs of fp16 checkpoints hold the weights losslessly (hi + lo has 16 significant bits,
 * fp16 11), so the float32 matrix need not be kept beside them:
 * gemm_pack_lossless: p is bf16x3, its planes take exactly the matrix's bytes (OC % 16 == 0,
 * IC % 32 == 0) and gemm_unpack_weights gives back w bit for bit (signed zeros included).
 * gemm_pack_move: the planes move into mem, the OC * IC floats of the matrix they were packed
 * from (overwritten); p then borrows them (gemm_pack_free leaves them). Needs lossless.
 * gemm_unpack_weights: w (OC, IC) = hi + lo (bf16x3) or hi (bf16). */
int gemm_pack_lossless(const gemm_pack *p, const float *w);
void gemm_pack_move(gemm_pack *p, void *mem);
void gemm_unpack_weights(const gemm_pack *p, float *w);

/* out (N, OC; row stride ldo) = x (N, IC; row stride IC) @ w^T + b, with nn_linear_ex's
 * flags (NN_ACCUMULATE: out += ...; NN_GELU: QuickGELU after the bias). b may be NULL.
 * Requires gemm_amx_check() == CARSEG_OK (the caller checked when it packed). work: scratch kept
 * between calls (may be NULL). OpenMP over column blocks; serial inside a parallel region. */
void gemm_linear(float *out, int ldo, const float *x, int N, const gemm_pack *w, const float *b,
                 int flags, gemm_work *work);

/* gemm_linear with the output channels of two packs side by side (w1's, then w2's; b covers
 * both), in one parallel region and one split of x: in_proj's q and k|v. w1->OC must be a multiple
 * of 32, the input channels and modes equal. The same bits as two gemm_linear calls. */
void gemm_linear2(float *out, int ldo, const float *x, int N, const gemm_pack *w1,
                  const gemm_pack *w2, const float *b, int flags, gemm_work *work);

/* ln_out (N, IC) = nn_layernorm(x, ln_w, ln_b), then gemm_linear2 (w2 non-NULL) or gemm_linear
 * (w2 NULL) on ln_out: the LayerNorm runs inside the product's parallel region (16 rows at a
 * time, before each block's split), saving a fork/join. The same bits as the separate calls.
 * x and ln_out must not overlap. */
void gemm_linear_ln(float *out, int ldo, const float *x, int N, const float *ln_w,
                    const float *ln_b, float *ln_out, const gemm_pack *w1, const gemm_pack *w2,
                    const float *b, int flags, gemm_work *work);

/* One ResidualAttentionBlock (non-causal, no attention maps) on x (B, L, C) in place, in one
 * parallel region with barriers between the steps: ln_1 + in_proj (gemm_linear_ln, q and k|v),
 * gemm_attention, out_proj (accumulated into x), ln_2 + c_fc + QuickGELU, c_proj (accumulated).
 * Scratch: ln (BL, C), qkv (BL, 3C), att (BL, C), hid (BL, M). The same bits as those calls one
 * by one. Returns 0, having done nothing, where it declines (C % 32, heads gemm_attention does
 * not take, out of memory): the caller then runs the steps itself. */
typedef struct {
    const gemm_pack *pk;   /* 5 packs: q, k|v (in_proj rows C.. 3C), out_proj, c_fc, c_proj */
    const float *ln1_w, *ln1_b, *in_b, *out_b, *ln2_w, *ln2_b, *fc_b, *proj_b;
} gemm_block_w;
int gemm_block(float *x, float *ln, float *qkv, float *att, float *hid, int B, int L, int C,
               int M, int NH, const gemm_block_w *bw, gemm_work *work);

/* The same product in portable scalar code from the packed weights and the scalar split, in the
 * kernels' order of tile products (no AMX needed): for tests. */
void gemm_linear_ref(float *out, int ldo, const float *x, int N, const gemm_pack *w,
                     const float *b, int flags);

/* nn_attention (non-causal) with both products, S = q k^T / sqrt(hd) and out = P v, in `mode`
 * (GEMM_BF16X3 or GEMM_BF16) on AMX: q, k, P and v split like the linear layers' activations,
 * float32 sums, nn.c's softmax; probs and avg as nn_attention, except that probs may be NULL
 * when avg is (the probabilities then stay in a per-thread block of 32 rows, in cache).
 * Requires hd = C / NH a multiple of 16. Returns 1 when done, 0 when it cannot run here (no AMX, other shapes, out of memory:
 * the caller then runs nn_attention). OpenMP over (batch, head); each one thread's. */
int gemm_attention(float *out, float *probs, float *avg, const float *qkv, int B, int L, int C,
                   int NH, int mode);

/* float -> bf16 bits, round to nearest even, denormals to signed zero (as VCVTNE2PS2BF16 and the
 * AMX units treat them), NaN stays NaN; and back. */
uint16_t gemm_f32_to_bf16(float x);
float gemm_bf16_to_f32(uint16_t h);

/* Splits and packs x (N, IC) into A tiles: hi (and lo unless NULL) each (ceil(N/16), ks, 16, 32);
 * padding rows and columns are zero. gemm_split_ref: portable; gemm_split: AVX-512 BF16 when AMX
 * is usable (the same bits), else the portable one. */
void gemm_split_ref(const float *x, int N, int IC, uint16_t *hi, uint16_t *lo);
void gemm_split(const float *x, int N, int IC, uint16_t *hi, uint16_t *lo);

#endif
