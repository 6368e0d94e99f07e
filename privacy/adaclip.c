/* adaclip.c - adaptive clipping (see adaclip.h). */
#include "adaclip.h"

#include <math.h>

#include "privacy/noise.h"

shoal_err
dp_adaclip_check(const dp_adaclip *a)
{
	if (!(a->clip > 0) || !isfinite(a->clip) || !(a->quantile > 0 && a->quantile < 1) ||
	    !(a->lr > 0) || !isfinite(a->lr) || !(a->count_std > 0) || !isfinite(a->count_std))
		return SHOAL_EINVAL;
	return SHOAL_OK;
}

shoal_err
dp_adaclip_update_z(double z, double count_std, double *z_update)
{
	if (!(z > 0) || !isfinite(z) || !(count_std > 0) || !(2 * count_std > z))
		return SHOAL_EINVAL;
	double inv = 1 / (z * z) - 1 / (4 * count_std * count_std);
	*z_update = 1 / sqrt(inv);
	return SHOAL_OK;
}

double
dp_adaclip_step(dp_adaclip *a, uint32_t n_unclipped, uint32_t n_participants, double expected,
                rng *r)
{
	double noise = dp_gaussian(r, a->count_std);
	if (!isfinite(noise))
		noise = 0; /* count_std out of the sampler's range: checked at config */
	double centred = (double)n_unclipped - 0.5 * n_participants; /* sensitivity 1/2 */
	double b = (centred + noise) / expected + 0.5;
	a->clip *= exp(-a->lr * (b - a->quantile));
	return b;
}
