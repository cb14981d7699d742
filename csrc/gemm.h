// The driver: splits quantize / dequantize / repack / matmul into tasks on the thread pool
// and picks the kernel by type and batch size. Arguments are trusted (validated in Python).
#pragma once

#include <cstddef>
#include <cstdint>

#include "types.h"

namespace iqkq {

enum class MatmulPath : int { Auto = 0, Direct = 1, Repack = 2 };

// The one small-problem threshold: work (multiply-adds, or elements touched) below this runs
// on the calling thread, because the pool's hand-off (and, in the bindings, releasing the
// GIL) costs more than the work.
constexpr int64_t kSerialWork = (int64_t)1 << 17;
bool is_small_problem(int64_t work);

// Quantize rows x K floats. Returns -1 on success, or the index of the first row holding a
// NaN or infinity (nothing is guaranteed about dst then).
int64_t quantize(int type, const float* src, uint8_t* dst, int64_t rows, int64_t K, const float* imatrix, int nthreads);

void dequantize(int type, const uint8_t* src, float* dst, int64_t rows, int64_t K, int nthreads);

// Byte-exact conversion between a type and its interleaved twin (either direction).
void repack(int from, int to, const uint8_t* src, uint8_t* dst, int64_t rows, int64_t K, int nthreads);

// ik_llama.cpp's large-batch conversion of `rows` rows (multiple of 8) of `type` to its
// large-batch type (docs/formats.md §11.4; lossy for iq4_ks / iq3_xxs, a permutation for q8_0).
void convert_large_batch(int type, const uint8_t* src, uint8_t* dst, int64_t rows, int64_t K, int nthreads);

// Whether the type has a large-batch conversion with kernels in this build.
bool has_large_batch(int type);

// Whether matmul with this path would convert the weights to the large-batch type.
bool uses_large_batch(int type, int64_t rows, int64_t N, MatmulPath path);
// The fused ops' rule: batch (per expert) >= threshold and rows a multiple of the target's interleave.
bool fused_uses_large_batch(int type, int64_t rows, int64_t N);

// Y[n, r] = sum_k W[r, k] X[n, k] computed as ik_llama.cpp does (activations quantized to
// the type's activation format, integer dot products, float scales). X rows are x_stride
// floats apart; Y is N x rows, contiguous. A row of X holding a NaN or an infinity gives a
// row of NaN in Y (docs/formats.md, "Non-finite and extreme activations").
void matmul(int type, const uint8_t* W, int64_t rows, int64_t K, const float* X, size_t x_stride, int64_t N,
            float* Y, int nthreads, MatmulPath path);

// Dense fused op: X is N x K floats, Y is N x nff.
void dense_up_gate(int type, const uint8_t* up, const uint8_t* gate, int64_t nff, int64_t K, const float* X, int64_t N,
                   float* Y, int op, float limit, int nthreads);

// MoE fused op over E stacked experts (gate == nullptr: `up` is the merged tensor with 2*nff
// rows per expert, gate rows first). X is T x K (shared by a token's slots) or T*n_used x K
// (per_slot); ids is T x n_used; Y is T x n_used x nff.
void moe_up_gate(int type, const uint8_t* up, const uint8_t* gate, int64_t E, int64_t nff, int64_t K, const float* X,
                 bool per_slot, const int32_t* ids, int64_t T, int64_t n_used, float* Y, int op, float limit,
                 int nthreads);

// Quantize activation rows (exposed for tests): N rows of K floats -> N * act_row_bytes.
void quantize_activations(int act, const float* X, size_t x_stride, int64_t N, int64_t K, uint8_t* dst, int nthreads);

}  // namespace iqkq
