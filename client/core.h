/* core.h - the client protocol core: HELLO, CHECKIN, TASK, UPDATE as a
 * state machine that does no I/O (DESIGN.md section 2).
 *
 * The driver loops on cli_core_step(), which says what to do next:
 *   CLI_SEND  send step.buf (a request) and hand the reply to
 *             cli_core_on_reply(), or a transport failure/timeout to
 *             cli_core_on_transport_error();
 *   CLI_SLEEP wait until step.until_ms (backoff or server-requested wait);
 *   CLI_TRAIN train step.params (dim floats, preset to the global model) in
 *             place, then call cli_core_submit() (or cli_core_abort_train());
 *   CLI_DONE  the server finished training (or a fatal error, step.err).
 * Failures back off exponentially from backoff_min_ms to backoff_max_ms with
 * seeded jitter. An UPDATE whose reply was lost is resent as is; the server
 * answers a duplicate with ERROR(SHOAL_EDUP), which counts as delivered. */
#ifndef SHOAL_CLIENT_CORE_H
#define SHOAL_CLIENT_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

typedef struct cli_config {
	const char *name;        /* stable identity, 1..64 printable ASCII */
	const char *model;       /* model name announced in HELLO */
	uint32_t dim;            /* parameter count */
	uint32_t n_examples;     /* local examples (FedAvg weight) */
	uint64_t seed;           /* backoff jitter */
	uint32_t backoff_min_ms; /* default 100 */
	uint32_t backoff_max_ms; /* default 5000 */
	uint32_t cx_caps;        /* MSG_CX_* bits announced in HELLO: which
	                            update encodings and downlink deltas this
	                            client handles (0: dense float32 only) */
	bool error_feedback;     /* keep what compression did not send and add
	                            it to the next update (residual, dim floats) */
	bool dp_noise_from_seed; /* distributed DP noise from a stream of seed
	                            (simulations: reproducible, and anyone who
	                            knows the seed can subtract it); false: from
	                            a key drawn from the OS CSPRNG */
	/* Client identity (PROTOCOL.md section 16). With a key the client
	 * sends its public key in HELLO and signs each request over the nonce
	 * of the server's last reply (servers that send no nonces get
	 * unsigned requests, as before). */
	const uint8_t *identity_sk; /* ID_SK_BYTES Ed25519 secret key (privacy/
	                               ident.h), copied by cli_core_new into
	                               locked memory that cli_core_free wipes;
	                               NULL: no identity */
	const char *enroll_token;   /* HELLO "tok", a one-time enrollment token
	                               (1..64 printable characters), or NULL */
} cli_config;

typedef enum { CLI_SEND = 1, CLI_SLEEP, CLI_TRAIN, CLI_DONE } cli_action;

typedef struct cli_step {
	cli_action action;
	const uint8_t *buf;   /* SEND: request, valid until the next core call */
	size_t len;
	uint64_t until_ms;    /* SLEEP */
	float *params;        /* TRAIN: dim floats, global model on entry */
	uint32_t dim;
	uint32_t round, epochs, batch, deadline_ms; /* TRAIN */
	float lr;
	float momentum, weight_decay, prox_mu; /* TRAIN: 0 when not used */
	uint32_t budget_ms;   /* TRAIN: local time budget (TASK "budget"); 0:
	                         none, train the full E epochs */
	uint32_t max_steps;   /* TRAIN: left 0 by the core; a driver that turns
	                         budget_ms into a step cap for its train
	                         function puts it here (sim/engine.c) */
	uint64_t seed;
	shoal_err err;        /* DONE: SHOAL_OK, or why the client gave up */
} cli_step;

typedef struct cli_stats {
	uint32_t rounds_trained;  /* TASKs trained */
	uint32_t updates_acked;   /* UPDATEs the server acknowledged */
	uint32_t updates_late;    /* UPDATEs refused as stale */
	uint32_t transport_errors;
	uint32_t last_round;      /* last round acknowledged */
} cli_stats;

typedef struct cli_core cli_core;

/* Errors: SHOAL_EINVAL (bad name, dim 0, ...), SHOAL_ENOMEM. A server's
 * refusal of the client's identity ends the client: CLI_DONE with
 * SHOAL_EUNLISTED, SHOAL_ETOKEN, SHOAL_EIDENTITY or SHOAL_EBADSIG (the
 * HELLO's signature; for other requests it registers again). */
shoal_err cli_core_new(const cli_config *cfg, cli_core **out);
void cli_core_free(cli_core *c);

void cli_core_step(cli_core *c, uint64_t now_ms, cli_step *out);
void cli_core_on_reply(cli_core *c, const uint8_t *buf, size_t len, uint64_t now_ms);
void cli_core_on_transport_error(cli_core *c, shoal_err err, uint64_t now_ms);
/* After CLI_TRAIN: params now hold the local model. The core encodes the
 * UPDATE with delta = local - global. Errors: SHOAL_ESTATE (no training in
 * progress), SHOAL_ENONFINITE (local model has NaN/Inf), SHOAL_EINVAL. */
shoal_err cli_core_submit(cli_core *c, uint32_t n_examples, float loss, uint64_t now_ms);
/* cli_core_submit for a task with a time budget (cli_step.budget_ms):
 * steps is the number of local SGD steps tau actually done (0: the full
 * E * ceil(n_examples / B)), sent as "tau". When the task also gives S
 * (TASK "nsteps": FedNova) the core sends delta * S / tau, the
 * normalization of PROTOCOL.md section 17, and keeps the error-feedback
 * residual in that normalized scale. Without a budget steps is ignored
 * and nothing changes. */
shoal_err cli_core_submit_steps(cli_core *c, uint32_t n_examples, uint32_t steps, float loss,
                                uint64_t now_ms);
void cli_core_abort_train(cli_core *c, uint64_t now_ms);

const cli_stats *cli_core_stats(const cli_core *c);
/* How long the driver should wait for the reply to the request of the last
 * CLI_SEND: the server may park a CHECKIN for its announced hold time, so
 * this is hold + 10 s (10 s before WELCOME). */
uint32_t cli_core_request_timeout_ms(const cli_core *c);
/* Last global model received (dim floats), NULL before the first TASK. */
const float *cli_core_global(const cli_core *c);
/* Version of that model (0: none). */
uint32_t cli_core_model_version(const cli_core *c);

/* The error-feedback residual (dim floats), NULL while there is none. The
 * driver may persist it after each acknowledged update and hand it back to
 * a new core with cli_core_set_residual (SHOAL_EINVAL if error feedback is
 * off, SHOAL_ENOMEM). */
const float *cli_core_residual(const cli_core *c);
shoal_err cli_core_set_residual(cli_core *c, const float *residual);

/* Keeping a large idle population small (the simulator): a core is idle
 * between rounds (registering or checking in, no secure session open).
 * cli_core_release frees an idle core's model buffers and residual (no-op
 * when not idle); save the residual first (cli_core_residual) and hand it
 * back with cli_core_set_residual before the core next needs it (at
 * CLI_TRAIN). The core still says it holds its model version, so a server
 * may answer with a delta against it: before handing such a TASK to
 * cli_core_on_reply, give the core that version's model back with
 * cli_core_restore_global (SHOAL_ESTATE if it holds no version or still has
 * its model, SHOAL_ENOMEM). Without it the core asks for the full model. */
bool cli_core_idle(const cli_core *c);
void cli_core_release(cli_core *c);
shoal_err cli_core_restore_global(cli_core *c, const float *global);

/* Further still: a released idle core folded into a record of a few dozen
 * bytes, and unfolded into a new core that behaves exactly as the old one
 * would have (its registration, waits, backoff, counters and the positions
 * of its seeded random streams). Only for a core without identity key,
 * enrollment token or nonce, whose DP noise comes from its seed
 * (dp_noise_from_seed): cli_core_suspend returns false for any other, or
 * for one that is not idle and released. cli_core_resume takes the
 * configuration the core was created with. Errors: as cli_core_new,
 * SHOAL_EINVAL for a record that does not fit the configuration. */
typedef struct cli_idle {
	uint64_t wake;
	uint64_t rng_block[3];   /* jitter, codec noise, DP noise streams */
	uint32_t id, hold_ms, backoff, rate_backoff, held_ver, round;
	cli_stats stats;
	uint8_t rng_pos[3];
	uint8_t state;           /* 0: registering, 1: checking in */
	bool unreachable;
} cli_idle;

bool cli_core_suspend(const cli_core *c, cli_idle *out);
shoal_err cli_core_resume(const cli_config *cfg, const cli_idle *in, cli_core **out);

#endif
