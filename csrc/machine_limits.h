// Machine-limit microkernels: streaming read bandwidth, int8 dot-product peak and f32 FMA
// peak of each kernel set, so that measured kernel speeds can be read as fractions of what
// the machine can do (bench/limits.py, iqkq.limits, `python -m iqkq map`).
//
// The per-ISA loops live in kernels/<isa>/limits.cpp (compiled with that set's flags); the
// portable drivers in limits.cpp check isa_supported() before calling one, split the work
// over the thread pool and time it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "types.h"

namespace iqkq {
namespace limits {

// Operations counted per loop iteration (one multiply-add = 2 operations, as in GFLOPS).
// AVX2: 4 independent (VPMADDUBSW, VPMADDWD, VPADDD) chains on YMM = 4 x 32 byte pairs.
constexpr int64_t kInt8Avx2OpsPerIter = 4 * 32 * 2;
// AVX-512: 16 independent VPDPBUSD chains on ZMM = 16 x 64 byte pairs.
constexpr int64_t kInt8Avx512OpsPerIter = 16 * 64 * 2;
// AVX2: 12 independent VFMADD chains on YMM (8 floats); AVX-512: 16 chains on ZMM (16 floats).
constexpr int64_t kFmaAvx2OpsPerIter = 12 * 8 * 2;
constexpr int64_t kFmaAvx512OpsPerIter = 16 * 16 * 2;
// AMX: 4 independent TDPBSSD chains, each 16 x 16 outputs x 64 byte pairs.
constexpr int64_t kInt8AmxOpsPerIter = 4 * 16 * 16 * 64 * 2;

// Sum of the 64-bit words of p[0, n) (n a multiple of 8), read front to back. The sum is
// returned so that the loads cannot be optimised away.
uint64_t read_scalar(const uint8_t* p, size_t n);
#if defined(IQKQ_HAVE_X86)
uint64_t read_avx2(const uint8_t* p, size_t n);    // n a multiple of 256
uint64_t read_avx512(const uint8_t* p, size_t n);  // n a multiple of 256
// `iters` loop iterations of the int8 / FMA chains; the return value depends on every result.
uint64_t int8_avx2(int64_t iters);
uint64_t int8_avx512(int64_t iters);
uint64_t fma_avx2(int64_t iters);
uint64_t fma_avx512(int64_t iters);
#endif
#if defined(IQKQ_HAVE_AMX)
uint64_t int8_amx(int64_t iters);
#endif

struct Timing {
    double seconds;    // wall time of the parallel region
    double work;       // bytes read, or operations done
    uint64_t checksum; // combined results (keeps the work observable)
};

// The amx set reads and multiplies floats with the AVX-512 loops; only its int8 peak differs.
// Read n bytes at p with the widest read loop of `isa` on `nthreads` threads (contiguous
// chunks handed out by the thread pool). Throws std::invalid_argument if the CPU lacks `isa`.
Timing time_read(IsaIndex isa, const uint8_t* p, size_t n, int nthreads);
// About `iters` iterations of the int8 (or FMA) chains of `isa` per thread, on `nthreads`
// threads (handed out in eighths).
// Throws std::invalid_argument for the scalar set (no such kernel) or an unsupported ISA.
Timing time_int8(IsaIndex isa, int64_t iters, int nthreads);
Timing time_fma(IsaIndex isa, int64_t iters, int nthreads);

}  // namespace limits
}  // namespace iqkq
