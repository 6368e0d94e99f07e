/* idx.c - the IDX file format (LeCun's MNIST container) and MNIST datasets.
 *
 * An IDX file is a big-endian header followed by a dense body:
 *
 *   00 00 08 03             magic: two zero bytes, type 0x08 (unsigned
 *                           byte), number of dimensions (1..4)
 *   00 00 ea 60             dims[0] = 60000   (one u32 BE per dimension)
 *   00 00 00 1c             dims[1] = 28
 *   00 00 00 1c             dims[2] = 28
 *   ...                     60000*28*28 bytes, last dimension fastest
 *
 * Only type 0x08 is accepted (all four MNIST files use it). The body must be
 * exactly as long as the dims declare: shorter is SHOAL_ETRUNC, longer is
 * SHOAL_EINVAL, so a concatenated or half-downloaded file is never accepted. */
#include "ml/ml.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"

#define IDX_TYPE_U8 0x08

static uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Checks the header in buf[0..len) and the body length the file has in
 * all, total (>= len): everything ml_idx_parse checks, without needing
 * the body in memory. Fills r's dims and count, *hdr the body's offset. */
static shoal_err
parse_header(const uint8_t *buf, size_t len, uint64_t total, ml_idx *r, size_t *hdr)
{
	static const uint8_t magic_prefix[3] = {0x00, 0x00, IDX_TYPE_U8};
	size_t count = 1;
	uint32_t ndims;

	/* Judge the magic on the bytes we have, so a wrong file is EFORMAT
	 * and a cut-off good file is ETRUNC whatever its length. */
	for (size_t i = 0; i < 3 && i < len; i++)
		if (buf[i] != magic_prefix[i])
			return SHOAL_EFORMAT;
	if (len < 4)
		return SHOAL_ETRUNC;
	ndims = buf[3];
	if (ndims < 1 || ndims > ML_IDX_MAX_DIMS)
		return SHOAL_EFORMAT;
	*hdr = 4 + 4 * (size_t)ndims;
	if (len < *hdr)
		return SHOAL_ETRUNC;
	for (uint32_t i = 0; i < ndims; i++) {
		uint32_t d = be32(buf + 4 + 4 * i);

		if (d == 0 || count > (SIZE_MAX - *hdr) / d)
			return SHOAL_EINVAL;
		count *= d;
		r->dims[i] = d;
	}
	if (total - *hdr < count)
		return SHOAL_ETRUNC;
	if (total - *hdr > count)
		return SHOAL_EINVAL;
	r->ndims = ndims;
	r->count = count;
	return SHOAL_OK;
}

shoal_err
ml_idx_parse(const uint8_t *buf, size_t len, ml_idx *out)
{
	ml_idx r = {0};
	size_t hdr;
	shoal_err err;

	memset(out, 0, sizeof *out);
	err = parse_header(buf, len, len, &r, &hdr);
	if (err != SHOAL_OK)
		return err;
	r.data = buf + hdr;
	*out = r;
	return SHOAL_OK;
}

void
ml_idx_fini(ml_idx *idx)
{
	if (idx == NULL)
		return;
	free(idx->owned);
	memset(idx, 0, sizeof *idx);
}

/* Opens an IDX file of unsigned bytes and checks its header against its
 * size without reading the body: *hdr_len is the body's offset. Messages
 * as ml_idx_read's. */
static shoal_err
idx_open(const char *path, FILE **fp, ml_idx *h, size_t *hdr_len)
{
	uint8_t head[4 + 4 * ML_IDX_MAX_DIMS];
	struct stat st;
	shoal_err err;
	size_t got;
	FILE *f;

	*fp = NULL;
	memset(h, 0, sizeof *h);
	f = fopen(path, "rb");
	if (f == NULL) {
		if (errno == ENOENT)
			log_error("%s: not found; run scripts/setup.sh to download MNIST", path);
		else
			log_error("%s: %s", path, strerror(errno));
		return SHOAL_EIO;
	}
	if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0) {
		log_error("%s: not a readable regular file", path);
		fclose(f);
		return SHOAL_EIO;
	}
	got = fread(head, 1, sizeof head, f);
	err = parse_header(head, got, (uint64_t)st.st_size, h, hdr_len);
	if (err != SHOAL_OK) {
		log_error("%s: not a valid IDX file (%s); run scripts/setup.sh to fetch it again",
		          path, shoal_strerror(err));
		memset(h, 0, sizeof *h);
		fclose(f);
		return err;
	}
	*fp = f;
	return SHOAL_OK;
}

shoal_err
ml_idx_read(const char *path, ml_idx *out)
{
	size_t hdr;
	uint8_t *buf;
	shoal_err err;
	FILE *f;

	err = idx_open(path, &f, out, &hdr);
	if (err != SHOAL_OK)
		return err;
	/* The body alone, so owned == data: a dataset can then take the
	 * buffer over without copying. */
	buf = malloc(out->count);
	if (buf == NULL) {
		fclose(f);
		memset(out, 0, sizeof *out);
		return SHOAL_ENOMEM;
	}
	if (fseeko(f, (off_t)hdr, SEEK_SET) != 0 || fread(buf, 1, out->count, f) != out->count) {
		log_error("%s: read failed", path);
		free(buf);
		fclose(f);
		memset(out, 0, sizeof *out);
		return SHOAL_EIO;
	}
	fclose(f);
	out->data = buf;
	out->owned = buf;
	return SHOAL_OK;
}

/* Labels in full (checked), the image file open at its validated header. */
static shoal_err
mnist_open(const char *dir, const char *split, ml_dataset *labels, FILE **images,
           size_t *hdr_len)
{
	ml_idx img, lab = {0};
	char path[4096];
	shoal_err err;
	FILE *f = NULL;

	memset(labels, 0, sizeof *labels);
	*images = NULL;
	if (dir == NULL || split == NULL)
		return SHOAL_EINVAL;
	if (snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte", dir, split) >= (int)sizeof path)
		return SHOAL_EINVAL;
	err = idx_open(path, &f, &img, hdr_len);
	if (err != SHOAL_OK)
		return err;
	if (img.ndims != 3 || img.dims[1] != 28 || img.dims[2] != 28) {
		log_error("%s: expected n x 28 x 28 images", path);
		err = SHOAL_EFORMAT;
		goto fail;
	}
	if (snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte", dir, split) >= (int)sizeof path) {
		err = SHOAL_EINVAL;
		goto fail;
	}
	err = ml_idx_read(path, &lab);
	if (err != SHOAL_OK)
		goto fail;
	if (lab.ndims != 1 || lab.dims[0] != img.dims[0]) {
		log_error("%s: %u labels for %u images", path, lab.dims[0], img.dims[0]);
		err = SHOAL_EFORMAT;
		goto fail;
	}
	for (size_t i = 0; i < lab.count; i++) {
		if (lab.data[i] >= ML_CLASSES) {
			log_error("%s: label %u at %zu is not a digit", path, lab.data[i], i);
			err = SHOAL_EFORMAT;
			goto fail;
		}
	}
	labels->n = lab.count;
	labels->labels = lab.owned;
	*images = f;
	return SHOAL_OK;
fail:
	ml_idx_fini(&lab);
	fclose(f);
	return err;
}

shoal_err
ml_mnist_load(const char *dir, const char *split, ml_dataset *out)
{
	size_t hdr, len;
	shoal_err err;
	FILE *f;

	err = mnist_open(dir, split, out, &f, &hdr);
	if (err != SHOAL_OK)
		return err;
	len = out->n * ML_IMAGE_PIXELS;
	out->images = malloc(len);
	if (out->images == NULL) {
		err = SHOAL_ENOMEM;
	} else if (fseeko(f, (off_t)hdr, SEEK_SET) != 0 || fread(out->images, 1, len, f) != len) {
		log_error("%s/%s-images-idx3-ubyte: read failed", dir, split);
		err = SHOAL_EIO;
	}
	fclose(f);
	if (err != SHOAL_OK)
		ml_dataset_fini(out);
	return err;
}

shoal_err
ml_mnist_load_labels(const char *dir, const char *split, ml_dataset *out)
{
	size_t hdr;
	FILE *f;
	shoal_err err = mnist_open(dir, split, out, &f, &hdr);

	if (err == SHOAL_OK)
		fclose(f);
	return err;
}

shoal_err
ml_mnist_load_rows(const char *dir, const char *split, const uint32_t *rows, size_t n,
                   ml_dataset *out)
{
	ml_dataset all;
	size_t hdr;
	shoal_err err;
	FILE *f;

	memset(out, 0, sizeof *out);
	if (rows == NULL || n == 0)
		return SHOAL_EINVAL;
	err = mnist_open(dir, split, &all, &f, &hdr);
	if (err != SHOAL_OK)
		return err;
	err = SHOAL_ENOMEM;
	if (n > SIZE_MAX / ML_IMAGE_PIXELS || (out->images = malloc(n * ML_IMAGE_PIXELS)) == NULL ||
	    (out->labels = malloc(n)) == NULL)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		if (rows[i] >= all.n) {
			log_error("%s/%s: example %u is beyond the %zu in the file", dir, split,
			          rows[i], all.n);
			err = SHOAL_EINVAL;
			goto fail;
		}
		if (fseeko(f, (off_t)(hdr + (size_t)rows[i] * ML_IMAGE_PIXELS), SEEK_SET) != 0 ||
		    fread(out->images + i * ML_IMAGE_PIXELS, 1, ML_IMAGE_PIXELS, f) !=
		        ML_IMAGE_PIXELS) {
			log_error("%s/%s-images-idx3-ubyte: read failed", dir, split);
			err = SHOAL_EIO;
			goto fail;
		}
		out->labels[i] = all.labels[rows[i]];
	}
	out->n = n;
	fclose(f);
	ml_dataset_fini(&all);
	return SHOAL_OK;
fail:
	fclose(f);
	ml_dataset_fini(&all);
	ml_dataset_fini(out);
	return err;
}

void
ml_dataset_fini(ml_dataset *ds)
{
	if (ds == NULL)
		return;
	free(ds->images);
	free(ds->labels);
	memset(ds, 0, sizeof *ds);
}

void
ml_gather(const ml_dataset *ds, const uint32_t *idx, size_t n, float *x, uint8_t *y)
{
	for (size_t i = 0; i < n; i++) {
		const uint8_t *src = ds->images + (size_t)idx[i] * ML_IMAGE_PIXELS;
		float *dst = x + i * ML_IMAGE_PIXELS;

		for (size_t j = 0; j < ML_IMAGE_PIXELS; j++)
			dst[j] = (float)src[j] / 255.0f;
		if (y != NULL)
			y[i] = ds->labels[idx[i]];
	}
}
