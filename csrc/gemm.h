// The driver: splits quantize / dequantize / repack / matmul into tasks on the thread pool
// and picks the kernel by type and batch size. Arguments are trusted (validated in Python).
#pragma once

#include <cstddef>
#include <cstdint>

#include "types.h"

namespace iqkq {

enum class MatmulPath : int { Auto = 0, Direct = 1, Repack = 2 };

// Quantize rows x K floats. Returns -1 on success, or the index of the first row holding a
// NaN or infinity (nothing is guaranteed about dst then).
int64_t quantize(int type, const float* src, uint8_t* dst, int64_t rows, int64_t K, const float* imatrix, int nthreads);

void dequantize(int type, const uint8_t* src, float* dst, int64_t rows, int64_t K, int nthreads);

// Byte-exact conversion between a type and its interleaved twin (either direction).
void repack(int from, int to, const uint8_t* src, uint8_t* dst, int64_t rows, int64_t K, int nthreads);

// Whether the type has a large-batch conversion with kernels in this build.
bool has_large_batch(int type);

// Whether matmul with this path would convert the weights to the large-batch type.
bool uses_large_batch(int type, int64_t rows, int64_t N, MatmulPath path);

// Y[n, r] = sum_k W[r, k] X[n, k] computed as ik_llama.cpp does (activations quantized to
// the type's activation format, integer dot products, float scales). X rows are x_stride
// floats apart; Y is N x rows, contiguous.
void matmul(int type, const uint8_t* W, int64_t rows, int64_t K, const float* X, size_t x_stride, int64_t N,
            float* Y, int nthreads, MatmulPath path);

// Quantize activation rows (exposed for tests): N rows of K floats -> N * act_row_bytes.
void quantize_activations(int act, const float* X, size_t x_stride, int64_t N, int64_t K, uint8_t* dst, int nthreads);

}  // namespace iqkq
