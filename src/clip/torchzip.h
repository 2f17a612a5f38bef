/* torchzip.h — the PyTorch zip reader (torchzip.c: TorchScript archives and torch.save state
 * dicts): appends the file's tensors to f under the names found in the file. */
#ifndef CARSEG_TORCHZIP_H
#define CARSEG_TORCHZIP_H

#include "tensors.h"

carseg_status tz_read(wfile *f, const uint8_t *buf, size_t len);
/* 1 (default): zip entries' CRC-32 are checked. Fuzzers and the corruption tests clear it to
 * reach the parsers behind the checksum. */
extern int tz_verify_crc;

#endif
