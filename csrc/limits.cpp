// Portable part of the machine-limit microkernels (see machine_limits.h): the scalar read loop and
// the drivers that choose a per-ISA loop after the runtime CPU check, run it on the thread
// pool and time it.
#include "machine_limits.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

#include "threads.h"

namespace iqkq {
namespace limits {

uint64_t read_scalar(const uint8_t* p, size_t n) {
    // Four independent sums so the loop is bound by loads, not by one add chain.
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t v[4];
        std::memcpy(v, p + i, 32);
        s0 += v[0];
        s1 += v[1];
        s2 += v[2];
        s3 += v[3];
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        std::memcpy(&v, p + i, 8);
        s0 += v;
    }
    return s0 + s1 + s2 + s3;
}

namespace {

void require(IsaIndex isa) {
    if (!isa_supported(isa)) throw std::invalid_argument(std::string("this CPU does not support ISA '") + isa_name(isa) + "'");
}

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint64_t read_isa(IsaIndex isa, const uint8_t* p, size_t n) {
    size_t done = 0;
    uint64_t s = 0;
#if defined(IQKQ_HAVE_X86)
    if (isa == ISA_AMX || isa == ISA_AVX512 || isa == ISA_AVX2) {
        done = n / 256 * 256;
        s = isa == ISA_AVX2 ? read_avx2(p, done) : read_avx512(p, done);
    }
#else
    (void)isa;
#endif
    return s + read_scalar(p + done, (n - done) / 8 * 8);
}

}  // namespace

Timing time_read(IsaIndex isa, const uint8_t* p, size_t n, int nthreads) {
    require(isa);
    nthreads = std::max(1, nthreads);
    // Several chunks per thread, 4 KiB aligned, so a late-waking worker costs little.
    const int64_t nchunks = nthreads == 1 ? 1 : (int64_t)nthreads * 16;
    const size_t chunk = std::max<size_t>(4096, (n / (size_t)nchunks + 4095) / 4096 * 4096);
    const int64_t ntasks = (int64_t)((n + chunk - 1) / chunk);
    std::atomic<uint64_t> sum{0};
    const double t0 = now();
    parallel_for(nthreads, ntasks, [&](int64_t task, int) {
        const size_t off = (size_t)task * chunk;
        const size_t len = std::min(chunk, n - off);
        sum.fetch_add(read_isa(isa, p + off, len), std::memory_order_relaxed);
    });
    const double t1 = now();
    return {t1 - t0, (double)(n / 8 * 8), sum.load()};
}

namespace {

Timing time_chains(IsaIndex isa, int64_t iters, int nthreads, bool int8) {
    require(isa);
    if (iters < 1) throw std::invalid_argument("iters must be >= 1");
    nthreads = std::max(1, nthreads);
#if defined(IQKQ_HAVE_X86)
    uint64_t (*fn)(int64_t) = nullptr;
    int64_t ops = 0;
    if (isa == ISA_AVX512 || (isa == ISA_AMX && !int8)) {
        fn = int8 ? int8_avx512 : fma_avx512;
        ops = int8 ? kInt8Avx512OpsPerIter : kFmaAvx512OpsPerIter;
    } else if (isa == ISA_AMX) {
#if defined(IQKQ_HAVE_AMX)
        fn = int8_amx;
        ops = kInt8AmxOpsPerIter;
#endif
    } else if (isa == ISA_AVX2) {
        fn = int8 ? int8_avx2 : fma_avx2;
        ops = int8 ? kInt8Avx2OpsPerIter : kFmaAvx2OpsPerIter;
    }
    if (fn) {
        // Eight tasks per thread: a worker that starts late (or shares its core with other
        // work for a moment) leaves its share to the others instead of doubling the time.
        const int64_t ntasks = (int64_t)nthreads * 8, per_task = std::max<int64_t>(1, iters / 8);
        std::atomic<uint64_t> sum{0};
        const double t0 = now();
        parallel_for(nthreads, ntasks, [&](int64_t, int) { sum.fetch_add(fn(per_task), std::memory_order_relaxed); });
        const double t1 = now();
        return {t1 - t0, (double)ops * (double)per_task * (double)ntasks, sum.load()};
    }
#else
    (void)iters;
    (void)int8;
#endif
    throw std::invalid_argument(std::string("no ") + (int8 ? "int8" : "FMA") + " peak kernel for the '" + isa_name(isa) +
                                "' kernel set");
}

}  // namespace

Timing time_int8(IsaIndex isa, int64_t iters, int nthreads) { return time_chains(isa, iters, nthreads, true); }
Timing time_fma(IsaIndex isa, int64_t iters, int nthreads) { return time_chains(isa, iters, nthreads, false); }

}  // namespace limits
}  // namespace iqkq
