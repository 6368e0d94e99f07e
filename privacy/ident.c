/* ident.c - Ed25519 client identity: keys, request signatures, and the
 * allowlist and token files (see ident.h; PROTOCOL.md section 16). */
#include "privacy/ident.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

_Static_assert(ID_PK_BYTES == crypto_sign_PUBLICKEYBYTES, "Ed25519 public key size");
_Static_assert(ID_SK_BYTES == crypto_sign_SECRETKEYBYTES, "Ed25519 secret key size");
_Static_assert(ID_SEED_BYTES == crypto_sign_SEEDBYTES, "Ed25519 seed size");
_Static_assert(ID_SIG_BYTES == crypto_sign_BYTES, "Ed25519 signature size");
_Static_assert(sizeof(ID_DOMAIN) - 1 == ID_DOMAIN_BYTES, "domain length");

/* The msgpack bytes of the key "sig" (fixstr of 3) and of a bin8 of 64
 * bytes: what a signed request's signature follows. */
static const uint8_t sig_head[6] = {0xa3, 0x73, 0x69, 0x67, 0xc4, 0x40};

shoal_err
id_keypair(uint8_t pk[ID_PK_BYTES], uint8_t sk[ID_SK_BYTES])
{
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;
	crypto_sign_keypair(pk, sk);
	return SHOAL_OK;
}

void
id_pk_of(const uint8_t sk[ID_SK_BYTES], uint8_t pk[ID_PK_BYTES])
{
	crypto_sign_ed25519_sk_to_pk(pk, sk);
}

void
id_keypair_from_seed(const uint8_t seed[ID_SEED_BYTES], uint8_t pk[ID_PK_BYTES],
                     uint8_t sk[ID_SK_BYTES])
{
	crypto_sign_seed_keypair(pk, sk, seed);
}

static bool
has_tail(const uint8_t *buf, size_t len)
{
	return buf != NULL && len > ID_SIG_TAIL && memcmp(buf + len - ID_SIG_TAIL, sig_head, 6) == 0;
}

/* ID_DOMAIN || buf[0..len - ID_SIG_TAIL), malloc'd. */
static uint8_t *
signed_bytes(const uint8_t *buf, size_t len, size_t *n)
{
	size_t body = len - ID_SIG_TAIL;
	uint8_t *m = malloc(ID_DOMAIN_BYTES + body);
	if (m == NULL)
		return NULL;
	memcpy(m, ID_DOMAIN, ID_DOMAIN_BYTES);
	memcpy(m + ID_DOMAIN_BYTES, buf, body);
	*n = ID_DOMAIN_BYTES + body;
	return m;
}

shoal_err
id_sign(const uint8_t sk[ID_SK_BYTES], uint8_t *buf, size_t len)
{
	size_t n;
	uint8_t *m;

	if (!has_tail(buf, len))
		return SHOAL_EINVAL;
	if (sodium_init() < 0 || (m = signed_bytes(buf, len, &n)) == NULL)
		return SHOAL_ENOMEM;
	crypto_sign_detached(buf + len - ID_SIG_BYTES, NULL, m, n, sk);
	free(m);
	return SHOAL_OK;
}

shoal_err
id_verify(const uint8_t pk[ID_PK_BYTES], const uint8_t *buf, size_t len)
{
	size_t n;
	uint8_t *m;
	int r;

	if (!has_tail(buf, len))
		return SHOAL_EMALFORMED;
	if (sodium_init() < 0 || (m = signed_bytes(buf, len, &n)) == NULL)
		return SHOAL_ENOMEM;
	r = crypto_sign_verify_detached(buf + len - ID_SIG_BYTES, m, n, pk);
	free(m);
	return r == 0 ? SHOAL_OK : SHOAL_EBADSIG;
}

void
id_hex(const uint8_t *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[2 * n] = '\0';
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool
id_pk_from_hex(const char *s, size_t n, uint8_t pk[ID_PK_BYTES])
{
	uint8_t v[ID_PK_BYTES];

	if (n != ID_HEX_CHARS)
		return false;
	for (size_t i = 0; i < ID_PK_BYTES; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		v[i] = (uint8_t)(hi << 4 | lo);
	}
	memcpy(pk, v, sizeof v);
	return true;
}

void
id_token_hash(const char *token, uint8_t out[ID_HASH_BYTES])
{
	/* BLAKE2b needs no sodium_init (it picks no CPU-specific code). */
	crypto_generichash(out, ID_HASH_BYTES, (const unsigned char *)token, strlen(token), NULL, 0);
}

bool
id_token_valid(const char *s, size_t n)
{
	if (n < ID_TOKEN_MIN || n > ID_TOKEN_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("._~+/=-", c) != NULL) || c == '\0')
			return false;
	}
	return true;
}

/* ---- the allowlist and token files ------------------------------------- */

/* "line N: what, 'word'" (the word left out when it may be a secret). */
static void
say(char *why, size_t why_len, unsigned line, const char *what, const char *word, size_t n,
    bool echo)
{
	if (why == NULL || why_len == 0)
		return;
	if (echo)
		snprintf(why, why_len, "line %u: %s, got '%.*s'", line, what, (int)(n > 80 ? 80 : n),
		         word);
	else
		snprintf(why, why_len, "line %u: %s", line, what);
}

/* One entry per line; parse(word, n, out) turns a word into width bytes
 * or returns false (then `what` says what was expected). */
static shoal_err
parse_lines(const char *text, size_t len, size_t width,
            bool (*parse)(const char *, size_t, uint8_t *), const char *what, bool echo,
            uint8_t **out, uint32_t *count, char *why, size_t why_len)
{
	uint8_t *v = NULL, tmp[ID_HASH_BYTES > ID_PK_BYTES ? ID_HASH_BYTES : ID_PK_BYTES];
	size_t n = 0, cap = 0, pos = 0;
	unsigned line = 0;

	*out = NULL;
	*count = 0;
	while (pos < len) {
		size_t end = pos;
		while (end < len && text[end] != '\n')
			end++;
		line++;
		size_t a = pos, b = end;
		for (size_t i = a; i < b; i++)
			if (text[i] == '#') {
				b = i;
				break;
			}
		while (a < b && (text[a] == ' ' || text[a] == '\t' || text[a] == '\r'))
			a++;
		while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\r'))
			b--;
		pos = end + 1;
		if (a == b)
			continue;
		for (size_t i = a; i < b; i++)
			if (text[i] == ' ' || text[i] == '\t' || text[i] == '\0') {
				say(why, why_len, line, "expected one entry per line (comments start with #)",
				    text + a, b - a, echo);
				free(v);
				return SHOAL_EFORMAT;
			}
		if (!parse(text + a, b - a, tmp)) {
			say(why, why_len, line, what, text + a, b - a, echo);
			free(v);
			return SHOAL_EFORMAT;
		}
		bool dup = false;
		for (size_t i = 0; i < n && !dup; i++)
			dup = memcmp(v + i * width, tmp, width) == 0;
		if (dup)
			continue;
		if (n == UINT32_MAX) {
			say(why, why_len, line, "too many entries", text + a, b - a, false);
			free(v);
			return SHOAL_EFORMAT;
		}
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			uint8_t *w = realloc(v, cap * width);
			if (w == NULL) {
				free(v);
				return SHOAL_ENOMEM;
			}
			v = w;
		}
		memcpy(v + n * width, tmp, width);
		n++;
	}
	*out = v;
	*count = (uint32_t)n;
	return SHOAL_OK;
}

static bool
parse_key(const char *s, size_t n, uint8_t *out)
{
	return id_pk_from_hex(s, n, out);
}

static bool
parse_token(const char *s, size_t n, uint8_t *out)
{
	char tok[ID_TOKEN_MAX + 1];
	if (!id_token_valid(s, n))
		return false;
	memcpy(tok, s, n);
	tok[n] = '\0';
	id_token_hash(tok, out);
	sodium_memzero(tok, sizeof tok);
	return true;
}

shoal_err
id_allowlist_parse(const char *text, size_t len, uint8_t (**keys)[ID_PK_BYTES], uint32_t *n,
                   char *why, size_t why_len)
{
	uint8_t *v;
	shoal_err e = parse_lines(text, len, ID_PK_BYTES, parse_key,
	                          "expected a public key: 64 hex digits, as shoal-client "
	                          "--show-key prints",
	                          true, &v, n, why, why_len);
	*keys = (uint8_t(*)[ID_PK_BYTES])v;
	return e;
}

shoal_err
id_tokens_parse(const char *text, size_t len, uint8_t (**hashes)[ID_HASH_BYTES], uint32_t *n,
                char *why, size_t why_len)
{
	uint8_t *v;
	/* Never echo a token: the message names the line only. */
	shoal_err e = parse_lines(text, len, ID_HASH_BYTES, parse_token,
	                          "expected a token of 16..64 characters from A-Z a-z 0-9 . _ ~ "
	                          "+ / = - (e.g. from 'openssl rand -hex 16')",
	                          false, &v, n, why, why_len);
	*hashes = (uint8_t(*)[ID_HASH_BYTES])v;
	return e;
}
