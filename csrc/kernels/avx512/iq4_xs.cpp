// AVX-512 matmul kernels for iq4_xs x q8_K and iq4_xs_r8 x q8_K32 and the iq4_xs -> q8_k_r8
// conversion (the other entries use the AVX2 kernels). Compiled with the AVX-512 flags (CMakeLists.txt) and used only on CPUs with F,
// VL, BW, DQ, VNNI and VBMI (dispatch.cpp).
//
// ik_llama.cpp's AVX2 kernel multiplies the grid + 128 (unsigned) with the int8 activations
// by VPMADDUBSW, which saturates the sum of each adjacent pair of products to int16; the
// results must keep that, so the dot products stay VPMADDUBSW (512-bit), followed by VPDPWSSD
// with the block scales (exact int32). Decoding: VPERMB reads the low 6 bits of each index
// byte, so a 64-byte table holding grid + 128 four times maps a nibble byte straight to its
// value; the high nibbles need one VPSRLW first. One 64-byte load holds 4 blocks (128-bit
// chunk k = block 4j + k); the activations are rearranged once per call to match: per
// super-block and j = 0, 1, [a_4j+k elements 0..15, k = 0..3] then [elements 16..31].
// Adjacent byte pairs are those of the element order, so the saturated sums are ik's, and
// lanes 4k + L of chunk k add up to the element-order lanes L (resp. 4 + L) of the AVX2
// kernel before the float operations, which are the same and in the same order.
//
// No STL containers or shared inline functions here (see common.h).
#include "common.h"
#include "formats/act.h"
#include "formats/iq4_xs.h"
#include "kernels/avx2/simd.h"
#include "kernels/avx512/simd.h"
#include "types.h"

#include <immintrin.h>

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace iqkq {
namespace {
using namespace iq4_xs;

constexpr int kActBytes = act::kQ8KBytes;

struct Tables {
    uint8_t grid_u[64];  // 128 + kvalues_iq4nl[i & 15], for VPERMB
};
constexpr Tables make_tables() {
    Tables t{};
    for (int i = 0; i < 64; ++i) t.grid_u[i] = (uint8_t)(128 + iq4_grid::kValues[i & 15]);
    return t;
}
alignas(64) constexpr Tables kT = make_tables();

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// The 8 block scales (code - 32), each in both int16 halves of int32 lane b.
inline __m256i scale_pairs(const uint8_t* sb) {
    const __m256i sl = _mm256_srlv_epi32(_mm256_set1_epi32((int)rd_u32(sb + kOffSl)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
    const __m256i sh = _mm256_srlv_epi32(_mm256_set1_epi32((int)rd_u16(sb + kOffSh)), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    const __m256i code = _mm256_ternarylogic_epi32(_mm256_and_si256(sl, _mm256_set1_epi32(15)),
                                                   _mm256_slli_epi32(sh, 4), _mm256_set1_epi32(0x30), 0xf8);  // a | (b & c)
    return _mm256_sub_epi16(_mm256_or_si256(code, _mm256_slli_epi32(code, 16)), _mm256_set1_epi16(32));
}

void prepare_act(const uint8_t* act, uint8_t* out, int64_t K) {
    for (int64_t i = 0; i < K / kSuper; ++i) {
        const uint8_t* q = act + i * kActBytes + act::kQ8KQs;
        uint8_t* o = out + i * kSuper;
        for (int j = 0; j < 2; ++j)
            for (int k = 0; k < 4; ++k) {
                std::memcpy(o + 128 * j + 16 * k, q + 32 * (4 * j + k), 16);
                std::memcpy(o + 128 * j + 64 + 16 * k, q + 32 * (4 * j + k) + 16, 16);
            }
    }
}
size_t prepared_bytes(int64_t K) { return (size_t)K; }

template <int NC>
__attribute__((noinline)) void gemm_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nsuper = g.K / kSuper;
    const __m512i tab = _mm512_load_si512(kT.grid_u);
    const __m512i sel0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i sel1 = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    const uint8_t* acts[NC];
    const uint8_t* pq[NC];
    for (int n = 0; n < NC; ++n) {
        acts[n] = g.A + (n0 + n) * g.a_row_bytes;
        pq[n] = g.P + (n0 + n) * g.p_row_bytes;
    }
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* sb = w + i * kBytes;
            const float d = _cvtsh_ss(rd_u16(sb + kOffD));
            const __m256i pairs = scale_pairs(sb);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + i * kActBytes;
                const __m256i mins = _mm256_madd_epi16(pairs, load32(ab + act::kQ8KBsums));
                acc[n] = _mm256_fmadd_ps(_mm256_set1_ps((-128.0f * d) * rd_f32(ab + act::kQ8KD)), _mm256_cvtepi32_ps(mins), acc[n]);
            }
            const __m512i pz = _mm512_castsi256_si512(pairs);
            const __m512i s0 = _mm512_permutexvar_epi32(sel0, pz), s1 = _mm512_permutexvar_epi32(sel1, pz);
            const __m512i q0 = _mm512_loadu_si512(sb + kOffQs), q1 = _mm512_loadu_si512(sb + kOffQs + 64);
            const __m512i l0 = _mm512_permutexvar_epi8(q0, tab), h0 = _mm512_permutexvar_epi8(_mm512_srli_epi16(q0, 4), tab);
            const __m512i l1 = _mm512_permutexvar_epi8(q1, tab), h1 = _mm512_permutexvar_epi8(_mm512_srli_epi16(q1, 4), tab);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* a = pq[n] + i * kSuper;
                __m512i sa = _mm512_dpwssd_epi32(_mm512_setzero_si512(), s0, _mm512_maddubs_epi16(l0, _mm512_loadu_si512(a)));
                __m512i sh = _mm512_dpwssd_epi32(_mm512_setzero_si512(), s0, _mm512_maddubs_epi16(h0, _mm512_loadu_si512(a + 64)));
                sa = _mm512_dpwssd_epi32(sa, s1, _mm512_maddubs_epi16(l1, _mm512_loadu_si512(a + 128)));
                sh = _mm512_dpwssd_epi32(sh, s1, _mm512_maddubs_epi16(h1, _mm512_loadu_si512(a + 192)));
                // chunks k = 0..3 -> element-order lanes: L (low nibbles), 4 + L (high nibbles)
                const __m256i ta = _mm256_add_epi32(_mm512_castsi512_si256(sa), _mm512_extracti64x4_epi64(sa, 1));
                const __m256i th = _mm256_add_epi32(_mm512_castsi512_si256(sh), _mm512_extracti64x4_epi64(sh, 1));
                const __m256i S = _mm256_add_epi32(_mm256_permute2x128_si256(ta, th, 0x20), _mm256_permute2x128_si256(ta, th, 0x31));
                const __m256 c = _mm256_set1_ps(d * rd_f32(acts[n] + i * kActBytes + act::kQ8KD));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(S), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) g.C[(n0 + n) * g.ldc + r] = avx2::hsum8(acc[n]);
    }
}

inline int column_block(int64_t left) {
    if (left >= 8 || left == 4 || left == 7) return 4;
    if (left == 5 || left == 6) return 3;
    return (int)left;
}

void gemm_iq4_xs(const GemmArgs& g) {
    for (int64_t n = 0; n < g.ncols;) {
        switch (column_block(g.ncols - n)) {
            case 4: gemm_cols<4>(g, n); n += 4; break;
            case 3: gemm_cols<3>(g, n); n += 3; break;
            case 2: gemm_cols<2>(g, n); n += 2; break;
            default: gemm_cols<1>(g, n); n += 1; break;
        }
    }
}

// ------------------------------------------------------------------------------------------
// iq4_xs_r8 x q8_K32. ik_llama.cpp's AVX2 kernel forms exact int32 sums (sign trick, no
// saturation), so VPDPBUSD on grid + 128 gives the same integers once 128 * (sum of the
// activations) is taken off: each block's accumulator starts from that correction (computed
// once per call). A block's 128 nibble bytes are two 64-byte registers; the VPERMB-decoded
// low / high nibbles hold, per 256-bit half h and dword lane k (row k), elements
// {0..3, 4..7, 16..19, 20..23} (h = 0) resp. {8..11, 12..15, 24..27, 28..31} (h = 1); the
// activations are laid out to match (prepare_act_r8). The block scale of
// row k multiplies both halves (VPMULLD), the halves add up at the end of the super-block:
// I_k exactly, then acc_k = fma(d_k * dA, I_k, acc_k) as in the AVX2 kernel.

// Prepared activations per super-block: for each block b, 64 bytes [A, A, B, B] (16-byte
// chunks) with A = elements (0..3, 4..7, 16..19, 20..23) and B = (8..11, 12..15, 24..27,
// 28..31), so that VPSHUFD with dword t gives, per 256-bit half, the 4 activations of decoded
// register t; then the corrections -128 * (sum of the 16 activations of half h), block b at
// int32 2b + h (32 int32 slots, the upper 16 zero, so an unaligned 64-byte load from slot 2b
// stays inside).
constexpr int kR8PrepSuper = 8 * 64 + 128;

void prepare_act_r8(const uint8_t* act, uint8_t* out, int64_t K) {
    static constexpr int kA[4] = {0, 1, 4, 5}, kB[4] = {2, 3, 6, 7};  // element groups (4 values)
    for (int64_t i = 0; i < K / kSuper; ++i) {
        const int8_t* q = reinterpret_cast<const int8_t*>(act + i * kActBytes + act::kQ8KQs);
        uint8_t* o = out + i * kR8PrepSuper;
        std::memset(o + 8 * 64, 0, 128);
        for (int b = 0; b < 8; ++b) {
            const int8_t* y = q + 32 * b;
            for (int t = 0; t < 4; ++t) {
                std::memcpy(o + 64 * b + 4 * t, y + 4 * kA[t], 4);
                std::memcpy(o + 64 * b + 16 + 4 * t, y + 4 * kA[t], 4);
                std::memcpy(o + 64 * b + 32 + 4 * t, y + 4 * kB[t], 4);
                std::memcpy(o + 64 * b + 48 + 4 * t, y + 4 * kB[t], 4);
            }
            int32_t half[2] = {0, 0};
            for (int e = 0; e < 32; ++e) half[(e / 8) & 1] += y[e];
            for (int h = 0; h < 2; ++h) wr_u32(o + 8 * 64 + 4 * (2 * b + h), (uint32_t)(-128 * half[h]));
        }
    }
}
size_t prepared_bytes_r8(int64_t K) { return (size_t)(K / kSuper) * kR8PrepSuper; }

// The 64 scales (code - 32) of an iq4_xs_r8 group super-block, byte 8b + k = block b, row k.
inline void r8_scales(const uint8_t* gb, int8_t* out) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), m32 = _mm256_set1_epi8(32);
    const __m256i sl = load32(gb + kR8OffSl);
    const __m128i shb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(gb + kR8OffSh));
    const __m256i sh = _mm256_set_m128i(_mm_srli_epi16(shb, 2), shb);
    const __m256i h0 = _mm256_or_si256(_mm256_and_si256(sl, m4), _mm256_and_si256(_mm256_slli_epi16(sh, 4), m30));
    const __m256i h1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(sl, 4), m4), _mm256_and_si256(sh, m30));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), _mm256_sub_epi8(h0, m32));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 32), _mm256_sub_epi8(h1, m32));
}

template <int NC>
__attribute__((noinline)) void gemm_r8_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nsuper = g.K / kSuper;
    const __m512i tab = _mm512_load_si512(kT.grid_u);
    const __m512i corr_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    alignas(32) int8_t sc[64];
    const uint8_t* acts[NC];
    const uint8_t* pq[NC];
    for (int n = 0; n < NC; ++n) {
        acts[n] = g.A + (n0 + n) * g.a_row_bytes;
        pq[n] = g.P + (n0 + n) * g.p_row_bytes;
    }
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* gb = w + i * kR8Bytes;
            // GEMV-like batches: the group super-block 12 ahead (~13 KiB) prefetched into L2
            // (Zen 4 ab_builds --cold N = 1, 1 thread: 8 ahead x1.44-1.55 over none, 12 ahead
            // x1.08-1.10 over 8, 16 / 24 ahead x1.05-1.07; 2 and 4 ahead or an L1 hint less).
            if (NC <= 2)
                for (int l = 0; l < kR8Bytes; l += 64) IQKQ_PREFETCH((const char*)(gb + 12 * kR8Bytes + l), _MM_HINT_T1);
            r8_scales(gb, sc);
            __m512i isum[NC];
            for (int n = 0; n < NC; ++n) isum[n] = _mm512_setzero_si512();
            for (int b = 0; b < 8; ++b) {
                int64_t s8;
                std::memcpy(&s8, sc + 8 * b, 8);
                const __m512i ls = _mm512_cvtepi8_epi32(_mm_set1_epi64x(s8));
                const __m512i Q0 = _mm512_loadu_si512(gb + kR8OffQs + 128 * b), Q1 = _mm512_loadu_si512(gb + kR8OffQs + 128 * b + 64);
                const __m512i v0 = _mm512_permutexvar_epi8(Q0, tab), v1 = _mm512_permutexvar_epi8(_mm512_srli_epi16(Q0, 4), tab);
                const __m512i v2 = _mm512_permutexvar_epi8(Q1, tab), v3 = _mm512_permutexvar_epi8(_mm512_srli_epi16(Q1, 4), tab);
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* a = pq[n] + i * kR8PrepSuper;
                    const __m512i y = _mm512_loadu_si512(a + 64 * b);
                    __m512i p = _mm512_permutexvar_epi32(corr_idx, _mm512_loadu_si512(a + 8 * 64 + 8 * b));
                    p = _mm512_dpbusd_epi32(p, v0, _mm512_shuffle_epi32(y, _MM_PERM_AAAA));
                    p = _mm512_dpbusd_epi32(p, v1, _mm512_shuffle_epi32(y, _MM_PERM_BBBB));
                    p = _mm512_dpbusd_epi32(p, v2, _mm512_shuffle_epi32(y, _MM_PERM_CCCC));
                    p = _mm512_dpbusd_epi32(p, v3, _mm512_shuffle_epi32(y, _MM_PERM_DDDD));
                    isum[n] = _mm512_add_epi32(isum[n], _mm512_mullo_epi32(ls, p));
                }
            }
            const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(gb + kR8OffD)));
            for (int n = 0; n < NC; ++n) {
                const __m256i I = _mm256_add_epi32(_mm512_castsi512_si256(isum[n]), _mm512_extracti64x4_epi64(isum[n], 1));
                const __m256 c = _mm256_mul_ps(d8, _mm256_set1_ps(rd_f32(acts[n] + i * kActBytes + act::kQ8KD)));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(I), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + 8 * grp, acc[n]);
    }
}

void gemm_iq4_xs_r8(const GemmArgs& g) {
    // Up to 8 columns per pass: the weights of a block are decoded once for all of them.
    static const ColsFn fns[] = {nullptr,         gemm_r8_cols<1>, gemm_r8_cols<2>, gemm_r8_cols<3>, gemm_r8_cols<4>,
                                 gemm_r8_cols<5>, gemm_r8_cols<6>, gemm_r8_cols<7>, gemm_r8_cols<8>};
    for_column_chunks(g, fns, 8);
}

// ------------------------------------------------------------------------------------------
// Large-batch conversion iq4_xs -> q8_k_r8, a group of 8 rows and one super-block at a time
// (the scheme of kernels/avx512/iq4_ks.cpp, for one table and 6-bit scale codes):
//  1. The nibble bytes of the 8 rows are interleaved as q8_k_r8 interleaves its quants
//     (kernels/avx512/simd.h interleave8), so each interleaved register gives two q8_k_r8
//     registers (low and high nibbles) as they are stored.
//  2. Per block the re-quantized values of the 8 rows form a 128-entry table (8 rows x 16
//     nibbles): entries rne(inv_r * f32(ls * T[n])) (exact products from a constant table
//     indexed by the scale code), packed with signed saturation; one VPERMT2B with index
//     nibble | 16 * row looks up 64 of them.
//  3. M_r = max over blocks of |ls| * (largest |T[n]| of the nibbles present), via the same
//     indices into a table of |T| and VPMADDUBSW (exact).
// dnew of the 8 rows is one vector; in the dnew < 1 case inv = 1 stands for "copy v" (exact).

struct ConvTables {
    float lsT[64][16];     // code c, nibble n: f32((c - 32) * T[n])
    uint8_t abs_t[64];     // 16 r + n -> |T[n]| (VPERMB reads 6 bits: any row)
    uint8_t rowbits[64];   // 16 * row of each byte of an interleaved register: 16 * ((i / 4) % 8)
    uint8_t unpack[64];    // natural 16 r + n <- packed 16 (n / 4) + 4 r + n % 4
    uint8_t lsb[8][64];    // block b: bytes 4 r and 4 r + 2 <- code byte 8 r + b (odd bytes zeroed)
};
constexpr ConvTables make_conv_tables() {
    ConvTables t{};
    for (int c = 0; c < 64; ++c)
        for (int n = 0; n < 16; ++n) t.lsT[c][n] = (float)((c - 32) * iq4_grid::kValues[n]);
    for (int i = 0; i < 64; ++i) {
        const int v = iq4_grid::kValues[i % 16];
        t.abs_t[i] = (uint8_t)(v < 0 ? -v : v);
        const int r = i / 16, n = i % 16;
        t.rowbits[i] = (uint8_t)(16 * ((i / 4) % 8));
        t.unpack[i] = (uint8_t)(16 * (n / 4) + 4 * r + n % 4);
        for (int b = 0; b < 8; ++b) t.lsb[b][i] = (uint8_t)(8 * ((i / 4) % 8) + b);
    }
    return t;
}
alignas(64) constexpr ConvTables kCT = make_conv_tables();

inline __m512i ld64(const void* p) { return _mm512_loadu_si512(p); }

void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K), nsuper = K / kSuper;
    constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    alignas(64) __m512i idx[8][4];
    alignas(32) float inv[8];
    alignas(64) uint8_t code[64];  // byte 8 r + b: scale code of row r, block b
    const __m512i m4 = _mm512_set1_epi8(0x0f), rowbits = ld64(kCT.rowbits), unpack = ld64(kCT.unpack);
    const __m512i absT = ld64(kCT.abs_t);
    for (int64_t g = 0; g < nrows / 8; ++g) {
        const uint8_t* w = src + 8 * g * rb;
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* sb = w + i * kBytes;  // row r at sb + r * rb
            uint8_t* o = dst + (g * nsuper + i) * (16 + 2048);
            alignas(16) uint16_t dh[8];
            for (int r = 0; r < 8; ++r) {
                const uint8_t* x = sb + r * rb;
                dh[r] = rd_u16(x + kOffD);
                for (int b = 0; b < 8; ++b) code[8 * r + b] = (uint8_t)scale_code(x, b);
            }
            const __m256 D = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dh)));
            const __m512i als = _mm512_abs_epi8(_mm512_sub_epi8(_mm512_load_si512(code), _mm512_set1_epi8(32)));

            __m256i P = _mm256_setzero_si256();  // words 2r, 2r + 1: candidates for M_r
            for (int c = 0; c < 2; ++c) {
                __m512i in[8], X[8];
                for (int r = 0; r < 8; ++r) in[r] = ld64(sb + r * rb + kOffQs + 64 * c);
                avx512::interleave8(in, X);  // X[p]: block 4c + p / 2, nibble dwords 2 (p % 2), + 1
                for (int p = 0; p < 8; ++p) {
                    __m512i* id = idx[4 * c + p / 2];
                    id[p % 2] = _mm512_ternarylogic_epi32(X[p], m4, rowbits, 0xea);  // (x & 15) | 16 r
                    id[2 + p % 2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(X[p], 4), m4, rowbits, 0xea);
                }
                for (int b = 4 * c; b < 4 * c + 4; ++b) {
                    const __m512i* id = idx[b];
                    const __m512i a = _mm512_max_epu8(
                        _mm512_max_epu8(_mm512_permutexvar_epi8(id[0], absT), _mm512_permutexvar_epi8(id[1], absT)),
                        _mm512_max_epu8(_mm512_permutexvar_epi8(id[2], absT), _mm512_permutexvar_epi8(id[3], absT)));
                    __m256i y = _mm256_max_epu8(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));  // dword r: row r
                    y = _mm256_max_epu8(y, _mm256_srli_epi16(y, 8));  // bytes 4r, 4r + 2: maxima of pairs
                    const __m256i ls = _mm512_castsi512_si256(_mm512_maskz_permutexvar_epi8(0x5555555555555555ull, ld64(kCT.lsb[b]), als));
                    P = _mm256_max_epi16(P, _mm256_maddubs_epi16(y, ls));
                }
            }
            const __m256i M = _mm256_and_si256(_mm256_max_epi16(P, _mm256_srli_epi32(P, 16)), _mm256_set1_epi32(0xffff));
            const __m256 one = _mm256_set1_ps(1.0f);
            const __m256 dnew = _mm256_max_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(M), _mm256_set1_ps(1.0f / 127.0f)), one);  // never NaN
            _mm256_store_ps(inv, _mm256_div_ps(one, dnew));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(_mm256_mul_ps(D, dnew), _MM_FROUND_TO_NEAREST_INT));

            for (int b = 0; b < 8; ++b) {
                __m512i t[8];
                for (int r = 0; r < 8; ++r)
                    t[r] = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_set1_ps(inv[r]), _mm512_load_ps(kCT.lsT[code[8 * r + b]])), kRne);
                const __m512i tl = _mm512_permutexvar_epi8(unpack, _mm512_packs_epi16(_mm512_packs_epi32(t[0], t[1]), _mm512_packs_epi32(t[2], t[3])));
                const __m512i th = _mm512_permutexvar_epi8(unpack, _mm512_packs_epi16(_mm512_packs_epi32(t[4], t[5]), _mm512_packs_epi32(t[6], t[7])));
                for (int k = 0; k < 4; ++k) _mm512_storeu_si512(o + 16 + 64 * (4 * b + k), _mm512_permutex2var_epi8(tl, idx[b][k], th));
            }
        }
    }
}

}  // namespace

void register_avx512_iq4_xs(KernelTables& t) {
    TypeKernels& a = t.types[T_IQ4_XS];
    a.gemm = gemm_iq4_xs;
    a.prepare_act = prepare_act;
    a.prepared_bytes = prepared_bytes;
    a.to_large_batch = convert_to_q8_k_r8;
    TypeKernels& b = t.types[T_IQ4_XS_R8];
    b.gemm = gemm_iq4_xs_r8;
    b.prepare_act = prepare_act_r8;
    b.prepared_bytes = prepared_bytes_r8;
}

}  // namespace iqkq
