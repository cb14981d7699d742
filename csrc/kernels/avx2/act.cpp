// AVX2 activation quantizers: q8_2_x4 (docs/formats.md §10.2) and q8_K / q8_K32 (§4.2). Bit-exact
// twins of formats/act.cpp.
#include "common.h"
#include "formats/act.h"
#include "kernels/avx2/simd.h"
#include "types.h"

namespace iqkq {
namespace {
using namespace avx2;

void act_q8_2_x4(const float* x, uint8_t* dst, int64_t K) {
    const int64_t nb = K / 32, nb4 = 4 * (nb / 4);
    for (int64_t i = 0; i < nb; ++i) {
        const float* xb = x + 32 * i;
        const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        const __m256 m8 = _mm256_max_ps(_mm256_max_ps(abs_ps(v0), abs_ps(v1)), _mm256_max_ps(abs_ps(v2), abs_ps(v3)));
        const float m = hmax8(m8);
        const uint16_t t = fp32_to_bf16(m / 127.0f);
        const float d = bf16_to_fp32(t);
        const float r = d > 0.0f ? 1.0f / d : 0.0f;
        const __m256 id = _mm256_set1_ps(r <= 3.40282347e38f ? r : 0.0f);  // overflow: zeros
        const __m256i q = pack_rne_i8(_mm256_mul_ps(v0, id), _mm256_mul_ps(v1, id), _mm256_mul_ps(v2, id),
                                      _mm256_mul_ps(v3, id));
        const int16_t s = (int16_t)hsum_i32(sum_i8_4(q));
        uint8_t* pd = dst + act::q82_d_offset(i, nb4);
        uint8_t* ps = dst + act::q82_s_offset(i, nb4);
        uint8_t* pq = dst + act::q82_qs_offset(i, nb4);
        wr_u16(pd, t);
        wr_u16(ps, (uint16_t)s);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(pq), q);
    }
}

template <bool kFloatSums>
void act_q8_K_impl(const float* x, uint8_t* dst, int64_t K) {
    for (int64_t i = 0; i < K / 256; ++i, x += 256, dst += act::kQ8KBytes) {
        __m256 m8 = _mm256_setzero_ps();
        for (int j = 0; j < 256; j += 8) m8 = _mm256_max_ps(abs_ps(_mm256_loadu_ps(x + j)), m8);
        const float m = hmax8(m8);
        const float d = m / 127.0f;
        const float r = m != 0.0f ? 127.0f / m : 0.0f;
        const __m256 id = _mm256_set1_ps(r <= 3.40282347e38f ? r : 0.0f);  // overflow: zeros
        int total = 0;
        float ftotal = 0.0f;
        for (int k = 0; k < 8; ++k) {
            const float* xb = x + 32 * k;
            const __m256i q = pack_rne_i8(_mm256_mul_ps(id, _mm256_loadu_ps(xb)), _mm256_mul_ps(id, _mm256_loadu_ps(xb + 8)),
                                          _mm256_mul_ps(id, _mm256_loadu_ps(xb + 16)),
                                          _mm256_mul_ps(id, _mm256_loadu_ps(xb + 24)));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + act::kQ8KQs + 32 * k), q);
            const __m256i s4 = sum_i8_4(q);  // lanes 0..3: elements 0..15, lanes 4..7: 16..31
            if (kFloatSums) {
                const float bs = d * (float)hsum_i32(s4);
                wr_f32(dst + act::kQ8KBsums + 4 * k, bs);
                ftotal = ftotal + bs;
            } else {
                const __m128i lo = _mm256_castsi256_si128(s4), hi = _mm256_extracti128_si256(s4, 1);
                __m128i a = _mm_add_epi32(lo, _mm_unpackhi_epi64(lo, lo));
                a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 1));
                __m128i b = _mm_add_epi32(hi, _mm_unpackhi_epi64(hi, hi));
                b = _mm_add_epi32(b, _mm_shuffle_epi32(b, 1));
                const int s0 = _mm_cvtsi128_si32(a), s1 = _mm_cvtsi128_si32(b);
                wr_u16(dst + act::kQ8KBsums + 4 * k, (uint16_t)(int16_t)s0);
                wr_u16(dst + act::kQ8KBsums + 2 + 4 * k, (uint16_t)(int16_t)s1);
                total += s0 + s1;
            }
        }
        wr_f32(dst + act::kQ8KD, d);
        wr_f32(dst + act::kQ8KSum, kFloatSums ? ftotal : d * (float)total);
    }
}

void act_q8_K(const float* x, uint8_t* dst, int64_t K) { act_q8_K_impl<false>(x, dst, K); }
void act_q8_K32(const float* x, uint8_t* dst, int64_t K) { act_q8_K_impl<true>(x, dst, K); }

}  // namespace

void register_avx2_act(KernelTables& t) {
    t.act_quant[A_Q8_2_X4] = act_q8_2_x4;
    t.act_quant[A_Q8_K] = act_q8_K;
    t.act_quant[A_Q8_K32] = act_q8_K32;
}

}  // namespace iqkq
