// Scalar quantizer helpers shared by several formats (ggml-quants.c's searches, evaluated
// without contraction as the oracle build does). Only for the scalar reference files.
#pragma once
#include <cstdint>

#include "common.h"

namespace iqkq {

// Groups whose largest |x| is below this quantize to zero (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ggml's make_qx_quants with rmse_type 1 (weights qw, or x^2 when qw is null): the symmetric
// scale search of q6_K, q6_0 and the legacy imatrix quantizers (docs/formats.md, "k-quants:
// quantization", "make_qx_quants"). L receives l + nmax, in [0, 2 nmax); returns the scale.
template <typename LT>
static inline float make_qx_quants(int n, int nmax, const float* x, LT* L, const float* qw) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf_(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < kGroupMaxEps) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.0f;
    }
    auto wt = [&](int i) { return qw ? qw[i] : x[i] * x[i]; };
    float iscale = (float)(-nmax) / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = clampi(l, -nmax, nmax - 1);
        L[i] = (LT)(l + nmax);
        const float w = wt(i);
        sumlx += (w * x[i]) * (float)l;
        suml2 += (w * (float)l) * (float)l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    float best_sumlx = sumlx, best_suml2 = suml2;
    for (int is = -9; is <= 9; ++is) {
        for (int pass = 0; pass < 2; ++pass) {
            iscale = pass == 0 ? -((float)nmax + 0.1f * (float)is) / max : ((float)(nmax - 1) + 0.1f * (float)is) / max;
            sumlx = suml2 = 0.0f;
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                l = clampi(l, -nmax, nmax - 1);
                const float w = wt(i);
                sumlx += (w * x[i]) * (float)l;
                suml2 += (w * (float)l) * (float)l;
            }
            if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
                for (int i = 0; i < n; ++i) L[i] = (LT)(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
                scale = sumlx / suml2;
                best = scale * sumlx;
                best_sumlx = sumlx;
                best_suml2 = suml2;
            }
        }
    }
    sumlx = best_sumlx;
    suml2 = best_suml2;
    for (int iter = 0; iter < n * (2 * nmax - 1); ++iter) {
        float abs_gmax = 0.0f, gmax = 0.0f;
        int best_j = -1;
        for (int j = 0; j < n; ++j) {
            const float w = wt(j);
            const int l = L[j] - nmax;
            const float g = (scale * w) * (x[j] - scale * (float)l);
            if ((g > 0.0f && l < nmax - 1) || (g < 0.0f && l > -nmax)) {
                const float ag = fabsf_(g);
                if (ag > abs_gmax) {
                    abs_gmax = ag;
                    gmax = g;
                    best_j = j;
                }
            }
        }
        if (best_j < 0) break;
        float new_sumlx = sumlx, new_suml2 = suml2;
        const float w = wt(best_j);
        int l = L[best_j] - nmax;
        if (gmax > 0.0f) {
            new_sumlx += w * x[best_j];
            new_suml2 += w * (float)(2 * l + 1);
            l += 1;
        } else {
            new_sumlx -= w * x[best_j];
            new_suml2 -= w * (float)(2 * l - 1);
            l -= 1;
        }
        if (new_suml2 > 0.0f && new_sumlx * new_sumlx > best * new_suml2) {
            sumlx = new_sumlx;
            suml2 = new_suml2;
            scale = sumlx / suml2;
            best = scale * sumlx;
            L[best_j] = (LT)(l + nmax);
        } else {
            break;
        }
    }
    return scale;
}

}  // namespace iqkq
