/* lattice.c — the permutohedral lattice, mirroring Krähenbühl's permutohedral.cpp (DenseCRF 2.x as
 * bundled in pydensecrf), SSE build: the same elevation, rounding (to nearest, ties to even), rank,
 * barycentric and key arithmetic in float, the same vertex set, the same blur and slicing, so the
 * filtered values equal the reference's up to summation order (splat sums run in the same order).
 *
 * Deviations: keys are int32 (the reference stores int16, which overflows for features beyond about
 * ±9000 after scaling); vertex ids are assigned in first-seen order like the reference, but the hash
 * function differs (it only affects speed). Splatting is done as a gather over each vertex's
 * contributions (transposed once at build time) so that it runs in parallel without atomics.
 */
#include "lattice.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#ifdef LATTICE_PROFILE   /* -DLATTICE_PROFILE: CPU time of each construction phase on stderr */
#include <stdio.h>
#include <time.h>
static double cpu_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
#define PROFILE_START double prof_t0 = cpu_ms()
#define PT(x) (fprintf(stderr, "  lattice d=%d %s: %.1f ms\n", d, x, cpu_ms() - prof_t0), prof_t0 = cpu_ms())
#else
#define PROFILE_START
#define PT(x) ((void)0)
#endif

// ---------------------------------------------------------------------------------------------
// hash table: key (d int32) -> vertex id, open addressing with linear probing; each slot keeps
// the key's 32-bit hash next to the id so that most mismatches cost no key comparison

typedef struct {
    int d;
    int32_t *keys;      /* (cap_keys, d) keys in insertion order */
    uint32_t *slot;     /* (cap, 2): vertex id (UINT32_MAX = empty), hash */
    size_t cap, cap_keys, filled;
} htab;

static uint32_t hkey(const int32_t *k, int d) {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < d; i++) h = (h ^ (uint32_t)k[i]) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    h *= 0x94D049BB133111EBull;
    return (uint32_t)(h >> 32);
}

static int key_eq(const int32_t *a, const int32_t *b, int d) {
    for (int i = 0; i < d; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static carseg_status htab_init(htab *t, int d, size_t expect) {
    memset(t, 0, sizeof *t);
    t->d = d;
    t->cap = 1024;
    while (t->cap < 2 * expect) t->cap *= 2;
    t->cap_keys = t->cap / 2 + 1;
    t->slot = malloc(t->cap * 2 * sizeof *t->slot);
    t->keys = malloc(t->cap_keys * (size_t)d * sizeof *t->keys);
    if (!t->slot || !t->keys) return set_err(CARSEG_ENOMEM, "lattice: out of memory (hash table)");
    memset(t->slot, 0xff, t->cap * 2 * sizeof *t->slot);
    return CARSEG_OK;
}

static void htab_free(htab *t) {
    free(t->slot);
    free(t->keys);
    t->slot = NULL;
    t->keys = NULL;
}

static carseg_status htab_grow(htab *t) {
    size_t cap = t->cap * 2;
    uint32_t *slot = malloc(cap * 2 * sizeof *slot);
    int32_t *keys = realloc(t->keys, (cap / 2 + 1) * (size_t)t->d * sizeof *keys);
    if (!slot || !keys) {
        free(slot);
        if (keys) t->keys = keys;
        return set_err(CARSEG_ENOMEM, "lattice: out of memory (hash table of %zu)", cap);
    }
    t->keys = keys;
    t->cap_keys = cap / 2 + 1;
    memset(slot, 0xff, cap * 2 * sizeof *slot);
    for (size_t s = 0; s < t->cap; s++) {
        if (t->slot[2 * s] == UINT32_MAX) continue;
        uint32_t hv = t->slot[2 * s + 1];
        size_t h = hv & (cap - 1);
        while (slot[2 * h] != UINT32_MAX) h = (h + 1) & (cap - 1);
        slot[2 * h] = t->slot[2 * s];
        slot[2 * h + 1] = hv;
    }
    free(t->slot);
    t->slot = slot;
    t->cap = cap;
    return CARSEG_OK;
}

/* Vertex id of key, or -1 when absent. */
static int32_t htab_find(const htab *t, const int32_t *k) {
    const uint32_t hv = hkey(k, t->d);
    size_t h = hv & (t->cap - 1);
    for (;;) {
        uint32_t e = t->slot[2 * h];
        if (e == UINT32_MAX) return -1;
        if (t->slot[2 * h + 1] == hv && key_eq(t->keys + (size_t)e * t->d, k, t->d)) return (int32_t)e;
        h = (h + 1) & (t->cap - 1);
    }
}

/* out[q] = htab_find(keys + q*d) for q < nq (nq <= 256), overlapping the cache misses: hashes and
 * slot prefetches first, then the probes, then the key comparisons. */
static void htab_find_batch(const htab *t, const int32_t *keys, int nq, int32_t *out) {
    uint32_t hv[256];
    size_t pos[256];
    const size_t mask = t->cap - 1;
    for (int q = 0; q < nq; q++) {
        hv[q] = hkey(keys + (size_t)q * t->d, t->d);
        pos[q] = hv[q] & mask;
        __builtin_prefetch(t->slot + 2 * pos[q]);
    }
    for (int q = 0; q < nq; q++) {   /* first slot with a matching hash, or empty */
        size_t h = pos[q];
        while (t->slot[2 * h] != UINT32_MAX && t->slot[2 * h + 1] != hv[q]) h = (h + 1) & mask;
        pos[q] = h;
        out[q] = (int32_t)t->slot[2 * h];   /* -1 when empty */
        if (out[q] >= 0) __builtin_prefetch(t->keys + (size_t)out[q] * t->d);
    }
    for (int q = 0; q < nq; q++)
        if (out[q] >= 0 && !key_eq(t->keys + (size_t)out[q] * t->d, keys + (size_t)q * t->d, t->d))
            out[q] = htab_find(t, keys + (size_t)q * t->d);   /* hash collision: the slow way */
}

/* *id = the vertex id of key, inserting it (next id) when absent. */
static carseg_status htab_insert(htab *t, const int32_t *k, uint32_t hv, int32_t *id) {
    if (2 * (t->filled + 1) > t->cap) TRY(htab_grow(t));
    size_t h = hv & (t->cap - 1);
    for (;;) {
        uint32_t e = t->slot[2 * h];
        if (e == UINT32_MAX) break;
        if (t->slot[2 * h + 1] == hv && key_eq(t->keys + (size_t)e * t->d, k, t->d)) {
            *id = (int32_t)e;
            return CARSEG_OK;
        }
        h = (h + 1) & (t->cap - 1);
    }
    if (t->filled >= (size_t)INT32_MAX - 1)
        return set_err(CARSEG_EINVAL, "lattice: more than 2^31 vertices");
    memcpy(t->keys + t->filled * (size_t)t->d, k, (size_t)t->d * sizeof *k);
    t->slot[2 * h] = (uint32_t)t->filled;
    t->slot[2 * h + 1] = hv;
    *id = (int32_t)t->filled++;
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// construction

/* Per-dimension constants of the elevation (p.5-6 of Adams et al.), computed as the reference does
 * (double, stored as float). */
static void elevation_scale(int d, float *scale) {
    float inv_std_dev = (float)(sqrt(2.0 / 3.0) * (d + 1));
    for (int i = 0; i < d; i++) scale[i] = (float)(1.0 / sqrt((double)((i + 2) * (i + 1))) * inv_std_dev);
}

/* Simplex of one point: keys (d+1, d) of its corners and their barycentric weights (d+1).
 * Float arithmetic in the reference's order. */
static void simplex_of(const float *f, int d, const float *scale, int32_t *keys, float *bw) {
    float el[LATTICE_MAX_D + 1], rem0[LATTICE_MAX_D + 1], b[LATTICE_MAX_D + 2] = {0};
    int rank[LATTICE_MAX_D + 1];
    const float invd1 = 1.0f / (float)(d + 1), d1 = (float)(d + 1);

    /* elevate onto the hyperplane: el = E f */
    float sm = 0;
    for (int j = d; j > 0; j--) {
        float cf = f[j - 1] * scale[j - 1];
        el[j] = sm - (float)j * cf;
        sm += cf;
    }
    el[0] = sm;

    /* nearest remainder-0 point: round each coordinate to a multiple of d+1 (ties to even) */
    float sum = 0;
    for (int i = 0; i <= d; i++) {
        float v = rintf(invd1 * el[i]);
        rem0[i] = v * d1;
        sum += v;
    }

    /* rank of each coordinate's residual in decreasing order */
    for (int i = 0; i <= d; i++) rank[i] = 0;
    for (int i = 0; i < d; i++) {
        float di = el[i] - rem0[i];
        for (int j = i + 1; j <= d; j++) {
            if (di < el[j] - rem0[j]) rank[i]++;
            else rank[j]++;
        }
    }

    /* bring the point back onto the plane sum == 0 */
    int isum = (int)sum;
    for (int i = 0; i <= d; i++) {
        rank[i] += isum;
        if (rank[i] < 0) {
            rank[i] += d + 1;
            rem0[i] += d1;
        } else if (rank[i] >= d + 1) {
            rank[i] -= d + 1;
            rem0[i] -= d1;
        }
    }

    /* barycentric coordinates (p.10) */
    for (int i = 0; i <= d; i++) {
        float v = (el[i] - rem0[i]) * invd1;
        b[d - rank[i]] += v;
        b[d - rank[i] + 1] -= v;
    }
    b[0] += 1.0f + b[d + 1];

    /* corners: remainder-r vertex = rem0 + canonical simplex r, permuted by rank */
    for (int r = 0; r <= d; r++) {
        for (int i = 0; i < d; i++) {
            int canon = rank[i] <= d - r ? r : r - (d + 1);
            keys[r * d + i] = (int32_t)(rem0[i] + (float)canon);
        }
        bw[r] = b[r];
    }
}

void lattice_free(lattice *L) {
    if (!L) return;
    cs_free(L->offset);
    cs_free(L->bary);
    cs_free(L->ch_dir);
    cs_free(L->ch_start);
    cs_free(L->ch_v);
    cs_free(L->sp_start);
    cs_free(L->sp_pt);
    cs_free(L->sp_w);
    memset(L, 0, sizeof *L);
}

carseg_status lattice_build(lattice *L, const float *feat, int n, int d, int ref_pad) {
    PROFILE_START;
    memset(L, 0, sizeof *L);
    if (d < 1 || d > LATTICE_MAX_D)
        return set_err(CARSEG_EINVAL, "lattice: feature dimension %d not in 1..%d", d, LATTICE_MAX_D);
    if (n < 1) return set_err(CARSEG_EINVAL, "lattice: no points (n = %d)", n);
    size_t nc;
    if (!cs_mul_ok(&nc, (size_t)n, (size_t)d + 1, 1) || nc > (size_t)INT32_MAX)
        return set_err(CARSEG_EINVAL, "lattice: too many points (%d x %d corners)", n, d + 1);
    for (size_t i = 0; i < (size_t)n * d; i++)
        if (!isfinite(feat[i]))
            return set_err(CARSEG_EINVAL, "lattice: feature %zu of point %zu is not finite", i % d, i / d);

    const int d1 = d + 1;
    L->d = d;
    L->n = n;
    L->offset = cs_malloc(nc * sizeof *L->offset);
    L->bary = cs_malloc(nc * sizeof *L->bary);
    /* corner keys of a block of points at a time (bounded scratch for big images) */
    const int blk = 32768;
    int32_t *keys = cs_malloc((size_t)(n < blk ? n : blk) * d1 * d * sizeof *keys);   /* (blk, d+1, d) */
    htab ht = {0};
    int32_t *nxt = NULL;
    uint8_t *hasprev = NULL;
    carseg_status st = CARSEG_OK;
    if (!L->offset || !L->bary || !keys) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d points, d = %d)", n, d);
        goto fail;
    }
    float scale[LATTICE_MAX_D];
    elevation_scale(d, scale);
    if ((st = htab_init(&ht, d, nc / 2)) != CARSEG_OK) goto fail;

    for (int i0 = 0; i0 < n; i0 += blk) {
        const int i1 = i0 + blk < n ? i0 + blk : n;
        const size_t c0 = (size_t)i0 * d1, c1 = (size_t)i1 * d1;
        /* simplices and key hashes in parallel (hashes kept in offset for now) */
#pragma omp parallel for schedule(static)
        for (int i = i0; i < i1; i++) {
            int32_t *k = keys + (size_t)(i - i0) * d1 * d;
            simplex_of(feat + (size_t)i * d, d, scale, k, L->bary + (size_t)i * d1);
            for (int r = 0; r < d1; r++) L->offset[(size_t)i * d1 + r] = (int32_t)hkey(k + r * d, d);
        }
        /* vertex ids sequentially in point order (the reference's ids), slots fetched ahead */
        for (size_t c = c0; c < c1; c++) {
            if (c + 16 < c1) __builtin_prefetch(ht.slot + 2 * ((uint32_t)L->offset[c + 16] & (ht.cap - 1)));
            int32_t id;
            if ((st = htab_insert(&ht, keys + (c - c0) * d, (uint32_t)L->offset[c], &id)) != CARSEG_OK) goto fail;
            L->offset[c] = id + 1;
        }
    }
    if (ref_pad && n % 4) {
        /* the SSE build's padding lanes: a point with all-zero features, inserted last */
        float zero[LATTICE_MAX_D] = {0}, bw[LATTICE_MAX_D + 1];
        int32_t zk[(LATTICE_MAX_D + 1) * LATTICE_MAX_D];
        simplex_of(zero, d, scale, zk, bw);
        for (int r = 0; r <= d; r++) {
            int32_t id;
            if ((st = htab_insert(&ht, zk + r * d, hkey(zk + r * d, d), &id)) != CARSEG_OK) goto fail;
        }
    }
    cs_free(keys);
    keys = NULL;
    L->m = (int)ht.filled;
    const int m = L->m;

    PT("simplices + insert");
    /* blur chains along each of the d+1 directions: next(v) = key - 1 + (d+1) e_j (for j = d:
     * key - 1); the reference's other neighbour, key + 1 - (d+1) e_j, is the inverse relation */
    nxt = cs_malloc((size_t)d1 * m * sizeof *nxt);   /* (d+1, m) next vertex or -1 */
    hasprev = cs_calloc((size_t)d1 * m, 1);          /* (d+1, m) */
    if (!nxt || !hasprev) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d vertices)", m);
        goto fail;
    }
    {
        const int per = 256 / d1;   /* vertices per batch of lookups */
        const int nb = (m + per - 1) / per;
#pragma omp parallel for schedule(static)
        for (int bi = 0; bi < nb; bi++) {
            int32_t qk[256 * LATTICE_MAX_D], res[256];
            const int v0 = bi * per, v1 = v0 + per < m ? v0 + per : m;
            int nq = 0;
            for (int v = v0; v < v1; v++) {
                const int32_t *k = ht.keys + (size_t)v * d;
                for (int j = 0; j <= d; j++, nq++) {
                    int32_t *n1 = qk + (size_t)nq * d;
                    for (int i = 0; i < d; i++) n1[i] = k[i] - 1;
                    if (j < d) n1[j] = k[j] + d;
                }
            }
            htab_find_batch(&ht, qk, nq, res);
            nq = 0;
            for (int v = v0; v < v1; v++)
                for (int j = 0; j <= d; j++, nq++) {
                    int32_t u = res[nq];
                    nxt[(size_t)j * m + v] = u;
                    if (u >= 0) hasprev[(size_t)j * m + u] = 1;   /* u's predecessor is v alone */
                }
        }
    }
    PT("nbr lookups");
    htab_free(&ht);
    /* chains per direction: counts, then each direction's chains in parallel */
    int64_t cnt[LATTICE_MAX_D + 2][2];   /* per direction: chains, chain vertices */
#pragma omp parallel for schedule(static)
    for (int j = 0; j <= d; j++) {
        const int32_t *nx = nxt + (size_t)j * m;
        const uint8_t *hp = hasprev + (size_t)j * m;
        int64_t a = 0, b = 0;
        for (int v = 0; v < m; v++) {
            b += nx[v] >= 0;
            a += nx[v] >= 0 && !hp[v];
        }
        cnt[j][0] = a;
        cnt[j][1] = a + b;   /* every chain has one more vertex than links */
    }
    int64_t nch = 0, nchv = 0;
    for (int j = 0; j <= d; j++) {
        nch += cnt[j][0];
        nchv += cnt[j][1];
    }
    if (nchv > INT32_MAX) {
        st = set_err(CARSEG_EINVAL, "lattice: too many points (%d) for the blur structure", n);
        goto fail;
    }
    L->ch_dir = cs_malloc((size_t)(d1 + 1) * sizeof *L->ch_dir);
    L->ch_start = cs_malloc(((size_t)nch + 1) * sizeof *L->ch_start);
    L->ch_v = cs_malloc((nchv ? (size_t)nchv : 1) * sizeof *L->ch_v);
    if (!L->ch_dir || !L->ch_start || !L->ch_v) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%lld chain vertices)", (long long)nchv);
        goto fail;
    }
    {
        int32_t c0[LATTICE_MAX_D + 2], e0[LATTICE_MAX_D + 2];
        c0[0] = e0[0] = 0;
        for (int j = 0; j <= d; j++) {
            c0[j + 1] = c0[j] + (int32_t)cnt[j][0];
            e0[j + 1] = e0[j] + (int32_t)cnt[j][1];
            L->ch_dir[j] = c0[j];
        }
        L->ch_dir[d1] = c0[d1];
        L->ch_start[c0[d1]] = e0[d1];
#pragma omp parallel for schedule(dynamic, 1)
        for (int j = 0; j <= d; j++) {
            const int32_t *nx = nxt + (size_t)j * m;
            const uint8_t *hp = hasprev + (size_t)j * m;
            int32_t c = c0[j], e = e0[j];
            for (int v = 0; v < m; v++) {
                if (hp[v] || nx[v] < 0) continue;   /* not a chain head */
                L->ch_start[c++] = e;
                for (int32_t u = v; u >= 0; u = nx[u]) L->ch_v[e++] = u;
            }
        }
    }
    cs_free(nxt);
    cs_free(hasprev);
    nxt = NULL;
    hasprev = NULL;

    PT("neighbours+chains");
    /* splat in gather form: contributions grouped by vertex, in point order */
    L->sp_start = cs_calloc((size_t)m + 1, sizeof *L->sp_start);
    L->sp_pt = cs_malloc(nc * sizeof *L->sp_pt);
    L->sp_w = cs_malloc(nc * sizeof *L->sp_w);
    if (!L->sp_start || !L->sp_pt || !L->sp_w) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d vertices)", m);
        goto fail;
    }
    for (size_t c = 0; c < nc; c++) L->sp_start[L->offset[c]]++;   /* offset is 1-based */
    for (int v = 0; v < m; v++) L->sp_start[v + 1] += L->sp_start[v];
    for (size_t c = 0; c < nc; c++) {
        int32_t v = L->offset[c] - 1;
        int32_t e = L->sp_start[v]++;
        L->sp_pt[e] = (int32_t)(c / d1);
        L->sp_w[e] = L->bary[c];
    }
    for (int v = m; v > 0; v--) L->sp_start[v] = L->sp_start[v - 1];
    L->sp_start[0] = 0;
    PT("csr");
    return CARSEG_OK;

fail:
    cs_free(keys);
    cs_free(nxt);
    cs_free(hasprev);
    htab_free(&ht);
    lattice_free(L);
    return st;
}

// ---------------------------------------------------------------------------------------------
// filtering

/* The vertex buffer holds rows of exactly vs floats (padding rows to aligned widths was measured
 * slower: the filter is bound by memory traffic). The kernels below are instantiated with vs as a
 * compile-time constant for the common small sizes. */
size_t lattice_work_floats(const lattice *L, int vs) { return ((size_t)L->m + 1) * (size_t)vs; }

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* splat: val[v] = Σ_{points p on v, in point order} w · in[p] (· scale[p] first when given) */
ALWAYS_INLINE void splat(const lattice *L, const float *in, const float *scale, int vs, int S, float *val) {
    const int m = L->m;
#pragma omp parallel for schedule(static)
    for (int v = 0; v < m; v++) {
        float *restrict acc = val + ((size_t)v + 1) * S;
        for (int k = 0; k < S; k++) acc[k] = 0;
        for (int32_t e = L->sp_start[v]; e < L->sp_start[v + 1]; e++) {
            const float w = L->sp_w[e];
            const int32_t p = L->sp_pt[e];
            const float *x = in + (size_t)p * vs;
            if (scale) {
                const float sc = scale[p];
                for (int k = 0; k < vs; k++) acc[k] += w * (x[k] * sc);
            } else {
                for (int k = 0; k < vs; k++) acc[k] += w * x[k];
            }
        }
    }
}

/* blur: new = old + (n1 + n2) / 2 along each direction, in place along each chain (a missing
 * neighbour counts as zero, as the reference's zero row) */
ALWAYS_INLINE void blur(const lattice *L, int S, int reverse, float *val) {
    const int d = L->d;
    for (int jj = 0; jj <= d; jj++) {
        const int j = reverse ? d - jj : jj;
        const int32_t *ch_end = L->ch_v + L->ch_start[L->ch_dir[j + 1]];
#pragma omp parallel for schedule(dynamic, 256)
        for (int32_t c = L->ch_dir[j]; c < L->ch_dir[j + 1]; c++) {
            const int32_t *cv = L->ch_v + L->ch_start[c];
            const int len = L->ch_start[c + 1] - L->ch_start[c];
            float b0[128], b1[128];
            for (int k0 = 0; k0 < S; k0 += 128) {   /* value blocks of 128 */
                const int kn = S - k0 < 128 ? S - k0 : 128;
                float *prev = b0, *save = b1;
                for (int k = 0; k < kn; k++) prev[k] = 0;
                for (int i = 0; i < len; i++) {
                    if (cv + i + 8 < ch_end) {   /* the walk jumps around memory: fetch ahead */
                        const char *pf = (const char *)(val + ((size_t)cv[i + 8] + 1) * S + k0);
                        for (int b = 0; b < kn * 4; b += 64) __builtin_prefetch(pf + b, 1);
                    }
                    float *restrict cur = val + ((size_t)cv[i] + 1) * S + k0;
                    const float *restrict nx = i + 1 < len ? val + ((size_t)cv[i + 1] + 1) * S + k0 : val;
                    float *restrict pv = prev, *restrict sv = save;
                    for (int k = 0; k < kn; k++) {
                        float o = cur[k];
                        sv[k] = o;
                        cur[k] = o + 0.5f * (nx[k] + pv[k]);
                    }
                    prev = sv;
                    save = pv;
                }
            }
        }
    }
}

/* acc[0..kn) = sliced value of point i, lanes k0..k0+kn: Σ_j w_j·alpha·val[corner j] in the
 * reference's rounding (its scalar path for vs <= 2, SSE path otherwise). */
ALWAYS_INLINE void slice_point(const lattice *L, const float *val, int i, int k0, int kn, int vs, int S,
                               float alpha, float *restrict acc) {
    const int d1 = L->d + 1;
    const int32_t *off = L->offset + (size_t)i * d1;
    const float *bw = L->bary + (size_t)i * d1;
    if (k0 == 0 && i + 8 < L->n) {   /* corners of a later point: fetch ahead */
        const int32_t *o8 = off + 8 * d1;
        for (int j = 0; j < d1; j++) {
            const char *pf = (const char *)(val + (size_t)o8[j] * S);
            for (int b = 0; b < S * 4 && b < 512; b += 64) __builtin_prefetch(pf + b);
        }
    }
    for (int k = 0; k < kn; k++) acc[k] = 0;
    for (int j = 0; j < d1; j++) {
        const float *x = val + (size_t)off[j] * S + k0;
        if (vs <= 2) {
            const float w = bw[j];
            for (int k = 0; k < kn; k++) acc[k] += w * x[k] * alpha;
        } else {
            const float w = bw[j] * alpha;
            for (int k = 0; k < kn; k++) acc[k] += w * x[k];
        }
    }
}

/* out[i] = slice (mode 0), or out[i] -= -w · (slice · norm[i]) (mode 1, the Potts message) */
ALWAYS_INLINE void slice(const lattice *L, const float *val, int vs, int S, int mode, const float *norm,
                         float w, float *out) {
    const int n = L->n;
    const float alpha = 1.0f / (1.0f + powf(2.0f, (float)-L->d));
    const float negw = -w;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float acc[64], *dst = out + (size_t)i * vs;
        for (int k0 = 0; k0 < vs; k0 += 64) {
            const int kn = vs - k0 < 64 ? vs - k0 : 64;
            slice_point(L, val, i, k0, kn, vs, S, alpha, acc);
            const int ko = vs - k0 < kn ? vs - k0 : kn;
            if (mode == 0) {
                for (int k = 0; k < ko; k++) dst[k0 + k] = acc[k];
            } else {
                const float s = norm[i];
                for (int k = 0; k < ko; k++) dst[k0 + k] -= negw * (acc[k] * s);
            }
        }
    }
}

static carseg_status filter_any(const lattice *L, const float *in, const float *norm, float w, float *out,
                                int vs, int reverse, int mode, float *work) {
    if (vs < 1) return set_err(CARSEG_EINVAL, "lattice_filter: value size %d", vs);
    float *own = NULL;
    if (!work) {
        own = work = cs_malloc(lattice_work_floats(L, vs) * sizeof *work);
        if (!work) return set_err(CARSEG_ENOMEM, "lattice_filter: out of memory (%d x %d)", L->m, vs);
    }
    for (int k = 0; k < vs; k++) work[k] = 0;   /* row 0: absent vertices */
#define FILTER_VS(V)                                  \
    do {                                              \
        splat(L, in, norm, V, V, work);               \
        blur(L, V, reverse, work);                    \
        slice(L, work, V, V, mode, norm, w, out);     \
    } while (0)
    switch (vs) {
    case 1: FILTER_VS(1); break;
    case 2: FILTER_VS(2); break;
    case 3: FILTER_VS(3); break;
    default: FILTER_VS(vs); break;
    }
#undef FILTER_VS
    cs_free(own);
    return CARSEG_OK;
}

carseg_status lattice_filter(const lattice *L, const float *in, float *out, int vs, int reverse,
                             float *work) {
    return filter_any(L, in, NULL, 0, out, vs, reverse, 0, work);
}

carseg_status lattice_filter_potts(const lattice *L, const float *in, const float *norm, float w,
                                   float *acc_out, int vs, float *work) {
    return filter_any(L, in, norm, w, acc_out, vs, 0, 1, work);
}
