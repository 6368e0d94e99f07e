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

shoal_err
ml_idx_parse(const uint8_t *buf, size_t len, ml_idx *out)
{
	static const uint8_t magic_prefix[3] = {0x00, 0x00, IDX_TYPE_U8};
	ml_idx r = {0};
	size_t hdr, count = 1;
	uint32_t ndims;

	memset(out, 0, sizeof *out);
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
	hdr = 4 + 4 * (size_t)ndims;
	if (len < hdr)
		return SHOAL_ETRUNC;
	for (uint32_t i = 0; i < ndims; i++) {
		uint32_t d = be32(buf + 4 + 4 * i);

		if (d == 0 || count > (SIZE_MAX - hdr) / d)
			return SHOAL_EINVAL;
		count *= d;
		r.dims[i] = d;
	}
	if (len - hdr < count)
		return SHOAL_ETRUNC;
	if (len - hdr > count)
		return SHOAL_EINVAL;
	r.ndims = ndims;
	r.count = count;
	r.data = buf + hdr;
	*out = r;
	return SHOAL_OK;
}

shoal_err
ml_idx_read(const char *path, ml_idx *out)
{
	uint8_t *buf = NULL;
	struct stat st;
	shoal_err err;
	size_t len;
	FILE *f;

	memset(out, 0, sizeof *out);
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
	len = (size_t)st.st_size;
	buf = malloc(len > 0 ? len : 1);
	if (buf == NULL) {
		fclose(f);
		return SHOAL_ENOMEM;
	}
	if (fread(buf, 1, len, f) != len) {
		log_error("%s: read failed", path);
		free(buf);
		fclose(f);
		return SHOAL_EIO;
	}
	fclose(f);
	err = ml_idx_parse(buf, len, out);
	if (err != SHOAL_OK) {
		log_error("%s: not a valid IDX file (%s); run scripts/setup.sh to fetch it again",
		          path, shoal_strerror(err));
		free(buf);
		return err;
	}
	/* Move the body to the front so owned == data: a dataset can then take
	 * the buffer over without copying. */
	memmove(buf, out->data, out->count);
	out->data = buf;
	out->owned = buf;
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

shoal_err
ml_mnist_load(const char *dir, const char *split, ml_dataset *out)
{
	ml_idx img = {0}, lab = {0};
	char path[4096];
	shoal_err err;

	memset(out, 0, sizeof *out);
	if (dir == NULL || split == NULL)
		return SHOAL_EINVAL;
	if (snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte", dir, split) >= (int)sizeof path)
		return SHOAL_EINVAL;
	err = ml_idx_read(path, &img);
	if (err != SHOAL_OK)
		goto fail;
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
	out->n = img.dims[0];
	out->images = img.owned;
	out->labels = lab.owned;
	return SHOAL_OK;
fail:
	ml_idx_fini(&img);
	ml_idx_fini(&lab);
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
