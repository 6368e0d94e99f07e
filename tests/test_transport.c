/* test_transport.c - the nng adapter (common/transport.c) over real nng
 * sockets: inproc, ipc and tcp round trips, many parked requests, reply
 * with close, size limit, client timeout and reconnection, bad URLs, the
 * rate limit per connection, the connection limit, TLS without certificates.
 * Time limits here are liveness bounds only, never assertions on speed. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>

#include "common/log.h"
#include "common/transport.h"
#include "testutil.h"

#define MAX_MSG ((size_t)1 << 20)

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void
unique_url(char *out, size_t n, const char *scheme, const char *tag)
{
	static atomic_int seq;
	int k = atomic_fetch_add(&seq, 1);
	if (strcmp(scheme, "ipc") == 0)
		snprintf(out, n, "ipc:///tmp/shoal-test-%ld-%s-%d.ipc", (long)getpid(), tag, k);
	else
		snprintf(out, n, "inproc://shoal-test-%ld-%s-%d", (long)getpid(), tag, k);
}

/* Listen on tcp://127.0.0.1:0 and return the client URL with the real port. */
static void
listen_tcp(tp_server *s, char *url, size_t n)
{
	assert_int_equal(tp_server_listen(s, "tcp://127.0.0.1:0"), SHOAL_OK);
	int port = tp_server_bound_port(s);
	assert_true(port > 0 && port < 65536);
	snprintf(url, n, "tcp://127.0.0.1:%d", port);
}

/* A port nobody listens on (bound, then released). */
static int
free_port(void)
{
	tp_server *s;
	char url[64];
	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	listen_tcp(s, url, sizeof url);
	int port = tp_server_bound_port(s);
	tp_server_close(s);
	return port;
}

/* ---- a REQ peer spoken by hand over a plain TCP socket (PROTOCOL.md §1) ----
 * Used where the test needs a peer the server drops. An nng REQ socket
 * would redial by itself (after a random back-off that may be near 0), and
 * nng 1.5.2 leaks a pipe or a queued request when its socket closes while
 * such a connection is being set up or torn down; that made these tests
 * fail now and then under LeakSanitizer. A plain socket does neither. */

static bool
raw_io(int fd, uint8_t *buf, size_t n, bool rd)
{
	while (n > 0) {
		ssize_t k = rd ? recv(fd, buf, n, 0) : send(fd, buf, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return false;
		buf += k;
		n -= (size_t)k;
	}
	return true;
}

/* Connect to tcp://127.0.0.1:PORT and send REQ's SP header (0x30). Returns
 * the socket; *header_ok says whether the server's REP header (0x31) came
 * back before the connection was closed. Receives time out after 10 s. */
static int
raw_connect(const char *url, bool *header_ok)
{
	static const uint8_t req_hdr[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0};
	static const uint8_t rep_hdr[8] = {0, 'S', 'P', 0, 0, 0x31, 0, 0};
	struct sockaddr_in sa = {.sin_family = AF_INET};
	struct timeval tv = {.tv_sec = 10};
	uint8_t got[8];
	int port = 0;

	assert_int_equal(sscanf(url, "tcp://127.0.0.1:%d", &port), 1);
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_true(raw_io(fd, (uint8_t *)req_hdr, sizeof req_hdr, false));
	*header_ok = raw_io(fd, got, sizeof got, true) && memcmp(got, rep_hdr, 8) == 0;
	return fd;
}

/* Send one request: <u64 BE size> <u32 BE id, top bit set> <body>. */
static bool
raw_send(int fd, uint32_t id, const char *body)
{
	size_t n = strlen(body);
	uint8_t frame[8 + 4 + 64];
	uint64_t size = 4 + n;

	assert_true(n <= 64);
	for (int i = 0; i < 8; i++)
		frame[i] = (uint8_t)(size >> (56 - 8 * i));
	id |= 0x80000000u;
	for (int i = 0; i < 4; i++)
		frame[8 + i] = (uint8_t)(id >> (24 - 8 * i));
	memcpy(frame + 12, body, n);
	return raw_io(fd, frame, 12 + n, false);
}

/* Receive one reply into buf (its request id stripped). Returns its length,
 * -1 if the server closed the connection, -2 on the 10 s receive timeout. */
static long
raw_recv(int fd, uint32_t *id, uint8_t *buf, size_t cap)
{
	uint8_t hdr[12];
	uint64_t size = 0;

	errno = 0;
	if (!raw_io(fd, hdr, sizeof hdr, true))
		return errno == EAGAIN || errno == EWOULDBLOCK ? -2 : -1;
	for (int i = 0; i < 8; i++)
		size = size << 8 | hdr[i];
	assert_true(size >= 4 && size - 4 <= cap);
	*id = (uint32_t)hdr[8] << 24 | (uint32_t)hdr[9] << 16 | (uint32_t)hdr[10] << 8 | hdr[11];
	assert_true(raw_io(fd, buf, (size_t)(size - 4), true));
	return (long)(size - 4);
}

/* ---- an echo server on its own thread ---- */

typedef struct echo_srv {
	tp_server *s;
	pthread_t thr;
	atomic_int stop;
	atomic_int served;
} echo_srv;

static void *
echo_main(void *arg)
{
	echo_srv *e = arg;
	while (!atomic_load(&e->stop)) {
		uint64_t req;
		tp_msg *m;
		if (tp_server_recv(e->s, 20, &req, &m) != SHOAL_OK)
			continue;
		/* No cmocka asserts off the main thread: count, check later. */
		if (tp_server_reply(e->s, req, tp_msg_data(m), tp_msg_len(m), false) == SHOAL_OK)
			atomic_fetch_add(&e->served, 1);
		tp_msg_free(m);
	}
	return NULL;
}

static void
echo_start(echo_srv *e, tp_server *s)
{
	memset(e, 0, sizeof *e);
	e->s = s;
	assert_int_equal(pthread_create(&e->thr, NULL, echo_main, e), 0);
}

/* The echo thread counts a request after its reply is on its way, so a
 * client can hold the reply before the count moves: wait up to 10 s (a
 * liveness bound) for it to reach n, and return the last count read. */
static int
echo_wait_served(echo_srv *e, int n)
{
	int got = atomic_load(&e->served);

	for (int i = 0; i < 1000 && got != n; i++) {
		sleep_ms(10);
		got = atomic_load(&e->served);
	}
	return got;
}

static void
echo_stop(echo_srv *e)
{
	atomic_store(&e->stop, 1);
	pthread_join(e->thr, NULL);
}

static void
expect_echo(tp_client *c, const char *text)
{
	tp_msg *r = NULL;
	assert_int_equal(tp_client_request(c, (const uint8_t *)text, strlen(text), 10000, &r),
	                 SHOAL_OK);
	assert_non_null(r);
	assert_int_equal(tp_msg_len(r), strlen(text));
	assert_memory_equal(tp_msg_data(r), text, strlen(text));
	tp_msg_free(r);
}

static void
roundtrip(const char *listen_url, bool tcp)
{
	tp_server *s;
	tp_client *c;
	echo_srv e;
	char url[256];

	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	if (tcp) {
		listen_tcp(s, url, sizeof url);
	} else {
		assert_int_equal(tp_server_listen(s, listen_url), SHOAL_OK);
		snprintf(url, sizeof url, "%s", listen_url);
	}
	echo_start(&e, s);
	assert_int_equal(tp_client_open(&c, url, MAX_MSG), SHOAL_OK);
	expect_echo(c, "hello");
	expect_echo(c, "");
	expect_echo(c, "a second request on the same socket");
	tp_client_close(c);
	echo_stop(&e);
	assert_int_equal(atomic_load(&e.served), 3);
	assert_int_equal(tp_server_received(s), 3);
	tp_server_close(s);
}

static void
test_reqrep_inproc(void **state)
{
	char url[128];
	(void)state;
	unique_url(url, sizeof url, "inproc", "rr");
	roundtrip(url, false);
}

static void
test_reqrep_ipc(void **state)
{
	char url[128];
	(void)state;
	unique_url(url, sizeof url, "ipc", "rr");
	roundtrip(url, false);
	unlink(url + strlen("ipc://"));
}

static void
test_reqrep_tcp_port0(void **state)
{
	(void)state;
	roundtrip(NULL, true);
}

/* ---- many parked requests, answered in reverse order ---- */

#define N_PARKED 50

typedef struct parked_client {
	const char *url;
	int i;
	int timeout_ms;
	atomic_int *answered;
	shoal_err err;
	bool match;
	pthread_t thr;
} parked_client;

static void *
parked_main(void *arg)
{
	parked_client *p = arg;
	tp_client *c;
	char body[32];
	tp_msg *r = NULL;

	snprintf(body, sizeof body, "client-%d", p->i);
	p->err = tp_client_open(&c, p->url, MAX_MSG);
	if (p->err != SHOAL_OK)
		return NULL;
	p->err = tp_client_request(c, (const uint8_t *)body, strlen(body), p->timeout_ms, &r);
	if (p->err == SHOAL_OK) {
		p->match = tp_msg_len(r) == strlen(body) && memcmp(tp_msg_data(r), body, strlen(body)) == 0;
		tp_msg_free(r);
	}
	atomic_fetch_add(p->answered, 1);
	tp_client_close(c);
	return NULL;
}

static void
test_many_parked_reverse(void **state)
{
	tp_server *s;
	char url[64];
	parked_client pc[N_PARKED];
	uint64_t reqs[N_PARKED];
	tp_msg *msgs[N_PARKED];
	atomic_int answered = 0;
	(void)state;

	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	listen_tcp(s, url, sizeof url);
	for (int i = 0; i < N_PARKED; i++) {
		pc[i] = (parked_client){.url = url, .i = i, .timeout_ms = 15000, .answered = &answered};
		assert_int_equal(pthread_create(&pc[i].thr, NULL, parked_main, &pc[i]), 0);
	}
	/* Hold every request: more than the receive pool, so contexts must be
	 * added while the others stay parked. */
	for (int i = 0; i < N_PARKED; i++) {
		assert_int_equal(tp_server_recv(s, 15000, &reqs[i], &msgs[i]), SHOAL_OK);
		for (int j = 0; j < i; j++)
			assert_true(reqs[j] != reqs[i]);
	}
	assert_int_equal(atomic_load(&answered), 0);
	assert_int_equal(tp_server_received(s), N_PARKED);
	for (int i = N_PARKED - 1; i >= 0; i--) {
		assert_int_equal(tp_server_reply(s, reqs[i], tp_msg_data(msgs[i]), tp_msg_len(msgs[i]),
		                                 false),
		                 SHOAL_OK);
		/* A request is answered once: the id is spent. */
		assert_int_equal(tp_server_reply(s, reqs[i], (const uint8_t *)"x", 1, false),
		                 SHOAL_EINVAL);
		tp_msg_free(msgs[i]);
	}
	for (int i = 0; i < N_PARKED; i++) {
		pthread_join(pc[i].thr, NULL);
		assert_int_equal(pc[i].err, SHOAL_OK);
		assert_true(pc[i].match);
	}
	tp_server_close(s);
}

/* ---- reply with close drops the peer ---- */

static void
test_reply_close_drops_peer(void **state)
{
	tp_server *s;
	char url[64];
	uint64_t req;
	tp_msg *m;
	uint8_t body[64];
	uint32_t id = 0;
	bool header_ok;
	(void)state;

	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	listen_tcp(s, url, sizeof url);
	int fd = raw_connect(url, &header_ok);
	assert_true(header_ok);
	assert_true(raw_send(fd, 7, "bye"));

	assert_int_equal(tp_server_recv(s, 10000, &req, &m), SHOAL_OK);
	assert_int_equal(tp_msg_len(m), 3);
	tp_msg_free(m);
	assert_int_equal(tp_server_reply(s, req, (const uint8_t *)"go away", 7, true), SHOAL_OK);

	/* The reply arrives first, with our request id, then the connection
	 * is closed (end of stream, not the receive timeout). */
	assert_int_equal(raw_recv(fd, &id, body, sizeof body), 7);
	assert_int_equal(id, 0x80000007u);
	assert_memory_equal(body, "go away", 7);
	assert_int_equal(raw_recv(fd, &id, body, sizeof body), -1);
	close(fd);

	/* The server keeps serving others. */
	tp_client *c;
	echo_srv e;
	echo_start(&e, s);
	assert_int_equal(tp_client_open(&c, url, MAX_MSG), SHOAL_OK);
	expect_echo(c, "still there?");
	tp_client_close(c);
	echo_stop(&e);
	tp_server_close(s);
}

/* ---- a reply to a peer that is gone is discarded quietly ---- */

static void
test_reply_to_gone_peer(void **state)
{
	tp_server *s;
	nng_socket raw;
	char url[128];
	uint64_t req;
	tp_msg *m;
	(void)state;

	unique_url(url, sizeof url, "inproc", "gone");
	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	assert_int_equal(tp_server_listen(s, url), SHOAL_OK);
	assert_int_equal(nng_req0_open(&raw), 0);
	assert_int_equal(nng_dial(raw, url, NULL, 0), 0);
	assert_int_equal(nng_send(raw, "hi", 2, 0), 0);
	assert_int_equal(tp_server_recv(s, 10000, &req, &m), SHOAL_OK);
	tp_msg_free(m);
	nng_close(raw);
	sleep_ms(50);
	assert_int_equal(tp_server_reply(s, req, (const uint8_t *)"late", 4, false), SHOAL_OK);
	assert_int_equal(tp_server_reply(s, 12345, (const uint8_t *)"x", 1, false), SHOAL_EINVAL);
	assert_int_equal(tp_server_reply(s, 0, (const uint8_t *)"x", 1, false), SHOAL_EINVAL);
	tp_server_close(s);
}

/* ---- size limit ---- */

static void
test_oversize_dropped(void **state)
{
	tp_server *s;
	tp_client *big, *small;
	echo_srv e;
	char url[64];
	tp_msg *r = NULL;
	uint8_t *buf;
	(void)state;

	assert_int_equal(tp_server_open(&s, 1024), SHOAL_OK);
	listen_tcp(s, url, sizeof url);
	echo_start(&e, s);
	buf = calloc(1, 8192);
	assert_non_null(buf);
	assert_int_equal(tp_client_open(&big, url, MAX_MSG), SHOAL_OK);
	assert_int_equal(tp_client_request(big, buf, 8192, 1000, &r), SHOAL_ETIMEDOUT);
	assert_null(r);
	free(buf);
	tp_client_close(big);
	assert_int_equal(atomic_load(&e.served), 0);
	assert_int_equal(tp_server_received(s), 0);

	assert_int_equal(tp_client_open(&small, url, MAX_MSG), SHOAL_OK);
	expect_echo(small, "small enough");
	tp_client_close(small);
	echo_stop(&e);
	assert_int_equal(atomic_load(&e.served), 1);
	tp_server_close(s);
}

/* ---- client side ---- */

static void
test_client_timeout_no_server(void **state)
{
	tp_client *c;
	char url[64];
	tp_msg *r = NULL;
	(void)state;

	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", free_port());
	assert_int_equal(tp_client_open(&c, url, MAX_MSG), SHOAL_OK);
	assert_int_equal(tp_client_request(c, (const uint8_t *)"anyone?", 7, 300, &r),
	                 SHOAL_ETIMEDOUT);
	assert_null(r);
	/* The socket stays usable for the next attempt. */
	assert_int_equal(tp_client_request(c, (const uint8_t *)"anyone?", 7, 100, &r),
	                 SHOAL_ETIMEDOUT);
	tp_client_close(c);
}

static void
test_client_stop_flag(void **state)
{
	tp_client *c;
	char url[128];
	tp_msg *r = NULL;
	volatile sig_atomic_t stop = 1;
	(void)state;

	unique_url(url, sizeof url, "inproc", "stop");
	assert_int_equal(tp_client_open(&c, url, MAX_MSG), SHOAL_OK);
	/* Far shorter than the timeout: the stop flag ends the wait. */
	assert_int_equal(tp_client_request_stop(c, (const uint8_t *)"x", 1, 600000, &stop, &r),
	                 SHOAL_ECLOSED);
	assert_null(r);
	tp_client_close(c);
}

typedef struct early_client {
	tp_client *c;
	shoal_err err;
	pthread_t thr;
} early_client;

static void *
early_main(void *arg)
{
	early_client *ec = arg;
	tp_msg *r = NULL;
	ec->err = tp_client_request(ec->c, (const uint8_t *)"early", 5, 15000, &r);
	if (ec->err == SHOAL_OK && (tp_msg_len(r) != 5 || memcmp(tp_msg_data(r), "early", 5) != 0))
		ec->err = SHOAL_EMALFORMED;
	tp_msg_free(r);
	return NULL;
}

static void
test_client_before_server(void **state)
{
	char url[128];
	early_client ec;
	tp_server *s;
	echo_srv e;
	(void)state;

	unique_url(url, sizeof url, "ipc", "early");
	memset(&ec, 0, sizeof ec);
	assert_int_equal(tp_client_open(&ec.c, url, MAX_MSG), SHOAL_OK);
	assert_int_equal(pthread_create(&ec.thr, NULL, early_main, &ec), 0);
	sleep_ms(300); /* the client's first dials fail */
	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	assert_int_equal(tp_server_listen(s, url), SHOAL_OK);
	echo_start(&e, s);
	pthread_join(ec.thr, NULL);
	assert_int_equal(ec.err, SHOAL_OK);
	tp_client_close(ec.c);
	echo_stop(&e);
	tp_server_close(s);
	unlink(url + strlen("ipc://"));
}

static void
test_bad_url(void **state)
{
	tp_server *s;
	tp_client *c = NULL;
	(void)state;

	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	assert_int_equal(tp_server_listen(s, "bogus://nowhere"), SHOAL_EINVAL);
	assert_int_equal(tp_server_listen(s, "not a url"), SHOAL_EINVAL);
	assert_int_equal(tp_server_listen(s, ""), SHOAL_EINVAL);
	tp_server_close(s);
	assert_int_equal(tp_client_open(&c, "bogus://nowhere", MAX_MSG), SHOAL_EINVAL);
	assert_null(c);
	assert_int_equal(tp_client_open(&c, "", MAX_MSG), SHOAL_EINVAL);
	assert_int_equal(tp_client_open(&c, "tcp://", MAX_MSG), SHOAL_EINVAL);
}

static void
test_address_in_use(void **state)
{
	tp_server *a, *b;
	char url[64];
	(void)state;

	assert_int_equal(tp_server_open(&a, MAX_MSG), SHOAL_OK);
	listen_tcp(a, url, sizeof url);
	assert_int_equal(tp_server_open(&b, MAX_MSG), SHOAL_OK);
	assert_int_equal(tp_server_listen(b, url), SHOAL_ETRANSPORT);
	tp_server_close(b);
	tp_server_close(a);
}

/* Closing with requests parked and unread frees everything (ASan). */
static void
test_close_with_parked(void **state)
{
	tp_server *s;
	char url[64];
	parked_client pc[8];
	atomic_int answered = 0;
	uint64_t req;
	tp_msg *m;
	(void)state;

	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	listen_tcp(s, url, sizeof url);
	for (int i = 0; i < 8; i++) {
		pc[i] = (parked_client){.url = url, .i = i, .timeout_ms = 1500, .answered = &answered};
		assert_int_equal(pthread_create(&pc[i].thr, NULL, parked_main, &pc[i]), 0);
	}
	/* Take some (held), leave the rest in the queue. */
	for (int i = 0; i < 4; i++) {
		assert_int_equal(tp_server_recv(s, 15000, &req, &m), SHOAL_OK);
		tp_msg_free(m);
	}
	for (int i = 0; i < 1000 && tp_server_received(s) < 8; i++)
		sleep_ms(10);
	assert_int_equal(tp_server_received(s), 8);
	tp_server_close(s);
	for (int i = 0; i < 8; i++) {
		pthread_join(pc[i].thr, NULL);
		assert_int_not_equal(pc[i].err, SHOAL_OK);
	}
}

/* ---- limits: rate per connection, connection count ---- */

/* Replies "limited" or "ok" (with the peer's address) to every request. */
typedef struct limit_srv {
	tp_server *s;
	pthread_t thr;
	atomic_int stop;
	atomic_uint peer[2]; /* connection ids seen, first two */
	char addr[64];
} limit_srv;

static void *
limit_main(void *arg)
{
	limit_srv *e = arg;
	while (!atomic_load(&e->stop)) {
		uint64_t req;
		tp_msg *m;
		if (tp_server_recv(e->s, 20, &req, &m) != SHOAL_OK)
			continue;
		bool lim = tp_server_limited(e->s, req);
		unsigned id = tp_server_peer(e->s, req), none = 0;
		if (!atomic_compare_exchange_strong(&e->peer[0], &none, id) && id != e->peer[0]) {
			none = 0;
			atomic_compare_exchange_strong(&e->peer[1], &none, id);
		}
		tp_server_peer_addr(e->s, req, e->addr, sizeof e->addr);
		const char *r = lim ? "limited" : "ok";
		tp_server_reply(e->s, req, (const uint8_t *)r, strlen(r), false);
		tp_msg_free(m);
	}
	return NULL;
}

/* true if the server marked the request as over the rate */
static bool
limited(tp_client *c)
{
	tp_msg *r = NULL;
	assert_int_equal(tp_client_request(c, (const uint8_t *)"x", 1, 10000, &r), SHOAL_OK);
	bool lim = tp_msg_len(r) == 7 && memcmp(tp_msg_data(r), "limited", 7) == 0;
	tp_msg_free(r);
	return lim;
}

static double
mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A token bucket per connection: the burst passes, then about rate a
 * second; another connection has its own full bucket; a pause refills. */
static void
test_rate_limit_per_connection(void **state)
{
	tp_server *s;
	tp_client *a, *b;
	limit_srv e;
	char url[64];
	(void)state;

	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	tp_server_set_rate(s, 5.0, 3.0);
	listen_tcp(s, url, sizeof url);
	memset(&e, 0, sizeof e);
	e.s = s;
	assert_int_equal(pthread_create(&e.thr, NULL, limit_main, &e), 0);
	assert_int_equal(tp_client_open(&a, url, MAX_MSG), SHOAL_OK);
	assert_int_equal(tp_client_open(&b, url, MAX_MSG), SHOAL_OK);

	double t0 = mono_s();
	int passed = 0, refused = 0;
	for (int i = 0; i < 3; i++)
		assert_false(limited(a)); /* the burst */
	for (int i = 0; i < 20; i++)
		limited(a) ? refused++ : passed++;
	double secs = mono_s() - t0;
	/* At most what refilled meanwhile (5 a second) passed after the burst. */
	assert_true(passed <= 1 + (int)(secs * 5.0));
	assert_true(refused >= 20 - 1 - (int)(secs * 5.0));
	assert_true(refused > 0);
	/* b's bucket is its own. */
	for (int i = 0; i < 3; i++)
		assert_false(limited(b));
	/* 0.5 s refill 2.5 tokens: a passes again. */
	sleep_ms(500);
	assert_false(limited(a));
	assert_false(limited(a));
	atomic_store(&e.stop, 1);
	pthread_join(e.thr, NULL);
	assert_true(e.peer[0] > 0 && e.peer[1] > 0 && e.peer[0] != e.peer[1]);
	assert_true(strncmp(e.addr, "127.0.0.1:", 10) == 0);
	tp_conn_stats cs;
	tp_server_conns(s, &cs);
	assert_int_equal(cs.open, 2);
	assert_int_equal(cs.peak, 2);
	assert_int_equal(cs.refused, 0);
	tp_client_close(a);
	tp_client_close(b);
	tp_server_close(s);
}

/* Wait up to 15 s (a liveness bound: a refused client redials within the
 * 5 s back-off cap) until the server has open connections open and has
 * refused at least refused of them; *cs holds the last counts read. */
static void
wait_conns(tp_server *s, tp_conn_stats *cs, uint32_t open, uint64_t refused)
{
	for (int i = 0; i < 1500; i++) {
		tp_server_conns(s, cs);
		if (cs->open == open && cs->refused >= refused)
			return;
		sleep_ms(10);
	}
}

/* Connections beyond the limit are closed before they can send; one slot
 * freed lets a waiting client in; closed connections are forgotten.
 * The peer over the limit that sends is a raw socket (see raw_connect);
 * the waiting tp_client sends nothing until the server has let it in. */
static void
test_max_connections(void **state)
{
	tp_server *s;
	tp_client *c[3];
	echo_srv e;
	char url[64];
	uint8_t body[64];
	uint32_t id;
	bool header_ok;
	tp_conn_stats cs;
	(void)state;

	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	tp_server_set_max_conns(s, 2);
	listen_tcp(s, url, sizeof url);
	echo_start(&e, s);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(tp_client_open(&c[i], url, MAX_MSG), SHOAL_OK);
		expect_echo(c[i], "in");
	}

	/* A third connection is closed without an answer to its request. */
	int fd = raw_connect(url, &header_ok);
	if (header_ok && raw_send(fd, 1, "out"))
		assert_int_equal(raw_recv(fd, &id, body, sizeof body), -1);
	close(fd);
	tp_server_conns(s, &cs);
	assert_int_equal(cs.open, 2);
	assert_true(cs.refused >= 1);
	assert_int_equal(echo_wait_served(&e, 2), 2);

	/* A third client waits: its dialer is refused, backs off, retries. */
	uint64_t refused_before = cs.refused;
	assert_int_equal(tp_client_open(&c[2], url, MAX_MSG), SHOAL_OK);
	wait_conns(s, &cs, 2, refused_before + 1);
	assert_true(cs.refused > refused_before);
	assert_int_equal(cs.open, 2);

	/* One slot freed: the waiting client gets in (back-off up to 5 s). */
	tp_client_close(c[0]);
	wait_conns(s, &cs, 1, 0);
	wait_conns(s, &cs, 2, 0);
	assert_int_equal(cs.open, 2);
	expect_echo(c[2], "in at last");
	tp_client_close(c[1]);
	tp_client_close(c[2]);
	wait_conns(s, &cs, 0, 0);
	assert_int_equal(cs.open, 0);
	assert_int_equal(cs.peak, 2);
	echo_stop(&e);
	tp_server_close(s);
}

/* tls+tcp:// refuses to listen without certificates, and a client without
 * a CA; bad files are refused by tp_tls_check (the programs' messages are
 * tested by tests/tls_e2e.sh, with real certificates). */
static void
test_tls_needs_certificates(void **state)
{
	tp_server *s;
	tp_client *c = NULL;
	tp_tls none = {0}, missing = {.cert = "/nonexistent.crt", .key = "/nonexistent.key"};
	(void)state;

	assert_true(tp_url_is_tls("tls+tcp://127.0.0.1:1"));
	assert_false(tp_url_is_tls("tcp://127.0.0.1:1"));
	assert_int_equal(tp_server_open(&s, MAX_MSG), SHOAL_OK);
	assert_int_equal(tp_server_listen(s, "tls+tcp://127.0.0.1:0"), SHOAL_EINVAL);
	assert_int_equal(tp_server_set_tls(s, &missing), SHOAL_EINVAL);
	assert_int_equal(tp_server_set_tls(s, &none), SHOAL_EINVAL);
	tp_server_close(s);
	assert_int_equal(tp_tls_check(&none, true), SHOAL_EINVAL);
	assert_int_equal(tp_tls_check(&none, false), SHOAL_EINVAL);
	assert_int_equal(tp_tls_check(&missing, true), SHOAL_EINVAL);
	assert_int_equal(tp_client_open(&c, "tls+tcp://127.0.0.1:1", MAX_MSG), SHOAL_EINVAL);
	assert_null(c);
	assert_int_equal(tp_client_open_tls(&c, "tls+tcp://127.0.0.1:1", MAX_MSG, &none),
	                 SHOAL_EINVAL);
	assert_null(c);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_reqrep_inproc),
	cmocka_unit_test(test_reqrep_ipc),
	cmocka_unit_test(test_reqrep_tcp_port0),
	cmocka_unit_test(test_many_parked_reverse),
	cmocka_unit_test(test_reply_close_drops_peer),
	cmocka_unit_test(test_reply_to_gone_peer),
	cmocka_unit_test(test_oversize_dropped),
	cmocka_unit_test(test_client_timeout_no_server),
	cmocka_unit_test(test_client_stop_flag),
	cmocka_unit_test(test_client_before_server),
	cmocka_unit_test(test_bad_url),
	cmocka_unit_test(test_address_in_use),
	cmocka_unit_test(test_close_with_parked),
	cmocka_unit_test(test_rate_limit_per_connection),
	cmocka_unit_test(test_max_connections),
	cmocka_unit_test(test_tls_needs_certificates),
};

SHOAL_TEST_MAIN(tests)
