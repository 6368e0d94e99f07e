/* test_server_async.c - asynchronous buffered aggregation (FedBuff) in the
 * server core: the staleness weight on hand-computed values, a round every
 * K accepted updates with the staleness-weighted average worked out by
 * hand, refusal of a too-stale update without touching the model, the
 * model each TASK carries by the version its client holds, the settings it
 * refuses, and a whole simulation (sim_engine_run on real MNIST) that is
 * identical with 1 and 2 threads and learns. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/codec.h"
#include "common/msg.h"
#include "ml/ml.h"
#include "server/core.h"
#include "sim/device.h"
#include "sim/engine.h"
#include "srvharness.h"

static void
async_config(srv_config *c, uint32_t k, uint32_t conc)
{
	srv_config_defaults(c);
	c->model = "logreg";
	c->rounds = 10;
	c->clients_per_round = 2;
	c->async_k = k;
	c->concurrency = conc;
	c->hold_ms = 1000;
	c->round_timeout_ms = 5000;
	c->seed = 7;
	c->compress = "none";
	c->downlink_q8 = false; /* exact sums */
}

static uint64_t
checkin(harness *h, uint32_t id, uint32_t ver, uint64_t now)
{
	msg m = {.type = MSG_CHECKIN, .client_id = id, .model_ver = ver};
	return send_msg(h, &m, now);
}

/* A dense UPDATE of value v everywhere with weight n. */
static uint64_t
update(harness *h, uint32_t id, uint32_t round, uint32_t n, float v, uint64_t now)
{
	float *d = malloc(h->dim * sizeof *d);
	for (size_t j = 0; j < h->dim; j++)
		d[j] = v;
	msg m = {.type = MSG_UPDATE, .client_id = id, .round = round, .n_examples = n,
	         .loss = 0.5f, .dim = (uint32_t)h->dim, .vec = (const uint8_t *)d};
	uint64_t req = send_msg(h, &m, now);
	free(d);
	return req;
}

static msg_type
reply_type(harness *h, uint64_t req, msg *m)
{
	assert_non_null(reply_to(h, req, m));
	return m->type;
}

static uint32_t
rounds_ended(harness *h)
{
	srv_event ev;
	uint32_t n = 0;
	while (srv_core_pop_event(h->s, &ev))
		n += ev.kind == SRV_EV_ROUND_END;
	return n;
}

/* ---- unit cases ------------------------------------------------------------ */

static void
test_staleness_weight_by_hand(void **state)
{
	(void)state;
	assert_true(srv_staleness_weight(0) == 1.0);
	assert_true(fabs(srv_staleness_weight(1) - 0.70710678118654752) < 1e-15);
	assert_true(srv_staleness_weight(3) == 0.5);
	assert_true(fabs(srv_staleness_weight(8) - 1.0 / 3.0) < 1e-15);
	assert_true(srv_staleness_weight(15) == 0.25);
	assert_true(fabs(srv_staleness_weight(99) - 0.1) < 1e-15);
}

/* K = 2, C = 3; clients a, b, c, d. a, b, c get tasks on version 1, d
 * waits. a (n 1, +1) then b (n 3, +2): round 1 = (1 + 6) / 4 = 1.75,
 * version 2. c (n 1, +4) and d (n 1, -2), both trained on version 1
 * (tau 1): round 2 = s(1) (4 - 2) / 2 = 1/sqrt(2). */
static void
test_round_every_k_updates_by_hand(void **state)
{
	harness h;
	srv_config c;
	msg m;

	(void)state;
	async_config(&c, 2, 3);
	h_init(&h, &c);
	float *p0 = malloc(h.dim * sizeof *p0);
	memcpy(p0, srv_core_params(h.s, NULL), h.dim * sizeof *p0);
	uint32_t id[4];
	uint64_t rq[4];
	const char *names[4] = {"a", "b", "c", "d"};
	for (int i = 0; i < 4; i++) {
		id[i] = hello_caps(&h, names[i], 0);
		rq[i] = checkin(&h, id[i], 0, (uint64_t)i);
	}
	for (int i = 0; i < 3; i++) {
		assert_int_equal(reply_type(&h, rq[i], &m), MSG_TASK);
		assert_int_equal(m.round, 1);
		assert_int_equal(m.model_ver, 1);
	}
	assert_null(reply_to(&h, rq[3], &m)); /* C = 3 train: d waits */

	assert_int_equal(reply_type(&h, update(&h, id[0], 1, 1, 1.0f, 10), &m), MSG_ACK);
	assert_int_equal(srv_core_model_version(h.s), 1); /* 1 of K */
	assert_int_equal(rounds_ended(&h), 0);
	/* a's slot went to d, on version 1 */
	assert_int_equal(reply_type(&h, rq[3], &m), MSG_TASK);
	assert_int_equal(m.model_ver, 1);
	assert_int_equal(reply_type(&h, update(&h, id[1], 1, 3, 2.0f, 11), &m), MSG_ACK);
	assert_int_equal(srv_core_model_version(h.s), 2);
	assert_int_equal(rounds_ended(&h), 1);
	assert_int_equal(srv_core_round(h.s), 2);

	assert_int_equal(reply_type(&h, update(&h, id[2], 1, 1, 4.0f, 12), &m), MSG_ACK);
	assert_int_equal(srv_core_model_version(h.s), 2);
	assert_int_equal(rounds_ended(&h), 0);
	srv_event ev;
	assert_int_equal(reply_type(&h, update(&h, id[3], 1, 1, -2.0f, 13), &m), MSG_ACK);
	assert_int_equal(srv_core_model_version(h.s), 3);
	bool ended = false;
	while (srv_core_pop_event(h.s, &ev)) {
		if (ev.kind != SRV_EV_ROUND_END)
			continue;
		ended = true;
		assert_int_equal(ev.stats.round, 2);
		assert_int_equal(ev.stats.reported, 2);
		assert_true(ev.stats.async);
		assert_true(ev.stats.staleness == 1.0);
		assert_int_equal(ev.stats.staleness_max, 1);
	}
	assert_true(ended);
	const float *p = srv_core_params(h.s, NULL);
	double want = 1.75 + 0.70710678118654752;
	for (size_t j = 0; j < h.dim; j++)
		assert_true(fabs((double)p[j] - ((double)p0[j] + want)) < 1e-5);
	free(p0);
	h_fini(&h);
}

/* Max staleness 0, K = 1, C = 2: a's update makes version 2, so b's, on
 * version 1, is one version behind: refused with -10, model unchanged, its
 * slot freed (a resend is stale too; a check-in gets a fresh task). */
static void
test_too_stale_update_refused(void **state)
{
	harness h;
	srv_config c;
	msg m;

	(void)state;
	async_config(&c, 1, 2);
	c.max_staleness = 0;
	h_init(&h, &c);
	uint32_t a = hello_caps(&h, "a", 0), b = hello_caps(&h, "b", 0);
	assert_int_equal(reply_type(&h, checkin(&h, a, 0, 0), &m), MSG_TASK);
	assert_int_equal(reply_type(&h, checkin(&h, b, 0, 0), &m), MSG_TASK);
	assert_int_equal(reply_type(&h, update(&h, a, 1, 1, 1.0f, 5), &m), MSG_ACK);
	assert_int_equal(srv_core_model_version(h.s), 2);
	float *before = malloc(h.dim * sizeof *before);
	memcpy(before, srv_core_params(h.s, NULL), h.dim * sizeof *before);

	assert_int_equal(reply_type(&h, update(&h, b, 1, 1, 5.0f, 6), &m), MSG_ERROR);
	assert_int_equal(m.code, SHOAL_ESTALE);
	assert_non_null(strstr(m.text, "max-staleness"));
	assert_int_equal(srv_core_model_version(h.s), 2);
	assert_memory_equal(before, srv_core_params(h.s, NULL), h.dim * sizeof *before);
	assert_int_equal(reply_type(&h, update(&h, b, 1, 1, 5.0f, 7), &m), MSG_ERROR);
	assert_int_equal(m.code, SHOAL_ESTALE);
	assert_memory_equal(before, srv_core_params(h.s, NULL), h.dim * sizeof *before);

	assert_int_equal(reply_type(&h, checkin(&h, b, 1, 8), &m), MSG_TASK);
	assert_int_equal(m.model_ver, 2);
	assert_int_equal(m.round, 2);
	assert_int_equal(reply_type(&h, update(&h, b, 2, 1, 1.0f, 9), &m), MSG_ACK);
	assert_int_equal(srv_core_model_version(h.s), 3);
	free(before);
	h_fini(&h);
}

/* A resent update (its ACK lost) gets -14; a task past its deadline frees
 * the slot for a waiting client, and the late update is stale. */
static void
test_duplicate_and_deadline(void **state)
{
	harness h;
	srv_config c;
	msg m;

	(void)state;
	async_config(&c, 2, 1);
	h_init(&h, &c);
	uint32_t a = hello_caps(&h, "a", 0), b = hello_caps(&h, "b", 0);
	assert_int_equal(reply_type(&h, checkin(&h, a, 0, 0), &m), MSG_TASK);
	uint64_t rb = checkin(&h, b, 0, 0);
	assert_null(reply_to(&h, rb, &m));
	assert_int_equal(reply_type(&h, update(&h, a, 1, 1, 1.0f, 1), &m), MSG_ACK);
	assert_int_equal(reply_type(&h, update(&h, a, 1, 1, 1.0f, 2), &m), MSG_ERROR);
	assert_int_equal(m.code, SHOAL_EDUP);
	assert_int_equal(reply_type(&h, rb, &m), MSG_TASK); /* a's slot */
	assert_int_equal(srv_core_next_deadline(h.s), 1 + 5000);
	uint64_t ra = checkin(&h, a, 1, 4500); /* parked past the deadline */
	srv_core_on_timer(h.s, 1 + 5000);
	drain(&h);
	assert_int_equal(reply_type(&h, ra, &m), MSG_TASK); /* b's slot, given up */
	assert_int_equal(reply_type(&h, update(&h, b, 1, 1, 1.0f, 5002), &m), MSG_ERROR);
	assert_int_equal(m.code, SHOAL_ESTALE);
	assert_int_equal(srv_core_model_version(h.s), 1);
	h_fini(&h);
}

/* The q8 downlink: a client holding the previous version gets the change
 * (dq), one further behind or new gets the full model. */
static void
test_task_model_by_held_version(void **state)
{
	harness h;
	srv_config c;
	msg m;

	(void)state;
	async_config(&c, 1, 1);
	c.downlink_q8 = true;
	h_init(&h, &c);
	uint32_t a = hello_caps(&h, "a", MSG_CX_ALL), b = hello_caps(&h, "b", MSG_CX_ALL);
	assert_int_equal(reply_type(&h, checkin(&h, a, 0, 0), &m), MSG_TASK);
	assert_non_null(m.vec);
	uint64_t rb = checkin(&h, b, 0, 0);
	assert_int_equal(reply_type(&h, update(&h, a, 1, 1, 0.01f, 1), &m), MSG_ACK);
	assert_int_equal(reply_type(&h, rb, &m), MSG_TASK); /* holds none: full */
	assert_non_null(m.vec);
	assert_int_equal(m.model_ver, 2);
	uint64_t ra = checkin(&h, a, 1, 2); /* holds version 1, waits for b's slot */
	assert_int_equal(reply_type(&h, update(&h, b, 2, 1, 0.01f, 3), &m), MSG_ACK);
	assert_int_equal(srv_core_model_version(h.s), 3);
	assert_int_equal(reply_type(&h, ra, &m), MSG_TASK); /* two behind: full */
	assert_non_null(m.vec);
	assert_null(m.blob);
	assert_int_equal(reply_type(&h, update(&h, a, 3, 1, 0.01f, 4), &m), MSG_ACK);
	assert_int_equal(reply_type(&h, checkin(&h, b, 3, 5), &m), MSG_TASK); /* one behind */
	assert_null(m.vec);
	assert_non_null(m.blob);
	assert_int_equal(m.base, 3);
	assert_int_equal(m.model_ver, 4);
	h_fini(&h);
}

/* A client that holds the current version (K = 2: the model has not
 * moved since its last task) gets the empty change, about a quarter of
 * the full model's bytes, which leaves its model bit for bit. */
static void
test_task_empty_change_for_current_version(void **state)
{
	harness h;
	srv_config c;
	msg m;

	(void)state;
	async_config(&c, 2, 1);
	c.downlink_q8 = true;
	h_init(&h, &c);
	uint32_t a = hello_caps(&h, "a", MSG_CX_ALL);
	assert_int_equal(reply_type(&h, checkin(&h, a, 0, 0), &m), MSG_TASK);
	assert_int_equal(reply_type(&h, update(&h, a, 1, 1, 0.01f, 1), &m), MSG_ACK);
	assert_int_equal(srv_core_model_version(h.s), 1);
	assert_int_equal(reply_type(&h, checkin(&h, a, 1, 2), &m), MSG_TASK);
	assert_null(m.vec);
	assert_non_null(m.blob);
	assert_int_equal(m.base, 1);
	assert_int_equal(m.model_ver, 1);
	assert_true(m.blob_len * 3 < 4 * h.dim);
	float *p = malloc(h.dim * sizeof *p);
	memcpy(p, srv_core_params(h.s, NULL), h.dim * sizeof *p);
	assert_true(cx_decode_add(m.blob, m.blob_len, (uint32_t)h.dim, p, NULL) >= 0);
	assert_memory_equal(p, srv_core_params(h.s, NULL), h.dim * sizeof *p);
	free(p);
	h_fini(&h);
}

static void
test_refused_settings(void **state)
{
	srv_config c;
	srv_core *s = NULL;

	(void)state;
	async_config(&c, 2, 2);
	c.clients_per_round = 10; /* enough for secure aggregation's own checks */
	c.secagg = SRV_SECAGG_FULL;
	c.compress = "topk:0.1,q8";
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	async_config(&c, 2, 2);
	c.sampling = SRV_SAMPLING_POISSON;
	c.sample_rate = 0.5;
	c.dp = SRV_DP_CENTRAL;
	c.clip = 1;
	c.noise_multiplier = 1;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	async_config(&c, 2, 2);
	c.over_select = 1.5;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	async_config(&c, 2, 2);
	c.local_budget_ms = 500; /* FedNova normalizes per synchronous round */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	async_config(&c, SRV_ASYNC_K_MAX + 1, 2);
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	assert_null(s);
}

/* ---- a whole simulation ------------------------------------------------------ */

#define NCLIENTS 8
#define SW_CLIENTS NCLIENTS
#include "simworld.h"
#define ROUNDS 24

typedef struct world {
	double acc[ROUNDS + 1];
	uint32_t tau_max;
	uint32_t rounds_seen;
} world;

static world W;

static void
on_round(void *user, const srv_round_stats *st, double virtual_s)
{
	(void)user;
	(void)virtual_s;
	if (st->round <= ROUNDS)
		W.acc[st->round] = st->accuracy;
	W.tau_max = st->staleness_max > W.tau_max ? st->staleness_max : W.tau_max;
	W.rounds_seen++;
}

/* 8 clients, half on a device 4x slower than the others (always there, no
 * failures), K = 2 of C = 4 training at once, top-10% q8 updates and the
 * q8 downlink: the final model of `threads` threads, in out. */
static void
run_async(unsigned threads, float *out, sim_engine_stats *st)
{
	sim_device fast = {.name = "fast", .flops = 1e9, .up_Bps = 1e6, .down_Bps = 1e7,
	                   .rtt_s = 0.02, .mem_bytes = 1u << 30, .on_s = 1, .off_s = 0};
	sim_device slow = fast;
	slow.flops = 2.5e8;
	const sim_device *dev[NCLIENTS];
	srv_config cfg;
	srv_core *s;

	for (int i = 0; i < NCLIENTS; i++)
		dev[i] = i % 2 ? &slow : &fast;
	memset(W.acc, 0, sizeof W.acc);
	W.tau_max = 0;
	W.rounds_seen = 0;
	srv_config_defaults(&cfg);
	cfg.model = "logreg";
	cfg.rounds = ROUNDS;
	cfg.clients_per_round = 4;
	cfg.async_k = 2;
	cfg.round_timeout_ms = 600000;
	cfg.lr = 0.1f;
	cfg.test = &SW.test;
	cfg.seed = 3;
	cfg.compress = "topk:0.1,q8";
	assert_int_equal(srv_core_new(&cfg, &s), SHOAL_OK);
	sim_engine_config ec = {
		.server = s,
		.n_clients = NCLIENTS,
		.client = {.model = "logreg", .dim = 7850, .cx_caps = MSG_CX_ALL,
		           .error_feedback = true, .seed = 77},
		.dev = dev,
		.n_examples = SW.n,
		.flops_per_example = ml_model_train_flops("logreg"),
		.train = sw_train_fn,
		.on_round = on_round,
		.threads = threads,
		.seed = 9,
	};
	assert_int_equal(sim_engine_run(&ec, st), SHOAL_OK);
	memcpy(out, srv_core_params(s, NULL), 7850 * sizeof *out);
	srv_core_free(s);
}

static void
test_sim_deterministic_and_learns(void **state)
{
	float *m1 = malloc(7850 * sizeof *m1), *m2 = malloc(7850 * sizeof *m2);
	double acc1[ROUNDS + 1];
	sim_engine_stats s1, s2;

	(void)state;
	run_async(1, m1, &s1);
	assert_int_equal(W.rounds_seen, ROUNDS);
	assert_true(W.tau_max >= 1); /* the slow clients' updates were stale */
	memcpy(acc1, W.acc, sizeof acc1);
	run_async(2, m2, &s2);
	assert_memory_equal(m1, m2, 7850 * sizeof *m1);
	assert_memory_equal(acc1, W.acc, sizeof acc1);
	assert_true(s1.virtual_s == s2.virtual_s);
	assert_true(s1.bytes_up == s2.bytes_up && s1.bytes_down == s2.bytes_down);
	/* 24 rounds of 2 updates of 1,000 examples: logistic regression is
	 * past 85% (it ends near 90% trained centrally). */
	assert_true(acc1[ROUNDS] > 0.85);
	free(m1);
	free(m2);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_staleness_weight_by_hand),
		cmocka_unit_test(test_round_every_k_updates_by_hand),
		cmocka_unit_test(test_too_stale_update_refused),
		cmocka_unit_test(test_duplicate_and_deadline),
		cmocka_unit_test(test_task_model_by_held_version),
		cmocka_unit_test(test_task_empty_change_for_current_version),
		cmocka_unit_test(test_refused_settings),
		cmocka_unit_test_setup_teardown(test_sim_deterministic_and_learns, sw_setup, sw_teardown),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
