/* test_fednova.c - time-budgeted local work with FedNova aggregation
 * (server/nova.h, PROTOCOL.md section 17): the step arithmetic, tau_eff and
 * the normalized global update on hand-computed cases through the server
 * core, the client core's normalized UPDATE and its "tau", an UPDATE
 * without "tau" counted as full work, SGD stopping after max_steps, and a
 * simulated run with a budget on a slow mix (deterministic for 1 and 2
 * threads, slow clients capped, shorter rounds). No wall-clock assertions. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client/core.h"
#include "common/codec.h"
#include "common/msg.h"
#include "ml/ml.h"
#include "server/core.h"
#include "server/nova.h"
#include "sim/device.h"
#include "sim/engine.h"
#include "srvharness.h"

/* ---- arithmetic ------------------------------------------------------------ */

static void
test_step_counts(void **state)
{
	(void)state;
	assert_int_equal(srv_nova_full_steps(600, 1, 10), 60);
	assert_int_equal(srv_nova_full_steps(601, 2, 10), 122);
	assert_int_equal(srv_nova_full_steps(5, 3, 10), 3);
	/* S: E * ceil(mean n / B): (100 + 400) / 2 = 250 -> 25 steps */
	assert_int_equal(srv_nova_ref_steps(500, 2, 1, 10), 25);
	assert_int_equal(srv_nova_ref_steps(501, 2, 2, 10), 52);
	assert_int_equal(srv_nova_ref_steps(0, 3, 1, 10), 1); /* at least 1 */
	assert_int_equal(ml_sgd_steps(25, 10, 2), 6);
	/* 3 steps an epoch over 25 examples: 10, 10, 5 */
	assert_int_equal(ml_sgd_examples(25, 10, 2), 20);
	assert_int_equal(ml_sgd_examples(25, 10, 3), 25);
	assert_int_equal(ml_sgd_examples(25, 10, 4), 35);
	assert_int_equal(ml_sgd_examples(25, 10, 6), 50);
}

/* ---- the server core -------------------------------------------------------- */

/* Two clients "a" (n_a examples) and "b" (n_b) in round 1 of a logreg
 * server, K = M = 2, E = 1, B = 10, dense updates, no downlink deltas. */
static void
h_start(harness *h, uint32_t budget_ms, uint32_t agg, uint32_t n_a, uint32_t n_b, uint32_t id[2],
        msg task[2])
{
	srv_config c;
	srv_config_defaults(&c);
	c.model = "logreg";
	c.rounds = 2;
	c.clients_per_round = 2;
	c.min_clients = 2;
	c.epochs = 1;
	c.batch = 10;
	c.compress = "none";
	c.downlink_q8 = false;
	c.local_budget_ms = budget_ms;
	c.budget_agg = agg;
	h_init(h, &c);
	const char *names[2] = {"a", "b"};
	uint32_t n[2] = {n_a, n_b};
	uint64_t rq[2];
	for (int i = 0; i < 2; i++) {
		msg m = {.type = MSG_HELLO, .dim = (uint32_t)h->dim, .n_examples = n[i]};
		strcpy(m.name, names[i]);
		strcpy(m.model, "logreg");
		msg w;
		assert_non_null(reply_to(h, send_msg(h, &m, 0), &w));
		assert_int_equal(w.type, MSG_WELCOME);
		id[i] = w.client_id;
	}
	for (int i = 0; i < 2; i++) {
		msg m = {.type = MSG_CHECKIN, .client_id = id[i]};
		rq[i] = send_msg(h, &m, 1);
	}
	for (int i = 0; i < 2; i++) {
		assert_non_null(reply_to(h, rq[i], &task[i]));
		assert_int_equal(task[i].type, MSG_TASK);
	}
}

static void
h_update(harness *h, uint32_t id, uint32_t n, uint32_t tau, const float *v)
{
	msg m = {.type = MSG_UPDATE, .client_id = id, .round = 1, .n_examples = n, .loss = 0.5f,
	         .tau = tau, .dim = (uint32_t)h->dim, .vec = (const uint8_t *)v};
	msg ack;
	assert_non_null(reply_to(h, send_msg(h, &m, 2), &ack));
	assert_int_equal(ack.type, MSG_ACK);
}

static double
round_tau_eff(harness *h)
{
	srv_event ev;
	double t = -1;
	while (srv_core_pop_event(h->s, &ev))
		if (ev.kind == SRV_EV_ROUND_END)
			t = ev.stats.tau_eff;
	return t;
}

/* The hand-computed case: a has 100 examples and did tau = 10 steps (all
 * of its E = 1 epoch at B = 10), b has 400 and did 40. S = E * ceil(250 /
 * 10) = 25, p = (0.2, 0.8), tau_eff = 0.2 * 10 + 0.8 * 40 = 34, and
 *   Delta = 34 * (0.2 d_a / 10 + 0.8 d_b / 40) = 0.68 (d_a + d_b).
 * The clients send u = d * S / tau: 2.5 d_a and 0.625 d_b. With
 * old_b, b is an older client: no "tau", its raw delta d_b; it counts as
 * its full work (40 steps) and the server scales it by S / 40 itself. */
static void
fednova_two_clients(bool old_b)
{
	harness h;
	uint32_t id[2];
	msg task[2];

	h_start(&h, 1000, SRV_BUDGET_FEDNOVA, 100, 400, id, task);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(task[i].budget_ms, 1000);
		assert_int_equal(task[i].ref_steps, 25);
	}
	size_t dim = h.dim;
	float *before = malloc(dim * sizeof *before), *da = malloc(dim * sizeof *da),
	      *db = malloc(dim * sizeof *db), *ua = malloc(dim * sizeof *ua),
	      *ub = malloc(dim * sizeof *ub);
	memcpy(before, srv_core_params(h.s, NULL), dim * sizeof *before);
	for (size_t j = 0; j < dim; j++) {
		da[j] = (float)((double)(j % 7) * 0.25 - 0.5);
		db[j] = (float)((double)(j % 5) * -0.125 + 0.25);
		ua[j] = da[j] * 2.5f;
		ub[j] = db[j] * 0.625f;
	}
	h_update(&h, id[0], 100, 10, ua);
	if (old_b)
		h_update(&h, id[1], 400, 0, db);
	else
		h_update(&h, id[1], 400, 40, ub);
	assert_true(round_tau_eff(&h) == 34.0);
	const float *after = srv_core_params(h.s, NULL);
	for (size_t j = 0; j < dim; j++) {
		double want = (double)before[j] + 0.68 * ((double)da[j] + (double)db[j]);
		assert_true(fabs((double)after[j] - want) <= 1e-6 * (1 + fabs(want)));
	}
	free(before);
	free(da);
	free(db);
	free(ua);
	free(ub);
	h_fini(&h);
}

static void
test_fednova_hand_computed(void **state)
{
	(void)state;
	fednova_two_clients(false);
}

static void
test_update_without_tau_is_full_work(void **state)
{
	(void)state;
	fednova_two_clients(true);
}

/* With --budget-aggregation fedavg the task carries the budget but no S,
 * and the average is FedAvg's, (100 u_a + 400 u_b) / 500, whatever tau;
 * without a budget neither key is sent and "tau" is ignored. */
static void
test_fedavg_weighting_and_no_budget(void **state)
{
	(void)state;
	for (int mode = 0; mode < 2; mode++) {
		harness h;
		uint32_t id[2];
		msg task[2];
		h_start(&h, mode == 0 ? 1000 : 0, SRV_BUDGET_FEDAVG, 100, 400, id, task);
		assert_int_equal(task[0].budget_ms, mode == 0 ? 1000 : 0);
		assert_int_equal(task[0].ref_steps, 0);
		size_t dim = h.dim;
		float *before = malloc(dim * sizeof *before), *ua = malloc(dim * sizeof *ua),
		      *ub = malloc(dim * sizeof *ub);
		memcpy(before, srv_core_params(h.s, NULL), dim * sizeof *before);
		for (size_t j = 0; j < dim; j++) {
			ua[j] = (float)(j % 3) * 0.5f;
			ub[j] = (float)(j % 4) * -0.25f;
		}
		h_update(&h, id[0], 100, 10, ua);
		h_update(&h, id[1], 400, 40, ub);
		double te = round_tau_eff(&h);
		assert_true(mode == 0 ? te == 34.0 : te == 0.0);
		const float *after = srv_core_params(h.s, NULL);
		for (size_t j = 0; j < dim; j++) {
			double want = (double)before[j] + (100.0 * ua[j] + 400.0 * ub[j]) / 500.0;
			assert_true(fabs((double)after[j] - want) <= 1e-6 * (1 + fabs(want)));
		}
		free(before);
		free(ua);
		free(ub);
		h_fini(&h);
	}
}

/* ---- the client core --------------------------------------------------------- */

#define DIM 6
static const float global[DIM] = {1, 2, 3, -1, 0.5f, 0};

static void
c_reply(cli_core *c, const msg *m)
{
	uint8_t *buf;
	size_t len;
	assert_int_equal(msg_encode(m, &buf, &len), SHOAL_OK);
	cli_core_on_reply(c, buf, len, 0);
	free(buf);
}

static void
c_expect(cli_core *c, msg_type t, msg *out, uint8_t **keep)
{
	cli_step st;
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_SEND);
	*keep = malloc(st.len);
	memcpy(*keep, st.buf, st.len);
	assert_int_equal(msg_decode(*keep, st.len, out), (long)st.len);
	assert_int_equal(out->type, t);
}

/* A registered client holding a task of E = 1, B = 10 with budget and S
 * (0: none), the update encoding up ("" dense); *st is its CLI_TRAIN. */
static cli_core *
c_task(uint32_t budget, uint32_t S, const char *up, cli_step *st)
{
	cli_config cfg = {.name = "pi-1", .model = "toy", .dim = DIM, .n_examples = 400,
	                  .seed = 3, .cx_caps = MSG_CX_ALL, .error_feedback = true};
	cli_core *c;
	msg m;
	uint8_t *k;

	assert_int_equal(cli_core_new(&cfg, &c), SHOAL_OK);
	c_expect(c, MSG_HELLO, &m, &k);
	free(k);
	msg w = {.type = MSG_WELCOME, .client_id = 9, .hold_ms = 2000};
	c_reply(c, &w);
	c_expect(c, MSG_CHECKIN, &m, &k);
	free(k);
	msg t = {.type = MSG_TASK, .round = 1, .epochs = 1, .batch = 10, .lr = 0.1f,
	         .deadline_ms = 30000, .seed = 77, .dim = DIM, .vec = (const uint8_t *)global,
	         .budget_ms = budget, .ref_steps = S};
	strcpy(t.model, "toy");
	strcpy(t.up, up);
	c_reply(c, &t);
	cli_core_step(c, 0, st);
	assert_int_equal(st->action, CLI_TRAIN);
	assert_int_equal(st->budget_ms, budget);
	assert_int_equal(st->max_steps, 0);
	return c;
}

/* Budget 500 ms, S = 25: 10 steps done of 40 -> u = d * 2.5, tau 10; the
 * full work (steps 0) -> u = d * 25 / 40, tau 40; without a budget the
 * delta and no "tau", whatever steps says. */
static void
test_client_budget_normalizes_and_reports_tau(void **state)
{
	static const float d[DIM] = {0.5f, -4.0f, 0.25f, 3.0f, -0.125f, 2.0f};
	const struct {
		uint32_t budget, S, steps, tau;
		float scale;
	} v[] = {
	    {500, 25, 10, 10, 2.5f}, {500, 25, 0, 40, 0.625f}, {500, 25, 99, 40, 0.625f},
	    {500, 0, 10, 10, 1.0f}, /* FedAvg weighting: tau only */
	    {0, 0, 10, 0, 1.0f},    /* no budget */
	};
	(void)state;
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		cli_step st;
		cli_core *c = c_task(v[i].budget, v[i].S, "", &st);
		for (int j = 0; j < DIM; j++)
			st.params[j] += d[j];
		assert_int_equal(cli_core_submit_steps(c, 400, v[i].steps, 0.5f, 0), SHOAL_OK);
		msg u;
		uint8_t *k;
		c_expect(c, MSG_UPDATE, &u, &k);
		assert_int_equal(u.tau, v[i].tau);
		float got[DIM];
		msg_vec_to_host(got, u.vec, DIM);
		for (int j = 0; j < DIM; j++)
			assert_true(got[j] == ((global[j] + d[j]) - global[j]) * v[i].scale);
		free(k);
		cli_core_free(c);
	}
}

/* Error feedback under FedNova: top-3 of 6 coordinates of u = d * S / tau
 * are sent, and the residual is u minus what was sent, in u's scale. */
static void
test_client_residual_in_normalized_scale(void **state)
{
	static const float d[DIM] = {0.5f, -4.0f, 0.25f, 3.0f, -0.125f, 2.0f};
	cli_step st;
	(void)state;
	cli_core *c = c_task(500, 25, "topk:0.5,f32", &st);
	for (int j = 0; j < DIM; j++)
		st.params[j] += d[j];
	assert_int_equal(cli_core_submit_steps(c, 400, 10, 0.5f, 0), SHOAL_OK);
	msg u;
	uint8_t *k;
	c_expect(c, MSG_UPDATE, &u, &k);
	assert_int_equal(u.tau, 10);
	float sent[DIM];
	uint32_t scratch[DIM];
	assert_int_equal(cx_decode(u.blob, u.blob_len, DIM, sent, scratch), (long)u.blob_len);
	const float *r = cli_core_residual(c);
	assert_non_null(r);
	for (int j = 0; j < DIM; j++) {
		float uj = ((global[j] + d[j]) - global[j]) * 2.5f;
		bool big = j == 1 || j == 3 || j == 5;
		assert_true(sent[j] == (big ? uj : 0.0f));
		assert_true(r[j] == (big ? 0.0f : uj));
	}
	free(k);
	cli_core_free(c);
}

/* ---- training and the simulator ----------------------------------------------- */

#define NCLIENTS 6
#define SW_CLIENTS NCLIENTS
#include "simworld.h"

typedef struct world {
	uint32_t cap[NCLIENTS]; /* max_steps of each client's last training */
	double virtual_s;
} world;

static world W;

/* max_steps = 3 over 5 epochs of 30 examples is exactly 1 epoch: the
 * same shuffle, the same three batches. */
static void
test_sgd_stops_after_max_steps(void **state)
{
	float *a = calloc(7850, sizeof *a), *b = calloc(7850, sizeof *b);
	ml_sgd_config one = {.epochs = 1, .batch = 10, .lr = 0.1f, .seed = 5};
	ml_sgd_config capped = {.epochs = 5, .batch = 10, .lr = 0.1f, .seed = 5, .max_steps = 3};
	double la, lb;
	(void)state;
	assert_int_equal(ml_train_sgd(SW.model[0], a, &SW.train, SW.part.idx, 30, &one, &la), SHOAL_OK);
	assert_int_equal(ml_train_sgd(SW.model[0], b, &SW.train, SW.part.idx, 30, &capped, &lb),
	                 SHOAL_OK);
	assert_memory_equal(a, b, 7850 * sizeof *a);
	assert_true(la == lb);
	free(a);
	free(b);
}

static int
train(void *user, uint32_t i, float *params, uint32_t dim, const cli_step *st, uint32_t *n,
      float *loss)
{
	(void)user;
	(void)dim;
	W.cap[i] = st->max_steps;
	return sw_train(&SW, i, params, st, n, loss);
}

/* 6 clients, half on a slow device (0.1 GFLOP/s: 1,000 examples x 31,360
 * FLOP = 0.31 s an epoch), half on a fast one (10 GFLOP/s), 3 rounds of 4,
 * E = 1, B = 10 (100 steps), FedNova with budget_ms. */
static shoal_err
run(uint32_t budget_ms, unsigned threads, float *out, sim_engine_stats *st)
{
	static const sim_device slow = {.name = "slow", .flops = 1e8, .up_Bps = 1e6,
	                                .down_Bps = 1e6, .rtt_s = 0.02, .mem_bytes = 1u << 30,
	                                .on_s = 1, .off_s = 0};
	static const sim_device fast = {.name = "fast", .flops = 1e10, .up_Bps = 1e6,
	                                .down_Bps = 1e6, .rtt_s = 0.02, .mem_bytes = 1u << 30,
	                                .on_s = 1, .off_s = 0};
	const sim_device *dev[NCLIENTS];
	srv_config cfg;
	srv_core *s;

	for (int i = 0; i < NCLIENTS; i++)
		dev[i] = i % 2 ? &fast : &slow;
	memset(W.cap, 0xff, sizeof W.cap);
	srv_config_defaults(&cfg);
	cfg.model = "logreg";
	cfg.rounds = 3;
	cfg.clients_per_round = 4;
	cfg.min_clients = 4;
	cfg.round_timeout_ms = 600000;
	cfg.lr = 0.1f;
	cfg.test = &SW.test;
	cfg.seed = 3;
	cfg.compress = "topk:0.1,q8";
	cfg.local_budget_ms = budget_ms;
	assert_int_equal(srv_core_new(&cfg, &s), SHOAL_OK);
	sim_engine_config ec = {
		.server = s,
		.n_clients = NCLIENTS,
		.client = {.model = "logreg", .dim = 7850, .cx_caps = MSG_CX_ALL,
		           .error_feedback = true, .seed = 77},
		.dev = dev,
		.n_examples = SW.n,
		.flops_per_example = ml_model_train_flops("logreg"),
		.train = train,
		.threads = threads,
		.seed = 9,
	};
	shoal_err err = sim_engine_run(&ec, st);
	memcpy(out, srv_core_params(s, NULL), 7850 * sizeof *out);
	srv_core_free(s);
	return err;
}

static void
test_sim_budget_deterministic_and_capped(void **state)
{
	static float a[7850], b[7850], full[7850];
	sim_engine_stats s1, s2, s0;
	(void)state;
	/* 0.1 s: the slow device fits floor(0.1 * 1e8 / 313,600) = 31 steps,
	 * the fast one all 100. */
	assert_int_equal(run(100, 1, a, &s1), SHOAL_OK);
	for (int i = 0; i < NCLIENTS; i++)
		if (W.cap[i] != UINT32_MAX)
			assert_int_equal(W.cap[i], i % 2 ? 100 : 31);
	assert_int_equal(run(100, 2, b, &s2), SHOAL_OK);
	assert_memory_equal(a, b, sizeof a);
	assert_int_equal(s1.events, s2.events);
	assert_true(s1.virtual_s == s2.virtual_s);
	/* Without a budget: no cap, and the slow clients make rounds longer. */
	assert_int_equal(run(0, 1, full, &s0), SHOAL_OK);
	for (int i = 0; i < NCLIENTS; i++)
		assert_true(W.cap[i] == 0 || W.cap[i] == UINT32_MAX);
	assert_true(s1.virtual_s < s0.virtual_s);
	assert_memory_not_equal(a, full, sizeof a);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_step_counts),
	cmocka_unit_test(test_fednova_hand_computed),
	cmocka_unit_test(test_update_without_tau_is_full_work),
	cmocka_unit_test(test_fedavg_weighting_and_no_budget),
	cmocka_unit_test(test_client_budget_normalizes_and_reports_tau),
	cmocka_unit_test(test_client_residual_in_normalized_scale),
	cmocka_unit_test(test_sgd_stops_after_max_steps),
	cmocka_unit_test(test_sim_budget_deterministic_and_capped),
};

int
main(int argc, char **argv)
{
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, sw_setup, sw_teardown);
}
