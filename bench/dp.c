/* dp.c (bench) - shoal-bench accountant: what the Renyi-DP accountant
 * (privacy/rdp.h) costs the server. Prints one JSON object per result on
 * stdout ({"bench", "params", "value", "unit"}); progress on stderr.
 *
 *   accountant_epsilon  a fresh accountant, `rounds` calls of
 *                       dp_accountant_add(q, sigma, 1) (the per-step RDP
 *                       vector is computed on the first, cached after),
 *                       then dp_accountant_epsilon: what a server that
 *                       restarts from scratch and replays its rounds pays
 *   accountant_bulk     the same with one dp_accountant_add(q, sigma, rounds)
 *   accountant_step     computing one per-step RDP vector (all orders)
 *   calibrate           dp_calibrate_sigma for `rounds` steps at q, delta
 *                       1e-5, target epsilon --epsilon
 *
 * Orders: Opacus' 151 defaults, then 64, 65, ... when --orders is larger.
 * Each value is the median over --reps repetitions. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "common/cli.h"
#include "privacy/rdp.h"

#define DP_BENCH_MAX_REPS 101
#define DP_BENCH_DELTA 1e-5

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: shoal-bench accountant [options]\n"
	        "\n"
	        "Renyi-DP accountant timings (seconds, median of --reps):\n"
	        "accountant_epsilon (init, --rounds adds of one step, epsilon),\n"
	        "accountant_bulk (one add of --rounds steps), accountant_step (one\n"
	        "per-step RDP vector) and calibrate (sigma for --epsilon at delta 1e-5).\n"
	        "  --rounds N     rounds (steps) (default 10000)\n"
	        "  --orders K     RDP orders, 1..%d (default %d: Opacus' defaults)\n"
	        "  --q Q          sampling rate (default 0.01)\n"
	        "  --sigma Z      noise multiplier (default 1.0)\n"
	        "  --epsilon E    calibrate's target epsilon (default 8)\n"
	        "  --reps R       repetitions, median reported (default 11)\n",
	        DP_MAX_ORDERS, DP_DEFAULT_ORDERS);
}

static void
make_orders(double *o, size_t k)
{
	double def[DP_DEFAULT_ORDERS];

	dp_default_orders(def);
	for (size_t i = 0; i < k; i++)
		o[i] = i < DP_DEFAULT_ORDERS ? def[i] : (double)(64 + (i - DP_DEFAULT_ORDERS));
}

/* Seconds for one accountant run; bulk: one add of all rounds. eps gets the
 * result (so the work cannot be optimised away); negative on error. */
static double
time_epsilon(const double *orders, size_t k, double q, double sigma, uint64_t rounds, int bulk,
             double *eps)
{
	double t0 = bench_now_s(), t;
	dp_accountant acc;
	shoal_err err = dp_accountant_init(&acc, orders, k, DP_BENCH_DELTA);

	if (bulk)
		err = err ? err : dp_accountant_add(&acc, q, sigma, rounds);
	else
		for (uint64_t r = 0; r < rounds && err == SHOAL_OK; r++)
			err = dp_accountant_add(&acc, q, sigma, 1);
	err = err ? err : dp_accountant_epsilon(&acc, eps, NULL);
	t = bench_now_s() - t0;
	dp_accountant_fini(&acc);
	return err == SHOAL_OK ? t : -1.0;
}

int
bench_accountant(int argc, char **argv)
{
	uint64_t rounds = 10000, k = DP_DEFAULT_ORDERS, reps = 11;
	double q = 0.01, sigma = 1.0, target = 8.0, eps = 0.0, sig = 0.0;
	double t[DP_BENCH_MAX_REPS], orders[DP_MAX_ORDERS];
	static const char *const names[] = {"accountant_epsilon", "accountant_bulk"};
	json_t *pj;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		int head = bench_option_value("accountant", argc, argv, &i, usage, &v);
		bool ok = true, known = true;
		int tail;

		if (head >= 0)
			return head;
		if (strcmp(a, "--rounds") == 0)
			ok = cli_parse_u64(v, 1, 100000000, &rounds);
		else if (strcmp(a, "--orders") == 0)
			ok = cli_parse_u64(v, 1, DP_MAX_ORDERS, &k);
		else if (strcmp(a, "--reps") == 0)
			ok = cli_parse_u64(v, 1, DP_BENCH_MAX_REPS, &reps);
		else if (strcmp(a, "--q") == 0)
			ok = cli_parse_number(v, 0.0, 1.0, false, &q);
		else if (strcmp(a, "--sigma") == 0)
			ok = cli_parse_number(v, 0.01, 1e6, false, &sigma);
		else if (strcmp(a, "--epsilon") == 0)
			ok = cli_parse_number(v, 0.01, 1e6, false, &target);
		else
			known = false;
		tail = bench_option_check("accountant", a, v, known, ok, usage);
		if (tail >= 0)
			return tail;
	}
	make_orders(orders, (size_t)k);
	pj = json_pack("{s:I, s:I, s:f, s:f}", "rounds", (json_int_t)rounds, "orders",
	               (json_int_t)k, "q", q, "sigma", sigma);
	for (int bulk = 0; bulk < 2; bulk++) {
		for (uint64_t r = 0; r < reps; r++)
			if ((t[r] = time_epsilon(orders, (size_t)k, q, sigma, rounds, bulk, &eps)) < 0) {
				fprintf(stderr, "shoal-bench accountant: accountant failed\n");
				json_decref(pj);
				return 1;
			}
		fprintf(stderr, "%s: %.6f s (epsilon %.6g)\n", names[bulk], bench_median(t, (long)reps),
		        eps);
		bench_emit(names[bulk], pj, bench_median(t, (long)reps), "s");
	}
	for (uint64_t r = 0; r < reps; r++) {
		double t0 = bench_now_s();
		volatile double sink = 0.0;

		for (size_t i = 0; i < k; i++)
			sink += dp_rdp_sgm(q, sigma, orders[i]);
		t[r] = bench_now_s() - t0;
	}
	json_decref(pj);
	pj = json_pack("{s:I, s:f, s:f}", "orders", (json_int_t)k, "q", q, "sigma", sigma);
	bench_emit("accountant_step", pj, bench_median(t, (long)reps), "s");
	json_decref(pj);
	for (uint64_t r = 0; r < reps; r++) {
		double t0 = bench_now_s();

		if (dp_calibrate_sigma(q, rounds, DP_BENCH_DELTA, target, orders, (size_t)k, &sig) !=
		    SHOAL_OK) {
			fprintf(stderr, "shoal-bench accountant: epsilon %g is out of reach\n", target);
			return 1;
		}
		t[r] = bench_now_s() - t0;
	}
	fprintf(stderr, "calibrate: sigma %.6f for epsilon %g, %.6f s\n", sig, target,
	        bench_median(t, (long)reps));
	pj = json_pack("{s:I, s:I, s:f, s:f, s:f}", "rounds", (json_int_t)rounds, "orders",
	               (json_int_t)k, "q", q, "delta", DP_BENCH_DELTA, "epsilon", target);
	bench_emit("calibrate", pj, bench_median(t, (long)reps), "s");
	json_decref(pj);
	return 0;
}
