/* mpi.h - shoal-sim over MPI ranks (docs/mpi.md): under mpirun -np P,
 * every rank runs the same event loop, server core and client cores (the
 * run is deterministic from the seed), and training, the expensive part,
 * is spread: rank r trains the clients i with i % P == r, and each
 * trained model is then broadcast from its owner (sim_spread of
 * sim/engine.h). The results are bit for bit those of one process.
 *
 * Without MPI at build time (SHOAL_MPI=OFF or no Open MPI found), or when
 * shoal-sim is not started by an MPI launcher, these functions act as one
 * rank of one and never touch MPI. Rank 0 writes every output; the others
 * print errors only. */
#ifndef SHOAL_SIM_MPI_H
#define SHOAL_SIM_MPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sim/engine.h"

/* Whether shoal-sim was built with MPI. */
bool sim_mpi_built(void);

/* Initialises MPI when an MPI launcher started this process (mpirun sets
 * OMPI_COMM_WORLD_SIZE; Hydra PMI_SIZE; PMIx PMIX_RANK), else nothing.
 * Without MPI built in, refuses a launch of more than one rank. Returns 0,
 * or 1 after saying why. */
int sim_mpi_init(int *argc, char ***argv);

/* This process's rank and the number of ranks (0 and 1 without MPI). */
int sim_mpi_rank(void);
int sim_mpi_size(void);

/* The engine's hook when there is more than one rank, else NULL. local_stop
 * is the flag the signal handler sets; *stop is then set to the flag the
 * engine must watch instead (every rank sets it at the same event, after
 * the batch in which any rank saw local_stop); with one rank, *stop =
 * local_stop. */
const sim_spread *sim_mpi_spread(volatile int *local_stop, volatile int **stop);

/* Sums v[0..n) over the ranks, in place on every rank (one rank: no-op).
 * Every rank must call it. */
void sim_mpi_sum_u32(uint32_t *v, size_t n);

/* Ends MPI and returns status for main to return. A status of 0, 2 (bad
 * flags: every rank sees them) or 130 (interrupted: every rank stops at
 * the same event) ends MPI normally; any other status may be one rank's
 * alone (a file it cannot read, memory), so with more than one rank it
 * stops every rank with MPI_Abort rather than leave them waiting. */
int sim_mpi_exit(int status);

#endif
