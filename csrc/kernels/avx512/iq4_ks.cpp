// AVX-512 matmul kernels for iq4_ks and iq4_ks_r4: kernel (E) iq4_ks x q8_K and kernel (G)
// iq4_ks_r4 x q8_K32 of docs/formats.md §11.3. Compiled with the AVX-512 flags (CMakeLists.txt) and
// used only on CPUs with F, VL, BW, DQ, VNNI and VBMI (dispatch.cpp).
//
// Decoding: the 4-bit indices go straight into VPERMB, which reads only the low 6 bits of
// each index byte, so a 64-entry table holding the 16 values four times turns a byte into
// the value of its low nibble whatever its high nibble is; the high nibbles need one
// VPSRLW first. The table holds value + 128 (1..241), the unsigned operand of VPDPBUSD.
// The activations are rearranged once per call, and the extra 128 * (sum of the four
// activation quants of a dword lane) is removed by starting every VPDPBUSD from minus that
// (also computed once per call).
// All integer sums are exact and the float operations are those of (E) / (G) in the same
// order, so the results are bit-identical to the scalar and AVX2 kernels.
//
// No STL containers or shared inline functions here (see common.h).
#include "common.h"
#include "formats/act.h"
#include "formats/iq4_ks.h"
#include "kernels/avx2/simd.h"
#include "kernels/avx512/simd.h"
#include "types.h"

#include <cstdlib>
#include <immintrin.h>
#include <new>

// GCC 12 reports the _mm512_undefined_*() pass-through operands inside its own intrinsic
// headers as "maybe uninitialized" (for _mm512_shuffle_i64x2: "uninitialized") once they are
// inlined here; they are never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace iqkq {
namespace {
using namespace iq4_ks;
using avx2::hsum8;

constexpr int kActBytes = act::kQ8KBytes;  // one q8_K / q8_K32 record

inline __m512i ld64(const void* p) { return _mm512_loadu_si512(p); }

struct Tables {
    uint8_t base_u[64];  // 128 + kValues[i & 15] (base table, unsigned), for VPERMB
};
constexpr Tables make_tables() {
    Tables t{};
    for (int i = 0; i < 64; ++i) t.base_u[i] = (uint8_t)(128 + kValues[i & 15]);
    return t;
}
alignas(64) constexpr Tables kT = make_tables();

// ------------------------------------------------------------------------------------------
// Kernel (E): iq4_ks x q8_K.
//
// The 64 nibble bytes of blocks 4s..4s+3 of a row hold block 4s + k in 128-bit chunk k, quad j
// (bytes 4j..4j+3) in its dword j: the low nibbles are elements 4j..4j+3 (quad L = j), the
// high nibbles elements 16 + 4j.. (quad L = 4 + j). Per super-block four weight registers
// (lows / highs of blocks 0-3 and 4-7) meet four activation registers arranged the same way
// once per call. VPDPBUSD gives the quad sums P(b, L); one VPMULLD per register applies the
// block multipliers; blocks k and k + 4 add up in the same lane, and the four blocks of a
// register are summed at the end of the super-block (folding 128-bit chunks) to the eight S_L
// of (E). (Tried: transposing the 4 x 4 dwords with one VPERMD per register, so that the sum
// over the blocks is an in-lane transpose-and-add: no faster on Zen 4, slower for N <= 2.)
// The shifted table (base + 4) is a masked byte add of 4 to the blocks that use it.

// One super-block of one column, rearranged (512 bytes).
struct ActE {
    uint8_t q[4][64];    // lows 0-3, highs 0-3, lows 4-7, highs 4-7: chunk k = block 4s + k
    int32_t off[4][16];  // -128 * (sum of the four quants of each dword lane), same lanes
};

inline void prepare_e(const uint8_t* as, ActE& P) {
    const __m512i z0 = ld64(as + act::kQ8KQs), z1 = ld64(as + act::kQ8KQs + 64), z2 = ld64(as + act::kQ8KQs + 128),
                  z3 = ld64(as + act::kQ8KQs + 192);
    // z0 chunks: block 0 elements 0-15, 16-31, block 1 elements 0-15, 16-31; and so on.
    const __m512i c[4] = {_mm512_shuffle_i64x2(z0, z1, 0x88), _mm512_shuffle_i64x2(z0, z1, 0xdd),
                          _mm512_shuffle_i64x2(z2, z3, 0x88), _mm512_shuffle_i64x2(z2, z3, 0xdd)};
    for (int j = 0; j < 4; ++j) {
        _mm512_store_si512(P.q[j], c[j]);
        const __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), c[j]);
        _mm512_store_si512(P.off[j], _mm512_mullo_epi32(s, _mm512_set1_epi32(-128)));
    }
}

// One super-block of one row, decoded.
struct RowE {
    __m512i v[4];   // value + 128 in the layout of ActE::q
    __m512i ls[2];  // chunk k: multiplier of block 4s + k
};

// Block b's shift bit -> the mask bits of its four dword lanes (chunk b of a register).
constexpr uint16_t kSpread4[16] = {0x0000, 0x000f, 0x00f0, 0x00ff, 0x0f00, 0x0f0f, 0x0ff0, 0x0fff,
                                   0xf000, 0xf00f, 0xf0f0, 0xf0ff, 0xff00, 0xff0f, 0xfff0, 0xffff};

inline void decode_e(const uint8_t* sb, __m512i tab, RowE& R) {
    // (int8)(s ^ 0x80) = s - 128, which with the low bit set is (s & 254) - 127 = ls
    const __m128i x = _mm_xor_si128(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb)), _mm_set1_epi8((char)0x80));
    const __m512i one = _mm512_set1_epi32(1);
    const __m128i x0 = _mm_shuffle_epi8(x, _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
    const __m128i x1 = _mm_shuffle_epi8(x, _mm_setr_epi8(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7));
    R.ls[0] = _mm512_or_si512(_mm512_cvtepi8_epi32(x0), one);
    R.ls[1] = _mm512_or_si512(_mm512_cvtepi8_epi32(x1), one);
    uint64_t sc;
    std::memcpy(&sc, sb, 8);
    const unsigned bits = (unsigned)(((sc & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56);  // bit b: block b shifted
    const __mmask16 k0 = kSpread4[bits & 15], k1 = kSpread4[bits >> 4];
    __m512i q0 = ld64(sb + 8), q1 = ld64(sb + 72);
    __asm__("" : "+v"(q0), "+v"(q1));  // one load each (GCC would fold a second load into VPSRLW)
    const __m512i four = _mm512_set1_epi32(0x04040404);  // no carries: value + 128 <= 241
    R.v[0] = _mm512_permutexvar_epi8(q0, tab);
    R.v[1] = _mm512_permutexvar_epi8(_mm512_srli_epi16(q0, 4), tab);
    R.v[2] = _mm512_permutexvar_epi8(q1, tab);
    R.v[3] = _mm512_permutexvar_epi8(_mm512_srli_epi16(q1, 4), tab);
    R.v[0] = _mm512_mask_add_epi32(R.v[0], k0, R.v[0], four);
    R.v[1] = _mm512_mask_add_epi32(R.v[1], k0, R.v[1], four);
    R.v[2] = _mm512_mask_add_epi32(R.v[2], k1, R.v[2], four);
    R.v[3] = _mm512_mask_add_epi32(R.v[3], k1, R.v[3], four);
}

// Activations of one column and super-block in registers (shared by the two rows).
struct ColE {
    __m512i q[4], o[4];
};
inline void load_col_e(const ActE& P, ColE& A) {
    for (int j = 0; j < 4; ++j) {
        A.q[j] = _mm512_load_si512(P.q[j]);
        A.o[j] = _mm512_load_si512(P.off[j]);
    }
    __asm__("" : "+v"(A.q[0]), "+v"(A.q[1]), "+v"(A.q[2]), "+v"(A.q[3]));
}

// Lows and highs of one row: lane of block k = sum over blocks k, k + 4 of ls_b * P(b, L).
inline void row_sums_e(const RowE& R, const ColE& A, __m512i& lo, __m512i& hi) {
    const __m512i t0 = _mm512_dpbusd_epi32(A.o[0], R.v[0], A.q[0]);
    const __m512i t1 = _mm512_dpbusd_epi32(A.o[1], R.v[1], A.q[1]);
    const __m512i t2 = _mm512_dpbusd_epi32(A.o[2], R.v[2], A.q[2]);
    const __m512i t3 = _mm512_dpbusd_epi32(A.o[3], R.v[3], A.q[3]);
    lo = _mm512_add_epi32(_mm512_mullo_epi32(t0, R.ls[0]), _mm512_mullo_epi32(t2, R.ls[1]));
    hi = _mm512_add_epi32(_mm512_mullo_epi32(t1, R.ls[0]), _mm512_mullo_epi32(t3, R.ls[1]));
}

// S_L of two rows: lane 8 rho + L.
inline __m512i pair_sums_e(const RowE& R0, const RowE& R1, const ActE& P) {
    ColE A;
    load_col_e(P, A);
    __m512i lo0, hi0, lo1, hi1;
    row_sums_e(R0, A, lo0, hi0);
    row_sums_e(R1, A, lo1, hi1);
    // [lo c0+c1, lo c2+c3, hi c0+c1, hi c2+c3] per row, then [lo0, hi0, lo1, hi1]
    const __m512i u0 = _mm512_add_epi32(_mm512_shuffle_i64x2(lo0, hi0, 0x88), _mm512_shuffle_i64x2(lo0, hi0, 0xdd));
    const __m512i u1 = _mm512_add_epi32(_mm512_shuffle_i64x2(lo1, hi1, 0x88), _mm512_shuffle_i64x2(lo1, hi1, 0xdd));
    return _mm512_add_epi32(_mm512_shuffle_i64x2(u0, u1, 0x88), _mm512_shuffle_i64x2(u0, u1, 0xdd));
}

// NC columns (prepared activations: super-block i of column n at P[n][i]) times the rows w0,
// w1: lanes 0-7 row w0, 8-15 row w1.
template <int NC>
inline void e_pair(const GemmArgs& g, const ActE* const* P, const uint8_t* A, int64_t nsuper, const uint8_t* w0,
                   const uint8_t* w1, __m512 acc[NC]) {
    const __m512i tab = ld64(kT.base_u);
    const __m512 Dv = _mm512_insertf32x8(_mm512_set1_ps(rd_f32(w0)), _mm256_set1_ps(rd_f32(w1)), 1);
    for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
    // the next pair's 2 * row bytes, spread over this pair's super-blocks (2 * 136 bytes each);
    // integer addresses: past the last row they point beyond W, and prefetches never fault
    const uintptr_t next = (uintptr_t)w0 + 2 * g.w_group_bytes;
    for (int64_t i = 0; i < nsuper; ++i) {
        for (int k = 0; k < 2 * kSuperBytes + 64; k += 64)
            IQKQ_PREFETCH(reinterpret_cast<const char*>(next + (uintptr_t)(i * 2 * kSuperBytes + k)), _MM_HINT_T0);
        RowE R0, R1;
        decode_e(w0 + kRowMeta + i * kSuperBytes, tab, R0);
        decode_e(w1 + kRowMeta + i * kSuperBytes, tab, R1);
        for (int n = 0; n < NC; ++n) {
            const __m512 dA = _mm512_set1_ps(rd_f32(A + n * g.a_row_bytes + i * kActBytes));
            const __m512i S = pair_sums_e(R0, R1, P[n][i]);
            acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(Dv, dA), _mm512_cvtepi32_ps(S), acc[n]);
        }
    }
}

// Rows are processed in adjacent pairs. The hardware prefetchers do not follow two
// interleaved short streams (one per row) well, so each pair prefetches the next pair's bytes
// in address order while it runs (measured on Zen 4: a pure 2-row read loop gets ~12 GB/s
// without and ~24 GB/s with this, like one sequential stream).
template <int NC>
void e_cols(const GemmArgs& g) {
    const int64_t nsuper = g.K / kSuper;
    const uint8_t* A = g.A;
    float* C = g.C;
    const ActE* P[NC];
    for (int n = 0; n < NC; ++n) P[n] = reinterpret_cast<const ActE*>(g.P + n * g.p_row_bytes);
    for (int64_t r = 0; r < g.nrows; r += 2) {
        const int64_t r1 = r + 1 < g.nrows ? r + 1 : r;  // a lone last row is computed twice
        __m512 acc[NC];
        e_pair<NC>(g, P, A, nsuper, g.W + r * g.w_group_bytes, g.W + r1 * g.w_group_bytes, acc);
        for (int n = 0; n < NC; ++n) {
            C[n * g.ldc + r] = hsum8(_mm512_castps512_ps256(acc[n]));
            if (r1 != r) C[n * g.ldc + r1] = hsum8(_mm512_extractf32x8_ps(acc[n], 1));
        }
    }
}

// Columns per call (the driver's max_cols hint): at most 8, and for very long rows few enough
// that their prepared activations (read once per row pair) stay within ~256 KiB, in L2.
template <typename Act>
int64_t cols_per_pass(int64_t K) {
    const int64_t c = (int64_t)((256 * 1024) / ((size_t)(K / kSuper) * sizeof(Act)));
    return c < 1 ? 1 : (c > 8 ? 8 : c);
}

// The driver prepares every activation row once per call (prepare_act hook) and hands the
// kernel at most cols_per_pass columns at a time.
void prepare_row_e(const uint8_t* act, uint8_t* out, int64_t K) {
    ActE* P = reinterpret_cast<ActE*>(out);
    for (int64_t i = 0; i < K / kSuper; ++i) prepare_e(act + i * kActBytes, P[i]);
}
size_t prepared_bytes_e(int64_t K) { return (size_t)(K / kSuper) * sizeof(ActE); }

void gemm_iq4_ks(const GemmArgs& g) {
    switch (g.ncols) {
        case 1: e_cols<1>(g); break;
        case 2: e_cols<2>(g); break;
        case 3: e_cols<3>(g); break;
        case 4: e_cols<4>(g); break;
        case 5: e_cols<5>(g); break;
        case 6: e_cols<6>(g); break;
        case 7: e_cols<7>(g); break;
        default: e_cols<8>(g); break;
    }
}

// ------------------------------------------------------------------------------------------
// Kernel (G): iq4_ks_r4 x q8_K32, two row groups (8 rows) at a time.
//
// Lane l = 8g + 2r + h of a 512-bit register holds row r of group g, half h (elements
// 16h..16h+15) of a block. In the 64 nibble bytes of block b of a group, 128-bit chunk c holds
// dword r = row r; its low nibbles are elements 4q..4q+3 of half h and its high nibbles
// elements 4(q+2).. of the same half, with h = c & 1 and q = c >> 1 (docs/formats.md §7.1). One
// VPERMT2D over the two groups' 64 bytes gathers chunks 0, 1 (resp. 2, 3) into the lane
// order, so that four VPERMB give W(b, q), q = 0..3: quad q of both halves of block b for the
// 8 rows. The activations a lane needs depend only on h: one 64-bit broadcast (quad q of
// half 0, quad q of half 1, rearranged once per call) serves all 8 rows. Four chained
// VPDPBUSD, started from -128 * (sum of the half's quants), give the exact base-table sum of
// the half; one VPMULLD per block applies the eight rows' multipliers. The +4 of shifted
// blocks goes through the float block sums (step 1 of (G)) with the same float operations.

// One super-block of one column, rearranged (384 bytes).
struct ActG {
    int64_t qa[8][4];  // block b, quad q: (dword q, dword 4 + q) of the block's 32 quants
    int64_t off[8];    // block b: (-128 * sum of quants 0..15, -128 * sum of quants 16..31)
    int64_t bsp[4];    // t: (float bs[t], float bs[t + 4])
    float dA;
    float pad[7];
};

struct PatternsG {
    int32_t act[16];     // activation dwords of two blocks -> (q, 4 + q) pairs
    int32_t sums[16];    // half sums (dword 0 of each 128-bit chunk) -> dwords 0..3
    int32_t chunks[2][16];  // lane 8g + 2r + h <- dword r of chunk 2k + h of group g (k = 0, 1)
    int32_t sc[4][16];   // lane 8g + 2r + h <- dword 4bb + r of group g's multipliers of blocks 4s..4s+3
    int32_t even[16];    // lanes 0, 2, ..., 14 -> 0..7
    int32_t dsel[16];    // lane 8g + 2r + h <- float r of group g (group g's row scales at 8g)
};
constexpr PatternsG make_patterns_g() {
    PatternsG p{};
    for (int l = 0; l < 16; ++l) {
        p.act[l] = 8 * (l / 8) + (l % 8) / 2 + 4 * (l % 2);
        p.sums[l] = 4 * (l % 4);
        const int g = l / 8, r = (l % 8) / 2, h = l % 2;
        for (int k = 0; k < 2; ++k) p.chunks[k][l] = 16 * g + 4 * (2 * k + h) + r;
        for (int bb = 0; bb < 4; ++bb) p.sc[bb][l] = 16 * g + 4 * bb + r;
        p.even[l] = (2 * l) % 16;
        p.dsel[l] = 8 * g + r;
    }
    return p;
}
alignas(64) constexpr PatternsG kG = make_patterns_g();

inline void prepare_g(const uint8_t* as, ActG& P) {
    for (int k = 0; k < 4; ++k) {
        const __m512i x = ld64(as + act::kQ8KQs + 64 * k);  // blocks 2k, 2k + 1
        _mm512_store_si512(&P.qa[2 * k][0], _mm512_permutexvar_epi32(ld64(kG.act), x));
        // sums of the four 16-byte halves: SAD of the quants + 128 against zero, per 8 bytes
        __m512i s = _mm512_sad_epu8(_mm512_xor_si512(x, _mm512_set1_epi8((char)0x80)), _mm512_setzero_si512());
        s = _mm512_add_epi64(s, _mm512_shuffle_epi32(s, (_MM_PERM_ENUM)0x4e));  // chunk sum in dword 0
        const __m128i h = _mm512_castsi512_si128(_mm512_permutexvar_epi32(ld64(kG.sums), s));
        // -128 * (sum - 16 * 128)
        _mm_store_si128(reinterpret_cast<__m128i*>(&P.off[2 * k]), _mm_slli_epi32(_mm_sub_epi32(_mm_set1_epi32(2048), h), 7));
    }
    const __m128 b03 = _mm_loadu_ps(reinterpret_cast<const float*>(as + act::kQ8KBsums));
    const __m128 b47 = _mm_loadu_ps(reinterpret_cast<const float*>(as + act::kQ8KBsums + 16));
    _mm_store_ps(reinterpret_cast<float*>(&P.bsp[0]), _mm_unpacklo_ps(b03, b47));
    _mm_store_ps(reinterpret_cast<float*>(&P.bsp[2]), _mm_unpackhi_ps(b03, b47));
    P.dA = rd_f32(as);
}

// Scale bytes of one super-block of both groups.
struct ScalesG {
    __m512i x[2][2];  // group g, blocks 4s..4s+3: (int8)(scale ^ 0x80) in dword 4(b - 4s) + r
    __m512 v[4];      // step 1 of (G): lane 8g + 2r + h = f32(ls * 4 * shift) of block t + 4h
};

inline void scales_g(const uint8_t* s0, const uint8_t* s1, ScalesG& S) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int g = 0; g < 2; ++g) {
        const __m256i y = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g ? s1 : s0)), flip);
        S.x[g][0] = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(y));
        S.x[g][1] = _mm512_cvtepi8_epi32(_mm256_extracti128_si256(y, 1));
    }
    // (int8)(s ^ 0x80) = s - 128: bit 0 is the shift bit, and with bit 0 set it is ls.
    const __m512i one = _mm512_set1_epi32(1);
    for (int t = 0; t < 4; ++t) {
        const __m512i lo = _mm512_permutex2var_epi32(S.x[0][0], ld64(kG.sc[t]), S.x[1][0]);  // block t
        const __m512i hi = _mm512_permutex2var_epi32(S.x[0][1], ld64(kG.sc[t]), S.x[1][1]);  // block t + 4
        const __m512i x = _mm512_mask_blend_epi32(0xaaaa, lo, hi);
        const __mmask16 k = _mm512_test_epi32_mask(x, one);
        S.v[t] = _mm512_cvtepi32_ps(_mm512_maskz_slli_epi32(k, _mm512_or_si512(x, one), 2));
    }
}

template <int NC>
inline void g_block(const uint8_t* q0, const uint8_t* q1, __m512i tab, __m512i sc, const ActG* const* P, int b,
                    __m512i* T) {
    const __m512i r0 = ld64(q0), r1 = ld64(q1);
    const __m512i x01 = _mm512_permutex2var_epi32(r0, ld64(kG.chunks[0]), r1);
    const __m512i x23 = _mm512_permutex2var_epi32(r0, ld64(kG.chunks[1]), r1);
    const __m512i w0 = _mm512_permutexvar_epi8(x01, tab);
    const __m512i w1 = _mm512_permutexvar_epi8(x23, tab);
    const __m512i w2 = _mm512_permutexvar_epi8(_mm512_srli_epi16(x01, 4), tab);
    const __m512i w3 = _mm512_permutexvar_epi8(_mm512_srli_epi16(x23, 4), tab);
    for (int n = 0; n < NC; ++n) {
        const ActG& a = *P[n];
        __m512i h = _mm512_set1_epi64(a.off[b]);
        h = _mm512_dpbusd_epi32(h, w0, _mm512_set1_epi64(a.qa[b][0]));
        h = _mm512_dpbusd_epi32(h, w1, _mm512_set1_epi64(a.qa[b][1]));
        h = _mm512_dpbusd_epi32(h, w2, _mm512_set1_epi64(a.qa[b][2]));
        h = _mm512_dpbusd_epi32(h, w3, _mm512_set1_epi64(a.qa[b][3]));
        const __m512i v = _mm512_mullo_epi32(h, sc);
        T[n] = b == 0 ? v : _mm512_add_epi32(T[n], v);
    }
}

// NC columns times the row groups at w0 and w1: column n's 4 outputs of w0 go to out0[n], those
// of w1 to out1[n].
template <int NC>
inline void g_pair(const ActG* const* P, int64_t nsuper, const uint8_t* w0, const uint8_t* w1, size_t group_bytes,
                   float* const* out0, float* const* out1) {
    const __m512i tab = ld64(kT.base_u);
    const __m512i one = _mm512_set1_epi32(1);
    __m512 acc[NC];
    for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
    const uintptr_t next = (uintptr_t)w0 + 2 * group_bytes;
    for (int64_t i = 0; i < nsuper; ++i) {
        const uint8_t* s0 = w0 + 16 + i * kR4Bytes;
        const uint8_t* s1 = w1 + 16 + i * kR4Bytes;
        const ActG* Pi[NC];
        for (int n = 0; n < NC; ++n) Pi[n] = P[n] + i;
        // the next pair, in address order (see e_cols); into L2 only: it is 2 x 8.7 KB ahead for
        // K = 4096, and in L1 it would evict the pair being read (measured: 15 vs 22 GB/s)
        for (int k = 0; k < 2 * kR4Bytes; k += 64)
            IQKQ_PREFETCH(reinterpret_cast<const char*>(next + (uintptr_t)(i * 2 * kR4Bytes + k)), _MM_HINT_T2);
        ScalesG S;
        scales_g(s0, s1, S);
        for (int t = 0; t < 4; ++t)
            for (int n = 0; n < NC; ++n)
                acc[n] = _mm512_fmadd_ps(S.v[t], _mm512_castsi512_ps(_mm512_set1_epi64(Pi[n]->bsp[t])), acc[n]);
        __m512i T[NC];
        for (int b = 0; b < 8; ++b) {
            const __m512i sc = _mm512_or_si512(
                _mm512_permutex2var_epi32(S.x[0][b / 4], ld64(kG.sc[b % 4]), S.x[1][b / 4]), one);
            g_block<NC>(s0 + 32 + 64 * b, s1 + 32 + 64 * b, tab, sc, Pi, b, T);
        }
        for (int n = 0; n < NC; ++n)
            acc[n] = _mm512_fmadd_ps(_mm512_set1_ps(Pi[n]->dA), _mm512_cvtepi32_ps(T[n]), acc[n]);
    }
    // C_r = D_r * (acc[r, h = 0] + acc[r, h = 1])
    const __m512 D = _mm512_permutexvar_ps(ld64(kG.dsel),
                                           _mm512_insertf32x4(_mm512_castps128_ps512(_mm_loadu_ps(reinterpret_cast<const float*>(w0))),
                                                              _mm_loadu_ps(reinterpret_cast<const float*>(w1)), 2));
    for (int n = 0; n < NC; ++n) {
        const __m512 s = _mm512_add_ps(acc[n], _mm512_permute_ps(acc[n], 0xb1));
        const __m256 c = _mm512_castps512_ps256(_mm512_permutexvar_ps(ld64(kG.even), _mm512_mul_ps(D, s)));
        _mm_storeu_ps(out0[n], _mm256_castps256_ps128(c));
        _mm_storeu_ps(out1[n], _mm256_extractf128_ps(c, 1));
    }
}

// Adjacent groups are paired (and the next pair prefetched, see e_cols); a lone last group is
// paired with itself.
template <int NC>
void g_cols(const GemmArgs& g) {
    const int64_t nsuper = g.K / kSuper, groups = g.nrows / 4;
    const ActG* P[NC];
    for (int n = 0; n < NC; ++n) P[n] = reinterpret_cast<const ActG*>(g.P + n * g.p_row_bytes);
    for (int64_t gp = 0; gp < groups; gp += 2) {
        const int64_t g1 = gp + 1 < groups ? gp + 1 : gp;
        float* out0[NC];
        float* out1[NC];
        for (int n = 0; n < NC; ++n) {
            out0[n] = g.C + n * g.ldc + 4 * gp;
            out1[n] = g.C + n * g.ldc + 4 * g1;
        }
        g_pair<NC>(P, nsuper, g.W + gp * g.w_group_bytes, g.W + g1 * g.w_group_bytes, g.w_group_bytes, out0, out1);
    }
}

void prepare_row_g(const uint8_t* act, uint8_t* out, int64_t K) {
    ActG* P = reinterpret_cast<ActG*>(out);
    for (int64_t i = 0; i < K / kSuper; ++i) prepare_g(act + i * kActBytes, P[i]);
}
size_t prepared_bytes_g(int64_t K) { return (size_t)(K / kSuper) * sizeof(ActG); }

void gemm_iq4_ks_r4(const GemmArgs& g) {
    switch (g.ncols) {
        case 1: g_cols<1>(g); break;
        case 2: g_cols<2>(g); break;
        case 3: g_cols<3>(g); break;
        case 4: g_cols<4>(g); break;
        case 5: g_cols<5>(g); break;
        case 6: g_cols<6>(g); break;
        case 7: g_cols<7>(g); break;
        default: g_cols<8>(g); break;
    }
}


// ------------------------------------------------------------------------------------------
// Large-batch conversion iq4_ks -> q8_k_r8 (docs/formats.md §11.4), a group of 8 rows and one
// super-block at a time, without computing the 256 products v = ls * T[n] of a row one by one.
//  1. The nibble bytes of the 8 rows are interleaved first, exactly as q8_k_r8 interleaves
//     its quants (kernels/avx512/simd.h), on half the bytes: a nibble dword of a row holds the
//     4 low nibbles that become q8_k_r8 dword m and the 4 high nibbles of dword m + 4. Each
//     interleaved register (one block, two nibble dwords, 8 rows) then gives two q8_k_r8
//     registers, lows and highs, as they are stored.
//  2. A block of a row takes at most 16 values, so per block the re-quantized values of the 8
//     rows form a 128-entry table (8 rows x 16 nibbles) and one VPERMT2B with index
//     nibble | 16 * row looks up 64 of them. The table entries are inv_r times f32(ls * T[n])
//     (a constant table indexed by the scale byte: exact products), rounded (VCVTPS2DQ,
//     nearest even), packed with signed saturation (PACKSSDW + PACKSSWB = sat_i8) and put in
//     index order with one VPERMB per 4 rows.
//  3. M_r = max |v| = max over blocks of |ls| * (largest |T[n]| of the nibbles present): the
//     same VPERMT2B index into a table of |T| (chosen by the 8 rows' shift bits) gives |T| for
//     every element; per block the maxima of each row's elements, times |ls| (VPMADDUBSW,
//     exact: <= 127 * 127), and the maximum over the blocks end in one word per row.
// dnew and inv of the 8 rows are one vector; in the dnew < 1 branch inv = 1 stands for
// "copy v" (exact: |v| <= M < 127).

struct ConvTables {
    float lsT[256][16];      // scale byte s, nibble n: f32(((s & 254) - 127) * T_{s & 1}[n])
    uint8_t abs_t[16][64];   // shift bits p of four rows: 16 r + n -> |T_{bit r of p}[n]|
    uint8_t rowbits[64];     // 16 * row of each byte of an interleaved register: 16 * ((i / 4) % 8)
    uint8_t unpack[64];      // natural 16 r + n <- packed 16 (n / 4) + 4 r + n % 4
    uint8_t lsb[8][64];      // block b: bytes 4 r and 4 r + 2 <- scale byte 8 r + b (odd bytes zeroed)
};
constexpr ConvTables make_conv_tables() {
    ConvTables t{};
    for (int s = 0; s < 256; ++s)
        for (int n = 0; n < 16; ++n) t.lsT[s][n] = (float)(((s & 254) - 127) * kValues[16 * (s & 1) + n]);
    for (int p = 0; p < 16; ++p)
        for (int i = 0; i < 64; ++i) {
            const int v = kValues[16 * ((p >> (i / 16)) & 1) + i % 16];
            t.abs_t[p][i] = (uint8_t)(v < 0 ? -v : v);
        }
    for (int i = 0; i < 64; ++i) {
        const int r = i / 16, n = i % 16;
        t.rowbits[i] = (uint8_t)(16 * ((i / 4) % 8));
        t.unpack[i] = (uint8_t)(16 * (n / 4) + 4 * r + n % 4);
        for (int b = 0; b < 8; ++b) t.lsb[b][i] = (uint8_t)(8 * ((i / 4) % 8) + b);
    }
    return t;
}
alignas(64) constexpr ConvTables kCT = make_conv_tables();

void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K), nsuper = K / kSuper;
    constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    // idx[b][k]: lookup indices of block b; k = 0, 1: lows of nibble dwords (0, 1), (2, 3);
    // k = 2, 3: highs of the same (q8_k_r8 slots 4b, 4b + 1, 4b + 2, 4b + 3)
    alignas(64) __m512i idx[8][4];
    alignas(32) float inv[8];
    const __m512i m4 = _mm512_set1_epi8(0x0f), rowbits = ld64(kCT.rowbits), unpack = ld64(kCT.unpack);
    const int64_t pf_step = (8 * rb + nsuper - 1) / nsuper;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        const uint8_t* w = src + 8 * g * rb;
        alignas(32) float drow[8];
        for (int r = 0; r < 8; ++r) drow[r] = rd_f32(w + r * rb);
        const __m256 D = _mm256_load_ps(drow);
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* sb = w + kRowMeta + i * kSuperBytes;  // row r at sb + r * rb
            uint8_t* o = dst + (g * nsuper + i) * (16 + 2048);
            // The group reads its 8 rows as 8 interleaved streams; the next group's rows are
            // fetched in address order meanwhile, 1 / nsuper of them per super-block. (Integer
            // addresses: past the last group they point beyond src; prefetches never fault.)
            for (uintptr_t a = (uintptr_t)(w + 8 * rb) + (uintptr_t)(i * pf_step), e = a + pf_step; a < e; a += 64)
                IQKQ_PREFETCH(reinterpret_cast<const char*>(a), _MM_HINT_T0);
            alignas(64) uint64_t sc[8];
            for (int r = 0; r < 8; ++r) std::memcpy(&sc[r], sb + r * rb, 8);
            const __m512i S = _mm512_load_si512(sc);  // byte 8 r + b: scale of row r, block b
            // (int8)(s ^ 0x80) | 1 = (s & 254) - 127 = ls (see decode_e)
            const __m512i als = _mm512_abs_epi8(_mm512_or_si512(_mm512_xor_si512(S, _mm512_set1_epi8((char)0x80)), _mm512_set1_epi8(1)));
            const uint64_t shifted = _cvtmask64_u64(_mm512_test_epi8_mask(S, _mm512_set1_epi8(1)));  // bit 8 r + b

            __m256i P = _mm256_setzero_si256();  // words 2r, 2r + 1: candidates for M_r
            for (int c = 0; c < 2; ++c) {
                __m512i in[8], X[8];
                for (int r = 0; r < 8; ++r) in[r] = ld64(sb + r * rb + 8 + 64 * c);
                avx512::interleave8(in, X);  // X[p]: block 4c + p / 2, nibble dwords 2 (p % 2), + 1
                for (int p = 0; p < 8; ++p) {
                    __m512i* id = idx[4 * c + p / 2];
                    id[p % 2] = _mm512_ternarylogic_epi32(X[p], m4, rowbits, 0xea);  // (x & 15) | 16 r
                    id[2 + p % 2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(X[p], 4), m4, rowbits, 0xea);
                }
                for (int b = 4 * c; b < 4 * c + 4; ++b) {
                    // bit r of pat: row r's block b uses the shifted table
                    const unsigned pat = (unsigned)((((shifted >> b) & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56);
                    const __m512i al = ld64(kCT.abs_t[pat & 15]), ah = ld64(kCT.abs_t[pat >> 4]);
                    const __m512i* id = idx[b];
                    const __m512i a = _mm512_max_epu8(
                        _mm512_max_epu8(_mm512_permutex2var_epi8(al, id[0], ah), _mm512_permutex2var_epi8(al, id[1], ah)),
                        _mm512_max_epu8(_mm512_permutex2var_epi8(al, id[2], ah), _mm512_permutex2var_epi8(al, id[3], ah)));
                    __m256i y = _mm256_max_epu8(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));  // dword r: row r
                    y = _mm256_max_epu8(y, _mm256_srli_epi16(y, 8));  // bytes 4r, 4r + 2: maxima of pairs
                    const __m256i ls = _mm512_castsi512_si256(_mm512_maskz_permutexvar_epi8(0x5555555555555555ull, ld64(kCT.lsb[b]), als));
                    P = _mm256_max_epi16(P, _mm256_maddubs_epi16(y, ls));
                }
            }
            const __m256i M = _mm256_and_si256(_mm256_max_epi16(P, _mm256_srli_epi32(P, 16)), _mm256_set1_epi32(0xffff));
            // dnew = M * d0; below 1: dnew = 1 and inv = 1 (copy, exact); else inv = 1 / dnew
            const __m256 one = _mm256_set1_ps(1.0f);
            const __m256 dnew = _mm256_max_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(M), _mm256_set1_ps(1.0f / 127.0f)), one);  // never NaN
            _mm256_store_ps(inv, _mm256_div_ps(one, dnew));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(_mm256_mul_ps(D, dnew), _MM_FROUND_TO_NEAREST_INT));

            for (int b = 0; b < 8; ++b) {
                __m512i t[8];
                for (int r = 0; r < 8; ++r)
                    t[r] = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_set1_ps(inv[r]), _mm512_load_ps(kCT.lsT[sb[r * rb + b]])), kRne);
                const __m512i tl = _mm512_permutexvar_epi8(unpack, _mm512_packs_epi16(_mm512_packs_epi32(t[0], t[1]), _mm512_packs_epi32(t[2], t[3])));
                const __m512i th = _mm512_permutexvar_epi8(unpack, _mm512_packs_epi16(_mm512_packs_epi32(t[4], t[5]), _mm512_packs_epi32(t[6], t[7])));
                for (int k = 0; k < 4; ++k) _mm512_storeu_si512(o + 16 + 64 * (4 * b + k), _mm512_permutex2var_epi8(tl, idx[b][k], th));
            }
        }
    }
}

}  // namespace

void register_avx512_iq4_ks(KernelTables& t) {
    TypeKernels& e = t.types[T_IQ4_KS];
    e.gemm = gemm_iq4_ks;
    e.prepare_act = prepare_row_e;
    e.prepared_bytes = prepared_bytes_e;
    e.max_cols = cols_per_pass<ActE>;
    e.tile_bytes = 0;  // the AVX2 kernel's hint is not this kernel's
    TypeKernels& r4 = t.types[T_IQ4_KS_R4];
    r4.gemm = gemm_iq4_ks_r4;
    r4.prepare_act = prepare_row_g;
    r4.prepared_bytes = prepared_bytes_g;
    r4.max_cols = cols_per_pass<ActG>;
    r4.tile_bytes = 0;
    t.types[T_IQ4_KS].to_large_batch = convert_to_q8_k_r8;
}

}  // namespace iqkq
