/* core.c - the client protocol core (see core.h): register, check in, train
 * when selected, upload the delta, back off on failures.
 *
 * States: HELLO -> CHECKIN <-> (TRAIN -> UPLOAD | SECAGG) ... -> DONE. In a
 * secure round (TASK "sa") SECAGG runs the five phases of privacy/secagg.h,
 * one SA request per phase, each answered when the phase closes. The request of
 * the current state is encoded once and re-sent unchanged after a transport
 * failure, so a retried UPDATE is byte-identical to the first attempt. */
#include "core.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/codec.h"
#include "common/log.h"
#include "common/msg.h"
#include "privacy/ddg.h"
#include "privacy/ident.h"
#include "privacy/noise.h"
#include "privacy/rng.h"
#include "privacy/secagg.h"

enum state { ST_HELLO, ST_CHECKIN, ST_TRAIN, ST_UPLOAD, ST_SECAGG, ST_DONE };

struct cli_core {
	cli_config cfg;
	char name[MSG_NAME_MAX + 1];
	char model[MSG_MODEL_MAX + 1];
	enum state state;
	uint32_t id;
	uint32_t hold_ms;
	uint64_t wake;      /* send nothing before this time */
	uint32_t backoff;   /* current backoff in ms, 0 when healthy */
	uint32_t rate_backoff; /* backoff while the server answers ERATE, 0: none */
	bool unreachable;   /* logged "not answering" already */
	float *global;      /* last global model (dim) */
	float *work;        /* local model during TRAIN, then the delta */
	bool have_global;
	uint32_t held_ver;  /* version of global, 0: none */
	bool compress;      /* the current task asks for encoding "up" */
	cx_config up;
	float *residual;    /* error feedback, dim; allocated on first use */
	rng noise;          /* stochastic rounding and rand-k */
	rng dpnoise;        /* distributed DP: rounding and noise (secret) */
	uint32_t round, epochs, batch, deadline;
	float lr, momentum, weight_decay, prox_mu;
	float clip;         /* DP: L2 bound of what is sent (TASK "clip"), 0: none */
	uint32_t budget_ms; /* TASK "budget": local time budget, 0: none */
	uint32_t ref_steps; /* TASK "nsteps": S of the FedNova scaling */
	uint32_t tau;       /* steps done, sent as "tau" (budgeted rounds) */
	uint64_t seed;
	/* secure aggregation: the round's parameters, the session, the
	 * encoded input, and what was sent of the shared coordinates (added
	 * back to the residual if the round aborts) */
	bool secure;
	sa_task sat;
	sa_client *sac;
	uint32_t *sa_x;
	float *sa_sent;
	uint32_t sa_phase;  /* phase of the SA request in flight */
	bool sa_restore;    /* leaving now: the sum will not hold my input */
	uint8_t *req;       /* encoded request of the current state */
	size_t req_len;
	shoal_err done_err;
	rng jitter;
	cli_stats stats;
	/* client identity (PROTOCOL.md section 16) */
	uint8_t *idsk;      /* Ed25519 secret key, sodium_malloc'd; NULL: none */
	char token[MSG_TOKEN_MAX + 1]; /* enrollment token for HELLO, "" if none */
	uint8_t nonce[MSG_NONCE_BYTES]; /* from the server's last reply */
	bool have_nonce;
	uint32_t nonce_gen;  /* nonces received */
	bool req_signed;     /* req ends with "nonce" and "sig" */
	uint32_t req_gen;    /* the nonce_gen req was signed over */
	uint32_t nonce_retries; /* ENONCE answers in a row */
};

static void
drop_request(cli_core *c)
{
	free(c->req);
	c->req = NULL;
	c->req_len = 0;
	c->req_signed = false;
}

/* Ends a secure round on this side: forget the session and its input. */
static void
sa_end(cli_core *c, bool restore)
{
	if (restore && c->residual != NULL && c->sa_sent != NULL)
		for (uint32_t q = 0; q < c->sat.n_idx; q++) /* the sum never used it */
			c->residual[c->sat.idx[q]] += c->sa_sent[q];
	sa_client_free(c->sac);
	c->sac = NULL;
	if (c->sa_x != NULL)
		memset(c->sa_x, 0, (size_t)c->sat.c.d * sizeof *c->sa_x);
	free(c->sa_x);
	c->sa_x = NULL;
	free(c->sa_sent);
	c->sa_sent = NULL;
	sa_task_fini(&c->sat);
	c->secure = false;
}

static void
set_state(cli_core *c, enum state s)
{
	if (c->state != s)
		drop_request(c);
	if (c->state == ST_SECAGG && s != ST_SECAGG)
		sa_end(c, c->sa_restore);
	c->state = s;
}

static void
fail(cli_core *c, shoal_err e)
{
	set_state(c, ST_DONE);
	c->done_err = e;
}

static void
healthy(cli_core *c)
{
	if (c->unreachable)
		log_info("client %s: server answering again", c->name);
	c->backoff = 0;
	c->unreachable = false;
}

static void
back_off(cli_core *c, uint64_t now)
{
	uint32_t b = c->backoff ? 2 * c->backoff : c->cfg.backoff_min_ms;
	if (b > c->cfg.backoff_max_ms)
		b = c->cfg.backoff_max_ms;
	c->backoff = b;
	/* Jitter in [b/2, b] so a fleet does not retry in lockstep. */
	c->wake = now + b / 2 + rng_below(&c->jitter, b / 2 + 1);
}

shoal_err
cli_core_new(const cli_config *cfg, cli_core **out)
{
	cli_core *c;
	size_t nl = cfg->name ? strlen(cfg->name) : 0;
	size_t ml = cfg->model ? strlen(cfg->model) : 0;

	*out = NULL;
	if (nl == 0 || nl > MSG_NAME_MAX) {
		log_error("client name must be 1..%u characters", MSG_NAME_MAX);
		return SHOAL_EINVAL;
	}
	for (size_t i = 0; i < nl; i++)
		if (cfg->name[i] < 0x20 || cfg->name[i] > 0x7e) {
			log_error("client name must be printable ASCII");
			return SHOAL_EINVAL;
		}
	if (ml == 0 || ml > MSG_MODEL_MAX || cfg->dim == 0 || cfg->dim > MSG_DIM_MAX) {
		log_error("client needs a model name (1..%u chars) and 1..%u parameters",
		          MSG_MODEL_MAX, MSG_DIM_MAX);
		return SHOAL_EINVAL;
	}
	size_t tl = cfg->enroll_token != NULL ? strlen(cfg->enroll_token) : 0;
	if (tl > MSG_TOKEN_MAX) {
		log_error("enrollment token must be 1..%u characters", MSG_TOKEN_MAX);
		return SHOAL_EINVAL;
	}
	for (size_t i = 0; i < tl; i++)
		if (cfg->enroll_token[i] < 0x20 || cfg->enroll_token[i] > 0x7e) {
			log_error("enrollment token must be printable ASCII");
			return SHOAL_EINVAL;
		}
	if ((c = calloc(1, sizeof *c)) == NULL)
		return SHOAL_ENOMEM;
	c->cfg = *cfg;
	c->cfg.identity_sk = NULL; /* the caller's memory */
	c->cfg.enroll_token = NULL;
	if (tl > 0)
		memcpy(c->token, cfg->enroll_token, tl);
	if (cfg->identity_sk != NULL) {
		if (sodium_init() < 0 || (c->idsk = sodium_malloc(ID_SK_BYTES)) == NULL) {
			cli_core_free(c);
			return SHOAL_ENOMEM;
		}
		memcpy(c->idsk, cfg->identity_sk, ID_SK_BYTES);
	}
	memcpy(c->name, cfg->name, nl);
	memcpy(c->model, cfg->model, ml);
	c->cfg.name = c->name;
	c->cfg.model = c->model;
	if (c->cfg.backoff_min_ms == 0)
		c->cfg.backoff_min_ms = 100;
	if (c->cfg.backoff_max_ms < c->cfg.backoff_min_ms)
		c->cfg.backoff_max_ms = c->cfg.backoff_min_ms < 5000 ? 5000 : c->cfg.backoff_min_ms;
	uint64_t h = 1469598103934665603ull; /* FNV-1a of the name: jitter stream */
	for (size_t i = 0; i < nl; i++)
		h = (h ^ (uint8_t)c->name[i]) * 1099511628211ull;
	rng_init(&c->jitter, cfg->seed, h);
	rng_init(&c->noise, cfg->seed, h ^ 0x636f646563ull); /* "codec" stream */
	rng_init(&c->dpnoise, cfg->seed, h ^ 0x64706e6f697365ull); /* "dpnoise" */
	if (!cfg->dp_noise_from_seed) {
		if (sodium_init() < 0) {
			cli_core_free(c);
			return SHOAL_ENOMEM;
		}
		randombytes_buf(c->dpnoise.key, sizeof c->dpnoise.key);
	}
	c->state = ST_HELLO;
	*out = c;
	return SHOAL_OK;
}

void
cli_core_free(cli_core *c)
{
	if (c == NULL)
		return;
	drop_request(c);
	sa_end(c, false);
	rng_fini(&c->jitter);
	rng_fini(&c->noise);
	rng_fini(&c->dpnoise);
	if (c->idsk != NULL)
		sodium_free(c->idsk); /* wipes */
	sodium_memzero(c->token, sizeof c->token);
	free(c->residual);
	free(c->global);
	free(c->work);
	free(c);
}

/* Client identity: sign the current request over the server's last
 * nonce (PROTOCOL.md section 16.4). A request signed before (over an older
 * nonce) gets the new nonce patched in and a new signature; an unsigned
 * one gets "nonce" and "sig" appended as its last two keys and its map
 * count raised by two (msg_encode writes every request here as a fixmap
 * of at most 13 keys). Requests leave unsigned without a key, or before
 * the server sent a nonce (a server without identity sends none). */
static shoal_err
sign_request(cli_core *c)
{
	static const uint8_t nonce_head[8] = {0xa5, 'n', 'o', 'n', 'c', 'e', 0xc4, MSG_NONCE_BYTES};
	static const uint8_t sig_head[6] = {0xa3, 's', 'i', 'g', 0xc4, MSG_SIG_BYTES};
	const size_t tail = sizeof nonce_head + MSG_NONCE_BYTES + sizeof sig_head + MSG_SIG_BYTES;

	if (c->idsk == NULL || !c->have_nonce || c->req == NULL)
		return SHOAL_OK;
	size_t len = c->req_len;
	uint8_t *p = c->req;
	if (!c->req_signed) {
		if ((p[0] & 0xf0) != 0x80 || (p[0] & 0x0f) > 13)
			return SHOAL_EINVAL; /* not written by msg_encode */
		if ((p = realloc(c->req, len + tail)) == NULL)
			return SHOAL_ENOMEM;
		p[0] += 2;
		memcpy(p + len, nonce_head, sizeof nonce_head);
		memcpy(p + len + sizeof nonce_head + MSG_NONCE_BYTES, sig_head, sizeof sig_head);
		len += tail;
		c->req = p;
		c->req_len = len;
	}
	memcpy(p + len - tail + sizeof nonce_head, c->nonce, MSG_NONCE_BYTES);
	shoal_err e = id_sign(c->idsk, p, len);
	c->req_signed = e == SHOAL_OK;
	c->req_gen = c->nonce_gen;
	return e;
}

static shoal_err
encode_request(cli_core *c)
{
	msg m = {0};
	shoal_err e;

	switch (c->state) {
	case ST_HELLO:
		m.type = MSG_HELLO;
		memcpy(m.name, c->name, sizeof m.name);
		memcpy(m.model, c->model, sizeof m.model);
		m.dim = c->cfg.dim;
		m.n_examples = c->cfg.n_examples;
		m.cx_caps = c->cfg.cx_caps;
		if (c->idsk != NULL) {
			id_pk_of(c->idsk, m.pk);
			m.has_pk = true;
			memcpy(m.token, c->token, sizeof m.token);
		}
		break;
	case ST_CHECKIN:
		m.type = MSG_CHECKIN;
		m.client_id = c->id;
		m.model_ver = c->held_ver;
		break;
	default:
		return SHOAL_ESTATE; /* UPDATE is encoded by cli_core_submit */
	}
	if ((e = msg_encode(&m, &c->req, &c->req_len)) == SHOAL_OK &&
	    (e = sign_request(c)) != SHOAL_OK)
		drop_request(c);
	return e;
}

void
cli_core_step(cli_core *c, uint64_t now, cli_step *out)
{
	memset(out, 0, sizeof *out);
	if (c->state == ST_DONE) {
		out->action = CLI_DONE;
		out->err = c->done_err;
		return;
	}
	if (c->state == ST_TRAIN) {
		out->action = CLI_TRAIN;
		out->params = c->work;
		out->dim = c->cfg.dim;
		out->round = c->round;
		out->epochs = c->epochs;
		out->batch = c->batch;
		out->lr = c->lr;
		out->momentum = c->momentum;
		out->weight_decay = c->weight_decay;
		out->prox_mu = c->prox_mu;
		out->budget_ms = c->budget_ms;
		out->seed = c->seed;
		out->deadline_ms = c->deadline;
		return;
	}
	if (now < c->wake) {
		out->action = CLI_SLEEP;
		out->until_ms = c->wake;
		return;
	}
	if (c->req == NULL) {
		shoal_err e = encode_request(c);
		if (e != SHOAL_OK) {
			log_error("client %s: cannot encode request: %s", c->name, shoal_strerror(e));
			fail(c, e);
			out->action = CLI_DONE;
			out->err = e;
			return;
		}
	} else if (c->idsk != NULL && c->have_nonce &&
	           (!c->req_signed || c->req_gen != c->nonce_gen) && sign_request(c) != SHOAL_OK) {
		/* A request sent again after a reply (a WAIT, an error) goes over
		 * the nonce that reply brought; after a transport failure it is
		 * resent unchanged (no reply, no new nonce). */
		log_error("client %s: cannot sign the request", c->name);
		fail(c, SHOAL_ENOMEM);
		out->action = CLI_DONE;
		out->err = SHOAL_ENOMEM;
		return;
	}
	out->action = CLI_SEND;
	out->buf = c->req;
	out->len = c->req_len;
}

void
cli_core_on_transport_error(cli_core *c, shoal_err err, uint64_t now)
{
	c->stats.transport_errors++;
	if (!c->unreachable)
		log_info("client %s: server not answering (%s); retrying with backoff", c->name,
		         shoal_strerror(err));
	c->unreachable = true;
	back_off(c, now);
}

static void
on_task(cli_core *c, const msg *m, uint64_t now)
{
	if (strcmp(m->model, c->model) != 0 || (m->vec != NULL && m->dim != c->cfg.dim)) {
		log_error("client %s: server sent a task for model %s with %u parameters; this "
		          "client has %s with %u",
		          c->name, m->model, m->dim, c->model, c->cfg.dim);
		fail(c, SHOAL_EMODEL);
		return;
	}
	c->compress = false;
	sa_end(c, false);
	/* The model buffers exist from the first task on, and again after
	 * cli_core_release. */
	if ((c->global == NULL && (c->global = malloc((size_t)c->cfg.dim * sizeof(float))) == NULL) ||
	    (c->work == NULL && (c->work = malloc((size_t)c->cfg.dim * sizeof(float))) == NULL)) {
		log_error("client %s: no memory for the model (%u parameters); skipping round %u",
		          c->name, c->cfg.dim, m->round);
		drop_request(c);
		return;
	}
	if (m->has_sa) {
		shoal_err e = SHOAL_ESTATE;
		if (!(c->cfg.cx_caps & MSG_CX_SECAGG) ||
		    (e = sa_task_read(&c->sat, m->sa, m->sa_len, c->cfg.dim)) != SHOAL_OK) {
			log_warn("client %s: cannot take part in secure round %u (%s); skipping it",
			         c->name, m->round, shoal_strerror(e));
			sa_task_fini(&c->sat);
			drop_request(c);
			return;
		}
		if (c->sat.c.signed_keys && c->idsk == NULL) {
			log_warn("client %s: secure round %u needs an identity key to sign with, and "
			         "this client has none; skipping it", c->name, m->round);
			sa_task_fini(&c->sat);
			drop_request(c);
			return;
		}
		if (c->sat.c.round != m->round) {
			log_warn("client %s: secure round parameters are for round %u, the task for %u; "
			         "skipping it", c->name, c->sat.c.round, m->round);
			sa_task_fini(&c->sat);
			drop_request(c);
			return;
		}
		c->secure = true;
	} else if (m->up[0] != '\0') {
		bool none;
		if (cx_parse_spec(m->up, &c->up, &none) != SHOAL_OK ||
		    (cx_required_caps(&c->up) & ~c->cfg.cx_caps) != 0) {
			log_warn("client %s: server asks for update encoding '%s', which this client "
			         "does not handle; skipping round %u", c->name, m->up, m->round);
			drop_request(c);
			return;
		}
		c->compress = !none;
	}
	if (m->vec != NULL) {
		msg_vec_to_host(c->global, m->vec, c->cfg.dim);
	} else if (m->base != c->held_ver || !c->have_global ||
	           cx_decode_add(m->blob, m->blob_len, c->cfg.dim, c->global, NULL) < 0) {
		/* Not the version the delta applies to, or a bad delta: ask for the
		 * full model by checking in as a client that holds none. */
		log_warn("client %s: cannot apply the model delta of round %u (base %u, held %u); "
		         "asking for the full model", c->name, m->round, m->base, c->held_ver);
		c->held_ver = 0;
		c->have_global = false;
		drop_request(c); /* the next CHECKIN says "ver 0" */
		return;
	}
	memcpy(c->work, c->global, (size_t)c->cfg.dim * sizeof(float));
	c->have_global = true;
	c->held_ver = m->model_ver;
	c->round = m->round;
	c->epochs = m->epochs;
	c->batch = m->batch;
	c->lr = m->lr;
	c->momentum = m->momentum;
	c->weight_decay = m->weight_decay;
	c->prox_mu = m->prox_mu;
	c->clip = m->clip;
	/* A budget alone: do fewer steps and report them (FedAvg weighting);
	 * with S ("nsteps") also normalize (FedNova). S without a budget is
	 * ignored. */
	c->budget_ms = m->budget_ms;
	c->ref_steps = m->budget_ms > 0 ? m->ref_steps : 0;
	c->seed = m->seed;
	c->deadline = m->deadline_ms;
	set_state(c, ST_TRAIN);
}

static void
on_error(cli_core *c, const msg *m, uint64_t now)
{
	shoal_err code = m->code;

	if (code == SHOAL_ERATE) {
		/* The server did not look at the request: the same one again
		 * after a backoff that grows while it keeps refusing. */
		c->backoff = c->rate_backoff;
		back_off(c, now);
		c->rate_backoff = c->backoff;
		if (c->backoff == c->cfg.backoff_min_ms)
			log_info("client %s: server says too many requests (rate limit); backing off",
			         c->name);
		return;
	}
	switch (code) {
	case SHOAL_ENONCE:
		/* A first request (nothing to sign over yet), or one whose nonce
		 * the server no longer holds (a resent request): the reply's
		 * nonce signs it again; nothing else about it changes. Should
		 * that keep happening (someone else spends our nonces), back off
		 * between tries. */
		if (c->idsk != NULL && m->has_nonce && c->req != NULL && sign_request(c) == SHOAL_OK) {
			if (++c->nonce_retries <= 3)
				c->wake = now;
			else
				back_off(c, now);
			return;
		}
		break;
	case SHOAL_EUNLISTED:
	case SHOAL_ETOKEN:
	case SHOAL_EIDENTITY:
		log_error("client %s: server refused this client's identity: %s", c->name, m->text);
		fail(c, code);
		return;
	case SHOAL_EBADSIG:
		if (c->state == ST_HELLO || c->idsk == NULL) {
			log_error("client %s: server refused this client's signature: %s", c->name,
			          m->text);
			fail(c, code);
			return;
		}
		/* The id may belong to another client now (the server restarted
		 * without its state): register again. */
		log_warn("client %s: server refused the signature of a request; registering again",
		         c->name);
		if (c->state == ST_UPLOAD)
			c->stats.updates_late++;
		set_state(c, ST_HELLO);
		back_off(c, now);
		return;
	default:
		break;
	}
	if (c->state == ST_SECAGG && code != SHOAL_EUNKNOWN && code != SHOAL_EMODEL &&
	    code != SHOAL_ECAPS && code != SHOAL_ENONCE) {
		/* Whether the sum will hold my input: not if the round aborted; not
		 * if the server refused my masked input; yes if my input was
		 * confirmed (U3) and I merely leave the later phases. A masked
		 * input resent after its phase closed (ESTATE/EDUP) was counted. */
		if (code == SHOAL_EABORTED)
			c->sa_restore = true;
		else if (c->sa_phase == SA_PH_MASKED)
			c->sa_restore = code != SHOAL_ESTATE && code != SHOAL_EDUP;
		if (code == SHOAL_EABORTED)
			log_info("client %s: secure round %u aborted by the server: %s", c->name, c->round,
			         m->text);
		else
			log_warn("client %s: secure round %u refused this client in phase %u: %s", c->name,
			         c->round, c->sa_phase, m->text);
		if (c->sa_phase <= SA_PH_MASKED)
			c->stats.updates_late++;
		set_state(c, ST_CHECKIN);
		return;
	}
	switch (code) {
	case SHOAL_EUNKNOWN:
		/* The server does not know us (it restarted): register again. An
		 * update in flight is lost; its round is gone too. */
		if (c->state == ST_UPLOAD)
			c->stats.updates_late++;
		log_info("client %s: server does not know this client; registering again", c->name);
		set_state(c, ST_HELLO);
		return;
	case SHOAL_EDUP:
		if (c->state == ST_UPLOAD) { /* the first copy arrived; its reply was lost */
			c->stats.updates_acked++;
			c->stats.last_round = c->round;
			set_state(c, ST_CHECKIN);
			return;
		}
		break;
	case SHOAL_ESTALE:
	case SHOAL_ENOTSELECTED:
		if (c->state == ST_UPLOAD) {
			c->stats.updates_late++;
			log_warn("client %s: update for round %u refused: %s", c->name, c->round, m->text);
			set_state(c, ST_CHECKIN);
			return;
		}
		break;
	case SHOAL_EMODEL:
	case SHOAL_EDIM:
	case SHOAL_ECAPS:
		log_error("client %s: server refused this client: %s", c->name, m->text);
		fail(c, code);
		return;
	default:
		break;
	}
	log_warn("client %s: server error %d (%s): %s", c->name, code, shoal_strerror(code),
	         m->text);
	if (c->state == ST_UPLOAD) /* the server will never take this update */
		set_state(c, ST_CHECKIN);
	back_off(c, now);
}

static void on_sa_reply(cli_core *c, const msg *m, uint64_t now);

void
cli_core_on_reply(cli_core *c, const uint8_t *buf, size_t len, uint64_t now)
{
	msg m;
	long used = msg_decode(buf, len, &m);

	if (used < 0 || (size_t)used != len) {
		log_warn("client %s: malformed reply (%s)", c->name,
		         shoal_strerror(used < 0 ? (shoal_err)used : SHOAL_EMALFORMED));
		back_off(c, now);
		return;
	}
	healthy(c);
	if (m.has_nonce) { /* the one the next request is signed over */
		memcpy(c->nonce, m.nonce, sizeof c->nonce);
		c->have_nonce = true;
		c->nonce_gen++;
	}
	if (m.type != MSG_ERROR || m.code != SHOAL_ENONCE)
		c->nonce_retries = 0;
	if (m.type != MSG_ERROR || m.code != SHOAL_ERATE)
		c->rate_backoff = 0;
	switch (m.type) {
	case MSG_WELCOME:
		if (c->state != ST_HELLO)
			break;
		c->id = m.client_id;
		c->hold_ms = m.hold_ms;
		set_state(c, ST_CHECKIN);
		return;
	case MSG_WAIT:
		if (c->state != ST_CHECKIN)
			break;
		c->wake = now + m.retry_ms;
		return;
	case MSG_TASK:
		if (c->state != ST_CHECKIN)
			break;
		on_task(c, &m, now);
		return;
	case MSG_SA_REPLY:
		if (c->state != ST_SECAGG || m.round != c->round || m.phase != c->sa_phase)
			break;
		on_sa_reply(c, &m, now);
		return;
	case MSG_ACK:
		if (c->state == ST_SECAGG && m.round == c->round && c->sa_phase == SA_PH_UNMASK) {
			c->stats.updates_acked++;
			c->stats.last_round = c->round;
			set_state(c, ST_CHECKIN);
			return;
		}
		if (c->state != ST_UPLOAD || m.round != c->round)
			break;
		c->stats.updates_acked++;
		c->stats.last_round = c->round;
		set_state(c, ST_CHECKIN);
		return;
	case MSG_DONE:
		log_info("client %s: server finished training (round %u)", c->name, m.round);
		set_state(c, ST_DONE);
		c->done_err = SHOAL_OK;
		return;
	case MSG_ERROR:
		on_error(c, &m, now);
		return;
	default:
		break;
	}
	log_warn("client %s: unexpected %s reply; retrying", c->name, msg_type_name(m.type));
	back_off(c, now);
}

static uint64_t
noise_u64(void *ctx)
{
	return rng_u64(ctx);
}

/* Encode the delta in c->work as the task asked ("up"), through the
 * error-feedback residual when that is on. */
static shoal_err
encode_update(cli_core *c, uint8_t **out, size_t *len)
{
	uint32_t dim = c->cfg.dim, k = cx_k_for_ratio(dim, c->up.ratio);
	size_t cap = cx_encoded_size_max(dim, k, &c->up);
	float *residual = c->residual;
	cx_work w = {0};
	shoal_err e;
	long n;

	if (cap == 0)
		return SHOAL_EINVAL;
	/* Rand-k is unbiased (kept values are rescaled by 1/p): its "residual"
	 * is not a contraction and feeding it back diverges, so error feedback
	 * applies to the biased encodings (top-k) only. */
	bool ef = c->cfg.error_feedback && c->up.select != CX_SELECT_RANDK;
	if (!ef)
		residual = NULL;
	if (residual == NULL && ef) {
		if ((c->residual = calloc(dim, sizeof *c->residual)) == NULL)
			return SHOAL_ENOMEM;
		residual = c->residual;
	}
	if ((*out = malloc(cap)) == NULL ||
	    (e = cx_work_init(&w, (uint32_t)cx_work_entries(dim, &c->up))) != SHOAL_OK) {
		e = SHOAL_ENOMEM;
		goto done;
	}
	n = cx_encode_ef(&c->up, c->work, residual, dim, noise_u64, &c->noise, &w, *out, cap);
	e = n < 0 ? (shoal_err)n : SHOAL_OK;
	*len = n < 0 ? 0 : (size_t)n;
done:
	cx_work_fini(&w);
	if (e != SHOAL_OK) {
		free(*out);
		*out = NULL;
	}
	return e;
}

/* DP (TASK "clip", PROTOCOL.md section 14): clip the delta to L2 <= clip
 * (DESIGN.md section 3). When top-k error feedback will add the residual,
 * fold it in first and clip the sum, so that what is sent stays within the
 * bound (up to stochastic rounding, which the server trims); the part of
 * the residual beyond the bound is dropped, never sent later. */
static void
clip_update(cli_core *c)
{
	uint32_t dim = c->cfg.dim;

	(void)dp_clip_l2(c->work, dim, c->clip); /* finite: checked by the caller */
	if (c->secure || !c->compress || !c->cfg.error_feedback || c->residual == NULL ||
	    c->up.select == CX_SELECT_RANDK)
		return;
	for (uint32_t j = 0; j < dim; j++) {
		c->work[j] += c->residual[j];
		c->residual[j] = 0;
	}
	(void)dp_clip_l2(c->work, dim, c->clip);
}

/* Encodes and queues the SA request of phase ph with payload p. */
static shoal_err
sa_send(cli_core *c, uint32_t ph, uint8_t *p, size_t len, uint64_t now)
{
	msg m = {.type = MSG_SA, .client_id = c->id, .round = c->round, .phase = ph, .sa = p,
	         .sa_len = len, .has_sa = true, .tau = ph == SA_PH_MASKED ? c->tau : 0};
	drop_request(c);
	shoal_err e = msg_encode(&m, &c->req, &c->req_len);
	free(p);
	if (e == SHOAL_OK && (e = sign_request(c)) != SHOAL_OK)
		drop_request(c);
	if (e != SHOAL_OK)
		return e;
	c->sa_phase = ph;
	c->wake = now;
	return SHOAL_OK;
}

/* Time-budgeted local work (PROTOCOL.md section 17): tau, the steps done
 * (steps, 0: the full E * ceil(n / B)), goes out as "tau". Under FedNova
 * (S > 0) the delta of tau local steps becomes delta * S / tau, the
 * normalized update d / tau in units of S reference steps, so that its
 * magnitude stays that of a full-work delta for the clip, the quantizer
 * and the residual. It happens before clipping and before the residual is
 * added: the residual lives in the same normalized scale, being "input -
 * what was sent" of these normalized inputs. */
static void
normalize_update(cli_core *c, uint32_t n_examples, uint32_t steps)
{
	uint64_t full = (uint64_t)c->epochs * ((n_examples + (uint64_t)c->batch - 1) / c->batch);
	uint32_t tau = steps > 0 && steps < full ? steps
	                                         : (uint32_t)(full < UINT32_MAX ? full : UINT32_MAX);

	c->tau = tau;
	if (c->ref_steps == 0 || tau == c->ref_steps)
		return;
	float f = (float)((double)c->ref_steps / (double)tau);
	for (uint32_t j = 0; j < c->cfg.dim; j++)
		c->work[j] *= f;
}

/* Distributed DP (TASK "sa" flags bit 1, PROTOCOL.md section 14.2): the
 * values on the shared index set are clipped to the task's L2 bound, so
 * the sensitivity the accountant charges holds for exactly what is sent
 * (the delta was clipped to the same bound before the residual was added);
 * privacy/ddg.h rotates, rounds and adds this client's share of the noise.
 * The weight is 1. The residual keeps the coordinates outside the set;
 * what the clip cut off is dropped, as in central DP, and the rounding
 * error is not fed back (it is unbiased and far below the noise). */
static shoal_err
sa_encode_ddp(cli_core *c)
{
	const sa_task *t = &c->sat;
	const float *x = c->work;
	float *v = c->sa_sent, *scratch;
	uint8_t seed[DP_DDG_SEED_BYTES];
	dp_ddg_enc p = {.n_idx = t->n_idx, .dim = t->c.d - 1, .clip = t->clip, .gamma = t->scale,
	                .l2max2 = t->l2max2, .s2_num = t->s2_num, .s2_den = t->s2_den};
	shoal_err e;

	for (uint32_t q = 0; q < t->n_idx; q++)
		v[q] = x[t->idx[q]];
	e = SHOAL_ENONFINITE;
	if (!isnan(dp_clip_l2(v, t->n_idx, t->clip))) {
		e = SHOAL_ENOMEM;
		if ((scratch = malloc((size_t)p.dim * sizeof *scratch)) != NULL) {
			dp_ddg_rotation_seed(t->c.session, seed);
			e = dp_ddg_encode(&p, v, seed, t->c.m, &c->dpnoise, scratch, c->sa_x);
			free(scratch);
		}
	}
	if (e != SHOAL_OK) {
		/* The residual is untouched: leaving restores nothing. */
		memset(v, 0, (size_t)t->n_idx * sizeof *v);
		return e;
	}
	c->sa_x[p.dim] = 1;
	if (c->cfg.error_feedback) {
		memcpy(c->residual, x, (size_t)c->cfg.dim * sizeof *x);
		for (uint32_t q = 0; q < t->n_idx; q++)
			c->residual[t->idx[q]] = 0;
	}
	return SHOAL_OK;
}

/* The secure path of cli_core_submit: x = delta + residual; each shared
 * coordinate is clipped to [-scale, scale] and stochastically rounded to
 * levels steps; the rest stays in the residual. The ring input is
 * w * q per coordinate, and w, with w = min(n_examples, wmax). */
static shoal_err
sa_submit(cli_core *c, uint32_t n_examples, uint64_t now)
{
	const sa_task *t = &c->sat;
	uint32_t dim = c->cfg.dim;
	float *x = c->work;
	shoal_err e;

	c->sa_phase = 0;
	c->sa_restore = true; /* until the input is confirmed in U3 */
	if (c->cfg.error_feedback) {
		if (c->residual == NULL && (c->residual = calloc(dim, sizeof *c->residual)) == NULL)
			return SHOAL_ENOMEM;
		for (uint32_t j = 0; j < dim; j++)
			x[j] += c->residual[j];
	}
	if ((c->sa_x = malloc((size_t)t->c.d * sizeof *c->sa_x)) == NULL ||
	    (c->sa_sent = malloc(((size_t)t->n_idx + 1) * sizeof *c->sa_sent)) == NULL)
		return SHOAL_ENOMEM;
	if (t->c.ddp) {
		if ((e = sa_encode_ddp(c)) != SHOAL_OK)
			return e;
		goto advertise;
	}
	uint32_t mask = t->c.m == 32 ? 0xffffffffu : (1u << t->c.m) - 1;
	int64_t w = n_examples < t->wmax ? n_examples : t->wmax;
	double to_q = t->levels / (double)t->scale, from_q = (double)t->scale / t->levels;
	for (uint32_t q = 0; q < t->n_idx; q++) {
		double v = (double)x[t->idx[q]] * to_q;
		v = v > t->levels ? t->levels : v < -(double)t->levels ? -(double)t->levels : v;
		double u = (double)(rng_u64(&c->noise) >> 11) * 0x1p-53;
		int64_t qv = (int64_t)floor(v + u);
		if (qv > (int64_t)t->levels)
			qv = t->levels;
		c->sa_sent[q] = (float)(qv * from_q);
		c->sa_x[q] = (uint32_t)(uint64_t)(w * qv) & mask; /* two's complement mod 2^m */
	}
	c->sa_x[t->n_idx] = (uint32_t)w & mask;
	if (c->cfg.error_feedback) {
		memcpy(c->residual, x, (size_t)dim * sizeof *x);
		for (uint32_t q = 0; q < t->n_idx; q++)
			c->residual[t->idx[q]] -= c->sa_sent[q];
	}
advertise:;
	uint8_t *p;
	size_t len;
	if ((e = sa_client_new(&t->c, t->me, t->c.signed_keys ? c->idsk : NULL, NULL, &c->sac)) !=
	        SHOAL_OK ||
	    (e = sa_client_advertise(c->sac, &p, &len)) != SHOAL_OK)
		return e;
	c->state = ST_SECAGG; /* keep sa state: not set_state */
	return sa_send(c, SA_PH_ADVERTISE, p, len, now);
}

/* The server closed phase m->phase: feed its output to the session and
 * send the next phase's message. */
static void
on_sa_reply(cli_core *c, const msg *m, uint64_t now)
{
	uint8_t *p = NULL;
	size_t len = 0;
	shoal_err e;

	if (m->phase == SA_PH_MASKED)
		c->sa_restore = false; /* U3 lists me: my input is in the sum */
	switch (m->phase) {
	case SA_PH_ADVERTISE: e = sa_client_share(c->sac, m->sa, m->sa_len, &p, &len); break;
	case SA_PH_SHARE: e = sa_client_mask(c->sac, m->sa, m->sa_len, c->sa_x, &p, &len); break;
	case SA_PH_MASKED: e = sa_client_consistency(c->sac, m->sa, m->sa_len, &p, &len); break;
	case SA_PH_CONSISTENCY: e = sa_client_unmask(c->sac, m->sa, m->sa_len, &p, &len); break;
	default: e = SHOAL_EMALFORMED; break;
	}
	if (e == SHOAL_OK)
		e = sa_send(c, m->phase + 1, p, len, now);
	if (e != SHOAL_OK) {
		log_warn("client %s: leaving secure round %u in phase %u: %s", c->name, c->round,
		         m->phase + 1, shoal_strerror(e));
		set_state(c, ST_CHECKIN);
	}
}

shoal_err
cli_core_submit(cli_core *c, uint32_t n_examples, float loss, uint64_t now)
{
	return cli_core_submit_steps(c, n_examples, 0, loss, now);
}

shoal_err
cli_core_submit_steps(cli_core *c, uint32_t n_examples, uint32_t steps, float loss,
                      uint64_t now)
{
	size_t dim = c->cfg.dim;
	shoal_err e;

	if (c->state != ST_TRAIN)
		return SHOAL_ESTATE;
	if (n_examples == 0)
		return SHOAL_EINVAL;
	c->tau = 0;
	for (size_t j = 0; j < dim; j++) {
		c->work[j] -= c->global[j];
		if (!isfinite(c->work[j])) {
			log_error("client %s: local training produced NaN/Inf; skipping round %u "
			          "(lower the learning rate?)",
			          c->name, c->round);
			set_state(c, ST_CHECKIN);
			return SHOAL_ENONFINITE;
		}
	}
	if (c->budget_ms > 0)
		normalize_update(c, n_examples, steps);
	if (c->clip > 0)
		clip_update(c);
	if (c->secure) {
		if ((e = sa_submit(c, n_examples, now)) != SHOAL_OK) {
			log_error("client %s: cannot start secure round %u: %s", c->name, c->round,
			          shoal_strerror(e));
			c->state = ST_SECAGG;
			set_state(c, ST_CHECKIN);
			return e;
		}
		c->stats.rounds_trained++;
		return SHOAL_OK;
	}
	msg m = {
	    .type = MSG_UPDATE,
	    .client_id = c->id,
	    .round = c->round,
	    .n_examples = n_examples,
	    .loss = isfinite(loss) ? loss : 0.0f,
	    .tau = c->tau,
	};
	uint8_t *enc = NULL;
	if (c->compress) {
		if ((e = encode_update(c, &enc, &m.blob_len)) != SHOAL_OK) {
			log_error("client %s: cannot encode the update of round %u: %s", c->name,
			          c->round, shoal_strerror(e));
			set_state(c, ST_CHECKIN);
			return e;
		}
		m.blob = enc;
	} else {
		m.dim = (uint32_t)dim;
		m.vec = (const uint8_t *)c->work;
	}
	drop_request(c);
	e = msg_encode(&m, &c->req, &c->req_len);
	free(enc);
	if (e == SHOAL_OK && (e = sign_request(c)) != SHOAL_OK)
		drop_request(c);
	if (e != SHOAL_OK) {
		set_state(c, ST_CHECKIN);
		return e;
	}
	c->state = ST_UPLOAD;
	c->stats.rounds_trained++;
	c->wake = now;
	return SHOAL_OK;
}

void
cli_core_abort_train(cli_core *c, uint64_t now)
{
	if (c->state == ST_TRAIN)
		set_state(c, ST_CHECKIN);
	c->wake = now;
}

const cli_stats *cli_core_stats(const cli_core *c) { return &c->stats; }
const float *cli_core_global(const cli_core *c) { return c->have_global ? c->global : NULL; }
uint32_t cli_core_model_version(const cli_core *c) { return c->held_ver; }
const float *cli_core_residual(const cli_core *c) { return c->residual; }

bool
cli_core_idle(const cli_core *c)
{
	return (c->state == ST_HELLO || c->state == ST_CHECKIN) && !c->secure && c->sac == NULL;
}

void
cli_core_release(cli_core *c)
{
	if (!cli_core_idle(c))
		return;
	free(c->global);
	free(c->work);
	free(c->residual);
	c->global = c->work = c->residual = NULL;
	c->have_global = false; /* held_ver stays: see cli_core_restore_global */
}

bool
cli_core_suspend(const cli_core *c, cli_idle *out)
{
	if (!cli_core_idle(c) || c->global != NULL || c->work != NULL || c->residual != NULL ||
	    c->idsk != NULL || c->token[0] != '\0' || c->have_nonce || !c->cfg.dp_noise_from_seed)
		return false;
	*out = (cli_idle){.wake = c->wake, .id = c->id, .hold_ms = c->hold_ms,
	                  .backoff = c->backoff, .rate_backoff = c->rate_backoff,
	                  .held_ver = c->held_ver, .round = c->round, .stats = c->stats,
	                  .state = c->state == ST_CHECKIN, .unreachable = c->unreachable};
	rng_tell(&c->jitter, &out->rng_block[0], &out->rng_pos[0]);
	rng_tell(&c->noise, &out->rng_block[1], &out->rng_pos[1]);
	rng_tell(&c->dpnoise, &out->rng_block[2], &out->rng_pos[2]);
	return true;
}

shoal_err
cli_core_resume(const cli_config *cfg, const cli_idle *in, cli_core **out)
{
	cli_core *c;
	shoal_err e;

	*out = NULL;
	if (!cfg->dp_noise_from_seed || cfg->identity_sk != NULL || cfg->enroll_token != NULL ||
	    in->state > 1)
		return SHOAL_EINVAL;
	if ((e = cli_core_new(cfg, &c)) != SHOAL_OK)
		return e;
	c->state = in->state ? ST_CHECKIN : ST_HELLO;
	c->wake = in->wake;
	c->id = in->id;
	c->hold_ms = in->hold_ms;
	c->backoff = in->backoff;
	c->rate_backoff = in->rate_backoff;
	c->held_ver = in->held_ver;
	c->round = in->round;
	c->stats = in->stats;
	c->unreachable = in->unreachable;
	rng_seek(&c->jitter, in->rng_block[0], in->rng_pos[0]);
	rng_seek(&c->noise, in->rng_block[1], in->rng_pos[1]);
	rng_seek(&c->dpnoise, in->rng_block[2], in->rng_pos[2]);
	*out = c;
	return SHOAL_OK;
}

shoal_err
cli_core_restore_global(cli_core *c, const float *global)
{
	if (c->held_ver == 0 || c->have_global)
		return SHOAL_ESTATE;
	if (c->global == NULL && (c->global = malloc((size_t)c->cfg.dim * sizeof(float))) == NULL)
		return SHOAL_ENOMEM;
	memcpy(c->global, global, (size_t)c->cfg.dim * sizeof(float));
	c->have_global = true;
	return SHOAL_OK;
}

shoal_err
cli_core_set_residual(cli_core *c, const float *residual)
{
	if (!c->cfg.error_feedback)
		return SHOAL_EINVAL;
	if (c->residual == NULL && (c->residual = malloc(c->cfg.dim * sizeof(float))) == NULL)
		return SHOAL_ENOMEM;
	memcpy(c->residual, residual, c->cfg.dim * sizeof(float));
	return SHOAL_OK;
}

uint32_t
cli_core_request_timeout_ms(const cli_core *c)
{
	if (c->state == ST_SECAGG) /* parked until the phase closes */
		return (c->sa_phase == SA_PH_ADVERTISE ? c->deadline : c->sat.phase_ms) + 10000;
	return (c->state == ST_HELLO ? 0 : c->hold_ms) + 10000;
}
