/* dptool.h - run the built shoal-dp binary from a test and read its JSON
 * line (shared by the accountant, central-DP and distributed-DP tests). */
#ifndef SHOAL_TEST_DPTOOL_H
#define SHOAL_TEST_DPTOOL_H

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "testutil.h"

#define DPTOOL_BIN SHOAL_BIN_DIR "/shoal-dp"

/* Runs shoal-dp with args (NULL-terminated, at most 30); its stdout goes
 * to out (NUL-terminated, clipped to cap). Returns the exit status. */
static inline int
dptool_run(const char *const *args, char *out, size_t cap)
{
	const char *argv[32];
	int fd[2], st;
	size_t n = 0, len = 0;
	ssize_t got;
	pid_t pid;

	if (access(DPTOOL_BIN, X_OK) != 0) {
		fprintf(stderr, "%s is missing: build all targets (cmake --build) first\n", DPTOOL_BIN);
		fail();
	}
	argv[n++] = DPTOOL_BIN;
	while (*args != NULL && n < 31)
		argv[n++] = *args++;
	argv[n] = NULL;
	assert_int_equal(pipe(fd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fd[1], 1);
		close(fd[0]);
		close(fd[1]);
		execv(DPTOOL_BIN, (char *const *)argv);
		_exit(127);
	}
	close(fd[1]);
	while (len + 1 < cap && (got = read(fd[0], out + len, cap - 1 - len)) > 0)
		len += (size_t)got;
	out[len] = '\0';
	close(fd[0]);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Runs shoal-dp, which must exit 0, and returns its JSON object (the
 * caller decrefs). */
static inline json_t *
dptool_json(const char *const *args)
{
	char out[4096];
	assert_int_equal(dptool_run(args, out, sizeof out), 0);
	json_t *o = json_loads(out, 0, NULL);
	assert_non_null(o);
	return o;
}

#endif
