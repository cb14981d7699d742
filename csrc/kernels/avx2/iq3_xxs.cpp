// iq3_xxs: AVX2 kernels (not yet implemented).
#include "types.h"

namespace iqkq {

void register_avx2_iq3_xxs(KernelTables&) {}

}  // namespace iqkq
