/* store.c - the simulator's residual store (sim/store.h): a slot per
 * client that has put a residual, in memory until the slots would pass
 * the memory limit, then all in an unlinked temporary file. */
#include "sim/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

#define NO_SLOT UINT32_MAX

struct sim_store {
	uint32_t n, dim;
	uint64_t mem_limit;
	uint32_t *slot;     /* n entries: slot of client i, or NO_SLOT */
	uint32_t used;
	float *mem;         /* used * dim floats while in memory */
	uint32_t mem_cap;   /* slots allocated in mem */
	int fd;             /* the file once on disk, else -1 */
	char path[256];     /* for messages only: the file is unlinked */
};

shoal_err
sim_store_new(uint32_t n_clients, uint32_t dim, uint64_t mem_limit, sim_store **out)
{
	sim_store *s;

	*out = NULL;
	if (n_clients == 0 || dim == 0)
		return SHOAL_EINVAL;
	if ((s = calloc(1, sizeof *s)) == NULL)
		return SHOAL_ENOMEM;
	s->n = n_clients;
	s->dim = dim;
	s->mem_limit = mem_limit;
	s->fd = -1;
	if ((s->slot = malloc((size_t)n_clients * sizeof *s->slot)) == NULL) {
		free(s);
		return SHOAL_ENOMEM;
	}
	memset(s->slot, 0xff, (size_t)n_clients * sizeof *s->slot);
	*out = s;
	return SHOAL_OK;
}

void
sim_store_free(sim_store *s)
{
	if (s == NULL)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s->mem);
	free(s->slot);
	free(s);
}

static size_t
vec_bytes(const sim_store *s)
{
	return (size_t)s->dim * sizeof(float);
}

static shoal_err
write_at(sim_store *s, uint32_t slot, const float *v)
{
	const uint8_t *p = (const uint8_t *)v;
	size_t left = vec_bytes(s);
	off_t off = (off_t)slot * (off_t)vec_bytes(s);

	while (left > 0) {
		ssize_t w = pwrite(s->fd, p, left, off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			log_error("sim: cannot write a residual to %s: %s (free some space there, or "
			          "point TMPDIR elsewhere)", s->path, w < 0 ? strerror(errno) : "short write");
			return SHOAL_EIO;
		}
		p += w;
		off += w;
		left -= (size_t)w;
	}
	return SHOAL_OK;
}

/* Moves every slot from memory to a new temporary file. */
static shoal_err
to_disk(sim_store *s)
{
	const char *dir = getenv("TMPDIR");

	snprintf(s->path, sizeof s->path, "%s/shoal-residuals-XXXXXX",
	         dir != NULL && dir[0] != '\0' ? dir : "/tmp");
	if ((s->fd = mkstemp(s->path)) < 0) {
		log_error("sim: cannot create a residual file like %s: %s (set TMPDIR to a writable "
		          "directory)", s->path, strerror(errno));
		return SHOAL_EIO;
	}
	unlink(s->path);
	for (uint32_t k = 0; k < s->used; k++) {
		shoal_err err = write_at(s, k, s->mem + (size_t)k * s->dim);
		if (err != SHOAL_OK)
			return err;
	}
	log_info("sim: %u error-feedback residuals moved to a temporary file in %s (over the %llu "
	         "MiB kept in memory)", s->used, dir != NULL && dir[0] != '\0' ? dir : "/tmp",
	         (unsigned long long)(s->mem_limit >> 20));
	free(s->mem);
	s->mem = NULL;
	s->mem_cap = 0;
	return SHOAL_OK;
}

/* A slot for client i in memory (growing it) or, past the limit, on disk. */
static shoal_err
new_slot(sim_store *s, uint32_t i)
{
	if (s->fd < 0 && (uint64_t)(s->used + 1) * vec_bytes(s) > s->mem_limit) {
		shoal_err err = to_disk(s);
		if (err != SHOAL_OK)
			return err;
	}
	if (s->fd < 0 && s->used == s->mem_cap) {
		uint32_t cap = s->mem_cap ? 2 * s->mem_cap : 16;
		float *m;

		if ((uint64_t)cap * vec_bytes(s) > s->mem_limit)
			cap = (uint32_t)(s->mem_limit / vec_bytes(s));
		if ((m = realloc(s->mem, (size_t)cap * vec_bytes(s))) == NULL)
			return SHOAL_ENOMEM;
		s->mem = m;
		s->mem_cap = cap;
	}
	s->slot[i] = s->used++;
	return SHOAL_OK;
}

shoal_err
sim_store_put(sim_store *s, uint32_t i, const float *v)
{
	shoal_err err;

	if (i >= s->n)
		return SHOAL_EINVAL;
	if (s->slot[i] == NO_SLOT && (err = new_slot(s, i)) != SHOAL_OK)
		return err;
	if (s->fd >= 0)
		return write_at(s, s->slot[i], v);
	memcpy(s->mem + (size_t)s->slot[i] * s->dim, v, vec_bytes(s));
	return SHOAL_OK;
}

shoal_err
sim_store_get(sim_store *s, uint32_t i, float *v, bool *found)
{
	uint8_t *p = (uint8_t *)v;
	size_t left;
	off_t off;

	*found = false;
	if (i >= s->n)
		return SHOAL_EINVAL;
	if (s->slot[i] == NO_SLOT)
		return SHOAL_OK;
	if (s->fd < 0) {
		memcpy(v, s->mem + (size_t)s->slot[i] * s->dim, vec_bytes(s));
		*found = true;
		return SHOAL_OK;
	}
	left = vec_bytes(s);
	off = (off_t)s->slot[i] * (off_t)vec_bytes(s);
	while (left > 0) {
		ssize_t r = pread(s->fd, p, left, off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			log_error("sim: cannot read client c%u's residual back from %s: %s", i, s->path,
			          r < 0 ? strerror(errno) : "short read");
			return SHOAL_EIO;
		}
		p += r;
		off += r;
		left -= (size_t)r;
	}
	*found = true;
	return SHOAL_OK;
}

uint32_t sim_store_count(const sim_store *s) { return s->used; }
bool sim_store_on_disk(const sim_store *s) { return s->fd >= 0; }
