// AVX-512 matmul kernels for iq4_ks and iq4_ks_r4: kernel (E) iq4_ks x q8_K and kernel (G)
// iq4_ks_r4 x q8_K32 of FORMATS.md §11.3. Compiled with the AVX-512 flags (CMakeLists.txt) and
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
#include "formats/iq4_ks.h"
#include "kernels/avx2/simd.h"
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

constexpr int kActBytes = 296;  // q8_K / q8_K32 super-block (FORMATS.md §4.1)

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

// Buffer of per-call activation data, 64-byte aligned.
struct Buffer {
    void* raw = nullptr;
    uint8_t* p = nullptr;
    explicit Buffer(size_t bytes) {
        raw = std::malloc(bytes + 64);
        if (!raw) throw std::bad_alloc();
        p = reinterpret_cast<uint8_t*>(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    }
    ~Buffer() { std::free(raw); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
};

// ------------------------------------------------------------------------------------------
// Kernel (E): iq4_ks x q8_K.
//
// The 64 nibble bytes of blocks 4s..4s+3 of a row, loaded as they are, give in 128-bit chunk k
// block 4s + k: its low nibbles are elements 0..15 (dword j = quad L = j), its high nibbles
// elements 16..31 (dword j = quad L = 4 + j). So per super-block four weight registers
// (lows / highs of blocks 0-3 and 4-7) meet four activation registers rearranged the same way.
// VPDPBUSD gives the quad sums P(b, L) in lane (k, j); one VPMULLD per register applies the
// block multipliers; blocks k and k + 4 add up in the same lane, and the four chunks are
// folded at the end of the super-block to the eight S_L of (E). The shifted table (base + 4)
// is a masked byte add of 4 to the blocks that use it.

// One super-block of one column, rearranged (512 bytes).
struct ActE {
    uint8_t q[4][64];    // lows 0-3, highs 0-3, lows 4-7, highs 4-7: chunk k = block 4s + k
    int32_t off[4][16];  // -128 * (sum of the four quants of each dword lane), same lanes
};

inline void prepare_e(const uint8_t* as, ActE& P) {
    const __m512i z0 = ld64(as + 8), z1 = ld64(as + 72), z2 = ld64(as + 136), z3 = ld64(as + 200);
    // z0 chunks: block 0 elements 0-15, 16-31, block 1 elements 0-15, 16-31; and so on.
    const __m512i q[4] = {_mm512_shuffle_i64x2(z0, z1, 0x88), _mm512_shuffle_i64x2(z0, z1, 0xdd),
                          _mm512_shuffle_i64x2(z2, z3, 0x88), _mm512_shuffle_i64x2(z2, z3, 0xdd)};
    for (int j = 0; j < 4; ++j) {
        _mm512_store_si512(P.q[j], q[j]);
        const __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), q[j]);
        _mm512_store_si512(P.off[j], _mm512_mullo_epi32(s, _mm512_set1_epi32(-128)));
    }
}

// One super-block of one row, decoded.
struct RowE {
    __m512i v[4];   // value + 128 in the layout of ActE::q
    __m512i ls[2];  // lane (k, j): multiplier of block 4s + k
};

// Block b's shift bit -> the four mask bits of its 128-bit chunk (k16 of one register).
constexpr uint16_t kSpread4[16] = {0x0000, 0x000f, 0x00f0, 0x00ff, 0x0f00, 0x0f0f, 0x0ff0, 0x0fff,
                                   0xf000, 0xf00f, 0xf0f0, 0xf0ff, 0xff00, 0xff0f, 0xfff0, 0xffff};

// The multipliers and the shifted-table adjustment of one super-block of one row.
inline void decode_e(const uint8_t* sb, __m512i tab, RowE& R) {
    // (int8)(s ^ 0x80) = s - 128, which with the low bit set is (s & 254) - 127 = ls
    const __m128i x = _mm_xor_si128(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb)), _mm_set1_epi8((char)0x80));
    const __m512i one = _mm512_set1_epi32(1);
    R.ls[0] = _mm512_or_si512(
        _mm512_cvtepi8_epi32(_mm_shuffle_epi8(x, _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3))), one);
    R.ls[1] = _mm512_or_si512(
        _mm512_cvtepi8_epi32(_mm_shuffle_epi8(x, _mm_setr_epi8(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7))), one);
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

// Lows and highs of one row: lane (k, j) = sum over blocks k, k + 4 of ls_b * P(b, L).
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

// NC columns (prepared activations P[n * nsuper + i]) times the rows w0, w1: lanes 0-7 row w0,
// 8-15 row w1.
template <int NC>
inline void e_pair(const GemmArgs& g, const ActE* P, const uint8_t* A, int64_t nsuper, const uint8_t* w0,
                   const uint8_t* w1, __m512 acc[NC]) {
    const __m512i tab = ld64(kT.base_u);
    const __m512 Dv = _mm512_insertf32x8(_mm512_set1_ps(rd_f32(w0)), _mm256_set1_ps(rd_f32(w1)), 1);
    for (int n = 0; n < NC; ++n) acc[n] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nsuper; ++i) {
        RowE R0, R1;
        decode_e(w0 + kRowMeta + i * kSuperBytes, tab, R0);
        decode_e(w1 + kRowMeta + i * kSuperBytes, tab, R1);
        for (int n = 0; n < NC; ++n) {
            const __m512 dA = _mm512_set1_ps(rd_f32(A + n * g.a_row_bytes + i * kActBytes));
            const __m512i S = pair_sums_e(R0, R1, P[n * nsuper + i]);
            acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(Dv, dA), _mm512_cvtepi32_ps(S), acc[n]);
        }
    }
}

// Rows r and r + h (h = half the tile, rounded up) are processed together: two long sequential
// streams of weights, which the hardware prefetchers follow (two interleaved rows next to each
// other would be two short streams per row pair, about half the DRAM bandwidth).
template <int NC>
void e_cols(const GemmArgs& g, const ActE* P, int64_t n0) {
    const int64_t nsuper = g.K / kSuper;
    const uint8_t* A = g.A + n0 * g.a_row_bytes;
    float* C = g.C + n0 * g.ldc;
    const int64_t h = (g.nrows + 1) / 2;
    for (int64_t r = 0; r < h; ++r) {
        const int64_t r1 = r + h < g.nrows ? r + h : r;
        __m512 acc[NC];
        e_pair<NC>(g, P, A, nsuper, g.W + r * g.w_group_bytes, g.W + r1 * g.w_group_bytes, acc);
        for (int n = 0; n < NC; ++n) {
            C[n * g.ldc + r] = hsum8(_mm512_castps512_ps256(acc[n]));
            if (r1 != r) C[n * g.ldc + r1] = hsum8(_mm512_extractf32x8_ps(acc[n], 1));
        }
    }
}

constexpr int kColsE = 8;
  // columns per pass

void gemm_iq4_ks(const GemmArgs& g) {
    const int64_t nsuper = g.K / kSuper;
    const int64_t chunk = g.ncols < kColsE ? g.ncols : kColsE;
    Buffer buf((size_t)(chunk * nsuper) * sizeof(ActE));
    ActE* P = reinterpret_cast<ActE*>(buf.p);
    for (int64_t n0 = 0; n0 < g.ncols; n0 += kColsE) {
        const int nc = (int)(g.ncols - n0 < kColsE ? g.ncols - n0 : kColsE);
        for (int n = 0; n < nc; ++n)
            for (int64_t i = 0; i < nsuper; ++i)
                prepare_e(g.A + (n0 + n) * g.a_row_bytes + i * kActBytes, P[n * nsuper + i]);
        switch (nc) {
            case 1: e_cols<1>(g, P, n0); break;
            case 2: e_cols<2>(g, P, n0); break;
            case 3: e_cols<3>(g, P, n0); break;
            case 4: e_cols<4>(g, P, n0); break;
            case 5: e_cols<5>(g, P, n0); break;
            case 6: e_cols<6>(g, P, n0); break;
            case 7: e_cols<7>(g, P, n0); break;
            default: e_cols<8>(g, P, n0); break;
        }
    }
}

}  // namespace

void register_avx512_iq4_ks(KernelTables& t) {
    t.types[T_IQ4_KS].gemm = gemm_iq4_ks;
}

}  // namespace iqkq
