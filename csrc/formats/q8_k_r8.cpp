// q8_k_r8 (id 399): 8 interleaved rows of int8 quants with one fp16 scale per row and
// super-block. Scalar reference quantize (the AVX2 q8_K32 routine of docs/formats.md §4.2, then
// fp16 of the scale, §5.3), dequantize and the matmul kernel (C) of §11.3.
#include "formats/q8_k_r8.h"

#include "common.h"
#include "formats/act.h"
#include "types.h"

namespace iqkq {
namespace {
using namespace q8_k_r8;

void quantize_q8_k_r8(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float*) {
    const int64_t nb = K / kBlock;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t i = 0; i < nb; ++i) {
            uint8_t* o = dst + (g * nb + i) * kGroupBlock;
            for (int r = 0; r < 8; ++r) {
                const float* x = src + (g * 8 + r) * K + i * kBlock;
                float m = 0.0f;
                for (int j = 0; j < kBlock; ++j) {
                    const float a = fabsf_(x[j]);
                    m = a > m ? a : m;
                }
                const float d = m / 127.0f;
                const float id = m != 0.0f ? 127.0f / m : 0.0f;
                wr_u16(o + 2 * r, fp32_to_fp16(d));
                for (int j = 0; j < kBlock; ++j)
                    o[16 + 32 * (j / 4) + 4 * r + (j % 4)] = (uint8_t)sat_i8(cvt_rne_i32(id * x[j]));
            }
        }
    }
}

void dequantize_q8_k_r8(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kBlock;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t i = 0; i < nb; ++i, src += kGroupBlock) {
            for (int r = 0; r < 8; ++r) {
                const float d = fp16_to_fp32(rd_u16(src + 2 * r));
                float* y = dst + (g * 8 + r) * K + i * kBlock;
                for (int j = 0; j < kBlock; ++j) y[j] = d * (float)(int8_t)src[16 + 32 * (j / 4) + 4 * r + (j % 4)];
            }
        }
    }
}

// Kernel (C): per row, per super-block c = fp16(d_r) * dA, acc_r = fma(c, P, acc_r).
void gemm_q8_k_r8(const GemmArgs& g) {
    const int64_t nb = g.K / kBlock;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
            const uint8_t* w = g.W + grp * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nb; ++i) {
                const uint8_t* blk = w + i * kGroupBlock;
                const uint8_t* ab = a + i * act::kQ8KBytes;
                const float dA = rd_f32(ab);
                const int8_t* aq = reinterpret_cast<const int8_t*>(ab + act::kQ8KQs);
                for (int r = 0; r < 8; ++r) {
                    int32_t p = 0;
                    for (int j = 0; j < kBlock; ++j)
                        p += (int32_t)(int8_t)blk[16 + 32 * (j / 4) + 4 * r + (j % 4)] * (int32_t)aq[j];
                    const float c = fp16_to_fp32(rd_u16(blk + 2 * r)) * dA;
                    acc[r] = fmaf_exact(c, (float)p, acc[r]);
                }
            }
            for (int r = 0; r < 8; ++r) g.C[n * g.ldc + grp * 8 + r] = acc[r];
        }
    }
}

}  // namespace

void register_scalar_q8_k_r8(KernelTables& t) {
    TypeKernels& k = t.types[T_Q8_K_R8];
    k.quantize = quantize_q8_k_r8;
    k.dequantize = dequantize_q8_k_r8;
    k.gemm = gemm_q8_k_r8;
}

}  // namespace iqkq
