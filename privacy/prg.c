/* prg.c - ChaCha20 mask expansion (specification in prg.h).
 *
 * This is the hot loop of secure aggregation: the server adds or removes one
 * mask vector per seed, d coordinates each. Keystream is produced a few KB
 * at a time into a stack buffer that stays in L1, then folded into v by a
 * loop specialised for the element width B. After a short first chunk that
 * reaches an element index divisible by 64, every chunk starts on a block
 * boundary, so no keystream block is computed twice.
 *
 * Folding must cost little next to ChaCha20 itself. For B = 1, 2, 4 GCC
 * -O2 vectorises fixed-size inner loops. The 3-byte words of B = 3 (m =
 * 17..24, the usual SecAgg width) it does not, so x86-64 gets AVX2 and SSE2
 * loops; other targets the portable one.
 *
 * ChaCha20 itself is nearly all the cost, so on x86-64 the keystream comes
 * from chacha20_x16 (AVX-512F, sixteen blocks at once, one block per 32-bit
 * lane) or chacha20_x8 (AVX2, eight) below rather than from libsodium,
 * whose ChaCha20 (1.0.18) is AVX2 at best; elsewhere libsodium gives the
 * same bytes. On one core of the AMD EPYC test machine (AVX-512,
 * about 3.5 GHz), keystream 3 KB at a time: libsodium 1.9-2.1 GB/s,
 * chacha20_x8 2.4-2.5 GB/s, chacha20_x16 6.8 GB/s. There, m = 24, 220 masks
 * of 100,000 elements (the unmask of 100 clients, 14 neighbours, 10%
 * dropped) take 12 ms of CPU time with chacha20_x16, 31 ms with chacha20_x8
 * and 34-39 ms with libsodium (medians of 21 runs). */
#include "prg.h"

#include <string.h>

#include <sodium.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

enum {
	CHUNK = 4096, /* keystream bytes per chunk */
	STEP = 16,    /* elements per fixed-size inner loop */
	X8 = 512,     /* bytes of one chacha20_x8 step: eight blocks */
	X16 = 1024,   /* bytes of one chacha20_x16 step: sixteen blocks */
};

/* Input of libsodium's XOR: keystream XOR 0 = keystream. */
static _Alignas(64) const uint8_t zeros[CHUNK + 64];

static inline uint32_t
ld8(const uint8_t *p)
{
	return p[0];
}

static inline uint32_t
ld16(const uint8_t *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	uint16_t v;
	memcpy(&v, p, sizeof v);
	return v;
#else
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
#endif
}

static inline uint32_t
ld24(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

static inline uint32_t
ld32(const uint8_t *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	uint32_t v;
	memcpy(&v, p, sizeof v);
	return v;
#else
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
/* ChaCha20 (RFC 8439, zero nonce) blocks ctr, ctr + 1, ... into out, eight
 * at a time: lane i of vector w holds word w of block ctr + g + i. After
 * the rounds an 8x8 transpose of each half of the state turns lanes back
 * into blocks. Writes 512 * ceil(nblocks / 8) bytes. The block counter is
 * word 12 alone and wraps mod 2^32, as in libsodium's IETF variant. */
#define ROTL(x, n) _mm256_or_si256(_mm256_slli_epi32(x, n), _mm256_srli_epi32(x, 32 - (n)))
#define QR(a, b, c, d)                                                          \
	do {                                                                    \
		a = _mm256_add_epi32(a, b);                                     \
		d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), rot16);         \
		c = _mm256_add_epi32(c, d);                                     \
		b = ROTL(_mm256_xor_si256(b, c), 12);                           \
		a = _mm256_add_epi32(a, b);                                     \
		d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), rot8);          \
		c = _mm256_add_epi32(c, d);                                     \
		b = ROTL(_mm256_xor_si256(b, c), 7);                            \
	} while (0)

/* Eight vectors holding words w..w+7 of blocks 0..7 (lane = block) to
 * bytes [4w, 4w + 32) of each 64-byte block at o: after the 32-bit and
 * 64-bit unpacks u_q (q < 4) holds words w..w+3 of block q in its low
 * 128-bit lane and of block q + 4 in its high lane, u_{q+4} the same for
 * words w+4..w+7. */
#define STORE8(a0, a1, a2, a3, a4, a5, a6, a7, o)                                              \
	do {                                                                                   \
		__m256i t0 = _mm256_unpacklo_epi32(a0, a1), t1 = _mm256_unpackhi_epi32(a0, a1);    \
		__m256i t2 = _mm256_unpacklo_epi32(a2, a3), t3 = _mm256_unpackhi_epi32(a2, a3);    \
		__m256i t4 = _mm256_unpacklo_epi32(a4, a5), t5 = _mm256_unpackhi_epi32(a4, a5);    \
		__m256i t6 = _mm256_unpacklo_epi32(a6, a7), t7 = _mm256_unpackhi_epi32(a6, a7);    \
		__m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);    \
		__m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);    \
		__m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);    \
		__m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);    \
		uint8_t *o_ = (o);                                                                 \
		STORE2(u0, u4, o_);                                                                \
		STORE2(u1, u5, o_ + 64);                                                           \
		STORE2(u2, u6, o_ + 128);                                                          \
		STORE2(u3, u7, o_ + 192);                                                          \
	} while (0)
#define STORE2(lo, hi, p)                                                                      \
	do {                                                                                   \
		_mm256_storeu_si256((__m256i *)(void *)(p), _mm256_permute2x128_si256(lo, hi, 0x20)); \
		_mm256_storeu_si256((__m256i *)(void *)((p) + 256), _mm256_permute2x128_si256(lo, hi, 0x31)); \
	} while (0)

__attribute__((target("avx2"))) static void
chacha20_x8(const uint8_t key[SA_SEED_BYTES], uint32_t ctr, uint8_t *out, size_t nblocks)
{
	const __m256i rot16 = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
	                                       2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
	const __m256i rot8 = _mm256_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14,
	                                      3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);
	__m256i s[16];

	s[0] = _mm256_set1_epi32(0x61707865); /* "expand 32-byte k" */
	s[1] = _mm256_set1_epi32(0x3320646e);
	s[2] = _mm256_set1_epi32(0x79622d32);
	s[3] = _mm256_set1_epi32(0x6b206574);
	for (int i = 0; i < 8; i++)
		s[4 + i] = _mm256_set1_epi32((int)ld32(key + 4 * i));
	s[13] = s[14] = s[15] = _mm256_setzero_si256(); /* the zero nonce */
	for (size_t g = 0; g < nblocks; g += 8, ctr += 8, out += X8) {
		s[12] = _mm256_add_epi32(_mm256_set1_epi32((int)ctr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
		__m256i x0 = s[0], x1 = s[1], x2 = s[2], x3 = s[3], x4 = s[4], x5 = s[5], x6 = s[6],
		        x7 = s[7], x8 = s[8], x9 = s[9], x10 = s[10], x11 = s[11], x12 = s[12],
		        x13 = s[13], x14 = s[14], x15 = s[15];
		for (int r = 0; r < 10; r++) {
			QR(x0, x4, x8, x12); /* columns */
			QR(x1, x5, x9, x13);
			QR(x2, x6, x10, x14);
			QR(x3, x7, x11, x15);
			QR(x0, x5, x10, x15); /* diagonals */
			QR(x1, x6, x11, x12);
			QR(x2, x7, x8, x13);
			QR(x3, x4, x9, x14);
		}
		x0 = _mm256_add_epi32(x0, s[0]), x1 = _mm256_add_epi32(x1, s[1]);
		x2 = _mm256_add_epi32(x2, s[2]), x3 = _mm256_add_epi32(x3, s[3]);
		x4 = _mm256_add_epi32(x4, s[4]), x5 = _mm256_add_epi32(x5, s[5]);
		x6 = _mm256_add_epi32(x6, s[6]), x7 = _mm256_add_epi32(x7, s[7]);
		x8 = _mm256_add_epi32(x8, s[8]), x9 = _mm256_add_epi32(x9, s[9]);
		x10 = _mm256_add_epi32(x10, s[10]), x11 = _mm256_add_epi32(x11, s[11]);
		x12 = _mm256_add_epi32(x12, s[12]), x13 = _mm256_add_epi32(x13, s[13]);
		x14 = _mm256_add_epi32(x14, s[14]), x15 = _mm256_add_epi32(x15, s[15]);
		STORE8(x0, x1, x2, x3, x4, x5, x6, x7, out);
		STORE8(x8, x9, x10, x11, x12, x13, x14, x15, out + 32);
	}
	sodium_memzero(s, sizeof s); /* the key */
}

/* The same with AVX-512F, sixteen blocks at a time: the rotations are
 * single instructions and the 32 vector registers hold the whole state
 * without spilling. Writes 1024 * ceil(nblocks / 16) bytes. */
#define QR16(a, b, c, d)                                                        \
	do {                                                                    \
		a = _mm512_add_epi32(a, b);                                     \
		d = _mm512_rol_epi32(_mm512_xor_si512(d, a), 16);               \
		c = _mm512_add_epi32(c, d);                                     \
		b = _mm512_rol_epi32(_mm512_xor_si512(b, c), 12);               \
		a = _mm512_add_epi32(a, b);                                     \
		d = _mm512_rol_epi32(_mm512_xor_si512(d, a), 8);                \
		c = _mm512_add_epi32(c, d);                                     \
		b = _mm512_rol_epi32(_mm512_xor_si512(b, c), 7);                \
	} while (0)
/* Words w..w+3 of the sixteen blocks (a0..a3, lane = block) into
 * A0..A3: 128-bit lane L of Aq holds those words of block 4L + q. */
#define GATHER4(a0, a1, a2, a3, A0, A1, A2, A3)                                                 \
	do {                                                                                    \
		__m512i t0 = _mm512_unpacklo_epi32(a0, a1), t1 = _mm512_unpackhi_epi32(a0, a1);     \
		__m512i t2 = _mm512_unpacklo_epi32(a2, a3), t3 = _mm512_unpackhi_epi32(a2, a3);     \
		A0 = _mm512_unpacklo_epi64(t0, t2), A1 = _mm512_unpackhi_epi64(t0, t2);             \
		A2 = _mm512_unpacklo_epi64(t1, t3), A3 = _mm512_unpackhi_epi64(t1, t3);             \
	} while (0)
/* Lane L of a, b, c, d (words 0-3, 4-7, 8-11, 12-15 of block 4L + q) is
 * block 4L + q: a 4x4 transpose of 128-bit lanes, stored at o + 256 L. */
#define STORE16(a, b, c, d, o)                                                                  \
	do {                                                                                    \
		__m512i p0 = _mm512_shuffle_i32x4(a, b, 0x44), p1 = _mm512_shuffle_i32x4(a, b, 0xee); \
		__m512i p2 = _mm512_shuffle_i32x4(c, d, 0x44), p3 = _mm512_shuffle_i32x4(c, d, 0xee); \
		_mm512_storeu_si512((void *)(o), _mm512_shuffle_i32x4(p0, p2, 0x88));                \
		_mm512_storeu_si512((void *)((o) + 256), _mm512_shuffle_i32x4(p0, p2, 0xdd));        \
		_mm512_storeu_si512((void *)((o) + 512), _mm512_shuffle_i32x4(p1, p3, 0x88));        \
		_mm512_storeu_si512((void *)((o) + 768), _mm512_shuffle_i32x4(p1, p3, 0xdd));        \
	} while (0)

__attribute__((target("avx512f"))) static void
chacha20_x16(const uint8_t key[SA_SEED_BYTES], uint32_t ctr, uint8_t *out, size_t nblocks)
{
	__m512i s[16];

	s[0] = _mm512_set1_epi32(0x61707865);
	s[1] = _mm512_set1_epi32(0x3320646e);
	s[2] = _mm512_set1_epi32(0x79622d32);
	s[3] = _mm512_set1_epi32(0x6b206574);
	for (int i = 0; i < 8; i++)
		s[4 + i] = _mm512_set1_epi32((int)ld32(key + 4 * i));
	s[13] = s[14] = s[15] = _mm512_setzero_si512();
	for (size_t g = 0; g < nblocks; g += 16, ctr += 16, out += X16) {
		s[12] = _mm512_add_epi32(_mm512_set1_epi32((int)ctr),
		                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
		__m512i x0 = s[0], x1 = s[1], x2 = s[2], x3 = s[3], x4 = s[4], x5 = s[5], x6 = s[6],
		        x7 = s[7], x8 = s[8], x9 = s[9], x10 = s[10], x11 = s[11], x12 = s[12],
		        x13 = s[13], x14 = s[14], x15 = s[15];
		for (int r = 0; r < 10; r++) {
			QR16(x0, x4, x8, x12);
			QR16(x1, x5, x9, x13);
			QR16(x2, x6, x10, x14);
			QR16(x3, x7, x11, x15);
			QR16(x0, x5, x10, x15);
			QR16(x1, x6, x11, x12);
			QR16(x2, x7, x8, x13);
			QR16(x3, x4, x9, x14);
		}
		x0 = _mm512_add_epi32(x0, s[0]), x1 = _mm512_add_epi32(x1, s[1]);
		x2 = _mm512_add_epi32(x2, s[2]), x3 = _mm512_add_epi32(x3, s[3]);
		x4 = _mm512_add_epi32(x4, s[4]), x5 = _mm512_add_epi32(x5, s[5]);
		x6 = _mm512_add_epi32(x6, s[6]), x7 = _mm512_add_epi32(x7, s[7]);
		x8 = _mm512_add_epi32(x8, s[8]), x9 = _mm512_add_epi32(x9, s[9]);
		x10 = _mm512_add_epi32(x10, s[10]), x11 = _mm512_add_epi32(x11, s[11]);
		x12 = _mm512_add_epi32(x12, s[12]), x13 = _mm512_add_epi32(x13, s[13]);
		x14 = _mm512_add_epi32(x14, s[14]), x15 = _mm512_add_epi32(x15, s[15]);
		__m512i a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3;
		GATHER4(x0, x1, x2, x3, a0, a1, a2, a3);
		GATHER4(x4, x5, x6, x7, b0, b1, b2, b3);
		GATHER4(x8, x9, x10, x11, c0, c1, c2, c3);
		GATHER4(x12, x13, x14, x15, d0, d1, d2, d3);
		STORE16(a0, b0, c0, d0, out);
		STORE16(a1, b1, c1, d1, out + 64);
		STORE16(a2, b2, c2, d2, out + 128);
		STORE16(a3, b3, c3, d3, out + 192);
	}
	sodium_memzero(s, sizeof s); /* the key */
}
#undef STORE16
#undef GATHER4
#undef QR16
#undef STORE8
#undef STORE2
#undef QR
#undef ROTL
#endif

/* v[j] = (v[j] + ((k ^ neg) - neg)) & mask for j in [0, n), where k is the
 * j-th B-byte keystream word: neg = ~0 negates k (two's complement), neg = 0
 * keeps it. */
#define FOLD(LOAD, B)                                                                         \
	do {                                                                                  \
		for (; j + STEP <= n; j += STEP)                                              \
			for (size_t i = 0; i < STEP; i++)                                     \
				v[j + i] = (v[j + i] + ((LOAD(ks + (B) * (j + i)) ^ neg) - neg)) & mask; \
		for (; j < n; j++)                                                            \
			v[j] = (v[j] + ((LOAD(ks + (B) * j) ^ neg) - neg)) & mask;            \
	} while (0)

/* B = 3 by hand: GCC does not vectorise the 3-byte gather. Each routine
 * continues from element j and returns where it stopped; the wide loads
 * read a few bytes past the last element, so each stops early and leaves
 * the end to the next, narrower one (AVX2 -> SSE2 -> scalar). */
#if defined(__x86_64__) && defined(__GNUC__)
/* Eight elements per step: vpermd puts bytes [0,12) in the low lane and
 * [12,24) in the high lane, vpshufb spreads each lane's four 3-byte words
 * into 32-bit words with a zero top byte. A step loads 32 bytes for 24. */
__attribute__((target("avx2"))) static size_t
fold3_avx2(const uint8_t *restrict ks, uint32_t *restrict v, size_t j, size_t n, uint32_t neg,
           uint32_t mask)
{
	const __m256i perm = _mm256_setr_epi32(0, 1, 2, 3, 3, 4, 5, 6);
	const __m256i spread = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,
	                                        0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
	const __m256i vneg = _mm256_set1_epi32((int)neg);
	const __m256i vmask = _mm256_set1_epi32((int)mask);

	for (; j + 11 <= n; j += 8) {
		__m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(ks + 3 * j));
		__m256i k = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(x, perm), spread);
		k = _mm256_sub_epi32(_mm256_xor_si256(k, vneg), vneg);
		__m256i a = _mm256_loadu_si256((const __m256i *)(const void *)(v + j));
		_mm256_storeu_si256((__m256i *)(void *)(v + j), _mm256_and_si256(_mm256_add_epi32(a, k), vmask));
	}
	return j;
}
#endif

#if defined(__SSE2__)
/* Four elements per step: lane i of (x shifted up by i bytes) starts at
 * keystream byte 3i; masking keeps 3 bytes of each. A step loads 16 bytes
 * for 12. */
static size_t
fold3_sse2(const uint8_t *restrict ks, uint32_t *restrict v, size_t j, size_t n, uint32_t neg, uint32_t mask)
{
	const __m128i m0 = _mm_setr_epi32((int)mask, 0, 0, 0);
	const __m128i m1 = _mm_setr_epi32(0, (int)mask, 0, 0);
	const __m128i m2 = _mm_setr_epi32(0, 0, (int)mask, 0);
	const __m128i m3 = _mm_setr_epi32(0, 0, 0, (int)mask);
	const __m128i vneg = _mm_set1_epi32((int)neg);
	const __m128i vmask = _mm_set1_epi32((int)mask);

	for (; j + 6 <= n; j += 4) {
		__m128i x = _mm_loadu_si128((const __m128i *)(const void *)(ks + 3 * j));
		__m128i k = _mm_or_si128(
			_mm_or_si128(_mm_and_si128(x, m0), _mm_and_si128(_mm_slli_si128(x, 1), m1)),
			_mm_or_si128(_mm_and_si128(_mm_slli_si128(x, 2), m2), _mm_and_si128(_mm_slli_si128(x, 3), m3)));
		k = _mm_sub_epi32(_mm_xor_si128(k, vneg), vneg);
		__m128i a = _mm_loadu_si128((const __m128i *)(const void *)(v + j));
		_mm_storeu_si128((__m128i *)(void *)(v + j), _mm_and_si128(_mm_add_epi32(a, k), vmask));
	}
	return j;
}
#endif

static void
fold(const uint8_t *restrict ks, unsigned B, uint32_t *restrict v, size_t n, uint32_t neg, uint32_t mask)
{
	size_t j = 0;

	switch (B) {
	case 1:
		FOLD(ld8, 1);
		break;
	case 2:
		FOLD(ld16, 2);
		break;
	case 3:
#if defined(__x86_64__) && defined(__GNUC__)
		if (__builtin_cpu_supports("avx2"))
			j = fold3_avx2(ks, v, j, n, neg, mask);
#endif
#if defined(__SSE2__)
		j = fold3_sse2(ks, v, j, n, neg, mask);
#endif
		FOLD(ld24, 3);
		break;
	default:
		FOLD(ld32, 4);
		break;
	}
}

#undef FOLD

void
sa_prg_add(const uint8_t seed[SA_SEED_BYTES], unsigned m, uint32_t *v, size_t start, size_t n, int sign)
{
	static const uint8_t nonce[crypto_stream_chacha20_ietf_NONCEBYTES];
	/* room for chacha20_x16's rounding up: skip + e * B <= 63 + CHUNK */
	_Alignas(64) uint8_t ks[CHUNK + X16];
	int simd = 0; /* 16: chacha20_x16, 8: chacha20_x8, 0: libsodium */

	if (m < 1 || m > 32 || n == 0)
		return;
	/* Selects libsodium's SIMD ChaCha20 (it runs the portable one until
	 * initialised); later calls only take and release a lock. On failure
	 * the portable code still gives the same bytes. */
	if (sodium_init() < 0) {
	}
#if defined(__x86_64__) && defined(__GNUC__)
	simd = __builtin_cpu_supports("avx512f") ? 16 : __builtin_cpu_supports("avx2") ? 8 : 0;
#endif

	unsigned B = (m + 7) / 8;
	uint32_t mask = m == 32 ? UINT32_MAX : (UINT32_C(1) << m) - 1;
	uint32_t neg = sign < 0 ? UINT32_MAX : 0;
	/* Elements per aligned chunk: a multiple of 64 keeps chunks on block
	 * boundaries, and B * per a multiple of 512 bytes keeps libsodium on
	 * its 8-blocks-at-a-time path (chunks of 63 blocks ran 20% slower than
	 * chunks of 48 or 64). */
	size_t per = (CHUNK / B) & ~(size_t)511;
	while (n > 0) {
		size_t e = n < per ? n : per;
		size_t head = start % 64;
		if (head != 0 && e > 64 - head)
			e = 64 - head; /* up to the next multiple of 64 elements */
		uint64_t off = (uint64_t)start * B;
		size_t skip = (size_t)(off % 64);
		if (simd != 0) {
#if defined(__x86_64__) && defined(__GNUC__)
			size_t blocks = (skip + e * B + 63) / 64;
			if (simd == 16)
				chacha20_x16(seed, (uint32_t)(off / 64), ks, blocks);
			else
				chacha20_x8(seed, (uint32_t)(off / 64), ks, blocks);
#endif
		} else {
			crypto_stream_chacha20_ietf_xor_ic(ks, zeros, skip + e * B, nonce, (uint32_t)(off / 64), seed);
		}
		fold(ks + skip, B, v, e, neg, mask);
		start += e;
		v += e;
		n -= e;
	}
	sodium_memzero(ks, sizeof ks);
}

void
sa_prg_masks(const uint8_t seed[SA_SEED_BYTES], unsigned m, uint32_t *out, size_t start, size_t n)
{
	/* Not a hot path: the extra pass keeps one folding loop. */
	if (m < 1 || m > 32 || n == 0)
		return;
	memset(out, 0, n * sizeof *out);
	sa_prg_add(seed, m, out, start, n, +1);
}
