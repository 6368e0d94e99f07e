/* secagg.c (bench) - shoal-bench secagg: what the secure aggregation phase
 * machines (privacy/secagg.h) cost a client and the server. Prints one JSON
 * object per result on stdout ({"bench", "params", "value", "unit"});
 * progress, checks and cost breakdowns on stderr.
 *
 *   secagg_client_key_sharing  sa_client_advertise + sa_client_share of one
 *                              client with K neighbours (X25519 key pairs,
 *                              two Shamir splits, K agreements and K
 *                              XChaCha20-Poly1305 encryptions)
 *   secagg_client_masking      sa_client_mask of one client: K share
 *                              decryptions, self mask, K pairwise masks of
 *                              d elements, packing at m bits
 *   secagg_server_unmask       sa_server_close of the UNMASK phase alone:
 *                              reconstruction of the self-mask seeds of U3
 *                              and of the mask keys of the clients that
 *                              dropped after SHARE, and removal of every
 *                              mask, with 1 and with --threads workers
 *
 * Setup runs one real session once with seeded client randomness and
 * records every client payload (a "tape"); the server sum it produces is
 * checked against the plain sum of the inputs. Each server measurement
 * replays the tape into a fresh server and times only the last close (the
 * replayed sum is checked again, outside the timing). A client measurement
 * rebuilds the recorded client (same seed, hence the same keys, so the
 * recorded roster and inbox stay valid) and times only its step. Client
 * values are means over calls adding up to at least 50 ms per repetition;
 * every value is the median over --reps repetitions. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "bench/bench.h"
#include "common/cli.h"
#include "common/codec.h"
#include "privacy/prg.h"
#include "privacy/rng.h"
#include "privacy/secagg.h"

#define SAB_MAX_REPS 101
#define SAB_MIN_SECONDS 0.05
#define SAB_SEED 0x5eca99ull
#define SAB_ME 1u /* the client the client benchmarks time */

enum {
	ONLY_KEY_SHARING = 1,
	ONLY_MASKING = 2,
	ONLY_UNMASK = 4,
};

typedef struct sab_opts {
	uint32_t n, dim, k, t, m, d, threads, reps, dropped;
	double dropout, ratio; /* ratio 0: not given */
	unsigned which;
} sab_opts;

/* One session's client payloads, recorded once, replayed into fresh servers. */
typedef struct tape {
	sa_config c;
	uint8_t **pay[SA_PH_UNMASK + 1]; /* [phase][i]: client i's payload or NULL */
	size_t *len[SA_PH_UNMASK + 1];
	uint32_t *want;                  /* d: the sum over U3 in Z/2^m */
	uint8_t *roster, *inbox;         /* SAB_ME's replies after ADVERTISE, SHARE */
	size_t roster_len, inbox_len;
} tape;

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: shoal-bench secagg [options]\n"
	        "\n"
	        "Secure aggregation phase machines (seconds, median of --reps):\n"
	        "secagg_client_key_sharing (one client's advertise + share),\n"
	        "secagg_client_masking (one client's mask step) and\n"
	        "secagg_server_unmask (the server's close of UNMASK alone, with clients\n"
	        "dropped after key sharing; once with 1 worker and once with --threads).\n"
	        "  --clients N      participants (default 100)\n"
	        "  --dim D          model dimension (default 100000)\n"
	        "  --ratio R        mask d = ceil(R*D) elements, the shared index set\n"
	        "                   (default: d = D)\n"
	        "  --neighbors K    neighbours per client; K >= N-1 is full SecAgg,\n"
	        "                   else SecAgg+ (K even) (default 14)\n"
	        "  --threshold T    Shamir threshold (default floor(K/2) + 1)\n"
	        "  --dropout F      server_unmask: fraction of clients, round(F*N), that\n"
	        "                   share keys and then never send their masked input\n"
	        "                   (default 0.1)\n"
	        "  --bits M         ring width, 1..32 (default 24)\n"
	        "  --threads W      unmask workers, also reported at 1 (default 1)\n"
	        "  --only B         client_key_sharing | client_masking | server_unmask\n"
	        "                   (default all three)\n"
	        "  --reps R         repetitions, median reported (default 7)\n");
}

static void
tape_free(tape *tp)
{
	for (int ph = SA_PH_ADVERTISE; ph <= SA_PH_UNMASK; ph++) {
		if (tp->pay[ph] != NULL)
			for (uint32_t i = 0; i <= tp->c.n; i++)
				free(tp->pay[ph][i]);
		free(tp->pay[ph]);
		free(tp->len[ph]);
	}
	free(tp->want);
	free(tp->roster);
	free(tp->inbox);
	memset(tp, 0, sizeof *tp);
}

static uint8_t *
dup_bytes(const uint8_t *p, size_t n)
{
	uint8_t *q = malloc(n ? n : 1);

	if (q != NULL)
		memcpy(q, p, n);
	return q;
}

static void
random_input(rng *g, uint32_t *x, uint32_t d, uint32_t m)
{
	uint32_t mask = m == 32 ? UINT32_MAX : (UINT32_C(1) << m) - 1;

	for (uint32_t j = 0; j < d; j++)
		x[j] = (uint32_t)rng_u64(g) & mask;
}

/* Runs a real session through phase `last` (clients with drop[i] stop
 * before MASKED) and records it into tp. Client i draws its keys from
 * rng (SAB_SEED, i). Returns 0, or -1 after saying why on stderr. */
static int
tape_record(tape *tp, const sa_config *c, const bool *drop, sa_phase last)
{
	uint32_t n = c->n, mask = c->m == 32 ? UINT32_MAX : (UINT32_C(1) << c->m) - 1;
	sa_server *s = NULL;
	sa_client **cl = calloc((size_t)n + 1, sizeof *cl);
	rng *rr = calloc((size_t)n + 1, sizeof *rr);
	uint8_t **reply = calloc((size_t)n + 1, sizeof *reply);
	size_t *rlen = calloc((size_t)n + 1, sizeof *rlen);
	bool *alive = calloc((size_t)n + 1, sizeof *alive);
	uint32_t *x = malloc((size_t)c->d * sizeof *x);
	const char *why = "out of memory";
	shoal_err e = SHOAL_OK;
	rng g;
	int rc = -1;

	memset(tp, 0, sizeof *tp);
	tp->c = *c;
	rng_init(&g, SAB_SEED, 0);
	if (cl == NULL || rr == NULL || reply == NULL || rlen == NULL || alive == NULL ||
	    x == NULL || (tp->want = calloc(c->d, sizeof *tp->want)) == NULL)
		goto done;
	for (int ph = SA_PH_ADVERTISE; ph <= (int)last; ph++)
		if ((tp->pay[ph] = calloc((size_t)n + 1, sizeof *tp->pay[ph])) == NULL ||
		    (tp->len[ph] = calloc((size_t)n + 1, sizeof *tp->len[ph])) == NULL)
			goto done;
	why = "sa_server_new or sa_client_new failed";
	if (sa_server_new(c, NULL, 1, &s) != SHOAL_OK)
		goto done;
	for (uint32_t i = 1; i <= n; i++) {
		rng_init(&rr[i], SAB_SEED, i);
		if (sa_client_new(c, i, NULL, &rr[i], &cl[i]) != SHOAL_OK)
			goto done;
		alive[i] = true;
	}
	for (int ph = SA_PH_ADVERTISE; ph <= (int)last; ph++) {
		for (uint32_t i = 1; i <= n; i++) {
			uint8_t *out = NULL;
			size_t olen = 0;

			if (!alive[i])
				continue;
			if (ph == SA_PH_MASKED && drop[i]) {
				alive[i] = false;
				continue;
			}
			switch (ph) {
			case SA_PH_ADVERTISE: e = sa_client_advertise(cl[i], &out, &olen); break;
			case SA_PH_SHARE:
				e = sa_client_share(cl[i], reply[i], rlen[i], &out, &olen);
				break;
			case SA_PH_MASKED:
				random_input(&g, x, c->d, c->m);
				for (uint32_t j = 0; j < c->d; j++)
					tp->want[j] = (tp->want[j] + x[j]) & mask;
				e = sa_client_mask(cl[i], reply[i], rlen[i], x, &out, &olen);
				break;
			case SA_PH_CONSISTENCY:
				e = sa_client_consistency(cl[i], reply[i], rlen[i], &out, &olen);
				break;
			default: e = sa_client_unmask(cl[i], reply[i], rlen[i], &out, &olen); break;
			}
			free(reply[i]);
			reply[i] = NULL;
			if (e != SHOAL_OK) {
				fprintf(stderr, "shoal-bench secagg: client %u, phase %d: %s\n", i, ph,
				        shoal_strerror(e));
				why = "a client step failed";
				goto done;
			}
			if ((e = sa_server_recv(s, i, (sa_phase)ph, out, olen)) != SHOAL_OK) {
				fprintf(stderr, "shoal-bench secagg: server recv from %u, phase %d: %s\n", i,
				        ph, shoal_strerror(e));
				free(out);
				why = "the server refused a payload";
				goto done;
			}
			tp->pay[ph][i] = out;
			tp->len[ph][i] = olen;
		}
		if ((e = sa_server_close(s)) != SHOAL_OK) {
			fprintf(stderr, "shoal-bench secagg: the session aborted at phase %d (%s): too "
			        "few clients or share holders left for threshold %u\n", ph,
			        shoal_strerror(e), c->t);
			why = "session aborted";
			goto done;
		}
		if (ph == SA_PH_UNMASK) {
			why = "the recorded session's sum is not the sum of the inputs";
			if (memcmp(sa_server_sum(s), tp->want, (size_t)c->d * sizeof *tp->want) != 0)
				goto done;
			break;
		}
		for (uint32_t i = 1; i <= n; i++) {
			if (!alive[i])
				continue;
			why = "sa_server_reply failed";
			if (sa_server_reply(s, i, &reply[i], &rlen[i]) != SHOAL_OK)
				goto done;
			if (i == SAB_ME && ph == SA_PH_ADVERTISE) {
				tp->roster_len = rlen[i];
				if ((tp->roster = dup_bytes(reply[i], rlen[i])) == NULL)
					goto done;
			}
			if (i == SAB_ME && ph == SA_PH_SHARE) {
				tp->inbox_len = rlen[i];
				if ((tp->inbox = dup_bytes(reply[i], rlen[i])) == NULL)
					goto done;
			}
		}
	}
	rc = 0;
done:
	if (rc != 0)
		fprintf(stderr, "shoal-bench secagg: setup failed: %s\n", why);
	for (uint32_t i = 0; cl != NULL && i <= n; i++) {
		sa_client_free(cl[i]);
		if (rr != NULL)
			rng_fini(&rr[i]);
		if (reply != NULL)
			free(reply[i]);
	}
	sa_server_free(s);
	rng_fini(&g);
	free(cl);
	free(rr);
	free(reply);
	free(rlen);
	free(alive);
	free(x);
	if (rc != 0)
		tape_free(tp);
	return rc;
}

/* Replays the tape into a fresh server with `threads` workers and returns
 * the seconds sa_server_close of UNMASK took, or -1 on failure (a replay
 * that does not reproduce the recorded sum is one). */
static double
tape_replay(const tape *tp, unsigned threads)
{
	sa_server *s;
	double t = -1.0;

	if (sa_server_new(&tp->c, NULL, threads, &s) != SHOAL_OK)
		return -1.0;
	for (int ph = SA_PH_ADVERTISE; ph <= SA_PH_UNMASK; ph++) {
		shoal_err e;
		double t0;

		for (uint32_t i = 1; i <= tp->c.n; i++)
			if (tp->pay[ph][i] != NULL &&
			    sa_server_recv(s, i, (sa_phase)ph, tp->pay[ph][i], tp->len[ph][i]) != SHOAL_OK)
				goto done;
		t0 = bench_now_s();
		e = sa_server_close(s);
		if (ph == SA_PH_UNMASK)
			t = bench_now_s() - t0;
		if (e != SHOAL_OK) {
			t = -1.0;
			goto done;
		}
	}
	if (memcmp(sa_server_sum(s), tp->want, (size_t)tp->c.d * sizeof *tp->want) != 0)
		t = -1.0;
done:
	sa_server_free(s);
	return t;
}

/* Parameters shared by every result. */
static json_t *
params_new(const sab_opts *o, bool with_d)
{
	json_t *pj = json_pack("{s:I, s:I, s:s, s:I}", "clients", (json_int_t)o->n, "neighbors",
	                       (json_int_t)o->k, "graph", o->k == o->n - 1 ? "full" : "plus",
	                       "threshold", (json_int_t)o->t);

	if (pj != NULL && with_d) {
		json_object_set_new(pj, "dim", json_integer(o->dim));
		if (o->ratio > 0.0)
			json_object_set_new(pj, "ratio", json_real(o->ratio));
		json_object_set_new(pj, "d", json_integer(o->d));
		json_object_set_new(pj, "bits", json_integer(o->m));
	}
	return pj;
}

/* Seconds per call of crypto_scalarmult (the X25519 in every agreement)
 * over 10 ms, for the cost breakdowns on stderr. */
static double
x25519_seconds(void)
{
	uint8_t sk[32], pk[32], z[32];
	double t0 = bench_now_s(), t;
	long calls = 0;

	randombytes_buf(sk, sizeof sk);
	crypto_scalarmult_base(pk, sk);
	do {
		if (crypto_scalarmult(z, sk, pk) != 0)
			break;
		sk[0] ^= z[0];
		calls++;
		t = bench_now_s() - t0;
	} while (t < 0.01);
	return calls ? t / (double)calls : 0.0;
}

/* Seconds per sodium_malloc + sodium_free pair (guard pages: mmap,
 * mprotect, munmap) over 10 ms: the key sharing step makes several. */
static double
guarded_alloc_seconds(void)
{
	double t0 = bench_now_s(), t;
	long calls = 0;

	do {
		void *p = sodium_malloc(1024);

		if (p == NULL)
			break;
		sodium_free(p);
		calls++;
		t = bench_now_s() - t0;
	} while (t < 0.01);
	return calls ? t / (double)calls : 0.0;
}

/* Seconds for `masks` sa_prg_add expansions of d elements at m bits on one
 * thread: the PRG floor of a masking or unmasking step. */
static double
prg_seconds(uint32_t masks, uint32_t d, uint32_t m, uint32_t *buf)
{
	uint8_t seed[SA_SEED_BYTES] = {1};
	double t0 = bench_now_s();

	for (uint32_t q = 0; q < masks; q++) {
		seed[1] = (uint8_t)q;
		seed[2] = (uint8_t)(q >> 8);
		sa_prg_add(seed, m, buf, 0, d, q % 2 ? -1 : +1);
	}
	return bench_now_s() - t0;
}

static int
run_key_sharing(const sab_opts *o, const tape *tp)
{
	double v[SAB_MAX_REPS], xs[SAB_MAX_REPS], gs[SAB_MAX_REPS];

	for (long r = -1; r < (long)o->reps; r++) { /* r = -1 warms up */
		double busy = 0.0;
		long calls = 0;

		do {
			sa_client *cl;
			uint8_t *a = NULL, *sh = NULL;
			size_t alen, shlen;
			shoal_err e;
			double t0;

			/* libsodium randomness, as the runtime's clients use */
			if (sa_client_new(&tp->c, SAB_ME, NULL, NULL, &cl) != SHOAL_OK)
				return 1;
			t0 = bench_now_s();
			e = sa_client_advertise(cl, &a, &alen);
			if (e == SHOAL_OK)
				e = sa_client_share(cl, tp->roster, tp->roster_len, &sh, &shlen);
			busy += bench_now_s() - t0;
			free(a);
			free(sh);
			sa_client_free(cl);
			if (e != SHOAL_OK) {
				fprintf(stderr, "shoal-bench secagg: key sharing: %s\n", shoal_strerror(e));
				return 1;
			}
			calls++;
		} while (busy < SAB_MIN_SECONDS);
		if (r >= 0) {
			v[r] = busy / (double)calls;
			xs[r] = x25519_seconds();
			gs[r] = guarded_alloc_seconds();
		}
	}
	double med = bench_median(v, o->reps), x = bench_median(xs, o->reps);
	/* 2 base-point multiplications + k agreements */
	fprintf(stderr, "secagg_client_key_sharing: %.6f s; X25519 %.1f us x %u = %.6f s of it; "
	        "one sodium_malloc + sodium_free %.1f us\n",
	        med, 1e6 * x, o->k + 2, x * (o->k + 2), 1e6 * bench_median(gs, o->reps));
	json_t *pj = params_new(o, false);
	bench_emit("secagg_client_key_sharing", pj, med, "s");
	json_decref(pj);
	return 0;
}

static int
run_masking(const sab_opts *o, const tape *tp)
{
	uint32_t *x = malloc((size_t)o->d * sizeof *x);
	uint32_t *buf = calloc(o->d, sizeof *buf);
	double v[SAB_MAX_REPS], prg[SAB_MAX_REPS], xr[SAB_MAX_REPS];
	int rc = 1;
	rng g;

	if (x == NULL || buf == NULL)
		goto done;
	rng_init(&g, SAB_SEED, 0x6d61736bull);
	random_input(&g, x, o->d, o->m);
	rng_fini(&g);
	for (long r = -1; r < (long)o->reps; r++) {
		double busy = 0.0;
		long calls = 0;

		do {
			sa_client *cl = NULL;
			uint8_t *a = NULL, *sh = NULL, *out = NULL;
			size_t alen, shlen, olen;
			shoal_err e;
			rng rr;
			double t0;

			/* the recorded client again: same keys, so the recorded inbox
			 * decrypts */
			rng_init(&rr, SAB_SEED, SAB_ME);
			e = sa_client_new(&tp->c, SAB_ME, NULL, &rr, &cl);
			if (e == SHOAL_OK)
				e = sa_client_advertise(cl, &a, &alen);
			if (e == SHOAL_OK)
				e = sa_client_share(cl, tp->roster, tp->roster_len, &sh, &shlen);
			free(a);
			free(sh);
			if (e == SHOAL_OK) {
				t0 = bench_now_s();
				e = sa_client_mask(cl, tp->inbox, tp->inbox_len, x, &out, &olen);
				busy += bench_now_s() - t0;
				free(out);
			}
			sa_client_free(cl);
			rng_fini(&rr);
			if (e != SHOAL_OK) {
				fprintf(stderr, "shoal-bench secagg: masking: %s\n", shoal_strerror(e));
				goto done;
			}
			calls++;
		} while (busy < SAB_MIN_SECONDS);
		if (r >= 0) {
			v[r] = busy / (double)calls;
			prg[r] = prg_seconds(o->k + 1, o->d, o->m, buf);
			xr[r] = x25519_seconds();
		}
	}
	double med = bench_median(v, o->reps), pmed = bench_median(prg, o->reps);
	double xs = bench_median(xr, o->reps);
	fprintf(stderr, "secagg_client_masking: %.6f s; of it PRG %u x %u elements %.6f s "
	        "(%.2f GB/s keystream), X25519 %u x %.1f us = %.6f s, rest %.6f s\n",
	        med, o->k + 1, o->d, pmed,
	        (double)(o->k + 1) * o->d * ((o->m + 7) / 8) / pmed / 1e9, 2 * o->k, 1e6 * xs,
	        2 * o->k * xs, med - pmed - 2 * o->k * xs);
	json_t *pj = params_new(o, true);
	bench_emit("secagg_client_masking", pj, med, "s");
	json_decref(pj);
	rc = 0;
done:
	free(x);
	free(buf);
	return rc;
}

static int
run_unmask(const sab_opts *o, const tape *tp, const bool *drop)
{
	unsigned ws[2] = {1, o->threads};
	int nw = o->threads > 1 ? 2 : 1;
	double v[2][SAB_MAX_REPS], prg[SAB_MAX_REPS], xr[SAB_MAX_REPS];
	uint32_t *nb = malloc((size_t)o->k * sizeof *nb), pair = 0;
	uint32_t *buf = calloc(o->d, sizeof *buf);
	int rc = 1;

	if (nb == NULL || buf == NULL)
		goto done;
	/* masks the server removes: one self mask per U3 member, one pairwise
	 * mask per (dropped, surviving neighbour) pair */
	for (uint32_t u = 1; u <= o->n; u++) {
		if (!drop[u])
			continue;
		sa_neighbors(&tp->c, u, nb);
		for (uint32_t q = 0; q < o->k; q++)
			pair += !drop[nb[q]];
	}
	uint32_t self = o->n - o->dropped;
	fprintf(stderr, "secagg_server_unmask: %u self masks + %u pairwise masks of %u elements, "
	        "%u secrets reconstructed, %u mask keys agreed\n",
	        self, pair, o->d, o->n, pair);
	for (long r = -1; r < (long)o->reps; r++) {
		for (int w = 0; w < nw; w++) { /* interleaved: both see the same noise */
			double t = tape_replay(tp, ws[w]);

			if (t < 0) {
				fprintf(stderr, "shoal-bench secagg: replayed session failed or its sum "
				        "is wrong\n");
				goto done;
			}
			if (r >= 0)
				v[w][r] = t;
		}
		if (r >= 0) {
			prg[r] = prg_seconds(self + pair, o->d, o->m, buf);
			xr[r] = x25519_seconds();
		}
	}
	double pmed = bench_median(prg, o->reps), xs = bench_median(xr, o->reps);
	for (int w = 0; w < nw; w++) {
		double med = bench_median(v[w], o->reps);
		json_t *pj = params_new(o, true);

		fprintf(stderr, "secagg_server_unmask W=%u: %.6f s", ws[w], med);
		if (ws[w] == 1)
			fprintf(stderr, "; of it PRG %.6f s (%.2f GB/s keystream), X25519 %u x %.1f us "
			        "= %.6f s, rest (Shamir, bookkeeping) %.6f s",
			        pmed, (double)(self + pair) * o->d * ((o->m + 7) / 8) / pmed / 1e9, pair,
			        1e6 * xs, pair * xs, med - pmed - pair * xs);
		fprintf(stderr, "\n");
		json_object_set_new(pj, "dropout", json_real(o->dropout));
		json_object_set_new(pj, "dropped", json_integer(o->dropped));
		json_object_set_new(pj, "threads", json_integer(ws[w]));
		bench_emit("secagg_server_unmask", pj, med, "s");
		json_decref(pj);
	}
	rc = 0;
done:
	free(nb);
	free(buf);
	return rc;
}

int
bench_secagg(int argc, char **argv)
{
	sab_opts o = {.n = 100, .dim = 100000, .m = 24, .threads = 1, .reps = 7, .dropout = 0.1,
	              .which = ONLY_KEY_SHARING | ONLY_MASKING | ONLY_UNMASK};
	uint32_t k_arg = 14, t_arg = 0;
	bool *drop = NULL;
	tape tp;
	int rc = 1;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		int head = bench_option_value("secagg", argc, argv, &i, usage, &v);
		bool ok = true, known = true;
		int tail;

		if (head >= 0)
			return head;
		if (strcmp(a, "--clients") == 0)
			ok = cli_parse_u32(v, 2, SA_N_MAX, &o.n);
		else if (strcmp(a, "--dim") == 0)
			ok = cli_parse_u32(v, 1, 1u << 30, &o.dim);
		else if (strcmp(a, "--neighbors") == 0)
			ok = cli_parse_u32(v, 1, SA_N_MAX, &k_arg);
		else if (strcmp(a, "--threshold") == 0)
			ok = cli_parse_u32(v, 1, SA_N_MAX, &t_arg);
		else if (strcmp(a, "--bits") == 0)
			ok = cli_parse_u32(v, 1, 32, &o.m);
		else if (strcmp(a, "--threads") == 0)
			ok = cli_parse_u32(v, 1, 256, &o.threads);
		else if (strcmp(a, "--reps") == 0)
			ok = cli_parse_u32(v, 1, SAB_MAX_REPS, &o.reps);
		else if (strcmp(a, "--dropout") == 0)
			ok = cli_parse_number(v, 0.0, 1.0, true, &o.dropout);
		else if (strcmp(a, "--ratio") == 0)
			ok = cli_parse_number(v, 0.0, 1.0, false, &o.ratio) && o.ratio > 0.0;
		else if (strcmp(a, "--only") == 0) {
			if (strcmp(v, "client_key_sharing") == 0)
				o.which = ONLY_KEY_SHARING;
			else if (strcmp(v, "client_masking") == 0)
				o.which = ONLY_MASKING;
			else if (strcmp(v, "server_unmask") == 0)
				o.which = ONLY_UNMASK;
			else
				ok = false;
		} else {
			known = false;
		}
		tail = bench_option_check("secagg", a, v, known, ok, usage);
		if (tail >= 0)
			return tail;
	}
	o.k = k_arg >= o.n - 1 ? o.n - 1 : k_arg;
	o.t = t_arg ? t_arg : o.k / 2 + 1;
	o.d = o.ratio > 0.0 ? cx_k_for_ratio(o.dim, o.ratio) : o.dim;
	o.dropped = (uint32_t)lround(o.dropout * o.n);
	sa_config c = {.n = o.n, .k = o.k, .t = o.t, .m = o.m, .d = o.d, .round = 1};
	memcpy(c.session, "shoal-bench secagg session id...", SA_KEY_BYTES);
	if (sa_config_check(&c) != SHOAL_OK) {
		fprintf(stderr, "shoal-bench secagg: bad session: want K even when K < N-1 and "
		        "1 <= T <= K+1 (N %u, K %u, T %u)\n", o.n, o.k, o.t);
		return 2;
	}
	if (sodium_init() < 0)
		return 1;
	if ((drop = calloc((size_t)o.n + 1, sizeof *drop)) == NULL)
		return 1;
	if (o.which & ONLY_UNMASK) {
		/* round(F*N) distinct clients, seeded: a partial Fisher-Yates */
		uint32_t *ids = malloc((size_t)o.n * sizeof *ids);
		rng g;

		if (ids == NULL)
			goto done;
		rng_init(&g, SAB_SEED, 0x64726f70ull);
		for (uint32_t i = 0; i < o.n; i++)
			ids[i] = i + 1;
		for (uint32_t i = 0; i < o.dropped; i++) {
			uint32_t j = i + rng_below(&g, o.n - i), tmp = ids[i];

			ids[i] = ids[j];
			ids[j] = tmp;
			drop[ids[i]] = true;
		}
		rng_fini(&g);
		free(ids);
	}
	fprintf(stderr, "secagg: N %u, %s K %u, T %u, m %u, d %u, %u dropped after sharing; "
	        "recording a session...\n", o.n, o.k == o.n - 1 ? "full" : "SecAgg+", o.k, o.t, o.m,
	        o.d, o.which & ONLY_UNMASK ? o.dropped : 0);
	double t0 = bench_now_s();
	if (tape_record(&tp, &c, drop, o.which & ONLY_UNMASK ? SA_PH_UNMASK : SA_PH_SHARE) != 0)
		goto done;
	fprintf(stderr, "secagg: recorded in %.2f s%s\n", bench_now_s() - t0,
	        o.which & ONLY_UNMASK ? "; its sum is exact" : "");
	rc = 0;
	if (o.which & ONLY_KEY_SHARING)
		rc = rc ? rc : run_key_sharing(&o, &tp);
	if (o.which & ONLY_MASKING)
		rc = rc ? rc : run_masking(&o, &tp);
	if (o.which & ONLY_UNMASK)
		rc = rc ? rc : run_unmask(&o, &tp, drop);
	tape_free(&tp);
done:
	free(drop);
	return rc;
}
