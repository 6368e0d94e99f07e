/* test_state.c - the client's residual file: round trip, and refusal of
 * corrupt, truncated and foreign files without touching the caller's data. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/state.h"

static void
tmpdir(char *dir, size_t n)
{
	snprintf(dir, n, "/tmp/shoal-state-XXXXXX");
	assert_non_null(mkdtemp(dir));
}

static void
cleanup(const char *dir)
{
	char p[512];
	snprintf(p, sizeof p, "%s/residual", dir);
	unlink(p);
	rmdir(dir);
}

static void
test_residual_round_trip(void **state)
{
	char dir[64];
	float r[5] = {1.5f, -0.0f, 3e-38f, -7.25f, 0}, back[5] = {0};
	tmpdir(dir, sizeof dir);
	assert_int_equal(cli_state_save_residual(dir, r, 5), SHOAL_OK);
	assert_int_equal(cli_state_load_residual(dir, back, 5), SHOAL_OK);
	assert_memory_equal(r, back, sizeof r);
	/* Saving again replaces it atomically (no .tmp left behind). */
	r[0] = 2;
	assert_int_equal(cli_state_save_residual(dir, r, 5), SHOAL_OK);
	char tmp[512];
	snprintf(tmp, sizeof tmp, "%s/residual.tmp", dir);
	assert_int_not_equal(access(tmp, F_OK), 0);
	assert_int_equal(cli_state_load_residual(dir, back, 5), SHOAL_OK);
	assert_true(back[0] == 2);
	cleanup(dir);
}

static void
test_residual_bad_files_refused(void **state)
{
	char dir[64], path[512];
	float r[4] = {1, 2, 3, 4}, back[4] = {9, 9, 9, 9};
	const float keep[4] = {9, 9, 9, 9};
	tmpdir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/residual", dir);
	assert_int_equal(cli_state_load_residual(dir, back, 4), SHOAL_EIO); /* none yet */
	assert_int_equal(cli_state_save_residual(dir, r, 4), SHOAL_OK);
	assert_int_equal(cli_state_load_residual(dir, back, 5), SHOAL_EDIM);
	/* Flip one byte of a value: the checksum catches it. */
	FILE *f = fopen(path, "r+b");
	assert_non_null(f);
	fseek(f, 14, SEEK_SET);
	fputc(0x7f, f);
	fclose(f);
	assert_int_equal(cli_state_load_residual(dir, back, 4), SHOAL_EFORMAT);
	/* Truncate it. */
	assert_int_equal(cli_state_save_residual(dir, r, 4), SHOAL_OK);
	assert_int_equal(truncate(path, 20), 0);
	assert_int_equal(cli_state_load_residual(dir, back, 4), SHOAL_ETRUNC);
	/* Not ours at all. */
	f = fopen(path, "wb");
	fputs("hello, this is not a residual file", f);
	fclose(f);
	assert_int_equal(cli_state_load_residual(dir, back, 4), SHOAL_EFORMAT);
	assert_memory_equal(back, keep, sizeof keep);
	cleanup(dir);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_residual_round_trip),
		cmocka_unit_test(test_residual_bad_files_refused),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
