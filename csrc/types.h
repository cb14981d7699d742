// The type-traits table: every quantized type iqkq knows, with its ggml id, block geometry,
// per-row metadata, row interleave, activation format and the kernels that implement it.
//
// Adding a type means: one row in kTypes (types.cpp), one file in formats/ with the block
// layout and the scalar reference functions, and its SIMD kernels in kernels/<isa>/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace iqkq {

// Internal type index (position in the traits table). Not the ggml id.
enum TypeIndex : int {
    T_Q8_0 = 0,
    T_Q8_0_R8,
    T_Q8_K_R8,
    T_IQ4_KS,
    T_IQ4_KS_R4,
    T_IQ3_XXS,
    T_IQ3_XXS_R4,
    T_COUNT
};

// Activation ("vec_dot") formats the weights of a type are multiplied with.
enum ActIndex : int {
    A_NONE = -1,
    A_Q8_2_X4 = 0,  // 36 bytes / 32 values, grouped by 4 blocks (FORMATS.md §10)
    A_Q8_K,         // 296 bytes / 256 values (FORMATS.md §4)
    A_Q8_K32,       // same layout, float block sums (FORMATS.md §4)
    A_COUNT
};

// Kernel sets. ISA_AVX512 = the AVX2 set with some kernels replaced by AVX-512 versions
// (VNNI dot products, VBMI byte permutes, 512-bit registers) on CPUs that have F, VL, BW,
// DQ, VNNI and VBMI. Integer results are identical, so outputs are bit-identical.
enum IsaIndex : int { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_COUNT };

// Quantize `nrows` rows (a multiple of the interleave) of K floats (row stride K) into row
// groups at dst. `imatrix` is K importance weights or null. Rows are independent, so the
// driver splits a tensor into chunks of row groups and quantizes them on the thread pool.
using QuantizeFn = void (*)(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix);
// Dequantize `nrows` rows (multiple of the interleave) at src into nrows*K floats.
using DequantizeFn = void (*)(const uint8_t* src, float* dst, int64_t nrows, int64_t K);
// Rearrange `nrows` rows between a base type and its interleaved twin (byte-exact permutation).
using RepackFn = void (*)(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K);
// Quantize one activation row of K floats into the activation format.
using ActQuantFn = void (*)(const float* x, uint8_t* dst, int64_t K);

// One GEMM tile: rows [0, nrows) of W (nrows a multiple of the interleave; W points at the
// first row group, consecutive groups are `w_group_bytes` apart) times activation rows
// [0, ncols) (A points at the first, `a_row_bytes` apart). Output element (column n, row r)
// goes to C[n * ldc + r]. The arithmetic of every output element is independent of the
// tile, so any tiling or thread split yields bit-identical results.
struct GemmArgs {
    int64_t K;
    const uint8_t* W;
    size_t w_group_bytes;
    int64_t nrows;
    const uint8_t* A;
    size_t a_row_bytes;
    int64_t ncols;
    float* C;
    size_t ldc;
};
using GemmFn = void (*)(const GemmArgs& args);

// Kernels of one type for one ISA. Null entries fall back to the scalar set.
struct TypeKernels {
    QuantizeFn quantize = nullptr;
    DequantizeFn dequantize = nullptr;
    GemmFn gemm = nullptr;
    RepackFn to_interleaved = nullptr;    // base rows -> this type's interleaved twin
    RepackFn from_interleaved = nullptr;  // interleaved twin -> base rows
    // Large-batch conversion: `nrows` rows (multiple of 8) of this type -> row groups of
    // kTypes[large_batch], consumed by that type's gemm with the same activations.
    RepackFn to_large_batch = nullptr;
};

struct ActTraits {
    const char* name;
    int ggml_id;
    int block_size;
    int type_size;
};

struct TypeTraits {
    const char* name;
    int ggml_id;
    int block_size;       // elements per block
    int type_size;        // bytes per block per row
    int row_meta;         // bytes of per-row metadata before the blocks
    int interleave;       // rows stored together (1, 4 or 8)
    ActIndex act;         // activation format of the kernels
    bool needs_imatrix;
    int interleaved;  // index of this type's interleaved twin, or -1
    int base;         // index of the base type of an interleaved type, or -1
    // Large-batch path: type the weights are converted to, tile by tile, when the batch is
    // large (N >= 32, rows >= 32, rows % 8 == 0). -1 when the type is used directly.
    int large_batch;
};

extern const TypeTraits kTypes[T_COUNT];
extern const ActTraits kActs[A_COUNT];

inline size_t row_bytes(const TypeTraits& t, int64_t K) {
    return (size_t)t.row_meta + (size_t)t.type_size * (size_t)(K / t.block_size);
}
inline size_t act_row_bytes(ActIndex a, int64_t K) {
    return (size_t)kActs[a].type_size * (size_t)(K / kActs[a].block_size);
}

// Unary ops of the fused up+gate op (values = ggml's enum ggml_unary_op).
enum UnaryOp : int { OP_RELU = 6, OP_SILU = 10, OP_GELU = 15 };

// y[i] = clampU(u[i]) * min(act(g[i]), limit) for i < n (FORMATS.md §12.1). Elements with
// i < simd_count use ik_llama.cpp's 8-lane formulas (v_expf), the rest its scalar libm
// formulas; limit <= 1e-6 means no limit.
using FusedActFn = void (*)(const float* g, const float* u, float* y, int64_t n, int64_t simd_count, int op,
                            float limit);

// The kernel tables, one per ISA; filled once by dispatch.cpp.
struct KernelTables {
    TypeKernels types[T_COUNT];
    ActQuantFn act_quant[A_COUNT] = {};
    FusedActFn fused_act = nullptr;
};

// Tables of the given ISA with scalar fallbacks filled in; `active()` is the one in use.
const KernelTables& kernels(IsaIndex isa);
const KernelTables& active();
IsaIndex active_isa();
bool isa_supported(IsaIndex isa);
void set_active_isa(IsaIndex isa);  // caller checks isa_supported
const char* isa_name(IsaIndex isa);

// Registration hooks, one per format file / kernel file.
// A type is available when its scalar quantize, dequantize and gemm are registered.
bool type_available(int type);

void register_scalar_act(KernelTables& t);
void register_scalar_unary(KernelTables& t);
void register_scalar_q8_0(KernelTables& t);
void register_scalar_q8_k_r8(KernelTables& t);
void register_scalar_iq4_ks(KernelTables& t);
void register_scalar_iq3_xxs(KernelTables& t);
#if defined(IQKQ_HAVE_X86)
void register_avx2_act(KernelTables& t);
void register_avx2_unary(KernelTables& t);
void register_avx2_q8_0(KernelTables& t);
void register_avx2_q8_k_r8(KernelTables& t);
void register_avx2_iq4_ks(KernelTables& t);
void register_avx2_iq3_xxs(KernelTables& t);
void register_avx512_q8_r8(KernelTables& t);
void register_avx512_iq3_xxs(KernelTables& t);
void register_avx512_iq4_ks(KernelTables& t);
#endif

}  // namespace iqkq
