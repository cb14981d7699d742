// iq4_ks (id 144) and iq4_ks_r4 (id 344): scalar reference quantize / dequantize / repack,
// the conversion to q8_k_r8 for large batches, and the scalar twins of the matmul kernels
// (docs/formats.md §6, §7, §11.3 E and G, §11.4).
//
// This file is the readable definition: every float operation is written out once, in the
// order of the specification, with no implicit contraction (-ffp-contract=off). The AVX2
// kernels in kernels/avx2/iq4_ks.cpp must give identical bytes / bits; the tests check that.
#include "formats/iq4_ks.h"

#include "common.h"
#include "formats/act.h"
#include "formats/q8_k_r8.h"
#include "formats/qhelper.h"
#include "types.h"

#include <algorithm>
#include <vector>

namespace iqkq {
namespace {

using namespace iq4_ks;

const int8_t* const kBase = kValues;          // base half-table
const int8_t* const kShifted = kValues + 16;  // base + 4

// ------------------------------------------------------------------------------ quantization

// sigma^2 of a super-block: sequential sum of squares times 2/256.
float super_block_sigma2(const float* x) {
    float s = 0.0f;
    for (int j = 0; j < kSuper; ++j) s += x[j] * x[j];
    return s * (2.0f / kSuper);
}

// Weights of the 32 elements of a block: qw * sqrt(sigma^2 + x^2) with an imatrix, else x^2.
void block_weights(const float* xb, const float* qw, float sigma2, float* w) {
    if (qw) {
        for (int j = 0; j < kBlock; ++j) w[j] = qw[j] * __builtin_sqrtf(sigma2 + xb[j] * xb[j]);
    } else {
        for (int j = 0; j < kBlock; ++j) w[j] = xb[j] * xb[j];
    }
}

// One scale trial: the weighted sums for rounding id*x ("+") and -id*x ("-") to table T.
struct TrialSums {
    float sqx_p, sq2_p, sqx_m, sq2_m;
};

TrialSums trial(const int8_t* T, float id, const float* xb, const float* w) {
    TrialSums s{0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < kBlock; ++j) {
        const float al = id * xb[j];
        float q = (float)T[best_index(T, al)];
        s.sqx_p += w[j] * q * xb[j];
        s.sq2_p += w[j] * q * q;
        q = (float)T[best_index(T, -al)];
        s.sqx_m += w[j] * q * xb[j];
        s.sq2_m += w[j] * q * q;
    }
    return s;
}

// Pass 1 for one block (docs/formats.md §6.3 steps 3-9): the block scale S (possibly negative,
// 0 for a skipped block) and whether the shifted table won.
struct BlockScale {
    float d;
    bool shifted;
};

BlockScale block_scale(const float* xb, const float* w) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
        const float ax = fabsf_(xb[j]);
        if (ax > amax) {
            amax = ax;
            max = xb[j];
        }
    }
    if (amax < 1e-16f) return {0.0f, false};

    float d = -max / (float)kBase[0];
    TrialSums s = trial(kBase, 1.0f / d, xb, w);
    d = s.sqx_p / s.sq2_p;  // not guarded in ik_llama.cpp: may be NaN, then nothing beats it
    float best = d * s.sqx_p;
    bool shifted = false;
    if (s.sq2_m > 0 && s.sqx_m * s.sqx_m > best * s.sq2_m) {
        d = s.sqx_m / s.sq2_m;
        best = d * s.sqx_m;
    }
    auto consider = [&](float sqx, float sq2, bool shift) {
        if (sq2 > 0 && sqx * sqx > best * sq2) {
            d = sqx / sq2;
            best = d * sqx;
            shifted = shift;
        }
    };
    for (int itry = -kNtry; itry <= kNtry; ++itry) {
        s = trial(kBase, (float)(itry + kBase[0]) / max, xb, w);
        consider(s.sqx_p, s.sq2_p, false);
        consider(s.sqx_m, s.sq2_m, false);
        s = trial(kShifted, (float)(itry + kShifted[0]) / max, xb, w);
        consider(s.sqx_p, s.sq2_p, true);
        consider(s.sqx_m, s.sq2_m, true);
    }
    return {d, shifted};
}

// One row of K floats -> 4 + 136*K/256 bytes. `qw`: preprocessed imatrix row weights or null.
// `scales`: scratch for the K/32 block scales.
void quantize_row(const float* x, uint8_t* out, int64_t K, const float* qw, float* scales) {
    const int64_t nsuper = K / kSuper;
    float w[kBlock];
    float amax_scale = 0.0f;
    // Pass 1: block scales and table choice.
    for (int64_t i = 0; i < nsuper; ++i) {
        uint8_t* sb = out + kRowMeta + i * kSuperBytes;
        std::memset(sb, 0, kSuperBytes);
        const float* xs = x + i * kSuper;
        const float sigma2 = super_block_sigma2(xs);
        for (int b = 0; b < 8; ++b) {
            const float* xb = xs + b * kBlock;
            block_weights(xb, qw ? qw + i * kSuper + b * kBlock : nullptr, sigma2, w);
            const BlockScale bs = block_scale(xb, w);
            if (bs.shifted) sb[b] = 1;
            scales[i * 8 + b] = bs.d;
            const float ad = fabsf_(bs.d);
            amax_scale = amax_scale < ad ? ad : amax_scale;  // std::max: a NaN |d| is dropped
        }
    }
    // Pass 2: code the block scales, final indices, least-squares row scale.
    const float d0 = amax_scale / 127.0f;
    wr_f32(out, d0);
    if (d0 == 0.0f) return;
    const float id0 = 1.0f / d0;
    float sqx = 0.0f, sq2 = 0.0f;
    for (int64_t i = 0; i < nsuper; ++i) {
        uint8_t* sb = out + kRowMeta + i * kSuperBytes;
        const float* xs = x + i * kSuper;
        const float sigma2 = super_block_sigma2(xs);
        for (int b = 0; b < 8; ++b) {
            const int8_t* T = (sb[b] & 1) ? kShifted : kBase;
            int l = nearest_int(0.5f * (id0 * scales[i * 8 + b] + 127.0f));
            l = std::max(0, std::min(127, l)) << 1;
            sb[b] |= (uint8_t)l;
            l -= 127;
            const float dl = d0 * (float)l;
            const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
            const float* xb = xs + b * kBlock;
            block_weights(xb, qw ? qw + i * kSuper + b * kBlock : nullptr, sigma2, w);
            uint8_t* qs = sb + 8 + 16 * b;
            for (int j = 0; j < 16; ++j) {
                const int i1 = best_index(T, idl * xb[j]);
                const int i2 = best_index(T, idl * xb[j + 16]);
                qs[j] = (uint8_t)(i1 | (i2 << 4));
                const float q1 = (float)(T[i1] * l);
                const float q2 = (float)(T[i2] * l);
                sqx += w[j] * q1 * xb[j] + w[j + 16] * q2 * xb[j + 16];
                sq2 += w[j] * q1 * q1 + w[j + 16] * q2 * q2;
            }
        }
    }
    if (sq2 > 0.0f) wr_f32(out, sqx / sq2);
}

void quantize_iq4_ks(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t rb = row_bytes(K);
    std::vector<float> qw(imatrix ? (size_t)K : 0);
    std::vector<float> scales((size_t)(K / kBlock));
    for (int64_t r = 0; r < nrows; ++r) {
        const float* x = src + r * K;
        if (imatrix) qhelper_row_weights(imatrix, x, K, kBlock, qw.data());  // QHelper (NOTES.md §8)
        quantize_row(x, dst + r * rb, K, imatrix ? qw.data() : nullptr, scales.data());
    }
}

// ------------------------------------------------------------------------------ dequantization

void dequantize_iq4_ks(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = src + r * rb;
        const float D = rd_f32(row);
        float* y = dst + r * K;
        for (int64_t i = 0; i < K / kSuper; ++i) {
            const uint8_t* sb = row + kRowMeta + i * kSuperBytes;
            for (int b = 0; b < 8; ++b) {
                const uint8_t s = sb[b];
                const float dl = D * (float)((s & 254) - 127);
                const int8_t* T = kValues + 16 * (s & 1);
                const uint8_t* qs = sb + 8 + 16 * b;
                float* yb = y + i * kSuper + b * kBlock;
                for (int j = 0; j < 16; ++j) {
                    yb[j] = dl * (float)T[qs[j] & 15];
                    yb[j + 16] = dl * (float)T[qs[j] >> 4];
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------ iq4_ks_r4

// Nibble of element e (0..31) of block b of row r inside an interleaved super-block's qs:
// element quarter k = e/4 lives at byte 64b + 4r + e%4 + {0, 32, 0, 32, 16, 48, 16, 48}[k],
// in the low nibble for k = 0, 1, 4, 5 and the high nibble for k = 2, 3, 6, 7 (docs/formats.md §7.1).
int r4_nibble(const uint8_t* qs, int b, int r, int e) {
    const int k = e / 4;
    const int off = ((k >> 2) & 1) * 16 + (k & 1) * 32;
    const int shift = ((k >> 1) & 1) * 4;
    return (qs[64 * b + off + 4 * r + e % 4] >> shift) & 15;
}

// 4 iq4_ks rows (rb bytes apart) -> one iq4_ks_r4 row group.
void repack_group_to_r4(const uint8_t* src, int64_t rb, uint8_t* dst, int64_t K) {
    for (int r = 0; r < 4; ++r) std::memcpy(dst + 4 * r, src + r * rb, 4);
    for (int64_t i = 0; i < K / kSuper; ++i) {
        uint8_t* o = dst + 16 + i * kR4Bytes;
        for (int r = 0; r < 4; ++r) {
            const uint8_t* sb = src + r * rb + kRowMeta + i * kSuperBytes;
            for (int b = 0; b < 8; ++b) {
                o[4 * b + r] = sb[b];
                const uint8_t* q = sb + 8 + 16 * b;
                uint8_t* oq = o + 32 + 64 * b + 4 * r;
                for (int j = 0; j < 4; ++j) {
                    oq[j + 0] = (uint8_t)((q[j] & 15) | ((q[j + 8] & 15) << 4));
                    oq[j + 16] = (uint8_t)((q[j] >> 4) | (q[j + 8] & 0xf0));
                    oq[j + 32] = (uint8_t)((q[j + 4] & 15) | ((q[j + 12] & 15) << 4));
                    oq[j + 48] = (uint8_t)((q[j + 4] >> 4) | (q[j + 12] & 0xf0));
                }
            }
        }
    }
}

void repack_group_from_r4(const uint8_t* src, uint8_t* dst, int64_t rb, int64_t K) {
    for (int r = 0; r < 4; ++r) std::memcpy(dst + r * rb, src + 4 * r, 4);
    for (int64_t i = 0; i < K / kSuper; ++i) {
        const uint8_t* s = src + 16 + i * kR4Bytes;
        for (int r = 0; r < 4; ++r) {
            uint8_t* sb = dst + r * rb + kRowMeta + i * kSuperBytes;
            for (int b = 0; b < 8; ++b) {
                sb[b] = s[4 * b + r];
                uint8_t* q = sb + 8 + 16 * b;
                for (int e = 0; e < 16; ++e)
                    q[e] = (uint8_t)(r4_nibble(s + 32, b, r, e) | (r4_nibble(s + 32, b, r, e + 16) << 4));
            }
        }
    }
}

void repack_to_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t g = 0; g < nrows / 4; ++g) repack_group_to_r4(src + 4 * g * rb, rb, dst + 4 * g * rb, K);
}

void repack_from_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t g = 0; g < nrows / 4; ++g) repack_group_from_r4(src + 4 * g * rb, dst + 4 * g * rb, rb, K);
}

void quantize_iq4_ks_r4(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t rb = row_bytes(K);
    std::vector<uint8_t> tmp((size_t)(4 * rb));
    for (int64_t g = 0; g < nrows / 4; ++g) {
        quantize_iq4_ks(src + 4 * g * K, tmp.data(), 4, K, imatrix);
        repack_group_to_r4(tmp.data(), rb, dst + 4 * g * rb, K);
    }
}

void dequantize_iq4_ks_r4(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t g = 0; g < nrows / 4; ++g) {
        const uint8_t* grp = src + 4 * g * rb;
        for (int r = 0; r < 4; ++r) {
            const float D = rd_f32(grp + 4 * r);
            float* y = dst + (4 * g + r) * K;
            for (int64_t i = 0; i < K / kSuper; ++i) {
                const uint8_t* s = grp + 16 + i * kR4Bytes;
                for (int b = 0; b < 8; ++b) {
                    const uint8_t sc = s[4 * b + r];
                    const float dl = D * (float)((sc & 254) - 127);
                    const int8_t* T = kValues + 16 * (sc & 1);
                    for (int e = 0; e < kBlock; ++e)
                        y[i * kSuper + b * kBlock + e] = dl * (float)T[r4_nibble(s + 32, b, r, e)];
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------ matmul

// q8_K / q8_K32 activation super-block (docs/formats.md §4.1): f32 d at 0, int8 quants at 8,
// bsums at 264 (q8_K32: 8 x f32 d * block sums).
constexpr int kActBytes = act::kQ8KBytes;  // one q8_K / q8_K32 record

// Kernel (E): iq4_ks x q8_K. Lane L of the 8 float accumulators collects, per super-block,
// elements 4L..4L+3 of every block (exact int32), scaled by f32(D * dA) with one fma.
void gemm_iq4_ks(const GemmArgs& g) {
    const int64_t nsuper = g.K / kSuper;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t r = 0; r < g.nrows; ++r) {
            const uint8_t* w = g.W + r * g.w_group_bytes;
            const float D = rd_f32(w);
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nsuper; ++i) {
                const uint8_t* sb = w + kRowMeta + i * kSuperBytes;
                const uint8_t* ab = a + i * kActBytes;
                const int8_t* q = reinterpret_cast<const int8_t*>(ab + act::kQ8KQs);
                int32_t S[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int b = 0; b < 8; ++b) {
                    const int ls = (sb[b] & 254) - 127;
                    const int8_t* T = kValues + 16 * (sb[b] & 1);
                    const uint8_t* qs = sb + 8 + 16 * b;
                    for (int L = 0; L < 8; ++L) {
                        int32_t p = 0;
                        for (int e = 4 * L; e < 4 * L + 4; ++e) {
                            const int nib = e < 16 ? qs[e] & 15 : qs[e - 16] >> 4;
                            p += T[nib] * q[32 * b + e];
                        }
                        S[L] += ls * p;
                    }
                }
                const float c = D * rd_f32(ab);
                for (int L = 0; L < 8; ++L) acc[L] = fmaf_exact(c, (float)S[L], acc[L]);
            }
            g.C[n * g.ldc + r] = hsum8(acc);
        }
    }
}

// Kernel (G): iq4_ks_r4 x q8_K32. Lane l <-> row l%4, half l/4 of every block. The +4 of the
// shifted table is applied through the float block sums of the activations; the row scale
// is applied once at the end.
void gemm_iq4_ks_r4(const GemmArgs& g) {
    const int64_t nsuper = g.K / kSuper;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
            const uint8_t* w = g.W + grp * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nsuper; ++i) {
                const uint8_t* s = w + 16 + i * kR4Bytes;
                const uint8_t* ab = a + i * kActBytes;
                const int8_t* q = reinterpret_cast<const int8_t*>(ab + act::kQ8KQs);
                for (int t = 0; t < 4; ++t) {
                    for (int l = 0; l < 8; ++l) {
                        const int b = t + 4 * (l / 4);
                        const uint8_t sc = s[4 * b + l % 4];
                        const float v = (float)((sc & 254) - 127) * (float)(4 * (sc & 1));
                        acc[l] = fmaf_exact(v, rd_f32(ab + act::kQ8KBsums + 4 * b), acc[l]);
                    }
                }
                const float dA = rd_f32(ab);
                for (int l = 0; l < 8; ++l) {
                    const int r = l % 4, h = l / 4;
                    int32_t I = 0;
                    for (int b = 0; b < 8; ++b) {
                        const int ls = (s[4 * b + r] & 254) - 127;
                        int32_t p = 0;
                        for (int e = 16 * h; e < 16 * h + 16; ++e) p += kBase[r4_nibble(s + 32, b, r, e)] * q[32 * b + e];
                        I += ls * p;
                    }
                    acc[l] = fmaf_exact(dA, (float)I, acc[l]);
                }
            }
            for (int r = 0; r < 4; ++r) g.C[n * g.ldc + 4 * grp + r] = rd_f32(w + 4 * r) * (acc[r] + acc[r + 4]);
        }
    }
}

// ------------------------------------------------------------------------------ large batch

// iq4_ks -> q8_k_r8 (docs/formats.md §11.4, layout §5): per 8 rows and super-block, each row's
// integers ls * T[n] are re-scaled to int8 if they exceed it, with fp16(D * dnew) as scale.
constexpr int kQ8kR8Bytes = 16 + 8 * 256;

void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K), nsuper = K / kSuper;
    const float d0 = 1.0f / 127.0f;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t i = 0; i < nsuper; ++i) {
            uint8_t* o = dst + (g * nsuper + i) * kQ8kR8Bytes;
            for (int r = 0; r < 8; ++r) {
                const uint8_t* row = src + (8 * g + r) * rb;
                const uint8_t* sb = row + kRowMeta + i * kSuperBytes;
                int v[kSuper];
                for (int e = 0; e < kSuper; ++e) {
                    const int b = e / kBlock, j = e % kBlock;
                    const uint8_t* qs = sb + 8 + 16 * b;
                    const int nib = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
                    v[e] = ((sb[b] & 254) - 127) * kValues[16 * (sb[b] & 1) + nib];
                }
                const float dnew = q8_k_r8::pack_row_scalar(v, d0, r, o);
                wr_u16(o + 2 * r, fp32_to_fp16(rd_f32(row) * dnew));
            }
        }
    }
}

}  // namespace

void register_scalar_iq4_ks(KernelTables& t) {
    TypeKernels& a = t.types[T_IQ4_KS];
    a.quantize = quantize_iq4_ks;
    a.dequantize = dequantize_iq4_ks;
    a.gemm = gemm_iq4_ks;
    a.to_large_batch = convert_to_q8_k_r8;
    TypeKernels& b = t.types[T_IQ4_KS_R4];
    b.quantize = quantize_iq4_ks_r4;
    b.dequantize = dequantize_iq4_ks_r4;
    b.gemm = gemm_iq4_ks_r4;
    b.to_interleaved = repack_to_r4;
    b.from_interleaved = repack_from_r4;
}

}  // namespace iqkq
