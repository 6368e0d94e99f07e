/* core.c - the server protocol core (see core.h): client registry, parked
 * check-ins, seeded selection, deadlines, validation and FedAvg.
 *
 * No I/O: bytes, request handles and time come in; replies and events go
 * out through two queues. Accepted updates are kept in their wire form (the
 * validated little-endian bytes) until the round closes and are then summed
 * in selection order, so the new model does not depend on arrival order. */
#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/codec.h"
#include "common/log.h"
#include "common/msg.h"
#include "privacy/ddg.h"
#include "privacy/ident.h"
#include "privacy/rng.h"
#include "privacy/secagg.h"
#include "server/ckpt.h"
#include "server/dp.h"
#include "server/nova.h"

typedef struct client {
	char name[MSG_NAME_MAX + 1];
	uint32_t n_examples;
	bool parked;
	uint64_t park_req;
	uint64_t park_until;
	uint32_t selected_round; /* round in which it holds a slot, 0 if none */
	uint32_t cx_caps;   /* HELLO "cx" */
	uint32_t held_ver;  /* model version it says it holds (CHECKIN "ver") */
	uint32_t key;       /* identity: index + 1 of its key in keys, 0: none */
	/* asynchronous rounds */
	uint32_t task_round; /* round id of the task it trains, 0: none */
	uint32_t task_ver;  /* model version that task carried */
	uint64_t task_until; /* its slot is given up then */
	uint32_t acked_round; /* round id of its last accepted update */
} client;

typedef struct slot {
	uint32_t client;   /* index into clients */
	bool reported;
	bool declined;     /* checked in again without an update: dropped */
	uint32_t n;        /* FedAvg weight of the update */
	float loss;
	uint8_t *delta;    /* the update's wire bytes: 4*dim little-endian
	                      float32, or a codec encoding when compressed */
	size_t delta_len;
	bool compressed;
	bool sa_parked;    /* secure mode: its phase message awaits the close */
	bool sa_in;        /* secure mode: its masked input was taken (in U3) */
	uint32_t tau;      /* local time budget: steps it reported, 0: none */
	uint64_t sa_req;
	uint32_t stale;    /* async: staleness when it arrived */
} slot;

/* Client identity (PROTOCOL.md section 16). Every key the server admits
 * or has bound to a client: the allowlist, keys enrolled with a token, and
 * keys restored from the registry. One key belongs to at most one client
 * and holds that client's nonce: the one the server's last reply to it
 * carried, which its next request must be signed over (used once). */
typedef struct idkey {
	uint8_t pk[ID_PK_BYTES];
	uint32_t client;    /* index + 1 of the client bound to it; 0: none */
	bool listed;        /* on the allowlist */
	bool enrolled;      /* enrolled with the token whose hash is tok */
	uint8_t tok[ID_HASH_BYTES];
	uint8_t nonce[ID_NONCE_BYTES];
	bool nonce_live;    /* issued and not used yet */
} idkey;

/* An enrollment token (by hash). Before it is used, the key that asked to
 * enroll with it last and the nonce it must sign its HELLO over. */
typedef struct idtoken {
	uint8_t hash[ID_HASH_BYTES];
	bool used;
	bool pending;       /* pk and nonce below are set */
	uint8_t pk[ID_PK_BYTES];
	uint8_t nonce[ID_NONCE_BYTES];
	bool nonce_live;
} idtoken;

typedef struct reply_queue {
	srv_reply *v;
	size_t head, len, cap;
} reply_queue;

typedef struct event_queue {
	srv_event *v;
	size_t head, len, cap;
} event_queue;

enum phase { PH_IDLE, PH_RUNNING, PH_FINISHED };

/* Deadlines of one kind (parked check-ins: now + hold_ms; asynchronous
 * tasks: now + round timeout) in the order they were set, which is their
 * order in time (now never decreases): the next one is at the head, so
 * timers cost the deadlines that pass, not the registry. An entry is
 * stale once its client no longer waits for that time (selected,
 * answered, parked again, reported); stale entries are dropped when they
 * reach the head. */
typedef struct dl_entry {
	uint64_t until;
	uint32_t client;
} dl_entry;

typedef struct dl_queue {
	dl_entry *v;
	size_t head, len, cap;
} dl_queue;

struct srv_core {
	srv_config cfg;
	char model[MSG_MODEL_MAX + 1];
	ml_model *eval;
	size_t dim;
	float *params;
	double *acc;        /* dim, FedAvg accumulator */
	srv_opt opt;
	uint32_t *scratch;  /* dim indices for the codec */
	uint32_t up_caps;   /* capabilities the update encoding needs */
	char up_spec[MSG_MODEL_MAX + 1]; /* the encoding asked, "" when dense */
	uint32_t version;   /* of params */
	float *shadow;      /* q8 downlink: the model the optimizer moves; params
	                       (canonical, what clients hold) trails it by the
	                       quantization error still to be sent */
	uint8_t *dq;        /* downlink: encoding of version-1 -> version */
	size_t dq_len, dq_cap;
	uint8_t *dq0;       /* downlink: the empty change (all-zero q8 blocks),
	                       for a client that holds the current version */
	size_t dq0_len;
	double accuracy, loss;

	/* secure aggregation */
	sa_server *sa;      /* the open session, NULL between rounds */
	sa_task sat;        /* its parameters (sat.idx: the shared index set) */
	uint64_t sa_deadline; /* of the open phase */
	float sa_scale;     /* shared quantization range of the next round */
	uint32_t sa_levels; /* 127 (q8) or 7 (q4) */
	uint32_t sa_n_idx;  /* shared index set size */
	float *change;      /* last published change of the model (public) */
	bool have_change;

	client *clients;
	uint32_t n_clients;
	uint32_t *table;    /* name hash -> client index + 1 (0 = empty) */
	uint32_t table_mask;
	uint32_t n_parked;
	dl_queue parkq;     /* hold deadlines of parked check-ins */
	dl_queue taskq;     /* async: deadlines of tasks in flight */
	uint32_t *expired;  /* on_timer scratch: clients whose deadline passed */
	size_t expired_cap;

	enum phase phase;
	uint32_t round;
	uint64_t deadline;
	slot *slots;
	uint32_t n_slots, n_reported, n_declined;
	srv_round_stats st;
	uint32_t refused[SRV_CODES]; /* error replies since the last round ended */
	srv_dp *dp;         /* central DP (server/dp.h), NULL when off */
	uint32_t nova_S;    /* FedNova: S of the open round (server/nova.h), 0: off */
	uint32_t n_training; /* async: clients with a task in flight */
	uint64_t n_tasks;   /* async: TASKs sent, numbers their seed streams */
	bool ckpt_on;       /* encode a checkpoint at every round boundary */
	uint8_t *ckpt;      /* the newest one not yet taken, or NULL */
	size_t ckpt_len;
	uint32_t ckpt_round;

	reply_queue replies;
	event_queue events;

	/* client identity (cfg.identity) */
	idkey *keys;
	uint32_t n_keys, cap_keys;
	uint32_t *ktable;   /* open addressing by public key: index + 1, 0 empty */
	uint32_t ktable_mask;
	idtoken *tokens;
	uint32_t n_tokens;
	rng nonces;         /* keyed by cfg.nonce_key, else from the seed */
	uint32_t *bound;    /* ids whose key was bound, not yet taken */
	uint32_t bound_head, bound_len, bound_cap;
	uint8_t (*sa_idpk)[SA_IDPK_BYTES]; /* the open secure round's keys */
};

void
srv_config_defaults(srv_config *c)
{
	memset(c, 0, sizeof *c);
	c->model = "2nn";
	c->rounds = 10;
	c->clients_per_round = 10;
	c->over_select = 1.0;
	c->min_clients = 10;
	c->min_reports = 1;
	c->epochs = 1;
	c->batch = 10;
	c->lr = 0.05f;
	c->lr_decay = 1.0f;
	srv_opt_config_defaults(&c->opt);
	c->compress = "topk:0.01,q8";
	c->downlink_q8 = true;
	c->secagg = SRV_SECAGG_OFF;
	c->secagg_dropout = 0.2;
	c->secagg_collusion = 0.5;
	c->secagg_phase_ms = 30000;
	c->secagg_threads = 2;
	c->sampling = SRV_SAMPLING_FIXED;
	c->dp = SRV_DP_OFF;
	c->delta = 1e-5;
	c->round_timeout_ms = 60000;
	c->hold_ms = 2000;
	c->max_clients = 10000;
	c->max_message = 64u << 20;
	c->max_staleness = 20;
	c->seed = 1;
	c->test = NULL;
}

/* ---- queues ------------------------------------------------------------ */

static shoal_err
push_reply(srv_core *s, uint64_t req, uint8_t *buf, size_t len, bool close)
{
	reply_queue *q = &s->replies;

	if (q->head > 0 && q->head == q->len) {
		q->head = q->len = 0;
	}
	if (q->len == q->cap) {
		size_t cap = q->cap ? 2 * q->cap : 64;
		srv_reply *v = realloc(q->v, cap * sizeof *v);
		if (v == NULL) {
			free(buf);
			return SHOAL_ENOMEM;
		}
		q->v = v;
		q->cap = cap;
	}
	q->v[q->len++] = (srv_reply){.req = req, .buf = buf, .len = len, .close = close};
	return SHOAL_OK;
}

static void
push_event(srv_core *s, srv_event_kind kind)
{
	event_queue *q = &s->events;

	if (q->head > 0 && q->head == q->len)
		q->head = q->len = 0;
	if (q->len == q->cap) {
		size_t cap = q->cap ? 2 * q->cap : 16;
		srv_event *v = realloc(q->v, cap * sizeof *v);
		if (v == NULL)
			return; /* events are informational; the round itself is intact */
		q->v = v;
		q->cap = cap;
	}
	q->v[q->len++] = (srv_event){.kind = kind, .stats = s->st};
}

bool
srv_core_pop_reply(srv_core *s, srv_reply *out)
{
	reply_queue *q = &s->replies;
	if (q->head == q->len)
		return false;
	*out = q->v[q->head++];
	return true;
}

bool
srv_core_pop_event(srv_core *s, srv_event *out)
{
	event_queue *q = &s->events;
	if (q->head == q->len)
		return false;
	*out = q->v[q->head++];
	return true;
}

/* Encode m and queue it as the reply to req. On encode failure the peer
 * still gets exactly one reply: an ERROR naming the failure. */
static void
reply_msg(srv_core *s, uint64_t req, const msg *m, uint64_t *bytes)
{
	uint8_t *buf;
	size_t len;
	shoal_err e = msg_encode(m, &buf, &len);

	if (e != SHOAL_OK) {
		log_error("encoding %s failed: %s", msg_type_name(m->type), shoal_strerror(e));
		if (msg_encode_error(e, "server could not encode its reply", &buf, &len) != SHOAL_OK)
			return; /* out of memory: the driver's request stays unanswered */
	} else if (bytes != NULL) {
		*bytes += len;
	}
	push_reply(s, req, buf, len, false);
}

static void
reply_error(srv_core *s, uint64_t req, shoal_err code, bool close, const char *text)
{
	uint8_t *buf;
	size_t len;

	if (s->phase == PH_RUNNING)
		s->st.rejected++;
	if (code < 0 && code > -SRV_CODES)
		s->refused[-code]++;
	if (msg_encode_error(code, text, &buf, &len) != SHOAL_OK)
		return;
	push_reply(s, req, buf, len, close);
}

/* ---- client identity: nonces in replies ---------------------------------- */

/* The key whose nonce a reply to c carries, NULL when identity is off or
 * c has none. */
static idkey *
key_of(srv_core *s, const client *c)
{
	return s->cfg.identity && c != NULL && c->key != 0 ? &s->keys[c->key - 1] : NULL;
}

static void
fresh_nonce(srv_core *s, uint8_t nonce[ID_NONCE_BYTES], bool *live)
{
	rng_bytes(&s->nonces, nonce, ID_NONCE_BYTES);
	*live = true;
}

/* Replace the reply just queued for req with the same message carrying
 * nonce (reply_error counts and encodes it; this adds the key). */
static void
add_nonce(srv_core *s, uint64_t req, const uint8_t nonce[ID_NONCE_BYTES])
{
	reply_queue *q = &s->replies;
	srv_reply *r = q->len > q->head ? &q->v[q->len - 1] : NULL;
	uint8_t *buf;
	size_t len;
	msg m;

	if (r == NULL || r->req != req || msg_decode(r->buf, r->len, &m) != (long)r->len)
		return;
	memcpy(m.nonce, nonce, ID_NONCE_BYTES);
	m.has_nonce = true;
	if (msg_encode(&m, &buf, &len) != SHOAL_OK)
		return; /* out of memory: the reply goes without; the client asks again */
	free(r->buf);
	r->buf = buf;
	r->len = len;
}

/* Replies to a client: each one to a client with a key carries a fresh
 * nonce, which supersedes the one before (PROTOCOL.md section 16.3). */
static void
reply_msg_c(srv_core *s, client *c, uint64_t req, const msg *m, uint64_t *bytes)
{
	idkey *k = key_of(s, c);
	msg stamped;

	if (k != NULL) {
		stamped = *m;
		fresh_nonce(s, k->nonce, &k->nonce_live);
		memcpy(stamped.nonce, k->nonce, ID_NONCE_BYTES);
		stamped.has_nonce = true;
		m = &stamped;
	}
	reply_msg(s, req, m, bytes);
}

static void
reply_error_c(srv_core *s, client *c, uint64_t req, shoal_err code, bool close,
              const char *text)
{
	idkey *k = key_of(s, c);

	reply_error(s, req, code, close, text);
	if (k != NULL) {
		fresh_nonce(s, k->nonce, &k->nonce_live);
		add_nonce(s, req, k->nonce);
	}
}

/* DONE, or WAIT with retry 0: check in again now. */
static void
reply_simple_c(srv_core *s, client *c, uint64_t req, msg_type t)
{
	msg m = {.type = t};
	if (t == MSG_DONE)
		m.round = s->round;
	reply_msg_c(s, c, req, &m, NULL);
}

/* A refused signature or nonce: the ERROR carries the nonce the request
 * should have been signed over (still unused, so a replay or a forgery
 * does not take it from the client). The first HELLO of a client has no
 * nonce to sign yet: its challenge is not counted as a refusal. */
static void
reply_auth(srv_core *s, uint64_t req, const uint8_t nonce[ID_NONCE_BYTES], shoal_err code,
           bool counted, const char *text)
{
	msg m;
	uint8_t *buf;
	size_t len;

	if (counted) {
		reply_error(s, req, code, false, text);
		add_nonce(s, req, nonce);
		return;
	}
	if (msg_error_init(&m, code, text) != SHOAL_OK)
		return;
	memcpy(m.nonce, nonce, ID_NONCE_BYTES);
	m.has_nonce = true;
	if (msg_encode(&m, &buf, &len) == SHOAL_OK)
		push_reply(s, req, buf, len, false);
}

/* ---- registry ----------------------------------------------------------- */

static uint32_t
name_hash(const char *name)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *name; name++)
		h = (h ^ (uint8_t)*name) * 16777619u;
	return h;
}

/* Index of the client called name, or -1. */
static long
find_client(const srv_core *s, const char *name)
{
	for (uint32_t i = name_hash(name) & s->table_mask;; i = (i + 1) & s->table_mask) {
		uint32_t v = s->table[i];
		if (v == 0)
			return -1;
		if (strcmp(s->clients[v - 1].name, name) == 0)
			return (long)(v - 1);
	}
}

static void
insert_client(srv_core *s, uint32_t index)
{
	uint32_t i = name_hash(s->clients[index].name) & s->table_mask;
	while (s->table[i] != 0)
		i = (i + 1) & s->table_mask;
	s->table[i] = index + 1;
}

static void
unpark(srv_core *s, client *c)
{
	if (c->parked) {
		c->parked = false;
		s->n_parked--;
	}
}

typedef bool (*dl_live_fn)(const srv_core *s, const dl_entry *p);

static bool
park_live(const srv_core *s, const dl_entry *p)
{
	const client *c = &s->clients[p->client];

	return c->parked && c->park_until == p->until;
}

static bool
task_live(const srv_core *s, const dl_entry *p)
{
	const client *c = &s->clients[p->client];

	return c->task_round != 0 && c->task_until == p->until;
}

/* Appends client i's deadline (false: out of memory; the caller must not
 * then wait for a deadline no timer would see). */
static bool
dl_push(dl_queue *q, uint32_t i, uint64_t until)
{
	if (q->len == q->cap) {
		size_t cap = q->cap ? 2 * q->cap : 256;
		dl_entry *v = malloc(cap * sizeof *v);

		if (v == NULL)
			return false;
		for (size_t k = 0; k < q->len; k++)
			v[k] = q->v[(q->head + k) % q->cap];
		free(q->v);
		q->v = v;
		q->head = 0;
		q->cap = cap;
	}
	q->v[(q->head + q->len++) % q->cap] = (dl_entry){until, i};
	return true;
}

/* Drops stale entries at the head. */
static void
dl_prune(const srv_core *s, dl_queue *q, dl_live_fn live)
{
	while (q->len > 0 && !live(s, &q->v[q->head])) {
		q->head = (q->head + 1) % q->cap;
		q->len--;
	}
}

/* The earliest live deadline, or UINT64_MAX (the head, but for what
 * changed since the last prune). */
static uint64_t
dl_next(const srv_core *s, const dl_queue *q, dl_live_fn live)
{
	for (size_t k = 0; k < q->len; k++) {
		const dl_entry *p = &q->v[(q->head + k) % q->cap];
		if (live(s, p))
			return p->until;
	}
	return UINT64_MAX;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

/* Takes the clients whose live deadline in q passed by now off the queue,
 * each through take (which must make its entry stale), into s->expired,
 * sorted (the order a scan of the registry would give); returns how many. */
static size_t
dl_expire(srv_core *s, dl_queue *q, dl_live_fn live, void (*take)(srv_core *, client *),
          uint64_t now)
{
	size_t n = 0;

	for (dl_prune(s, q, live); q->len > 0 && q->v[q->head].until <= now; dl_prune(s, q, live)) {
		if (n == s->expired_cap) {
			size_t cap = s->expired_cap ? 2 * s->expired_cap : 256;
			uint32_t *v = realloc(s->expired, cap * sizeof *v);

			if (v == NULL)
				break; /* the rest at the next timer */
			s->expired = v;
			s->expired_cap = cap;
		}
		s->expired[n++] = q->v[q->head].client;
		take(s, &s->clients[q->v[q->head].client]);
	}
	if (n > 1)
		qsort(s->expired, n, sizeof *s->expired, cmp_u32);
	return n;
}

/* Answers every check-in whose hold ended by now, in client order. */
static void
park_expire(srv_core *s, uint64_t now)
{
	size_t n = dl_expire(s, &s->parkq, park_live, unpark, now);

	for (size_t k = 0; k < n; k++) {
		client *c = &s->clients[s->expired[k]];
		reply_simple_c(s, c, c->park_req, s->phase == PH_FINISHED ? MSG_DONE : MSG_WAIT);
	}
}

/* ---- rounds -------------------------------------------------------------- */

/* Merge sort of client indices by name; C11's qsort has no context
 * argument to reach the client table. */
static void
sort_indices(uint32_t *v, uint32_t *tmp, size_t n, const client *cl)
{
	if (n < 2)
		return;
	size_t h = n / 2;
	sort_indices(v, tmp, h, cl);
	sort_indices(v + h, tmp, n - h, cl);
	size_t i = 0, j = h, k = 0;
	while (i < h && j < n)
		tmp[k++] = strcmp(cl[v[j]].name, cl[v[i]].name) < 0 ? v[j++] : v[i++];
	while (i < h)
		tmp[k++] = v[i++];
	while (j < n)
		tmp[k++] = v[j++];
	memcpy(v, tmp, n * sizeof *v);
}

static void free_slots(srv_core *s);
static void try_start_round(srv_core *s, uint64_t now);
static void checkpoint(srv_core *s);
static bool sa_finish(srv_core *s);
static void async_drop(srv_core *s, client *c, const char *why);
static void async_expire(srv_core *s, uint64_t now);
static bool take_update(srv_core *s, client *c, uint64_t req, const msg *m, slot *sl);

static void
finish(srv_core *s)
{
	s->phase = PH_FINISHED;
	for (uint32_t i = 0; i < s->n_clients; i++) {
		client *c = &s->clients[i];
		if (c->parked) {
			unpark(s, c);
			reply_simple_c(s, c, c->park_req, MSG_DONE);
		}
	}
	push_event(s, SRV_EV_FINISHED);
	log_info("training finished after %u rounds", s->round);
}

static void
evaluate(srv_core *s)
{
	if (s->cfg.test == NULL) {
		s->accuracy = s->loss = NAN;
		return;
	}
	if (ml_evaluate(s->eval, s->params, s->cfg.test, &s->accuracy, &s->loss) != SHOAL_OK)
		s->accuracy = s->loss = NAN;
}

/* Apply the round's averaged update d to the global model and make the
 * result version+1. With the q8 downlink the optimizer moves the shadow
 * model, and the canonical model (params: what clients hold and what is
 * evaluated) moves by the 8-bit encoding of shadow - params, which clients
 * apply the same way, so both sides hold bit-identical parameters. What
 * the encoding missed stays in shadow - params and goes out with the next
 * round's change (error feedback on the downlink), instead of being lost. */
static void publish_inner(srv_core *s, const double *d);

static void
publish(srv_core *s, const double *d)
{
	if (s->change == NULL) {
		publish_inner(s, d);
		return;
	}
	/* Secure mode picks half of the next shared index set from the
	 * largest coordinates of this public change. */
	memcpy(s->change, s->params, s->dim * sizeof *s->change);
	publish_inner(s, d);
	for (size_t j = 0; j < s->dim; j++)
		s->change[j] = s->params[j] - s->change[j];
	s->have_change = true;
}

static void
publish_inner(srv_core *s, const double *d)
{
	s->version++;
	if (!s->cfg.downlink_q8) {
		srv_opt_step(&s->opt, s->params, d);
		return;
	}
	srv_opt_step(&s->opt, s->shadow, d);
	float *diff = (float *)s->acc; /* d is used up: reuse acc's memory */
	for (size_t j = 0; j < s->dim; j++)
		diff[j] = s->shadow[j] - s->params[j];
	long n = cx_encode_downlink(diff, (uint32_t)s->dim, CX_BLOCK_DEFAULT, s->dq, s->dq_cap);
	if (n < 0 || cx_decode_add(s->dq, (size_t)n, (uint32_t)s->dim, s->params, NULL) < 0) {
		/* Cannot happen for finite models; keep serving full models. */
		log_error("downlink encoding failed: %s; sending full models",
		          shoal_strerror(n < 0 ? (shoal_err)n : SHOAL_EINVAL));
		memcpy(s->params, s->shadow, s->dim * sizeof *s->params);
		s->dq_len = 0;
	} else {
		s->dq_len = (size_t)n;
	}
}

/* ---- time-budgeted local work (FedNova, server/nova.h) -------------------- */

/* Opens the budget of the round just selected (slots 0..k): S, when FedNova
 * aggregates, from the selected clients' HELLO example counts. */
static void
nova_open(srv_core *s, uint32_t k)
{
	uint64_t n_sum = 0;

	s->nova_S = 0;
	if (s->cfg.local_budget_ms == 0 || s->cfg.budget_agg != SRV_BUDGET_FEDNOVA || k == 0)
		return;
	for (uint32_t i = 0; i < k; i++)
		n_sum += s->clients[s->slots[i].client].n_examples;
	s->nova_S = srv_nova_ref_steps(n_sum, k, s->cfg.epochs, s->cfg.batch);
}

/* The example count a slot's update carries: the UPDATE's "n" (plain), or
 * the HELLO's in secure mode, where the weight travels masked. */
static uint32_t
nova_n(const srv_core *s, const slot *sl)
{
	return s->sa != NULL ? s->clients[sl->client].n_examples : sl->n;
}

/* A slot's local steps: what it reported, clamped to the full work;
 * an update without "tau" (an older client) did the full work. */
static uint32_t
nova_tau(const srv_core *s, const slot *sl)
{
	uint32_t full = srv_nova_full_steps(nova_n(s, sl), s->cfg.epochs, s->cfg.batch);

	return sl->tau > 0 && sl->tau < full ? sl->tau : full;
}

/* Weight of a plain round's update in the sum: n, and for an update
 * without "tau" under FedNova n * S / tau_full, since its client sent the
 * raw delta d rather than d * S / tau (PROTOCOL.md section 17). */
static double
nova_weight(const srv_core *s, const slot *sl)
{
	if (s->nova_S == 0 || sl->tau != 0)
		return (double)sl->n;
	return (double)sl->n * s->nova_S / nova_tau(s, sl);
}

/* At the close of a budgeted round, before publishing the average d of the
 * updates in the sum: tau_eff = sum p_i tau_i over them (p_i: the weights
 * of the average: n_i, min(n_i, wmax) in secure mode, 1 with DP), and
 * under FedNova d *= tau_eff / S. */
static void
nova_close(srv_core *s, double *d)
{
	double sw = 0, swt = 0;

	if (s->cfg.local_budget_ms == 0)
		return;
	for (uint32_t i = 0; i < s->n_slots; i++) {
		const slot *sl = &s->slots[i];
		if (!(s->sa != NULL ? sl->sa_in : sl->reported))
			continue;
		double w = 1;
		if (s->dp == NULL && s->sa == NULL)
			w = sl->n;
		else if (s->dp == NULL)
			w = nova_n(s, sl) < s->sat.wmax ? nova_n(s, sl) : s->sat.wmax;
		sw += w;
		swt += w * nova_tau(s, sl);
	}
	s->st.tau_eff = sw > 0 ? swt / sw : 0;
	if (s->nova_S == 0 || !(sw > 0))
		return;
	double f = s->st.tau_eff / s->nova_S;
	for (size_t j = 0; j < s->dim; j++)
		d[j] *= f;
}


/* The round's statistics are complete: free its slots, hand out its event
 * (with the refusals counted during it) and finish training when it was
 * the last round or reached the target accuracy (an abandoned round never
 * does). True when training is over. */
static bool
end_round(srv_core *s)
{
	srv_round_stats *st = &s->st;

	free_slots(s);
	memcpy(st->refused, s->refused, sizeof st->refused);
	memset(s->refused, 0, sizeof s->refused);
	push_event(s, SRV_EV_ROUND_END);
	if (s->round >= s->cfg.rounds) {
		finish(s);
		return true;
	}
	if (s->cfg.target_accuracy > 0 && !st->abandoned && st->accuracy >= s->cfg.target_accuracy) {
		log_info("round %u reached the target accuracy %.4f", s->round, s->cfg.target_accuracy);
		finish(s);
		return true;
	}
	return false;
}

/* Central DP (server/dp.h): every reported update clipped and summed with
 * weight 1 in selection order, the noised sum over the fixed denominator
 * published, whoever reported (even nobody). False if the release failed. */
static bool
dp_aggregate(srv_core *s)
{
	double loss = 0, total = 0;

	memset(s->acc, 0, s->dim * sizeof *s->acc);
	for (uint32_t i = 0; i < s->n_slots; i++) {
		slot *sl = &s->slots[i];
		if (!sl->reported)
			continue;
		if (isnan(srv_dp_add_update(s->dp, s->acc, sl->delta, sl->delta_len, sl->compressed,
		                            s->scratch))) {
			log_warn("round %u: an update from %s decodes to non-finite values; left out",
			         s->round, s->clients[sl->client].name);
			continue;
		}
		total += sl->n;
		loss += (double)sl->loss * sl->n;
	}
	s->st.train_loss = total > 0 ? loss / total : NAN;
	shoal_err e = srv_dp_release(s->dp, s->acc, s->round);
	if (e != SHOAL_OK) {
		log_error("round %u abandoned: adding the DP noise failed (%s); the global model is "
		          "unchanged", s->round, shoal_strerror(e));
		return false;
	}
	nova_close(s, s->acc);
	publish(s, s->acc);
	evaluate(s);
	return true;
}

static void
close_round(srv_core *s, uint64_t now)
{
	srv_round_stats *st = &s->st;

	st->reported = s->n_reported;
	st->dropped = s->n_slots - s->n_reported;
	st->end_ms = now;
	if (s->sa != NULL) {
		st->abandoned = !sa_finish(s);
		st->reported = s->n_reported;
		st->dropped = s->n_slots - s->n_reported;
		st->train_loss = NAN; /* clients send no loss in secure mode */
		if (!st->abandoned)
			evaluate(s);
	} else if (s->dp != NULL && srv_dp_ddg(s->dp) != NULL) {
		/* Distributed DP without a session: too few (or too many) clients
		 * were sampled; the noise lives in the clients, so nothing can be
		 * released (try_start_round logged it). */
		st->abandoned = true;
		st->train_loss = NAN;
	} else if (s->dp != NULL) {
		st->abandoned = !dp_aggregate(s);
	} else if (s->n_reported >= s->cfg.min_reports && s->n_reported > 0) {
		double total = 0, loss = 0;
		memset(s->acc, 0, s->dim * sizeof *s->acc);
		/* In selection order, so the sum does not depend on arrival order. */
		for (uint32_t i = 0; i < s->n_slots; i++) {
			slot *sl = &s->slots[i];
			if (!sl->reported)
				continue;
			double w = nova_weight(s, sl);
			if (sl->compressed)
				cx_accumulate(sl->delta, sl->delta_len, (uint32_t)s->dim, w, s->acc,
				              s->scratch); /* validated on arrival */
			else
				cx_accumulate_dense(sl->delta, s->dim, w, s->acc);
			total += sl->n;
			loss += (double)sl->loss * sl->n;
		}
		for (size_t j = 0; j < s->dim; j++)
			s->acc[j] /= total;
		nova_close(s, s->acc);
		publish(s, s->acc);
		st->train_loss = loss / total;
		evaluate(s);
		st->abandoned = false;
	} else {
		st->abandoned = true;
		st->train_loss = NAN;
		log_warn("round %u abandoned: %u of %u selected clients reported, %u needed; "
		         "the global model is unchanged",
		         s->round, s->n_reported, s->n_slots, s->cfg.min_reports);
	}
	st->accuracy = s->accuracy;
	st->loss = s->loss;
	st->epsilon = srv_core_epsilon(s);
	for (uint32_t i = 0; i < s->n_slots; i++)
		s->clients[s->slots[i].client].selected_round = 0;
	if (!end_round(s))
		s->phase = PH_IDLE;
	checkpoint(s); /* the round boundary, before anything of the next round */
	if (s->phase == PH_IDLE)
		try_start_round(s, now);
}

static void
free_slots(srv_core *s)
{
	sa_server_free(s->sa);
	s->sa = NULL;
	free(s->sa_idpk);
	s->sa_idpk = NULL;
	sa_task_fini(&s->sat);
	for (uint32_t i = 0; i < s->n_slots; i++)
		free(s->slots[i].delta);
	s->n_slots = s->n_reported = s->n_declined = 0;
}

/* The client learning rate of the round being opened (s->round). */
static float
round_lr(const srv_core *s)
{
	return (float)(s->cfg.lr * pow(s->cfg.lr_decay, (double)s->round - 1));
}

/* ---- secure aggregation ------------------------------------------------- */

/* Shared quantization range of the first secure round when --secagg-scale
 * is adaptive; later rounds use twice the largest coordinate of the
 * previous average. Clients clip to it and keep the excess in their
 * error-feedback residual, so a small range delays mass, never drops it. */
#define SRV_SA_SCALE0 0.1f

/* Neighbours per client for n selected clients. */
static uint32_t
sa_degree(const srv_config *c, uint32_t n)
{
	uint32_t k = c->secagg_k;
	if (c->secagg == SRV_SECAGG_FULL || n < 4)
		return n - 1;
	if (k == 0) {
		uint32_t lg = 0;
		while ((1u << lg) < n)
			lg++;
		k = 2 * lg;
	}
	return k >= n - 1 ? n - 1 : k & ~1u;
}

/* Threshold for k neighbours: from the stated dropout and collusion bounds;
 * when so few clients cannot meet the dropout bound, the collusion bound
 * alone (fewer dropouts are then survivable; logged). */
static uint32_t
sa_thresh(const srv_config *c, uint32_t k, uint32_t round)
{
	uint32_t t;
	if (sa_threshold(k, c->secagg_dropout, c->secagg_collusion, &t) == SHOAL_OK)
		return t;
	t = (uint32_t)(c->secagg_collusion * k) + 1;
	if (t > k + 1)
		t = k + 1;
	log_warn("round %u: with %u neighbours the threshold %u cannot also tolerate a dropout "
	         "rate of %.2f; fewer dropouts are survivable this round",
	         round, k, t, c->secagg_dropout);
	return t;
}

/* The shared index set: the largest coordinates of the last public change
 * (half of the set, from the second round on) and a uniformly random rest
 * drawn from the round's stream. Sorted into s->sat.idx. */
static void
sa_index_set(srv_core *s, rng *r)
{
	uint32_t n = s->sa_n_idx, dim = (uint32_t)s->dim, o = 0;
	uint32_t *mark = s->scratch;

	if (n == dim) {
		for (uint32_t j = 0; j < dim; j++)
			s->sat.idx[j] = j;
		return;
	}
	memset(mark, 0, dim * sizeof *mark);
	uint32_t top = s->have_change ? n / 2 : 0, have = 0;
	if (top > 0 && cx_topk(s->change, dim, top, s->sat.idx) == SHOAL_OK) {
		for (uint32_t q = 0; q < top; q++)
			mark[s->sat.idx[q]] = 1;
		have = top;
	}
	while (have < n) {
		uint32_t j = rng_below(r, dim);
		if (!mark[j]) {
			mark[j] = 1;
			have++;
		}
	}
	for (uint32_t j = 0; j < dim; j++)
		if (mark[j])
			s->sat.idx[o++] = j;
}

/* Opens the session of a round with n selected clients (slots filled).
 * Returns the TASK "sa" template (malloc'd, "me" patched per client). */
static uint8_t *
sa_open(srv_core *s, rng *r, uint32_t n, size_t *len)
{
	sa_task *t = &s->sat;
	const dp_ddg_enc *ddg = s->dp != NULL ? srv_dp_ddg(s->dp) : NULL;
	uint8_t *blob = NULL;
	uint32_t wmax = 1;
	for (uint32_t i = 0; i < n && ddg == NULL; i++) {
		uint32_t w = s->clients[s->slots[i].client].n_examples;
		wmax = w > wmax ? w : wmax;
	}
	memset(t, 0, sizeof *t);
	t->c.n = n;
	t->c.k = sa_degree(&s->cfg, n);
	t->c.t = sa_thresh(&s->cfg, t->c.k, s->round);
	t->c.round = s->round;
	t->c.d = s->sa_n_idx + 1;
	rng_bytes(r, t->c.session, sizeof t->c.session);
	t->levels = s->sa_levels;
	/* Weights saturate at wmax; lower it until the sum cannot wrap. */
	while (sa_ring_bits(n, wmax, t->levels, &t->c.m) != SHOAL_OK && wmax > 1)
		wmax /= 2;
	t->wmax = wmax;
	t->me = 1;
	t->phase_ms = s->cfg.secagg_phase_ms;
	t->scale = s->sa_scale;
	t->n_idx = s->sa_n_idx;
	if (ddg != NULL) {
		/* Distributed DP (server/dp.h): weight 1 each, the rotated values,
		 * a ring for the noised sum of n (checked at start-up for the
		 * most clients a round can have). */
		t->c.ddp = true;
		t->c.d = ddg->dim + 1;
		t->levels = 1;
		t->wmax = 1;
		t->scale = (float)ddg->gamma;
		t->clip = (float)ddg->clip;
		t->s2_num = ddg->s2_num;
		t->s2_den = ddg->s2_den;
		t->l2max2 = ddg->l2max2;
		if (dp_ddg_ring_bits(ddg, n, &t->c.m) != SHOAL_OK)
			goto fail;
	}
	/* With client identity the clients sign their advertised keys and
	 * the set of inputs they saw (PROTOCOL.md 13.4) with their identity
	 * keys, so the server cannot swap in keys of its own. */
	t->c.signed_keys = s->cfg.identity;
	for (uint32_t i = 0; i < n && t->c.signed_keys; i++)
		t->c.signed_keys = s->clients[s->slots[i].client].key != 0;
	if (t->c.signed_keys) {
		if ((s->sa_idpk = malloc((size_t)n * sizeof *s->sa_idpk)) == NULL)
			goto fail;
		for (uint32_t i = 0; i < n; i++)
			memcpy(s->sa_idpk[i], s->keys[s->clients[s->slots[i].client].key - 1].pk,
			       SA_IDPK_BYTES);
	}
	if ((t->idx = malloc((size_t)t->n_idx * sizeof *t->idx)) == NULL ||
	    (blob = malloc(sa_task_size_max(t->n_idx))) == NULL)
		goto fail;
	sa_index_set(s, r);
	long w = sa_task_write(t, blob, sa_task_size_max(t->n_idx));
	if (w < 0 || sa_server_new(&t->c, (const uint8_t(*)[SA_IDPK_BYTES])s->sa_idpk,
	                           s->cfg.secagg_threads, &s->sa) != SHOAL_OK)
		goto fail;
	s->st.sa_threshold = t->c.t;
	s->sa_deadline = s->deadline; /* advertising waits for training */
	*len = (size_t)w;
	return blob;
fail:
	log_error("round %u: cannot open the secure aggregation session (out of memory)",
	          s->round);
	free(blob);
	free(s->sa_idpk);
	s->sa_idpk = NULL;
	sa_task_fini(t);
	return NULL;
}

/* Reply to every parked phase message: the phase's output, or (aborted)
 * an ERROR. */
static void
sa_release(srv_core *s, sa_phase closed, shoal_err status)
{
	for (uint32_t i = 0; i < s->n_slots; i++) {
		slot *sl = &s->slots[i];
		client *c = &s->clients[sl->client];
		if (!sl->sa_parked)
			continue;
		sl->sa_parked = false;
		if (status != SHOAL_OK) {
			reply_error_c(s, c, sl->sa_req, status, false,
			            status == SHOAL_EABORTED
			                ? "secure aggregation round aborted: too few clients left"
			                : "secure aggregation failed on the server");
			continue;
		}
		if (closed == SA_PH_UNMASK) {
			msg ack = {.type = MSG_ACK, .round = s->round};
			reply_msg_c(s, c, sl->sa_req, &ack, NULL);
			continue;
		}
		uint8_t *p;
		size_t n;
		if (sa_server_reply(s->sa, i + 1, &p, &n) != SHOAL_OK) {
			reply_error_c(s, c, sl->sa_req, SHOAL_ENOMEM, false, "server out of memory");
			continue;
		}
		msg m = {.type = MSG_SA_REPLY, .round = s->round, .phase = closed, .sa = p,
		         .sa_len = n, .has_sa = true};
		reply_msg_c(s, c, sl->sa_req, &m, &s->st.bytes_down);
		free(p);
	}
}

/* Ends the open phase (deadline, or everyone expected answered). */
static void
sa_close_phase(srv_core *s, uint64_t now)
{
	sa_phase ph = sa_server_phase(s->sa);
	uint32_t got = sa_server_received(s->sa), want = sa_server_expected(s->sa);
	shoal_err e = sa_server_close(s->sa);

	if (got < want)
		log_info("round %u: secure phase %d closed with %u of %u clients", s->round, (int)ph,
		         got, want);
	if (e == SHOAL_OK && ph == SA_PH_MASKED) {
		s->n_reported = 0;
		for (uint32_t i = 0; i < s->n_slots; i++)
			s->n_reported += sa_server_in_u3(s->sa, i + 1);
		uint32_t tmin = s->dp != NULL ? srv_dp_min_clients(s->dp) : 0;
		if (s->n_reported < tmin) {
			/* The sum would carry less noise than the accountant charges. */
			log_warn("round %u: only %u masked inputs arrived; distributed DP needs the "
			         "noise of at least %u (--dp-min-clients)", s->round, s->n_reported, tmin);
			e = SHOAL_EABORTED;
		}
	}
	sa_release(s, ph, e);
	if (e != SHOAL_OK || ph == SA_PH_UNMASK) {
		if (e != SHOAL_OK)
			log_warn("round %u abandoned: secure aggregation aborted in phase %d (%s); "
			         "the global model is unchanged",
			         s->round, (int)ph, shoal_strerror(e));
		close_round(s, now);
		return;
	}
	s->sa_deadline = now + s->cfg.secagg_phase_ms;
}

/* Is every client the open phase still waits for known to be gone? */
static bool
sa_phase_complete(const srv_core *s)
{
	for (uint32_t i = 0; i < s->n_slots; i++)
		if (!s->slots[i].declined && sa_server_waiting_for(s->sa, i + 1))
			return false;
	return true;
}

/* After UNMASK: average the unmasked sum into the model. */
static bool
sa_finish(srv_core *s)
{
	const uint32_t *sum = s->sa != NULL ? sa_server_sum(s->sa) : NULL;
	if (sum == NULL)
		return false;
	const sa_task *t = &s->sat;
	if (t->c.ddp) {
		/* Distributed DP: decoded over the fixed denominator q n. */
		shoal_err e = srv_dp_ddg_release(s->dp, sum, t->c.m, t->c.session, t->idx, s->acc);
		if (e != SHOAL_OK) {
			log_error("round %u: decoding the distributed-DP sum failed (%s)", s->round,
			          shoal_strerror(e));
			return false;
		}
		nova_close(s, s->acc);
		publish(s, s->acc);
		return true;
	}
	uint32_t m = t->c.m;
	uint64_t mod = (uint64_t)1 << m;
	uint64_t half = mod >> 1;
	double w = (double)sum[t->n_idx];
	if (!(w > 0))
		return false;
	double unit = (double)t->scale / t->levels / w, amax = 0;
	memset(s->acc, 0, s->dim * sizeof *s->acc);
	for (uint32_t q = 0; q < t->n_idx; q++) {
		int64_t v = sum[q] >= half ? (int64_t)sum[q] - (int64_t)mod : (int64_t)sum[q];
		double a = (double)v * unit;
		s->acc[t->idx[q]] = a;
		amax = fabs(a) > amax ? fabs(a) : amax;
	}
	if (s->cfg.secagg_scale <= 0 && amax > 0)
		s->sa_scale = (float)(2 * amax); /* adaptive: twice the largest mean */
	nova_close(s, s->acc);
	publish(s, s->acc);
	return true;
}

/* A TASK of the open round for client c (without "sa" or "up"), with the
 * model as c can take it (PROTOCOL.md 12.1): the q8 change when it holds
 * the previous version, the empty change when it holds this one, else the
 * full model (a client further behind, as often in asynchronous rounds, or
 * new). */
static void
task_init(const srv_core *s, const client *c, uint64_t seed, msg *task)
{
	*task = (msg){
	    .type = MSG_TASK,
	    .round = s->round,
	    .epochs = s->cfg.epochs,
	    .batch = s->cfg.batch,
	    .lr = round_lr(s),
	    .momentum = s->cfg.momentum,
	    .weight_decay = s->cfg.weight_decay,
	    .prox_mu = s->cfg.prox_mu,
	    .deadline_ms = s->cfg.round_timeout_ms,
	    .seed = seed,
	    .model_ver = s->version,
	    .clip = s->dp != NULL ? (float)srv_dp_clip(s->dp) : 0.0f,
	    .budget_ms = s->cfg.local_budget_ms,
	    .ref_steps = s->nova_S,
	};
	memcpy(task->model, s->model, sizeof task->model);
	if (s->dq_len > 0 && (c->cx_caps & MSG_CX_DOWN_Q8) && c->held_ver + 1 == s->version) {
		task->blob = s->dq; /* it holds the previous version: send the change */
		task->blob_len = s->dq_len;
		task->base = c->held_ver;
	} else if (s->dq0 != NULL && (c->cx_caps & MSG_CX_DOWN_Q8) && c->held_ver == s->version) {
		task->blob = s->dq0; /* it holds this version (async, or after an abandoned
		                        round): no change, a quarter of the bytes */
		task->blob_len = s->dq0_len;
		task->base = c->held_ver;
	} else {
		task->vec = (const uint8_t *)s->params;
		task->dim = (uint32_t)s->dim;
	}
}

/* Clients a fixed-sampling round selects: ceil(over_select * K). */
static uint32_t
n_select(const srv_config *c)
{
	double n = ceil(c->over_select * (double)c->clients_per_round - 1e-9);

	return c->over_select > 1.0 && n < 1e9 ? (uint32_t)n : c->clients_per_round;
}

static void async_dispatch(srv_core *s, uint64_t now);

static void
try_start_round(srv_core *s, uint64_t now)
{
	if (s->cfg.async_k > 0) {
		async_dispatch(s, now);
		return;
	}
	if (s->phase == PH_IDLE && s->dp != NULL && !srv_dp_round_allowed(s->dp, s->round + 1)) {
		finish(s); /* the privacy budget is spent */
		return;
	}
	if (s->phase != PH_IDLE || s->n_parked < s->cfg.min_clients || s->n_parked == 0)
		return;

	uint32_t n = s->n_parked, k = n_select(&s->cfg);
	uint32_t *cand = malloc(2 * (size_t)n * sizeof *cand);
	if (cand == NULL) {
		log_error("out of memory selecting clients; retrying later");
		return;
	}
	uint32_t m = 0;
	for (uint32_t i = 0; i < s->n_clients; i++)
		if (s->clients[i].parked)
			cand[m++] = i;
	sort_indices(cand, cand + n, n, s->clients);
	if (k > n)
		k = n;

	rng r;
	rng_init(&r, s->cfg.seed, s->round + 1);
	s->round++;
	s->phase = PH_RUNNING;
	s->deadline = now + s->cfg.round_timeout_ms;
	memset(&s->st, 0, sizeof s->st);
	s->st.round = s->round;
	s->st.start_ms = now;
	s->st.epsilon = NAN;
	s->n_slots = s->n_reported = s->n_declined = 0;

	if (s->cfg.sampling == SRV_SAMPLING_POISSON)
		k = srv_poisson_select(&r, s->cfg.sample_rate, cand, n);
	for (uint32_t i = 0; i < k; i++) {
		if (s->cfg.sampling != SRV_SAMPLING_POISSON) {
			/* Partial Fisher-Yates: the i-th pick is uniform over the rest. */
			uint32_t j = i + rng_below(&r, n - i);
			uint32_t t = cand[i];
			cand[i] = cand[j];
			cand[j] = t;
		}
		s->slots[i] = (slot){.client = cand[i]};
	}
	if (s->dp != NULL)
		srv_dp_round_open(s->dp, s->round, n, s->n_clients);
	s->n_slots = k;
	nova_open(s, k);
	uint8_t *sa_blob = NULL;
	size_t sa_len = 0;
	uint32_t tmin = s->dp != NULL ? srv_dp_min_clients(s->dp) : 0;
	if (tmin > 0 && (k < tmin || k > SA_N_MAX)) {
		/* Distributed DP: the round is charged (the sampling happened) and
		 * closes at once, abandoned: fewer than t_min clients cannot carry
		 * the noise. */
		log_warn("round %u abandoned: %u clients sampled; distributed DP needs %u to %u",
		         s->round, k, tmin, SA_N_MAX);
		k = 0;
		s->n_slots = 0;
	} else if (s->cfg.secagg != SRV_SECAGG_OFF) {
		if (k < 2 || (sa_blob = sa_open(s, &r, k, &sa_len)) == NULL) {
			/* too few for secure aggregation: leave them parked */
			if (k < 2)
				log_warn("round %u: secure aggregation needs at least 2 clients", s->round);
			s->round--;
			s->phase = PH_IDLE;
			s->n_slots = 0;
			rng_fini(&r);
			free(cand);
			return;
		}
	}
	for (uint32_t i = 0; i < k; i++) {
		client *c = &s->clients[cand[i]];
		c->selected_round = s->round;
		msg task;
		task_init(s, c, rng_u64(&r), &task);
		if (sa_blob != NULL) {
			uint8_t me[4] = {(uint8_t)(i + 1), (uint8_t)((i + 1) >> 8), (uint8_t)((i + 1) >> 16),
			                 (uint8_t)((i + 1) >> 24)};
			memcpy(sa_blob + SA_CONFIG_BYTES, me, 4);
			task.sa = sa_blob;
			task.sa_len = sa_len;
			task.has_sa = true;
		} else if (s->up_spec[0] != '\0' && (c->cx_caps & s->up_caps) == s->up_caps) {
			memcpy(task.up, s->up_spec, sizeof task.up);
		}
		unpark(s, c);
		reply_msg_c(s, c, c->park_req, &task, &s->st.bytes_down);
	}
	rng_fini(&r);
	free(cand);
	free(sa_blob);
	s->st.selected = k;
	log_info("round %u: selected %u of %u waiting clients", s->round, k, n);
	if (k == 0)
		s->deadline = now; /* Poisson picked nobody: the timer closes it */
	push_event(s, SRV_EV_ROUND_START);
}

/* ---- client identity: admission and signatures ---------------------------- */

static uint32_t
key_hash(const uint8_t pk[ID_PK_BYTES])
{
	/* A public key is a curve point chosen by its owner: its bytes are
	 * spread enough, and only admitted keys are ever inserted. */
	return (uint32_t)pk[0] | (uint32_t)pk[1] << 8 | (uint32_t)pk[2] << 16 |
	       (uint32_t)pk[3] << 24;
}

static long
find_key(const srv_core *s, const uint8_t pk[ID_PK_BYTES])
{
	if (s->ktable == NULL)
		return -1;
	for (uint32_t i = key_hash(pk) & s->ktable_mask;; i = (i + 1) & s->ktable_mask) {
		uint32_t v = s->ktable[i];
		if (v == 0)
			return -1;
		if (memcmp(s->keys[v - 1].pk, pk, ID_PK_BYTES) == 0)
			return (long)(v - 1);
	}
}

/* Index of a new, unbound, unadmitted entry for pk (the caller makes sure
 * pk is not there yet), or -1 (out of memory). */
static long
add_key(srv_core *s, const uint8_t pk[ID_PK_BYTES])
{
	if (s->n_keys == s->cap_keys) {
		uint32_t cap = s->cap_keys ? 2 * s->cap_keys : 64;
		idkey *v = realloc(s->keys, (size_t)cap * sizeof *v);
		if (v == NULL)
			return -1;
		s->keys = v;
		s->cap_keys = cap;
	}
	if (2 * ((size_t)s->n_keys + 1) > (size_t)s->ktable_mask + 1 || s->ktable == NULL) {
		uint32_t size = s->ktable == NULL ? 128 : 2 * (s->ktable_mask + 1);
		uint32_t *t = calloc(size, sizeof *t);
		if (t == NULL)
			return -1;
		free(s->ktable);
		s->ktable = t;
		s->ktable_mask = size - 1;
		for (uint32_t k = 0; k < s->n_keys; k++) {
			uint32_t i = key_hash(s->keys[k].pk) & s->ktable_mask;
			while (t[i] != 0)
				i = (i + 1) & s->ktable_mask;
			t[i] = k + 1;
		}
	}
	idkey *k = &s->keys[s->n_keys];
	memset(k, 0, sizeof *k);
	memcpy(k->pk, pk, ID_PK_BYTES);
	uint32_t i = key_hash(pk) & s->ktable_mask;
	while (s->ktable[i] != 0)
		i = (i + 1) & s->ktable_mask;
	s->ktable[i] = s->n_keys + 1;
	return (long)s->n_keys++;
}

static long
find_token(const srv_core *s, const uint8_t hash[ID_HASH_BYTES])
{
	for (uint32_t i = 0; i < s->n_tokens; i++)
		if (memcmp(s->tokens[i].hash, hash, ID_HASH_BYTES) == 0)
			return (long)i;
	return -1;
}

/* Queue client index i for the driver's key log. */
static void
note_binding(srv_core *s, uint32_t i)
{
	if (s->bound_head > 0 && s->bound_head == s->bound_len)
		s->bound_head = s->bound_len = 0;
	if (s->bound_len == s->bound_cap) {
		uint32_t cap = s->bound_cap ? 2 * s->bound_cap : 16;
		uint32_t *v = realloc(s->bound, (size_t)cap * sizeof *v);
		if (v == NULL) {
			log_error("out of memory: the key of client %s is not logged until the next "
			          "checkpoint", s->clients[i].name);
			return;
		}
		s->bound = v;
		s->bound_cap = cap;
	}
	s->bound[s->bound_len++] = i + 1;
}

/* Is the request in buf (decoded: m) signed over the nonce the server
 * issued to key pk? Otherwise the refusal is logged and answered with
 * that nonce (issued now if none is outstanding). who names the sender. */
static bool
check_sig(srv_core *s, uint64_t req, const msg *m, const uint8_t *buf, size_t len,
          const uint8_t pk[ID_PK_BYTES], uint8_t nonce[ID_NONCE_BYTES], bool *live,
          const char *who)
{
	const char *type = msg_type_name(m->type);

	if (!*live)
		fresh_nonce(s, nonce, live);
	if (!m->has_nonce) {
		log_debug("%s from %s carries no nonce yet: sent one to sign", type, who);
		reply_auth(s, req, nonce, SHOAL_ENONCE, false,
		           "sign the request over the nonce in this reply and send it again");
		return false;
	}
	if (memcmp(m->nonce, nonce, ID_NONCE_BYTES) != 0) {
		log_warn("refused %s from %s: stale or replayed nonce (a captured or resent "
		         "request)", type, who);
		reply_auth(s, req, nonce, SHOAL_ENONCE, true,
		           "stale or replayed nonce: sign the request over the nonce in this "
		           "reply and send it again");
		return false;
	}
	shoal_err e = m->has_sig ? id_verify(pk, buf, len) : SHOAL_EBADSIG;
	if (e == SHOAL_ENOMEM) {
		reply_error(s, req, SHOAL_ENOMEM, false, "server out of memory");
		return false;
	}
	if (e != SHOAL_OK) {
		log_warn("refused %s from %s: %s", type, who,
		         !m->has_sig ? "no signature"
		         : e == SHOAL_EMALFORMED ? "its signature is not the last key"
		                                 : "bad signature (forged, or signed with another key)");
		reply_auth(s, req, nonce, SHOAL_EBADSIG, true,
		           "the request's signature does not verify with this client's key "
		           "(PROTOCOL.md 16): check the client's key file");
		return false;
	}
	*live = false; /* used: the reply to this request brings the next one */
	return true;
}

/* HELLO with identity on: admitted by its key (*key set), or by an unused
 * enrollment token (*tok set; the key is not in keys yet). */
static bool
hello_auth(srv_core *s, uint64_t req, const msg *m, const uint8_t *buf, size_t len, long *key,
           long *tok)
{
	char hex[ID_HEX_CHARS + 1], who[MSG_NAME_MAX + 32];
	uint8_t h[ID_HASH_BYTES];

	*key = *tok = -1;
	if (!m->has_pk) {
		log_warn("refused HELLO from %s: no identity key (this server admits listed or "
		         "enrolled keys only)", m->name);
		reply_error(s, req, SHOAL_EUNLISTED, false,
		            "this server admits only clients with an identity key: upgrade the "
		            "client");
		return false;
	}
	id_hex(m->pk, ID_PK_BYTES, hex);
	snprintf(who, sizeof who, "%s (key %.16s...)", m->name, hex);
	long k = find_key(s, m->pk);
	if (k >= 0 && (s->keys[k].listed || s->keys[k].enrolled)) {
		idkey *e = &s->keys[k];
		if (!check_sig(s, req, m, buf, len, e->pk, e->nonce, &e->nonce_live, who))
			return false;
		*key = k;
		return true;
	}
	if (m->token[0] == '\0' || s->n_tokens == 0) {
		log_warn("refused HELLO from %s: key %s is %s", m->name, hex,
		         k >= 0 ? "no longer on the allowlist" : "not on the allowlist");
		reply_error(s, req, SHOAL_EUNLISTED, false,
		            "this client's key is not on the server's allowlist: give the operator "
		            "its public key (shoal-client --show-key), or start the client with "
		            "--enroll-token TOKEN");
		return false;
	}
	id_token_hash(m->token, h);
	long t = find_token(s, h);
	if (t < 0 || s->tokens[t].used) {
		log_warn("refused HELLO from %s: %s enrollment token", who,
		         t < 0 ? "an unknown" : "an already used");
		reply_error(s, req, SHOAL_ETOKEN, false,
		            t < 0 ? "enrollment token not known to this server: check it, or ask "
		                    "the operator for a new one"
		                  : "this enrollment token was already used (each admits one "
		                    "client): ask the operator for a new one");
		return false;
	}
	idtoken *tk = &s->tokens[t];
	if (!tk->pending || memcmp(tk->pk, m->pk, ID_PK_BYTES) != 0) {
		/* A key starts enrolling with this token: challenge it. */
		tk->pending = true;
		memcpy(tk->pk, m->pk, ID_PK_BYTES);
		tk->nonce_live = false;
	}
	if (!check_sig(s, req, m, buf, len, tk->pk, tk->nonce, &tk->nonce_live, who))
		return false;
	*tok = t;
	return true;
}

/* Identity of a CHECKIN, UPDATE or SA from client c: signed over its nonce
 * with its key, which is still admitted. */
static bool
auth_request(srv_core *s, uint64_t req, const msg *m, const uint8_t *buf, size_t len,
             client *c)
{
	if (!s->cfg.identity)
		return true;
	if (c->key == 0) {
		/* Registered before the server required keys (an earlier run). */
		reply_error(s, req, SHOAL_EUNKNOWN, false,
		            "this server now requires identity keys: send HELLO with the client's "
		            "key");
		return false;
	}
	idkey *k = &s->keys[c->key - 1];
	if (!k->listed && !k->enrolled) {
		char hex[ID_HEX_CHARS + 1];
		id_hex(k->pk, ID_PK_BYTES, hex);
		log_warn("refused %s from %s: key %s is no longer on the allowlist",
		         msg_type_name(m->type), c->name, hex);
		reply_error(s, req, SHOAL_EUNLISTED, false,
		            "this client's key is no longer on the server's allowlist: ask the "
		            "operator");
		return false;
	}
	return check_sig(s, req, m, buf, len, k->pk, k->nonce, &k->nonce_live, c->name);
}

/* Bind client i to its key: key (an admitted entry), or the key that just
 * enrolled with token tok. */
static bool
bind_key(srv_core *s, uint32_t i, long key, long tok, const uint8_t pk[ID_PK_BYTES])
{
	if (key < 0) {
		if ((key = add_key(s, pk)) < 0)
			return false;
		idkey *k = &s->keys[key];
		k->enrolled = true;
		memcpy(k->tok, s->tokens[tok].hash, ID_HASH_BYTES);
		s->tokens[tok].used = true;
		s->tokens[tok].pending = false;
		log_info("client %s enrolled its key with a token (the token is used up)",
		         s->clients[i].name);
	}
	s->keys[key].client = i + 1;
	s->clients[i].key = (uint32_t)key + 1;
	note_binding(s, i);
	return true;
}

/* ---- requests ------------------------------------------------------------ */

static void
on_hello(srv_core *s, uint64_t req, const msg *m, const uint8_t *buf, size_t len)
{
	char text[MSG_TEXT_MAX + 1];
	long key = -1, tok = -1;

	if (s->cfg.identity && !hello_auth(s, req, m, buf, len, &key, &tok))
		return;
	if (strcmp(m->model, s->model) != 0 || m->dim != s->dim) {
		snprintf(text, sizeof text,
		         "this server trains model %s with %zu parameters; the client has %s with "
		         "%u: start the client with --model %s",
		         s->model, s->dim, m->model, m->dim, s->model);
		log_warn("refused HELLO from %s: %s", m->name, text);
		reply_error(s, req, SHOAL_EMODEL, false, text);
		return;
	}
	if (s->cfg.secagg != SRV_SECAGG_OFF && !(m->cx_caps & MSG_CX_SECAGG)) {
		log_warn("refused HELLO from %s: it does not support secure aggregation", m->name);
		reply_error(s, req, SHOAL_ECAPS, false,
		            "this server trains with secure aggregation, which this client does not "
		            "support: upgrade the client");
		return;
	}
	long i = find_client(s, m->name);
	if (s->cfg.identity) {
		/* One name per key and one key per name. */
		const idkey *k = key >= 0 ? &s->keys[key] : NULL;
		if (k != NULL && k->client != 0 && (i < 0 || k->client != (uint32_t)i + 1)) {
			const char *other = s->clients[k->client - 1].name;
			snprintf(text, sizeof text, "this client's key is registered as '%s': start the "
			         "client with --name %s", other, other);
			log_warn("refused HELLO from %s: its key is registered as client %s", m->name,
			         other);
			reply_error(s, req, SHOAL_EIDENTITY, false, text);
			return;
		}
		if (i >= 0 && s->clients[i].key != 0 && (key < 0 || s->clients[i].key != key + 1)) {
			snprintf(text, sizeof text, "the name '%s' is registered with another key: "
			         "choose another --name, or use that client's state folder", m->name);
			log_warn("refused HELLO from %s: the name is registered with another key",
			         m->name);
			reply_error(s, req, SHOAL_EIDENTITY, false, text);
			return;
		}
	}
	if (i < 0) {
		if (s->n_clients >= s->cfg.max_clients) {
			log_warn("refused HELLO from %s: %u clients registered (--max-clients)",
			         m->name, s->n_clients);
			reply_error(s, req, SHOAL_EFULL, false, "server is at its client limit");
			return;
		}
		i = s->n_clients++;
		client *c = &s->clients[i];
		memset(c, 0, sizeof *c);
		memcpy(c->name, m->name, sizeof c->name);
		insert_client(s, (uint32_t)i);
		log_info("client %s registered as id %ld (%u examples)", m->name, i + 1, m->n_examples);
	} else if (s->clients[i].parked) {
		/* A restarted client: answer its old parked request first. */
		unpark(s, &s->clients[i]);
		reply_simple_c(s, &s->clients[i], s->clients[i].park_req, MSG_WAIT);
	}
	if (s->clients[i].task_round != 0)
		async_drop(s, &s->clients[i], "registered again (restarted) during its task");
	if (s->cfg.identity && s->clients[i].key == 0 &&
	    !bind_key(s, (uint32_t)i, key, tok, m->pk)) {
		reply_error(s, req, SHOAL_ENOMEM, false, "server out of memory");
		return;
	}
	s->clients[i].n_examples = m->n_examples;
	s->clients[i].cx_caps = m->cx_caps;
	s->clients[i].held_ver = 0;
	msg w = {.type = MSG_WELCOME, .client_id = (uint32_t)i + 1, .hold_ms = s->cfg.hold_ms};
	reply_msg_c(s, &s->clients[i], req, &w, NULL);
}

static client *
lookup_id(srv_core *s, uint64_t req, uint32_t id)
{
	if (id == 0 || id > s->n_clients) {
		reply_error(s, req, SHOAL_EUNKNOWN, false,
		            "unknown client id: send HELLO to register (the server may have restarted)");
		return NULL;
	}
	return &s->clients[id - 1];
}

/* A selected client checked in again without sending its update (it
 * skipped the task): count it as dropped now rather than at the deadline,
 * and close the round once every selected client reported or declined.
 * Returns true if the round closed. */
static bool
decline(srv_core *s, const client *c, uint64_t now)
{
	for (uint32_t i = 0; i < s->n_slots; i++) {
		slot *sl = &s->slots[i];
		if (&s->clients[sl->client] != c || sl->reported || sl->declined)
			continue;
		sl->declined = true;
		s->n_declined++;
		log_info("round %u: client %s declined its task", s->round, c->name);
		if (s->sa != NULL) {
			uint32_t r0 = s->round;
			if (sa_phase_complete(s))
				sa_close_phase(s, now);
			return s->round != r0 || s->phase != PH_RUNNING;
		}
		if (s->n_reported + s->n_declined == s->n_slots) {
			close_round(s, now);
			return true;
		}
	}
	return false;
}

/* ---- asynchronous buffered aggregation (FedBuff) ------------------------- */

/* Stream of the seed of asynchronous task n: apart from the rounds'
 * selection (seed, r), noise (2^62 | r) and nonces (3 * 2^62). */
#define SRV_ASYNC_STREAM (UINT64_C(1) << 61)

double
srv_staleness_weight(uint32_t tau)
{
	/* FedBuff (Nguyen et al. 2022, section 5) scales a stale update by
	 * 1/sqrt(1 + tau), the polynomial rule of Xie et al. 2019. */
	return 1.0 / sqrt(1.0 + (double)tau);
}

static uint32_t
async_concurrency(const srv_config *c)
{
	return c->concurrency > 0 ? c->concurrency : c->clients_per_round;
}

/* Opens asynchronous round s->round + 1: its statistics start from zero;
 * tasks in flight stay in flight. */
static void
async_open(srv_core *s, uint64_t now)
{
	s->round++;
	s->phase = PH_RUNNING;
	s->deadline = UINT64_MAX; /* tasks have their own deadlines */
	memset(&s->st, 0, sizeof s->st);
	s->st.round = s->round;
	s->st.start_ms = now;
	s->st.epsilon = NAN;
	s->st.async = true;
	s->n_slots = s->n_reported = s->n_declined = 0;
	push_event(s, SRV_EV_ROUND_START);
}

/* Gives up client c's task (why: logged); it counts as dropped. */
static void
async_drop(srv_core *s, client *c, const char *why)
{
	log_info("round %u: client %s %s", s->round, c->name, why);
	c->task_round = 0;
	s->n_training--;
	s->st.dropped++;
}

/* Sends parked client c a task on the current model (false: no memory
 * to keep its deadline; it stays parked). */
static bool
async_task(srv_core *s, client *c, uint64_t now)
{
	uint64_t until = now + s->cfg.round_timeout_ms;
	rng r;
	msg task;

	if (!dl_push(&s->taskq, (uint32_t)(c - s->clients), until)) {
		log_error("out of memory for a task deadline: client %s keeps waiting", c->name);
		return false;
	}

	rng_init(&r, s->cfg.seed, SRV_ASYNC_STREAM | s->n_tasks++);
	task_init(s, c, rng_u64(&r), &task);
	rng_fini(&r);
	if (s->up_spec[0] != '\0' && (c->cx_caps & s->up_caps) == s->up_caps)
		memcpy(task.up, s->up_spec, sizeof task.up);
	c->task_round = s->round;
	c->task_ver = s->version;
	c->task_until = until;
	s->n_training++;
	s->st.selected++;
	unpark(s, c);
	reply_msg_c(s, c, c->park_req, &task, &s->st.bytes_down);
	return true;
}

/* The client parked longest: the earliest hold deadline (the head of the
 * park queue), ties to the lowest id; NULL if none. */
static client *
longest_parked(srv_core *s)
{
	dl_queue *q = &s->parkq;
	client *best = NULL;

	dl_prune(s, q, park_live);
	for (size_t k = 0; k < q->len; k++) {
		const dl_entry *p = &q->v[(q->head + k) % q->cap];
		if (p->until != q->v[q->head].until)
			break; /* equal deadlines are next to each other */
		if (park_live(s, p) && (best == NULL || &s->clients[p->client] < best))
			best = &s->clients[p->client];
	}
	return best;
}

/* While fewer than C clients train, the client parked longest (then the
 * lowest id) gets a task. Opens round 1 on the first call. */
static void
async_dispatch(srv_core *s, uint64_t now)
{
	client *next;

	if (s->phase == PH_IDLE)
		async_open(s, now);
	while (s->phase == PH_RUNNING && s->n_training < async_concurrency(&s->cfg) &&
	       (next = longest_parked(s)) != NULL && async_task(s, next, now))
		;
}

/* Gives up the tasks past their deadline. */
static void
task_expired(srv_core *s, client *c)
{
	async_drop(s, c, "did not report before its task's deadline");
}

static void
async_expire(srv_core *s, uint64_t now)
{
	(void)dl_expire(s, &s->taskq, task_live, task_expired, now);
}

/* The buffer is full: the model moves by the server optimizer applied to
 * d = sum s(tau_i) n_i delta_i / sum n_i (FedBuff, Nguyen et al. 2022,
 * Algorithm 1, with FedAvg's example weights: when no update is stale this
 * is FedAvg of the buffer), summed in arrival order. Then the round ends
 * and the next one opens, unless training is over. */
static void
async_close(srv_core *s, uint64_t now)
{
	srv_round_stats *st = &s->st;
	double total = 0, loss = 0, stale = 0;

	memset(s->acc, 0, s->dim * sizeof *s->acc);
	st->staleness_max = 0;
	for (uint32_t i = 0; i < s->n_slots; i++) {
		const slot *sl = &s->slots[i];
		double w = srv_staleness_weight(sl->stale) * sl->n;
		if (sl->compressed)
			cx_accumulate(sl->delta, sl->delta_len, (uint32_t)s->dim, w, s->acc, s->scratch);
		else
			cx_accumulate_dense(sl->delta, s->dim, w, s->acc);
		total += sl->n;
		loss += (double)sl->loss * sl->n;
		stale += sl->stale;
		st->staleness_max = sl->stale > st->staleness_max ? sl->stale : st->staleness_max;
	}
	st->abandoned = !(total > 0);
	if (!st->abandoned) {
		for (size_t j = 0; j < s->dim; j++)
			s->acc[j] /= total;
		publish(s, s->acc);
		evaluate(s);
	}
	st->reported = s->n_slots;
	st->train_loss = total > 0 ? loss / total : NAN;
	st->staleness = stale / s->n_slots;
	st->accuracy = s->accuracy;
	st->loss = s->loss;
	st->end_ms = now;
	if (!end_round(s))
		async_open(s, now);
}

/* Refuses an UPDATE that is not for client c's task in flight, or too
 * stale (giving the task up); true if it may be buffered. */
static bool
async_check(srv_core *s, uint64_t req, const msg *m, client *c)
{
	char text[MSG_TEXT_MAX + 1];

	if (s->phase != PH_RUNNING) {
		reply_simple_c(s, c, req, MSG_DONE); /* training is over: the update is not needed */
		return false;
	}
	if (c->task_round == 0 || m->round != c->task_round) {
		if (m->round == c->acked_round && m->round != 0) {
			reply_error_c(s, c, req, SHOAL_EDUP, false, "update already received");
			return false;
		}
		snprintf(text, sizeof text, "no task of round %u is open for this client (it was "
		         "given up: deadline, or a check-in since): check in for a new one", m->round);
		reply_error_c(s, c, req, SHOAL_ESTALE, false, text);
		return false;
	}
	uint32_t tau = s->version - c->task_ver;
	if (tau > s->cfg.max_staleness) {
		snprintf(text, sizeof text, "update trained on model version %u is %u versions "
		         "behind (more than --max-staleness %u): check in for a fresh task",
		         c->task_ver, tau, s->cfg.max_staleness);
		reply_error_c(s, c, req, SHOAL_ESTALE, false, text);
		async_drop(s, c, "sent an update too stale to use");
		return false;
	}
	return true;
}

/* An UPDATE in asynchronous mode: buffered with its staleness; the K-th
 * closes the round; the freed slot goes to a parked client. */
static void
async_update(srv_core *s, uint64_t req, const msg *m, size_t len, client *c, uint64_t now)
{
	if (s->phase == PH_RUNNING)
		s->st.bytes_up += len;
	if (!async_check(s, req, m, c))
		goto dispatch;
	slot *sl = &s->slots[s->n_slots];
	*sl = (slot){.client = (uint32_t)(c - s->clients), .stale = s->version - c->task_ver};
	if (!take_update(s, c, req, m, sl))
		return; /* the task stays in flight: the client checks in (declines) next */
	s->n_slots++;
	s->n_reported++;
	c->task_round = 0;
	c->acked_round = m->round;
	s->n_training--;
	msg ack = {.type = MSG_ACK, .round = m->round};
	reply_msg_c(s, c, req, &ack, NULL);
	if (s->n_slots == s->cfg.async_k)
		async_close(s, now);
dispatch:
	async_dispatch(s, now);
}

static void
on_checkin(srv_core *s, uint64_t req, const msg *m, const uint8_t *buf, size_t len,
           uint64_t now)
{
	client *c = lookup_id(s, req, m->client_id);

	if (c == NULL || !auth_request(s, req, m, buf, len, c))
		return;
	if (s->phase == PH_FINISHED) {
		reply_simple_c(s, c, req, MSG_DONE);
		return;
	}
	if (c->task_round != 0)
		async_drop(s, c, "checked in without its update (declined its task)");
	if (c->parked) /* the transport re-sent: answer the older request */
		reply_simple_c(s, c, c->park_req, MSG_WAIT);
	else
		s->n_parked++;
	c->parked = true;
	c->held_ver = m->model_ver;
	c->park_req = req;
	c->park_until = now + s->cfg.hold_ms;
	if (!dl_push(&s->parkq, (uint32_t)(c - s->clients), c->park_until)) {
		unpark(s, c);
		reply_simple_c(s, c, req, MSG_WAIT);
		return;
	}
	if (s->phase == PH_RUNNING && c->selected_round == s->round && decline(s, c, now))
		return; /* the round closed (and maybe the next one started) */
	try_start_round(s, now);
}

/* Validates the update in m (dimension, or the whole encoding: index
 * bounds and order, finite values) and copies its wire bytes into sl,
 * marked reported. False after replying with the error (-12, a codec
 * error, -1). */
static bool
take_update(srv_core *s, client *c, uint64_t req, const msg *m, slot *sl)
{
	char text[MSG_TEXT_MAX + 1];
	const uint8_t *payload = m->vec;
	size_t plen = 4 * (size_t)m->dim;

	if (m->blob != NULL) {
		long v = cx_validate(m->blob, m->blob_len, (uint32_t)s->dim, s->scratch);
		if (v < 0) {
			snprintf(text, sizeof text, "compressed update refused: %s",
			         shoal_strerror((shoal_err)v));
			reply_error_c(s, c, req, (shoal_err)v, false, text);
			return false;
		}
		payload = m->blob;
		plen = m->blob_len;
	} else if (m->dim != s->dim) {
		snprintf(text, sizeof text, "update has %u parameters, model has %zu", m->dim, s->dim);
		reply_error_c(s, c, req, SHOAL_EDIM, false, text);
		return false;
	}
	sl->delta = malloc(plen);
	if (sl->delta == NULL) {
		reply_error_c(s, c, req, SHOAL_ENOMEM, false, "server out of memory");
		return false;
	}
	memcpy(sl->delta, payload, plen);
	sl->delta_len = plen;
	sl->compressed = m->blob != NULL;
	sl->n = m->n_examples;
	sl->loss = m->loss;
	sl->tau = s->cfg.local_budget_ms > 0 ? m->tau : 0;
	sl->reported = true;
	return true;
}

static void async_update(srv_core *s, uint64_t req, const msg *m, size_t len, client *c,
                         uint64_t now);

static void
on_update(srv_core *s, uint64_t req, const msg *m, const uint8_t *buf, size_t len,
          uint64_t now)
{
	char text[MSG_TEXT_MAX + 1];
	client *c = lookup_id(s, req, m->client_id);

	if (c == NULL || !auth_request(s, req, m, buf, len, c))
		return;
	if (s->cfg.async_k > 0) {
		async_update(s, req, m, len, c, now);
		return;
	}
	if (s->phase == PH_RUNNING && m->round == s->round)
		s->st.bytes_up += len;
	if (s->phase != PH_RUNNING || m->round != s->round) {
		snprintf(text, sizeof text, "round %u is not open (current round %u%s)", m->round,
		         s->round, s->phase == PH_RUNNING ? "" : ", closed");
		reply_error_c(s, c, req, SHOAL_ESTALE, false, text);
		return;
	}
	if (c->selected_round != s->round) {
		reply_error_c(s, c, req, SHOAL_ENOTSELECTED, false, "client was not selected this round");
		return;
	}
	if (s->sa != NULL) {
		reply_error_c(s, c, req, SHOAL_ESTATE, false,
		            "this round uses secure aggregation: send SA phase messages, not UPDATE");
		return;
	}
	slot *sl = NULL;
	for (uint32_t i = 0; i < s->n_slots; i++)
		if (&s->clients[s->slots[i].client] == c)
			sl = &s->slots[i];
	if (sl == NULL || sl->reported) {
		reply_error_c(s, c, req, SHOAL_EDUP, false, "update already received for this round");
		return;
	}
	if (!take_update(s, c, req, m, sl))
		return;
	s->n_reported++;
	msg ack = {.type = MSG_ACK, .round = s->round};
	reply_msg_c(s, c, req, &ack, NULL);
	/* Over-selection keeps the first K arrivals: the round closes at the
	 * K-th update, and the later ones are refused as stale. */
	if (s->n_reported + s->n_declined == s->n_slots ||
	    (s->cfg.over_select > 1.0 && s->n_reported == s->cfg.clients_per_round))
		close_round(s, now);
}

static void
on_sa(srv_core *s, uint64_t req, const msg *m, const uint8_t *buf, size_t len, uint64_t now)
{
	char text[MSG_TEXT_MAX + 1];
	client *c = lookup_id(s, req, m->client_id);

	if (c == NULL || !auth_request(s, req, m, buf, len, c))
		return;
	if (s->phase != PH_RUNNING || m->round != s->round || s->sa == NULL) {
		snprintf(text, sizeof text, "no secure round %u is open (current round %u)", m->round,
		         s->round);
		reply_error_c(s, c, req, SHOAL_ESTALE, false, text);
		return;
	}
	uint32_t i = 0;
	while (i < s->n_slots && &s->clients[s->slots[i].client] != c)
		i++;
	if (i == s->n_slots) {
		reply_error_c(s, c, req, SHOAL_ENOTSELECTED, false, "client was not selected this round");
		return;
	}
	slot *sl = &s->slots[i];
	s->st.bytes_up += len;
	shoal_err e = sa_server_recv(s->sa, i + 1, (sa_phase)m->phase, m->sa, m->sa_len);
	if (e == SHOAL_EDUP && sl->sa_parked) {
		/* The transport re-sent it: the newer request gets the reply. */
		reply_error_c(s, c, sl->sa_req, SHOAL_EDUP, false, "superseded by a resent request");
		sl->sa_req = req;
		return;
	}
	if (e != SHOAL_OK) {
		snprintf(text, sizeof text, "secure aggregation message for phase %u refused: %s",
		         m->phase, shoal_strerror(e));
		log_warn("round %u: client %s: %s", s->round, c->name, text);
		reply_error_c(s, c, req, e, false, text);
		return;
	}
	sl->sa_parked = true;
	sl->sa_req = req;
	if (m->phase == SA_PH_MASKED) { /* its input is in the sum */
		sl->sa_in = true;
		sl->tau = s->cfg.local_budget_ms > 0 ? m->tau : 0;
	}
	if (sa_phase_complete(s))
		sa_close_phase(s, now);
}

static void on_request(srv_core *s, uint64_t req, const uint8_t *buf, size_t len,
                       uint64_t now);

void
srv_core_on_request(srv_core *s, uint64_t req, const uint8_t *buf, size_t len, uint64_t now)
{
	on_request(s, req, buf, len, now);
	dl_prune(s, &s->parkq, park_live);
	dl_prune(s, &s->taskq, task_live);
}

static void
on_request(srv_core *s, uint64_t req, const uint8_t *buf, size_t len, uint64_t now)
{
	msg m;
	long used;

	if (len > s->cfg.max_message) {
		reply_error(s, req, SHOAL_ETOOBIG, true, "message exceeds the server's --max-message");
		return;
	}
	used = msg_decode(buf, len, &m);
	if (used >= 0 && (size_t)used != len)
		used = SHOAL_EMALFORMED;
	if (used < 0) {
		shoal_err e = (shoal_err)used;
		/* Garbage drops the peer; a well-formed message we cannot use does
		 * not (the client can read the error and act). */
		bool drop = e == SHOAL_EMALFORMED || e == SHOAL_ETRUNC || e == SHOAL_EVERSION ||
		            e == SHOAL_ETYPE || e == SHOAL_ETOOBIG;
		log_debug("rejected a %zu-byte request: %s", len, shoal_strerror(e));
		reply_error(s, req, e, drop, shoal_strerror(e));
		return;
	}
	switch (m.type) {
	case MSG_HELLO:
		on_hello(s, req, &m, buf, len);
		break;
	case MSG_CHECKIN:
		on_checkin(s, req, &m, buf, len, now);
		break;
	case MSG_UPDATE:
		on_update(s, req, &m, buf, len, now);
		break;
	case MSG_SA:
		on_sa(s, req, &m, buf, len, now);
		break;
	default:
		reply_error(s, req, SHOAL_ETYPE, true, "message type is sent by servers, not clients");
		break;
	}
}

void
srv_core_on_timer(srv_core *s, uint64_t now)
{
	if (s->phase == PH_RUNNING && s->sa != NULL && now >= s->sa_deadline) {
		sa_close_phase(s, now);
	} else if (s->phase == PH_RUNNING && s->sa == NULL && now >= s->deadline) {
		log_info("round %u deadline: %u of %u reported", s->round, s->n_reported, s->n_slots);
		close_round(s, now);
	} else if (s->phase == PH_RUNNING && s->cfg.async_k > 0) {
		async_expire(s, now);
	}
	park_expire(s, now);
	try_start_round(s, now);
	dl_prune(s, &s->parkq, park_live);
	dl_prune(s, &s->taskq, task_live);
}

uint64_t
srv_core_next_deadline(const srv_core *s)
{
	uint64_t t = s->phase != PH_RUNNING ? UINT64_MAX : s->sa != NULL ? s->sa_deadline : s->deadline;
	uint64_t p = dl_next(s, &s->parkq, park_live), k = dl_next(s, &s->taskq, task_live);

	if (p < t)
		t = p;
	if (s->phase == PH_RUNNING && k < t)
		t = k; /* async: a task's slot is given up then */
	return t;
}

void
srv_core_release_all(srv_core *s, uint64_t now)
{
	(void)now;
	for (uint32_t i = 0; i < s->n_clients; i++) {
		client *c = &s->clients[i];
		if (c->parked) {
			unpark(s, c);
			reply_simple_c(s, c, c->park_req, s->phase == PH_FINISHED ? MSG_DONE : MSG_WAIT);
		}
	}
}

/* ---- construction -------------------------------------------------------- */

/* The stream of the nonces when no key is given: apart from round r's
 * selection (seed, r) and noise (seed or key, 2^62 | r). */
#define SRV_NONCE_STREAM (UINT64_C(3) << 62)

/* The allowlist and the tokens, copied; the nonce stream. */
static shoal_err
ident_init(srv_core *s, const srv_config *cfg)
{
	rng_init(&s->nonces, cfg->seed, SRV_NONCE_STREAM);
	if (cfg->nonce_key != NULL)
		memcpy(s->nonces.key, cfg->nonce_key, sizeof s->nonces.key);
	s->cfg.nonce_key = NULL; /* the caller's memory */
	s->cfg.allowlist = NULL;
	s->cfg.tokens = NULL;
	for (uint32_t i = 0; i < cfg->n_allowlist; i++) {
		long k = find_key(s, cfg->allowlist[i]);
		if (k < 0 && (k = add_key(s, cfg->allowlist[i])) < 0)
			return SHOAL_ENOMEM;
		s->keys[k].listed = true;
	}
	if (cfg->n_tokens > 0 && (s->tokens = calloc(cfg->n_tokens, sizeof *s->tokens)) == NULL)
		return SHOAL_ENOMEM;
	for (uint32_t i = 0; i < cfg->n_tokens; i++)
		if (find_token(s, cfg->tokens[i]) < 0)
			memcpy(s->tokens[s->n_tokens++].hash, cfg->tokens[i], ID_HASH_BYTES);
	return SHOAL_OK;
}

/* Asynchronous rounds: what they do not compose with. */
static shoal_err
check_async(const srv_config *c)
{
	const char *why = NULL;

	if (c->async_k > SRV_ASYNC_K_MAX)
		why = "the buffer size K of --async must be at most 65536";
	else if (async_concurrency(c) > c->max_clients)
		why = "--concurrency exceeds --max-clients: lower it";
	else if (c->secagg != SRV_SECAGG_OFF)
		why = "--async does not compose with secure aggregation: masks cancel only in the "
		      "sum of a round's selected clients, and buffered updates arrive one by one "
		      "from different model versions; drop --async (synchronous secure rounds) or "
		      "--secagg";
	else if (c->dp != SRV_DP_OFF || c->sampling != SRV_SAMPLING_FIXED)
		why = "--async does not compose with --dp or --sampling poisson: the accountant "
		      "assumes each round Poisson-samples the clients, which buffered rounds of "
		      "first arrivals do not; drop --async (synchronous DP rounds) or --dp";
	else if (c->over_select > 1.0)
		why = "--over-select is for synchronous rounds (asynchronous ones already "
		      "aggregate the first K arrivals): drop it";
	else if (c->local_budget_ms > 0)
		why = "--local-budget is for synchronous rounds (FedNova normalizes the updates "
		      "of one round against that round's step count): drop it, or --async";
	if (why == NULL)
		return SHOAL_OK;
	log_error("%s", why);
	return SHOAL_EINVAL;
}

static shoal_err
check_config(const srv_config *c, size_t dim, uint32_t *up_caps)
{
#define BAD(...)                                                                           \
	do {                                                                                   \
		log_error(__VA_ARGS__);                                                            \
		return SHOAL_EINVAL;                                                               \
	} while (0)
	if (c->rounds == 0)
		BAD("rounds must be at least 1");
	if (c->clients_per_round == 0)
		BAD("clients per round (K) must be at least 1");
	if (c->min_clients == 0)
		BAD("min clients (M) must be at least 1");
	if (c->min_reports == 0 || c->min_reports > c->clients_per_round)
		BAD("min reports must be between 1 and clients per round (%u)", c->clients_per_round);
	if (!(c->over_select >= 1.0 && c->over_select <= 10.0))
		BAD("over-selection must be a factor in [1, 10]");
	if (c->over_select > 1.0 && (c->secagg != SRV_SECAGG_OFF || c->sampling != SRV_SAMPLING_FIXED))
		BAD("over-selection needs fixed sampling and plain rounds: a secure round needs its "
		    "selected clients to finish together, and DP's sampling must be what it accounts");
	if (c->epochs == 0 || c->epochs > MSG_EPOCHS_MAX)
		BAD("epochs must be between 1 and %u", MSG_EPOCHS_MAX);
	if (c->batch == 0 || c->batch > MSG_BATCH_MAX)
		BAD("batch size must be between 1 and %u", MSG_BATCH_MAX);
	if (!(c->lr > 0) || !isfinite(c->lr))
		BAD("learning rate must be a positive number");
	if (!(c->lr_decay > 0 && c->lr_decay <= 1))
		BAD("learning-rate decay must be in (0, 1]");
	if (!(c->momentum >= 0 && c->momentum < 1))
		BAD("client momentum must be in [0, 1)");
	if (!(c->weight_decay >= 0) || !isfinite(c->weight_decay) || !(c->prox_mu >= 0) ||
	    !isfinite(c->prox_mu))
		BAD("weight decay and the proximal term mu must be >= 0");
	cx_config up;
	bool none = true;
	if (c->compress != NULL && cx_parse_spec(c->compress, &up, &none) != SHOAL_OK)
		BAD("compress '%s': expected none, topk:RATIO or randk:RATIO with an optional "
		    ",q8, ,q4 or ,f32 (e.g. topk:0.01,q8)", c->compress);
	if (c->compress != NULL && strlen(c->compress) > MSG_MODEL_MAX)
		BAD("compress spec '%s' is too long", c->compress);
	*up_caps = none ? 0 : cx_required_caps(&up);
	if (c->secagg != SRV_SECAGG_OFF) {
		if (!none && up.values == CX_VALUES_F32)
			BAD("secure aggregation quantizes values into a ring: use --compress with ,q8 "
			    "or ,q4 (or none for every coordinate at 8 bits)");
		if (c->clients_per_round < 2 || c->clients_per_round > SA_N_MAX)
			BAD("secure aggregation needs 2 to %u clients per round", SA_N_MAX);
		if (c->secagg == SRV_SECAGG_PLUS && c->secagg_k % 2 != 0)
			BAD("--secagg plus:K needs an even K (each client joins K/2 neighbours on "
			    "each side of a ring)");
		if (!(c->secagg_dropout >= 0 && c->secagg_dropout < 1) ||
		    !(c->secagg_collusion >= 0 && c->secagg_collusion < 1))
			BAD("--secagg-dropout and --secagg-collusion must be in [0, 1)");
		if (c->secagg_phase_ms == 0 || c->secagg_threads == 0)
			BAD("secure aggregation phase deadline and threads must be positive");
		uint32_t k = sa_degree(c, c->clients_per_round), t;
		if (sa_threshold(k, c->secagg_dropout, c->secagg_collusion, &t) != SHOAL_OK)
			BAD("secure aggregation with %u clients per round and %u neighbours each: no "
			    "threshold keeps a %.2f colluding fraction out and survives a %.2f dropout "
			    "rate; lower --secagg-collusion or --secagg-dropout, or raise --secagg K or "
			    "the clients per round",
			    c->clients_per_round, k, c->secagg_collusion, c->secagg_dropout);
	}
	if (c->async_k > 0 && check_async(c) != SHOAL_OK)
		return SHOAL_EINVAL; /* it said why */
	if (srv_dp_check(c, dim) != SHOAL_OK)
		return SHOAL_EINVAL; /* it said why */
	if (c->round_timeout_ms == 0 || c->hold_ms == 0)
		BAD("round timeout and hold time must be positive");
	if (c->max_clients == 0 || c->max_clients > (1u << 24))
		BAD("max clients must be between 1 and %u", 1u << 24);
	if (c->max_message < 4 * dim + 1024)
		BAD("max message (%zu bytes) is too small for an update of this model (%zu bytes); "
		    "raise --max-message",
		    c->max_message, 4 * dim + 1024);
	return SHOAL_OK;
#undef BAD
}

/* s->dq0: the q8 downlink encoding of a zero change (decoding it adds
 * +0.0 to every coordinate). */
static shoal_err
empty_change(srv_core *s)
{
	float *zero = calloc(s->dim, sizeof *zero);
	long n;

	if (zero == NULL || (s->dq0 = malloc(s->dq_cap)) == NULL) {
		free(zero);
		return SHOAL_ENOMEM;
	}
	n = cx_encode_downlink(zero, (uint32_t)s->dim, CX_BLOCK_DEFAULT, s->dq0, s->dq_cap);
	free(zero);
	if (n < 0)
		return (shoal_err)n;
	s->dq0_len = (size_t)n;
	return SHOAL_OK;
}

shoal_err
srv_core_new(const srv_config *cfg, srv_core **out)
{
	srv_core *s;
	shoal_err e;
	size_t dim = ml_model_dim_of(cfg->model ? cfg->model : "");

	*out = NULL;
	if (dim == 0) {
		log_error("unknown model '%s'; built-in models: %s", cfg->model ? cfg->model : "",
		          ml_model_names());
		return SHOAL_EMODEL;
	}
	uint32_t up_caps;
	if ((e = check_config(cfg, dim, &up_caps)) != SHOAL_OK)
		return e;
	if ((s = calloc(1, sizeof *s)) == NULL)
		return SHOAL_ENOMEM;
	s->cfg = *cfg;
	snprintf(s->model, sizeof s->model, "%s", cfg->model);
	s->cfg.model = s->model;
	s->dim = dim;
	uint32_t tsize = 16;
	while (tsize < 2 * cfg->max_clients)
		tsize *= 2;
	s->table_mask = tsize - 1;
	e = SHOAL_ENOMEM;
	if ((s->params = malloc(dim * sizeof *s->params)) == NULL ||
	    (s->acc = malloc(dim * sizeof *s->acc)) == NULL ||
	    (s->clients = malloc((size_t)cfg->max_clients * sizeof *s->clients)) == NULL ||
	    (s->table = calloc(tsize, sizeof *s->table)) == NULL ||
	    (s->slots = malloc((size_t)(cfg->async_k > 0 ? cfg->async_k
	                                : cfg->sampling == SRV_SAMPLING_POISSON
	                                    ? cfg->max_clients : n_select(cfg)) *
	                       sizeof *s->slots)) == NULL)
		goto fail;
	if (up_caps != 0) {
		snprintf(s->up_spec, sizeof s->up_spec, "%s", cfg->compress);
		s->up_caps = up_caps;
	}
	s->cfg.compress = s->up_spec[0] ? s->up_spec : "none";
	if (cfg->secagg != SRV_SECAGG_OFF) {
		cx_config up;
		bool none = true;
		if (cfg->compress != NULL)
			(void)cx_parse_spec(cfg->compress, &up, &none); /* checked above */
		s->sa_n_idx = none ? (uint32_t)dim : cx_k_for_ratio((uint32_t)dim, up.ratio);
		s->sa_levels = !none && up.values == CX_VALUES_Q4 ? CX_Q4_MAX : CX_Q8_MAX;
		s->sa_scale = cfg->secagg_scale > 0 ? cfg->secagg_scale : SRV_SA_SCALE0;
		if ((s->change = calloc(dim, sizeof *s->change)) == NULL) {
			e = SHOAL_ENOMEM;
			goto fail;
		}
	}
	s->version = 1;
	s->dq_cap = cx_encoded_size_max((uint32_t)dim, (uint32_t)dim, &(cx_config){
	    .select = CX_SELECT_TOPK, .ratio = 1.0, .values = CX_VALUES_Q8,
	    .block = CX_BLOCK_DEFAULT, .index = CX_INDEX_DENSE});
	e = SHOAL_ENOMEM;
	if ((s->scratch = malloc(dim * sizeof *s->scratch)) == NULL ||
	    (cfg->downlink_q8 && ((s->shadow = malloc(dim * sizeof *s->shadow)) == NULL ||
	                          (s->dq = malloc(s->dq_cap)) == NULL)))
		goto fail;
	if (cfg->downlink_q8 && (e = empty_change(s)) != SHOAL_OK)
		goto fail;
	if ((e = srv_opt_init(&s->opt, &cfg->opt, dim)) != SHOAL_OK) {
		if (e == SHOAL_EINVAL)
			log_error("server optimizer: lr and tau must be > 0, betas in [0, 1)");
		goto fail;
	}
	if ((e = ml_model_new(s->model, 1000, &s->eval)) != SHOAL_OK)
		goto fail;
	s->cfg.dp_noise_key = NULL; /* the caller's memory; srv_dp keeps a copy */
	if ((e = srv_dp_new(cfg, dim, &s->dp)) != SHOAL_OK)
		goto fail;
	if ((e = ident_init(s, cfg)) != SHOAL_OK)
		goto fail;
	ml_model_init(s->eval, s->params, cfg->seed);
	if (s->shadow != NULL)
		memcpy(s->shadow, s->params, dim * sizeof *s->shadow);
	evaluate(s);
	s->phase = PH_IDLE;
	*out = s;
	return SHOAL_OK;
fail:
	srv_core_free(s);
	return e;
}

void
srv_core_free(srv_core *s)
{
	srv_reply r;

	if (s == NULL)
		return;
	while (srv_core_pop_reply(s, &r))
		free(r.buf);
	free(s->replies.v);
	free(s->events.v);
	if (s->slots != NULL)
		free_slots(s);
	free(s->slots);
	free(s->table);
	free(s->clients);
	free(s->parkq.v);
	free(s->taskq.v);
	free(s->expired);
	free(s->acc);
	free(s->params);
	free(s->scratch);
	free(s->shadow);
	free(s->dq);
	free(s->dq0);
	free(s->change);
	free(s->ckpt);
	srv_opt_fini(&s->opt);
	ml_model_free(s->eval);
	srv_dp_free(s->dp);
	rng_fini(&s->nonces);
	free(s->keys);
	free(s->ktable);
	free(s->tokens);
	free(s->bound);
	free(s);
}

bool srv_core_finished(const srv_core *s) { return s->phase == PH_FINISHED; }
uint32_t srv_core_round(const srv_core *s) { return s->round; }
uint32_t srv_core_registered(const srv_core *s) { return s->n_clients; }
uint32_t srv_core_model_version(const srv_core *s) { return s->version; }
double srv_core_epsilon(const srv_core *s) { return s->dp != NULL ? srv_dp_epsilon(s->dp) : NAN; }
const srv_dp *srv_core_dp(const srv_core *s) { return s->dp; }

const float *
srv_core_params(const srv_core *s, size_t *dim)
{
	if (dim != NULL)
		*dim = s->dim;
	return s->params;
}

/* ---- checkpoints ----------------------------------------------------------- */

/* Everything but the clients, pointing at the core's arrays. */
static void
ckpt_view(const srv_core *s, srv_ckpt *c)
{
	memset(c, 0, sizeof *c);
	snprintf(c->model, sizeof c->model, "%s", s->model);
	c->dim = (uint32_t)s->dim;
	c->seed = s->cfg.seed;
	c->opt_kind = (uint32_t)s->opt.cfg.kind;
	c->downlink_q8 = s->cfg.downlink_q8;
	c->secagg = s->cfg.secagg;
	c->dp = s->cfg.dp;
	c->sampling = s->cfg.sampling;
	c->sample_rate = s->cfg.sample_rate;
	c->clip = s->cfg.clip;
	c->noise_multiplier = s->dp != NULL ? srv_dp_noise_multiplier(s->dp) : 0;
	c->delta = s->dp != NULL ? s->cfg.delta : 0;
	c->round = s->round;
	c->version = s->version;
	c->finished = s->phase == PH_FINISHED;
	c->accuracy = s->accuracy;
	c->loss = s->loss;
	c->params = s->params;
	c->shadow = s->shadow;
	c->dq = s->dq;
	c->dq_len = (uint32_t)s->dq_len;
	c->opt_m = s->opt.m;
	c->opt_v = s->opt.v;
	c->sa_scale = s->sa_scale;
	c->have_change = s->have_change;
	c->change = s->change;
	if (s->dp != NULL) {
		c->dp_steps = srv_dp_steps(s->dp);
		srv_ckpt_view_accountant(c, srv_dp_accountant(s->dp));
		c->dp_clip = srv_dp_clip(s->dp);
		c->dp_sigma = srv_dp_noise_stddev(s->dp);
	}
}

shoal_err
srv_core_save(const srv_core *s, uint8_t **buf, size_t *len)
{
	srv_ckpt c;
	shoal_err e;

	*buf = NULL;
	*len = 0;
	if (s->phase == PH_RUNNING)
		return SHOAL_ESTATE;
	ckpt_view(s, &c);
	c.n_clients = s->n_clients;
	if (s->n_clients > 0 && (c.clients = malloc(s->n_clients * sizeof *c.clients)) == NULL)
		return SHOAL_ENOMEM;
	for (uint32_t i = 0; i < s->n_clients; i++) {
		(void)srv_core_client(s, i + 1, &c.clients[i]);
		if (s->clients[i].key != 0)
			c.n_keys++;
	}
	if (c.n_keys > 0 && (c.keys = malloc(c.n_keys * sizeof *c.keys)) == NULL) {
		free(c.clients);
		return SHOAL_ENOMEM;
	}
	for (uint32_t i = 0, j = 0; i < s->n_clients; i++)
		if (srv_core_client_key(s, i + 1, &c.keys[j]))
			j++;
	e = srv_ckpt_encode(&c, buf, len);
	free(c.keys);
	free(c.clients);
	return e;
}

void
srv_core_checkpoint_enable(srv_core *s)
{
	s->ckpt_on = true;
}

/* At a round boundary: the image the driver writes next. */
static void
checkpoint(srv_core *s)
{
	if (!s->ckpt_on)
		return;
	free(s->ckpt);
	s->ckpt_round = s->round;
	shoal_err e = srv_core_save(s, &s->ckpt, &s->ckpt_len);
	if (e != SHOAL_OK)
		log_error("round %u: cannot encode the checkpoint (%s); the previous one stays on "
		          "disk", s->round, shoal_strerror(e));
}

bool
srv_core_take_checkpoint(srv_core *s, uint8_t **buf, size_t *len, uint32_t *round)
{
	if (s->ckpt == NULL)
		return false;
	*buf = s->ckpt;
	*len = s->ckpt_len;
	*round = s->ckpt_round;
	s->ckpt = NULL;
	s->ckpt_len = 0;
	return true;
}

/* Bind client index i to the key (and token) of record k, restored from
 * disk: no note for the key log. */
static shoal_err
restore_binding(srv_core *s, uint32_t i, const srv_ckpt_key *k)
{
	long key = find_key(s, k->pk);
	if (key < 0 && (key = add_key(s, k->pk)) < 0)
		return SHOAL_ENOMEM;
	idkey *e = &s->keys[key];
	if (e->client != 0 && e->client != i + 1) {
		log_error("restoring the registry: clients '%s' and '%s' have the same key",
		          s->clients[e->client - 1].name, s->clients[i].name);
		return SHOAL_EINVAL;
	}
	if (s->clients[i].key != 0 && s->clients[i].key != (uint32_t)key + 1) {
		log_error("restoring the registry: client '%s' has two keys", s->clients[i].name);
		return SHOAL_EINVAL;
	}
	if (k->enrolled) {
		e->enrolled = true;
		memcpy(e->tok, k->token, ID_HASH_BYTES);
		long t = find_token(s, k->token);
		if (t >= 0)
			s->tokens[t].used = true;
	}
	e->client = i + 1;
	s->clients[i].key = (uint32_t)key + 1;
	return SHOAL_OK;
}

shoal_err
srv_core_restore_key(srv_core *s, const srv_ckpt_key *k)
{
	if (k->id == 0 || k->id > s->n_clients) {
		log_error("restoring the registry: a key for client %u, which is not registered",
		          k->id);
		return SHOAL_EINVAL;
	}
	return restore_binding(s, k->id - 1, k);
}

bool
srv_core_take_binding(srv_core *s, uint32_t *id)
{
	if (s->bound_head == s->bound_len)
		return false;
	*id = s->bound[s->bound_head++];
	return true;
}

shoal_err
srv_core_restore_clients(srv_core *s, const srv_ckpt_client *cl, uint32_t n)
{
	if (n > s->cfg.max_clients - s->n_clients) {
		log_error("restoring the registry: %u more clients would exceed --max-clients %u", n,
		          s->cfg.max_clients);
		return SHOAL_EINVAL;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (cl[i].name[0] == '\0' || find_client(s, cl[i].name) >= 0) {
			log_error("restoring the registry: client '%s' appears twice", cl[i].name);
			return SHOAL_EINVAL;
		}
		client *k = &s->clients[s->n_clients];
		memset(k, 0, sizeof *k);
		memcpy(k->name, cl[i].name, sizeof k->name);
		k->n_examples = cl[i].n_examples;
		k->cx_caps = cl[i].cx_caps;
		insert_client(s, s->n_clients++);
	}
	return SHOAL_OK;
}

bool
srv_core_client(const srv_core *s, uint32_t id, srv_ckpt_client *out)
{
	if (id == 0 || id > s->n_clients)
		return false;
	memcpy(out->name, s->clients[id - 1].name, sizeof out->name);
	out->n_examples = s->clients[id - 1].n_examples;
	out->cx_caps = s->clients[id - 1].cx_caps;
	return true;
}

bool
srv_core_client_key(const srv_core *s, uint32_t id, srv_ckpt_key *out)
{
	if (id == 0 || id > s->n_clients || s->clients[id - 1].key == 0)
		return false;
	const idkey *k = &s->keys[s->clients[id - 1].key - 1];
	memset(out, 0, sizeof *out);
	out->id = id;
	memcpy(out->pk, k->pk, ID_PK_BYTES);
	out->enrolled = k->enrolled;
	if (k->enrolled)
		memcpy(out->token, k->tok, ID_HASH_BYTES);
	return true;
}

shoal_err
srv_core_restore(srv_core *s, const srv_ckpt *c)
{
	char why[512];
	srv_ckpt now;
	size_t dim = s->dim;

	if (s->round != 0 || s->n_clients != 0 || s->phase != PH_IDLE)
		return SHOAL_ESTATE;
	ckpt_view(s, &now);
#define BAD(...)                                                                           \
	do {                                                                                   \
		snprintf(why, sizeof why, __VA_ARGS__);                                            \
		goto bad;                                                                          \
	} while (0)
	if (srv_ckpt_check_run(c, &now, why, sizeof why) != SHOAL_OK)
		goto bad;
	if ((c->opt_m != NULL) != (s->opt.m != NULL) || (c->opt_v != NULL) != (s->opt.v != NULL) ||
	    (c->change != NULL) != (s->change != NULL) || c->dq_len > s->dq_cap)
		BAD("its optimizer or codec state does not fit this server's settings");
	if (c->dq_len > 0 && cx_validate(c->dq, c->dq_len, (uint32_t)dim, s->scratch) < 0)
		BAD("its downlink delta does not decode");
	if (s->dp != NULL && srv_ckpt_put_accountant(c, srv_dp_accountant(s->dp), why,
	                                             sizeof why) != SHOAL_OK)
		goto bad;
	if (s->dp != NULL && srv_dp_set_clip(s->dp, c->dp_clip, c->dp_sigma) != SHOAL_OK)
		BAD("its DP clip bound %g or noise stddev %g is out of range", c->dp_clip,
		    c->dp_sigma);
	if (srv_core_restore_clients(s, c->clients, c->n_clients) != SHOAL_OK)
		return SHOAL_EINVAL; /* it said why */
	for (uint32_t i = 0; i < c->n_keys; i++) {
		shoal_err ek = srv_core_restore_key(s, &c->keys[i]);
		if (ek != SHOAL_OK)
			return ek; /* logged */
	}
#undef BAD
	if (s->dp != NULL)
		srv_dp_set_steps(s->dp, c->dp_steps);
	memcpy(s->params, c->params, dim * sizeof *s->params);
	if (s->shadow != NULL)
		memcpy(s->shadow, c->shadow, dim * sizeof *s->shadow);
	if (c->dq_len > 0)
		memcpy(s->dq, c->dq, c->dq_len);
	s->dq_len = c->dq_len;
	if (s->opt.m != NULL)
		memcpy(s->opt.m, c->opt_m, dim * sizeof *s->opt.m);
	if (s->opt.v != NULL)
		memcpy(s->opt.v, c->opt_v, dim * sizeof *s->opt.v);
	if (s->change != NULL)
		memcpy(s->change, c->change, dim * sizeof *s->change);
	s->have_change = c->have_change;
	if (s->cfg.secagg != SRV_SECAGG_OFF && s->cfg.secagg_scale <= 0)
		s->sa_scale = c->sa_scale; /* adaptive: as the last round left it */
	s->round = c->round;
	s->version = c->version;
	s->accuracy = c->accuracy;
	s->loss = c->loss;
	log_info("resumed after round %u (model version %u, %u registered clients)", s->round,
	         s->version, s->n_clients);
	/* Finished stays finished unless --rounds was raised (or the target
	 * accuracy lowered) since. */
	if (s->round >= s->cfg.rounds ||
	    (c->finished && s->cfg.target_accuracy > 0 && s->accuracy >= s->cfg.target_accuracy))
		finish(s);
	return SHOAL_OK;
bad:
	log_error("checkpoint refused: %s", why);
	return SHOAL_EINVAL;
}
