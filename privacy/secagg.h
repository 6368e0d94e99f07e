/* secagg.h - secure aggregation (Bonawitz et al., CCS 2017) with the sparse
 * neighbour graph of SecAgg+ (Bell et al., CCS 2020), as two state machines
 * without I/O: one per client, one for the server.
 *
 * A session is one round among n participants with indices 1..n. Phases:
 *
 *   1 ADVERTISE  client -> server: two fresh X25519 public keys (one to
 *                encrypt shares, one to agree mask seeds), optionally signed
 *                with the client's Ed25519 identity key.
 *                server -> client: ROSTER, the keys of its neighbours that
 *                advertised (U1).
 *   2 SHARE      client -> server: Shamir shares of its mask secret key and
 *                of its self-mask seed, one XChaCha20-Poly1305 ciphertext
 *                per neighbour in the roster.
 *                server -> client: INBOX, the ciphertexts addressed to it by
 *                neighbours that completed this phase (U2).
 *   3 MASKED     client -> server: its input in Z/2^m plus the self mask
 *                and the pairwise masks with every neighbour in U2, packed
 *                at m bits. The server adds it to a running sum on arrival.
 *                server -> client: the set U3 of clients whose input arrived.
 *   4 CONSISTENCY client -> server: a signature over U3 (or no signature
 *                when clients have no identity keys).
 *                server -> client: the signatures of U4 (clients that
 *                answered).
 *   5 UNMASK     client -> server: for each neighbour j whose shares it
 *                holds, the share of j's self-mask seed if j is in U3, else
 *                the share of j's mask secret key. Never both, for any j.
 *
 * The server then reconstructs, removes the self masks of U3 and the
 * pairwise masks U3 members shared with clients that dropped after phase 2,
 * and holds the exact sum over U3 in Z/2^m. PROTOCOL.md section 13 gives
 * every payload byte by byte, the threat model and the thresholds.
 *
 * Phase deadlines belong to the driver (the server core): it calls
 * sa_server_close() when a phase's deadline passes or every expected
 * message arrived. A phase that closes with fewer than t live clients
 * aborts the session (SHOAL_EABORTED); so does a secret that cannot be
 * reconstructed. */
#ifndef SHOAL_SECAGG_H
#define SHOAL_SECAGG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "privacy/rng.h"
#include "shoal/err.h"

#define SA_KEY_BYTES 32        /* X25519 keys, session ids, mask seeds */
#define SA_SIG_BYTES 64        /* Ed25519 signature */
#define SA_IDPK_BYTES 32       /* Ed25519 public key */
#define SA_IDSK_BYTES 64       /* Ed25519 secret key (libsodium layout) */
#define SA_N_MAX 65535u        /* participants per session */
#define SA_CT_BYTES (4 + 4 + 40 + 40 + 16) /* one encrypted share pair */

typedef enum {
	SA_PH_ADVERTISE = 1,
	SA_PH_SHARE = 2,
	SA_PH_MASKED = 3,
	SA_PH_CONSISTENCY = 4,
	SA_PH_UNMASK = 5,
	SA_PH_DONE = 6,    /* server: the sum is ready */
	SA_PH_ABORTED = 7, /* too few clients; no sum */
} sa_phase;

/* What both sides agree on (the server sends it in TASK "sa"). */
typedef struct sa_config {
	uint32_t n;     /* participants, indices 1..n */
	uint32_t k;     /* neighbours per client; n-1 = full SecAgg */
	uint32_t t;     /* Shamir threshold, 1 <= t <= k + 1 */
	uint32_t m;     /* ring bits: values live in Z/2^m, 1..32 */
	uint32_t d;     /* masked elements (model coordinates + 1 weight) */
	uint32_t round;
	uint8_t session[SA_KEY_BYTES]; /* public, fresh per round: binds keys,
	                                  shares and signatures to this session,
	                                  and seeds the neighbour graph */
	bool signed_keys; /* clients sign with identity keys */
	bool ddp;         /* distributed DP: the task carries the noise
	                     parameters and inputs are rotated (privacy/ddg.h) */
} sa_config;

#define SA_CONFIG_BYTES (4 * 6 + SA_KEY_BYTES + 1)
void sa_config_write(const sa_config *c, uint8_t out[SA_CONFIG_BYTES]);
/* Errors: SHOAL_ETRUNC, SHOAL_EMALFORMED (out-of-range field). */
shoal_err sa_config_read(sa_config *c, const uint8_t *in, size_t len);
/* Checks ranges and that t and k fit n. SHOAL_EINVAL. */
shoal_err sa_config_check(const sa_config *c);

/* Threshold for k neighbours when at most a fraction `collusion` of any
 * neighbourhood colludes with the server: t = floor(collusion * k) + 1. It
 * tolerates a fraction `dropout` of dropped neighbours only if
 * k - ceil(dropout * k) >= t; otherwise SHOAL_EINVAL. */
shoal_err sa_threshold(uint32_t k, double dropout, double collusion, uint32_t *t);

/* Smallest ring width m such that the sum of n inputs, each a weight in
 * [0, wmax] times a value in [-levels, levels], cannot wrap:
 * n * wmax * levels < 2^(m-1) and n * wmax < 2^(m-1). SHOAL_EINVAL if no
 * m <= 32 works. */
shoal_err sa_ring_bits(uint32_t n, uint32_t wmax, uint32_t levels, uint32_t *m);

/* The sorted neighbours of client i (1-based) into out[0..k). SecAgg+
 * graph: a Harary graph (each node joined to the k/2 nearest on each side
 * of a ring; k even) over a permutation of 1..n drawn from the session id;
 * full graph when k == n-1. */
void sa_neighbors(const sa_config *c, uint32_t i, uint32_t *out);

/* ---- the secure round's parameters (TASK "sa") --------------------------- */

/* What a selected client needs besides sa_config: its index, the phase
 * deadline, the shared quantization (value v in [-scale, scale] becomes the
 * integer round(v / scale * levels), stochastically), the weight cap, and
 * the shared index set the round masks (d = n_idx + 1: the last element is
 * the FedAvg weight). With c.ddp (distributed DP, privacy/ddg.h) levels is
 * 1, scale is gamma (one integer step), wmax is 1, the DP block below
 * follows, and d = dp_rht_dim(n_idx) + 1 (the rotated, padded values,
 * then the weight). */
typedef struct sa_task {
	sa_config c;
	uint32_t me;
	uint32_t phase_ms;
	float scale;
	uint32_t levels; /* 1..32767 */
	uint32_t wmax;   /* >= 1 */
	uint32_t n_idx;  /* == c.d - 1, or dp_rht_dim(n_idx) == c.d - 1 (ddp) */
	uint32_t *idx;   /* sorted, strictly increasing, < model dim */
	/* c.ddp only */
	float clip;      /* L2 bound of the n_idx values, finite, > 0 */
	uint64_t s2_num; /* per-client noise variance s2_num / s2_den */
	uint32_t s2_den;
	uint64_t l2max2; /* bound on the rounded vector's squared L2 norm, >= 1 */
} sa_task;

#define SA_TASK_DDP_BYTES 24

/* Layout: sa_config (SA_CONFIG_BYTES), me u32, phase_ms u32, scale f32 LE,
 * levels u32, wmax u32, n_idx u32, with c.ddp the DP block (clip f32,
 * s2_num u64, s2_den u32, l2max2 u64), then the indices as LEB128 varints
 * of the gaps (first index, then idx[i] - idx[i-1] - 1). Returns bytes
 * written (<= sa_task_size_max) or SHOAL_EINVAL. */
size_t sa_task_size_max(uint32_t n_idx);
long sa_task_write(const sa_task *t, uint8_t *out, size_t cap);
/* Parses and validates against the model dimension; t->idx is malloc'd
 * (free with sa_task_fini). Errors: SHOAL_ETRUNC, SHOAL_EMALFORMED,
 * SHOAL_EDIM (an index >= dim), SHOAL_ENOMEM. */
shoal_err sa_task_read(sa_task *t, const uint8_t *in, size_t len, uint32_t dim);
void sa_task_fini(sa_task *t);

/* ---- client ------------------------------------------------------------ */

typedef struct sa_client sa_client;

/* me in 1..n. ident_sk: Ed25519 secret key when c->signed_keys, else NULL.
 * r: randomness for keys, seeds and share polynomials (NULL: libsodium's
 * randombytes_buf). Secrets live in sodium_malloc'd memory. */
shoal_err sa_client_new(const sa_config *c, uint32_t me, const uint8_t *ident_sk, rng *r,
                        sa_client **out);
/* Wipes every secret. */
void sa_client_free(sa_client *cl);

/* Each step consumes the server's reply to the previous step (none for
 * the first) and produces the next request payload in *out (malloc'd; the
 * caller frees it). Errors: SHOAL_ESTATE (called out of order or twice),
 * SHOAL_EMALFORMED / SHOAL_ETRUNC (bad server payload), SHOAL_EABORTED
 * (fewer than t peers left: the client stops taking part), SHOAL_ECRYPTO
 * (a share failed to decrypt, a signature failed), SHOAL_ENOMEM. */
shoal_err sa_client_advertise(sa_client *cl, uint8_t **out, size_t *len);
shoal_err sa_client_share(sa_client *cl, const uint8_t *roster, size_t rlen, uint8_t **out,
                          size_t *len);
/* x: c->d values in Z/2^m (the caller's integer encoding). */
shoal_err sa_client_mask(sa_client *cl, const uint8_t *inbox, size_t ilen, const uint32_t *x,
                         uint8_t **out, size_t *len);
shoal_err sa_client_consistency(sa_client *cl, const uint8_t *u3, size_t ulen, uint8_t **out,
                                size_t *len);
shoal_err sa_client_unmask(sa_client *cl, const uint8_t *sigs, size_t slen, uint8_t **out,
                           size_t *len);
sa_phase sa_client_phase(const sa_client *cl); /* the next step to call */

/* ---- server ------------------------------------------------------------ */

typedef struct sa_server sa_server;

/* ident_pk: n Ed25519 public keys (index i-1 for client i) when
 * c->signed_keys, else NULL. threads: workers for unmasking (>= 1). */
shoal_err sa_server_new(const sa_config *c, const uint8_t (*ident_pk)[SA_IDPK_BYTES],
                        unsigned threads, sa_server **out);
void sa_server_free(sa_server *s);

sa_phase sa_server_phase(const sa_server *s);
/* A request payload from client i for phase ph. Validated completely
 * before any state changes. Errors: SHOAL_ESTATE (wrong phase, or i is not
 * live in this phase), SHOAL_EDUP, SHOAL_EUNKNOWN (i out of range),
 * SHOAL_ETRUNC / SHOAL_EMALFORMED / SHOAL_ETOOBIG, SHOAL_ECRYPTO (bad
 * signature). */
shoal_err sa_server_recv(sa_server *s, uint32_t i, sa_phase ph, const uint8_t *in, size_t len);
/* Clients expected in the current phase (live after the previous one) and
 * how many of them already sent. */
uint32_t sa_server_expected(const sa_server *s);
uint32_t sa_server_received(const sa_server *s);
/* Does the open phase still wait for client i? */
bool sa_server_waiting_for(const sa_server *s, uint32_t i);
/* Ends the current phase. Returns SHOAL_OK (next phase open; or, after
 * UNMASK, the sum is ready) or SHOAL_EABORTED. */
shoal_err sa_server_close(sa_server *s);
/* The reply for client i to its request of the phase that just closed
 * (malloc'd). SHOAL_ESTATE if i sent nothing in that phase. */
shoal_err sa_server_reply(sa_server *s, uint32_t i, uint8_t **out, size_t *len);
/* After UNMASK closed successfully: the exact sum over U3 (d values in
 * Z/2^m), and U3 as a bitmap (alive[i-1]). */
const uint32_t *sa_server_sum(const sa_server *s);
bool sa_server_in_u3(const sa_server *s, uint32_t i);
/* Distinct share-holder sets whose Lagrange coefficients were computed in
 * the last reconstruction (1 for full SecAgg: one set serves every secret). */
uint32_t sa_server_lagrange_sets(const sa_server *s);

#endif
