// The 8-row interleave of the 32-blocks with an fp16 scale (q8_0_r8, q4_0_r8; docs/formats.md
// §3.1, §15): per 8 rows and block, the 8 scales, then dword l of row r at 16 + 32 l + 4 r.
// QBytes = quant bytes per block (32 for q8_0, 16 for q4_0). Scalar; used by the format files.
#pragma once
#include <cstdint>
#include <cstring>

namespace iqkq {

template <int QBytes>
void r8_dwords_to(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    constexpr int kBlk = 2 + QBytes, kR8 = 8 * kBlk;
    const int64_t nb = K / 32;
    const size_t row = (size_t)nb * kBlk;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        const uint8_t* s = src + (size_t)g * 8 * row;
        uint8_t* o = dst + (size_t)g * 8 * row;
        for (int64_t b = 0; b < nb; ++b, o += kR8)
            for (int r = 0; r < 8; ++r) {
                const uint8_t* blk = s + r * row + b * kBlk;
                std::memcpy(o + 2 * r, blk, 2);
                for (int l = 0; l < QBytes / 4; ++l) std::memcpy(o + 16 + 32 * l + 4 * r, blk + 2 + 4 * l, 4);
            }
    }
}

template <int QBytes>
void r8_dwords_from(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    constexpr int kBlk = 2 + QBytes, kR8 = 8 * kBlk;
    const int64_t nb = K / 32;
    const size_t row = (size_t)nb * kBlk;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        const uint8_t* s = src + (size_t)g * 8 * row;
        uint8_t* o = dst + (size_t)g * 8 * row;
        for (int64_t b = 0; b < nb; ++b, s += kR8)
            for (int r = 0; r < 8; ++r) {
                uint8_t* blk = o + r * row + b * kBlk;
                std::memcpy(blk, s + 2 * r, 2);
                for (int l = 0; l < QBytes / 4; ++l) std::memcpy(blk + 2 + 4 * l, s + 16 + 32 * l + 4 * r, 4);
            }
    }
}

}  // namespace iqkq
