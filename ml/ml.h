/* ml.h - datasets (IDX/MNIST), partitioners and flat-parameter models.
 *
 * All of a model's parameters live in ONE float buffer of ml_model_dim()
 * elements with named views inside it (as in llm.c), so clipping, codecs and
 * masks work on (float *, size_t). An ml_model object holds only scratch
 * space (activations, gradients) for batches up to max_batch; it never owns
 * the parameters, and one object is used by one thread at a time.
 * Randomness comes from explicit uint64 seeds (no hidden globals). */
#ifndef SHOAL_ML_H
#define SHOAL_ML_H

#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

/* ---- IDX files ------------------------------------------------------- */

#define ML_IDX_MAX_DIMS 4

/* A parsed IDX file of unsigned bytes (type code 0x08). data points into the
 * parsed buffer (ml_idx_parse) or into memory owned by the struct
 * (ml_idx_read; release with ml_idx_fini). */
typedef struct ml_idx {
	uint32_t ndims;
	uint32_t dims[ML_IDX_MAX_DIMS];
	size_t count;          /* product of dims */
	const uint8_t *data;
	uint8_t *owned;        /* non-NULL when data must be freed */
} ml_idx;

/* Errors: SHOAL_EFORMAT (magic is not 0x0000 08 NN with 1<=NN<=4),
 * SHOAL_ETRUNC (body shorter than the dims declare), SHOAL_EINVAL (trailing
 * bytes after the body, or a zero/overflowing dimension). */
shoal_err ml_idx_parse(const uint8_t *buf, size_t len, ml_idx *out);
/* As ml_idx_parse, plus SHOAL_EIO if the file cannot be read. */
shoal_err ml_idx_read(const char *path, ml_idx *out);
void ml_idx_fini(ml_idx *idx);

/* ---- Datasets -------------------------------------------------------- */

#define ML_IMAGE_PIXELS 784  /* 28 x 28 */
#define ML_CLASSES 10

/* Pixels are stored as bytes and turned into floats in [0,1] per batch. */
typedef struct ml_dataset {
	size_t n;          /* examples */
	uint8_t *images;   /* n * ML_IMAGE_PIXELS, row-major */
	uint8_t *labels;   /* n, each < ML_CLASSES */
} ml_dataset;

/* Load dir/{split}-images-idx3-ubyte and dir/{split}-labels-idx1-ubyte
 * (split is "train" or "t10k"). Errors from ml_idx_read, plus SHOAL_EFORMAT
 * when the images are not n x 28 x 28, counts differ, or a label is >= 10.
 * The message for a missing file says to run scripts/setup.sh. */
shoal_err ml_mnist_load(const char *dir, const char *split, ml_dataset *out);
void ml_dataset_fini(ml_dataset *ds);

/* The same files, without holding the whole training set (47 MB) in memory
 * (for edge clients):
 * - ml_mnist_load_labels reads the labels (n bytes) and checks that the
 *   image file's header and size match them; out->images is NULL. Enough
 *   for ml_partition_make.
 * - ml_mnist_load_rows reads only examples rows[0..n) (each < the file's
 *   count), in that order, with positioned reads: out->n == n.
 * Errors as ml_mnist_load, plus SHOAL_EINVAL for n == 0 or a row out of
 * range. */
shoal_err ml_mnist_load_labels(const char *dir, const char *split, ml_dataset *out);
shoal_err ml_mnist_load_rows(const char *dir, const char *split, const uint32_t *rows,
                             size_t n, ml_dataset *out);

/* Gather examples idx[0..n) as floats (n x 784, value = pixel/255) and
 * labels. */
void ml_gather(const ml_dataset *ds, const uint32_t *idx, size_t n, float *x, uint8_t *y);

/* ---- Partitions ------------------------------------------------------ */

/* Client c owns examples idx[start[c] .. start[c+1]). */
typedef struct ml_partition {
	size_t n_clients;
	uint32_t *start; /* n_clients + 1 */
	uint32_t *idx;   /* start[n_clients] entries, each < ds->n */
} ml_partition;

/* spec: "iid" (shuffle, equal sizes +-1), "shards" (McMahan et al. 2017:
 * sort by label, cut 2*n_clients equal shards, each client gets 2 at random;
 * 100 clients -> 200 shards of 300), or "dirichlet:ALPHA" (per class, split
 * its examples among clients by Dirichlet(ALPHA) proportions; every client
 * gets at least one example). Partitions are disjoint; iid and shards cover
 * every example (shards may drop n mod 2*n_clients). Deterministic in seed.
 * Errors: SHOAL_EINVAL (bad spec, n_clients == 0 or > ds->n), SHOAL_ENOMEM. */
shoal_err ml_partition_make(const char *spec, const ml_dataset *ds, size_t n_clients,
                            uint64_t seed, ml_partition *out);
/* SHOAL_OK if spec is well-formed (used to validate flags early). */
shoal_err ml_partition_check_spec(const char *spec);
void ml_partition_fini(ml_partition *p);

/* Populations larger than the dataset: each client draws its own seeded
 * subset of m examples (distinct within a client; clients overlap), as a
 * pure function of (spec, labels, m, seed, client), so nothing per client
 * is stored and a draw is the same in any thread or process. spec as for
 * ml_partition_make, applied per client: "iid" draws uniformly; "shards"
 * picks 2 distinct labels and draws m/2 (and m - m/2) examples of each;
 * "dirichlet:ALPHA" draws label proportions from Dirichlet(ALPHA) and then
 * that many examples of each label (capped at the label's count, the rest
 * going to the other labels). */
typedef struct ml_subsets {
	int kind;
	double alpha;
	uint32_t m;
	uint64_t seed;
	size_t n;
	uint32_t class_start[ML_CLASSES + 1];
	uint32_t *by_class;  /* the n example ids grouped by label */
} ml_subsets;

/* Errors: SHOAL_EINVAL (bad spec, m == 0 or > ds->n, shards and a label
 * with fewer than m examples), SHOAL_ENOMEM. */
shoal_err ml_subsets_init(ml_subsets *s, const char *spec, const ml_dataset *ds, uint32_t m,
                          uint64_t seed);
/* Writes client's m example ids to idx (m entries). Thread-safe; errors:
 * SHOAL_ENOMEM (a scratch bitmap of the dataset's size). */
shoal_err ml_subsets_draw(const ml_subsets *s, uint64_t client, uint32_t *idx);
void ml_subsets_fini(ml_subsets *s);

/* ---- Models ---------------------------------------------------------- */

typedef struct ml_model ml_model;

/* Parameter count of a built-in model, 0 if the name is unknown.
 * "logreg": 784x10 + 10 = 7850. "2nn": 784-200-200-10 ReLU = 199210. "cnn": McMahan et al. 2017,
 * conv5x5x32-pool-conv5x5x64-pool-fc512-fc10 = 1663370. */
size_t ml_model_dim_of(const char *name);
/* FLOPs of one training example (forward and backward) of a built-in
 * model, counted from its dense products: 2 per multiply-accumulate of
 * every conv and fc layer's forward, the same again for the weight
 * gradient, and again for the input gradient except the first layer's
 * (none is computed) - so ~3x forward. Biases, ReLU, pooling,
 * im2col/col2im and the softmax are O(activations) and not counted:
 *   logreg  784x10                                 -> 4 x 7,840 = 31,360
 *   2nn     784x200, 200x200, 200x10               -> 879,200
 *   cnn     conv1 28*28 px x 25 taps x 32 ch = 627,200 MACs,
 *           conv2 14*14 px x 800 x 64 = 10,035,200, fc1 3136x512 =
 *           1,605,632, fc2 512x10 = 5,120; forward 24,546,304 flops,
 *           backward 2 x forward - 2 x 627,200 -> 72,384,512 (72.4 MFLOP).
 * These are the model's flops: the MLPs' first layer skips the blank
 * border columns of each batch (exact zeros), and that saved work is
 * still counted, as model-flops utilisation does. shoal-bench train and
 * the simulator's virtual clock use it. 0 for an unknown model. */
double ml_model_train_flops(const char *name);
/* Comma-separated list of built-in model names, for --help. */
const char *ml_model_names(void);

/* Errors: SHOAL_EMODEL (unknown name), SHOAL_EINVAL (max_batch 0),
 * SHOAL_ENOMEM. */
shoal_err ml_model_new(const char *name, size_t max_batch, ml_model **out);
void ml_model_free(ml_model *m);
size_t ml_model_dim(const ml_model *m);
const char *ml_model_name(const ml_model *m);

/* A named view into the flat parameter buffer, e.g. "fc1.w" (in x out,
 * row-major) or "fc1.b". */
typedef struct ml_tensor_view {
	const char *name;
	size_t offset; /* in floats */
	size_t count;
} ml_tensor_view;
/* Fills up to max views (in buffer order) and returns how many m has. */
size_t ml_model_tensors(const ml_model *m, ml_tensor_view *out, size_t max);

/* Deterministic initialisation from seed (Glorot/He-uniform weights, zero
 * biases). */
void ml_model_init(const ml_model *m, float *params, uint64_t seed);

/* Mean softmax cross-entropy over the n (<= max_batch) examples x (n x 784)
 * with labels y; writes the gradient of that mean into grad (dim floats,
 * overwritten). Returns the loss. Dense layers use ml_sgemm (gemm.h). */
float ml_model_loss_grad(ml_model *m, const float *params, const float *x,
                         const uint8_t *y, size_t n, float *grad);

/* Logits for n (<= max_batch) examples into out (n x 10). */
void ml_model_forward(ml_model *m, const float *params, const float *x, size_t n, float *out);

/* Accuracy in [0,1] and mean cross-entropy over the whole dataset. */
shoal_err ml_evaluate(ml_model *m, const float *params, const ml_dataset *ds,
                      double *accuracy, double *loss);

typedef struct ml_sgd_config {
	uint32_t epochs;
	uint32_t batch;  /* <= the model's max_batch */
	float lr;
	uint64_t seed;   /* shuffling order of each epoch */
	float momentum;     /* heavy ball: v = m*v + g; p -= lr*v. [0, 1) */
	float weight_decay; /* g += wd * p */
	float prox_mu;      /* FedProx (Li et al. 2020): g += mu * (p - p_start),
	                       the gradient of (mu/2)|p - p_start|^2 where p_start
	                       is params on entry (the global model) */
	uint32_t max_steps; /* stop after this many minibatch steps (a local
	                       time budget, FedNova); 0: all E epochs */
} ml_sgd_config;

/* Minibatch steps of E epochs over n examples: E * ceil(n / B). */
uint32_t ml_sgd_steps(size_t n, uint32_t batch, uint32_t epochs);
/* Examples the first `steps` of them visit (short last batches included),
 * for the FLOPs of a truncated run. */
uint64_t ml_sgd_examples(size_t n, uint32_t batch, uint32_t steps);

/* Minibatch SGD over examples idx[0..n) of ds, updating params in place.
 * Each epoch visits a fresh seeded permutation; the last batch may be
 * short. *mean_loss (may be NULL) gets the mean of the batch losses (data
 * term only). With max_steps it stops after that many batches (epochs
 * and shuffles as without it, so the first steps are the same). With momentum, weight_decay and prox_mu all 0 this is plain
 * SGD with the step fused into backward; otherwise the gradient goes
 * through a buffer (three dim-sized allocations per call, none per batch).
 * Errors: SHOAL_EINVAL (n == 0, batch 0 or > max_batch, epochs 0, momentum
 * outside [0, 1), negative or non-finite coefficients), SHOAL_ENOMEM. */
shoal_err ml_train_sgd(ml_model *m, float *params, const ml_dataset *ds, const uint32_t *idx,
                       size_t n, const ml_sgd_config *cfg, double *mean_loss);

/* Threads BLAS may use per call (process-wide). At small batches (B=10)
 * one thread is fastest; parallelise across clients instead. */
void ml_set_blas_threads(int n);

/* ---- Deterministic PRNG (not cryptographic) ---------------------------- */

/* SplitMix64-seeded xoshiro256** stream, for shuffling and initialisation. */
typedef struct ml_rng { uint64_t s[4]; } ml_rng;
void ml_rng_seed(ml_rng *r, uint64_t seed);
uint64_t ml_rng_next(ml_rng *r);
uint32_t ml_rng_below(ml_rng *r, uint32_t bound); /* unbiased, bound > 0 */
double ml_rng_uniform(ml_rng *r);                 /* [0, 1) */
/* A seed for sub-stream `stream` of `seed` (e.g. per epoch, per client):
 * nearby (seed, stream) pairs give unrelated streams. */
uint64_t ml_seed_mix(uint64_t seed, uint64_t stream);
/* Fisher-Yates shuffle of a[0..n), n <= UINT32_MAX. */
void ml_rng_shuffle(ml_rng *r, uint32_t *a, size_t n);

#endif
