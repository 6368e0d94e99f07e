/* testutil.h - shared cmocka glue: run one case by name (argv[1]) so CMake
 * can register each case as its own ctest test. */
#ifndef SHOAL_TESTUTIL_H
#define SHOAL_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#define SHOAL_TEST_MAIN(tests)                                         \
	int main(int argc, char **argv)                                    \
	{                                                                  \
		if (argc > 1)                                                  \
			cmocka_set_test_filter(argv[1]);                           \
		return cmocka_run_group_tests(tests, NULL, NULL);              \
	}

#endif
