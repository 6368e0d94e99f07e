/* test_client_core.c - the client protocol core driven directly with reply
 * bytes and times (no sockets): the HELLO/CHECKIN/TASK/UPDATE cycle, the
 * delta it uploads, retries, backoff and every server error it handles. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client/core.h"
#include "common/codec.h"
#include "common/msg.h"

#define DIM 6

static cli_core *
make_client_caps(uint32_t caps)
{
	cli_config cfg = {.name = "pi-1", .model = "toy", .dim = DIM, .n_examples = 42,
	                  .seed = 3, .backoff_min_ms = 100, .backoff_max_ms = 1000,
	                  .cx_caps = caps, .error_feedback = true};
	cli_core *c;
	assert_int_equal(cli_core_new(&cfg, &c), SHOAL_OK);
	return c;
}

static cli_core *
make_client(void)
{
	cli_config cfg = {.name = "pi-1", .model = "toy", .dim = DIM, .n_examples = 42,
	                  .seed = 3, .backoff_min_ms = 100, .backoff_max_ms = 1000};
	cli_core *c;
	assert_int_equal(cli_core_new(&cfg, &c), SHOAL_OK);
	return c;
}

/* Feed the encoding of m as the reply to the outstanding request. */
static void
reply(cli_core *c, const msg *m, uint64_t now)
{
	uint8_t *buf;
	size_t len;
	assert_int_equal(msg_encode(m, &buf, &len), SHOAL_OK);
	cli_core_on_reply(c, buf, len, now);
	free(buf);
}

/* The next step must be SEND of a message of type t; decode it into *out
 * (out->vec points into a copy the caller frees via *keep). */
static void
expect_send(cli_core *c, uint64_t now, msg_type t, msg *out, uint8_t **keep)
{
	cli_step st;
	cli_core_step(c, now, &st);
	assert_int_equal(st.action, CLI_SEND);
	*keep = malloc(st.len);
	memcpy(*keep, st.buf, st.len);
	assert_int_equal(msg_decode(*keep, st.len, out), (long)st.len);
	assert_int_equal(out->type, t);
}

static void
register_client(cli_core *c)
{
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_HELLO, &m, &k);
	assert_string_equal(m.name, "pi-1");
	assert_string_equal(m.model, "toy");
	assert_int_equal(m.dim, DIM);
	assert_int_equal(m.n_examples, 42);
	free(k);
	msg w = {.type = MSG_WELCOME, .client_id = 9, .hold_ms = 2000};
	reply(c, &w, 0);
	assert_int_equal(cli_core_request_timeout_ms(c), 12000);
}

static const float global[DIM] = {1, 2, 3, -1, 0.5f, 0};

static void
give_task(cli_core *c, uint32_t round)
{
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	assert_int_equal(m.client_id, 9);
	free(k);
	msg t = {.type = MSG_TASK, .round = round, .epochs = 2, .batch = 5, .lr = 0.1f,
	         .deadline_ms = 30000, .seed = 77, .dim = DIM, .vec = (const uint8_t *)global};
	strcpy(t.model, "toy");
	reply(c, &t, 0);
}

static void
test_register_then_checkin(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	cli_core_free(c);
}

static void
test_task_train_submit_uploads_delta(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	give_task(c, 4);
	cli_step st;
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_TRAIN);
	assert_int_equal(st.round, 4);
	assert_int_equal(st.epochs, 2);
	assert_int_equal(st.batch, 5);
	assert_int_equal(st.seed, 77);
	assert_memory_equal(st.params, global, sizeof global);
	for (int j = 0; j < DIM; j++)
		st.params[j] += 0.5f * (float)j;
	assert_int_equal(cli_core_submit(c, 40, 0.25f, 1), SHOAL_OK);
	msg u;
	uint8_t *k;
	expect_send(c, 1, MSG_UPDATE, &u, &k);
	assert_int_equal(u.client_id, 9);
	assert_int_equal(u.round, 4);
	assert_int_equal(u.n_examples, 40);
	assert_true(u.loss == 0.25f);
	float delta[DIM];
	msg_vec_to_host(delta, u.vec, DIM);
	for (int j = 0; j < DIM; j++)
		assert_true(delta[j] == (global[j] + 0.5f * (float)j) - global[j]);
	free(k);
	msg ack = {.type = MSG_ACK, .round = 4};
	reply(c, &ack, 2);
	assert_int_equal(cli_core_stats(c)->updates_acked, 1);
	assert_int_equal(cli_core_stats(c)->rounds_trained, 1);
	assert_int_equal(cli_core_stats(c)->last_round, 4);
	assert_memory_equal(cli_core_global(c), global, sizeof global);
	expect_send(c, 2, MSG_CHECKIN, &u, &k);
	free(k);
	cli_core_free(c);
}

static void
test_retry_resends_identical_update(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	give_task(c, 1);
	cli_step st;
	cli_core_step(c, 0, &st);
	st.params[0] = 5;
	assert_int_equal(cli_core_submit(c, 1, 1.0f, 0), SHOAL_OK);
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_SEND);
	size_t len = st.len;
	uint8_t *first = malloc(len);
	memcpy(first, st.buf, len);
	cli_core_on_transport_error(c, SHOAL_ETIMEDOUT, 10);
	cli_core_step(c, 10, &st);
	assert_int_equal(st.action, CLI_SLEEP);
	cli_core_step(c, st.until_ms, &st);
	assert_int_equal(st.action, CLI_SEND);
	assert_int_equal(st.len, len);
	assert_memory_equal(st.buf, first, len);
	/* The first copy had arrived: a duplicate counts as delivered. */
	msg e = {.type = MSG_ERROR, .code = SHOAL_EDUP};
	reply(c, &e, 20);
	assert_int_equal(cli_core_stats(c)->updates_acked, 1);
	free(first);
	cli_core_free(c);
}

static void
test_backoff_doubles_and_caps(void **state)
{
	cli_core *c = make_client();
	uint64_t now = 0, prev_wait = 0;
	for (int i = 0; i < 8; i++) {
		cli_step st;
		cli_core_step(c, now, &st);
		assert_int_equal(st.action, CLI_SEND);
		cli_core_on_transport_error(c, SHOAL_ETIMEDOUT, now);
		cli_core_step(c, now, &st);
		assert_int_equal(st.action, CLI_SLEEP);
		uint64_t wait = st.until_ms - now;
		uint64_t cap = 100u << i;
		if (cap > 1000)
			cap = 1000;
		assert_true(wait >= cap / 2 && wait <= cap); /* jitter in [b/2, b] */
		if (i > 0 && cap < 1000)
			assert_true(wait >= prev_wait / 2);
		prev_wait = wait;
		now = st.until_ms;
	}
	assert_int_equal(cli_core_stats(c)->transport_errors, 8);
	/* A good reply resets the backoff. */
	msg w = {.type = MSG_WELCOME, .client_id = 1, .hold_ms = 10};
	reply(c, &w, now);
	cli_core_on_transport_error(c, SHOAL_ETIMEDOUT, now);
	cli_step st;
	cli_core_step(c, now, &st);
	assert_true(st.until_ms - now <= 100);
	cli_core_free(c);
}

static void
test_wait_sleeps_retry_ms(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	msg w = {.type = MSG_WAIT, .retry_ms = 250};
	reply(c, &w, 1000);
	cli_step st;
	cli_core_step(c, 1000, &st);
	assert_int_equal(st.action, CLI_SLEEP);
	assert_int_equal(st.until_ms, 1250);
	expect_send(c, 1250, MSG_CHECKIN, &m, &k);
	free(k);
	cli_core_free(c);
}

static void
test_stale_update_counts_late(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	give_task(c, 3);
	cli_step st;
	cli_core_step(c, 0, &st);
	assert_int_equal(cli_core_submit(c, 1, 0, 0), SHOAL_OK);
	cli_core_step(c, 0, &st);
	msg e = {.type = MSG_ERROR, .code = SHOAL_ESTALE};
	strcpy(e.text, "round closed");
	reply(c, &e, 1);
	assert_int_equal(cli_core_stats(c)->updates_late, 1);
	assert_int_equal(cli_core_stats(c)->updates_acked, 0);
	msg m;
	uint8_t *k;
	expect_send(c, 1, MSG_CHECKIN, &m, &k);
	free(k);
	cli_core_free(c);
}

static void
test_unknown_client_registers_again(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	msg e = {.type = MSG_ERROR, .code = SHOAL_EUNKNOWN};
	reply(c, &e, 1);
	expect_send(c, 1, MSG_HELLO, &m, &k);
	free(k);
	cli_core_free(c);
}

static void
test_done_ends_client(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	msg d = {.type = MSG_DONE, .round = 12};
	reply(c, &d, 0);
	cli_step st;
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_DONE);
	assert_int_equal(st.err, SHOAL_OK);
	cli_core_free(c);
}

static void
test_model_refusal_is_fatal(void **state)
{
	cli_core *c = make_client();
	cli_step st;
	cli_core_step(c, 0, &st);
	msg e = {.type = MSG_ERROR, .code = SHOAL_EMODEL};
	strcpy(e.text, "this server trains 2nn");
	reply(c, &e, 0);
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_DONE);
	assert_int_equal(st.err, SHOAL_EMODEL);
	cli_core_free(c);
}

static void
test_task_for_other_model_is_fatal(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	float p[3] = {0};
	msg t = {.type = MSG_TASK, .round = 1, .epochs = 1, .batch = 1, .lr = 0.1f,
	         .deadline_ms = 1, .dim = 3, .vec = (const uint8_t *)p};
	strcpy(t.model, "toy");
	reply(c, &t, 0);
	cli_step st;
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_DONE);
	assert_int_equal(st.err, SHOAL_EMODEL);
	cli_core_free(c);
}

static void
test_malformed_reply_backs_off(void **state)
{
	cli_core *c = make_client();
	cli_step st;
	cli_core_step(c, 0, &st);
	const uint8_t junk[] = {0xc1, 0x00, 0xff};
	cli_core_on_reply(c, junk, sizeof junk, 0);
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_SLEEP);
	cli_core_step(c, st.until_ms, &st);
	assert_int_equal(st.action, CLI_SEND); /* the same HELLO again */
	cli_core_free(c);
}

static void
test_nonfinite_local_model_not_sent(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	give_task(c, 1);
	cli_step st;
	cli_core_step(c, 0, &st);
	st.params[2] = NAN;
	assert_int_equal(cli_core_submit(c, 1, 0, 0), SHOAL_ENONFINITE);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	assert_int_equal(cli_core_submit(c, 1, 0, 0), SHOAL_ESTATE);
	cli_core_free(c);
}

static void
test_abort_train_checks_in_again(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	give_task(c, 1);
	cli_core_abort_train(c, 5);
	msg m;
	uint8_t *k;
	expect_send(c, 5, MSG_CHECKIN, &m, &k);
	free(k);
	assert_int_equal(cli_core_stats(c)->rounds_trained, 0);
	cli_core_free(c);
}

static void
test_bad_config_refused(void **state)
{
	cli_core *c;
	cli_config cfg = {.name = "", .model = "toy", .dim = 1};
	assert_int_equal(cli_core_new(&cfg, &c), SHOAL_EINVAL);
	cfg.name = "tab\tname";
	assert_int_equal(cli_core_new(&cfg, &c), SHOAL_EINVAL);
	cfg.name = "ok";
	cfg.dim = 0;
	assert_int_equal(cli_core_new(&cfg, &c), SHOAL_EINVAL);
}

/* A TASK asking for top-k: the UPDATE carries a codec encoding of the k
 * largest |delta| (f32 values: exact), and the residual keeps the rest. */
static void
test_compressed_update_and_residual(void **state)
{
	cli_core *c = make_client_caps(MSG_CX_ALL);
	register_client(c);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	assert_int_equal(m.model_ver, 0);
	free(k);
	msg t = {.type = MSG_TASK, .round = 1, .epochs = 1, .batch = 1, .lr = 0.1f,
	         .model_ver = 1, .dim = DIM, .vec = (const uint8_t *)global};
	strcpy(t.model, "toy");
	strcpy(t.up, "topk:0.5,f32"); /* k = 3 of 6 */
	reply(c, &t, 0);
	cli_step st;
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_TRAIN);
	const float delta[DIM] = {0.5f, -4.0f, 0.25f, 3.0f, -0.125f, 2.0f};
	for (int j = 0; j < DIM; j++)
		st.params[j] += delta[j];
	assert_int_equal(cli_core_submit(c, 10, 0.5f, 0), SHOAL_OK);
	msg u;
	expect_send(c, 0, MSG_UPDATE, &u, &k);
	assert_null(u.vec);
	assert_non_null(u.blob);
	float sent[DIM];
	uint32_t scratch[DIM];
	assert_int_equal(cx_decode(u.blob, u.blob_len, DIM, sent, scratch), (long)u.blob_len);
	free(k);
	const float *r = cli_core_residual(c);
	assert_non_null(r);
	for (int j = 0; j < DIM; j++) {
		float d = (global[j] + delta[j]) - global[j];
		bool big = j == 1 || j == 3 || j == 5;
		assert_true(sent[j] == (big ? d : 0.0f));
		assert_true(r[j] == (big ? 0.0f : d));
	}
	cli_core_free(c);
}

/* The q8 downlink: after a full model (version 1) the client says it holds
 * version 1, and a delta with base 1 is added to that model. */
static void
test_downlink_delta_applied(void **state)
{
	cli_core *c = make_client_caps(MSG_CX_ALL);
	register_client(c);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	msg t = {.type = MSG_TASK, .round = 1, .epochs = 1, .batch = 1, .lr = 0.1f,
	         .model_ver = 1, .dim = DIM, .vec = (const uint8_t *)global};
	strcpy(t.model, "toy");
	reply(c, &t, 0);
	cli_step st;
	cli_core_step(c, 0, &st);
	assert_int_equal(cli_core_submit(c, 1, 0, 0), SHOAL_OK);
	expect_send(c, 0, MSG_UPDATE, &m, &k);
	free(k);
	msg ack = {.type = MSG_ACK, .round = 1};
	reply(c, &ack, 0);
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	assert_int_equal(m.model_ver, 1);
	free(k);

	const float change[DIM] = {0.01f, -0.02f, 0.5f, 0, 0.25f, -1.0f};
	uint8_t dq[256];
	long n = cx_encode_downlink(change, DIM, 64, dq, sizeof dq);
	assert_true(n > 0);
	float want[DIM];
	memcpy(want, global, sizeof want);
	assert_int_equal(cx_decode_add(dq, (size_t)n, DIM, want, NULL), n);
	msg t2 = {.type = MSG_TASK, .round = 2, .epochs = 1, .batch = 1, .lr = 0.1f,
	          .model_ver = 2, .base = 1, .blob = dq, .blob_len = (size_t)n};
	strcpy(t2.model, "toy");
	reply(c, &t2, 0);
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_TRAIN);
	assert_memory_equal(cli_core_global(c), want, sizeof want);
	assert_int_equal(cli_core_model_version(c), 2);

	/* A delta for a version the client does not hold: it asks for all. */
	cli_core_abort_train(c, 0);
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	t2.round = 3;
	t2.base = 7;
	t2.model_ver = 8;
	reply(c, &t2, 0);
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	assert_int_equal(m.model_ver, 0);
	free(k);
	cli_core_free(c);
}

/* Release and restore (a simulator keeping idle clients small): no-op
 * while a round is in progress; once idle the model and residual are
 * gone, the CHECKIN still names the held version, and with the model
 * handed back a delta applies as if it had been kept. */
static void
test_release_and_restore(void **state)
{
	cli_config cfg = {.name = "pi-1", .model = "toy", .dim = DIM, .n_examples = 42, .seed = 3,
	                  .cx_caps = MSG_CX_ALL, .error_feedback = true};
	const float change[DIM] = {0.01f, -0.02f, 0.5f, 0, 0.25f, -1.0f};
	float want[DIM], saved[DIM];
	uint8_t dq[256], *k;
	cli_core *c;
	cli_step st;
	msg m;

	(void)state;
	assert_int_equal(cli_core_new(&cfg, &c), SHOAL_OK);
	assert_true(cli_core_idle(c));
	register_client(c);
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	assert_int_equal(cli_core_restore_global(c, global), SHOAL_ESTATE); /* holds none */
	msg t = {.type = MSG_TASK, .round = 1, .epochs = 1, .batch = 1, .lr = 0.1f,
	         .model_ver = 1, .dim = DIM, .vec = (const uint8_t *)global};
	strcpy(t.model, "toy");
	strcpy(t.up, "topk:0.34");
	reply(c, &t, 0);
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_TRAIN);
	assert_false(cli_core_idle(c));
	cli_core_release(c); /* training: kept */
	assert_non_null(cli_core_global(c));
	for (int j = 0; j < DIM; j++)
		st.params[j] += 0.1f * (float)(j + 1);
	assert_int_equal(cli_core_submit(c, 1, 0, 0), SHOAL_OK);
	expect_send(c, 0, MSG_UPDATE, &m, &k);
	free(k);
	msg ack = {.type = MSG_ACK, .round = 1};
	reply(c, &ack, 0);
	assert_true(cli_core_idle(c));
	assert_non_null(cli_core_residual(c));
	memcpy(saved, cli_core_residual(c), sizeof saved);
	cli_core_release(c);
	assert_null(cli_core_global(c));
	assert_null(cli_core_residual(c));
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	assert_int_equal(m.model_ver, 1);
	free(k);
	assert_int_equal(cli_core_restore_global(c, global), SHOAL_OK);
	assert_int_equal(cli_core_restore_global(c, global), SHOAL_ESTATE); /* has it */
	assert_int_equal(cli_core_set_residual(c, saved), SHOAL_OK);
	long n = cx_encode_downlink(change, DIM, 64, dq, sizeof dq);
	assert_true(n > 0);
	memcpy(want, global, sizeof want);
	assert_int_equal(cx_decode_add(dq, (size_t)n, DIM, want, NULL), n);
	msg t2 = {.type = MSG_TASK, .round = 2, .epochs = 1, .batch = 1, .lr = 0.1f,
	          .model_ver = 2, .base = 1, .blob = dq, .blob_len = (size_t)n};
	strcpy(t2.model, "toy");
	strcpy(t2.up, "topk:0.34");
	reply(c, &t2, 0);
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_TRAIN);
	assert_memory_equal(cli_core_global(c), want, sizeof want);
	assert_memory_equal(cli_core_residual(c), saved, sizeof saved);
	cli_core_free(c);
}

/* A suspended and resumed core behaves as the one that never stopped: the
 * same requests, the same seeded backoff jitter, the same counters. Only
 * an idle, released core without identity suspends. */
static void
test_suspend_and_resume(void **state)
{
	cli_config cfg = {.name = "pi-1", .model = "toy", .dim = DIM, .n_examples = 42, .seed = 3,
	                  .backoff_min_ms = 100, .backoff_max_ms = 1000,
	                  .dp_noise_from_seed = true};
	static const uint8_t junk[] = {0xc1, 0xc1};
	cli_core *a, *b, *c;
	cli_idle idle;
	cli_step sa, sb;
	uint8_t *ka, *kb;
	msg ma, mb;

	(void)state;
	assert_int_equal(cli_core_new(&cfg, &a), SHOAL_OK);
	assert_int_equal(cli_core_new(&cfg, &b), SHOAL_OK);
	register_client(a);
	register_client(b);
	for (uint64_t t = 100000; t <= 300000; t += 100000) {
		/* A malformed reply backs both off with jitter from their streams. */
		expect_send(a, t, MSG_CHECKIN, &ma, &ka);
		expect_send(b, t, MSG_CHECKIN, &mb, &kb);
		assert_int_equal(ma.client_id, mb.client_id);
		assert_int_equal(ma.model_ver, mb.model_ver);
		free(ka);
		free(kb);
		cli_core_on_reply(a, junk, sizeof junk, t + 1);
		cli_core_on_reply(b, junk, sizeof junk, t + 1);
		assert_true(cli_core_suspend(b, &idle));
		cli_core_free(b);
		assert_int_equal(cli_core_resume(&cfg, &idle, &b), SHOAL_OK);
		cli_core_step(a, t + 1, &sa);
		cli_core_step(b, t + 1, &sb);
		assert_int_equal(sa.action, CLI_SLEEP);
		assert_int_equal(sb.action, CLI_SLEEP);
		assert_int_equal(sa.until_ms, sb.until_ms);
	}
	assert_memory_equal(cli_core_stats(a), cli_core_stats(b), sizeof(cli_stats));
	/* Not idle (training), or not released, or with an identity: kept. */
	cli_core_free(a);
	assert_int_equal(cli_core_new(&cfg, &a), SHOAL_OK);
	register_client(a);
	give_task(a, 1);
	cli_core_step(a, 0, &sa);
	assert_int_equal(sa.action, CLI_TRAIN);
	assert_false(cli_core_suspend(a, &idle));
	cli_core_abort_train(a, 0);
	assert_true(cli_core_idle(a));
	assert_false(cli_core_suspend(a, &idle)); /* holds its model */
	cli_core_release(a);
	assert_true(cli_core_suspend(a, &idle));
	cfg.dp_noise_from_seed = false;
	assert_int_equal(cli_core_new(&cfg, &c), SHOAL_OK);
	assert_false(cli_core_suspend(c, &idle)); /* DP noise from a secret key */
	cli_core_free(c);
	assert_int_equal(cli_core_resume(&cfg, &idle, &c), SHOAL_EINVAL);
	assert_null(c);
	cli_core_free(a);
	cli_core_free(b);
}

/* A client that does not handle the asked encoding skips the round. */
static void
test_unsupported_encoding_skipped(void **state)
{
	cli_core *c = make_client_caps(MSG_CX_DOWN_Q8);
	register_client(c);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	msg t = {.type = MSG_TASK, .round = 1, .epochs = 1, .batch = 1, .lr = 0.1f,
	         .model_ver = 1, .dim = DIM, .vec = (const uint8_t *)global};
	strcpy(t.model, "toy");
	strcpy(t.up, "randk:0.1,q4");
	reply(c, &t, 0);
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	assert_int_equal(cli_core_stats(c)->rounds_trained, 0);
	cli_core_free(c);
}

/* Rand-k is unbiased: even with error feedback on, nothing is kept back. */
static void
test_randk_skips_error_feedback(void **state)
{
	cli_core *c = make_client_caps(MSG_CX_ALL);
	register_client(c);
	msg m;
	uint8_t *k;
	expect_send(c, 0, MSG_CHECKIN, &m, &k);
	free(k);
	msg t = {.type = MSG_TASK, .round = 1, .epochs = 1, .batch = 1, .lr = 0.1f,
	         .model_ver = 1, .dim = DIM, .vec = (const uint8_t *)global};
	strcpy(t.model, "toy");
	strcpy(t.up, "randk:0.5,f32");
	reply(c, &t, 0);
	cli_step st;
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_TRAIN);
	for (int j = 0; j < DIM; j++)
		st.params[j] += 0.25f * (float)(j + 1);
	assert_int_equal(cli_core_submit(c, 1, 0, 0), SHOAL_OK);
	expect_send(c, 0, MSG_UPDATE, &m, &k);
	assert_non_null(m.blob);
	free(k);
	assert_null(cli_core_residual(c));
	cli_core_free(c);
}

/* ERROR -25 (rate limit): the server did not look at the request, so the
 * same bytes go again after a backoff that doubles while it keeps
 * refusing (never dropping the update), and resets once it answers. */
static void
test_rate_limited_update_resent(void **state)
{
	cli_core *c = make_client();
	register_client(c);
	give_task(c, 2);
	cli_step st;
	cli_core_step(c, 0, &st);
	st.params[1] = 7;
	assert_int_equal(cli_core_submit(c, 3, 0.5f, 0), SHOAL_OK);
	cli_core_step(c, 0, &st);
	assert_int_equal(st.action, CLI_SEND);
	size_t len = st.len;
	uint8_t *first = malloc(len);
	memcpy(first, st.buf, len);
	uint64_t now = 0;
	msg e = {.type = MSG_ERROR, .code = SHOAL_ERATE};
	strcpy(e.text, "too many requests");
	for (int i = 0; i < 5; i++) {
		reply(c, &e, now);
		cli_core_step(c, now, &st);
		assert_int_equal(st.action, CLI_SLEEP);
		uint64_t wait = st.until_ms - now, cap = 100u << i;
		if (cap > 1000)
			cap = 1000;
		assert_true(wait >= cap / 2 && wait <= cap);
		now = st.until_ms;
		cli_core_step(c, now, &st);
		assert_int_equal(st.action, CLI_SEND);
		assert_int_equal(st.len, len);
		assert_memory_equal(st.buf, first, len);
	}
	assert_int_equal(cli_core_stats(c)->updates_late, 0);
	msg ack = {.type = MSG_ACK, .round = 2};
	reply(c, &ack, now);
	assert_int_equal(cli_core_stats(c)->updates_acked, 1);
	/* Answered again: the next refusal starts from the shortest backoff. */
	msg m;
	uint8_t *k;
	expect_send(c, now, MSG_CHECKIN, &m, &k);
	free(k);
	reply(c, &e, now);
	cli_core_step(c, now, &st);
	assert_int_equal(st.action, CLI_SLEEP);
	assert_true(st.until_ms - now >= 50 && st.until_ms - now <= 100);
	free(first);
	cli_core_free(c);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_register_then_checkin),
		cmocka_unit_test(test_task_train_submit_uploads_delta),
		cmocka_unit_test(test_retry_resends_identical_update),
		cmocka_unit_test(test_rate_limited_update_resent),
		cmocka_unit_test(test_backoff_doubles_and_caps),
		cmocka_unit_test(test_wait_sleeps_retry_ms),
		cmocka_unit_test(test_stale_update_counts_late),
		cmocka_unit_test(test_unknown_client_registers_again),
		cmocka_unit_test(test_done_ends_client),
		cmocka_unit_test(test_model_refusal_is_fatal),
		cmocka_unit_test(test_task_for_other_model_is_fatal),
		cmocka_unit_test(test_malformed_reply_backs_off),
		cmocka_unit_test(test_nonfinite_local_model_not_sent),
		cmocka_unit_test(test_abort_train_checks_in_again),
		cmocka_unit_test(test_bad_config_refused),
		cmocka_unit_test(test_compressed_update_and_residual),
		cmocka_unit_test(test_downlink_delta_applied),
		cmocka_unit_test(test_release_and_restore),
		cmocka_unit_test(test_suspend_and_resume),
		cmocka_unit_test(test_unsupported_encoding_skipped),
		cmocka_unit_test(test_randk_skips_error_feedback),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
