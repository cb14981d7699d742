// The direct q4_K / q5_K / q6_K x q8_2_x4 kernels and the AVX2 kernels of the _r4 twins (docs/formats.md, "k-quants: kernels"),
// shared by the AVX2 and the AVX-512 kernel sets: `Vnni` selects VPDPBUSD (AVX512-VNNI on
// 256-bit registers) for the byte dot products instead of VPMADDUBSW / VPMADDWD. The int32 lane
// sums are the same (exact either way), the float operations identical, so both sets give the
// scalar reference's bits. Included only from files compiled with the matching flags.
#pragma once
#include <immintrin.h>
#include <initializer_list>

#include "common.h"
#include "formats/act.h"
#include "formats/kquants.h"
#include "kernels/avx2/simd.h"
#include "types.h"

namespace iqkq {
namespace kq_direct {
namespace {  // internal linkage: the AVX2 and AVX-512 files each keep their own copy
using namespace avx2;
using namespace kq;

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// bf16 scales of the 8 activation blocks of super-block i (groups 2i and 2i+1) -> 8 floats.
inline __m256 act_scales8(const uint8_t* a, int64_t i) {
    const uint8_t* g0 = a + act::kQ82GroupBytes * (2 * i);
    const __m128i d1 = _mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g0 + act::kQ82GroupD)));
    const __m128i d2 = _mm_cvtepu16_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(g0 + act::kQ82GroupBytes + act::kQ82GroupD)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_set_m128i(d2, d1), 16));
}
// int16 quant sums of the 8 activation blocks of super-block i -> 8 floats.
inline __m256 act_sums8(const uint8_t* a, int64_t i) {
    const uint8_t* g0 = a + act::kQ82GroupBytes * (2 * i);
    const __m128i s1 = _mm_cvtepi16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g0 + act::kQ82GroupS)));
    const __m128i s2 = _mm_cvtepi16_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(g0 + act::kQ82GroupBytes + act::kQ82GroupS)));
    return _mm256_cvtepi32_ps(_mm256_set_m128i(s2, s1));
}

// The four maddubs results of one 128-column half -> 8 int32 lanes in ik's lane order
// (unpack/add tree of mul_mat_q{X,Y}_K_q8_2_X4_T, AVX2 branch).
template <bool Vnni>
inline __m256i dot32(__m256i u, __m256i y) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    if constexpr (Vnni) return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, y);
#endif
    return _mm256_maddubs_epi16(u, y);
}
template <bool Vnni>
inline __m256i combine4(__m256i s1, __m256i s2, __m256i s3, __m256i s4) {
    if constexpr (Vnni) {
        s1 = _mm256_add_epi32(_mm256_unpacklo_epi32(s1, s2), _mm256_unpackhi_epi32(s1, s2));
        s3 = _mm256_add_epi32(_mm256_unpacklo_epi32(s3, s4), _mm256_unpackhi_epi32(s3, s4));
        return _mm256_add_epi32(_mm256_unpacklo_epi64(s1, s3), _mm256_unpackhi_epi64(s1, s3));
    }
    s1 = _mm256_add_epi16(_mm256_unpacklo_epi32(s1, s2), _mm256_unpackhi_epi32(s1, s2));
    s3 = _mm256_add_epi16(_mm256_unpacklo_epi32(s3, s4), _mm256_unpackhi_epi32(s3, s4));
    s1 = _mm256_add_epi16(_mm256_unpacklo_epi64(s1, s3), _mm256_unpackhi_epi64(s1, s3));
    return _mm256_madd_epi16(_mm256_set1_epi16(1), s1);
}

// Prepared activations of q4_K / q5_K / q6_K (the prepare_act hook, once per matmul): per super-block
// i, the 8 block scales dy as the two per-half vectors the kernel multiplies with
// ([dy0..3, dy0..3], [dy4..7, dy4..7]), then dy * (block sums) — the same float products the
// kernel would form per row, now formed once per column; then, for q6_K's VNNI kernels, per
// half j the int32 corrections -32 * (sum of 16 quants) in combine4's lane order (lane 4t + k:
// quants 32k + 16t .. +15 of the half's group), so that the unsigned 6-bit codes can be
// dpbusd's operand directly: sum (q - 32) * y = sum q * y - 32 * sum y, exactly.
constexpr int kQKPrep = 160;
inline void prepare_qK(const uint8_t* a, uint8_t* out, int64_t K) {
    for (int64_t i = 0; i < K / kSuper; ++i, out += kQKPrep) {
        const __m256 dy = act_scales8(a, i);
        _mm256_storeu_ps(reinterpret_cast<float*>(out), _mm256_permute2f128_ps(dy, dy, 0x00));
        _mm256_storeu_ps(reinterpret_cast<float*>(out + 32), _mm256_permute2f128_ps(dy, dy, 0x11));
        _mm256_storeu_ps(reinterpret_cast<float*>(out + 64), _mm256_mul_ps(dy, act_sums8(a, i)));
        for (int j = 0; j < 2; ++j) {
            const int8_t* qs = reinterpret_cast<const int8_t*>(a + act::kQ82GroupBytes * (2 * i + j) + act::kQ82GroupQs);
            int32_t corr[8];
            for (int t = 0; t < 2; ++t)
                for (int k = 0; k < 4; ++k) {
                    int32_t sum = 0;
                    for (int e = 0; e < 16; ++e) sum += qs[32 * k + 16 * t + e];
                    corr[4 * t + k] = -32 * sum;
                }
            std::memcpy(out + 96 + 32 * j, corr, sizeof corr);
        }
    }
}
inline size_t prepared_qK_bytes(int64_t K) { return (size_t)(K / kSuper) * kQKPrep; }

// q4_K / q5_K for NC columns (activations prepared by prepare_qK).
template <bool Vnni, bool five, int NC>
void gemm_qK_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kSuper;
    const int bytes = five ? kQ5Bytes : kQ4Bytes;
    const int qs_off = five ? kQ5Qs : kQ4Qs;
    const __m256i ml = _mm256_set1_epi8(0xf), mh = _mm256_set1_epi8(0x10);
    const uint8_t* acts[NC];
    const float* prep[NC];
    for (int n = 0; n < NC; ++n) {
        acts[n] = g.A + (n0 + n) * g.a_row_bytes;
        prep[n] = reinterpret_cast<const float*>(g.P + (n0 + n) * g.p_row_bytes);
    }
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* blk = w + i * bytes;
            IQKQ_PREFETCH((const char*)(blk + 2 * bytes), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + 2 * bytes + 64), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + 2 * bytes + 128), _MM_HINT_T0);
            const float* pi[NC];
            for (int n = 0; n < NC; ++n) pi[n] = prep[n] + (kQKPrep / 4) * i;
            const float d = _cvtsh_ss(rd_u16(blk));
            const __m256 vm = _mm256_set1_ps(_cvtsh_ss(rd_u16(blk + 2)));
            // the 8 6-bit scales then the 8 mins as bytes (ik's make_q4_scales; = scale_min_k4)
            uint32_t u[4];
            std::memcpy(u, blk + kQ4Scales, 12);
            u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
            const uint32_t aux = u[1] & 0x3f3f3f3fu;
            u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
            u[2] = aux;
            u[0] &= 0x3f3f3f3fu;
            const __m128i scm = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
            __m256 mins = _mm256_mul_ps(vm, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8))));
            mins = _mm256_mul_ps(_mm256_set1_ps(-1.0f), mins);
            for (int n = 0; n < NC; ++n) acc[n] = _mm256_fmadd_ps(_mm256_loadu_ps(pi[n] + 16), mins, acc[n]);
            const __m256 all = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scm)));
            const __m256 scales[2] = {_mm256_permute2f128_ps(all, all, 0x00), _mm256_permute2f128_ps(all, all, 0x11)};
            __m256i hbits = five ? load32(blk + kQ5Qh) : _mm256_setzero_si256();
            for (int j = 0; j < 2; ++j) {
                const __m256i b1 = load32(blk + qs_off + 64 * j), b2 = load32(blk + qs_off + 64 * j + 32);
                __m256i v[4] = {_mm256_and_si256(b1, ml), _mm256_and_si256(_mm256_srli_epi16(b1, 4), ml),
                                _mm256_and_si256(b2, ml), _mm256_and_si256(_mm256_srli_epi16(b2, 4), ml)};
                if (five) {
                    if (j == 1) hbits = _mm256_srli_epi16(hbits, 4);
                    v[0] = _mm256_or_si256(v[0], _mm256_and_si256(_mm256_slli_epi16(hbits, 4), mh));
                    v[1] = _mm256_or_si256(v[1], _mm256_and_si256(_mm256_slli_epi16(hbits, 3), mh));
                    v[2] = _mm256_or_si256(v[2], _mm256_and_si256(_mm256_slli_epi16(hbits, 2), mh));
                    v[3] = _mm256_or_si256(v[3], _mm256_and_si256(_mm256_slli_epi16(hbits, 1), mh));
                }
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* qs = acts[n] + act::kQ82GroupBytes * (2 * i + j) + act::kQ82GroupQs;
                    const __m256i s = combine4<Vnni>(dot32<Vnni>(v[0], load32(qs)), dot32<Vnni>(v[1], load32(qs + 32)),
                                                     dot32<Vnni>(v[2], load32(qs + 64)), dot32<Vnni>(v[3], load32(qs + 96)));
                    acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(scales[j], _mm256_loadu_ps(pi[n] + 8 * j)), _mm256_cvtepi32_ps(s), acc[n]);
                }
            }
        }
        for (int n = 0; n < NC; ++n) g.C[(n0 + n) * g.ldc + r] = hsum8(acc[n]);
    }
}

// q6_K for NC columns (activations prepared by prepare_qK; it reads the scales only).
template <bool Vnni, int NC>
void gemm_q6_K_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kSuper;
    const __m256i ml = _mm256_set1_epi8(0xf), mh = _mm256_set1_epi8(0x30), m32 = _mm256_set1_epi8(-32);
    const __m256i shuff = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2,
                                           3, 6, 7, 10, 11, 14, 15);
    const uint8_t* acts[NC];
    const float* prep[NC];
    for (int n = 0; n < NC; ++n) {
        acts[n] = g.A + (n0 + n) * g.a_row_bytes;
        prep[n] = reinterpret_cast<const float*>(g.P + (n0 + n) * g.p_row_bytes);
    }
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* blk = w + i * kQ6Bytes;
            IQKQ_PREFETCH((const char*)(blk + 2 * kQ6Bytes), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + 2 * kQ6Bytes + 64), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + 2 * kQ6Bytes + 128), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + 2 * kQ6Bytes + 192), _MM_HINT_T0);
            const __m256 vd = _mm256_set1_ps(_cvtsh_ss(rd_u16(blk + kQ6D)));
            const __m256i sc16 = _mm256_shuffle_epi8(
                _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQ6Scales))), shuff);
            const __m256 scales[2] = {
                _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(sc16)))),
                _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(sc16, 1))))};
            const float* pi[NC];
            for (int n = 0; n < NC; ++n) pi[n] = prep[n] + (kQKPrep / 4) * i;
            for (int j = 0; j < 2; ++j) {
                const __m256i l1 = load32(blk + 64 * j), l2 = load32(blk + 64 * j + 32);
                const __m256i hb = load32(blk + kQ6Qh + 32 * j);
                __m256i v[4] = {
                    _mm256_or_si256(_mm256_and_si256(l1, ml), _mm256_and_si256(_mm256_slli_epi16(hb, 4), mh)),
                    _mm256_or_si256(_mm256_and_si256(l2, ml), _mm256_and_si256(_mm256_slli_epi16(hb, 2), mh)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), ml), _mm256_and_si256(hb, mh)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), ml), _mm256_and_si256(_mm256_srli_epi16(hb, 2), mh))};
                if constexpr (Vnni) {
                    // codes 0..63 unsigned, the prepared -32 * sum(y) added (exact)
                    for (int n = 0; n < NC; ++n) {
                        const uint8_t* qs = acts[n] + act::kQ82GroupBytes * (2 * i + j) + act::kQ82GroupQs;
                        __m256i s = combine4<Vnni>(dot32<Vnni>(v[0], load32(qs)), dot32<Vnni>(v[1], load32(qs + 32)),
                                                   dot32<Vnni>(v[2], load32(qs + 64)), dot32<Vnni>(v[3], load32(qs + 96)));
                        s = _mm256_add_epi32(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pi[n] + 24 + 8 * j)));
                        acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(scales[j], _mm256_loadu_ps(pi[n] + 8 * j)), _mm256_cvtepi32_ps(s), acc[n]);
                    }
                    continue;
                }
                // maddubs: |q - 32| <= 32 keeps combine4's int16 sums exact (63 would not)
                __m256i us[4];
                for (int k = 0; k < 4; ++k) {
                    v[k] = _mm256_add_epi8(v[k], m32);
                    us[k] = _mm256_sign_epi8(v[k], v[k]);
                }
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* qs = acts[n] + act::kQ82GroupBytes * (2 * i + j) + act::kQ82GroupQs;
                    const __m256i s = combine4<Vnni>(dot32<Vnni>(us[0], _mm256_sign_epi8(load32(qs), v[0])),
                                                     dot32<Vnni>(us[1], _mm256_sign_epi8(load32(qs + 32), v[1])),
                                                     dot32<Vnni>(us[2], _mm256_sign_epi8(load32(qs + 64), v[2])),
                                                     dot32<Vnni>(us[3], _mm256_sign_epi8(load32(qs + 96), v[3])));
                    acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(scales[j], _mm256_loadu_ps(pi[n] + 8 * j)), _mm256_cvtepi32_ps(s), acc[n]);
                }
            }
        }
        for (int n = 0; n < NC; ++n) g.C[(n0 + n) * g.ldc + r] = hsum8(acc[n]);
    }
}


// The 4-row interleaved twins (mul_mat_q{4,5,6}_k_r4_q8_k).
inline __m256i sh4(__m256i y, int k) {
    switch (k) {
        case 0: return _mm256_shuffle_epi32(y, 0x00);
        case 1: return _mm256_shuffle_epi32(y, 0x55);
        case 2: return _mm256_shuffle_epi32(y, 0xaa);
        default: return _mm256_shuffle_epi32(y, 0xff);
    }
}

// ik's one-column min term of q4_k_r4 / q5_k_r4 (process_min_r4_b32, nrc_y == 1): per lane
// sum_j min_j * bsum_j, rounded in this order (the caller multiplies by -dmin once). f1..f4: the
// mins of the lane's four 32-blocks; bs: the eight q8_K32 block sums.
inline __m256 min_sum_one(__m256 f1, __m256 f2, __m256 f3, __m256 f4, __m256 bs) {
    __m256 s = _mm256_mul_ps(f1, _mm256_shuffle_ps(bs, bs, 0x00));
    s = _mm256_fmadd_ps(f2, _mm256_shuffle_ps(bs, bs, 0x55), s);
    s = _mm256_fmadd_ps(f3, _mm256_shuffle_ps(bs, bs, 0xaa), s);
    return _mm256_fmadd_ps(f4, _mm256_shuffle_ps(bs, bs, 0xff), s);
}

// One: the column takes ik's one-column float order (NC == 1; GemmArgs::single_col).
template <int kind, int NC, bool One = false>  // 0: q4_k_r4, 1: q5_k_r4
void gemm_q45_r4_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kSuper;
    const int bytes = kind == 0 ? kQ4R4Bytes : kQ5R4Bytes;
    const int qs_off = kind == 0 ? kQ4R4Qs : kQ5R4Qs;
    const __m256i mf = _mm256_set1_epi8(0xf), m3 = _mm256_set1_epi8(0x30), m10 = _mm256_set1_epi8(0x10);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t ibl = 0; ibl < nb; ++ibl) {
            const uint8_t* x = w + ibl * bytes;
            // Into L2 (T1): 1.06-1.11x cold GEMV over T0 on Zen 4 (ab_builds --cold --isa avx2).
            IQKQ_PREFETCH((const char*)(x + bytes), _MM_HINT_T1);
            IQKQ_PREFETCH((const char*)(x + bytes + 64), _MM_HINT_T1);
            const __m256 dl = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
            const __m256 d4 = _mm256_permute2f128_ps(dl, dl, 0x00);
            const __m256 m4 = _mm256_mul_ps(_mm256_set1_ps(-1.0f), _mm256_permute2f128_ps(dl, dl, 0x11));
            const __m256i lbits = load32(x + kQ4R4ScL);
            const __m128i h128 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + kQ4R4ScH));
            const __m256i hbits = _mm256_set_m128i(h128, _mm_slli_epi16(h128, 4));
            alignas(32) uint32_t hd[8];
            _mm256_store_si256(reinterpret_cast<__m256i*>(hd), _mm256_or_si256(_mm256_and_si256(lbits, mf), _mm256_and_si256(hbits, m3)));
            const __m256i mins = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lbits, 4), mf),
                                                 _mm256_and_si256(_mm256_srli_epi16(hbits, 2), m3));
            const __m128i ml = _mm256_castsi256_si128(mins), mhh = _mm256_extracti128_si256(mins, 1);
            const __m128i aux1 = _mm_unpacklo_epi32(ml, mhh), aux2 = _mm_unpackhi_epi32(ml, mhh);
            const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(aux1));
            const __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_shuffle_epi32(aux1, 0xee)));
            const __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(aux2));
            const __m256 f4 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_shuffle_epi32(aux2, 0xee)));
            __m256i isum[NC];
            if constexpr (One) {
                const __m256 bs = _mm256_loadu_ps(reinterpret_cast<const float*>(acts[0] + ibl * act::kQ8KBytes + act::kQ8KBsums));
                acc[0] = _mm256_fmadd_ps(m4, min_sum_one(f1, f2, f3, f4, bs), acc[0]);
                isum[0] = _mm256_setzero_si256();
            } else {
                const __m256 c1 = _mm256_mul_ps(m4, f1), c2 = _mm256_mul_ps(m4, f2);
                const __m256 c3 = _mm256_mul_ps(m4, f3), c4 = _mm256_mul_ps(m4, f4);
                for (int n = 0; n < NC; ++n) {
                    const __m256 bs = _mm256_loadu_ps(reinterpret_cast<const float*>(acts[n] + ibl * act::kQ8KBytes + act::kQ8KBsums));
                    acc[n] = _mm256_fmadd_ps(c1, _mm256_shuffle_ps(bs, bs, 0x00), acc[n]);
                    acc[n] = _mm256_fmadd_ps(c2, _mm256_shuffle_ps(bs, bs, 0x55), acc[n]);
                    acc[n] = _mm256_fmadd_ps(c3, _mm256_shuffle_ps(bs, bs, 0xaa), acc[n]);
                    acc[n] = _mm256_fmadd_ps(c4, _mm256_shuffle_ps(bs, bs, 0xff), acc[n]);
                    isum[n] = _mm256_setzero_si256();
                }
            }
            for (int ib = 0; ib < 8; ++ib) {
                __m128i aux = _mm_set1_epi32((int)hd[ib]);
                aux = _mm_cvtepu8_epi16(_mm_unpacklo_epi8(aux, aux));
                const __m256i scales_d = _mm256_broadcastsi128_si256(aux);
                const __m256i b1 = load32(x + qs_off + 64 * ib), b2 = load32(x + qs_off + 64 * ib + 32);
                __m256i qx[4] = {_mm256_and_si256(b1, mf), _mm256_and_si256(b2, mf), _mm256_and_si256(_mm256_srli_epi16(b1, 4), mf),
                                 _mm256_and_si256(_mm256_srli_epi16(b2, 4), mf)};
                if (kind == 1) {
                    const __m128i q128 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + kQ5R4Qh + 16 * ib));
                    const __m256i hb = _mm256_set_m128i(q128, _mm_slli_epi16(q128, 4));
                    qx[0] = _mm256_or_si256(qx[0], _mm256_and_si256(m10, hb));
                    qx[1] = _mm256_or_si256(qx[1], _mm256_and_si256(m10, _mm256_srli_epi16(hb, 2)));
                    qx[2] = _mm256_or_si256(qx[2], _mm256_and_si256(m10, _mm256_srli_epi16(hb, 1)));
                    qx[3] = _mm256_or_si256(qx[3], _mm256_and_si256(m10, _mm256_srli_epi16(hb, 3)));
                }
                for (int n = 0; n < NC; ++n) {
                    const __m256i y = load32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KQs + 32 * ib);
                    const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(qx[0], sh4(y, 0)), _mm256_maddubs_epi16(qx[1], sh4(y, 1)));
                    const __m256i s2 = _mm256_add_epi16(_mm256_maddubs_epi16(qx[2], sh4(y, 2)), _mm256_maddubs_epi16(qx[3], sh4(y, 3)));
                    isum[n] = _mm256_add_epi32(isum[n], _mm256_add_epi32(_mm256_madd_epi16(scales_d, s1), _mm256_madd_epi16(scales_d, s2)));
                }
            }
            for (int n = 0; n < NC; ++n) {
                const float dA = rd_f32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KD);
                acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(d4, _mm256_set1_ps(dA)), _mm256_cvtepi32_ps(isum[n]), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n)
            _mm_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 4,
                          _mm_add_ps(_mm256_castps256_ps128(acc[n]), _mm256_extractf128_ps(acc[n], 1)));
    }
}

template <int NC, bool One = false>
void gemm_q6_r4_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kSuper;
    const __m256i m4b = _mm256_set1_epi8(0xf), m3 = _mm256_set1_epi8(0x30), one = _mm256_set1_epi16(1);
    const __m256i shuff = _mm256_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, 0, 1, 8, 9, 2, 3, 10, 11, 4, 5,
                                           12, 13, 6, 7, 14, 15);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t ibl = 0; ibl < nb; ++ibl) {
            const uint8_t* x = w + ibl * kQ6R4Bytes;
            IQKQ_PREFETCH((const char*)(x + kQ6R4Bytes), _MM_HINT_T1);
            IQKQ_PREFETCH((const char*)(x + kQ6R4Bytes + 64), _MM_HINT_T1);
            const __m128 dl = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x)));
            // One: d * d_act first (ik's one-column instance), then the min and the scales.
            const __m256 d4 = One ? _mm256_mul_ps(_mm256_set_m128(dl, dl), _mm256_set1_ps(rd_f32(acts[0] + ibl * act::kQ8KBytes + act::kQ8KD)))
                                  : _mm256_set_m128(dl, dl);
            const __m256 mn = _mm256_mul_ps(d4, _mm256_set1_ps(-32.0f));
            const uint8_t* sc = x + kQ6R4Scales;
            __m256i t[4];
            for (int k = 0; k < 4; ++k)
                t[k] = _mm256_shuffle_epi8(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 16 * k))), shuff);
            const __m256i s1 = _mm256_permute2x128_si256(t[0], t[2], 0x20), s2 = _mm256_permute2x128_si256(t[0], t[2], 0x31);
            const __m256i s3 = _mm256_permute2x128_si256(t[1], t[3], 0x20), s4 = _mm256_permute2x128_si256(t[1], t[3], 0x31);
            for (int n = 0; n < NC; ++n) {
                const __m256i bsums = load32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KBsums);
                __m256i sumi = _mm256_setzero_si256();
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s1, _mm256_shuffle_epi32(bsums, 0x00)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s2, _mm256_shuffle_epi32(bsums, 0x55)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s3, _mm256_shuffle_epi32(bsums, 0xaa)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s4, _mm256_shuffle_epi32(bsums, 0xff)));
                const float dA = rd_f32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KD);
                acc[n] = _mm256_fmadd_ps(One ? mn : _mm256_mul_ps(mn, _mm256_set1_ps(dA)), _mm256_cvtepi32_ps(sumi), acc[n]);
            }
            for (int ib = 0; ib < 8; ++ib) {
                const __m256i isc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + 8 * ib)));
                const __m256 scales = _mm256_mul_ps(d4, _mm256_cvtepi32_ps(isc));
                const __m256i l1 = load32(x + kQ6R4Ql + 64 * ib), l2 = load32(x + kQ6R4Ql + 64 * ib + 32);
                const __m256i hb = load32(x + kQ6R4Qh + 32 * ib);
                const __m256i qx[4] = {
                    _mm256_or_si256(_mm256_and_si256(l1, m4b), _mm256_and_si256(m3, _mm256_slli_epi16(hb, 4))),
                    _mm256_or_si256(_mm256_and_si256(l2, m4b), _mm256_and_si256(m3, hb)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4b), _mm256_and_si256(m3, _mm256_slli_epi16(hb, 2))),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m4b), _mm256_and_si256(m3, _mm256_srli_epi16(hb, 2)))};
                for (int n = 0; n < NC; ++n) {
                    const __m256i y = load32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KQs + 32 * ib);
                    const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(qx[0], sh4(y, 0)), _mm256_maddubs_epi16(qx[1], sh4(y, 1)));
                    const __m256i p2 = _mm256_add_epi16(_mm256_maddubs_epi16(qx[2], sh4(y, 2)), _mm256_maddubs_epi16(qx[3], sh4(y, 3)));
                    const __m256i sumi = _mm256_add_epi32(_mm256_madd_epi16(one, p1), _mm256_madd_epi16(one, p2));
                    const float dA = rd_f32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KD);
                    acc[n] = _mm256_fmadd_ps(One ? scales : _mm256_mul_ps(scales, _mm256_set1_ps(dA)), _mm256_cvtepi32_ps(sumi), acc[n]);
                }
            }
        }
        for (int n = 0; n < NC; ++n)
            _mm_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 4,
                          _mm_add_ps(_mm256_castps256_ps128(acc[n]), _mm256_extractf128_ps(acc[n], 1)));
    }
}

}  // namespace
}  // namespace kq_direct
}  // namespace iqkq
