// iq3_xxs and iq3_xxs_r4 block layouts (FORMATS.md §8-9), the quantizer tables and the small
// helpers shared by the scalar reference (formats/iq3_xxs.cpp) and the AVX2 kernels.
//
// Everything here is data or `static inline` (see common.h for why).
#pragma once
#include <cstdint>
#include <cstring>

#include "common.h"

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

constexpr float kGroupMaxEps = 1e-8f;  // GROUP_MAX_EPS_IQ3_XXS
constexpr float kFudge = 1.0125f;      // d is stored as fp16(max_scale/31 * 1.0125)
constexpr float kConvD0 = 1.0f / 124;  // large-batch conversion to q8_k_r8 (§11.4), bits 0x3C042108

// Tables (tools/gen_iq3_xxs_tables.py -> iq3_xxs_tables.inc, defined in formats/iq3_xxs.cpp).
extern const uint32_t kGrid[256];
extern const uint32_t kQuantGrid[256];
extern const int16_t kMap[4096];
extern const uint16_t kNeighbours[kNbSize];
extern const uint32_t kNbPoints[kNbSize + 8];
extern const uint8_t kSigns[128];
extern const uint8_t kScrambled[128];

// Quantizer state that lives across the blocks of one row: ik_llama.cpp keeps the chosen
// levels and on-grid flags in variables declared outside the block loop, and a 32-block
// whose weights are all zero never accepts a scale candidate, so it inherits the previous
// block's levels (FORMATS.md §8.4 step 9). For the first block of a row the reference reads
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

// The importance-matrix preprocessing of iq3_xxs_r4 (QHelper, FORMATS.md §6.3, block 32):
// for each 32-block of the row, keep the imatrix weights unless one of sum(W^2), sum(x^2),
// sum(W*|x|) is <= 32 * 1e-9^2, in which case all 32 weights become 1e-9.
static inline void qhelper_block(const float* imatrix, const float* x, float* out) {
    const float eps = 1e-9f;
    const float eps2 = eps * eps;
    const float thr = 32.0f * eps2;
    float sw2 = 0.0f, sx2 = 0.0f, swx = 0.0f;
    for (int j = 0; j < 32; ++j) {
        const float w = imatrix[j];
        sw2 = sw2 + w * w;
        sx2 = sx2 + x[j] * x[j];
        swx = swx + w * fabsf_(x[j]);
    }
    const bool keep = sw2 > thr && sx2 > thr && swx > thr;
    for (int j = 0; j < 32; ++j) out[j] = keep ? imatrix[j] : eps;
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
