/* test_adaclip.c - adaptive clipping: the bound converges to the target
 * quantile of a known norm distribution, the count noise has the stated
 * spread, and the update's noise multiplier composes back to z. */
#include "testutil.h"

#include <math.h>

#include "privacy/adaclip.h"
#include "privacy/rdp.h"

/* Norms 1, 2, ..., 100 each round: the median is ~50. Starting far below
 * and far above, C settles near it (noise-free count: tiny count_std). */
static void
test_adaclip_tracks_quantile(void **state)
{
	const double starts[] = {0.1, 1000};
	for (int s = 0; s < 2; s++) {
		dp_adaclip a = {.clip = starts[s], .quantile = 0.5, .lr = 0.2, .count_std = 1e-9};
		rng r;
		rng_init(&r, 3, 4);
		assert_int_equal(dp_adaclip_check(&a), SHOAL_OK);
		for (int round = 0; round < 400; round++) {
			uint32_t under = 0;
			for (int i = 1; i <= 100; i++)
				under += i <= a.clip;
			dp_adaclip_step(&a, under, 100, 100, &r);
		}
		assert_true(a.clip > 44 && a.clip < 56);
		rng_fini(&r);
	}
	/* target 0.9: the 90th percentile */
	dp_adaclip a = {.clip = 1, .quantile = 0.9, .lr = 0.2, .count_std = 1e-9};
	rng r;
	rng_init(&r, 3, 5);
	for (int round = 0; round < 400; round++) {
		uint32_t under = 0;
		for (int i = 1; i <= 100; i++)
			under += i <= a.clip;
		dp_adaclip_step(&a, under, 100, 100, &r);
	}
	assert_true(a.clip > 84 && a.clip < 96);
	rng_fini(&r);
}

/* The released fraction is (count + N(0, sigma_b^2)) / E: its spread over
 * many rounds at a fixed count is sigma_b / E. */
static void
test_adaclip_count_noise(void **state)
{
	rng r;
	rng_init(&r, 9, 1);
	double s = 0, s2 = 0;
	const int N = 20000;
	for (int i = 0; i < N; i++) {
		dp_adaclip a = {.clip = 1, .quantile = 0.5, .lr = 0.2, .count_std = 5};
		double b = dp_adaclip_step(&a, 50, 100, 100, &r);
		assert_true(fabs(a.clip - exp(-0.2 * (b - 0.5))) < 1e-12);
		s += b;
		s2 += b * b;
	}
	double mean = s / N, sd = sqrt(s2 / N - mean * mean);
	assert_true(fabs(mean - 0.5) < 5 * 0.05 / sqrt(N));
	assert_true(fabs(sd - 0.05) < 0.002);
	rng_fini(&r);
}

/* z_u^-2 + (2 sigma_b)^-2 = z^-2, and the combined mechanism charges the
 * same RDP as one Gaussian with multiplier z (q = 1: alpha / (2 z^2)). */
static void
test_adaclip_noise_split(void **state)
{
	double zu;
	assert_int_equal(dp_adaclip_update_z(1.0, 5.0, &zu), SHOAL_OK);
	assert_true(fabs(1 / (zu * zu) + 1 / 100.0 - 1.0) < 1e-12);
	assert_true(zu > 1.0);
	double rdp_u = dp_rdp_sgm(1, zu, 8), rdp_b = 8 / (2 * (2 * 5.0) * (2 * 5.0));
	assert_true(fabs(rdp_u + rdp_b - dp_rdp_sgm(1, 1.0, 8)) < 1e-9);
	assert_int_equal(dp_adaclip_update_z(1.0, 0.5, &zu), SHOAL_EINVAL); /* 2 sigma_b = z */
	assert_int_equal(dp_adaclip_update_z(0, 5, &zu), SHOAL_EINVAL);
	dp_adaclip bad = {.clip = 1, .quantile = 1, .lr = 0.2, .count_std = 1};
	assert_int_equal(dp_adaclip_check(&bad), SHOAL_EINVAL);
	bad.quantile = 0.5;
	bad.clip = NAN;
	assert_int_equal(dp_adaclip_check(&bad), SHOAL_EINVAL);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_adaclip_tracks_quantile),
		cmocka_unit_test(test_adaclip_count_noise),
		cmocka_unit_test(test_adaclip_noise_split),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
