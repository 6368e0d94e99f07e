/* fuzz_msg.c - libFuzzer harness for the wire message decoder (msg_decode,
 * common/msg.h): every message type from arbitrary bytes.
 *
 * Beyond "no crash": a message that decodes must re-encode (msg_encode
 * accepts everything msg_decode accepts), at the size msg_encoded_size
 * names, and decode again to the same fields; a decoder must not read past
 * the bytes it says it consumed. The opaque payloads go where the client
 * and the server send them: TASK "up" to cx_parse_spec, TASK "sa" to
 * sa_task_read, TASK "dq" / UPDATE "upd" to cx_validate; a request with a
 * "sig" to id_verify (privacy/ident.h), which must refuse it (no input
 * carries a valid signature of the harness's key), and which must accept
 * it once id_sign has signed it, the signed bytes decoding to the same
 * message. */
#include "tests/fuzz/fuzz.h"

#include <string.h>

#include "common/codec.h"
#include "common/log.h"
#include "common/msg.h"
#include "privacy/ident.h"
#include "privacy/secagg.h"

/* the harness's identity key (seed 0x5a...) */
static uint8_t id_pk[ID_PK_BYTES], id_sk[ID_SK_BYTES];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(-1);
	uint8_t seed[ID_SEED_BYTES];
	memset(seed, 0x5a, sizeof seed);
	id_keypair_from_seed(seed, id_pk, id_sk);
	return 0;
}

static void
same_bytes(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
	CHECK(alen == blen);
	CHECK(alen == 0 || memcmp(a, b, alen) == 0);
}

/* Every field of a decoded message, payloads by content. Floats compare
 * by value: an optional float given as -0.0 is written back as absent,
 * which decodes as 0.0, the same value (they are finite: no NaN). */
static void
same_msg(const msg *a, const msg *b)
{
	CHECK(a->version == b->version && a->type == b->type);
	CHECK(a->client_id == b->client_id && a->round == b->round);
	CHECK(a->n_examples == b->n_examples && a->dim == b->dim);
	CHECK(a->epochs == b->epochs && a->batch == b->batch);
	CHECK(a->lr == b->lr);
	CHECK(a->deadline_ms == b->deadline_ms && a->hold_ms == b->hold_ms);
	CHECK(a->retry_ms == b->retry_ms && a->seed == b->seed);
	CHECK(a->momentum == b->momentum && a->weight_decay == b->weight_decay);
	CHECK(a->prox_mu == b->prox_mu && a->clip == b->clip);
	CHECK(memcmp(&a->loss, &b->loss, 4) == 0);
	CHECK(a->cx_caps == b->cx_caps && a->model_ver == b->model_ver && a->base == b->base);
	CHECK(a->code == b->code && a->phase == b->phase);
	CHECK(strcmp(a->up, b->up) == 0 && strcmp(a->name, b->name) == 0);
	CHECK(strcmp(a->model, b->model) == 0 && strcmp(a->text, b->text) == 0);
	CHECK((a->vec == NULL) == (b->vec == NULL));
	if (a->vec != NULL)
		same_bytes(a->vec, 4 * (size_t)a->dim, b->vec, 4 * (size_t)b->dim);
	CHECK((a->blob == NULL) == (b->blob == NULL));
	if (a->blob != NULL)
		same_bytes(a->blob, a->blob_len, b->blob, b->blob_len);
	CHECK(a->has_sa == b->has_sa);
	if (a->has_sa)
		same_bytes(a->sa, a->sa_len, b->sa, b->sa_len);
	CHECK(a->has_pk == b->has_pk && a->has_nonce == b->has_nonce && a->has_sig == b->has_sig);
	CHECK(!a->has_pk || memcmp(a->pk, b->pk, sizeof a->pk) == 0);
	CHECK(!a->has_nonce || memcmp(a->nonce, b->nonce, sizeof a->nonce) == 0);
	CHECK(!a->has_sig || memcmp(a->sig, b->sig, sizeof a->sig) == 0);
	CHECK(strcmp(a->token, b->token) == 0);
}

/* The server's signature check on the bytes of a request with a "sig";
 * sign them with the harness key and check again. id_verify and id_sign
 * look for the tail a3 73 69 67 c4 40 + 64 bytes, not at the map: when
 * "sig" is not the last key but its value holds those six bytes at the
 * right place, they take other bytes for the signature (verification
 * still fails: the bytes before are signed by no one), so the round trip
 * is checked only when the decoded "sig" is the last 64 bytes. */
static void
signature(const uint8_t *buf, size_t n, const msg *m)
{
	shoal_err e = id_verify(id_pk, buf, n);
	CHECK(e == SHOAL_EBADSIG || e == SHOAL_EMALFORMED);
	if (n < MSG_SIG_BYTES || memcmp(buf + n - MSG_SIG_BYTES, m->sig, MSG_SIG_BYTES) != 0)
		return;
	uint8_t *s = malloc(n);
	CHECK(s != NULL);
	memcpy(s, buf, n);
	if (id_sign(id_sk, s, n) == SHOAL_OK) {
		CHECK(e == SHOAL_EBADSIG); /* id_sign takes what id_verify parses */
		CHECK(id_verify(id_pk, s, n) == SHOAL_OK);
		msg d;
		CHECK(msg_decode(s, n, &d) == (long)n);
		memcpy(d.sig, m->sig, sizeof d.sig); /* the one change */
		same_msg(m, &d);
		s[n / 2] ^= 1; /* any other byte breaks it */
		CHECK(id_verify(id_pk, s, n) != SHOAL_OK);
	}
	free(s);
}

/* An update encoding as its receiver checks it; the dimension is the one
 * its header names when that is small enough to allocate for. */
static void
codec_payload(const uint8_t *p, size_t n)
{
	uint32_t dim = n >= 10 ? fz_le32(p + 6) : 1;
	if (dim > (1u << 16))
		dim = 1000;
	uint32_t *scratch = malloc((dim ? dim : 1) * sizeof *scratch);
	CHECK(scratch != NULL);
	long r = cx_validate(p, n, dim, scratch);
	CHECK(r < 0 || (size_t)r == n);
	free(scratch);
}

static void
payloads(const msg *m)
{
	if (m->type == MSG_TASK) {
		if (m->up[0] != '\0') {
			cx_config cfg;
			bool none = false;
			if (cx_parse_spec(m->up, &cfg, &none) == SHOAL_OK && !none)
				CHECK(cfg.ratio > 0 && cfg.ratio <= 1);
		}
		if (m->has_sa) {
			sa_task t;
			uint32_t dim = m->vec != NULL ? m->dim : 7850;
			if (sa_task_read(&t, m->sa, m->sa_len, dim) == SHOAL_OK)
				for (uint32_t i = 0; i < t.n_idx; i++)
					CHECK(t.idx[i] < dim && (i == 0 || t.idx[i] > t.idx[i - 1]));
			sa_task_fini(&t);
		}
	}
	if (m->blob != NULL)
		codec_payload(m->blob, m->blob_len);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	msg m, again;
	uint8_t *enc = NULL, *copy;
	size_t enc_len = 0;

	long n = msg_decode(data, size, &m);
	if (n < 0)
		return 0;
	CHECK((size_t)n <= size && n > 0);

	/* The consumed bytes alone decode the same (nothing read past them);
	 * a copy of exactly n bytes lets ASan see any overread. */
	copy = malloc((size_t)n);
	CHECK(copy != NULL);
	memcpy(copy, data, (size_t)n);
	CHECK(msg_decode(copy, (size_t)n, &again) == n);
	same_msg(&m, &again);
	payloads(&again);
	if (again.has_sig)
		signature(copy, (size_t)n, &again);

	/* Whatever decodes re-encodes to what decodes to the same message. */
	size_t want = msg_encoded_size(&again);
	CHECK(msg_encode(&again, &enc, &enc_len) == SHOAL_OK);
	CHECK(want == enc_len);
	msg back;
	CHECK(msg_decode(enc, enc_len, &back) == (long)enc_len);
	same_msg(&again, &back);
	/* ... and the encoding is canonical: encoding it again gives the same
	 * bytes. */
	uint8_t *enc2 = NULL;
	size_t enc2_len = 0;
	CHECK(msg_encode(&back, &enc2, &enc2_len) == SHOAL_OK);
	same_bytes(enc, enc_len, enc2, enc2_len);
	/* the writer puts "sig" last: what it writes can be signed */
	if (back.has_sig) {
		CHECK(id_sign(id_sk, enc2, enc2_len) == SHOAL_OK);
		CHECK(id_verify(id_pk, enc2, enc2_len) == SHOAL_OK);
	}
	(void)msg_type_name(back.type);
	free(enc2);
	free(enc);
	free(copy);
	return 0;
}
