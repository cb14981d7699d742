// The driver: the one owner of tiling and threading. It splits quantize / dequantize /
// repack / matmul / the fused ops into tasks on the thread pool, picks the kernel by type and
// batch size (the large-batch rule), quantizes and prepares the activations once per call,
// and applies the activation semantics of docs/formats.md ("Non-finite and extreme
// activations"). Arguments are trusted (validated in Python and bindings.cpp).
//
// Out of memory: every buffer here is a std::vector, so a failed allocation throws
// std::bad_alloc, which reaches Python as MemoryError (also from pool threads); no kernel
// allocates memory of its own or falls back to a slower path.
#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

#include "threads.h"

namespace iqkq {

bool is_small_problem(int64_t work) { return work < kSerialWork; }

namespace {

// Rows per task for row-parallel work on `row_bytes`-sized rows: about 64 KiB of input per
// task (enough to amortise the hand-out), a multiple of the interleave.
int64_t rows_per_task(int64_t rows, int64_t row_cost_bytes, int interleave) {
    int64_t r = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, row_cost_bytes));
    r = std::max<int64_t>(interleave, (r / interleave) * interleave);
    return std::min(r, rows);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool is_finite_row(const float* p, int64_t n) {
    // Exponent all ones <=> inf or NaN. An integer test, which vectorises on any SSE2 machine.
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, p + i, 4);
        bad |= ((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
}

// A 64-byte aligned byte buffer.
struct Aligned {
    std::vector<uint8_t> raw;
    uint8_t* p = nullptr;
    void resize(size_t bytes) {
        raw.assign(bytes + 64, 0);
        p = reinterpret_cast<uint8_t*>(((uintptr_t)raw.data() + 63) & ~(uintptr_t)63);
    }
};

// Activation rows quantized to a type's activation format, with their non-finite flags and
// (when the kernel asks for it) their prepared form.
struct Activations {
    std::vector<uint8_t> q;
    size_t ab = 0;
    std::vector<uint8_t> bad;  // 1 = the float row held a NaN or an infinity
    bool any_bad = false;
    Aligned prep;
    size_t pb = 0;
    const uint8_t* row(int64_t n) const { return q.data() + (size_t)n * ab; }
};

void quantize_rows(const KernelTables& kt, int act, const float* X, size_t x_stride, int64_t N, int64_t K,
                   uint8_t* dst, uint8_t* bad, int nthreads) {
    const ActQuantFn fn = kt.act_quant[act];
    const size_t ab = act_row_bytes((ActIndex)act, K);
    const int64_t rpt = std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(1, K));
    if (is_small_problem(N * K)) nthreads = 1;
    parallel_for(nthreads, ceil_div(N, rpt), [&](int64_t task, int) {
        const int64_t n0 = task * rpt, n1 = std::min(N, n0 + rpt);
        for (int64_t n = n0; n < n1; ++n) {
            const float* x = X + n * x_stride;
            if (bad) bad[n] = !is_finite_row(x, K);
            fn(x, dst + n * ab, K);
        }
    });
}

// Prepared activations for the kernel of type `ktype` (no-op without a prepare hook).
void prepare_rows(const KernelTables& kt, int ktype, Activations& a, int64_t N, int64_t K, int nthreads) {
    const TypeKernels& k = kt.types[ktype];
    a.pb = 0;
    if (!k.prepare_act || N == 0) return;
    a.pb = (k.prepared_bytes(K) + 63) / 64 * 64;
    // Kernels read several prepared rows at the same offset at once: a row stride that is a
    // multiple of 4 KiB would map them all to the same L1 sets (measured: iq4_ks AVX-512, 8
    // columns, K = 4096: -7 %). Skew the rows by 512 bytes.
    if (a.pb % 4096 == 0) a.pb += 512;
    a.prep.resize(a.pb * (size_t)N);
    if (is_small_problem(N * K)) nthreads = 1;
    parallel_for(nthreads, N, [&](int64_t n, int) { k.prepare_act(a.row(n), a.prep.p + (size_t)n * a.pb, K); });
}

Activations quantize_act(const KernelTables& kt, int type, const float* X, size_t x_stride, int64_t N, int64_t K,
                         int nthreads) {
    Activations a;
    const ActIndex act = kTypes[type].act;
    a.ab = act_row_bytes(act, K);
    a.q.resize((size_t)N * a.ab);
    a.bad.assign((size_t)N, 0);
    quantize_rows(kt, act, X, x_stride, N, K, a.q.data(), a.bad.data(), nthreads);
    a.any_bad = std::find(a.bad.begin(), a.bad.end(), 1) != a.bad.end();
    return a;
}

void fill_nan(float* y, int64_t n) { std::fill(y, y + n, std::numeric_limits<float>::quiet_NaN()); }

}  // namespace

int64_t quantize(int type, const float* src, uint8_t* dst, int64_t rows, int64_t K, const float* imatrix, int nthreads) {
    const KernelTables& kt = active();
    const TypeTraits& t = kTypes[type];
    QuantizeFn fn = kt.types[type].quantize;
    // An interleaved type without a quantizer of its own: quantize the base type, then
    // interleave (ik_llama.cpp's quantize_*_r4 / _r8 do exactly this for most types).
    const QuantizeFn base_fn = fn || t.base < 0 ? nullptr : kt.types[t.base].quantize;
    const RepackFn ilv_fn = kt.types[type].to_interleaved;
    const size_t rb = row_bytes(t, K);
    const int64_t rpt = rows_per_task(rows, K * 4, t.interleave);
    const int64_t ntasks = ceil_div(rows, rpt);
    std::atomic<int64_t> first_bad{INT64_MAX};
    parallel_for(nthreads, ntasks, [&](int64_t task, int) {
        const int64_t r0 = task * rpt, nr = std::min(rpt, rows - r0);
        for (int64_t r = r0; r < r0 + nr; ++r) {
            if (!is_finite_row(src + r * K, K)) {
                int64_t cur = first_bad.load();
                while (r < cur && !first_bad.compare_exchange_weak(cur, r)) {
                }
                return;
            }
        }
        if (fn) {
            fn(src + r0 * K, dst + r0 * rb, nr, K, imatrix);
        } else {
            std::vector<uint8_t> tmp((size_t)t.interleave * rb);
            for (int64_t g = r0; g < r0 + nr; g += t.interleave) {
                base_fn(src + g * K, tmp.data(), t.interleave, K, imatrix);
                ilv_fn(tmp.data(), dst + g * rb, t.interleave, K);
            }
        }
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
    const KernelTables& kt = active();
    const bool forward = kTypes[to].base == from;
    const int ilv_type = forward ? to : from;
    const RepackFn fn = forward ? kt.types[ilv_type].to_interleaved : kt.types[ilv_type].from_interleaved;
    const size_t rb = row_bytes(kTypes[from], K);
    const int64_t rpt = rows_per_task(rows, (int64_t)rb * 4, kTypes[ilv_type].interleave);
    parallel_for(nthreads, ceil_div(rows, rpt), [&](int64_t task, int) {
        const int64_t r0 = task * rpt, nr = std::min(rpt, rows - r0);
        fn(src + r0 * rb, dst + r0 * rb, nr, K);
    });
}

void convert_large_batch(int type, const uint8_t* src, uint8_t* dst, int64_t rows, int64_t K, int nthreads) {
    const RepackFn fn = active().types[type].to_large_batch;
    const TypeTraits& lb = kTypes[kTypes[type].large_batch];
    const size_t rb = row_bytes(kTypes[type], K), trb = row_bytes(lb, K);
    const int64_t rpt = rows_per_task(rows, (int64_t)rb * 4, lb.interleave);
    parallel_for(nthreads, ceil_div(rows, rpt), [&](int64_t task, int) {
        const int64_t r0 = task * rpt, nr = std::min(rpt, rows - r0);
        fn(src + r0 * rb, dst + r0 * trb, nr, K);
    });
}

void quantize_activations(int act, const float* X, size_t x_stride, int64_t N, int64_t K, uint8_t* dst, int nthreads) {
    quantize_rows(active(), act, X, x_stride, N, K, dst, nullptr, nthreads);
}

bool has_large_batch(int type) {
    const TypeTraits& t = kTypes[type];
    return t.large_batch >= 0 && type_available(t.large_batch) && kernels(ISA_SCALAR).types[type].to_large_batch;
}

bool uses_large_batch(int type, int64_t rows, int64_t N, MatmulPath path) {
    if (!has_large_batch(type) || path == MatmulPath::Direct) return false;
    if (path == MatmulPath::Repack) return true;
    // ik_llama.cpp's single-thread rule (MulMat::is_dequant_better, iqk_mul_mat with one
    // thread: at least 32 weight rows, rows a multiple of the target's interleave), made
    // independent of the thread count.
    const TypeTraits& t = kTypes[type];
    return N >= t.large_batch_min_n && rows >= 32 && rows % kTypes[t.large_batch].interleave == 0;
}

// The fused ops' rule (ik_llama.cpp's iqk_moe_fused_up_gate, used for the dense and the MoE op):
// convert whenever the batch (per expert) reaches the type's threshold, whatever the number of
// weight rows. ik_llama.cpp aborts when the rows are not a multiple of the target's interleave;
// iqkq uses the direct kernels then (docs/formats.md §14).
bool fused_uses_large_batch(int type, int64_t rows, int64_t N) {
    if (!has_large_batch(type)) return false;
    const TypeTraits& t = kTypes[type];
    return N >= t.large_batch_min_n && rows % kTypes[t.large_batch].interleave == 0;
}

namespace {

// How one weight matrix times a batch of activation rows is cut into tasks.
//
// Tasks are (row tile, column range) pairs. A row tile holds about 128 KiB of weights in the
// layout the kernel reads (64 KiB for GEMV-like batches, which stream the weights once;
// TypeKernels::tile_bytes where a kernel asks for another size), so it stays in L2 while the
// task walks its columns in chunks of at most kColChunk activation rows (fewer where the
// kernel says so). Columns are split across tasks only when there are too few row tiles to
// keep the threads busy. The arithmetic of an output never depends on the split.
struct Plan {
    int type = 0, ktype = 0;
    bool convert = false;
    int G = 1;
    size_t rb = 0, krb = 0;
    int64_t rows = 0, K = 0, N = 0;
    int64_t rt = 0, ct = 0, nrt = 0, nct = 0, cchunk = 0;
    int64_t single = -1;  // GemmArgs::single_col as a column index of the N columns
    GemmFn gemm = nullptr;
    RepackFn conv = nullptr;
    int64_t ntasks() const { return nrt * nct; }
};

constexpr int64_t kColChunk = 64;
constexpr int64_t kGemvBatch = 4;  // batches up to this size are GEMV-like (see make_plan, fused_up_gate)

Plan make_plan(const KernelTables& kt, int type, int64_t rows, int64_t K, int64_t N, int nthreads, bool convert) {
    Plan p;
    p.type = type;
    p.convert = convert;
    p.ktype = convert ? kTypes[type].large_batch : type;
    const TypeKernels& k = kt.types[p.ktype];
    p.G = kTypes[p.ktype].interleave;
    p.rb = row_bytes(kTypes[type], K);
    p.krb = row_bytes(kTypes[p.ktype], K);
    p.rows = rows;
    p.K = K;
    p.N = N;
    p.gemm = k.gemm;
    p.conv = convert ? kt.types[type].to_large_batch : nullptr;
    p.cchunk = k.max_cols ? std::max<int64_t>(1, k.max_cols(K)) : kColChunk;
    // The column ik_llama.cpp computes with its one-column kernel (single thread): N = 1, or the
    // last column when fewer than 32 rows make it tile the batch by 32 columns and one is left
    // over (iqk_mul_mat, MulMat::mul_mat_NxM; docs/formats.md, "Legacy 32-blocks").
    p.single = N == 1 ? 0 : (!convert && rows < 32 && N > 16 && N % 32 == 1) ? N - 1 : -1;
    const int64_t G = p.G;
    // Rounded up to a multiple of two row groups. The AVX-512 kernels work on pairs of row
    // groups (pairs of rows for G = 1), and a lone group at the end of a tile costs some of
    // them a full pair (measured, one thread: iq4_ks_r4 GEMV +10 %, q8_k_r8 N >= 32 +10 %; the
    // converting paths, whose 128 KiB tiles held three 8-row groups at K = 4096, Zen 4
    // ab_builds N = 32 / 512: q4_K x1.11 / 1.20, q5_K x1.03 / 1.10, q8_0 x1.11 / 1.12,
    // iq4_ks x1.05 / 1.10; the AVX2 set unchanged).
    const int64_t unit = 2 * G;
    // GEMV-like batches read each weight byte once: long tiles keep the weight streams long
    // (every tile restarts the hardware prefetchers on new streams; Zen 4, ab_builds --cold:
    // 1 MiB tiles against 64 KiB +12-30 % at 1 and 2 threads), but at least 4 tiles per thread
    // keep the hand-out balanced.
    const int64_t gemv_tile = std::clamp<int64_t>((int64_t)p.krb * rows / (4 * std::max(1, nthreads)), 64 * 1024, 1024 * 1024);
    const int64_t tile = N <= kGemvBatch ? gemv_tile : (k.tile_bytes ? k.tile_bytes : 128 * 1024);
    const int64_t fit = tile / (int64_t)p.krb;
    int64_t rt = (fit + unit - 1) / unit * unit;
    // At least 16 output rows per tile, so tasks on different threads never write into the
    // same 64-byte line of the output (false sharing).
    rt = std::max<int64_t>(rt, std::max<int64_t>(16, G));
    rt = (rt + G - 1) / G * G;
    p.rt = std::min(rt, std::max<int64_t>(rows, 1));
    p.nrt = ceil_div(rows, p.rt);
    int64_t nct = 1;
    if (p.nrt < 4 * nthreads && N > 8) nct = std::min<int64_t>(ceil_div(4 * nthreads, p.nrt), ceil_div(N, 8));
    p.ct = std::max<int64_t>(1, ceil_div(N, nct));
    p.nct = ceil_div(N, p.ct);
    return p;
}

// Rows [r0, r0+nr) of W times activation rows [c0, c1) of `a` (rows `off` on); output
// (column n, row r) goes to out[(n - c0) * ldo + (r - r0)]. `scratch` holds rt * krb bytes for
// the conversion.
void run_tile(const Plan& p, const uint8_t* W, const Activations& a, int64_t off, int64_t r0, int64_t nr, int64_t c0,
              int64_t c1, float* out, size_t ldo, uint8_t* scratch) {
    const uint8_t* wt = W + r0 * p.rb;
    if (p.convert) {
        p.conv(wt, scratch, nr, p.K);
        wt = scratch;
    }
    for (int64_t n0 = c0; n0 < c1; n0 += p.cchunk) {
        GemmArgs g{p.K, wt, (size_t)p.G * p.krb, nr, a.row(off + n0), a.ab, std::min(p.cchunk, c1 - n0),
                   out + (n0 - c0) * ldo, ldo};
        if (a.pb) {
            g.P = a.prep.p + (size_t)(off + n0) * a.pb;
            g.p_row_bytes = a.pb;
        }
        if (p.single >= n0 && p.single < n0 + g.ncols) g.single_col = p.single - n0;
        p.gemm(g);
    }
}

}  // namespace

void matmul(int type, const uint8_t* W, int64_t rows, int64_t K, const float* X, size_t x_stride, int64_t N,
            float* Y, int nthreads, MatmulPath path) {
    const KernelTables& kt = active();
    if (is_small_problem(rows * K * N)) nthreads = 1;
    Activations a = quantize_act(kt, type, X, x_stride, N, K, nthreads);
    const Plan p = make_plan(kt, type, rows, K, N, nthreads, uses_large_batch(type, rows, N, path));
    prepare_rows(kt, p.ktype, a, N, K, nthreads);
    const int nt = (int)std::min<int64_t>(std::max(1, nthreads), p.ntasks());
    std::vector<uint8_t> scratch(p.convert ? (size_t)nt * p.rt * p.krb : 0);
    parallel_for(nt, p.ntasks(), [&](int64_t task, int thread) {
        const int64_t rti = task / p.nct, cti = task % p.nct;
        const int64_t r0 = rti * p.rt, nr = std::min(p.rt, rows - r0);
        const int64_t c0 = cti * p.ct, c1 = std::min(N, c0 + p.ct);
        run_tile(p, W, a, 0, r0, nr, c0, c1, Y + c0 * rows + r0, (size_t)rows,
                 p.convert ? scratch.data() + (size_t)thread * p.rt * p.krb : nullptr);
    });
    if (a.any_bad)
        for (int64_t n = 0; n < N; ++n)
            if (a.bad[n]) fill_nan(Y + n * rows, rows);
}

namespace {

// One expert (or the single dense matrix) of the fused up+gate op: activation rows
// [first, first + ny) of `a` times the gate and up weights (nff rows each). Output row n
// (nff floats) goes to Y row out_rows[n] (or n).
struct FusedExpert {
    const uint8_t* gate;
    const uint8_t* up;
    int64_t first;
    int64_t ny;
    const int64_t* out_rows;
};

// Y[row] = clampU(up . x) * min(act(gate . x), limit), docs/formats.md ("Fused up+gate"), for
// all experts in one parallel region. The large-batch conversion follows the fused rule
// (fused_uses_large_batch) per expert. All experts share one activation format and so one prepared layout, except that a
// converted expert's kernel may want another: preparation is per kernel type, done once for
// every kernel type that occurs.
void fused_up_gate(const KernelTables& kt, int type, Activations& a, const FusedExpert* experts, int64_t n_experts,
                   int64_t nff, int64_t K, int op, float limit, float* Y, int nthreads) {
    const FusedActFn act_fn = kt.fused_act;
    // Outputs in the last nff % 8 rows of each expert use the scalar libm formulas, as in
    // ik_llama.cpp single-threaded (its tiles start at multiples of 8); every other output
    // uses the 8-lane formulas. This makes the result independent of the thread split.
    const int64_t simd_end = nff - nff % 8;
    int64_t total = 0, max_ny = 0;
    for (int64_t e = 0; e < n_experts; ++e) {
        total += experts[e].ny;
        max_ny = std::max(max_ny, experts[e].ny);
    }
    if (is_small_problem(2 * nff * K * total)) nthreads = 1;

    std::vector<Plan> plans((size_t)n_experts);
    std::vector<int64_t> first_task((size_t)n_experts + 1, 0);
    int64_t rt_max = 0, ct_max = 0;
    size_t krb_max = 0;
    bool direct = false, converted = false;
    for (int64_t e = 0; e < n_experts; ++e) {
        const int64_t ny = experts[e].ny;
        if (ny > 0) {
            plans[e] = make_plan(kt, type, nff, K, ny, nthreads, fused_uses_large_batch(type, nff, ny));
            rt_max = std::max(rt_max, plans[e].rt);
            ct_max = std::max(ct_max, std::min<int64_t>(plans[e].ct, ny));
            if (plans[e].convert) krb_max = std::max(krb_max, plans[e].krb);
            (plans[e].convert ? converted : direct) = true;
        }
        first_task[e + 1] = first_task[e] + (ny > 0 ? plans[e].ntasks() : 0);
    }
    const int64_t ntasks = first_task[n_experts];
    if (ntasks == 0) return;
    const int nt = (int)std::min<int64_t>(std::max(1, nthreads), ntasks);
    // The converted experts' kernel may prepare its activations differently from the direct
    // one: keep a second prepared set for it.
    const int lb = kTypes[type].large_batch;
    Activations* ad = &a;
    Activations conv_act;
    if (direct) prepare_rows(kt, type, a, a.bad.size(), K, nthreads);
    if (converted) {
        if (!direct) {
            prepare_rows(kt, lb, a, a.bad.size(), K, nthreads);
        } else if (kt.types[lb].prepare_act) {
            conv_act.q.assign(a.q.begin(), a.q.end());
            conv_act.ab = a.ab;
            prepare_rows(kt, lb, conv_act, a.bad.size(), K, nthreads);
        }
    }
    auto acts_for = [&](const Plan& p) -> const Activations& {
        return p.convert && direct && kt.types[lb].prepare_act ? conv_act : *ad;
    };
    // Per thread: gate and up results of one tile (rows x columns) and conversion space.
    const size_t tile_floats = (size_t)rt_max * (size_t)ct_max;
    const size_t conv_bytes = (size_t)rt_max * krb_max;
    std::vector<uint8_t> scratch((size_t)nt * conv_bytes);
    struct Task {
        const Plan* p;
        const FusedExpert* x;
        int64_t r0, nr, c0, c1;
    };
    auto task_at = [&](int64_t task) {
        const int64_t e = std::upper_bound(first_task.begin(), first_task.end(), task) - first_task.begin() - 1;
        const Plan& p = plans[e];
        const int64_t local = task - first_task[e];
        const int64_t rti = local / p.nct, cti = local % p.nct;
        const int64_t r0 = rti * p.rt, c0 = cti * p.ct;
        return Task{&p, &experts[e], r0, std::min(p.rt, nff - r0), c0, std::min(experts[e].ny, c0 + p.ct)};
    };
    auto activate = [&](const Task& t, const float* g, size_t ldg, const float* u) {
        const int64_t simd = std::max<int64_t>(0, std::min(t.nr, simd_end - t.r0));
        for (int64_t n = t.c0; n < t.c1; ++n) {
            const int64_t out_row = t.x->out_rows ? t.x->out_rows[n] : n;
            act_fn(g + (n - t.c0) * ldg, u + (n - t.c0) * t.nr, Y + out_row * nff + t.r0, t.nr, simd, op, limit);
        }
    };
    if (max_ny <= kGemvBatch) {
        // GEMV-like batches stream the weights once, so the products cost what reading them
        // costs. One core streams two matrices tile by tile more slowly than one after the
        // other (measured, q8_0 4096 x 4096, N = 1, one thread, weights from DRAM: 5-9 %),
        // so all gate tiles run first, into a buffer of every gate output (at most
        // kGemvBatch x nff floats per expert), then the up tiles, each applying the activation.
        std::vector<size_t> goff((size_t)n_experts + 1, 0);
        for (int64_t e = 0; e < n_experts; ++e) goff[e + 1] = goff[e] + (size_t)experts[e].ny * (size_t)nff;
        std::vector<float> G(goff[n_experts]);
        auto gate_out = [&](const Task& t) { return G.data() + goff[t.x - experts] + (size_t)t.c0 * nff + t.r0; };
        parallel_for(nt, ntasks, [&](int64_t task, int thread) {
            const Task t = task_at(task);
            run_tile(*t.p, t.x->gate, acts_for(*t.p), t.x->first, t.r0, t.nr, t.c0, t.c1, gate_out(t), (size_t)nff,
                     scratch.data() + (size_t)thread * conv_bytes);
        });
        std::vector<float> ubuf((size_t)nt * tile_floats);
        parallel_for(nt, ntasks, [&](int64_t task, int thread) {
            const Task t = task_at(task);
            float* u = ubuf.data() + (size_t)thread * tile_floats;
            run_tile(*t.p, t.x->up, acts_for(*t.p), t.x->first, t.r0, t.nr, t.c0, t.c1, u, (size_t)t.nr,
                     scratch.data() + (size_t)thread * conv_bytes);
            activate(t, gate_out(t), (size_t)nff, u);
        });
    } else {
        std::vector<float> gu((size_t)nt * 2 * tile_floats);
        parallel_for(nt, ntasks, [&](int64_t task, int thread) {
            const Task t = task_at(task);
            float* g = gu.data() + (size_t)thread * 2 * tile_floats;
            float* u = g + tile_floats;
            uint8_t* sc = scratch.data() + (size_t)thread * conv_bytes;
            const Activations& aa = acts_for(*t.p);
            run_tile(*t.p, t.x->gate, aa, t.x->first, t.r0, t.nr, t.c0, t.c1, g, (size_t)t.nr, sc);
            run_tile(*t.p, t.x->up, aa, t.x->first, t.r0, t.nr, t.c0, t.c1, u, (size_t)t.nr, sc);
            activate(t, g, (size_t)t.nr, u);
        });
    }
    if (a.any_bad)
        for (int64_t e = 0; e < n_experts; ++e)
            for (int64_t n = 0; n < experts[e].ny; ++n)
                if (a.bad[experts[e].first + n])
                    fill_nan(Y + (experts[e].out_rows ? experts[e].out_rows[n] : n) * nff, nff);
}

}  // namespace

void dense_up_gate(int type, const uint8_t* up, const uint8_t* gate, int64_t nff, int64_t K, const float* X, int64_t N,
                   float* Y, int op, float limit, int nthreads) {
    const KernelTables& kt = active();
    Activations a = quantize_act(kt, type, X, (size_t)K, N, K, nthreads);
    const FusedExpert e{gate, up, 0, N, nullptr};
    fused_up_gate(kt, type, a, &e, 1, nff, K, op, limit, Y, nthreads);
}

void moe_up_gate(int type, const uint8_t* up, const uint8_t* gate, int64_t E, int64_t nff, int64_t K, const float* X,
                 bool per_slot, const int32_t* ids, int64_t T, int64_t n_used, float* Y, int op, float limit,
                 int nthreads) {
    const KernelTables& kt = active();
    const size_t rb = row_bytes(kTypes[type], K);
    const int64_t nx = per_slot ? T * n_used : T;
    Activations x = quantize_act(kt, type, X, (size_t)K, nx, K, nthreads);
    // Route the (token, slot) pairs: expert e sees its pairs in token order, as ggml's
    // mul_mat_id does; pairs with an id outside [0, E) produce zeros.
    std::vector<int64_t> count((size_t)E, 0);
    for (int64_t p = 0; p < T * n_used; ++p) {
        const int32_t e = ids[p];
        if (e >= 0 && e < E) ++count[(size_t)e];
        else std::memset(Y + p * nff, 0, (size_t)nff * sizeof(float));
    }
    std::vector<int64_t> start((size_t)E + 1, 0);
    for (int64_t e = 0; e < E; ++e) start[e + 1] = start[e] + count[e];
    std::vector<int64_t> out_rows((size_t)start[E]);
    Activations a;  // the activation rows gathered in expert order
    a.ab = x.ab;
    a.q.resize((size_t)start[E] * a.ab);
    a.bad.assign((size_t)start[E], 0);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < T * n_used; ++p) {
        const int32_t e = ids[p];
        if (e < 0 || e >= E) continue;
        const int64_t slot = fill[e]++;
        out_rows[slot] = p;
        const int64_t xrow = per_slot ? p : p / n_used;
        std::memcpy(a.q.data() + slot * a.ab, x.row(xrow), a.ab);
        a.bad[slot] = x.bad[xrow];
    }
    a.any_bad = x.any_bad;
    std::vector<FusedExpert> experts;
    for (int64_t e = 0; e < E; ++e) {
        if (count[e] == 0) continue;
        const uint8_t *g, *u;
        if (gate) {
            g = gate + (size_t)e * nff * rb;
            u = up + (size_t)e * nff * rb;
        } else {  // merged tensor: per expert 2*nff rows, gate rows first
            g = up + (size_t)e * 2 * nff * rb;
            u = g + (size_t)nff * rb;
        }
        experts.push_back({g, u, start[e], count[e], out_rows.data() + start[e]});
    }
    fused_up_gate(kt, type, a, experts.data(), (int64_t)experts.size(), nff, K, op, limit, Y, nthreads);
}

}  // namespace iqkq
