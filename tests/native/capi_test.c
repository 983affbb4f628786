/* The C API's test program, built and run by tests/test_capi.py against
 * composepar.get_include() and composepar.get_library().
 *
 *   capi_test selftest DOMAIN   checks the error paths, fork behaviour and
 *                               concurrent use of one budget by several threads
 *                               in DOMAIN (which must have capacity >= 3 and no
 *                               token held); prints "selftest ok" and exits 0,
 *                               or names each failed check and exits 1
 *   capi_test serve             answers one line per command read on stdin, so
 *                               that a Python test can step it in a real
 *                               process sharing a budget with Python processes:
 *
 *       attach DOMAIN|-     0 DOMAIN CAPACITY   (- : NULL, the default domain)
 *       lease_open          0 THREADS
 *       threads             THREADS
 *       refresh             THREADS
 *       lease_close         0
 *       acquire MIN MAX T   GRANTED, or -ERRNO
 *       release N           0, or -ERRNO
 *       detach              0
 *   A failing call answers "-ERRNO composepar_last_error()".
 */
#define _GNU_SOURCE
#include "composepar.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------ selftest */

static int failures = 0;

#define CHECK(condition)                                                                               \
    do {                                                                                               \
        if (!(condition)) {                                                                            \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, #condition, \
                    composepar_last_error());                                                          \
            ++failures;                                                                                \
        }                                                                                              \
    } while (0)

static int mentions(const char *text, const char *part) { return strstr(text, part) != NULL; }

static void check_argument_errors(const char *domain) {
    char long_name[80];
    memset(long_name, 'a', 65);
    long_name[65] = '\0';
    const char *bad_names[] = {"bad/name", "", "-leading-dash", "..", long_name};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; ++i) {
        errno = 0;
        CHECK(composepar_attach(bad_names[i]) == NULL);
        CHECK(errno == EINVAL);
        CHECK(mentions(composepar_last_error(), "domain must be 1-64 characters"));
    }

    /* NULL domain: $COMPOSEPAR_DOMAIN, checked like an argument. */
    setenv("COMPOSEPAR_DOMAIN", "no/slashes", 1);
    errno = 0;
    CHECK(composepar_attach(NULL) == NULL);
    CHECK(errno == EINVAL && mentions(composepar_last_error(), "COMPOSEPAR_DOMAIN must be"));
    setenv("COMPOSEPAR_DOMAIN", domain, 1);
    composepar_budget *from_env = composepar_attach(NULL);
    CHECK(from_env != NULL && strcmp(composepar_domain(from_env), domain) == 0);
    composepar_detach(from_env);

    /* An invalid $COMPOSEPAR_CAPACITY is an error even for a segment that exists (as in Python). */
    setenv("COMPOSEPAR_CAPACITY", "many", 1);
    errno = 0;
    CHECK(composepar_attach(domain) == NULL);
    CHECK(errno == EINVAL && mentions(composepar_last_error(), "COMPOSEPAR_CAPACITY must be an integer"));
    unsetenv("COMPOSEPAR_CAPACITY");

    /* NULL handles. */
    CHECK(composepar_capacity(NULL) == -EINVAL);
    errno = 0;
    CHECK(composepar_domain(NULL) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(composepar_lease_open(NULL) == NULL && errno == EINVAL);
    CHECK(composepar_lease_threads(NULL) == -EINVAL);
    CHECK(composepar_lease_refresh(NULL) == -EINVAL);
    CHECK(composepar_acquire(NULL, 1, 1, 0) == -EINVAL);
    CHECK(composepar_release(NULL, 1) == -EINVAL);
    composepar_detach(NULL);      /* does nothing */
    composepar_lease_close(NULL); /* does nothing */
}

static void check_tokens(const char *domain) {
    composepar_budget *budget = composepar_attach(domain);
    CHECK(budget != NULL);
    if (budget == NULL) return;
    const int capacity = composepar_capacity(budget);
    CHECK(capacity >= 3);

    CHECK(composepar_acquire(budget, 0, 1, 0) == -EINVAL);
    CHECK(composepar_acquire(budget, 2, 1, 0) == -EINVAL);
    CHECK(composepar_acquire(budget, capacity + 1, capacity + 1, 0) == -EINVAL);
    CHECK(mentions(composepar_last_error(), "or it can never be granted"));
    CHECK(composepar_acquire(budget, 1, 1, NAN) == -EINVAL);
    CHECK(composepar_release(budget, -1) == -EINVAL);
    CHECK(composepar_release(budget, 1) == -EINVAL); /* holds none */
    CHECK(mentions(composepar_last_error(), "cannot release 1 tokens: this process holds 0"));
    CHECK(composepar_release(budget, 0) == 0);

    /* Everything, then nothing is free: a timed wait ends with -ETIMEDOUT. */
    CHECK(composepar_acquire(budget, capacity, capacity, -1) == capacity);
    CHECK(composepar_acquire(budget, 1, 1, 0) == -ETIMEDOUT);
    CHECK(composepar_acquire(budget, 1, 1, 0.05) == -ETIMEDOUT);
    CHECK(mentions(composepar_last_error(), "python -m composepar status --domain"));
    CHECK(composepar_release(budget, capacity + 1) == -EINVAL);

    /* A lease never blocks: with nothing free it runs overdrawn, one thread. */
    composepar_lease *lease = composepar_lease_open(budget);
    CHECK(lease != NULL && composepar_lease_threads(lease) == 1);

    /* Tokens are the process's: another handle on the domain releases them. */
    composepar_budget *second = composepar_attach(domain);
    CHECK(second != NULL && composepar_capacity(second) == capacity);
    CHECK(composepar_release(second, 1) == 0);
    composepar_detach(second);
    CHECK(composepar_release(budget, capacity - 1) == 0);

    /* Refreshed, the overdrawn lease takes its own token (and extras up to the CPUs). */
    const int threads = composepar_lease_refresh(lease);
    CHECK(threads >= 1 && threads <= capacity && composepar_lease_threads(lease) == threads);
    composepar_lease_close(lease);
    composepar_detach(budget); /* lease closed, handle gone: the slot is released */
}

/* Fork: the child holds nothing of the parent's; the parent keeps what it holds. */
static void check_fork(const char *domain) {
    composepar_budget *budget = composepar_attach(domain);
    CHECK(budget != NULL);
    if (budget == NULL) return;
    CHECK(composepar_acquire(budget, 1, 1, -1) == 1);
    composepar_lease *lease = composepar_lease_open(budget);
    CHECK(lease != NULL);
    const int parent_threads = composepar_lease_threads(lease);
    fflush(stderr);
    const pid_t child = fork();
    if (child == 0) {
        int bad = 0;
        bad |= composepar_lease_threads(lease) != 1;          /* the parent's lease: inert */
        bad |= (composepar_lease_refresh(lease) != 1) << 1;
        composepar_lease_close(lease);                          /* frees the copy only */
        bad |= (composepar_release(budget, 1) != -EINVAL) << 2; /* the parent's token */
        bad |= (composepar_acquire(budget, 1, 1, 30) != 1) << 3; /* a slot and a token of its own */
        bad |= (composepar_release(budget, 1) != 0) << 4;
        composepar_lease *own = composepar_lease_open(budget);
        bad |= (own == NULL || composepar_lease_threads(own) < 1) << 5;
        composepar_lease_close(own);
        composepar_budget *again = composepar_attach(domain);    /* attaching in the child works too */
        bad |= (again == NULL) << 6;
        composepar_detach(again);
        composepar_detach(budget);
        _exit(bad);
    }
    int status = 0;
    CHECK(child > 0 && waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fprintf(stderr, "fork child status %#x\n", status);
    CHECK(composepar_lease_threads(lease) == parent_threads); /* the parent's lease is untouched */
    CHECK(composepar_release(budget, 1) == 0);               /* and its token still its own */
    composepar_lease_close(lease);
    composepar_detach(budget);
}

/* Several threads on one budget (and attaching and detaching it) at once. */
struct worker {
    const char *domain;
    composepar_budget *shared;
    int failed;
};

static void *hammer(void *argument) {
    struct worker *w = argument;
    for (int i = 0; i < 200; ++i) {
        composepar_lease *lease = composepar_lease_open(w->shared);
        if (lease == NULL || composepar_lease_threads(lease) < 1 || composepar_lease_refresh(lease) < 1) ++w->failed;
        composepar_lease_close(lease);
        const int granted = composepar_acquire(w->shared, 1, 2, 30);
        if (granted < 1 || granted > 2 || composepar_release(w->shared, granted) != 0) ++w->failed;
        composepar_budget *own = composepar_attach(w->domain);
        if (own == NULL || composepar_acquire(own, 1, 1, 30) != 1 || composepar_release(own, 1) != 0) ++w->failed;
        composepar_detach(own);
    }
    return NULL;
}

static void check_threads(const char *domain) {
    struct worker workers[4];
    pthread_t threads[4];
    composepar_budget *shared = composepar_attach(domain);
    CHECK(shared != NULL);
    if (shared == NULL) return;
    for (int i = 0; i < 4; ++i) {
        workers[i] = (struct worker){domain, shared, 0};
        CHECK(pthread_create(&threads[i], NULL, hammer, &workers[i]) == 0);
    }
    for (int i = 0; i < 4; ++i) {
        CHECK(pthread_join(threads[i], NULL) == 0);
        CHECK(workers[i].failed == 0);
    }
    CHECK(composepar_release(shared, 1) == -EINVAL); /* everything went back */
    composepar_detach(shared);
}

static int selftest(const char *domain) {
    check_argument_errors(domain);
    check_tokens(domain);
    check_fork(domain);
    check_threads(domain);
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("selftest ok\n");
    return 0;
}

/* ------------------------------------------------------------------ serve */

static void answer_error(int result) { printf("%d %s\n", result, composepar_last_error()); }

static int serve(void) {
    composepar_budget *budget = NULL;
    composepar_lease *lease = NULL;
    char line[256], command[32], argument[128];
    while (fgets(line, sizeof line, stdin) != NULL) {
        argument[0] = '\0';
        if (sscanf(line, "%31s %127s", command, argument) < 1) continue;
        if (strcmp(command, "attach") == 0) {
            budget = composepar_attach(strcmp(argument, "-") == 0 ? NULL : argument);
            if (budget == NULL)
                answer_error(-errno);
            else
                printf("0 %s %d\n", composepar_domain(budget), composepar_capacity(budget));
        } else if (strcmp(command, "lease_open") == 0) {
            lease = composepar_lease_open(budget);
            if (lease == NULL)
                answer_error(-errno);
            else
                printf("0 %d\n", composepar_lease_threads(lease));
        } else if (strcmp(command, "threads") == 0) {
            printf("%d\n", composepar_lease_threads(lease));
        } else if (strcmp(command, "refresh") == 0) {
            const int threads = composepar_lease_refresh(lease);
            if (threads < 0)
                answer_error(threads);
            else
                printf("%d\n", threads);
        } else if (strcmp(command, "lease_close") == 0) {
            composepar_lease_close(lease);
            lease = NULL;
            printf("0\n");
        } else if (strcmp(command, "acquire") == 0) {
            int min_tokens = 0, max_tokens = 0;
            double timeout_s = 0;
            if (sscanf(line, "%*s %d %d %lf", &min_tokens, &max_tokens, &timeout_s) != 3) {
                printf("%d usage: acquire MIN MAX TIMEOUT\n", -EINVAL);
            } else {
                const int granted = composepar_acquire(budget, min_tokens, max_tokens, timeout_s);
                if (granted < 0)
                    answer_error(granted);
                else
                    printf("%d\n", granted);
            }
        } else if (strcmp(command, "release") == 0) {
            const int result = composepar_release(budget, atoi(argument));
            if (result < 0)
                answer_error(result);
            else
                printf("0\n");
        } else if (strcmp(command, "detach") == 0) {
            composepar_detach(budget);
            budget = NULL;
            printf("0\n");
        } else {
            printf("%d unknown command: %s\n", -EINVAL, command);
        }
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "selftest") == 0) return selftest(argv[2]);
    if (argc == 2 && strcmp(argv[1], "serve") == 0) return serve();
    fprintf(stderr, "usage: %s selftest DOMAIN | %s serve\n", argv[0], argv[0]);
    return 2;
}
