/* mpi.c - shoal-sim over MPI ranks (sim/mpi.h, docs/mpi.md): the owner of
 * each client, the exchange of a batch's trainings and the agreed stop.
 * Built with MPI when CMake finds it (SHOAL_HAVE_MPI), else as one rank. */
#include "sim/mpi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#ifdef SHOAL_HAVE_MPI
#include <limits.h>
#include <mpi.h>

/* The process's place in MPI_COMM_WORLD: MPI itself is process-wide. */
static struct {
	bool on;                 /* MPI_Init_thread done */
	int rank, size;
	volatile int *local_stop;/* set by the signal handler */
	volatile int stop;       /* agreed: what the engine watches */
	sim_spread spread;
} g_mpi = {.size = 1};

bool
sim_mpi_built(void)
{
	return true;
}

int
sim_mpi_init(int *argc, char ***argv)
{
	int provided;

	if (getenv("OMPI_COMM_WORLD_SIZE") == NULL && getenv("PMI_SIZE") == NULL &&
	    getenv("PMIX_RANK") == NULL)
		return 0; /* not under a launcher: one process, as without MPI */
	/* Only the main thread calls MPI (training threads never do). */
	if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
		log_error("MPI_Init_thread failed: run shoal-sim without mpirun, or check the "
		          "Open MPI installation (docs/mpi.md)");
		return 1;
	}
	g_mpi.on = true;
	MPI_Comm_rank(MPI_COMM_WORLD, &g_mpi.rank);
	MPI_Comm_size(MPI_COMM_WORLD, &g_mpi.size);
	return 0;
}

int
sim_mpi_rank(void)
{
	return g_mpi.rank;
}

int
sim_mpi_size(void)
{
	return g_mpi.size;
}

static bool
owns(void *user, uint32_t client)
{
	(void)user;
	return client % (uint32_t)g_mpi.size == (uint32_t)g_mpi.rank;
}

/* One allreduce carries every training's (n_examples, loss, rc) and the
 * ranks' stop flags: each entry is zero except on its owner, so a bitwise
 * OR puts the owner's bits together exactly. Then each trained model is
 * broadcast from its owner, in the batch's order, which every rank shares. */
static shoal_err
exchange(void *user, sim_trained *b, size_t n)
{
	size_t words = 3 * n + 1;
	uint32_t *w = calloc(words, sizeof *w);

	(void)user;
	if (w == NULL || words > INT_MAX) {
		free(w);
		return SHOAL_ENOMEM;
	}
	for (size_t k = 0; k < n; k++) {
		if (!owns(NULL, b[k].client))
			continue;
		w[3 * k] = b[k].n_examples;
		memcpy(&w[3 * k + 1], &b[k].loss, sizeof(float));
		w[3 * k + 2] = (uint32_t)b[k].rc;
	}
	w[3 * n] = *g_mpi.local_stop != 0;
	MPI_Allreduce(MPI_IN_PLACE, w, (int)words, MPI_UINT32_T, MPI_BOR, MPI_COMM_WORLD);
	for (size_t k = 0; k < n; k++) {
		if (owns(NULL, b[k].client))
			continue;
		b[k].n_examples = w[3 * k];
		memcpy(&b[k].loss, &w[3 * k + 1], sizeof(float));
		b[k].rc = (int)w[3 * k + 2];
	}
	if (w[3 * n] != 0)
		g_mpi.stop = 1;
	free(w);
	/* MPI's default error handler aborts every rank on a failed call. */
	for (size_t k = 0; k < n; k++) {
		if (b[k].dim > INT_MAX)
			return SHOAL_EINVAL;
		MPI_Bcast(b[k].params, (int)b[k].dim, MPI_FLOAT,
		          (int)(b[k].client % (uint32_t)g_mpi.size), MPI_COMM_WORLD);
	}
	return SHOAL_OK;
}

const sim_spread *
sim_mpi_spread(volatile int *local_stop, volatile int **stop)
{
	if (g_mpi.size <= 1) {
		*stop = local_stop;
		return NULL;
	}
	g_mpi.local_stop = local_stop;
	g_mpi.spread = (sim_spread){.owns = owns, .exchange = exchange};
	*stop = &g_mpi.stop;
	return &g_mpi.spread;
}

void
sim_mpi_sum_u32(uint32_t *v, size_t n)
{
	/* In INT_MAX-word pieces: MPI counts are ints. */
	for (size_t k = 0; g_mpi.size > 1 && k < n; k += INT_MAX) {
		size_t m = n - k < INT_MAX ? n - k : INT_MAX;
		MPI_Allreduce(MPI_IN_PLACE, v + k, (int)m, MPI_UINT32_T, MPI_SUM, MPI_COMM_WORLD);
	}
}

int
sim_mpi_exit(int status)
{
	if (!g_mpi.on)
		return status;
	if (g_mpi.size > 1 && status != 0 && status != 2 && status != 130) {
		fprintf(stderr, "shoal-sim: rank %d of %d failed (its error is above): stopping "
		        "every rank\n", g_mpi.rank, g_mpi.size);
		fflush(stderr);
		MPI_Abort(MPI_COMM_WORLD, status);
	}
	MPI_Finalize();
	return status;
}

#else /* one process, no MPI */

bool
sim_mpi_built(void)
{
	return false;
}

int
sim_mpi_init(int *argc, char ***argv)
{
	const char *n = getenv("OMPI_COMM_WORLD_SIZE");

	(void)argc;
	(void)argv;
	if (n == NULL)
		n = getenv("PMI_SIZE");
	/* P copies of the whole run would write the same files at once. */
	if (n != NULL && strcmp(n, "1") != 0) {
		log_error("started by an MPI launcher with %s ranks, but this shoal-sim has no MPI "
		          "built in: run it without mpirun, or install libopenmpi-dev and rebuild "
		          "(docs/mpi.md)", n);
		return 1;
	}
	return 0;
}

int
sim_mpi_rank(void)
{
	return 0;
}

int
sim_mpi_size(void)
{
	return 1;
}

const sim_spread *
sim_mpi_spread(volatile int *local_stop, volatile int **stop)
{
	*stop = local_stop;
	return NULL;
}

void
sim_mpi_sum_u32(uint32_t *v, size_t n)
{
	(void)v;
	(void)n;
}

int
sim_mpi_exit(int status)
{
	return status;
}

#endif
