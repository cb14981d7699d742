// q8_0 (id 8) and q8_0_r8 (id 208): scalar reference quantize / dequantize / repack and the
// scalar twins of the matmul kernels (docs/formats.md §2, §3, §11.3 A and B).
#include "formats/q8_0.h"
#include "formats/r8_dwords.h"

#include "common.h"
#include "formats/act.h"
#include "types.h"

#include <cmath>
#include <vector>

namespace iqkq {
namespace {

using namespace q8_0;

void quantize_block(const float* x, uint8_t* out) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
        const float a = fabsf_(x[j]);
        amax = a > amax ? a : amax;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    wr_u16(out, fp32_to_fp16(d));
    for (int j = 0; j < kBlock; ++j) out[2 + j] = (uint8_t)quant_roundf(x[j] * id);
}

void quantize_q8_0(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float*) {
    const int64_t nb = K / kBlock;
    for (int64_t r = 0; r < nrows; ++r)
        for (int64_t b = 0; b < nb; ++b) quantize_block(src + r * K + b * kBlock, dst + (r * nb + b) * kBytes);
}

void dequantize_q8_0(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = nrows * (K / kBlock);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = src + b * kBytes;
        const float d = fp16_to_fp32(rd_u16(blk));
        for (int j = 0; j < kBlock; ++j) dst[b * kBlock + j] = d * (float)(int8_t)blk[2 + j];
    }
}

// q8_0 rows -> q8_0_r8 groups: d[r] copied, qs[32l + 4r + j] = q_r[4l + j].
static_assert(2 + 32 == kBytes && kBlock == 32, "q8_0_r8: r8_dwords layout");
void repack_to_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) { r8_dwords_to<32>(src, dst, nrows, K); }
void repack_from_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) { r8_dwords_from<32>(src, dst, nrows, K); }

void quantize_q8_0_r8(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const size_t group = 8 * (size_t)(K / kBlock) * kBytes;
    std::vector<uint8_t> tmp(group);
    for (int64_t g = 0; g < nrows / 8; ++g) {
        quantize_q8_0(src + g * 8 * K, tmp.data(), 8, K, imatrix);
        repack_to_r8(tmp.data(), dst + g * group, 8, K);
    }
}

void dequantize_q8_0_r8(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kBlock;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        float* y = dst + g * 8 * K;
        for (int64_t b = 0; b < nb; ++b, src += kR8Bytes) {
            for (int r = 0; r < 8; ++r) {
                const float d = fp16_to_fp32(rd_u16(src + 2 * r));
                for (int l = 0; l < 8; ++l)
                    for (int j = 0; j < 4; ++j)
                        y[r * K + b * kBlock + 4 * l + j] = d * (float)(int8_t)src[16 + 32 * l + 4 * r + j];
            }
        }
    }
}

// Position of block i of a q8_2_x4 activation row: scale, quants.
struct ActBlock {
    float d;
    const int8_t* q;
};
inline ActBlock act_block(const uint8_t* a, int64_t i, int64_t nb4) {
    return {bf16_to_fp32(rd_u16(a + act::q82_d_offset(i, nb4))),
            reinterpret_cast<const int8_t*>(a + act::q82_qs_offset(i, nb4))};
}

inline int32_t dot_i8(const int8_t* w, const int8_t* a, int n) {
    int32_t s = 0;
    for (int e = 0; e < n; ++e) s += (int32_t)w[e] * (int32_t)a[e];
    return s;
}

// Kernel (A): q8_0 x q8_2_x4, eight float lanes per output, summed with H8.
void gemm_q8_0(const GemmArgs& g) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t r = 0; r < g.nrows; ++r) {
            const uint8_t* w = g.W + r * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb4; ++b) {
                const int t = (int)(b % 4);
                const uint8_t* blk = w + b * kBytes;
                const ActBlock ab = act_block(a, b, nb4);
                const float c = fp16_to_fp32(rd_u16(blk)) * ab.d;
                const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
                acc[t] = fmaf_exact(c, (float)dot_i8(q, ab.q, 16), acc[t]);
                acc[t + 4] = fmaf_exact(c, (float)dot_i8(q + 16, ab.q + 16, 16), acc[t + 4]);
            }
            for (int64_t b = nb4; b < nb; ++b) {
                const uint8_t* blk = w + b * kBytes;
                const ActBlock ab = act_block(a, b, nb4);
                const float c = fp16_to_fp32(rd_u16(blk)) * ab.d;
                const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
                for (int L = 0; L < 8; ++L) acc[L] = fmaf_exact(c, (float)dot_i8(q + 4 * L, ab.q + 4 * L, 4), acc[L]);
            }
            g.C[n * g.ldc + r] = hsum8(acc);
        }
    }
}

// Kernel (B): q8_0_r8 x q8_2_x4, one accumulator per row, one fma per block.
void gemm_q8_0_r8(const GemmArgs& g) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
            const uint8_t* w = g.W + grp * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t* blk = w + b * kR8Bytes;
                const ActBlock ab = act_block(a, b, nb4);
                for (int r = 0; r < 8; ++r) {
                    int32_t p = 0;
                    for (int l = 0; l < 8; ++l)
                        for (int j = 0; j < 4; ++j)
                            p += (int32_t)(int8_t)blk[16 + 32 * l + 4 * r + j] * (int32_t)ab.q[4 * l + j];
                    const float c = fp16_to_fp32(rd_u16(blk + 2 * r)) * ab.d;
                    acc[r] = fmaf_exact(c, (float)p, acc[r]);
                }
            }
            for (int r = 0; r < 8; ++r) g.C[n * g.ldc + grp * 8 + r] = acc[r];
        }
    }
}

}  // namespace

void register_scalar_q8_0(KernelTables& t) {
    TypeKernels& a = t.types[T_Q8_0];
    a.quantize = quantize_q8_0;
    a.dequantize = dequantize_q8_0;
    a.gemm = gemm_q8_0;
    a.to_large_batch = repack_to_r8;
    TypeKernels& b = t.types[T_Q8_0_R8];
    b.quantize = quantize_q8_0_r8;
    b.dequantize = dequantize_q8_0_r8;
    b.gemm = gemm_q8_0_r8;
    b.to_interleaved = repack_to_r8;
    b.from_interleaved = repack_from_r8;
}

}  // namespace iqkq
