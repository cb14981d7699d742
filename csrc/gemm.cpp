#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "threads.h"

namespace iqkq {
namespace {

// Rows per task for row-parallel work on `row_bytes`-sized rows: about 64 KiB of input per
// task (enough to amortise the hand-out), a multiple of the interleave.
int64_t rows_per_task(int64_t rows, int64_t row_cost_bytes, int interleave) {
    int64_t r = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, row_cost_bytes));
    r = std::max<int64_t>(interleave, (r / interleave) * interleave);
    return std::min(r, rows);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool is_finite_rows(const float* p, int64_t n) {
    // Exponent all ones <=> inf or NaN. Integer test so it also works under -ffast-math
    // style assumptions elsewhere and vectorises on any SSE2 machine.
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, p + i, 4);
        bad |= ((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
}

}  // namespace

int64_t quantize(int type, const float* src, uint8_t* dst, int64_t rows, int64_t K, const float* imatrix, int nthreads) {
    const TypeTraits& t = kTypes[type];
    const QuantizeFn fn = active().types[type].quantize;
    const size_t rb = row_bytes(t, K);
    const int64_t rpt = rows_per_task(rows, K * 4, t.interleave);
    const int64_t ntasks = ceil_div(rows, rpt);
    std::atomic<int64_t> first_bad{INT64_MAX};
    parallel_for(nthreads, ntasks, [&](int64_t task, int) {
        const int64_t r0 = task * rpt, nr = std::min(rpt, rows - r0);
        for (int64_t r = r0; r < r0 + nr; ++r) {
            if (!is_finite_rows(src + r * K, K)) {
                int64_t cur = first_bad.load();
                while (r < cur && !first_bad.compare_exchange_weak(cur, r)) {
                }
                return;
            }
        }
        fn(src + r0 * K, dst + r0 * rb, nr, K, imatrix);
    });
    const int64_t bad = first_bad.load();
    return bad == INT64_MAX ? -1 : bad;
}

void dequantize(int type, const uint8_t* src, float* dst, int64_t rows, int64_t K, int nthreads) {
    const TypeTraits& t = kTypes[type];
    const DequantizeFn fn = active().types[type].dequantize;
    const size_t rb = row_bytes(t, K);
    const int64_t rpt = rows_per_task(rows, K * 4, t.interleave);
    parallel_for(nthreads, ceil_div(rows, rpt), [&](int64_t task, int) {
        const int64_t r0 = task * rpt, nr = std::min(rpt, rows - r0);
        fn(src + r0 * rb, dst + r0 * K, nr, K);
    });
}

void repack(int from, int to, const uint8_t* src, uint8_t* dst, int64_t rows, int64_t K, int nthreads) {
    const bool forward = kTypes[to].base == from;
    const int ilv_type = forward ? to : from;
    const RepackFn fn = forward ? active().types[ilv_type].to_interleaved : active().types[ilv_type].from_interleaved;
    const size_t rb = row_bytes(kTypes[from], K);
    const int64_t rpt = rows_per_task(rows, (int64_t)rb * 4, kTypes[ilv_type].interleave);
    parallel_for(nthreads, ceil_div(rows, rpt), [&](int64_t task, int) {
        const int64_t r0 = task * rpt, nr = std::min(rpt, rows - r0);
        fn(src + r0 * rb, dst + r0 * rb, nr, K);
    });
}

void quantize_activations(int act, const float* X, size_t x_stride, int64_t N, int64_t K, uint8_t* dst, int nthreads) {
    const ActQuantFn fn = active().act_quant[act];
    const size_t ab = act_row_bytes((ActIndex)act, K);
    const int64_t rpt = std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(1, K));
    if (N * K < 65536) nthreads = 1;
    parallel_for(nthreads, ceil_div(N, rpt), [&](int64_t task, int) {
        const int64_t n0 = task * rpt, n1 = std::min(N, n0 + rpt);
        for (int64_t n = n0; n < n1; ++n) fn(X + n * x_stride, dst + n * ab, K);
    });
}

bool has_large_batch(int type) {
    const TypeTraits& t = kTypes[type];
    return t.large_batch >= 0 && type_available(t.large_batch) && kernels(ISA_SCALAR).types[type].to_large_batch;
}

bool uses_large_batch(int type, int64_t rows, int64_t N, MatmulPath path) {
    if (!has_large_batch(type) || path == MatmulPath::Direct) return false;
    if (path == MatmulPath::Repack) return true;
    // ik_llama.cpp's single-thread rule, made independent of the thread count.
    return N >= 32 && rows >= 32 && rows % 8 == 0;
}

void matmul(int type, const uint8_t* W, int64_t rows, int64_t K, const float* X, size_t x_stride, int64_t N,
            float* Y, int nthreads, MatmulPath path) {
    const TypeTraits& t = kTypes[type];
    const KernelTables& kt = active();
    const size_t ab = act_row_bytes(t.act, K);
    const size_t rb = row_bytes(t, K);
    // Tiny problems: the pool's hand-off costs more than the work.
    if (rows * K * N < (int64_t)1 << 17) nthreads = 1;

    std::vector<uint8_t> act((size_t)N * ab);
    quantize_activations(t.act, X, x_stride, N, K, act.data(), nthreads);

    if (uses_large_batch(type, rows, N, path)) {
        const int target = t.large_batch;
        const TypeTraits& tt = kTypes[target];
        const RepackFn convert = kt.types[type].to_large_batch;
        const GemmFn gemm = kt.types[target].gemm;
        const size_t trb = row_bytes(tt, K);
        // Row tiles of about 256 KiB of converted weights, a multiple of 8 rows.
        int64_t rt = std::max<int64_t>(8, ((256 * 1024) / (int64_t)trb) / 8 * 8);
        rt = std::min<int64_t>(rt, 64);
        const int64_t ntasks = ceil_div(rows, rt);
        const int nt = (int)std::min<int64_t>(std::max(1, nthreads), ntasks);
        std::vector<uint8_t> scratch((size_t)nt * rt * trb);
        const int64_t ct = 64;
        parallel_for(nt, ntasks, [&](int64_t task, int thread) {
            const int64_t r0 = task * rt, nr = std::min(rt, rows - r0);
            uint8_t* buf = scratch.data() + (size_t)thread * rt * trb;
            convert(W + r0 * rb, buf, nr, K);
            for (int64_t n0 = 0; n0 < N; n0 += ct) {
                GemmArgs a{K, buf, 8 * trb, nr, act.data() + n0 * ab, ab, std::min(ct, N - n0), Y + n0 * rows + r0,
                           (size_t)rows};
                gemm(a);
            }
        });
        return;
    }

    const GemmFn gemm = kt.types[type].gemm;
    const int G = t.interleave;
    const size_t gb = rb * G;
    const int64_t ngroups = rows / G;
    // Columns per task: all of them for small batches, 64 otherwise.
    const int64_t ct = N <= 64 ? N : 64;
    const int64_t nct = ceil_div(N, ct);
    // Groups per task: aim for ~8 tasks per thread so the dynamic hand-out balances, but
    // keep a task at >= 16 KiB of weights.
    int64_t gpt = std::max<int64_t>(1, ngroups / std::max<int64_t>(1, 8 * nthreads / nct));
    gpt = std::max<int64_t>(gpt, (int64_t)ceil_div(16 * 1024, (int64_t)gb));
    gpt = std::min(gpt, ngroups);
    const int64_t nrt = ceil_div(ngroups, gpt);
    parallel_for(nthreads, nrt * nct, [&](int64_t task, int) {
        const int64_t rti = task / nct, cti = task % nct;
        const int64_t g0 = rti * gpt, ng = std::min(gpt, ngroups - g0);
        const int64_t n0 = cti * ct, nc = std::min(ct, N - n0);
        GemmArgs a{K, W + g0 * gb, gb, ng * G, act.data() + n0 * ab, ab, nc, Y + n0 * rows + g0 * G, (size_t)rows};
        gemm(a);
    });
}

}  // namespace iqkq
