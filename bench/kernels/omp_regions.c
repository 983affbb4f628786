/* OpenMP kernel for bench/workloads/omp_regions.py: many short parallel regions in a row.

   Built by that workload's prepare() with gcc -O2 -fopenmp -shared -fPIC into bench/.build/ and
   loaded with ctypes in pool workers only: libgomp is not fork-safe, so the process that forks
   the pool must never run a region. */
#include <math.h>

/* Runs `regions` parallel regions one after another. Each one is a parallel-for reduction of
   sqrt(offset + i + 0.5) over i < n, so its cost is n square roots split over the team plus one
   fork and one join barrier: with a small n the barriers are what a crowded machine makes slow.

   Returns the sum of the regions' results. Every region computes the same sum, so the caller can
   check the result against regions * (that sum computed by NumPy). The regions cannot be merged:
   each one is a call into libgomp that the compiler cannot see through. */
double omp_regions(long regions, long n, double offset) {
    double total = 0.0;
    for (long r = 0; r < regions; ++r) {
        double region_sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : region_sum)
        for (long i = 0; i < n; ++i) region_sum += sqrt(offset + (double)i + 0.5);
        total += region_sum;
    }
    return total;
}
