/* opt.h - server optimizers (Reddi et al. 2021, "Adaptive Federated
 * Optimization", Algorithm 2), applied to the round's averaged client delta.
 *
 * With d = sum(n_i * delta_i) / sum(n_i) (the FedAvg "pseudo-gradient", in
 * double precision) and server learning rate eta:
 *   fedavg   x += eta * d
 *   fedavgm  m = b1*m + d;                      x += eta * m
 *   fedadam  m = b1*m + (1-b1)*d;  v = b2*v + (1-b2)*d^2;
 *            x += eta * m / (sqrt(v) + tau)
 *   fedyogi  m as fedadam;  v = v - (1-b2)*d^2*sign(v - d^2);
 *            x += eta * m / (sqrt(v) + tau)
 * v starts at tau^2 (as in the paper), m at 0; no bias correction. The
 * increment is computed in double and rounded to float once, so fedavg with
 * eta = 1 is exactly "x += (float)d". State is m and v (dim floats each). */
#ifndef SHOAL_SERVER_OPT_H
#define SHOAL_SERVER_OPT_H

#include <stddef.h>

#include "shoal/err.h"

typedef enum { SRV_OPT_FEDAVG, SRV_OPT_FEDAVGM, SRV_OPT_FEDADAM, SRV_OPT_FEDYOGI } srv_opt_kind;

typedef struct srv_opt_config {
	srv_opt_kind kind;
	double lr;    /* eta, default 1 */
	double beta1; /* momentum, default 0.9 */
	double beta2; /* second moment, default 0.99 */
	double tau;   /* adaptivity, default 1e-3 */
} srv_opt_config;

typedef struct srv_opt {
	srv_opt_config cfg;
	size_t dim;
	float *m, *v; /* NULL when the optimizer keeps no state */
} srv_opt;

void srv_opt_config_defaults(srv_opt_config *c);
/* "fedavg", "fedavgm", "fedadam", "fedyogi" -> kind; SHOAL_EINVAL otherwise. */
shoal_err srv_opt_parse(const char *name, srv_opt_kind *out);
const char *srv_opt_name(srv_opt_kind k);

/* Errors: SHOAL_EINVAL (lr <= 0, beta outside [0,1), tau <= 0), SHOAL_ENOMEM. */
shoal_err srv_opt_init(srv_opt *o, const srv_opt_config *cfg, size_t dim);
void srv_opt_fini(srv_opt *o);
/* Apply one round: x (dim floats) moves by the averaged delta d (dim). */
void srv_opt_step(srv_opt *o, float *x, const double *d);

#endif
