/* A native program that sizes its parallel work by composepar's budget, which
 * it shares with every composepar Python process of this user (run it beside
 * or under `python -m composepar`, or with COMPOSEPAR_DOMAIN set like theirs).
 *
 * Build and run:
 *   INC="$(python -c 'import composepar; print(composepar.get_include())')"
 *   LIB="$(python -c 'import composepar, os; print(os.path.dirname(composepar.get_library()))')"
 *   cc examples/capi_example.c -I"$INC" -L"$LIB" -lcomposepar -Wl,-rpath,"$LIB" -o capi_example
 *   ./capi_example
 */
#include <composepar.h>

#include <stdio.h>

/* Stands for a parallel region: an OpenMP program would call
 * omp_set_num_threads(threads) before its `#pragma omp parallel`. */
static void parallel_region(int step, int threads) { printf("region %d: %d threads\n", step, threads); }

int main(void) {
    composepar_budget *budget = composepar_attach(NULL); /* $COMPOSEPAR_DOMAIN, else this CPU set's */
    if (budget == NULL) {
        fprintf(stderr, "capi_example: %s\n", composepar_last_error());
        return 1;
    }
    printf("domain %s, capacity %d\n", composepar_domain(budget), composepar_capacity(budget));

    /* A running thread's claim: never blocks, one thread at least. Refreshed
     * between regions, it grows into cores others freed and shrinks back to
     * its fair share when someone new asks. */
    composepar_lease *lease = composepar_lease_open(budget);
    if (lease == NULL) {
        fprintf(stderr, "capi_example: %s\n", composepar_last_error());
        composepar_detach(budget);
        return 1;
    }
    for (int step = 0; step < 3; ++step) parallel_region(step, composepar_lease_refresh(lease));
    composepar_lease_close(lease);

    /* Work that can wait for its threads: 1 to 4 tokens, waiting up to 5 s. */
    int tokens = composepar_acquire(budget, 1, 4, 5.0);
    if (tokens > 0) {
        parallel_region(3, tokens);
        composepar_release(budget, tokens);
    } else {
        fprintf(stderr, "capi_example: %s\n", composepar_last_error());
    }
    composepar_detach(budget);
    return tokens > 0 ? 0 : 1;
}
