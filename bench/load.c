/* load.c (bench) - shoal-bench load: many concurrent clients against a real
 * shoal-server (issue 8, item 6).
 *
 * Starts shoal-server as a child process on tcp://127.0.0.1 and N clients
 * in this process: each a thread running libshoal-client
 * (include/shoal/client.h) with its own REQ socket (its own TCP
 * connection), training logistic regression on its IID share of MNIST
 * (60000/N examples), with the server's default limits (rate limit,
 * connection limit) and update encoding. Every round selects K clients (by
 * default all N) and waits for all N to check in before round 1.
 *
 * Checks (exit status 1 if any fails):
 *  - counted once: for every round, the server's accepted updates
 *    ("clients" in its metrics line) equal the clients that got an ACK (or
 *    a duplicate's confirmation) for that round, no client saw a round
 *    acknowledged twice, and the totals agree;
 *  - no starvation: every client got DONE (the server answered it to the
 *    end), none was refused by a limit (metrics "refused" holds no "rate"
 *    or "connections"), and with K = N every client trained and had its
 *    update accepted in every round (no round dropped anyone);
 *  - the run ends within --timeout.
 * Figures, one JSON line each ({"bench": "load", ...}): the server's peak
 * RSS (VmHWM via wait4's ru_maxrss), its CPU seconds per round (user +
 * system from /proc/PID/stat, sampled as each metrics line appears; round
 * 1 also holds start-up and the N registrations, so it is reported apart
 * and the per-round figure is the mean of rounds 2..R), total CPU, round
 * wall times, updates counted, the longest any client waited for its first
 * task and the most transport timeouts one client saw.
 * Needs about 2N file descriptors between the two processes: the soft
 * limit is raised to the hard one. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "common/log.h"
#include "ml/ml.h"
#include "shoal/client.h"

#define LOAD_MAX_CLIENTS 60000u
#define LOAD_MAX_ROUNDS 10000u
#define LOAD_STACK (1u << 20)

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: shoal-bench load [options]\n"
	        "\n"
	        "N clients (threads of this process, one TCP connection each) against a\n"
	        "shoal-server child on tcp://127.0.0.1, logistic regression on MNIST; checks\n"
	        "that every accepted update is counted exactly once and that no client is\n"
	        "starved, and reports the server's peak RSS and CPU per round (bench/load.c).\n"
	        "  --clients N       concurrent clients (default 1000)\n"
	        "  --rounds R        rounds (default 20)\n"
	        "  --per-round K     clients selected per round (default N: all)\n"
	        "  --hold MS         server --hold (default 2000)\n"
	        "  --compress SPEC   server --compress (default: the server's, topk:0.01,q8)\n"
	        "  --timeout S       give up after S seconds (default 900)\n"
	        "  --server PATH     shoal-server to run (default: beside this program)\n"
	        "  --data-dir DIR    MNIST IDX folder (default data)\n"
	        "  --keep            keep the server's log and metrics (in /tmp)\n"
	        "Exit status: 0 all checks passed, 1 a check failed, 2 usage.\n");
}

typedef struct load load;

typedef struct lclient {
	load *L;
	uint32_t i;
	char name[32];
	const uint32_t *idx;
	size_t n;
	ml_model *m;
	uint16_t *acked;        /* [rounds + 1]: acknowledgements of round r */
	uint32_t trained;
	double first_train_s;   /* since the clients started; < 0: never */
	shoal_client_stats st;
	shoal_err err;
	pthread_t thr;
	bool started;
} lclient;

struct load {
	uint32_t n, rounds, per_round, hold_ms;
	const char *compress;
	const ml_dataset *ds;
	char url[64];
	double t0;
	volatile sig_atomic_t stop;
	lclient *c;
};

static int
load_train(void *user, float *params, size_t dim, const shoal_train_info *info,
           uint32_t *n_examples, float *loss)
{
	lclient *c = user;
	ml_sgd_config sgd = {0};
	double mean = 0.0;
	size_t batch = info->batch < c->n ? info->batch : c->n;

	(void)dim;
	if (c->m == NULL && ml_model_new("logreg", batch, &c->m) != SHOAL_OK)
		return -1;
	sgd.epochs = info->epochs;
	sgd.batch = (uint32_t)batch;
	sgd.lr = info->lr;
	sgd.seed = info->seed;
	sgd.momentum = info->momentum;
	sgd.weight_decay = info->weight_decay;
	sgd.prox_mu = info->prox_mu;
	if (ml_train_sgd(c->m, params, c->L->ds, c->idx, c->n, &sgd, &mean) != SHOAL_OK)
		return -1;
	if (c->trained++ == 0)
		c->first_train_s = bench_now_s() - c->L->t0;
	*n_examples = (uint32_t)c->n;
	*loss = (float)mean;
	return 0;
}

static void
load_on_ack(void *user, uint32_t round)
{
	lclient *c = user;

	if (round >= 1 && round <= c->L->rounds && c->acked[round] < UINT16_MAX)
		c->acked[round]++;
}

static void *
client_main(void *arg)
{
	lclient *c = arg;
	shoal_client_options o;

	shoal_client_options_init(&o);
	o.url = c->L->url;
	o.name = c->name;
	o.model = "logreg";
	o.dim = ml_model_dim_of("logreg");
	o.n_examples = (uint32_t)c->n;
	o.train = load_train;
	o.user = c;
	o.on_ack = load_on_ack;
	o.seed = 0x10ad0000u + c->i;
	o.stop = &c->L->stop;
	c->err = shoal_client_run(&o, &c->st);
	return NULL;
}

/* ---- the server process ---- */

/* CPU seconds of pid so far: the sum over its threads of the time on a
 * CPU (/proc/PID/task/T/schedstat, nanoseconds), or utime + stime from
 * /proc/PID/stat (clock ticks, 10 ms) where schedstat is missing. */
static double
proc_cpu_s(pid_t pid)
{
	char path[PATH_MAX], buf[1024], *p;
	unsigned long ut = 0, st = 0;
	FILE *f;
	size_t n;
	DIR *d;
	struct dirent *de;
	double ns = 0.0;
	bool any = false;

	snprintf(path, sizeof path, "/proc/%ld/task", (long)pid);
	if ((d = opendir(path)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			unsigned long long run;
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof path, "/proc/%ld/task/%.32s/schedstat", (long)pid,
			         de->d_name);
			if ((f = fopen(path, "r")) == NULL)
				continue;
			if (fscanf(f, "%llu", &run) == 1) {
				ns += (double)run;
				any = true;
			}
			fclose(f);
		}
		closedir(d);
		if (any)
			return ns * 1e-9;
	}

	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1.0;
	n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields after the command name, which may hold spaces: from the last ')'. */
	if ((p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1.0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int
free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd < 0)
		return -1;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static bool
port_open(int port)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	bool ok;

	if (fd < 0)
		return false;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
	close(fd);
	return ok;
}

static void
beside_self(const char *name, char *out, size_t n)
{
	char self[PATH_MAX];
	ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
	char *slash;

	self[k > 0 ? k : 0] = '\0';
	slash = strrchr(self, '/');
	if (slash != NULL)
		*slash = '\0';
	snprintf(out, n, "%.3900s/%.100s", slash != NULL ? self : ".", name);
}

/* One metrics line, as far as the checks need it. */
typedef struct mline {
	long round, clients, selected, dropped, rate, conns;
	bool abandoned;
	double cpu_s, wall_s, rss; /* the server's, when the line appeared */
} mline;

/* Parse complete lines of the metrics file from *off on; true if a line
 * was bad. Sets cpu/wall of the new lines to the values given. */
static bool
read_lines(const char *path, long *off, mline *v, uint32_t max, uint32_t *n, double cpu,
           double wall, double rss)
{
	char line[8192];
	FILE *f = fopen(path, "r");
	bool bad = false;

	if (f == NULL)
		return false;
	if (fseek(f, *off, SEEK_SET) != 0) {
		fclose(f);
		return false;
	}
	while (fgets(line, sizeof line, f) != NULL) {
		size_t len = strlen(line);
		json_t *o, *r;

		if (len == 0 || line[len - 1] != '\n')
			break; /* not complete yet */
		*off += (long)len;
		if ((o = json_loads(line, 0, NULL)) == NULL || *n >= max) {
			json_decref(o);
			bad = true;
			continue;
		}
		mline *m = &v[(*n)++];
		memset(m, 0, sizeof *m);
		m->round = (long)json_integer_value(json_object_get(o, "round"));
		m->clients = (long)json_integer_value(json_object_get(o, "clients"));
		m->selected = (long)json_integer_value(json_object_get(o, "selected"));
		m->dropped = (long)json_integer_value(json_object_get(o, "dropped"));
		m->abandoned = json_is_true(json_object_get(o, "abandoned"));
		r = json_object_get(o, "refused");
		m->rate = (long)json_integer_value(json_object_get(r, "rate"));
		m->conns = (long)json_integer_value(json_object_get(r, "connections"));
		m->cpu_s = cpu;
		m->wall_s = wall;
		m->rss = rss;
		json_decref(o);
	}
	fclose(f);
	return bad;
}

static void
emit(const char *name, json_t *base, double v, const char *unit)
{
	json_t *p = json_deep_copy(base);

	json_object_set_new(p, "figure", json_string(name));
	bench_emit("load", p, v, unit);
	json_decref(p);
}

static int
parse_u32(const char *flag, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
		fprintf(stderr, "shoal-bench load: %s '%s': expected %u..%u\n", flag, s, lo, hi);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

int
bench_load(int argc, char **argv)
{
	load L;
	const char *dir = "data", *server_path = NULL;
	char server_buf[PATH_MAX], tmp[] = "/tmp/shoal-load-XXXXXX", metrics[PATH_MAX],
	     log_path[PATH_MAX], hold_s[16], linger_s[16], rounds_s[16], k_s[16], n_s[16], port_s[64];
	uint32_t timeout_s = 900;
	bool keep = false, failed = false, have_tmp = false;
	ml_dataset ds;
	ml_partition pt;
	mline *lines = NULL;
	uint32_t n_lines = 0;
	long off = 0;
	pid_t server = -1;
	int ws = 0, rc = 1, port;
	struct rusage ru;
	struct rlimit rl;
	json_t *base = NULL;
	double server_start, t_end;

	memset(&L, 0, sizeof L);
	memset(&ds, 0, sizeof ds);
	memset(&pt, 0, sizeof pt);
	memset(&ru, 0, sizeof ru);
	L.n = 1000;
	L.rounds = 20;
	L.hold_ms = 2000;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--keep") == 0) {
			keep = true;
			continue;
		}
		if (v == NULL) {
			fprintf(stderr, "shoal-bench load: %s needs a value\n", a);
			return 2;
		}
		i++;
		if (strcmp(a, "--clients") == 0) {
			if (parse_u32(a, v, 1, LOAD_MAX_CLIENTS, &L.n) != 0)
				return 2;
		} else if (strcmp(a, "--rounds") == 0) {
			if (parse_u32(a, v, 1, LOAD_MAX_ROUNDS, &L.rounds) != 0)
				return 2;
		} else if (strcmp(a, "--per-round") == 0) {
			if (parse_u32(a, v, 1, LOAD_MAX_CLIENTS, &L.per_round) != 0)
				return 2;
		} else if (strcmp(a, "--hold") == 0) {
			if (parse_u32(a, v, 0, 600000, &L.hold_ms) != 0)
				return 2;
		} else if (strcmp(a, "--timeout") == 0) {
			if (parse_u32(a, v, 1, 86400, &timeout_s) != 0)
				return 2;
		} else if (strcmp(a, "--compress") == 0) {
			L.compress = v;
		} else if (strcmp(a, "--server") == 0) {
			server_path = v;
		} else if (strcmp(a, "--data-dir") == 0) {
			dir = v;
		} else {
			fprintf(stderr, "shoal-bench load: unknown option '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (L.per_round == 0 || L.per_round > L.n)
		L.per_round = L.n;
	if (server_path == NULL) {
		beside_self("shoal-server", server_buf, sizeof server_buf);
		server_path = server_buf;
	}
	log_set_level(LOG_WARN);
	ml_set_blas_threads(1);
	setenv("OPENBLAS_NUM_THREADS", "1", 1); /* the server's */

	/* Descriptors: N client sockets here (and N in the server, which
	 * raises its own limit). */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < (rlim_t)L.n + 256) {
		fprintf(stderr, "shoal-bench load: %u clients need about %u open files, the limit is "
		        "%llu: raise it (ulimit -n; the hard limit is %llu)\n", L.n, L.n + 256,
		        (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
		return 1;
	}

	if (ml_mnist_load(dir, "train", &ds) != SHOAL_OK ||
	    ml_partition_make("iid", &ds, L.n, 1, &pt) != SHOAL_OK) {
		fprintf(stderr, "shoal-bench load: cannot load MNIST from '%s' (scripts/setup.sh)\n",
		        dir);
		goto done;
	}
	L.ds = &ds;
	if ((L.c = calloc(L.n, sizeof *L.c)) == NULL ||
	    (lines = calloc(L.rounds + 16, sizeof *lines)) == NULL)
		goto done;
	for (uint32_t i = 0; i < L.n; i++) {
		lclient *c = &L.c[i];
		c->L = &L;
		c->i = i;
		snprintf(c->name, sizeof c->name, "load-%05u", i);
		c->idx = pt.idx + pt.start[i];
		c->n = pt.start[i + 1] - pt.start[i];
		c->first_train_s = -1.0;
		if ((c->acked = calloc(L.rounds + 1, sizeof *c->acked)) == NULL)
			goto done;
	}

	/* The server. */
	if (mkdtemp(tmp) == NULL || (port = free_port()) < 0)
		goto done;
	have_tmp = true;
	snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", tmp);
	snprintf(log_path, sizeof log_path, "%s/server.log", tmp);
	snprintf(L.url, sizeof L.url, "tcp://127.0.0.1:%d", port);
	snprintf(port_s, sizeof port_s, "%s", L.url);
	snprintf(hold_s, sizeof hold_s, "%u", L.hold_ms);
	/* After the last round every client's next check-in gets DONE: one
	 * hold (a check-in parked then) and a margin. */
	snprintf(linger_s, sizeof linger_s, "%u", L.hold_ms + 3000);
	snprintf(rounds_s, sizeof rounds_s, "%u", L.rounds);
	snprintf(k_s, sizeof k_s, "%u", L.per_round);
	snprintf(n_s, sizeof n_s, "%u", L.n);
	fprintf(stderr, "load: %u clients, %u rounds of %u, server %s on %s (log %s)\n", L.n,
	        L.rounds, L.per_round, server_path, L.url, log_path);
	server_start = bench_now_s();
	server = fork();
	if (server == 0) {
		const char *av[40];
		int k = 0, fd;

		av[k++] = server_path;
		av[k++] = "--listen";
		av[k++] = port_s;
		av[k++] = "--model";
		av[k++] = "logreg";
		av[k++] = "--rounds";
		av[k++] = rounds_s;
		av[k++] = "--clients-per-round";
		av[k++] = k_s;
		av[k++] = "--min-clients";
		av[k++] = n_s;
		av[k++] = "--hold";
		av[k++] = hold_s;
		av[k++] = "--round-timeout";
		av[k++] = "600";
		av[k++] = "--linger";
		av[k++] = linger_s;
		av[k++] = "--metrics";
		av[k++] = metrics;
		av[k++] = "--data-dir";
		av[k++] = dir;
		if (L.compress != NULL) {
			av[k++] = "--compress";
			av[k++] = L.compress;
		}
		av[k] = NULL;
		if ((fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(server_path, (char *const *)av);
		_exit(127);
	}
	if (server < 0)
		goto done;
	while (!port_open(port)) {
		if (waitpid(server, &ws, WNOHANG) == server) {
			fprintf(stderr, "load: shoal-server exited at start; see %s\n", log_path);
			server = -1;
			keep = true;
			goto done;
		}
		if (bench_now_s() - server_start > 60) {
			fprintf(stderr, "load: shoal-server does not listen; see %s\n", log_path);
			keep = true;
			goto done;
		}
		struct timespec ts = {0, 20 * 1000000L};
		nanosleep(&ts, NULL);
	}
	double cpu_listening = proc_cpu_s(server);

	/* The clients. */
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, LOAD_STACK);
	L.t0 = bench_now_s();
	for (uint32_t i = 0; i < L.n; i++) {
		if (pthread_create(&L.c[i].thr, &attr, client_main, &L.c[i]) != 0) {
			fprintf(stderr, "load: cannot start client thread %u: %s\n", i, strerror(errno));
			L.stop = 1;
			failed = true;
			break;
		}
		L.c[i].started = true;
	}
	pthread_attr_destroy(&attr);

	/* Watch the metrics as rounds end; wait for the server. */
	for (;;) {
		double now = bench_now_s();
		pid_t w = wait4(server, &ws, WNOHANG, &ru);

		if (w != server) {
			double cpu = proc_cpu_s(server);
			if (read_lines(metrics, &off, lines, L.rounds + 16, &n_lines, cpu, now - L.t0,
			               bench_status_bytes((long)server, "VmHWM")))
				failed = true;
		}
		if (w == server) {
			server = -1;
			read_lines(metrics, &off, lines, L.rounds + 16, &n_lines, -1.0, now - L.t0, 0.0);
			break;
		}
		if (now - L.t0 > timeout_s) {
			fprintf(stderr, "load: FAIL: not done after %u s\n", timeout_s);
			failed = true;
			keep = true;
			break;
		}
		struct timespec ts = {0, 20 * 1000000L};
		nanosleep(&ts, NULL);
	}
	t_end = bench_now_s();
	if (server > 0) {
		kill(server, SIGKILL);
		waitpid(server, &ws, 0);
		server = -1;
	} else if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
		fprintf(stderr, "load: FAIL: shoal-server exited with status %d\n",
		        WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws));
		failed = true;
		keep = true;
	}
	/* Clients heard DONE during the server's linger; stop any that did not. */
	L.stop = 1;
	for (uint32_t i = 0; i < L.n; i++)
		if (L.c[i].started)
			pthread_join(L.c[i].thr, NULL);

	/* ---- checks ---- */
	uint64_t server_total = 0, client_total = 0;
	uint32_t not_done = 0, short_trained = 0, max_terr = 0, twice = 0;
	long rate_refused = 0, conns_refused = 0;
	double first_max = 0.0;

	if (n_lines != L.rounds) {
		fprintf(stderr, "load: FAIL: %u metrics lines for %u rounds\n", n_lines, L.rounds);
		failed = true;
	}
	for (uint32_t k = 0; k < n_lines; k++) {
		const mline *m = &lines[k];
		uint32_t got = 0;

		if (m->round < 1 || m->round > (long)L.rounds) {
			failed = true;
			continue;
		}
		for (uint32_t i = 0; i < L.n; i++) {
			got += L.c[i].acked[m->round] > 0;
			twice += L.c[i].acked[m->round] > 1;
		}
		server_total += (uint64_t)m->clients;
		rate_refused += m->rate;
		conns_refused += m->conns;
		if ((long)got != m->clients) {
			fprintf(stderr, "load: FAIL: round %ld: the server counted %ld updates, %u clients "
			        "were acknowledged\n", m->round, m->clients, got);
			failed = true;
		}
		if (m->abandoned || (L.per_round == L.n && (m->clients != (long)L.n || m->dropped))) {
			fprintf(stderr, "load: FAIL: round %ld: %ld of %ld selected counted, %ld dropped%s\n",
			        m->round, m->clients, m->selected, m->dropped,
			        m->abandoned ? ", abandoned" : "");
			failed = true;
		}
	}
	for (uint32_t i = 0; i < L.n; i++) {
		const lclient *c = &L.c[i];

		client_total += c->st.updates_acked;
		not_done += c->err != SHOAL_OK;
		if (L.per_round == L.n && (c->trained != L.rounds || c->st.updates_acked != L.rounds))
			short_trained++;
		if (c->st.transport_errors > max_terr)
			max_terr = c->st.transport_errors;
		if (c->first_train_s > first_max)
			first_max = c->first_train_s;
	}
	if (server_total != client_total || twice > 0) {
		fprintf(stderr, "load: FAIL: the server counted %llu updates, clients were acknowledged "
		        "%llu times (%u round acknowledgements seen twice)\n",
		        (unsigned long long)server_total, (unsigned long long)client_total, twice);
		failed = true;
	}
	if (not_done > 0 || short_trained > 0) {
		fprintf(stderr, "load: FAIL: %u clients did not hear DONE, %u did not train and deliver "
		        "every round\n", not_done, short_trained);
		failed = true;
	}
	if (rate_refused > 0 || conns_refused > 0) {
		fprintf(stderr, "load: FAIL: the server's limits refused %ld requests and %ld "
		        "connections of well-behaved clients\n", rate_refused, conns_refused);
		failed = true;
	}

	/* ---- figures ---- */
	double peak_rss = (double)ru.ru_maxrss * 1024.0;
	double cpu_total = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
	                   (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
	double cpu_r1 = 0, cpu_rest = 0, cpu_max = 0, wall_r1 = 0, wall_rest = 0;
	uint32_t rest = 0;
	for (uint32_t k = 0; k < n_lines; k++) {
		double cpu = lines[k].cpu_s, prev = k > 0 ? lines[k - 1].cpu_s : cpu_listening;
		double wall = lines[k].wall_s - (k > 0 ? lines[k - 1].wall_s : 0.0);
		if (cpu < 0 || prev < 0)
			continue;
		if (k == 0) {
			cpu_r1 = cpu - prev;
			wall_r1 = wall;
		} else {
			cpu_rest += cpu - prev;
			wall_rest += wall;
			rest++;
			if (cpu - prev > cpu_max)
				cpu_max = cpu - prev;
		}
	}
	base = json_pack("{s:i, s:i, s:i, s:i, s:s}", "clients", (json_int_t)L.n, "rounds",
	                 (json_int_t)L.rounds, "per_round", (json_int_t)L.per_round, "hold_ms",
	                 (json_int_t)L.hold_ms, "compress",
	                 L.compress != NULL ? L.compress : "server default");
	emit("server_peak_rss", base, peak_rss / 1048576.0, "MiB");
	emit("server_cpu_per_round", base, rest > 0 ? cpu_rest / rest : cpu_r1, "s");
	emit("server_cpu_per_round_max", base, cpu_max, "s");
	emit("server_cpu_round1", base, cpu_r1, "s");
	emit("server_cpu_startup", base, cpu_listening, "s");
	emit("server_cpu_total", base, cpu_total, "s");
	emit("round_wall", base, rest > 0 ? wall_rest / rest : wall_r1, "s");
	emit("round1_wall", base, wall_r1, "s");
	emit("run_wall", base, t_end - L.t0, "s");
	emit("updates_counted", base, (double)server_total, "updates");
	emit("updates_acknowledged", base, (double)client_total, "updates");
	emit("first_task_wait_max", base, first_max, "s");
	emit("transport_timeouts_max", base, max_terr, "per client");
	emit("harness_peak_rss", base, bench_status_bytes(0, "VmHWM") / 1048576.0, "MiB");
	fprintf(stderr,
	        "load: %u clients x %u rounds (%u per round): server peak RSS %.1f MiB, CPU %.3f s "
	        "per round (rounds 2..%u; max %.3f; round 1 with registrations %.3f; start-up "
	        "%.3f; total %.2f s), round wall %.2f s (round 1 %.2f s); %llu updates counted by "
	        "the server, %llu acknowledged to clients; slowest first task %.1f s; at most %u "
	        "timeouts per client; %s\n",
	        L.n, L.rounds, L.per_round, peak_rss / 1048576.0, rest > 0 ? cpu_rest / rest : cpu_r1,
	        L.rounds, cpu_max, cpu_r1, cpu_listening, cpu_total,
	        rest > 0 ? wall_rest / rest : wall_r1, wall_r1, (unsigned long long)server_total,
	        (unsigned long long)client_total, first_max, max_terr, failed ? "FAIL" : "PASS");
	rc = failed ? 1 : 0;
done:
	if (server > 0) {
		kill(server, SIGKILL);
		waitpid(server, &ws, 0);
	}
	if (have_tmp) {
		if (keep || rc != 0) {
			fprintf(stderr, "load: server log and metrics kept in %s\n", tmp);
		} else {
			unlink(metrics);
			unlink(log_path);
			rmdir(tmp);
		}
	}
	json_decref(base);
	for (uint32_t i = 0; L.c != NULL && i < L.n; i++) {
		if (L.c[i].m != NULL)
			ml_model_free(L.c[i].m);
		free(L.c[i].acked);
	}
	free(L.c);
	free(lines);
	ml_partition_fini(&pt);
	ml_dataset_fini(&ds);
	return rc;
}
