// Cost of one token acquire + release pair in C++, against a POSIX named
// semaphore as the baseline, uncontended or with several processes at once.
//
//     arbiter_bench [--iterations N] [--processes P] [--json]
//
// For each mechanism, P forked processes each run N pairs at the same time
// (a shared barrier starts their timed loops together) and each times its
// own loop; the result is the mean over processes of ns per pair.
//
//     composepar_acquire_nowait   Arbiter::acquire_nowait(1, 1) + release(1)
//     composepar_lease            Arbiter::lease_open(0) + lease_close
//     posix_semaphore             sem_wait + sem_post on a sem_open'ed semaphore
//
// The segment (/dev/shm/composepar-<uid>-bench-<pid>) and the semaphore hold
// P tokens, so every pair succeeds: contention is on the shared lock and
// cache lines, not waiting for a token. Both are removed at the end.
//
// Built by CMake (target arbiter_bench) or by bench/bench_arbiter.py with
//     g++ -std=c++17 -O2 -I composepar/_native bench/arbiter_bench.cpp
//         composepar/_native/arbiter.cpp composepar/_native/posix.cpp -lpthread
#include "arbiter.hpp"

#include <fcntl.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr unsigned kMaxProcesses = 64;

struct Options {
    std::uint64_t iterations = 1'000'000;
    unsigned processes = 1;
    bool json = false;
};

// Lives in an anonymous shared mapping made before the forks.
struct Shared {
    std::atomic<unsigned> ready;            // children set up and waiting at the barrier
    std::atomic<unsigned> go;               // 1: start the timed loop
    std::atomic<std::uint64_t> failures;    // pairs that did not get their token (should stay 0)
    double ns_per_pair[kMaxProcesses];      // each child's result
};

// Paths to remove on every exit; set before any fork.
std::string g_segment_path;
std::string g_semaphore_name;

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "arbiter_bench: %s\n", what.c_str());
    ::unlink(g_segment_path.c_str());
    ::sem_unlink(g_semaphore_name.c_str());
    std::exit(1);
}

[[noreturn]] void usage_error(const std::string& what) {
    std::fprintf(stderr, "arbiter_bench: %s\nusage: arbiter_bench [--iterations N] [--processes P] [--json]\n",
                 what.c_str());
    std::exit(2);
}

Options parse_options(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--json") {
            options.json = true;
            continue;
        }
        if (flag == "--help" || flag == "-h") usage_error("ns per acquire + release pair, composepar vs sem_open");
        if (i + 1 >= argc) usage_error(flag + " needs a value");
        const std::string value = argv[++i];
        char* end = nullptr;
        const unsigned long long number = std::strtoull(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0') usage_error(flag + " must be a positive integer; got " + value);
        if (flag == "--iterations") {
            if (number < 1 || number > 1'000'000'000ULL)
                usage_error("--iterations must be between 1 and 1e9; got " + value);
            options.iterations = number;
        } else if (flag == "--processes") {
            if (number < 1 || number > kMaxProcesses)
                usage_error("--processes must be between 1 and " + std::to_string(kMaxProcesses) + "; got " + value);
            options.processes = static_cast<unsigned>(number);
        } else {
            usage_error("unknown option " + flag);
        }
    }
    return options;
}

// One mechanism: what each forked child runs (its set-up, then timed_loop).
struct Mechanism {
    const char* name;         // key in the output
    const char* description;  // the pair it times
    std::function<void(std::uint64_t iterations, Shared& shared, unsigned index)> child;
};

// Warms up, waits at the barrier, then times `iterations` calls of `pair`
// (which returns false when it did not get its token).
template <class Pair>
void timed_loop(std::uint64_t iterations, Shared& shared, unsigned index, Pair&& pair) {
    std::uint64_t failures = 0;
    const std::uint64_t warmup = iterations / 10 + 1;
    for (std::uint64_t i = 0; i < warmup; ++i) failures += pair() ? 0 : 1;
    shared.ready.fetch_add(1, std::memory_order_acq_rel);
    while (shared.go.load(std::memory_order_acquire) == 0) {
    }  // spin: a sleep here would stagger the starts by a scheduler tick
    const Clock::time_point start = Clock::now();
    for (std::uint64_t i = 0; i < iterations; ++i) failures += pair() ? 0 : 1;
    const Clock::time_point end = Clock::now();
    shared.ns_per_pair[index] =
        std::chrono::duration<double, std::nano>(end - start).count() / static_cast<double>(iterations);
    shared.failures.fetch_add(failures, std::memory_order_relaxed);
}

// Forks `processes` children running `mechanism` together; returns the mean ns per pair.
double run_mechanism(const Mechanism& mechanism, const Options& options, Shared& shared) {
    shared.ready.store(0, std::memory_order_relaxed);
    shared.go.store(0, std::memory_order_relaxed);
    shared.failures.store(0, std::memory_order_relaxed);
    std::fflush(stdout);
    std::fflush(stderr);
    std::vector<pid_t> children;
    for (unsigned i = 0; i < options.processes; ++i) {
        const pid_t pid = ::fork();
        if (pid < 0) die(std::string("fork: ") + std::strerror(errno));
        if (pid == 0) {
            int status = 0;
            try {
                mechanism.child(options.iterations, shared, i);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "arbiter_bench: %s in process %u: %s\n", mechanism.name, i, e.what());
                status = 1;
            }
            std::fflush(stderr);
            ::_exit(status);  // no atexit handlers or destructors of the parent's objects
        }
        children.push_back(pid);
    }
    // The barrier: release every child's timed loop at once.
    while (shared.ready.load(std::memory_order_acquire) < options.processes) {
        int status = 0;
        for (pid_t pid : children)
            if (::waitpid(pid, &status, WNOHANG) == pid)
                die(std::string(mechanism.name) + ": a child exited before the start");
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    shared.go.store(1, std::memory_order_release);
    bool ok = true;
    for (pid_t pid : children) {
        int status = 0;
        while (::waitpid(pid, &status, 0) < 0) {
            if (errno != EINTR) die(std::string("waitpid: ") + std::strerror(errno));
        }
        ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    if (!ok) die(std::string(mechanism.name) + ": a child failed");
    double sum = 0;
    for (unsigned i = 0; i < options.processes; ++i) sum += shared.ns_per_pair[i];
    return sum / options.processes;
}

}  // namespace

int main(int argc, char** argv) {
    const Options options = parse_options(argc, argv);
    const std::string tag = std::to_string(::geteuid()) + "-bench-" + std::to_string(::getpid());
    g_segment_path = "/dev/shm/composepar-" + tag;
    g_semaphore_name = "/composepar-" + tag;

    void* mapping = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mapping == MAP_FAILED) die(std::string("mmap: ") + std::strerror(errno));
    Shared* shared = new (mapping) Shared{};

    std::vector<std::pair<const char*, double>> results;
    try {
        // Create the segment here; each child attaches its own handle (and slot).
        composepar::Arbiter creator(g_segment_path, options.processes, options.processes, "arbiter_bench");
        sem_t* semaphore = ::sem_open(g_semaphore_name.c_str(), O_CREAT | O_EXCL, 0600, options.processes);
        if (semaphore == SEM_FAILED) die("sem_open " + g_semaphore_name + ": " + std::strerror(errno));
        const std::uint32_t capacity = options.processes;

        const Mechanism mechanisms[] = {
            {"composepar_acquire_nowait", "acquire_nowait(1,1)+release(1)",
             [capacity](std::uint64_t n, Shared& s, unsigned i) {
                 composepar::Arbiter arbiter(g_segment_path, capacity, capacity, "arbiter_bench");
                 timed_loop(n, s, i, [&arbiter] {
                     if (arbiter.acquire_nowait(1, 1) != 1) return false;
                     arbiter.release(1);
                     return true;
                 });
             }},
            {"composepar_lease", "lease_open(0)+lease_close",
             [capacity](std::uint64_t n, Shared& s, unsigned i) {
                 composepar::Arbiter arbiter(g_segment_path, capacity, capacity, "arbiter_bench");
                 timed_loop(n, s, i, [&arbiter] {
                     composepar::LeaseState state{};
                     const std::uint64_t epoch = arbiter.lease_open(0, 0, state);  // no pool owner
                     const bool own = state.own_token == 1;
                     arbiter.lease_close(epoch, state);
                     return own;
                 });
             }},
            {"posix_semaphore", "sem_wait+sem_post",
             [semaphore](std::uint64_t n, Shared& s, unsigned i) {
                 timed_loop(n, s, i, [semaphore] {
                     while (::sem_wait(semaphore) != 0) {
                         if (errno != EINTR) throw std::runtime_error(std::string("sem_wait: ") + std::strerror(errno));
                     }
                     if (::sem_post(semaphore) != 0)
                         throw std::runtime_error(std::string("sem_post: ") + std::strerror(errno));
                     return true;
                 });
             }},
        };

        for (const Mechanism& mechanism : mechanisms) {
            const double ns = run_mechanism(mechanism, options, *shared);
            const std::uint64_t failures = shared->failures.load(std::memory_order_relaxed);
            if (failures != 0)
                die(std::string(mechanism.name) + ": " + std::to_string(failures) +
                    " pairs did not get their token although the capacity equals the process count");
            results.emplace_back(mechanism.name, ns);
        }

        const std::string problems = creator.check_invariants();
        if (!problems.empty()) die("segment invariants broken after the run: " + problems);
        ::sem_close(semaphore);
    } catch (const std::exception& e) {
        die(e.what());
    }
    ::sem_unlink(g_semaphore_name.c_str());
    ::unlink(g_segment_path.c_str());
    ::munmap(mapping, sizeof(Shared));

    if (options.json) {
        std::printf("{\"unit\": \"ns per pair\", \"iterations\": %llu, \"processes\": %u, \"results\": {",
                    static_cast<unsigned long long>(options.iterations), options.processes);
        for (std::size_t i = 0; i < results.size(); ++i)
            std::printf("%s\"%s\": %.2f", i ? ", " : "", results[i].first, results[i].second);
        std::printf("}}\n");
    } else {
        std::printf("%-28s %14s   (%u process%s, %llu pairs each)\n", "mechanism", "ns per pair",
                    options.processes, options.processes == 1 ? "" : "es",
                    static_cast<unsigned long long>(options.iterations));
        for (const auto& [name, ns] : results) std::printf("%-28s %14.1f\n", name, ns);
    }
    return 0;
}
