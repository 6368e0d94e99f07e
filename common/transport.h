/* transport.h - the nng adapter: the only code that calls nng.
 *
 * Server: one REP socket (req0/rep0 protocol) listening on any number of
 * URLs (tcp://, tls+tcp://, ipc://, inproc://); requests are received on nng contexts so
 * that many can be outstanding (parked) at once, and handed to ONE consumer
 * thread through tp_server_recv(). Each request is answered exactly once
 * with tp_server_reply(). Client: one REQ socket dialing one URL with
 * automatic reconnection (nng's dialer backoff, 100 ms .. 5 s).
 * tls+tcp:// is nng's TLS transport (TLS 1.2+, mbedtls engine) with the
 * certificates of a tp_tls; PROTOCOL.md section 1.1 says who verifies whom.
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

/* TLS settings: paths of PEM files. */
typedef struct tp_tls {
	const char *cert;        /* own certificate, optionally followed by its
	                            chain; server: required; client: with key,
	                            for servers that ask for one */
	const char *key;         /* its private key, not encrypted */
	const char *ca;          /* CA certificate(s) (and CRLs) the peer's
	                            certificate must chain to; client: required
	                            (it verifies the server); server: when set,
	                            every client must present a certificate that
	                            chains to it (mutual TLS) */
	const char *server_name; /* client: the name the server's certificate
	                            must carry (subject alt name or CN); NULL:
	                            the URL's host */
} tp_tls;

/* true for tls+tcp:// (and tls+tcp4/6) URLs. */
bool tp_url_is_tls(const char *url);

/* Read and check the files of t as a server (cert and key required) or a
 * client (ca required; cert and key both or neither): each readable and a
 * PEM (or DER) certificate or unencrypted key, the key the certificate's,
 * the certificate within its validity period. Errors: SHOAL_EINVAL, after
 * a log line naming the file and the reason. */
shoal_err tp_tls_check(const tp_tls *t, bool server);

typedef struct tp_server tp_server;

/* max_msg: larger incoming messages are dropped by nng (NNG_OPT_RECVMAXSZ)
 * and the peer disconnected. */
shoal_err tp_server_open(tp_server **out, size_t max_msg);
/* Use t (checked as by tp_tls_check, copied) for the tls+tcp:// URLs
 * listened on afterwards. Errors: SHOAL_EINVAL (logged), SHOAL_ENOMEM. */
shoal_err tp_server_set_tls(tp_server *s, const tp_tls *t);
/* Rate limit per connection: a token bucket of burst requests refilled at
 * per_s a second (per_s 0: no limit). A request that finds its bucket
 * empty is still handed up, marked: tp_server_limited. */
void tp_server_set_rate(tp_server *s, double per_s, double burst);
/* Connections beyond max (0: no limit) are closed as soon as they are
 * established, before they can send anything (the peer's dialer retries
 * with backoff); counted by tp_server_conns. Call before listening. */
void tp_server_set_max_conns(tp_server *s, uint32_t max);
/* Errors: SHOAL_EINVAL (bad URL; a tls+tcp:// URL without
 * tp_server_set_tls), SHOAL_ETRANSPORT (address in use, ...). The log line
 * names the URL and nng's reason. */
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
/* The connection (nng pipe id, > 0) request req arrived on, while it is
 * not answered yet; 0 for an unknown req. */
uint32_t tp_server_peer(tp_server *s, uint64_t req);
/* Whether request req (not answered yet) exceeded its connection's rate. */
bool tp_server_limited(tp_server *s, uint64_t req);
/* "10.0.0.5:41234", "[::1]:5000", "ipc", "inproc" or "?": who sent req. */
void tp_server_peer_addr(tp_server *s, uint64_t req, char *out, size_t n);
/* Connections open now, the most open at once, and how many were closed
 * at once for exceeding tp_server_set_max_conns. */
typedef struct tp_conn_stats {
	uint32_t open, peak;
	uint64_t refused;
} tp_conn_stats;
void tp_server_conns(tp_server *s, tp_conn_stats *out);

typedef struct tp_client tp_client;

/* Dial url without blocking: if the server is not up yet, nng keeps
 * redialing with backoff. Errors: SHOAL_EINVAL (bad URL), SHOAL_ETRANSPORT. */
shoal_err tp_client_open(tp_client **out, const char *url, size_t max_msg);
/* The same with TLS settings for a tls+tcp:// url (tls may be NULL for
 * other schemes). A handshake that fails (untrusted or misnamed server
 * certificate, a server that refuses ours) is not reported by nng: the
 * dialer retries and requests time out. Errors as tp_client_open, and
 * SHOAL_EINVAL for a tls+tcp:// url without tls->ca or with bad files
 * (logged). */
shoal_err tp_client_open_tls(tp_client **out, const char *url, size_t max_msg,
                             const tp_tls *tls);
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
