/* main.c - shoal-sim: one process runs the server core and N client
 * cores, training the built-in models on a partition of MNIST. By default
 * their messages travel through the virtual network of sim/engine.h on a
 * virtual clock, with device profiles (sim/device.h) when --devices is
 * given; --transport nng runs each client as a thread over nng ipc://
 * with the deployment drivers (srv_serve, shoal_client_run) instead, and
 * gives the same model. Results depend only on --seed (and the other
 * flags), never on --threads or timing. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "common/cli.h"
#include "common/log.h"
#include "common/msg.h"
#include "ml/ml.h"
#include "server/core.h"
#include "server/dp.h"
#include "server/flags.h"
#include "server/serve.h"
#include "shoal/client.h"
#include "sim/device.h"
#include "sim/engine.h"
#include "sim/mpi.h"

/* Defaults of the flags. The round count and learning rate were measured so
 * that the default run (2NN, IID, 100 clients, 10 per round, E=1, B=10)
 * reaches >= 95% test accuracy with margin in about a minute on 2 cores. */
#define SIM_DEF_CLIENTS 100u
#define SIM_DEF_PER_ROUND 10u
#define SIM_DEF_ROUNDS 80u
#define SIM_DEF_MODEL "2nn"
#define SIM_DEF_PARTITION "iid"
#define SIM_DEF_EPOCHS 1u
#define SIM_DEF_BATCH 10u
#define SIM_DEF_LR 0.1f
#define SIM_DEF_DATA "data"
#define SIM_DEF_SEED 1u
#define SIM_MAX_CLIENTS 10000000u
#define SIM_MAX_NNG_CLIENTS 2000u /* a thread and a socket each */
#define SIM_DEF_SUBSET 60u
#define SIM_ROUND_TIMEOUT_MS (60u * 60u * 1000u) /* no simulated dropouts */
#define SIM_LINGER_MS 200u
#define SIM_EXIT_USAGE 2

typedef struct sim_opts {
	uint32_t clients, per_round, rounds, epochs, batch, threads;
	uint32_t subset;      /* --client-examples, above the training set */
	float lr;
	uint64_t seed;
	const char *model, *partition, *data_dir, *metrics;
	bool quiet, verbose;
	bool error_feedback;  /* --error-feedback on|off */
	bool virtual_net;     /* --transport virtual (else nng) */
	const char *devices;  /* --devices MIX, or NULL: ideal devices */
	const char *device_file; /* --device-file FILE, or NULL */
	double round_timeout_s; /* --round-timeout with --devices */
	const char *report;   /* --report DIR, or NULL */
	bool avail_aware;     /* --avail-aware */
	srv_config algo;      /* --momentum, --server-opt, ... (server/flags.h) */
} sim_opts;

/* At most T clients train at once: T slots, each with its own model scratch
 * (ml_model holds no parameters, so which slot a client gets cannot change
 * its result). Models are created on first use, so memory grows with T,
 * not with N. */
typedef struct sim_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t n_free;
	size_t *free_list; /* slot ids */
	ml_model **models; /* per slot, NULL until first use */
	size_t n_slots;
	const char *model;
	uint32_t max_batch;
} sim_pool;

typedef struct sim_shared {
	const ml_dataset *train;
	const ml_partition *part;   /* clients share out the training set, or */
	const ml_subsets *subsets;  /* each draws its own subset (large N) */
	sim_pool pool;
	char url[64];
	const sim_opts *o;
	size_t dim;
} sim_shared;

typedef struct sim_client {
	sim_shared *sh;
	uint32_t index;
	char name[16];
	pthread_t thread;
	bool started;
	shoal_err result;
	shoal_client_stats stats;
} sim_client;

/* Running totals from the metrics lines (see metrics_tee_write). */
typedef struct sim_totals {
	uint64_t bytes_up, bytes_down;
	uint32_t completed, abandoned;
	double accuracy, loss; /* of the model after the last round */
	double epsilon;        /* DP: spent after the last round, NaN if off */
} sim_totals;

static volatile sig_atomic_t g_stop;
static volatile sig_atomic_t g_client_failed; /* a client hit a fatal error */

static void
on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- flags ------------------------------------------------------------ */

static void
usage(FILE *f, const char *argv0)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	fprintf(f,
	    "usage: %s [options]\n"
	    "\n"
	    "Federated averaging on MNIST in one process: the shoal server core and N\n"
	    "shoal client cores, the code that runs in deployment, exchange their real\n"
	    "messages through a virtual network on a virtual clock (or over nng). Each\n"
	    "client trains on its own partition of the training set; the server\n"
	    "evaluates the global model on the test set after every round.\n"
	    "\n"
	    "options (default in brackets):\n"
	    "  --clients N            number of clients, up to %u [%u]. Up to the\n"
	    "                         60000 training examples they share the\n"
	    "                         training set out (--partition); beyond, each\n"
	    "                         client draws its own seeded subset of\n"
	    "                         --client-examples examples (iid: uniform;\n"
	    "                         shards: 2 labels; dirichlet: per-client label\n"
	    "                         proportions), overlapping other clients'\n"
	    "  --client-examples M    examples per client in that case [%u]\n"
	    "  --clients-per-round K  clients selected each round, <= N [%u]\n"
	    "  --rounds R             rounds to run [%u]\n"
	    "  --model NAME           model: %s [%s]\n"
	    "  --partition SPEC       how the training set is split among clients:\n"
	    "                         iid, shards (2 label-sorted shards per client)\n"
	    "                         or dirichlet:ALPHA (per-class Dirichlet(ALPHA)\n"
	    "                         proportions; small ALPHA = more skewed) [%s]\n"
	    "  --epochs E             local epochs per round [%u]\n"
	    "  --batch B              local minibatch size [%u]\n"
	    "  --lr LR                local SGD learning rate [%g]\n"
	    "  --threads T            clients that train at the same time [online CPUs: %ld]\n"
	    "  --data-dir DIR         folder with the MNIST IDX files [%s]\n"
	    "                         (run scripts/setup.sh to download them)\n"
	    "  --metrics FILE         write one JSON object per round to FILE [none]\n"
	    "  --seed S               seed of partition, model init, selection and\n"
	    "                         shuffling [%u]\n"
	    "  --quiet                only errors and the final summary\n"
	    "  --verbose              debug logging\n"
	    "  --error-feedback on|off  clients keep what compression did not send\n"
	    "                         and add it to their next update (top-k only;\n"
	    "                         rand-k is unbiased and never uses it) [on]\n"
	    "  --transport virtual|nng  virtual: messages through an in-memory network\n"
	    "                         on a virtual clock (sim/engine.h); nng: each\n"
	    "                         client a thread over nng ipc:// sockets. Both give\n"
	    "                         the same final model, except with --async, where\n"
	    "                         real arrival order over nng decides [virtual]\n"
	    "  --devices MIX          device classes of the population, e.g.\n"
	    "                         pi4:0.5,laptop:0.2,phone-low:0.3 (built-ins:\n"
	    "                         pi-zero-2w pi4 pi5 laptop phone-low phone-high,\n"
	    "                         docs/devices.md). Each client's round then takes\n"
	    "                         its device's time (download + training + upload\n"
	    "                         + RTT), clients come and go with their\n"
	    "                         availability and fail mid-round; a round starts\n"
	    "                         with K waiting clients and ends at its deadline.\n"
	    "                         A client whose model does not fit its memory\n"
	    "                         does not take part [none: ideal devices]\n"
	    "  --device-file FILE     more profiles, JSON (docs/devices.md)\n"
	    "  --device-round-timeout S  with --devices: a round's deadline in virtual\n"
	    "                         seconds [600]\n"
	    "  --avail-aware          with --devices: a client checks in only when its\n"
	    "                         device expects to stay available for a whole\n"
	    "                         round (a full model each way, E epochs), so the\n"
	    "                         server selects among clients likely to finish\n"
	    "  --report DIR           write DIR/rounds.tsv, DIR/participation.tsv and\n"
	    "                         plots made with gnuplot: accuracy against virtual\n"
	    "                         time and against bytes, participation by device\n"
	    "                         class (DIR/*.png) [none]\n"
	    "  --help                 show this help\n"
	    "\n"
	    "Progress lines (one per round, with test accuracy) and a final summary\n"
	    "(accuracy, rounds, wall time, bytes up/down, BLAKE2b hash of the final\n"
	    "model; with --devices the virtual time, dropouts by cause and participation\n"
	    "by device class) go to stderr. Metrics lines carry virtual_s, the virtual\n"
	    "time at the end of the round. Results (metrics file and final model hash) depend\n"
	    "only on the seed and the training flags: they are identical for any\n"
	    "--threads. Exit status: 0 done, 1 error, 2 bad flags, 130 interrupted.\n"
	    "\n"
	    "example:\n"
	    "  %s --clients 100 --clients-per-round 10 --rounds 50 \\\n"
	    "      --partition dirichlet:0.5 --metrics run.jsonl\n",
	    argv0, SIM_MAX_CLIENTS, SIM_DEF_CLIENTS, SIM_DEF_SUBSET, SIM_DEF_PER_ROUND, SIM_DEF_ROUNDS, ml_model_names(),
	    SIM_DEF_MODEL, SIM_DEF_PARTITION, SIM_DEF_EPOCHS, SIM_DEF_BATCH, (double)SIM_DEF_LR,
	    ncpu > 0 ? ncpu : 1, SIM_DEF_DATA, SIM_DEF_SEED, argv0);
	fprintf(f, sim_mpi_built()
	        ? "\nMPI: built in. mpirun -np P shoal-sim ... spreads the clients' training\n"
	          "over P ranks, with the same results as one process (docs/mpi.md).\n"
	        : "\nMPI: not built in (install libopenmpi-dev and reconfigure; docs/mpi.md).\n");
	fputc('\n', f);
	srv_flag_help(f);
}

/* arg is a or b: *is_a says which; false (with a message) otherwise. */
static bool
parse_choice(const char *flag, const char *arg, const char *a, const char *b, bool *is_a)
{
	if (strcmp(arg, a) == 0 || strcmp(arg, b) == 0) {
		*is_a = strcmp(arg, a) == 0;
		return true;
	}
	fprintf(stderr, "shoal-sim: %s: expected %s or %s, not '%s'\n", flag, a, b, arg);
	return false;
}

/* Parse a decimal integer in [lo, hi]; false (with a message) otherwise. */
static bool
parse_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (*s == '\0' || *s == '-' || *s == '+' || *s == ' ')
		goto bad;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		goto bad;
	*out = v;
	return true;
bad:
	fprintf(stderr, "shoal-sim: %s: '%s' is not an integer in %" PRIu64 "..%" PRIu64 "\n",
	        flag, s, lo, hi);
	return false;
}

static bool
parse_u32(const char *flag, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	uint64_t v;

	if (!parse_u64(flag, s, lo, hi, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

enum {
	OPT_CLIENTS = 256, OPT_PER_ROUND, OPT_ROUNDS, OPT_MODEL, OPT_PARTITION, OPT_EPOCHS,
	OPT_BATCH, OPT_LR, OPT_THREADS, OPT_DATA, OPT_METRICS, OPT_SEED, OPT_QUIET,
	OPT_VERBOSE, OPT_HELP, OPT_EF, OPT_TRANSPORT, OPT_DEVICES, OPT_DEVICE_FILE,
	OPT_ROUND_TIMEOUT, OPT_REPORT, OPT_AVAIL_AWARE, OPT_SUBSET,
};

/* Returns -1 to continue, else the exit status (0 after --help). */
static int
parse_flags(int argc, char **argv, sim_opts *o)
{
	static const struct option longopts[] = {
		{"clients", required_argument, NULL, OPT_CLIENTS},
		{"clients-per-round", required_argument, NULL, OPT_PER_ROUND},
		{"client-examples", required_argument, NULL, OPT_SUBSET},
		{"rounds", required_argument, NULL, OPT_ROUNDS},
		{"model", required_argument, NULL, OPT_MODEL},
		{"partition", required_argument, NULL, OPT_PARTITION},
		{"epochs", required_argument, NULL, OPT_EPOCHS},
		{"batch", required_argument, NULL, OPT_BATCH},
		{"lr", required_argument, NULL, OPT_LR},
		{"threads", required_argument, NULL, OPT_THREADS},
		{"data-dir", required_argument, NULL, OPT_DATA},
		{"metrics", required_argument, NULL, OPT_METRICS},
		{"seed", required_argument, NULL, OPT_SEED},
		{"quiet", no_argument, NULL, OPT_QUIET},
		{"verbose", no_argument, NULL, OPT_VERBOSE},
		{"help", no_argument, NULL, OPT_HELP},
		{"error-feedback", required_argument, NULL, OPT_EF},
		{"transport", required_argument, NULL, OPT_TRANSPORT},
		{"devices", required_argument, NULL, OPT_DEVICES},
		{"device-file", required_argument, NULL, OPT_DEVICE_FILE},
		{"device-round-timeout", required_argument, NULL, OPT_ROUND_TIMEOUT},
		{"report", required_argument, NULL, OPT_REPORT},
		{"avail-aware", no_argument, NULL, OPT_AVAIL_AWARE},
		{NULL, 0, NULL, 0},
	};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	enum { NOWN = sizeof longopts / sizeof longopts[0] - 1 };
	struct option all[NOWN + SRV_FLAG_COUNT + 1];
	int c;

	srv_flag_merge(all, longopts, NOWN);
	*o = (sim_opts){
		.clients = SIM_DEF_CLIENTS, .per_round = SIM_DEF_PER_ROUND,
		.rounds = SIM_DEF_ROUNDS, .epochs = SIM_DEF_EPOCHS, .batch = SIM_DEF_BATCH,
		.threads = ncpu > 0 ? (uint32_t)ncpu : 1, .lr = SIM_DEF_LR, .seed = SIM_DEF_SEED,
		.model = SIM_DEF_MODEL, .partition = SIM_DEF_PARTITION, .data_dir = SIM_DEF_DATA,
		.error_feedback = true, .virtual_net = true, .round_timeout_s = 600.0,
		.subset = SIM_DEF_SUBSET,
	};
	srv_config_defaults(&o->algo);
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", all, NULL)) != -1) {
		bool ok = true;

		switch (c) {
		case OPT_CLIENTS:
			ok = parse_u32("--clients", optarg, 1, SIM_MAX_CLIENTS, &o->clients);
			break;
		case OPT_SUBSET:
			ok = parse_u32("--client-examples", optarg, 1, 60000, &o->subset);
			break;
		case OPT_PER_ROUND:
			ok = parse_u32("--clients-per-round", optarg, 1, SIM_MAX_CLIENTS,
			               &o->per_round);
			break;
		case OPT_ROUNDS:
			ok = parse_u32("--rounds", optarg, 1, UINT32_MAX, &o->rounds);
			break;
		case OPT_MODEL:
			o->model = optarg;
			if (ml_model_dim_of(optarg) == 0) {
				fprintf(stderr, "shoal-sim: --model: unknown model '%s' (known: %s)\n",
				        optarg, ml_model_names());
				ok = false;
			}
			break;
		case OPT_PARTITION:
			o->partition = optarg;
			if (ml_partition_check_spec(optarg) != SHOAL_OK) {
				fprintf(stderr, "shoal-sim: --partition: bad spec '%s' (use iid, "
				        "shards or dirichlet:ALPHA with ALPHA > 0)\n", optarg);
				ok = false;
			}
			break;
		case OPT_EPOCHS:
			ok = parse_u32("--epochs", optarg, 1, MSG_EPOCHS_MAX, &o->epochs);
			break;
		case OPT_BATCH:
			ok = parse_u32("--batch", optarg, 1, MSG_BATCH_MAX, &o->batch);
			break;
		case OPT_LR: {
			char *end;

			errno = 0;
			o->lr = strtof(optarg, &end);
			if (errno != 0 || end == optarg || *end != '\0' || !isfinite(o->lr) ||
			    !(o->lr > 0.0f)) {
				fprintf(stderr, "shoal-sim: --lr: '%s' is not a positive number\n",
				        optarg);
				ok = false;
			}
			break;
		}
		case OPT_THREADS:
			ok = parse_u32("--threads", optarg, 1, 4096, &o->threads);
			break;
		case OPT_DATA:
			o->data_dir = optarg;
			break;
		case OPT_METRICS:
			o->metrics = optarg;
			break;
		case OPT_SEED:
			ok = parse_u64("--seed", optarg, 0, UINT64_MAX, &o->seed);
			break;
		case OPT_QUIET:
			o->quiet = true;
			break;
		case OPT_EF:
			ok = parse_choice("--error-feedback", optarg, "on", "off", &o->error_feedback);
			break;
		case OPT_VERBOSE:
			o->verbose = true;
			break;
		case OPT_TRANSPORT:
			ok = parse_choice("--transport", optarg, "virtual", "nng", &o->virtual_net);
			break;
		case OPT_DEVICES:
			o->devices = optarg;
			break;
		case OPT_DEVICE_FILE:
			o->device_file = optarg;
			break;
		case OPT_REPORT:
			o->report = optarg;
			break;
		case OPT_AVAIL_AWARE:
			o->avail_aware = true;
			break;
		case OPT_ROUND_TIMEOUT:
			if (!cli_parse_number(optarg, 0.0, 4e6, false, &o->round_timeout_s) ||
			    !(o->round_timeout_s > 0.0)) {
				fprintf(stderr, "shoal-sim: --device-round-timeout: '%s' is not a number of "
				        "seconds in (0, 4e6]\n", optarg);
				ok = false;
			}
			break;
		case 'h':
		case OPT_HELP:
			usage(stdout, argv[0]);
			return 0;
		case ':':
			fprintf(stderr, "shoal-sim: %s needs a value\n", argv[optind - 1]);
			ok = false;
			break;
		default: {
			int r = c >= SRV_FLAG_BASE ? srv_flag_apply("shoal-sim", c, optarg, &o->algo) : 1;
			if (r < 0)
				return SIM_EXIT_USAGE; /* srv_flag_apply said why */
			if (r > 0) {
				fprintf(stderr, "shoal-sim: unknown option '%s'\n", argv[optind - 1]);
				ok = false;
			}
			break;
		}
		}
		if (!ok)
			goto usage_error;
	}
	if (optind < argc) {
		fprintf(stderr, "shoal-sim: unexpected argument '%s'\n", argv[optind]);
		goto usage_error;
	}
	if ((o->devices != NULL || o->device_file != NULL || o->report != NULL) &&
	    !o->virtual_net) {
		fprintf(stderr, "shoal-sim: --devices, --device-file and --report need --transport "
		        "virtual\n");
		goto usage_error;
	}
	if (o->avail_aware && o->devices == NULL) {
		fprintf(stderr, "shoal-sim: --avail-aware needs --devices\n");
		goto usage_error;
	}
	if (o->per_round > o->clients) {
		fprintf(stderr, "shoal-sim: --clients-per-round (%" PRIu32 ") must be <= "
		        "--clients (%" PRIu32 ")\n", o->per_round, o->clients);
		goto usage_error;
	}
	if (!o->virtual_net && o->clients > SIM_MAX_NNG_CLIENTS) {
		fprintf(stderr, "shoal-sim: --transport nng runs a thread and a socket per client; "
		        "use it with at most %u clients (the virtual transport runs the same cores "
		        "for any --clients)\n", SIM_MAX_NNG_CLIENTS);
		goto usage_error;
	}
	if (o->quiet && o->verbose) {
		fprintf(stderr, "shoal-sim: --quiet and --verbose exclude each other\n");
		goto usage_error;
	}
	return -1;
usage_error:
	fprintf(stderr, "Try '%s --help'.\n", argv[0]);
	return SIM_EXIT_USAGE;
}

/* ---- training slots ----------------------------------------------------- */

static shoal_err
pool_init(sim_pool *p, size_t n_slots, const char *model, uint32_t max_batch)
{
	memset(p, 0, sizeof(*p));
	p->free_list = calloc(n_slots, sizeof(*p->free_list));
	p->models = calloc(n_slots, sizeof(*p->models));
	if (p->free_list == NULL || p->models == NULL) {
		free(p->free_list);
		free(p->models);
		return SHOAL_ENOMEM;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	for (size_t i = 0; i < n_slots; i++)
		p->free_list[i] = n_slots - 1 - i;
	p->n_free = p->n_slots = n_slots;
	p->model = model;
	p->max_batch = max_batch;
	return SHOAL_OK;
}

static void
pool_fini(sim_pool *p)
{
	for (size_t i = 0; i < p->n_slots; i++)
		ml_model_free(p->models[i]);
	free(p->models);
	free(p->free_list);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
}

static size_t
pool_acquire(sim_pool *p)
{
	size_t slot;

	pthread_mutex_lock(&p->mu);
	while (p->n_free == 0)
		pthread_cond_wait(&p->cv, &p->mu);
	slot = p->free_list[--p->n_free];
	pthread_mutex_unlock(&p->mu);
	return slot;
}

static void
pool_release(sim_pool *p, size_t slot)
{
	pthread_mutex_lock(&p->mu);
	p->free_list[p->n_free++] = slot;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

/* ---- clients ------------------------------------------------------------ */

/* How many examples client i has. */
static uint32_t
client_n(const sim_shared *sh, uint32_t i)
{
	if (sh->subsets != NULL)
		return sh->subsets->m;
	return sh->part->start[i + 1] - sh->part->start[i];
}

/* Client i's examples: its share of the partition, or its seeded subset
 * drawn into *buf (the caller frees it). */
static shoal_err
client_examples(const sim_shared *sh, uint32_t i, const uint32_t **idx, uint32_t **buf)
{
	shoal_err e;

	*buf = NULL;
	if (sh->subsets == NULL) {
		*idx = sh->part->idx + sh->part->start[i];
		return SHOAL_OK;
	}
	if ((*buf = malloc((size_t)sh->subsets->m * sizeof **buf)) == NULL)
		return SHOAL_ENOMEM;
	if ((e = ml_subsets_draw(sh->subsets, i, *buf)) != SHOAL_OK) {
		free(*buf);
		*buf = NULL;
		return e;
	}
	*idx = *buf;
	return SHOAL_OK;
}

static int
client_train(void *user, float *params, size_t dim, const shoal_train_info *info,
             uint32_t *n_examples, float *loss)
{
	sim_client *c = user;
	sim_shared *sh = c->sh;
	const uint32_t *idx;
	uint32_t *drawn;
	size_t n = client_n(sh, c->index);
	ml_sgd_config cfg = {
		.epochs = info->epochs, .batch = info->batch, .lr = info->lr, .seed = info->seed,
		.momentum = info->momentum, .weight_decay = info->weight_decay,
		.prox_mu = info->prox_mu, .max_steps = info->max_steps,
	};
	double mean_loss = 0.0;
	shoal_err e;
	size_t slot;

	if (dim != sh->dim || info->batch > sh->pool.max_batch) {
		log_error("%s: task does not fit the simulator (dim %zu, batch %" PRIu32 ")",
		          c->name, dim, info->batch);
		return 1;
	}
	if ((e = client_examples(sh, c->index, &idx, &drawn)) != SHOAL_OK) {
		log_error("%s: cannot draw its examples: %s", c->name, shoal_strerror(e));
		return 1;
	}
	slot = pool_acquire(&sh->pool);
	if (sh->pool.models[slot] == NULL) {
		e = ml_model_new(sh->pool.model, sh->pool.max_batch, &sh->pool.models[slot]);
		if (e != SHOAL_OK) {
			pool_release(&sh->pool, slot);
			free(drawn);
			log_error("%s: cannot create model: %s", c->name, shoal_strerror(e));
			return 1;
		}
	}
	e = ml_train_sgd(sh->pool.models[slot], params, sh->train, idx, n, &cfg, &mean_loss);
	pool_release(&sh->pool, slot);
	free(drawn);
	if (e != SHOAL_OK) {
		log_error("%s: training failed: %s", c->name, shoal_strerror(e));
		return 1;
	}
	*n_examples = (uint32_t)n;
	*loss = (float)mean_loss;
	log_debug("%s: round %" PRIu32 " trained on %zu examples, loss %.4f", c->name,
	          info->round, n, mean_loss);
	return 0;
}

static void *
client_main(void *arg)
{
	sim_client *c = arg;
	sim_shared *sh = c->sh;
	shoal_client_options o;

	shoal_client_options_init(&o);
	o.url = sh->url;
	o.name = c->name;
	o.model = sh->o->model;
	o.dim = sh->dim;
	o.n_examples = client_n(sh, c->index);
	o.train = client_train;
	o.user = c;
	o.seed = sh->o->seed ^ ((uint64_t)c->index << 32); /* jitter, rounding noise */
	o.compress = "any"; /* the server's --compress decides */
	o.error_feedback = sh->o->error_feedback;
	o.dp_noise_from_seed = 1; /* results depend only on --seed */
	o.stop = &g_stop;
	c->result = shoal_client_run(&o, &c->stats);
	/* min_clients = N: without this client no round can start again. */
	if (c->result != SHOAL_OK && !(c->result == SHOAL_ECLOSED && g_stop)) {
		log_error("%s stopped: %s", c->name, shoal_strerror(c->result));
		g_client_failed = 1;
		g_stop = 1;
	}
	return NULL;
}

typedef struct sim_launch {
	sim_client *clients;
	uint32_t n;
	bool failed;
	sim_totals *totals;
} sim_launch;

/* Called by srv_serve once the ipc URL listens, so no client has to wait
 * for a redial. Client threads block every signal: SIGINT goes to main. */
static void
start_clients(void *user)
{
	sim_launch *l = user;
	sigset_t all, old;
	pthread_attr_t attr;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	pthread_attr_init(&attr);
	/* Training runs on these threads: keep headroom for BLAS and codecs. */
	pthread_attr_setstacksize(&attr, (size_t)2 << 20);
	for (uint32_t i = 0; i < l->n; i++) {
		sim_client *c = &l->clients[i];

		if (pthread_create(&c->thread, &attr, client_main, c) != 0) {
			log_error("cannot start client thread %" PRIu32 " of %" PRIu32, i, l->n);
			l->failed = true;
			g_stop = 1;
			break;
		}
		c->started = true;
	}
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* ---- totals for the summary -------------------------------------------- */

/* Adds a round's figures to the summary's totals (both transports). */
static void
totals_add(sim_totals *t, const srv_round_stats *st)
{
	t->bytes_up += st->bytes_up;
	t->bytes_down += st->bytes_down;
	if (st->abandoned)
		t->abandoned++;
	else
		t->completed++;
	t->accuracy = st->accuracy;
	t->loss = st->loss;
	t->epsilon = st->epsilon;
}

static void
on_round(void *user, const srv_round_stats *st)
{
	totals_add(((sim_launch *)user)->totals, st);
}

/* ---- main --------------------------------------------------------------- */

static shoal_err
load_data(const sim_opts *o, ml_dataset *train, ml_dataset *test)
{
	struct stat st;
	shoal_err e;

	if (stat(o->data_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		log_error("data directory '%s' not found: run scripts/setup.sh to download "
		          "MNIST, or pass --data-dir", o->data_dir);
		return SHOAL_EIO;
	}
	if ((e = ml_mnist_load(o->data_dir, "train", train)) != SHOAL_OK) {
		log_error("cannot load MNIST training set from '%s': %s (run scripts/setup.sh)",
		          o->data_dir, shoal_strerror(e));
		return e;
	}
	if ((e = ml_mnist_load(o->data_dir, "t10k", test)) != SHOAL_OK) {
		log_error("cannot load MNIST test set from '%s': %s (run scripts/setup.sh)",
		          o->data_dir, shoal_strerror(e));
		ml_dataset_fini(train);
		return e;
	}
	return SHOAL_OK;
}

static void
human_bytes(uint64_t b, char *out, size_t cap)
{
	static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)b;
	int u = 0;

	while (v >= 1024.0 && u < 4) {
		v /= 1024.0;
		u++;
	}
	snprintf(out, cap, u == 0 ? "%.0f %s" : "%.1f %s", v, unit[u]);
}

/* The final summary on stderr: the final model as the server holds it. */
static void
print_summary(const sim_opts *o, srv_core *core, const sim_totals *t, const srv_config *cfg,
              double t0, bool interrupted)
{
	size_t dim = 0;
	const float *params = srv_core_params(core, &dim);
	unsigned char hash[crypto_generichash_BYTES];
	char hex[2 * crypto_generichash_BYTES + 1];
	char up[32], down[32];

	crypto_generichash(hash, sizeof(hash), (const unsigned char *)params,
	                   dim * sizeof(float), NULL, 0);
	sodium_bin2hex(hex, sizeof(hex), hash, sizeof(hash));
	human_bytes(t->bytes_up, up, sizeof(up));
	human_bytes(t->bytes_down, down, sizeof(down));
	fprintf(stderr,
	        "%s"
	        "final test accuracy: %.4f (loss %.4f)\n"
	        "rounds: %" PRIu32 " completed, %" PRIu32 " abandoned, of %" PRIu32 "\n"
	        "wall time: %.1f s\n"
	        "bytes up: %" PRIu64 " (%s), bytes down: %" PRIu64 " (%s)\n"
	        "final model blake2b: %s\n",
	        interrupted ? "interrupted\n" : "", t->accuracy, t->loss, t->completed,
	        t->abandoned, o->rounds, now_s() - t0, t->bytes_up, up,
	        t->bytes_down, down, hex);
	if (t->completed + t->abandoned > 0 && !isnan(t->epsilon))
		fprintf(stderr, "privacy: epsilon %.4f at delta %g\n", t->epsilon, cfg->delta);
}

/* ---- the virtual network (sim/engine.h) --------------------------------- */

typedef struct vsim {
	const sim_opts *o;
	sim_client *clients;
	FILE *metrics;
	sim_totals *totals;
	const sim_device *const *dev; /* per client, NULL without --devices */
	uint32_t *trained;            /* per client: trainings run */
	double target_s;              /* first virtual time at the target, or -1 */
	double target;                /* --target-accuracy, 0: off */
	/* per round, for --report */
	size_t n_rounds, cap_rounds;
	double *r_time, *r_acc;
	uint64_t *r_bytes;            /* up + down, cumulative */
	uint64_t bytes;
} vsim;

static int
v_train(void *user, uint32_t i, float *params, uint32_t dim, const cli_step *st,
        uint32_t *n_examples, float *loss)
{
	vsim *v = user;
	shoal_train_info info = {
		.round = st->round, .epochs = st->epochs, .batch = st->batch, .lr = st->lr,
		.momentum = st->momentum, .weight_decay = st->weight_decay, .prox_mu = st->prox_mu,
		.seed = st->seed, .deadline_ms = st->deadline_ms,
		.budget_ms = st->budget_ms, .max_steps = st->max_steps,
	};

	v->trained[i]++; /* one client is trained by one thread at a time */
	return client_train(&v->clients[i], params, dim, &info, n_examples, loss);
}

/* The client configuration shoal_client_run would build from shoal-sim's
 * client options (client_main), so both transports run identical cores. */
static void
v_setup(void *user, uint32_t i, cli_config *cc)
{
	vsim *v = user;

	cc->name = v->clients[i].name;
	cc->seed = v->o->seed ^ ((uint64_t)i << 32);
	cc->backoff_min_ms = 100;
	cc->backoff_max_ms = 5000;
	cc->cx_caps = MSG_CX_ALL; /* compress "any", q8 downlink */
	cc->error_feedback = v->o->error_feedback;
	cc->dp_noise_from_seed = true;
}

static void
v_round(void *user, const srv_round_stats *st, double virtual_s)
{
	vsim *v = user;

	totals_add(v->totals, st);
	if (v->target > 0 && v->target_s < 0 && !st->abandoned && st->accuracy >= v->target)
		v->target_s = virtual_s;
	v->bytes += st->bytes_up + st->bytes_down;
	if (v->o->report != NULL && !st->abandoned) {
		if (v->n_rounds == v->cap_rounds) {
			size_t cap = v->cap_rounds ? 2 * v->cap_rounds : 64;
			double *tm = realloc(v->r_time, cap * sizeof *tm), *a;
			uint64_t *b;

			if (tm != NULL)
				v->r_time = tm;
			a = realloc(v->r_acc, cap * sizeof *a);
			if (a != NULL)
				v->r_acc = a;
			b = realloc(v->r_bytes, cap * sizeof *b);
			if (b != NULL)
				v->r_bytes = b;
			if (tm != NULL && a != NULL && b != NULL)
				v->cap_rounds = cap;
		}
		if (v->n_rounds < v->cap_rounds) {
			v->r_time[v->n_rounds] = virtual_s;
			v->r_acc[v->n_rounds] = st->accuracy;
			v->r_bytes[v->n_rounds++] = v->bytes;
		}
	}
	if (v->metrics != NULL) {
		srv_metrics_write(v->metrics, st, virtual_s);
		fflush(v->metrics);
	}
	if (!v->o->quiet)
		srv_print_progress(st, v->o->rounds);
}

/* --report DIR: the data as TSV, a gnuplot script, and its PNGs when
 * gnuplot is installed. Returns 0, or 1 after logging why. */
static int
write_report(const vsim *v, const char *const *class_name, const uint32_t *members,
             const uint32_t *took_part, const uint64_t *trainings, size_t n_classes)
{
	const char *dir = v->o->report;
	char path[4096];
	FILE *f;
	pid_t pid;
	int st;

	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		log_error("--report: cannot create '%s': %s", dir, strerror(errno));
		return 1;
	}
	snprintf(path, sizeof path, "%s/rounds.tsv", dir);
	if ((f = fopen(path, "w")) == NULL)
		goto io;
	fprintf(f, "# round-end virtual_s\taccuracy\tbytes (up + down, cumulative)\n");
	for (size_t i = 0; i < v->n_rounds; i++)
		fprintf(f, "%.3f\t%.4f\t%" PRIu64 "\n", v->r_time[i], v->r_acc[i], v->r_bytes[i]);
	if (fclose(f) != 0)
		goto io;
	snprintf(path, sizeof path, "%s/participation.tsv", dir);
	if ((f = fopen(path, "w")) == NULL)
		goto io;
	fprintf(f, "# class\tclients\ttook_part\ttrainings\n");
	for (size_t k = 0; k < n_classes; k++)
		fprintf(f, "%s\t%" PRIu32 "\t%" PRIu32 "\t%" PRIu64 "\n", class_name[k], members[k],
		        took_part[k], trainings[k]);
	if (fclose(f) != 0)
		goto io;
	snprintf(path, sizeof path, "%s/report.gp", dir);
	if ((f = fopen(path, "w")) == NULL)
		goto io;
	fprintf(f,
	        "# shoal-sim --report: run with gnuplot from any folder\n"
	        "d = '%s'\n"
	        "set terminal pngcairo size 720,420\n"
	        "set datafile separator '\\t'\n"
	        "set key off; set grid\n"
	        "set ylabel 'test accuracy'\n"
	        "set output d.'/accuracy-time.png'\n"
	        "set xlabel 'virtual time (s)'\n"
	        "plot d.'/rounds.tsv' using 1:2 with linespoints pt 7 ps 0.5\n"
	        "set output d.'/accuracy-bytes.png'\n"
	        "set xlabel 'bytes up + down (MB)'\n"
	        "plot d.'/rounds.tsv' using ($3/1e6):2 with linespoints pt 7 ps 0.5\n"
	        "set output d.'/participation.png'\n"
	        "set xlabel 'device class'; set ylabel 'clients'\n"
	        "set key top right; set style data histograms; set style fill solid 0.8\n"
	        "set yrange [0:*]\n"
	        "plot d.'/participation.tsv' using 2:xtic(1) title 'in the population', \\\n"
	        "     '' using 3 title 'took part'\n",
	        dir);
	if (fclose(f) != 0)
		goto io;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		if (null >= 0)
			dup2(null, 1);
		execlp("gnuplot", "gnuplot", path, (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		log_warn("--report: gnuplot did not make the plots (install gnuplot-nox, then run "
		         "gnuplot %s); the data are in %s", path, dir);
		return 0;
	}
	if (!v->o->quiet)
		fprintf(stderr, "report: %s/accuracy-time.png, accuracy-bytes.png, "
		        "participation.png\n", dir);
	return 0;
io:
	log_error("--report: cannot write '%s': %s", path, strerror(errno));
	return 1;
}

/* Runs the whole simulation on the virtual network. Returns 0, or 1 after
 * logging why. */
static int
run_virtual(const sim_opts *o, srv_core *core, sim_client *clients, const sim_shared *sh,
            const srv_config *cfg, FILE *metrics, sim_totals *totals)
{
	sim_device_set set;
	sim_mix mix = {0};
	uint8_t *class_of = NULL;
	const sim_device **dev = NULL;
	uint32_t *n_ex = NULL, *trained = NULL, refused[SIM_DEVICE_MAX] = {0};
	bool *absent = NULL;
	sim_engine_stats es;
	volatile int *stop;
	const sim_spread *spread = sim_mpi_spread((volatile int *)&g_stop, &stop);
	vsim v = {.o = o, .clients = clients, .metrics = metrics, .totals = totals,
	          .target_s = -1.0, .target = cfg->target_accuracy};
	size_t dim = ml_model_dim_of(o->model);
	shoal_err e;
	int rc = 1;

	n_ex = calloc(o->clients, sizeof *n_ex);
	trained = calloc(o->clients, sizeof *trained);
	absent = calloc(o->clients, sizeof *absent);
	if (n_ex == NULL || trained == NULL || absent == NULL)
		goto oom;
	for (uint32_t i = 0; i < o->clients; i++)
		n_ex[i] = client_n(sh, i);
	sim_device_set_builtins(&set);
	if (o->device_file != NULL && sim_device_load_file(&set, o->device_file) != SHOAL_OK)
		goto out; /* said why */
	if (o->devices != NULL) {
		uint32_t n_refused = 0;

		if (sim_mix_parse(&set, o->devices, &mix) != SHOAL_OK)
			goto out;
		class_of = malloc(o->clients);
		dev = calloc(o->clients, sizeof *dev);
		if (class_of == NULL || dev == NULL ||
		    sim_mix_assign(&mix, o->seed, o->clients, class_of) != SHOAL_OK)
			goto oom;
		for (uint32_t i = 0; i < o->clients; i++) {
			uint64_t need;

			dev[i] = &set.dev[mix.dev[class_of[i]]];
			if (!sim_device_fits(dev[i], dim * sizeof(float),
			                     (uint64_t)n_ex[i] * (ML_IMAGE_PIXELS + 1), &need)) {
				absent[i] = true;
				refused[class_of[i]]++;
				if (n_refused++ < 5)
					log_warn("%s (%s) refuses to take part: a %s client needs %.1f MiB, "
					         "its device allows %.1f MiB", clients[i].name, dev[i]->name,
					         o->model, (double)need / 1048576.0,
					         (double)dev[i]->mem_bytes / 1048576.0);
			}
		}
		if (n_refused > 5)
			log_warn("... %" PRIu32 " clients in all refuse to take part (memory)", n_refused);
		if (o->clients - n_refused < o->per_round) {
			log_error("only %" PRIu32 " of %" PRIu32 " clients can hold a %s model: fewer "
			          "than --clients-per-round", o->clients - n_refused, o->clients,
			          o->model);
			goto out;
		}
	}
	v.dev = dev;
	v.trained = trained;
	sim_engine_config ec = {
		.server = core,
		.n_clients = o->clients,
		.client = {.model = o->model, .dim = (uint32_t)dim},
		.dev = dev,
		.absent = absent,
		.n_examples = n_ex,
		.flops_per_example = ml_model_train_flops(o->model),
		.train = v_train,
		.on_round = v_round,
		.setup = v_setup,
		.user = &v,
		.threads = o->threads,
		.seed = o->seed,
		.availability = dev != NULL,
		.failures = dev != NULL,
		.avail_aware = o->avail_aware,
		.est_down_bytes = dim * sizeof(float),
		.est_up_bytes = dim * sizeof(float),
		.est_epochs = o->epochs,
		/* A year of virtual time: only a population that can never
		 * finish a round gets there. */
		.max_virtual_s = 365.0 * 86400.0,
		.stop = stop,
		.spread = spread, /* NULL unless under mpirun (sim/mpi.h) */
	};
	e = sim_engine_run(&ec, &es);
	if (e == SHOAL_ECLOSED && *stop) {
		rc = 130;
		goto out;
	}
	if (e == SHOAL_ETIMEDOUT) {
		log_error("the simulation made no progress in a year of virtual time: are the "
		          "devices ever available long enough for a round (--avail-aware), and "
		          "is --device-round-timeout long enough?");
		goto out;
	}
	if (e != SHOAL_OK) {
		log_error("the simulation failed: %s", shoal_strerror(e));
		goto out;
	}
	/* Each rank counted the trainings it ran. */
	sim_mpi_sum_u32(trained, o->clients);
	if (sim_mpi_rank() > 0) {
		rc = 0;
		goto out;
	}
	if (!o->quiet || dev != NULL) {
		fprintf(stderr, "virtual time: %.1f s (%.2f h)", es.virtual_s, es.virtual_s / 3600.0);
		if (v.target > 0 && v.target_s >= 0)
			fprintf(stderr, ", %.1f s to reach accuracy %g", v.target_s, v.target);
		else if (v.target > 0)
			fprintf(stderr, ", accuracy %g not reached", v.target);
		fputc('\n', stderr);
	}
	if (!o->quiet && es.residuals_on_disk)
		fprintf(stderr, "error-feedback residuals of %" PRIu32 " clients (%.0f MiB) were kept in "
		        "a temporary file under $TMPDIR (or /tmp)\n", es.residuals,
		        (double)es.residuals * (double)dim * sizeof(float) / 1048576.0);
	{
		size_t nc = dev != NULL ? mix.n : 1;
		const char *names[SIM_DEVICE_MAX];
		uint32_t members[SIM_DEVICE_MAX] = {0}, took[SIM_DEVICE_MAX] = {0};
		uint64_t trainings[SIM_DEVICE_MAX] = {0};

		for (size_t k = 0; k < nc; k++)
			names[k] = dev != NULL ? set.dev[mix.dev[k]].name : "ideal";
		for (uint32_t i = 0; i < o->clients; i++) {
			size_t k = dev != NULL ? class_of[i] : 0;
			members[k]++;
			took[k] += trained[i] > 0;
			trainings[k] += trained[i];
		}
		if (dev != NULL) {
			fprintf(stderr, "dropouts: %" PRIu32 " failed mid-round, %" PRIu32
			        " went offline\n", es.dropped[SIM_DROP_FAILED],
			        es.dropped[SIM_DROP_OFFLINE]);
			for (size_t k = 0; k < nc; k++)
				fprintf(stderr, "participation %-12s %" PRIu32 " clients, %" PRIu32
				        " took part, %" PRIu64 " trainings%s\n", names[k], members[k],
				        took[k], trainings[k], refused[k] > 0 ? " (some refused: memory)" : "");
		}
		if (o->report != NULL &&
		    write_report(&v, names, members, took, trainings, nc) != 0)
			goto out;
	}
	rc = 0;
	goto out;
oom:
	log_error("out of memory");
out:
	free(v.r_time);
	free(v.r_acc);
	free(v.r_bytes);
	free(n_ex);
	free(trained);
	free(absent);
	free(class_of);
	free(dev);
	return rc;
}

int
main(int argc, char **argv)
{
	sim_opts o;
	ml_dataset train = {0}, test = {0};
	ml_partition part = {0};
	ml_subsets subsets = {0};
	sim_shared sh = {0};
	sim_client *clients = NULL;
	sim_launch launch = {0};
	sim_totals totals = {0};
	srv_config cfg;
	srv_core *core = NULL;
	FILE *metrics = NULL;
	bool pool_ready = false, data_ready = false, have_sock_dir = false;
	char sock_dir[] = "/tmp/shoal-sim-XXXXXX", sock_path[64];
	int status = 1, r;
	double t0;
	shoal_err e;

	if ((r = parse_flags(argc, argv, &o)) >= 0)
		return r;
	if (sim_mpi_init(&argc, &argv) != 0)
		return 1;
	/* Per-client info lines (100 registrations, 100 DONEs) would bury the
	 * progress lines: those are for --verbose. */
	log_set_level(o.verbose ? LOG_DEBUG : LOG_WARN);
	if (sim_mpi_rank() > 0) {
		/* Under mpirun, rank 0 writes every output; the others say only
		 * what goes wrong. */
		log_set_level(LOG_ERROR);
		o.quiet = true;
		o.metrics = NULL;
		o.report = NULL;
	}
	t0 = now_s();
	if (sim_mpi_size() > 1 && !o.virtual_net) {
		log_error("--transport nng runs in one process: start it without mpirun");
		status = SIM_EXIT_USAGE;
		goto out;
	}
	if (sodium_init() < 0) {
		log_error("libsodium failed to initialise");
		goto out;
	}
	/* Parallelism is across clients; a threaded BLAS would oversubscribe. */
	ml_set_blas_threads(1);

	cli_stop_on_signals(on_signal); /* a second Ctrl-C kills at once */

	if (load_data(&o, &train, &test) != SHOAL_OK)
		goto out;
	data_ready = true;
	if (o.clients > train.n) {
		/* More clients than examples: each draws its own subset. */
		if ((e = ml_subsets_init(&subsets, o.partition, &train, o.subset, o.seed)) !=
		    SHOAL_OK) {
			log_error("cannot draw subsets of %" PRIu32 " examples with '%s': %s%s",
			          o.subset, o.partition, shoal_strerror(e),
			          strcmp(o.partition, "shards") == 0
			              ? " (shards needs --client-examples at most the smallest label's "
			                "count)" : "");
			goto out;
		}
		sh.subsets = &subsets;
	} else if ((e = ml_partition_make(o.partition, &train, o.clients, o.seed, &part)) !=
	           SHOAL_OK) {
		log_error("cannot partition the training set with '%s': %s", o.partition,
		          shoal_strerror(e));
		goto out;
	}
	for (uint32_t i = 0; i < o.clients && sh.subsets == NULL; i++) {
		if (part.start[i + 1] == part.start[i]) {
			log_error("partition '%s' left client %" PRIu32 " without examples",
			          o.partition, i);
			goto out;
		}
	}

	cfg = o.algo; /* defaults plus the algorithm flags */
	cfg.model = o.model;
	cfg.rounds = o.rounds;
	cfg.clients_per_round = o.per_round;
	cfg.min_clients = o.clients;   /* every client parked: selection is deterministic */
	cfg.min_reports = o.per_round; /* no simulated dropouts yet */
	if (cfg.sampling == SRV_SAMPLING_POISSON)
		cfg.min_reports = 1; /* the number selected varies */
	cfg.epochs = o.epochs;
	cfg.batch = o.batch;
	cfg.lr = o.lr;
	cfg.round_timeout_ms = SIM_ROUND_TIMEOUT_MS;
	cfg.secagg_phase_ms = SIM_ROUND_TIMEOUT_MS; /* no simulated dropouts */
	if (cfg.max_clients < o.clients)
		cfg.max_clients = o.clients;
	cfg.seed = o.seed;
	cfg.test = &test;
	if (o.devices != NULL) {
		/* Devices come and go: start with K waiting (ceil(F*K) with
		 * --over-select F), end at a deadline. */
		double want = ceil(cfg.over_select * o.per_round - 1e-9);
		cfg.min_clients = want < o.clients ? (uint32_t)want : o.clients;
		cfg.min_reports = 1;
		cfg.round_timeout_ms = (uint32_t)(o.round_timeout_s * 1e3);
		cfg.secagg_phase_ms = 60000;
	}
	if ((e = srv_core_new(&cfg, &core)) != SHOAL_OK) {
		log_error("cannot create the server core: %s", shoal_strerror(e));
		goto out;
	}

	sh.train = &train;
	sh.part = sh.subsets == NULL ? &part : NULL;
	sh.o = &o;
	sh.dim = ml_model_dim_of(o.model);
	if (!o.virtual_net) {
		/* Real sockets: an ipc:// path in a private temporary folder. */
		if (mkdtemp(sock_dir) == NULL) {
			log_error("cannot create a folder for the ipc socket under /tmp: %s",
			          strerror(errno));
			goto out;
		}
		have_sock_dir = true;
		snprintf(sh.url, sizeof(sh.url), "ipc://%s/server", sock_dir);
	}
	if (pool_init(&sh.pool, o.threads, o.model, o.batch) != SHOAL_OK) {
		log_error("out of memory");
		goto out;
	}
	pool_ready = true;
	clients = calloc(o.clients, sizeof(*clients));
	if (clients == NULL) {
		log_error("out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < o.clients; i++) {
		clients[i].sh = &sh;
		clients[i].index = i;
		snprintf(clients[i].name, sizeof(clients[i].name), "sim-%05" PRIu32, i);
	}

	if (o.metrics != NULL && (metrics = fopen(o.metrics, "w")) == NULL) {
		log_error("cannot open metrics file '%s': %s", o.metrics, strerror(errno));
		goto out;
	}

	if (!o.quiet)
		fprintf(stderr, "shoal-sim: %" PRIu32 " clients (%s, %s), %" PRIu32 " per round, %" PRIu32
		        " rounds, E=%" PRIu32 " B=%" PRIu32 " lr=%g, %" PRIu32
		        " training threads, seed %" PRIu64 "\n",
		        o.clients, o.model, o.partition, o.per_round, o.rounds, o.epochs, o.batch,
		        (double)o.lr, o.threads, o.seed);
	if (!o.quiet && srv_core_dp(core) != NULL)
		fprintf(stderr, "shoal-sim: %s DP: Poisson q=%g, clip %g, noise multiplier %.6g%s, "
		        "delta %g\n", cfg.dp == SRV_DP_DISTRIBUTED ? "distributed" : "central",
		        cfg.sample_rate, cfg.clip, srv_dp_noise_multiplier(srv_core_dp(core)),
		        cfg.target_epsilon > 0 ? " (calibrated for --target-epsilon)" : "", cfg.delta);
	else if (!o.quiet && cfg.async_k > 0)
		fprintf(stderr, "shoal-sim: asynchronous rounds: every %" PRIu32 " updates, %" PRIu32
		        " clients training at once, max staleness %" PRIu32 "\n", cfg.async_k,
		        cfg.concurrency > 0 ? cfg.concurrency : cfg.clients_per_round,
		        cfg.max_staleness);
	else if (!o.quiet && cfg.sampling == SRV_SAMPLING_POISSON)
		fprintf(stderr, "shoal-sim: Poisson sampling, q=%g (--clients-per-round not used)\n",
		        cfg.sample_rate);

	if (o.virtual_net) {
		int vr = run_virtual(&o, core, clients, &sh, &cfg, metrics, &totals);

		if (vr == 1)
			goto out;
		if (metrics != NULL && fclose(metrics) != 0) {
			metrics = NULL;
			log_error("cannot write metrics file '%s'", o.metrics);
			goto out;
		}
		metrics = NULL;
		if (sim_mpi_rank() == 0)
			print_summary(&o, core, &totals, &cfg, t0, vr == 130);
		status = vr == 130 ? 130 : 0;
		goto out;
	}
	launch.clients = clients;
	launch.n = o.clients;
	launch.totals = &totals;
	const char *urls[1] = {sh.url};
	srv_serve_opts so = {
		.listen = urls,
		.n_listen = 1,
		.max_message = cfg.max_message,
		.metrics = metrics,
		.progress = !o.quiet,
		.stop = &g_stop,
		.linger_ms = SIM_LINGER_MS,
		.on_listening = start_clients,
		.on_round = on_round,
		.user = &launch,
		.rounds = o.rounds,
	};
	e = srv_serve(core, &so);
	/* Clients that did not hear DONE during the linger stop now. */
	bool interrupted = g_stop != 0 && !g_client_failed;
	g_stop = 1;
	uint32_t client_failures = 0;
	for (uint32_t i = 0; i < o.clients; i++) {
		if (!clients[i].started)
			continue;
		pthread_join(clients[i].thread, NULL);
		if (clients[i].result != SHOAL_OK)
			client_failures++;
	}
	if (metrics != NULL && fclose(metrics) != 0) {
		log_error("cannot write metrics file '%s'", o.metrics);
		metrics = NULL;
		goto out;
	}
	metrics = NULL;
	if (e != SHOAL_OK && !(e == SHOAL_ECLOSED && interrupted)) {
		log_error("server driver failed: %s", shoal_strerror(e));
		goto out;
	}
	if (launch.failed || g_client_failed) {
		log_error("the simulation stopped because a client failed");
		goto out;
	}

	print_summary(&o, core, &totals, &cfg, t0, interrupted);
	if (client_failures > 0 && !interrupted)
		log_debug("%" PRIu32 " clients were stopped before they heard DONE",
		          client_failures);
	status = interrupted ? 130 : 0;
out:
	if (have_sock_dir) {
		snprintf(sock_path, sizeof sock_path, "%s/server", sock_dir);
		unlink(sock_path);
		rmdir(sock_dir);
	}
	if (metrics != NULL)
		fclose(metrics);
	free(clients);
	if (pool_ready)
		pool_fini(&sh.pool);
	if (core != NULL)
		srv_core_free(core);
	if (part.start != NULL)
		ml_partition_fini(&part);
	ml_subsets_fini(&subsets);
	if (data_ready) {
		ml_dataset_fini(&test);
		ml_dataset_fini(&train);
	}
	return sim_mpi_exit(status);
}
