// AVX2 kernels for q8_0 and q8_0_r8: reference quantization, dequantization, repacking and
// the matmul kernels (A) q8_0 x q8_2_x4 and (B) q8_0_r8 x q8_2_x4 of docs/formats.md §11.3.
// Bit-exact twins of formats/q8_0.cpp (the integer sums are exact; the float operations
// are the same operations in the same order).
#include "common.h"
#include "formats/act.h"
#include "formats/q8_0.h"
#include "kernels/avx2/simd.h"
#include "types.h"

namespace iqkq {
namespace {
using namespace avx2;
using q8_0::kBlock;
using q8_0::kBytes;
using q8_0::kR8Bytes;

// roundf (halves away from zero) of 8 floats, converted like a C cast to int32 and
// truncated to the low byte (see q8_0::quant_roundf).
inline __m256i roundf_i32(__m256 p) {
    const __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 diff = _mm256_sub_ps(p, t);
    const __m256 half = _mm256_cmp_ps(abs_ps(diff), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(p, _mm256_set1_ps(-0.0f)));
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(half, one)));
}

inline __m256i low_bytes(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    const __m256i m = _mm256_set1_epi32(0xff);
    const __m256i p01 = _mm256_packus_epi32(_mm256_and_si256(i0, m), _mm256_and_si256(i1, m));
    const __m256i p23 = _mm256_packus_epi32(_mm256_and_si256(i2, m), _mm256_and_si256(i3, m));
    const __m256i p = _mm256_packus_epi16(p01, p23);
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

inline void quantize_block(const float* x, uint8_t* out) {
    const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    const float amax = hmax8(_mm256_max_ps(_mm256_max_ps(abs_ps(v0), abs_ps(v1)), _mm256_max_ps(abs_ps(v2), abs_ps(v3))));
    const float d = amax / 127.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    wr_u16(out, (uint16_t)_cvtss_sh(d, 0));
    const __m256i q = low_bytes(roundf_i32(_mm256_mul_ps(v0, id)), roundf_i32(_mm256_mul_ps(v1, id)),
                                roundf_i32(_mm256_mul_ps(v2, id)), roundf_i32(_mm256_mul_ps(v3, id)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2), q);
}

void quantize_q8_0(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float*) {
    const int64_t nb = nrows * (K / kBlock);
    for (int64_t b = 0; b < nb; ++b) quantize_block(src + b * kBlock, dst + b * kBytes);
}

inline void dequant_block(const uint8_t* blk, float* y) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(rd_u16(blk)));
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
}

void dequantize_q8_0(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = nrows * (K / kBlock);
    for (int64_t b = 0; b < nb; ++b) dequant_block(src + b * kBytes, dst + b * kBlock);
}

void repack_to_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kBlock;
    const size_t row = (size_t)nb * kBytes;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        const uint8_t* s = src + (size_t)g * 8 * row;
        uint8_t* o = dst + (size_t)g * 8 * row;
        for (int64_t b = 0; b < nb; ++b, o += kR8Bytes) {
            __m256i v[8];
            for (int r = 0; r < 8; ++r) {
                const uint8_t* blk = s + r * row + b * kBytes;
                std::memcpy(o + 2 * r, blk, 2);
                v[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
            }
            transpose8x8_epi32(v);
            for (int l = 0; l < 8; ++l) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 + 32 * l), v[l]);
        }
    }
}

void repack_from_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kBlock;
    const size_t row = (size_t)nb * kBytes;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        const uint8_t* s = src + (size_t)g * 8 * row;
        uint8_t* o = dst + (size_t)g * 8 * row;
        for (int64_t b = 0; b < nb; ++b, s += kR8Bytes) {
            __m256i v[8];
            for (int l = 0; l < 8; ++l) v[l] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 16 + 32 * l));
            transpose8x8_epi32(v);
            for (int r = 0; r < 8; ++r) {
                uint8_t* blk = o + r * row + b * kBytes;
                std::memcpy(blk, s + 2 * r, 2);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk + 2), v[r]);
            }
        }
    }
}

void quantize_q8_0_r8(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float*) {
    // Quantize each 32-column slab of 8 rows straight into its interleaved block.
    const int64_t nb = K / kBlock;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t* o = dst + (g * nb + b) * kR8Bytes;
            alignas(32) uint8_t tmp[8][kBytes + 2];
            __m256i v[8];
            for (int r = 0; r < 8; ++r) {
                quantize_block(src + (g * 8 + r) * K + b * kBlock, tmp[r]);
                std::memcpy(o + 2 * r, tmp[r], 2);
                v[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tmp[r] + 2));
            }
            transpose8x8_epi32(v);
            for (int l = 0; l < 8; ++l) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 + 32 * l), v[l]);
        }
    }
}

void dequantize_q8_0_r8(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kBlock;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t b = 0; b < nb; ++b, src += kR8Bytes) {
            __m256i v[8];
            for (int l = 0; l < 8; ++l) v[l] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16 + 32 * l));
            transpose8x8_epi32(v);
            for (int r = 0; r < 8; ++r) {
                alignas(32) uint8_t blk[kBytes + 2];
                std::memcpy(blk, src + 2 * r, 2);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk + 2), v[r]);
                dequant_block(blk, dst + (g * 8 + r) * K + b * kBlock);
            }
        }
    }
}

// bf16 scales of the 4 blocks of a q8_2_x4 group -> 4 floats.
inline __m128 act_scales4(const uint8_t* group) {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(group));
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
}

// fp16 scales of 4 q8_0 blocks spaced kBytes apart -> 4 floats.
inline __m128 weight_scales4(const uint8_t* blk) {
    const __m128i h = _mm_setr_epi16((short)rd_u16(blk), (short)rd_u16(blk + kBytes), (short)rd_u16(blk + 2 * kBytes),
                                     (short)rd_u16(blk + 3 * kBytes), 0, 0, 0, 0);
    return _mm_cvtph_ps(h);
}

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Kernel (A) for NC activation columns at once: the weight row is loaded once per block and
// reused for all columns.
template <int NC>
void gemm_q8_0_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb4; b += 4) {
            const uint8_t* blk = w + b * kBytes;
            IQKQ_PREFETCH((const char*)(blk + 512), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + 580), _MM_HINT_T0);
            const __m128 dw = weight_scales4(blk);
            __m256i wq[4], wa[4];
            for (int t = 0; t < 4; ++t) {
                wq[t] = load32(blk + t * kBytes + 2);
                wa[t] = _mm256_sign_epi8(wq[t], wq[t]);
            }
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ag = acts[n] + act::kQ82GroupBytes * (b / 4);
                __m256i p[4];
                for (int t = 0; t < 4; ++t)
                    p[t] = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[t], _mm256_sign_epi8(load32(ag + act::kQ82GroupQs + 32 * t), wq[t])),
                                             _mm256_set1_epi16(1));
                const __m256i P = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
                const __m128 c4 = _mm_mul_ps(dw, act_scales4(ag));
                const __m256 c = _mm256_set_m128(c4, c4);
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(P), acc[n]);
            }
        }
        for (int64_t b = nb4; b < nb; ++b) {
            const uint8_t* blk = w + b * kBytes;
            const float dw = _cvtsh_ss(rd_u16(blk));
            const __m256i wq = load32(blk + 2);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + act::kQ82Bytes * b;
                const __m256 c = _mm256_set1_ps(dw * bf16_to_fp32(rd_u16(ab)));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(dot4_i8(wq, load32(ab + act::kQ82Qs))), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) g.C[(n0 + n) * g.ldc + r] = hsum8(acc[n]);
    }
}

void gemm_q8_0(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_q8_0_cols<1>, gemm_q8_0_cols<2>, gemm_q8_0_cols<3>, gemm_q8_0_cols<4>,
                                 gemm_q8_0_cols<5>, gemm_q8_0_cols<6>, gemm_q8_0_cols<7>, gemm_q8_0_cols<8>};
    for_column_chunks(g, fns, 8);
}

// Kernel (B) for NC columns: per 8-row group and block, P (8 lanes = 8 rows) is the exact
// 32-element dot product; acc_r = fma(d_r * dA, P_r, acc_r). The blocks are walked in the
// activations' groups of 4 (scales of a group converted once), the 1-3 after the last group
// one by one.
template <int NC>
inline void r8_block(const uint8_t* blk, const uint8_t* const* aq, const float* da, __m256* acc) {
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
    __m256i sum[NC];
    for (int n = 0; n < NC; ++n) sum[n] = _mm256_setzero_si256();
    for (int half = 0; half < 2; ++half) {
        __m256i wq[4], wa[4];
        for (int l = 0; l < 4; ++l) {
            wq[l] = load32(blk + 16 + 32 * (4 * half + l));
            wa[l] = _mm256_sign_epi8(wq[l], wq[l]);
        }
        for (int n = 0; n < NC; ++n)
            for (int l = 0; l < 4; ++l) {
                int32_t a4;
                std::memcpy(&a4, aq[n] + 16 * half + 4 * l, 4);
                const __m256i av = _mm256_set1_epi32(a4);
                sum[n] = _mm256_add_epi32(
                    sum[n], _mm256_madd_epi16(_mm256_maddubs_epi16(wa[l], _mm256_sign_epi8(av, wq[l])), _mm256_set1_epi16(1)));
            }
    }
    for (int n = 0; n < NC; ++n)
        acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(da[4 * n])), _mm256_cvtepi32_ps(sum[n]), acc[n]);
}

template <int NC>
void gemm_q8_0_r8_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t b4 = 0; b4 < nb4; b4 += 4) {
            alignas(16) float da[4 * NC];
            const uint8_t* ag[NC];
            for (int n = 0; n < NC; ++n) {
                ag[n] = acts[n] + act::kQ82GroupBytes * (b4 / 4);
                _mm_store_ps(da + 4 * n, act_scales4(ag[n]));
            }
            for (int k = 0; k < 4; ++k) {
                const uint8_t* blk = w + (b4 + k) * kR8Bytes;
                if (NC > 1)  // measured: a gain from N = 2 on, a loss for one column
                    for (int l = 0; l < kR8Bytes; l += 64) IQKQ_PREFETCH((const char*)(blk + 2048 + l), _MM_HINT_T0);
                const uint8_t* aq[NC];
                for (int n = 0; n < NC; ++n) aq[n] = ag[n] + act::kQ82GroupQs + 32 * k;
                r8_block<NC>(blk, aq, da + k, acc);
            }
        }
        for (int64_t b = nb4; b < nb; ++b) {
            alignas(16) float da[4 * NC];
            const uint8_t* aq[NC];
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + act::kQ82Bytes * b;
                da[4 * n] = bf16_to_fp32(rd_u16(ab));
                aq[n] = ab + act::kQ82Qs;
            }
            r8_block<NC>(w + b * kR8Bytes, aq, da, acc);
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
    }
}

void gemm_q8_0_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_q8_0_r8_cols<1>, gemm_q8_0_r8_cols<2>, gemm_q8_0_r8_cols<3>, gemm_q8_0_r8_cols<4>,
                                 gemm_q8_0_r8_cols<5>, gemm_q8_0_r8_cols<6>, gemm_q8_0_r8_cols<7>, gemm_q8_0_r8_cols<8>};
    for_column_chunks(g, fns, 8);
}

}  // namespace

void register_avx2_q8_0(KernelTables& t) {
    TypeKernels& a = t.types[T_Q8_0];
    a.quantize = quantize_q8_0;
    a.dequantize = dequantize_q8_0;
    a.gemm = gemm_q8_0;
    a.to_large_batch = repack_to_r8;
    TypeKernels& b = t.types[T_Q8_0_R8];
    b.quantize = quantize_q8_0_r8;
    b.dequantize = dequantize_q8_0_r8;
    b.gemm = gemm_q8_0_r8;
    b.to_interleaved = repack_to_r8;
    b.from_interleaved = repack_from_r8;
}

}  // namespace iqkq
