// Parallel-region hooks for GNU OpenMP: see regions.hpp for what they do and why.
#include "regions.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <set>
#include <utility>
#include <vector>

namespace composepar::regions {

namespace {

#if defined(__x86_64__)
constexpr std::uint32_t kJumpSlot = R_X86_64_JUMP_SLOT;
constexpr std::uint32_t kGlobDat = R_X86_64_GLOB_DAT;
#define COMPOSEPAR_REGION_HOOKS 1
#elif defined(__aarch64__)
constexpr std::uint32_t kJumpSlot = R_AARCH64_JUMP_SLOT;
constexpr std::uint32_t kGlobDat = R_AARCH64_GLOB_DAT;
#define COMPOSEPAR_REGION_HOOKS 1
#endif

using Body = void (*)(void*);
using AnyFunction = void (*)();

// The libgomp entries that start a parallel region (libgomp_g.h). Every
// compiler-generated region goes through one of them.
enum Entry : int {
    kParallel,                  // void (Body, void*, unsigned num_threads, unsigned flags)
    kParallelReductions,        // unsigned (Body, void*, unsigned, unsigned)
    kLoopStatic,                // void (Body, void*, unsigned, long start, long end, long incr, long chunk, unsigned)
    kLoopDynamic,
    kLoopGuided,
    kLoopNonmonotonicDynamic,
    kLoopNonmonotonicGuided,
    kLoopRuntime,               // void (Body, void*, unsigned, long, long, long, unsigned)
    kLoopNonmonotonicRuntime,
    kLoopMaybeNonmonotonicRuntime,
    kSections,                  // void (Body, void*, unsigned, unsigned count, unsigned flags)
    kParallelStart,             // void (Body, void*, unsigned): GCC < 4.9 (GOMP_parallel_end ends it)
    kGetMaxThreads,             // int (void): omp_get_max_threads, the program's read of the ICV
    kEntryCount
};

constexpr const char* kEntryNames[kEntryCount] = {
    "GOMP_parallel",
    "GOMP_parallel_reductions",
    "GOMP_parallel_loop_static",
    "GOMP_parallel_loop_dynamic",
    "GOMP_parallel_loop_guided",
    "GOMP_parallel_loop_nonmonotonic_dynamic",
    "GOMP_parallel_loop_nonmonotonic_guided",
    "GOMP_parallel_loop_runtime",
    "GOMP_parallel_loop_nonmonotonic_runtime",
    "GOMP_parallel_loop_maybe_nonmonotonic_runtime",
    "GOMP_parallel_sections",
    "GOMP_parallel_start",
    "omp_get_max_threads",
};

// One libgomp copy whose callers are redirected. Slots are filled once,
// under g_install_mutex, before any GOT slot points at their wrappers, and
// never change after (a copy unloaded keeps its slot: its callers went too).
constexpr int kMaxRuntimes = 8;
struct Runtime {
    // dli_fbase: identifies the copy; nullptr: slot unused. Stored last
    // (release) when a slot is registered: a thread that sees it sees the rest.
    std::atomic<const void*> base{nullptr};
    std::string path;
    // Written before the wrapper is published (release store into the GOT
    // slot); the wrappers load with acquire.
    std::atomic<AnyFunction> real[kEntryCount] = {};
    int (*get_max_threads)() = nullptr;
    void (*set_num_threads)(int) = nullptr;
    int (*get_level)() = nullptr;
};
Runtime g_runtimes[kMaxRuntimes];
std::mutex g_install_mutex;                  // guards g_runtimes' registration and every GOT write
unsigned long long g_generation_done = ~0ULL;  // loader generation of the last install; under the mutex
// Objects install() went through, by (load address, name): each is read once
// (a module's import loads one object; the rest are not walked again). An
// object no longer loaded is forgotten, so a library loaded again is redone.
std::set<std::pair<ElfW(Addr), std::string>> g_done;  // under the mutex

// Every slot redirected, to look at again at each install(): a thread inside
// the lazy resolver for that very slot when it was redirected can store the
// runtime's address over the wrapper afterwards.
struct Redirect {
    std::pair<ElfW(Addr), std::string> object;  // its object's key in g_done: looked at only while loaded
    AnyFunction* slot;
    AnyFunction wrapper;
    AnyFunction real;
    ElfW(Addr) relro_start, relro_end;
};
std::vector<Redirect> g_redirects;  // under the mutex

// The calling thread's view of each runtime in its current task (epoch).
struct ThreadRuntime {
    unsigned epoch;  // t_epoch when these were last reset
    int first;       // what unbinding puts back: the ICV when the hook first saw it in this task,
                     // or the program's later value
    int applied;     // the ICV as the hook last left it
    int ceiling;     // the program's own value
    bool seen;       // the program read the ICV (omp_get_max_threads) in this task: the ICV then
                     // changes only at its reads, never between a read and the regions it sized
};
thread_local Cell* t_cell = nullptr;
thread_local unsigned t_epoch = 1;  // 0 in ThreadRuntime: never seen
thread_local ThreadRuntime t_runtime[kMaxRuntimes];

// Brings the thread's record of runtime k up to date with the ICV now.
ThreadRuntime& observe(int k, const Cell& cell, int current) {
    ThreadRuntime& st = t_runtime[k];
    if (st.epoch != t_epoch) {
        const int ceiling = cell.ceiling.load(std::memory_order_relaxed);
        st = ThreadRuntime{t_epoch, current, current, ceiling > 0 ? std::max(ceiling, current) : current, false};
    } else if (current != st.applied) {
        // The program set it since: its value is the ceiling now, and what
        // stays when the task ends.
        st.ceiling = current;
        st.applied = current;
        st.first = current;
    }
    return st;
}

// Sets runtime k's ICV in this thread to the budget (within the ceiling), if
// it differs; `program_reads` marks it as seen by the program.
void follow(int k, bool program_reads) {
    Cell* cell = t_cell;
    Runtime& rt = g_runtimes[k];
    // base is stored (release) after the fields it guards; not seen yet: follow at the next region.
    if (cell == nullptr || rt.base.load(std::memory_order_acquire) == nullptr || rt.get_level() != 0) return;
    const int current = rt.get_max_threads();
    ThreadRuntime& st = observe(k, *cell, current);
    const int budget = cell->budget.load(std::memory_order_relaxed);
    if (budget > 0 && (program_reads || !st.seen)) {
        const int want = std::max(1, std::min(budget, st.ceiling));
        if (want != current) {
            rt.set_num_threads(want);
            st.applied = want;
        }
    }
    if (program_reads) st.seen = true;  // from now on it changes at the program's reads only, in this task
}

// A region starts with `n` threads asked (0: the ICV's).
void region(int k, unsigned n) {
    if (n == 0) follow(k, false);
}

// The runtime's own entry. It was stored before any GOT slot pointed at this
// wrapper; a core that sees the new slot before the entry (weak memory
// orders, aarch64) waits the few cycles until it sees it too.
template <class F>
F real_of(int k, Entry e) {
    AnyFunction real;
    while ((real = g_runtimes[k].real[e].load(std::memory_order_acquire)) == nullptr) {
    }
    return reinterpret_cast<F>(real);
}

// --- the wrappers, one set per runtime slot (K) ---
// A region's team is its ICV at the region's start (or its num_threads
// clause, never changed). The ICV follows the budget at the start of each
// region until the program reads it (omp_get_max_threads) in the task; from
// then on it changes only at the program's reads, so a program that sized
// its work by what it read gets exactly that team in every region after.
template <int K>
void w_parallel(Body fn, void* data, unsigned n, unsigned flags) {
    region(K, n);
    real_of<void (*)(Body, void*, unsigned, unsigned)>(K, kParallel)(fn, data, n, flags);
}

template <int K>
unsigned w_parallel_reductions(Body fn, void* data, unsigned n, unsigned flags) {
    region(K, n);
    return real_of<unsigned (*)(Body, void*, unsigned, unsigned)>(K, kParallelReductions)(fn, data, n, flags);
}

template <int K, Entry E>
void w_loop(Body fn, void* data, unsigned n, long start, long end, long incr, long chunk, unsigned flags) {
    region(K, n);
    real_of<void (*)(Body, void*, unsigned, long, long, long, long, unsigned)>(K, E)(fn, data, n, start, end, incr,
                                                                                   chunk, flags);
}

template <int K, Entry E>
void w_loop_runtime(Body fn, void* data, unsigned n, long start, long end, long incr, unsigned flags) {
    region(K, n);
    real_of<void (*)(Body, void*, unsigned, long, long, long, unsigned)>(K, E)(fn, data, n, start, end, incr, flags);
}

template <int K>
void w_sections(Body fn, void* data, unsigned n, unsigned count, unsigned flags) {
    region(K, n);
    real_of<void (*)(Body, void*, unsigned, unsigned, unsigned)>(K, kSections)(fn, data, n, count, flags);
}

template <int K>
void w_parallel_start(Body fn, void* data, unsigned n) {
    region(K, n);
    real_of<void (*)(Body, void*, unsigned)>(K, kParallelStart)(fn, data, n);
}

template <int K>
int w_get_max_threads() {
    follow(K, true);  // what it returns is what the program's next region gets
    return real_of<int (*)()>(K, kGetMaxThreads)();
}

template <class F>
AnyFunction any(F f) {
    return reinterpret_cast<AnyFunction>(f);
}

template <int K>
void fill_wrappers(AnyFunction (&out)[kEntryCount]) {
    out[kParallel] = any(&w_parallel<K>);
    out[kParallelReductions] = any(&w_parallel_reductions<K>);
    out[kLoopStatic] = any(&w_loop<K, kLoopStatic>);
    out[kLoopDynamic] = any(&w_loop<K, kLoopDynamic>);
    out[kLoopGuided] = any(&w_loop<K, kLoopGuided>);
    out[kLoopNonmonotonicDynamic] = any(&w_loop<K, kLoopNonmonotonicDynamic>);
    out[kLoopNonmonotonicGuided] = any(&w_loop<K, kLoopNonmonotonicGuided>);
    out[kLoopRuntime] = any(&w_loop_runtime<K, kLoopRuntime>);
    out[kLoopNonmonotonicRuntime] = any(&w_loop_runtime<K, kLoopNonmonotonicRuntime>);
    out[kLoopMaybeNonmonotonicRuntime] = any(&w_loop_runtime<K, kLoopMaybeNonmonotonicRuntime>);
    out[kSections] = any(&w_sections<K>);
    out[kParallelStart] = any(&w_parallel_start<K>);
    out[kGetMaxThreads] = any(&w_get_max_threads<K>);
}

struct WrapperTable {
    AnyFunction of[kMaxRuntimes][kEntryCount];
    WrapperTable() {
        fill_wrappers<0>(of[0]);
        fill_wrappers<1>(of[1]);
        fill_wrappers<2>(of[2]);
        fill_wrappers<3>(of[3]);
        fill_wrappers<4>(of[4]);
        fill_wrappers<5>(of[5]);
        fill_wrappers<6>(of[6]);
        fill_wrappers<7>(of[7]);
    }
    bool contains(AnyFunction f) const {
        for (const auto& runtime : of)
            for (AnyFunction w : runtime)
                if (w == f) return true;
        return false;
    }
};
static_assert(kMaxRuntimes == 8, "WrapperTable fills eight slots");

const WrapperTable& wrappers() {
    static const WrapperTable table;
    return table;
}

int entry_of(const char* name) {
    if (std::strncmp(name, "GOMP_parallel", 13) != 0 && std::strcmp(name, "omp_get_max_threads") != 0) return -1;
    for (int e = 0; e < kEntryCount; ++e)
        if (std::strcmp(name, kEntryNames[e]) == 0) return e;
    return -1;
}

// A loaded object, as dl_iterate_phdr reported it (copied out: nothing is
// looked up under the loader's lock, which dlopen and dlsym take too).
struct Object {
    ElfW(Addr) base;
    std::string name;
    const ElfW(Phdr)* phdr;
    ElfW(Half) phnum;
};

struct Walk {
    std::vector<Object> objects;
    unsigned long long generation = 0;
    bool failed = false;
};

int collect(struct dl_phdr_info* info, size_t, void* data) noexcept {
    auto* walk = static_cast<Walk*>(data);
    if (walk->objects.empty()) walk->generation = info->dlpi_adds + info->dlpi_subs;
    try {
        walk->objects.push_back(Object{info->dlpi_addr, info->dlpi_name ? info->dlpi_name : "", info->dlpi_phdr,
                                       info->dlpi_phnum});
    } catch (...) {
        walk->failed = true;
        return 1;
    }
    return 0;
}

int read_generation(struct dl_phdr_info* info, size_t, void* data) noexcept {
    *static_cast<unsigned long long*>(data) = info->dlpi_adds + info->dlpi_subs;
    return 1;
}

std::string basename_of(const std::string& path) { return path.substr(path.rfind('/') + 1); }

bool is_gomp(const std::string& path) { return basename_of(path).find("libgomp") != std::string::npos; }

// The runtime slot for the libgomp that defines `real`, registered if new; -1 if none fits.
int runtime_of(AnyFunction real) {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(real), &info) == 0 || info.dli_fname == nullptr) return -1;
    const std::string path = info.dli_fname;
    if (!is_gomp(path)) return -1;  // not GNU OpenMP (LLVM's and Intel's GOMP_* shims: not covered)
    for (int k = 0; k < kMaxRuntimes; ++k)  // a copy unloaded and another loaded at its address is another runtime
        if (g_runtimes[k].base.load(std::memory_order_relaxed) == info.dli_fbase) return g_runtimes[k].path == path ? k : -1;
    for (int k = 0; k < kMaxRuntimes; ++k) {
        Runtime& rt = g_runtimes[k];
        if (rt.base.load(std::memory_order_relaxed) != nullptr) continue;
        void* handle = dlopen(path.c_str(), RTLD_NOLOAD | RTLD_LAZY);
        if (handle == nullptr) return -1;
        auto get_max = reinterpret_cast<int (*)()>(dlsym(handle, "omp_get_max_threads"));
        auto set_num = reinterpret_cast<void (*)(int)>(dlsym(handle, "omp_set_num_threads"));
        auto get_level = reinterpret_cast<int (*)()>(dlsym(handle, "omp_get_level"));
        dlclose(handle);  // RTLD_NOLOAD: only the reference just taken goes
        if (get_max == nullptr || set_num == nullptr || get_level == nullptr) return -1;
        rt.get_max_threads = get_max;
        rt.set_num_threads = set_num;
        rt.get_level = get_level;
        rt.path = path;
        rt.base.store(info.dli_fbase, std::memory_order_release);
        return k;
    }
    return -1;  // more than kMaxRuntimes copies: the rest are left alone
}

// What `object` calls through `slot` for `name`: the slot's value once the
// loader bound it (always for GLOB_DAT and with BIND_NOW); for a lazy slot
// not yet bound (it points into the object's own PLT), what the loader will
// bind: the global scope first (a runtime loaded RTLD_GLOBAL, such as the
// libgomp torch loads, wins over the object's own dependencies), then the
// object's own scope.
AnyFunction resolve(const Object& object, const char* name, AnyFunction bound) {
    Dl_info info;
    if (bound != nullptr && dladdr(reinterpret_cast<void*>(bound), &info) != 0 &&
        reinterpret_cast<ElfW(Addr)>(info.dli_fbase) != object.base)
        return bound;
    if (void* global = dlsym(RTLD_DEFAULT, name)) return reinterpret_cast<AnyFunction>(global);
    void* handle = dlopen(object.name.empty() ? nullptr : object.name.c_str(), RTLD_NOLOAD | RTLD_LAZY);
    if (handle == nullptr) return nullptr;
    struct link_map* map = nullptr;
    void* symbol = nullptr;
    // The handle must name this very object (not another of the same name).
    if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_addr == object.base)
        symbol = dlsym(handle, name);
    dlclose(handle);
    return reinterpret_cast<AnyFunction>(symbol);
}

// Writes `value` into the GOT slot, making a read-only (RELRO) page writable for the store.
bool write_slot(AnyFunction* slot, AnyFunction value, ElfW(Addr) relro_start, ElfW(Addr) relro_end) {
    const auto address = reinterpret_cast<ElfW(Addr)>(slot);
    const auto page = static_cast<ElfW(Addr)>(sysconf(_SC_PAGESIZE));
    // As the loader protects it (_dl_protect_relro): whole pages from the
    // start's page up to the end rounded *down*; the page the end falls in
    // stays writable (it holds .data too) and must stay so.
    const bool read_only = address >= (relro_start & ~(page - 1)) && address < (relro_end & ~(page - 1));
    const ElfW(Addr) first = address & ~(page - 1);
    const std::size_t length = (address + sizeof(AnyFunction) - first + page - 1) & ~(page - 1);
    void* start = reinterpret_cast<void*>(first);
    if (read_only && mprotect(start, length, PROT_READ | PROT_WRITE) != 0) return false;
    __atomic_store_n(slot, value, __ATOMIC_RELEASE);  // a caller reads the old or the new, never half
    if (read_only) mprotect(start, length, PROT_READ);
    return true;
}

std::size_t redirect(const Object& object, const void* own_base) {
#ifndef COMPOSEPAR_REGION_HOOKS
    (void)object;
    (void)own_base;
    return 0;
#else
    if (reinterpret_cast<const void*>(object.base) == own_base || is_gomp(object.name) ||
        object.name.find("linux-vdso") != std::string::npos || object.name.find("linux-gate") != std::string::npos)
        return 0;
    const ElfW(Dyn)* dynamic = nullptr;
    ElfW(Addr) relro_start = 0, relro_end = 0;
    for (ElfW(Half) i = 0; i < object.phnum; ++i) {
        const ElfW(Phdr)& ph = object.phdr[i];
        if (ph.p_type == PT_DYNAMIC) dynamic = reinterpret_cast<const ElfW(Dyn)*>(object.base + ph.p_vaddr);
        if (ph.p_type == PT_GNU_RELRO) {
            relro_start = object.base + ph.p_vaddr;
            relro_end = relro_start + ph.p_memsz;
        }
    }
    if (dynamic == nullptr) return 0;
    // glibc relocates these pointers in the in-memory dynamic section on
    // most targets; a value below the load address is still an offset.
    auto address = [&](ElfW(Addr) value) { return value < object.base ? value + object.base : value; };
    const ElfW(Sym)* symbols = nullptr;
    const char* strings = nullptr;
    const ElfW(Rela)* tables[2] = {nullptr, nullptr};
    std::size_t sizes[2] = {0, 0};
    bool plt_is_rela = true;
    for (const ElfW(Dyn)* d = dynamic; d->d_tag != DT_NULL; ++d) {
        switch (d->d_tag) {
            case DT_SYMTAB: symbols = reinterpret_cast<const ElfW(Sym)*>(address(d->d_un.d_ptr)); break;
            case DT_STRTAB: strings = reinterpret_cast<const char*>(address(d->d_un.d_ptr)); break;
            case DT_JMPREL: tables[0] = reinterpret_cast<const ElfW(Rela)*>(address(d->d_un.d_ptr)); break;
            case DT_PLTRELSZ: sizes[0] = d->d_un.d_val; break;
            case DT_RELA: tables[1] = reinterpret_cast<const ElfW(Rela)*>(address(d->d_un.d_ptr)); break;
            case DT_RELASZ: sizes[1] = d->d_un.d_val; break;
            case DT_PLTREL: plt_is_rela = d->d_un.d_val == DT_RELA; break;
            default: break;
        }
    }
    if (symbols == nullptr || strings == nullptr || !plt_is_rela) return 0;  // both targets use RELA
    const WrapperTable& table = wrappers();
    std::size_t redirected = 0;
    for (int t = 0; t < 2; ++t) {
        if (tables[t] == nullptr) continue;
        const std::size_t count = sizes[t] / sizeof(ElfW(Rela));
        for (std::size_t i = 0; i < count; ++i) {
            const ElfW(Rela)& rela = tables[t][i];
            const auto type = static_cast<std::uint32_t>(ELF64_R_TYPE(rela.r_info));
            if (type != kJumpSlot && type != kGlobDat) continue;
            const auto symbol_index = ELF64_R_SYM(rela.r_info);
            if (symbol_index == 0) continue;
            const int entry = entry_of(strings + symbols[symbol_index].st_name);
            if (entry < 0) continue;
            auto* slot = reinterpret_cast<AnyFunction*>(object.base + rela.r_offset);
            const AnyFunction bound = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
            if (table.contains(bound)) continue;  // redirected already
            const AnyFunction real = resolve(object, kEntryNames[entry], bound);
            if (real == nullptr) continue;
            const int k = runtime_of(real);
            if (k < 0) continue;
            AnyFunction expected = nullptr;
            if (!g_runtimes[k].real[entry].compare_exchange_strong(expected, real, std::memory_order_release) &&
                expected != real)
                continue;  // another definition of the same entry in that copy: leave this caller alone
            if (write_slot(slot, table.of[k][entry], relro_start, relro_end)) {
                ++redirected;
                g_redirects.push_back(Redirect{{object.base, object.name}, slot, table.of[k][entry], real,
                                               relro_start, relro_end});
            }
        }
    }
    return redirected;
#endif
}

}  // namespace

void bind_thread(Cell* cell) {
    if (t_cell != nullptr) {
        // Put back what the hooks changed in this task, where the program did not change it since.
        for (int k = 0; k < kMaxRuntimes; ++k) {
            const ThreadRuntime& st = t_runtime[k];
            Runtime& rt = g_runtimes[k];
            if (st.epoch != t_epoch || rt.base.load(std::memory_order_acquire) == nullptr || rt.get_level() != 0)
                continue;
            if (st.applied != st.first && rt.get_max_threads() == st.applied) rt.set_num_threads(st.first);
        }
    }
    ++t_epoch;
    t_cell = cell;
}

std::size_t install() {
    unsigned long long generation = 0;
    dl_iterate_phdr(read_generation, &generation);
    std::lock_guard<std::mutex> lock(g_install_mutex);
    if (generation == g_generation_done) return 0;
    Walk walk;
    dl_iterate_phdr(collect, &walk);
    if (walk.failed) throw std::bad_alloc();
    Dl_info own;
    const void* own_base = dladdr(reinterpret_cast<void*>(&install), &own) != 0 ? own.dli_fbase : nullptr;
    std::set<std::pair<ElfW(Addr), std::string>> done;
    std::size_t redirected = 0;
    for (const Object& object : walk.objects) {
        auto key = std::make_pair(object.base, object.name);
        if (g_done.count(key) == 0) {
            // Pinned while its headers and tables are read: dl_iterate_phdr's
            // pointers are valid only under the loader's lock, and an object
            // can go in between (a dlopen that failed after mapping it: TBB's
            // optional libtbbbind, say; a dlclose). Not loaded any more: skipped.
            void* pin = dlopen(object.name.empty() ? nullptr : object.name.c_str(), RTLD_NOLOAD | RTLD_LAZY);
            if (pin == nullptr) continue;
            struct link_map* map = nullptr;
            if (dlinfo(pin, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_addr == object.base)
                redirected += redirect(object, own_base);
            dlclose(pin);
        }
        done.insert(std::move(key));
    }
    g_done = std::move(done);
    // Forget the slots of objects unloaded since; redo those the resolver overwrote.
    std::vector<Redirect> kept;
    kept.reserve(g_redirects.size());
    for (Redirect& r : g_redirects) {
        if (g_done.count(r.object) == 0) continue;
        if (__atomic_load_n(r.slot, __ATOMIC_ACQUIRE) == r.real &&
            write_slot(r.slot, r.wrapper, r.relro_start, r.relro_end))
            ++redirected;
        kept.push_back(std::move(r));
    }
    g_redirects = std::move(kept);
    g_generation_done = walk.generation;
    return redirected;
}

std::string openmp_runtime(const std::string& path) {
    void* handle = dlopen(path.c_str(), RTLD_NOLOAD | RTLD_LAZY);
    if (handle == nullptr) return {};
    void* symbol = dlsym(handle, "omp_get_max_threads");
    dlclose(handle);
    Dl_info info;
    if (symbol == nullptr || dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return {};
    return info.dli_fname;
}


}  // namespace composepar::regions
