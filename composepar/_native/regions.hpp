// Parallel-region hooks: GNU OpenMP teams follow a task's budget at every
// parallel region, mid-task, without replacing the user's runtime.
//
// libgomp has no OMPT, so composepar redirects the calls that loaded
// objects make to it: the GOT slots (JUMP_SLOT and GLOB_DAT relocations) of
// GOMP_parallel and its combined forms, and of omp_get_max_threads, in every
// loaded object that imports them from a libgomp (the system's, or a copy a
// wheel bundles under another file name) now point at a wrapper bound to
// that libgomp. At the start of each region without a num_threads clause
// (a clause is never changed) the wrapper sets the calling thread's
// nthreads ICV to its budget, up or down, until the task's code reads the
// ICV (omp_get_max_threads); from then on the ICV changes only at the
// program's reads. With dynamic adjustment off (the default) OpenMP
// guarantees the team size the program read, and code may split its work
// by it: a value the program has seen is never changed behind its back.
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

// The path of the object that defines the omp_get_max_threads the loaded
// object at `path` reaches (its OpenMP runtime: the object itself, or the
// libgomp/libomp it links); empty if none.
std::string openmp_runtime(const std::string& path);

}  // namespace composepar::regions
