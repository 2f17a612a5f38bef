/* lattice.h — the permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) for Gaussian
 * filtering in d-dimensional feature space, as Krähenbühl's DenseCRF (permutohedral.cpp, the SSE
 * build that x86 pydensecrf uses) constructs and applies it.
 *
 * A lattice is built once from the points' features (already divided by the kernel's standard
 * deviations) and then filters any number of value vectors:
 *     out_i ≈ Σ_j exp(-|f_i - f_j|² / 2) · in_j          (self term j = i included)
 * up to a constant factor (the reference's "alpha" scaling), by splatting each point onto the d+1
 * vertices of its enclosing simplex (barycentric weights), blurring with [1/2 1 1/2] along each of
 * the d+1 lattice directions, and slicing back with the same weights.
 */
#ifndef CARSEG_LATTICE_H
#define CARSEG_LATTICE_H

#include <stddef.h>
#include <stdint.h>
#include "carseg.h"

#define LATTICE_MAX_D 31

typedef struct {
    int d;               /* feature dimension (1..LATTICE_MAX_D) */
    int n;               /* points */
    int m;               /* lattice vertices */
    int32_t *offset;     /* (n, d+1) vertex of each simplex corner, 1-based (0 = the zero row) */
    float *bary;         /* (n, d+1) barycentric weight of each corner */
    /* blur structure: along direction j the vertices form chains v0, v1, ... (v_{i+1} = the
     * neighbour key - 1 + (d+1) e_j of v_i); chains c in ch_dir[j] .. ch_dir[j+1]-1 hold the 0-based
     * vertices ch_v[ch_start[c] .. ch_start[c+1]-1]. Vertices without neighbours are in none. */
    int32_t *ch_dir;     /* (d+2) */
    int32_t *ch_start;   /* (chains+1) */
    int32_t *ch_v;       /* (ch_start[chains]) */
    int32_t *sp_start;   /* (m+1) splat in gather form: vertex v's contributions are entries */
    int32_t *sp_pt;      /* (n*(d+1))   sp_start[v] .. sp_start[v+1]-1, in increasing point order */
    float *sp_w;         /* (n*(d+1))   (so sums run in the reference's order) */
} lattice;

/* Builds the lattice of n points with features feat (n, d), point-major.
 * ref_pad: also insert the vertices of the zero-feature point when n is not a multiple of 4, as the
 * reference's SSE construction does for its padding lanes (these vertices carry no value of their
 * own but relay the blur; 1 to reproduce pydensecrf exactly, 0 for the plain algorithm).
 * Keys packed into 64 bits and radix-sorted, neighbours by merge walks (in parallel); vertex ids in
 * first-seen order as the reference. Features whose elevated coordinates reach 2^22 are refused
 * (CARSEG_EINVAL). */
carseg_status lattice_build(lattice *L, const float *feat, int n, int d, int ref_pad);
/* lattice_build for the pixels of a W x H image (n = W*H points in raster order): the same filter
 * results, bit for bit (every sum runs in point order whatever the vertex numbering), but the
 * vertices are numbered first-seen over tiles of LATTICE_TILE x LATTICE_TILE pixels instead of
 * over raster order, so that a vertex's lattice neighbours lie closer in memory and the two
 * threads of the blur work on regions further apart (crf_run on a 500x375 photo with 3 labels,
 * two threads, A/B in one process: 0.953-0.967 of the raster-order time; neutral on one). */
#define LATTICE_TILE 32
carseg_status lattice_build_grid(lattice *L, const float *feat, int W, int H, int d, int ref_pad);
/* The same lattice (array for array) built with a hash table: lattice_build's fallback when the
 * keys do not pack into 64 bits; exposed for tests. */
carseg_status lattice_build_hash(lattice *L, const float *feat, int n, int d, int ref_pad);
/* 1 (default): lattice_build uses a direct-address table instead of the sort when the key range
 * is small (e.g. the Gaussian kernel's grid); 0: always the sort (for the tests) */
extern int lattice_allow_dense;
void lattice_free(lattice *L);

/* Scratch floats that lattice_filter / lattice_filter_potts need for value vectors of vs floats
 * (with the current OpenMP thread count). */
size_t lattice_work_floats(const lattice *L, int vs);

/* out (n, vs) = filter(in (n, vs)); in == out is allowed. reverse: blur directions d..0 instead of
 * 0..d. work: lattice_work_floats(L, vs) floats (NULL: allocated here; returns CARSEG_ENOMEM on
 * failure). The slice step rounds as the reference does: (w·v)·alpha for vs <= 2 (its scalar
 * path), (w·alpha)·v for vs > 2 (its SSE path). */
carseg_status lattice_filter(const lattice *L, const float *in, float *out, int vs, int reverse,
                             float *work);

/* The symmetric-normalised Potts message of DenseCRF's PairwisePotential, fused:
 *     acc (n, vs) -= -w · (norm ⊙ filter(norm ⊙ in))
 * with the reference's float rounding at every step (norm·in, filter, ·norm, -w·, subtraction).
 * work as for lattice_filter. */
carseg_status lattice_filter_potts(const lattice *L, const float *in, const float *norm, float w,
                                   float *acc, int vs, float *work);

#endif
