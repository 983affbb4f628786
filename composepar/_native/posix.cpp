#include "posix.hpp"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <string>

namespace composepar {

SystemError::SystemError(int error_number, const std::string& action)
    : std::runtime_error(action + ": " + std::strerror(error_number)), m_errno(error_number) {}

FileDescriptor::FileDescriptor(FileDescriptor&& other) noexcept : m_fd(other.m_fd) { other.m_fd = -1; }

FileDescriptor& FileDescriptor::operator=(FileDescriptor&& other) noexcept {
    if (this != &other) {
        if (m_fd >= 0) ::close(m_fd);
        m_fd = other.m_fd;
        other.m_fd = -1;
    }
    return *this;
}

FileDescriptor::~FileDescriptor() {
    if (m_fd >= 0) ::close(m_fd);
}

SharedMapping::SharedMapping(int fd, std::size_t bytes, const std::string& path) : m_bytes(bytes) {
    void* data = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (data == MAP_FAILED) throw SystemError(errno, "mmap " + path);
    m_data = data;
}

SharedMapping::SharedMapping(SharedMapping&& other) noexcept : m_data(other.m_data), m_bytes(other.m_bytes) {
    other.m_data = nullptr;
    other.m_bytes = 0;
}

SharedMapping& SharedMapping::operator=(SharedMapping&& other) noexcept {
    if (this != &other) {
        if (m_data) ::munmap(m_data, m_bytes);
        m_data = other.m_data;
        m_bytes = other.m_bytes;
        other.m_data = nullptr;
        other.m_bytes = 0;
    }
    return *this;
}

SharedMapping::~SharedMapping() {
    if (m_data) ::munmap(m_data, m_bytes);
}

namespace {

// Reads a small /proc file whole; returns false if it does not exist.
bool read_small_file(const std::string& path, std::string& out) {
    FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        if (errno == ENOENT || errno == ESRCH) return false;
        throw SystemError(errno, "open " + path);
    }
    char buffer[1024];
    out.clear();
    for (;;) {
        ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == ESRCH) return false;  // the process went away while we read
            throw SystemError(errno, "read " + path);
        }
        if (n == 0) return true;
        out.append(buffer, static_cast<std::size_t>(n));
    }
}

}  // namespace

ProcessFacts read_process_facts(int pid) {
    ProcessFacts facts;
    std::string text;
    if (pid <= 0 || !read_small_file("/proc/" + std::to_string(pid) + "/stat", text)) return facts;
    // "pid (comm) state ppid ..." where comm may hold spaces and ')':
    // the fields after the last ')' are fixed. state is field 3,
    // starttime field 22, i.e. the 20th field after the ')'.
    std::size_t close = text.rfind(')');
    if (close == std::string::npos) return facts;
    const char* p = text.c_str() + close + 1;
    int field = 2;
    char state = '?';
    while (*p != '\0') {
        while (*p == ' ') ++p;
        if (*p == '\0') break;
        ++field;
        const char* start = p;
        while (*p != ' ' && *p != '\0' && *p != '\n') ++p;
        if (field == 3) state = *start;
        if (field == 22) {
            facts.exists = true;
            facts.zombie = (state == 'Z' || state == 'X' || state == 'x');
            facts.start_time = std::strtoull(start, nullptr, 10);
            return facts;
        }
        if (*p == '\n') break;
    }
    return facts;  // malformed: treated as gone
}

std::string own_command_name() {
    std::string text;
    if (!read_small_file("/proc/self/comm", text)) return "?";
    while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
    return text;
}

void futex_wait_shared(std::uint32_t* word, std::uint32_t expected, std::int64_t timeout_ns) {
    if (timeout_ns < 0) timeout_ns = 0;
    struct timespec relative;
    relative.tv_sec = static_cast<time_t>(timeout_ns / 1000000000);
    relative.tv_nsec = static_cast<long>(timeout_ns % 1000000000);
    // Not FUTEX_PRIVATE_FLAG: the word lives in a MAP_SHARED mapping that
    // other processes wait on too.
    long rc = ::syscall(SYS_futex, word, FUTEX_WAIT, expected, &relative, nullptr, 0);
    if (rc != 0 && errno != EAGAIN && errno != EINTR && errno != ETIMEDOUT)
        throw SystemError(errno, "futex wait on the arbiter's wake word");
}

void futex_wake_all_shared(std::uint32_t* word) {
    long rc = ::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
    if (rc < 0) throw SystemError(errno, "futex wake on the arbiter's wake word");
}

void futex_wait_bits_shared(std::uint32_t* word, std::uint32_t expected, std::int64_t deadline_ns,
                            std::uint32_t bits) {
    if (bits == 0) return;  // the kernel refuses an empty bitset (EINVAL)
    if (deadline_ns < 0) deadline_ns = 0;
    struct timespec absolute;
    absolute.tv_sec = static_cast<time_t>(deadline_ns / 1000000000);
    absolute.tv_nsec = static_cast<long>(deadline_ns % 1000000000);
    // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline (without
    // FUTEX_CLOCK_REALTIME); shared, as above.
    long rc = ::syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, &absolute, nullptr, bits);
    if (rc != 0 && errno != EAGAIN && errno != EINTR && errno != ETIMEDOUT)
        throw SystemError(errno, "futex wait on the arbiter's policy word");
}

void futex_wake_bits_shared(std::uint32_t* word, std::uint32_t bits) {
    long rc = ::syscall(SYS_futex, word, FUTEX_WAKE_BITSET, INT_MAX, nullptr, nullptr, bits);
    if (rc < 0) throw SystemError(errno, "futex wake on the arbiter's policy word");
}

std::int64_t monotonic_ns() {
    struct timespec now;
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

}  // namespace composepar
