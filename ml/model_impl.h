/* model_impl.h - internal to ml/: the model object and the model ops table,
 * shared by model.c (MLPs, evaluation, SGD) and cnn.c (the CNN), so a model
 * family can live in its own file and be registered in model.c's table. */
#ifndef SHOAL_ML_MODEL_IMPL_H
#define SHOAL_ML_MODEL_IMPL_H

#include "ml/ml.h"

typedef struct ml_model_ops ml_model_ops;

struct ml_model {
	const ml_model_ops *ops;
	size_t max_batch;
	float *x;       /* max_batch x 784: the current batch as floats */
	float *logits;  /* max_batch x 10 */
	float *dlogits; /* max_batch x 10: d(mean loss)/d(logits) */
	float *work;    /* ops->work_floats(max_batch): activations, deltas */
	uint8_t *y;     /* max_batch labels */
	/* Input columns [in_lo, in_hi) hold every nonzero of the last
	 * forward's x (MLPs only). MNIST borders are blank, so the first layer
	 * skips their weight rows: ~30% of the flops of 2nn at no cost in
	 * accuracy (the skipped products are exact zeros). */
	size_t in_lo, in_hi;
};

struct ml_model_ops {
	const char *name;
	size_t dim;
	const void *arch;
	/* Floats of scratch for max_batch, SIZE_MAX on overflow. */
	size_t (*work_floats)(const ml_model_ops *ops, size_t max_batch);
	size_t (*tensors)(const ml_model_ops *ops, ml_tensor_view *out, size_t max);
	void (*init)(const ml_model_ops *ops, float *params, ml_rng *r);
	/* x (n x 784, n <= max_batch) -> m->logits (n x 10), keeping
	 * activations in m->work. */
	void (*forward)(ml_model *m, const float *params, const float *x, size_t n);
	/* gw += alpha * d(loss)/d(params), from m->dlogits and the activations
	 * of the last forward (same x and n). gw may alias params (fused SGD
	 * step): every layer reads its weights before it updates them. */
	void (*backward)(ml_model *m, const float *params, const float *x, size_t n, float *gw,
	                 float alpha);
};

/* cnn.c: "cnn", McMahan et al. 2017. */
extern const ml_model_ops ml_cnn_ops;

#endif
