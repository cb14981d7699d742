// q8_k_r8: scalar reference implementation (not yet implemented).
#include "types.h"

namespace iqkq {

void register_scalar_q8_k_r8(KernelTables&) {}

}  // namespace iqkq
