/*
 * sha256.h - SHA-256 (FIPS 180-4). Pure C. Used for the experiment config hash, the
 * advisory-lock key and policy versions.
 */
#ifndef LORELEY_SHA256_H
#define LORELEY_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sha256 {
    uint32_t state[8];
    uint64_t length;          /* bytes hashed so far */
    unsigned char block[64];
    size_t used;              /* bytes waiting in block */
} sha256_t;

void sha256_init(sha256_t *ctx);
void sha256_update(sha256_t *ctx, const void *data, size_t n);
void sha256_final(sha256_t *ctx, unsigned char digest[32]);

/* One-shot digest as 64 lower-case hex characters plus NUL. */
void sha256_hex(const void *data, size_t n, char hex[65]);

#endif
