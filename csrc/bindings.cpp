// pybind11 bindings: argument checks, GIL release, calls. Shapes, dtypes and value checks
// that produce user-facing messages live in the Python layer (src/iqkq/ops.py); the checks
// here only guard the raw pointers against misuse of the private module.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "gemm.h"
#include "machine_limits.h"
#include "threads.h"
#include "types.h"

namespace py = pybind11;
using namespace iqkq;

namespace {

// Dtypes are compared by value (numpy's ==), not by identity: arrays from np.frombuffer,
// memmaps or gguf.GGUFReader carry dtype objects equal to, but distinct from, the canonical ones.
// An equal kind and size in the other byte order gets its own message (such data would be
// misread, so it is refused; the Python layer converts it before calling).
template <typename T>
const T* in_ptr(const py::array& a, size_t count, const char* what) {
    const py::dtype want = py::dtype::of<T>();
    const py::dtype got = a.dtype();
    if (!want.equal(got)) {
        const bool swapped = got.kind() == want.kind() && got.itemsize() == want.itemsize() &&
                             (got.byteorder() == '<' || got.byteorder() == '>');
        throw std::invalid_argument(std::string(what) + (swapped ? ": non-native byte order" : ": wrong dtype"));
    }
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(what) + ": not C-contiguous");
    if ((size_t)a.nbytes() < count * sizeof(T)) throw std::invalid_argument(std::string(what) + ": buffer too small");
    if (reinterpret_cast<uintptr_t>(a.data()) % alignof(T) != 0)
        throw std::invalid_argument(std::string(what) + ": misaligned data (copy the array first)");
    return static_cast<const T*>(a.data());
}

template <typename T>
T* out_ptr(py::array& a, size_t count, const char* what) {
    in_ptr<T>(a, count, what);
    if (!a.writeable()) throw std::invalid_argument(std::string(what) + ": read-only");
    return static_cast<T*>(a.mutable_data());
}

int check_type(int type) {
    if (type < 0 || type >= T_COUNT) throw std::invalid_argument("invalid type index");
    if (!type_available(type)) throw std::invalid_argument(std::string(kTypes[type].name) + " has no kernels in this build");
    return type;
}

void check_shape(int type, int64_t rows, int64_t K) {
    const TypeTraits& t = kTypes[type];
    if (rows < 0 || K <= 0 || K % t.block_size != 0 || rows % t.interleave != 0)
        throw std::invalid_argument("invalid shape for type");
}

void check_op(int op) {
    if (op != OP_RELU && op != OP_SILU && op != OP_GELU) throw std::invalid_argument("invalid unary op");
}

IsaIndex isa_by_name(const std::string& name) {
    const IsaIndex isa = iqkq::isa_from_name(name.c_str());
    if (isa == ISA_COUNT) throw std::invalid_argument("unknown ISA '" + name + "' (expected 'scalar', 'avx2', 'avx512' or 'amx')");
    return isa;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "iqkq native core (private; use the iqkq package)";

    m.def("types_table", [] {
        py::list out;
        for (int i = 0; i < T_COUNT; ++i) {
            const TypeTraits& t = kTypes[i];
            py::dict d;
            d["index"] = i;
            d["name"] = t.name;
            d["ggml_id"] = t.ggml_id;
            d["block_size"] = t.block_size;
            d["type_size"] = t.type_size;
            d["row_meta"] = t.row_meta;
            d["interleave"] = t.interleave;
            d["act"] = t.act >= 0 ? py::object(py::str(kActs[t.act].name)) : py::object(py::none());
            d["act_index"] = (int)t.act;
            d["needs_imatrix"] = t.needs_imatrix;
            d["interleaved"] = t.interleaved;
            d["base"] = t.base;
            d["large_batch"] = t.large_batch;
            d["large_batch_min_n"] = t.large_batch_min_n;
            d["available"] = type_available(i);
            d["has_large_batch"] = type_available(i) && has_large_batch(i);
            out.append(d);
        }
        return out;
    });
    m.def("act_table", [] {
        py::list out;
        for (int i = 0; i < A_COUNT; ++i) {
            py::dict d;
            d["index"] = i;
            d["name"] = kActs[i].name;
            d["ggml_id"] = kActs[i].ggml_id;
            d["block_size"] = kActs[i].block_size;
            d["type_size"] = kActs[i].type_size;
            out.append(d);
        }
        return out;
    });

    // Enumerations the Python layer needs, read from here instead of being mirrored by hand.
    m.def("constants", [] {
        py::dict d, paths, ops, isas;
        paths["auto"] = (int)MatmulPath::Auto;
        paths["direct"] = (int)MatmulPath::Direct;
        paths["repack"] = (int)MatmulPath::Repack;
        ops["relu"] = (int)OP_RELU;
        ops["silu"] = (int)OP_SILU;
        ops["gelu"] = (int)OP_GELU;
        py::list names;
        for (int i = 0; i < ISA_COUNT; ++i) names.append(isa_name((IsaIndex)i));
        d["paths"] = paths;
        d["unary_ops"] = ops;
        d["isas"] = names;
        return d;
    });
    m.def("isa", [] { return std::string(isa_name(active_isa())); });
    m.def("isa_supported", [](const std::string& name) { return isa_supported(isa_by_name(name)); });
    m.def("set_isa", [](const std::string& name) {
        const IsaIndex isa = isa_by_name(name);
        if (!isa_supported(isa)) throw std::invalid_argument("this CPU does not support ISA '" + name + "'");
        set_active_isa(isa);
    });
    m.def("available_cpus", &available_cpus);
    // Machine-limit microkernels (machine_limits.h): (seconds, bytes or operations, checksum).
    m.def("limits_read", [](const std::string& isa, const py::array& buf, int nthreads) {
        const IsaIndex i = isa_by_name(isa);
        const uint8_t* p = in_ptr<uint8_t>(buf, (size_t)buf.nbytes(), "buf");
        const size_t n = (size_t)buf.nbytes();
        limits::Timing t;
        {
            py::gil_scoped_release nogil;
            t = limits::time_read(i, p, n, nthreads);
        }
        return py::make_tuple(t.seconds, t.work, t.checksum);
    });
    m.def("limits_int8", [](const std::string& isa, int64_t iters, int nthreads) {
        const IsaIndex i = isa_by_name(isa);
        limits::Timing t;
        {
            py::gil_scoped_release nogil;
            t = limits::time_int8(i, iters, nthreads);
        }
        return py::make_tuple(t.seconds, t.work, t.checksum);
    });
    m.def("limits_fma", [](const std::string& isa, int64_t iters, int nthreads) {
        const IsaIndex i = isa_by_name(isa);
        limits::Timing t;
        {
            py::gil_scoped_release nogil;
            t = limits::time_fma(i, iters, nthreads);
        }
        return py::make_tuple(t.seconds, t.work, t.checksum);
    });

    m.def("quantize", [](int type, const py::array& src, py::array& dst, int64_t rows, int64_t K,
                         const py::object& imatrix, int nthreads) {
        check_type(type);
        check_shape(type, rows, K);
        const float* s = in_ptr<float>(src, (size_t)(rows * K), "src");
        uint8_t* d = out_ptr<uint8_t>(dst, row_bytes(kTypes[type], K) * rows, "dst");
        const float* im = nullptr;
        if (!imatrix.is_none()) im = in_ptr<float>(imatrix.cast<py::array>(), (size_t)K, "imatrix");
        py::gil_scoped_release nogil;
        return quantize(type, s, d, rows, K, im, nthreads);
    });
    m.def("dequantize", [](int type, const py::array& src, py::array& dst, int64_t rows, int64_t K, int nthreads) {
        check_type(type);
        check_shape(type, rows, K);
        const uint8_t* s = in_ptr<uint8_t>(src, row_bytes(kTypes[type], K) * rows, "src");
        float* d = out_ptr<float>(dst, (size_t)(rows * K), "dst");
        py::gil_scoped_release nogil;
        dequantize(type, s, d, rows, K, nthreads);
    });
    m.def("repack", [](int from, int to, const py::array& src, py::array& dst, int64_t rows, int64_t K, int nthreads) {
        check_type(from);
        check_type(to);
        if (!(kTypes[to].base == from || kTypes[from].base == to)) throw std::invalid_argument("types are not repack twins");
        check_shape(from, rows, K);
        check_shape(to, rows, K);
        const size_t n = row_bytes(kTypes[from], K) * rows;
        const uint8_t* s = in_ptr<uint8_t>(src, n, "src");
        uint8_t* d = out_ptr<uint8_t>(dst, n, "dst");
        py::gil_scoped_release nogil;
        repack(from, to, s, d, rows, K, nthreads);
    });
    m.def("matmul", [](int type, const py::array& w, int64_t rows, int64_t K, const py::array& x, int64_t N,
                       py::array& y, int nthreads, int path) {
        check_type(type);
        check_shape(type, rows, K);
        if (N < 0 || path < 0 || path > 2) throw std::invalid_argument("bad N or path");
        const MatmulPath p = (MatmulPath)path;
        if (p == MatmulPath::Repack && !(has_large_batch(type) && rows % 8 == 0))
            throw std::invalid_argument("repack path unavailable");
        const uint8_t* wp = in_ptr<uint8_t>(w, row_bytes(kTypes[type], K) * rows, "w");
        const float* xp = in_ptr<float>(x, (size_t)(N * K), "x");
        float* yp = out_ptr<float>(y, (size_t)(N * rows), "y");
        if (N == 0 || rows == 0) return;
        if (is_small_problem(N * K * rows)) {  // too small to be worth dropping the GIL
            matmul(type, wp, rows, K, xp, (size_t)K, N, yp, 1, p);
            return;
        }
        py::gil_scoped_release nogil;
        matmul(type, wp, rows, K, xp, (size_t)K, N, yp, nthreads, p);
    });
    m.def("uses_large_batch", [](int type, int64_t rows, int64_t N, int path) {
        check_type(type);
        return uses_large_batch(type, rows, N, (MatmulPath)path);
    });
    // Private, for tests: the large-batch weight conversion of `type` (e.g. iq3_xxs -> q8_k_r8)
    // with the active kernel set; returns the rows of the target type. Works whether or not
    // the target type's own kernels are available.
    m.def("convert_large_batch", [](int type, const py::array& src, int64_t rows, int64_t K, int nthreads) {
        check_type(type);
        check_shape(type, rows, K);
        const int target = kTypes[type].large_batch;
        const RepackFn fn = active().types[type].to_large_batch;
        if (target < 0 || !fn) throw std::invalid_argument(std::string(kTypes[type].name) + " has no large-batch conversion");
        if (rows % kTypes[target].interleave != 0 || K % kTypes[target].block_size != 0)
            throw std::invalid_argument(std::string("invalid shape for the large-batch type ") + kTypes[target].name +
                                        ": rows must be a multiple of " + std::to_string(kTypes[target].interleave));
        const uint8_t* s = in_ptr<uint8_t>(src, row_bytes(kTypes[type], K) * rows, "src");
        py::array_t<uint8_t> out((py::ssize_t)(row_bytes(kTypes[target], K) * rows));
        uint8_t* o = out.mutable_data();
        {
            py::gil_scoped_release nogil;
            convert_large_batch(type, s, o, rows, K, nthreads);
        }
        return out;
    }, py::arg("type"), py::arg("src"), py::arg("rows"), py::arg("K"), py::arg("nthreads") = 1);
    m.def("quantize_activations", [](int act, const py::array& x, int64_t N, int64_t K) {
        if (act < 0 || act >= A_COUNT) throw std::invalid_argument("invalid activation format");
        if (K <= 0 || K % kActs[act].block_size != 0) throw std::invalid_argument("bad K");
        const float* xp = in_ptr<float>(x, (size_t)(N * K), "x");
        py::array_t<uint8_t> out((py::ssize_t)(N * act_row_bytes((ActIndex)act, K)));
        uint8_t* o = out.mutable_data();
        {
            py::gil_scoped_release nogil;
            quantize_activations(act, xp, (size_t)K, N, K, o, 1);
        }
        return out;
    });
    m.def("fused_up_gate", [](int type, const py::array& up, const py::array& gate, int64_t nff, int64_t K,
                              const py::array& x, int64_t N, py::array& y, int op, float limit, int nthreads) {
        check_type(type);
        check_shape(type, nff, K);
        check_op(op);
        const size_t wb = row_bytes(kTypes[type], K) * nff;
        const uint8_t* u = in_ptr<uint8_t>(up, wb, "up");
        const uint8_t* g = in_ptr<uint8_t>(gate, wb, "gate");
        const float* xp = in_ptr<float>(x, (size_t)(N * K), "x");
        float* yp = out_ptr<float>(y, (size_t)(N * nff), "y");
        py::gil_scoped_release nogil;
        dense_up_gate(type, u, g, nff, K, xp, N, yp, op, limit, nthreads);
    });
    m.def("moe_up_gate", [](int type, const py::array& up, const py::object& gate, int64_t E, int64_t nff, int64_t K,
                            const py::array& x, bool per_slot, const py::array& ids, int64_t T, int64_t n_used,
                            py::array& y, int op, float limit, int nthreads) {
        check_type(type);
        check_shape(type, nff, K);
        check_op(op);
        if (E < 0 || T < 0 || n_used < 0) throw std::invalid_argument("bad sizes");
        const size_t wb = row_bytes(kTypes[type], K) * nff * E;
        const uint8_t* u = in_ptr<uint8_t>(up, gate.is_none() ? 2 * wb : wb, "up");
        const uint8_t* g = gate.is_none() ? nullptr : in_ptr<uint8_t>(gate.cast<py::array>(), wb, "gate");
        const float* xp = in_ptr<float>(x, (size_t)((per_slot ? T * n_used : T) * K), "x");
        const int32_t* ip = in_ptr<int32_t>(ids, (size_t)(T * n_used), "ids");
        float* yp = out_ptr<float>(y, (size_t)(T * n_used * nff), "y");
        py::gil_scoped_release nogil;
        moe_up_gate(type, u, g, E, nff, K, xp, per_slot, ip, T, n_used, yp, op, limit, nthreads);
    });
    m.def("fused_act", [](const py::array& g, const py::array& u, int64_t n, int64_t simd_count, int op, float limit) {
        check_op(op);
        const float* gp = in_ptr<float>(g, (size_t)n, "g");
        const float* up = in_ptr<float>(u, (size_t)n, "u");
        py::array_t<float> y((py::ssize_t)n);
        active().fused_act(gp, up, y.mutable_data(), n, simd_count, op, limit);
        return y;
    });
    // Test hook: an exception thrown by a task on a pool thread reaches Python as an
    // exception (instead of terminating the process), and the pool stays usable.
    m.def("_pool_exception_check", [](int nthreads, int64_t ntasks, int64_t bad_task) {
        std::atomic<int64_t> ran{0};
        py::gil_scoped_release nogil;
        parallel_for(nthreads, ntasks, [&](int64_t task, int) {
            if (task == bad_task) throw std::runtime_error("task " + std::to_string(task) + " failed");
            ran.fetch_add(1);
        });
        return ran.load();
    });
}
