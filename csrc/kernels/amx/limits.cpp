// AMX machine-limit loop (see machine_limits.h): independent TDPBSSD chains on tile
// registers, the instruction the amx kernel set's large-batch kernels are built from.
// Compiled with the AMX flags; called only after the runtime CPU and OS check (limits.cpp).
#include <immintrin.h>

#include <cstring>

#include "machine_limits.h"

namespace iqkq {
namespace limits {

uint64_t int8_amx(int64_t iters) {
    struct alignas(64) {
        uint8_t palette = 1, start_row = 0, reserved[14] = {};
        uint16_t colsb[16] = {};
        uint8_t rows[16] = {};
    } cfg;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    alignas(64) int8_t src[1024];
    for (int i = 0; i < 1024; ++i) src[i] = (int8_t)(i % 7 - 3);
    _tile_loadconfig(&cfg);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, src, 64);
    _tile_loadd(5, src, 64);
    _tile_loadd(6, src, 64);
    _tile_loadd(7, src, 64);
    // Four chains (C tiles 0-3), each 16 x 16 int32 += 16 x 64 bytes . 64 x 16 bytes.
    for (int64_t i = 0; i < iters; ++i) {
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(1, 4, 7);
        _tile_dpbssd(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
    }
    alignas(64) uint32_t out[4][256];
    _tile_stored(0, out[0], 64);
    _tile_stored(1, out[1], 64);
    _tile_stored(2, out[2], 64);
    _tile_stored(3, out[3], 64);
    _tile_release();
    uint32_t s = 0;
    for (auto& o : out)
        for (uint32_t v : o) s += v;
    return s;
}

}  // namespace limits
}  // namespace iqkq
