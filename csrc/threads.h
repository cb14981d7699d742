// A small persistent thread pool. `parallel_for` runs fn(task, thread) for every task in
// [0, ntasks) on up to `nthreads` threads, the calling thread included. Tasks are handed out
// dynamically; kernels are written so that which thread runs a task never changes a result.
#pragma once

#include <cstdint>
#include <functional>

namespace iqkq {

using TaskFn = std::function<void(int64_t task, int thread)>;

void parallel_for(int nthreads, int64_t ntasks, const TaskFn& fn);

// Number of CPUs this process may run on (sched_getaffinity), at least 1.
int available_cpus();

}  // namespace iqkq
