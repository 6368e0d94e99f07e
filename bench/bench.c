/* bench.c - shoal-bench: micro-benchmarks that print one JSON object per
 * result on stdout (anything else goes to stderr), e.g.
 *   {"bench": "train", "params": {"model": "2nn", "batch": 10, "threads": 1},
 *    "value": 12345.6, "unit": "samples/s"}
 * and "train_vs_peak" (train GFLOP/s over the one-thread sgemm peak measured
 * in the same run, unit "fraction"); "gemm" measures sgemm alone.
 * Timings are the median of several repetitions; tests never time things. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "bench/bench.h"
#include "ml/gemm.h"
#include "ml/ml.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: shoal-bench SUBCOMMAND [options]\n"
	        "\n"
	        "Prints one JSON object per result on stdout:\n"
	        "  {\"bench\": NAME, \"params\": {...}, \"value\": X, \"unit\": U}\n"
	        "Progress and errors go to stderr. Each value is the median of --reps runs.\n"
	        "\n"
	        "subcommands:\n"
	        "  train   minibatch SGD on real MNIST; reports samples/s, model GFLOP/s\n"
	        "          (see ml_model_train_flops in ml/ml.h) and, measured in the same run, the\n"
	        "          one-thread sgemm peak and train GFLOP/s as a fraction of it\n"
	        "    --model NAME     %s (default 2nn)\n"
	        "    --batch B        minibatch size (default 10)\n"
	        "    --threads T      OpenBLAS threads (default 1; SHOAL_BLAS=OFF: 1)\n"
	        "    --steps N        SGD steps per repetition (default 2000; cnn 200)\n"
	        "    --reps R         repetitions, median reported (default 5)\n"
	        "    --data-dir DIR   MNIST IDX folder (default data)\n"
	        "  gemm    cblas_sgemm GFLOP/s: square sizes, the CNN's shapes at B=10, and\n"
	        "          the peak (best square size)\n"
	        "    --threads T      OpenBLAS threads (default 1; SHOAL_BLAS=OFF: 1)\n"
	        "    --size N ...     square sizes (repeatable; default 256 512 1024)\n"
	        "    --reps R         repetitions, median reported (default 5)\n"
	        "  codec   update codec: bytes per parameter, index bits against the\n"
	        "          information bound, encode and decode+accumulate throughput,\n"
	        "          dense accumulate against memcpy (shoal-bench codec --help)\n"
	        "  accountant  Renyi-DP accountant: epsilon after N rounds, one per-step RDP\n"
	        "          vector, sigma calibration (shoal-bench accountant --help)\n"
	        "  secagg  secure aggregation: client key sharing and masking, server unmask\n"
	        "          with dropouts (shoal-bench secagg --help)\n"
	        "  footprint  the edge client: stripped size, peak RSS of one round, bytes\n"
	        "          of model, residual and buffers (shoal-bench footprint --help)\n"
	        "  load    N concurrent clients against a real shoal-server: updates counted\n"
	        "          once, no client starved, server peak RSS and CPU per round\n"
	        "          (shoal-bench load --help)\n"
	        "  indexset  rounds to a target accuracy when clients send k coordinates with\n"
	        "          error feedback: each its own top-k, or one shared set (shoal-bench\n"
	        "          indexset --help)\n",
	        ml_model_names());
}

int
bench_option_value(const char *sub, int argc, char **argv, int *i, void (*print_usage)(FILE *),
                   const char **val)
{
	const char *a = argv[*i];

	if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
		print_usage(stdout);
		return 0;
	}
	if (*i + 1 >= argc) {
		fprintf(stderr, "shoal-bench %s: unknown option or missing value '%s'\n", sub, a);
		print_usage(stderr);
		return 2;
	}
	*val = argv[++*i];
	return -1;
}

int
bench_option_check(const char *sub, const char *a, const char *v, bool known, bool ok,
                   void (*print_usage)(FILE *))
{
	if (!known) {
		fprintf(stderr, "shoal-bench %s: unknown option '%s'\n", sub, a);
		print_usage(stderr);
		return 2;
	}
	if (!ok) {
		fprintf(stderr, "shoal-bench %s: bad value '%s' for %s\n", sub, v, a);
		return 2;
	}
	return -1;
}

double
bench_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Parses a positive integer option value in [1, max]. */
static int
parse_count(const char *flag, const char *s, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 1 || v > max) {
		fprintf(stderr, "shoal-bench: %s wants an integer in [1, %ld], got '%s'\n", flag, max,
		        s);
		return -1;
	}
	*out = v;
	return 0;
}

double
bench_status_bytes(long pid, const char *key)
{
	char path[64], line[256];
	size_t kl = strlen(key);
	double v = 0.0;
	FILE *f;

	if (pid == 0)
		snprintf(path, sizeof path, "/proc/self/status");
	else
		snprintf(path, sizeof path, "/proc/%ld/status", pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0.0;
	while (fgets(line, sizeof line, f) != NULL)
		if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
			v = 1024.0 * strtod(line + kl + 1, NULL);
			break;
		}
	fclose(f);
	return v;
}

void
bench_emit(const char *bench, json_t *params, double value, const char *unit)
{
	json_t *o = json_object();
	char *s;

	json_object_set_new(o, "bench", json_string(bench));
	json_object_set(o, "params", params);
	json_object_set_new(o, "value", json_real(value));
	json_object_set_new(o, "unit", json_string(unit));
	s = json_dumps(o, JSON_REAL_PRECISION(6));
	if (s != NULL) {
		printf("%s\n", s);
		free(s);
	}
	fflush(stdout);
	json_decref(o);
}

#define MAX_REPS 101

double
bench_median(double *v, long n)
{
	qsort(v, (size_t)n, sizeof v[0], cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Median GFLOP/s (2 M N K per call) of row-major C (M x N) = op(A) op(B),
 * each repetition calling sgemm for at least 50 ms; 0 when out of memory. */
static double
sgemm_gflops(int ta, int tb, int M, int N, int K, long reps)
{
	size_t na = (size_t)M * (size_t)K, nb = (size_t)K * (size_t)N;
	float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b),
	      *c = malloc((size_t)M * (size_t)N * sizeof *c);
	double rate[MAX_REPS], med = 0.0;

	if (a == NULL || b == NULL || c == NULL)
		goto done;
	for (size_t i = 0; i < na; i++)
		a[i] = (float)(i % 17) * 0.01f - 0.08f;
	for (size_t i = 0; i < nb; i++)
		b[i] = (float)(i % 13) * 0.01f - 0.06f;
	for (long r = -1; r < reps; r++) { /* r = -1 warms up */
		double t0 = bench_now_s(), t;
		long calls = 0;

		do {
			ml_sgemm(ta, tb, M, N, K, 1.0f, a, ta ? M : K, b, tb ? K : N, 0.0f, c, N);
			calls++;
			t = bench_now_s() - t0;
		} while (t < 0.05);
		if (r >= 0)
			rate[r] = 2.0 * M * N * (double)K * (double)calls / t / 1e9;
	}
	med = bench_median(rate, reps);
done:
	free(a);
	free(b);
	free(c);
	return med;
}

static const int default_sizes[] = {256, 512, 1024};

/* Best median GFLOP/s over square sizes: the machine's sgemm peak for the
 * current thread count; emit_each prints each size as a "gemm" result. */
static double
sgemm_peak(const int *sizes, size_t n, long reps, int emit_each, long threads)
{
	double peak = 0.0;

	for (size_t i = 0; i < n; i++) {
		double g = sgemm_gflops(0, 0, sizes[i], sizes[i], sizes[i], reps);

		fprintf(stderr, "sgemm %dx%dx%d T=%ld: %.1f GFLOP/s\n", sizes[i], sizes[i], sizes[i],
		        threads, g);
		if (emit_each) {
			json_t *pj = json_pack("{s:s, s:i, s:i, s:i, s:i}", "shape", "square", "m",
			                       (json_int_t)sizes[i], "n", (json_int_t)sizes[i], "k",
			                       (json_int_t)sizes[i], "threads", (json_int_t)threads);

			bench_emit("gemm", pj, g, "GFLOP/s");
			json_decref(pj);
		}
		peak = g > peak ? g : peak;
	}
	return peak;
}

static int
bench_gemm(int argc, char **argv)
{
	/* The CNN's products at B = 10 (ml/cnn.c), with their transposes. */
	static const struct { const char *name; int ta, tb, m, n, k; } cnn[] = {
		{"cnn.conv1.fwd", 0, 0, 7840, 32, 25}, {"cnn.conv1.dW", 1, 0, 25, 32, 7840},
		{"cnn.conv2.fwd", 0, 0, 1960, 64, 800}, {"cnn.conv2.dW", 1, 0, 800, 64, 1960},
		{"cnn.conv2.dX", 0, 1, 1960, 800, 64}, {"cnn.fc1.fwd", 0, 0, 10, 512, 3136},
		{"cnn.fc1.dW", 1, 0, 3136, 512, 10},   {"cnn.fc1.dX", 0, 1, 10, 3136, 512},
	};
	int sizes[64];
	size_t n_sizes = 0;
	long threads = 1, reps = 5;
	double peak;
	json_t *pj;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (v == NULL) {
			fprintf(stderr, "shoal-bench: unknown or incomplete option '%s'\n", a);
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(a, "--threads") == 0) {
			if (parse_count(a, v, 1024, &threads) != 0)
				return 2;
		} else if (strcmp(a, "--reps") == 0) {
			if (parse_count(a, v, MAX_REPS, &reps) != 0)
				return 2;
		} else if (strcmp(a, "--size") == 0) {
			/* --size N [N ...]: take following bare numbers too. */
			for (;;) {
				long sz;

				if (n_sizes == sizeof sizes / sizeof sizes[0]) {
					fprintf(stderr, "shoal-bench: at most %zu sizes\n", n_sizes);
					return 2;
				}
				if (parse_count(a, argv[i], 8192, &sz) != 0)
					return 2;
				sizes[n_sizes++] = (int)sz;
				if (i + 1 >= argc || argv[i + 1][0] == '-')
					break;
				i++;
			}
		} else {
			fprintf(stderr, "shoal-bench: unknown option '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (n_sizes == 0)
		for (size_t i = 0; i < sizeof default_sizes / sizeof default_sizes[0]; i++)
			sizes[n_sizes++] = default_sizes[i];
	ml_gemm_set_threads((int)threads);
	peak = sgemm_peak(sizes, n_sizes, reps, 1, threads);
	for (size_t i = 0; i < sizeof cnn / sizeof cnn[0]; i++) {
		double g = sgemm_gflops(cnn[i].ta, cnn[i].tb, cnn[i].m, cnn[i].n, cnn[i].k, reps);

		fprintf(stderr, "sgemm %s %dx%dx%d%s%s T=%ld: %.1f GFLOP/s\n", cnn[i].name,
		        cnn[i].m, cnn[i].n, cnn[i].k, cnn[i].ta ? " A^T" : "", cnn[i].tb ? " B^T" : "",
		        threads, g);
		pj = json_pack("{s:s, s:i, s:i, s:i, s:b, s:b, s:i}", "shape", cnn[i].name, "m",
		               (json_int_t)cnn[i].m, "n", (json_int_t)cnn[i].n, "k",
		               (json_int_t)cnn[i].k, "trans_a", cnn[i].ta, "trans_b", cnn[i].tb,
		               "threads", (json_int_t)threads);
		bench_emit("gemm", pj, g, "GFLOP/s");
		json_decref(pj);
	}
	pj = json_pack("{s:i, s:s}", "threads", (json_int_t)threads, "of", "best square size");
	bench_emit("gemm_peak", pj, peak, "GFLOP/s");
	json_decref(pj);
	return peak > 0.0 ? 0 : 1;
}


static int
bench_train(int argc, char **argv)
{
	const char *model = "2nn", *dir = "data";
	long batch = 10, threads = 1, steps = 0, reps = 5;
	double rate[MAX_REPS], med, gflops, peak;
	ml_dataset ds = {0};
	ml_model *m = NULL;
	uint32_t *idx = NULL;
	float *params = NULL;
	json_t *params_json;
	size_t n, dim;
	int rc = 1;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (v == NULL) {
			fprintf(stderr, "shoal-bench: unknown or incomplete option '%s'\n", a);
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(a, "--model") == 0)
			model = v;
		else if (strcmp(a, "--data-dir") == 0)
			dir = v;
		else if (strcmp(a, "--batch") == 0) {
			if (parse_count(a, v, 100000, &batch) != 0)
				return 2;
		} else if (strcmp(a, "--threads") == 0) {
			if (parse_count(a, v, 1024, &threads) != 0)
				return 2;
		} else if (strcmp(a, "--steps") == 0) {
			if (parse_count(a, v, 100000000, &steps) != 0)
				return 2;
		} else if (strcmp(a, "--reps") == 0) {
			if (parse_count(a, v, MAX_REPS, &reps) != 0)
				return 2;
		} else {
			fprintf(stderr, "shoal-bench: unknown option '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	dim = ml_model_dim_of(model);
	if (steps == 0)
		steps = strcmp(model, "cnn") == 0 ? 200 : 2000;
	if (dim == 0 || ml_model_train_flops(model) == 0.0) {
		fprintf(stderr, "shoal-bench: unknown model '%s' (have %s)\n", model,
		        ml_model_names());
		return 2;
	}
	ml_gemm_set_threads((int)threads);
	if (ml_mnist_load(dir, "train", &ds) != SHOAL_OK)
		return 1;
	/* One epoch over steps*batch indices (cycling through MNIST) is steps
	 * SGD steps, including the shuffle and gather a client pays. */
	n = (size_t)steps * (size_t)batch;
	idx = malloc(n * sizeof *idx);
	params = malloc(dim * sizeof *params);
	if (idx == NULL || params == NULL || ml_model_new(model, (size_t)batch, &m) != SHOAL_OK) {
		fprintf(stderr, "shoal-bench: out of memory\n");
		goto done;
	}
	for (size_t i = 0; i < n; i++)
		idx[i] = (uint32_t)(i % ds.n);
	ml_model_init(m, params, 1);
	for (long r = -1; r < reps; r++) { /* r = -1 warms up caches and threads */
		ml_sgd_config cfg = {.epochs = 1, .batch = (uint32_t)batch, .lr = 0.01f,
		                     .seed = (uint64_t)(r + 2)};
		double t0, t1, loss;

		t0 = bench_now_s();
		if (ml_train_sgd(m, params, &ds, idx, r < 0 ? (n < 1000 ? n : 1000) : n, &cfg,
		                 &loss) != SHOAL_OK) {
			fprintf(stderr, "shoal-bench: training failed\n");
			goto done;
		}
		t1 = bench_now_s();
		if (r >= 0) {
			rate[r] = (double)n / (t1 - t0);
			fprintf(stderr, "train %s B=%ld T=%ld rep %ld: %.0f samples/s (loss %.3f)\n",
			        model, batch, threads, r, rate[r], loss);
		}
	}
	med = bench_median(rate, reps);
	gflops = med * ml_model_train_flops(model) / 1e9;
	/* The yardstick, in the same run: one-thread sgemm at its best. */
	ml_gemm_set_threads(1);
	peak = sgemm_peak(default_sizes, sizeof default_sizes / sizeof default_sizes[0], reps, 0, 1);
	params_json = json_pack("{s:s, s:i, s:i, s:s}", "model", model, "batch", (json_int_t)batch,
	                        "threads", (json_int_t)threads, "gemm", ml_gemm_backend());
	if (params_json == NULL)
		goto done;
	bench_emit("train", params_json, med, "samples/s");
	bench_emit("train", params_json, gflops, "GFLOP/s");
	json_decref(params_json);
	params_json = json_pack("{s:i, s:s, s:s}", "threads", (json_int_t)1, "of",
	                        "best square size", "gemm", ml_gemm_backend());
	bench_emit("gemm_peak", params_json, peak, "GFLOP/s");
	json_decref(params_json);
	params_json = json_pack("{s:s, s:i, s:i, s:i, s:f, s:f}", "model", model, "batch",
	                        (json_int_t)batch, "threads", (json_int_t)threads, "peak_threads",
	                        (json_int_t)1, "train_gflops", gflops, "peak_gflops", peak);
	if (params_json == NULL)
		goto done;
	bench_emit("train_vs_peak", params_json, peak > 0.0 ? gflops / peak : 0.0, "fraction");
	fprintf(stderr, "train %s B=%ld T=%ld (%s gemm): %.0f samples/s, %.1f GFLOP/s = %.1f%% of "
	        "the one-thread sgemm peak %.1f GFLOP/s\n",
	        model, batch, threads, ml_gemm_backend(), med, gflops,
	        peak > 0.0 ? 100.0 * gflops / peak : 0.0, peak);
	json_decref(params_json);
	rc = 0;
done:
	ml_model_free(m);
	free(params);
	free(idx);
	ml_dataset_fini(&ds);
	return rc;
}

int
main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "train") == 0)
		return bench_train(argc - 2, argv + 2);
	if (strcmp(argv[1], "gemm") == 0)
		return bench_gemm(argc - 2, argv + 2);
	if (strcmp(argv[1], "codec") == 0)
		return bench_codec(argc - 1, argv + 1);
	if (strcmp(argv[1], "accountant") == 0)
		return bench_accountant(argc - 1, argv + 1);
	if (strcmp(argv[1], "secagg") == 0)
		return bench_secagg(argc - 1, argv + 1);
	if (strcmp(argv[1], "footprint") == 0)
		return bench_footprint(argc - 1, argv + 1);
	if (strcmp(argv[1], "load") == 0)
		return bench_load(argc - 1, argv + 1);
	if (strcmp(argv[1], "indexset") == 0)
		return bench_indexset(argc - 1, argv + 1);
	fprintf(stderr, "shoal-bench: unknown subcommand '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
