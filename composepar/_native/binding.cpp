// nanobind module composepar._native._arbiter: small primitives over
// composepar::Arbiter. Defaults, argument checks and messages for users
// live in composepar/_arbiter.py.
#include "arbiter.hpp"
#include "regions.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <Python.h>
#include <link.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace nb = nanobind;
using namespace nb::literals;
using composepar::Arbiter;
using composepar::LeaseState;

namespace {

// One lease: the thread's own token plus extras, until close(). The owner
// thread and a follower thread may both use it: m_mutex orders them.
//
// Lease calls keep the GIL: they never block for long (the segment mutex
// guards short critical sections) and re-taking the GIL would cost more
// than the call. No path takes the GIL while holding the segment mutex.
class Lease {
public:
    Lease(Arbiter& arbiter, std::uint32_t extra_wanted, std::int32_t pool_owner_pid) : m_arbiter(arbiter) {
        m_epoch = m_arbiter.lease_open(extra_wanted, pool_owner_pid, m_state);
    }
    ~Lease() {
        std::lock_guard<std::mutex> lock(m_mutex);
        if (!m_open) return;
        try {
            m_arbiter.lease_close(m_epoch, m_state);
        } catch (...) {
            // Destructors must not throw; the tokens come back when the process dies.
        }
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    // Returns the threads the lease allows now (1 + extras).
    std::uint32_t refresh(std::uint32_t extra_wanted) {
        std::lock_guard<std::mutex> lock(m_mutex);
        if (!m_open) throw std::logic_error("the lease is closed; open a new one");
        m_arbiter.lease_refresh(m_epoch, extra_wanted, m_state);
        return 1 + m_state.tokens_extra;
    }
    void close() {
        std::lock_guard<std::mutex> lock(m_mutex);
        if (!m_open) return;
        m_open = false;
        m_arbiter.lease_close(m_epoch, m_state);
    }
    // Reads take the mutex too: a follower may be writing m_state.
    bool is_open() {
        std::lock_guard<std::mutex> lock(m_mutex);
        return m_open;
    }
    LeaseState state() {
        std::lock_guard<std::mutex> lock(m_mutex);
        return m_state;
    }

private:
    Arbiter& m_arbiter;      // kept alive by nb::keep_alive on open_lease
    std::mutex m_mutex;      // guards the three fields below
    std::uint64_t m_epoch;   // the registration it was opened under
    LeaseState m_state{};    // what it holds now
    bool m_open = true;      // false once closed
};

// A number that changes whenever a shared object is loaded or unloaded, so
// callers rescan for thread pools only then. glibc passes its running totals
// of loads (dlpi_adds) and unloads (dlpi_subs) with every entry: reading them
// off the first entry is O(1) (this runs at every task start), and unlike a
// count of the objects it cannot miss an unload followed by a load. A libc
// without those fields gets the count of objects instead.
struct LoadGeneration {
    std::uint64_t value = 0;
    bool from_counters = false;
};

int read_load_generation(struct dl_phdr_info* info, size_t size, void* data) {
    auto* generation = static_cast<LoadGeneration*>(data);
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs)) {
        generation->value = info->dlpi_adds + info->dlpi_subs;
        generation->from_counters = true;
        return 1;  // stop: the first entry has the totals
    }
    ++generation->value;
    return 0;
}

std::uint64_t loaded_objects_generation() {
    LoadGeneration generation;
    dl_iterate_phdr(read_load_generation, &generation);
    return generation.value;
}

// The loaded objects' names (dlpi_name: the path they were loaded by; the
// main program's is empty and left out), with the generation they belong to,
// in one pass under the loader's lock. What /proc/self/maps would say, without
// reading and parsing a file whose size grows with the process's mappings
// (a process holding many arrays has thousands: ~8 ms a read, measured).
struct LoadedNames {
    LoadGeneration generation;  // as loaded_objects_generation() counts it
    std::vector<std::string> names;
    bool failed = false;  // an allocation failed: the walk stopped, the caller throws
};

// Called by dl_iterate_phdr under the dynamic loader's lock, which glibc
// releases only when the walk returns: nothing may throw through it (a
// later dlopen would deadlock), so a failed allocation stops the walk.
int read_loaded_names(struct dl_phdr_info* info, size_t size, void* data) noexcept {
    auto* out = static_cast<LoadedNames*>(data);
    if (out->generation.value == 0 && !out->generation.from_counters) {
        read_load_generation(info, size, &out->generation);  // the first entry: the totals, or a count of 1
    } else if (!out->generation.from_counters) {
        ++out->generation.value;
    }
    if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') {
        try {
            out->names.emplace_back(info->dlpi_name);
        } catch (...) {
            out->failed = true;
            return 1;
        }
    }
    return 0;  // every entry: the names of all
}

// Paths are bytes (a file name need not be UTF-8): the caller decodes them
// with os.fsdecode, as Python does for any path.
std::tuple<std::uint64_t, std::vector<nb::bytes>> loaded_object_names() {
    LoadedNames out;
    dl_iterate_phdr(read_loaded_names, &out);
    if (out.failed) throw std::bad_alloc();
    std::vector<nb::bytes> names;
    names.reserve(out.names.size());
    for (const std::string& name : out.names) names.emplace_back(name.data(), name.size());
    return {out.generation.value, std::move(names)};
}

// Raises composepar._errors.<name>(message): the Python layer owns the classes.
void raise_python(const char* name, const char* message) {
    nb::object cls = nb::module_::import_("composepar._errors").attr(name);
    PyErr_SetString(cls.ptr(), message);
}

}  // namespace

NB_MODULE(_arbiter, m) {
    m.doc() = "Native core of composepar's shared-memory arbiter (private; use composepar.Arbiter).";
    // composepar keeps one Arbiter per segment alive for the whole process
    // (its descriptor carries the slot's fcntl lock), so some instances are
    // still alive at interpreter exit by design: not a reference leak.
    nb::set_leak_warnings(false);
    m.attr("SLOT_COUNT") = composepar::kSlotCount;
    m.attr("MAX_CAPACITY") = composepar::kMaxCapacity;
    m.attr("ABI_VERSION") = composepar::kAbiVersion;
    m.attr("SEGMENT_BYTES") = sizeof(composepar::Segment);
    m.attr("FOLLOW_GROW") = composepar::kFollowGrow;
    m.attr("FOLLOW_SHRINK") = composepar::kFollowShrink;

    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const composepar::SystemError& e) {
            nb::object error = nb::steal(PyObject_CallFunction(PyExc_OSError, "is", e.error_number(), e.what()));
            PyErr_SetObject(PyExc_OSError, error.ptr());
        } catch (const composepar::CapacityMismatch& e) {
            raise_python("CapacityMismatchError", e.what());
        } catch (const composepar::SegmentRetired& e) {
            raise_python("SegmentRetiredError", e.what());
        } catch (const composepar::SegmentError& e) {
            raise_python("ArbiterError", e.what());
        } catch (const composepar::SlotLost& e) {
            raise_python("ArbiterError", e.what());
        }
    });

    nb::class_<Lease>(m, "Lease",
                      "A running thread's claim: its own token plus extras for inner threads.\n\n"
                      "Opened by Arbiter.lease(); use as a context manager or call close().\n"
                      "``threads`` is what the thread's native pools may use now (at least 1,\n"
                      "even when overdrawn).")
        .def(
            "refresh",
            [](Lease& l, std::optional<std::int64_t> extra_wanted) {
                std::int64_t ask = extra_wanted ? *extra_wanted : l.state().extra_wanted;
                if (ask < 0 || ask > composepar::kMaxCapacity)
                    throw std::invalid_argument("extra_wanted must be an int >= 0; got " + std::to_string(ask) +
                                                " instead");
                return l.refresh(static_cast<std::uint32_t>(ask));
            },
            "extra_wanted"_a = nb::none(),
            "Re-applies the fair-share policy; returns the new ``threads``. ``extra_wanted``\n"
            "changes the ask (default: keep it). The lease may grow into free capacity\n"
            "or give back extras above its share.")
        .def("close", &Lease::close, "Gives every token back. Closing twice is harmless.")
        .def("__enter__", [](nb::handle self) { return nb::borrow(self); })
        .def("__exit__", [](Lease& l, nb::args) { l.close(); })
        .def_prop_ro("closed", [](Lease& l) { return !l.is_open(); })
        .def_prop_ro("own_token", [](Lease& l) { return l.state().own_token != 0; },
                     "False when the lease runs overdrawn (no token was free when it opened).")
        .def_prop_ro("tokens_extra", [](Lease& l) { return l.state().tokens_extra; })
        .def_prop_ro("extra_wanted", [](Lease& l) { return l.state().extra_wanted; })
        .def_prop_ro("threads", [](Lease& l) { return 1 + l.state().tokens_extra; })
        .def_prop_ro(
            "follow_interest",
            [](Lease& l) {
                const LeaseState st = l.state();
                if (!st.open) return std::uint32_t{0};
                const bool wants = !st.own_token || st.extra_wanted > st.tokens_extra;
                return (wants ? composepar::kFollowGrow : 0u) | (st.tokens_extra > 0 ? composepar::kFollowShrink : 0u);
            },
            "What the policy may change for this lease, as FOLLOW_GROW | FOLLOW_SHRINK bits: it\n"
            "wants more (overdrawn, or fewer extras than asked) / it holds extras. 0 when closed.")
        .def("__repr__", [](Lease& l) {
            if (!l.is_open()) return std::string("<composepar.Lease closed>");
            const LeaseState st = l.state();
            return "<composepar.Lease threads=" + std::to_string(1 + st.tokens_extra) +
                   ", own_token=" + (st.own_token ? "True" : "False") + ">";
        });

    // Parallel-region hooks (regions.hpp).
    nb::class_<composepar::regions::Cell>(m, "RegionCell",
                                          "A task's budget as its thread's OpenMP region hooks read it.")
        .def(nb::init<>())
        .def_prop_rw(
            "budget", [](composepar::regions::Cell& c) { return c.budget.load(std::memory_order_relaxed); },
            [](composepar::regions::Cell& c, int v) { c.budget.store(v, std::memory_order_relaxed); },
            "Threads the task may use now; 0: the hooks change nothing.")
        .def_prop_rw(
            "ceiling", [](composepar::regions::Cell& c) { return c.ceiling.load(std::memory_order_relaxed); },
            [](composepar::regions::Cell& c, int v) { c.ceiling.store(v, std::memory_order_relaxed); },
            "The program's own OpenMP value at the task's start; 0: the ICV the hooks first see.");
    // The caller keeps the cell alive while it is bound (_task holds it in the scope).
    m.def("bind_region_cell", [](composepar::regions::Cell* cell) { composepar::regions::bind_thread(cell); },
          "cell"_a.none(), "Binds the calling thread's region budget (None: unbinds, putting back what changed).");
    m.def("install_region_hooks", &composepar::regions::install, nb::call_guard<nb::gil_scoped_release>(),
          "Redirects the GNU OpenMP region entries of newly loaded objects; returns the slots redirected.");
    m.def("openmp_runtime", &composepar::regions::openmp_runtime, "path"_a,
          "The path of the object defining the omp_get_max_threads that the loaded object at path reaches.");

    m.def("loaded_objects_generation", &loaded_objects_generation,
          "A number that changes whenever a shared object is loaded or unloaded in this process.");
    m.def("loaded_object_names", &loaded_object_names,
          "(loaded_objects_generation(), the paths of the loaded shared objects), read in one pass.");

    nb::class_<Arbiter>(m, "Arbiter")
        .def(nb::init<std::string, std::uint32_t, std::uint32_t, std::string>(), "path"_a, "capacity"_a,
             "default_capacity"_a, "command"_a, nb::call_guard<nb::gil_scoped_release>())
        .def_prop_ro("path", &Arbiter::path)
        .def_prop_ro("capacity", &Arbiter::capacity)
        // Non-blocking calls keep the GIL (see Lease above).
        .def("acquire_nowait", &Arbiter::acquire_nowait, "min_tokens"_a, "max_tokens"_a)
        .def(
            "acquire",
            [](Arbiter& self, std::uint32_t min_tokens, std::uint32_t max_tokens, std::int64_t timeout_ns) {
                std::uint32_t granted = 0;
                composepar::AcquireOutcome outcome;
                {
                    nb::gil_scoped_release unlocked;
                    outcome = self.acquire(min_tokens, max_tokens, timeout_ns, [] {
                        nb::gil_scoped_acquire locked;
                        return PyErr_CheckSignals() != 0;  // leaves the exception set
                    }, granted);
                }
                if (outcome == composepar::AcquireOutcome::interrupted) throw nb::python_error();
                return granted;  // 0: timed out
            },
            "min_tokens"_a, "max_tokens"_a, "timeout_ns"_a)
        .def("release", &Arbiter::release, "n"_a)
        .def("tokens_explicit", &Arbiter::tokens_explicit, nb::call_guard<nb::gil_scoped_release>())
        .def(
            "open_lease",
            [](Arbiter& self, std::uint32_t extra_wanted, std::int32_t pool_owner_pid) {
                return new Lease(self, extra_wanted, pool_owner_pid);
            },
            "extra_wanted"_a, "pool_owner_pid"_a = 0, nb::keep_alive<0, 1>(), nb::rv_policy::take_ownership)
        .def("set_pool_demand", &Arbiter::set_pool_demand, "tasks"_a)
        .def_prop_ro("policy_seq", &Arbiter::policy_seq)
        // Blocks: the GIL goes while it sleeps.
        .def("wait_policy", &Arbiter::wait_policy, "seen"_a, "interest"_a, "timeout_ns"_a,
             nb::call_guard<nb::gil_scoped_release>())
        .def("wake_follower", &Arbiter::wake_follower)
        .def(
            "stats",
            [](Arbiter& self) {
                composepar::SegmentStats s;
                {
                    nb::gil_scoped_release unlocked;
                    s = self.stats();
                }
                nb::list processes;
                for (const auto& p : s.processes)
                    processes.append(nb::make_tuple(p.pid, p.command, p.threads_active, p.leases_overdrawn,
                                                    p.tokens_held, p.tokens_explicit, p.tokens_wanted, p.waiters,
                                                    p.tokens_waited, p.pool_demand, p.pool_leases_open));
                return nb::make_tuple(s.capacity, s.tokens_free, s.claimants, s.tokens_reclaimed,
                                      s.processes_reaped, processes);
            })
        .def("check_invariants", &Arbiter::check_invariants, nb::call_guard<nb::gil_scoped_release>())
        .def("reap", &Arbiter::reap, nb::call_guard<nb::gil_scoped_release>())
        .def("detach", &Arbiter::detach, nb::call_guard<nb::gil_scoped_release>())
        .def("retire_and_unlink", &Arbiter::retire_and_unlink, nb::call_guard<nb::gil_scoped_release>());
}
