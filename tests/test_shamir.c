/* test_shamir.c - Shamir sharing over GF(2^61 - 1): field known answers,
 * reconstruction from every t-subset, too few or forged shares, Lagrange
 * reuse, argument checks and the share wire form. */
#include "testutil.h"

#include <string.h>

#include "privacy/shamir.h"

enum { MAXN = 16 };

/* Serializes and re-reads every share, then reconstructs from every t-subset
 * of the n shares; returns the number of subsets tried. */
static unsigned
check_every_subset(uint32_t t, uint32_t n, const uint32_t *xs, const uint8_t secret[SA_SECRET_BYTES], rng *r)
{
	sa_share sh[MAXN];
	unsigned count = 0;

	assert_true(n <= MAXN);
	assert_int_equal(sa_shamir_split(secret, t, n, xs, r, sh), SHOAL_OK);
	for (uint32_t i = 0; i < n; i++) {
		uint8_t wire[SA_SHARE_BYTES];
		sa_share_write(&sh[i], wire);
		memset(&sh[i], 0xee, sizeof sh[i]);
		assert_int_equal(sa_share_read(&sh[i], xs[i], wire), SHOAL_OK);
		assert_int_equal(sh[i].x, xs[i]);
	}
	for (uint32_t set = 0; set < (1u << n); set++) {
		if ((uint32_t)__builtin_popcount(set) != t)
			continue;
		uint32_t hx[MAXN];
		uint64_t ys[MAXN][SA_SHARE_LIMBS];
		uint32_t k = 0;
		for (uint32_t i = 0; i < n; i++) {
			if (!((set >> i) & 1))
				continue;
			hx[k] = sh[i].x;
			memcpy(ys[k], sh[i].y, sizeof ys[k]);
			k++;
		}
		sa_lagrange L;
		uint8_t got[SA_SECRET_BYTES];
		assert_int_equal(sa_lagrange_init(&L, hx, t), SHOAL_OK);
		assert_int_equal(sa_shamir_combine(&L, (const uint64_t(*)[SA_SHARE_LIMBS])ys, got), SHOAL_OK);
		assert_memory_equal(got, secret, SA_SECRET_BYTES);
		sa_lagrange_fini(&L);
		count++;
	}
	return count;
}

static void
test_shamir_field_known_answers(void **state)
{
	const uint64_t p = SA_P;

	assert_true(p == 0x1fffffffffffffffull);
	assert_true(sa_gf_inv(2) == UINT64_C(1) << 60);
	assert_true(sa_gf_mul(p - 1, p - 1) == 1);
	assert_true(sa_gf_mul(p - 1, 2) == p - 2);
	assert_true(sa_gf_mul(UINT64_C(1) << 32, UINT64_C(1) << 32) == 8); /* 2^64 = 2^3 * 2^61 = 8 */
	assert_true(sa_gf_mul(UINT64_C(1) << 60, 2) == 1);
	assert_true(sa_gf_add(p - 1, 1) == 0);
	assert_true(sa_gf_add(p - 1, p - 1) == p - 2);
	assert_true(sa_gf_sub(0, 1) == p - 1);
	assert_true(sa_gf_sub(5, 7) == p - 2);
	assert_true(sa_gf_inv(1) == 1);
	assert_true(sa_gf_inv(p - 1) == p - 1);
	assert_true(sa_gf_inv(0) == 0);
	/* Values computed with Python's arbitrary-precision integers and pow(a, p-2, p). */
	assert_true(sa_gf_inv(3) == 1537228672809129301ull);
	assert_true(sa_gf_inv(7) == 1976436865040309101ull);
	const uint64_t a = 0x123456789abcdefull, b = 0x1edcba987654321ull;
	assert_true(sa_gf_mul(a, b) == 0x1034fc2c08d6da57ull);
	assert_true(sa_gf_inv(a) == 0x1220f61c9107b0e3ull);
	assert_true(sa_gf_sub(a, b) == 0x1f3579be02468acdull);
	assert_true(sa_gf_add(a, b) == 0x311111111111110ull);

	rng r;
	rng_init(&r, 61, 0);
	for (int i = 0; i < 1000; i++) {
		uint64_t x = rng_u64(&r) & p;
		if (x == 0 || x == p)
			continue;
		assert_true(sa_gf_mul(x, sa_gf_inv(x)) == 1);
		assert_true(sa_gf_add(sa_gf_sub(x, a), a) == x);
	}
	rng_fini(&r);
}

static void
test_shamir_every_subset_reconstructs(void **state)
{
	static const uint32_t xs[] = {1, 2, 3, 4, 5, 6, 7};
	static const uint32_t far[] = {0xffffffffu, 1, 0x80000000u, 12345, 7, 0xfffffffeu};
	uint8_t secret[SA_SECRET_BYTES];
	rng r;

	rng_init(&r, 7, 0);
	rng_bytes(&r, secret, sizeof secret);
	assert_int_equal(check_every_subset(3, 6, xs, secret, &r), 20);
	assert_int_equal(check_every_subset(3, 6, far, secret, &r), 20);
	assert_int_equal(check_every_subset(1, 1, xs, secret, &r), 1);
	assert_int_equal(check_every_subset(1, 4, xs, secret, &r), 4);
	assert_int_equal(check_every_subset(5, 5, xs, secret, &r), 1);
	assert_int_equal(check_every_subset(4, 7, xs, secret, &r), 35);
	/* Extreme limb values: all zero and all ones (each limb at its maximum). */
	memset(secret, 0, sizeof secret);
	assert_int_equal(check_every_subset(3, 6, xs, secret, &r), 20);
	memset(secret, 0xff, sizeof secret);
	assert_int_equal(check_every_subset(3, 6, xs, secret, &r), 20);
	/* System randomness instead of a seeded stream. */
	assert_int_equal(check_every_subset(3, 6, far, secret, NULL), 20);
	rng_fini(&r);
}

static void
test_shamir_threshold_one_is_the_secret(void **state)
{
	static const uint32_t xs[] = {9, 4, 1};
	uint8_t secret[SA_SECRET_BYTES];
	sa_share sh[3];

	for (int i = 0; i < SA_SECRET_BYTES; i++)
		secret[i] = (uint8_t)(i + 1);
	assert_int_equal(sa_shamir_split(secret, 1, 3, xs, NULL, sh), SHOAL_OK);
	/* Degree 0: every y is the limb itself, bytes [0,7) little-endian first. */
	for (int i = 0; i < 3; i++) {
		assert_true(sh[i].y[0] == 0x07060504030201ull);
		assert_true(sh[i].y[1] == 0x0e0d0c0b0a0908ull);
		assert_true(sh[i].y[4] == 0x201f1e1dull);
	}
}

static void
test_shamir_too_few_or_forged_shares_fail(void **state)
{
	static const uint32_t xs[] = {1, 2, 3, 4, 5};
	uint8_t secret[SA_SECRET_BYTES], got[SA_SECRET_BYTES];
	sa_share sh[5];
	rng r;

	rng_init(&r, 8, 0);
	rng_bytes(&r, secret, sizeof secret);
	assert_int_equal(sa_shamir_split(secret, 3, 5, xs, &r, sh), SHOAL_OK);
	/* Every pair (t - 1 = 2 shares) interpolates to something else. */
	for (int a = 0; a < 5; a++)
		for (int b = a + 1; b < 5; b++) {
			uint32_t hx[2] = {xs[a], xs[b]};
			uint64_t ys[2][SA_SHARE_LIMBS];
			memcpy(ys[0], sh[a].y, sizeof ys[0]);
			memcpy(ys[1], sh[b].y, sizeof ys[1]);
			sa_lagrange L;
			assert_int_equal(sa_lagrange_init(&L, hx, 2), SHOAL_OK);
			shoal_err e = sa_shamir_combine(&L, (const uint64_t(*)[SA_SHARE_LIMBS])ys, got);
			assert_true(e == SHOAL_EMALFORMED || memcmp(got, secret, sizeof got) != 0);
			sa_lagrange_fini(&L);
		}
	/* Two real shares and a made-up third one. */
	for (int trial = 0; trial < 20; trial++) {
		uint32_t hx[3] = {xs[0], xs[1], xs[2]};
		uint64_t ys[3][SA_SHARE_LIMBS];
		memcpy(ys[0], sh[0].y, sizeof ys[0]);
		memcpy(ys[1], sh[1].y, sizeof ys[1]);
		for (int k = 0; k < SA_SHARE_LIMBS; k++)
			ys[2][k] = rng_u64(&r) % SA_P;
		sa_lagrange L;
		assert_int_equal(sa_lagrange_init(&L, hx, 3), SHOAL_OK);
		shoal_err e = sa_shamir_combine(&L, (const uint64_t(*)[SA_SHARE_LIMBS])ys, got);
		assert_true(e == SHOAL_EMALFORMED || memcmp(got, secret, sizeof got) != 0);
		sa_lagrange_fini(&L);
	}
	rng_fini(&r);
}

static void
test_shamir_lagrange_reused_for_many_secrets(void **state)
{
	static const uint32_t xs[] = {3, 0xffffffffu, 77, 1000, 65536, 4000000000u, 12, 13};
	/* The holders that answered, in arbitrary order: indices into xs. */
	static const int who[] = {6, 1, 4, 0, 7};
	uint32_t hx[5];
	sa_lagrange L;
	rng r;

	for (int i = 0; i < 5; i++)
		hx[i] = xs[who[i]];
	assert_int_equal(sa_lagrange_init(&L, hx, 5), SHOAL_OK);
	assert_int_equal(L.t, 5);
	rng_init(&r, 9, 0);
	for (int s = 0; s < 50; s++) {
		uint8_t secret[SA_SECRET_BYTES], got[SA_SECRET_BYTES];
		sa_share sh[8];
		uint64_t ys[5][SA_SHARE_LIMBS];
		rng_bytes(&r, secret, sizeof secret);
		assert_int_equal(sa_shamir_split(secret, 5, 8, xs, s % 2 ? &r : NULL, sh), SHOAL_OK);
		for (int i = 0; i < 5; i++)
			memcpy(ys[i], sh[who[i]].y, sizeof ys[i]);
		assert_int_equal(sa_shamir_combine(&L, (const uint64_t(*)[SA_SHARE_LIMBS])ys, got), SHOAL_OK);
		assert_memory_equal(got, secret, sizeof got);
	}
	rng_fini(&r);
	sa_lagrange_fini(&L);
	assert_null(L.x);
	assert_null(L.lambda);
	sa_lagrange_fini(&L); /* twice is harmless */
}

static void
test_shamir_seeded_split_repeats(void **state)
{
	static const uint32_t xs[] = {1, 2, 3, 4};
	uint8_t secret[SA_SECRET_BYTES] = {42};
	sa_share a[4], b[4];
	rng r;

	rng_init(&r, 10, 0);
	assert_int_equal(sa_shamir_split(secret, 3, 4, xs, &r, a), SHOAL_OK);
	rng_fini(&r);
	rng_init(&r, 10, 0);
	assert_int_equal(sa_shamir_split(secret, 3, 4, xs, &r, b), SHOAL_OK);
	rng_fini(&r);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(a[i].x, b[i].x);
		assert_memory_equal(a[i].y, b[i].y, sizeof a[i].y);
		for (int k = 0; k < SA_SHARE_LIMBS; k++)
			assert_true(a[i].y[k] < SA_P);
	}
}

static void
test_shamir_split_rejects_bad_arguments(void **state)
{
	static const uint32_t ok[] = {1, 2, 3};
	static const uint32_t dup[] = {1, 2, 1};
	static const uint32_t zero[] = {1, 0, 3};
	uint32_t many[100];
	uint8_t secret[SA_SECRET_BYTES] = {0};
	sa_share sh[100];

	assert_int_equal(sa_shamir_split(secret, 0, 3, ok, NULL, sh), SHOAL_EINVAL);
	assert_int_equal(sa_shamir_split(secret, 4, 3, ok, NULL, sh), SHOAL_EINVAL);
	assert_int_equal(sa_shamir_split(secret, 1, 0, ok, NULL, sh), SHOAL_EINVAL);
	assert_int_equal(sa_shamir_split(secret, 2, 3, dup, NULL, sh), SHOAL_EINVAL);
	assert_int_equal(sa_shamir_split(secret, 2, 3, zero, NULL, sh), SHOAL_EINVAL);
	assert_int_equal(sa_shamir_split(secret, 2, 3, NULL, NULL, sh), SHOAL_EINVAL);
	assert_int_equal(sa_shamir_split(secret, 2, 3, ok, NULL, NULL), SHOAL_EINVAL);
	assert_int_equal(sa_shamir_split(secret, 3, 3, ok, NULL, sh), SHOAL_OK);

	/* More holders than the quadratic check handles: the sorted check. */
	for (uint32_t i = 0; i < 100; i++)
		many[i] = 1000 - 7 * i;
	assert_int_equal(sa_shamir_split(secret, 50, 100, many, NULL, sh), SHOAL_OK);
	many[99] = many[3];
	assert_int_equal(sa_shamir_split(secret, 50, 100, many, NULL, sh), SHOAL_EINVAL);
	many[99] = 0;
	assert_int_equal(sa_shamir_split(secret, 50, 100, many, NULL, sh), SHOAL_EINVAL);

	sa_lagrange L;
	assert_int_equal(sa_lagrange_init(&L, ok, 0), SHOAL_EINVAL);
	assert_int_equal(sa_lagrange_init(&L, dup, 3), SHOAL_EINVAL);
	assert_null(L.x);
	assert_null(L.lambda);
	assert_int_equal(sa_lagrange_init(&L, zero, 3), SHOAL_EINVAL);
	assert_int_equal(sa_lagrange_init(&L, zero, 1), SHOAL_OK); /* {1} alone is fine */
	sa_lagrange_fini(&L);
	assert_int_equal(sa_lagrange_init(&L, zero + 1, 1), SHOAL_EINVAL);
	sa_lagrange_fini(&L);
}

static void
test_shamir_share_wire_form(void **state)
{
	static const uint8_t want[SA_SHARE_BYTES] = {
		0x01, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0,
		0x04, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f,
	};
	sa_share s = {.x = 5, .y = {1, 2, 3, 4, SA_P - 1}}, back;
	uint8_t wire[SA_SHARE_BYTES];

	sa_share_write(&s, wire);
	assert_memory_equal(wire, want, sizeof want);
	assert_int_equal(sa_share_read(&back, 5, wire), SHOAL_OK);
	assert_int_equal(back.x, s.x);
	assert_memory_equal(back.y, s.y, sizeof s.y);

	/* A limb equal to p, or any larger value, is not a field element. */
	for (int k = 0; k < SA_SHARE_LIMBS; k++) {
		uint8_t bad[SA_SHARE_BYTES];
		sa_share untouched = {.x = 77, .y = {9, 9, 9, 9, 9}};
		memcpy(bad, wire, sizeof bad);
		memcpy(bad + 8 * k, "\xff\xff\xff\xff\xff\xff\xff\x1f", 8); /* p */
		assert_int_equal(sa_share_read(&untouched, 5, bad), SHOAL_EMALFORMED);
		assert_int_equal(untouched.x, 77);
		assert_true(untouched.y[k] == 9);
		memset(bad + 8 * k, 0xff, 8);
		assert_int_equal(sa_share_read(&untouched, 5, bad), SHOAL_EMALFORMED);
		bad[8 * k + 7] = 0x20; /* 2^61 + ... */
		assert_int_equal(sa_share_read(&untouched, 5, bad), SHOAL_EMALFORMED);
	}
}

static void
test_shamir_combine_detects_inconsistent_shares(void **state)
{
	static const uint32_t xs[] = {1, 2, 3, 4, 5};
	enum { TRIALS = 200 };
	unsigned detected = 0, detected_last = 0, tried_last = 0;
	rng r;

	rng_init(&r, 11, 0);
	for (int trial = 0; trial < TRIALS; trial++) {
		uint8_t secret[SA_SECRET_BYTES], got[SA_SECRET_BYTES];
		sa_share sh[5];
		rng_bytes(&r, secret, sizeof secret);
		assert_int_equal(sa_shamir_split(secret, 3, 5, xs, &r, sh), SHOAL_OK);
		uint32_t hx[3] = {xs[4], xs[0], xs[2]};
		uint64_t ys[3][SA_SHARE_LIMBS];
		memcpy(ys[0], sh[4].y, sizeof ys[0]);
		memcpy(ys[1], sh[0].y, sizeof ys[1]);
		memcpy(ys[2], sh[2].y, sizeof ys[2]);
		/* Change one limb of one share by a nonzero amount. */
		int k = trial % SA_SHARE_LIMBS;
		uint64_t delta = 1 + rng_u64(&r) % (SA_P - 1);
		ys[trial % 3][k] = sa_gf_add(ys[trial % 3][k], delta);
		sa_lagrange L;
		assert_int_equal(sa_lagrange_init(&L, hx, 3), SHOAL_OK);
		shoal_err e = sa_shamir_combine(&L, (const uint64_t(*)[SA_SHARE_LIMBS])ys, got);
		sa_lagrange_fini(&L);
		/* Never silently the right secret: the changed limb moves by lambda * delta != 0. */
		assert_true(e == SHOAL_EMALFORMED || memcmp(got, secret, sizeof got) != 0);
		if (e == SHOAL_EMALFORMED) {
			uint8_t zero[SA_SECRET_BYTES] = {0};
			assert_memory_equal(got, zero, sizeof zero);
			detected++;
		}
		if (k == SA_SHARE_LIMBS - 1) {
			tried_last++;
			detected_last += e == SHOAL_EMALFORMED;
		}
	}
	rng_fini(&r);
	/* A changed 56-bit limb lands in range with probability 2^-5, the
	 * 32-bit limb with 2^-29: expect about 195 of 200 and all 40. */
	assert_true(detected >= 180);
	assert_int_equal(detected_last, tried_last);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shamir_field_known_answers),
		cmocka_unit_test(test_shamir_every_subset_reconstructs),
		cmocka_unit_test(test_shamir_threshold_one_is_the_secret),
		cmocka_unit_test(test_shamir_too_few_or_forged_shares_fail),
		cmocka_unit_test(test_shamir_lagrange_reused_for_many_secrets),
		cmocka_unit_test(test_shamir_seeded_split_repeats),
		cmocka_unit_test(test_shamir_split_rejects_bad_arguments),
		cmocka_unit_test(test_shamir_share_wire_form),
		cmocka_unit_test(test_shamir_combine_detects_inconsistent_shares),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
