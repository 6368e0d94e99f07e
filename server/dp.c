/* dp.c - Poisson sampling and central DP-FedAvg for the server core (see
 * dp.h for the mechanism, its accounting and the floating-point argument). */
#include "server/dp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/codec.h"
#include "common/log.h"
#include "common/msg.h"
#include "privacy/noise.h"
#include "privacy/rdp.h"

struct srv_dp {
	size_t dim;
	double q, z, clip, delta;
	double sigma;        /* noise stddev per coordinate of the sum */
	double budget;       /* +inf: none */
	double denom;        /* q * candidates of the open round */
	uint64_t steps;
	uint64_t seed;
	uint8_t *key;        /* SRV_DP_KEY_BYTES (sodium_malloc), NULL: from seed */
	float *buf;          /* dim: a decoded update, then the noise */
	dp_accountant acc;
	uint32_t partial_candidates; /* last warned "n of m parked", 0: none */
};

shoal_err
srv_dp_check(const srv_config *c, size_t dim)
{
#define BAD(...)                                                                           \
	do {                                                                                   \
		log_error(__VA_ARGS__);                                                            \
		return SHOAL_EINVAL;                                                               \
	} while (0)
	if (c->sampling != SRV_SAMPLING_FIXED && c->sampling != SRV_SAMPLING_POISSON)
		BAD("sampling must be fixed or poisson");
	if (c->sampling == SRV_SAMPLING_POISSON) {
		if (!(c->sample_rate > 0 && c->sample_rate <= 1))
			BAD("--sampling poisson needs --sample-rate Q with 0 < Q <= 1 (each client "
			    "joins a round with probability Q, e.g. 0.1)");
		if (c->secagg != SRV_SECAGG_OFF && c->dp == SRV_DP_OFF)
			BAD("--sampling poisson is not implemented with --secagg yet: use --sampling "
			    "fixed, or --secagg off");
	} else if (c->sample_rate != 0) {
		BAD("--sample-rate is the rate of Poisson sampling: add --sampling poisson");
	}
	if (c->dp != SRV_DP_OFF && c->dp != SRV_DP_CENTRAL)
		BAD("dp must be off or central");
	if (c->dp == SRV_DP_OFF) {
		if (c->clip != 0 || c->noise_multiplier != 0 || c->target_epsilon != 0 ||
		    c->epsilon_budget != 0)
			BAD("--clip, --noise-multiplier, --target-epsilon and --epsilon-budget "
			    "configure differential privacy: add --dp central");
		return SHOAL_OK;
	}
	if (c->sampling != SRV_SAMPLING_POISSON)
		BAD("--dp central needs Poisson sampling, the sampling its accountant assumes "
		    "(every client joins each round independently with probability q): add "
		    "--sampling poisson --sample-rate Q (e.g. 0.1)");
	if (c->secagg != SRV_SECAGG_OFF)
		BAD("--dp central clips each client's update on the server, which secure "
		    "aggregation hides: use --secagg off");
	if (!(c->clip > 0) || !isfinite(c->clip))
		BAD("--dp central needs --clip C, the L2 bound of each client's update "
		    "(a positive number, e.g. 1)");
	if (!(c->delta > 0 && c->delta < 1))
		BAD("--delta must be in (0, 1), e.g. 1e-5 (below 1 / number of clients)");
	bool z = c->noise_multiplier != 0, t = c->target_epsilon != 0;
	if (z == t)
		BAD("--dp central needs exactly one of --noise-multiplier Z (then --epsilon-budget "
		    "E optionally stops training at E) and --target-epsilon E (z is calibrated so "
		    "that the configured rounds spend E)");
	if (z && (!(c->noise_multiplier > 0) || !isfinite(c->noise_multiplier)))
		BAD("--noise-multiplier must be a positive number, e.g. 1.1");
	if (t && (!(c->target_epsilon > 0) || !isfinite(c->target_epsilon)))
		BAD("--target-epsilon must be a positive number, e.g. 8");
	if (t && c->epsilon_budget != 0)
		BAD("--target-epsilon is already the budget: leave out --epsilon-budget");
	if (!(c->epsilon_budget >= 0) || !isfinite(c->epsilon_budget))
		BAD("--epsilon-budget must be a positive number (0: none)");
	(void)dim;
	return SHOAL_OK;
#undef BAD
}

uint32_t
srv_poisson_select(rng *r, double q, uint32_t *v, uint32_t n)
{
	uint32_t k = 0;

	for (uint32_t i = 0; i < n; i++) {
		double u = (double)(rng_u64(r) >> 11) * 0x1p-53;
		if (u < q)
			v[k++] = v[i];
	}
	return k;
}

shoal_err
srv_dp_new(const srv_config *c, size_t dim, srv_dp **out)
{
	srv_dp *dp;
	shoal_err e;

	*out = NULL;
	if (c->dp == SRV_DP_OFF)
		return SHOAL_OK;
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;
	if ((dp = calloc(1, sizeof *dp)) == NULL)
		return SHOAL_ENOMEM;
	dp->dim = dim;
	dp->q = c->sample_rate;
	dp->clip = c->clip;
	dp->delta = c->delta;
	dp->seed = c->seed;
	dp->budget = INFINITY;
	e = SHOAL_ENOMEM;
	if ((dp->buf = malloc(dim * sizeof *dp->buf)) == NULL)
		goto fail;
	if (c->dp_noise_key != NULL) {
		if ((dp->key = sodium_malloc(SRV_DP_KEY_BYTES)) == NULL)
			goto fail;
		memcpy(dp->key, c->dp_noise_key, SRV_DP_KEY_BYTES);
	}
	if ((e = dp_accountant_init(&dp->acc, NULL, 0, c->delta)) != SHOAL_OK)
		goto fail;
	e = SHOAL_EINVAL;
	if (c->target_epsilon > 0) {
		if (dp_calibrate_sigma(dp->q, c->rounds, c->delta, c->target_epsilon, NULL, 0,
		                       &dp->z) != SHOAL_OK || !(dp->z > 0)) {
			log_error("--target-epsilon %g: no noise multiplier up to 2^20 keeps %u rounds at "
			          "q = %g within epsilon %g at delta %g; raise the target or lower "
			          "--rounds or --sample-rate",
			          c->target_epsilon, c->rounds, dp->q, c->target_epsilon, c->delta);
			goto fail;
		}
		dp->budget = c->target_epsilon;
	} else {
		dp->z = c->noise_multiplier;
		if (c->epsilon_budget > 0)
			dp->budget = c->epsilon_budget;
	}
	/* Noise for the sensitivity after rounding (dp.h). */
	double f = dp->z * 0x1p-19 * sqrt((double)dim);
	double m = (double)c->max_clients;
	dp->sigma = dp->z * dp->clip * (1 + m * m * 0x1p-52) / (1 - f);
	if (!(f < 0.5) || !(dp->sigma >= DP_GAUSS_MIN_STDDEV && dp->sigma <= DP_GAUSS_MAX_STDDEV)) {
		log_error("noise multiplier %g with clip %g is outside what the lattice Gaussian "
		          "supports for %zu parameters; lower --noise-multiplier or change --clip",
		          dp->z, dp->clip, dim);
		goto fail;
	}
	double eps1;
	if (dp_accountant_peek(&dp->acc, dp->q, dp->z, 1, &eps1) != SHOAL_OK)
		goto fail;
	if (eps1 > dp->budget) {
		log_error("privacy budget: one round at q = %g, z = %g already spends epsilon %.4f "
		          "> %g at delta %g; raise --noise-multiplier or --epsilon-budget, or lower "
		          "--sample-rate",
		          dp->q, dp->z, eps1, dp->budget, dp->delta);
		goto fail;
	}
	if (c->target_epsilon > 0)
		log_info("differential privacy: noise multiplier z = %.6f calibrated for %u rounds at "
		         "q = %g to epsilon %g at delta %g; clip %g, noise stddev %.6g on the sum",
		         dp->z, c->rounds, dp->q, c->target_epsilon, dp->delta, dp->clip, dp->sigma);
	else
		log_info("differential privacy: noise multiplier z = %g, q = %g, clip %g, noise stddev "
		         "%.6g on the sum, delta %g, budget %s%g",
		         dp->z, dp->q, dp->clip, dp->sigma, dp->delta,
		         isfinite(dp->budget) ? "epsilon " : "", isfinite(dp->budget) ? dp->budget : 0);
	if (!isfinite(dp->budget))
		log_warn("differential privacy without a budget: epsilon is reported but never "
		         "enforced (add --epsilon-budget E)");
	*out = dp;
	return SHOAL_OK;
fail:
	srv_dp_free(dp);
	return e;
}

void
srv_dp_free(srv_dp *dp)
{
	if (dp == NULL)
		return;
	if (dp->key != NULL)
		sodium_free(dp->key); /* wipes */
	dp_accountant_fini(&dp->acc);
	free(dp->buf);
	free(dp);
}

double srv_dp_noise_multiplier(const srv_dp *dp) { return dp->z; }
double srv_dp_noise_stddev(const srv_dp *dp) { return dp->sigma; }
uint64_t srv_dp_steps(const srv_dp *dp) { return dp->steps; }

double
srv_dp_epsilon(const srv_dp *dp)
{
	double eps;

	if (dp->steps == 0)
		return 0;
	if (dp_accountant_epsilon(&dp->acc, &eps, NULL) != SHOAL_OK)
		return NAN;
	return eps;
}

bool
srv_dp_round_allowed(srv_dp *dp, uint32_t round)
{
	double eps;

	if (!isfinite(dp->budget))
		return true;
	if (dp_accountant_peek(&dp->acc, dp->q, dp->z, 1, &eps) != SHOAL_OK)
		return false;
	if (eps <= dp->budget)
		return true;
	log_warn("privacy budget: epsilon would reach %.4f > %g at round %u; stopping after "
	         "round %u",
	         eps, dp->budget, round, round - 1);
	return false;
}

void
srv_dp_round_open(srv_dp *dp, uint32_t round, uint32_t n_candidates, uint32_t n_registered)
{
	/* Arguments were checked at creation: this cannot fail. */
	(void)dp_accountant_add(&dp->acc, dp->q, dp->z, 1);
	dp->steps++;
	dp->denom = dp->q * n_candidates;
	if (n_candidates < n_registered && n_candidates != dp->partial_candidates)
		log_warn("round %u: only %u of %u registered clients were waiting; the accountant's "
		         "q = %g holds only if every registered client is a candidate (raise "
		         "--min-clients to the population)",
		         round, n_candidates, n_registered, dp->q);
	dp->partial_candidates = n_candidates < n_registered ? n_candidates : 0;
}

double
srv_dp_add_update(srv_dp *dp, double *acc, const uint8_t *wire, size_t len, bool compressed,
                  uint32_t *scratch)
{
	if (compressed) {
		if (cx_decode(wire, len, (uint32_t)dp->dim, dp->buf, scratch) < 0)
			return NAN;
	} else {
		if (len != 4 * dp->dim)
			return NAN;
		msg_vec_to_host(dp->buf, wire, dp->dim);
	}
	double norm = dp_clip_l2(dp->buf, dp->dim, dp->clip);
	if (isnan(norm))
		return NAN; /* q8 values times a huge scale can overflow float */
	if (norm > dp->clip * SRV_DP_CLIP_LOG)
		log_debug("clipped an update of L2 norm %.6g to %g", norm, dp->clip);
	for (size_t j = 0; j < dp->dim; j++)
		acc[j] += dp->buf[j];
	return norm;
}

/* The noise stream of a round: from the secret key when there is one. */
static void
noise_rng(const srv_dp *dp, uint32_t round, rng *r)
{
	rng_init(r, dp->seed, SRV_DP_NOISE_STREAM | round);
	if (dp->key != NULL) {
		uint8_t in[24] = "shoal-dp-noise-v1";
		for (int i = 0; i < 4; i++)
			in[20 + i] = (uint8_t)(round >> (8 * i));
		crypto_generichash(r->key, sizeof r->key, in, sizeof in, dp->key, SRV_DP_KEY_BYTES);
	}
}

shoal_err
srv_dp_release(srv_dp *dp, double *acc, uint32_t round)
{
	double step = dp_gaussian_step(dp->sigma);
	rng r;
	shoal_err e;

	if (!(dp->denom > 0) || !isfinite(step))
		return SHOAL_EINVAL;
	for (size_t j = 0; j < dp->dim; j++)
		if (!(fabs(acc[j]) < 0x1p52 * step))
			return SHOAL_ENONFINITE;
	memset(dp->buf, 0, dp->dim * sizeof *dp->buf);
	noise_rng(dp, round, &r);
	e = dp_gaussian_noise_add(&r, dp->buf, dp->dim, dp->sigma);
	rng_fini(&r);
	if (e != SHOAL_OK)
		return e;
	/* buf[j] = N_j step exactly (|N_j| < 2^24 but with probability below
	 * exp(-500)); both terms are multiples of step, so the sum is exact. */
	for (size_t j = 0; j < dp->dim; j++)
		acc[j] = (rint(acc[j] / step) * step + (double)dp->buf[j]) / dp->denom;
	sodium_memzero(dp->buf, dp->dim * sizeof *dp->buf);
	return SHOAL_OK;
}
