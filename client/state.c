/* state.c - the client's identity key and residual on disk (see state.h). */
#include "client/state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "common/log.h"
#include "privacy/ident.h"

#define MAGIC "SHRS"
#define FORMAT 1u
#define HEADER 12u

static uint64_t
fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

static void
put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static bool
write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
	}
	return true;
}

shoal_err
cli_state_save_residual(const char *dir, const float *residual, size_t dim)
{
	char tmp[4096], dst[4096];
	size_t n = HEADER + 4 * dim + 8;
	uint8_t *buf = malloc(n);
	shoal_err e = SHOAL_EIO;
	int fd = -1, dfd = -1;

	if (buf == NULL)
		return SHOAL_ENOMEM;
	snprintf(tmp, sizeof tmp, "%s/residual.tmp", dir);
	snprintf(dst, sizeof dst, "%s/residual", dir);
	memcpy(buf, MAGIC, 4);
	put32(buf + 4, FORMAT);
	put32(buf + 8, (uint32_t)dim);
	for (size_t j = 0; j < dim; j++) {
		uint32_t u;
		memcpy(&u, &residual[j], 4);
		put32(buf + HEADER + 4 * j, u);
	}
	uint64_t h = fnv1a(buf, n - 8);
	for (int i = 0; i < 8; i++)
		buf[n - 8 + i] = (uint8_t)(h >> (8 * i));
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0 ||
	    !write_all(fd, buf, n) || fsync(fd) != 0 || close(fd) != 0) {
		log_error("cannot write %s: %s (is --state-dir writable and not full?)", tmp,
		          strerror(errno));
		if (fd >= 0)
			close(fd);
		unlink(tmp);
		goto out;
	}
	if (rename(tmp, dst) != 0) {
		log_error("cannot rename %s to %s: %s", tmp, dst, strerror(errno));
		unlink(tmp);
		goto out;
	}
	if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		fsync(dfd);
		close(dfd);
	}
	e = SHOAL_OK;
out:
	free(buf);
	return e;
}

shoal_err
cli_state_load_residual(const char *dir, float *residual, size_t dim)
{
	char path[4096];
	size_t n = HEADER + 4 * dim + 8;
	uint8_t *buf = malloc(n + 1);
	shoal_err e = SHOAL_EIO;
	FILE *f;

	if (buf == NULL)
		return SHOAL_ENOMEM;
	snprintf(path, sizeof path, "%s/residual", dir);
	if ((f = fopen(path, "rb")) == NULL) {
		free(buf);
		return SHOAL_EIO;
	}
	size_t got = fread(buf, 1, n + 1, f);
	fclose(f);
	if (got < HEADER || memcmp(buf, MAGIC, 4) != 0 || get32(buf + 4) != FORMAT)
		e = got < HEADER ? SHOAL_ETRUNC : SHOAL_EFORMAT;
	else if (get32(buf + 8) != dim)
		e = SHOAL_EDIM;
	else if (got != n)
		e = got < n ? SHOAL_ETRUNC : SHOAL_EFORMAT;
	else {
		uint64_t h = 0;
		for (int i = 0; i < 8; i++)
			h |= (uint64_t)buf[n - 8 + i] << (8 * i);
		if (h != fnv1a(buf, n - 8)) {
			e = SHOAL_EFORMAT;
		} else {
			for (size_t j = 0; j < dim; j++) {
				uint32_t u = get32(buf + HEADER + 4 * j);
				memcpy(&residual[j], &u, 4);
			}
			e = SHOAL_OK;
		}
	}
	if (e != SHOAL_OK)
		log_error("residual file %s refused: %s", path, shoal_strerror(e));
	free(buf);
	return e;
}

/* ---- the identity key ------------------------------------------------------ */

#define ID_MAGIC "SHID"
#define ID_FORMAT 1u
#define ID_FILE_BYTES (8 + ID_SEED_BYTES + ID_PK_BYTES + 8)

static void
sync_folder(const char *dir)
{
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
}

/* Writes a fresh key to DIR/identity unless it exists. Errors: SHOAL_EIO
 * (logged), SHOAL_ENOMEM. */
static shoal_err
create_identity(const char *dir)
{
	char tmp[4096], dst[4096];
	uint8_t *buf = sodium_malloc(ID_FILE_BYTES), *sk = sodium_malloc(ID_SK_BYTES);
	uint8_t pk[ID_PK_BYTES];
	shoal_err e = SHOAL_ENOMEM;
	int fd = -1;

	if (buf == NULL || sk == NULL || id_keypair(pk, sk) != SHOAL_OK)
		goto out;
	e = SHOAL_EIO;
	snprintf(tmp, sizeof tmp, "%s/identity.tmp", dir);
	snprintf(dst, sizeof dst, "%s/identity", dir);
	memcpy(buf, ID_MAGIC, 4);
	put32(buf + 4, ID_FORMAT);
	crypto_sign_ed25519_sk_to_seed(buf + 8, sk);
	memcpy(buf + 8 + ID_SEED_BYTES, pk, ID_PK_BYTES);
	uint64_t h = fnv1a(buf, ID_FILE_BYTES - 8);
	for (int i = 0; i < 8; i++)
		buf[ID_FILE_BYTES - 8 + i] = (uint8_t)(h >> (8 * i));
	unlink(tmp); /* left by a crash: it was never the key */
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0 ||
	    !write_all(fd, buf, ID_FILE_BYTES) || fsync(fd) != 0 || close(fd) != 0) {
		log_error("cannot write %s: %s (is --state-dir writable and not full?)", tmp,
		          strerror(errno));
		if (fd >= 0)
			close(fd);
		unlink(tmp);
		goto out;
	}
	/* link() never replaces: if a second client process made the key
	 * meanwhile, both use that one. Filesystems without hard links get
	 * a rename (which would replace only in that race). */
	if (link(tmp, dst) != 0 && errno != EEXIST && rename(tmp, dst) != 0) {
		log_error("cannot create %s: %s", dst, strerror(errno));
		unlink(tmp);
		goto out;
	}
	unlink(tmp);
	sync_folder(dir);
	e = SHOAL_OK;
out:
	if (buf != NULL)
		sodium_free(buf); /* wipes */
	if (sk != NULL)
		sodium_free(sk);
	return e;
}

shoal_err
cli_state_identity(const char *dir, bool create, uint8_t *sk, bool *created)
{
	char path[4096];
	uint8_t *buf = NULL, pk[ID_PK_BYTES];
	shoal_err e;
	ssize_t got = 0;
	int fd;

	*created = false;
	if (sodium_init() < 0)
		return SHOAL_ENOMEM;
	snprintf(path, sizeof path, "%s/identity", dir);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 && errno == ENOENT && create) {
		if ((e = create_identity(dir)) != SHOAL_OK)
			return e;
		*created = true;
		fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0) {
		if (errno != ENOENT || create)
			log_error("cannot open %s: %s", path, strerror(errno));
		return SHOAL_EIO;
	}
	/* One byte more than the format, to see a longer file. */
	if ((buf = sodium_malloc(ID_FILE_BYTES + 1)) == NULL) {
		close(fd);
		return SHOAL_ENOMEM;
	}
	while (got < ID_FILE_BYTES + 1) {
		ssize_t r = read(fd, buf + got, (size_t)(ID_FILE_BYTES + 1 - got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			log_error("cannot read %s: %s", path, strerror(errno));
			close(fd);
			sodium_free(buf);
			return SHOAL_EIO;
		}
		if (r == 0)
			break;
		got += r;
	}
	close(fd);
	e = SHOAL_EFORMAT;
	if (got == ID_FILE_BYTES && memcmp(buf, ID_MAGIC, 4) == 0 && get32(buf + 4) == ID_FORMAT) {
		uint64_t h = 0;
		for (int i = 0; i < 8; i++)
			h |= (uint64_t)buf[ID_FILE_BYTES - 8 + i] << (8 * i);
		if (h == fnv1a(buf, ID_FILE_BYTES - 8)) {
			id_keypair_from_seed(buf + 8, pk, sk);
			if (memcmp(pk, buf + 8 + ID_SEED_BYTES, ID_PK_BYTES) == 0)
				e = SHOAL_OK;
			else
				sodium_memzero(sk, ID_SK_BYTES);
		}
	}
	sodium_free(buf);
	if (e != SHOAL_OK)
		log_error("identity key file %s is damaged (%zd bytes, bad format or checksum); it "
		          "is not replaced: restore it from a backup, or move it away to make a new "
		          "key (whose public key the server must then admit)", path, got);
	return e;
}
