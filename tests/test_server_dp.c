/* test_server_dp.c - Poisson sampling and central DP in the server core
 * (server/dp.h), driven in memory with a cooperative population of
 * clients, plus unit tests of server/dp.c and of the client's clipping:
 * selection frequency and determinism, refused configurations, clipping,
 * the noise's standard deviation, budget enforcement checked against the
 * accountant and the shoal-dp binary, and epsilon in the metrics. */
#include "testutil.h"
#include "dptool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "client/core.h"
#include "common/codec.h"
#include "common/msg.h"
#include "privacy/noise.h"
#include "privacy/rdp.h"
#include "server/core.h"
#include "server/dp.h"

#define MAXC 64
#define MAXROUNDS 512

/* ---- a cooperative population ------------------------------------------ */

typedef struct client {
	uint32_t id;
	uint64_t req; /* outstanding request, 0: none */
	bool done;
} client;

typedef struct world world;
/* What client i sends in round r (dim floats); NULL: zeros. */
typedef void (*update_fn)(world *w, uint32_t i, uint32_t round, float *out);

struct world {
	srv_core *s;
	size_t dim;
	uint32_t n;
	client c[MAXC];
	uint64_t next_req;
	update_fn make_update;
	float *upd;
	float *prev;       /* params after the previous round */
	/* per round, indexed by round id */
	srv_round_stats end[MAXROUNDS + 1];
	bool sel[MAXROUNDS + 1][MAXC];
	double change_std[MAXROUNDS + 1]; /* stddev of the model's change */
	double change_mean[MAXROUNDS + 1];
	uint32_t n_ends;
	float task_clip;   /* "clip" of the last TASK */
	bool draining;     /* send_to_server's loop is running */
};

static void
base_config(srv_config *c, uint32_t n)
{
	srv_config_defaults(c);
	c->model = "logreg";
	c->rounds = 5;
	c->clients_per_round = 1;
	c->min_clients = n; /* the whole population is parked: q is honest */
	c->min_reports = 1;
	c->hold_ms = 4000000000u; /* never expires: time stands still here */
	c->round_timeout_ms = 1000;
	c->seed = 11;
	c->downlink_q8 = false; /* the released model is exactly params */
	c->sampling = SRV_SAMPLING_POISSON;
	c->sample_rate = 0.5;
}

static void
dp_config(srv_config *c, uint32_t n, double q, double z, double clip)
{
	base_config(c, n);
	c->sample_rate = q;
	c->dp = SRV_DP_CENTRAL;
	c->noise_multiplier = z;
	c->clip = clip;
}

static uint64_t send_to_server(world *w, uint32_t i, const msg *m);

static void
checkin(world *w, uint32_t i)
{
	msg m = {.type = MSG_CHECKIN, .client_id = w->c[i].id};
	w->c[i].req = send_to_server(w, i, &m);
}

static void
on_reply(world *w, uint32_t i, const srv_reply *r)
{
	msg m;

	assert_int_equal(msg_decode(r->buf, r->len, &m), (long)r->len);
	w->c[i].req = 0;
	switch (m.type) {
	case MSG_TASK: {
		assert_true(m.round <= MAXROUNDS);
		w->sel[m.round][i] = true;
		w->task_clip = m.clip;
		memset(w->upd, 0, w->dim * sizeof *w->upd);
		if (w->make_update != NULL)
			w->make_update(w, i, m.round, w->upd);
		msg u = {.type = MSG_UPDATE, .client_id = w->c[i].id, .round = m.round,
		         .n_examples = 1 + i, .loss = 1.0f, .dim = (uint32_t)w->dim,
		         .vec = (const uint8_t *)w->upd};
		w->c[i].req = send_to_server(w, i, &u);
		break;
	}
	case MSG_ACK:
	case MSG_WAIT:
		checkin(w, i);
		break;
	case MSG_DONE:
		w->c[i].done = true;
		break;
	default:
		fprintf(stderr, "client %u: unexpected %s (%s)\n", i, msg_type_name(m.type), m.text);
		fail();
	}
}

static void
on_event(world *w, const srv_event *ev)
{
	if (ev->kind != SRV_EV_ROUND_END)
		return;
	uint32_t r = ev->stats.round;
	assert_true(r >= 1 && r <= MAXROUNDS);
	w->end[r] = ev->stats;
	w->n_ends++;
	const float *p = srv_core_params(w->s, NULL);
	double s1 = 0, s2 = 0;
	for (size_t j = 0; j < w->dim; j++) {
		double d = (double)p[j] - w->prev[j];
		s1 += d;
		s2 += d * d;
	}
	double mean = s1 / w->dim;
	w->change_mean[r] = mean;
	w->change_std[r] = sqrt((s2 - s1 * mean) / (w->dim - 1));
	memcpy(w->prev, p, w->dim * sizeof *p);
}

/* Sends m from client i and handles every reply and event that follows; a
 * reply may trigger the next request, which the same loop then handles
 * (a loop, not recursion: 150 rounds of 40 clients would nest thousands
 * of frames deep). */
static uint64_t
send_to_server(world *w, uint32_t i, const msg *m)
{
	uint8_t *buf;
	size_t len;
	uint64_t req = w->next_req++;
	srv_reply r;
	srv_event ev;

	assert_int_equal(msg_encode(m, &buf, &len), SHOAL_OK);
	w->c[i].req = req;
	srv_core_on_request(w->s, req, buf, len, 0);
	free(buf);
	if (w->draining)
		return req; /* the loop below, further up the stack, answers it */
	w->draining = true;
	while (srv_core_pop_event(w->s, &ev))
		on_event(w, &ev);
	while (srv_core_pop_reply(w->s, &r)) {
		uint32_t k = 0;
		while (k < w->n && w->c[k].req != r.req)
			k++;
		assert_true(k < w->n);
		on_reply(w, k, &r);
		free(r.buf);
		while (srv_core_pop_event(w->s, &ev))
			on_event(w, &ev);
	}
	w->draining = false;
	return w->c[i].req; /* 0 if answered with DONE, else what is outstanding */
}

/* Registers n clients ("c000".. in this order, or reversed) and lets them
 * check in; then runs the server's timers until nothing moves. */
static shoal_err
world_run(world *w, const srv_config *cfg, uint32_t n, bool reverse, update_fn f)
{
	shoal_err e;

	memset(w, 0, sizeof *w);
	assert_true(n <= MAXC);
	if ((e = srv_core_new(cfg, &w->s)) != SHOAL_OK)
		return e;
	w->n = n;
	w->next_req = 1;
	w->make_update = f;
	srv_core_params(w->s, &w->dim);
	w->upd = calloc(w->dim, sizeof *w->upd);
	w->prev = malloc(w->dim * sizeof *w->prev);
	assert_non_null(w->upd);
	assert_non_null(w->prev);
	memcpy(w->prev, srv_core_params(w->s, NULL), w->dim * sizeof *w->prev);
	for (uint32_t k = 0; k < n; k++) {
		uint32_t i = reverse ? n - 1 - k : k;
		msg h = {.type = MSG_HELLO, .dim = (uint32_t)w->dim, .n_examples = 1 + i};
		snprintf(h.name, sizeof h.name, "c%03u", i);
		strcpy(h.model, "logreg");
		uint8_t *buf;
		size_t len;
		srv_reply r;
		assert_int_equal(msg_encode(&h, &buf, &len), SHOAL_OK);
		srv_core_on_request(w->s, 1000000 + i, buf, len, 0);
		free(buf);
		assert_true(srv_core_pop_reply(w->s, &r));
		msg wm;
		assert_int_equal(msg_decode(r.buf, r.len, &wm), (long)r.len);
		assert_int_equal(wm.type, MSG_WELCOME);
		w->c[i].id = wm.client_id;
		free(r.buf);
	}
	for (uint32_t k = 0; k < n; k++)
		checkin(w, reverse ? n - 1 - k : k);
	/* Rounds nobody was sampled into close on the timer (deadline = now). */
	for (int guard = 0; !srv_core_finished(w->s) && guard < 100000; guard++) {
		if (srv_core_next_deadline(w->s) > 0)
			break;
		srv_core_on_timer(w->s, 0);
		srv_reply r;
		srv_event ev;
		while (srv_core_pop_event(w->s, &ev))
			on_event(w, &ev);
		while (srv_core_pop_reply(w->s, &r)) {
			uint32_t k = 0;
			while (k < w->n && w->c[k].req != r.req)
				k++;
			assert_true(k < w->n);
			on_reply(w, k, &r);
			free(r.buf);
			while (srv_core_pop_event(w->s, &ev))
				on_event(w, &ev);
		}
	}
	return SHOAL_OK;
}

static void
world_fini(world *w)
{
	srv_core_free(w->s);
	free(w->upd);
	free(w->prev);
}

/* ---- Poisson sampling ------------------------------------------------------ */

static void
test_poisson_select_unit(void **state)
{
	enum { N = 1000, T = 200 };
	uint32_t v[N], total = 0;
	rng r;

	/* Keeps order, compacts in place, one draw per candidate. */
	rng_init(&r, 5, 1);
	for (int t = 0; t < T; t++) {
		for (uint32_t i = 0; i < N; i++)
			v[i] = i;
		uint32_t k = srv_poisson_select(&r, 0.3, v, N);
		for (uint32_t i = 1; i < k; i++)
			assert_true(v[i - 1] < v[i]);
		total += k;
	}
	rng_fini(&r);
	double f = (double)total / (N * T), sd = sqrt(0.3 * 0.7 / (N * T));
	assert_true(fabs(f - 0.3) < 5 * sd);
	/* q = 1 keeps everyone. */
	rng_init(&r, 5, 2);
	for (uint32_t i = 0; i < N; i++)
		v[i] = i;
	assert_int_equal(srv_poisson_select(&r, 1.0, v, N), N);
	rng_fini(&r);
}

static void
test_poisson_rounds_frequency_and_determinism(void **state)
{
	enum { N = 40, R = 150 };
	const double q = 0.25;
	srv_config c;
	world a, b, d;

	base_config(&c, N);
	c.rounds = R;
	c.sample_rate = q;
	assert_int_equal(world_run(&a, &c, N, false, NULL), SHOAL_OK);
	assert_true(srv_core_finished(a.s));
	assert_int_equal(a.n_ends, R);
	uint32_t total = 0, per[N] = {0};
	for (uint32_t r = 1; r <= R; r++) {
		/* Round r selects exactly what stream r of the seed says, over the
		 * candidates sorted by name. */
		uint32_t v[N], k;
		rng g;
		for (uint32_t i = 0; i < N; i++)
			v[i] = i;
		rng_init(&g, c.seed, r);
		k = srv_poisson_select(&g, q, v, N);
		rng_fini(&g);
		uint32_t got = 0;
		for (uint32_t i = 0; i < N; i++) {
			got += a.sel[r][i];
			per[i] += a.sel[r][i];
		}
		assert_int_equal(got, k);
		assert_int_equal(a.end[r].selected, k);
		for (uint32_t j = 0; j < k; j++)
			assert_true(a.sel[r][v[j]]);
		total += k;
	}
	double f = (double)total / (N * R), sd = sqrt(q * (1 - q) / (N * R));
	assert_true(fabs(f - q) < 5 * sd);
	for (uint32_t i = 0; i < N; i++) /* each client: 150 trials, sd 0.035 */
		assert_true(fabs((double)per[i] / R - q) < 0.18);

	/* The same seed selects the same clients whatever the arrival order. */
	assert_int_equal(world_run(&b, &c, N, true, NULL), SHOAL_OK);
	assert_memory_equal(a.sel, b.sel, sizeof a.sel);
	/* Another seed, other clients. */
	c.seed = 12;
	assert_int_equal(world_run(&d, &c, N, false, NULL), SHOAL_OK);
	assert_true(memcmp(a.sel, d.sel, sizeof a.sel) != 0);
	world_fini(&a);
	world_fini(&b);
	world_fini(&d);
}

/* ---- configuration --------------------------------------------------------- */

static void
test_dp_config_refused(void **state)
{
	srv_config c;
	srv_core *s;

	/* DP with fixed (K-of-n) sampling: the accountant would not match. */
	dp_config(&c, 4, 0.5, 1.0, 1.0);
	c.sampling = SRV_SAMPLING_FIXED;
	c.sample_rate = 0;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	assert_null(s);

	dp_config(&c, 4, 0.5, 1.0, 1.0);
	c.clip = 0; /* no clipping bound */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	dp_config(&c, 4, 0.5, 1.0, 1.0);
	c.target_epsilon = 8; /* both z and a target */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	dp_config(&c, 4, 0.5, 0, 1.0); /* neither */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	dp_config(&c, 4, 0.5, 0, 1.0);
	c.target_epsilon = 8;
	c.epsilon_budget = 4; /* the target is the budget */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	dp_config(&c, 4, 0.5, 1.0, 1.0);
	c.delta = 0;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	dp_config(&c, 4, 0.5, 1.0, 1.0);
	c.secagg = SRV_SECAGG_FULL; /* the server cannot clip what it cannot see */
	c.clients_per_round = 4;
	c.compress = "none";
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	dp_config(&c, 4, 0.5, 1.0, 1.0);
	c.epsilon_budget = 0.01; /* not even one round fits */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	dp_config(&c, 4, 0.5, 0, 1.0);
	c.target_epsilon = 1e-4; /* out of reach */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	/* Poisson needs a rate; a rate needs Poisson; DP knobs need DP. */
	base_config(&c, 4);
	c.sample_rate = 0;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	base_config(&c, 4);
	c.sampling = SRV_SAMPLING_FIXED;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	base_config(&c, 4);
	c.clip = 1;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);

	/* The valid ones. */
	dp_config(&c, 4, 0.5, 1.0, 1.0);
	assert_int_equal(srv_core_new(&c, &s), SHOAL_OK);
	assert_true(srv_core_epsilon(s) == 0); /* nothing spent yet */
	srv_core_free(s);
	base_config(&c, 4);
	assert_int_equal(srv_core_new(&c, &s), SHOAL_OK);
	assert_true(isnan(srv_core_epsilon(s)));
	srv_core_free(s);
}

/* ---- clipping ---------------------------------------------------------------- */

static void
test_server_clips_updates(void **state)
{
	srv_config c;
	srv_dp *dp;
	const size_t dim = 7850;
	double *acc = calloc(dim, sizeof *acc);
	float *u = calloc(dim, sizeof *u);
	uint32_t *scratch = malloc(dim * sizeof *scratch);

	assert_non_null(acc);
	assert_non_null(u);
	assert_non_null(scratch);
	dp_config(&c, 4, 0.5, 1.0, 2.0);
	assert_int_equal(srv_dp_new(&c, dim, &dp), SHOAL_OK);

	/* Dense: norm 10 becomes 2, the direction kept. */
	u[0] = 6;
	u[5] = -8;
	assert_true(fabs(srv_dp_add_update(dp, acc, (const uint8_t *)u, 4 * dim, false, scratch) -
	                 10) < 1e-9);
	double n2 = 0;
	for (size_t j = 0; j < dim; j++)
		n2 += acc[j] * acc[j];
	assert_true(sqrt(n2) <= 2.0 && sqrt(n2) > 2.0 - 1e-6);
	assert_true(fabs(acc[0] / acc[5] + 0.75) < 1e-6);

	/* Within the bound: added unchanged. */
	memset(acc, 0, dim * sizeof *acc);
	memset(u, 0, dim * sizeof *u);
	u[3] = 1.5f;
	assert_true(srv_dp_add_update(dp, acc, (const uint8_t *)u, 4 * dim, false, scratch) == 1.5);
	assert_true(acc[3] == 1.5);

	/* Compressed (top-k, f32 values): decoded, then clipped. */
	memset(acc, 0, dim * sizeof *acc);
	uint32_t idx[2] = {7, 700};
	float val[2] = {30, 40};
	cx_config cc = cx_config_default(0.01);
	cc.values = CX_VALUES_F32;
	cc.index = CX_INDEX_BITMAP;
	size_t cap = cx_encoded_size_max((uint32_t)dim, 2, &cc);
	uint8_t *enc = malloc(cap);
	long len = cx_encode((uint32_t)dim, 2, idx, val, &cc, NULL, NULL, enc, cap, NULL);
	assert_true(len > 0);
	assert_true(fabs(srv_dp_add_update(dp, acc, enc, (size_t)len, true, scratch) - 50) < 1e-9);
	assert_true(fabs(acc[7] - 1.2) < 1e-6 && fabs(acc[700] - 1.6) < 1e-6);
	free(enc);
	srv_dp_free(dp);
	free(acc);
	free(u);
	free(scratch);
}

/* Adaptive clipping: 100 updates of norms 1..100 each round; the bound
 * starts at 10 and settles near the median, and the accountant charges
 * the configured z exactly as without adaptation (the count's noise is
 * inside z, privacy/adaclip.h). */
static void
test_adaptive_clip_tracks_median(void **state)
{
	srv_config c;
	srv_dp *dp;
	const size_t dim = 7850;
	double *acc = calloc(dim, sizeof *acc);
	float *u = calloc(dim, sizeof *u);
	uint32_t *scratch = malloc(dim * sizeof *scratch);

	assert_non_null(acc);
	assert_non_null(u);
	assert_non_null(scratch);
	dp_config(&c, 100, 0.5, 1.0, 10.0);
	c.clip_quantile = 0.5;
	c.clip_count_std = 1.0;
	assert_int_equal(srv_dp_new(&c, dim, &dp), SHOAL_OK);
	assert_true(srv_dp_clip(dp) == 10.0);
	const uint32_t rounds = 80;
	for (uint32_t r = 1; r <= rounds; r++) {
		srv_dp_round_open(dp, r, 200, 200); /* q n = 100 expected */
		memset(acc, 0, dim * sizeof *acc);
		for (int i = 1; i <= 100; i++) {
			memset(u, 0, dim * sizeof *u);
			u[0] = (float)i;
			assert_false(isnan(srv_dp_add_update(dp, acc, (const uint8_t *)u, 4 * dim, false,
			                                     scratch)));
		}
		assert_int_equal(srv_dp_release(dp, acc, r), SHOAL_OK);
	}
	assert_true(srv_dp_clip(dp) > 40 && srv_dp_clip(dp) < 60);
	dp_accountant a;
	double eps;
	assert_int_equal(dp_accountant_init(&a, NULL, 0, c.delta), SHOAL_OK);
	assert_int_equal(dp_accountant_add(&a, 0.5, 1.0, rounds), SHOAL_OK);
	assert_int_equal(dp_accountant_epsilon(&a, &eps, NULL), SHOAL_OK);
	assert_true(fabs(srv_dp_epsilon(dp) - eps) < 1e-12);
	dp_accountant_fini(&a);
	srv_dp_free(dp);

	/* the count's noise must leave room for the update's: 2 sigma_b > z */
	dp_config(&c, 100, 0.5, 1.0, 10.0);
	c.clip_quantile = 0.5;
	c.clip_count_std = 0.4;
	assert_int_equal(srv_dp_new(&c, dim, &dp), SHOAL_EINVAL);
	free(acc);
	free(u);
	free(scratch);
}

/* Client 0 sends 10 e_0 + 10 e_1 (norm 14.1); others nothing. */
static void
big_update(world *w, uint32_t i, uint32_t round, float *out)
{
	if (i == 0)
		out[0] = out[1] = 10;
}

static void
test_oversized_update_capped_in_core(void **state)
{
	srv_config c;
	world w;

	/* q = 1: both clients every round; tiny noise so the clip shows. */
	dp_config(&c, 2, 1.0, 1e-3, 1.0);
	c.rounds = 1;
	assert_int_equal(world_run(&w, &c, 2, false, big_update), SHOAL_OK);
	assert_int_equal(w.n_ends, 1);
	assert_true(w.task_clip == 1.0f); /* the TASK carried the bound */
	/* model += (clip(u) + noise) / (q N): clip(u) = (0.707, 0.707). */
	const float *p = srv_core_params(w.s, NULL);
	srv_core *s0;
	assert_int_equal(srv_core_new(&c, &s0), SHOAL_OK);
	const float *p0 = srv_core_params(s0, NULL);
	double sd = srv_dp_noise_stddev(srv_core_dp(w.s)) / 2;
	assert_true(fabs((p[0] - p0[0]) - M_SQRT1_2 / 2) < 6 * sd + 1e-6);
	assert_true(fabs((p[1] - p0[1]) - M_SQRT1_2 / 2) < 6 * sd + 1e-6);
	assert_true(fabs(p[2] - p0[2]) < 6 * sd + 1e-6);
	srv_core_free(s0);
	world_fini(&w);

	/* Without DP the TASK has no clip and the update goes in as is. */
	base_config(&c, 2);
	c.sample_rate = 1;
	c.rounds = 1;
	assert_int_equal(world_run(&w, &c, 2, false, big_update), SHOAL_OK);
	assert_true(w.task_clip == 0.0f);
	world_fini(&w);
}

/* The client clips what it sends: the delta, and with top-k error feedback
 * the delta plus the residual. */
static void
test_client_clips_to_task_bound(void **state)
{
	enum { D = 8 };
	static const float zero[D];
	cli_config cfg = {.name = "pi", .model = "toy", .dim = D, .n_examples = 3, .seed = 1,
	                  .cx_caps = MSG_CX_ALL, .error_feedback = true};
	for (int compressed = 0; compressed < 2; compressed++) {
		cli_core *c;
		cli_step st;
		msg m;
		uint8_t *buf;
		size_t len;
		assert_int_equal(cli_core_new(&cfg, &c), SHOAL_OK);
		cli_core_step(c, 0, &st); /* HELLO */
		msg wl = {.type = MSG_WELCOME, .client_id = 3, .hold_ms = 100};
		assert_int_equal(msg_encode(&wl, &buf, &len), SHOAL_OK);
		cli_core_on_reply(c, buf, len, 0);
		free(buf);
		cli_core_step(c, 0, &st); /* CHECKIN */
		if (compressed) {
			float res[D] = {0, 0, 0, 0, 0, 0, 0, 20};
			assert_int_equal(cli_core_set_residual(c, res), SHOAL_OK);
		}
		msg t = {.type = MSG_TASK, .round = 1, .epochs = 1, .batch = 1, .lr = 0.1f,
		         .deadline_ms = 1000, .seed = 1, .dim = D, .vec = (const uint8_t *)zero,
		         .clip = 1.0f};
		strcpy(t.model, "toy");
		if (compressed)
			strcpy(t.up, "topk:0.5,f32");
		assert_int_equal(msg_encode(&t, &buf, &len), SHOAL_OK);
		cli_core_on_reply(c, buf, len, 0);
		free(buf);
		cli_core_step(c, 0, &st);
		assert_int_equal(st.action, CLI_TRAIN);
		st.params[0] = 3;
		st.params[1] = 4; /* delta of norm 5 */
		assert_int_equal(cli_core_submit(c, 3, 0.5f, 0), SHOAL_OK);
		cli_core_step(c, 0, &st);
		assert_int_equal(st.action, CLI_SEND);
		assert_int_equal(msg_decode(st.buf, st.len, &m), (long)st.len);
		assert_int_equal(m.type, MSG_UPDATE);
		float sent[D] = {0};
		if (compressed) {
			uint32_t scratch[D];
			assert_true(cx_decode(m.blob, m.blob_len, D, sent, scratch) > 0);
			/* (delta clipped to 1) + residual 20 e_7, clipped to 1 again. */
			double n = dp_l2_norm(sent, D);
			assert_true(n <= 1.0 && n > 0.999);
			assert_true(sent[7] > 0.99f);
		} else {
			msg_vec_to_host(sent, m.vec, D);
			assert_true(dp_l2_norm(sent, D) <= 1.0);
			assert_true(fabsf(sent[0] - 0.6f) < 1e-6f && fabsf(sent[1] - 0.8f) < 1e-6f);
		}
		cli_core_free(c);
	}
}

/* ---- noise ------------------------------------------------------------------ */

static void
test_noise_stddev_of_released_average(void **state)
{
	enum { N = 8 };
	const double z = 2, clip = 0.5, q = 1;
	srv_config c;
	world w;

	/* Everyone sends zeros: the change of the model is noise / (q N). */
	dp_config(&c, N, q, z, clip);
	c.rounds = 2;
	assert_int_equal(world_run(&w, &c, N, false, NULL), SHOAL_OK);
	double sigma = srv_dp_noise_stddev(srv_core_dp(w.s));
	assert_true(sigma >= z * clip && sigma < z * clip * 1.001); /* + the lattice margin */
	double want = sigma / (q * N); /* 0.125 */
	for (uint32_t r = 1; r <= 2; r++) {
		assert_int_equal(w.end[r].selected, N);
		/* 7850 coordinates: the sample stddev is within 1% (1 sd) */
		assert_true(fabs(w.change_std[r] / want - 1) < 0.04);
		assert_true(fabs(w.change_mean[r]) < 5 * want / sqrt((double)w.dim));
	}
	world_fini(&w);
}

/* A round nobody is sampled into still releases noise and spends epsilon. */
static void
test_empty_round_releases_noise(void **state)
{
	enum { N = 3 };
	const double z = 1, clip = 1, q = 0.1;
	srv_config c;
	world w;

	dp_config(&c, N, q, z, clip);
	c.rounds = 40; /* P(empty) = 0.73 per round */
	c.min_reports = 1;
	assert_int_equal(world_run(&w, &c, N, false, NULL), SHOAL_OK);
	assert_int_equal(w.n_ends, 40);
	uint32_t empty = 0;
	double prev_eps = 0;
	double want = srv_dp_noise_stddev(srv_core_dp(w.s)) / (q * N);
	for (uint32_t r = 1; r <= 40; r++) {
		assert_false(w.end[r].abandoned);
		assert_true(w.end[r].epsilon > prev_eps); /* every round is a step */
		prev_eps = w.end[r].epsilon;
		if (w.end[r].selected == 0) {
			empty++;
			assert_int_equal(w.end[r].reported, 0);
			assert_true(fabs(w.change_std[r] / want - 1) < 0.04);
		}
	}
	assert_true(empty > 10);
	assert_int_equal(srv_dp_steps(srv_core_dp(w.s)), 40);
	world_fini(&w);
}

/* ---- budget ------------------------------------------------------------------ */


static double
dp_tool_epsilon(double q, double sigma, uint32_t steps, double delta)
{
	char qs[32], ss[32], ts[32], ds[32];
	snprintf(qs, sizeof qs, "%.17g", q);
	snprintf(ss, sizeof ss, "%.17g", sigma);
	snprintf(ts, sizeof ts, "%u", steps);
	snprintf(ds, sizeof ds, "%.17g", delta);
	const char *args[] = {"epsilon", "--q", qs, "--sigma", ss, "--steps", ts, "--delta", ds,
	                      NULL};
	json_t *o = dptool_json(args);
	double e = json_real_value(json_object_get(o, "epsilon"));
	json_decref(o);
	return e;
}

/* epsilon after t steps from the RDP formula itself (no accountant). */
static double
formula_epsilon(double q, double z, uint32_t t, double delta)
{
	double orders[DP_DEFAULT_ORDERS], rdp[DP_DEFAULT_ORDERS], eps;
	size_t n = dp_default_orders(orders);
	for (size_t i = 0; i < n; i++)
		rdp[i] = t * dp_rdp_sgm(q, z, orders[i]);
	assert_int_equal(dp_epsilon(orders, rdp, n, delta, &eps, NULL), SHOAL_OK);
	return eps;
}

static void
test_budget_stops_at_predicted_round(void **state)
{
	enum { N = 4 };
	const double q = 0.5, z = 1.5, budget = 6.0, delta = 1e-5;
	srv_config c;
	world w;

	/* The last round whose epsilon stays within the budget. */
	uint32_t want = 0;
	while (formula_epsilon(q, z, want + 1, delta) <= budget)
		want++;
	assert_true(want >= 3 && want < 100);
	/* shoal-dp agrees on both sides of the boundary. */
	assert_true(dp_tool_epsilon(q, z, want, delta) <= budget);
	assert_true(dp_tool_epsilon(q, z, want + 1, delta) > budget);

	dp_config(&c, N, q, z, 1.0);
	c.epsilon_budget = budget;
	c.rounds = 1000;
	assert_int_equal(world_run(&w, &c, N, false, NULL), SHOAL_OK);
	assert_true(srv_core_finished(w.s));
	assert_int_equal(srv_core_round(w.s), want);
	assert_int_equal(w.n_ends, want);
	for (uint32_t i = 0; i < N; i++)
		assert_true(w.c[i].done); /* everyone heard DONE */
	double last = w.end[want].epsilon;
	assert_true(last <= budget);
	assert_true(fabs(last - dp_tool_epsilon(q, z, want, delta)) < 1e-9 * last);
	assert_true(fabs(srv_core_epsilon(w.s) - last) < 1e-12);
	world_fini(&w);
}

static void
test_target_epsilon_calibrates_for_all_rounds(void **state)
{
	enum { N = 4, R = 6 };
	const double q = 0.5, target = 4.0;
	srv_config c;
	world w;

	dp_config(&c, N, q, 0, 1.0);
	c.target_epsilon = target;
	c.rounds = R;
	assert_int_equal(world_run(&w, &c, N, false, NULL), SHOAL_OK);
	assert_int_equal(w.n_ends, R); /* the budget is exactly the configured rounds */
	double z = srv_dp_noise_multiplier(srv_core_dp(w.s));
	const char *args[] = {"calibrate", "--q", "0.5", "--steps", "6", "--delta", "1e-5",
	                      "--epsilon", "4", NULL};
	json_t *o = dptool_json(args);
	assert_true(fabs(z - json_real_value(json_object_get(o, "sigma"))) < 1e-12);
	json_decref(o);
	double eps = srv_core_epsilon(w.s);
	assert_true(eps <= target && eps > target - 1e-3);
	world_fini(&w);
}

/* ---- metrics -------------------------------------------------------------------- */

static json_t *
metrics_line(const srv_round_stats *st)
{
	char line[2048];
	FILE *f = tmpfile();
	assert_non_null(f);
	srv_metrics_write(f, st, -1);
	rewind(f);
	assert_non_null(fgets(line, sizeof line, f));
	fclose(f);
	json_t *o = json_loads(line, 0, NULL);
	assert_non_null(o);
	return o;
}

static void
test_metrics_carry_epsilon(void **state)
{
	srv_config c;
	world w;

	dp_config(&c, 4, 0.5, 1.0, 1.0);
	c.rounds = 3;
	assert_int_equal(world_run(&w, &c, 4, false, NULL), SHOAL_OK);
	for (uint32_t r = 1; r <= 3; r++) {
		json_t *o = metrics_line(&w.end[r]);
		json_t *e = json_object_get(o, "epsilon");
		assert_non_null(e);
		assert_true(fabs(json_real_value(e) - w.end[r].epsilon) < 1e-8 * w.end[r].epsilon);
		assert_true(json_real_value(e) > 0);
		json_decref(o);
	}
	world_fini(&w);

	base_config(&c, 4); /* DP off: no epsilon key */
	c.rounds = 1;
	assert_int_equal(world_run(&w, &c, 4, false, NULL), SHOAL_OK);
	assert_true(isnan(w.end[1].epsilon));
	json_t *o = metrics_line(&w.end[1]);
	assert_null(json_object_get(o, "epsilon"));
	json_decref(o);
	world_fini(&w);
}

/* The noise is reproducible from the seed, different with a key, and the
 * key decides it. */
static void
test_noise_keyed_or_seeded(void **state)
{
	static const uint8_t key1[SRV_DP_KEY_BYTES] = {1}, key2[SRV_DP_KEY_BYTES] = {2};
	srv_config c;
	world a, b, k1, k1b, k2;

	dp_config(&c, 2, 1.0, 1.0, 1.0);
	c.rounds = 1;
	assert_int_equal(world_run(&a, &c, 2, false, NULL), SHOAL_OK);
	assert_int_equal(world_run(&b, &c, 2, false, NULL), SHOAL_OK);
	c.dp_noise_key = key1;
	assert_int_equal(world_run(&k1, &c, 2, false, NULL), SHOAL_OK);
	assert_int_equal(world_run(&k1b, &c, 2, false, NULL), SHOAL_OK);
	c.dp_noise_key = key2;
	assert_int_equal(world_run(&k2, &c, 2, false, NULL), SHOAL_OK);
	size_t bytes = a.dim * sizeof(float);
	assert_memory_equal(srv_core_params(a.s, NULL), srv_core_params(b.s, NULL), bytes);
	assert_memory_equal(srv_core_params(k1.s, NULL), srv_core_params(k1b.s, NULL), bytes);
	assert_true(memcmp(srv_core_params(a.s, NULL), srv_core_params(k1.s, NULL), bytes) != 0);
	assert_true(memcmp(srv_core_params(k1.s, NULL), srv_core_params(k2.s, NULL), bytes) != 0);
	world_fini(&a);
	world_fini(&b);
	world_fini(&k1);
	world_fini(&k1b);
	world_fini(&k2);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_poisson_select_unit),
	cmocka_unit_test(test_poisson_rounds_frequency_and_determinism),
	cmocka_unit_test(test_dp_config_refused),
	cmocka_unit_test(test_server_clips_updates),
	cmocka_unit_test(test_adaptive_clip_tracks_median),
	cmocka_unit_test(test_oversized_update_capped_in_core),
	cmocka_unit_test(test_client_clips_to_task_bound),
	cmocka_unit_test(test_noise_stddev_of_released_average),
	cmocka_unit_test(test_empty_round_releases_noise),
	cmocka_unit_test(test_budget_stops_at_predicted_round),
	cmocka_unit_test(test_target_epsilon_calibrates_for_all_rounds),
	cmocka_unit_test(test_metrics_carry_epsilon),
	cmocka_unit_test(test_noise_keyed_or_seeded),
};

SHOAL_TEST_MAIN(tests)
