// The direct q4_K / q5_K / q6_K x q8_2_x4 kernels (docs/formats.md, "k-quants: kernels"),
// shared by the AVX2 and the AVX-512 kernel sets: `Vnni` selects VPDPBUSD (AVX512-VNNI on
// 256-bit registers) for the byte dot products instead of VPMADDUBSW / VPMADDWD. The int32 lane
// sums are the same (exact either way), the float operations identical, so both sets give the
// scalar reference's bits. Included only from files compiled with the matching flags.
#pragma once
#include <immintrin.h>

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

// q4_K / q5_K for NC columns.
template <bool Vnni, bool five, int NC>
void gemm_qK_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kSuper;
    const int bytes = five ? kQ5Bytes : kQ4Bytes;
    const int qs_off = five ? kQ5Qs : kQ4Qs;
    const __m256i ml = _mm256_set1_epi8(0xf), mh = _mm256_set1_epi8(0x10);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* blk = w + i * bytes;
            _mm_prefetch((const char*)(blk + 2 * bytes), _MM_HINT_T0);
            _mm_prefetch((const char*)(blk + 2 * bytes + 64), _MM_HINT_T0);
            _mm_prefetch((const char*)(blk + 2 * bytes + 128), _MM_HINT_T0);
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
            __m256 dy[NC];
            for (int n = 0; n < NC; ++n) {
                dy[n] = act_scales8(acts[n], i);
                acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(dy[n], act_sums8(acts[n], i)), mins, acc[n]);
            }
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
                    const __m256 dy4 = j == 0 ? _mm256_permute2f128_ps(dy[n], dy[n], 0x00) : _mm256_permute2f128_ps(dy[n], dy[n], 0x11);
                    acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(scales[j], dy4), _mm256_cvtepi32_ps(s), acc[n]);
                }
            }
        }
        for (int n = 0; n < NC; ++n) g.C[(n0 + n) * g.ldc + r] = hsum8(acc[n]);
    }
}

// q6_K for NC columns.
template <bool Vnni, int NC>
void gemm_q6_K_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kSuper;
    const __m256i ml = _mm256_set1_epi8(0xf), mh = _mm256_set1_epi8(0x30), m32 = _mm256_set1_epi8(-32);
    const __m256i shuff = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2,
                                           3, 6, 7, 10, 11, 14, 15);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* blk = w + i * kQ6Bytes;
            _mm_prefetch((const char*)(blk + 2 * kQ6Bytes), _MM_HINT_T0);
            _mm_prefetch((const char*)(blk + 2 * kQ6Bytes + 64), _MM_HINT_T0);
            _mm_prefetch((const char*)(blk + 2 * kQ6Bytes + 128), _MM_HINT_T0);
            _mm_prefetch((const char*)(blk + 2 * kQ6Bytes + 192), _MM_HINT_T0);
            const __m256 vd = _mm256_set1_ps(_cvtsh_ss(rd_u16(blk + kQ6D)));
            const __m256i sc16 = _mm256_shuffle_epi8(
                _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQ6Scales))), shuff);
            const __m256 scales[2] = {
                _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(sc16)))),
                _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(sc16, 1))))};
            __m256 dy[NC];
            for (int n = 0; n < NC; ++n) dy[n] = act_scales8(acts[n], i);
            for (int j = 0; j < 2; ++j) {
                const __m256i l1 = load32(blk + 64 * j), l2 = load32(blk + 64 * j + 32);
                const __m256i hb = load32(blk + kQ6Qh + 32 * j);
                __m256i v[4] = {
                    _mm256_or_si256(_mm256_and_si256(l1, ml), _mm256_and_si256(_mm256_slli_epi16(hb, 4), mh)),
                    _mm256_or_si256(_mm256_and_si256(l2, ml), _mm256_and_si256(_mm256_slli_epi16(hb, 2), mh)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), ml), _mm256_and_si256(hb, mh)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), ml), _mm256_and_si256(_mm256_srli_epi16(hb, 2), mh))};
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
                    const __m256 dy4 = j == 0 ? _mm256_permute2f128_ps(dy[n], dy[n], 0x00) : _mm256_permute2f128_ps(dy[n], dy[n], 0x11);
                    acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(scales[j], dy4), _mm256_cvtepi32_ps(s), acc[n]);
                }
            }
        }
        for (int n = 0; n < NC; ++n) g.C[(n0 + n) * g.ldc + r] = hsum8(acc[n]);
    }
}


}  // namespace
}  // namespace kq_direct
}  // namespace iqkq
