// AVX-512 kernel (A) for q8_0 x q8_2_x4 (docs/formats.md §11.3): the AVX2 kernel's arithmetic
// (kernels/avx2/q8_0.cpp, gemm_q8_0_cols) with its integer part done by VPDPBUSD.
//
// Float order kept from the AVX2 kernel, per weight row and activation column: for each group
// of 4 blocks, P = 8 int32 lanes (lanes 0-3 = the dot products of elements 0-15 of blocks
// 0-3, lanes 4-7 = those of elements 16-31), acc = fma([c, c], float(P), acc) with
// c = d_w[4] * d_x[4]; the 1-3 blocks after the last whole group add their 4-element partial
// sums lane by lane; the result is the 8-lane sum of acc in the AVX2 kernel's order.
//
// Integer part: the weights are made unsigned by flipping their sign bit (w + 128); VPDPBUSD
// then gives sum((w + 128) x) over groups of 4 bytes, the half-block sums follow by two
// VPERMT2D and two adds, and 128 * (sum of x over the half block) is subtracted. Those sums
// are computed once per activation row by the driver's prepare_act hook. The integers are
// exact, so P, and with it every output, is bit-identical to the AVX2 kernel's.
#include "common.h"
#include "formats/act.h"
#include "formats/q8_0.h"
#include "kernels/avx2/simd.h"
#include "types.h"

#include <immintrin.h>

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace iqkq {
namespace {
using q8_0::kBlock;
using q8_0::kBytes;

// Prepared activation row: per whole group of 4 blocks, 8 int32 = 128 * (sum of the quants
// of elements 0-15 of blocks 0..3, then of elements 16-31 of blocks 0..3), i.e. in P's lane
// order.
constexpr int kPrepGroup = 32;

void prepare_row(const uint8_t* act, uint8_t* out, int64_t K) {
    const int64_t ng = (K / kBlock) / 4;
    int32_t* c = reinterpret_cast<int32_t*>(out);
    for (int64_t g = 0; g < ng; ++g) {
        const int8_t* q = reinterpret_cast<const int8_t*>(act + g * act::kQ82GroupBytes + act::kQ82GroupQs);
        for (int t = 0; t < 4; ++t) {
            int32_t lo = 0, hi = 0;
            for (int j = 0; j < 16; ++j) lo += q[32 * t + j];
            for (int j = 16; j < 32; ++j) hi += q[32 * t + j];
            c[8 * g + t] = 128 * lo;
            c[8 * g + 4 + t] = 128 * hi;
        }
    }
}
size_t prepared_bytes(int64_t K) { return (size_t)((K / kBlock) / 4) * kPrepGroup; }

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// fp16 scales of 4 q8_0 blocks spaced kBytes apart -> 4 floats.
inline __m128 weight_scales4(const uint8_t* blk) {
    const __m128i h = _mm_setr_epi16((short)rd_u16(blk), (short)rd_u16(blk + kBytes), (short)rd_u16(blk + 2 * kBytes),
                                     (short)rd_u16(blk + 3 * kBytes), 0, 0, 0, 0);
    return _mm_cvtph_ps(h);
}
// bf16 scales of the 4 blocks of a q8_2_x4 group -> 4 floats.
inline __m128 act_scales4(const uint8_t* group) {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(group));
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
}

// Quants of two consecutive blocks, sign bit flipped (w + 128 as unsigned bytes).
inline __m512i weight_pair(const uint8_t* blk) {
    const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(load32(blk + 2)), load32(blk + kBytes + 2), 1);
    return _mm512_xor_si512(w, _mm512_set1_epi8((char)0x80));
}

// NR weight rows (1 or 2: the activations loaded once per pair) times NC columns.
template <int NR, int NC>
inline void rows_cols(const GemmArgs& g, int64_t r0, const uint8_t* const* acts, const int32_t* const* corr) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    // Lane j of the first reduction: quarter (8 elements, two dword lanes 2k, 2k + 1) k of
    // block X, for (X, k) = (j, 0), (j - 4, 2), (j - 8, 1), (j - 12, 3) in the four quarters
    // of the register, so that adding its two 256-bit halves gives P's lane order.
    alignas(64) static constexpr int32_t kIdx[16] = {0, 8, 16, 24, 4, 12, 20, 28, 2, 10, 18, 26, 6, 14, 22, 30};
    const __m512i ia = _mm512_load_si512(kIdx);
    const __m512i ib = _mm512_add_epi32(ia, _mm512_set1_epi32(1));
    const uint8_t* w[NR];
    for (int i = 0; i < NR; ++i) w[i] = g.W + (r0 + i) * g.w_group_bytes;
    __m256 acc[NR][NC];
    for (int i = 0; i < NR; ++i)
        for (int n = 0; n < NC; ++n) acc[i][n] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb4; b += 4) {
        __m128 dw[NR];
        __m512i w01[NR], w23[NR];
        for (int i = 0; i < NR; ++i) {
            const uint8_t* blk = w[i] + b * kBytes;
            IQKQ_PREFETCH((const char*)(blk + 512), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + 580), _MM_HINT_T0);
            dw[i] = weight_scales4(blk);
            w01[i] = weight_pair(blk);
            w23[i] = weight_pair(blk + 2 * kBytes);
        }
        for (int n = 0; n < NC; ++n) {
            const uint8_t* ag = acts[n] + act::kQ82GroupBytes * (b / 4);
            const __m512i x01 = _mm512_loadu_si512(ag + act::kQ82GroupQs);
            const __m512i x23 = _mm512_loadu_si512(ag + act::kQ82GroupQs + 64);
            const __m256i cr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr[n] + 2 * b));
            const __m128 da = act_scales4(ag);
            for (int i = 0; i < NR; ++i) {
                const __m512i r01 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w01[i], x01);
                const __m512i r23 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w23[i], x23);
                const __m512i s = _mm512_add_epi32(_mm512_permutex2var_epi32(r01, ia, r23),
                                                   _mm512_permutex2var_epi32(r01, ib, r23));
                const __m256i P =
                    _mm256_sub_epi32(_mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1)), cr);
                const __m128 c4 = _mm_mul_ps(dw[i], da);
                acc[i][n] = _mm256_fmadd_ps(_mm256_set_m128(c4, c4), _mm256_cvtepi32_ps(P), acc[i][n]);
            }
        }
    }
    for (int64_t b = nb4; b < nb; ++b) {
        for (int i = 0; i < NR; ++i) {
            const uint8_t* blk = w[i] + b * kBytes;
            const float dw = _cvtsh_ss(rd_u16(blk));
            const __m256i wq = load32(blk + 2);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + act::kQ82Bytes * b;
                const __m256 c = _mm256_set1_ps(dw * bf16_to_fp32(rd_u16(ab)));
                acc[i][n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(avx2::dot4_i8(wq, load32(ab + act::kQ82Qs))), acc[i][n]);
            }
        }
    }
    for (int i = 0; i < NR; ++i)
        for (int n = 0; n < NC; ++n) g.C[n * g.ldc + r0 + i] = avx2::hsum8(acc[i][n]);
}

template <int NC>
void gemm_cols(const GemmArgs& g, int64_t n0) {
    const uint8_t* acts[NC];
    const int32_t* corr[NC];
    for (int n = 0; n < NC; ++n) {
        acts[n] = g.A + (n0 + n) * g.a_row_bytes;
        corr[n] = reinterpret_cast<const int32_t*>(g.P + (n0 + n) * g.p_row_bytes);
    }
    GemmArgs h = g;
    h.C = g.C + n0 * g.ldc;
    int64_t r = 0;
    // One column: the weights stream once anyway, row pairs only add register pressure
    // (measured: N = 1 about 15 % slower with pairs).
    if (NC > 1)
        for (; r + 2 <= g.nrows; r += 2) rows_cols<2, NC>(h, r, acts, corr);
    for (; r < g.nrows; ++r) rows_cols<1, NC>(h, r, acts, corr);
}

void gemm_q8_0(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_cols<1>, gemm_cols<2>, gemm_cols<3>, gemm_cols<4>};
    for_column_chunks(g, fns, 4);
}

}  // namespace

void register_avx512_q8_0(KernelTables& t) {
    TypeKernels& a = t.types[T_Q8_0];
    a.gemm = gemm_q8_0;
    a.prepare_act = prepare_row;
    a.prepared_bytes = prepared_bytes;
}

}  // namespace iqkq
