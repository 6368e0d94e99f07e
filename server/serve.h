/* serve.h - the deployment driver of the server core: nng transport, wall
 * clock, signals, metrics and progress lines. shoal-server and shoal-sim
 * both run it. */
#ifndef SHOAL_SERVE_H
#define SHOAL_SERVE_H

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>

#include "common/transport.h"
#include "server/core.h"

typedef struct srv_serve_opts {
	const char *const *listen;   /* URLs to listen on */
	size_t n_listen;
	size_t max_message;          /* bytes */
	FILE *metrics;               /* JSON lines, or NULL */
	bool progress;               /* one line per round on stderr */
	volatile sig_atomic_t *stop; /* set non-zero (e.g. by SIGINT) to stop */
	unsigned linger_ms;          /* after the last round, keep answering
	                                DONE this long so clients learn it */
	void (*on_listening)(void *user); /* called once all URLs listen */
	/* called after each round, after the metrics line is written */
	void (*on_round)(void *user, const srv_round_stats *st);
	/* called after every step of the core, before its replies are sent:
	 * shoal-server writes its checkpoint and registry log there, so no
	 * reply tells of a round or a client id the disk does not hold */
	void (*before_send)(void *user, srv_core *core);
	void *user;
	uint32_t rounds;             /* total rounds for progress lines
	                                ("round 3/20"); 0: not shown */
	const tp_tls *tls;           /* certificates for tls+tcp:// URLs, or NULL */
	/* Limits (PROTOCOL.md section 5.1). A request over its connection's
	 * rate gets ERROR -25 from the driver without reaching the core. */
	double rate_limit;           /* requests a second per connection; 0: none */
	double rate_burst;           /* bucket size; 0: 2 x rate_limit */
	uint32_t max_conns;          /* open connections; 0: no limit */
	bool report_conns;           /* metrics lines say how many connections
	                                were open at the round's end (timing-
	                                dependent: shoal-sim leaves it off, so its
	                                metrics replay exactly from the seed) */
} srv_serve_opts;

/* Run the core until it finishes (returns SHOAL_OK) or *stop is set
 * (SHOAL_ECLOSED after parked requests are released). Errors from
 * tp_server_open/listen. */
shoal_err srv_serve(srv_core *core, const srv_serve_opts *opts);
/* The progress line of a round on stderr ("round R/N  acc ... loss ...
 * clients ... dropped ... up ... down ... S s"); rounds 0: no "/N". The
 * duration is the round's end_ms - start_ms on the core's clock (virtual
 * in a simulation). */
void srv_print_progress(const srv_round_stats *st, uint32_t rounds);

#endif
