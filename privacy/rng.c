/* rng.c - seeded ChaCha20 CSPRNG over libsodium (see rng.h). */
#include "rng.h"

#include <string.h>

#include <sodium.h>

static void
put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

void
rng_init(rng *r, uint64_t seed, uint64_t stream)
{
	static const char tag[] = "shoal-rng-v1";
	uint8_t in[sizeof tag - 1 + 16];

	memcpy(in, tag, sizeof tag - 1);
	put_le64(in + sizeof tag - 1, seed);
	put_le64(in + sizeof tag - 1 + 8, stream);
	crypto_generichash(r->key, sizeof r->key, in, sizeof in, NULL, 0);
	sodium_memzero(in, sizeof in);
	r->block = 0;
	r->pos = sizeof r->buf;
}

void
rng_fini(rng *r)
{
	sodium_memzero(r, sizeof *r);
}

static void
refill(rng *r)
{
	static const uint8_t zero[64];
	static const uint8_t nonce[crypto_stream_chacha20_NONCEBYTES];

	crypto_stream_chacha20_xor_ic(r->buf, zero, sizeof r->buf, nonce, r->block, r->key);
	r->block++;
	r->pos = 0;
}

void
rng_tell(const rng *r, uint64_t *block, uint8_t *pos)
{
	*block = r->block;
	*pos = (uint8_t)r->pos;
}

void
rng_seek(rng *r, uint64_t block, uint8_t pos)
{
	if (pos >= sizeof r->buf || block == 0) {
		r->block = block;
		r->pos = sizeof r->buf;
		return;
	}
	r->block = block - 1;
	refill(r);
	sodium_memzero(r->buf, pos); /* used already, as rng_bytes leaves it */
	r->pos = pos;
}

void
rng_bytes(rng *r, void *out, size_t n)
{
	uint8_t *o = out;

	while (n > 0) {
		if (r->pos == sizeof r->buf)
			refill(r);
		size_t take = sizeof r->buf - r->pos;
		if (take > n)
			take = n;
		memcpy(o, r->buf + r->pos, take);
		sodium_memzero(r->buf + r->pos, take);
		r->pos += take;
		o += take;
		n -= take;
	}
}

uint64_t
rng_u64(rng *r)
{
	uint8_t b[8];
	uint64_t v = 0;

	rng_bytes(r, b, sizeof b);
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)b[i] << (8 * i);
	return v;
}

uint32_t
rng_below(rng *r, uint32_t bound)
{
	/* Reject the top partial range so every residue is equally likely. */
	uint32_t limit = (uint32_t)(-bound) % bound;
	for (;;) {
		uint32_t v = (uint32_t)rng_u64(r);
		if (v >= limit)
			return v % bound;
	}
}
