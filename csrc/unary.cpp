// Scalar reference of the fused up+gate activation step (FORMATS.md §12.1): act(g) * u with
// ik_llama.cpp's 8-lane formulas emulated lane by lane and its libm formulas for the tail.
#include "unary.h"

#include "types.h"

namespace iqkq {
namespace {
using namespace unary;

void fused_act(const float* g, const float* u, float* y, int64_t n, int64_t simd_count, int op, float limit) {
    for (int64_t i = 0; i < n; ++i) {
        const bool simd = i < simd_count;
        float t;
        switch (op) {
            case OP_SILU: t = simd ? silu_simd(g[i]) : silu_libm(g[i]); break;
            case OP_GELU: t = simd ? gelu_simd(g[i]) : gelu_libm(g[i]); break;
            default: t = relu(g[i]); break;
        }
        y[i] = combine(t, u[i], limit);
    }
}

}  // namespace

void register_scalar_unary(KernelTables& t) { t.fused_act = fused_act; }

}  // namespace iqkq
