/* engine.h - the simulator's event loop: the real server core and N real
 * client cores (DESIGN.md section 2) exchange their real messages through
 * a virtual network on a virtual clock, so that each client's round takes
 * the time its device would need (sim/device.h) while training really
 * runs.
 *
 * Time is virtual milliseconds from 0. A request of b bytes sent by a
 * client at t reaches the server at t + b / up + rtt / 2; a reply of b bytes
 * sent by the server at t reaches the client at t + b / down + rtt / 2; a
 * training of F FLOPs that starts at t ends at t + F / compute. A client
 * acts only while available (its on/off periods); one that fails mid-round
 * (its failure probability) or goes offline during a round is gone for the
 * rest of that round: its in-flight messages are lost, and it comes back
 * as a restarted process (a new client core, its error-feedback residual
 * kept, as shoal-client --state-dir keeps it) when it is next available.
 *
 * Events are ordered by (time, sequence number); the sequence follows the
 * order in which events are created, which depends only on the seed.
 * Training runs on a pool of threads: every client whose training is due
 * trains at once, one client per thread, and the results are handed back
 * in client order, so the run is identical for any thread count. With a
 * sim_spread (sim/mpi.h), several processes run the same loop and each
 * trains only the clients it owns; the results are then exchanged, so
 * every process goes on with all of them and the run stays identical. */
#ifndef SHOAL_SIM_ENGINE_H
#define SHOAL_SIM_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "client/core.h"
#include "server/core.h"
#include "sim/device.h"

/* Trains client `client` on params (dim floats, the global model on entry)
 * as st asks (epochs, batch, lr, ...; with a local time budget it must stop
 * after st->max_steps minibatch steps, which the engine sets to the steps
 * that fit the budget on the client's device, and the training time is that
 * of those steps only). Called from pool threads, never twice
 * at once for one client. Returns 0 and sets *n_examples and *loss, or
 * nonzero to skip the round (the core then aborts its training). */
typedef int (*sim_train_fn)(void *user, uint32_t client, float *params, uint32_t dim,
                            const cli_step *st, uint32_t *n_examples, float *loss);

/* Called at every round's end with the server's statistics and the virtual
 * time in seconds. */
typedef void (*sim_round_fn)(void *user, const srv_round_stats *st, double virtual_s);

/* Adjusts client i's configuration before its core is created (and
 * re-created after a drop): e.g. its name (a buffer the caller keeps) and
 * seed. */
typedef void (*sim_setup_fn)(void *user, uint32_t client, cli_config *cc);

/* One training of a batch, as sim_exchange_fn sees it: the client, its
 * trained model (dim floats) and what its sim_train_fn returned. */
typedef struct sim_trained {
	uint32_t client;
	float *params;
	uint32_t dim;
	uint32_t n_examples;
	float loss;
	int rc;
} sim_trained;

/* Training spread over processes that run the same event loop (sim/mpi.h).
 * owns says whether this process trains client i; after the process has
 * trained its own clients of a batch, exchange gets the whole batch (the
 * same clients in the same order in every process) and fills in the
 * entries of the clients it does not own from their owners. It may set
 * *stop (sim_engine_config.stop) so that every process stops at the same
 * event. Returns SHOAL_OK or an error that ends the run. */
typedef struct sim_spread {
	bool (*owns)(void *user, uint32_t client);
	shoal_err (*exchange)(void *user, sim_trained *batch, size_t n);
	void *user;
} sim_spread;

/* Why a client left a round. */
enum { SIM_DROP_FAILED = 0, SIM_DROP_OFFLINE = 1, SIM_DROP_CAUSES = 2 };

typedef struct sim_engine_config {
	srv_core *server;
	uint32_t n_clients;
	cli_config client;            /* every client's; name and seed are set per
	                                 client ("c<i>", seed + i) */
	const sim_device *const *dev; /* n_clients device classes; a NULL entry
	                                 (or dev NULL): infinitely fast and always
	                                 available */
	const bool *absent;           /* n_clients flags, or NULL: a client that
	                                 never takes part (e.g. its model does not
	                                 fit its memory) */
	const uint32_t *n_examples;   /* n_clients local data sizes */
	double flops_per_example;     /* one example's training FLOPs
	                                 (ml_model_train_flops) */
	sim_train_fn train;
	sim_round_fn on_round;        /* may be NULL */
	sim_setup_fn setup;           /* may be NULL */
	void *user;
	unsigned threads;             /* training threads, >= 1 */
	uint64_t seed;                /* availability and failures */
	bool availability;            /* honour on/off periods */
	bool failures;                /* honour failure probabilities */
	/* Availability-aware check-in: an available client checks in only if
	 * its current on period lasts at least the round it would take on its
	 * device (est_down_bytes down, est_epochs of training, est_up_bytes up,
	 * RTT), and
	 * otherwise waits for its next on period; the server then selects
	 * among clients likely to finish. */
	bool avail_aware;
	uint64_t est_down_bytes, est_up_bytes;
	uint32_t est_epochs;          /* local epochs of a round (0: 1) */
	/* Idle clients are kept small: when a client's core is idle between
	 * rounds, its model buffers are freed and its error-feedback residual
	 * goes to a store (sim/store.h) that keeps up to residual_mem bytes
	 * in memory (0: 256 MiB) and the rest in a temporary file; the models
	 * of the two newest versions clients hold are kept once for all, to
	 * apply downlink deltas; and the core itself is folded into a record
	 * of a few dozen bytes (cli_core_suspend) until the client acts again.
	 * The run is bit-identical either way; keep_idle keeps every client's
	 * core and buffers (for comparison). */
	uint64_t residual_mem;
	bool keep_idle;
	double max_virtual_s;         /* give up (SHOAL_ETIMEDOUT) when the
	                                 server is not done by then; 0: never */
	volatile int *stop;           /* nonzero: stop between events */
	const sim_spread *spread;     /* NULL: this process trains every client */
} sim_engine_config;

typedef struct sim_engine_stats {
	double virtual_s;             /* virtual time when the server finished */
	uint64_t events;              /* events processed */
	uint64_t bytes_up, bytes_down;/* every message, both ways */
	uint32_t dropped[SIM_DROP_CAUSES];
	uint32_t trained;             /* trainings run */
	uint64_t suspends;            /* idle cores folded (cli_core_suspend) */
	uint32_t residuals;           /* residuals in the store at the end */
	bool residuals_on_disk;       /* the store moved to a file */
} sim_engine_stats;

/* Runs until the server core finishes (srv_core_finished) and every
 * client has been told so. Errors: SHOAL_EINVAL (bad config), SHOAL_ENOMEM,
 * SHOAL_ECLOSED (*stop set), SHOAL_ETIMEDOUT (max_virtual_s passed, e.g.
 * no client ever available long enough), SHOAL_ESTATE (nothing left to
 * happen and the server not done), or the first client core error that is
 * not a transport condition. */
shoal_err sim_engine_run(const sim_engine_config *cfg, sim_engine_stats *st);

#endif
