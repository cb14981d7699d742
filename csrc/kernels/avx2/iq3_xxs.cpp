// AVX2 kernels for iq3_xxs and iq3_xxs_r4: a faster quantizer search (identical bytes),
// dequantization, the matmul kernels (D) iq3_xxs x q8_K and (F) iq3_xxs_r4 x q8_K of
// docs/formats.md §11.3, and the large-batch conversion to q8_k_r8 (§11.4).
//
// Bit-exact twins of formats/iq3_xxs.cpp: integer sums are exact (only their grouping
// differs), float operations are the same operations in the same order.
//
// Decoding: a 32-block's 8 grid indices become 32 unsigned magnitudes g by 8 table loads;
// its 4 sign bytes (7 stored bits + parity, computed for a whole super-block at once with a
// nibble-parity shuffle) become a byte mask m (0xFF = negative); the kernels then use the
// unsigned bytes u = 64 + sigma*g = (g ^ m) - m + 64 with maddubs, so the weights are
// decoded once and shared by every activation column, and the offset 64 is removed with the
// q8_K block sums (exactly as kernel (D) specifies; for (F) the same removal yields the same
// exact integers as applying the signs to the activations).
#include "common.h"
#include "formats/act.h"
#include "formats/iq3_xxs.h"
#include "kernels/avx2/simd.h"
#include "types.h"

#include <cfloat>

namespace iqkq {
namespace {
using namespace avx2;
using namespace iq3;

inline __m256i load32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void store32(void* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

// ------------------------------------------------------------------------------------------
// Quantization: the 31-candidate scale search with 8 candidates per vector.

// The weighted neighbour search of docs/formats.md §8.3 with 8 neighbours per vector. Each lane
// does exactly the scalar operations (diff = scale*q - xv, d2 += (wa*diff)*diff from 0); the
// winner is the first lane with the smallest d2 among those strictly below the best so far,
// which is what the sequential strict-< scan selects.
inline int neighbour_search(int u, const float* xv, const float* wa, float scale) {
    const int start = -kMap[u] - 1;
    const int n = kNeighbours[start];
    const __m256 s = _mm256_set1_ps(scale);
    const __m256 x0 = _mm256_set1_ps(xv[0]), x1 = _mm256_set1_ps(xv[1]);
    const __m256 x2 = _mm256_set1_ps(xv[2]), x3 = _mm256_set1_ps(xv[3]);
    const __m256 w0 = _mm256_set1_ps(wa[0]), w1 = _mm256_set1_ps(wa[1]);
    const __m256 w2 = _mm256_set1_ps(wa[2]), w3 = _mm256_set1_ps(wa[3]);
    const __m256i ff = _mm256_set1_epi32(0xff);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    float best = FLT_MAX;
    int gi = -1;
    for (int j0 = 0; j0 < n; j0 += 8) {
        const __m256i g = load32(kNbPoints + start + 1 + j0);
        const __m256 q0 = _mm256_cvtepi32_ps(_mm256_and_si256(g, ff));
        const __m256 q1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(g, 8), ff));
        const __m256 q2 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(g, 16), ff));
        const __m256 q3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(g, 24));
        __m256 diff = _mm256_sub_ps(_mm256_mul_ps(s, q0), x0);
        __m256 d2 = _mm256_add_ps(_mm256_setzero_ps(), _mm256_mul_ps(_mm256_mul_ps(w0, diff), diff));
        diff = _mm256_sub_ps(_mm256_mul_ps(s, q1), x1);
        d2 = _mm256_add_ps(d2, _mm256_mul_ps(_mm256_mul_ps(w1, diff), diff));
        diff = _mm256_sub_ps(_mm256_mul_ps(s, q2), x2);
        d2 = _mm256_add_ps(d2, _mm256_mul_ps(_mm256_mul_ps(w2, diff), diff));
        diff = _mm256_sub_ps(_mm256_mul_ps(s, q3), x3);
        d2 = _mm256_add_ps(d2, _mm256_mul_ps(_mm256_mul_ps(w3, diff), diff));
        const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n - j0), iota));
        const __m256 ok = _mm256_and_ps(valid, _mm256_cmp_ps(d2, _mm256_set1_ps(best), _CMP_LT_OQ));
        if (_mm256_movemask_ps(ok)) {
            const __m256 m = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), d2, ok);
            __m128 h = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            h = _mm_min_ps(h, _mm_movehl_ps(h, h));
            h = _mm_min_ss(h, _mm_movehdup_ps(h));
            const float mn = _mm_cvtss_f32(h);
            const int lane = __builtin_ctz((unsigned)_mm256_movemask_ps(_mm256_and_ps(ok, _mm256_cmp_ps(d2, _mm256_set1_ps(mn), _CMP_EQ_OQ))));
            best = mn;
            gi = kNeighbours[start + 1 + j0 + lane];
        }
    }
    if (gi < 0) gi = kNeighbours[start + 1];  // no finite distance (see the reference)
    return gi;
}

// Levels of 8 candidates (lanes) for one value: clamp(nearest_int(0.5*(id*v - 1)), 0, 7).
inline __m256i levels8(__m256 id, float v) {
    const __m256 t = _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_sub_ps(_mm256_mul_ps(id, _mm256_set1_ps(v)), _mm256_set1_ps(1.0f)));
    const __m256i r = _mm256_castps_si256(_mm256_add_ps(t, _mm256_set1_ps(12582912.0f)));
    const __m256i l = _mm256_sub_epi32(_mm256_and_si256(r, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
    return _mm256_min_epi32(_mm256_max_epi32(l, _mm256_setzero_si256()), _mm256_set1_epi32(7));
}

struct Search {
    alignas(32) int32_t lv[4][32][8];  // levels: batch, element, candidate lane
    alignas(32) float sqx[32];
    alignas(32) float sq2[32];
    uint8_t off[32];                   // per candidate: bit k set = group k was off the grid
};

// Evaluate the 31 candidates is = -15..15 (candidate c = is + 15, batch c / 8, lane c % 8).
void search_candidates(const float* w, const float* wa, const float* xv, float mx, Search& S) {
    float wx[32];
    for (int i = 0; i < 32; ++i) wx[i] = w[i] * xv[i];
    const __m256 vmx = _mm256_set1_ps(mx);
    for (int t = 0; t < 4; ++t) {
        const __m256 isf = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_set1_epi32(8 * t - 15), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        const __m256 id = _mm256_div_ps(_mm256_add_ps(_mm256_set1_ps(15.0f), _mm256_mul_ps(isf, _mm256_set1_ps(0.2f))), vmx);
        alignas(32) float ts[8];
        _mm256_store_ps(ts, _mm256_div_ps(_mm256_set1_ps(1.0f), id));
        const unsigned lanes = t == 3 ? 0x7fu : 0xffu;  // candidate 31 does not exist
        for (int c = 0; c < 8; ++c) S.off[8 * t + c] = 0;
        // levels and grid lookups of all 8 groups first, then one loop over the off-grid
        // (group, candidate) pairs (fewer unpredictable loop exits)
        alignas(32) int32_t us[8][8];
        uint64_t todo = 0;
        for (int k = 0; k < 8; ++k) {
            __m256i u = _mm256_setzero_si256();
            for (int j = 0; j < 4; ++j) {
                const __m256i l = levels8(id, xv[4 * k + j]);
                _mm256_store_si256(reinterpret_cast<__m256i*>(S.lv[t][4 * k + j]), l);
                u = _mm256_or_si256(u, _mm256_slli_epi32(l, 3 * j));
            }
            _mm256_store_si256(reinterpret_cast<__m256i*>(us[k]), u);
            const __m256i km = _mm256_i32gather_epi32(reinterpret_cast<const int*>(kMap), u, 2);
            const unsigned off = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(km, 16))) & lanes;
            todo |= (uint64_t)off << (8 * k);
        }
        while (todo) {
            const int bit = __builtin_ctzll(todo);
            todo &= todo - 1;
            const int k = bit >> 3, c = bit & 7;
            S.off[8 * t + c] |= (uint8_t)(1u << k);
            const uint32_t g = kQuantGrid[neighbour_search(us[k][c], xv + 4 * k, wa + 4 * k, ts[c])];
            for (int j = 0; j < 4; ++j) S.lv[t][4 * k + j][c] = (int32_t)(((g >> (8 * j)) & 255) >> 1);
        }
        __m256 sqx = _mm256_setzero_ps(), sq2 = _mm256_setzero_ps();
        for (int i = 0; i < 32; ++i) {
            const __m256i l = _mm256_load_si256(reinterpret_cast<const __m256i*>(S.lv[t][i]));
            const __m256 q = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(l, l), _mm256_set1_epi32(1)));
            sqx = _mm256_add_ps(sqx, _mm256_mul_ps(_mm256_set1_ps(wx[i]), q));
            sq2 = _mm256_add_ps(sq2, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(w[i]), q), q));
        }
        _mm256_store_ps(S.sqx + 8 * t, sqx);
        _mm256_store_ps(S.sq2 + 8 * t, sq2);
    }
}

void quantize_superblock(const float* xbl, const float* qw, uint8_t* out, RowState& st) {
    uint8_t q3[64] = {};
    uint32_t sas[8] = {};
    float scales[8];
    float max_scale = 0.0f;
    const float sigma2 = superblock_sigma2(xbl);
    Search S;

    for (int ib = 0; ib < 8; ++ib) {
        const float* xb = xbl + 32 * ib;
        float w[32], wa[32], xv[32];
        uint8_t signs[4];
        const float mx = prepare_block(xb, qw ? qw + 32 * ib : nullptr, sigma2, w, wa, xv, signs);
        if (mx < kGroupMaxEps) {
            scales[ib] = 0.0f;
            std::memset(st.L, 0, sizeof(st.L));
            continue;
        }
        search_candidates(w, wa, xv, mx, S);
        // The sequential choice among the candidates, in the reference's order.
        float best = 0.0f;
        float scale = mx / 15.0f;
        int chosen = -1;
        for (int c = 0; c < 31; ++c) {
            const float sqx = S.sqx[c], sq2 = S.sq2[c];
            if (sq2 > 0 && sqx * sqx > best * sq2) {
                scale = sqx / sq2;
                best = scale * sqx;
                chosen = c;
            }
        }
        if (chosen >= 0) {
            for (int i = 0; i < 32; ++i) st.L[i] = (int8_t)S.lv[chosen / 8][i][chosen % 8];
            for (int k = 0; k < 8; ++k) st.on_grid[k] = !((S.off[chosen] >> k) & 1);
        }

        bool any_off = false;
        for (int k = 0; k < 8; ++k) any_off = any_off || !st.on_grid[k];
        if (any_off && scale > 0) {
            const float id = 1.0f / scale;
            for (int k = 0; k < 8; ++k) {
                if (st.on_grid[k]) continue;
                int u = 0;
                for (int i = 0; i < 4; ++i) u |= level_of(id, xv[4 * k + i]) << (3 * i);
                int gi = kMap[u];
                if (gi < 0) gi = neighbour_search(u, xv + 4 * k, wa + 4 * k, scale);
                grid_levels(gi, st.L + 4 * k);
            }
            float sqx = 0.0f, sq2 = 0.0f;
            for (int i = 0; i < 32; ++i) {
                const float q = (float)(2 * st.L[i] + 1);
                sqx = sqx + w[i] * xv[i] * q;
                sq2 = sq2 + w[i] * q * q;
            }
            if (sq2 > 0) scale = sqx / sq2;
        }
        scale = finish_block(st.L, scale, signs, q3 + 8 * ib, &sas[ib]);
        scales[ib] = scale;
        max_scale = max_scale > scale ? max_scale : scale;
    }
    encode_superblock(scales, max_scale, q3, sas, out);
}

void quantize_iq3_xxs(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t nbl = K / kQK;
    for (int64_t r = 0; r < nrows; ++r) {
        RowState st;
        reset_row(st);
        for (int64_t i = 0; i < nbl; ++i)
            quantize_superblock(src + r * K + i * kQK, imatrix ? imatrix + i * kQK : nullptr, dst + (r * nbl + i) * kBytes, st);
    }
}

void quantize_iq3_xxs_r4(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t nbl = K / kQK;
    for (int64_t g = 0; g < nrows / 4; ++g) {
        for (int r = 0; r < 4; ++r) {
            const float* x = src + (4 * g + r) * K;
            RowState st;
            reset_row(st);
            for (int64_t i = 0; i < nbl; ++i) {
                float qw[kQK];
                if (imatrix) qhelper_row_weights(imatrix + i * kQK, x + i * kQK, kQK, 32, qw);  // QHelper, blocks of 32
                uint8_t blk[kBytes];
                quantize_superblock(x + i * kQK, imatrix ? qw : nullptr, blk, st);
                scatter_to_r4(blk, dst + (g * nbl + i) * kR4Bytes, r);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Decoding helpers.

// The 32 magnitudes of one 32-block from its 8 grid indices. The indices are read with one
// 64-bit load and split with integer shifts (cheaper than 8 byte loads: the table loads and
// inserts already keep the load and shuffle ports busy).
inline __m128i grid4(uint32_t ix) {
    __m128i v = _mm_cvtsi32_si128((int)kGrid[ix & 255]);
    v = _mm_insert_epi32(v, (int)kGrid[(ix >> 8) & 255], 1);
    v = _mm_insert_epi32(v, (int)kGrid[(ix >> 16) & 255], 2);
    return _mm_insert_epi32(v, (int)kGrid[ix >> 24], 3);
}
inline __m256i grid_block(const uint8_t* qs) {
    uint64_t ix;
    std::memcpy(&ix, qs, 8);
    return _mm256_set_m128i(grid4((uint32_t)(ix >> 32)), grid4((uint32_t)ix));
}

// The 32 sign bytes of an iq3_xxs super-block from its 8 sas words: byte 4b + m = the
// 8-bit mask of group m of block b (7 stored bits, bit 7 = their parity).
inline __m256i sign_bytes(const uint8_t* sas) {
    const __m256i x = load32(sas);
    const __m256i m7 = _mm256_set1_epi32(127);
    __m256i s = _mm256_and_si256(x, m7);
    s = _mm256_or_si256(s, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(x, 7), m7), 8));
    s = _mm256_or_si256(s, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(x, 14), m7), 16));
    s = _mm256_or_si256(s, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(x, 21), m7), 24));
    // parity of a nibble, as 0x80 / 0
    const __m256i par = _mm256_setr_epi8(0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0,
                                         0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0);
    const __m256i lo = _mm256_and_si256(s, _mm256_set1_epi8(0x0f));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(s, 4), _mm256_set1_epi8(0x0f));
    return _mm256_or_si256(s, _mm256_xor_si256(_mm256_shuffle_epi8(par, lo), _mm256_shuffle_epi8(par, hi)));
}

// Byte masks (0xFF = negative element) of the 32-blocks from their sign bytes. `half` holds
// the sign bytes of four blocks (dword j = block j's 4 bytes) in both 128-bit halves; the mask
// of block j is byte 4j + m replicated over elements 8m..8m+7, then tested bit by bit.
alignas(32) const int8_t kSignPick[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};
inline __m256i sign_mask(__m256i half, int j) {
    const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_shuffle_epi8(half, _mm256_load_si256(reinterpret_cast<const __m256i*>(kSignPick[j])));
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
}
inline __m256i dup_lo(__m256i v) { return _mm256_permute2x128_si256(v, v, 0x00); }
inline __m256i dup_hi(__m256i v) { return _mm256_permute2x128_si256(v, v, 0x11); }

// Sign bytes of the 4 rows of an iq3_xxs_r4 32-block (dword r = row r), in both halves.
inline __m256i r4_sign_bytes(const uint8_t* sas) {
    const __m128i t = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sas)), _mm_set1_epi8((char)0xfe));
    const __m128i m = _mm_xor_si128(t, _mm_srli_epi16(t, 1));
    return _mm256_set_m128i(m, m);
}

// 64 + sigma * g as unsigned bytes (4..126).
inline __m256i offset_values(__m256i g, __m256i m) {
    return _mm256_add_epi8(_mm256_sub_epi8(_mm256_xor_si256(g, m), m), _mm256_set1_epi8(64));
}

// ------------------------------------------------------------------------------------------
// Dequantization.

// y = +-(db * g) for one 32-block: magnitudes g (bytes), byte mask m of the negative ones.
inline void dequant_block(__m256i g, __m256i m, __m256 db, float* y) {
    const __m128i g0 = _mm256_castsi256_si128(g), g1 = _mm256_extracti128_si256(g, 1);
    const __m128i m0 = _mm256_castsi256_si128(m), m1 = _mm256_extracti128_si256(m, 1);
    const __m128i gs[4] = {g0, _mm_srli_si128(g0, 8), g1, _mm_srli_si128(g1, 8)};
    const __m128i ms[4] = {m0, _mm_srli_si128(m0, 8), m1, _mm_srli_si128(m1, 8)};
    for (int k = 0; k < 4; ++k) {
        const __m256 v = _mm256_mul_ps(db, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(gs[k])));
        const __m256 sgn = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepi8_epi32(ms[k]), 31));
        _mm256_storeu_ps(y + 8 * k, _mm256_xor_ps(v, sgn));
    }
}

void dequantize_iq3_xxs(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t n = nrows * (K / kQK);
    for (int64_t i = 0; i < n; ++i, src += kBytes, dst += kQK) {
        const float d = _cvtsh_ss(rd_u16(src));
        const __m256i sb = sign_bytes(src + kSasOff);
        const __m256i s0 = dup_lo(sb), s1 = dup_hi(sb);
        for (int b = 0; b < 8; ++b) {
            const float db = d * (0.5f + (float)(rd_u32(src + kSasOff + 4 * b) >> 28)) * 0.5f;
            dequant_block(grid_block(src + kQsOff + 8 * b), sign_mask(b < 4 ? s0 : s1, b & 3), _mm256_set1_ps(db), dst + 32 * b);
        }
    }
}

void dequantize_iq3_xxs_r4(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nbl = K / kQK;
    for (int64_t g = 0; g < nrows / 4; ++g) {
        for (int64_t i = 0; i < nbl; ++i, src += kR4Bytes) {
            for (int b = 0; b < 8; ++b) {
                const __m256i sg = r4_sign_bytes(src + kR4SasOff + 16 * b);
                for (int r = 0; r < 4; ++r) {
                    const uint32_t word = rd_u32(src + kR4SasOff + 16 * b + 4 * r);
                    const int sc = (int)((word & 1) | ((word >> 7) & 2) | ((word >> 14) & 4) | ((word >> 21) & 8));
                    const float dl = 0.25f * _cvtsh_ss(rd_u16(src + 2 * r)) * (float)(2 * sc + 1);
                    float* y = dst + (4 * g + r) * K + i * kQK + 32 * b;
                    dequant_block(grid_block(src + kR4QsOff + 32 * b + 8 * r), sign_mask(sg, r), _mm256_set1_ps(dl), y);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Kernel (D): iq3_xxs x q8_K, eight lanes L = elements 4L..4L+3 of every 32-block.
//
// Small batches (<= 4 columns): one row at a time, each 32-block decoded into a register and
// multiplied with all columns. Larger batches: each (row, super-block) is decoded once into
// an L1 buffer and the columns are processed 4 at a time.

constexpr int kMaxCols = 64;

// Multiplier 2*sc + 1 of the 8 blocks, each as two int16 copies (for madd).
inline __m256i iq3_block_mults(const uint8_t* blk) {
    const __m256i sc = _mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(load32(blk + kSasOff), 28), 1), _mm256_set1_epi32(1));
    return _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16));
}

// The per-super-block float updates of kernel (D) for one column: first the offset term
// fma(cm, M, acc) with M_b = mult_b * (bsums[2b] + bsums[2b+1]), then fma(c, S, acc).
inline __m256 d_update(__m256 acc, const uint8_t* as, float dx, __m256i mults, __m256i S) {
    const float dA = rd_f32(as);
    const __m256i M = _mm256_madd_epi16(load32(as + act::kQ8KBsums), mults);
    acc = _mm256_fmadd_ps(_mm256_set1_ps((-dx * 64.0f) * dA), _mm256_cvtepi32_ps(M), acc);
    return _mm256_fmadd_ps(_mm256_set1_ps(dx * dA), _mm256_cvtepi32_ps(S), acc);
}

template <int NC>
void gemm_iq3_xxs_small(const GemmArgs& g) {
    const int64_t nbl = g.K / kQK;
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nbl; ++i) {
            const uint8_t* blk = w + i * kBytes;
            const __m256i mults = iq3_block_mults(blk);
            const __m256i sb = sign_bytes(blk + kSasOff);
            const __m256i s0 = dup_lo(sb), s1 = dup_hi(sb);
            __m256i S[NC];
            for (int n = 0; n < NC; ++n) S[n] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int b = 0; b < 8; ++b) {
                const __m256i u = offset_values(grid_block(blk + kQsOff + 8 * b), sign_mask(b < 4 ? s0 : s1, b & 3));
                const __m256i mb = _mm256_permutevar8x32_epi32(mults, _mm256_set1_epi32(b));
                for (int n = 0; n < NC; ++n) {
                    const __m256i a = load32(g.A + n * g.a_row_bytes + act::kQ8KBytes * i + act::kQ8KQs + 32 * b);
                    S[n] = _mm256_add_epi32(S[n], _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), mb));
                }
            }
            const float dx = 0.25f * _cvtsh_ss(rd_u16(blk));
            for (int n = 0; n < NC; ++n) acc[n] = d_update(acc[n], g.A + n * g.a_row_bytes + act::kQ8KBytes * i, dx, mults, S[n]);
        }
        for (int n = 0; n < NC; ++n) g.C[n * g.ldc + r] = hsum8(acc[n]);
    }
}

// A decoded iq3_xxs super-block: u = 64 + sigma*g per 32-block and the block multipliers.
struct DecodedRow {
    alignas(32) uint8_t u[8][32];
    alignas(32) int32_t mult[8];
};

inline void decode_row(const uint8_t* blk, DecodedRow& D) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(D.mult), iq3_block_mults(blk));
    const __m256i sb = sign_bytes(blk + kSasOff);
    const __m256i s0 = dup_lo(sb), s1 = dup_hi(sb);
#pragma GCC unroll 8
    for (int b = 0; b < 8; ++b)
        _mm256_store_si256(reinterpret_cast<__m256i*>(D.u[b]),
                           offset_values(grid_block(blk + kQsOff + 8 * b), sign_mask(b < 4 ? s0 : s1, b & 3)));
}

template <int NC>
inline void d_columns(const DecodedRow& D, float dx, const uint8_t* a0, size_t astride, __m256* acc) {
    __m256i S[NC];
    for (int n = 0; n < NC; ++n) S[n] = _mm256_setzero_si256();
    for (int b = 0; b < 8; ++b) {
        const __m256i u = _mm256_load_si256(reinterpret_cast<const __m256i*>(D.u[b]));
        const __m256i mb = _mm256_set1_epi32(D.mult[b]);
        for (int n = 0; n < NC; ++n)
            S[n] = _mm256_add_epi32(S[n], _mm256_madd_epi16(_mm256_maddubs_epi16(u, load32(a0 + n * astride + 8 + 32 * b)), mb));
    }
    const __m256i mults = _mm256_load_si256(reinterpret_cast<const __m256i*>(D.mult));
    for (int n = 0; n < NC; ++n) acc[n] = d_update(acc[n], a0 + n * astride, dx, mults, S[n]);
}

void gemm_iq3_xxs_large(const GemmArgs& g, int64_t n0, int nc) {
    const int64_t nbl = g.K / kQK;
    const uint8_t* A = g.A + n0 * g.a_row_bytes;
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[kMaxCols];
        for (int n = 0; n < nc; ++n) acc[n] = _mm256_setzero_ps();
        DecodedRow D;
        for (int64_t i = 0; i < nbl; ++i) {
            const uint8_t* blk = w + i * kBytes;
            decode_row(blk, D);
            const float dx = 0.25f * _cvtsh_ss(rd_u16(blk));
            const uint8_t* as = A + act::kQ8KBytes * i;
            int n = 0;
            for (; n + 4 <= nc; n += 4) d_columns<4>(D, dx, as + n * g.a_row_bytes, g.a_row_bytes, acc + n);
            switch (nc - n) {
                case 3: d_columns<3>(D, dx, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                case 2: d_columns<2>(D, dx, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                case 1: d_columns<1>(D, dx, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                default: break;
            }
        }
        for (int n = 0; n < nc; ++n) g.C[(n0 + n) * g.ldc + r] = hsum8(acc[n]);
    }
}

void gemm_iq3_xxs(const GemmArgs& g) {
    switch (g.ncols) {
        case 1: gemm_iq3_xxs_small<1>(g); return;
        case 2: gemm_iq3_xxs_small<2>(g); return;
        case 3: gemm_iq3_xxs_small<3>(g); return;
        case 4: gemm_iq3_xxs_small<4>(g); return;
        default: break;
    }
    for (int64_t n0 = 0; n0 < g.ncols; n0 += kMaxCols)
        gemm_iq3_xxs_large(g, n0, (int)(g.ncols - n0 < kMaxCols ? g.ncols - n0 : kMaxCols));
}

// ------------------------------------------------------------------------------------------
// Kernel (F): iq3_xxs_r4 x q8_K. Lane l = row l % 4, half h = l / 4 (elements 16h..16h+15 of
// every 32-block). Per column, row r's products are summed in their own 8 lanes (elements
// 4j..4j+3) over the super-block and folded into the (r, h) lanes once per super-block.

// Multipliers 2*sc + 1 of the 4 rows of block b (int32), from the low bits of the sas bytes.
inline __m128i r4_mults(const uint8_t* blk, int b) {
    const __m128i sas = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kR4SasOff + 16 * b));
    const __m128i m16 = _mm_maddubs_epi16(_mm_and_si128(sas, _mm_set1_epi8(1)), _mm_set1_epi32(0x10080402));
    return _mm_add_epi32(_mm_madd_epi16(m16, _mm_set1_epi16(1)), _mm_set1_epi32(1));
}

// The offset the unsigned weights add, 64 * sum_b mult(r, b) * bsums[2b + h] in lane (r, h).
// X[t] lane (r, h) holds the int16 pair (mult(r, 2t), mult(r, 2t + 1)).
inline __m256i r4_offset(const __m256i* X, const uint8_t* as) {
    const __m256i bs = load32(as + act::kQ8KBsums);
    const __m256i lo = dup_lo(bs), hi = dup_hi(bs);  // bsums 0..7 / 8..15 in both halves
    // pair t of blocks: lanes h = 0 take bsums (4t, 4t+2), lanes h = 1 take (4t+1, 4t+3)
    const __m256i p0 = _mm256_setr_epi8(0, 1, 4, 5, 0, 1, 4, 5, 0, 1, 4, 5, 0, 1, 4, 5, 2, 3, 6, 7, 2, 3, 6, 7, 2, 3, 6, 7, 2,
                                        3, 6, 7);
    const __m256i p1 = _mm256_add_epi8(p0, _mm256_set1_epi8(8));
    __m256i c = _mm256_madd_epi16(X[0], _mm256_shuffle_epi8(lo, p0));
    c = _mm256_add_epi32(c, _mm256_madd_epi16(X[1], _mm256_shuffle_epi8(lo, p1)));
    c = _mm256_add_epi32(c, _mm256_madd_epi16(X[2], _mm256_shuffle_epi8(hi, p0)));
    c = _mm256_add_epi32(c, _mm256_madd_epi16(X[3], _mm256_shuffle_epi8(hi, p1)));
    return _mm256_slli_epi32(c, 6);
}

inline void r4_pairs(const __m128i* mult, __m256i* X) {
    for (int t = 0; t < 4; ++t) {
        const __m128i x = _mm_or_si128(mult[2 * t], _mm_slli_epi32(mult[2 * t + 1], 16));
        X[t] = _mm256_set_m128i(x, x);
    }
}

// fold the per-row lanes into (r, h), remove the offset, one fma per super-block
inline __m256 f_update(__m256 acc, const __m256i* P, const __m256i* X, const uint8_t* as, __m256 d8) {
    const __m256i S = _mm256_hadd_epi32(_mm256_hadd_epi32(P[0], P[1]), _mm256_hadd_epi32(P[2], P[3]));
    const __m256i I = _mm256_sub_epi32(S, r4_offset(X, as));
    return _mm256_fmadd_ps(_mm256_mul_ps(d8, _mm256_set1_ps(rd_f32(as))), _mm256_cvtepi32_ps(I), acc);
}

inline __m256 r4_scales(const uint8_t* blk) {
    const __m128 dl = _mm_mul_ps(_mm_set1_ps(0.25f), _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk))));
    return _mm256_set_m128(dl, dl);
}

inline void store_r4(float* C, __m256 acc) {
    _mm_storeu_ps(C, _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
}

// One to four columns: the weights stay unsigned magnitudes g and the signs go onto the
// activations (_mm256_sign_epi8 with the byte mask | 1; exact, as q8_K never holds -128), so
// no offset is added and none removed: the same exact integers as the offset form, fewer
// operations per row when the decoded weights are not shared by many columns.
template <int NC>
void gemm_iq3_xxs_r4_small(const GemmArgs& g) {
    const int64_t nbl = g.K / kQK;
    const __m256i one = _mm256_set1_epi8(1);
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nbl; ++i) {
            const uint8_t* blk = w + i * kR4Bytes;
            __m256i P[NC][4];
            for (int n = 0; n < NC; ++n)
                for (int r = 0; r < 4; ++r) P[n][r] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int b = 0; b < 8; ++b) {
                const __m128i mult = r4_mults(blk, b);
                const __m128i m16 = _mm_or_si128(mult, _mm_slli_epi32(mult, 16));
                const __m256i m2 = _mm256_set_m128i(m16, m16);
                const __m256i sg = r4_sign_bytes(blk + kR4SasOff + 16 * b);
                __m256i a[NC];
                for (int n = 0; n < NC; ++n) a[n] = load32(g.A + n * g.a_row_bytes + act::kQ8KBytes * i + act::kQ8KQs + 32 * b);
#pragma GCC unroll 4
                for (int r = 0; r < 4; ++r) {
                    const __m256i q = grid_block(blk + kR4QsOff + 32 * b + 8 * r);
                    const __m256i s = _mm256_or_si256(sign_mask(sg, r), one);
                    __m256i mr;
                    switch (r) {
                        case 0: mr = _mm256_shuffle_epi32(m2, 0x00); break;
                        case 1: mr = _mm256_shuffle_epi32(m2, 0x55); break;
                        case 2: mr = _mm256_shuffle_epi32(m2, 0xaa); break;
                        default: mr = _mm256_shuffle_epi32(m2, 0xff); break;
                    }
                    for (int n = 0; n < NC; ++n)
                        P[n][r] = _mm256_add_epi32(P[n][r], _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_sign_epi8(a[n], s)), mr));
                }
            }
            const __m256 d8 = r4_scales(blk);
            for (int n = 0; n < NC; ++n) {
                const __m256i S = _mm256_hadd_epi32(_mm256_hadd_epi32(P[n][0], P[n][1]), _mm256_hadd_epi32(P[n][2], P[n][3]));
                acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(d8, _mm256_set1_ps(rd_f32(g.A + n * g.a_row_bytes + act::kQ8KBytes * i))),
                                         _mm256_cvtepi32_ps(S), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) store_r4(g.C + n * g.ldc + grp * 4, acc[n]);
    }
}

struct DecodedGroup {
    alignas(32) uint8_t u[8][4][32];  // block, row: 64 + sigma*g
    alignas(32) int32_t m16[8][4];    // block, row: multiplier, two int16 copies
    __m256i X[4];
};

inline void decode_group(const uint8_t* blk, DecodedGroup& D) {
    __m128i mult[8];
#pragma GCC unroll 8
    for (int b = 0; b < 8; ++b) {
        mult[b] = r4_mults(blk, b);
        _mm_store_si128(reinterpret_cast<__m128i*>(D.m16[b]), _mm_or_si128(mult[b], _mm_slli_epi32(mult[b], 16)));
        const __m256i sg = r4_sign_bytes(blk + kR4SasOff + 16 * b);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r)
            _mm256_store_si256(reinterpret_cast<__m256i*>(D.u[b][r]),
                               offset_values(grid_block(blk + kR4QsOff + 32 * b + 8 * r), sign_mask(sg, r)));
    }
    r4_pairs(mult, D.X);
}

template <int NC>
inline void f_columns(const DecodedGroup& D, __m256 d8, const uint8_t* a0, size_t astride, __m256* acc) {
    __m256i P[NC][4];
    for (int n = 0; n < NC; ++n)
        for (int r = 0; r < 4; ++r) P[n][r] = _mm256_setzero_si256();
    for (int b = 0; b < 8; ++b) {
        __m256i a[NC];
        for (int n = 0; n < NC; ++n) a[n] = load32(a0 + n * astride + 8 + 32 * b);
        for (int r = 0; r < 4; ++r) {
            const __m256i u = _mm256_load_si256(reinterpret_cast<const __m256i*>(D.u[b][r]));
            const __m256i m = _mm256_set1_epi32(D.m16[b][r]);
            for (int n = 0; n < NC; ++n)
                P[n][r] = _mm256_add_epi32(P[n][r], _mm256_madd_epi16(_mm256_maddubs_epi16(u, a[n]), m));
        }
    }
    for (int n = 0; n < NC; ++n) acc[n] = f_update(acc[n], P[n], D.X, a0 + n * astride, d8);
}

void gemm_iq3_xxs_r4_large(const GemmArgs& g, int64_t n0, int nc) {
    const int64_t nbl = g.K / kQK;
    const uint8_t* A = g.A + n0 * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[kMaxCols];
        for (int n = 0; n < nc; ++n) acc[n] = _mm256_setzero_ps();
        DecodedGroup D;
        for (int64_t i = 0; i < nbl; ++i) {
            const uint8_t* blk = w + i * kR4Bytes;
            decode_group(blk, D);
            const __m256 d8 = r4_scales(blk);
            const uint8_t* as = A + act::kQ8KBytes * i;
            int n = 0;
            for (; n + 2 <= nc; n += 2) f_columns<2>(D, d8, as + n * g.a_row_bytes, g.a_row_bytes, acc + n);
            if (n < nc) f_columns<1>(D, d8, as + n * g.a_row_bytes, g.a_row_bytes, acc + n);
        }
        for (int n = 0; n < nc; ++n) store_r4(g.C + (n0 + n) * g.ldc + grp * 4, acc[n]);
    }
}

void gemm_iq3_xxs_r4(const GemmArgs& g) {
    switch (g.ncols) {
        case 1: gemm_iq3_xxs_r4_small<1>(g); return;
        case 2: gemm_iq3_xxs_r4_small<2>(g); return;
        case 3: gemm_iq3_xxs_r4_small<3>(g); return;
        case 4: gemm_iq3_xxs_r4_small<4>(g); return;
        default: break;
    }
    for (int64_t n0 = 0; n0 < g.ncols; n0 += kMaxCols)
        gemm_iq3_xxs_r4_large(g, n0, (int)(g.ncols - n0 < kMaxCols ? g.ncols - n0 : kMaxCols));
}

// ------------------------------------------------------------------------------------------
// Large-batch conversion to q8_k_r8 (§11.4).

// One row's super-block to its 256 re-quantized values (element order); returns dnew. Instead
// of 256 float products (one per weight):
//  * M = max over blocks of mult_b * (largest grid byte of block b), from a max-tree over the
//    8 blocks' grid bytes;
//  * a block's 32 weights take only 8 magnitudes g_l (level l = g >> 3), so its re-quantized
//    values are 8 numbers rne(inv * mult_b * g_l) (products exact in f32), computed for all
//    blocks at once (8 vectors, lane = block) and transposed into one 8-byte table per block,
//    which PSHUFB looks up with the levels;
//  * the sign is applied afterwards (0 - q on negative weights). Equal to rounding the
//    negative product: f32 multiplication and nearest-even rounding are symmetric, and no
//    positive value saturates (|inv * v| <= inv * M <= 124; test_conversion_never_saturates).
//    In the dnew < 1 branch inv = 1 stands for "copy v", which is exact (|v| <= M < 124).
inline float convert_row(const uint8_t* blk, uint8_t* q, __m256i s0, __m256i s1) {
    __m256i G[8];
    for (int b = 0; b < 8; ++b) G[b] = grid_block(blk + kQsOff + 8 * b);
    // largest byte of each block: halves of block pairs, then qwords, then dwords
    __m256i Y[4];
    for (int k = 0; k < 4; ++k)
        Y[k] = _mm256_max_epu8(_mm256_permute2x128_si256(G[2 * k], G[2 * k + 1], 0x20),
                               _mm256_permute2x128_si256(G[2 * k], G[2 * k + 1], 0x31));  // lanes: block 2k | 2k + 1
    __m256i Z0 = _mm256_max_epu8(_mm256_unpacklo_epi64(Y[0], Y[1]), _mm256_unpackhi_epi64(Y[0], Y[1]));  // qwords: 0 2 | 1 3
    __m256i Z1 = _mm256_max_epu8(_mm256_unpacklo_epi64(Y[2], Y[3]), _mm256_unpackhi_epi64(Y[2], Y[3]));  // 4 6 | 5 7
    Z0 = _mm256_max_epu8(Z0, _mm256_shuffle_epi32(Z0, 0xB1));
    Z1 = _mm256_max_epu8(Z1, _mm256_shuffle_epi32(Z1, 0xB1));
    __m256i V = _mm256_blend_epi32(Z0, Z1, 0xAA);  // dwords: blocks 0 4 2 6 | 1 5 3 7
    V = _mm256_max_epu8(V, _mm256_srli_epi32(V, 16));
    V = _mm256_max_epu8(V, _mm256_srli_epi32(V, 8));
    V = _mm256_and_si256(V, _mm256_set1_epi32(255));
    const __m256i mult = _mm256_or_si256(_mm256_srli_epi32(load32(blk + kSasOff), 27), _mm256_set1_epi32(1));  // 2 * (aux >> 28) + 1
    __m256i P = _mm256_madd_epi16(V, _mm256_permutevar8x32_epi32(mult, _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7)));
    P = _mm256_max_epi32(P, _mm256_permute2x128_si256(P, P, 0x01));
    P = _mm256_max_epi32(P, _mm256_shuffle_epi32(P, 0x4E));
    P = _mm256_max_epi32(P, _mm256_shuffle_epi32(P, 0xB1));
    const int M = _mm256_cvtsi256_si32(P);

    float dnew = (float)M * kConvD0;
    float inv = 1.0f;
    if (dnew < 1.0f) dnew = 1.0f;
    else inv = 1.0f / dnew;  // dnew >= 1 here, so |dnew| > 1e-9

    // level tables: I[l] lane b = rne(inv * mult_b * g_l)
    const __m256 mf = _mm256_cvtepi32_ps(mult), vi = _mm256_set1_ps(inv);
    static constexpr float kMag[8] = {4, 12, 20, 28, 36, 44, 52, 62};
    __m256i I[8];
    for (int l = 0; l < 8; ++l)
        I[l] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(vi, _mm256_mul_ps(mf, _mm256_set1_ps(kMag[l]))),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // bytes 4 l + b' (b' = block mod 4; lanes: blocks 0-3 | 4-7), levels 0-3 (X) and 4-7 (Y)
    const __m256i X = _mm256_packs_epi16(_mm256_packs_epi32(I[0], I[1]), _mm256_packs_epi32(I[2], I[3]));
    const __m256i Yl = _mm256_packs_epi16(_mm256_packs_epi32(I[4], I[5]), _mm256_packs_epi32(I[6], I[7]));
    const __m256i tr = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i Xt = _mm256_shuffle_epi8(X, tr), Yt = _mm256_shuffle_epi8(Yl, tr);  // bytes 4 b' + l
    const __m256i T01 = _mm256_unpacklo_epi32(Xt, Yt);  // 8-byte tables of blocks 0 1 | 4 5
    const __m256i T23 = _mm256_unpackhi_epi32(Xt, Yt);  // 2 3 | 6 7
    const __m256i tabs[4] = {_mm256_permute2x128_si256(T01, T01, 0x00), _mm256_permute2x128_si256(T23, T23, 0x00),
                             _mm256_permute2x128_si256(T01, T01, 0x11), _mm256_permute2x128_si256(T23, T23, 0x11)};
    const __m256i seven = _mm256_set1_epi8(7), eight = _mm256_set1_epi8(8);
    for (int b = 0; b < 8; ++b) {
        __m256i idx = _mm256_and_si256(_mm256_srli_epi16(G[b], 3), seven);
        if (b & 1) idx = _mm256_or_si256(idx, eight);
        const __m256i v = _mm256_shuffle_epi8(tabs[(b >> 2) * 2 + ((b >> 1) & 1)], idx);
        const __m256i m = sign_mask(b < 4 ? s0 : s1, b & 3);
        store32(q + 32 * b, _mm256_sub_epi8(_mm256_xor_si256(v, m), m));
    }
    return dnew;
}

void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nbl = K / kQK;
    const size_t row = (size_t)nbl * kBytes;
    alignas(32) uint8_t q[8 * 256];
    for (int64_t grp = 0; grp < nrows / 8; ++grp) {
        for (int64_t i = 0; i < nbl; ++i) {
            uint8_t* o = dst + (grp * nbl + i) * (16 + 2048);
            for (int r = 0; r < 8; ++r) {
                const uint8_t* blk = src + (8 * grp + r) * row + i * kBytes;
                const __m256i sb = sign_bytes(blk + kSasOff);
                const float dnew = convert_row(blk, q + 256 * r, dup_lo(sb), dup_hi(sb));
                const float F = 0.25f * _cvtsh_ss(rd_u16(blk));
                wr_u16(o + 2 * r, (uint16_t)_cvtss_sh(F * dnew, 0));
            }
            // interleave (docs/formats.md §5): qs[32 m + 4 r + j] = q_r[4 m + j], 8 dwords m at a time
            for (int c = 0; c < 8; ++c) {
                __m256i t[8];
                for (int r = 0; r < 8; ++r) t[r] = load32(q + 256 * r + 32 * c);
                avx2::transpose8x8_epi32(t);
                for (int j = 0; j < 8; ++j) store32(o + 16 + 32 * (8 * c + j), t[j]);
            }
        }
    }
}

}  // namespace

void register_avx2_iq3_xxs(KernelTables& t) {
    TypeKernels& a = t.types[T_IQ3_XXS];
    a.quantize = quantize_iq3_xxs;
    a.dequantize = dequantize_iq3_xxs;
    a.gemm = gemm_iq3_xxs;
    a.to_large_batch = convert_to_q8_k_r8;
    TypeKernels& b = t.types[T_IQ3_XXS_R4];
    b.quantize = quantize_iq3_xxs_r4;
    b.dequantize = dequantize_iq3_xxs_r4;
    b.gemm = gemm_iq3_xxs_r4;
}

}  // namespace iqkq
