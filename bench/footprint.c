/* footprint.c (bench) - shoal-bench footprint: what the edge client costs.
 *
 * Runs one real client round in this process - libshoal-client
 * (include/shoal/client.h) with the built-in trainer of shoal-client,
 * against a shoal-server child process over ipc:// - and reports, one JSON
 * object each:
 *   binary_stripped   size of a stripped shoal-client (--binary; default
 *                     shoal-client.stripped beside this program, which the
 *                     build writes)
 *   rss_start         VmRSS when the program starts (under qemu-user: the
 *                     emulator's own memory, which every figure includes)
 *   rss_peak_process  the most VmHWM before and during the round: the whole life,
 *                     including reading the partition's rows of MNIST
 *   rss_peak_round    VmHWM of the round alone (reset through
 *                     /proc/self/clear_refs once the data is ready)
 *   own_rss_peak_round  the most resident bytes of the process's own
 *                     memory (anonymous mappings and the program file, by
 *                     /proc/self/maps + mincore, sampled every 2 ms and at
 *                     the sample points below) during the round: natively
 *                     VmHWM without shared libraries, and under qemu-user
 *                     the guest's alone (VmRSS/VmHWM there include the
 *                     emulator and its translated code); own_rss_before_round
 *   model_bytes, residual_bytes (the error-feedback residual, dim floats),
 *   local_data_bytes (the partition: 785 bytes per example),
 *   heap_round        the most heap in use (mallinfo2) at the round's
 *                     sample points (the task received, the model trained,
 *                     the update acknowledged) above the heap before it:
 *                     every buffer the client holds for the round
 *   goal_bytes        3 x model + local data + 8 MiB (issue 9), and
 *   goal_fraction     own_rss_peak_round / goal_bytes (<= 1 meets it).
 * Only the partition's rows are read from the IDX files (the labels decide
 * the partition), as shoal-client does. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "common/log.h"
#include "ml/gemm.h"
#include "ml/ml.h"
#include "shoal/client.h"

#if defined(__aarch64__)
#define ARCH "aarch64"
#elif defined(__arm__)
#define ARCH "armhf"
#elif defined(__x86_64__)
#define ARCH "x86_64"
#else
#define ARCH "other"
#endif

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: shoal-bench footprint [options]\n"
	        "\n"
	        "One client round in this process (libshoal-client and the built-in\n"
	        "trainer) against a shoal-server child over ipc://; reports the stripped\n"
	        "client size, peak RSS of the round and of the process, and the bytes of\n"
	        "the model, residual, local data and round buffers (bench/footprint.c).\n"
	        "  --model NAME      %s (default 2nn)\n"
	        "  --partition I/N   this client's part of MNIST train, iid (default 0/100)\n"
	        "  --compress SPEC   encoding the server asks for (default topk:0.01,q8)\n"
	        "  --server PATH     shoal-server to run (default: beside this program;\n"
	        "                    under qemu-user any host shoal-server runs too)\n"
	        "  --binary PATH     stripped shoal-client to measure (default\n"
	        "                    shoal-client.stripped beside this program)\n"
	        "  --data-dir DIR    MNIST IDX folder (default data)\n",
	        ml_model_names());
}

/* Resident bytes of this process's own memory: every anonymous mapping
 * (heap, stacks, mmap'd buffers) and the program file itself, from
 * /proc/self/maps and mincore() on each. Shared libraries are left out
 * (their pages are shared with every process using them, and mincore
 * counts a file's cached pages whether or not this process touched them:
 * libopenblas.so alone is 30 MB); a static program has none. Under
 * qemu-user the maps and the addresses are the guest's, so this leaves out
 * the emulator's own memory and translated code, which VmRSS includes. */
static double
own_resident_bytes(void)
{
	static unsigned char vec[4096];
	static char exe[PATH_MAX];
	long page = sysconf(_SC_PAGESIZE);
	char line[PATH_MAX + 128];
	double total = 0.0;
	FILE *f = fopen("/proc/self/maps", "r");

	if (f == NULL || page <= 0)
		return 0.0;
	if (exe[0] == '\0') {
		ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

		exe[n > 0 ? n : 0] = '\0';
	}
	while (fgets(line, sizeof line, f) != NULL) {
		unsigned long lo, hi;
		char *path = strchr(line, '/'), *nl = strchr(line, '\n');

		if (nl != NULL)
			*nl = '\0';
		if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || strstr(line, "[vsyscall]") != NULL ||
		    strstr(line, "[vvar]") != NULL || strstr(line, "[vdso]") != NULL ||
		    (path != NULL && strcmp(path, exe) != 0))
			continue;
		for (unsigned long a = lo; a < hi;) {
			unsigned long len = hi - a, max = (unsigned long)page * sizeof vec;

			len = len < max ? len : max;
			if (mincore((void *)a, len, vec) == 0)
				for (unsigned long i = 0; i < (len + (unsigned long)page - 1) / (unsigned long)page;
				     i++)
					total += (vec[i] & 1) ? (double)page : 0.0;
			a += len;
		}
	}
	fclose(f);
	return total;
}

/* A thread sampling own_resident_bytes() every 2 ms until told to stop. */
typedef struct sampler {
	pthread_mutex_t mu;
	bool stop;
	double max;
} sampler;

static void
sampler_note(sampler *sp)
{
	double r = own_resident_bytes();

	pthread_mutex_lock(&sp->mu);
	sp->max = r > sp->max ? r : sp->max;
	pthread_mutex_unlock(&sp->mu);
}

static void *
sampler_main(void *arg)
{
	sampler *sp = arg;
	struct timespec ts = {0, 2000000};

	for (;;) {
		bool stop;

		sampler_note(sp);
		pthread_mutex_lock(&sp->mu);
		stop = sp->stop;
		pthread_mutex_unlock(&sp->mu);
		if (stop)
			return NULL;
		nanosleep(&ts, NULL);
	}
}

static double
heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();

	return (double)mi.uordblks + (double)mi.hblkhd;
}

typedef struct fp_trainer {
	const ml_dataset *ds;
	const uint32_t *idx;
	size_t n;
	const char *model;
	ml_model *m;
	double heap_max; /* at the sample points */
	sampler *sp;
} fp_trainer;

static void
sample(fp_trainer *t)
{
	double h = heap_in_use();

	t->heap_max = h > t->heap_max ? h : t->heap_max;
	sampler_note(t->sp);
}

/* shoal-client's train callback (client/main.c), sampling the heap. */
static int
fp_train(void *user, float *params, size_t dim, const shoal_train_info *info,
         uint32_t *n_examples, float *loss)
{
	fp_trainer *t = user;
	ml_sgd_config sgd = {.epochs = info->epochs, .lr = info->lr, .seed = info->seed,
	                     .momentum = info->momentum, .weight_decay = info->weight_decay,
	                     .prox_mu = info->prox_mu};
	size_t batch = info->batch < t->n ? info->batch : t->n;
	double mean = 0.0;

	sample(t);
	if (t->m == NULL && ml_model_new(t->model, batch, &t->m) != SHOAL_OK)
		return -1;
	if (dim != ml_model_dim(t->m))
		return -1;
	sgd.batch = (uint32_t)batch;
	if (ml_train_sgd(t->m, params, t->ds, t->idx, t->n, &sgd, &mean) != SHOAL_OK)
		return -1;
	*n_examples = (uint32_t)t->n;
	*loss = (float)mean;
	sample(t);
	return 0;
}

static void
fp_on_ack(void *user, uint32_t round)
{
	(void)round;
	sample(user);
}

/* Path of a file beside /proc/self/exe. */
static void
beside_self(const char *name, char *out, size_t cap)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	char *slash;

	exe[n > 0 ? n : 0] = '\0';
	slash = strrchr(exe, '/');
	if (slash != NULL)
		*slash = '\0';
	snprintf(out, cap, "%s/%s", slash != NULL ? exe : ".", name);
}

static void
emit(const char *what, json_t *base, double value, const char *unit)
{
	json_t *p = json_deep_copy(base);

	json_object_set_new(p, "what", json_string(what));
	bench_emit("footprint", p, value, unit);
	json_decref(p);
}

int
bench_footprint(int argc, char **argv)
{
	const char *model = "2nn", *dir = "data", *compress = "topk:0.01,q8";
	const char *server_path = NULL, *binary = NULL;
	char server_buf[PATH_MAX + 64], binary_buf[PATH_MAX + 64], sock_dir[] = "/tmp/shoal-fp.XXXXXX";
	char url[PATH_MAX + 16], log_path[PATH_MAX + 16];
	unsigned part = 0, parts = 100;
	double rss_start = bench_status_bytes(0, "VmRSS");
	double rss_before, heap_before, peak_round, peak_proc;
	ml_dataset full = {0}, local = {0};
	ml_partition pt = {0};
	uint32_t *idx = NULL;
	size_t n = 0, dim;
	fp_trainer t = {0};
	sampler sp = {.mu = PTHREAD_MUTEX_INITIALIZER};
	pthread_t sampler_thread;
	double own_before, own_peak;
	shoal_client_options o;
	shoal_client_stats st = {0};
	struct stat sb;
	json_t *base = NULL;
	pid_t server = -1;
	bool have_dir = false;
	shoal_err err;
	int rc = 1, fd;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (v == NULL) {
			fprintf(stderr, "shoal-bench footprint: unknown or incomplete option '%s'\n", a);
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(a, "--model") == 0)
			model = v;
		else if (strcmp(a, "--data-dir") == 0)
			dir = v;
		else if (strcmp(a, "--compress") == 0)
			compress = v;
		else if (strcmp(a, "--server") == 0)
			server_path = v;
		else if (strcmp(a, "--binary") == 0)
			binary = v;
		else if (strcmp(a, "--partition") == 0) {
			if (sscanf(v, "%u/%u", &part, &parts) != 2 || parts == 0 || part >= parts ||
			    parts > 60000) {
				fprintf(stderr, "shoal-bench footprint: --partition wants I/N, 0 <= I < N\n");
				return 2;
			}
		} else {
			fprintf(stderr, "shoal-bench footprint: unknown option '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	if ((dim = ml_model_dim_of(model)) == 0) {
		fprintf(stderr, "shoal-bench footprint: unknown model '%s'\n", model);
		return 2;
	}
	if (server_path == NULL) {
		beside_self("shoal-server", server_buf, sizeof server_buf);
		server_path = server_buf;
	}
	if (binary == NULL) {
		beside_self("shoal-client.stripped", binary_buf, sizeof binary_buf);
		binary = binary_buf;
	}
	log_set_level(LOG_WARN);
	base = json_pack("{s:s, s:s, s:s, s:i, s:s}", "arch", ARCH, "model", model, "compress",
	                 compress, "parts", (json_int_t)parts, "gemm", ml_gemm_backend());

	if (stat(binary, &sb) == 0)
		emit("binary_stripped", base, (double)sb.st_size, "bytes");
	else
		fprintf(stderr, "shoal-bench footprint: no %s: binary size not reported\n", binary);
	emit("rss_start", base, rss_start, "bytes");

	/* The client's data: its partition only. */
	if (ml_mnist_load_labels(dir, "train", &full) != SHOAL_OK ||
	    ml_partition_make("iid", &full, parts, 1, &pt) != SHOAL_OK)
		goto done;
	n = pt.start[part + 1] - pt.start[part];
	ml_dataset_fini(&full);
	if (n == 0 || (idx = malloc(n * sizeof *idx)) == NULL ||
	    ml_mnist_load_rows(dir, "train", pt.idx + pt.start[part], n, &local) != SHOAL_OK)
		goto done;
	ml_partition_fini(&pt);
	for (size_t i = 0; i < n; i++)
		idx[i] = (uint32_t)i;

	/* The server, with the client's round as its only round. */
	if (mkdtemp(sock_dir) == NULL)
		goto done;
	have_dir = true;
	snprintf(url, sizeof url, "ipc://%s/s", sock_dir);
	snprintf(log_path, sizeof log_path, "%s/server.log", sock_dir);
	server = fork();
	if (server == 0) {
		const char *av[] = {server_path, "--listen", url, "--model", model, "--rounds", "1",
		                    "--clients-per-round", "1", "--min-clients", "1", "--compress",
		                    compress, "--data-dir", dir, "--linger", "2000", "-q", NULL};

		if ((fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(server_path, (char *const *)av);
		_exit(127);
	}
	if (server < 0)
		goto done;

	t.ds = &local;
	t.idx = idx;
	t.n = n;
	t.model = model;
	shoal_client_options_init(&o);
	o.url = url;
	o.name = "footprint";
	o.model = model;
	o.dim = dim;
	o.n_examples = (uint32_t)n;
	o.train = fp_train;
	o.user = &t;
	o.on_ack = fp_on_ack;
	o.compress = "any";

	/* From here on, the round: keep the peak so far, then reset it. */
	peak_proc = bench_status_bytes(0, "VmHWM");
	if ((fd = open("/proc/self/clear_refs", O_WRONLY)) >= 0) {
		if (write(fd, "5", 1) != 1)
			fprintf(stderr, "shoal-bench footprint: cannot reset VmHWM: %s\n",
			        strerror(errno));
		close(fd);
	}
	rss_before = bench_status_bytes(0, "VmRSS");
	heap_before = heap_in_use();
	own_before = own_resident_bytes();
	t.heap_max = heap_before;
	t.sp = &sp;
	if (pthread_create(&sampler_thread, NULL, sampler_main, &sp) != 0)
		goto done;
	err = shoal_client_run(&o, &st);
	peak_round = bench_status_bytes(0, "VmHWM");
	pthread_mutex_lock(&sp.mu);
	sp.stop = true;
	pthread_mutex_unlock(&sp.mu);
	pthread_join(sampler_thread, NULL);
	own_peak = sp.max;
	if (err != SHOAL_OK || st.updates_acked != 1) {
		fprintf(stderr, "shoal-bench footprint: the round failed (%s, %u updates acked); "
		        "server log: %s\n", shoal_strerror(err), st.updates_acked, log_path);
		goto done;
	}
	{
		double model_b = 4.0 * (double)dim, data_b = (double)n * (ML_IMAGE_PIXELS + 1);
		double goal = 3.0 * model_b + data_b + 8.0 * 1024 * 1024;

		emit("rss_before_round", base, rss_before, "bytes");
		emit("rss_peak_round", base, peak_round, "bytes");
		emit("own_rss_before_round", base, own_before, "bytes");
		emit("own_rss_peak_round", base, own_peak, "bytes");
		emit("rss_peak_process", base, peak_proc > peak_round ? peak_proc : peak_round, "bytes");
		emit("model_bytes", base, model_b, "bytes");
		emit("residual_bytes", base, model_b, "bytes");
		emit("local_data_bytes", base, data_b, "bytes");
		emit("heap_round", base, t.heap_max - heap_before, "bytes");
		emit("goal_bytes", base, goal, "bytes");
		emit("goal_fraction", base, own_peak / goal, "fraction");
		fprintf(stderr,
		        "footprint %s %s (%s gemm): round peak RSS %.2f MB of own mappings (VmHWM "
		        "%.2f MB; goal %.2f MB = 3 x %.2f model + %.2f data + 8), heap for the round "
		        "%.2f MB, VmRSS at start %.2f MB, process peak %.2f MB\n",
		        ARCH, model, ml_gemm_backend(), own_peak / 1048576.0, peak_round / 1048576.0,
		        goal / 1048576.0, model_b / 1048576.0, data_b / 1048576.0,
		        (t.heap_max - heap_before) / 1048576.0, rss_start / 1048576.0,
		        (peak_proc > peak_round ? peak_proc : peak_round) / 1048576.0);
	}
	rc = 0;
done:
	if (server > 0) {
		int ws;

		if (rc != 0)
			kill(server, SIGTERM);
		waitpid(server, &ws, 0);
	}
	if (have_dir && rc == 0) {
		unlink(log_path);
		unlink(url + strlen("ipc://")); /* if nng left the socket */
		rmdir(sock_dir);
	}
	ml_model_free(t.m);
	ml_partition_fini(&pt);
	ml_dataset_fini(&full);
	ml_dataset_fini(&local);
	free(idx);
	json_decref(base);
	return rc;
}
