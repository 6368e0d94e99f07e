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
	cmocka_unit_test(test_sgd_step_matches_gradient),
	cmocka_unit_test(test_evaluate_chunking),
	cmocka_unit_test(test_bad_args),
};

SHOAL_TEST_MAIN(tests)
