/* test_e2e.c - end-to-end tests: real shoal-server and shoal-client
 * processes talking over loopback TCP, trained on real MNIST.
 *
 * Each case makes a temp dir, picks a free port, starts the processes with
 * fork/execv (stdout/stderr into files in the temp dir), waits for them with
 * a watchdog (everything is killed and the case fails after WATCHDOG_S), and
 * checks exit statuses, the server's JSON-lines metrics and the clients'
 * final stats line. On failure the logs' tails are printed and the temp dir
 * is kept (SHOAL_E2E_KEEP=1 keeps it on success too). No assertion depends
 * on wall-clock durations. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "common/msg.h"
#include "shoal/err.h"
#include "testutil.h"

#ifndef SHOAL_BIN_DIR
#define SHOAL_BIN_DIR "."
#endif
#ifndef SHOAL_DATA_DIR
#define SHOAL_DATA_DIR "data"
#endif

#define WATCHDOG_S 240   /* a case fails (and kills everything) after this */
#define MAX_PROCS 16
#define MAX_ARGS 48
#define LOGREG_DIM 7850   /* logreg parameters */

typedef struct proc {
	pid_t pid;       /* > 0 while not reaped */
	bool exited;
	int status;      /* waitpid status once exited */
	char name[32];
	char out[512], err[512];
} proc;

/* One case at a time: the state of the running case. */
static struct {
	char dir[256];
	char url[64];
	char metrics[512];
	int port;
	proc procs[MAX_PROCS];
	size_t n_procs;
	uint64_t deadline_ms;
} E;

/* An argv whose strings live in the struct. */
typedef struct args {
	char *v[MAX_ARGS + 1];
	char store[MAX_ARGS][512];
	int n;
} args;

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void
args_add(args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
args_add(args *a, const char *fmt, ...)
{
	va_list ap;

	assert_true(a->n < MAX_ARGS);
	va_start(ap, fmt);
	vsnprintf(a->store[a->n], sizeof a->store[a->n], fmt, ap);
	va_end(ap);
	a->v[a->n] = a->store[a->n];
	a->n++;
	a->v[a->n] = NULL;
}

/* ---- process control -------------------------------------------------- */

static void
kill_all(void)
{
	for (size_t i = 0; i < E.n_procs; i++) {
		proc *p = &E.procs[i];

		if (p->pid > 0 && !p->exited) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, &p->status, 0);
			p->exited = true;
		}
	}
}

/* Last resort when a case hangs outside our polling loops. */
static void
on_alarm(int sig)
{
	static const char m[] = "test_e2e: watchdog expired, killing all children\n";

	(void)sig;
	for (size_t i = 0; i < E.n_procs; i++)
		if (E.procs[i].pid > 0 && !E.procs[i].exited)
			kill(E.procs[i].pid, SIGKILL);
	if (write(STDERR_FILENO, m, sizeof m - 1) < 0) {
		/* nothing more to do */
	}
	_exit(1);
}

static void
print_tail(const char *label, const char *path, long max)
{
	FILE *f = fopen(path, "r");
	char buf[512];
	size_t n;
	long size;

	if (f == NULL)
		return;
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, size > max ? size - max : 0, SEEK_SET);
	fprintf(stderr, "----- %s (%s, last %ld bytes) -----\n", label, path, max);
	while ((n = fread(buf, 1, sizeof buf, f)) > 0)
		fwrite(buf, 1, n, stderr);
	fclose(f);
}

/* Fail the case: show the logs, kill the children, keep the temp dir. */
static void
die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
die(const char *fmt, ...)
{
	char text[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	kill_all();
	for (size_t i = 0; i < E.n_procs; i++) {
		char label[80];

		snprintf(label, sizeof label, "%s stderr", E.procs[i].name);
		print_tail(label, E.procs[i].err, 3000);
		snprintf(label, sizeof label, "%s stdout", E.procs[i].name);
		print_tail(label, E.procs[i].out, 600);
	}
	print_tail("metrics", E.metrics, 4000);
	fprintf(stderr, "----- logs kept in %s -----\n", E.dir);
	fail_msg("%s", text);
}

#define CHECK(cond, ...)             \
	do {                             \
		if (!(cond))                 \
			die(__VA_ARGS__);        \
	} while (0)

static proc *
spawn(const char *name, const args *a)
{
	proc *p;
	pid_t pid;
	int fo, fe, fi;
	char dir[sizeof E.dir];

	CHECK(E.n_procs < MAX_PROCS, "too many processes");
	p = &E.procs[E.n_procs];
	memset(p, 0, sizeof *p);
	memcpy(dir, E.dir, sizeof dir);
	snprintf(p->name, sizeof p->name, "%.31s", name);
	snprintf(p->out, sizeof p->out, "%.256s/%.31s.out", dir, name);
	snprintf(p->err, sizeof p->err, "%.256s/%.31s.err", dir, name);
	fo = open(p->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	fe = open(p->err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	fi = open("/dev/null", O_RDONLY | O_CLOEXEC);
	CHECK(fo >= 0 && fe >= 0 && fi >= 0, "cannot create log files in %s", E.dir);
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* Die with the test, whatever kills it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(fi, STDIN_FILENO);
		dup2(fo, STDOUT_FILENO);
		dup2(fe, STDERR_FILENO);
		execv(a->v[0], a->v);
		_exit(127);
	}
	close(fo);
	close(fe);
	close(fi);
	p->pid = pid;
	E.n_procs++;
	return p;
}

/* Reap p if it has exited; true once it has. */
static bool
poll_exit(proc *p)
{
	if (p->exited)
		return true;
	if (waitpid(p->pid, &p->status, WNOHANG) == p->pid)
		p->exited = true;
	return p->exited;
}

static void
wait_exit(proc *p)
{
	while (!poll_exit(p)) {
		CHECK(now_ms() < E.deadline_ms, "watchdog: %s (pid %d) did not exit within %d s",
		      p->name, (int)p->pid, WATCHDOG_S);
		sleep_ms(20);
	}
}

static void
expect_exit_code(proc *p, int code)
{
	wait_exit(p);
	CHECK(WIFEXITED(p->status), "%s was killed by signal %d", p->name,
	      WIFSIGNALED(p->status) ? WTERMSIG(p->status) : -1);
	CHECK(WEXITSTATUS(p->status) == code, "%s exited with %d, expected %d", p->name,
	      WEXITSTATUS(p->status), code);
}

/* ---- files ------------------------------------------------------------ */

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	if (buf != NULL) {
		n = (long)fread(buf, 1, (size_t)n, f);
		buf[n] = '\0';
	}
	fclose(f);
	return buf;
}

static bool
file_contains(const char *path, const char *needle)
{
	char *s = slurp(path);
	bool found = s != NULL && strstr(s, needle) != NULL;

	free(s);
	return found;
}

static size_t
count_lines(const char *path)
{
	char *s = slurp(path);
	size_t n = 0;

	for (char *c = s; c != NULL && *c != '\0'; c++)
		n += *c == '\n';
	free(s);
	return n;
}

/* Wait until path contains needle; fail if `watch` exits first. */
static void
wait_for_text(const char *path, const char *needle, proc *watch)
{
	while (!file_contains(path, needle)) {
		CHECK(watch == NULL || !poll_exit(watch), "%s exited while waiting for '%s' in %s",
		      watch ? watch->name : "", needle, path);
		CHECK(now_ms() < E.deadline_ms, "watchdog: '%s' never appeared in %s", needle, path);
		sleep_ms(50);
	}
}

static void
wait_for_lines(const char *path, size_t n, proc *watch)
{
	while (count_lines(path) < n) {
		CHECK(watch == NULL || !poll_exit(watch), "%s exited while waiting for %zu lines in %s",
		      watch ? watch->name : "", n, path);
		CHECK(now_ms() < E.deadline_ms, "watchdog: %s never reached %zu lines", path, n);
		sleep_ms(50);
	}
}

/* ---- setup ------------------------------------------------------------ */

static int
free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	assert_true(fd >= 0);
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = 0;
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static void
cleanup_at_exit(void)
{
	kill_all();
}

static void
e2e_begin(void)
{
	static bool once;
	struct sigaction sa;
	char path[PATH_MAX];

	snprintf(path, sizeof path, "%s/t10k-images-idx3-ubyte", SHOAL_DATA_DIR);
	if (access(path, R_OK) != 0) {
		fprintf(stderr, "MNIST not found in %s (run scripts/setup.sh); skipping\n",
		        SHOAL_DATA_DIR);
		skip();
	}
	if (!once) {
		atexit(cleanup_at_exit);
		once = true;
	}
	memset(&E, 0, sizeof E);
	snprintf(E.dir, sizeof E.dir, "%.200s/shoal-e2e-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(E.dir));
	snprintf(E.metrics, sizeof E.metrics, "%.256s/metrics.jsonl", E.dir);
	E.port = free_port();
	snprintf(E.url, sizeof E.url, "tcp://127.0.0.1:%d", E.port);
	E.deadline_ms = now_ms() + WATCHDOG_S * 1000u;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	alarm(WATCHDOG_S + 30);
	signal(SIGPIPE, SIG_IGN);
	/* Six processes share few cores: one BLAS thread each. */
	setenv("OPENBLAS_NUM_THREADS", "1", 1);
}

/* Success: nothing may be left running; remove the temp dir (kept when
 * SHOAL_E2E_KEEP is set, to read the logs of a passing run). */
static void
e2e_end(void)
{
	DIR *d;
	struct dirent *de;
	char path[PATH_MAX + 256];

	kill_all();
	alarm(0);
	E.n_procs = 0;
	if (getenv("SHOAL_E2E_KEEP") != NULL) {
		fprintf(stderr, "logs kept in %s\n", E.dir);
		return;
	}
	if ((d = opendir(E.dir)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof path, "%s/%s", E.dir, de->d_name);
			unlink(path);
		}
		closedir(d);
	}
	rmdir(E.dir);
}

/* --secagg mode of the servers the next test starts (NULL: plain). */
static const char *server_secagg;

/* shoal-server with the common flags; add more with args_add. */
static void
server_args(args *a)
{
	memset(a, 0, sizeof *a);
	args_add(a, "%s/shoal-server", SHOAL_BIN_DIR);
	args_add(a, "--listen");
	args_add(a, "%s", E.url);
	args_add(a, "--model");
	args_add(a, "logreg");
	args_add(a, "--data-dir");
	args_add(a, "%s", SHOAL_DATA_DIR);
	args_add(a, "--metrics");
	args_add(a, "%s", E.metrics);
	args_add(a, "--hold");
	args_add(a, "500");
	args_add(a, "--linger");
	args_add(a, "2000");
	args_add(a, "--seed");
	args_add(a, "7");
	/* Dense updates unless a test asks otherwise (a later flag wins). */
	args_add(a, "--compress");
	args_add(a, "none");
	if (server_secagg != NULL) {
		args_add(a, "--secagg");
		args_add(a, "%s", server_secagg);
	}
}

static proc *
start_client(const char *label, int i, int n, uint32_t train_delay_ms)
{
	args a;

	memset(&a, 0, sizeof a);
	args_add(&a, "%s/shoal-client", SHOAL_BIN_DIR);
	args_add(&a, "--connect");
	args_add(&a, "%s", E.url);
	args_add(&a, "--data-dir");
	args_add(&a, "%s", SHOAL_DATA_DIR);
	args_add(&a, "--model");
	args_add(&a, "logreg");
	args_add(&a, "--partition");
	args_add(&a, "%d/%d", i, n);
	args_add(&a, "--name");
	args_add(&a, "e2e-client-%d", i);
	if (train_delay_ms > 0) {
		args_add(&a, "--train-delay");
		args_add(&a, "%u", train_delay_ms);
	}
	return spawn(label, &a);
}

typedef struct client_stats {
	unsigned trained, acked, late;
} client_stats;

static client_stats
client_result(proc *p)
{
	client_stats st = {0, 0, 0};
	char *s;
	const char *line;

	expect_exit_code(p, 0);
	s = slurp(p->out);
	line = s ? strstr(s, "shoal-client: rounds_trained=") : NULL;
	if (line == NULL || sscanf(line, "shoal-client: rounds_trained=%u updates_acked=%u "
	                           "updates_late=%u", &st.trained, &st.acked, &st.late) != 3) {
		free(s);
		die("%s printed no stats line", p->name);
	}
	free(s);
	return st;
}

/* ---- metrics ---------------------------------------------------------- */

#define MAX_ROUNDS 16

typedef struct round_line {
	long round, clients, dropped;
	double accuracy, loss;
	bool has_accuracy;
	bool abandoned;
	long long bytes_up, bytes_down;
} round_line;

/* Parse the metrics file; every line must be an object with the shared
 * keys. Returns the number of lines. */
static size_t
read_metrics(round_line *out, size_t max)
{
	static const char *keys[] = {"round", "accuracy", "loss", "clients", "dropped",
	                             "bytes_up", "bytes_down"};
	char *s = slurp(E.metrics), *save = NULL, *line;
	size_t n = 0;

	CHECK(s != NULL, "no metrics file %s", E.metrics);
	for (line = strtok_r(s, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		json_error_t jerr;
		json_t *o = json_loads(line, 0, &jerr);
		round_line *r = &out[n];

		if (!json_is_object(o)) {
			free(s);
			die("metrics line %zu is not a JSON object: %s", n + 1, jerr.text);
		}
		for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
			if (json_object_get(o, keys[k]) == NULL) {
				json_decref(o);
				free(s);
				die("metrics line %zu lacks key '%s'", n + 1, keys[k]);
			}
		}
		if (n == max) {
			json_decref(o);
			free(s);
			die("more than %zu metrics lines", max);
		}
		memset(r, 0, sizeof *r);
		r->round = (long)json_integer_value(json_object_get(o, "round"));
		r->clients = (long)json_integer_value(json_object_get(o, "clients"));
		r->dropped = (long)json_integer_value(json_object_get(o, "dropped"));
		r->bytes_up = (long long)json_integer_value(json_object_get(o, "bytes_up"));
		r->bytes_down = (long long)json_integer_value(json_object_get(o, "bytes_down"));
		r->has_accuracy = json_is_number(json_object_get(o, "accuracy"));
		r->accuracy = json_number_value(json_object_get(o, "accuracy"));
		r->loss = json_number_value(json_object_get(o, "loss"));
		r->abandoned = json_is_true(json_object_get(o, "abandoned"));
		json_decref(o);
		n++;
	}
	free(s);
	return n;
}

static void
check_full_round(const round_line *r, long round, long clients)
{
	CHECK(r->round == round, "metrics: round %ld where %ld expected", r->round, round);
	CHECK(!r->abandoned, "round %ld abandoned", round);
	CHECK(r->clients == clients, "round %ld counted %ld clients, expected %ld", round,
	      r->clients, clients);
	CHECK(r->dropped == 0, "round %ld dropped %ld clients", round, r->dropped);
	CHECK(r->bytes_up > 0 && r->bytes_down > 0, "round %ld: bytes_up %lld bytes_down %lld",
	      round, r->bytes_up, r->bytes_down);
}

static void
check_accuracy(const round_line *r)
{
	CHECK(r->has_accuracy && r->accuracy >= 0.85,
	      "round %ld: test accuracy %.4f, expected >= 0.85", r->round, r->accuracy);
}

/* ---- raw and protocol-level garbage ------------------------------------ */

static int
tcp_connect(void)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)E.port);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void
wait_listening(proc *server)
{
	int fd;

	while ((fd = tcp_connect()) < 0) {
		CHECK(!poll_exit(server), "server exited before listening");
		CHECK(now_ms() < E.deadline_ms, "watchdog: server never listened on %s", E.url);
		sleep_ms(50);
	}
	close(fd);
}

static void
fill_random(uint8_t *buf, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		buf[i] = (uint8_t)(seed >> 56);
	}
}

/* Write buf on a fresh TCP connection, then read whatever comes back until
 * the server closes or a short while passes. Nothing is asserted: the
 * point is that the server survives. */
static void
tcp_garbage(const uint8_t *buf, size_t len)
{
	int fd = tcp_connect();
	struct pollfd pfd;
	uint8_t sink[512];
	uint64_t until = now_ms() + 2000;

	CHECK(fd >= 0, "cannot connect to the server at %s", E.url);
	if (send(fd, buf, len, MSG_NOSIGNAL) < 0) {
		/* the server may already have dropped us */
	}
	pfd.fd = fd;
	pfd.events = POLLIN;
	while (now_ms() < until && poll(&pfd, 1, 100) >= 0) {
		if (pfd.revents != 0 && recv(fd, sink, sizeof sink, 0) <= 0)
			break;
	}
	close(fd);
}

/* Send one request with a REQ socket, decode the reply (must be an ERROR);
 * returns its code. */
static int32_t
req_error_code(const uint8_t *req, size_t len)
{
	nng_socket s;
	void *rbuf = NULL;
	size_t rlen = 0;
	msg m;
	long used;
	int rv;

	CHECK(nng_req0_open(&s) == 0, "nng_req0_open failed");
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 20000);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 20000);
	rv = nng_dial(s, E.url, NULL, 0);
	if (rv != 0) {
		nng_close(s);
		die("nng_dial %s: %s", E.url, nng_strerror(rv));
	}
	rv = nng_send(s, (void *)req, len, 0);
	if (rv == 0)
		rv = nng_recv(s, &rbuf, &rlen, NNG_FLAG_ALLOC);
	if (rv != 0) {
		nng_close(s);
		die("REQ round trip to %s failed: %s", E.url, nng_strerror(rv));
	}
	used = msg_decode(rbuf, rlen, &m);
	nng_free(rbuf, rlen);
	nng_close(s);
	CHECK(used == (long)rlen, "reply does not decode: %ld (%s)", used,
	      used < 0 ? shoal_strerror((shoal_err)used) : "trailing bytes");
	CHECK(m.type == MSG_ERROR, "reply is %s, expected ERROR", msg_type_name(m.type));
	return m.code;
}

/* ---- cases ------------------------------------------------------------- */

static void
e2e_five_clients_three_rounds(void **state)
{
	args a;
	proc *server, *clients[5];
	round_line r[MAX_ROUNDS];
	size_t n;

	(void)state;
	e2e_begin();
	server_args(&a);
	args_add(&a, "--rounds");
	args_add(&a, "3");
	args_add(&a, "--clients-per-round");
	args_add(&a, "5");
	args_add(&a, "--min-clients");
	args_add(&a, "5");
	server = spawn("server", &a);
	for (int i = 0; i < 5; i++) {
		char label[16];

		snprintf(label, sizeof label, "client%d", i);
		clients[i] = start_client(label, i, 5, 0);
	}
	expect_exit_code(server, 0);
	for (int i = 0; i < 5; i++) {
		client_stats st = client_result(clients[i]);

		CHECK(st.acked == 3 && st.trained == 3 && st.late == 0,
		      "client%d: trained %u acked %u late %u, expected 3/3/0", i, st.trained,
		      st.acked, st.late);
	}
	n = read_metrics(r, MAX_ROUNDS);
	CHECK(n == 3, "%zu metrics lines, expected 3", n);
	for (size_t i = 0; i < n; i++)
		check_full_round(&r[i], (long)i + 1, 5);
	check_accuracy(&r[2]);
	CHECK(file_contains(server->out, "shoal-server: finished rounds=3"),
	      "server printed no summary line");
	e2e_end();
}

/* Round 1 selects all 5 clients; client 0 sleeps in training and is
 * SIGKILLed. With --min-clients 5, later rounds need 5 clients, so a
 * restarted client 0 (same name, like a supervisor restart) joins after
 * round 1 ended. min_reports decides whether round 1 completes. */
static void
kill_mid_round(unsigned min_reports, unsigned rounds, round_line *r, size_t *n_lines,
               client_stats *survivors, client_stats *restarted)
{
	args a;
	proc *server, *clients[5], *victim, *replacement;
	char buf[16];

	e2e_begin();
	server_args(&a);
	args_add(&a, "--rounds");
	args_add(&a, "%u", rounds);
	args_add(&a, "--clients-per-round");
	args_add(&a, "5");
	args_add(&a, "--min-clients");
	args_add(&a, "5");
	args_add(&a, "--min-reports");
	args_add(&a, "%u", min_reports);
	args_add(&a, "--round-timeout");
	args_add(&a, "8");
	server = spawn("server", &a);
	for (int i = 0; i < 5; i++) {
		snprintf(buf, sizeof buf, "client%d", i);
		clients[i] = start_client(buf, i, 5, i == 0 ? 60000 : 0);
	}
	victim = clients[0];
	/* client 0 logs this as its train callback starts, before sleeping */
	wait_for_text(victim->err, "round 1: training", server);
	kill(victim->pid, SIGKILL);
	wait_exit(victim);
	/* Restart only once round 1 is over, so it cannot take part in it. */
	wait_for_lines(E.metrics, 1, server);
	replacement = start_client("client0-restarted", 0, 5, 0);

	expect_exit_code(server, 0);
	for (int i = 1; i < 5; i++)
		survivors[i - 1] = client_result(clients[i]);
	*restarted = client_result(replacement);
	*n_lines = read_metrics(r, MAX_ROUNDS);
	CHECK(*n_lines == rounds, "%zu metrics lines, expected %u", *n_lines, rounds);
	CHECK(r[0].round == 1, "first metrics line is round %ld", r[0].round);
}

static void
e2e_client_killed_mid_round_round_completes(void **state)
{
	round_line r[MAX_ROUNDS];
	client_stats surv[4], rest;
	size_t n;

	(void)state;
	kill_mid_round(4, 3, r, &n, surv, &rest);
	CHECK(!r[0].abandoned, "round 1 was abandoned with 4 of 5 reports and min-reports 4");
	CHECK(r[0].clients == 4 && r[0].dropped == 1, "round 1: clients %ld dropped %ld, "
	      "expected 4 and 1", r[0].clients, r[0].dropped);
	for (size_t i = 1; i < n; i++)
		check_full_round(&r[i], (long)i + 1, 5);
	check_accuracy(&r[n - 1]);
	for (int i = 0; i < 4; i++)
		CHECK(surv[i].acked == 3 && surv[i].late == 0, "client%d acked %u late %u, "
		      "expected 3 and 0", i + 1, surv[i].acked, surv[i].late);
	CHECK(rest.acked == 2, "restarted client acked %u, expected 2", rest.acked);
	e2e_end();
}

static void
e2e_client_killed_mid_round_round_abandoned(void **state)
{
	round_line r[MAX_ROUNDS];
	client_stats surv[4], rest;
	size_t n;

	(void)state;
	kill_mid_round(5, 2, r, &n, surv, &rest);
	CHECK(r[0].abandoned, "round 1 completed with 4 of 5 reports and min-reports 5");
	CHECK(r[0].dropped >= 1, "round 1 abandoned but dropped %ld", r[0].dropped);
	/* The model was left as initialised: nowhere near trained. */
	CHECK(!r[0].has_accuracy || r[0].accuracy < 0.5,
	      "abandoned round 1 reports accuracy %.4f: was the model changed?", r[0].accuracy);
	check_full_round(&r[1], 2, 5);
	check_accuracy(&r[1]);
	for (int i = 0; i < 4; i++)
		CHECK(surv[i].acked >= 1 && surv[i].trained == 2, "client%d trained %u acked %u, "
		      "expected 2 and >= 1", i + 1, surv[i].trained, surv[i].acked);
	CHECK(rest.acked == 1, "restarted client acked %u, expected 1", rest.acked);
	e2e_end();
}

/* Secure aggregation over real sockets: 5 shoal-client processes, SecAgg
 * with every pair, every coordinate masked; the same acceptance as the
 * plain run (every update counted once, accuracy >= 0.85 by round 3). */
static void
e2e_secure_five_clients_three_rounds(void **state)
{
	server_secagg = "full";
	e2e_five_clients_three_rounds(state);
	server_secagg = NULL;
}

/* A secure round in which client 0 is killed while training: advertising
 * closes at the round deadline with 4 of 5, and the round completes with
 * the 4 (t = 3 of k = 4). */
static void
e2e_secure_client_killed_round_completes(void **state)
{
	round_line r[MAX_ROUNDS];
	client_stats surv[4], rest;
	size_t n;

	(void)state;
	server_secagg = "full";
	kill_mid_round(1, 3, r, &n, surv, &rest);
	server_secagg = NULL;
	CHECK(!r[0].abandoned, "secure round 1 was abandoned with 4 of 5 clients");
	CHECK(r[0].clients == 4 && r[0].dropped == 1, "secure round 1: clients %ld dropped %ld, "
	      "expected 4 and 1", r[0].clients, r[0].dropped);
	for (size_t i = 1; i < n; i++)
		check_full_round(&r[i], (long)i + 1, 5);
	check_accuracy(&r[n - 1]);
	for (int i = 0; i < 4; i++)
		CHECK(surv[i].acked == 3 && surv[i].late == 0, "client%d acked %u late %u, "
		      "expected 3 and 0", i + 1, surv[i].acked, surv[i].late);
	CHECK(rest.acked == 2, "restarted client acked %u, expected 2", rest.acked);
	e2e_end();
}

static void
e2e_garbage_to_port_server_keeps_serving(void **state)
{
	args a;
	proc *server, *clients[5];
	round_line r[MAX_ROUNDS];
	uint8_t junk[4096], sp[8 + 8 + 64 + 8 + 64];
	uint8_t bad_version[] = {0x83, 0xa1, 'v', 99, 0xa1, 't', 3, 0xa2, 'i', 'd', 1};
	uint8_t not_msgpack[64];
	uint8_t *upd = NULL;
	size_t upd_len, n;
	float *zeros;
	msg m;
	int32_t code;

	(void)state;
	e2e_begin();
	server_args(&a);
	args_add(&a, "--rounds");
	args_add(&a, "3");
	args_add(&a, "--clients-per-round");
	args_add(&a, "5");
	args_add(&a, "--min-clients");
	args_add(&a, "5");
	server = spawn("server", &a);
	for (int i = 0; i < 5; i++) {
		char label[16];

		snprintf(label, sizeof label, "client%d", i);
		/* slow training keeps round 1 open while we attack */
		clients[i] = start_client(label, i, 5, 1500);
	}
	wait_for_text(clients[1]->err, "round 1: training", server);

	/* 1. raw random bytes */
	fill_random(junk, sizeof junk, 1);
	tcp_garbage(junk, sizeof junk);
	/* 2. a valid SP header (REQ, protocol 0x30), a well-framed garbage
	 * message, then a frame claiming an absurd length */
	memset(sp, 0, sizeof sp);
	sp[1] = 'S';
	sp[2] = 'P';
	sp[5] = 0x30;
	sp[15] = 64;
	fill_random(sp + 16, 64, 2);
	memset(sp + 80, 0x7f, 8);
	fill_random(sp + 88, 64, 3);
	tcp_garbage(sp, sizeof sp);

	/* 3. protocol-level garbage through a real REQ socket */
	fill_random(not_msgpack, sizeof not_msgpack, 4);
	not_msgpack[0] = 0xc1; /* never used by msgpack */
	code = req_error_code(not_msgpack, sizeof not_msgpack);
	CHECK(code == SHOAL_EMALFORMED, "random bytes: ERROR %d (%s), expected EMALFORMED",
	      code, shoal_strerror(code));
	code = req_error_code(bad_version, sizeof bad_version);
	CHECK(code == SHOAL_EVERSION, "v=99: ERROR %d (%s), expected EVERSION", code,
	      shoal_strerror(code));
	zeros = calloc(LOGREG_DIM, sizeof *zeros);
	assert_non_null(zeros);
	memset(&m, 0, sizeof m);
	m.type = MSG_UPDATE;
	m.client_id = 999999;
	m.round = 1;
	m.n_examples = 100;
	m.loss = 0.5f;
	m.dim = LOGREG_DIM;
	m.vec = (const uint8_t *)zeros;
	CHECK(msg_encode(&m, &upd, &upd_len) == SHOAL_OK, "cannot encode an UPDATE");
	free(zeros);
	code = req_error_code(upd, upd_len);
	free(upd);
	CHECK(code == SHOAL_EUNKNOWN || code == SHOAL_ESTALE,
	      "UPDATE from an unknown id: ERROR %d (%s), expected EUNKNOWN or ESTALE", code,
	      shoal_strerror(code));

	expect_exit_code(server, 0);
	for (int i = 0; i < 5; i++) {
		client_stats st = client_result(clients[i]);

		CHECK(st.acked == 3 && st.late == 0, "client%d acked %u late %u, expected 3 and 0",
		      i, st.acked, st.late);
	}
	n = read_metrics(r, MAX_ROUNDS);
	CHECK(n == 3, "%zu metrics lines, expected 3", n);
	for (size_t i = 0; i < n; i++)
		check_full_round(&r[i], (long)i + 1, 5);
	check_accuracy(&r[2]);
	e2e_end();
}

/* Documented in shoal-server --help: SIGTERM -> clean stop, exit 143. */
static void
e2e_sigterm_stops_server_cleanly(void **state)
{
	args a;
	proc *server;

	(void)state;
	e2e_begin();
	server_args(&a);
	args_add(&a, "--rounds");
	args_add(&a, "3");
	args_add(&a, "--clients-per-round");
	args_add(&a, "5");
	args_add(&a, "--min-clients");
	args_add(&a, "5");
	server = spawn("server", &a);
	wait_listening(server);
	kill(server->pid, SIGTERM);
	expect_exit_code(server, 128 + SIGTERM);
	CHECK(file_contains(server->out, "shoal-server: stopped"),
	      "server printed no 'stopped' summary");
	e2e_end();
}

/* The default compressed path over real TCP: top-k q8 uploads with error
 * feedback and q8 downlink deltas. Every update is still counted once, the
 * uplink is a small fraction of dense, and from round 2 on (every client
 * holds the previous version) the downlink is deltas. */
static void
e2e_compressed_rounds(void **state)
{
	args a;
	proc *server, *clients[5];
	round_line r[MAX_ROUNDS];
	size_t n;
	/* A dense logreg TASK or UPDATE is 4 * 7850 bytes plus ~100. */
	const long long dense = 5LL * (4 * 7850);

	(void)state;
	e2e_begin();
	server_args(&a);
	args_add(&a, "--compress");
	args_add(&a, "topk:0.05,q8");
	args_add(&a, "--rounds");
	args_add(&a, "8");
	args_add(&a, "--clients-per-round");
	args_add(&a, "5");
	args_add(&a, "--min-clients");
	args_add(&a, "5");
	server = spawn("server", &a);
	for (int i = 0; i < 5; i++) {
		char label[16];

		snprintf(label, sizeof label, "client%d", i);
		clients[i] = start_client(label, i, 5, 0);
	}
	expect_exit_code(server, 0);
	for (int i = 0; i < 5; i++) {
		client_stats st = client_result(clients[i]);

		CHECK(st.acked == 8 && st.late == 0, "client%d: acked %u late %u, expected 8/0", i,
		      st.acked, st.late);
	}
	n = read_metrics(r, MAX_ROUNDS);
	CHECK(n == 8, "%zu metrics lines, expected 8", n);
	for (size_t i = 0; i < n; i++) {
		check_full_round(&r[i], (long)i + 1, 5);
		CHECK(r[i].bytes_up * 10 < dense, "round %zu: %lld bytes up, dense is %lld", i + 1,
		      r[i].bytes_up, dense);
		if (i > 0)
			CHECK(r[i].bytes_down * 3 < dense, "round %zu: %lld bytes down, dense is %lld",
			      i + 1, r[i].bytes_down, dense);
	}
	CHECK(r[0].bytes_down > dense, "round 1 sends full models: %lld bytes", r[0].bytes_down);
	CHECK(r[7].has_accuracy && r[7].accuracy > 0.8, "accuracy %.4f after 8 compressed rounds",
	      r[7].accuracy);
	e2e_end();
}

/* Sum of "refused" -> key over every metrics line (key NULL: all keys). */
static long
metrics_refused(const char *key)
{
	char *s = slurp(E.metrics), *save = NULL, *line;
	long total = 0;

	CHECK(s != NULL, "no metrics file %s", E.metrics);
	for (line = strtok_r(s, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		json_t *o = json_loads(line, 0, NULL), *r = json_object_get(o, "refused"), *v;
		const char *k;

		CHECK(json_is_object(r), "metrics line without a 'refused' object: %s", line);
		json_object_foreach(r, k, v)
			if (key == NULL || strcmp(k, key) == 0)
				total += (long)json_integer_value(v);
		json_decref(o);
	}
	free(s);
	return total;
}

/* --rate-limit: one connection that floods CHECKINs gets ERROR -25 for all
 * but its burst, each counted in the metrics ("refused": {"rate": N}) and
 * logged; real clients under the same tight limit back off, resend and
 * still deliver every update once. */
static void
e2e_rate_limit_counted(void **state)
{
	args a;
	proc *server, *clients[3];
	round_line r[MAX_ROUNDS];
	nng_socket sock;
	uint8_t *req;
	size_t req_len, n;
	msg m;
	int rv, limited = 0, others = 0;
	const int flood = 40;

	(void)state;
	e2e_begin();
	server_args(&a);
	args_add(&a, "--rounds");
	args_add(&a, "3");
	args_add(&a, "--clients-per-round");
	args_add(&a, "3");
	args_add(&a, "--min-clients");
	args_add(&a, "3");
	args_add(&a, "--rate-limit");
	args_add(&a, "4/s:4");
	server = spawn("server", &a);
	wait_listening(server);

	/* The flood, before any client: every reply lands in round 1's line. */
	memset(&m, 0, sizeof m);
	m.type = MSG_CHECKIN;
	m.client_id = 4242;
	CHECK(msg_encode(&m, &req, &req_len) == SHOAL_OK, "cannot encode a CHECKIN");
	CHECK(nng_req0_open(&sock) == 0, "nng_req0_open failed");
	nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, 20000);
	CHECK((rv = nng_dial(sock, E.url, NULL, 0)) == 0, "dial: %s", nng_strerror(rv));
	for (int i = 0; i < flood; i++) {
		void *rbuf = NULL;
		size_t rlen = 0;
		msg rep;

		rv = nng_send(sock, req, req_len, 0);
		if (rv == 0)
			rv = nng_recv(sock, &rbuf, &rlen, NNG_FLAG_ALLOC);
		CHECK(rv == 0, "flood request %d: %s", i, nng_strerror(rv));
		CHECK(msg_decode(rbuf, rlen, &rep) == (long)rlen && rep.type == MSG_ERROR,
		      "flood request %d: the reply is not an ERROR", i);
		rep.code == SHOAL_ERATE ? limited++ : others++;
		nng_free(rbuf, rlen);
	}
	nng_close(sock);
	free(req);
	CHECK(others >= 4 && limited > 0 && limited + others == flood,
	      "flood: %d rate-limited and %d other replies", limited, others);

	for (int i = 0; i < 3; i++) {
		char label[16];

		snprintf(label, sizeof label, "client%d", i);
		clients[i] = start_client(label, i, 3, 0);
	}
	expect_exit_code(server, 0);
	for (int i = 0; i < 3; i++) {
		client_stats st = client_result(clients[i]);

		CHECK(st.acked == 3 && st.trained == 3 && st.late == 0,
		      "client%d: trained %u acked %u late %u, expected 3/3/0", i, st.trained,
		      st.acked, st.late);
	}
	n = read_metrics(r, MAX_ROUNDS);
	CHECK(n == 3, "%zu metrics lines, expected 3", n);
	for (size_t i = 0; i < n; i++)
		check_full_round(&r[i], (long)i + 1, 3);
	/* Clients may have been slowed too: at least the flood's refusals. */
	CHECK(metrics_refused("rate") >= limited, "metrics count %ld rate refusals, the flood "
	      "alone got %d", metrics_refused("rate"), limited);
	CHECK(metrics_refused(NULL) >= flood, "metrics count %ld refusals, the flood got %d "
	      "errors", metrics_refused(NULL), flood);
	CHECK(file_contains(server->err, "rate limit: refused"), "no rate-limit warning logged");
	e2e_end();
}

/* ---- client identity (PROTOCOL.md section 16) ---------------------------- */

/* shoal-client --show-key --state-dir DIR: makes the key, prints it. */
static void
client_key(const char *dir, char hex[65])
{
	args a;
	proc *p;
	char *s;

	memset(&a, 0, sizeof a);
	args_add(&a, "%s/shoal-client", SHOAL_BIN_DIR);
	args_add(&a, "--show-key");
	args_add(&a, "--state-dir");
	args_add(&a, "%s", dir);
	p = spawn("show-key", &a);
	expect_exit_code(p, 0);
	s = slurp(p->out);
	CHECK(s != NULL && strlen(s) == 65 && s[64] == '\n', "--show-key printed '%s'",
	      s ? s : "");
	memcpy(hex, s, 64);
	hex[64] = '\0';
	free(s);
	E.n_procs--; /* reaped: its slot is free */
}

/* A client with its own --state-dir (and key), optionally a token and a
 * --train-delay. */
static proc *
start_identity_client(const char *label, int i, int n, const char *token,
                      uint32_t train_delay_ms)
{
	args a;

	memset(&a, 0, sizeof a);
	args_add(&a, "%s/shoal-client", SHOAL_BIN_DIR);
	args_add(&a, "--connect");
	args_add(&a, "%s", E.url);
	args_add(&a, "--data-dir");
	args_add(&a, "%s", SHOAL_DATA_DIR);
	args_add(&a, "--model");
	args_add(&a, "logreg");
	args_add(&a, "--partition");
	args_add(&a, "%d/%d", i, n);
	args_add(&a, "--name");
	args_add(&a, "e2e-client-%d", i);
	args_add(&a, "--state-dir");
	args_add(&a, "%s/state%d", E.dir, i);
	if (token != NULL) {
		args_add(&a, "--enroll-token");
		args_add(&a, "%s", token);
	}
	if (train_delay_ms > 0) {
		args_add(&a, "--train-delay");
		args_add(&a, "%u", train_delay_ms);
	}
	return spawn(label, &a);
}

/* Removes the state folders too (e2e_end removes plain files only). */
static void
identity_end(int n)
{
	char cmd[600];
	for (int i = 0; i < n; i++) {
		snprintf(cmd, sizeof cmd, "rm -rf '%s/state%d'", E.dir, i);
		CHECK(system(cmd) == 0, "cannot remove %s/state%d", E.dir, i);
	}
	snprintf(cmd, sizeof cmd, "rm -rf '%s/server-state'", E.dir);
	CHECK(system(cmd) == 0, "cannot remove %s/server-state", E.dir);
	e2e_end();
}

/* --allowlist with clients 0 and 1: client 2, unlisted, is refused (exit
 * 3, and the server logs why); 0 and 1 train both rounds. */
static void
e2e_identity_unlisted_refused_listed_trains(void **state)
{
	args a;
	proc *server, *clients[3];
	round_line r[MAX_ROUNDS];
	char hex[3][65], path[PATH_MAX], dir[PATH_MAX];
	FILE *f;
	size_t n;

	(void)state;
	e2e_begin();
	for (int i = 0; i < 3; i++) {
		snprintf(dir, sizeof dir, "%s/state%d", E.dir, i);
		client_key(dir, hex[i]);
	}
	snprintf(path, sizeof path, "%s/allowlist", E.dir);
	f = fopen(path, "w");
	CHECK(f != NULL, "cannot write %s", path);
	fprintf(f, "# the federation\n%s  # client 0\n%s\n", hex[0], hex[1]);
	fclose(f);
	server_args(&a);
	args_add(&a, "--allowlist");
	args_add(&a, "%s", path);
	args_add(&a, "--rounds");
	args_add(&a, "2");
	args_add(&a, "--clients-per-round");
	args_add(&a, "2");
	args_add(&a, "--min-clients");
	args_add(&a, "2");
	server = spawn("server", &a);
	clients[2] = start_identity_client("client2-unlisted", 2, 3, NULL, 0);
	expect_exit_code(clients[2], 3);
	CHECK(file_contains(clients[2]->err, "does not admit this client's key"),
	      "the refused client does not say why");
	CHECK(file_contains(clients[2]->err, hex[2]), "the refused client does not name its key");
	CHECK(file_contains(server->err, "is not on the allowlist"),
	      "the server did not log the refusal");
	for (int i = 0; i < 2; i++) {
		char label[16];
		snprintf(label, sizeof label, "client%d", i);
		clients[i] = start_identity_client(label, i, 3, NULL, 0);
	}
	expect_exit_code(server, 0);
	for (int i = 0; i < 2; i++) {
		client_stats st = client_result(clients[i]);
		CHECK(st.acked == 2 && st.trained == 2 && st.late == 0,
		      "client%d: trained %u acked %u late %u, expected 2/2/0", i, st.trained,
		      st.acked, st.late);
	}
	n = read_metrics(r, MAX_ROUNDS);
	CHECK(n == 2, "%zu metrics lines, expected 2", n);
	for (size_t i = 0; i < n; i++)
		check_full_round(&r[i], (long)i + 1, 2);
	CHECK(metrics_refused("unlisted") == 1, "metrics count %ld refusals of unlisted keys, "
	      "expected 1", metrics_refused("unlisted"));
	identity_end(3);
}

/* --enroll-tokens with --state-dir: client 0 enrolls with the token; the
 * server is stopped and resumed, and client 0, restarted without the
 * token, is still admitted; client 1 with the used token is refused. */
static void
e2e_identity_token_enrolment_survives_resume(void **state)
{
	args a;
	proc *server, *c0, *c1;
	char tokens[PATH_MAX], sdir[PATH_MAX];
	const char *token = "e2e-token-0123456789abcdef";
	FILE *f;

	(void)state;
	e2e_begin();
	snprintf(tokens, sizeof tokens, "%s/tokens", E.dir);
	snprintf(sdir, sizeof sdir, "%s/server-state", E.dir);
	f = fopen(tokens, "w");
	CHECK(f != NULL, "cannot write %s", tokens);
	fprintf(f, "%s\n", token);
	fclose(f);
	server_args(&a);
	args_add(&a, "--enroll-tokens");
	args_add(&a, "%s", tokens);
	args_add(&a, "--state-dir");
	args_add(&a, "%s", sdir);
	args_add(&a, "--rounds");
	args_add(&a, "3");
	args_add(&a, "--clients-per-round");
	args_add(&a, "1");
	args_add(&a, "--min-clients");
	args_add(&a, "1");
	server = spawn("server", &a);
	/* slow training: round 2 is still running when the server stops */
	c0 = start_identity_client("client0", 0, 2, token, 2000);
	wait_for_lines(E.metrics, 1, server);
	kill(server->pid, SIGTERM);
	expect_exit_code(server, 128 + SIGTERM);
	kill(c0->pid, SIGTERM);
	wait_exit(c0);
	CHECK(file_contains(server->err, "enrolled its key with a token"),
	      "the server did not log the enrolment");

	args_add(&a, "--resume");
	server = spawn("server-resumed", &a);
	c1 = start_identity_client("client1-same-token", 1, 2, token, 0);
	expect_exit_code(c1, 3);
	CHECK(file_contains(c1->err, "refused the enrollment token"),
	      "the refused client does not say why");
	c0 = start_identity_client("client0-restarted", 0, 2, NULL, 0);
	expect_exit_code(server, 0);
	client_stats st = client_result(c0);
	CHECK(st.acked >= 1, "the enrolled client got no update in after the resume (acked %u)",
	      st.acked);
	CHECK(!file_contains(server->err, "resumed after round 3"),
	      "the first server finished before it was stopped: nothing to resume");
	CHECK(file_contains(server->err, "already used enrollment token"),
	      "the resumed server did not log the used token");
	CHECK(file_contains(server->out, "shoal-server: finished rounds="),
	      "the resumed server printed no summary");
	identity_end(2);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(e2e_five_clients_three_rounds),
	cmocka_unit_test(e2e_compressed_rounds),
	cmocka_unit_test(e2e_client_killed_mid_round_round_completes),
	cmocka_unit_test(e2e_client_killed_mid_round_round_abandoned),
	cmocka_unit_test(e2e_secure_five_clients_three_rounds),
	cmocka_unit_test(e2e_secure_client_killed_round_completes),
	cmocka_unit_test(e2e_garbage_to_port_server_keeps_serving),
	cmocka_unit_test(e2e_sigterm_stops_server_cleanly),
	cmocka_unit_test(e2e_identity_unlisted_refused_listed_trains),
	cmocka_unit_test(e2e_identity_token_enrolment_survives_resume),
	cmocka_unit_test(e2e_rate_limit_counted),
};

SHOAL_TEST_MAIN(tests)
