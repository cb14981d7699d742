// AVX-512 set for q4_K, q5_K, q6_K: the direct kernels of kernels/avx2/kquants_direct.h with
// VPDPBUSD (AVX512-VNNI on 256-bit registers) for the byte dot products and up to 8 columns
// per pass (32 vector registers). Same int32 sums and float operations as the AVX2 set and
// the scalar reference, so bit-identical to them.
#include "kernels/avx2/kquants_direct.h"
#include "kernels/avx512/simd.h"

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
    for (int j = 0; j < 4; ++j) s = _mm256_dpbusd_epi32(s, qx[j], avx512::bcast_dword256(reinterpret_cast<const uint8_t*>(y16) + 4 * j));
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
            IQKQ_PREFETCH((const char*)(blk + 4 * kQ81Bytes), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + 4 * kQ81Bytes + 64), _MM_HINT_T0);
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


// The exact (maddubs / int16) chain for one 32-block of a row-group pair, all NC columns:
// the path of blocks holding a byte of 64 or more.
template <int NC>
__attribute__((noinline)) void q8_1_r8_pair_exact(const __m512i* q, __m512 dw, const uint8_t* const* acts, int64_t off,
                                                  const float (*d8)[4], int ib, __m512* acc) {
    for (int n = 0; n < NC; ++n) {
        const int8_t* y = reinterpret_cast<const int8_t*>(acts[n] + off);
        const __m512 c = _mm512_mul_ps(dw, _mm512_set1_ps(d8[n][ib]));
        __m256i qa[4], qb[4];
        for (int j = 0; j < 4; ++j) {
            qa[j] = _mm512_castsi512_si256(q[j]);
            qb[j] = _mm512_extracti64x4_epi64(q[j], 1);
        }
        const __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(dot16_exact(qa, y)), dot16_exact(qb, y), 1);
        for (int j = 0; j < 4; ++j) {
            qa[j] = _mm512_castsi512_si256(q[4 + j]);
            qb[j] = _mm512_extracti64x4_epi64(q[4 + j], 1);
        }
        const __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(dot16_exact(qa, y + 16)), dot16_exact(qb, y + 16), 1);
        acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(lo), acc[n]);
        acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(hi), acc[n]);
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
        IQKQ_PREFETCH((const char*)(ba + 4 * kQ81Bytes), _MM_HINT_T0);
        IQKQ_PREFETCH((const char*)(bb + 4 * kQ81Bytes), _MM_HINT_T0);
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
            if (__builtin_expect(_mm512_test_epi8_mask(any, hi2) != 0, 0)) {
                // Raw q8_1_r8 bytes of 64 or more: the exact chain, out of line so that the
                // accumulators of the common path stay in registers (a local copy keeps
                // their address from escaping).
                __m512 tmp[NC];
                for (int n = 0; n < NC; ++n) tmp[n] = acc[n];
                q8_1_r8_pair_exact<NC>(q, dw, acts, act::kQ82GroupBytes * i4 + act::kQ82GroupQs + 32 * ib, d8, ib, tmp);
                for (int n = 0; n < NC; ++n) acc[n] = tmp[n];
                continue;
            }
            // Every column in registers (fully unrolled); the activation dwords are broadcast
            // straight from memory; one chain per 16-element half (with 8 columns, 16
            // independent chains hide the VPDPBUSD latency).
#pragma GCC unroll 8
            for (int n = 0; n < NC; ++n) {
                const uint8_t* y = acts[n] + act::kQ82GroupBytes * i4 + act::kQ82GroupQs + 32 * ib;
                const __m512 c = _mm512_mul_ps(dw, _mm512_set1_ps(d8[n][ib]));
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], avx512::bcast_dword(y));
                __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[4], avx512::bcast_dword(y + 16));
                for (int l = 1; l < 4; ++l) {
                    s = _mm512_dpbusd_epi32(s, q[l], avx512::bcast_dword(y + 4 * l));
                    t = _mm512_dpbusd_epi32(t, q[4 + l], avx512::bcast_dword(y + 16 + 4 * l));
                }
                acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(s), acc[n]);
                acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(t), acc[n]);
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

// ------------------------------------------------------------------------ the _r4 twins
// Two 4-row groups per 512-bit register: lanes 0-7 are the AVX2 kernel's eight lanes of group
// grp, lanes 8-15 those of grp + 1. The byte dot products use VPDPBUSD (the scale multiplies
// the exact 16-column sum, as in ik's VNNI256 branch), the float operations per lane are the
// AVX2 ones: bit-identical. A lone last group runs the AVX2 kernel.
inline __m512i join(__m256i a, __m256i b) { return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1); }
// Software prefetch of both weight streams, whole super-blocks this far ahead, into L2 (T1):
// on Zen 4 (2 vCPUs, ab_builds --cold) T1 beat T0 by 1.4-1.7x at 1 thread for q4_k_r4 /
// q5_k_r4 / q6_k_r4 (T0 fills the L1 miss buffers with lines needed microseconds later), and
// 4 or 16 super-blocks ahead were no better than 8. Only q6_k_r4 keeps it now (see q45_r4_pair).
constexpr int kR4PrefetchAhead = 8;
inline __m512 joinf(__m256 a, __m256 b) { return _mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1); }

template <int kind, int NC, bool One = false>  // 0: q4_k_r4, 1: q5_k_r4; One: ik's one-column order
void q45_r4_pair(const GemmArgs& g, int64_t n0, int64_t grp, int64_t grp2) {
    using namespace kq;
    const int64_t nb = g.K / kSuper;
    const int bytes = kind == 0 ? kQ4R4Bytes : kQ5R4Bytes;
    const int qs_off = kind == 0 ? kQ4R4Qs : kQ5R4Qs;
    const __m256i mf = _mm256_set1_epi8(0xf), m3 = _mm256_set1_epi8(0x30);
    const __m512i mf5 = _mm512_set1_epi8(0xf), m10 = _mm512_set1_epi8(0x10);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const uint8_t* w[2] = {g.W + grp * g.w_group_bytes, g.W + grp2 * g.w_group_bytes};
    __m512 acc[NC];
    for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
    for (int64_t ibl = 0; ibl < nb; ++ibl) {
        const uint8_t* x[2] = {w[0] + ibl * bytes, w[1] + ibl * bytes};
        __m256 d4h[2], m4h[2], f[4][2];
        alignas(32) uint32_t hd[2][8];
        for (int p = 0; p < 2; ++p) {
            // No software prefetch: the hardware prefetcher alone streams both (Zen 4, 2 vCPUs,
            // ab_builds --cold, both orders: without the L2 prefetch 8 ahead, cold N=1 x1.09-1.19
            // at 1 thread and x1.09-1.12 at 2; q6_k_r4 below keeps it, it gains there).
            const __m256 dl = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[p])));
            d4h[p] = _mm256_permute2f128_ps(dl, dl, 0x00);
            m4h[p] = _mm256_mul_ps(_mm256_set1_ps(-1.0f), _mm256_permute2f128_ps(dl, dl, 0x11));
            const __m256i lbits = ld32(x[p] + kQ4R4ScL);
            const __m128i h128 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[p] + kQ4R4ScH));
            const __m256i hbits = _mm256_set_m128i(h128, _mm_slli_epi16(h128, 4));
            _mm256_store_si256(reinterpret_cast<__m256i*>(hd[p]), _mm256_or_si256(_mm256_and_si256(lbits, mf), _mm256_and_si256(hbits, m3)));
            const __m256i mins = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lbits, 4), mf),
                                                 _mm256_and_si256(_mm256_srli_epi16(hbits, 2), m3));
            const __m128i ml = _mm256_castsi256_si128(mins), mh = _mm256_extracti128_si256(mins, 1);
            const __m128i aux1 = _mm_unpacklo_epi32(ml, mh), aux2 = _mm_unpackhi_epi32(ml, mh);
            f[0][p] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(aux1));
            f[1][p] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_shuffle_epi32(aux1, 0xee)));
            f[2][p] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(aux2));
            f[3][p] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_shuffle_epi32(aux2, 0xee)));
        }
        const __m512 d4 = joinf(d4h[0], d4h[1]);
        const __m512 m4 = joinf(m4h[0], m4h[1]);
        __m512 ff[4];
        for (int j = 0; j < 4; ++j) ff[j] = joinf(f[j][0], f[j][1]);
        __m512i isum[NC];
        if constexpr (One) {
            // sum_j min_j * bsum_j first, times -dmin once (process_min_r4_b32, nrc_y == 1)
            const __m256 bs = _mm256_loadu_ps(reinterpret_cast<const float*>(acts[0] + ibl * act::kQ8KBytes + act::kQ8KBsums));
            __m512 sm = _mm512_mul_ps(ff[0], joinf(_mm256_shuffle_ps(bs, bs, 0x00), _mm256_shuffle_ps(bs, bs, 0x00)));
            sm = _mm512_fmadd_ps(ff[1], joinf(_mm256_shuffle_ps(bs, bs, 0x55), _mm256_shuffle_ps(bs, bs, 0x55)), sm);
            sm = _mm512_fmadd_ps(ff[2], joinf(_mm256_shuffle_ps(bs, bs, 0xaa), _mm256_shuffle_ps(bs, bs, 0xaa)), sm);
            sm = _mm512_fmadd_ps(ff[3], joinf(_mm256_shuffle_ps(bs, bs, 0xff), _mm256_shuffle_ps(bs, bs, 0xff)), sm);
            acc[0] = _mm512_fmadd_ps(m4, sm, acc[0]);
            isum[0] = _mm512_setzero_si512();
        } else {
            __m512 cc[4];
            for (int j = 0; j < 4; ++j) cc[j] = _mm512_mul_ps(m4, ff[j]);
            for (int n = 0; n < NC; ++n) {
                const __m256 bs = _mm256_loadu_ps(reinterpret_cast<const float*>(acts[n] + ibl * act::kQ8KBytes + act::kQ8KBsums));
                acc[n] = _mm512_fmadd_ps(cc[0], joinf(_mm256_shuffle_ps(bs, bs, 0x00), _mm256_shuffle_ps(bs, bs, 0x00)), acc[n]);
                acc[n] = _mm512_fmadd_ps(cc[1], joinf(_mm256_shuffle_ps(bs, bs, 0x55), _mm256_shuffle_ps(bs, bs, 0x55)), acc[n]);
                acc[n] = _mm512_fmadd_ps(cc[2], joinf(_mm256_shuffle_ps(bs, bs, 0xaa), _mm256_shuffle_ps(bs, bs, 0xaa)), acc[n]);
                acc[n] = _mm512_fmadd_ps(cc[3], joinf(_mm256_shuffle_ps(bs, bs, 0xff), _mm256_shuffle_ps(bs, bs, 0xff)), acc[n]);
                isum[n] = _mm512_setzero_si512();
            }
        }
        for (int ib = 0; ib < 8; ++ib) {
            const __m512i sc = join(_mm256_cvtepu8_epi32(_mm_set1_epi32((int)hd[0][ib])), _mm256_cvtepu8_epi32(_mm_set1_epi32((int)hd[1][ib])));
            const __m512i b1 = join(ld32(x[0] + qs_off + 64 * ib), ld32(x[1] + qs_off + 64 * ib));
            const __m512i b2 = join(ld32(x[0] + qs_off + 64 * ib + 32), ld32(x[1] + qs_off + 64 * ib + 32));
            __m512i qx[4] = {_mm512_and_si512(b1, mf5), _mm512_and_si512(b2, mf5), _mm512_and_si512(_mm512_srli_epi16(b1, 4), mf5),
                             _mm512_and_si512(_mm512_srli_epi16(b2, 4), mf5)};
            if (kind == 1) {
                // 128-bit chunks [qh0 << 4, qh0, qh1 << 4, qh1] (qh_p: the 16 high-bit bytes of
                // group p's block): one two-piece load, a chunk permute and one variable shift.
                const __m256i q2 = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(x[1] + kQ5R4Qh + 16 * ib),
                                                       reinterpret_cast<const __m128i*>(x[0] + kQ5R4Qh + 16 * ib));
                const __m512i q4 = _mm512_shuffle_i64x2(_mm512_castsi256_si512(q2), _mm512_castsi256_si512(q2), 0x50);
                const __m512i h = _mm512_sllv_epi16(q4, _mm512_setr_epi64(0x0004000400040004, 0x0004000400040004, 0, 0,
                                                                          0x0004000400040004, 0x0004000400040004, 0, 0));
                // qx | (m10 & shifted h), one ternary-logic op each
                qx[0] = _mm512_ternarylogic_epi32(qx[0], m10, h, 0xf8);
                qx[1] = _mm512_ternarylogic_epi32(qx[1], m10, _mm512_srli_epi16(h, 2), 0xf8);
                qx[2] = _mm512_ternarylogic_epi32(qx[2], m10, _mm512_srli_epi16(h, 1), 0xf8);
                qx[3] = _mm512_ternarylogic_epi32(qx[3], m10, _mm512_srli_epi16(h, 3), 0xf8);
            }
            for (int n = 0; n < NC; ++n) {
                const __m512i y = _mm512_broadcast_i64x4(ld32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KQs + 32 * ib));
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qx[0], _mm512_shuffle_epi32(y, _MM_PERM_AAAA));
                s = _mm512_dpbusd_epi32(s, qx[1], _mm512_shuffle_epi32(y, _MM_PERM_BBBB));
                s = _mm512_dpbusd_epi32(s, qx[2], _mm512_shuffle_epi32(y, _MM_PERM_CCCC));
                s = _mm512_dpbusd_epi32(s, qx[3], _mm512_shuffle_epi32(y, _MM_PERM_DDDD));
                isum[n] = _mm512_add_epi32(isum[n], _mm512_mullo_epi32(sc, s));
            }
        }
        for (int n = 0; n < NC; ++n) {
            const float dA = rd_f32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KD);
            acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(d4, _mm512_set1_ps(dA)), _mm512_cvtepi32_ps(isum[n]), acc[n]);
        }
    }
    for (int n = 0; n < NC; ++n) {
        float* out = g.C + (n0 + n) * g.ldc;
        const __m256 lo = _mm512_castps512_ps256(acc[n]), hi = _mm512_extractf32x8_ps(acc[n], 1);
        _mm_storeu_ps(out + grp * 4, _mm_add_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1)));
        _mm_storeu_ps(out + grp2 * 4, _mm_add_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1)));
    }
}

template <int kind, int NC, bool One = false>
void q45_r4_any(const GemmArgs& g, int64_t n0) {
    const int64_t ngroups = g.nrows / 4;
    // Groups j and j + half share a register: the two halves of the tile are two long
    // sequential streams. (Pairing neighbouring groups made every group a stream of its own,
    // 4 * 144 * K / 256 bytes, which the hardware prefetcher restarts on: cold GEMV at half
    // the DRAM bandwidth.)
    const int64_t half = ngroups / 2;
    for (int64_t j = 0; j < half; ++j) q45_r4_pair<kind, NC, One>(g, n0, j, j + half);
    const int64_t grp = 2 * half;
    if (grp < ngroups) {
        GemmArgs last = g;
        last.W = g.W + grp * g.w_group_bytes;
        last.nrows = 4;
        last.C = g.C + grp * 4;
        kq_direct::gemm_q45_r4_cols<kind, NC, One>(last, n0);
    }
}

void gemm_q4_k_r4(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, q45_r4_any<0, 1>, q45_r4_any<0, 2>, q45_r4_any<0, 3>, q45_r4_any<0, 4>,
                                 nullptr, nullptr, nullptr, q45_r4_any<0, 8>};
    for_column_chunks(g, fns, 8, q45_r4_any<0, 1, true>);
}
void gemm_q5_k_r4(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, q45_r4_any<1, 1>, q45_r4_any<1, 2>, q45_r4_any<1, 3>, q45_r4_any<1, 4>,
                                 nullptr, nullptr, nullptr, q45_r4_any<1, 8>};
    for_column_chunks(g, fns, 8, q45_r4_any<1, 1, true>);
}

template <int NC, bool One = false>  // One: ik's one-column order (d * d_act first)
void q6_r4_pair(const GemmArgs& g, int64_t n0, int64_t grp, int64_t grp2) {
    using namespace kq;
    const int64_t nb = g.K / kSuper;
    const __m512i m4b = _mm512_set1_epi8(0xf), m3 = _mm512_set1_epi8(0x30);
    const __m256i shuff = _mm256_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, 0, 1, 8, 9, 2, 3, 10, 11, 4, 5,
                                           12, 13, 6, 7, 14, 15);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const uint8_t* w[2] = {g.W + grp * g.w_group_bytes, g.W + grp2 * g.w_group_bytes};
    __m512 acc[NC];
    for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
    for (int64_t ibl = 0; ibl < nb; ++ibl) {
        const uint8_t* x[2] = {w[0] + ibl * kQ6R4Bytes, w[1] + ibl * kQ6R4Bytes};
        __m256 d4h[2];
        __m256i sv[4][2];
        for (int p = 0; p < 2; ++p) {
            for (int l = 0; l < kQ6R4Bytes; l += 64) IQKQ_PREFETCH((const char*)(x[p] + kR4PrefetchAhead * kQ6R4Bytes + l), _MM_HINT_T1);
            const __m128 dl = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x[p])));
            d4h[p] = _mm256_set_m128(dl, dl);
            const uint8_t* sc = x[p] + kQ6R4Scales;
            __m256i t[4];
            for (int k = 0; k < 4; ++k)
                t[k] = _mm256_shuffle_epi8(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 16 * k))), shuff);
            sv[0][p] = _mm256_permute2x128_si256(t[0], t[2], 0x20);
            sv[1][p] = _mm256_permute2x128_si256(t[0], t[2], 0x31);
            sv[2][p] = _mm256_permute2x128_si256(t[1], t[3], 0x20);
            sv[3][p] = _mm256_permute2x128_si256(t[1], t[3], 0x31);
        }
        const __m512 d4 = One ? _mm512_mul_ps(joinf(d4h[0], d4h[1]), _mm512_set1_ps(rd_f32(acts[0] + ibl * act::kQ8KBytes + act::kQ8KD)))
                              : joinf(d4h[0], d4h[1]);
        const __m512 mn = _mm512_mul_ps(d4, _mm512_set1_ps(-32.0f));
        __m512i s[4];
        for (int j = 0; j < 4; ++j) s[j] = join(sv[j][0], sv[j][1]);
        for (int n = 0; n < NC; ++n) {
            const __m512i bsums = _mm512_broadcast_i64x4(ld32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KBsums));
            __m512i sumi = _mm512_setzero_si512();
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(s[0], _mm512_shuffle_epi32(bsums, _MM_PERM_AAAA)));
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(s[1], _mm512_shuffle_epi32(bsums, _MM_PERM_BBBB)));
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(s[2], _mm512_shuffle_epi32(bsums, _MM_PERM_CCCC)));
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(s[3], _mm512_shuffle_epi32(bsums, _MM_PERM_DDDD)));
            const float dA = rd_f32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KD);
            acc[n] = _mm512_fmadd_ps(One ? mn : _mm512_mul_ps(mn, _mm512_set1_ps(dA)), _mm512_cvtepi32_ps(sumi), acc[n]);
        }
        for (int ib = 0; ib < 8; ++ib) {
            const __m512i isc = join(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x[0] + kQ6R4Scales + 8 * ib))),
                                     _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x[1] + kQ6R4Scales + 8 * ib))));
            const __m512 scales = _mm512_mul_ps(d4, _mm512_cvtepi32_ps(isc));
            const __m512i l1 = join(ld32(x[0] + kQ6R4Ql + 64 * ib), ld32(x[1] + kQ6R4Ql + 64 * ib));
            const __m512i l2 = join(ld32(x[0] + kQ6R4Ql + 64 * ib + 32), ld32(x[1] + kQ6R4Ql + 64 * ib + 32));
            const __m512i hb = join(ld32(x[0] + kQ6R4Qh + 32 * ib), ld32(x[1] + kQ6R4Qh + 32 * ib));
            const __m512i qx[4] = {
                _mm512_or_si512(_mm512_and_si512(l1, m4b), _mm512_and_si512(m3, _mm512_slli_epi16(hb, 4))),
                _mm512_or_si512(_mm512_and_si512(l2, m4b), _mm512_and_si512(m3, hb)),
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4b), _mm512_and_si512(m3, _mm512_slli_epi16(hb, 2))),
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l2, 4), m4b), _mm512_and_si512(m3, _mm512_srli_epi16(hb, 2)))};
            for (int n = 0; n < NC; ++n) {
                const __m512i y = _mm512_broadcast_i64x4(ld32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KQs + 32 * ib));
                __m512i sm = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qx[0], _mm512_shuffle_epi32(y, _MM_PERM_AAAA));
                sm = _mm512_dpbusd_epi32(sm, qx[1], _mm512_shuffle_epi32(y, _MM_PERM_BBBB));
                sm = _mm512_dpbusd_epi32(sm, qx[2], _mm512_shuffle_epi32(y, _MM_PERM_CCCC));
                sm = _mm512_dpbusd_epi32(sm, qx[3], _mm512_shuffle_epi32(y, _MM_PERM_DDDD));
                const float dA = rd_f32(acts[n] + ibl * act::kQ8KBytes + act::kQ8KD);
                acc[n] = _mm512_fmadd_ps(One ? scales : _mm512_mul_ps(scales, _mm512_set1_ps(dA)), _mm512_cvtepi32_ps(sm), acc[n]);
            }
        }
    }
    for (int n = 0; n < NC; ++n) {
        float* out = g.C + (n0 + n) * g.ldc;
        const __m256 lo = _mm512_castps512_ps256(acc[n]), hi = _mm512_extractf32x8_ps(acc[n], 1);
        _mm_storeu_ps(out + grp * 4, _mm_add_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1)));
        _mm_storeu_ps(out + grp2 * 4, _mm_add_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1)));
    }
}

template <int NC, bool One = false>
void q6_r4_any(const GemmArgs& g, int64_t n0) {
    const int64_t ngroups = g.nrows / 4;
    // Groups j and j + half share a register: the two halves of the tile are two long
    // sequential streams. (Pairing neighbouring groups made every group a stream of its own,
    // 4 * 144 * K / 256 bytes, which the hardware prefetcher restarts on: cold GEMV at half
    // the DRAM bandwidth.)
    const int64_t half = ngroups / 2;
    for (int64_t j = 0; j < half; ++j) q6_r4_pair<NC, One>(g, n0, j, j + half);
    const int64_t grp = 2 * half;
    if (grp < ngroups) {
        GemmArgs last = g;
        last.W = g.W + grp * g.w_group_bytes;
        last.nrows = 4;
        last.C = g.C + grp * 4;
        kq_direct::gemm_q6_r4_cols<NC, One>(last, n0);
    }
}

void gemm_q6_k_r4(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, q6_r4_any<1>, q6_r4_any<2>, q6_r4_any<3>, q6_r4_any<4>,
                                 nullptr, nullptr, nullptr, q6_r4_any<8>};
    for_column_chunks(g, fns, 8, q6_r4_any<1, true>);
}

}  // namespace

void register_avx512_kquants(KernelTables& t) {
    t.types[T_Q4_K].gemm = gemm_q4_K;
    t.types[T_Q5_K].gemm = gemm_q5_K;
    for (int type : {T_Q4_K, T_Q5_K, T_Q6_K}) {
        t.types[type].prepare_act = kq_direct::prepare_qK;
        t.types[type].prepared_bytes = kq_direct::prepared_qK_bytes;
    }
    t.types[T_Q6_K].gemm = gemm_q6_K;
    t.types[T_Q8_1_R8].gemm = gemm_q8_1_r8;
    t.types[T_Q4_K_R4].gemm = gemm_q4_k_r4;
    t.types[T_Q5_K_R4].gemm = gemm_q5_k_r4;
    t.types[T_Q6_K_R4].gemm = gemm_q6_k_r4;
}

}  // namespace iqkq
