/* test_loop.c - the server core and real client cores wired together in
 * memory (no sockets, virtual time), training logistic regression on real
 * MNIST: accuracy rises, and the final model does not depend on the order
 * in which client messages reach the server. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "client/core.h"
#include "common/msg.h"
#include "ml/ml.h"
#include "server/core.h"

#define NCLIENTS 6

typedef struct world {
	ml_dataset train, test;
	ml_partition part;
} world;

static world W;

static int
setup(void **state)
{
	if (ml_mnist_load(SHOAL_DATA_DIR, "train", &W.train) != SHOAL_OK ||
	    ml_mnist_load(SHOAL_DATA_DIR, "t10k", &W.test) != SHOAL_OK)
		return -1;
	return ml_partition_make("iid", &W.train, NCLIENTS, 5, &W.part) == SHOAL_OK ? 0 : -1;
}

static int
teardown(void **state)
{
	ml_partition_fini(&W.part);
	ml_dataset_fini(&W.train);
	ml_dataset_fini(&W.test);
	return 0;
}

typedef struct loop_opts {
	bool reversed;       /* service clients in reverse index order */
	const char *compress;/* server --compress; NULL: none */
	bool downlink_q8;
	uint32_t identical;  /* out: TASKs after which client == server model */
	uint32_t tasks;      /* out: TASKs received */
	uint32_t deltas;     /* out: of which carried "dq" (held the previous version) */
	uint32_t secagg;     /* SRV_SECAGG_* */
	uint32_t min_clients;/* 0: NCLIENTS */
	/* drop_count clients die when about to send their SA message of
	 * drop_phase in round drop_round (never heard from again) */
	uint32_t drop_round, drop_phase, drop_count;
	uint32_t abandoned;  /* out: rounds abandoned */
	uint32_t reported[16]; /* out: per round */
} loop_opts;

/* Run `rounds` rounds; clients are serviced in index order or reversed.
 * Copies the final model into out and returns the last accuracy. */
static double
run_opts(loop_opts *lo, uint32_t rounds, float *out, size_t dim)
{
	bool reversed = lo->reversed;
	srv_config cfg;
	srv_config_defaults(&cfg);
	cfg.model = "logreg";
	cfg.rounds = rounds;
	cfg.clients_per_round = 4;
	cfg.min_clients = lo->min_clients ? lo->min_clients : NCLIENTS;
	cfg.min_reports = lo->secagg ? 1 : 4;
	cfg.secagg = lo->secagg;
	cfg.secagg_phase_ms = 1000;
	cfg.round_timeout_ms = 5000;
	cfg.lr = 0.1f;
	cfg.test = &W.test;
	cfg.seed = 11;
	cfg.compress = lo->compress != NULL ? lo->compress : "none";
	cfg.downlink_q8 = lo->downlink_q8;
	srv_core *s;
	assert_int_equal(srv_core_new(&cfg, &s), SHOAL_OK);

	cli_core *c[NCLIENTS];
	ml_model *model;
	assert_int_equal(ml_model_new("logreg", 10, &model), SHOAL_OK);
	for (int i = 0; i < NCLIENTS; i++) {
		char name[16];
		snprintf(name, sizeof name, "c%d", i);
		cli_config cc = {.name = name, .model = "logreg", .dim = (uint32_t)dim,
		                 .n_examples = W.part.start[i + 1] - W.part.start[i],
		                 .cx_caps = MSG_CX_ALL, .error_feedback = true, .seed = 5};
		assert_int_equal(cli_core_new(&cc, &c[i]), SHOAL_OK);
	}
	/* Each client has at most one request in flight: pending[i] marks it. */
	bool pending[NCLIENTS] = {false}, dead[NCLIENTS] = {false};
	uint32_t dropped = 0;
	uint64_t now = 0;
	double acc = 0;
	int done = 0, guard = 0;
	while (done < NCLIENTS && guard++ < 100000) {
		done = 0;
		for (int k = 0; k < NCLIENTS; k++) {
			int i = reversed ? NCLIENTS - 1 - k : k;
			if (dead[i]) {
				done++;
				continue;
			}
			if (pending[i])
				continue;
			cli_step st;
			cli_core_step(c[i], now, &st);
			if (st.action == CLI_DONE) {
				assert_int_equal(st.err, SHOAL_OK);
				done++;
			} else if (st.action == CLI_TRAIN) {
				/* Fresh from a TASK: the client's model must be the
				 * server's, bit for bit (the round has not closed). */
				lo->tasks++;
				if (memcmp(cli_core_global(c[i]), srv_core_params(s, NULL),
				           dim * sizeof(float)) == 0)
					lo->identical++;
				const uint32_t *idx = W.part.idx + W.part.start[i];
				size_t n = W.part.start[i + 1] - W.part.start[i];
				ml_sgd_config sc = {.epochs = st.epochs, .batch = st.batch, .lr = st.lr,
				                    .seed = st.seed};
				double loss;
				assert_int_equal(ml_train_sgd(model, st.params, &W.train, idx, n, &sc, &loss),
				                 SHOAL_OK);
				assert_int_equal(cli_core_submit(c[i], (uint32_t)n, (float)loss, now), SHOAL_OK);
			} else if (st.action == CLI_SEND) {
				msg sm;
				if (dropped < lo->drop_count && msg_decode(st.buf, st.len, &sm) > 0 &&
				    sm.type == MSG_SA && sm.round == lo->drop_round &&
				    sm.phase == lo->drop_phase) {
					dead[i] = true;
					dropped++;
					continue;
				}
				pending[i] = true;
				srv_core_on_request(s, (uint64_t)i, st.buf, st.len, now);
			}
		}
		srv_core_on_timer(s, now);
		srv_reply r;
		while (srv_core_pop_reply(s, &r)) {
			msg m;
			assert_true(pending[r.req]);
			if (msg_decode(r.buf, r.len, &m) > 0 && m.type == MSG_TASK && m.blob != NULL)
				lo->deltas++;
			pending[r.req] = false;
			cli_core_on_reply(c[r.req], r.buf, r.len, now);
			free(r.buf);
		}
		srv_event ev;
		while (srv_core_pop_event(s, &ev))
			if (ev.kind == SRV_EV_ROUND_END) {
				if (ev.stats.round < 16)
					lo->reported[ev.stats.round] = ev.stats.reported;
				lo->abandoned += ev.stats.abandoned;
				if (lo->drop_count == 0) {
					assert_false(ev.stats.abandoned);
					assert_int_equal(ev.stats.reported, 4);
				}
				if (!ev.stats.abandoned)
					acc = ev.stats.accuracy;
			}
		now += 10;
	}
	assert_int_equal(done, NCLIENTS);
	assert_true(srv_core_finished(s));
	memcpy(out, srv_core_params(s, NULL), dim * sizeof *out);
	assert_int_equal(dropped, lo->drop_count);
	for (int i = 0; i < NCLIENTS; i++)
		cli_core_free(c[i]);
	ml_model_free(model);
	srv_core_free(s);
	return acc;
}

static double
run(bool reversed, uint32_t rounds, float *out, size_t dim)
{
	loop_opts lo = {.reversed = reversed};
	return run_opts(&lo, rounds, out, dim);
}

static void
test_loop_trains_and_is_order_independent(void **state)
{
	size_t dim = ml_model_dim_of("logreg");
	float *a = malloc(dim * sizeof *a), *b = malloc(dim * sizeof *b);
	double acc_a = run(false, 3, a, dim);
	double acc_b = run(true, 3, b, dim);
	assert_true(acc_a >= 0.85);
	assert_memory_equal(a, b, dim * sizeof *a);
	assert_true(acc_a == acc_b);
	free(a);
	free(b);
}

/* Compressed uploads and q8 downlink deltas for 10 rounds: every client
 * that receives a TASK holds exactly the server's model, deltas were used,
 * and the run is still independent of message order. */
static void
test_loop_compressed_downlink_bit_identical(void **state)
{
	size_t dim = ml_model_dim_of("logreg");
	float *a = malloc(dim * sizeof *a), *b = malloc(dim * sizeof *b);
	loop_opts la = {.compress = "topk:0.05,q8", .downlink_q8 = true};
	loop_opts lb = la;
	lb.reversed = true;
	double acc_a = run_opts(&la, 10, a, dim);
	double acc_b = run_opts(&lb, 10, b, dim);
	assert_int_equal(la.tasks, 10 * 4);
	assert_int_equal(la.identical, la.tasks);
	assert_true(la.deltas > 0);
	assert_memory_equal(a, b, dim * sizeof *a);
	assert_true(acc_a == acc_b);
	assert_true(acc_a > 0.7);
	free(a);
	free(b);
}

/* Secure rounds through the real cores: the model learns, and since the
 * unmasked sum is exact the result does not depend on message order (the
 * clients' keys and masks are fresh randomness in every run). */
static void
test_loop_secure_rounds(void **state)
{
	size_t dim = ml_model_dim_of("logreg");
	float *a = malloc(dim * sizeof *a), *b = malloc(dim * sizeof *b);
	loop_opts la = {.secagg = SRV_SECAGG_FULL};
	loop_opts lb = la;
	lb.reversed = true;
	double acc_a = run_opts(&la, 3, a, dim);
	double acc_b = run_opts(&lb, 3, b, dim);
	assert_true(acc_a >= 0.85);
	assert_true(acc_a == acc_b);
	assert_memory_equal(a, b, dim * sizeof *a);
	assert_int_equal(la.tasks, 3 * 4);
	assert_int_equal(la.identical, la.tasks);
	free(a);
	free(b);
}

/* A client that dies after sharing its keys (phase 3 never sent): the
 * phase deadline closes the phase, its masks are reconstructed, and the
 * round completes with the other three. Three of four dying before the
 * masked input leaves fewer than t: the round is abandoned, and later
 * rounds go on with the survivors. */
static void
test_loop_secure_dropouts(void **state)
{
	size_t dim = ml_model_dim_of("logreg");
	float *a = malloc(dim * sizeof *a);
	loop_opts lo = {.secagg = SRV_SECAGG_FULL, .min_clients = 4, .drop_round = 2,
	                .drop_phase = 3, .drop_count = 1};
	double acc = run_opts(&lo, 3, a, dim);
	assert_int_equal(lo.abandoned, 0);
	assert_int_equal(lo.reported[1], 4);
	assert_int_equal(lo.reported[2], 3);
	assert_int_equal(lo.reported[3], 4);
	assert_true(acc >= 0.8);

	loop_opts lz = {.secagg = SRV_SECAGG_FULL, .min_clients = 3, .drop_round = 2,
	                .drop_phase = 3, .drop_count = 3};
	run_opts(&lz, 3, a, dim);
	assert_int_equal(lz.abandoned, 1);
	assert_true(lz.reported[1] >= 3);
	assert_int_equal(lz.reported[2], 0);
	assert_int_equal(lz.reported[3], 3); /* the three survivors */
	free(a);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_loop_trains_and_is_order_independent),
		cmocka_unit_test(test_loop_compressed_downlink_bit_identical),
		cmocka_unit_test(test_loop_secure_rounds),
		cmocka_unit_test(test_loop_secure_dropouts),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, setup, teardown);
}
