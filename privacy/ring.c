/* ring.c - m-bit packing of Z/2^m vectors, the wire form of masked values.
 *
 * Element j occupies bits [j*m, j*m + m) of one little-endian bit stream:
 * stream bit b is bit (b % 8) of byte b / 8, and each element's least
 * significant bit comes first. Bits after the last element, up to the byte
 * boundary, are zero; a reader rejects anything else, so every vector has
 * exactly one encoding. Size: ceil(n*m / 8) bytes.
 *
 *   m = 12, v = {0xabc, 0x123}: stream bits 0-11 = 0xabc, bits 12-23 = 0x123,
 *   i.e. the 24-bit little-endian integer 0x123abc:
 *       bc 3a 12
 *   m = 5, v = {0x1f, 0x01}: bits 0-4 = 11111, bits 5-9 = 00001, pad 6 bits:
 *       3f 00              (0x3f = 0b00111111; byte 1 holds bits 8-9 = 00)
 *
 * m = 8, 16, 24, 32 are whole bytes and take byte-copy fast paths; the
 * others go through a 64-bit accumulator. */
#include "ring.h"

#include <string.h>

size_t
sa_pack_size(size_t n, unsigned m)
{
	return (n / 8) * m + ((n % 8) * m + 7) / 8;
}

static uint32_t
low_mask(unsigned m)
{
	return m >= 32 ? UINT32_MAX : (UINT32_C(1) << m) - 1;
}

static void
put_le(uint8_t *p, uint32_t v, unsigned nbytes)
{
	for (unsigned i = 0; i < nbytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t
get_le(const uint8_t *p, unsigned nbytes)
{
	uint32_t v = 0;
	for (unsigned i = 0; i < nbytes; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

void
sa_pack(const uint32_t *v, size_t n, unsigned m, uint8_t *out)
{
	if (m < 1 || m > 32)
		return;
	uint32_t mask = low_mask(m);
	if (m % 8 == 0) {
		unsigned B = m / 8;
		for (size_t j = 0; j < n; j++)
			put_le(out + B * j, v[j], B);
		return;
	}
	uint64_t acc = 0;
	unsigned bits = 0; /* valid bits in acc, < 32 between elements */
	for (size_t j = 0; j < n; j++) {
		acc |= (uint64_t)(v[j] & mask) << bits;
		bits += m;
		if (bits >= 32) {
			put_le(out, (uint32_t)acc, 4);
			out += 4;
			acc >>= 32;
			bits -= 32;
		}
	}
	while (bits > 0) {
		*out++ = (uint8_t)acc; /* the last byte's high bits are the zero pad */
		acc >>= 8;
		bits = bits > 8 ? bits - 8 : 0;
	}
}

shoal_err
sa_unpack(const uint8_t *in, size_t len, size_t n, unsigned m, uint32_t *v)
{
	if (m < 1 || m > 32)
		return SHOAL_EINVAL;
	size_t size = sa_pack_size(n, m);
	if (len < size)
		return SHOAL_ETRUNC;
	if (len > size)
		return SHOAL_ETOOBIG;
	unsigned pad = (8 - (unsigned)((n % 8) * m % 8)) % 8;
	if (pad != 0 && (in[size - 1] >> (8 - pad)) != 0)
		return SHOAL_EMALFORMED;

	if (m % 8 == 0) {
		unsigned B = m / 8;
		for (size_t j = 0; j < n; j++)
			v[j] = get_le(in + B * j, B);
		return SHOAL_OK;
	}
	uint32_t mask = low_mask(m);
	uint64_t acc = 0;
	unsigned bits = 0;
	size_t i = 0;
	for (size_t j = 0; j < n; j++) {
		if (bits < m) {
			if (size - i >= 4) {
				acc |= (uint64_t)get_le(in + i, 4) << bits;
				i += 4;
				bits += 32;
			} else {
				/* Tail: fewer than 4 bytes left, take what this element needs. */
				while (bits < m) {
					acc |= (uint64_t)in[i++] << bits;
					bits += 8;
				}
			}
		}
		v[j] = (uint32_t)acc & mask;
		acc >>= m;
		bits -= m;
	}
	return SHOAL_OK;
}
