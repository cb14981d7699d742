// q4_0 (id 2), q5_0 (6), q6_0 (133), iq4_nl (20) and their twins q4_0_r8 (202), q5_0_r4 (206),
// q6_0_r4 (233), iq4_nl_r4 (220): scalar reference quantize / dequantize / repack /
// large-batch conversion and the scalar twins of ik_llama.cpp's AVX2 kernels, in their float
// order (docs/formats.md, "Legacy 32-blocks").
#include "formats/legacy.h"
#include "formats/r8_dwords.h"

#include "common.h"
#include "formats/act.h"
#include "formats/quant_common.h"
#include "types.h"

#include <cmath>
#include <vector>

namespace iqkq {
namespace {

using namespace legacy;

// ------------------------------------------------------------------ quantizers (model files)
// The "_ref" quantizers of q4_0 / q5_0 (no imatrix): d = max / -nmax (max = the value of
// largest magnitude, first one on ties), codes min(2 nmax - 1, (int8)(x / d + nmax + 0.5)).
template <int kNmax>
void ref_block(const float* x, float* d_out, uint8_t codes[32]) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j) {
        const float a = fabsf_(x[j]);
        if (amax < a) {
            amax = a;
            max = x[j];
        }
    }
    const float d = max / (float)(-kNmax);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) {
        const int v = cvtt_i8(x[j] * id + ((float)kNmax + 0.5f));
        codes[j] = (uint8_t)(v < 2 * kNmax - 1 ? v : 2 * kNmax - 1);
    }
    *d_out = d;
}

// sigma^2 of a row for the imatrix weights: sum(x^2) / K.
float row_sigma2(const float* x, int64_t K) {
    float s = 0.0f;
    for (int64_t j = 0; j < K; ++j) s = s + x[j] * x[j];
    return s / (float)K;
}

void imatrix_weights(const float* qw, const float* xb, float sigma2, float w[32]) {
    for (int j = 0; j < 32; ++j) w[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
}

void write_q4_0(uint8_t* o, float d, const uint8_t L[32]) {
    wr_u16(o, fp32_to_fp16(d));
    for (int j = 0; j < 16; ++j) o[2 + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

void write_q5_0(uint8_t* o, float d, const uint8_t L[32]) {
    wr_u16(o, fp32_to_fp16(d));
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        o[6 + j] = (uint8_t)((L[j] & 0xf) | ((L[j + 16] & 0xf) << 4));
        qh |= (uint32_t)((L[j] & 0x10u) >> 4) << j;
        qh |= (uint32_t)((L[j + 16] & 0x10u) >> 4) << (j + 16);
    }
    wr_u32(o + 2, qh);
}

void write_q6_0(uint8_t* o, float d, const uint8_t L[32]) {
    wr_u16(o, fp32_to_fp16(d));
    uint8_t* qh = o + 2;
    std::memset(qh, 0, 8);
    for (int j = 0; j < 16; ++j) {
        o[10 + j] = (uint8_t)((L[j] & 0xf) | ((L[j + 16] & 0xf) << 4));
        const uint8_t h = (uint8_t)((L[j] >> 4) | ((L[j + 16] >> 4) << 2));
        qh[j % 8] |= (uint8_t)(h << (4 * (j / 8)));
    }
}

// q4_0 / q5_0: _ref without imatrix, make_qx_quants with the imatrix weights otherwise.
template <int kNmax, void (*Write)(uint8_t*, float, const uint8_t*), int kBytes>
void quantize_q40_q50(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t nb = K / kBlock;
    for (int64_t r = 0; r < nrows; ++r) {
        const float* x = src + r * K;
        uint8_t* o = dst + r * nb * kBytes;
        const float sigma2 = imatrix ? row_sigma2(x, K) : 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t L[32];
            float d;
            if (!imatrix) {
                ref_block<kNmax>(x + b * kBlock, &d, L);
            } else {
                float w[32];
                imatrix_weights(imatrix + b * kBlock, x + b * kBlock, sigma2, w);
                d = make_qx_quants(kBlock, kNmax, x + b * kBlock, L, w);
            }
            Write(o + b * kBytes, d, L);
        }
    }
}

void quantize_q4_0(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    quantize_q40_q50<8, write_q4_0, kQ4Bytes>(src, dst, nrows, K, imatrix);
}
void quantize_q5_0(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    quantize_q40_q50<16, write_q5_0, kQ5Bytes>(src, dst, nrows, K, imatrix);
}

// q6_0: always make_qx_quants (nmax 32), weights x^2 without imatrix.
void quantize_q6_0(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t nb = K / kBlock;
    for (int64_t r = 0; r < nrows; ++r) {
        const float* x = src + r * K;
        uint8_t* o = dst + r * nb * kQ6Bytes;
        const float sigma2 = imatrix ? row_sigma2(x, K) : 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
            const float* xb = x + b * kBlock;
            float w[32];
            if (imatrix) imatrix_weights(imatrix + b * kBlock, xb, sigma2, w);
            else
                for (int j = 0; j < 32; ++j) w[j] = xb[j] * xb[j];
            uint8_t L[32];
            const float d = make_qx_quants(kBlock, 32, xb, L, w);
            write_q6_0(o + b * kQ6Bytes, d, L);
        }
    }
}

// iq4_nl: ggml's quantize_row_iq4_nl_impl with one 32-block per super-block, ntry = 7.
void quantize_iq4_nl_block(const float* xb, const float* qw, uint8_t* o) {
    const int8_t* T = iq4nl_values();
    float sigma2 = 0.0f;
    for (int j = 0; j < 32; ++j) sigma2 = sigma2 + xb[j] * xb[j];
    sigma2 = sigma2 * (2.0f / 32.0f);
    float w[32];
    if (qw) {
        for (int j = 0; j < 32; ++j) w[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
    } else {
        for (int j = 0; j < 32; ++j) w[j] = xb[j] * xb[j];
    }
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j) {
        const float ax = fabsf_(xb[j]);
        if (ax > amax) {
            amax = ax;
            max = xb[j];
        }
    }
    float scale = 0.0f;
    if (!(amax < kGroupMaxEps)) {
        uint8_t L[32];
        float d = (-max) / (float)T[0];
        float id = 1.0f / d;
        float sumqx = 0.0f, sumq2 = 0.0f;
        for (int j = 0; j < 32; ++j) {
            const int l = iq4_ks::best_index(T, id * xb[j]);
            L[j] = (uint8_t)l;
            const float q = (float)T[l];
            sumqx = sumqx + (w[j] * q) * xb[j];
            sumq2 = sumq2 + (w[j] * q) * q;
        }
        d = sumqx / sumq2;
        float best = d * sumqx;
        float best_sumqx = sumqx, best_sumq2 = sumq2;
        auto trial = [&](float tid) {
            float sqx = 0.0f, sq2 = 0.0f;
            for (int j = 0; j < 32; ++j) {
                const float q = (float)T[iq4_ks::best_index(T, tid * xb[j])];
                sqx = sqx + (w[j] * q) * xb[j];
                sq2 = sq2 + (w[j] * q) * q;
            }
            if (sq2 > 0.0f && sqx * sqx > best * sq2) {
                d = sqx / sq2;
                best = d * sqx;
                best_sumqx = sqx;
                best_sumq2 = sq2;
                for (int j = 0; j < 32; ++j) L[j] = (uint8_t)iq4_ks::best_index(T, tid * xb[j]);
            }
        };
        for (int itry = -7; itry <= 7; ++itry) {
            trial((float)(itry + T[0]) / max);
            trial((float)(itry + T[15]) / max);
        }
        sumqx = best_sumqx;
        sumq2 = best_sumq2;
        for (int iter = 0; iter < 32 * 32; ++iter) {
            float min_step = INFINITY;
            int best_j = -1, dir = 0;
            for (int j = 0; j < 32; ++j) {
                const float g = (d * w[j]) * (xb[j] - d * (float)T[L[j]]);
                if (g > 0.0f && L[j] < 15) {
                    const float step = (float)(T[L[j] + 1] - T[L[j]]) / g;
                    if (step < min_step) {
                        min_step = step;
                        best_j = j;
                        dir = 1;
                    }
                } else if (g < 0.0f && L[j] > 0) {
                    const float step = (float)(T[L[j] - 1] - T[L[j]]) / g;
                    if (step < min_step) {
                        min_step = step;
                        best_j = j;
                        dir = -1;
                    }
                }
            }
            if (best_j < 0) break;
            const int l0 = L[best_j], l1 = l0 + dir;
            const float new_sumqx = sumqx + (w[best_j] * xb[best_j]) * (float)(T[l1] - T[l0]);
            const float new_sumq2 = sumq2 + w[best_j] * (float)(T[l1] * T[l1] - T[l0] * T[l0]);
            if (new_sumq2 > 0.0f && new_sumqx * new_sumqx > best * new_sumq2) {
                sumqx = new_sumqx;
                sumq2 = new_sumq2;
                d = sumqx / sumq2;
                best = d * sumqx;
                L[best_j] = (uint8_t)l1;
            } else {
                break;
            }
        }
        scale = d;
    }
    // One block per super-block: d stored as is, and every code re-derived from 1/d (an
    // all-small block has d = 0 and codes best_index(0) = 8).
    wr_u16(o, fp32_to_fp16(scale));
    const float id = scale != 0.0f ? 1.0f / scale : 0.0f;
    uint8_t L[32];
    for (int j = 0; j < 32; ++j) L[j] = (uint8_t)iq4_ks::best_index(T, id * xb[j]);
    for (int j = 0; j < 16; ++j) o[2 + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

void quantize_iq4_nl(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t nb = K / kBlock;
    for (int64_t r = 0; r < nrows; ++r)
        for (int64_t b = 0; b < nb; ++b)
            quantize_iq4_nl_block(src + r * K + b * kBlock, imatrix ? imatrix + b * kBlock : nullptr,
                                  dst + (r * nb + b) * kNlBytes);
}

// ------------------------------------------------------------------ dequantize (base types)
template <typename D>
void dequantize_base(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = nrows * (K / kBlock);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = src + b * D::kBytes;
        const float d = block_d(blk);
        int8_t v[32];
        D::signed_vals(blk, v);
        for (int j = 0; j < 32; ++j) dst[b * kBlock + j] = (float)v[j] * d;
    }
}

// ------------------------------------------------------------------ repack (both ways)
// q4_0 <-> q4_0_r8: qs[32l + 4k + i] = byte 4l + i of row k (l, i < 4).
static_assert(2 + 16 == kQ4Bytes && 8 * kQ4Bytes == kR8Q4Bytes, "q4_0_r8: r8_dwords layout");
void q4_0_to_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) { r8_dwords_to<16>(src, dst, nrows, K); }
void q4_0_from_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) { r8_dwords_from<16>(src, dst, nrows, K); }

// Codes of a base block in element order (4-bit for q4_0 / iq4_nl, 5 / 6-bit for q5_0 / q6_0).
template <int kR4Type>
void base_codes(const uint8_t* blk, uint8_t u[32]) {
    if constexpr (kR4Type == T_Q5_0_R4) Q5_0::unsigned_vals(blk, u);
    else if constexpr (kR4Type == T_Q6_0_R4) Q6_0::unsigned_vals(blk, u);
    else Q4_0::unsigned_vals(blk, u);  // iq4_nl: same nibble layout as q4_0
}
template <int kR4Type>
void write_base(uint8_t* blk, uint16_t d, const uint8_t u[32]) {
    if constexpr (kR4Type == T_Q5_0_R4) write_q5_0(blk, 0.0f, u);
    else if constexpr (kR4Type == T_Q6_0_R4) write_q6_0(blk, 0.0f, u);
    else write_q4_0(blk, 0.0f, u);
    wr_u16(blk, d);
}

template <int kR4Type>
constexpr int base_bytes() {
    return kR4Type == T_Q5_0_R4 ? kQ5Bytes : kR4Type == T_Q6_0_R4 ? kQ6Bytes : kNlBytes;
}

// 4-row interleave of q5_0 / q6_0 / iq4_nl (layouts in legacy.h).
template <int kR4Type>
void r4_block_from_rows(const uint8_t* const rows[4], uint8_t* o) {
    const int qs_off = kR4Type == T_Q5_0_R4 ? 24 : kR4Type == T_Q6_0_R4 ? 40 : 8;
    std::memset(o, 0, 4 * base_bytes<kR4Type>());
    for (int k = 0; k < 4; ++k) {
        std::memcpy(o + 2 * k, rows[k], 2);
        uint8_t u[32];
        base_codes<kR4Type>(rows[k], u);
        for (int l = 0; l < 4; ++l)
            for (int i = 0; i < 4; ++i) {
                const uint8_t lo = u[r4_elem_lo(l, i)], hi = u[r4_elem_hi(l, i)];
                o[qs_off + 4 * k + i + 16 * l] = (uint8_t)((lo & 0xf) | ((hi & 0xf) << 4));
                if (kR4Type == T_Q5_0_R4)
                    o[8 + 4 * k + i] |= (uint8_t)(((lo >> 4) | ((hi >> 4) << 4)) << l);
                else if (kR4Type == T_Q6_0_R4)
                    o[8 + 4 * k + i + 16 * (l % 2)] |= (uint8_t)(((lo >> 4) | ((hi >> 4) << 4)) << (2 * (l / 2)));
            }
    }
}

template <int kR4Type>
void to_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    constexpr int B = base_bytes<kR4Type>();
    const int64_t nb = K / kBlock;
    const size_t row = (size_t)nb * B;
    for (int64_t g = 0; g < nrows / 4; ++g) {
        const uint8_t* s = src + (size_t)g * 4 * row;
        uint8_t* o = dst + (size_t)g * 4 * row;
        for (int64_t b = 0; b < nb; ++b, o += 4 * B) {
            const uint8_t* rows[4];
            for (int k = 0; k < 4; ++k) rows[k] = s + k * row + b * B;
            r4_block_from_rows<kR4Type>(rows, o);
        }
    }
}

template <int kR4Type>
void from_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    constexpr int B = base_bytes<kR4Type>();
    const int64_t nb = K / kBlock;
    const size_t row = (size_t)nb * B;
    for (int64_t g = 0; g < nrows / 4; ++g) {
        const uint8_t* s = src + (size_t)g * 4 * row;
        uint8_t* o = dst + (size_t)g * 4 * row;
        for (int64_t b = 0; b < nb; ++b, s += 4 * B)
            for (int k = 0; k < 4; ++k) {
                uint8_t u[32];
                r4_codes(kR4Type, s, k, u);
                write_base<kR4Type>(o + k * row + b * B, rd_u16(s + 2 * k), u);
            }
    }
}

// ------------------------------------------------------------------ twins: quantize, dequantize
// q4_0_r8, q6_0_r4, iq4_nl_r4 run the imatrix through QHelper row by row; q5_0_r4 does not.
template <int kTwin>
void quantize_twin(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const TypeTraits& t = kTypes[kTwin];
    const int G = t.interleave;
    const size_t rb = row_bytes(t, K);
    const QuantizeFn base = kTwin == T_Q4_0_R8   ? quantize_q4_0
                            : kTwin == T_Q5_0_R4 ? quantize_q5_0
                            : kTwin == T_Q6_0_R4 ? quantize_q6_0
                                                 : quantize_iq4_nl;
    const RepackFn ilv = kTwin == T_Q4_0_R8   ? q4_0_to_r8
                         : kTwin == T_Q5_0_R4 ? to_r4<T_Q5_0_R4>
                         : kTwin == T_Q6_0_R4 ? to_r4<T_Q6_0_R4>
                                              : to_r4<T_IQ4_NL_R4>;
    const bool qhelper = kTwin != T_Q5_0_R4 && imatrix;
    std::vector<uint8_t> tmp((size_t)G * rb);
    std::vector<float> w(qhelper ? (size_t)K : 0);
    for (int64_t g = 0; g < nrows / G; ++g) {
        for (int k = 0; k < G; ++k) {
            const float* x = src + (g * G + k) * K;
            const float* qw = imatrix;
            if (qhelper) {
                qhelper_row_weights(imatrix, x, K, kBlock, w.data());
                qw = w.data();
            }
            base(x, tmp.data() + k * rb, 1, K, qw);
        }
        ilv(tmp.data(), dst + g * G * rb, G, K);
    }
}

void dequantize_q4_0_r8(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kBlock;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        float* y = dst + g * 8 * K;
        for (int64_t b = 0; b < nb; ++b, src += kR8Q4Bytes)
            for (int k = 0; k < 8; ++k) {
                const float d = fp16_to_fp32(rd_u16(src + 2 * k));
                for (int l = 0; l < 4; ++l)
                    for (int i = 0; i < 4; ++i) {
                        const uint8_t q = src[16 + 32 * l + 4 * k + i];
                        y[k * K + b * kBlock + 4 * l + i] = d * (float)((q & 0xf) - 8);
                        y[k * K + b * kBlock + 4 * l + i + 16] = d * (float)((q >> 4) - 8);
                    }
            }
    }
}

// q5_0_r4 / q6_0_r4: d * code + (-16 d) resp. (-32 d), as ik_llama.cpp writes it (equal to
// the base type's (code - min) * d: both are exact); iq4_nl_r4: d * value.
template <int kR4Type>
void dequantize_r4(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    constexpr int B = base_bytes<kR4Type>();
    const int64_t nb = K / kBlock;
    const int8_t* T = iq4nl_values();
    for (int64_t g = 0; g < nrows / 4; ++g) {
        float* y = dst + g * 4 * K;
        for (int64_t b = 0; b < nb; ++b, src += 4 * B)
            for (int k = 0; k < 4; ++k) {
                const float d = fp16_to_fp32(rd_u16(src + 2 * k));
                uint8_t u[32];
                r4_codes(kR4Type, src, k, u);
                float* yk = y + k * K + b * kBlock;
                if constexpr (kR4Type == T_IQ4_NL_R4) {
                    for (int j = 0; j < 32; ++j) yk[j] = d * (float)T[u[j]];
                } else {
                    const float m = (kR4Type == T_Q5_0_R4 ? -16.0f : -32.0f) * d;
                    for (int j = 0; j < 32; ++j) yk[j] = d * (float)u[j] + m;
                }
            }
    }
}

// ------------------------------------------------------------------ large batch: -> q8_0_r8
// ik_llama.cpp's iqk_convert_qX_q80_r8: the signed values as q8_0 quants, d copied.
template <typename D>
void to_q8_0_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kBlock;
    const size_t row = (size_t)nb * D::kBytes;
    for (int64_t g = 0; g < nrows / 8; ++g) {
        const uint8_t* s = src + (size_t)g * 8 * row;
        uint8_t* o = dst + (size_t)g * nb * (8 * 34);
        for (int64_t b = 0; b < nb; ++b, o += 8 * 34)
            for (int k = 0; k < 8; ++k) {
                const uint8_t* blk = s + k * row + b * D::kBytes;
                std::memcpy(o + 2 * k, blk, 2);
                int8_t v[32];
                D::signed_vals(blk, v);
                for (int l = 0; l < 8; ++l) std::memcpy(o + 16 + 32 * l + 4 * k, v + 4 * l, 4);
            }
    }
}

// ------------------------------------------------------------------ gemm (scalar twins)
struct ActBlock {
    float d;    // bf16 scale
    float s;    // (float) int16 sum of the quants
    const int8_t* q;
};
inline ActBlock act_block(const uint8_t* a, int64_t i, int64_t nb4) {
    return {bf16_to_fp32(rd_u16(a + act::q82_d_offset(i, nb4))),
            (float)(int16_t)rd_u16(a + act::q82_s_offset(i, nb4)),
            reinterpret_cast<const int8_t*>(a + act::q82_qs_offset(i, nb4))};
}

template <typename W>
inline int32_t dot(const W* w, const int8_t* a, int n) {
    int32_t s = 0;
    for (int e = 0; e < n; ++e) s += (int32_t)w[e] * (int32_t)a[e];
    return s;
}

// q4_0 / q5_0 / q6_0 x q8_2_x4 (ik_llama.cpp's mul_mat_qX_1_q8_2_T with the *_0_1 unpackers):
// unsigned codes, the offset applied through the activation block sums. Per 4-block group,
// lane t / t+4 get block t's halves; the offset terms go to a 4-lane accumulator (added, not
// fused); tail blocks spread their offset term over the 4 lanes (x 0.25).
template <typename D>
void gemm_qx_0(const GemmArgs& g) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const float mmin = -(float)D::kMin;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t r = 0; r < g.nrows; ++r) {
            const uint8_t* w = g.W + r * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, accm[4] = {0, 0, 0, 0};
            for (int64_t b = 0; b < nb4; ++b) {
                const int t = (int)(b % 4);
                const uint8_t* blk = w + b * D::kBytes;
                const ActBlock ab = act_block(a, b, nb4);
                const float dw = block_d(blk);
                const float c = dw * ab.d;
                accm[t] = accm[t] + (dw * mmin) * (ab.d * ab.s);
                uint8_t u[32];
                D::unsigned_vals(blk, u);
                acc[t] = fmaf_exact(c, (float)dot(u, ab.q, 16), acc[t]);
                acc[t + 4] = fmaf_exact(c, (float)dot(u + 16, ab.q + 16, 16), acc[t + 4]);
            }
            for (int64_t b = nb4; b < nb; ++b) {
                const uint8_t* blk = w + b * D::kBytes;
                const ActBlock ab = act_block(a, b, nb4);
                const float dw = block_d(blk);
                const float c = dw * ab.d;
                const float m = (-dw * (float)D::kMin) * (ab.d * ab.s);
                for (int t = 0; t < 4; ++t) accm[t] = accm[t] + m * 0.25f;
                uint8_t u[32];
                D::unsigned_vals(blk, u);
                for (int L = 0; L < 8; ++L) acc[L] = fmaf_exact(c, (float)dot(u + 4 * L, ab.q + 4 * L, 4), acc[L]);
            }
            float v[4];
            for (int t = 0; t < 4; ++t) v[t] = (acc[t] + acc[t + 4]) + accm[t];
            g.C[n * g.ldc + r] = (v[0] + v[2]) + (v[1] + v[3]);
        }
    }
}

// iq4_nl x q8_2_x4: ik_llama.cpp's AVX2 path is the q8_0 kernel (mul_mat_qX_0_q8_0_T with
// q8_2 blocks) on the signed codebook values: eight lanes, H8.
void gemm_iq4_nl(const GemmArgs& g) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t r = 0; r < g.nrows; ++r) {
            const uint8_t* w = g.W + r * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t* blk = w + b * kNlBytes;
                const ActBlock ab = act_block(a, b, nb4);
                const float c = block_d(blk) * ab.d;
                int8_t q[32];
                IQ4_NL::signed_vals(blk, q);
                if (b < nb4) {
                    const int t = (int)(b % 4);
                    acc[t] = fmaf_exact(c, (float)dot(q, ab.q, 16), acc[t]);
                    acc[t + 4] = fmaf_exact(c, (float)dot(q + 16, ab.q + 16, 16), acc[t + 4]);
                } else {
                    for (int L = 0; L < 8; ++L) acc[L] = fmaf_exact(c, (float)dot(q + 4 * L, ab.q + 4 * L, 4), acc[L]);
                }
            }
            g.C[n * g.ldc + r] = hsum8(acc);
        }
    }
}

// q5_0_r4 / q6_0_r4 / iq4_nl_r4 x q8_2_x4 (mul_mat_q5_0_r4_q8_2_avx2 & co): per 4-row group
// lanes r and r+4 hold row r's dot over elements 0..15 and 16..31; per block
// acc = fma(d_r d_a, sumi, acc) and, for q5_0 / q6_0, acc = fma(d_r, -min/2 d_a s, acc) in both
// lanes; the row result is lane r + lane r+4.
template <int kR4Type>
void gemm_r4(const GemmArgs& g) {
    constexpr int B = 4 * base_bytes<kR4Type>();
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    const int8_t* T = iq4nl_values();
    const float half_min = kR4Type == T_Q5_0_R4 ? -8.0f : -16.0f;
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
            const uint8_t* w = g.W + grp * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t* blk = w + b * B;
                const ActBlock ab = act_block(a, b, nb4);
                const float ms = half_min * (ab.d * ab.s);
                for (int k = 0; k < 4; ++k) {
                    uint8_t u[32];
                    r4_codes(kR4Type, blk, k, u);
                    int32_t s0, s1;
                    if constexpr (kR4Type == T_IQ4_NL_R4) {
                        int8_t v[32];
                        for (int j = 0; j < 32; ++j) v[j] = T[u[j]];
                        s0 = dot(v, ab.q, 16);
                        s1 = dot(v + 16, ab.q + 16, 16);
                    } else {
                        s0 = dot(u, ab.q, 16);
                        s1 = dot(u + 16, ab.q + 16, 16);
                    }
                    const float dw = fp16_to_fp32(rd_u16(blk + 2 * k));
                    const float c = dw * ab.d;
                    acc[k] = fmaf_exact(c, (float)s0, acc[k]);
                    acc[k + 4] = fmaf_exact(c, (float)s1, acc[k + 4]);
                    if constexpr (kR4Type != T_IQ4_NL_R4) {
                        acc[k] = fmaf_exact(dw, ms, acc[k]);
                        acc[k + 4] = fmaf_exact(dw, ms, acc[k + 4]);
                    }
                }
            }
            for (int k = 0; k < 4; ++k) g.C[n * g.ldc + grp * 4 + k] = acc[k] + acc[k + 4];
        }
    }
}

// q4_0_r8 x q8_2_x4 (mul_mat_q4_0_r8_q8_2_avx2): one lane per row, unsigned nibbles. Two float
// orders: the one-column kernel keeps the offset sums d_r * d_a s in a second accumulator and
// applies -8 at the end; the multi-column kernel folds -8 (sum over a 4-block group of
// d_r,k * d_a,k s_k) in before the group's products (tail blocks: one fma each).
void gemm_q4_0_r8(const GemmArgs& g) {
    const int64_t nb = g.K / kBlock, nb4 = 4 * (nb / 4);
    for (int64_t n = 0; n < g.ncols; ++n) {
        const uint8_t* a = g.A + n * g.a_row_bytes;
        const bool single = n == g.single_col;
        for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
            const uint8_t* w = g.W + grp * g.w_group_bytes;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, acc2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            auto sumi = [&](const uint8_t* blk, const int8_t* q, int k) {
                int32_t s = 0;
                for (int l = 0; l < 4; ++l)
                    for (int i = 0; i < 4; ++i) {
                        const uint8_t c = blk[16 + 32 * l + 4 * k + i];
                        s += (int32_t)(c & 0xf) * q[4 * l + i] + (int32_t)(c >> 4) * q[16 + 4 * l + i];
                    }
                return s;
            };
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t* blk = w + b * kR8Q4Bytes;
                const ActBlock ab = act_block(a, b, nb4);
                const float m = ab.d * ab.s;
                if (!single && b < nb4 && b % 4 == 0) {
                    for (int k = 0; k < 8; ++k) {
                        float sf = fp16_to_fp32(rd_u16(blk + 2 * k)) * m;
                        for (int j = 1; j < 4; ++j) {
                            const ActBlock aj = act_block(a, b + j, nb4);
                            sf = fmaf_exact(fp16_to_fp32(rd_u16(blk + j * kR8Q4Bytes + 2 * k)), aj.d * aj.s, sf);
                        }
                        acc[k] = fmaf_exact(sf, -8.0f, acc[k]);
                    }
                }
                for (int k = 0; k < 8; ++k) {
                    const float dw = fp16_to_fp32(rd_u16(blk + 2 * k));
                    acc[k] = fmaf_exact(dw * ab.d, (float)sumi(blk, ab.q, k), acc[k]);
                    if (single) acc2[k] = fmaf_exact(dw, m, acc2[k]);
                    else if (b >= nb4) acc[k] = fmaf_exact(dw * -8.0f, m, acc[k]);
                }
            }
            for (int k = 0; k < 8; ++k)
                g.C[n * g.ldc + grp * 8 + k] = single ? fmaf_exact(acc2[k], -8.0f, acc[k]) : acc[k];
        }
    }
}

}  // namespace

void register_scalar_legacy(KernelTables& t) {
    {
        TypeKernels& k = t.types[T_Q4_0];
        k.quantize = quantize_q4_0;
        k.dequantize = dequantize_base<Q4_0>;
        k.gemm = gemm_qx_0<Q4_0>;
        k.to_large_batch = to_q8_0_r8<Q4_0>;
        TypeKernels& r = t.types[T_Q4_0_R8];
        r.quantize = quantize_twin<T_Q4_0_R8>;
        r.dequantize = dequantize_q4_0_r8;
        r.gemm = gemm_q4_0_r8;
        r.to_interleaved = q4_0_to_r8;
        r.from_interleaved = q4_0_from_r8;
    }
    {
        TypeKernels& k = t.types[T_Q5_0];
        k.quantize = quantize_q5_0;
        k.dequantize = dequantize_base<Q5_0>;
        k.gemm = gemm_qx_0<Q5_0>;
        k.to_large_batch = to_q8_0_r8<Q5_0>;
        TypeKernels& r = t.types[T_Q5_0_R4];
        r.quantize = quantize_twin<T_Q5_0_R4>;
        r.dequantize = dequantize_r4<T_Q5_0_R4>;
        r.gemm = gemm_r4<T_Q5_0_R4>;
        r.to_interleaved = to_r4<T_Q5_0_R4>;
        r.from_interleaved = from_r4<T_Q5_0_R4>;
    }
    {
        TypeKernels& k = t.types[T_Q6_0];
        k.quantize = quantize_q6_0;
        k.dequantize = dequantize_base<Q6_0>;
        k.gemm = gemm_qx_0<Q6_0>;
        k.to_large_batch = to_q8_0_r8<Q6_0>;
        TypeKernels& r = t.types[T_Q6_0_R4];
        r.quantize = quantize_twin<T_Q6_0_R4>;
        r.dequantize = dequantize_r4<T_Q6_0_R4>;
        r.gemm = gemm_r4<T_Q6_0_R4>;
        r.to_interleaved = to_r4<T_Q6_0_R4>;
        r.from_interleaved = from_r4<T_Q6_0_R4>;
    }
    {
        TypeKernels& k = t.types[T_IQ4_NL];
        k.quantize = quantize_iq4_nl;
        k.dequantize = dequantize_base<IQ4_NL>;
        k.gemm = gemm_iq4_nl;
        k.to_large_batch = to_q8_0_r8<IQ4_NL>;
        TypeKernels& r = t.types[T_IQ4_NL_R4];
        r.quantize = quantize_twin<T_IQ4_NL_R4>;
        r.dequantize = dequantize_r4<T_IQ4_NL_R4>;
        r.gemm = gemm_r4<T_IQ4_NL_R4>;
        r.to_interleaved = to_r4<T_IQ4_NL_R4>;
        r.from_interleaved = from_r4<T_IQ4_NL_R4>;
    }
}

}  // namespace iqkq
