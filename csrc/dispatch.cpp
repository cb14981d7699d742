// Runtime CPU detection and the per-ISA kernel tables.
//
// Each table starts as the scalar set; SIMD files then override the entries they implement.
// The AVX2 table is built only if the CPU (and OS, for the YMM state) supports AVX2, FMA and
// F16C, so the package never executes an instruction the CPU lacks. The Python package
// applies IQKQ_ISA at import (through isa_from_name); tests switch sets at run time.
#include <atomic>
#include <cstring>

#include "types.h"

#if defined(IQKQ_HAVE_X86)
#include <cpuid.h>
#endif

namespace iqkq {
namespace {

bool detect_avx2() {
#if defined(IQKQ_HAVE_X86)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!(fma && osxsave && avx && f16c)) return false;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6u) != 6u) return false;  // OS saves XMM and YMM state
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 0, a, b, c, d);
    return b & (1u << 5);
#else
    return false;
#endif
}

// AVX-512 F, VL, BW, DQ, VNNI and VBMI, with the OS saving the AVX-512 state (EVEX-encoded
// instructions fault otherwise, even on YMM registers).
bool detect_avx512() {
#if defined(IQKQ_HAVE_X86)
    if (!detect_avx2()) return false;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xe6u) != 0xe6u) return false;
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
    const bool vbmi = c & (1u << 1), vnni = c & (1u << 11);
    return f && dq && bw && vl && vbmi && vnni;
#else
    return false;
#endif
}

struct Registry {
    KernelTables tables[ISA_COUNT];
    bool supported[ISA_COUNT] = {true, false, false};
    std::atomic<int> active{ISA_SCALAR};

    void register_all(IsaIndex isa) {
        KernelTables& t = tables[isa];
#define IQKQ_REGISTER(set, file) \
    if (isa == isa_from_name(#set)) register_##set##_##file(t);
#include "registry.inc"
#undef IQKQ_REGISTER
    }

    Registry() {
        // Each set starts as a copy of the one below it, so a kernel a set does not implement
        // falls back to the next simpler set (avx512 -> avx2 -> scalar).
        register_all(ISA_SCALAR);
        supported[ISA_AVX2] = detect_avx2();
        supported[ISA_AVX512] = detect_avx512();
        tables[ISA_AVX2] = tables[ISA_SCALAR];
        if (supported[ISA_AVX2]) register_all(ISA_AVX2);
        tables[ISA_AVX512] = tables[ISA_AVX2];
        if (supported[ISA_AVX512]) register_all(ISA_AVX512);
        active.store(supported[ISA_AVX512] ? ISA_AVX512 : supported[ISA_AVX2] ? ISA_AVX2 : ISA_SCALAR);
    }
};

Registry& registry() {
    static Registry r;
    return r;
}

}  // namespace

IsaIndex isa_from_name(const char* name) {
    if (!name) return ISA_COUNT;
    if (std::strcmp(name, "scalar") == 0) return ISA_SCALAR;
    if (std::strcmp(name, "avx2") == 0) return ISA_AVX2;
    if (std::strcmp(name, "avx512") == 0) return ISA_AVX512;
    return ISA_COUNT;
}
const KernelTables& kernels(IsaIndex isa) { return registry().tables[isa]; }
const KernelTables& active() { return registry().tables[registry().active.load(std::memory_order_acquire)]; }
IsaIndex active_isa() { return (IsaIndex)registry().active.load(std::memory_order_acquire); }
bool isa_supported(IsaIndex isa) { return isa >= 0 && isa < ISA_COUNT && registry().supported[isa]; }
void set_active_isa(IsaIndex isa) { registry().active.store(isa, std::memory_order_release); }
bool type_available(int type) {
    const TypeKernels& k = registry().tables[ISA_SCALAR].types[type];
    const int base = kTypes[type].base;
    // An interleaved type may leave quantization to "quantize the base type, then interleave".
    const bool quantizes = k.quantize || (base >= 0 && registry().tables[ISA_SCALAR].types[base].quantize && k.to_interleaved);
    return quantizes && k.dequantize && k.gemm;
}
const char* isa_name(IsaIndex isa) { return isa == ISA_AVX512 ? "avx512" : isa == ISA_AVX2 ? "avx2" : "scalar"; }

}  // namespace iqkq
