/*
 * rng.h - the host's seeded pseudo-random generator (xoshiro256**, seeded through
 * splitmix64). Pure C, no Lua. The same seed gives the same sequence on every machine:
 * only integer arithmetic is involved, and doubles are built from the top 53 bits.
 */
#ifndef LORELEY_RNG_H
#define LORELEY_RNG_H

#include <stdint.h>

typedef struct rng {
    uint64_t s[4];
} rng_t;

/* Seeds the generator from a 64-bit seed (any value, 0 included). */
void rng_seed(rng_t *rng, uint64_t seed);

/* Next raw 64-bit value. */
uint64_t rng_next(rng_t *rng);

/* Uniform integer in [0, bound), without modulo bias. bound must be > 0. */
uint64_t rng_below(rng_t *rng, uint64_t bound);

/* Uniform double in [0, 1) with 53 random bits. */
double rng_double(rng_t *rng);

/* Standard normal deviate (Box-Muller, one value per call; deterministic). */
double rng_normal(rng_t *rng);

/* Fills buf with n bytes from the operating system's random source (getrandom).
 * Returns 0 on success, -1 on failure (errno set). */
int rng_os_bytes(void *buf, uint64_t n);

#endif
