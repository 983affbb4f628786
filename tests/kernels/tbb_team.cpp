// A oneTBB kernel for the tests: the global_control limit in force, and how
// many distinct threads a real parallel_for used. Built against tbb-devel.
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <set>
#include <mutex>

extern "C" int tbb_budget() {
    return static_cast<int>(tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
}

// Spins `spin` iterations in all, split over 256 items.
extern "C" int tbb_team(long spin) {
    std::mutex mutex;
    std::set<int> seen;
    tbb::parallel_for(0, 256, [&](int) {
        volatile double sink = 0.0;
        for (long i = 0; i < spin / 256; ++i) sink += static_cast<double>(i);
        std::lock_guard<std::mutex> lock(mutex);
        seen.insert(tbb::this_task_arena::current_thread_index());
    });
    return static_cast<int>(seen.size());
}
