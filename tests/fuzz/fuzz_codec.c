/* fuzz_codec.c - libFuzzer harness for the update codec's decoders
 * (common/codec.h): cx_validate, cx_decode, cx_decode_add and the server's
 * accumulator cx_accumulate, on an arbitrary encoded update.
 *
 * Properties checked besides memory safety: the four entry points agree
 * on the verdict; on refusal none writes to its output; an accepted update
 * consumes every byte, holds only finite values (nothing non-finite may
 * reach the server's sum), and the accumulator, the dense decode and the
 * in-place add give the same numbers; the kept values re-encoded as f32
 * decode to the same vector, and an f32 input re-encodes byte for byte
 * when its index mode is deterministic. */
#include "tests/fuzz/fuzz.h"

#include <math.h>
#include <string.h>

#include "common/codec.h"
#include "common/log.h"

/* Largest model dimension the harness allocates for; a header naming a
 * larger one is checked against DIM_OTHER instead (an EDIM path). */
#define DIM_MAX (1u << 13)
#define DIM_OTHER 1000u
#define WEIGHT 3.0
#define BASE 0.5f

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(-1);
	return 0;
}

static bool
same_float(float a, float b)
{
	return memcmp(&a, &b, sizeof a) == 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t dim = size >= 10 ? fz_le32(data + 6) : 1;
	if (dim > DIM_MAX)
		dim = DIM_OTHER;
	size_t nd = dim ? dim : 1;
	/* exact-size heap copies so ASan sees any overread or overwrite */
	uint8_t *buf = malloc(size ? size : 1);
	uint32_t *scratch = malloc(nd * sizeof *scratch);
	float *out = malloc(nd * sizeof *out), *params = malloc(nd * sizeof *params);
	double *acc = malloc(nd * sizeof *acc);
	CHECK(buf && scratch && out && params && acc);
	memcpy(buf, data, size);

	for (uint32_t i = 0; i < dim; i++) {
		out[i] = -7.0f;
		params[i] = BASE;
		acc[i] = 0.0;
	}
	long r = cx_validate(buf, size, dim, scratch);
	long r_dec = cx_decode(buf, size, dim, out, scratch);
	long r_add = cx_decode_add(buf, size, dim, params, scratch);
	long r_acc = cx_accumulate(buf, size, dim, WEIGHT, acc, scratch);
	CHECK(r == r_dec && r == r_add && r == r_acc);

	if (r < 0) {
		/* refused: nothing written */
		for (uint32_t i = 0; i < dim; i++)
			CHECK(out[i] == -7.0f && params[i] == BASE && acc[i] == 0.0);
		goto done;
	}
	CHECK((size_t)r == size && size >= CX_HEADER_BYTES);
	uint8_t vm = buf[1], im = buf[2];
	uint32_t k = fz_le32(buf + 10);
	CHECK(k <= dim && (im != CX_INDEX_DENSE || k == dim));

	/* the same numbers through every sink, all finite */
	for (uint32_t i = 0; i < dim; i++) {
		CHECK(isfinite(out[i]));
		CHECK(same_float(params[i], BASE + out[i]));
		CHECK(acc[i] == WEIGHT * (double)out[i]);
	}
	/* the dense f32 fast path agrees with the general one */
	if (vm == CX_VALUES_F32 && im == CX_INDEX_DENSE) {
		double *acc2 = calloc(nd, sizeof *acc2);
		CHECK(acc2 != NULL);
		cx_accumulate_dense(buf + CX_HEADER_BYTES, dim, WEIGHT, acc2);
		CHECK(memcmp(acc, acc2, (size_t)dim * sizeof *acc) == 0);
		free(acc2);
	}

	/* re-encode the kept entries as f32 (encoders refuse dim 0, which no
	 * model has; the decoders accept the empty dense update) */
	if (dim == 0)
		goto done;
	uint32_t *idx = NULL;
	float *val = malloc((k ? k : 1) * sizeof *val);
	CHECK(val != NULL);
	if (im != CX_INDEX_DENSE) {
		/* scratch holds the k decoded indices, strictly increasing */
		CHECK(cx_validate(buf, size, dim, scratch) == r);
		idx = scratch;
		for (uint32_t j = 0; j < k; j++)
			CHECK(idx[j] < dim && (j == 0 || idx[j] > idx[j - 1]));
	}
	for (uint32_t j = 0; j < k; j++)
		val[j] = out[idx ? idx[j] : j];
	cx_config cfg = {.select = CX_SELECT_TOPK, .ratio = 1.0, .values = CX_VALUES_F32,
	                 .index = (cx_index)im};
	if (im == CX_INDEX_DENSE && k == 0)
		cfg.index = CX_INDEX_DENSE;
	size_t cap = cx_encoded_size_max(dim, k, &cfg);
	CHECK(cap >= CX_HEADER_BYTES);
	uint8_t *enc = malloc(cap);
	float *back = malloc(nd * sizeof *back);
	CHECK(enc != NULL && back != NULL);
	long n = cx_encode(dim, k, idx, val, &cfg, NULL, NULL, enc, cap, NULL);
	CHECK(n > 0 && (size_t)n <= cap);
	CHECK(cx_decode(enc, (size_t)n, dim, back, scratch) == n);
	for (uint32_t i = 0; i < dim; i++)
		CHECK(same_float(back[i], out[i]));
	/* an f32 input is canonical for its index mode (a Rice stream is
	 * unique for its parameter, which the encoder may choose differently) */
	if (vm == CX_VALUES_F32 && (im != CX_INDEX_RICE || enc[3] == buf[3])) {
		CHECK((size_t)n == size);
		CHECK(memcmp(enc, buf, size) == 0);
	}
	free(back);
	free(enc);
	free(val);
done:
	free(acc);
	free(params);
	free(out);
	free(scratch);
	free(buf);
	return 0;
}
