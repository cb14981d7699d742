// AVX2 matmul kernels for q4_K, q5_K, q6_K (x q8_2_x4) and q8_1_r8 (x q8_2_x4): the same
// integer sums and the same float operations in the same order as the scalar reference
// (formats/kquants.cpp; docs/formats.md, "k-quants: kernels"), so bit-identical to it.
#include "common.h"
#include "formats/act.h"
#include "formats/kquants.h"
#include "kernels/avx2/kquants_direct.h"
#include "kernels/avx2/simd.h"
#include "types.h"

namespace iqkq {
namespace {
using namespace avx2;
using namespace kq;
using kq_direct::gemm_q6_K_cols;
using kq_direct::gemm_qK_cols;
using kq_direct::gemm_q45_r4_cols;
using kq_direct::gemm_q6_r4_cols;

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

void gemm_q4_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_qK_cols<false, false, 1>, gemm_qK_cols<false, false, 2>, gemm_qK_cols<false, false, 3>,
                                 gemm_qK_cols<false, false, 4>};
    for_column_chunks(g, fns, 4);
}
void gemm_q5_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_qK_cols<false, true, 1>, gemm_qK_cols<false, true, 2>, gemm_qK_cols<false, true, 3>,
                                 gemm_qK_cols<false, true, 4>};
    for_column_chunks(g, fns, 4);
}

void gemm_q6_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_q6_K_cols<false, 1>, gemm_q6_K_cols<false, 2>, gemm_q6_K_cols<false, 3>,
                                 gemm_q6_K_cols<false, 4>, gemm_q6_K_cols<false, 5>, gemm_q6_K_cols<false, 6>,
                                 gemm_q6_K_cols<false, 7>, gemm_q6_K_cols<false, 8>};
    for_column_chunks(g, fns, 8);
}

// dot of 32 weight bytes qx[0..3] (4 bytes per 32-bit unit = per row) with 16 activations
// broadcast to both 128-bit lanes: mul_mat_q8_1_r8_q8_2's maddubs / int16 add / madd chain.
inline __m256i dot_r8(const __m256i* qx, const int8_t* y16) {
    const __m256i y = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y16)));
    const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(qx[0], _mm256_shuffle_epi32(y, 0x00)),
                                        _mm256_maddubs_epi16(qx[1], _mm256_shuffle_epi32(y, 0x55)));
    const __m256i s2 = _mm256_add_epi16(_mm256_maddubs_epi16(qx[2], _mm256_shuffle_epi32(y, 0xaa)),
                                        _mm256_maddubs_epi16(qx[3], _mm256_shuffle_epi32(y, 0xff)));
    const __m256i one = _mm256_set1_epi16(1);
    return _mm256_add_epi32(_mm256_madd_epi16(one, s1), _mm256_madd_epi16(one, s2));
}

template <int NC>
void gemm_q8_1_r8_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kQ81Block;
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i4 = 0; i4 < nb / 4; ++i4) {
            const uint8_t* blk = w + 4 * i4 * kQ81Bytes;
            IQKQ_PREFETCH((const char*)(blk + 4 * kQ81Bytes), _MM_HINT_T0);
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
                __m256i qx[4];
                for (int j = 0; j < 4; ++j) qx[j] = load32(b + kQ81Qs + 32 * j);
                for (int n = 0; n < NC; ++n) {
                    const int8_t* y = reinterpret_cast<const int8_t*>(acts[n] + act::kQ82GroupBytes * i4 + act::kQ82GroupQs + 32 * ib);
                    const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(d8[n][ib]));
                    acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(dot_r8(qx, y)), acc[n]);
                }
                for (int j = 0; j < 4; ++j) qx[j] = load32(b + kQ81Qs + 128 + 32 * j);
                for (int n = 0; n < NC; ++n) {
                    const int8_t* y = reinterpret_cast<const int8_t*>(acts[n] + act::kQ82GroupBytes * i4 + act::kQ82GroupQs + 32 * ib);
                    const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(d8[n][ib]));
                    acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(dot_r8(qx, y + 16)), acc[n]);
                }
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
    }
}

void gemm_q8_1_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_q8_1_r8_cols<1>, gemm_q8_1_r8_cols<2>, gemm_q8_1_r8_cols<3>, gemm_q8_1_r8_cols<4>};
    for_column_chunks(g, fns, 4);
}

void gemm_q4_k_r4(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_q45_r4_cols<0, 1>, gemm_q45_r4_cols<0, 2>, gemm_q45_r4_cols<0, 3>,
                                 gemm_q45_r4_cols<0, 4>, gemm_q45_r4_cols<0, 5>, gemm_q45_r4_cols<0, 6>,
                                 gemm_q45_r4_cols<0, 7>, gemm_q45_r4_cols<0, 8>};
    for_column_chunks(g, fns, 8, gemm_q45_r4_cols<0, 1, true>);
}
void gemm_q5_k_r4(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_q45_r4_cols<1, 1>, gemm_q45_r4_cols<1, 2>, gemm_q45_r4_cols<1, 3>,
                                 gemm_q45_r4_cols<1, 4>, gemm_q45_r4_cols<1, 5>, gemm_q45_r4_cols<1, 6>,
                                 gemm_q45_r4_cols<1, 7>, gemm_q45_r4_cols<1, 8>};
    for_column_chunks(g, fns, 8, gemm_q45_r4_cols<1, 1, true>);
}
void gemm_q6_k_r4(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_q6_r4_cols<1>, gemm_q6_r4_cols<2>, gemm_q6_r4_cols<3>,
                                 gemm_q6_r4_cols<4>, gemm_q6_r4_cols<5>, gemm_q6_r4_cols<6>, gemm_q6_r4_cols<7>,
                                 gemm_q6_r4_cols<8>};
    for_column_chunks(g, fns, 8, gemm_q6_r4_cols<1, true>);
}

// q6_K -> q8_0_r8 (iqk_convert_q6_k_q8_0_r8), the same operations as the scalar reference.
void convert_q6_K_q8_0_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kSuper;
    const size_t rb = (size_t)nb * kQ6Bytes;
    constexpr int kR8 = 8 * 34;  // q8_0_r8 block of 8 rows x 32 columns
    const __m256i ml = _mm256_set1_epi8(0x0f), mh = _mm256_set1_epi8(0x30), m32 = _mm256_set1_epi8(-32);
    for (int64_t g = 0; g < nrows / 8; ++g) {
        uint8_t* y = dst + (size_t)g * (K / 32) * kR8;
        for (int64_t i = 0; i < nb; ++i, y += 8 * kR8) {
            alignas(32) float all_s[64];
            __m256i qb[8][8];  // [32-block b][row k], transposed into place below
            for (int k = 0; k < 8; ++k) {
                const uint8_t* blk = src + (size_t)(g * 8 + k) * rb + i * kQ6Bytes;
                const float d = _cvtsh_ss(rd_u16(blk + kQ6D));
                const int8_t* sc = reinterpret_cast<const int8_t*>(blk + kQ6Scales);
                __m256i values[8];
                for (int h = 0; h < 2; ++h) {
                    const __m256i l1 = load32(blk + 64 * h), l2 = load32(blk + 64 * h + 32), hb = load32(blk + kQ6Qh + 32 * h);
                    values[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l1, ml), _mm256_and_si256(_mm256_slli_epi16(hb, 4), mh));
                    values[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l2, ml), _mm256_and_si256(_mm256_slli_epi16(hb, 2), mh));
                    values[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), ml), _mm256_and_si256(hb, mh));
                    values[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), ml),
                                                        _mm256_and_si256(_mm256_srli_epi16(hb, 2), mh));
                }
                for (int b = 0; b < 8; ++b) {
                    const __m256i q8 = _mm256_add_epi8(values[b], m32);
                    const __m256i ql16 = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(q8)), _mm256_set1_epi16(sc[2 * b]));
                    const __m256i qh16 = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(q8, 1)), _mm256_set1_epi16(sc[2 * b + 1]));
                    const __m256i mx16 = _mm256_max_epi16(_mm256_sign_epi16(ql16, ql16), _mm256_sign_epi16(qh16, qh16));
                    const __m128i m8 = _mm_max_epi16(_mm256_castsi256_si128(mx16), _mm256_extracti128_si256(mx16, 1));
                    const __m256i m32v = _mm256_cvtepi16_epi32(m8);
                    const __m128i m4 = _mm_max_epi32(_mm256_castsi256_si128(m32v), _mm256_extracti128_si256(m32v, 1));
                    __m128 mf = _mm_cvtepi32_ps(m4);
                    mf = _mm_max_ps(mf, _mm_movehl_ps(mf, mf));
                    mf = _mm_max_ss(mf, _mm_movehdup_ps(mf));
                    const float mx = _mm_cvtss_f32(mf) / 127.0f;
                    all_s[8 * b + k] = d * mx;
                    if (mx > 1e-9f) {
                        const __m256 s = _mm256_set1_ps(1.0f / mx);
                        const __m256 f0 = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(ql16))));
                        const __m256 f1 = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(ql16, 1))));
                        const __m256 f2 = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(qh16))));
                        const __m256 f3 = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(qh16, 1))));
                        qb[b][k] = pack_rne_i8(f0, f1, f2, f3);
                    } else {
                        qb[b][k] = _mm256_setzero_si256();
                    }
                }
            }
            // Row k's dword l of block b goes to dword 8 l + k of the block's quants.
            for (int b = 0; b < 8; ++b) {
                transpose8x8_epi32(qb[b]);
                for (int l = 0; l < 8; ++l) _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + b * kR8 + 16 + 32 * l), qb[b][l]);
            }
            for (int b = 0; b < 8; ++b)
                _mm_storeu_si128(reinterpret_cast<__m128i*>(y + b * kR8),
                                 _mm256_cvtps_ph(_mm256_load_ps(all_s + 8 * b), _MM_FROUND_TO_NEAREST_INT));
        }
    }
}

// q4_K / q5_K -> q8_1_r8 (iqk_convert_q{4,5}_k_q8_1_r8), the same operations as the scalar one.
template <bool five>
void convert_qK_q8_1_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kSuper;
    const int bytes = five ? kQ5Bytes : kQ4Bytes;
    const int qs_off = five ? kQ5Qs : kQ4Qs;
    const size_t rb = (size_t)nb * bytes;
    const __m256i mf = _mm256_set1_epi8(0xf), mh = _mm256_set1_epi8(0x10);
    for (int64_t g = 0; g < nrows / 8; ++g) {
        uint8_t* y = dst + (size_t)g * 8 * nb * kQ81Bytes;
        for (int64_t i = 0; i < nb; ++i, y += 8 * kQ81Bytes) {
            alignas(32) uint16_t dh[16];
            alignas(32) int32_t ls[8][8], lm[8][8];
            const uint8_t* blks[8];  // super-block i of the group's 8 rows
            for (int k = 0; k < 8; ++k) blks[k] = src + (size_t)(g * 8 + k) * rb + i * bytes;
            for (int k = 0; k < 8; ++k) {
                const uint8_t* blk = blks[k];
                dh[k] = rd_u16(blk);
                dh[k + 8] = rd_u16(blk + 2);
                uint32_t u[4];
                std::memcpy(u, blk + kQ4Scales, 12);
                u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
                const uint32_t aux = u[1] & 0x3f3f3f3fu;
                u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
                u[2] = aux;
                u[0] &= 0x3f3f3f3fu;
                const uint8_t* u8 = reinterpret_cast<const uint8_t*>(u);
                for (int b = 0; b < 8; ++b) {
                    ls[b][k] = u8[b];
                    lm[b][k] = u8[8 + b];
                }
            }
            // Quants: per 32-block an 8 x 8 transpose of dwords (row k, dword l -> output
            // dword 8 l + k), two 32-blocks per 32 bytes of 4-bit codes.
            __m256i hbits[8];
            if (five)
                for (int k = 0; k < 8; ++k) hbits[k] = load32(blks[k] + kQ5Qh);
            for (int c = 0; c < 4; ++c) {
                __m256i v1[8], v2[8];
                for (int k = 0; k < 8; ++k) {
                    const __m256i bits = load32(blks[k] + qs_off + 32 * c);
                    v1[k] = _mm256_and_si256(bits, mf);
                    v2[k] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), mf);
                    if (five) {
                        v1[k] = _mm256_or_si256(v1[k], _mm256_and_si256(mh, _mm256_slli_epi16(hbits[k], 4)));
                        v2[k] = _mm256_or_si256(v2[k], _mm256_and_si256(mh, _mm256_slli_epi16(hbits[k], 3)));
                        hbits[k] = _mm256_srli_epi16(hbits[k], 2);
                    }
                }
                transpose8x8_epi32(v1);
                transpose8x8_epi32(v2);
                uint8_t* o1 = y + (2 * c) * kQ81Bytes + kQ81Qs;
                uint8_t* o2 = y + (2 * c + 1) * kQ81Bytes + kQ81Qs;
                for (int l = 0; l < 8; ++l) {
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o1 + 32 * l), v1[l]);
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o2 + 32 * l), v2[l]);
                }
            }
            const __m256 vd = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dh)));
            const __m256 vm = _mm256_mul_ps(_mm256_set1_ps(-1.0f), _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dh + 8))));
            for (int b = 0; b < 8; ++b) {
                const __m256 sd = _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(ls[b]))));
                const __m256 sm = _mm256_mul_ps(vm, _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(lm[b]))));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(y + b * kQ81Bytes), _mm256_cvtps_ph(sd, _MM_FROUND_TO_NEAREST_INT));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(y + b * kQ81Bytes + 16), _mm256_cvtps_ph(sm, _MM_FROUND_TO_NEAREST_INT));
            }
        }
    }
}

// q6_K dequantization: (d * scale) * (q - 32), as the scalar reference.
void dequantize_q6_K(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const __m256i ml = _mm256_set1_epi8(0x0f), mh = _mm256_set1_epi8(0x30), m32 = _mm256_set1_epi8(-32);
    const int64_t nb = nrows * (K / kSuper);
    for (int64_t i = 0; i < nb; ++i, src += kQ6Bytes, dst += kSuper) {
        const float d = _cvtsh_ss(rd_u16(src + kQ6D));
        const int8_t* sc = reinterpret_cast<const int8_t*>(src + kQ6Scales);
        for (int h = 0; h < 2; ++h) {
            const __m256i l1 = load32(src + 64 * h), l2 = load32(src + 64 * h + 32), hb = load32(src + kQ6Qh + 32 * h);
            const __m256i v[4] = {
                _mm256_or_si256(_mm256_and_si256(l1, ml), _mm256_and_si256(_mm256_slli_epi16(hb, 4), mh)),
                _mm256_or_si256(_mm256_and_si256(l2, ml), _mm256_and_si256(_mm256_slli_epi16(hb, 2), mh)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), ml), _mm256_and_si256(hb, mh)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), ml), _mm256_and_si256(_mm256_srli_epi16(hb, 2), mh))};
            for (int c = 0; c < 4; ++c) {
                const __m256i q = _mm256_add_epi8(v[c], m32);
                const int e0 = 128 * h + 32 * c;  // elements e0 .. e0 + 31
                const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
                const __m256 s0 = _mm256_set1_ps(d * (float)sc[e0 / 16]), s1 = _mm256_set1_ps(d * (float)sc[e0 / 16 + 1]);
                _mm256_storeu_ps(dst + e0 + 0, _mm256_mul_ps(s0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
                _mm256_storeu_ps(dst + e0 + 8, _mm256_mul_ps(s0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
                _mm256_storeu_ps(dst + e0 + 16, _mm256_mul_ps(s1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
                _mm256_storeu_ps(dst + e0 + 24, _mm256_mul_ps(s1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
            }
        }
    }
}

}  // namespace

void register_avx2_kquants(KernelTables& t) {
    t.types[T_Q4_K].gemm = gemm_q4_K;
    t.types[T_Q5_K].gemm = gemm_q5_K;
    for (int type : {T_Q4_K, T_Q5_K, T_Q6_K}) {
        t.types[type].prepare_act = kq_direct::prepare_qK;
        t.types[type].prepared_bytes = kq_direct::prepared_qK_bytes;
    }
    t.types[T_Q6_K].gemm = gemm_q6_K;
    t.types[T_Q6_K].to_large_batch = convert_q6_K_q8_0_r8;
    t.types[T_Q6_K].dequantize = dequantize_q6_K;
    t.types[T_Q8_1_R8].gemm = gemm_q8_1_r8;
    t.types[T_Q4_K].to_large_batch = convert_qK_q8_1_r8<false>;
    t.types[T_Q5_K].to_large_batch = convert_qK_q8_1_r8<true>;
    t.types[T_Q4_K_R4].gemm = gemm_q4_k_r4;
    t.types[T_Q5_K_R4].gemm = gemm_q5_k_r4;
    t.types[T_Q6_K_R4].gemm = gemm_q6_k_r4;
}

}  // namespace iqkq
