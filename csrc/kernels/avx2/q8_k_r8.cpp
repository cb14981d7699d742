// AVX2 kernels for q8_k_r8: quantization (q8_K32 routine + fp16 scale), dequantization and
// the matmul kernel (C) q8_k_r8 x q8_K of docs/formats.md §11.3. Bit-exact twins of
// formats/q8_k_r8.cpp.
#include "common.h"
#include "formats/act.h"
#include "formats/q8_k_r8.h"
#include "kernels/avx2/simd.h"
#include "types.h"

namespace iqkq {
namespace {
using namespace avx2;
using q8_k_r8::kBlock;
using q8_k_r8::kGroupBlock;

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

void quantize_q8_k_r8(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float*) {
    const int64_t nb = K / kBlock;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t i = 0; i < nb; ++i) {
            uint8_t* o = dst + (g * nb + i) * kGroupBlock;
            __m256 id[8];
            for (int r = 0; r < 8; ++r) {
                const float* x = src + (g * 8 + r) * K + i * kBlock;
                __m256 m8 = _mm256_setzero_ps();
                for (int j = 0; j < kBlock; j += 8) m8 = _mm256_max_ps(abs_ps(_mm256_loadu_ps(x + j)), m8);
                const float m = hmax8(m8);
                wr_u16(o + 2 * r, (uint16_t)_cvtss_sh(m / 127.0f, 0));
                id[r] = _mm256_set1_ps(m != 0.0f ? 127.0f / m : 0.0f);
            }
            // 32 elements (8 dword columns) of all 8 rows at a time, transposed into place.
            for (int c = 0; c < kBlock; c += 32) {
                __m256i v[8];
                for (int r = 0; r < 8; ++r) {
                    const float* x = src + (g * 8 + r) * K + i * kBlock + c;
                    v[r] = pack_rne_i8(_mm256_mul_ps(id[r], _mm256_loadu_ps(x)), _mm256_mul_ps(id[r], _mm256_loadu_ps(x + 8)),
                                       _mm256_mul_ps(id[r], _mm256_loadu_ps(x + 16)),
                                       _mm256_mul_ps(id[r], _mm256_loadu_ps(x + 24)));
                }
                transpose8x8_epi32(v);
                for (int l = 0; l < 8; ++l)
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 + 32 * (c / 4 + l)), v[l]);
            }
        }
    }
}

void dequantize_q8_k_r8(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kBlock;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t i = 0; i < nb; ++i, src += kGroupBlock) {
            const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
            alignas(32) float d[8];
            _mm256_store_ps(d, d8);
            for (int c = 0; c < kBlock; c += 32) {
                __m256i v[8];
                for (int l = 0; l < 8; ++l) v[l] = load32(src + 16 + 32 * (c / 4 + l));
                transpose8x8_epi32(v);  // v[r] = 32 quants of row r
                for (int r = 0; r < 8; ++r) {
                    float* y = dst + (g * 8 + r) * K + i * kBlock + c;
                    const __m256 dr = _mm256_set1_ps(d[r]);
                    const __m128i lo = _mm256_castsi256_si128(v[r]), hi = _mm256_extracti128_si256(v[r], 1);
                    _mm256_storeu_ps(y + 0, _mm256_mul_ps(dr, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
                    _mm256_storeu_ps(y + 8, _mm256_mul_ps(dr, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
                    _mm256_storeu_ps(y + 16, _mm256_mul_ps(dr, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
                    _mm256_storeu_ps(y + 24, _mm256_mul_ps(dr, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
                }
            }
        }
    }
}

// Kernel (C) for NC columns: integer sums over a whole super-block, then one fma per row.
template <int NC>
void gemm_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kBlock;
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* blk = w + i * kGroupBlock;
            __m256i sum[NC];
            for (int n = 0; n < NC; ++n) sum[n] = _mm256_setzero_si256();
            for (int m = 0; m < 64; m += 4) {
                __m256i wq[4], wa[4];
                for (int l = 0; l < 4; ++l) {
                    wq[l] = load32(blk + 16 + 32 * (m + l));
                    wa[l] = _mm256_sign_epi8(wq[l], wq[l]);
                }
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* aq = acts[n] + i * act::kQ8KBytes + act::kQ8KQs + 4 * m;
                    __m256i s01, s23;
                    {
                        int32_t a0, a1, a2, a3;
                        std::memcpy(&a0, aq, 4);
                        std::memcpy(&a1, aq + 4, 4);
                        std::memcpy(&a2, aq + 8, 4);
                        std::memcpy(&a3, aq + 12, 4);
                        const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[0], _mm256_sign_epi8(_mm256_set1_epi32(a0), wq[0])), ones);
                        const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[1], _mm256_sign_epi8(_mm256_set1_epi32(a1), wq[1])), ones);
                        const __m256i p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[2], _mm256_sign_epi8(_mm256_set1_epi32(a2), wq[2])), ones);
                        const __m256i p3 = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[3], _mm256_sign_epi8(_mm256_set1_epi32(a3), wq[3])), ones);
                        s01 = _mm256_add_epi32(p0, p1);
                        s23 = _mm256_add_epi32(p2, p3);
                    }
                    sum[n] = _mm256_add_epi32(sum[n], _mm256_add_epi32(s01, s23));
                }
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
            for (int n = 0; n < NC; ++n) {
                const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(rd_f32(acts[n] + i * act::kQ8KBytes)));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(sum[n]), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
    }
}

void gemm_q8_k_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_cols<1>, gemm_cols<2>, gemm_cols<3>, gemm_cols<4>};
    for_column_chunks(g, fns, 4);
}

}  // namespace

void register_avx2_q8_k_r8(KernelTables& t) {
    TypeKernels& k = t.types[T_Q8_K_R8];
    k.quantize = quantize_q8_k_r8;
    k.dequantize = dequantize_q8_k_r8;
    k.gemm = gemm_q8_k_r8;
}

}  // namespace iqkq
