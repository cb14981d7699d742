// AVX2 building blocks shared by the kernels of the 4-bit non-linear family with 256-value
// super-blocks of 8 x 32 (iq4_ks, iq4_xs and their twins): nibble unpacking, the paired
// activation layout of the small-batch kernels, and the re-quantization of one row's
// integer values to q8_k_r8 (the large-batch conversion, docs/formats.md). Only included
// from translation units compiled with -mavx2 -mfma -mf16c; everything is `static`.
#pragma once
#include <immintrin.h>
#include <cstdint>

#include "common.h"
#include "formats/act.h"
#include "formats/iq4_grid.h"
#include "kernels/avx2/simd.h"

namespace iqkq {
namespace avx2_iq4 {

static inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
static inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// 16 bytes of packed nibbles -> 32 bytes in element order (low nibbles = elements 0..15,
// high nibbles = elements 16..31), values 0..15.
static inline __m256i unpack_nibbles(__m128i q) {
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
}

// 32 int8 values v8 (element order) times the float block scale dl -> 32 floats at y.
static inline void store_block(__m256i v8, float dl, float* y) {
    const __m256 d = _mm256_set1_ps(dl);
    const __m128i lo = _mm256_castsi256_si128(v8), hi = _mm256_extracti128_si256(v8, 1);
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
}

// Paired activation layout (prepare_act of the small-batch kernels): per super-block and
// block pair (2p, 2p+1), [a_2p e0..15 | a_2p+1 e0..15 | a_2p e16..31 | a_2p+1 e16..31], so
// that one 32-byte load of the nibbles of two blocks (low or high nibbles) lines up with the
// activations. Int32 lane 4h + L of a maddubs/madd product then holds elements 4L..4L+3
// (+16 for high nibbles) of block 2p + h; adjacent pairs of bytes stay adjacent, so
// saturating maddubs sums are those of the element-order kernels.
static inline void pair_activations_q8k(const uint8_t* act, uint8_t* out, int64_t K) {
    for (int64_t i = 0; i < K / 256; ++i) {
        const uint8_t* q = act + i * act::kQ8KBytes + act::kQ8KQs;
        uint8_t* o = out + i * 256;
        for (int p = 0; p < 4; ++p) {
            const __m256i x = load32(q + 64 * p), y = load32(q + 64 * p + 32);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 64 * p), _mm256_permute2x128_si256(x, y, 0x20));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 64 * p + 32), _mm256_permute2x128_si256(x, y, 0x31));
        }
    }
}
static inline size_t paired_bytes(int64_t K) { return (size_t)K; }

// Lane sums of the paired layout -> element-order lanes: lo = sums of the low-nibble
// vectors (half h = block 2p+h, elements 0..15), hi = high-nibble vectors (elements 16..31).
// Returns lanes 0..3 = elements 0..15 and 4..7 = elements 16..31, summed over both blocks.
static inline __m256i unpair_lanes(__m256i lo, __m256i hi) {
    const __m256i x = _mm256_blend_epi32(lo, hi, 0xf0);  // lo.low  | hi.high
    const __m256i y = _mm256_blend_epi32(hi, lo, 0xf0);  // hi.low  | lo.high
    return _mm256_add_epi32(x, _mm256_permute2x128_si256(y, y, 0x01));
}

// Columns handled together by one kernel pass (at most 4): blocks of 4, but 5, 6, 7 columns
// as 3+2, 3+3, 4+3 rather than with a pass for a single column.
static inline int column_block(int64_t left) {
    if (left >= 8 || left == 4 || left == 7) return 4;
    if (left == 5 || left == 6) return 3;
    return (int)left;
}

// The large-batch conversion of one row's super-block (iqk_common.h convert_to_q8_k_r8):
// v16[k] = int16 values of elements 16k..16k+15. Writes the 256 int8 quants in element order
// to q8 (32-byte aligned) and returns dnew (1 when no re-scaling was needed). Scalar twin:
// formats/q8_k_r8.h pack_row_scalar.
static inline float convert_row_q8(const __m256i v16[16], float d0, uint8_t* q8) {
    __m256i mx = _mm256_setzero_si256();
    for (int k = 0; k < 16; ++k) mx = _mm256_max_epi16(mx, _mm256_abs_epi16(v16[k]));
    __m128i m = _mm_max_epi16(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
    m = _mm_max_epi16(m, _mm_srli_si128(m, 8));
    m = _mm_max_epi16(m, _mm_srli_si128(m, 4));
    m = _mm_max_epi16(m, _mm_srli_si128(m, 2));
    const int M = _mm_extract_epi16(m, 0);
    float dn = (float)M * d0;
    const bool rescale = !(dn < 1.0f);
    if (!rescale) dn = 1.0f;
    const __m256 inv = _mm256_set1_ps(fabsf_(dn) > 1e-9f ? 1.0f / dn : 0.0f);
    for (int b = 0; b < 8; ++b) {
        __m256i q;
        if (rescale) {
            __m256 f[4];
            for (int h = 0; h < 2; ++h) {
                const __m256i x = v16[2 * b + h];
                f[2 * h] = _mm256_mul_ps(inv, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(x))));
                f[2 * h + 1] = _mm256_mul_ps(inv, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(x, 1))));
            }
            q = avx2::pack_rne_i8(f[0], f[1], f[2], f[3]);
        } else {
            q = _mm256_permute4x64_epi64(_mm256_packs_epi16(v16[2 * b], v16[2 * b + 1]), 0xd8);
        }
        _mm256_store_si256(reinterpret_cast<__m256i*>(q8 + 32 * b), q);
    }
    return dn;
}

// 8 rows of 256 int8 quants (q8[r], 32-byte aligned) -> qs of a q8_k_r8 group block at o
// (qs[32m + 4r + j] = q_r[4m + j]): an 8x8 dword transpose per 32 elements.
static inline void store_q8_k_r8_quants(const uint8_t (*q8)[256], uint8_t* o) {
    for (int b = 0; b < 8; ++b) {
        __m256i v[8];
        for (int r = 0; r < 8; ++r) v[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q8[r] + 32 * b));
        avx2::transpose8x8_epi32(v);
        for (int l = 0; l < 8; ++l) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 + 32 * (8 * b + l)), v[l]);
    }
}

// ------------------------------------------------------------------------------ quantizers
// best_index (formats/iq4_grid.h) of 8 floats at once, as a 4-step binary search over the 15
// switching points t_k of the table: best_index(T, x) = #{k : x >= t_k} for every float x with
// |x| < 2^31 (the thresholds are derived from the scalar best_index, which is monotone; the
// identity was checked exhaustively for iq4_ks's tables by tools/iq4_ks_best_index_check.cpp).

// Monotone map float -> int64 and back (for bisection over consecutive floats).
static inline int64_t float_key(float f) {
    const uint32_t u = fbits(f);
    return (u & 0x80000000u) ? -(int64_t)(u & 0x7fffffffu) : (int64_t)u;
}
static inline float key_float(int64_t k) { return k < 0 ? bitsf((uint32_t)(-k) | 0x80000000u) : bitsf((uint32_t)k); }

// t_k (k = 0..14) of the 16-entry ascending table T: the smallest float x with
// best_index(T, x) > k, by bisection over consecutive floats; out[15] is unused.
static inline void grid_thresholds(const int8_t* T, float* out) {
    for (int k = 0; k < 15; ++k) {
        int64_t lo = float_key((float)T[k]), hi = float_key((float)T[k + 1]);  // best: k at lo, k+1 at hi
        while (hi - lo > 1) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (iq4_grid::best_index(T, key_float(mid)) > k) hi = mid; else lo = mid;
        }
        out[k] = key_float(hi);
    }
    out[15] = 1e30f;  // unused
}

struct Search {
    __m256 t7, t3, t11, v3, v4, teven, todd;  // thresholds; table entries 2p, 2p+1
};

static inline Search make_grid_search(const float* t, const int8_t* T) {
    Search s;
    s.t7 = _mm256_set1_ps(t[7]);
    s.t3 = _mm256_set1_ps(t[3]);
    s.t11 = _mm256_set1_ps(t[11]);
    s.v3 = _mm256_setr_ps(t[1], t[5], t[9], t[13], t[1], t[5], t[9], t[13]);
    s.v4 = _mm256_setr_ps(t[0], t[2], t[4], t[6], t[8], t[10], t[12], t[14]);
    s.teven = _mm256_setr_ps(T[0], T[2], T[4], T[6], T[8], T[10], T[12], T[14]);
    s.todd = _mm256_setr_ps(T[1], T[3], T[5], T[7], T[9], T[11], T[13], T[15]);
    return s;
}

// T[best_index(T, x)] for 8 floats (|x| < 2^31): binary search for #{k : x >= t_k}.
static inline __m256 best_value(__m256 x, const Search& s) {
    const __m256 m1 = _mm256_cmp_ps(x, s.t7, _CMP_GE_OQ);                              // bit 3
    const __m256 m2 = _mm256_cmp_ps(x, _mm256_blendv_ps(s.t3, s.t11, m1), _CMP_GE_OQ);  // bit 2
    __m256i i = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(m1), _mm256_set1_epi32(2)), _mm256_castps_si256(m2));
    const __m256 m3 = _mm256_cmp_ps(x, _mm256_permutevar8x32_ps(s.v3, i), _CMP_GE_OQ);  // bit 1
    i = _mm256_sub_epi32(_mm256_add_epi32(i, i), _mm256_castps_si256(m3));                // = index >> 1
    const __m256 m4 = _mm256_cmp_ps(x, _mm256_permutevar8x32_ps(s.v4, i), _CMP_GE_OQ);  // bit 0
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(s.teven, i), _mm256_permutevar8x32_ps(s.todd, i), m4);
}

}  // namespace avx2_iq4
}  // namespace iqkq
