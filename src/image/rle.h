/* rle.h — COCO compressed run-length encoding of binary masks, byte-identical to pycocotools'
 * maskApi.c (rleEncode, rleToString, rleFrString, rleDecode).
 *
 * Counts are the lengths of alternating runs over the mask read column by column (x outer, y
 * inner: NumPy's Fortran order), the first run counting zeros (so it may be 0). The string form
 * codes counts[i] (from i = 3 on: counts[i] - counts[i-2]) as little-endian 5-bit groups, bit 0x20
 * = "another group follows", bit 0x10 of the last group = sign, each group + 48 ('0'..'o').
 *   counts [0,6,1,3] -> "061M";  [0,1024] -> "0PP1".
 * The parser treats every byte as hostile: characters outside '0'..'o', a group cut short by the
 * end of the string, more groups than a 32-bit count can need, counts below 0 or above 2^32-1
 * after the delta, and counts summing beyond h*w are all rejected. */
#ifndef CARSEG_RLE_H
#define CARSEG_RLE_H

#include <stddef.h>
#include <stdint.h>

/* mask: row-major h*w bytes, nonzero = in. counts: column-major runs, first run = zeros;
 * counts must hold h*w+1 values. Returns the number of counts (>= 1), or 0 when h or w is
 * negative or h*w does not fit in 32 bits. */
size_t cs_rle_counts(const uint8_t *mask, int h, int w, uint32_t *counts /* h*w+1 max */);
/* malloc'd COCO compressed string (free with free()); NULL when out of memory. */
char *cs_rle_string(const uint32_t *counts, size_t n);
/* Parses a COCO compressed string for a mask of hw pixels; *counts is malloc'd (free with
 * free(); NULL when *n is 0). 0 ok, -1 bad input or out of memory (*counts NULL, *n 0). */
int cs_rle_parse(const char *s, uint64_t hw, uint32_t **counts, size_t *n);
/* Decodes counts into a row-major h*w mask of 0/1 bytes. -1 when the counts do not sum to
 * exactly h*w (nothing meaningful is written then). */
int cs_rle_to_mask(const uint32_t *counts, size_t n, int h, int w, uint8_t *mask);
/* Area (pixels inside) and tight bounding box [x, y, w, h] of an RLE, as pycocotools' rleArea
 * and rleToBbox (all zeros for an empty mask). h is the mask height. */
uint64_t cs_rle_area(const uint32_t *counts, size_t n);
void cs_rle_bbox(const uint32_t *counts, size_t n, int h, double bbox[4]);

#endif
