// Scalar reference of the fused up+gate activation step (docs/formats.md §12.1): act(g) * u with
// ik_llama.cpp's 8-lane formulas emulated lane by lane and its libm formulas for the tail.
#include "unary.h"

#include "types.h"

namespace iqkq {
namespace {
using namespace unary;

void fused_act(const float* g, const float* u, float* y, int64_t n, int64_t simd_count, int op, float limit) {
    fused_act_range(g, u, y, 0, n, simd_count, op, limit);
}

}  // namespace

void register_scalar_unary(KernelTables& t) { t.fused_act = fused_act; }

}  // namespace iqkq
