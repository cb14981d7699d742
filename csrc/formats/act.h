// Byte layouts of the activation formats (docs/formats.md, "Activation formats"). Every
// kernel addresses activation rows through these constants; they are checked against the
// traits table (types.h) at compile time.
#pragma once
#include <cstdint>

#include "types.h"

namespace iqkq {
namespace act {

// q8_K and q8_K32: one 296-byte record per 256 values.
//   +0   f32  d      scale (max|x| / 127)
//   +4   f32  sum    d * (sum of the quants)            (q8_K32: sum of the 8 float block sums)
//   +8   i8   qs[256]
//   +264 q8_K:   i16 bsums[16]  sums of 16 consecutive quants
//        q8_K32: f32 bsums[8]   d * (sums of 32 consecutive quants)
constexpr int kQ8KBlock = 256;
constexpr int kQ8KBytes = 296;
constexpr int kQ8KD = 0;
constexpr int kQ8KSum = 4;
constexpr int kQ8KQs = 8;
constexpr int kQ8KBsums = 264;
static_assert(kQ8KBsums == kQ8KQs + kQ8KBlock && kQ8KBytes == kQ8KBsums + 32, "q8_K layout");
static_assert(kActs[A_Q8_K].type_size == kQ8KBytes && kActs[A_Q8_K32].type_size == kQ8KBytes, "q8_K size");
static_assert(kActs[A_Q8_K].block_size == kQ8KBlock && kActs[A_Q8_K32].block_size == kQ8KBlock, "q8_K block");

// q8_2_x4: blocks of 32 values, stored in groups of 4 (144 bytes) while 4 blocks remain:
//   +0  bf16 d[4]   +8  i16 s[4] (sums of the quants)   +16 i8 qs[4][32]
// then the remaining K/32 % 4 blocks as single 36-byte records: +0 bf16 d, +2 i16 s, +4 i8 qs[32].
constexpr int kQ82Block = 32;
constexpr int kQ82Bytes = 36;
constexpr int kQ82GroupBytes = 4 * kQ82Bytes;  // 144
constexpr int kQ82GroupD = 0;
constexpr int kQ82GroupS = 8;
constexpr int kQ82GroupQs = 16;
constexpr int kQ82D = 0;
constexpr int kQ82S = 2;
constexpr int kQ82Qs = 4;
static_assert(kActs[A_Q8_2_X4].type_size == kQ82Bytes && kActs[A_Q8_2_X4].block_size == kQ82Block, "q8_2_x4");

// Offsets of block i's scale and quants in a q8_2_x4 row of nb blocks (nb4 = 4 * (nb / 4)).
constexpr int64_t q82_d_offset(int64_t i, int64_t nb4) {
    return i < nb4 ? kQ82GroupBytes * (i / 4) + kQ82GroupD + 2 * (i % 4) : kQ82Bytes * i + kQ82D;
}
constexpr int64_t q82_s_offset(int64_t i, int64_t nb4) {
    return i < nb4 ? kQ82GroupBytes * (i / 4) + kQ82GroupS + 2 * (i % 4) : kQ82Bytes * i + kQ82S;
}
constexpr int64_t q82_qs_offset(int64_t i, int64_t nb4) {
    return i < nb4 ? kQ82GroupBytes * (i / 4) + kQ82GroupQs + 32 * (i % 4) : kQ82Bytes * i + kQ82Qs;
}

}  // namespace act
}  // namespace iqkq
