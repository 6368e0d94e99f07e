/* codec.c (bench) - shoal-bench codec: size and speed of the compressed
 * update codec (common/codec.h) on one core. Prints one JSON object per
 * result on stdout ({"bench", "params", "value", "unit"}); progress on
 * stderr. Each speed is the median over --reps repetitions, each running
 * the operation for at least 50 ms.
 *
 * The update is a synthetic delta with Laplace-distributed coordinates
 * (seeded), so its top-k positions are uniform, as for real deltas whose
 * large coordinates are spread over the model. Dense accumulate vs memcpy:
 * both move the same 4*dim wire bytes; the figure is wire bytes consumed
 * (or copied) per second, so a double accumulator (which also reads and
 * writes 8*dim accumulator bytes) is compared with what a plain copy of
 * the input costs. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "common/codec.h"
#include "privacy/rng.h"

#define CX_MAX_REPS 101
#define MIN_SECONDS 0.05

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: shoal-bench codec [options]\n"
	        "\n"
	        "Compressed-update codec on one core: bytes per parameter, index bits\n"
	        "per kept value against the information bound log2 C(d,k), encode and\n"
	        "decode+accumulate throughput (kept entries/s), and the dense float32\n"
	        "accumulate against memcpy of the same bytes, measured in the same run.\n"
	        "  --dim D          model dimension (default 1000000)\n"
	        "  --ratio R        kept fraction rho in (0, 1] (default 0.01)\n"
	        "  --values V       q8 | q4 | f32 (default q8)\n"
	        "  --block B        values per scale, 1..65535 (default %u)\n"
	        "  --select S       topk | randk (default topk)\n"
	        "  --reps N         repetitions, median reported (default 5)\n",
	        CX_BLOCK_DEFAULT);
}

/* The seeded ChaCha20 rng read 512 bytes at a time: rng_u64 costs ~27 ns
 * a call (a wipe per 8 bytes), more than the quantizer itself. */
typedef struct brng {
	rng *r;
	uint8_t buf[512];
	size_t pos;
} brng;

static uint64_t
rng_fn(void *ctx)
{
	brng *b = ctx;
	uint64_t v = 0;

	if (b->pos == sizeof b->buf) {
		rng_bytes(b->r, b->buf, sizeof b->buf);
		b->pos = 0;
	}
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)b->buf[b->pos + (size_t)i] << (8 * i);
	b->pos += 8;
	return v;
}

/* What one timed call does; returns nonzero on failure. */
typedef struct job job;
typedef int (*job_fn)(job *j);

struct job {
	const cx_config *cfg;
	uint32_t dim, k;
	const float *x;
	float *residual;
	cx_work *work;
	brng *r;
	uint8_t *buf;
	size_t cap;
	long len;
	const uint32_t *idx; /* for encode only */
	const float *val;
	uint32_t *scratch;
	double *acc;
	uint8_t *wire, *copy;
	const uint8_t *const *wires; /* a round of ROUND_UPDATES dense updates */
	const double *weights;
};

/* Dense updates in one server round (K = 10, as in the FedAvg paper). */
#define ROUND_UPDATES 10

static int
do_encode_ef(job *j)
{
	j->len = cx_encode_ef(j->cfg, j->x, j->residual, j->dim, rng_fn, j->r, j->work, j->buf,
	                      j->cap);
	return j->len < 0;
}

static int
do_encode(job *j)
{
	return cx_encode(j->dim, j->k, j->idx, j->val, j->cfg, rng_fn, j->r, j->buf, j->cap,
	                 NULL) < 0;
}

static int
do_accumulate(job *j)
{
	return cx_accumulate(j->buf, (size_t)j->len, j->dim, 1.0, j->acc, j->scratch) != j->len;
}

static int
do_dense(job *j)
{
	cx_accumulate_dense(j->wire, j->dim, 1.0, j->acc);
	return 0;
}


static void *(*volatile copy_fn)(void *, const void *, size_t) = memcpy;

/* The server's close: all of a round's dense updates into acc at once. */
static int
do_dense_round(job *j)
{
	for (int u = 0; u < ROUND_UPDATES; u++)
		cx_accumulate_dense(j->wires[u], j->dim, j->weights[u], j->acc);
	return 0;
}

/* memcpy of the same ROUND_UPDATES wire buffers. */
static int
do_memcpy_round(job *j)
{
	for (int u = 0; u < ROUND_UPDATES; u++)
		copy_fn(j->copy, j->wires[u], (size_t)j->dim * 4);
	return 0;
}

static int
do_memcpy(job *j)
{
	copy_fn(j->copy, j->wire, (size_t)j->dim * 4);
	return 0;
}

/* Median rate of `units` per call over reps repetitions; -1 on failure. */
static double
rate(job *j, job_fn fn, double units, long reps)
{
	double r[CX_MAX_REPS];

	for (long rep = -1; rep < reps; rep++) { /* rep -1 warms up */
		double t0 = bench_now_s(), t;
		long calls = 0;

		do {
			if (fn(j))
				return -1.0;
			calls++;
			t = bench_now_s() - t0;
		} while (t < MIN_SECONDS);
		if (rep >= 0)
			r[rep] = units * (double)calls / t;
	}
	return bench_median(r, reps);
}

static int
parse_double(const char *flag, const char *s, double lo, double hi, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
		fprintf(stderr, "shoal-bench codec: %s wants a number in [%g, %g], got '%s'\n", flag,
		        lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

int
bench_codec(int argc, char **argv)
{
	cx_config cfg = cx_config_default(0.01);
	double dimd = 1e6, blockd = CX_BLOCK_DEFAULT, repsd = 5, v;
	const char *values = "q8", *select = "topk";
	uint32_t dim, k, kept;
	long reps;
	size_t cap;
	int ret = 1;
	float *x = NULL, *residual = NULL;
	double *acc = NULL;
	uint8_t *buf = NULL, *wire = NULL, *copy = NULL;
	uint32_t *scratch = NULL, *idx0 = NULL;
	float *val0 = NULL;
	cx_work work = { 0 };
	rng r;
	brng br;
	job j;
	json_t *pj = NULL, *pd = NULL;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *nx = NULL;
		int head = bench_option_value("codec", argc, argv, &i, usage, &nx);

		if (head >= 0)
			return head;
		if (strcmp(a, "--dim") == 0) {
			if (parse_double(a, nx, 1, 1 << 28, &dimd))
				return 2;
		} else if (strcmp(a, "--ratio") == 0) {
			if (parse_double(a, nx, 1e-9, 1, &v))
				return 2;
			cfg.ratio = v;
		} else if (strcmp(a, "--block") == 0) {
			if (parse_double(a, nx, 1, CX_BLOCK_MAX, &blockd))
				return 2;
		} else if (strcmp(a, "--reps") == 0) {
			if (parse_double(a, nx, 1, CX_MAX_REPS, &repsd))
				return 2;
		} else if (strcmp(a, "--values") == 0) {
			values = nx;
			if (strcmp(nx, "q8") == 0)
				cfg.values = CX_VALUES_Q8;
			else if (strcmp(nx, "q4") == 0)
				cfg.values = CX_VALUES_Q4;
			else if (strcmp(nx, "f32") == 0)
				cfg.values = CX_VALUES_F32;
			else {
				fprintf(stderr, "shoal-bench codec: --values wants q8, q4 or f32\n");
				return 2;
			}
		} else if (strcmp(a, "--select") == 0) {
			select = nx;
			if (strcmp(nx, "topk") == 0)
				cfg.select = CX_SELECT_TOPK;
			else if (strcmp(nx, "randk") == 0)
				cfg.select = CX_SELECT_RANDK;
			else {
				fprintf(stderr, "shoal-bench codec: --select wants topk or randk\n");
				return 2;
			}
		} else {
			fprintf(stderr, "shoal-bench codec: unknown option '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	dim = (uint32_t)dimd;
	cfg.block = (uint32_t)blockd;
	reps = (long)repsd;
	k = cx_k_for_ratio(dim, cfg.ratio);

	rng_init(&r, 20240601, 0);
	br.r = &r;
	br.pos = sizeof br.buf;
	x = malloc((size_t)dim * sizeof *x);
	residual = calloc(dim, sizeof *residual);
	acc = calloc(dim, sizeof *acc);
	scratch = malloc((size_t)dim * sizeof *scratch);
	idx0 = malloc((size_t)dim * sizeof *idx0);
	val0 = malloc((size_t)dim * sizeof *val0);
	wire = malloc((size_t)dim * 4);
	copy = malloc((size_t)dim * 4);
	cap = cx_encoded_size_max(dim, cfg.select == CX_SELECT_RANDK ? dim : k, &cfg);
	buf = malloc(cap);
	if (x == NULL || residual == NULL || acc == NULL || scratch == NULL ||
	    idx0 == NULL || val0 == NULL || wire == NULL || copy == NULL || buf == NULL ||
	    cx_work_init(&work, dim) != SHOAL_OK) {
		fprintf(stderr, "shoal-bench codec: out of memory\n");
		goto done;
	}
	for (uint32_t i = 0; i < dim; i++) { /* Laplace(0, 1e-3) */
		double u = ((double)(rng_u64(&r) >> 11) + 0.5) * 0x1p-53;
		x[i] = (float)(u < 0.5 ? 1e-3 * log(2 * u) : -1e-3 * log(2 * (1 - u)));
		uint32_t bits;
		memcpy(&bits, &x[i], 4);
		for (int b = 0; b < 4; b++)
			wire[4 * (size_t)i + (size_t)b] = (uint8_t)(bits >> (8 * b));
	}

	j = (job){ .cfg = &cfg, .dim = dim, .k = k, .x = x, .residual = residual, .work = &work,
	           .r = &br, .buf = buf, .cap = cap, .scratch = scratch, .acc = acc,
	           .wire = wire, .copy = copy };
	pj = json_pack("{s:i, s:f, s:s, s:i, s:s}", "dim", (json_int_t)dim, "ratio", cfg.ratio,
	               "values", values, "block",
	               (json_int_t)(cfg.values == CX_VALUES_F32 ? 0 : cfg.block), "select", select);
	pd = json_pack("{s:i}", "dim", (json_int_t)dim);

	/* Size, from one encoding of the fresh delta (residual 0). */
	if (do_encode_ef(&j)) {
		fprintf(stderr, "shoal-bench codec: encode failed: %s\n", shoal_strerror((int)j.len));
		goto done;
	}
	kept = (uint32_t)buf[10] | (uint32_t)buf[11] << 8 | (uint32_t)buf[12] << 16 |
	       (uint32_t)buf[13] << 24;
	{
		uint32_t ib = (uint32_t)buf[14] | (uint32_t)buf[15] << 8 | (uint32_t)buf[16] << 16 |
		              (uint32_t)buf[17] << 24;
		double bits = kept ? 8.0 * ib / kept : 0, bound = kept ? cx_index_bound_bits(dim, kept) / kept : 0;
		static const char *imode[] = { "dense", "rice", "bitmap" };

		fprintf(stderr,
		        "codec: d=%u rho=%g %s block=%u %s: k=%u, %ld bytes (%.2fx smaller than "
		        "float32), index %s b=%u %u bytes\n",
		        dim, cfg.ratio, values, cfg.block, select, kept, j.len,
		        4.0 * dim / (double)j.len, buf[2] < 3 ? imode[buf[2]] : "?", buf[3], ib);
		bench_emit("codec_bytes_per_param", pj, (double)j.len / dim, "bytes/param");
		bench_emit("codec_compression", pj, 4.0 * dim / (double)j.len, "x");
		bench_emit("codec_index_bits", pj, bits, "bits/kept");
		bench_emit("codec_index_bound", pj, bound, "bits/kept");
		bench_emit("codec_index_vs_bound", pj, bound > 0 ? bits / bound : 0, "ratio");
	}

	/* Encode: the whole client step (u = x + r, select over d, quantize,
	 * index coding, residual update); then quantize + index coding alone. */
	v = rate(&j, do_encode_ef, (double)kept, reps);
	fprintf(stderr, "codec: encode_ef %.3g entries/s\n", v);
	bench_emit("codec_encode_ef", pj, v, "entries/s");
	if (cx_topk(x, dim, k, idx0) != SHOAL_OK)
		goto done;
	for (uint32_t i = 0; i < k; i++)
		val0[i] = x[idx0[i]];
	j.idx = idx0;
	j.val = val0;
	v = rate(&j, do_encode, (double)k, reps);
	fprintf(stderr, "codec: encode (quantize + index) %.3g entries/s\n", v);
	bench_emit("codec_encode", pj, v, "entries/s");

	/* Decode + validate + accumulate into the server's double acc[dim]. */
	if ((j.len = cx_encode(dim, k, idx0, val0, &cfg, rng_fn, &br, buf, cap, NULL)) < 0)
		goto done;
	v = rate(&j, do_accumulate, (double)k, reps);
	fprintf(stderr, "codec: decode+accumulate %.3g entries/s\n", v);
	bench_emit("codec_decode_accumulate", pj, v, "entries/s");

	/* Dense float32 accumulate vs memcpy of the same wire bytes. */
	{
		double bytes = 4.0 * dim, dd, mc;

		mc = rate(&j, do_memcpy, bytes, reps);
		dd = rate(&j, do_dense, bytes, reps);
		fprintf(stderr,
		        "codec: dense accumulate %.2f GB/s, memcpy %.2f GB/s of wire bytes\n",
		        dd / 1e9, mc / 1e9);
		bench_emit("codec_memcpy", pd, mc, "bytes/s");
		bench_emit("codec_dense_accumulate", pd, dd, "bytes/s");
		bench_emit("codec_dense_vs_memcpy", pd, dd / mc, "fraction");
	}

	/* The server's dense path as it runs: a round of ROUND_UPDATES distinct
	 * updates accumulated at close, against memcpy of the same buffers. */
	{
		uint8_t *w[ROUND_UPDATES] = {NULL};
		double wt[ROUND_UPDATES], bytes = 4.0 * dim * ROUND_UPDATES, dr, mr;
		int ok = 1;

		for (int u = 0; u < ROUND_UPDATES && ok; u++) {
			if ((w[u] = malloc((size_t)dim * 4)) == NULL)
				ok = 0;
			else
				memcpy(w[u], j.wire, (size_t)dim * 4);
			wt[u] = 600.0;
		}
		if (ok) {
			j.wires = (const uint8_t *const *)w;
			j.weights = wt;
			mr = rate(&j, do_memcpy_round, bytes, reps);
			dr = rate(&j, do_dense_round, bytes, reps);
			fprintf(stderr,
			        "codec: dense round of %d updates %.2f GB/s, memcpy %.2f GB/s of wire "
			        "bytes\n", ROUND_UPDATES, dr / 1e9, mr / 1e9);
			json_t *pr = json_pack("{s:i, s:i}", "dim", (int)dim, "updates", ROUND_UPDATES);
			bench_emit("codec_memcpy_round", pr, mr, "bytes/s");
			bench_emit("codec_dense_round_accumulate", pr, dr, "bytes/s");
			bench_emit("codec_dense_round_vs_memcpy", pr, dr / mr, "fraction");
			json_decref(pr);
		}
		for (int u = 0; u < ROUND_UPDATES; u++)
			free(w[u]);
	}
	ret = 0;
done:
	json_decref(pj);
	json_decref(pd);
	rng_fini(&r);
	cx_work_fini(&work);
	free(x);
	free(residual);
	free(acc);
	free(scratch);
	free(idx0);
	free(val0);
	free(wire);
	free(copy);
	free(buf);
	return ret;
}
