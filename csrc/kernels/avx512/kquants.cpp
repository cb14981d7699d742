// AVX-512 set for q4_K, q5_K, q6_K: the direct kernels of kernels/avx2/kquants_direct.h with
// VPDPBUSD (AVX512-VNNI on 256-bit registers) for the byte dot products and up to 8 columns
// per pass (32 vector registers). Same int32 sums and float operations as the AVX2 set and
// the scalar reference, so bit-identical to them.
#include "kernels/avx2/kquants_direct.h"

// GCC 12's AVX-512 headers build results on _mm512_undefined_*() and then warn that those
// may be used uninitialised; the warnings are about the headers, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace iqkq {
namespace {
using kq_direct::gemm_q6_K_cols;
using kq_direct::gemm_qK_cols;

void gemm_q4_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr,
                                 gemm_qK_cols<true, false, 1>,
                                 gemm_qK_cols<true, false, 2>,
                                 gemm_qK_cols<true, false, 3>,
                                 gemm_qK_cols<true, false, 4>,
                                 gemm_qK_cols<true, false, 5>,
                                 gemm_qK_cols<true, false, 6>,
                                 gemm_qK_cols<true, false, 7>,
                                 gemm_qK_cols<true, false, 8>};
    for_column_chunks(g, fns, 8);
}
void gemm_q5_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr,
                                 gemm_qK_cols<true, true, 1>,
                                 gemm_qK_cols<true, true, 2>,
                                 gemm_qK_cols<true, true, 3>,
                                 gemm_qK_cols<true, true, 4>,
                                 gemm_qK_cols<true, true, 5>,
                                 gemm_qK_cols<true, true, 6>,
                                 gemm_qK_cols<true, true, 7>,
                                 gemm_qK_cols<true, true, 8>};
    for_column_chunks(g, fns, 8);
}
void gemm_q6_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr,
                                 gemm_q6_K_cols<true, 1>,
                                 gemm_q6_K_cols<true, 2>,
                                 gemm_q6_K_cols<true, 3>,
                                 gemm_q6_K_cols<true, 4>,
                                 gemm_q6_K_cols<true, 5>,
                                 gemm_q6_K_cols<true, 6>,
                                 gemm_q6_K_cols<true, 7>,
                                 gemm_q6_K_cols<true, 8>};
    for_column_chunks(g, fns, 8);
}

// q8_1_r8 x q8_2_x4 with VPDPBUSD. The AVX2 kernel's maddubs / int16 chain is exact for quants
// below 64 (all that the q4_K / q5_K conversions produce); a block holding a larger byte (raw
// data only) takes the AVX2 chain, so the results are those of the AVX2 set for any bytes.
inline __m256i ld32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

inline __m256i dot16_vnni(const __m256i* qx, const int8_t* y16) {
    __m256i s = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
        int32_t v;
        std::memcpy(&v, y16 + 4 * j, 4);
        s = _mm256_dpbusd_epi32(s, qx[j], _mm256_set1_epi32(v));
    }
    return s;
}
inline __m256i dot16_exact(const __m256i* qx, const int8_t* y16) {
    const __m256i y = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y16)));
    const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(qx[0], _mm256_shuffle_epi32(y, 0x00)),
                                        _mm256_maddubs_epi16(qx[1], _mm256_shuffle_epi32(y, 0x55)));
    const __m256i s2 = _mm256_add_epi16(_mm256_maddubs_epi16(qx[2], _mm256_shuffle_epi32(y, 0xaa)),
                                        _mm256_maddubs_epi16(qx[3], _mm256_shuffle_epi32(y, 0xff)));
    const __m256i one = _mm256_set1_epi16(1);
    return _mm256_add_epi32(_mm256_madd_epi16(one, s1), _mm256_madd_epi16(one, s2));
}

template <int NC>
void q8_1_r8_cols(const GemmArgs& g, int64_t n0, int64_t grp) {
    using namespace kq;
    const int64_t nb = g.K / kQ81Block;
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m256i hi2 = _mm256_set1_epi8((char)0xC0);
    {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i4 = 0; i4 < nb / 4; ++i4) {
            const uint8_t* blk = w + 4 * i4 * kQ81Bytes;
            _mm_prefetch((const char*)(blk + 4 * kQ81Bytes), _MM_HINT_T0);
            _mm_prefetch((const char*)(blk + 4 * kQ81Bytes + 64), _MM_HINT_T0);
            __m256 mx[4];
            for (int ib = 0; ib < 4; ++ib)
                mx[ib] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + ib * kQ81Bytes + 16)));
            float d8[NC][4];
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ag = acts[n] + act::kQ82GroupBytes * i4;
                const __m128 sc = _mm_castsi128_ps(
                    _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ag + act::kQ82GroupD))), 16));
                _mm_storeu_ps(d8[n], sc);
                __m128 bs4 = _mm_cvtepi32_ps(_mm_cvtepi16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ag + act::kQ82GroupS))));
                bs4 = _mm_mul_ps(bs4, sc);
                const __m256 bs = _mm256_set_m128(bs4, bs4);
                acc[n] = _mm256_fmadd_ps(mx[0], _mm256_shuffle_ps(bs, bs, 0x00), acc[n]);
                acc[n] = _mm256_fmadd_ps(mx[1], _mm256_shuffle_ps(bs, bs, 0x55), acc[n]);
                acc[n] = _mm256_fmadd_ps(mx[2], _mm256_shuffle_ps(bs, bs, 0xaa), acc[n]);
                acc[n] = _mm256_fmadd_ps(mx[3], _mm256_shuffle_ps(bs, bs, 0xff), acc[n]);
            }
            for (int ib = 0; ib < 4; ++ib) {
                const uint8_t* b = blk + ib * kQ81Bytes;
                const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
                __m256i qa[4], qb[4];
                for (int j = 0; j < 4; ++j) {
                    qa[j] = ld32(b + kQ81Qs + 32 * j);
                    qb[j] = ld32(b + kQ81Qs + 128 + 32 * j);
                }
                const __m256i any = _mm256_or_si256(_mm256_or_si256(_mm256_or_si256(qa[0], qa[1]), _mm256_or_si256(qa[2], qa[3])),
                                                    _mm256_or_si256(_mm256_or_si256(qb[0], qb[1]), _mm256_or_si256(qb[2], qb[3])));
                const bool small = _mm256_testz_si256(any, hi2);
                for (int n = 0; n < NC; ++n) {
                    const int8_t* y = reinterpret_cast<const int8_t*>(acts[n] + act::kQ82GroupBytes * i4 + act::kQ82GroupQs + 32 * ib);
                    const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(d8[n][ib]));
                    const __m256i lo = small ? dot16_vnni(qa, y) : dot16_exact(qa, y);
                    const __m256i hi = small ? dot16_vnni(qb, y + 16) : dot16_exact(qb, y + 16);
                    acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(lo), acc[n]);
                    acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(hi), acc[n]);
                }
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
    }
}


// Two 8-row groups per 512-bit register (rows 0-7 of group grp in the low half, of grp + 1 in
// the high half); per lane the same operations as the 256-bit version.
template <int NC>
void q8_1_r8_pair(const GemmArgs& g, int64_t n0, int64_t grp) {
    using namespace kq;
    const int64_t nb = g.K / kQ81Block;
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m512i hi2 = _mm512_set1_epi8((char)0xC0);
    const uint8_t* wa = g.W + grp * g.w_group_bytes;
    const uint8_t* wb = wa + g.w_group_bytes;
    auto ld64 = [](const uint8_t* a, const uint8_t* b) {
        return _mm512_inserti64x4(_mm512_castsi256_si512(ld32(a)), ld32(b), 1);
    };
    auto ph16 = [](const uint8_t* a, const uint8_t* b) {
        return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))),
                                                      _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), 1));
    };
    __m512 acc[NC];
    for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
    for (int64_t i4 = 0; i4 < nb / 4; ++i4) {
        const uint8_t* ba = wa + 4 * i4 * kQ81Bytes;
        const uint8_t* bb = wb + 4 * i4 * kQ81Bytes;
        _mm_prefetch((const char*)(ba + 4 * kQ81Bytes), _MM_HINT_T0);
        _mm_prefetch((const char*)(bb + 4 * kQ81Bytes), _MM_HINT_T0);
        __m512 mx[4];
        for (int ib = 0; ib < 4; ++ib) mx[ib] = ph16(ba + ib * kQ81Bytes + 16, bb + ib * kQ81Bytes + 16);
        float d8[NC][4];
        for (int n = 0; n < NC; ++n) {
            const uint8_t* ag = acts[n] + act::kQ82GroupBytes * i4;
            const __m128 sc = _mm_castsi128_ps(
                _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ag + act::kQ82GroupD))), 16));
            _mm_storeu_ps(d8[n], sc);
            alignas(16) float bs4[4];
            _mm_store_ps(bs4, _mm_mul_ps(_mm_cvtepi32_ps(_mm_cvtepi16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ag + act::kQ82GroupS)))), sc));
            for (int ib = 0; ib < 4; ++ib) acc[n] = _mm512_fmadd_ps(mx[ib], _mm512_set1_ps(bs4[ib]), acc[n]);
        }
        for (int ib = 0; ib < 4; ++ib) {
            const uint8_t* xa = ba + ib * kQ81Bytes;
            const uint8_t* xb = bb + ib * kQ81Bytes;
            const __m512 dw = ph16(xa, xb);
            __m512i q[8];
            for (int l = 0; l < 8; ++l) q[l] = ld64(xa + kQ81Qs + 32 * l, xb + kQ81Qs + 32 * l);
            __m512i any = q[0];
            for (int l = 1; l < 8; ++l) any = _mm512_or_si512(any, q[l]);
            const bool small = _mm512_test_epi8_mask(any, hi2) == 0;
            for (int n = 0; n < NC; ++n) {
                const int8_t* y = reinterpret_cast<const int8_t*>(acts[n] + act::kQ82GroupBytes * i4 + act::kQ82GroupQs + 32 * ib);
                const __m512 c = _mm512_mul_ps(dw, _mm512_set1_ps(d8[n][ib]));
                __m512i lo, hi;
                if (small) {
                    int32_t a[8];
                    std::memcpy(a, y, 32);
                    __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], _mm512_set1_epi32(a[0]));
                    __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[1], _mm512_set1_epi32(a[1]));
                    __m512i t0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[4], _mm512_set1_epi32(a[4]));
                    __m512i t1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[5], _mm512_set1_epi32(a[5]));
                    s0 = _mm512_dpbusd_epi32(s0, q[2], _mm512_set1_epi32(a[2]));
                    s1 = _mm512_dpbusd_epi32(s1, q[3], _mm512_set1_epi32(a[3]));
                    t0 = _mm512_dpbusd_epi32(t0, q[6], _mm512_set1_epi32(a[6]));
                    t1 = _mm512_dpbusd_epi32(t1, q[7], _mm512_set1_epi32(a[7]));
                    lo = _mm512_add_epi32(s0, s1);
                    hi = _mm512_add_epi32(t0, t1);
                } else {
                    __m256i qa[4], qb[4];
                    for (int j = 0; j < 4; ++j) {
                        qa[j] = _mm512_castsi512_si256(q[j]);
                        qb[j] = _mm512_extracti64x4_epi64(q[j], 1);
                    }
                    lo = _mm512_inserti64x4(_mm512_castsi256_si512(dot16_exact(qa, y)), dot16_exact(qb, y), 1);
                    for (int j = 0; j < 4; ++j) {
                        qa[j] = _mm512_castsi512_si256(q[4 + j]);
                        qb[j] = _mm512_extracti64x4_epi64(q[4 + j], 1);
                    }
                    hi = _mm512_inserti64x4(_mm512_castsi256_si512(dot16_exact(qa, y + 16)), dot16_exact(qb, y + 16), 1);
                }
                acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(lo), acc[n]);
                acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(hi), acc[n]);
            }
        }
    }
    for (int n = 0; n < NC; ++n) {
        float* out = g.C + (n0 + n) * g.ldc + grp * 8;
        _mm256_storeu_ps(out, _mm512_castps512_ps256(acc[n]));
        _mm256_storeu_ps(out + 8, _mm512_extractf32x8_ps(acc[n], 1));
    }
}

template <int NC>
void q8_1_r8_any(const GemmArgs& g, int64_t n0) {
    const int64_t ngroups = g.nrows / 8;
    int64_t grp = 0;
    for (; grp + 2 <= ngroups; grp += 2) q8_1_r8_pair<NC>(g, n0, grp);
    if (grp < ngroups) q8_1_r8_cols<NC>(g, n0, grp);
}

void gemm_q8_1_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, q8_1_r8_any<1>, q8_1_r8_any<2>, q8_1_r8_any<3>, q8_1_r8_any<4>,
                                 nullptr, nullptr, nullptr, q8_1_r8_any<8>};
    for_column_chunks(g, fns, 8);
}

}  // namespace

void register_avx512_kquants(KernelTables& t) {
    t.types[T_Q4_K].gemm = gemm_q4_K;
    t.types[T_Q5_K].gemm = gemm_q5_K;
    t.types[T_Q6_K].gemm = gemm_q6_K;
    t.types[T_Q8_1_R8].gemm = gemm_q8_1_r8;
}

}  // namespace iqkq
