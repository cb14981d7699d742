// iq3_xxs (id 18) and iq3_xxs_r4 (id 218): scalar reference quantize / dequantize / repack,
// the scalar twins of the matmul kernels (D) and (F) of docs/formats.md §11.3, and the large-batch
// conversion iq3_xxs -> q8_k_r8 (§11.4).
//
// The quantizer is the plain, readable form of docs/formats.md §8.4: every float operation is
// written in the order the specification gives and the file is compiled with
// -ffp-contract=off, so no multiply-add is fused. The AVX2 file has a faster search that is
// tested to give identical bytes.
#include "formats/iq3_xxs.h"

#include "common.h"
#include "formats/act.h"
#include "types.h"

#include <cfloat>

namespace iqkq {
namespace iq3 {
#include "formats/iq3_xxs_tables.inc"
}  // namespace iq3

namespace {

using namespace iq3;

// best_neighbour of §8.4: the first point of the record with the strictly smallest weighted
// squared distance. When no distance is below FLT_MAX (only possible when the weights
// overflow to inf, where ik_llama.cpp aborts) the record's first point is taken.
int best_neighbour(int u, const float* xv, const float* wa, float scale, int8_t* L) {
    const int start = -kMap[u] - 1;
    const int n = kNeighbours[start];
    float best = FLT_MAX;
    int gi = -1;
    for (int j = 1; j <= n; ++j) {
        const uint32_t g = kQuantGrid[kNeighbours[start + j]];
        float d2 = 0.0f;
        for (int i = 0; i < 4; ++i) {
            const float q = (float)((g >> (8 * i)) & 255);
            const float diff = scale * q - xv[i];
            d2 = d2 + wa[i] * diff * diff;
        }
        if (d2 < best) {
            best = d2;
            gi = kNeighbours[start + j];
        }
    }
    if (gi < 0) gi = kNeighbours[start + 1];
    grid_levels(gi, L);
    return gi;
}

// One super-block of 256 values (docs/formats.md §8.4). `qw` = the 256 importance weights of this
// super-block or null.
void quantize_superblock(const float* xbl, const float* qw, uint8_t* out, RowState& st) {
    uint8_t q3[64] = {};
    uint32_t sas[8] = {};
    float scales[8];
    float max_scale = 0.0f;

    const float sigma2 = superblock_sigma2(xbl);

    for (int ib = 0; ib < 8; ++ib) {
        const float* xb = xbl + 32 * ib;
        float w[32], wa[32], xv[32];
        uint8_t signs[4];
        const float mx = prepare_block(xb, qw ? qw + 32 * ib : nullptr, sigma2, w, wa, xv, signs);
        if (mx < kGroupMaxEps) {
            scales[ib] = 0.0f;
            std::memset(st.L, 0, sizeof(st.L));
            continue;
        }

        // Scale search over 31 candidates.
        float best = 0.0f;
        float scale = mx / 15.0f;
        for (int is = -15; is <= 15; ++is) {
            const float id = (15.0f + (float)is * 0.2f) / mx;
            const float this_scale = 1.0f / id;
            int8_t La[32];
            bool og[8];
            for (int k = 0; k < 8; ++k) {
                int u = 0;
                for (int i = 0; i < 4; ++i) {
                    La[4 * k + i] = (int8_t)level_of(id, xv[4 * k + i]);
                    u |= La[4 * k + i] << (3 * i);
                }
                og[k] = kMap[u] >= 0;
                if (!og[k]) best_neighbour(u, xv + 4 * k, wa + 4 * k, this_scale, La + 4 * k);
            }
            float sqx = 0.0f, sq2 = 0.0f;
            for (int i = 0; i < 32; ++i) {
                const float q = (float)(2 * La[i] + 1);
                sqx = sqx + w[i] * xv[i] * q;
                sq2 = sq2 + w[i] * q * q;
            }
            if (sq2 > 0 && sqx * sqx > best * sq2) {
                scale = sqx / sq2;
                best = scale * sqx;
                std::memcpy(st.L, La, sizeof(La));
                for (int k = 0; k < 8; ++k) st.on_grid[k] = og[k];
            }
        }

        // Refinement of the off-grid groups with the chosen scale.
        bool any_off = false;
        for (int k = 0; k < 8; ++k) any_off = any_off || !st.on_grid[k];
        if (any_off && scale > 0) {
            const float id = 1.0f / scale;
            for (int k = 0; k < 8; ++k) {
                if (st.on_grid[k]) continue;
                int u = 0;
                for (int i = 0; i < 4; ++i) u |= level_of(id, xv[4 * k + i]) << (3 * i);
                int gi = kMap[u];
                if (gi < 0) gi = best_neighbour(u, xv + 4 * k, wa + 4 * k, scale, st.L + 4 * k);
                grid_levels(gi, st.L + 4 * k);
            }
            float sqx = 0.0f, sq2 = 0.0f;
            for (int i = 0; i < 32; ++i) {
                const float q = (float)(2 * st.L[i] + 1);
                sqx = sqx + w[i] * xv[i] * q;
                sq2 = sq2 + w[i] * q * q;
            }
            if (sq2 > 0) scale = sqx / sq2;
        }
        scale = finish_block(st.L, scale, signs, q3 + 8 * ib, &sas[ib]);
        scales[ib] = scale;
        max_scale = max_scale > scale ? max_scale : scale;
    }

    encode_superblock(scales, max_scale, q3, sas, out);
}

void quantize_iq3_xxs(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t nbl = K / kQK;
    for (int64_t r = 0; r < nrows; ++r) {
        RowState st;
        reset_row(st);
        for (int64_t i = 0; i < nbl; ++i)
            quantize_superblock(src + r * K + i * kQK, imatrix ? imatrix + i * kQK : nullptr, dst + (r * nbl + i) * kBytes, st);
    }
}

// iq3_xxs_r4: every row quantized as iq3_xxs with the QHelper-processed imatrix, then moved
// into the interleaved layout.
void quantize_iq3_xxs_r4(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t nbl = K / kQK;
    for (int64_t g = 0; g < nrows / 4; ++g) {
        for (int r = 0; r < 4; ++r) {
            const float* x = src + (4 * g + r) * K;
            RowState st;
            reset_row(st);
            for (int64_t i = 0; i < nbl; ++i) {
                float qw[kQK];
                if (imatrix) qhelper_row_weights(imatrix + i * kQK, x + i * kQK, kQK, 32, qw);  // QHelper, blocks of 32
                uint8_t blk[kBytes];
                quantize_superblock(x + i * kQK, imatrix ? qw : nullptr, blk, st);
                scatter_to_r4(blk, dst + (g * nbl + i) * kR4Bytes, r);
            }
        }
    }
}

void dequantize_iq3_xxs(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t n = nrows * (K / kQK);
    for (int64_t i = 0; i < n; ++i, src += kBytes, dst += kQK) {
        const float d = fp16_to_fp32(rd_u16(src));
        for (int b = 0; b < 8; ++b) {
            const uint32_t aux = rd_u32(src + kSasOff + 4 * b);
            const float db = d * (0.5f + (float)(aux >> 28)) * 0.5f;
            for (int m = 0; m < 4; ++m) {
                const uint8_t sg = kSigns[(aux >> (7 * m)) & 127];
                for (int h = 0; h < 2; ++h) {
                    const uint32_t g = kGrid[src[kQsOff + 8 * b + 2 * m + h]];
                    for (int j = 0; j < 4; ++j) {
                        const float v = db * (float)((g >> (8 * j)) & 255);
                        dst[32 * b + 8 * m + 4 * h + j] = (sg >> (4 * h + j)) & 1 ? -v : v;
                    }
                }
            }
        }
    }
}

void dequantize_iq3_xxs_r4(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nbl = K / kQK;
    for (int64_t g = 0; g < nrows / 4; ++g) {
        for (int64_t i = 0; i < nbl; ++i, src += kR4Bytes) {
            for (int r = 0; r < 4; ++r) {
                float* y = dst + (4 * g + r) * K + i * kQK;
                const float d = 0.25f * fp16_to_fp32(rd_u16(src + 2 * r));
                for (int b = 0; b < 8; ++b) {
                    const uint32_t word = rd_u32(src + kR4SasOff + 16 * b + 4 * r);
                    int sc = 0;
                    for (int m = 0; m < 4; ++m) sc |= (int)((word >> (8 * m)) & 1) << m;
                    const float dl = d * (float)(2 * sc + 1);
                    const uint32_t t = word & 0xfefefefeu;
                    const uint32_t signs = t ^ (t >> 1);
                    for (int k = 0; k < 8; ++k) {
                        const uint32_t gv = kGrid[src[kR4QsOff + 32 * b + 8 * r + k]];
                        for (int j = 0; j < 4; ++j) {
                            const float v = dl * (float)((gv >> (8 * j)) & 255);
                            y[32 * b + 4 * k + j] = (signs >> (4 * k + j)) & 1 ? -v : v;
                        }
                    }
                }
            }
        }
    }
}

void repack_to_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nbl = K / kQK;
    const size_t row = (size_t)nbl * kBytes;
    for (int64_t g = 0; g < nrows / 4; ++g)
        for (int r = 0; r < 4; ++r)
            for (int64_t i = 0; i < nbl; ++i)
                scatter_to_r4(src + (4 * g + r) * row + i * kBytes, dst + (g * nbl + i) * kR4Bytes, r);
}

void repack_from_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nbl = K / kQK;
    const size_t row = (size_t)nbl * kBytes;
    for (int64_t g = 0; g < nrows / 4; ++g)
        for (int r = 0; r < 4; ++r)
            for (int64_t i = 0; i < nbl; ++i)
                gather_from_r4(src + (g * nbl + i) * kR4Bytes, dst + (4 * g + r) * row + i * kBytes, r);
}

// q8_K activation super-block i of a row: d (f32), quants, 16 int16 block sums.
struct ActSB {
    float d;
    const int8_t* q;
    int16_t bsums[16];
};
ActSB act_sb(const uint8_t* a, int64_t i) {
    const uint8_t* p = a + act::kQ8KBytes * i;
    ActSB s;
    s.d = rd_f32(p);
    s.q = reinterpret_cast<const int8_t*>(p + act::kQ8KQs);
    for (int k = 0; k < 16; ++k) s.bsums[k] = (int16_t)rd_u16(p + act::kQ8KBsums + 2 * k);
    return s;
}

// Signed grid value of element e (0..31) of block b of an iq3_xxs super-block.
int signed_value(const uint8_t* blk, int b, int e) {
    const uint32_t aux = rd_u32(blk + kSasOff + 4 * b);
    const uint8_t sg = kSigns[(aux >> (7 * (e / 8))) & 127];
    const int g = (int)((kGrid[blk[kQsOff + 8 * b + e / 4]] >> (8 * (e % 4))) & 255);
    return (sg >> (e % 8)) & 1 ? -g : g;
}

// Kernel (D): iq3_xxs x q8_K, unsigned weights 64 + sigma*g, offset removed with the
// activation block sums; eight float lanes, H8 at the end.
void gemm_iq3_xxs(const GemmArgs& g) {
    const int64_t nbl = g.K / kQK;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t r = 0; r < g.nrows; ++r) {
            const uint8_t* w = g.W + r * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nbl; ++i) {
                const uint8_t* blk = w + i * kBytes;
                const ActSB as = act_sb(a, i);
                const float dx = 0.25f * fp16_to_fp32(rd_u16(blk));
                int sc[8];
                for (int b = 0; b < 8; ++b) sc[b] = 2 * (int)(rd_u32(blk + kSasOff + 4 * b) >> 28) + 1;
                const float cm = (-dx * 64.0f) * as.d;
                for (int b = 0; b < 8; ++b) {
                    const int32_t M = sc[b] * as.bsums[2 * b] + sc[b] * as.bsums[2 * b + 1];
                    acc[b] = fmaf_exact(cm, (float)M, acc[b]);
                }
                const float c = dx * as.d;
                for (int L = 0; L < 8; ++L) {
                    int32_t S = 0;
                    for (int b = 0; b < 8; ++b) {
                        int32_t s = 0;
                        for (int e = 4 * L; e < 4 * L + 4; ++e) s += (64 + signed_value(blk, b, e)) * as.q[32 * b + e];
                        S += sc[b] * s;
                    }
                    acc[L] = fmaf_exact(c, (float)S, acc[L]);
                }
            }
            g.C[n * g.ldc + r] = hsum8(acc);
        }
    }
}

// Kernel (F): iq3_xxs_r4 x q8_K. Lane l: row l % 4, half l / 4 of every 32-block.
void gemm_iq3_xxs_r4(const GemmArgs& g) {
    const int64_t nbl = g.K / kQK;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
            const uint8_t* w = g.W + grp * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nbl; ++i) {
                const uint8_t* blk = w + i * kR4Bytes;
                const ActSB as = act_sb(a, i);
                for (int l = 0; l < 8; ++l) {
                    const int r = l % 4, h = l / 4;
                    int32_t I = 0;
                    for (int b = 0; b < 8; ++b) {
                        const uint32_t word = rd_u32(blk + kR4SasOff + 16 * b + 4 * r);
                        int sc = 0;
                        for (int m = 0; m < 4; ++m) sc |= (int)((word >> (8 * m)) & 1) << m;
                        const uint32_t t = word & 0xfefefefeu;
                        const uint32_t signs = t ^ (t >> 1);
                        int32_t s = 0;
                        for (int e = 16 * h; e < 16 * h + 16; ++e) {
                            const int gv = (int)((kGrid[blk[kR4QsOff + 32 * b + 8 * r + e / 4]] >> (8 * (e % 4))) & 255);
                            const int av = as.q[32 * b + e];
                            s += gv * ((signs >> e) & 1 ? -av : av);
                        }
                        I += (2 * sc + 1) * s;
                    }
                    const float dl = 0.25f * fp16_to_fp32(rd_u16(blk + 2 * r));
                    acc[l] = fmaf_exact(dl * as.d, (float)I, acc[l]);
                }
            }
            for (int r = 0; r < 4; ++r) g.C[n * g.ldc + grp * 4 + r] = acc[r] + acc[r + 4];
        }
    }
}

// Large-batch conversion (§11.4): 8 iq3_xxs rows -> one q8_k_r8 row group. Per row and
// super-block the signed integers v = (2 sc + 1) * sigma * g are re-quantized to int8 with
// d0 = 1/124 and the combined scale 0.25 * d * dnew is stored as fp16.
void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nbl = K / kQK;
    const size_t row = (size_t)nbl * kBytes;
    const size_t out_blk = 16 + 2048;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t i = 0; i < nbl; ++i) {
            uint8_t* o = dst + (g * nbl + i) * out_blk;
            for (int r = 0; r < 8; ++r) {
                const uint8_t* blk = src + (8 * g + r) * row + i * kBytes;
                int v[256];
                int M = 0;
                for (int b = 0; b < 8; ++b) {
                    const int mult = 2 * (int)(rd_u32(blk + kSasOff + 4 * b) >> 28) + 1;
                    for (int e = 0; e < 32; ++e) {
                        v[32 * b + e] = mult * signed_value(blk, b, e);
                        const int av = v[32 * b + e] < 0 ? -v[32 * b + e] : v[32 * b + e];
                        M = av > M ? av : M;
                    }
                }
                float dnew = (float)M * kConvD0;
                int8_t q[256];
                if (dnew < 1.0f) {
                    dnew = 1.0f;
                    for (int e = 0; e < 256; ++e) q[e] = (int8_t)v[e];
                } else {
                    const float inv = fabsf_(dnew) > 1e-9f ? 1.0f / dnew : 0.0f;
                    for (int e = 0; e < 256; ++e) q[e] = sat_i8(cvt_rne_i32(inv * (float)v[e]));
                }
                const float F = 0.25f * fp16_to_fp32(rd_u16(blk));
                wr_u16(o + 2 * r, fp32_to_fp16(F * dnew));
                for (int m = 0; m < 64; ++m) std::memcpy(o + 16 + 32 * m + 4 * r, q + 4 * m, 4);
            }
        }
    }
}

}  // namespace

void register_scalar_iq3_xxs(KernelTables& t) {
    TypeKernels& a = t.types[T_IQ3_XXS];
    a.quantize = quantize_iq3_xxs;
    a.dequantize = dequantize_iq3_xxs;
    a.gemm = gemm_iq3_xxs;
    a.to_large_batch = convert_to_q8_k_r8;
    TypeKernels& b = t.types[T_IQ3_XXS_R4];
    b.quantize = quantize_iq3_xxs_r4;
    b.dequantize = dequantize_iq3_xxs_r4;
    b.gemm = gemm_iq3_xxs_r4;
    b.to_interleaved = repack_to_r4;
    b.from_interleaved = repack_from_r4;
}

}  // namespace iqkq
