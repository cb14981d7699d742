// iq4_ks: scalar reference implementation (not yet implemented).
#include "types.h"

namespace iqkq {

void register_scalar_iq4_ks(KernelTables&) {}

}  // namespace iqkq
