// Block decoders of the legacy 32-blocks shared by the AVX2 and AVX-512 kernel files
// (kernels/avx2/legacy.cpp, kernels/avx512/legacy.cpp). Everything has internal linkage
// (unnamed namespace): each translation unit, compiled with its own ISA flags, keeps its own
// copy (see common.h).
#pragma once
#include <immintrin.h>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "formats/act.h"
#include "formats/legacy.h"

#ifndef IQKQ_LEGACY_PF
#define IQKQ_LEGACY_PF 2048
#endif

namespace iqkq {
namespace {
using namespace legacy;

// Software prefetch distance of the weight streams (bytes ahead of the block being read).
constexpr int kPrefetch = IQKQ_LEGACY_PF;

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// 16 bytes of nibbles -> 32 codes: low nibbles (elements 0..15), then high nibbles.
inline __m256i nibbles(const uint8_t* qs) {
    const __m128i q = load16(qs);
    const __m128i m4 = _mm_set1_epi8(0xf);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
}

// Decoders: codes of one block in element order. Unsigned for q4_0 / q5_0 / q6_0, the signed
// codebook values for iq4_nl.
struct DecQ4 {
    using D = Q4_0;
    static inline __m256i codes(const uint8_t* b) { return nibbles(b + 2); }
};
struct DecQ5 {
    using D = Q5_0;
    static inline __m256i codes(const uint8_t* b) {
        const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
        const __m256i mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
        const __m256i bits = _mm256_shuffle_epi8(_mm256_set1_epi32((int)rd_u32(b + 2)), shuf);
        const __m256i set = _mm256_cmpeq_epi8(_mm256_or_si256(bits, mask), _mm256_set1_epi64x(-1));
        return _mm256_or_si256(nibbles(b + 6), _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
    }
};
struct DecQ6 {
    using D = Q6_0;
    static inline __m256i codes(const uint8_t* b) {
        uint64_t h;
        std::memcpy(&h, b + 2, 8);
        __m256i hv = _mm256_sllv_epi64(_mm256_set1_epi64x((long long)h), _mm256_set_epi64x(0, 2, 0, 4));
        hv = _mm256_srlv_epi64(hv, _mm256_set_epi64x(2, 0, 0, 0));
        return _mm256_or_si256(nibbles(b + 10), _mm256_and_si256(hv, _mm256_set1_epi8(0x30)));
    }
};
struct DecNL {
    using D = IQ4_NL;
    static inline __m256i codes(const uint8_t* b) {
        const __m128i t = load16(reinterpret_cast<const uint8_t*>(iq4nl_values()));
        return _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles(b + 2));
    }
};

template <int kBytes>
inline __m128 weight_scales4(const uint8_t* blk) {
    const __m128i h = _mm_setr_epi16((short)rd_u16(blk), (short)rd_u16(blk + kBytes), (short)rd_u16(blk + 2 * kBytes),
                                     (short)rd_u16(blk + 3 * kBytes), 0, 0, 0, 0);
    return _mm_cvtph_ps(h);
}

constexpr int kPrepGroup = 192;  // 8 floats d, 8 floats d * s, 4 x 32 bytes of quants

// Base types x q8_2_x4. The kernels read a prepared copy of every activation row (built once
// per matmul by prepare_base): per group of 4 blocks, the bf16 scales and the products d * s as
// floats in lane order P = (b0 lo, b2 lo, b0 hi, b2 hi, b1 lo, b3 lo, b1 hi, b3 hi) (lo / hi =
// elements 0..15 / 16..31 of a block), then the quants of block pairs (0, 1) and (2, 3) as
// [b lo | b+1 lo], [b hi | b+1 hi]. A weight block pair then decodes into two vectors without
// moving bytes across lanes, and three hadds leave the exact 16-element dot products in lane
// order P. Each float lane still does exactly what its natural lane does in formats/legacy.cpp
// (gemm_qx_0 / gemm_iq4_nl); the lanes are put back in order at the end of a row.
inline void prepare_base(const uint8_t* a, uint8_t* out, int64_t K) {
    const int64_t ng = K / 128;
    static const int kLane[8] = {0, 2, 0, 2, 1, 3, 1, 3};
    for (int64_t gi = 0; gi < ng; ++gi, a += act::kQ82GroupBytes, out += kPrepGroup) {
        float d[4], ds[4];
        for (int t = 0; t < 4; ++t) {
            d[t] = bf16_to_fp32(rd_u16(a + act::kQ82GroupD + 2 * t));
            ds[t] = d[t] * (float)(int16_t)rd_u16(a + act::kQ82GroupS + 2 * t);
        }
        for (int l = 0; l < 8; ++l) {
            wr_f32(out + 4 * l, d[kLane[l]]);
            wr_f32(out + 32 + 4 * l, ds[kLane[l]]);
        }
        const uint8_t* q = a + act::kQ82GroupQs;
        for (int p = 0; p < 2; ++p) {
            uint8_t* o = out + 64 + 64 * p;
            std::memcpy(o, q + 64 * p, 16);
            std::memcpy(o + 16, q + 64 * p + 32, 16);
            std::memcpy(o + 32, q + 64 * p + 16, 16);
            std::memcpy(o + 48, q + 64 * p + 48, 16);
        }
    }
}
inline size_t prepared_base_bytes(int64_t K) { return (size_t)(K / 128) * kPrepGroup; }


// Codes of two consecutive blocks as [b0 lo | b1 lo], [b0 hi | b1 hi].
inline void nibble_pair(const uint8_t* qs0, const uint8_t* qs1, __m256i& lo, __m256i& hi) {
    const __m256i q = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(qs1), reinterpret_cast<const __m128i*>(qs0));
    const __m256i m4 = _mm256_set1_epi8(0xf);
    lo = _mm256_and_si256(q, m4);
    hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
}
// 32 bits -> 32 bytes, 0x10 where the bit is set.
inline __m256i bits_to_0x10(uint32_t v) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    const __m256i bits = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), shuf);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_or_si256(bits, mask), _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}
template <typename Dec> struct Pair;
template <> struct Pair<DecQ4> {
    static inline void codes(const uint8_t* b0, const uint8_t* b1, __m256i& lo, __m256i& hi) { nibble_pair(b0 + 2, b1 + 2, lo, hi); }
};
template <> struct Pair<DecNL> {
    static inline void codes(const uint8_t* b0, const uint8_t* b1, __m256i& lo, __m256i& hi) {
        nibble_pair(b0 + 2, b1 + 2, lo, hi);
        const __m128i t = load16(reinterpret_cast<const uint8_t*>(iq4nl_values()));
        const __m256i tv = _mm256_set_m128i(t, t);
        lo = _mm256_shuffle_epi8(tv, lo);
        hi = _mm256_shuffle_epi8(tv, hi);
    }
};
template <> struct Pair<DecQ5> {
    static inline void codes(const uint8_t* b0, const uint8_t* b1, __m256i& lo, __m256i& hi) {
        nibble_pair(b0 + 6, b1 + 6, lo, hi);
        const uint32_t h0 = rd_u32(b0 + 2), h1 = rd_u32(b1 + 2);
        lo = _mm256_or_si256(lo, bits_to_0x10((h0 & 0xffffu) | (h1 << 16)));
        hi = _mm256_or_si256(hi, bits_to_0x10((h0 >> 16) | (h1 & 0xffff0000u)));
    }
};
template <> struct Pair<DecQ6> {
    static inline void codes(const uint8_t* b0, const uint8_t* b1, __m256i& lo, __m256i& hi) {
        nibble_pair(b0 + 10, b1 + 10, lo, hi);
        uint64_t h0, h1;
        std::memcpy(&h0, b0 + 2, 8);
        std::memcpy(&h1, b1 + 2, 8);
        const __m256i v = _mm256_set_epi64x((long long)h1, (long long)h1, (long long)h0, (long long)h0);
        const __m256i m6 = _mm256_set1_epi8(0x30);
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_sllv_epi64(v, _mm256_set_epi64x(0, 4, 0, 4)), m6));
        const __m256i t = _mm256_srlv_epi64(_mm256_sllv_epi64(v, _mm256_set_epi64x(0, 2, 0, 2)), _mm256_set_epi64x(2, 0, 2, 0));
        hi = _mm256_or_si256(hi, _mm256_and_si256(t, m6));
    }
};

// The four code vectors of one r4 block as ik_llama.cpp's kernels prepare them: vector j holds,
// per 128-bit lane h, rows 0..3 x 4 elements (lane 0: elements 4j..4j+3, lane 1: 16+4j..),
// so dot(j) pairs with activation dword j of each 16-byte half.
template <int kR4Type>
inline void r4_prepare(const uint8_t* blk, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0xf);
    constexpr int qs_off = kR4Type == T_Q5_0_R4 ? 24 : kR4Type == T_Q6_0_R4 ? 40 : 8;
    const __m256i bits1 = load32(blk + qs_off), bits2 = load32(blk + qs_off + 32);
    q[0] = _mm256_and_si256(bits1, m4);
    q[1] = _mm256_and_si256(bits2, m4);
    q[2] = _mm256_and_si256(_mm256_srli_epi16(bits1, 4), m4);
    q[3] = _mm256_and_si256(_mm256_srli_epi16(bits2, 4), m4);
    if constexpr (kR4Type == T_Q5_0_R4) {
        const __m256i m5 = _mm256_set1_epi8(0x10);
        const __m128i h = load16(blk + 8);
        const __m256i hb = _mm256_set_m128i(_mm_srli_epi16(h, 1), h);
        q[0] = _mm256_or_si256(q[0], _mm256_and_si256(_mm256_slli_epi16(hb, 4), m5));
        q[1] = _mm256_or_si256(q[1], _mm256_and_si256(_mm256_slli_epi16(hb, 2), m5));
        q[2] = _mm256_or_si256(q[2], _mm256_and_si256(hb, m5));
        q[3] = _mm256_or_si256(q[3], _mm256_and_si256(_mm256_srli_epi16(hb, 2), m5));
    } else if constexpr (kR4Type == T_Q6_0_R4) {
        const __m256i m6 = _mm256_set1_epi8(0x30);
        const __m256i hb = load32(blk + 8);
        q[0] = _mm256_or_si256(q[0], _mm256_and_si256(_mm256_slli_epi16(hb, 4), m6));
        q[1] = _mm256_or_si256(q[1], _mm256_and_si256(_mm256_slli_epi16(hb, 2), m6));
        q[2] = _mm256_or_si256(q[2], _mm256_and_si256(hb, m6));
        q[3] = _mm256_or_si256(q[3], _mm256_and_si256(_mm256_srli_epi16(hb, 2), m6));
    } else {
        const __m128i t = load16(reinterpret_cast<const uint8_t*>(iq4nl_values()));
        const __m256i tv = _mm256_set_m128i(t, t);
        for (int j = 0; j < 4; ++j) q[j] = _mm256_shuffle_epi8(tv, q[j]);
    }
}

}  // namespace
}  // namespace iqkq
