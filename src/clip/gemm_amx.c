/* gemm_amx.c — bf16x3 / bf16 matrix products on Intel AMX for the CLIP image tower (see
 * gemm_amx.h). Not in the reference: OpenAI CLIP runs these products as torch.nn.Linear in
 * float32 (or fp16 on GPU); this is an opt-in approximation of them.
 *
 * The AMX code is compiled with per-function target attributes, so the rest of the build stays
 * portable and the functions only run after gemm_amx_check() said the CPU and OS support them.
 * Kernel: 2 x 2 output tiles (32 x 32 floats) in tiles 0-3, A tiles in 4-5, B tiles in 6-7;
 * per k-step of 32, bf16x3 runs A_lo B_hi, A_hi B_hi, A_hi B_lo (8 tile loads, 12 products).
 */
#include "gemm_amx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "util.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define GEMM_HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))
#else
#define GEMM_HAVE_AMX 0
#endif

// ---------------------------------------------------------------------------------------------
// bf16 conversion, splitting and packing (portable)

uint16_t gemm_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) {                    /* inf, nan */
        if (u & 0x007fffffu) return (uint16_t)((u >> 16) | 0x40u);   /* quiet nan */
        return (uint16_t)(u >> 16);
    }
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);   /* denormal -> 0 */
    u += 0x7fffu + ((u >> 16) & 1u);                           /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float gemm_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* hi and lo halves of x: x ~ hi + lo (exactly for values with <= 16 significant bits) */
static inline void split1(float x, uint16_t *hi, uint16_t *lo) {
    uint16_t h = gemm_f32_to_bf16(x);
    float r = x - gemm_bf16_to_f32(h);
    if (!isfinite(x)) r = 0;   /* the vector code gives nan there; nothing finite is lost */
    *hi = h;
    if (lo) *lo = gemm_f32_to_bf16(r);
}

void gemm_split_ref(const float *x, int N, int IC, uint16_t *hi, uint16_t *lo) {
    int ks = (IC + 31) / 32, rb = (N + 15) / 16;
    for (int i = 0; i < rb; i++)
        for (int s = 0; s < ks; s++)
            for (int r = 0; r < 16; r++)
                for (int k = 0; k < 32; k++) {
                    int row = 16 * i + r, col = 32 * s + k;
                    size_t o = (((size_t)i * ks + s) * 16 + r) * 32 + k;
                    float v = row < N && col < IC ? x[(size_t)row * IC + col] : 0.0f;
                    split1(v, &hi[o], lo ? &lo[o] : NULL);
                }
}

static void pack_block_vec(uint16_t *hi, uint16_t *lo, const float *w, size_t ldw, int OC, int IC,
                           int j, int ks);

carseg_status gemm_pack_weights(gemm_pack *p, const float *w, int OC, int IC, int mode) {
    memset(p, 0, sizeof *p);
    if (OC <= 0 || IC <= 0 || !w || (mode != GEMM_BF16X3 && mode != GEMM_BF16))
        return set_err(CARSEG_EINVAL, "gemm_pack_weights: invalid arguments (%d x %d, mode %d)",
                       OC, IC, mode);
    p->mode = mode, p->OC = OC, p->IC = IC;
    p->nb = (OC + 15) / 16, p->ks = (IC + 31) / 32;
    size_t n = (size_t)p->nb * p->ks * 512;
    p->hi = cs_malloc(n * sizeof(uint16_t));
    if (mode == GEMM_BF16X3) p->lo = cs_malloc(n * sizeof(uint16_t));
    if (!p->hi || (mode == GEMM_BF16X3 && !p->lo)) {
        gemm_pack_free(p);
        return set_err(CARSEG_ENOMEM, "gemm_pack_weights: out of memory (%d x %d)", OC, IC);
    }
    int nb = p->nb, ks = p->ks, vec = gemm_amx_usable();
#pragma omp parallel for schedule(static) if ((size_t)OC * IC > 65536)
    for (int j = 0; j < nb; j++) {
        if (vec) {   /* the same bits, AVX-512 BF16 (the split of a non-finite value aside) */
            pack_block_vec(p->hi, p->lo, w, (size_t)IC, OC, IC, j, ks);
            continue;
        }
        for (int s = 0; s < ks; s++)
            for (int c = 0; c < 16; c++)      /* reads: one contiguous row segment per c */
                for (int r = 0; r < 16; r++)
                    for (int q = 0; q < 2; q++) {
                        int o = 16 * j + c, k = 32 * s + 2 * r + q;
                        size_t d = (((size_t)j * ks + s) * 16 + r) * 32 + 2 * c + q;
                        float v = o < OC && k < IC ? w[(size_t)o * IC + k] : 0.0f;
                        split1(v, &p->hi[d], p->lo ? &p->lo[d] : NULL);
                    }
    }
    return CARSEG_OK;
}

void gemm_pack_free(gemm_pack *p) {
    if (!p) return;
    if (!p->moved) {
        cs_free(p->hi);
        cs_free(p->lo);
    }
    memset(p, 0, sizeof *p);
}

/* hi + lo as float; lo == +0 keeps hi's sign of zero */
static inline float unsplit1(uint16_t hi, uint16_t lo) {
    return lo ? gemm_bf16_to_f32(hi) + gemm_bf16_to_f32(lo) : gemm_bf16_to_f32(hi);
}

/* Walks column block j of a pack in its own order (tile by tile, row by row: the planes read
 * sequentially, w within a 16 x 32 window): unpack (w written) or compare (w read; the number
 * of elements that hi + lo does not give back bit for bit). Elements outside OC x IC are not
 * visited. */
static size_t unpack_block(const gemm_pack *p, int j, float *w, const float *cmp) {
    int OC = p->OC, IC = p->IC, ks = p->ks;
    size_t bad = 0;
    for (int s = 0; s < ks; s++)
        for (int r = 0; r < 16; r++) {
            size_t d = (((size_t)j * ks + s) * 16 + r) * 32;
            for (int c = 0; c < 16 && 16 * j + c < OC; c++)
                for (int q = 0; q < 2; q++) {
                    int k = 32 * s + 2 * r + q;
                    if (k >= IC) continue;
                    size_t e = (size_t)(16 * j + c) * IC + k;
                    float v = unsplit1(p->hi[d + 2 * c + q], p->lo ? p->lo[d + 2 * c + q] : 0);
                    if (cmp) bad += memcmp(&v, &cmp[e], sizeof v) != 0;
                    else w[e] = v;
                }
        }
    return bad;
}

void gemm_unpack_weights(const gemm_pack *p, float *w) {
    int nb = p->nb;
#pragma omp parallel for schedule(static) if ((size_t)p->OC * p->IC > 65536)
    for (int j = 0; j < nb; j++) unpack_block(p, j, w, NULL);
}

int gemm_pack_lossless(const gemm_pack *p, const float *w) {
    if (p->mode != GEMM_BF16X3 || !p->lo || p->moved || p->OC % 16 || p->IC % 32) return 0;
    int nb = p->nb;
    size_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if ((size_t)p->OC * p->IC > 65536)
    for (int j = 0; j < nb; j++) bad += unpack_block(p, j, NULL, w);
    return bad == 0;
}

void gemm_pack_move(gemm_pack *p, void *mem) {
    size_t n = (size_t)p->nb * p->ks * 512;
    CS_ASSERT(p->mode == GEMM_BF16X3 && p->lo && !p->moved &&
              n * 2 * sizeof(uint16_t) == (size_t)p->OC * p->IC * sizeof(float));
    uint16_t *hi = mem, *lo = hi + n;
    memcpy(hi, p->hi, n * sizeof(uint16_t));
    memcpy(lo, p->lo, n * sizeof(uint16_t));
    cs_free(p->hi);
    cs_free(p->lo);
    p->hi = hi, p->lo = lo, p->moved = 1;
}

size_t gemm_pack_bytes(const gemm_pack *p) {
    return (size_t)p->nb * p->ks * 512 * sizeof(uint16_t) * (p->lo ? 2 : 1);
}

void gemm_work_free(gemm_work *w) {
    cs_free(w->p);
    w->p = NULL;
    w->n = 0;
}

/* One output tile's (16 x 16) worth of products for k-step s, in the tile unit's order:
 * for each row, column: acc += a[2k] b[2k] then acc += a[2k+1] b[2k+1], k = 0..15, each an exact
 * bf16 product added with one rounding (a float fma on exact products). */
static void ref_dp(float acc[16][16], const uint16_t *a, const uint16_t *b) {
    for (int m = 0; m < 16; m++)
        for (int k = 0; k < 16; k++)
            for (int n = 0; n < 16; n++) {
                float a0 = gemm_bf16_to_f32(a[m * 32 + 2 * k]), a1 = gemm_bf16_to_f32(a[m * 32 + 2 * k + 1]);
                float b0 = gemm_bf16_to_f32(b[k * 32 + 2 * n]), b1 = gemm_bf16_to_f32(b[k * 32 + 2 * n + 1]);
                acc[m][n] = fmaf(a0, b0, acc[m][n]);
                acc[m][n] = fmaf(a1, b1, acc[m][n]);
            }
}

static void store_tile(float *out, int ldo, const float acc[16][16], int rows, int cols, int flags,
                       const float *b) {
    nn_epilogue(out, ldo, &acc[0][0], 16, b, rows, cols, flags);
}

void gemm_linear_ref(float *out, int ldo, const float *x, int N, const gemm_pack *w,
                     const float *b, int flags) {
    if (N <= 0) return;
    int ks = w->ks, rb = (N + 15) / 16, x3 = w->mode == GEMM_BF16X3;
    size_t na = (size_t)rb * ks * 512;
    uint16_t *ah = malloc(na * sizeof(uint16_t)), *al = x3 ? malloc(na * sizeof(uint16_t)) : NULL;
    if (!ah || (x3 && !al)) { free(ah); free(al); return; }   /* tests only: they see garbage */
    gemm_split_ref(x, N, w->IC, ah, al);
    for (int i = 0; i < rb; i++)
        for (int j = 0; j < w->nb; j++) {
            float acc[16][16] = {{0}};
            for (int s = 0; s < ks; s++) {
                size_t ao = ((size_t)i * ks + s) * 512, bo = ((size_t)j * ks + s) * 512;
                if (x3) ref_dp(acc, al + ao, w->hi + bo);
                ref_dp(acc, ah + ao, w->hi + bo);
                if (x3) ref_dp(acc, ah + ao, w->lo + bo);
            }
            int rows = N - 16 * i < 16 ? N - 16 * i : 16, cols = w->OC - 16 * j < 16 ? w->OC - 16 * j : 16;
            store_tile(out + (size_t)16 * i * ldo + 16 * j, ldo, acc, rows, cols, flags,
                       b ? b + 16 * j : NULL);
        }
    free(ah);
    free(al);
}

// ---------------------------------------------------------------------------------------------
// AMX

#if GEMM_HAVE_AMX

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int g_amx = 0;                 /* 0 unknown, 1 usable, -1 not */
static char g_amx_why[160];

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int amx_probe(char *why, size_t n) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) {
        snprintf(why, n, "this CPU or OS lacks XSAVE (needed for AMX)");
        return -1;
    }
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22))) {
        snprintf(why, n, "this CPU has no AMX-TILE/AMX-BF16 (Intel Sapphire Rapids or later needed)");
        return -1;
    }
    int avx512 = (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31));
    unsigned a1 = 0, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    if (!avx512 || !(a1 & (1u << 5))) {
        snprintf(why, n, "this CPU has AMX but lacks AVX512-BF16");
        return -1;
    }
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0xe6) != 0xe6 || (xcr0 & (3u << 17)) != (3u << 17)) {
        snprintf(why, n, "the OS does not enable AVX-512/AMX tile state (XCR0 %#llx)",
                 (unsigned long long)xcr0);
        return -1;
    }
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
        snprintf(why, n, "the kernel refused AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM; "
                 "Linux 5.16 or later needed)");
        return -1;
    }
    return 1;
}

static int amx_state(void) {
    int s = __atomic_load_n(&g_amx, __ATOMIC_ACQUIRE);
    if (s == 0) {   /* racing first callers both probe; the probe is idempotent */
        char why[160];
        s = amx_probe(why, sizeof why);
        if (s < 0) {
            static int once;
            if (!__atomic_exchange_n(&once, 1, __ATOMIC_ACQ_REL))
                snprintf(g_amx_why, sizeof g_amx_why, "%s", why);
        }
        __atomic_store_n(&g_amx, s, __ATOMIC_RELEASE);
    }
    return s;
}

static int amx_disabled_by_env(void) {
    const char *env = getenv("CARSEG_NO_AMX");
    return env && *env && strcmp(env, "0");
}

carseg_status gemm_amx_check(void) {
    if (amx_disabled_by_env())
        return set_err(CARSEG_EINVAL, "AMX precision modes unavailable: disabled by CARSEG_NO_AMX");
    if (amx_state() > 0) return CARSEG_OK;
    return set_err(CARSEG_EINVAL, "AMX precision modes unavailable: %s",
                   g_amx_why[0] ? g_amx_why : "AMX not supported");
}

int gemm_amx_usable(void) { return amx_state() > 0; }

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* all eight tiles 16 rows x 64 bytes. A static object: GCC 12 does not see that ldtilecfg reads
 * the whole 64 bytes and dropped the stores to a local copy. */
static const tile_config g_tile_cfg __attribute__((aligned(64))) = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

AMX_TARGET static void tiles_begin(void) { _tile_loadconfig(&g_tile_cfg); }

AMX_TARGET static void tiles_end(void) { _tile_release(); }

/* mr x nr output tiles (mr, nr in {1, 2}) over n k-steps into cb (32 x 32 floats, row stride ldc),
 * starting from cb's values when load_c, else from zero. ah/al: A tiles of the first row block at
 * the first k-step (the next row block is st elements further); bh/bl: B tiles likewise. */
#define AMX_KERNEL(NAME, MR, NR, X3)                                                              \
    AMX_TARGET static void NAME(int n, size_t st, const uint16_t *ah, const uint16_t *al,         \
                                const uint16_t *bh, const uint16_t *bl, float *cb, int ldc, int load_c) {  \
        if (load_c) {                                                                             \
            _tile_loadd(0, cb, 4 * ldc);                                                              \
            if (NR > 1) _tile_loadd(1, cb + 16, 4 * ldc);                                             \
            if (MR > 1) _tile_loadd(2, cb + 16 * ldc, 4 * ldc);                                        \
            if (MR > 1 && NR > 1) _tile_loadd(3, cb + 16 * ldc + 16, 4 * ldc);                         \
        } else {                                                                                  \
            _tile_zero(0);                                                                        \
            if (NR > 1) _tile_zero(1);                                                            \
            if (MR > 1) _tile_zero(2);                                                            \
            if (MR > 1 && NR > 1) _tile_zero(3);                                                  \
        }                                                                                         \
        for (int s = 0; s < n; s++) {                                                             \
            size_t o = (size_t)s * 512;                                                           \
            if (X3) {                                                                             \
                _tile_loadd(4, al + o, 64);                                                       \
                if (MR > 1) _tile_loadd(5, al + st + o, 64);                                      \
            } else {                                                                              \
                _tile_loadd(4, ah + o, 64);                                                       \
                if (MR > 1) _tile_loadd(5, ah + st + o, 64);                                      \
            }                                                                                     \
            _tile_loadd(6, bh + o, 64);                                                           \
            if (NR > 1) _tile_loadd(7, bh + st + o, 64);                                          \
            _tile_dpbf16ps(0, 4, 6);                                                              \
            if (NR > 1) _tile_dpbf16ps(1, 4, 7);                                                  \
            if (MR > 1) _tile_dpbf16ps(2, 5, 6);                                                  \
            if (MR > 1 && NR > 1) _tile_dpbf16ps(3, 5, 7);                                        \
            if (X3) {                                                                             \
                _tile_loadd(4, ah + o, 64);                                                       \
                if (MR > 1) _tile_loadd(5, ah + st + o, 64);                                      \
                _tile_dpbf16ps(0, 4, 6);                                                          \
                if (NR > 1) _tile_dpbf16ps(1, 4, 7);                                              \
                if (MR > 1) _tile_dpbf16ps(2, 5, 6);                                              \
                if (MR > 1 && NR > 1) _tile_dpbf16ps(3, 5, 7);                                    \
                _tile_loadd(6, bl + o, 64);                                                       \
                if (NR > 1) _tile_loadd(7, bl + st + o, 64);                                      \
                _tile_dpbf16ps(0, 4, 6);                                                          \
                if (NR > 1) _tile_dpbf16ps(1, 4, 7);                                              \
                if (MR > 1) _tile_dpbf16ps(2, 5, 6);                                              \
                if (MR > 1 && NR > 1) _tile_dpbf16ps(3, 5, 7);                                    \
            }                                                                                     \
        }                                                                                         \
        _tile_stored(0, cb, 4 * ldc);                                                                 \
        if (NR > 1) _tile_stored(1, cb + 16, 4 * ldc);                                                \
        if (MR > 1) _tile_stored(2, cb + 16 * ldc, 4 * ldc);                                           \
        if (MR > 1 && NR > 1) _tile_stored(3, cb + 16 * ldc + 16, 4 * ldc);                            \
    }

AMX_KERNEL(k11, 1, 1, 0)
AMX_KERNEL(k12, 1, 2, 0)
AMX_KERNEL(k21, 2, 1, 0)
AMX_KERNEL(k11x3, 1, 1, 1)
AMX_KERNEL(k12x3, 1, 2, 1)
AMX_KERNEL(k21x3, 2, 1, 1)

/* The 2 x 2 kernels (nearly all the work), software-pipelined: tiles are not renamed, so a load
 * into a tile waits for the products reading it; each load is issued right after the last
 * product that reads the old contents, so that it overlaps with the products that follow. Same
 * products in the same order per output tile as AMX_KERNEL. */
#define C_INIT()                                                                                  \
    if (load_c) {                                                                                 \
        _tile_loadd(0, cb, 4 * ldc);                                                                  \
        _tile_loadd(1, cb + 16, 4 * ldc);                                                             \
        _tile_loadd(2, cb + 16 * ldc, 4 * ldc);                                                        \
        _tile_loadd(3, cb + 16 * ldc + 16, 4 * ldc);                                                   \
    } else {                                                                                      \
        _tile_zero(0);                                                                            \
        _tile_zero(1);                                                                            \
        _tile_zero(2);                                                                            \
        _tile_zero(3);                                                                            \
    }
#define C_STORE()                                                                                 \
    _tile_stored(0, cb, 4 * ldc);                                                                     \
    _tile_stored(1, cb + 16, 4 * ldc);                                                                \
    _tile_stored(2, cb + 16 * ldc, 4 * ldc);                                                           \
    _tile_stored(3, cb + 16 * ldc + 16, 4 * ldc);

AMX_TARGET static void k22(int n, size_t st, const uint16_t *ah, const uint16_t *al,
                           const uint16_t *bh, const uint16_t *bl, float *cb, int ldc, int load_c) {
    (void)al, (void)bl;
    C_INIT();
    _tile_loadd(4, ah, 64);
    _tile_loadd(6, bh, 64);
    _tile_loadd(5, ah + st, 64);
    _tile_loadd(7, bh + st, 64);
    for (int s = 0; s < n; s++) {
        size_t o = (size_t)(s + 1) * 512;
        int more = s + 1 < n;
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (more) _tile_loadd(4, ah + o, 64);
        _tile_dpbf16ps(2, 5, 6);
        if (more) _tile_loadd(6, bh + o, 64);
        _tile_dpbf16ps(3, 5, 7);
        if (more) {
            _tile_loadd(5, ah + st + o, 64);
            _tile_loadd(7, bh + st + o, 64);
        }
    }
    C_STORE();
}

/* per k-step: A_lo B_hi, A_hi B_hi, A_hi B_lo (tiles 4/5: A, 6/7: B) */
AMX_TARGET static void k22x3(int n, size_t st, const uint16_t *ah, const uint16_t *al,
                             const uint16_t *bh, const uint16_t *bl, float *cb, int ldc, int load_c) {
    C_INIT();
    _tile_loadd(4, al, 64);
    _tile_loadd(6, bh, 64);
    _tile_loadd(7, bh + st, 64);
    _tile_loadd(5, al + st, 64);
    for (int s = 0; s < n; s++) {
        size_t o = (size_t)s * 512, o1 = o + 512;
        int more = s + 1 < n;
        /* A_lo B_hi */
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(4, ah + o, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        _tile_loadd(5, ah + st + o, 64);
        /* A_hi B_hi */
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        _tile_loadd(6, bl + o, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(3, 5, 7);
        _tile_loadd(7, bl + st + o, 64);
        /* A_hi B_lo */
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (more) _tile_loadd(4, al + o1, 64);
        _tile_dpbf16ps(2, 5, 6);
        if (more) _tile_loadd(6, bh + o1, 64);
        _tile_dpbf16ps(3, 5, 7);
        if (more) {
            _tile_loadd(7, bh + st + o1, 64);
            _tile_loadd(5, al + st + o1, 64);
        }
    }
    C_STORE();
}

typedef void (*amx_kernel)(int, size_t, const uint16_t *, const uint16_t *, const uint16_t *,
                           const uint16_t *, float *, int, int);
static const amx_kernel g_kernels[2][2][2] = {{{k11, k11x3}, {k12, k12x3}},
                                              {{k21, k21x3}, {k22, k22x3}}};

/* rows of x -> A tiles, 32 inputs at a time: hi = bf16(x), lo = bf16(x - hi) */
AMX_TARGET static void split_rows(const float *x, int N, int IC, int i, uint16_t *hi,
                                  uint16_t *lo) {
    int ks = (IC + 31) / 32;
    for (int s = 0; s < ks; s++) {
        int k0 = 32 * s, n = IC - k0 < 32 ? IC - k0 : 32;
        __mmask16 m0 = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
        __mmask16 m1 = (__mmask16)(n >= 32 ? 0xffff : n > 16 ? (1u << (n - 16)) - 1 : 0);
        for (int r = 0; r < 16; r++) {
            int row = 16 * i + r;
            size_t o = (((size_t)i * ks + s) * 16 + r) * 32;
            if (row >= N) {
                memset(hi + o, 0, 64);
                if (lo) memset(lo + o, 0, 64);
                continue;
            }
            const float *xr = x + (size_t)row * IC + k0;
            __m512 x0 = _mm512_maskz_loadu_ps(m0, xr), x1 = _mm512_maskz_loadu_ps(m1, xr + 16);
            __m512bh h = _mm512_cvtne2ps_pbh(x1, x0);
            _mm512_storeu_si512((void *)(hi + o), (__m512i)h);
            if (lo) {
                __m512i hb = (__m512i)h;
                __m512 h0 = _mm512_castsi512_ps(
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hb)), 16));
                __m512 h1 = _mm512_castsi512_ps(
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hb, 1)), 16));
                __m512bh l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0));
                _mm512_storeu_si512((void *)(lo + o), (__m512i)l);
            }
        }
    }
}

/* column block j of w (rows 16 j.., all k-steps) -> B tiles: per output row c, 32 inputs
 * converted at once and scattered as 16 (k, k+1) pairs to tile rows r = 0..15, column c */
AMX_TARGET static void pack_block_vec(uint16_t *hi, uint16_t *lo, const float *w, size_t ldw,
                                      int OC, int IC, int j, int ks) {
    const __m512i idx = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64,
                                         48, 32, 16, 0);   /* r * 16 (32-bit units) */
    for (int s = 0; s < ks; s++) {
        int k0 = 32 * s, n = IC - k0 < 32 ? IC - k0 : 32;
        __mmask16 m0 = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
        __mmask16 m1 = (__mmask16)(n >= 32 ? 0xffff : n > 16 ? (1u << (n - 16)) - 1 : 0);
        size_t t = ((size_t)j * ks + s) * 512;
        for (int c = 0; c < 16; c++) {
            int o = 16 * j + c;
            __mmask16 a = o < OC ? m0 : 0, b = o < OC ? m1 : 0;
            const float *wr = w + (size_t)(o < OC ? o : 0) * ldw + k0;
            __m512 x0 = _mm512_maskz_loadu_ps(a, wr), x1 = _mm512_maskz_loadu_ps(b, wr + 16);
            __m512bh h = _mm512_cvtne2ps_pbh(x1, x0);
            __m512i ix = _mm512_add_epi32(idx, _mm512_set1_epi32(c));
            _mm512_i32scatter_epi32((void *)(hi + t), ix, (__m512i)h, 4);
            if (lo) {
                __m512i hb = (__m512i)h;
                __m512 h0 = _mm512_castsi512_ps(
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hb)), 16));
                __m512 h1 = _mm512_castsi512_ps(
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hb, 1)), 16));
                __m512bh l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0));
                _mm512_i32scatter_epi32((void *)(lo + t), ix, (__m512i)l, 4);
            }
        }
    }
}

void gemm_split(const float *x, int N, int IC, uint16_t *hi, uint16_t *lo) {
    if (!gemm_amx_usable()) {
        gemm_split_ref(x, N, IC, hi, lo);
        return;
    }
    int rb = (N + 15) / 16;
#pragma omp parallel for schedule(static) if ((size_t)N * IC > 65536)
    for (int i = 0; i < rb; i++) split_rows(x, N, IC, i, hi, lo);
}

/* QuickGELU x sigmoid(1.702 x) = x / (1 + exp(-1.702 x)) on 16 floats: nn.c's expf_fast
 * (Cephes: x = n ln2 + r, degree-6 polynomial, 2^n from the exponent bits) with fused
 * multiply-adds, so within an ulp or two of nn_quickgelu, not bit-identical to it. */
AMX_TARGET static inline __m512 gelu16(__m512 x) {
    __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(-1.702f));
    y = _mm512_min_ps(y, _mm512_set1_ps(88.3762626647949f));
    y = _mm512_max_ps(y, _mm512_set1_ps(-87.3365447504f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), y);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512 e = _mm512_scalef_ps(p, n);   /* p 2^n */
    return _mm512_div_ps(x, _mm512_add_ps(e, _mm512_set1_ps(1.0f)));
}

/* out rows 32 p.., columns 32 cp.. (+)= the sums c (32 x 32), + bias, GELU: one pass over the
 * block, 16 floats at a time (out + c, then + b, then GELU: nn_epilogue's order) */
AMX_TARGET static void epilogue(float *out, int ldo, int N, int OC, int cp, int p, const float *c,
                                const float *b, int flags) {
    int r0 = 32 * p, rows = N - r0 < 32 ? N - r0 : 32;
    int c0 = 32 * cp, cols = OC - c0 < 32 ? OC - c0 : 32;
    __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xffff : (1u << cols) - 1);
    __mmask16 m1 = (__mmask16)(cols >= 32 ? 0xffff : cols > 16 ? (1u << (cols - 16)) - 1 : 0);
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (b) b0 = _mm512_maskz_loadu_ps(m0, b + c0), b1 = _mm512_maskz_loadu_ps(m1, b + c0 + 16);
    int acc = (flags & NN_ACCUMULATE) != 0, gelu = (flags & NN_GELU) != 0;
    float *o = out + (size_t)r0 * ldo + c0;
    for (int i = 0; i < rows; i++, o += ldo, c += 32) {
        __m512 v0 = _mm512_load_ps(c), v1 = _mm512_load_ps(c + 16);
        if (acc) {
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), v0);
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o + 16), v1);
        }
        if (b) v0 = _mm512_add_ps(v0, b0), v1 = _mm512_add_ps(v1, b1);
        if (gelu) v0 = gelu16(v0), v1 = gelu16(v1);
        _mm512_mask_storeu_ps(o, m0, v0);
        _mm512_mask_storeu_ps(o + 16, m1, v1);
    }
}

static int work_reserve(gemm_work *w, size_t n) {
    if (w->n >= n) return 1;
    cs_free(w->p);
    w->p = cs_malloc(n);
    w->n = w->p ? n : 0;
    return w->p != NULL;
}

static int threads_for(double flops) {
#ifdef _OPENMP
    if (omp_in_parallel() || flops < 4e6) return 1;
    return omp_get_max_threads();
#else
    (void)flops;
    return 1;
#endif
}

/* One or two packs side by side (w2 may be NULL): the second's columns follow the first's, whose
 * OC is then a multiple of 32 (column pairs do not straddle them). */
typedef struct {
    const gemm_pack *a, *b;
    int nb, OC, IC, ks, mode;
} packs2;

/* a, or a and b side by side (b may be NULL) */
static packs2 packs_of(const gemm_pack *a, const gemm_pack *b) {
    return (packs2){a, b, a->nb + (b ? b->nb : 0), a->OC + (b ? b->OC : 0), a->IC, a->ks, a->mode};
}

static const uint16_t *pk_plane(const packs2 *w, int j, int lo, size_t st) {
    const gemm_pack *p = w->a;
    if (j >= w->a->nb) p = w->b, j -= w->a->nb;
    return (lo ? p->lo : p->hi) + (size_t)j * st;
}

/* ln: when not NULL, x's rows go through nn_layernorm (ln->w, ln->b) into ln->out first, a block
 * of 16 rows at a time inside the parallel region, and the product reads ln->out */
typedef struct {
    const float *w, *b;
    float *out;
} ln_pre;

/* The blocking of one product for nt threads: sizes, then (lin_bind) the pointers into work */
typedef struct {
    int ks, rb, x3, ncp, rp, planes, kc, nt, KO, nko, rg;
    size_t st, na, abytes, bytes;
    uint16_t *ah, *al;
    float *acc_all;
} lin_plan;

static void lin_plan_make(lin_plan *pl, int N, const packs2 *w, int nt) {
    int ks = w->ks, rb = (N + 15) / 16, x3 = w->mode == GEMM_BF16X3;
    /* Column pairs (32 outputs) are the threads' work items, a contiguous range per thread.
     * Per column pair the k-steps go in chunks of kc whose B tiles stay in L1 while the row pairs
     * stream their A tiles from L2. So that those A tiles stay in L2, the k-steps go in outer
     * chunks of KO over all rows (A: <= 768 KB per chunk; the 32 x 32 partial sums of every row
     * pair and column pair of the thread wait in acc between outer chunks, <= 4 MB), or, when acc
     * would be larger (many rows and columns), the rows go in groups of rg row pairs over all
     * k-steps (A: <= 768 KB per group; with 1.5 MB groups a batch of 20 ViT-L/14 images took
     * 2-7 % longer). When all of A takes <= 1.25 MB (ViT-L/14's 257 rows at IC 1024: 1.09 MB),
     * one outer chunk: no partial sums wait in memory between chunks (ViT-L/14 224 bf16x3: 7 %
     * faster per forward than chunks of <= 768 KB). Sizes tuned on Sapphire Rapids-class cores
     * (2 MB L2). */
    int ncp = (w->nb + 1) / 2, rp = (rb + 1) / 2;   /* column pairs, row pairs */
    int planes = x3 ? 2 : 1, kc = x3 ? 4 : 8;
    size_t l2 = (size_t)3 << 19, st = (size_t)ks * 512;   /* 1.5 MB */
    int KO = (int)(l2 / 2 / ((size_t)rb * 16 * 64 * planes));
    KO = KO < kc ? kc : KO / kc * kc;
    if ((size_t)rb * 1024 * planes * ks <= ((size_t)5 << 18)) KO = ks;   /* all of A: 1.25 MB */
    int nko = (ks + KO - 1) / KO, rg = rp;
    if (nko > 1 && (size_t)((ncp + nt - 1) / nt) * rp * 4096 > ((size_t)4 << 20)) {
        KO = ks, nko = 1;
        rg = (int)(l2 / 2 / ((size_t)32 * 64 * planes * ks));
        rg = rg < 1 ? 1 : rg > rp ? rp : rg;
    }
    /* work: the packed activations, then the partial sums: (column pairs, rp, 32, 32) with outer
     * k chunks, else (threads, 2, rg, 32, 32) */
    size_t na = (size_t)rb * ks * 512, nacc = (size_t)(nko > 1 ? ncp * rp : 2 * nt * rg) * 1024;
    size_t abytes = (na * sizeof(uint16_t) * planes + 63) & ~(size_t)63;
    *pl = (lin_plan){ks, rb, x3, ncp, rp, planes, kc, nt, KO, nko, rg, st, na, abytes,
                     abytes + nacc * sizeof(float), NULL, NULL, NULL};
}

static void lin_bind(lin_plan *pl, gemm_work *work) {
    pl->ah = work->p, pl->al = pl->x3 ? pl->ah + pl->na : NULL;
    pl->acc_all = (float *)((char *)work->p + pl->abytes);
}

/* The barrier between two steps of a parallel region: gemm_block's cs_barrier (bounded spin,
 * then futex) when bar is given, else OpenMP's. */
static void step_barrier(cs_barrier *bar) {
    if (bar) {
        cs_barrier_wait(bar);
        return;
    }
#pragma omp barrier
}

/* The product, run by every thread of a team of pl->nt threads (or by one thread outside a
 * parallel region when pl->nt == 1): the split of x (the rows shared out, then step_barrier),
 * then the products. Ends without a barrier. */
static void lin_run(const lin_plan *pl, float *out, int ldo, const float *x, int N,
                    const packs2 *w, const float *b, int flags, const ln_pre *ln, cs_barrier *bar) {
    int ks = pl->ks, rb = pl->rb, x3 = pl->x3, ncp = pl->ncp, rp = pl->rp, kc = pl->kc;
    int KO = pl->KO, nko = pl->nko, rg = pl->rg;
    size_t st = pl->st;
    uint16_t *ah = pl->ah, *al = pl->al;
    float *acc_all = pl->acc_all;
    int t = 0, T = 1;
#ifdef _OPENMP
    t = omp_get_thread_num(), T = omp_get_num_threads();
#endif
    CS_ASSERT(T == pl->nt);
    /* the row blocks of the split in contiguous ranges (as schedule(static)), then a barrier */
    for (int i = (int)((long)rb * t / T); i < (int)((long)rb * (t + 1) / T); i++) {
        if (ln) {   /* rows 16 i..: nn_layernorm row by row, so the same bits as one call */
            size_t o = (size_t)16 * i * w->IC;
            nn_layernorm(ln->out + o, x + o, ln->w, ln->b, N - 16 * i < 16 ? N - 16 * i : 16,
                         w->IC);
            split_rows(ln->out, N, w->IC, i, ah, al);
        } else {
            split_rows(x, N, w->IC, i, ah, al);
        }
    }
    step_barrier(bar);
    int cp0 = (int)((long)ncp * t / T), cp1 = (int)((long)ncp * (t + 1) / T);
    float *acc = acc_all + (size_t)(nko > 1 ? cp0 * rp : 2 * t * rg) * 1024;
    if (cp1 > cp0) tiles_begin();
    for (int p0 = 0; cp1 > cp0 && p0 < rp; p0 += rg) {
        int p1 = p0 + rg < rp ? p0 + rg : rp;
        /* A column pair's epilogue (out (+)= sums, + bias, GELU) runs interleaved with the
         * next column pair's first products: its loads and stores of out (strided rows,
         * cache misses) then overlap with the tile unit's work. */
        int pend = -1;
        const float *pend_ac = NULL;
        for (int ko = 0; ko < nko; ko++) {
            int s1 = (ko + 1) * KO < ks ? (ko + 1) * KO : ks;
            for (int cp = cp0; cp < cp1; cp++) {
                int j = 2 * cp, nr = j + 1 < w->nb ? 2 : 1;
                /* ac[p - p0]: the sums of row pair p (double-buffered without outer k
                 * chunks, for the pending epilogue) */
                float *ac = acc + (nko > 1 ? (size_t)(cp - cp0) * rp * 1024
                                           : (size_t)((cp - cp0) & 1) * rg * 1024);
                const uint16_t *bh = pk_plane(w, j, 0, st);
                const uint16_t *bl = x3 ? pk_plane(w, j, 1, st) : NULL;
                /* software prefetch of the next column pair's B tiles (this k range, hi then
                 * lo: 2 contiguous runs) spread over this pair's kernel calls: the weights
                 * come from DRAM once per forward */
                const char *pf = NULL;
                int pfn = 0, pf_per = 0;
                if (cp + 1 < cp1) {
                    pf = (const char *)(pk_plane(w, j + 2, 0, st) + (size_t)ko * KO * 512);
                    pfn = (int)(((size_t)(s1 - ko * KO) * 1024 * (j + 3 < w->nb ? 2 : 1)) / 64);
                    int calls = ((s1 - ko * KO + kc - 1) / kc) * (p1 - p0);
                    pf_per = (pfn + calls - 1) / calls;
                }
                for (int s0 = ko * KO; s0 < s1; s0 += kc) {
                    int n = s1 - s0 < kc ? s1 - s0 : kc;
                    size_t kof = (size_t)s0 * 512;
                    for (int p = p0; p < p1; p++) {
                        int i = 2 * p, mr = i + 1 < rb ? 2 : 1;
                        const uint16_t *a_h = ah + (size_t)i * st + kof;
                        const uint16_t *a_l = x3 ? al + (size_t)i * st + kof : NULL;
                        g_kernels[mr - 1][nr - 1][x3](n, st, a_h, a_l, bh + kof,
                                                      x3 ? bl + kof : NULL,
                                                      ac + (size_t)(p - p0) * 1024, 32, s0 > 0);
                        if (pfn > 0) {   /* the next column pair's B tiles, into L2 */
                            int q = pfn < pf_per ? pfn : pf_per;
                            for (int z = 0; z < q; z++)
                                _mm_prefetch(pf + (size_t)z * 64, _MM_HINT_T1);
                            pf += (size_t)q * 64, pfn -= q;
                        }
                        if (pend >= 0 && s0 == ko * KO)
                            epilogue(out, ldo, N, w->OC, pend, p, pend_ac + (size_t)(p - p0) * 1024,
                                     b, flags);
                    }
                }
                pend = -1;
                if (ko == nko - 1) pend = cp, pend_ac = ac;
            }
        }
        for (int p = p0; pend >= 0 && p < p1; p++)
            epilogue(out, ldo, N, w->OC, pend, p, pend_ac + (size_t)(p - p0) * 1024, b, flags);
    }
    if (cp1 > cp0) tiles_end();
}

static void linear_packs(float *out, int ldo, const float *x, int N, const packs2 *w,
                         const float *b, int flags, gemm_work *work, const ln_pre *ln) {
    if (N <= 0) return;
    CS_ASSERT(gemm_amx_usable());
    int nt = threads_for(2.0 * N * w->OC * w->IC * (w->mode == GEMM_BF16X3 ? 3 : 1));
    if (nt > (w->nb + 1) / 2) nt = (w->nb + 1) / 2;
    lin_plan pl;
    lin_plan_make(&pl, N, w, nt);
    gemm_work local = {0};
    if (!work) work = &local;
    if (!work_reserve(work, pl.bytes)) {
        /* out of memory for the scratch (a few MB): the scalar path, slow, same sums */
        if (ln) nn_layernorm(ln->out, x, ln->w, ln->b, N, w->IC), x = ln->out;
        gemm_linear_ref(out, ldo, x, N, w->a, b, flags);
        if (w->b) gemm_linear_ref(out + w->a->OC, ldo, x, N, w->b, b ? b + w->a->OC : NULL, flags);
        return;
    }
    lin_bind(&pl, work);
#pragma omp parallel num_threads(nt) if (nt > 1)
    lin_run(&pl, out, ldo, x, N, w, b, flags, ln, NULL);
    gemm_work_free(&local);
}

void gemm_linear(float *out, int ldo, const float *x, int N, const gemm_pack *w, const float *b,
                 int flags, gemm_work *work) {
    packs2 p = packs_of(w, NULL);
    linear_packs(out, ldo, x, N, &p, b, flags, work, NULL);
}

void gemm_linear_ln(float *out, int ldo, const float *x, int N, const float *ln_w,
                    const float *ln_b, float *ln_out, const gemm_pack *w1, const gemm_pack *w2,
                    const float *b, int flags, gemm_work *work) {
    CS_ASSERT(!w2 || (w1->OC % 32 == 0 && w1->IC == w2->IC && w1->mode == w2->mode));
    packs2 p = packs_of(w1, w2);
    ln_pre ln = {ln_w, ln_b, ln_out};
    linear_packs(out, ldo, x, N, &p, b, flags, work, &ln);
}

void gemm_linear2(float *out, int ldo, const float *x, int N, const gemm_pack *w1,
                  const gemm_pack *w2, const float *b, int flags, gemm_work *work) {
    CS_ASSERT(w1->OC % 32 == 0 && w1->IC == w2->IC && w1->mode == w2->mode);
    packs2 p = packs_of(w1, w2);
    linear_packs(out, ldo, x, N, &p, b, flags, work, NULL);
}

// ---------------------------------------------------------------------------------------------
// attention

/* V (L keys, hd channels; row stride ld) -> the B tiles of P V: column block j (16 channels),
 * k-step s (32 keys): [r][c][p] = v[32 s + 2 r + p][16 j + c] (keys >= L: zero). hd % 16 == 0. */
AMX_TARGET static void pack_v(uint16_t *hi, uint16_t *lo, const float *v, size_t ld, int L, int hd,
                              int ks) {
    __m512i idx;   /* word 2 c + p <- word 16 p + c of [bf16(row 2r) | bf16(row 2r+1)] */
    {
        uint16_t t[32] __attribute__((aligned(64)));
        for (int c = 0; c < 16; c++) t[2 * c] = (uint16_t)c, t[2 * c + 1] = (uint16_t)(16 + c);
        idx = _mm512_load_si512((const void *)t);
    }
    for (int j = 0; j < hd / 16; j++)
        for (int s = 0; s < ks; s++)
            for (int r = 0; r < 16; r++) {
                int k0 = 32 * s + 2 * r;
                __m512 x0 = k0 < L ? _mm512_loadu_ps(v + (size_t)k0 * ld + 16 * j) : _mm512_setzero_ps();
                __m512 x1 = k0 + 1 < L ? _mm512_loadu_ps(v + (size_t)(k0 + 1) * ld + 16 * j)
                                       : _mm512_setzero_ps();
                __m512bh h = _mm512_cvtne2ps_pbh(x1, x0);
                size_t o = (((size_t)j * ks + s) * 16 + r) * 32;
                _mm512_storeu_si512((void *)(hi + o), _mm512_permutexvar_epi16(idx, (__m512i)h));
                if (lo) {
                    __m512i hb = (__m512i)h;
                    __m512 h0 = _mm512_castsi512_ps(
                        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hb)), 16));
                    __m512 h1 = _mm512_castsi512_ps(
                        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hb, 1)), 16));
                    __m512bh l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0));
                    _mm512_storeu_si512((void *)(lo + o), _mm512_permutexvar_epi16(idx, (__m512i)l));
                }
            }
}

/* c (N, OC; row stride ldo) = A B from packed tiles: A (ceil(N/16), ks, 16, 32), B (ceil(OC/16),
 * ks, 16, 32) (hi and, with x3, lo planes), 2 x 2 tiles at a time: stored straight into c where
 * the 32 x 32 block is whole, else through cb (32 x 32 floats) and the epilogue */
static void tiles_product(float *c, int ldo, int N, int OC, int ks, const uint16_t *ah,
                          const uint16_t *al, const uint16_t *bh, const uint16_t *bl, int x3,
                          float *cb) {
    int rb = (N + 15) / 16, nb = (OC + 15) / 16;
    size_t st = (size_t)ks * 512;
    for (int p = 0; 2 * p < rb; p++) {
        int i = 2 * p, mr = i + 1 < rb ? 2 : 1;
        for (int cp = 0; 2 * cp < nb; cp++) {
            int j = 2 * cp, nr = j + 1 < nb ? 2 : 1;
            const uint16_t *a_l = x3 ? al + i * st : NULL, *b_l = x3 ? bl + j * st : NULL;
            if (32 * p + 32 <= N && 32 * cp + 32 <= OC) {   /* a whole block: tiles straight to c */
                g_kernels[1][1][x3](ks, st, ah + i * st, a_l, bh + j * st, b_l,
                                    c + (size_t)32 * p * ldo + 32 * cp, ldo, 0);
                continue;
            }
            g_kernels[mr - 1][nr - 1][x3](ks, st, ah + i * st, a_l, bh + j * st, b_l, cb, 32, 0);
            epilogue(c, ldo, N, OC, cp, p, cb, NULL, 0);
        }
    }
}

/* per-thread scratch of the attention (bytes): q scaled (L, hd), its A tiles, K's B tiles, V's
 * B tiles, the A tiles of one block of 32 rows of P (each of those per plane), cb, that block of
 * P (32, L) */
typedef struct {
    size_t nq, nqa, nk, npa, nv, planes, per;
} attn_sizes;

static attn_sizes attn_sizes_of(int L, int hd, int x3) {
    int rb = (L + 15) / 16, ksq = (hd + 31) / 32, ksp = (L + 31) / 32;
    attn_sizes z;
    z.nq = ((size_t)L * hd * 4 + 63) & ~(size_t)63;
    z.nqa = (size_t)rb * ksq * 1024, z.nk = z.nqa, z.npa = (size_t)2 * ksp * 1024;
    z.nv = (size_t)(hd / 16) * ksp * 1024, z.planes = x3 ? 2 : 1;
    size_t ns = ((size_t)32 * L * 4 + 63) & ~(size_t)63;
    z.per = z.nq + z.planes * (z.nqa + z.nk + z.npa + z.nv) + 4096 + ns;
    return z;
}

static int attn_accepts(int B, int L, int C, int NH, int mode) {
    int hd = NH > 0 ? C / NH : 0;
    return B > 0 && L > 0 && hd > 0 && hd % 16 == 0 && hd * NH == C && gemm_amx_usable() &&
           (mode == GEMM_BF16X3 || mode == GEMM_BF16);
}

/* The attention, run by every thread of the current team (heads shared out dynamically, then
 * step_barrier(bar)); mem: attn_sizes_of(...).per bytes per thread of the team */
static void attn_run(char *mem, float *out, float *probs, const float *qkv, int B, int L, int C,
                     int NH, int x3, cs_barrier *bar) {
    int hd = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hd);
    int rb = (L + 15) / 16, ksq = (hd + 31) / 32, ksp = (L + 31) / 32;
    const attn_sizes z = attn_sizes_of(L, hd, x3);
    const size_t nq = z.nq, nqa = z.nqa, nk = z.nk, npa = z.npa, nv = z.nv, planes = z.planes;
    const size_t per = z.per;
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    char *m = mem + per * t;
    float *qs = (float *)m;
    uint16_t *qh = (uint16_t *)(m + nq), *ql = x3 ? qh + nqa / 2 : NULL;
    uint16_t *kh = qh + planes * nqa / 2, *kl = x3 ? kh + nk / 2 : NULL;
    uint16_t *ph = kh + planes * nk / 2, *pl = x3 ? ph + npa / 2 : NULL;
    uint16_t *vh = ph + planes * npa / 2, *vl = x3 ? vh + nv / 2 : NULL;
    float *cb = (float *)(vh + planes * nv / 2), *Pr = cb + 1024;   /* Pr: (32, L) */
    size_t sq = (size_t)2 * ksq * 512;   /* a row pair of q's A tiles */
    tiles_begin();
#pragma omp for schedule(dynamic, 1) nowait
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * L * C3 + h * hd, *k = q + C, *v = q + 2 * C;
        float *o = out + (size_t)b * L * C + h * hd;
        for (int i = 0; i < L; i++)
            for (int c = 0; c < hd; c++) qs[(size_t)i * hd + c] = q[(size_t)i * C3 + c] * scale;
        for (int i = 0; i < rb; i++) split_rows(qs, L, hd, i, qh, ql);
        for (int j = 0; j < rb; j++) pack_block_vec(kh, kl, k, (size_t)C3, L, hd, j, ksq);
        pack_v(vh, vl, v, (size_t)C3, L, hd, ksp);
        /* per block of 32 query rows, while its rows of P are in cache: S = q k^T / sqrt(hd),
         * softmax, P's A tiles, out = P v */
        for (int p = 0; 32 * p < L; p++) {
            int r0 = 32 * p, n = L - r0 < 32 ? L - r0 : 32;
            tiles_product(Pr, L, n, L, ksq, qh + p * sq, x3 ? ql + p * sq : NULL, kh, kl, x3, cb);
            nn_softmax_rows(Pr, n, L);
            if (probs) memcpy(probs + ((size_t)bh * L + r0) * L, Pr, sizeof(float) * n * L);
            for (int i = 0; 16 * i < n; i++) split_rows(Pr, n, L, i, ph, pl);
            tiles_product(o + (size_t)r0 * C, C, n, hd, ksp, ph, pl, vh, vl, x3, cb);
        }
    }
    tiles_end();
    step_barrier(bar);
}

int gemm_attention(float *out, float *probs, float *avg, const float *qkv, int B, int L, int C,
                   int NH, int mode) {
    if (!attn_accepts(B, L, C, NH, mode) || (avg && !probs)) return 0;
    int hd = C / NH, x3 = mode == GEMM_BF16X3;
    size_t per = attn_sizes_of(L, hd, x3).per;
    int nt = threads_for(4.0 * B * NH * L * L * hd);
    if (nt > B * NH) nt = B * NH;
    char *mem = cs_malloc(per * nt);
    if (!mem) return 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    attn_run(mem, out, probs, qkv, B, L, C, NH, x3, NULL);
    cs_free(mem);
    if (avg) nn_attention_avg(avg, probs, B, L, NH);
    return 1;
}

// ---------------------------------------------------------------------------------------------
// a whole residual attention block in one parallel region

int gemm_block(float *x, float *ln, float *qkv, float *att, float *hid, int B, int L, int C,
               int M, int NH, const gemm_block_w *bw, gemm_work *work) {
    const gemm_pack *pk = bw->pk;
    int mode = pk[0].mode, N = B * L;
    if (C % 32 || !attn_accepts(B, L, C, NH, mode)) return 0;
    int x3 = mode == GEMM_BF16X3;
    packs2 wq = packs_of(&pk[0], &pk[1]), wo = packs_of(&pk[2], NULL);
    packs2 wf = packs_of(&pk[3], NULL), wp = packs_of(&pk[4], NULL);
    double flops = 2.0 * N * C * (4.0 * C + 2.0 * M) * (x3 ? 3 : 1);
    int nt = threads_for(flops);
    lin_plan pq, po, pf, pp;
    lin_plan_make(&pq, N, &wq, nt), lin_plan_make(&po, N, &wo, nt);
    lin_plan_make(&pf, N, &wf, nt), lin_plan_make(&pp, N, &wp, nt);
    size_t need = pq.bytes;
    need = po.bytes > need ? po.bytes : need;
    need = pf.bytes > need ? pf.bytes : need;
    need = pp.bytes > need ? pp.bytes : need;
    if (!work_reserve(work, need)) return 0;
    lin_bind(&pq, work), lin_bind(&po, work), lin_bind(&pf, work), lin_bind(&pp, work);
    char *mem = cs_malloc(attn_sizes_of(L, C / NH, x3).per * nt);
    if (!mem) return 0;
    ln_pre ln1 = {bw->ln1_w, bw->ln1_b, ln}, ln2 = {bw->ln2_w, bw->ln2_b, ln};
    /* each step reads what the previous one wrote: a barrier between them (lin_run has one
     * after its split, attn_run one at its end); the products share work's buffers */
    cs_barrier bar;
    cs_barrier_init(&bar, nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {   /* lin_run asserts that the team has nt threads */
        lin_run(&pq, qkv, 3 * C, x, N, &wq, bw->in_b, 0, &ln1, &bar);
        cs_barrier_wait(&bar);
        attn_run(mem, att, NULL, qkv, B, L, C, NH, x3, &bar);
        lin_run(&po, x, C, att, N, &wo, bw->out_b, NN_ACCUMULATE, NULL, &bar);
        cs_barrier_wait(&bar);
        lin_run(&pf, hid, M, x, N, &wf, bw->fc_b, NN_GELU, &ln2, &bar);
        cs_barrier_wait(&bar);
        lin_run(&pp, x, C, hid, N, &wp, bw->proj_b, NN_ACCUMULATE, NULL, &bar);
    }
    cs_free(mem);
    return 1;
}

#else /* no AMX in this build */

carseg_status gemm_amx_check(void) {
    return set_err(CARSEG_EINVAL, "AMX precision modes unavailable: this build has no AMX support "
                   "(x86-64 Linux with GCC 11 / clang 12 or later needed)");
}
int gemm_amx_usable(void) { return 0; }
static void pack_block_vec(uint16_t *hi, uint16_t *lo, const float *w, size_t ldw, int OC, int IC,
                           int j, int ks) {
    (void)hi, (void)lo, (void)w, (void)ldw, (void)OC, (void)IC, (void)j, (void)ks;   /* never called */
}
int gemm_attention(float *out, float *probs, float *avg, const float *qkv, int B, int L, int C,
                   int NH, int mode) {
    (void)out, (void)probs, (void)avg, (void)qkv, (void)B, (void)L, (void)C, (void)NH, (void)mode;
    return 0;
}
void gemm_split(const float *x, int N, int IC, uint16_t *hi, uint16_t *lo) {
    gemm_split_ref(x, N, IC, hi, lo);
}
void gemm_linear(float *out, int ldo, const float *x, int N, const gemm_pack *w, const float *b,
                 int flags, gemm_work *work) {
    (void)work;
    gemm_linear_ref(out, ldo, x, N, w, b, flags);
}
void gemm_linear2(float *out, int ldo, const float *x, int N, const gemm_pack *w1,
                  const gemm_pack *w2, const float *b, int flags, gemm_work *work) {
    (void)work;
    gemm_linear_ref(out, ldo, x, N, w1, b, flags);
    gemm_linear_ref(out + w1->OC, ldo, x, N, w2, b ? b + w1->OC : NULL, flags);
}
int gemm_block(float *x, float *ln, float *qkv, float *att, float *hid, int B, int L, int C,
               int M, int NH, const gemm_block_w *bw, gemm_work *work) {
    (void)x, (void)ln, (void)qkv, (void)att, (void)hid, (void)B, (void)L, (void)C, (void)M;
    (void)NH, (void)bw, (void)work;
    return 0;
}
void gemm_linear_ln(float *out, int ldo, const float *x, int N, const float *ln_w,
                    const float *ln_b, float *ln_out, const gemm_pack *w1, const gemm_pack *w2,
                    const float *b, int flags, gemm_work *work) {
    (void)work;
    nn_layernorm(ln_out, x, ln_w, ln_b, N, w1->IC);
    gemm_linear_ref(out, ldo, ln_out, N, w1, b, flags);
    if (w2) gemm_linear_ref(out + w1->OC, ldo, ln_out, N, w2, b ? b + w1->OC : NULL, flags);
}

#endif
