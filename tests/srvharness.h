/* srvharness.h - the in-memory harness of the server-core tests: requests
 * go to srv_core_on_request as bytes with a fresh handle and a time, and
 * every reply the core queues is kept, by arrival, to be looked up by the
 * request it answers. No sockets, no clock. */
#ifndef SHOAL_TESTS_SRVHARNESS_H
#define SHOAL_TESTS_SRVHARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/msg.h"
#include "server/core.h"

#define HARNESS_MAX_REPLIES 256

typedef struct harness {
	srv_core *s;
	srv_reply r[HARNESS_MAX_REPLIES]; /* replies received so far, by arrival */
	size_t nr;
	uint64_t next_req;
	size_t dim;
} harness;

static inline void
drain(harness *h)
{
	srv_reply rep;

	while (srv_core_pop_reply(h->s, &rep)) {
		assert_true(h->nr < HARNESS_MAX_REPLIES);
		h->r[h->nr++] = rep;
	}
}

static inline void
h_init(harness *h, const srv_config *cfg)
{
	memset(h, 0, sizeof *h);
	assert_int_equal(srv_core_new(cfg, &h->s), SHOAL_OK);
	srv_core_params(h->s, &h->dim);
	h->next_req = 100;
}

static inline void
h_fini(harness *h)
{
	for (size_t i = 0; i < h->nr; i++)
		free(h->r[i].buf);
	srv_core_free(h->s);
}

/* Sends buf as a request at now; returns its handle. */
static inline uint64_t
send_raw(harness *h, const uint8_t *buf, size_t len, uint64_t now)
{
	uint64_t req = h->next_req++;

	srv_core_on_request(h->s, req, buf, len, now);
	drain(h);
	return req;
}

/* Sends m as a request at now; returns its handle. */
static inline uint64_t
send_msg(harness *h, const msg *m, uint64_t now)
{
	uint8_t *buf;
	size_t len;
	uint64_t req;

	assert_int_equal(msg_encode(m, &buf, &len), SHOAL_OK);
	req = send_raw(h, buf, len, now);
	free(buf);
	return req;
}

/* The reply to req, decoded into *m (NULL if none yet). */
static inline const srv_reply *
reply_to(harness *h, uint64_t req, msg *m)
{
	for (size_t i = 0; i < h->nr; i++)
		if (h->r[i].req == req) {
			assert_int_equal(msg_decode(h->r[i].buf, h->r[i].len, m), (long)h->r[i].len);
			return &h->r[i];
		}
	return NULL;
}

/* Registers a logreg client of 10 examples with capabilities caps;
 * returns its id. */
static inline uint32_t
hello_caps(harness *h, const char *name, uint32_t caps)
{
	msg m = {.type = MSG_HELLO, .dim = (uint32_t)h->dim, .n_examples = 10, .cx_caps = caps};
	msg w;

	snprintf(m.name, sizeof m.name, "%s", name);
	snprintf(m.model, sizeof m.model, "logreg");
	assert_non_null(reply_to(h, send_msg(h, &m, 0), &w));
	assert_int_equal(w.type, MSG_WELCOME);
	return w.client_id;
}

static inline void
timer(harness *h, uint64_t now)
{
	srv_core_on_timer(h->s, now);
	drain(h);
}

#endif
