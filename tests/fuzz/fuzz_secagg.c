/* fuzz_secagg.c - libFuzzer harness for the secure-aggregation payloads
 * (privacy/secagg.h): the TASK "sa" blob (sa_task_read), the session
 * configuration (sa_config_read), and every SA request the server parses
 * (sa_server_recv: ADVERTISE, SHARE, MASKED, CONSISTENCY, UNMASK) and every
 * SA_REPLY payload a client parses (roster, inbox, U3, signatures), each
 * inside a real session (tests/fuzz/sa_sim.h).
 *
 * Input: byte 0 picks the target (mod 3):
 *   0  sa_task_read: bytes 1-2 the model dimension - 1 (u16 LE), then the
 *      blob; what parses must write back byte for byte (sa_task_write)
 *   1  sa_config_read: the rest; what parses writes back byte for byte and
 *      has a well-formed neighbour graph
 *   2  a session: bytes 1-2 the selectors of sa_sim.h, then the payload that
 *      replaces the chosen one. When the replacement was refused (or is
 *      the genuine payload) the session must still complete with one client
 *      fewer and the exact sum of the inputs the server kept. */
#include "tests/fuzz/fuzz.h"

#include <string.h>

#include "common/log.h"
#include "privacy/shamir.h"
#include "tests/fuzz/sa_sim.h"

/* libsodium's guarded allocator maps and protects pages for every secret
 * buffer (mmap, mprotect, munmap: TLB flushes), which made one session
 * cost ~20 ms here. The harness puts secrets on the ASan heap instead,
 * which also bounds-checks them to the byte; the 0xdb fill is libsodium's
 * (no zeroed memory to hide a missing initialisation). */
void *
sodium_malloc(const size_t size)
{
	void *p = malloc(size ? size : 1);
	if (p != NULL)
		memset(p, 0xdb, size);
	return p;
}

void
sodium_free(void *p)
{
	free(p);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(-1);
	if (sodium_init() < 0)
		abort();
	return 0;
}

static void
task(const uint8_t *p, size_t n)
{
	if (n < 2)
		return;
	uint32_t dim = 1 + ((uint32_t)p[0] | (uint32_t)p[1] << 8);
	/* exact-size copy: ASan sees any overread */
	uint8_t *in = malloc(n - 2 ? n - 2 : 1);
	CHECK(in != NULL);
	memcpy(in, p + 2, n - 2);
	sa_task t;
	shoal_err e = sa_task_read(&t, in, n - 2, dim);
	if (e != SHOAL_OK) {
		CHECK(t.idx == NULL);
		free(in);
		return;
	}
	CHECK(sa_config_check(&t.c) == SHOAL_OK);
	CHECK(t.me >= 1 && t.me <= t.c.n && t.n_idx <= dim);
	for (uint32_t i = 0; i < t.n_idx; i++)
		CHECK(t.idx[i] < dim && (i == 0 || t.idx[i] > t.idx[i - 1]));
	size_t cap = sa_task_size_max(t.n_idx);
	uint8_t *out = malloc(cap);
	CHECK(out != NULL);
	long w = sa_task_write(&t, out, cap);
	CHECK(w == (long)(n - 2));
	CHECK(memcmp(out, in, n - 2) == 0);
	free(out);
	sa_task_fini(&t);
	free(in);
}

static void
config(const uint8_t *p, size_t n)
{
	uint8_t *in = malloc(n ? n : 1);
	CHECK(in != NULL);
	memcpy(in, p, n);
	sa_config c;
	if (sa_config_read(&c, in, n) != SHOAL_OK) {
		free(in);
		return;
	}
	CHECK(n == SA_CONFIG_BYTES && sa_config_check(&c) == SHOAL_OK);
	uint8_t out[SA_CONFIG_BYTES];
	sa_config_write(&c, out);
	CHECK(memcmp(out, in, SA_CONFIG_BYTES) == 0);
	free(in);
	/* the neighbour graph: k sorted distinct others, and symmetric (for
	 * sizes the harness can afford to check) */
	if (c.n > 512)
		return;
	uint32_t *nb = malloc(c.k * sizeof *nb), *back = malloc(c.k * sizeof *back);
	CHECK(nb != NULL && back != NULL);
	uint32_t i = 1 + c.round % c.n;
	sa_neighbors(&c, i, nb);
	for (uint32_t q = 0; q < c.k; q++) {
		CHECK(nb[q] >= 1 && nb[q] <= c.n && nb[q] != i && (q == 0 || nb[q] > nb[q - 1]));
		sa_neighbors(&c, nb[q], back);
		bool found = false;
		for (uint32_t r = 0; r < c.k; r++)
			found |= back[r] == i;
		CHECK(found);
	}
	free(back);
	free(nb);
}

/* The genuine payload the replacement stood in for has its documented
 * size (secagg.c; one case per payload kind, which also keeps a seed per
 * kind in the fuzzer's corpus). */
static void
genuine_size(const sa_sim *s)
{
	const sa_config *c = &s->c;
	const uint8_t *g = s->genuine;
	size_t n = s->genuine_len, sig = c->signed_keys ? SA_SIG_BYTES : 0;
	CHECK(g != NULL || n == 0);
	uint32_t cnt = n >= 4 ? fz_le32(g) : 0;
	if (!s->to_client) {
		switch (s->phase) {
		case SA_PH_ADVERTISE: CHECK(n == 2 * SA_KEY_BYTES + sig); break;
		case SA_PH_SHARE: CHECK(cnt <= c->k && n == 4 + (size_t)cnt * (4 + SA_CT_BYTES)); break;
		case SA_PH_MASKED: CHECK(n == ((size_t)c->d * c->m + 7) / 8); break;
		case SA_PH_CONSISTENCY: CHECK(n == sig); break;
		default: CHECK(cnt >= 1 && cnt <= c->k + 1 && n == 4 + (size_t)cnt * (5 + SA_SHARE_BYTES)); break;
		}
		return;
	}
	switch (s->phase) {
	case SA_PH_ADVERTISE:
		CHECK(cnt <= c->k && n == 4 + (size_t)cnt * (4 + 2 * SA_KEY_BYTES +
		                                          (sig ? SA_IDPK_BYTES + sig : 0)));
		break;
	case SA_PH_SHARE: CHECK(cnt <= c->k && n == 4 + (size_t)cnt * (4 + SA_CT_BYTES)); break;
	case SA_PH_MASKED: CHECK(cnt <= c->n && n == 4 + 4 * (size_t)cnt); break;
	default: CHECK(cnt <= c->n && n == 4 + (size_t)cnt * (4 + sig)); break;
	}
}

static void
session(const uint8_t *p, size_t n)
{
	if (n < 2)
		return;
	sa_sim s;
	sa_sim_setup(&s, p[0], p[1]);
	/* exact-size copy of the payload */
	uint8_t *fake = malloc(n - 2 ? n - 2 : 1);
	CHECK(fake != NULL);
	memcpy(fake, p + 2, n - 2);
	s.fake = fake;
	s.fake_len = n - 2;
	sa_sim_run(&s);
	genuine_size(&s);
	if (s.clean) {
		/* one client fewer never aborts these configurations */
		CHECK(s.done);
		uint32_t mask = s.c.m == 32 ? 0xffffffffu : (1u << s.c.m) - 1;
		for (uint32_t i = 1; i <= s.c.n; i++)
			CHECK(s.in_u3[i] == s.masked[i]);
		for (uint32_t j = 0; j < s.c.d; j++) {
			uint32_t want = 0;
			for (uint32_t i = 1; i <= s.c.n; i++)
				if (s.in_u3[i])
					want += s.x[i][j];
			CHECK(s.sum[j] == (want & mask));
		}
	}
	free(s.genuine);
	free(fake);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	switch (data[0] % 3) {
	case 0: task(data + 1, size - 1); break;
	case 1: config(data + 1, size - 1); break;
	default: session(data + 1, size - 1); break;
	}
	return 0;
}
