/* fuzz_idx.c - libFuzzer harness for the IDX reader (ml/ml.h): ml_idx_parse
 * on the bytes, ml_idx_read on the same bytes as a file, and the MNIST
 * loaders (ml_mnist_load, ml_mnist_load_labels, ml_mnist_load_rows) with the
 * bytes as the image file and a label file made to go with it.
 *
 * Properties: parse and read agree (verdict, dims, body); an accepted file
 * has exactly the header its dims describe followed by count bytes, all
 * readable; the loaders accept exactly the n x 28 x 28 image files whose n
 * labels are digits, and return their bytes (rows: the chosen ones; a row
 * beyond the file is refused). Files live in a
 * private folder under $TMPDIR (else /dev/shm or /tmp), removed at exit. */
#include "tests/fuzz/fuzz.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "ml/ml.h"

static char dir[512], img_path[600], lab_path[600];

static void
cleanup(void)
{
	unlink(img_path);
	unlink(lab_path);
	rmdir(dir);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(-1);
	/* a tmpfs if there is one: a disk file system's truncations made
	 * every run several times slower */
	const char *t = getenv("TMPDIR");
	if (t == NULL || *t == '\0')
		t = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(dir, sizeof dir, "%.400s/shoal-fuzz-idx-XXXXXX", t);
	if (mkdtemp(dir) == NULL) {
		perror(dir);
		abort();
	}
	snprintf(img_path, sizeof img_path, "%s/fz-images-idx3-ubyte", dir);
	snprintf(lab_path, sizeof lab_path, "%s/fz-labels-idx1-ubyte", dir);
	atexit(cleanup);
	return 0;
}

static void
spit(const char *path, const uint8_t *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	CHECK(f != NULL);
	CHECK(n == 0 || fwrite(p, 1, n, f) == n);
	CHECK(fclose(f) == 0);
}

static uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size ? size : 1);
	CHECK(buf != NULL);
	memcpy(buf, data, size);

	ml_idx x, y;
	shoal_err e = ml_idx_parse(buf, size, &x);
	if (e == SHOAL_OK) {
		CHECK(x.ndims >= 1 && x.ndims <= ML_IDX_MAX_DIMS && x.owned == NULL);
		size_t hdr = 4 + 4 * (size_t)x.ndims, count = 1;
		CHECK(size >= hdr && buf[0] == 0 && buf[1] == 0 && buf[2] == 8 && buf[3] == x.ndims);
		for (uint32_t i = 0; i < x.ndims; i++) {
			CHECK(x.dims[i] == be32(buf + 4 + 4 * i) && x.dims[i] > 0);
			count *= x.dims[i];
		}
		CHECK(x.count == count && x.data == buf + hdr && hdr + count == size);
		unsigned sum = 0;
		for (size_t i = 0; i < x.count; i++)
			sum += x.data[i];
		(void)sum;
	} else {
		CHECK(x.data == NULL && x.owned == NULL);
	}

	/* the same bytes from a file */
	spit(img_path, buf, size);
	shoal_err e2 = ml_idx_read(img_path, &y);
	CHECK(e2 == e);
	if (e == SHOAL_OK) {
		CHECK(y.ndims == x.ndims && y.count == x.count && y.owned == y.data);
		CHECK(memcmp(y.dims, x.dims, sizeof x.dims) == 0);
		CHECK(y.count == 0 || memcmp(y.data, x.data, y.count) == 0);
	}
	ml_idx_fini(&y);

	/* as an MNIST image file, with a label file of the count its header
	 * names (or its first dimension field when it does not parse), labels
	 * taken from its bytes so that some are not digits */
	uint32_t n = e == SHOAL_OK ? x.dims[0] : size >= 8 ? be32(buf + 4) % 4096 : 1;
	size_t lab_len = 8 + (size_t)n;
	uint8_t *lab = malloc(lab_len);
	CHECK(lab != NULL);
	lab[0] = 0, lab[1] = 0, lab[2] = 8, lab[3] = 1;
	lab[4] = (uint8_t)(n >> 24), lab[5] = (uint8_t)(n >> 16);
	lab[6] = (uint8_t)(n >> 8), lab[7] = (uint8_t)n;
	bool digits = true;
	for (uint32_t i = 0; i < n; i++) {
		lab[8 + i] = size > 0 ? (uint8_t)(buf[(size - 1 - i % size)] % 11) : 0; /* 10: no digit */
		digits &= lab[8 + i] < 10;
	}
	spit(lab_path, lab, lab_len);
	bool ok = e == SHOAL_OK && x.ndims == 3 && x.dims[1] == 28 && x.dims[2] == 28 && digits;
	ml_dataset ds;
	CHECK((ml_mnist_load(dir, "fz", &ds) == SHOAL_OK) == ok);
	if (ok) {
		CHECK(ds.n == n && memcmp(ds.images, x.data, x.count) == 0);
		CHECK(memcmp(ds.labels, lab + 8, n) == 0);
	}
	ml_dataset_fini(&ds);
	CHECK((ml_mnist_load_labels(dir, "fz", &ds) == SHOAL_OK) == ok);
	if (ok)
		CHECK(ds.n == n && ds.images == NULL && memcmp(ds.labels, lab + 8, n) == 0);
	ml_dataset_fini(&ds);
	uint32_t rows[3] = {n - 1, 0, n / 2};
	CHECK((ml_mnist_load_rows(dir, "fz", rows, 3, &ds) == SHOAL_OK) == ok);
	if (ok) {
		CHECK(ds.n == 3);
		for (int r = 0; r < 3; r++) {
			CHECK(memcmp(ds.images + (size_t)r * ML_IMAGE_PIXELS,
			             x.data + (size_t)rows[r] * ML_IMAGE_PIXELS, ML_IMAGE_PIXELS) == 0);
			CHECK(ds.labels[r] == lab[8 + rows[r]]);
		}
	}
	ml_dataset_fini(&ds);
	rows[1] = n; /* beyond the file */
	CHECK(ml_mnist_load_rows(dir, "fz", rows, 3, &ds) != SHOAL_OK);
	CHECK(ds.images == NULL && ds.labels == NULL && ds.n == 0);
	free(lab);
	free(buf);
	return 0;
}
