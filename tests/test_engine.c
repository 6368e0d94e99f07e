/* test_engine.c - the simulator's event loop (sim/engine.h) over the real
 * server and client cores, training logistic regression on real MNIST:
 * the virtual clock adds up message hops and training time as computed by
 * hand, training happens, failures drop clients and abandon rounds without
 * touching the model, the result does not depend on the thread count, and
 * training spread over processes (sim_spread) gives the same model. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/msg.h"
#include "ml/ml.h"
#include "server/core.h"
#include "sim/device.h"
#include "sim/engine.h"

#define NCLIENTS 8
#define SW_CLIENTS NCLIENTS
#include "simworld.h"

typedef struct world {
	double round_s[16];
	double acc[16];
	uint32_t reported[16];
	bool abandoned[16];
	uint32_t rounds_seen;
	const sim_spread *spread;  /* run() passes these to the engine */
	volatile int *stop;
} world;

static world W;
static bool G_keep_idle;        /* sim_engine_config.keep_idle of run() */
static uint64_t G_residual_mem; /* and residual_mem */

static void
on_round(void *user, const srv_round_stats *st, double virtual_s)
{
	(void)user;
	if (st->round < 16) {
		W.round_s[st->round] = virtual_s;
		W.acc[st->round] = st->accuracy;
		W.reported[st->round] = st->reported;
		W.abandoned[st->round] = st->abandoned;
	}
	W.rounds_seen++;
}

/* Runs `rounds` rounds of K of n clients on devices dev (NULL: ideal) and
 * copies the final model into out. */
static shoal_err
run(uint32_t n, uint32_t k, uint32_t rounds, const sim_device *const *dev, bool failures,
    bool availability, unsigned threads, float *out, sim_engine_stats *st)
{
	srv_config cfg;
	srv_core *s;
	shoal_err err;

	memset(W.round_s, 0, sizeof W.round_s);
	memset(W.reported, 0, sizeof W.reported);
	memset(W.abandoned, 0, sizeof W.abandoned);
	W.rounds_seen = 0;
	srv_config_defaults(&cfg);
	cfg.model = "logreg";
	cfg.rounds = rounds;
	cfg.clients_per_round = k;
	cfg.min_clients = k;
	cfg.min_reports = 1;
	cfg.round_timeout_ms = 600000;
	cfg.lr = 0.1f;
	cfg.test = &SW.test;
	cfg.seed = 3;
	cfg.compress = "topk:0.1,q8";
	assert_int_equal(srv_core_new(&cfg, &s), SHOAL_OK);

	sim_engine_config ec = {
		.server = s,
		.n_clients = n,
		.client = {.model = "logreg", .dim = 7850, .cx_caps = MSG_CX_ALL,
		           .error_feedback = true, .seed = 77, .dp_noise_from_seed = true},
		.dev = dev,
		.n_examples = SW.n,
		.flops_per_example = ml_model_train_flops("logreg"),
		.train = sw_train_fn,
		.on_round = on_round,
		.threads = threads,
		.seed = 9,
		.failures = failures,
		.availability = availability,
		.keep_idle = G_keep_idle,
		.residual_mem = G_residual_mem,
		.spread = W.spread,
		.stop = W.stop,
	};
	err = sim_engine_run(&ec, st);
	if (out != NULL)
		memcpy(out, srv_core_params(s, NULL), 7850 * sizeof *out);
	srv_core_free(s);
	return err;
}

/* One client, one round, on a device whose links only add latency: six
 * hops of RTT/2 (HELLO, WELCOME, CHECKIN, TASK, UPDATE... ) plus the
 * training time, counted by hand. */
static void
test_virtual_time_by_hand(void **state)
{
	sim_device d = {.name = "hand", .flops = 1e9, .up_Bps = INFINITY, .down_Bps = INFINITY,
	                .rtt_s = 0.1, .mem_bytes = 1u << 30, .on_s = 1, .off_s = 0};
	const sim_device *dev[1] = {&d};
	sim_engine_stats st;

	(void)state;
	assert_int_equal(run(1, 1, 1, dev, false, false, 1, NULL, &st), SHOAL_OK);
	assert_int_equal(W.rounds_seen, 1);
	assert_int_equal(W.reported[1], 1);
	/* HELLO up 50 ms, WELCOME down 50, CHECKIN up 50, TASK down 50,
	 * training 1,000 examples x 31,360 FLOP at 1 GFLOP/s = 31.36 ms ->
	 * 32 ms (whole ms, rounded up), UPDATE up 50: the round ends when the
	 * server has the update, at 282 ms. */
	assert_true(W.round_s[1] == 0.282);
	assert_true(st.virtual_s == 0.282);
	assert_int_equal(st.trained, 1);
	assert_true(st.bytes_up > 0 && st.bytes_down > 7850 * 4);
	/* Ten times slower compute: 314 ms of training instead of 32. */
	d.flops = 1e8;
	assert_int_equal(run(1, 1, 1, dev, false, false, 1, NULL, &st), SHOAL_OK);
	assert_true(fabs(W.round_s[1] - (0.250 + 0.314)) < 1e-12);
}

/* Real training through the engine: accuracy rises; the same run with 1
 * and 2 threads gives the same model bit for bit. */
static void
test_trains_and_thread_count_independent(void **state)
{
	float a[7850], b[7850];
	sim_engine_stats s1, s2;

	(void)state;
	assert_int_equal(run(NCLIENTS, 4, 3, NULL, false, false, 1, a, &s1), SHOAL_OK);
	assert_int_equal(W.rounds_seen, 3);
	assert_true(W.acc[3] > 0.80);
	assert_int_equal(s1.trained, 12);
	assert_int_equal(run(NCLIENTS, 4, 3, NULL, false, false, 2, b, &s2), SHOAL_OK);
	assert_memory_equal(a, b, sizeof a);
	assert_int_equal(s1.events, s2.events);
	assert_true(s1.bytes_up == s2.bytes_up && s1.bytes_down == s2.bytes_down);
}

/* A stand-in for other processes (sim/mpi.c does it with MPI). Recording,
 * it owns every client and keeps each training's result in batch order;
 * replaying, it owns the even clients only, checks that those came
 * trained exactly as recorded, and fills in the odd ones from the record,
 * as their owner would send them. */
#define FAKE_MAX 64

typedef struct fake_peer {
	bool replay;
	size_t n, at;         /* trainings recorded, replayed */
	uint32_t client[FAKE_MAX], n_ex[FAKE_MAX];
	float loss[FAKE_MAX], params[FAKE_MAX][7850];
	uint32_t batches, here, there;
	bool bad;             /* replay differs from the record */
	uint32_t stop_after;  /* replaying: set stop after this many batches */
	volatile int stop;
} fake_peer;

static fake_peer P;

static bool
fake_owns(void *user, uint32_t i)
{
	return !((fake_peer *)user)->replay || i % 2 == 0;
}

static shoal_err
fake_exchange(void *user, sim_trained *b, size_t n)
{
	fake_peer *p = user;

	p->batches++;
	for (size_t k = 0; k < n; k++) {
		if (b[k].dim != 7850 || b[k].rc != 0)
			p->bad = true;
		if (!p->replay) {
			if (p->n == FAKE_MAX)
				return SHOAL_ENOMEM;
			p->client[p->n] = b[k].client;
			p->n_ex[p->n] = b[k].n_examples;
			p->loss[p->n] = b[k].loss;
			memcpy(p->params[p->n++], b[k].params, sizeof p->params[0]);
			continue;
		}
		if (p->at == p->n || p->client[p->at] != b[k].client) {
			p->bad = true;
			return SHOAL_EINVAL;
		}
		if (fake_owns(p, b[k].client)) {
			p->here++;
			p->bad |= b[k].n_examples != p->n_ex[p->at] || b[k].loss != p->loss[p->at] ||
			          memcmp(b[k].params, p->params[p->at], sizeof p->params[0]) != 0;
		} else {
			p->there++;
			b[k].n_examples = p->n_ex[p->at];
			b[k].loss = p->loss[p->at];
			memcpy(b[k].params, p->params[p->at], sizeof p->params[0]);
		}
		p->at++;
	}
	if (p->replay && p->stop_after > 0 && p->batches >= p->stop_after)
		p->stop = 1;
	return SHOAL_OK;
}

/* Training spread over processes: a run that trains only the even clients
 * and takes the odd ones' results from the exchange ends with the model
 * of a run that trains them all, bit for bit; a stop the exchange sets
 * ends the run at once. */
static void
test_spread_matches_one_process(void **state)
{
	static float a[7850], b[7850];
	sim_spread sp = {.owns = fake_owns, .exchange = fake_exchange, .user = &P};
	sim_engine_stats s1, s2;

	(void)state;
	memset(&P, 0, sizeof P);
	W.spread = &sp;
	W.stop = &P.stop;
	assert_int_equal(run(NCLIENTS, 4, 3, NULL, false, false, 2, a, &s1), SHOAL_OK);
	assert_int_equal(P.n, 12);
	P.replay = true;
	P.batches = 0;
	assert_int_equal(run(NCLIENTS, 4, 3, NULL, false, false, 2, b, &s2), SHOAL_OK);
	assert_false(P.bad);
	assert_int_equal(P.at, 12);
	assert_true(P.here > 0 && P.there > 0);
	assert_memory_equal(a, b, sizeof a);
	assert_int_equal(s1.events, s2.events);
	assert_int_equal(s2.trained, 12);
	/* A stop agreed in the exchange ends the run before round 3. */
	P.at = 0;
	P.batches = 0;
	P.stop_after = 1;
	assert_int_equal(run(NCLIENTS, 4, 3, NULL, false, false, 2, b, &s2), SHOAL_ECLOSED);
	assert_true(W.rounds_seen < 3);
	W.spread = NULL;
	W.stop = NULL;
}

/* Every selected client fails mid-training: every round is abandoned, the
 * model stays the initial one, the drops are counted; with devices that
 * fail at random and come and go, the result is still the same for 1 and 2
 * threads. */
static void
test_failures_and_availability(void **state)
{
	sim_device always = {.name = "bad", .flops = 1e9, .up_Bps = 1e6, .down_Bps = 1e6,
	                     .rtt_s = 0.05, .mem_bytes = 1u << 30, .on_s = 1, .off_s = 0,
	                     .fail_p = 1.0};
	sim_device flaky = {.name = "flaky", .flops = 1e9, .up_Bps = 1e6, .down_Bps = 1e6,
	                    .rtt_s = 0.05, .mem_bytes = 1u << 30, .on_s = 30, .off_s = 10,
	                    .fail_p = 0.3};
	const sim_device *dev[NCLIENTS];
	float init[7850], out[7850], again[7850];
	sim_engine_stats st, st2;
	srv_config cfg;
	srv_core *s;

	(void)state;
	srv_config_defaults(&cfg);
	cfg.model = "logreg";
	cfg.test = &SW.test;
	cfg.seed = 3;
	assert_int_equal(srv_core_new(&cfg, &s), SHOAL_OK);
	memcpy(init, srv_core_params(s, NULL), sizeof init);
	srv_core_free(s);

	for (int i = 0; i < NCLIENTS; i++)
		dev[i] = &always;
	assert_int_equal(run(NCLIENTS, 4, 2, dev, true, false, 1, out, &st), SHOAL_OK);
	assert_int_equal(W.rounds_seen, 2);
	assert_true(W.abandoned[1] && W.abandoned[2]);
	assert_int_equal(st.dropped[SIM_DROP_FAILED], 8);
	assert_memory_equal(out, init, sizeof out);

	for (int i = 0; i < NCLIENTS; i++)
		dev[i] = &flaky;
	assert_int_equal(run(NCLIENTS, 4, 4, dev, true, true, 1, out, &st), SHOAL_OK);
	assert_int_equal(run(NCLIENTS, 4, 4, dev, true, true, 2, again, &st2), SHOAL_OK);
	assert_memory_equal(out, again, sizeof out);
	assert_true(st.dropped[SIM_DROP_FAILED] + st.dropped[SIM_DROP_OFFLINE] > 0);
	assert_int_equal(st.dropped[SIM_DROP_FAILED], st2.dropped[SIM_DROP_FAILED]);
	assert_int_equal(st.dropped[SIM_DROP_OFFLINE], st2.dropped[SIM_DROP_OFFLINE]);
	assert_true(st.virtual_s == st2.virtual_s);
}

/* Devices whose available periods (mean 36 s) are about as long as a
 * round (31 s of training): many clients go offline mid-round. Checking
 * in only with enough time left (avail_aware) loses fewer. */
static void
test_availability_aware_checkin(void **state)
{
	sim_device flicker = {.name = "flicker", .flops = 1e6, .up_Bps = 1e6, .down_Bps = 1e6,
	                      .rtt_s = 0.05, .mem_bytes = 1u << 30, .on_s = 36, .off_s = 36};
	const sim_device *dev[NCLIENTS];
	sim_engine_stats plain, aware;
	srv_config cfg;
	srv_core *s;

	(void)state;
	for (int i = 0; i < NCLIENTS; i++)
		dev[i] = &flicker;
	for (int pass = 0; pass < 2; pass++) {
		srv_config_defaults(&cfg);
		cfg.model = "logreg";
		cfg.rounds = 6;
		cfg.clients_per_round = 2;
		cfg.min_clients = 2;
		cfg.min_reports = 1;
		cfg.round_timeout_ms = 120000;
		cfg.test = &SW.test;
		cfg.seed = 3;
		cfg.compress = "none";
		assert_int_equal(srv_core_new(&cfg, &s), SHOAL_OK);
		sim_engine_config ec = {
			.server = s, .n_clients = NCLIENTS,
			.client = {.model = "logreg", .dim = 7850, .cx_caps = MSG_CX_ALL, .seed = 77},
			.dev = dev, .n_examples = SW.n,
			.flops_per_example = ml_model_train_flops("logreg"),
			.train = sw_train_fn, .on_round = on_round, .threads = 2, .seed = 4,
			.availability = true, .avail_aware = pass == 1,
			.est_down_bytes = 7850 * 4, .est_up_bytes = 7850 * 4, .est_epochs = 1,
			.max_virtual_s = 30 * 86400.0,
		};
		assert_int_equal(sim_engine_run(&ec, pass ? &aware : &plain), SHOAL_OK);
		srv_core_free(s);
	}
	assert_true(plain.dropped[SIM_DROP_OFFLINE] > 0);
	assert_true(aware.dropped[SIM_DROP_OFFLINE] < plain.dropped[SIM_DROP_OFFLINE]);
}

/* Idle clients give back their buffers: residuals go to the store (here
 * straight to its file), the model versions they hold to the engine's
 * cache, and their cores are folded into records until they act. Over rounds with failures, restarts and downlink deltas the run is
 * bit for bit the one that keeps every client's buffers: same model, same
 * bytes (a client that lost the model a delta applies to would ask for the
 * full one), same events. */
static void
test_idle_clients_released_same_run(void **state)
{
	sim_device flaky = {.name = "flaky", .flops = 1e9, .up_Bps = 1e6, .down_Bps = 1e6,
	                    .rtt_s = 0.05, .mem_bytes = 1u << 30, .on_s = 30, .off_s = 10,
	                    .fail_p = 0.3};
	const sim_device *dev[NCLIENTS];
	float kept[7850], released[7850];
	sim_engine_stats a, b;

	(void)state;
	for (int i = 0; i < NCLIENTS; i++)
		dev[i] = &flaky;
	G_keep_idle = true;
	assert_int_equal(run(NCLIENTS, 4, 6, dev, true, true, 2, kept, &a), SHOAL_OK);
	G_keep_idle = false;
	G_residual_mem = 1; /* below one residual: the store is a file at once */
	assert_int_equal(run(NCLIENTS, 4, 6, dev, true, true, 2, released, &b), SHOAL_OK);
	G_residual_mem = 0;
	assert_memory_equal(kept, released, sizeof kept);
	assert_true(a.bytes_up == b.bytes_up && a.bytes_down == b.bytes_down);
	assert_true(a.events == b.events && a.trained == b.trained);
	assert_true(a.dropped[SIM_DROP_FAILED] + a.dropped[SIM_DROP_OFFLINE] > 0);
	assert_int_equal(a.residuals, 0);
	assert_true(b.residuals > 0 && b.residuals <= NCLIENTS && b.residuals_on_disk);
	assert_int_equal(a.suspends, 0);
	assert_true(b.suspends > 0);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_virtual_time_by_hand),
	cmocka_unit_test(test_trains_and_thread_count_independent),
	cmocka_unit_test(test_spread_matches_one_process),
	cmocka_unit_test(test_failures_and_availability),
	cmocka_unit_test(test_availability_aware_checkin),
	cmocka_unit_test(test_idle_clients_released_same_run),
};

int
main(int argc, char **argv)
{
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, sw_setup, sw_teardown);
}
