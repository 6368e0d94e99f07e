/* rng.h - seeded CSPRNG: the ChaCha20 keystream of libsodium.
 *
 * Protocol cores never call rand() or read the clock; they get one of these.
 * The key is BLAKE2b-256("shoal-rng-v1" || seed_le64 || stream_le64), so a
 * (seed, stream) pair names one reproducible stream; e.g. the server selects
 * round r's clients from stream r, which makes a resumed run select exactly
 * what the uninterrupted run did. rng_fini wipes the key. */
#ifndef SHOAL_RNG_H
#define SHOAL_RNG_H

#include <stddef.h>
#include <stdint.h>

#define RNG_KEY_BYTES 32

typedef struct rng {
	uint8_t key[RNG_KEY_BYTES];
	uint64_t block;  /* next keystream block (64 bytes) */
	uint8_t buf[64];
	size_t pos;      /* bytes of buf already used */
} rng;

void rng_init(rng *r, uint64_t seed, uint64_t stream);
void rng_fini(rng *r);
void rng_bytes(rng *r, void *out, size_t n);
uint64_t rng_u64(rng *r);
/* Uniform in [0, bound), unbiased (rejection sampling); bound > 0. */
uint32_t rng_below(rng *r, uint32_t bound);

/* A stream's position (the next block and the bytes of the current one
 * already used, 0..64): with the (seed, stream) that keyed it, all it
 * takes to continue the stream later. rng_seek puts a freshly initialised
 * r at that position; the rest of the stream is then what r would have
 * produced from there. */
void rng_tell(const rng *r, uint64_t *block, uint8_t *pos);
void rng_seek(rng *r, uint64_t block, uint8_t pos);

#endif
