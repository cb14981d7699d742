// The activation arithmetic of the fused up+gate op (docs/formats.md §12.1, §12.3), shared by the
// scalar file and the AVX2 file (for its scalar tail).
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"
#include "types.h"

namespace iqkq {
namespace unary {

// Constants of ik_llama.cpp's 8-lane exp (binary32 bit patterns, docs/formats.md §12.3).
constexpr uint32_t kR = 0x4B400000u, kL2E = 0x3FB8AA3Bu, kC1 = 0x3F317200u, kC2 = 0x35BFBE8Eu;
constexpr uint32_t kP1 = 0x3F7FFFF6u, kP2 = 0x3EFFFEDBu, kP3 = 0x3E2AAF33u, kP4 = 0x3D2B9F17u, kP5 = 0x3C072010u;

static inline float gelu_c2() { return (float)(2.0 * 0.79788456080286535587989211986876); }

// One lane of v_expf with the exact operation sequence (fma = one rounding).
static inline float v_expf_lane(float x) {
    const float R = bitsf(kR);
    const float z = fmaf_exact(x, bitsf(kL2E), R);
    const float n = z - R;
    const float b = fmaf_exact(-n, bitsf(kC2), fmaf_exact(-n, bitsf(kC1), x));
    const uint32_t e = fbits(z) << 23;
    const float k = bitsf(e + 0x3F800000u);
    const float u = b * b;
    const float j = fmaf_exact(fmaf_exact(fmaf_exact(bitsf(kP5), b, bitsf(kP4)), u, fmaf_exact(bitsf(kP3), b, bitsf(kP2))), u,
                               bitsf(kP1) * b);
    if (!(fabsf_(n) > 126.0f)) return fmaf_exact(j, k, k);
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = bitsf(g + 0x7F000000u);
    const float s2 = bitsf(e - g);
    if (fabsf_(n) > 192.0f) return s1 * s1;
    return fmaf_exact(s2, j, s2) * s1;
}

// 8-lane ("SIMD") formulas, one lane.
static inline float silu_simd(float x) { return x / (1.0f + v_expf_lane(0.0f - x)); }
static inline float gelu_simd(float x) {
    float a = 1.0f + (x * x) * 0.044715f;
    a = a * (x * gelu_c2());
    const float e = v_expf_lane(a);
    const float r = x * (e / (e + 1.0f));
    return x > 10.0f ? x : r;
}
// Scalar ("remainder") formulas with libm, evaluated left to right.
static inline float silu_libm(float x) { return x / (1.0f + expf(-x)); }
static inline float gelu_libm(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608f * x * (1.0f + 0.044715f * x * x)));
}
static inline float relu(float x) { return x > 0.0f ? x : 0.0f; }

static inline float combine(float t, float u, float limit) {
    if (limit > 1e-6f) {
        t = t < limit ? t : limit;
        u = u < -limit ? -limit : (u > limit ? limit : u);
    }
    return u * t;
}

// Elements [i0, n) of the fused activation step, one at a time (the scalar reference, and
// the tail of the SIMD version).
static inline void fused_act_range(const float* g, const float* u, float* y, int64_t i0, int64_t n,
                                   int64_t simd_count, int op, float limit) {
    for (int64_t i = i0; i < n; ++i) {
        const bool simd = i < simd_count;
        float t;
        switch (op) {
            case OP_SILU: t = simd ? silu_simd(g[i]) : silu_libm(g[i]); break;
            case OP_GELU: t = simd ? gelu_simd(g[i]) : gelu_libm(g[i]); break;
            default: t = relu(g[i]); break;  // OP_RELU
        }
        y[i] = combine(t, u[i], limit);
    }
}

}  // namespace unary
}  // namespace iqkq
