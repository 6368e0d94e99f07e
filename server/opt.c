/* opt.c - FedAvg, FedAvgM, FedAdam and FedYogi server steps (see opt.h). */
#include "opt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[] = {"fedavg", "fedavgm", "fedadam", "fedyogi"};

void
srv_opt_config_defaults(srv_opt_config *c)
{
	c->kind = SRV_OPT_FEDAVG;
	c->lr = 1.0;
	c->beta1 = 0.9;
	c->beta2 = 0.99;
	c->tau = 1e-3;
}

shoal_err
srv_opt_parse(const char *name, srv_opt_kind *out)
{
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcmp(name, names[i]) == 0) {
			*out = (srv_opt_kind)i;
			return SHOAL_OK;
		}
	return SHOAL_EINVAL;
}

const char *
srv_opt_name(srv_opt_kind k)
{
	return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

shoal_err
srv_opt_init(srv_opt *o, const srv_opt_config *cfg, size_t dim)
{
	memset(o, 0, sizeof *o);
	if (!(cfg->lr > 0) || !isfinite(cfg->lr) || !(cfg->beta1 >= 0 && cfg->beta1 < 1) ||
	    !(cfg->beta2 >= 0 && cfg->beta2 < 1) || !(cfg->tau > 0) || !isfinite(cfg->tau) ||
	    (unsigned)cfg->kind > SRV_OPT_FEDYOGI)
		return SHOAL_EINVAL;
	o->cfg = *cfg;
	o->dim = dim;
	if (cfg->kind == SRV_OPT_FEDAVG)
		return SHOAL_OK;
	if ((o->m = calloc(dim, sizeof *o->m)) == NULL)
		return SHOAL_ENOMEM;
	if (cfg->kind == SRV_OPT_FEDAVGM)
		return SHOAL_OK;
	if ((o->v = malloc(dim * sizeof *o->v)) == NULL) {
		srv_opt_fini(o);
		return SHOAL_ENOMEM;
	}
	for (size_t j = 0; j < dim; j++)
		o->v[j] = (float)(cfg->tau * cfg->tau);
	return SHOAL_OK;
}

void
srv_opt_fini(srv_opt *o)
{
	free(o->m);
	free(o->v);
	o->m = o->v = NULL;
}

void
srv_opt_step(srv_opt *o, float *x, const double *d)
{
	const double eta = o->cfg.lr, b1 = o->cfg.beta1, b2 = o->cfg.beta2, tau = o->cfg.tau;
	size_t n = o->dim;

	switch (o->cfg.kind) {
	case SRV_OPT_FEDAVG:
		for (size_t j = 0; j < n; j++)
			x[j] += (float)(eta * d[j]);
		break;
	case SRV_OPT_FEDAVGM:
		for (size_t j = 0; j < n; j++) {
			double m = b1 * o->m[j] + d[j];
			o->m[j] = (float)m;
			x[j] += (float)(eta * m);
		}
		break;
	case SRV_OPT_FEDADAM:
	case SRV_OPT_FEDYOGI:
		for (size_t j = 0; j < n; j++) {
			double m = b1 * o->m[j] + (1 - b1) * d[j], d2 = d[j] * d[j], v = o->v[j];
			if (o->cfg.kind == SRV_OPT_FEDADAM)
				v = b2 * v + (1 - b2) * d2;
			else
				v = v - (1 - b2) * d2 * (v > d2 ? 1.0 : v < d2 ? -1.0 : 0.0);
			o->m[j] = (float)m;
			o->v[j] = (float)v;
			x[j] += (float)(eta * m / (sqrt(v) + tau));
		}
		break;
	}
}
