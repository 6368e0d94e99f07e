/* dp.c - Poisson sampling and central DP-FedAvg for the server core (see
 * dp.h for the mechanism, its accounting and the floating-point argument). */
#include "server/dp.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/codec.h"
#include "common/log.h"
#include "common/msg.h"
#include "privacy/adaclip.h"
#include "privacy/ddg.h"
#include "privacy/noise.h"
#include "privacy/rdp.h"
#include "privacy/secagg.h"

struct srv_dp {
	size_t dim;
	double q, z, clip, delta;
	double sigma;        /* noise stddev per coordinate of the sum (distributed:
	                        of the t_min clients' noise, in update units) */
	double budget;       /* +inf: none */
	double denom;        /* q * candidates of the open round */
	uint64_t steps;
	uint64_t seed;
	uint8_t *key;        /* SRV_DP_KEY_BYTES (sodium_malloc), NULL: from seed */
	float *buf;          /* dim: a decoded update, then the noise */
	dp_accountant acc;
	uint32_t partial_candidates; /* last warned "n of m parked", 0: none */
	/* adaptive clipping (central) */
	bool adaptive;
	dp_adaclip ac;
	double z_update;     /* the update's noise multiplier (> z) */
	double sigma_factor; /* sigma = z_update * clip * sigma_factor */
	uint32_t n_part, n_unclipped;
	/* distributed */
	bool distributed;
	dp_ddg_enc enc;      /* what clients are told (TASK "sa") */
	dp_ddg mech;         /* what the accountant charges */
	uint32_t t_min;
	float *rot;          /* enc.dim: decoding scratch */
	double *vals;        /* enc.n_idx: the decoded sum */
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
	if (c->dp != SRV_DP_OFF && c->dp != SRV_DP_CENTRAL && c->dp != SRV_DP_DISTRIBUTED)
		BAD("dp must be off, central or distributed");
	if (c->dp != SRV_DP_DISTRIBUTED &&
	    (c->dp_min_clients != 0 || c->dp_gamma != 0 || c->dp_accounting != SRV_DP_ACCT_BOUND))
		BAD("--dp-min-clients, --dp-gamma and --dp-accounting configure distributed "
		    "differential privacy: add --dp distributed");
	if ((c->clip_quantile != 0 || c->clip_lr != 0 || c->clip_count_std != 0) &&
	    c->dp != SRV_DP_CENTRAL)
		BAD("--clip-quantile, --clip-lr and --clip-count-std adapt the clip bound of "
		    "central differential privacy: add --dp central");
	if (!(c->clip_quantile >= 0 && c->clip_quantile < 1) || !(c->clip_lr >= 0) ||
	    !(c->clip_count_std >= 0))
		BAD("--clip-quantile must be in (0, 1), --clip-lr and --clip-count-std >= 0");
	if (c->dp == SRV_DP_OFF) {
		if (c->clip != 0 || c->noise_multiplier != 0 || c->target_epsilon != 0 ||
		    c->epsilon_budget != 0)
			BAD("--clip, --noise-multiplier, --target-epsilon and --epsilon-budget "
			    "configure differential privacy: add --dp central or --dp distributed");
		return SHOAL_OK;
	}
	const char *mode = c->dp == SRV_DP_CENTRAL ? "central" : "distributed";
	if (c->sampling != SRV_SAMPLING_POISSON)
		BAD("--dp %s needs Poisson sampling, the sampling its accountant assumes "
		    "(every client joins each round independently with probability q): add "
		    "--sampling poisson --sample-rate Q (e.g. 0.1)", mode);
	if (c->dp == SRV_DP_CENTRAL && c->secagg != SRV_SECAGG_OFF)
		BAD("--dp central clips each client's update on the server, which secure "
		    "aggregation hides: use --secagg off, or --dp distributed (clients add the "
		    "noise before masking)");
	if (c->dp == SRV_DP_DISTRIBUTED) {
		if (c->secagg == SRV_SECAGG_OFF)
			BAD("--dp distributed adds each client's share of the noise before secure "
			    "aggregation masks it; without it the server would see every client's "
			    "barely noised update: add --secagg full or --secagg plus (or use --dp "
			    "central)");
		if (!(c->dp_gamma >= 0) || !isfinite(c->dp_gamma))
			BAD("--dp-gamma must be a positive number (0: automatic)");
		if (c->dp_min_clients == 1 || c->dp_min_clients > SA_N_MAX)
			BAD("--dp-min-clients must be in 2..%u", SA_N_MAX);
		if (c->dp_accounting != SRV_DP_ACCT_BOUND && c->dp_accounting != SRV_DP_ACCT_GAUSSIAN)
			BAD("dp accounting must be bound or gaussian");
	}
	if (!(c->clip > 0) || !isfinite(c->clip))
		BAD("--dp %s needs --clip C, the L2 bound of each client's update "
		    "(a positive number, e.g. 1)", mode);
	if (!(c->delta > 0 && c->delta < 1))
		BAD("--delta must be in (0, 1), e.g. 1e-5 (below 1 / number of clients)");
	bool z = c->noise_multiplier != 0, t = c->target_epsilon != 0;
	if (z == t)
		BAD("--dp %s needs exactly one of --noise-multiplier Z (then --epsilon-budget "
		    "E optionally stops training at E) and --target-epsilon E (z is calibrated so "
		    "that the configured rounds spend E)", mode);
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

/* The shared index set of a secure round, as server/core.c sizes it. */
static uint32_t
shared_set_size(const srv_config *c, size_t dim)
{
	cx_config up;
	bool none = true;

	if (c->compress != NULL && cx_parse_spec(c->compress, &up, &none) != SHOAL_OK)
		none = true;
	return none ? (uint32_t)dim : cx_k_for_ratio((uint32_t)dim, up.ratio);
}

/* Automatic integer steps per clip norm: the power of two >= 16 sqrt(dim).
 * The conditional rounding bound is then c^2 + dim/4 + ~c, under 0.05%
 * above c^2 (the sensitivity grows by that), and the rounding's own
 * variance (<= 1/4 per client and coordinate) is far below the noise. */
static double
auto_steps(uint32_t dim)
{
	return exp2(ceil(log2(16.0 * sqrt((double)dim))));
}

/* Distributed DP (dp.h): the encoding clients are told, the accounted
 * mechanism, the accountant at the distributed orders, z. */
static shoal_err
ddg_setup(srv_dp *dp, const srv_config *c, size_t dim)
{
	dp_ddg_enc *p = &dp->enc;
	double tdef = floor(c->sample_rate * c->min_clients * (1.0 - c->secagg_dropout));
	double orders[DP_DDG_ORDERS], step[DP_DDG_ORDERS];
	size_t no = dp_ddg_orders(orders);
	shoal_err e;

	dp->distributed = true;
	dp->t_min = c->dp_min_clients != 0 ? c->dp_min_clients
	            : tdef < 2 ? 2 : tdef > SA_N_MAX ? SA_N_MAX : (uint32_t)tdef;
	p->n_idx = shared_set_size(c, dim);
	p->dim = (uint32_t)dp_rht_dim(p->n_idx);
	p->clip = (float)c->clip; /* the TASK carries float32: clients clip to it */
	p->gamma = (float)(c->dp_gamma > 0 ? c->dp_gamma : p->clip / auto_steps(p->dim));
	if (!(p->gamma > 0) || !(p->clip / p->gamma <= DP_DDG_MAX_SCALED) ||
	    !(p->clip / p->gamma >= 1)) {
		log_error("--dp-gamma %g with --clip %g: the clip norm must be 1 to 2^30 integer "
		          "steps", p->gamma, p->clip);
		return SHOAL_EINVAL;
	}
	p->l2max2 = dp_ddg_l2max2(p->clip / p->gamma, p->dim);
	double l2 = nextafter(sqrt((double)p->l2max2), INFINITY);
	dp->mech = (dp_ddg){
	    .sigma2 = 1, .n = dp->t_min, .dim = p->dim, .l2 = l2,
	    /* an integer vector's L1 norm is at most its squared L2 norm */
	    .l1 = fmin(sqrt((double)p->dim) * l2, (double)p->l2max2),
	    .sub = c->dp_accounting == SRV_DP_ACCT_GAUSSIAN ? DP_DDG_SUB_BINOMIAL
	                                                    : DP_DDG_SUB_GENERAL,
	};
	if ((e = dp_accountant_init(&dp->acc, orders, no, c->delta)) != SHOAL_OK)
		return e;
	if (c->target_epsilon > 0) {
		if (dp_ddg_calibrate(&dp->mech, dp->q, c->rounds, c->delta, c->target_epsilon,
		                     &dp->z) != SHOAL_OK) {
			log_error("--target-epsilon %g: no noise multiplier up to 2^20 keeps %u rounds at "
			          "q = %g within epsilon %g at delta %g; raise the target or lower "
			          "--rounds or --sample-rate",
			          c->target_epsilon, c->rounds, dp->q, c->target_epsilon, c->delta);
			return SHOAL_EINVAL;
		}
		dp->budget = c->target_epsilon;
	} else {
		dp->z = c->noise_multiplier;
		if (c->epsilon_budget > 0)
			dp->budget = c->epsilon_budget;
	}
	/* sigma_c^2 = (z l2)^2 / t_min, rounded up onto the sampler's 2^-20
	 * grid; the accountant keeps the unrounded (smaller) value. */
	double s2 = dp->z * l2 * dp->z * l2 / dp->t_min;
	p->s2_den = UINT32_C(1) << 20;
	p->s2_num = s2 * 0x1p20 < 0x1p63 ? (uint64_t)ceil(s2 * 0x1p20) : 0;
	dp->mech.sigma2 = s2;
	if (dp_ddg_check(p) != SHOAL_OK || !(s2 >= 0.25)) {
		log_error("distributed DP: per-client noise variance %g (noise multiplier %g, %g "
		          "integer steps per clip norm, %u clients) is outside the exact sampler's "
		          "range [1/4, 2^40]; change --noise-multiplier, --dp-gamma or "
		          "--dp-min-clients", s2, dp->z, p->clip / p->gamma, dp->t_min);
		return SHOAL_EINVAL;
	}
	uint32_t nmax = c->max_clients < SA_N_MAX ? c->max_clients : SA_N_MAX, m;
	if (dp_ddg_ring_bits(p, nmax, &m) != SHOAL_OK) {
		log_error("distributed DP: the noised sum of up to %u clients (bound %.4g) does not "
		          "fit a 32-bit ring; lower --max-clients, --noise-multiplier or raise "
		          "--dp-gamma or --dp-min-clients", nmax, dp_ddg_sum_bound(p, nmax));
		return SHOAL_EINVAL;
	}
	for (size_t i = 0; i < no; i++)
		step[i] = dp_rdp_ddg(&dp->mech, dp->q, orders[i]);
	if ((e = dp_accountant_use_rdp(&dp->acc, step)) != SHOAL_OK)
		return e;
	dp->sigma = sqrt(dp->t_min * s2) * p->gamma;
	if ((dp->rot = malloc((size_t)p->dim * sizeof *dp->rot)) == NULL ||
	    (dp->vals = malloc((size_t)p->n_idx * sizeof *dp->vals)) == NULL)
		return SHOAL_ENOMEM;
	double eps1, eps_srv;
	if (dp_accountant_peek_cached(&dp->acc, 1, &eps1) != SHOAL_OK ||
	    dp_ddg_epsilon(&dp->mech, 1.0, c->rounds, c->delta, &eps_srv, NULL) != SHOAL_OK)
		return SHOAL_EINVAL;
	if (eps1 > dp->budget) {
		log_error("privacy budget: one round at q = %g, z = %g already spends epsilon %.4f "
		          "> %g at delta %g; raise --noise-multiplier or --epsilon-budget, or lower "
		          "--sample-rate",
		          dp->q, dp->z, eps1, dp->budget, dp->delta);
		return SHOAL_EINVAL;
	}
	log_info("distributed DP: noise multiplier z = %.6f%s, clip %g on %u shared coordinates "
	         "rotated in %u, integer step gamma %g (%g per clip norm), rounding bound %" PRIu64
	         ", per-client discrete Gaussian variance %.6g (%" PRIu64 "/2^20) sized for %u "
	         "clients, ring width %u bits for %u clients; accounting: %s",
	         dp->z, c->target_epsilon > 0 ? " (calibrated)" : "", p->clip, p->n_idx, p->dim,
	         p->gamma, p->clip / p->gamma, p->l2max2, s2, p->s2_num, dp->t_min, m, nmax,
	         dp->mech.sub == DP_DDG_SUB_GENERAL ? "Kairouz et al. Prop. 14 with Zhu-Wang's "
	                                              "general subsampling bound"
	                                            : "subsampled-Gaussian (binomial) bound");
	log_info("distributed DP: shoal-dp ddg --q %g --steps %u --delta %g --dim %u --clients "
	         "%u --l2 %.17g --l1 %.17g --sigma2 %.17g%s reproduces the accountant; against "
	         "a server that knows who took part (no amplification) %u rounds would spend "
	         "epsilon %.4g",
	         dp->q, c->rounds, c->delta, p->dim, dp->t_min, dp->mech.l2, dp->mech.l1, s2,
	         dp->mech.sub == DP_DDG_SUB_GENERAL ? "" : " --accounting gaussian", c->rounds,
	         eps_srv);
	if (!isfinite(dp->budget))
		log_warn("differential privacy without a budget: epsilon is reported but never "
		         "enforced (add --epsilon-budget E)");
	return SHOAL_OK;
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
	if (c->dp == SRV_DP_DISTRIBUTED) {
		if ((e = ddg_setup(dp, c, dim)) != SHOAL_OK)
			goto fail;
		*out = dp;
		return SHOAL_OK;
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
	dp->z_update = dp->z;
	if (c->clip_quantile > 0) {
		/* Adaptive clipping: the count of unclipped updates is a second
		 * Gaussian release; the update's noise grows so that both compose
		 * to the z the accountant charges (privacy/adaclip.h). */
		double expected = dp->q * c->min_clients;
		dp->ac = (dp_adaclip){.clip = dp->clip, .quantile = c->clip_quantile,
		                      .lr = c->clip_lr > 0 ? c->clip_lr : 0.2,
		                      .count_std = c->clip_count_std > 0 ? c->clip_count_std
		                                                        : expected / 20};
		if (dp_adaclip_check(&dp->ac) != SHOAL_OK ||
		    dp_adaclip_update_z(dp->z, dp->ac.count_std, &dp->z_update) != SHOAL_OK) {
			log_error("adaptive clipping: the count's noise stddev %g must exceed z/2 = %g "
			          "(raise --clip-count-std, or --min-clients so that q*min_clients/20 "
			          "does), and --clip-quantile must be in (0, 1)",
			          dp->ac.count_std, dp->z / 2);
			goto fail;
		}
		dp->adaptive = true;
		log_info("adaptive clipping: quantile %g, count noise %g, update noise multiplier "
		         "%g (z %g charged)", dp->ac.quantile, dp->ac.count_std, dp->z_update, dp->z);
	}
	/* Noise for the sensitivity after rounding (dp.h). */
	double f = dp->z_update * 0x1p-19 * sqrt((double)dim);
	double m = (double)c->max_clients;
	dp->sigma_factor = (1 + m * m * 0x1p-52) / (1 - f);
	dp->sigma = dp->z_update * dp->clip * dp->sigma_factor;
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
	free(dp->rot);
	free(dp->vals);
	free(dp);
}

double srv_dp_noise_multiplier(const srv_dp *dp) { return dp->z; }
double srv_dp_clip(const srv_dp *dp) { return dp->clip; }
double srv_dp_noise_stddev(const srv_dp *dp) { return dp->sigma; }
uint64_t srv_dp_steps(const srv_dp *dp) { return dp->steps; }
dp_accountant *srv_dp_accountant(srv_dp *dp) { return &dp->acc; }
void srv_dp_set_steps(srv_dp *dp, uint64_t steps) { dp->steps = steps; }

shoal_err
srv_dp_set_clip(srv_dp *dp, double clip, double sigma)
{
	if (!(clip > 0) || !isfinite(clip) || !(sigma > 0) || !isfinite(sigma) ||
	    (!dp->distributed && !(sigma >= DP_GAUSS_MIN_STDDEV && sigma <= DP_GAUSS_MAX_STDDEV)))
		return SHOAL_EINVAL;
	dp->clip = clip;
	dp->ac.clip = clip;
	dp->sigma = sigma;
	return SHOAL_OK;
}

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

const dp_ddg_enc *srv_dp_ddg(const srv_dp *dp) { return dp->distributed ? &dp->enc : NULL; }
uint32_t srv_dp_min_clients(const srv_dp *dp) { return dp->distributed ? dp->t_min : 0; }
const dp_ddg *srv_dp_ddg_mechanism(const srv_dp *dp) { return dp->distributed ? &dp->mech : NULL; }

/* Epsilon after one more round, without charging it. */
static shoal_err
peek_one(srv_dp *dp, double *eps)
{
	if (dp->distributed)
		return dp_accountant_peek_cached(&dp->acc, 1, eps);
	return dp_accountant_peek(&dp->acc, dp->q, dp->z, 1, eps);
}

bool
srv_dp_round_allowed(srv_dp *dp, uint32_t round)
{
	double eps;

	if (!isfinite(dp->budget))
		return true;
	if (peek_one(dp, &eps) != SHOAL_OK)
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
	if (dp->distributed)
		(void)dp_accountant_add_cached(&dp->acc, 1);
	else
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
	dp->n_part++;
	dp->n_unclipped += norm <= dp->clip;
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
	if (dp->adaptive) {
		/* the count's noise: its own stream, next to the update's */
		rng_init(&r, dp->seed, SRV_DP_NOISE_STREAM | SRV_DP_CLIP_STREAM | round);
		if (dp->key != NULL) {
			uint8_t in[24] = "shoal-dp-clip-v1";
			for (int i = 0; i < 4; i++)
				in[20 + i] = (uint8_t)(round >> (8 * i));
			crypto_generichash(r.key, sizeof r.key, in, sizeof in, dp->key, SRV_DP_KEY_BYTES);
		}
		double old = dp->clip, b = dp_adaclip_step(&dp->ac, dp->n_unclipped, dp->n_part,
		                                           dp->denom, &r);
		rng_fini(&r);
		double sigma = dp->z_update * dp->ac.clip * dp->sigma_factor;
		if (sigma >= DP_GAUSS_MIN_STDDEV && sigma <= DP_GAUSS_MAX_STDDEV) {
			dp->clip = dp->ac.clip;
			dp->sigma = sigma;
		} else {
			dp->ac.clip = dp->clip; /* keep a bound the sampler supports */
		}
		log_info("round %u: adaptive clipping: unclipped fraction ~%.3f, clip %g -> %g", round,
		         b, old, dp->clip);
	}
	dp->n_part = dp->n_unclipped = 0;
	return SHOAL_OK;
}

shoal_err
srv_dp_ddg_release(srv_dp *dp, const uint32_t *sum, uint32_t m,
                   const uint8_t session[32], const uint32_t *idx, double *acc)
{
	uint8_t seed[DP_DDG_SEED_BYTES];
	shoal_err e;

	if (!dp->distributed || !(dp->denom > 0))
		return SHOAL_EINVAL;
	dp_ddg_rotation_seed(session, seed);
	if ((e = dp_ddg_decode(&dp->enc, sum, m, seed, dp->rot, dp->vals)) != SHOAL_OK)
		return e;
	memset(acc, 0, dp->dim * sizeof *acc);
	for (uint32_t j = 0; j < dp->enc.n_idx; j++)
		acc[idx[j]] = dp->vals[j] / dp->denom;
	return SHOAL_OK;
}
