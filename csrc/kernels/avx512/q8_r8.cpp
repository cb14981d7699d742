// AVX-512 kernels for the 8-row interleaved int8 types (q8_0_r8, q8_k_r8), the workhorses of
// the large-batch path. Compiled with the AVX-512 flags (CMakeLists.txt) and used only on
// CPUs that have them (dispatch.cpp).
//
// VPDPBUSD multiplies unsigned by signed bytes and adds groups of four into int32 lanes
// without intermediate saturation. The weights are made unsigned by flipping their sign bit
// (w + 128), and the extra 128 * sum(a) per block is subtracted using the block sums the
// activation formats already carry (q8_2_x4: int16 per 32; q8_K: int16 per 16). The
// integer dot products are therefore exactly those of the AVX2 kernels, and the float
// operations are the same in the same order: results are bit-identical.
#include "common.h"
#include "formats/act.h"
#include "formats/q8_0.h"
#include "formats/q8_k_r8.h"
#include "kernels/avx2/simd.h"
#include "kernels/avx512/simd.h"
#include "types.h"

#include <immintrin.h>

// GCC 12's AVX-512 headers build results on _mm512_undefined_*() and then warn that those
// may be used uninitialised; the warnings are about the headers, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace iqkq {
namespace {

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Kernel (C) q8_k_r8 x q8_K. NC columns at once, two accumulators per column so that the
// dependent VPDPBUSD chains are short enough to keep both multiply pipes busy (AVX512-VL
// gives 32 YMM registers).
inline int32_t sum_bsums(const uint8_t* ab) {
    const __m256i bs = _mm256_madd_epi16(load32(ab + act::kQ8KBsums), _mm256_set1_epi16(1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

template <int NC>
void q8_k_r8_cols(const GemmArgs& g, int64_t n0) {
    using namespace q8_k_r8;
    const int64_t nb = g.K / kBlock;
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* blk = w + i * kGroupBlock;
            __m256i s0[NC], s1[NC];
            for (int n = 0; n < NC; ++n) s0[n] = s1[n] = _mm256_setzero_si256();
            for (int m = 0; m < 64; m += 4) {
                const __m256i w0 = _mm256_xor_si256(load32(blk + 16 + 32 * m), flip);
                const __m256i w1 = _mm256_xor_si256(load32(blk + 48 + 32 * m), flip);
                const __m256i w2 = _mm256_xor_si256(load32(blk + 80 + 32 * m), flip);
                const __m256i w3 = _mm256_xor_si256(load32(blk + 112 + 32 * m), flip);
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* aq = acts[n] + i * act::kQ8KBytes + act::kQ8KQs + 4 * m;
                    s0[n] = _mm256_dpbusd_epi32(s0[n], w0, avx512::bcast_dword256(aq));
                    s1[n] = _mm256_dpbusd_epi32(s1[n], w1, avx512::bcast_dword256(aq + 4));
                    s0[n] = _mm256_dpbusd_epi32(s0[n], w2, avx512::bcast_dword256(aq + 8));
                    s1[n] = _mm256_dpbusd_epi32(s1[n], w3, avx512::bcast_dword256(aq + 12));
                }
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + i * act::kQ8KBytes;
                const __m256i P = _mm256_sub_epi32(_mm256_add_epi32(s0[n], s1[n]), _mm256_set1_epi32(128 * sum_bsums(ab)));
                const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(rd_f32(ab)));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(P), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
    }
}

// Two 8-row groups side by side in one 512-bit register: a single broadcast of 4 activation
// bytes then feeds 16 rows, halving the loads per multiply-add. Same integer sums and
// the same float operations per output as the 256-bit version.
template <int NC>
void q8_k_r8_pairs(const GemmArgs& g, int64_t n0) {
    using namespace q8_k_r8;
    const int64_t nb = g.K / kBlock;
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int64_t grp = 0; grp + 2 <= g.nrows / 8; grp += 2) {
        const uint8_t* wa = g.W + grp * g.w_group_bytes;
        const uint8_t* wb = wa + g.w_group_bytes;
        __m512 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* ba = wa + i * kGroupBlock;
            const uint8_t* bb = wb + i * kGroupBlock;
            __m512i s0[NC], s1[NC];
            for (int n = 0; n < NC; ++n) s0[n] = s1[n] = _mm512_setzero_si512();
            for (int m = 0; m < 64; m += 4) {
                __m512i wv[4];
                for (int l = 0; l < 4; ++l) {
                    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(load32(ba + 16 + 32 * (m + l))),
                                                         load32(bb + 16 + 32 * (m + l)), 1);
                    wv[l] = _mm512_xor_si512(v, flip);
                }
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* aq = acts[n] + i * act::kQ8KBytes + act::kQ8KQs + 4 * m;
                    s0[n] = _mm512_dpbusd_epi32(s0[n], wv[0], avx512::bcast_dword(aq));
                    s1[n] = _mm512_dpbusd_epi32(s1[n], wv[1], avx512::bcast_dword(aq + 4));
                    s0[n] = _mm512_dpbusd_epi32(s0[n], wv[2], avx512::bcast_dword(aq + 8));
                    s1[n] = _mm512_dpbusd_epi32(s1[n], wv[3], avx512::bcast_dword(aq + 12));
                }
            }
            const __m256i dh = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ba))),
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(bb)), 1);
            const __m512 dw = _mm512_cvtph_ps(dh);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + i * act::kQ8KBytes;
                const __m512i P = _mm512_sub_epi32(_mm512_add_epi32(s0[n], s1[n]), _mm512_set1_epi32(128 * sum_bsums(ab)));
                const __m512 c = _mm512_mul_ps(dw, _mm512_set1_ps(rd_f32(ab)));
                acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(P), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) {
            float* out = g.C + (n0 + n) * g.ldc + grp * 8;
            _mm512_storeu_ps(out, acc[n]);
        }
    }
}

template <int NC>
void q8_k_r8_any(const GemmArgs& g, int64_t n0) {
    const int64_t ngroups = g.nrows / 8;
    // One column: one 8-row group at a time, so the weights are read as a single sequential
    // stream (pairs read two streams a group apart; Zen 4 ab_builds N = 1, 1 thread: cold
    // x1.21-1.24, hot x1.05; same bits).
    if (NC == 1) {
        q8_k_r8_cols<NC>(g, n0);
        return;
    }
    q8_k_r8_pairs<NC>(g, n0);
    if (ngroups % 2) {
        GemmArgs last = g;
        last.W = g.W + (ngroups - 1) * g.w_group_bytes;
        last.nrows = 8;
        last.C = g.C + (ngroups - 1) * 8;
        q8_k_r8_cols<NC>(last, n0);
    }
}

void gemm_q8_k_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, q8_k_r8_any<1>, q8_k_r8_any<2>, q8_k_r8_any<3>, q8_k_r8_any<4>, nullptr, nullptr, nullptr, q8_k_r8_any<8>};
    for_column_chunks(g, fns, 8);
}

// Kernel (B) q8_0_r8 x q8_2_x4, two 8-row groups per 512-bit register as above; a lone
// last group uses the 256-bit version.
struct ActOffsets {
    int64_t scale, sum, quants;
};
inline ActOffsets q8_2_offsets(int64_t b, int64_t nb4) {
    return {act::q82_d_offset(b, nb4), act::q82_s_offset(b, nb4), act::q82_qs_offset(b, nb4)};
}

template <int NC>
void q8_0_r8_cols(const GemmArgs& g, int64_t n0, int64_t grp) {
    using namespace q8_0;
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    const uint8_t* w = g.W + grp * g.w_group_bytes;
    __m256 acc[NC];
    for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w + b * kR8Bytes;
        const ActOffsets o = q8_2_offsets(b, nb4);
        __m256i wv[8];
        for (int l = 0; l < 8; ++l) wv[l] = _mm256_xor_si256(load32(blk + 16 + 32 * l), flip);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
        for (int n = 0; n < NC; ++n) {
            const uint8_t* aq = acts[n] + o.quants;
            __m256i s0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv[0], avx512::bcast_dword256(aq));
            __m256i s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv[1], avx512::bcast_dword256(aq + 4));
            for (int l = 2; l < 8; l += 2) {
                s0 = _mm256_dpbusd_epi32(s0, wv[l], avx512::bcast_dword256(aq + 4 * l));
                s1 = _mm256_dpbusd_epi32(s1, wv[l + 1], avx512::bcast_dword256(aq + 4 * l + 4));
            }
            const int32_t bsum = (int16_t)rd_u16(acts[n] + o.sum);
            const __m256i P = _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_set1_epi32(bsum * 128));
            const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(bf16_to_fp32(rd_u16(acts[n] + o.scale))));
            acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(P), acc[n]);
        }
    }
    for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
}

template <int NC>
void q8_0_r8_pair(const GemmArgs& g, int64_t n0, int64_t grp) {
    using namespace q8_0;
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const uint8_t* wa = g.W + grp * g.w_group_bytes;
    const uint8_t* wb = wa + g.w_group_bytes;
    __m512 acc[NC];
    for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* ba = wa + b * kR8Bytes;
        const uint8_t* bb = wb + b * kR8Bytes;
        const ActOffsets o = q8_2_offsets(b, nb4);
        __m512i wv[8];
        for (int l = 0; l < 8; ++l)
            wv[l] = _mm512_xor_si512(
                _mm512_inserti64x4(_mm512_castsi256_si512(load32(ba + 16 + 32 * l)), load32(bb + 16 + 32 * l), 1), flip);
        const __m256i dh = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ba))),
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(bb)), 1);
        const __m512 dw = _mm512_cvtph_ps(dh);
        for (int n = 0; n < NC; ++n) {
            const uint8_t* aq = acts[n] + o.quants;
            __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], avx512::bcast_dword(aq));
            __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[1], avx512::bcast_dword(aq + 4));
            for (int l = 2; l < 8; l += 2) {
                s0 = _mm512_dpbusd_epi32(s0, wv[l], avx512::bcast_dword(aq + 4 * l));
                s1 = _mm512_dpbusd_epi32(s1, wv[l + 1], avx512::bcast_dword(aq + 4 * l + 4));
            }
            const int32_t bsum = (int16_t)rd_u16(acts[n] + o.sum);
            const __m512i P = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(bsum * 128));
            const __m512 c = _mm512_mul_ps(dw, _mm512_set1_ps(bf16_to_fp32(rd_u16(acts[n] + o.scale))));
            acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(P), acc[n]);
        }
    }
    for (int n = 0; n < NC; ++n) _mm512_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
}

template <int NC>
void q8_0_r8_any(const GemmArgs& g, int64_t n0) {
    const int64_t ngroups = g.nrows / 8;
    int64_t grp = 0;
    // One column: single groups, one sequential weight stream (as q8_k_r8_any; Zen 4 N = 1,
    // 1 thread: cold x1.21-1.26, hot x1.25-1.49).
    if (NC > 1)
        for (; grp + 2 <= ngroups; grp += 2) q8_0_r8_pair<NC>(g, n0, grp);
    for (; grp < ngroups; ++grp) q8_0_r8_cols<NC>(g, n0, grp);
}

void gemm_q8_0_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, q8_0_r8_any<1>, q8_0_r8_any<2>, q8_0_r8_any<3>, q8_0_r8_any<4>, nullptr, nullptr, nullptr, q8_0_r8_any<8>};
    for_column_chunks(g, fns, 8);
}

}  // namespace

void register_avx512_q8_r8(KernelTables& t) {
    t.types[T_Q8_0_R8].gemm = gemm_q8_0_r8;
    t.types[T_Q8_K_R8].gemm = gemm_q8_k_r8;
}

}  // namespace iqkq
