// Stress test of the arbiter core, built with ThreadSanitizer and run by CTest.
//
//     arbiter_stress [--seconds S] [--seed N] [--threads T] [--capacity C]
//
// One process, two Arbiter handles on the same fresh segment (so two slots of
// one process take part), T worker threads split over the two handles:
//
//     worker 0, 2, 4 ..  --> handle "stress-a" --+
//                                                 +--> /dev/shm/composepar-<uid>-tsan-<pid>
//     worker 1, 3, 5 ..  --> handle "stress-b" --+      capacity C (default 6 < T: contended)
//     checker            --> both, alternately
//
// Each worker randomly mixes lease_open (half of them for a thread pool of
// this process) / lease_refresh / lease_close with random extra_wanted,
// set_pool_demand (one worker per handle), acquire_nowait(min, max) +
// release, blocking acquire with a short timeout (0 - 5 ms; its
// InterruptCheck says "go on", rarely "stop"), its own check_invariants() /
// reap() calls, and idle spells that vary the load; it remembers everything
// it holds and checks every result.
// The checker, while the workers run, asks for check_invariants() and checks
// stats() (tokens_free + sum(held) == capacity, sum(held) <= capacity, the
// per-slot invariants). Every ~50 ms it also parks all workers between two
// operations and compares each slot with what that handle's workers say they
// hold, field by field. At the end every worker gives everything back and the
// segment must be whole again: tokens_free == capacity, no invariant broken;
// then both handles detach and retire_and_unlink() removes the segment.
//
// Exit status 0 on success, 1 on any violation (printed with the seed that
// reproduces the operation sequences: interleavings still vary), 2 on bad
// arguments. ThreadSanitizer (TSAN_OPTIONS=halt_on_error=1) fails it on any race.
#include "arbiter.hpp"

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/common_interface_defs.h>
#define COMPOSEPAR_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#include <sanitizer/common_interface_defs.h>
#define COMPOSEPAR_TSAN 1
#endif
#endif

namespace {

using composepar::AcquireOutcome;
using composepar::Arbiter;
using composepar::LeaseState;
using composepar::ProcessStats;
using composepar::SegmentStats;
using Clock = std::chrono::steady_clock;

constexpr unsigned kHandleCount = 2;           // two slots of this process
constexpr std::size_t kMaxLeasesPerWorker = 2;  // open at once by one worker
constexpr const char* kCommands[kHandleCount] = {"stress-a", "stress-b"};

struct Options {
    double seconds = 5.0;
    std::uint64_t seed = 0;
    bool seed_given = false;
    unsigned threads = 8;
    std::uint32_t capacity = 6;
};

// Written once in main() before any thread starts; read by fail().
std::string g_path;          // the segment, removed on every exit
std::uint64_t g_seed = 0;    // printed with every failure

// Reports a violation and ends the process at once: other threads may be
// inside the arbiter, so no destructors run.
[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "arbiter_stress: FAIL: %s (reproduce the operation mix with --seed %llu)\n",
                 what.c_str(), static_cast<unsigned long long>(g_seed));
    std::fflush(stderr);
    ::unlink(g_path.c_str());
    std::_Exit(1);
}

void expect(bool ok, const std::string& what) {
    if (!ok) fail(what);
}

#ifdef COMPOSEPAR_TSAN
// ThreadSanitizer ends the process itself on a report (halt_on_error=1):
// remove the segment then too.
void remove_segment_on_sanitizer_death() { ::unlink(g_path.c_str()); }
#endif

[[noreturn]] void usage_error(const std::string& what) {
    std::fprintf(stderr,
                 "arbiter_stress: %s\nusage: arbiter_stress [--seconds S] [--seed N] [--threads T] "
                 "[--capacity C]\n",
                 what.c_str());
    std::exit(2);
}

Options parse_options(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") usage_error("stress test of the composepar arbiter");
        if (i + 1 >= argc) usage_error(flag + " needs a value");
        const std::string value = argv[++i];
        char* end = nullptr;
        if (flag == "--seconds") {
            options.seconds = std::strtod(value.c_str(), &end);
            if (*end != '\0' || !(options.seconds > 0.0) || options.seconds > 3600.0)
                usage_error("--seconds must be a number in (0, 3600]; got " + value);
        } else if (flag == "--seed") {
            options.seed = std::strtoull(value.c_str(), &end, 10);
            if (*end != '\0' || value.empty()) usage_error("--seed must be an unsigned integer; got " + value);
            options.seed_given = true;
        } else if (flag == "--threads") {
            const unsigned long threads = std::strtoul(value.c_str(), &end, 10);
            if (*end != '\0' || threads < 2 || threads > 64)
                usage_error("--threads must be between 2 and 64; got " + value);
            options.threads = static_cast<unsigned>(threads);
        } else if (flag == "--capacity") {
            const unsigned long capacity = std::strtoul(value.c_str(), &end, 10);
            if (*end != '\0' || capacity < 1 || capacity > 64)
                usage_error("--capacity must be between 1 and 64; got " + value);
            options.capacity = static_cast<std::uint32_t>(capacity);
        } else {
            usage_error("unknown option " + flag);
        }
    }
    return options;
}

// Lets the checker stop every worker between two arbiter calls, so the
// segment and the workers' own records can be compared exactly.
class Quiescence {
public:
    explicit Quiescence(unsigned workers) : m_running(workers) {}

    // Workers call this between operations; parks while a pause is on.
    void checkpoint() {
        if (!m_requested.load(std::memory_order_acquire)) return;  // pairs with the release in pause()
        std::unique_lock<std::mutex> lock(m_mutex);
        if (!m_paused) return;
        ++m_parked;
        m_changed.notify_all();
        m_changed.wait(lock, [this] { return !m_paused; });
        --m_parked;
        m_changed.notify_all();
    }

    // A worker that finished; it no longer needs to park.
    void retire() {
        std::lock_guard<std::mutex> lock(m_mutex);
        --m_running;
        m_changed.notify_all();
    }

    // Returns with every running worker parked (true), or false once none runs.
    bool pause() {
        std::unique_lock<std::mutex> lock(m_mutex);
        m_paused = true;
        m_requested.store(true, std::memory_order_release);
        m_changed.wait(lock, [this] { return m_parked == m_running; });
        return m_running > 0;
    }

    void resume() {
        std::unique_lock<std::mutex> lock(m_mutex);
        m_paused = false;
        m_requested.store(false, std::memory_order_relaxed);
        m_changed.notify_all();
        // A later pause() must not count a worker still on its way out.
        m_changed.wait(lock, [this] { return m_parked == 0; });
    }

private:
    std::atomic<bool> m_requested{false};  // fast-path copy of m_paused
    std::mutex m_mutex;                    // guards the fields below
    std::condition_variable m_changed;     // any of them changed
    bool m_paused = false;                 // the checker wants the workers parked
    unsigned m_parked = 0;                 // workers parked in checkpoint()
    unsigned m_running;                    // workers not yet retired
};

struct OpenLease {
    std::uint64_t epoch;
    LeaseState state;
    bool for_pool;  // opened for a thread pool of this process (pool_owner_pid == getpid())
};

struct OpCounts {
    std::uint64_t opens = 0, opens_overdrawn = 0, opens_with_extras = 0, opens_for_pool = 0, closes = 0;
    std::uint64_t pool_demands = 0;
    std::uint64_t refreshes = 0, refresh_took_own = 0, refresh_grew = 0, refresh_gave_back = 0;
    std::uint64_t nowait_granted = 0, nowait_refused = 0, releases = 0;
    std::uint64_t acquire_granted = 0, acquire_timed_out = 0, acquire_interrupted = 0;
    std::uint64_t checks = 0, idles = 0;

    void add(const OpCounts& o) {
        opens += o.opens;
        opens_overdrawn += o.opens_overdrawn;
        opens_with_extras += o.opens_with_extras;
        opens_for_pool += o.opens_for_pool;
        pool_demands += o.pool_demands;
        refreshes += o.refreshes;
        refresh_took_own += o.refresh_took_own;
        refresh_grew += o.refresh_grew;
        refresh_gave_back += o.refresh_gave_back;
        closes += o.closes;
        nowait_granted += o.nowait_granted;
        nowait_refused += o.nowait_refused;
        releases += o.releases;
        acquire_granted += o.acquire_granted;
        acquire_timed_out += o.acquire_timed_out;
        acquire_interrupted += o.acquire_interrupted;
        checks += o.checks;
        idles += o.idles;
    }
};

// What one worker holds. Written only by its worker; read by the checker
// while the worker is parked (the Quiescence mutex orders the two).
struct Holdings {
    std::vector<OpenLease> leases;
    std::uint32_t tokens_explicit = 0;
    std::uint32_t pool_demand = 0;  // last set_pool_demand(); only workers 0 and 1 call it
};

std::uint32_t lease_wanted(const LeaseState& st) {
    return (1 - st.own_token) + (st.extra_wanted > st.tokens_extra ? st.extra_wanted - st.tokens_extra : 0);
}

void check_lease_state(const LeaseState& st, std::uint32_t extra_wanted, std::uint32_t capacity,
                       const char* after) {
    const std::string where = std::string(" after ") + after;
    expect(st.own_token <= 1, "own_token is " + std::to_string(st.own_token) + where);
    expect(st.extra_wanted == extra_wanted, "extra_wanted is " + std::to_string(st.extra_wanted) + ", not the " +
                                                std::to_string(extra_wanted) + " asked for" + where);
    expect(st.tokens_extra <= st.extra_wanted, "lease holds " + std::to_string(st.tokens_extra) +
                                                   " extras but wants only " + std::to_string(st.extra_wanted) +
                                                   where);
    expect(st.own_token == 1 || st.tokens_extra == 0, "an overdrawn lease holds extras" + where);
    expect(st.own_token + st.tokens_extra <= capacity, "lease holds more than the capacity" + where);
}

// Checks that hold at any instant: one stats() snapshot, taken under the mutex.
void check_snapshot(const SegmentStats& stats, std::uint32_t capacity, const char* who) {
    const std::string where = std::string(" (") + who + ")";
    expect(stats.capacity == capacity, "stats().capacity changed" + where);
    std::uint64_t held = 0;
    for (const ProcessStats& p : stats.processes) {
        held += p.tokens_held;
        expect(p.leases_overdrawn <= p.threads_active,
               "pid " + std::to_string(p.pid) + " " + p.command + ": more overdrawn leases than leases" + where);
        expect(p.tokens_held >= std::uint64_t{p.tokens_explicit} + (p.threads_active - p.leases_overdrawn),
               "pid " + std::to_string(p.pid) + " " + p.command + ": holds " + std::to_string(p.tokens_held) +
                   " tokens, fewer than its leases and acquisitions" + where);
        expect(p.tokens_waited <= p.tokens_wanted || p.waiters == 0,
               p.command + ": waits for more than it wants" + where);
    }
    expect(held <= capacity, "sum of tokens_held " + std::to_string(held) + " > capacity " +
                                 std::to_string(capacity) + where);
    expect(stats.tokens_free + held == capacity,
           "tokens_free " + std::to_string(stats.tokens_free) + " + held " + std::to_string(held) +
               " != capacity " + std::to_string(capacity) + where);
}

// Runs a thread's body; an exception from the arbiter is a failure, not std::terminate.
template <class Body>
void guarded(const char* who, Body&& body) {
    try {
        body();
    } catch (const std::exception& e) {
        fail(std::string("exception in ") + who + ": " + e.what());
    }
}

void check_invariants(Arbiter& arbiter, const char* who) {
    const std::string problems = arbiter.check_invariants();
    expect(problems.empty(), std::string("check_invariants() via ") + who + ": " + problems);
}

class Worker {
public:
    Worker(unsigned index, Arbiter& arbiter, std::uint64_t seed, Quiescence& quiescence)
        : m_index(index), m_arbiter(arbiter), m_random(seed), m_quiescence(quiescence) {}

    void run(Clock::time_point deadline) {
        while (Clock::now() < deadline) {
            m_quiescence.checkpoint();
            step();
        }
        release_everything();
        m_quiescence.retire();
    }

    const Holdings& holdings() const { return m_holdings; }
    const OpCounts& counts() const { return m_counts; }

private:
    std::uint32_t uniform(std::uint32_t low, std::uint32_t high) {
        return std::uniform_int_distribution<std::uint32_t>(low, high)(m_random);
    }

    void step() {
        const std::uint32_t capacity = m_arbiter.capacity();
        const std::uint32_t roll = uniform(0, 99);
        if (roll < 16) {
            open_lease(capacity);
        } else if (roll < 34) {
            refresh_lease(capacity);
        } else if (roll < 50) {
            close_lease();
        } else if (roll < 66) {
            acquire_nowait(capacity);
        } else if (roll < 82) {
            release_some();
        } else if (roll < 88) {
            acquire_blocking(capacity);
        } else if (roll < 91) {
            self_check();
        } else if (roll < 92) {
            set_pool_demand(capacity);
        } else {
            go_idle();
        }
    }

    void open_lease(std::uint32_t capacity) {
        if (m_holdings.leases.size() >= kMaxLeasesPerWorker) return close_lease();
        const std::uint32_t extra_wanted = uniform(0, capacity);
        OpenLease lease{0, LeaseState{}, uniform(0, 1) == 0};
        const std::int32_t pool_owner_pid = lease.for_pool ? static_cast<std::int32_t>(::getpid()) : 0;
        lease.epoch = m_arbiter.lease_open(extra_wanted, pool_owner_pid, lease.state);
        check_lease_state(lease.state, extra_wanted, capacity, "lease_open");
        if (lease.for_pool)
            expect(lease.state.owner < composepar::kSlotCount && lease.state.owner_pid == pool_owner_pid,
                   "a lease for this process's own pool is not counted for it");
        else
            expect(lease.state.owner == composepar::kSlotCount && lease.state.owner_pid == 0,
                   "a lease for no pool is counted for a pool owner");
        m_holdings.leases.push_back(lease);
        ++m_counts.opens;
        if (lease.for_pool) ++m_counts.opens_for_pool;
        if (!lease.state.own_token) ++m_counts.opens_overdrawn;
        if (lease.state.tokens_extra > 0) ++m_counts.opens_with_extras;
    }

    void refresh_lease(std::uint32_t capacity) {
        if (m_holdings.leases.empty()) return open_lease(capacity);
        OpenLease& lease = m_holdings.leases[pick(m_holdings.leases.size())];
        const LeaseState before = lease.state;
        const std::uint32_t extra_wanted = uniform(0, 2) == 0 ? lease.state.extra_wanted : uniform(0, capacity);
        m_arbiter.lease_refresh(lease.epoch, extra_wanted, lease.state);
        check_lease_state(lease.state, extra_wanted, capacity, "lease_refresh");
        expect(before.own_token <= lease.state.own_token, "lease_refresh took a lease's own token away");
        ++m_counts.refreshes;
        if (lease.state.own_token > before.own_token) ++m_counts.refresh_took_own;
        if (lease.state.tokens_extra > before.tokens_extra) ++m_counts.refresh_grew;
        // Fewer extras than both before and the new ask: given back to the fair share.
        if (lease.state.tokens_extra < std::min(before.tokens_extra, extra_wanted)) ++m_counts.refresh_gave_back;
    }

    void close_lease() {
        if (m_holdings.leases.empty()) return;
        const std::size_t i = pick(m_holdings.leases.size());
        OpenLease lease = m_holdings.leases[i];
        m_holdings.leases.erase(m_holdings.leases.begin() + static_cast<std::ptrdiff_t>(i));
        m_arbiter.lease_close(lease.epoch, lease.state);
        expect(lease.state.own_token == 0 && lease.state.tokens_extra == 0, "lease_close left tokens in the lease");
        ++m_counts.closes;
    }

    void acquire_nowait(std::uint32_t capacity) {
        const std::uint32_t min_tokens = uniform(1, std::min<std::uint32_t>(3, capacity));
        const std::uint32_t max_tokens = uniform(0, 1) == 0 ? min_tokens : uniform(min_tokens, capacity);
        const std::uint32_t granted = m_arbiter.acquire_nowait(min_tokens, max_tokens);
        expect(granted == 0 || (granted >= min_tokens && granted <= max_tokens),
               "acquire_nowait(" + std::to_string(min_tokens) + ", " + std::to_string(max_tokens) + ") granted " +
                   std::to_string(granted));
        m_holdings.tokens_explicit += granted;
        ++(granted ? m_counts.nowait_granted : m_counts.nowait_refused);
    }

    void acquire_blocking(std::uint32_t capacity) {
        const std::uint32_t min_tokens = uniform(1, std::min<std::uint32_t>(2, capacity));
        const std::uint32_t max_tokens = uniform(0, 1) == 0 ? min_tokens : uniform(min_tokens, capacity);
        // Mostly 50 us - 5 ms, sometimes 0 (the no-wait path of acquire()).
        const std::int64_t timeout_ns = uniform(0, 9) == 0 ? 0 : std::int64_t{uniform(50, 5000)} * 1000;
        // Rarely a check that says "interrupted", to cover that exit too.
        const bool interrupting = uniform(0, 19) == 0;
        const composepar::InterruptCheck interrupted = [interrupting] { return interrupting; };
        std::uint32_t granted = 0;
        const AcquireOutcome outcome = m_arbiter.acquire(min_tokens, max_tokens, timeout_ns, interrupted, granted);
        const std::string call =
            "acquire(" + std::to_string(min_tokens) + ", " + std::to_string(max_tokens) + ", timeout)";
        switch (outcome) {
            case AcquireOutcome::granted:
                expect(granted >= min_tokens && granted <= max_tokens,
                       call + " granted " + std::to_string(granted));
                m_holdings.tokens_explicit += granted;
                ++m_counts.acquire_granted;
                break;
            case AcquireOutcome::timed_out:
                expect(granted == 0, call + " timed out but reports " + std::to_string(granted) + " granted");
                ++m_counts.acquire_timed_out;
                break;
            case AcquireOutcome::interrupted:
                expect(interrupting, call + " was interrupted by a check that never interrupts");
                expect(granted == 0, call + " interrupted but reports " + std::to_string(granted) + " granted");
                ++m_counts.acquire_interrupted;
                break;
        }
    }

    void release_some() {
        if (m_holdings.tokens_explicit == 0) return;
        // Half the time all of them, so tokens keep flowing between workers.
        const std::uint32_t n =
            uniform(0, 1) == 0 ? m_holdings.tokens_explicit : uniform(1, m_holdings.tokens_explicit);
        try {
            m_arbiter.release(n);
        } catch (const std::invalid_argument& e) {
            fail("release(" + std::to_string(n) + ") of tokens this worker holds: " + e.what());
        }
        m_holdings.tokens_explicit -= n;
        ++m_counts.releases;
    }

    void self_check() {
        // The slot's explicit tokens include this worker's and its siblings'.
        const std::uint32_t slot_explicit = m_arbiter.tokens_explicit();
        expect(slot_explicit >= m_holdings.tokens_explicit,
               "tokens_explicit() is " + std::to_string(slot_explicit) + " but worker " + std::to_string(m_index) +
                   " alone holds " + std::to_string(m_holdings.tokens_explicit));
        check_invariants(m_arbiter, "a worker");
        expect(m_arbiter.reap() == 0, "reap() recycled a slot of this live process");
        ++m_counts.checks;
    }

    // Gives everything back and sleeps a little: the number of busy workers
    // varies, so the run sees free capacity (extras granted, grown, given
    // back) as well as overload (overdrawn leases, refused requests).
    void go_idle() {
        release_everything();
        ++m_counts.idles;
        std::this_thread::sleep_for(std::chrono::microseconds(uniform(200, 4000)));
    }

    // Only one worker per handle sets its slot's pool demand, so the
    // quiescent check knows the value the slot must show.
    void set_pool_demand(std::uint32_t capacity) {
        if (m_index >= kHandleCount) return;
        m_holdings.pool_demand = uniform(0, 1) == 0 ? 0 : uniform(1, capacity);
        m_arbiter.set_pool_demand(m_holdings.pool_demand);
        ++m_counts.pool_demands;
    }

    void release_everything() {
        if (m_index < kHandleCount && m_holdings.pool_demand != 0) {
            m_holdings.pool_demand = 0;
            m_arbiter.set_pool_demand(0);
        }
        while (!m_holdings.leases.empty()) close_lease();
        if (m_holdings.tokens_explicit > 0) {
            m_arbiter.release(m_holdings.tokens_explicit);
            m_holdings.tokens_explicit = 0;
            ++m_counts.releases;
        }
    }

    std::size_t pick(std::size_t size) {
        return std::uniform_int_distribution<std::size_t>(0, size - 1)(m_random);
    }

    unsigned m_index;              // position among the workers
    Arbiter& m_arbiter;            // the handle this worker uses
    std::mt19937_64 m_random;      // seeded from --seed and m_index
    Quiescence& m_quiescence;      // where it parks for exact checks
    Holdings m_holdings;           // what it holds now
    OpCounts m_counts;             // what it did
};

const ProcessStats* find_slot(const SegmentStats& stats, const char* command) {
    const int self = static_cast<int>(::getpid());
    const ProcessStats* found = nullptr;
    for (const ProcessStats& p : stats.processes) {
        if (p.pid != self || p.command != command) continue;
        expect(found == nullptr, std::string("two slots labelled ") + command);
        found = &p;
    }
    return found;
}

// With every worker parked: each slot must hold exactly what its workers hold.
void check_quiescent(Arbiter& arbiter, std::uint32_t capacity, const std::vector<Worker>& workers) {
    const SegmentStats stats = arbiter.stats();
    check_snapshot(stats, capacity, "quiescent");
    check_invariants(arbiter, "the checker, quiescent");
    std::uint64_t held_total = 0;
    for (unsigned h = 0; h < kHandleCount; ++h) {
        std::uint32_t leases = 0, overdrawn = 0, held = 0, explicit_tokens = 0, wanted = 0, pool_leases = 0;
        const std::uint32_t pool_demand = workers[h].holdings().pool_demand;
        for (std::size_t w = h; w < workers.size(); w += kHandleCount) {
            const Holdings& mine = workers[w].holdings();
            explicit_tokens += mine.tokens_explicit;
            held += mine.tokens_explicit;
            for (const OpenLease& lease : mine.leases) {
                ++leases;
                pool_leases += lease.for_pool ? 1 : 0;
                overdrawn += 1 - lease.state.own_token;
                held += lease.state.own_token + lease.state.tokens_extra;
                wanted += lease_wanted(lease.state);
            }
        }
        held_total += held;
        const ProcessStats* slot = find_slot(stats, kCommands[h]);
        ProcessStats none{};
        none.command = kCommands[h];
        const ProcessStats& s = slot ? *slot : none;  // a handle registers on its first call
        const std::string who = std::string("slot ") + kCommands[h] + ": ";
        expect(s.threads_active == leases, who + "threads_active " + std::to_string(s.threads_active) +
                                               ", workers hold " + std::to_string(leases) + " leases");
        expect(s.leases_overdrawn == overdrawn, who + "leases_overdrawn " + std::to_string(s.leases_overdrawn) +
                                                    ", workers have " + std::to_string(overdrawn));
        expect(s.tokens_held == held, who + "tokens_held " + std::to_string(s.tokens_held) + ", workers hold " +
                                          std::to_string(held));
        expect(s.tokens_explicit == explicit_tokens, who + "tokens_explicit " +
                                                         std::to_string(s.tokens_explicit) + ", workers hold " +
                                                         std::to_string(explicit_tokens));
        expect(s.tokens_wanted == wanted, who + "tokens_wanted " + std::to_string(s.tokens_wanted) +
                                              ", the workers' leases want " + std::to_string(wanted));
        expect(s.waiters == 0 && s.tokens_waited == 0, who + "waiters left behind by acquire()");
        expect(s.pool_demand == pool_demand, who + "pool_demand " + std::to_string(s.pool_demand) + ", last set " +
                                                 std::to_string(pool_demand));
        expect(s.pool_leases_open == pool_leases, who + "pool_leases_open " + std::to_string(s.pool_leases_open) +
                                                      ", workers hold " + std::to_string(pool_leases) +
                                                      " leases for this process's pools");
    }
    expect(stats.tokens_free + held_total == capacity,
           "tokens_free " + std::to_string(stats.tokens_free) + " + what the workers hold " +
               std::to_string(held_total) + " != capacity");
}

}  // namespace

int main(int argc, char** argv) {
    Options options = parse_options(argc, argv);
    if (!options.seed_given)
        options.seed = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()) ^
                       (std::uint64_t{static_cast<std::uint32_t>(::getpid())} << 32);
    g_seed = options.seed;
    g_path = "/dev/shm/composepar-" + std::to_string(::geteuid()) + "-tsan-" + std::to_string(::getpid());
    ::unlink(g_path.c_str());  // a leftover of a crashed run with a recycled pid
#ifdef COMPOSEPAR_TSAN
    __sanitizer_set_death_callback(remove_segment_on_sanitizer_death);
#endif

    try {
        Arbiter first(g_path, options.capacity, options.capacity, kCommands[0]);
        Arbiter second(g_path, options.capacity, options.capacity, kCommands[1]);
        Arbiter* handles[kHandleCount] = {&first, &second};
        const std::uint32_t capacity = options.capacity;
        expect(second.capacity() == capacity, "the second handle sees another capacity");

        Quiescence quiescence(options.threads);
        std::vector<Worker> workers;
        workers.reserve(options.threads);
        std::seed_seq seeds{options.seed, options.seed >> 32};
        std::vector<std::uint64_t> worker_seeds(options.threads);
        {
            std::vector<std::uint32_t> raw(2 * options.threads);
            seeds.generate(raw.begin(), raw.end());
            for (unsigned i = 0; i < options.threads; ++i)
                worker_seeds[i] = (std::uint64_t{raw[2 * i]} << 32) | raw[2 * i + 1];
        }
        for (unsigned i = 0; i < options.threads; ++i)
            workers.emplace_back(i, *handles[i % kHandleCount], worker_seeds[i], quiescence);

        const Clock::time_point start = Clock::now();
        const Clock::time_point deadline =
            start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.seconds));
        std::atomic<bool> done{false};

        // A deadlock in the arbiter must fail the test, not hang CTest.
        std::thread watchdog([&done, deadline] {
            const Clock::time_point give_up = deadline + std::chrono::seconds(60);
            while (!done.load(std::memory_order_acquire)) {
                if (Clock::now() > give_up) fail("still running 60 s after the deadline: deadlock?");
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
        });

        std::vector<std::thread> threads;
        for (Worker& worker : workers)
            threads.emplace_back([&worker, deadline] { guarded("a worker", [&] { worker.run(deadline); }); });

        std::uint64_t snapshots = 0, quiescent_checks = 0;
        const auto check_while_running = [&] {
            std::mt19937_64 random(options.seed ^ 0x9e3779b97f4a7c15ULL);
            Clock::time_point next_quiescent = Clock::now() + std::chrono::milliseconds(50);
            for (unsigned turn = 0; Clock::now() < deadline; ++turn) {
                Arbiter& arbiter = *handles[turn % kHandleCount];
                check_invariants(arbiter, "the checker");
                check_snapshot(arbiter.stats(), capacity, "the checker");
                ++snapshots;
                if (Clock::now() >= next_quiescent) {
                    if (!quiescence.pause()) break;  // every worker has finished
                    check_quiescent(arbiter, capacity, workers);
                    quiescence.resume();
                    ++quiescent_checks;
                    next_quiescent = Clock::now() + std::chrono::milliseconds(50);
                }
                std::this_thread::sleep_for(
                    std::chrono::microseconds(std::uniform_int_distribution<int>(0, 2000)(random)));
            }
        };
        std::thread checker([&] { guarded("the checker", check_while_running); });

        // A follower (arbiter.cpp, "Followers") sleeps on the policy word
        // while the workers hammer: ThreadSanitizer sees its reads of the
        // header's words against the workers' bumps, and the hammering must
        // wake it (tokens freed while wanted, claimants arriving).
        std::atomic<std::uint64_t> follower_wakes{0};
        std::thread follower([&] {
            guarded("the follower", [&] {
                Arbiter& arbiter = *handles[1 % kHandleCount];
                while (Clock::now() < deadline) {
                    const std::uint32_t seen = arbiter.policy_seq();
                    arbiter.wait_policy(seen, composepar::kFollowGrow | composepar::kFollowShrink, 20'000'000);
                    if (arbiter.policy_seq() != seen) follower_wakes.fetch_add(1, std::memory_order_relaxed);
                }
            });
        });

        for (std::thread& t : threads) t.join();
        checker.join();
        follower.join();
        expect(follower_wakes.load() > 0, "the workers' hammering never moved the policy word a follower waits on");

        // Everything was given back: the segment is whole again.
        OpCounts total;
        for (const Worker& worker : workers) total.add(worker.counts());
        for (Arbiter* arbiter : handles) {
            const SegmentStats stats = arbiter->stats();
            check_snapshot(stats, capacity, "final");
            expect(stats.tokens_free == capacity, "after every worker released everything, tokens_free is " +
                                                      std::to_string(stats.tokens_free) + ", not the capacity " +
                                                      std::to_string(capacity));
            check_invariants(*arbiter, "final");
        }
        check_quiescent(first, capacity, workers);
        const SegmentStats before_detach = first.stats();
        expect(before_detach.processes.size() == kHandleCount,
               "expected two slots of this process, stats() lists " +
                   std::to_string(before_detach.processes.size()));
        expect(before_detach.tokens_reclaimed == 0 && before_detach.processes_reaped == 0,
               "a slot of this live process was reaped");

        // Detaching both handles frees both slots; retiring then unlinks.
        second.detach();
        first.detach();
        const SegmentStats after_detach = first.stats();
        expect(after_detach.processes.empty(), "slots still listed after detach()");
        expect(after_detach.tokens_free == capacity, "tokens lost by detach()");
        check_invariants(first, "after detach");
        const std::vector<int> blockers = first.retire_and_unlink();
        expect(blockers.empty(), "retire_and_unlink() found " + std::to_string(blockers.size()) + " live process(es)");
        expect(::access(g_path.c_str(), F_OK) != 0, "retire_and_unlink() left " + g_path);

        done.store(true, std::memory_order_release);
        watchdog.join();

        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        std::printf(
            "arbiter_stress: OK seed=%llu threads=%u handles=%u capacity=%u seconds=%.1f | leases opened=%llu "
            "(overdrawn %llu, with extras %llu, for a pool %llu) refreshed=%llu (took own %llu, grew %llu, gave "
            "back %llu) closed=%llu pool demands set=%llu | acquire_nowait granted=%llu refused=%llu | acquire "
            "granted=%llu timed_out=%llu interrupted=%llu | releases=%llu idles=%llu | worker checks=%llu "
            "snapshots=%llu quiescent checks=%llu\n",
            static_cast<unsigned long long>(options.seed), options.threads, kHandleCount, capacity, elapsed,
            static_cast<unsigned long long>(total.opens), static_cast<unsigned long long>(total.opens_overdrawn),
            static_cast<unsigned long long>(total.opens_with_extras),
            static_cast<unsigned long long>(total.opens_for_pool), static_cast<unsigned long long>(total.refreshes),
            static_cast<unsigned long long>(total.refresh_took_own),
            static_cast<unsigned long long>(total.refresh_grew),
            static_cast<unsigned long long>(total.refresh_gave_back), static_cast<unsigned long long>(total.closes),
            static_cast<unsigned long long>(total.pool_demands),
            static_cast<unsigned long long>(total.nowait_granted),
            static_cast<unsigned long long>(total.nowait_refused),
            static_cast<unsigned long long>(total.acquire_granted),
            static_cast<unsigned long long>(total.acquire_timed_out),
            static_cast<unsigned long long>(total.acquire_interrupted),
            static_cast<unsigned long long>(total.releases), static_cast<unsigned long long>(total.idles),
            static_cast<unsigned long long>(total.checks),
            static_cast<unsigned long long>(snapshots), static_cast<unsigned long long>(quiescent_checks));
        expect(total.opens > 0 && total.nowait_granted > 0 && total.acquire_granted > 0 && quiescent_checks > 0,
               "some operation never happened: the run was too short to mean anything");
    } catch (const std::exception& e) {
        fail(std::string("exception: ") + e.what());
    }
    ::unlink(g_path.c_str());
    return 0;
}
