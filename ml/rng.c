/* rng.c - the deterministic, non-cryptographic PRNG of ml/: xoshiro256**
 * (Blackman & Vigna 2018) seeded through SplitMix64, used for shuffling,
 * partitioning and initialisation so every run replays from its seed. */
#include "ml/ml.h"

static uint64_t
splitmix64(uint64_t *x)
{
	uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static uint64_t
rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

void
ml_rng_seed(ml_rng *r, uint64_t seed)
{
	uint64_t x = seed;

	/* SplitMix64 never yields four zero words, so the state is valid. */
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

uint64_t
ml_seed_mix(uint64_t seed, uint64_t stream)
{
	uint64_t x = stream, y;

	/* Hash the stream id, then hash it together with the seed: nearby
	 * (seed, stream) pairs give unrelated SplitMix64 sequences. */
	y = splitmix64(&x) ^ seed;
	return splitmix64(&y);
}

uint64_t
ml_rng_next(ml_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

uint32_t
ml_rng_below(ml_rng *r, uint32_t bound)
{
	/* Lemire 2019, "Fast random integer generation in an interval":
	 * multiply-shift with rejection of the biased low region. */
	uint64_t m = (ml_rng_next(r) >> 32) * (uint64_t)bound;
	uint32_t lo = (uint32_t)m;

	if (bound == 0)
		return 0;
	if (lo < bound) {
		uint32_t thresh = (uint32_t)(-bound) % bound;

		while (lo < thresh) {
			m = (ml_rng_next(r) >> 32) * (uint64_t)bound;
			lo = (uint32_t)m;
		}
	}
	return (uint32_t)(m >> 32);
}

double
ml_rng_uniform(ml_rng *r)
{
	return (double)(ml_rng_next(r) >> 11) * 0x1.0p-53;
}

void
ml_rng_shuffle(ml_rng *r, uint32_t *a, size_t n)
{
	for (size_t i = n; i > 1; i--) {
		uint32_t j = ml_rng_below(r, (uint32_t)i);
		uint32_t t = a[i - 1];

		a[i - 1] = a[j];
		a[j] = t;
	}
}
