/* test_identity.c - client identity (PROTOCOL.md section 16): Ed25519 keys,
 * requests signed over the server's nonces, the allowlist and one-time
 * enrollment tokens, and what survives restarts. The server core and real
 * client cores run wired together in memory (virtual time, no sockets,
 * training replaced by a small fixed step); an attacker slot sends raw
 * bytes: captured requests again, forged ones. Known answers were computed
 * independently with Python's `cryptography` (Ed25519, RFC 8032). */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "client/core.h"
#include "client/state.h"
#include "common/msg.h"
#include "privacy/ident.h"
#include "privacy/secagg.h"
#include "server/ckpt.h"
#include "server/core.h"

/* ---- known answers ----------------------------------------------------- */

/* Seed 00 01 .. 1f, CHECKIN {v 1, t 3, id 42, nonce a0 .. af, sig}: the
 * worked example of PROTOCOL.md 16.6. */
static const char KA_PK[] = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
static const char KA_CHECKIN[] =
    "85a17601a17403a269642aa56e6f6e6365c410a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
    "a3736967c440"
    "676cf8635a96826a2b325f44caca1447d5058459dc2a194235652caf8b447b0d"
    "904196fdeb0b0e8fcc91ebfc87ce180ffc97ff5ebc46c59948f5c6d96d853305";

static size_t
unhex(const char *s, uint8_t *out)
{
	size_t n = strlen(s) / 2;
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
	return n;
}

static void
seed_key(uint8_t first, uint8_t pk[ID_PK_BYTES], uint8_t sk[ID_SK_BYTES])
{
	uint8_t seed[ID_SEED_BYTES];
	for (int i = 0; i < ID_SEED_BYTES; i++)
		seed[i] = (uint8_t)(first + i);
	id_keypair_from_seed(seed, pk, sk);
}

static void
test_known_answer_signed_checkin(void **state)
{
	uint8_t pk[ID_PK_BYTES], sk[ID_SK_BYTES], want[128], *buf;
	char hex[ID_HEX_CHARS + 1];
	size_t len, n = unhex(KA_CHECKIN, want);

	seed_key(0, pk, sk);
	id_hex(pk, ID_PK_BYTES, hex);
	assert_string_equal(hex, KA_PK);
	msg m = {.type = MSG_CHECKIN, .client_id = 42, .has_nonce = true, .has_sig = true};
	for (unsigned i = 0; i < MSG_NONCE_BYTES; i++)
		m.nonce[i] = (uint8_t)(0xa0 + i);
	assert_int_equal(msg_encode(&m, &buf, &len), SHOAL_OK);
	assert_int_equal(len, 105);
	assert_int_equal(id_sign(sk, buf, len), SHOAL_OK);
	assert_int_equal(len, n);
	assert_memory_equal(buf, want, n);
	assert_int_equal(id_verify(pk, buf, len), SHOAL_OK);
	msg d;
	assert_int_equal(msg_decode(buf, len, &d), (long)len);
	assert_true(d.has_nonce && d.has_sig && d.client_id == 42);
	assert_memory_equal(d.sig, buf + len - ID_SIG_BYTES, ID_SIG_BYTES);
	free(buf);
}

/* Every byte of a signed request is covered: flipping any one makes it
 * fail (the "sig" header: not a signed request at all). */
static void
test_every_byte_signed(void **state)
{
	uint8_t pk[ID_PK_BYTES], sk[ID_SK_BYTES], buf[128];
	size_t n = unhex(KA_CHECKIN, buf);

	seed_key(0, pk, sk);
	for (size_t i = 0; i < n; i++) {
		buf[i] ^= 0x01;
		shoal_err e = id_verify(pk, buf, n);
		bool in_head = i >= n - ID_SIG_TAIL && i < n - ID_SIG_BYTES;
		assert_int_equal(e, in_head ? SHOAL_EMALFORMED : SHOAL_EBADSIG);
		buf[i] ^= 0x01;
	}
	assert_int_equal(id_verify(pk, buf, n), SHOAL_OK);
	/* another key, and the same bytes without the domain */
	uint8_t pk2[ID_PK_BYTES], sk2[ID_SK_BYTES], sig[ID_SIG_BYTES];
	seed_key(1, pk2, sk2);
	assert_int_equal(id_verify(pk2, buf, n), SHOAL_EBADSIG);
	crypto_sign_detached(sig, NULL, buf, n - ID_SIG_TAIL, sk);
	memcpy(buf + n - ID_SIG_BYTES, sig, ID_SIG_BYTES);
	assert_int_equal(id_verify(pk, buf, n), SHOAL_EBADSIG);
	/* too short to hold a signature */
	assert_int_equal(id_verify(pk, buf, ID_SIG_TAIL), SHOAL_EMALFORMED);
	assert_int_equal(id_sign(sk, buf, 10), SHOAL_EINVAL);
}

static void
test_msg_identity_keys(void **state)
{
	msg m = {.type = MSG_HELLO, .dim = 7850, .n_examples = 5, .has_pk = true,
	         .has_nonce = true, .has_sig = true};
	uint8_t *buf;
	size_t len;
	msg d;

	strcpy(m.name, "a");
	strcpy(m.model, "logreg");
	strcpy(m.token, "0123456789abcdef0123");
	memset(m.pk, 7, sizeof m.pk);
	memset(m.nonce, 9, sizeof m.nonce);
	assert_int_equal(msg_encode(&m, &buf, &len), SHOAL_OK);
	assert_int_equal(msg_decode(buf, len, &d), (long)len);
	assert_true(d.has_pk && d.has_nonce && d.has_sig);
	assert_memory_equal(d.pk, m.pk, sizeof m.pk);
	assert_memory_equal(d.nonce, m.nonce, sizeof m.nonce);
	assert_string_equal(d.token, m.token);
	/* "sig" is written last */
	assert_memory_equal(buf + len - ID_SIG_TAIL, "\xa3sig\xc4\x40", 6);
	free(buf);
	/* replies may carry a nonce; a plain message carries none */
	msg w = {.type = MSG_WAIT, .retry_ms = 5, .has_nonce = true};
	assert_int_equal(msg_encode(&w, &buf, &len), SHOAL_OK);
	assert_int_equal(msg_decode(buf, len, &d), (long)len);
	assert_true(d.has_nonce && !d.has_sig);
	free(buf);
	w.has_nonce = false;
	assert_int_equal(msg_encode(&w, &buf, &len), SHOAL_OK);
	assert_int_equal(len, 14); /* as before identity existed */
	free(buf);
	/* a nonce of another length is malformed: CHECKIN {id 1, nonce: 15 bytes} */
	uint8_t bad[40] = {0x84, 0xa1, 'v', 1, 0xa1, 't', 3, 0xa2, 'i', 'd', 1, 0xa5,
	                   'n', 'o', 'n', 'c', 'e', 0xc4, 15};
	assert_int_equal(msg_decode(bad, 19 + 15, &d), SHOAL_EMALFORMED);
	bad[18] = 16; /* right length, but a str where bin belongs */
	bad[17] = 0xd9;
	assert_int_equal(msg_decode(bad, 19 + 16, &d), SHOAL_EMALFORMED);
}

static void
test_allowlist_and_token_files(void **state)
{
	char why[256];
	uint8_t (*keys)[ID_PK_BYTES], (*hashes)[ID_HASH_BYTES], h[ID_HASH_BYTES], pk[ID_PK_BYTES];
	uint32_t n;
	const char text[] = "# the allowlist\n\n"
	                    "  03A107BFF3CE10BE1D70DD18E74BC09967E4D6309BA50D5F1DDC8664125531B8  "
	                    "# kitchen pi\r\n"
	                    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8\n"
	                    "\t# only a comment\n"
	                    "1111111111111111111111111111111111111111111111111111111111111111";

	assert_int_equal(id_allowlist_parse(text, strlen(text), &keys, &n, why, sizeof why),
	                 SHOAL_OK);
	assert_int_equal(n, 2); /* the repeated key counts once */
	assert_true(id_pk_from_hex(KA_PK, strlen(KA_PK), pk));
	assert_memory_equal(keys[0], pk, ID_PK_BYTES);
	assert_int_equal(keys[1][31], 0x11);
	free(keys);
	assert_int_equal(id_allowlist_parse("", 0, &keys, &n, why, sizeof why), SHOAL_OK);
	assert_int_equal(n, 0);
	assert_null(keys);
	const char bad[] = "# ok\n0123\n";
	assert_int_equal(id_allowlist_parse(bad, strlen(bad), &keys, &n, why, sizeof why),
	                 SHOAL_EFORMAT);
	assert_non_null(strstr(why, "line 2"));
	assert_non_null(strstr(why, "0123"));
	const char two[] = "1111111111111111111111111111111111111111111111111111111111111111 "
	                   "2222222222222222222222222222222222222222222222222222222222222222\n";
	assert_int_equal(id_allowlist_parse(two, strlen(two), &keys, &n, why, sizeof why),
	                 SHOAL_EFORMAT);

	const char toks[] = "# tokens\nabcdefghijklmnop\nQ2hhbmdlTWUhIQ==  # base64 is fine\n";
	assert_int_equal(id_tokens_parse(toks, strlen(toks), &hashes, &n, why, sizeof why),
	                 SHOAL_OK);
	assert_int_equal(n, 2);
	id_token_hash("abcdefghijklmnop", h);
	assert_memory_equal(hashes[0], h, ID_HASH_BYTES);
	free(hashes);
	/* a short token is refused, and the message does not repeat it */
	const char weak[] = "secret-but-short\nsecret\n";
	assert_int_equal(id_tokens_parse(weak, strlen(weak), &hashes, &n, why, sizeof why),
	                 SHOAL_EFORMAT);
	assert_non_null(strstr(why, "line 2"));
	assert_null(strstr(why, "secret"));
	assert_false(id_token_valid("has space in it!", 16));
	assert_true(id_token_valid("0123456789abcdef", 16));
}

/* ---- cores wired together ------------------------------------------------ */

#define MAXC 6
#define ATTACKER 63 /* requests from this slot are raw bytes, replies kept */
#define MAXREQ 12

typedef struct net {
	srv_core *s;
	srv_config cfg;
	cli_core *c[MAXC];
	uint8_t sk[MAXC][ID_SK_BYTES];
	int n;
	uint64_t now;
	uint64_t seq;
	bool pending[MAXC], done[MAXC];
	uint64_t req[MAXC], wake[MAXC];
	shoal_err err[MAXC];
	/* the last request of each type each client sent, as sent */
	uint8_t *sent[MAXC][MAXREQ];
	size_t sent_len[MAXC][MAXREQ];
	uint32_t trained[MAXC];
	uint32_t challenged[MAXC]; /* ERROR -28 replies each client got */
	uint32_t waits[MAXC];      /* WAIT replies */
	uint8_t *task[MAXC];  /* the last TASK each client received */
	size_t task_len[MAXC];
	/* the attacker's last reply */
	uint8_t *areply;
	size_t areply_len;
	bool aclose;
} net;

static void
net_server(net *w, const srv_config *cfg)
{
	w->cfg = *cfg;
	assert_int_equal(srv_core_new(cfg, &w->s), SHOAL_OK);
}

static void
base_config(srv_config *c)
{
	srv_config_defaults(c);
	c->model = "logreg";
	c->rounds = 2;
	c->clients_per_round = 2;
	c->min_clients = 2;
	c->hold_ms = 1000;
	c->round_timeout_ms = 5000;
	c->compress = "none";
	c->downlink_q8 = false;
	c->seed = 3;
}

/* Client i, named "c<i>", with the key of seed 16 * (i + 1) (or no key),
 * an enrollment token or none. */
static void
net_client(net *w, int i, bool key, const char *token)
{
	char name[16];
	uint8_t pk[ID_PK_BYTES];
	snprintf(name, sizeof name, "c%d", i);
	seed_key((uint8_t)(16 * (i + 1)), pk, w->sk[i]);
	cli_config cc = {.name = name, .model = "logreg", .dim = 7850, .n_examples = 10 + i,
	                 .cx_caps = MSG_CX_ALL, .error_feedback = true, .seed = 1,
	                 .identity_sk = key ? w->sk[i] : NULL, .enroll_token = token};
	if (w->c[i] != NULL)
		cli_core_free(w->c[i]);
	assert_int_equal(cli_core_new(&cc, &w->c[i]), SHOAL_OK);
	w->pending[i] = w->done[i] = false;
	w->wake[i] = 0;
	w->err[i] = SHOAL_OK;
	if (i >= w->n)
		w->n = i + 1;
}

static void
client_pk(int i, uint8_t pk[ID_PK_BYTES])
{
	uint8_t sk[ID_SK_BYTES];
	seed_key((uint8_t)(16 * (i + 1)), pk, sk);
}

static void
net_free(net *w)
{
	for (int i = 0; i < MAXC; i++) {
		cli_core_free(w->c[i]);
		free(w->task[i]);
		for (int t = 0; t < MAXREQ; t++)
			free(w->sent[i][t]);
	}
	free(w->areply);
	srv_core_free(w->s);
	memset(w, 0, sizeof *w);
}

static void
deliver(net *w)
{
	srv_reply r;
	while (srv_core_pop_reply(w->s, &r)) {
		int i = (int)(r.req >> 32);
		if (i == ATTACKER) {
			free(w->areply);
			w->areply = r.buf;
			w->areply_len = r.len;
			w->aclose = r.close;
			continue;
		}
		if (i < w->n && w->pending[i] && w->req[i] == r.req) {
			w->pending[i] = false;
			msg m;
			if (msg_decode(r.buf, r.len, &m) == (long)r.len && m.type == MSG_ERROR &&
			    m.code == SHOAL_ENONCE)
				w->challenged[i]++;
			if (msg_decode(r.buf, r.len, &m) == (long)r.len && m.type == MSG_WAIT)
				w->waits[i]++;
			if (msg_decode(r.buf, r.len, &m) == (long)r.len && m.type == MSG_TASK) {
				free(w->task[i]);
				w->task[i] = malloc(r.len);
				memcpy(w->task[i], r.buf, r.len);
				w->task_len[i] = r.len;
			}
			cli_core_on_reply(w->c[i], r.buf, r.len, w->now);
		} /* else: a reply to a request the client gave up (as nng drops it) */
		free(r.buf);
	}
	srv_event ev;
	while (srv_core_pop_event(w->s, &ev))
		;
}

/* One step of client i; true if anything happened. */
static bool
net_step_one(net *w, int i)
{
	bool progress = false;
	{
		cli_step st;
		if (w->c[i] == NULL || w->done[i] || w->pending[i])
			return false;
		cli_core_step(w->c[i], w->now, &st);
		switch (st.action) {
		case CLI_DONE:
			w->done[i] = true;
			w->err[i] = st.err;
			progress = true;
			break;
		case CLI_TRAIN:
			for (uint32_t j = 0; j < st.dim; j++)
				st.params[j] += 0.001f * (float)(i + 1);
			assert_int_equal(cli_core_submit(w->c[i], 10, 0.5f, w->now), SHOAL_OK);
			w->trained[i]++;
			progress = true;
			break;
		case CLI_SLEEP:
			w->wake[i] = st.until_ms;
			break;
		case CLI_SEND: {
			msg m;
			assert_int_equal(msg_decode(st.buf, st.len, &m), (long)st.len);
			free(w->sent[i][m.type]);
			w->sent[i][m.type] = malloc(st.len);
			memcpy(w->sent[i][m.type], st.buf, st.len);
			w->sent_len[i][m.type] = st.len;
			w->pending[i] = true;
			w->req[i] = (uint64_t)i << 32 | ++w->seq;
			srv_core_on_request(w->s, w->req[i], st.buf, st.len, w->now);
			deliver(w);
			progress = true;
			break;
		}
		}
	}
	return progress;
}

/* One pass over the clients; true if anything happened. */
static bool
net_step(net *w)
{
	bool progress = false;
	for (int i = 0; i < w->n; i++)
		progress |= net_step_one(w, i);
	return progress;
}

/* Run until every client is done or stop(w) holds; time jumps to the next
 * wake-up or server deadline when nothing else happens. */
static void
net_run_until(net *w, bool (*stop)(const net *))
{
	for (int guard = 0; guard < 200000; guard++) {
		if (stop != NULL && stop(w))
			return;
		bool all = true;
		for (int i = 0; i < w->n; i++)
			all &= w->c[i] == NULL || w->done[i];
		if (all)
			return;
		if (net_step(w))
			continue;
		uint64_t t = srv_core_next_deadline(w->s);
		for (int i = 0; i < w->n; i++)
			if (w->c[i] != NULL && !w->done[i] && !w->pending[i] && w->wake[i] > w->now &&
			    w->wake[i] < t)
				t = w->wake[i];
		assert_true(t != UINT64_MAX);
		w->now = t > w->now ? t : w->now + 1;
		srv_core_on_timer(w->s, w->now);
		deliver(w);
	}
	fail_msg("the cores did not settle");
}

static void
net_run(net *w)
{
	net_run_until(w, NULL);
}

/* Raw bytes from the attacker slot; returns the decoded reply. */
static msg
attack(net *w, const uint8_t *buf, size_t len)
{
	msg m;
	free(w->areply);
	w->areply = NULL;
	srv_core_on_request(w->s, (uint64_t)ATTACKER << 32 | ++w->seq, buf, len, w->now);
	deliver(w);
	assert_non_null(w->areply);
	assert_int_equal(msg_decode(w->areply, w->areply_len, &m), (long)w->areply_len);
	return m;
}

static void
identity_config(srv_config *c, const uint8_t (*allow)[32], uint32_t n_allow,
                const uint8_t (*tokens)[32], uint32_t n_tokens)
{
	base_config(c);
	c->identity = true;
	c->allowlist = allow;
	c->n_allowlist = n_allow;
	c->tokens = tokens;
	c->n_tokens = n_tokens;
}

static bool
after_5s(const net *w)
{
	return w->now >= 5000;
}

static void
test_allowlisted_key_admitted(void **state)
{
	uint8_t allow[2][32];
	srv_config c;
	net w = {0};

	client_pk(0, allow[0]);
	client_pk(1, allow[1]);
	identity_config(&c, (const uint8_t(*)[32])allow, 2, NULL, 0);
	net_server(&w, &c);
	/* Client 0 waits alone for a while: its check-ins are answered WAIT
	 * every hold (1 s), each with a new nonce for the next one. */
	net_client(&w, 0, true, NULL);
	net_run_until(&w, after_5s);
	net_client(&w, 1, true, NULL);
	net_run(&w);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(w.err[i], SHOAL_OK);
		assert_int_equal(w.trained[i], 2);
		assert_int_equal(cli_core_stats(w.c[i])->updates_acked, 2);
		/* every request after the challenge was signed */
		for (int t = MSG_HELLO; t <= MSG_UPDATE; t++) {
			msg m;
			if (w.sent[i][t] == NULL)
				continue;
			assert_int_equal(msg_decode(w.sent[i][t], w.sent_len[i][t], &m),
			                 (long)w.sent_len[i][t]);
			assert_true(m.has_sig && m.has_nonce);
			assert_int_equal(id_verify(allow[i], w.sent[i][t], w.sent_len[i][t]), SHOAL_OK);
		}
	}
	assert_int_equal(srv_core_round(w.s), 2);
	assert_true(srv_core_finished(w.s));
	/* Only the first HELLO was challenged: every other request was signed
	 * over the nonce of the reply before it, none refused. */
	assert_true(w.waits[0] >= 3);
	assert_int_equal(w.challenged[0], 1);
	assert_int_equal(w.challenged[1], 1);
	net_free(&w);
}

static void
test_unlisted_key_refused(void **state)
{
	uint8_t allow[1][32];
	srv_config c;
	net w = {0};

	client_pk(0, allow[0]);
	identity_config(&c, (const uint8_t(*)[32])allow, 1, NULL, 0);
	c.min_clients = 1;
	c.clients_per_round = 1;
	net_server(&w, &c);
	net_client(&w, 0, true, NULL);
	net_client(&w, 1, true, NULL);  /* a key, not on the list */
	net_client(&w, 2, false, NULL); /* no key at all (an old client) */
	net_run(&w);
	assert_int_equal(w.err[0], SHOAL_OK);
	assert_int_equal(w.trained[0], 2);
	assert_int_equal(w.err[1], SHOAL_EUNLISTED);
	assert_int_equal(w.err[2], SHOAL_EUNLISTED);
	assert_int_equal(w.trained[1] + w.trained[2], 0);
	assert_int_equal(srv_core_registered(w.s), 1); /* they never got an id */
	/* The same unlisted key with a valid-looking signature: still refused. */
	uint8_t *buf;
	size_t len;
	msg h = {.type = MSG_HELLO, .dim = 7850, .n_examples = 1, .has_pk = true};
	strcpy(h.name, "c1");
	strcpy(h.model, "logreg");
	client_pk(1, h.pk);
	assert_int_equal(msg_encode(&h, &buf, &len), SHOAL_OK);
	msg r = attack(&w, buf, len);
	assert_int_equal(r.type, MSG_ERROR);
	assert_int_equal(r.code, SHOAL_EUNLISTED);
	assert_false(r.has_nonce); /* no challenge for a key that cannot get in */
	free(buf);
	net_free(&w);
}

static bool
parked_in_round_1(const net *w)
{
	return w->sent[0][MSG_CHECKIN] != NULL && w->pending[0] && srv_core_round(w->s) == 0;
}

/* Captured bytes sent again: the signed HELLO, a CHECKIN, an UPDATE. */
static void
test_replayed_checkin_refused(void **state)
{
	uint8_t allow[2][32];
	srv_config c;
	net w = {0};

	client_pk(0, allow[0]);
	client_pk(1, allow[1]);
	identity_config(&c, (const uint8_t(*)[32])allow, 2, NULL, 0);
	c.rounds = 3;
	net_server(&w, &c);
	net_client(&w, 0, true, NULL);
	/* Client 0 alone: it registers and its signed CHECKIN is parked. */
	net_run_until(&w, parked_in_round_1);
	uint64_t parked = w.req[0];
	/* what an eavesdropper captured */
	size_t hello_len = w.sent_len[0][MSG_HELLO], ci_len = w.sent_len[0][MSG_CHECKIN];
	uint8_t *hello = malloc(hello_len), *ci = malloc(ci_len);
	memcpy(hello, w.sent[0][MSG_HELLO], hello_len);
	memcpy(ci, w.sent[0][MSG_CHECKIN], ci_len);
	msg m;
	assert_int_equal(msg_decode(ci, ci_len, &m), (long)ci_len);
	assert_true(m.has_sig);

	/* The CHECKIN again: refused; the parked one stays parked (a check-in
	 * the server believed would have answered it WAIT and replaced it). */
	msg r = attack(&w, ci, ci_len);
	assert_int_equal(r.type, MSG_ERROR);
	assert_int_equal(r.code, SHOAL_ENONCE);
	assert_true(r.has_nonce); /* what a genuine resend would sign over */
	assert_false(w.aclose);
	assert_true(w.pending[0] && w.req[0] == parked);
	/* The HELLO again: refused too, and registers nothing. */
	r = attack(&w, hello, hello_len);
	assert_int_equal(r.code, SHOAL_ENONCE);
	assert_int_equal(srv_core_registered(w.s), 1);

	/* Client 1 joins, round 1 runs; then client 0's UPDATE again. */
	net_client(&w, 1, true, NULL);
	net_run_until(&w, NULL);
	assert_int_equal(w.err[0], SHOAL_OK);
	assert_int_equal(w.trained[0], 3);
	uint8_t *upd = w.sent[0][MSG_UPDATE];
	size_t upd_len = w.sent_len[0][MSG_UPDATE];
	r = attack(&w, upd, upd_len);
	assert_int_equal(r.type, MSG_ERROR);
	assert_int_equal(r.code, SHOAL_ENONCE);
	/* and the first CHECKIN, long after */
	r = attack(&w, ci, ci_len);
	assert_int_equal(r.code, SHOAL_ENONCE);
	free(hello);
	free(ci);
	net_free(&w);
}

/* A request signed over client 0's current nonce, built by hand as a client
 * in another language would: CHECKIN {id, nonce, sig} signed with sk. */
static uint8_t *
signed_checkin(uint32_t id, const uint8_t nonce[16], const uint8_t *sk, size_t *len)
{
	uint8_t *buf;
	msg m = {.type = MSG_CHECKIN, .client_id = id, .model_ver = 7, .has_nonce = true,
	         .has_sig = true};
	memcpy(m.nonce, nonce, 16);
	assert_int_equal(msg_encode(&m, &buf, len), SHOAL_OK);
	assert_int_equal(id_sign(sk, buf, *len), SHOAL_OK);
	return buf;
}

static bool
holds_nonce(const net *w)
{
	/* client 0 got its WELCOME (its next request is signed) */
	return w->sent[0][MSG_CHECKIN] != NULL;
}

static void
test_forged_signature_refused(void **state)
{
	uint8_t allow[3][32], other_pk[32], other_sk[64];
	srv_config c;
	net w = {0};

	for (int i = 0; i < 3; i++)
		client_pk(i, allow[i]);
	identity_config(&c, (const uint8_t(*)[32])allow, 3, NULL, 0);
	c.min_clients = 3;
	c.clients_per_round = 3;
	net_server(&w, &c);
	net_client(&w, 0, true, NULL);
	net_run_until(&w, holds_nonce);
	/* Client 0 is parked. Ask for its nonce the way an attacker can: any
	 * unsigned request for its id gets it back, unspent. */
	msg probe = {.type = MSG_CHECKIN, .client_id = 1};
	uint8_t *buf;
	size_t len;
	assert_int_equal(msg_encode(&probe, &buf, &len), SHOAL_OK);
	msg r = attack(&w, buf, len);
	free(buf);
	assert_int_equal(r.code, SHOAL_ENONCE);
	assert_true(r.has_nonce);
	uint8_t nonce[16];
	memcpy(nonce, r.nonce, 16);

	/* The right nonce, another key (even an admitted one): forged. */
	seed_key(200, other_pk, other_sk);
	buf = signed_checkin(1, nonce, other_sk, &len);
	r = attack(&w, buf, len);
	assert_int_equal(r.type, MSG_ERROR);
	assert_int_equal(r.code, SHOAL_EBADSIG);
	assert_memory_equal(r.nonce, nonce, 16); /* not spent by a forgery */
	free(buf);
	buf = signed_checkin(1, nonce, w.sk[1], &len); /* client 1's key, client 0's id */
	assert_int_equal(attack(&w, buf, len).code, SHOAL_EBADSIG);
	free(buf);
	/* Client 0's own key, then one field changed after signing: "ver"
	 * (86 a1 76 01 a1 74 03 a2 69 64 01 a3 76 65 72 07 ...) from 7 to 8. */
	buf = signed_checkin(1, nonce, w.sk[0], &len);
	assert_int_equal(buf[15], 7);
	buf[15] = 8;
	assert_int_equal(attack(&w, buf, len).code, SHOAL_EBADSIG);
	buf[15] = 7;
	buf[len - 1] ^= 0x80; /* the signature itself */
	r = attack(&w, buf, len);
	assert_int_equal(r.code, SHOAL_EBADSIG);
	assert_memory_equal(r.nonce, nonce, 16);
	free(buf);
	/* A signature cut off, or moved before another key: not accepted. */
	msg cut = {.type = MSG_CHECKIN, .client_id = 1, .has_nonce = true};
	memcpy(cut.nonce, nonce, 16);
	assert_int_equal(msg_encode(&cut, &buf, &len), SHOAL_OK);
	assert_int_equal(attack(&w, buf, len).code, SHOAL_EBADSIG);
	free(buf);
	assert_true(w.pending[0]); /* client 0's own check-in is still parked */

	/* Everyone still trains. */
	net_client(&w, 1, true, NULL);
	net_client(&w, 2, true, NULL);
	net_run(&w);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(w.err[i], SHOAL_OK);
		assert_int_equal(w.trained[i], 2);
	}
	net_free(&w);
}

static void
test_token_used_once(void **state)
{
	uint8_t tokens[1][32];
	srv_config c;
	net w = {0};
	const char *tok = "0123456789abcdef0123456789abcdef";

	id_token_hash(tok, tokens[0]);
	identity_config(&c, NULL, 0, (const uint8_t(*)[32])tokens, 1);
	c.min_clients = 1;
	c.clients_per_round = 1;
	c.rounds = 4;
	net_server(&w, &c);
	net_client(&w, 0, true, tok);
	net_client(&w, 1, true, "fedcba9876543210fedcba9876543210"); /* unknown */
	net_run_until(&w, NULL);
	assert_int_equal(w.err[0], SHOAL_OK);
	assert_int_equal(w.err[1], SHOAL_ETOKEN);
	/* The same token for another key: used up. */
	net_client(&w, 2, true, tok);
	net_run(&w);
	assert_int_equal(w.err[2], SHOAL_ETOKEN);
	assert_int_equal(w.trained[2], 0);
	/* A key without a token on a tokens-only server. */
	net_client(&w, 3, true, NULL);
	net_run(&w);
	assert_int_equal(w.err[3], SHOAL_EUNLISTED);
	/* The enrolled key needs no token any more (a restarted client). */
	uint32_t id;
	assert_true(srv_core_take_binding(w.s, &id));
	assert_int_equal(id, 1);
	assert_false(srv_core_take_binding(w.s, &id));
	srv_ckpt_key k;
	assert_true(srv_core_client_key(w.s, 1, &k));
	assert_true(k.enrolled);
	assert_memory_equal(k.token, tokens[0], 32);
	net_free(&w);
}

static void
test_name_and_key_bound(void **state)
{
	uint8_t allow[2][32];
	srv_config c;
	net w = {0};

	client_pk(0, allow[0]);
	client_pk(1, allow[1]);
	identity_config(&c, (const uint8_t(*)[32])allow, 2, NULL, 0);
	c.min_clients = 1;
	c.clients_per_round = 1;
	net_server(&w, &c);
	net_client(&w, 0, true, NULL);
	net_run(&w);
	assert_int_equal(w.err[0], SHOAL_OK);
	/* Client 1 (listed) claims the name c0 with its own key. */
	uint8_t sk1[64], pk1[32];
	seed_key(32, pk1, sk1);
	assert_memory_equal(pk1, allow[1], 32);
	cli_config cc = {.name = "c0", .model = "logreg", .dim = 7850, .n_examples = 1,
	                 .seed = 1, .identity_sk = sk1};
	cli_core_free(w.c[1]);
	assert_int_equal(cli_core_new(&cc, &w.c[1]), SHOAL_OK);
	w.n = 2;
	net_run(&w);
	assert_int_equal(w.err[1], SHOAL_EIDENTITY);
	/* Client 0's key under another name. */
	cc.name = "renamed";
	cc.identity_sk = w.sk[0];
	w.err[1] = SHOAL_OK;
	cli_core_free(w.c[1]);
	assert_int_equal(cli_core_new(&cc, &w.c[1]), SHOAL_OK);
	w.done[1] = false;
	net_run(&w);
	assert_int_equal(w.err[1], SHOAL_EIDENTITY);
	assert_int_equal(srv_core_registered(w.s), 1);
	net_free(&w);
}

/* Transports resend: a request whose reply was lost arrives twice. The
 * second copy's nonce is spent; the client signs it again over the nonce
 * in the refusal, and an UPDATE then counts as delivered (EDUP). */
static void
test_resent_requests_signed_again(void **state)
{
	uint8_t allow[2][32];
	srv_config c;
	net w = {0};

	client_pk(0, allow[0]);
	client_pk(1, allow[1]);
	identity_config(&c, (const uint8_t(*)[32])allow, 2, NULL, 0);
	c.rounds = 1;
	net_server(&w, &c);
	net_client(&w, 0, true, NULL);
	net_client(&w, 1, true, NULL);
	/* Run until client 0 has trained, then lose the ACK of its UPDATE. */
	for (int guard = 0; guard < 1000 && w.trained[0] == 0; guard++) {
		if (!net_step(&w)) {
			w.now += 10;
			srv_core_on_timer(w.s, w.now);
			deliver(&w);
		}
	}
	assert_int_equal(w.trained[0], 1);
	cli_step st;
	cli_core_step(w.c[0], w.now, &st);
	assert_int_equal(st.action, CLI_SEND);
	srv_core_on_request(w.s, 777, st.buf, st.len, w.now); /* arrives; its ACK is lost */
	deliver(&w);
	cli_core_on_transport_error(w.c[0], SHOAL_ETIMEDOUT, w.now);
	/* Client 0 alone, so the round is still open when the copy arrives:
	 * it is resent as it was, refused (spent nonce), signed again, and
	 * answered EDUP. */
	for (int guard = 0; guard < 100 && cli_core_stats(w.c[0])->updates_acked == 0; guard++) {
		if (!net_step_one(&w, 0)) {
			w.now = w.wake[0] > w.now ? w.wake[0] : w.now + 1;
			deliver(&w);
		}
	}
	assert_int_equal(cli_core_stats(w.c[0])->updates_acked, 1);
	net_run(&w);
	assert_int_equal(w.err[0], SHOAL_OK);
	assert_int_equal(cli_core_stats(w.c[0])->updates_acked, 1); /* via EDUP */
	assert_int_equal(cli_core_stats(w.c[0])->updates_late, 0);
	net_free(&w);
}

/* Without --allowlist or --enroll-tokens nothing changes: a client with a
 * key sends it, gets no nonces, signs nothing. */
static void
test_open_server_ignores_keys(void **state)
{
	srv_config c;
	net w = {0};

	base_config(&c);
	net_server(&w, &c);
	net_client(&w, 0, true, NULL);
	net_client(&w, 1, false, NULL);
	net_run(&w);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(w.err[i], SHOAL_OK);
		assert_int_equal(w.trained[i], 2);
		msg m;
		assert_int_equal(msg_decode(w.sent[i][MSG_CHECKIN], w.sent_len[i][MSG_CHECKIN], &m),
		                 (long)w.sent_len[i][MSG_CHECKIN]);
		assert_false(m.has_sig || m.has_nonce);
	}
	uint32_t id;
	assert_false(srv_core_take_binding(w.s, &id));
	net_free(&w);
}

/* With identity, secure rounds sign the advertised keys and the set of
 * inputs with the same key (privacy/secagg.h "signed keys"). */
static void
test_secure_round_signed_with_identity(void **state)
{
	uint8_t allow[3][32];
	srv_config c;
	net w = {0};

	for (int i = 0; i < 3; i++)
		client_pk(i, allow[i]);
	identity_config(&c, (const uint8_t(*)[32])allow, 3, NULL, 0);
	c.secagg = SRV_SECAGG_FULL;
	c.clients_per_round = 3;
	c.min_clients = 3;
	c.secagg_phase_ms = 1000;
	c.secagg_dropout = 0;
	net_server(&w, &c);
	for (int i = 0; i < 3; i++)
		net_client(&w, i, true, NULL);
	net_run(&w);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(w.err[i], SHOAL_OK);
		assert_int_equal(cli_core_stats(w.c[i])->updates_acked, 2);
		msg m;
		assert_non_null(w.sent[i][MSG_SA]);
		assert_int_equal(msg_decode(w.sent[i][MSG_SA], w.sent_len[i][MSG_SA], &m),
		                 (long)w.sent_len[i][MSG_SA]);
		assert_true(m.has_sig); /* the request, over the nonce */
		/* and the round itself: "signed keys" in TASK "sa" */
		assert_non_null(w.task[i]);
		assert_int_equal(msg_decode(w.task[i], w.task_len[i], &m), (long)w.task_len[i]);
		assert_true(m.has_sa);
		sa_config sc;
		assert_int_equal(sa_config_read(&sc, m.sa, SA_CONFIG_BYTES), SHOAL_OK);
		assert_true(sc.signed_keys);
	}
	net_free(&w);
}

/* ---- what survives restarts --------------------------------------------- */

static void
tmpdir(char *dir, size_t n)
{
	snprintf(dir, n, "/tmp/shoal-ident-XXXXXX");
	assert_non_null(mkdtemp(dir));
}

static void
rm_rf(const char *dir)
{
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

static void
test_client_key_survives_restart(void **state)
{
	char dir[64], path[128];
	assert_true(sodium_init() >= 0);
	uint8_t *a = sodium_malloc(ID_SK_BYTES), *b = sodium_malloc(ID_SK_BYTES);
	uint8_t pk[32];
	bool created;
	struct stat st;

	assert_non_null(a);
	assert_non_null(b);
	tmpdir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/identity", dir);
	/* Not there and not to be made. */
	assert_int_equal(cli_state_identity(dir, false, a, &created), SHOAL_EIO);
	assert_int_equal(cli_state_identity(dir, true, a, &created), SHOAL_OK);
	assert_true(created);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(st.st_size, 80);
	/* A restart: the same key, not a new one. */
	assert_int_equal(cli_state_identity(dir, true, b, &created), SHOAL_OK);
	assert_false(created);
	assert_memory_equal(a, b, ID_SK_BYTES);
	id_pk_of(a, pk);
	uint8_t sig[64], m[3] = {1, 2, 3};
	crypto_sign_detached(sig, NULL, m, 3, b);
	assert_int_equal(crypto_sign_verify_detached(sig, m, 3, pk), 0);
	/* Damaged: refused, never replaced by a new key. */
	FILE *f = fopen(path, "r+b");
	assert_non_null(f);
	fseek(f, 20, SEEK_SET);
	fputc(0x55, f);
	fclose(f);
	assert_int_equal(cli_state_identity(dir, true, b, &created), SHOAL_EFORMAT);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 80);
	assert_int_equal(truncate(path, 40), 0);
	assert_int_equal(cli_state_identity(dir, true, b, &created), SHOAL_EFORMAT);
	/* A file left by a crash while it was being made does no harm. */
	unlink(path);
	snprintf(path, sizeof path, "%s/identity.tmp", dir);
	f = fopen(path, "wb");
	fputs("half", f);
	fclose(f);
	assert_int_equal(cli_state_identity(dir, true, b, &created), SHOAL_OK);
	assert_true(created);
	assert_int_not_equal(access(path, F_OK), 0);
	/* The restarted client gets in with the key it kept. */
	uint8_t allow[1][32];
	id_pk_of(b, allow[0]);
	srv_config c;
	net w = {0};
	identity_config(&c, (const uint8_t(*)[32])allow, 1, NULL, 0);
	c.min_clients = 1;
	c.clients_per_round = 1;
	net_server(&w, &c);
	cli_config cc = {.name = "pi", .model = "logreg", .dim = 7850, .n_examples = 1,
	                 .seed = 1, .identity_sk = b};
	assert_int_equal(cli_core_new(&cc, &w.c[0]), SHOAL_OK);
	w.n = 1;
	net_run(&w);
	assert_int_equal(w.err[0], SHOAL_OK);
	assert_int_equal(w.trained[0], 2);
	net_free(&w);
	sodium_free(a);
	sodium_free(b);
	rm_rf(dir);
}

/* The server's checkpoint keeps the keys (section KEYS): after a resume
 * the enrolled key gets in without its token, and the token stays used. */
static void
test_enrolled_key_survives_resume(void **state)
{
	uint8_t tokens[2][32], *img;
	size_t len;
	srv_config c;
	net w = {0};
	const char *tok = "0123456789abcdef0123456789abcdef";

	id_token_hash(tok, tokens[0]);
	id_token_hash("another-token-0123456789", tokens[1]);
	identity_config(&c, NULL, 0, (const uint8_t(*)[32])tokens, 2);
	c.min_clients = 1;
	c.clients_per_round = 1;
	c.rounds = 1;
	net_server(&w, &c);
	net_client(&w, 0, true, tok);
	net_run(&w); /* one round, then save */
	assert_int_equal(w.err[0], SHOAL_OK);
	assert_int_equal(w.trained[0], 1);
	assert_int_equal(srv_core_save(w.s, &img, &len), SHOAL_OK);
	srv_ckpt ck;
	char why[256];
	assert_int_equal(srv_ckpt_decode(img, len, &ck, why, sizeof why), SHOAL_OK);
	assert_int_equal(ck.n_keys, 1);
	assert_int_equal(ck.keys[0].id, 1);
	assert_true(ck.keys[0].enrolled);
	uint8_t pk0[32];
	client_pk(0, pk0);
	assert_memory_equal(ck.keys[0].pk, pk0, 32);

	/* A new server process: the same tokens file, --resume. */
	srv_core_free(w.s);
	c.rounds = 3;
	assert_int_equal(srv_core_new(&c, &w.s), SHOAL_OK);
	assert_int_equal(srv_core_restore(w.s, &ck), SHOAL_OK);
	srv_ckpt_fini(&ck);
	free(img);
	uint32_t id;
	assert_false(srv_core_take_binding(w.s, &id)); /* restored, not new */
	w.trained[0] = 0;
	net_client(&w, 0, true, NULL);                       /* restarted: no token */
	net_client(&w, 1, true, tok);                        /* the used token */
	net_client(&w, 2, true, "another-token-0123456789"); /* the other one: once */
	net_run(&w);
	assert_int_equal(w.err[0], SHOAL_OK);
	assert_int_equal(w.err[1], SHOAL_ETOKEN);
	assert_int_equal(w.err[2], SHOAL_OK);
	assert_int_equal(w.trained[0] + w.trained[2], 2); /* rounds 2 and 3 */
	assert_int_equal(srv_core_registered(w.s), 2);
	assert_true(srv_core_take_binding(w.s, &id)); /* client 2, new */
	assert_int_equal(id, 2);
	net_free(&w);
}

/* The key log: bindings after the last checkpoint; torn tail cut off. */
static void
test_key_log(void **state)
{
	char dir[64], path[128];
	srv_ckpt_log log;
	srv_ckpt_key k[3], *back;
	uint32_t n;

	tmpdir(dir, sizeof dir);
	memset(k, 0, sizeof k);
	for (int i = 0; i < 3; i++) {
		k[i].id = (uint32_t)(3 - i); /* bindings need not come in id order */
		memset(k[i].pk, 0x10 + i, 32);
	}
	k[1].enrolled = true;
	memset(k[1].token, 0xee, 32);
	assert_int_equal(srv_ckpt_keylog_open(dir, &log, &back, &n), SHOAL_OK);
	assert_int_equal(n, 0);
	assert_int_equal(srv_ckpt_keylog_append(&log, k, 2), SHOAL_OK);
	assert_int_equal(srv_ckpt_keylog_append(&log, k + 2, 1), SHOAL_OK);
	srv_ckpt_log_close(&log);
	assert_true(srv_ckpt_exists(dir));
	assert_int_equal(srv_ckpt_keylog_open(dir, &log, &back, &n), SHOAL_OK);
	assert_int_equal(n, 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(back[i].id, k[i].id);
		assert_memory_equal(back[i].pk, k[i].pk, 32);
		assert_int_equal(back[i].enrolled, k[i].enrolled);
		if (k[i].enrolled)
			assert_memory_equal(back[i].token, k[i].token, 32);
	}
	free(back);
	srv_ckpt_log_close(&log);
	/* A crash in the middle of the last record. */
	snprintf(path, sizeof path, "%s/%s", dir, SRV_CKPT_KEYS);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 8 + 2 * (5 + 32 + 16) + (5 + 64 + 16));
	assert_int_equal(truncate(path, st.st_size - 7), 0);
	assert_int_equal(srv_ckpt_keylog_open(dir, &log, &back, &n), SHOAL_OK);
	assert_int_equal(n, 2);
	free(back);
	srv_ckpt_log_close(&log);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 8 + (5 + 32 + 16) + (5 + 64 + 16));
	/* Not a key log. */
	FILE *f = fopen(path, "wb");
	fputs("SHCL\1\0\0\0", f);
	fclose(f);
	assert_int_equal(srv_ckpt_keylog_open(dir, &log, &back, &n), SHOAL_EFORMAT);
	rm_rf(dir);
}

/* A checkpoint's KEYS section: round trip, refused when out of order, and
 * restoring keys that contradict each other is refused. */
static void
test_checkpoint_keys_section(void **state)
{
	srv_config c;
	srv_core *s;
	uint8_t *img;
	size_t len;
	char why[256];
	srv_ckpt ck;

	base_config(&c);
	assert_int_equal(srv_core_new(&c, &s), SHOAL_OK);
	srv_ckpt_client cl[3] = {{.name = "a"}, {.name = "b"}, {.name = "c"}};
	assert_int_equal(srv_core_restore_clients(s, cl, 3), SHOAL_OK);
	srv_ckpt_key k = {.id = 3};
	memset(k.pk, 3, 32);
	assert_int_equal(srv_core_restore_key(s, &k), SHOAL_OK);
	assert_int_equal(srv_core_restore_key(s, &k), SHOAL_OK); /* the same again */
	k.id = 2; /* the same key for another client */
	assert_int_equal(srv_core_restore_key(s, &k), SHOAL_EINVAL);
	k.id = 3; /* another key for client 3 */
	memset(k.pk, 4, 32);
	assert_int_equal(srv_core_restore_key(s, &k), SHOAL_EINVAL);
	k.id = 4; /* no such client */
	assert_int_equal(srv_core_restore_key(s, &k), SHOAL_EINVAL);
	k.id = 1;
	k.enrolled = true;
	memset(k.token, 9, 32);
	assert_int_equal(srv_core_restore_key(s, &k), SHOAL_OK);
	assert_int_equal(srv_core_save(s, &img, &len), SHOAL_OK);
	assert_int_equal(srv_ckpt_decode(img, len, &ck, why, sizeof why), SHOAL_OK);
	assert_int_equal(ck.n_keys, 2);
	assert_int_equal(ck.keys[0].id, 1);
	assert_true(ck.keys[0].enrolled);
	assert_int_equal(ck.keys[0].token[31], 9);
	assert_int_equal(ck.keys[1].id, 3);
	assert_false(ck.keys[1].enrolled);
	assert_int_equal(ck.keys[1].pk[0], 3);
	/* encoding refuses keys out of id order */
	srv_ckpt_key swap = ck.keys[0];
	ck.keys[0] = ck.keys[1];
	ck.keys[1] = swap;
	uint8_t *bad;
	size_t bad_len;
	assert_int_equal(srv_ckpt_encode(&ck, &bad, &bad_len), SHOAL_EINVAL);
	srv_ckpt_fini(&ck);
	free(img);
	srv_core_free(s);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_known_answer_signed_checkin),
	cmocka_unit_test(test_every_byte_signed),
	cmocka_unit_test(test_msg_identity_keys),
	cmocka_unit_test(test_allowlist_and_token_files),
	cmocka_unit_test(test_allowlisted_key_admitted),
	cmocka_unit_test(test_unlisted_key_refused),
	cmocka_unit_test(test_replayed_checkin_refused),
	cmocka_unit_test(test_forged_signature_refused),
	cmocka_unit_test(test_token_used_once),
	cmocka_unit_test(test_name_and_key_bound),
	cmocka_unit_test(test_resent_requests_signed_again),
	cmocka_unit_test(test_open_server_ignores_keys),
	cmocka_unit_test(test_secure_round_signed_with_identity),
	cmocka_unit_test(test_client_key_survives_restart),
	cmocka_unit_test(test_enrolled_key_survives_resume),
	cmocka_unit_test(test_key_log),
	cmocka_unit_test(test_checkpoint_keys_section),
};

SHOAL_TEST_MAIN(tests)
