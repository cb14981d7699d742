// Small AVX2 helpers shared by the kernel files. Only included from translation units
// compiled with -mavx2 -mfma -mf16c.
#pragma once
#include <immintrin.h>
#include <cstdint>

#include "types.h"

// Software prefetch of weight data. IQKQ_SWPF=0 at build time turns every one off (for
// measuring what the hardware prefetcher alone does); 2 maps every hint to L2 (_MM_HINT_T1).
#ifndef IQKQ_SWPF
#define IQKQ_SWPF 1
#endif
#if IQKQ_SWPF == 0
#define IQKQ_PREFETCH(p, hint) ((void)(p))
#elif IQKQ_SWPF == 2
#define IQKQ_PREFETCH(p, hint) _mm_prefetch((const char*)(p), _MM_HINT_T1)
#else
#define IQKQ_PREFETCH(p, hint) _mm_prefetch((const char*)(p), hint)
#endif

namespace iqkq {
namespace avx2 {

// Largest |x| over 8 lanes -> scalar. NaN lanes are ignored (maxps returns its second
// operand when either is NaN), matching the scalar reference.
static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(_mm_movehl_ps(m, m), m);
    m = _mm_max_ss(_mm_movehdup_ps(m), m);
    return _mm_cvtss_f32(m);
}

static inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// H8 of docs/formats.md §11.3: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Round to nearest even, convert and pack 32 floats (4 vectors) to 32 int8 with signed
// saturation, in element order.
static inline __m256i pack_rne_i8(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(v0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(v1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(v2, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(v3, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i p01 = _mm256_packs_epi32(i0, i1);  // lanes: i0[0..3] i1[0..3] | i0[4..7] i1[4..7]
    const __m256i p23 = _mm256_packs_epi32(i2, i3);
    const __m256i p = _mm256_packs_epi16(p01, p23);  // dword order 0 2 4 6 1 3 5 7
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Sum of 32 int8 as int32 in every lane-pair partial (8 lanes of 4 consecutive bytes).
static inline __m256i sum_i8_4(__m256i q) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
}

static inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

// Signed int8 x int8 products summed in groups of 4 consecutive bytes -> 8 x int32.
// maddubs needs an unsigned left operand, so the sign of w moves onto a.
static inline __m256i dot4_i8(__m256i w, __m256i a) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// 8x8 transpose of 32-bit lanes: r[i] lane j <-> r[j] lane i. Moves 8 rows' 4-byte groups
// into the column layout of the _r8 types and back.
static inline void transpose8x8_epi32(__m256i r[8]) {
    const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

}  // namespace avx2

// Column dispatch shared by the SIMD kernels: a kernel is instantiated for a few column
// counts NC (fns[NC], the others null); the batch is walked in chunks of the largest NC,
// and the rest with the largest instantiation that fits.
using ColsFn = void (*)(const GemmArgs& g, int64_t n0);
static inline void for_column_chunks(const GemmArgs& g, const ColsFn* fns, int max_nc) {
    int64_t n = 0;
    for (; n + max_nc <= g.ncols; n += max_nc) fns[max_nc](g, n);
    while (n < g.ncols) {
        int r = (int)(g.ncols - n);
        while (!fns[r]) --r;
        fns[r](g, n);
        n += r;
    }
}

// As for_column_chunks, but the column GemmArgs::single_col (if any) goes to `single`, the
// kernel in ik_llama.cpp's one-column float order; the columns before and after it are walked
// as usual.
static inline void for_column_chunks(const GemmArgs& g, const ColsFn* fns, int max_nc, ColsFn single) {
    if (g.single_col < 0) {
        for_column_chunks(g, fns, max_nc);
        return;
    }
    GemmArgs h = g;
    h.ncols = g.single_col;
    if (h.ncols > 0) for_column_chunks(h, fns, max_nc);
    single(g, g.single_col);
    h.A = g.A + (g.single_col + 1) * g.a_row_bytes;
    h.C = g.C + (g.single_col + 1) * g.ldc;
    h.ncols = g.ncols - g.single_col - 1;
    if (h.ncols > 0) for_column_chunks(h, fns, max_nc);
}

}  // namespace iqkq
