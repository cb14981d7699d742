// Stress test of the thread pool (csrc/threads.cpp) for ThreadSanitizer:
//   g++ -std=c++17 -O1 -g -fsanitize=thread -Icsrc tools/pool_stress.cpp csrc/threads.cpp -o /tmp/pool_stress -lpthread
//   /tmp/pool_stress            (exit 0 and no TSan report = clean)
// Several caller threads post jobs of varying thread counts and task counts back to back (the
// pool serves one caller at a time, the others run their tasks inline), some tasks throw, and
// every job checks that each task ran exactly once before parallel_for returned.
#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>

#include "threads.h"

int main() {
    std::atomic<int> failures{0};
    auto caller = [&](int seed) {
        unsigned x = 2463534242u + (unsigned)seed;
        auto rnd = [&] { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x; };
        for (int job = 0; job < 3000; ++job) {
            const int nthreads = 1 + (int)(rnd() % 6);
            const int64_t ntasks = (int64_t)(rnd() % 40);
            const int64_t bad = (rnd() % 10 == 0 && ntasks > 0) ? (int64_t)(rnd() % ntasks) : -1;
            std::vector<std::atomic<int>> hits((size_t)ntasks);
            for (auto& h : hits) h.store(0);
            bool threw = false;
            try {
                iqkq::parallel_for(nthreads, ntasks, [&](int64_t t, int) {
                    hits[(size_t)t].fetch_add(1);
                    if (t == bad) throw std::runtime_error("task failed");
                });
            } catch (const std::runtime_error&) {
                threw = true;
            }
            if (bad >= 0 && !threw) failures.fetch_add(1);
            for (int64_t t = 0; t < ntasks; ++t) {
                const int h = hits[(size_t)t].load();
                // every task runs exactly once, except those skipped after a failure
                if (h > 1 || (bad < 0 && h != 1)) failures.fetch_add(1);
            }
        }
    };
    std::vector<std::thread> callers;
    for (int i = 0; i < 3; ++i) callers.emplace_back(caller, i);
    for (auto& t : callers) t.join();
    std::printf("pool stress: %d failures\n", failures.load());
    return failures.load() == 0 ? 0 : 1;
}
