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

// ---------------------------------------------------------------------------------------------
// hash table: key (d int32) -> vertex id, open addressing with linear probing

typedef struct {
    int d;
    int32_t *keys;      /* (cap_keys, d) keys in insertion order */
    int32_t *table;     /* (cap) vertex id or -1 */
    size_t cap, cap_keys, filled;
} htab;

static uint64_t hkey(const int32_t *k, int d) {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < d; i++) {
        h ^= (uint32_t)k[i];
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
    }
    return h;
}

static carseg_status htab_init(htab *t, int d, size_t expect) {
    memset(t, 0, sizeof *t);
    t->d = d;
    t->cap = 1024;
    while (t->cap < 2 * expect) t->cap *= 2;
    t->cap_keys = t->cap / 2 + 1;
    t->table = malloc(t->cap * sizeof *t->table);
    t->keys = malloc(t->cap_keys * (size_t)d * sizeof *t->keys);
    if (!t->table || !t->keys) return set_err(CARSEG_ENOMEM, "lattice: out of memory (hash table)");
    memset(t->table, 0xff, t->cap * sizeof *t->table);
    return CARSEG_OK;
}

static void htab_free(htab *t) {
    free(t->table);
    free(t->keys);
    t->table = NULL;
    t->keys = NULL;
}

static carseg_status htab_grow(htab *t) {
    size_t cap = t->cap * 2;
    int32_t *table = malloc(cap * sizeof *table);
    int32_t *keys = realloc(t->keys, (cap / 2 + 1) * (size_t)t->d * sizeof *keys);
    if (!table || !keys) {
        free(table);
        if (keys) t->keys = keys;
        return set_err(CARSEG_ENOMEM, "lattice: out of memory (hash table of %zu)", cap);
    }
    t->keys = keys;
    t->cap_keys = cap / 2 + 1;
    memset(table, 0xff, cap * sizeof *table);
    for (size_t e = 0; e < t->filled; e++) {
        size_t h = hkey(t->keys + e * (size_t)t->d, t->d) & (cap - 1);
        while (table[h] >= 0) h = (h + 1) & (cap - 1);
        table[h] = (int32_t)e;
    }
    free(t->table);
    t->table = table;
    t->cap = cap;
    return CARSEG_OK;
}

/* Vertex id of key, or -1 when absent. */
static int32_t htab_find(const htab *t, const int32_t *k) {
    size_t h = hkey(k, t->d) & (t->cap - 1);
    for (;;) {
        int32_t e = t->table[h];
        if (e < 0) return -1;
        if (!memcmp(t->keys + (size_t)e * t->d, k, (size_t)t->d * sizeof *k)) return e;
        h = (h + 1) & (t->cap - 1);
    }
}

/* *id = the vertex id of key, inserting it (next id) when absent. */
static carseg_status htab_insert(htab *t, const int32_t *k, int32_t *id) {
    if (2 * (t->filled + 1) > t->cap) TRY(htab_grow(t));
    size_t h = hkey(k, t->d) & (t->cap - 1);
    for (;;) {
        int32_t e = t->table[h];
        if (e < 0) break;
        if (!memcmp(t->keys + (size_t)e * t->d, k, (size_t)t->d * sizeof *k)) {
            *id = e;
            return CARSEG_OK;
        }
        h = (h + 1) & (t->cap - 1);
    }
    if (t->filled >= (size_t)INT32_MAX - 1)
        return set_err(CARSEG_EINVAL, "lattice: more than 2^31 vertices");
    memcpy(t->keys + t->filled * (size_t)t->d, k, (size_t)t->d * sizeof *k);
    t->table[h] = (int32_t)t->filled;
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
    float el[LATTICE_MAX_D + 1], rem0[LATTICE_MAX_D + 1], b[LATTICE_MAX_D + 2];
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
    for (int i = 0; i <= d + 1; i++) b[i] = 0;
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
    cs_free(L->nbr);
    cs_free(L->sp_start);
    cs_free(L->sp_pt);
    cs_free(L->sp_w);
    memset(L, 0, sizeof *L);
}

carseg_status lattice_build(lattice *L, const float *feat, int n, int d, int ref_pad) {
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
    int32_t *keys = cs_malloc(nc * (size_t)d * sizeof *keys);   /* (n, d+1, d) corner keys */
    htab ht = {0};
    carseg_status st = CARSEG_OK;
    if (!L->offset || !L->bary || !keys) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d points, d = %d)", n, d);
        goto fail;
    }
    float scale[LATTICE_MAX_D];
    elevation_scale(d, scale);

    /* simplices in parallel, vertex ids sequentially in point order (the reference's ids) */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        simplex_of(feat + (size_t)i * d, d, scale, keys + (size_t)i * d1 * d, L->bary + (size_t)i * d1);

    if ((st = htab_init(&ht, d, (size_t)n)) != CARSEG_OK) goto fail;
    for (size_t c = 0; c < nc; c++) {
        int32_t id;
        if ((st = htab_insert(&ht, keys + c * d, &id)) != CARSEG_OK) goto fail;
        L->offset[c] = id + 1;
    }
    if (ref_pad && n % 4) {
        /* the SSE build's padding lanes: a point with all-zero features, inserted last */
        float zero[LATTICE_MAX_D] = {0}, bw[LATTICE_MAX_D + 1];
        int32_t zk[(LATTICE_MAX_D + 1) * LATTICE_MAX_D];
        simplex_of(zero, d, scale, zk, bw);
        for (int r = 0; r <= d; r++) {
            int32_t id;
            if ((st = htab_insert(&ht, zk + r * d, &id)) != CARSEG_OK) goto fail;
        }
    }
    cs_free(keys);
    keys = NULL;
    L->m = (int)ht.filled;
    const int m = L->m;

    /* neighbours along each of the d+1 directions */
    L->nbr = cs_malloc((size_t)d1 * m * 2 * sizeof *L->nbr);
    if (!L->nbr) {
        st = set_err(CARSEG_ENOMEM, "lattice: out of memory (%d vertices)", m);
        goto fail;
    }
#pragma omp parallel for schedule(static)
    for (int v = 0; v < m; v++) {
        int32_t n1[LATTICE_MAX_D + 1], n2[LATTICE_MAX_D + 1];
        const int32_t *k = ht.keys + (size_t)v * d;
        for (int j = 0; j <= d; j++) {
            for (int i = 0; i < d; i++) {
                n1[i] = k[i] - 1;
                n2[i] = k[i] + 1;
            }
            if (j < d) {
                n1[j] = k[j] + d;
                n2[j] = k[j] - d;
            }
            int32_t *o = L->nbr + ((size_t)j * m + v) * 2;
            o[0] = htab_find(&ht, n1) + 1;
            o[1] = htab_find(&ht, n2) + 1;
        }
    }
    htab_free(&ht);

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
    return CARSEG_OK;

fail:
    cs_free(keys);
    htab_free(&ht);
    lattice_free(L);
    return st;
}

// ---------------------------------------------------------------------------------------------
// filtering

size_t lattice_work_floats(const lattice *L, int vs) { return 2 * ((size_t)L->m + 1) * (size_t)vs; }

carseg_status lattice_filter(const lattice *L, const float *in, float *out, int vs, int reverse,
                             float *work) {
    if (vs < 1) return set_err(CARSEG_EINVAL, "lattice_filter: value size %d", vs);
    const int d = L->d, d1 = d + 1, m = L->m, n = L->n;
    float *own = NULL;
    if (!work) {
        own = work = cs_malloc(lattice_work_floats(L, vs) * sizeof *work);
        if (!work) return set_err(CARSEG_ENOMEM, "lattice_filter: out of memory (%d x %d)", m, vs);
    }
    float *val = work, *nval = work + ((size_t)m + 1) * vs;   /* (m+1, vs), row 0 stays zero */
    for (int k = 0; k < vs; k++) val[k] = nval[k] = 0;

    /* splat: val[v] = Σ_{points p on v, in order} w · in[p] */
#pragma omp parallel for schedule(static)
    for (int v = 0; v < m; v++) {
        float *acc = val + ((size_t)v + 1) * vs;
        for (int k = 0; k < vs; k++) acc[k] = 0;
        for (int32_t e = L->sp_start[v]; e < L->sp_start[v + 1]; e++) {
            const float w = L->sp_w[e];
            const float *x = in + (size_t)L->sp_pt[e] * vs;
            for (int k = 0; k < vs; k++) acc[k] += w * x[k];
        }
    }

    /* blur: new = old + (n1 + n2) / 2 along each direction */
    for (int jj = 0; jj <= d; jj++) {
        const int j = reverse ? d - jj : jj;
        const int32_t *nb = L->nbr + (size_t)j * m * 2;
#pragma omp parallel for schedule(static)
        for (int v = 0; v < m; v++) {
            const float *o = val + ((size_t)v + 1) * vs;
            const float *a = val + (size_t)nb[2 * v] * vs;
            const float *b = val + (size_t)nb[2 * v + 1] * vs;
            float *r = nval + ((size_t)v + 1) * vs;
            for (int k = 0; k < vs; k++) r[k] = o[k] + 0.5f * (a[k] + b[k]);
        }
        float *t = val;
        val = nval;
        nval = t;
    }

    /* slice with the same weights, scaled by alpha = 1 / (1 + 2^-d) */
    const float alpha = 1.0f / (1.0f + powf(2.0f, (float)-d));
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float acc[64], *dst = out + (size_t)i * vs;
        const int32_t *off = L->offset + (size_t)i * d1;
        const float *bw = L->bary + (size_t)i * d1;
        for (int k0 = 0; k0 < vs; k0 += 64) {
            const int kn = vs - k0 < 64 ? vs - k0 : 64;
            for (int k = 0; k < kn; k++) acc[k] = 0;
            for (int j = 0; j <= d; j++) {
                const float *x = val + (size_t)off[j] * vs + k0;
                if (vs <= 2) {
                    const float w = bw[j];
                    for (int k = 0; k < kn; k++) acc[k] += w * x[k] * alpha;
                } else {
                    const float w = bw[j] * alpha;
                    for (int k = 0; k < kn; k++) acc[k] += w * x[k];
                }
            }
            for (int k = 0; k < kn; k++) dst[k0 + k] = acc[k];
        }
    }
    cs_free(own);
    return CARSEG_OK;
}
