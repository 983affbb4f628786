/* An OpenMP kernel for the tests: how many threads the next parallel region
   may use, and how many a real region used. Built with gcc -fopenmp. */
#include <omp.h>

int omp_budget(void) { return omp_get_max_threads(); }

/* Runs a parallel region that spins `spin` iterations per thread; returns its team size. */
int omp_team(long spin) {
    int team = 0;
#pragma omp parallel
    {
#pragma omp single
        team = omp_get_num_threads();
        volatile double sink = 0.0;
        for (long i = 0; i < spin; ++i) sink += (double)i;
    }
    return team;
}
