// iq4_xs (id 23) and iq4_xs_r8 (id 223): scalar reference quantize / dequantize / repack, the
// conversion to q8_k_r8 for large batches, and the scalar twins of ik_llama.cpp's AVX2 matmul
// kernels (docs/formats.md, "iq4_xs").
//
// Every float operation is written out once, in the order of the reference, with no implicit
// contraction (-ffp-contract=off). The SIMD kernels must give identical bytes / bits.
#include "formats/iq4_xs.h"

#include "common.h"
#include "formats/act.h"
#include "formats/q8_k_r8.h"
#include "formats/qhelper.h"
#include "types.h"

#include <vector>

namespace iqkq {
namespace {

using namespace iq4_xs;
using iq4_grid::best_index;

// ------------------------------------------------------------------------------ quantization

// One super-block of 256 floats -> 136 bytes (ggml-quants.c quantize_row_iq4_nl_impl with
// super_block_size 256, block_size 32, ntry 7, the kvalues_iq4nl grid). `qw`: 256 importance
// weights (raw imatrix slice, or QHelper's output for iq4_xs_r8) or null.
void quantize_super_block(const float* x, uint8_t* out, const float* qw) {
    float sigma2 = 0.0f;
    for (int j = 0; j < kSuper; ++j) sigma2 += x[j] * x[j];
    sigma2 *= 2.0f / kSuper;

    uint8_t L[kSuper];
    std::memset(L, 0, sizeof(L));
    float scales[kSuper / kBlock];
    float weight[kBlock];
    float max_scale = 0.0f, amax_scale = 0.0f;
    for (int ib = 0; ib < kSuper / kBlock; ++ib) {
        const float* xb = x + ib * kBlock;
        uint8_t* Lb = L + ib * kBlock;
        if (qw) {
            const float* w = qw + ib * kBlock;
            for (int j = 0; j < kBlock; ++j) weight[j] = w[j] * __builtin_sqrtf(sigma2 + xb[j] * xb[j]);
        } else {
            for (int j = 0; j < kBlock; ++j) weight[j] = xb[j] * xb[j];
        }
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < kBlock; ++j) {
            const float ax = fabsf_(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (amax < 1e-15f) {  // GROUP_MAX_EPS
            scales[ib] = 0.0f;
            continue;
        }
        float d = -max / (float)kNL[0];
        float id = 1.0f / d;
        float sumqx = 0.0f, sumq2 = 0.0f;
        for (int j = 0; j < kBlock; ++j) {
            const float al = id * xb[j];
            const int l = best_index(kNL, al);
            Lb[j] = (uint8_t)l;
            const float q = (float)kNL[l];
            const float w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = sumqx / sumq2;  // not guarded: NaN for all-zero weights, then nothing beats it
        float best = d * sumqx;
        float best_sumqx = sumqx, best_sumq2 = sumq2;
        for (int itry = -kNtry; itry <= kNtry; ++itry) {
            for (int end = 0; end < 2; ++end) {
                id = (float)(itry + (end ? kNL[15] : kNL[0])) / max;
                sumqx = sumq2 = 0.0f;
                for (int j = 0; j < kBlock; ++j) {
                    const float al = id * xb[j];
                    const float q = (float)kNL[best_index(kNL, al)];
                    const float w = weight[j];
                    sumqx += w * q * xb[j];
                    sumq2 += w * q * q;
                }
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                    d = sumqx / sumq2;
                    best = d * sumqx;
                    best_sumqx = sumqx;
                    best_sumq2 = sumq2;
                    for (int j = 0; j < kBlock; ++j) Lb[j] = (uint8_t)best_index(kNL, id * xb[j]);
                }
            }
        }
        // Greedy refinement: move one index by one step at a time while the fit improves.
        sumqx = best_sumqx;
        sumq2 = best_sumq2;
        for (int iter = 0; iter < 32 * kBlock; ++iter) {
            float min_step = __builtin_inff();
            int best_j = -1, dir = 0;
            for (int j = 0; j < kBlock; ++j) {
                const float w = weight[j];
                const float g = d * w * (xb[j] - d * (float)kNL[Lb[j]]);
                if (g > 0 && Lb[j] < 15) {
                    const float step = (float)(kNL[Lb[j] + 1] - kNL[Lb[j]]) / g;
                    if (step < min_step) {
                        min_step = step;
                        best_j = j;
                        dir = 1;
                    }
                } else if (g < 0 && Lb[j] > 0) {
                    const float step = (float)(kNL[Lb[j] - 1] - kNL[Lb[j]]) / g;
                    if (step < min_step) {
                        min_step = step;
                        best_j = j;
                        dir = -1;
                    }
                }
            }
            if (best_j < 0) break;
            const float w = weight[best_j];
            const int v0 = kNL[Lb[best_j]], v1 = kNL[Lb[best_j] + dir];
            const float new_sumqx = sumqx + w * xb[best_j] * (float)(v1 - v0);
            const float new_sumq2 = sumq2 + w * (float)(v1 * v1 - v0 * v0);
            if (new_sumq2 > 0 && new_sumqx * new_sumqx > best * new_sumq2) {
                sumqx = new_sumqx;
                sumq2 = new_sumq2;
                d = sumqx / sumq2;
                best = d * sumqx;
                Lb[best_j] = (uint8_t)(Lb[best_j] + dir);
            } else {
                break;
            }
        }
        scales[ib] = d;
        const float abs_d = fabsf_(d);
        if (abs_d > amax_scale) {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    iq4_xs::finish_super_block(x, scales, max_scale, out);
}

// quantize_iq4_xs: the imatrix is used as given (no QHelper).
void quantize_iq4_xs(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t rb = row_bytes(K);
    for (int64_t r = 0; r < nrows; ++r)
        for (int64_t i = 0; i < K / kSuper; ++i)
            quantize_super_block(src + r * K + i * kSuper, dst + r * rb + i * kBytes,
                                 imatrix ? imatrix + i * kSuper : nullptr);
}

// ------------------------------------------------------------------------------ dequantization

void dequantize_iq4_xs(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t i = 0; i < K / kSuper; ++i) {
            const uint8_t* sb = src + r * rb + i * kBytes;
            const float d = fp16_to_fp32(rd_u16(sb + kOffD));
            float* y = dst + r * K + i * kSuper;
            for (int b = 0; b < 8; ++b) {
                const float dl = d * (float)(scale_code(sb, b) - 32);
                const uint8_t* qs = sb + kOffQs + 16 * b;
                for (int j = 0; j < 16; ++j) {
                    y[32 * b + j] = dl * (float)kNL[qs[j] & 15];
                    y[32 * b + j + 16] = dl * (float)kNL[qs[j] >> 4];
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------ iq4_xs_r8

// 8 iq4_xs rows (rb bytes apart) -> one iq4_xs_r8 row group (iqk_quantize.cpp repack_iq4_xs).
void repack_group_to_r8(const uint8_t* src, int64_t rb, uint8_t* dst, int64_t K) {
    for (int64_t i = 0; i < K / kSuper; ++i) {
        uint8_t* o = dst + i * kR8Bytes;
        std::memset(o + kR8OffSh, 0, 16 + 32);
        for (int k = 0; k < 8; ++k) {
            const uint8_t* sb = src + k * rb + i * kBytes;
            std::memcpy(o + 2 * k, sb + kOffD, 2);
            for (int b = 0; b < 8; ++b) {
                const int c = scale_code(sb, b), s = 8 * b + k;
                o[kR8OffSl + s % 32] |= (uint8_t)((c & 15) << (4 * (s / 32)));
                o[kR8OffSh + s % 16] |= (uint8_t)((c >> 4) << (2 * (s / 16)));
                const uint8_t* q = sb + kOffQs + 16 * b;
                uint8_t* oq = o + kR8OffQs + 128 * b + 4 * k;
                for (int j = 0; j < 4; ++j) {
                    oq[j + 0] = (uint8_t)((q[j] & 15) | ((q[j + 4] & 15) << 4));
                    oq[j + 32] = (uint8_t)((q[j + 8] & 15) | ((q[j + 12] & 15) << 4));
                    oq[j + 64] = (uint8_t)((q[j] >> 4) | ((q[j + 4] >> 4) << 4));
                    oq[j + 96] = (uint8_t)((q[j + 8] >> 4) | ((q[j + 12] >> 4) << 4));
                }
            }
        }
    }
}

void repack_group_from_r8(const uint8_t* src, uint8_t* dst, int64_t rb, int64_t K) {
    for (int64_t i = 0; i < K / kSuper; ++i) {
        const uint8_t* g = src + i * kR8Bytes;
        for (int k = 0; k < 8; ++k) {
            uint8_t* sb = dst + k * rb + i * kBytes;
            std::memcpy(sb + kOffD, g + 2 * k, 2);
            uint16_t sh = 0;
            std::memset(sb + kOffSl, 0, 4);
            for (int b = 0; b < 8; ++b) {
                const int c = scale_code_r8(g, b, k);
                sb[kOffSl + b / 2] |= (uint8_t)((c & 15) << (4 * (b % 2)));
                sh |= (uint16_t)((c >> 4) << (2 * b));
                uint8_t* q = sb + kOffQs + 16 * b;
                for (int j = 0; j < 16; ++j)
                    q[j] = (uint8_t)(nibble_r8(g, b, k, j) | (nibble_r8(g, b, k, j + 16) << 4));
            }
            wr_u16(sb + kOffSh, sh);
        }
    }
}

void repack_to_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t g = 0; g < nrows / 8; ++g) repack_group_to_r8(src + 8 * g * rb, rb, dst + 8 * g * rb, K);
}

void repack_from_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t g = 0; g < nrows / 8; ++g) repack_group_from_r8(src + 8 * g * rb, dst + 8 * g * rb, rb, K);
}

}  // namespace

// Pass 2 of the quantizer (shared with the SIMD pass 1): 6-bit block scales against the
// super-block scale -max_scale/32, final indices, packing. Also writes d and the scales.
void iq4_xs::finish_super_block(const float* x, const float* scales, float max_scale, uint8_t* out) {
    uint8_t L[kSuper];
    const float d = -max_scale / 32.0f;
    wr_u16(out + kOffD, fp32_to_fp16(d));
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t sh = 0;
    uint8_t* sl = out + kOffSl;
    std::memset(sl, 0, 4);
    for (int ib = 0; ib < kSuper / kBlock; ++ib) {
        int l = nearest_int(id * scales[ib]);
        l = l < -32 ? -32 : (l > 31 ? 31 : l);
        const float dl = d * (float)l;
        const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
        uint8_t* Lb = L + ib * kBlock;
        const float* xb = x + ib * kBlock;
        for (int j = 0; j < kBlock; ++j) Lb[j] = (uint8_t)best_index(kNL, idl * xb[j]);
        l += 32;
        sl[ib / 2] |= (uint8_t)((l & 15) << (4 * (ib % 2)));
        sh |= (uint16_t)((l >> 4) << (2 * ib));
    }
    wr_u16(out + kOffSh, sh);
    uint8_t* qs = out + kOffQs;
    for (int i = 0; i < kSuper / kBlock; ++i)
        for (int j = 0; j < 16; ++j) qs[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

// quantize_iq4_xs_r8 with a given per-row iq4_xs quantizer: QHelper-preprocessed imatrix
// (32-column blocks), the rows, then the repack of 8 rows.
void iq4_xs::quantize_r8_with(QuantizeFn base, const float* src, uint8_t* dst, int64_t nrows, int64_t K,
                              const float* imatrix) {
    const int64_t rb = row_bytes(K);
    std::vector<uint8_t> tmp((size_t)(8 * rb));
    std::vector<float> qw(imatrix ? (size_t)K : 0);
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int k = 0; k < 8; ++k) {
            const float* x = src + (8 * g + k) * K;
            if (imatrix) qhelper_row_weights(imatrix, x, K, kBlock, qw.data());
            base(x, tmp.data() + k * rb, 1, K, imatrix ? qw.data() : nullptr);
        }
        repack_group_to_r8(tmp.data(), rb, dst + 8 * g * rb, K);
    }
}

namespace {

void quantize_iq4_xs_r8(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    iq4_xs::quantize_r8_with(quantize_iq4_xs, src, dst, nrows, K, imatrix);
}

void dequantize_iq4_xs_r8(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t grp = 0; grp < nrows / 8; ++grp) {
        for (int64_t i = 0; i < K / kSuper; ++i) {
            const uint8_t* g = src + 8 * grp * rb + i * kR8Bytes;
            for (int k = 0; k < 8; ++k) {
                const float d = fp16_to_fp32(rd_u16(g + 2 * k));
                float* y = dst + (8 * grp + k) * K + i * kSuper;
                for (int b = 0; b < 8; ++b) {
                    const float dl = d * (float)(scale_code_r8(g, b, k) - 32);
                    for (int e = 0; e < kBlock; ++e) y[32 * b + e] = dl * (float)kNL[nibble_r8(g, b, k, e)];
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------ matmul

constexpr int kActBytes = act::kQ8KBytes;

static inline int32_t sat_i16(int32_t v) { return v < -32768 ? -32768 : (v > 32767 ? 32767 : v); }

// iq4_xs x q8_K (iqk_gemm_kquants.cpp mul_mat_qX_K_q8_K_T with DequantizerIQ4XS, AVX2):
// the grid is used shifted by +128 (unsigned 1..241), so products of pairs are summed with
// int16 saturation (maddubs); the shift is removed through the int16 block sums of the
// activations: per super-block, lane k first gets fma((-128 d) dA, ls_k (bs_2k + bs_2k+1)),
// then lane L gets fma(d dA, sum_b ls_b (sat(p_4L + p_4L+1) + sat(p_4L+2 + p_4L+3))).
void gemm_iq4_xs(const GemmArgs& g) {
    const int64_t nsuper = g.K / kSuper;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t r = 0; r < g.nrows; ++r) {
            const uint8_t* w = g.W + r * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nsuper; ++i) {
                const uint8_t* sb = w + i * kBytes;
                const uint8_t* ab = a + i * kActBytes;
                const int8_t* q = reinterpret_cast<const int8_t*>(ab + act::kQ8KQs);
                const float d = fp16_to_fp32(rd_u16(sb + kOffD));
                const float dA = rd_f32(ab + act::kQ8KD);
                int ls[8];
                for (int b = 0; b < 8; ++b) ls[b] = scale_code(sb, b) - 32;
                const float cm = (-128.0f * d) * dA;
                for (int k = 0; k < 8; ++k) {
                    const int32_t bs0 = (int16_t)rd_u16(ab + act::kQ8KBsums + 4 * k);
                    const int32_t bs1 = (int16_t)rd_u16(ab + act::kQ8KBsums + 4 * k + 2);
                    acc[k] = fmaf_exact(cm, (float)(ls[k] * bs0 + ls[k] * bs1), acc[k]);
                }
                int32_t S[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int b = 0; b < 8; ++b) {
                    const uint8_t* qs = sb + kOffQs + 16 * b;
                    for (int L = 0; L < 8; ++L) {
                        int32_t u[4];
                        for (int t = 0; t < 4; ++t) {
                            const int e = 4 * L + t;
                            const int nib = e < 16 ? qs[e] & 15 : qs[e - 16] >> 4;
                            u[t] = (kNL[nib] + 128) * q[32 * b + e];
                        }
                        S[L] += ls[b] * sat_i16(u[0] + u[1]) + ls[b] * sat_i16(u[2] + u[3]);
                    }
                }
                const float c = d * dA;
                for (int L = 0; L < 8; ++L) acc[L] = fmaf_exact(c, (float)S[L], acc[L]);
            }
            g.C[n * g.ldc + r] = hsum8(acc);
        }
    }
}

// iq4_xs_r8 x q8_K32 (iqk_gemm_kquants.cpp mul_mat_iq4_xs_r8_q8_k_avx2, no VNNI): signed grid,
// exact int32 sums; per super-block acc_k = fma(d_k * dA, I_k, acc_k); no horizontal sum.
void gemm_iq4_xs_r8(const GemmArgs& g) {
    const int64_t nsuper = g.K / kSuper;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
            const uint8_t* w = g.W + grp * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nsuper; ++i) {
                const uint8_t* gb = w + i * kR8Bytes;
                const uint8_t* ab = a + i * kActBytes;
                const int8_t* q = reinterpret_cast<const int8_t*>(ab + act::kQ8KQs);
                const float dA = rd_f32(ab + act::kQ8KD);
                for (int k = 0; k < 8; ++k) {
                    int32_t I = 0;
                    for (int b = 0; b < 8; ++b) {
                        int32_t p = 0;
                        for (int e = 0; e < kBlock; ++e) p += kNL[nibble_r8(gb, b, k, e)] * q[32 * b + e];
                        I += (scale_code_r8(gb, b, k) - 32) * p;
                    }
                    const float c = fp16_to_fp32(rd_u16(gb + 2 * k)) * dA;
                    acc[k] = fmaf_exact(c, (float)I, acc[k]);
                }
            }
            for (int k = 0; k < 8; ++k) g.C[n * g.ldc + 8 * grp + k] = acc[k];
        }
    }
}

// ------------------------------------------------------------------------------ large batch

// iq4_xs -> q8_k_r8 (iqk_gemm_kquants.cpp iqk_convert_iq4_xs_q8_k_r8): v = ls * grid, d0 =
// 1/127, row scale fp16(fp16(d) * dnew).
void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K), nsuper = K / kSuper;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t i = 0; i < nsuper; ++i) {
            uint8_t* o = dst + (g * nsuper + i) * q8_k_r8::kGroupBlock;
            for (int r = 0; r < 8; ++r) {
                const uint8_t* sb = src + (8 * g + r) * rb + i * kBytes;
                int v[kSuper];
                for (int b = 0; b < 8; ++b) {
                    const int ls = scale_code(sb, b) - 32;
                    const uint8_t* qs = sb + kOffQs + 16 * b;
                    for (int j = 0; j < 16; ++j) {
                        v[32 * b + j] = ls * kNL[qs[j] & 15];
                        v[32 * b + j + 16] = ls * kNL[qs[j] >> 4];
                    }
                }
                const float dnew = q8_k_r8::pack_row_scalar(v, 1.0f / 127.0f, r, o);
                wr_u16(o + 2 * r, fp32_to_fp16(fp16_to_fp32(rd_u16(sb + kOffD)) * dnew));
            }
        }
    }
}

}  // namespace

void register_scalar_iq4_xs(KernelTables& t) {
    TypeKernels& a = t.types[T_IQ4_XS];
    a.quantize = quantize_iq4_xs;
    a.dequantize = dequantize_iq4_xs;
    a.gemm = gemm_iq4_xs;
    a.to_large_batch = convert_to_q8_k_r8;
    TypeKernels& b = t.types[T_IQ4_XS_R8];
    b.quantize = quantize_iq4_xs_r8;
    b.dequantize = dequantize_iq4_xs_r8;
    b.gemm = gemm_iq4_xs_r8;
    b.to_interleaved = repack_to_r8;
    b.from_interleaved = repack_from_r8;
}

}  // namespace iqkq
