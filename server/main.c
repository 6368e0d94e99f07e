/* main.c - shoal-server: the command-line front end of the aggregation
 * server. Parses and validates flags, loads the MNIST test set for
 * evaluation, builds the protocol core and runs the nng driver (serve.c)
 * until the last round or a stop signal, then prints one summary line. */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>


#include <sodium.h>

#include "common/cli.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/transport.h"
#include "ml/ml.h"
#include "privacy/ident.h"
#include "server/ckpt.h"
#include "server/core.h"
#include "server/flags.h"
#include "server/serve.h"
#include "shoal/err.h"

#ifndef SHOAL_VERSION
#define SHOAL_VERSION "0.1.0"
#endif

#define PROG "shoal-server"
#define DEFAULT_LISTEN "tcp://0.0.0.0:7000"
#define DEFAULT_DATA_DIR "data"
#define DEFAULT_LINGER_MS 5000u
#define MAX_LISTEN 16
#define MAX_HOLD_MS 600000u     /* 10 min */
#define MAX_LINGER_MS 600000u   /* 10 min */
#define MAX_TIMEOUT_S 86400.0   /* 1 day */
/* --rate-limit default: requests a second per connection, and the bucket.
 * A client sends at most about 2 requests a round (6 in secure rounds) and
 * a check-in per --hold: far below this; the burst covers a secure round's
 * phases and reconnections. */
#define DEFAULT_RATE 100.0
#define DEFAULT_BURST 200.0
#define MAX_RATE 1e6
/* File descriptors kept for files and nng's own use, below RLIMIT_NOFILE,
 * when --max-connections is computed. */
#define FD_RESERVE 64u

/* Exit statuses (documented in --help). */
enum { EXIT_DONE = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* The signal that asked us to stop (0: none). SA_RESETHAND makes a second
 * signal terminate the process the default way. */
static volatile sig_atomic_t stop_signal;

static void
on_signal(int sig)
{
	stop_signal = sig;
}

/* ---- flag parsing ---------------------------------------------------- */

/* A finite decimal number in (0, hi]. */
static bool
parse_pos_double(const char *s, double hi, double *out)
{
	return cli_parse_number(s, 0, hi, false, out) && *out > 0.0;
}

/* Bytes with an optional binary suffix: 4096, 512K, 64M, 1G. */
static bool
parse_bytes(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char buf[32];
	size_t n = strlen(s);
	uint64_t mul = 1, v;

	if (n == 0 || n >= sizeof buf)
		return false;
	memcpy(buf, s, n + 1);
	switch (buf[n - 1]) {
	case 'k': case 'K': mul = 1u << 10; break;
	case 'm': case 'M': mul = 1u << 20; break;
	case 'g': case 'G': mul = 1u << 30; break;
	default: break;
	}
	if (mul != 1)
		buf[n - 1] = '\0';
	if (!cli_parse_u64(buf, 0, UINT64_MAX / mul, &v))
		return false;
	v *= mul;
	if (v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

/* --rate-limit: "off", "N/s" or "N/s:BURST" (N > 0, BURST >= 1); "/s" may
 * be left out. */
static bool
parse_rate(const char *s, double *rate, double *burst)
{
	char buf[64];
	char *colon, *per;
	double r, b;

	if (strcmp(s, "off") == 0 || strcmp(s, "0") == 0) {
		*rate = 0;
		*burst = 0;
		return true;
	}
	if (strlen(s) >= sizeof buf)
		return false;
	strcpy(buf, s);
	if ((colon = strchr(buf, ':')) != NULL)
		*colon++ = '\0';
	if ((per = strstr(buf, "/s")) != NULL) {
		if (per[2] != '\0')
			return false;
		*per = '\0';
	}
	if (!cli_parse_number(buf, 0, MAX_RATE, false, &r) || r <= 0)
		return false;
	b = 2 * r;
	if (colon != NULL && (!cli_parse_number(colon, 1, 100 * MAX_RATE, false, &b) || b < 1))
		return false;
	*rate = r;
	*burst = b < 1 ? 1 : b;
	return true;
}

typedef struct options {
	srv_config cfg;
	const char *listen[MAX_LISTEN];
	size_t n_listen;
	const char *data_dir;
	const char *metrics;
	bool seed_given; /* --seed on the command line */
	const char *state_dir; /* --state-dir: checkpoints, or NULL */
	bool resume;
	const char *allowlist; /* --allowlist FILE, or NULL */
	const char *tokens;    /* --enroll-tokens FILE, or NULL */
	uint32_t linger_ms;
	tp_tls tls;            /* --tls-cert, --tls-key, --tls-ca */
	double rate, burst;    /* --rate-limit; rate 0: off */
	uint32_t max_conns;    /* --max-connections; 0: from RLIMIT_NOFILE */
	int verbosity; /* -1 quiet, 0 normal, 1 verbose */
} options;

static void
print_help(FILE *f)
{
	srv_config d;

	srv_config_defaults(&d);
	fprintf(f,
	    "Usage: " PROG " [OPTION]...\n"
	    "Run a shoal federated-learning server: wait for clients to check in, run\n"
	    "FedAvg rounds (select K clients, send them the global model, average their\n"
	    "updates weighted by example counts) and evaluate the global model on the\n"
	    "MNIST test set after every round.\n"
	    "\n"
	    "Network:\n"
	    "      --listen URL          listen on URL; repeat to listen on several\n"
	    "                            (tcp://HOST:PORT, tls+tcp://HOST:PORT, ipc:///PATH,\n"
	    "                            inproc://NAME) [default: " DEFAULT_LISTEN "]\n"
	    "      --max-clients N       most clients that may register [default: %" PRIu32 "]\n"
	    "      --max-message BYTES   largest request accepted, suffix K, M or G allowed;\n"
	    "                            must hold a whole model [default: %zu]\n"
	    "      --max-connections N   most connections open at once; more are closed as\n"
	    "                            they arrive and their clients retry later\n"
	    "                            [default: the open-file limit minus %u, after\n"
	    "                            raising the soft limit to the hard one]\n"
	    "      --rate-limit R        requests a second per connection, as N/s or\n"
	    "                            N/s:BURST (BURST requests at once, then N a\n"
	    "                            second); a request over it is answered ERROR -25\n"
	    "                            and the client resends it after a backoff; 'off'\n"
	    "                            disables it [default: %g/s:%g]\n"
	    "\n"
	    "TLS (tls+tcp:// URLs; PROTOCOL.md section 1.1):\n"
	    "      --tls-cert FILE       this server's certificate (PEM, optionally followed\n"
	    "                            by its chain); required with a tls+tcp:// URL\n"
	    "      --tls-key FILE        the certificate's private key (PEM, unencrypted;\n"
	    "                            keep it readable by this user only)\n"
	    "      --tls-ca FILE         CA certificate(s) (PEM): every client must present a\n"
	    "                            certificate signed by one of them (mutual TLS);\n"
	    "                            without it, any client may connect\n"
	    "      --hold MS             longest a check-in is parked before the client is\n"
	    "                            told to retry (long polling) [default: %" PRIu32 "]\n"
	    "      --linger MS           after the last round, keep answering DONE this long\n"
	    "                            so clients learn that training ended\n"
	    "                            [default: %u]\n"
	    "\n"
	    "Rounds:\n"
	    "      --rounds N            round attempts, completed or abandoned\n"
	    "                            [default: %" PRIu32 "]\n"
	    "      --clients-per-round K clients selected per round, K >= 1 [default: %" PRIu32 "]\n"
	    "      --min-clients M       waiting clients needed to start a round, M >= 1\n"
	    "                            [default: %" PRIu32 "]\n"
	    "      --min-reports R       updates needed to aggregate a round; with fewer by\n"
	    "                            the deadline the round is abandoned and the model\n"
	    "                            kept, 1 <= R <= K [default: %" PRIu32 "]\n"
	    "      --round-timeout SECONDS\n"
	    "                            deadline of a round, from its start; decimals\n"
	    "                            allowed [default: %g]\n"
	    "\n"
	    "Training (sent to the clients in every task):\n"
	    "      --model NAME          model to train: %s [default: %s]\n"
	    "      --epochs E            local epochs, 1..%u [default: %" PRIu32 "]\n"
	    "      --batch B             local minibatch size, 1..%u [default: %" PRIu32 "]\n"
	    "      --lr LR               local SGD learning rate, > 0 [default: %g]\n"
	    "      --seed S              seed of model initialisation, client selection\n"
	    "                            and the clients' shuffling [default: %" PRIu64 "];\n"
	    "                            with --dp central and no --seed, the DP noise is\n"
	    "                            keyed from the OS random source (unguessable);\n"
	    "                            an explicit --seed makes it replayable, so anyone\n"
	    "                            who knows the seed can remove it\n"
	    "\n"
	    "Evaluation and output:\n"
	    "      --data-dir DIR        folder with t10k-images-idx3-ubyte and\n"
	    "                            t10k-labels-idx1-ubyte (scripts/setup.sh fetches\n"
	    "                            them) [default: " DEFAULT_DATA_DIR "]\n"
	    "      --metrics FILE        write one JSON object per round to FILE (JSON\n"
	    "                            lines; '-' for stdout); FILE is truncated\n"
	    "\n"
	    "Crash recovery:\n"
	    "      --state-dir DIR       after every round, save the whole server state\n"
	    "                            atomically to DIR/" SRV_CKPT_FILE " (the one before is\n"
	    "                            kept as " SRV_CKPT_PREV "), and each new client's id\n"
	    "                            to DIR/" SRV_CKPT_CLIENTS "; DIR is created if missing.\n"
	    "                            Refuses to start when DIR already holds a run's\n"
	    "                            state, unless --resume is given\n"
	    "      --resume              continue from the checkpoint in --state-dir (or the\n"
	    "                            previous one if it is damaged): a round cut short\n"
	    "                            runs again from its start; start the server with\n"
	    "                            the same flags. With no checkpoint yet, start at\n"
	    "                            round 1\n"
	    "\n"
	    "Client identity (PROTOCOL.md section 16; without these two flags every\n"
	    "client is admitted and nothing is signed):\n"
	    "      --allowlist FILE      admit the clients whose public key is in FILE: one\n"
	    "                            key per line, 64 hex digits (what shoal-client\n"
	    "                            --show-key prints); '#' starts a comment\n"
	    "      --enroll-tokens FILE  also admit a client that presents one of the\n"
	    "                            tokens in FILE (shoal-client --enroll-token): one\n"
	    "                            per line, 16..64 characters of A-Z a-z 0-9 . _ ~\n"
	    "                            + / = - (e.g. from 'openssl rand -hex 16'). A\n"
	    "                            token works once; the key that used it stays\n"
	    "                            admitted (across restarts with --state-dir)\n"
	    "With either flag each client signs every request with its Ed25519 key over\n"
	    "a nonce from this server: an unlisted key, a replayed or a forged request is\n"
	    "refused, and each refusal is logged with its reason.\n"
	    "\n"
	    "  -q, --quiet               print only errors on stderr (no progress lines)\n"
	    "  -v, --verbose             print debug messages on stderr\n"
	    "  -h, --help                show this help and exit\n"
	    "  -V, --version             show the version and exit\n"
	    "\n"
	    "A summary line (rounds, final accuracy, bytes) goes to stdout at the end, or\n"
	    "to stderr when --metrics is '-'. SIGINT or SIGTERM stops the server cleanly:\n"
	    "waiting clients are released and the summary printed; a second signal kills\n"
	    "it at once.\n"
	    "\n"
	    "Exit status:\n"
	    "  0    all rounds ran\n"
	    "  1    runtime error (test set missing, address in use, out of memory, ...)\n"
	    "  2    usage error (bad flag or value)\n"
	    "  130  stopped by SIGINT (128 + signal number)\n"
	    "  143  stopped by SIGTERM (128 + signal number)\n"
	    "\n"
	    "Example: 20 rounds of 10 out of at least 10 clients, metrics to run.jsonl:\n"
	    "  " PROG " --listen tcp://0.0.0.0:7000 --model logreg --rounds 20 \\\n"
	    "      --clients-per-round 10 --min-clients 10 --metrics run.jsonl\n"
	    "and on each client machine (i = 0..9, same --split and --seed everywhere):\n"
	    "  shoal-client --connect tcp://SERVER:7000 --model logreg --partition i/10\n"
	    "Over TLS with client certificates (docs/raspberry-pi.md shows how to make them):\n"
	    "  " PROG " --listen tls+tcp://0.0.0.0:7000 --tls-cert server.crt \\\n"
	    "      --tls-key server.key --tls-ca ca.crt ...\n"
	    "  shoal-client --connect tls+tcp://SERVER:7000 --tls-ca ca.crt \\\n"
	    "      --tls-cert client.crt --tls-key client.key ...\n",
	    d.max_clients, d.max_message, FD_RESERVE, DEFAULT_RATE, DEFAULT_BURST,
	    d.hold_ms, DEFAULT_LINGER_MS,
	    d.rounds, d.clients_per_round, d.min_clients, d.min_reports,
	    d.round_timeout_ms / 1000.0,
	    ml_model_names(), d.model,
	    MSG_EPOCHS_MAX, d.epochs, MSG_BATCH_MAX, d.batch, (double)d.lr, d.seed);
	fputc('\n', f);
	srv_flag_help(f);
}

enum {
	OPT_LISTEN = 256, OPT_ROUNDS, OPT_K, OPT_M, OPT_MIN_REPORTS, OPT_MODEL,
	OPT_EPOCHS, OPT_BATCH, OPT_LR, OPT_TIMEOUT, OPT_HOLD, OPT_MAX_CLIENTS,
	OPT_MAX_MESSAGE, OPT_DATA_DIR, OPT_METRICS, OPT_SEED, OPT_LINGER, OPT_STATE_DIR,
	OPT_RESUME, OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_CA, OPT_RATE_LIMIT, OPT_MAX_CONNS,
};

enum { OPT_ALLOWLIST = 400, OPT_ENROLL_TOKENS };

static const struct option long_options[] = {
	{"listen", required_argument, NULL, OPT_LISTEN},
	{"rounds", required_argument, NULL, OPT_ROUNDS},
	{"clients-per-round", required_argument, NULL, OPT_K},
	{"min-clients", required_argument, NULL, OPT_M},
	{"min-reports", required_argument, NULL, OPT_MIN_REPORTS},
	{"model", required_argument, NULL, OPT_MODEL},
	{"epochs", required_argument, NULL, OPT_EPOCHS},
	{"batch", required_argument, NULL, OPT_BATCH},
	{"lr", required_argument, NULL, OPT_LR},
	{"round-timeout", required_argument, NULL, OPT_TIMEOUT},
	{"hold", required_argument, NULL, OPT_HOLD},
	{"max-clients", required_argument, NULL, OPT_MAX_CLIENTS},
	{"max-message", required_argument, NULL, OPT_MAX_MESSAGE},
	{"data-dir", required_argument, NULL, OPT_DATA_DIR},
	{"metrics", required_argument, NULL, OPT_METRICS},
	{"seed", required_argument, NULL, OPT_SEED},
	{"linger", required_argument, NULL, OPT_LINGER},
	{"state-dir", required_argument, NULL, OPT_STATE_DIR},
	{"allowlist", required_argument, NULL, OPT_ALLOWLIST},
	{"enroll-tokens", required_argument, NULL, OPT_ENROLL_TOKENS},
	{"resume", no_argument, NULL, OPT_RESUME},
	{"tls-cert", required_argument, NULL, OPT_TLS_CERT},
	{"tls-key", required_argument, NULL, OPT_TLS_KEY},
	{"tls-ca", required_argument, NULL, OPT_TLS_CA},
	{"rate-limit", required_argument, NULL, OPT_RATE_LIMIT},
	{"max-connections", required_argument, NULL, OPT_MAX_CONNS},
	{"quiet", no_argument, NULL, 'q'},
	{"verbose", no_argument, NULL, 'v'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, 'V'},
	{NULL, 0, NULL, 0},
};

/* Returns -1 to go on, else an exit status. */
static int
parse_args(int argc, char **argv, options *o)
{
	bool quiet = false, verbose = false;
	uint64_t u64;
	double d;
	size_t dim;
	int c;

	memset(o, 0, sizeof *o);
	srv_config_defaults(&o->cfg);
	o->data_dir = DEFAULT_DATA_DIR;
	o->linger_ms = DEFAULT_LINGER_MS;
	o->rate = DEFAULT_RATE;
	o->burst = DEFAULT_BURST;

	enum { NOWN = sizeof long_options / sizeof long_options[0] - 1 };
	struct option all[NOWN + SRV_FLAG_COUNT + 1];
	srv_flag_merge(all, long_options, NOWN);
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":qvhV", all, NULL)) != -1) {
		const char *a = optarg;

		switch (c) {
		case OPT_LISTEN:
			if (o->n_listen == MAX_LISTEN)
				return cli_usage_error(PROG, "at most %d --listen URLs", MAX_LISTEN);
			if (strstr(a, "://") == NULL)
				return cli_usage_error(PROG, "--listen '%s' is not a URL; use e.g. "
				                   "tcp://0.0.0.0:7000 or ipc:///tmp/shoal.sock", a);
			o->listen[o->n_listen++] = a;
			break;
		case OPT_ROUNDS:
			if (!cli_parse_u32(a, 1, UINT32_MAX, &o->cfg.rounds))
				return cli_usage_error(PROG, "--rounds '%s': expected a whole number >= 1", a);
			break;
		case OPT_K:
			if (!cli_parse_u32(a, 1, UINT32_MAX, &o->cfg.clients_per_round))
				return cli_usage_error(PROG, "--clients-per-round '%s': expected a whole number >= 1", a);
			break;
		case OPT_M:
			if (!cli_parse_u32(a, 1, UINT32_MAX, &o->cfg.min_clients))
				return cli_usage_error(PROG, "--min-clients '%s': expected a whole number >= 1", a);
			break;
		case OPT_MIN_REPORTS:
			if (!cli_parse_u32(a, 1, UINT32_MAX, &o->cfg.min_reports))
				return cli_usage_error(PROG, "--min-reports '%s': expected a whole number >= 1", a);
			break;
		case OPT_MODEL:
			if (ml_model_dim_of(a) == 0)
				return cli_usage_error(PROG, "--model '%s': unknown model; choose one of: %s",
				                   a, ml_model_names());
			o->cfg.model = a;
			break;
		case OPT_EPOCHS:
			if (!cli_parse_u32(a, 1, MSG_EPOCHS_MAX, &o->cfg.epochs))
				return cli_usage_error(PROG, "--epochs '%s': expected a whole number in 1..%u",
				                   a, MSG_EPOCHS_MAX);
			break;
		case OPT_BATCH:
			if (!cli_parse_u32(a, 1, MSG_BATCH_MAX, &o->cfg.batch))
				return cli_usage_error(PROG, "--batch '%s': expected a whole number in 1..%u",
				                   a, MSG_BATCH_MAX);
			break;
		case OPT_LR:
			if (!parse_pos_double(a, 1e6, &d) || !isfinite((float)d) || (float)d <= 0.0f)
				return cli_usage_error(PROG, "--lr '%s': expected a number > 0, e.g. 0.05", a);
			o->cfg.lr = (float)d;
			break;
		case OPT_TIMEOUT:
			if (!parse_pos_double(a, MAX_TIMEOUT_S, &d) || d * 1000.0 < 1.0)
				return cli_usage_error(PROG, "--round-timeout '%s': expected seconds in "
				                   "0.001..%.0f, e.g. 60 or 2.5", a, MAX_TIMEOUT_S);
			o->cfg.round_timeout_ms = (uint32_t)llround(d * 1000.0);
			break;
		case OPT_HOLD:
			if (!cli_parse_u32(a, 0, MAX_HOLD_MS, &o->cfg.hold_ms))
				return cli_usage_error(PROG, "--hold '%s': expected milliseconds in 0..%u",
				                   a, MAX_HOLD_MS);
			break;
		case OPT_MAX_CLIENTS:
			if (!cli_parse_u32(a, 1, UINT32_MAX, &o->cfg.max_clients))
				return cli_usage_error(PROG, "--max-clients '%s': expected a whole number >= 1", a);
			break;
		case OPT_MAX_MESSAGE:
			if (!parse_bytes(a, 1, SIZE_MAX < UINT64_MAX ? SIZE_MAX : UINT64_MAX, &u64))
				return cli_usage_error(PROG, "--max-message '%s': expected bytes, e.g. 67108864 "
				                   "or 64M", a);
			o->cfg.max_message = (size_t)u64;
			break;
		case OPT_DATA_DIR:
			if (*a == '\0')
				return cli_usage_error(PROG, "--data-dir must not be empty");
			o->data_dir = a;
			break;
		case OPT_METRICS:
			if (*a == '\0')
				return cli_usage_error(PROG, "--metrics must name a file, or '-' for stdout");
			o->metrics = a;
			break;
		case OPT_SEED:
			if (!cli_parse_u64(a, 0, UINT64_MAX, &o->cfg.seed))
				return cli_usage_error(PROG, "--seed '%s': expected a whole number in 0..%" PRIu64,
				                   a, UINT64_MAX);
			o->seed_given = true;
			break;
		case OPT_LINGER:
			if (!cli_parse_u32(a, 0, MAX_LINGER_MS, &o->linger_ms))
				return cli_usage_error(PROG, "--linger '%s': expected milliseconds in 0..%u",
				                   a, MAX_LINGER_MS);
			break;
		case OPT_STATE_DIR:
			if (*a == '\0' || strlen(a) > 3000)
				return cli_usage_error(PROG, "--state-dir must name a folder");
			o->state_dir = a;
			break;
		case OPT_ALLOWLIST:
		case OPT_ENROLL_TOKENS:
			if (*a == '\0')
				return cli_usage_error(PROG, "%s must name a file", argv[optind - 1]);
			*(c == OPT_ALLOWLIST ? &o->allowlist : &o->tokens) = a;
			break;
		case OPT_RESUME:
			o->resume = true;
			break;
		case OPT_TLS_CERT:
		case OPT_TLS_KEY:
		case OPT_TLS_CA:
			if (*a == '\0')
				return cli_usage_error(PROG, "%s must name a PEM file", argv[optind - 1]);
			*(c == OPT_TLS_CERT ? &o->tls.cert : c == OPT_TLS_KEY ? &o->tls.key
			                                                     : &o->tls.ca) = a;
			break;
		case OPT_RATE_LIMIT:
			if (!parse_rate(a, &o->rate, &o->burst))
				return cli_usage_error(PROG, "--rate-limit '%s': expected N/s or N/s:BURST "
				                   "(requests a second per connection, e.g. 100/s:200), "
				                   "or off", a);
			break;
		case OPT_MAX_CONNS:
			if (!cli_parse_u32(a, 1, UINT32_MAX, &o->max_conns))
				return cli_usage_error(PROG, "--max-connections '%s': expected a whole number "
				                   ">= 1", a);
			break;
		case 'q':
			quiet = true;
			break;
		case 'v':
			verbose = true;
			break;
		case 'h':
			print_help(stdout);
			return EXIT_DONE;
		case 'V':
			printf(PROG " %s (protocol %u)\n", SHOAL_VERSION, MSG_VERSION);
			return EXIT_DONE;
		case ':':
			return cli_usage_error(PROG, "option '%s' needs a value", argv[optind - 1]);
		default: {
			int r = c >= SRV_FLAG_BASE ? srv_flag_apply(PROG, c, a, &o->cfg) : 1;
			if (r == 0)
				break;
			if (r < 0)
				return EXIT_USAGE; /* srv_flag_apply said why */
			if (optopt != 0)
				return cli_usage_error(PROG, "unknown option '-%c'", optopt);
			return cli_usage_error(PROG, "unknown option '%s'", argv[optind - 1]);
		}
		}
	}
	if (optind < argc)
		return cli_usage_error(PROG, "unexpected argument '%s' (all settings are --flags)",
		                   argv[optind]);
	if (quiet && verbose)
		return cli_usage_error(PROG, "--quiet and --verbose contradict each other; pick one");
	o->verbosity = quiet ? -1 : verbose ? 1 : 0;
	if (o->resume && o->state_dir == NULL)
		return cli_usage_error(PROG, "--resume continues the checkpoint in --state-dir DIR: "
		                   "give --state-dir too");
	if (o->n_listen == 0)
		o->listen[o->n_listen++] = DEFAULT_LISTEN;
	bool any_tls = false;
	for (size_t i = 0; i < o->n_listen; i++)
		any_tls |= tp_url_is_tls(o->listen[i]);
	if (any_tls && (o->tls.cert == NULL || o->tls.key == NULL))
		return cli_usage_error(PROG, "--listen tls+tcp://... needs this server's certificate "
		                   "and its key: --tls-cert FILE --tls-key FILE");
	if (!any_tls && (o->tls.cert != NULL || o->tls.key != NULL || o->tls.ca != NULL))
		return cli_usage_error(PROG, "--tls-cert, --tls-key and --tls-ca are for tls+tcp:// "
		                   "URLs, and no --listen URL is one (e.g. --listen "
		                   "tls+tcp://0.0.0.0:7000)");

	/* Cross-flag checks. */
	if (o->cfg.async_k > 0 && o->state_dir != NULL)
		return cli_usage_error(PROG, "--async cannot be combined with --state-dir yet: a "
		                   "checkpoint would not hold the update buffer and the tasks in "
		                   "flight; run asynchronously without --state-dir, or synchronously "
		                   "with it");
	if (o->cfg.min_reports > o->cfg.clients_per_round)
		return cli_usage_error(PROG, "--min-reports %" PRIu32 " exceeds --clients-per-round %" PRIu32
		                   ": a round can never collect more updates than it selects",
		                   o->cfg.min_reports, o->cfg.clients_per_round);
	if (o->cfg.min_clients > o->cfg.max_clients)
		return cli_usage_error(PROG, "--min-clients %" PRIu32 " exceeds --max-clients %" PRIu32
		                   ": no round could ever start; raise --max-clients",
		                   o->cfg.min_clients, o->cfg.max_clients);
	if (o->cfg.clients_per_round > o->cfg.max_clients)
		return cli_usage_error(PROG, "--clients-per-round %" PRIu32 " exceeds --max-clients %" PRIu32
		                   "; raise --max-clients or lower --clients-per-round",
		                   o->cfg.clients_per_round, o->cfg.max_clients);
	dim = ml_model_dim_of(o->cfg.model);
	if (dim == 0)
		return cli_usage_error(PROG, "model '%s' is not built in; choose one of: %s",
		                   o->cfg.model, ml_model_names());
	/* A TASK and an UPDATE carry the whole model plus a few header bytes. */
	if (o->cfg.max_message / 4 < dim + 256)
		return cli_usage_error(PROG, "--max-message %zu is too small for model '%s' "
		                   "(%zu parameters): use at least %zu",
		                   o->cfg.max_message, o->cfg.model, dim, (dim + 256) * 4);
	return -1;
}

/* ---- totals for the closing summary line ------------------------------ */

typedef struct summary {
	uint32_t rounds, completed, abandoned;
	double accuracy, loss; /* after the last round */
	double epsilon;        /* DP: spent after the last round, NaN if off */
	uint64_t bytes_up, bytes_down;
	/* --state-dir */
	const char *state_dir;
	bool have_saved;      /* DIR/server.ckpt holds saved_round */
	uint32_t saved_round;
	srv_ckpt_log log;     /* DIR/server.clients, fd -1 if none */
	uint32_t log_failed;  /* registry size whose append failed; 0: none */
	srv_ckpt_log keylog;  /* DIR/server.keys, fd -1 if none */
	uint32_t *keys_due;   /* ids whose key binding is not logged yet */
	uint32_t n_keys_due, cap_keys_due;
} summary;

static void
on_round(void *user, const srv_round_stats *st)
{
	summary *s = user;

	s->rounds++;
	if (st->abandoned)
		s->abandoned++;
	else
		s->completed++;
	s->accuracy = st->accuracy;
	s->loss = st->loss;
	s->epsilon = st->epsilon;
	s->bytes_up += st->bytes_up;
	s->bytes_down += st->bytes_down;
}

/* New registrations to the registry log (ckpt.h). A failed append is
 * retried when more clients register or a checkpoint is saved. */
static void
sync_registry(summary *s, srv_core *core)
{
	uint32_t n = srv_core_registered(core), k = n - s->log.n;
	srv_ckpt_client *v;

	if (s->log.fd < 0 || n <= s->log.n || n == s->log_failed)
		return;
	if ((v = malloc(k * sizeof *v)) == NULL)
		return;
	for (uint32_t i = 0; i < k; i++)
		srv_core_client(core, s->log.n + i + 1, &v[i]);
	s->log_failed = srv_ckpt_log_append(&s->log, v, k) == SHOAL_OK ? 0 : n;
	free(v);
}

/* New key bindings (client identity) to the key log, each after its
 * client's record in the registry log; one that cannot be written yet
 * (that record failed) waits, and the next checkpoint holds it anyway. */
static void
sync_keys(summary *s, srv_core *core)
{
	srv_ckpt_key k;
	uint32_t id, kept = 0;

	while (srv_core_take_binding(core, &id)) {
		if (s->keylog.fd < 0)
			continue;
		if (s->n_keys_due == s->cap_keys_due) {
			uint32_t cap = s->cap_keys_due ? 2 * s->cap_keys_due : 16;
			uint32_t *v = realloc(s->keys_due, cap * sizeof *v);
			if (v == NULL)
				continue; /* the next checkpoint holds it */
			s->keys_due = v;
			s->cap_keys_due = cap;
		}
		s->keys_due[s->n_keys_due++] = id;
	}
	for (uint32_t i = 0; i < s->n_keys_due; i++) {
		id = s->keys_due[i];
		if (id > s->log.n || !srv_core_client_key(core, id, &k) ||
		    srv_ckpt_keylog_append(&s->keylog, &k, 1) != SHOAL_OK)
			s->keys_due[kept++] = id;
	}
	s->n_keys_due = kept;
}

/* Before any reply leaves: new clients to the registry log (and their keys
 * to the key log), a new checkpoint to DIR/server.ckpt. A failed save
 * (full disk, ...) keeps the previous file and training goes on; the next
 * round tries again. */
static void
before_send(void *user, srv_core *core)
{
	summary *s = user;
	uint8_t *buf;
	size_t len;
	uint32_t round;

	if (s->state_dir == NULL) {
		while (srv_core_take_binding(core, &round))
			; /* nothing keeps them */
		return;
	}
	sync_registry(s, core);
	sync_keys(s, core);
	if (!srv_core_take_checkpoint(core, &buf, &len, &round))
		return;
	if (srv_ckpt_write(s->state_dir, buf, len) == SHOAL_OK) {
		s->log_failed = 0;
		log_debug(PROG ": checkpoint after round %" PRIu32 " saved (%zu bytes)", round, len);
		s->have_saved = true;
		s->saved_round = round;
	} else if (s->have_saved) {
		log_error(PROG ": the checkpoint after round %" PRIu32 " was not saved; %s/%s still "
		          "holds the state after round %" PRIu32 ", and a restart with --resume would "
		          "run the rounds since again; training goes on", round, s->state_dir,
		          SRV_CKPT_FILE, s->saved_round);
	} else {
		log_error(PROG ": the checkpoint after round %" PRIu32 " was not saved and there is "
		          "none before it; training goes on", round);
	}
	free(buf);
}

/* The registry log: clients registered after the checkpoint join the
 * restored registry (their ids stay theirs); a log that disagrees with the
 * checkpoint is refused. */
static bool
open_registry(const options *o, summary *s, srv_core *core)
{
	srv_ckpt_client *cl, k;
	uint32_t n, have = srv_core_registered(core);
	bool ok = true;

	if (srv_ckpt_log_open(o->state_dir, &s->log, &cl, &n) != SHOAL_OK)
		return false;
	for (uint32_t i = 0; i < n && i < have && ok; i++) {
		srv_core_client(core, i + 1, &k);
		if (strcmp(k.name, cl[i].name) != 0) {
			log_error(PROG ": %s names client %" PRIu32 " '%s', the checkpoint '%s': they "
			          "come from different runs", s->log.path, i + 1, cl[i].name, k.name);
			ok = false;
		}
	}
	if (ok && n > have) {
		ok = srv_core_restore_clients(core, cl + have, n - have) == SHOAL_OK;
		if (ok)
			log_info(PROG ": restored %" PRIu32 " client(s) registered since the last "
			         "checkpoint from %s", n - have, s->log.path);
	}
	free(cl);
	if (ok)
		sync_registry(s, core); /* a log shorter than the checkpoint's registry */
	return ok;
}

/* The key log (client identity): bindings made after the checkpoint are
 * restored; one that contradicts it (another key for a client, or a key
 * for two) is refused; bindings the checkpoint holds and the log lacks
 * are appended. */
static bool
open_keys(const options *o, summary *s, srv_core *core)
{
	srv_ckpt_key *k, have;
	uint32_t n, reg = srv_core_registered(core), restored = 0;
	bool ok = true, *logged;

	if (srv_ckpt_keylog_open(o->state_dir, &s->keylog, &k, &n) != SHOAL_OK)
		return false;
	if ((logged = calloc((size_t)reg + 1, sizeof *logged)) == NULL) {
		free(k);
		return false;
	}
	for (uint32_t i = 0; i < n && ok; i++) {
		bool had = srv_core_client_key(core, k[i].id, &have);
		if (srv_core_restore_key(core, &k[i]) != SHOAL_OK) {
			log_error(PROG ": %s does not match the registry (see above): it comes from "
			          "another run", s->keylog.path);
			ok = false;
			break;
		}
		restored += !had;
		logged[k[i].id] = true;
	}
	if (ok && restored > 0)
		log_info(PROG ": restored the keys of %" PRIu32 " client(s) from %s", restored,
		         s->keylog.path);
	for (uint32_t id = 1; ok && id <= reg; id++)
		if (!logged[id] && srv_core_client_key(core, id, &have))
			(void)srv_ckpt_keylog_append(&s->keylog, &have, 1);
	free(logged);
	free(k);
	return ok;
}

/* --allowlist and --enroll-tokens: the whole file into *text. */
static bool
read_small_file(const char *flag, const char *path, char **text, size_t *len)
{
	FILE *f = fopen(path, "rb");
	long n;

	*text = NULL;
	if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || n > (64L << 20) ||
	    fseek(f, 0, SEEK_SET) != 0 || (*text = malloc((size_t)n + 1)) == NULL ||
	    fread(*text, 1, (size_t)n, f) != (size_t)n) {
		log_error(PROG ": cannot read %s %s: %s", flag, path,
		          f == NULL || errno != 0 ? strerror(errno) : "too large");
		if (f != NULL)
			fclose(f);
		free(*text);
		*text = NULL;
		return false;
	}
	fclose(f);
	(*text)[n] = '\0';
	*len = (size_t)n;
	return true;
}

/* Loads the allowlist and the tokens into o->cfg (arrays malloc'd: the
 * caller frees them after srv_core_new). */
static bool
load_identity(options *o)
{
	char why[256], *text;
	size_t len;
	shoal_err e;

	if (o->allowlist == NULL && o->tokens == NULL)
		return true;
	o->cfg.identity = true;
	if (o->allowlist != NULL) {
		uint8_t (*keys)[ID_PK_BYTES];
		if (!read_small_file("--allowlist", o->allowlist, &text, &len))
			return false;
		e = id_allowlist_parse(text, len, &keys, &o->cfg.n_allowlist, why, sizeof why);
		free(text);
		if (e != SHOAL_OK) {
			log_error(PROG ": --allowlist %s: %s", o->allowlist,
			          e == SHOAL_ENOMEM ? "out of memory" : why);
			return false;
		}
		o->cfg.allowlist = (const uint8_t(*)[32])keys;
		log_info(PROG ": admitting the %" PRIu32 " client key(s) of %s%s",
		         o->cfg.n_allowlist, o->allowlist,
		         o->tokens != NULL ? " and enrollment tokens" : "");
	}
	if (o->tokens != NULL) {
		uint8_t (*hashes)[ID_HASH_BYTES];
		if (!read_small_file("--enroll-tokens", o->tokens, &text, &len))
			return false;
		e = id_tokens_parse(text, len, &hashes, &o->cfg.n_tokens, why, sizeof why);
		sodium_memzero(text, len);
		free(text);
		if (e != SHOAL_OK) {
			log_error(PROG ": --enroll-tokens %s: %s", o->tokens,
			          e == SHOAL_ENOMEM ? "out of memory" : why);
			return false;
		}
		o->cfg.tokens = (const uint8_t(*)[32])hashes;
		log_info(PROG ": %" PRIu32 " enrollment token(s) in %s", o->cfg.n_tokens, o->tokens);
		if (o->state_dir == NULL)
			log_warn(PROG ": --enroll-tokens without --state-dir: a restart forgets the "
			         "enrolled keys and which tokens were used");
	}
	if (o->cfg.n_allowlist == 0 && o->cfg.n_tokens == 0 && o->state_dir == NULL)
		log_warn(PROG ": the allowlist and the tokens are empty: no client can join");
	return true;
}

/* --state-dir: create it if needed; refuse an existing checkpoint without
 * --resume; with --resume load it into *ck (*have set). Returns false
 * after logging why the server cannot start. */
static bool
open_state(const options *o, srv_ckpt *ck, bool *have)
{
	char path[4096];
	struct stat st;
	bool found;

	*have = false;
	if (mkdir(o->state_dir, 0700) != 0 && errno != EEXIST) {
		log_error(PROG ": cannot create --state-dir %s: %s", o->state_dir, strerror(errno));
		return false;
	}
	if (stat(o->state_dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
	    access(o->state_dir, W_OK | X_OK) != 0) {
		log_error(PROG ": --state-dir %s is not a writable folder", o->state_dir);
		return false;
	}
	if (!o->resume) {
		if (!srv_ckpt_exists(o->state_dir))
			return true;
		log_error(PROG ": %s already holds the state of a run (%s, %s): pass --resume to "
		          "continue it, or use an empty --state-dir to start a new one", o->state_dir,
		          SRV_CKPT_FILE, SRV_CKPT_CLIENTS);
		return false;
	}
	if (srv_ckpt_load(o->state_dir, ck, &found, path, sizeof path) == SHOAL_OK) {
		log_info(PROG ": resuming from %s (after round %" PRIu32 ")", path, ck->round);
		*have = true;
		return true;
	}
	if (!found) {
		log_info(PROG ": no checkpoint in %s yet; starting at round 1", o->state_dir);
		return true;
	}
	log_error(PROG ": no usable checkpoint in %s (see above); move the files away to start "
	          "a new run", o->state_dir);
	return false;
}

/* ---- connections ----------------------------------------------------- */

/* Raise the soft open-file limit to the hard one (each connection is a file
 * descriptor; 1024, a common soft default, is about 960 clients), and
 * return the default --max-connections: the limit less FD_RESERVE. */
static uint32_t
conn_limit(void)
{
	struct rlimit rl;
	rlim_t n;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 0;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t want = rl.rlim_max;
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
		else
			log_debug(PROG ": open-file limit raised to %llu", (unsigned long long)want);
	}
	n = rl.rlim_cur == RLIM_INFINITY ? UINT32_MAX : rl.rlim_cur;
	if (n <= 2 * FD_RESERVE)
		return (uint32_t)(n / 2);
	return n - FD_RESERVE > UINT32_MAX ? UINT32_MAX : (uint32_t)(n - FD_RESERVE);
}

/* ---- main ------------------------------------------------------------ */

static const options *g_opts; /* for on_listening's log line */

static void
on_listening(void *user)
{
	const options *o = g_opts;
	(void)user;

	log_info(PROG ": %s, %" PRIu32 " rounds of %" PRIu32 " clients (start at %" PRIu32
	         " waiting, aggregate with >= %" PRIu32 " updates)",
	         o->cfg.model, o->cfg.rounds, o->cfg.clients_per_round, o->cfg.min_clients,
	         o->cfg.min_reports);
	if (o->tls.cert != NULL)
		log_info(PROG ": TLS with %s; %s", o->tls.cert,
		         o->tls.ca != NULL ? "clients must present a certificate signed by --tls-ca"
		                           : "clients need no certificate (no --tls-ca)");
	if (o->rate > 0)
		log_debug(PROG ": limits: %g requests/s per connection (burst %g), %" PRIu32
		          " connections", o->rate, o->burst, o->max_conns);
}

int
main(int argc, char **argv)
{
	options o;
	summary sum;
	ml_dataset test;
	srv_core *core = NULL;
	srv_serve_opts so;
	srv_ckpt ck;
	bool resumed = false;
	FILE *user_metrics = NULL, *report;
	shoal_err err;
	int rc;

	rc = parse_args(argc, argv, &o);
	if (rc >= 0)
		return rc;
	log_set_level(o.verbosity < 0 ? LOG_ERROR : o.verbosity > 0 ? LOG_DEBUG : LOG_INFO);
	cli_stop_on_signals(on_signal);
	memset(&sum, 0, sizeof sum);
	sum.log.fd = -1;
	sum.keylog.fd = -1;
	memset(&test, 0, sizeof test);
	memset(&ck, 0, sizeof ck);
	rc = EXIT_RUNTIME;
	/* Certificates first: a bad file should not wait for the test set. */
	if (o.tls.cert != NULL && tp_tls_check(&o.tls, true) != SHOAL_OK) {
		log_error(PROG ": cannot serve tls+tcp:// with these files (see above)");
		goto out;
	}
	for (size_t i = 0; o.tls.cert != NULL && i < o.n_listen; i++)
		if (strncmp(o.listen[i], "tcp", 3) == 0)
			log_warn(PROG ": %s is plain TCP next to TLS: what its clients send is not "
			         "encrypted", o.listen[i]);
	{
		uint32_t fd_conns = conn_limit();
		if (o.max_conns == 0)
			o.max_conns = fd_conns;
		else if (fd_conns > 0 && o.max_conns > fd_conns)
			log_warn(PROG ": --max-connections %" PRIu32 " is above what the open-file limit "
			         "allows (about %" PRIu32 "); raise it (ulimit -n) or connections will "
			         "fail", o.max_conns, fd_conns);
		if (o.max_conns < o.cfg.min_clients)
			log_warn(PROG ": at most %" PRIu32 " connections (--max-connections or the "
			         "open-file limit), fewer than --min-clients %" PRIu32 ": no round may "
			         "start", o.max_conns, o.cfg.min_clients);
	}
	if (o.state_dir != NULL && !open_state(&o, &ck, &resumed))
		goto out;

	if (o.metrics != NULL) {
		if (strcmp(o.metrics, "-") == 0) {
			user_metrics = stdout;
		} else if ((user_metrics = fopen(o.metrics, resumed ? "a" : "w")) == NULL) {
			log_error(PROG ": cannot write metrics file '%s': %s", o.metrics,
			          strerror(errno));
			goto out;
		}
	}

	err = ml_mnist_load(o.data_dir, "t10k", &test);
	if (err != SHOAL_OK) {
		log_error(PROG ": cannot load the MNIST test set from '%s': %s", o.data_dir,
		          shoal_strerror(err));
		goto out;
	}
	log_debug(PROG ": loaded %zu test examples from %s", test.n, o.data_dir);
	o.cfg.test = &test;
	if (o.cfg.min_reports > o.cfg.min_clients)
		log_warn(PROG ": --min-reports %" PRIu32 " > --min-clients %" PRIu32 ": a round "
		         "that starts with fewer than %" PRIu32 " clients will be abandoned",
		         o.cfg.min_reports, o.cfg.min_clients, o.cfg.min_reports);

	/* DP noise must not be predictable from a seed anyone might know: key
	 * it from the OS unless the operator asked for a replayable run. (In
	 * distributed DP the clients draw the noise, from the OS.) */
	uint8_t *noise_key = NULL;
	if (o.cfg.dp == SRV_DP_CENTRAL && !o.seed_given) {
		if (sodium_init() < 0 || (noise_key = sodium_malloc(SRV_DP_KEY_BYTES)) == NULL) {
			log_error(PROG ": cannot set up the DP noise key");
			goto out;
		}
		randombytes_buf(noise_key, SRV_DP_KEY_BYTES);
		o.cfg.dp_noise_key = noise_key;
	} else if (o.cfg.dp == SRV_DP_CENTRAL) {
		log_warn(PROG ": DP noise derived from --seed %" PRIu64 ": anyone who knows the seed "
		         "can remove it; leave --seed out in deployment", o.cfg.seed);
	}
	/* Client identity: the nonces must never repeat across restarts, so
	 * they are keyed from the OS whatever --seed says. */
	uint8_t *nonce_key = NULL;
	if (!load_identity(&o))
		goto out;
	if (o.cfg.identity) {
		if (sodium_init() < 0 || (nonce_key = sodium_malloc(SRV_NONCE_KEY_BYTES)) == NULL) {
			log_error(PROG ": cannot set up the nonce key");
			goto out;
		}
		randombytes_buf(nonce_key, SRV_NONCE_KEY_BYTES);
		o.cfg.nonce_key = nonce_key;
	}
	err = srv_core_new(&o.cfg, &core);
	if (noise_key != NULL)
		sodium_free(noise_key); /* wipes; the core keeps its own copy */
	if (nonce_key != NULL)
		sodium_free(nonce_key);
	o.cfg.dp_noise_key = NULL;
	o.cfg.nonce_key = NULL;
	if (err != SHOAL_OK) {
		log_error(PROG ": cannot create the server: %s", shoal_strerror(err));
		goto out;
	}
	if (resumed) {
		if (srv_core_restore(core, &ck) != SHOAL_OK) {
			log_error(PROG ": cannot resume from the checkpoint in %s: start with the flags "
			          "of the run that wrote it", o.state_dir);
			goto out;
		}
		sum.have_saved = true;
		sum.saved_round = ck.round;
	}
	srv_ckpt_fini(&ck);
	if (o.state_dir != NULL) {
		if (!open_registry(&o, &sum, core) || !open_keys(&o, &sum, core))
			goto out;
		srv_core_checkpoint_enable(core);
		sum.state_dir = o.state_dir;
	}

	err = SHOAL_ECLOSED;
	if (stop_signal == 0) {
		memset(&so, 0, sizeof so);
		so.listen = o.listen;
		so.n_listen = o.n_listen;
		so.max_message = o.cfg.max_message;
		so.metrics = user_metrics;
		so.progress = o.verbosity >= 0;
		so.stop = &stop_signal;
		so.linger_ms = o.linger_ms;
		so.on_listening = on_listening;
		so.on_round = on_round;
		so.before_send = before_send;
		so.user = &sum;
		so.tls = o.tls.cert != NULL ? &o.tls : NULL;
		so.rate_limit = o.rate;
		so.rate_burst = o.burst;
		so.max_conns = o.max_conns;
		so.report_conns = true;
		g_opts = &o;
		err = srv_serve(core, &so);
	}
	if (err == SHOAL_OK) {
		rc = EXIT_DONE;
	} else if (err == SHOAL_ECLOSED && stop_signal != 0) {
		rc = 128 + stop_signal;
		log_info(PROG ": stopped by %s", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
	} else {
		log_error(PROG ": %s", shoal_strerror(err));
		goto out;
	}

	report = user_metrics == stdout ? stderr : stdout;
	fprintf(report, PROG ": %s rounds=%" PRIu32 " completed=%" PRIu32 " abandoned=%" PRIu32,
	        rc == EXIT_DONE ? "finished" : "stopped", sum.rounds, sum.completed,
	        sum.abandoned);
	if (sum.rounds > 0 && isfinite(sum.accuracy))
		fprintf(report, " accuracy=%.4f loss=%.4f", sum.accuracy, sum.loss);
	else
		fprintf(report, " accuracy=n/a");
	if (sum.rounds > 0 && !isnan(sum.epsilon))
		fprintf(report, " epsilon=%.4f delta=%g", sum.epsilon, o.cfg.delta);
	fprintf(report, " bytes_up=%" PRIu64 " bytes_down=%" PRIu64 " bytes_total=%" PRIu64 "\n",
	        sum.bytes_up, sum.bytes_down, sum.bytes_up + sum.bytes_down);
	fflush(report);

out:
	srv_ckpt_fini(&ck);
	srv_ckpt_log_close(&sum.log);
	srv_ckpt_log_close(&sum.keylog);
	free(sum.keys_due);
	free((void *)o.cfg.allowlist);
	free((void *)o.cfg.tokens);
	if (core != NULL)
		srv_core_free(core);
	ml_dataset_fini(&test);
	if (user_metrics != NULL && user_metrics != stdout && fclose(user_metrics) != 0 &&
	    rc == EXIT_DONE) {
		log_error(PROG ": writing metrics file '%s' failed: %s", o.metrics, strerror(errno));
		rc = EXIT_RUNTIME;
	}
	return rc;
}
