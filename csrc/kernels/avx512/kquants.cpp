// AVX-512 set for q4_K, q5_K, q6_K: the direct kernels of kernels/avx2/kquants_direct.h with
// VPDPBUSD (AVX512-VNNI on 256-bit registers) for the byte dot products and up to 8 columns
// per pass (32 vector registers). Same int32 sums and float operations as the AVX2 set and
// the scalar reference, so bit-identical to them.
#include "kernels/avx2/kquants_direct.h"

namespace iqkq {
namespace {
using kq_direct::gemm_q6_K_cols;
using kq_direct::gemm_qK_cols;

void gemm_q4_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr,
                                 gemm_qK_cols<true, false, 1>,
                                 gemm_qK_cols<true, false, 2>,
                                 gemm_qK_cols<true, false, 3>,
                                 gemm_qK_cols<true, false, 4>,
                                 gemm_qK_cols<true, false, 5>,
                                 gemm_qK_cols<true, false, 6>,
                                 gemm_qK_cols<true, false, 7>,
                                 gemm_qK_cols<true, false, 8>};
    for_column_chunks(g, fns, 8);
}
void gemm_q5_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr,
                                 gemm_qK_cols<true, true, 1>,
                                 gemm_qK_cols<true, true, 2>,
                                 gemm_qK_cols<true, true, 3>,
                                 gemm_qK_cols<true, true, 4>,
                                 gemm_qK_cols<true, true, 5>,
                                 gemm_qK_cols<true, true, 6>,
                                 gemm_qK_cols<true, true, 7>,
                                 gemm_qK_cols<true, true, 8>};
    for_column_chunks(g, fns, 8);
}
void gemm_q6_K(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr,
                                 gemm_q6_K_cols<true, 1>,
                                 gemm_q6_K_cols<true, 2>,
                                 gemm_q6_K_cols<true, 3>,
                                 gemm_q6_K_cols<true, 4>,
                                 gemm_q6_K_cols<true, 5>,
                                 gemm_q6_K_cols<true, 6>,
                                 gemm_q6_K_cols<true, 7>,
                                 gemm_q6_K_cols<true, 8>};
    for_column_chunks(g, fns, 8);
}

}  // namespace

void register_avx512_kquants(KernelTables& t) {
    t.types[T_Q4_K].gemm = gemm_q4_K;
    t.types[T_Q5_K].gemm = gemm_q5_K;
    t.types[T_Q6_K].gemm = gemm_q6_K;
}

}  // namespace iqkq
