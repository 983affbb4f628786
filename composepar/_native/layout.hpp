// The fixed layout of an arbiter segment in shared memory.
//
// One segment per (user, domain) lives at /dev/shm/composepar-<uid>-<domain>.
// Every cooperating process maps it; all of them read and write the fields
// below, so the layout is an ABI: fixed-width fields only, checked by the
// static_asserts at the bottom, and kAbiVersion bumped whenever it changes.
//
//   +-----------------------------+  offset 0
//   | Header                      |  magic, ABI, sizes, capacity, mutex,
//   |                             |  wake word, totals derived from slots
//   +-----------------------------+  sizeof(Header)
//   | Slot[0] .. Slot[kSlotCount) |  one per attached process
//   +-----------------------------+  sizeof(Segment)
//
// Concurrency: everything except Header::wake_seq, policy_seq and
// policy_sleepers is read and written only with Header::mutex held (a
// robust, process-shared pthread mutex). The per-slot fields are the
// source of truth; the Header totals are caches of sums over slots,
// recomputed from the slots when a process dies holding the mutex
// (EOWNERDEAD), so a crash in the middle of an update never loses a token.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace composepar {

// "CPARBITR" in little-endian bytes: the first eight bytes of every segment.
inline constexpr std::uint64_t kMagic = 0x5254494252415043ULL;
// Increment whenever the layout of Header or Slot changes.
inline constexpr std::uint32_t kAbiVersion = 2;
// The most processes attached to one segment at once.
inline constexpr std::uint32_t kSlotCount = 4096;
// The largest capacity a segment accepts (tokens are counted in uint32).
inline constexpr std::uint32_t kMaxCapacity = 1u << 16;
// Bytes reserved for Header::mutex, whatever the target's pthread_mutex_t.
inline constexpr std::size_t kMutexRoom = 64;
// Byte offset of the fcntl lock that marks slot i as owned by a live
// process: kSlotLockBase + i. Beyond the end of the file, which is allowed.
inline constexpr std::int64_t kSlotLockBase = std::int64_t{1} << 30;

struct alignas(64) Slot {
    // --- identity; owner_pid == 0 means the slot is free ---
    std::int32_t owner_pid;          // pid of the attached process
    std::uint32_t reserved0;         // zero
    std::uint64_t owner_start_time;  // field 22 of /proc/<pid>/stat: tells a reused pid apart
    char command[16];                // NUL-padded label shown by `status`

    // --- what the process counts; invariants, all under the mutex ---
    // leases_overdrawn <= threads_active
    // tokens_held >= tokens_explicit + (threads_active - leases_overdrawn)
    std::uint32_t threads_active;    // open leases: threads running a task
    std::uint32_t leases_overdrawn;  // open leases that run without their own token
    std::uint32_t tokens_held;       // every token this process holds: leases' own + extras + explicit
    std::uint32_t tokens_explicit;   // the part of tokens_held taken by acquire(); release() draws here
    std::uint32_t tokens_wanted;     // demand asked for and not granted (leases and blocked waiters)
    std::uint32_t waiters;           // threads blocked in acquire()
    std::uint32_t tokens_waited;     // sum of min_tokens the blocked waiters wait for

    // --- pools this process owns (it submits their tasks) ---
    // Tasks that are expected but have no lease yet count as claimants:
    // pool_unstarted(slot) = max(0, pool_demand - pool_leases_open)
    std::uint32_t pool_demand;       // tasks its pools expect to run now: sum of min(workers, outstanding)
    std::uint32_t pool_leases_open;  // leases now open for its pools' tasks, here or in worker processes

    // --- the pool this process works for (a pool worker) ---
    std::uint32_t pool_owner;        // slot index of that pool's owner; kSlotCount if none
    std::int32_t pool_owner_pid;     // its pid: a recycled owner slot is not ours
    std::uint32_t leases_for_owner;  // this slot's open leases counted in pool_owner's pool_leases_open
    std::uint32_t reserved1[12];     // zero
};

struct Header {
    // --- identity, written once by the creator before the segment is published ---
    std::atomic<std::uint64_t> magic;  // kMagic; stored last with release by the creator
    std::uint32_t abi_version;         // kAbiVersion
    std::uint32_t header_bytes;        // sizeof(Header)
    std::uint64_t segment_bytes;       // sizeof(Segment)
    std::uint32_t capacity;            // tokens in the segment, 1..kMaxCapacity
    std::uint32_t slot_count;          // kSlotCount
    std::uint32_t owner_uid;           // the only user that may attach
    std::uint32_t retired;             // 1 once `cleanup` unlinked the file: attachers retry

    // Robust + process-shared; guards every field below and all slots. Its
    // size differs between targets (40 bytes on glibc x86-64, 48 on
    // aarch64): the union reserves kMutexRoom so that every later offset is
    // the same on every 64-bit Linux target.
    union {
        pthread_mutex_t mutex;
        unsigned char mutex_room[kMutexRoom];
    };

    // Futex word that blocked acquirers sleep on. Bumped (release order,
    // under the mutex) whenever tokens are freed while waiters_total > 0;
    // a waiter reads it under the mutex before sleeping, so a bump between
    // its unlock and its FUTEX_WAIT makes the wait return at once.
    alignas(64) std::atomic<std::uint32_t> wake_seq;

    // --- caches of sums over slots, recomputed on EOWNERDEAD ---
    // tokens_free + sum(slot.tokens_held) == capacity
    std::uint32_t tokens_free;
    std::uint32_t claimants_total;  // sum over slots of claimants(slot) (see arbiter.cpp)
    std::uint32_t wanted_total;     // sum(slot.tokens_wanted)
    std::uint32_t waiters_total;    // sum(slot.waiters)
    std::uint32_t slots_used;       // slots [slots_used, kSlotCount) have never been used
    std::uint32_t pool_unstarted_total;  // sum over slots of max(0, pool_demand - pool_leases_open)
    std::uint64_t tokens_reclaimed;   // tokens taken back from dead processes, ever
    std::uint64_t processes_reaped;   // dead processes whose slot was recycled, ever
    // CLOCK_MONOTONIC ns before which no call sweeps for dead processes
    // (arbiter.cpp, maybe_sweep_locked); 0 in a new segment: the first call
    // sweeps. In what was the header's tail padding: same size, same ABI (a
    // segment made before it has zeros there). The clock is the boot's: every
    // process of a segment shares it (the pid rule already asks one kernel).
    std::uint64_t next_sweep_ns;

    // --- event-driven growth: the followers' futex word (arbiter.cpp, "Followers") ---
    // Bumped (seq_cst, under the mutex) by every critical section whose change
    // may let a running lease grow or oblige one to give back; a follower
    // reads it before it refreshes its leases and sleeps on it with
    // FUTEX_WAIT_BITSET, so a bump after its read makes its wait return at
    // once. Also bumped (without the mutex) by a process waking its own
    // follower. Both fields sit in what was tail padding: same size, same
    // ABI; a segment made before them has zeros, and its older users simply
    // never wake a follower (followers also wake on a timeout).
    std::atomic<std::uint32_t> policy_seq;
    // Followers between their registration and the end of their wait
    // (seq_cst both sides): a critical section skips the wake syscall when 0.
    std::atomic<std::uint32_t> policy_sleepers;
};

struct Segment {
    Header header;
    Slot slots[kSlotCount];
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint32_t>) == 4);
static_assert(std::is_standard_layout_v<Header> && std::is_standard_layout_v<Slot>);
static_assert(sizeof(Slot) == 128, "Slot layout changed: bump kAbiVersion");
static_assert(offsetof(Slot, threads_active) == 32);
static_assert(offsetof(Slot, pool_demand) == 60);
static_assert(offsetof(Header, magic) == 0, "magic must come first");
static_assert(offsetof(Header, abi_version) == 8);
static_assert(offsetof(Header, capacity) == 24);
static_assert(offsetof(Header, mutex) == 40);
static_assert(sizeof(pthread_mutex_t) <= kMutexRoom, "this target's mutex does not fit the room the ABI reserves");
static_assert(offsetof(Header, wake_seq) == 128);
static_assert(offsetof(Header, next_sweep_ns) == 176);
static_assert(offsetof(Header, policy_seq) == 184);
static_assert(offsetof(Header, policy_sleepers) == 188);
static_assert(sizeof(Header) == 192, "Header layout changed: bump kAbiVersion");
static_assert(offsetof(Segment, slots) == sizeof(Header));

}  // namespace composepar
