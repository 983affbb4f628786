// The arbiter's policy and its crash safety.
//
// Tokens and claimants
// --------------------
// A token is the right to run one busy thread. A *claimant* is something
// that competes for tokens: an open lease (one thread running a task), a
// thread blocked in acquire(), or a process's explicit holding as a whole.
//
//     claimants(slot) = threads_active + waiters + (tokens_explicit > 0)
//     fair share      = max(1, capacity / claimants_total)
//
// Policy, applied under the mutex at every open, refresh and acquisition:
//   * A lease takes its thread's own token if one is free, else runs
//     overdrawn (it never blocks: the thread is already running).
//   * Extras come only from free tokens. A claimant is raised above the
//     fair share only while no *other* process is below its share
//     (held < claimants * share) with demand it was not granted
//     (tokens_wanted > 0): capacity nobody asks for goes to whoever asks.
//   * refresh() gives extras above the share back when such a process
//     exists, and grows extras when tokens are free: running holders pick
//     up what finished ones freed.
//   * acquire(min, max) grants min..max at once or waits on a futex; min
//     is always honoured when min tokens are free, even above the share.
//
//     capacity 8, two processes, A opened first and wants 8, B wants 8:
//
//     A alone        A: ######## (share 8)       B: -
//     B opens        A: ######## (8 > share 4)   B: . (overdrawn, wants 8)
//     A refreshes    A: ####     (gave back 4)   B: .  (4 free)
//     B refreshes    A: ####                     B: #### (share 4)
//     A closes       A: -                        B: #### (4 free)
//     B refreshes                                B: ######## (share 8)
//
// Crash safety
// ------------
// Each slot records the owner's pid and start time and the owner holds an
// fcntl lock on byte kSlotLockBase + index of the segment file (released by
// the kernel when the process dies, never inherited by fork children). A
// slot is dead when its lock is free AND /proc no longer shows a living
// process with that pid and start time (a zombie counts as dead). Dead
// slots are reaped, their tokens returned, whenever a request finds fewer
// free tokens than its minimum, every 100 ms by blocked waiters, and by
// the first lease or acquire call of the domain after kSweepEveryNs since
// the last sweep, however many tokens are free (maybe_sweep_locked): a dead
// process's claims (its leases, its pool's expected tasks) would otherwise
// keep capping the survivors' fair share while tokens sit free.
// A process that dies holding the mutex leaves it EOWNERDEAD: the next
// locker recomputes the header's totals from the slots, the source of truth.
//
// Followers
// ---------
// A lease changes only when its thread calls refresh(), so a process whose
// tasks run long has one *follower* thread (composepar/_task.py) that
// refreshes its leases when the policy may give them something: no polling.
// Every critical section compares the header's totals before and after
// (Guard) and, if a lease elsewhere could now grow (tokens came free or a
// cap lifted, while someone wants more: kFollowGrow) or must give back (a
// new claimant or new unmet demand: kFollowShrink), bumps Header::policy_seq
// and wakes, with FUTEX_WAKE_BITSET, only the followers waiting for that
// kind of event; the wake syscall is skipped when no follower sleeps
// (policy_sleepers). A follower waits for kFollowGrow while one of its
// leases wants more, for kFollowShrink while one holds extras, and for
// neither when it has nothing to gain: it then sleeps until its own process
// wakes it (wake_follower). A refresh that changes nothing changes no
// total, so wake-ups stop once every lease stands where the policy puts it.
#include "arbiter.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>

namespace composepar {

namespace {

// Bumped in every forked child, so an Arbiter notices it now lives in a
// new process and registers a slot of its own before touching tokens.
std::atomic<std::uint64_t> g_fork_generation{0};
// Source of lease epochs: each slot registration in this process gets a new one.
std::atomic<std::uint64_t> g_registrations{0};
std::once_flag g_atfork_once;

void on_fork_child() { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

constexpr std::int64_t kWaitSliceNs = 100'000'000;  // blocked waiters reap and check interrupts this often
constexpr std::int64_t kSweepEveryNs = 250'000'000;  // a dead claimant stops counting within this, once anyone calls

std::uint32_t sub_sat(std::uint32_t a, std::uint32_t b) { return a > b ? a - b : 0; }

std::uint32_t pool_unstarted(const Slot& s) { return sub_sat(s.pool_demand, s.pool_leases_open); }

std::uint32_t claimants(const Slot& s) {
    return s.threads_active + s.waiters + (s.tokens_explicit > 0 ? 1u : 0u) + pool_unstarted(s);
}

std::uint32_t lease_wanted(const LeaseState& st) {
    return (1 - st.own_token) + sub_sat(st.extra_wanted, st.tokens_extra);
}

// The domain part of /dev/shm/composepar-<uid>-<domain>.
std::string domain_of(const std::string& path) {
    const std::string name = path.substr(path.rfind('/') + 1);
    const std::size_t after_uid = name.find('-', name.find('-') + 1);
    return after_uid == std::string::npos ? name : name.substr(after_uid + 1);
}

std::string removal_hint(const std::string& path) {
    return " Remove it with `python -m composepar cleanup --force --domain " + domain_of(path) + "` (or `rm " +
           path + "`) once no process uses it.";
}

struct flock byte_lock(short type, std::uint32_t index) {
    struct flock fl;
    std::memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = kSlotLockBase + index;
    fl.l_len = 1;
    return fl;
}

}  // namespace

namespace {

// What a follower can gain from a critical section, as FUTEX_WAKE_BITSET
// bits (see "Followers" at the top); a follower's own wake is another bit.
struct Totals {
    std::uint32_t tokens_free, claimants, wanted, unstarted;

    static Totals of(const Header& h) {
        return {h.tokens_free, h.claimants_total, h.wanted_total, h.pool_unstarted_total};
    }
};

std::uint32_t policy_events(const Totals& before, const Totals& after) {
    std::uint32_t events = 0;
    // Someone may grow: tokens came free, or a cap on growth lifted (fewer
    // claimants raise the share; less unmet demand elsewhere, or fewer
    // expected tasks, may end "another is below its share and wanting"),
    // while tokens are free and somebody wants more.
    const bool freed = after.tokens_free > before.tokens_free;
    const bool caps_lifted = after.claimants < before.claimants || after.wanted < before.wanted ||
                             after.unstarted < before.unstarted;
    if ((freed || caps_lifted) && after.tokens_free > 0 && after.wanted > 0) events |= kFollowGrow;
    // Someone may have to give back: a new claimant, new unmet demand or a
    // new expected task lowers the share of those holding extras.
    if (after.claimants > before.claimants || after.wanted > before.wanted || after.unstarted > before.unstarted)
        events |= kFollowShrink;
    return events;
}

// The bit a process's follower always waits on, so that the process can
// wake it alone (a new lease to follow, exit). Processes whose pids agree
// modulo 30 share it: a rare spurious wake, nothing more.
std::uint32_t own_follow_bit() { return 1u << (2 + static_cast<std::uint32_t>(::getpid()) % 30); }

}  // namespace

// Holds the segment mutex; repairs the totals if its last owner died.
// unlock() may be called early and lock() again (blocked waiters do).
// Every unlock tells the followers what the critical section changed.
class Arbiter::Guard {
public:
    explicit Guard(Arbiter& arbiter) : m_arbiter(arbiter) { lock(); }
    ~Guard() {
        if (!m_locked) return;
        try {
            unlock();
        } catch (...) {
            // A failed futex wake in a destructor: waiters still wake within
            // their 100 ms slice (followers within their timeout), so
            // nothing is lost by swallowing it.
        }
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

    void lock() {
        pthread_mutex_t* mutex = &m_arbiter.m_segment->header.mutex;
        int rc = pthread_mutex_lock(mutex);
        bool repaired = false;
        if (rc == EOWNERDEAD) {
            m_arbiter.repair_after_owner_death();
            pthread_mutex_consistent(mutex);
            repaired = true;
        } else if (rc == ENOTRECOVERABLE) {
            throw SegmentError("arbiter segment " + m_arbiter.m_path +
                               " is unusable: a process died holding its lock and it was not repaired." +
                               removal_hint(m_arbiter.m_path));
        } else if (rc != 0) {
            throw SystemError(rc, "lock the arbiter mutex in " + m_arbiter.m_path);
        }
        m_locked = true;
        m_before = Totals::of(m_arbiter.m_segment->header);
        if (repaired) m_follow_events = kFollowGrow | kFollowShrink;  // the totals were rebuilt: anything may differ
    }

    bool locked() const noexcept { return m_locked; }

    void unlock() {
        Header& h = m_arbiter.m_segment->header;
        const std::uint32_t events = m_follow_events | policy_events(m_before, Totals::of(h));
        m_follow_events = 0;
        // seq_cst, paired with the follower's registration in wait_policy:
        // either it sees this bump and does not sleep, or we see it registered.
        if (events != 0) h.policy_seq.fetch_add(1, std::memory_order_seq_cst);
        m_locked = false;
        pthread_mutex_unlock(&h.mutex);
        if (events != 0 && h.policy_sleepers.load(std::memory_order_seq_cst) > 0)
            futex_wake_bits_shared(reinterpret_cast<std::uint32_t*>(&h.policy_seq), events);
        if (m_wake_pending) {
            m_wake_pending = false;
            futex_wake_all_shared(reinterpret_cast<std::uint32_t*>(&h.wake_seq));
        }
    }

    // Called under the mutex after tokens were freed: sleepers are woken
    // once the mutex is released, so they do not wake into a held lock.
    void wake_waiters_on_unlock() {
        Header& h = m_arbiter.m_segment->header;
        if (h.waiters_total == 0) return;
        // Ordered by the mutex for waiters that read it under the mutex;
        // the kernel compares the word atomically for a waiter between its
        // unlock and its FUTEX_WAIT.
        h.wake_seq.fetch_add(1, std::memory_order_relaxed);
        m_wake_pending = true;
    }

private:
    Arbiter& m_arbiter;
    bool m_locked = false;        // this guard holds the mutex
    bool m_wake_pending = false;  // futex wake owed after unlock
    Totals m_before{};            // the header's totals when the mutex was taken
    std::uint32_t m_follow_events = 0;  // events owed regardless of the totals (a repair)
};

// Applies a change to one slot and carries its effect into the header's
// cached totals, so `tokens_free + sum(held) == capacity` and the other
// sums hold after every edit.
struct Arbiter::Edit {
    template <class Change>
    static void apply(Header& h, Slot& s, Change&& change) {
        const std::uint32_t held = s.tokens_held, claim = claimants(s), wanted = s.tokens_wanted,
                            waiters = s.waiters, unstarted = pool_unstarted(s);
        change(s);
        h.tokens_free = h.tokens_free + held - s.tokens_held;
        h.claimants_total = h.claimants_total + claimants(s) - claim;
        h.wanted_total = h.wanted_total + s.tokens_wanted - wanted;
        h.waiters_total = h.waiters_total + s.waiters - waiters;
        h.pool_unstarted_total = h.pool_unstarted_total + pool_unstarted(s) - unstarted;
    }
};

Arbiter::Arbiter(std::string path, std::uint32_t capacity, std::uint32_t default_capacity,
                 std::string command)
    : m_path(std::move(path)), m_command(std::move(command)) {
    std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, on_fork_child); });
    if (capacity > kMaxCapacity || default_capacity == 0 || default_capacity > kMaxCapacity)
        throw std::invalid_argument("capacity must be between 1 and " + std::to_string(kMaxCapacity));
    open_or_create(capacity, default_capacity);
}

Arbiter::~Arbiter() {
    try {
        detach();
    } catch (...) {
        // The process is letting go of the segment; nothing useful to report.
    }
}

// ---------------------------------------------------------------- opening

void Arbiter::open_or_create(std::uint32_t capacity, std::uint32_t default_capacity) {
    // Retries cover two races: another process creating the file between
    // our open and our link, and `cleanup` retiring the one we opened.
    for (int attempt = 0; attempt < 100; ++attempt) {
        if (try_open_existing(capacity)) return;
        create(capacity != 0 ? capacity : default_capacity);
        if (try_open_existing(capacity)) return;
    }
    throw SegmentError("could not attach to " + m_path +
                       ": it kept disappearing (is a cleanup loop running?)");
}

bool Arbiter::try_open_existing(std::uint32_t capacity) {
    FileDescriptor fd(::open(m_path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) {
        if (errno == ENOENT) return false;
        if (errno == ELOOP)
            throw SegmentError("arbiter segment " + m_path + " is a symbolic link; refusing to follow it." +
                               removal_hint(m_path));
        if (errno == EISDIR)
            throw SegmentError("arbiter segment " + m_path + " is a directory, not a segment." +
                               removal_hint(m_path));
        if (errno == EACCES)
            throw SegmentError("arbiter segment " + m_path + " cannot be opened (permission denied): it is "
                               "not yours. Set another COMPOSEPAR_DOMAIN, or ask its owner to remove it");
        throw SystemError(errno, "open " + m_path);
    }
    validate(fd.get(), m_path);
    SharedMapping mapping(fd.get(), sizeof(Segment), m_path);
    auto* segment = static_cast<Segment*>(mapping.data());
    const Header& h = segment->header;
    // Pairs with the creator's release store of magic: every field written
    // before it is visible once we see kMagic.
    if (h.magic.load(std::memory_order_acquire) != kMagic)
        throw SegmentError("arbiter segment " + m_path + " is not a composepar segment (bad magic)." +
                           removal_hint(m_path));
    if (h.abi_version != kAbiVersion)
        throw SegmentError("arbiter segment " + m_path + " has layout version " +
                           std::to_string(h.abi_version) + " but this composepar uses version " +
                           std::to_string(kAbiVersion) + ": it was made by another composepar release." +
                           removal_hint(m_path));
    if (h.header_bytes != sizeof(Header) || h.segment_bytes != sizeof(Segment) || h.slot_count != kSlotCount ||
        h.capacity == 0 || h.capacity > kMaxCapacity || h.owner_uid != ::geteuid())
        throw SegmentError("arbiter segment " + m_path + " has a corrupt header." + removal_hint(m_path));
    m_fd = std::move(fd);
    m_mapping = std::move(mapping);
    m_segment = segment;
    {
        Guard guard(*this);
        if (m_segment->header.retired) {
            guard.unlock();
            m_segment = nullptr;
            m_mapping = SharedMapping();
            m_fd = FileDescriptor();
            return false;
        }
    }
    if (capacity != 0 && capacity != m_segment->header.capacity)
        throw CapacityMismatch("the arbiter in " + m_path + " has capacity " +
                               std::to_string(m_segment->header.capacity) + ", not the " +
                               std::to_string(capacity) +
                               " asked for; drop the capacity argument (or COMPOSEPAR_CAPACITY) to use it "
                               "as it is, use another domain, or remove it with `python -m composepar "
                               "cleanup` once no process uses it");
    return true;
}

void Arbiter::validate(int fd, const std::string& path) {
    struct stat st;
    if (::fstat(fd, &st) != 0) throw SystemError(errno, "fstat " + path);
    if (!S_ISREG(st.st_mode))
        throw SegmentError("arbiter segment " + path + " is not a regular file." + removal_hint(path));
    if (st.st_uid != ::geteuid())
        throw SegmentError("arbiter segment " + path + " belongs to uid " + std::to_string(st.st_uid) +
                           ", not to you (uid " + std::to_string(::geteuid()) +
                           "): refusing another user's segment. Set another COMPOSEPAR_DOMAIN, or ask its "
                           "owner to remove it");
    if ((st.st_mode & 077) != 0) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
        throw SegmentError("arbiter segment " + path + " has mode " + mode +
                           "; it must be 0600 so no other user can read or change your budget." +
                           removal_hint(path));
    }
    if (static_cast<std::uint64_t>(st.st_size) != sizeof(Segment))
        throw SegmentError("arbiter segment " + path + " is " + std::to_string(st.st_size) +
                           " bytes, not the " + std::to_string(sizeof(Segment)) +
                           " this composepar expects: it is truncated, corrupt or from another release." +
                           removal_hint(path));
}

void Arbiter::create(std::uint32_t capacity) {
    // Build the segment in an unnamed file and link it into place only when
    // it is complete: a file visible at m_path is always initialised.
    std::string directory = m_path.substr(0, m_path.rfind('/'));
    FileDescriptor fd(::open(directory.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (!fd) throw SystemError(errno, "create an unnamed file in " + directory);
    if (::fchmod(fd.get(), 0600) != 0) throw SystemError(errno, "fchmod 0600 a new segment in " + directory);
    if (::ftruncate(fd.get(), sizeof(Segment)) != 0) throw SystemError(errno, "size a new segment in " + directory);
    SharedMapping mapping(fd.get(), sizeof(Segment), m_path);
    auto* segment = static_cast<Segment*>(mapping.data());  // zero-filled by ftruncate
    Header& h = segment->header;
    h.abi_version = kAbiVersion;
    h.header_bytes = sizeof(Header);
    h.segment_bytes = sizeof(Segment);
    h.capacity = capacity;
    h.slot_count = kSlotCount;
    h.owner_uid = ::geteuid();
    h.tokens_free = capacity;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&h.mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) throw SystemError(rc, "initialise the arbiter mutex for " + m_path);
    // Publishes every field above to attachers' acquire load of magic.
    h.magic.store(kMagic, std::memory_order_release);

    std::string fd_path = "/proc/self/fd/" + std::to_string(fd.get());
    if (::linkat(AT_FDCWD, fd_path.c_str(), AT_FDCWD, m_path.c_str(), AT_SYMLINK_FOLLOW) != 0) {
        if (errno == EEXIST) return;  // another process won the race; ours vanishes with fd
        throw SystemError(errno, "link a new arbiter segment at " + m_path);
    }
}

// ---------------------------------------------------------------- slots

void Arbiter::ensure_registered(Guard& guard) {
    if (m_slot == kSlotCount || m_fork_generation != g_fork_generation.load(std::memory_order_relaxed)) {
        register_slot(guard);
        return;
    }
    const Slot& s = m_segment->slots[m_slot];
    if (s.owner_pid != m_pid || s.owner_start_time != m_start_time)
        throw SlotLost("this process's slot in " + m_path +
                       " was given to another process while it was alive; was the segment's file "
                       "descriptor closed behind composepar's back? Restart the process");
}

void Arbiter::register_slot(Guard& guard) {
    Header& h = m_segment->header;
    if (h.retired)  // `cleanup` unlinked it after we attached: a new segment holds the budget now
        throw SegmentRetired("arbiter segment " + m_path + " was removed by `cleanup` after this process attached");
    const int pid = static_cast<int>(::getpid());
    const ProcessFacts self = read_process_facts(pid);
    for (int pass = 0; pass < 2; ++pass) {
        const std::uint32_t used = std::min(h.slots_used, kSlotCount);
        std::uint32_t index = kSlotCount;
        for (std::uint32_t i = 0; i < used && index == kSlotCount; ++i)
            if (m_segment->slots[i].owner_pid == 0) index = i;
        if (index == kSlotCount && used < kSlotCount) index = used;
        if (index != kSlotCount) {
            struct flock fl = byte_lock(F_WRLCK, index);
            if (::fcntl(m_fd.get(), F_SETLK, &fl) != 0)
                throw SystemError(errno, "lock slot " + std::to_string(index) + " of " + m_path);
            if (index == used) h.slots_used = used + 1;
            Slot& s = m_segment->slots[index];
            Edit::apply(h, s, [](Slot& fresh) {
                const Slot zero{};
                fresh = zero;
            });
            s.owner_start_time = self.start_time;
            std::strncpy(s.command, m_command.c_str(), sizeof s.command - 1);
            s.owner_pid = pid;
            m_slot = index;
            m_pid = pid;
            m_start_time = self.start_time;
            m_fork_generation = g_fork_generation.load(std::memory_order_relaxed);
            m_epoch = g_registrations.fetch_add(1, std::memory_order_relaxed) + 1;
            return;
        }
        bool freed = false;
        reap_locked(freed);
        if (freed) guard.wake_waiters_on_unlock();
    }
    throw std::runtime_error("all " + std::to_string(kSlotCount) + " process slots of " + m_path +
                             " are held by live processes; composepar supports that many attached processes "
                             "per domain: split them over several COMPOSEPAR_DOMAIN values");
}

Slot& Arbiter::own_slot(Guard& guard) {
    ensure_registered(guard);
    return m_segment->slots[m_slot];
}

bool Arbiter::slot_is_alive(std::uint32_t index) const {
    const Slot& s = m_segment->slots[index];
    if (s.owner_pid <= 0) return false;
    if (index == m_slot && s.owner_pid == m_pid) return true;
    // Fast path: the kernel holds the owner's byte lock until it dies.
    struct flock fl = byte_lock(F_WRLCK, index);
    if (::fcntl(m_fd.get(), F_GETLK, &fl) != 0) throw SystemError(errno, "test slot lock in " + m_path);
    if (fl.l_type != F_UNLCK) return true;
    // No lock: dead, unless /proc still shows the same process (its lock
    // may have gone with a descriptor someone closed, or it is this
    // process through a second handle, whose locks F_GETLK does not report).
    const ProcessFacts facts = read_process_facts(s.owner_pid);
    return facts.exists && !facts.zombie && facts.start_time == s.owner_start_time;
}

bool Arbiter::maybe_sweep_locked(bool& freed_tokens) {
    Header& h = m_segment->header;
    const std::int64_t now = monotonic_ns();
    const auto next = static_cast<std::int64_t>(h.next_sweep_ns);
    // Not due yet, unless the next sweep is further than a period away: a
    // process whose clock is ahead (another time namespace) set it, and it
    // must not silence the sweep for everyone else.
    if (now < next && next - now <= kSweepEveryNs) return false;
    h.next_sweep_ns = static_cast<std::uint64_t>(now + kSweepEveryNs);  // one sweeper per period, under the mutex
    return reap_locked(freed_tokens, /*claims_only=*/true) > 0;
}

std::uint32_t Arbiter::reap_locked(bool& freed_tokens, bool claims_only) {
    Header& h = m_segment->header;
    std::uint32_t reaped = 0;
    const std::uint32_t used = std::min(h.slots_used, kSlotCount);
    for (std::uint32_t i = 0; i < used; ++i) {
        Slot& s = m_segment->slots[i];
        if (s.owner_pid == 0) continue;
        // The periodic sweep looks only at slots that hold or claim something
        // (each liveness test is a syscall under the mutex); an empty dead
        // slot is recycled when a registration needs it.
        if (claims_only && s.tokens_held == 0 && claimants(s) == 0 && s.tokens_wanted == 0 && s.pool_demand == 0)
            continue;
        if (slot_is_alive(i)) continue;
        if (s.tokens_held > 0) freed_tokens = true;
        uncount_for_owner(s, s.pool_owner, s.pool_owner_pid, s.leases_for_owner);
        h.tokens_reclaimed += s.tokens_held;
        h.processes_reaped += 1;
        Edit::apply(h, s, [](Slot& dead) {
            const Slot zero{};
            dead = zero;  // owner_pid = 0: free for the next process
        });
        ++reaped;
    }
    return reaped;
}

void Arbiter::repair_after_owner_death() {
    // Called with the mutex held in state EOWNERDEAD: a process died inside
    // a critical section. Slots are the truth; recompute the caches.
    Header& h = m_segment->header;
    h.slots_used = std::min(h.slots_used, kSlotCount);
    std::uint64_t held = 0;
    std::uint32_t claim = 0, wanted = 0, waiters = 0, unstarted = 0;
    for (std::uint32_t i = 0; i < h.slots_used; ++i) {
        const Slot& s = m_segment->slots[i];
        if (s.owner_pid == 0) continue;
        held += s.tokens_held;
        claim += claimants(s);
        wanted += s.tokens_wanted;
        waiters += s.waiters;
        unstarted += pool_unstarted(s);
    }
    h.pool_unstarted_total = unstarted;
    h.tokens_free = held >= h.capacity ? 0 : h.capacity - static_cast<std::uint32_t>(held);
    h.claimants_total = claim;
    h.wanted_total = wanted;
    h.waiters_total = waiters;
}

// ---------------------------------------------------------------- policy

std::uint32_t Arbiter::fair_share(const Claim& mine) const {
    // A caller not yet counted among the claimants (a fresh explicit
    // request) competes too: count it.
    const Header& h = m_segment->header;
    const std::uint32_t claimants_now = h.claimants_total + (mine.counted ? 0u : 1u);
    return std::max<std::uint32_t>(1, h.capacity / std::max<std::uint32_t>(1, claimants_now));
}

bool Arbiter::another_is_below_share_and_wanting(const Claim& mine) const {
    const Header& h = m_segment->header;
    if (h.wanted_total <= mine.wanted && h.pool_unstarted_total == 0) return false;  // nobody else asks
    const std::uint64_t share = fair_share(mine);
    const std::uint32_t used = std::min(h.slots_used, kSlotCount);
    for (std::uint32_t i = 0; i < used; ++i) {
        const Slot& s = m_segment->slots[i];
        if (s.owner_pid == 0) continue;
        if (pool_unstarted(s) > 0) return true;  // expected tasks hold nothing yet: below any share
        if (s.tokens_wanted == 0) continue;
        // In the caller's own slot, look only at the caller's siblings
        // (other threads of this process): take the caller's part out.
        const bool own = (i == m_slot);
        const std::uint32_t wanted = own ? sub_sat(s.tokens_wanted, mine.wanted) : s.tokens_wanted;
        const std::uint32_t overdrawn = own ? sub_sat(s.leases_overdrawn, mine.overdrawn) : s.leases_overdrawn;
        const std::uint32_t held = own ? sub_sat(s.tokens_held, mine.held) : s.tokens_held;
        const std::uint32_t claim = own ? sub_sat(claimants(s), mine.counted) : claimants(s);
        if (wanted == 0) continue;
        // An overdrawn lease holds nothing, so it is below any share.
        if (overdrawn > 0 || held < share * claim) return true;
    }
    return false;
}

std::uint32_t Arbiter::grant_cap(const Claim& mine, std::uint32_t wanted) const {
    std::uint32_t grant = std::min(wanted, m_segment->header.tokens_free);
    if (grant > 0 && another_is_below_share_and_wanting(mine))
        grant = std::min(grant, sub_sat(fair_share(mine), mine.held));
    return grant;
}

// ---------------------------------------------------------------- explicit tokens

std::uint32_t Arbiter::try_grant_explicit(Guard& guard, std::uint32_t min_tokens, std::uint32_t max_tokens,
                                          bool waiting, bool& freed_tokens) {
    Header& h = m_segment->header;
    if (h.tokens_free >= min_tokens) maybe_sweep_locked(freed_tokens);  // the dead's claims must not cap the grant
    if (h.tokens_free < min_tokens) {
        reap_locked(freed_tokens);
        if (h.tokens_free < min_tokens) return 0;
    }
    Slot& s = own_slot(guard);
    // The process's explicit holding is one claimant: a new request adds to
    // what it already holds. A blocked waiter is counted and its demand recorded.
    const Claim mine{s.tokens_explicit, waiting ? max_tokens : 0, 0,
                     (waiting || s.tokens_explicit > 0) ? 1u : 0u};
    std::uint32_t grant = grant_cap(mine, max_tokens);
    grant = std::max(grant, min_tokens);  // min is free (checked above) and always honoured
    Edit::apply(h, s, [grant](Slot& me) {
        me.tokens_held += grant;
        me.tokens_explicit += grant;
    });
    return grant;
}

std::uint32_t Arbiter::acquire_nowait(std::uint32_t min_tokens, std::uint32_t max_tokens) {
    Guard guard(*this);
    own_slot(guard);
    bool freed = false;
    std::uint32_t granted = try_grant_explicit(guard, min_tokens, max_tokens, false, freed);
    if (freed) guard.wake_waiters_on_unlock();
    return granted;
}

AcquireOutcome Arbiter::acquire(std::uint32_t min_tokens, std::uint32_t max_tokens, std::int64_t timeout_ns,
                                const InterruptCheck& interrupted, std::uint32_t& granted) {
    const std::int64_t now_ns = monotonic_ns();
    const std::int64_t deadline = (timeout_ns < 0 || timeout_ns > std::numeric_limits<std::int64_t>::max() - now_ns)
                                      ? std::numeric_limits<std::int64_t>::max()
                                      : now_ns + timeout_ns;
    Header& h = m_segment->header;
    Guard guard(*this);
    own_slot(guard);
    bool freed = false;
    granted = try_grant_explicit(guard, min_tokens, max_tokens, false, freed);
    if (freed) guard.wake_waiters_on_unlock();
    if (granted > 0) return AcquireOutcome::granted;
    if (timeout_ns == 0) return AcquireOutcome::timed_out;

    // Register as a waiter: our demand now caps others at their share.
    Edit::apply(h, own_slot(guard), [&](Slot& me) {
        me.waiters += 1;
        me.tokens_waited += min_tokens;
        me.tokens_wanted += max_tokens;
    });
    // Whatever ends the wait (a grant, the deadline, an interrupt, an
    // exception), the waiter's registration is undone under the mutex.
    auto unregister = [&] {
        if (!guard.locked()) guard.lock();
        Edit::apply(h, own_slot(guard), [&](Slot& me) {
            me.waiters = sub_sat(me.waiters, 1);
            me.tokens_waited = sub_sat(me.tokens_waited, min_tokens);
            me.tokens_wanted = sub_sat(me.tokens_wanted, max_tokens);
        });
    };
    AcquireOutcome outcome = AcquireOutcome::timed_out;
    try {
        for (;;) {
            const std::uint32_t seen = h.wake_seq.load(std::memory_order_relaxed);  // under the mutex
            guard.unlock();
            const std::int64_t now = monotonic_ns();
            const std::int64_t slice = std::min(deadline - now, kWaitSliceNs);
            if (slice > 0) futex_wait_shared(reinterpret_cast<std::uint32_t*>(&h.wake_seq), seen, slice);
            const bool stop = interrupted && interrupted();
            guard.lock();
            if (stop) {
                outcome = AcquireOutcome::interrupted;
                break;
            }
            own_slot(guard);
            freed = false;
            granted = try_grant_explicit(guard, min_tokens, max_tokens, true, freed);  // reaps when short
            if (freed) guard.wake_waiters_on_unlock();
            if (granted > 0) {
                outcome = AcquireOutcome::granted;
                break;
            }
            if (monotonic_ns() >= deadline) break;
        }
    } catch (...) {
        unregister();
        throw;
    }
    unregister();
    return outcome;
}

void Arbiter::release(std::uint32_t n) {
    Guard guard(*this);
    Slot& s = own_slot(guard);
    if (n > s.tokens_explicit)
        throw std::invalid_argument("cannot release " + std::to_string(n) + " tokens: this process holds " +
                                    std::to_string(s.tokens_explicit) + " acquired ones");
    Edit::apply(m_segment->header, s, [n](Slot& me) {
        me.tokens_held -= n;
        me.tokens_explicit -= n;
    });
    if (n > 0) guard.wake_waiters_on_unlock();
}

// ---------------------------------------------------------------- followers

std::uint32_t Arbiter::policy_seq() const noexcept {
    return m_segment->header.policy_seq.load(std::memory_order_seq_cst);
}

void Arbiter::wait_policy(std::uint32_t seen, std::uint32_t interest, std::int64_t timeout_ns) {
    Header& h = m_segment->header;
    const std::int64_t now = monotonic_ns();
    const std::int64_t deadline = timeout_ns > std::numeric_limits<std::int64_t>::max() - now
                                      ? std::numeric_limits<std::int64_t>::max()
                                      : now + std::max<std::int64_t>(0, timeout_ns);
    const std::uint32_t bits = (interest & (kFollowGrow | kFollowShrink)) | own_follow_bit();
    // Registered before the last look at the word (seq_cst, paired with
    // Guard::unlock): a waker that bumps it after this look sees us here and
    // wakes us; one that bumped it before makes the kernel's compare fail.
    h.policy_sleepers.fetch_add(1, std::memory_order_seq_cst);
    struct Unregister {
        Header& h;
        ~Unregister() { h.policy_sleepers.fetch_sub(1, std::memory_order_seq_cst); }
    } unregister{h};
    if (h.policy_seq.load(std::memory_order_seq_cst) != seen) return;
    futex_wait_bits_shared(reinterpret_cast<std::uint32_t*>(&h.policy_seq), seen, deadline, bits);
}

void Arbiter::wake_follower() {
    Header& h = m_segment->header;
    h.policy_seq.fetch_add(1, std::memory_order_seq_cst);  // a follower about to sleep does not
    futex_wake_bits_shared(reinterpret_cast<std::uint32_t*>(&h.policy_seq), own_follow_bit());
}

std::uint32_t Arbiter::tokens_explicit() {
    Guard guard(*this);
    if (m_slot == kSlotCount || m_fork_generation != g_fork_generation.load(std::memory_order_relaxed))
        return 0;
    return own_slot(guard).tokens_explicit;
}

// ---------------------------------------------------------------- leases

std::uint32_t Arbiter::find_pool_owner(Slot& self, std::int32_t pool_owner_pid) {
    if (pool_owner_pid <= 0) return kSlotCount;
    if (pool_owner_pid == m_pid) return m_slot;  // a thread pool of this process
    const std::uint32_t used = std::min(m_segment->header.slots_used, kSlotCount);
    std::uint32_t owner = self.pool_owner;
    if (self.pool_owner_pid != pool_owner_pid || owner >= used || m_segment->slots[owner].owner_pid != pool_owner_pid) {
        if (self.leases_for_owner > 0) return kSlotCount;  // counted for another owner now: count this one nowhere
        owner = kSlotCount;
        for (std::uint32_t i = 0; i < used && owner == kSlotCount; ++i)
            if (m_segment->slots[i].owner_pid == pool_owner_pid) owner = i;
        if (owner == kSlotCount) return kSlotCount;  // the owner never attached: nothing to count against
        self.pool_owner = owner;
        self.pool_owner_pid = pool_owner_pid;
    }
    return owner;
}

void Arbiter::uncount_for_owner(Slot& worker, std::uint32_t owner, std::int32_t owner_pid, std::uint32_t leases) {
    if (owner >= std::min(m_segment->header.slots_used, kSlotCount) || leases == 0) return;
    Slot& o = m_segment->slots[owner];
    // The worker's side always: it must be free to count for a new owner.
    if (&o != &worker)
        Edit::apply(m_segment->header, worker, [leases](Slot& me) {
            me.leases_for_owner = sub_sat(me.leases_for_owner, leases);
        });
    if (o.owner_pid != owner_pid || owner_pid == 0) return;  // the owner is gone; its slot may be another's
    Edit::apply(m_segment->header, o, [leases](Slot& me) { me.pool_leases_open = sub_sat(me.pool_leases_open, leases); });
}

void Arbiter::set_pool_demand(std::uint32_t tasks) {
    Guard guard(*this);
    Edit::apply(m_segment->header, own_slot(guard), [tasks](Slot& me) { me.pool_demand = tasks; });
}

std::uint64_t Arbiter::lease_open(std::uint32_t extra_wanted, std::int32_t pool_owner_pid, LeaseState& state) {
    Header& h = m_segment->header;
    Guard guard(*this);
    Slot& s = own_slot(guard);
    bool freed = false;
    if (h.tokens_free == 0) {
        reap_locked(freed);  // too few for the thread's own token
    } else {
        maybe_sweep_locked(freed);
    }
    if (freed) guard.wake_waiters_on_unlock();
    state.own_token = h.tokens_free > 0 ? 1 : 0;
    state.tokens_extra = 0;
    state.extra_wanted = extra_wanted;
    state.open = 1;
    Edit::apply(h, s, [&](Slot& me) {
        me.threads_active += 1;
        me.tokens_held += state.own_token;
        me.leases_overdrawn += 1 - state.own_token;
    });
    // A pool task: it is no longer an expected claimant of its owner but a running one.
    state.owner = find_pool_owner(s, pool_owner_pid);
    state.owner_pid = state.owner == kSlotCount ? 0 : m_segment->slots[state.owner].owner_pid;
    if (state.owner != kSlotCount) {
        Edit::apply(h, m_segment->slots[state.owner], [](Slot& owner) { owner.pool_leases_open += 1; });
        if (state.owner != m_slot) Edit::apply(h, s, [](Slot& me) { me.leases_for_owner += 1; });
    }
    // The share now counts this lease as a claimant.
    const std::uint32_t extra = state.own_token ? grant_cap(Claim{1, 0, 0, 1}, extra_wanted) : 0;
    Edit::apply(h, s, [&](Slot& me) {
        me.tokens_held += extra;
        state.tokens_extra = extra;
        me.tokens_wanted += lease_wanted(state);
    });
    return m_epoch;
}

void Arbiter::commit_lease(Slot& s, const LeaseState& before, const LeaseState& after) {
    Edit::apply(m_segment->header, s, [&](Slot& me) {
        me.tokens_held = sub_sat(me.tokens_held + after.own_token + after.tokens_extra,
                                 before.own_token + before.tokens_extra);
        me.leases_overdrawn = sub_sat(me.leases_overdrawn + before.own_token, after.own_token);
        me.tokens_wanted = sub_sat(me.tokens_wanted, lease_wanted(before)) + lease_wanted(after);
    });
}

void Arbiter::lease_refresh(std::uint64_t lease_epoch, std::uint32_t extra_wanted, LeaseState& state) {
    Header& h = m_segment->header;
    Guard guard(*this);
    if (!state.open || lease_epoch != m_epoch ||
        m_fork_generation != g_fork_generation.load(std::memory_order_relaxed)) {
        // Closed, or opened in another process (fork) or before detach(): holds nothing here.
        state = LeaseState{0, 0, extra_wanted, kSlotCount, 0, 0};
        return;
    }
    Slot& s = own_slot(guard);
    const std::uint32_t held_before = state.own_token + state.tokens_extra;
    bool freed = false;
    maybe_sweep_locked(freed);  // a dead claimant may hold, or cap, what this lease wants
    LeaseState next = state;
    next.extra_wanted = extra_wanted;
    if (!next.own_token) {
        if (h.tokens_free == 0) reap_locked(freed);  // too few for the thread's own token
        next.own_token = h.tokens_free > 0 ? 1 : 0;
        commit_lease(s, state, next);
        state = next;
    }
    if (next.own_token) {
        next.tokens_extra = std::min(next.tokens_extra, extra_wanted);
        const Claim mine{1 + next.tokens_extra, lease_wanted(state), 0, 1};
        const std::uint32_t share = fair_share(mine);
        if (1 + next.tokens_extra > share && another_is_below_share_and_wanting(mine))
            next.tokens_extra = share - 1;  // give back what is above the share
        else
            next.tokens_extra += grant_cap(mine, extra_wanted - next.tokens_extra);
    }
    commit_lease(s, state, next);
    state = next;
    if (freed || state.own_token + state.tokens_extra < held_before) guard.wake_waiters_on_unlock();
}

void Arbiter::lease_close(std::uint64_t lease_epoch, LeaseState& state) {
    Guard guard(*this);
    if (!state.open || lease_epoch != m_epoch ||
        m_fork_generation != g_fork_generation.load(std::memory_order_relaxed)) {
        state = LeaseState{};  // closed already, or opened in another process (fork) or before detach()
        return;
    }
    Slot& s = own_slot(guard);
    uncount_for_owner(s, state.owner, state.owner_pid, 1);
    const std::uint32_t held = state.own_token + state.tokens_extra;
    const std::uint32_t wanted = lease_wanted(state);
    const std::uint32_t overdrawn = 1 - state.own_token;
    Edit::apply(m_segment->header, s, [&](Slot& me) {
        me.threads_active = sub_sat(me.threads_active, 1);
        me.leases_overdrawn = sub_sat(me.leases_overdrawn, overdrawn);
        me.tokens_held = sub_sat(me.tokens_held, held);
        me.tokens_wanted = sub_sat(me.tokens_wanted, wanted);
    });
    state = LeaseState{};
    if (held > 0) guard.wake_waiters_on_unlock();
}

// ---------------------------------------------------------------- observation

SegmentStats Arbiter::stats() {
    Guard guard(*this);
    bool freed = false;
    reap_locked(freed);
    if (freed) guard.wake_waiters_on_unlock();
    const Header& h = m_segment->header;
    SegmentStats out{h.capacity, h.tokens_free, h.claimants_total, h.tokens_reclaimed, h.processes_reaped, {}};
    const std::uint32_t used = std::min(h.slots_used, kSlotCount);
    for (std::uint32_t i = 0; i < used; ++i) {
        const Slot& s = m_segment->slots[i];
        if (s.owner_pid == 0) continue;
        out.processes.push_back(ProcessStats{s.owner_pid, std::string(s.command, strnlen(s.command, sizeof s.command)),
                                             s.threads_active, s.leases_overdrawn, s.tokens_held, s.tokens_explicit,
                                             s.tokens_wanted, s.waiters, s.tokens_waited, s.pool_demand,
                                             s.pool_leases_open});
    }
    return out;
}

std::string Arbiter::check_invariants() {
    Guard guard(*this);
    const Header& h = m_segment->header;
    std::uint64_t held = 0, claim = 0, wanted = 0, waiters = 0, unstarted = 0;
    std::string problems;
    const std::uint32_t used = std::min(h.slots_used, kSlotCount);
    for (std::uint32_t i = 0; i < used; ++i) {
        const Slot& s = m_segment->slots[i];
        if (s.owner_pid == 0) {
            if (s.tokens_held || claimants(s) || s.tokens_wanted)
                problems += "free slot " + std::to_string(i) + " has counts; ";
            continue;
        }
        held += s.tokens_held;
        claim += claimants(s);
        wanted += s.tokens_wanted;
        waiters += s.waiters;
        unstarted += pool_unstarted(s);
        if (s.leases_overdrawn > s.threads_active)
            problems += "slot " + std::to_string(i) + " has more overdrawn leases than leases; ";
        if (s.tokens_held < s.tokens_explicit + (s.threads_active - s.leases_overdrawn))
            problems += "slot " + std::to_string(i) + " holds fewer tokens than its leases and acquisitions; ";
    }
    if (h.tokens_free + held != h.capacity)
        problems += "tokens_free " + std::to_string(h.tokens_free) + " + held " + std::to_string(held) +
                    " != capacity " + std::to_string(h.capacity) + "; ";
    if (held > h.capacity) problems += "more tokens out than the capacity; ";
    if (claim != h.claimants_total) problems += "claimants_total out of date; ";
    if (wanted != h.wanted_total) problems += "wanted_total out of date; ";
    if (waiters != h.waiters_total) problems += "waiters_total out of date; ";
    if (unstarted != h.pool_unstarted_total) problems += "pool_unstarted_total out of date; ";
    return problems;
}

std::uint32_t Arbiter::reap() {
    Guard guard(*this);
    bool freed = false;
    const std::uint32_t reaped = reap_locked(freed);
    if (freed) guard.wake_waiters_on_unlock();
    return reaped;
}

void Arbiter::detach() {
    if (!m_segment) return;
    Guard guard(*this);
    if (m_slot == kSlotCount || m_fork_generation != g_fork_generation.load(std::memory_order_relaxed)) return;
    Slot& s = m_segment->slots[m_slot];
    if (s.owner_pid == m_pid && s.owner_start_time == m_start_time) {
        const bool held = s.tokens_held > 0;
        Edit::apply(m_segment->header, s, [](Slot& mine) {
            const Slot zero{};
            mine = zero;
        });
        if (held) guard.wake_waiters_on_unlock();
        struct flock fl = byte_lock(F_UNLCK, m_slot);
        ::fcntl(m_fd.get(), F_SETLK, &fl);  // best effort: the slot is already free
    }
    m_slot = kSlotCount;
    m_epoch = 0;  // leases opened before are void: their close and refresh do nothing
}

std::vector<int> Arbiter::retire_and_unlink() {
    Guard guard(*this);
    bool freed = false;
    reap_locked(freed);
    if (freed) guard.wake_waiters_on_unlock();
    std::vector<int> live;
    const Header& h = m_segment->header;
    const std::uint32_t used = std::min(h.slots_used, kSlotCount);
    for (std::uint32_t i = 0; i < used; ++i) {
        const Slot& s = m_segment->slots[i];
        if (s.owner_pid == 0) continue;
        // Only this handle's own slot may be ignored, and only if it holds
        // and wants nothing: another handle of this process counts as a user.
        const bool own_and_idle = (i == m_slot && s.tokens_held == 0 && claimants(s) == 0);
        if (!own_and_idle) live.push_back(s.owner_pid);
    }
    if (!live.empty()) return live;
    struct stat by_path, by_fd;
    if (::stat(m_path.c_str(), &by_path) == 0 && ::fstat(m_fd.get(), &by_fd) == 0 &&
        by_path.st_ino == by_fd.st_ino && by_path.st_dev == by_fd.st_dev) {
        m_segment->header.retired = 1;  // attachers that opened it already will retry
        if (::unlink(m_path.c_str()) != 0 && errno != ENOENT) throw SystemError(errno, "unlink " + m_path);
    }
    return live;
}

}  // namespace composepar
