// Small AVX-512 helpers shared by the AVX-512 kernel files. Only included from translation
// units compiled with the AVX-512 flags; everything is `static inline` (see common.h).
#pragma once
#include <immintrin.h>
#include <cstdint>

namespace iqkq {
namespace avx512 {

// Bytes at p broadcast straight from memory (one load, no shuffle unit): four bytes to every
// dword of a 512- or 256-bit register, eight bytes to every quadword.
static inline __m512i bcast_dword(const uint8_t* p) { return _mm512_broadcastd_epi32(_mm_loadu_si32(p)); }
static inline __m256i bcast_dword256(const uint8_t* p) { return _mm256_broadcastd_epi32(_mm_loadu_si32(p)); }
static inline __m512i bcast_qword(const uint8_t* p) { return _mm512_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }

// The dword interleave of docs/formats.md §5 (qs[32 m + 4 r + j] = q_r[4 m + j]) for one 64-byte
// register of each of 8 rows (dwords m = 0..15): out[p] = rows 0..7 dword 2p, then rows 0..7
// dword 2p + 1. 24 shuffles:
//  1. VPUNPCK{L,H}QDQ of rows 2a, 2a+1: lane L = both rows' quadword 2L (resp. 2L + 1), i.e.
//     the dword pair (m, m + 1) of two rows;
//  2. VSHUFI64X2 of the row pairs (0, 1) and (2, 3) (and (4, 5), (6, 7)): four rows' pairs for
//     two values of m;
//  3. VPERMT2D of the rows 0-3 and rows 4-7 registers.
static inline void interleave8(const __m512i* in, __m512i* out) {
    const __m512i first = _mm512_setr_epi32(0, 2, 8, 10, 16, 18, 24, 26, 1, 3, 9, 11, 17, 19, 25, 27);
    const __m512i second = _mm512_add_epi32(first, _mm512_set1_epi32(4));
    __m512i lo[4], hi[4];
    for (int a = 0; a < 4; ++a) {
        lo[a] = _mm512_unpacklo_epi64(in[2 * a], in[2 * a + 1]);  // lane L: pair 2L of rows 2a, 2a + 1
        hi[a] = _mm512_unpackhi_epi64(in[2 * a], in[2 * a + 1]);  // lane L: pair 2L + 1
    }
    for (int h = 0; h < 2; ++h) {
        const __m512i* S = h ? hi : lo;
        // lanes (0, 1) resp. (2, 3) of rows 0-1 and 2-3 (x), 4-5 and 6-7 (y): pairs p = 2L + h
        const __m512i x01 = _mm512_shuffle_i64x2(S[0], S[1], 0x44), x23 = _mm512_shuffle_i64x2(S[0], S[1], 0xee);
        const __m512i y01 = _mm512_shuffle_i64x2(S[2], S[3], 0x44), y23 = _mm512_shuffle_i64x2(S[2], S[3], 0xee);
        out[0 + h] = _mm512_permutex2var_epi32(x01, first, y01);
        out[2 + h] = _mm512_permutex2var_epi32(x01, second, y01);
        out[4 + h] = _mm512_permutex2var_epi32(x23, first, y23);
        out[6 + h] = _mm512_permutex2var_epi32(x23, second, y23);
    }
}

// Eight rows' quants of one q8_k_r8 super-block, in element order (row r: bytes 256 r ..,
// 64-byte aligned), to the interleaved layout of docs/formats.md §5.
static inline void interleave_q8_k_r8(const uint8_t* rows, uint8_t* qs) {
    for (int c = 0; c < 4; ++c) {
        __m512i in[8], out[8];
        for (int r = 0; r < 8; ++r) in[r] = _mm512_load_si512(rows + 256 * r + 64 * c);
        interleave8(in, out);
        for (int p = 0; p < 8; ++p) _mm512_storeu_si512(qs + 512 * c + 64 * p, out[p]);
    }
}

}  // namespace avx512
}  // namespace iqkq
