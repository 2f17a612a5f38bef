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
#include <omp.h>
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

/* el (d+1) = the elevation E f of one point (float, the reference's order). */
static inline void elevate(const float *f, int d, const float *scale, float *el) {
    float sm = 0;
    for (int j = d; j > 0; j--) {
        float cf = f[j - 1] * scale[j - 1];
        el[j] = sm - (float)j * cf;
        sm += cf;
    }
    el[0] = sm;
}

/* Simplex of one point: keys (d+1, d) of its corners and their barycentric weights (d+1).
 * Float arithmetic in the reference's order. */
static void simplex_of(const float *f, int d, const float *scale, int32_t *keys, float *bw) {
    float el[LATTICE_MAX_D + 1], rem0[LATTICE_MAX_D + 1], b[LATTICE_MAX_D + 2] = {0};
    int rank[LATTICE_MAX_D + 1];
    const float invd1 = 1.0f / (float)(d + 1), d1 = (float)(d + 1);

    elevate(f, d, scale, el);   /* onto the hyperplane: el = E f */

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

/* Blur chains from the neighbour relation: nxt (d+1, m) next vertex along each direction or -1,
 * hasprev (d+1, m) whether a vertex is some vertex's next. Fills ch_dir, ch_start, ch_v. */
/* Simplex of point p; points p >= n are the reference's padding (an all-zero feature vector,
 * whose barycentric weights are not kept). */
static void point_simplex(lattice *L, const float *feat, int p, const float *scale, int32_t *k) {
    static const float zero[LATTICE_MAX_D];
    float bw[LATTICE_MAX_D + 1];
    const int d = L->d, real = p < L->n;
    simplex_of(real ? feat + (size_t)p * d : zero, d, scale, k,
               real ? L->bary + (size_t)p * (d + 1) : bw);
}

static carseg_status build_chains(lattice *L, const int32_t *nxt, const uint8_t *hasprev) {
    const int d = L->d, d1 = d + 1, m = L->m;
    const int n = L->n;
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
        return set_err(CARSEG_EINVAL, "lattice: too many points (%d) for the blur structure", n);
    }
    L->ch_dir = cs_malloc((size_t)(d1 + 1) * sizeof *L->ch_dir);
    L->ch_start = cs_malloc(((size_t)nch + 1) * sizeof *L->ch_start);
    L->ch_v = cs_malloc((nchv ? (size_t)nchv : 1) * sizeof *L->ch_v);
    if (!L->ch_dir || !L->ch_start || !L->ch_v) {
        return set_err(CARSEG_ENOMEM, "lattice: out of memory (%lld chain vertices)", (long long)nchv);
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
    return CARSEG_OK;
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

/* The common tail of every construction: chains from the neighbour links (which it frees), then
 * the splat arrays (gather form: contributions grouped by vertex), sp_start zeroed. */
static carseg_status chains_and_splat_arrays(lattice *L, int32_t **nxt, uint8_t **hasprev,
                                             size_t m, size_t nc) {
    carseg_status st = build_chains(L, *nxt, *hasprev);
    cs_free(*nxt);
    cs_free(*hasprev);
    *nxt = NULL;
    *hasprev = NULL;
    if (st != CARSEG_OK) return st;
    L->sp_start = cs_calloc(m + 1, sizeof *L->sp_start);
    L->sp_pt = cs_malloc(nc * sizeof *L->sp_pt);
    L->sp_w = cs_malloc(nc * sizeof *L->sp_w);
    if (!L->sp_start || !L->sp_pt || !L->sp_w)
        return set_err(CARSEG_ENOMEM, "lattice: out of memory (%zu vertices)", m);
    return CARSEG_OK;
}

static carseg_status check_args(lattice *L, const float *feat, int n, int d) {
    memset(L, 0, sizeof *L);
    if (d < 1 || d > LATTICE_MAX_D)
        return set_err(CARSEG_EINVAL, "lattice: feature dimension %d not in 1..%d", d, LATTICE_MAX_D);
    if (n < 1) return set_err(CARSEG_EINVAL, "lattice: no points (n = %d)", n);
    size_t nc;
    if (!cs_mul_ok(&nc, (size_t)n, (size_t)d + 1, 1) || nc > (size_t)INT32_MAX - 64)
        return set_err(CARSEG_EINVAL, "lattice: too many points (%d x %d corners)", n, d + 1);
    /* finite features, and elevated coordinates below 2^22 so that the float rounding, rank and
     * key arithmetic stay exact (beyond, the rank correction can leave 0..d) */
    float scale[LATTICE_MAX_D];
    elevation_scale(d, scale);
    int64_t bad_f = INT64_MAX, bad_e = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : bad_f, bad_e)
    for (int p = 0; p < n; p++) {
        const float *f = feat + (size_t)p * d;
        float el[LATTICE_MAX_D + 1];
        int fin = 1;
        for (int i = 0; i < d; i++) fin &= isfinite(f[i]) != 0;
        if (!fin) {
            bad_f = p < bad_f ? p : bad_f;
            continue;
        }
        elevate(f, d, scale, el);
        for (int i = 0; i <= d; i++)
            if (!(fabsf(el[i]) < 4194304.0f)) bad_e = p < bad_e ? p : bad_e;
    }
    if (bad_f != INT64_MAX)
        return set_err(CARSEG_EINVAL, "lattice: a feature of point %lld is not finite", (long long)bad_f);
    if (bad_e != INT64_MAX)
        return set_err(CARSEG_EINVAL,
                       "lattice: features of point %lld too large (elevated beyond 2^22; standard deviation too small?)",
                       (long long)bad_e);
    return CARSEG_OK;
}

/* The construction with a hash table (the general path: any key range). */
carseg_status lattice_build_hash(lattice *L, const float *feat, int n, int d, int ref_pad) {
    PROFILE_START;
    TRY(check_args(L, feat, n, d));
    const int d1 = d + 1;
    const size_t nc = (size_t)n * d1;
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
    /* splat in gather form: contributions grouped by vertex, in point order */
    if ((st = chains_and_splat_arrays(L, &nxt, &hasprev, (size_t)m, nc)) != CARSEG_OK) goto fail;
    PT("neighbours+chains");
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
// construction by sorting (the fast path): every corner key is packed into the high bits of a
// uint64 whose low bits hold the corner's index, the packed values are radix-sorted (equal keys
// end up adjacent, in corner order), and the vertices are numbered in first-seen corner order as
// the hash path (and the reference) number them — the lattice is the same, array for array.
// In the packing every coordinate has a margin, so the neighbour key along direction j is the
// packed key plus a constant: neighbours are found by one merge-like walk per direction over the
// sorted keys instead of hash look-ups.


/* LSD radix sort of keys a[0..n) on bits [lo, hi), stable, carrying the payload ia along; tmp,
 * itmp: n scratch. On return *ka and *ki point to the sorted keys and payload (the input arrays
 * or the scratch ones). hist: nthreads * 2048 scratch. */
#ifndef RADIX_BITS
#define RADIX_BITS 11
#endif
static void radix_sort(uint64_t **ka, uint32_t **ki, uint64_t *tmp, uint32_t *itmp, size_t n, int lo, int hi,
                       size_t *hist) {
    uint64_t *a = *ka;
    uint32_t *ia = *ki;
    const int passes = (hi - lo + RADIX_BITS - 1) / RADIX_BITS;
    const int db = (hi - lo + passes - 1) / passes;
    for (int p = 0; p < passes; p++) {
        const int sh = lo + p * db;
        const int nb = 1 << (sh + db <= hi ? db : hi - sh);
        const uint64_t mask = (uint64_t)nb - 1;
        int skip = 0;
#pragma omp parallel
        {
            const int nt = omp_get_num_threads(), t = omp_get_thread_num();
            const size_t i0 = n * t / nt, i1 = n * (t + 1) / nt;
            size_t *h = hist + (size_t)t * 2048;
            for (int b = 0; b < nb; b++) h[b] = 0;
            for (size_t i = i0; i < i1; i++) h[(a[i] >> sh) & mask]++;
#pragma omp barrier
#pragma omp single
            {   /* bucket-major, thread-minor offsets; a pass with one bucket is skipped */
                size_t s = 0;
                int used = 0;
                for (int b = 0; b < nb; b++) {
                    size_t tot = 0;
                    for (int u = 0; u < nt; u++) {
                        size_t c = hist[(size_t)u * 2048 + b];
                        hist[(size_t)u * 2048 + b] = s;
                        s += c;
                        tot += c;
                    }
                    used += tot > 0;
                }
                skip = used <= 1;
            }
            if (!skip)
                for (size_t i = i0; i < i1; i++) {
                    const size_t o = h[(a[i] >> sh) & mask]++;
                    tmp[o] = a[i];
                    itmp[o] = ia[i];
                }
        }
        if (!skip) {
            uint64_t *x = a;
            a = tmp;
            tmp = x;
            uint32_t *y = ia;
            ia = itmp;
            itmp = y;
        }
    }
    *ka = a;
    *ki = ia;
}

int lattice_allow_dense = 1;

/* The construction for small key ranges (the Gaussian kernel's d = 2 grid lattice): every key
 * gets a slot in a direct-address table (index = Σ (key_i - klo_i)·stride_i, slot = vertex + 1),
 * so the vertices are numbered in one walk over the corners in corner order (the reference's
 * first-seen numbering) and the neighbour of a key along direction j is the slot at index +
 * delta_j. Same arrays as the sorted construction, without the sort. */
static carseg_status build_dense(lattice *L, const float *feat, int n, int d, int pad, const float *scale,
                                 const int64_t *klo, const int64_t *stride, size_t tabn,
                                 const int32_t *ord) {
    PROFILE_START;
    const int d1 = d + 1;
    const size_t nc = (size_t)n * d1, ne = nc + (pad ? (size_t)d1 : 0);
    uint32_t *tab = cs_calloc(tabn, sizeof *tab);         /* (tabn) vertex + 1, 0 = none */
    uint32_t *ci = cs_malloc(ne * sizeof *ci);            /* (ne) table index of each corner */
    uint32_t *ukey = NULL;
    int32_t *nxt = NULL, *cnt = NULL;
    uint8_t *hasprev = NULL;
    carseg_status st = CARSEG_OK;
    L->d = d;
    L->n = n;
    L->offset = cs_malloc(nc * sizeof *L->offset);
    L->bary = cs_malloc(nc * sizeof *L->bary);
    if (!tab || !ci || !L->offset || !L->bary) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d points, d = %d)", n, d);
        goto fail;
    }
#pragma omp parallel for schedule(static)
    for (int p = 0; p < n + pad; p++) {
        int32_t k[(LATTICE_MAX_D + 1) * LATTICE_MAX_D];
        point_simplex(L, feat, p, scale, k);
        for (int r = 0; r < d1; r++) {
            int64_t x = 0;
            for (int i = 0; i < d; i++) x += (k[r * d + i] - klo[i]) * stride[i];
            ci[(size_t)p * d1 + r] = (uint32_t)x;
        }
    }
    PT("dense: simplices");
    /* vertex ids in corner order; real corners per vertex */
    ukey = cs_malloc(ne * sizeof *ukey);   /* (<= ne) table index of each vertex */
    cnt = cs_malloc(ne * sizeof *cnt);     /* (<= ne) real corners of each vertex */
    if (!ukey || !cnt) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d points, d = %d)", n, d);
        goto fail;
    }
    uint32_t m = 0;
    for (size_t k = 0; k < (size_t)n + (pad ? 1 : 0); k++) {   /* points in visiting order (ord) */
        const size_t c0 = (ord && k < (size_t)n ? (size_t)ord[k] : k) * d1;
        for (size_t c = c0; c < c0 + d1; c++) {
            uint32_t t = tab[ci[c]];
            if (!t) {
                ukey[m] = ci[c];
                cnt[m] = 0;
                tab[ci[c]] = t = ++m;
            }
            if (c < nc) {
                L->offset[c] = (int32_t)t;
                cnt[t - 1]++;
            }
        }
    }
    L->m = (int)m;
    PT("dense: ids");

    /* neighbours: along direction j the next key is key - 1 + (d+1) e_j (j = d: key - 1) */
    nxt = cs_malloc((size_t)d1 * m * sizeof *nxt);   /* (d+1, m) next vertex or -1 */
    hasprev = cs_calloc((size_t)d1 * m, 1);          /* (d+1, m) */
    if (!nxt || !hasprev) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%u vertices)", m);
        goto fail;
    }
    {
        int64_t delta[LATTICE_MAX_D + 1];
        for (int j = 0; j < d1; j++) {
            delta[j] = 0;
            for (int i = 0; i < d; i++) delta[j] -= stride[i];
            if (j < d) delta[j] += (int64_t)d1 * stride[j];
        }
#pragma omp parallel for schedule(static)
        for (int32_t v = 0; v < (int32_t)m; v++)
            for (int j = 0; j < d1; j++) {
                const uint32_t t = tab[(int64_t)ukey[v] + delta[j]];
                nxt[(size_t)j * m + v] = (int32_t)t - 1;
                if (t) hasprev[(size_t)j * m + t - 1] = 1;   /* one predecessor per vertex and j */
            }
    }
    cs_free(tab);
    tab = NULL;
    PT("dense: neighbours");
    /* splat in gather form: corners visited in corner (= point) order */
    if ((st = chains_and_splat_arrays(L, &nxt, &hasprev, (size_t)m, nc)) != CARSEG_OK) goto fail;
    PT("dense: chains");
    L->sp_start[0] = 0;
    for (uint32_t v = 0; v < m; v++) {
        L->sp_start[v + 1] = L->sp_start[v] + cnt[v];
        cnt[v] = L->sp_start[v];   /* next free entry */
    }
    for (size_t c = 0; c < nc; c++) {
        const int32_t e = cnt[L->offset[c] - 1]++;
        L->sp_pt[e] = (int32_t)(c / d1);
        L->sp_w[e] = L->bary[c];
    }
    PT("dense: csr");

fail:
    cs_free(tab);
    cs_free(ci);
    cs_free(ukey);
    cs_free(cnt);
    cs_free(nxt);
    cs_free(hasprev);
    if (st != CARSEG_OK) lattice_free(L);
    return st;
}

/* *packed = 0 when the keys do not fit in 64 bits (the caller then uses the hash path). */
static carseg_status build_sorted(lattice *L, const float *feat, int n, int d, int ref_pad, int *packed,
                                  const int32_t *ord) {
    PROFILE_START;
    *packed = 0;
    const int d1 = d + 1;
    const size_t nc = (size_t)n * d1;
    const int pad = ref_pad && n % 4;   /* the SSE build's zero-feature padding point */
    const size_t ne = nc + (pad ? (size_t)d1 : 0);
    float scale[LATTICE_MAX_D];
    elevation_scale(d, scale);

    /* 1. range of each stored key coordinate (the elevated coordinates 0..d-1, with margins) */
    float lo[LATTICE_MAX_D], hi[LATTICE_MAX_D];
    for (int i = 0; i < d; i++) lo[i] = hi[i] = 0;   /* includes the zero point */
    if (!pad) {
        float el[LATTICE_MAX_D + 1];
        elevate(feat, d, scale, el);
        for (int i = 0; i < d; i++) lo[i] = hi[i] = el[i];
    }
#pragma omp parallel
    {
        float tl[LATTICE_MAX_D], th[LATTICE_MAX_D], el[LATTICE_MAX_D + 1];
        for (int i = 0; i < d; i++) {
            tl[i] = lo[i];
            th[i] = hi[i];
        }
#pragma omp for schedule(static)
        for (int p = 0; p < n; p++) {
            elevate(feat + (size_t)p * d, d, scale, el);
            for (int i = 0; i < d; i++) {
                tl[i] = el[i] < tl[i] ? el[i] : tl[i];
                th[i] = el[i] > th[i] ? el[i] : th[i];
            }
        }
#pragma omp critical
        for (int i = 0; i < d; i++) {
            lo[i] = tl[i] < lo[i] ? tl[i] : lo[i];
            hi[i] = th[i] > hi[i] ? th[i] : hi[i];
        }
    }
    /* a key lies within 1.5(d+1) + d of its elevated coordinate, a neighbour key 1 below or d
     * above; margins of 4(d+1) + 2 leave room for both */
    int64_t klo[LATTICE_MAX_D];
    int sh[LATTICE_MAX_D + 1];
    int bits = 0;
    for (int i = 0; i < d; i++) {
        if (!(fabsf(lo[i]) < 1e9f && fabsf(hi[i]) < 1e9f)) return CARSEG_OK;
        klo[i] = (int64_t)floorf(lo[i]) - (4 * d1 + 2);
        const int64_t range = (int64_t)ceilf(hi[i]) + (4 * d1 + 2) - klo[i] + 1;
        int b = 1;
        while (((int64_t)1 << b) < range) b++;
        sh[i] = bits;
        bits += b;
        if (bits > 64) return CARSEG_OK;
    }
    sh[d] = bits;
    if (lattice_allow_dense) {   /* small key range: the direct-address table instead of the sort */
        int64_t stride[LATTICE_MAX_D], tabn = 1;
        for (int i = 0; i < d && tabn <= (int64_t)4 * (int64_t)ne + 65536; i++) {
            stride[i] = tabn;
            tabn *= (int64_t)ceilf(hi[i]) + (4 * d1 + 2) - klo[i] + 1;
        }
        if (tabn <= (int64_t)4 * (int64_t)ne + 65536 && tabn < (int64_t)UINT32_MAX) {
            *packed = 1;
            return build_dense(L, feat, n, d, pad, scale, klo, stride, (size_t)tabn, ord);
        }
    }

    uint64_t *val = cs_malloc(ne * sizeof *val), *tmp = cs_malloc(ne * sizeof *tmp);   /* (ne) keys */
    uint32_t *idx = cs_malloc(ne * sizeof *idx), *itmp = cs_malloc(ne * sizeof *itmp);  /* (ne) corners */
    size_t *hist = cs_malloc((size_t)omp_get_max_threads() * 2048 * sizeof *hist);
    int32_t *gid = NULL, *gstart = NULL, *newid = NULL, *nxt = NULL;
    uint64_t *ukey = NULL;
    uint8_t *hasprev = NULL;
    carseg_status st = CARSEG_OK;
    L->d = d;
    L->n = n;
    L->offset = cs_malloc(nc * sizeof *L->offset);
    L->bary = cs_malloc(nc * sizeof *L->bary);
    if (!val || !tmp || !idx || !itmp || !hist || !L->offset || !L->bary) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d points, d = %d)", n, d);
        goto fail;
    }
    *packed = 1;

    /* 2. simplices, packed keys */
#pragma omp parallel for schedule(static)
    for (int p = 0; p < n + pad; p++) {
        int32_t k[(LATTICE_MAX_D + 1) * LATTICE_MAX_D];
        point_simplex(L, feat, p, scale, k);
        for (int r = 0; r < d1; r++) {
            const size_t c = (size_t)p * d1 + r;
            uint64_t x = 0;
            for (int i = 0; i < d; i++) x |= (uint64_t)(k[r * d + i] - klo[i]) << sh[i];
            val[c] = x;
            idx[c] = (uint32_t)c;
        }
    }
    PT("sorted: simplices");

    /* 3. sort: equal keys adjacent, in corner order */
    uint64_t *srt = val;
    uint32_t *sidx = idx;
    radix_sort(&srt, &sidx, tmp, itmp, ne, 0, bits, hist);
    PT("sorted: radix sort");

    /* 4. distinct keys (in sorted order: groups g) and first-seen vertex ids */
    gid = cs_malloc(ne * sizeof *gid);   /* (ne) group of each corner */
    gstart = cs_malloc((ne + 1) * sizeof *gstart);
    if (!gid || !gstart) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d points, d = %d)", n, d);
        goto fail;
    }
    int32_t m = 0;
    for (size_t i = 0; i < ne; i++) {
        if (i == 0 || srt[i] != srt[i - 1]) gstart[m++] = (int32_t)i;
        gid[sidx[i]] = m - 1;
    }
    gstart[m] = (int32_t)ne;
    L->m = m;
    newid = cs_malloc((size_t)m * sizeof *newid);
    ukey = cs_malloc((size_t)m * sizeof *ukey);
    if (!newid || !ukey) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d vertices)", m);
        goto fail;
    }
    for (int32_t g = 0; g < m; g++) newid[g] = -1;
    {
        int32_t next = 0;
        for (size_t k = 0; k < (size_t)n + (pad ? 1 : 0); k++) {   /* points in visiting order (ord) */
            const size_t c0 = (ord && k < (size_t)n ? (size_t)ord[k] : k) * d1;
            for (size_t c = c0; c < c0 + d1; c++) {
                int32_t g = gid[c];
                if (newid[g] < 0) newid[g] = next++;
                if (c < nc) L->offset[c] = newid[g] + 1;
            }
        }
    }
#pragma omp parallel for schedule(static)
    for (int32_t g = 0; g < m; g++) ukey[g] = srt[gstart[g]];
    PT("sorted: ids");

    /* 5. neighbours: along direction j the next vertex's key is key - 1 + (d+1) e_j (j = d:
     * key - 1), i.e. packed key + delta_j; the targets increase with g, so one walk finds them */
    nxt = cs_malloc((size_t)d1 * m * sizeof *nxt);   /* (d+1, m) next vertex or -1 */
    hasprev = cs_calloc((size_t)d1 * m, 1);          /* (d+1, m) */
    if (!nxt || !hasprev) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d vertices)", m);
        goto fail;
    }
    {
        const int nblk = 64;
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
        for (int j = 0; j < d1; j++)
            for (int bi = 0; bi < nblk; bi++) {
                uint64_t delta = 0;
                for (int i = 0; i < d; i++) delta -= (uint64_t)1 << sh[i];
                if (j < d) delta += (uint64_t)d1 << sh[j];
                const int32_t g0 = (int32_t)((int64_t)m * bi / nblk), g1 = (int32_t)((int64_t)m * (bi + 1) / nblk);
                if (g0 >= g1) continue;
                /* first p with ukey[p] >= target of g0 */
                const uint64_t t0 = ukey[g0] + delta;
                int32_t a = 0, b = m;
                while (a < b) {
                    int32_t mid = a + (b - a) / 2;
                    if (ukey[mid] < t0) a = mid + 1;
                    else b = mid;
                }
                int32_t p = a;
                int32_t *nx = nxt + (size_t)j * m;
                uint8_t *hp = hasprev + (size_t)j * m;
                for (int32_t g = g0; g < g1; g++) {
                    const uint64_t t = ukey[g] + delta;
                    while (p < m && ukey[p] < t) p++;
                    if (p < m && ukey[p] == t) {
                        nx[newid[g]] = newid[p];
                        hp[newid[p]] = 1;   /* written by one g only: keys are distinct */
                    } else {
                        nx[newid[g]] = -1;
                    }
                }
            }
    }
    cs_free(ukey);
    ukey = NULL;
    PT("sorted: neighbours");
    /* 6. splat in gather form: each group's corners are already in corner (= point) order */
    if ((st = chains_and_splat_arrays(L, &nxt, &hasprev, (size_t)m, nc)) != CARSEG_OK) goto fail;
    PT("sorted: chains");
    L->sp_start[0] = 0;
#pragma omp parallel for schedule(static)
    for (int32_t g = 0; g < m; g++) {   /* real corners of the group (the padding's sort last) */
        int32_t e = gstart[g + 1];
        while (e > gstart[g] && sidx[e - 1] >= nc) e--;
        L->sp_start[newid[g] + 1] = e - gstart[g];
    }
    for (int32_t v = 0; v < m; v++) L->sp_start[v + 1] += L->sp_start[v];
#pragma omp parallel for schedule(static)
    for (int32_t g = 0; g < m; g++) {
        int32_t e = L->sp_start[newid[g]];
        const int32_t e1 = L->sp_start[newid[g] + 1];
        for (int32_t i = gstart[g]; e < e1; i++, e++) {
            const size_t c = sidx[i];
            L->sp_pt[e] = (int32_t)(c / d1);
            L->sp_w[e] = L->bary[c];
        }
    }
    PT("sorted: csr");
    st = CARSEG_OK;

fail:
    cs_free(val);
    cs_free(tmp);
    cs_free(idx);
    cs_free(itmp);
    cs_free(hist);
    cs_free(gid);
    cs_free(gstart);
    cs_free(newid);
    cs_free(ukey);
    cs_free(nxt);
    cs_free(hasprev);
    if (st != CARSEG_OK || !*packed) lattice_free(L);
    return st;
}

carseg_status lattice_build(lattice *L, const float *feat, int n, int d, int ref_pad) {
    TRY(check_args(L, feat, n, d));
    int packed;
    TRY(build_sorted(L, feat, n, d, ref_pad, &packed, NULL));
    return packed ? CARSEG_OK : lattice_build_hash(L, feat, n, d, ref_pad);
}

carseg_status lattice_build_grid(lattice *L, const float *feat, int W, int H, int d, int ref_pad) {
    if (W < 1 || H < 1 || (int64_t)W * H > INT32_MAX) {
        memset(L, 0, sizeof *L);
        return set_err(CARSEG_EINVAL, "lattice: grid %d x %d", W, H);
    }
    const int n = W * H;
    TRY(check_args(L, feat, n, d));
    /* the points in tiles of LATTICE_TILE x LATTICE_TILE pixels, tiles and the pixels inside
     * each in raster order */
    int32_t *ord = cs_malloc((size_t)n * sizeof *ord);
    if (!ord) return set_err(CARSEG_ENOMEM, "lattice: out of memory (%d points)", n);
    {
        size_t k = 0;
        for (int ty = 0; ty < H; ty += LATTICE_TILE)
            for (int tx = 0; tx < W; tx += LATTICE_TILE)
                for (int y = ty; y < ty + LATTICE_TILE && y < H; y++)
                    for (int x = tx; x < tx + LATTICE_TILE && x < W; x++) ord[k++] = y * W + x;
    }
    int packed;
    carseg_status st = build_sorted(L, feat, n, d, ref_pad, &packed, ord);
    cs_free(ord);
    TRY(st);
    return packed ? CARSEG_OK : lattice_build_hash(L, feat, n, d, ref_pad);
}

// ---------------------------------------------------------------------------------------------
// filtering

/* The vertex buffer holds rows of exactly vs floats (padding rows to aligned widths was measured
 * slower: the filter is bound by memory traffic). The kernels below are instantiated with vs as a
 * compile-time constant for the common small sizes. */
size_t lattice_work_floats(const lattice *L, int vs) { return ((size_t)L->m + 1) * (size_t)vs; }

/* for (k = 0; k < n; k++) body, over the value lanes: plain for the short rows instantiated with
 * a constant width S <= 4 (unrolled), vectorised otherwise (-O2's cost model leaves these loops
 * scalar). Lanes are independent, so vectorising does not change any rounding. */
#define VLOOP(S, n, ...)                                               \
    do {                                                               \
        if ((S) <= 4) {                                                \
            for (int k = 0; k < (n); k++) { __VA_ARGS__; }             \
        } else {                                                       \
            _Pragma("omp simd") for (int k = 0; k < (n); k++) { __VA_ARGS__; } \
        }                                                              \
    } while (0)

/* the filter kernels: one copy per constant row width 1..8 (splat_3, blur_3, ...), and the
 * runtime width (splat_n, ...) */
#define KFN(x) x##_1
#define KW 1
#include "lattice_kernels.inc"
#undef KFN
#undef KW
#define KFN(x) x##_2
#define KW 2
#include "lattice_kernels.inc"
#undef KFN
#undef KW
#define KFN(x) x##_3
#define KW 3
#include "lattice_kernels.inc"
#undef KFN
#undef KW
#define KFN(x) x##_4
#define KW 4
#include "lattice_kernels.inc"
#undef KFN
#undef KW
#define KFN(x) x##_5
#define KW 5
#include "lattice_kernels.inc"
#undef KFN
#undef KW
#define KFN(x) x##_6
#define KW 6
#include "lattice_kernels.inc"
#undef KFN
#undef KW
#define KFN(x) x##_7
#define KW 7
#include "lattice_kernels.inc"
#undef KFN
#undef KW
#define KFN(x) x##_8
#define KW 8
#include "lattice_kernels.inc"
#undef KFN
#undef KW
#define KFN(x) x##_n
#define KW 0
#include "lattice_kernels.inc"
#undef KFN
#undef KW

static carseg_status filter_any(const lattice *L, const float *in, const float *norm, float w, float *out,
                                int vs, int reverse, int mode, float *work) {
    if (vs < 1) return set_err(CARSEG_EINVAL, "lattice_filter: value size %d", vs);
    float *own = NULL;
    if (!work) {
        own = work = cs_malloc(lattice_work_floats(L, vs) * sizeof *work);
        if (!work) return set_err(CARSEG_ENOMEM, "lattice_filter: out of memory (%d x %d)", L->m, vs);
    }
    for (int k = 0; k < vs; k++) work[k] = 0;   /* row 0: absent vertices */
#define FILTER_VS(X)                                    \
    do {                                                \
        splat_##X(L, in, norm, vs, work);               \
        blur_##X(L, vs, reverse, work);                 \
        slice_##X(L, work, vs, mode, norm, w, out);     \
    } while (0)
    switch (vs) {
    case 1: FILTER_VS(1); break;
    case 2: FILTER_VS(2); break;
    case 3: FILTER_VS(3); break;
    case 4: FILTER_VS(4); break;
    case 5: FILTER_VS(5); break;
    case 6: FILTER_VS(6); break;
    case 7: FILTER_VS(7); break;
    case 8: FILTER_VS(8); break;
    default: FILTER_VS(n); break;
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
