/* shoal/err.h - the one error type of shoal.
 *
 * Every fallible function returns shoal_err: 0 is success, negative values
 * are errors. Decoders return bytes consumed (>= 0) or a negative shoal_err.
 * The numeric values are part of the wire protocol (ERROR.code, see
 * PROTOCOL.md section "Error codes"): never renumber, only append. */
#ifndef SHOAL_ERR_H
#define SHOAL_ERR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef int shoal_err;

enum {
	SHOAL_OK = 0,
	SHOAL_ENOMEM = -1,      /* out of memory */
	SHOAL_EINVAL = -2,      /* invalid argument or configuration */
	SHOAL_EIO = -3,         /* file or OS error */
	SHOAL_EFORMAT = -4,     /* a file has the wrong magic/header */
	SHOAL_ETRUNC = -5,      /* input shorter than declared */
	SHOAL_EMALFORMED = -6,  /* message is not valid msgpack / missing field */
	SHOAL_EVERSION = -7,    /* unsupported protocol version */
	SHOAL_ETYPE = -8,       /* unknown message type */
	SHOAL_ETOOBIG = -9,     /* message or field exceeds a size limit */
	SHOAL_ESTALE = -10,     /* message for a round that is not open */
	SHOAL_EUNKNOWN = -11,   /* unknown client id */
	SHOAL_EDIM = -12,       /* wrong model dimension */
	SHOAL_ENONFINITE = -13, /* NaN or Inf in numeric data */
	SHOAL_EDUP = -14,       /* duplicate submission */
	SHOAL_ESTATE = -15,     /* message not valid in this phase */
	SHOAL_ENOTSELECTED = -16, /* update from a client not selected this round */
	SHOAL_ETRANSPORT = -17, /* transport (nng) failure */
	SHOAL_ETIMEDOUT = -18,  /* operation timed out */
	SHOAL_ECLOSED = -19,    /* peer or object closed */
	SHOAL_EMODEL = -20,     /* model name not supported */
	SHOAL_EFULL = -21,      /* server at its client limit */
	SHOAL_EABORTED = -22,   /* secure aggregation round aborted: fewer than
	                           t clients left, or a secret could not be
	                           reconstructed */
	SHOAL_ECRYPTO = -23,    /* decryption or signature check failed */
	SHOAL_ECAPS = -24,      /* the client lacks a capability the server
	                           requires (e.g. secure aggregation) */
	SHOAL_ERATE = -25,      /* too many requests on one connection: resend
	                           the same request after a backoff */
	/* Client identity (PROTOCOL.md section 16). */
	SHOAL_EUNLISTED = -26,  /* the client's key is not admitted: no key, or
	                           not on the allowlist and not enrolled */
	SHOAL_EBADSIG = -27,    /* a request's signature is missing or does not
	                           verify with the client's key */
	SHOAL_ENONCE = -28,     /* a request's nonce is missing, stale or
	                           replayed; the ERROR carries a fresh one */
	SHOAL_ETOKEN = -29,     /* enrollment token unknown or already used */
	SHOAL_EIDENTITY = -30,  /* the name is registered with another key, or
	                           the key under another name */
};

/* A short, static, human-readable name for err; never NULL. */
const char *shoal_strerror(shoal_err err);

#ifdef __cplusplus
}
#endif
#endif
