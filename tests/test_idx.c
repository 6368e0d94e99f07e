/* test_idx.c - IDX parsing (valid, wrong magic, every truncation, trailing
 * bytes, zero and overflowing dims), file reading, and real MNIST loading. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ml/ml.h"

/* 2 x 3 unsigned bytes. */
static const uint8_t small_idx[] = {
	0x00, 0x00, 0x08, 0x02,  /* magic: u8, 2 dims */
	0x00, 0x00, 0x00, 0x02,  /* dims[0] = 2 */
	0x00, 0x00, 0x00, 0x03,  /* dims[1] = 3 */
	1, 2, 3, 4, 5, 250,
};

static void
test_parse_valid(void **state)
{
	ml_idx idx;

	assert_int_equal(ml_idx_parse(small_idx, sizeof small_idx, &idx), SHOAL_OK);
	assert_int_equal(idx.ndims, 2);
	assert_int_equal(idx.dims[0], 2);
	assert_int_equal(idx.dims[1], 3);
	assert_int_equal(idx.count, 6);
	assert_ptr_equal(idx.data, small_idx + 12);
	assert_null(idx.owned);
	assert_int_equal(idx.data[5], 250);
	ml_idx_fini(&idx); /* no-op on a borrowed buffer */
}

static void
test_parse_wrong_magic(void **state)
{
	static const struct { size_t at; uint8_t val; } cases[] = {
		{0, 0x01}, /* first zero byte */
		{1, 0x08}, /* second zero byte */
		{2, 0x09}, /* i8 instead of u8 */
		{2, 0x0d}, /* float */
		{3, 0x00}, /* zero dims */
		{3, 0x05}, /* too many dims */
	};
	uint8_t buf[sizeof small_idx];
	ml_idx idx;

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		memcpy(buf, small_idx, sizeof buf);
		buf[cases[i].at] = cases[i].val;
		assert_int_equal(ml_idx_parse(buf, sizeof buf, &idx), SHOAL_EFORMAT);
	}
	/* A cut file with a bad first byte is judged on its magic. */
	buf[0] = 0x42;
	assert_int_equal(ml_idx_parse(buf, 1, &idx), SHOAL_EFORMAT);
}

static void
test_parse_every_truncation(void **state)
{
	ml_idx idx;

	for (size_t len = 0; len < sizeof small_idx; len++) {
		shoal_err err = ml_idx_parse(small_idx, len, &idx);

		if (err != SHOAL_ETRUNC)
			fail_msg("length %zu: got %d, want SHOAL_ETRUNC", len, err);
		assert_int_equal(idx.count, 0);
	}
}

static void
test_parse_trailing_bytes(void **state)
{
	uint8_t buf[sizeof small_idx + 1];
	ml_idx idx;

	memcpy(buf, small_idx, sizeof small_idx);
	buf[sizeof small_idx] = 0;
	assert_int_equal(ml_idx_parse(buf, sizeof buf, &idx), SHOAL_EINVAL);
}

static void
test_parse_zero_dim(void **state)
{
	uint8_t buf[sizeof small_idx];
	ml_idx idx;

	memcpy(buf, small_idx, sizeof buf);
	buf[11] = 0; /* dims[1] = 0 */
	assert_int_equal(ml_idx_parse(buf, 12, &idx), SHOAL_EINVAL);
	assert_int_equal(ml_idx_parse(buf, sizeof buf, &idx), SHOAL_EINVAL);
}

static void
test_parse_overflow(void **state)
{
	/* 4 dims of 2^32-1: the element count overflows size_t. */
	uint8_t buf[4 + 16 + 8];
	ml_idx idx;

	memset(buf, 0xff, sizeof buf);
	buf[0] = 0;
	buf[1] = 0;
	buf[2] = 0x08;
	buf[3] = 4;
	assert_int_equal(ml_idx_parse(buf, sizeof buf, &idx), SHOAL_EINVAL);
	/* Two dims whose product fits but exceeds the buffer: truncated. */
	buf[3] = 2;
	assert_int_equal(ml_idx_parse(buf, sizeof buf, &idx), SHOAL_ETRUNC);
}

/* Writes len bytes to a fresh file under dir; returns 0 on success. */
static int
write_file(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	int ok;

	if (f == NULL)
		return -1;
	ok = fwrite(buf, 1, len, f) == len;
	return fclose(f) == 0 && ok ? 0 : -1;
}

static void
test_read_file(void **state)
{
	char dir[] = "/tmp/shoal_idx_XXXXXX", path[256];
	ml_idx idx;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/small", dir);
	assert_int_equal(write_file(path, small_idx, sizeof small_idx), 0);
	assert_int_equal(ml_idx_read(path, &idx), SHOAL_OK);
	assert_int_equal(idx.count, 6);
	assert_non_null(idx.owned);
	assert_memory_equal(idx.data, small_idx + 12, 6);
	ml_idx_fini(&idx);
	assert_null(idx.owned);
	/* A truncated file on disk reports the parse error. */
	assert_int_equal(write_file(path, small_idx, sizeof small_idx - 1), 0);
	assert_int_equal(ml_idx_read(path, &idx), SHOAL_ETRUNC);
	unlink(path);
	rmdir(dir);
}

static void
test_mnist_train(void **state)
{
	static const uint8_t first[] = {5, 0, 4, 1, 9};
	ml_dataset ds;
	size_t counts[ML_CLASSES] = {0};

	assert_int_equal(ml_mnist_load(SHOAL_DATA_DIR, "train", &ds), SHOAL_OK);
	assert_int_equal(ds.n, 60000);
	assert_memory_equal(ds.labels, first, sizeof first);
	for (size_t i = 0; i < ds.n; i++)
		counts[ds.labels[i]]++;
	assert_int_equal(counts[0], 5923); /* the known class sizes of MNIST */
	assert_int_equal(counts[1], 6742);
	/* Image 0 (a 5) has ink in the middle and none in the corner. */
	assert_int_equal(ds.images[0], 0);
	assert_true(ds.images[14 * 28 + 14] > 0 || ds.images[13 * 28 + 13] > 0 ||
	            ds.images[15 * 28 + 12] > 0);
	ml_dataset_fini(&ds);
	assert_null(ds.images);
}

static void
test_mnist_test(void **state)
{
	static const uint8_t first[] = {7, 2, 1, 0, 4};
	ml_dataset ds;

	assert_int_equal(ml_mnist_load(SHOAL_DATA_DIR, "t10k", &ds), SHOAL_OK);
	assert_int_equal(ds.n, 10000);
	assert_memory_equal(ds.labels, first, sizeof first);
	ml_dataset_fini(&ds);
}

static void
test_mnist_missing_file(void **state)
{
	char log_path[] = "/tmp/shoal_idx_log_XXXXXX", text[4096] = {0};
	int fd = mkstemp(log_path), saved;
	ml_dataset ds;
	shoal_err err;
	FILE *f;

	/* Capture stderr to check the message tells the user what to do. */
	assert_true(fd >= 0);
	fflush(stderr);
	saved = dup(2);
	assert_true(saved >= 0);
	assert_int_equal(dup2(fd, 2), 2);
	err = ml_mnist_load("/nonexistent/shoal-data", "train", &ds);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(fd);
	assert_int_equal(err, SHOAL_EIO);
	assert_null(ds.images);
	f = fopen(log_path, "r");
	assert_non_null(f);
	assert_true(fread(text, 1, sizeof text - 1, f) > 0);
	fclose(f);
	unlink(log_path);
	assert_non_null(strstr(text, "scripts/setup.sh"));
	assert_non_null(strstr(text, "train-images-idx3-ubyte"));
}

/* An IDX header for dims (n, a, b) or (n) followed by the body. */
static uint8_t *
make_idx(uint32_t ndims, const uint32_t *dims, const uint8_t *body, size_t body_len, size_t *len)
{
	uint8_t *buf;

	*len = 4 + 4 * ndims + body_len;
	buf = calloc(1, *len);
	if (buf == NULL)
		return NULL;
	buf[2] = 0x08;
	buf[3] = (uint8_t)ndims;
	for (uint32_t i = 0; i < ndims; i++) {
		buf[4 + 4 * i] = (uint8_t)(dims[i] >> 24);
		buf[5 + 4 * i] = (uint8_t)(dims[i] >> 16);
		buf[6 + 4 * i] = (uint8_t)(dims[i] >> 8);
		buf[7 + 4 * i] = (uint8_t)dims[i];
	}
	if (body_len > 0)
		memcpy(buf + 4 + 4 * ndims, body, body_len);
	return buf;
}

/* Writes a 2-image dataset to dir with the given image dims and labels. */
static void
write_dataset(const char *dir, const uint32_t img_dims[3], uint32_t n_labels,
              const uint8_t *labels)
{
	size_t count = (size_t)img_dims[0] * img_dims[1] * img_dims[2], len;
	uint8_t *pix = calloc(1, count), *buf;
	char path[256];

	assert_non_null(pix);
	buf = make_idx(3, img_dims, pix, count, &len);
	assert_non_null(buf);
	snprintf(path, sizeof path, "%s/x-images-idx3-ubyte", dir);
	assert_int_equal(write_file(path, buf, len), 0);
	free(buf);
	free(pix);
	buf = make_idx(1, &n_labels, labels, n_labels, &len);
	assert_non_null(buf);
	snprintf(path, sizeof path, "%s/x-labels-idx1-ubyte", dir);
	assert_int_equal(write_file(path, buf, len), 0);
	free(buf);
}

static void
test_mnist_bad_shapes(void **state)
{
	static const uint32_t good[3] = {2, 28, 28}, narrow[3] = {2, 28, 27};
	static const uint8_t ok_labels[3] = {3, 9, 1}, bad_labels[2] = {3, 10};
	char dir[] = "/tmp/shoal_mnist_XXXXXX", path[256];
	ml_dataset ds;

	assert_non_null(mkdtemp(dir));
	write_dataset(dir, good, 2, ok_labels);
	assert_int_equal(ml_mnist_load(dir, "x", &ds), SHOAL_OK);
	assert_int_equal(ds.n, 2);
	assert_int_equal(ds.labels[1], 9);
	ml_dataset_fini(&ds);
	write_dataset(dir, narrow, 2, ok_labels);
	assert_int_equal(ml_mnist_load(dir, "x", &ds), SHOAL_EFORMAT);
	write_dataset(dir, good, 3, ok_labels); /* 3 labels, 2 images */
	assert_int_equal(ml_mnist_load(dir, "x", &ds), SHOAL_EFORMAT);
	write_dataset(dir, good, 2, bad_labels);
	assert_int_equal(ml_mnist_load(dir, "x", &ds), SHOAL_EFORMAT);
	assert_null(ds.images);
	snprintf(path, sizeof path, "%s/x-images-idx3-ubyte", dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/x-labels-idx1-ubyte", dir);
	unlink(path);
	rmdir(dir);
}

/* The partial loaders give the same bytes as the full one, read only the
 * rows asked for, and refuse what ml_mnist_load refuses. */
static void
test_mnist_rows_and_labels(void **state)
{
	static const uint32_t rows[] = {59999, 0, 31337, 7, 7, 12000};
	ml_dataset all, lab, sub;

	assert_int_equal(ml_mnist_load(SHOAL_DATA_DIR, "train", &all), SHOAL_OK);
	assert_int_equal(ml_mnist_load_labels(SHOAL_DATA_DIR, "train", &lab), SHOAL_OK);
	assert_int_equal(lab.n, all.n);
	assert_null(lab.images);
	assert_memory_equal(lab.labels, all.labels, all.n);
	assert_int_equal(ml_mnist_load_rows(SHOAL_DATA_DIR, "train", rows, 6, &sub), SHOAL_OK);
	assert_int_equal(sub.n, 6);
	for (size_t i = 0; i < 6; i++) {
		assert_int_equal(sub.labels[i], all.labels[rows[i]]);
		assert_memory_equal(sub.images + i * ML_IMAGE_PIXELS,
		                    all.images + (size_t)rows[i] * ML_IMAGE_PIXELS, ML_IMAGE_PIXELS);
	}
	ml_dataset_fini(&sub);
	ml_dataset_fini(&lab);
	ml_dataset_fini(&all);
}

static void
test_mnist_rows_bad_input(void **state)
{
	static const uint32_t good[3] = {2, 28, 28}, narrow[3] = {2, 28, 27};
	static const uint8_t ok_labels[2] = {3, 9}, bad_labels[2] = {3, 10};
	static const uint32_t in[2] = {1, 0}, out_of_range[2] = {0, 2};
	char dir[] = "/tmp/shoal_mnist_XXXXXX", path[256];
	ml_dataset ds;
	FILE *f;

	assert_non_null(mkdtemp(dir));
	write_dataset(dir, good, 2, ok_labels);
	assert_int_equal(ml_mnist_load_rows(dir, "x", in, 2, &ds), SHOAL_OK);
	assert_int_equal(ds.n, 2);
	assert_int_equal(ds.labels[0], 9);
	ml_dataset_fini(&ds);
	assert_int_equal(ml_mnist_load_rows(dir, "x", out_of_range, 2, &ds), SHOAL_EINVAL);
	assert_null(ds.images);
	assert_int_equal(ml_mnist_load_rows(dir, "x", in, 0, &ds), SHOAL_EINVAL);
	/* A body one byte short or long, read without loading it. */
	snprintf(path, sizeof path, "%s/x-images-idx3-ubyte", dir);
	assert_int_equal(truncate(path, 4 + 12 + 2 * 784 - 1), 0);
	assert_int_equal(ml_mnist_load_labels(dir, "x", &ds), SHOAL_ETRUNC);
	assert_int_equal(ml_mnist_load(dir, "x", &ds), SHOAL_ETRUNC);
	assert_int_equal(truncate(path, 4 + 12 + 2 * 784 + 1), 0);
	assert_int_equal(ml_mnist_load_rows(dir, "x", in, 2, &ds), SHOAL_EINVAL);
	f = fopen(path, "r+b");
	assert_non_null(f);
	assert_int_equal(fputc(0x09, f), 0x09); /* wrong magic */
	fclose(f);
	assert_int_equal(ml_mnist_load_labels(dir, "x", &ds), SHOAL_EFORMAT);
	write_dataset(dir, narrow, 2, ok_labels);
	assert_int_equal(ml_mnist_load_labels(dir, "x", &ds), SHOAL_EFORMAT);
	write_dataset(dir, good, 2, bad_labels);
	assert_int_equal(ml_mnist_load_rows(dir, "x", in, 2, &ds), SHOAL_EFORMAT);
	assert_null(ds.labels);
	unlink(path);
	assert_int_equal(ml_mnist_load_labels(dir, "x", &ds), SHOAL_EIO);
	snprintf(path, sizeof path, "%s/x-labels-idx1-ubyte", dir);
	unlink(path);
	rmdir(dir);
}

static void
test_gather(void **state)
{
	uint8_t images[3 * ML_IMAGE_PIXELS] = {0}, labels[3] = {4, 7, 2};
	ml_dataset ds = {3, images, labels};
	uint32_t idx[2] = {2, 0};
	float x[2 * ML_IMAGE_PIXELS];
	uint8_t y[2];

	images[2 * ML_IMAGE_PIXELS + 5] = 255;
	images[2 * ML_IMAGE_PIXELS + 6] = 51;
	images[783] = 1;
	ml_gather(&ds, idx, 2, x, y);
	assert_int_equal(y[0], 2);
	assert_int_equal(y[1], 4);
	assert_true(x[5] == 1.0f);
	assert_true(x[6] == 0.2f);
	assert_true(x[4] == 0.0f);
	assert_true(x[ML_IMAGE_PIXELS + 783] == 1.0f / 255.0f);
}


static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_parse_valid),
	cmocka_unit_test(test_parse_wrong_magic),
	cmocka_unit_test(test_parse_every_truncation),
	cmocka_unit_test(test_parse_trailing_bytes),
	cmocka_unit_test(test_parse_zero_dim),
	cmocka_unit_test(test_parse_overflow),
	cmocka_unit_test(test_read_file),
	cmocka_unit_test(test_mnist_train),
	cmocka_unit_test(test_mnist_test),
	cmocka_unit_test(test_mnist_missing_file),
	cmocka_unit_test(test_mnist_bad_shapes),
	cmocka_unit_test(test_mnist_rows_and_labels),
	cmocka_unit_test(test_mnist_rows_bad_input),
	cmocka_unit_test(test_gather),
};

SHOAL_TEST_MAIN(tests)
