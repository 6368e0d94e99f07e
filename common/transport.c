/* transport.c - the nng adapter (see transport.h): a REP server that holds
 * many requests at once on nng contexts, and a REQ client with reconnection.
 *
 * Server: TP_RECV_POOL contexts are always receiving. A context that gets a
 * request moves to "held" (it owns that request until the reply is sent), and
 * another context (an idle one, or a new one) starts receiving in its place,
 * so receiving never stops however many requests are parked. The request id
 * handed upward encodes the context index and a per-context generation:
 *   req = (gen << 32) | (index + 1)
 * so tp_server_reply finds the context in O(1) and a stale id (already
 * answered) is refused. Completed requests go to one mutex/condvar queue read
 * by tp_server_recv. All nng callbacks take s->mu; nng operations are started
 * outside it, counted in cb_active so that close can wait for them.
 *
 * Connections: a pipe-notify callback keeps one tp_peer per open connection
 * (nng pipe) in a hash table: it closes connections beyond max_conns before
 * they are added to the socket, and holds the connection's token bucket for
 * the rate limit (tp_server_set_rate), taken when a request arrives.
 *
 * TLS (tls+tcp://): nng's TLS transport with an nng_tls_config built from
 * PEM files. The files are checked with mbedtls (nng's TLS engine) first,
 * because nng reports a key that does not match its certificate, or an
 * expired certificate, only as failed handshakes, which it does not report
 * at all. */
#include "common/transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>
#include <nng/supplemental/util/platform.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

enum {
	TP_RECV_POOL = 16,       /* contexts kept receiving */
	TP_CLOSE_DELAY_MS = 200, /* reply-then-close: let the reply reach the wire */
	TP_RECONN_MIN_MS = 100,
	TP_RECONN_MAX_MS = 5000,
	/* REQ resend: the client core retries itself; nng must not duplicate. */
	TP_RESEND_MS = 24 * 3600 * 1000,
	TP_PEM_MAX = 1 << 20,    /* larger "certificate files" are refused */
};

struct tp_msg {
	nng_msg *m;
};

const uint8_t *
tp_msg_data(const tp_msg *m)
{
	return nng_msg_body(m->m);
}

size_t
tp_msg_len(const tp_msg *m)
{
	return nng_msg_len(m->m);
}

void
tp_msg_free(tp_msg *m)
{
	if (m == NULL)
		return;
	nng_msg_free(m->m);
	free(m);
}

/* Takes ownership of nm (freed on failure). */
static tp_msg *
msg_wrap(nng_msg *nm)
{
	tp_msg *m = malloc(sizeof *m);
	if (m == NULL) {
		nng_msg_free(nm);
		return NULL;
	}
	m->m = nm;
	return m;
}

static shoal_err
map_err(int rv)
{
	switch (rv) {
	case 0: return SHOAL_OK;
	case NNG_ETIMEDOUT: return SHOAL_ETIMEDOUT;
	case NNG_ECLOSED:
	case NNG_ECANCELED: return SHOAL_ECLOSED;
	case NNG_ENOMEM: return SHOAL_ENOMEM;
	case NNG_EMSGSIZE: return SHOAL_ETOOBIG;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
	case NNG_ENOTSUP: return SHOAL_EINVAL;
	default: return SHOAL_ETRANSPORT;
	}
}

/* A hint for the log line of a failed listen/dial. */
static const char *
hint_for(int rv)
{
	switch (rv) {
	case NNG_EADDRINUSE:
		return "address in use: is another shoal-server running on this port? "
		       "choose another with --listen";
	case NNG_EADDRINVAL:
	case NNG_EINVAL:
		return "malformed address: use tcp://HOST:PORT, tls+tcp://HOST:PORT, ipc:///PATH or "
		       "inproc://NAME";
	case NNG_ENOTSUP: return "unsupported scheme: use tcp://, tls+tcp://, ipc:// or inproc://";
	case NNG_EPERM:
		return "permission denied: ports below 1024 need privileges; for ipc:// "
		       "check the directory";
	case NNG_ENOENT: return "no such file or directory (ipc:// path?)";
	default: return "";
	}
}

/* Absolute CLOCK_MONOTONIC deadline timeout_ms from now. */
static struct timespec
deadline_in(int timeout_ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static int
cond_init_mono(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int rc;

	if (pthread_condattr_init(&a) != 0)
		return -1;
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	rc = pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
	return rc;
}

/* --------------------------------------------------------------------- TLS */

bool
tp_url_is_tls(const char *url)
{
	return url != NULL && strncmp(url, "tls+", 4) == 0;
}

/* The PEM files of a tp_tls, read and checked; NUL-terminated (mbedtls
 * counts the NUL in a PEM buffer's length). */
typedef struct tls_files {
	char *cert, *key, *ca;
	size_t cert_len, key_len, ca_len;
} tls_files;

static void
tls_files_fini(tls_files *f)
{
	free(f->cert);
	free(f->ca);
	if (f->key != NULL) {
		mbedtls_platform_zeroize(f->key, f->key_len);
		free(f->key);
	}
	memset(f, 0, sizeof *f);
}

/* The whole file as a NUL-terminated string (*len counts the NUL), or NULL
 * after a log line. what: "certificate", "key", "CA certificate". */
static char *
tls_read(const char *what, const char *path, size_t *len)
{
	struct stat st;
	FILE *f;
	char *buf = NULL;
	size_t n;

	if ((f = fopen(path, "rb")) == NULL) {
		log_error("TLS %s file '%s': %s", what, path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
		log_error("TLS %s file '%s': not a regular file", what, path);
		goto out;
	}
	if (st.st_size == 0 || st.st_size > TP_PEM_MAX) {
		log_error("TLS %s file '%s': %s", what, path,
		          st.st_size == 0 ? "empty" : "larger than 1 MiB, so not a PEM file");
		goto out;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		log_error("TLS %s file '%s': out of memory", what, path);
		goto out;
	}
	n = fread(buf, 1, (size_t)st.st_size, f);
	if (n != (size_t)st.st_size || ferror(f)) {
		log_error("TLS %s file '%s': read failed: %s", what, path,
		          ferror(f) ? strerror(errno) : "file changed while read");
		goto bad;
	}
	buf[n] = '\0';
	if (memchr(buf, '\0', n) != NULL || strstr(buf, "-----BEGIN ") == NULL) {
		log_error("TLS %s file '%s': not PEM (no '-----BEGIN' line); convert DER with "
		          "'openssl x509 -inform DER -in FILE -out FILE.pem' (certificates) or "
		          "'openssl pkey -inform DER -in FILE -out FILE.pem' (keys)", what, path);
		goto bad;
	}
	*len = n + 1;
	fclose(f);
	return buf;
bad:
	mbedtls_platform_zeroize(buf, (size_t)st.st_size + 1);
	free(buf);
	buf = NULL;
out:
	fclose(f);
	return NULL;
}

static void
tls_why(int rv, char *out, size_t n)
{
	mbedtls_strerror(rv, out, n);
}

#if MBEDTLS_VERSION_MAJOR >= 3
/* mbedtls 3 wants randomness for key parsing and pair checks (blinding). */
static int
tls_rng(void *ctx, unsigned char *buf, size_t n)
{
	(void)ctx;
	while (n > 0) {
		ssize_t got = getrandom(buf, n, 0);
		if (got < 0 && errno != EINTR)
			return -1;
		if (got > 0) {
			buf += got;
			n -= (size_t)got;
		}
	}
	return 0;
}
#endif

/* "2026-05-01" */
static void
tls_date(const mbedtls_x509_time *t, char *out, size_t n)
{
	snprintf(out, n, "%04d-%02d-%02d %02d:%02d UTC", t->year, t->mon, t->day, t->hour, t->min);
}

/* Certificate and key: parse both, the key must be the certificate's, the
 * certificate valid now. */
static shoal_err
tls_check_own(const tp_tls *t, const tls_files *f)
{
	mbedtls_x509_crt crt;
	mbedtls_pk_context pk;
	char why[160], from[40], to[40];
	shoal_err e = SHOAL_EINVAL;
	int rv;

	mbedtls_x509_crt_init(&crt);
	mbedtls_pk_init(&pk);
	if ((rv = mbedtls_x509_crt_parse(&crt, (const unsigned char *)f->cert, f->cert_len)) < 0 ||
	    crt.raw.p == NULL) {
		tls_why(rv, why, sizeof why);
		log_error("TLS certificate file '%s': no certificate could be read (%s)", t->cert, why);
		goto out;
	}
#if MBEDTLS_VERSION_MAJOR >= 3
	rv = mbedtls_pk_parse_key(&pk, (const unsigned char *)f->key, f->key_len, NULL, 0, tls_rng,
	                          NULL);
#else
	rv = mbedtls_pk_parse_key(&pk, (const unsigned char *)f->key, f->key_len, NULL, 0);
#endif
	if (rv == MBEDTLS_ERR_PK_PASSWORD_REQUIRED || rv == MBEDTLS_ERR_PK_PASSWORD_MISMATCH) {
		log_error("TLS key file '%s': the key is encrypted; shoal needs it unencrypted in a "
		          "file only its user can read ('openssl pkey -in KEY -out PLAIN', then "
		          "chmod 600 PLAIN)", t->key);
		goto out;
	}
	if (rv != 0) {
		tls_why(rv, why, sizeof why);
		log_error("TLS key file '%s': no private key could be read (%s)", t->key, why);
		goto out;
	}
#if MBEDTLS_VERSION_MAJOR >= 3
	rv = mbedtls_pk_check_pair(&crt.pk, &pk, tls_rng, NULL);
#else
	rv = mbedtls_pk_check_pair(&crt.pk, &pk);
#endif
	if (rv != 0) {
		log_error("TLS key file '%s' does not belong to certificate '%s' (the key of a "
		          "certificate is the one its request was made with)", t->key, t->cert);
		goto out;
	}
	tls_date(&crt.valid_from, from, sizeof from);
	tls_date(&crt.valid_to, to, sizeof to);
	if (mbedtls_x509_time_is_past(&crt.valid_to)) {
		log_error("TLS certificate '%s' expired on %s: renew it", t->cert, to);
		goto out;
	}
	if (mbedtls_x509_time_is_future(&crt.valid_from)) {
		log_error("TLS certificate '%s' is not valid before %s (is this machine's clock "
		          "right?)", t->cert, from);
		goto out;
	}
	e = SHOAL_OK;
out:
	mbedtls_pk_free(&pk);
	mbedtls_x509_crt_free(&crt);
	return e;
}

/* CA file: every certificate in it must parse; at least one. */
static shoal_err
tls_check_ca(const tp_tls *t, const tls_files *f)
{
	mbedtls_x509_crt ca;
	char why[160];
	shoal_err e = SHOAL_OK;
	int rv;

	mbedtls_x509_crt_init(&ca);
	rv = mbedtls_x509_crt_parse(&ca, (const unsigned char *)f->ca, f->ca_len);
	if (rv != 0 || ca.raw.p == NULL) {
		if (rv > 0)
			snprintf(why, sizeof why, "%d certificate(s) in it are damaged", rv);
		else
			tls_why(rv, why, sizeof why);
		log_error("TLS CA certificate file '%s': %s", t->ca, why);
		e = SHOAL_EINVAL;
	}
	mbedtls_x509_crt_free(&ca);
	return e;
}

/* Read and check the files of t (see tp_tls_check); warn: about a key
 * file others can read (once, when the configuration is made). */
static shoal_err
tls_load(const tp_tls *t, bool server, bool warn, tls_files *f)
{
	static const tp_tls none;

	memset(f, 0, sizeof *f);
	if (t == NULL)
		t = &none;
	if (server && (t->cert == NULL || t->key == NULL)) {
		log_error("a TLS listener needs a certificate and its private key "
		          "(shoal-server --tls-cert FILE --tls-key FILE)");
		return SHOAL_EINVAL;
	}
	if (!server && t->ca == NULL) {
		log_error("a TLS client needs the CA certificate that signed the server's "
		          "certificate, to check whom it talks to (shoal-client --tls-ca FILE)");
		return SHOAL_EINVAL;
	}
	if ((t->cert == NULL) != (t->key == NULL)) {
		log_error("a TLS certificate needs its private key and a key its certificate "
		          "(--tls-cert and --tls-key together)");
		return SHOAL_EINVAL;
	}
	if (strcmp(nng_tls_engine_name(), "none") == 0) {
		log_error("this nng library was built without TLS: tls+tcp:// is not available "
		          "(Debian's libnng1 has it, through mbedtls)");
		return SHOAL_EINVAL;
	}
	if (t->cert != NULL) {
		if ((f->cert = tls_read("certificate", t->cert, &f->cert_len)) == NULL ||
		    (f->key = tls_read("key", t->key, &f->key_len)) == NULL ||
		    tls_check_own(t, f) != SHOAL_OK)
			goto fail;
		struct stat st;
		if (warn && stat(t->key, &st) == 0 && (st.st_mode & 077) != 0)
			log_warn("TLS key file '%s' can be read by other users (mode %03o): chmod 600 it",
			         t->key, (unsigned)(st.st_mode & 0777));
	}
	if (t->ca != NULL &&
	    ((f->ca = tls_read("CA certificate", t->ca, &f->ca_len)) == NULL ||
	     tls_check_ca(t, f) != SHOAL_OK))
		goto fail;
	return SHOAL_OK;
fail:
	tls_files_fini(f);
	return SHOAL_EINVAL;
}

shoal_err
tp_tls_check(const tp_tls *t, bool server)
{
	tls_files f;
	shoal_err e = tls_load(t, server, false, &f);

	tls_files_fini(&f);
	return e;
}

/* An nng TLS configuration from t. Server: its certificate; with a CA,
 * client certificates are required and must chain to it. Client: verifies
 * the server's certificate against the CA and server_name; presents its
 * own certificate if it has one. */
static shoal_err
tls_config_new(const tp_tls *t, bool server, const char *server_name, nng_tls_config **out)
{
	tls_files f;
	nng_tls_config *cfg = NULL;
	shoal_err e;
	int rv;

	*out = NULL;
	if ((e = tls_load(t, server, true, &f)) != SHOAL_OK)
		return e;
	if ((rv = nng_tls_config_alloc(&cfg, server ? NNG_TLS_MODE_SERVER : NNG_TLS_MODE_CLIENT)) != 0) {
		log_error("transport: cannot set up TLS: %s", nng_strerror(rv));
		tls_files_fini(&f);
		return map_err(rv) == SHOAL_ENOMEM ? SHOAL_ENOMEM : SHOAL_EINVAL;
	}
	rv = nng_tls_config_auth_mode(cfg, !server || f.ca != NULL ? NNG_TLS_AUTH_MODE_REQUIRED
	                                                        : NNG_TLS_AUTH_MODE_NONE);
	if (rv == 0 && f.cert != NULL)
		rv = nng_tls_config_own_cert(cfg, f.cert, f.key, NULL);
	if (rv == 0 && f.ca != NULL)
		rv = nng_tls_config_ca_chain(cfg, f.ca,
		                             strstr(f.ca, "-----BEGIN X509 CRL-----") ? f.ca : NULL);
	if (rv == 0 && !server && server_name != NULL)
		rv = nng_tls_config_server_name(cfg, server_name);
	tls_files_fini(&f);
	if (rv != 0) {
		log_error("transport: TLS configuration refused by nng: %s", nng_strerror(rv));
		nng_tls_config_free(cfg);
		return SHOAL_EINVAL;
	}
	*out = cfg;
	return SHOAL_OK;
}

/* ------------------------------------------------------------------ server */

typedef enum {
	TC_IDLE = 0, /* not in use, on the idle list */
	TC_RECV,     /* waiting for a request */
	TC_HOLD,     /* owns a request not answered yet */
	TC_SEND,     /* sending the reply */
	TC_LINGER,   /* reply sent; waiting to close the peer's pipe */
} tc_state;

typedef struct tp_ctx {
	tp_server *s;
	uint32_t idx;
	uint32_t gen;
	nng_ctx ctx;
	nng_aio *aio;
	tc_state st;
	nng_pipe pipe;     /* peer of the held request */
	bool limited;      /* the held request exceeded its connection's rate */
	bool close_after;  /* drop the peer once the reply is sent */
	struct tp_ctx *next_idle;
} tp_ctx;

/* One open connection: its nng pipe id and token bucket. */
typedef struct tp_peer {
	uint32_t id;      /* nng pipe id, 0 for an empty slot */
	float tokens;
	uint64_t last_ms; /* when tokens was last brought up to date */
} tp_peer;

typedef struct tp_item {
	uint64_t req;
	nng_msg *m;
	struct tp_item *next;
} tp_item;

struct tp_server {
	nng_socket sock;
	size_t max_msg;
	pthread_mutex_t mu;
	pthread_cond_t cv_q;  /* queue not empty, or closing */
	pthread_cond_t cv_cb; /* cb_active dropped */
	tp_ctx **ctx;         /* every context ever made, by index */
	uint32_t n_ctx, cap_ctx;
	tp_ctx *idle;
	uint32_t receiving;   /* contexts in TC_RECV */
	unsigned cb_active;   /* nng calls in progress outside mu */
	bool closing;
	tp_item *qhead, *qtail;
	uint64_t received;
	int bound_port;
	nng_tls_config *tls;  /* for tls+tcp:// listeners, or NULL */
	/* open connections (see the top of this file) */
	tp_peer *peers;       /* open addressing, id 0 = empty */
	uint32_t peer_mask;   /* capacity - 1 (capacity a power of two) */
	uint32_t n_peers, peak_peers, max_conns;
	uint64_t conns_refused;
	double rate_per_ms;   /* token bucket refill; 0: no rate limit */
	double burst;         /* bucket size */
};

static void srv_ctx_cb(void *arg);

/* ---- open connections ---- */

static uint32_t
peer_slot(uint32_t id, uint32_t mask)
{
	return (id * 2654435761u) & mask; /* Knuth's multiplicative hash */
}

/* Under mu. The peer with this pipe id, or NULL. */
static tp_peer *
peer_find(tp_server *s, uint32_t id)
{
	if (s->peers == NULL || id == 0)
		return NULL;
	for (uint32_t i = peer_slot(id, s->peer_mask);; i = (i + 1) & s->peer_mask) {
		if (s->peers[i].id == id)
			return &s->peers[i];
		if (s->peers[i].id == 0)
			return NULL;
	}
}

/* Under mu. Adds pipe id with a full bucket; false when out of memory. */
static bool
peer_add(tp_server *s, uint32_t id, uint64_t now)
{
	if (s->peers == NULL || 2 * (s->n_peers + 1) > s->peer_mask + 1) {
		uint32_t cap = s->peers == NULL ? 64 : 2 * (s->peer_mask + 1);
		tp_peer *old = s->peers, *v = calloc(cap, sizeof *v);
		uint32_t old_cap = old == NULL ? 0 : s->peer_mask + 1;
		if (v == NULL)
			return false;
		s->peers = v;
		s->peer_mask = cap - 1;
		for (uint32_t j = 0; j < old_cap; j++) {
			if (old[j].id == 0)
				continue;
			uint32_t i = peer_slot(old[j].id, s->peer_mask);
			while (v[i].id != 0)
				i = (i + 1) & s->peer_mask;
			v[i] = old[j];
		}
		free(old);
	}
	uint32_t i = peer_slot(id, s->peer_mask);
	while (s->peers[i].id != 0)
		i = (i + 1) & s->peer_mask;
	s->peers[i] = (tp_peer){.id = id, .tokens = (float)s->burst, .last_ms = now};
	s->n_peers++;
	if (s->n_peers > s->peak_peers)
		s->peak_peers = s->n_peers;
	return true;
}

/* Under mu. Removes pipe id (backward-shift deletion: no tombstones). */
static void
peer_remove(tp_server *s, uint32_t id)
{
	tp_peer *p = peer_find(s, id);
	uint32_t i, j;

	if (p == NULL)
		return;
	i = (uint32_t)(p - s->peers);
	s->peers[i].id = 0;
	s->n_peers--;
	for (j = (i + 1) & s->peer_mask; s->peers[j].id != 0; j = (j + 1) & s->peer_mask) {
		uint32_t home = peer_slot(s->peers[j].id, s->peer_mask);
		/* Move j into the hole at i unless its home lies cyclically in (i, j]. */
		bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!stays) {
			s->peers[i] = s->peers[j];
			s->peers[j].id = 0;
			i = j;
		}
	}
}

/* Under mu. Takes a token from the connection's bucket; false when it is
 * empty (the request exceeds the rate). Unknown connections (inproc pipes
 * race their notification) are let through. */
static bool
peer_take(tp_server *s, uint32_t id, uint64_t now)
{
	tp_peer *p;
	double t;

	if (s->rate_per_ms <= 0 || (p = peer_find(s, id)) == NULL)
		return true;
	t = p->tokens + (double)(now - p->last_ms) * s->rate_per_ms;
	p->last_ms = now;
	if (t > s->burst)
		t = s->burst;
	if (t < 1.0) {
		p->tokens = (float)t;
		return false;
	}
	p->tokens = (float)(t - 1.0);
	return true;
}

/* nng pipe events: admit or refuse a new connection, forget a closed one. */
static void
srv_pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	tp_server *s = arg;
	uint32_t id = (uint32_t)nng_pipe_id(p);
	bool refuse = false;

	pthread_mutex_lock(&s->mu);
	if (ev == NNG_PIPE_EV_ADD_PRE) {
		if ((s->max_conns > 0 && s->n_peers >= s->max_conns) ||
		    !peer_add(s, id, clock_now_ms())) {
			s->conns_refused++;
			refuse = true;
		}
	} else if (ev == NNG_PIPE_EV_REM_POST) {
		peer_remove(s, id);
	}
	pthread_mutex_unlock(&s->mu);
	if (refuse)
		nng_pipe_close(p); /* never added: the peer's dialer retries later */
}

/* Make a context (not yet receiving) and register it. Called without mu.
 * Returns NULL on failure (logged) or when the server is closing. */
static tp_ctx *
srv_ctx_new(tp_server *s)
{
	tp_ctx *c = calloc(1, sizeof *c);
	int rv;

	if (c == NULL)
		return NULL;
	c->s = s;
	if ((rv = nng_ctx_open(&c->ctx, s->sock)) != 0) {
		if (rv != NNG_ECLOSED)
			log_error("transport: cannot open context: %s", nng_strerror(rv));
		free(c);
		return NULL;
	}
	if ((rv = nng_aio_alloc(&c->aio, srv_ctx_cb, c)) != 0) {
		log_error("transport: cannot allocate aio: %s", nng_strerror(rv));
		nng_ctx_close(c->ctx);
		free(c);
		return NULL;
	}
	pthread_mutex_lock(&s->mu);
	if (!s->closing && s->n_ctx == s->cap_ctx) {
		uint32_t cap = s->cap_ctx ? 2 * s->cap_ctx : 32;
		tp_ctx **a = realloc(s->ctx, cap * sizeof *a);
		if (a != NULL) {
			s->ctx = a;
			s->cap_ctx = cap;
		}
	}
	if (s->closing || s->n_ctx == s->cap_ctx) {
		pthread_mutex_unlock(&s->mu);
		nng_ctx_close(c->ctx);
		nng_aio_free(c->aio);
		free(c);
		return NULL;
	}
	c->idx = s->n_ctx;
	s->ctx[s->n_ctx++] = c;
	pthread_mutex_unlock(&s->mu);
	return c;
}

/* Under mu: pick up to `want` contexts that should start receiving and mark
 * them TC_RECV; returns how many were taken from the idle list (in out[])
 * and sets *create to how many must be made. */
static unsigned
srv_take_idle(tp_server *s, tp_ctx **out, unsigned max, unsigned *create)
{
	unsigned n = 0;

	*create = 0;
	while (s->receiving < TP_RECV_POOL && n + *create < max) {
		if (s->idle != NULL) {
			tp_ctx *c = s->idle;
			s->idle = c->next_idle;
			c->next_idle = NULL;
			c->st = TC_RECV;
			out[n++] = c;
		} else {
			(*create)++;
		}
		s->receiving++;
	}
	return n;
}

/* Start receiving on the given contexts, creating `create` new ones. Called
 * without mu, with cb_active held; drops cb_active at the end. */
static void
srv_start_recv(tp_server *s, tp_ctx **cs, unsigned n, unsigned create)
{
	unsigned i;

	for (i = 0; i < n; i++)
		nng_ctx_recv(cs[i]->ctx, cs[i]->aio);
	for (i = 0; i < create; i++) {
		tp_ctx *c = srv_ctx_new(s);
		if (c == NULL) {
			pthread_mutex_lock(&s->mu);
			s->receiving--;
			pthread_mutex_unlock(&s->mu);
			continue;
		}
		/* c->st is only read under mu by others; set it before starting. */
		pthread_mutex_lock(&s->mu);
		c->st = TC_RECV;
		pthread_mutex_unlock(&s->mu);
		nng_ctx_recv(c->ctx, c->aio);
	}
	pthread_mutex_lock(&s->mu);
	s->cb_active--;
	pthread_cond_broadcast(&s->cv_cb);
	pthread_mutex_unlock(&s->mu);
}

/* Under mu: a context is free again; receive on it if the pool is short,
 * else park it on the idle list. Returns true if the caller must start
 * nng_ctx_recv on it (cb_active was taken). */
static bool
srv_ctx_release(tp_server *s, tp_ctx *c)
{
	if (!s->closing && s->receiving < TP_RECV_POOL) {
		c->st = TC_RECV;
		s->receiving++;
		s->cb_active++;
		return true;
	}
	c->st = TC_IDLE;
	c->next_idle = s->idle;
	s->idle = c;
	return false;
}

static void
srv_ctx_cb(void *arg)
{
	tp_ctx *c = arg;
	tp_server *s = c->s;
	int rv = nng_aio_result(c->aio);
	tp_ctx *start[TP_RECV_POOL];
	unsigned n = 0, create = 0;
	bool again = false, close_pipe = false, linger = false;
	nng_pipe pipe = NNG_PIPE_INITIALIZER;

	pthread_mutex_lock(&s->mu);
	switch (c->st) {
	case TC_RECV: {
		s->receiving--;
		if (rv != 0) {
			if (!s->closing && rv != NNG_ECLOSED && rv != NNG_ECANCELED)
				log_warn("transport: receive failed: %s", nng_strerror(rv));
			c->st = TC_IDLE;
			if (!s->closing && rv != NNG_ECLOSED && rv != NNG_ECANCELED)
				again = srv_ctx_release(s, c);
			else {
				c->next_idle = s->idle;
				s->idle = c;
			}
			break;
		}
		nng_msg *m = nng_aio_get_msg(c->aio);
		nng_aio_set_msg(c->aio, NULL);
		if (s->closing) {
			nng_msg_free(m);
			c->st = TC_IDLE;
			break;
		}
		tp_item *it = malloc(sizeof *it);
		if (it == NULL) {
			/* Drop the request: the client times out and retries. */
			nng_msg_free(m);
			again = srv_ctx_release(s, c);
			break;
		}
		c->gen++;
		c->st = TC_HOLD;
		c->pipe = nng_msg_get_pipe(m);
		c->limited = !peer_take(s, (uint32_t)nng_pipe_id(c->pipe), clock_now_ms());
		it->req = ((uint64_t)c->gen << 32) | ((uint64_t)c->idx + 1);
		it->m = m;
		it->next = NULL;
		if (s->qtail)
			s->qtail->next = it;
		else
			s->qhead = it;
		s->qtail = it;
		s->received++;
		pthread_cond_signal(&s->cv_q);
		n = srv_take_idle(s, start, TP_RECV_POOL, &create);
		if (n + create > 0)
			s->cb_active++;
		break;
	}
	case TC_SEND:
		if (rv != 0) {
			/* Peer gone or socket closing: nothing anyone can do. */
			nng_msg *unsent = nng_aio_get_msg(c->aio);
			if (unsent != NULL)
				nng_msg_free(unsent);
			nng_aio_set_msg(c->aio, NULL);
			log_debug("transport: reply not sent: %s", nng_strerror(rv));
		}
		if (c->close_after && !s->closing) {
			c->st = TC_LINGER;
			s->cb_active++;
			linger = true;
			break;
		}
		if (!s->closing)
			again = srv_ctx_release(s, c);
		else
			c->st = TC_IDLE;
		break;
	case TC_LINGER:
		close_pipe = true;
		pipe = c->pipe;
		c->close_after = false;
		if (!s->closing)
			again = srv_ctx_release(s, c);
		else
			c->st = TC_IDLE;
		break;
	case TC_IDLE:
	case TC_HOLD:
		/* Canceled by close; nothing was in flight. */
		break;
	}
	pthread_mutex_unlock(&s->mu);

	if (close_pipe && nng_pipe_id(pipe) > 0)
		nng_pipe_close(pipe); /* the peer may be gone already: ignore */
	if (linger) {
		nng_sleep_aio(TP_CLOSE_DELAY_MS, c->aio);
		pthread_mutex_lock(&s->mu);
		s->cb_active--;
		pthread_cond_broadcast(&s->cv_cb);
		pthread_mutex_unlock(&s->mu);
	}
	if (again) {
		nng_ctx_recv(c->ctx, c->aio);
		pthread_mutex_lock(&s->mu);
		s->cb_active--;
		pthread_cond_broadcast(&s->cv_cb);
		pthread_mutex_unlock(&s->mu);
	}
	if (n + create > 0)
		srv_start_recv(s, start, n, create);
}

shoal_err
tp_server_open(tp_server **out, size_t max_msg)
{
	tp_server *s;
	int rv;

	*out = NULL;
	if ((s = calloc(1, sizeof *s)) == NULL)
		return SHOAL_ENOMEM;
	s->max_msg = max_msg;
	if (pthread_mutex_init(&s->mu, NULL) != 0) {
		free(s);
		return SHOAL_ENOMEM;
	}
	if (cond_init_mono(&s->cv_q) != 0) {
		pthread_mutex_destroy(&s->mu);
		free(s);
		return SHOAL_ENOMEM;
	}
	if (cond_init_mono(&s->cv_cb) != 0) {
		pthread_cond_destroy(&s->cv_q);
		pthread_mutex_destroy(&s->mu);
		free(s);
		return SHOAL_ENOMEM;
	}
	if ((rv = nng_rep0_open(&s->sock)) != 0) {
		log_error("transport: cannot open REP socket: %s", nng_strerror(rv));
		goto fail;
	}
	if (max_msg > 0 && (rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, max_msg)) != 0) {
		log_error("transport: cannot set max message size: %s", nng_strerror(rv));
		nng_close(s->sock);
		goto fail;
	}
	if ((rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_PRE, srv_pipe_cb, s)) != 0 ||
	    (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, srv_pipe_cb, s)) != 0) {
		log_error("transport: cannot watch connections: %s", nng_strerror(rv));
		nng_close(s->sock);
		goto fail;
	}
	/* Fill the receive pool. */
	for (unsigned i = 0; i < TP_RECV_POOL; i++) {
		tp_ctx *c = srv_ctx_new(s);
		if (c == NULL) {
			tp_server_close(s);
			return SHOAL_ETRANSPORT;
		}
		pthread_mutex_lock(&s->mu);
		c->st = TC_RECV;
		s->receiving++;
		pthread_mutex_unlock(&s->mu);
		nng_ctx_recv(c->ctx, c->aio);
	}
	*out = s;
	return SHOAL_OK;
fail:
	pthread_cond_destroy(&s->cv_cb);
	pthread_cond_destroy(&s->cv_q);
	pthread_mutex_destroy(&s->mu);
	free(s);
	return map_err(rv) == SHOAL_ENOMEM ? SHOAL_ENOMEM : SHOAL_ETRANSPORT;
}

/* "tcp://host:0" with the real port, for the log line. */
static void
url_with_port(const char *url, int port, char *out, size_t n)
{
	const char *colon = strrchr(url, ':');
	const char *slashes = strstr(url, "://");

	if (port > 0 && colon != NULL && slashes != NULL && colon > slashes + 2 &&
	    strcmp(colon, ":0") == 0)
		snprintf(out, n, "%.*s:%d", (int)(colon - url), url, port);
	else
		snprintf(out, n, "%s", url);
}

shoal_err
tp_server_set_tls(tp_server *s, const tp_tls *t)
{
	nng_tls_config *cfg;
	shoal_err e = tls_config_new(t, true, NULL, &cfg);

	if (e != SHOAL_OK)
		return e;
	pthread_mutex_lock(&s->mu);
	if (s->tls != NULL)
		nng_tls_config_free(s->tls);
	s->tls = cfg;
	pthread_mutex_unlock(&s->mu);
	return SHOAL_OK;
}

void
tp_server_set_max_conns(tp_server *s, uint32_t max)
{
	pthread_mutex_lock(&s->mu);
	s->max_conns = max;
	pthread_mutex_unlock(&s->mu);
}

void
tp_server_set_rate(tp_server *s, double per_s, double burst)
{
	pthread_mutex_lock(&s->mu);
	s->rate_per_ms = per_s > 0 ? per_s / 1000.0 : 0.0;
	s->burst = burst >= 1.0 ? burst : 1.0;
	pthread_mutex_unlock(&s->mu);
}

shoal_err
tp_server_listen(tp_server *s, const char *url)
{
	nng_listener l;
	int rv, port = 0;
	char shown[512];
	bool tls = tp_url_is_tls(url);

	if (url == NULL || *url == '\0') {
		log_error("transport: empty listen URL");
		return SHOAL_EINVAL;
	}
	if (tls && s->tls == NULL) {
		log_error("transport: cannot listen on %s: a TLS URL needs a certificate and its key "
		          "(shoal-server --tls-cert FILE --tls-key FILE)", url);
		return SHOAL_EINVAL;
	}
	if (!tls) {
		rv = nng_listen(s->sock, url, &l, 0);
	} else if ((rv = nng_listener_create(&l, s->sock, url)) == 0) {
		/* The listener holds its own reference to the configuration. */
		if ((rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, s->tls)) != 0 ||
		    (rv = nng_listener_start(l, 0)) != 0)
			nng_listener_close(l);
	}
	if (rv != 0) {
		const char *h = hint_for(rv);
		log_error("transport: cannot listen on %s: %s%s%s", url, nng_strerror(rv),
		          *h ? "; " : "", h);
		return map_err(rv) == SHOAL_EINVAL ? SHOAL_EINVAL : SHOAL_ETRANSPORT;
	}
	if ((strncmp(url, "tcp", 3) == 0 || strncmp(url, "tls+tcp", 7) == 0) &&
	    nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port) == 0) {
		pthread_mutex_lock(&s->mu);
		s->bound_port = port;
		pthread_mutex_unlock(&s->mu);
	}
	url_with_port(url, port, shown, sizeof shown);
	log_info("listening on %s%s", shown, tls ? " (TLS)" : "");
	return SHOAL_OK;
}

int
tp_server_bound_port(tp_server *s)
{
	int p;
	pthread_mutex_lock(&s->mu);
	p = s->bound_port;
	pthread_mutex_unlock(&s->mu);
	return p;
}

shoal_err
tp_server_recv(tp_server *s, int timeout_ms, uint64_t *req, tp_msg **msg)
{
	struct timespec dl;
	tp_item *it;

	*msg = NULL;
	if (timeout_ms > 0)
		dl = deadline_in(timeout_ms);
	pthread_mutex_lock(&s->mu);
	while (s->qhead == NULL && !s->closing) {
		if (timeout_ms == 0)
			break;
		if (timeout_ms < 0) {
			pthread_cond_wait(&s->cv_q, &s->mu);
		} else if (pthread_cond_timedwait(&s->cv_q, &s->mu, &dl) == ETIMEDOUT) {
			break;
		}
	}
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		return SHOAL_ECLOSED;
	}
	if ((it = s->qhead) == NULL) {
		pthread_mutex_unlock(&s->mu);
		return SHOAL_ETIMEDOUT;
	}
	s->qhead = it->next;
	if (s->qhead == NULL)
		s->qtail = NULL;
	pthread_mutex_unlock(&s->mu);

	*req = it->req;
	*msg = msg_wrap(it->m);
	free(it);
	if (*msg == NULL) {
		/* Answer nothing: the held context is freed by an empty reply. */
		tp_server_reply(s, *req, NULL, 0, true);
		return SHOAL_ENOMEM;
	}
	return SHOAL_OK;
}

shoal_err
tp_server_reply(tp_server *s, uint64_t req, const uint8_t *buf, size_t len, bool close)
{
	uint32_t idx = (uint32_t)(req & 0xffffffffu);
	uint32_t gen = (uint32_t)(req >> 32);
	nng_msg *m;
	tp_ctx *c;
	int rv;

	if (idx == 0)
		return SHOAL_EINVAL;
	if ((rv = nng_msg_alloc(&m, len)) != 0)
		return SHOAL_ENOMEM;
	if (len > 0)
		memcpy(nng_msg_body(m), buf, len);

	pthread_mutex_lock(&s->mu);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		nng_msg_free(m);
		return SHOAL_ECLOSED;
	}
	if (idx > s->n_ctx || (c = s->ctx[idx - 1])->st != TC_HOLD || c->gen != gen) {
		pthread_mutex_unlock(&s->mu);
		nng_msg_free(m);
		return SHOAL_EINVAL;
	}
	c->st = TC_SEND;
	c->close_after = close;
	s->cb_active++;
	pthread_mutex_unlock(&s->mu);

	nng_aio_set_msg(c->aio, m);
	nng_ctx_send(c->ctx, c->aio);

	pthread_mutex_lock(&s->mu);
	s->cb_active--;
	pthread_cond_broadcast(&s->cv_cb);
	pthread_mutex_unlock(&s->mu);
	return SHOAL_OK;
}

void
tp_server_close(tp_server *s)
{
	uint32_t i, n;

	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	s->closing = true;
	pthread_cond_broadcast(&s->cv_q);
	while (s->cb_active > 0)
		pthread_cond_wait(&s->cv_cb, &s->mu);
	n = s->n_ctx;
	pthread_mutex_unlock(&s->mu);

	/* From here no callback starts a new operation; closing the socket
	 * aborts the pending ones, and aio_stop waits for their callbacks. */
	nng_close(s->sock);
	for (i = 0; i < n; i++)
		nng_aio_stop(s->ctx[i]->aio);
	for (i = 0; i < n; i++) {
		tp_ctx *c = s->ctx[i];
		nng_msg *m = nng_aio_get_msg(c->aio);
		if (m != NULL)
			nng_msg_free(m);
		nng_aio_free(c->aio);
		free(c);
	}
	free(s->ctx);
	free(s->peers);
	if (s->tls != NULL)
		nng_tls_config_free(s->tls);
	while (s->qhead != NULL) {
		tp_item *it = s->qhead;
		s->qhead = it->next;
		nng_msg_free(it->m);
		free(it);
	}
	pthread_cond_destroy(&s->cv_cb);
	pthread_cond_destroy(&s->cv_q);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

uint64_t
tp_server_received(const tp_server *s)
{
	uint64_t n;
	pthread_mutex_lock((pthread_mutex_t *)&s->mu);
	n = s->received;
	pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
	return n;
}

/* Under mu: the context holding request req, or NULL. */
static tp_ctx *
held_ctx(tp_server *s, uint64_t req)
{
	uint32_t idx = (uint32_t)(req & 0xffffffffu), gen = (uint32_t)(req >> 32);
	tp_ctx *c;

	if (idx == 0 || idx > s->n_ctx)
		return NULL;
	c = s->ctx[idx - 1];
	return c->st == TC_HOLD && c->gen == gen ? c : NULL;
}

uint32_t
tp_server_peer(tp_server *s, uint64_t req)
{
	tp_ctx *c;
	uint32_t id = 0;

	pthread_mutex_lock(&s->mu);
	if ((c = held_ctx(s, req)) != NULL)
		id = (uint32_t)nng_pipe_id(c->pipe);
	pthread_mutex_unlock(&s->mu);
	return id > 0 ? id : 0;
}

bool
tp_server_limited(tp_server *s, uint64_t req)
{
	tp_ctx *c;
	bool lim = false;

	pthread_mutex_lock(&s->mu);
	if ((c = held_ctx(s, req)) != NULL)
		lim = c->limited;
	pthread_mutex_unlock(&s->mu);
	return lim;
}

void
tp_server_peer_addr(tp_server *s, uint64_t req, char *out, size_t n)
{
	nng_sockaddr sa;
	nng_pipe p = NNG_PIPE_INITIALIZER;
	tp_ctx *c;
	char ip[64];

	snprintf(out, n, "?");
	pthread_mutex_lock(&s->mu);
	if ((c = held_ctx(s, req)) != NULL)
		p = c->pipe;
	pthread_mutex_unlock(&s->mu);
	if (nng_pipe_id(p) <= 0 || nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) != 0)
		return;
	switch (sa.s_family) {
	case NNG_AF_INET:
		inet_ntop(AF_INET, &sa.s_in.sa_addr, ip, sizeof ip);
		snprintf(out, n, "%s:%u", ip, (unsigned)ntohs(sa.s_in.sa_port));
		break;
	case NNG_AF_INET6:
		inet_ntop(AF_INET6, sa.s_in6.sa_addr, ip, sizeof ip);
		snprintf(out, n, "[%s]:%u", ip, (unsigned)ntohs(sa.s_in6.sa_port));
		break;
	case NNG_AF_IPC:
		snprintf(out, n, "ipc");
		break;
	case NNG_AF_INPROC:
		snprintf(out, n, "inproc");
		break;
	default:
		break;
	}
}

void
tp_server_conns(tp_server *s, tp_conn_stats *out)
{
	pthread_mutex_lock(&s->mu);
	out->open = s->n_peers;
	out->peak = s->peak_peers;
	out->refused = s->conns_refused;
	pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ client */

struct tp_client {
	nng_socket sock;
	nng_ctx ctx;
	nng_aio *aio;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
};

static void
cli_aio_cb(void *arg)
{
	tp_client *c = arg;
	pthread_mutex_lock(&c->mu);
	c->done = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

/* Dial url on c->sock without blocking, with TLS for tls+tcp:// URLs.
 * Returns the nng error, or -1 after logging a TLS setup failure. */
static int
cli_dial(tp_client *c, const char *url, const tp_tls *tls)
{
	nng_tls_config *cfg = NULL;
	nng_dialer d;
	nng_url *u = NULL;
	const char *name;
	int rv;

	if (!tp_url_is_tls(url))
		return nng_dial(c->sock, url, NULL, NNG_FLAG_NONBLOCK);
	if ((rv = nng_url_parse(&u, url)) != 0)
		return rv;
	name = tls != NULL && tls->server_name != NULL ? tls->server_name : u->u_hostname;
	if (name == NULL || *name == '\0') {
		log_error("transport: %s names no host to check the server's certificate against; "
		          "give the server's name (--tls-server-name)", url);
		nng_url_free(u);
		return -1;
	}
	if (tls_config_new(tls, false, name, &cfg) != SHOAL_OK) {
		nng_url_free(u);
		return -1;
	}
	nng_url_free(u);
	if ((rv = nng_dialer_create(&d, c->sock, url)) == 0) {
		/* The dialer holds its own reference to the configuration. */
		if ((rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, cfg)) != 0 ||
		    (rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK)) != 0)
			nng_dialer_close(d);
	}
	nng_tls_config_free(cfg);
	return rv;
}

shoal_err
tp_client_open(tp_client **out, const char *url, size_t max_msg)
{
	return tp_client_open_tls(out, url, max_msg, NULL);
}

shoal_err
tp_client_open_tls(tp_client **out, const char *url, size_t max_msg, const tp_tls *tls)
{
	tp_client *c;
	int rv;
	shoal_err err = SHOAL_ETRANSPORT;
	bool mu = false, cv = false, sock = false;

	*out = NULL;
	if (url == NULL || *url == '\0') {
		log_error("transport: empty server URL");
		return SHOAL_EINVAL;
	}
	if ((c = calloc(1, sizeof *c)) == NULL)
		return SHOAL_ENOMEM;
	if (pthread_mutex_init(&c->mu, NULL) != 0)
		goto fail;
	mu = true;
	if (cond_init_mono(&c->cv) != 0)
		goto fail;
	cv = true;
	if ((rv = nng_req0_open(&c->sock)) != 0) {
		log_error("transport: cannot open REQ socket: %s", nng_strerror(rv));
		goto fail;
	}
	sock = true;
	if ((max_msg > 0 && (rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, max_msg)) != 0) ||
	    (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, TP_RECONN_MIN_MS)) != 0 ||
	    (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, TP_RECONN_MAX_MS)) != 0 ||
	    (rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, TP_RESEND_MS)) != 0) {
		log_error("transport: cannot set socket options: %s", nng_strerror(rv));
		goto fail;
	}
	if ((rv = nng_ctx_open(&c->ctx, c->sock)) != 0 ||
	    (rv = nng_ctx_set_ms(c->ctx, NNG_OPT_REQ_RESENDTIME, TP_RESEND_MS)) != 0 ||
	    (rv = nng_aio_alloc(&c->aio, cli_aio_cb, c)) != 0) {
		log_error("transport: cannot set up request context: %s", nng_strerror(rv));
		goto fail;
	}
	/* Non-blocking: the client may start before the server. */
	if ((rv = cli_dial(c, url, tls)) == -1) {
		err = SHOAL_EINVAL;
		goto fail;
	}
	if (rv != 0) {
		const char *h = hint_for(rv);
		log_error("transport: cannot dial %s: %s%s%s", url, nng_strerror(rv), *h ? "; " : "",
		          h);
		err = map_err(rv) == SHOAL_EINVAL ? SHOAL_EINVAL : SHOAL_ETRANSPORT;
		goto fail;
	}
	log_debug("transport: dialing %s", url);
	*out = c;
	return SHOAL_OK;
fail:
	if (c->aio)
		nng_aio_free(c->aio);
	if (sock)
		nng_close(c->sock);
	if (cv)
		pthread_cond_destroy(&c->cv);
	if (mu)
		pthread_mutex_destroy(&c->mu);
	free(c);
	return err;
}

/* Run the started aio to completion, waking every 100 ms to check stop;
 * returns the nng result. */
static int
cli_wait(tp_client *c, volatile sig_atomic_t *stop)
{
	bool canceled = false;

	pthread_mutex_lock(&c->mu);
	while (!c->done) {
		if (stop != NULL && *stop && !canceled) {
			pthread_mutex_unlock(&c->mu);
			nng_aio_cancel(c->aio);
			canceled = true;
			pthread_mutex_lock(&c->mu);
			continue;
		}
		struct timespec dl = deadline_in(100);
		pthread_cond_timedwait(&c->cv, &c->mu, &dl);
	}
	pthread_mutex_unlock(&c->mu);
	nng_aio_wait(c->aio);
	return nng_aio_result(c->aio);
}

shoal_err
tp_client_request_stop(tp_client *c, const uint8_t *buf, size_t len, int timeout_ms,
                       volatile sig_atomic_t *stop, tp_msg **reply)
{
	uint64_t end = clock_now_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
	nng_msg *m;
	int rv;

	*reply = NULL;
	if ((rv = nng_msg_alloc(&m, len)) != 0)
		return SHOAL_ENOMEM;
	if (len > 0)
		memcpy(nng_msg_body(m), buf, len);

	pthread_mutex_lock(&c->mu);
	c->done = false;
	pthread_mutex_unlock(&c->mu);
	nng_aio_set_msg(c->aio, m);
	nng_aio_set_timeout(c->aio, timeout_ms < 0 ? NNG_DURATION_INFINITE : timeout_ms);
	nng_ctx_send(c->ctx, c->aio);
	if ((rv = cli_wait(c, stop)) != 0) {
		nng_msg *unsent = nng_aio_get_msg(c->aio);
		if (unsent != NULL)
			nng_msg_free(unsent);
		nng_aio_set_msg(c->aio, NULL);
		if (stop != NULL && *stop)
			return SHOAL_ECLOSED;
		return map_err(rv) == SHOAL_ETIMEDOUT || map_err(rv) == SHOAL_ECLOSED ? map_err(rv)
		                                                                      : SHOAL_ETRANSPORT;
	}

	uint64_t now = clock_now_ms();
	pthread_mutex_lock(&c->mu);
	c->done = false;
	pthread_mutex_unlock(&c->mu);
	if (timeout_ms < 0)
		nng_aio_set_timeout(c->aio, NNG_DURATION_INFINITE);
	else
		nng_aio_set_timeout(c->aio, now >= end ? 1 : (nng_duration)(end - now));
	nng_ctx_recv(c->ctx, c->aio);
	if ((rv = cli_wait(c, stop)) != 0) {
		if (stop != NULL && *stop)
			return SHOAL_ECLOSED;
		return map_err(rv) == SHOAL_ETIMEDOUT || map_err(rv) == SHOAL_ECLOSED ? map_err(rv)
		                                                                      : SHOAL_ETRANSPORT;
	}
	m = nng_aio_get_msg(c->aio);
	nng_aio_set_msg(c->aio, NULL);
	if ((*reply = msg_wrap(m)) == NULL)
		return SHOAL_ENOMEM;
	return SHOAL_OK;
}

shoal_err
tp_client_request(tp_client *c, const uint8_t *buf, size_t len, int timeout_ms, tp_msg **reply)
{
	return tp_client_request_stop(c, buf, len, timeout_ms, NULL, reply);
}

void
tp_client_close(tp_client *c)
{
	if (c == NULL)
		return;
	nng_close(c->sock);
	nng_aio_stop(c->aio);
	nng_aio_free(c->aio);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}
