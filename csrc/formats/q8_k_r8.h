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

#include "common.h"

namespace iqkq {
namespace q8_k_r8 {

// The large-batch conversion of the integer-valued types (ik_llama.cpp @ 8337e4cd,
// ggml/src/iqk/iqk_common.h `convert_to_q8_k_r8`; docs/formats.md "Large-batch
// conversion"): row r's 256 integers v of one super-block become the int8 quants of slot r
// of the q8_k_r8 group block `o` (qs[32m + 4r + j] = q[4m + j]), re-scaled by 1/dnew when
// max|v| * d0 >= 1. Returns dnew (1 when no re-scaling was needed); the caller stores the
// row scale fp16(d_row * dnew) at o + 2r.
static inline float pack_row_scalar(const int* v, float d0, int r, uint8_t* o) {
    int M = 0;
    for (int e = 0; e < kBlock; ++e) M = v[e] < 0 ? (-v[e] > M ? -v[e] : M) : (v[e] > M ? v[e] : M);
    float dnew = (float)M * d0;
    const bool rescale = !(dnew < 1.0f);
    if (!rescale) dnew = 1.0f;
    const float inv = fabsf_(dnew) > 1e-9f ? 1.0f / dnew : 0.0f;
    for (int e = 0; e < kBlock; ++e) {
        const int8_t q = rescale ? sat_i8(cvt_rne_i32(inv * (float)v[e])) : (int8_t)v[e];
        o[16 + 32 * (e / 4) + 4 * r + e % 4] = (uint8_t)q;
    }
    return dnew;
}

}  // namespace q8_k_r8
}  // namespace iqkq
