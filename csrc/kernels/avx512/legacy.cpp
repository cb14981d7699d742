// AVX-512 kernels for q4_0, q5_0, q6_0, iq4_nl and their twins x q8_2_x4: the AVX2 kernels of
// kernels/avx2/legacy.cpp with two weight rows per 512-bit register (row r in the low, row r+1
// in the high 256 bits) and VNNI dot products. Every float lane does the same operations in the
// same order as its AVX2 / scalar twin, so the results are bit-identical (docs/formats.md,
// "Legacy 32-blocks"); only the exact integer sums are formed differently.
#include <initializer_list>
#include <type_traits>

#include "common.h"
#include "formats/act.h"
#include "formats/legacy.h"
#include "kernels/avx2/legacy_dec.h"
#include "kernels/avx2/simd.h"
#include "kernels/avx512/simd.h"
#include "types.h"

namespace iqkq {
namespace {
using namespace legacy;

inline __m512i join(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
inline __m256i join2x128(const uint8_t* lo, const uint8_t* hi) {
    return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(hi), reinterpret_cast<const __m128i*>(lo));
}
inline __m512 joinf(__m256 lo, __m256 hi) { return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1); }

// hadd_epi32 of every 128-bit lane: (a0 + a1, a2 + a3, b0 + b1, b2 + b3).
inline __m512i hadd_lanes(__m512i a, __m512i b) {
    const __m512 fa = _mm512_castsi512_ps(a), fb = _mm512_castsi512_ps(b);
    const __m512i even = _mm512_castps_si512(_mm512_shuffle_ps(fa, fb, 0x88));
    const __m512i odd = _mm512_castps_si512(_mm512_shuffle_ps(fa, fb, 0xdd));
    return _mm512_add_epi32(even, odd);
}

// Signed weights w (never 0 for iq4_nl) times signed activations a: |w| . (a negated where w < 0).
inline __m512i sdot(__m512i w, __m512i a) {
    const __mmask64 neg = _mm512_movepi8_mask(w);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a));
}
inline __m512i udot(__m512i u, __m512i a) { return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, a); }

// The iq4_nl codebook + 128 (1..241, unsigned) in every 128-bit lane: dpbusd's unsigned operand
// for the iq4_nl kernels, whose correction -128 * sum(x) is prepared with the activations.
inline __m512i biased_nl_table() {
    return _mm512_xor_si512(_mm512_broadcast_i32x4(load16(reinterpret_cast<const uint8_t*>(iq4nl_values()))),
                            _mm512_set1_epi8((char)0x80));
}

// Byte indices (into [row r0's two blocks | row r1's two blocks], 64 bytes each) for codes4:
// chunk k of the first = the 16 nibble bytes (at offset QS) of block k % 2 of row k / 2, of
// the second = the 8 bytes at offset 2 (q6_0's high bits) of that block, twice.
struct PairPerm {
    uint8_t v[2][64];
};
template <int B, int QS>
constexpr PairPerm make_pair_perm() {
    PairPerm p{};
    for (int k = 0; k < 4; ++k)
        for (int j = 0; j < 16; ++j) {
            const int base = 64 * (k / 2) + B * (k % 2);
            p.v[0][16 * k + j] = (uint8_t)(base + QS + j);
            p.v[1][16 * k + j] = (uint8_t)(base + 2 + j % 8);
        }
    return p;
}
template <int B, int QS>
struct PairPermOf {
    alignas(64) static constexpr PairPerm value = make_pair_perm<B, QS>();
};

// The two blocks at p of one row (2 * B <= 64 bytes; masked lanes never fault).
template <int B>
inline __m512i load_pair(const uint8_t* p) {
    static_assert(2 * B <= 64, "two blocks in one 512-bit load");
    return _mm512_maskz_loadu_epi8((__mmask64)((1ull << (2 * B)) - 1), p);
}

// The codes of the block pair (b, b + 1) of two rows (a -> block b of row r0, c -> block b of
// row r1) in the prepared activation layout: lo = [r0 b lo | r0 b+1 lo | r1 b lo | r1 b+1 lo]
// (lo / hi = elements 0..15 / 16..31), hi likewise; what kernels/avx2/legacy_dec.h's Pair
// decoders give per row, made at 512 bits. q5_0's fifth bits come from the four 32-bit qh
// words as one 64-bit byte mask (a masked add of 0x10, no bit spreading); iq4_nl gives its
// codebook values + 128 (table tvb, all in 1..241) as dpbusd's unsigned operand, corrected
// by -128 * (sum of the activation quants) per lane, prepared once per matmul.
template <typename Dec>
inline void codes4(const uint8_t* a, const uint8_t* c, __m512i tvb, __m512i& lo, __m512i& hi) {
    constexpr int B = Dec::D::kBytes;
    const __m512i m4 = _mm512_set1_epi8(0xf);
    if constexpr (std::is_same_v<Dec, DecQ6>) {
        // chunk k of q = one block's 16 nibble bytes (elements 0..15 low nibbles, 16..31
        // high), chunk k of hh = its 8 high-bit bytes h, twice. Element e takes bits 0 / 4 / 2 / 6
        // of h[e % 8] for e in 0-7 / 8-15 / 16-23 / 24-31 (DecQ6), moved to bits 4-5 by rotating
        // the 64-bit halves left by 4 / 0 (lo) and 2 / 62 (hi).
        using Perm = PairPermOf<B, 10>;
        const __m512i va = load_pair<B>(a), vc = load_pair<B>(c);
        const __m512i q = _mm512_permutex2var_epi8(va, _mm512_load_si512(Perm::value.v[0]), vc);
        const __m512i hh = _mm512_permutex2var_epi8(va, _mm512_load_si512(Perm::value.v[1]), vc);
        const __m512i m6 = _mm512_set1_epi8(0x30);
        const __m512i hl = _mm512_rolv_epi64(hh, _mm512_setr_epi64(4, 0, 4, 0, 4, 0, 4, 0));
        const __m512i hv = _mm512_rolv_epi64(hh, _mm512_setr_epi64(2, 62, 2, 62, 2, 62, 2, 62));
        lo = _mm512_ternarylogic_epi32(_mm512_and_si512(q, m4), hl, m6, 0xf8);  // a | (b & c)
        hi = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(q, 4), m4), hv, m6, 0xf8);
    } else {
        constexpr int qs = std::is_same_v<Dec, DecQ5> ? 6 : 2;
        using Perm = PairPermOf<B, qs>;
        const __m512i q = _mm512_permutex2var_epi8(load_pair<B>(a), _mm512_load_si512(Perm::value.v[0]), load_pair<B>(c));
        lo = _mm512_and_si512(q, m4);
        hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        if constexpr (std::is_same_v<Dec, DecNL>) {
            lo = _mm512_shuffle_epi8(tvb, lo);
            hi = _mm512_shuffle_epi8(tvb, hi);
        } else if constexpr (std::is_same_v<Dec, DecQ5>) {
            const uint32_t a0 = rd_u32(a + 2), a1 = rd_u32(a + B + 2), c0 = rd_u32(c + 2), c1 = rd_u32(c + B + 2);
            const uint64_t mlo = (uint64_t)((a0 & 0xffffu) | (a1 << 16)) | ((uint64_t)((c0 & 0xffffu) | (c1 << 16)) << 32);
            const uint64_t mhi =
                (uint64_t)((a0 >> 16) | (a1 & 0xffff0000u)) | ((uint64_t)((c0 >> 16) | (c1 & 0xffff0000u)) << 32);
            const __m512i m10 = _mm512_set1_epi8(0x10);
            lo = _mm512_mask_add_epi8(lo, _cvtu64_mask64(mlo), lo, m10);
            hi = _mm512_mask_add_epi8(hi, _cvtu64_mask64(mhi), hi, m10);
        }
    }
}

// The fp16 scales of blocks b..b+3 of two rows as floats (row r0's in the low 128 bits), as
// weight_scales4 (kernels/avx2/legacy_dec.h) makes them, with one word permute instead of
// eight word inserts. Every load stays inside the two 4-block groups (4 * B >= 64 bytes); a
// fourth scale beyond the first 64 bytes is broadcast into word 31, which is not one of the others.
template <int B>
inline __m256 scales8(const uint8_t* b0, const uint8_t* b1) {
    static_assert(4 * B >= 64 && B <= 30 && B % 2 == 0, "layout of the 4-block group");
    __m512i v0 = _mm512_loadu_si512(b0), v1 = _mm512_loadu_si512(b1);
    constexpr int h = B / 2;
    constexpr bool kFits = 3 * B + 2 <= 64;
    if constexpr (!kFits) {
        v0 = _mm512_mask_set1_epi16(v0, (__mmask32)1u << 31, (short)rd_u16(b0 + 3 * B));
        v1 = _mm512_mask_set1_epi16(v1, (__mmask32)1u << 31, (short)rd_u16(b1 + 3 * B));
    }
    constexpr int w3 = kFits ? 3 * h : 31;
    const __m512i idx = _mm512_castsi128_si512(_mm_setr_epi16(0, h, 2 * h, w3, 32, 32 + h, 32 + 2 * h, 32 + w3));
    return _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(v0, idx, v1)));
}

// iq4_nl's prepared activations: prepare_base's layout (kernels/avx2/legacy_dec.h) with the
// d * s slot, which the signed type does not read, holding per lane of the lane order P
// -128 * the sum of the 16 quants that lane's dot product covers (the correction of codes4's
// biased codebook).
void prepare_nl(const uint8_t* a, uint8_t* out, int64_t K) {
    static const int kBlk[8] = {0, 2, 0, 2, 1, 3, 1, 3}, kHalf[8] = {0, 0, 1, 1, 0, 0, 1, 1};
    prepare_base(a, out, K);
    for (int64_t gi = 0; gi < K / 128; ++gi, a += act::kQ82GroupBytes, out += kPrepGroup) {
        const uint8_t* q = a + act::kQ82GroupQs;
        for (int l = 0; l < 8; ++l) {
            int32_t sum = 0;
            for (int e = 0; e < 16; ++e) sum += (int8_t)q[32 * kBlk[l] + 16 * kHalf[l] + e];
            wr_u32(out + 32 + 4 * l, (uint32_t)(-128 * sum));
        }
    }
}

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
    const __m512i tvb = biased_nl_table();
    const __m512 mmin = _mm512_set1_ps(-(float)D::kMin);
    const __m512i lane_order = _mm512_setr_epi32(0, 2, 0, 2, 1, 3, 1, 3, 4, 6, 4, 6, 5, 7, 5, 7);
    const __m256i to_p = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    // Rows i and i + half share a register: two weight streams far enough apart that each
    // keeps its own prefetch (adjacent rows would make one stream's prefetches hit the other's
    // data). An odd last row is computed twice and stored once.
    const int64_t half = g.nrows / 2;
    for (int64_t i = 0; i < half + (g.nrows & 1); ++i) {
        const bool pair = i < half;
        const int64_t r0 = pair ? i : g.nrows - 1, r1 = pair ? i + half : r0;
        const uint8_t* w0 = g.W + r0 * g.w_group_bytes;
        const uint8_t* w1 = g.W + r1 * g.w_group_bytes;
        __m512 acc[NC], accm[NC];
        for (int n = 0; n < NC; ++n) acc[n] = accm[n] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb4; b += 4) {
            const uint8_t* b0 = w0 + b * B;
            const uint8_t* b1 = w1 + b * B;
            IQKQ_PREFETCH((const char*)(b0 + kPrefetch), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(b0 + kPrefetch + 64), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(b1 + kPrefetch), _MM_HINT_T0);
            IQKQ_PREFETCH((const char*)(b1 + kPrefetch + 64), _MM_HINT_T0);
            const __m256 d8 = scales8<B>(b0, b1);
            const __m512 dw = _mm512_permutexvar_ps(lane_order, _mm512_castps256_ps512(d8));
            __m512i lo01, hi01, lo23, hi23;
            codes4<Dec>(b0, b1, tvb, lo01, hi01);
            codes4<Dec>(b0 + 2 * B, b1 + 2 * B, tvb, lo23, hi23);
            const __m512 dm = _mm512_mul_ps(dw, mmin);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* pg = preps[n] + kPrepGroup * (b / 4);
                auto bc = [pg](int off) {
                    return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pg + off)));
                };
                // iq4_nl: biased codes (unsigned), the prepared correction in the d * s slot.
                const __m512i x01 = udot(lo01, bc(64)), y01 = udot(hi01, bc(96));
                const __m512i x23 = udot(lo23, bc(128)), y23 = udot(hi23, bc(160));
                __m512i P = hadd_lanes(hadd_lanes(x01, x23), hadd_lanes(y01, y23));
                if constexpr (kSigned) P = _mm512_add_epi32(P, bc(32));
                const __m512 da = _mm512_broadcast_f32x8(_mm256_loadu_ps(reinterpret_cast<const float*>(pg)));
                if constexpr (!kSigned) {
                    const __m512 ds = _mm512_broadcast_f32x8(_mm256_loadu_ps(reinterpret_cast<const float*>(pg + 32)));
                    accm[n] = _mm512_add_ps(accm[n], _mm512_mul_ps(dm, ds));
                }
                acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(P), acc[n]);
            }
        }
        for (int64_t b = nb4; b < nb; ++b) {
            const uint8_t* b0 = w0 + b * B;
            const uint8_t* b1 = w1 + b * B;
            const float d0 = _cvtsh_ss(rd_u16(b0)), d1 = _cvtsh_ss(rd_u16(b1));
            const __m512i wq = join(Dec::codes(b0), Dec::codes(b1));
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + act::kQ82Bytes * b;
                const float da = bf16_to_fp32(rd_u16(ab + act::kQ82D));
                const __m512i a = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab + act::kQ82Qs)));
                const __m512i p = kSigned ? sdot(wq, a) : udot(wq, a);
                const __m512i pp = join(_mm256_permutevar8x32_epi32(_mm512_castsi512_si256(p), to_p),
                                        _mm256_permutevar8x32_epi32(_mm512_extracti64x4_epi64(p, 1), to_p));
                if constexpr (!kSigned) {
                    const float s = (float)(int16_t)rd_u16(ab + act::kQ82S);
                    const float m0 = (-d0 * (float)D::kMin) * (da * s), m1 = (-d1 * (float)D::kMin) * (da * s);
                    accm[n] = _mm512_add_ps(accm[n], joinf(_mm256_set1_ps(m0 * 0.25f), _mm256_set1_ps(m1 * 0.25f)));
                }
                const __m512 c = joinf(_mm256_set1_ps(d0 * da), _mm256_set1_ps(d1 * da));
                acc[n] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(pp), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) {
            alignas(64) float a[16], m[16];
            _mm512_store_ps(a, acc[n]);
            _mm512_store_ps(m, accm[n]);
            for (int h = 0; h < (pair ? 2 : 1); ++h) {
                const float* x = a + 8 * h;
                const float* y = m + 8 * h;
                float out;
                if constexpr (kSigned) {
                    out = ((x[0] + x[2]) + (x[1] + x[3])) + ((x[4] + x[6]) + (x[5] + x[7]));
                } else {
                    const float v0 = (x[0] + x[2]) + y[0], v2 = (x[1] + x[3]) + y[1];
                    const float v1 = (x[4] + x[6]) + y[4], v3 = (x[5] + x[7]) + y[5];
                    out = (v0 + v2) + (v1 + v3);
                }
                g.C[(n0 + n) * g.ldc + (h ? r1 : r0)] = out;
            }
        }
    }
}

template <typename Dec>
void gemm_base(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_base_cols<Dec, 1>, gemm_base_cols<Dec, 2>, gemm_base_cols<Dec, 3>,
                                 gemm_base_cols<Dec, 4>};
    for_column_chunks(g, fns, 4);
}

// ---------------------------------------------------------------- 4-row twins
// q5_0_r4 / q6_0_r4 / iq4_nl_r4: two row groups (i, i + groups/2) per 512-bit register, each
// 256-bit half doing what kernels/avx2/legacy.cpp gemm_r4_cols does for one group.
inline __m512i load2x32(const uint8_t* lo, const uint8_t* hi) { return join(load32(lo), load32(hi)); }

// The four code vectors of the blocks b0 (low half) and b1 (high half): what r4_prepare
// (kernels/avx2/legacy_dec.h) makes of one block, decoded at 512 bits, with the dwords of each
// half in the pair order below. iq4_nl_r4 gets its
// codebook values plus 128 (table tv: all of them fit in a byte, 1..241), so that they are the
// unsigned operand of dpbusd; the extra 128 * sum(x) is taken off by the column's correction.
template <int kR4Type>
inline void r4_prepare2(const uint8_t* b0, const uint8_t* b1, __m512i tv, __m512i q[4]) {
    // Dword order of every 256-bit half [r0 lo, r0 hi, r1 lo, r1 hi, ..] (see r4_block): the
    // quant bytes are permuted once before the nibbles are split (2 permutes for 4 vectors).
    const __m512i pair_order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    const __m512i m4 = _mm512_set1_epi8(0xf);
    constexpr int qs_off = kR4Type == T_Q5_0_R4 ? 24 : kR4Type == T_Q6_0_R4 ? 40 : 8;
    const __m512i bits1 = _mm512_permutexvar_epi32(pair_order, load2x32(b0 + qs_off, b1 + qs_off));
    const __m512i bits2 = _mm512_permutexvar_epi32(pair_order, load2x32(b0 + qs_off + 32, b1 + qs_off + 32));
    q[0] = _mm512_and_si512(bits1, m4);
    q[1] = _mm512_and_si512(bits2, m4);
    q[2] = _mm512_and_si512(_mm512_srli_epi16(bits1, 4), m4);
    q[3] = _mm512_and_si512(_mm512_srli_epi16(bits2, 4), m4);
    if constexpr (kR4Type == T_IQ4_NL_R4) {
        for (int j = 0; j < 4; ++j) q[j] = _mm512_shuffle_epi8(tv, q[j]);
    } else {
        __m512i hb, mh;
        if constexpr (kR4Type == T_Q5_0_R4) {
            // 128-bit lanes [h0, h0 >> 1, h1, h1 >> 1] (h0, h1: the 16 high-bit bytes of b0,
            // b1), in the pair order: one permute of z = [h0, h1, h0 >> 1, h1 >> 1].
            const __m256i hh = join2x128(b0 + 8, b1 + 8);
            const __m512i z = join(hh, _mm256_srli_epi16(hh, 1));
            hb = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15), z);
            mh = _mm512_set1_epi8(0x10);
        } else {
            hb = _mm512_permutexvar_epi32(pair_order, load2x32(b0 + 8, b1 + 8));
            mh = _mm512_set1_epi8(0x30);
        }
        // q | (shifted & mh)
        q[0] = _mm512_ternarylogic_epi32(q[0], _mm512_slli_epi16(hb, 4), mh, 0xf8);
        q[1] = _mm512_ternarylogic_epi32(q[1], _mm512_slli_epi16(hb, 2), mh, 0xf8);
        q[2] = _mm512_ternarylogic_epi32(q[2], hb, mh, 0xf8);
        q[3] = _mm512_ternarylogic_epi32(q[3], _mm512_srli_epi16(hb, 2), mh, 0xf8);
    }
}

// Prepared activations of the r4 twins (prepare_r4, once per matmul), 48 bytes per block:
// the 32 quants as 4 x 8 bytes [quants 4j..4j+3 | 16+4j..16+4j+3], so that activation dword
// pair j is one 64-bit broadcast from memory (no shuffles per column); then d (f32), the offset
// term half_min * (d * s) (f32; q5_0_r4 / q6_0_r4) and, for iq4_nl_r4, -128 * (sum of quants
// 0..15) and -128 * (sum of 16..31) (int32), the correction of the biased codebook.
constexpr int kR4Prep = 48;
template <int kR4Type>
void prepare_r4(const uint8_t* a, uint8_t* out, int64_t K) {
    const float half_min = kR4Type == T_Q5_0_R4 ? -8.0f : -16.0f;
    const int64_t nb = K / kBlock, nb4 = 4 * (nb / 4);
    for (int64_t b = 0; b < nb; ++b, out += kR4Prep) {
        const uint8_t *qs, *dp, *sp;
        if (b < nb4) {
            const uint8_t* grp = a + act::kQ82GroupBytes * (b / 4);
            qs = grp + act::kQ82GroupQs + 32 * (b % 4);
            dp = grp + act::kQ82GroupD + 2 * (b % 4);
            sp = grp + act::kQ82GroupS + 2 * (b % 4);
        } else {
            const uint8_t* blk = a + act::kQ82Bytes * b;
            qs = blk + act::kQ82Qs;
            dp = blk + act::kQ82D;
            sp = blk + act::kQ82S;
        }
        for (int j = 0; j < 4; ++j) {
            std::memcpy(out + 8 * j, qs + 4 * j, 4);
            std::memcpy(out + 8 * j + 4, qs + 16 + 4 * j, 4);
        }
        const float d = bf16_to_fp32(rd_u16(dp));
        wr_f32(out + 32, d);
        wr_f32(out + 36, kR4Type == T_IQ4_NL_R4 ? 0.0f : half_min * (d * (float)(int16_t)rd_u16(sp)));
        int32_t c[2] = {0, 0};
        if (kR4Type == T_IQ4_NL_R4)
            for (int h = 0; h < 2; ++h) {
                for (int e = 0; e < 16; ++e) c[h] += (int8_t)qs[16 * h + e];
                c[h] *= -128;
            }
        std::memcpy(out + 40, c, 8);
    }
}
size_t prepared_r4_bytes(int64_t K) { return (size_t)(K / kBlock) * kR4Prep; }

// One block of the row groups w0 / w1 times NC columns (prepared blocks pb[n]). The codes are
// moved to the prepared pair order: per 256-bit half, dwords [r0 lo, r0 hi, r1 lo, r1 hi, ..]
// (lo / hi: the element quads 4j.. / 16+4j..), permuted while decoding, shared by every
// column (r4_prepare2); each lane then takes the float operations of its lane in the AVX2 kernel.
template <int kR4Type, int NC>
inline void r4_block(const uint8_t* b0, const uint8_t* b1, __m512i tv, const uint8_t* const* pb, __m512* acc) {
    constexpr bool kOffset = kR4Type != T_IQ4_NL_R4;
    // Each of the two group streams 16 KiB ahead into L2 (Zen 4 ab_builds --cold N = 1, 1
    // thread, both orders, against 2 KiB into L1: q6_0_r4 x1.16-1.21, q5_0_r4 x1.00-1.05,
    // iq4_nl_r4 x1.00; 2 threads x0.99-1.04; hot N = 1..32 within +-5 %).
    constexpr int kR4Prefetch = 16384;
    IQKQ_PREFETCH((const char*)(b0 + kR4Prefetch), _MM_HINT_T1);
    IQKQ_PREFETCH((const char*)(b0 + kR4Prefetch + 64), _MM_HINT_T1);
    IQKQ_PREFETCH((const char*)(b1 + kR4Prefetch), _MM_HINT_T1);
    IQKQ_PREFETCH((const char*)(b1 + kR4Prefetch + 64), _MM_HINT_T1);
    const __m128 s0 = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b0)));
    const __m128 s1 = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b1)));
    const __m512 dw = joinf(_mm256_set_m128(_mm_unpackhi_ps(s0, s0), _mm_unpacklo_ps(s0, s0)),
                            _mm256_set_m128(_mm_unpackhi_ps(s1, s1), _mm_unpacklo_ps(s1, s1)));
    __m512i q[4];
    r4_prepare2<kR4Type>(b0, b1, tv, q);
    for (int n = 0; n < NC; ++n) {
        const uint8_t* p = pb[n];
        __m512i sumi = kR4Type == T_IQ4_NL_R4 ? avx512::bcast_qword(p + 40) : _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) sumi = _mm512_dpbusd_epi32(sumi, q[j], avx512::bcast_qword(p + 8 * j));
        float d, m;
        std::memcpy(&d, p + 32, 4);
        std::memcpy(&m, p + 36, 4);
        acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(d)), _mm512_cvtepi32_ps(sumi), acc[n]);
        if constexpr (kOffset) acc[n] = _mm512_fmadd_ps(dw, _mm512_set1_ps(m), acc[n]);
    }
}

// [r0 lo, r0 hi, r1 lo, r1 hi, r2 lo, r2 hi, r3 lo, r3 hi] -> r_k = lo + hi (the AVX2 kernel's
// final lo-half + hi-half add).
inline __m128 pair_sums(__m256 v) {
    const __m256 s = _mm256_add_ps(_mm256_shuffle_ps(v, v, 0x88), _mm256_shuffle_ps(v, v, 0xdd));
    return _mm256_castps256_ps128(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0x08)));
}

template <int kR4Type, int NC>
void gemm_r4_cols(const GemmArgs& g, int64_t n0) {
    constexpr bool kNl = kR4Type == T_IQ4_NL_R4;
    constexpr int B = 4 * (kR4Type == T_Q5_0_R4 ? kQ5Bytes : kR4Type == T_Q6_0_R4 ? kQ6Bytes : kNlBytes);
    const int64_t nb = g.K / kBlock;
    const uint8_t* prep[NC];
    for (int n = 0; n < NC; ++n) prep[n] = g.P + (n0 + n) * g.p_row_bytes;
    const __m512i tv = kNl ? biased_nl_table() : _mm512_setzero_si512();
    const int64_t ngroups = g.nrows / 4, half = ngroups / 2;
    for (int64_t i = 0; i < half + (ngroups & 1); ++i) {
        const bool pair = i < half;
        const int64_t g0 = pair ? i : ngroups - 1, g1 = pair ? i + half : g0;
        const uint8_t* w0 = g.W + g0 * g.w_group_bytes;
        const uint8_t* w1 = g.W + g1 * g.w_group_bytes;
        __m512 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* pb[NC];
            for (int n = 0; n < NC; ++n) pb[n] = prep[n] + kR4Prep * b;
            r4_block<kR4Type, NC>(w0 + b * B, w1 + b * B, tv, pb, acc);
        }
        for (int n = 0; n < NC; ++n) {
            _mm_storeu_ps(g.C + (n0 + n) * g.ldc + g0 * 4, pair_sums(_mm512_castps512_ps256(acc[n])));
            if (pair) _mm_storeu_ps(g.C + (n0 + n) * g.ldc + g1 * 4, pair_sums(_mm512_extractf32x8_ps(acc[n], 1)));
        }
    }
}

template <int kR4Type>
void gemm_r4(const GemmArgs& g) {
    // Up to 8 columns per pass: the weights are decoded once for all of them.
    static const ColsFn fns[] = {nullptr,
                                 gemm_r4_cols<kR4Type, 1>,
                                 gemm_r4_cols<kR4Type, 2>,
                                 gemm_r4_cols<kR4Type, 3>,
                                 gemm_r4_cols<kR4Type, 4>,
                                 gemm_r4_cols<kR4Type, 5>,
                                 gemm_r4_cols<kR4Type, 6>,
                                 gemm_r4_cols<kR4Type, 7>,
                                 gemm_r4_cols<kR4Type, 8>};
    for_column_chunks(g, fns, 8);
}

// ---------------------------------------------------------------- q4_0_r8
// Two 8-row groups (i, i + groups/2) per 512-bit register; each 256-bit half does what
// kernels/avx2/legacy.cpp does for one group (multi-column and one-column float orders).
inline void r8_prepare2(const uint8_t* b0, const uint8_t* b1, __m512i v[8]) {
    const __m512i m4 = _mm512_set1_epi8(0xf);
    for (int l = 0; l < 4; ++l) {
        const __m512i bits = join(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 16 + 32 * l)),
                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b1 + 16 + 32 * l)));
        v[l] = _mm512_and_si512(bits, m4);
        v[l + 4] = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
    }
}
inline __m512i r8_dot2(const __m512i v[8], const uint8_t* q) {
    // v[l] pairs with dword l of the low 16 quants, v[l + 4] with dword l of the high 16.
    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[0], avx512::bcast_dword(q));
    s = _mm512_dpbusd_epi32(s, v[1], avx512::bcast_dword(q + 4));
    s = _mm512_dpbusd_epi32(s, v[2], avx512::bcast_dword(q + 8));
    s = _mm512_dpbusd_epi32(s, v[3], avx512::bcast_dword(q + 12));
    s = _mm512_dpbusd_epi32(s, v[4], avx512::bcast_dword(q + 16));
    s = _mm512_dpbusd_epi32(s, v[5], avx512::bcast_dword(q + 20));
    s = _mm512_dpbusd_epi32(s, v[6], avx512::bcast_dword(q + 24));
    return _mm512_dpbusd_epi32(s, v[7], avx512::bcast_dword(q + 28));
}
inline __m512 r8_scales2(const uint8_t* b0, const uint8_t* b1) {
    return _mm512_cvtph_ps(join2x128(b0, b1));
}

// No software prefetch (as ik's kernel): with 3 lines 2 KiB ahead of both streams, cold N=1 ran
// x0.86-0.87 at 1 thread on Zen 4 (2 vCPUs, ab_builds --cold, both orders), equal at 2.
template <int NC, bool kSingle>
void gemm_q4_0_r8_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    const __m512 m8 = _mm512_set1_ps(-8.0f);
    const int64_t ngroups = g.nrows / 8, half = ngroups / 2;
    for (int64_t i = 0; i < half + (ngroups & 1); ++i) {
        const bool pair = i < half;
        const int64_t g0 = pair ? i : ngroups - 1, g1 = pair ? i + half : g0;
        const uint8_t* w0 = g.W + g0 * g.w_group_bytes;
        const uint8_t* w1 = g.W + g1 * g.w_group_bytes;
        __m512 acc[NC], acc2[NC];
        for (int n = 0; n < NC; ++n) acc[n] = acc2[n] = _mm512_setzero_ps();
        // Per column, the activation scale d and d * s of the current group of 4 blocks,
        // converted 4 at a time into memory (broadcast loads later; same float operations).
        alignas(16) float da4[NC][4], mm4[NC][4];
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* b0 = w0 + b * kR8Q4Bytes;
            const uint8_t* b1 = w1 + b * kR8Q4Bytes;
            const __m512 dw = r8_scales2(b0, b1);
            const int k = (int)(b % 4);
            if (b < nb4 && k == 0) {
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* ag = acts[n] + act::kQ82GroupBytes * (b / 4);
                    const __m128 d = _mm_castsi128_ps(
                        _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ag + act::kQ82GroupD))), 16));
                    const __m128 m = _mm_cvtepi32_ps(_mm_cvtepi16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ag + act::kQ82GroupS))));
                    _mm_store_ps(da4[n], d);
                    _mm_store_ps(mm4[n], _mm_mul_ps(d, m));
                }
                if (!kSingle) {
                    __m512 d4[4];
                    d4[0] = dw;
                    for (int kk = 1; kk < 4; ++kk) d4[kk] = r8_scales2(b0 + kk * kR8Q4Bytes, b1 + kk * kR8Q4Bytes);
                    for (int n = 0; n < NC; ++n) {
                        __m512 sf = _mm512_mul_ps(d4[0], _mm512_set1_ps(mm4[n][0]));
                        for (int kk = 1; kk < 4; ++kk) sf = _mm512_fmadd_ps(d4[kk], _mm512_set1_ps(mm4[n][kk]), sf);
                        acc[n] = _mm512_fmadd_ps(sf, m8, acc[n]);
                    }
                }
            } else if (b >= nb4) {
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* a = acts[n] + act::kQ82Bytes * b;
                    da4[n][0] = bf16_to_fp32(rd_u16(a + act::kQ82D));
                    mm4[n][0] = da4[n][0] * (float)(int16_t)rd_u16(a + act::kQ82S);
                }
            }
            const int ks = b < nb4 ? k : 0;
            __m512i v[8];
            r8_prepare2(b0, b1, v);
            const __m512 dwm = _mm512_mul_ps(dw, m8);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* a = acts[n];
                const __m512i sumi = r8_dot2(v, a + act::q82_qs_offset(b, nb4));
                acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(da4[n][ks])), _mm512_cvtepi32_ps(sumi), acc[n]);
                if (kSingle) acc2[n] = _mm512_fmadd_ps(dw, _mm512_set1_ps(mm4[n][ks]), acc2[n]);
                else if (b >= nb4) acc[n] = _mm512_fmadd_ps(dwm, _mm512_set1_ps(mm4[n][ks]), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) {
            const __m512 y = kSingle ? _mm512_fmadd_ps(acc2[n], m8, acc[n]) : acc[n];
            _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + g0 * 8, _mm512_castps512_ps256(y));
            if (pair) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + g1 * 8, _mm512_extractf32x8_ps(y, 1));
        }
    }
}

void gemm_q4_0_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr,
                                 gemm_q4_0_r8_cols<1, false>,
                                 gemm_q4_0_r8_cols<2, false>,
                                 gemm_q4_0_r8_cols<3, false>,
                                 gemm_q4_0_r8_cols<4, false>,
                                 gemm_q4_0_r8_cols<5, false>,
                                 gemm_q4_0_r8_cols<6, false>,
                                 gemm_q4_0_r8_cols<7, false>,
                                 gemm_q4_0_r8_cols<8, false>};
    for_column_chunks(g, fns, 8, gemm_q4_0_r8_cols<1, true>);
}

}  // namespace

void register_avx512_legacy(KernelTables& t) {
    // The prepared activation layout (prepare_act) is the AVX2 one, inherited from that set.
    t.types[T_Q4_0].gemm = gemm_base<DecQ4>;
    t.types[T_Q5_0].gemm = gemm_base<DecQ5>;
    t.types[T_Q6_0].gemm = gemm_base<DecQ6>;
    t.types[T_IQ4_NL].gemm = gemm_base<DecNL>;
    t.types[T_IQ4_NL].prepare_act = prepare_nl;  // same size as the AVX2 layout
    t.types[T_Q5_0_R4].gemm = gemm_r4<T_Q5_0_R4>;
    t.types[T_Q6_0_R4].gemm = gemm_r4<T_Q6_0_R4>;
    t.types[T_IQ4_NL_R4].gemm = gemm_r4<T_IQ4_NL_R4>;
    t.types[T_Q5_0_R4].prepare_act = prepare_r4<T_Q5_0_R4>;
    t.types[T_Q6_0_R4].prepare_act = prepare_r4<T_Q6_0_R4>;
    t.types[T_IQ4_NL_R4].prepare_act = prepare_r4<T_IQ4_NL_R4>;
    for (int type : {T_Q5_0_R4, T_Q6_0_R4, T_IQ4_NL_R4}) t.types[type].prepared_bytes = prepared_r4_bytes;
    t.types[T_Q4_0_R8].gemm = gemm_q4_0_r8;
}

}  // namespace iqkq
