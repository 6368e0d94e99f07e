/* dump.c - write and read shoal-client's training records (see dump.h). */
#include "client/dump.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define MAGIC "SHTR"
#define FORMAT 1u

static void
put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void
put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void
putf(uint8_t *p, float f)
{
	uint32_t v;

	memcpy(&v, &f, sizeof v);
	put32(p, v);
}

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static float
getf(const uint8_t *p)
{
	uint32_t v = get32(p);
	float f;

	memcpy(&f, &v, sizeof f);
	return f;
}

/* dim floats, little-endian, through a small buffer. */
static int
write_floats(FILE *f, const float *x, size_t dim)
{
	uint8_t buf[4096];

	for (size_t i = 0; i < dim;) {
		size_t n = dim - i < sizeof buf / 4 ? dim - i : sizeof buf / 4;

		for (size_t j = 0; j < n; j++)
			putf(buf + 4 * j, x[i + j]);
		if (fwrite(buf, 4, n, f) != n)
			return -1;
		i += n;
	}
	return 0;
}

static int
read_floats(FILE *f, float *x, size_t dim)
{
	uint8_t buf[4096];

	for (size_t i = 0; i < dim;) {
		size_t n = dim - i < sizeof buf / 4 ? dim - i : sizeof buf / 4;

		if (fread(buf, 4, n, f) != n)
			return -1;
		for (size_t j = 0; j < n; j++)
			x[i + j] = getf(buf + 4 * j);
		i += n;
	}
	return 0;
}

shoal_err
cli_dump_write(const char *dir, const shoal_train_info *info, uint32_t n_examples,
               const float *global, const float *trained, size_t dim)
{
	char path[4096], tmp[4200];
	uint8_t h[CLI_DUMP_HEADER];
	FILE *f;
	int bad;

	if (dim > UINT32_MAX)
		return SHOAL_EINVAL;
	snprintf(path, sizeof path, "%s/round-%u.train", dir, (unsigned)info->round);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	memcpy(h, MAGIC, 4);
	put32(h + 4, FORMAT);
	put32(h + 8, info->round);
	put32(h + 12, info->epochs);
	put32(h + 16, info->batch);
	putf(h + 20, info->lr);
	putf(h + 24, info->momentum);
	putf(h + 28, info->weight_decay);
	putf(h + 32, info->prox_mu);
	put64(h + 36, info->seed);
	put32(h + 44, n_examples);
	put32(h + 48, (uint32_t)dim);
	if ((f = fopen(tmp, "wb")) == NULL) {
		log_error("cannot write %s: %s", tmp, strerror(errno));
		return SHOAL_EIO;
	}
	bad = fwrite(h, 1, sizeof h, f) != sizeof h || write_floats(f, global, dim) != 0 ||
	      write_floats(f, trained, dim) != 0;
	bad |= fclose(f) != 0;
	if (bad || rename(tmp, path) != 0) {
		log_error("cannot write %s: %s", path, strerror(errno));
		remove(tmp);
		return SHOAL_EIO;
	}
	return SHOAL_OK;
}

shoal_err
cli_dump_read(const char *path, shoal_train_info *info, uint32_t *n_examples, float **global,
              float **trained, size_t *dim)
{
	uint8_t h[CLI_DUMP_HEADER];
	float *g = NULL, *t = NULL;
	shoal_err err = SHOAL_ETRUNC;
	size_t d;
	FILE *f;
	long size;

	if ((f = fopen(path, "rb")) == NULL) {
		log_error("cannot read %s: %s", path, strerror(errno));
		return SHOAL_EIO;
	}
	if (fread(h, 1, sizeof h, f) != sizeof h)
		goto fail;
	if (memcmp(h, MAGIC, 4) != 0 || get32(h + 4) != FORMAT) {
		err = SHOAL_EFORMAT;
		goto fail;
	}
	d = get32(h + 48);
	if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
	    (unsigned long)size != CLI_DUMP_HEADER + 8ul * d || fseek(f, CLI_DUMP_HEADER, SEEK_SET) != 0)
		goto fail;
	g = malloc((d ? d : 1) * sizeof *g);
	t = malloc((d ? d : 1) * sizeof *t);
	if (g == NULL || t == NULL) {
		err = SHOAL_ENOMEM;
		goto fail;
	}
	if (read_floats(f, g, d) != 0 || read_floats(f, t, d) != 0)
		goto fail;
	fclose(f);
	memset(info, 0, sizeof *info);
	info->round = get32(h + 8);
	info->epochs = get32(h + 12);
	info->batch = get32(h + 16);
	info->lr = getf(h + 20);
	info->momentum = getf(h + 24);
	info->weight_decay = getf(h + 28);
	info->prox_mu = getf(h + 32);
	info->seed = get64(h + 36);
	*n_examples = get32(h + 44);
	*global = g;
	*trained = t;
	*dim = d;
	return SHOAL_OK;
fail:
	fclose(f);
	free(g);
	free(t);
	return err;
}
