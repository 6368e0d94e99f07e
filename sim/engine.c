/* engine.c - the simulator's discrete-event loop over the real protocol
 * cores (sim/engine.h): a binary heap of timed events, the virtual
 * network's delays, availability and failures, and training on a pool of
 * threads with results handed back in client order. */
#include "sim/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/msg.h"
#include "ml/ml.h"
#include "sim/store.h"

enum { EV_WAKE = 1, EV_TO_SERVER, EV_TO_CLIENT, EV_TRAIN_DONE, EV_DROP, EV_TIMER };

typedef struct ev {
	uint64_t t, seq;
	uint32_t kind, client, gen, cause;
	uint8_t *buf;
	size_t len;
} ev;

typedef struct heap {
	ev *a;
	size_t n, cap;
	uint64_t seq;
} heap;

static bool
ev_less(const ev *x, const ev *y)
{
	return x->t < y->t || (x->t == y->t && x->seq < y->seq);
}

static shoal_err
heap_push(heap *h, ev e)
{
	size_t i;

	if (h->n == h->cap) {
		size_t cap = h->cap ? 2 * h->cap : 1024;
		ev *a = realloc(h->a, cap * sizeof *a);
		if (a == NULL)
			return SHOAL_ENOMEM;
		h->a = a;
		h->cap = cap;
	}
	e.seq = h->seq++;
	for (i = h->n++; i > 0 && ev_less(&e, &h->a[(i - 1) / 2]); i = (i - 1) / 2)
		h->a[i] = h->a[(i - 1) / 2];
	h->a[i] = e;
	return SHOAL_OK;
}

static ev
heap_pop(heap *h)
{
	ev top = h->a[0], last = h->a[--h->n];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && ev_less(&h->a[c + 1], &h->a[c]))
			c++;
		if (!ev_less(&h->a[c], &last))
			break;
		h->a[i] = h->a[c];
		i = c;
	}
	if (h->n > 0)
		h->a[i] = last;
	return top;
}

/* A training in progress: the step and, once trained, its outcome. */
typedef struct training {
	cli_step st;          /* the CLI_TRAIN step being trained */
	uint32_t n_out;
	float loss_out;
	int rc;
} training;

/* A client costs this, plus its core while it is in a round (or cannot be
 * suspended): between rounds the core is folded into idle. */
typedef struct client {
	cli_core *core;       /* NULL before its first event, and while suspended */
	training *tr;         /* while training */
	bool suspended;       /* idle holds its core */
	uint32_t gen;         /* bumped when the client drops: older events die */
	sim_avail av;
	bool training, ready, done;
	bool queued;          /* on the engine's list of trainings to run */
	uint32_t last_round;  /* round of its last training, and how many it */
	uint32_t attempts;    /* had before in that round (failure draws) */
	cli_idle idle;        /* the suspended core */
} client;

typedef struct engine {
	const sim_engine_config *cfg;
	sim_engine_stats *st;
	client *c;
	uint32_t *pend;       /* clients whose training started since the last
	                         batch (n_clients capacity), in start order */
	size_t n_pend;
	sim_store *store;     /* residuals of idle clients */
	float *scratch;       /* dim floats */
	struct {
		uint32_t ver;     /* 0: empty */
		float *params;
	} cache[2];           /* the newest model versions idle clients hold */
	heap h;
	uint64_t now, timer_at;
	uint32_t live;        /* clients not yet DONE */
	bool finished;
	shoal_err err;
	char name_buf[24];
} engine;

/* Delays in virtual ms, rounded up so that a positive delay stays one. */
static uint64_t
ms_after(double seconds)
{
	return seconds > 0.0 ? (uint64_t)ceil(seconds * 1e3) : 0;
}

static const sim_device *
dev_of(const engine *e, uint32_t i)
{
	return e->cfg->dev != NULL ? e->cfg->dev[i] : NULL;
}

static shoal_err
push(engine *e, uint64_t t, uint32_t kind, uint32_t i, uint8_t *buf, size_t len, uint32_t cause)
{
	ev x = {.t = t > e->now ? t : e->now, .kind = kind, .client = i, .gen = kind == EV_TIMER ? 0 : e->c[i].gen,
	        .cause = cause, .buf = buf, .len = len};
	shoal_err err = heap_push(&e->h, x);

	if (err != SHOAL_OK)
		free(buf);
	return err;
}

/* Whether client i is available now (always, without a device or when
 * availability is off). */
static bool
online(engine *e, uint32_t i)
{
	const sim_device *d = dev_of(e, i);

	return d == NULL || !e->cfg->availability ||
	       sim_avail_at(&e->c[i].av, d, e->cfg->seed, i, (double)e->now / 1e3);
}

/* Client i's configuration (its name in e->name_buf, or the caller's). */
static void
config_of(engine *e, uint32_t i, cli_config *cc)
{
	*cc = e->cfg->client;
	snprintf(e->name_buf, sizeof e->name_buf, "c%u", i);
	cc->name = e->name_buf;
	cc->seed = e->cfg->client.seed + i;
	cc->n_examples = e->cfg->n_examples[i];
	if (e->cfg->setup != NULL)
		e->cfg->setup(e->cfg->user, i, cc);
}

static shoal_err
new_core(engine *e, uint32_t i)
{
	cli_config cc;

	config_of(e, i, &cc);
	return cli_core_new(&cc, &e->c[i].core);
}

/* Creates a client's core at its first event, or unfolds a suspended
 * one, before it acts. */
static shoal_err
wake_core(engine *e, uint32_t i)
{
	cli_config cc;

	if (e->c[i].core != NULL)
		return SHOAL_OK;
	if (!e->c[i].suspended)
		return new_core(e, i); /* its first event */
	config_of(e, i, &cc);
	e->c[i].suspended = false;
	return cli_core_resume(&cc, &e->c[i].idle, &e->c[i].core);
}

/* Keeps one copy of the model of version ver (what an idle client holds)
 * among the two newest. */
static shoal_err
cache_global(engine *e, uint32_t ver, const float *g)
{
	int k = e->cache[0].ver <= e->cache[1].ver ? 0 : 1; /* the older slot */

	if (ver == 0 || ver == e->cache[0].ver || ver == e->cache[1].ver || ver < e->cache[k].ver)
		return SHOAL_OK;
	if (e->cache[k].params == NULL &&
	    (e->cache[k].params = malloc((size_t)e->cfg->client.dim * sizeof(float))) == NULL)
		return SHOAL_ENOMEM;
	memcpy(e->cache[k].params, g, (size_t)e->cfg->client.dim * sizeof(float));
	e->cache[k].ver = ver;
	return SHOAL_OK;
}

/* Client i's core is between rounds: keep its residual and its model
 * version's parameters aside, free its buffers, and fold it into a few
 * dozen bytes where it can be (cli_core_suspend). */
static shoal_err
park(engine *e, uint32_t i)
{
	client *c = &e->c[i];
	cli_core *core = c->core;
	const float *r, *g;
	shoal_err err = SHOAL_OK;

	if (e->cfg->keep_idle || !cli_core_idle(core))
		return SHOAL_OK;
	r = cli_core_residual(core);
	g = cli_core_global(core);
	if (r != NULL)
		err = sim_store_put(e->store, i, r);
	if (err == SHOAL_OK && g != NULL)
		err = cache_global(e, cli_core_model_version(core), g);
	if (err != SHOAL_OK)
		return err;
	cli_core_release(core);
	if (cli_core_suspend(core, &c->idle)) {
		cli_core_free(core);
		c->core = NULL;
		c->suspended = true;
		e->st->suspends++;
	}
	return SHOAL_OK;
}

/* A parked client is handed a task: give it back the model it holds, for
 * a downlink delta (as it would still have it in memory). */
static void
unpark_global(engine *e, uint32_t i, const uint8_t *buf, size_t len)
{
	cli_core *core = e->c[i].core;
	uint32_t ver = cli_core_model_version(core);
	msg m;

	if (ver == 0 || cli_core_global(core) != NULL || msg_decode(buf, len, &m) <= 0 ||
	    m.type != MSG_TASK)
		return;
	for (int k = 0; k < 2; k++)
		if (e->cache[k].ver == ver)
			(void)cli_core_restore_global(core, e->cache[k].params);
}

/* A parked client starts training: give it back its residual. */
static shoal_err
unpark_residual(engine *e, uint32_t i)
{
	cli_core *core = e->c[i].core;
	bool found;
	shoal_err err;

	if (e->cfg->keep_idle || cli_core_residual(core) != NULL)
		return SHOAL_OK;
	if ((err = sim_store_get(e->store, i, e->scratch, &found)) != SHOAL_OK || !found)
		return err;
	return cli_core_set_residual(core, e->scratch);
}

/* Server side ------------------------------------------------------------- */

static shoal_err
drain_server(engine *e)
{
	srv_reply r;
	srv_event sev;
	shoal_err err = SHOAL_OK;
	uint64_t next;

	while (srv_core_pop_reply(e->cfg->server, &r)) {
		uint32_t i = (uint32_t)r.req, gen = (uint32_t)(r.req >> 32);
		const sim_device *d = dev_of(e, i);

		e->st->bytes_down += r.len;
		if (i >= e->cfg->n_clients || gen != e->c[i].gen) {
			free(r.buf); /* the client dropped: the reply is lost */
			continue;
		}
		uint64_t t = e->now + (d != NULL ? ms_after((double)r.len / d->down_Bps + d->rtt_s / 2)
		                                 : 0);
		if (err == SHOAL_OK)
			err = push(e, t, EV_TO_CLIENT, i, r.buf, r.len, 0);
		else
			free(r.buf);
	}
	while (srv_core_pop_event(e->cfg->server, &sev))
		if (sev.kind == SRV_EV_ROUND_END && e->cfg->on_round != NULL)
			e->cfg->on_round(e->cfg->user, &sev.stats, (double)e->now / 1e3);
	if (!e->finished && srv_core_finished(e->cfg->server)) {
		e->finished = true;
		e->st->virtual_s = (double)e->now / 1e3;
		srv_core_release_all(e->cfg->server, e->now);
		return drain_server(e);
	}
	next = srv_core_next_deadline(e->cfg->server);
	if (err == SHOAL_OK && next != UINT64_MAX && next < e->timer_at) {
		e->timer_at = next > e->now ? next : e->now;
		err = push(e, e->timer_at, EV_TIMER, 0, NULL, 0, 0);
	}
	return err;
}

/* Training ------------------------------------------------------------------ */

typedef struct pool_job {
	engine *e;
	uint32_t *list;
	size_t n;
	size_t next;
	pthread_mutex_t mu;
} pool_job;

static void *
pool_worker(void *arg)
{
	pool_job *j = arg;

	for (;;) {
		size_t k;
		pthread_mutex_lock(&j->mu);
		k = j->next++;
		pthread_mutex_unlock(&j->mu);
		if (k >= j->n)
			return NULL;
		uint32_t i = j->list[k];
		training *t = j->e->c[i].tr;
		const sim_spread *sp = j->e->cfg->spread;
		if (sp != NULL && !sp->owns(sp->user, i))
			continue; /* another process trains it (sim_spread) */
		t->n_out = j->e->cfg->n_examples[i];
		t->loss_out = 0.0f;
		t->rc = j->e->cfg->train(j->e->cfg->user, i, t->st.params, t->st.dim, &t->st,
		                         &t->n_out, &t->loss_out);
	}
}

/* Hands a batch to cfg->spread->exchange and takes back the results of
 * the clients that other processes trained. */
static shoal_err
exchange(engine *e, const uint32_t *list, size_t n)
{
	sim_trained *b = malloc(n * sizeof *b);
	shoal_err err;

	if (b == NULL)
		return SHOAL_ENOMEM;
	for (size_t k = 0; k < n; k++) {
		training *t = e->c[list[k]].tr;
		b[k] = (sim_trained){.client = list[k], .params = t->st.params, .dim = t->st.dim,
		                     .n_examples = t->n_out, .loss = t->loss_out, .rc = t->rc};
	}
	err = e->cfg->spread->exchange(e->cfg->spread->user, b, n);
	for (size_t k = 0; err == SHOAL_OK && k < n; k++) {
		training *t = e->c[list[k]].tr;
		t->n_out = b[k].n_examples;
		t->loss_out = b[k].loss;
		t->rc = b[k].rc;
	}
	free(b);
	return err;
}

/* Trains every client whose training has started and is not done, at once
 * on the pool: which clients that is depends only on the event order. The
 * list is kept as trainings start, so a batch costs its own size, not the
 * population's. */
static shoal_err
train_pending(engine *e)
{
	pool_job j = {.e = e, .list = e->pend};
	pthread_t th[64];
	unsigned nt = e->cfg->threads, started = 0;

	for (size_t k = 0; k < e->n_pend; k++) {
		client *c = &e->c[e->pend[k]];

		c->queued = false;
		if (c->training && !c->ready) /* not dropped since */
			j.list[j.n++] = e->pend[k];
	}
	e->n_pend = 0;
	if (nt > 64)
		nt = 64;
	if (nt > j.n)
		nt = (unsigned)j.n;
	pthread_mutex_init(&j.mu, NULL);
	for (unsigned t = 1; t < nt; t++)
		if (pthread_create(&th[started], NULL, pool_worker, &j) == 0)
			started++;
	pool_worker(&j);
	for (unsigned t = 0; t < started; t++)
		pthread_join(th[t], NULL);
	pthread_mutex_destroy(&j.mu);
	if (e->cfg->spread != NULL && j.n > 0) {
		shoal_err err = exchange(e, j.list, j.n);
		if (err != SHOAL_OK)
			return err;
	}
	for (size_t k = 0; k < j.n; k++)
		e->c[j.list[k]].ready = true;
	e->st->trained += (uint32_t)j.n;
	return SHOAL_OK;
}

/* Client side --------------------------------------------------------------- */

/* Steps client i until it waits for something. */
static shoal_err
run_client(engine *e, uint32_t i)
{
	client *c = &e->c[i];
	const sim_device *d = dev_of(e, i);
	cli_step s;
	shoal_err err;

	if (c->done || c->training)
		return SHOAL_OK;
	if ((err = wake_core(e, i)) != SHOAL_OK)
		return err;
	cli_core_step(c->core, e->now, &s);
	switch (s.action) {
	case CLI_SEND: {
		uint8_t *copy = malloc(s.len > 0 ? s.len : 1);
		uint64_t t;

		if (copy == NULL)
			return SHOAL_ENOMEM;
		memcpy(copy, s.buf, s.len);
		e->st->bytes_up += s.len;
		t = e->now + (d != NULL ? ms_after((double)s.len / d->up_Bps + d->rtt_s / 2) : 0);
		if ((err = park(e, i)) != SHOAL_OK) {
			free(copy);
			return err;
		}
		return push(e, t, EV_TO_SERVER, i, copy, s.len, 0);
	}
	case CLI_SLEEP:
		if ((err = park(e, i)) != SHOAL_OK)
			return err;
		return push(e, s.until_ms > e->now ? s.until_ms : e->now, EV_WAKE, i, NULL, 0, 0);
	case CLI_TRAIN: {
		double flops = e->cfg->flops_per_example * e->cfg->n_examples[i] * s.epochs;
		if (s.budget_ms > 0 && d != NULL) {
			/* Time-budgeted local work: the steps that fit the budget on
			 * this device (at least 1, at most E epochs), and the time of
			 * those steps only. An infinitely fast client (no device)
			 * does the full work. */
			uint32_t n = e->cfg->n_examples[i];
			s.max_steps = sim_device_steps_in(d, s.budget_ms / 1e3,
			                                  e->cfg->flops_per_example * s.batch,
			                                  ml_sgd_steps(n, s.batch, s.epochs));
			flops = e->cfg->flops_per_example * (double)ml_sgd_examples(n, s.batch, s.max_steps);
		}
		uint64_t train_ms = d != NULL ? ms_after(flops / d->flops) : 0, end = e->now + train_ms;
		double at;

		if ((err = unpark_residual(e, i)) != SHOAL_OK)
			return err;
		if (c->tr == NULL && (c->tr = malloc(sizeof *c->tr)) == NULL)
			return SHOAL_ENOMEM;
		/* The outcome as if trained by another process (sim_spread) that
		 * reports none: filled in by the pool or the exchange. */
		*c->tr = (training){.st = s, .n_out = e->cfg->n_examples[i]};
		c->training = true;
		c->ready = false;
		if (!c->queued) {
			c->queued = true;
			e->pend[e->n_pend++] = i;
		}
		if ((err = push(e, end, EV_TRAIN_DONE, i, NULL, 0, 0)) != SHOAL_OK)
			return err;
		/* A failure strikes at a uniform point of the training; going
		 * offline before it ends is a dropout too. */
		c->attempts = s.round == c->last_round ? c->attempts + 1 : 0;
		c->last_round = s.round;
		if (d != NULL && e->cfg->failures &&
		    sim_device_fails(d, e->cfg->seed, i, s.round, c->attempts, &at))
			return push(e, e->now + (uint64_t)(at * (double)train_ms), EV_DROP, i, NULL, 0,
			            SIM_DROP_FAILED);
		if (d != NULL && e->cfg->availability && sim_avail_until(&c->av) <= (double)end / 1e3)
			return push(e, (uint64_t)ceil(sim_avail_until(&c->av) * 1e3), EV_DROP, i, NULL, 0,
			            SIM_DROP_OFFLINE);
		return SHOAL_OK;
	}
	case CLI_DONE:
		c->done = true;
		e->live--;
		if (s.err != SHOAL_OK && e->err == SHOAL_OK) {
			log_error("sim: client c%u gave up: %s", i, shoal_strerror(s.err));
			e->err = s.err;
		}
		cli_core_free(c->core); /* nothing more will happen to it */
		c->core = NULL;
		return SHOAL_OK;
	}
	return SHOAL_EINVAL;
}

/* The client's process died (or its device went offline): lose everything
 * in flight, restart it with its residual (as --state-dir keeps it).
 * cause SIM_DROP_CAUSES: not in a round, not counted. */
static shoal_err
drop_client(engine *e, uint32_t i, uint32_t cause)
{
	client *c = &e->c[i];
	const float *r = c->core != NULL ? cli_core_residual(c->core) : NULL;
	shoal_err err = SHOAL_OK;

	if (cause < SIM_DROP_CAUSES)
		e->st->dropped[cause]++;
	if (r != NULL && e->cfg->keep_idle) {
		memcpy(e->scratch, r, (size_t)e->cfg->client.dim * sizeof *e->scratch);
		r = e->scratch;
	} else if (r != NULL) {
		err = sim_store_put(e->store, i, r); /* the new core takes it at CLI_TRAIN */
		r = NULL;
	}
	cli_core_free(c->core);
	c->core = NULL;
	c->suspended = false;
	free(c->tr);
	c->tr = NULL;
	c->gen++;
	c->training = c->ready = false;
	if (err == SHOAL_OK)
		err = new_core(e, i);
	if (err == SHOAL_OK && r != NULL)
		err = cli_core_set_residual(c->core, r);
	if (err != SHOAL_OK)
		return err;
	/* Back when next available (offline), or after a restart (failed). */
	return push(e, e->now + (cause == SIM_DROP_FAILED ? 10000 : 0), EV_WAKE, i, NULL, 0, 0);
}

static shoal_err
handle(engine *e, const ev *x)
{
	client *c = x->kind != EV_TIMER ? &e->c[x->client] : NULL;
	shoal_err err;
	msg m;

	if (x->kind == EV_TIMER) {
		if (x->t == e->timer_at)
			e->timer_at = UINT64_MAX;
		srv_core_on_timer(e->cfg->server, e->now);
		return drain_server(e);
	}
	if (x->gen != c->gen || c->done) {
		free(x->buf);
		return SHOAL_OK; /* from before the client dropped, or after it ended */
	}
	switch (x->kind) {
	case EV_WAKE:
		if (!online(e, x->client))
			return push(e, (uint64_t)ceil(sim_avail_until(&c->av) * 1e3), EV_WAKE, x->client,
			            NULL, 0, 0);
		if (e->cfg->avail_aware && dev_of(e, x->client) != NULL && e->cfg->availability) {
			const sim_device *d = dev_of(e, x->client);
			double need = sim_device_round_time(d, e->cfg->est_down_bytes,
			                                    e->cfg->flops_per_example *
			                                        e->cfg->n_examples[x->client] *
			                                        (e->cfg->est_epochs ? e->cfg->est_epochs : 1),
			                                    e->cfg->est_up_bytes).total_s;
			double left = sim_avail_until(&c->av) - (double)e->now / 1e3;

			/* Too little time left: sit this on period out. */
			if (left < need)
				return push(e, (uint64_t)ceil(sim_avail_until(&c->av) * 1e3), EV_WAKE,
				            x->client, NULL, 0, 0);
		}
		return run_client(e, x->client);
	case EV_TO_SERVER:
		srv_core_on_request(e->cfg->server, (uint64_t)x->gen << 32 | x->client, x->buf, x->len,
		                    e->now);
		free(x->buf);
		return drain_server(e);
	case EV_TO_CLIENT:
		if (!online(e, x->client)) {
			/* Gone offline while waiting (e.g. parked in CHECKIN): the
			 * reply is lost. It is a dropout if it carried a round's work. */
			bool work = msg_decode(x->buf, x->len, &m) > 0 &&
			            (m.type == MSG_TASK || m.type == MSG_SA_REPLY);
			free(x->buf);
			return drop_client(e, x->client, work ? SIM_DROP_OFFLINE : SIM_DROP_CAUSES);
		}
		if ((err = wake_core(e, x->client)) != SHOAL_OK) {
			free(x->buf);
			return err;
		}
		unpark_global(e, x->client, x->buf, x->len);
		cli_core_on_reply(c->core, x->buf, x->len, e->now);
		free(x->buf);
		return run_client(e, x->client);
	case EV_TRAIN_DONE:
		if (!c->ready && (err = train_pending(e)) != SHOAL_OK)
			return err;
		c->training = c->ready = false;
		if (c->tr->rc != 0) {
			cli_core_abort_train(c->core, e->now);
		} else if ((err = cli_core_submit_steps(c->core, c->tr->n_out, c->tr->st.max_steps,
		                                        c->tr->loss_out, e->now)) != SHOAL_OK) {
			log_warn("sim: client c%u: update for round %u not sent: %s", x->client,
			         c->tr->st.round, shoal_strerror(err));
		}
		free(c->tr);
		c->tr = NULL;
		return run_client(e, x->client);
	case EV_DROP:
		return drop_client(e, x->client, x->cause);
	}
	return SHOAL_EINVAL;
}

shoal_err
sim_engine_run(const sim_engine_config *cfg, sim_engine_stats *st)
{
	engine e = {.cfg = cfg, .st = st, .timer_at = UINT64_MAX};
	shoal_err err = SHOAL_OK;

	memset(st, 0, sizeof *st);
	if (cfg->server == NULL || cfg->n_clients == 0 || cfg->n_examples == NULL ||
	    cfg->train == NULL || cfg->threads == 0)
		return SHOAL_EINVAL;
	e.c = calloc(cfg->n_clients, sizeof *e.c);
	e.pend = malloc((size_t)cfg->n_clients * sizeof *e.pend);
	e.scratch = malloc((size_t)cfg->client.dim * sizeof *e.scratch);
	if (e.c == NULL || e.pend == NULL || e.scratch == NULL ||
	    sim_store_new(cfg->n_clients, cfg->client.dim,
	                  cfg->residual_mem ? cfg->residual_mem : (uint64_t)256 << 20,
	                  &e.store) != SHOAL_OK) {
		free(e.c);
		free(e.pend);
		free(e.scratch);
		return SHOAL_ENOMEM;
	}
	e.live = cfg->n_clients;
	for (uint32_t i = 0; i < cfg->n_clients && err == SHOAL_OK; i++) {
		const sim_device *d = dev_of(&e, i);

		if (cfg->absent != NULL && cfg->absent[i]) {
			e.c[i].done = true;
			e.live--;
			continue;
		}
		if (d != NULL)
			sim_avail_init(&e.c[i].av, d, cfg->seed, i);
		err = push(&e, 0, EV_WAKE, i, NULL, 0, 0); /* its core is made then */
	}
	if (err == SHOAL_OK) {
		srv_core_on_timer(cfg->server, 0);
		err = drain_server(&e);
	}
	while (err == SHOAL_OK && e.err == SHOAL_OK && e.h.n > 0 && e.live > 0) {
		ev x = heap_pop(&e.h);

		if (cfg->stop != NULL && *cfg->stop) {
			free(x.buf);
			err = SHOAL_ECLOSED;
			break;
		}
		e.now = x.t;
		if (cfg->max_virtual_s > 0 && !e.finished && (double)e.now / 1e3 > cfg->max_virtual_s) {
			free(x.buf);
			err = SHOAL_ETIMEDOUT;
			break;
		}
		st->events++;
		err = handle(&e, &x);
	}
	if (err == SHOAL_OK)
		err = e.err;
	if (err == SHOAL_OK && !e.finished)
		err = SHOAL_ESTATE; /* nothing left to happen, server not done */
	while (e.h.n > 0) {
		ev x = heap_pop(&e.h);
		free(x.buf);
	}
	free(e.h.a);
	for (uint32_t i = 0; i < cfg->n_clients; i++) {
		cli_core_free(e.c[i].core);
		free(e.c[i].tr);
	}
	st->residuals = sim_store_count(e.store);
	st->residuals_on_disk = sim_store_on_disk(e.store);
	sim_store_free(e.store);
	for (int k = 0; k < 2; k++)
		free(e.cache[k].params);
	free(e.scratch);
	free(e.c);
	free(e.pend);
	return err;
}
