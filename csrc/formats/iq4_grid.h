// The 4-bit non-linear grid shared by the iq4 family (iq4_nl, iq4_xs, iq4_ks and their
// interleaved twins) and the rounding to it used by their quantizers (docs/formats.md).
// Everything here is `static` / `constexpr` (see common.h on why no inline function may be
// shared between portable and AVX2 translation units).
#pragma once
#include <cstdint>

namespace iqkq {
namespace iq4_grid {

// Entries 0..15: ggml's `kvalues_iq4nl`, the grid of iq4_nl / iq4_xs and the base table of
// iq4_ks; 16..31: iq4_ks's "shifted" table (base + 4), selected by bit 0 of its block scale.
// Data reproduced from ik_llama.cpp @ 8337e4cd, ggml/src/ggml-common.h (`iq4k_values`; its
// first half equals `kvalues_iq4nl` of ggml/src/ggml-quants.c), as exported in
// shared/spec/tables.json.
alignas(32) static constexpr int8_t kValues[32] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1,  13, 25, 38, 53, 69, 89, 113,
    -123, -100, -79, -61, -45, -31, -18, -6,  5,  17, 29, 42, 57, 73, 93, 117,
};

// Lookup used by best_index (ggml-quants.c `best_index_iq4nl`, and its iqk_quantize.cpp
// twin): entry ix = trunc(x) - T[0] gives the index directly (< 16) or the pair
// (e - 16, e - 15) to decide between. Serves both halves of kValues.
// Data reproduced from ik_llama.cpp @ 8337e4cd, ggml/src/iqk/iqk_quantize.cpp
// (`iq4nl_index`), as exported in shared/spec/tables.json.
static constexpr uint8_t kIndex[241] = {
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  16, 16, 1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,
    1,  1,  1,  1,  17, 17, 2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  18, 3,  3,  3,  3,
    3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  19, 4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  20, 5,
    5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  21, 21, 6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  22, 7,  7,  7,  7,
    7,  7,  7,  7,  7,  7,  23, 23, 8,  8,  8,  8,  8,  8,  8,  8,  8,  8,  24, 9,  9,  9,  9,  9,  9,  9,  9,  9,  9,
    9,  25, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 26, 26, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 27, 27,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 28, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
    13, 13, 13, 29, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 30, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15,
};

// float -> int32 as x86 CVTTSS2SI does it (what a C `(int)` cast compiles to): truncation
// toward zero, and INT32_MIN for NaN and for values outside the int32 range.
static inline int32_t trunc_cvtt(float v) {
    if (!(v >= -2147483648.0f && v < 2147483648.0f)) return INT32_MIN;
    return (int32_t)v;
}

// best_index (docs/formats.md §6.3): index of the entry of the 16-entry ascending table T nearest
// to x, ties to the larger index, evaluated exactly as ik_llama.cpp does it (truncation into
// kIndex, then one float comparison of the two distances). NaN and |x| >= 2^31 give 0, as
// the x86 conversion does.
static inline int best_index(const int8_t* T, float x) {
    const int ix = trunc_cvtt(x) - T[0];  // no overflow: T[0] < 0 and trunc_cvtt(x) < 2^31 - 127
    if (ix < 0) return 0;
    if (ix >= 241) return 15;
    const int e = kIndex[ix];
    if (e < 16) return e;
    return (x - (float)T[e - 16]) < ((float)T[e - 15] - x) ? e - 16 : e - 15;
}

}  // namespace iq4_grid
}  // namespace iqkq
