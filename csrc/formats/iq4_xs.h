// iq4_xs (ggml id 23) and iq4_xs_r8 (id 223) layouts (docs/formats.md, "iq4_xs"), shared by
// the scalar reference and the SIMD kernels. Everything here is `static` / `constexpr` (see
// common.h on why no inline function may be shared between portable and SIMD units).
//
// iq4_xs super-block of 256 values (136 bytes, no row metadata):
//   +0 fp16 d   +2 u16 scales_h (2 bits per block)   +4 u8 scales_l[4] (4 bits per block)
//   +8 u8 qs[128]: block b (32 values) at 16b, value j in the low nibble of byte j (j < 16),
//      value j + 16 in the high nibble.
//   block scale ls_b = (scales_l[b/2] >> 4(b%2) & 15 | (scales_h >> 2b & 3) << 4) - 32, value
//   = fp16(d) * ls_b * kvalues_iq4nl[nibble].
// iq4_xs_r8: 8 rows per super-block group (8 * 136 = 1088 bytes):
//   +0 fp16 d[8]   +16 u8 scales_h[16]   +32 u8 scales_l[32]   +64 u8 qs[1024]
//   scale of (block b, row k), i = 8b + k: low 4 bits in nibble i/32 of scales_l[i%32], high
//   2 bits at bit 2(i/16) of scales_h[i%16]. Value e of block b of row k: byte
//   128b + 4k + e%4 + 32(e/8) of qs, low nibble for e%8 < 4, high nibble otherwise.
#pragma once
#include <cstdint>

#include "formats/iq4_grid.h"
#include "types.h"

namespace iqkq {
namespace iq4_xs {

constexpr int kSuper = 256;
constexpr int kBlock = 32;
constexpr int kBytes = 136;
constexpr int kOffD = 0, kOffSh = 2, kOffSl = 4, kOffQs = 8;
constexpr int kR8Bytes = 8 * kBytes;  // 1088
constexpr int kR8OffD = 0, kR8OffSh = 16, kR8OffSl = 32, kR8OffQs = 64;
constexpr int kNtry = 7;
static_assert(kTypes[T_IQ4_XS].block_size == kSuper && kTypes[T_IQ4_XS].type_size == kBytes &&
              kTypes[T_IQ4_XS].row_meta == 0, "iq4_xs layout");
static_assert(kR8Bytes == kTypes[T_IQ4_XS_R8].interleave * kBytes && kR8OffQs + 1024 == kR8Bytes, "iq4_xs_r8 layout");

// kvalues_iq4nl: the first half of the family table.
static constexpr const int8_t* kNL = iq4_grid::kValues;

static inline int64_t row_bytes(int64_t K) { return (int64_t)iqkq::row_bytes(kTypes[T_IQ4_XS], K); }

// 6-bit code (0..63) of block b of an iq4_xs super-block sb; the scale is code - 32.
static inline int scale_code(const uint8_t* sb, int b) {
    const int sh = sb[kOffSh] | (sb[kOffSh + 1] << 8);
    return ((sb[kOffSl + b / 2] >> (4 * (b % 2))) & 15) | (((sh >> (2 * b)) & 3) << 4);
}
// Same for (block b, row k) of an iq4_xs_r8 group super-block g.
static inline int scale_code_r8(const uint8_t* g, int b, int k) {
    const int i = 8 * b + k;
    return ((g[kR8OffSl + i % 32] >> (4 * (i / 32))) & 15) | (((g[kR8OffSh + i % 16] >> (2 * (i / 16))) & 3) << 4);
}
// Nibble of value e (0..31) of block b, row k of an iq4_xs_r8 group super-block g.
static inline int nibble_r8(const uint8_t* g, int b, int k, int e) {
    const uint8_t byte = g[kR8OffQs + 128 * b + 4 * k + (e % 4) + 32 * (e / 8)];
    return (e % 8) < 4 ? (byte & 15) : (byte >> 4);
}

// Defined in formats/iq4_xs.cpp (portable code, callable from the SIMD units):
// pass 2 of the quantizer for one super-block, given pass 1's block scales and the signed
// scale of largest magnitude; and quantize_iq4_xs_r8 around a per-row iq4_xs quantizer.
void finish_super_block(const float* x, const float* scales, float max_scale, uint8_t* out);
void quantize_r8_with(QuantizeFn base, const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix);

}  // namespace iq4_xs
}  // namespace iqkq
