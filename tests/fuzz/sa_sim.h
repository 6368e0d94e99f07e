/* sa_sim.h - one secure-aggregation session in memory (privacy/secagg.h)
 * for the fuzz harness and the seed generator: n clients and the server
 * run every phase, except that one payload - a client's request to the
 * server, or the server's reply to a client - can be replaced by given
 * bytes. Everything is seeded, so the genuine payloads the generator
 * captures are exactly the ones the harness would send.
 *
 * The selector bytes (two, at the front of a harness input):
 *   s0 bits 0-1  configuration (n, k, t): full SecAgg 3/2/2 or 4/3/3,
 *                SecAgg+ 5/2/2 or 6/4/3
 *      bit 2     clients sign their keys (Ed25519 identities)
 *      bits 3-4  ring bits m: 1, 13, 24, 32
 *      bits 5-7  masked elements d: 1, 2, 5, 8, 17, 31, 64, 100
 *   s1 bit 0     0: replace client -> server request, 1: server -> client
 *                reply
 *      bits 1-3  phase of the replaced payload (1..5 requests, 1..4
 *                replies; others wrap)
 *      bits 4-7  target client (wraps to 1..n) */
#ifndef SHOAL_FUZZ_SA_SIM_H
#define SHOAL_FUZZ_SA_SIM_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "privacy/rng.h"
#include "privacy/secagg.h"

#define SIM_MAXN 6

typedef struct sa_sim {
	/* in */
	sa_config c;
	bool to_client;     /* replace a reply (else a request) */
	sa_phase phase;     /* of the replaced payload */
	uint32_t target;    /* 1..n */
	const uint8_t *fake; /* NULL: run genuinely */
	size_t fake_len;
	/* out */
	uint8_t *genuine;   /* the payload that was (or would be) replaced */
	size_t genuine_len;
	bool fake_accepted; /* its receiver took the replacement */
	shoal_err result;   /* the server's last close */
	bool done;          /* the sum is ready */
	bool clean;         /* no accepted payload differs from the genuine one */
	uint32_t x[SIM_MAXN + 1][100];
	uint32_t sum[100];
	bool masked[SIM_MAXN + 1]; /* the server took i's masked input */
	bool in_u3[SIM_MAXN + 1];
} sa_sim;

static const struct {
	uint32_t n, k, t;
} sim_cfgs[4] = {{3, 2, 2}, {4, 3, 3}, {5, 2, 2}, {6, 4, 3}};
static const uint32_t sim_ms[4] = {1, 13, 24, 32};
static const uint32_t sim_ds[8] = {1, 2, 5, 8, 17, 31, 64, 100};

static void
sa_sim_setup(sa_sim *s, uint8_t s0, uint8_t s1)
{
	memset(s, 0, sizeof *s);
	s->c.n = sim_cfgs[s0 & 3].n;
	s->c.k = sim_cfgs[s0 & 3].k;
	s->c.t = sim_cfgs[s0 & 3].t;
	s->c.signed_keys = (s0 >> 2) & 1;
	s->c.m = sim_ms[(s0 >> 3) & 3];
	s->c.d = sim_ds[s0 >> 5];
	s->c.round = 9;
	for (int i = 0; i < SA_KEY_BYTES; i++)
		s->c.session[i] = (uint8_t)(0x5a ^ (i * 7));
	s->to_client = s1 & 1;
	uint32_t nph = s->to_client ? 4 : 5;
	s->phase = (sa_phase)(1 + ((s1 >> 1) & 7) % nph);
	s->target = 1 + (uint32_t)(s1 >> 4) % s->c.n;
}

static bool
sim_is_genuine(const sa_sim *s, const uint8_t *p, size_t n)
{
	return n == s->genuine_len && (n == 0 || memcmp(p, s->genuine, n) == 0);
}

/* Runs the session; the caller frees s->genuine. */
static void
sa_sim_run(sa_sim *s)
{
	const sa_config *c = &s->c;
	uint8_t idsk[SIM_MAXN + 1][SA_IDSK_BYTES];
	uint8_t idpk[SIM_MAXN][SA_IDPK_BYTES];
	sa_client *cl[SIM_MAXN + 1] = {0};
	rng rr[SIM_MAXN + 1];
	uint8_t *reply[SIM_MAXN + 1] = {0};
	size_t rlen[SIM_MAXN + 1] = {0};
	bool alive[SIM_MAXN + 1];
	sa_server *srv = NULL;
	rng g;

	if (sodium_init() < 0)
		abort();
	s->clean = true;
	rng_init(&g, 4242, c->round);
	uint32_t mask = c->m == 32 ? 0xffffffffu : (1u << c->m) - 1;
	for (uint32_t i = 1; i <= c->n; i++) {
		for (uint32_t j = 0; j < c->d; j++)
			s->x[i][j] = (uint32_t)rng_u64(&g) & mask;
		uint8_t seed[crypto_sign_SEEDBYTES];
		rng_bytes(&g, seed, sizeof seed);
		crypto_sign_seed_keypair(idpk[i - 1], idsk[i], seed);
	}
	rng_fini(&g);
	if (sa_server_new(c, c->signed_keys ? (const uint8_t(*)[SA_IDPK_BYTES])idpk : NULL, 1, &srv) !=
	    SHOAL_OK)
		abort();
	for (uint32_t i = 1; i <= c->n; i++) {
		rng_init(&rr[i], 1000 + i, c->round);
		if (sa_client_new(c, i, c->signed_keys ? idsk[i] : NULL, &rr[i], &cl[i]) != SHOAL_OK)
			abort();
		alive[i] = true;
	}
	for (sa_phase ph = SA_PH_ADVERTISE; ph <= SA_PH_UNMASK; ph++) {
		for (uint32_t i = 1; i <= c->n; i++) {
			if (!alive[i])
				continue;
			const uint8_t *in = reply[i];
			size_t ilen = rlen[i];
			bool fake_in = s->to_client && i == s->target && ph == s->phase + 1;
			if (fake_in) {
				s->genuine = reply[i];
				s->genuine_len = rlen[i];
				reply[i] = NULL;
				if (s->fake != NULL) {
					in = s->fake;
					ilen = s->fake_len;
				} else {
					in = s->genuine;
				}
			}
			uint8_t *out = NULL;
			size_t olen = 0;
			shoal_err ce;
			switch (ph) {
			case SA_PH_ADVERTISE: ce = sa_client_advertise(cl[i], &out, &olen); break;
			case SA_PH_SHARE: ce = sa_client_share(cl[i], in, ilen, &out, &olen); break;
			case SA_PH_MASKED: ce = sa_client_mask(cl[i], in, ilen, s->x[i], &out, &olen); break;
			case SA_PH_CONSISTENCY: ce = sa_client_consistency(cl[i], in, ilen, &out, &olen); break;
			default: ce = sa_client_unmask(cl[i], in, ilen, &out, &olen); break;
			}
			free(reply[i]);
			reply[i] = NULL;
			if (fake_in) {
				s->fake_accepted = ce == SHOAL_OK;
				if (ce == SHOAL_OK && !sim_is_genuine(s, in, ilen))
					s->clean = false;
			}
			if (ce != SHOAL_OK) {
				/* honest clients only ever leave for too few peers */
				if (s->clean && !fake_in && ce != SHOAL_EABORTED)
					abort();
				alive[i] = false;
				continue;
			}
			const uint8_t *send = out;
			size_t slen = olen;
			bool fake_out = !s->to_client && i == s->target && ph == s->phase;
			if (fake_out) {
				s->genuine = out;
				s->genuine_len = olen;
				out = NULL;
				if (s->fake != NULL) {
					send = s->fake;
					slen = s->fake_len;
				}
			}
			shoal_err se = sa_server_recv(srv, i, ph, send, slen);
			if (fake_out) {
				s->fake_accepted = se == SHOAL_OK;
				if (se == SHOAL_OK && !sim_is_genuine(s, send, slen))
					s->clean = false;
			} else if (se != SHOAL_OK && s->clean) {
				abort(); /* a genuine payload refused */
			}
			/* a refused client is not live in the next phase */
			if (se == SHOAL_OK && ph == SA_PH_MASKED)
				s->masked[i] = true;
			/* a second copy is a duplicate */
			if (se == SHOAL_OK && sa_server_recv(srv, i, ph, send, slen) != SHOAL_EDUP)
				abort();
			free(out);
		}
		s->result = sa_server_close(srv);
		if (s->result != SHOAL_OK) {
			if (sa_server_phase(srv) != SA_PH_ABORTED || sa_server_sum(srv) != NULL)
				abort();
			break;
		}
		if (ph == SA_PH_UNMASK) {
			s->done = true;
			memcpy(s->sum, sa_server_sum(srv), c->d * sizeof(uint32_t));
			for (uint32_t i = 1; i <= c->n; i++)
				s->in_u3[i] = sa_server_in_u3(srv, i);
			break;
		}
		for (uint32_t i = 1; i <= c->n; i++) {
			if (!alive[i])
				continue;
			if (sa_server_reply(srv, i, &reply[i], &rlen[i]) != SHOAL_OK)
				alive[i] = false; /* it sent nothing the server kept */
		}
	}
	for (uint32_t i = 1; i <= c->n; i++) {
		free(reply[i]);
		sa_client_free(cl[i]);
		rng_fini(&rr[i]);
	}
	sa_server_free(srv);
	sodium_memzero(idsk, sizeof idsk);
}

#endif
