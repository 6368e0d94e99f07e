/* cnn.c - "cnn", the MNIST CNN of McMahan et al. 2017, on one flat
 * parameter buffer: conv 5x5x32 (pad 2) + ReLU + maxpool 2x2 -> conv 5x5x64
 * (pad 2) + ReLU + maxpool 2x2 -> fc 3136x512 + ReLU -> fc 512x10 ->
 * softmax, 1,663,370 parameters. Convolutions are im2col + one ml_sgemm
 * per layer per pass over the whole (chunk of the) minibatch.
 *
 * Activations are NHWC: one row per (image, y, x), channels contiguous. So
 * im2col rows are output pixels, a convolution is col (pixels x K) times
 * W (K x C_out), and weights are "in x out" like the dense layers:
 *   conv1.w  25 x 32      row ky*5 + kx
 *   conv1.b  32
 *   conv2.w  800 x 64     row (ky*5 + kx)*32 + c_in
 *   conv2.b  64
 *   fc1.w    3136 x 512   row (y*7 + x)*64 + c  (pool2 output, HWC order)
 *   fc1.b    512
 *   fc2.w    512 x 10
 *   fc2.b    10
 * 800+32 + 51200+64 + 1605632+512 + 5120+10 = 1,663,370.
 *
 * Scratch holds one compute chunk of min(max_batch, CNN_CHUNK) examples
 * (~0.94 MB each), so an evaluation model (max_batch 1000) stays small. A
 * batch longer than a chunk is run chunk by chunk; its backward recomputes
 * the forward of all but the last chunk, accumulating into a gradient
 * buffer when the step is fused (gw == params), so every chunk sees the
 * same parameters. */
#include "ml/model_impl.h"

#include "ml/gemm.h"
#include <math.h>
#include <string.h>

/* Covers B = 10 and B = 50 of McMahan et al. without recomputation. */
#define CNN_CHUNK 50

#define IMG 28              /* input side */
#define P1 14               /* side after pool1 */
#define P2 7                /* side after pool2 */
#define C1 32               /* conv1 channels */
#define C2 64               /* conv2 channels */
#define KS 5                /* kernel side */
#define K1 (KS * KS)        /* conv1 im2col width: 25 */
#define K2 (KS * KS * C1)   /* conv2 im2col width: 800 */
#define F1_IN (P2 * P2 * C2) /* 3136 */
#define F1_OUT 512

/* Parameter offsets, in buffer order. */
#define O_C1W 0
#define O_C1B (O_C1W + K1 * C1)
#define O_C2W (O_C1B + C1)
#define O_C2B (O_C2W + K2 * C2)
#define O_F1W (O_C2B + C2)
#define O_F1B (O_F1W + F1_IN * F1_OUT)
#define O_F2W (O_F1B + F1_OUT)
#define O_F2B (O_F2W + F1_OUT * ML_CLASSES)
#define CNN_DIM (O_F2B + ML_CLASSES)

_Static_assert(CNN_DIM == 1663370, "McMahan et al. CNN has 1,663,370 parameters");

/* Floats per example of chunk scratch, by buffer (see cnn_bufs). */
#define PER_COL1 (IMG * IMG * K1)
#define PER_A1 (IMG * IMG * C1)
#define PER_P1 (P1 * P1 * C1)
#define PER_COL2 (P1 * P1 * K2)
#define PER_A2 (P1 * P1 * C2)
#define PER_P2 F1_IN
/* argmax bytes of both pools, in floats */
#define PER_IDX ((PER_P1 + PER_P2 + sizeof(float) - 1) / sizeof(float))
#define PER_EXAMPLE \
	(PER_COL1 + PER_A1 + 2 * PER_P1 + PER_COL2 + PER_A2 + 2 * PER_P2 + 2 * F1_OUT + PER_IDX)

typedef struct cnn_bufs {
	size_t chunk;  /* examples per compute chunk */
	float *col1;   /* chunk*784 x 25    im2col of the input */
	float *a1;     /* chunk*784 x 32    conv1 before bias; backward: dA1 */
	float *p1;     /* chunk*196 x 32    relu(pool(a1) + b1) */
	float *col2;   /* chunk*196 x 800   im2col of p1; backward: dcol2 */
	float *a2;     /* chunk*196 x 64    conv2 before bias; backward: dA2 */
	float *p2;     /* chunk x 3136      relu(pool(a2) + b2) */
	float *h;      /* chunk x 512       relu(fc1) */
	float *dh;     /* chunk x 512 */
	float *dp2;    /* chunk x 3136 */
	float *dp1;    /* chunk*196 x 32 */
	uint8_t *i1;   /* chunk*196*32      argmax (0..3) of each pool1 window */
	uint8_t *i2;   /* chunk*3136        argmax of each pool2 window */
	float *w2;     /* 800 x 64          conv2.w copy for a fused step */
	float *gacc;   /* CNN_DIM, only when max_batch > chunk */
} cnn_bufs;

static size_t
cnn_chunk(size_t max_batch)
{
	return max_batch < CNN_CHUNK ? max_batch : CNN_CHUNK;
}

static size_t
cnn_work_floats(const ml_model_ops *ops, size_t max_batch)
{
	size_t chunk = cnn_chunk(max_batch);

	return chunk * PER_EXAMPLE + (size_t)K2 * C2 + (max_batch > chunk ? CNN_DIM : 0);
}

static void
cnn_bufs_of(const ml_model *m, cnn_bufs *b)
{
	size_t c = cnn_chunk(m->max_batch);
	float *w = m->work;

	b->chunk = c;
	b->col1 = w, w += c * PER_COL1;
	b->a1 = w, w += c * PER_A1;
	b->p1 = w, w += c * PER_P1;
	b->col2 = w, w += c * PER_COL2;
	b->a2 = w, w += c * PER_A2;
	b->p2 = w, w += c * PER_P2;
	b->h = w, w += c * F1_OUT;
	b->dh = w, w += c * F1_OUT;
	b->dp2 = w, w += c * PER_P2;
	b->dp1 = w, w += c * PER_P1;
	b->i1 = (uint8_t *)w;
	b->i2 = b->i1 + c * PER_P1;
	w += c * PER_IDX;
	b->w2 = w, w += (size_t)K2 * C2;
	b->gacc = m->max_batch > c ? w : NULL;
}

static size_t
cnn_tensors(const ml_model_ops *ops, ml_tensor_view *out, size_t max)
{
	static const ml_tensor_view v[] = {
		{"conv1.w", O_C1W, K1 * C1},          {"conv1.b", O_C1B, C1},
		{"conv2.w", O_C2W, K2 * C2},          {"conv2.b", O_C2B, C2},
		{"fc1.w", O_F1W, F1_IN * F1_OUT},     {"fc1.b", O_F1B, F1_OUT},
		{"fc2.w", O_F2W, F1_OUT * ML_CLASSES}, {"fc2.b", O_F2B, ML_CLASSES},
	};
	size_t n = sizeof v / sizeof v[0];

	for (size_t k = 0; k < n && k < max; k++)
		out[k] = v[k];
	return n;
}

static void
uniform(float *p, size_t n, double lim, ml_rng *r)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (float)((2.0 * ml_rng_uniform(r) - 1.0) * lim);
}

static void
cnn_init(const ml_model_ops *ops, float *p, ml_rng *r)
{
	/* He-uniform sqrt(6 / fan_in) before a ReLU (fan_in = 25, 800, 3136),
	 * Glorot-uniform before the softmax, as the MLPs; zero biases. */
	memset(p, 0, CNN_DIM * sizeof *p);
	uniform(p + O_C1W, K1 * C1, sqrt(6.0 / K1), r);
	uniform(p + O_C2W, K2 * C2, sqrt(6.0 / K2), r);
	uniform(p + O_F1W, (size_t)F1_IN * F1_OUT, sqrt(6.0 / F1_IN), r);
	uniform(p + O_F2W, F1_OUT * ML_CLASSES, sqrt(6.0 / (F1_OUT + ML_CLASSES)), r);
}

/* ---- layers (n examples of one chunk) --------------------------------- */

/* col (n*784 x 25) from x (n x 28 x 28), zero padding 2. */
static void
im2col1(const float *x, size_t n, float *col)
{
	for (size_t i = 0; i < n; i++) {
		const float *img = x + i * IMG * IMG;

		for (int oy = 0; oy < IMG; oy++)
			for (int ox = 0; ox < IMG; ox++, col += K1)
				for (int ky = 0; ky < KS; ky++) {
					int iy = oy + ky - 2;

					for (int kx = 0; kx < KS; kx++) {
						int ix = ox + kx - 2;

						col[ky * KS + kx] =
						    iy >= 0 && iy < IMG && ix >= 0 && ix < IMG
						        ? img[iy * IMG + ix]
						        : 0.0f;
					}
				}
	}
}

/* col (n*196 x 800) from p (n x 14 x 14 x 32), zero padding 2: per kernel
 * row, the in-range taps are one contiguous run of the input row. */
static void
im2col2(const float *p, size_t n, float *col)
{
	for (size_t i = 0; i < n; i++) {
		const float *img = p + i * P1 * P1 * C1;

		for (int oy = 0; oy < P1; oy++)
			for (int ox = 0; ox < P1; ox++, col += K2) {
				int x0 = ox - 2 < 0 ? 0 : ox - 2, x1 = ox + 3 > P1 ? P1 : ox + 3;
				size_t lead = (size_t)(x0 - (ox - 2)) * C1, run = (size_t)(x1 - x0) * C1;
				size_t tail = KS * C1 - lead - run;

				for (int ky = 0; ky < KS; ky++) {
					int iy = oy + ky - 2;
					float *d = col + ky * KS * C1;

					if (iy < 0 || iy >= P1) {
						memset(d, 0, KS * C1 * sizeof *d);
						continue;
					}
					memset(d, 0, lead * sizeof *d);
					memcpy(d + lead, img + ((size_t)iy * P1 + (size_t)x0) * C1,
					       run * sizeof *d);
					memset(d + lead + run, 0, tail * sizeof *d);
				}
			}
	}
}

/* dp (n x 14 x 14 x 32) = col2im(dcol): every tap adds into its input. */
static void
col2im2(const float *dcol, size_t n, float *dp)
{
	memset(dp, 0, n * PER_P1 * sizeof *dp);
	for (size_t i = 0; i < n; i++) {
		float *img = dp + i * P1 * P1 * C1;

		for (int oy = 0; oy < P1; oy++)
			for (int ox = 0; ox < P1; ox++, dcol += K2) {
				int x0 = ox - 2 < 0 ? 0 : ox - 2, x1 = ox + 3 > P1 ? P1 : ox + 3;
				size_t lead = (size_t)(x0 - (ox - 2)) * C1, run = (size_t)(x1 - x0) * C1;

				for (int ky = 0; ky < KS; ky++) {
					int iy = oy + ky - 2;
					const float *s = dcol + ky * KS * C1 + lead;
					float *d = img + ((size_t)iy * P1 + (size_t)x0) * C1;

					if (iy < 0 || iy >= P1)
						continue;
					for (size_t k = 0; k < run; k++)
						d[k] += s[k];
				}
			}
	}
}

/* out (n x S/2 x S/2 x C) = relu(maxpool2x2(a) + b) for a (n x S x S x C),
 * with the argmax (dy*2 + dx) of each window. max(v) + b = max(v + b) and
 * relu commutes with max, so the bias and the ReLU are applied once per
 * window. */
static void
pool_fwd(const float *a, size_t n, int side, int ch, const float *b, float *out, uint8_t *arg)
{
	size_t row = (size_t)side * (size_t)ch;

	for (size_t i = 0; i < n; i++)
		for (int py = 0; py < side / 2; py++)
			for (int px = 0; px < side / 2; px++) {
				const float *v0 = a + ((i * (size_t)side + 2 * (size_t)py) * (size_t)side +
				                       2 * (size_t)px) * (size_t)ch;
				const float *v1 = v0 + ch, *v2 = v0 + row, *v3 = v2 + ch;

				for (int c = 0; c < ch; c++) {
					float mx = v0[c], o;
					uint8_t k = 0;

					if (v1[c] > mx)
						mx = v1[c], k = 1;
					if (v2[c] > mx)
						mx = v2[c], k = 2;
					if (v3[c] > mx)
						mx = v3[c], k = 3;
					o = mx + b[c];
					out[c] = o > 0.0f ? o : 0.0f;
					arg[c] = k;
				}
				out += ch;
				arg += ch;
			}
}

/* da (n x S x S x C) from dout through pool_fwd: each window's gradient goes
 * to its argmax if the ReLU was active (out > 0), zeros elsewhere (windows
 * tile da, so every element is written). gb[c] += alpha * sum of the
 * gradients that pass. */
static void
pool_bwd(const float *dout, const float *out, const uint8_t *arg, size_t n, int side, int ch,
         float *da, float *gb, float alpha)
{
	size_t row = (size_t)side * (size_t)ch;
	float bsum[C2] = {0};

	for (size_t i = 0; i < n; i++)
		for (int py = 0; py < side / 2; py++)
			for (int px = 0; px < side / 2; px++) {
				float *v0 = da + ((i * (size_t)side + 2 * (size_t)py) * (size_t)side +
				                  2 * (size_t)px) * (size_t)ch;
				float *v1 = v0 + ch, *v2 = v0 + row, *v3 = v2 + ch;

				for (int c = 0; c < ch; c++) {
					float g = out[c] > 0.0f ? dout[c] : 0.0f;
					uint8_t k = arg[c];

					v0[c] = k == 0 ? g : 0.0f;
					v1[c] = k == 1 ? g : 0.0f;
					v2[c] = k == 2 ? g : 0.0f;
					v3[c] = k == 3 ? g : 0.0f;
					bsum[c] += g;
				}
				dout += ch;
				out += ch;
				arg += ch;
			}
	for (int c = 0; c < ch; c++)
		gb[c] += alpha * bsum[c];
}

/* out (n x fo) = in (n x fi) . w (fi x fo) + b, then ReLU if relu. */
static void
dense_fwd(const float *in, size_t n, int fi, int fo, const float *w, const float *b, float *out,
          int relu)
{
	for (size_t i = 0; i < n; i++)
		memcpy(out + i * (size_t)fo, b, (size_t)fo * sizeof *out);
	ml_sgemm(false, false, (int)n, fo, fi, 1.0f, in, fi, w, fo, 1.0f, out, fo);
	if (relu)
		for (size_t i = 0; i < n * (size_t)fo; i++)
			out[i] = out[i] > 0.0f ? out[i] : 0.0f;
}

/* gw (fi x fo) += alpha * in^T . d, gb += alpha * column sums of d. */
static void
dense_grad(const float *in, const float *d, size_t n, int fi, int fo, float *gw, float *gb,
           float alpha)
{
	ml_sgemm(true, false, fi, fo, (int)n, alpha, in, fi, d, fo, 1.0f, gw, fo);
	for (size_t i = 0; i < n; i++)
		for (int j = 0; j < fo; j++)
			gb[j] += alpha * d[i * (size_t)fo + (size_t)j];
}

/* x (n x 784, n <= chunk) -> logits (n x 10), activations into b. */
static void
forward_chunk(const cnn_bufs *b, const float *p, const float *x, size_t n, float *logits)
{
	im2col1(x, n, b->col1);
	/* a1 (n*784 x 32) = col1 (n*784 x 25) . conv1.w (25 x 32) */
	ml_sgemm(false, false, (int)(n * IMG * IMG), C1, K1, 1.0f, b->col1, K1, p + O_C1W, C1, 0.0f,
	         b->a1, C1);
	pool_fwd(b->a1, n, IMG, C1, p + O_C1B, b->p1, b->i1);
	im2col2(b->p1, n, b->col2);
	/* a2 (n*196 x 64) = col2 (n*196 x 800) . conv2.w (800 x 64) */
	ml_sgemm(false, false, (int)(n * P1 * P1), C2, K2, 1.0f, b->col2, K2, p + O_C2W, C2, 0.0f,
	         b->a2, C2);
	pool_fwd(b->a2, n, P1, C2, p + O_C2B, b->p2, b->i2);
	dense_fwd(b->p2, n, F1_IN, F1_OUT, p + O_F1W, p + O_F1B, b->h, 1);
	dense_fwd(b->h, n, F1_OUT, ML_CLASSES, p + O_F2W, p + O_F2B, logits, 0);
}

/* gw += alpha * gradient, from dlogits (n x 10) and the activations of the
 * last forward_chunk. Each layer reads its weights before updating them;
 * conv2.w is copied first when gw aliases p, because its input gradient
 * (into col2's space) can only be formed after col2 has served dW. */
static void
backward_chunk(const cnn_bufs *b, const float *p, const float *dlogits, size_t n, float *gw,
               float alpha)
{
	const float *w2 = p + O_C2W;
	int i;

	/* fc2: dh = dlogits . fc2.w^T through the ReLU, then its gradient. */
	ml_sgemm(false, true, (int)n, F1_OUT, ML_CLASSES, 1.0f, dlogits, ML_CLASSES, p + O_F2W,
	         ML_CLASSES, 0.0f, b->dh, F1_OUT);
	for (i = 0; i < (int)n * F1_OUT; i++)
		b->dh[i] = b->h[i] > 0.0f ? b->dh[i] : 0.0f;
	dense_grad(b->h, dlogits, n, F1_OUT, ML_CLASSES, gw + O_F2W, gw + O_F2B, alpha);
	/* fc1: dp2 = dh . fc1.w^T, then its gradient. */
	ml_sgemm(false, true, (int)n, F1_IN, F1_OUT, 1.0f, b->dh, F1_OUT, p + O_F1W, F1_OUT, 0.0f,
	         b->dp2, F1_IN);
	dense_grad(b->p2, b->dh, n, F1_IN, F1_OUT, gw + O_F1W, gw + O_F1B, alpha);
	/* pool2 + ReLU: dA2 into a2's space. */
	pool_bwd(b->dp2, b->p2, b->i2, n, P1, C2, b->a2, gw + O_C2B, alpha);
	/* conv2: gW2 (800 x 64) += alpha * col2^T . dA2, then
	 * dcol2 (n*196 x 800) = dA2 . W2^T into col2's space, then col2im. */
	if (gw == p) {
		memcpy(b->w2, w2, (size_t)K2 * C2 * sizeof *b->w2);
		w2 = b->w2;
	}
	ml_sgemm(true, false, K2, C2, (int)(n * P1 * P1), alpha, b->col2, K2, b->a2, C2, 1.0f,
	         gw + O_C2W, C2);
	ml_sgemm(false, true, (int)(n * P1 * P1), K2, C2, 1.0f, b->a2, C2, w2, C2, 0.0f, b->col2,
	         K2);
	col2im2(b->col2, n, b->dp1);
	/* pool1 + ReLU: dA1 into a1's space. */
	pool_bwd(b->dp1, b->p1, b->i1, n, IMG, C1, b->a1, gw + O_C1B, alpha);
	/* conv1: gW1 (25 x 32) += alpha * col1^T . dA1; the input needs no
	 * gradient, so no dcol1 and no col2im. */
	ml_sgemm(true, false, K1, C1, (int)(n * IMG * IMG), alpha, b->col1, K1, b->a1, C1, 1.0f,
	         gw + O_C1W, C1);
}

static void
cnn_forward(ml_model *m, const float *p, const float *x, size_t n)
{
	cnn_bufs b;

	cnn_bufs_of(m, &b);
	for (size_t s = 0; s < n; s += b.chunk) {
		size_t nb = n - s < b.chunk ? n - s : b.chunk;

		forward_chunk(&b, p, x + s * ML_IMAGE_PIXELS, nb, m->logits + s * ML_CLASSES);
	}
}

static void
cnn_backward(ml_model *m, const float *p, const float *x, size_t n, float *gw, float alpha)
{
	cnn_bufs b;
	size_t last;
	float *g;

	cnn_bufs_of(m, &b);
	if (n <= b.chunk) {
		backward_chunk(&b, p, m->dlogits, n, gw, alpha);
		return;
	}
	/* Several chunks: the last one's activations are still in place; the
	 * others are recomputed with unchanged parameters, so a fused step
	 * accumulates into gacc and applies it at the end. */
	g = gw == p ? b.gacc : gw;
	if (g == b.gacc)
		memset(g, 0, CNN_DIM * sizeof *g);
	last = (n - 1) / b.chunk;
	for (size_t k = last + 1; k-- > 0;) {
		size_t s = k * b.chunk, nb = n - s < b.chunk ? n - s : b.chunk;

		if (k != last)
			forward_chunk(&b, p, x + s * ML_IMAGE_PIXELS, nb, m->logits + s * ML_CLASSES);
		backward_chunk(&b, p, m->dlogits + s * ML_CLASSES, nb, g, alpha);
	}
	if (g == b.gacc)
		for (size_t k = 0; k < CNN_DIM; k++)
			gw[k] += g[k];
}

const ml_model_ops ml_cnn_ops = {
	"cnn", CNN_DIM, NULL, cnn_work_floats, cnn_tensors, cnn_init, cnn_forward, cnn_backward,
};
