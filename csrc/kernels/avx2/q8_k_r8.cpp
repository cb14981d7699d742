// q8_k_r8: AVX2 kernels (not yet implemented).
#include "types.h"

namespace iqkq {

void register_avx2_q8_k_r8(KernelTables&) {}

}  // namespace iqkq
