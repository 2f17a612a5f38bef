/* sha256.h — SHA-256 (FIPS 180-4), streaming: the checksums of the model cache and of the BPE
 * merges. Plain C, no library (a build without OpenSSL works the same). */
#ifndef CARSEG_SHA256_H
#define CARSEG_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;        /* bytes hashed so far */
    uint8_t buf[64];
    size_t nbuf;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
void sha256_final(sha256_ctx *c, uint8_t digest[32]);
/* digest as 64 lower-case hex digits + NUL */
void sha256_hex(const uint8_t digest[32], char hex[65]);

#endif
