// q8_0 and q8_0_r8 block layouts (docs/formats.md §2-3) shared by the scalar and SIMD files.
#pragma once
#include <cstdint>

#include "types.h"

namespace iqkq {
namespace q8_0 {

constexpr int kBlock = 32;       // elements per block
constexpr int kBytes = 34;       // fp16 d + 32 int8 quants
constexpr int kR8Bytes = 8 * 34; // one physical q8_0_r8 block: 8 fp16 d + 256 interleaved quants
static_assert(kTypes[T_Q8_0].block_size == kBlock && kTypes[T_Q8_0].type_size == kBytes, "q8_0 layout");
static_assert(kR8Bytes == kTypes[T_Q8_0_R8].interleave * kTypes[T_Q8_0_R8].type_size, "q8_0_r8 layout");

// Reference quantization of one 32-block (model-file routine, §2.3): d = amax/127,
// id = 1/d, quants = roundf(x * id). The conversion of the rounded value to int8 follows
// what a C compiler emits for ggml's `int8 = roundf(...)` on x86 (cvttss2si, low byte), so
// the degenerate case of a denormal block (id = inf) is defined: such quants become 0.
static inline int8_t quant_roundf(float p) {
    const float r = __builtin_roundf(p);
    if (!(r >= -2147483648.0f && r < 2147483648.0f)) return 0;
    return (int8_t)(uint8_t)(uint32_t)(int32_t)r;
}

}  // namespace q8_0
}  // namespace iqkq
