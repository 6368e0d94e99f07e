/* transport.h - the nng adapter: the only code that calls nng.
 *
 * Server: one REP socket (req0/rep0 protocol) listening on any number of
 * URLs (tcp://, ipc://, inproc://); requests are received on nng contexts so
 * that many can be outstanding (parked) at once, and handed to ONE consumer
 * thread through tp_server_recv(). Each request is answered exactly once
 * with tp_server_reply(). Client: one REQ socket dialing one URL with
 * automatic reconnection (nng's dialer backoff, 100 ms .. 5 s).
 * nng error codes never leave this file: they become SHOAL_ETRANSPORT,
 * SHOAL_ETIMEDOUT, SHOAL_ECLOSED, SHOAL_ETOOBIG or SHOAL_EINVAL. */
#ifndef SHOAL_TRANSPORT_H
#define SHOAL_TRANSPORT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

/* A received message; free with tp_msg_free. */
typedef struct tp_msg tp_msg;
const uint8_t *tp_msg_data(const tp_msg *m);
size_t tp_msg_len(const tp_msg *m);
void tp_msg_free(tp_msg *m);

typedef struct tp_server tp_server;

/* max_msg: larger incoming messages are dropped by nng (NNG_OPT_RECVMAXSZ)
 * and the peer disconnected. */
shoal_err tp_server_open(tp_server **out, size_t max_msg);
/* Errors: SHOAL_EINVAL (bad URL), SHOAL_ETRANSPORT (address in use, ...).
 * The log line names the URL and nng's reason. */
shoal_err tp_server_listen(tp_server *s, const char *url);
/* Wait up to timeout_ms (-1: forever) for the next request. Returns SHOAL_OK
 * with *req (handle for tp_server_reply) and *msg, SHOAL_ETIMEDOUT, or
 * SHOAL_ECLOSED after tp_server_close. Thread-safe w.r.t. nng callbacks;
 * call from one thread. */
shoal_err tp_server_recv(tp_server *s, int timeout_ms, uint64_t *req, tp_msg **msg);
/* Reply to request req (copies buf). close: drop that peer's connection
 * once the reply is sent. Unknown req: SHOAL_EINVAL. A reply to a peer that
 * is gone is silently discarded (SHOAL_OK). */
shoal_err tp_server_reply(tp_server *s, uint64_t req, const uint8_t *buf, size_t len, bool close);
/* TCP port of the most recent tcp:// listener (the real one when the URL
 * asked for port 0), or 0 if there is none. The listen log line shows it. */
int tp_server_bound_port(tp_server *s);
/* Stop listening, abort outstanding requests, free everything. Not
 * concurrently with tp_server_recv/tp_server_reply. */
void tp_server_close(tp_server *s);
/* Requests received / replies sent so far (for tests). */
uint64_t tp_server_received(const tp_server *s);

typedef struct tp_client tp_client;

/* Dial url without blocking: if the server is not up yet, nng keeps
 * redialing with backoff. Errors: SHOAL_EINVAL (bad URL), SHOAL_ETRANSPORT. */
shoal_err tp_client_open(tp_client **out, const char *url, size_t max_msg);
/* Send one request and wait up to timeout_ms for its reply. Errors:
 * SHOAL_ETIMEDOUT (no reply in time: server away or slow),
 * SHOAL_ETRANSPORT, SHOAL_ECLOSED. */
shoal_err tp_client_request(tp_client *c, const uint8_t *buf, size_t len, int timeout_ms,
                            tp_msg **reply);
/* The same, giving up early with SHOAL_ECLOSED once *stop is non-zero
 * (checked every 100 ms; stop may be NULL). */
shoal_err tp_client_request_stop(tp_client *c, const uint8_t *buf, size_t len, int timeout_ms,
                                 volatile sig_atomic_t *stop, tp_msg **reply);
void tp_client_close(tp_client *c);

#endif
