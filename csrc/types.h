// The type-traits table: every quantized type iqkq knows, with its ggml id, block geometry,
// per-row metadata, row interleave, activation format and the kernels that implement it.
//
// Adding a type means: one row in kTypes (types.cpp), one file in formats/ with the block
// layout and the scalar reference functions, and its SIMD kernels in kernels/<isa>/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace iqkq {

// Internal type index (position in the traits table, kTypes below). Not the ggml id.
enum TypeIndex : int {
    T_Q8_0 = 0,
    T_Q8_0_R8,
    T_Q8_K_R8,
    T_IQ4_KS,
    T_IQ4_KS_R4,
    T_IQ3_XXS,
    T_IQ3_XXS_R4,
    T_Q4_0,
    T_Q4_0_R8,
    T_Q5_0,
    T_Q5_0_R4,
    T_Q6_0,
    T_Q6_0_R4,
    T_IQ4_NL,
    T_IQ4_NL_R4,
    T_IQ4_XS,
    T_IQ4_XS_R8,
    T_Q4_K,
    T_Q5_K,
    T_Q6_K,
    T_Q4_K_R4,
    T_Q5_K_R4,
    T_Q6_K_R4,
    T_Q8_1_R8,  // no ik_llama.cpp type: its large-batch form of q4_K / q5_K (docs/formats.md, "k-quants")
    T_COUNT
};

// Activation ("vec_dot") formats the weights of a type are multiplied with. Their byte
// layouts are in formats/act.h (docs/formats.md, "Activation formats").
enum ActIndex : int {
    A_NONE = -1,
    A_Q8_2_X4 = 0,  // 36 bytes / 32 values, grouped by 4 blocks
    A_Q8_K,         // 296 bytes / 256 values, int16 sums of 16
    A_Q8_K32,       // same layout, float sums of 32
    A_COUNT
};

// Kernel sets. ISA_AVX512 = the AVX2 set with some kernels replaced by AVX-512 versions
// (VNNI dot products, VBMI byte permutes, 512-bit registers) on CPUs that have F, VL, BW,
// DQ, VNNI and VBMI. ISA_AMX = the AVX-512 set with the large-batch int8 kernels (q8_k_r8,
// q8_0_r8) on AMX-INT8 tiles, on CPUs with AMX-TILE + AMX-INT8 whose OS grants the tile state.
// Integer results are identical, so outputs are bit-identical.
enum IsaIndex : int { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_AMX = 3, ISA_COUNT };

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

// Optional per-kernel rearrangement of one quantized activation row (K values) into a
// kernel-private layout, done once per matmul by the driver (see TypeKernels::prepare_act).
using PrepareActFn = void (*)(const uint8_t* act, uint8_t* out, int64_t K);
using PreparedBytesFn = size_t (*)(int64_t K);

// One GEMM tile: rows [0, nrows) of W (nrows a multiple of the interleave; W points at the
// first row group, consecutive groups are `w_group_bytes` apart) times activation rows
// [0, ncols) (A points at the first, `a_row_bytes` apart). Output element (column n, row r)
// goes to C[n * ldc + r]. The arithmetic of every output element is independent of the
// tile, so any tiling or thread split yields bit-identical results. When the kernel has a
// prepare_act hook, P points at the prepared form of activation row 0 of the tile (rows
// `p_row_bytes` apart, each 64-byte aligned); otherwise P is null.
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
    const uint8_t* P = nullptr;
    size_t p_row_bytes = 0;
    // The activation column (index relative to A) that ik_llama.cpp's driver hands to its
    // one-column kernel on its own, or -1 (set by the driver for every call; only kernels whose
    // ik_llama.cpp one-column variant has another float order look at it, docs/formats.md,
    // "Legacy 32-blocks: the one-column rule").
    int64_t single_col = -1;
};
using GemmFn = void (*)(const GemmArgs& args);

// Kernels of one type for one ISA. Null entries fall back to the next simpler set.
struct TypeKernels {
    QuantizeFn quantize = nullptr;
    DequantizeFn dequantize = nullptr;
    GemmFn gemm = nullptr;
    RepackFn to_interleaved = nullptr;    // base rows -> this type's interleaved twin
    RepackFn from_interleaved = nullptr;  // interleaved twin -> base rows
    // Large-batch conversion: `nrows` rows (a multiple of the target's interleave) of this
    // type -> row groups of kTypes[large_batch], consumed by that type's gemm with the same
    // activations.
    RepackFn to_large_batch = nullptr;
    // Activation preparation (optional, both or neither): the driver runs prepare_act on every
    // activation row once per matmul / fused op and hands the result to gemm as GemmArgs::P.
    PrepareActFn prepare_act = nullptr;
    PreparedBytesFn prepared_bytes = nullptr;
    // Tiling hints for the driver (0 / null = its defaults): bytes of weights per row tile for
    // batches of more than 4 columns, and the most activation columns per gemm call for rows
    // of K values.
    int tile_bytes = 0;
    int64_t (*max_cols)(int64_t K) = nullptr;
};

struct ActTraits {
    ActIndex index;   // == position in kActs (checked below)
    const char* name;
    int ggml_id;
    int block_size;
    int type_size;
};

struct TypeTraits {
    TypeIndex index;      // == position in kTypes (checked below)
    const char* name;
    int ggml_id;
    int block_size;       // elements per block
    int type_size;        // bytes per block per row
    int row_meta;         // bytes of per-row metadata before the blocks
    int interleave;       // rows stored together (1, 4 or 8)
    ActIndex act;         // activation format of the kernels
    bool needs_imatrix;
    int interleaved;      // index of this type's interleaved twin, or -1
    int base;             // index of the base type of an interleaved type, or -1
    // Large-batch path: type the weights are converted to, tile by tile, when the batch is
    // large (N >= large_batch_min_n, rows >= 32, rows % interleave of that type == 0), or -1
    // when the type is always used directly (ik_llama.cpp's MulMat::is_dequant_better).
    int large_batch;
    int large_batch_min_n;
};

// The traits table. Values are those of ik_llama.cpp @ 8337e4cd (docs/formats.md, "Types");
// ggml ids are append-only and identical to ggml / ik_llama.cpp so that GGUF tensors map one
// to one. Adding a type: one enum entry above and one row here.
inline constexpr ActTraits kActs[A_COUNT] = {
    // index       name       id   block bytes
    {A_Q8_2_X4, "q8_2_x4",  99,  32,  36},
    {A_Q8_K,    "q8_K",     15, 256, 296},
    {A_Q8_K32,  "q8_K32",  148, 256, 296},
};

inline constexpr TypeTraits kTypes[T_COUNT] = {
    // index        name          id  block bytes meta ilv  act       imat   r-twin        base       large batch  min N
    {T_Q8_0,       "q8_0",        8,  32,  34,   0,  1, A_Q8_2_X4, false, T_Q8_0_R8,    -1,        T_Q8_0_R8,  32},
    {T_Q8_0_R8,    "q8_0_r8",   208,  32,  34,   0,  8, A_Q8_2_X4, false, -1,           T_Q8_0,    -1,          0},
    {T_Q8_K_R8,    "q8_k_r8",   399, 256, 258,   0,  8, A_Q8_K,    false, -1,           -1,        -1,          0},
    {T_IQ4_KS,     "iq4_ks",    144, 256, 136,   4,  1, A_Q8_K,    false, T_IQ4_KS_R4,  -1,        T_Q8_K_R8,  32},
    {T_IQ4_KS_R4,  "iq4_ks_r4", 344, 256, 136,   4,  4, A_Q8_K32,  false, -1,           T_IQ4_KS,  -1,          0},
    {T_IQ3_XXS,    "iq3_xxs",    18, 256,  98,   0,  1, A_Q8_K,    false, T_IQ3_XXS_R4, -1,        T_Q8_K_R8,  32},
    {T_IQ3_XXS_R4, "iq3_xxs_r4", 218, 256, 98,   0,  4, A_Q8_K,    false, -1,           T_IQ3_XXS, -1,          0},
    {T_Q4_0,       "q4_0",        2,  32,  18,   0,  1, A_Q8_2_X4, false, T_Q4_0_R8,    -1,        T_Q8_0_R8,  32},
    {T_Q4_0_R8,    "q4_0_r8",   202,  32,  18,   0,  8, A_Q8_2_X4, false, -1,           T_Q4_0,    -1,          0},
    {T_Q5_0,       "q5_0",        6,  32,  22,   0,  1, A_Q8_2_X4, false, T_Q5_0_R4,    -1,        T_Q8_0_R8,  32},
    {T_Q5_0_R4,    "q5_0_r4",   206,  32,  22,   0,  4, A_Q8_2_X4, false, -1,           T_Q5_0,    -1,          0},
    {T_Q6_0,       "q6_0",      133,  32,  26,   0,  1, A_Q8_2_X4, false, T_Q6_0_R4,    -1,        T_Q8_0_R8,  32},
    {T_Q6_0_R4,    "q6_0_r4",   233,  32,  26,   0,  4, A_Q8_2_X4, false, -1,           T_Q6_0,    -1,          0},
    {T_IQ4_NL,     "iq4_nl",     20,  32,  18,   0,  1, A_Q8_2_X4, false, T_IQ4_NL_R4,  -1,        T_Q8_0_R8,  32},
    {T_IQ4_NL_R4,  "iq4_nl_r4", 220,  32,  18,   0,  4, A_Q8_2_X4, false, -1,           T_IQ4_NL,  -1,          0},
    {T_IQ4_XS,     "iq4_xs",     23, 256, 136,   0,  1, A_Q8_K,    false, T_IQ4_XS_R8,  -1,        T_Q8_K_R8,  32},
    {T_IQ4_XS_R8,  "iq4_xs_r8", 223, 256, 136,   0,  8, A_Q8_K32,  false, -1,           T_IQ4_XS,  -1,          0},
    {T_Q4_K,       "q4_K",       12, 256, 144,   0,  1, A_Q8_2_X4, false, T_Q4_K_R4,    -1,        T_Q8_1_R8,  32},
    {T_Q5_K,       "q5_K",       13, 256, 176,   0,  1, A_Q8_2_X4, false, T_Q5_K_R4,    -1,        T_Q8_1_R8,  32},
    {T_Q6_K,       "q6_K",       14, 256, 210,   0,  1, A_Q8_2_X4, false, T_Q6_K_R4,    -1,        T_Q8_0_R8,  64},
    {T_Q4_K_R4,    "q4_k_r4",   212, 256, 144,   0,  4, A_Q8_K32,  false, -1,           T_Q4_K,    -1,          0},
    {T_Q5_K_R4,    "q5_k_r4",   213, 256, 176,   0,  4, A_Q8_K32,  false, -1,           T_Q5_K,    -1,          0},
    {T_Q6_K_R4,    "q6_k_r4",   214, 256, 210,   0,  4, A_Q8_K,    false, -1,           T_Q6_K,    -1,          0},
    // q8_1_r8: ik_llama.cpp reuses the id of q8_1 (9) for it internally; iqkq gives it a private id.
    {T_Q8_1_R8,    "q8_1_r8",  1009, 256, 288,   0,  8, A_Q8_2_X4, false, -1,           -1,        -1,          0},
};

// Compile-time consistency of the tables: rows in enum order, twins pointing at each other
// with the same geometry, large-batch targets that read the same activations.
constexpr bool tables_consistent() {
    for (int i = 0; i < A_COUNT; ++i)
        if (kActs[i].index != i) return false;
    for (int i = 0; i < T_COUNT; ++i) {
        const TypeTraits& t = kTypes[i];
        if (t.index != i || t.block_size <= 0 || t.type_size <= 0 || t.act < 0 || t.act >= A_COUNT) return false;
        if (t.block_size % kActs[t.act].block_size != 0) return false;
        if (!(t.interleave == 1 || t.interleave == 4 || t.interleave == 8)) return false;
        if (t.interleaved >= 0) {
            const TypeTraits& r = kTypes[t.interleaved];
            if (r.base != i || r.block_size != t.block_size || r.type_size != t.type_size || r.row_meta != t.row_meta)
                return false;
        }
        if (t.base >= 0 && kTypes[t.base].interleaved != i) return false;
        if (t.large_batch >= 0) {
            const TypeTraits& lb = kTypes[t.large_batch];
            if (lb.large_batch >= 0 || lb.act != t.act || t.large_batch_min_n < 1) return false;
            if (t.block_size % lb.block_size != 0 && lb.block_size % t.block_size != 0) return false;
        }
    }
    return true;
}
static_assert(tables_consistent(), "types.h: kTypes / kActs are inconsistent");

constexpr size_t row_bytes(const TypeTraits& t, int64_t K) {
    return (size_t)t.row_meta + (size_t)t.type_size * (size_t)(K / t.block_size);
}
constexpr size_t act_row_bytes(ActIndex a, int64_t K) {
    return (size_t)kActs[a].type_size * (size_t)(K / kActs[a].block_size);
}

// Unary ops of the fused up+gate op (values = ggml's enum ggml_unary_op).
enum UnaryOp : int { OP_RELU = 6, OP_SILU = 10, OP_GELU = 15 };

// y[i] = clampU(u[i]) * min(act(g[i]), limit) for i < n (docs/formats.md §12.1). Elements with
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
// A driver entry point reads `active()` once and uses that table throughout, so switching
// the ISA from another thread never mixes two sets inside one call (and the sets give
// identical results anyway).
const KernelTables& kernels(IsaIndex isa);
const KernelTables& active();
IsaIndex active_isa();
bool isa_supported(IsaIndex isa);
void set_active_isa(IsaIndex isa);  // caller checks isa_supported
const char* isa_name(IsaIndex isa);
// "scalar" | "avx2" | "avx512" | "amx" -> index, or ISA_COUNT for anything else. The one parser of
// ISA names (IQKQ_ISA, iqkq.set_isa).
IsaIndex isa_from_name(const char* name);

// A type is available when its scalar quantize, dequantize and gemm are registered.
bool type_available(int type);

// Registration hooks: every file in formats/ defines register_scalar_<file>, every file in
// kernels/<isa>/ register_<isa>_<file> (CMake collects them into registry.inc; dispatch.cpp
// calls them, the SIMD ones only after the CPU check).
#define IQKQ_REGISTER(isa, file) void register_##isa##_##file(KernelTables& t);
#include "registry.inc"
#undef IQKQ_REGISTER

}  // namespace iqkq
