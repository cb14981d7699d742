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

    // Work split, shared by both paths: tasks are (row tile, column range) pairs. A row tile
    // holds about 128 KiB of weights (in the layout the kernel reads), so it stays in L2
    // while the task walks its columns in chunks of kColChunk activation rows. Columns are
    // split across tasks only when there are too few row tiles to keep every thread busy.
    const bool convert = uses_large_batch(type, rows, N, path);
    const int ktype = convert ? t.large_batch : type;
    const TypeTraits& kt_traits = kTypes[ktype];
    const int G = kt_traits.interleave;
    const size_t krb = row_bytes(kt_traits, K);  // bytes per row in the kernel's layout
    const GemmFn gemm = kt.types[ktype].gemm;
    constexpr int64_t kColChunk = 64;
    int64_t rt;  // rows per tile, a multiple of G
    if (N <= 4) {
        // GEMV-like: weights stream from memory once. ~64 KiB tiles balance the threads
        // without much hand-out traffic.
        rt = ((int64_t)(64 * 1024) / (int64_t)krb) / G * G;
    } else {
        rt = ((int64_t)(128 * 1024) / (int64_t)krb) / G * G;
    }
    // At least 16 output rows per tile: tasks on different threads then never write into
    // the same 64-byte line of the output (false sharing).
    rt = std::max<int64_t>(rt, std::max<int64_t>(16, G));
    if (convert) rt = std::max<int64_t>(8, rt / 8 * 8);
    rt = std::min(rt, rows);
    const int64_t nrt = ceil_div(rows, rt);
    int64_t nct = 1;
    if (nrt < 4 * nthreads && N > 8) nct = std::min<int64_t>(ceil_div(4 * nthreads, nrt), ceil_div(N, 8));
    const int64_t ct = ceil_div(N, nct);
    const int64_t ntasks = nrt * ceil_div(N, ct);
    const int nt = (int)std::min<int64_t>(std::max(1, nthreads), ntasks);

    std::vector<uint8_t> scratch;
    const RepackFn conv = convert ? kt.types[type].to_large_batch : nullptr;
    if (convert) scratch.resize((size_t)nt * rt * krb);
    const int64_t ncol_tasks = ceil_div(N, ct);
    parallel_for(nt, ntasks, [&](int64_t task, int thread) {
        const int64_t rti = task / ncol_tasks, cti = task % ncol_tasks;
        const int64_t r0 = rti * rt, nr = std::min(rt, rows - r0);
        const int64_t c0 = cti * ct, c1 = std::min(N, c0 + ct);
        const uint8_t* wt = W + r0 * rb;
        if (convert) {
            uint8_t* buf = scratch.data() + (size_t)thread * rt * krb;
            conv(wt, buf, nr, K);
            wt = buf;
        }
        for (int64_t n0 = c0; n0 < c1; n0 += kColChunk) {
            GemmArgs a{K, wt, (size_t)G * krb, nr, act.data() + n0 * ab, ab, std::min(kColChunk, c1 - n0),
                       Y + n0 * rows + r0, (size_t)rows};
            gemm(a);
        }
    });
}

}  // namespace iqkq
