// iq3_xxs and iq3_xxs_r4 block layouts (docs/formats.md §8-9), the quantizer tables and the small
// helpers shared by the scalar reference (formats/iq3_xxs.cpp) and the AVX2 kernels.
//
// Everything here is data or `static inline` (see common.h for why).
#pragma once
#include <cstdint>

#include "types.h"
#include <cstring>

#include "common.h"
#include "formats/qhelper.h"

namespace iqkq {
namespace iq3 {

constexpr int kQK = 256;           // elements per super-block
constexpr int kBytes = 98;         // fp16 d + 64 grid indices + 8 sign/scale words
constexpr int kR4Bytes = 4 * 98;   // one iq3_xxs_r4 block: 4 fp16 d + 32 sas words + 256 grid indices
constexpr int kQsOff = 2;          // iq3_xxs: grid indices at 2..65
constexpr int kSasOff = 66;        // iq3_xxs: sas words at 66..97
constexpr int kR4SasOff = 8;       // iq3_xxs_r4: sas words at 8..135 (block b, row r at 8 + 16b + 4r)
constexpr int kR4QsOff = 136;      // iq3_xxs_r4: grid indices at 136 + 32b + 8r + k
constexpr int kNbSize = 22825;     // words in kNeighbours
static_assert(kTypes[T_IQ3_XXS].block_size == kQK && kTypes[T_IQ3_XXS].type_size == kBytes, "iq3_xxs layout");
static_assert(kR4Bytes == kTypes[T_IQ3_XXS_R4].interleave * kBytes, "iq3_xxs_r4 layout");

constexpr float kGroupMaxEps = 1e-8f;  // GROUP_MAX_EPS_IQ3_XXS
constexpr float kFudge = 1.0125f;      // d is stored as fp16(max_scale/31 * 1.0125)
constexpr float kConvD0 = 1.0f / 124;  // large-batch conversion to q8_k_r8 (§11.4), bits 0x3C042108

// Tables (tools/gen_iq3_xxs_tables.py -> iq3_xxs_tables.inc, defined in formats/iq3_xxs.cpp).
extern const uint32_t kGrid[256];
extern const uint32_t kQuantGrid[256];
extern const int16_t kMap[4096 + 2];  // 2 entries of padding for 32-bit gathers
extern const uint16_t kNeighbours[kNbSize];
extern const uint32_t kNbPoints[kNbSize + 8];
extern const uint8_t kSigns[128];
extern const uint8_t kScrambled[128];

// Quantizer state that lives across the blocks of one row: ik_llama.cpp keeps the chosen
// levels and on-grid flags in variables declared outside the block loop, and a 32-block
// whose weights are all zero never accepts a scale candidate, so it inherits the previous
// block's levels (docs/formats.md §8.4 step 9). For the first block of a row the reference reads
// uninitialised memory; iqkq defines that state as "all levels 0, all groups on the grid",
// i.e. the state a skipped (near-zero) block leaves behind. reset_row() is called at the
// start of every row. (A plain struct with free static functions: no member functions, so
// no inline function with external linkage is shared between the portable and AVX2 files.)
struct RowState {
    int8_t L[32];
    bool on_grid[8];
};
static inline void reset_row(RowState& st) {
    std::memset(st.L, 0, sizeof(st.L));
    for (int k = 0; k < 8; ++k) st.on_grid[k] = true;
}

// First part of the block quantization (docs/formats.md §8.4 steps 2.1-2.3), shared by the
// reference and the fast search: weights w, their square roots wa, the values xv the search
// fits (|x|, with one element negated when a group of 8 has an odd number of negatives) and
// the 7-bit sign indices. Returns max(xv) (the running `a > b ? a : b` of the reference).
static inline float prepare_block(const float* xb, const float* qw, float sigma2, float* w, float* wa, float* xv,
                                  uint8_t* signs) {
    if (qw) {
        for (int i = 0; i < 32; ++i) w[i] = qw[i] * __builtin_sqrtf(sigma2 + xb[i] * xb[i]);
    } else {
        for (int i = 0; i < 32; ++i) w[i] = xb[i] * xb[i];
    }
    for (int i = 0; i < 32; ++i) wa[i] = __builtin_sqrtf(w[i]);
    for (int k = 0; k < 4; ++k) {
        int nflip = 0;
        uint8_t s = 0;
        for (int i = 0; i < 8; ++i) {
            const float v = xb[8 * k + i];
            if (v >= 0) {
                xv[8 * k + i] = v;
            } else {
                xv[8 * k + i] = -v;
                ++nflip;
                s |= (uint8_t)(1 << i);
            }
        }
        if (nflip % 2) {
            int imin = 0;
            float mn = w[8 * k] * xb[8 * k] * xb[8 * k];
            for (int i = 1; i < 8; ++i) {
                const float a = w[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                if (a < mn) {
                    mn = a;
                    imin = i;
                }
            }
            xv[8 * k + imin] = -xv[8 * k + imin];
            s ^= (uint8_t)(1 << imin);
        }
        signs[k] = s & 127;
    }
    float mx = xv[0];
    for (int i = 1; i < 32; ++i) mx = mx > xv[i] ? mx : xv[i];
    return mx;
}

// sigma^2 of a super-block: sequential sum of x^2, then 2*sum/256.
static inline float superblock_sigma2(const float* xbl) {
    float sumx2 = 0.0f;
    for (int i = 0; i < kQK; ++i) sumx2 = sumx2 + xbl[i] * xbl[i];
    return 2.0f * sumx2 / 256.0f;
}

// Last steps of a block once its levels L and scale are final (§8.4 steps 2.6-2.8): positive
// scale, grid indices, sign word. Returns the block scale.
static inline float finish_block(const int8_t* L, float scale, uint8_t* signs, uint8_t* q3, uint32_t* sas) {
    if (scale < 0) {
        scale = -scale;
        for (int k = 0; k < 4; ++k) signs[k] = (uint8_t)(~signs[k] & 127);
    }
    for (int k = 0; k < 8; ++k) {
        int u = 0;
        for (int i = 0; i < 4; ++i) u |= L[4 * k + i] << (3 * i);
        q3[k] = (uint8_t)kMap[u];  // always on the grid here
    }
    *sas = (uint32_t)signs[0] | ((uint32_t)signs[1] << 7) | ((uint32_t)signs[2] << 14) | ((uint32_t)signs[3] << 21);
    return scale;
}

// Super-block scale and the 4-bit block scale codes (§8.4 steps 3-4).
static inline void encode_superblock(const float* scales, float max_scale, const uint8_t* q3, uint32_t* sas,
                                     uint8_t* out) {
    if (!(max_scale != 0.0f)) {
        std::memset(out, 0, kBytes);
        return;
    }
    const float d = max_scale / 31.0f;
    wr_u16(out, fp32_to_fp16(d * kFudge));
    const float id = 1.0f / d;
    for (int ib = 0; ib < 8; ++ib) {
        int l = nearest_int(0.5f * (id * scales[ib] - 1.0f));
        l = l < 0 ? 0 : (l > 15 ? 15 : l);
        sas[ib] |= (uint32_t)l << 28;
    }
    std::memcpy(out + kQsOff, q3, 64);
    for (int ib = 0; ib < 8; ++ib) wr_u32(out + kSasOff + 4 * ib, sas[ib]);
}

// Levels (0..7) of quantizer grid point gi.
static inline void grid_levels(int gi, int8_t* L) {
    const uint32_t g = kQuantGrid[gi];
    for (int i = 0; i < 4; ++i) L[i] = (int8_t)(((g >> (8 * i)) & 255) >> 1);
}

// Level of one value for the inverse scale id: clamp(nearest_int(0.5 * (id * v - 1)), 0, 7).
static inline int level_of(float id, float v) {
    const int l = nearest_int(0.5f * (id * v - 1.0f));
    return l < 0 ? 0 : (l > 7 ? 7 : l);
}

// Re-encoded sas word of iq3_xxs_r4 from an iq3_xxs sas word: byte m = (scrambled(s_m) << 1)
// | bit m of the scale code.
static inline uint32_t sas_to_r4(uint32_t aux) {
    const uint32_t sc = aux >> 28;
    uint32_t word = 0;
    for (int m = 0; m < 4; ++m) {
        const uint32_t byte = ((uint32_t)kScrambled[(aux >> (7 * m)) & 127] << 1) | ((sc >> m) & 1);
        word |= byte << (8 * m);
    }
    return word;
}

// Inverse: recover s_m from the decoded sign mask (its low 7 bits are s_m, the top bit is
// the parity) and the scale code from the low bits of the bytes.
static inline uint32_t sas_from_r4(uint32_t word) {
    uint32_t aux = 0, sc = 0;
    for (int m = 0; m < 4; ++m) {
        const uint32_t byte = (word >> (8 * m)) & 0xff;
        const uint32_t t = byte & 0xfe;
        const uint32_t mask = (t ^ (t >> 1)) & 0xff;
        aux |= (mask & 127) << (7 * m);
        sc |= (byte & 1) << m;
    }
    return aux | (sc << 28);
}

// Move one iq3_xxs super-block of row r (0..3) into its place in an iq3_xxs_r4 block.
static inline void scatter_to_r4(const uint8_t* blk, uint8_t* r4, int r) {
    std::memcpy(r4 + 2 * r, blk, 2);
    for (int b = 0; b < 8; ++b) {
        std::memcpy(r4 + kR4QsOff + 32 * b + 8 * r, blk + kQsOff + 8 * b, 8);
        wr_u32(r4 + kR4SasOff + 16 * b + 4 * r, sas_to_r4(rd_u32(blk + kSasOff + 4 * b)));
    }
}

static inline void gather_from_r4(const uint8_t* r4, uint8_t* blk, int r) {
    std::memcpy(blk, r4 + 2 * r, 2);
    for (int b = 0; b < 8; ++b) {
        std::memcpy(blk + kQsOff + 8 * b, r4 + kR4QsOff + 32 * b + 8 * r, 8);
        wr_u32(blk + kSasOff + 4 * b, sas_from_r4(rd_u32(r4 + kR4SasOff + 16 * b + 4 * r)));
    }
}

}  // namespace iq3
}  // namespace iqkq
