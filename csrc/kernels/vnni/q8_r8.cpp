// VNNI kernels for the 8-row interleaved int8 types (q8_0_r8, q8_k_r8), the workhorses of
// the large-batch path. Compiled with -mavx512vnni -mavx512vl and used only on CPUs that
// have them (dispatch.cpp); they operate on 256-bit registers.
//
// VPDPBUSD multiplies unsigned by signed bytes and adds groups of four into int32 lanes
// without intermediate saturation. The weights are made unsigned by flipping their sign bit
// (w + 128), and the extra 128 * sum(a) per block is subtracted using the block sums the
// activation formats already carry (q8_2_x4: int16 per 32; q8_K: int16 per 16). The
// integer dot products are therefore exactly those of the AVX2 kernels, and the float
// operations are the same in the same order: results are bit-identical.
#include "common.h"
#include "formats/q8_0.h"
#include "formats/q8_k_r8.h"
#include "types.h"

#include <immintrin.h>

namespace iqkq {
namespace {

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i bcast32(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

// Kernel (C) q8_k_r8 x q8_K.
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
            __m256i sum[NC];
            for (int n = 0; n < NC; ++n) sum[n] = _mm256_setzero_si256();
            for (int m = 0; m < 64; m += 4) {
                const __m256i w0 = _mm256_xor_si256(load32(blk + 16 + 32 * m), flip);
                const __m256i w1 = _mm256_xor_si256(load32(blk + 48 + 32 * m), flip);
                const __m256i w2 = _mm256_xor_si256(load32(blk + 80 + 32 * m), flip);
                const __m256i w3 = _mm256_xor_si256(load32(blk + 112 + 32 * m), flip);
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* aq = acts[n] + i * 296 + 8 + 4 * m;
                    sum[n] = _mm256_dpbusd_epi32(sum[n], w0, bcast32(aq));
                    sum[n] = _mm256_dpbusd_epi32(sum[n], w1, bcast32(aq + 4));
                    sum[n] = _mm256_dpbusd_epi32(sum[n], w2, bcast32(aq + 8));
                    sum[n] = _mm256_dpbusd_epi32(sum[n], w3, bcast32(aq + 12));
                }
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + i * 296;
                // sum of the 256 activation quants from the 16 int16 block sums
                const __m256i bs = _mm256_madd_epi16(load32(ab + 264), _mm256_set1_epi16(1));
                __m128i s = _mm_add_epi32(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
                s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
                const __m256i corr = _mm256_slli_epi32(_mm256_broadcastd_epi32(s), 7);
                const __m256i P = _mm256_sub_epi32(sum[n], corr);
                const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(rd_f32(ab)));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(P), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
    }
}

void gemm_q8_k_r8(const GemmArgs& g) {
    int64_t n = 0;
    for (; n + 4 <= g.ncols; n += 4) q8_k_r8_cols<4>(g, n);
    switch (g.ncols - n) {
        case 3: q8_k_r8_cols<3>(g, n); break;
        case 2: q8_k_r8_cols<2>(g, n); break;
        case 1: q8_k_r8_cols<1>(g, n); break;
        default: break;
    }
}

// Kernel (B) q8_0_r8 x q8_2_x4.
template <int NC>
void q8_0_r8_cols(const GemmArgs& g, int64_t n0) {
    using namespace q8_0;
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = w + b * kR8Bytes;
            const int64_t so = b < nb4 ? 144 * (b / 4) + 2 * (b % 4) : 36 * b;       // bf16 scale
            const int64_t sumo = b < nb4 ? 144 * (b / 4) + 8 + 2 * (b % 4) : 36 * b + 2;  // int16 block sum
            const int64_t qo = b < nb4 ? 144 * (b / 4) + 16 + 32 * (b % 4) : 36 * b + 4;
            __m256i wv[8];
            for (int l = 0; l < 8; ++l) wv[l] = _mm256_xor_si256(load32(blk + 16 + 32 * l), flip);
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
            for (int n = 0; n < NC; ++n) {
                const uint8_t* aq = acts[n] + qo;
                __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv[0], bcast32(aq));
                for (int l = 1; l < 8; ++l) s = _mm256_dpbusd_epi32(s, wv[l], bcast32(aq + 4 * l));
                const int32_t bsum = (int16_t)rd_u16(acts[n] + sumo);
                const __m256i P = _mm256_sub_epi32(s, _mm256_set1_epi32(bsum * 128));
                const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(bf16_to_fp32(rd_u16(acts[n] + so))));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(P), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
    }
}

void gemm_q8_0_r8(const GemmArgs& g) {
    int64_t n = 0;
    for (; n + 4 <= g.ncols; n += 4) q8_0_r8_cols<4>(g, n);
    switch (g.ncols - n) {
        case 3: q8_0_r8_cols<3>(g, n); break;
        case 2: q8_0_r8_cols<2>(g, n); break;
        case 1: q8_0_r8_cols<1>(g, n); break;
        default: break;
    }
}

}  // namespace

void register_vnni_q8_r8(KernelTables& t) {
    t.types[T_Q8_0_R8].gemm = gemm_q8_0_r8;
    t.types[T_Q8_K_R8].gemm = gemm_q8_k_r8;
}

}  // namespace iqkq
