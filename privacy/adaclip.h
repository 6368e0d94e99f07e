/* adaclip.h - adaptive clipping for DP-FedAvg (Andrew, Thakkar, McMahan,
 * Ramaswamy 2021, "Differentially Private Learning with Adaptive
 * Clipping"): the clip bound C follows a target quantile gamma of the
 * clients' update norms, learned privately from a noised count.
 *
 * Each round every participating client i contributes the bit
 * b_i = [ ||delta_i|| <= C ]. The server releases the centred, noised sum
 * and estimates the unclipped fraction from it:
 *   b~ = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / E + 1/2,
 *   E = the expected number of participants (q n, a fixed denominator as
 *   for the update),
 * and moves the bound geometrically:
 *   C <- C * exp(-eta (b~ - gamma)).
 * With C below the gamma-quantile most updates are clipped (b~ < gamma) and
 * C grows; above it, C shrinks.
 *
 * Privacy: the count is a second Gaussian query released in the same round
 * on the same sample. Centred bits b_i - 1/2 have L2 sensitivity 1/2, so
 * with the update's noise multiplier z_u (noise z_u C on a sensitivity-C
 * sum) the pair of releases is, in Renyi DP, one Gaussian mechanism with
 *   z^-2 = z_u^-2 + (2 sigma_b)^-2        (Andrew et al. 2021, Sec. 3.1),
 * so charging the accountant (q, z) per round covers both. Given the z the
 * accountant charges (from --noise-multiplier or --target-epsilon),
 * dp_adaclip_update_z gives the larger z_u the update noise must use.
 * Randomness: the count's noise is the exact lattice Gaussian of
 * privacy/noise.h (dp_gaussian), fed by the caller's ChaCha20 stream. */
#ifndef SHOAL_ADACLIP_H
#define SHOAL_ADACLIP_H

#include <stdint.h>

#include "privacy/rng.h"
#include "shoal/err.h"

typedef struct dp_adaclip {
	double clip;      /* current bound C, > 0 */
	double quantile;  /* target fraction gamma of unclipped updates, (0, 1) */
	double lr;        /* geometric step eta, > 0 (paper: 0.2) */
	double count_std; /* sigma_b, noise std on the count of unclipped updates */
} dp_adaclip;

/* Checks the ranges above. SHOAL_EINVAL. */
shoal_err dp_adaclip_check(const dp_adaclip *a);

/* z_u = (z^-2 - (2 sigma_b)^-2)^-1/2. SHOAL_EINVAL unless
 * 2 sigma_b > z > 0 (the count alone would otherwise spend the budget). */
shoal_err dp_adaclip_update_z(double z, double count_std, double *z_update);

/* One round's update of a->clip from n_unclipped of the n_participants'
 * updates and the expected participant count (> 0). Returns the released
 * estimate b~. */
double dp_adaclip_step(dp_adaclip *a, uint32_t n_unclipped, uint32_t n_participants,
                       double expected, rng *r);

#endif
