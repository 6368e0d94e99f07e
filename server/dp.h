/* dp.h - client sampling and central differential privacy in the server
 * (DP-FedAvg, McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially
 * Private Recurrent Language Models", with a fixed denominator; PROTOCOL.md
 * section 14 is the user-facing description).
 *
 * One round of `--dp central`:
 *   1. sampling: every parked client is selected independently with
 *      probability q (srv_poisson_select), from the round's CSPRNG stream,
 *      over the candidates sorted by name. This is the sampling the
 *      accountant assumes, so the server refuses DP with fixed (K-of-n)
 *      sampling. q is only honest when every registered client is a
 *      candidate: shoal-sim parks the whole population before each round
 *      (min_clients = N); a server that starts a DP round with fewer parked
 *      than registered clients logs a warning (the absent ones had
 *      probability 0, not q, of being in the round).
 *   2. clipping: the server decodes each accepted update (dense or codec
 *      form) and clips it to L2 norm <= C itself (dp_clip_l2). In central
 *      mode the server is trusted, so this verification is what the
 *      guarantee rests on; clients clip too (TASK "clip"), so with dense
 *      updates nothing changes here and with quantized ones the server only
 *      trims the stochastic-rounding excess (logged at debug level when an
 *      update needed more than 1%).
 *   3. noise: sum = sum of the clipped updates, each with weight 1 (example
 *      counts would change the sensitivity), in double in selection order;
 *      the released average is (sum + N(0, sigma^2 I)) / (q n), n the
 *      number of candidates, a fixed denominator (the expected number of
 *      participants), not the number that reported: dividing by a count
 *      that depends on who took part would leak it. Then the server
 *      optimizer runs on that average as usual.
 *   4. accounting: one Renyi-DP accountant (privacy/rdp.h) charges one step
 *      of the Poisson-subsampled Gaussian (q, z) when a round opens, before
 *      anyone trained. A round nobody was sampled into, or where every
 *      selected client dropped, is still a step: it still releases the
 *      noised (zero) sum, model += noise / (q n); an unchanged model would
 *      tell that nobody contributed, and the release keeps the mechanism
 *      the accountant analyses. min_reports is not used in DP mode for the
 *      same reason (abandoning would depend on participation).
 *   5. budget: before a round opens the accountant is peeked; a round that
 *      would take epsilon past the budget is refused and training finishes
 *      ("privacy budget: epsilon would reach X > E at round R; stopping
 *      after round R-1"). --target-epsilon E calibrates z
 *      (dp_calibrate_sigma) so that the configured rounds spend at most E;
 *      --noise-multiplier Z with --epsilon-budget E stops when E is reached.
 *
 * Floating point (Mironov 2012). The sum is rounded onto the lattice
 * step*Z of dp_gaussian_step(sigma) in double (exact: step is a power of
 * two) and lattice noise from dp_gaussian_noise_add (exact discrete
 * Gaussian, CKS 2020, on a zero vector: each value N*step is exact in
 * float) is added, so the sum is exact in double and everything after it
 * (division, the optimizer, float32) is post-processing. Rounding changes
 * the query: neighbouring sums can end up step*sqrt(d) further apart, and
 * double summation of up to M = max_clients float updates adds at most
 * 2 M^2 2^-53 C. The noise therefore uses
 *   sigma = z C (1 + M^2 2^-52) / (1 - z 2^-19 sqrt(d))
 * (the lattice step is at most sigma 2^-19), which makes the effective
 * noise multiplier at least z for the true sensitivity; for the 2NN
 * (d = 199,210) at z = 1 that is 0.09% more noise.
 *
 * The noise comes from a ChaCha20 stream (privacy/rng.h), one per round,
 * distinct from the selection streams. Its key is derived from
 * cfg->dp_noise_key when given (shoal-server draws one with
 * randombytes_buf unless --seed is explicit), else from cfg->seed:
 * reproducible, which is what simulations and tests want, but then anyone
 * who knows the seed can subtract the noise.
 *
 * What is not private: the counts and losses in the server's own logs and
 * metrics (selected, reported, train_loss) come from the raw updates. In
 * central DP the server is trusted; what the guarantee covers is the
 * sequence of released models (and the test accuracy computed from them). */
#ifndef SHOAL_SERVER_DP_H
#define SHOAL_SERVER_DP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "privacy/rng.h"
#include "server/core.h"
#include "shoal/err.h"

typedef struct srv_dp srv_dp;

/* The DP state of a server core, NULL when DP is off (for reports). */
const srv_dp *srv_core_dp(const srv_core *s);

/* Stream ids of the per-round noise rng: this bit plus the round id. The
 * selection of round r uses stream r (< 2^32), so they never meet. */
#define SRV_DP_NOISE_STREAM (UINT64_C(1) << 62)
/* Clipping by more than this factor is logged (debug level). */
#define SRV_DP_CLIP_LOG 1.01

/* Checks the sampling and DP fields of c for a model of dim parameters;
 * logs what to change and returns SHOAL_EINVAL, else SHOAL_OK. */
shoal_err srv_dp_check(const srv_config *c, size_t dim);

/* Poisson sampling: keeps each of v[0..n) independently with probability
 * q (one draw u = (rng_u64 >> 11) 2^-53 per entry, in order, kept iff
 * u < q), compacting the kept ones to the front in their order. Returns
 * how many were kept. */
uint32_t srv_poisson_select(rng *r, double q, uint32_t *v, uint32_t n);

/* The DP state of a server with c->dp != SRV_DP_OFF (*out = NULL when it
 * is off). Calibrates z from c->target_epsilon for c->rounds rounds at
 * q = c->sample_rate (logged). Errors: SHOAL_EINVAL (the budget does not
 * allow one round, the target is out of reach, z too large for the
 * lattice: explained in the log), SHOAL_ENOMEM. c must have passed
 * srv_dp_check. */
shoal_err srv_dp_new(const srv_config *c, size_t dim, srv_dp **out);
void srv_dp_free(srv_dp *dp);

/* z (given or calibrated) and the per-coordinate noise stddev sigma of the
 * sum (see the file comment). */
double srv_dp_noise_multiplier(const srv_dp *dp);
double srv_dp_noise_stddev(const srv_dp *dp);
/* Epsilon spent so far at the configured delta; 0 before the first step. */
double srv_dp_epsilon(const srv_dp *dp);
/* Rounds charged to the accountant so far. */
uint64_t srv_dp_steps(const srv_dp *dp);

/* May round `round` open? False (after logging the budget message) if one
 * more step would take epsilon past the budget. */
bool srv_dp_round_allowed(srv_dp *dp, uint32_t round);

/* Round `round` opened over n_candidates parked clients (n_registered
 * registered): charges one step and fixes the denominator q*n_candidates.
 * Warns when n_candidates < n_registered (see the file comment). */
void srv_dp_round_open(srv_dp *dp, uint32_t round, uint32_t n_candidates,
                       uint32_t n_registered);

/* acc[0..dim) += the update in wire form (compressed: a common/codec.h
 * encoding, validated on arrival; else dim little-endian float32) clipped
 * to L2 norm <= C, weight 1. Returns the norm before clipping, or NaN if
 * it could not be used (nothing added: the decoded values overflowed).
 * scratch: dim uint32 for the codec. */
double srv_dp_add_update(srv_dp *dp, double *acc, const uint8_t *wire, size_t len,
                         bool compressed, uint32_t *scratch);

/* The release of round `round`: acc <- (lattice(acc) + noise) / (q n).
 * Errors: SHOAL_ENONFINITE (acc not finite or beyond the lattice range),
 * SHOAL_EINVAL; acc is unspecified then. */
shoal_err srv_dp_release(srv_dp *dp, double *acc, uint32_t round);

#endif
