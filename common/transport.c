/* transport.c - the nng adapter (see transport.h): a REP server that holds
 * many requests at once on nng contexts, and a REQ client with reconnection.
 *
 * Server: TP_RECV_POOL contexts are always receiving. A context that gets a
 * request moves to "held" (it owns that request until the reply is sent), and
 * another context (an idle one, or a new one) starts receiving in its place,
 * so receiving never stops however many requests are parked. The request id
 * handed upward encodes the context index and a per-context generation:
 *   req = (gen << 32) | (index + 1)
 * so tp_server_reply finds the context in O(1) and a stale id (already
 * answered) is refused. Completed requests go to one mutex/condvar queue read
 * by tp_server_recv. All nng callbacks take s->mu; nng operations are started
 * outside it, counted in cb_active so that close can wait for them. */
#include "common/transport.h"

#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

enum {
	TP_RECV_POOL = 16,       /* contexts kept receiving */
	TP_CLOSE_DELAY_MS = 200, /* reply-then-close: let the reply reach the wire */
	TP_RECONN_MIN_MS = 100,
	TP_RECONN_MAX_MS = 5000,
	/* REQ resend: the client core retries itself; nng must not duplicate. */
	TP_RESEND_MS = 24 * 3600 * 1000,
};

struct tp_msg {
	nng_msg *m;
};

const uint8_t *
tp_msg_data(const tp_msg *m)
{
	return nng_msg_body(m->m);
}

size_t
tp_msg_len(const tp_msg *m)
{
	return nng_msg_len(m->m);
}

void
tp_msg_free(tp_msg *m)
{
	if (m == NULL)
		return;
	nng_msg_free(m->m);
	free(m);
}

/* Takes ownership of nm (freed on failure). */
static tp_msg *
msg_wrap(nng_msg *nm)
{
	tp_msg *m = malloc(sizeof *m);
	if (m == NULL) {
		nng_msg_free(nm);
		return NULL;
	}
	m->m = nm;
	return m;
}

static shoal_err
map_err(int rv)
{
	switch (rv) {
	case 0: return SHOAL_OK;
	case NNG_ETIMEDOUT: return SHOAL_ETIMEDOUT;
	case NNG_ECLOSED:
	case NNG_ECANCELED: return SHOAL_ECLOSED;
	case NNG_ENOMEM: return SHOAL_ENOMEM;
	case NNG_EMSGSIZE: return SHOAL_ETOOBIG;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
	case NNG_ENOTSUP: return SHOAL_EINVAL;
	default: return SHOAL_ETRANSPORT;
	}
}

/* A hint for the log line of a failed listen/dial. */
static const char *
hint_for(int rv)
{
	switch (rv) {
	case NNG_EADDRINUSE:
		return "address in use: is another shoal-server running on this port? "
		       "choose another with --listen";
	case NNG_EADDRINVAL:
	case NNG_EINVAL:
		return "malformed address: use tcp://HOST:PORT, ipc:///PATH or inproc://NAME";
	case NNG_ENOTSUP: return "unsupported scheme: use tcp://, ipc:// or inproc://";
	case NNG_EPERM:
		return "permission denied: ports below 1024 need privileges; for ipc:// "
		       "check the directory";
	case NNG_ENOENT: return "no such file or directory (ipc:// path?)";
	default: return "";
	}
}

/* Absolute CLOCK_MONOTONIC deadline timeout_ms from now. */
static struct timespec
deadline_in(int timeout_ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static int
cond_init_mono(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int rc;

	if (pthread_condattr_init(&a) != 0)
		return -1;
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	rc = pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
	return rc;
}

/* ------------------------------------------------------------------ server */

typedef enum {
	TC_IDLE = 0, /* not in use, on the idle list */
	TC_RECV,     /* waiting for a request */
	TC_HOLD,     /* owns a request not answered yet */
	TC_SEND,     /* sending the reply */
	TC_LINGER,   /* reply sent; waiting to close the peer's pipe */
} tc_state;

typedef struct tp_ctx {
	tp_server *s;
	uint32_t idx;
	uint32_t gen;
	nng_ctx ctx;
	nng_aio *aio;
	tc_state st;
	nng_pipe pipe;     /* peer of the held request */
	bool close_after;  /* drop the peer once the reply is sent */
	struct tp_ctx *next_idle;
} tp_ctx;

typedef struct tp_item {
	uint64_t req;
	nng_msg *m;
	struct tp_item *next;
} tp_item;

struct tp_server {
	nng_socket sock;
	size_t max_msg;
	pthread_mutex_t mu;
	pthread_cond_t cv_q;  /* queue not empty, or closing */
	pthread_cond_t cv_cb; /* cb_active dropped */
	tp_ctx **ctx;         /* every context ever made, by index */
	uint32_t n_ctx, cap_ctx;
	tp_ctx *idle;
	uint32_t receiving;   /* contexts in TC_RECV */
	unsigned cb_active;   /* nng calls in progress outside mu */
	bool closing;
	tp_item *qhead, *qtail;
	uint64_t received;
	int bound_port;
};

static void srv_ctx_cb(void *arg);

/* Make a context (not yet receiving) and register it. Called without mu.
 * Returns NULL on failure (logged) or when the server is closing. */
static tp_ctx *
srv_ctx_new(tp_server *s)
{
	tp_ctx *c = calloc(1, sizeof *c);
	int rv;

	if (c == NULL)
		return NULL;
	c->s = s;
	if ((rv = nng_ctx_open(&c->ctx, s->sock)) != 0) {
		if (rv != NNG_ECLOSED)
			log_error("transport: cannot open context: %s", nng_strerror(rv));
		free(c);
		return NULL;
	}
	if ((rv = nng_aio_alloc(&c->aio, srv_ctx_cb, c)) != 0) {
		log_error("transport: cannot allocate aio: %s", nng_strerror(rv));
		nng_ctx_close(c->ctx);
		free(c);
		return NULL;
	}
	pthread_mutex_lock(&s->mu);
	if (!s->closing && s->n_ctx == s->cap_ctx) {
		uint32_t cap = s->cap_ctx ? 2 * s->cap_ctx : 32;
		tp_ctx **a = realloc(s->ctx, cap * sizeof *a);
		if (a != NULL) {
			s->ctx = a;
			s->cap_ctx = cap;
		}
	}
	if (s->closing || s->n_ctx == s->cap_ctx) {
		pthread_mutex_unlock(&s->mu);
		nng_ctx_close(c->ctx);
		nng_aio_free(c->aio);
		free(c);
		return NULL;
	}
	c->idx = s->n_ctx;
	s->ctx[s->n_ctx++] = c;
	pthread_mutex_unlock(&s->mu);
	return c;
}

/* Under mu: pick up to `want` contexts that should start receiving and mark
 * them TC_RECV; returns how many were taken from the idle list (in out[])
 * and sets *create to how many must be made. */
static unsigned
srv_take_idle(tp_server *s, tp_ctx **out, unsigned max, unsigned *create)
{
	unsigned n = 0;

	*create = 0;
	while (s->receiving < TP_RECV_POOL && n + *create < max) {
		if (s->idle != NULL) {
			tp_ctx *c = s->idle;
			s->idle = c->next_idle;
			c->next_idle = NULL;
			c->st = TC_RECV;
			out[n++] = c;
		} else {
			(*create)++;
		}
		s->receiving++;
	}
	return n;
}

/* Start receiving on the given contexts, creating `create` new ones. Called
 * without mu, with cb_active held; drops cb_active at the end. */
static void
srv_start_recv(tp_server *s, tp_ctx **cs, unsigned n, unsigned create)
{
	unsigned i;

	for (i = 0; i < n; i++)
		nng_ctx_recv(cs[i]->ctx, cs[i]->aio);
	for (i = 0; i < create; i++) {
		tp_ctx *c = srv_ctx_new(s);
		if (c == NULL) {
			pthread_mutex_lock(&s->mu);
			s->receiving--;
			pthread_mutex_unlock(&s->mu);
			continue;
		}
		/* c->st is only read under mu by others; set it before starting. */
		pthread_mutex_lock(&s->mu);
		c->st = TC_RECV;
		pthread_mutex_unlock(&s->mu);
		nng_ctx_recv(c->ctx, c->aio);
	}
	pthread_mutex_lock(&s->mu);
	s->cb_active--;
	pthread_cond_broadcast(&s->cv_cb);
	pthread_mutex_unlock(&s->mu);
}

/* Under mu: a context is free again; receive on it if the pool is short,
 * else park it on the idle list. Returns true if the caller must start
 * nng_ctx_recv on it (cb_active was taken). */
static bool
srv_ctx_release(tp_server *s, tp_ctx *c)
{
	if (!s->closing && s->receiving < TP_RECV_POOL) {
		c->st = TC_RECV;
		s->receiving++;
		s->cb_active++;
		return true;
	}
	c->st = TC_IDLE;
	c->next_idle = s->idle;
	s->idle = c;
	return false;
}

static void
srv_ctx_cb(void *arg)
{
	tp_ctx *c = arg;
	tp_server *s = c->s;
	int rv = nng_aio_result(c->aio);
	tp_ctx *start[TP_RECV_POOL];
	unsigned n = 0, create = 0;
	bool again = false, close_pipe = false, linger = false;
	nng_pipe pipe = NNG_PIPE_INITIALIZER;

	pthread_mutex_lock(&s->mu);
	switch (c->st) {
	case TC_RECV: {
		s->receiving--;
		if (rv != 0) {
			if (!s->closing && rv != NNG_ECLOSED && rv != NNG_ECANCELED)
				log_warn("transport: receive failed: %s", nng_strerror(rv));
			c->st = TC_IDLE;
			if (!s->closing && rv != NNG_ECLOSED && rv != NNG_ECANCELED)
				again = srv_ctx_release(s, c);
			else {
				c->next_idle = s->idle;
				s->idle = c;
			}
			break;
		}
		nng_msg *m = nng_aio_get_msg(c->aio);
		nng_aio_set_msg(c->aio, NULL);
		if (s->closing) {
			nng_msg_free(m);
			c->st = TC_IDLE;
			break;
		}
		tp_item *it = malloc(sizeof *it);
		if (it == NULL) {
			/* Drop the request: the client times out and retries. */
			nng_msg_free(m);
			again = srv_ctx_release(s, c);
			break;
		}
		c->gen++;
		c->st = TC_HOLD;
		c->pipe = nng_msg_get_pipe(m);
		it->req = ((uint64_t)c->gen << 32) | ((uint64_t)c->idx + 1);
		it->m = m;
		it->next = NULL;
		if (s->qtail)
			s->qtail->next = it;
		else
			s->qhead = it;
		s->qtail = it;
		s->received++;
		pthread_cond_signal(&s->cv_q);
		n = srv_take_idle(s, start, TP_RECV_POOL, &create);
		if (n + create > 0)
			s->cb_active++;
		break;
	}
	case TC_SEND:
		if (rv != 0) {
			/* Peer gone or socket closing: nothing anyone can do. */
			nng_msg *unsent = nng_aio_get_msg(c->aio);
			if (unsent != NULL)
				nng_msg_free(unsent);
			nng_aio_set_msg(c->aio, NULL);
			log_debug("transport: reply not sent: %s", nng_strerror(rv));
		}
		if (c->close_after && !s->closing) {
			c->st = TC_LINGER;
			s->cb_active++;
			linger = true;
			break;
		}
		if (!s->closing)
			again = srv_ctx_release(s, c);
		else
			c->st = TC_IDLE;
		break;
	case TC_LINGER:
		close_pipe = true;
		pipe = c->pipe;
		c->close_after = false;
		if (!s->closing)
			again = srv_ctx_release(s, c);
		else
			c->st = TC_IDLE;
		break;
	case TC_IDLE:
	case TC_HOLD:
		/* Canceled by close; nothing was in flight. */
		break;
	}
	pthread_mutex_unlock(&s->mu);

	if (close_pipe && nng_pipe_id(pipe) > 0)
		nng_pipe_close(pipe); /* the peer may be gone already: ignore */
	if (linger) {
		nng_sleep_aio(TP_CLOSE_DELAY_MS, c->aio);
		pthread_mutex_lock(&s->mu);
		s->cb_active--;
		pthread_cond_broadcast(&s->cv_cb);
		pthread_mutex_unlock(&s->mu);
	}
	if (again) {
		nng_ctx_recv(c->ctx, c->aio);
		pthread_mutex_lock(&s->mu);
		s->cb_active--;
		pthread_cond_broadcast(&s->cv_cb);
		pthread_mutex_unlock(&s->mu);
	}
	if (n + create > 0)
		srv_start_recv(s, start, n, create);
}

shoal_err
tp_server_open(tp_server **out, size_t max_msg)
{
	tp_server *s;
	int rv;

	*out = NULL;
	if ((s = calloc(1, sizeof *s)) == NULL)
		return SHOAL_ENOMEM;
	s->max_msg = max_msg;
	if (pthread_mutex_init(&s->mu, NULL) != 0) {
		free(s);
		return SHOAL_ENOMEM;
	}
	if (cond_init_mono(&s->cv_q) != 0) {
		pthread_mutex_destroy(&s->mu);
		free(s);
		return SHOAL_ENOMEM;
	}
	if (cond_init_mono(&s->cv_cb) != 0) {
		pthread_cond_destroy(&s->cv_q);
		pthread_mutex_destroy(&s->mu);
		free(s);
		return SHOAL_ENOMEM;
	}
	if ((rv = nng_rep0_open(&s->sock)) != 0) {
		log_error("transport: cannot open REP socket: %s", nng_strerror(rv));
		goto fail;
	}
	if (max_msg > 0 && (rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, max_msg)) != 0) {
		log_error("transport: cannot set max message size: %s", nng_strerror(rv));
		nng_close(s->sock);
		goto fail;
	}
	/* Fill the receive pool. */
	for (unsigned i = 0; i < TP_RECV_POOL; i++) {
		tp_ctx *c = srv_ctx_new(s);
		if (c == NULL) {
			tp_server_close(s);
			return SHOAL_ETRANSPORT;
		}
		pthread_mutex_lock(&s->mu);
		c->st = TC_RECV;
		s->receiving++;
		pthread_mutex_unlock(&s->mu);
		nng_ctx_recv(c->ctx, c->aio);
	}
	*out = s;
	return SHOAL_OK;
fail:
	pthread_cond_destroy(&s->cv_cb);
	pthread_cond_destroy(&s->cv_q);
	pthread_mutex_destroy(&s->mu);
	free(s);
	return map_err(rv) == SHOAL_ENOMEM ? SHOAL_ENOMEM : SHOAL_ETRANSPORT;
}

/* "tcp://host:0" with the real port, for the log line. */
static void
url_with_port(const char *url, int port, char *out, size_t n)
{
	const char *colon = strrchr(url, ':');
	const char *slashes = strstr(url, "://");

	if (port > 0 && colon != NULL && slashes != NULL && colon > slashes + 2 &&
	    strcmp(colon, ":0") == 0)
		snprintf(out, n, "%.*s:%d", (int)(colon - url), url, port);
	else
		snprintf(out, n, "%s", url);
}

shoal_err
tp_server_listen(tp_server *s, const char *url)
{
	nng_listener l;
	int rv, port = 0;
	char shown[512];

	if (url == NULL || *url == '\0') {
		log_error("transport: empty listen URL");
		return SHOAL_EINVAL;
	}
	if ((rv = nng_listen(s->sock, url, &l, 0)) != 0) {
		const char *h = hint_for(rv);
		log_error("transport: cannot listen on %s: %s%s%s", url, nng_strerror(rv),
		          *h ? "; " : "", h);
		return map_err(rv) == SHOAL_EINVAL ? SHOAL_EINVAL : SHOAL_ETRANSPORT;
	}
	if (strncmp(url, "tcp", 3) == 0 &&
	    nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port) == 0) {
		pthread_mutex_lock(&s->mu);
		s->bound_port = port;
		pthread_mutex_unlock(&s->mu);
	}
	url_with_port(url, port, shown, sizeof shown);
	log_info("listening on %s", shown);
	return SHOAL_OK;
}

int
tp_server_bound_port(tp_server *s)
{
	int p;
	pthread_mutex_lock(&s->mu);
	p = s->bound_port;
	pthread_mutex_unlock(&s->mu);
	return p;
}

shoal_err
tp_server_recv(tp_server *s, int timeout_ms, uint64_t *req, tp_msg **msg)
{
	struct timespec dl;
	tp_item *it;

	*msg = NULL;
	if (timeout_ms > 0)
		dl = deadline_in(timeout_ms);
	pthread_mutex_lock(&s->mu);
	while (s->qhead == NULL && !s->closing) {
		if (timeout_ms == 0)
			break;
		if (timeout_ms < 0) {
			pthread_cond_wait(&s->cv_q, &s->mu);
		} else if (pthread_cond_timedwait(&s->cv_q, &s->mu, &dl) == ETIMEDOUT) {
			break;
		}
	}
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		return SHOAL_ECLOSED;
	}
	if ((it = s->qhead) == NULL) {
		pthread_mutex_unlock(&s->mu);
		return SHOAL_ETIMEDOUT;
	}
	s->qhead = it->next;
	if (s->qhead == NULL)
		s->qtail = NULL;
	pthread_mutex_unlock(&s->mu);

	*req = it->req;
	*msg = msg_wrap(it->m);
	free(it);
	if (*msg == NULL) {
		/* Answer nothing: the held context is freed by an empty reply. */
		tp_server_reply(s, *req, NULL, 0, true);
		return SHOAL_ENOMEM;
	}
	return SHOAL_OK;
}

shoal_err
tp_server_reply(tp_server *s, uint64_t req, const uint8_t *buf, size_t len, bool close)
{
	uint32_t idx = (uint32_t)(req & 0xffffffffu);
	uint32_t gen = (uint32_t)(req >> 32);
	nng_msg *m;
	tp_ctx *c;
	int rv;

	if (idx == 0)
		return SHOAL_EINVAL;
	if ((rv = nng_msg_alloc(&m, len)) != 0)
		return SHOAL_ENOMEM;
	if (len > 0)
		memcpy(nng_msg_body(m), buf, len);

	pthread_mutex_lock(&s->mu);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		nng_msg_free(m);
		return SHOAL_ECLOSED;
	}
	if (idx > s->n_ctx || (c = s->ctx[idx - 1])->st != TC_HOLD || c->gen != gen) {
		pthread_mutex_unlock(&s->mu);
		nng_msg_free(m);
		return SHOAL_EINVAL;
	}
	c->st = TC_SEND;
	c->close_after = close;
	s->cb_active++;
	pthread_mutex_unlock(&s->mu);

	nng_aio_set_msg(c->aio, m);
	nng_ctx_send(c->ctx, c->aio);

	pthread_mutex_lock(&s->mu);
	s->cb_active--;
	pthread_cond_broadcast(&s->cv_cb);
	pthread_mutex_unlock(&s->mu);
	return SHOAL_OK;
}

void
tp_server_close(tp_server *s)
{
	uint32_t i, n;

	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	s->closing = true;
	pthread_cond_broadcast(&s->cv_q);
	while (s->cb_active > 0)
		pthread_cond_wait(&s->cv_cb, &s->mu);
	n = s->n_ctx;
	pthread_mutex_unlock(&s->mu);

	/* From here no callback starts a new operation; closing the socket
	 * aborts the pending ones, and aio_stop waits for their callbacks. */
	nng_close(s->sock);
	for (i = 0; i < n; i++)
		nng_aio_stop(s->ctx[i]->aio);
	for (i = 0; i < n; i++) {
		tp_ctx *c = s->ctx[i];
		nng_msg *m = nng_aio_get_msg(c->aio);
		if (m != NULL)
			nng_msg_free(m);
		nng_aio_free(c->aio);
		free(c);
	}
	free(s->ctx);
	while (s->qhead != NULL) {
		tp_item *it = s->qhead;
		s->qhead = it->next;
		nng_msg_free(it->m);
		free(it);
	}
	pthread_cond_destroy(&s->cv_cb);
	pthread_cond_destroy(&s->cv_q);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

uint64_t
tp_server_received(const tp_server *s)
{
	uint64_t n;
	pthread_mutex_lock((pthread_mutex_t *)&s->mu);
	n = s->received;
	pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
	return n;
}

/* ------------------------------------------------------------------ client */

struct tp_client {
	nng_socket sock;
	nng_ctx ctx;
	nng_aio *aio;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
};

static void
cli_aio_cb(void *arg)
{
	tp_client *c = arg;
	pthread_mutex_lock(&c->mu);
	c->done = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

shoal_err
tp_client_open(tp_client **out, const char *url, size_t max_msg)
{
	tp_client *c;
	int rv;
	shoal_err err = SHOAL_ETRANSPORT;
	bool mu = false, cv = false, sock = false;

	*out = NULL;
	if (url == NULL || *url == '\0') {
		log_error("transport: empty server URL");
		return SHOAL_EINVAL;
	}
	if ((c = calloc(1, sizeof *c)) == NULL)
		return SHOAL_ENOMEM;
	if (pthread_mutex_init(&c->mu, NULL) != 0)
		goto fail;
	mu = true;
	if (cond_init_mono(&c->cv) != 0)
		goto fail;
	cv = true;
	if ((rv = nng_req0_open(&c->sock)) != 0) {
		log_error("transport: cannot open REQ socket: %s", nng_strerror(rv));
		goto fail;
	}
	sock = true;
	if ((max_msg > 0 && (rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, max_msg)) != 0) ||
	    (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, TP_RECONN_MIN_MS)) != 0 ||
	    (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, TP_RECONN_MAX_MS)) != 0 ||
	    (rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, TP_RESEND_MS)) != 0) {
		log_error("transport: cannot set socket options: %s", nng_strerror(rv));
		goto fail;
	}
	if ((rv = nng_ctx_open(&c->ctx, c->sock)) != 0 ||
	    (rv = nng_ctx_set_ms(c->ctx, NNG_OPT_REQ_RESENDTIME, TP_RESEND_MS)) != 0 ||
	    (rv = nng_aio_alloc(&c->aio, cli_aio_cb, c)) != 0) {
		log_error("transport: cannot set up request context: %s", nng_strerror(rv));
		goto fail;
	}
	/* Non-blocking: the client may start before the server. */
	if ((rv = nng_dial(c->sock, url, NULL, NNG_FLAG_NONBLOCK)) != 0) {
		const char *h = hint_for(rv);
		log_error("transport: cannot dial %s: %s%s%s", url, nng_strerror(rv), *h ? "; " : "",
		          h);
		err = map_err(rv) == SHOAL_EINVAL ? SHOAL_EINVAL : SHOAL_ETRANSPORT;
		goto fail;
	}
	log_debug("transport: dialing %s", url);
	*out = c;
	return SHOAL_OK;
fail:
	if (c->aio)
		nng_aio_free(c->aio);
	if (sock)
		nng_close(c->sock);
	if (cv)
		pthread_cond_destroy(&c->cv);
	if (mu)
		pthread_mutex_destroy(&c->mu);
	free(c);
	return err;
}

/* Run the started aio to completion, waking every 100 ms to check stop;
 * returns the nng result. */
static int
cli_wait(tp_client *c, volatile sig_atomic_t *stop)
{
	bool canceled = false;

	pthread_mutex_lock(&c->mu);
	while (!c->done) {
		if (stop != NULL && *stop && !canceled) {
			pthread_mutex_unlock(&c->mu);
			nng_aio_cancel(c->aio);
			canceled = true;
			pthread_mutex_lock(&c->mu);
			continue;
		}
		struct timespec dl = deadline_in(100);
		pthread_cond_timedwait(&c->cv, &c->mu, &dl);
	}
	pthread_mutex_unlock(&c->mu);
	nng_aio_wait(c->aio);
	return nng_aio_result(c->aio);
}

shoal_err
tp_client_request_stop(tp_client *c, const uint8_t *buf, size_t len, int timeout_ms,
                       volatile sig_atomic_t *stop, tp_msg **reply)
{
	uint64_t end = clock_now_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
	nng_msg *m;
	int rv;

	*reply = NULL;
	if ((rv = nng_msg_alloc(&m, len)) != 0)
		return SHOAL_ENOMEM;
	if (len > 0)
		memcpy(nng_msg_body(m), buf, len);

	pthread_mutex_lock(&c->mu);
	c->done = false;
	pthread_mutex_unlock(&c->mu);
	nng_aio_set_msg(c->aio, m);
	nng_aio_set_timeout(c->aio, timeout_ms < 0 ? NNG_DURATION_INFINITE : timeout_ms);
	nng_ctx_send(c->ctx, c->aio);
	if ((rv = cli_wait(c, stop)) != 0) {
		nng_msg *unsent = nng_aio_get_msg(c->aio);
		if (unsent != NULL)
			nng_msg_free(unsent);
		nng_aio_set_msg(c->aio, NULL);
		if (stop != NULL && *stop)
			return SHOAL_ECLOSED;
		return map_err(rv) == SHOAL_ETIMEDOUT || map_err(rv) == SHOAL_ECLOSED ? map_err(rv)
		                                                                      : SHOAL_ETRANSPORT;
	}

	uint64_t now = clock_now_ms();
	pthread_mutex_lock(&c->mu);
	c->done = false;
	pthread_mutex_unlock(&c->mu);
	if (timeout_ms < 0)
		nng_aio_set_timeout(c->aio, NNG_DURATION_INFINITE);
	else
		nng_aio_set_timeout(c->aio, now >= end ? 1 : (nng_duration)(end - now));
	nng_ctx_recv(c->ctx, c->aio);
	if ((rv = cli_wait(c, stop)) != 0) {
		if (stop != NULL && *stop)
			return SHOAL_ECLOSED;
		return map_err(rv) == SHOAL_ETIMEDOUT || map_err(rv) == SHOAL_ECLOSED ? map_err(rv)
		                                                                      : SHOAL_ETRANSPORT;
	}
	m = nng_aio_get_msg(c->aio);
	nng_aio_set_msg(c->aio, NULL);
	if ((*reply = msg_wrap(m)) == NULL)
		return SHOAL_ENOMEM;
	return SHOAL_OK;
}

shoal_err
tp_client_request(tp_client *c, const uint8_t *buf, size_t len, int timeout_ms, tp_msg **reply)
{
	return tp_client_request_stop(c, buf, len, timeout_ms, NULL, reply);
}

void
tp_client_close(tp_client *c)
{
	if (c == NULL)
		return;
	nng_close(c->sock);
	nng_aio_stop(c->aio);
	nng_aio_free(c->aio);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}
