/* fuzz_ckpt.c - libFuzzer harness for the server checkpoint reader
 * (srv_ckpt_decode, server/ckpt.h).
 *
 * A checkpoint ends in a BLAKE2b-256 of everything before it, which random
 * bytes never match, so each input is decoded twice: as it is (the magic,
 * length, version and checksum checks), and as a file body that the
 * harness completes - it writes the length field (bytes 8-15) and appends
 * the checksum - so the section parser sees every mutation. The seed corpus
 * holds such bodies.
 *
 * What decodes must encode again (srv_ckpt_encode takes every state the
 * reader accepts) to a file that decodes to the same state; and when the
 * input has exactly the sections a writer puts there, in its order, the
 * encoding is the input byte for byte (nothing was skipped or invented). */
#include "tests/fuzz/fuzz.h"

#include <string.h>

#include <sodium.h>

#include "common/log.h"
#include "server/ckpt.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(-1);
	if (sodium_init() < 0)
		abort();
	return 0;
}

static void
same(const void *a, const void *b, size_t n)
{
	if (n == 0)
		return;
	CHECK(a != NULL && b != NULL);
	CHECK(memcmp(a, b, n) == 0);
}

static void
same_state(const srv_ckpt *a, const srv_ckpt *b)
{
	size_t fd = (size_t)a->dim * sizeof(float);
	CHECK(strcmp(a->model, b->model) == 0 && a->dim == b->dim && a->seed == b->seed);
	CHECK(a->opt_kind == b->opt_kind && a->downlink_q8 == b->downlink_q8);
	CHECK(a->secagg == b->secagg && a->dp == b->dp && a->sampling == b->sampling);
	same(&a->sample_rate, &b->sample_rate, 8);
	same(&a->clip, &b->clip, 8);
	same(&a->noise_multiplier, &b->noise_multiplier, 8);
	same(&a->delta, &b->delta, 8);
	CHECK(a->round == b->round && a->version == b->version && a->finished == b->finished);
	same(&a->accuracy, &b->accuracy, 8);
	same(&a->loss, &b->loss, 8);
	same(a->params, b->params, fd);
	CHECK((a->shadow == NULL) == (b->shadow == NULL));
	same(a->shadow, b->shadow, a->shadow ? fd : 0);
	CHECK(a->dq_len == b->dq_len);
	same(a->dq, b->dq, a->dq_len);
	CHECK((a->opt_m == NULL) == (b->opt_m == NULL) && (a->opt_v == NULL) == (b->opt_v == NULL));
	same(a->opt_m, b->opt_m, a->opt_m ? fd : 0);
	same(a->opt_v, b->opt_v, a->opt_v ? fd : 0);
	same(&a->sa_scale, &b->sa_scale, 4);
	CHECK(a->have_change == b->have_change && (a->change == NULL) == (b->change == NULL));
	same(a->change, b->change, a->change ? fd : 0);
	CHECK(a->dp_steps == b->dp_steps && a->acc_n == b->acc_n);
	if (a->dp != 0) {
		same(&a->acc_delta, &b->acc_delta, 8);
		same(a->acc_orders, b->acc_orders, 8 * (size_t)a->acc_n);
		same(a->acc_rdp, b->acc_rdp, 8 * (size_t)a->acc_n);
		same(a->acc_step, b->acc_step, 8 * (size_t)a->acc_n);
		CHECK(a->acc_step_n == b->acc_step_n && a->acc_step_ok == b->acc_step_ok);
		same(&a->acc_step_q, &b->acc_step_q, 8);
		same(&a->acc_step_sigma, &b->acc_step_sigma, 8);
		same(&a->dp_clip, &b->dp_clip, 8);
		same(&a->dp_sigma, &b->dp_sigma, 8);
	}
	CHECK(a->n_clients == b->n_clients);
	for (uint32_t i = 0; i < a->n_clients; i++) {
		CHECK(strcmp(a->clients[i].name, b->clients[i].name) == 0);
		CHECK(a->clients[i].n_examples == b->clients[i].n_examples);
		CHECK(a->clients[i].cx_caps == b->clients[i].cx_caps);
	}
	CHECK(a->n_keys == b->n_keys);
	for (uint32_t i = 0; i < a->n_keys; i++) {
		const srv_ckpt_key *x = &a->keys[i], *y = &b->keys[i];
		CHECK(x->id == y->id && x->enrolled == y->enrolled);
		CHECK(memcmp(x->pk, y->pk, sizeof x->pk) == 0);
		CHECK(!x->enrolled || memcmp(x->token, y->token, sizeof x->token) == 0);
	}
}

/* Are buf's sections exactly the ones a writer emits for c, in order? */
static bool
canonical(const uint8_t *buf, size_t len, const srv_ckpt *c)
{
	const char *want[9];
	size_t n = 0, off = SRV_CKPT_HEADER_BYTES, i = 0;
	want[n++] = "CONF";
	want[n++] = "PROG";
	want[n++] = "MODL";
	if (c->downlink_q8)
		want[n++] = "DOWN";
	want[n++] = "OPTM";
	want[n++] = "CODC";
	if (c->dp != 0)
		want[n++] = "PRIV";
	want[n++] = "CLNT";
	if (c->n_keys > 0)
		want[n++] = "KEYS";
	len -= SRV_CKPT_HASH_BYTES;
	for (; off < len; i++) {
		if (len - off < 8 || i == n || memcmp(buf + off, want[i], 4) != 0)
			return false;
		off += 8 + (size_t)fz_le32(buf + off + 4);
	}
	return i == n && off == len;
}

static void
check(const uint8_t *file, size_t len)
{
	srv_ckpt c, back;
	char why[256];
	uint8_t *enc = NULL;
	size_t enc_len = 0;

	shoal_err e = srv_ckpt_decode(file, len, &c, why, sizeof why);
	if (e != SHOAL_OK) {
		CHECK(c.params == NULL && !c.owned); /* zeroed */
		CHECK(memchr(why, 0, sizeof why) != NULL);
		return;
	}
	CHECK(c.owned && c.params != NULL && c.dim >= 1 && c.dim <= SRV_CKPT_MAX_DIM);
	CHECK(srv_ckpt_check_run(&c, &c, why, sizeof why) == SHOAL_OK);
	CHECK(srv_ckpt_encode(&c, &enc, &enc_len) == SHOAL_OK);
	CHECK(srv_ckpt_decode(enc, enc_len, &back, why, sizeof why) == SHOAL_OK);
	same_state(&c, &back);
	if (canonical(file, len, &c)) {
		CHECK(enc_len == len);
		CHECK(memcmp(enc, file, len) == 0);
	}
	srv_ckpt_fini(&back);
	srv_ckpt_fini(&c);
	free(enc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* as it is (exact-size copy so ASan sees any overread) */
	uint8_t *raw = malloc(size ? size : 1);
	CHECK(raw != NULL);
	memcpy(raw, data, size);
	check(raw, size);
	free(raw);

	/* as a body completed with its length and checksum */
	if (size < SRV_CKPT_HEADER_BYTES)
		return 0;
	size_t len = size + SRV_CKPT_HASH_BYTES;
	uint8_t *file = malloc(len);
	CHECK(file != NULL);
	memcpy(file, data, size);
	for (int i = 0; i < 8; i++)
		file[8 + i] = (uint8_t)((uint64_t)len >> (8 * i));
	crypto_generichash(file + size, SRV_CKPT_HASH_BYTES, file, size, NULL, 0);
	check(file, len);
	free(file);
	return 0;
}
