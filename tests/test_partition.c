/* test_partition.c - iid, shards and dirichlet partitions: disjointness,
 * coverage, label skew, determinism in the seed, and spec validation; and
 * the per-client subsets of populations larger than the dataset. */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "ml/ml.h"

static ml_dataset train;

static void
load_train(void)
{
	if (train.n == 0)
		assert_int_equal(ml_mnist_load(SHOAL_DATA_DIR, "train", &train), SHOAL_OK);
}

/* A synthetic dataset of n examples with labels i % 10 (no images). */
static ml_dataset
synthetic(size_t n)
{
	ml_dataset ds = {n, NULL, malloc(n)};

	assert_non_null(ds.labels);
	for (size_t i = 0; i < n; i++)
		ds.labels[i] = (uint8_t)((i * 7) % ML_CLASSES);
	return ds;
}

/* Checks start is monotone, no example appears twice, and returns how many
 * examples are covered. Fails if a client is empty and nonempty is set. */
static size_t
check_disjoint(const ml_partition *p, size_t n, int nonempty)
{
	uint8_t *seen = calloc(n, 1);
	size_t covered = 0;

	assert_non_null(seen);
	assert_int_equal(p->start[0], 0);
	for (size_t c = 0; c < p->n_clients; c++) {
		assert_true(p->start[c] <= p->start[c + 1]);
		if (nonempty && p->start[c] == p->start[c + 1])
			fail_msg("client %zu is empty", c);
	}
	for (size_t j = 0; j < p->start[p->n_clients]; j++) {
		assert_true(p->idx[j] < n);
		if (seen[p->idx[j]])
			fail_msg("example %u owned twice", p->idx[j]);
		seen[p->idx[j]] = 1;
		covered++;
	}
	free(seen);
	return covered;
}

static int
same_partition(const ml_partition *a, const ml_partition *b)
{
	return a->n_clients == b->n_clients &&
	       memcmp(a->start, b->start, (a->n_clients + 1) * sizeof *a->start) == 0 &&
	       memcmp(a->idx, b->idx, a->start[a->n_clients] * sizeof *a->idx) == 0;
}

static void
test_iid_disjoint_cover(void **state)
{
	ml_dataset ds = synthetic(10);
	ml_partition p;

	load_train();
	assert_int_equal(ml_partition_make("iid", &train, 100, 1, &p), SHOAL_OK);
	assert_int_equal(check_disjoint(&p, train.n, 1), train.n);
	for (size_t c = 0; c < 100; c++)
		assert_int_equal(p.start[c + 1] - p.start[c], 600);
	ml_partition_fini(&p);
	/* 10 examples over 3 clients: sizes 4, 3, 3. */
	assert_int_equal(ml_partition_make("iid", &ds, 3, 1, &p), SHOAL_OK);
	assert_int_equal(check_disjoint(&p, 10, 1), 10);
	assert_int_equal(p.start[1], 4);
	assert_int_equal(p.start[2], 7);
	ml_partition_fini(&p);
	/* As many clients as examples: one each. */
	assert_int_equal(ml_partition_make("iid", &ds, 10, 1, &p), SHOAL_OK);
	assert_int_equal(check_disjoint(&p, 10, 1), 10);
	ml_partition_fini(&p);
	free(ds.labels);
}

static void
test_iid_is_mixed(void **state)
{
	ml_partition p;

	/* Each of 10 clients of 6000 IID examples holds every label, with
	 * shares near 10% (MNIST classes are 9-11% of the data). */
	load_train();
	assert_int_equal(ml_partition_make("iid", &train, 10, 3, &p), SHOAL_OK);
	for (size_t c = 0; c < 10; c++) {
		size_t counts[ML_CLASSES] = {0};

		for (uint32_t j = p.start[c]; j < p.start[c + 1]; j++)
			counts[train.labels[p.idx[j]]]++;
		for (int k = 0; k < ML_CLASSES; k++)
			assert_in_range(counts[k], 400, 800);
	}
	ml_partition_fini(&p);
}

static void
test_shards_two_labels(void **state)
{
	ml_partition p;
	size_t at_most_two = 0;

	load_train();
	assert_int_equal(ml_partition_make("shards", &train, 100, 7, &p), SHOAL_OK);
	assert_int_equal(p.n_clients, 100);
	assert_int_equal(check_disjoint(&p, train.n, 1), train.n);
	for (size_t c = 0; c < 100; c++) {
		int labels = 0, present[ML_CLASSES] = {0};

		assert_int_equal(p.start[c + 1] - p.start[c], 600);
		for (uint32_t j = p.start[c]; j < p.start[c + 1]; j++)
			present[train.labels[p.idx[j]]] = 1;
		for (int k = 0; k < ML_CLASSES; k++)
			labels += present[k];
		/* MNIST class sizes are not multiples of 300, so a shard can
		 * straddle a class boundary: a client has at most 4 labels, and
		 * since at most 9 of the 200 shards straddle one of the 9
		 * boundaries, at least 91 clients have at most 2 labels. */
		assert_in_range(labels, 1, 4);
		at_most_two += labels <= 2;
	}
	assert_true(at_most_two >= 91);
	ml_partition_fini(&p);
}

static void
test_shards_exact_two_labels(void **state)
{
	/* With class sizes that are multiples of the shard size, every shard
	 * is one label, so every client has at most 2 labels. 100 clients,
	 * 200 shards of 300 over 60000 examples, 6000 per label. */
	ml_dataset ds = {60000, NULL, malloc(60000)};
	ml_partition p;

	assert_non_null(ds.labels);
	for (size_t i = 0; i < ds.n; i++)
		ds.labels[i] = (uint8_t)((i * 7 + i / 1000) % ML_CLASSES);
	{
		size_t counts[ML_CLASSES] = {0};

		for (size_t i = 0; i < ds.n; i++)
			counts[ds.labels[i]]++;
		for (int k = 0; k < ML_CLASSES; k++)
			assert_int_equal(counts[k] % 300, 0);
	}
	assert_int_equal(ml_partition_make("shards", &ds, 100, 11, &p), SHOAL_OK);
	assert_int_equal(check_disjoint(&p, ds.n, 1), ds.n);
	for (size_t c = 0; c < 100; c++) {
		int labels = 0, present[ML_CLASSES] = {0};

		for (uint32_t j = p.start[c]; j < p.start[c + 1]; j++)
			present[ds.labels[p.idx[j]]] = 1;
		for (int k = 0; k < ML_CLASSES; k++)
			labels += present[k];
		assert_in_range(labels, 1, 2);
	}
	ml_partition_fini(&p);
	free(ds.labels);
}

static void
test_shards_drop_tail(void **state)
{
	ml_dataset ds = synthetic(1003);
	ml_partition p;

	/* 5 clients -> 10 shards of 100; 3 examples are dropped. */
	assert_int_equal(ml_partition_make("shards", &ds, 5, 1, &p), SHOAL_OK);
	assert_int_equal(check_disjoint(&p, ds.n, 1), 1000);
	for (size_t c = 0; c < 5; c++)
		assert_int_equal(p.start[c + 1] - p.start[c], 200);
	ml_partition_fini(&p);
	/* 502 clients would need shards of 0 examples. */
	assert_int_equal(ml_partition_make("shards", &ds, 502, 1, &p), SHOAL_EINVAL);
	free(ds.labels);
}

static void
test_dirichlet_disjoint_cover(void **state)
{
	static const char *specs[] = {"dirichlet:0.5", "dirichlet:0.01", "dirichlet:100"};
	ml_partition p;

	load_train();
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(ml_partition_make(specs[i], &train, 100, 5, &p), SHOAL_OK);
		assert_int_equal(check_disjoint(&p, train.n, 1), train.n);
		ml_partition_fini(&p);
	}
	/* Very skewed and many clients: the repair keeps all non-empty. */
	assert_int_equal(ml_partition_make("dirichlet:0.01", &train, 1000, 5, &p), SHOAL_OK);
	assert_int_equal(check_disjoint(&p, train.n, 1), train.n);
	ml_partition_fini(&p);
}

static void
test_dirichlet_small_n(void **state)
{
	ml_dataset ds = synthetic(20);
	ml_partition p;

	/* As many clients as examples: everyone gets exactly one. */
	assert_int_equal(ml_partition_make("dirichlet:0.1", &ds, 20, 9, &p), SHOAL_OK);
	assert_int_equal(check_disjoint(&p, ds.n, 1), ds.n);
	for (size_t c = 0; c < 20; c++)
		assert_int_equal(p.start[c + 1] - p.start[c], 1);
	ml_partition_fini(&p);
	free(ds.labels);
}

/* Mean over clients of the share of the client's most common label. */
static double
mean_top_share(const ml_partition *p, const ml_dataset *ds)
{
	double sum = 0.0;

	for (size_t c = 0; c < p->n_clients; c++) {
		size_t counts[ML_CLASSES] = {0}, top = 0, size = p->start[c + 1] - p->start[c];

		for (uint32_t j = p->start[c]; j < p->start[c + 1]; j++)
			counts[ds->labels[p->idx[j]]]++;
		for (int k = 0; k < ML_CLASSES; k++)
			top = counts[k] > top ? counts[k] : top;
		sum += (double)top / (double)size;
	}
	return sum / (double)p->n_clients;
}

static void
test_dirichlet_alpha_controls_skew(void **state)
{
	ml_partition p;
	double skewed, flat;

	/* Small alpha concentrates each client on few labels; large alpha
	 * approaches IID (top share near 1/10 + sampling noise). */
	load_train();
	assert_int_equal(ml_partition_make("dirichlet:0.1", &train, 50, 2, &p), SHOAL_OK);
	skewed = mean_top_share(&p, &train);
	ml_partition_fini(&p);
	assert_int_equal(ml_partition_make("dirichlet:1000", &train, 50, 2, &p), SHOAL_OK);
	flat = mean_top_share(&p, &train);
	ml_partition_fini(&p);
	assert_true(skewed > 0.5);
	assert_true(flat < 0.2);
}

static void
test_deterministic_in_seed(void **state)
{
	static const char *specs[] = {"iid", "shards", "dirichlet:0.3"};
	ml_partition a, b;

	load_train();
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(ml_partition_make(specs[i], &train, 100, 42, &a), SHOAL_OK);
		assert_int_equal(ml_partition_make(specs[i], &train, 100, 42, &b), SHOAL_OK);
		assert_true(same_partition(&a, &b));
		ml_partition_fini(&b);
		assert_int_equal(ml_partition_make(specs[i], &train, 100, 43, &b), SHOAL_OK);
		assert_false(same_partition(&a, &b));
		ml_partition_fini(&a);
		ml_partition_fini(&b);
	}
}

static void
test_bad_specs(void **state)
{
	static const char *bad[] = {
		"", "IID", "iid ", "shard", "shards:2", "dirichlet", "dirichlet:", "dirichlet:0",
		"dirichlet:-1", "dirichlet:abc", "dirichlet:1x", "dirichlet:nan", "dirichlet:inf",
		"dirichlet: 1", "dirichlet:1e999",
	};
	static const char *good[] = {"iid", "shards", "dirichlet:0.5", "dirichlet:1e-2",
	                             "dirichlet:.3", "dirichlet:10"};
	ml_dataset ds = synthetic(10);
	ml_partition p;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (ml_partition_check_spec(bad[i]) != SHOAL_EINVAL)
			fail_msg("accepted bad spec '%s'", bad[i]);
		assert_int_equal(ml_partition_make(bad[i], &ds, 2, 1, &p), SHOAL_EINVAL);
	}
	assert_int_equal(ml_partition_check_spec(NULL), SHOAL_EINVAL);
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
		assert_int_equal(ml_partition_check_spec(good[i]), SHOAL_OK);
	assert_int_equal(ml_partition_make("iid", &ds, 0, 1, &p), SHOAL_EINVAL);
	assert_int_equal(ml_partition_make("iid", &ds, 11, 1, &p), SHOAL_EINVAL);
	assert_null(p.start);
	ds.labels[3] = ML_CLASSES; /* not a digit */
	assert_int_equal(ml_partition_make("iid", &ds, 2, 1, &p), SHOAL_EINVAL);
	free(ds.labels);
}

static void
test_rng_known_answers(void **state)
{
	/* xoshiro256** seeded by SplitMix64(0); reference values from an
	 * independent Python transcription of Vigna's C code (the first
	 * SplitMix64 word, 0xe220a8397b1dcdaf, is the published value). */
	static const uint64_t want[3] = {
		UINT64_C(0x99ec5f36cb75f2b4), UINT64_C(0xbf6e1f784956452a),
		UINT64_C(0x1a5f849d4933e6e0),
	};
	ml_rng r;

	ml_rng_seed(&r, 0);
	assert_true(r.s[0] == UINT64_C(0xe220a8397b1dcdaf));
	for (int i = 0; i < 3; i++)
		assert_true(ml_rng_next(&r) == want[i]);
	assert_true(ml_seed_mix(1, 0) != ml_seed_mix(1, 1));
	assert_true(ml_seed_mix(1, 0) != ml_seed_mix(2, 0));
}

static void
test_rng_below_uniform(void **state)
{
	/* 3 does not divide 2^32, so a plain modulo is biased (invisibly at
	 * this size); this checks range and rough uniformity, plus bound 1. */
	size_t counts[3] = {0};
	ml_rng r;
	double u;

	ml_rng_seed(&r, 99);
	for (int i = 0; i < 30000; i++) {
		uint32_t v = ml_rng_below(&r, 3);

		assert_true(v < 3);
		counts[v]++;
	}
	for (int k = 0; k < 3; k++)
		assert_in_range(counts[k], 9700, 10300); /* +-3.5 sigma */
	assert_int_equal(ml_rng_below(&r, 1), 0);
	assert_true(ml_rng_below(&r, UINT32_MAX) < UINT32_MAX);
	for (int i = 0; i < 1000; i++) {
		u = ml_rng_uniform(&r);
		assert_true(u >= 0.0 && u < 1.0);
	}
}

/* Draws client c's subset and checks ids are in range and distinct;
 * returns how many distinct labels it has. */
static int
subset_labels(const ml_subsets *s, const ml_dataset *ds, uint64_t c, uint32_t *idx)
{
	uint8_t *seen = calloc(ds->n, 1);
	int labels[ML_CLASSES] = {0}, n = 0;

	assert_non_null(seen);
	assert_int_equal(ml_subsets_draw(s, c, idx), SHOAL_OK);
	for (uint32_t j = 0; j < s->m; j++) {
		assert_true(idx[j] < ds->n);
		if (seen[idx[j]])
			fail_msg("client %llu drew example %u twice", (unsigned long long)c, idx[j]);
		seen[idx[j]] = 1;
		labels[ds->labels[idx[j]]] = 1;
	}
	for (int l = 0; l < ML_CLASSES; l++)
		n += labels[l];
	free(seen);
	return n;
}

static void
test_subsets_iid(void **state)
{
	ml_subsets s;
	uint32_t a[60], b[60];
	int mixed = 0;

	load_train();
	assert_int_equal(ml_subsets_init(&s, "iid", &train, 60, 5), SHOAL_OK);
	for (uint64_t c = 0; c < 200; c++)
		mixed += subset_labels(&s, &train, c * 4999, a) >= 6;
	assert_true(mixed >= 190); /* 60 uniform draws almost always span 6+ labels */
	/* The same client draws the same subset; clients differ; the seed
	 * matters. */
	assert_int_equal(ml_subsets_draw(&s, 999999, a), SHOAL_OK);
	assert_int_equal(ml_subsets_draw(&s, 999999, b), SHOAL_OK);
	assert_memory_equal(a, b, sizeof a);
	assert_int_equal(ml_subsets_draw(&s, 999998, b), SHOAL_OK);
	assert_memory_not_equal(a, b, sizeof a);
	ml_subsets_fini(&s);
	assert_int_equal(ml_subsets_init(&s, "iid", &train, 60, 6), SHOAL_OK);
	assert_int_equal(ml_subsets_draw(&s, 999999, b), SHOAL_OK);
	assert_memory_not_equal(a, b, sizeof a);
	ml_subsets_fini(&s);
}

static void
test_subsets_shards_and_dirichlet(void **state)
{
	ml_subsets s;
	uint32_t idx[61];
	double skew = 0.0, flat = 0.0;

	load_train();
	assert_int_equal(ml_subsets_init(&s, "shards", &train, 61, 5), SHOAL_OK);
	for (uint64_t c = 0; c < 100; c++)
		assert_int_equal(subset_labels(&s, &train, c, idx), 2);
	ml_subsets_fini(&s);
	assert_int_equal(ml_subsets_init(&s, "dirichlet:0.1", &train, 61, 5), SHOAL_OK);
	for (uint64_t c = 0; c < 100; c++)
		skew += subset_labels(&s, &train, c, idx);
	ml_subsets_fini(&s);
	assert_int_equal(ml_subsets_init(&s, "dirichlet:1000", &train, 61, 5), SHOAL_OK);
	for (uint64_t c = 0; c < 100; c++)
		flat += subset_labels(&s, &train, c, idx);
	ml_subsets_fini(&s);
	/* alpha 0.1: a few labels per client (4.1 on average here); alpha
	 * 1000: about 6 of each label, so all ten. */
	assert_true(skew / 100 < 6.0);
	assert_true(flat / 100 > 9.5);
	/* Whole-label draws: m equal to a label's size is capped and moved. */
	ml_dataset ds = synthetic(100);
	uint32_t all[100];
	assert_int_equal(ml_subsets_init(&s, "dirichlet:0.01", &ds, 100, 1), SHOAL_OK);
	assert_int_equal(subset_labels(&s, &ds, 3, all), ML_CLASSES);
	ml_subsets_fini(&s);
	/* Bad arguments. */
	assert_int_equal(ml_subsets_init(&s, "iid", &ds, 0, 1), SHOAL_EINVAL);
	assert_int_equal(ml_subsets_init(&s, "iid", &ds, 101, 1), SHOAL_EINVAL);
	assert_int_equal(ml_subsets_init(&s, "shards", &ds, 11, 1), SHOAL_EINVAL);
	assert_int_equal(ml_subsets_init(&s, "bogus", &ds, 10, 1), SHOAL_EINVAL);
	free(ds.labels);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_rng_known_answers),
	cmocka_unit_test(test_rng_below_uniform),
	cmocka_unit_test(test_iid_disjoint_cover),
	cmocka_unit_test(test_iid_is_mixed),
	cmocka_unit_test(test_shards_two_labels),
	cmocka_unit_test(test_shards_exact_two_labels),
	cmocka_unit_test(test_shards_drop_tail),
	cmocka_unit_test(test_dirichlet_disjoint_cover),
	cmocka_unit_test(test_dirichlet_small_n),
	cmocka_unit_test(test_dirichlet_alpha_controls_skew),
	cmocka_unit_test(test_deterministic_in_seed),
	cmocka_unit_test(test_bad_specs),
	cmocka_unit_test(test_subsets_iid),
	cmocka_unit_test(test_subsets_shards_and_dirichlet),
};

SHOAL_TEST_MAIN(tests)
