/* msg.c - the msgpack codec of shoal's wire messages (see msg.h and
 * PROTOCOL.md; the tables below are the message layouts).
 *
 * Decoding untrusted bytes happens in two passes. scan() walks the msgpack
 * structure without allocating: it finds the exact end of the top-level map
 * (so a prefix is SHOAL_ETRUNC), and bounds nesting depth and the total
 * object count. Only then does msgpack_unpack_next() build the object tree,
 * whose allocation is thereby bounded by MSG_OBJECTS_MAX objects (a declared
 * map32 count of 2^32-1 in a five-byte input would otherwise make msgpack-c
 * try to allocate 128 GiB). str/bin objects point into the input (zero copy).
 *
 * Worked example: WAIT {v:1, t:7, retry:500} is 16 bytes:
 *   83                 fixmap, 3 entries
 *   a1 76  01          "v" -> 1          (positive fixint)
 *   a1 74  07          "t" -> 7 (WAIT)
 *   a5 72 65 74 72 79  "retry"
 *   cd 01 f4           -> 500            (uint16, big-endian)
 * i.e. 83 a1 76 01 a1 74 07 a5 72 65 74 72 79 cd 01 f4. */
#include "common/msg.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Structure limits of the decoder (also in PROTOCOL.md). A valid message
 * has at most 43 objects and depth 1; the slack is for future keys. */
#define MSG_DEPTH_MAX 16
#define MSG_OBJECTS_MAX 1024

typedef enum { F_U32, F_U64, F_I32, F_F32, F_STR, F_VEC, F_BIN, F_SA, F_FIX } fkind;

/* One key of a message type. For F_U32/F_U64 lo..hi bound the value
 * (below lo: malformed, above hi: too big); for F_STR they bound the
 * length; for F_I32 the value must be negative; for F_F32 lo == 1 means
 * "must be > 0" and lo == 2 "must be >= 0"; F_BIN is opaque bytes
 * (msg.blob), 1..hi long; F_SA is opaque secure-aggregation bytes (msg.sa),
 * lo..hi long (lo may be 0); F_FIX is a bin of exactly hi bytes copied to
 * the array at off, and lo is the offset of the bool that says whether it
 * is present. An optional key (opt) decodes to 0 / "" / NULL when absent
 * and is not written when it holds that value. */
typedef struct field {
	const char *key;
	fkind kind;
	size_t off; /* offsetof(msg, ...) */
	uint64_t lo, hi;
	bool opt;
} field;

#define U32(k, member, lo, hi) { k, F_U32, offsetof(msg, member), lo, hi, false }
#define U32ANY(k, member) U32(k, member, 0, UINT32_MAX)

#define OPT_U32(k, member) { k, F_U32, offsetof(msg, member), 0, UINT32_MAX, true }
#define FIX(k, member, n) { k, F_FIX, offsetof(msg, member), offsetof(msg, has_##member), n, true }

/* Client identity (PROTOCOL.md section 16): every type may end with a
 * "nonce", and requests with a "sig", which must be the last key (the
 * signature covers the bytes before it). Writers put them last. */
#define NONCE FIX("nonce", nonce, MSG_NONCE_BYTES)
#define SIG FIX("sig", sig, MSG_SIG_BYTES)

static const field f_hello[] = {
	{ "name", F_STR, offsetof(msg, name), 1, MSG_NAME_MAX, false },
	{ "model", F_STR, offsetof(msg, model), 1, MSG_MODEL_MAX, false },
	U32("dim", dim, 1, MSG_DIM_MAX),
	U32ANY("n", n_examples),
	OPT_U32("cx", cx_caps),
	FIX("pk", pk, MSG_PK_BYTES),
	{ "tok", F_STR, offsetof(msg, token), 1, MSG_TOKEN_MAX, true },
	NONCE,
	SIG,
};
static const field f_welcome[] = {
	U32("id", client_id, 1, UINT32_MAX),
	U32ANY("hold", hold_ms),
	NONCE,
};
static const field f_checkin[] = {
	U32("id", client_id, 1, UINT32_MAX),
	OPT_U32("ver", model_ver),
	NONCE,
	SIG,
};
static const field f_task[] = {
	U32ANY("round", round),
	{ "model", F_STR, offsetof(msg, model), 1, MSG_MODEL_MAX, false },
	U32("E", epochs, 1, MSG_EPOCHS_MAX),
	U32("B", batch, 1, MSG_BATCH_MAX),
	{ "lr", F_F32, offsetof(msg, lr), 1, 0, false },
	U32ANY("deadline", deadline_ms),
	{ "seed", F_U64, offsetof(msg, seed), 0, UINT64_MAX, false },
	{ "mom", F_F32, offsetof(msg, momentum), 2, 0, true },
	{ "wd", F_F32, offsetof(msg, weight_decay), 2, 0, true },
	{ "mu", F_F32, offsetof(msg, prox_mu), 2, 0, true },
	{ "up", F_STR, offsetof(msg, up), 1, MSG_MODEL_MAX, true },
	OPT_U32("ver", model_ver),
	OPT_U32("base", base),
	{ "params", F_VEC, 0, 0, 0, true },
	{ "dq", F_BIN, 0, 1, MSG_BIN_MAX, true },
	{ "sa", F_SA, 0, 1, MSG_BIN_MAX, true },
	{ "clip", F_F32, offsetof(msg, clip), 2, 0, true },
	OPT_U32("budget", budget_ms),
	OPT_U32("nsteps", ref_steps),
	NONCE,
};
static const field f_update[] = {
	U32("id", client_id, 1, UINT32_MAX),
	U32ANY("round", round),
	U32("n", n_examples, 1, UINT32_MAX),
	{ "loss", F_F32, offsetof(msg, loss), 0, 0, false },
	{ "delta", F_VEC, 0, 0, 0, true },
	{ "upd", F_BIN, 0, 1, MSG_BIN_MAX, true },
	OPT_U32("tau", tau),
	NONCE,
	SIG,
};
static const field f_ack[] = { U32ANY("round", round), NONCE };
static const field f_wait[] = { U32ANY("retry", retry_ms), NONCE };
static const field f_error[] = {
	{ "code", F_I32, offsetof(msg, code), 0, 0, false },
	{ "msg", F_STR, offsetof(msg, text), 0, MSG_TEXT_MAX, false },
	NONCE,
};
static const field f_done[] = { U32ANY("round", round), NONCE };
static const field f_sa[] = {
	U32("id", client_id, 1, UINT32_MAX),
	U32ANY("round", round),
	U32("ph", phase, 1, 5),
	{ "sa", F_SA, 0, 0, MSG_BIN_MAX, false },
	OPT_U32("tau", tau),
	NONCE,
	SIG,
};
static const field f_sa_reply[] = {
	U32ANY("round", round),
	U32("ph", phase, 1, 5),
	{ "sa", F_SA, 0, 0, MSG_BIN_MAX, false },
	NONCE,
};

typedef struct layout {
	const char *name;
	const field *f;
	size_t n;
} layout;

#define L(nm, arr) { nm, arr, sizeof(arr) / sizeof(arr[0]) }
static const layout layouts[] = {
	[MSG_HELLO] = L("HELLO", f_hello),
	[MSG_WELCOME] = L("WELCOME", f_welcome),
	[MSG_CHECKIN] = L("CHECKIN", f_checkin),
	[MSG_TASK] = L("TASK", f_task),
	[MSG_UPDATE] = L("UPDATE", f_update),
	[MSG_ACK] = L("ACK", f_ack),
	[MSG_WAIT] = L("WAIT", f_wait),
	[MSG_ERROR] = L("ERROR", f_error),
	[MSG_DONE] = L("DONE", f_done),
	[MSG_SA] = L("SA", f_sa),
	[MSG_SA_REPLY] = L("SA_REPLY", f_sa_reply),
};

static const layout *
layout_of(int64_t t)
{
	if (t < MSG_HELLO || t > MSG_SA_REPLY)
		return NULL;
	return &layouts[t];
}

const char *
msg_type_name(msg_type t)
{
	const layout *l = layout_of((int64_t)t);
	return l != NULL ? l->name : "?";
}

static bool
host_is_le(void)
{
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
	return __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
#else
	const uint16_t one = 1;
	uint8_t b;
	memcpy(&b, &one, 1);
	return b == 1;
#endif
}

void
msg_vec_to_host(float *dst, const uint8_t *src, size_t dim)
{
	if (host_is_le()) {
		memcpy(dst, src, dim * 4);
		return;
	}
	for (size_t i = 0; i < dim; i++) {
		const uint8_t *p = src + 4 * i;
		uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		             (uint32_t)p[3] << 24;
		memcpy(&dst[i], &u, 4);
	}
}

static void
vec_to_wire(uint8_t *dst, const uint8_t *src, size_t dim)
{
	if (host_is_le()) {
		memcpy(dst, src, dim * 4);
		return;
	}
	for (size_t i = 0; i < dim; i++) {
		uint32_t u;
		memcpy(&u, src + 4 * i, 4);
		dst[4 * i] = (uint8_t)u;
		dst[4 * i + 1] = (uint8_t)(u >> 8);
		dst[4 * i + 2] = (uint8_t)(u >> 16);
		dst[4 * i + 3] = (uint8_t)(u >> 24);
	}
}

/* NaN/Inf in dim little-endian float32 values: exponent bits all ones. */
static bool
wire_vec_finite(const uint8_t *p, size_t dim)
{
	for (size_t i = 0; i < dim; i++, p += 4)
		if ((p[3] & 0x7f) == 0x7f && (p[2] & 0x80))
			return false;
	return true;
}

/* v may be unaligned (e.g. a decoded message re-encoded), so memcpy. */
static bool
host_vec_finite(const uint8_t *v, size_t dim)
{
	for (size_t i = 0; i < dim; i++) {
		float x;
		memcpy(&x, v + 4 * i, sizeof(x));
		if (!isfinite(x))
			return false;
	}
	return true;
}

static bool
printable(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

/* ---- structure scan ---------------------------------------------------- */

static uint64_t
be(const uint8_t *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/* Length of the one msgpack object at buf[0..len) whose first byte is a map
 * header, or SHOAL_ETRUNC / SHOAL_EMALFORMED (0xc1) / SHOAL_ETOOBIG (depth
 * or object count). Never reads past len; allocates nothing. */
static long
scan(const uint8_t *buf, size_t len)
{
	uint64_t left[MSG_DEPTH_MAX]; /* elements still to read per open level */
	size_t top = 0, off = 0, objects = 0;

	for (;;) {
		if (off >= len)
			return SHOAL_ETRUNC;
		uint8_t b = buf[off++];
		size_t avail = len - off;
		uint64_t body = 0;  /* payload bytes after the header */
		uint64_t count = 0; /* container elements (map: 2 per entry) */
		bool container = false;
		size_t lenbytes = 0, extra = 0;

		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
			/* fixint, nil, bool: header only */
		} else if (b <= 0x8f) {
			container = true, count = 2u * (b & 0x0fu);
		} else if (b <= 0x9f) {
			container = true, count = b & 0x0fu;
		} else if (b <= 0xbf) {
			body = b & 0x1fu;
		} else {
			switch (b) {
			case 0xc4: case 0xd9: lenbytes = 1; break;      /* bin8, str8 */
			case 0xc5: case 0xda: lenbytes = 2; break;      /* bin16, str16 */
			case 0xc6: case 0xdb: lenbytes = 4; break;      /* bin32, str32 */
			case 0xc7: lenbytes = 1, extra = 1; break;      /* ext8 */
			case 0xc8: lenbytes = 2, extra = 1; break;      /* ext16 */
			case 0xc9: lenbytes = 4, extra = 1; break;      /* ext32 */
			case 0xca: body = 4; break;                     /* float32 */
			case 0xcb: body = 8; break;                     /* float64 */
			case 0xcc: case 0xd0: body = 1; break;          /* (u)int8 */
			case 0xcd: case 0xd1: body = 2; break;
			case 0xce: case 0xd2: body = 4; break;
			case 0xcf: case 0xd3: body = 8; break;
			case 0xd4: body = 2; break;                     /* fixext1..16 */
			case 0xd5: body = 3; break;
			case 0xd6: body = 5; break;
			case 0xd7: body = 9; break;
			case 0xd8: body = 17; break;
			case 0xdc: container = true, lenbytes = 2; break; /* array16 */
			case 0xdd: container = true, lenbytes = 4; break; /* array32 */
			case 0xde: container = true, lenbytes = 2; break; /* map16 */
			case 0xdf: container = true, lenbytes = 4; break; /* map32 */
			default: return SHOAL_EMALFORMED;               /* 0xc1 */
			}
			if (lenbytes > 0) {
				if (avail < lenbytes)
					return SHOAL_ETRUNC;
				uint64_t n = be(buf + off, lenbytes);
				off += lenbytes, avail -= lenbytes;
				if (container)
					count = (b == 0xde || b == 0xdf) ? 2 * n : n;
				else
					body = n + extra;
			}
		}
		if (body > avail)
			return SHOAL_ETRUNC;
		off += (size_t)body;
		if (++objects > MSG_OBJECTS_MAX)
			return SHOAL_ETOOBIG;
		if (container && count > 0) {
			if (top == MSG_DEPTH_MAX)
				return SHOAL_ETOOBIG;
			left[top++] = count;
			continue;
		}
		/* one element done; close every container it completes */
		for (;;) {
			if (top == 0)
				return off > LONG_MAX ? SHOAL_ETOOBIG : (long)off;
			if (--left[top - 1] > 0)
				break;
			top--;
		}
	}
}

/* ---- decoding ---------------------------------------------------------- */

static bool
key_is(const msgpack_object *k, const char *s)
{
	size_t n = strlen(s);
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
	       memcmp(k->via.str.ptr, s, n) == 0;
}

/* The value of key, NULL if absent; *dup set if it occurs more than once. */
static const msgpack_object *
lookup(const msgpack_object_map *m, const char *key, bool *dup)
{
	const msgpack_object *v = NULL;
	*dup = false;
	for (uint32_t i = 0; i < m->size; i++) {
		if (!key_is(&m->ptr[i].key, key))
			continue;
		if (v != NULL)
			*dup = true;
		v = &m->ptr[i].val;
	}
	return v;
}

/* Every key a str, none twice. */
static bool
keys_ok(const msgpack_object_map *m)
{
	for (uint32_t i = 0; i < m->size; i++) {
		const msgpack_object *a = &m->ptr[i].key;
		if (a->type != MSGPACK_OBJECT_STR)
			return false;
		for (uint32_t j = 0; j < i; j++) {
			const msgpack_object *b = &m->ptr[j].key;
			/* msgpack-c gives an empty str a NULL ptr: no memcmp then */
			if (a->via.str.size == b->via.str.size &&
			    (a->via.str.size == 0 ||
			     memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0))
				return false;
		}
	}
	return true;
}

static shoal_err
decode_field(const field *f, const msgpack_object *o, msg *out)
{
	char *base = (char *)out;

	switch (f->kind) {
	case F_U32:
	case F_U64: {
		if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return SHOAL_EMALFORMED; /* negative ones too */
		uint64_t v = o->via.u64;
		if (v < f->lo)
			return SHOAL_EMALFORMED;
		if (v > f->hi)
			return SHOAL_ETOOBIG;
		if (f->kind == F_U32) {
			uint32_t w = (uint32_t)v;
			memcpy(base + f->off, &w, sizeof(w));
		} else {
			memcpy(base + f->off, &v, sizeof(v));
		}
		return SHOAL_OK;
	}
	case F_I32: {
		/* ERROR.code: a negative shoal_err (0 and up are malformed) */
		if (o->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
			return SHOAL_EMALFORMED;
		if (o->via.i64 < INT32_MIN)
			return SHOAL_ETOOBIG;
		int32_t w = (int32_t)o->via.i64;
		memcpy(base + f->off, &w, sizeof(w));
		return SHOAL_OK;
	}
	case F_F32: {
		double d;
		if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
			d = o->via.f64;
		else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			d = (double)o->via.u64;
		else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			d = (double)o->via.i64;
		else
			return SHOAL_EMALFORMED;
		if (!isfinite(d) || fabs(d) > FLT_MAX)
			return SHOAL_ENONFINITE; /* also a double that overflows float */
		float v = (float)d;
		if ((f->lo == 1 && !(v > 0.0f)) || (f->lo == 2 && !(v >= 0.0f)))
			return SHOAL_EMALFORMED;
		memcpy(base + f->off, &v, sizeof(v));
		return SHOAL_OK;
	}
	case F_STR: {
		if (o->type != MSGPACK_OBJECT_STR)
			return SHOAL_EMALFORMED;
		size_t n = o->via.str.size;
		if (n > f->hi)
			return SHOAL_ETOOBIG;
		if (n < f->lo || !printable(o->via.str.ptr, n))
			return SHOAL_EMALFORMED;
		memcpy(base + f->off, o->via.str.ptr, n);
		base[f->off + n] = '\0';
		return SHOAL_OK;
	}
	case F_VEC: {
		if (o->type != MSGPACK_OBJECT_BIN)
			return SHOAL_EMALFORMED;
		size_t n = o->via.bin.size;
		if (n % 4 != 0 || n == 0)
			return SHOAL_EMALFORMED;
		if (n / 4 > MSG_DIM_MAX)
			return SHOAL_ETOOBIG;
		const uint8_t *p = (const uint8_t *)o->via.bin.ptr;
		if (!wire_vec_finite(p, n / 4))
			return SHOAL_ENONFINITE;
		out->vec = p;
		out->dim = (uint32_t)(n / 4);
		return SHOAL_OK;
	}
	case F_BIN: {
		if (o->type != MSGPACK_OBJECT_BIN)
			return SHOAL_EMALFORMED;
		size_t n = o->via.bin.size;
		if (n < f->lo)
			return SHOAL_EMALFORMED;
		if (n > f->hi)
			return SHOAL_ETOOBIG;
		out->blob = (const uint8_t *)o->via.bin.ptr;
		out->blob_len = n;
		return SHOAL_OK;
	}
	case F_SA: {
		if (o->type != MSGPACK_OBJECT_BIN)
			return SHOAL_EMALFORMED;
		size_t n = o->via.bin.size;
		if (n < f->lo)
			return SHOAL_EMALFORMED;
		if (n > f->hi)
			return SHOAL_ETOOBIG;
		out->sa = (const uint8_t *)o->via.bin.ptr;
		out->sa_len = n;
		out->has_sa = true;
		return SHOAL_OK;
	}
	case F_FIX: {
		if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != f->hi)
			return SHOAL_EMALFORMED;
		bool present = true;
		memcpy(base + f->off, o->via.bin.ptr, (size_t)f->hi);
		memcpy(base + f->lo, &present, sizeof present);
		return SHOAL_OK;
	}
	}
	return SHOAL_EMALFORMED;
}

/* A TASK carries exactly one of "params" / "dq", an UPDATE exactly one of
 * "delta" / "upd"; other types carry neither. */
static bool
one_payload(const msg *m)
{
	bool vec = m->vec != NULL, blob = m->blob != NULL;

	if (m->type == MSG_TASK || m->type == MSG_UPDATE)
		return vec != blob;
	return !vec && !blob;
}

static shoal_err
decode_map(const msgpack_object *root, msg *out)
{
	const msgpack_object_map *m;
	const msgpack_object *v;
	bool dup;

	if (root->type != MSGPACK_OBJECT_MAP)
		return SHOAL_EMALFORMED;
	m = &root->via.map;

	/* "v" first: a peer speaking another version gets EVERSION even if
	 * the rest of its message means something else to us */
	v = lookup(m, "v", &dup);
	if (v == NULL || dup)
		return SHOAL_EMALFORMED;
	if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		return SHOAL_EVERSION;
	if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return SHOAL_EMALFORMED;
	if (v->via.u64 != MSG_VERSION)
		return SHOAL_EVERSION;
	out->version = MSG_VERSION;

	if (!keys_ok(m))
		return SHOAL_EMALFORMED;

	v = lookup(m, "t", &dup);
	if (v == NULL)
		return SHOAL_EMALFORMED;
	const layout *l;
	if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		l = v->via.u64 <= MSG_SA_REPLY ? layout_of((int64_t)v->via.u64) : NULL;
	else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		l = NULL;
	else
		return SHOAL_EMALFORMED;
	if (l == NULL)
		return SHOAL_ETYPE;
	out->type = (msg_type)v->via.u64;

	for (size_t i = 0; i < l->n; i++) {
		v = lookup(m, l->f[i].key, &dup);
		if (v == NULL && l->f[i].opt)
			continue; /* stays 0 */
		if (v == NULL)
			return SHOAL_EMALFORMED;
		shoal_err e = decode_field(&l->f[i], v, out);
		if (e != SHOAL_OK)
			return e;
	}
	return one_payload(out) ? SHOAL_OK : SHOAL_EMALFORMED;
}

long
msg_decode(const uint8_t *buf, size_t len, msg *out)
{
	memset(out, 0, sizeof(*out));
	if (len == 0 || buf == NULL)
		return SHOAL_ETRUNC;
	/* only a map can be a message: say so before waiting for more bytes */
	if (!((buf[0] & 0xf0) == 0x80 || buf[0] == 0xde || buf[0] == 0xdf))
		return SHOAL_EMALFORMED;
	long n = scan(buf, len);
	if (n < 0)
		return n;

	msgpack_unpacked u;
	size_t off = 0;
	msgpack_unpacked_init(&u);
	msgpack_unpack_return r = msgpack_unpack_next(&u, (const char *)buf, (size_t)n, &off);
	long ret;
	if (r == MSGPACK_UNPACK_NOMEM_ERROR)
		ret = SHOAL_ENOMEM;
	else if (r != MSGPACK_UNPACK_SUCCESS || off != (size_t)n)
		ret = SHOAL_EMALFORMED; /* scan() and msgpack-c disagree: refuse */
	else {
		shoal_err e = decode_map(&u.data, out);
		ret = e != SHOAL_OK ? e : n;
	}
	msgpack_unpacked_destroy(&u);
	return ret;
}

/* ---- encoding ---------------------------------------------------------- */

static size_t
uint_size(uint64_t v)
{
	return v < 128 ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffffu ? 5 : 9;
}

static size_t
nint_size(int32_t v) /* v < 0 */
{
	return v >= -32 ? 1 : v >= -128 ? 2 : v >= -32768 ? 3 : 5;
}

static size_t
str_size(size_t n)
{
	return n + (n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5);
}

static size_t
bin_size(size_t n)
{
	return n + (n < 256 ? 2 : n < 65536 ? 3 : 5);
}

static uint32_t
get_u32(const msg *m, size_t off)
{
	uint32_t v;
	memcpy(&v, (const char *)m + off, sizeof(v));
	return v;
}

/* SHOAL_OK if every field of m's type is in range (so the decoder will
 * accept what we write), else SHOAL_EINVAL. */
/* An optional key holding its empty value (0, "", no vector or bytes) is
 * not written. */
static bool
omitted(const msg *m, const field *f)
{
	float v;

	if (!f->opt)
		return false;
	switch (f->kind) {
	case F_F32:
		memcpy(&v, (const char *)m + f->off, sizeof(v));
		return v == 0.0f;
	case F_U32:
		return get_u32(m, f->off) == 0;
	case F_STR:
		return ((const char *)m)[f->off] == '\0';
	case F_VEC:
		return m->vec == NULL;
	case F_BIN:
		return m->blob == NULL;
	case F_SA:
		return !m->has_sa;
	case F_FIX: {
		bool present;
		memcpy(&present, (const char *)m + f->lo, sizeof present);
		return !present;
	}
	default:
		return false;
	}
}

static shoal_err
validate(const msg *m, const layout **lp)
{
	const layout *l = layout_of((int64_t)m->type);
	if (l == NULL)
		return SHOAL_EINVAL;
	if (!one_payload(m))
		return SHOAL_EINVAL;
	for (size_t i = 0; i < l->n; i++) {
		const field *f = &l->f[i];
		const char *base = (const char *)m;
		if (omitted(m, f))
			continue;
		switch (f->kind) {
		case F_U32: {
			uint32_t v = get_u32(m, f->off);
			if (v < f->lo || v > f->hi)
				return SHOAL_EINVAL;
			break;
		}
		case F_U64:
			break;
		case F_I32:
			if (m->code >= 0)
				return SHOAL_EINVAL;
			break;
		case F_F32: {
			float v;
			memcpy(&v, base + f->off, sizeof(v));
			if (!isfinite(v) || (f->lo == 1 && !(v > 0.0f)) || (f->lo == 2 && !(v >= 0.0f)))
				return SHOAL_EINVAL;
			break;
		}
		case F_STR: {
			size_t n = strnlen(base + f->off, f->hi + 1);
			if (n < f->lo || n > f->hi || !printable(base + f->off, n))
				return SHOAL_EINVAL;
			break;
		}
		case F_VEC:
			if (m->dim == 0 || m->dim > MSG_DIM_MAX || m->vec == NULL ||
			    !host_vec_finite(m->vec, m->dim))
				return SHOAL_EINVAL;
			break;
		case F_BIN:
			if (m->blob == NULL || m->blob_len < f->lo || m->blob_len > f->hi)
				return SHOAL_EINVAL;
			break;
		case F_SA:
			if (!m->has_sa || m->sa_len < f->lo || m->sa_len > f->hi ||
			    (m->sa == NULL && m->sa_len > 0))
				return SHOAL_EINVAL;
			break;
		case F_FIX:
			break;
		}
	}
	*lp = l;
	return SHOAL_OK;
}

static size_t
layout_size(const msg *m, const layout *l)
{
	/* "v" -> 1, "t" -> 1..9, then the keys present */
	size_t sz = 2 + 1 + 2 + 1, entries = 2;
	for (size_t i = 0; i < l->n; i++) {
		const field *f = &l->f[i];
		const char *base = (const char *)m;
		if (omitted(m, f))
			continue;
		entries++;
		sz += str_size(strlen(f->key));
		switch (f->kind) {
		case F_U32: sz += uint_size(get_u32(m, f->off)); break;
		case F_U64: sz += uint_size(m->seed); break;
		case F_I32: sz += nint_size(m->code); break;
		case F_F32: sz += 5; break;
		case F_STR: sz += str_size(strlen(base + f->off)); break;
		case F_VEC: sz += bin_size((size_t)m->dim * 4); break;
		case F_BIN: sz += bin_size(m->blob_len); break;
		case F_SA: sz += bin_size(m->sa_len); break;
		case F_FIX: sz += bin_size((size_t)f->hi); break;
		}
	}
	/* the map header: fixmap up to 15 entries, else map16 (a TASK with
	 * most optional keys has more) */
	return sz + (entries <= 15 ? 1 : 3);
}

size_t
msg_encoded_size(const msg *m)
{
	const layout *l;
	if (validate(m, &l) != SHOAL_OK)
		return 0;
	return layout_size(m, l);
}

/* A fixed-size output for msgpack_packer: refuses to overflow. */
typedef struct wbuf {
	uint8_t *p;
	size_t len, cap;
} wbuf;

static int
wbuf_write(void *data, const char *buf, size_t len)
{
	wbuf *w = data;
	if (len > w->cap - w->len)
		return -1;
	memcpy(w->p + w->len, buf, len);
	w->len += len;
	return 0;
}

static int
pack_key(msgpack_packer *pk, const char *k)
{
	size_t n = strlen(k);
	return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, k, n);
}

shoal_err
msg_encode(const msg *m, uint8_t **out, size_t *out_len)
{
	const layout *l;
	*out = NULL;
	*out_len = 0;
	if (validate(m, &l) != SHOAL_OK)
		return SHOAL_EINVAL;
	size_t size = layout_size(m, l);
	wbuf w = { malloc(size), 0, size };
	if (w.p == NULL)
		return SHOAL_ENOMEM;

	msgpack_packer pk;
	size_t present = 0;
	for (size_t i = 0; i < l->n; i++)
		present += !omitted(m, &l->f[i]);
	msgpack_packer_init(&pk, &w, wbuf_write);
	int bad = msgpack_pack_map(&pk, 2 + present) || pack_key(&pk, "v") ||
	          msgpack_pack_uint32(&pk, MSG_VERSION) || pack_key(&pk, "t") ||
	          msgpack_pack_uint32(&pk, (uint32_t)m->type);
	for (size_t i = 0; i < l->n && !bad; i++) {
		const field *f = &l->f[i];
		const char *base = (const char *)m;
		if (omitted(m, f))
			continue;
		bad = pack_key(&pk, f->key);
		if (bad)
			break;
		switch (f->kind) {
		case F_U32: bad = msgpack_pack_uint32(&pk, get_u32(m, f->off)); break;
		case F_U64: bad = msgpack_pack_uint64(&pk, m->seed); break;
		case F_I32: bad = msgpack_pack_int32(&pk, m->code); break;
		case F_F32: {
			float v;
			memcpy(&v, base + f->off, sizeof(v));
			bad = msgpack_pack_float(&pk, v);
			break;
		}
		case F_STR: {
			size_t n = strlen(base + f->off);
			bad = msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, base + f->off, n);
			break;
		}
		case F_VEC: {
			size_t n = (size_t)m->dim * 4;
			bad = msgpack_pack_bin(&pk, n);
			if (!bad && n > w.cap - w.len)
				bad = 1;
			if (!bad) {
				vec_to_wire(w.p + w.len, m->vec, m->dim);
				w.len += n;
			}
			break;
		}
		case F_BIN:
			bad = msgpack_pack_bin(&pk, m->blob_len) ||
			      msgpack_pack_bin_body(&pk, m->blob, m->blob_len);
			break;
		case F_SA:
			bad = msgpack_pack_bin(&pk, m->sa_len) ||
			      (m->sa_len > 0 && msgpack_pack_bin_body(&pk, m->sa, m->sa_len));
			break;
		case F_FIX:
			bad = msgpack_pack_bin(&pk, (size_t)f->hi) ||
			      msgpack_pack_bin_body(&pk, base + f->off, (size_t)f->hi);
			break;
		}
	}
	if (bad || w.len != size) {
		/* layout_size() and the packer disagree: a bug, never sent */
		free(w.p);
		return SHOAL_EINVAL;
	}
	*out = w.p;
	*out_len = size;
	return SHOAL_OK;
}

shoal_err
msg_error_init(msg *m, shoal_err code, const char *text)
{
	memset(m, 0, sizeof(*m));
	m->version = MSG_VERSION;
	m->type = MSG_ERROR;
	m->code = code;
	/* the text is for humans: clip it and mask what the decoder refuses */
	size_t n = text != NULL ? strnlen(text, MSG_TEXT_MAX) : 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)text[i];
		m->text[i] = (c >= 0x20 && c <= 0x7e) ? (char)c : '?';
	}
	m->text[n] = '\0';
	return code < 0 ? SHOAL_OK : SHOAL_EINVAL;
}

shoal_err
msg_encode_error(shoal_err code, const char *text, uint8_t **out, size_t *out_len)
{
	msg m;
	shoal_err e = msg_error_init(&m, code, text);
	if (e != SHOAL_OK) {
		*out = NULL;
		*out_len = 0;
		return e;
	}
	return msg_encode(&m, out, out_len);
}
