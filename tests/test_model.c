/* test_model.c - built-in models: dimensions and layout, gradients against
 * central finite differences, training on real MNIST, determinism of SGD,
 * evaluation, and argument checks. */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ml/ml.h"

static ml_dataset load(const char *split)
{
	ml_dataset ds;

	assert_int_equal(ml_mnist_load(SHOAL_DATA_DIR, split, &ds), SHOAL_OK);
	return ds;
}

static float *
new_params(const ml_model *m, uint64_t seed)
{
	float *p = malloc(ml_model_dim(m) * sizeof *p);

	assert_non_null(p);
	ml_model_init(m, p, seed);
	return p;
}

static void
test_dims(void **state)
{
	static const struct { const char *name; size_t dim, tensors; } cases[] = {
		{"logreg", 7850, 2},
		{"2nn", 199210, 6},
	};
	ml_tensor_view v[16];

	assert_int_equal(ml_model_dim_of("cnn9"), 0);
	assert_int_equal(ml_model_dim_of(NULL), 0);
	/* Training FLOPs per example, counted by hand in ml/ml.h. */
	assert_true(ml_model_train_flops("logreg") == 31360.0);
	assert_true(ml_model_train_flops("2nn") == 879200.0);
	assert_true(ml_model_train_flops("cnn") == 72384512.0);
	assert_true(ml_model_train_flops("cnn9") == 0.0 && ml_model_train_flops(NULL) == 0.0);
	assert_non_null(strstr(ml_model_names(), "2nn"));
	for (size_t i = 0; i < 2; i++) {
		ml_model *m;
		size_t nt, off = 0;

		assert_int_equal(ml_model_dim_of(cases[i].name), cases[i].dim);
		assert_int_equal(ml_model_new(cases[i].name, 10, &m), SHOAL_OK);
		assert_int_equal(ml_model_dim(m), cases[i].dim);
		assert_string_equal(ml_model_name(m), cases[i].name);
		/* Views tile the buffer exactly, in order. */
		nt = ml_model_tensors(m, v, 16);
		assert_int_equal(nt, cases[i].tensors);
		for (size_t t = 0; t < nt; t++) {
			assert_int_equal(v[t].offset, off);
			off += v[t].count;
		}
		assert_int_equal(off, cases[i].dim);
		assert_string_equal(v[0].name, "fc1.w");
		assert_int_equal(v[0].count, 784 * (i == 0 ? 10 : 200));
		ml_model_free(m);
	}
}

static void
test_init(void **state)
{
	ml_model *m;
	ml_tensor_view v[6];
	float *a, *b;
	size_t dim;

	assert_int_equal(ml_model_new("2nn", 1, &m), SHOAL_OK);
	dim = ml_model_dim(m);
	a = new_params(m, 9);
	b = new_params(m, 9);
	assert_memory_equal(a, b, dim * sizeof *a);
	ml_model_init(m, b, 10);
	assert_true(memcmp(a, b, dim * sizeof *a) != 0);
	assert_int_equal(ml_model_tensors(m, v, 6), 6);
	for (size_t t = 0; t < 6; t++) {
		/* Biases zero; fc1/fc2 He-uniform sqrt(6/fan_in), fc3
		 * Glorot-uniform sqrt(6/(fan_in+fan_out)). */
		double lim = t == 0 ? sqrt(6.0 / 784) : t == 2 ? sqrt(6.0 / 200) : sqrt(6.0 / 210);
		double sum = 0.0, maxabs = 0.0;

		for (size_t i = 0; i < v[t].count; i++) {
			float w = a[v[t].offset + i];

			sum += w;
			maxabs = fabs(w) > maxabs ? fabs(w) : maxabs;
		}
		if (t % 2 == 1) {
			assert_true(maxabs == 0.0);
			continue;
		}
		assert_true(maxabs <= lim && maxabs > 0.9 * lim);
		/* Mean of U(-lim, lim) over >= 2000 draws is near 0. */
		assert_true(fabs(sum / (double)v[t].count) < 0.1 * lim);
	}
	free(a);
	free(b);
	ml_model_free(m);
}

/* Central finite differences of the float loss at eps = 1e-2 against the
 * analytic gradient, on 8 real test images, for ~10 coordinates of every
 * tensor (first-layer weights picked on inked pixels, so they are not
 * trivially zero).
 *
 * Tolerance |fd - g| <= 1e-4 + 1e-2 |g|: the loss (~2.3) is computed in
 * float with a relative rounding error of a few 1e-7, i.e. ~1e-6 absolute,
 * which the difference quotient divides by 2 eps = 0.02 -> ~5e-5 (measured:
 * <= 1.5e-5); the O(eps^2) truncation term is ~1e-5 for these smooth
 * softmax terms and is covered by the 1% relative part. A wrong index,
 * transpose, missing ReLU mask or a 1/n error is off by O(|g|).
 *
 * ReLU kinks: when a hidden unit of some example crosses zero inside
 * [-eps, eps] the difference quotient is not a derivative. Such a
 * coordinate is recognised by fd(eps) and fd(eps/2) disagreeing (they
 * agree to the same tolerance on smooth coordinates) and skipped; at most
 * 10% of coordinates may be skipped, and logreg (smooth) may skip none. */
static void
gradcheck(const char *name)
{
	enum { B = 8, PER_TENSOR = 10 };
	ml_dataset ds = load("t10k");
	uint32_t idx[B];
	float x[B * ML_IMAGE_PIXELS], *p, *g, *scratch;
	uint8_t y[B];
	ml_tensor_view v[8];
	size_t nt, checked = 0, skipped = 0, dim;
	ml_model *m;
	ml_rng r;

	for (uint32_t i = 0; i < B; i++)
		idx[i] = i * 37;
	ml_gather(&ds, idx, B, x, y);
	assert_int_equal(ml_model_new(name, B, &m), SHOAL_OK);
	dim = ml_model_dim(m);
	p = new_params(m, 3);
	g = malloc(dim * sizeof *g);
	scratch = malloc(dim * sizeof *scratch);
	assert_non_null(g);
	assert_non_null(scratch);
	/* Nonzero biases, so the bias gradients are exercised away from 0. */
	ml_rng_seed(&r, 4);
	nt = ml_model_tensors(m, v, 8);
	for (size_t t = 1; t < nt; t += 2)
		for (size_t i = 0; i < v[t].count; i++)
			p[v[t].offset + i] = (float)(0.2 * ml_rng_uniform(&r) - 0.1);
	assert_true(ml_model_loss_grad(m, p, x, y, B, g) > 0.0f);
	for (size_t t = 0; t < nt; t++) {
		for (int k = 0; k < PER_TENSOR; k++) {
			size_t c = v[t].offset + ml_rng_below(&r, (uint32_t)v[t].count);
			float fd[2], orig;

			if (t == 0) {
				size_t fo = v[1].count, pix;

				do
					pix = ml_rng_below(&r, ML_IMAGE_PIXELS);
				while (x[pix] == 0.0f);
				c = pix * fo + ml_rng_below(&r, (uint32_t)fo);
			}
			orig = p[c];
			for (int h = 0; h < 2; h++) {
				float eps = h == 0 ? 1e-2f : 5e-3f, lp, lm;

				p[c] = orig + eps;
				lp = ml_model_loss_grad(m, p, x, y, B, scratch);
				p[c] = orig - eps;
				lm = ml_model_loss_grad(m, p, x, y, B, scratch);
				p[c] = orig;
				fd[h] = (lp - lm) / (2.0f * eps);
			}
			if (fabsf(fd[0] - fd[1]) > 1e-4f + 1e-2f * fabsf(fd[0])) {
				skipped++;
				continue;
			}
			checked++;
			if (fabsf(fd[0] - g[c]) > 1e-4f + 1e-2f * fabsf(g[c]))
				fail_msg("%s %s[%zu]: analytic %g, numeric %g", name, v[t].name,
				         c - v[t].offset, (double)g[c], (double)fd[0]);
		}
	}
	print_message("%s: %zu coordinates checked, %zu skipped at ReLU kinks\n", name, checked,
	              skipped);
	assert_true(checked + skipped == nt * PER_TENSOR);
	if (strcmp(name, "logreg") == 0)
		assert_int_equal(skipped, 0);
	assert_true(skipped * 10 <= nt * PER_TENSOR);
	free(p);
	free(g);
	free(scratch);
	ml_model_free(m);
	ml_dataset_fini(&ds);
}

static void
test_gradcheck_logreg(void **state)
{
	gradcheck("logreg");
}

static void
test_gradcheck_2nn(void **state)
{
	gradcheck("2nn");
}

static void
test_grad_is_mean(void **state)
{
	/* The gradient of the mean over a batch of two copies of an example
	 * equals that example's gradient (catches a missing 1/n), and the
	 * gradient buffer is overwritten, not accumulated. */
	ml_dataset ds = load("t10k");
	uint32_t idx[2] = {5, 5};
	float x[2 * ML_IMAGE_PIXELS], *p, *g1, *g2;
	uint8_t y[2];
	ml_model *m;
	size_t dim;
	float l1, l2;

	assert_int_equal(ml_model_new("2nn", 2, &m), SHOAL_OK);
	dim = ml_model_dim(m);
	p = new_params(m, 1);
	g1 = malloc(dim * sizeof *g1);
	g2 = malloc(dim * sizeof *g2);
	assert_non_null(g1);
	assert_non_null(g2);
	ml_gather(&ds, idx, 2, x, y);
	l1 = ml_model_loss_grad(m, p, x, y, 1, g1);
	for (size_t i = 0; i < dim; i++)
		g2[i] = 1e3f; /* garbage that must be overwritten */
	l2 = ml_model_loss_grad(m, p, x, y, 2, g2);
	assert_float_equal(l1, l2, 1e-6 * fabs(l1));
	for (size_t i = 0; i < dim; i++)
		if (fabsf(g1[i] - g2[i]) > 1e-6f + 1e-5f * fabsf(g1[i]))
			fail_msg("coordinate %zu: %g vs %g", i, (double)g1[i], (double)g2[i]);
	free(p);
	free(g1);
	free(g2);
	ml_model_free(m);
	ml_dataset_fini(&ds);
}

static void
test_loss_stable_for_large_logits(void **state)
{
	/* Logits of +-1e4 overflow a naive exp; the loss must stay finite:
	 * 0 for the right class, 2e4 for the wrong one. */
	ml_tensor_view v[2];
	float x[ML_IMAGE_PIXELS] = {0}, *p, *g, logits[ML_CLASSES], loss;
	uint8_t y = 3;
	ml_model *m;

	assert_int_equal(ml_model_new("logreg", 1, &m), SHOAL_OK);
	p = calloc(ml_model_dim(m), sizeof *p);
	g = malloc(ml_model_dim(m) * sizeof *g);
	assert_non_null(p);
	assert_non_null(g);
	ml_model_tensors(m, v, 2);
	for (int k = 0; k < ML_CLASSES; k++)
		p[v[1].offset + k] = -1e4f;
	p[v[1].offset + 3] = 1e4f;
	ml_model_forward(m, p, x, 1, logits);
	assert_true(logits[3] == 1e4f && logits[0] == -1e4f);
	loss = ml_model_loss_grad(m, p, x, &y, 1, g);
	assert_true(isfinite(loss) && loss >= 0.0f && loss < 1e-6f);
	y = 4;
	loss = ml_model_loss_grad(m, p, x, &y, 1, g);
	assert_float_equal(loss, 2e4, 1.0);
	assert_float_equal(g[v[1].offset + 3], 1.0, 1e-6);
	assert_float_equal(g[v[1].offset + 4], -1.0, 1e-6);
	free(p);
	free(g);
	ml_model_free(m);
}

static uint32_t *
range(size_t n)
{
	uint32_t *idx = malloc(n * sizeof *idx);

	assert_non_null(idx);
	for (size_t i = 0; i < n; i++)
		idx[i] = (uint32_t)i;
	return idx;
}

static void
test_training_reduces_loss(void **state)
{
	static const char *names[] = {"logreg", "2nn"};
	ml_dataset train = load("train");
	ml_dataset sub = {2000, train.images, train.labels};
	uint32_t *idx = range(sub.n);

	for (size_t i = 0; i < 2; i++) {
		ml_sgd_config cfg = {.epochs = 1, .batch = 10, .lr = 0.05f, .seed = 1};
		double acc0, loss0, acc1, loss1, mean;
		ml_model *m;
		float *p;

		assert_int_equal(ml_model_new(names[i], 100, &m), SHOAL_OK);
		p = new_params(m, 2);
		assert_int_equal(ml_evaluate(m, p, &sub, &acc0, &loss0), SHOAL_OK);
		assert_int_equal(ml_train_sgd(m, p, &sub, idx, sub.n, &cfg, &mean), SHOAL_OK);
		assert_int_equal(ml_evaluate(m, p, &sub, &acc1, &loss1), SHOAL_OK);
		/* From chance (~2.3, ~10%) to well below it after 200 steps. */
		assert_true(loss0 > 2.0);
		assert_true(loss1 < 0.7 * loss0);
		assert_true(acc1 > acc0 + 0.4);
		assert_true(mean > loss1 && mean < loss0);
		free(p);
		ml_model_free(m);
	}
	free(idx);
	ml_dataset_fini(&train);
}

static void
test_logreg_accuracy(void **state)
{
	ml_dataset train = load("train"), test = load("t10k");
	ml_sgd_config cfg = {.epochs = 1, .batch = 10, .lr = 0.1f, .seed = 7};
	uint32_t *idx = range(6000);
	double acc, loss;
	ml_model *m;
	float *p;

	assert_int_equal(ml_model_new("logreg", 1000, &m), SHOAL_OK);
	p = new_params(m, 5);
	assert_int_equal(ml_train_sgd(m, p, &train, idx, 6000, &cfg, NULL), SHOAL_OK);
	assert_int_equal(ml_evaluate(m, p, &test, &acc, &loss), SHOAL_OK);
	print_message("logreg, 1 epoch on 6000: test accuracy %.4f, loss %.4f\n", acc, loss);
	assert_true(acc > 0.85);
	assert_true(loss < 0.6);
	free(p);
	free(idx);
	ml_model_free(m);
	ml_dataset_fini(&train);
	ml_dataset_fini(&test);
}

static void
test_sgd_deterministic(void **state)
{
	ml_dataset train = load("train");
	ml_sgd_config cfg = {.epochs = 2, .batch = 10, .lr = 0.05f, .seed = 11};
	uint32_t *idx = range(500);
	float *a, *b, *c;
	ml_model *m;
	size_t dim;

	/* Two clients' worth of work interleaved on one model object must
	 * not leak state between calls. */
	assert_int_equal(ml_model_new("2nn", 10, &m), SHOAL_OK);
	dim = ml_model_dim(m);
	a = new_params(m, 1);
	b = new_params(m, 1);
	c = new_params(m, 1);
	assert_int_equal(ml_train_sgd(m, a, &train, idx, 500, &cfg, NULL), SHOAL_OK);
	assert_int_equal(ml_train_sgd(m, b, &train, idx, 500, &cfg, NULL), SHOAL_OK);
	assert_memory_equal(a, b, dim * sizeof *a);
	cfg.seed = 12;
	assert_int_equal(ml_train_sgd(m, c, &train, idx, 500, &cfg, NULL), SHOAL_OK);
	assert_true(memcmp(a, c, dim * sizeof *a) != 0);
	free(a);
	free(b);
	free(c);
	free(idx);
	ml_model_free(m);
	ml_dataset_fini(&train);
}

static void
test_sgd_step_matches_gradient(void **state)
{
	/* One full batch (n == batch) of ml_train_sgd equals p - lr * g with
	 * g from ml_model_loss_grad: the fused update is plain SGD. The batch
	 * order is shuffled, which only changes float summation order. */
	ml_dataset train = load("train");
	ml_sgd_config cfg = {.epochs = 1, .batch = 16, .lr = 0.5f, .seed = 3};
	uint32_t *idx = range(16);
	float x[16 * ML_IMAGE_PIXELS], *p, *q, *g;
	uint8_t y[16];
	double mean;
	ml_model *m;
	float loss;
	size_t dim, moved = 0;

	assert_int_equal(ml_model_new("2nn", 16, &m), SHOAL_OK);
	dim = ml_model_dim(m);
	p = new_params(m, 8);
	q = new_params(m, 8);
	g = malloc(dim * sizeof *g);
	assert_non_null(g);
	ml_gather(&train, idx, 16, x, y);
	loss = ml_model_loss_grad(m, p, x, y, 16, g);
	assert_int_equal(ml_train_sgd(m, q, &train, idx, 16, &cfg, &mean), SHOAL_OK);
	assert_float_equal(mean, loss, 1e-5);
	for (size_t i = 0; i < dim; i++) {
		float want = p[i] - cfg.lr * g[i];

		if (fabsf(q[i] - want) > 1e-6f + 1e-4f * fabsf(cfg.lr * g[i]))
			fail_msg("coordinate %zu: %g, want %g", i, (double)q[i], (double)want);
		moved += q[i] != p[i];
	}
	assert_true(moved > dim / 4);
	free(p);
	free(q);
	free(g);
	free(idx);
	ml_model_free(m);
	ml_dataset_fini(&train);
}

static void
test_evaluate_chunking(void **state)
{
	/* Evaluation does not depend on the model's max_batch; with zero
	 * parameters every logit ties, argmax picks class 0 and the loss is
	 * log(10). */
	ml_dataset test = load("t10k");
	double acc_a, loss_a, acc_b, loss_b;
	ml_model *a, *b;
	float *p, *z;
	size_t zeros = 0;

	assert_int_equal(ml_model_new("2nn", 7, &a), SHOAL_OK);
	assert_int_equal(ml_model_new("2nn", 1000, &b), SHOAL_OK);
	p = new_params(a, 6);
	assert_int_equal(ml_evaluate(a, p, &test, &acc_a, &loss_a), SHOAL_OK);
	assert_int_equal(ml_evaluate(b, p, &test, &acc_b, &loss_b), SHOAL_OK);
	assert_float_equal(acc_a, acc_b, 1e-4);
	assert_float_equal(loss_a, loss_b, 1e-5 * loss_a);
	z = calloc(ml_model_dim(a), sizeof *z);
	assert_non_null(z);
	assert_int_equal(ml_evaluate(b, z, &test, &acc_a, &loss_a), SHOAL_OK);
	for (size_t i = 0; i < test.n; i++)
		zeros += test.labels[i] == 0;
	assert_float_equal(acc_a, (double)zeros / (double)test.n, 1e-12);
	assert_float_equal(loss_a, log(10.0), 1e-5);
	free(p);
	free(z);
	ml_model_free(a);
	ml_model_free(b);
	ml_dataset_fini(&test);
}

static void
test_bad_args(void **state)
{
	uint8_t images[2 * ML_IMAGE_PIXELS] = {0}, labels[2] = {1, 2};
	ml_dataset ds = {2, images, labels}, empty = {0, NULL, NULL};
	ml_sgd_config cfg = {.epochs = 1, .batch = 2, .lr = 0.1f, .seed = 1};
	uint32_t idx[2] = {0, 1}, bad_idx[2] = {0, 2};
	ml_model *m = (ml_model *)&cfg;
	float *p;

	assert_int_equal(ml_model_new("resnet", 10, &m), SHOAL_EMODEL);
	assert_null(m);
	assert_int_equal(ml_model_new(NULL, 10, &m), SHOAL_EMODEL);
	assert_int_equal(ml_model_new("logreg", 0, &m), SHOAL_EINVAL);
	assert_int_equal(ml_model_new("logreg", SIZE_MAX, &m), SHOAL_EINVAL);
	assert_int_equal(ml_model_new("logreg", 2, &m), SHOAL_OK);
	p = new_params(m, 1);
	assert_int_equal(ml_train_sgd(m, p, &ds, idx, 2, &cfg, NULL), SHOAL_OK);
	assert_int_equal(ml_train_sgd(m, p, &ds, idx, 0, &cfg, NULL), SHOAL_EINVAL);
	assert_int_equal(ml_train_sgd(m, p, &ds, bad_idx, 2, &cfg, NULL), SHOAL_EINVAL);
	cfg.batch = 3; /* > max_batch */
	assert_int_equal(ml_train_sgd(m, p, &ds, idx, 2, &cfg, NULL), SHOAL_EINVAL);
	cfg.batch = 0;
	assert_int_equal(ml_train_sgd(m, p, &ds, idx, 2, &cfg, NULL), SHOAL_EINVAL);
	cfg.batch = 2;
	cfg.epochs = 0;
	assert_int_equal(ml_train_sgd(m, p, &ds, idx, 2, &cfg, NULL), SHOAL_EINVAL);
	cfg.epochs = 1;
	cfg.lr = NAN;
	assert_int_equal(ml_train_sgd(m, p, &ds, idx, 2, &cfg, NULL), SHOAL_EINVAL);
	assert_int_equal(ml_evaluate(m, p, &empty, NULL, NULL), SHOAL_EINVAL);
	free(p);
	ml_model_free(m);
	ml_model_free(NULL);
}

/* ---- cnn (McMahan et al. 2017) ---------------------------------------- */

static void
test_cnn_dims(void **state)
{
	static const struct { const char *name; size_t count; } want[] = {
		{"conv1.w", 25 * 32},    {"conv1.b", 32},  {"conv2.w", 800 * 64}, {"conv2.b", 64},
		{"fc1.w", 3136 * 512},   {"fc1.b", 512},   {"fc2.w", 512 * 10},   {"fc2.b", 10},
	};
	size_t sizes[] = {1, 10, 50, 51, 1000};
	ml_tensor_view v[16];
	size_t nt, off = 0;
	ml_model *m;

	assert_int_equal(ml_model_dim_of("cnn"), 1663370);
	assert_int_equal(32 * 25 + 32 + 64 * 32 * 25 + 64 + 3136 * 512 + 512 + 512 * 10 + 10,
	                 1663370);
	assert_non_null(strstr(ml_model_names(), "cnn"));
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		assert_int_equal(ml_model_new("cnn", sizes[i], &m), SHOAL_OK);
		assert_int_equal(ml_model_dim(m), 1663370);
		assert_string_equal(ml_model_name(m), "cnn");
		ml_model_free(m);
	}
	assert_int_equal(ml_model_new("cnn", 10, &m), SHOAL_OK);
	nt = ml_model_tensors(m, v, 16);
	assert_int_equal(nt, 8);
	assert_int_equal(ml_model_tensors(m, v, 3), 8); /* max caps writes only */
	for (size_t t = 0; t < nt; t++) {
		assert_string_equal(v[t].name, want[t].name);
		assert_int_equal(v[t].count, want[t].count);
		assert_int_equal(v[t].offset, off);
		off += v[t].count;
	}
	assert_int_equal(off, 1663370);
	ml_model_free(m);
}

static void
test_cnn_init(void **state)
{
	/* He-uniform sqrt(6/fan_in) with fan_in 25, 800, 3136 before the
	 * ReLUs, Glorot-uniform sqrt(6/(512+10)) before the softmax, zero
	 * biases. */
	const double lim[4] = {sqrt(6.0 / 25), sqrt(6.0 / 800), sqrt(6.0 / 3136),
	                       sqrt(6.0 / 522)};
	ml_tensor_view v[8];
	ml_model *m;
	float *p;

	assert_int_equal(ml_model_new("cnn", 1, &m), SHOAL_OK);
	p = new_params(m, 9);
	assert_int_equal(ml_model_tensors(m, v, 8), 8);
	for (size_t t = 0; t < 8; t++) {
		double sum = 0.0, maxabs = 0.0;

		for (size_t i = 0; i < v[t].count; i++) {
			sum += p[v[t].offset + i];
			maxabs = fabs(p[v[t].offset + i]) > maxabs ? fabs(p[v[t].offset + i]) : maxabs;
		}
		if (t % 2 == 1) {
			assert_true(maxabs == 0.0);
			continue;
		}
		assert_true(maxabs <= lim[t / 2] && maxabs > 0.9 * lim[t / 2]);
		assert_true(fabs(sum / (double)v[t].count) < 0.1 * lim[t / 2]);
	}
	free(p);
	ml_model_free(m);
}

/* An independent double-precision reference of the CNN for its gradient
 * check: direct convolution loops in the documented layout (NHWC
 * activations, conv weights (ky*5 + kx)*C_in + c_in rows x C_out, fc1 rows
 * in (y*7 + x)*64 + c order), no im2col, no BLAS. */
enum { REF_B = 2 };
typedef struct ref_cnn {
	double x[REF_B][784];
	double p1[REF_B][14 * 14 * 32]; /* relu + pool of conv1 */
	double p2[REF_B][7 * 7 * 64];   /* relu + pool of conv2 */
	double h[REF_B][512];
	double logits[REF_B][10];
} ref_cnn;

/* out (side/2 x side/2 x co) = maxpool(relu(conv5x5 pad 2 of in (side x
 * side x ci) with w, b)). */
static void
ref_conv_pool(const double *in, int side, int ci, int co, const double *w, const double *b,
              double *out)
{
	double *a = malloc((size_t)side * side * co * sizeof *a);

	assert_non_null(a);
	for (int oy = 0; oy < side; oy++)
		for (int ox = 0; ox < side; ox++) {
			double *acc = a + ((size_t)oy * side + ox) * co;

			for (int o = 0; o < co; o++)
				acc[o] = b[o];
			for (int ky = 0; ky < 5; ky++)
				for (int kx = 0; kx < 5; kx++) {
					int iy = oy + ky - 2, ix = ox + kx - 2;

					if (iy < 0 || iy >= side || ix < 0 || ix >= side)
						continue;
					for (int c = 0; c < ci; c++) {
						double v = in[((size_t)iy * side + ix) * ci + c];
						const double *wr = w + ((size_t)(ky * 5 + kx) * ci + c) * co;

						for (int o = 0; o < co; o++)
							acc[o] += v * wr[o];
					}
				}
			for (int o = 0; o < co; o++)
				acc[o] = acc[o] > 0.0 ? acc[o] : 0.0;
		}
	for (int py = 0; py < side / 2; py++)
		for (int px = 0; px < side / 2; px++)
			for (int o = 0; o < co; o++) {
				double mx = 0.0;

				for (int d = 0; d < 4; d++) {
					double v = a[((size_t)(2 * py + d / 2) * side + 2 * px + d % 2) * co + o];

					mx = v > mx ? v : mx;
				}
				out[((size_t)py * (side / 2) + px) * co + o] = mx;
			}
	free(a);
}

/* Mean cross-entropy of the reference on labels y, recomputing from
 * `stage` on (0: conv1, 1: conv2, 2: fc1) and reusing r's activations
 * before it. P is the parameter vector in double. */
static double
ref_loss(ref_cnn *r, const double *P, const uint8_t *y, int stage)
{
	double loss = 0.0;

	for (int i = 0; i < REF_B; i++) {
		double mx;

		if (stage <= 0)
			ref_conv_pool(r->x[i], 28, 1, 32, P + 0, P + 800, r->p1[i]);
		if (stage <= 1)
			ref_conv_pool(r->p1[i], 14, 32, 64, P + 832, P + 52032, r->p2[i]);
		for (int j = 0; j < 512; j++)
			r->h[i][j] = P[1657728 + j];
		for (int k = 0; k < 3136; k++)
			for (int j = 0; j < 512; j++)
				r->h[i][j] += r->p2[i][k] * P[52096 + (size_t)k * 512 + j];
		for (int j = 0; j < 512; j++)
			r->h[i][j] = r->h[i][j] > 0.0 ? r->h[i][j] : 0.0;
		for (int j = 0; j < 10; j++) {
			double a = P[1663360 + j];

			for (int k = 0; k < 512; k++)
				a += r->h[i][k] * P[1658240 + (size_t)k * 10 + j];
			r->logits[i][j] = a;
		}
		mx = r->logits[i][0];
		for (int j = 1; j < 10; j++)
			mx = r->logits[i][j] > mx ? r->logits[i][j] : mx;
		{
			double sum = 0.0;

			for (int j = 0; j < 10; j++)
				sum += exp(r->logits[i][j] - mx);
			loss += log(sum) - (r->logits[i][y[i]] - mx);
		}
	}
	return loss / REF_B;
}

/* The CNN's float gradient (ml_model_loss_grad) against central finite
 * differences of the double reference above, on 2 real test images, 10
 * coordinates of every tensor (fc1.w: half of them joining a pool2 output
 * and an fc1 unit that are both active for some image in the reference,
 * so they are not trivially 0); the reference's logits must also match the
 * model's forward.
 *
 * Why not finite differences of the float loss, as for the MLPs: a conv
 * weight or bias moves thousands of units, so ReLU and max-pool kinks are
 * dense - measured at eps = 1e-2, 26 of 320 coordinates were off by up to
 * 8x the MLP tolerance with fd(eps) and fd(eps/2) agreeing (kinks closer
 * than eps/2), and fd only converged to the analytic value at eps ~ 2e-4,
 * where float rounding of the loss (~1e-7) is already ~5e-4 of noise.
 * In double, eps = 1e-5 crosses a kink with probability ~1e-3 per
 * coordinate, the truncation error is O(eps^2) ~ 1e-10 and rounding
 * ~1e-16 / 1e-5 = 1e-11. What is left is the float error of the analytic
 * gradient itself (sums of up to ~1600 float products, ~1e-6 relative;
 * measured worst 2e-7 absolute): tolerance 1e-5 + 1e-3 |fd|. A wrong tap
 * offset, transpose, padding, argmax, mask or 1/n is off by O(|g|).
 * Coordinates where fd(eps) and fd(eps/2) disagree beyond that tolerance
 * sit on a kink and are skipped; at most 10% may be. */
static void
test_gradcheck_cnn(void **state)
{
	enum { PER_TENSOR = 10 };
	ml_dataset ds = load("t10k");
	uint32_t idx[REF_B] = {0, 37};
	float x[REF_B * ML_IMAGE_PIXELS], *p, *g, logits[REF_B * ML_CLASSES];
	uint8_t y[REF_B];
	ml_tensor_view v[8];
	size_t nt, checked = 0, skipped = 0, dim, nonzero = 0;
	ref_cnn *base = malloc(sizeof *base), *tmp = malloc(sizeof *tmp);
	double *P, worst = 0.0;
	ml_model *m;
	ml_rng r;

	assert_non_null(base);
	assert_non_null(tmp);
	ml_gather(&ds, idx, REF_B, x, y);
	assert_int_equal(ml_model_new("cnn", REF_B, &m), SHOAL_OK);
	dim = ml_model_dim(m);
	p = new_params(m, 3);
	g = malloc(dim * sizeof *g);
	P = malloc(dim * sizeof *P);
	assert_non_null(g);
	assert_non_null(P);
	/* Nonzero biases, so the bias gradients are exercised away from 0. */
	ml_rng_seed(&r, 4);
	nt = ml_model_tensors(m, v, 8);
	assert_int_equal(nt, 8);
	for (size_t t = 1; t < nt; t += 2)
		for (size_t i = 0; i < v[t].count; i++)
			p[v[t].offset + i] = (float)(0.2 * ml_rng_uniform(&r) - 0.1);
	for (size_t i = 0; i < dim; i++)
		P[i] = p[i];
	for (size_t i = 0; i < REF_B * ML_IMAGE_PIXELS; i++)
		base->x[i / ML_IMAGE_PIXELS][i % ML_IMAGE_PIXELS] = x[i];
	memcpy(tmp->x, base->x, sizeof base->x);
	assert_true(ml_model_loss_grad(m, p, x, y, REF_B, g) > 0.0f);
	ml_model_forward(m, p, x, REF_B, logits);
	(void)ref_loss(base, P, y, 0);
	for (int i = 0; i < REF_B * ML_CLASSES; i++)
		assert_float_equal(logits[i], base->logits[i / 10][i % 10], 1e-4);
	for (size_t t = 0; t < nt; t++) {
		int stage = t < 2 ? 0 : t < 4 ? 1 : 2;

		for (int k = 0; k < PER_TENSOR; k++) {
			size_t c = v[t].offset + ml_rng_below(&r, (uint32_t)v[t].count);
			double fd[2], orig, err;

			if (t == 4 && k % 2 == 0) {
				size_t row, col, i;

				do {
					i = ml_rng_below(&r, REF_B);
					row = ml_rng_below(&r, 3136);
					col = ml_rng_below(&r, 512);
				} while (base->p2[i][row] <= 0.0 || base->h[i][col] <= 0.0);
				c = v[t].offset + row * 512 + col;
			}
			orig = P[c];
			for (int hh = 0; hh < 2; hh++) {
				double eps = hh == 0 ? 1e-5 : 5e-6, lp, lm;

				memcpy(tmp->p1, base->p1, sizeof base->p1);
				memcpy(tmp->p2, base->p2, sizeof base->p2);
				P[c] = orig + eps;
				lp = ref_loss(tmp, P, y, stage);
				P[c] = orig - eps;
				lm = ref_loss(tmp, P, y, stage);
				P[c] = orig;
				fd[hh] = (lp - lm) / (2.0 * eps);
			}
			if (fabs(fd[0] - fd[1]) > 1e-5 + 1e-3 * fabs(fd[0])) {
				skipped++;
				continue;
			}
			checked++;
			nonzero += g[c] != 0.0f;
			err = fabs(fd[0] - g[c]);
			worst = err > worst ? err : worst;
			if (err > 1e-5 + 1e-3 * fabs(fd[0]))
				fail_msg("cnn %s[%zu]: analytic %g, numeric %g", v[t].name,
				         c - v[t].offset, (double)g[c], fd[0]);
		}
	}
	print_message("cnn: %zu coordinates checked (%zu nonzero), %zu skipped at kinks, worst "
	              "|fd - g| %.3g\n",
	              checked, nonzero, skipped, worst);
	assert_true(checked + skipped == nt * PER_TENSOR);
	assert_true(skipped * 10 <= nt * PER_TENSOR);
	assert_true(nonzero * 4 >= checked * 3);
	free(P);
	free(p);
	free(g);
	free(base);
	free(tmp);
	ml_model_free(m);
	ml_dataset_fini(&ds);
}

static void
test_cnn_chunked_batch(void **state)
{
	/* A batch longer than the CNN's compute chunk (50) is run in chunks
	 * with the backward recomputing earlier chunks: its gradient equals the
	 * mean of the gradients of its 10-example pieces, the fused SGD step
	 * equals p - lr * g, and evaluation does not depend on max_batch. */
	enum { N = 60, PIECE = 10 };
	ml_dataset test = load("t10k");
	ml_dataset sub = {500, test.images, test.labels};
	ml_sgd_config cfg = {.epochs = 1, .batch = N, .lr = 0.1f, .seed = 3};
	uint32_t *idx = range(N);
	float *x = malloc(N * ML_IMAGE_PIXELS * sizeof *x), *p, *q, *g, *gp, *mean;
	uint8_t y[N];
	ml_model *big, *small;
	double acc_a, loss_a, acc_b, loss_b, sgd_loss, want_loss = 0.0;
	size_t dim;
	float loss;

	assert_non_null(x);
	assert_int_equal(ml_model_new("cnn", N, &big), SHOAL_OK);
	assert_int_equal(ml_model_new("cnn", PIECE, &small), SHOAL_OK);
	dim = ml_model_dim(big);
	p = new_params(big, 12);
	q = new_params(big, 12);
	g = malloc(dim * sizeof *g);
	gp = malloc(dim * sizeof *gp);
	mean = calloc(dim, sizeof *mean);
	assert_non_null(g);
	assert_non_null(gp);
	assert_non_null(mean);
	ml_gather(&test, idx, N, x, y);
	loss = ml_model_loss_grad(big, p, x, y, N, g);
	for (size_t s = 0; s < N; s += PIECE) {
		want_loss += ml_model_loss_grad(small, p, x + s * ML_IMAGE_PIXELS, y + s, PIECE, gp) /
		             (double)(N / PIECE);
		for (size_t i = 0; i < dim; i++)
			mean[i] += gp[i] / (float)(N / PIECE);
	}
	assert_float_equal(loss, want_loss, 1e-5 * want_loss);
	for (size_t i = 0; i < dim; i++)
		if (fabsf(g[i] - mean[i]) > 1e-6f + 1e-3f * fabsf(mean[i]))
			fail_msg("coordinate %zu: chunked %g, pieces %g", i, (double)g[i],
			         (double)mean[i]);
	assert_int_equal(ml_train_sgd(big, q, &test, idx, N, &cfg, &sgd_loss), SHOAL_OK);
	assert_float_equal(sgd_loss, loss, 1e-5 * loss);
	for (size_t i = 0; i < dim; i++) {
		float want = p[i] - cfg.lr * g[i];

		if (fabsf(q[i] - want) > 1e-6f + 1e-3f * fabsf(cfg.lr * g[i]))
			fail_msg("coordinate %zu: %g, want %g", i, (double)q[i], (double)want);
	}
	assert_int_equal(ml_evaluate(big, p, &sub, &acc_a, &loss_a), SHOAL_OK);
	assert_int_equal(ml_evaluate(small, p, &sub, &acc_b, &loss_b), SHOAL_OK);
	assert_float_equal(acc_a, acc_b, 1e-9);
	assert_float_equal(loss_a, loss_b, 1e-5 * loss_a);
	free(x);
	free(p);
	free(q);
	free(g);
	free(gp);
	free(mean);
	free(idx);
	ml_model_free(big);
	ml_model_free(small);
	ml_dataset_fini(&test);
}

static void
test_cnn_training_reduces_loss(void **state)
{
	/* 300 SGD steps (B = 10, lr 0.05) on the first 3000 training images:
	 * from chance to > 80% on the first 1000 test images. */
	ml_dataset train = load("train"), test = load("t10k");
	ml_dataset sub = {1000, test.images, test.labels};
	ml_sgd_config cfg = {.epochs = 1, .batch = 10, .lr = 0.05f, .seed = 1};
	uint32_t *idx = range(3000);
	double acc0, loss0, acc1, loss1, mean;
	ml_model *m;
	float *p;

	assert_int_equal(ml_model_new("cnn", 1000, &m), SHOAL_OK);
	p = new_params(m, 2);
	assert_int_equal(ml_evaluate(m, p, &sub, &acc0, &loss0), SHOAL_OK);
	assert_int_equal(ml_train_sgd(m, p, &train, idx, 3000, &cfg, &mean), SHOAL_OK);
	assert_int_equal(ml_evaluate(m, p, &sub, &acc1, &loss1), SHOAL_OK);
	print_message("cnn, 300 steps: test subset accuracy %.4f -> %.4f, loss %.4f -> %.4f\n",
	              acc0, acc1, loss0, loss1);
	assert_true(loss0 > 2.0);
	assert_true(loss1 < 0.5 * loss0);
	assert_true(acc1 > 0.8);
	assert_true(mean < loss0);
	free(p);
	free(idx);
	ml_model_free(m);
	ml_dataset_fini(&train);
	ml_dataset_fini(&test);
}

/* The general SGD path (gradient buffer) with a negligible proximal term
 * agrees with the fused plain path: FedProx at mu = 0 is FedAvg's SGD. The
 * paths differ only in float rounding of the update (fused: sgemm beta=1
 * into params), so the tolerance is a few ulps of the ~1e-1 weights times
 * the step count. */
static void
test_sgd_general_path_matches_plain(void **state)
{
	ml_dataset train = load("train");
	ml_model *m;
	assert_int_equal(ml_model_new("2nn", 10, &m), SHOAL_OK);
	size_t dim = ml_model_dim(m);
	float *a = new_params(m, 3), *b = new_params(m, 3);
	uint32_t idx[200];
	for (uint32_t i = 0; i < 200; i++)
		idx[i] = i * 7;
	ml_sgd_config c = {.epochs = 1, .batch = 10, .lr = 0.05f, .seed = 9};
	assert_int_equal(ml_train_sgd(m, a, &train, idx, 200, &c, NULL), SHOAL_OK);
	c.prox_mu = 1e-30f; /* forces the general path, changes no gradient */
	assert_int_equal(ml_train_sgd(m, b, &train, idx, 200, &c, NULL), SHOAL_OK);
	double maxd = 0;
	for (size_t j = 0; j < dim; j++)
		maxd = fmax(maxd, fabs((double)a[j] - b[j]));
	assert_true(maxd < 1e-5);
	c.prox_mu = 0; /* and mu = 0 exactly is the plain path, bit for bit */
	float *d = new_params(m, 3);
	assert_int_equal(ml_train_sgd(m, d, &train, idx, 200, &c, NULL), SHOAL_OK);
	assert_memory_equal(a, d, dim * sizeof *a);
	free(a);
	free(b);
	free(d);
	ml_model_free(m);
	ml_dataset_fini(&train);
}

static double
dist2(const float *a, const float *b, size_t n)
{
	double s = 0;
	for (size_t j = 0; j < n; j++)
		s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
	return s;
}

/* FedProx keeps the local model closer to where it started. */
static void
test_fedprox_pulls_toward_start(void **state)
{
	ml_dataset train = load("train");
	ml_model *m;
	assert_int_equal(ml_model_new("logreg", 10, &m), SHOAL_OK);
	size_t dim = ml_model_dim(m);
	float *p0 = new_params(m, 5), *a = new_params(m, 5), *b = new_params(m, 5);
	uint32_t idx[600];
	for (uint32_t i = 0; i < 600; i++)
		idx[i] = i;
	ml_sgd_config c = {.epochs = 2, .batch = 10, .lr = 0.1f, .seed = 1};
	assert_int_equal(ml_train_sgd(m, a, &train, idx, 600, &c, NULL), SHOAL_OK);
	c.prox_mu = 1.0f;
	assert_int_equal(ml_train_sgd(m, b, &train, idx, 600, &c, NULL), SHOAL_OK);
	assert_true(dist2(b, p0, dim) < 0.8 * dist2(a, p0, dim));
	free(p0);
	free(a);
	free(b);
	ml_model_free(m);
	ml_dataset_fini(&train);
}

/* Momentum, weight decay and the proximal term against a step-by-step
 * computation from ml_model_loss_grad in the same batch order. */
static void
test_momentum_wd_prox_match_manual(void **state)
{
	ml_dataset train = load("train");
	ml_model *m;
	assert_int_equal(ml_model_new("logreg", 10, &m), SHOAL_OK);
	size_t dim = ml_model_dim(m);
	float *p = new_params(m, 8), *q = new_params(m, 8), *p0 = new_params(m, 8);
	float *g = malloc(dim * sizeof *g), *v = calloc(dim, sizeof *v);
	float x[10 * ML_IMAGE_PIXELS];
	uint8_t y[10];
	uint32_t idx[30], perm[30];
	for (uint32_t i = 0; i < 30; i++)
		idx[i] = 100 + 3 * i;
	ml_sgd_config c = {.epochs = 1, .batch = 10, .lr = 0.1f, .seed = 4, .momentum = 0.5f,
	                   .weight_decay = 0.01f, .prox_mu = 0.2f};
	assert_int_equal(ml_train_sgd(m, p, &train, idx, 30, &c, NULL), SHOAL_OK);

	ml_rng r;
	ml_rng_seed(&r, ml_seed_mix(c.seed, 0));
	memcpy(perm, idx, sizeof perm);
	ml_rng_shuffle(&r, perm, 30);
	for (int b = 0; b < 3; b++) {
		ml_gather(&train, perm + 10 * b, 10, x, y);
		ml_model_loss_grad(m, q, x, y, 10, g);
		for (size_t j = 0; j < dim; j++) {
			float gj = g[j] + c.weight_decay * q[j] + c.prox_mu * (q[j] - p0[j]);
			v[j] = c.momentum * v[j] + gj;
			q[j] -= c.lr * v[j];
		}
	}
	double maxd = 0;
	for (size_t j = 0; j < dim; j++)
		maxd = fmax(maxd, fabs((double)p[j] - q[j]));
	assert_true(maxd < 1e-6);
	assert_true(dist2(p, p0, dim) > 0); /* it did move */
	c.momentum = 1.0f;
	assert_int_equal(ml_train_sgd(m, p, &train, idx, 30, &c, NULL), SHOAL_EINVAL);
	free(p);
	free(q);
	free(p0);
	free(g);
	free(v);
	ml_model_free(m);
	ml_dataset_fini(&train);
}


static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_dims),
	cmocka_unit_test(test_init),
	cmocka_unit_test(test_gradcheck_logreg),
	cmocka_unit_test(test_gradcheck_2nn),
	cmocka_unit_test(test_grad_is_mean),
	cmocka_unit_test(test_loss_stable_for_large_logits),
	cmocka_unit_test(test_training_reduces_loss),
	cmocka_unit_test(test_logreg_accuracy),
	cmocka_unit_test(test_sgd_deterministic),
	cmocka_unit_test(test_sgd_general_path_matches_plain),
	cmocka_unit_test(test_fedprox_pulls_toward_start),
	cmocka_unit_test(test_momentum_wd_prox_match_manual),
	cmocka_unit_test(test_sgd_step_matches_gradient),
	cmocka_unit_test(test_evaluate_chunking),
	cmocka_unit_test(test_bad_args),
	cmocka_unit_test(test_cnn_dims),
	cmocka_unit_test(test_cnn_init),
	cmocka_unit_test(test_gradcheck_cnn),
	cmocka_unit_test(test_cnn_chunked_batch),
	cmocka_unit_test(test_cnn_training_reduces_loss),
};

SHOAL_TEST_MAIN(tests)
