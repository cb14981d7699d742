#include "threads.h"

#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

namespace iqkq {
namespace {

class Pool {
public:
    ~Pool() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_ = true;
            ++generation_;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
    }

    // Returns false if the pool is busy with another caller's job (then the caller runs
    // its tasks itself).
    bool run(int nthreads, int64_t ntasks, const TaskFn& fn) {
        std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
        if (!busy.owns_lock()) return false;
        const int helpers = nthreads - 1;
        ensure_workers(helpers);
        fn_ = &fn;
        ntasks_ = ntasks;
        next_.store(0, std::memory_order_relaxed);
        pending_.store(helpers, std::memory_order_relaxed);
        {
            // The helper count is published with the generation, under the lock: a worker
            // reads both together, so one that wakes late for an old job can never count
            // itself into a newer one (or twice into one).
            std::lock_guard<std::mutex> lk(mu_);
            active_helpers_ = helpers;
            ++generation_;
            gen_atomic_.store(generation_, std::memory_order_release);
        }
        cv_.notify_all();
        work(0);
        // Wait for the helpers: spin briefly (jobs are short), then sleep.
        for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
            if (spin > 2000) {
                std::unique_lock<std::mutex> lk(mu_);
                done_cv_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
                break;
            }
            std::this_thread::yield();
        }
        fn_ = nullptr;
        if (error_) {
            std::exception_ptr e = error_;
            error_ = nullptr;
            std::rethrow_exception(e);
        }
        return true;
    }

private:
    // Runs tasks until none are left. An exception thrown by a task (e.g. std::bad_alloc) must
    // not escape a worker thread (that would terminate the process): the first one is kept,
    // the remaining tasks are skipped, and the caller rethrows it.
    void work(int thread) {
        for (;;) {
            const int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
            if (t >= ntasks_) break;
            try {
                (*fn_)(t, thread);
            } catch (...) {
                std::lock_guard<std::mutex> lk(err_mu_);
                if (!error_) error_ = std::current_exception();
                next_.store(ntasks_, std::memory_order_relaxed);
            }
        }
    }

    void ensure_workers(int n) {
        while ((int)workers_.size() < n) {
            const int id = (int)workers_.size() + 1;
            // The worker must compare against the generation *before* the job that is
            // about to be posted, or it could start after the post and sleep through it.
            uint64_t gen;
            {
                std::lock_guard<std::mutex> lk(mu_);
                gen = generation_;
            }
            workers_.emplace_back([this, id, gen] { loop(id, gen); });
        }
    }

    void loop(int id, uint64_t seen) {
        for (;;) {
            // Spin a little before sleeping so back-to-back calls do not pay a wake-up.
            uint64_t g = gen_atomic_.load(std::memory_order_acquire);
            for (int spin = 0; g == seen && spin < 4000; ++spin) {
                std::this_thread::yield();
                g = gen_atomic_.load(std::memory_order_acquire);
            }
            int helpers;
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&] { return generation_ != seen || stop_; });
                if (stop_) return;
                seen = generation_;
                helpers = active_helpers_;
            }
            if (id <= helpers) {
                work(id);
                if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                    std::lock_guard<std::mutex> lk(mu_);
                    done_cv_.notify_all();
                }
            }
        }
    }

    std::mutex run_mu_;
    std::mutex mu_;
    std::condition_variable cv_, done_cv_;
    std::vector<std::thread> workers_;
    uint64_t generation_ = 0;
    std::atomic<uint64_t> gen_atomic_{0};
    bool stop_ = false;
    const TaskFn* fn_ = nullptr;
    int64_t ntasks_ = 0;
    int active_helpers_ = 0;
    std::atomic<int64_t> next_{0};
    std::atomic<int> pending_{0};
    std::mutex err_mu_;
    std::exception_ptr error_;
};

Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: workers may outlive static destruction order
    return *p;
}

}  // namespace

void parallel_for(int nthreads, int64_t ntasks, const TaskFn& fn) {
    if (ntasks <= 0) return;
    if (nthreads > ntasks) nthreads = (int)ntasks;
    if (nthreads <= 1 || !pool().run(nthreads, ntasks, fn)) {
        for (int64_t t = 0; t < ntasks; ++t) fn(t, 0);
    }
}

int available_cpus() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? (int)n : 1;
}

}  // namespace iqkq

