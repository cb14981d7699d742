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
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
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

// AMX-TILE and AMX-INT8 on top of the AVX-512 set, the OS saving the tile state (XCR0 bits
// 17-18), and Linux's per-process permission to use it (arch_prctl ARCH_REQ_XCOMP_PERM for
// XTILEDATA; without the grant the first tile instruction would fault, so no grant = no set).
bool detect_amx() {
#if defined(IQKQ_HAVE_X86) && defined(IQKQ_HAVE_AMX) && defined(__linux__)
    if (!detect_avx512()) return false;
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    const bool tile = d & (1u << 24), int8 = d & (1u << 25);
    if (!(tile && int8)) return false;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x60000u) != 0x60000u) return false;
    constexpr long kReqXcompPerm = 0x1023, kGetXcompPerm = 0x1022, kXtiledata = 18;
    if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) != 0) return false;
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, kGetXcompPerm, &perm) != 0) return false;
    return perm & (1ul << kXtiledata);
#else
    return false;
#endif
}

struct Registry {
    KernelTables tables[ISA_COUNT];
    bool supported[ISA_COUNT] = {true, false, false, false};
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
        // falls back to the next simpler set (amx -> avx512 -> avx2 -> scalar).
        register_all(ISA_SCALAR);
        supported[ISA_AVX2] = detect_avx2();
        supported[ISA_AVX512] = detect_avx512();
        tables[ISA_AVX2] = tables[ISA_SCALAR];
        if (supported[ISA_AVX2]) register_all(ISA_AVX2);
        tables[ISA_AVX512] = tables[ISA_AVX2];
        if (supported[ISA_AVX512]) register_all(ISA_AVX512);
        supported[ISA_AMX] = detect_amx();
        tables[ISA_AMX] = tables[ISA_AVX512];
        if (supported[ISA_AMX]) register_all(ISA_AMX);
        int best = ISA_SCALAR;
        for (int i = 0; i < ISA_COUNT; ++i)
            if (supported[i]) best = i;
        active.store(best);
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
    if (std::strcmp(name, "amx") == 0) return ISA_AMX;
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
const char* isa_name(IsaIndex isa) {
    static const char* const names[ISA_COUNT] = {"scalar", "avx2", "avx512", "amx"};
    return isa >= 0 && isa < ISA_COUNT ? names[isa] : "scalar";
}

}  // namespace iqkq
