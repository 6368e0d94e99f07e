/* shamir.c - Shamir secret sharing over GF(2^61 - 1) (layout and rationale in shamir.h).
 *
 * Field elements are uint64_t < p. Products go through unsigned __int128
 * and fold once: for z < 2^122, z = hi * 2^61 + lo = hi + lo (mod p). The
 * final "subtract p if >= p" uses a mask rather than a branch, so the field
 * operations do not branch on share or secret values. */
#include "shamir.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

/* r < 2p (more precisely r < 2^63 + p) -> r mod p, without a branch. */
static inline uint64_t
csub(uint64_t r)
{
	uint64_t s = r - SA_P;
	uint64_t under = (uint64_t)0 - (s >> 63); /* all-ones when r < p */
	return s + (SA_P & under);
}

/* Any 64-bit value -> value mod p. */
static inline uint64_t
reduce64(uint64_t a)
{
	return csub((a & SA_P) + (a >> 61));
}

uint64_t
sa_gf_add(uint64_t a, uint64_t b)
{
	return csub(a + b);
}

uint64_t
sa_gf_sub(uint64_t a, uint64_t b)
{
	return csub(a + SA_P - b);
}

uint64_t
sa_gf_mul(uint64_t a, uint64_t b)
{
	unsigned __int128 z = (unsigned __int128)a * b;
	/* lo <= p and hi < 2^61 - 1, so lo + hi < 2p. */
	uint64_t lo = (uint64_t)z & SA_P;
	uint64_t hi = (uint64_t)(z >> 61);
	return csub(lo + hi);
}

/* Fermat: a^(p-2). The exponent is public, so the branch on its bits is fine. */
uint64_t
sa_gf_inv(uint64_t a)
{
	const uint64_t e = SA_P - 2;
	uint64_t r = 1;
	for (int bit = 60; bit >= 0; bit--) {
		r = sa_gf_mul(r, r);
		if ((e >> bit) & 1)
			r = sa_gf_mul(r, a);
	}
	return r;
}

static uint64_t
load_le(const uint8_t *p, size_t nbytes)
{
	uint64_t v = 0;
	for (size_t i = 0; i < nbytes; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static void
store_le(uint8_t *p, uint64_t v, size_t nbytes)
{
	for (size_t i = 0; i < nbytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Limb k covers secret bytes [7k, 7k + 7) for k < 4 and [28, 32) for k = 4. */
static size_t
limb_bytes(int k)
{
	return k < SA_SHARE_LIMBS - 1 ? 7 : SA_SECRET_BYTES - 7 * (SA_SHARE_LIMBS - 1);
}

static void
secret_to_limbs(const uint8_t secret[SA_SECRET_BYTES], uint64_t s[SA_SHARE_LIMBS])
{
	for (int k = 0; k < SA_SHARE_LIMBS; k++)
		s[k] = load_le(secret + 7 * k, limb_bytes(k));
}

static void
limbs_to_secret(const uint64_t s[SA_SHARE_LIMBS], uint8_t secret[SA_SECRET_BYTES])
{
	for (int k = 0; k < SA_SHARE_LIMBS; k++)
		store_le(secret + 7 * k, s[k], limb_bytes(k));
}

static void
fill_random(rng *r, void *buf, size_t len)
{
	if (r != NULL)
		rng_bytes(r, buf, len);
	else
		randombytes_buf(buf, len);
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Every x nonzero and all distinct. Quadratic for a few holders, sorting
 * a copy beyond that. Errors: SHOAL_EINVAL, SHOAL_ENOMEM. */
static shoal_err
check_points(const uint32_t *xs, uint32_t n)
{
	enum { QUADRATIC_MAX = 64 };

	for (uint32_t i = 0; i < n; i++)
		if (xs[i] == 0)
			return SHOAL_EINVAL;
	if (n <= QUADRATIC_MAX) {
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t j = i + 1; j < n; j++)
				if (xs[i] == xs[j])
					return SHOAL_EINVAL;
		return SHOAL_OK;
	}
	uint32_t *s = malloc((size_t)n * sizeof *s);
	if (s == NULL)
		return SHOAL_ENOMEM;
	memcpy(s, xs, (size_t)n * sizeof *s);
	qsort(s, n, sizeof *s, cmp_u32);
	shoal_err e = SHOAL_OK;
	for (uint32_t i = 1; i < n; i++)
		if (s[i] == s[i - 1])
			e = SHOAL_EINVAL;
	free(s);
	return e;
}

shoal_err
sa_shamir_split(const uint8_t secret[SA_SECRET_BYTES], uint32_t t, uint32_t n, const uint32_t *xs, rng *r,
                sa_share *out)
{
	if (secret == NULL || xs == NULL || out == NULL || t == 0 || t > n)
		return SHOAL_EINVAL;
	shoal_err e = check_points(xs, n);
	if (e != SHOAL_OK)
		return e;
	/* sodium_malloc needs the library initialised; repeated calls are cheap. */
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;

	/* c[k * deg + d - 1] is the coefficient of x^d in limb k's polynomial. */
	size_t deg = (size_t)t - 1;
	if (deg > SIZE_MAX / (sizeof(uint64_t) * SA_SHARE_LIMBS))
		return SHOAL_ENOMEM;
	size_t ncoef = deg * SA_SHARE_LIMBS;
	uint64_t *c = sodium_malloc(ncoef > 0 ? ncoef * sizeof *c : 1);
	if (c == NULL)
		return SHOAL_ENOMEM;
	fill_random(r, c, ncoef * sizeof *c);
	for (size_t i = 0; i < ncoef; i++) {
		/* Uniform in [0, p): keep 61 bits, redraw the single value p
		 * (probability 2^-61). Read as little-endian so a seeded split
		 * is the same on every host. */
		uint64_t v = load_le((const uint8_t *)&c[i], 8) & SA_P;
		while (v == SA_P) {
			uint8_t b[8];
			fill_random(r, b, sizeof b);
			v = load_le(b, sizeof b) & SA_P;
			sodium_memzero(b, sizeof b);
		}
		c[i] = v;
	}

	uint64_t s[SA_SHARE_LIMBS];
	secret_to_limbs(secret, s);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t x = xs[i];
		out[i].x = xs[i];
		for (int k = 0; k < SA_SHARE_LIMBS; k++) {
			/* Horner: f(x) = (...(c_deg x + c_deg-1) x + ...) x + s. */
			const uint64_t *ck = c + (size_t)k * deg;
			uint64_t y = 0;
			for (size_t d = deg; d >= 1; d--)
				y = sa_gf_add(sa_gf_mul(y, x), ck[d - 1]);
			out[i].y[k] = sa_gf_add(sa_gf_mul(y, x), s[k]);
		}
	}
	sodium_memzero(s, sizeof s);
	sodium_free(c); /* sodium_free zeroes the region before unmapping it */
	return SHOAL_OK;
}

shoal_err
sa_lagrange_init(sa_lagrange *L, const uint32_t *xs, uint32_t t)
{
	shoal_err e;

	memset(L, 0, sizeof *L);
	if (xs == NULL || t == 0)
		return SHOAL_EINVAL;
	L->x = malloc((size_t)t * sizeof *L->x);
	L->lambda = malloc((size_t)t * sizeof *L->lambda);
	if (L->x == NULL || L->lambda == NULL) {
		e = SHOAL_ENOMEM;
		goto fail;
	}
	memcpy(L->x, xs, (size_t)t * sizeof *L->x);

	/* lambda_i = prod_{j != i} x_j / (x_j - x_i) = (prod_j x_j) / den_i with
	 * den_i = x_i * prod_{j != i} (x_j - x_i). den_i is zero exactly when
	 * x_i is zero or repeated (all x < p), which is the validation. */
	uint64_t all = 1;
	for (uint32_t j = 0; j < t; j++)
		all = sa_gf_mul(all, xs[j]);
	for (uint32_t i = 0; i < t; i++) {
		uint64_t den = xs[i];
		for (uint32_t j = 0; j < t; j++)
			if (j != i)
				den = sa_gf_mul(den, sa_gf_sub(xs[j], xs[i]));
		if (den == 0) {
			e = SHOAL_EINVAL;
			goto fail;
		}
		L->lambda[i] = sa_gf_mul(all, sa_gf_inv(den));
	}
	L->t = t;
	return SHOAL_OK;

fail:
	sa_lagrange_fini(L);
	return e;
}

void
sa_lagrange_fini(sa_lagrange *L)
{
	free(L->x);
	free(L->lambda);
	memset(L, 0, sizeof *L);
}

shoal_err
sa_shamir_combine(const sa_lagrange *L, const uint64_t (*ys)[SA_SHARE_LIMBS], uint8_t secret[SA_SECRET_BYTES])
{
	if (L == NULL || L->t == 0 || ys == NULL || secret == NULL)
		return SHOAL_EINVAL;

	uint64_t s[SA_SHARE_LIMBS] = {0};
	for (uint32_t i = 0; i < L->t; i++)
		for (int k = 0; k < SA_SHARE_LIMBS; k++)
			s[k] = sa_gf_add(s[k], sa_gf_mul(L->lambda[i], reduce64(ys[i][k])));

	uint64_t high = 0;
	for (int k = 0; k < SA_SHARE_LIMBS - 1; k++)
		high |= s[k] >> 56;
	high |= s[SA_SHARE_LIMBS - 1] >> 32;
	shoal_err e = SHOAL_OK;
	if (high != 0) {
		sodium_memzero(secret, SA_SECRET_BYTES);
		e = SHOAL_EMALFORMED;
	} else {
		limbs_to_secret(s, secret);
	}
	sodium_memzero(s, sizeof s);
	return e;
}

void
sa_share_write(const sa_share *s, uint8_t out[SA_SHARE_BYTES])
{
	for (int k = 0; k < SA_SHARE_LIMBS; k++)
		store_le(out + 8 * k, s->y[k], 8);
}

shoal_err
sa_share_read(sa_share *s, uint32_t x, const uint8_t in[SA_SHARE_BYTES])
{
	uint64_t y[SA_SHARE_LIMBS];
	int bad = 0;

	for (int k = 0; k < SA_SHARE_LIMBS; k++) {
		y[k] = load_le(in + 8 * k, 8);
		bad |= y[k] >= SA_P;
	}
	if (!bad) {
		s->x = x;
		memcpy(s->y, y, sizeof y);
	}
	sodium_memzero(y, sizeof y);
	return bad ? SHOAL_EMALFORMED : SHOAL_OK;
}
