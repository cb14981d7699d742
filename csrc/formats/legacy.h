// The "legacy" 32-blocks: q4_0, q5_0, q6_0, iq4_nl and their row-interleaved twins q4_0_r8,
// q5_0_r4, q6_0_r4, iq4_nl_r4 (docs/formats.md, "Legacy 32-blocks"). Block layouts and the
// decoders shared by the scalar reference and the SIMD kernels. Everything is `static` /
// `constexpr` (see common.h on why no inline function may be shared between portable and
// AVX2 translation units).
//
// The four base types differ only in how a block's bytes unpack to one value per element;
// every gemm, the large-batch conversion and the repacks are written once over a decoder.
#pragma once
#include <cstdint>
#include <cstring>

#include "common.h"
#include "formats/qhelper.h"
#include "formats/iq4_ks.h"  // the iq4nl codebook (first half of iq4_ks::kValues) and best_index
#include "types.h"

namespace iqkq {
namespace legacy {

constexpr int kBlock = 32;

// Block layouts (bytes per 32 values of one row):
//   q4_0   18: fp16 d, qs[16]            value j = nibble j (low nibbles: j < 16, high: j - 16) - 8
//   q5_0   22: fp16 d, qh[4], qs[16]     value j = (nibble j | bit j of qh << 4) - 16
//   q6_0   26: fp16 d, qh[8], qs[16]     value j = (nibble j | 2 bits of qh << 4) - 32
//   iq4_nl 18: fp16 d, qs[16]            value j = kIq4nl[nibble j]
constexpr int kQ4Bytes = 18, kQ5Bytes = 22, kQ6Bytes = 26, kNlBytes = 18;
static_assert(kTypes[T_Q4_0].type_size == kQ4Bytes && kTypes[T_Q5_0].type_size == kQ5Bytes &&
                  kTypes[T_Q6_0].type_size == kQ6Bytes && kTypes[T_IQ4_NL].type_size == kNlBytes,
              "legacy layouts");
static_assert(kTypes[T_Q4_0_R8].interleave == 8 && kTypes[T_Q5_0_R4].interleave == 4 &&
                  kTypes[T_Q6_0_R4].interleave == 4 && kTypes[T_IQ4_NL_R4].interleave == 4,
              "legacy interleaves");

// The iq4_nl codebook kvalues_iq4nl (= the first 16 entries of iq4_ks::kValues, whose
// provenance is given there).
static inline const int8_t* iq4nl_values() { return iq4_ks::kValues; }

static inline float block_d(const uint8_t* blk) { return fp16_to_fp32(rd_u16(blk)); }

// Decoders. `unsigned_vals` gives the stored codes (0 .. 2^bits - 1), `signed_vals` the values
// the block represents divided by d. kMin is the offset between the two (q4_0 8, q5_0 16,
// q6_0 32); iq4_nl has only the signed form.
struct Q4_0 {
    static constexpr int kType = T_Q4_0, kTwin = T_Q4_0_R8, kBytes = kQ4Bytes, kMin = 8;
    static inline void unsigned_vals(const uint8_t* b, uint8_t u[32]) {
        for (int j = 0; j < 16; ++j) {
            u[j] = b[2 + j] & 0xf;
            u[j + 16] = b[2 + j] >> 4;
        }
    }
    static inline void signed_vals(const uint8_t* b, int8_t v[32]) {
        uint8_t u[32];
        unsigned_vals(b, u);
        for (int j = 0; j < 32; ++j) v[j] = (int8_t)(u[j] - kMin);
    }
};

struct Q5_0 {
    static constexpr int kType = T_Q5_0, kTwin = T_Q5_0_R4, kBytes = kQ5Bytes, kMin = 16;
    static inline void unsigned_vals(const uint8_t* b, uint8_t u[32]) {
        const uint32_t qh = rd_u32(b + 2);
        for (int j = 0; j < 16; ++j) {
            u[j] = (uint8_t)((b[6 + j] & 0xf) | (((qh >> j) & 1u) << 4));
            u[j + 16] = (uint8_t)((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
        }
    }
    static inline void signed_vals(const uint8_t* b, int8_t v[32]) {
        uint8_t u[32];
        unsigned_vals(b, u);
        for (int j = 0; j < 32; ++j) v[j] = (int8_t)(u[j] - kMin);
    }
};

struct Q6_0 {
    static constexpr int kType = T_Q6_0, kTwin = T_Q6_0_R4, kBytes = kQ6Bytes, kMin = 32;
    // qh[i]: bits 0-1 element i, 2-3 element i+16, 4-5 element i+8, 6-7 element i+24 (i < 8).
    static inline void unsigned_vals(const uint8_t* b, uint8_t u[32]) {
        const uint8_t* qh = b + 2;
        const uint8_t* qs = b + 10;
        for (int j = 0; j < 16; ++j) {
            const uint8_t h = (uint8_t)(qh[j % 8] >> (4 * (j / 8)));
            u[j] = (uint8_t)((qs[j] & 0xf) | ((h << 4) & 0x30));
            u[j + 16] = (uint8_t)((qs[j] >> 4) | ((h << 2) & 0x30));
        }
    }
    static inline void signed_vals(const uint8_t* b, int8_t v[32]) {
        uint8_t u[32];
        unsigned_vals(b, u);
        for (int j = 0; j < 32; ++j) v[j] = (int8_t)(u[j] - kMin);
    }
};

struct IQ4_NL {
    static constexpr int kType = T_IQ4_NL, kTwin = T_IQ4_NL_R4, kBytes = kNlBytes, kMin = 0;
    static inline void signed_vals(const uint8_t* b, int8_t v[32]) {
        const int8_t* T = iq4nl_values();
        for (int j = 0; j < 16; ++j) {
            v[j] = T[b[2 + j] & 0xf];
            v[j + 16] = T[b[2 + j] >> 4];
        }
    }
};

// Interleaved twins (docs/formats.md, "Legacy 32-blocks: interleaved twins").
//   q4_0_r8   one block of 8 rows = 144 bytes: fp16 d[8], qs[128]; qs[32l + 4k + i] = byte
//             4l + i of row k's q4_0 block (l < 4, i < 4).
//   iq4_nl_r4 one block of 4 rows = 72 bytes: fp16 d[4], qs[64]; for row k and i < 4, with
//             c_j = the 4-bit code of element j:
//               qs[4k+i] = c_i | c_{i+8} << 4,        qs[4k+i+16] = c_{16+i} | c_{24+i} << 4,
//               qs[4k+i+32] = c_{4+i} | c_{12+i} << 4, qs[4k+i+48] = c_{20+i} | c_{28+i} << 4.
//   q5_0_r4   88 bytes: fp16 d[4], qh[16], qs[64]; qs as iq4_nl_r4 (low 4 bits of the code),
//             qh[4k+i] bit l = bit 4 of the element in the low nibble of qs[4k+i+16l], bit l+4
//             that of its high nibble.
//   q6_0_r4   104 bytes: fp16 d[4], qh[32], qs[64]; qs as above, qh[4k+i+16(l%2)] bits
//             2(l/2)..+1 = bits 4-5 of the low-nibble element of qs[4k+i+16l], bits 2(l/2)+4..+5
//             those of its high-nibble element.
// Element of the low / high nibble of qs[4k + i + 16l] (l < 4) in the r4 layouts.
static inline int r4_elem_lo(int l, int i) { return 4 * (l / 2) + 16 * (l % 2) + i; }
static inline int r4_elem_hi(int l, int i) { return r4_elem_lo(l, i) + 8; }

constexpr int kR8Q4Bytes = 8 * kQ4Bytes;   // 144
constexpr int kR4NlBytes = 4 * kNlBytes;   // 72
constexpr int kR4Q5Bytes = 4 * kQ5Bytes;   // 88
constexpr int kR4Q6Bytes = 4 * kQ6Bytes;   // 104

// Codes (unsigned for q5_0 / q6_0, 4-bit indices for iq4_nl) of row k of one r4 block, in
// element order, and its scale.
static inline void r4_codes(int type, const uint8_t* blk, int k, uint8_t u[32]) {
    const uint8_t* qs = blk + 8 + (type == T_Q5_0_R4 ? 16 : type == T_Q6_0_R4 ? 32 : 0);
    const uint8_t* qh = blk + 8;
    for (int l = 0; l < 4; ++l) {
        for (int i = 0; i < 4; ++i) {
            const uint8_t q = qs[4 * k + i + 16 * l];
            uint8_t lo = q & 0xf, hi = q >> 4;
            if (type == T_Q5_0_R4) {
                const uint8_t h = qh[4 * k + i];
                lo |= (uint8_t)(((h >> l) & 1) << 4);
                hi |= (uint8_t)(((h >> (l + 4)) & 1) << 4);
            } else if (type == T_Q6_0_R4) {
                const uint8_t h = qh[4 * k + i + 16 * (l % 2)];
                lo |= (uint8_t)(((h >> (2 * (l / 2))) & 3) << 4);
                hi |= (uint8_t)(((h >> (2 * (l / 2) + 4)) & 3) << 4);
            }
            u[r4_elem_lo(l, i)] = lo;
            u[r4_elem_hi(l, i)] = hi;
        }
    }
}

// float -> int8 as a C `(int8_t)f` compiles on x86 (CVTTSS2SI, then the low byte): NaN and
// out-of-range values give 0 (the low byte of INT32_MIN).
static inline int8_t cvtt_i8(float v) { return (int8_t)(uint8_t)(uint32_t)iq4_ks::trunc_cvtt(v); }

}  // namespace legacy
}  // namespace iqkq
