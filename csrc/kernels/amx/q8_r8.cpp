// AMX-INT8 kernels for the two large-batch workhorses, q8_k_r8 x q8_K and q8_0_r8 x q8_2_x4
// (docs/formats.md §18). Compiled with the AVX-512 and AMX flags (CMakeLists.txt) and used
// only when dispatch.cpp found AMX-TILE + AMX-INT8 and the OS granted the tile state.
//
// TDPBSSD multiplies signed by signed bytes and sums each 64-byte K slab into int32 lanes
// exactly, so the integer dot product of a block is the same integer the VNNI kernels get
// (they reach it through the w + 128 flip and the block sums). Per block, the int32 tile is
// stored and then scaled in float exactly as the AVX-512 / AVX2 / scalar kernels do:
// c = d_w * d_a, acc = fma(c, float(P), acc), blocks in order. Outputs are bit-identical.
//
// Tile roles: A = 16 activation rows (tokens) x one K slab (64 bytes for q8_K, 32 for
// q8_2_x4), from the activations prepared once per matmul (prepare_act below: quants 64-byte
// aligned, so each tile row is one cache line); B = the weights of 16 output rows in the VNNI
// layout TMUL expects (row r of B holds 4 consecutive K bytes of each of the 16 rows). The
// _r8 layouts hold exactly that for 8 rows, so two row groups are interleaved into a
// per-thread scratch once per gemm call (16 rows x K bytes, reused by every token tile; the
// driver hands the kernel up to ~1 MiB of activation rows per call for that); a full-width
// B tile runs twice as fast as two 8-column ones. C = 16 tokens x 16 rows int32.
//
// One token tile x one 16-row block at a time, over all blocks of K, with the 16 float
// accumulators in registers, and every tile register double-buffered (C by block, A and B
// by slab): tile registers are not renamed, so reusing one makes the next load or product
// wait for the last one to finish. Measured on Sapphire Rapids (q8_k_r8, 4096 x 4096, N =
// 512, one thread): a 2 x 2 C-tile blocking without the double buffers reached 0.55x of this
// and a 2 x 1 one sharing each B tile 0.6x. Columns beyond a multiple of 16, a lone last
// row group and batches under 16 go to the AVX-512 kernels.
#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"
#include "formats/act.h"
#include "formats/q8_0.h"
#include "formats/q8_k_r8.h"
#include "types.h"

#include <immintrin.h>

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace iqkq {
namespace {

// The LDTILECFG memory operand (palette 1): bytes per row and rows of each tile register.
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Tile registers: C(mt, nt) = mt * 2 + nt (0..3), A(mt) = 4 + mt, B(nt) = 6 + nt.
TileConfig make_config(int a_colsb, int b_rows) {
    TileConfig c;
    for (int t = 0; t < 4; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    for (int t = 4; t < 6; ++t) {
        c.colsb[t] = (uint16_t)a_colsb;
        c.rows[t] = 16;
    }
    for (int t = 6; t < 8; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = (uint8_t)b_rows;
    }
    return c;
}

// One block's geometry: K bytes per block, per-block bytes of the B scratch.
struct Q8K {
    static constexpr int kBlock = q8_k_r8::kBlock;       // 256 = 4 slabs of 64
    static constexpr int kSlabs = 4;
    static constexpr int kSlabK = 64;
    static constexpr size_t kWBlock = q8_k_r8::kGroupBlock;  // bytes of one 8-row group block
    static constexpr int kWQs = 16;                          // 8 fp16 scales first
};
struct Q80 {
    static constexpr int kBlock = q8_0::kBlock;  // 32 = 1 slab of 32
    static constexpr int kSlabs = 1;
    static constexpr int kSlabK = 32;
    static constexpr size_t kWBlock = q8_0::kR8Bytes;
    static constexpr int kWQs = 16;
};

// Per-thread scratch for up to two interleaved 16-row weight blocks and their scales.
struct Scratch {
    std::vector<uint8_t> bytes;
    uint8_t* get(size_t n) {
        if (bytes.size() < n + 64) bytes.resize(n + 64);
        return bytes.data() + ((64 - ((uintptr_t)bytes.data() & 63)) & 63);
    }
};
thread_local Scratch tl_scratch;

// Rows of groups ga, gb -> B slabs of 16 rows (one 16 x 64-byte tile per K slab, kSlabK / 4
// rows) and 16 float scales per block.
template <class F>
void interleave_pair(const uint8_t* ga, const uint8_t* gb, int64_t nb, uint8_t* wq, float* dw) {
    constexpr int chunks = F::kBlock / 4;  // 4-byte K chunks per block
    for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* a = ga + i * F::kWBlock;
        const uint8_t* b = gb + i * F::kWBlock;
        uint8_t* o = wq + i * (chunks * 64);
        for (int m = 0; m < chunks; ++m) {
            _mm256_store_si256(reinterpret_cast<__m256i*>(o + 64 * m), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + F::kWQs + 32 * m)));
            _mm256_store_si256(reinterpret_cast<__m256i*>(o + 64 * m + 32), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + F::kWQs + 32 * m)));
        }
        const __m256i dh = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))),
                                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), 1);
        _mm512_store_ps(dw + 16 * i, _mm512_cvtph_ps(dh));
    }
}

// Activations, prepared once per matmul (TypeKernels::prepare_act): each row's quants of
// all blocks back to back from a 64-byte aligned start (so every A-tile row is one cache
// line; in the q8_K / q8_2_x4 records they straddle two), then one float scale per block.
template <class F>
size_t prepared_bytes(int64_t K) {
    return (size_t)K + (size_t)(K / F::kBlock) * sizeof(float);
}
void prepare_q8k(const uint8_t* a, uint8_t* out, int64_t K) {
    const int64_t nb = K / act::kQ8KBlock;
    float* d = reinterpret_cast<float*>(out + K);
    for (int64_t i = 0; i < nb; ++i) {
        std::memcpy(out + i * act::kQ8KBlock, a + i * act::kQ8KBytes + act::kQ8KQs, act::kQ8KBlock);
        d[i] = rd_f32(a + i * act::kQ8KBytes + act::kQ8KD);
    }
}
void prepare_q82(const uint8_t* a, uint8_t* out, int64_t K) {
    const int64_t nb = K / act::kQ82Block, nb4 = 4 * (nb / 4);
    float* d = reinterpret_cast<float*>(out + K);
    for (int64_t i = 0; i < nb; ++i) {
        std::memcpy(out + i * act::kQ82Block, a + act::q82_qs_offset(i, nb4), act::kQ82Block);
        d[i] = bf16_to_fp32(rd_u16(a + act::q82_d_offset(i, nb4)));
    }
}
template <class F>
struct Prepared {
    int64_t nb;
    const uint8_t* qs(const uint8_t* row, int64_t i, int slab) const { return row + i * F::kBlock + F::kSlabK * slab; }
    float d(const uint8_t* row, int64_t i) const { return rd_f32(row + nb * F::kBlock + 4 * i); }
};

// One token tile x one 16-row weight block over all blocks, the 16 float accumulators in
// registers (no load/store per block: what pays for the 32-value blocks of q8_0_r8, whose
// float step is 8x denser than q8_k_r8's). Blocks alternate between two sets of tiles
// (C 0/1, A 4/5, B 6/7), so block i+1's products never wait for block i's store.
template <class F, class Act, int Par>
inline void issue1(const Act& act, const uint8_t* arow, size_t ps, const uint8_t* wq, int64_t i) {
    constexpr int chunks = F::kBlock / 4;
    // (The tile intrinsics take their register numbers as literal tokens.) C alternates
    // with the block; A and B alternate with the K slab (per block for one-slab blocks).
    const uint8_t* w = wq + i * (chunks * 64);
    constexpr int64_t bs = (F::kSlabK / 4) * 64;
    if constexpr (Par == 0) _tile_zero(0); else _tile_zero(1);
    for (int s = 0; s < F::kSlabs; s += (F::kSlabs > 1 ? 2 : 1)) {
        if constexpr (F::kSlabs > 1 || Par == 0) {
            _tile_loadd(4, act.qs(arow, i, s), ps);
            _tile_loadd(6, w + s * bs, 64);
            if constexpr (Par == 0) _tile_dpbssd(0, 4, 6); else _tile_dpbssd(1, 4, 6);
        }
        if constexpr (F::kSlabs > 1 || Par == 1) {
            const int s1 = F::kSlabs > 1 ? s + 1 : s;
            _tile_loadd(5, act.qs(arow, i, s1), ps);
            _tile_loadd(7, w + s1 * bs, 64);
            if constexpr (Par == 0) _tile_dpbssd(0, 5, 7); else _tile_dpbssd(1, 5, 7);
        }
    }
}

template <class F, class Act>
inline void scale1(const Act& act, const uint8_t* arow, size_t ps, const float* dw, int64_t i, const int32_t* ib, __m512* acc) {
    const __m512 w = _mm512_load_ps(dw + 16 * i);
    for (int r = 0; r < 16; ++r) {
        const __m512 c = _mm512_mul_ps(w, _mm512_set1_ps(act.d(arow + r * ps, i)));
        acc[r] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(_mm512_load_si512(ib + 16 * r)), acc[r]);
    }
}

template <class F, class Act>
void amx_1x1(const Act& act, const uint8_t* arow, size_t ps, const uint8_t* wq, const float* dw, float* C, size_t ldc) {
    alignas(64) int32_t ib[2][256];
    __m512 acc[16];
    for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
    const int64_t nb = act.nb;
    issue1<F, Act, 0>(act, arow, ps, wq, 0);
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        issue1<F, Act, 1>(act, arow, ps, wq, i + 1);
        _tile_stored(0, ib[0], 64);
        scale1<F, Act>(act, arow, ps, dw, i, ib[0], acc);
        if (i + 2 < nb) issue1<F, Act, 0>(act, arow, ps, wq, i + 2);
        _tile_stored(1, ib[1], 64);
        scale1<F, Act>(act, arow, ps, dw, i + 1, ib[1], acc);
    }
    if (i < nb) {
        _tile_stored(0, ib[0], 64);
        scale1<F, Act>(act, arow, ps, dw, i, ib[0], acc);
    }
    for (int r = 0; r < 16; ++r) _mm512_storeu_ps(C + r * ldc, acc[r]);
}

template <class F, class Act>
void amx_gemm(const GemmArgs& g, const Act& act, GemmFn fallback) {
    const int64_t ngroups = g.nrows / 8, npairs = ngroups / 2;
    const int64_t ntok = g.ncols / 16 * 16;
    const int64_t nb = g.K / F::kBlock;
    if (npairs > 0 && ntok > 0) {
        static const TileConfig cfg = make_config(F::kSlabK, F::kSlabK / 4);
        _tile_loadconfig(&cfg);
        const size_t wq_bytes = (size_t)nb * (F::kBlock / 4) * 64, dw_bytes = (size_t)nb * 16 * sizeof(float);
        uint8_t* wq = tl_scratch.get(wq_bytes + dw_bytes);
        float* dw = reinterpret_cast<float*>(wq + wq_bytes);
        for (int64_t p = 0; p < npairs; ++p) {
            const uint8_t* ga = g.W + 2 * p * g.w_group_bytes;
            interleave_pair<F>(ga, ga + g.w_group_bytes, nb, wq, dw);
            for (int64_t n = 0; n < ntok; n += 16)
                amx_1x1<F, Act>(act, g.P + n * g.p_row_bytes, g.p_row_bytes, wq, dw, g.C + n * g.ldc + 16 * p, g.ldc);
        }
        _tile_release();
    }
    // What the tiles did not cover: the columns past the last full 16 (all rows), and a lone
    // last row group (the covered columns).
    if (ntok < g.ncols) {
        GemmArgs h = g;
        h.A = g.A + ntok * g.a_row_bytes;
        h.C = g.C + ntok * g.ldc;
        h.ncols = g.ncols - ntok;
        h.single_col = g.single_col >= ntok ? g.single_col - ntok : -1;
        fallback(h);
    }
    if (ngroups % 2 && ntok > 0) {
        GemmArgs h = g;
        h.W = g.W + (ngroups - 1) * g.w_group_bytes;
        h.nrows = 8;
        h.C = g.C + (ngroups - 1) * 8;
        h.ncols = ntok;
        h.single_col = g.single_col < ntok ? g.single_col : -1;
        fallback(h);
    }
}

GemmFn avx512_q8_k_r8 = nullptr, avx512_q8_0_r8 = nullptr;

// Below this many activation rows the AVX-512 kernels are faster (docs/formats.md §18).
constexpr int64_t kMinCols = 16;

void gemm_q8_k_r8(const GemmArgs& g) {
    if (g.ncols < kMinCols || g.nrows < 16 || !g.P) return avx512_q8_k_r8(g);
    amx_gemm<Q8K>(g, Prepared<Q8K>{g.K / Q8K::kBlock}, avx512_q8_k_r8);
}

void gemm_q8_0_r8(const GemmArgs& g) {
    if (g.ncols < kMinCols || g.nrows < 16 || !g.P) return avx512_q8_0_r8(g);
    amx_gemm<Q80>(g, Prepared<Q80>{g.K / Q80::kBlock}, avx512_q8_0_r8);
}

// Columns per call (the driver's max_cols hint): the interleaved weights are made once per
// call, so calls take as many activation rows as fit in about 1 MiB (L2), in multiples of 32.
template <class F>
int64_t amx_max_cols(int64_t K) {
    const int64_t fit = ((int64_t)1 << 20) / (int64_t)prepared_bytes<F>(K);
    return std::max<int64_t>(32, std::min<int64_t>(512, fit / 32 * 32));
}

}  // namespace

void register_amx_q8_r8(KernelTables& t) {
    // The table starts as a copy of the AVX-512 one: its kernels are the fallbacks.
    avx512_q8_k_r8 = t.types[T_Q8_K_R8].gemm;
    avx512_q8_0_r8 = t.types[T_Q8_0_R8].gemm;
    t.types[T_Q8_K_R8].gemm = gemm_q8_k_r8;
    t.types[T_Q8_0_R8].gemm = gemm_q8_0_r8;
    t.types[T_Q8_K_R8].max_cols = amx_max_cols<Q8K>;
    t.types[T_Q8_0_R8].max_cols = amx_max_cols<Q80>;
    t.types[T_Q8_K_R8].prepare_act = prepare_q8k;
    t.types[T_Q8_K_R8].prepared_bytes = prepared_bytes<Q8K>;
    t.types[T_Q8_0_R8].prepare_act = prepare_q82;
    t.types[T_Q8_0_R8].prepared_bytes = prepared_bytes<Q80>;
}

}  // namespace iqkq
