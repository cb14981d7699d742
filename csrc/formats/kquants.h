// k-quants q4_K (id 12), q5_K (13), q6_K (14), their 4-row interleaved twins q4_k_r4 (212),
// q5_k_r4 (213), q6_k_r4 (214) and q8_1_r8, ik_llama.cpp's internal large-batch form of
// q4_K / q5_K (docs/formats.md, "k-quants"). Block layouts shared by the scalar and SIMD files.
#pragma once
#include <cstdint>

#include "types.h"

namespace iqkq {
namespace kq {

constexpr int kSuper = 256;

// q4_K: +0 fp16 d, +2 fp16 dmin, +4 scales[12] (6-bit scales and mins), +16 qs[128].
constexpr int kQ4Bytes = 144;
constexpr int kQ4Scales = 4;
constexpr int kQ4Qs = 16;
// q5_K: as q4_K, then +16 qh[32] (bit 4 of every quant), +48 qs[128].
constexpr int kQ5Bytes = 176;
constexpr int kQ5Qh = 16;
constexpr int kQ5Qs = 48;
// q6_K: +0 ql[128] (low 4 bits), +128 qh[64] (high 2 bits), +192 int8 scales[16], +208 fp16 d.
constexpr int kQ6Bytes = 210;
constexpr int kQ6Qh = 128;
constexpr int kQ6Scales = 192;
constexpr int kQ6D = 208;
// q4_k_r4 (4 rows): +0 fp16 d[4] then dmin[4], +16 scales_h[16], +32 scales_l[32], +64 qs[512].
constexpr int kQ4R4Bytes = 4 * kQ4Bytes;
constexpr int kQ4R4ScH = 16;
constexpr int kQ4R4ScL = 32;
constexpr int kQ4R4Qs = 64;
// q5_k_r4 (4 rows): as q4_k_r4, then +64 qh[128], +192 qs[512].
constexpr int kQ5R4Bytes = 4 * kQ5Bytes;
constexpr int kQ5R4Qh = 64;
constexpr int kQ5R4Qs = 192;
// q6_k_r4 (4 rows): +0 fp16 d[4], +8 int8 scales[64], +72 qh[256], +328 ql[512].
constexpr int kQ6R4Bytes = 4 * kQ6Bytes;
constexpr int kQ6R4Scales = 8;
constexpr int kQ6R4Qh = 72;
constexpr int kQ6R4Ql = 328;
// q8_1_r8 (8 rows, per 32 columns): +0 fp16 d[8], +16 fp16 m[8], +32 qs[256] with
// qs[32l + 4r + j] = q_r[4l + j] (unsigned quants). One "block" of the traits table is the
// eight 32-column blocks of a 256-column super-block.
constexpr int kQ81Block = 32;
constexpr int kQ81Bytes = 288;
constexpr int kQ81Qs = 32;

static_assert(kTypes[T_Q4_K].type_size == kQ4Bytes && kTypes[T_Q4_K_R4].type_size == kQ4Bytes, "q4_K layout");
static_assert(kTypes[T_Q5_K].type_size == kQ5Bytes && kTypes[T_Q5_K_R4].type_size == kQ5Bytes, "q5_K layout");
static_assert(kTypes[T_Q6_K].type_size == kQ6Bytes && kTypes[T_Q6_K_R4].type_size == kQ6Bytes, "q6_K layout");
static_assert(kQ4R4Qs + 512 == kQ4R4Bytes && kQ5R4Qs + 512 == kQ5R4Bytes && kQ6R4Ql + 512 == kQ6R4Bytes, "r4 layouts");
static_assert(kTypes[T_Q8_1_R8].type_size * kTypes[T_Q8_1_R8].interleave == 8 * kQ81Bytes, "q8_1_r8 layout");
static_assert(kTypes[T_Q4_K].block_size == kSuper && kTypes[T_Q8_1_R8].block_size == kSuper, "k-quant blocks");

// The 6-bit scale and min of 32-block j of a q4_K / q5_K super-block (get_scale_min_k4).
static inline void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
    if (j < 4) {
        d = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

// The 256 quants of a q4_K (0..15) / q5_K (0..31) / q6_K (0..63, unsigned) super-block in
// element order.
static inline void unpack_q4(const uint8_t* blk, uint8_t* L) {
    const uint8_t* qs = blk + kQ4Qs;
    for (int b = 0; b < 4; ++b)
        for (int l = 0; l < 32; ++l) {
            L[64 * b + l] = qs[32 * b + l] & 0xF;
            L[64 * b + 32 + l] = qs[32 * b + l] >> 4;
        }
}
static inline void unpack_q5(const uint8_t* blk, uint8_t* L) {
    const uint8_t* qs = blk + kQ5Qs;
    const uint8_t* qh = blk + kQ5Qh;
    for (int b = 0; b < 4; ++b)
        for (int l = 0; l < 32; ++l) {
            L[64 * b + l] = (uint8_t)((qs[32 * b + l] & 0xF) | (((qh[l] >> (2 * b)) & 1) << 4));
            L[64 * b + 32 + l] = (uint8_t)((qs[32 * b + l] >> 4) | (((qh[l] >> (2 * b + 1)) & 1) << 4));
        }
}
static inline void unpack_q6(const uint8_t* blk, uint8_t* L) {
    const uint8_t* ql = blk;
    const uint8_t* qh = blk + kQ6Qh;
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, L += 128)
        for (int l = 0; l < 32; ++l) {
            L[l + 0] = (uint8_t)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
            L[l + 32] = (uint8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
            L[l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
            L[l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
        }
}

}  // namespace kq
}  // namespace iqkq
