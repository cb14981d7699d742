// iq4_ks: AVX2 kernels (not yet implemented).
#include "types.h"

namespace iqkq {

void register_avx2_iq4_ks(KernelTables&) {}

}  // namespace iqkq
