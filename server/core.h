/* core.h - the server protocol core: FedAvg rounds as a state machine that
 * does no I/O (DESIGN.md section 2).
 *
 * The transport is request/reply: every client message is a request, and
 * the core emits exactly ONE reply per request, either at once or later (a
 * CHECKIN is parked until a round selects the client or hold_ms passes: long
 * polling). The driver feeds requests with srv_core_on_request(), calls
 * srv_core_on_timer() when srv_core_next_deadline() passes, and drains
 * srv_core_pop_reply() / srv_core_pop_event() after every call.
 * Time is "now" in milliseconds on any monotonic clock, given by the driver.
 *
 * A round: wait until >= min_clients clients are parked in CHECKIN; select
 * min(K, waiting) of them with the round's CSPRNG stream (candidates sorted
 * by name, so the choice does not depend on arrival order); send each a TASK;
 * collect UPDATEs until all selected reported or the deadline passed; if at
 * least min_reports reported, FedAvg (weights = example counts) in selection
 * order and evaluate; otherwise abandon (model unchanged). Round ids are
 * 1..rounds, one id per attempt, completed or abandoned. */
#ifndef SHOAL_SERVER_CORE_H
#define SHOAL_SERVER_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ml/ml.h"
#include "server/opt.h"
#include "shoal/err.h"

enum { SRV_SECAGG_OFF = 0, SRV_SECAGG_FULL = 1, SRV_SECAGG_PLUS = 2 };
/* Client sampling and differential privacy (server/dp.h). */
enum { SRV_SAMPLING_FIXED = 0, SRV_SAMPLING_POISSON = 1 };
enum { SRV_DP_OFF = 0, SRV_DP_CENTRAL = 1, SRV_DP_DISTRIBUTED = 2 };
/* How distributed DP is accounted (privacy/rdp.h, dp_ddg.sub). */
enum { SRV_DP_ACCT_BOUND = 0, SRV_DP_ACCT_GAUSSIAN = 1 };
/* How rounds with a local time budget aggregate (server/nova.h). */
enum { SRV_BUDGET_FEDNOVA = 0, SRV_BUDGET_FEDAVG = 1 };
#define SRV_DP_KEY_BYTES 32
#define SRV_NONCE_KEY_BYTES 32

typedef struct srv_config {
	const char *model;          /* built-in model name ("logreg", "2nn") */
	uint32_t rounds;            /* round attempts before finishing */
	uint32_t clients_per_round; /* K */
	uint32_t min_clients;       /* M: parked clients needed to start a round */
	uint32_t min_reports;       /* fewer updates than this -> round abandoned */
	uint32_t epochs;            /* E sent in TASK */
	uint32_t batch;             /* B sent in TASK */
	float lr;                   /* client lr of round 1, sent in TASK */
	float lr_decay;             /* round r uses lr * lr_decay^(r-1); (0, 1] */
	float momentum;             /* client SGD momentum, [0, 1) ("mom") */
	float weight_decay;         /* client L2 weight decay, >= 0 ("wd") */
	float prox_mu;              /* FedProx proximal weight, >= 0 ("mu") */
	srv_opt_config opt;         /* server optimizer applied to the average */
	/* Time-budgeted local work (PROTOCOL.md section 17): TASK "budget" asks
	 * each client to do only the local SGD steps that fit this much
	 * training time on its hardware (at least 1, at most E epochs), and to
	 * report them ("tau"). FedNova aggregation (server/nova.h) normalizes
	 * for the unequal step counts; FedAvg weighting averages as without
	 * a budget (the ablation). 0: off, every client does E epochs. */
	uint32_t local_budget_ms;
	uint32_t budget_agg;        /* SRV_BUDGET_FEDNOVA / _FEDAVG */
	double target_accuracy;     /* finish once a round reaches it; 0: off */
	double over_select;         /* select ceil(over_select * K) clients and
	                               close the round at the K-th update (the
	                               first arrivals); >= 1, 1: off. Fixed
	                               sampling and plain rounds only */
	const char *compress;       /* update encoding asked of clients that
	                               support it (common/codec.h spec, e.g.
	                               "topk:0.01,q8"); "none" or NULL: dense */
	bool downlink_q8;           /* after a client's first full model, send
	                               q8 model deltas (TASK "dq") when it holds
	                               the previous version, and the empty
	                               change when it holds the current one */
	/* Secure aggregation (PROTOCOL.md section 13): the server learns only
	 * the sum of the selected clients' updates. The update encoding's
	 * ratio sets the size of the shared index set ("none": every
	 * coordinate) and its value bits the levels (q8: 127, q4: 7). */
	uint32_t secagg;            /* SRV_SECAGG_OFF / _FULL / _PLUS */
	uint32_t secagg_k;          /* PLUS: neighbours per client, even; 0:
	                               2*ceil(log2 n) for n selected clients */
	double secagg_dropout;      /* fraction of a neighbourhood that may drop
	                               and still be unmasked, [0, 1) */
	double secagg_collusion;    /* fraction of a neighbourhood that may
	                               collude with the server, [0, 1) */
	uint32_t secagg_phase_ms;   /* deadline of each phase after training */
	float secagg_scale;         /* shared quantization range; 0: adaptive */
	unsigned secagg_threads;    /* workers for unmasking */
	/* Sampling and central differential privacy (server/dp.h, PROTOCOL.md
	 * section 14). Fixed sampling selects min(K, parked) uniformly without
	 * replacement; Poisson sampling selects each parked client
	 * independently with probability sample_rate (K is then not used). */
	uint32_t sampling;          /* SRV_SAMPLING_FIXED / _POISSON */
	double sample_rate;         /* q in (0, 1] (Poisson) */
	uint32_t dp;                /* SRV_DP_OFF / _CENTRAL / _DISTRIBUTED (needs
	                               Poisson; distributed needs secagg) */
	double clip;                /* C: L2 bound of each client's update (DP);
	                               with clip_quantile, the starting bound */
	double clip_quantile;       /* central DP: adapt C to this quantile of
	                               the update norms (Andrew et al. 2021,
	                               privacy/adaclip.h); 0: fixed C */
	double clip_lr;             /* geometric step of the adaptation [0.2] */
	double clip_count_std;      /* noise stddev on the count of unclipped
	                               updates; 0: q * min_clients / 20 */
	double noise_multiplier;    /* z: noise stddev z*C on the sum; 0: calibrate
	                               it from target_epsilon */
	double target_epsilon;      /* calibrate z so that `rounds` rounds spend
	                               this epsilon; also the budget. 0: off */
	double epsilon_budget;      /* with z given: no round may take epsilon
	                               past this; 0: no budget */
	double delta;               /* delta of (epsilon, delta) */
	/* Distributed DP (server/dp.h, PROTOCOL.md section 14.2): each client
	 * adds discrete Gaussian noise before masking, sized so that the sum
	 * over dp_min_clients clients carries the noise z*C. */
	uint32_t dp_min_clients;    /* fewest clients whose noise a released sum
	                               holds; fewer in U3 aborts the round. 0:
	                               max(2, floor(q * min_clients * (1 -
	                               secagg_dropout))) */
	double dp_gamma;            /* integer step of the encoding; 0: C / 2^b
	                               with 2^b >= 16 sqrt(padded set size) */
	uint32_t dp_accounting;     /* SRV_DP_ACCT_BOUND / _GAUSSIAN */
	const uint8_t *dp_noise_key; /* SRV_DP_KEY_BYTES secret bytes that key
	                               the noise; NULL derives it from seed
	                               (reproducible: simulations and tests).
	                               Read by srv_core_new only. */
	/* Client identity (PROTOCOL.md section 16, privacy/ident.h). With
	 * identity off every client is admitted and nothing is signed (open
	 * enrolment). With it on, a client must present an Ed25519 key that
	 * is on the allowlist, or was enrolled with a token (now or in an
	 * earlier run: the registry keeps it), or an unused enrollment token
	 * (which that key then consumes), and sign every request over the
	 * nonce of the server's previous reply. Read by srv_core_new only. */
	bool identity;              /* --allowlist and/or --enroll-tokens given */
	const uint8_t (*allowlist)[32]; /* n_allowlist public keys */
	uint32_t n_allowlist;
	const uint8_t (*tokens)[32]; /* BLAKE2b-256 of each enrollment token
	                               (id_token_hash) */
	uint32_t n_tokens;
	const uint8_t *nonce_key;   /* SRV_NONCE_KEY_BYTES secret bytes that key
	                               the nonces; NULL derives them from seed
	                               (tests and simulations: a server restarted
	                               with the same seed would repeat its nonces,
	                               so drivers on a network pass OS bytes) */
	/* Asynchronous buffered aggregation (FedBuff: Nguyen et al. 2022,
	 * "Federated Learning with Buffered Asynchronous Aggregation";
	 * PROTOCOL.md section 18). async_k > 0 turns it on: up to
	 * concurrency clients train at once, each on the model current when
	 * it checked in; every async_k accepted updates make one round: the
	 * model moves by the server optimizer applied to
	 * sum s(tau_i) n_i delta_i / sum n_i, s(tau) = 1/sqrt(1+tau), tau =
	 * versions published since the client's task. min_clients,
	 * min_reports and over_select do not apply; plain mode only (no
	 * secure aggregation, no DP, fixed sampling). */
	uint32_t async_k;           /* buffer size K; 0: synchronous rounds */
	uint32_t concurrency;       /* C: clients training at once; 0: K
	                               (clients_per_round) */
	uint32_t max_staleness;     /* an update more versions behind than this
	                               is refused (SHOAL_ESTALE) */
	uint32_t round_timeout_ms;  /* deadline, from round start (async: from
	                               the task, after which the slot is freed) */
	uint32_t hold_ms;           /* longest a CHECKIN is parked */
	uint32_t max_clients;       /* registry size limit */
	size_t max_message;         /* bytes; larger requests are refused */
	uint64_t seed;              /* model init + selection + training seeds */
	const ml_dataset *test;     /* evaluation set; NULL skips evaluation */
} srv_config;

/* Weight of an update tau model versions old in asynchronous rounds:
 * 1/sqrt(1 + tau) (FedBuff's polynomial staleness scaling, exponent 1/2). */
double srv_staleness_weight(uint32_t tau);

/* rounds 10, K 10, M 10, min_reports 1, E 1, B 10, lr 0.05 (no decay, no
 * momentum, weight decay or proximal term), server optimizer FedAvg with
 * eta 1, compress "topk:0.01,q8", q8 downlink, timeout 60 s, hold 2 s,
 * max_clients 10000, max_message 64 MiB, seed 1, model "2nn"; secure
 * aggregation off (when on: dropout 0.2, collusion 0.5, phase deadline
 * 30 s, adaptive scale, 2 unmasking threads); fixed sampling; DP off
 * (delta 1e-5 when on); synchronous (async_k 0; when on: concurrency K,
 * max staleness 20). */
void srv_config_defaults(srv_config *c);

/* Largest buffer size of asynchronous rounds (srv_config.async_k). */
#define SRV_ASYNC_K_MAX 65536u

/* Error codes counted in srv_round_stats.refused: -1 .. -(SRV_CODES-1). */
#define SRV_CODES 48

typedef struct srv_round_stats {
	uint32_t round;
	uint32_t selected;    /* TASKs sent */
	uint32_t reported;    /* UPDATEs accepted and counted */
	uint32_t dropped;     /* selected - reported */
	uint32_t rejected;    /* error replies sent during the round */
	bool abandoned;
	double accuracy;      /* test accuracy of the model after the round */
	double loss;          /* test loss */
	double train_loss;    /* mean of the reported clients' training loss */
	uint64_t bytes_up;    /* payload bytes of the round's UPDATEs received */
	uint64_t bytes_down;  /* payload bytes of the round's TASKs sent (and
	                         SA_REPLYs in secure mode) */
	uint32_t sa_threshold; /* secure mode: Shamir threshold t, else 0 */
	bool async;           /* an asynchronous round: K buffered updates;
	                         selected counts the TASKs sent and dropped the
	                         tasks lost (declined, past their deadline or
	                         refused as too stale) while it filled */
	double staleness;     /* async: mean tau of the aggregated updates */
	uint32_t staleness_max; /* async: largest tau among them */
	double epsilon;       /* DP: epsilon spent after this round; NaN if off */
	double tau_eff;       /* local time budget: the weighted mean of the local
	                         steps in the sum (FedNova's tau_eff); 0 when no
	                         budget or nothing was summed */
	uint64_t start_ms, end_ms;
	/* ERROR replies by code, refused[-code], since the previous round
	 * ended, in any phase (every limit and bad input is counted here; the
	 * driver adds the requests it refuses itself, -25 over the rate
	 * limit). */
	uint32_t refused[SRV_CODES];
	/* Filled in by the driver: connections open when the round ended, and
	 * connections closed at once over its limit since the previous round. */
	uint32_t conns_open;
	uint32_t conns_refused;
} srv_round_stats;

typedef enum {
	SRV_EV_ROUND_START = 1, /* stats.round, stats.selected valid */
	SRV_EV_ROUND_END = 2,   /* all stats valid */
	SRV_EV_FINISHED = 3,    /* the last round ended */
} srv_event_kind;

typedef struct srv_event {
	srv_event_kind kind;
	srv_round_stats stats;
} srv_event;

typedef struct srv_reply {
	uint64_t req;   /* the handle given to srv_core_on_request */
	uint8_t *buf;   /* malloc'd message; the caller frees it */
	size_t len;
	bool close;     /* drop the peer's connection after sending */
} srv_reply;

typedef struct srv_core srv_core;

/* Errors: SHOAL_EINVAL (bad config: explained in the log), SHOAL_EMODEL,
 * SHOAL_ENOMEM. */
shoal_err srv_core_new(const srv_config *cfg, srv_core **out);
void srv_core_free(srv_core *s);

/* One request from the transport. req is an opaque handle that the core
 * hands back in exactly one srv_reply. */
void srv_core_on_request(srv_core *s, uint64_t req, const uint8_t *buf, size_t len,
                         uint64_t now_ms);
/* Process expired holds and deadlines, and start a round if possible. */
void srv_core_on_timer(srv_core *s, uint64_t now_ms);
/* Absolute time of the next timer, or UINT64_MAX if none. */
uint64_t srv_core_next_deadline(const srv_core *s);

bool srv_core_pop_reply(srv_core *s, srv_reply *out);
bool srv_core_pop_event(srv_core *s, srv_event *out);

bool srv_core_finished(const srv_core *s);
/* Flush every parked request (with DONE if finished, else WAIT); used when
 * the driver shuts down. */
void srv_core_release_all(srv_core *s, uint64_t now_ms);
const float *srv_core_params(const srv_core *s, size_t *dim);
/* Version of the global model: 1 at start, +1 per completed round. */
uint32_t srv_core_model_version(const srv_core *s);
uint32_t srv_core_round(const srv_core *s);
/* Clients that ever completed HELLO. */
uint32_t srv_core_registered(const srv_core *s);
/* DP: epsilon spent so far (0 before round 1) at the configured delta;
 * NaN when DP is off. */
double srv_core_epsilon(const srv_core *s);

/* Checkpoints (server/ckpt.h; PROTOCOL.md, "Server checkpoint file").
 * srv_core_save encodes the whole state between rounds (SHOAL_ESTATE while
 * a round runs). After srv_core_checkpoint_enable the core encodes it at
 * every round boundary, after a round closes and before the next opens;
 * srv_core_take_checkpoint hands out the newest such image (malloc'd,
 * the caller frees it; false if none is new) and the round it ends. A driver writes it before
 * sending the replies of the same call, so no client hears of a round the
 * file does not hold. srv_core_restore loads a decoded checkpoint into a
 * core fresh from srv_core_new with the same settings; the next round is
 * then c->round + 1, with the same selection and seeds as in the run that
 * wrote it. Errors: SHOAL_ESTATE (the core is not fresh), SHOAL_EINVAL
 * (other settings or an inconsistent state, logged); free the core then. */
struct srv_ckpt;
struct srv_ckpt_client;
shoal_err srv_core_save(const srv_core *s, uint8_t **buf, size_t *len);
void srv_core_checkpoint_enable(srv_core *s);
bool srv_core_take_checkpoint(srv_core *s, uint8_t **buf, size_t *len, uint32_t *round);
shoal_err srv_core_restore(srv_core *s, const struct srv_ckpt *c);
/* The registry log (ckpt.h): srv_core_client copies out client `id`
 * (false if there is none); srv_core_restore_clients registers cl[0..n)
 * as the next ids, before any request (SHOAL_EINVAL: a name twice, or
 * past --max-clients; logged). */
bool srv_core_client(const srv_core *s, uint32_t id, struct srv_ckpt_client *out);
shoal_err srv_core_restore_clients(srv_core *s, const struct srv_ckpt_client *cl, uint32_t n);
/* Client identity for the key log (ckpt.h): srv_core_client_key copies
 * out the key bound to client id (false if none); srv_core_take_binding
 * hands out, oldest first, the id of each client whose key was bound (and
 * token used up) since the last call (false: none). srv_core_restore_key
 * binds k->pk (and its token) to client k->id, before any request:
 * SHOAL_EINVAL (no such client, it has another key, or the key belongs to
 * another client; logged), SHOAL_ENOMEM; the same binding again is not an
 * error. */
struct srv_ckpt_key;
bool srv_core_client_key(const srv_core *s, uint32_t id, struct srv_ckpt_key *out);
bool srv_core_take_binding(srv_core *s, uint32_t *id);
shoal_err srv_core_restore_key(srv_core *s, const struct srv_ckpt_key *k);

/* One JSON object per line with the shared metrics keys (round, accuracy,
 * loss, clients, dropped, bytes_up, bytes_down), plus abandoned, rejected,
 * tau_eff (when > 0),
 * train_loss, refused (an object: error name -> count, non-zero counts
 * only; "connections" for connections refused), connections (open at the
 * round's end, when the driver counts them), epsilon when DP is on
 * (st->epsilon not NaN), staleness and staleness_max in asynchronous
 * rounds, and virtual_s when virtual_s >= 0. Flushes f. */
void srv_metrics_write(FILE *f, const srv_round_stats *st, double virtual_s);

#endif
