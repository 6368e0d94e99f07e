/* test_prg.c - the mask PRG against a plain ChaCha20 written here from
 * RFC 8439 section 2.3 (itself checked against the RFC's block vector), plus
 * the algebra SecAgg relies on: add then subtract cancels, signs wrap mod
 * 2^m, and any split of a range gives the same result as one call. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "privacy/prg.h"
#include "privacy/rng.h"

/* --- reference ChaCha20 block function (RFC 8439 2.3), slow and obvious --- */

static uint32_t
rotl(uint32_t x, int n)
{
	return (x << n) | (x >> (32 - n));
}

static void
quarter(uint32_t *s, int a, int b, int c, int d)
{
	s[a] += s[b]; s[d] ^= s[a]; s[d] = rotl(s[d], 16);
	s[c] += s[d]; s[b] ^= s[c]; s[b] = rotl(s[b], 12);
	s[a] += s[b]; s[d] ^= s[a]; s[d] = rotl(s[d], 8);
	s[c] += s[d]; s[b] ^= s[c]; s[b] = rotl(s[b], 7);
}

static uint32_t
le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
ref_block(const uint8_t key[32], uint32_t counter, const uint8_t nonce[12], uint8_t out[64])
{
	uint32_t init[16], s[16];

	init[0] = 0x61707865; /* "expand 32-byte k" */
	init[1] = 0x3320646e;
	init[2] = 0x79622d32;
	init[3] = 0x6b206574;
	for (int i = 0; i < 8; i++)
		init[4 + i] = le32(key + 4 * i);
	init[12] = counter;
	for (int i = 0; i < 3; i++)
		init[13 + i] = le32(nonce + 4 * i);
	memcpy(s, init, sizeof s);
	for (int round = 0; round < 10; round++) {
		quarter(s, 0, 4, 8, 12); /* columns */
		quarter(s, 1, 5, 9, 13);
		quarter(s, 2, 6, 10, 14);
		quarter(s, 3, 7, 11, 15);
		quarter(s, 0, 5, 10, 15); /* diagonals */
		quarter(s, 1, 6, 11, 12);
		quarter(s, 2, 7, 8, 13);
		quarter(s, 3, 4, 9, 14);
	}
	for (int i = 0; i < 16; i++) {
		uint32_t w = s[i] + init[i];
		for (int b = 0; b < 4; b++)
			out[4 * i + b] = (uint8_t)(w >> (8 * b));
	}
}

/* Keystream bytes [0, len) for key, zero nonce, counter from 0. */
static uint8_t *
ref_stream(const uint8_t key[32], size_t len)
{
	static const uint8_t nonce[12];
	size_t blocks = (len + 63) / 64;
	uint8_t *ks = malloc(blocks * 64);
	assert_non_null(ks);
	for (size_t b = 0; b < blocks; b++)
		ref_block(key, (uint32_t)b, nonce, ks + 64 * b);
	return ks;
}

/* The specification of prg.h, written out independently. */
static uint32_t
ref_mask(const uint8_t *ks, unsigned m, size_t j)
{
	unsigned B = (m + 7) / 8;
	uint64_t v = 0;
	for (unsigned i = 0; i < B; i++)
		v |= (uint64_t)ks[B * j + i] << (8 * i);
	return (uint32_t)(v & ((UINT64_C(1) << m) - 1));
}

static uint32_t
mod_mask(unsigned m)
{
	return (uint32_t)((UINT64_C(1) << m) - 1);
}

static void
test_prg_reference_chacha20_matches_rfc8439(void **state)
{
	/* RFC 8439 section 2.3.2. */
	static const uint8_t nonce[12] = {0, 0, 0, 0x09, 0, 0, 0, 0x4a, 0, 0, 0, 0};
	static const uint8_t want[64] = {
		0x10, 0xf1, 0xe7, 0xe4, 0xd1, 0x3b, 0x59, 0x15, 0x50, 0x0f, 0xdd, 0x1f, 0xa3, 0x20, 0x71, 0xc4,
		0xc7, 0xd1, 0xf4, 0xc7, 0x33, 0xc0, 0x68, 0x03, 0x04, 0x22, 0xaa, 0x9a, 0xc3, 0xd4, 0x6c, 0x4e,
		0xd2, 0x82, 0x64, 0x46, 0x07, 0x9f, 0xaa, 0x09, 0x14, 0xc2, 0xd7, 0x05, 0xd9, 0x8b, 0x02, 0xa2,
		0xb5, 0x12, 0x9c, 0xd1, 0xde, 0x16, 0x4e, 0xb9, 0xcb, 0xd0, 0x83, 0xe8, 0xa2, 0x50, 0x3c, 0x4e,
	};
	uint8_t key[32], out[64];

	for (int i = 0; i < 32; i++)
		key[i] = (uint8_t)i;
	ref_block(key, 1, nonce, out);
	assert_memory_equal(out, want, sizeof want);
}

static void
test_prg_masks_match_reference(void **state)
{
	static const unsigned ms[] = {1, 8, 13, 17, 24, 32};
	/* Ranges crossing 64-byte blocks, starting off block boundaries, and
	 * long enough to cross the implementation's internal chunks. */
	static const struct { size_t start, n; } ranges[] = {
		{0, 1}, {0, 64}, {1, 1}, {5, 100}, {21, 22}, {63, 2}, {64, 64},
		{100, 300}, {1000, 37}, {3, 5000}, {4096, 4200}, {777, 9000},
	};
	enum { MAXEL = 10000 };
	uint8_t seed[SA_SEED_BYTES];
	rng r;

	rng_init(&r, 20, 0);
	rng_bytes(&r, seed, sizeof seed);
	rng_fini(&r);
	uint8_t *ks = ref_stream(seed, 4 * (size_t)MAXEL);
	uint32_t *got = malloc(MAXEL * sizeof *got);
	assert_non_null(got);
	for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
		for (size_t ri = 0; ri < sizeof ranges / sizeof ranges[0]; ri++) {
			size_t start = ranges[ri].start, n = ranges[ri].n;
			assert_true(start + n <= MAXEL);
			sa_prg_masks(seed, ms[mi], got, start, n);
			for (size_t j = 0; j < n; j++)
				if (got[j] != ref_mask(ks, ms[mi], start + j))
					fail_msg("m=%u start=%zu j=%zu: %08x != %08x", ms[mi], start, j, got[j],
					         ref_mask(ks, ms[mi], start + j));
		}
	}
	/* Spot values from the first keystream bytes, written by hand from the spec. */
	sa_prg_masks(seed, 32, got, 0, 1);
	assert_true(got[0] == le32(ks));
	sa_prg_masks(seed, 24, got, 1, 1);
	assert_true(got[0] == ((uint32_t)ks[3] | (uint32_t)ks[4] << 8 | (uint32_t)ks[5] << 16));
	free(got);
	free(ks);
}

static void
test_prg_add_then_subtract_cancels(void **state)
{
	enum { N = 3000 };
	static const unsigned ms[] = {1, 7, 8, 12, 16, 20, 24, 31, 32};
	uint8_t seed[SA_SEED_BYTES];
	uint32_t v[N], orig[N];
	rng r;

	rng_init(&r, 21, 0);
	rng_bytes(&r, seed, sizeof seed);
	for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
		unsigned m = ms[mi];
		for (int j = 0; j < N; j++)
			orig[j] = v[j] = (uint32_t)rng_u64(&r) & mod_mask(m);
		sa_prg_add(seed, m, v, 17, N, +1);
		int moved = 0;
		for (int j = 0; j < N; j++) {
			assert_true(v[j] <= mod_mask(m));
			moved += v[j] != orig[j];
		}
		assert_true(moved > 0);
		sa_prg_add(seed, m, v, 17, N, -1);
		assert_memory_equal(v, orig, sizeof v);
	}
	rng_fini(&r);
}

static void
test_prg_sign_and_wrap(void **state)
{
	enum { N = 500 };
	static const unsigned ms[] = {1, 5, 8, 13, 16, 24, 29, 32};
	static const uint8_t seed[SA_SEED_BYTES] = {1, 2, 3};
	uint32_t mask[N], v[N], start[N];

	for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
		unsigned m = ms[mi];
		uint32_t top = mod_mask(m);
		sa_prg_masks(seed, m, mask, 40, N);
		/* Values at the edges of the ring make the additions wrap. */
		for (int j = 0; j < N; j++)
			start[j] = j % 3 == 0 ? top : j % 3 == 1 ? 0 : top / 2 + 1;
		memcpy(v, start, sizeof v);
		sa_prg_add(seed, m, v, 40, N, +1);
		for (int j = 0; j < N; j++)
			assert_true(v[j] == (uint32_t)(((uint64_t)start[j] + mask[j]) % ((uint64_t)top + 1)));
		memcpy(v, start, sizeof v);
		sa_prg_add(seed, m, v, 40, N, -1);
		for (int j = 0; j < N; j++)
			assert_true(v[j] == (uint32_t)(((uint64_t)start[j] + (uint64_t)top + 1 - mask[j]) %
			                               ((uint64_t)top + 1)));
	}
	/* From zero, -mask is the ring negation of +mask. */
	uint32_t plus[N] = {0}, minus[N] = {0};
	sa_prg_add(seed, 24, plus, 0, N, +1);
	sa_prg_add(seed, 24, minus, 0, N, -1);
	for (int j = 0; j < N; j++)
		assert_true(((plus[j] + minus[j]) & mod_mask(24)) == 0);
}

static void
test_prg_split_ranges_equal_one_call(void **state)
{
	enum { START = 11, N = 6000 };
	static const unsigned ms[] = {3, 8, 16, 24, 32};
	static const size_t cuts[] = {0, 1, 53, 64, 1000, 1344, 4095, 5999, 6000};
	uint8_t seed[SA_SEED_BYTES];
	rng r;

	rng_init(&r, 22, 0);
	rng_bytes(&r, seed, sizeof seed);
	uint32_t *whole = malloc(N * sizeof *whole), *parts = malloc(N * sizeof *parts);
	assert_non_null(whole);
	assert_non_null(parts);
	for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
		unsigned m = ms[mi];
		for (int j = 0; j < N; j++)
			whole[j] = parts[j] = (uint32_t)rng_u64(&r) & mod_mask(m);
		sa_prg_add(seed, m, whole, START, N, -1);
		for (size_t ci = 0; ci < sizeof cuts / sizeof cuts[0]; ci++) {
			size_t c = cuts[ci];
			uint32_t *p = malloc(N * sizeof *p);
			assert_non_null(p);
			memcpy(p, parts, N * sizeof *p);
			sa_prg_add(seed, m, p + c, START + c, N - c, -1);
			sa_prg_add(seed, m, p, START, c, -1);
			assert_memory_equal(p, whole, N * sizeof *p);
			free(p);
		}
		/* Three threads' worth of pieces, and the masks the same way. */
		sa_prg_add(seed, m, parts, START, 1000, -1);
		sa_prg_add(seed, m, parts + 1000, START + 1000, 2500, -1);
		sa_prg_add(seed, m, parts + 3500, START + 3500, N - 3500, -1);
		assert_memory_equal(parts, whole, N * sizeof *parts);
		sa_prg_masks(seed, m, whole, START, N);
		sa_prg_masks(seed, m, parts, START, 77);
		sa_prg_masks(seed, m, parts + 77, START + 77, N - 77);
		assert_memory_equal(parts, whole, N * sizeof *parts);
	}
	free(whole);
	free(parts);
	rng_fini(&r);
}

static void
test_prg_seeds_differ_and_n_zero_is_noop(void **state)
{
	enum { N = 256 };
	uint8_t a[SA_SEED_BYTES] = {0}, b[SA_SEED_BYTES] = {0};
	uint32_t ma[N], mb[N], v[4] = {1, 2, 3, 4};

	b[31] = 1;
	sa_prg_masks(a, 32, ma, 0, N);
	sa_prg_masks(b, 32, mb, 0, N);
	assert_memory_not_equal(ma, mb, sizeof ma);
	sa_prg_add(a, 24, v, 5, 0, +1);
	assert_true(v[0] == 1 && v[1] == 2 && v[2] == 3 && v[3] == 4);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_prg_reference_chacha20_matches_rfc8439),
		cmocka_unit_test(test_prg_masks_match_reference),
		cmocka_unit_test(test_prg_add_then_subtract_cancels),
		cmocka_unit_test(test_prg_sign_and_wrap),
		cmocka_unit_test(test_prg_split_ranges_equal_one_call),
		cmocka_unit_test(test_prg_seeds_differ_and_n_zero_is_noop),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
