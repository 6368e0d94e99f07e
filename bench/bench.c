/* bench.c - shoal-bench: micro-benchmarks that print one JSON object per
 * result on stdout (anything else goes to stderr), e.g.
 *   {"bench": "train", "params": {"model": "2nn", "batch": 10, "threads": 1},
 *    "value": 12345.6, "unit": "samples/s"}
 * Timings are the median of several repetitions; tests never time things. */
#include <cblas.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
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
	        "  train   minibatch SGD on real MNIST; reports samples/s and GFLOP/s\n"
	        "          (6 x parameters flops per sample: 2 forward + 4 backward)\n"
	        "    --model NAME     %s (default 2nn)\n"
	        "    --batch B        minibatch size (default 10)\n"
	        "    --threads T      OpenBLAS threads (default 1)\n"
	        "    --steps N        SGD steps per repetition (default 2000)\n"
	        "    --reps R         repetitions, median reported (default 5)\n"
	        "    --data-dir DIR   MNIST IDX folder (default data)\n",
	        ml_model_names());
}

static double
now_s(void)
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

static void
emit(const char *bench, json_t *params, double value, const char *unit)
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

static int
bench_train(int argc, char **argv)
{
	const char *model = "2nn", *dir = "data";
	long batch = 10, threads = 1, steps = 2000, reps = 5;
	double rate[MAX_REPS], med, gflops;
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
	if (dim == 0) {
		fprintf(stderr, "shoal-bench: unknown model '%s' (have %s)\n", model,
		        ml_model_names());
		return 2;
	}
	openblas_set_num_threads((int)threads);
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

		t0 = now_s();
		if (ml_train_sgd(m, params, &ds, idx, r < 0 ? (n < 1000 ? n : 1000) : n, &cfg,
		                 &loss) != SHOAL_OK) {
			fprintf(stderr, "shoal-bench: training failed\n");
			goto done;
		}
		t1 = now_s();
		if (r >= 0) {
			rate[r] = (double)n / (t1 - t0);
			fprintf(stderr, "train %s B=%ld T=%ld rep %ld: %.0f samples/s (loss %.3f)\n",
			        model, batch, threads, r, rate[r], loss);
		}
	}
	qsort(rate, (size_t)reps, sizeof rate[0], cmp_double);
	med = reps % 2 ? rate[reps / 2] : 0.5 * (rate[reps / 2 - 1] + rate[reps / 2]);
	gflops = med * 6.0 * (double)dim / 1e9;
	params_json = json_pack("{s:s, s:i, s:i}", "model", model, "batch", (json_int_t)batch,
	                        "threads", (json_int_t)threads);
	if (params_json == NULL)
		goto done;
	emit("train", params_json, med, "samples/s");
	emit("train", params_json, gflops, "GFLOP/s");
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
	fprintf(stderr, "shoal-bench: unknown subcommand '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
