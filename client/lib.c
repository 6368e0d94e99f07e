/* lib.c - libshoal-client (include/shoal/client.h): the deployment driver of
 * the client core. It validates the options, then runs cli_core_step() with
 * the nng transport, the monotonic clock and the user's train callback. */
#include "shoal/client.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "client/core.h"
#include "common/codec.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/transport.h"

enum {
	LIB_SLICE_MS = 100, /* longest sleep between checks of *stop */
	LIB_NAME_MAX = 64,
};

static bool
stopped(const shoal_client_options *o)
{
	return o->stop != NULL && *o->stop != 0;
}

/* E * ceil(n / B): the steps of the full work. */
static uint32_t
full_steps(uint32_t n, uint32_t batch, uint32_t epochs)
{
	uint64_t full = batch > 0 ? (uint64_t)epochs * (((uint64_t)n + batch - 1) / batch) : 1;
	return full > UINT32_MAX ? UINT32_MAX : (uint32_t)full;
}

/* The step cap of a budgeted task: floor(budget / ms_per_step) within
 * [1, E * ceil(n / B)]; 0 (no cap known: the callback may measure) when
 * nothing was measured yet (ms_per_step 0). */
static uint32_t
budget_steps(uint32_t budget_ms, double ms_per_step, uint32_t n, uint32_t batch,
             uint32_t epochs)
{
	uint32_t full = full_steps(n, batch, epochs);

	if (budget_ms == 0 || !(ms_per_step > 0))
		return 0;
	double s = floor(budget_ms / ms_per_step);
	return s < 1 ? 1 : s >= (double)full ? (uint32_t)full : (uint32_t)s;
}

/* Sleep until `until` (monotonic ms) or *stop. */
static void
sleep_until(const shoal_client_options *o, uint64_t until)
{
	uint64_t t;

	while (!stopped(o) && (t = clock_now_ms()) < until) {
		uint64_t d = until - t < LIB_SLICE_MS ? until - t : LIB_SLICE_MS;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)d * 1000000L};
		nanosleep(&ts, NULL);
	}
}

void
shoal_client_options_init(shoal_client_options *o)
{
	memset(o, 0, sizeof *o);
	o->seed = 0;
	o->backoff_min_ms = 100;
	o->backoff_max_ms = 5000;
	o->max_message = (size_t)64 << 20;
	o->compress = "topk:0.01,q8";
	o->error_feedback = 1;
	o->downlink_q8 = 1;
}

/* An update was acknowledged: hand the residual to the caller. */
static void
acknowledged(const shoal_client_options *o, const cli_core *core)
{
	const float *r = cli_core_residual(core);

	if (o->residual_io != NULL && r != NULL)
		memcpy(o->residual_io, r, o->dim * sizeof(float));
	if (o->on_ack != NULL)
		o->on_ack(o->user, cli_core_stats(core)->last_round);
}

/* The MSG_CX_* bits a client with these options announces, or
 * SHOAL_EINVAL for a bad compress spec. */
static shoal_err
offer(const shoal_client_options *o, uint32_t *caps)
{
	cx_config c;
	bool none;

	/* Secure aggregation is always built in. */
	*caps = (o->downlink_q8 ? MSG_CX_DOWN_Q8 : 0) | MSG_CX_SECAGG;
	if (o->compress == NULL || strcmp(o->compress, "any") == 0) {
		*caps = o->downlink_q8 ? MSG_CX_ALL : MSG_CX_ALL & ~MSG_CX_DOWN_Q8;
		return SHOAL_OK;
	}
	if (cx_parse_spec(o->compress, &c, &none) != SHOAL_OK) {
		log_error("client option compress '%s': expected any, none, topk:RATIO or "
		          "randk:RATIO with an optional ,q8 ,q4 or ,f32", o->compress);
		return SHOAL_EINVAL;
	}
	if (!none)
		*caps |= cx_required_caps(&c);
	return SHOAL_OK;
}

/* Errors: SHOAL_EINVAL, with a log line naming the option. */
static shoal_err
validate(const shoal_client_options *o)
{
	size_t n;

	if (o->url == NULL || o->url[0] == '\0') {
		log_error("client option url is empty (e.g. tcp://10.0.0.2:7000)");
		return SHOAL_EINVAL;
	}
	n = o->name != NULL ? strlen(o->name) : 0;
	if (n == 0 || n > LIB_NAME_MAX) {
		log_error("client option name must be 1..%d characters (got %zu)", LIB_NAME_MAX, n);
		return SHOAL_EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		if (o->name[i] < 0x21 || o->name[i] > 0x7e) {
			log_error("client option name must be printable ASCII without spaces");
			return SHOAL_EINVAL;
		}
	}
	if (o->model == NULL || o->model[0] == '\0') {
		log_error("client option model is empty (e.g. \"logreg\")");
		return SHOAL_EINVAL;
	}
	if (o->dim == 0 || o->dim > UINT32_MAX) {
		log_error("client option dim must be 1..%u (got %zu)", (unsigned)UINT32_MAX, o->dim);
		return SHOAL_EINVAL;
	}
	if (o->n_examples == 0) {
		log_error("client option n_examples must be > 0 (it is the FedAvg weight)");
		return SHOAL_EINVAL;
	}
	if (o->train == NULL) {
		log_error("client option train (the training callback) is NULL");
		return SHOAL_EINVAL;
	}
	if (o->backoff_min_ms == 0 || o->backoff_min_ms > o->backoff_max_ms) {
		log_error("client options backoff_min_ms (%u) and backoff_max_ms (%u) need "
		          "0 < min <= max",
		          (unsigned)o->backoff_min_ms, (unsigned)o->backoff_max_ms);
		return SHOAL_EINVAL;
	}
	if (o->max_message < 1024) {
		log_error("client option max_message must be at least 1024 bytes (got %zu)",
		          o->max_message);
		return SHOAL_EINVAL;
	}
	if (tp_url_is_tls(o->url) && o->tls_ca == NULL) {
		log_error("client option tls_ca is needed for %s: the CA certificate that signed the "
		          "server's certificate", o->url);
		return SHOAL_EINVAL;
	}
	if ((o->tls_cert == NULL) != (o->tls_key == NULL)) {
		log_error("client options tls_cert and tls_key go together");
		return SHOAL_EINVAL;
	}
	return SHOAL_OK;
}

static void
fill_stats(const cli_core *core, shoal_client_stats *stats)
{
	const cli_stats *cs;

	if (stats == NULL)
		return;
	memset(stats, 0, sizeof *stats);
	if (core == NULL)
		return;
	cs = cli_core_stats(core);
	stats->rounds_trained = cs->rounds_trained;
	stats->updates_acked = cs->updates_acked;
	stats->updates_late = cs->updates_late;
	stats->transport_errors = cs->transport_errors;
	stats->last_round = cs->last_round;
}

shoal_err
shoal_client_run(const shoal_client_options *o, shoal_client_stats *stats)
{
	cli_config cfg;
	cli_core *core = NULL;
	tp_client *tp = NULL;
	cli_step st;
	shoal_err e;
	bool unreachable = false, answered = false;

	fill_stats(NULL, stats);
	if ((e = validate(o)) != SHOAL_OK)
		return e;
	memset(&cfg, 0, sizeof cfg);
	cfg.name = o->name;
	cfg.model = o->model;
	cfg.dim = (uint32_t)o->dim;
	cfg.n_examples = o->n_examples;
	cfg.seed = o->seed;
	cfg.backoff_min_ms = o->backoff_min_ms;
	cfg.backoff_max_ms = o->backoff_max_ms;
	cfg.error_feedback = o->error_feedback != 0;
	cfg.dp_noise_from_seed = o->dp_noise_from_seed != 0;
	cfg.identity_sk = o->identity_sk;
	cfg.enroll_token = o->enroll_token;
	if ((e = offer(o, &cfg.cx_caps)) != SHOAL_OK)
		return e;
	if ((e = cli_core_new(&cfg, &core)) != SHOAL_OK) {
		log_error("client %s: cannot start: %s", o->name, shoal_strerror(e));
		return e;
	}
	if (o->residual_io != NULL && o->residual_load &&
	    (e = cli_core_set_residual(core, o->residual_io)) != SHOAL_OK) {
		log_error("client %s: cannot load the saved residual: %s", o->name,
		          shoal_strerror(e));
		cli_core_free(core);
		return e;
	}
	tp_tls tls = {.cert = o->tls_cert, .key = o->tls_key, .ca = o->tls_ca,
	              .server_name = o->tls_server_name};
	if ((e = tp_client_open_tls(&tp, o->url, o->max_message,
	                            tp_url_is_tls(o->url) ? &tls : NULL)) != SHOAL_OK) {
		cli_core_free(core);
		return e;
	}

	double ms_per_step = 0; /* measured in budgeted rounds; 0: not yet */
	for (;;) {
		if (stopped(o)) {
			e = SHOAL_ECLOSED;
			break;
		}
		cli_core_step(core, clock_now_ms(), &st);
		if (st.action == CLI_DONE) {
			e = st.err;
			if (e == SHOAL_OK && o->final_params != NULL && cli_core_global(core) != NULL)
				memcpy(o->final_params, cli_core_global(core), o->dim * sizeof(float));
			if (e != SHOAL_OK)
				log_error("client %s: giving up: %s", o->name, shoal_strerror(e));
			break;
		}
		if (st.action == CLI_SEND) {
			tp_msg *reply = NULL;
			e = tp_client_request_stop(tp, st.buf, st.len,
			                           (int)cli_core_request_timeout_ms(core), o->stop, &reply);
			if (e == SHOAL_OK) {
				answered = true;
				if (unreachable) {
					log_info("client %s: server at %s is answering again", o->name, o->url);
					unreachable = false;
				}
				uint32_t acked = cli_core_stats(core)->updates_acked;
				cli_core_on_reply(core, tp_msg_data(reply), tp_msg_len(reply), clock_now_ms());
				tp_msg_free(reply);
				if (cli_core_stats(core)->updates_acked != acked)
					acknowledged(o, core);
			} else if (stopped(o)) {
				e = SHOAL_ECLOSED;
				break;
			} else {
				if (!unreachable) {
					log_info("client %s: server at %s not answering (%s); retrying with "
					         "backoff",
					         o->name, o->url, shoal_strerror(e));
					/* nng does not report failed handshakes: say what to check. */
					if (tp_url_is_tls(o->url) && e == SHOAL_ETIMEDOUT && !answered)
						log_warn("client %s: no answer over TLS yet; if the server is up, "
						         "check that its certificate is signed by the CA in %s "
						         "and names '%s', and that it accepts this client's "
						         "certificate (%s)", o->name, o->tls_ca,
						         o->tls_server_name != NULL ? o->tls_server_name
						                                    : "the URL's host",
						         o->tls_cert != NULL ? o->tls_cert : "none given");
					unreachable = true;
				}
				cli_core_on_transport_error(core, e, clock_now_ms());
			}
		} else if (st.action == CLI_SLEEP) {
			sleep_until(o, st.until_ms);
		} else if (st.action == CLI_TRAIN) {
			shoal_train_info info = {
				.round = st.round,
				.epochs = st.epochs,
				.batch = st.batch,
				.lr = st.lr,
				.momentum = st.momentum,
				.weight_decay = st.weight_decay,
				.prox_mu = st.prox_mu,
				.seed = st.seed,
				.deadline_ms = st.deadline_ms,
			};
			uint32_t n = o->n_examples, done = 0;
			float loss = 0.0f;
			uint64_t t0 = clock_now_ms();
			if (st.budget_ms > 0) {
				info.budget_ms = st.budget_ms;
				info.max_steps = budget_steps(st.budget_ms, ms_per_step, o->n_examples,
				                              st.batch, st.epochs);
				info.steps_done = &done;
			}
			int rc = o->train(o->user, st.params, st.dim, &info, &n, &loss);
			if (rc == 0 && st.budget_ms > 0) {
				uint32_t full = full_steps(n, st.batch, st.epochs);
				if (done == 0 || done > full)
					done = info.max_steps > 0 && info.max_steps < full ? info.max_steps : full;
				ms_per_step = (double)(clock_now_ms() - t0) / done;
			}
			if (rc != 0) {
				log_info("client %s: training callback skipped round %u (returned %d)",
				         o->name, (unsigned)st.round, rc);
				cli_core_abort_train(core, clock_now_ms());
			} else if ((e = cli_core_submit_steps(core, n, done, loss, clock_now_ms())) !=
			           SHOAL_OK) {
				log_warn("client %s: update for round %u not sent: %s", o->name,
				         (unsigned)st.round, shoal_strerror(e));
			}
		}
	}
	fill_stats(core, stats);
	tp_client_close(tp);
	cli_core_free(core);
	return e;
}
