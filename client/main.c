/* main.c - shoal-client: a federated-learning client for the built-in MNIST
 * models. Loads the MNIST training set, keeps the examples of its partition
 * (every client of a federation computes the same partition from the same
 * --split and --seed and keeps its own part), and runs libshoal-client with
 * a train callback doing local minibatch SGD. Prints one stats line on
 * stdout at exit (tests parse it). */
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
#include <sys/stat.h>
#include <unistd.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "common/cli.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/transport.h"
#include "client/dump.h"
#include "client/state.h"
#include "common/codec.h"
#include "ml/ml.h"
#include "privacy/ident.h"
#include "shoal/client.h"
#include "shoal/err.h"

#ifndef SHOAL_VERSION
#define SHOAL_VERSION "0.1.0"
#endif

#define PROG "shoal-client"
#define DEFAULT_CONNECT "tcp://127.0.0.1:7000"
#define DEFAULT_DATA_DIR "data"
#define DEFAULT_SPLIT "iid"
#define DEFAULT_SEED 1u
#define DEFAULT_MODEL "logreg"
#define MAX_PARTITIONS 60000u       /* MNIST train has 60000 examples */
#define MAX_TRAIN_DELAY_MS 3600000u /* 1 hour */

/* EXIT_REFUSED: the server does not admit this client's identity (a
 * systemd unit can keep it from restarting: RestartPreventExitStatus=3). */
enum { EXIT_DONE = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_REFUSED = 3 };

/* The signal that asked us to stop (0: none); a second one kills. */
static volatile sig_atomic_t stop_signal;

static void
on_signal(int sig)
{
	stop_signal = sig;
}

/* "I/N" with 0 <= I < N <= MAX_PARTITIONS. */
static bool
parse_partition(const char *s, uint32_t *i, uint32_t *n)
{
	char buf[32];
	const char *slash = strchr(s, '/');
	size_t len;
	uint64_t a, b;

	if (slash == NULL || (len = (size_t)(slash - s)) == 0 || len >= sizeof buf)
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (!cli_parse_u64(buf, 0, MAX_PARTITIONS - 1, &a) ||
	    !cli_parse_u64(slash + 1, 1, MAX_PARTITIONS, &b) || a >= b)
		return false;
	*i = (uint32_t)a;
	*n = (uint32_t)b;
	return true;
}

static bool
valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > MSG_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x21 || s[i] > 0x7e)
			return false;
	return true;
}

typedef struct options {
	const char *url;
	const char *data_dir;
	const char *split;
	uint64_t seed;
	const char *model;
	const char *name;
	char name_buf[MSG_NAME_MAX + 1];
	uint32_t part, n_parts;
	uint32_t train_delay_ms;
	const char *compress;  /* encodings offered to the server */
	bool error_feedback;
	bool downlink_q8;
	const char *state_dir; /* residual persistence, or NULL */
	const char *dump_dir;  /* --dump-train, or NULL */
	const char *replay;    /* --replay FILE, or NULL */
	const char *enroll_token; /* --enroll-token, or NULL */
	bool show_key;         /* --show-key */
	const char *tls_ca, *tls_cert, *tls_key, *tls_server_name;
	int verbosity;
} options;

static void
print_help(FILE *f)
{
	fprintf(f,
	    "Usage: " PROG " --partition I/N [OPTION]...\n"
	    "Run a shoal federated-learning client: join the server, and whenever it\n"
	    "selects this client, train the global model with minibatch SGD on this\n"
	    "client's part of the MNIST training set and send the update back.\n"
	    "\n"
	    "Data:\n"
	    "      --partition I/N       use part I of N (0 <= I < N); required\n"
	    "      --split SPEC          how MNIST train is cut into N parts: iid, shards\n"
	    "                            (2 label-sorted shards per client) or\n"
	    "                            dirichlet:ALPHA (label skew, smaller ALPHA = more\n"
	    "                            skewed) [default: " DEFAULT_SPLIT "]\n"
	    "      --seed S              partition seed [default: %u]\n"
	    "                            every client of a federation must use the same\n"
	    "                            --split, --seed and N, or parts will overlap\n"
	    "      --data-dir DIR        folder with train-images-idx3-ubyte and\n"
	    "                            train-labels-idx1-ubyte (scripts/setup.sh fetches\n"
	    "                            them) [default: " DEFAULT_DATA_DIR "]\n"
	    "\n"
	    "Server:\n"
	    "      --connect URL         server address (tcp://HOST:PORT,\n"
	    "                            tls+tcp://HOST:PORT, ipc:///PATH); the client\n"
	    "                            keeps retrying until the server is up\n"
	    "                            [default: " DEFAULT_CONNECT "]\n"
	    "      --model NAME          model to train: %s; must match the server's\n"
	    "                            --model [default: " DEFAULT_MODEL "]\n"
	    "      --name NAME           stable client name, 1..%u printable characters\n"
	    "                            without spaces; a restarted client should keep\n"
	    "                            its name [default: HOSTNAME-I-of-N]\n"
	    "\n"
	    "TLS (tls+tcp:// URLs; PROTOCOL.md section 1.1):\n"
	    "      --tls-ca FILE         CA certificate(s) (PEM) that the server's\n"
	    "                            certificate must be signed by; required with\n"
	    "                            tls+tcp://\n"
	    "      --tls-server-name NAME\n"
	    "                            the name the server's certificate must carry\n"
	    "                            [default: the host of --connect]\n"
	    "      --tls-cert FILE       this client's certificate (PEM), for servers that\n"
	    "                            require one (shoal-server --tls-ca)\n"
	    "      --tls-key FILE        its private key (PEM, unencrypted)\n"
	    "\n"
	    "Compression (the server picks; PROTOCOL.md section 12):\n"
	    "      --compress SPEC       update encodings to offer: topk:RATIO or\n"
	    "                            randk:RATIO with ,q8 ,q4 or ,f32 values, 'any'\n"
	    "                            or 'none' (dense float32 only)\n"
	    "                            [default: topk:0.01,q8]\n"
	    "      --error-feedback on|off\n"
	    "                            keep what compression did not send and add it\n"
	    "                            to the next update (top-k; rand-k is unbiased\n"
	    "                            and never uses it) [default: on]\n"
	    "      --downlink q8|full    accept 8-bit model deltas [default: q8]\n"
	    "      --state-dir DIR       keep this client's state in DIR (created if\n"
	    "                            missing): its identity key in DIR/identity\n"
	    "                            (made on the first run, mode 0600) and the\n"
	    "                            error-feedback residual in DIR/residual (written\n"
	    "                            atomically after every accepted update), so a\n"
	    "                            restart keeps its identity and loses nothing\n"
	    "                            [default: none: a new key for every run]\n"
	    "\n"
	    "Identity (servers with --allowlist or --enroll-tokens; PROTOCOL.md 16):\n"
	    "      --show-key            print this client's public key (64 hex digits,\n"
	    "                            for the server's --allowlist file) and exit;\n"
	    "                            needs --state-dir, makes the key if missing\n"
	    "      --enroll-token TOKEN  a one-time enrollment token from the server's\n"
	    "                            operator: the server then admits this client's\n"
	    "                            key for good, so the token is needed only until\n"
	    "                            the first run got in (other local users can see\n"
	    "                            it in ps while it runs)\n"
	    "\n"
	    "Testing and output:\n"
	    "      --train-delay MS      sleep MS before each local training (to make\n"
	    "                            mid-round failures reproducible) [default: 0]\n"
	    "      --dump-train DIR      after each local training write DIR/round-R.train:\n"
	    "                            the task, the global model and the trained model\n"
	    "                            (client/dump.h) [default: none]\n"
	    "      --replay FILE         do not connect: train FILE's global model with its\n"
	    "                            task on this client's partition (same --partition,\n"
	    "                            --split, --seed, --model) and print how far the\n"
	    "                            result is from FILE's trained model\n"
	    "  -q, --quiet               print only errors on stderr\n"
	    "  -v, --verbose             print debug messages on stderr\n"
	    "  -h, --help                show this help and exit\n"
	    "  -V, --version             show the version and exit\n"
	    "\n"
	    "At exit one line goes to stdout:\n"
	    "  " PROG ": rounds_trained=R updates_acked=A updates_late=L\n"
	    "(R tasks trained, A updates the server accepted, L refused as too late).\n"
	    "SIGINT or SIGTERM stops the client; a second signal kills it at once.\n"
	    "\n"
	    "Exit status:\n"
	    "  0    the server said training is done\n"
	    "  1    runtime error (data missing, model mismatch with the server, ...)\n"
	    "  2    usage error (bad flag or value)\n"
	    "  3    the server refused this client's identity (key not admitted, token\n"
	    "       unknown or used, name registered with another key)\n"
	    "  130  stopped by SIGINT (128 + signal number)\n"
	    "  143  stopped by SIGTERM (128 + signal number)\n"
	    "\n"
	    "Example: client 3 of a 10-client federation with label-skewed data:\n"
	    "  " PROG " --connect tcp://10.0.0.2:7000 --model logreg --partition 3/10 \\\n"
	    "      --split dirichlet:0.5 --seed 7\n",
	    DEFAULT_SEED, ml_model_names(), MSG_NAME_MAX);
}

enum {
	OPT_CONNECT = 256, OPT_DATA_DIR, OPT_PARTITION, OPT_SPLIT, OPT_SEED, OPT_MODEL,
	OPT_NAME, OPT_TRAIN_DELAY, OPT_COMPRESS, OPT_EF, OPT_DOWNLINK, OPT_STATE_DIR,
	OPT_DUMP_TRAIN, OPT_REPLAY, OPT_TLS_CA, OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_NAME,
};

enum { OPT_ENROLL_TOKEN = 400, OPT_SHOW_KEY };

static const struct option long_options[] = {
	{"connect", required_argument, NULL, OPT_CONNECT},
	{"data-dir", required_argument, NULL, OPT_DATA_DIR},
	{"partition", required_argument, NULL, OPT_PARTITION},
	{"split", required_argument, NULL, OPT_SPLIT},
	{"seed", required_argument, NULL, OPT_SEED},
	{"model", required_argument, NULL, OPT_MODEL},
	{"name", required_argument, NULL, OPT_NAME},
	{"train-delay", required_argument, NULL, OPT_TRAIN_DELAY},
	{"compress", required_argument, NULL, OPT_COMPRESS},
	{"error-feedback", required_argument, NULL, OPT_EF},
	{"downlink", required_argument, NULL, OPT_DOWNLINK},
	{"state-dir", required_argument, NULL, OPT_STATE_DIR},
	{"enroll-token", required_argument, NULL, OPT_ENROLL_TOKEN},
	{"show-key", no_argument, NULL, OPT_SHOW_KEY},
	{"dump-train", required_argument, NULL, OPT_DUMP_TRAIN},
	{"replay", required_argument, NULL, OPT_REPLAY},
	{"tls-ca", required_argument, NULL, OPT_TLS_CA},
	{"tls-cert", required_argument, NULL, OPT_TLS_CERT},
	{"tls-key", required_argument, NULL, OPT_TLS_KEY},
	{"tls-server-name", required_argument, NULL, OPT_TLS_NAME},
	{"quiet", no_argument, NULL, 'q'},
	{"verbose", no_argument, NULL, 'v'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, 'V'},
	{NULL, 0, NULL, 0},
};

/* HOSTNAME-I-of-N, the hostname cut and cleaned so the name stays valid. */
static void
default_name(options *o)
{
	char host[256], suffix[32];
	size_t room, n;

	if (gethostname(host, sizeof host) != 0)
		strcpy(host, "client");
	host[sizeof host - 1] = '\0';
	for (char *p = host; *p != '\0'; p++)
		if (*p < 0x21 || *p > 0x7e)
			*p = '_';
	if (host[0] == '\0')
		strcpy(host, "client");
	snprintf(suffix, sizeof suffix, "-%" PRIu32 "-of-%" PRIu32, o->part, o->n_parts);
	room = MSG_NAME_MAX - strlen(suffix);
	n = strlen(host);
	if (n > room)
		n = room;
	memcpy(o->name_buf, host, n);
	strcpy(o->name_buf + n, suffix);
	o->name = o->name_buf;
}

/* Returns -1 to go on, else an exit status. */
static int
parse_args(int argc, char **argv, options *o)
{
	bool quiet = false, verbose = false, have_partition = false;
	uint64_t u64;
	int c;

	memset(o, 0, sizeof *o);
	o->url = DEFAULT_CONNECT;
	o->compress = "topk:0.01,q8";
	o->error_feedback = true;
	o->downlink_q8 = true;
	o->data_dir = DEFAULT_DATA_DIR;
	o->split = DEFAULT_SPLIT;
	o->seed = DEFAULT_SEED;
	o->model = DEFAULT_MODEL;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":qvhV", long_options, NULL)) != -1) {
		const char *a = optarg;

		switch (c) {
		case OPT_CONNECT:
			if (strstr(a, "://") == NULL)
				return cli_usage_error(PROG, "--connect '%s' is not a URL; use e.g. "
				                   "tcp://10.0.0.2:7000", a);
			o->url = a;
			break;
		case OPT_DATA_DIR:
			if (*a == '\0')
				return cli_usage_error(PROG, "--data-dir must not be empty");
			o->data_dir = a;
			break;
		case OPT_PARTITION:
			if (!parse_partition(a, &o->part, &o->n_parts))
				return cli_usage_error(PROG, "--partition '%s': expected I/N with 0 <= I < N <= %u, "
				                   "e.g. 0/10 for the first of ten clients",
				                   a, MAX_PARTITIONS);
			have_partition = true;
			break;
		case OPT_SPLIT:
			if (ml_partition_check_spec(a) != SHOAL_OK)
				return cli_usage_error(PROG, "--split '%s': expected iid, shards or "
				                   "dirichlet:ALPHA with ALPHA > 0", a);
			o->split = a;
			break;
		case OPT_SEED:
			if (!cli_parse_u64(a, 0, UINT64_MAX, &o->seed))
				return cli_usage_error(PROG, "--seed '%s': expected a whole number in 0..%" PRIu64,
				                   a, UINT64_MAX);
			break;
		case OPT_MODEL:
			if (ml_model_dim_of(a) == 0)
				return cli_usage_error(PROG, "--model '%s': unknown model; choose one of: %s",
				                   a, ml_model_names());
			o->model = a;
			break;
		case OPT_NAME:
			if (!valid_name(a))
				return cli_usage_error(PROG, "--name '%s': use 1..%u printable characters "
				                   "without spaces", a, MSG_NAME_MAX);
			o->name = a;
			break;
		case OPT_COMPRESS: {
			cx_config cc;
			bool none;
			if (strcmp(a, "any") != 0 && cx_parse_spec(a, &cc, &none) != SHOAL_OK)
				return cli_usage_error(PROG, "--compress '%s': expected any, none, topk:RATIO or "
				                   "randk:RATIO with an optional ,q8 ,q4 or ,f32", a);
			o->compress = a;
			break;
		}
		case OPT_EF:
			if (strcmp(a, "on") != 0 && strcmp(a, "off") != 0)
				return cli_usage_error(PROG, "--error-feedback '%s': expected on or off", a);
			o->error_feedback = strcmp(a, "on") == 0;
			break;
		case OPT_DOWNLINK:
			if (strcmp(a, "q8") != 0 && strcmp(a, "full") != 0)
				return cli_usage_error(PROG, "--downlink '%s': expected q8 or full", a);
			o->downlink_q8 = strcmp(a, "q8") == 0;
			break;
		case OPT_STATE_DIR:
			if (*a == '\0')
				return cli_usage_error(PROG, "--state-dir must name a folder");
			o->state_dir = a;
			break;
		case OPT_ENROLL_TOKEN:
			if (!id_token_valid(a, strlen(a)))
				return cli_usage_error(PROG, "--enroll-token: expected 16..64 characters of "
				                   "A-Z a-z 0-9 . _ ~ + / = - (as the operator gave it)");
			o->enroll_token = a;
			break;
		case OPT_SHOW_KEY:
			o->show_key = true;
			break;
		case OPT_DUMP_TRAIN:
			if (*a == '\0')
				return cli_usage_error(PROG, "--dump-train must name a folder");
			o->dump_dir = a;
			break;
		case OPT_REPLAY:
			if (*a == '\0')
				return cli_usage_error(PROG, "--replay must name a file");
			o->replay = a;
			break;
		case OPT_TLS_CA:
		case OPT_TLS_CERT:
		case OPT_TLS_KEY:
			if (*a == '\0')
				return cli_usage_error(PROG, "%s must name a PEM file", argv[optind - 1]);
			*(c == OPT_TLS_CA ? &o->tls_ca : c == OPT_TLS_CERT ? &o->tls_cert
			                                                   : &o->tls_key) = a;
			break;
		case OPT_TLS_NAME:
			if (*a == '\0' || strlen(a) > 253)
				return cli_usage_error(PROG, "--tls-server-name '%s': expected a host name", a);
			o->tls_server_name = a;
			break;
		case OPT_TRAIN_DELAY:
			if (!cli_parse_u64(a, 0, MAX_TRAIN_DELAY_MS, &u64))
				return cli_usage_error(PROG, "--train-delay '%s': expected milliseconds in 0..%u",
				                   a, MAX_TRAIN_DELAY_MS);
			o->train_delay_ms = (uint32_t)u64;
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
		default:
			if (optopt != 0)
				return cli_usage_error(PROG, "unknown option '-%c'", optopt);
			return cli_usage_error(PROG, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(PROG, "unexpected argument '%s' (all settings are --flags)",
		                   argv[optind]);
	if (o->show_key && o->state_dir == NULL)
		return cli_usage_error(PROG, "--show-key prints the key kept in --state-dir DIR: "
		                   "give --state-dir too");
	if (!have_partition && !o->show_key)
		return cli_usage_error(PROG, "--partition I/N is required: which part of the training "
		                   "data this client holds (e.g. --partition 0/5)");
	if (quiet && verbose)
		return cli_usage_error(PROG, "--quiet and --verbose contradict each other; pick one");
	o->verbosity = quiet ? -1 : verbose ? 1 : 0;
	if (o->name == NULL)
		default_name(o);
	if (strncmp(o->url, "tls+", 4) == 0) {
		if (o->tls_ca == NULL)
			return cli_usage_error(PROG, "--connect %s needs --tls-ca FILE: the CA certificate "
			                   "that signed the server's certificate", o->url);
		if ((o->tls_cert == NULL) != (o->tls_key == NULL))
			return cli_usage_error(PROG, "--tls-cert and --tls-key go together: the "
			                   "certificate and its private key");
	} else if (o->tls_ca != NULL || o->tls_cert != NULL || o->tls_key != NULL ||
	           o->tls_server_name != NULL) {
		return cli_usage_error(PROG, "the --tls-* flags are for tls+tcp:// servers, and "
		                   "--connect %s is not one (use --connect tls+tcp://HOST:PORT)",
		                   o->url);
	}
	return -1;
}

/* ---- training -------------------------------------------------------- */

typedef struct trainer {
	const ml_dataset *ds;
	const uint32_t *idx;   /* this client's examples */
	size_t n;
	const char *model_name;
	ml_model *model;       /* scratch for batches up to max_batch */
	size_t max_batch;
	uint32_t delay_ms;
	const char *state_dir; /* --state-dir, or NULL */
	const float *residual; /* refreshed by the library before on_ack */
	size_t dim;
	const char *dump_dir;  /* --dump-train, or NULL */
	float *dump_global;    /* the global model of the round being trained */
} trainer;

static double
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A task with a local time budget and no step cap from the library yet
 * (its first budgeted round, shoal/client.h): time up to 8 steps on a copy
 * of the global model and cap the real run at the steps that fit what is
 * left of the budget, floor(left / time per step) within [1, full]. */
static uint32_t
measure_step_cap(trainer *t, const float *params, size_t dim, const ml_sgd_config *sgd,
                 uint32_t budget_ms, uint32_t full)
{
	float *scratch = malloc(dim * sizeof *scratch);
	ml_sgd_config probe = *sgd;
	uint32_t m = full < 8 ? full : 8;

	if (scratch == NULL)
		return full;
	memcpy(scratch, params, dim * sizeof *scratch);
	probe.max_steps = m;
	double t0 = mono_ms();
	shoal_err err = ml_train_sgd(t->model, scratch, t->ds, t->idx, t->n, &probe, NULL);
	double took = mono_ms() - t0, per = took / m, left = budget_ms - took;
	free(scratch);
	if (err != SHOAL_OK || !(per > 0))
		return full;
	double cap = floor(left / per);
	log_debug(PROG ": budget %" PRIu32 " ms: %.3f ms a step measured, %.0f steps fit", budget_ms,
	          per, cap);
	return cap < 1 ? 1 : cap >= full ? full : (uint32_t)cap;
}

/* After every accepted update: persist the residual (--state-dir). */
static void
save_state(void *user, uint32_t round)
{
	const trainer *t = user;

	if (cli_state_save_residual(t->state_dir, t->residual, t->dim) == SHOAL_OK)
		log_debug(PROG ": saved the residual after round %" PRIu32, round);
}

/* Sleep ms, waking early when a stop signal arrives. */
static void
sleep_ms_interruptible(uint32_t ms)
{
	while (ms > 0 && stop_signal == 0) {
		uint32_t step = ms < 50 ? ms : 50;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)step * 1000000L};

		nanosleep(&ts, NULL);
		ms -= step;
	}
}

static int
train(void *user, float *params, size_t dim, const shoal_train_info *info,
      uint32_t *n_examples, float *loss)
{
	trainer *t = user;
	ml_sgd_config sgd = {0};
	double mean_loss = 0.0;
	size_t batch;
	shoal_err err;

	log_info(PROG ": round %" PRIu32 ": training on %zu examples (epochs %" PRIu32
	         ", batch %" PRIu32 ", lr %g, %" PRIu32 " ms left)",
	         info->round, t->n, info->epochs, info->batch, (double)info->lr,
	         info->deadline_ms);
	if (t->delay_ms > 0) {
		log_debug(PROG ": --train-delay: sleeping %" PRIu32 " ms", t->delay_ms);
		sleep_ms_interruptible(t->delay_ms);
	}
	if (stop_signal != 0)
		return -1;

	/* A batch never holds more than all local examples, so the scratch
	 * space only needs min(B, n) rows; the result is the same. */
	batch = info->batch < t->n ? info->batch : t->n;
	if (t->model == NULL || batch > t->max_batch) {
		if (t->model != NULL)
			ml_model_free(t->model);
		t->model = NULL;
		err = ml_model_new(t->model_name, batch, &t->model);
		if (err != SHOAL_OK) {
			log_error(PROG ": cannot create model '%s' for batch %zu: %s", t->model_name,
			          batch, shoal_strerror(err));
			return -1;
		}
		t->max_batch = batch;
	}
	if (dim != ml_model_dim(t->model)) {
		log_error(PROG ": server sent %zu parameters, model '%s' has %zu", dim,
		          t->model_name, ml_model_dim(t->model));
		return -1;
	}
	sgd.epochs = info->epochs;
	sgd.batch = (uint32_t)batch;
	sgd.lr = info->lr;
	sgd.seed = info->seed;
	sgd.momentum = info->momentum;
	sgd.weight_decay = info->weight_decay;
	sgd.prox_mu = info->prox_mu;
	if (info->budget_ms > 0) {
		/* Time-budgeted local work: at most the steps that fit the
		 * budget (PROTOCOL.md section 17). */
		uint32_t full = ml_sgd_steps(t->n, sgd.batch, sgd.epochs);
		sgd.max_steps = info->max_steps > 0 ? info->max_steps
		                                    : measure_step_cap(t, params, dim, &sgd,
		                                                       info->budget_ms, full);
		if (sgd.max_steps > full)
			sgd.max_steps = full;
		if (info->steps_done != NULL)
			*info->steps_done = sgd.max_steps;
		log_info(PROG ": round %" PRIu32 ": time budget %" PRIu32 " ms: %" PRIu32
		         " of %" PRIu32 " local steps", info->round, info->budget_ms, sgd.max_steps,
		         full);
	}
	if (t->dump_dir != NULL) {
		if (t->dump_global == NULL && (t->dump_global = malloc(dim * sizeof *params)) == NULL)
			return -1;
		memcpy(t->dump_global, params, dim * sizeof *params);
	}
	err = ml_train_sgd(t->model, params, t->ds, t->idx, t->n, &sgd, &mean_loss);
	if (err != SHOAL_OK) {
		log_error(PROG ": round %" PRIu32 ": training failed: %s", info->round,
		          shoal_strerror(err));
		return -1;
	}
	*n_examples = (uint32_t)t->n;
	*loss = (float)mean_loss;
	if (t->dump_dir != NULL)
		(void)cli_dump_write(t->dump_dir, info, *n_examples, t->dump_global, params, dim);
	log_debug(PROG ": round %" PRIu32 ": mean training loss %.4f", info->round, mean_loss);
	return 0;
}

/* --replay FILE: train the record's global model with the record's task as
 * train() does in a round, and print the distance of the result from the
 * record's trained model: the largest coordinate difference, and the L2
 * norm of the difference relative to the record's update (trained -
 * global). Returns an exit status: 0 when the replay ran (the caller judges
 * the distance). */
static int
replay(trainer *t, const char *path)
{
	shoal_train_info info;
	uint32_t n_rec, n_ex;
	float *g = NULL, *want = NULL, *start = NULL, loss;
	double max_abs = 0.0, d2 = 0.0, u2 = 0.0;
	size_t dim;
	shoal_err err;
	int rc = EXIT_RUNTIME;

	err = cli_dump_read(path, &info, &n_rec, &g, &want, &dim);
	if (err != SHOAL_OK) {
		log_error(PROG ": --replay '%s': %s", path, shoal_strerror(err));
		return EXIT_RUNTIME;
	}
	if (dim != ml_model_dim_of(t->model_name) || n_rec != t->n) {
		log_error(PROG ": --replay '%s' trained %zu parameters on %" PRIu32 " examples; this "
		          "client has %zu and %zu: use the recording client's --model, --partition, "
		          "--split and --seed", path, dim, n_rec, ml_model_dim_of(t->model_name), t->n);
		goto out;
	}
	if ((start = malloc(dim * sizeof *start)) == NULL)
		goto out;
	memcpy(start, g, dim * sizeof *start);
	if (train(t, g, dim, &info, &n_ex, &loss) != 0)
		goto out;
	for (size_t i = 0; i < dim; i++) {
		double d = (double)g[i] - (double)want[i], u = (double)want[i] - (double)start[i];

		max_abs = fabs(d) > max_abs ? fabs(d) : max_abs;
		d2 += d * d;
		u2 += u * u;
	}
	printf(PROG ": replay round=%" PRIu32 " dim=%zu max_abs_diff=%.3g rel_l2_update_diff=%.3g\n",
	       info.round, dim, max_abs, u2 > 0.0 ? sqrt(d2 / u2) : sqrt(d2));
	fflush(stdout);
	rc = EXIT_DONE;
out:
	free(g);
	free(want);
	free(start);
	return rc;
}

/* ---- main ------------------------------------------------------------ */

/* The client's Ed25519 key (PROTOCOL.md section 16) in sodium_malloc'd
 * memory: DIR/identity with --state-dir (made on the first run), else a
 * key for this run only. NULL after logging why not. */
static uint8_t *
load_identity(const char *state_dir, bool quiet)
{
	char hex[ID_HEX_CHARS + 1];
	uint8_t *sk, pk[ID_PK_BYTES];
	bool created = false;
	shoal_err e;

	if (sodium_init() < 0 || (sk = sodium_malloc(ID_SK_BYTES)) == NULL) {
		log_error(PROG ": cannot set up memory for the identity key");
		return NULL;
	}
	if (state_dir == NULL) {
		if (id_keypair(pk, sk) != SHOAL_OK) {
			sodium_free(sk);
			return NULL;
		}
		id_hex(pk, ID_PK_BYTES, hex);
		log_debug(PROG ": identity key %s for this run only (no --state-dir): servers "
		          "with an allowlist will not admit it", hex);
		return sk;
	}
	if (mkdir(state_dir, 0700) != 0 && errno != EEXIST) {
		log_error(PROG ": cannot create --state-dir '%s': %s", state_dir, strerror(errno));
		sodium_free(sk);
		return NULL;
	}
	if ((e = cli_state_identity(state_dir, true, sk, &created)) != SHOAL_OK) {
		log_error(PROG ": cannot use the identity key in --state-dir '%s' (%s)", state_dir,
		          shoal_strerror(e));
		sodium_free(sk);
		return NULL;
	}
	id_pk_of(sk, pk);
	id_hex(pk, ID_PK_BYTES, hex);
	if (!quiet || created)
		log_info(PROG ": identity key %s (%s %s/identity)", hex,
		         created ? "new, saved in" : "from", state_dir);
	return sk;
}

int
main(int argc, char **argv)
{
	options o;
	ml_dataset ds;
	ml_partition part;
	trainer t;
	shoal_client_options co;
	shoal_client_stats st;
	uint32_t *idx = NULL;
	float *residual = NULL;
	uint8_t *idsk = NULL;  /* Ed25519 secret key, sodium_malloc'd */
	size_t n;
	shoal_err err;
	int rc;

	rc = parse_args(argc, argv, &o);
	if (rc >= 0)
		return rc;
	log_set_level(o.verbosity < 0 ? LOG_ERROR : o.verbosity > 0 ? LOG_DEBUG : LOG_INFO);
	cli_stop_on_signals(on_signal);
	memset(&ds, 0, sizeof ds);
	memset(&t, 0, sizeof t);
	memset(&st, 0, sizeof st);
	rc = EXIT_RUNTIME;

	/* Certificates first: a bad file should not wait for the data. */
	if (o.tls_ca != NULL && o.replay == NULL) {
		tp_tls tls = {.cert = o.tls_cert, .key = o.tls_key, .ca = o.tls_ca};
		if (tp_tls_check(&tls, false) != SHOAL_OK) {
			log_error(PROG ": cannot connect to %s with these files (see above)", o.url);
			return EXIT_RUNTIME;
		}
	}

	/* The identity key next: --show-key needs nothing else. */
	if ((idsk = load_identity(o.state_dir, o.show_key)) == NULL)
		return EXIT_RUNTIME;
	if (o.show_key) {
		char hex[ID_HEX_CHARS + 1];
		uint8_t pk[ID_PK_BYTES];
		id_pk_of(idsk, pk);
		id_hex(pk, ID_PK_BYTES, hex);
		printf("%s\n", hex);
		fflush(stdout);
		sodium_free(idsk);
		return ferror(stdout) ? EXIT_RUNTIME : EXIT_DONE;
	}

	/* Only the labels decide the partition; then only this client's rows
	 * are read, so the rest of the training set (47 MB) never enters
	 * memory. idx is renumbered to 0..n-1 over the rows kept. */
	err = ml_mnist_load_labels(o.data_dir, "train", &ds);
	if (err != SHOAL_OK) {
		log_error(PROG ": cannot load the MNIST training set from '%s': %s", o.data_dir,
		          shoal_strerror(err));
		return EXIT_RUNTIME;
	}
	err = ml_partition_make(o.split, &ds, o.n_parts, o.seed, &part);
	if (err != SHOAL_OK) {
		log_error(PROG ": cannot cut %zu examples into %" PRIu32 " '%s' parts: %s", ds.n,
		          o.n_parts, o.split, shoal_strerror(err));
		goto out;
	}
	n = part.start[o.part + 1] - part.start[o.part];
	ml_dataset_fini(&ds);
	if (n == 0) {
		log_error(PROG ": partition %" PRIu32 "/%" PRIu32 " (%s, seed %" PRIu64 ") is empty; "
		          "use fewer parts", o.part, o.n_parts, o.split, o.seed);
		ml_partition_fini(&part);
		goto out;
	}
	err = ml_mnist_load_rows(o.data_dir, "train", part.idx + part.start[o.part], n, &ds);
	ml_partition_fini(&part);
	if (err != SHOAL_OK) {
		log_error(PROG ": cannot read partition %" PRIu32 " of the MNIST training set "
		          "from '%s': %s", o.part, o.data_dir, shoal_strerror(err));
		goto out;
	}
	if ((idx = malloc(n * sizeof *idx)) == NULL) {
		log_error(PROG ": out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		idx[i] = (uint32_t)i;
	log_info(PROG ": %s holds %zu examples (partition %" PRIu32 "/%" PRIu32 ", %s, seed %"
	         PRIu64 "); connecting to %s", o.name, n, o.part, o.n_parts, o.split, o.seed,
	         o.url);

	t.ds = &ds;
	t.idx = idx;
	t.n = n;
	t.model_name = o.model;
	t.delay_ms = o.train_delay_ms;
	if (o.replay != NULL) {
		rc = replay(&t, o.replay);
		goto out;
	}
	if (o.dump_dir != NULL && mkdir(o.dump_dir, 0700) != 0 && errno != EEXIST) {
		log_error(PROG ": cannot create --dump-train '%s': %s", o.dump_dir, strerror(errno));
		goto out;
	}
	t.dump_dir = o.dump_dir;

	shoal_client_options_init(&co);
	co.url = o.url;
	co.name = o.name;
	co.model = o.model;
	co.dim = ml_model_dim_of(o.model);
	co.n_examples = (uint32_t)n;
	co.train = train;
	co.user = &t;
	co.seed = o.seed ^ ((uint64_t)o.part << 32) ^ o.n_parts; /* jitter, rounding noise */
	co.stop = &stop_signal;
	co.compress = o.compress;
	co.error_feedback = o.error_feedback;
	co.downlink_q8 = o.downlink_q8;
	co.tls_ca = o.tls_ca;
	co.tls_cert = o.tls_cert;
	co.tls_key = o.tls_key;
	co.tls_server_name = o.tls_server_name;
	if (o.state_dir != NULL && o.error_feedback) {
		if (mkdir(o.state_dir, 0700) != 0 && errno != EEXIST) {
			log_error(PROG ": cannot create --state-dir '%s': %s", o.state_dir,
			          strerror(errno));
			goto out;
		}
		if ((residual = calloc(co.dim, sizeof *residual)) == NULL) {
			log_error(PROG ": out of memory");
			goto out;
		}
		err = cli_state_load_residual(o.state_dir, residual, co.dim);
		if (err == SHOAL_OK)
			log_info(PROG ": resumed the error-feedback residual from %s", o.state_dir);
		else if (err != SHOAL_EIO || access(o.state_dir, W_OK) != 0) {
			log_error(PROG ": cannot use --state-dir '%s' (%s); move the bad file away "
			          "or choose another folder", o.state_dir, shoal_strerror(err));
			goto out;
		}
		co.residual_io = residual;
		co.residual_load = err == SHOAL_OK;
		co.on_ack = save_state;
		t.state_dir = o.state_dir;
		t.residual = residual;
		t.dim = co.dim;
	}

	co.identity_sk = idsk;
	co.enroll_token = o.enroll_token;
	err = shoal_client_run(&co, &st);
	if (err == SHOAL_OK) {
		rc = EXIT_DONE;
		log_info(PROG ": the server finished training");
	} else if (stop_signal != 0) {
		rc = 128 + stop_signal;
		log_info(PROG ": stopped by %s", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
	} else if (err == SHOAL_EMODEL || err == SHOAL_EDIM) {
		log_error(PROG ": the server trains another model than '%s'; use the server's "
		          "--model (%s)", o.model, shoal_strerror(err));
	} else if (err == SHOAL_EUNLISTED || err == SHOAL_ETOKEN || err == SHOAL_EIDENTITY ||
	           err == SHOAL_EBADSIG) {
		char hex[ID_HEX_CHARS + 1];
		uint8_t pk[ID_PK_BYTES];
		id_pk_of(idsk, pk);
		id_hex(pk, ID_PK_BYTES, hex);
		rc = EXIT_REFUSED;
		if (err == SHOAL_EUNLISTED)
			log_error(PROG ": the server does not admit this client's key %s: give it to the "
			          "server's operator for the --allowlist file (%s --show-key prints it), "
			          "or start with --enroll-token TOKEN", hex, PROG);
		else if (err == SHOAL_ETOKEN)
			log_error(PROG ": the server refused the enrollment token (unknown, or already "
			          "used by another key): ask its operator for a new one");
		else if (err == SHOAL_EIDENTITY)
			log_error(PROG ": the server has '%s' registered with another key, or this key "
			          "(%s) under another name: run with that name, or the state folder "
			          "of the client that owns the name", o.name, hex);
		else
			log_error(PROG ": the server cannot verify this client's signatures with its "
			          "key %s (%s)", hex, shoal_strerror(err));
	} else {
		log_error(PROG ": %s", shoal_strerror(err));
	}
	printf(PROG ": rounds_trained=%" PRIu32 " updates_acked=%" PRIu32 " updates_late=%" PRIu32
	       "\n", st.rounds_trained, st.updates_acked, st.updates_late);
	fflush(stdout);

out:
	if (idsk != NULL)
		sodium_free(idsk); /* wipes */
	if (t.model != NULL)
		ml_model_free(t.model);
	free(idx);
	free(residual);
	free(t.dump_global);
	ml_dataset_fini(&ds);
	return rc;
}
