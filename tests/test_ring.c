/* test_ring.c - m-bit packing of Z/2^m vectors: the worked examples of
 * ring.c, round trips for every width, every wrong length and every set pad
 * bit rejected. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "privacy/ring.h"
#include "privacy/rng.h"

static uint32_t
mod_mask(unsigned m)
{
	return (uint32_t)((UINT64_C(1) << m) - 1);
}

/* Independent bit-at-a-time packer: the specification, literally. */
static void
ref_pack(const uint32_t *v, size_t n, unsigned m, uint8_t *out, size_t size)
{
	memset(out, 0, size);
	for (size_t j = 0; j < n; j++)
		for (unsigned b = 0; b < m; b++) {
			size_t bit = j * m + b;
			out[bit / 8] |= (uint8_t)(((v[j] >> b) & 1) << (bit % 8));
		}
}

static void
test_ring_worked_examples(void **state)
{
	static const uint32_t v12[] = {0xabc, 0x123};
	static const uint8_t b12[] = {0xbc, 0x3a, 0x12};
	static const uint32_t v5[] = {0x1f, 0x01};
	static const uint8_t b5[] = {0x3f, 0x00};
	static const uint32_t v16[] = {0xbeef, 0x0102};
	static const uint8_t b16[] = {0xef, 0xbe, 0x02, 0x01};
	uint8_t out[8];
	uint32_t back[2];

	assert_int_equal(sa_pack_size(2, 12), 3);
	sa_pack(v12, 2, 12, out);
	assert_memory_equal(out, b12, sizeof b12);
	assert_int_equal(sa_unpack(b12, sizeof b12, 2, 12, back), SHOAL_OK);
	assert_memory_equal(back, v12, sizeof v12);

	assert_int_equal(sa_pack_size(2, 5), 2);
	sa_pack(v5, 2, 5, out);
	assert_memory_equal(out, b5, sizeof b5);

	sa_pack(v16, 2, 16, out);
	assert_memory_equal(out, b16, sizeof b16);

	/* Bits at or above m are ignored by the packer. */
	static const uint32_t wide[] = {0xfffffabc, 0x80000123};
	sa_pack(wide, 2, 12, out);
	assert_memory_equal(out, b12, sizeof b12);
}

static void
test_ring_sizes(void **state)
{
	assert_int_equal(sa_pack_size(0, 13), 0);
	assert_int_equal(sa_pack_size(1, 1), 1);
	assert_int_equal(sa_pack_size(8, 1), 1);
	assert_int_equal(sa_pack_size(9, 1), 2);
	assert_int_equal(sa_pack_size(7, 24), 21);
	assert_int_equal(sa_pack_size(1000, 13), 1625);
	assert_int_equal(sa_pack_size(1001, 13), 1627);
	/* n * m would overflow size_t; the result does not. */
	size_t big = SIZE_MAX / 16;
	assert_true(sa_pack_size(big, 32) == (big / 8) * 32 + ((big % 8) * 32 + 7) / 8);
}

static void
test_ring_round_trip_every_width(void **state)
{
	static const size_t ns[] = {0, 1, 7, 8, 9, 1000};
	enum { MAXN = 1000 };
	uint32_t *v = malloc(MAXN * sizeof *v), *back = malloc(MAXN * sizeof *back);
	uint8_t *out = malloc(4 * MAXN + 1), *ref = malloc(4 * MAXN + 1);
	rng r;

	assert_non_null(v);
	assert_non_null(back);
	assert_non_null(out);
	assert_non_null(ref);
	rng_init(&r, 30, 0);
	for (unsigned m = 1; m <= 32; m++) {
		for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
			size_t n = ns[ni], size = sa_pack_size(n, m);
			assert_true(size == (n * m + 7) / 8);
			for (size_t j = 0; j < n; j++) {
				/* Random values, with the extremes mixed in. */
				uint32_t x = (uint32_t)rng_u64(&r) & mod_mask(m);
				v[j] = j % 5 == 1 ? mod_mask(m) : j % 5 == 2 ? 0 : x;
			}
			memset(out, 0xa5, 4 * MAXN + 1);
			sa_pack(v, n, m, out);
			assert_true(out[size] == 0xa5); /* writes exactly size bytes */
			ref_pack(v, n, m, ref, size);
			assert_memory_equal(out, ref, size);
			memset(back, 0x5a, MAXN * sizeof *back);
			assert_int_equal(sa_unpack(out, size, n, m, back), SHOAL_OK);
			if (n > 0)
				assert_memory_equal(back, v, n * sizeof *v);
			if (n < MAXN)
				assert_true(back[n] == 0x5a5a5a5a); /* reads exactly n elements */
		}
	}
	rng_fini(&r);
	free(v);
	free(back);
	free(out);
	free(ref);
}

static void
test_ring_rejects_every_wrong_length(void **state)
{
	static const unsigned ms[] = {1, 5, 8, 12, 13, 16, 24, 31, 32};
	static const size_t ns[] = {0, 1, 7, 33};
	uint8_t buf[4 * 33 + 16] = {0};
	uint32_t v[33];

	for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++)
		for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
			unsigned m = ms[mi];
			size_t n = ns[ni], size = sa_pack_size(n, m);
			for (size_t len = 0; len < size; len++)
				assert_int_equal(sa_unpack(buf, len, n, m, v), SHOAL_ETRUNC);
			assert_int_equal(sa_unpack(buf, size, n, m, v), SHOAL_OK);
			for (size_t len = size + 1; len <= size + 9; len++)
				assert_int_equal(sa_unpack(buf, len, n, m, v), SHOAL_ETOOBIG);
		}
	assert_int_equal(sa_unpack(buf, 0, 0, 0, v), SHOAL_EINVAL);
	assert_int_equal(sa_unpack(buf, 5, 1, 33, v), SHOAL_EINVAL);
}

static void
test_ring_rejects_set_pad_bits(void **state)
{
	static const size_t ns[] = {1, 3, 7, 9, 101};
	uint32_t v[101], back[101];
	uint8_t buf[4 * 101];
	unsigned tried = 0;

	for (size_t j = 0; j < 101; j++)
		v[j] = (uint32_t)(j * 2654435761u);
	for (unsigned m = 1; m <= 32; m++)
		for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
			size_t n = ns[ni], size = sa_pack_size(n, m);
			unsigned pad = (unsigned)(size * 8 - n * m);
			sa_pack(v, n, m, buf);
			for (unsigned b = 8 - pad; b < 8; b++) {
				uint32_t sentinel[101];
				memset(back, 0x33, sizeof back);
				memcpy(sentinel, back, sizeof back);
				buf[size - 1] ^= (uint8_t)(1u << b);
				assert_int_equal(sa_unpack(buf, size, n, m, back), SHOAL_EMALFORMED);
				assert_memory_equal(back, sentinel, sizeof back); /* untouched */
				buf[size - 1] ^= (uint8_t)(1u << b);
				tried++;
			}
			assert_int_equal(sa_unpack(buf, size, n, m, back), SHOAL_OK);
		}
	assert_true(tried > 100);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ring_worked_examples),
		cmocka_unit_test(test_ring_sizes),
		cmocka_unit_test(test_ring_round_trip_every_width),
		cmocka_unit_test(test_ring_rejects_every_wrong_length),
		cmocka_unit_test(test_ring_rejects_set_pad_bits),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
