// k-quants: q4_K, q5_K, q6_K, their interleaved twins q4_k_r4 / q5_k_r4 / q6_k_r4 and the
// large-batch form q8_1_r8 (docs/formats.md, "k-quants"). Scalar reference: quantize (the
// ggml-quants.c routines ggml_quantize_chunk calls, evaluated without contraction), dequantize,
// repack, large-batch conversion and the matmul kernels in ik_llama.cpp's AVX2 float order.
#include "formats/kquants.h"

#include "common.h"
#include "formats/act.h"
#include "formats/q8_0.h"
#include "formats/qhelper.h"
#include "formats/quant_common.h"
#include "types.h"

#include <cmath>
#include <vector>

namespace iqkq {
namespace {

using namespace kq;

// ------------------------------------------------------------------------- scale searches
// make_qkx2_quants (float sums, squared error): the asymmetric search of q4_K / q5_K without
// an imatrix. Returns the scale, *the_min receives -min.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max - min < 1e-10f) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min);
    float scale = 1.0f / iscale;
    float best_mad = 0.0f;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)clampi(l, 0, nmax);
        float diff = (scale * (float)L[i] + min) - x[i];
        diff = diff * diff;
        best_mad += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = ((rmin + rdelta * (float)is) + (float)nmax) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; ++i) {
            const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * (float)l;
            sum_l2 += (w * (float)l) * (float)l;
            sum_xl += (w * (float)l) * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0.0f) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0.0f) {
                this_min = 0.0f;
                this_scale = sum_xl / sum_l2;
            }
            float mad = 0.0f;
            for (int i = 0; i < n; ++i) {
                float diff = (this_scale * (float)Laux[i] + this_min) - x[i];
                diff = diff * diff;
                mad += weights[i] * diff;
            }
            if (mad < best_mad) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// make_qkx3_quants (double sums, squared error, then a coordinate descent): q4_K / q5_K with
// an imatrix.
float make_qkx3_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0];
    double sum_w = (double)weights[0];
    double sum_x = sum_w * (double)x[0];
    double sum_x2 = (sum_w * (double)x[0]) * (double)x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += (double)w;
        sum_x += (double)w * (double)x[i];
        sum_x2 += ((double)w * (double)x[i]) * (double)x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max - min < 1e-10f) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min);
    float scale = 1.0f / iscale;
    double best_mad = 0.0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)clampi(l, 0, nmax);
        double diff = ((double)scale * (double)L[i] + (double)min) - (double)x[i];
        diff = diff * diff;
        best_mad += (double)weights[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = ((rmin + rdelta * (float)is) + (float)nmax) / (max - min);
        double sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            const double w = (double)weights[i];
            sum_l += w * (double)l;
            sum_l2 += (w * (double)l) * (double)l;
            sum_xl += (w * (double)l) * (double)x[i];
        }
        const double D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            double this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            double this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            const double mad = ((((sum_x2 - (2 * this_scale) * sum_xl) - (2 * this_min) * sum_x) +
                                 ((2 * this_scale) * this_min) * sum_l) +
                                (this_scale * this_scale) * sum_l2) +
                               (this_min * this_min) * sum_w;
            if (mad < best_mad) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_mad = mad;
                scale = (float)this_scale;
                min = (float)this_min;
            }
        }
    }
    double sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
        const int l = L[i];
        const double w = (double)weights[i];
        sum_l += w * (double)l;
        sum_l2 += (w * (double)l) * (double)l;
        sum_xl += (w * (double)l) * (double)x[i];
    }
    const double s = scale, m = min;
    double best = ((((2 * s) * sum_xl + (2 * m) * sum_x) - ((2 * s) * m) * sum_l) - (s * s) * sum_l2) - (m * m) * sum_w;
    int last_j = -1, last_dir = 0;
    for (int itry = 0; itry < nmax * n; ++itry) {
        float gmax = 0.0f;
        int best_j = -1, dir = 0;
        for (int j = 0; j < n; ++j) {
            const float g = (x[j] - scale * (float)L[j]) - min;
            if (g > 0.0f && L[j] < nmax && g > gmax) {
                gmax = g;
                best_j = j;
                dir = 1;
            } else if (g < 0.0f && L[j] > 0 && -g > gmax) {
                gmax = -g;
                best_j = j;
                dir = -1;
            }
        }
        if (best_j < 0 || (best_j == last_j && dir == -last_dir)) break;
        const double w = (double)weights[best_j];
        sum_l += w * (double)dir;
        sum_l2 += w * (double)(2 * L[best_j] * dir + 1);
        sum_xl += (w * (double)x[best_j]) * (double)dir;
        const double D = sum_w * sum_l2 - sum_l * sum_l;
        if (D <= 0) break;
        double this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        double this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        if (this_scale < 0) break;
        const double score = ((((2 * this_scale) * sum_xl + (2 * this_min) * sum_x) - ((2 * this_scale) * this_min) * sum_l) -
                              (this_scale * this_scale) * sum_l2) -
                             (this_min * this_min) * sum_w;
        if (score <= best) break;
        best = score;
        scale = (float)this_scale;
        min = (float)this_min;
        L[best_j] = (uint8_t)(L[best_j] + dir);
        last_j = best_j;
        last_dir = dir;
    }
    *the_min = -min;
    return scale;
}

// make_qp_quants: the 6-bit super-block quantization of the 8 scales (or mins) of q4_K / q5_K
// with an imatrix, weighted by the blocks' weight sums.
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* qw) {
    float max = 0.0f;
    for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
    if (max < 1e-16f) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.0f;
    }
    float iscale = (float)nmax / max;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)nearest_int(iscale * x[i]);
    const float scale = 1.0f / iscale;
    float best_mse = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float diff = x[i] - scale * (float)L[i];
        best_mse += (qw[i] * diff) * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * (float)is + (float)nmax) / max;
        const float scale_is = 1.0f / iscale_is;
        float mse = 0.0f;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale_is * x[i]);
            l = l < nmax ? l : nmax;
            const float diff = x[i] - scale_is * (float)l;
            mse += (qw[i] * diff) * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = l < nmax ? l : nmax;
        L[i] = (uint8_t)l;
        sumlx += (qw[i] * x[i]) * (float)l;
        suml2 += (qw[i] * (float)l) * (float)l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = qw[i];
            float slx = sumlx - (w * x[i]) * (float)L[i];
            float sl2 = suml2 - (w * (float)L[i]) * (float)L[i];
            if (slx > 0.0f && sl2 > 0.0f) {
                int new_l = nearest_int((x[i] * sl2) / slx);
                new_l = new_l < nmax ? new_l : nmax;
                if (new_l != L[i]) {
                    slx += (w * x[i]) * (float)new_l;
                    sl2 += (w * (float)new_l) * (float)new_l;
                    if ((slx * slx) * suml2 > (sumlx * sumlx) * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return sumlx / suml2;
}

// ------------------------------------------------------------------------------ q6_K
void quantize_q6_K_row(const float* x, uint8_t* y, int64_t K, const float* qw_row) {
    int8_t L[kSuper];
    float scales[16];
    for (int64_t i = 0; i < K / kSuper; ++i, x += kSuper, y += kQ6Bytes) {
        float max_scale = 0.0f, max_abs_scale = 0.0f;
        for (int ib = 0; ib < 16; ++ib) {
            const float* qw = qw_row ? qw_row + kSuper * i + 16 * ib : nullptr;
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, qw);
            scales[ib] = scale;
            const float abs_scale = fabsf_(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if (max_abs_scale < kGroupMaxEps) {
            std::memset(y, 0, kQ6Bytes);
            continue;
        }
        const float iscale = -128.0f / max_scale;
        const uint16_t dh = fp32_to_fp16(1.0f / iscale);
        wr_u16(y + kQ6D, dh);
        int8_t* sc = reinterpret_cast<int8_t*>(y + kQ6Scales);
        for (int ib = 0; ib < 16; ++ib) {
            const int v = nearest_int(iscale * scales[ib]);
            sc[ib] = (int8_t)(v < 127 ? v : 127);
        }
        const float dd = fp16_to_fp32(dh);
        for (int j = 0; j < 16; ++j) {
            const float d = dd * (float)sc[j];
            if (d == 0.0f) continue;
            for (int ii = 0; ii < 16; ++ii) {
                const int l = clampi(nearest_int(x[16 * j + ii] / d), -32, 31);
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        uint8_t* ql = y;
        uint8_t* qh = y + kQ6Qh;
        for (int j = 0; j < kSuper; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                  ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

void quantize_q6_K(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const size_t rb = (size_t)(K / kSuper) * kQ6Bytes;
    for (int64_t r = 0; r < nrows; ++r) quantize_q6_K_row(src + r * K, dst + r * rb, K, imatrix);
}

void dequantize_q6_K(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    uint8_t L[kSuper];
    const int64_t nb = nrows * (K / kSuper);
    for (int64_t i = 0; i < nb; ++i, src += kQ6Bytes, dst += kSuper) {
        const float d = fp16_to_fp32(rd_u16(src + kQ6D));
        const int8_t* sc = reinterpret_cast<const int8_t*>(src + kQ6Scales);
        unpack_q6(src, L);
        for (int e = 0; e < kSuper; ++e) dst[e] = (d * (float)sc[e / 16]) * (float)(int8_t)(L[e] - 32);
    }
}

// ------------------------------------------------------------------------ q4_K / q5_K
template <int nmax>
void pack_scales_k4(uint8_t* scales, const uint8_t* ls, const uint8_t* lm) {
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            scales[j] = ls[j];
            scales[j + 4] = lm[j];
        } else {
            scales[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            scales[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            scales[j - 0] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

// One q4_K (nmax 15) or q5_K (nmax 31) row: quantize_row_q{4,5}_K_ref without an imatrix,
// quantize_row_q{4,5}_K_impl with one. Returns the quants L (0..nmax) of every super-block
// through `emit` together with the finished scale bytes.
template <int nmax>
void quantize_qK_row(const float* x, uint8_t* y, int64_t K, const float* qw_row, int bytes) {
    uint8_t L[kSuper], Laux[32], Ls[8], Lm[8];
    float weights[32], mins[8], scales[8], sw[8];
    for (int64_t i = 0; i < K / kSuper; ++i, x += kSuper, y += bytes) {
        uint16_t dh, mh;
        if (!qw_row) {
            float max_scale = 0.0f, max_min = 0.0f;
            for (int j = 0; j < 8; ++j) {
                float sum_x2 = 0.0f;
                for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
                const float av_x = __builtin_sqrtf(sum_x2 / 32.0f);
                for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf_(x[32 * j + l]);
                scales[j] = nmax == 15 ? make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.0f, 0.1f, 20)
                                       : make_qkx2_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15);
                if (scales[j] > max_scale) max_scale = scales[j];
                if (mins[j] > max_min) max_min = mins[j];
            }
            const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
            const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
            for (int j = 0; j < 8; ++j) {
                const uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
                const uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
                Ls[j] = ls < 63 ? ls : 63;
                Lm[j] = lm < 63 ? lm : 63;
            }
            dh = fp32_to_fp16(max_scale / 63.0f);
            mh = fp32_to_fp16(max_min / 63.0f);
        } else {
            float sum_x2 = 0.0f;
            for (int l = 0; l < kSuper; ++l) sum_x2 += x[l] * x[l];
            const float sigma2 = (2.0f * sum_x2) / (float)kSuper;
            const float av_x = __builtin_sqrtf(sigma2);
            for (int j = 0; j < 8; ++j) {
                const float* qw = qw_row + kSuper * i + 32 * j;
                for (int l = 0; l < 32; ++l) weights[l] = qw[l] * __builtin_sqrtf(sigma2 + x[32 * j + l] * x[32 * j + l]);
                (void)av_x;
                float sumw = 0.0f;
                for (int l = 0; l < 32; ++l) sumw += weights[l];
                sw[j] = sumw;
                scales[j] = make_qkx3_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
            }
            const float d_block = make_qp_quants(8, 63, scales, Ls, sw);
            const float m_block = make_qp_quants(8, 63, mins, Lm, sw);
            if (nmax == 31)
                for (int j = 0; j < 8; ++j) {
                    Ls[j] = Ls[j] < 63 ? Ls[j] : 63;
                    Lm[j] = Lm[j] < 63 ? Lm[j] : 63;
                }
            dh = fp32_to_fp16(d_block);
            mh = fp32_to_fp16(m_block);
        }
        uint8_t* sc = y + kQ4Scales;
        pack_scales_k4<nmax>(sc, Ls, Lm);
        wr_u16(y, dh);
        wr_u16(y + 2, mh);
        const float dd = fp16_to_fp32(dh), dm0 = fp16_to_fp32(mh);
        for (int j = 0; j < 8; ++j) {
            uint8_t s, m;
            scale_min_k4(j, sc, s, m);
            const float d = dd * (float)s;
            if (d == 0.0f) continue;
            const float dm = dm0 * (float)m;
            for (int ii = 0; ii < 32; ++ii) L[32 * j + ii] = (uint8_t)clampi(nearest_int((x[32 * j + ii] + dm) / d), 0, nmax);
        }
        if (nmax == 15) {
            uint8_t* q = y + kQ4Qs;
            for (int j = 0; j < kSuper; j += 64, q += 32)
                for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        } else {
            uint8_t* qh = y + kQ5Qh;
            uint8_t* ql = y + kQ5Qs;
            std::memset(qh, 0, 32);
            uint8_t m1 = 1, m2 = 2;
            for (int n = 0; n < kSuper; n += 64, ql += 32) {
                for (int j = 0; j < 32; ++j) {
                    int l1 = L[n + j];
                    if (l1 > 15) {
                        l1 -= 16;
                        qh[j] |= m1;
                    }
                    int l2 = L[n + j + 32];
                    if (l2 > 15) {
                        l2 -= 16;
                        qh[j] |= m2;
                    }
                    ql[j] = (uint8_t)(l1 | (l2 << 4));
                }
                m1 = (uint8_t)(m1 << 2);
                m2 = (uint8_t)(m2 << 2);
            }
        }
    }
}

void quantize_q4_K(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const size_t rb = (size_t)(K / kSuper) * kQ4Bytes;
    for (int64_t r = 0; r < nrows; ++r) quantize_qK_row<15>(src + r * K, dst + r * rb, K, imatrix, kQ4Bytes);
}
void quantize_q5_K(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const size_t rb = (size_t)(K / kSuper) * kQ5Bytes;
    for (int64_t r = 0; r < nrows; ++r) quantize_qK_row<31>(src + r * K, dst + r * rb, K, imatrix, kQ5Bytes);
}

template <bool five>
void dequantize_qK(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    uint8_t L[kSuper];
    const int bytes = five ? kQ5Bytes : kQ4Bytes;
    const int64_t nb = nrows * (K / kSuper);
    for (int64_t i = 0; i < nb; ++i, src += bytes, dst += kSuper) {
        const float d = fp16_to_fp32(rd_u16(src)), mn = fp16_to_fp32(rd_u16(src + 2));
        if (five) unpack_q5(src, L); else unpack_q4(src, L);
        for (int j = 0; j < 8; ++j) {
            uint8_t s, m;
            scale_min_k4(j, src + kQ4Scales, s, m);
            const float d1 = d * (float)s, m1 = mn * (float)m;
            for (int l = 0; l < 32; ++l) dst[32 * j + l] = d1 * (float)L[32 * j + l] - m1;
        }
    }
}

// ---------------------------------------------------------------------------- the kernels
// Activation block b of a q8_2_x4 row (K a multiple of 256, so every block is in a group of 4).
struct Q82 {
    const uint8_t* a;
    int64_t nb4;
    float d(int64_t b) const { return bf16_to_fp32(rd_u16(a + act::q82_d_offset(b, nb4))); }
    int s(int64_t b) const { return (int16_t)rd_u16(a + act::q82_s_offset(b, nb4)); }
    const int8_t* q(int64_t b) const { return reinterpret_cast<const int8_t*>(a + act::q82_qs_offset(b, nb4)); }
};

// q6_K x q8_2_x4 (mul_mat_qY_K_q8_2_X4_T): eight lanes per output; in each 128-column half
// j lane L holds the 16-column sub-block 8j + {0,2,4,6,1,3,5,7}[L], scaled by
// (d * scale) * d_act of its 32-block; lanes summed with H8.
void gemm_q6_K(const GemmArgs& g) {
    static const int kPerm[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    const int64_t nb = g.K / kSuper;
    uint8_t L[kSuper];
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        for (int64_t n = 0; n < g.ncols; ++n) {
            const Q82 a{g.A + n * g.a_row_bytes, g.K / 32};
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nb; ++i) {
                const uint8_t* blk = w + i * kQ6Bytes;
                const float d = fp16_to_fp32(rd_u16(blk + kQ6D));
                const int8_t* sc = reinterpret_cast<const int8_t*>(blk + kQ6Scales);
                unpack_q6(blk, L);
                for (int j = 0; j < 2; ++j)
                    for (int l = 0; l < 8; ++l) {
                        const int sb = 8 * j + kPerm[l];
                        const int64_t b = 8 * i + sb / 2;
                        const int8_t* aq = a.q(b) + 16 * (sb % 2);
                        int32_t isum = 0;
                        for (int e = 0; e < 16; ++e) isum += (int32_t)(L[16 * sb + e] - 32) * (int32_t)aq[e];
                        const float c = (d * (float)sc[sb]) * a.d(b);
                        acc[l] = fmaf_exact(c, (float)isum, acc[l]);
                    }
            }
            g.C[n * g.ldc + r] = hsum8(acc);
        }
    }
}

// q4_K / q5_K x q8_2_x4 (mul_mat_qX_K_q8_2_X4_T): per super-block first the mins, lane L
// (32-block L): fma(d_act * s_act, -(dmin * m), acc); then per half j lane L holds 16 columns
// (half L / 4) of 32-block 4j + L % 4, scaled by (d * scale) * d_act; lanes summed with H8.
template <bool five>
void gemm_qK(const GemmArgs& g) {
    const int64_t nb = g.K / kSuper;
    const int bytes = five ? kQ5Bytes : kQ4Bytes;
    uint8_t L[kSuper];
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        for (int64_t n = 0; n < g.ncols; ++n) {
            const Q82 a{g.A + n * g.a_row_bytes, g.K / 32};
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nb; ++i) {
                const uint8_t* blk = w + i * bytes;
                const float d = fp16_to_fp32(rd_u16(blk)), dmin = fp16_to_fp32(rd_u16(blk + 2));
                if (five) unpack_q5(blk, L); else unpack_q4(blk, L);
                float scl[8];
                for (int l = 0; l < 8; ++l) {
                    uint8_t s, m;
                    scale_min_k4(l, blk + kQ4Scales, s, m);
                    const float mins = -1.0f * (dmin * (float)m);
                    const float my = a.d(8 * i + l) * (float)a.s(8 * i + l);
                    acc[l] = fmaf_exact(my, mins, acc[l]);
                    scl[l] = d * (float)s;
                }
                for (int j = 0; j < 2; ++j)
                    for (int l = 0; l < 8; ++l) {
                        const int b = 4 * j + l % 4, h = l / 4;
                        const int8_t* aq = a.q(8 * i + b) + 16 * h;
                        int32_t isum = 0;
                        for (int e = 0; e < 16; ++e) isum += (int32_t)L[32 * b + 16 * h + e] * (int32_t)aq[e];
                        const float c = scl[b] * a.d(8 * i + b);
                        acc[l] = fmaf_exact(c, (float)isum, acc[l]);
                    }
            }
            g.C[n * g.ldc + r] = hsum8(acc);
        }
    }
}

// ----------------------------------------------------------------------- large-batch forms
// q6_K -> q8_0_r8 (iqk_convert_q6_k_q8_0_r8): per row and 32-block, the int16 products
// (q - 32) * scale are re-quantized to int8 with max|.|/127; scale fp16(d * max/127).
void convert_q6_K_q8_0_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kSuper;
    const size_t rb = (size_t)nb * kQ6Bytes;
    uint8_t L[kSuper];
    for (int64_t g = 0; g < nrows / 8; ++g) {
        uint8_t* y = dst + (size_t)g * (K / 32) * q8_0::kR8Bytes;
        for (int64_t i = 0; i < nb; ++i, y += 8 * q8_0::kR8Bytes) {
            for (int k = 0; k < 8; ++k) {
                const uint8_t* blk = src + (size_t)(g * 8 + k) * rb + i * kQ6Bytes;
                const float d = fp16_to_fp32(rd_u16(blk + kQ6D));
                const int8_t* sc = reinterpret_cast<const int8_t*>(blk + kQ6Scales);
                unpack_q6(blk, L);
                for (int b = 0; b < 8; ++b) {
                    int q16[32], imax = 0;
                    for (int e = 0; e < 32; ++e) {
                        q16[e] = ((int)L[32 * b + e] - 32) * (int)sc[2 * b + e / 16];
                        const int av = q16[e] < 0 ? -q16[e] : q16[e];
                        imax = av > imax ? av : imax;
                    }
                    const float mx = (float)imax / 127.0f;
                    uint8_t* o = y + b * q8_0::kR8Bytes;
                    wr_u16(o + 2 * k, fp32_to_fp16(d * mx));
                    const float s = mx > 1e-9f ? 1.0f / mx : 0.0f;
                    for (int e = 0; e < 32; ++e)
                        o[16 + 32 * (e / 4) + 4 * k + (e % 4)] = mx > 1e-9f ? (uint8_t)sat_i8(cvt_rne_i32(s * (float)q16[e])) : 0;
                }
            }
        }
    }
}

// q4_K / q5_K -> q8_1_r8 (iqk_convert_q{4,5}_k_q8_1_r8): per row and 32-block the quants are
// copied, d = fp16(d * scale), m = fp16(-dmin * min).
template <bool five>
void convert_qK_q8_1_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kSuper;
    const int bytes = five ? kQ5Bytes : kQ4Bytes;
    const size_t rb = (size_t)nb * bytes;
    uint8_t L[kSuper];
    for (int64_t g = 0; g < nrows / 8; ++g) {
        uint8_t* y = dst + (size_t)g * 8 * nb * kQ81Bytes;
        for (int64_t i = 0; i < nb; ++i, y += 8 * kQ81Bytes) {
            for (int k = 0; k < 8; ++k) {
                const uint8_t* blk = src + (size_t)(g * 8 + k) * rb + i * bytes;
                const float d = fp16_to_fp32(rd_u16(blk));
                const float mneg = -1.0f * fp16_to_fp32(rd_u16(blk + 2));
                if (five) unpack_q5(blk, L); else unpack_q4(blk, L);
                for (int b = 0; b < 8; ++b) {
                    uint8_t s, m;
                    scale_min_k4(b, blk + kQ4Scales, s, m);
                    uint8_t* o = y + b * kQ81Bytes;
                    wr_u16(o + 2 * k, fp32_to_fp16(d * (float)s));
                    wr_u16(o + 16 + 2 * k, fp32_to_fp16(mneg * (float)m));
                    for (int e = 0; e < 32; ++e) o[kQ81Qs + 32 * (e / 4) + 4 * k + (e % 4)] = L[32 * b + e];
                }
            }
        }
    }
}

// q8_1_r8 on its own: quantized as q5_K, then converted; dequantized as d * q + m.
void quantize_q8_1_r8(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const size_t rb = (size_t)(K / kSuper) * kQ5Bytes;
    std::vector<uint8_t> tmp(8 * rb);
    for (int64_t g = 0; g < nrows / 8; ++g) {
        quantize_q5_K(src + g * 8 * K, tmp.data(), 8, K, imatrix);
        convert_qK_q8_1_r8<true>(tmp.data(), dst + (size_t)g * 8 * (K / kSuper) * kQ81Bytes, 8, K);
    }
}

void dequantize_q8_1_r8(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kQ81Block;
    for (int64_t g = 0; g < nrows / 8; ++g)
        for (int64_t b = 0; b < nb; ++b, src += kQ81Bytes)
            for (int r = 0; r < 8; ++r) {
                const float d = fp16_to_fp32(rd_u16(src + 2 * r)), m = fp16_to_fp32(rd_u16(src + 16 + 2 * r));
                float* y = dst + (g * 8 + r) * K + b * kQ81Block;
                for (int e = 0; e < 32; ++e) y[e] = d * (float)src[kQ81Qs + 32 * (e / 4) + 4 * r + (e % 4)] + m;
            }
}

static inline int32_t sat16(int32_t v) { return v < -32768 ? -32768 : (v > 32767 ? 32767 : v); }
static inline int32_t wrap16(int32_t v) { return (int32_t)(int16_t)(uint16_t)(uint32_t)v; }

// The maddubs/madd dot of 16 unsigned weight bytes (row r of a q8_1_r8 block half) with 16
// activations: int16 pair sums saturate, two of them are added with int16 wrap-around
// (exact for quants < 64; raw bytes keep the SIMD result).
static inline int32_t dot16_u8(const uint8_t* qs, int r, const int8_t* y) {
    int32_t p[4][2];
    for (int j = 0; j < 4; ++j)
        for (int h = 0; h < 2; ++h) {
            const int e = 4 * j + 2 * h;
            p[j][h] = sat16((int32_t)qs[32 * j + 4 * r + 2 * h] * y[e] + (int32_t)qs[32 * j + 4 * r + 2 * h + 1] * y[e + 1]);
        }
    int32_t s = 0;
    for (int h = 0; h < 2; ++h) s += wrap16(p[0][h] + p[1][h]) + wrap16(p[2][h] + p[3][h]);
    return s;
}

// q8_1_r8 x q8_2_x4 (mul_mat_q8_1_r8_q8_2, AVX2): per row one lane; per group of four
// 32-blocks first four fmas of m_r * (d_act * s_act), then per block two fmas of
// (d_r * d_act) times the dot of each 16-column half.
void gemm_q8_1_r8(const GemmArgs& g) {
    const int64_t nb = g.K / kQ81Block;
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        for (int64_t n = 0; n < g.ncols; ++n) {
            const Q82 a{g.A + n * g.a_row_bytes, nb};
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i4 = 0; i4 < nb / 4; ++i4) {
                for (int ib = 0; ib < 4; ++ib) {
                    const uint8_t* blk = w + (4 * i4 + ib) * kQ81Bytes;
                    const float bs = (float)a.s(4 * i4 + ib) * a.d(4 * i4 + ib);
                    for (int r = 0; r < 8; ++r) acc[r] = fmaf_exact(fp16_to_fp32(rd_u16(blk + 16 + 2 * r)), bs, acc[r]);
                }
                for (int ib = 0; ib < 4; ++ib) {
                    const uint8_t* blk = w + (4 * i4 + ib) * kQ81Bytes;
                    const float d8 = a.d(4 * i4 + ib);
                    const int8_t* aq = a.q(4 * i4 + ib);
                    for (int r = 0; r < 8; ++r) {
                        const float c = fp16_to_fp32(rd_u16(blk + 2 * r)) * d8;
                        acc[r] = fmaf_exact(c, (float)dot16_u8(blk + kQ81Qs, r, aq), acc[r]);
                        acc[r] = fmaf_exact(c, (float)dot16_u8(blk + kQ81Qs + 128, r, aq + 16), acc[r]);
                    }
                }
            }
            for (int r = 0; r < 8; ++r) g.C[n * g.ldc + grp * 8 + r] = acc[r];
        }
    }
}


// ------------------------------------------------------------------------ interleaved twins
// A row's super-block in plain numbers: fp16 d / dmin bits, 6-bit scales and mins (q4/q5),
// int8 scales (q6) and the quants in element order.
struct KBlock {
    uint16_t d, dmin;
    uint8_t ls[8], lm[8];
    int8_t sc6[16];
    uint8_t L[kSuper];
};

enum Kind { K4 = 0, K5 = 1, K6 = 2 };
constexpr int kind_bytes(Kind k) { return k == K4 ? kQ4Bytes : k == K5 ? kQ5Bytes : kQ6Bytes; }

void decode_base(Kind kind, const uint8_t* blk, KBlock& b) {
    if (kind == K6) {
        b.d = rd_u16(blk + kQ6D);
        b.dmin = 0;
        std::memcpy(b.sc6, blk + kQ6Scales, 16);
        unpack_q6(blk, b.L);
        return;
    }
    b.d = rd_u16(blk);
    b.dmin = rd_u16(blk + 2);
    for (int j = 0; j < 8; ++j) scale_min_k4(j, blk + kQ4Scales, b.ls[j], b.lm[j]);
    if (kind == K5) unpack_q5(blk, b.L); else unpack_q4(blk, b.L);
}

void encode_base(Kind kind, const KBlock& b, uint8_t* blk) {
    if (kind == K6) {
        uint8_t* ql = blk;
        uint8_t* qh = blk + kQ6Qh;
        const uint8_t* L = b.L;
        for (int h = 0; h < 2; ++h, ql += 64, qh += 32, L += 128)
            for (int l = 0; l < 32; ++l) {
                ql[l] = (uint8_t)((L[l] & 0xF) | ((L[l + 64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((L[l + 32] & 0xF) | ((L[l + 96] & 0xF) << 4));
                qh[l] = (uint8_t)((L[l] >> 4) | ((L[l + 32] >> 4) << 2) | ((L[l + 64] >> 4) << 4) | ((L[l + 96] >> 4) << 6));
            }
        std::memcpy(blk + kQ6Scales, b.sc6, 16);
        wr_u16(blk + kQ6D, b.d);
        return;
    }
    wr_u16(blk, b.d);
    wr_u16(blk + 2, b.dmin);
    uint8_t* sc = blk + kQ4Scales;
    std::memset(sc, 0, 12);
    pack_scales_k4<15>(sc, b.ls, b.lm);
    if (kind == K4) {
        uint8_t* q = blk + kQ4Qs;
        for (int j = 0; j < kSuper; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)((b.L[j + l] & 0xF) | (b.L[j + l + 32] << 4));
    } else {
        uint8_t* qh = blk + kQ5Qh;
        uint8_t* q = blk + kQ5Qs;
        std::memset(qh, 0, 32);
        for (int j = 0; j < 4; ++j, q += 32)
            for (int l = 0; l < 32; ++l) {
                const uint8_t l1 = b.L[64 * j + l], l2 = b.L[64 * j + 32 + l];
                q[l] = (uint8_t)((l1 & 0xF) | ((l2 & 0xF) << 4));
                qh[l] |= (uint8_t)(((l1 >> 4) << (2 * j)) | ((l2 >> 4) << (2 * j + 1)));
            }
    }
}

// Position of element e (0..31) of a 32-block within its 4-row interleaved group: the byte
// offset inside the 64-byte (ql / qs) chunk of the block relative to 4k + i, and the nibble.
// Elements i + {0, 8, 16, 24, 4, 12, 20, 28} (i < 4) sit at +0 lo, +0 hi, +16 lo, +16 hi,
// +32 lo, +32 hi, +48 lo, +48 hi (repack_q4_k / q5_k / q6_k).
static inline void r4_pos(int e, int& off, int& hi) {
    const int grp = e >> 2;  // 0..7: e = 4 * grp + i
    static const int kOff[8] = {0, 32, 0, 32, 16, 48, 16, 48};
    static const int kHi[8] = {0, 0, 1, 1, 0, 0, 1, 1};
    off = kOff[grp];
    hi = kHi[grp];
}

void encode_r4(Kind kind, const KBlock* b4, uint8_t* y) {
    if (kind == K6) {
        std::memset(y, 0, kQ6R4Bytes);
        for (int k = 0; k < 4; ++k) {
            wr_u16(y + 2 * k, b4[k].d);
            for (int ib = 0; ib < 8; ++ib) {
                y[kQ6R4Scales + 8 * ib + k] = (uint8_t)b4[k].sc6[2 * ib];
                y[kQ6R4Scales + 8 * ib + k + 4] = (uint8_t)b4[k].sc6[2 * ib + 1];
                for (int e = 0; e < 32; ++e) {
                    const int i = e & 3;
                    int off, hi;
                    r4_pos(e, off, hi);
                    const uint8_t q = b4[k].L[32 * ib + e];
                    y[kQ6R4Ql + 64 * ib + 4 * k + i + off] |= (uint8_t)((q & 0xF) << (4 * hi));
                    // qh: elements i + {0, 8, 4, 12} -> byte +0 bits 0/2/4/6, i + {16, 24, 20, 28} -> byte +16
                    const int g = e >> 2;
                    static const int kQhByte[8] = {0, 0, 0, 0, 16, 16, 16, 16};
                    static const int kQhShift[8] = {0, 4, 2, 6, 0, 4, 2, 6};
                    y[kQ6R4Qh + 32 * ib + 4 * k + i + kQhByte[g]] |= (uint8_t)((q >> 4) << kQhShift[g]);
                }
            }
        }
        return;
    }
    const int bytes = kind == K4 ? kQ4R4Bytes : kQ5R4Bytes;
    const int qs_off = kind == K4 ? kQ4R4Qs : kQ5R4Qs;
    std::memset(y, 0, bytes);
    for (int k = 0; k < 4; ++k) {
        wr_u16(y + 2 * k, b4[k].d);
        wr_u16(y + 8 + 2 * k, b4[k].dmin);
        for (int ib = 0; ib < 8; ++ib) {
            const int is = 4 * ib + k;
            y[kQ4R4ScL + is] = (uint8_t)((b4[k].ls[ib] & 0xF) | ((b4[k].lm[ib] & 0xF) << 4));
            const uint8_t h = (uint8_t)((b4[k].ls[ib] >> 4) | ((b4[k].lm[ib] >> 4) << 2));
            y[kQ4R4ScH + is % 16] |= (uint8_t)(h << (4 * (is / 16)));
            for (int e = 0; e < 32; ++e) {
                const int i = e & 3;
                int off, hi;
                r4_pos(e, off, hi);
                const uint8_t q = b4[k].L[32 * ib + e];
                y[qs_off + 64 * ib + 4 * k + i + off] |= (uint8_t)((q & 0xF) << (4 * hi));
                if (kind == K5) {
                    static const int kBit[8] = {0, 2, 1, 3, 4, 6, 5, 7};
                    y[kQ5R4Qh + 16 * ib + 4 * k + i] |= (uint8_t)((q >> 4) << kBit[e >> 2]);
                }
            }
        }
    }
}

void decode_r4(Kind kind, const uint8_t* y, KBlock* b4) {
    if (kind == K6) {
        for (int k = 0; k < 4; ++k) {
            b4[k].d = rd_u16(y + 2 * k);
            b4[k].dmin = 0;
            for (int ib = 0; ib < 8; ++ib) {
                b4[k].sc6[2 * ib] = (int8_t)y[kQ6R4Scales + 8 * ib + k];
                b4[k].sc6[2 * ib + 1] = (int8_t)y[kQ6R4Scales + 8 * ib + k + 4];
                for (int e = 0; e < 32; ++e) {
                    const int i = e & 3;
                    int off, hi;
                    r4_pos(e, off, hi);
                    static const int kQhByte[8] = {0, 0, 0, 0, 16, 16, 16, 16};
                    static const int kQhShift[8] = {0, 4, 2, 6, 0, 4, 2, 6};
                    const int g = e >> 2;
                    const int lo = (y[kQ6R4Ql + 64 * ib + 4 * k + i + off] >> (4 * hi)) & 0xF;
                    const int h2 = (y[kQ6R4Qh + 32 * ib + 4 * k + i + kQhByte[g]] >> kQhShift[g]) & 3;
                    b4[k].L[32 * ib + e] = (uint8_t)(lo | (h2 << 4));
                }
            }
        }
        return;
    }
    const int qs_off = kind == K4 ? kQ4R4Qs : kQ5R4Qs;
    for (int k = 0; k < 4; ++k) {
        b4[k].d = rd_u16(y + 2 * k);
        b4[k].dmin = rd_u16(y + 8 + 2 * k);
        for (int ib = 0; ib < 8; ++ib) {
            const int is = 4 * ib + k;
            const int hb = (y[kQ4R4ScH + is % 16] >> (4 * (is / 16))) & 0xF;
            b4[k].ls[ib] = (uint8_t)((y[kQ4R4ScL + is] & 0xF) | ((hb & 3) << 4));
            b4[k].lm[ib] = (uint8_t)((y[kQ4R4ScL + is] >> 4) | ((hb >> 2) << 4));
            for (int e = 0; e < 32; ++e) {
                const int i = e & 3;
                int off, hi;
                r4_pos(e, off, hi);
                int q = (y[qs_off + 64 * ib + 4 * k + i + off] >> (4 * hi)) & 0xF;
                if (kind == K5) {
                    static const int kBit[8] = {0, 2, 1, 3, 4, 6, 5, 7};
                    q |= ((y[kQ5R4Qh + 16 * ib + 4 * k + i] >> kBit[e >> 2]) & 1) << 4;
                }
                b4[k].L[32 * ib + e] = (uint8_t)q;
            }
        }
    }
}

template <Kind kind>
void repack_to_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kSuper;
    const size_t rb = (size_t)nb * kind_bytes(kind);
    KBlock b4[4];
    for (int64_t g = 0; g < nrows / 4; ++g)
        for (int64_t i = 0; i < nb; ++i) {
            for (int k = 0; k < 4; ++k) decode_base(kind, src + (size_t)(4 * g + k) * rb + i * kind_bytes(kind), b4[k]);
            encode_r4(kind, b4, dst + (size_t)g * 4 * rb + i * 4 * kind_bytes(kind));
        }
}

template <Kind kind>
void repack_from_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t nb = K / kSuper;
    const size_t rb = (size_t)nb * kind_bytes(kind);
    KBlock b4[4];
    for (int64_t g = 0; g < nrows / 4; ++g)
        for (int64_t i = 0; i < nb; ++i) {
            decode_r4(kind, src + (size_t)g * 4 * rb + i * 4 * kind_bytes(kind), b4);
            for (int k = 0; k < 4; ++k) encode_base(kind, b4[k], dst + (size_t)(4 * g + k) * rb + i * kind_bytes(kind));
        }
}

// quantize_q{4,5,6}_k_r4: per group of 4 rows, the imatrix goes through QHelper (blocks of 32,
// for q6 of 16), each row is quantized as the base type, the group is interleaved.
template <Kind kind>
void quantize_r4(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const size_t rb = (size_t)(K / kSuper) * kind_bytes(kind);
    std::vector<uint8_t> tmp(4 * rb);
    std::vector<float> qw(imatrix ? K : 0);
    for (int64_t g = 0; g < nrows / 4; ++g) {
        for (int k = 0; k < 4; ++k) {
            const float* x = src + (g * 4 + k) * K;
            const float* w = nullptr;
            if (imatrix) {
                qhelper_row_weights(imatrix, x, K, kind == K6 ? 16 : 32, qw.data());  // QHelper
                w = qw.data();
            }
            if (kind == K4) quantize_q4_K(x, tmp.data() + k * rb, 1, K, w);
            else if (kind == K5) quantize_q5_K(x, tmp.data() + k * rb, 1, K, w);
            else quantize_q6_K(x, tmp.data() + k * rb, 1, K, w);
        }
        repack_to_r4<kind>(tmp.data(), dst + (size_t)g * 4 * rb, 4, K);
    }
}

template <Kind kind>
void dequantize_r4(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const size_t rb = (size_t)(K / kSuper) * kind_bytes(kind);
    std::vector<uint8_t> tmp(4 * rb);
    for (int64_t g = 0; g < nrows / 4; ++g) {
        repack_from_r4<kind>(src + (size_t)g * 4 * rb, tmp.data(), 4, K);
        if (kind == K6) dequantize_q6_K(tmp.data(), dst + g * 4 * K, 4, K);
        else dequantize_qK<kind == K5>(tmp.data(), dst + g * 4 * K, 4, K);
    }
}

// The 16-column dot of lane l (row l % 4, half l / 4) of 32-block ib: unsigned quants times
// int8 activations (exact: the int16 steps of the SIMD kernels cannot overflow for quants < 64).
static inline int32_t dot16(const KBlock& b, int ib, int h, const int8_t* aq) {
    int32_t s = 0;
    for (int e = 0; e < 16; ++e) s += (int32_t)b.L[32 * ib + 16 * h + e] * (int32_t)aq[32 * ib + 16 * h + e];
    return s;
}

// q4_k_r4 / q5_k_r4 x q8_K32 (mul_mat_q{4,5}_k_r4_q8_k) and q6_k_r4 x q8_K
// (mul_mat_q6_k_r4_q8_k): lane l = row l % 4, half l / 4 of each 32-block; per super-block
// the min terms, then the scaled sums; each output is lane r + lane r + 4. The column
// GemmArgs::single_col takes the order of ik_llama.cpp's one-column instances (q4/q5: the
// weighted min sum first, times -dmin once; q6: d * d_act before the scales), every other
// column that of the multi-column ones (docs/formats.md, "k-quants: kernels").
template <Kind kind>
void gemm_r4(const GemmArgs& g) {
    const int64_t nb = g.K / kSuper;
    const int bytes = 4 * kind_bytes(kind);
    KBlock b4[4];
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        for (int64_t n = 0; n < g.ncols; ++n) {
            const uint8_t* a = g.A + n * g.a_row_bytes;
            const bool single = n == g.single_col;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t i = 0; i < nb; ++i) {
                decode_r4(kind, w + i * bytes, b4);
                const uint8_t* ab = a + i * act::kQ8KBytes;
                const float dA = rd_f32(ab + act::kQ8KD);
                const int8_t* aq = reinterpret_cast<const int8_t*>(ab + act::kQ8KQs);
                if (kind != K6) {
                    for (int l = 0; l < 8; ++l) {
                        const int k = l % 4, h = l / 4;
                        const float m4 = -1.0f * fp16_to_fp32(b4[k].dmin);
                        if (single) {
                            float s = 0.0f;
                            for (int j = 0; j < 4; ++j) {
                                const int b = j + 4 * h;
                                const float bs = rd_f32(ab + act::kQ8KBsums + 4 * b);
                                s = j == 0 ? (float)b4[k].lm[b] * bs : fmaf_exact((float)b4[k].lm[b], bs, s);
                            }
                            acc[l] = fmaf_exact(m4, s, acc[l]);
                            continue;
                        }
                        for (int j = 0; j < 4; ++j) {
                            const int b = j + 4 * h;
                            const float c = m4 * (float)b4[k].lm[b];
                            acc[l] = fmaf_exact(c, rd_f32(ab + act::kQ8KBsums + 4 * b), acc[l]);
                        }
                    }
                    for (int l = 0; l < 8; ++l) {
                        const int k = l % 4, h = l / 4;
                        int32_t isum = 0;
                        for (int ib = 0; ib < 8; ++ib) isum += (int32_t)b4[k].ls[ib] * dot16(b4[k], ib, h, aq);
                        acc[l] = fmaf_exact(fp16_to_fp32(b4[k].d) * dA, (float)isum, acc[l]);
                    }
                } else {
                    for (int l = 0; l < 8; ++l) {
                        const int k = l % 4, h = l / 4;
                        int32_t sumi = 0;
                        for (int j = 0; j < 4; ++j)
                            for (int sub = 0; sub < 2; ++sub) {
                                const int s16 = 2 * (j + 4 * h) + sub;
                                sumi += (int32_t)b4[k].sc6[s16] * (int32_t)(int16_t)rd_u16(ab + act::kQ8KBsums + 2 * s16);
                            }
                        const float d = fp16_to_fp32(b4[k].d);
                        const float mn = single ? (d * dA) * -32.0f : (d * -32.0f) * dA;
                        acc[l] = fmaf_exact(mn, (float)sumi, acc[l]);
                    }
                    for (int ib = 0; ib < 8; ++ib)
                        for (int l = 0; l < 8; ++l) {
                            const int k = l % 4, h = l / 4;
                            const float d = fp16_to_fp32(b4[k].d), sc = (float)b4[k].sc6[2 * ib + h];
                            const float c = single ? (d * dA) * sc : (d * sc) * dA;
                            acc[l] = fmaf_exact(c, (float)dot16(b4[k], ib, h, aq), acc[l]);
                        }
                }
            }
            for (int r = 0; r < 4; ++r) g.C[n * g.ldc + grp * 4 + r] = acc[r] + acc[r + 4];
        }
    }
}

}  // namespace

void register_scalar_kquants(KernelTables& t) {
    TypeKernels& q6 = t.types[T_Q6_K];
    q6.quantize = quantize_q6_K;
    q6.dequantize = dequantize_q6_K;
    q6.gemm = gemm_q6_K;
    q6.to_large_batch = convert_q6_K_q8_0_r8;
    TypeKernels& q4 = t.types[T_Q4_K];
    q4.quantize = quantize_q4_K;
    q4.dequantize = dequantize_qK<false>;
    q4.gemm = gemm_qK<false>;
    q4.to_large_batch = convert_qK_q8_1_r8<false>;
    TypeKernels& q5 = t.types[T_Q5_K];
    q5.quantize = quantize_q5_K;
    q5.dequantize = dequantize_qK<true>;
    q5.gemm = gemm_qK<true>;
    q5.to_large_batch = convert_qK_q8_1_r8<true>;
    TypeKernels& q81 = t.types[T_Q8_1_R8];
    q81.quantize = quantize_q8_1_r8;
    q81.dequantize = dequantize_q8_1_r8;
    q81.gemm = gemm_q8_1_r8;
    const int twins[3] = {T_Q4_K_R4, T_Q5_K_R4, T_Q6_K_R4};
    const QuantizeFn qf[3] = {quantize_r4<K4>, quantize_r4<K5>, quantize_r4<K6>};
    const DequantizeFn df[3] = {dequantize_r4<K4>, dequantize_r4<K5>, dequantize_r4<K6>};
    const GemmFn gf[3] = {gemm_r4<K4>, gemm_r4<K5>, gemm_r4<K6>};
    const RepackFn to[3] = {repack_to_r4<K4>, repack_to_r4<K5>, repack_to_r4<K6>};
    const RepackFn from[3] = {repack_from_r4<K4>, repack_from_r4<K5>, repack_from_r4<K6>};
    for (int i = 0; i < 3; ++i) {
        TypeKernels& k = t.types[twins[i]];
        k.quantize = qf[i];
        k.dequantize = df[i];
        k.gemm = gf[i];
        k.to_interleaved = to[i];
        k.from_interleaved = from[i];
    }
}

}  // namespace iqkq
