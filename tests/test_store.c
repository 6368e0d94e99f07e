/* test_store.c - the simulator's residual store (sim/store.h): vectors
 * come back exactly, in memory and after the store moves to its file,
 * clients without one have none, and bad indices are refused. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "sim/store.h"

#define DIM 1000

static void
fill(float *v, uint32_t i, float salt)
{
	for (int j = 0; j < DIM; j++)
		v[j] = (float)i * 0.5f + (float)j * 1e-3f + salt;
}

static void
test_memory_then_file(void **state)
{
	sim_store *s;
	float v[DIM], got[DIM];
	bool found;

	(void)state;
	/* Room for three vectors in memory; the fourth moves all to the file. */
	assert_int_equal(sim_store_new(100, DIM, 3 * DIM * sizeof(float), &s), SHOAL_OK);
	assert_int_equal(sim_store_get(s, 5, got, &found), SHOAL_OK);
	assert_false(found);
	for (uint32_t i = 10; i < 13; i++) {
		fill(v, i, 0);
		assert_int_equal(sim_store_put(s, i, v), SHOAL_OK);
	}
	assert_false(sim_store_on_disk(s));
	fill(v, 11, 7); /* overwrite in place: no new slot */
	assert_int_equal(sim_store_put(s, 11, v), SHOAL_OK);
	assert_int_equal(sim_store_count(s), 3);
	assert_false(sim_store_on_disk(s));
	fill(v, 99, 0);
	assert_int_equal(sim_store_put(s, 99, v), SHOAL_OK);
	assert_true(sim_store_on_disk(s));
	assert_int_equal(sim_store_count(s), 4);
	for (uint32_t i = 10; i < 13; i++) {
		fill(v, i, i == 11 ? 7 : 0);
		assert_int_equal(sim_store_get(s, i, got, &found), SHOAL_OK);
		assert_true(found);
		assert_memory_equal(got, v, sizeof v);
	}
	fill(v, 12, 3); /* overwrite on disk */
	assert_int_equal(sim_store_put(s, 12, v), SHOAL_OK);
	assert_int_equal(sim_store_get(s, 12, got, &found), SHOAL_OK);
	assert_memory_equal(got, v, sizeof v);
	fill(v, 99, 0);
	assert_int_equal(sim_store_get(s, 99, got, &found), SHOAL_OK);
	assert_memory_equal(got, v, sizeof v);
	assert_int_equal(sim_store_get(s, 0, got, &found), SHOAL_OK);
	assert_false(found);
	assert_int_equal(sim_store_put(s, 100, v), SHOAL_EINVAL);
	assert_int_equal(sim_store_get(s, 100, got, &found), SHOAL_EINVAL);
	sim_store_free(s);
}

static void
test_bad_config_and_unwritable_dir(void **state)
{
	sim_store *s;
	float v[DIM] = {0};

	(void)state;
	assert_int_equal(sim_store_new(0, DIM, 0, &s), SHOAL_EINVAL);
	assert_int_equal(sim_store_new(10, 0, 0, &s), SHOAL_EINVAL);
	/* No memory budget and a TMPDIR that does not exist: a clear EIO. */
	const char *old = getenv("TMPDIR");
	char *keep = old != NULL ? strdup(old) : NULL;
	setenv("TMPDIR", "/nonexistent/shoal-test", 1);
	assert_int_equal(sim_store_new(10, DIM, 0, &s), SHOAL_OK);
	assert_int_equal(sim_store_put(s, 1, v), SHOAL_EIO);
	sim_store_free(s);
	if (keep != NULL) {
		setenv("TMPDIR", keep, 1);
		free(keep);
	} else {
		unsetenv("TMPDIR");
	}
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_memory_then_file),
	cmocka_unit_test(test_bad_config_and_unwritable_dir),
};

SHOAL_TEST_MAIN(tests)
