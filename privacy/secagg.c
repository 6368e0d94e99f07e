/* secagg.c - the SecAgg / SecAgg+ phase machines (see secagg.h).
 *
 * Payloads are explicit little-endian byte strings (u32 = 4 bytes LE); the
 * layouts are written next to each encoder and in PROTOCOL.md section 13.
 * Every received payload is validated completely before any state changes.
 *
 * Key derivation: an X25519 shared secret z is never used directly; keys are
 * BLAKE2b-256 keyed with z over (label || session id), label
 * "shoal-sa-enc" for share encryption and "shoal-sa-mask" for the pairwise
 * mask seed. Both ends derive the same value, and a new session gives new
 * keys even if a client reused its key pair.
 *
 * Masks: client i adds PRG(b_i) (its self mask) and, for each neighbour j
 * that completed phase 2, +PRG(s_ij) if i < j and -PRG(s_ij) if i > j, all
 * mod 2^m (privacy/prg.h). Pairwise masks cancel between clients that both
 * sent their input; the server removes the rest after reconstruction. */
#include "secagg.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "privacy/noise.h"
#include "privacy/prg.h"
#include "privacy/ring.h"
#include "privacy/shamir.h"

/* ---- byte helpers --------------------------------------------------------- */

static void
put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
random_bytes(rng *r, void *out, size_t n)
{
	if (r != NULL)
		rng_bytes(r, out, n);
	else
		randombytes_buf(out, n);
}

/* BLAKE2b-256 keyed with z over label || session. */
static void
kdf(uint8_t out[SA_KEY_BYTES], const uint8_t z[SA_KEY_BYTES], const char *label,
    const uint8_t session[SA_KEY_BYTES])
{
	crypto_generichash_state st;
	crypto_generichash_init(&st, z, SA_KEY_BYTES, SA_KEY_BYTES);
	crypto_generichash_update(&st, (const uint8_t *)label, strlen(label));
	crypto_generichash_update(&st, session, SA_KEY_BYTES);
	crypto_generichash_final(&st, out, SA_KEY_BYTES);
	sodium_memzero(&st, sizeof st);
}

/* out = KDF(X25519(sk, pk)). SHOAL_ECRYPTO for a low-order public key. */
static shoal_err
agree(uint8_t out[SA_KEY_BYTES], const uint8_t sk[SA_KEY_BYTES], const uint8_t pk[SA_KEY_BYTES],
      const char *label, const uint8_t session[SA_KEY_BYTES])
{
	uint8_t z[crypto_scalarmult_BYTES];
	if (crypto_scalarmult(z, sk, pk) != 0)
		return SHOAL_ECRYPTO;
	kdf(out, z, label, session);
	sodium_memzero(z, sizeof z);
	return SHOAL_OK;
}

/* ---- configuration ---------------------------------------------------------- */

/* Layout (SA_CONFIG_BYTES = 57): n, k, t, m, d, round (u32 each), session
 * (32), flags (u8: bit 0 = signed keys, bit 1 = distributed DP). */
void
sa_config_write(const sa_config *c, uint8_t out[SA_CONFIG_BYTES])
{
	put32(out, c->n);
	put32(out + 4, c->k);
	put32(out + 8, c->t);
	put32(out + 12, c->m);
	put32(out + 16, c->d);
	put32(out + 20, c->round);
	memcpy(out + 24, c->session, SA_KEY_BYTES);
	out[56] = (uint8_t)((c->signed_keys ? 1 : 0) | (c->ddp ? 2 : 0));
}

shoal_err
sa_config_check(const sa_config *c)
{
	if (c->n < 2 || c->n > SA_N_MAX || c->k < 1 || c->k > c->n - 1 || c->t < 1 ||
	    c->t > c->k + 1 || c->m < 1 || c->m > 32 || c->d < 1)
		return SHOAL_EINVAL;
	if (c->k < c->n - 1 && c->k % 2 != 0)
		return SHOAL_EINVAL; /* the Harary ring needs an even degree */
	return SHOAL_OK;
}

shoal_err
sa_config_read(sa_config *c, const uint8_t *in, size_t len)
{
	if (len < SA_CONFIG_BYTES)
		return SHOAL_ETRUNC;
	if (len > SA_CONFIG_BYTES || in[56] > 3)
		return SHOAL_EMALFORMED;
	c->n = get32(in);
	c->k = get32(in + 4);
	c->t = get32(in + 8);
	c->m = get32(in + 12);
	c->d = get32(in + 16);
	c->round = get32(in + 20);
	memcpy(c->session, in + 24, SA_KEY_BYTES);
	c->signed_keys = (in[56] & 1) != 0;
	c->ddp = (in[56] & 2) != 0;
	return sa_config_check(c) == SHOAL_OK ? SHOAL_OK : SHOAL_EMALFORMED;
}

shoal_err
sa_threshold(uint32_t k, double dropout, double collusion, uint32_t *t)
{
	if (k == 0 || !(dropout >= 0 && dropout < 1) || !(collusion >= 0 && collusion < 1))
		return SHOAL_EINVAL;
	uint32_t tt = (uint32_t)(collusion * k) + 1;
	uint32_t lost = (uint32_t)(dropout * k);
	if ((double)lost < dropout * k)
		lost++;
	if (k - lost < tt)
		return SHOAL_EINVAL;
	*t = tt;
	return SHOAL_OK;
}

shoal_err
sa_ring_bits(uint32_t n, uint32_t wmax, uint32_t levels, uint32_t *m)
{
	unsigned __int128 top = (unsigned __int128)n * wmax * (levels > 1 ? levels : 1);
	for (uint32_t b = 2; b <= 32; b++) {
		if (top < ((unsigned __int128)1 << (b - 1))) {
			*m = b;
			return SHOAL_OK;
		}
	}
	return SHOAL_EINVAL;
}

/* ---- task parameters ----------------------------------------------------- */

#define TASK_FIXED (SA_CONFIG_BYTES + 6 * 4)

size_t
sa_task_size_max(uint32_t n_idx)
{
	return TASK_FIXED + SA_TASK_DDP_BYTES + 5 * (size_t)n_idx;
}

/* The masked elements for n_idx values: one each, or (distributed DP) the
 * rotated, padded coordinates; then the weight. 0 if too many. */
static uint64_t
task_d(const sa_task *t)
{
	return (uint64_t)(t->c.ddp ? dp_rht_dim(t->n_idx) : t->n_idx) + 1;
}

static bool
task_ddp_ok(const sa_task *t)
{
	return t->levels == 1 && t->wmax == 1 && t->n_idx >= 1 && t->clip > 0 &&
	       t->clip < 1e30f && t->l2max2 >= 1 &&
	       dp_discrete_gaussian_check(t->s2_num, t->s2_den) == SHOAL_OK;
}

long
sa_task_write(const sa_task *t, uint8_t *out, size_t cap)
{
	if (sa_config_check(&t->c) != SHOAL_OK || task_d(t) != t->c.d ||
	    cap < sa_task_size_max(t->n_idx) || (t->c.ddp && !task_ddp_ok(t)))
		return SHOAL_EINVAL;
	uint32_t sb;
	memcpy(&sb, &t->scale, 4);
	sa_config_write(&t->c, out);
	uint8_t *p = out + SA_CONFIG_BYTES;
	put32(p, t->me);
	put32(p + 4, t->phase_ms);
	put32(p + 8, sb);
	put32(p + 12, t->levels);
	put32(p + 16, t->wmax);
	put32(p + 20, t->n_idx);
	p += 24;
	if (t->c.ddp) {
		uint32_t cb;
		memcpy(&cb, &t->clip, 4);
		put32(p, cb);
		put32(p + 4, (uint32_t)t->s2_num);
		put32(p + 8, (uint32_t)(t->s2_num >> 32));
		put32(p + 12, t->s2_den);
		put32(p + 16, (uint32_t)t->l2max2);
		put32(p + 20, (uint32_t)(t->l2max2 >> 32));
		p += SA_TASK_DDP_BYTES;
	}
	for (uint32_t i = 0; i < t->n_idx; i++) {
		uint32_t g = i == 0 ? t->idx[0] : t->idx[i] - t->idx[i - 1] - 1;
		if (i > 0 && t->idx[i] <= t->idx[i - 1])
			return SHOAL_EINVAL;
		while (g >= 0x80) {
			*p++ = (uint8_t)(g | 0x80);
			g >>= 7;
		}
		*p++ = (uint8_t)g;
	}
	return (long)(p - out);
}

void
sa_task_fini(sa_task *t)
{
	free(t->idx);
	t->idx = NULL;
}

shoal_err
sa_task_read(sa_task *t, const uint8_t *in, size_t len, uint32_t dim)
{
	shoal_err e;
	memset(t, 0, sizeof *t);
	if (len < TASK_FIXED)
		return SHOAL_ETRUNC;
	if ((e = sa_config_read(&t->c, in, SA_CONFIG_BYTES)) != SHOAL_OK)
		return e;
	const uint8_t *p = in + SA_CONFIG_BYTES, *end = in + len;
	uint32_t sb = get32(p + 8);
	t->me = get32(p);
	t->phase_ms = get32(p + 4);
	memcpy(&t->scale, &sb, 4);
	t->levels = get32(p + 12);
	t->wmax = get32(p + 16);
	t->n_idx = get32(p + 20);
	p += 24;
	if (t->me < 1 || t->me > t->c.n || !(t->scale > 0) || !(t->scale < 1e30f) ||
	    t->levels < 1 || t->levels > 32767 || t->wmax < 1 || t->n_idx > dim ||
	    task_d(t) != t->c.d)
		return SHOAL_EMALFORMED;
	if (t->c.ddp) {
		if ((size_t)(end - p) < SA_TASK_DDP_BYTES)
			return SHOAL_ETRUNC;
		uint32_t cb = get32(p);
		memcpy(&t->clip, &cb, 4);
		t->s2_num = get32(p + 4) | (uint64_t)get32(p + 8) << 32;
		t->s2_den = get32(p + 12);
		t->l2max2 = get32(p + 16) | (uint64_t)get32(p + 20) << 32;
		p += SA_TASK_DDP_BYTES;
		if (!task_ddp_ok(t))
			return SHOAL_EMALFORMED;
	}
	if ((t->idx = malloc(((size_t)t->n_idx + 1) * sizeof *t->idx)) == NULL)
		return SHOAL_ENOMEM;
	uint64_t prev = 0;
	for (uint32_t i = 0; i < t->n_idx; i++) {
		uint64_t g = 0;
		for (unsigned sh = 0;; sh += 7) {
			if (p == end) {
				sa_task_fini(t);
				return SHOAL_ETRUNC;
			}
			if (sh > 28) {
				sa_task_fini(t);
				return SHOAL_EMALFORMED;
			}
			uint8_t b = *p++;
			g |= (uint64_t)(b & 0x7f) << sh;
			if (!(b & 0x80)) {
				if (b == 0 && sh > 0) { /* not the shortest encoding */
					sa_task_fini(t);
					return SHOAL_EMALFORMED;
				}
				break;
			}
		}
		uint64_t v = i == 0 ? g : prev + 1 + g;
		if (v >= dim) {
			sa_task_fini(t);
			return SHOAL_EDIM;
		}
		t->idx[i] = (uint32_t)v;
		prev = v;
	}
	if (p != end) {
		sa_task_fini(t);
		return SHOAL_EMALFORMED;
	}
	return SHOAL_OK;
}

/* Position of each client on the Harary ring: a Fisher-Yates permutation
 * drawn from BLAKE2b(session)-keyed ChaCha20 (the rng module's stream 0 of
 * the session's first 8 bytes would be weaker: use the whole id). */
static void
ring_order(const sa_config *c, uint32_t *pos_of, uint32_t *node_at)
{
	uint8_t key[crypto_stream_chacha20_ietf_KEYBYTES];
	uint8_t nonce[crypto_stream_chacha20_ietf_NONCEBYTES] = {'g', 'r', 'a', 'p', 'h'};
	uint8_t buf[64];
	size_t used = sizeof buf;
	uint32_t block = 0;

	kdf(key, c->session, "shoal-sa-graph", c->session);
	for (uint32_t i = 0; i < c->n; i++)
		node_at[i] = i + 1;
	for (uint32_t i = c->n - 1; i > 0; i--) {
		/* uniform j in [0, i] by rejection on 32-bit words */
		uint32_t bound = i + 1, lim = (uint32_t)(0x100000000ull - 0x100000000ull % bound), v;
		do {
			if (used + 4 > sizeof buf) {
				memset(buf, 0, sizeof buf);
				crypto_stream_chacha20_ietf_xor_ic(buf, buf, sizeof buf, nonce, block++, key);
				used = 0;
			}
			v = get32(buf + used);
			used += 4;
		} while (lim != 0 && v >= lim);
		uint32_t j = v % bound, tmp = node_at[i];
		node_at[i] = node_at[j];
		node_at[j] = tmp;
	}
	for (uint32_t p = 0; p < c->n; p++)
		pos_of[node_at[p] - 1] = p;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Neighbours of i from a precomputed ring order. */
static void
neighbors_from(const sa_config *c, const uint32_t *pos_of, const uint32_t *node_at, uint32_t i,
               uint32_t *out)
{
	if (c->k == c->n - 1) {
		for (uint32_t j = 1, o = 0; j <= c->n; j++)
			if (j != i)
				out[o++] = j;
		return;
	}
	uint32_t p = pos_of[i - 1], h = c->k / 2, o = 0;
	for (uint32_t s = 1; s <= h; s++) {
		out[o++] = node_at[(p + s) % c->n];
		out[o++] = node_at[(p + c->n - s) % c->n];
	}
	qsort(out, c->k, sizeof *out, cmp_u32);
}

void
sa_neighbors(const sa_config *c, uint32_t i, uint32_t *out)
{
	uint32_t *pos = malloc(2 * (size_t)c->n * sizeof *pos);
	if (pos == NULL) {
		memset(out, 0, c->k * sizeof *out);
		return;
	}
	ring_order(c, pos, pos + c->n);
	neighbors_from(c, pos, pos + c->n, i, out);
	free(pos);
}

/* Is j in the sorted list v[0..n)? */
static bool
in_sorted(const uint32_t *v, uint32_t n, uint32_t j)
{
	uint32_t lo = 0, hi = n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (v[mid] == j)
			return true;
		if (v[mid] < j)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

/* ---- signatures -------------------------------------------------------- */

static void
adv_message(uint8_t *msg, const sa_config *c, uint32_t i, const uint8_t *cpk, const uint8_t *spk)
{
	memcpy(msg, "shoal-sa-adv", 12);
	memcpy(msg + 12, c->session, SA_KEY_BYTES);
	put32(msg + 44, i);
	memcpy(msg + 48, cpk, SA_KEY_BYTES);
	memcpy(msg + 80, spk, SA_KEY_BYTES);
}
#define ADV_MSG_BYTES 112

/* "shoal-sa-u3" || session || count || sorted indices */
static uint8_t *
u3_message(const sa_config *c, const uint32_t *u3, uint32_t n, size_t *len)
{
	*len = 11 + SA_KEY_BYTES + 4 + 4 * (size_t)n;
	uint8_t *m = malloc(*len);
	if (m == NULL)
		return NULL;
	memcpy(m, "shoal-sa-u3", 11);
	memcpy(m + 11, c->session, SA_KEY_BYTES);
	put32(m + 43, n);
	for (uint32_t i = 0; i < n; i++)
		put32(m + 47 + 4 * (size_t)i, u3[i]);
	return m;
}

/* ---- client -------------------------------------------------------------- */

typedef struct peer_secret {
	uint32_t j;
	uint8_t spk[SA_KEY_BYTES];  /* j's mask public key */
	uint8_t cpk[SA_KEY_BYTES];  /* j's encryption public key */
	uint8_t idpk[SA_IDPK_BYTES];
	bool shared;                /* j's shares arrived (j in U2) */
	uint8_t sk_share[SA_SHARE_BYTES]; /* j's shares, held by me */
	uint8_t b_share[SA_SHARE_BYTES];
} peer_secret;

/* Everything secret lives in one sodium_malloc'd block. */
typedef struct client_secrets {
	uint8_t c_sk[SA_KEY_BYTES];
	uint8_t s_sk[SA_KEY_BYTES];
	uint8_t b[SA_KEY_BYTES];
	uint8_t idsk[SA_IDSK_BYTES];
	uint8_t own_sk_share[SA_SHARE_BYTES];
	uint8_t own_b_share[SA_SHARE_BYTES];
} client_secrets;

struct sa_client {
	sa_config c;
	uint32_t me;
	sa_phase next;
	rng *r;
	client_secrets *sec;
	uint8_t c_pk[SA_KEY_BYTES], s_pk[SA_KEY_BYTES];
	uint32_t *nbr;       /* k sorted neighbours */
	peer_secret *peers;  /* roster entries (sodium_malloc'd: holds shares) */
	uint32_t n_peers;
	uint32_t *u3;        /* from the consistency phase */
	uint32_t n_u3;
	uint8_t *u3msg;
	size_t u3msg_len;
};

shoal_err
sa_client_new(const sa_config *c, uint32_t me, const uint8_t *ident_sk, rng *r, sa_client **out)
{
	*out = NULL;
	if (sa_config_check(c) != SHOAL_OK || me < 1 || me > c->n ||
	    (c->signed_keys && ident_sk == NULL))
		return SHOAL_EINVAL;
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;
	sa_client *cl = calloc(1, sizeof *cl);
	if (cl == NULL)
		return SHOAL_ENOMEM;
	cl->c = *c;
	cl->me = me;
	cl->r = r;
	cl->next = SA_PH_ADVERTISE;
	if ((cl->sec = sodium_malloc(sizeof *cl->sec)) == NULL ||
	    (cl->nbr = malloc((size_t)c->k * sizeof *cl->nbr)) == NULL) {
		sa_client_free(cl);
		return SHOAL_ENOMEM;
	}
	sodium_memzero(cl->sec, sizeof *cl->sec);
	if (ident_sk != NULL)
		memcpy(cl->sec->idsk, ident_sk, SA_IDSK_BYTES);
	sa_neighbors(c, me, cl->nbr);
	*out = cl;
	return SHOAL_OK;
}

void
sa_client_free(sa_client *cl)
{
	if (cl == NULL)
		return;
	if (cl->sec != NULL)
		sodium_free(cl->sec); /* sodium_free wipes */
	if (cl->peers != NULL)
		sodium_free(cl->peers);
	free(cl->nbr);
	free(cl->u3);
	free(cl->u3msg);
	free(cl);
}

sa_phase
sa_client_phase(const sa_client *cl)
{
	return cl->next;
}

static shoal_err
client_fail(sa_client *cl, shoal_err e)
{
	/* A client that cannot go on leaves the session for good: its
	 * secrets are of no further use. */
	cl->next = SA_PH_ABORTED;
	sodium_memzero(cl->sec, sizeof *cl->sec);
	return e;
}

/* ADVERTISE payload: c_pk (32) s_pk (32) [sig (64) when signed keys]. */
shoal_err
sa_client_advertise(sa_client *cl, uint8_t **out, size_t *len)
{
	if (cl->next != SA_PH_ADVERTISE)
		return SHOAL_ESTATE;
	client_secrets *s = cl->sec;
	random_bytes(cl->r, s->c_sk, SA_KEY_BYTES);
	random_bytes(cl->r, s->s_sk, SA_KEY_BYTES);
	random_bytes(cl->r, s->b, SA_KEY_BYTES);
	if (crypto_scalarmult_base(cl->c_pk, s->c_sk) != 0 ||
	    crypto_scalarmult_base(cl->s_pk, s->s_sk) != 0)
		return client_fail(cl, SHOAL_ECRYPTO);
	size_t n = 2 * SA_KEY_BYTES + (cl->c.signed_keys ? SA_SIG_BYTES : 0);
	uint8_t *p = malloc(n);
	if (p == NULL)
		return SHOAL_ENOMEM;
	memcpy(p, cl->c_pk, SA_KEY_BYTES);
	memcpy(p + SA_KEY_BYTES, cl->s_pk, SA_KEY_BYTES);
	if (cl->c.signed_keys) {
		uint8_t m[ADV_MSG_BYTES];
		adv_message(m, &cl->c, cl->me, cl->c_pk, cl->s_pk);
		crypto_sign_detached(p + 2 * SA_KEY_BYTES, NULL, m, sizeof m, s->idsk);
	}
	cl->next = SA_PH_SHARE;
	*out = p;
	*len = n;
	return SHOAL_OK;
}

static size_t
roster_entry_bytes(const sa_config *c)
{
	return 4 + 2 * SA_KEY_BYTES + (c->signed_keys ? SA_IDPK_BYTES + SA_SIG_BYTES : 0);
}

static void
share_nonce(uint8_t nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES], uint32_t from,
            uint32_t to)
{
	memset(nonce, 0, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
	memcpy(nonce, "sa-share", 8);
	put32(nonce + 8, from);
	put32(nonce + 12, to);
}

static void
share_ad(uint8_t ad[SA_KEY_BYTES + 8], const sa_config *c, uint32_t from, uint32_t to)
{
	memcpy(ad, c->session, SA_KEY_BYTES);
	put32(ad + SA_KEY_BYTES, from);
	put32(ad + SA_KEY_BYTES + 4, to);
}

/* Roster (server -> client): count u32, then per neighbour in U1, sorted:
 * j u32, c_pk 32, s_pk 32, [idpk 32, sig 64 when signed keys].
 * SHARE payload (client -> server): count u32 (= roster count), then per
 * roster entry in the same order: dst u32, ciphertext (SA_CT_BYTES). The
 * plaintext is from u32 || to u32 || share of s_sk (40) || share of b (40);
 * XChaCha20-Poly1305-IETF with key KDF(X25519(c_sk_from, c_pk_to),
 * "shoal-sa-enc"), nonce "sa-share" || from || to || 0^8, and associated
 * data session || from || to. */
shoal_err
sa_client_share(sa_client *cl, const uint8_t *in, size_t len, uint8_t **out, size_t *olen)
{
	const sa_config *c = &cl->c;
	size_t eb = roster_entry_bytes(c);
	shoal_err e;

	if (cl->next != SA_PH_SHARE)
		return SHOAL_ESTATE;
	if (len < 4)
		return SHOAL_ETRUNC;
	uint32_t cnt = get32(in);
	if (cnt > c->k)
		return SHOAL_EMALFORMED;
	if (len != 4 + (size_t)cnt * eb)
		return len < 4 + (size_t)cnt * eb ? SHOAL_ETRUNC : SHOAL_EMALFORMED;
	uint32_t prev = 0;
	for (uint32_t x = 0; x < cnt; x++) {
		const uint8_t *p = in + 4 + (size_t)x * eb;
		uint32_t j = get32(p);
		if (j <= prev || !in_sorted(cl->nbr, c->k, j))
			return SHOAL_EMALFORMED;
		prev = j;
		if (c->signed_keys) {
			uint8_t m[ADV_MSG_BYTES];
			adv_message(m, c, j, p + 4, p + 4 + SA_KEY_BYTES);
			if (crypto_sign_verify_detached(p + 4 + 2 * SA_KEY_BYTES + SA_IDPK_BYTES, m,
			                                sizeof m, p + 4 + 2 * SA_KEY_BYTES) != 0)
				return client_fail(cl, SHOAL_ECRYPTO);
		}
	}
	if (cnt + 1 < c->t)
		return client_fail(cl, SHOAL_EABORTED);

	cl->peers = sodium_malloc((cnt + 1) * sizeof *cl->peers);
	uint8_t *payload = malloc(4 + (size_t)cnt * (4 + SA_CT_BYTES));
	uint32_t *xs = malloc((cnt + 1) * sizeof *xs);
	sa_share *sk_sh = sodium_malloc((cnt + 1) * sizeof *sk_sh);
	sa_share *b_sh = sodium_malloc((cnt + 1) * sizeof *b_sh);
	if (cl->peers == NULL || payload == NULL || xs == NULL || sk_sh == NULL || b_sh == NULL) {
		e = SHOAL_ENOMEM;
		goto done;
	}
	cl->n_peers = cnt;
	for (uint32_t x = 0; x < cnt; x++) {
		const uint8_t *p = in + 4 + (size_t)x * eb;
		peer_secret *ps = &cl->peers[x];
		memset(ps, 0, sizeof *ps);
		ps->j = get32(p);
		memcpy(ps->cpk, p + 4, SA_KEY_BYTES);
		memcpy(ps->spk, p + 4 + SA_KEY_BYTES, SA_KEY_BYTES);
		if (c->signed_keys)
			memcpy(ps->idpk, p + 4 + 2 * SA_KEY_BYTES, SA_IDPK_BYTES);
		xs[x] = ps->j;
	}
	xs[cnt] = cl->me; /* the client holds a share of its own secrets too */
	if ((e = sa_shamir_split(cl->sec->s_sk, c->t, cnt + 1, xs, cl->r, sk_sh)) != SHOAL_OK ||
	    (e = sa_shamir_split(cl->sec->b, c->t, cnt + 1, xs, cl->r, b_sh)) != SHOAL_OK)
		goto done;
	sa_share_write(&sk_sh[cnt], cl->sec->own_sk_share);
	sa_share_write(&b_sh[cnt], cl->sec->own_b_share);

	put32(payload, cnt);
	for (uint32_t x = 0; x < cnt; x++) {
		uint8_t *q = payload + 4 + (size_t)x * (4 + SA_CT_BYTES);
		uint8_t pt[8 + 2 * SA_SHARE_BYTES], key[SA_KEY_BYTES], nonce[24], ad[SA_KEY_BYTES + 8];
		uint32_t j = cl->peers[x].j;
		put32(q, j);
		if ((e = agree(key, cl->sec->c_sk, cl->peers[x].cpk, "shoal-sa-enc", c->session)) !=
		    SHOAL_OK) {
			sodium_memzero(key, sizeof key);
			goto done;
		}
		put32(pt, cl->me);
		put32(pt + 4, j);
		sa_share_write(&sk_sh[x], pt + 8);
		sa_share_write(&b_sh[x], pt + 8 + SA_SHARE_BYTES);
		share_nonce(nonce, cl->me, j);
		share_ad(ad, c, cl->me, j);
		crypto_aead_xchacha20poly1305_ietf_encrypt(q + 4, NULL, pt, sizeof pt, ad, sizeof ad,
		                                           NULL, nonce, key);
		sodium_memzero(pt, sizeof pt);
		sodium_memzero(key, sizeof key);
	}
	cl->next = SA_PH_MASKED;
	*out = payload;
	*olen = 4 + (size_t)cnt * (4 + SA_CT_BYTES);
	payload = NULL;
	e = SHOAL_OK;
done:
	free(payload);
	free(xs);
	if (sk_sh != NULL)
		sodium_free(sk_sh);
	if (b_sh != NULL)
		sodium_free(b_sh);
	if (e != SHOAL_OK && e != SHOAL_ENOMEM)
		return client_fail(cl, e);
	return e;
}

static peer_secret *
find_peer(sa_client *cl, uint32_t j)
{
	uint32_t lo = 0, hi = cl->n_peers;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (cl->peers[mid].j == j)
			return &cl->peers[mid];
		if (cl->peers[mid].j < j)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* INBOX (server -> client): count u32, then per sender in U2 that is in
 * my roster, sorted: from u32, ciphertext (SA_CT_BYTES).
 * MASKED payload (client -> server): the d masked values packed at m bits
 * (privacy/ring.h), exactly ceil(d*m/8) bytes. */
shoal_err
sa_client_mask(sa_client *cl, const uint8_t *in, size_t len, const uint32_t *x, uint8_t **out,
               size_t *olen)
{
	const sa_config *c = &cl->c;
	const size_t eb = 4 + SA_CT_BYTES;
	shoal_err e = SHOAL_OK;

	if (cl->next != SA_PH_MASKED)
		return SHOAL_ESTATE;
	if (len < 4)
		return SHOAL_ETRUNC;
	uint32_t cnt = get32(in);
	if (cnt > cl->n_peers)
		return SHOAL_EMALFORMED;
	if (len != 4 + (size_t)cnt * eb)
		return len < 4 + (size_t)cnt * eb ? SHOAL_ETRUNC : SHOAL_EMALFORMED;
	uint32_t prev = 0;
	for (uint32_t q = 0; q < cnt; q++) {
		uint32_t j = get32(in + 4 + (size_t)q * eb);
		if (j <= prev || find_peer(cl, j) == NULL)
			return SHOAL_EMALFORMED;
		prev = j;
	}
	uint32_t mask_m = (c->m == 32) ? 0xffffffffu : ((1u << c->m) - 1);
	for (uint32_t q = 0; q < c->d; q++)
		if (x[q] & ~mask_m)
			return SHOAL_EINVAL;
	/* Decrypt every share first; a failure leaves the session. */
	for (uint32_t q = 0; q < cnt; q++) {
		const uint8_t *p = in + 4 + (size_t)q * eb;
		uint32_t j = get32(p);
		peer_secret *ps = find_peer(cl, j);
		uint8_t pt[8 + 2 * SA_SHARE_BYTES], key[SA_KEY_BYTES], nonce[24], ad[SA_KEY_BYTES + 8];
		if ((e = agree(key, cl->sec->c_sk, ps->cpk, "shoal-sa-enc", c->session)) != SHOAL_OK)
			return client_fail(cl, e);
		share_nonce(nonce, j, cl->me);
		share_ad(ad, c, j, cl->me);
		int bad = crypto_aead_xchacha20poly1305_ietf_decrypt(pt, NULL, NULL, p + 4, SA_CT_BYTES,
		                                                     ad, sizeof ad, nonce, key);
		sodium_memzero(key, sizeof key);
		sa_share chk_sk, chk_b;
		if (bad != 0 || get32(pt) != j || get32(pt + 4) != cl->me ||
		    sa_share_read(&chk_sk, cl->me, pt + 8) != SHOAL_OK ||
		    sa_share_read(&chk_b, cl->me, pt + 8 + SA_SHARE_BYTES) != SHOAL_OK) {
			/* a share out of the field would make my UNMASK message invalid */
			sodium_memzero(pt, sizeof pt);
			sodium_memzero(&chk_sk, sizeof chk_sk);
			sodium_memzero(&chk_b, sizeof chk_b);
			return client_fail(cl, SHOAL_ECRYPTO);
		}
		sodium_memzero(&chk_sk, sizeof chk_sk);
		sodium_memzero(&chk_b, sizeof chk_b);
		memcpy(ps->sk_share, pt + 8, SA_SHARE_BYTES);
		memcpy(ps->b_share, pt + 8 + SA_SHARE_BYTES, SA_SHARE_BYTES);
		ps->shared = true;
		sodium_memzero(pt, sizeof pt);
	}
	uint32_t *y = malloc((size_t)c->d * sizeof *y);
	uint8_t *packed = malloc(sa_pack_size(c->d, c->m));
	if (y == NULL || packed == NULL) {
		free(y);
		free(packed);
		return SHOAL_ENOMEM;
	}
	memcpy(y, x, (size_t)c->d * sizeof *y);
	sa_prg_add(cl->sec->b, c->m, y, 0, c->d, +1);
	for (uint32_t q = 0; q < cl->n_peers; q++) {
		peer_secret *ps = &cl->peers[q];
		uint8_t seed[SA_KEY_BYTES];
		if (!ps->shared)
			continue;
		if ((e = agree(seed, cl->sec->s_sk, ps->spk, "shoal-sa-mask", c->session)) != SHOAL_OK)
			break;
		sa_prg_add(seed, c->m, y, 0, c->d, cl->me < ps->j ? +1 : -1);
		sodium_memzero(seed, sizeof seed);
	}
	if (e == SHOAL_OK)
		sa_pack(y, c->d, c->m, packed);
	sodium_memzero(y, (size_t)c->d * sizeof *y); /* holds the input */
	free(y);
	if (e != SHOAL_OK) {
		free(packed);
		return client_fail(cl, e);
	}
	cl->next = SA_PH_CONSISTENCY;
	*out = packed;
	*olen = sa_pack_size(c->d, c->m);
	return SHOAL_OK;
}

/* U3 (server -> client): count u32, then the sorted indices (u32 each).
 * CONSISTENCY payload (client -> server): a signature (64) over
 * "shoal-sa-u3" || session || count || indices when signed keys, else
 * empty (0 bytes). */
shoal_err
sa_client_consistency(sa_client *cl, const uint8_t *in, size_t len, uint8_t **out, size_t *olen)
{
	const sa_config *c = &cl->c;

	if (cl->next != SA_PH_CONSISTENCY)
		return SHOAL_ESTATE;
	if (len < 4)
		return SHOAL_ETRUNC;
	uint32_t cnt = get32(in);
	if (cnt > c->n)
		return SHOAL_EMALFORMED;
	if (len != 4 + 4 * (size_t)cnt)
		return len < 4 + 4 * (size_t)cnt ? SHOAL_ETRUNC : SHOAL_EMALFORMED;
	uint32_t *u3 = malloc(((size_t)cnt + 1) * sizeof *u3);
	if (u3 == NULL)
		return SHOAL_ENOMEM;
	bool mine = false;
	for (uint32_t q = 0; q < cnt; q++) {
		u3[q] = get32(in + 4 + 4 * (size_t)q);
		if (u3[q] < 1 || u3[q] > c->n || (q > 0 && u3[q] <= u3[q - 1])) {
			free(u3);
			return SHOAL_EMALFORMED;
		}
		mine |= u3[q] == cl->me;
	}
	if (!mine) {
		free(u3);
		return SHOAL_EMALFORMED;
	}
	if (cnt < c->t) {
		free(u3);
		return client_fail(cl, SHOAL_EABORTED);
	}
	cl->u3 = u3;
	cl->n_u3 = cnt;
	cl->u3msg = u3_message(c, u3, cnt, &cl->u3msg_len);
	if (cl->u3msg == NULL)
		return SHOAL_ENOMEM;
	uint8_t *p = malloc(c->signed_keys ? SA_SIG_BYTES : 1);
	if (p == NULL)
		return SHOAL_ENOMEM;
	if (c->signed_keys)
		crypto_sign_detached(p, NULL, cl->u3msg, cl->u3msg_len, cl->sec->idsk);
	cl->next = SA_PH_UNMASK;
	*out = p;
	*olen = c->signed_keys ? SA_SIG_BYTES : 0;
	return SHOAL_OK;
}

/* SIGS (server -> client): count u32, then per client in U4, sorted: j u32,
 * [sig 64 when signed keys].
 * UNMASK payload (client -> server): count u32, then for me and every
 * neighbour whose shares I hold, sorted by j: j u32, kind u8 (0: share of
 * j's self-mask seed b, because j is in U3; 1: share of j's mask secret
 * key, because j is not), share (SA_SHARE_BYTES). */
shoal_err
sa_client_unmask(sa_client *cl, const uint8_t *in, size_t len, uint8_t **out, size_t *olen)
{
	const sa_config *c = &cl->c;
	size_t eb = 4 + (c->signed_keys ? SA_SIG_BYTES : 0);

	if (cl->next != SA_PH_UNMASK)
		return SHOAL_ESTATE;
	if (len < 4)
		return SHOAL_ETRUNC;
	uint32_t cnt = get32(in);
	if (cnt > cl->n_u3)
		return SHOAL_EMALFORMED;
	if (len != 4 + (size_t)cnt * eb)
		return len < 4 + (size_t)cnt * eb ? SHOAL_ETRUNC : SHOAL_EMALFORMED;
	uint32_t prev = 0;
	for (uint32_t q = 0; q < cnt; q++) {
		const uint8_t *p = in + 4 + (size_t)q * eb;
		uint32_t j = get32(p);
		if (j <= prev || !in_sorted(cl->u3, cl->n_u3, j))
			return SHOAL_EMALFORMED;
		prev = j;
		peer_secret *ps = find_peer(cl, j);
		if (c->signed_keys && ps != NULL &&
		    crypto_sign_verify_detached(p + 4, cl->u3msg, cl->u3msg_len, ps->idpk) != 0)
			return client_fail(cl, SHOAL_ECRYPTO);
	}
	if (cnt < c->t)
		return client_fail(cl, SHOAL_EABORTED);

	uint32_t held = 1;
	for (uint32_t q = 0; q < cl->n_peers; q++)
		held += cl->peers[q].shared;
	size_t n = 4 + (size_t)held * (5 + SA_SHARE_BYTES);
	uint8_t *p = malloc(n);
	if (p == NULL)
		return SHOAL_ENOMEM;
	put32(p, held);
	uint8_t *w = p + 4;
	bool own_done = false;
	for (uint32_t q = 0; q <= cl->n_peers; q++) {
		/* merge my own entry into the sorted peer list */
		if (!own_done && (q == cl->n_peers || cl->peers[q].j > cl->me)) {
			put32(w, cl->me);
			w[4] = 0; /* I am in U3: my self-mask seed */
			memcpy(w + 5, cl->sec->own_b_share, SA_SHARE_BYTES);
			w += 5 + SA_SHARE_BYTES;
			own_done = true;
		}
		if (q == cl->n_peers)
			break;
		peer_secret *ps = &cl->peers[q];
		if (!ps->shared)
			continue;
		bool alive = in_sorted(cl->u3, cl->n_u3, ps->j);
		put32(w, ps->j);
		w[4] = alive ? 0 : 1;
		memcpy(w + 5, alive ? ps->b_share : ps->sk_share, SA_SHARE_BYTES);
		w += 5 + SA_SHARE_BYTES;
	}
	/* Nothing more will ever be revealed: drop every secret now. */
	sodium_memzero(cl->sec, sizeof *cl->sec);
	sodium_memzero(cl->peers, cl->n_peers * sizeof *cl->peers);
	cl->next = SA_PH_DONE;
	*out = p;
	*olen = n;
	return SHOAL_OK;
}

/* ---- server ---------------------------------------------------------------- */

typedef struct srv_peer {
	bool sent;              /* in the current phase */
	bool live;              /* member of the latest closed set */
	uint8_t cpk[SA_KEY_BYTES], spk[SA_KEY_BYTES], sig[SA_SIG_BYTES];
	uint8_t *cts;           /* SHARE payload entries (dst, ct) */
	uint32_t n_cts;
	uint8_t u3sig[SA_SIG_BYTES];
	uint8_t *unmask;        /* UNMASK payload entries */
	uint32_t n_unmask;
	bool in_u2, in_u3;
} srv_peer;

typedef struct lagrange_entry {
	uint32_t *holders; /* t sorted */
	sa_lagrange L;
} lagrange_entry;

struct sa_server {
	sa_config c;
	unsigned threads;
	const uint8_t (*idpk)[SA_IDPK_BYTES];
	sa_phase phase;
	sa_phase closed;     /* the phase whose replies are being served */
	srv_peer *p;         /* n */
	uint32_t *pos_of, *node_at;
	uint32_t *nbr;       /* scratch, k */
	uint32_t expected, received;
	uint32_t *sum;       /* d, running sum of masked inputs */
	uint32_t *tmp;       /* d, unpack scratch */
	uint32_t *u3;        /* sorted */
	uint32_t n_u3;
	uint8_t *u3msg;
	size_t u3msg_len;
	lagrange_entry *lag;
	uint32_t n_lag;
};

shoal_err
sa_server_new(const sa_config *c, const uint8_t (*ident_pk)[SA_IDPK_BYTES], unsigned threads,
              sa_server **out)
{
	*out = NULL;
	if (sa_config_check(c) != SHOAL_OK || (c->signed_keys && ident_pk == NULL) || threads == 0)
		return SHOAL_EINVAL;
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;
	sa_server *s = calloc(1, sizeof *s);
	if (s == NULL)
		return SHOAL_ENOMEM;
	s->c = *c;
	s->threads = threads;
	s->idpk = ident_pk;
	s->phase = SA_PH_ADVERTISE;
	s->expected = c->n;
	if ((s->p = calloc(c->n, sizeof *s->p)) == NULL ||
	    (s->pos_of = malloc(2 * (size_t)c->n * sizeof *s->pos_of)) == NULL ||
	    (s->nbr = malloc((size_t)c->k * sizeof *s->nbr)) == NULL ||
	    (s->sum = calloc(c->d, sizeof *s->sum)) == NULL ||
	    (s->tmp = malloc((size_t)c->d * sizeof *s->tmp)) == NULL ||
	    (s->u3 = malloc((size_t)c->n * sizeof *s->u3)) == NULL) {
		sa_server_free(s);
		return SHOAL_ENOMEM;
	}
	s->node_at = s->pos_of + c->n;
	ring_order(c, s->pos_of, s->node_at);
	for (uint32_t i = 0; i < c->n; i++)
		s->p[i].live = true;
	*out = s;
	return SHOAL_OK;
}

static void
free_lagrange(sa_server *s)
{
	for (uint32_t i = 0; i < s->n_lag; i++) {
		free(s->lag[i].holders);
		sa_lagrange_fini(&s->lag[i].L);
	}
	free(s->lag);
	s->lag = NULL;
	s->n_lag = 0;
}

void
sa_server_free(sa_server *s)
{
	if (s == NULL)
		return;
	if (s->p != NULL)
		for (uint32_t i = 0; i < s->c.n; i++) {
			free(s->p[i].cts);
			if (s->p[i].unmask != NULL) {
				sodium_memzero(s->p[i].unmask, (size_t)s->p[i].n_unmask * (5 + SA_SHARE_BYTES));
				free(s->p[i].unmask);
			}
		}
	free(s->p);
	free(s->pos_of);
	free(s->nbr);
	free(s->sum);
	free(s->tmp);
	free(s->u3);
	free(s->u3msg);
	free_lagrange(s);
	free(s);
}

sa_phase sa_server_phase(const sa_server *s) { return s->phase; }
uint32_t sa_server_expected(const sa_server *s) { return s->expected; }
uint32_t sa_server_received(const sa_server *s) { return s->received; }
const uint32_t *sa_server_sum(const sa_server *s) { return s->phase == SA_PH_DONE ? s->sum : NULL; }
uint32_t sa_server_lagrange_sets(const sa_server *s) { return s->n_lag; }

bool
sa_server_waiting_for(const sa_server *s, uint32_t i)
{
	return s->phase >= SA_PH_ADVERTISE && s->phase <= SA_PH_UNMASK && i >= 1 && i <= s->c.n &&
	       s->p[i - 1].live && !s->p[i - 1].sent;
}

bool
sa_server_in_u3(const sa_server *s, uint32_t i)
{
	return i >= 1 && i <= s->c.n && s->p[i - 1].in_u3;
}

/* Neighbours of i that are live in the set of the last closed phase, into
 * s->nbr; returns the count. */
static uint32_t
live_neighbors(sa_server *s, uint32_t i)
{
	uint32_t all[s->c.k > 0 ? s->c.k : 1], o = 0;
	neighbors_from(&s->c, s->pos_of, s->node_at, i, all);
	for (uint32_t q = 0; q < s->c.k; q++)
		if (s->p[all[q] - 1].live)
			s->nbr[o++] = all[q];
	return o;
}

static shoal_err
recv_advertise(sa_server *s, srv_peer *p, uint32_t i, const uint8_t *in, size_t len)
{
	size_t want = 2 * SA_KEY_BYTES + (s->c.signed_keys ? SA_SIG_BYTES : 0);
	if (len != want)
		return len < want ? SHOAL_ETRUNC : SHOAL_EMALFORMED;
	if (s->c.signed_keys) {
		uint8_t m[ADV_MSG_BYTES];
		adv_message(m, &s->c, i, in, in + SA_KEY_BYTES);
		if (crypto_sign_verify_detached(in + 2 * SA_KEY_BYTES, m, sizeof m, s->idpk[i - 1]) != 0)
			return SHOAL_ECRYPTO;
		memcpy(p->sig, in + 2 * SA_KEY_BYTES, SA_SIG_BYTES);
	}
	memcpy(p->cpk, in, SA_KEY_BYTES);
	memcpy(p->spk, in + SA_KEY_BYTES, SA_KEY_BYTES);
	return SHOAL_OK;
}

static shoal_err
recv_share(sa_server *s, srv_peer *p, uint32_t i, const uint8_t *in, size_t len)
{
	const size_t eb = 4 + SA_CT_BYTES;
	if (len < 4)
		return SHOAL_ETRUNC;
	uint32_t cnt = get32(in), want = live_neighbors(s, i);
	if (cnt != want)
		return SHOAL_EMALFORMED; /* one ciphertext per roster entry */
	if (len != 4 + (size_t)cnt * eb)
		return len < 4 + (size_t)cnt * eb ? SHOAL_ETRUNC : SHOAL_EMALFORMED;
	for (uint32_t q = 0; q < cnt; q++)
		if (get32(in + 4 + (size_t)q * eb) != s->nbr[q])
			return SHOAL_EMALFORMED;
	if ((p->cts = malloc(len - 4 > 0 ? len - 4 : 1)) == NULL)
		return SHOAL_ENOMEM;
	memcpy(p->cts, in + 4, len - 4);
	p->n_cts = cnt;
	return SHOAL_OK;
}

static shoal_err
recv_masked(sa_server *s, const uint8_t *in, size_t len)
{
	shoal_err e = sa_unpack(in, len, s->c.d, s->c.m, s->tmp);
	if (e != SHOAL_OK)
		return e;
	uint32_t mask = s->c.m == 32 ? 0xffffffffu : (1u << s->c.m) - 1;
	for (uint32_t q = 0; q < s->c.d; q++)
		s->sum[q] = (s->sum[q] + s->tmp[q]) & mask;
	return SHOAL_OK;
}

static shoal_err
recv_consistency(sa_server *s, srv_peer *p, uint32_t i, const uint8_t *in, size_t len)
{
	size_t want = s->c.signed_keys ? SA_SIG_BYTES : 0;
	if (len != want)
		return len < want ? SHOAL_ETRUNC : SHOAL_EMALFORMED;
	if (s->c.signed_keys) {
		if (crypto_sign_verify_detached(in, s->u3msg, s->u3msg_len, s->idpk[i - 1]) != 0)
			return SHOAL_ECRYPTO;
		memcpy(p->u3sig, in, SA_SIG_BYTES);
	}
	return SHOAL_OK;
}

/* The entries a holder i must reveal: itself and every neighbour in U2
 * (whose shares it received), sorted, with the kind fixed by U3. */
static shoal_err
recv_unmask(sa_server *s, srv_peer *p, uint32_t i, const uint8_t *in, size_t len)
{
	const size_t eb = 5 + SA_SHARE_BYTES;
	uint32_t all[s->c.k > 0 ? s->c.k : 1];

	if (len < 4)
		return SHOAL_ETRUNC;
	neighbors_from(&s->c, s->pos_of, s->node_at, i, all);
	uint32_t want = 1;
	for (uint32_t q = 0; q < s->c.k; q++)
		want += s->p[all[q] - 1].in_u2;
	uint32_t cnt = get32(in);
	if (cnt != want)
		return SHOAL_EMALFORMED;
	if (len != 4 + (size_t)cnt * eb)
		return len < 4 + (size_t)cnt * eb ? SHOAL_ETRUNC : SHOAL_EMALFORMED;
	uint32_t prev = 0;
	for (uint32_t q = 0; q < cnt; q++) {
		const uint8_t *e = in + 4 + (size_t)q * eb;
		uint32_t j = get32(e);
		sa_share sh;
		if (j <= prev || j > s->c.n || !s->p[j - 1].in_u2 ||
		    (j != i && !in_sorted(all, s->c.k, j)) || e[4] != (s->p[j - 1].in_u3 ? 0 : 1) ||
		    sa_share_read(&sh, i, e + 5) != SHOAL_OK)
			return SHOAL_EMALFORMED;
		prev = j;
	}
	if ((p->unmask = malloc(len - 4)) == NULL)
		return SHOAL_ENOMEM;
	memcpy(p->unmask, in + 4, len - 4);
	p->n_unmask = cnt;
	return SHOAL_OK;
}

shoal_err
sa_server_recv(sa_server *s, uint32_t i, sa_phase ph, const uint8_t *in, size_t len)
{
	shoal_err e;

	if (i < 1 || i > s->c.n)
		return SHOAL_EUNKNOWN;
	srv_peer *p = &s->p[i - 1];
	if (ph != s->phase || !p->live)
		return SHOAL_ESTATE;
	if (p->sent)
		return SHOAL_EDUP;
	switch (ph) {
	case SA_PH_ADVERTISE: e = recv_advertise(s, p, i, in, len); break;
	case SA_PH_SHARE: e = recv_share(s, p, i, in, len); break;
	case SA_PH_MASKED: e = recv_masked(s, in, len); break;
	case SA_PH_CONSISTENCY: e = recv_consistency(s, p, i, in, len); break;
	case SA_PH_UNMASK: e = recv_unmask(s, p, i, in, len); break;
	default: return SHOAL_ESTATE;
	}
	if (e != SHOAL_OK)
		return e;
	p->sent = true;
	s->received++;
	return SHOAL_OK;
}

/* Mask removal: every (seed, sign) pair is added over [lo, hi) of the sum;
 * workers take disjoint element ranges (the PRG's explicit counter makes
 * any range computable on its own), so the result does not depend on the
 * thread count. */
typedef struct mask_job {
	const sa_server *s;
	const uint8_t (*seeds)[SA_KEY_BYTES];
	const int8_t *signs;
	size_t n_masks;
	size_t lo, hi;
} mask_job;

static void *
mask_worker(void *arg)
{
	mask_job *j = arg;
	for (size_t q = 0; q < j->n_masks; q++)
		sa_prg_add(j->seeds[q], j->s->c.m, j->s->sum + j->lo, j->lo, j->hi - j->lo, j->signs[q]);
	return NULL;
}

/* Runs fn on jobs[0..t) (each `size` bytes): job 0, and any whose thread
 * failed to start, on the caller's thread. */
static void
run_workers(void *(*fn)(void *), void *jobs, size_t size, unsigned t)
{
	pthread_t th[t];
	bool started[t];
	for (unsigned w = 0; w < t; w++)
		started[w] = w > 0 && pthread_create(&th[w], NULL, fn, (char *)jobs + w * size) == 0;
	for (unsigned w = 0; w < t; w++)
		if (!started[w])
			fn((char *)jobs + w * size);
	for (unsigned w = 1; w < t; w++)
		if (started[w])
			pthread_join(th[w], NULL);
}

static void
remove_masks(sa_server *s, const uint8_t (*seeds)[SA_KEY_BYTES], const int8_t *signs, size_t n)
{
	unsigned t = s->threads;
	if ((size_t)t > s->c.d / 4096 + 1)
		t = (unsigned)(s->c.d / 4096 + 1);
	mask_job jobs[t];
	for (unsigned w = 0; w < t; w++) {
		/* ranges aligned to 64 elements so no two share a keystream block
		 * boundary in a way that matters for speed (not correctness) */
		size_t lo = (size_t)s->c.d * w / t / 64 * 64, hi = (size_t)s->c.d * (w + 1) / t / 64 * 64;
		if (w + 1 == t)
			hi = s->c.d;
		jobs[w] = (mask_job){.s = s, .seeds = seeds, .signs = signs, .n_masks = n, .lo = lo, .hi = hi};
	}
	run_workers(mask_worker, jobs, sizeof jobs[0], t);
}

/* A pairwise mask seed to recompute: KDF(X25519(dropped u's reconstructed
 * mask secret key, surviving neighbour v's mask public key)). */
typedef struct pair_seed {
	const uint8_t *sk, *pk;
	uint8_t *out;
} pair_seed;

/* Agreements are independent: worker w takes pairs w, w + t, ... */
typedef struct agree_job {
	const uint8_t *session;
	const pair_seed *pairs;
	size_t n, first, step;
	bool failed;
} agree_job;

static void *
agree_worker(void *arg)
{
	agree_job *j = arg;
	for (size_t q = j->first; q < j->n; q += j->step)
		if (agree(j->pairs[q].out, j->pairs[q].sk, j->pairs[q].pk, "shoal-sa-mask", j->session) !=
		    SHOAL_OK)
			j->failed = true;
	return NULL;
}

/* Every pairwise seed, on the unmask workers. SHOAL_EABORTED if a public
 * key was of low order. */
static shoal_err
agree_all(sa_server *s, const pair_seed *pairs, size_t n)
{
	unsigned t = s->threads;
	if ((size_t)t > n)
		t = (unsigned)n;
	if (t == 0)
		return SHOAL_OK;
	agree_job jobs[t];
	for (unsigned w = 0; w < t; w++)
		jobs[w] = (agree_job){.session = s->c.session, .pairs = pairs, .n = n, .first = w, .step = t};
	run_workers(agree_worker, jobs, sizeof jobs[0], t);
	for (unsigned w = 0; w < t; w++)
		if (jobs[w].failed)
			return SHOAL_EABORTED;
	return SHOAL_OK;
}

static const sa_lagrange *
lagrange_for(sa_server *s, const uint32_t *holders, shoal_err *e)
{
	uint32_t t = s->c.t;
	for (uint32_t q = 0; q < s->n_lag; q++)
		if (memcmp(s->lag[q].holders, holders, t * sizeof *holders) == 0)
			return &s->lag[q].L;
	lagrange_entry *v = realloc(s->lag, (s->n_lag + 1) * sizeof *v);
	if (v == NULL) {
		*e = SHOAL_ENOMEM;
		return NULL;
	}
	s->lag = v;
	lagrange_entry *le = &s->lag[s->n_lag];
	if ((le->holders = malloc(t * sizeof *holders)) == NULL) {
		*e = SHOAL_ENOMEM;
		return NULL;
	}
	memcpy(le->holders, holders, t * sizeof *holders);
	if ((*e = sa_lagrange_init(&le->L, holders, t)) != SHOAL_OK) {
		free(le->holders);
		return NULL;
	}
	s->n_lag++;
	return &le->L;
}

/* Finds holder h's revealed share for target j (h's entries are sorted). */
static const uint8_t *
find_revealed(const srv_peer *h, uint32_t j)
{
	const size_t eb = 5 + SA_SHARE_BYTES;
	uint32_t lo = 0, hi = h->n_unmask;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		uint32_t v = get32(h->unmask + (size_t)mid * eb);
		if (v == j)
			return h->unmask + (size_t)mid * eb + 5;
		if (v < j)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Reconstruct every needed secret and remove all masks from the sum. */
static shoal_err
unmask(sa_server *s)
{
	const sa_config *c = &s->c;
	uint32_t n2 = 0;
	shoal_err e = SHOAL_OK;
	for (uint32_t i = 0; i < c->n; i++)
		n2 += s->p[i].in_u2;
	uint32_t *all = malloc(((size_t)c->k + 1) * sizeof *all);
	uint32_t *holders = malloc((size_t)c->t * sizeof *holders);
	uint64_t(*ys)[SA_SHARE_LIMBS] = sodium_malloc((size_t)c->t * sizeof *ys);
	uint8_t *secret = sodium_malloc(SA_SECRET_BYTES);
	/* masks to remove: one per U3 member plus one per (dropped, survivor)
	 * neighbour pair */
	size_t cap = n2 + (size_t)(n2 - s->n_u3) * c->k, nm = 0, np = 0, nd = 0;
	uint8_t(*seeds)[SA_KEY_BYTES] = sodium_malloc((cap + n2 - s->n_u3 + 1) * SA_KEY_BYTES);
	int8_t *signs = malloc(cap ? cap : 1);
	/* the agreements that turn dropped clients' mask secret keys into
	 * pairwise seeds, run on the workers once all keys are known; the keys
	 * live after the seeds, in the same guarded block */
	uint8_t(*sks)[SA_KEY_BYTES] = seeds != NULL ? seeds + cap : NULL;
	pair_seed *pairs = malloc((cap ? cap : 1) * sizeof *pairs);
	if (all == NULL || holders == NULL || ys == NULL || secret == NULL || seeds == NULL ||
	    signs == NULL || pairs == NULL) {
		e = SHOAL_ENOMEM;
		goto done;
	}
	for (uint32_t u = 1; u <= c->n && e == SHOAL_OK; u++) {
		srv_peer *pu = &s->p[u - 1];
		if (!pu->in_u2)
			continue;
		if (!pu->in_u3) {
			/* a dropped client matters only through the pairwise masks
			 * its neighbours in U3 added; with none, leave it be */
			bool any = false;
			neighbors_from(c, s->pos_of, s->node_at, u, all);
			for (uint32_t q = 0; q < c->k && !any; q++)
				any = s->p[all[q] - 1].in_u3;
			if (!any)
				continue;
		}
		/* holders: u itself and its neighbours, the first t that answered */
		neighbors_from(c, s->pos_of, s->node_at, u, all);
		all[c->k] = u;
		qsort(all, (size_t)c->k + 1, sizeof *all, cmp_u32);
		uint32_t got = 0;
		for (uint32_t q = 0; q <= c->k && got < c->t; q++) {
			srv_peer *h = &s->p[all[q] - 1];
			if (!h->sent || h->unmask == NULL)
				continue;
			const uint8_t *sh = find_revealed(h, u);
			if (sh == NULL)
				continue;
			sa_share tmp;
			if (sa_share_read(&tmp, all[q], sh) != SHOAL_OK)
				continue; /* validated on arrival; cannot happen */
			memcpy(ys[got], tmp.y, sizeof ys[got]);
			sodium_memzero(&tmp, sizeof tmp);
			holders[got++] = all[q];
		}
		if (got < c->t) {
			e = SHOAL_EABORTED;
			break;
		}
		const sa_lagrange *L = lagrange_for(s, holders, &e);
		if (L == NULL)
			break;
		if ((e = sa_shamir_combine(L, (const uint64_t(*)[SA_SHARE_LIMBS])ys, secret)) != SHOAL_OK) {
			e = SHOAL_EABORTED;
			break;
		}
		if (pu->in_u3) {
			memcpy(seeds[nm], secret, SA_KEY_BYTES); /* self mask: subtract */
			signs[nm++] = -1;
			continue;
		}
		/* u dropped after sharing: recompute the pairwise masks its
		 * surviving neighbours added. */
		memcpy(sks[nd], secret, SA_KEY_BYTES);
		neighbors_from(c, s->pos_of, s->node_at, u, all);
		for (uint32_t q = 0; q < c->k; q++) {
			uint32_t v = all[q];
			if (!s->p[v - 1].in_u3)
				continue;
			pairs[np++] = (pair_seed){.sk = sks[nd], .pk = s->p[v - 1].spk, .out = seeds[nm]};
			signs[nm++] = v < u ? -1 : +1; /* v added +PRG if v < u */
		}
		nd++;
	}
	if (e == SHOAL_OK)
		e = agree_all(s, pairs, np);
	if (e == SHOAL_OK)
		remove_masks(s, (const uint8_t(*)[SA_KEY_BYTES])seeds, signs, nm);
done:
	free(all);
	free(holders);
	if (ys != NULL)
		sodium_free(ys);
	if (secret != NULL)
		sodium_free(secret);
	if (seeds != NULL)
		sodium_free(seeds);
	free(signs);
	free(pairs);
	return e;
}

shoal_err
sa_server_close(sa_server *s)
{
	const sa_config *c = &s->c;
	uint32_t live = 0;

	if (s->phase < SA_PH_ADVERTISE || s->phase > SA_PH_UNMASK)
		return SHOAL_ESTATE;
	for (uint32_t i = 0; i < c->n; i++) {
		srv_peer *p = &s->p[i];
		p->live = p->live && p->sent;
		live += p->live;
		if (s->phase == SA_PH_SHARE)
			p->in_u2 = p->live;
		if (s->phase == SA_PH_MASKED)
			p->in_u3 = p->live;
	}
	s->closed = s->phase;
	if (live < c->t) {
		s->phase = SA_PH_ABORTED;
		return SHOAL_EABORTED;
	}
	if (s->phase == SA_PH_MASKED) {
		s->n_u3 = 0;
		for (uint32_t i = 0; i < c->n; i++)
			if (s->p[i].in_u3)
				s->u3[s->n_u3++] = i + 1;
		free(s->u3msg);
		if ((s->u3msg = u3_message(c, s->u3, s->n_u3, &s->u3msg_len)) == NULL) {
			s->phase = SA_PH_ABORTED;
			return SHOAL_ENOMEM;
		}
	}
	if (s->phase == SA_PH_UNMASK) {
		shoal_err e = unmask(s);
		if (e != SHOAL_OK) {
			s->phase = SA_PH_ABORTED;
			return e == SHOAL_ENOMEM ? e : SHOAL_EABORTED;
		}
		s->phase = SA_PH_DONE;
		return SHOAL_OK;
	}
	s->phase = (sa_phase)(s->phase + 1);
	s->expected = live;
	s->received = 0;
	for (uint32_t i = 0; i < c->n; i++)
		s->p[i].sent = false; /* "live" now names who sent in the closed phase */
	return SHOAL_OK;
}

/* The reply to client i for the phase that just closed. */
shoal_err
sa_server_reply(sa_server *s, uint32_t i, uint8_t **out, size_t *len)
{
	const sa_config *c = &s->c;

	if (i < 1 || i > c->n || !s->p[i - 1].live || s->phase == SA_PH_ABORTED)
		return SHOAL_ESTATE;
	uint8_t *b = NULL;
	size_t n = 0;
	switch (s->closed) {
	case SA_PH_ADVERTISE: {
		uint32_t cnt = live_neighbors(s, i);
		size_t eb = roster_entry_bytes(c);
		n = 4 + (size_t)cnt * eb;
		if ((b = malloc(n)) == NULL)
			return SHOAL_ENOMEM;
		put32(b, cnt);
		for (uint32_t q = 0; q < cnt; q++) {
			uint8_t *w = b + 4 + (size_t)q * eb;
			const srv_peer *pj = &s->p[s->nbr[q] - 1];
			put32(w, s->nbr[q]);
			memcpy(w + 4, pj->cpk, SA_KEY_BYTES);
			memcpy(w + 4 + SA_KEY_BYTES, pj->spk, SA_KEY_BYTES);
			if (c->signed_keys) {
				memcpy(w + 4 + 2 * SA_KEY_BYTES, s->idpk[s->nbr[q] - 1], SA_IDPK_BYTES);
				memcpy(w + 4 + 2 * SA_KEY_BYTES + SA_IDPK_BYTES, pj->sig, SA_SIG_BYTES);
			}
		}
		break;
	}
	case SA_PH_SHARE: {
		const size_t eb = 4 + SA_CT_BYTES;
		uint32_t cnt = live_neighbors(s, i); /* neighbours in U2 */
		n = 4 + (size_t)cnt * eb;
		if ((b = malloc(n)) == NULL)
			return SHOAL_ENOMEM;
		put32(b, cnt);
		for (uint32_t q = 0; q < cnt; q++) {
			const srv_peer *pj = &s->p[s->nbr[q] - 1];
			uint8_t *w = b + 4 + (size_t)q * eb;
			const uint8_t *ct = NULL;
			for (uint32_t x = 0; x < pj->n_cts; x++)
				if (get32(pj->cts + (size_t)x * eb) == i)
					ct = pj->cts + (size_t)x * eb + 4;
			if (ct == NULL) { /* cannot happen: validated on arrival */
				free(b);
				return SHOAL_ESTATE;
			}
			put32(w, s->nbr[q]);
			memcpy(w + 4, ct, SA_CT_BYTES);
		}
		break;
	}
	case SA_PH_MASKED:
		n = 4 + 4 * (size_t)s->n_u3;
		if ((b = malloc(n)) == NULL)
			return SHOAL_ENOMEM;
		memcpy(b, s->u3msg + 43, n); /* count || indices */
		break;
	case SA_PH_CONSISTENCY: {
		size_t eb = 4 + (c->signed_keys ? SA_SIG_BYTES : 0);
		uint32_t cnt = 0;
		for (uint32_t j = 0; j < c->n; j++)
			cnt += s->p[j].live;
		n = 4 + (size_t)cnt * eb;
		if ((b = malloc(n)) == NULL)
			return SHOAL_ENOMEM;
		put32(b, cnt);
		uint8_t *w = b + 4;
		for (uint32_t j = 0; j < c->n; j++) {
			if (!s->p[j].live)
				continue;
			put32(w, j + 1);
			if (c->signed_keys)
				memcpy(w + 4, s->p[j].u3sig, SA_SIG_BYTES);
			w += eb;
		}
		break;
	}
	default:
		return SHOAL_ESTATE;
	}
	*out = b;
	*len = n;
	return SHOAL_OK;
}
