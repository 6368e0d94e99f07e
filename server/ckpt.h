/* ckpt.h - the server's checkpoint: its whole state between two rounds as
 * one file, DIR/server.ckpt, written atomically after every round (the
 * format is at the top of ckpt.c and in PROTOCOL.md, "Server checkpoint
 * file").
 *
 * What the server core keeps across rounds is here: the model (and the q8
 * downlink's shadow model with the last model delta, so a client holding
 * the previous version still gets a delta), the server optimizer's moments,
 * the round number and model version, the evaluation results, the codec
 * state of secure aggregation (adaptive scale, last public change), the
 * privacy accountant, and the client registry. Randomness needs no state:
 * round r selects with stream (seed, r) and noises with stream (seed or key,
 * 2^62 | r), so the seed (in "RUN") is all there is.
 *
 * The core fills a srv_ckpt that points at its own arrays (srv_core_save)
 * and copies a decoded one back in (srv_core_restore); this file only
 * knows the bytes and the files. */
#ifndef SHOAL_SERVER_CKPT_H
#define SHOAL_SERVER_CKPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/msg.h"
#include "privacy/rdp.h"
#include "shoal/err.h"

#define SRV_CKPT_MAGIC "SHCK"
#define SRV_CKPT_VERSION 1u
#define SRV_CKPT_HEADER_BYTES 16u
#define SRV_CKPT_HASH_BYTES 32u /* BLAKE2b-256 trailer */
#define SRV_CKPT_FILE "server.ckpt"
#define SRV_CKPT_PREV "server.ckpt.prev" /* the checkpoint before it */
#define SRV_CKPT_TMP "server.ckpt.tmp"   /* being written */
#define SRV_CKPT_BAD "server.ckpt.bad"   /* a refused file, set aside */
#define SRV_CKPT_CLIENTS "server.clients" /* the registry log */
#define SRV_CKPT_KEYS "server.keys"       /* the key log */
/* Largest file read (1 GiB), largest model (2^26 parameters), most
 * clients. */
#define SRV_CKPT_MAX_BYTES ((size_t)1 << 30)
#define SRV_CKPT_MAX_DIM (UINT32_C(1) << 26)
#define SRV_CKPT_MAX_CLIENTS (UINT32_C(1) << 24)

typedef struct srv_ckpt_client {
	char name[MSG_NAME_MAX + 1]; /* id = index + 1 */
	uint32_t n_examples;
	uint32_t cx_caps;
} srv_ckpt_client;

/* Client identity (PROTOCOL.md section 16): the key bound to a client. */
#define SRV_CKPT_TOKEN_HASH_BYTES 32
typedef struct srv_ckpt_key {
	uint32_t id;                 /* the client's id */
	uint8_t pk[MSG_PK_BYTES];    /* its Ed25519 public key */
	bool enrolled;               /* the key was enrolled with a token */
	uint8_t token[SRV_CKPT_TOKEN_HASH_BYTES]; /* BLAKE2b-256 of that token */
} srv_ckpt_key;

typedef struct srv_ckpt {
	/* RUN: the settings the state belongs to; a resume under others is
	 * refused (srv_ckpt_check_run). */
	char model[MSG_MODEL_MAX + 1];
	uint32_t dim;
	uint64_t seed;
	uint32_t opt_kind;      /* srv_opt_kind */
	bool downlink_q8;
	uint32_t secagg;        /* SRV_SECAGG_* */
	uint32_t dp;            /* SRV_DP_* */
	uint32_t sampling;      /* SRV_SAMPLING_* */
	double sample_rate, clip;
	double noise_multiplier; /* z in effect (given or calibrated); 0 if DP off */
	double delta;            /* 0 if DP off */
	/* PROG */
	uint32_t round;         /* last round closed (completed or abandoned) */
	uint32_t version;       /* of params */
	bool finished;
	double accuracy, loss;  /* evaluation of params; NaN if none */
	/* MODL, DOWN (downlink_q8 only: shadow, dq) */
	float *params;          /* dim */
	float *shadow;          /* dim, NULL without the q8 downlink */
	uint8_t *dq;            /* encoding of version-1 -> version */
	uint32_t dq_len;        /* 0: none (clients get full models) */
	/* OPTS */
	float *opt_m, *opt_v;   /* dim each, NULL when the optimizer has none */
	/* CODC */
	float sa_scale;         /* shared quantization range of the next round */
	bool have_change;
	float *change;          /* dim, NULL unless secure aggregation */
	/* PRIV (dp != off): the accountant's exact state, pending steps of its
	 * cached mechanism included, so epsilon continues bit for bit. */
	uint64_t dp_steps;      /* rounds charged */
	uint32_t acc_n;
	double acc_delta;
	double *acc_orders, *acc_rdp, *acc_step; /* acc_n each */
	uint64_t acc_step_n;
	double acc_step_q, acc_step_sigma;
	bool acc_step_ok;
	double dp_clip, dp_sigma; /* the clip bound C and the noise stddev in
	                             use (adaptive clipping moves both) */
	/* CLNT */
	uint32_t n_clients;
	srv_ckpt_client *clients;
	/* KEYS: the clients' identity keys (written when there are any), ids
	 * increasing */
	uint32_t n_keys;
	srv_ckpt_key *keys;

	bool owned;             /* the arrays are decode's (srv_ckpt_fini frees
	                           them), not a core's */
} srv_ckpt;

/* Point c's PRIV fields at a's state (no copy). */
void srv_ckpt_view_accountant(srv_ckpt *c, const dp_accountant *a);
/* Copy c's PRIV state into a, which must have the same orders and delta
 * (it was built from the same settings). Errors: SHOAL_EINVAL (why says
 * what differs). */
shoal_err srv_ckpt_put_accountant(const srv_ckpt *c, dp_accountant *a, char *why,
                                  size_t why_len);

/* Is `saved` a state of the run `now` describes (the RUN fields)? Errors:
 * SHOAL_EINVAL, with why naming the first setting that differs. */
shoal_err srv_ckpt_check_run(const srv_ckpt *saved, const srv_ckpt *now, char *why,
                             size_t why_len);

/* The file's bytes for c; *out is malloc'd. Errors: SHOAL_EINVAL (a field
 * out of range), SHOAL_ENOMEM. */
shoal_err srv_ckpt_encode(const srv_ckpt *c, uint8_t **out, size_t *len);

/* Decodes a whole file into *out (arrays owned by it: srv_ckpt_fini).
 * Checked in this order: SHOAL_EFORMAT (bad magic), SHOAL_ETRUNC (shorter
 * than its header or than the length it declares), SHOAL_EVERSION,
 * SHOAL_EFORMAT (longer than it declares), SHOAL_EMALFORMED (checksum
 * mismatch; then a bad, duplicate or missing section), SHOAL_ENOMEM. On
 * error *out is zeroed and why (may be NULL) says what is wrong in words. */
shoal_err srv_ckpt_decode(const uint8_t *buf, size_t len, srv_ckpt *out, char *why,
                          size_t why_len);
void srv_ckpt_fini(srv_ckpt *c);

/* Atomically replaces DIR/server.ckpt: writes DIR/server.ckpt.tmp, fsyncs
 * it, renames the current file to server.ckpt.prev, renames the new one
 * into place and fsyncs DIR. Nothing existing is touched before the new
 * file is complete on disk, so a full disk or a crash at any point leaves
 * a valid checkpoint. Errors: SHOAL_EIO (logged with the file and errno's
 * reason; the temporary file is removed). */
shoal_err srv_ckpt_write(const char *dir, const uint8_t *buf, size_t len);

/* Does DIR hold a server's state (server.ckpt, server.ckpt.prev,
 * server.clients or server.keys)? */
bool srv_ckpt_exists(const char *dir);

/* Loads DIR/server.ckpt, or when that is missing or refused (logged:
 * which file, what is wrong) DIR/server.ckpt.prev. A refused server.ckpt
 * is renamed to server.ckpt.bad, so the next save does not push the good
 * previous file out. path (may be NULL) receives the file used.
 * Errors: SHOAL_EIO with *found false: neither file exists; otherwise the
 * refusal of the last file tried (*found true), as srv_ckpt_decode or
 * SHOAL_EIO. */
shoal_err srv_ckpt_load(const char *dir, srv_ckpt *out, bool *found, char *path,
                        size_t path_len);

/* The registry log, DIR/server.clients: every client the server ever
 * registered, in id order, appended and fsynced before its WELCOME leaves.
 * A checkpoint holds the registry as of its round; the log also holds the
 * clients that registered since, so a resumed server never hands their
 * ids to others (a client keeps using its id after a restart; id = index
 * + 1 in the server). Format: "SHCL" | u32 version 1, then per client:
 * u32 id | u8 n, n bytes name | u32 examples | u32 capability bits |
 * 16 bytes BLAKE2b-128 of the record before them. A torn record at the end
 * (a crash while appending; its WELCOME never left) is cut off on open. */
typedef struct srv_ckpt_log {
	int fd;
	uint32_t n;          /* records in the file */
	char path[4096];
} srv_ckpt_log;

/* Opens (creating it if missing) DIR/server.clients for appending and
 * returns its records in *cl (malloc'd, *n of them; NULL if none).
 * Errors: SHOAL_EIO, SHOAL_EFORMAT (not a registry log; logged),
 * SHOAL_ENOMEM. */
shoal_err srv_ckpt_log_open(const char *dir, srv_ckpt_log *log, srv_ckpt_client **cl,
                            uint32_t *n);
/* Appends cl[0..n) as ids log->n + 1.. and fsyncs. Errors: SHOAL_EIO
 * (logged; the file is cut back to its last whole record). */
shoal_err srv_ckpt_log_append(srv_ckpt_log *log, const srv_ckpt_client *cl, uint32_t n);
void srv_ckpt_log_close(srv_ckpt_log *log);

/* The key log, DIR/server.keys (client identity, PROTOCOL.md section 16):
 * every binding of a client id to its public key (and the enrollment
 * token it used up), in the order they were made, appended and fsynced
 * after the client's registry record and before its WELCOME; an old shoal
 * ignores the file, and its registry log stays as it was. Format: "SHKY" |
 * u32 version 1, then per binding: u32 id | u8 flags (bit 0: enrolled with
 * a token) | 32 bytes public key | [32 bytes BLAKE2b-256 of the token, bit
 * 0 only] | 16 bytes BLAKE2b-128 of the record before them. A torn record
 * at the end is cut off on open, as in the registry log. The same
 * srv_ckpt_log handle; srv_ckpt_log_close closes it. */
shoal_err srv_ckpt_keylog_open(const char *dir, srv_ckpt_log *log, srv_ckpt_key **keys,
                               uint32_t *n);
shoal_err srv_ckpt_keylog_append(srv_ckpt_log *log, const srv_ckpt_key *k, uint32_t n);

#endif
