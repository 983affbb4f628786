// Thin RAII wrappers over the POSIX calls the arbiter makes. Every failing
// call becomes a SystemError carrying errno and what was being done, which
// the binding maps to Python's OSError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace composepar {

// A syscall failed: errno and the action that failed (e.g. "open /dev/shm/x").
class SystemError : public std::runtime_error {
public:
    SystemError(int error_number, const std::string& action);
    int error_number() const noexcept { return m_errno; }

private:
    int m_errno;  // errno at the failing call
};

// The segment exists but is not one we may use (foreign, corrupt, other
// version, unsafe mode). The message names the path and how to remove it.
class SegmentError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Owns one file descriptor; closes it exactly once.
class FileDescriptor {
public:
    FileDescriptor() noexcept = default;
    explicit FileDescriptor(int fd) noexcept : m_fd(fd) {}
    FileDescriptor(FileDescriptor&& other) noexcept;
    FileDescriptor& operator=(FileDescriptor&& other) noexcept;
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
    ~FileDescriptor();

    int get() const noexcept { return m_fd; }
    explicit operator bool() const noexcept { return m_fd >= 0; }

private:
    int m_fd = -1;  // -1 when empty
};

// Owns one shared mapping of a whole file; unmaps it exactly once.
class SharedMapping {
public:
    SharedMapping() noexcept = default;
    SharedMapping(int fd, std::size_t bytes, const std::string& path);
    SharedMapping(SharedMapping&& other) noexcept;
    SharedMapping& operator=(SharedMapping&& other) noexcept;
    SharedMapping(const SharedMapping&) = delete;
    SharedMapping& operator=(const SharedMapping&) = delete;
    ~SharedMapping();

    void* data() const noexcept { return m_data; }

private:
    void* m_data = nullptr;  // nullptr when empty
    std::size_t m_bytes = 0;
};

// What /proc/<pid>/stat says about a process.
struct ProcessFacts {
    bool exists = false;          // false: no such pid (or already reaped)
    bool zombie = false;          // state Z or X: dead, waiting for its parent
    std::uint64_t start_time = 0; // field 22, clock ticks after boot
};

ProcessFacts read_process_facts(int pid);

// The kernel's name for this process (/proc/self/comm), at most 15 chars.
std::string own_command_name();

// Sleeps on a shared futex word until it differs from `expected`, a wake,
// or `timeout_ns` passes. Returns normally in all three cases.
void futex_wait_shared(std::uint32_t* word, std::uint32_t expected, std::int64_t timeout_ns);
// Wakes every sleeper on a shared futex word.
void futex_wake_all_shared(std::uint32_t* word);
// FUTEX_WAIT_BITSET: like futex_wait_shared, but only a wake whose bitset
// shares a bit with `bits` wakes this sleeper (the kernel filters; see
// futex(2)). `deadline_ns` is absolute, on CLOCK_MONOTONIC.
void futex_wait_bits_shared(std::uint32_t* word, std::uint32_t expected, std::int64_t deadline_ns,
                            std::uint32_t bits);
// FUTEX_WAKE_BITSET: wakes every sleeper on `word` whose bits meet `bits`.
void futex_wake_bits_shared(std::uint32_t* word, std::uint32_t bits);

// Nanoseconds on CLOCK_MONOTONIC.
std::int64_t monotonic_ns();

}  // namespace composepar
