/* safetensors.h — the safetensors reader (safetensors.c): appends the file's tensors to f under
 * the names found in the file. */
#ifndef CARSEG_SAFETENSORS_H
#define CARSEG_SAFETENSORS_H

#include "tensors.h"

carseg_status st_read(wfile *f, const uint8_t *buf, size_t len);

#endif
