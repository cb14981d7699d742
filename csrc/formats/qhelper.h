// ik_llama.cpp's QHelper (imatrix preprocessing used by the quantizers of iq4_ks, iq4_ks_r4,
// iq3_xxs_r4, iq4_xs_r8, the legacy and the k-quant twins; docs/formats.md "QHelper", NOTES.md §8): per row and block of
// `block` columns, keep the imatrix weights unless the block is degenerate, else replace them
// all by 1e-9. Source: ik_llama.cpp @ 8337e4cd, ggml/src/iqk/iqk_quantize.cpp
// (`QHelper::row_weights`).
#pragma once
#include <cstdint>

#include "common.h"

namespace iqkq {

static inline void qhelper_row_weights(const float* imatrix, const float* x, int64_t K, int block, float* out) {
    const float eps = 1e-9f;
    const float eps2 = eps * eps;
    const float thr = (float)block * eps2;
    for (int64_t b = 0; b < K / block; ++b) {
        const float* w = imatrix + b * block;
        const float* xb = x + b * block;
        float sw2 = 0.0f, sx2 = 0.0f, swx = 0.0f;
        for (int j = 0; j < block; ++j) {
            sw2 += w[j] * w[j];
            sx2 += xb[j] * xb[j];
            swx += w[j] * fabsf_(xb[j]);
        }
        const bool keep = sw2 > thr && sx2 > thr && swx > thr;
        for (int j = 0; j < block; ++j) out[b * block + j] = keep ? w[j] : eps;
    }
}

}  // namespace iqkq
