/* ident.h - client identity (PROTOCOL.md section 16): Ed25519 key pairs
 * (libsodium crypto_sign_*), the signature of a request over the server's
 * nonce, and the text forms the operator handles: public keys in hex, the
 * server's allowlist file and its enrollment-token file.
 *
 * A signed request is a msgpack map whose LAST key is "sig" with a 64-byte
 * bin value, so its final ID_SIG_TAIL bytes are
 *   a3 73 69 67  c4 40  <64-byte signature>
 * The signature is Ed25519 (RFC 8032, pure) over
 *   ID_DOMAIN (16 ASCII bytes, no terminator) || every byte before that tail
 * i.e. over the whole message but its signature, the request's own "nonce"
 * included. The domain keeps these signatures apart from the ones secure
 * aggregation makes with the same key ("shoal-sa-adv", "shoal-sa-u3").
 * Nothing here does I/O: file contents come in as text. */
#ifndef SHOAL_PRIVACY_IDENT_H
#define SHOAL_PRIVACY_IDENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

#define ID_PK_BYTES 32    /* Ed25519 public key */
#define ID_SK_BYTES 64    /* Ed25519 secret key, libsodium layout: seed || pk */
#define ID_SEED_BYTES 32  /* what the secret key is derived from */
#define ID_SIG_BYTES 64
#define ID_NONCE_BYTES 16
#define ID_HASH_BYTES 32  /* BLAKE2b-256 of an enrollment token */
#define ID_HEX_CHARS (2 * ID_PK_BYTES) /* a public key in hex */
#define ID_TOKEN_MIN 16   /* shortest enrollment token accepted */
#define ID_TOKEN_MAX 64   /* longest (the HELLO "tok" limit) */
#define ID_DOMAIN "shoal-req-sig-v1"
#define ID_DOMAIN_BYTES 16
#define ID_SIG_TAIL (6 + ID_SIG_BYTES) /* "sig" key, bin8 header, signature */

#if defined(__GNUC__)
#define ID_MUST_USE __attribute__((warn_unused_result))
#else
#define ID_MUST_USE
#endif

/* A fresh key pair from the OS CSPRNG (sk must be sodium_malloc'd by the
 * caller: it is the client's long-term secret). SHOAL_ENOMEM if libsodium
 * cannot start. */
ID_MUST_USE shoal_err id_keypair(uint8_t pk[ID_PK_BYTES], uint8_t sk[ID_SK_BYTES]);
/* The public key of a secret key. */
void id_pk_of(const uint8_t sk[ID_SK_BYTES], uint8_t pk[ID_PK_BYTES]);
/* The key pair of a seed (tests, known answers; the key file stores it). */
void id_keypair_from_seed(const uint8_t seed[ID_SEED_BYTES], uint8_t pk[ID_PK_BYTES],
                          uint8_t sk[ID_SK_BYTES]);

/* Sign the request buf[0..len) in place: it must end with the "sig" key and
 * a 64-byte bin (its contents are overwritten). SHOAL_EINVAL if it does
 * not. */
ID_MUST_USE shoal_err id_sign(const uint8_t sk[ID_SK_BYTES], uint8_t *buf, size_t len);
/* Check the signature of a request. SHOAL_OK, SHOAL_EBADSIG (it does not
 * verify with pk), SHOAL_EMALFORMED ("sig" is not the last key, or not 64
 * bytes), SHOAL_ENOMEM (a copy of the message could not be made). */
ID_MUST_USE shoal_err id_verify(const uint8_t pk[ID_PK_BYTES], const uint8_t *buf,
                                size_t len);

/* Lowercase hex of p[0..n) into out (2n characters and a NUL). */
void id_hex(const uint8_t *p, size_t n, char *out);
/* A public key from exactly ID_HEX_CHARS hex digits (either case) at s.
 * false if they are not. */
bool id_pk_from_hex(const char *s, size_t n, uint8_t pk[ID_PK_BYTES]);
/* BLAKE2b-256 of an enrollment token's bytes: the server keeps and stores
 * only this. */
void id_token_hash(const char *token, uint8_t out[ID_HASH_BYTES]);
/* Is s (n bytes) a usable enrollment token: ID_TOKEN_MIN..ID_TOKEN_MAX
 * characters from [A-Za-z0-9._~+/=-]? */
bool id_token_valid(const char *s, size_t n);

/* The allowlist file: one public key per line as 64 hex digits; blank
 * lines, leading and trailing blanks, and comments from '#' to the end of
 * a line are ignored (so "KEY  # kitchen pi" works). *keys is malloc'd
 * (NULL when there are none); a key listed twice counts once.
 * Errors: SHOAL_EFORMAT (why says which line and what is wrong),
 * SHOAL_ENOMEM. */
shoal_err id_allowlist_parse(const char *text, size_t len, uint8_t (**keys)[ID_PK_BYTES],
                             uint32_t *n, char *why, size_t why_len);
/* The enrollment-token file: one token per line (id_token_valid), the
 * same blanks and comments. *hashes (malloc'd) holds id_token_hash of each;
 * a token listed twice counts once. Errors as id_allowlist_parse. */
shoal_err id_tokens_parse(const char *text, size_t len, uint8_t (**hashes)[ID_HASH_BYTES],
                          uint32_t *n, char *why, size_t why_len);

#endif
