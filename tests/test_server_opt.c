/* test_server_opt.c - server optimizers on a small known case. Expected
 * values come from a separate Python implementation of Reddi et al. 2021
 * Algorithm 2 with float32 state (FedAvgM's also by hand: x0 1.1 -> 1.49
 * -> 1.791). */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "server/opt.h"

static const double deltas[3][2] = {{0.1, -0.2}, {0.3, 0.05}, {-0.05, 0.0}};

static void
run(srv_opt_kind kind, double eta, float out[2])
{
	srv_opt_config c;
	srv_opt o;
	srv_opt_config_defaults(&c);
	c.kind = kind;
	c.lr = eta;
	assert_int_equal(srv_opt_init(&o, &c, 2), SHOAL_OK);
	out[0] = 1.0f;
	out[1] = -0.5f;
	for (int r = 0; r < 3; r++)
		srv_opt_step(&o, out, deltas[r]);
	srv_opt_fini(&o);
}

static void
expect(srv_opt_kind kind, double eta, double x0, double x1)
{
	float x[2];
	run(kind, eta, x);
	assert_true(fabs(x[0] - x0) < 1e-6);
	assert_true(fabs(x[1] - x1) < 1e-6);
}

static void test_fedavg_known(void **s) { expect(SRV_OPT_FEDAVG, 1.0, 1.35000014, -0.649999976); }
static void test_fedavgm_known(void **s) { expect(SRV_OPT_FEDAVGM, 1.0, 1.79100001, -0.946999967); }
static void test_fedadam_known(void **s) { expect(SRV_OPT_FEDADAM, 0.1, 1.3016566, -0.710045755); }
static void test_fedyogi_known(void **s) { expect(SRV_OPT_FEDYOGI, 0.1, 1.30111516, -0.709266603); }

static void
test_fedavg_eta1_is_plain_average(void **s)
{
	/* FedAvg with eta 1 must add exactly (float)d: the default path. */
	srv_opt_config c;
	srv_opt o;
	srv_opt_config_defaults(&c);
	assert_int_equal(srv_opt_init(&o, &c, 1), SHOAL_OK);
	float x = 0.25f;
	double d = 1.0 / 3.0;
	srv_opt_step(&o, &x, &d);
	assert_true(x == 0.25f + (float)d);
	assert_null(o.m);
	srv_opt_fini(&o);
}

static void
test_opt_parse_and_validate(void **s)
{
	srv_opt_kind k;
	assert_int_equal(srv_opt_parse("fedyogi", &k), SHOAL_OK);
	assert_int_equal(k, SRV_OPT_FEDYOGI);
	assert_string_equal(srv_opt_name(k), "fedyogi");
	assert_int_equal(srv_opt_parse("adam", &k), SHOAL_EINVAL);
	srv_opt_config c;
	srv_opt o;
	srv_opt_config_defaults(&c);
	c.kind = SRV_OPT_FEDADAM;
	c.beta2 = 1.0;
	assert_int_equal(srv_opt_init(&o, &c, 4), SHOAL_EINVAL);
	c.beta2 = 0.99;
	c.tau = 0;
	assert_int_equal(srv_opt_init(&o, &c, 4), SHOAL_EINVAL);
	c.tau = 1e-3;
	c.lr = -1;
	assert_int_equal(srv_opt_init(&o, &c, 4), SHOAL_EINVAL);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fedavg_known),
		cmocka_unit_test(test_fedavgm_known),
		cmocka_unit_test(test_fedadam_known),
		cmocka_unit_test(test_fedyogi_known),
		cmocka_unit_test(test_fedavg_eta1_is_plain_average),
		cmocka_unit_test(test_opt_parse_and_validate),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
