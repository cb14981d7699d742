// AVX2 twin of unary.cpp: the 8-lane v_expf of docs/formats.md §12.3 and the SILU / GELU / RELU
// formulas on 8 outputs at a time, scalar libm formulas for the tail.
#include "kernels/avx2/simd.h"
#include "types.h"
#include "unary.h"

namespace iqkq {
namespace {
using namespace unary;
using avx2::abs_ps;

inline __m256 cst(uint32_t bits) { return _mm256_castsi256_ps(_mm256_set1_epi32((int)bits)); }

inline __m256 v_expf(__m256 x) {
    const __m256 R = cst(kR);
    const __m256 z = _mm256_fmadd_ps(x, cst(kL2E), R);
    const __m256 n = _mm256_sub_ps(z, R);
    const __m256 b = _mm256_fnmadd_ps(n, cst(kC2), _mm256_fnmadd_ps(n, cst(kC1), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_set1_epi32(0x3F800000)));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(cst(kP5), b, cst(kP4)), u, _mm256_fmadd_ps(cst(kP3), b, cst(kP2))),
                                     u, _mm256_mul_ps(cst(kP1), b));
    const __m256 an = abs_ps(n);
    const __m256 big = _mm256_cmp_ps(an, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    if (!_mm256_movemask_ps(big)) return _mm256_fmadd_ps(j, k, k);
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7F000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 huge = _mm256_cmp_ps(an, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256 r_big = _mm256_blendv_ps(_mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1), _mm256_mul_ps(s1, s1), huge);
    return _mm256_blendv_ps(_mm256_fmadd_ps(j, k, k), r_big, big);
}

inline __m256 act8(__m256 x, int op) {
    switch (op) {
        case OP_SILU:
            return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), v_expf(_mm256_sub_ps(_mm256_setzero_ps(), x))));
        case OP_GELU: {
            __m256 a = _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(0.044715f)));
            a = _mm256_mul_ps(a, _mm256_mul_ps(x, _mm256_set1_ps(gelu_c2())));
            const __m256 e = v_expf(a);
            const __m256 r = _mm256_mul_ps(x, _mm256_div_ps(e, _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
            return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, _mm256_set1_ps(10.0f), _CMP_GT_OQ));
        }
        default:
            return _mm256_and_ps(x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
    }
}

void fused_act(const float* g, const float* u, float* y, int64_t n, int64_t simd_count, int op, float limit) {
    const bool lim = limit > 1e-6f;
    const __m256 L = _mm256_set1_ps(limit), nL = _mm256_set1_ps(-limit);
    int64_t i = 0;
    const int64_t n8 = simd_count < n ? simd_count : n;
    for (; i + 8 <= n8; i += 8) {
        __m256 t = act8(_mm256_loadu_ps(g + i), op);
        __m256 uu = _mm256_loadu_ps(u + i);
        if (lim) {
            t = _mm256_blendv_ps(L, t, _mm256_cmp_ps(t, L, _CMP_LT_OQ));  // t < limit ? t : limit
            uu = _mm256_blendv_ps(uu, nL, _mm256_cmp_ps(uu, nL, _CMP_LT_OQ));
            uu = _mm256_blendv_ps(uu, L, _mm256_cmp_ps(uu, L, _CMP_GT_OQ));
        }
        _mm256_storeu_ps(y + i, _mm256_mul_ps(uu, t));
    }
    fused_act_range(g, u, y, i, n, simd_count, op, limit);
}

}  // namespace

void register_avx2_unary(KernelTables& t) { t.fused_act = fused_act; }

}  // namespace iqkq
