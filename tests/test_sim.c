/* test_sim.c - end-to-end tests of shoal-sim: runs the built binary as a
 * child process with small settings (logreg, 20 clients, 5 per round,
 * 3 rounds) and checks determinism across --threads, seed sensitivity,
 * accuracy, the non-IID partitions and flag validation. No assertion is
 * about wall-clock time; a watchdog only bounds a hung child. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/testutil.h"

#define SIM_BIN SHOAL_BIN_DIR "/shoal-sim"
#define WATCHDOG_S 300
#define MAX_ARGS 48
#define HASH_HEX 64

typedef struct sim_run {
	int status;     /* exit code, or 128 + signal */
	char *out;      /* stdout, NUL-terminated */
	char *err;      /* stderr, NUL-terminated */
	char hash[HASH_HEX + 1];
} sim_run;

static char *
read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, got;

	if (f == NULL)
		return NULL;
	do {
		if (cap - len < 4096) {
			cap = cap ? 2 * cap : 8192;
			buf = realloc(buf, cap + 1);
			assert_non_null(buf);
		}
		got = fread(buf + len, 1, cap - len, f);
		len += got;
	} while (got > 0);
	fclose(f);
	buf[len] = '\0';
	return buf;
}

static void
make_tmpdir(char *dir, size_t cap)
{
	const char *base = getenv("TMPDIR");

	snprintf(dir, cap, "%s/shoal-test-sim-XXXXXX", base && *base ? base : "/tmp");
	assert_non_null(mkdtemp(dir));
}

/* Run shoal-sim with argv[1..] = args (NULL-terminated); capture its output
 * in files under dir. */
static void
run_sim(const char *dir, const char *const *args, sim_run *r)
{
	char out_path[512], err_path[512];
	const char *argv[MAX_ARGS + 2];
	size_t n = 0;
	pid_t pid;
	int st = 0;
	struct timespec start, now;

	memset(r, 0, sizeof(*r));
	argv[n++] = SIM_BIN;
	for (; args[n - 1] != NULL; n++) {
		assert_true(n <= MAX_ARGS);
		argv[n] = args[n - 1];
	}
	argv[n] = NULL;
	snprintf(out_path, sizeof(out_path), "%s/stdout", dir);
	snprintf(err_path, sizeof(err_path), "%s/stderr", dir);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
			_exit(127);
		execv(SIM_BIN, (char *const *)argv);
		_exit(127);
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		pid_t w = waitpid(pid, &st, WNOHANG);

		if (w == pid)
			break;
		assert_true(w == 0 || (w < 0 && errno == EINTR));
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec > WATCHDOG_S) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			fail_msg("shoal-sim did not finish within %d s", WATCHDOG_S);
		}
		nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
	}
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	r->out = read_file(out_path);
	r->err = read_file(err_path);
	assert_non_null(r->out);
	assert_non_null(r->err);
	unlink(out_path);
	unlink(err_path);

	const char *key = "final model blake2b: ";
	const char *h = strstr(r->err, key);
	if (h != NULL) {
		h += strlen(key);
		if (strspn(h, "0123456789abcdef") >= HASH_HEX)
			memcpy(r->hash, h, HASH_HEX);
	}
}

static void
sim_run_fini(sim_run *r)
{
	free(r->out);
	free(r->err);
}

/* The small, fast configuration every case uses; seed, threads, extra flags
 * and the metrics path vary. */
static void
run_small(const char *dir, const char *metrics, const char *seed, const char *threads,
          const char *partition, sim_run *r)
{
	const char *args[] = {
		"--model", "logreg", "--compress", "none", "--clients", "20", "--clients-per-round", "5",
		"--rounds", "3", "--partition", partition, "--seed", seed,
		"--threads", threads, "--data-dir", SHOAL_DATA_DIR, "--metrics", metrics,
		"--quiet", NULL,
	};

	run_sim(dir, args, r);
	if (r->status != 0)
		print_error("shoal-sim stderr:\n%s\n", r->err);
	assert_int_equal(r->status, 0);
	assert_int_equal((int)strlen(r->hash), HASH_HEX);
}

/* Keys that measure time (wall clock or virtual) rather than the result. */
static bool
is_time_key(const char *k)
{
	size_t n = strlen(k);

	return strcmp(k, "time") == 0 || strcmp(k, "ts") == 0 ||
	       (n > 2 && strcmp(k + n - 2, "_s") == 0) ||
	       (n > 3 && strcmp(k + n - 3, "_ms") == 0);
}

/* Metrics lines with the time keys removed and keys sorted, one per line;
 * *n_lines gets the round count, *stripped whether any time key existed. */
static char *
metrics_canonical(const char *path, size_t *n_lines, bool *stripped)
{
	char *text = read_file(path);
	char *out = NULL, *save = NULL;
	size_t len = 0;

	assert_non_null(text);
	*n_lines = 0;
	*stripped = false;
	for (char *line = strtok_r(text, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		json_error_t jerr;
		json_t *j = json_loads(line, 0, &jerr);
		const char *k;
		json_t *v;
		void *tmp;
		char *s;

		if (j == NULL)
			fail_msg("metrics line is not JSON: %s (%s)", line, jerr.text);
		assert_true(json_is_object(j));
		json_object_foreach_safe(j, tmp, k, v) {
			(void)v;
			if (is_time_key(k)) {
				json_object_del(j, k);
				*stripped = true;
			}
		}
		s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
		assert_non_null(s);
		out = realloc(out, len + strlen(s) + 2);
		assert_non_null(out);
		memcpy(out + len, s, strlen(s));
		len += strlen(s);
		out[len++] = '\n';
		out[len] = '\0';
		free(s);
		json_decref(j);
		(*n_lines)++;
	}
	free(text);
	if (out == NULL)
		out = calloc(1, 1);
	return out;
}

static void
cleanup_dir(const char *dir, const char *const *files)
{
	char path[600];

	for (; *files != NULL; files++) {
		snprintf(path, sizeof(path), "%s/%s", dir, *files);
		unlink(path);
	}
	rmdir(dir);
}

static void
sim_deterministic_across_threads(void **state)
{
	char dir[256], m1[300], m2[300];
	sim_run r1, r2;
	size_t n1, n2;
	bool s1, s2;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m1, sizeof(m1), "%s/m1.jsonl", dir);
	snprintf(m2, sizeof(m2), "%s/m2.jsonl", dir);
	run_small(dir, m1, "7", "1", "iid", &r1);
	run_small(dir, m2, "7", "2", "iid", &r2);
	assert_string_equal(r1.hash, r2.hash);

	char *c1 = metrics_canonical(m1, &n1, &s1);
	char *c2 = metrics_canonical(m2, &n2, &s2);
	assert_int_equal(n1, 3);
	assert_int_equal(n2, 3);
	assert_string_equal(c1, c2);
	if (!s1 && !s2) {
		/* No time keys: the files must be byte-identical. */
		char *raw1 = read_file(m1), *raw2 = read_file(m2);

		assert_string_equal(raw1, raw2);
		free(raw1);
		free(raw2);
	}
	free(c1);
	free(c2);
	sim_run_fini(&r1);
	sim_run_fini(&r2);
	cleanup_dir(dir, (const char *const[]){"m1.jsonl", "m2.jsonl", NULL});
}

static void
sim_seed_changes_result(void **state)
{
	char dir[256], m[300];
	sim_run r1, r2;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m, sizeof(m), "%s/m.jsonl", dir);
	run_small(dir, m, "7", "2", "iid", &r1);
	run_small(dir, m, "8", "2", "iid", &r2);
	assert_string_not_equal(r1.hash, r2.hash);
	sim_run_fini(&r1);
	sim_run_fini(&r2);
	cleanup_dir(dir, (const char *const[]){"m.jsonl", NULL});
}

/* Accuracy of the last metrics line. */
static double
last_accuracy(const char *path, size_t *n_lines)
{
	char *text = read_file(path);
	char *save = NULL, *last = NULL;
	json_error_t jerr;
	json_t *j, *acc;
	double a;

	assert_non_null(text);
	*n_lines = 0;
	for (char *line = strtok_r(text, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		last = line;
		(*n_lines)++;
	}
	assert_non_null(last);
	j = json_loads(last, 0, &jerr);
	assert_non_null(j);
	acc = json_object_get(j, "accuracy");
	assert_non_null(acc);
	assert_true(json_is_number(acc));
	a = json_number_value(acc);
	json_decref(j);
	free(text);
	return a;
}

static void
sim_reaches_accuracy_logreg(void **state)
{
	char dir[256], m[300];
	sim_run r;
	size_t n;
	double acc;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m, sizeof(m), "%s/m.jsonl", dir);
	run_small(dir, m, "1", "2", "iid", &r);
	acc = last_accuracy(m, &n);
	assert_int_equal(n, 3);
	if (acc < 0.85)
		fail_msg("final accuracy %.4f < 0.85", acc);
	assert_non_null(strstr(r.err, "final test accuracy: "));
	sim_run_fini(&r);
	cleanup_dir(dir, (const char *const[]){"m.jsonl", NULL});
}

static void
sim_partition_shards_and_dirichlet_run(void **state)
{
	static const char *const specs[] = {"shards", "dirichlet:0.5"};
	char dir[256], m[300];
	size_t n;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m, sizeof(m), "%s/m.jsonl", dir);
	for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
		sim_run r;
		double acc;

		run_small(dir, m, "3", "2", specs[i], &r);
		acc = last_accuracy(m, &n);
		assert_int_equal(n, 3);
		assert_true(acc >= 0.0 && acc <= 1.0);
		sim_run_fini(&r);
	}
	cleanup_dir(dir, (const char *const[]){"m.jsonl", NULL});
}

/* More clients than training examples: each draws its own seeded subset.
 * 70,000 clients, 100 a round, run to the end, learn, and give the same
 * model with 1 and 2 threads; a subset larger than the dataset, or the
 * nng transport for so many clients, is refused. */
static void
sim_population_beyond_the_dataset(void **state)
{
	char dir[256], m[300];
	char hash[2][HASH_HEX + 1];
	size_t n;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m, sizeof(m), "%s/m.jsonl", dir);
	for (int t = 0; t < 2; t++) {
		const char *args[] = {
			"--model", "logreg", "--compress", "none", "--clients", "70000",
			"--clients-per-round", "100", "--rounds", "3", "--client-examples", "30",
			"--seed", "4",
			"--threads", t == 0 ? "1" : "2", "--data-dir", SHOAL_DATA_DIR, "--metrics", m,
			"--quiet", NULL,
		};
		sim_run r;

		run_sim(dir, args, &r);
		if (r.status != 0)
			print_error("shoal-sim stderr:\n%s\n", r.err);
		assert_int_equal(r.status, 0);
		assert_int_equal((int)strlen(r.hash), HASH_HEX);
		memcpy(hash[t], r.hash, sizeof hash[t]);
		assert_true(last_accuracy(m, &n) > 0.5); /* 0.64: 3 rounds of 100 x 3 steps */
		assert_int_equal(n, 3);
		sim_run_fini(&r);
	}
	assert_string_equal(hash[0], hash[1]);
	static const char *const bad[][9] = {
		{"--clients", "70000", "--client-examples", "60001", NULL},
		{"--clients", "70000", "--transport", "nng", NULL},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		sim_run r;

		run_sim(dir, bad[i], &r);
		assert_int_equal(r.status, 2);
		assert_true(strlen(r.err) > 0);
		sim_run_fini(&r);
	}
	cleanup_dir(dir, (const char *const[]){"m.jsonl", NULL});
}

static void
sim_rejects_bad_flags(void **state)
{
	static const char *const bad[][5] = {
		{"--clients", "0", NULL},
		{"--clients", "-3", NULL},
		{"--clients", "12x", NULL},
		{"--partition", "bogus", NULL},
		{"--partition", "dirichlet:-1", NULL},
		{"--model", "nope", NULL},
		{"--clients", "10", "--clients-per-round", "11", NULL},
		{"--threads", "0", NULL},
		{"--lr", "-0.1", NULL},
		{"--rounds", "", NULL},
		{"--epochs", "0", NULL},
		{"--no-such-flag", NULL},
		{"--rounds", NULL},
		{"stray-argument", NULL},
	};
	char dir[256];

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		sim_run r;

		run_sim(dir, bad[i], &r);
		if (r.status != 2)
			fail_msg("'%s %s' exited %d, want 2", bad[i][0], bad[i][1] ? bad[i][1] : "",
			         r.status);
		if (strlen(r.err) == 0)
			fail_msg("'%s %s' printed nothing on stderr", bad[i][0],
			         bad[i][1] ? bad[i][1] : "");
		sim_run_fini(&r);
	}
	rmdir(dir);
}

/* --dp distributed: refused without secure aggregation or Poisson sampling
 * (with the flag to add in the message); a small run spends epsilon, and
 * its clients' noise comes from --seed, so the result does not depend on
 * --threads. */
static void
sim_distributed_dp(void **state)
{
	char dir[256], m1[300], m2[300];
	sim_run r, r1, r2;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	const char *no_secagg[] = {"--model", "logreg", "--clients", "20", "--sampling", "poisson",
	                           "--sample-rate", "0.5", "--dp", "distributed", "--clip", "1",
	                           "--noise-multiplier", "1", "--data-dir", SHOAL_DATA_DIR, NULL};
	run_sim(dir, no_secagg, &r);
	assert_int_equal(r.status, 1);
	assert_non_null(strstr(r.err, "--secagg"));
	sim_run_fini(&r);
	const char *fixed[] = {"--model", "logreg", "--clients", "20", "--secagg", "full", "--dp",
	                       "distributed", "--clip", "1", "--noise-multiplier", "1",
	                       "--data-dir", SHOAL_DATA_DIR, NULL};
	run_sim(dir, fixed, &r);
	assert_int_equal(r.status, 1);
	assert_non_null(strstr(r.err, "--sampling poisson"));
	sim_run_fini(&r);
	const char *bad[] = {"--dp", "local", NULL};
	run_sim(dir, bad, &r);
	assert_int_equal(r.status, 2);
	sim_run_fini(&r);

	snprintf(m1, sizeof(m1), "%s/m1.jsonl", dir);
	snprintf(m2, sizeof(m2), "%s/m2.jsonl", dir);
	for (int t = 1; t <= 2; t++) {
		const char *args[] = {
			"--model", "logreg", "--compress", "none", "--clients", "20", "--rounds", "3",
			"--sampling", "poisson", "--sample-rate", "0.5", "--secagg", "plus", "--dp",
			"distributed", "--clip", "1", "--noise-multiplier", "0.5", "--dp-min-clients",
			"4", "--seed", "3", "--threads", t == 1 ? "1" : "2", "--data-dir",
			SHOAL_DATA_DIR, "--metrics", t == 1 ? m1 : m2, "--quiet", NULL,
		};
		run_sim(dir, args, t == 1 ? &r1 : &r2);
		if ((t == 1 ? r1 : r2).status != 0)
			print_error("shoal-sim stderr:\n%s\n", (t == 1 ? r1 : r2).err);
		assert_int_equal((t == 1 ? r1 : r2).status, 0);
	}
	assert_int_equal((int)strlen(r1.hash), HASH_HEX);
	assert_string_equal(r1.hash, r2.hash);
	assert_non_null(strstr(r1.err, "privacy: epsilon"));
	size_t n1;
	bool st;
	char *c1 = metrics_canonical(m1, &n1, &st);
	assert_int_equal(n1, 3);
	assert_non_null(strstr(c1, "\"epsilon\""));
	free(c1);
	sim_run_fini(&r1);
	sim_run_fini(&r2);
	cleanup_dir(dir, (const char *const[]){"m1.jsonl", "m2.jsonl", NULL});
}

static void
sim_help_lists_every_flag(void **state)
{
	static const char *const flags[] = {
		"--clients ", "--clients-per-round", "--rounds", "--model", "--partition",
		"--epochs", "--batch", "--lr", "--threads", "--data-dir", "--metrics",
		"--seed", "--quiet", "--verbose", "--help", "--transport", "--devices",
		"--device-file", "--device-round-timeout", "--report", "--avail-aware",
	};
	const char *args[] = {"--help", NULL};
	char dir[256];
	sim_run r;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	run_sim(dir, args, &r);
	assert_int_equal(r.status, 0);
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
		if (strstr(r.out, flags[i]) == NULL)
			fail_msg("--help does not mention %s", flags[i]);
	sim_run_fini(&r);
	rmdir(dir);
}

static void
sim_missing_data_dir_explains(void **state)
{
	const char *args[] = {"--data-dir", "/nonexistent/shoal-data", "--quiet", NULL};
	char dir[256];
	sim_run r;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	run_sim(dir, args, &r);
	assert_int_not_equal(r.status, 0);
	assert_non_null(strstr(r.err, "scripts/setup.sh"));
	sim_run_fini(&r);
	rmdir(dir);
}

/* run_small with seed 7, 2 threads, iid, plus up to 4 extra flags. */
static void
run_small_flags(const char *dir, const char *metrics, const char *const *extra, sim_run *r)
{
	const char *args[32] = {
		"--model", "logreg", "--compress", "none", "--clients", "20", "--clients-per-round", "5",
		"--rounds", "3", "--seed", "7", "--threads", "2", "--data-dir", SHOAL_DATA_DIR,
		"--metrics", metrics, "--quiet",
	};
	size_t n = 19;
	for (size_t i = 0; extra[i] != NULL && n < 31; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	run_sim(dir, args, r);
	if (r->status != 0)
		print_error("shoal-sim stderr:\n%s\n", r->err);
	assert_int_equal(r->status, 0);
	assert_int_equal((int)strlen(r->hash), HASH_HEX);
}

/* FedProx with mu = 0 is FedAvg: the same final model bit for bit; a
 * positive mu changes it. Likewise the server optimizer FedAvg with server
 * lr 1 is the default, and FedAdam differs. */
static void
sim_prox_mu_zero_is_fedavg(void **state)
{
	char dir[256], m[300];
	sim_run base, zero, prox, avg, adam;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m, sizeof(m), "%s/m.jsonl", dir);
	run_small_flags(dir, m, (const char *const[]){NULL}, &base);
	run_small_flags(dir, m, (const char *const[]){"--prox-mu", "0", NULL}, &zero);
	run_small_flags(dir, m, (const char *const[]){"--prox-mu", "0.5", NULL}, &prox);
	run_small_flags(dir, m, (const char *const[]){"--server-opt", "fedavg", "--server-lr", "1",
	                                              NULL}, &avg);
	run_small_flags(dir, m, (const char *const[]){"--server-opt", "fedadam", "--server-lr",
	                                              "0.01", NULL}, &adam);
	assert_string_equal(base.hash, zero.hash);
	assert_string_not_equal(base.hash, prox.hash);
	assert_string_equal(base.hash, avg.hash);
	assert_string_not_equal(base.hash, adam.hash);
	sim_run_fini(&base);
	sim_run_fini(&zero);
	sim_run_fini(&prox);
	sim_run_fini(&avg);
	sim_run_fini(&adam);
	cleanup_dir(dir, (const char *const[]){"m.jsonl", NULL});
}

/* With compression (stochastic rounding from each client's seeded stream)
 * and the q8 downlink, 1 and 2 training threads give the same model. */
static void
sim_compressed_deterministic_across_threads(void **state)
{
	char dir[256], m[300];
	sim_run one, two;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m, sizeof(m), "%s/m.jsonl", dir);
	run_small_flags(dir, m, (const char *const[]){"--compress", "topk:0.05,q8", "--threads",
	                                              "1", NULL}, &one);
	char *m1 = read_file(m);
	run_small_flags(dir, m, (const char *const[]){"--compress", "topk:0.05,q8", "--threads",
	                                              "2", NULL}, &two);
	char *m2 = read_file(m);
	assert_string_equal(one.hash, two.hash);
	assert_non_null(m1);
	assert_non_null(m2);
	assert_string_equal(m1, m2);
	free(m1);
	free(m2);
	sim_run_fini(&one);
	sim_run_fini(&two);
	cleanup_dir(dir, (const char *const[]){"m.jsonl", NULL});
}

/* The virtual network and nng carry the same messages to the same cores:
 * with ideal devices the two transports give the same metrics (virtual_s
 * aside) and the same final model, here with compression and the q8
 * downlink, and with secure aggregation. */
static void
sim_transport_virtual_equals_nng(void **state)
{
	static const char *const cases[][4] = {
		{"--compress", "topk:0.05,q8", NULL, NULL},
		{"--compress", "topk:0.2,q8", "--secagg", "plus"},
	};
	char dir[256], mv[300], mn[300];

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(mv, sizeof(mv), "%s/v.jsonl", dir);
	snprintf(mn, sizeof(mn), "%s/n.jsonl", dir);
	for (size_t c = 0; c < 2; c++) {
		sim_run v, n;
		size_t lv, ln;
		bool sv, sn;

		run_small_flags(dir, mv, (const char *const[]){cases[c][0], cases[c][1], cases[c][2],
		                                               cases[c][3], "--transport", "virtual",
		                                               NULL}, &v);
		run_small_flags(dir, mn, (const char *const[]){cases[c][0], cases[c][1], cases[c][2],
		                                               cases[c][3], "--transport", "nng",
		                                               NULL}, &n);
		assert_string_equal(v.hash, n.hash);
		char *cv = metrics_canonical(mv, &lv, &sv), *cn = metrics_canonical(mn, &ln, &sn);
		assert_int_equal(lv, 3);
		assert_true(sv); /* virtual_s */
		(void)sn;
		assert_string_equal(cv, cn);
		free(cv);
		free(cn);
		sim_run_fini(&v);
		sim_run_fini(&n);
	}
	cleanup_dir(dir, (const char *const[]){"v.jsonl", "n.jsonl", NULL});
}

/* A population of devices: the same metrics, virtual times included, and
 * the same model for 1 and 2 threads; virtual time advances; the summary
 * reports participation by class; a slower mix takes more virtual time. */
static void
sim_devices_deterministic_and_timed(void **state)
{
	char dir[256], m1[300], m2[300];
	sim_run one, two, slow;
	const char *mix = "pi4:0.5,laptop:0.2,phone-high:0.3";

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m1, sizeof(m1), "%s/m1.jsonl", dir);
	snprintf(m2, sizeof(m2), "%s/m2.jsonl", dir);
	run_small_flags(dir, m1, (const char *const[]){"--devices", mix, "--threads", "1", NULL},
	                &one);
	run_small_flags(dir, m2, (const char *const[]){"--devices", mix, "--threads", "2", NULL},
	                &two);
	assert_string_equal(one.hash, two.hash);
	char *r1 = read_file(m1), *r2 = read_file(m2);
	assert_string_equal(r1, r2);
	assert_non_null(strstr(one.err, "participation pi4"));
	assert_non_null(strstr(one.err, "participation phone-high"));
	assert_non_null(strstr(one.err, "virtual time: "));
	double t_mix = strtod(strstr(one.err, "virtual time: ") + 14, NULL);
	assert_true(t_mix > 0.0);
	/* Every round later than the one before, in virtual seconds. */
	{
		double last = 0.0;
		for (const char *p = strstr(r1, "\"virtual_s\":"); p != NULL;
		     p = strstr(p + 1, "\"virtual_s\":")) {
			double t = strtod(p + 12, NULL);
			assert_true(t > last);
			last = t;
		}
		assert_true(last > 0.0);
	}
	char rep[300], tsv[400];
	snprintf(rep, sizeof(rep), "%s/rep", dir);
	run_small_flags(dir, m1, (const char *const[]){"--devices", "pi-zero-2w", "--report", rep,
	                                              NULL}, &slow);
	double t_slow = strtod(strstr(slow.err, "virtual time: ") + 14, NULL);
	assert_true(t_slow > t_mix);
	/* --report: one line per round (and a header), one per class. */
	snprintf(tsv, sizeof(tsv), "%s/rounds.tsv", rep);
	char *rounds = read_file(tsv);
	assert_non_null(rounds);
	size_t lines = 0;
	for (const char *p = rounds; *p; p++)
		lines += *p == '\n';
	assert_int_equal(lines, 4);
	free(rounds);
	snprintf(tsv, sizeof(tsv), "%s/participation.tsv", rep);
	char *part = read_file(tsv);
	assert_non_null(part);
	assert_non_null(strstr(part, "pi-zero-2w\t20\t"));
	free(part);
	cleanup_dir(rep, (const char *const[]){"rounds.tsv", "participation.tsv", "report.gp",
	                                       "accuracy-time.png", "accuracy-bytes.png",
	                                       "participation.png", NULL});
	free(r1);
	free(r2);
	sim_run_fini(&one);
	sim_run_fini(&two);
	sim_run_fini(&slow);
	cleanup_dir(dir, (const char *const[]){"m1.jsonl", "m2.jsonl", NULL});
}

/* A device class whose memory cannot hold the model: its clients refuse to
 * take part, the refusal is logged, and the others train; a profile file
 * with a mistake is refused with the key named. */
static void
sim_devices_memory_refusal_and_profile_file(void **state)
{
	char dir[256], m[300], file[300], bad[300];
	sim_run r;
	FILE *f;

	(void)state;
	make_tmpdir(dir, sizeof(dir));
	snprintf(m, sizeof(m), "%s/m.jsonl", dir);
	snprintf(file, sizeof(file), "%s/dev.json", dir);
	snprintf(bad, sizeof(bad), "%s/bad.json", dir);
	f = fopen(file, "w");
	assert_non_null(f);
	fputs("{ \"tiny\": { \"base\": \"pi4\", \"mem_mb\": 4 } }\n", f);
	fclose(f);
	f = fopen(bad, "w");
	assert_non_null(f);
	fputs("{ \"tiny\": { \"base\": \"pi4\", \"mem_gb\": 4 } }\n", f);
	fclose(f);
	run_small_flags(dir, m, (const char *const[]){"--device-file", file, "--devices",
	                                              "tiny:0.5,pi4:0.5", NULL}, &r);
	assert_non_null(strstr(r.err, "refuses to take part"));
	assert_non_null(strstr(r.err, "participation tiny         10 clients, 0 took part"));
	assert_non_null(strstr(r.err, "rounds: 3 completed"));
	sim_run_fini(&r);
	{
		const char *args[] = {"--device-file", bad, "--devices", "tiny", "--data-dir",
		                      SHOAL_DATA_DIR, "--quiet", NULL};
		run_sim(dir, args, &r);
		assert_int_not_equal(r.status, 0);
		assert_non_null(strstr(r.err, "unknown key 'mem_gb'"));
		sim_run_fini(&r);
	}
	cleanup_dir(dir, (const char *const[]){"m.jsonl", "dev.json", "bad.json", NULL});
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(sim_deterministic_across_threads),
	cmocka_unit_test(sim_seed_changes_result),
		cmocka_unit_test(sim_prox_mu_zero_is_fedavg),
		cmocka_unit_test(sim_compressed_deterministic_across_threads),
	cmocka_unit_test(sim_reaches_accuracy_logreg),
	cmocka_unit_test(sim_partition_shards_and_dirichlet_run),
	cmocka_unit_test(sim_population_beyond_the_dataset),
	cmocka_unit_test(sim_rejects_bad_flags),
	cmocka_unit_test(sim_distributed_dp),
	cmocka_unit_test(sim_help_lists_every_flag),
	cmocka_unit_test(sim_missing_data_dir_explains),
	cmocka_unit_test(sim_transport_virtual_equals_nng),
	cmocka_unit_test(sim_devices_deterministic_and_timed),
	cmocka_unit_test(sim_devices_memory_refusal_and_profile_file),
};

SHOAL_TEST_MAIN(tests)
