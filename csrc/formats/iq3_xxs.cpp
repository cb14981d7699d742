// iq3_xxs: scalar reference implementation (not yet implemented).
#include "types.h"

namespace iqkq {

void register_scalar_iq3_xxs(KernelTables&) {}

}  // namespace iqkq
