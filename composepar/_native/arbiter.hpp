// The arbiter: hands out thread tokens from one shared-memory segment to
// every cooperating process of a user on a machine.
//
// Public API first. Policy (fair share, work conservation, reclaiming the
// tokens of dead processes) is described in arbiter.cpp beside the code
// that implements it, and in the Python module docstring.
#pragma once

#include "layout.hpp"
#include "posix.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace composepar {

// The segment's capacity differs from the one the caller asked for.
class CapacityMismatch : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// `cleanup` retired the segment after this handle attached; attach again.
class SegmentRetired : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// This process's slot was recycled while it was alive (its fd was closed
// behind our back and /proc no longer recognised it).
class SlotLost : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// One attached process's line in stats().
struct ProcessStats {
    int pid;
    std::string command;
    std::uint32_t threads_active;
    std::uint32_t leases_overdrawn;
    std::uint32_t tokens_held;
    std::uint32_t tokens_explicit;
    std::uint32_t tokens_wanted;
    std::uint32_t waiters;
    std::uint32_t tokens_waited;
    std::uint32_t pool_demand;
    std::uint32_t pool_leases_open;
};

struct SegmentStats {
    std::uint32_t capacity;
    std::uint32_t tokens_free;
    std::uint32_t claimants;
    std::uint64_t tokens_reclaimed;
    std::uint64_t processes_reaped;
    std::vector<ProcessStats> processes;
};

// The result of a lease operation: how the lease stands now.
struct LeaseState {
    std::uint32_t own_token;     // 1 if the lease holds its thread's token, 0 if overdrawn
    std::uint32_t tokens_extra;  // extra tokens held for inner native threads
    std::uint32_t extra_wanted;  // extras asked for (granted or not)
    std::uint32_t owner = kSlotCount;  // slot of the pool owner it is counted for; kSlotCount: none
    std::int32_t owner_pid = 0;        // that owner's pid, checked before the count is undone
    std::uint32_t open = 0;            // 1 from lease_open until lease_close
};

// What a follower waits for (Arbiter::wait_policy; arbiter.cpp, "Followers").
inline constexpr std::uint32_t kFollowGrow = 1u << 0;    // one of its leases wants more
inline constexpr std::uint32_t kFollowShrink = 1u << 1;  // one of its leases holds extras

// Outcome of an explicit acquisition attempt.
enum class AcquireOutcome { granted, timed_out, interrupted };

// Called about every 100 ms while acquire() blocks; returning true aborts
// the wait (the binding uses it to let Ctrl-C through).
using InterruptCheck = std::function<bool()>;

class Arbiter {
public:
    // Opens (or creates) the segment at `path` for this user.
    // `capacity` 0 means "use the segment's"; a new segment then gets
    // `default_capacity`. A nonzero `capacity` that differs from an
    // existing segment's throws CapacityMismatch.
    Arbiter(std::string path, std::uint32_t capacity, std::uint32_t default_capacity,
            std::string command);
    ~Arbiter();
    Arbiter(const Arbiter&) = delete;
    Arbiter& operator=(const Arbiter&) = delete;

    const std::string& path() const noexcept { return m_path; }
    std::uint32_t capacity() const noexcept { return m_segment->header.capacity; }

    // --- explicit tokens (owned by the process, released by any thread) ---
    // Grants between min and max tokens now, or 0 if min cannot be had.
    std::uint32_t acquire_nowait(std::uint32_t min_tokens, std::uint32_t max_tokens);
    // Blocks until min can be granted, `timeout_ns` passes (< 0: never) or
    // `interrupted` says stop. `granted` receives the count on success.
    AcquireOutcome acquire(std::uint32_t min_tokens, std::uint32_t max_tokens,
                           std::int64_t timeout_ns, const InterruptCheck& interrupted,
                           std::uint32_t& granted);
    // Returns n explicit tokens. Throws std::invalid_argument if this
    // process holds fewer than n.
    void release(std::uint32_t n);
    std::uint32_t tokens_explicit();

    // --- leases: one per thread running a task (never blocks) ---
    // Takes the thread's own token if one is free (else runs overdrawn) and
    // up to `extra_wanted` extras within the fair-share policy. A lease for
    // a pool's task names the pid of the process that submitted it
    // (`pool_owner_pid`, this process's own for a thread pool, 0 for none):
    // it is counted against that owner's pool demand.
    std::uint64_t lease_open(std::uint32_t extra_wanted, std::int32_t pool_owner_pid, LeaseState& state);
    // Re-applies the policy: takes the own token if it was overdrawn and
    // one is free, grows extras from free capacity, or gives extras above
    // the fair share back when another process below its share wants them.
    void lease_refresh(std::uint64_t lease_epoch, std::uint32_t extra_wanted, LeaseState& state);
    // Gives everything back. A lease opened before a fork is a no-op in the child.
    void lease_close(std::uint64_t lease_epoch, LeaseState& state);

    // --- pools this process owns ---
    // Tasks this process's pools expect to run now (sum of min(workers,
    // outstanding tasks)). Those without a lease yet count as claimants,
    // so the first task of a pool does not take its siblings' share.
    void set_pool_demand(std::uint32_t tasks);

    // --- followers (arbiter.cpp, "Followers") ---
    // The segment's policy sequence: read it before refreshing the leases,
    // then pass it to wait_policy.
    std::uint32_t policy_seq() const noexcept;
    // Sleeps until policy_seq() moves on from `seen` with an event in
    // `interest` (kFollowGrow | kFollowShrink, or 0 for none), this
    // process's wake_follower(), or `timeout_ns` (< 0: now). Spurious
    // returns happen; the caller refreshes and looks again.
    void wait_policy(std::uint32_t seen, std::uint32_t interest, std::int64_t timeout_ns);
    // Wakes this process's follower, whatever it waits for.
    void wake_follower();

    // --- observation and maintenance ---
    SegmentStats stats();
    // Empty if tokens_free + sum(held) == capacity and every cached total
    // equals its sum over slots; otherwise what is wrong.
    std::string check_invariants();
    // Returns the tokens of dead processes now; returns how many processes were reaped.
    std::uint32_t reap();
    // Releases this process's slot (tokens included). Safe to call twice.
    void detach();
    // Marks the segment retired and unlinks it, if no live process other
    // than this one is attached. Returns the live pids that prevented it.
    std::vector<int> retire_and_unlink();

private:
    class Guard;
    struct Edit;

    void open_or_create(std::uint32_t capacity, std::uint32_t default_capacity);
    bool try_open_existing(std::uint32_t capacity);
    void create(std::uint32_t capacity);
    void validate(int fd, const std::string& path);
    void ensure_registered(Guard& guard);
    void register_slot(Guard& guard);
    Slot& own_slot(Guard& guard);
    bool slot_is_alive(std::uint32_t index) const;
    // claims_only: skip the slots that hold and claim nothing (the periodic sweep).
    std::uint32_t reap_locked(bool& freed_tokens, bool claims_only = false);
    // reap_locked() if kSweepEveryNs passed since the domain's last sweep
    // (Header::next_sweep_ns); true if it reaped a process. Under the mutex.
    bool maybe_sweep_locked(bool& freed_tokens);
    void repair_after_owner_death();
    // The caller's part of its own slot, taken out when the policy looks
    // for *other* claimants below their share.
    struct Claim {
        std::uint32_t held;       // tokens the caller holds
        std::uint32_t wanted;     // the caller's recorded unsatisfied demand
        std::uint32_t overdrawn;  // 1 if the caller is an overdrawn lease
        std::uint32_t counted;    // 1 if the caller is already counted in claimants(slot)
    };
    std::uint32_t fair_share(const Claim& mine) const;
    bool another_is_below_share_and_wanting(const Claim& mine) const;
    std::uint32_t grant_cap(const Claim& mine, std::uint32_t wanted) const;
    std::uint32_t try_grant_explicit(Guard& guard, std::uint32_t min_tokens, std::uint32_t max_tokens,
                                     bool waiting, bool& freed_tokens);
    void commit_lease(Slot& s, const LeaseState& before, const LeaseState& after);
    std::uint32_t find_pool_owner(Slot& self, std::int32_t pool_owner_pid);
    void uncount_for_owner(Slot& worker, std::uint32_t owner, std::int32_t owner_pid, std::uint32_t leases);

    std::string m_path;                 // /dev/shm/composepar-<uid>-<domain>
    FileDescriptor m_fd;                // kept open for life: carries the slot's fcntl lock
    SharedMapping m_mapping;            // the whole segment
    Segment* m_segment = nullptr;       // == m_mapping.data()
    std::string m_command;              // label written into the slot
    std::uint32_t m_slot = kSlotCount;  // own slot index; kSlotCount: not registered
    int m_pid = 0;                      // pid that registered m_slot
    std::uint64_t m_start_time = 0;     // its start time
    std::uint64_t m_fork_generation = 0;  // g_fork_generation when m_slot was registered
    std::uint64_t m_epoch = 0;          // stamped on leases; new at each registration
};

}  // namespace composepar
