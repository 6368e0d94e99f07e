/* dp.h - client sampling and differential privacy in the server: central
 * (DP-FedAvg, McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially
 * Private Recurrent Language Models", with a fixed denominator) and
 * distributed (Kairouz, Liu, Steinke 2021, below); PROTOCOL.md section 14
 * is the user-facing description.
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
 * sequence of released models (and the test accuracy computed from them).
 *
 * One round of `--dp distributed` (needs --secagg full|plus and Poisson
 * sampling): the distributed discrete Gaussian mechanism of Kairouz, Liu
 * and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
 * Learning with Secure Aggregation" (ICML 2021). The server never sees an
 * update, only the noised sum of a secure round.
 *   1. sampling: Poisson as above.
 *   2. clients (client/core.c, privacy/ddg.h): each selected client clips
 *      the values it sends, its delta (plus error-feedback residual) on
 *      the round's shared index set, to L2 <= C; the clip is on the shared
 *      coordinates because that is what is sent, so the sensitivity holds
 *      for it (the full delta was clipped to C first, and the residual
 *      keeps only the coordinates outside the set). It rotates them (the
 *      randomized Hadamard transform, padded to a power of two, seed from
 *      the session id: public), scales by 1/gamma, rounds to integers with
 *      conditional randomized rounding (retried until the squared norm is
 *      <= l2max2), adds discrete Gaussian noise N_Z(0, sigma_c^2) to every
 *      coordinate from a secret stream, and masks the result in Z/2^m with
 *      weight 1: unweighted contributions, so the sensitivity does not
 *      depend on a client's data size, and the weight element stays small.
 *   3. noise size: sigma_c^2 = (z l2)^2 / t_min with l2 = sqrt(l2max2) the
 *      integer vector's L2 bound (about C / gamma) and t_min the fewest
 *      clients a released sum holds (--dp-min-clients; default
 *      max(2, floor(q min_clients (1 - secagg_dropout)))): t_min clients'
 *      noise sums to variance (z l2)^2, z times the sensitivity. A round
 *      whose selection or U3 has fewer than t_min clients is abandoned
 *      (charged, nothing released): its sum would carry too little noise.
 *      sigma_c^2 is rounded up onto the sampler's 2^-20 grid.
 *   4. release: the server unmasks the sum, reads it as signed integers,
 *      multiplies by gamma, rotates back and divides by the fixed q n, as
 *      in central mode.
 *   5. ring width: m from the tail bound of privacy/ddg.h (10 standard
 *      deviations of the rotated signal and of the summed noise; a wrap,
 *      "modular clipping", damages the model, never privacy), checked at
 *      start-up for the most clients a round can have (min(max_clients,
 *      65535)) so that every round fits 32 bits.
 *   6. accounting (privacy/rdp.h, dp_rdp_ddg), as the paper's reference
 *      code does: RDP of the sum of t_min discrete Gaussians with the
 *      integer sensitivities l2 and l1 = min(sqrt(dim) l2, l2^2) (their
 *      Proposition 14, Theorem 1 in RDP form, including the tau term for
 *      a sum of discrete Gaussians not being one), amplified by Poisson
 *      subsampling with Zhu and Wang's general bound (2019), at integer
 *      orders 2..128 and 256, converted to epsilon as in central mode. One
 *      step per round opened; --target-epsilon calibrates z with it
 *      (dp_ddg_calibrate). --dp-accounting gaussian replaces the general
 *      bound by the binomial one, which equals the subsampled Gaussian at z
 *      when tau = 0: tighter (at q = 0.1 and 100 rounds, epsilon 1 needs z
 *      = 4.28 instead of 16.0), but a proof only in the direction "client
 *      added"; the other direction is assumed to behave as Mironov et al.
 *      prove it does for Gaussian noise.
 * What the accounting assumes, besides the threat model of secure
 * aggregation (PROTOCOL.md 13.9):
 *   - amplification by sampling hides who took part. The server knows who
 *     is in U3, so against the server (and anyone it tells) the guarantee
 *     is the unamplified one, q = 1, which the server logs at start-up
 *     (much weaker: about 110 for 100 rounds at z = 1). The amplified
 *     epsilon in the metrics holds for those who see only the released
 *     models;
 *   - the noise of clients beyond t_min is not credited, and the sum's
 *     variance, n sigma_c^2, tells roughly how many took part; like the
 *     paper, the accounting treats the participant count as public and
 *     each round as carrying exactly t_min clients' noise;
 *   - clients follow the protocol (a client that skips its noise weakens
 *     everyone's guarantee, as in the paper), and their noise streams are
 *     secret: libshoal-client keys them from the OS CSPRNG; shoal-sim
 *     derives them from --seed (reproducible, not private).
 * Cost: one discrete Gaussian sample per padded coordinate per client
 * (about 1 us each here): 8192 for logreg, 262144 for the 2NN. */
#ifndef SHOAL_SERVER_DP_H
#define SHOAL_SERVER_DP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "privacy/ddg.h"
#include "privacy/rdp.h"
#include "privacy/rng.h"
#include "server/core.h"
#include "shoal/err.h"

typedef struct srv_dp srv_dp;

/* The DP state of a server core, NULL when DP is off (for reports). */
const srv_dp *srv_core_dp(const srv_core *s);

/* Stream ids of the per-round noise rng: this bit plus the round id. The
 * selection of round r uses stream r (< 2^32), so they never meet. */
#define SRV_DP_NOISE_STREAM (UINT64_C(1) << 62)
/* Stream bit of the adaptive-clipping count noise (with the noise bit). */
#define SRV_DP_CLIP_STREAM (UINT64_C(1) << 61)
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
/* The current clip bound C (moves each round with adaptive clipping). */
double srv_dp_clip(const srv_dp *dp);
double srv_dp_noise_stddev(const srv_dp *dp);
/* Epsilon spent so far at the configured delta; 0 before the first step. */
double srv_dp_epsilon(const srv_dp *dp);
/* Rounds charged to the accountant so far. */
uint64_t srv_dp_steps(const srv_dp *dp);
/* Checkpoints (server/ckpt.h): the accountant itself, to save and restore
 * its exact state; the rounds charged; the clip bound and noise stddev in
 * use, which adaptive clipping moves (srv_dp_set_clip: SHOAL_EINVAL for a
 * bound or stddev the noise sampler cannot use). */
struct dp_accountant *srv_dp_accountant(srv_dp *dp);
void srv_dp_set_steps(srv_dp *dp, uint64_t steps);
shoal_err srv_dp_set_clip(srv_dp *dp, double clip, double sigma);

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

/* Distributed DP: the encoding every secure round's TASK announces, NULL
 * in central mode; the fewest clients (t_min) whose noise a released sum
 * must hold, 0 in central mode; the mechanism the accountant charges. */
const dp_ddg_enc *srv_dp_ddg(const srv_dp *dp);
uint32_t srv_dp_min_clients(const srv_dp *dp);
const dp_ddg *srv_dp_ddg_mechanism(const srv_dp *dp);

/* Distributed DP, the release of a round: acc[0..dim) <- 0, then at each
 * shared coordinate idx[j] the decoded unmasked sum (privacy/ddg.h,
 * rotation seed from the session) over the fixed denominator q n.
 * Errors: SHOAL_EINVAL (central mode, no round open, bad arguments). */
shoal_err srv_dp_ddg_release(srv_dp *dp, const uint32_t *sum, uint32_t m,
                             const uint8_t session[32], const uint32_t *idx, double *acc);

#endif
