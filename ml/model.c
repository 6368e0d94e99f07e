/* model.c - built-in models on one flat parameter buffer, their
 * forward/backward passes (dense layers through ml_sgemm, gemm.h), evaluation and
 * minibatch SGD: the hot loop of local training and of the simulator.
 *
 * Each model is an ops table (model_impl.h) registered in models[]; the
 * CNN lives in cnn.c. logreg and 2nn are MLPs. Layer l with fan-in I and
 * fan-out O stores
 *   fcL.w  I x O, row-major (so a batch forward is Y = X W + b, no transpose)
 *   fcL.b  O
 * back to back: logreg = [fc1.w 784x10 | fc1.b 10]            =   7,850
 *               2nn    = [fc1 784x200 | fc2 200x200 | fc3 200x10] = 199,210
 * Hidden layers use ReLU; the output is softmax cross-entropy. */
#include "ml/model_impl.h"

#include "ml/gemm.h"
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MLP_MAX_LAYERS 4

/* ---- MLP ------------------------------------------------------------- */

typedef struct mlp_arch {
	size_t n_layers;
	size_t width[MLP_MAX_LAYERS + 1]; /* width[0] = 784, width[n_layers] = 10 */
} mlp_arch;

static const char *const mlp_names[2 * MLP_MAX_LAYERS] = {
	"fc1.w", "fc1.b", "fc2.w", "fc2.b", "fc3.w", "fc3.b", "fc4.w", "fc4.b",
};

static size_t
mlp_max_hidden(const mlp_arch *a)
{
	size_t h = 0;

	for (size_t l = 1; l < a->n_layers; l++)
		if (a->width[l] > h)
			h = a->width[l];
	return h;
}

/* work = [hidden activations, layer by layer | two delta buffers]. */
static size_t
mlp_work_floats(const ml_model_ops *ops, size_t max_batch)
{
	const mlp_arch *a = ops->arch;
	size_t per = 2 * mlp_max_hidden(a);

	for (size_t l = 1; l < a->n_layers; l++)
		per += a->width[l];
	if (per != 0 && max_batch > SIZE_MAX / sizeof(float) / per)
		return SIZE_MAX;
	return per * max_batch;
}

static size_t
mlp_tensors(const ml_model_ops *ops, ml_tensor_view *out, size_t max)
{
	const mlp_arch *a = ops->arch;
	size_t off = 0, k = 0;

	for (size_t l = 0; l < a->n_layers; l++) {
		size_t fi = a->width[l], fo = a->width[l + 1];
		ml_tensor_view v[2] = {
			{mlp_names[2 * l], off, fi * fo},
			{mlp_names[2 * l + 1], off + fi * fo, fo},
		};

		for (int t = 0; t < 2; t++, k++)
			if (k < max)
				out[k] = v[t];
		off += fi * fo + fo;
	}
	return k;
}

static void
mlp_init(const ml_model_ops *ops, float *p, ml_rng *r)
{
	const mlp_arch *a = ops->arch;

	for (size_t l = 0; l < a->n_layers; l++) {
		size_t fi = a->width[l], fo = a->width[l + 1];
		/* He-uniform before a ReLU, Glorot-uniform before the softmax. */
		double lim = l + 1 < a->n_layers ? sqrt(6.0 / (double)fi)
		                                 : sqrt(6.0 / (double)(fi + fo));

		for (size_t i = 0; i < fi * fo; i++)
			p[i] = (float)((2.0 * ml_rng_uniform(r) - 1.0) * lim);
		memset(p + fi * fo, 0, fo * sizeof *p);
		p += fi * fo + fo;
	}
}

/* Sets m->in_lo/in_hi to the columns of x (n x ML_IMAGE_PIXELS) that
 * contain every nonzero, or an empty range for an all-zero batch. */
static void
input_range(ml_model *m, const float *x, size_t n)
{
	size_t lo = ML_IMAGE_PIXELS, hi = 0;

	for (size_t i = 0; i < n; i++) {
		const float *row = x + i * ML_IMAGE_PIXELS;
		size_t j = 0, k = ML_IMAGE_PIXELS;

		while (j < lo && row[j] == 0.0f)
			j++;
		lo = j < lo ? j : lo;
		while (k > hi && row[k - 1] == 0.0f)
			k--;
		hi = k > hi ? k : hi;
	}
	m->in_lo = lo < hi ? lo : 0;
	m->in_hi = lo < hi ? hi : 0;
}

static void
mlp_forward(ml_model *m, const float *p, const float *x, size_t n)
{
	const mlp_arch *a = m->ops->arch;
	const float *in = x;
	float *act = m->work;

	input_range(m, x, n);
	for (size_t l = 0; l < a->n_layers; l++) {
		size_t fi = a->width[l], fo = a->width[l + 1];
		size_t lo = l == 0 ? m->in_lo : 0, hi = l == 0 ? m->in_hi : fi;
		const float *w = p, *b = p + fi * fo;
		int last = l + 1 == a->n_layers;
		float *out = last ? m->logits : act;

		/* out (n x fo) = in (n x fi) . w (fi x fo) + b, over the input
		 * columns [lo, hi) that can be nonzero. */
		for (size_t i = 0; i < n; i++)
			memcpy(out + i * fo, b, fo * sizeof *out);
		if (hi > lo)
			ml_sgemm(false, false, (int)n, (int)fo, (int)(hi - lo), 1.0f, in + lo,
			         (int)fi, w + lo * fo, (int)fo, 1.0f, out, (int)fo);
		if (!last) {
			for (size_t i = 0; i < n * fo; i++)
				out[i] = out[i] > 0.0f ? out[i] : 0.0f;
			in = out;
			act += m->max_batch * fo;
		}
		p += fi * fo + fo;
	}
}

static void
mlp_backward(ml_model *m, const float *p, const float *x, size_t n, float *gw, float alpha)
{
	const mlp_arch *a = m->ops->arch;
	const float *act[MLP_MAX_LAYERS]; /* input of layer l */
	size_t off[MLP_MAX_LAYERS], o = 0;
	float *dbuf[2], *w_act = m->work;
	const float *delta = m->dlogits;

	act[0] = x;
	for (size_t l = 0; l < a->n_layers; l++) {
		off[l] = o;
		o += a->width[l] * a->width[l + 1] + a->width[l + 1];
		if (l > 0) {
			act[l] = w_act;
			w_act += m->max_batch * a->width[l];
		}
	}
	dbuf[0] = w_act;
	dbuf[1] = w_act + m->max_batch * mlp_max_hidden(a);

	for (size_t l = a->n_layers; l-- > 0;) {
		size_t fi = a->width[l], fo = a->width[l + 1], lo = 0, hi = fi;
		const float *w = p + off[l], *in = act[l];
		float *gW = gw + off[l], *gb = gW + fi * fo, *din = NULL;

		if (l > 0) {
			/* din (n x fi) = delta (n x fo) . w^T, through the ReLU
			 * whose output is in. Before gW: gw may alias p. */
			din = dbuf[l & 1];
			ml_sgemm(false, true, (int)n, (int)fi, (int)fo, 1.0f, delta, (int)fo, w,
			         (int)fo, 0.0f, din, (int)fi);
			for (size_t i = 0; i < n * fi; i++)
				din[i] = in[i] > 0.0f ? din[i] : 0.0f;
		}
		/* gW (fi x fo) += alpha * in^T (fi x n) . delta (n x fo); rows
		 * of blank input columns get exact zeros, so they are skipped. */
		if (l == 0) {
			lo = m->in_lo;
			hi = m->in_hi;
		}
		if (hi > lo)
			ml_sgemm(true, false, (int)(hi - lo), (int)fo, (int)n, alpha, in + lo,
			         (int)fi, delta, (int)fo, 1.0f, gW + lo * fo, (int)fo);
		for (size_t i = 0; i < n; i++)
			for (size_t j = 0; j < fo; j++)
				gb[j] += alpha * delta[i * fo + j];
		delta = din;
	}
}

static const mlp_arch arch_logreg = {1, {ML_IMAGE_PIXELS, ML_CLASSES}};
static const mlp_arch arch_2nn = {3, {ML_IMAGE_PIXELS, 200, 200, ML_CLASSES}};

static const ml_model_ops ops_logreg = {
	"logreg", 7850, &arch_logreg, mlp_work_floats, mlp_tensors, mlp_init, mlp_forward,
	mlp_backward,
};
static const ml_model_ops ops_2nn = {
	"2nn", 199210, &arch_2nn, mlp_work_floats, mlp_tensors, mlp_init, mlp_forward,
	mlp_backward,
};

static const ml_model_ops *const models[] = {&ops_logreg, &ops_2nn, &ml_cnn_ops};

/* ---- Model objects --------------------------------------------------- */

static const ml_model_ops *
find_model(const char *name)
{
	if (name == NULL)
		return NULL;
	for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
		if (strcmp(models[i]->name, name) == 0)
			return models[i];
	return NULL;
}

size_t
ml_model_dim_of(const char *name)
{
	const ml_model_ops *ops = find_model(name);

	return ops != NULL ? ops->dim : 0;
}

double
ml_model_train_flops(const char *name)
{
	static const struct { const char *name; size_t n; double macs[4]; } t[] = {
		{"logreg", 1, {784.0 * 10}},
		{"2nn", 3, {784.0 * 200, 200.0 * 200, 200.0 * 10}},
		{"cnn", 4, {28.0 * 28 * 25 * 32, 14.0 * 14 * 800 * 64, 3136.0 * 512, 512.0 * 10}},
	};

	for (size_t i = 0; name != NULL && i < sizeof t / sizeof t[0]; i++)
		if (strcmp(t[i].name, name) == 0) {
			double f = 0.0;

			for (size_t l = 0; l < t[i].n; l++)
				f += (l == 0 ? 4.0 : 6.0) * t[i].macs[l];
			return f;
		}
	return 0.0;
}

const char *
ml_model_names(void)
{
	return "logreg,2nn,cnn";
}

shoal_err
ml_model_new(const char *name, size_t max_batch, ml_model **out)
{
	const ml_model_ops *ops = find_model(name);
	size_t per = ML_IMAGE_PIXELS + 2 * ML_CLASSES, work, total;
	ml_model *m = NULL;

	*out = NULL;
	if (ops == NULL)
		return SHOAL_EMODEL;
	if (max_batch == 0 || max_batch > INT32_MAX / ML_IMAGE_PIXELS)
		return SHOAL_EINVAL;
	work = ops->work_floats(ops, max_batch);
	if (work == SIZE_MAX || work > SIZE_MAX / sizeof(float) - per * max_batch)
		return SHOAL_EINVAL;
	total = per * max_batch + work;
	m = calloc(1, sizeof *m);
	if (m == NULL)
		goto fail;
	m->ops = ops;
	m->max_batch = max_batch;
	/* One block for every float buffer; labels separately. */
	m->x = calloc(total, sizeof(float));
	m->y = calloc(max_batch, 1);
	if (m->x == NULL || m->y == NULL)
		goto fail;
	m->logits = m->x + max_batch * ML_IMAGE_PIXELS;
	m->dlogits = m->logits + max_batch * ML_CLASSES;
	m->work = m->dlogits + max_batch * ML_CLASSES;
	*out = m;
	return SHOAL_OK;
fail:
	ml_model_free(m);
	return SHOAL_ENOMEM;
}

void
ml_model_free(ml_model *m)
{
	if (m == NULL)
		return;
	free(m->x);
	free(m->y);
	free(m);
}

size_t
ml_model_dim(const ml_model *m)
{
	return m->ops->dim;
}

const char *
ml_model_name(const ml_model *m)
{
	return m->ops->name;
}

size_t
ml_model_tensors(const ml_model *m, ml_tensor_view *out, size_t max)
{
	return m->ops->tensors(m->ops, out, max);
}

void
ml_model_init(const ml_model *m, float *params, uint64_t seed)
{
	ml_rng r;

	ml_rng_seed(&r, seed);
	m->ops->init(m->ops, params, &r);
}

/* Sum over the n rows of the softmax cross-entropy of logits against y,
 * computed stably around each row's max. If dlogits is non-NULL it gets
 * scale * (softmax - onehot(y)). */
static double
softmax_xent(const float *logits, const uint8_t *y, size_t n, float *dlogits, float scale)
{
	double total = 0.0;

	for (size_t i = 0; i < n; i++) {
		const float *z = logits + i * ML_CLASSES;
		float e[ML_CLASSES], mx = z[0], sum = 0.0f;

		for (int j = 1; j < ML_CLASSES; j++)
			mx = z[j] > mx ? z[j] : mx;
		for (int j = 0; j < ML_CLASSES; j++) {
			e[j] = expf(z[j] - mx);
			sum += e[j];
		}
		total += (double)(logf(sum) - (z[y[i]] - mx));
		if (dlogits != NULL) {
			float *d = dlogits + i * ML_CLASSES, k = scale / sum;

			for (int j = 0; j < ML_CLASSES; j++)
				d[j] = e[j] * k;
			d[y[i]] -= scale;
		}
	}
	return total;
}

float
ml_model_loss_grad(ml_model *m, const float *params, const float *x, const uint8_t *y, size_t n,
                   float *grad)
{
	double loss;

	if (n == 0 || n > m->max_batch) {
		memset(grad, 0, m->ops->dim * sizeof *grad);
		return n == 0 ? 0.0f : NAN;
	}
	m->ops->forward(m, params, x, n);
	loss = softmax_xent(m->logits, y, n, m->dlogits, 1.0f / (float)n);
	memset(grad, 0, m->ops->dim * sizeof *grad);
	m->ops->backward(m, params, x, n, grad, 1.0f);
	return (float)(loss / (double)n);
}

void
ml_model_forward(ml_model *m, const float *params, const float *x, size_t n, float *out)
{
	/* Chunked, so n > max_batch is fine too. */
	for (size_t s = 0; s < n; s += m->max_batch) {
		size_t nb = n - s < m->max_batch ? n - s : m->max_batch;

		m->ops->forward(m, params, x + s * ML_IMAGE_PIXELS, nb);
		memcpy(out + s * ML_CLASSES, m->logits, nb * ML_CLASSES * sizeof *out);
	}
}

shoal_err
ml_evaluate(ml_model *m, const float *params, const ml_dataset *ds, double *accuracy,
            double *loss)
{
	size_t correct = 0;
	double total = 0.0;

	if (m == NULL || params == NULL || ds == NULL || ds->n == 0)
		return SHOAL_EINVAL;
	for (size_t s = 0; s < ds->n; s += m->max_batch) {
		size_t nb = ds->n - s < m->max_batch ? ds->n - s : m->max_batch;
		const uint8_t *img = ds->images + s * ML_IMAGE_PIXELS;

		for (size_t i = 0; i < nb * ML_IMAGE_PIXELS; i++)
			m->x[i] = (float)img[i] / 255.0f;
		m->ops->forward(m, params, m->x, nb);
		total += softmax_xent(m->logits, ds->labels + s, nb, NULL, 0.0f);
		for (size_t i = 0; i < nb; i++) {
			const float *z = m->logits + i * ML_CLASSES;
			int best = 0;

			for (int j = 1; j < ML_CLASSES; j++)
				if (z[j] > z[best])
					best = j;
			correct += best == ds->labels[s + i];
		}
	}
	if (accuracy != NULL)
		*accuracy = (double)correct / (double)ds->n;
	if (loss != NULL)
		*loss = total / (double)ds->n;
	return SHOAL_OK;
}

shoal_err
ml_train_sgd(ml_model *m, float *params, const ml_dataset *ds, const uint32_t *idx, size_t n,
             const ml_sgd_config *cfg, double *mean_loss)
{
	size_t batches = 0, dim;
	double total = 0.0;
	uint32_t *perm;
	float *g = NULL, *v = NULL, *p0 = NULL;
	bool general;

	if (m == NULL || params == NULL || ds == NULL || idx == NULL || cfg == NULL || n == 0 ||
	    n > UINT32_MAX || cfg->batch == 0 || cfg->batch > m->max_batch || cfg->epochs == 0 ||
	    !isfinite(cfg->lr) || !(cfg->momentum >= 0 && cfg->momentum < 1) ||
	    !(cfg->weight_decay >= 0) || !isfinite(cfg->weight_decay) || !(cfg->prox_mu >= 0) ||
	    !isfinite(cfg->prox_mu))
		return SHOAL_EINVAL;
	for (size_t i = 0; i < n; i++)
		if (idx[i] >= ds->n)
			return SHOAL_EINVAL;
	dim = m->ops->dim;
	general = cfg->momentum != 0 || cfg->weight_decay != 0 || cfg->prox_mu != 0;
	perm = malloc(n * sizeof *perm);
	if (perm == NULL)
		return SHOAL_ENOMEM;
	if (general && ((g = malloc(dim * sizeof *g)) == NULL ||
	                (v = calloc(dim, sizeof *v)) == NULL ||
	                (p0 = malloc(dim * sizeof *p0)) == NULL)) {
		free(perm);
		free(g);
		free(v);
		return SHOAL_ENOMEM;
	}
	if (general)
		memcpy(p0, params, dim * sizeof *p0);
	for (uint32_t e = 0; e < cfg->epochs; e++) {
		ml_rng r;

		if (cfg->max_steps > 0 && batches == cfg->max_steps)
			break;
		ml_rng_seed(&r, ml_seed_mix(cfg->seed, e));
		memcpy(perm, idx, n * sizeof *perm);
		ml_rng_shuffle(&r, perm, n);
		for (size_t s = 0; s < n; s += cfg->batch) {
			size_t nb = n - s < cfg->batch ? n - s : cfg->batch;

			if (cfg->max_steps > 0 && batches == cfg->max_steps)
				break;

			ml_gather(ds, perm + s, nb, m->x, m->y);
			m->ops->forward(m, params, m->x, nb);
			total += softmax_xent(m->logits, m->y, nb, m->dlogits, 1.0f / (float)nb) /
			         (double)nb;
			batches++;
			if (!general) {
				/* p -= lr * g, fused: backward accumulates -lr * g
				 * straight into params (no gradient buffer, no extra
				 * pass). */
				m->ops->backward(m, params, m->x, nb, params, -cfg->lr);
				continue;
			}
			memset(g, 0, dim * sizeof *g);
			m->ops->backward(m, params, m->x, nb, g, 1.0f);
			const float mom = cfg->momentum, wd = cfg->weight_decay, mu = cfg->prox_mu,
			            lr = cfg->lr;
			for (size_t j = 0; j < dim; j++) {
				float gj = g[j] + wd * params[j] + mu * (params[j] - p0[j]);
				v[j] = mom * v[j] + gj;
				params[j] -= lr * v[j];
			}
		}
	}
	free(perm);
	free(g);
	free(v);
	free(p0);
	if (mean_loss != NULL)
		*mean_loss = total / (double)batches;
	return SHOAL_OK;
}

uint32_t
ml_sgd_steps(size_t n, uint32_t batch, uint32_t epochs)
{
	uint64_t s = batch > 0 ? (uint64_t)epochs * ((n + batch - 1) / batch) : 0;

	return s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

uint64_t
ml_sgd_examples(size_t n, uint32_t batch, uint32_t steps)
{
	uint64_t per_epoch = batch > 0 ? (n + batch - 1) / batch : 0;

	if (per_epoch == 0)
		return 0;
	uint64_t rest = (uint64_t)(steps % per_epoch) * batch;
	return (uint64_t)(steps / per_epoch) * n + (rest < n ? rest : n);
}

void
ml_set_blas_threads(int n)
{
	ml_gemm_set_threads(n);
}
