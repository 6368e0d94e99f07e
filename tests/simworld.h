/* simworld.h - the small federation the simulator tests share: real MNIST
 * (train and test sets), an IID split into 60 shares of 1,000 examples of
 * which the first n clients use theirs, and a logistic-regression scratch
 * model per client (they train concurrently on the engine's pool). */
#ifndef SHOAL_TESTS_SIMWORLD_H
#define SHOAL_TESTS_SIMWORLD_H

#include "client/core.h"
#include "ml/ml.h"

#define SW_MAX_CLIENTS 16

typedef struct sim_world {
	ml_dataset train, test;
	ml_partition part;
	unsigned n_clients;
	uint32_t n[SW_MAX_CLIENTS];       /* examples of each client */
	ml_model *model[SW_MAX_CLIENTS];
} sim_world;

/* 0, or -1 (as a cmocka group setup wants) when MNIST cannot be read. */
static inline int
sw_load(sim_world *w, unsigned n_clients)
{
	if (n_clients > SW_MAX_CLIENTS ||
	    ml_mnist_load(SHOAL_DATA_DIR, "train", &w->train) != SHOAL_OK ||
	    ml_mnist_load(SHOAL_DATA_DIR, "t10k", &w->test) != SHOAL_OK ||
	    ml_partition_make("iid", &w->train, 60, 5, &w->part) != SHOAL_OK)
		return -1;
	w->n_clients = n_clients;
	for (unsigned i = 0; i < n_clients; i++) {
		w->n[i] = w->part.start[i + 1] - w->part.start[i];
		if (ml_model_new("logreg", 10, &w->model[i]) != SHOAL_OK)
			return -1;
	}
	return 0;
}

static inline void
sw_free(sim_world *w)
{
	for (unsigned i = 0; i < w->n_clients; i++)
		ml_model_free(w->model[i]);
	ml_partition_fini(&w->part);
	ml_dataset_fini(&w->train);
	ml_dataset_fini(&w->test);
}

/* Client i's training as the engine's sim_train_fn asks it (its step's
 * epochs, batch, lr, seed and step cap): 0, or 1 when it fails. */
static inline int
sw_train(sim_world *w, uint32_t i, float *params, const cli_step *st, uint32_t *n, float *loss)
{
	ml_sgd_config sc = {.epochs = st->epochs, .batch = st->batch, .lr = st->lr, .seed = st->seed,
	                    .max_steps = st->max_steps};
	double l = 0.0;

	if (ml_train_sgd(w->model[i], params, &w->train, w->part.idx + w->part.start[i], w->n[i], &sc,
	                 &l) != SHOAL_OK)
		return 1;
	*n = w->n[i];
	*loss = (float)l;
	return 0;
}

/* One world per test program, for cmocka's setup and teardown and the
 * engine's training callback: the including file defines SW_CLIENTS. */
#ifdef SW_CLIENTS
static sim_world SW;

static inline int
sw_setup(void **state)
{
	(void)state;
	return sw_load(&SW, SW_CLIENTS); /* 1,000 examples each */
}

static inline int
sw_teardown(void **state)
{
	(void)state;
	sw_free(&SW);
	return 0;
}

static inline int
sw_train_fn(void *user, uint32_t i, float *params, uint32_t dim, const cli_step *st, uint32_t *n,
            float *loss)
{
	(void)user;
	(void)dim;
	return sw_train(&SW, i, params, st, n, loss);
}
#endif

#endif
