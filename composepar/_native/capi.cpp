// libcomposepar.so: the C API declared in composepar/include/composepar.h,
// over its own copy of the arbiter core (composepar_core).
//
//   C caller --- composepar_attach(domain) ---> composepar_budget ---+
//                                                                    |  shared_ptr
//   C caller --- composepar_lease_open() -----> composepar_lease ----+--> Arbiter (one per segment
//                                                                          path in this process)
//
// Three rules hold at the C boundary:
//   * No C++ exception crosses it: every entry point runs its body under
//     `guarded`, which turns the exception into an errno and a sentence for
//     composepar_last_error() (the mapping is in fail_with_current_exception).
//   * The handles of one process share one Arbiter per domain, as the Python
//     layer does (composepar._arbiter._handles): the slot, and the tokens
//     acquired through it, belong to the process. This library and the Python
//     module keep separate copies of the core (only composepar_* symbols are
//     exported), so a process using both holds two slots; the core allows it.
//   * Domain, segment path and default capacity follow the Python layer's
//     rules. They are written here a second time, each beside the name of its
//     Python twin: a change to one must be made to the other.
#include "composepar.h"

#include "arbiter.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <typeinfo>
#include <utility>
#include <vector>

namespace {

using composepar::Arbiter;

// ------------------------------------------------------------------ errors

// The last failure of this thread, for composepar_last_error(). A fixed
// buffer, not a std::string: nothing to destroy at thread exit or dlclose.
constexpr std::size_t kMessageBytes = 1024;
thread_local char t_last_error[kMessageBytes];  // zero-initialised: "" until a call fails

// Records the failure and returns -error_number (errno is set last: the
// formatting must not overwrite it).
int fail(int error_number, const char* message) noexcept {
    std::snprintf(t_last_error, sizeof t_last_error, "%s", message);
    errno = error_number;
    return -error_number;
}

int fail(int error_number, const std::string& message) noexcept { return fail(error_number, message.c_str()); }

// Called inside a catch block: maps the exception being handled to an errno
// (the table is in composepar.h).
int fail_with_current_exception() noexcept {
    try {
        throw;
    } catch (const composepar::SystemError& e) {
        return fail(e.error_number(), e.what());
    } catch (const composepar::SegmentRetired& e) {
        return fail(ESTALE, std::string(e.what()) + "; attach again");
    } catch (const composepar::SlotLost& e) {
        return fail(EIDRM, e.what());
    } catch (const composepar::SegmentError& e) {
        return fail(EPROTO, e.what());
    } catch (const std::invalid_argument& e) {
        return fail(EINVAL, e.what());
    } catch (const std::bad_alloc&) {
        return fail(ENOMEM, "out of memory");
    } catch (const std::system_error& e) {  // std::mutex
        return fail(e.code().value() > 0 ? e.code().value() : EIO, e.what());
    } catch (const std::exception& e) {
        // The one plain std::runtime_error the core throws is "all 4096
        // process slots ... are held by live processes" (register_slot).
        if (typeid(e) == typeid(std::runtime_error)) return fail(EUSERS, e.what());
        return fail(EIO, e.what());
    } catch (...) {
        return fail(EIO, "composepar: an unknown C++ exception (a bug in composepar; please report it)");
    }
}

// Runs an entry point's body: its int result, or -errno if it threw.
template <class Body>
int guarded(Body&& body) noexcept {
    try {
        return body();
    } catch (...) {
        return fail_with_current_exception();
    }
}

// The same for bodies that return a pointer: NULL and errno if it threw.
template <class Body>
auto guarded_pointer(Body&& body) noexcept -> decltype(body()) {
    try {
        return body();
    } catch (...) {
        fail_with_current_exception();
        return nullptr;
    }
}

// ------------------------------------------------------------------ files

// Reads a small text file (/proc, /sys, cgroup files) whole; false if it
// cannot be read, which every caller treats as "no information".
bool read_text(const std::string& path, std::string& out) {
    composepar::FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return false;
    char buffer[512];
    out.clear();
    for (;;) {
        const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (n == 0) return true;
        out.append(buffer, static_cast<std::size_t>(n));
    }
}

bool is_directory(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// ------------------------------------------------------------------ CPUs
// Twins of composepar/_cpus.py.

using CpuList = std::vector<int>;  // sorted, no duplicates

// Python twin: os.cpu_count() or 1, as a list 0..n-1 (the fallbacks of _cpus).
CpuList all_cpus_by_count() {
    const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
    CpuList cpus(static_cast<std::size_t>(n > 0 ? n : 1));
    for (std::size_t i = 0; i < cpus.size(); ++i) cpus[i] = static_cast<int>(i);
    return cpus;
}

// Python twin: _cpus.parse_cpu_list ("0-3,8\n" -> 0,1,2,3,8). False if malformed.
bool parse_cpu_list(const std::string& text, CpuList& cpus) {
    cpus.clear();
    std::size_t begin = 0;
    while (begin <= text.size()) {
        std::size_t end = text.find(',', begin);
        if (end == std::string::npos) end = text.size();
        std::string part = text.substr(begin, end - begin);
        while (!part.empty() && std::isspace(static_cast<unsigned char>(part.back()))) part.pop_back();
        while (!part.empty() && std::isspace(static_cast<unsigned char>(part.front()))) part.erase(0, 1);
        begin = end + 1;
        if (part.empty()) continue;
        const std::size_t dash = part.find('-');
        char* rest = nullptr;
        const long first = std::strtol(part.c_str(), &rest, 10);
        if (rest == part.c_str() || (dash == std::string::npos ? *rest != '\0' : rest != part.c_str() + dash))
            return false;
        long last = first;
        if (dash != std::string::npos) {
            const char* from = part.c_str() + dash + 1;
            last = std::strtol(from, &rest, 10);
            if (rest == from || *rest != '\0') return false;
        }
        if (first < 0 || last < first || last > (1L << 20)) return false;
        for (long cpu = first; cpu <= last; ++cpu) cpus.push_back(static_cast<int>(cpu));
    }
    std::sort(cpus.begin(), cpus.end());
    cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
    return true;
}

// Python twin: _cpus.format_cpu_list (0,1,2,3,8 -> "0-3,8").
std::string format_cpu_list(const CpuList& cpus) {
    std::string out;
    for (std::size_t i = 0; i < cpus.size();) {
        std::size_t j = i;
        while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
        if (!out.empty()) out += ',';
        out += std::to_string(cpus[i]);
        if (j > i) out += '-' + std::to_string(cpus[j]);
        i = j + 1;
    }
    return out;
}

// Python twin: _cpus._affinity: the process's (main thread's) affinity mask.
CpuList affinity_cpus() {
    for (std::size_t count = 1024; count <= (std::size_t{1} << 20); count *= 2) {
        cpu_set_t* set = CPU_ALLOC(count);
        if (set == nullptr) throw std::bad_alloc();
        const std::size_t bytes = CPU_ALLOC_SIZE(count);
        const int rc = ::sched_getaffinity(::getpid(), bytes, set);
        const int error = errno;
        CpuList cpus;
        if (rc == 0)
            for (std::size_t cpu = 0; cpu < count; ++cpu)
                if (CPU_ISSET_S(cpu, bytes, set)) cpus.push_back(static_cast<int>(cpu));
        CPU_FREE(set);
        if (rc == 0) return cpus;
        if (error != EINVAL) break;  // EINVAL: the kernel's mask is larger, try a larger set
    }
    return all_cpus_by_count();
}

// Python twin: _cpus.online_cpus.
CpuList online_cpus() {
    std::string text;
    CpuList cpus;
    if (read_text("/sys/devices/system/cpu/online", text) && parse_cpu_list(text, cpus)) return cpus;
    return all_cpus_by_count();
}

// Python twin: _cpus._read_v2_limit: cgroup v2 cpu.max ("max 100000" or
// "150000 100000"), as whole CPUs rounded up; 0 if unlimited or unreadable.
// (Python keeps the quotient as a float and rounds the smallest up at the
// end; ceil is monotonic, so rounding each first gives the same minimum.)
std::uint64_t ceil_quota(long long quota_us, long long period_us) {
    if (quota_us <= 0 || period_us <= 0) return 0;
    const auto q = static_cast<std::uint64_t>(quota_us), p = static_cast<std::uint64_t>(period_us);
    return q / p + (q % p != 0 ? 1 : 0);
}

bool parse_long_long(const std::string& text, long long& value) {
    char* end = nullptr;
    errno = 0;
    value = std::strtoll(text.c_str(), &end, 10);
    if (end == text.c_str() || errno == ERANGE) return false;
    while (*end != '\0' && std::isspace(static_cast<unsigned char>(*end))) ++end;
    return *end == '\0';
}

std::uint64_t read_v2_limit(const std::string& directory) {
    std::string text;
    if (!read_text(directory + "/cpu.max", text)) return 0;
    std::vector<std::string> words;
    for (std::size_t i = 0; i < text.size();) {
        while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
        std::size_t j = i;
        while (j < text.size() && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
        if (j > i) words.push_back(text.substr(i, j - i));
        i = j;
    }
    words.push_back("100000");
    long long quota = 0, period = 0;
    if (words[0] == "max" || !parse_long_long(words[0], quota) || !parse_long_long(words[1], period)) return 0;
    return ceil_quota(quota, period);
}

// Python twin: _cpus._read_v1_limit (cpu.cfs_quota_us / cpu.cfs_period_us).
std::uint64_t read_v1_limit(const std::string& directory) {
    std::string quota_text, period_text;
    long long quota = 0, period = 0;
    if (!read_text(directory + "/cpu.cfs_quota_us", quota_text) || !parse_long_long(quota_text, quota) ||
        !read_text(directory + "/cpu.cfs_period_us", period_text) || !parse_long_long(period_text, period))
        return 0;
    return ceil_quota(quota, period);
}

// Python twin: _cpus._walk_up: the smallest limit in mount/path and its ancestors (0: none).
template <class ReadLimit>
std::uint64_t walk_up(const std::string& mount, std::string path, ReadLimit read_limit) {
    while (!path.empty() && path.front() == '/') path.erase(0, 1);
    while (!path.empty() && path.back() == '/') path.pop_back();
    std::uint64_t smallest = 0;
    for (;;) {
        const std::uint64_t limit = read_limit(path.empty() ? mount : mount + "/" + path);
        if (limit != 0 && (smallest == 0 || limit < smallest)) smallest = limit;
        if (path.empty()) return smallest;
        const std::size_t slash = path.rfind('/');
        path = slash == std::string::npos ? std::string() : path.substr(0, slash);
    }
}

// Python twin: _cpus.cgroup_cpu_limit, rounded up: the CPU quota of this
// process's cgroup in whole CPUs, 0 if unlimited.
std::uint64_t cgroup_cpu_limit() {
    const std::string root = "/sys/fs/cgroup";
    std::string text;
    if (!read_text("/proc/self/cgroup", text)) return 0;
    std::uint64_t smallest = 0;
    std::size_t begin = 0;
    while (begin < text.size()) {
        std::size_t end = text.find('\n', begin);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(begin, end - begin);
        begin = end + 1;
        const std::size_t first = line.find(':');
        const std::size_t second = first == std::string::npos ? std::string::npos : line.find(':', first + 1);
        if (second == std::string::npos) continue;
        const std::string controllers = line.substr(first + 1, second - first - 1);
        const std::string path = line.substr(second + 1);
        std::uint64_t limit = 0;
        if (controllers.empty()) {  // cgroup v2 unified hierarchy
            limit = walk_up(root, path, read_v2_limit);
        } else if (("," + controllers + ",").find(",cpu,") != std::string::npos) {  // cgroup v1 cpu controller
            std::string mount = root + "/" + controllers;
            if (!is_directory(mount)) mount = root + "/cpu";
            limit = walk_up(mount, path, read_v1_limit);
        }
        if (limit != 0 && (smallest == 0 || limit < smallest)) smallest = limit;
    }
    return smallest;
}

// Python twin: _cpus.usable_cpus: the affinity mask capped by the cgroup quota, at least 1.
std::uint32_t usable_cpus() {
    std::uint64_t cpus = affinity_cpus().size();
    const std::uint64_t limit = cgroup_cpu_limit();
    if (limit != 0) cpus = std::min(cpus, std::max<std::uint64_t>(1, limit));
    return static_cast<std::uint32_t>(std::clamp<std::uint64_t>(cpus, 1, composepar::kMaxCapacity));
}

// Python twin: _cpus.process_cpus: usable_cpus(), read again when the value
// kept is older than kCpusMaxAgeNs (_cpus.MAX_AGE), so a lease follows a
// change of affinity or quota within a second without reading /proc and
// /sys at every refresh.
constexpr std::int64_t kCpusMaxAgeNs = 1'000'000'000;
std::atomic<std::int64_t> g_cpus_read_ns{0};  // monotonic time of the last read; 0: never read
std::atomic<std::uint32_t> g_cpus{1};         // its result

std::uint32_t process_cpus() {
    const std::int64_t now = composepar::monotonic_ns();
    // Acquire pairs with the release store below: a reader that sees a read
    // time sees the count stored before it (or a later one).
    const std::int64_t read_at = g_cpus_read_ns.load(std::memory_order_acquire);
    if (read_at != 0 && now - read_at <= kCpusMaxAgeNs) return g_cpus.load(std::memory_order_relaxed);
    const std::uint32_t cpus = usable_cpus();  // two threads may both read: either result is right
    g_cpus.store(cpus, std::memory_order_relaxed);
    g_cpus_read_ns.store(now, std::memory_order_release);
    return cpus;
}

// ------------------------------------------------------------------ domains
// Twins of composepar/_config.py.

constexpr const char* kShmDirectory = "/dev/shm";  // _config.SHM_DIRECTORY
constexpr std::size_t kDomainMaxLength = 64;       // _config._DOMAIN_MAX_LENGTH
constexpr const char* kDefaultDomain = "default";  // _config.DEFAULT_DOMAIN
constexpr const char* kCpuSetPrefix = "cpus-";     // _config._CPU_SET_PREFIX

bool is_ascii_alnum(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// Python twin: _config._is_valid_domain.
bool is_valid_domain(const std::string& domain) {
    if (domain.empty() || domain.size() > kDomainMaxLength || !is_ascii_alnum(domain[0])) return false;
    return std::all_of(domain.begin(), domain.end(),
                       [](char c) { return is_ascii_alnum(c) || c == '.' || c == '_' || c == '-'; });
}

// Python twin: _config.check_domain's message.
std::string check_domain(const std::string& domain, const char* source) {
    if (!is_valid_domain(domain))
        throw std::invalid_argument(std::string(source) +
                                    " must be 1-64 characters of letters, digits, '.', '_' or '-', starting "
                                    "with a letter or digit (it becomes part of a file name in " +
                                    kShmDirectory + "); got '" + domain + "' instead");
    return domain;
}

// SHA-256 (FIPS 180-4) of `data` as 64 hex digits: hashlib.sha256(...).hexdigest().
std::string sha256_hex(const std::string& data) {
    static constexpr std::uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    std::uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                          0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    auto rotr = [](std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
    std::string message = data;
    message += static_cast<char>(0x80);
    while (message.size() % 64 != 56) message += '\0';
    const std::uint64_t bits = static_cast<std::uint64_t>(data.size()) * 8;
    for (int shift = 56; shift >= 0; shift -= 8) message += static_cast<char>((bits >> shift) & 0xff);
    for (std::size_t chunk = 0; chunk < message.size(); chunk += 64) {
        std::uint32_t w[64];
        for (std::size_t i = 0; i < 16; ++i) {
            w[i] = 0;
            for (std::size_t b = 0; b < 4; ++b)
                w[i] = (w[i] << 8) | static_cast<unsigned char>(message[chunk + 4 * i + b]);
        }
        for (std::size_t i = 16; i < 64; ++i) {
            const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
        for (std::size_t i = 0; i < 64; ++i) {
            const std::uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
    }
    static constexpr char kHex[] = "0123456789abcdef";
    std::string hex;
    for (std::uint32_t word : h)
        for (int shift = 28; shift >= 0; shift -= 4) hex += kHex[(word >> shift) & 0xf];
    return hex;
}

// Python twin: _config.cpu_set_domain: "default" when `cpus` include every
// CPU of `online`, else "cpus-" and the list with '.' for ',' ("cpus-0-3.8"),
// or, past 64 characters, "cpus-<count>-<first 16 hex digits of its SHA-256>".
std::string cpu_set_domain(const CpuList& cpus, const CpuList& online) {
    if (std::includes(cpus.begin(), cpus.end(), online.begin(), online.end())) return kDefaultDomain;
    const std::string listed = format_cpu_list(cpus);
    std::string domain = kCpuSetPrefix + listed;
    std::replace(domain.begin(), domain.end(), ',', '.');
    if (domain.size() > kDomainMaxLength)
        domain = kCpuSetPrefix + std::to_string(cpus.size()) + "-" + sha256_hex(listed).substr(0, 16);
    return domain;
}

// Python twin: _config.resolve_domain (with default_domain): the argument,
// else $COMPOSEPAR_DOMAIN if not empty, else the domain of the CPU set.
std::string resolve_domain(const char* domain) {
    if (domain != nullptr) return check_domain(domain, "domain");
    const char* from_env = std::getenv("COMPOSEPAR_DOMAIN");
    if (from_env != nullptr && from_env[0] != '\0') return check_domain(from_env, "COMPOSEPAR_DOMAIN");
    return cpu_set_domain(affinity_cpus(), online_cpus());
}

// Python twin: _config.segment_path.
std::string segment_path(const std::string& domain) {
    return std::string(kShmDirectory) + "/composepar-" + std::to_string(::geteuid()) + "-" + domain;
}

// The capacity a segment this process creates gets. Python twin:
// _config.resolve_capacity (its $COMPOSEPAR_CAPACITY branch, whose error an
// invalid value raises whether or not a segment is created), else
// _arbiter._native_handle's default, the usable CPUs read now.
std::uint32_t capacity_for_a_new_segment() {
    const char* from_env = std::getenv("COMPOSEPAR_CAPACITY");
    if (from_env == nullptr || from_env[0] == '\0') return usable_cpus();
    long long value = 0;
    if (!parse_long_long(from_env, value) || value < 1 || value > composepar::kMaxCapacity)
        throw std::invalid_argument("COMPOSEPAR_CAPACITY must be an integer between 1 and " +
                                    std::to_string(composepar::kMaxCapacity) + "; got '" + from_env +
                                    "' instead (unset it to use the usable CPUs)");
    return static_cast<std::uint32_t>(value);
}

// ------------------------------------------------------------------ attachments

// One Arbiter per segment path in this process, shared by every handle and
// lease on it (Python twin: composepar._arbiter._handles). An entry expires
// when the last handle and lease on it are gone; the Arbiter's destructor
// then releases the process's slot.
std::mutex g_attachments_mutex;  // guards g_attachments; held across fork() (below)
std::map<std::string, std::weak_ptr<Arbiter>> g_attachments;
std::once_flag g_atfork_once;

// A fork child must not inherit g_attachments_mutex locked by a thread that
// does not exist in it: the mutex is taken before fork() and released on
// both sides after.
void lock_attachments_for_fork() { g_attachments_mutex.lock(); }
void unlock_attachments_after_fork() { g_attachments_mutex.unlock(); }

// Rounds of "cleanup removed the segment between our open and our slot"
// before giving up (Python twin: _segments._OPEN_ATTEMPTS).
constexpr int kAttachAttempts = 20;

std::shared_ptr<Arbiter> attach_arbiter(const std::string& path) {
    std::call_once(g_atfork_once, [] {
        const int rc = ::pthread_atfork(lock_attachments_for_fork, unlock_attachments_after_fork,
                                        unlock_attachments_after_fork);
        if (rc != 0) throw composepar::SystemError(rc, "register composepar's fork handlers");
    });
    const std::uint32_t default_capacity = capacity_for_a_new_segment();
    for (int attempt = 0; attempt < kAttachAttempts; ++attempt) {
        std::shared_ptr<Arbiter> arbiter;
        {
            std::lock_guard<std::mutex> lock(g_attachments_mutex);
            arbiter = g_attachments[path].lock();
        }
        if (!arbiter) {
            // Opened without g_attachments_mutex: the core's first Arbiter
            // registers its own fork handler, and pthread_atfork waits for a
            // fork in progress, whose prepare handler waits for our mutex.
            // Capacity 0: join an existing segment as it is, never re-create it.
            auto opened = std::make_shared<Arbiter>(path, 0, default_capacity, composepar::own_command_name());
            std::lock_guard<std::mutex> lock(g_attachments_mutex);
            arbiter = g_attachments[path].lock();  // another thread may have opened it meanwhile: use one
            if (!arbiter) arbiter = opened;
            g_attachments[path] = arbiter;
        }
        try {
            // Take this process's slot now (a lease opened and closed at once,
            // as _segments.open_budget does): `cleanup` never retires a segment
            // in which a live process has a slot, so no handle finds its
            // segment removed under it. (A fork child takes its own slot here,
            // or at its first call on an inherited handle.)
            composepar::LeaseState state;
            const std::uint64_t epoch = arbiter->lease_open(0, 0, state);
            arbiter->lease_close(epoch, state);
            return arbiter;
        } catch (const composepar::SegmentRetired&) {
            std::lock_guard<std::mutex> lock(g_attachments_mutex);  // forget it; the next round opens the new one
            auto found = g_attachments.find(path);
            if (found != g_attachments.end() && found->second.lock() == arbiter) g_attachments.erase(found);
        }
    }
    throw composepar::SegmentError("could not attach to " + path +
                                   ": `cleanup` kept removing it; stop the cleanup loop, or use another domain");
}

// The extra tokens a lease asks for: as a task scope of the Python layer
// does (Python twin: _task.TaskScope's `min(capacity, process_cpus()) - 1`),
// so a lease never counts more threads than the process's CPUs.
std::uint32_t lease_extra_wanted(std::uint32_t capacity) { return std::min(capacity, process_cpus()) - 1; }

}  // namespace

// The handles' definitions, at global scope as composepar.h declares them.

struct composepar_budget {
    std::shared_ptr<Arbiter> arbiter;  // shared with the process's other handles and leases on the domain
    std::string domain;                // resolved at attach
};

struct composepar_lease {
    std::shared_ptr<Arbiter> arbiter;  // keeps the attachment alive while the lease is open
    pid_t pid = 0;                     // the process that opened it; in any other (a fork child) it is inert
    mutable std::mutex mutex;          // orders the task's thread and a refresher; guards the fields below
    std::uint64_t epoch = 0;           // the registration it was opened under
    composepar::LeaseState state{};    // what it holds now
};

namespace {

int invalid_null(const char* function, const char* parameter) {
    return fail(EINVAL, std::string(function) + ": `" + parameter + "` must not be NULL");
}

}  // namespace

extern "C" {

COMPOSEPAR_API composepar_budget* composepar_attach(const char* domain) {
    return guarded_pointer([&]() -> composepar_budget* {
        std::string name = resolve_domain(domain);
        std::shared_ptr<Arbiter> arbiter = attach_arbiter(segment_path(name));
        return new composepar_budget{std::move(arbiter), std::move(name)};
    });
}

COMPOSEPAR_API void composepar_detach(composepar_budget* budget) {
    // The last reference's ~Arbiter releases the slot; it throws nothing.
    delete budget;
}

COMPOSEPAR_API int composepar_capacity(const composepar_budget* budget) {
    if (budget == nullptr) return invalid_null("composepar_capacity", "budget");
    return static_cast<int>(budget->arbiter->capacity());
}

COMPOSEPAR_API const char* composepar_domain(const composepar_budget* budget) {
    if (budget == nullptr) {
        invalid_null("composepar_domain", "budget");
        return nullptr;
    }
    return budget->domain.c_str();
}

COMPOSEPAR_API composepar_lease* composepar_lease_open(composepar_budget* budget) {
    if (budget == nullptr) {
        invalid_null("composepar_lease_open", "budget");
        return nullptr;
    }
    return guarded_pointer([&]() -> composepar_lease* {
        auto lease = std::make_unique<composepar_lease>();
        lease->arbiter = budget->arbiter;
        lease->pid = ::getpid();
        lease->epoch = lease->arbiter->lease_open(lease_extra_wanted(lease->arbiter->capacity()), 0, lease->state);
        return lease.release();
    });
}

COMPOSEPAR_API int composepar_lease_threads(const composepar_lease* lease) {
    if (lease == nullptr) return invalid_null("composepar_lease_threads", "lease");
    if (lease->pid != ::getpid()) return 1;  // the parent's lease, in a fork child: inert
    return guarded([&] {
        std::lock_guard<std::mutex> lock(lease->mutex);
        return static_cast<int>(1 + lease->state.tokens_extra);
    });
}

COMPOSEPAR_API int composepar_lease_refresh(composepar_lease* lease) {
    if (lease == nullptr) return invalid_null("composepar_lease_refresh", "lease");
    if (lease->pid != ::getpid()) return 1;  // the parent's lease, in a fork child: inert
    return guarded([&] {
        const std::uint32_t extra_wanted = lease_extra_wanted(lease->arbiter->capacity());
        std::lock_guard<std::mutex> lock(lease->mutex);
        lease->arbiter->lease_refresh(lease->epoch, extra_wanted, lease->state);
        return static_cast<int>(1 + lease->state.tokens_extra);
    });
}

COMPOSEPAR_API void composepar_lease_close(composepar_lease* lease) {
    if (lease == nullptr) return;
    if (lease->pid == ::getpid()) {
        // A close that fails (a futex or lock error) leaves the lease's tokens
        // counted until the process exits, when the budget reclaims them; the
        // reason is kept for composepar_last_error().
        guarded([&] {
            std::lock_guard<std::mutex> lock(lease->mutex);
            lease->arbiter->lease_close(lease->epoch, lease->state);
            return 0;
        });
    }
    delete lease;
}

COMPOSEPAR_API int composepar_acquire(composepar_budget* budget, int min_tokens, int max_tokens, double timeout_s) {
    if (budget == nullptr) return invalid_null("composepar_acquire", "budget");
    const std::uint32_t capacity = budget->arbiter->capacity();
    if (min_tokens < 1 || max_tokens < min_tokens || static_cast<std::uint32_t>(min_tokens) > capacity)
        return fail(EINVAL, "composepar_acquire: the rule is 1 <= min_tokens <= max_tokens and min_tokens <= the "
                            "capacity (" + std::to_string(capacity) + ") or it can never be granted; got min_tokens " +
                            std::to_string(min_tokens) + ", max_tokens " + std::to_string(max_tokens) + " instead");
    if (std::isnan(timeout_s))
        return fail(EINVAL, "composepar_acquire: timeout_s must be a number of seconds (< 0: wait forever); got NaN");
    // Seconds to nanoseconds; waits past ~292 years are forever (-1).
    const std::int64_t timeout_ns =
        timeout_s < 0 || timeout_s * 1e9 >= 9.2e18 ? -1 : static_cast<std::int64_t>(timeout_s * 1e9);
    return guarded([&] {
        std::uint32_t granted = 0;
        const composepar::AcquireOutcome outcome =
            budget->arbiter->acquire(static_cast<std::uint32_t>(min_tokens), static_cast<std::uint32_t>(max_tokens),
                                     timeout_ns, composepar::InterruptCheck(), granted);
        if (outcome != composepar::AcquireOutcome::granted) {
            char timeout[32];
            std::snprintf(timeout, sizeof timeout, "%g", timeout_s);
            return fail(ETIMEDOUT, "could not get " + std::to_string(min_tokens) + " of " + std::to_string(capacity) +
                                       " tokens in domain '" + budget->domain + "' within " + timeout +
                                       " s; `python -m composepar status --domain " + budget->domain +
                                       "` shows who holds them");
        }
        return static_cast<int>(granted);
    });
}

COMPOSEPAR_API int composepar_release(composepar_budget* budget, int tokens) {
    if (budget == nullptr) return invalid_null("composepar_release", "budget");
    if (tokens < 0) return fail(EINVAL, "composepar_release: tokens must be >= 0; got " + std::to_string(tokens));
    return guarded([&] {
        budget->arbiter->release(static_cast<std::uint32_t>(tokens));  // more than held: std::invalid_argument
        return 0;
    });
}

COMPOSEPAR_API const char* composepar_last_error(void) { return t_last_error; }

// Not in composepar.h, not an API: a test hook through which
// tests/test_capi.py checks the CPU-set domain rule against its Python twin
// for CPU lists this machine cannot produce. `cpus` and `online` are kernel
// CPU lists ("0-3,8"); writes the domain into `out`, returns its length, or
// -EINVAL (a malformed list) or -ERANGE (`out` too small).
COMPOSEPAR_API int composepar_internal_cpu_set_domain(const char* cpus, const char* online, char* out,
                                                      std::size_t size) {
    if (cpus == nullptr || online == nullptr || out == nullptr)
        return invalid_null("composepar_internal_cpu_set_domain", "cpus, online and out");
    return guarded([&] {
        CpuList cpu_list, online_list;
        if (!parse_cpu_list(cpus, cpu_list) || !parse_cpu_list(online, online_list))
            return fail(EINVAL, "composepar_internal_cpu_set_domain: malformed CPU list");
        const std::string domain = cpu_set_domain(cpu_list, online_list);
        if (domain.size() >= size) return fail(ERANGE, "composepar_internal_cpu_set_domain: `out` too small");
        std::memcpy(out, domain.c_str(), domain.size() + 1);
        return static_cast<int>(domain.size());
    });
}

}  // extern "C"
