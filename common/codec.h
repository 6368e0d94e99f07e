/* codec.h - compressed model updates: top-k / rand-k selection, block
 * quantization (q8, q4) with stochastic rounding, error feedback, index
 * coding (Golomb-Rice gaps, bitmap, dense) and the wire format of one
 * encoded update, with a validating decode+accumulate for the server.
 *
 * The byte layout is documented with a worked hex example at the top of
 * common/codec.c and in PROTOCOL.md section 12. In short (all integers
 * little-endian):
 *
 *   off len field
 *     0   1 version      CX_VERSION (1)
 *     1   1 value mode   0 f32, 1 q8, 2 q4            (cx_values)
 *     2   1 index mode   0 dense, 1 rice, 2 bitmap    (cx_index)
 *     3   1 rice b       Rice parameter 0..31 (rice), else 0
 *     4   2 block        values per scale 1..65535 (q8/q4), 0 (f32)
 *     6   4 dim          model dimension d
 *    10   4 k            kept coordinates, 0..d (dense: k == d)
 *    14   4 index bytes  length of the index section
 *    18     index section, then ceil(k/block) float32 scales (q8/q4),
 *           then the values: k int8 (q8), ceil(k/2) bytes of 4-bit
 *           nibbles, low nibble first (q4), or k float32 (f32).
 *
 * The value sent for kept entry j is v_j = (float)q_j * scale (one float32
 * multiplication, q8/q4) or the float itself (f32). Receivers add exactly
 * these float32 values (cx_decode, cx_decode_add) or weight * (double)v_j
 * (cx_accumulate); senders keep u - v_j as their residual.
 *
 * Nothing here allocates except cx_work_init, reads a clock or calls
 * rand(): randomness comes from a caller's cx_rand_fn. */
#ifndef SHOAL_CODEC_H
#define SHOAL_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

#define CX_VERSION 1u
#define CX_HEADER_BYTES 18u
#define CX_BLOCK_DEFAULT 64u   /* values per scale: 0.5 extra bits per q8 value */
#define CX_BLOCK_MAX 65535u    /* the block field is a u16 */
#define CX_RICE_MAX 31u        /* largest Rice parameter on the wire */
#define CX_Q8_MAX 127          /* q8 values are -127..127 (-128 is invalid) */
#define CX_Q4_MAX 7            /* q4 values are -7..7 (-8 is invalid) */

/* Value mode byte: how kept values travel. */
typedef enum { CX_VALUES_F32 = 0, CX_VALUES_Q8 = 1, CX_VALUES_Q4 = 2 } cx_values;

/* Index mode byte: how the kept coordinates travel. CX_INDEX_AUTO is never
 * on the wire: it asks the encoder for the smallest of the three (dense
 * when k == d, else Rice or bitmap, bitmap on a tie). */
typedef enum {
	CX_INDEX_DENSE = 0,  /* no index: all d coordinates, in order */
	CX_INDEX_RICE = 1,   /* Golomb-Rice coded gaps, parameter fitted per message */
	CX_INDEX_BITMAP = 2, /* ceil(d/8) bytes, bit i set = coordinate i kept */
	CX_INDEX_AUTO = 255,
} cx_index;

typedef enum {
	CX_SELECT_TOPK = 0,  /* the k largest |u|, ties to the lower index */
	CX_SELECT_RANDK = 1, /* unbiased magnitude-proportional sampling, E[count] = k */
} cx_select;

/* A source of uniform 64-bit words (the lead passes the seeded ChaCha20
 * rng; tests pass splitmix64). Stochastic rounding calls it exactly once
 * per quantized value, randk once per coordinate with 0 < p < 1, both in
 * index order, so an encoding is reproducible from the generator's seed. */
typedef uint64_t (*cx_rand_fn)(void *ctx);

/* How the client compresses an update. */
typedef struct cx_config {
	cx_select select;
	double ratio;    /* rho in (0, 1]; k = ceil(rho * d) */
	cx_values values;
	uint32_t block;  /* values per scale (q8/q4); 0 = CX_BLOCK_DEFAULT */
	cx_index index;  /* normally CX_INDEX_AUTO */
} cx_config;

/* Top-k, q8, block 64, automatic index mode, at the given ratio. */
cx_config cx_config_default(double ratio);

/* Parse an update-encoding spec, the syntax of --compress and of TASK "up":
 *   none | topk:RATIO[,q8|,q4|,f32] | randk:RATIO[,q8|,q4|,f32]
 * (values default to f32 when no suffix is given; RATIO in (0, 1]).
 * "none" sets *none and leaves *out at the default. Errors: SHOAL_EINVAL. */
shoal_err cx_parse_spec(const char *spec, cx_config *out, bool *none);
/* The HELLO "cx" capability bits (MSG_CX_* in common/msg.h) that decoding
 * an update of this configuration requires. */
uint32_t cx_required_caps(const cx_config *cfg);

/* ---- sizes --------------------------------------------------------------- */

/* k = ceil(ratio * dim), clamped to 1..dim; 0 if dim == 0 or ratio is not
 * in (0, 1]. */
uint32_t cx_k_for_ratio(uint32_t dim, double ratio);

/* log2 C(dim, k): the information bound, in bits, for any code of a k-subset
 * of dim coordinates (via lgamma). */
double cx_index_bound_bits(uint32_t dim, uint32_t k);

/* An upper bound on the encoded size of k entries of a dim vector under cfg
 * (any index mode, any selection), so callers can allocate once. 0 if cfg
 * is invalid. */
size_t cx_encoded_size_max(uint32_t dim, uint32_t k, const cx_config *cfg);

/* ---- selection ----------------------------------------------------------- */

/* The k coordinates of x with the largest |x_i|, written to idx[0..k) in
 * increasing index order. Ties: larger |x| first, then the lower index
 * (-0.0 and 0.0 tie). Expected O(dim): a three-level radix select on the
 * bits of |x| (11, 10, 10 bits), then one pass. No scratch.
 * Errors: SHOAL_EINVAL (k > dim, NULL), SHOAL_ENONFINITE (NaN/Inf in x). */
shoal_err cx_topk(const float *x, uint32_t dim, uint32_t k, uint32_t *idx);

/* Random sparsification: keeps coordinate i with probability
 * p_i = min(1, c * |x_i|), where c is chosen (capping the largest entries
 * at 1, as in Wangni et al. 2018) so that sum p_i = min(k, nnz(x)), and
 * stores x_i / p_i, so E[sent] = x. Writes the kept coordinates in index
 * order to idx[0..n) and val[0..n), *n_kept = n. idx and val need room for
 * dim entries (they are also the scratch); val may equal x (in-place).
 * One rnd call per coordinate with 0 < p_i < 1: keep iff
 * (rnd() >> 11) * 2^-53 < p_i. O(dim + k log k).
 * Errors: SHOAL_EINVAL, SHOAL_ENONFINITE. */
shoal_err cx_randk(const float *x, uint32_t dim, uint32_t k, cx_rand_fn rnd, void *ctx,
                   uint32_t *idx, float *val, uint32_t *n_kept);

/* ---- quantization (the reference definition) -------------------------------
 * Blocks of `block` consecutive values (the last may be shorter) share one
 * float32 scale s = max|x| / qmax (qmax 127 for q8, 7 for q4); an all-zero
 * block has s = 0 and all q = 0. Otherwise, with v = (double)x * (1.0 / s):
 *   rnd != NULL (stochastic): q = floor(v + u), u = (rnd() >> 11) * 2^-53,
 *                             so E[q * s] = x (unbiased);
 *   rnd == NULL (nearest):    q = floor(v + 0.5), deterministic;
 * then clamped to -qmax..qmax (which only matters for the block maximum,
 * where v may exceed qmax by a float32 rounding of s). The dequantized
 * value is the float32 product (float)q * s. q4 values are returned one per
 * int8 here; the wire packs two per byte. scales has ceil(n/block) entries. */
void cx_quantize_q8_ref(const float *x, size_t n, uint32_t block, float *scales, int8_t *q,
                        cx_rand_fn rnd, void *ctx);
void cx_quantize_q4_ref(const float *x, size_t n, uint32_t block, float *scales, int8_t *q,
                        cx_rand_fn rnd, void *ctx);
void cx_dequantize_ref(const float *scales, const int8_t *q, size_t n, uint32_t block, float *y);

/* ---- encoding ------------------------------------------------------------ */

/* Encodes the sparse vector (idx[0..k) strictly increasing and < dim, or
 * idx NULL when k == dim; values val[0..k)) under cfg's values, block and
 * index (cfg->select and ratio are ignored) into out[0..cap). rnd NULL
 * means round-to-nearest (deterministic); it is ignored for f32. If deq is
 * not NULL it receives the k values exactly as a receiver reconstructs
 * them (deq may equal val). Returns the bytes written or:
 *   SHOAL_EINVAL     bad cfg or arguments, idx not increasing/in range,
 *                    CX_INDEX_DENSE with k < dim
 *   SHOAL_ENONFINITE NaN/Inf in val
 *   SHOAL_ETOOBIG    the encoding does not fit in cap (nothing written)
 * The error of a q8/q4 encoding is at most scale (stochastic) or scale/2
 * (nearest) per value. */
long cx_encode(uint32_t dim, uint32_t k, const uint32_t *idx, const float *val,
               const cx_config *cfg, cx_rand_fn rnd, void *ctx, uint8_t *out, size_t cap,
               float *deq);

/* Scratch of an encoding client: idx and val of `dim` entries each (a
 * capacity: cx_work_entries says how many an encoding needs). */
typedef struct cx_work {
	uint32_t dim;
	uint32_t *idx;
	float *val;
} cx_work;

/* Entries of cx_work that cx_encode_ef needs for a dim-vector under cfg:
 * k for top-k (the selection is streamed, so a client holds no dim-sized
 * copy), dim for rand-k; 0 for a bad cfg or dim 0. */
size_t cx_work_entries(uint32_t dim, const cx_config *cfg);
/* Errors: SHOAL_EINVAL (dim 0), SHOAL_ENOMEM. */
shoal_err cx_work_init(cx_work *w, uint32_t dim);
void cx_work_fini(cx_work *w);

/* The client's update step with error feedback: u = x + residual (float32,
 * element-wise); select from u (cfg->select, k = ceil(ratio*dim));
 * quantize and encode into out[0..cap); then residual = u - v where v is
 * what the receiver will reconstruct (0 for coordinates not sent). So
 * x + residual_old == v + residual_new up to the two float32 roundings of
 * u = fl(x + r) and fl(u - v). On error residual is unchanged.
 * Returns the bytes written, or SHOAL_EINVAL, SHOAL_ENONFINITE (x + r not
 * finite), SHOAL_ETOOBIG (cap too small: cx_encoded_size_max is enough).
 * w needs cx_work_entries(dim, cfg) entries: top-k streams the selection
 * over x + residual and gathers only the k sums, so it holds no dim-sized
 * copy of u. residual NULL: no error feedback (u = x, nothing kept). */
long cx_encode_ef(const cx_config *cfg, const float *x, float *residual, uint32_t dim,
                  cx_rand_fn rnd, void *ctx, cx_work *w, uint8_t *out, size_t cap);

/* Downlink: the whole dense vector x (e.g. the global model's change) in q8
 * blocks with round-to-nearest, no index (CX_INDEX_DENSE). Deterministic:
 * the server applies its own encoding with cx_decode_add, as clients do,
 * so both hold bit-identical parameters. Returns bytes written or the
 * errors of cx_encode. */
long cx_encode_downlink(const float *x, uint32_t dim, uint32_t block, uint8_t *out, size_t cap);

/* ---- decoding ------------------------------------------------------------
 * Every decoder validates the whole encoding before it writes anything to
 * its output, and returns len (the bytes consumed) or:
 *   SHOAL_ETRUNC     len is shorter than the header or the declared sections
 *                    (so every strict prefix of a valid encoding)
 *   SHOAL_EVERSION   version byte != CX_VERSION (checked first)
 *   SHOAL_EMALFORMED unknown value/index mode, rice b > 31, a field that
 *                    must be 0 is not, block 0 (q8/q4), dense with k != d,
 *                    bitmap length != ceil(d/8) or popcount != k, a Rice
 *                    stream that overruns or does not end in its last byte
 *                    or has nonzero padding bits, a zero gap (indices not
 *                    strictly increasing), a negative scale, a q8 value
 *                    -128 / q4 nibble -8 / nonzero unused nibble, or
 *                    trailing bytes after the declared sections
 *   SHOAL_EDIM       dim != expected_dim
 *   SHOAL_ETOOBIG    k > dim, or an index >= dim
 *   SHOAL_ENONFINITE NaN/Inf in a scale or an f32 value, or a scale so
 *                    large that a value (q * scale) would be Inf
 *   SHOAL_EINVAL     NULL output, weight not finite, scratch NULL when the
 *                    encoding has an index
 * scratch: expected_dim uint32 for the decoded indices (may be NULL for a
 * dense encoding). */

/* Validation only (what every decoder below does first), e.g. to refuse an
 * update when it arrives and accumulate it later. */
long cx_validate(const uint8_t *buf, size_t len, uint32_t expected_dim, uint32_t *scratch);

/* acc[i] += weight * (double)v_i for every kept i. A double accumulator like
 * the server's FedAvg sum: exact for integer weights n_i < 2^24 times
 * float32 values, and no cancellation over thousands of clients. */
long cx_accumulate(const uint8_t *buf, size_t len, uint32_t expected_dim, double weight,
                   double *acc, uint32_t *scratch);

/* out[0..dim) = the dense vector (0 where not kept). */
long cx_decode(const uint8_t *buf, size_t len, uint32_t expected_dim, float *out,
               uint32_t *scratch);

/* params[i] = params[i] + v_i in float32, for every kept i (the downlink). */
long cx_decode_add(const uint8_t *buf, size_t len, uint32_t expected_dim, float *params,
                   uint32_t *scratch);

/* ---- the uncompressed path -------------------------------------------------
 * acc[i] += weight * f_i for dim little-endian float32 values (an UPDATE's
 * "delta" bin, already checked finite by msg_decode: no validation here). */
void cx_accumulate_dense(const uint8_t *le_floats, size_t dim, double weight, double *acc);

#endif
