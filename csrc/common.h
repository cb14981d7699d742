// Portable scalar helpers shared by every format: IEEE half / bfloat16 conversion, the
// rounding functions of the format specification (docs/formats.md §0), and small utilities.
//
// Everything here is plain C++ with no ISA-specific intrinsics, so the scalar reference
// kernels built from it run on any CPU. The AVX2 kernels reproduce the same arithmetic with
// intrinsics; the tests compare the two bit for bit.
//
// All helpers are `static inline`: the SIMD translation units include this header too, and
// with internal linkage each one keeps its own copy. With plain `inline` the linker would
// keep a single copy, possibly the one compiled with -mavx2, and a portable caller would
// then execute AVX2 instructions on a CPU without them.
#pragma once

#include <cstdint>
#include <cstring>
#include <cmath>
#include <cstddef>

namespace iqkq {

static inline uint32_t fbits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float bitsf(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// fp32 -> IEEE binary16 with round-to-nearest-even, subnormals kept, overflow to +-inf and
// NaN kept quiet. Bit-identical to F16C VCVTPS2PH with rounding mode 0.
static inline uint16_t fp32_to_fp16(float f) {
    const uint32_t x = fbits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {  // inf or NaN
        if (ax == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    }
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520 -> inf
    if (ax < 0x38800000u) {
        // Result is subnormal (or zero) in half precision: value = m * 2^-24 with m < 1024.
        if (ax < 0x33000000u) return (uint16_t)sign;  // below half of the smallest subnormal
        const uint32_t e = ax >> 23;                  // biased exponent, 102..112
        const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e;              // 14..24
        uint32_t h = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (h & 1u))) ++h;
        return (uint16_t)(sign | h);
    }
    // Normal range: rebias the exponent and round the 13 dropped mantissa bits to even.
    uint32_t h = ((ax - 0x38000000u) >> 13);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
}

static inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    const uint32_t m = h & 0x3ffu;
    if (e == 0) {
        // zero or subnormal: m * 2^-24, exact in fp32
        float v = (float)m * 5.9604644775390625e-08f;
        return bitsf(fbits(v) | sign);
    }
    if (e == 31) return bitsf(sign | 0x7f800000u | (m << 13));
    return bitsf(sign | ((e + 112u) << 23) | (m << 13));
}

// ggml's GGML_FP32_TO_BF16: round to nearest even on the 16 dropped bits, NaN kept quiet.
static inline uint16_t fp32_to_bf16(float f) {
    const uint32_t u = fbits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}
static inline float bf16_to_fp32(uint16_t b) { return bitsf((uint32_t)b << 16); }

// The "magic number" rounding of ggml: exactly round-half-to-even for |v| < 2^22.
static inline int nearest_int(float v) {
    const float t = v + 12582912.0f;
    return (int)(fbits(t) & 0x007fffffu) - 0x00400000;
}

// Round half to even and convert to int32 with x86 semantics: NaN or out of range gives
// INT32_MIN (the "integer indefinite" value of CVTPS2DQ). Never undefined behaviour.
static inline int32_t cvt_rne_i32(float v) {
    if (!(v >= -2147483648.0f && v < 2147483648.0f)) return INT32_MIN;
    return (int32_t)__builtin_nearbyintf(v);  // default rounding mode is round-to-nearest-even
}

// Signed saturation to int8 (PACKSSDW + PACKSSWB give the same result for int32 input).
static inline int8_t sat_i8(int32_t v) {
    return (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
}

// Truncating float -> int as a C cast, made total: NaN maps to 0 and out-of-range values
// are clamped, so odd inputs can never trigger undefined behaviour.
static inline int trunc_int(float v) {
    if (!(v == v)) return 0;
    if (v >= 2147483520.0f) return 2147483647;
    if (v <= -2147483648.0f) return INT32_MIN;
    return (int)v;
}

// The horizontal sum of eight lanes used by all 8-lane kernels (docs/formats.md §11.3, H8).
static inline float hsum8(const float a[8]) {
    const float s04 = a[0] + a[4], s26 = a[2] + a[6], s15 = a[1] + a[5], s37 = a[3] + a[7];
    return (s04 + s26) + (s15 + s37);
}

// fma with a single rounding. The builtin keeps it out of any shared inline function.
static inline float fmaf_exact(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline float fabsf_(float v) { return __builtin_fabsf(v); }

static inline uint16_t rd_u16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
static inline uint32_t rd_u32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
static inline float rd_f32(const uint8_t* p) { float v; std::memcpy(&v, p, 4); return v; }
static inline void wr_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
static inline void wr_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
static inline void wr_f32(uint8_t* p, float v) { std::memcpy(p, &v, 4); }

}  // namespace iqkq
