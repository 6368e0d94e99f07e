/* codec.c - compressed model updates (see codec.h): top-k and rand-k
 * selection, q8/q4 block quantization, Golomb-Rice/bitmap index coding, the
 * encoded-update wire format and its validating decoders.
 *
 * Wire format (version 1; all integers little-endian, floats IEEE-754
 * binary32 little-endian; written field by field, never a struct):
 *
 *   off len field
 *     0   1 version      1
 *     1   1 value mode   0 f32, 1 q8, 2 q4
 *     2   1 index mode   0 dense (no index, k == d), 1 rice, 2 bitmap
 *     3   1 rice b       0..31 for rice; 0 otherwise
 *     4   2 block        values per scale, 1..65535 for q8/q4; 0 for f32
 *     6   4 dim d
 *    10   4 k            kept entries, 0..d
 *    14   4 index bytes  rice: ceil(bits/8); bitmap: ceil(d/8); dense: 0
 *    18     index section
 *           scales: ceil(k/block) float32 (q8/q4 only)
 *           values: k int8 in -127..127 (q8) | ceil(k/2) bytes, entry j in
 *                   the low nibble of byte j/2 if j is even, else the high
 *                   nibble, 4-bit two's complement in -7..7, an unused
 *                   last nibble 0 (q4) | k float32 (f32)
 *
 * Rice index: the kept indices i_0 < i_1 < ... become gaps
 * g_j = i_j - i_{j-1} with i_{-1} = -1 (so every g_j >= 1; a 0 gap would be
 * a repeated index and is rejected). Each g is written as q = g >> b zero
 * bits, a one bit, then the low b bits of g (least significant first). Bits
 * fill each byte from its least significant bit; the last byte is padded
 * with zero bits. The encoder fits b per message: from b0 = floor(log2(mean
 * gap)) it tries b0-2..b0+2 and keeps the shortest stream (ties: smaller b).
 * Bitmap index: bit (i & 7) of byte i >> 3 is set iff i is kept.
 *
 * Worked example (known-answer test test_known_answer): d = 32, indices
 * {2, 3, 9}, values {0.75, -1.0, 0.25}, q8 with block 2, nearest rounding,
 * automatic index mode. Gaps 3, 1, 6; mean gap 10/3, so b0 = 1; b = 1 costs
 * 10 bits (b = 0: 13, b = 2: 10, b = 3: 12), 2 bytes, less than the 4 of a
 * bitmap. Codes: 3 = q1 r1 -> 0,1,1; 1 = q0 r1 -> 1,1;
 * 6 = q3 r0 -> 0,0,0,1,0; the stream 0111100010 fills 1e 01. Block 0
 * {0.75, -1.0} has scale 1/127 (3c010204), so 0.75 -> 95.25 -> 95 (5f),
 * -1.0 -> -127 (81); block 1 {0.25} has scale 0.25/127 (3b010204) and 127.
 * 31 bytes:
 *
 *   01 01 01 01               version 1, q8, rice, b = 1
 *   02 00                     block 2
 *   20 00 00 00  03 00 00 00  d = 32, k = 3
 *   02 00 00 00               index bytes 2
 *   1e 01                     rice stream
 *   04 02 01 3c  04 02 01 3b  scales 0.007874016, 0.001968504
 *   5f 81 7f                  q = 95, -127, 127
 *
 * The receiver adds (float)95 * 0.007874016f = 0.7480315 at 2, -1.0 at 3,
 * 0.25 at 9. */
#include "common/codec.h"
#include "common/msg.h"

#include <assert.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---- layout --------------------------------------------------------------- */

enum {
	OFF_VERSION = 0,
	OFF_VALUES = 1,
	OFF_INDEX = 2,
	OFF_RICE = 3,
	OFF_BLOCK = 4,  /* u16 */
	OFF_DIM = 6,    /* u32 */
	OFF_K = 10,     /* u32 */
	OFF_IBYTES = 14 /* u32 */
};

static_assert(OFF_IBYTES + 4 == CX_HEADER_BYTES, "header is 18 bytes, fields in order");
static_assert(sizeof(float) == 4 && FLT_MANT_DIG == 24 && FLT_MAX_EXP == 128,
              "float is IEEE-754 binary32");
static_assert(sizeof(double) == 8 && DBL_MANT_DIG == 53, "double is IEEE-754 binary64");
static_assert(CX_BLOCK_MAX <= UINT16_MAX, "block travels as a u16");
static_assert(CX_RICE_MAX < 32, "a Rice remainder fits a 32-bit put");
static_assert(CX_Q8_MAX == 127 && CX_Q4_MAX == 7, "symmetric ranges: -128 / -8 are invalid");
static_assert(CX_VALUES_F32 == 0 && CX_VALUES_Q8 == 1 && CX_VALUES_Q4 == 2, "wire bytes");
static_assert(CX_INDEX_DENSE == 0 && CX_INDEX_RICE == 1 && CX_INDEX_BITMAP == 2, "wire bytes");

/* Entries dequantized at a time into a stack buffer before they are added. */
#define CHUNK 256

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NOINLINE __attribute__((noinline))
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#define NOINLINE
#endif

static inline unsigned
ctz64(uint64_t x) /* x != 0 */
{
#if defined(__GNUC__) || defined(__clang__)
	return (unsigned)__builtin_ctzll(x);
#else
	unsigned n = 0;
	while (!(x & 1)) {
		x >>= 1;
		n++;
	}
	return n;
#endif
}

static inline unsigned
floor_log2(uint64_t x) /* x != 0 */
{
#if defined(__GNUC__) || defined(__clang__)
	return 63u - (unsigned)__builtin_clzll(x);
#else
	unsigned n = 0;
	while (x >>= 1)
		n++;
	return n;
#endif
}

static inline unsigned
popcount64(uint64_t x)
{
#if defined(__GNUC__) || defined(__clang__)
	return (unsigned)__builtin_popcountll(x);
#else
	unsigned n = 0;
	for (; x; x &= x - 1)
		n++;
	return n;
#endif
}

static inline void
put16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void
put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t
get16(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static inline uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t
load_le64(const uint8_t *p)
{
#if HOST_LE
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
#else
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
#endif
}

static inline uint32_t
f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float
bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline void
putf(uint8_t *p, float f)
{
	put32(p, f32_bits(f));
}

static inline float
getf(const uint8_t *p)
{
#if HOST_LE
	float f;
	memcpy(&f, p, 4);
	return f;
#else
	return bits_f32(get32(p));
#endif
}

/* |x| as an unsigned key: orders like fabsf for finite x; >= 0x7f800000
 * for Inf/NaN. */
static inline uint32_t
abs_key(float x)
{
	return f32_bits(x) & 0x7fffffffu;
}

#define NONFINITE_KEY 0x7f800000u

static bool
all_finite(const float *x, size_t n)
{
	uint32_t bad = 0;

	for (size_t i = 0; i < n; i++)
		bad |= (uint32_t)(abs_key(x[i]) >= NONFINITE_KEY);
	return bad == 0;
}

/* ---- sizes ------------------------------------------------------------------ */

cx_config
cx_config_default(double ratio)
{
	cx_config c = { CX_SELECT_TOPK, ratio, CX_VALUES_Q8, CX_BLOCK_DEFAULT, CX_INDEX_AUTO };
	return c;
}

shoal_err
cx_parse_spec(const char *spec, cx_config *out, bool *none)
{
	char sel[8], vals[8] = "f32";
	const char *colon, *comma;
	char *end;
	size_t n;
	double r;

	*none = false;
	*out = cx_config_default(1.0);
	if (spec == NULL)
		return SHOAL_EINVAL;
	if (strcmp(spec, "none") == 0) {
		*none = true;
		return SHOAL_OK;
	}
	if ((colon = strchr(spec, ':')) == NULL || (n = (size_t)(colon - spec)) >= sizeof sel)
		return SHOAL_EINVAL;
	memcpy(sel, spec, n);
	sel[n] = '\0';
	errno = 0;
	r = strtod(colon + 1, &end);
	if (errno != 0 || end == colon + 1 || !(r > 0.0 && r <= 1.0))
		return SHOAL_EINVAL;
	comma = end;
	if (*comma == ',') {
		if (strlen(comma + 1) >= sizeof vals)
			return SHOAL_EINVAL;
		strcpy(vals, comma + 1);
	} else if (*comma != '\0') {
		return SHOAL_EINVAL;
	}
	if (strcmp(sel, "topk") == 0)
		out->select = CX_SELECT_TOPK;
	else if (strcmp(sel, "randk") == 0)
		out->select = CX_SELECT_RANDK;
	else
		return SHOAL_EINVAL;
	if (strcmp(vals, "q8") == 0)
		out->values = CX_VALUES_Q8;
	else if (strcmp(vals, "q4") == 0)
		out->values = CX_VALUES_Q4;
	else if (strcmp(vals, "f32") == 0)
		out->values = CX_VALUES_F32;
	else
		return SHOAL_EINVAL;
	out->ratio = r;
	out->block = out->values == CX_VALUES_F32 ? 0 : CX_BLOCK_DEFAULT;
	return SHOAL_OK;
}

uint32_t
cx_required_caps(const cx_config *cfg)
{
	uint32_t caps = cfg->select == CX_SELECT_RANDK ? MSG_CX_RANDK : MSG_CX_TOPK;
	caps |= cfg->values == CX_VALUES_Q8   ? MSG_CX_Q8
	        : cfg->values == CX_VALUES_Q4 ? MSG_CX_Q4
	                                      : MSG_CX_F32;
	return caps;
}

uint32_t
cx_k_for_ratio(uint32_t dim, double ratio)
{
	double k;

	if (dim == 0 || !(ratio > 0.0 && ratio <= 1.0))
		return 0;
	k = ceil(ratio * (double)dim);
	if (k < 1.0)
		k = 1.0;
	return k >= (double)dim ? dim : (uint32_t)k;
}

double
cx_index_bound_bits(uint32_t dim, uint32_t k)
{
	if (k > dim)
		return 0.0;
	return (lgamma((double)dim + 1.0) - lgamma((double)k + 1.0) -
	        lgamma((double)(dim - k) + 1.0)) / log(2.0);
}

static uint64_t
value_bytes(cx_values vm, uint64_t k)
{
	return vm == CX_VALUES_F32 ? 4 * k : vm == CX_VALUES_Q8 ? k : (k + 1) / 2;
}

static uint64_t
n_blocks(cx_values vm, uint64_t k, uint32_t block)
{
	return vm == CX_VALUES_F32 ? 0 : (k + block - 1) / block;
}

/* cfg's block with the default applied; 0 if invalid. */
static uint32_t
cfg_block(const cx_config *cfg)
{
	if (cfg->values == CX_VALUES_F32)
		return 1; /* unused */
	if (cfg->block == 0)
		return CX_BLOCK_DEFAULT;
	return cfg->block <= CX_BLOCK_MAX ? cfg->block : 0;
}

static bool
cfg_ok(const cx_config *cfg)
{
	return cfg != NULL &&
	       (cfg->values == CX_VALUES_F32 || cfg->values == CX_VALUES_Q8 ||
	        cfg->values == CX_VALUES_Q4) &&
	       (cfg->index == CX_INDEX_DENSE || cfg->index == CX_INDEX_RICE ||
	        cfg->index == CX_INDEX_BITMAP || cfg->index == CX_INDEX_AUTO) &&
	       cfg_block(cfg) != 0;
}

/* Rice bits for k gaps of mean <= dim/k under the encoder's fitted b are
 * below k * (floor(log2(dim/k)) + 3): at b0 = floor(log2(mean)),
 * sum(g >> b0) <= k * mean / 2^b0 < 2k. */
size_t
cx_encoded_size_max(uint32_t dim, uint32_t k, const cx_config *cfg)
{
	uint64_t ib, rice, total;

	if (!cfg_ok(cfg) || dim == 0 || k > dim)
		return 0;
	ib = ((uint64_t)dim + 7) / 8;
	rice = k == 0 ? 0 : ((uint64_t)k * (floor_log2(dim / k) + 3) + 7) / 8;
	if (rice > ib)
		ib = rice;
	total = CX_HEADER_BYTES + ib + 4 * n_blocks(cfg->values, k, cfg_block(cfg)) +
	        value_bytes(cfg->values, k);
	return total > SIZE_MAX ? 0 : (size_t)total;
}

/* ---- selection -------------------------------------------------------------- */

#define U(i) (r != NULL ? x[i] + r[i] : x[i])
/* The selection of cx_topk on u = x + r, element-wise (float32 sums, the
 * same as computing u first), when r is not NULL: u is never stored, so
 * error feedback needs no dim-sized copy. always_inline so that the r ==
 * NULL caller is compiled without the additions. */
static inline __attribute__((always_inline)) shoal_err
topk_select(const float *x, const float *r, uint32_t dim, uint32_t k, uint32_t *idx)
{
	static const unsigned shift[3] = { 20, 10, 0 }, width[3] = { 11, 10, 10 };
	uint32_t hist[1u << 11], h4[4][1u << 11];
	uint32_t prefix = 0, mask = 0, need = k, bad = 0, n = 0, eq = 0;

	if (k > dim || (dim > 0 && x == NULL) || (k > 0 && idx == NULL))
		return SHOAL_EINVAL;
	if (k == dim || k == 0) {
		for (uint32_t i = 0; i < dim; i++)
			bad |= (uint32_t)(abs_key(U(i)) >= NONFINITE_KEY);
		if (bad)
			return SHOAL_ENONFINITE;
		for (uint32_t i = 0; i < k; i++)
			idx[i] = i;
		return SHOAL_OK;
	}
	/* Radix select of the k-th largest key, 11 + 10 + 10 bits. After each
	 * level, keys whose masked bits exceed prefix are all kept, and `need`
	 * more come from those equal to it. Stop early when that whole bucket
	 * is needed. */
	for (int lv = 0; lv < 3; lv++) {
		uint32_t nb = 1u << width[lv], b;

		memset(hist, 0, nb * sizeof hist[0]);
		if (lv == 0) {
			/* Four interleaved histograms: neighbours often share a
			 * bucket, and one counter would serialize the increments. */
			uint32_t i = 0;

			memset(h4, 0, sizeof h4);
			for (; i + 4 <= dim; i += 4)
				for (unsigned t = 0; t < 4; t++) {
					uint32_t key = abs_key(U(i + t));
					bad |= (uint32_t)(key >= NONFINITE_KEY);
					h4[t][key >> 20]++;
				}
			for (; i < dim; i++) {
				uint32_t key = abs_key(U(i));
				bad |= (uint32_t)(key >= NONFINITE_KEY);
				h4[0][key >> 20]++;
			}
			if (bad)
				return SHOAL_ENONFINITE;
			for (uint32_t t = 0; t < nb; t++)
				hist[t] = h4[0][t] + h4[1][t] + h4[2][t] + h4[3][t];
		} else {
			for (uint32_t i = 0; i < dim; i++) {
				uint32_t key = abs_key(U(i));
				if ((key & mask) == prefix)
					hist[(key >> shift[lv]) & (nb - 1)]++;
			}
		}
		for (b = nb - 1; hist[b] < need; b--)
			need -= hist[b];
		prefix |= b << shift[lv];
		mask |= (nb - 1) << shift[lv];
		if (hist[b] == need)
			break;
	}
	/* Keys above the threshold, then the lowest-index `need` equal ones. */
	for (uint32_t i = 0; i < dim; i++) {
		uint32_t hi = abs_key(U(i)) & mask;
		if (hi > prefix || (hi == prefix && eq < need)) {
			eq += hi == prefix;
			idx[n++] = i;
		}
	}
	return n == k ? SHOAL_OK : SHOAL_EINVAL; /* n != k cannot happen */
}

#undef U

shoal_err
cx_topk(const float *x, uint32_t dim, uint32_t k, uint32_t *idx)
{
	return topk_select(x, NULL, dim, k, idx);
}

static int
cmp_u32_desc(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x < y) - (x > y);
}

shoal_err
cx_randk(const float *x, uint32_t dim, uint32_t k, cx_rand_fn rnd, void *ctx, uint32_t *idx,
         float *val, uint32_t *n_kept)
{
	double s = 0.0, top = 0.0, c = INFINITY;
	uint32_t n = 0;
	shoal_err err;

	if (rnd == NULL || n_kept == NULL || val == NULL)
		return SHOAL_EINVAL;
	if ((err = cx_topk(x, dim, k, idx)) != SHOAL_OK)
		return err;
	/* The capped set is a prefix of the top-k by magnitude: with a_1 >=
	 * a_2 >= ... and P_m = a_1 + ... + a_m, the smallest m with
	 * c_m * a_{m+1} < 1, c_m = (k - m) / (S - P_m), gives p_i = 1 for the
	 * top m and c_m * |x_i| < 1 for the rest, so sum p_i = m + (k - m) = k.
	 * (c_{m-1} a_m >= 1 implies c_m a_m >= 1, so the top m are capped by
	 * min(1, c|x|) too.) c stays Inf when every nonzero entry is capped. */
	for (uint32_t j = 0; j < k; j++)
		idx[j] = abs_key(x[idx[j]]); /* magnitude bits sort like floats */
	qsort(idx, k, sizeof idx[0], cmp_u32_desc);
	for (uint32_t i = 0; i < dim; i++)
		s += fabs((double)x[i]);
	for (uint32_t m = 0; m < k; m++) {
		double rest = s - top, a = (double)bits_f32(idx[m]), cm;
		if (!(rest > 0.0) || a == 0.0)
			break;
		cm = (double)(k - m) / rest;
		if (cm * a < 1.0) {
			c = cm;
			break;
		}
		top += a;
	}
	/* val may alias x: entry n is written after x[i], i >= n, is read. */
	for (uint32_t i = 0; i < dim; i++) {
		double v = (double)x[i], p = c * fabs(v);
		if (v == 0.0)
			continue;
		if (p >= 1.0) {
			idx[n] = i;
			val[n++] = x[i];
		} else if ((double)(rnd(ctx) >> 11) * 0x1p-53 < p) {
			idx[n] = i;
			val[n++] = (float)(v / p);
		}
	}
	*n_kept = n;
	return SHOAL_OK;
}

/* ---- quantization ------------------------------------------------------------ */

/* max|x| / qmax of one block; 0 for an all-zero block (or one so tiny that
 * the quotient underflows), which then sends zeros without dividing. */
static float
block_scale(const float *x, size_t n, int qmax)
{
	float amax = 0.0f;

	for (size_t j = 0; j < n; j++) {
		float a = fabsf(x[j]);
		amax = a > amax ? a : amax;
	}
	return amax / (float)qmax;
}

static inline int
quant_one(float x, double inv, int qmax, cx_rand_fn rnd, void *ctx)
{
	double v = (double)x * inv, f;

	if (rnd != NULL)
		f = floor(v + (double)(rnd(ctx) >> 11) * 0x1p-53);
	else
		f = floor(v + 0.5);
	if (f > qmax)
		f = qmax;
	if (f < -qmax)
		f = -qmax;
	return (int)f;
}

static void
quantize_ref(const float *x, size_t n, uint32_t block, int qmax, float *scales, int8_t *q,
             cx_rand_fn rnd, void *ctx)
{
	if (block == 0)
		block = CX_BLOCK_DEFAULT;
	for (size_t off = 0, b = 0; off < n; off += block, b++) {
		size_t m = n - off < block ? n - off : block;
		float s = block_scale(x + off, m, qmax);
		double inv;

		scales[b] = s;
		if (s == 0.0f) {
			memset(q + off, 0, m);
			continue;
		}
		inv = 1.0 / (double)s;
		for (size_t j = 0; j < m; j++)
			q[off + j] = (int8_t)quant_one(x[off + j], inv, qmax, rnd, ctx);
	}
}

void
cx_quantize_q8_ref(const float *x, size_t n, uint32_t block, float *scales, int8_t *q,
                   cx_rand_fn rnd, void *ctx)
{
	quantize_ref(x, n, block, CX_Q8_MAX, scales, q, rnd, ctx);
}

void
cx_quantize_q4_ref(const float *x, size_t n, uint32_t block, float *scales, int8_t *q,
                   cx_rand_fn rnd, void *ctx)
{
	quantize_ref(x, n, block, CX_Q4_MAX, scales, q, rnd, ctx);
}

void
cx_dequantize_ref(const float *scales, const int8_t *q, size_t n, uint32_t block, float *y)
{
	if (block == 0)
		block = CX_BLOCK_DEFAULT;
	for (size_t j = 0; j < n; j++)
		y[j] = (float)q[j] * scales[j / block];
}

/* ---- encoding ------------------------------------------------------------------ */

#define IDX(idx, j) ((idx) != NULL ? (idx)[j] : (uint32_t)(j))

typedef struct bitw {
	uint8_t *p;
	uint64_t acc;
	unsigned n; /* bits in acc, < 8 between calls */
} bitw;

static inline void
bw_put(bitw *w, uint64_t v, unsigned nbits) /* nbits <= 32, v < 2^nbits */
{
	w->acc |= v << w->n;
	w->n += nbits;
	while (w->n >= 8) {
		*w->p++ = (uint8_t)w->acc;
		w->acc >>= 8;
		w->n -= 8;
	}
}

/* Fits the Rice parameter: returns the bits of the shortest stream over
 * b0-2..b0+2 and its b in *best_b. */
static uint64_t
rice_fit(const uint32_t *idx, uint32_t k, unsigned *best_b)
{
	enum { NC = 5 };
	uint64_t sum[NC] = { 0 }, best = UINT64_MAX;
	unsigned lo, b0;
	uint32_t prev = UINT32_MAX;

	*best_b = 0;
	if (k == 0)
		return 0;
	b0 = floor_log2(((uint64_t)IDX(idx, k - 1) + 1) / k);
	lo = b0 >= 2 ? b0 - 2 : 0;
	for (uint32_t j = 0; j < k; j++) {
		uint32_t i = IDX(idx, j), g = i - prev; /* prev = -1 wraps: g = i + 1 */
		prev = i;
		for (unsigned c = 0; c < NC; c++)
			sum[c] += g >> (lo + c);
	}
	for (unsigned c = 0; c < NC && lo + c <= CX_RICE_MAX; c++) {
		uint64_t bits = (uint64_t)k * (lo + c + 1) + sum[c];
		if (bits < best) {
			best = bits;
			*best_b = lo + c;
		}
	}
	return best;
}

static void
rice_write(uint8_t *out, const uint32_t *idx, uint32_t k, unsigned b)
{
	bitw w = { out, 0, 0 };
	uint32_t prev = UINT32_MAX, mask = (uint32_t)(((uint64_t)1 << b) - 1);

	for (uint32_t j = 0; j < k; j++) {
		uint32_t i = IDX(idx, j), g = i - prev, q = g >> b;
		prev = i;
		for (; q >= 32; q -= 32)
			bw_put(&w, 0, 32);
		bw_put(&w, (uint64_t)1 << q, q + 1);
		if (b > 0)
			bw_put(&w, g & mask, b);
	}
	if (w.n > 0)
		*w.p = (uint8_t)w.acc;
}

long
cx_encode(uint32_t dim, uint32_t k, const uint32_t *idx, const float *val,
          const cx_config *cfg, cx_rand_fn rnd, void *ctx, uint8_t *out, size_t cap,
          float *deq)
{
	uint64_t rice_bits = 0, ib, nblk, total;
	uint32_t block, bmp = (uint32_t)(((uint64_t)dim + 7) / 8);
	unsigned b = 0;
	cx_index im;
	cx_values vm;
	uint8_t *p;

	if (!cfg_ok(cfg) || dim == 0 || k > dim || out == NULL || (k > 0 && val == NULL) ||
	    (idx == NULL && k != dim))
		return SHOAL_EINVAL;
	vm = cfg->values;
	block = vm == CX_VALUES_F32 ? 0 : cfg_block(cfg);
	if (idx != NULL) {
		for (uint32_t j = 0; j < k; j++)
			if (idx[j] >= dim || (j > 0 && idx[j] <= idx[j - 1]))
				return SHOAL_EINVAL;
	}
	if (!all_finite(val, k))
		return SHOAL_ENONFINITE;

	im = cfg->index;
	if (im == CX_INDEX_AUTO || im == CX_INDEX_RICE)
		rice_bits = rice_fit(idx, k, &b);
	if (im == CX_INDEX_AUTO)
		im = k == dim ? CX_INDEX_DENSE : (rice_bits + 7) / 8 < bmp ? CX_INDEX_RICE
		                                                           : CX_INDEX_BITMAP;
	if (im == CX_INDEX_DENSE && k != dim)
		return SHOAL_EINVAL;
	ib = im == CX_INDEX_DENSE ? 0 : im == CX_INDEX_BITMAP ? bmp : (rice_bits + 7) / 8;
	if (im != CX_INDEX_RICE)
		b = 0;
	if (ib > UINT32_MAX)
		return SHOAL_ETOOBIG;
	nblk = n_blocks(vm, k, block ? block : 1);
	total = CX_HEADER_BYTES + ib + 4 * nblk + value_bytes(vm, k);
	if (total > cap || total > LONG_MAX)
		return SHOAL_ETOOBIG;

	out[OFF_VERSION] = CX_VERSION;
	out[OFF_VALUES] = (uint8_t)vm;
	out[OFF_INDEX] = (uint8_t)im;
	out[OFF_RICE] = (uint8_t)b;
	put16(out + OFF_BLOCK, block);
	put32(out + OFF_DIM, dim);
	put32(out + OFF_K, k);
	put32(out + OFF_IBYTES, (uint32_t)ib);
	p = out + CX_HEADER_BYTES;
	if (im == CX_INDEX_RICE) {
		rice_write(p, idx, k, b);
	} else if (im == CX_INDEX_BITMAP) {
		memset(p, 0, ib);
		for (uint32_t j = 0; j < k; j++) {
			uint32_t i = IDX(idx, j);
			p[i >> 3] |= (uint8_t)(1u << (i & 7));
		}
	}
	p += ib;

	if (vm == CX_VALUES_F32) {
		for (uint32_t j = 0; j < k; j++) {
			putf(p + 4 * (size_t)j, val[j]);
			if (deq != NULL)
				deq[j] = val[j];
		}
	} else {
		int qmax = vm == CX_VALUES_Q8 ? CX_Q8_MAX : CX_Q4_MAX;
		uint8_t *sp = p, *vp = p + 4 * nblk;

		if (vm == CX_VALUES_Q4)
			memset(vp, 0, (size_t)value_bytes(vm, k));
		/* The same block_scale/quant_one as quantize_ref, so the wire
		 * carries exactly cx_quantize_*_ref's output. deq may alias val:
		 * each entry is read before it is overwritten. */
		for (uint32_t off = 0, bi = 0; off < k; off += block, bi++) {
			uint32_t m = k - off < block ? k - off : block;
			float s = block_scale(val + off, m, qmax);
			double inv = s == 0.0f ? 0.0 : 1.0 / (double)s;

			putf(sp + 4 * (size_t)bi, s);
			for (uint32_t j = off; j < off + m; j++) {
				int q = s == 0.0f ? 0 : quant_one(val[j], inv, qmax, rnd, ctx);
				if (vm == CX_VALUES_Q8)
					vp[j] = (uint8_t)q;
				else
					vp[j >> 1] |= (uint8_t)(((unsigned)q & 0xfu) << ((j & 1) * 4));
				if (deq != NULL)
					deq[j] = (float)q * s;
			}
		}
	}
	return (long)total;
}

shoal_err
cx_work_init(cx_work *w, uint32_t dim)
{
	memset(w, 0, sizeof *w);
	if (dim == 0)
		return SHOAL_EINVAL;
	w->idx = malloc((size_t)dim * sizeof *w->idx);
	w->val = malloc((size_t)dim * sizeof *w->val);
	if (w->idx == NULL || w->val == NULL) {
		cx_work_fini(w);
		return SHOAL_ENOMEM;
	}
	w->dim = dim;
	return SHOAL_OK;
}

void
cx_work_fini(cx_work *w)
{
	free(w->idx);
	free(w->val);
	memset(w, 0, sizeof *w);
}

size_t
cx_work_entries(uint32_t dim, const cx_config *cfg)
{
	if (!cfg_ok(cfg) || dim == 0)
		return 0;
	return cfg->select == CX_SELECT_TOPK ? cx_k_for_ratio(dim, cfg->ratio) : dim;
}

long
cx_encode_ef(const cx_config *cfg, const float *x, float *residual, uint32_t dim,
             cx_rand_fn rnd, void *ctx, cx_work *w, uint8_t *out, size_t cap)
{
	uint32_t k = cfg_ok(cfg) ? cx_k_for_ratio(dim, cfg->ratio) : 0, n = 0;
	float *u;
	shoal_err err;
	long len;

	if (k == 0 || x == NULL || w == NULL ||
	    (cfg->select != CX_SELECT_TOPK && cfg->select != CX_SELECT_RANDK) ||
	    w->dim < cx_work_entries(dim, cfg) || (cfg->select == CX_SELECT_RANDK && rnd == NULL))
		return SHOAL_EINVAL;
	u = w->val;
	if (cfg->select == CX_SELECT_TOPK) {
		/* Streamed: select on x + residual without storing the sum, and
		 * gather only the k chosen sums. */
		err = residual != NULL ? topk_select(x, residual, dim, k, w->idx)
		                       : topk_select(x, NULL, dim, k, w->idx);
		if (err != SHOAL_OK)
			return err;
		for (uint32_t j = 0; j < k; j++)
			u[j] = residual != NULL ? x[w->idx[j]] + residual[w->idx[j]] : x[w->idx[j]];
		n = k;
	} else {
		for (uint32_t i = 0; i < dim; i++)
			u[i] = residual != NULL ? x[i] + residual[i] : x[i];
		if (!all_finite(u, dim))
			return SHOAL_ENONFINITE;
		if ((err = cx_randk(u, dim, k, rnd, ctx, w->idx, u, &n)) != SHOAL_OK)
			return err;
	}
	len = cx_encode(dim, n, w->idx, u, cfg, rnd, ctx, out, cap, u);
	if (len < 0 || residual == NULL)
		return len;
	/* residual = u - v. u is recomputed with the same float addition; the
	 * subtraction is its own statement so it cannot be fused. */
	for (uint32_t i = 0; i < dim; i++)
		residual[i] = x[i] + residual[i];
	for (uint32_t j = 0; j < n; j++) {
		float r = residual[w->idx[j]];
		residual[w->idx[j]] = r - u[j];
	}
	return len;
}

long
cx_encode_downlink(const float *x, uint32_t dim, uint32_t block, uint8_t *out, size_t cap)
{
	cx_config cfg = { CX_SELECT_TOPK, 1.0, CX_VALUES_Q8, block, CX_INDEX_DENSE };
	return cx_encode(dim, dim, NULL, x, &cfg, NULL, NULL, out, cap, NULL);
}

/* ---- decoding ---------------------------------------------------------------- */

typedef struct view {
	uint32_t dim, k, block;
	cx_values vm;
	const uint8_t *scales, *values;
	const uint32_t *idx; /* NULL: dense */
} view;

/* 64 bits of the stream p[0..n) from bit pos on: at least 57 real bits,
 * zeros beyond the end. */
static inline uint64_t
peek(const uint8_t *p, uint64_t n, uint64_t pos)
{
	uint64_t byte = pos >> 3, w = 0;

	if (LIKELY(byte + 8 <= n)) {
		w = load_le64(p + byte);
	} else {
		for (unsigned i = 0; i < 8 && byte + i < n; i++)
			w |= (uint64_t)p[byte + i] << (8 * i);
	}
	return w >> (pos & 7);
}

/* Decoder state between Rice codes (see rice_decode). */
typedef struct rstate {
	uint64_t buf, ptr, g;
	unsigned cnt;
	shoal_err err;
} rstate;

/* One Rice code the careful way (long unary runs, codes that reach the
 * end of the stream), then the bit buffer restarted after it. Out of line
 * to keep the fast loop's registers free. */
static NOINLINE rstate
rice_slow(const uint8_t *p, uint64_t nbytes, rstate st, unsigned b, uint64_t qmax)
{
	const uint64_t nbits = nbytes * 8, mask = ((uint64_t)1 << b) - 1;
	uint64_t pos = st.ptr * 8 - st.cnt, q = 0, w;

	for (;;) {
		if (pos + q >= nbits) {
			st.err = SHOAL_EMALFORMED; /* the unary run overruns the stream */
			return st;
		}
		if (q > qmax)
			break;
		w = peek(p, nbytes, pos + q);
		if (w != 0) {
			q += ctz64(w);
			break;
		}
		q += 64 - (unsigned)((pos + q) & 7);
	}
	if (q > qmax) { /* then g > dim */
		st.err = SHOAL_ETOOBIG;
		return st;
	}
	st.g = q << b | (peek(p, nbytes, pos + q + 1) & mask);
	pos += q + 1 + b;
	/* restart the buffer at pos, counting 7 whole bytes */
	st.buf = peek(p, nbytes, pos);
	st.cnt = 56 - (unsigned)(pos & 7);
	st.ptr = (pos >> 3) + 7;
	return st;
}

/* Decodes k Rice-coded gaps into idx, checking every index. The fast loop
 * keeps a 64-bit bit buffer refilled branch-free before every code
 * (LSB-first "variant 4" of F. Giesen's bit readers: buf holds cnt >= 56
 * valid bits and ptr is the byte after them), so a code costs a ctz and
 * three shifts; a code longer than the buffer goes to rice_slow. */
static NOINLINE shoal_err
rice_decode(const uint8_t *p, uint64_t nbytes, uint32_t k, unsigned b, uint32_t dim,
            uint32_t *idx)
{
	const uint64_t nbits = nbytes * 8, mask = ((uint64_t)1 << b) - 1, qmax = dim >> b;
	uint64_t cur = UINT64_MAX, buf = 0, ptr = 0, pos; /* cur: index -1 */
	unsigned cnt = 0;

	for (uint32_t j = 0; j < k; j++) {
		uint64_t g, q;

		buf |= (LIKELY(ptr + 8 <= nbytes) ? load_le64(p + ptr) : peek(p, nbytes, ptr * 8))
		       << cnt;
		ptr += (63 - cnt) >> 3;
		cnt |= 56;
		q = buf != 0 ? ctz64(buf) : 64;
		if (LIKELY(q + 1 + b <= cnt)) {
			buf >>= q;
			buf >>= 1;
			g = q << b | (buf & mask);
			buf >>= b;
			cnt -= (unsigned)(q + 1 + b);
		} else {
			rstate st = { buf, ptr, 0, cnt, SHOAL_OK };
			st = rice_slow(p, nbytes, st, b, qmax);
			if (st.err != SHOAL_OK)
				return st.err;
			buf = st.buf;
			ptr = st.ptr;
			cnt = st.cnt;
			g = st.g;
		}
		if (UNLIKELY(g == 0))
			return SHOAL_EMALFORMED; /* repeated index */
		cur += g;
		if (UNLIKELY(cur >= dim))
			return SHOAL_ETOOBIG;
		idx[j] = (uint32_t)cur;
	}
	/* The stream must end in its last byte, padded with zero bits. */
	pos = ptr * 8 - cnt;
	if (pos > nbits || (pos + 7) / 8 != nbytes ||
	    ((pos & 7) && (p[nbytes - 1] >> (pos & 7)) != 0))
		return SHOAL_EMALFORMED;
	return SHOAL_OK;
}

static shoal_err
bitmap_decode(const uint8_t *p, uint32_t dim, uint32_t k, uint32_t *idx)
{
	uint64_t nbytes = ((uint64_t)dim + 7) / 8, i = 0;
	uint32_t n = 0;

	if ((dim & 7) && (p[nbytes - 1] >> (dim & 7)) != 0)
		return SHOAL_ETOOBIG; /* a bit at an index >= dim */
	for (; i < nbytes; i += 8) {
		uint64_t w = i + 8 <= nbytes ? load_le64(p + i) : 0;

		if (i + 8 > nbytes)
			for (unsigned t = 0; i + t < nbytes; t++)
				w |= (uint64_t)p[i + t] << (8 * t);
		if (popcount64(w) > k - n)
			return SHOAL_EMALFORMED; /* more than k bits set */
		for (; w != 0; w &= w - 1)
			idx[n++] = (uint32_t)(i * 8 + ctz64(w));
	}
	return n == k ? SHOAL_OK : SHOAL_EMALFORMED;
}

/* Validates buf completely (see codec.h for the errors, in check order)
 * and fills *v; indices go to scratch. */
static long
parse(const uint8_t *buf, size_t len, uint32_t expected_dim, uint32_t *scratch, view *v)
{
	uint32_t dim, k, block, ib, rb;
	unsigned vmb, imb;
	uint64_t nblk, total;
	const uint8_t *p;
	shoal_err err = SHOAL_OK;

	if (buf == NULL && len > 0)
		return SHOAL_EINVAL;
	if (len < 1)
		return SHOAL_ETRUNC;
	if (buf[OFF_VERSION] != CX_VERSION)
		return SHOAL_EVERSION;
	if (len < CX_HEADER_BYTES)
		return SHOAL_ETRUNC;
	vmb = buf[OFF_VALUES];
	imb = buf[OFF_INDEX];
	rb = buf[OFF_RICE];
	block = get16(buf + OFF_BLOCK);
	dim = get32(buf + OFF_DIM);
	k = get32(buf + OFF_K);
	ib = get32(buf + OFF_IBYTES);
	if (vmb > CX_VALUES_Q4 || imb > CX_INDEX_BITMAP)
		return SHOAL_EMALFORMED;
	if (dim != expected_dim)
		return SHOAL_EDIM;
	if (k > dim)
		return SHOAL_ETOOBIG;
	if (rb > (imb == CX_INDEX_RICE ? CX_RICE_MAX : 0u) ||
	    (vmb == CX_VALUES_F32) != (block == 0) ||
	    (imb == CX_INDEX_DENSE && (k != dim || ib != 0)) ||
	    (imb == CX_INDEX_BITMAP && ib != ((uint64_t)dim + 7) / 8))
		return SHOAL_EMALFORMED;
	nblk = n_blocks((cx_values)vmb, k, block ? block : 1);
	total = CX_HEADER_BYTES + (uint64_t)ib + 4 * nblk + value_bytes((cx_values)vmb, k);
	if (len < total)
		return SHOAL_ETRUNC;
	if (len > total)
		return SHOAL_EMALFORMED; /* trailing bytes */
	if (total > LONG_MAX)
		return SHOAL_ETOOBIG;

	p = buf + CX_HEADER_BYTES;
	v->idx = NULL;
	if (imb != CX_INDEX_DENSE) {
		if (scratch == NULL)
			return SHOAL_EINVAL;
		err = imb == CX_INDEX_RICE ? rice_decode(p, ib, k, rb, dim, scratch)
		                           : bitmap_decode(p, dim, k, scratch);
		if (err != SHOAL_OK)
			return err;
		v->idx = scratch;
	}
	p += ib;
	v->scales = p;
	/* a scale so large that qmax * scale overflows would send Inf */
	float qmax = vmb == CX_VALUES_Q8 ? (float)CX_Q8_MAX : (float)CX_Q4_MAX;
	for (uint64_t i = 0; i < nblk; i++) {
		float s = getf(p + 4 * i);
		if (abs_key(s) >= NONFINITE_KEY || abs_key(qmax * s) >= NONFINITE_KEY)
			return SHOAL_ENONFINITE;
		if (s < 0.0f)
			return SHOAL_EMALFORMED;
	}
	p += 4 * nblk;
	v->values = p;
	if (vmb == CX_VALUES_Q8) {
		unsigned bad = 0;
		for (uint32_t j = 0; j < k; j++)
			bad |= p[j] == 0x80;
		if (bad)
			return SHOAL_EMALFORMED;
	} else if (vmb == CX_VALUES_Q4) {
		uint32_t nb = (k + 1) / 2;
		unsigned bad = 0;
		for (uint32_t j = 0; j < nb; j++)
			bad |= (p[j] & 0x0f) == 0x08 || (p[j] & 0xf0) == 0x80;
		if (bad || ((k & 1) && (p[nb - 1] >> 4) != 0))
			return SHOAL_EMALFORMED;
	} else {
		uint32_t bad = 0;
		for (uint32_t j = 0; j < k; j++)
			bad |= (uint32_t)((get32(p + 4 * (size_t)j) & 0x7fffffffu) >= NONFINITE_KEY);
		if (bad)
			return SHOAL_ENONFINITE;
	}
	v->dim = dim;
	v->k = k;
	v->block = block;
	v->vm = (cx_values)vmb;
	return (long)total;
}

/* t[0..n) = the values of entries start..start+n-1, all in one block. */
static void
deq_chunk(const view *v, uint32_t start, uint32_t n, float *t)
{
	const uint8_t *p = v->values;
	float s;

	if (v->vm == CX_VALUES_F32) {
		for (uint32_t j = 0; j < n; j++)
			t[j] = getf(p + 4 * ((size_t)start + j));
		return;
	}
	s = getf(v->scales + 4 * (size_t)(start / v->block));
	if (v->vm == CX_VALUES_Q8) {
		p += start;
		for (uint32_t j = 0; j < n; j++)
			t[j] = (float)((int)p[j] - ((p[j] & 0x80) << 1)) * s;
	} else {
		for (uint32_t j = 0; j < n; j++) {
			uint32_t e = start + j;
			int nib = (p[e >> 1] >> ((e & 1) * 4)) & 0xf;
			t[j] = (float)((nib ^ 8) - 8) * s;
		}
	}
}

enum sink { SINK_ACC, SINK_SET, SINK_ADD };

static void
apply(const view *v, enum sink kind, double weight, void *outp)
{
	float t[CHUNK];
	uint32_t block = v->vm == CX_VALUES_F32 ? CHUNK : v->block;

	if (kind == SINK_SET)
		memset(outp, 0, (size_t)v->dim * sizeof(float));
	for (uint32_t s = 0; s < v->k;) {
		uint32_t n = block - s % block, j;
		const uint32_t *ix = v->idx != NULL ? v->idx + s : NULL;

		if (n > CHUNK)
			n = CHUNK;
		if (n > v->k - s)
			n = v->k - s;
		deq_chunk(v, s, n, t);
		if (kind == SINK_ACC) {
			double *acc = outp;
			if (ix != NULL)
				for (j = 0; j < n; j++)
					acc[ix[j]] += weight * (double)t[j];
			else
				for (j = 0, acc += s; j < n; j++)
					acc[j] += weight * (double)t[j];
		} else if (kind == SINK_SET) {
			float *out = outp;
			if (ix != NULL)
				for (j = 0; j < n; j++)
					out[ix[j]] = t[j];
			else
				memcpy(out + s, t, n * sizeof t[0]);
		} else {
			float *out = outp;
			if (ix != NULL)
				for (j = 0; j < n; j++)
					out[ix[j]] = out[ix[j]] + t[j];
			else
				for (j = 0, out += s; j < n; j++)
					out[j] = out[j] + t[j];
		}
		s += n;
	}
}

long
cx_validate(const uint8_t *buf, size_t len, uint32_t expected_dim, uint32_t *scratch)
{
	view v;
	return parse(buf, len, expected_dim, scratch, &v);
}

long
cx_accumulate(const uint8_t *buf, size_t len, uint32_t expected_dim, double weight,
              double *acc, uint32_t *scratch)
{
	view v;
	long r;

	if (acc == NULL || !isfinite(weight))
		return SHOAL_EINVAL;
	if ((r = parse(buf, len, expected_dim, scratch, &v)) >= 0)
		apply(&v, SINK_ACC, weight, acc);
	return r;
}

long
cx_decode(const uint8_t *buf, size_t len, uint32_t expected_dim, float *out, uint32_t *scratch)
{
	view v;
	long r;

	if (out == NULL)
		return SHOAL_EINVAL;
	if ((r = parse(buf, len, expected_dim, scratch, &v)) >= 0)
		apply(&v, SINK_SET, 0.0, out);
	return r;
}

long
cx_decode_add(const uint8_t *buf, size_t len, uint32_t expected_dim, float *params,
              uint32_t *scratch)
{
	view v;
	long r;

	if (params == NULL)
		return SHOAL_EINVAL;
	if ((r = parse(buf, len, expected_dim, scratch, &v)) >= 0)
		apply(&v, SINK_ADD, 0.0, params);
	return r;
}

/* ---- the uncompressed path ------------------------------------------------------ */

/* Fixed-size inner loops: GCC -O2 vectorizes (SLP) these without -O3. */
#define DENSE_STEP 16

/* The server's dense hot loop is compute-bound with baseline x86-64 (SSE2:
 * two doubles per instruction); an AVX2 clone, picked at load time, doubles
 * the width. Other targets (aarch64: NEON) build the one portable loop.
 * GCC only: clang 14 names the dispatcher "cx_accumulate_dense.ifunc", so
 * callers fail to link (and it does not define __SANITIZE_ADDRESS__). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define DENSE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DENSE_CLONES
#endif

DENSE_CLONES void
cx_accumulate_dense(const uint8_t *restrict le_floats, size_t dim, double weight,
                    double *restrict acc)
{
	size_t i = 0;

	for (; i + DENSE_STEP <= dim; i += DENSE_STEP) {
		const uint8_t *p = le_floats + 4 * i;
		double *a = acc + i;
		for (size_t j = 0; j < DENSE_STEP; j++)
			a[j] += weight * (double)getf(p + 4 * j);
	}
	for (; i < dim; i++)
		acc[i] += weight * (double)getf(le_floats + 4 * i);
}
