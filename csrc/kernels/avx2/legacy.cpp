// AVX2 kernels for the legacy 32-blocks (q4_0, q5_0, q6_0, iq4_nl and the twins q4_0_r8,
// q5_0_r4, q6_0_r4, iq4_nl_r4) x q8_2_x4, and their large-batch conversion to q8_0_r8.
// Bit-exact twins of formats/legacy.cpp (docs/formats.md, "Legacy 32-blocks"): the integer
// sums are exact, the float operations are the same operations in the same order. The base
// types share one kernel template over a block decoder (32 bytes of codes in element order).
#include "common.h"
#include "formats/act.h"
#include "formats/legacy.h"
#include "kernels/avx2/legacy_dec.h"
#include "kernels/avx2/simd.h"
#include "types.h"


namespace iqkq {
namespace {
using namespace avx2;
using namespace legacy;

// bf16 scales / int16 sums of the 4 blocks of a q8_2_x4 group -> 4 floats.
inline __m128 act_scales4(const uint8_t* group) {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(group + act::kQ82GroupD));
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
}
inline __m128 act_sums4(const uint8_t* group) {
    const __m128i s = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(group + act::kQ82GroupS));
    return _mm_cvtepi32_ps(_mm_cvtepi16_epi32(s));
}

// unsigned x signed bytes, 4 consecutive products per int32 lane.
inline __m256i udot4(__m256i u, __m256i a) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1)); }

// Base types x q8_2_x4: the prepared activation layout is prepare_base (legacy_dec.h).

template <typename Dec, int NC>
void gemm_base_cols(const GemmArgs& g, int64_t n0) {
    using D = typename Dec::D;
    constexpr bool kSigned = D::kMin == 0;
    constexpr int B = D::kBytes;
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    const uint8_t* preps[NC];
    for (int n = 0; n < NC; ++n) {
        acts[n] = g.A + (n0 + n) * g.a_row_bytes;
        preps[n] = g.P + (n0 + n) * g.p_row_bytes;
    }
    const __m256 mmin = _mm256_set1_ps(-(float)D::kMin);
    const __m256i lane_order = _mm256_setr_epi32(0, 2, 0, 2, 1, 3, 1, 3);
    const __m256i to_p = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // natural lanes -> lane order P
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC], accm[NC];
        for (int n = 0; n < NC; ++n) acc[n] = accm[n] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb4; b += 4) {
            const uint8_t* blk = w + b * B;
            IQKQ_PREFETCH((const char*)(blk + kPrefetch), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(blk + kPrefetch + 64), _MM_HINT_T0);
            const __m256 dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(weight_scales4<B>(blk)), lane_order);
            __m256i lo01, hi01, lo23, hi23;
            Pair<Dec>::codes(blk, blk + B, lo01, hi01);
            Pair<Dec>::codes(blk + 2 * B, blk + 3 * B, lo23, hi23);
            __m256i slo01, shi01, slo23, shi23;
            if constexpr (kSigned) {
                slo01 = _mm256_sign_epi8(lo01, lo01);
                shi01 = _mm256_sign_epi8(hi01, hi01);
                slo23 = _mm256_sign_epi8(lo23, lo23);
                shi23 = _mm256_sign_epi8(hi23, hi23);
            }
            const __m256 dm = _mm256_mul_ps(dw, mmin);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* pg = preps[n] + kPrepGroup * (b / 4);
                __m256i x01, y01, x23, y23;
                if constexpr (kSigned) {
                    x01 = udot4(slo01, _mm256_sign_epi8(load32(pg + 64), lo01));
                    y01 = udot4(shi01, _mm256_sign_epi8(load32(pg + 96), hi01));
                    x23 = udot4(slo23, _mm256_sign_epi8(load32(pg + 128), lo23));
                    y23 = udot4(shi23, _mm256_sign_epi8(load32(pg + 160), hi23));
                } else {
                    x01 = udot4(lo01, load32(pg + 64));
                    y01 = udot4(hi01, load32(pg + 96));
                    x23 = udot4(lo23, load32(pg + 128));
                    y23 = udot4(hi23, load32(pg + 160));
                }
                const __m256i P = _mm256_hadd_epi32(_mm256_hadd_epi32(x01, x23), _mm256_hadd_epi32(y01, y23));
                const __m256 da = _mm256_loadu_ps(reinterpret_cast<const float*>(pg));
                if constexpr (!kSigned)
                    accm[n] = _mm256_add_ps(accm[n], _mm256_mul_ps(dm, _mm256_loadu_ps(reinterpret_cast<const float*>(pg + 32))));
                acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(P), acc[n]);
            }
        }
        for (int64_t b = nb4; b < nb; ++b) {
            const uint8_t* blk = w + b * B;
            const float dw = _cvtsh_ss(rd_u16(blk));
            const __m256i wq = Dec::codes(blk);
            const __m256i wa = kSigned ? _mm256_sign_epi8(wq, wq) : wq;
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + act::kQ82Bytes * b;
                const float da = bf16_to_fp32(rd_u16(ab + act::kQ82D));
                const __m256i a = load32(ab + act::kQ82Qs);
                const __m256i p = _mm256_permutevar8x32_epi32(kSigned ? udot4(wa, _mm256_sign_epi8(a, wq)) : udot4(wq, a), to_p);
                if constexpr (!kSigned) {
                    const float s = (float)(int16_t)rd_u16(ab + act::kQ82S);
                    const float m = (-dw * (float)D::kMin) * (da * s);
                    accm[n] = _mm256_add_ps(accm[n], _mm256_set1_ps(m * 0.25f));
                }
                acc[n] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(p), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) {
            alignas(32) float a[8], m[8];
            _mm256_store_ps(a, acc[n]);
            float out;
            if constexpr (kSigned) {
                out = ((a[0] + a[2]) + (a[1] + a[3])) + ((a[4] + a[6]) + (a[5] + a[7]));
            } else {
                _mm256_store_ps(m, accm[n]);
                const float v0 = (a[0] + a[2]) + m[0], v2 = (a[1] + a[3]) + m[1];
                const float v1 = (a[4] + a[6]) + m[4], v3 = (a[5] + a[7]) + m[5];
                out = (v0 + v2) + (v1 + v3);
            }
            g.C[(n0 + n) * g.ldc + r] = out;
        }
    }
}

template <typename Dec>
void gemm_base(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_base_cols<Dec, 1>, gemm_base_cols<Dec, 2>, gemm_base_cols<Dec, 3>,
                                 gemm_base_cols<Dec, 4>, gemm_base_cols<Dec, 5>, gemm_base_cols<Dec, 6>,
                                 gemm_base_cols<Dec, 7>, gemm_base_cols<Dec, 8>};
    for_column_chunks(g, fns, 8);
}

// ---------------------------------------------------------------- 4-row twins
template <int kR4Type>
inline __m256i r4_dot(const __m256i q[4], __m256i y) {
    __m256i s = _mm256_setzero_si256();
    const __m256i ys[4] = {_mm256_shuffle_epi32(y, 0x00), _mm256_shuffle_epi32(y, 0x55), _mm256_shuffle_epi32(y, 0xaa),
                           _mm256_shuffle_epi32(y, 0xff)};
    for (int j = 0; j < 4; ++j) {
        if constexpr (kR4Type == T_IQ4_NL_R4) s = _mm256_add_epi32(s, udot4(_mm256_sign_epi8(q[j], q[j]), _mm256_sign_epi8(ys[j], q[j])));
        else s = _mm256_add_epi32(s, udot4(q[j], ys[j]));
    }
    return s;
}

template <int kR4Type, int NC>
void gemm_r4_cols(const GemmArgs& g, int64_t n0) {
    constexpr int B = 4 * (kR4Type == T_Q5_0_R4 ? kQ5Bytes : kR4Type == T_Q6_0_R4 ? kQ6Bytes : kNlBytes);
    constexpr bool kOffset = kR4Type != T_IQ4_NL_R4;
    const float half_min = kR4Type == T_Q5_0_R4 ? -8.0f : -16.0f;
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = w + b * B;
            const __m128 s4 = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk)));
            const __m256 dw = _mm256_set_m128(s4, s4);
            __m256i q[4];
            r4_prepare<kR4Type>(blk, q);
            const int64_t so = act::q82_d_offset(b, nb4), ss = act::q82_s_offset(b, nb4), qo = act::q82_qs_offset(b, nb4);
            for (int n = 0; n < NC; ++n) {
                const float da = bf16_to_fp32(rd_u16(acts[n] + so));
                const __m256i sumi = r4_dot<kR4Type>(q, load32(acts[n] + qo));
                acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(da)), _mm256_cvtepi32_ps(sumi), acc[n]);
                if constexpr (kOffset) {
                    const float ms = half_min * (da * (float)(int16_t)rd_u16(acts[n] + ss));
                    acc[n] = _mm256_fmadd_ps(dw, _mm256_set1_ps(ms), acc[n]);
                }
            }
        }
        for (int n = 0; n < NC; ++n) {
            const __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[n]), _mm256_extractf128_ps(acc[n], 1));
            _mm_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 4, v);
        }
    }
}

template <int kR4Type>
void gemm_r4(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_r4_cols<kR4Type, 1>, gemm_r4_cols<kR4Type, 2>, gemm_r4_cols<kR4Type, 3>,
                                 gemm_r4_cols<kR4Type, 4>, gemm_r4_cols<kR4Type, 5>, gemm_r4_cols<kR4Type, 6>,
                                 gemm_r4_cols<kR4Type, 7>, gemm_r4_cols<kR4Type, 8>};
    for_column_chunks(g, fns, 8);
}

// ---------------------------------------------------------------- q4_0_r8
// Row k's dot in lane k: bytes of qs[32l .. 32l+31] hold rows 0..7 x 4 nibble pairs.
inline void r8_prepare(const uint8_t* blk, __m256i v[8]) {
    const __m256i m4 = _mm256_set1_epi8(0xf);
    for (int l = 0; l < 4; ++l) {
        const __m256i bits = load32(blk + 16 + 32 * l);
        v[l] = _mm256_and_si256(bits, m4);
        v[l + 4] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
    }
}
inline __m256i r8_dot(const __m256i v[8], const uint8_t* q) {
    const __m256i yl = _mm256_broadcastsi128_si256(load16(q)), yh = _mm256_broadcastsi128_si256(load16(q + 16));
    const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(v[0], _mm256_shuffle_epi32(yl, 0x00)),
                                        _mm256_maddubs_epi16(v[1], _mm256_shuffle_epi32(yl, 0x55)));
    const __m256i s2 = _mm256_add_epi16(_mm256_maddubs_epi16(v[2], _mm256_shuffle_epi32(yl, 0xaa)),
                                        _mm256_maddubs_epi16(v[3], _mm256_shuffle_epi32(yl, 0xff)));
    const __m256i s3 = _mm256_add_epi16(_mm256_maddubs_epi16(v[4], _mm256_shuffle_epi32(yh, 0x00)),
                                        _mm256_maddubs_epi16(v[5], _mm256_shuffle_epi32(yh, 0x55)));
    const __m256i s4 = _mm256_add_epi16(_mm256_maddubs_epi16(v[6], _mm256_shuffle_epi32(yh, 0xaa)),
                                        _mm256_maddubs_epi16(v[7], _mm256_shuffle_epi32(yh, 0xff)));
    return _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_add_epi16(_mm256_add_epi16(s1, s2), _mm256_add_epi16(s3, s4)));
}

// The _r4 and _r8 kernels read one weight stream with no software prefetch: the hardware
// prefetcher alone was faster (Zen 4, 2 vCPUs, ab_builds --cold --isa avx2, both orders: without
// 2 lines 2 KiB ahead, cold N=1 q4_0_r8 x1.07-1.12 at 1 thread, x1.06-1.30 at 2; q6_0_r4 x1.11 at
// 1; q5_0_r4, iq4_nl_r4 x1.03-1.04).

inline __m256 r8_scales(const uint8_t* blk) { return _mm256_cvtph_ps(load16(blk)); }

// NC columns with the multi-column float order (formats/legacy.cpp, gemm_q4_0_r8).
template <int NC>
void gemm_q4_0_r8_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m256 m8 = _mm256_set1_ps(-8.0f);
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb4; b += 4) {
            const uint8_t* blk = w + b * kR8Q4Bytes;
            __m256 d4[4];
            for (int k = 0; k < 4; ++k) d4[k] = r8_scales(blk + k * kR8Q4Bytes);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ag = acts[n] + act::kQ82GroupBytes * (b / 4);
                const __m128 m = _mm_mul_ps(act_scales4(ag), act_sums4(ag));
                alignas(16) float mv[4];
                _mm_store_ps(mv, m);
                __m256 sf = _mm256_mul_ps(d4[0], _mm256_set1_ps(mv[0]));
                sf = _mm256_fmadd_ps(d4[1], _mm256_set1_ps(mv[1]), sf);
                sf = _mm256_fmadd_ps(d4[2], _mm256_set1_ps(mv[2]), sf);
                sf = _mm256_fmadd_ps(d4[3], _mm256_set1_ps(mv[3]), sf);
                acc[n] = _mm256_fmadd_ps(sf, m8, acc[n]);
            }
            for (int k = 0; k < 4; ++k) {
                const uint8_t* bk = blk + k * kR8Q4Bytes;
                __m256i v[8];
                r8_prepare(bk, v);
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* ag = acts[n] + act::kQ82GroupBytes * (b / 4);
                    const float da = bf16_to_fp32(rd_u16(ag + act::kQ82GroupD + 2 * k));
                    const __m256i sumi = r8_dot(v, ag + act::kQ82GroupQs + 32 * k);
                    acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(d4[k], _mm256_set1_ps(da)), _mm256_cvtepi32_ps(sumi), acc[n]);
                }
            }
        }
        for (int64_t b = nb4; b < nb; ++b) {
            const uint8_t* blk = w + b * kR8Q4Bytes;
            const __m256 dw = r8_scales(blk);
            const __m256 dwm = _mm256_mul_ps(dw, m8);
            __m256i v[8];
            r8_prepare(blk, v);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + act::kQ82Bytes * b;
                const float da = bf16_to_fp32(rd_u16(ab + act::kQ82D));
                const float mm = da * (float)(int16_t)rd_u16(ab + act::kQ82S);
                acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(da)), _mm256_cvtepi32_ps(r8_dot(v, ab + act::kQ82Qs)),
                                         acc[n]);
                acc[n] = _mm256_fmadd_ps(dwm, _mm256_set1_ps(mm), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + grp * 8, acc[n]);
    }
}

// The one-column float order (ik_llama.cpp's nrc_y == 1 kernel).
void gemm_q4_0_r8_single(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* a = g.A + n0 * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = w + b * kR8Q4Bytes;
            const __m256 dw = r8_scales(blk);
            __m256i v[8];
            r8_prepare(blk, v);
            const float da = bf16_to_fp32(rd_u16(a + act::q82_d_offset(b, nb4)));
            const float mm = da * (float)(int16_t)rd_u16(a + act::q82_s_offset(b, nb4));
            const __m256i sumi = r8_dot(v, a + act::q82_qs_offset(b, nb4));
            acc1 = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(da)), _mm256_cvtepi32_ps(sumi), acc1);
            acc2 = _mm256_fmadd_ps(dw, _mm256_set1_ps(mm), acc2);
        }
        _mm256_storeu_ps(g.C + n0 * g.ldc + grp * 8, _mm256_fmadd_ps(acc2, _mm256_set1_ps(-8.0f), acc1));
    }
}

void gemm_q4_0_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_q4_0_r8_cols<1>, gemm_q4_0_r8_cols<2>, gemm_q4_0_r8_cols<3>,
                                 gemm_q4_0_r8_cols<4>, gemm_q4_0_r8_cols<5>, gemm_q4_0_r8_cols<6>, gemm_q4_0_r8_cols<7>,
                                 gemm_q4_0_r8_cols<8>};
    for_column_chunks(g, fns, 8, gemm_q4_0_r8_single);
}

// ---------------------------------------------------------------- large batch -> q8_0_r8
template <typename Dec>
void to_q8_0_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    using D = typename Dec::D;
    const int64_t nb = K / kBlock;
    const size_t row = (size_t)nb * D::kBytes;
    const __m256i off = _mm256_set1_epi8((char)D::kMin);
    for (int64_t g = 0; g < nrows / 8; ++g) {
        const uint8_t* s = src + (size_t)g * 8 * row;
        uint8_t* o = dst + (size_t)g * nb * (8 * 34);
        for (int64_t b = 0; b < nb; ++b, o += 8 * 34) {
            __m256i v[8];
            for (int k = 0; k < 8; ++k) {
                const uint8_t* blk = s + k * row + b * D::kBytes;
                std::memcpy(o + 2 * k, blk, 2);
                v[k] = _mm256_sub_epi8(Dec::codes(blk), off);
            }
            transpose8x8_epi32(v);
            for (int l = 0; l < 8; ++l) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 + 32 * l), v[l]);
        }
    }
}

}  // namespace

void register_avx2_legacy(KernelTables& t) {
    t.types[T_Q4_0].gemm = gemm_base<DecQ4>;
    t.types[T_Q5_0].gemm = gemm_base<DecQ5>;
    t.types[T_Q6_0].gemm = gemm_base<DecQ6>;
    t.types[T_IQ4_NL].gemm = gemm_base<DecNL>;
    static const int kBases[] = {T_Q4_0, T_Q5_0, T_Q6_0, T_IQ4_NL};
    for (int type : kBases) {
        t.types[type].prepare_act = prepare_base;
        t.types[type].prepared_bytes = prepared_base_bytes;
    }
    t.types[T_Q4_0].to_large_batch = to_q8_0_r8<DecQ4>;
    t.types[T_Q5_0].to_large_batch = to_q8_0_r8<DecQ5>;
    t.types[T_Q6_0].to_large_batch = to_q8_0_r8<DecQ6>;
    t.types[T_IQ4_NL].to_large_batch = to_q8_0_r8<DecNL>;
    t.types[T_Q4_0_R8].gemm = gemm_q4_0_r8;
    t.types[T_Q5_0_R4].gemm = gemm_r4<T_Q5_0_R4>;
    t.types[T_Q6_0_R4].gemm = gemm_r4<T_Q6_0_R4>;
    t.types[T_IQ4_NL_R4].gemm = gemm_r4<T_IQ4_NL_R4>;
}

}  // namespace iqkq
