/* msg.h - shoal wire messages (protocol version 1) and their msgpack codec.
 *
 * Every message is ONE msgpack map whose keys are short strings. Two keys are
 * always present: "v" (protocol version, uint) and "t" (message type, uint).
 * The other keys depend on the type (table below, mirrored in PROTOCOL.md).
 * Unknown keys are ignored so that later versions can add optional fields;
 * a key given twice, a missing required key, or a value of the wrong msgpack
 * family is SHOAL_EMALFORMED.
 *
 *   type        dir  required keys (besides v, t)
 *   1 HELLO     c->s name:str, model:str, dim:uint, n:uint, [cx:uint,
 *                    pk:bin, tok:str]
 *   2 WELCOME   s->c id:uint, hold:uint
 *   3 CHECKIN   c->s id:uint, [ver:uint]
 *   4 TASK      s->c round:uint, model:str, E:uint, B:uint, lr:float,
 *                    deadline:uint, seed:uint, [mom:float, wd:float,
 *                    mu:float, up:str, ver:uint, base:uint, sa:bin,
 *                    clip:float, budget:uint, nsteps:uint],
 *                    params:bin | dq:bin
 *   5 UPDATE    c->s id:uint, round:uint, n:uint, loss:float, [tau:uint],
 *                    delta:bin | upd:bin
 *   6 ACK       s->c round:uint
 *   7 WAIT      s->c retry:uint
 *   8 ERROR     s->c code:int, msg:str
 *   9 DONE      s->c round:uint
 *  10 SA        c->s id:uint, round:uint, ph:uint, sa:bin, [tau:uint] (secure
 *                    aggregation phase message, PROTOCOL.md section 13)
 *  11 SA_REPLY  s->c round:uint, ph:uint, sa:bin
 * and client identity (PROTOCOL.md section 16): every type may end with
 * [nonce:bin] (16 bytes: in a reply, the nonce the client signs its next
 * request over; in a request, the nonce it signed over), and the requests
 * (HELLO, CHECKIN, UPDATE, SA) with [sig:bin] (64 bytes, Ed25519), which
 * must then be the LAST key of the map (privacy/ident.h signs and checks
 * it; this codec only carries the bytes).
 *
 * [keys] are optional: absent means 0 / "" and writers omit them then.
 * "a | b": exactly one of the two keys (else SHOAL_EMALFORMED). "dq" and
 * "upd" are opaque to this codec: common/codec.h encodings, validated by
 * their receiver.
 * Vectors ("params", "delta") are msgpack bin holding dim float32 values in
 * IEEE-754 little-endian order, so len(bin) == 4*dim. "dim" of a TASK or an
 * UPDATE is len(bin)/4; a bin whose length is not a multiple of 4 is
 * SHOAL_EMALFORMED. Every float in a vector, and "lr"/"loss", must be finite
 * (else SHOAL_ENONFINITE). Numbers: decoders accept any msgpack integer for
 * uint fields (negative -> malformed, > field max -> SHOAL_ETOOBIG), and any
 * msgpack float or integer for float fields.
 *
 * Clarifications (PROTOCOL.md section 4 has the full check order): a value
 * below its field's minimum (id 0, E 0, B 0, UPDATE n 0, HELLO dim 0,
 * lr <= 0, code >= 0, an empty name/model, a 0-byte vector) is
 * SHOAL_EMALFORMED; above its maximum is SHOAL_ETOOBIG. HELLO dim is
 * 1..MSG_DIM_MAX. ERROR code is a negative int32. A float64 beyond the
 * float32 range is SHOAL_ENONFINITE. Map keys must be msgpack str. To bound
 * decoding work, a message may nest at most 16 deep and hold at most 1024
 * msgpack objects (SHOAL_ETOOBIG); a valid v1 message has at most 43 (TASK:
 * 21 keys, 21 values, the map). "pk", "nonce" and "sig" have one length
 * each (else SHOAL_EMALFORMED). */
#ifndef SHOAL_MSG_H
#define SHOAL_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

#define MSG_VERSION 1u
#define MSG_NAME_MAX 64u    /* bytes of HELLO.name (1..64, printable ASCII) */
#define MSG_MODEL_MAX 32u   /* bytes of model names (1..32) */
#define MSG_TEXT_MAX 256u   /* bytes of ERROR.msg (0..256) */
#define MSG_DIM_MAX (1u << 26) /* largest vector, in float32 elements */
#define MSG_EPOCHS_MAX 1000u
#define MSG_BATCH_MAX 65535u
#define MSG_BIN_MAX (4u * MSG_DIM_MAX + 4096u) /* bytes of "dq" / "upd" */
#define MSG_PK_BYTES 32u    /* "pk": Ed25519 public key */
#define MSG_NONCE_BYTES 16u /* "nonce": server-issued, used once */
#define MSG_SIG_BYTES 64u   /* "sig": Ed25519 signature */
#define MSG_TOKEN_MAX 64u   /* bytes of HELLO "tok" (1..64, printable ASCII) */

/* HELLO "cx": what the client can decode and encode, beyond dense float32
 * (which every client supports). */
#define MSG_CX_TOPK (1u << 0)    /* top-k sparsified updates */
#define MSG_CX_RANDK (1u << 1)   /* rand-k sparsified updates */
#define MSG_CX_Q8 (1u << 2)      /* 8-bit quantized update values */
#define MSG_CX_Q4 (1u << 3)      /* 4-bit quantized update values */
#define MSG_CX_F32 (1u << 4)     /* float32 values in a sparse update */
#define MSG_CX_DOWN_Q8 (1u << 5) /* q8 model deltas in TASK "dq" */
#define MSG_CX_SECAGG (1u << 6)  /* secure aggregation (TASK "sa", SA messages) */
#define MSG_CX_ALL 0x7fu

typedef enum {
	MSG_HELLO = 1,
	MSG_WELCOME = 2,
	MSG_CHECKIN = 3,
	MSG_TASK = 4,
	MSG_UPDATE = 5,
	MSG_ACK = 6,
	MSG_WAIT = 7,
	MSG_ERROR = 8,
	MSG_DONE = 9,
	MSG_SA = 10,
	MSG_SA_REPLY = 11,
} msg_type;

/* One decoded (or to-be-encoded) message. Only the fields of its type are
 * meaningful. After msg_decode, vec points INTO the decoded buffer (no copy):
 * the buffer must outlive the msg. For encoding, vec points at dim host
 * floats. */
typedef struct msg {
	uint32_t version;   /* "v"; msg_encode always writes MSG_VERSION */
	msg_type type;      /* "t" */
	uint32_t client_id; /* "id": WELCOME, CHECKIN, UPDATE; never 0 */
	uint32_t round;     /* "round": TASK, UPDATE, ACK, DONE */
	uint32_t n_examples;/* "n": HELLO, UPDATE (>= 1 in UPDATE) */
	uint32_t dim;       /* "dim" in HELLO; len(vec)/4 in TASK, UPDATE */
	uint32_t epochs;    /* "E": TASK, 1..MSG_EPOCHS_MAX */
	uint32_t batch;     /* "B": TASK, 1..MSG_BATCH_MAX */
	float lr;           /* "lr": TASK, finite, > 0 */
	uint32_t deadline_ms; /* "deadline": TASK, ms left until the round closes */
	uint32_t hold_ms;   /* "hold": WELCOME, longest the server parks a CHECKIN */
	uint32_t retry_ms;  /* "retry": WAIT, ms to wait before the next CHECKIN */
	uint64_t seed;      /* "seed": TASK, seed for the client's local shuffling */
	float momentum;     /* "mom": TASK, optional (0 = absent), SGD momentum >= 0 */
	float weight_decay; /* "wd": TASK, optional, L2 weight decay >= 0 */
	float prox_mu;      /* "mu": TASK, optional, FedProx proximal weight >= 0 */
	float clip;         /* "clip": TASK, optional, DP: clip the update to this
	                       L2 norm before encoding it (0: no clipping) */
	uint32_t budget_ms; /* "budget": TASK, optional, local time budget in ms
	                       (time-budgeted local work, PROTOCOL.md section 17);
	                       0: train the full E epochs */
	uint32_t ref_steps; /* "nsteps": TASK, optional, with "budget": S, the
	                       reference step count the client scales its
	                       normalized update by (d * S / tau) */
	uint32_t tau;       /* "tau": UPDATE, SA, optional, local SGD steps done
	                       (0: absent = the full E epochs) */
	uint32_t cx_caps;   /* "cx": HELLO, optional, MSG_CX_* bits */
	uint32_t model_ver; /* "ver": CHECKIN (model version the client holds, 0:
	                       none), TASK (version of the model in the task) */
	uint32_t base;      /* "base": TASK with "dq": the version it applies to */
	char up[MSG_MODEL_MAX + 1]; /* "up": TASK, optional update encoding,
	                       e.g. "topk:0.01,q8"; "": dense float32 "delta" */
	const uint8_t *blob; /* "dq" (TASK) / "upd" (UPDATE): codec bytes */
	size_t blob_len;
	int32_t code;       /* "code": ERROR, a negative shoal_err */
	float loss;         /* "loss": UPDATE, mean local training loss, finite */
	char name[MSG_NAME_MAX + 1];   /* "name": HELLO, NUL-terminated */
	char model[MSG_MODEL_MAX + 1]; /* "model": HELLO, TASK */
	char text[MSG_TEXT_MAX + 1];   /* "msg": ERROR */
	const uint8_t *vec; /* "params" (TASK) / "delta" (UPDATE) */
	uint32_t phase;     /* "ph": SA, SA_REPLY: secure-aggregation phase 1..5 */
	const uint8_t *sa;  /* "sa": TASK (optional: the round is secure; its
	                       parameters), SA / SA_REPLY (the phase payload,
	                       may be 0 bytes); opaque here, privacy/ parses it */
	size_t sa_len;
	bool has_sa;        /* "sa" present (a 0-byte payload is still present) */
	/* Client identity (PROTOCOL.md section 16). For encoding, has_* says
	 * whether the key is written. */
	uint8_t pk[MSG_PK_BYTES];   /* "pk": HELLO, the client's Ed25519 key */
	bool has_pk;
	char token[MSG_TOKEN_MAX + 1]; /* "tok": HELLO, an enrollment token, "" if none */
	uint8_t nonce[MSG_NONCE_BYTES]; /* "nonce": any type */
	bool has_nonce;
	uint8_t sig[MSG_SIG_BYTES]; /* "sig": requests; written last */
	bool has_sig;
} msg;

/* Decode one message from buf[0..len). Returns the bytes consumed (the whole
 * map; trailing bytes are left to the caller, who normally treats them as
 * malformed), or a negative shoal_err:
 *   SHOAL_ETRUNC     buf ends inside the map
 *   SHOAL_EMALFORMED not a map, wrong value family, missing/duplicate key,
 *                    string not printable, bin length not a multiple of 4
 *   SHOAL_EVERSION   "v" != MSG_VERSION (checked before anything else
 *                    type-specific)
 *   SHOAL_ETYPE      "t" is not a known type
 *   SHOAL_ETOOBIG    a string, number or vector exceeds its limit, or
 *                    the nesting/object-count limits above
 *   SHOAL_ENONFINITE NaN/Inf in lr, loss or a vector
 *   SHOAL_ENOMEM     msgpack-c could not allocate its (small) object tree
 * On error *out is unspecified. */
long msg_decode(const uint8_t *buf, size_t len, msg *out);

/* Encode m (type-specific fields only) as a msgpack map into a new malloc'd
 * buffer; the caller frees *out. Errors: SHOAL_EINVAL (field out of range
 * for its type), SHOAL_ENOMEM. */
shoal_err msg_encode(const msg *m, uint8_t **out, size_t *out_len);

/* Exact encoded size of m, so callers can check a size limit up front;
 * 0 if m is invalid (msg_encode would return SHOAL_EINVAL). */
size_t msg_encoded_size(const msg *m);

/* Convenience constructors for the short server replies. ERROR: text may
 * be NULL (""); it is clipped to MSG_TEXT_MAX bytes and bytes outside
 * 0x20..0x7e become '?'. code >= 0 -> SHOAL_EINVAL. */
shoal_err msg_encode_error(shoal_err code, const char *text, uint8_t **out, size_t *out_len);
/* Fill *m as that ERROR (zeroing the rest), so a caller can add keys (a
 * "nonce") before msg_encode. code >= 0 -> SHOAL_EINVAL. */
shoal_err msg_error_init(msg *m, shoal_err code, const char *text);

/* Copy dim little-endian float32 values from wire bytes into host floats
 * (memcpy on little-endian hosts). */
void msg_vec_to_host(float *dst, const uint8_t *src, size_t dim);

/* Human-readable name of a type, "?" if unknown. */
const char *msg_type_name(msg_type t);

#endif
