// AVX-512 machine-limit loops (see machine_limits.h): a streaming read on ZMM registers and the
// VPDPBUSD / FMA chains the AVX-512 kernels are built from. Compiled with the AVX-512 flags;
// called only after the runtime CPU check (limits.cpp).
#include <immintrin.h>

#include "machine_limits.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace iqkq {
namespace limits {

// Lane sums in unsigned arithmetic (wrapping is the intent: these are checksums).
// _mm512_reduce_add_epi64/epi32 add as signed long long / int in GCC's headers, which is
// undefined on overflow (UBSan flags it).
static uint64_t lane_sum_u64(__m512i v) {
    alignas(64) uint64_t l[8];
    _mm512_store_si512(l, v);
    uint64_t s = 0;
    for (uint64_t x : l) s += x;
    return s;
}
static uint32_t lane_sum_u32(__m512i v) {
    alignas(64) uint32_t l[16];
    _mm512_store_si512(l, v);
    uint32_t s = 0;
    for (uint32_t x : l) s += x;
    return s;
}

uint64_t read_avx512(const uint8_t* p, size_t n) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0;
    for (size_t i = 0; i < n; i += 256) {
        const uint8_t* q = p + i;
        s0 = _mm512_add_epi64(s0, _mm512_add_epi64(_mm512_loadu_si512(q), _mm512_loadu_si512(q + 64)));
        s1 = _mm512_add_epi64(s1, _mm512_add_epi64(_mm512_loadu_si512(q + 128), _mm512_loadu_si512(q + 192)));
    }
    return lane_sum_u64(_mm512_add_epi64(s0, s1));
}

// Sixteen independent VPDPBUSD chains on ZMM (latency ~5, up to two per cycle: 10 hide it).
// One asm statement per instruction: with the intrinsic GCC copies every accumulator
// through a spare register each iteration (twice the instructions).
#define IQKQ_DP(c) __asm__("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(c) : [a] "v"(a), [b] "v"(b))

uint64_t int8_avx512(int64_t iters) {
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    __m512i c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0;
    for (int64_t i = 0; i < iters; ++i) {
        IQKQ_DP(c0); IQKQ_DP(c1); IQKQ_DP(c2); IQKQ_DP(c3); IQKQ_DP(c4); IQKQ_DP(c5); IQKQ_DP(c6); IQKQ_DP(c7);
        IQKQ_DP(c8); IQKQ_DP(c9); IQKQ_DP(c10); IQKQ_DP(c11); IQKQ_DP(c12); IQKQ_DP(c13); IQKQ_DP(c14); IQKQ_DP(c15);
    }
    const __m512i s0 = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                        _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    const __m512i s1 = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)),
                                        _mm512_add_epi32(_mm512_add_epi32(c12, c13), _mm512_add_epi32(c14, c15)));
    return lane_sum_u32(_mm512_add_epi32(s0, s1));
}
#undef IQKQ_DP

// Sixteen independent VFMADD231PS chains on ZMM.
uint64_t fma_avx512(int64_t iters) {
    __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
    __asm__ volatile("" : "+v"(a), "+v"(b));
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps((float)j);
    for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
    }
    __m512 s = acc[0];
    for (int j = 1; j < 16; ++j) s = _mm512_add_ps(s, acc[j]);
    return (uint64_t)_mm512_reduce_add_ps(s);
}

}  // namespace limits
}  // namespace iqkq
