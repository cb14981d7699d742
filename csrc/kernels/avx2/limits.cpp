// AVX2 machine-limit loops (see machine_limits.h): a streaming read and the int8 / FMA chains the
// AVX2 kernels are built from. Compiled with the AVX2 flags; called only after the runtime
// CPU check (limits.cpp).
#include <immintrin.h>

#include "machine_limits.h"

namespace iqkq {
namespace limits {

uint64_t read_avx2(const uint8_t* p, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 256) {
        const __m256i* q = reinterpret_cast<const __m256i*>(p + i);
        s0 = _mm256_add_epi64(s0, _mm256_add_epi64(_mm256_loadu_si256(q + 0), _mm256_loadu_si256(q + 1)));
        s1 = _mm256_add_epi64(s1, _mm256_add_epi64(_mm256_loadu_si256(q + 2), _mm256_loadu_si256(q + 3)));
        s2 = _mm256_add_epi64(s2, _mm256_add_epi64(_mm256_loadu_si256(q + 4), _mm256_loadu_si256(q + 5)));
        s3 = _mm256_add_epi64(s3, _mm256_add_epi64(_mm256_loadu_si256(q + 6), _mm256_loadu_si256(q + 7)));
    }
    const __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    alignas(32) uint64_t v[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(v), s);
    return v[0] + v[1] + v[2] + v[3];
}

// The AVX2 int8 dot product of the kernels: VPMADDUBSW (u8 x s8 -> pairs summed to s16),
// VPMADDWD with ones (-> s32), VPADDD into an accumulator; four independent chains. Each
// step is one asm statement: written with intrinsics, the compiler would hoist the
// loop-invariant multiplies out of the loop (only the adds would remain).
#define IQKQ_INT8_STEP(ACC, TMP)                                                                        \
    __asm__("vpmaddubsw %[b], %[a], %[t]\n\tvpmaddwd %[ones], %[t], %[t]\n\tvpaddd %[t], %[c], %[c]" \
            : [c] "+x"(ACC), [t] "=&x"(TMP)                                                           \
            : [a] "x"(a), [b] "x"(b), [ones] "x"(ones))

uint64_t int8_avx2(int64_t iters) {
    const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, t0, t1, t2, t3;
    for (int64_t i = 0; i < iters; ++i) {
        IQKQ_INT8_STEP(c0, t0);
        IQKQ_INT8_STEP(c1, t1);
        IQKQ_INT8_STEP(c2, t2);
        IQKQ_INT8_STEP(c3, t3);
    }
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3));
    return (uint32_t)_mm256_extract_epi32(s, 0);
}
#undef IQKQ_INT8_STEP

// Twelve independent VFMADD231PS chains (latency 4, two per cycle on current cores: 8 would
// suffice). acc = acc * a + b converges to b / (1 - a) and never overflows.
uint64_t fma_avx2(int64_t iters) {
    __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
    __asm__ volatile("" : "+x"(a), "+x"(b));
    __m256 acc[12];
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps((float)j);
    for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
    }
    __m256 s = acc[0];
    for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
    return (uint64_t)_mm256_cvtss_f32(s);
}

}  // namespace limits
}  // namespace iqkq
