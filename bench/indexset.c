/* indexset.c (bench) - shoal-bench indexset: how many rounds FedAvg needs to
 * reach a target test accuracy when each client sends only k = ceil(ratio*d)
 * coordinates per round with error feedback, for three ways of choosing
 * them:
 *
 *   client   each client its own top-k of (update + residual): what plain
 *            (non-secure) rounds do with `--compress topk:RATIO`;
 *   shared   one set for all of the round's clients, the top-k of the SUM of
 *            their (update + residual). Masks of secure aggregation line up
 *            only on a shared set, and no shared set can be better informed
 *            than this one: the server would need a second secure
 *            aggregation of the dense sums to find it. So it bounds, from
 *            above, what any shared-index-set heuristic can reach;
 *   none     every coordinate (no selection, no residual).
 *
 * Values are sent as float32 (no quantization), so this measures selection
 * alone. It runs local SGD (ml/ml.h) and cx_topk (common/codec.h) directly,
 * without the protocol, on its own seeded selection of clients, so its
 * rounds compare with one another, not with shoal-sim's. Results on stdout,
 * one JSON object each; progress every 25 rounds on stderr. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "common/cli.h"
#include "common/codec.h"
#include "ml/ml.h"

#define IX_EVAL_BATCH 500

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: shoal-bench indexset [options]\n"
	        "\n"
	        "FedAvg with k = ceil(ratio * d) coordinates sent per client and round, error\n"
	        "feedback on, float32 values; reports the rounds run until the target test\n"
	        "accuracy (indexset_rounds; params.reached says whether it was reached) and\n"
	        "the last round's accuracy (indexset_accuracy).\n"
	        "  --select MODE      client (each client's own top-k), shared (one top-k of\n"
	        "                     the round's summed updates + residuals, better informed\n"
	        "                     than any set a secure round can announce) or none\n"
	        "                     (dense) (default client)\n"
	        "  --ratio R          kept fraction, (0, 1] (default 0.01)\n"
	        "  --model NAME       %s (default 2nn)\n"
	        "  --partition SPEC   iid, shards or dirichlet:ALPHA (default shards)\n"
	        "  --clients N        clients (default 100)\n"
	        "  --per-round K      clients per round (default 10)\n"
	        "  --epochs E         local epochs (default 1)\n"
	        "  --batch B          local minibatch (default 10)\n"
	        "  --lr LR            local SGD learning rate (default 0.1)\n"
	        "  --rounds N         cap on rounds (default 600)\n"
	        "  --target A         stop at this test accuracy (default 0.97)\n"
	        "  --seed S           partition, init, selection, shuffling (default 1)\n"
	        "  --data-dir DIR     MNIST IDX folder (default data)\n",
	        ml_model_names());
}

typedef struct ix_opts {
	const char *select, *model, *partition, *data_dir;
	double ratio, lr, target;
	uint64_t clients, per_round, epochs, batch, rounds, seed;
} ix_opts;

static int
parse(int argc, char **argv, ix_opts *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		int head = bench_option_value("indexset", argc, argv, &i, usage, &v);
		bool ok = true, known = true;
		int tail;

		if (head >= 0)
			return head;
		if (strcmp(a, "--select") == 0) {
			o->select = v;
			ok = !strcmp(v, "client") || !strcmp(v, "shared") || !strcmp(v, "none");
		} else if (strcmp(a, "--model") == 0) {
			o->model = v;
			ok = ml_model_dim_of(v) > 0;
		} else if (strcmp(a, "--partition") == 0) {
			o->partition = v;
			ok = ml_partition_check_spec(v) == SHOAL_OK;
		} else if (strcmp(a, "--data-dir") == 0)
			o->data_dir = v;
		else if (strcmp(a, "--ratio") == 0)
			ok = cli_parse_number(v, 1e-9, 1.0, false, &o->ratio);
		else if (strcmp(a, "--lr") == 0)
			ok = cli_parse_number(v, 1e-9, 100.0, false, &o->lr);
		else if (strcmp(a, "--target") == 0)
			ok = cli_parse_number(v, 1e-9, 1.0, false, &o->target);
		else if (strcmp(a, "--clients") == 0)
			ok = cli_parse_u64(v, 1, 60000, &o->clients);
		else if (strcmp(a, "--per-round") == 0)
			ok = cli_parse_u64(v, 1, 60000, &o->per_round);
		else if (strcmp(a, "--epochs") == 0)
			ok = cli_parse_u64(v, 1, 1000, &o->epochs);
		else if (strcmp(a, "--batch") == 0)
			ok = cli_parse_u64(v, 1, 1000, &o->batch);
		else if (strcmp(a, "--rounds") == 0)
			ok = cli_parse_u64(v, 1, 1000000, &o->rounds);
		else if (strcmp(a, "--seed") == 0)
			ok = cli_parse_u64(v, 0, INT64_MAX, &o->seed); /* a JSON integer */
		else
			known = false;
		tail = bench_option_check("indexset", a, v, known, ok, usage);
		if (tail >= 0)
			return tail;
	}
	if (o->per_round > o->clients) {
		fprintf(stderr, "shoal-bench indexset: --per-round %llu is more than --clients %llu\n",
		        (unsigned long long)o->per_round, (unsigned long long)o->clients);
		return 2;
	}
	return -1;
}

/* One client's upload added to agg (the round's sum, not yet divided by
 * the number of clients): all of acc (its update, no residual) when res is
 * NULL, else acc at idx[0..k), with res (its residual) = acc elsewhere. */
static void
send_selected(const float *acc, float *res, uint32_t d, uint32_t k, const uint32_t *idx,
              float *agg)
{
	if (res == NULL) {
		for (uint32_t j = 0; j < d; j++)
			agg[j] += acc[j];
		return;
	}
	memcpy(res, acc, (size_t)d * sizeof *res);
	for (uint32_t i = 0; i < k; i++) {
		agg[idx[i]] += acc[idx[i]];
		res[idx[i]] = 0.0f;
	}
}

int
bench_indexset(int argc, char **argv)
{
	ix_opts o = {"client", "2nn", "shards", "data", 0.01, 0.1, 0.97, 100, 10, 1, 10, 600, 1};
	ml_dataset train = {0}, test = {0};
	ml_partition part = {0};
	ml_model *m = NULL, *em = NULL;
	float *g = NULL, *acc = NULL, *agg = NULL, *sum = NULL, *res = NULL;
	uint32_t *ids = NULL, *idx = NULL, d, k;
	bool none, shared, reached = false;
	double accuracy = 0.0, loss = 0.0;
	uint64_t round = 0;
	int rc = parse(argc, argv, &o);
	shoal_err err = SHOAL_OK;
	json_t *pj;

	if (rc >= 0)
		return rc;
	none = strcmp(o.select, "none") == 0;
	shared = strcmp(o.select, "shared") == 0;
	if ((err = ml_mnist_load(o.data_dir, "train", &train)) != SHOAL_OK ||
	    (err = ml_mnist_load(o.data_dir, "t10k", &test)) != SHOAL_OK) {
		fprintf(stderr, "shoal-bench indexset: %s (run scripts/setup.sh for MNIST)\n",
		        shoal_strerror(err));
		rc = 1;
		goto out;
	}
	if ((err = ml_partition_make(o.partition, &train, o.clients, o.seed, &part)) != SHOAL_OK ||
	    (err = ml_model_new(o.model, o.batch, &m)) != SHOAL_OK ||
	    (err = ml_model_new(o.model, IX_EVAL_BATCH, &em)) != SHOAL_OK) {
		fprintf(stderr, "shoal-bench indexset: %s\n", shoal_strerror(err));
		rc = 1;
		goto out;
	}
	d = (uint32_t)ml_model_dim(m);
	k = cx_k_for_ratio(d, o.ratio);
	g = malloc((size_t)d * sizeof *g);
	acc = malloc((size_t)o.per_round * d * sizeof *acc);
	agg = malloc((size_t)d * sizeof *agg);
	sum = shared ? malloc((size_t)d * sizeof *sum) : NULL;
	res = none ? NULL : calloc((size_t)o.clients * d, sizeof *res);
	ids = malloc((size_t)o.clients * sizeof *ids);
	idx = malloc((size_t)d * sizeof *idx);
	if (g == NULL || acc == NULL || agg == NULL || (shared && sum == NULL) ||
	    (!none && res == NULL) || ids == NULL || idx == NULL) {
		fprintf(stderr, "shoal-bench indexset: out of memory (%llu clients x %u floats)\n",
		        (unsigned long long)o.clients, d);
		rc = 1;
		goto out;
	}
	ml_model_init(m, g, o.seed);
	fprintf(stderr, "indexset: %s, %s %s, d %u, k %u, %llu of %llu clients a round, lr %g\n",
	        o.select, o.model, o.partition, d, k, (unsigned long long)o.per_round,
	        (unsigned long long)o.clients, o.lr);
	for (round = 1; round <= o.rounds && !reached; round++) {
		ml_rng r;

		ml_rng_seed(&r, ml_seed_mix(o.seed, round));
		for (uint32_t c = 0; c < o.clients; c++)
			ids[c] = c;
		ml_rng_shuffle(&r, ids, o.clients);
		for (uint64_t s = 0; s < o.per_round; s++) {
			uint32_t c = ids[s];
			float *a = acc + s * d;
			ml_sgd_config cfg = {(uint32_t)o.epochs, (uint32_t)o.batch, (float)o.lr,
			                     ml_seed_mix(ml_seed_mix(o.seed, round), c + 1), 0, 0, 0, 0};

			memcpy(a, g, (size_t)d * sizeof *a);
			err = ml_train_sgd(m, a, &train, part.idx + part.start[c],
			                   part.start[c + 1] - part.start[c], &cfg, NULL);
			if (err != SHOAL_OK)
				break;
			for (uint32_t j = 0; j < d; j++)
				a[j] = a[j] - g[j] + (none ? 0.0f : res[(size_t)c * d + j]);
		}
		if (err == SHOAL_OK && shared) {
			memset(sum, 0, (size_t)d * sizeof *sum);
			for (uint64_t s = 0; s < o.per_round; s++)
				for (uint32_t j = 0; j < d; j++)
					sum[j] += acc[s * d + j];
			err = cx_topk(sum, d, k, idx);
		}
		memset(agg, 0, (size_t)d * sizeof *agg);
		for (uint64_t s = 0; s < o.per_round && err == SHOAL_OK; s++) {
			uint32_t c = ids[s];

			if (!none && !shared)
				err = cx_topk(acc + s * d, d, k, idx);
			if (err == SHOAL_OK)
				send_selected(acc + s * d, none ? NULL : res + (size_t)c * d, d, k, idx,
				              agg);
		}
		if (err == SHOAL_OK) {
			for (uint32_t j = 0; j < d; j++)
				g[j] += agg[j] / (float)o.per_round;
			err = ml_evaluate(em, g, &test, &accuracy, &loss);
		}
		if (err != SHOAL_OK) {
			fprintf(stderr, "shoal-bench indexset: round %llu: %s (lower --lr?)\n",
			        (unsigned long long)round, shoal_strerror(err));
			rc = 1;
			goto out;
		}
		reached = accuracy >= o.target;
		if (round % 25 == 0 || reached)
			fprintf(stderr, "round %llu: accuracy %.4f\n", (unsigned long long)round,
			        accuracy);
	}
	round--;
	fprintf(stderr, "indexset: %s: %s %.2f in %llu rounds\n", o.select,
	        reached ? "reached" : "did not reach", o.target, (unsigned long long)round);
	pj = json_pack("{s:s, s:f, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:b}", "select",
	               o.select, "ratio", o.ratio, "model", o.model, "partition", o.partition,
	               "clients", (json_int_t)o.clients, "per_round", (json_int_t)o.per_round,
	               "epochs", (json_int_t)o.epochs, "batch", (json_int_t)o.batch, "lr", o.lr,
	               "target", o.target, "seed", (json_int_t)o.seed, "reached", reached);
	bench_emit("indexset_rounds", pj, (double)round, "rounds");
	bench_emit("indexset_accuracy", pj, accuracy, "fraction");
	json_decref(pj);
	rc = 0;
out:
	free(g);
	free(acc);
	free(agg);
	free(sum);
	free(res);
	free(ids);
	free(idx);
	ml_model_free(m);
	ml_model_free(em);
	ml_partition_fini(&part);
	ml_dataset_fini(&train);
	ml_dataset_fini(&test);
	return rc;
}
