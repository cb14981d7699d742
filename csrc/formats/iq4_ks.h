// iq4_ks and iq4_ks_r4 layouts (docs/formats.md §6-7) and the constant tables shared by the scalar
// reference and the SIMD kernels. Everything here is `static` / `constexpr` (see common.h on
// why no inline function may be shared between portable and AVX2 translation units).
#pragma once
#include <cstdint>

#include "formats/iq4_grid.h"
#include "types.h"

namespace iqkq {
namespace iq4_ks {

constexpr int kSuper = 256;        // elements per super-block
constexpr int kBlock = 32;         // elements per block (one scale byte)
constexpr int kSuperBytes = 136;   // 8 scale bytes + 128 bytes of nibbles
constexpr int kR4Bytes = 4 * 136;  // one interleaved super-block of 4 rows: 32 scales + 512 nibble bytes
constexpr int kRowMeta = 4;        // f32 row scale in front of every row (4 in front of an r4 group each)
constexpr int kNtry = 7;           // scale trials t = -7 .. +7
static_assert(kTypes[T_IQ4_KS].block_size == kSuper && kTypes[T_IQ4_KS].type_size == kSuperBytes &&
              kTypes[T_IQ4_KS].row_meta == kRowMeta, "iq4_ks layout");
static_assert(kR4Bytes == kTypes[T_IQ4_KS_R4].interleave * kSuperBytes, "iq4_ks_r4 layout");

static inline int64_t row_bytes(int64_t K) { return (int64_t)iqkq::row_bytes(kTypes[T_IQ4_KS], K); }

// The codebook (kValues: base table 0..15, shifted table 16..31) and best_index live in the
// iq4 family header.
using iq4_grid::best_index;
using iq4_grid::kIndex;
using iq4_grid::kValues;
using iq4_grid::trunc_cvtt;

}  // namespace iq4_ks
}  // namespace iqkq
