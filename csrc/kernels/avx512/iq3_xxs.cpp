// AVX-512 matmul kernels for iq3_xxs and iq3_xxs_r4: kernel (D) iq3_xxs x q8_K and kernel (F)
// iq3_xxs_r4 x q8_K of docs/formats.md §11.3. Compiled with the AVX-512 flags (CMakeLists.txt) and
// used only on CPUs with F, VL, BW, DQ, VNNI and VBMI (dispatch.cpp).
//
// Decoding without table loads: 64 grid indices (one 512-bit register) at a time.
//  1. Each grid point is 4 levels l0..l3 (0..7; magnitude 4, 12, ..., 52, 62). Two 256-entry
//     byte tables give the levels as nibbles, lo = l0 | l1 << 4 and hi = l2 | l3 << 4; each
//     lookup is two VPERMT2B over 128-byte halves and a blend on bit 7 of the index.
//  2. Per output register (64 weights = 16 indices) one VPERMT2B places the lo/hi bytes of
//     indices 2t and 2t+1 in quadword t, VPMULTISHIFTQB moves the level of each of the 8
//     weights of that quadword to the bottom of its byte, and VPERMB maps it to 64 + g.
//  3. Signs: bit p of a 64-bit mask says weight p is negative; a masked byte subtraction
//     turns 64 + g into 64 - g. The iq3_xxs masks are ksigns (VPERMT2B over the 128-entry
//     table) of 7-bit fields cut out of the sas words by VPMULTISHIFTQB.
// The unsigned weights u = 64 + sigma*g are then multiplied with the activations as in the
// AVX2 kernels, the offset 64 being removed with the q8_K block sums:
//  * (D), one row at a time: VPMADDUBSW, then VPMADDWD / VPDPWSSD with the block multipliers
//    2*sc + 1 (tried instead: VPDPBUSD + VPMULLD, and VPDPBUSD on u/2 with two blocks paired
//    per VPMADDWD; neither was faster on Zen 4);
//  * (F), two row groups at a time (see gemm_f8): four chained VPDPBUSD per half block and
//    one VPMULLD per block, with the activations rearranged once per tile; a lone row group
//    uses the one-group kernel.
// All integer sums are exact and the float operations are those of (D) / (F) in the same
// order, so the results are bit-identical to the scalar and AVX2 kernels.
#include "common.h"
#include "formats/act.h"
#include "formats/iq3_xxs.h"
#include "kernels/avx2/simd.h"
#include "kernels/avx512/simd.h"
#include "types.h"

#include <cstdlib>
#include <immintrin.h>

// GCC 12 reports the _mm512_undefined_*() pass-through operands inside its own intrinsic
// headers as "maybe uninitialized" once they are inlined here; they are never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace iqkq {
namespace {
using namespace iq3;
using avx2::hsum8;

inline __m512i ld64(const void* p) { return _mm512_loadu_si512(p); }
inline __m256i ld32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// ------------------------------------------------------------------------------------------
// Tables.

// Level nibbles of the 256 grid points (filled by register_avx512_iq3_xxs from kGrid: this
// translation unit must not run code before the CPU check, so no dynamic initialisers).
alignas(64) uint8_t gSeedLo[256];  // l0 | l1 << 4
alignas(64) uint8_t gSeedHi[256];  // l2 | l3 << 4
alignas(64) uint8_t gSigns[128];   // ksigns_iq2xs

// Byte patterns and controls, all compile-time constants.
struct Patterns {
    // VPERMT2B over (lo, hi) seeds: output register j of a 64-index register. Quadword t
    // gets lo, hi of index I[2t] and of index I[2t+1] in bytes 0..3 (bytes 4..7 unused).
    //   iq3_xxs   (j = 0..3): I[k] = 16j + k            (blocks 2j, 2j+1)
    //   iq3_xxs_r4 (j = r):   I[k] = 8r + k (k < 8), 32 + 8r + k - 8 (k >= 8)
    //                         (row r of the two blocks the register holds)
    uint8_t expand[8][64];
    // VPMULTISHIFTQB: byte e of a quadword = level e%4 of index e/4 (bit 16*(e/4) + 4*(e%4)).
    uint8_t level_shift[64];
    // VPERMB: 64 + magnitude of level (e & 7).
    uint8_t offset_mag[64];
    // iq3_xxs sign fields: quadword = sas words 2c, 2c+1; byte e = bits 7*(e%4) + 32*(e/4).
    uint8_t sign_shift[32];
};

constexpr Patterns make_patterns() {
    Patterns p{};
    for (int j = 0; j < 8; ++j) {
        for (int t = 0; t < 8; ++t) {
            for (int h = 0; h < 2; ++h) {
                const int k = 2 * t + h;
                int I = 0;
                if (j < 4) I = 16 * j + k;
                else I = k < 8 ? 8 * (j - 4) + k : 32 + 8 * (j - 4) + (k - 8);
                p.expand[j][8 * t + 2 * h] = (uint8_t)I;           // lo table
                p.expand[j][8 * t + 2 * h + 1] = (uint8_t)(64 + I);  // hi table
            }
            for (int e = 4; e < 8; ++e) p.expand[j][8 * t + e] = 0;
        }
    }
    const uint8_t mag[8] = {4, 12, 20, 28, 36, 44, 52, 62};
    for (int i = 0; i < 64; ++i) {
        const int e = i % 8;
        p.level_shift[i] = (uint8_t)(16 * (e / 4) + 4 * (e % 4));
        p.offset_mag[i] = (uint8_t)(64 + mag[i & 7]);
    }
    for (int i = 0; i < 32; ++i) {
        const int e = i % 8;
        p.sign_shift[i] = (uint8_t)(32 * (e / 4) + 7 * (e % 4));
    }
    return p;
}
alignas(64) constexpr Patterns kP = make_patterns();

// VPERMD patterns of the block multipliers.
//   iq3_xxs: register j = blocks 2j (lanes 0..7), 2j+1 (lanes 8..15) of the 8 multipliers.
//   iq3_xxs_r4: register (cc, r) = dword 8cc + r (lanes 0..7), 8cc + 4 + r (lanes 8..15) of
//   the 16 (block, row) multipliers of four blocks; the sign words use the same pairs.
struct DwordPatterns {
    int32_t d[4][16];
    int32_t f[8][16];
    int32_t f_signs[16];
};
constexpr DwordPatterns make_dword_patterns() {
    DwordPatterns p{};
    for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 16; ++l) p.d[j][l] = 2 * j + l / 8;
    for (int cc = 0; cc < 2; ++cc)
        for (int r = 0; r < 4; ++r)
            for (int l = 0; l < 16; ++l) p.f[4 * cc + r][l] = 8 * cc + 4 * (l / 8) + r;
    for (int q = 0; q < 8; ++q) {  // quadword q = 4cc + r
        p.f_signs[2 * q] = 8 * (q / 4) + q % 4;
        p.f_signs[2 * q + 1] = 8 * (q / 4) + 4 + q % 4;
    }
    return p;
}
alignas(64) constexpr DwordPatterns kD = make_dword_patterns();

// ------------------------------------------------------------------------------------------
// Decoding helpers.

// lo / hi level nibbles of 64 grid indices.
inline void grid_seeds(__m512i idx, __m512i& lo, __m512i& hi) {
    const __mmask64 top = _mm512_movepi8_mask(idx);
    const __m512i l0 = _mm512_permutex2var_epi8(ld64(gSeedLo), idx, ld64(gSeedLo + 64));
    const __m512i l1 = _mm512_permutex2var_epi8(ld64(gSeedLo + 128), idx, ld64(gSeedLo + 192));
    const __m512i h0 = _mm512_permutex2var_epi8(ld64(gSeedHi), idx, ld64(gSeedHi + 64));
    const __m512i h1 = _mm512_permutex2var_epi8(ld64(gSeedHi + 128), idx, ld64(gSeedHi + 192));
    lo = _mm512_mask_blend_epi8(top, l0, l1);
    hi = _mm512_mask_blend_epi8(top, h0, h1);
}

// 64 unsigned weights 64 + sigma*g of output register j (see Patterns::expand).
inline __m512i offset_weights(__m512i lo, __m512i hi, int j, __mmask64 neg) {
    const __m512i src = _mm512_permutex2var_epi8(lo, ld64(kP.expand[j]), hi);
    const __m512i lev = _mm512_multishift_epi64_epi8(ld64(kP.level_shift), src);
    const __m512i pos = _mm512_permutexvar_epi8(lev, ld64(kP.offset_mag));
    return _mm512_mask_sub_epi8(pos, neg, _mm512_set1_epi8((char)128), pos);
}

// ------------------------------------------------------------------------------------------
// Kernel (D): iq3_xxs x q8_K.

struct DecD {
    __m512i u[4];    // weights of blocks 2j, 2j+1
    __m512i sc[4];   // multipliers 2*sc + 1 (two int16 copies): block 2j in lanes 0..7, 2j+1 in 8..15
    __m256i mults;   // multiplier of block b as two int16 copies (dword b)
    __m256 dx;       // 0.25 * d in every lane
    __m256 mdx64;    // -dx * 64 in every lane
};

inline void decode_d(const uint8_t* blk, DecD& D) {
    const __m256i sas = ld32(blk + kSasOff);
    const __m256i fields = _mm256_multishift_epi64_epi8(ld32(kP.sign_shift), sas);
    const __m512i sg = _mm512_permutex2var_epi8(ld64(gSigns), _mm512_zextsi256_si512(fields), ld64(gSigns + 64));
    alignas(32) uint64_t neg[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(neg), _mm512_castsi512_si256(sg));
    // Read the masks back with KMOVQ from memory: cheaper than moving them out of the vector
    // register through general-purpose registers, which is what the compiler does otherwise.
    __asm__ volatile("" : "+m"(neg));
    __m512i lo, hi;
    grid_seeds(ld64(blk + kQsOff), lo, hi);
    for (int j = 0; j < 4; ++j) D.u[j] = offset_weights(lo, hi, j, _cvtu64_mask64(neg[j]));
    const __m256i sc8 = _mm256_or_si256(_mm256_srli_epi32(sas, 27), _mm256_set1_epi32(1));  // 2*(sas >> 28) + 1
    D.mults = _mm256_or_si256(sc8, _mm256_slli_epi32(sc8, 16));
    for (int j = 0; j < 4; ++j) D.sc[j] = _mm512_permutexvar_epi32(ld64(kD.d[j]), _mm512_zextsi256_si512(D.mults));
    // The scalar products of (D), computed in all 8 lanes (same IEEE operations in each).
    const __m256 d = _mm256_cvtph_ps(_mm_set1_epi16((short)rd_u16(blk)));
    D.dx = _mm256_mul_ps(_mm256_set1_ps(0.25f), d);
    D.mdx64 = _mm256_mul_ps(_mm256_xor_ps(D.dx, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(64.0f));
}

// The per-super-block float updates of (D) for one column: fma(cm, M, acc), then fma(c, S, acc).
inline __m256 d_update(__m256 acc, const uint8_t* as, const DecD& D, __m256i S) {
    const __m256 dA = _mm256_set1_ps(rd_f32(as));
    const __m256i M = _mm256_madd_epi16(ld32(as + act::kQ8KBsums), D.mults);
    acc = _mm256_fmadd_ps(_mm256_mul_ps(D.mdx64, dA), _mm256_cvtepi32_ps(M), acc);
    return _mm256_fmadd_ps(_mm256_mul_ps(D.dx, dA), _mm256_cvtepi32_ps(S), acc);
}

// S_L of one column: lane L = elements 4L..4L+3 of every block, times the block multiplier.
inline __m256i d_sums(const DecD& D, const uint8_t* as) {
    __m512i s0 = _mm512_madd_epi16(_mm512_maddubs_epi16(D.u[0], ld64(as + act::kQ8KQs)), D.sc[0]);
    __m512i s1 = _mm512_madd_epi16(_mm512_maddubs_epi16(D.u[1], ld64(as + 72)), D.sc[1]);
    s0 = _mm512_dpwssd_epi32(s0, _mm512_maddubs_epi16(D.u[2], ld64(as + 136)), D.sc[2]);
    s1 = _mm512_dpwssd_epi32(s1, _mm512_maddubs_epi16(D.u[3], ld64(as + 200)), D.sc[3]);
    const __m512i s = _mm512_add_epi32(s0, s1);
    return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

template <int NC>
inline void d_cols(const DecD& D, const uint8_t* as, size_t astride, __m256* acc) {
    for (int n = 0; n < NC; ++n) acc[n] = d_update(acc[n], as + n * astride, D, d_sums(D, as + n * astride));
}

// NC <= 8 columns, accumulators in registers.
template <int NC>
void gemm_d_small(const GemmArgs& g) {
    const int64_t nbl = g.K / kQK;
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nbl; ++i) {
            DecD D;
            decode_d(w + i * kBytes, D);
            d_cols<NC>(D, g.A + act::kQ8KBytes * i, g.a_row_bytes, acc);
        }
        for (int n = 0; n < NC; ++n) g.C[n * g.ldc + r] = hsum8(acc[n]);
    }
}

constexpr int kMaxCols = 64;

// Any number of columns (<= kMaxCols): each super-block decoded once, columns 8 at a time.
void gemm_d_many(const GemmArgs& g, int64_t n0, int nc) {
    const int64_t nbl = g.K / kQK;
    const uint8_t* A = g.A + n0 * g.a_row_bytes;
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[kMaxCols];
        for (int n = 0; n < nc; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nbl; ++i) {
            DecD D;
            decode_d(w + i * kBytes, D);
            const uint8_t* as = A + act::kQ8KBytes * i;
            int n = 0;
            for (; n + 8 <= nc; n += 8) d_cols<8>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n);
            if (n + 4 <= nc) {
                d_cols<4>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n);
                n += 4;
            }
            switch (nc - n) {
                case 3: d_cols<3>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                case 2: d_cols<2>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                case 1: d_cols<1>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                default: break;
            }
        }
        for (int n = 0; n < nc; ++n) g.C[(n0 + n) * g.ldc + r] = hsum8(acc[n]);
    }
}

void gemm_iq3_xxs(const GemmArgs& g) {
    switch (g.ncols) {
        case 1: gemm_d_small<1>(g); return;
        case 2: gemm_d_small<2>(g); return;
        case 3: gemm_d_small<3>(g); return;
        case 4: gemm_d_small<4>(g); return;
        case 5: gemm_d_small<5>(g); return;
        case 6: gemm_d_small<6>(g); return;
        case 7: gemm_d_small<7>(g); return;
        case 8: gemm_d_small<8>(g); return;
        default: break;
    }
    for (int64_t n0 = 0; n0 < g.ncols; n0 += kMaxCols)
        gemm_d_many(g, n0, (int)(g.ncols - n0 < kMaxCols ? g.ncols - n0 : kMaxCols));
}

// ------------------------------------------------------------------------------------------
// Kernel (F): iq3_xxs_r4 x q8_K. Weight register (c, r) = row r of blocks 2c (bytes 0..31) and
// 2c+1 (bytes 32..63), so it meets the activations of the two blocks as loaded. Per column and
// row the products, times the multipliers, are summed into 16 lanes (block parity, element
// quad), folded to the 8 quads, then into the lanes (r, h) of (F) as in the AVX2 kernel.

struct DecF {
    __m512i u[4][4];   // block pair c, row r
    __m512i sc[4][4];  // multipliers of row r (two int16 copies): block 2c in lanes 0..7, 2c+1 in 8..15
    __m256i X[4];      // lane (r, h) of X[t]: int16 pair (mult(r, 2t), mult(r, 2t+1))
    __m256 d8;         // 0.25 * d of row l % 4
};

inline void decode_f(const uint8_t* blk, DecF& D) {
    alignas(64) uint64_t neg[16];  // quadword 4c + r: sign words of row r, blocks 2c and 2c+1
    alignas(64) int32_t mult[32];  // 4b + r
    __m512i scz[2];
    for (int s = 0; s < 2; ++s) {
        const __m512i x = ld64(blk + kR4SasOff + 64 * s);  // blocks 4s..4s+3, dword 4(b-4s) + r
        const __m512i t = _mm512_and_si512(x, _mm512_set1_epi8((char)0xfe));
        const __m512i sg = _mm512_xor_si512(t, _mm512_srli_epi32(t, 1));
        _mm512_store_si512(neg + 8 * s, _mm512_permutexvar_epi32(ld64(kD.f_signs), sg));
        const __m512i bits = _mm512_and_si512(x, _mm512_set1_epi8(1));
        const __m512i m16 = _mm512_maddubs_epi16(bits, _mm512_set1_epi32(0x10080402));
        const __m512i sc = _mm512_add_epi32(_mm512_madd_epi16(m16, _mm512_set1_epi16(1)), _mm512_set1_epi32(1));
        _mm512_store_si512(mult + 16 * s, sc);
        scz[s] = _mm512_or_si512(sc, _mm512_slli_epi32(sc, 16));
    }
    __asm__ volatile("" : "+m"(neg));  // masks: KMOVQ from memory (see decode_d)
    for (int c = 0; c < 4; ++c) {
        __m512i lo, hi;
        grid_seeds(ld64(blk + kR4QsOff + 64 * c), lo, hi);
        for (int r = 0; r < 4; ++r) {
            D.u[c][r] = offset_weights(lo, hi, 4 + r, _cvtu64_mask64(neg[4 * c + r]));
            D.sc[c][r] = _mm512_permutexvar_epi32(ld64(kD.f[4 * (c & 1) + r]), scz[c >> 1]);
        }
    }
    for (int t = 0; t < 4; ++t) {
        const __m128i a = _mm_load_si128(reinterpret_cast<const __m128i*>(mult + 8 * t));
        const __m128i b = _mm_load_si128(reinterpret_cast<const __m128i*>(mult + 8 * t + 4));
        const __m128i x = _mm_or_si128(a, _mm_slli_epi32(b, 16));
        D.X[t] = _mm256_set_m128i(x, x);
    }
    const __m128 dl = _mm_mul_ps(_mm_set1_ps(0.25f), _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk))));
    D.d8 = _mm256_set_m128(dl, dl);
}

// The offset the unsigned weights add, 64 * sum_b mult(r, b) * bsums[2b + h] in lane (r, h).
inline __m256i r4_offset(const __m256i* X, const uint8_t* as) {
    const __m256i bs = ld32(as + act::kQ8KBsums);
    const __m256i lo = _mm256_permute2x128_si256(bs, bs, 0x00), hi = _mm256_permute2x128_si256(bs, bs, 0x11);
    // pair t of blocks: lanes h = 0 take bsums (4t, 4t+2), lanes h = 1 take (4t+1, 4t+3)
    const __m256i p0 = _mm256_setr_epi8(0, 1, 4, 5, 0, 1, 4, 5, 0, 1, 4, 5, 0, 1, 4, 5, 2, 3, 6, 7, 2, 3, 6, 7, 2, 3, 6, 7, 2,
                                        3, 6, 7);
    const __m256i p1 = _mm256_add_epi8(p0, _mm256_set1_epi8(8));
    __m256i c = _mm256_madd_epi16(X[0], _mm256_shuffle_epi8(lo, p0));
    c = _mm256_add_epi32(c, _mm256_madd_epi16(X[1], _mm256_shuffle_epi8(lo, p1)));
    c = _mm256_add_epi32(c, _mm256_madd_epi16(X[2], _mm256_shuffle_epi8(hi, p0)));
    c = _mm256_add_epi32(c, _mm256_madd_epi16(X[3], _mm256_shuffle_epi8(hi, p1)));
    return _mm256_slli_epi32(c, 6);
}

inline __m256i fold(__m512i v) { return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)); }

template <int CB>
inline void f_cols(const DecF& D, const uint8_t* as, size_t astride, __m256* acc) {
    __m512i P[CB][4];
    for (int c = 0; c < 4; ++c) {
        for (int n = 0; n < CB; ++n) {
            const __m512i a = ld64(as + n * astride + 8 + 64 * c);
            for (int r = 0; r < 4; ++r) {
                const __m512i p = _mm512_maddubs_epi16(D.u[c][r], a);
                P[n][r] = c == 0 ? _mm512_madd_epi16(p, D.sc[c][r]) : _mm512_dpwssd_epi32(P[n][r], p, D.sc[c][r]);
            }
        }
    }
    for (int n = 0; n < CB; ++n) {
        const uint8_t* an = as + n * astride;
        const __m256i S = _mm256_hadd_epi32(_mm256_hadd_epi32(fold(P[n][0]), fold(P[n][1])),
                                            _mm256_hadd_epi32(fold(P[n][2]), fold(P[n][3])));
        const __m256i I = _mm256_sub_epi32(S, r4_offset(D.X, an));
        acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(D.d8, _mm256_set1_ps(rd_f32(an))), _mm256_cvtepi32_ps(I), acc[n]);
    }
}

inline void store_r4(float* C, __m256 acc) {
    _mm_storeu_ps(C, _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
}

template <int NC>
void gemm_f_small(const GemmArgs& g) {
    const int64_t nbl = g.K / kQK;
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nbl; ++i) {
            DecF D;
            decode_f(w + i * kR4Bytes, D);
            f_cols<NC>(D, g.A + act::kQ8KBytes * i, g.a_row_bytes, acc);
        }
        for (int n = 0; n < NC; ++n) store_r4(g.C + n * g.ldc + grp * 4, acc[n]);
    }
}

void gemm_f_many(const GemmArgs& g, int64_t n0, int nc) {
    const int64_t nbl = g.K / kQK;
    const uint8_t* A = g.A + n0 * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[kMaxCols];
        for (int n = 0; n < nc; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nbl; ++i) {
            DecF D;
            decode_f(w + i * kR4Bytes, D);
            const uint8_t* as = A + act::kQ8KBytes * i;
            int n = 0;
            for (; n + 4 <= nc; n += 4) f_cols<4>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n);
            switch (nc - n) {
                case 3: f_cols<3>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                case 2: f_cols<2>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                case 1: f_cols<1>(D, as + n * g.a_row_bytes, g.a_row_bytes, acc + n); break;
                default: break;
            }
        }
        for (int n = 0; n < nc; ++n) store_r4(g.C + (n0 + n) * g.ldc + grp * 4, acc[n]);
    }
}

// ------------------------------------------------------------------------------------------
// Kernel (F) for two row groups (8 rows) at a time. Lane l = 8g + 2r + h of a 512-bit register
// holds row r of group g, half h of a block, so that
//  * the four quads of a half meet in one int32 lane through four chained VPDPBUSD, starting
//    from -64 * (block sum of the half): the offset is removed on the way, and one VPMULLD per
//    block applies the eight rows' multipliers;
//  * the activations a lane needs depend only on h: one 64-bit broadcast (quad q of half 0,
//    quad q of half 1, rearranged once per tile) serves all eight rows.
// Register W(b, q) holds quad q of both halves of block b for the 8 rows. The integer I of
// every (F) lane is the same as above; the float operations are those of (F).

struct PatternsF8 {
    uint8_t expand[4][64];  // W(b, q) from the seeds of [group 0 block b | group 1 block b]
    uint8_t mask[2][64];    // VPERMT2B over (V of group 0, V of group 1), see decode_f8
    int32_t sc[4][16];      // VPERMT2D over the multipliers of group 0 / 1: block 4s + bb
    int32_t fin[16];        // lane 8g + 2r + h -> lane 8g + 4h + r
    int32_t act[16];        // activation dwords of two blocks -> (q, 4 + q) pairs
};
constexpr PatternsF8 make_patterns_f8() {
    PatternsF8 p{};
    for (int q = 0; q < 4; ++q)
        for (int t = 0; t < 8; ++t) {
            const int g = t / 4, r = t % 4;
            const int I0 = 32 * g + 8 * r + q, I1 = I0 + 4;
            p.expand[q][8 * t + 0] = (uint8_t)I0;
            p.expand[q][8 * t + 1] = (uint8_t)(64 + I0);
            p.expand[q][8 * t + 2] = (uint8_t)I1;
            p.expand[q][8 * t + 3] = (uint8_t)(64 + I1);
        }
    // V dword (block b - 4s, row r) holds the mask bytes of q = 0, 2, 1, 3.
    for (int k = 0; k < 2; ++k)
        for (int beta = 0; beta < 2; ++beta)
            for (int q = 0; q < 4; ++q)
                for (int t = 0; t < 8; ++t) {
                    const int g = t / 4, r = t % 4;
                    const int pos = (q & 1) * 2 + (q >> 1);
                    p.mask[k][8 * (4 * beta + q) + t] = (uint8_t)(64 * g + 4 * (4 * (2 * k + beta) + r) + pos);
                }
    for (int bb = 0; bb < 4; ++bb)
        for (int l = 0; l < 16; ++l) p.sc[bb][l] = 16 * (l / 8) + 4 * bb + (l % 8) / 2;
    for (int l = 0; l < 16; ++l) {
        const int g = l / 8, h = (l % 8) / 4, r = l % 4;
        p.fin[l] = 8 * g + 2 * r + h;
    }
    for (int l = 0; l < 16; ++l) p.act[l] = 8 * (l / 8) + (l % 8) / 2 + 4 * (l % 2);
    return p;
}
alignas(64) constexpr PatternsF8 kF8 = make_patterns_f8();

// Activations of one column and super-block, rearranged: qa[b][q] = (dword q, dword 4 + q)
// of block b's quants, off[b] = -64 * (bsums[2b], bsums[2b + 1]).
struct ActF8 {
    int64_t qa[8][4];
    int64_t off[8];
    float dA;
    float pad[15];
};

inline void prepare_act_f8(const uint8_t* as, ActF8& P) {
    for (int k = 0; k < 4; ++k)
        _mm512_store_si512(&P.qa[2 * k][0], _mm512_permutexvar_epi32(ld64(kF8.act), ld64(as + act::kQ8KQs + 64 * k)));
    const __m512i bs = _mm512_cvtepi16_epi32(ld32(as + act::kQ8KBsums));
    _mm512_store_si512(P.off, _mm512_mullo_epi32(bs, _mm512_set1_epi32(-64)));
    P.dA = rd_f32(as);
}

struct DecF8 {
    __m512i u[8][4];  // W(b, q)
    __m512i sc[8];    // lane 8g + 2r + h: multiplier of row r of group g, block b
    __m512 d16;       // lane 8g + 4h + r: 0.25 * d of row r of group g
};

inline void decode_f8(const uint8_t* b0, const uint8_t* b1, DecF8& D) {
    alignas(64) uint64_t neg[32];  // 4b + q
    for (int s = 0; s < 2; ++s) {
        __m512i V[2], M[2];
        for (int g = 0; g < 2; ++g) {
            const __m512i x = ld64((g ? b1 : b0) + kR4SasOff + 64 * s);  // dword 4(b - 4s) + r
            const __m512i t = _mm512_and_si512(x, _mm512_set1_epi8((char)0xfe));
            const __m512i sg = _mm512_xor_si512(t, _mm512_srli_epi32(t, 1));
            // mask byte of W(b, q), row r: sign nibble q | sign nibble 4 + q << 4; V keeps
            // them for q = 0, 2, 1, 3 in the bytes of each dword
            const __m512i m4 = _mm512_set1_epi8(0x0f);
            const __m512i lo = _mm512_and_si512(sg, m4), hi = _mm512_and_si512(_mm512_srli_epi32(sg, 4), m4);
            const __m512i E = _mm512_or_si512(lo, _mm512_srli_epi32(lo, 12));
            const __m512i O = _mm512_or_si512(hi, _mm512_srli_epi32(hi, 12));
            V[g] = _mm512_mask_blend_epi16(0xaaaaaaaa, E, _mm512_slli_epi32(O, 16));
            const __m512i bits = _mm512_and_si512(x, _mm512_set1_epi8(1));
            const __m512i m16 = _mm512_maddubs_epi16(bits, _mm512_set1_epi32(0x10080402));
            M[g] = _mm512_add_epi32(_mm512_madd_epi16(m16, _mm512_set1_epi16(1)), _mm512_set1_epi32(1));
        }
        for (int k = 0; k < 2; ++k)
            _mm512_store_si512(neg + 8 * (2 * s + k), _mm512_permutex2var_epi8(V[0], ld64(kF8.mask[k]), V[1]));
        for (int bb = 0; bb < 4; ++bb) D.sc[4 * s + bb] = _mm512_permutex2var_epi32(M[0], ld64(kF8.sc[bb]), M[1]);
    }
    __asm__ volatile("" : "+m"(neg));  // masks: KMOVQ from memory (see decode_d)
    for (int b = 0; b < 8; ++b) {
        const __m512i idx = _mm512_mask_loadu_epi64(_mm512_castsi256_si512(ld32(b0 + kR4QsOff + 32 * b)), 0xf0,
                                                    b1 + kR4QsOff + 32 * b - 32);
        __m512i lo, hi;
        grid_seeds(idx, lo, hi);
        for (int q = 0; q < 4; ++q) {
            const __m512i src = _mm512_permutex2var_epi8(lo, ld64(kF8.expand[q]), hi);
            const __m512i lev = _mm512_multishift_epi64_epi8(ld64(kP.level_shift), src);
            const __m512i pos = _mm512_permutexvar_epi8(lev, ld64(kP.offset_mag));
            D.u[b][q] = _mm512_mask_sub_epi8(pos, _cvtu64_mask64(neg[4 * b + q]), _mm512_set1_epi8((char)128), pos);
        }
    }
    const __m128 d0 = _mm_mul_ps(_mm_set1_ps(0.25f), _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b0))));
    const __m128 d1 = _mm_mul_ps(_mm_set1_ps(0.25f), _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b1))));
    D.d16 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set_m128(d0, d0)), _mm256_set_m128(d1, d1), 1);
}

template <int CB>
inline void f8_cols(const DecF8& D, const ActF8* P, size_t pstride, __m512* acc) {
    __m512i T[CB];
    for (int b = 0; b < 8; ++b) {
        for (int n = 0; n < CB; ++n) {
            const ActF8& p = P[n * pstride];
            __m512i h = _mm512_set1_epi64(p.off[b]);
            h = _mm512_dpbusd_epi32(h, D.u[b][0], _mm512_set1_epi64(p.qa[b][0]));
            h = _mm512_dpbusd_epi32(h, D.u[b][1], _mm512_set1_epi64(p.qa[b][1]));
            h = _mm512_dpbusd_epi32(h, D.u[b][2], _mm512_set1_epi64(p.qa[b][2]));
            h = _mm512_dpbusd_epi32(h, D.u[b][3], _mm512_set1_epi64(p.qa[b][3]));
            const __m512i v = _mm512_mullo_epi32(h, D.sc[b]);
            T[n] = b == 0 ? v : _mm512_add_epi32(T[n], v);
        }
    }
    for (int n = 0; n < CB; ++n) {
        const __m512i I = _mm512_permutexvar_epi32(ld64(kF8.fin), T[n]);
        acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(D.d16, _mm512_set1_ps(P[n * pstride].dA)), _mm512_cvtepi32_ps(I), acc[n]);
    }
}

inline void store_r4_pair(float* C, __m512 acc) {
    store_r4(C, _mm512_castps512_ps256(acc));
    store_r4(C + 4, _mm512_extractf32x8_ps(acc, 1));
}

void gemm_f_one_group(const GemmArgs& g);

// Activation rows rearranged once per call by the driver (prepare_act hook): column n's
// super-blocks at P + n * p_row_bytes.
static_assert(sizeof(ActF8) % 64 == 0, "ActF8 rows stay 64-byte aligned");
void prepare_row_f8(const uint8_t* act, uint8_t* out, int64_t K) {
    ActF8* P = reinterpret_cast<ActF8*>(out);
    for (int64_t i = 0; i < K / kQK; ++i) prepare_act_f8(act + act::kQ8KBytes * i, P[i]);
}
size_t prepared_bytes_f8(int64_t K) { return (size_t)(K / kQK) * sizeof(ActF8); }

// Columns per call (the driver's max_cols hint): the prepared activations of a call stay
// within ~128 KiB (L2), at least 8 and at most kMaxCols columns.
int64_t max_cols_f8(int64_t K) {
    const int64_t c = (128 * 1024) / ((K / kQK) * (int64_t)sizeof(ActF8));
    return c < 8 ? 8 : (c > kMaxCols ? kMaxCols : c);
}

// Pairs of row groups, all columns of the call in one pass.
void gemm_f8(const GemmArgs& g) {
    const int64_t nbl = g.K / kQK;
    const int64_t npairs = g.nrows / 8;
    const int nc = (int)g.ncols;
    const ActF8* buf = reinterpret_cast<const ActF8*>(g.P);
    const size_t pstride = g.p_row_bytes / sizeof(ActF8);
    for (int64_t pr = 0; pr < npairs; ++pr) {
        const uint8_t* w0 = g.W + 2 * pr * g.w_group_bytes;
        const uint8_t* w1 = w0 + g.w_group_bytes;
        __m512 acc[kMaxCols];
        for (int n = 0; n < nc; ++n) acc[n] = _mm512_setzero_ps();
        for (int64_t i = 0; i < nbl; ++i) {
            // The hardware prefetchers follow each group's stream but not the jump to the
            // next pair (its second group was never touched): fetch the next pair's
            // super-block i now, a whole pair of super-block rows ahead.
            // (Integer addresses: past the last pair they point beyond W; prefetches never fault.)
            const uintptr_t next = (uintptr_t)w0 + 2 * g.w_group_bytes + (uintptr_t)(i * kR4Bytes);
            for (int k = 0; k < kR4Bytes; k += 64) {
                IQKQ_PREFETCH(reinterpret_cast<const char*>(next + k), _MM_HINT_T0);
                IQKQ_PREFETCH(reinterpret_cast<const char*>(next + g.w_group_bytes + k), _MM_HINT_T0);
            }
            DecF8 D;
            decode_f8(w0 + i * kR4Bytes, w1 + i * kR4Bytes, D);
            const ActF8* P = buf + i;
            int n = 0;
            for (; n + 4 <= nc; n += 4) f8_cols<4>(D, P + n * pstride, pstride, acc + n);
            switch (nc - n) {
                case 3: f8_cols<3>(D, P + n * pstride, pstride, acc + n); break;
                case 2: f8_cols<2>(D, P + n * pstride, pstride, acc + n); break;
                case 1: f8_cols<1>(D, P + n * pstride, pstride, acc + n); break;
                default: break;
            }
        }
        for (int n = 0; n < nc; ++n) store_r4_pair(g.C + n * g.ldc + 8 * pr, acc[n]);
    }
}

void gemm_iq3_xxs_r4(const GemmArgs& g) {
    if (g.nrows >= 8) {
        gemm_f8(g);
        if (g.nrows % 8 == 0) return;
        GemmArgs last = g;  // the odd row group
        last.W = g.W + (g.nrows / 4 - 1) * g.w_group_bytes;
        last.nrows = 4;
        last.C = g.C + (g.nrows - 4);
        gemm_f_one_group(last);
        return;
    }
    gemm_f_one_group(g);
}

void gemm_f_one_group(const GemmArgs& g) {
    switch (g.ncols) {
        case 1: gemm_f_small<1>(g); return;
        case 2: gemm_f_small<2>(g); return;
        case 3: gemm_f_small<3>(g); return;
        case 4: gemm_f_small<4>(g); return;
        default: break;
    }
    for (int64_t n0 = 0; n0 < g.ncols; n0 += kMaxCols)
        gemm_f_many(g, n0, (int)(g.ncols - n0 < kMaxCols ? g.ncols - n0 : kMaxCols));
}


// ------------------------------------------------------------------------------------------
// Large-batch conversion iq3_xxs -> q8_k_r8 (docs/formats.md §11.4), one row and super-block at a
// time, without computing the 256 products v = mult * sigma * g one by one:
//  * M = max |v| = max over blocks of mult_b * (largest grid byte of the block): a third
//    256-entry table gives the largest byte of each grid point, three shift-and-max steps
//    the largest of each block's eight (one quadword per block), VPMULUDQ the products;
//  * a block's 32 weights take only 8 magnitudes g_l, so the re-quantized values form a
//    table of 8 blocks x 8 levels: the 64 products mult_b * g_l (exact in f32), times inv,
//    rounded (VCVTPS2DQ, nearest even) and packed with signed saturation (PACKSSDW +
//    PACKSSWB = sat_i8) land at byte 8 b + l; VPERMB then looks up every weight's value with
//    the level from the decoder above and the block number as index;
//  * the sign is applied afterwards (0 - q on the negative weights). This equals rounding the
//    negative product because f32 multiplication and nearest-even rounding are symmetric and
//    the positive value never saturates: |inv * v| <= inv * M < 124.0001 (M * d0 and 1 / dnew
//    each rounded once; test_conversion_never_saturates checks every M), and in the dnew < 1
//    branch (inv = 1 stands for "copy v", exactly) |v| <= M <= 124.
// Eight rows are then interleaved (kernels/avx512/simd.h) and the scales fp16(F * dnew)
// computed in one vector.

alignas(64) uint8_t gMaxG[256];  // largest grid byte (4..62) of each grid point

struct ConvPatterns {
    float g_lo[16];          // 4 12 20 28 in every 128-bit lane
    float g_hi[16];          // 36 44 52 62
    int32_t even[16];        // lane L: multiplier of block 2L
    int32_t odd[16];         // lane L: multiplier of block 2L + 1
    uint8_t block8[4][64];   // register j, byte e: 8 * (block of weight 64 j + e)
};
constexpr ConvPatterns make_conv_patterns() {
    ConvPatterns p{};
    const float mag[8] = {4, 12, 20, 28, 36, 44, 52, 62};
    for (int l = 0; l < 16; ++l) {
        p.g_lo[l] = mag[l % 4];
        p.g_hi[l] = mag[4 + l % 4];
        p.even[l] = 2 * (l / 4);
        p.odd[l] = 2 * (l / 4) + 1;
    }
    for (int j = 0; j < 4; ++j)
        for (int e = 0; e < 64; ++e) p.block8[j][e] = (uint8_t)(8 * ((64 * j + e) / 32));
    return p;
}
alignas(64) constexpr ConvPatterns kC = make_conv_patterns();

// One row's super-block: the 256 re-quantized values to q (element order); returns dnew.
inline float convert_row(const uint8_t* blk, uint8_t* q) {
    const __m256i sas = ld32(blk + kSasOff);
    const __m256i fields = _mm256_multishift_epi64_epi8(ld32(kP.sign_shift), sas);
    const __m512i sg = _mm512_permutex2var_epi8(ld64(gSigns), _mm512_zextsi256_si512(fields), ld64(gSigns + 64));
    alignas(32) uint64_t neg[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(neg), _mm512_castsi512_si256(sg));
    __asm__ volatile("" : "+m"(neg));  // masks: KMOVQ from memory (see decode_d)

    const __m512i idx = ld64(blk + kQsOff);
    const __mmask64 top = _mm512_movepi8_mask(idx);
    const __m512i lo = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(ld64(gSeedLo), idx, ld64(gSeedLo + 64)),
                                              _mm512_permutex2var_epi8(ld64(gSeedLo + 128), idx, ld64(gSeedLo + 192)));
    const __m512i hi = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(ld64(gSeedHi), idx, ld64(gSeedHi + 64)),
                                              _mm512_permutex2var_epi8(ld64(gSeedHi + 128), idx, ld64(gSeedHi + 192)));
    const __m512i gm = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(ld64(gMaxG), idx, ld64(gMaxG + 64)),
                                              _mm512_permutex2var_epi8(ld64(gMaxG + 128), idx, ld64(gMaxG + 192)));
    // largest byte of each quadword (= block) in its top byte, then down to the bottom
    __m512i x = _mm512_max_epu8(gm, _mm512_slli_epi64(gm, 32));
    x = _mm512_max_epu8(x, _mm512_slli_epi64(x, 16));
    x = _mm512_max_epu8(x, _mm512_slli_epi64(x, 8));
    x = _mm512_srli_epi64(x, 56);
    const __m256i mult = _mm256_or_si256(_mm256_srli_epi32(sas, 27), _mm256_set1_epi32(1));  // 2 * (sas >> 28) + 1
    const int M = (int)_mm512_reduce_max_epu64(_mm512_mul_epu32(_mm512_cvtepu32_epi64(mult), x));

    float dnew = (float)M * kConvD0;
    float inv = 1.0f;
    if (dnew < 1.0f) dnew = 1.0f;
    else inv = 1.0f / dnew;  // dnew >= 1 here, so |dnew| > 1e-9

    const __m512 mf = _mm512_castps256_ps512(_mm256_cvtepi32_ps(mult));
    const __m512 me = _mm512_permutexvar_ps(ld64(kC.even), mf), mo = _mm512_permutexvar_ps(ld64(kC.odd), mf);
    const __m512 vi = _mm512_set1_ps(inv);
    const __m512 glo = _mm512_load_ps(kC.g_lo), ghi = _mm512_load_ps(kC.g_hi);
    constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512i t0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(vi, _mm512_mul_ps(me, glo)), kRne);
    const __m512i t1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(vi, _mm512_mul_ps(me, ghi)), kRne);
    const __m512i t2 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(vi, _mm512_mul_ps(mo, glo)), kRne);
    const __m512i t3 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(vi, _mm512_mul_ps(mo, ghi)), kRne);
    // lane L, bytes 4 V + c: V = 0, 1 block 2L levels 0-3, 4-7; V = 2, 3 block 2L + 1
    const __m512i tab = _mm512_packs_epi16(_mm512_packs_epi32(t0, t1), _mm512_packs_epi32(t2, t3));

    for (int j = 0; j < 4; ++j) {
        const __m512i src = _mm512_permutex2var_epi8(lo, ld64(kP.expand[j]), hi);
        const __m512i lev = _mm512_multishift_epi64_epi8(ld64(kP.level_shift), src);
        const __m512i id = _mm512_ternarylogic_epi32(lev, _mm512_set1_epi8(7), ld64(kC.block8[j]), 0xea);  // (lev & 7) | 8 b
        const __m512i pos = _mm512_permutexvar_epi8(id, tab);
        _mm512_store_si512(q + 64 * j, _mm512_mask_sub_epi8(pos, _cvtu64_mask64(neg[j]), _mm512_setzero_si512(), pos));
    }
    return dnew;
}

void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nbl = K / kQK;
    const size_t row = (size_t)nbl * kBytes;
    alignas(64) uint8_t q[8 * 256];
    alignas(32) float dnew[8];
    alignas(16) uint16_t d16[8];
    const int64_t pf_step = (int64_t)(8 * row + nbl - 1) / nbl;
    for (int64_t grp = 0; grp < nrows / 8; ++grp) {
        const uint8_t* w = src + 8 * grp * row;
        for (int64_t i = 0; i < nbl; ++i) {
            uint8_t* o = dst + (grp * nbl + i) * (16 + 2048);
            // The group reads its 8 rows as 8 interleaved streams; the next group's rows are
            // fetched in address order meanwhile, 1 / nbl of them per super-block. (Integer
            // addresses: past the last group they point beyond src; prefetches never fault.)
            for (uintptr_t a = (uintptr_t)(w + 8 * row) + (uintptr_t)(i * pf_step), e = a + pf_step; a < e; a += 64)
                IQKQ_PREFETCH(reinterpret_cast<const char*>(a), _MM_HINT_T0);
            for (int r = 0; r < 8; ++r) {
                const uint8_t* blk = w + r * row + i * kBytes;
                d16[r] = rd_u16(blk);
                dnew[r] = convert_row(blk, q + 256 * r);
            }
            const __m256 F = _mm256_mul_ps(_mm256_set1_ps(0.25f), _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(d16))));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o),
                             _mm256_cvtps_ph(_mm256_mul_ps(F, _mm256_load_ps(dnew)), _MM_FROUND_TO_NEAREST_INT));
            avx512::interleave_q8_k_r8(q, o + 16);
        }
    }
}

}  // namespace

void register_avx512_iq3_xxs(KernelTables& t) {
    for (int i = 0; i < 256; ++i) {
        uint8_t lv[4];
        for (int m = 0; m < 4; ++m) {
            const int g = (int)((kGrid[i] >> (8 * m)) & 255);
            lv[m] = (uint8_t)(g == 62 ? 7 : (g - 4) / 8);
        }
        gSeedLo[i] = (uint8_t)(lv[0] | (lv[1] << 4));
        gSeedHi[i] = (uint8_t)(lv[2] | (lv[3] << 4));
        uint32_t mx = 0;
        for (int m = 0; m < 4; ++m) mx = (kGrid[i] >> (8 * m) & 255) > mx ? (kGrid[i] >> (8 * m) & 255) : mx;
        gMaxG[i] = (uint8_t)mx;
    }
    for (int i = 0; i < 128; ++i) gSigns[i] = kSigns[i];
    t.types[T_IQ3_XXS].gemm = gemm_iq3_xxs;
    TypeKernels& r4 = t.types[T_IQ3_XXS_R4];
    r4.gemm = gemm_iq3_xxs_r4;
    r4.prepare_act = prepare_row_f8;
    r4.prepared_bytes = prepared_bytes_f8;
    r4.max_cols = max_cols_f8;
    r4.tile_bytes = 0;
    t.types[T_IQ3_XXS].to_large_batch = convert_to_q8_k_r8;
}

}  // namespace iqkq
