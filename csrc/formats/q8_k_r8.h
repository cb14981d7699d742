// q8_k_r8 layout (docs/formats.md §5): per group of 8 rows and 256-element super-block, 16 bytes of
// fp16 row scales d[8] followed by 2048 interleaved int8 quants, qs[32m + 4r + j] = q_r[4m + j].
#pragma once
#include <cstdint>

#include "types.h"

namespace iqkq {
namespace q8_k_r8 {
constexpr int kBlock = 256;
constexpr int kRowBytes = 258;        // per row share of a super-block
constexpr int kGroupBlock = 8 * 258;  // 2064 bytes: 8 rows of one super-block
static_assert(kTypes[T_Q8_K_R8].block_size == kBlock && kTypes[T_Q8_K_R8].type_size == kRowBytes, "q8_k_r8 layout");
static_assert(kGroupBlock == kTypes[T_Q8_K_R8].interleave * kRowBytes, "q8_k_r8 group");
}  // namespace q8_k_r8
}  // namespace iqkq
