/* ckpt.c - the server checkpoint file (see ckpt.h; mirrored in PROTOCOL.md,
 * "Server checkpoint file").
 *
 * Every integer is little-endian; f32/f64 are the IEEE 754 bit patterns as
 * u32/u64. Fields are written one by one, never as a memcpy'd struct.
 *
 *   header   4  magic "SHCK"
 *            4  u32 format version (1)
 *            8  u64 length of the whole file in bytes, trailer included
 *   sections, each:
 *            4  tag (four ASCII letters)
 *            4  u32 payload length L
 *            L  payload
 *   trailer 32  BLAKE2b-256 (unkeyed) of every byte before it
 *
 * A reader checks magic, length, version, then the checksum, and only then
 * looks at sections. Sections may come in any order; a reader skips tags it
 * does not know (a later writer may add some) and refuses duplicates.
 * Version 1 writes, in this order:
 *
 *   CONF  the run the state belongs to (a resume under other settings is
 *         refused): u8 n, n bytes model name | u32 dim | u64 seed |
 *         u8 server optimizer (0 fedavg, 1 fedavgm, 2 fedadam, 3 fedyogi) |
 *         u8 q8 downlink (0/1) | u8 secure aggregation (0 off, 1 full,
 *         2 plus) | u8 DP (0 off, 1 central, 2 distributed) | u8 sampling
 *         (0 fixed, 1 Poisson) | f64 sample rate | f64 clip | f64 noise
 *         multiplier in effect | f64 delta            (50 + n bytes)
 *   PROG  u32 last round closed (completed or abandoned; 0: none) |
 *         u32 model version | u8 finished | f64 test accuracy | f64 test
 *         loss (NaN: not evaluated)                   (25 bytes)
 *   MODL  dim x f32: the global model clients hold
 *   DOWN  only with the q8 downlink: dim x f32 shadow model (what the
 *         optimizer moves) | u32 n | n bytes: the q8 delta from version-1
 *         to version (PROTOCOL.md 12.1; n = 0: none yet)
 *   OPTM  u8 flags (bit 0: first moment m, bit 1: second moment v) |
 *         [dim x f32 m] | [dim x f32 v]
 *   CODC  f32 shared scale of the next secure round | u8 flags (bit 0:
 *         the change below is valid, bit 1: a change vector follows) |
 *         [dim x f32 last public change of the model]
 *   PRIV  only with DP: u64 rounds charged | u32 n orders | f64 delta |
 *         n x f64 orders | n x f64 RDP folded in | n x f64 RDP of one step
 *         of the cached mechanism | u64 steps of it not yet folded in |
 *         f64 its q | f64 its sigma (NaN: not a subsampled Gaussian) |
 *         u8 cached (0/1) | f64 clip bound C in use | f64 noise stddev
 *         in use (adaptive clipping moves both)
 *   CLNT  u32 n | n x (u8 m, m bytes name, u32 examples, u32 capability
 *         bits of HELLO "cx"); client id = position + 1
 *   KEYS  only when a client has an identity key (PROTOCOL.md section 16;
 *         a reader without it skips the section): u32 n | n x (u32 client
 *         id, increasing | u8 flags, bit 0: enrolled with a token | 32 bytes
 *         Ed25519 public key | [32 bytes BLAKE2b-256 of the token, bit 0])
 *
 * Example: a hypothetical 2-parameter model "m", seed 7, FedAvg, no q8
 * downlink, no secure aggregation or DP, after round 3 (version 4, test
 * accuracy 0.5, loss 1.0), parameters (1.0, -2.0), one client "a" with 600
 * examples and capability bits 0x0f; 200 bytes:
 *
 *   53 48 43 4b 01 00 00 00  c8 00 00 00 00 00 00 00   "SHCK", version 1, 200 bytes
 *   43 4f 4e 46 33 00 00 00  01 6d 02 00 00 00 07 00   CONF, L = 51: "m", dim 2, seed 7
 *   00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00     (7 bytes), optimizer 0,
 *   00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00     downlink 0, secagg 0, DP 0,
 *   00 00 00 00 00 00 00 00  00 00 00 50 52 4f 47 19     sampling 0, 4 x f64 0.0 | PROG,
 *   00 00 00 03 00 00 00 04  00 00 00 00 00 00 00 00     L = 25: round 3, version 4, 0,
 *   00 00 e0 3f 00 00 00 00  00 00 f0 3f 4d 4f 44 4c     0.5, 1.0 | MODL,
 *   08 00 00 00 00 00 80 3f  00 00 00 c0 4f 50 54 4d     L = 8: 1.0f, -2.0f | OPTM,
 *   01 00 00 00 00 43 4f 44  43 05 00 00 00 00 00 00     L = 1: 0 | CODC, L = 5: 0.0f, 0
 *   00 00 43 4c 4e 54 0e 00  00 00 01 00 00 00 01 61     | CLNT, L = 14: 1 client, "a",
 *   58 02 00 00 0f 00 00 00  e0 3e 8b 9c e2 db 26 e0     600, 0x0f | BLAKE2b-256 of
 *   5e e8 af 63 dd 5f 74 87  54 4d bb 5f 76 b4 13 06     the 168 bytes before
 *   15 ab 8b 9c cb 76 61 ef
 *
 * (tests/test_ckpt.c rebuilds it and checks every byte.) */
#include "server/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "common/log.h"

_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE 754 binary32/64");

/* ---- bytes ---------------------------------------------------------------- */

static void
put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* A growing output buffer; oom sticks. */
typedef struct wbuf {
	uint8_t *p;
	size_t len, cap;
	bool oom;
} wbuf;

static uint8_t *
w_reserve(wbuf *w, size_t n)
{
	if (w->oom)
		return NULL;
	if (n > w->cap - w->len) {
		size_t cap = w->cap ? w->cap : 4096;
		while (cap - w->len < n) {
			if (cap > SIZE_MAX / 2) {
				w->oom = true;
				return NULL;
			}
			cap *= 2;
		}
		uint8_t *p = realloc(w->p, cap);
		if (p == NULL) {
			w->oom = true;
			return NULL;
		}
		w->p = p;
		w->cap = cap;
	}
	w->len += n;
	return w->p + w->len - n;
}

static void
w_bytes(wbuf *w, const void *src, size_t n)
{
	uint8_t *p = w_reserve(w, n);
	if (p != NULL && n > 0)
		memcpy(p, src, n);
}

static void
w_u8(wbuf *w, uint8_t v)
{
	w_bytes(w, &v, 1);
}

static void
w_u32(wbuf *w, uint32_t v)
{
	uint8_t *p = w_reserve(w, 4);
	if (p != NULL)
		put32(p, v);
}

static void
w_u64(wbuf *w, uint64_t v)
{
	w_u32(w, (uint32_t)v);
	w_u32(w, (uint32_t)(v >> 32));
}

static void
w_f64(wbuf *w, double d)
{
	uint64_t u;
	memcpy(&u, &d, sizeof u);
	w_u64(w, u);
}

static void
w_f32v(wbuf *w, const float *v, size_t n)
{
	uint8_t *p = w_reserve(w, 4 * n);
	for (size_t i = 0; p != NULL && i < n; i++) {
		uint32_t u;
		memcpy(&u, &v[i], sizeof u);
		put32(p + 4 * i, u);
	}
}

static void
w_f64v(wbuf *w, const double *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		w_f64(w, v[i]);
}

/* Starts a section; returns where its payload begins. */
static size_t
w_begin(wbuf *w, const char tag[4])
{
	w_bytes(w, tag, 4);
	w_u32(w, 0);
	return w->len;
}

static void
w_end(wbuf *w, size_t start)
{
	if (w->oom)
		return;
	if (w->len - start > UINT32_MAX) {
		w->oom = true; /* cannot happen within SRV_CKPT_MAX_DIM */
		return;
	}
	put32(w->p + start - 4, (uint32_t)(w->len - start));
}

/* Reading a payload; bad sticks once anything runs past the end. */
typedef struct rbuf {
	const uint8_t *p;
	size_t len, off;
	bool bad;
} rbuf;

static const uint8_t *
r_take(rbuf *r, size_t n)
{
	if (r->bad || n > r->len - r->off) {
		r->bad = true;
		return NULL;
	}
	r->off += n;
	return r->p + r->off - n;
}

static uint8_t
r_u8(rbuf *r)
{
	const uint8_t *q = r_take(r, 1);
	return q != NULL ? q[0] : 0;
}

static uint32_t
r_u32(rbuf *r)
{
	const uint8_t *q = r_take(r, 4);
	return q != NULL ? get32(q) : 0;
}

static uint64_t
r_u64(rbuf *r)
{
	const uint8_t *q = r_take(r, 8);
	return q != NULL ? get64(q) : 0;
}

static float
r_f32(rbuf *r)
{
	uint32_t u = r_u32(r);
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

static double
r_f64(rbuf *r)
{
	uint64_t u = r_u64(r);
	double d;
	memcpy(&d, &u, sizeof d);
	return d;
}

/* A new array of n floats read from r (NULL on error: r->bad or out of
 * memory, *oom set). */
static float *
r_f32v(rbuf *r, size_t n, bool *oom)
{
	const uint8_t *q = r_take(r, 4 * n);
	float *v;

	if (q == NULL)
		return NULL;
	if ((v = malloc(n ? 4 * n : 1)) == NULL) {
		*oom = true;
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t u = get32(q + 4 * i);
		memcpy(&v[i], &u, sizeof u);
	}
	return v;
}

static void
r_f64v(rbuf *r, double *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		v[i] = r_f64(r);
}

static void
say(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
say(char *why, size_t n, const char *fmt, ...)
{
	va_list ap;

	if (why == NULL || n == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, n, fmt, ap);
	va_end(ap);
}

/* ---- encoding -------------------------------------------------------------- */

void
srv_ckpt_view_accountant(srv_ckpt *c, const dp_accountant *a)
{
	c->acc_n = (uint32_t)a->n;
	c->acc_delta = a->delta;
	c->acc_orders = a->orders;
	c->acc_rdp = a->rdp;
	c->acc_step = a->step;
	c->acc_step_n = a->step_n;
	c->acc_step_q = a->step_q;
	c->acc_step_sigma = a->step_sigma;
	c->acc_step_ok = a->step_ok;
}

shoal_err
srv_ckpt_encode(const srv_ckpt *c, uint8_t **out, size_t *len)
{
	wbuf w = {0};
	size_t nm = strlen(c->model), sec;
	uint8_t *hash;

	*out = NULL;
	*len = 0;
	if (nm == 0 || nm > MSG_MODEL_MAX || c->dim == 0 || c->dim > SRV_CKPT_MAX_DIM ||
	    c->params == NULL || (c->downlink_q8 && c->shadow == NULL) ||
	    (c->dq_len > 0 && c->dq == NULL) || c->n_clients > SRV_CKPT_MAX_CLIENTS ||
	    (c->n_clients > 0 && c->clients == NULL) || (c->n_keys > 0 && c->keys == NULL) ||
	    (c->dp != 0 && (c->acc_n == 0 || c->acc_n > DP_MAX_ORDERS || c->acc_orders == NULL ||
	                    c->acc_rdp == NULL || c->acc_step == NULL)))
		return SHOAL_EINVAL;
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;

	w_bytes(&w, SRV_CKPT_MAGIC, 4);
	w_u32(&w, SRV_CKPT_VERSION);
	w_u64(&w, 0); /* the length, patched below */

	sec = w_begin(&w, "CONF");
	w_u8(&w, (uint8_t)nm);
	w_bytes(&w, c->model, nm);
	w_u32(&w, c->dim);
	w_u64(&w, c->seed);
	w_u8(&w, (uint8_t)c->opt_kind);
	w_u8(&w, c->downlink_q8);
	w_u8(&w, (uint8_t)c->secagg);
	w_u8(&w, (uint8_t)c->dp);
	w_u8(&w, (uint8_t)c->sampling);
	w_f64(&w, c->sample_rate);
	w_f64(&w, c->clip);
	w_f64(&w, c->noise_multiplier);
	w_f64(&w, c->delta);
	w_end(&w, sec);

	sec = w_begin(&w, "PROG");
	w_u32(&w, c->round);
	w_u32(&w, c->version);
	w_u8(&w, c->finished);
	w_f64(&w, c->accuracy);
	w_f64(&w, c->loss);
	w_end(&w, sec);

	sec = w_begin(&w, "MODL");
	w_f32v(&w, c->params, c->dim);
	w_end(&w, sec);

	if (c->downlink_q8) {
		sec = w_begin(&w, "DOWN");
		w_f32v(&w, c->shadow, c->dim);
		w_u32(&w, c->dq_len);
		w_bytes(&w, c->dq, c->dq_len);
		w_end(&w, sec);
	}

	sec = w_begin(&w, "OPTM");
	w_u8(&w, (uint8_t)((c->opt_m != NULL) | (c->opt_v != NULL) << 1));
	if (c->opt_m != NULL)
		w_f32v(&w, c->opt_m, c->dim);
	if (c->opt_v != NULL)
		w_f32v(&w, c->opt_v, c->dim);
	w_end(&w, sec);

	sec = w_begin(&w, "CODC");
	w_f32v(&w, &c->sa_scale, 1);
	w_u8(&w, (uint8_t)(c->have_change | (c->change != NULL) << 1));
	if (c->change != NULL)
		w_f32v(&w, c->change, c->dim);
	w_end(&w, sec);

	if (c->dp != 0) {
		sec = w_begin(&w, "PRIV");
		w_u64(&w, c->dp_steps);
		w_u32(&w, c->acc_n);
		w_f64(&w, c->acc_delta);
		w_f64v(&w, c->acc_orders, c->acc_n);
		w_f64v(&w, c->acc_rdp, c->acc_n);
		w_f64v(&w, c->acc_step, c->acc_n);
		w_u64(&w, c->acc_step_n);
		w_f64(&w, c->acc_step_q);
		w_f64(&w, c->acc_step_sigma);
		w_u8(&w, c->acc_step_ok);
		w_f64(&w, c->dp_clip);
		w_f64(&w, c->dp_sigma);
		w_end(&w, sec);
	}

	sec = w_begin(&w, "CLNT");
	w_u32(&w, c->n_clients);
	for (uint32_t i = 0; i < c->n_clients; i++) {
		const srv_ckpt_client *k = &c->clients[i];
		size_t n = strnlen(k->name, sizeof k->name);
		if (n == 0 || n > MSG_NAME_MAX) {
			free(w.p);
			return SHOAL_EINVAL;
		}
		w_u8(&w, (uint8_t)n);
		w_bytes(&w, k->name, n);
		w_u32(&w, k->n_examples);
		w_u32(&w, k->cx_caps);
	}
	w_end(&w, sec);

	if (c->n_keys > 0) {
		sec = w_begin(&w, "KEYS");
		w_u32(&w, c->n_keys);
		for (uint32_t i = 0; i < c->n_keys; i++) {
			const srv_ckpt_key *k = &c->keys[i];
			if (k->id == 0 || k->id > c->n_clients || (i > 0 && k->id <= c->keys[i - 1].id)) {
				free(w.p);
				return SHOAL_EINVAL;
			}
			w_u32(&w, k->id);
			w_u8(&w, k->enrolled);
			w_bytes(&w, k->pk, sizeof k->pk);
			if (k->enrolled)
				w_bytes(&w, k->token, sizeof k->token);
		}
		w_end(&w, sec);
	}

	if ((hash = w_reserve(&w, SRV_CKPT_HASH_BYTES)) == NULL) {
		free(w.p);
		return SHOAL_ENOMEM;
	}
	put32(w.p + 8, (uint32_t)w.len);
	put32(w.p + 12, (uint32_t)((uint64_t)w.len >> 32));
	crypto_generichash(hash, SRV_CKPT_HASH_BYTES, w.p, w.len - SRV_CKPT_HASH_BYTES, NULL, 0);
	*out = w.p;
	*len = w.len;
	return SHOAL_OK;
}

/* ---- decoding -------------------------------------------------------------- */

void
srv_ckpt_fini(srv_ckpt *c)
{
	if (c->owned) {
		free(c->params);
		free(c->shadow);
		free(c->dq);
		free(c->opt_m);
		free(c->opt_v);
		free(c->change);
		free(c->acc_orders); /* rdp and step live in the same block */
		free(c->clients);
		free(c->keys);
	}
	memset(c, 0, sizeof *c);
}

enum { T_CONF, T_PROG, T_MODL, T_DOWN, T_OPTM, T_CODC, T_PRIV, T_CLNT, T_KEYS, T_COUNT };
static const char tags[T_COUNT][5] = {"CONF", "PROG", "MODL", "DOWN",
                                       "OPTM", "CODC", "PRIV", "CLNT", "KEYS"};

/* Parses one known section into c; false if it is malformed (why set). */
static bool
parse_section(int t, rbuf *r, srv_ckpt *c, bool *oom, char *why, size_t why_len)
{
	size_t dim = c->dim;
	uint8_t f;

	switch (t) {
	case T_CONF: {
		uint8_t n = r_u8(r);
		const uint8_t *name = r_take(r, n);
		if (name == NULL || n == 0 || n > MSG_MODEL_MAX || memchr(name, 0, n) != NULL) {
			say(why, why_len, "section CONF: bad model name");
			return false;
		}
		memcpy(c->model, name, n);
		c->model[n] = '\0';
		c->dim = r_u32(r);
		c->seed = r_u64(r);
		c->opt_kind = r_u8(r);
		f = r_u8(r);
		c->downlink_q8 = f != 0;
		c->secagg = r_u8(r);
		c->dp = r_u8(r);
		c->sampling = r_u8(r);
		c->sample_rate = r_f64(r);
		c->clip = r_f64(r);
		c->noise_multiplier = r_f64(r);
		c->delta = r_f64(r);
		if (!r->bad && (c->dim == 0 || c->dim > SRV_CKPT_MAX_DIM || f > 1)) {
			say(why, why_len, "section CONF: dimension %" PRIu32 " or flags out of range",
			    c->dim);
			return false;
		}
		break;
	}
	case T_PROG:
		c->round = r_u32(r);
		c->version = r_u32(r);
		f = r_u8(r);
		c->finished = f != 0;
		c->accuracy = r_f64(r);
		c->loss = r_f64(r);
		if (!r->bad && (f > 1 || c->version == 0)) {
			say(why, why_len, "section PROG: model version 0 or a bad flag");
			return false;
		}
		break;
	case T_MODL:
		c->params = r_f32v(r, dim, oom);
		break;
	case T_DOWN:
		c->shadow = r_f32v(r, dim, oom);
		c->dq_len = r_u32(r);
		if (!r->bad && c->dq_len > 0) {
			const uint8_t *q = r_take(r, c->dq_len);
			if (q != NULL && (c->dq = malloc(c->dq_len)) == NULL)
				*oom = true;
			else if (q != NULL)
				memcpy(c->dq, q, c->dq_len);
		}
		break;
	case T_OPTM:
		f = r_u8(r);
		if (f > 3) {
			say(why, why_len, "section OPTM: unknown flags 0x%02x", f);
			return false;
		}
		if (f & 1)
			c->opt_m = r_f32v(r, dim, oom);
		if (f & 2)
			c->opt_v = r_f32v(r, dim, oom);
		break;
	case T_CODC:
		c->sa_scale = r_f32(r);
		f = r_u8(r);
		if (f > 3) {
			say(why, why_len, "section CODC: unknown flags 0x%02x", f);
			return false;
		}
		c->have_change = f & 1;
		if (f & 2)
			c->change = r_f32v(r, dim, oom);
		break;
	case T_PRIV: {
		c->dp_steps = r_u64(r);
		uint32_t n = r_u32(r);
		if (!r->bad && (n == 0 || n > DP_MAX_ORDERS)) {
			say(why, why_len, "section PRIV: %" PRIu32 " orders", n);
			return false;
		}
		c->acc_delta = r_f64(r);
		if (r->bad || 24 * (size_t)n > r->len - r->off) {
			r->bad = true; /* more orders than the section holds */
			break;
		}
		if ((c->acc_orders = malloc(3 * (size_t)n * sizeof(double))) == NULL) {
			*oom = true;
			break;
		}
		c->acc_n = n;
		c->acc_rdp = c->acc_orders + n;
		c->acc_step = c->acc_orders + 2 * (size_t)n;
		r_f64v(r, c->acc_orders, n);
		r_f64v(r, c->acc_rdp, n);
		r_f64v(r, c->acc_step, n);
		c->acc_step_n = r_u64(r);
		c->acc_step_q = r_f64(r);
		c->acc_step_sigma = r_f64(r);
		f = r_u8(r);
		c->acc_step_ok = f != 0;
		c->dp_clip = r_f64(r);
		c->dp_sigma = r_f64(r);
		if (!r->bad && f > 1) {
			say(why, why_len, "section PRIV: bad flag");
			return false;
		}
		break;
	}
	case T_CLNT: {
		uint32_t n = r_u32(r);
		if (!r->bad && n > SRV_CKPT_MAX_CLIENTS) {
			say(why, why_len, "section CLNT: %" PRIu32 " clients", n);
			return false;
		}
		/* each entry takes at least 10 bytes: no allocation beyond the file */
		if (r->bad || 10 * (size_t)n > r->len - r->off) {
			r->bad = true; /* more clients than the section holds */
			break;
		}
		if (n > 0 && (c->clients = calloc(n, sizeof *c->clients)) == NULL) {
			*oom = true;
			break;
		}
		c->n_clients = n;
		for (uint32_t i = 0; i < n && !r->bad; i++) {
			srv_ckpt_client *k = &c->clients[i];
			uint8_t m = r_u8(r);
			const uint8_t *name = r_take(r, m);
			if (name != NULL && (m == 0 || m > MSG_NAME_MAX || memchr(name, 0, m) != NULL)) {
				say(why, why_len, "section CLNT: client %" PRIu32 " has a bad name", i + 1);
				return false;
			}
			if (name != NULL)
				memcpy(k->name, name, m);
			k->n_examples = r_u32(r);
			k->cx_caps = r_u32(r);
		}
		break;
	}
	case T_KEYS: {
		/* after CLNT (section order above), so the ids can be checked */
		uint32_t n = r_u32(r);
		if (!r->bad && (n == 0 || n > c->n_clients)) {
			say(why, why_len, "section KEYS: %" PRIu32 " keys for %" PRIu32 " clients", n,
			    c->n_clients);
			return false;
		}
		/* each entry takes at least 37 bytes: no allocation beyond the file */
		if (r->bad || 37 * (size_t)n > r->len - r->off) {
			r->bad = true; /* more keys than the section holds */
			break;
		}
		if ((c->keys = calloc(n, sizeof *c->keys)) == NULL) {
			*oom = true;
			break;
		}
		c->n_keys = n;
		for (uint32_t i = 0; i < n && !r->bad; i++) {
			srv_ckpt_key *k = &c->keys[i];
			k->id = r_u32(r);
			f = r_u8(r);
			const uint8_t *pk = r_take(r, sizeof k->pk);
			if (!r->bad && (f > 1 || k->id == 0 || k->id > c->n_clients ||
			                (i > 0 && k->id <= c->keys[i - 1].id))) {
				say(why, why_len, "section KEYS: entry %" PRIu32 " (client %" PRIu32
				    ") is out of order or has bad flags", i + 1, k->id);
				return false;
			}
			if (pk != NULL)
				memcpy(k->pk, pk, sizeof k->pk);
			k->enrolled = f == 1;
			if (k->enrolled) {
				const uint8_t *tok = r_take(r, sizeof k->token);
				if (tok != NULL)
					memcpy(k->token, tok, sizeof k->token);
			}
		}
		break;
	}
	}
	if (*oom)
		return true; /* the caller reports it */
	if (r->bad || r->off != r->len) {
		say(why, why_len, "section %s: %zu bytes where %s", tags[t], r->len,
		    r->bad ? "more were needed" : "fewer belong");
		return false;
	}
	return true;
}

shoal_err
srv_ckpt_decode(const uint8_t *buf, size_t len, srv_ckpt *out, char *why, size_t why_len)
{
	const uint8_t *sec[T_COUNT] = {NULL};
	uint32_t sec_len[T_COUNT] = {0};
	uint8_t hash[SRV_CKPT_HASH_BYTES];
	shoal_err e = SHOAL_EMALFORMED;
	bool oom = false;
	uint64_t total;
	size_t off;

	memset(out, 0, sizeof *out);
	if (len >= 4 && memcmp(buf, SRV_CKPT_MAGIC, 4) != 0) {
		say(why, why_len, "bad magic: not a shoal server checkpoint");
		return SHOAL_EFORMAT;
	}
	if (len < SRV_CKPT_HEADER_BYTES) {
		say(why, why_len, "truncated: %zu bytes, shorter than the %u-byte header", len,
		    SRV_CKPT_HEADER_BYTES);
		return SHOAL_ETRUNC;
	}
	total = get64(buf + 8);
	if (total > len) {
		say(why, why_len, "truncated: %zu of %" PRIu64 " bytes (an interrupted write?)", len,
		    total);
		return SHOAL_ETRUNC;
	}
	if (get32(buf + 4) != SRV_CKPT_VERSION) {
		say(why, why_len, "format version %" PRIu32 "; this build reads version %u",
		    get32(buf + 4), SRV_CKPT_VERSION);
		return SHOAL_EVERSION;
	}
	if (total != len || total < SRV_CKPT_HEADER_BYTES + SRV_CKPT_HASH_BYTES) {
		say(why, why_len, "%zu bytes where the header declares %" PRIu64, len, total);
		return SHOAL_EFORMAT;
	}
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;
	crypto_generichash(hash, sizeof hash, buf, len - SRV_CKPT_HASH_BYTES, NULL, 0);
	if (sodium_memcmp(hash, buf + len - SRV_CKPT_HASH_BYTES, sizeof hash) != 0) {
		say(why, why_len, "checksum mismatch: the file is corrupt");
		return SHOAL_EMALFORMED;
	}

	/* Index the sections. */
	len -= SRV_CKPT_HASH_BYTES;
	for (off = SRV_CKPT_HEADER_BYTES; off < len;) {
		if (len - off < 8) {
			say(why, why_len, "a section header is cut off at byte %zu", off);
			return SHOAL_EMALFORMED;
		}
		uint32_t l = get32(buf + off + 4);
		if (l > len - off - 8) {
			say(why, why_len, "section %.4s at byte %zu overruns the file", buf + off, off);
			return SHOAL_EMALFORMED;
		}
		for (int t = 0; t < T_COUNT; t++) {
			if (memcmp(buf + off, tags[t], 4) != 0)
				continue;
			if (sec[t] != NULL) {
				say(why, why_len, "section %s appears twice", tags[t]);
				return SHOAL_EMALFORMED;
			}
			sec[t] = buf + off + 8;
			sec_len[t] = l;
		}
		off += 8 + (size_t)l;
	}

	/* CONF first: the others need its dimension and flags. */
	for (int t = 0; t < T_COUNT; t++) {
		bool need = t != T_DOWN && t != T_PRIV;
		if (t == T_DOWN)
			need = out->downlink_q8;
		if (t == T_PRIV)
			need = out->dp != 0;
		if (t == T_KEYS && sec[t] == NULL)
			continue; /* optional: no client has a key */
		if (sec[t] == NULL) {
			if (!need)
				continue;
			say(why, why_len, "section %s is missing", tags[t]);
			goto fail;
		}
		if (!need) {
			say(why, why_len, "section %s does not belong to this run's settings", tags[t]);
			goto fail;
		}
		rbuf r = {.p = sec[t], .len = sec_len[t]};
		out->owned = true;
		if (!parse_section(t, &r, out, &oom, why, why_len))
			goto fail;
		if (oom) {
			say(why, why_len, "out of memory");
			e = SHOAL_ENOMEM;
			goto fail;
		}
	}
	return SHOAL_OK;
fail:
	srv_ckpt_fini(out);
	return e;
}

/* ---- run settings and the accountant -------------------------------------- */

shoal_err
srv_ckpt_check_run(const srv_ckpt *saved, const srv_ckpt *now, char *why, size_t why_len)
{
#define DIFF(...)                                  \
	do {                                           \
		say(why, why_len, __VA_ARGS__);            \
		return SHOAL_EINVAL;                       \
	} while (0)
	if (strcmp(saved->model, now->model) != 0 || saved->dim != now->dim)
		DIFF("it holds model %s (%" PRIu32 " parameters), this server trains %s (%" PRIu32
		     ")", saved->model, saved->dim, now->model, now->dim);
	if (saved->seed != now->seed)
		DIFF("it was written with --seed %" PRIu64 ", this server has %" PRIu64, saved->seed,
		     now->seed);
	if (saved->opt_kind != now->opt_kind)
		DIFF("server optimizer %" PRIu32 " there, %" PRIu32 " here (--server-opt)",
		     saved->opt_kind, now->opt_kind);
	if (saved->downlink_q8 != now->downlink_q8)
		DIFF("--downlink %s there, %s here", saved->downlink_q8 ? "q8" : "full",
		     now->downlink_q8 ? "q8" : "full");
	if (saved->secagg != now->secagg)
		DIFF("secure aggregation mode %" PRIu32 " there, %" PRIu32 " here (--secagg)",
		     saved->secagg, now->secagg);
	if (saved->dp != now->dp || saved->sampling != now->sampling)
		DIFF("DP mode %" PRIu32 " with sampling %" PRIu32 " there, %" PRIu32 " with %" PRIu32
		     " here (--dp, --sampling)", saved->dp, saved->sampling, now->dp, now->sampling);
	if (memcmp(&saved->sample_rate, &now->sample_rate, sizeof(double)) != 0 ||
	    memcmp(&saved->clip, &now->clip, sizeof(double)) != 0 ||
	    memcmp(&saved->noise_multiplier, &now->noise_multiplier, sizeof(double)) != 0 ||
	    memcmp(&saved->delta, &now->delta, sizeof(double)) != 0)
		DIFF("sample rate %.17g, clip %.17g, noise multiplier %.17g, delta %.17g there; "
		     "%.17g, %.17g, %.17g, %.17g here (the accountant's mechanism must not change)",
		     saved->sample_rate, saved->clip, saved->noise_multiplier, saved->delta,
		     now->sample_rate, now->clip, now->noise_multiplier, now->delta);
	return SHOAL_OK;
#undef DIFF
}

shoal_err
srv_ckpt_put_accountant(const srv_ckpt *c, dp_accountant *a, char *why, size_t why_len)
{
	if (c->acc_n != a->n || memcmp(&c->acc_delta, &a->delta, sizeof a->delta) != 0 ||
	    memcmp(c->acc_orders, a->orders, a->n * sizeof *a->orders) != 0) {
		say(why, why_len, "its privacy accountant has %" PRIu32 " orders at delta %g; this "
		    "server's has %zu at delta %g", c->acc_n, c->acc_delta, a->n, a->delta);
		return SHOAL_EINVAL;
	}
	for (size_t i = 0; i < a->n; i++) {
		if (!(c->acc_rdp[i] >= 0) || !(c->acc_step[i] >= 0)) {
			say(why, why_len, "its privacy accountant holds a negative or NaN RDP");
			return SHOAL_EINVAL;
		}
	}
	memcpy(a->rdp, c->acc_rdp, a->n * sizeof *a->rdp);
	memcpy(a->step, c->acc_step, a->n * sizeof *a->step);
	a->step_n = c->acc_step_n;
	a->step_q = c->acc_step_q;
	a->step_sigma = c->acc_step_sigma;
	a->step_ok = c->acc_step_ok;
	return SHOAL_OK;
}

/* ---- files ----------------------------------------------------------------- */

static void
path_in(char *out, size_t n, const char *dir, const char *name)
{
	snprintf(out, n, "%s/%s", dir, name);
}

static bool
write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return false;
		if (w == 0) {
			errno = ENOSPC;
			return false;
		}
		p += w;
		n -= (size_t)w;
	}
	return true;
}

shoal_err
srv_ckpt_write(const char *dir, const uint8_t *buf, size_t len)
{
	char tmp[4096], cur[4096], prev[4096];
	int fd, dfd, err;

	path_in(tmp, sizeof tmp, dir, SRV_CKPT_TMP);
	path_in(cur, sizeof cur, dir, SRV_CKPT_FILE);
	path_in(prev, sizeof prev, dir, SRV_CKPT_PREV);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
		log_error("checkpoint not saved: cannot create %s: %s", tmp, strerror(errno));
		return SHOAL_EIO;
	}
	if (!write_all(fd, buf, len) || fsync(fd) != 0) {
		err = errno;
		close(fd);
		unlink(tmp);
		log_error("checkpoint not saved: writing %s failed: %s", tmp, strerror(err));
		return SHOAL_EIO;
	}
	if (close(fd) != 0) {
		err = errno;
		unlink(tmp);
		log_error("checkpoint not saved: writing %s failed: %s", tmp, strerror(err));
		return SHOAL_EIO;
	}
	/* The new file is complete on disk: only now move the old one aside. */
	if (rename(cur, prev) != 0 && errno != ENOENT) {
		err = errno;
		unlink(tmp);
		log_error("checkpoint not saved: cannot rename %s to %s: %s", cur, prev, strerror(err));
		return SHOAL_EIO;
	}
	if (rename(tmp, cur) != 0) {
		err = errno;
		unlink(tmp);
		log_error("checkpoint not saved: cannot rename %s to %s: %s (%s still holds the "
		          "previous one)", tmp, cur, strerror(err), prev);
		return SHOAL_EIO;
	}
	if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 || fsync(dfd) != 0) {
		err = errno;
		if (dfd >= 0)
			close(dfd);
		log_error("checkpoint %s written, but syncing the folder %s failed: %s; a power "
		          "loss may bring back the previous one", cur, dir, strerror(err));
		return SHOAL_EIO;
	}
	close(dfd);
	return SHOAL_OK;
}

bool
srv_ckpt_exists(const char *dir)
{
	static const char *const names[] = {SRV_CKPT_FILE, SRV_CKPT_PREV, SRV_CKPT_CLIENTS,
	                                    SRV_CKPT_KEYS};
	char p[4096];

	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		path_in(p, sizeof p, dir, names[i]);
		if (access(p, F_OK) == 0)
			return true;
	}
	return false;
}

/* Reads and decodes one file; *exists false when it is not there. Logs a
 * refusal. */
static shoal_err
load_file(const char *path, srv_ckpt *out, bool *exists)
{
	char why[256] = "";
	struct stat st;
	uint8_t *buf = NULL;
	size_t got = 0;
	shoal_err e = SHOAL_EIO;
	int fd;

	memset(out, 0, sizeof *out);
	*exists = true;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		if (errno == ENOENT) {
			*exists = false;
			return SHOAL_EIO;
		}
		snprintf(why, sizeof why, "cannot open it: %s", strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(why, sizeof why, "not a regular file");
		goto out;
	}
	if ((uint64_t)st.st_size > SRV_CKPT_MAX_BYTES) {
		snprintf(why, sizeof why, "%jd bytes, larger than any checkpoint", (intmax_t)st.st_size);
		e = SHOAL_EFORMAT;
		goto out;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		e = SHOAL_ENOMEM;
		snprintf(why, sizeof why, "out of memory");
		goto out;
	}
	for (;;) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size + 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(why, sizeof why, "read failed: %s", strerror(errno));
			goto out;
		}
		if (r == 0 || (got += (size_t)r) == (size_t)st.st_size + 1)
			break;
	}
	e = srv_ckpt_decode(buf, got, out, why, sizeof why);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	if (e != SHOAL_OK)
		log_error("checkpoint %s refused: %s", path, why);
	return e;
}

shoal_err
srv_ckpt_load(const char *dir, srv_ckpt *out, bool *found, char *path, size_t path_len)
{
	char cur[4096], prev[4096], bad[4096];
	bool have_cur, have_prev;
	shoal_err e, ep;

	path_in(cur, sizeof cur, dir, SRV_CKPT_FILE);
	path_in(prev, sizeof prev, dir, SRV_CKPT_PREV);
	path_in(bad, sizeof bad, dir, SRV_CKPT_BAD);
	*found = false;
	if ((e = load_file(cur, out, &have_cur)) == SHOAL_OK) {
		*found = true;
		if (path != NULL)
			snprintf(path, path_len, "%s", cur);
		return SHOAL_OK;
	}
	ep = load_file(prev, out, &have_prev);
	*found = have_cur || have_prev;
	if (ep != SHOAL_OK)
		return have_prev ? ep : e;
	if (path != NULL)
		snprintf(path, path_len, "%s", prev);
	if (!have_cur) {
		log_warn("%s is missing (a save was interrupted); resuming from the previous "
		         "checkpoint %s (round %" PRIu32 ")", cur, prev, out->round);
	} else if (rename(cur, bad) == 0) {
		log_warn("moved the refused %s to %s; resuming from the previous checkpoint %s "
		         "(round %" PRIu32 ")", cur, bad, prev, out->round);
	} else {
		log_warn("resuming from the previous checkpoint %s (round %" PRIu32 "); could not "
		         "move the refused %s aside: %s", prev, out->round, cur, strerror(errno));
	}
	return SHOAL_OK;
}

/* ---- the registry log and the key log --------------------------------------- */

#define LOG_MAGIC "SHCL"
#define KEYLOG_MAGIC "SHKY"
#define LOG_VERSION 1u
#define LOG_HASH 16u

static bool
sync_dir(const char *dir)
{
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	bool ok = dfd >= 0 && fsync(dfd) == 0;
	if (dfd >= 0)
		close(dfd);
	return ok;
}

/* Opens DIR/name for appending, creating it with its header (magic, u32
 * version 1) if missing, and reads the whole file into *buf (malloc'd,
 * *len bytes; NULL and 0 for a new file). what names the file in
 * messages. On error the log is closed. */
static shoal_err
log_file_open(const char *dir, const char *name, const char *magic, const char *what,
              srv_ckpt_log *log, uint8_t **buf, size_t *len)
{
	struct stat st;
	shoal_err e = SHOAL_EIO;

	memset(log, 0, sizeof *log);
	log->fd = -1;
	*buf = NULL;
	*len = 0;
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;
	path_in(log->path, sizeof log->path, dir, name);
	if ((log->fd = open(log->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0 ||
	    fstat(log->fd, &st) != 0) {
		log_error("cannot open the %s %s: %s", what, log->path, strerror(errno));
		goto fail;
	}
	if (st.st_size == 0) {
		uint8_t h[8];
		memcpy(h, magic, 4);
		put32(h + 4, LOG_VERSION);
		if (!write_all(log->fd, h, sizeof h) || fsync(log->fd) != 0 || !sync_dir(dir)) {
			log_error("cannot write the %s %s: %s", what, log->path, strerror(errno));
			goto fail;
		}
		return SHOAL_OK;
	}
	if ((uint64_t)st.st_size > SRV_CKPT_MAX_BYTES) {
		log_error("%s %s refused: %jd bytes", what, log->path, (intmax_t)st.st_size);
		e = SHOAL_EFORMAT;
		goto fail;
	}
	if ((*buf = malloc((size_t)st.st_size)) == NULL) {
		e = SHOAL_ENOMEM;
		goto fail;
	}
	while (*len < (size_t)st.st_size) {
		ssize_t r = read(log->fd, *buf + *len, (size_t)st.st_size - *len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			log_error("cannot read the %s %s: %s", what, log->path,
			          r < 0 ? strerror(errno) : "file shrank");
			goto fail;
		}
		*len += (size_t)r;
	}
	if (*len < 8 || memcmp(*buf, magic, 4) != 0 || get32(*buf + 4) != LOG_VERSION) {
		log_error("%s %s refused: %s", what, log->path,
		          *len < 8 || memcmp(*buf, magic, 4) != 0 ? "bad magic"
		                                                 : "unknown format version");
		e = SHOAL_EFORMAT;
		goto fail;
	}
	return SHOAL_OK;
fail:
	free(*buf);
	*buf = NULL;
	*len = 0;
	srv_ckpt_log_close(log);
	return e;
}

/* Keeps the first `good` bytes of the file (n whole records), cutting off
 * a torn record after them, and appends from there. */
static shoal_err
log_file_keep(srv_ckpt_log *log, size_t good, size_t len, uint32_t n, const char *what,
              const char *torn)
{
	if (good < len) {
		log_warn("%s %s: cutting off %zu bytes after its %" PRIu32 " whole records (%s)",
		         what, log->path, len - good, n, torn);
		if (ftruncate(log->fd, (off_t)good) != 0 || fsync(log->fd) != 0) {
			log_error("cannot truncate the %s %s: %s", what, log->path, strerror(errno));
			return SHOAL_EIO;
		}
	}
	if (lseek(log->fd, (off_t)good, SEEK_SET) < 0)
		return SHOAL_EIO;
	log->n = n;
	return SHOAL_OK;
}

/* Appends w's records (n of them) and fsyncs; on failure cuts the file
 * back to its last whole record. */
static bool
log_file_append(srv_ckpt_log *log, wbuf *w)
{
	off_t at;

	if (log->fd < 0)
		return false;
	if ((at = lseek(log->fd, 0, SEEK_CUR)) < 0 || !write_all(log->fd, w->p, w->len) ||
	    fsync(log->fd) != 0) {
		int err = errno;
		if (at >= 0 && (ftruncate(log->fd, at) != 0 || lseek(log->fd, at, SEEK_SET) < 0))
			log_error("cannot cut %s back to its last whole record", log->path);
		errno = err;
		return false;
	}
	return true;
}

/* A record's checksum: BLAKE2b-128 of its rl bytes at p. */
static bool
record_ok(const uint8_t *p, size_t rl)
{
	uint8_t hash[LOG_HASH];
	crypto_generichash(hash, sizeof hash, p, rl, NULL, 0);
	return sodium_memcmp(hash, p + rl, sizeof hash) == 0;
}

static void
w_record_hash(wbuf *w, size_t start)
{
	uint8_t *h = w_reserve(w, LOG_HASH);
	if (h != NULL)
		crypto_generichash(h, LOG_HASH, w->p + start, w->len - LOG_HASH - start, NULL, 0);
}

shoal_err
srv_ckpt_log_open(const char *dir, srv_ckpt_log *log, srv_ckpt_client **cl, uint32_t *n)
{
	uint8_t *buf;
	size_t off, good, len, cap = 0;
	shoal_err e;

	*cl = NULL;
	*n = 0;
	if ((e = log_file_open(dir, SRV_CKPT_CLIENTS, LOG_MAGIC, "registry log", log, &buf,
	                       &len)) != SHOAL_OK || buf == NULL)
		return e;
	/* Whole records with the right ids and checksums; the first that is
	 * not ends the log. */
	for (good = off = 8; off < len; off = good) {
		size_t m;
		if (len - off < 5 || (m = buf[off + 4]) == 0 || m > MSG_NAME_MAX ||
		    len - off < 5 + m + 8 + LOG_HASH || get32(buf + off) != *n + 1)
			break;
		size_t rl = 5 + m + 8;
		if (!record_ok(buf + off, rl) || memchr(buf + off + 5, 0, m) != NULL)
			break;
		if (*n == cap) {
			cap = cap ? 2 * cap : 64;
			srv_ckpt_client *v = realloc(*cl, cap * sizeof *v);
			if (v == NULL) {
				e = SHOAL_ENOMEM;
				goto fail;
			}
			*cl = v;
		}
		srv_ckpt_client *k = &(*cl)[(*n)++];
		memset(k, 0, sizeof *k);
		memcpy(k->name, buf + off + 5, m);
		k->n_examples = get32(buf + off + 5 + m);
		k->cx_caps = get32(buf + off + 5 + m + 4);
		good = off + rl + LOG_HASH;
	}
	if ((e = log_file_keep(log, good, len, *n, "registry log",
	                       "a record torn by a crash; its client was never told its id")) !=
	    SHOAL_OK)
		goto fail;
	free(buf);
	return SHOAL_OK;
fail:
	free(buf);
	free(*cl);
	*cl = NULL;
	*n = 0;
	srv_ckpt_log_close(log);
	return e;
}

shoal_err
srv_ckpt_log_append(srv_ckpt_log *log, const srv_ckpt_client *cl, uint32_t n)
{
	wbuf w = {0};

	if (log->fd < 0)
		return SHOAL_EIO;
	for (uint32_t i = 0; i < n; i++) {
		size_t m = strnlen(cl[i].name, sizeof cl[i].name), start = w.len;
		w_u32(&w, log->n + i + 1);
		w_u8(&w, (uint8_t)m);
		w_bytes(&w, cl[i].name, m);
		w_u32(&w, cl[i].n_examples);
		w_u32(&w, cl[i].cx_caps);
		w_record_hash(&w, start);
	}
	if (w.oom) {
		free(w.p);
		return SHOAL_ENOMEM;
	}
	if (!log_file_append(log, &w)) {
		log_error("registering %" PRIu32 " client(s) in %s failed: %s; should the server "
		          "crash before its next checkpoint, their ids could be handed out again",
		          n, log->path, strerror(errno));
		free(w.p);
		return SHOAL_EIO;
	}
	free(w.p);
	log->n += n;
	return SHOAL_OK;
}

shoal_err
srv_ckpt_keylog_open(const char *dir, srv_ckpt_log *log, srv_ckpt_key **keys, uint32_t *n)
{
	uint8_t *buf;
	size_t off, good, len, cap = 0;
	shoal_err e;

	*keys = NULL;
	*n = 0;
	if ((e = log_file_open(dir, SRV_CKPT_KEYS, KEYLOG_MAGIC, "key log", log, &buf, &len)) !=
	        SHOAL_OK ||
	    buf == NULL)
		return e;
	for (good = off = 8; off < len; off = good) {
		if (len - off < 5 || buf[off + 4] > 1 || get32(buf + off) == 0)
			break;
		size_t rl = 5 + MSG_PK_BYTES + (buf[off + 4] ? SRV_CKPT_TOKEN_HASH_BYTES : 0);
		if (len - off < rl + LOG_HASH || !record_ok(buf + off, rl))
			break;
		if (*n == cap) {
			cap = cap ? 2 * cap : 64;
			srv_ckpt_key *v = realloc(*keys, cap * sizeof *v);
			if (v == NULL) {
				e = SHOAL_ENOMEM;
				goto fail;
			}
			*keys = v;
		}
		srv_ckpt_key *k = &(*keys)[(*n)++];
		memset(k, 0, sizeof *k);
		k->id = get32(buf + off);
		k->enrolled = buf[off + 4] != 0;
		memcpy(k->pk, buf + off + 5, MSG_PK_BYTES);
		if (k->enrolled)
			memcpy(k->token, buf + off + 5 + MSG_PK_BYTES, SRV_CKPT_TOKEN_HASH_BYTES);
		good = off + rl + LOG_HASH;
	}
	if ((e = log_file_keep(log, good, len, *n, "key log",
	                       "a record torn by a crash; its client was never welcomed")) !=
	    SHOAL_OK)
		goto fail;
	free(buf);
	return SHOAL_OK;
fail:
	free(buf);
	free(*keys);
	*keys = NULL;
	*n = 0;
	srv_ckpt_log_close(log);
	return e;
}

shoal_err
srv_ckpt_keylog_append(srv_ckpt_log *log, const srv_ckpt_key *k, uint32_t n)
{
	wbuf w = {0};

	if (log->fd < 0)
		return SHOAL_EIO;
	for (uint32_t i = 0; i < n; i++) {
		size_t start = w.len;
		w_u32(&w, k[i].id);
		w_u8(&w, k[i].enrolled);
		w_bytes(&w, k[i].pk, sizeof k[i].pk);
		if (k[i].enrolled)
			w_bytes(&w, k[i].token, sizeof k[i].token);
		w_record_hash(&w, start);
	}
	if (w.oom) {
		free(w.p);
		return SHOAL_ENOMEM;
	}
	if (!log_file_append(log, &w)) {
		log_error("logging the key(s) of %" PRIu32 " client(s) in %s failed: %s; should the "
		          "server crash before its next checkpoint, they must enroll again",
		          n, log->path, strerror(errno));
		free(w.p);
		return SHOAL_EIO;
	}
	free(w.p);
	log->n += n;
	return SHOAL_OK;
}

void
srv_ckpt_log_close(srv_ckpt_log *log)
{
	if (log->fd >= 0)
		close(log->fd);
	log->fd = -1;
}
