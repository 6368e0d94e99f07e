/* shoal/client.h - libshoal-client: embed a shoal federated-learning client.
 *
 * The library speaks the protocol (PROTOCOL.md) over nng and calls your
 * train callback whenever the server selects this client. Your callback
 * works on a flat float parameter vector: it receives the current global
 * model in params, trains in place on local data, and reports how many
 * examples it used (the FedAvg weight). The library computes and sends
 * the update. Link with -lshoal-client (plus nng, msgpackc, sodium).
 *
 *   static int train(void *user, float *params, size_t dim,
 *                    const shoal_train_info *info,
 *                    uint32_t *n_examples, float *loss) { ...; return 0; }
 *
 *   shoal_client_options o;
 *   shoal_client_options_init(&o);
 *   o.url = "tcp://server:7000"; o.name = "pi-kitchen";
 *   (or o.url = "tls+tcp://server:7000"; o.tls_ca = "ca.crt";)
 *   o.model = "logreg"; o.dim = 7850; o.n_examples = 600;
 *   o.train = train;
 *   shoal_err e = shoal_client_run(&o, NULL);
 */
#ifndef SHOAL_CLIENT_H
#define SHOAL_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct shoal_train_info {
	uint32_t round;       /* server round id */
	uint32_t epochs;      /* E */
	uint32_t batch;       /* B */
	float lr;             /* learning rate (the server may decay it by round) */
	float momentum;       /* SGD momentum, 0 = plain SGD */
	float weight_decay;   /* L2 weight decay, 0 = none */
	float prox_mu;        /* FedProx: add (mu/2)*||w - w_global||^2 to the
	                         local loss; 0 = plain FedAvg */
	uint64_t seed;        /* use for shuffling, so runs are reproducible */
	uint32_t deadline_ms; /* time left before the server closes the round */
	/* Time-budgeted local work (PROTOCOL.md section 17). With a budget the
	   callback must stop after max_steps minibatch steps when it is not 0,
	   and may stop earlier (e.g. on its own clock) if it stores the steps
	   it did in *steps_done; otherwise the library reports
	   min(max_steps, E * ceil(n / B)) steps (all E epochs when max_steps
	   is 0). The library sets max_steps to floor(budget_ms / t), where t
	   is the wall time of the last budgeted callback divided by its steps
	   (so it includes the callback's own overhead, and follows the device
	   as it speeds up or slows down); 0 before the first measurement, when
	   the callback may time a few steps itself (shoal-client does) or do
	   the full work. */
	uint32_t budget_ms;   /* local training time budget, 0: none */
	uint32_t max_steps;   /* steps to stop after, 0: all E epochs */
	uint32_t *steps_done; /* out, optional: steps done when stopping early */
} shoal_train_info;

/* Return 0 on success; non-zero skips this round (nothing is sent). */
typedef int (*shoal_train_fn)(void *user, float *params, size_t dim,
                              const shoal_train_info *info,
                              uint32_t *n_examples, float *loss);

typedef struct shoal_client_options {
	const char *url;        /* e.g. "tcp://10.0.0.2:7000" */
	const char *name;       /* stable, unique client name (1..64 chars) */
	const char *model;      /* model name the server trains */
	size_t dim;             /* parameter count */
	uint32_t n_examples;    /* local examples */
	shoal_train_fn train;
	void *user;
	uint64_t seed;          /* backoff jitter; default 0 */
	uint32_t backoff_min_ms;/* default 100 */
	uint32_t backoff_max_ms;/* default 5000 */
	size_t max_message;     /* default 64 MiB */
	volatile sig_atomic_t *stop; /* optional: set non-zero to stop */
	float *final_params;    /* optional out: dim floats, last global model */
	const char *compress;   /* update encodings to offer the server:
	                           "topk:0.01,q8" (default) offers top-k with
	                           q8 values; "any" offers every encoding;
	                           "none" only dense float32 (PROTOCOL.md 12) */
	int error_feedback;     /* 1 (default): keep what compression did not
	                           send and add it to the next update (top-k;
	                           rand-k is unbiased and never uses it) */
	int downlink_q8;        /* 1 (default): accept q8 model deltas */
	float *residual_io;     /* optional: dim floats; loaded as the starting
	                           error-feedback residual when residual_load is
	                           set, and refreshed after every acknowledged
	                           update so the caller can persist it */
	int residual_load;
	/* optional: called after every acknowledged update (e.g. to save
	   residual_io); return value ignored */
	void (*on_ack)(void *user, uint32_t round);
	int dp_noise_from_seed; /* 0 (default): distributed-DP noise from a key
	                           drawn from the OS CSPRNG; 1: from `seed`
	                           (simulations: reproducible, and anyone who
	                           knows the seed can subtract the noise) */
	/* TLS, for a tls+tcp:// url (PEM files; PROTOCOL.md section 1.1): the
	   client checks the server's certificate against tls_ca and the name
	   tls_server_name (NULL: the url's host), and presents tls_cert with
	   tls_key when both are set (servers with --tls-ca require it). */
	const char *tls_ca;          /* required for tls+tcp:// */
	const char *tls_cert;
	const char *tls_key;
	const char *tls_server_name;
	/* Client identity (PROTOCOL.md section 16): with identity_sk the client
	   announces its public key and signs every request over the server's
	   nonce, which servers started with --allowlist or --enroll-tokens
	   require. identity_sk: 64 bytes, a libsodium Ed25519 secret key
	   (crypto_sign_keypair), copied into locked memory for the run and
	   wiped; keep the caller's copy in sodium_malloc'd memory too.
	   enroll_token: a one-time enrollment token for a server that does not
	   list the key yet, or NULL. */
	const unsigned char *identity_sk;
	const char *enroll_token;
} shoal_client_options;

typedef struct shoal_client_stats {
	uint32_t rounds_trained;
	uint32_t updates_acked;
	uint32_t updates_late;
	uint32_t transport_errors;
	uint32_t last_round;
} shoal_client_stats;

void shoal_client_options_init(shoal_client_options *o);

/* Run until the server says training is done (SHOAL_OK), *stop is set
 * (SHOAL_ECLOSED), or a fatal error (e.g. SHOAL_EMODEL, SHOAL_EDIM when the
 * server trains another model). stats may be NULL. */
shoal_err shoal_client_run(const shoal_client_options *o, shoal_client_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
