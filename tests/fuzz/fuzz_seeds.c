/* fuzz_seeds.c - writes the seed corpus of the fuzz harnesses with the real
 * encoders: fuzz_seeds DIR fills DIR/msg, DIR/codec, DIR/secagg, DIR/ckpt
 * and DIR/idx with a few valid inputs each (tests/fuzz/corpus/ is its
 * output, committed; scripts/fuzz.sh --seeds regenerates it). Deterministic:
 * the same build writes the same bytes. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/codec.h"
#include "common/msg.h"
#include "ml/ml.h"
#include "privacy/ident.h"
#include "privacy/secagg.h"
#include "server/ckpt.h"
#include "tests/fuzz/sa_sim.h"

static const char *root;
static int written;

static void
die(const char *what)
{
	fprintf(stderr, "fuzz_seeds: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void
put(const char *harness, const char *name, const uint8_t *p, size_t n)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", root, harness);
	if (mkdir(path, 0755) != 0 && errno != EEXIST)
		die(path);
	snprintf(path, sizeof path, "%s/%s/%s", root, harness, name);
	FILE *f = fopen(path, "wb");
	if (f == NULL || (n > 0 && fwrite(p, 1, n, f) != n) || fclose(f) != 0)
		die(path);
	written++;
}

/* A selector byte (or two) in front of a payload. */
static void
put_prefixed(const char *harness, const char *name, const uint8_t *pre, size_t npre,
             const uint8_t *p, size_t n)
{
	uint8_t *b = malloc(npre + n + 1);
	if (b == NULL)
		die("malloc");
	memcpy(b, pre, npre);
	if (n > 0)
		memcpy(b + npre, p, n);
	put(harness, name, b, npre + n);
	free(b);
}

static uint64_t
splitmix(void *ctx)
{
	uint64_t *s = ctx, z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- codec ------------------------------------------------------------- */

#define CD 300 /* model dimension of the codec seeds */

static long
encode(const cx_config *cfg, uint32_t k, uint64_t seed, uint8_t *out, size_t cap)
{
	float x[CD];
	uint32_t idx[CD];
	float val[CD];
	uint64_t s = seed;
	for (uint32_t i = 0; i < CD; i++)
		x[i] = (float)((double)(splitmix(&s) >> 11) * 0x1p-53 - 0.5) * (i % 7 == 0 ? 10.0f : 0.1f);
	if (cx_topk(x, CD, k, idx) != SHOAL_OK)
		abort();
	for (uint32_t j = 0; j < k; j++)
		val[j] = x[idx[j]];
	long n = cx_encode(CD, k, k == CD ? NULL : idx, val, cfg, splitmix, &s, out, cap, NULL);
	if (n < 0)
		abort();
	return n;
}

static void
codec_seeds(void)
{
	static const struct {
		const char *name;
		cx_values v;
		cx_index ix;
		uint32_t block, k;
	} cases[] = {
	    {"q8_rice", CX_VALUES_Q8, CX_INDEX_RICE, 64, 30},
	    {"q8_bitmap", CX_VALUES_Q8, CX_INDEX_BITMAP, 16, 120},
	    {"q4_rice", CX_VALUES_Q4, CX_INDEX_RICE, 8, 21},
	    {"q4_dense", CX_VALUES_Q4, CX_INDEX_DENSE, 64, CD},
	    {"f32_rice", CX_VALUES_F32, CX_INDEX_RICE, 0, 9},
	    {"f32_bitmap", CX_VALUES_F32, CX_INDEX_BITMAP, 0, 40},
	    {"f32_dense", CX_VALUES_F32, CX_INDEX_DENSE, 0, CD},
	    {"q8_empty", CX_VALUES_Q8, CX_INDEX_RICE, 64, 0},
	};
	uint8_t buf[4096];
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		cx_config cfg = {.values = cases[c].v, .index = cases[c].ix, .block = cases[c].block,
		                 .ratio = 1.0};
		long n = encode(&cfg, cases[c].k, 11 + c, buf, sizeof buf);
		put("codec", cases[c].name, buf, (size_t)n);
	}
	/* the downlink's dense q8 */
	float x[CD];
	for (uint32_t i = 0; i < CD; i++)
		x[i] = sinf((float)i) * 1e-2f;
	long n = cx_encode_downlink(x, CD, 64, buf, sizeof buf);
	if (n < 0)
		abort();
	put("codec", "q8_downlink", buf, (size_t)n);
	/* the worked example of common/codec.c */
	static const uint8_t example[] = {0x01, 0x01, 0x01, 0x01, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00,
	                                  0x03, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x1e, 0x01,
	                                  0x04, 0x02, 0x01, 0x3c, 0x04, 0x02, 0x01, 0x3b, 0x5f, 0x81,
	                                  0x7f};
	put("codec", "example", example, sizeof example);
}

/* ---- secure aggregation ------------------------------------------------- */

#define TD 1000 /* model dimension of the task seeds */

static void
secagg_seeds(void)
{
	uint8_t buf[8192];
	/* TASK "sa", plain and with the distributed-DP block */
	uint32_t idx[40];
	for (uint32_t i = 0; i < 40; i++)
		idx[i] = i * i / 2 + i; /* gaps growing past one LEB128 byte */
	sa_task t = {0};
	t.c = (sa_config){.n = 10, .k = 4, .t = 3, .m = 24, .d = 41, .round = 3};
	for (int i = 0; i < SA_KEY_BYTES; i++)
		t.c.session[i] = (uint8_t)(i * 13);
	t.me = 4;
	t.phase_ms = 20000;
	t.scale = 0.25f;
	t.levels = 127;
	t.wmax = 600;
	t.n_idx = 40;
	t.idx = idx;
	uint8_t pre[3] = {0, (uint8_t)(TD - 1), (uint8_t)((TD - 1) >> 8)};
	long n = sa_task_write(&t, buf, sizeof buf);
	if (n < 0)
		abort();
	put_prefixed("secagg", "task_plain", pre, 3, buf, (size_t)n);
	t.c.ddp = true;
	t.c.signed_keys = true;
	t.c.d = 65; /* 64 rotated coordinates + the weight */
	t.levels = 1;
	t.wmax = 1;
	t.scale = 1.0f / 2048;
	t.clip = 0.5f;
	t.s2_num = UINT64_C(58698627373);
	t.s2_den = 1u << 20;
	t.l2max2 = UINT64_C(4198453);
	if ((n = sa_task_write(&t, buf, sizeof buf)) < 0)
		abort();
	put_prefixed("secagg", "task_ddp", pre, 3, buf, (size_t)n);
	/* a session configuration */
	uint8_t one = 1;
	sa_config_write(&t.c, buf);
	put_prefixed("secagg", "config", &one, 1, buf, SA_CONFIG_BYTES);

	/* every request and reply of a session, genuine, for each graph */
	for (uint8_t cfg = 0; cfg < 4; cfg++) {
		/* signed keys on the odd graphs; m 13, d 17 or 64 */
		uint8_t s0 = (uint8_t)(cfg | (cfg & 1) << 2 | 1 << 3 | (cfg < 2 ? 4 : 6) << 5);
		for (int dir = 0; dir < 2; dir++) {
			for (uint8_t ph = 1; ph <= (dir ? 4 : 5); ph++) {
				uint8_t s1 = (uint8_t)(dir | (ph - 1) << 1 | (ph % 3) << 4);
				sa_sim s;
				sa_sim_setup(&s, s0, s1);
				sa_sim_run(&s);
				if (!s.done || s.genuine == NULL)
					abort();
				char name[64];
				snprintf(name, sizeof name, "g%u_%s_ph%u", cfg, dir ? "reply" : "req", ph);
				uint8_t sel[3] = {2, s0, s1};
				put_prefixed("secagg", name, sel, 3, s.genuine, s.genuine_len);
				free(s.genuine);
			}
		}
	}
}

/* ---- messages ------------------------------------------------------------ */

static uint8_t id_pk[ID_PK_BYTES], id_sk[ID_SK_BYTES];

/* Requests with a "sig" are signed (with a key of the generator's). */
static void
put_msg(const char *name, const msg *m)
{
	uint8_t *b;
	size_t n;
	if (msg_encode(m, &b, &n) != SHOAL_OK || (m->has_sig && id_sign(id_sk, b, n) != SHOAL_OK))
		abort();
	put("msg", name, b, n);
	free(b);
}

static void
identity(msg *m, bool sig)
{
	for (unsigned i = 0; i < MSG_NONCE_BYTES; i++)
		m->nonce[i] = (uint8_t)(0xa0 + i);
	m->has_nonce = true;
	m->has_sig = sig;
}

static void
msg_seeds(void)
{
	static const float vec[5] = {0.5f, -1.25f, 3e-7f, 0, 1e20f};
	uint8_t cx[1024], sa[1024];
	cx_config cfg = cx_config_default(0.1);
	long ncx = encode(&cfg, 30, 5, cx, sizeof cx);
	uint32_t idx[3] = {1, 2, 4};
	sa_task t = {0};
	t.c = (sa_config){.n = 3, .k = 2, .t = 2, .m = 20, .d = 4, .round = 1};
	t.me = 1;
	t.phase_ms = 1000;
	t.scale = 1;
	t.levels = 127;
	t.wmax = 10;
	t.n_idx = 3;
	t.idx = idx;
	long nsa = sa_task_write(&t, sa, sizeof sa);
	if (nsa < 0)
		abort();

	uint8_t seed[ID_SEED_BYTES];
	memset(seed, 0x33, sizeof seed);
	id_keypair_from_seed(seed, id_pk, id_sk);

	msg m = {.type = MSG_HELLO, .dim = 7850, .n_examples = 600, .cx_caps = MSG_CX_ALL};
	strcpy(m.name, "pi-kitchen");
	strcpy(m.model, "logreg");
	put_msg("hello", &m);
	memcpy(m.pk, id_pk, sizeof m.pk);
	m.has_pk = true;
	strcpy(m.token, "enrol-0123456789abcdef");
	identity(&m, true);
	put_msg("hello_signed_token", &m);
	m = (msg){.type = MSG_WELCOME, .client_id = 17, .hold_ms = 30000};
	identity(&m, false);
	put_msg("welcome_nonce", &m);
	m = (msg){.type = MSG_CHECKIN, .client_id = 17, .model_ver = 4};
	put_msg("checkin", &m);
	identity(&m, true);
	put_msg("checkin_signed", &m);
	m = (msg){.type = MSG_TASK, .round = 3, .epochs = 1, .batch = 10, .lr = 0.1f,
	          .deadline_ms = 60000, .seed = UINT64_C(0x123456789abcdef), .vec = (const uint8_t *)vec,
	          .dim = 5};
	strcpy(m.model, "logreg");
	put_msg("task_params", &m);
	m.vec = NULL;
	m.dim = 0;
	m.blob = cx;
	m.blob_len = (size_t)ncx;
	m.momentum = 0.9f;
	m.weight_decay = 1e-4f;
	m.prox_mu = 0.01f;
	m.clip = 1.5f;
	m.model_ver = 5;
	m.base = 4;
	strcpy(m.up, "topk:0.1,q8");
	m.sa = sa;
	m.sa_len = (size_t)nsa;
	m.has_sa = true;
	identity(&m, false);
	put_msg("task_every_key", &m);
	m = (msg){.type = MSG_UPDATE, .client_id = 17, .round = 3, .n_examples = 600, .loss = 0.4f,
	          .vec = (const uint8_t *)vec, .dim = 5};
	put_msg("update_delta", &m);
	m.vec = NULL;
	m.dim = 0;
	m.blob = cx;
	m.blob_len = (size_t)ncx;
	identity(&m, true);
	put_msg("update_upd_signed", &m);
	m = (msg){.type = MSG_ACK, .round = 3};
	put_msg("ack", &m);
	m = (msg){.type = MSG_WAIT, .retry_ms = 500};
	put_msg("wait", &m);
	m = (msg){.type = MSG_ERROR, .code = SHOAL_ESTALE};
	strcpy(m.text, "round 2 is closed");
	put_msg("error", &m);
	m = (msg){.type = MSG_DONE, .round = 20};
	put_msg("done", &m);
	m = (msg){.type = MSG_SA, .client_id = 2, .round = 3, .phase = 1, .sa = sa, .sa_len = 64,
	          .has_sa = true};
	identity(&m, true);
	put_msg("sa_signed", &m);
	m = (msg){.type = MSG_SA_REPLY, .round = 3, .phase = 4, .sa = sa, .sa_len = 0, .has_sa = true};
	put_msg("sa_reply_empty", &m);
}

/* ---- checkpoints (bodies: the harness appends length and checksum) ------- */

static void
put_ckpt(const char *name, const srv_ckpt *c)
{
	uint8_t *b;
	size_t n;
	if (srv_ckpt_encode(c, &b, &n) != SHOAL_OK)
		abort();
	put("ckpt", name, b, n - SRV_CKPT_HASH_BYTES);
	free(b);
}

static void
ckpt_seeds(void)
{
	static float P[4] = {1.5f, -2.0f, 0.0f, 3e-38f}, SH[4] = {1.25f, -2.5f, 1e-3f, 4};
	static float M1[4] = {0.1f, 0.2f, -0.3f, 0}, V1[4] = {1e-6f, 2e-6f, 3e-6f, 4e-6f};
	static float CH[4] = {0, -1, 1, 0.5f};
	static uint8_t DQ[7] = {1, 2, 3, 4, 5, 6, 7};
	static double ORD[3] = {2, 3, 64}, RDP[3] = {0.25, 0.5, 8}, STEP[3] = {0.01, 0.02, 0.5};
	static srv_ckpt_client CL[2] = {{"alpha", 600, 0x0f}, {"b", 1, 0}};
	srv_ckpt c;
	memset(&c, 0, sizeof c);
	strcpy(c.model, "2nn");
	c.dim = 4;
	c.seed = 7;
	c.opt_kind = 2;
	c.downlink_q8 = true;
	c.secagg = 2;
	c.dp = 1;
	c.sampling = 1;
	c.sample_rate = 0.1;
	c.clip = 1.0;
	c.noise_multiplier = 1.1;
	c.delta = 1e-5;
	c.round = 17;
	c.version = 15;
	c.accuracy = 0.9123;
	c.loss = NAN;
	c.params = P;
	c.shadow = SH;
	c.dq = DQ;
	c.dq_len = sizeof DQ;
	c.opt_m = M1;
	c.opt_v = V1;
	c.sa_scale = 0.125f;
	c.have_change = true;
	c.change = CH;
	c.dp_steps = 16;
	c.acc_n = 3;
	c.acc_delta = 1e-5;
	c.acc_orders = ORD;
	c.acc_rdp = RDP;
	c.acc_step = STEP;
	c.acc_step_n = 9;
	c.acc_step_q = 0.1;
	c.acc_step_sigma = 1.1;
	c.acc_step_ok = true;
	c.dp_clip = 0.75;
	c.dp_sigma = 0.825;
	c.n_clients = 2;
	c.clients = CL;
	static srv_ckpt_key K[2] = {{.id = 1, .pk = {1, 2, 3}}, {.id = 2, .pk = {4, 5}, .enrolled = true,
	                                                        .token = {9, 9, 9}}};
	c.n_keys = 2;
	c.keys = K;
	put_ckpt("full", &c);
	c.n_keys = 0;
	c.keys = NULL;
	/* the smallest: FedAvg, no downlink, no DP, no secure aggregation */
	c.downlink_q8 = false;
	c.shadow = NULL;
	c.dq = NULL;
	c.dq_len = 0;
	c.opt_kind = 0;
	c.opt_m = c.opt_v = NULL;
	c.secagg = 0;
	c.change = NULL;
	c.have_change = false;
	c.dp = 0;
	c.acc_n = 0;
	c.dp_steps = 0;
	c.n_clients = 0;
	c.clients = NULL;
	put_ckpt("small", &c);
	/* FedAvgM with a moment, clients, no downlink */
	c.opt_kind = 1;
	c.opt_m = M1;
	c.n_clients = 2;
	c.clients = CL;
	put_ckpt("fedavgm", &c);
}

/* ---- IDX ---------------------------------------------------------------- */

static void
put_idx(const char *name, const uint32_t *dims, uint32_t nd, uint64_t seed)
{
	size_t count = 1;
	for (uint32_t i = 0; i < nd; i++)
		count *= dims[i];
	size_t len = 4 + 4 * (size_t)nd + count;
	uint8_t *b = malloc(len);
	if (b == NULL)
		die("malloc");
	b[0] = 0, b[1] = 0, b[2] = 8, b[3] = (uint8_t)nd;
	for (uint32_t i = 0; i < nd; i++)
		for (int j = 0; j < 4; j++)
			b[4 + 4 * i + (uint32_t)j] = (uint8_t)(dims[i] >> (24 - 8 * j));
	uint64_t s = seed;
	for (size_t i = 0; i < count; i++)
		b[4 + 4 * nd + i] = (uint8_t)(splitmix(&s) % (nd == 1 ? 10 : 256));
	put("idx", name, b, len);
	free(b);
}

static void
idx_seeds(void)
{
	put_idx("labels", (const uint32_t[]){12}, 1, 1);
	put_idx("images", (const uint32_t[]){2, 28, 28}, 3, 2);
	put_idx("matrix", (const uint32_t[]){3, 5}, 2, 3);
	put_idx("four_dims", (const uint32_t[]){2, 1, 3, 2}, 4, 4);
}

int
main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fuzz_seeds DIR\n");
		return 2;
	}
	root = argv[1];
	if (mkdir(root, 0755) != 0 && errno != EEXIST)
		die(root);
	msg_seeds();
	codec_seeds();
	secagg_seeds();
	ckpt_seeds();
	idx_seeds();
	printf("fuzz_seeds: %d files in %s\n", written, root);
	return 0;
}
