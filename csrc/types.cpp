// The traits table itself lives in types.h (constexpr, so layout constants elsewhere can be
// checked against it at compile time). This file keeps the out-of-line pieces.
#include "types.h"
