/* test_secagg.c - the SecAgg / SecAgg+ phase machines driven in memory:
 * exact sums under dropouts at every phase, clean aborts one dropout past
 * the threshold, opacity of a masked vector, the never-both rule, phase
 * errors, signatures, and the graph and threshold derivations. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "privacy/secagg.h"
#include "privacy/shamir.h"

#define MAXN 64

typedef struct run {
	sa_config c;
	uint32_t drop_at[MAXN + 1];  /* phase before which client i stops (0: never) */
	uint32_t *x[MAXN + 1];
	uint8_t idsk[MAXN + 1][SA_IDSK_BYTES];
	uint8_t idpk[MAXN][SA_IDPK_BYTES];
	/* captured UNMASK payloads */
	uint8_t *unmask[MAXN + 1];
	size_t unmask_len[MAXN + 1];
	sa_phase aborted_at;  /* 0 if the session completed */
	uint32_t sum[4096];
	bool in_u3[MAXN + 1];
	uint32_t lagrange_sets;
} run;

static void
setup(run *r, uint32_t n, uint32_t k, uint32_t t, uint32_t m, uint32_t d, bool signed_keys,
      uint64_t seed)
{
	memset(r, 0, sizeof *r);
	assert_true(sodium_init() >= 0);
	r->c = (sa_config){.n = n, .k = k, .t = t, .m = m, .d = d, .round = 7,
	                   .signed_keys = signed_keys};
	for (int i = 0; i < SA_KEY_BYTES; i++)
		r->c.session[i] = (uint8_t)(seed * 31 + (uint64_t)i);
	rng g;
	rng_init(&g, seed, 99);
	for (uint32_t i = 1; i <= n; i++) {
		r->x[i] = malloc(d * sizeof(uint32_t));
		for (uint32_t j = 0; j < d; j++)
			r->x[i][j] = (uint32_t)(rng_u64(&g) & (m == 32 ? 0xffffffffu : (1u << m) - 1));
		if (signed_keys) {
			uint8_t s[crypto_sign_SEEDBYTES];
			rng_bytes(&g, s, sizeof s);
			crypto_sign_seed_keypair(r->idpk[i - 1], r->idsk[i], s);
		}
	}
	rng_fini(&g);
}

static void
teardown(run *r)
{
	for (uint32_t i = 1; i <= r->c.n; i++) {
		free(r->x[i]);
		free(r->unmask[i]);
	}
}

/* Drives a whole session; returns the server's close result of the last
 * phase reached. */
static shoal_err
drive(run *r)
{
	const sa_config *c = &r->c;
	sa_server *s;
	sa_client *cl[MAXN + 1] = {0};
	rng rr[MAXN + 1];
	uint8_t *reply[MAXN + 1] = {0};
	size_t rlen[MAXN + 1] = {0};
	shoal_err e = SHOAL_OK;

	assert_int_equal(sa_server_new(c, c->signed_keys ? (const uint8_t(*)[SA_IDPK_BYTES])r->idpk
	                                                 : NULL, 2, &s), SHOAL_OK);
	for (uint32_t i = 1; i <= c->n; i++) {
		rng_init(&rr[i], 1000 + i, c->round);
		assert_int_equal(sa_client_new(c, i, c->signed_keys ? r->idsk[i] : NULL, &rr[i], &cl[i]),
		                 SHOAL_OK);
	}
	bool alive[MAXN + 1];
	for (uint32_t i = 1; i <= c->n; i++)
		alive[i] = true;
	for (sa_phase ph = SA_PH_ADVERTISE; ph <= SA_PH_UNMASK; ph++) {
		for (uint32_t i = 1; i <= c->n; i++) {
			if (!alive[i])
				continue;
			if (r->drop_at[i] == ph) {
				alive[i] = false;
				continue;
			}
			uint8_t *out = NULL;
			size_t olen = 0;
			shoal_err ce;
			switch (ph) {
			case SA_PH_ADVERTISE: ce = sa_client_advertise(cl[i], &out, &olen); break;
			case SA_PH_SHARE: ce = sa_client_share(cl[i], reply[i], rlen[i], &out, &olen); break;
			case SA_PH_MASKED:
				ce = sa_client_mask(cl[i], reply[i], rlen[i], r->x[i], &out, &olen);
				break;
			case SA_PH_CONSISTENCY:
				ce = sa_client_consistency(cl[i], reply[i], rlen[i], &out, &olen);
				break;
			default: ce = sa_client_unmask(cl[i], reply[i], rlen[i], &out, &olen); break;
			}
			free(reply[i]);
			reply[i] = NULL;
			if (ce != SHOAL_OK) {
				/* a client that sees too few peers leaves */
				assert_int_equal(ce, SHOAL_EABORTED);
				alive[i] = false;
				continue;
			}
			assert_int_equal(sa_server_recv(s, i, ph, out, olen), SHOAL_OK);
			if (ph == SA_PH_UNMASK) {
				r->unmask[i] = out;
				r->unmask_len[i] = olen;
			} else {
				free(out);
			}
		}
		e = sa_server_close(s);
		if (e != SHOAL_OK) {
			r->aborted_at = ph;
			assert_int_equal(sa_server_phase(s), SA_PH_ABORTED);
			assert_null(sa_server_sum(s));
			break;
		}
		if (ph == SA_PH_UNMASK)
			break;
		for (uint32_t i = 1; i <= c->n; i++) {
			if (!alive[i])
				continue;
			if (sa_server_reply(s, i, &reply[i], &rlen[i]) != SHOAL_OK)
				alive[i] = false; /* it did not send in this phase */
		}
	}
	if (e == SHOAL_OK) {
		memcpy(r->sum, sa_server_sum(s), c->d * sizeof(uint32_t));
		for (uint32_t i = 1; i <= c->n; i++)
			r->in_u3[i] = sa_server_in_u3(s, i);
		r->lagrange_sets = sa_server_lagrange_sets(s);
	}
	for (uint32_t i = 1; i <= c->n; i++) {
		free(reply[i]);
		sa_client_free(cl[i]);
		rng_fini(&rr[i]);
	}
	sa_server_free(s);
	return e;
}

static void
assert_exact(const run *r)
{
	uint32_t mask = r->c.m == 32 ? 0xffffffffu : (1u << r->c.m) - 1;
	for (uint32_t j = 0; j < r->c.d; j++) {
		uint32_t want = 0;
		for (uint32_t i = 1; i <= r->c.n; i++)
			if (r->drop_at[i] == 0 || r->drop_at[i] > SA_PH_MASKED)
				want += r->x[i][j];
		assert_int_equal(r->sum[j], want & mask);
	}
	for (uint32_t i = 1; i <= r->c.n; i++)
		assert_int_equal(r->in_u3[i], r->drop_at[i] == 0 || r->drop_at[i] > SA_PH_MASKED);
}

/* Full SecAgg, n = 10, k = 9, t = 5: up to n - t = 5 clients may drop,
 * at any phase; a sixth dropout aborts at that phase. */
static void
test_full_exact_under_dropouts(void **state)
{
	static run r;
	uint32_t t;
	assert_int_equal(sa_threshold(9, 0.4, 0.5, &t), SHOAL_OK);
	assert_int_equal(t, 5);
	const uint32_t drops[] = {0, 1, 3, 5}; /* 0%, 10%, 30%, the most allowed */
	for (sa_phase ph = SA_PH_ADVERTISE; ph <= SA_PH_UNMASK; ph++) {
		for (size_t q = 0; q < sizeof drops / sizeof drops[0]; q++) {
			setup(&r, 10, 9, t, 20, 300, false, 1 + ph * 10 + q);
			for (uint32_t i = 0; i < drops[q]; i++)
				r.drop_at[2 + i] = ph; /* clients 2.. drop before phase ph */
			assert_int_equal(drive(&r), SHOAL_OK);
			assert_exact(&r);
			/* every secret is shared among all n: one Lagrange set */
			assert_int_equal(r.lagrange_sets, 1);
			teardown(&r);
		}
		setup(&r, 10, 9, t, 20, 300, false, 77 + ph);
		for (uint32_t i = 0; i < 6; i++)
			r.drop_at[1 + i] = ph;
		assert_int_equal(drive(&r), SHOAL_EABORTED);
		assert_int_equal(r.aborted_at, ph);
		teardown(&r);
	}
}

/* Dropouts spread over several phases in one session. */
static void
test_full_mixed_phase_dropouts(void **state)
{
	static run r;
	setup(&r, 12, 11, 6, 24, 257, false, 5);
	r.drop_at[3] = SA_PH_SHARE;       /* advertised, never shared */
	r.drop_at[5] = SA_PH_MASKED;      /* shared, never sent input: masks recovered */
	r.drop_at[8] = SA_PH_CONSISTENCY; /* input counted, then gone */
	r.drop_at[12] = SA_PH_UNMASK;
	assert_int_equal(drive(&r), SHOAL_OK);
	assert_exact(&r);
	teardown(&r);
}

/* SecAgg+: n = 40, k = 8, t = 5. */
static void
test_plus_exact_and_neighbourhood_abort(void **state)
{
	static run r;
	uint32_t t;
	assert_int_equal(sa_threshold(8, 0.3, 0.5, &t), SHOAL_OK);
	assert_int_equal(t, 5);
	setup(&r, 40, 8, t, 22, 500, false, 11);
	assert_int_equal(drive(&r), SHOAL_OK);
	assert_exact(&r);
	assert_true(r.lagrange_sets > 1); /* one holder set per neighbourhood */
	teardown(&r);

	/* 10% dropped after sharing: their masks are reconstructed */
	setup(&r, 40, 8, t, 22, 500, false, 12);
	r.drop_at[4] = r.drop_at[17] = r.drop_at[29] = r.drop_at[33] = SA_PH_MASKED;
	assert_int_equal(drive(&r), SHOAL_OK);
	assert_exact(&r);
	teardown(&r);

	/* A whole neighbourhood but 3 drops: client 1's secrets cannot be
	 * reconstructed, so the round aborts instead of returning a wrong sum. */
	setup(&r, 40, 8, t, 22, 100, false, 13);
	uint32_t nb[8];
	sa_neighbors(&r.c, 1, nb);
	for (int q = 0; q < 6; q++)
		r.drop_at[nb[q]] = SA_PH_UNMASK;
	assert_int_equal(drive(&r), SHOAL_EABORTED);
	assert_int_equal(r.aborted_at, SA_PH_UNMASK);
	teardown(&r);
}

static void
test_signed_keys(void **state)
{
	static run r;
	setup(&r, 6, 5, 3, 16, 64, true, 21);
	r.drop_at[2] = SA_PH_MASKED;
	assert_int_equal(drive(&r), SHOAL_OK);
	assert_exact(&r);
	teardown(&r);

	/* A forged advertisement is refused by the server. */
	setup(&r, 6, 5, 3, 16, 64, true, 22);
	sa_server *s;
	sa_client *cl;
	uint8_t *out;
	size_t olen;
	assert_int_equal(sa_server_new(&r.c, (const uint8_t(*)[SA_IDPK_BYTES])r.idpk, 1, &s), SHOAL_OK);
	assert_int_equal(sa_client_new(&r.c, 2, r.idsk[3], NULL, &cl), SHOAL_OK); /* wrong key */
	assert_int_equal(sa_client_advertise(cl, &out, &olen), SHOAL_OK);
	assert_int_equal(sa_server_recv(s, 2, SA_PH_ADVERTISE, out, olen), SHOAL_ECRYPTO);
	free(out);
	sa_client_free(cl);
	sa_server_free(s);
	teardown(&r);
}

/* No client reveals both the self-mask seed share and the mask-key share
 * of the same peer; each peer's kind follows U3; a second unmask call is
 * refused. */
static void
test_never_both(void **state)
{
	static run r;
	setup(&r, 10, 9, 4, 16, 32, false, 31);
	r.drop_at[2] = r.drop_at[6] = SA_PH_MASKED; /* in U2, not in U3 */
	r.drop_at[9] = SA_PH_CONSISTENCY;           /* in U3 */
	assert_int_equal(drive(&r), SHOAL_OK);
	assert_exact(&r);
	int kind_of[MAXN + 1];
	memset(kind_of, -1, sizeof kind_of);
	for (uint32_t h = 1; h <= r.c.n; h++) {
		if (r.unmask[h] == NULL)
			continue;
		uint32_t cnt = r.unmask[h][0] | r.unmask[h][1] << 8 | r.unmask[h][2] << 16 |
		               (uint32_t)r.unmask[h][3] << 24;
		bool seen[MAXN + 1] = {0};
		for (uint32_t q = 0; q < cnt; q++) {
			const uint8_t *e = r.unmask[h] + 4 + q * (5 + SA_SHARE_BYTES);
			uint32_t j = e[0] | e[1] << 8 | e[2] << 16 | (uint32_t)e[3] << 24;
			assert_false(seen[j]); /* one entry per peer */
			seen[j] = true;
			assert_int_equal(e[4], r.in_u3[j] ? 0 : 1);
			if (kind_of[j] >= 0)
				assert_int_equal(kind_of[j], e[4]); /* all holders agree */
			kind_of[j] = e[4];
		}
	}
	assert_int_equal(kind_of[2], 1);
	assert_int_equal(kind_of[6], 1);
	assert_int_equal(kind_of[9], 0);
	teardown(&r);

	/* the client state machine refuses to unmask twice */
	sa_config c = {.n = 3, .k = 2, .t = 2, .m = 8, .d = 4, .round = 1};
	sa_client *cl;
	uint8_t *out;
	size_t len;
	assert_int_equal(sa_client_new(&c, 1, NULL, NULL, &cl), SHOAL_OK);
	assert_int_equal(sa_client_unmask(cl, (const uint8_t *)"\0\0\0\0", 4, &out, &len),
	                 SHOAL_ESTATE);
	assert_int_equal(sa_client_mask(cl, (const uint8_t *)"\0\0\0\0", 4, (uint32_t[4]){0}, &out,
	                                &len), SHOAL_ESTATE);
	sa_client_free(cl);
}

/* One client's masked vector is uniform over Z/2^m: chi-square over 256
 * bins for m = 8 with an all-zero input. */
static void
test_masked_vector_is_uniform(void **state)
{
	sa_config c = {.n = 3, .k = 2, .t = 2, .m = 8, .d = 51200, .round = 3};
	memset(c.session, 5, sizeof c.session);
	sa_client *cl[4];
	sa_server *s;
	uint8_t *out[4], *rep[4];
	size_t olen[4], rlen[4];
	uint32_t *zero = calloc(c.d, sizeof *zero);
	rng keys[4]; /* seeded, so the chi-square statistic is the same every run */

	assert_int_equal(sa_server_new(&c, NULL, 1, &s), SHOAL_OK);
	for (uint32_t i = 1; i <= 3; i++) {
		rng_init(&keys[i], 77, i);
		assert_int_equal(sa_client_new(&c, i, NULL, &keys[i], &cl[i]), SHOAL_OK);
		assert_int_equal(sa_client_advertise(cl[i], &out[i], &olen[i]), SHOAL_OK);
		assert_int_equal(sa_server_recv(s, i, SA_PH_ADVERTISE, out[i], olen[i]), SHOAL_OK);
		free(out[i]);
	}
	assert_int_equal(sa_server_close(s), SHOAL_OK);
	for (uint32_t i = 1; i <= 3; i++) {
		assert_int_equal(sa_server_reply(s, i, &rep[i], &rlen[i]), SHOAL_OK);
		assert_int_equal(sa_client_share(cl[i], rep[i], rlen[i], &out[i], &olen[i]), SHOAL_OK);
		free(rep[i]);
		assert_int_equal(sa_server_recv(s, i, SA_PH_SHARE, out[i], olen[i]), SHOAL_OK);
		free(out[i]);
	}
	assert_int_equal(sa_server_close(s), SHOAL_OK);
	assert_int_equal(sa_server_reply(s, 1, &rep[1], &rlen[1]), SHOAL_OK);
	assert_int_equal(sa_client_mask(cl[1], rep[1], rlen[1], zero, &out[1], &olen[1]), SHOAL_OK);
	assert_int_equal(olen[1], c.d); /* m = 8: one byte per value */
	double count[256] = {0};
	for (size_t j = 0; j < olen[1]; j++)
		count[out[1][j]]++;
	double chi = 0, e = (double)c.d / 256;
	for (int b = 0; b < 256; b++)
		chi += (count[b] - e) * (count[b] - e) / e;
	assert_true(chi < 330.5); /* 0.999 quantile of chi-square, 255 df */
	/* and it is not the input */
	assert_true(count[0] < 2 * e);
	free(out[1]);
	free(rep[1]);
	for (uint32_t i = 1; i <= 3; i++) {
		sa_client_free(cl[i]);
		rng_fini(&keys[i]);
	}
	sa_server_free(s);
	free(zero);
}

static void
test_phase_errors(void **state)
{
	sa_config c = {.n = 3, .k = 2, .t = 2, .m = 12, .d = 10, .round = 1};
	sa_server *s;
	sa_client *cl;
	uint8_t *out, *rep;
	size_t olen, rlen;

	assert_int_equal(sa_server_new(&c, NULL, 1, &s), SHOAL_OK);
	assert_int_equal(sa_client_new(&c, 1, NULL, NULL, &cl), SHOAL_OK);
	assert_int_equal(sa_client_advertise(cl, &out, &olen), SHOAL_OK);
	assert_int_equal(sa_client_advertise(cl, &rep, &rlen), SHOAL_ESTATE);
	assert_int_equal(sa_server_recv(s, 0, SA_PH_ADVERTISE, out, olen), SHOAL_EUNKNOWN);
	assert_int_equal(sa_server_recv(s, 4, SA_PH_ADVERTISE, out, olen), SHOAL_EUNKNOWN);
	assert_int_equal(sa_server_recv(s, 1, SA_PH_SHARE, out, olen), SHOAL_ESTATE);
	for (size_t l = 0; l < olen; l++)
		assert_int_equal(sa_server_recv(s, 1, SA_PH_ADVERTISE, out, l), SHOAL_ETRUNC);
	assert_int_equal(sa_server_recv(s, 1, SA_PH_ADVERTISE, out, olen), SHOAL_OK);
	assert_int_equal(sa_server_recv(s, 1, SA_PH_ADVERTISE, out, olen), SHOAL_EDUP);
	assert_int_equal(sa_server_expected(s), 3);
	assert_int_equal(sa_server_received(s), 1);
	free(out);
	/* only one of three advertised and t = 2: the round aborts */
	assert_int_equal(sa_server_close(s), SHOAL_EABORTED);
	assert_int_equal(sa_server_phase(s), SA_PH_ABORTED);
	assert_int_equal(sa_server_recv(s, 1, SA_PH_SHARE, (const uint8_t *)"", 0), SHOAL_ESTATE);
	assert_int_equal(sa_server_reply(s, 1, &rep, &rlen), SHOAL_ESTATE);
	sa_server_free(s);

	/* a malformed roster is refused by the client */
	uint8_t bad[4 + 68] = {1, 0, 0, 0, 1, 0, 0, 0}; /* lists the client itself */
	assert_int_equal(sa_client_share(cl, bad, sizeof bad, &out, &olen), SHOAL_EMALFORMED);
	assert_int_equal(sa_client_share(cl, bad, 3, &out, &olen), SHOAL_ETRUNC);
	assert_int_equal(sa_client_share(cl, bad, 20, &out, &olen), SHOAL_ETRUNC);
	sa_client_free(cl);

	/* config codec */
	uint8_t buf[SA_CONFIG_BYTES];
	sa_config back;
	sa_config_write(&c, buf);
	assert_int_equal(sa_config_read(&back, buf, sizeof buf), SHOAL_OK);
	assert_memory_equal(&back.session, &c.session, SA_KEY_BYTES);
	assert_int_equal(back.t, 2);
	assert_int_equal(sa_config_read(&back, buf, sizeof buf - 1), SHOAL_ETRUNC);
	buf[8] = 9; /* t > k + 1 */
	assert_int_equal(sa_config_read(&back, buf, sizeof buf), SHOAL_EMALFORMED);
}

static void
test_graph_and_bounds(void **state)
{
	sa_config c = {.n = 50, .k = 10, .t = 6, .m = 16, .d = 1, .round = 2};
	uint32_t nb[50][10];
	memset(c.session, 9, sizeof c.session);
	for (uint32_t i = 1; i <= 50; i++) {
		sa_neighbors(&c, i, nb[i - 1]);
		for (int q = 0; q < 10; q++) {
			assert_true(nb[i - 1][q] != i && nb[i - 1][q] >= 1 && nb[i - 1][q] <= 50);
			if (q > 0)
				assert_true(nb[i - 1][q] > nb[i - 1][q - 1]);
		}
	}
	for (uint32_t i = 1; i <= 50; i++) /* symmetric */
		for (int q = 0; q < 10; q++) {
			uint32_t j = nb[i - 1][q];
			bool back = false;
			for (int x = 0; x < 10; x++)
				back |= nb[j - 1][x] == i;
			assert_true(back);
		}
	uint32_t again[10];
	sa_neighbors(&c, 7, again);
	assert_memory_equal(again, nb[6], sizeof again);
	c.session[0] ^= 1; /* another session, another graph */
	uint32_t other[10];
	int same = 0;
	for (uint32_t i = 1; i <= 50; i++) {
		sa_neighbors(&c, i, other);
		same += memcmp(other, nb[i - 1], sizeof other) == 0;
	}
	assert_true(same < 50);

	uint32_t t, m;
	assert_int_equal(sa_threshold(14, 0.1, 0.5, &t), SHOAL_OK);
	assert_int_equal(t, 8);
	assert_int_equal(sa_threshold(99, 0.1, 0.5, &t), SHOAL_OK);
	assert_int_equal(t, 50);
	assert_int_equal(sa_threshold(14, 0.5, 0.5, &t), SHOAL_EINVAL); /* 7 left < 8 */
	assert_int_equal(sa_ring_bits(100, 600, 127, &m), SHOAL_OK);
	assert_int_equal(m, 24); /* 7,620,000 < 2^23 */
	assert_int_equal(sa_ring_bits(10, 1, 127, &m), SHOAL_OK);
	assert_int_equal(m, 12); /* 1270 < 2^11 */
	assert_int_equal(sa_ring_bits(65535, 65535, 65535, &m), SHOAL_EINVAL);
	c.k = 9; /* odd degree needs the full graph */
	assert_int_equal(sa_config_check(&c), SHOAL_EINVAL);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_exact_under_dropouts),
		cmocka_unit_test(test_full_mixed_phase_dropouts),
		cmocka_unit_test(test_plus_exact_and_neighbourhood_abort),
		cmocka_unit_test(test_signed_keys),
		cmocka_unit_test(test_never_both),
		cmocka_unit_test(test_masked_vector_is_uniform),
		cmocka_unit_test(test_phase_errors),
		cmocka_unit_test(test_graph_and_bounds),
	};
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
