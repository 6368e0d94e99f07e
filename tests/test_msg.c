/* test_msg.c - the wire-message codec (common/msg.c): round trips of every
 * type, known-answer bytes, every truncation, every required key missing or
 * doubled, bad values from tables, structure limits, and seeded garbage. */
#include "tests/testutil.h"

#include <math.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/msg.h"

/* ---- sample messages, one per type ------------------------------------- */

static const float vec3[3] = { 0.25f, -1.5f, 3.0e-7f };
static const float vec1[1] = { 1.0f };

static msg
sample(msg_type t)
{
	msg m;
	memset(&m, 0, sizeof(m));
	m.version = MSG_VERSION;
	m.type = t;
	switch (t) {
	case MSG_HELLO:
		strcpy(m.name, "pi-kitchen");
		strcpy(m.model, "logreg");
		m.dim = 7850;
		m.n_examples = 600;
		break;
	case MSG_WELCOME:
		m.client_id = 42;
		m.hold_ms = 2000;
		break;
	case MSG_CHECKIN:
		m.client_id = 70000;
		break;
	case MSG_TASK:
		m.round = 3;
		strcpy(m.model, "2nn");
		m.epochs = 5;
		m.batch = 10;
		m.lr = 0.05f;
		m.deadline_ms = 60000;
		m.seed = 0x0123456789abcdefull;
		m.vec = (const uint8_t *)vec3;
		m.dim = 3;
		break;
	case MSG_UPDATE:
		m.client_id = 7;
		m.round = 3;
		m.n_examples = 600;
		m.loss = 0.693f;
		m.vec = (const uint8_t *)vec3;
		m.dim = 3;
		break;
	case MSG_ACK:
		m.round = 3;
		break;
	case MSG_WAIT:
		m.retry_ms = 500;
		break;
	case MSG_ERROR:
		m.code = SHOAL_EUNKNOWN;
		strcpy(m.text, "unknown client");
		break;
	case MSG_DONE:
		m.round = 10;
		break;
	case MSG_SA:
		m.client_id = 5;
		m.round = 3;
		m.phase = 2;
		m.sa = (const uint8_t *)"\x01\x02\x03";
		m.sa_len = 3;
		m.has_sa = true;
		break;
	case MSG_SA_REPLY:
		m.round = 3;
		m.phase = 4;
		m.sa = NULL; /* a 0-byte payload (no signatures) is valid */
		m.sa_len = 0;
		m.has_sa = true;
		break;
	}
	return m;
}

#define N_TYPES 11

static void
encode_ok(const msg *m, uint8_t **buf, size_t *len)
{
	assert_int_equal(msg_encode(m, buf, len), SHOAL_OK);
	assert_non_null(*buf);
	assert_int_equal(*len, msg_encoded_size(m));
}

/* Every field meaningful for a's type equal in b; vectors by content. */
static void
assert_msg_equal(const msg *a, const msg *b)
{
	assert_int_equal(b->version, MSG_VERSION);
	assert_int_equal(a->type, b->type);
	assert_int_equal(a->client_id, b->client_id);
	assert_int_equal(a->round, b->round);
	assert_int_equal(a->n_examples, b->n_examples);
	assert_int_equal(a->dim, b->dim);
	assert_int_equal(a->epochs, b->epochs);
	assert_int_equal(a->batch, b->batch);
	assert_true(a->lr == b->lr);
	assert_int_equal(a->deadline_ms, b->deadline_ms);
	assert_int_equal(a->hold_ms, b->hold_ms);
	assert_int_equal(a->retry_ms, b->retry_ms);
	assert_true(a->seed == b->seed);
	assert_int_equal(a->code, b->code);
	assert_true(a->loss == b->loss);
	assert_string_equal(a->name, b->name);
	assert_string_equal(a->model, b->model);
	assert_string_equal(a->text, b->text);
	if (a->type == MSG_TASK || a->type == MSG_UPDATE) {
		float *x = malloc(a->dim * sizeof(float));
		float *y = malloc(b->dim * sizeof(float));
		assert_non_null(x);
		assert_non_null(y);
		msg_vec_to_host(x, a->vec, a->dim);
		msg_vec_to_host(y, b->vec, b->dim);
		assert_memory_equal(x, y, a->dim * sizeof(float));
		free(x);
		free(y);
	} else {
		assert_null(b->vec);
	}
}

static void
test_round_trip_every_type(void **state)
{
	for (int t = 1; t <= N_TYPES; t++) {
		msg m = sample((msg_type)t), d;
		uint8_t *buf;
		size_t len;
		encode_ok(&m, &buf, &len);
		assert_int_equal(msg_decode(buf, len, &d), (long)len);
		assert_msg_equal(&m, &d);
		free(buf);
	}
}

static void
test_vector_zero_copy(void **state)
{
	msg m = sample(MSG_UPDATE), d;
	uint8_t *buf;
	size_t len;
	float back[3];
	encode_ok(&m, &buf, &len);
	assert_int_equal(msg_decode(buf, len, &d), (long)len);
	assert_true(d.vec >= buf && d.vec + 4 * d.dim <= buf + len);
	msg_vec_to_host(back, d.vec, d.dim);
	assert_memory_equal(back, vec3, sizeof(vec3));
	/* the wire form is little-endian float32: 0.25f = 0x3e800000 */
	static const uint8_t quarter[4] = { 0x00, 0x00, 0x80, 0x3e };
	assert_memory_equal(d.vec, quarter, 4);
	free(buf);
}

static void
test_large_vector_round_trip(void **state)
{
	/* dims on each side of the bin8/bin16/bin32 boundaries */
	static const uint32_t dims[] = { 1, 63, 64, 16383, 16384, 100000 };
	for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
		float *v = malloc(dims[i] * sizeof(float));
		assert_non_null(v);
		for (uint32_t j = 0; j < dims[i]; j++)
			v[j] = (float)j * 0.5f - 7.0f;
		msg m = sample(MSG_TASK), d;
		m.vec = (const uint8_t *)v;
		m.dim = dims[i];
		uint8_t *buf;
		size_t len;
		encode_ok(&m, &buf, &len);
		assert_int_equal(msg_decode(buf, len, &d), (long)len);
		assert_msg_equal(&m, &d);
		free(buf);
		free(v);
	}
}

static void
test_encoded_size_matches(void **state)
{
	/* every msgpack size class of every number and string the codec writes */
	static const uint32_t u32s[] = { 0, 1, 127, 128, 255, 256, 65535, 65536, UINT32_MAX };
	static const uint64_t u64s[] = { 0, 127, 128, 65536, UINT32_MAX, (uint64_t)UINT32_MAX + 1,
	                                 UINT64_MAX };
	static const int32_t codes[] = { -1, -32, -33, -128, -129, -32768, -32769, INT32_MIN };
	static const size_t texts[] = { 0, 1, 31, 32, 255, 256 };
	uint8_t *buf;
	size_t len;
	msg m, d;

	for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++) {
		m = sample(MSG_WAIT);
		m.retry_ms = u32s[i];
		encode_ok(&m, &buf, &len);
		assert_int_equal(msg_decode(buf, len, &d), (long)len);
		assert_int_equal(d.retry_ms, u32s[i]);
		free(buf);
	}
	for (size_t i = 0; i < sizeof(u64s) / sizeof(u64s[0]); i++) {
		m = sample(MSG_TASK);
		m.seed = u64s[i];
		encode_ok(&m, &buf, &len);
		assert_int_equal(msg_decode(buf, len, &d), (long)len);
		assert_true(d.seed == u64s[i]);
		free(buf);
	}
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		for (size_t j = 0; j < sizeof(texts) / sizeof(texts[0]); j++) {
			m = sample(MSG_ERROR);
			m.code = codes[i];
			memset(m.text, 'x', texts[j]);
			m.text[texts[j]] = '\0';
			encode_ok(&m, &buf, &len);
			assert_int_equal(msg_decode(buf, len, &d), (long)len);
			assert_msg_equal(&m, &d);
			free(buf);
		}
	}
	/* invalid messages have no size */
	m = sample(MSG_CHECKIN);
	m.client_id = 0;
	assert_int_equal(msg_encoded_size(&m), 0);
}

/* ---- known answers (computed by hand from the msgpack spec) ------------ */

static void
assert_bytes(const msg *m, const uint8_t *want, size_t want_len)
{
	uint8_t *buf;
	size_t len;
	msg d;
	encode_ok(m, &buf, &len);
	assert_int_equal(len, want_len);
	assert_memory_equal(buf, want, want_len);
	free(buf);
	assert_int_equal(msg_decode(want, want_len, &d), (long)want_len);
	assert_msg_equal(m, &d);
}

static void
test_known_answer_wait(void **state)
{
	/* the worked example of PROTOCOL.md and msg.c */
	static const uint8_t want[] = {
		0x83,                               /* fixmap, 3 entries */
		0xa1, 0x76, 0x01,                   /* "v": 1 */
		0xa1, 0x74, 0x07,                   /* "t": 7 (WAIT) */
		0xa5, 0x72, 0x65, 0x74, 0x72, 0x79, /* "retry" */
		0xcd, 0x01, 0xf4,                   /* uint16 500 */
	};
	msg m = sample(MSG_WAIT);
	assert_bytes(&m, want, sizeof(want));
}

static void
test_known_answer_error(void **state)
{
	static const uint8_t want[] = {
		0x84,                         /* fixmap, 4 entries */
		0xa1, 0x76, 0x01,             /* "v": 1 */
		0xa1, 0x74, 0x08,             /* "t": 8 (ERROR) */
		0xa4, 0x63, 0x6f, 0x64, 0x65, /* "code" */
		0xf5,                         /* negative fixint -11 */
		0xa3, 0x6d, 0x73, 0x67,       /* "msg" */
		0xae,                         /* fixstr, 14 bytes */
		0x75, 0x6e, 0x6b, 0x6e, 0x6f, 0x77, 0x6e, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74,
	};
	msg m = sample(MSG_ERROR);
	assert_bytes(&m, want, sizeof(want));

	uint8_t *buf;
	size_t len;
	assert_int_equal(msg_encode_error(SHOAL_EUNKNOWN, "unknown client", &buf, &len), SHOAL_OK);
	assert_int_equal(len, sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));
	free(buf);
}

static void
test_known_answer_update(void **state)
{
	static const uint8_t want[] = {
		0x87,                                     /* fixmap, 7 entries */
		0xa1, 0x76, 0x01,                         /* "v": 1 */
		0xa1, 0x74, 0x05,                         /* "t": 5 (UPDATE) */
		0xa2, 0x69, 0x64, 0x03,                   /* "id": 3 */
		0xa5, 0x72, 0x6f, 0x75, 0x6e, 0x64, 0x02, /* "round": 2 */
		0xa1, 0x6e, 0xcd, 0x02, 0x58,             /* "n": 600 */
		0xa4, 0x6c, 0x6f, 0x73, 0x73,             /* "loss" */
		0xca, 0x3f, 0x00, 0x00, 0x00,             /* float32 0.5 */
		0xa5, 0x64, 0x65, 0x6c, 0x74, 0x61,       /* "delta" */
		0xc4, 0x04, 0x00, 0x00, 0x80, 0x3f,       /* bin8, 4 bytes: 1.0f LE */
	};
	msg m = sample(MSG_UPDATE);
	m.client_id = 3;
	m.round = 2;
	m.loss = 0.5f;
	m.vec = (const uint8_t *)vec1;
	m.dim = 1;
	assert_bytes(&m, want, sizeof(want));
}

static void
test_encode_error_helper(void **state)
{
	uint8_t *buf;
	size_t len;
	msg d;
	char longtext[400];

	/* control characters masked, long text clipped at MSG_TEXT_MAX */
	assert_int_equal(msg_encode_error(SHOAL_EMALFORMED, "bad\n\tname\x80", &buf, &len), SHOAL_OK);
	assert_int_equal(msg_decode(buf, len, &d), (long)len);
	assert_int_equal(d.code, SHOAL_EMALFORMED);
	assert_string_equal(d.text, "bad??name?");
	free(buf);
	memset(longtext, 'y', sizeof(longtext) - 1);
	longtext[sizeof(longtext) - 1] = '\0';
	assert_int_equal(msg_encode_error(SHOAL_ETOOBIG, longtext, &buf, &len), SHOAL_OK);
	assert_int_equal(msg_decode(buf, len, &d), (long)len);
	assert_int_equal(strlen(d.text), MSG_TEXT_MAX);
	free(buf);
	assert_int_equal(msg_encode_error(SHOAL_ESTALE, NULL, &buf, &len), SHOAL_OK);
	assert_int_equal(msg_decode(buf, len, &d), (long)len);
	assert_string_equal(d.text, "");
	free(buf);
	/* ERROR.code is a negative shoal_err */
	assert_int_equal(msg_encode_error(SHOAL_OK, "ok", &buf, &len), SHOAL_EINVAL);
	assert_int_equal(msg_encode_error(5, "x", &buf, &len), SHOAL_EINVAL);
}

/* ---- truncation and framing -------------------------------------------- */

static void
test_every_truncation_rejected(void **state)
{
	for (int t = 1; t <= N_TYPES; t++) {
		msg m = sample((msg_type)t), d;
		uint8_t *buf;
		size_t len;
		encode_ok(&m, &buf, &len);
		for (size_t cut = 0; cut < len; cut++) {
			/* a copy of exactly cut bytes, so ASan sees any overread */
			uint8_t *p = malloc(cut + 1);
			assert_non_null(p);
			memcpy(p, buf, cut);
			long r = msg_decode(cut ? p : NULL, cut, &d);
			if (r != SHOAL_ETRUNC)
				fail_msg("%s cut at %zu of %zu: %ld", msg_type_name((msg_type)t), cut,
				         len, r);
			free(p);
		}
		free(buf);
	}
}

static void
test_trailing_bytes_not_consumed(void **state)
{
	msg m = sample(MSG_ACK), d;
	uint8_t *buf, big[64];
	size_t len;
	encode_ok(&m, &buf, &len);
	memcpy(big, buf, len);
	memset(big + len, 0xc1, sizeof(big) - len); /* invalid msgpack after the map */
	assert_int_equal(msg_decode(big, sizeof(big), &d), (long)len);
	assert_int_equal(d.round, 3);
	free(buf);
}

static void
test_not_a_map(void **state)
{
	static const struct {
		const char *bytes;
		size_t n;
		long want;
	} cases[] = {
		{ "", 0, SHOAL_ETRUNC },
		{ "\x92\x01\x07", 3, SHOAL_EMALFORMED },   /* array [1, 7] */
		{ "\x92", 1, SHOAL_EMALFORMED },           /* even a truncated one */
		{ "\x07", 1, SHOAL_EMALFORMED },           /* int */
		{ "\xc0", 1, SHOAL_EMALFORMED },           /* nil */
		{ "\xa1v", 2, SHOAL_EMALFORMED },          /* str */
		{ "\xc1", 1, SHOAL_EMALFORMED },           /* never used */
		{ "\x80", 1, SHOAL_EMALFORMED },           /* empty map: no "v" */
		{ "\x81\xa1v\xc1", 4, SHOAL_EMALFORMED },  /* 0xc1 inside */
		{ "\xde\x00", 2, SHOAL_ETRUNC },           /* map16 header cut */
		{ "\xdf\xff\xff\xff\xff", 5, SHOAL_ETRUNC }, /* 2^32-1 entries claimed */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		msg d;
		long r = msg_decode((const uint8_t *)cases[i].bytes, cases[i].n, &d);
		if (r != cases[i].want)
			fail_msg("case %zu: got %ld want %ld", i, r, cases[i].want);
	}
}

static void
test_structure_limits(void **state)
{
	msg d;
	uint8_t buf[8192];
	size_t n = 0;

	/* {"v":1,"t":7,"retry":1,"x":[[[[...17 deep...]]]]} */
	static const uint8_t head[] = { 0x84, 0xa1, 'v', 0x01, 0xa1, 't', 0x07, 0xa5, 'r',
	                                'e',  't',  'r', 'y',  0x01, 0xa1, 'x' };
	memcpy(buf, head, sizeof(head));
	n = sizeof(head);
	for (int i = 0; i < 15; i++)
		buf[n++] = 0x91;
	buf[n++] = 0xc0;
	assert_int_equal(msg_decode(buf, n, &d), (long)n); /* depth 16: fine */
	n = sizeof(head);
	for (int i = 0; i < 16; i++)
		buf[n++] = 0x91;
	buf[n++] = 0xc0;
	assert_int_equal(msg_decode(buf, n, &d), SHOAL_ETOOBIG); /* depth 17 */

	/* an unknown key holding an array of 2000 nils: too many objects */
	n = sizeof(head);
	buf[n++] = 0xdc;
	buf[n++] = 2000 >> 8;
	buf[n++] = 2000 & 0xff;
	memset(buf + n, 0xc0, 2000);
	n += 2000;
	assert_int_equal(msg_decode(buf, n, &d), SHOAL_ETOOBIG);
	/* the same claim without the bytes is merely truncated */
	assert_int_equal(msg_decode(buf, sizeof(head) + 3 + 10, &d), SHOAL_ETRUNC);
}

/* ---- edited messages: drop, duplicate or replace one key --------------- */

typedef struct edit {
	const char *drop;      /* leave this key out */
	const char *dup;       /* write this key twice */
	const char *key;       /* replace (or add) this key's value ... */
	msgpack_object val;    /* ... with this object */
	const char *raw;       /* ... or these raw msgpack bytes, if set */
	size_t raw_len;
} edit;

typedef struct blob {
	uint8_t *p;
	size_t n;
} blob;

static bool
is_key(const msgpack_object *k, const char *s)
{
	return s != NULL && k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(s) &&
	       memcmp(k->via.str.ptr, s, k->via.str.size) == 0;
}

static void
pack_val(msgpack_packer *pk, msgpack_sbuffer *sb, const edit *e)
{
	if (e->raw != NULL)
		msgpack_sbuffer_write(sb, e->raw, e->raw_len);
	else
		msgpack_pack_object(pk, e->val);
}

/* m encoded, then edited as e says; free .p. */
static blob
edited(const msg *m, const edit *e)
{
	uint8_t *enc;
	size_t len, off = 0;
	msgpack_unpacked u;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	bool replaced = false;

	encode_ok(m, &enc, &len);
	msgpack_unpacked_init(&u);
	assert_int_equal(msgpack_unpack_next(&u, (const char *)enc, len, &off),
	                 MSGPACK_UNPACK_SUCCESS);
	const msgpack_object_map *map = &u.data.via.map;
	size_t count = map->size;
	for (uint32_t i = 0; i < map->size; i++) {
		count -= is_key(&map->ptr[i].key, e->drop);
		count += is_key(&map->ptr[i].key, e->dup);
		replaced |= is_key(&map->ptr[i].key, e->key);
	}
	if (e->key != NULL && !replaced)
		count++;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, count);
	for (uint32_t i = 0; i < map->size; i++) {
		const msgpack_object_kv *kv = &map->ptr[i];
		if (is_key(&kv->key, e->drop))
			continue;
		for (int k = 0; k < (is_key(&kv->key, e->dup) ? 2 : 1); k++) {
			msgpack_pack_object(&pk, kv->key);
			if (is_key(&kv->key, e->key))
				pack_val(&pk, &sb, e);
			else
				msgpack_pack_object(&pk, kv->val);
		}
	}
	if (e->key != NULL && !replaced) {
		msgpack_pack_str(&pk, strlen(e->key));
		msgpack_pack_str_body(&pk, e->key, strlen(e->key));
		pack_val(&pk, &sb, e);
	}
	msgpack_unpacked_destroy(&u);
	free(enc);
	return (blob){ (uint8_t *)sb.data, sb.size };
}

static const char *const keys_of[N_TYPES + 1][10] = {
	[MSG_HELLO] = { "v", "t", "name", "model", "dim", "n" },
	[MSG_WELCOME] = { "v", "t", "id", "hold" },
	[MSG_CHECKIN] = { "v", "t", "id" },
	[MSG_TASK] = { "v", "t", "round", "model", "E", "B", "lr", "deadline", "seed", "params" },
	[MSG_UPDATE] = { "v", "t", "id", "round", "n", "loss", "delta" },
	[MSG_ACK] = { "v", "t", "round" },
	[MSG_WAIT] = { "v", "t", "retry" },
	[MSG_ERROR] = { "v", "t", "code", "msg" },
	[MSG_DONE] = { "v", "t", "round" },
	[MSG_SA] = { "v", "t", "id", "round", "ph", "sa" },
	[MSG_SA_REPLY] = { "v", "t", "round", "ph", "sa" },
};

static void
test_keys_in_table_order(void **state)
{
	for (int t = 1; t <= N_TYPES; t++) {
		msg m = sample((msg_type)t);
		uint8_t *enc;
		size_t len, off = 0, nk = 0;
		msgpack_unpacked u;
		encode_ok(&m, &enc, &len);
		msgpack_unpacked_init(&u);
		assert_int_equal(msgpack_unpack_next(&u, (const char *)enc, len, &off),
		                 MSGPACK_UNPACK_SUCCESS);
		while (nk < 10 && keys_of[t][nk] != NULL)
			nk++;
		assert_int_equal(u.data.via.map.size, nk);
		for (size_t i = 0; i < nk; i++)
			assert_true(is_key(&u.data.via.map.ptr[i].key, keys_of[t][i]));
		msgpack_unpacked_destroy(&u);
		free(enc);
	}
}

static void
test_missing_key_per_type(void **state)
{
	for (int t = 1; t <= N_TYPES; t++) {
		for (int k = 0; k < 10 && keys_of[t][k] != NULL; k++) {
			msg m = sample((msg_type)t), d;
			edit e = { .drop = keys_of[t][k] };
			blob b = edited(&m, &e);
			long r = msg_decode(b.p, b.n, &d);
			if (r != SHOAL_EMALFORMED)
				fail_msg("%s without %s: %ld", msg_type_name((msg_type)t), keys_of[t][k], r);
			free(b.p);
		}
	}
}

static void
test_duplicate_key_per_type(void **state)
{
	for (int t = 1; t <= N_TYPES; t++) {
		for (int k = 0; k < 10 && keys_of[t][k] != NULL; k++) {
			msg m = sample((msg_type)t), d;
			edit e = { .dup = keys_of[t][k] };
			blob b = edited(&m, &e);
			long r = msg_decode(b.p, b.n, &d);
			if (r != SHOAL_EMALFORMED)
				fail_msg("%s with %s twice: %ld", msg_type_name((msg_type)t), keys_of[t][k], r);
			free(b.p);
		}
	}
	/* an unknown key given twice is a duplicate too */
	msg d;
	static const uint8_t twice[] = { 0x85, 0xa1, 'v', 1, 0xa1, 't', 6, 0xa5, 'r', 'o', 'u', 'n',
	                                 'd', 1, 0xa1, 'x', 1, 0xa1, 'x', 2 };
	assert_int_equal(msg_decode(twice, sizeof(twice), &d), SHOAL_EMALFORMED);
}

/* Two empty keys are a duplicate too (found by tests/fuzz/fuzz_msg: the
 * check compared them with memcmp(NULL, NULL, 0), undefined behaviour that
 * UBSan reports, because msgpack-c gives an empty str a NULL pointer). */
static void
test_empty_key_twice(void **state)
{
	msg d;
	static const uint8_t twice[] = { 0x85, 0xa0, 1, 0xa0, 2, 0xa1, 'v', 1, 0xa1, 't', 6,
	                                 0xa5, 'r', 'o', 'u', 'n', 'd', 1 };
	assert_int_equal(msg_decode(twice, sizeof(twice), &d), SHOAL_EMALFORMED);
	/* one empty key is just an unknown key */
	static const uint8_t once[] = { 0x84, 0xa0, 1, 0xa1, 'v', 1, 0xa1, 't', 6,
	                                0xa5, 'r', 'o', 'u', 'n', 'd', 1 };
	assert_int_equal(msg_decode(once, sizeof(once), &d), (long)sizeof(once));
}

/* One edited value and the verdict. */
typedef struct vcase {
	msg_type type;
	const char *key;
	msgpack_object val;
	const char *raw;
	size_t raw_len;
	long want; /* SHOAL_OK: must decode */
} vcase;

#define POS(x) { .type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = (x) }
#define NEG(x) { .type = MSGPACK_OBJECT_NEGATIVE_INTEGER, .via.i64 = (x) }
#define F64(x) { .type = MSGPACK_OBJECT_FLOAT64, .via.f64 = (x) }
#define F32(x) { .type = MSGPACK_OBJECT_FLOAT32, .via.f64 = (x) }
#define STR(s) { .type = MSGPACK_OBJECT_STR, .via.str = { sizeof(s) - 1, s } }
#define STRN(n) { .type = MSGPACK_OBJECT_STR, .via.str = { (n), filler } }
#define BIN(s) { .type = MSGPACK_OBJECT_BIN, .via.bin = { sizeof(s) - 1, s } }
#define NIL { .type = MSGPACK_OBJECT_NIL }
#define BOOL { .type = MSGPACK_OBJECT_BOOLEAN, .via.boolean = true }
#define RAW(s) .raw = (s), .raw_len = sizeof(s) - 1
#define OBJ(o) .val = o

static char filler[300]; /* 'a' * 300, set by run_vcases */

static void
run_vcases(const vcase *c, size_t n)
{
	memset(filler, 'a', sizeof(filler));
	for (size_t i = 0; i < n; i++) {
		msg m = sample(c[i].type), d;
		edit e = { .key = c[i].key, .val = c[i].val, .raw = c[i].raw, .raw_len = c[i].raw_len };
		blob b = edited(&m, &e);
		long r = msg_decode(b.p, b.n, &d);
		long want = c[i].want == SHOAL_OK ? (long)b.n : c[i].want;
		if (r != want)
			fail_msg("case %zu (%s.%s): got %ld want %ld", i, msg_type_name(c[i].type),
			         c[i].key, r, want);
		free(b.p);
	}
}
#define RUN(table) run_vcases(table, sizeof(table) / sizeof(table[0]))

static void
test_wrong_version(void **state)
{
	static const vcase c[] = {
		{ MSG_ACK, "v", OBJ(POS(2)), .want = SHOAL_EVERSION },
		{ MSG_ACK, "v", OBJ(POS(0)), .want = SHOAL_EVERSION },
		{ MSG_ACK, "v", OBJ(NEG(-1)), .want = SHOAL_EVERSION },
		{ MSG_ACK, "v", OBJ(POS(1ull << 40)), .want = SHOAL_EVERSION },
		{ MSG_ACK, "v", OBJ(STR("1")), .want = SHOAL_EMALFORMED },
		{ MSG_ACK, "v", OBJ(F64(1.0)), .want = SHOAL_EMALFORMED },
		{ MSG_ACK, "v", OBJ(NIL), .want = SHOAL_EMALFORMED },
		/* version 1 in any integer form */
		{ MSG_ACK, "v", RAW("\xcf\x00\x00\x00\x00\x00\x00\x00\x01"), .want = SHOAL_OK },
		{ MSG_ACK, "v", RAW("\xd0\x01"), .want = SHOAL_OK },
	};
	RUN(c);

	/* v:2 with an unknown type and a duplicate key: still EVERSION, so a
	 * peer speaking another version learns what is wrong */
	msg d;
	static const uint8_t odd[] = { 0x84, 0xa1, 't', 99, 0xa1, 'v', 2,
	                               0xa1, 'x', 1, 0xa1, 'x', 2 };
	assert_int_equal(msg_decode(odd, sizeof(odd), &d), SHOAL_EVERSION);
	static const uint8_t notype[] = { 0x81, 0xa1, 'v', 2 };
	assert_int_equal(msg_decode(notype, sizeof(notype), &d), SHOAL_EVERSION);
	static const uint8_t nov[] = { 0x81, 0xa1, 't', 7 };
	assert_int_equal(msg_decode(nov, sizeof(nov), &d), SHOAL_EMALFORMED);
	static const uint8_t twov[] = { 0x82, 0xa1, 'v', 1, 0xa1, 'v', 1 };
	assert_int_equal(msg_decode(twov, sizeof(twov), &d), SHOAL_EMALFORMED);
}

static void
test_unknown_type(void **state)
{
	static const vcase c[] = {
		{ MSG_ACK, "t", OBJ(POS(0)), .want = SHOAL_ETYPE },
		{ MSG_ACK, "t", OBJ(POS(12)), .want = SHOAL_ETYPE },
		{ MSG_ACK, "t", OBJ(POS(255)), .want = SHOAL_ETYPE },
		{ MSG_ACK, "t", OBJ(POS((1ull << 32) + 6)), .want = SHOAL_ETYPE },
		{ MSG_ACK, "t", OBJ(NEG(-6)), .want = SHOAL_ETYPE },
		{ MSG_ACK, "t", OBJ(STR("ACK")), .want = SHOAL_EMALFORMED },
		{ MSG_ACK, "t", OBJ(F64(6.0)), .want = SHOAL_EMALFORMED },
		{ MSG_ACK, "t", RAW("\xcd\x00\x06"), .want = SHOAL_OK },
	};
	RUN(c);
	assert_string_equal(msg_type_name(MSG_HELLO), "HELLO");
	assert_string_equal(msg_type_name(MSG_DONE), "DONE");
	assert_string_equal(msg_type_name((msg_type)0), "?");
	assert_string_equal(msg_type_name(MSG_SA_REPLY), "SA_REPLY");
	assert_string_equal(msg_type_name((msg_type)12), "?");
}

static void
test_wrong_value_family(void **state)
{
	static const vcase c[] = {
		{ MSG_HELLO, "name", OBJ(BIN("pi")), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "model", OBJ(POS(1)), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "dim", OBJ(STR("7850")), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "n", OBJ(F64(600.0)), .want = SHOAL_EMALFORMED },
		{ MSG_WELCOME, "hold", OBJ(NIL), .want = SHOAL_EMALFORMED },
		{ MSG_CHECKIN, "id", OBJ(BOOL), .want = SHOAL_EMALFORMED },
		{ MSG_CHECKIN, "id", OBJ(NEG(-1)), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "lr", OBJ(STR("0.1")), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "seed", OBJ(NEG(-5)), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "params", OBJ(STR("\0\0\0\0")), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "params", RAW("\x91\xca\x3f\x80\x00\x00"), .want = SHOAL_EMALFORMED },
		{ MSG_UPDATE, "delta", OBJ(NIL), .want = SHOAL_EMALFORMED },
		{ MSG_UPDATE, "loss", OBJ(BIN("\0\0\0\0")), .want = SHOAL_EMALFORMED },
		{ MSG_ERROR, "code", OBJ(POS(11)), .want = SHOAL_EMALFORMED },
		{ MSG_ERROR, "code", OBJ(F64(-11.0)), .want = SHOAL_EMALFORMED },
		{ MSG_ERROR, "msg", OBJ(NIL), .want = SHOAL_EMALFORMED },
		{ MSG_DONE, "round", RAW("\x80"), .want = SHOAL_EMALFORMED },
		/* lenient where msg.h says so: any integer form, float64 floats */
		{ MSG_HELLO, "dim", RAW("\xd1\x1e\xaa"), .want = SHOAL_OK },
		{ MSG_TASK, "seed", RAW("\xd3\x00\x00\x00\x00\x00\x00\x00\x09"), .want = SHOAL_OK },
		{ MSG_TASK, "lr", OBJ(F64(0.125)), .want = SHOAL_OK },
		{ MSG_TASK, "lr", OBJ(POS(1)), .want = SHOAL_OK },
		{ MSG_UPDATE, "loss", OBJ(NEG(-2)), .want = SHOAL_OK },
		{ MSG_ERROR, "code", RAW("\xd2\xff\xff\xff\xf5"), .want = SHOAL_OK },
		/* unknown keys are ignored, whatever they hold */
		{ MSG_ACK, "future", RAW("\x92\x81\xa1\x61\xc0\xd4\x01\x02"), .want = SHOAL_OK },
		{ MSG_ACK, "x", OBJ(BIN("whatever")), .want = SHOAL_OK },
	};
	RUN(c);

	/* spot-check the lenient values */
	msg m = sample(MSG_TASK), d;
	edit e = { .key = "lr", .val = F64(0.125) };
	blob b = edited(&m, &e);
	assert_int_equal(msg_decode(b.p, b.n, &d), (long)b.n);
	assert_true(d.lr == 0.125f);
	free(b.p);
	e = (edit){ .key = "dim", RAW("\xd1\x1e\xaa") };
	m = sample(MSG_HELLO);
	b = edited(&m, &e);
	assert_int_equal(msg_decode(b.p, b.n, &d), (long)b.n);
	assert_int_equal(d.dim, 7850);
	free(b.p);

	/* keys must be strings */
	static const uint8_t intkey[] = { 0x84, 0xa1, 'v', 1, 0xa1, 't', 6, 0xa5, 'r',
	                                  'o',  'u',  'n', 'd', 1, 0x05, 0x05 };
	assert_int_equal(msg_decode(intkey, sizeof(intkey), &d), SHOAL_EMALFORMED);
}

static void
test_string_limits(void **state)
{
	static const vcase c[] = {
		{ MSG_HELLO, "name", OBJ(STRN(64)), .want = SHOAL_OK },
		{ MSG_HELLO, "name", OBJ(STRN(65)), .want = SHOAL_ETOOBIG },
		{ MSG_HELLO, "name", OBJ(STRN(300)), .want = SHOAL_ETOOBIG },
		{ MSG_HELLO, "name", OBJ(STR("")), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "name", OBJ(STR("pi\x7f")), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "name", OBJ(STR("pi\nx")), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "name", OBJ(STR("pi\0x")), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "name", OBJ(STR("caf\xc3\xa9")), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "name", OBJ(STR(" ~")), .want = SHOAL_OK },
		{ MSG_HELLO, "model", OBJ(STRN(32)), .want = SHOAL_OK },
		{ MSG_HELLO, "model", OBJ(STRN(33)), .want = SHOAL_ETOOBIG },
		{ MSG_HELLO, "model", OBJ(STR("")), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "model", OBJ(STRN(33)), .want = SHOAL_ETOOBIG },
		{ MSG_TASK, "model", OBJ(STR("\t")), .want = SHOAL_EMALFORMED },
		{ MSG_ERROR, "msg", OBJ(STRN(256)), .want = SHOAL_OK },
		{ MSG_ERROR, "msg", OBJ(STRN(257)), .want = SHOAL_ETOOBIG },
		{ MSG_ERROR, "msg", OBJ(STR("")), .want = SHOAL_OK },
		{ MSG_ERROR, "msg", OBJ(STR("\x1b[31m")), .want = SHOAL_EMALFORMED },
	};
	RUN(c);
}

static void
test_bin_length_not_multiple_of_4(void **state)
{
	static const vcase c[] = {
		{ MSG_TASK, "params", OBJ(BIN("\0\0\0")), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "params", OBJ(BIN("\0\0\0\0\0")), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "params", OBJ(BIN("")), .want = SHOAL_EMALFORMED },
		{ MSG_UPDATE, "delta", OBJ(BIN("\0\0\0\0\0\0")), .want = SHOAL_EMALFORMED },
		{ MSG_UPDATE, "delta", OBJ(BIN("\0\0\0\0\0\0\0")), .want = SHOAL_EMALFORMED },
		{ MSG_UPDATE, "delta", OBJ(BIN("\0\0\0\0\0\0\0\0")), .want = SHOAL_OK },
	};
	RUN(c);
}

static void
test_nonfinite_rejected(void **state)
{
	static const vcase c[] = {
		/* vectors: LE float32 NaN 0x7fc00000, +Inf 0x7f800000, -Inf, sNaN */
		{ MSG_TASK, "params", OBJ(BIN("\0\0\x80\x3f\0\0\xc0\x7f")), .want = SHOAL_ENONFINITE },
		{ MSG_TASK, "params", OBJ(BIN("\0\0\x80\x7f")), .want = SHOAL_ENONFINITE },
		{ MSG_UPDATE, "delta", OBJ(BIN("\0\0\x80\xff\0\0\0\0")), .want = SHOAL_ENONFINITE },
		{ MSG_UPDATE, "delta", OBJ(BIN("\x01\0\x80\x7f")), .want = SHOAL_ENONFINITE },
		/* largest finite and denormals pass */
		{ MSG_UPDATE, "delta", OBJ(BIN("\xff\xff\x7f\x7f\x01\0\0\x80")), .want = SHOAL_OK },
		{ MSG_TASK, "lr", OBJ(F32(NAN)), .want = SHOAL_ENONFINITE },
		{ MSG_TASK, "lr", OBJ(F64(INFINITY)), .want = SHOAL_ENONFINITE },
		{ MSG_TASK, "lr", OBJ(F64(1e300)), .want = SHOAL_ENONFINITE }, /* overflows float */
		{ MSG_UPDATE, "loss", OBJ(F32(NAN)), .want = SHOAL_ENONFINITE },
		{ MSG_UPDATE, "loss", OBJ(F32(-INFINITY)), .want = SHOAL_ENONFINITE },
		{ MSG_UPDATE, "loss", OBJ(F64(NAN)), .want = SHOAL_ENONFINITE },
	};
	RUN(c);
}

static void
test_client_id_zero(void **state)
{
	static const vcase c[] = {
		{ MSG_WELCOME, "id", OBJ(POS(0)), .want = SHOAL_EMALFORMED },
		{ MSG_CHECKIN, "id", OBJ(POS(0)), .want = SHOAL_EMALFORMED },
		{ MSG_UPDATE, "id", OBJ(POS(0)), .want = SHOAL_EMALFORMED },
		{ MSG_CHECKIN, "id", RAW("\xcf\0\0\0\0\0\0\0\0"), .want = SHOAL_EMALFORMED },
		{ MSG_CHECKIN, "id", OBJ(POS(1)), .want = SHOAL_OK },
	};
	RUN(c);
	msg m = sample(MSG_CHECKIN);
	uint8_t *buf;
	size_t len;
	m.client_id = 0;
	assert_int_equal(msg_encode(&m, &buf, &len), SHOAL_EINVAL);
}

static void
test_numeric_limits(void **state)
{
	static const vcase c[] = {
		{ MSG_HELLO, "dim", OBJ(POS(0)), .want = SHOAL_EMALFORMED },
		{ MSG_HELLO, "dim", OBJ(POS(MSG_DIM_MAX)), .want = SHOAL_OK },
		{ MSG_HELLO, "dim", OBJ(POS(MSG_DIM_MAX + 1u)), .want = SHOAL_ETOOBIG },
		{ MSG_HELLO, "n", OBJ(POS(0)), .want = SHOAL_OK },
		{ MSG_HELLO, "n", OBJ(POS(1ull << 32)), .want = SHOAL_ETOOBIG },
		{ MSG_WELCOME, "hold", OBJ(POS(UINT32_MAX)), .want = SHOAL_OK },
		{ MSG_WELCOME, "hold", OBJ(POS(1ull << 32)), .want = SHOAL_ETOOBIG },
		{ MSG_TASK, "E", OBJ(POS(0)), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "E", OBJ(POS(MSG_EPOCHS_MAX)), .want = SHOAL_OK },
		{ MSG_TASK, "E", OBJ(POS(MSG_EPOCHS_MAX + 1)), .want = SHOAL_ETOOBIG },
		{ MSG_TASK, "B", OBJ(POS(0)), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "B", OBJ(POS(MSG_BATCH_MAX)), .want = SHOAL_OK },
		{ MSG_TASK, "B", OBJ(POS(MSG_BATCH_MAX + 1)), .want = SHOAL_ETOOBIG },
		{ MSG_TASK, "lr", OBJ(F32(0.0)), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "lr", OBJ(F32(-0.1)), .want = SHOAL_EMALFORMED },
		{ MSG_TASK, "lr", OBJ(F64(1e-60)), .want = SHOAL_EMALFORMED }, /* 0 as float */
		{ MSG_TASK, "seed", OBJ(POS(UINT64_MAX)), .want = SHOAL_OK },
		{ MSG_TASK, "round", OBJ(POS(1ull << 32)), .want = SHOAL_ETOOBIG },
		{ MSG_UPDATE, "n", OBJ(POS(0)), .want = SHOAL_EMALFORMED },
		{ MSG_UPDATE, "n", OBJ(POS(1)), .want = SHOAL_OK },
		{ MSG_ERROR, "code", OBJ(NEG(INT32_MIN)), .want = SHOAL_OK },
		{ MSG_ERROR, "code", OBJ(NEG((int64_t)INT32_MIN - 1)), .want = SHOAL_ETOOBIG },
		{ MSG_ERROR, "code", OBJ(POS(0)), .want = SHOAL_EMALFORMED },
	};
	RUN(c);
}

static void
test_encode_rejects_invalid(void **state)
{
	static const float nanv[2] = { 1.0f, NAN };
	msg ms[32];
	size_t n = 0;
#define BAD(t, stmt)                  \
	do {                              \
		ms[n] = sample(t);            \
		{ msg *m = &ms[n]; stmt; }    \
		n++;                          \
	} while (0)
	BAD(MSG_HELLO, m->name[0] = '\0');
	BAD(MSG_HELLO, memset(m->name, 'a', sizeof(m->name))); /* not NUL-terminated */
	BAD(MSG_HELLO, m->name[1] = '\n');
	BAD(MSG_HELLO, m->model[0] = '\0');
	BAD(MSG_HELLO, m->dim = 0);
	BAD(MSG_HELLO, m->dim = MSG_DIM_MAX + 1);
	BAD(MSG_WELCOME, m->client_id = 0);
	BAD(MSG_TASK, m->epochs = 0);
	BAD(MSG_TASK, m->epochs = MSG_EPOCHS_MAX + 1);
	BAD(MSG_TASK, m->batch = MSG_BATCH_MAX + 1);
	BAD(MSG_TASK, m->lr = 0.0f);
	BAD(MSG_TASK, m->lr = NAN);
	BAD(MSG_TASK, m->vec = NULL);
	BAD(MSG_TASK, m->dim = 0);
	BAD(MSG_TASK, m->vec = (const uint8_t *)nanv; m->dim = 2);
	BAD(MSG_UPDATE, m->n_examples = 0);
	BAD(MSG_UPDATE, m->loss = INFINITY);
	BAD(MSG_UPDATE, m->client_id = 0);
	BAD(MSG_ERROR, m->code = 0);
	BAD(MSG_ERROR, m->text[0] = '\x01');
	BAD((msg_type)0, (void)m);
	BAD((msg_type)12, (void)m);
	BAD(MSG_SA, m->phase = 0);
	BAD(MSG_SA, m->phase = 6);
	BAD(MSG_SA, m->has_sa = false);
	BAD(MSG_SA_REPLY, m->sa_len = 5); /* 5 bytes at NULL */
#undef BAD
	for (size_t i = 0; i < n; i++) {
		uint8_t *buf = (uint8_t *)1;
		size_t len = 1;
		if (msg_encode(&ms[i], &buf, &len) != SHOAL_EINVAL)
			fail_msg("case %zu encoded", i);
		assert_null(buf);
		assert_int_equal(len, 0);
		assert_int_equal(msg_encoded_size(&ms[i]), 0);
	}
}

/* ---- garbage ----------------------------------------------------------- */

static uint64_t
xs64(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* Whatever decodes must re-encode, and decode again to the same message. */
static void
check_any(const uint8_t *p, size_t len)
{
	msg d, d2;
	long r = msg_decode(p, len, &d);
	if (r < 0)
		return;
	assert_true((size_t)r <= len);
	uint8_t *buf;
	size_t n;
	assert_int_equal(msg_encode(&d, &buf, &n), SHOAL_OK);
	assert_int_equal(msg_decode(buf, n, &d2), (long)n);
	assert_msg_equal(&d, &d2);
	free(buf);
}

static void
test_random_garbage(void **state)
{
	uint64_t s = 0x9e3779b97f4a7c15ull;
	uint8_t *p;
	for (int i = 0; i < 20000; i++) {
		size_t len = xs64(&s) % 96;
		p = malloc(len + 1);
		assert_non_null(p);
		for (size_t j = 0; j < len; j++)
			p[j] = (uint8_t)xs64(&s);
		/* mostly maps, so the walk gets past the first byte */
		if (len > 0 && i % 4 != 0)
			p[0] = (uint8_t)(0x80 | (xs64(&s) % 16));
		check_any(p, len);
		free(p);
	}
}

static void
test_random_byte_flips(void **state)
{
	uint64_t s = 12345;
	int decoded = 0;
	for (int t = 1; t <= N_TYPES; t++) {
		msg m = sample((msg_type)t);
		uint8_t *enc;
		size_t len;
		encode_ok(&m, &enc, &len);
		for (int i = 0; i < 3000; i++) {
			uint8_t *p = malloc(len);
			assert_non_null(p);
			memcpy(p, enc, len);
			int flips = 1 + (int)(xs64(&s) % 3);
			for (int f = 0; f < flips; f++) {
				size_t at = xs64(&s) % len;
				if (xs64(&s) % 2)
					p[at] ^= (uint8_t)(1u << (xs64(&s) % 8));
				else
					p[at] = (uint8_t)xs64(&s);
			}
			/* and sometimes cut it short too */
			size_t n = (i % 5 == 0) ? xs64(&s) % (len + 1) : len;
			check_any(p, n);
			decoded += msg_decode(p, n, &m) >= 0;
			free(p);
		}
		free(enc);
	}
	assert_true(decoded > 0); /* some flips land in values and still decode */
}

/* TASK's optional keys: omitted when 0 (so plain FedAvg TASKs are
 * unchanged), decoded when present, refused when negative. */
/* A TASK with most optional keys has more than 15 entries: a map16 header
 * (msg_encode sized every map as a fixmap and refused these with
 * SHOAL_EINVAL; found by tests/fuzz: fuzz_seeds encoding such a TASK, and
 * fuzz_msg re-encoding a decoded 16-entry one). */
static void
test_task_every_key(void **state)
{
	(void)state;
	static const uint8_t dq[3] = {1, 2, 3}, sa[2] = {4, 5};
	msg t = {.type = MSG_TASK, .round = 3, .epochs = 1, .batch = 10, .lr = 0.1f,
	         .deadline_ms = 1000, .seed = 9, .momentum = 0.9f, .weight_decay = 1e-4f,
	         .prox_mu = 0.01f, .model_ver = 5, .base = 4, .blob = dq, .blob_len = sizeof dq,
	         .sa = sa, .sa_len = sizeof sa, .has_sa = true, .clip = 1.5f};
	strcpy(t.model, "2nn");
	strcpy(t.up, "topk:0.1,q8");
	uint8_t *b;
	size_t n;
	assert_int_equal(msg_encode(&t, &b, &n), SHOAL_OK);
	assert_int_equal(msg_encoded_size(&t), n);
	assert_true(b[0] == 0xde && b[1] == 0 && b[2] == 18); /* map16: v, t + 16 keys */
	msg d;
	assert_int_equal(msg_decode(b, n, &d), (long)n);
	assert_true(d.clip == 1.5f && d.base == 4 && d.blob_len == 3 && d.sa_len == 2);
	assert_string_equal(d.up, "topk:0.1,q8");
	free(b);
	/* 15 entries are still a fixmap */
	t.clip = 0.0f;
	t.base = 0;
	t.model_ver = 0;
	assert_int_equal(msg_encode(&t, &b, &n), SHOAL_OK);
	assert_true(b[0] == 0x8f);
	assert_int_equal(msg_decode(b, n, &d), (long)n);
	free(b);
}

static void
test_task_optional_keys(void **state)
{
	(void)state;
	float p[2] = {0.5f, -1.0f};
	msg t = {.type = MSG_TASK, .round = 3, .epochs = 1, .batch = 10, .lr = 0.1f,
	         .deadline_ms = 1000, .seed = 9, .dim = 2, .vec = (const uint8_t *)p};
	strcpy(t.model, "2nn");
	uint8_t *plain, *full;
	size_t plain_len, full_len;
	assert_int_equal(msg_encode(&t, &plain, &plain_len), SHOAL_OK);
	assert_true(plain[0] == 0x8a); /* fixmap: v, t + 8 required keys */
	msg d;
	assert_int_equal(msg_decode(plain, plain_len, &d), (long)plain_len);
	assert_true(d.momentum == 0.0f && d.weight_decay == 0.0f && d.prox_mu == 0.0f);

	t.momentum = 0.9f;
	t.weight_decay = 1e-4f;
	t.prox_mu = 0.01f;
	assert_int_equal(msg_encode(&t, &full, &full_len), SHOAL_OK);
	assert_true(full[0] == 0x8d);
	assert_int_equal(full_len, plain_len + 3 * 5 + 4 + 3 + 3); /* keys + float32s */
	assert_int_equal(msg_encoded_size(&t), full_len);
	assert_int_equal(msg_decode(full, full_len, &d), (long)full_len);
	assert_true(d.momentum == 0.9f && d.weight_decay == 1e-4f && d.prox_mu == 0.01f);

	t.prox_mu = -1.0f;
	uint8_t *bad;
	size_t bad_len;
	assert_int_equal(msg_encode(&t, &bad, &bad_len), SHOAL_EINVAL);
	/* A negative "mu" on the wire: set the float32 sign bit. */
	int patched = 0;
	for (size_t i = 0; i + 4 < full_len; i++)
		if (memcmp(full + i, "\xa2mu\xca", 4) == 0) {
			full[i + 4] |= 0x80;
			patched++;
		}
	assert_int_equal(patched, 1);
	assert_int_equal(msg_decode(full, full_len, &d), SHOAL_EMALFORMED);
	free(plain);
	free(full);
}

/* Compression keys: HELLO "cx", CHECKIN "ver", TASK "up"/"ver"/"base"/"dq",
 * UPDATE "upd"; a TASK or UPDATE carries exactly one payload. */
static void
test_compression_keys(void **state)
{
	(void)state;
	static const uint8_t cxb[5] = {1, 2, 3, 4, 5};
	float p[1] = {1.0f};
	uint8_t *b;
	size_t n;
	msg d;

	msg h = {.type = MSG_HELLO, .dim = 3, .n_examples = 1, .cx_caps = MSG_CX_ALL};
	strcpy(h.name, "a");
	strcpy(h.model, "m");
	assert_int_equal(msg_encode(&h, &b, &n), SHOAL_OK);
	assert_int_equal(msg_decode(b, n, &d), (long)n);
	assert_int_equal(d.cx_caps, MSG_CX_ALL);
	free(b);

	msg c = {.type = MSG_CHECKIN, .client_id = 2, .model_ver = 9};
	assert_int_equal(msg_encode(&c, &b, &n), SHOAL_OK);
	assert_int_equal(msg_decode(b, n, &d), (long)n);
	assert_int_equal(d.model_ver, 9);
	free(b);

	msg t = {.type = MSG_TASK, .round = 4, .epochs = 1, .batch = 1, .lr = 0.1f,
	         .model_ver = 7, .base = 6, .blob = cxb, .blob_len = sizeof cxb};
	strcpy(t.model, "m");
	strcpy(t.up, "topk:0.01,q8");
	assert_int_equal(msg_encode(&t, &b, &n), SHOAL_OK);
	assert_int_equal(msg_encoded_size(&t), n);
	assert_int_equal(msg_decode(b, n, &d), (long)n);
	assert_string_equal(d.up, "topk:0.01,q8");
	assert_int_equal(d.model_ver, 7);
	assert_int_equal(d.base, 6);
	assert_null(d.vec);
	assert_int_equal(d.blob_len, sizeof cxb);
	assert_memory_equal(d.blob, cxb, sizeof cxb);
	assert_true(d.blob >= b && d.blob + d.blob_len <= b + n); /* zero copy */
	free(b);
	t.vec = (const uint8_t *)p; /* both payloads */
	t.dim = 1;
	assert_int_equal(msg_encode(&t, &b, &n), SHOAL_EINVAL);
	t.vec = NULL;
	t.blob = NULL; /* neither */
	assert_int_equal(msg_encode(&t, &b, &n), SHOAL_EINVAL);

	msg u = {.type = MSG_UPDATE, .client_id = 1, .round = 4, .n_examples = 3,
	         .blob = cxb, .blob_len = sizeof cxb};
	assert_int_equal(msg_encode(&u, &b, &n), SHOAL_OK);
	assert_int_equal(msg_decode(b, n, &d), (long)n);
	assert_int_equal(d.blob_len, sizeof cxb);
	assert_null(d.vec);
	free(b);

	/* On the wire: an UPDATE without delta or upd, and one with both. */
	const uint8_t none[] = {0x86, 0xa1, 'v', 1, 0xa1, 't', 5, 0xa2, 'i', 'd', 1,
	                        0xa5, 'r', 'o', 'u', 'n', 'd', 1, 0xa1, 'n', 1,
	                        0xa4, 'l', 'o', 's', 's', 0};
	assert_int_equal(msg_decode(none, sizeof none, &d), SHOAL_EMALFORMED);
	const uint8_t both[] = {0x88, 0xa1, 'v', 1, 0xa1, 't', 5, 0xa2, 'i', 'd', 1,
	                        0xa5, 'r', 'o', 'u', 'n', 'd', 1, 0xa1, 'n', 1,
	                        0xa4, 'l', 'o', 's', 's', 0,
	                        0xa5, 'd', 'e', 'l', 't', 'a', 0xc4, 4, 0, 0, 0x80, 0x3f,
	                        0xa3, 'u', 'p', 'd', 0xc4, 1, 7};
	assert_int_equal(msg_decode(both, sizeof both, &d), SHOAL_EMALFORMED);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_round_trip_every_type),
	cmocka_unit_test(test_task_optional_keys),
	cmocka_unit_test(test_task_every_key),
	cmocka_unit_test(test_compression_keys),
	cmocka_unit_test(test_vector_zero_copy),
	cmocka_unit_test(test_large_vector_round_trip),
	cmocka_unit_test(test_encoded_size_matches),
	cmocka_unit_test(test_known_answer_wait),
	cmocka_unit_test(test_known_answer_error),
	cmocka_unit_test(test_known_answer_update),
	cmocka_unit_test(test_encode_error_helper),
	cmocka_unit_test(test_every_truncation_rejected),
	cmocka_unit_test(test_trailing_bytes_not_consumed),
	cmocka_unit_test(test_not_a_map),
	cmocka_unit_test(test_structure_limits),
	cmocka_unit_test(test_keys_in_table_order),
	cmocka_unit_test(test_missing_key_per_type),
	cmocka_unit_test(test_duplicate_key_per_type),
	cmocka_unit_test(test_empty_key_twice),
	cmocka_unit_test(test_wrong_version),
	cmocka_unit_test(test_unknown_type),
	cmocka_unit_test(test_wrong_value_family),
	cmocka_unit_test(test_string_limits),
	cmocka_unit_test(test_bin_length_not_multiple_of_4),
	cmocka_unit_test(test_nonfinite_rejected),
	cmocka_unit_test(test_client_id_zero),
	cmocka_unit_test(test_numeric_limits),
	cmocka_unit_test(test_encode_rejects_invalid),
	cmocka_unit_test(test_random_garbage),
	cmocka_unit_test(test_random_byte_flips),
};

SHOAL_TEST_MAIN(tests)
