// Parallel-region hooks: GNU OpenMP teams follow a task's budget at every
// parallel region, mid-task, without replacing the user's runtime.
//
// libgomp has no OMPT, so composepar redirects the calls that loaded
// objects make to it: the GOT slots (JUMP_SLOT and GLOB_DAT relocations) of
// GOMP_parallel and its combined forms in every loaded object that imports
// them from a libgomp (the system's, or a copy a wheel bundles under another
// file name) now point at a wrapper bound to that libgomp. The wrapper
//
//   before the region  shrinks the team to the thread's budget: lowers the
//                      calling thread's nthreads ICV, or a num_threads
//                      clause above it (a team smaller than asked is
//                      always allowed: code sized for more threads is safe)
//   after the region   sets the ICV to the budget, up or down, for the next
//                      region (growing is done only here: code that reads
//                      omp_get_max_threads() between two regions to size
//                      per-thread buffers sees what the next region uses)
//
// The budget is the calling thread's Cell, bound by the task's scope in its
// own thread (Python: _task) and written by the follower when the lease
// changes. A thread with no cell bound (no task, a team's worker thread, a
// nested region's) is left alone. The program's own value is a ceiling: if
// the ICV differs from what the hook last set, the program changed it
// (omp_set_num_threads, threadpoolctl, from any path), and that value is the
// ceiling until the thread's next task. Unbinding puts back the value the
// ICV held when the hook first saw it in this task, unless the program
// changed it since, so the scope's own restore finds what it left.
//
// Not covered: LLVM's libomp and Intel's libiomp5 (their __kmpc_fork_call is
// variadic; OMPT is their route), and calls a runtime makes to itself.
#pragma once

#include <atomic>
#include <cstddef>
#include <string>
#include <vector>

namespace composepar::regions {

// One task's budget as the region hooks read it. Written by any thread
// (relaxed: each value is complete on its own; a region that reads the
// older one follows at the next region).
struct Cell {
    std::atomic<int> budget{0};   // threads the task may use now; 0: not set (no change made)
    std::atomic<int> ceiling{0};  // the program's own OpenMP value at the task's start; 0: unknown
};

// The calling thread's cell (nullptr: none). Unbinding, or binding another,
// first puts back what the hooks changed in this thread (see above).
void bind_thread(Cell* cell);

// Redirects the GOT slots of every loaded object that calls a libgomp's
// parallel entries and is not redirected yet. Idempotent; cheap when
// nothing new is loaded (O(1) check of the loader's load counters).
// Returns the number of slots redirected by this call.
std::size_t install();

// The libgomp copies whose callers are redirected (their paths).
std::vector<std::string> runtimes();

// The path of the object that defines the omp_get_max_threads the loaded
// object at `path` reaches (its OpenMP runtime: the object itself, or the
// libgomp/libomp it links); empty if none.
std::string openmp_runtime(const std::string& path);

// Parallel regions that went through a wrapper, ever (for the tests).
unsigned long long regions_seen();

}  // namespace composepar::regions
