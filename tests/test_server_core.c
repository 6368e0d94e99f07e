/* test_server_core.c - the server protocol core driven directly with bytes
 * and times (no sockets): registration, parking, seeded selection, FedAvg,
 * deadlines, abandonment and every rejection path. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/codec.h"
#include "common/msg.h"
#include "server/core.h"
#include "srvharness.h"

static void
base_config(srv_config *c)
{
	srv_config_defaults(c);
	c->model = "logreg";
	c->rounds = 3;
	c->clients_per_round = 2;
	c->min_clients = 3;
	c->min_reports = 1;
	c->hold_ms = 1000;
	c->round_timeout_ms = 5000;
	c->seed = 7;
	c->downlink_q8 = false; /* exact FedAvg sums; the downlink has its own tests */
}

static uint32_t
hello(harness *h, const char *name, uint32_t n, uint64_t now)
{
	msg m = {.type = MSG_HELLO, .dim = (uint32_t)h->dim, .n_examples = n};
	snprintf(m.name, sizeof m.name, "%s", name);
	snprintf(m.model, sizeof m.model, "logreg");
	uint64_t req = send_msg(h, &m, now);
	msg w;
	assert_non_null(reply_to(h, req, &w));
	assert_int_equal(w.type, MSG_WELCOME);
	return w.client_id;
}

static uint64_t
checkin(harness *h, uint32_t id, uint64_t now)
{
	msg m = {.type = MSG_CHECKIN, .client_id = id};
	return send_msg(h, &m, now);
}

static uint64_t
update(harness *h, uint32_t id, uint32_t round, uint32_t n, const float *delta, uint64_t now)
{
	msg m = {.type = MSG_UPDATE, .client_id = id, .round = round, .n_examples = n,
	         .loss = 0.5f, .dim = (uint32_t)h->dim, .vec = (const uint8_t *)delta};
	return send_msg(h, &m, now);
}

static void
expect_error(harness *h, uint64_t req, shoal_err code)
{
	msg m;
	assert_non_null(reply_to(h, req, &m));
	assert_int_equal(m.type, MSG_ERROR);
	assert_int_equal(m.code, code);
}

static void
test_hello_registers_and_welcomes(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	assert_int_equal(hello(&h, "alice", 10, 0), 1);
	assert_int_equal(hello(&h, "bob", 10, 0), 2);
	assert_int_equal(hello(&h, "alice", 12, 0), 1); /* same name, same id */
	assert_int_equal(srv_core_registered(h.s), 2);
	h_fini(&h);
}

static void
test_hello_wrong_model_refused(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	msg m = {.type = MSG_HELLO, .dim = 199210, .n_examples = 1};
	strcpy(m.name, "x");
	strcpy(m.model, "2nn");
	uint64_t req = send_msg(&h, &m, 0);
	expect_error(&h, req, SHOAL_EMODEL);
	assert_int_equal(srv_core_registered(h.s), 0);
	h_fini(&h);
}

static void
test_checkin_parks_until_min_clients(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	uint32_t a = hello(&h, "a", 10, 0), b = hello(&h, "b", 10, 0), d = hello(&h, "d", 10, 0);
	uint64_t ra = checkin(&h, a, 1), rb = checkin(&h, b, 1);
	msg m;
	assert_null(reply_to(&h, ra, &m));
	assert_null(reply_to(&h, rb, &m));
	uint64_t rd = checkin(&h, d, 2);
	/* M=3 reached: K=2 get a TASK, the third stays parked. */
	int tasks = 0, pending = 0;
	uint64_t reqs[3] = {ra, rb, rd};
	for (int i = 0; i < 3; i++) {
		if (reply_to(&h, reqs[i], &m) == NULL) {
			pending++;
			continue;
		}
		assert_int_equal(m.type, MSG_TASK);
		assert_int_equal(m.round, 1);
		assert_int_equal(m.dim, h.dim);
		tasks++;
	}
	assert_int_equal(tasks, 2);
	assert_int_equal(pending, 1);
	h_fini(&h);
}

static void
test_park_expires_with_wait(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	uint32_t a = hello(&h, "a", 10, 0);
	uint64_t r = checkin(&h, a, 0);
	assert_int_equal(srv_core_next_deadline(h.s), 1000);
	msg m;
	timer(&h, 999);
	assert_null(reply_to(&h, r, &m));
	timer(&h, 1000);
	assert_non_null(reply_to(&h, r, &m));
	assert_int_equal(m.type, MSG_WAIT);
	assert_int_equal(srv_core_next_deadline(h.s), UINT64_MAX);
	h_fini(&h);
}

/* Names selected in round 1 and their seeds, for clients checking in in
 * the given order. */
static void
select_in_order(const int *order, char names[2][8], uint64_t seeds[2])
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 5;
	h_init(&h, &c);
	uint32_t id[5];
	uint64_t req[5];
	for (int i = 0; i < 5; i++) {
		char n[8];
		snprintf(n, sizeof n, "c%d", order[i]);
		id[i] = hello(&h, n, 10, 0);
	}
	for (int i = 0; i < 5; i++)
		req[i] = checkin(&h, id[i], 1);
	int k = 0;
	for (int i = 0; i < 5; i++) {
		msg m;
		if (reply_to(&h, req[i], &m) != NULL) {
			snprintf(names[k], 8, "c%d", order[i]);
			seeds[k++] = m.seed;
		}
	}
	assert_int_equal(k, 2);
	/* Canonical order (by name) so two runs compare equal. */
	if (strcmp(names[0], names[1]) > 0) {
		char t[8];
		uint64_t u = seeds[0];
		strcpy(t, names[0]);
		strcpy(names[0], names[1]);
		strcpy(names[1], t);
		seeds[0] = seeds[1];
		seeds[1] = u;
	}
	h_fini(&h);
}

static void
test_selection_independent_of_arrival_order(void **state)
{
	int fwd[5] = {0, 1, 2, 3, 4}, rev[5] = {4, 3, 2, 1, 0};
	char n1[2][8], n2[2][8];
	uint64_t s1[2], s2[2];
	select_in_order(fwd, n1, s1);
	select_in_order(rev, n2, s2);
	assert_string_equal(n1[0], n2[0]);
	assert_string_equal(n1[1], n2[1]);
	assert_true(s1[0] == s2[0] && s1[1] == s2[1]);
	assert_true(s1[0] != s1[1]);
}

/* Start round 1 with clients a, b (K=2, M=2); returns their ids. */
static void
start_round(harness *h, uint32_t ids[2], uint64_t reqs[2])
{
	ids[0] = hello(h, "a", 10, 0);
	ids[1] = hello(h, "b", 10, 0);
	reqs[0] = checkin(h, ids[0], 0);
	reqs[1] = checkin(h, ids[1], 0);
	msg m;
	assert_non_null(reply_to(h, reqs[0], &m));
	assert_int_equal(m.type, MSG_TASK);
	assert_non_null(reply_to(h, reqs[1], &m));
	assert_int_equal(m.type, MSG_TASK);
}

static void
test_fedavg_weighted_by_examples(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 2;
	h_init(&h, &c);
	size_t dim = h.dim;
	float *before = malloc(dim * 4), *d1 = malloc(dim * 4), *d2 = malloc(dim * 4);
	memcpy(before, srv_core_params(h.s, NULL), dim * 4);
	for (size_t j = 0; j < dim; j++) {
		d1[j] = (float)((j % 7) * 0.25 - 0.5);
		d2[j] = (float)((j % 5) * -0.125 + 0.1);
	}
	uint32_t id[2];
	uint64_t rq[2];
	start_round(&h, id, rq);
	msg m;
	uint64_t u1 = update(&h, id[0], 1, 1, d1, 10);
	assert_non_null(reply_to(&h, u1, &m));
	assert_int_equal(m.type, MSG_ACK);
	uint64_t u2 = update(&h, id[1], 1, 3, d2, 11);
	assert_non_null(reply_to(&h, u2, &m));
	assert_int_equal(m.type, MSG_ACK);
	const float *after = srv_core_params(h.s, NULL);
	for (size_t j = 0; j < dim; j++) {
		double want = (double)before[j] + (1.0 * d1[j] + 3.0 * d2[j]) / 4.0;
		assert_true(fabs(after[j] - want) <= 1e-6 * (1 + fabs(want)));
	}
	srv_event ev;
	bool ended = false;
	while (srv_core_pop_event(h.s, &ev))
		if (ev.kind == SRV_EV_ROUND_END) {
			ended = true;
			assert_int_equal(ev.stats.reported, 2);
			assert_int_equal(ev.stats.dropped, 0);
			assert_false(ev.stats.abandoned);
			assert_true(ev.stats.bytes_up > 2 * 4 * dim);
			assert_true(ev.stats.bytes_down > 2 * 4 * dim);
		}
	assert_true(ended);
	free(before);
	free(d1);
	free(d2);
	h_fini(&h);
}

/* Over-selection (K = 2, factor 2): four clients get the task, the round
 * closes at the second update with the FedAvg of exactly those two, and a
 * third update is refused as stale. Secure rounds and Poisson sampling
 * refuse the option. */
static void
test_over_selection_keeps_first_arrivals(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 4;
	c.over_select = 2.0;
	h_init(&h, &c);
	size_t dim = h.dim;
	float *before = malloc(dim * 4), *d1 = malloc(dim * 4), *d2 = malloc(dim * 4);
	float *d3 = malloc(dim * 4);
	memcpy(before, srv_core_params(h.s, NULL), dim * 4);
	for (size_t j = 0; j < dim; j++) {
		d1[j] = (float)((j % 7) * 0.25 - 0.5);
		d2[j] = (float)((j % 5) * -0.125 + 0.1);
		d3[j] = 100.0f;
	}
	uint32_t id[4];
	uint64_t rq[4];
	const char *names[4] = {"a", "b", "c", "d"};
	for (int i = 0; i < 4; i++)
		id[i] = hello(&h, names[i], 10, 0);
	for (int i = 0; i < 4; i++)
		rq[i] = checkin(&h, id[i], 0);
	msg m;
	for (int i = 0; i < 4; i++) {
		assert_non_null(reply_to(&h, rq[i], &m));
		assert_int_equal(m.type, MSG_TASK);
	}
	/* d arrives first, then b: the round closes with those two. */
	assert_non_null(reply_to(&h, update(&h, id[3], 1, 1, d1, 10), &m));
	assert_int_equal(m.type, MSG_ACK);
	assert_non_null(reply_to(&h, update(&h, id[1], 1, 3, d2, 11), &m));
	assert_int_equal(m.type, MSG_ACK);
	srv_event ev;
	bool ended = false;
	while (srv_core_pop_event(h.s, &ev))
		if (ev.kind == SRV_EV_ROUND_END) {
			ended = true;
			assert_int_equal(ev.stats.selected, 4);
			assert_int_equal(ev.stats.reported, 2);
			assert_int_equal(ev.stats.dropped, 2);
			assert_false(ev.stats.abandoned);
		}
	assert_true(ended);
	const float *after = srv_core_params(h.s, NULL);
	for (size_t j = 0; j < dim; j++) {
		double want = (double)before[j] + (1.0 * d1[j] + 3.0 * d2[j]) / 4.0;
		assert_true(fabs(after[j] - want) <= 1e-6 * (1 + fabs(want)));
	}
	/* The late one is refused and never reaches the model. */
	expect_error(&h, update(&h, id[0], 1, 1, d3, 12), SHOAL_ESTALE);
	for (size_t j = 0; j < dim; j++)
		assert_true(srv_core_params(h.s, NULL)[j] == after[j]);
	free(before);
	free(d1);
	free(d2);
	free(d3);
	h_fini(&h);

	srv_core *s;
	base_config(&c);
	c.over_select = 1.5;
	c.secagg = SRV_SECAGG_FULL;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	base_config(&c);
	c.over_select = 0.5;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
}

static void
test_update_rejections(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 2;
	h_init(&h, &c);
	float *d = calloc(h.dim, 4);
	uint32_t id[2];
	uint64_t rq[2];
	start_round(&h, id, rq);
	uint32_t other = hello(&h, "z", 10, 0); /* registered, not selected */

	expect_error(&h, update(&h, 99, 1, 1, d, 1), SHOAL_EUNKNOWN);
	expect_error(&h, update(&h, id[0], 2, 1, d, 1), SHOAL_ESTALE);
	expect_error(&h, update(&h, id[0], 0 + 7, 1, d, 1), SHOAL_ESTALE);
	expect_error(&h, update(&h, other, 1, 1, d, 1), SHOAL_ENOTSELECTED);
	msg m = {.type = MSG_UPDATE, .client_id = id[0], .round = 1, .n_examples = 1,
	         .dim = 5, .vec = (const uint8_t *)d};
	expect_error(&h, send_msg(&h, &m, 1), SHOAL_EDIM);
	msg ack;
	assert_non_null(reply_to(&h, update(&h, id[0], 1, 1, d, 2), &ack));
	assert_int_equal(ack.type, MSG_ACK);
	expect_error(&h, update(&h, id[0], 1, 1, d, 3), SHOAL_EDUP);
	/* Still open: b's update closes the round with exactly 2 counted. */
	assert_non_null(reply_to(&h, update(&h, id[1], 1, 1, d, 4), &ack));
	srv_event ev;
	int ends = 0;
	while (srv_core_pop_event(h.s, &ev))
		if (ev.kind == SRV_EV_ROUND_END) {
			ends++;
			assert_int_equal(ev.stats.reported, 2);
			assert_true(ev.stats.rejected >= 5);
		}
	assert_int_equal(ends, 1);
	/* After the round closed, a late update is stale. */
	expect_error(&h, update(&h, id[1], 1, 1, d, 5), SHOAL_ESTALE);
	free(d);
	h_fini(&h);
}

static void
test_nonfinite_update_never_reaches_model(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 2;
	h_init(&h, &c);
	float *d = calloc(h.dim, 4);
	float *before = malloc(h.dim * 4);
	memcpy(before, srv_core_params(h.s, NULL), h.dim * 4);
	uint32_t id[2];
	uint64_t rq[2];
	start_round(&h, id, rq);
	msg m = {.type = MSG_UPDATE, .client_id = id[0], .round = 1, .n_examples = 1,
	         .dim = (uint32_t)h.dim, .vec = (const uint8_t *)d};
	uint8_t *buf;
	size_t len;
	assert_int_equal(msg_encode(&m, &buf, &len), SHOAL_OK);
	/* The vector is the tail of the map: poison its last float with NaN. */
	const uint8_t nan_le[4] = {0x00, 0x00, 0xc0, 0x7f};
	memcpy(buf + len - 4, nan_le, 4);
	uint64_t r = send_raw(&h, buf, len, 1);
	expect_error(&h, r, SHOAL_ENONFINITE);
	free(buf);
	/* Both clients then time out: the round is abandoned (0 < 1 report). */
	timer(&h, 5000);
	assert_memory_equal(before, srv_core_params(h.s, NULL), h.dim * 4);
	free(d);
	free(before);
	h_fini(&h);
}

static void
test_garbage_gets_error_and_drop(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	uint8_t junk[64];
	for (size_t i = 0; i < sizeof junk; i++)
		junk[i] = (uint8_t)(i * 37 + 11);
	uint64_t r = send_raw(&h, junk, sizeof junk, 0);
	msg m;
	const srv_reply *rep = reply_to(&h, r, &m);
	assert_non_null(rep);
	assert_int_equal(m.type, MSG_ERROR);
	assert_true(m.code < 0);
	assert_true(rep->close);
	/* A valid message afterwards is served normally. */
	assert_int_equal(hello(&h, "after", 1, 0), 1);
	h_fini(&h);
}

static void
test_wrong_version_rejected(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	/* {"v": 99, "t": 3, "id": 1} */
	const uint8_t b[] = {0x83, 0xa1, 'v', 99, 0xa1, 't', 3, 0xa2, 'i', 'd', 1};
	expect_error(&h, send_raw(&h, b, sizeof b, 0), SHOAL_EVERSION);
	h_fini(&h);
}

static void
test_trailing_bytes_rejected(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	msg m = {.type = MSG_CHECKIN, .client_id = 1};
	uint8_t *buf, *b2;
	size_t len;
	assert_int_equal(msg_encode(&m, &buf, &len), SHOAL_OK);
	b2 = malloc(len + 1);
	memcpy(b2, buf, len);
	b2[len] = 0xc0;
	expect_error(&h, send_raw(&h, b2, len + 1, 0), SHOAL_EMALFORMED);
	free(buf);
	free(b2);
	h_fini(&h);
}

static void
test_oversized_message_rejected(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.max_message = 64 * 1024;
	h_init(&h, &c);
	uint8_t *big = calloc(1, c.max_message + 1);
	uint64_t r = send_raw(&h, big, c.max_message + 1, 0);
	msg m;
	const srv_reply *rep = reply_to(&h, r, &m);
	assert_non_null(rep);
	assert_int_equal(m.code, SHOAL_ETOOBIG);
	assert_true(rep->close);
	free(big);
	h_fini(&h);
}

static void
test_server_message_types_refused(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	msg m = {.type = MSG_ACK, .round = 1};
	uint64_t r = send_msg(&h, &m, 0);
	expect_error(&h, r, SHOAL_ETYPE);
	msg e;
	assert_true(reply_to(&h, r, &e)->close);
	h_fini(&h);
}

static void
test_deadline_abandons_below_min_reports(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 2;
	c.min_reports = 2;
	h_init(&h, &c);
	float *d = calloc(h.dim, 4), *before = malloc(h.dim * 4);
	for (size_t j = 0; j < h.dim; j++)
		d[j] = 1.0f;
	memcpy(before, srv_core_params(h.s, NULL), h.dim * 4);
	uint32_t id[2];
	uint64_t rq[2];
	start_round(&h, id, rq);
	msg ack;
	assert_non_null(reply_to(&h, update(&h, id[0], 1, 5, d, 10), &ack));
	assert_int_equal(ack.type, MSG_ACK);
	assert_int_equal(srv_core_next_deadline(h.s), 5000);
	timer(&h, 4999);
	assert_int_equal(srv_core_round(h.s), 1);
	timer(&h, 5000);
	srv_event ev;
	bool abandoned = false;
	while (srv_core_pop_event(h.s, &ev))
		if (ev.kind == SRV_EV_ROUND_END) {
			abandoned = ev.stats.abandoned;
			assert_int_equal(ev.stats.reported, 1);
			assert_int_equal(ev.stats.dropped, 1);
		}
	assert_true(abandoned);
	assert_memory_equal(before, srv_core_params(h.s, NULL), h.dim * 4);
	/* The next round starts with fresh check-ins and uses id 2. */
	uint64_t r0 = checkin(&h, id[0], 6000), r1 = checkin(&h, id[1], 6000);
	msg t;
	assert_non_null(reply_to(&h, r0, &t));
	assert_int_equal(t.round, 2);
	assert_non_null(reply_to(&h, r1, &t));
	free(d);
	free(before);
	h_fini(&h);
}

static void
test_deadline_completes_with_enough_reports(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 2;
	c.min_reports = 1;
	h_init(&h, &c);
	float *d = calloc(h.dim, 4);
	d[0] = 2.0f;
	float p0 = srv_core_params(h.s, NULL)[0];
	uint32_t id[2];
	uint64_t rq[2];
	start_round(&h, id, rq);
	update(&h, id[1], 1, 4, d, 10);
	timer(&h, 5000);
	assert_true(fabsf(srv_core_params(h.s, NULL)[0] - (p0 + 2.0f)) < 1e-6f);
	srv_event ev;
	bool done = false;
	while (srv_core_pop_event(h.s, &ev))
		if (ev.kind == SRV_EV_ROUND_END) {
			done = !ev.stats.abandoned && ev.stats.reported == 1 && ev.stats.dropped == 1;
		}
	assert_true(done);
	free(d);
	h_fini(&h);
}

static void
test_finishes_and_answers_done(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.rounds = 1;
	c.min_clients = 2;
	h_init(&h, &c);
	float *d = calloc(h.dim, 4);
	uint32_t id[2];
	uint64_t rq[2];
	start_round(&h, id, rq);
	uint32_t late = hello(&h, "late", 1, 0);
	uint64_t parked = checkin(&h, late, 1);
	update(&h, id[0], 1, 1, d, 2);
	update(&h, id[1], 1, 1, d, 3);
	assert_true(srv_core_finished(h.s));
	msg m;
	assert_non_null(reply_to(&h, parked, &m)); /* parked client released */
	assert_int_equal(m.type, MSG_DONE);
	assert_non_null(reply_to(&h, checkin(&h, id[0], 4), &m));
	assert_int_equal(m.type, MSG_DONE);
	assert_int_equal(m.round, 1);
	free(d);
	h_fini(&h);
}

static void
test_registry_full(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.max_clients = 2;
	h_init(&h, &c);
	hello(&h, "a", 1, 0);
	hello(&h, "b", 1, 0);
	msg m = {.type = MSG_HELLO, .dim = (uint32_t)h.dim, .n_examples = 1};
	strcpy(m.name, "c");
	strcpy(m.model, "logreg");
	expect_error(&h, send_msg(&h, &m, 0), SHOAL_EFULL);
	h_fini(&h);
}

static void
test_repeated_checkin_answers_older_request(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	h_init(&h, &c);
	uint32_t a = hello(&h, "a", 1, 0);
	uint64_t r1 = checkin(&h, a, 0);
	uint64_t r2 = checkin(&h, a, 1);
	msg m;
	assert_non_null(reply_to(&h, r1, &m));
	assert_int_equal(m.type, MSG_WAIT);
	assert_null(reply_to(&h, r2, &m));
	srv_core_release_all(h.s, 2);
	drain(&h);
	assert_non_null(reply_to(&h, r2, &m));
	h_fini(&h);
}

static void
test_bad_config_refused(void **state)
{
	srv_config c;
	srv_core *s;
	base_config(&c);
	c.min_reports = 3; /* > K */
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	base_config(&c);
	c.model = "nope";
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EMODEL);
	base_config(&c);
	c.lr = NAN;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
	base_config(&c);
	c.max_message = 1000;
	assert_int_equal(srv_core_new(&c, &s), SHOAL_EINVAL);
}

/* Encode a sparse update with f32 values (exact on the server). */
static size_t
sparse_update(const harness *h, uint32_t k, const uint32_t *idx, const float *val, uint8_t *out,
              size_t cap)
{
	cx_config c = cx_config_default(1.0);
	c.values = CX_VALUES_F32;
	c.block = 0;
	long n = cx_encode((uint32_t)h->dim, k, idx, val, &c, NULL, NULL, out, cap, NULL);
	assert_true(n > 0);
	return (size_t)n;
}

/* Clients that advertise top-k + q8 are asked for it; a compressed update
 * is validated on arrival (errors leave the model alone) and summed from
 * its wire form into the FedAvg average. */
static void
test_compressed_updates(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 2;
	h_init(&h, &c);
	uint32_t a = hello_caps(&h, "a", MSG_CX_ALL), b = hello_caps(&h, "b", 0);
	uint64_t ra = checkin(&h, a, 0), rb = checkin(&h, b, 0);
	msg ta, tb;
	assert_non_null(reply_to(&h, ra, &ta));
	assert_non_null(reply_to(&h, rb, &tb));
	assert_string_equal(ta.up, "topk:0.01,q8");
	assert_string_equal(tb.up, ""); /* b handles only dense updates */
	float *before = malloc(h.dim * 4);
	memcpy(before, srv_core_params(h.s, NULL), h.dim * 4);

	uint8_t buf[512];
	const uint32_t idx[3] = {0, 100, 7849};
	const float val[3] = {1.0f, -2.0f, 0.5f};
	size_t n = sparse_update(&h, 3, idx, val, buf, sizeof buf);
	msg u = {.type = MSG_UPDATE, .client_id = a, .round = 1, .n_examples = 1,
	         .blob = buf, .blob_len = n};
	/* A truncated encoding and one for another dimension are refused. */
	u.blob_len = n - 1;
	expect_error(&h, send_msg(&h, &u, 1), SHOAL_ETRUNC);
	buf[6] ^= 1; /* dim field */
	u.blob_len = n;
	expect_error(&h, send_msg(&h, &u, 1), SHOAL_EDIM);
	buf[6] ^= 1;
	msg ack;
	assert_non_null(reply_to(&h, send_msg(&h, &u, 2), &ack));
	assert_int_equal(ack.type, MSG_ACK);
	float *d = calloc(h.dim, 4);
	d[100] = 4.0f;
	update(&h, b, 1, 3, d, 3); /* dense, weight 3 */
	const float *p = srv_core_params(h.s, NULL);
	assert_true(p[0] == before[0] + (float)((1.0 * 1) / 4));
	assert_true(p[100] == before[100] + (float)((-2.0 + 3 * 4.0) / 4));
	assert_true(p[7849] == before[7849] + (float)(0.5 / 4));
	assert_true(p[50] == before[50]);
	free(before);
	free(d);
	h_fini(&h);
}

/* With the q8 downlink, a client holding the previous version gets the
 * change ("dq", base), one holding nothing gets the full model. */
static void
test_downlink_delta_to_previous_version(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 2;
	c.downlink_q8 = true;
	c.compress = "none";
	h_init(&h, &c);
	uint32_t a = hello_caps(&h, "a", MSG_CX_ALL), b = hello_caps(&h, "b", MSG_CX_ALL);
	uint64_t ra = checkin(&h, a, 0), rb = checkin(&h, b, 0);
	msg t;
	assert_non_null(reply_to(&h, ra, &t));
	assert_non_null(t.vec);
	assert_int_equal(t.model_ver, 1);
	assert_non_null(reply_to(&h, rb, &t));
	float *d = calloc(h.dim, 4);
	for (size_t j = 0; j < h.dim; j++)
		d[j] = (float)(j % 13) * 0.01f;
	update(&h, a, 1, 1, d, 1);
	update(&h, b, 1, 1, d, 1);
	assert_int_equal(srv_core_model_version(h.s), 2);
	msg ca = {.type = MSG_CHECKIN, .client_id = a, .model_ver = 1};
	msg cb = {.type = MSG_CHECKIN, .client_id = b, .model_ver = 0};
	ra = send_msg(&h, &ca, 10);
	rb = send_msg(&h, &cb, 10);
	assert_non_null(reply_to(&h, ra, &t));
	assert_null(t.vec);
	assert_non_null(t.blob);
	assert_int_equal(t.base, 1);
	assert_int_equal(t.model_ver, 2);
	assert_true(t.blob_len * 3 < 4 * h.dim);
	msg tf;
	assert_non_null(reply_to(&h, rb, &tf));
	assert_non_null(tf.vec);
	/* The delta reconstructs the full model the other client got. */
	float *full = malloc(h.dim * 4);
	msg_vec_to_host(full, tf.vec, h.dim);
	assert_memory_equal(full, srv_core_params(h.s, NULL), h.dim * 4);
	free(full);
	free(d);
	h_fini(&h);
}

/* A selected client that checks in again without an update (it skipped
 * the task) is counted as dropped at once: the round does not wait for the
 * deadline. */
static void
test_declined_task_closes_round(void **state)
{
	harness h;
	srv_config c;
	base_config(&c);
	c.min_clients = 2;
	h_init(&h, &c);
	float *d = calloc(h.dim, 4);
	uint32_t id[2];
	uint64_t rq[2];
	start_round(&h, id, rq);
	msg ack;
	assert_non_null(reply_to(&h, update(&h, id[0], 1, 5, d, 10), &ack));
	assert_int_equal(ack.type, MSG_ACK);
	assert_int_equal(srv_core_round(h.s), 1);
	checkin(&h, id[1], 11); /* b declines round 1 */
	srv_event ev;
	bool ended = false;
	while (srv_core_pop_event(h.s, &ev))
		if (ev.kind == SRV_EV_ROUND_END) {
			ended = true;
			assert_int_equal(ev.stats.reported, 1);
			assert_int_equal(ev.stats.dropped, 1);
			assert_false(ev.stats.abandoned);
			assert_int_equal(ev.stats.end_ms, 11);
		}
	assert_true(ended);
	/* A late update for the closed round is stale. */
	expect_error(&h, update(&h, id[1], 1, 5, d, 12), SHOAL_ESTALE);
	free(d);
	h_fini(&h);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hello_registers_and_welcomes),
		cmocka_unit_test(test_hello_wrong_model_refused),
		cmocka_unit_test(test_checkin_parks_until_min_clients),
		cmocka_unit_test(test_park_expires_with_wait),
		cmocka_unit_test(test_selection_independent_of_arrival_order),
		cmocka_unit_test(test_fedavg_weighted_by_examples),
	cmocka_unit_test(test_over_selection_keeps_first_arrivals),
		cmocka_unit_test(test_update_rejections),
		cmocka_unit_test(test_nonfinite_update_never_reaches_model),
		cmocka_unit_test(test_garbage_gets_error_and_drop),
		cmocka_unit_test(test_wrong_version_rejected),
		cmocka_unit_test(test_trailing_bytes_rejected),
		cmocka_unit_test(test_oversized_message_rejected),
		cmocka_unit_test(test_server_message_types_refused),
		cmocka_unit_test(test_deadline_abandons_below_min_reports),
		cmocka_unit_test(test_deadline_completes_with_enough_reports),
		cmocka_unit_test(test_finishes_and_answers_done),
		cmocka_unit_test(test_registry_full),
		cmocka_unit_test(test_repeated_checkin_answers_older_request),
		cmocka_unit_test(test_bad_config_refused),
		cmocka_unit_test(test_compressed_updates),
		cmocka_unit_test(test_downlink_delta_to_previous_version),
		cmocka_unit_test(test_declined_task_closes_round),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
