/* composepar.h: the C API of composepar's machine-wide thread budget.
 *
 * Native runtimes and applications ask the same budget as composepar's
 * Python processes: one shared-memory segment per user and domain
 * (/dev/shm/composepar-<uid>-<domain>), holding `capacity` tokens; a token is
 * the right to run one busy thread. The budget survives crashes: the tokens
 * of a process that dies, even by SIGKILL, go back to the others.
 *
 *     composepar_budget *budget = composepar_attach(NULL);
 *     if (!budget) { fprintf(stderr, "%s\n", composepar_last_error()); ... }
 *
 *     composepar_lease *lease = composepar_lease_open(budget);   never blocks
 *     run_region(composepar_lease_threads(lease));               1 + extras
 *     run_region(composepar_lease_refresh(lease));               grows or shrinks
 *     composepar_lease_close(lease);
 *
 *     int n = composepar_acquire(budget, 2, 4, 1.0);             waits up to 1 s
 *     if (n > 0) { run_with(n); composepar_release(budget, n); }
 *     composepar_detach(budget);
 *
 * Build:  cc app.c -I"$INCLUDE" -L"$LIBDIR" -lcomposepar -Wl,-rpath,"$LIBDIR"
 * with INCLUDE from `python -c "import composepar; print(composepar.get_include())"`
 * and LIBDIR the directory of `composepar.get_library()`. Linux only.
 *
 * Errors
 * ------
 * Calls that return a pointer return NULL and set errno; calls that return
 * an int return a negative errno. Either way composepar_last_error() gives a
 * sentence naming the cause and the fix. The errno values:
 *   EINVAL     an argument breaks the rule its function states (a NULL handle,
 *              a bad domain name, min_tokens > max_tokens, releasing more than
 *              held, an invalid $COMPOSEPAR_DOMAIN or $COMPOSEPAR_CAPACITY)
 *   ETIMEDOUT  composepar_acquire: min_tokens were not free within timeout_s
 *   EPROTO     the segment file exists but cannot be used: another user's,
 *              corrupt, from another composepar release, or not mode 0600
 *              (`python -m composepar cleanup --force --domain D` removes it)
 *   EUSERS     all 4096 process slots of the domain are held by live processes
 *   ESTALE     the segment was removed by `cleanup` while this handle was not
 *              using it (a fork child's first call): attach again
 *   EIDRM      this process's slot was given to another process (its file
 *              descriptor was closed behind composepar's back): restart
 *   ENOMEM     out of memory
 *   other      a failing system call's errno (e.g. EACCES, ENOSPC on /dev/shm)
 *
 * Thread safety
 * -------------
 * Every function may be called from any thread.
 * - One budget handle: composepar_capacity, composepar_domain,
 *   composepar_lease_open, composepar_acquire and composepar_release may run
 *   concurrently from any number of threads. Tokens taken with
 *   composepar_acquire belong to the process, not to the thread or the handle:
 *   any thread may release them, through any handle on the same domain
 *   (attaching twice to one domain in one process returns two handles on one
 *   shared attachment).
 * - One lease: composepar_lease_threads and composepar_lease_refresh may run
 *   concurrently (the thread running the task and a refresher thread, say);
 *   calls on one lease are serialised by a lock of its own.
 * - composepar_detach and composepar_lease_close free their handle, like
 *   free(): no call on that handle may run concurrently with them or after
 *   them. A lease may outlive the budget handle it was opened from.
 * - composepar_acquire sleeps on a futex (no spinning). A signal handler runs
 *   and the wait goes on (no EINTR): bound the wait with timeout_s.
 * - Nothing here is async-signal-safe.
 * - A lease is one claimant of the budget: open one per thread that runs
 *   parallel work, not one per parallel region nested in it.
 *
 * Fork and exec
 * -------------
 * Handles belong to the process that made them. A fork child starts holding
 * nothing; the parent keeps everything it holds (its tokens and leases are
 * untouched by the fork and by the child's exit).
 * - The child may use the budget handles it inherited: its first call takes a
 *   slot of the child's own. Tokens the parent acquired are not the child's:
 *   composepar_release of them in the child returns -EINVAL.
 * - Leases inherited from the parent are inert in the child: threads and
 *   refresh return 1 and change nothing, close only frees the handle. Open a
 *   new lease in the child.
 * - Forking while other threads use the library is safe: its own locks are
 *   held across fork(), and lease calls in a child never take a lock of the
 *   parent's leases.
 * - Handles do not survive exec: the new program attaches anew. What the
 *   process held before exec stays counted until it exits (same pid and start
 *   time), so close leases, release tokens and detach before exec.
 * - Nothing depends on atexit or on detaching: the budget reclaims the tokens
 *   of a process that exited or was killed.
 */
#ifndef COMPOSEPAR_H
#define COMPOSEPAR_H

#if defined(COMPOSEPAR_BUILDING_LIBRARY)
#define COMPOSEPAR_API __attribute__((visibility("default")))
#else
#define COMPOSEPAR_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* An attachment of this process to one domain's budget. */
typedef struct composepar_budget composepar_budget;
/* A running thread's claim on the budget: its own token plus extras. */
typedef struct composepar_lease composepar_lease;

/* Attaches this process to `domain`'s budget and takes the process's slot in
 * it (which holds no token: the budget counts the process as a user, shown by
 * `python -m composepar status`, until composepar_detach or exit).
 * `domain`: 1-64 characters of A-Za-z0-9 . _ -, the first a letter or digit.
 * NULL: $COMPOSEPAR_DOMAIN if set and not empty, else "default" for a process
 * that may run on every online CPU, else the domain of its CPU set
 * ("cpus-0-3" for CPUs 0-3): the domain a Python process in the same place
 * would use. An existing segment is joined with its capacity as it is; an
 * absent one is created with $COMPOSEPAR_CAPACITY tokens, else the CPUs this
 * process may use (affinity mask capped by the cgroup CPU quota).
 * Returns NULL and sets errno on failure. */
COMPOSEPAR_API composepar_budget *composepar_attach(const char *domain);

/* Drops the handle. When the process's last handle on the domain and its last
 * lease from it are gone, its slot is released with every token it still
 * holds. NULL: does nothing. */
COMPOSEPAR_API void composepar_detach(composepar_budget *budget);

/* Tokens in the budget (1..65536), fixed for the segment's life; -EINVAL for NULL. */
COMPOSEPAR_API int composepar_capacity(const composepar_budget *budget);

/* The domain's name, valid until composepar_detach; NULL (errno EINVAL) for NULL. */
COMPOSEPAR_API const char *composepar_domain(const composepar_budget *budget);

/* Opens a lease for the calling thread, which is already running: never
 * blocks. It takes the thread's own token if one is free, else runs
 * overdrawn (threads 1, shown by `status`), and asks for extras from free
 * tokens under the fair-share policy, up to min(capacity, the CPUs this
 * process may use) - 1, so a lease never counts more threads than the
 * process's CPUs. Returns NULL and sets errno on failure. */
COMPOSEPAR_API composepar_lease *composepar_lease_open(composepar_budget *budget);

/* The threads the lease allows now: 1 + its extra tokens (1 when overdrawn).
 * Does not change the lease; -EINVAL for NULL. */
COMPOSEPAR_API int composepar_lease_threads(const composepar_lease *lease);

/* Re-applies the policy and returns the threads now: takes the own token if
 * the lease was overdrawn and one is free, grows into tokens others freed,
 * or gives back extras above the fair share when another claimant below its
 * share wants them. The CPUs cap is read again when older than 1 s. Call it
 * between parallel regions. Negative errno on failure. */
COMPOSEPAR_API int composepar_lease_refresh(composepar_lease *lease);

/* Gives every token of the lease back and frees it. NULL: does nothing. */
COMPOSEPAR_API void composepar_lease_close(composepar_lease *lease);

/* Waits until at least min_tokens can be granted and returns the count
 * granted, between min_tokens and max_tokens within the fair share (min_tokens
 * is always granted once that many are free). timeout_s < 0: wait forever;
 * 0: do not wait. Rules: 1 <= min_tokens <= max_tokens, min_tokens <= the
 * capacity, timeout_s not NaN (else -EINVAL). -ETIMEDOUT when the wait ended
 * without min_tokens free. The tokens are the process's until
 * composepar_release (or its exit). */
COMPOSEPAR_API int composepar_acquire(composepar_budget *budget, int min_tokens, int max_tokens, double timeout_s);

/* Gives back `tokens` taken with composepar_acquire. Returns 0, or -EINVAL
 * when tokens < 0 or the process holds fewer acquired tokens. */
COMPOSEPAR_API int composepar_release(composepar_budget *budget, int tokens);

/* What the last failing call of this thread failed on, and what fixes it;
 * "" if none has failed. Valid until this thread's next failing call. */
COMPOSEPAR_API const char *composepar_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* COMPOSEPAR_H */
