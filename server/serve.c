/* serve.c - the deployment driver of the server core (see serve.h): feeds
 * nng requests and the monotonic wall clock to srv_core, sends its replies,
 * and turns its events into metrics lines and progress lines. */
#include "server/serve.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/transport.h"

enum {
	SERVE_TICK_MS = 100,  /* longest wait, so *stop is noticed promptly */
	SERVE_FLUSH_MS = 100, /* answer stragglers before the socket closes */
	SERVE_LIMIT_LOG_MS = 10000, /* at most one rate-limit warning this often */
};

/* What the driver refuses itself, for the metrics and the log. */
typedef struct serve_limits {
	uint64_t rate;            /* requests over the rate limit, in all */
	uint64_t rate_reported;   /* ... already in a metrics line */
	uint64_t rate_logged;     /* ... already in a warning */
	uint64_t last_log_ms;
	uint64_t conns_reported;  /* refused connections in metrics lines */
} serve_limits;

/* "812 kB" / "8.0 MB" */
static void
fmt_bytes(char *out, size_t n, uint64_t b)
{
	if (b < 1000000u)
		snprintf(out, n, "%.0f kB", (double)b / 1e3);
	else
		snprintf(out, n, "%.1f MB", (double)b / 1e6);
}

void
srv_print_progress(const srv_round_stats *st, uint32_t rounds)
{
	char up[32], down[32], rnd[32], res[64], eps[32] = "";
	double secs = st->end_ms >= st->start_ms ? (double)(st->end_ms - st->start_ms) / 1e3 : 0.0;

	fmt_bytes(up, sizeof up, st->bytes_up);
	fmt_bytes(down, sizeof down, st->bytes_down);
	if (rounds > 0)
		snprintf(rnd, sizeof rnd, "%" PRIu32 "/%" PRIu32, st->round, rounds);
	else
		snprintf(rnd, sizeof rnd, "%" PRIu32, st->round);
	if (st->abandoned)
		snprintf(res, sizeof res, "abandoned (too few updates)");
	else if (isfinite(st->accuracy) && isfinite(st->loss))
		snprintf(res, sizeof res, "acc %.4f  loss %.4f", st->accuracy, st->loss);
	else
		snprintf(res, sizeof res, "acc -  loss -");
	if (!isnan(st->epsilon)) /* DP on */
		snprintf(eps, sizeof eps, "  eps %.3f", st->epsilon);
	fprintf(stderr,
	        "round %s  %s  clients %" PRIu32 "/%" PRIu32 "  dropped %" PRIu32
	        "  up %s  down %s%s  %.1f s\n",
	        rnd, res, st->reported, st->selected, st->dropped, up, down, eps, secs);
}

/* Send every reply the core produced (after before_send) and report its
 * events. */
static void
drain(srv_core *core, tp_server *tp, const srv_serve_opts *o, serve_limits *lim)
{
	srv_reply r;
	srv_event ev;

	if (o->before_send != NULL)
		o->before_send(o->user, core);
	while (srv_core_pop_reply(core, &r)) {
		shoal_err e = tp_server_reply(tp, r.req, r.buf, r.len, r.close);
		if (e != SHOAL_OK)
			log_debug("reply to request %" PRIx64 " not sent: %s", r.req, shoal_strerror(e));
		free(r.buf);
	}
	while (srv_core_pop_event(core, &ev)) {
		switch (ev.kind) {
		case SRV_EV_ROUND_START:
			log_debug("round %" PRIu32 " started with %" PRIu32 " clients", ev.stats.round,
			          ev.stats.selected);
			break;
		case SRV_EV_ROUND_END: {
			tp_conn_stats cs;
			tp_server_conns(tp, &cs);
			ev.stats.refused[-SHOAL_ERATE] += (uint32_t)(lim->rate - lim->rate_reported);
			lim->rate_reported = lim->rate;
			ev.stats.conns_refused = (uint32_t)(cs.refused - lim->conns_reported);
			lim->conns_reported = cs.refused;
			ev.stats.conns_open = o->report_conns ? cs.open : 0;
			if (o->metrics != NULL)
				srv_metrics_write(o->metrics, &ev.stats, -1.0);
			if (o->progress)
				srv_print_progress(&ev.stats, o->rounds);
			if (o->on_round != NULL)
				o->on_round(o->user, &ev.stats);
			break;
		}
		case SRV_EV_FINISHED: /* the core logs it */
			break;
		}
	}
}

/* A request over its connection's rate: ERROR -25 without decoding it
 * (the client resends it after a backoff), counted, and a warning now and
 * then. */
static void
refuse_rate(tp_server *tp, const srv_serve_opts *o, serve_limits *lim, uint64_t req,
            uint64_t now)
{
	char who[80], text[MSG_TEXT_MAX + 1];
	uint8_t *buf;
	size_t len;

	lim->rate++;
	tp_server_peer_addr(tp, req, who, sizeof who);
	log_debug("rate limit: refused a request from %s (connection %u)", who,
	          tp_server_peer(tp, req));
	if (lim->last_log_ms == 0 || now - lim->last_log_ms >= SERVE_LIMIT_LOG_MS) {
		log_warn("rate limit: refused %llu request(s) over %g a second per connection "
		         "since the last report, the latest from %s; clients back off and resend "
		         "(--rate-limit)", (unsigned long long)(lim->rate - lim->rate_logged),
		         o->rate_limit, who);
		lim->rate_logged = lim->rate;
		lim->last_log_ms = now;
	}
	snprintf(text, sizeof text, "too many requests on this connection (over %g a second): "
	         "back off and send the same request again", o->rate_limit);
	if (msg_encode_error(SHOAL_ERATE, text, &buf, &len) != SHOAL_OK) {
		tp_server_reply(tp, req, NULL, 0, true); /* out of memory: drop the peer */
		return;
	}
	tp_server_reply(tp, req, buf, len, false);
	free(buf);
}

/* One request: refused over the rate limit, else to the core. */
static void
on_request(srv_core *core, tp_server *tp, const srv_serve_opts *o, serve_limits *lim,
           uint64_t req, tp_msg *m, uint64_t now)
{
	if (tp_server_limited(tp, req))
		refuse_rate(tp, o, lim, req, now);
	else
		srv_core_on_request(core, req, tp_msg_data(m), tp_msg_len(m), now);
	tp_msg_free(m);
}

/* Release parked requests, then keep answering arrivals for a moment so the
 * replies leave before the socket closes. */
static void
shut_down(srv_core *core, tp_server *tp, const srv_serve_opts *o, serve_limits *lim)
{
	uint64_t t = clock_now_ms(), end = t + SERVE_FLUSH_MS;

	srv_core_release_all(core, t);
	drain(core, tp, o, lim);
	while ((t = clock_now_ms()) < end) {
		uint64_t req;
		tp_msg *m;
		if (tp_server_recv(tp, (int)(end - t), &req, &m) == SHOAL_OK) {
			t = clock_now_ms();
			on_request(core, tp, o, lim, req, m, t);
			srv_core_release_all(core, t);
			drain(core, tp, o, lim);
		}
	}
	if (lim->rate > 0) {
		tp_conn_stats cs;
		tp_server_conns(tp, &cs);
		log_info("rate limit: refused %llu request(s) in all (%llu since the last report); "
		         "%llu connection(s) refused over --max-connections; at most %u open at once",
		         (unsigned long long)lim->rate, (unsigned long long)(lim->rate - lim->rate_logged),
		         (unsigned long long)cs.refused, cs.peak);
	}
	tp_server_close(tp);
}

shoal_err
srv_serve(srv_core *core, const srv_serve_opts *o)
{
	tp_server *tp;
	shoal_err e;
	bool lingering = false;
	uint64_t linger_end = 0;
	serve_limits lim = {0};

	if (o->n_listen == 0) {
		log_error("no listen URL given");
		return SHOAL_EINVAL;
	}
	if ((e = tp_server_open(&tp, o->max_message)) != SHOAL_OK)
		return e;
	if (o->tls != NULL && (e = tp_server_set_tls(tp, o->tls)) != SHOAL_OK) {
		tp_server_close(tp);
		return e;
	}
	tp_server_set_rate(tp, o->rate_limit, o->rate_burst > 0 ? o->rate_burst : 2 * o->rate_limit);
	tp_server_set_max_conns(tp, o->max_conns);
	for (size_t i = 0; i < o->n_listen; i++) {
		if ((e = tp_server_listen(tp, o->listen[i])) != SHOAL_OK) {
			tp_server_close(tp);
			return e;
		}
	}
	if (o->on_listening != NULL)
		o->on_listening(o->user);

	for (;;) {
		uint64_t t = clock_now_ms(), dl, req;
		int timeout = SERVE_TICK_MS;
		tp_msg *m;

		if (o->stop != NULL && *o->stop) {
			log_info("stopping: releasing parked clients");
			shut_down(core, tp, o, &lim);
			return SHOAL_ECLOSED;
		}
		if (srv_core_finished(core)) {
			if (!lingering) {
				lingering = true;
				linger_end = t + o->linger_ms;
			}
			if (t >= linger_end) {
				shut_down(core, tp, o, &lim);
				return SHOAL_OK;
			}
			if (linger_end - t < (uint64_t)timeout)
				timeout = (int)(linger_end - t);
		}
		dl = srv_core_next_deadline(core);
		if (dl != UINT64_MAX)
			timeout = dl <= t ? 0 : dl - t < (uint64_t)timeout ? (int)(dl - t) : timeout;

		e = tp_server_recv(tp, timeout, &req, &m);
		t = clock_now_ms();
		if (e == SHOAL_OK)
			on_request(core, tp, o, &lim, req, m, t);
		else if (e != SHOAL_ETIMEDOUT)
			log_warn("receive failed: %s", shoal_strerror(e));
		srv_core_on_timer(core, t);
		drain(core, tp, o, &lim);
	}
}
