/* test_ckpt.c - the server checkpoint (server/ckpt.h): the file format
 * (round trip, the documented example byte for byte, every truncation,
 * every flipped byte, bad sections), the files (previous checkpoint kept,
 * a corrupt one set aside, a full disk), a server core that stops and
 * resumes in memory ending bit-identical to one that did not, and real
 * shoal-server processes: SIGKILLed at random points and resumed, and run
 * on a tmpfs that fills up. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <sys/socket.h>

#include "client/core.h"
#include "common/log.h"
#include "common/msg.h"
#include "ml/ml.h"
#include "privacy/rdp.h"
#include "server/ckpt.h"
#include "server/core.h"

#ifndef SHOAL_BIN_DIR
#define SHOAL_BIN_DIR "."
#endif
#ifndef SHOAL_DATA_DIR
#define SHOAL_DATA_DIR "data"
#endif

/* ---- helpers ----------------------------------------------------------- */

static void
make_tmpdir(char *dir, size_t n)
{
	snprintf(dir, n, "%.200s/shoal-ckpt-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(dir));
}

/* rm -r of a flat folder (and one level of subfolders). */
static void
remove_tree(const char *dir)
{
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

static uint8_t *
slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	*len = 0;
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	if (buf != NULL)
		*len = fread(buf, 1, (size_t)n, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

static void
spit(const char *path, const uint8_t *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(buf, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static bool
file_has(const char *path, const char *needle)
{
	size_t n;
	char *s = (char *)slurp(path, &n);
	bool found = s != NULL && strstr(s, needle) != NULL;
	free(s);
	return found;
}

/* Recompute the trailer after editing a file's bytes. */
static void
rehash(uint8_t *buf, size_t len)
{
	for (int i = 0; i < 8; i++)
		buf[8 + i] = (uint8_t)((uint64_t)len >> (8 * i));
	crypto_generichash(buf + len - SRV_CKPT_HASH_BYTES, SRV_CKPT_HASH_BYTES, buf,
	                   len - SRV_CKPT_HASH_BYTES, NULL, 0);
}

/* ---- a small synthetic state -------------------------------------------- */

#define D 4
static float P[D] = {1.5f, -2.0f, 0.0f, 3e-38f}, SH[D] = {1.25f, -2.5f, 1e-3f, 4};
static float M1[D] = {0.1f, 0.2f, -0.3f, 0}, V1[D] = {1e-6f, 2e-6f, 3e-6f, 4e-6f};
static float CH[D] = {0, -1, 1, 0.5f};
static uint8_t DQ[7] = {1, 2, 3, 4, 5, 6, 7};
static double ORD[3] = {2, 3, 64}, RDP[3] = {0.25, 0.5, 8}, STEP[3] = {0.01, 0.02, 0.5};
static srv_ckpt_client CL[3] = {
    {"alpha", 600, 0x0f}, {"b", 1, 0}, {"client-with-a-longer-name-0123456789", 70000, 0x7f}};

static void
full_state(srv_ckpt *c)
{
	memset(c, 0, sizeof *c);
	snprintf(c->model, sizeof c->model, "2nn");
	c->dim = D;
	c->seed = UINT64_C(0x0123456789abcdef);
	c->opt_kind = 2;
	c->downlink_q8 = true;
	c->secagg = 2;
	c->dp = 1;
	c->sampling = 1;
	c->sample_rate = 0.1;
	c->clip = 1.0;
	c->noise_multiplier = 1.1;
	c->delta = 1e-5;
	c->round = 17;
	c->version = 15;
	c->finished = true;
	c->accuracy = 0.9123;
	c->loss = NAN;
	c->params = P;
	c->shadow = SH;
	c->dq = DQ;
	c->dq_len = sizeof DQ;
	c->opt_m = M1;
	c->opt_v = V1;
	c->sa_scale = 0.125f;
	c->have_change = true;
	c->change = CH;
	c->dp_steps = 16;
	c->acc_n = 3;
	c->acc_delta = 1e-5;
	c->acc_orders = ORD;
	c->acc_rdp = RDP;
	c->acc_step = STEP;
	c->acc_step_n = 9;
	c->acc_step_q = NAN;
	c->acc_step_sigma = 1.1;
	c->acc_step_ok = true;
	c->dp_clip = 0.75;
	c->dp_sigma = 0.825;
	c->n_clients = 3;
	c->clients = CL;
}

static void
assert_same_bits(const void *a, const void *b, size_t n)
{
	if (n > 0) {
		assert_non_null(a);
		assert_non_null(b);
		assert_memory_equal(a, b, n);
	} else {
		assert_null(b);
	}
}

static void
assert_same_state(const srv_ckpt *a, const srv_ckpt *b)
{
	assert_string_equal(a->model, b->model);
	assert_int_equal(a->dim, b->dim);
	assert_true(a->seed == b->seed);
	assert_int_equal(a->opt_kind, b->opt_kind);
	assert_int_equal(a->downlink_q8, b->downlink_q8);
	assert_int_equal(a->secagg, b->secagg);
	assert_int_equal(a->dp, b->dp);
	assert_int_equal(a->sampling, b->sampling);
	assert_memory_equal(&a->sample_rate, &b->sample_rate, 8);
	assert_memory_equal(&a->clip, &b->clip, 8);
	assert_memory_equal(&a->noise_multiplier, &b->noise_multiplier, 8);
	assert_memory_equal(&a->delta, &b->delta, 8);
	assert_int_equal(a->round, b->round);
	assert_int_equal(a->version, b->version);
	assert_int_equal(a->finished, b->finished);
	assert_memory_equal(&a->accuracy, &b->accuracy, 8);
	assert_memory_equal(&a->loss, &b->loss, 8);
	size_t fd = (size_t)a->dim * sizeof(float);
	assert_same_bits(a->params, b->params, fd);
	assert_same_bits(a->shadow, b->shadow, a->shadow ? fd : 0);
	assert_int_equal(a->dq_len, b->dq_len);
	assert_same_bits(a->dq, b->dq, a->dq_len);
	assert_same_bits(a->opt_m, b->opt_m, a->opt_m ? fd : 0);
	assert_same_bits(a->opt_v, b->opt_v, a->opt_v ? fd : 0);
	assert_memory_equal(&a->sa_scale, &b->sa_scale, 4);
	assert_int_equal(a->have_change, b->have_change);
	assert_same_bits(a->change, b->change, a->change ? fd : 0);
	assert_true(a->dp_steps == b->dp_steps);
	assert_int_equal(a->acc_n, b->acc_n);
	if (a->dp != 0) {
		assert_memory_equal(&a->acc_delta, &b->acc_delta, 8);
		assert_memory_equal(a->acc_orders, b->acc_orders, 8 * a->acc_n);
		assert_memory_equal(a->acc_rdp, b->acc_rdp, 8 * a->acc_n);
		assert_memory_equal(a->acc_step, b->acc_step, 8 * a->acc_n);
		assert_true(a->acc_step_n == b->acc_step_n);
		assert_memory_equal(&a->acc_step_q, &b->acc_step_q, 8);
		assert_memory_equal(&a->acc_step_sigma, &b->acc_step_sigma, 8);
		assert_int_equal(a->acc_step_ok, b->acc_step_ok);
		assert_memory_equal(&a->dp_clip, &b->dp_clip, 8);
		assert_memory_equal(&a->dp_sigma, &b->dp_sigma, 8);
	}
	assert_int_equal(a->n_clients, b->n_clients);
	for (uint32_t i = 0; i < a->n_clients; i++) {
		assert_string_equal(a->clients[i].name, b->clients[i].name);
		assert_int_equal(a->clients[i].n_examples, b->clients[i].n_examples);
		assert_int_equal(a->clients[i].cx_caps, b->clients[i].cx_caps);
	}
}

static void
encode_full(uint8_t **buf, size_t *len)
{
	srv_ckpt c;
	full_state(&c);
	assert_int_equal(srv_ckpt_encode(&c, buf, len), SHOAL_OK);
}

/* ---- format ----------------------------------------------------------- */

static void
round_trip(void **state)
{
	srv_ckpt c, back;
	uint8_t *buf;
	size_t len;
	char why[256] = "";

	(void)state;
	full_state(&c);
	assert_int_equal(srv_ckpt_encode(&c, &buf, &len), SHOAL_OK);
	assert_int_equal(srv_ckpt_decode(buf, len, &back, why, sizeof why), SHOAL_OK);
	assert_true(back.owned);
	assert_same_state(&c, &back);
	srv_ckpt_fini(&back);
	free(buf);

	/* The smallest state: no downlink, no optimizer moments, no DP, no
	 * secure aggregation, no clients. */
	full_state(&c);
	c.downlink_q8 = false;
	c.shadow = NULL;
	c.dq = NULL;
	c.dq_len = 0;
	c.opt_m = c.opt_v = NULL;
	c.change = NULL;
	c.have_change = false;
	c.dp = 0;
	c.acc_n = 0;
	c.dp_steps = 0;
	c.n_clients = 0;
	c.clients = NULL;
	assert_int_equal(srv_ckpt_encode(&c, &buf, &len), SHOAL_OK);
	assert_int_equal(srv_ckpt_decode(buf, len, &back, why, sizeof why), SHOAL_OK);
	assert_same_state(&c, &back);
	assert_null(back.shadow);
	assert_null(back.acc_orders);
	srv_ckpt_fini(&back);
	free(buf);

	/* Refused on the way in: names out of range, DP without accountant. */
	full_state(&c);
	c.model[0] = '\0';
	assert_int_equal(srv_ckpt_encode(&c, &buf, &len), SHOAL_EINVAL);
	full_state(&c);
	c.acc_orders = NULL;
	assert_int_equal(srv_ckpt_encode(&c, &buf, &len), SHOAL_EINVAL);
	full_state(&c);
	c.dim = 0;
	assert_int_equal(srv_ckpt_encode(&c, &buf, &len), SHOAL_EINVAL);
}

/* The example at the top of server/ckpt.c and in PROTOCOL.md, checksum
 * included (checked against Python's hashlib.blake2b(digest_size=32)). */
static const uint8_t EXAMPLE[] = {
    0x53, 0x48, 0x43, 0x4b, 0x01, 0x00, 0x00, 0x00, 0xc8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x43, 0x4f, 0x4e, 0x46, 0x33, 0x00, 0x00, 0x00, 0x01, 0x6d, 0x02, 0x00, 0x00, 0x00,
    0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x50, 0x52, 0x4f, 0x47, 0x19, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe0, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0xf0, 0x3f, 0x4d, 0x4f, 0x44, 0x4c, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f,
    0x00, 0x00, 0x00, 0xc0, 0x4f, 0x50, 0x54, 0x4d, 0x01, 0x00, 0x00, 0x00, 0x00, 0x43, 0x4f,
    0x44, 0x43, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x43, 0x4c, 0x4e, 0x54,
    0x0e, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x61, 0x58, 0x02, 0x00, 0x00, 0x0f,
    0x00, 0x00, 0x00, 0xe0, 0x3e, 0x8b, 0x9c, 0xe2, 0xdb, 0x26, 0xe0, 0x5e, 0xe8, 0xaf, 0x63,
    0xdd, 0x5f, 0x74, 0x87, 0x54, 0x4d, 0xbb, 0x5f, 0x76, 0xb4, 0x13, 0x06, 0x15, 0xab, 0x8b,
    0x9c, 0xcb, 0x76, 0x61, 0xef,
};

static void
documented_example(void **state)
{
	float params[2] = {1.0f, -2.0f};
	srv_ckpt_client a = {"a", 600, 0x0f};
	srv_ckpt c, back;
	uint8_t *buf, hash[SRV_CKPT_HASH_BYTES];
	size_t len;

	(void)state;
	memset(&c, 0, sizeof c);
	snprintf(c.model, sizeof c.model, "m");
	c.dim = 2;
	c.seed = 7;
	c.round = 3;
	c.version = 4;
	c.accuracy = 0.5;
	c.loss = 1.0;
	c.params = params;
	c.n_clients = 1;
	c.clients = &a;
	assert_int_equal(srv_ckpt_encode(&c, &buf, &len), SHOAL_OK);
	assert_int_equal(len, sizeof EXAMPLE);
	assert_memory_equal(buf, EXAMPLE, sizeof EXAMPLE);
	crypto_generichash(hash, sizeof hash, EXAMPLE, sizeof EXAMPLE - sizeof hash, NULL, 0);
	assert_memory_equal(EXAMPLE + sizeof EXAMPLE - sizeof hash, hash, sizeof hash);
	assert_int_equal(srv_ckpt_decode(buf, len, &back, NULL, 0), SHOAL_OK);
	assert_same_state(&c, &back);
	srv_ckpt_fini(&back);
	free(buf);
}

static void
every_truncation_refused(void **state)
{
	uint8_t *buf;
	size_t len;
	srv_ckpt back;
	char why[256];

	(void)state;
	encode_full(&buf, &len);
	for (size_t n = 0; n < len; n++) {
		why[0] = '\0';
		assert_int_equal(srv_ckpt_decode(buf, n, &back, why, sizeof why), SHOAL_ETRUNC);
		assert_non_null(strstr(why, "truncated"));
		assert_null(back.params);
	}
	free(buf);
}

static void
every_flipped_byte_refused(void **state)
{
	uint8_t *buf;
	size_t len;
	srv_ckpt back;
	char why[256];

	(void)state;
	encode_full(&buf, &len);
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit += 7) {
			buf[i] ^= (uint8_t)(1u << bit);
			shoal_err e = srv_ckpt_decode(buf, len, &back, why, sizeof why);
			if (e == SHOAL_OK)
				fail_msg("byte %zu bit %d flipped: accepted", i, bit);
			assert_null(back.params);
			buf[i] ^= (uint8_t)(1u << bit);
		}
	}
	/* Each part of the header has its own message. */
	buf[0] = 'X';
	assert_int_equal(srv_ckpt_decode(buf, len, &back, why, sizeof why), SHOAL_EFORMAT);
	assert_non_null(strstr(why, "bad magic"));
	buf[0] = 'S';
	buf[4] = 2;
	assert_int_equal(srv_ckpt_decode(buf, len, &back, why, sizeof why), SHOAL_EVERSION);
	assert_non_null(strstr(why, "version 2"));
	buf[4] = 1;
	buf[len - 1] ^= 1;
	assert_int_equal(srv_ckpt_decode(buf, len, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "checksum"));
	buf[len - 1] ^= 1;
	/* A byte too many. */
	uint8_t *longer = malloc(len + 1);
	memcpy(longer, buf, len);
	longer[len] = 0;
	assert_int_equal(srv_ckpt_decode(longer, len + 1, &back, why, sizeof why), SHOAL_EFORMAT);
	free(longer);
	assert_int_equal(srv_ckpt_decode(buf, len, &back, why, sizeof why), SHOAL_OK);
	srv_ckpt_fini(&back);
	free(buf);
}

/* Offset of section tag in buf, or 0. */
static size_t
find_section(const uint8_t *buf, size_t len, const char *tag)
{
	for (size_t off = SRV_CKPT_HEADER_BYTES; off + 8 <= len - SRV_CKPT_HASH_BYTES;) {
		uint32_t l = (uint32_t)buf[off + 4] | (uint32_t)buf[off + 5] << 8 |
		             (uint32_t)buf[off + 6] << 16 | (uint32_t)buf[off + 7] << 24;
		if (memcmp(buf + off, tag, 4) == 0)
			return off;
		off += 8 + l;
	}
	return 0;
}

/* A section that ends right after its count: CLNT saying 3 clients, PRIV
 * saying 3 orders, with nothing after. The reader accepted both as empty
 * (no clients; DP with no accountant, which srv_ckpt_encode then refused).
 * Found by tests/fuzz/fuzz_ckpt (a 200-byte body whose CLNT is u32 64512
 * and nothing more). */
static void
counts_beyond_the_section_refused(void **state)
{
	uint8_t *buf, *b2;
	size_t len, off, end, n;
	srv_ckpt back;
	char why[256];

	(void)state;
	encode_full(&buf, &len);
	b2 = malloc(len);

	off = find_section(buf, len, "CLNT");
	assert_true(off > 0 && buf[off + 8] == 3);
	memcpy(b2, buf, off + 12);
	b2[off + 4] = 4, b2[off + 5] = b2[off + 6] = b2[off + 7] = 0;
	n = off + 12 + SRV_CKPT_HASH_BYTES;
	rehash(b2, n);
	assert_int_equal(srv_ckpt_decode(b2, n, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "section CLNT"));

	off = find_section(buf, len, "PRIV");
	end = find_section(buf, len, "CLNT");
	assert_true(off > 0 && end > off);
	memcpy(b2, buf, off + 28); /* steps u64, n u32, delta f64 */
	b2[off + 4] = 20, b2[off + 5] = b2[off + 6] = b2[off + 7] = 0;
	memcpy(b2 + off + 28, buf + end, len - end);
	n = off + 28 + len - end;
	rehash(b2, n);
	assert_int_equal(srv_ckpt_decode(b2, n, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "section PRIV"));
	free(b2);
	free(buf);
}

/* Sections with a valid checksum but wrong content: a writer bug, or a
 * later format this build half understands. */
static void
bad_sections_refused(void **state)
{
	uint8_t *buf, *b2;
	size_t len, off;
	srv_ckpt back;
	char why[256];

	(void)state;
	encode_full(&buf, &len);
	b2 = malloc(len + 64);

	/* An unknown section is skipped. */
	off = find_section(buf, len, "CLNT");
	assert_true(off > 0);
	memcpy(b2, buf, off);
	static const uint8_t extra[11] = {'X', 'T', 'R', 'A', 3, 0, 0, 0, 'a', 'b', 'c'};
	memcpy(b2 + off, extra, sizeof extra);
	memcpy(b2 + off + 11, buf + off, len - off);
	rehash(b2, len + 11);
	assert_int_equal(srv_ckpt_decode(b2, len + 11, &back, why, sizeof why), SHOAL_OK);
	srv_ckpt_fini(&back);

	/* A duplicate one is not. */
	memcpy(b2, buf, len);
	memcpy(b2 + find_section(b2, len, "PROG"), "MODL", 4);
	rehash(b2, len);
	assert_int_equal(srv_ckpt_decode(b2, len, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "twice"));

	/* A missing one: renamed to an unknown tag. */
	memcpy(b2, buf, len);
	memcpy(b2 + find_section(b2, len, "PRIV"), "XRIV", 4);
	rehash(b2, len);
	assert_int_equal(srv_ckpt_decode(b2, len, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "PRIV is missing"));

	/* A section whose length disagrees with the dimension: CONF says 5
	 * parameters, MODL holds 4. */
	memcpy(b2, buf, len);
	off = find_section(b2, len, "CONF");
	b2[off + 8 + 1 + 3] = 5; /* u8 n, "2nn", then dim */
	rehash(b2, len);
	assert_int_equal(srv_ckpt_decode(b2, len, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "section MODL"));

	/* A section length that runs past the end. */
	memcpy(b2, buf, len);
	off = find_section(b2, len, "CLNT");
	b2[off + 7] = 0x7f;
	rehash(b2, len);
	assert_int_equal(srv_ckpt_decode(b2, len, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "overruns"));

	/* DOWN present although CONF says no q8 downlink. */
	memcpy(b2, buf, len);
	off = find_section(b2, len, "CONF");
	b2[off + 8 + 1 + 3 + 4 + 8 + 1] = 0;
	rehash(b2, len);
	assert_int_equal(srv_ckpt_decode(b2, len, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "DOWN"));

	/* A client name with a NUL byte. */
	memcpy(b2, buf, len);
	off = find_section(b2, len, "CLNT");
	b2[off + 8 + 4 + 1 + 2] = 0; /* "alpha" -> "al\0ha" */
	rehash(b2, len);
	assert_int_equal(srv_ckpt_decode(b2, len, &back, why, sizeof why), SHOAL_EMALFORMED);
	assert_non_null(strstr(why, "client 1"));

	free(b2);
	free(buf);
}

static void
check_run_names_the_difference(void **state)
{
	srv_ckpt a, b;
	char why[512];

	(void)state;
	full_state(&a);
	full_state(&b);
	assert_int_equal(srv_ckpt_check_run(&a, &b, why, sizeof why), SHOAL_OK);
	b.seed = 8;
	assert_int_equal(srv_ckpt_check_run(&a, &b, why, sizeof why), SHOAL_EINVAL);
	assert_non_null(strstr(why, "--seed"));
	full_state(&b);
	snprintf(b.model, sizeof b.model, "logreg");
	assert_int_equal(srv_ckpt_check_run(&a, &b, why, sizeof why), SHOAL_EINVAL);
	assert_non_null(strstr(why, "logreg"));
	full_state(&b);
	b.noise_multiplier = 1.2;
	assert_int_equal(srv_ckpt_check_run(&a, &b, why, sizeof why), SHOAL_EINVAL);
	assert_non_null(strstr(why, "noise multiplier"));
	full_state(&b);
	b.downlink_q8 = false;
	assert_int_equal(srv_ckpt_check_run(&a, &b, why, sizeof why), SHOAL_EINVAL);
	assert_non_null(strstr(why, "--downlink"));

	/* The accountant goes back only into one with the same orders. */
	dp_accountant acc;
	assert_int_equal(dp_accountant_init(&acc, ORD, 3, 1e-5), SHOAL_OK);
	assert_int_equal(srv_ckpt_put_accountant(&a, &acc, why, sizeof why), SHOAL_OK);
	assert_memory_equal(acc.rdp, RDP, sizeof RDP);
	assert_memory_equal(acc.step, STEP, sizeof STEP);
	assert_true(acc.step_n == 9 && acc.step_ok);
	dp_accountant_fini(&acc);
	assert_int_equal(dp_accountant_init(&acc, NULL, 0, 1e-5), SHOAL_OK);
	assert_int_equal(srv_ckpt_put_accountant(&a, &acc, why, sizeof why), SHOAL_EINVAL);
	dp_accountant_fini(&acc);
}

/* ---- files ------------------------------------------------------------ */

static void
in_dir(char *out, size_t n, const char *dir, const char *name)
{
	snprintf(out, n, "%s/%s", dir, name);
}

/* A state whose round is r (to tell files apart). */
static void
encode_round(uint32_t r, uint8_t **buf, size_t *len)
{
	srv_ckpt c;
	full_state(&c);
	c.round = r;
	assert_int_equal(srv_ckpt_encode(&c, buf, len), SHOAL_OK);
}

static uint32_t
round_in(const char *path)
{
	size_t len;
	uint8_t *buf = slurp(path, &len);
	srv_ckpt c;
	assert_non_null(buf);
	assert_int_equal(srv_ckpt_decode(buf, len, &c, NULL, 0), SHOAL_OK);
	uint32_t r = c.round;
	srv_ckpt_fini(&c);
	free(buf);
	return r;
}

static void
files_keep_the_previous_one(void **state)
{
	char dir[256], cur[512], prev[512], bad[512], tmp[512], pth[600];
	uint8_t *b[4];
	size_t l[4];
	srv_ckpt c;
	bool found;

	(void)state;
	make_tmpdir(dir, sizeof dir);
	in_dir(cur, sizeof cur, dir, SRV_CKPT_FILE);
	in_dir(prev, sizeof prev, dir, SRV_CKPT_PREV);
	in_dir(bad, sizeof bad, dir, SRV_CKPT_BAD);
	in_dir(tmp, sizeof tmp, dir, SRV_CKPT_TMP);
	for (int i = 0; i < 4; i++)
		encode_round((uint32_t)i + 1, &b[i], &l[i]);

	/* Nothing yet. */
	assert_false(srv_ckpt_exists(dir));
	assert_int_equal(srv_ckpt_load(dir, &c, &found, NULL, 0), SHOAL_EIO);
	assert_false(found);

	assert_int_equal(srv_ckpt_write(dir, b[0], l[0]), SHOAL_OK);
	assert_true(srv_ckpt_exists(dir));
	assert_int_equal(round_in(cur), 1);
	assert_int_not_equal(access(prev, F_OK), 0);
	assert_int_equal(srv_ckpt_write(dir, b[1], l[1]), SHOAL_OK);
	assert_int_equal(round_in(cur), 2);
	assert_int_equal(round_in(prev), 1);
	assert_int_not_equal(access(tmp, F_OK), 0);

	/* A corrupt current file: refused, set aside, the previous one used. */
	uint8_t *bent = malloc(l[1]);
	memcpy(bent, b[1], l[1]);
	bent[l[1] / 2] ^= 0x10;
	spit(cur, bent, l[1]);
	assert_int_equal(srv_ckpt_load(dir, &c, &found, pth, sizeof pth), SHOAL_OK);
	assert_true(found);
	assert_int_equal(c.round, 1);
	assert_string_equal(pth, prev);
	srv_ckpt_fini(&c);
	assert_int_equal(access(bad, F_OK), 0);
	assert_int_not_equal(access(cur, F_OK), 0);
	/* The next save does not push the good previous file out. */
	assert_int_equal(srv_ckpt_write(dir, b[2], l[2]), SHOAL_OK);
	assert_int_equal(round_in(cur), 3);
	assert_int_equal(round_in(prev), 1);

	/* A truncated current file (say, a full disk under another tool). */
	spit(cur, b[3], l[3] - 40);
	assert_int_equal(srv_ckpt_load(dir, &c, &found, NULL, 0), SHOAL_OK);
	assert_int_equal(c.round, 1);
	srv_ckpt_fini(&c);

	/* Only the previous file (a save interrupted between its renames). */
	unlink(cur);
	assert_true(srv_ckpt_exists(dir));
	assert_int_equal(srv_ckpt_load(dir, &c, &found, NULL, 0), SHOAL_OK);
	assert_int_equal(c.round, 1);
	srv_ckpt_fini(&c);

	/* Both bad: refused, found. */
	spit(cur, bent, l[1]);
	spit(prev, b[3], 10);
	assert_int_equal(srv_ckpt_load(dir, &c, &found, NULL, 0), SHOAL_ETRUNC);
	assert_true(found);
	assert_null(c.params);

	free(bent);
	for (int i = 0; i < 4; i++)
		free(b[i]);
	remove_tree(dir);
}

/* A full disk, simulated with a file-size limit (write fails with EFBIG
 * once the limit is reached, SIGXFSZ ignored): the save fails, logs, and
 * leaves both earlier files as they were. */
static void
write_fails_cleanly_when_the_disk_is_full(void **state)
{
	char dir[256], cur[512], prev[512], tmp[512];
	uint8_t *b[3];
	size_t l[3];
	struct rlimit old, lim;

	(void)state;
	make_tmpdir(dir, sizeof dir);
	in_dir(cur, sizeof cur, dir, SRV_CKPT_FILE);
	in_dir(prev, sizeof prev, dir, SRV_CKPT_PREV);
	in_dir(tmp, sizeof tmp, dir, SRV_CKPT_TMP);
	for (int i = 0; i < 3; i++)
		encode_round((uint32_t)i + 1, &b[i], &l[i]);
	assert_int_equal(srv_ckpt_write(dir, b[0], l[0]), SHOAL_OK);
	assert_int_equal(srv_ckpt_write(dir, b[1], l[1]), SHOAL_OK);

	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	void (*sig)(int) = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = l[2] / 2;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	shoal_err e = srv_ckpt_write(dir, b[2], l[2]);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, sig);
	assert_int_equal(e, SHOAL_EIO);
	assert_int_equal(round_in(cur), 2);
	assert_int_equal(round_in(prev), 1);
	assert_int_not_equal(access(tmp, F_OK), 0);
	/* and with space again it goes on */
	assert_int_equal(srv_ckpt_write(dir, b[2], l[2]), SHOAL_OK);
	assert_int_equal(round_in(cur), 3);
	assert_int_equal(round_in(prev), 2);
	for (int i = 0; i < 3; i++)
		free(b[i]);
	remove_tree(dir);
}

/* The registry log: appended records survive a reopen; a torn last record
 * (a crash while appending) is cut off and the log goes on from there. */
static void
registry_log_survives_a_torn_record(void **state)
{
	char dir[256], path[512];
	srv_ckpt_log log;
	srv_ckpt_client *cl;
	uint32_t n;

	(void)state;
	make_tmpdir(dir, sizeof dir);
	in_dir(path, sizeof path, dir, SRV_CKPT_CLIENTS);
	assert_int_equal(srv_ckpt_log_open(dir, &log, &cl, &n), SHOAL_OK);
	assert_int_equal(n, 0);
	assert_null(cl);
	assert_true(srv_ckpt_exists(dir)); /* a run's state from now on */
	assert_int_equal(srv_ckpt_log_append(&log, CL, 2), SHOAL_OK);
	assert_int_equal(srv_ckpt_log_append(&log, CL + 2, 1), SHOAL_OK);
	srv_ckpt_log_close(&log);

	assert_int_equal(srv_ckpt_log_open(dir, &log, &cl, &n), SHOAL_OK);
	assert_int_equal(n, 3);
	for (int i = 0; i < 3; i++) {
		assert_string_equal(cl[i].name, CL[i].name);
		assert_int_equal(cl[i].n_examples, CL[i].n_examples);
		assert_int_equal(cl[i].cx_caps, CL[i].cx_caps);
	}
	free(cl);
	srv_ckpt_log_close(&log);

	/* half a record at the end */
	size_t len;
	uint8_t *buf = slurp(path, &len);
	FILE *f = fopen(path, "ab");
	assert_non_null(f);
	assert_int_equal(fwrite(buf + 8, 1, 11, f), 11);
	fclose(f);
	assert_int_equal(srv_ckpt_log_open(dir, &log, &cl, &n), SHOAL_OK);
	assert_int_equal(n, 3);
	free(cl);
	srv_ckpt_client d = {"delta", 5, 1};
	assert_int_equal(srv_ckpt_log_append(&log, &d, 1), SHOAL_OK);
	srv_ckpt_log_close(&log);
	assert_int_equal(srv_ckpt_log_open(dir, &log, &cl, &n), SHOAL_OK);
	assert_int_equal(n, 4);
	assert_string_equal(cl[3].name, "delta");
	free(cl);
	srv_ckpt_log_close(&log);

	/* a flipped byte inside record 2 ends the log after record 1 */
	free(buf);
	buf = slurp(path, &len);
	buf[8 + (4 + 1 + 5 + 8 + 16) + 6] ^= 1;
	spit(path, buf, len);
	assert_int_equal(srv_ckpt_log_open(dir, &log, &cl, &n), SHOAL_OK);
	assert_int_equal(n, 1);
	free(cl);
	srv_ckpt_log_close(&log);

	/* not a registry log */
	buf[0] = 'X';
	spit(path, buf, 8);
	assert_int_equal(srv_ckpt_log_open(dir, &log, &cl, &n), SHOAL_EFORMAT);
	assert_int_equal(log.fd, -1);
	free(buf);
	remove_tree(dir);
}

/* ---- the core, in memory ----------------------------------------------- */

#define NC 6

static struct {
	bool loaded;
	ml_dataset train, test;
	ml_partition part;
} W;

static void
need_mnist(void)
{
	if (W.loaded)
		return;
	if (ml_mnist_load(SHOAL_DATA_DIR, "train", &W.train) != SHOAL_OK ||
	    ml_mnist_load(SHOAL_DATA_DIR, "t10k", &W.test) != SHOAL_OK) {
		fprintf(stderr, "MNIST not found in %s (run scripts/setup.sh); skipping\n",
		        SHOAL_DATA_DIR);
		skip();
	}
	assert_int_equal(ml_partition_make("iid", &W.train, NC, 5, &W.part), SHOAL_OK);
	W.loaded = true;
}

typedef struct mem_run {
	const char *variant;   /* "plain", "secure", "dp" */
	uint32_t rounds;
	uint32_t crash_round;  /* 0: never; else crash once this round's checkpoint
	                          was taken... */
	uint32_t crash_steps;  /* ...and this many loop steps passed (0: before any
	                          reply of that step is delivered); the new server
	                          starts from the newest checkpoint */
	/* out */
	uint8_t *final;        /* srv_core_save at the end */
	size_t final_len;
	double epsilon;
	uint32_t resumed_at;   /* round of the checkpoint resumed from */
	uint32_t acked;        /* ACKs delivered in the round the crash cut short */
} mem_run;

static void
mem_config(const mem_run *r, srv_config *cfg)
{
	srv_config_defaults(cfg);
	cfg->model = "logreg";
	cfg->rounds = r->rounds;
	cfg->clients_per_round = 4;
	cfg->min_clients = NC;
	cfg->min_reports = 1;
	cfg->round_timeout_ms = 5000;
	cfg->secagg_phase_ms = 1000;
	cfg->lr = 0.1f;
	cfg->test = &W.test;
	cfg->seed = 11;
	cfg->compress = "none";
	cfg->downlink_q8 = true;
	if (strcmp(r->variant, "plain") == 0) {
		cfg->opt.kind = SRV_OPT_FEDADAM; /* two moment vectors to carry */
		cfg->opt.lr = 0.05;
	} else if (strcmp(r->variant, "secure") == 0) {
		cfg->secagg = SRV_SECAGG_FULL;
		cfg->compress = "topk:0.1,q8"; /* shared index set from the last change */
	} else if (strcmp(r->variant, "dp") == 0) {
		cfg->sampling = SRV_SAMPLING_POISSON;
		cfg->sample_rate = 0.6;
		cfg->dp = SRV_DP_CENTRAL;
		cfg->clip = 2.0;
		cfg->noise_multiplier = 0.05; /* little noise: the model still learns */
		cfg->clip_quantile = 0.5;     /* adaptive clipping: C moves every round */
		cfg->opt.kind = SRV_OPT_FEDAVGM;
	}
}

static srv_core *
mem_server(const srv_config *cfg, const uint8_t *img, size_t img_len)
{
	srv_core *s;
	srv_ckpt ck;
	char why[256];

	assert_int_equal(srv_core_new(cfg, &s), SHOAL_OK);
	srv_core_checkpoint_enable(s);
	if (img != NULL) {
		assert_int_equal(srv_ckpt_decode(img, img_len, &ck, why, sizeof why), SHOAL_OK);
		assert_int_equal(srv_core_restore(s, &ck), SHOAL_OK);
		srv_ckpt_fini(&ck);
	}
	return s;
}

/* Server core and NC client cores in memory (like tests/test_loop.c); the
 * server may "crash" (everything it had not sent is lost, clients see
 * transport errors) and be rebuilt from its last checkpoint. */
static void
mem_train(mem_run *r)
{
	srv_config cfg;
	cli_core *c[NC];
	ml_model *model;
	bool pending[NC] = {false}, fin[NC] = {false}, crashed = false;
	uint8_t *img = NULL;
	size_t img_len = 0, dim = ml_model_dim_of("logreg");
	uint32_t img_round = 0, after = 0, acked = 0;
	bool armed = false;
	uint64_t now = 0;
	int done = 0, guard = 0;

	need_mnist();
	mem_config(r, &cfg);
	srv_core *s = mem_server(&cfg, NULL, 0);
	assert_int_equal(ml_model_new("logreg", 10, &model), SHOAL_OK);
	for (int i = 0; i < NC; i++) {
		char name[16];
		snprintf(name, sizeof name, "c%d", i);
		cli_config cc = {.name = name, .model = "logreg", .dim = (uint32_t)dim,
		                 .n_examples = W.part.start[i + 1] - W.part.start[i],
		                 .cx_caps = MSG_CX_ALL, .error_feedback = true, .seed = 5};
		assert_int_equal(cli_core_new(&cc, &c[i]), SHOAL_OK);
	}
	while (done < NC && guard++ < 200000) {
		done = 0;
		for (int i = 0; i < NC; i++) {
			if (pending[i] || guard % (1 + i % 3) != 0) {
				/* staggered: client i acts every (1 + i % 3)th step, so a
				 * crash finds some updates acknowledged and others not */
				done += fin[i];
				continue;
			}
			cli_step st;
			cli_core_step(c[i], now, &st);
			if (st.action == CLI_DONE) {
				assert_int_equal(st.err, SHOAL_OK);
				fin[i] = true;
				done++;
			} else if (st.action == CLI_TRAIN) {
				const uint32_t *idx = W.part.idx + W.part.start[i];
				size_t n = W.part.start[i + 1] - W.part.start[i];
				ml_sgd_config sc = {.epochs = st.epochs, .batch = st.batch, .lr = st.lr,
				                    .seed = st.seed};
				double loss;
				assert_int_equal(ml_train_sgd(model, st.params, &W.train, idx, n, &sc, &loss),
				                 SHOAL_OK);
				assert_int_equal(cli_core_submit(c[i], (uint32_t)n, (float)loss, now), SHOAL_OK);
			} else if (st.action == CLI_SEND) {
				pending[i] = true;
				srv_core_on_request(s, (uint64_t)i, st.buf, st.len, now);
			}
		}
		srv_core_on_timer(s, now);
		uint8_t *ck;
		size_t ck_len;
		uint32_t ck_round;
		if (srv_core_take_checkpoint(s, &ck, &ck_len, &ck_round)) {
			free(img);
			img = ck; /* "written to disk" */
			img_len = ck_len;
			img_round = ck_round;
			armed |= ck_round == r->crash_round;
			acked = 0;
		}
		if (!crashed && armed && after++ == r->crash_steps) {
			/* Crash: nothing queued leaves; a new server starts from the file. */
			srv_reply rep;
			while (srv_core_pop_reply(s, &rep))
				free(rep.buf);
			srv_core_free(s);
			for (int i = 0; i < NC; i++)
				if (pending[i]) {
					pending[i] = false;
					cli_core_on_transport_error(c[i], SHOAL_ETRANSPORT, now);
				}
			s = mem_server(&cfg, img, img_len);
			r->resumed_at = img_round;
			r->acked = acked;
			crashed = true;
		}
		srv_reply rep;
		while (srv_core_pop_reply(s, &rep)) {
			msg m;
			assert_true(pending[rep.req]);
			pending[rep.req] = false;
			if (msg_decode(rep.buf, rep.len, &m) > 0 && m.type == MSG_ACK)
				acked++;
			cli_core_on_reply(c[rep.req], rep.buf, rep.len, now);
			free(rep.buf);
		}
		srv_event ev;
		while (srv_core_pop_event(s, &ev))
			;
		now += 10;
	}
	assert_int_equal(done, NC);
	assert_true(srv_core_finished(s));
	assert_int_equal(srv_core_round(s), r->rounds);
	assert_true(crashed == (r->crash_round != 0));
	assert_int_equal(srv_core_save(s, &r->final, &r->final_len), SHOAL_OK);
	r->epsilon = srv_core_epsilon(s);
	free(img);
	for (int i = 0; i < NC; i++)
		cli_core_free(c[i]);
	ml_model_free(model);
	srv_core_free(s);
}

/* Names the parts of two saved states that differ (for a failure message). */
static void
what_differs(const uint8_t *x, size_t xl, const uint8_t *y, size_t yl, char *out, size_t n)
{
	srv_ckpt a, b;
	size_t fd;

	snprintf(out, n, "undecodable");
	if (srv_ckpt_decode(x, xl, &a, NULL, 0) != SHOAL_OK)
		return;
	if (srv_ckpt_decode(y, yl, &b, NULL, 0) != SHOAL_OK) {
		srv_ckpt_fini(&a);
		return;
	}
	fd = (size_t)a.dim * sizeof(float);
	snprintf(out, n, "%s%s%s%s%s%s%s%s%s%s", a.round != b.round || a.version != b.version ?
	         " round/version" : "", memcmp(a.params, b.params, fd) ? " params" : "",
	         a.shadow && memcmp(a.shadow, b.shadow, fd) ? " shadow" : "",
	         a.dq_len != b.dq_len || (a.dq_len && memcmp(a.dq, b.dq, a.dq_len)) ? " dq" : "",
	         (a.opt_m && memcmp(a.opt_m, b.opt_m, fd)) || (a.opt_v && memcmp(a.opt_v, b.opt_v, fd))
	             ? " optimizer" : "",
	         a.change && memcmp(a.change, b.change, fd) ? " change" : "",
	         memcmp(&a.sa_scale, &b.sa_scale, 4) ? " scale" : "",
	         a.n_clients != b.n_clients ? " registry" : "",
	         a.acc_n && memcmp(a.acc_rdp, b.acc_rdp, 8 * a.acc_n) ? " accountant" : "",
	         memcmp(&a.dp_clip, &b.dp_clip, 8) ? " clip" : "");
	srv_ckpt_fini(&a);
	srv_ckpt_fini(&b);
}

/* The uninterrupted run and runs that crash at the given points end with
 * the same saved state, byte for byte: model, shadow model and downlink
 * delta, optimizer moments, codec state, accountant, registry, accuracy. */
static void
resume_matches(const char *variant, const uint32_t (*points)[2], size_t n_points)
{
	mem_run base = {.variant = variant, .rounds = 4};
	srv_ckpt a;
	bool mid = false;

	mem_train(&base);
	assert_int_equal(srv_ckpt_decode(base.final, base.final_len, &a, NULL, 0), SHOAL_OK);
	if (!(a.accuracy > 0.6)) /* it trained (secure rounds send 10%) */
		fail_msg("%s: accuracy %.4f after %u rounds", variant, a.accuracy, a.round);
	srv_ckpt_fini(&a);
	for (size_t i = 0; i < n_points; i++) {
		mem_run r = {.variant = variant, .rounds = 4, .crash_round = points[i][0],
		             .crash_steps = points[i][1]};
		mem_train(&r);
		assert_true(r.resumed_at >= points[i][0]);
		if (r.final_len != base.final_len || memcmp(r.final, base.final, r.final_len) != 0) {
			char d[256];
			what_differs(base.final, base.final_len, r.final, r.final_len, d, sizeof d);
			fail_msg("%s: crash %u steps after round %u's checkpoint (resumed after round "
			         "%u): the final state differs:%s", variant, points[i][1], points[i][0],
			         r.resumed_at, d);
		}
		assert_memory_equal(&r.epsilon, &base.epsilon, sizeof r.epsilon);
		mid |= r.acked > 0;
		free(r.final);
	}
	/* but for secure rounds (see below), some crash found updates acknowledged */
	assert_true(mid || strcmp(variant, "secure") == 0);
	free(base.final);
}

/* FedAdam, q8 downlink, dense updates: crashes right at a round boundary
 * (before its replies leave) and in the middle of the next round, with
 * some of its updates acknowledged. */
static void
core_resume_bit_identical_plain(void **state)
{
	static const uint32_t points[][2] = {{1, 0}, {1, 2}, {1, 6}, {2, 5}, {3, 1}};
	(void)state;
	resume_matches("plain", points, 5);
}

/* Secure aggregation with a shared index set from the last public change
 * and the adaptive scale: crashes at round boundaries, before the next
 * round's TASKs leave (the clients' UNMASK acknowledgements are lost too).
 * Later crash points are not bit-identical, for a reason on the clients:
 * a client whose secure round is cut short keeps its whole input in its
 * error-feedback residual (delayed, not lost), and the re-run round then
 * trains the same delta once more on top of it. */
static void
core_resume_bit_identical_secure(void **state)
{
	static const uint32_t points[][2] = {{1, 0}, {2, 0}, {3, 0}};
	(void)state;
	resume_matches("secure", points, 3);
}

/* Central DP with Poisson sampling and adaptive clipping: the accountant,
 * the clip bound and the noise streams continue exactly (epsilon compared
 * bit for bit too). */
static void
core_resume_bit_identical_dp(void **state)
{
	static const uint32_t points[][2] = {{1, 0}, {1, 6}, {2, 5}, {3, 3}};
	(void)state;
	resume_matches("dp", points, 3);
}

/* What the core refuses to resume. */
static void
core_restore_refuses_other_settings(void **state)
{
	srv_config cfg;
	srv_core *s, *t;
	uint8_t *img;
	size_t len;
	srv_ckpt ck;

	(void)state;
	srv_config_defaults(&cfg);
	cfg.model = "logreg";
	cfg.opt.kind = SRV_OPT_FEDADAM;
	assert_int_equal(srv_core_new(&cfg, &s), SHOAL_OK);
	assert_int_equal(srv_core_save(s, &img, &len), SHOAL_OK);
	assert_int_equal(srv_ckpt_decode(img, len, &ck, NULL, 0), SHOAL_OK);
	/* the same settings: fine */
	assert_int_equal(srv_core_new(&cfg, &t), SHOAL_OK);
	assert_int_equal(srv_core_restore(t, &ck), SHOAL_OK);
	srv_core_free(t);
	/* another seed, optimizer, downlink */
	srv_config o = cfg;
	o.seed = 2;
	assert_int_equal(srv_core_new(&o, &t), SHOAL_OK);
	assert_int_equal(srv_core_restore(t, &ck), SHOAL_EINVAL);
	srv_core_free(t);
	o = cfg;
	o.opt.kind = SRV_OPT_FEDAVG;
	assert_int_equal(srv_core_new(&o, &t), SHOAL_OK);
	assert_int_equal(srv_core_restore(t, &ck), SHOAL_EINVAL);
	srv_core_free(t);
	o = cfg;
	o.downlink_q8 = false;
	assert_int_equal(srv_core_new(&o, &t), SHOAL_OK);
	assert_int_equal(srv_core_restore(t, &ck), SHOAL_EINVAL);
	srv_core_free(t);
	/* more clients than --max-clients */
	ck.n_clients = 3;
	srv_ckpt_client cl[3] = {{"x", 1, 0}, {"y", 1, 0}, {"z", 1, 0}};
	srv_ckpt_client *keep = ck.clients;
	ck.clients = cl;
	o = cfg;
	o.max_clients = 2;
	o.min_clients = o.clients_per_round = 2;
	o.min_reports = 1;
	assert_int_equal(srv_core_new(&o, &t), SHOAL_OK);
	assert_int_equal(srv_core_restore(t, &ck), SHOAL_EINVAL);
	srv_core_free(t);
	/* a name twice */
	cl[1] = cl[0];
	assert_int_equal(srv_core_new(&cfg, &t), SHOAL_OK);
	assert_int_equal(srv_core_restore(t, &ck), SHOAL_EINVAL);
	srv_core_free(t);
	ck.clients = keep;
	ck.n_clients = 0;
	srv_ckpt_fini(&ck);
	free(img);
	srv_core_free(s);
}

/* ---- real processes -------------------------------------------------- */

#define WATCHDOG_S 500
#define MAXP 16

typedef struct proc {
	pid_t pid;
	bool exited;
	int status;
	char name[32], out[512], err[512];
} proc;

static struct {
	char dir[256], url[64], state[320], metrics[320];
	int port;
	proc p[MAXP];
	int np;
	uint64_t deadline;
	char mnt[320]; /* a tmpfs to unmount, or "" */
} E;

static uint64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void
kill_all(void)
{
	for (int i = 0; i < E.np; i++)
		if (E.p[i].pid > 0 && !E.p[i].exited) {
			kill(E.p[i].pid, SIGKILL);
			waitpid(E.p[i].pid, &E.p[i].status, 0);
			E.p[i].exited = true;
		}
}

static void
unmount_tmpfs(void)
{
	if (E.mnt[0] != '\0') {
		umount2(E.mnt, MNT_DETACH);
		E.mnt[0] = '\0';
	}
}

static void
at_exit(void)
{
	kill_all();
	unmount_tmpfs();
}

static void
on_alarm(int sig)
{
	static const char m[] = "test_ckpt: watchdog expired, killing all children\n";
	(void)sig;
	for (int i = 0; i < E.np; i++)
		if (E.p[i].pid > 0 && !E.p[i].exited)
			kill(E.p[i].pid, SIGKILL);
	if (E.mnt[0] != '\0')
		umount2(E.mnt, MNT_DETACH);
	if (write(STDERR_FILENO, m, sizeof m - 1) < 0) {
		/* nothing more to do */
	}
	_exit(1);
}

static void
tail(const char *label, const char *path, long max)
{
	size_t n;
	char *s = (char *)slurp(path, &n);
	if (s == NULL)
		return;
	fprintf(stderr, "----- %s (%s) -----\n%s\n", label, path,
	        (long)n > max ? s + n - (size_t)max : s);
	free(s);
}

static void
die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
die(const char *fmt, ...)
{
	char text[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	kill_all();
	unmount_tmpfs();
	for (int i = 0; i < E.np; i++)
		tail(E.p[i].name, E.p[i].err, 2500);
	fprintf(stderr, "----- logs kept in %s -----\n", E.dir);
	fail_msg("%s", text);
}

#define CHECK(cond, ...)      \
	do {                      \
		if (!(cond))          \
			die(__VA_ARGS__); \
	} while (0)

typedef struct args {
	char *v[40];
	char s[39][400];
	int n;
} args;

static void
arg(args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
arg(args *a, const char *fmt, ...)
{
	va_list ap;
	assert_true(a->n < 39);
	va_start(ap, fmt);
	vsnprintf(a->s[a->n], sizeof a->s[a->n], fmt, ap);
	va_end(ap);
	a->v[a->n] = a->s[a->n];
	a->v[++a->n] = NULL;
}

static proc *
spawn(const char *name, const args *a)
{
	CHECK(E.np < MAXP, "too many processes");
	proc *p = &E.p[E.np++];
	char dir[sizeof E.dir];
	memcpy(dir, E.dir, sizeof dir);
	memset(p, 0, sizeof *p);
	snprintf(p->name, sizeof p->name, "%s", name);
	snprintf(p->out, sizeof p->out, "%.256s/%.31s.out", dir, name);
	snprintf(p->err, sizeof p->err, "%.256s/%.31s.err", dir, name);
	int fo = open(p->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int fe = open(p->err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int fi = open("/dev/null", O_RDONLY | O_CLOEXEC);
	CHECK(fo >= 0 && fe >= 0 && fi >= 0, "cannot create log files in %s", E.dir);
	pid_t pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(fi, STDIN_FILENO);
		dup2(fo, STDOUT_FILENO);
		dup2(fe, STDERR_FILENO);
		execv(a->v[0], a->v);
		_exit(127);
	}
	close(fo);
	close(fe);
	close(fi);
	p->pid = pid;
	return p;
}

static bool
poll_exit(proc *p)
{
	if (!p->exited && waitpid(p->pid, &p->status, WNOHANG) == p->pid)
		p->exited = true;
	return p->exited;
}

static void
expect_exit(proc *p, int code)
{
	while (!poll_exit(p)) {
		CHECK(now_ms() < E.deadline, "watchdog: %s did not exit", p->name);
		sleep_ms(20);
	}
	CHECK(WIFEXITED(p->status) && WEXITSTATUS(p->status) == code,
	      "%s ended with status 0x%x, expected exit %d", p->name, p->status, code);
}

static int
free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;
	assert_true(fd >= 0);
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static void
e2e_begin(void)
{
	static bool once;
	char path[600];
	struct sigaction sa;

	snprintf(path, sizeof path, "%s/t10k-images-idx3-ubyte", SHOAL_DATA_DIR);
	if (access(path, R_OK) != 0) {
		fprintf(stderr, "MNIST not found in %s (run scripts/setup.sh); skipping\n",
		        SHOAL_DATA_DIR);
		skip();
	}
	if (!once) {
		atexit(at_exit);
		once = true;
	}
	memset(&E, 0, sizeof E);
	make_tmpdir(E.dir, sizeof E.dir);
	snprintf(E.state, sizeof E.state, "%s/state", E.dir);
	snprintf(E.metrics, sizeof E.metrics, "%s/metrics.jsonl", E.dir);
	E.port = free_port();
	snprintf(E.url, sizeof E.url, "tcp://127.0.0.1:%d", E.port);
	E.deadline = now_ms() + WATCHDOG_S * 1000u;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	alarm(WATCHDOG_S + 30);
	signal(SIGPIPE, SIG_IGN);
	setenv("OPENBLAS_NUM_THREADS", "1", 1);
}

static void
e2e_end(void)
{
	kill_all();
	unmount_tmpfs();
	alarm(0);
	if (getenv("SHOAL_E2E_KEEP") != NULL)
		fprintf(stderr, "logs kept in %s\n", E.dir);
	else
		remove_tree(E.dir);
}

#define E2E_ROUNDS 3
#define E2E_CLIENTS 3

/* Lingers 1.5 s after the last round, or linger_ms. */
static proc *
start_server_linger(const char *name, bool resume, uint32_t rounds, uint32_t linger_ms)
{
	args a = {0};
	arg(&a, "%s/shoal-server", SHOAL_BIN_DIR);
	arg(&a, "--listen");
	arg(&a, "%s", E.url);
	arg(&a, "--model");
	arg(&a, "logreg");
	arg(&a, "--data-dir");
	arg(&a, "%s", SHOAL_DATA_DIR);
	arg(&a, "--compress");
	arg(&a, "none");
	arg(&a, "--rounds");
	arg(&a, "%u", rounds);
	arg(&a, "--clients-per-round");
	arg(&a, "%d", E2E_CLIENTS - 1); /* a choice for the selection to make */
	arg(&a, "--min-clients");
	arg(&a, "%d", E2E_CLIENTS);
	arg(&a, "--seed");
	arg(&a, "7");
	arg(&a, "--hold");
	arg(&a, "300");
	arg(&a, "--linger");
	arg(&a, "%u", linger_ms);
	arg(&a, "--round-timeout");
	arg(&a, "60");
	arg(&a, "--metrics");
	arg(&a, "%s", E.metrics);
	arg(&a, "--state-dir");
	arg(&a, "%s", E.state);
	if (resume)
		arg(&a, "--resume");
	return spawn(name, &a);
}

static proc *
start_server(const char *name, bool resume, uint32_t rounds)
{
	return start_server_linger(name, resume, rounds, 1500);
}

static void
start_clients(proc **c, const char *tag, unsigned train_delay_ms)
{
	for (int i = 0; i < E2E_CLIENTS; i++) {
		args a = {0};
		char name[32];
		arg(&a, "%s/shoal-client", SHOAL_BIN_DIR);
		arg(&a, "--connect");
		arg(&a, "%s", E.url);
		arg(&a, "--data-dir");
		arg(&a, "%s", SHOAL_DATA_DIR);
		arg(&a, "--model");
		arg(&a, "logreg");
		arg(&a, "--partition");
		arg(&a, "%d/%d", i, E2E_CLIENTS);
		arg(&a, "--name");
		arg(&a, "ck-client-%d", i);
		if (train_delay_ms > 0) {
			arg(&a, "--train-delay");
			arg(&a, "%u", train_delay_ms);
		}
		snprintf(name, sizeof name, "%s-client%d", tag, i);
		c[i] = spawn(name, &a);
	}
}

static size_t
count_lines(const char *path)
{
	size_t len, n = 0;
	char *s = (char *)slurp(path, &len);
	for (size_t i = 0; s != NULL && i < len; i++)
		n += s[i] == '\n';
	free(s);
	return n;
}

/* The state in DIR/state/server.ckpt. */
static void
read_state(const char *file, srv_ckpt *ck)
{
	char path[700], why[256] = "";
	size_t len;
	snprintf(path, sizeof path, "%s/%s", E.state, file);
	uint8_t *buf = slurp(path, &len);
	CHECK(buf != NULL, "no checkpoint %s", path);
	shoal_err e = srv_ckpt_decode(buf, len, ck, why, sizeof why);
	free(buf);
	CHECK(e == SHOAL_OK, "checkpoint %s refused: %s", path, why);
}

/* What must match the uninterrupted run: the model and everything the
 * next round would use. The registry's ids follow arrival order and may
 * differ. */
static bool
same_model(const srv_ckpt *a, const srv_ckpt *b)
{
	size_t fd = (size_t)a->dim * sizeof(float);
	return a->dim == b->dim && a->round == b->round && a->version == b->version &&
	       memcmp(a->params, b->params, fd) == 0 &&
	       (a->shadow == NULL) == (b->shadow == NULL) &&
	       (a->shadow == NULL || memcmp(a->shadow, b->shadow, fd) == 0) &&
	       a->dq_len == b->dq_len && (a->dq_len == 0 || memcmp(a->dq, b->dq, a->dq_len) == 0) &&
	       memcmp(&a->accuracy, &b->accuracy, sizeof a->accuracy) == 0;
}

static uint64_t
splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Issue 8's crash acceptance: shoal-server SIGKILLed at a random moment of
 * each of 10 runs, restarted with --resume while its clients keep running;
 * every run ends with the model of the uninterrupted run, bit for bit.
 * A kill moment is a random number k of rounds finished (0..all, read from
 * the metrics file) plus a random delay up to the length of a round of
 * the uninterrupted run (for k = 0: up to its first round's end), so kills
 * land during start-up, inside rounds at any stage, and after the last.
 * SHOAL_CKPT_SEED picks other moments. */
static void
e2e_sigkill_and_resume_bit_identical(void **state)
{
	proc *server, *c[E2E_CLIENTS];
	srv_ckpt base, got;
	uint64_t seed = 20240801, t0, t_end[E2E_ROUNDS + 1] = {0}, first, round_ms;
	size_t lines;

	(void)state;
	if (getenv("SHOAL_CKPT_SEED") != NULL)
		seed = strtoull(getenv("SHOAL_CKPT_SEED"), NULL, 10);
	e2e_begin();
	t0 = now_ms();
	server = start_server("base-server", false, E2E_ROUNDS);
	start_clients(c, "base", 0);
	while (!poll_exit(server)) {
		lines = count_lines(E.metrics);
		if (lines <= E2E_ROUNDS && t_end[lines] == 0)
			t_end[lines] = now_ms() - t0;
		CHECK(now_ms() < E.deadline, "watchdog: the uninterrupted server did not exit");
		sleep_ms(5);
	}
	expect_exit(server, 0);
	for (int i = 0; i < E2E_CLIENTS; i++)
		expect_exit(c[i], 0);
	read_state(SRV_CKPT_FILE, &base);
	CHECK(base.round == E2E_ROUNDS && base.accuracy > 0.85,
	      "uninterrupted run: round %u accuracy %.4f", base.round, base.accuracy);
	CHECK(t_end[1] > 0 && t_end[E2E_ROUNDS] > t_end[1], "the uninterrupted run's metrics "
	      "lines were not seen one by one");
	first = t_end[1];
	round_ms = (t_end[E2E_ROUNDS] - t_end[1]) / (E2E_ROUNDS - 1) + 1;
	fprintf(stderr, "uninterrupted run: first round over after %llu ms, then %llu ms a round; "
	        "kill moments from seed %llu\n", (unsigned long long)first,
	        (unsigned long long)round_ms, (unsigned long long)seed);

	for (int run = 0; run < 10; run++) {
		/* A fresh state folder each run, same port and client names. */
		remove_tree(E.state);
		unlink(E.metrics);
		E.np = 0;
		uint32_t k = (uint32_t)(splitmix(&seed) % (E2E_ROUNDS + 1));
		uint64_t delay = splitmix(&seed) % (k == 0 ? first : round_ms);
		char name[32];
		snprintf(name, sizeof name, "run%d-server", run);
		server = start_server(name, false, E2E_ROUNDS);
		snprintf(name, sizeof name, "run%d", run);
		start_clients(c, name, 0);
		while (count_lines(E.metrics) < k && !poll_exit(server)) {
			CHECK(now_ms() < E.deadline, "watchdog: run %d never finished round %u", run, k);
			sleep_ms(2);
		}
		t0 = now_ms();
		while (now_ms() - t0 < delay && !poll_exit(server))
			sleep_ms(2);
		bool finished_first = poll_exit(server);
		if (!finished_first) {
			kill(server->pid, SIGKILL);
			while (!poll_exit(server))
				sleep_ms(5);
		}
		size_t done = count_lines(E.metrics);
		uint32_t saved = 0;
		char path[700];
		snprintf(path, sizeof path, "%s/%s", E.state, SRV_CKPT_FILE);
		if (access(path, F_OK) == 0) {
			read_state(SRV_CKPT_FILE, &got);
			saved = got.round;
			srv_ckpt_fini(&got);
		}
		/* A client whose request was in flight when the server died
		 * retries only after its request timeout (--hold + 10 s) and a
		 * redial (up to 5 s). A resumed server that has no round left
		 * must still be there then to tell it DONE. */
		bool waiting = false;
		for (int i = 0; i < E2E_CLIENTS; i++)
			waiting |= !poll_exit(c[i]);
		snprintf(name, sizeof name, "run%d-resumed", run);
		proc *again = start_server_linger(name, true, E2E_ROUNDS,
		                                  saved == E2E_ROUNDS && waiting ? 25000 : 1500);
		expect_exit(again, 0);
		for (int i = 0; i < E2E_CLIENTS; i++)
			expect_exit(c[i], 0);
		read_state(SRV_CKPT_FILE, &got);
		fprintf(stderr, "run %d: %s %llu ms after round %u (%zu metrics lines, checkpoint "
		        "after round %u); the resumed server ended after round %u\n", run,
		        finished_first ? "finished before its kill," : "SIGKILL",
		        (unsigned long long)delay, k, done, saved, got.round);
		CHECK(same_model(&got, &base), "run %d (killed %llu ms after round %u, checkpoint "
		      "after round %u): the final model differs from the uninterrupted run's", run,
		      (unsigned long long)delay, k, saved);
		CHECK(file_has(again->err, "resuming from") || file_has(again->err, "no checkpoint"),
		      "run %d: the resumed server did not say what it resumed from", run);
		srv_ckpt_fini(&got);
	}
	srv_ckpt_fini(&base);
	e2e_end();
}

/* Issue 8's disk acceptance, on a real tmpfs: the state folder fills up
 * after round 1; later saves fail with ENOSPC, the server says so and
 * keeps training, and the file still holds the last saved round. With
 * space again the run resumes from it; then a damaged checkpoint is
 * refused, the previous one loaded, and the round re-run ends with the
 * same model as before. Skipped where mounting is not permitted. */
static void
e2e_full_disk_and_corrupt_file(void **state)
{
	proc *server, *c[E2E_CLIENTS];
	srv_ckpt saved, prev4, got;
	char filler[700], path[700], why[128];

	(void)state;
	e2e_begin();
	CHECK(mkdir(E.state, 0700) == 0, "mkdir %s: %s", E.state, strerror(errno));
	if (mount("tmpfs", E.state, "tmpfs", 0, "size=512k,mode=0700") != 0) {
		snprintf(why, sizeof why, "%s", strerror(errno));
		e2e_end();
		fprintf(stderr, "cannot mount a tmpfs (%s; needs root or CAP_SYS_ADMIN): skipping "
		        "the full-disk run (ckpt.write_fails_cleanly_when_the_disk_is_full "
		        "simulates it)\n", why);
		skip();
	}
	snprintf(E.mnt, sizeof E.mnt, "%s", E.state);
	snprintf(filler, sizeof filler, "%s/filler", E.state);

	/* 1. Fill the disk once round 1's checkpoint is there. */
	server = start_server("server", false, 4);
	start_clients(c, "first", 400);
	snprintf(path, sizeof path, "%s/%s", E.state, SRV_CKPT_FILE);
	while (access(path, F_OK) != 0) {
		CHECK(!poll_exit(server), "server exited before its first checkpoint");
		CHECK(now_ms() < E.deadline, "watchdog: no checkpoint appeared");
		sleep_ms(20);
	}
	int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0, "cannot create %s", filler);
	static uint8_t chunk[4096];
	while (write(fd, chunk, sizeof chunk) > 0)
		;
	CHECK(errno == ENOSPC, "filling the tmpfs ended with %s", strerror(errno));
	close(fd);
	expect_exit(server, 0);
	for (int i = 0; i < E2E_CLIENTS; i++)
		expect_exit(c[i], 0);
	read_state(SRV_CKPT_FILE, &saved);
	CHECK(saved.round >= 1 && saved.round < 4, "the full disk kept round %u", saved.round);
	CHECK(file_has(server->err, "No space left on device"), "the server did not log ENOSPC");
	snprintf(why, sizeof why, "still holds the state after round %u", saved.round);
	CHECK(file_has(server->err, why), "the server did not say which round the file holds");
	CHECK(file_has(server->out, "finished rounds=4"), "the server did not finish its rounds");
	fprintf(stderr, "full disk: the file kept round %u\n", saved.round);

	/* 2. Space again: resume from that round to the end. */
	unlink(filler);
	server = start_server("resumed", true, 4);
	start_clients(c, "second", 0);
	expect_exit(server, 0);
	for (int i = 0; i < E2E_CLIENTS; i++)
		expect_exit(c[i], 0);
	CHECK(file_has(server->err, "resuming from"), "the resumed server did not resume");
	read_state(SRV_CKPT_FILE, &prev4);
	CHECK(prev4.round == 4, "resumed run ended after round %u", prev4.round);
	read_state(SRV_CKPT_PREV, &got);
	CHECK(got.round == 3, "the previous checkpoint holds round %u", got.round);
	srv_ckpt_fini(&got);

	/* 3. Damage the newest file: refused, set aside, round 3's used; the
	 * re-run round 4 ends where the damaged file had it. */
	size_t len;
	uint8_t *buf = slurp(path, &len);
	CHECK(buf != NULL, "cannot read %s", path);
	buf[len / 3] ^= 0x40;
	spit(path, buf, len);
	free(buf);
	server = start_server("after-damage", true, 4);
	start_clients(c, "third", 0);
	expect_exit(server, 0);
	for (int i = 0; i < E2E_CLIENTS; i++)
		expect_exit(c[i], 0);
	CHECK(file_has(server->err, "refused: checksum mismatch"),
	      "the damaged checkpoint was not refused with a reason");
	CHECK(file_has(server->err, "resuming from the previous checkpoint"),
	      "the server did not say it used the previous checkpoint");
	snprintf(path, sizeof path, "%s/%s", E.state, SRV_CKPT_BAD);
	CHECK(access(path, F_OK) == 0, "the damaged file was not kept as %s", path);
	read_state(SRV_CKPT_FILE, &got);
	CHECK(same_model(&got, &prev4), "round 4 re-run from round 3 differs from the first "
	      "round 4");
	srv_ckpt_fini(&got);
	srv_ckpt_fini(&prev4);
	srv_ckpt_fini(&saved);
	e2e_end();
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(round_trip),
	cmocka_unit_test(documented_example),
	cmocka_unit_test(every_truncation_refused),
	cmocka_unit_test(every_flipped_byte_refused),
	cmocka_unit_test(bad_sections_refused),
	cmocka_unit_test(counts_beyond_the_section_refused),
	cmocka_unit_test(check_run_names_the_difference),
	cmocka_unit_test(files_keep_the_previous_one),
	cmocka_unit_test(write_fails_cleanly_when_the_disk_is_full),
	cmocka_unit_test(registry_log_survives_a_torn_record),
	cmocka_unit_test(core_resume_bit_identical_plain),
	cmocka_unit_test(core_resume_bit_identical_secure),
	cmocka_unit_test(core_resume_bit_identical_dp),
	cmocka_unit_test(core_restore_refuses_other_settings),
	cmocka_unit_test(e2e_sigkill_and_resume_bit_identical),
	cmocka_unit_test(e2e_full_disk_and_corrupt_file),
};

int
main(int argc, char **argv)
{
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	log_set_level(LOG_ERROR);
	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
