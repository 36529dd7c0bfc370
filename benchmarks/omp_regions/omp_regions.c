/*
 * LD_PRELOAD shim that times every OpenMP parallel region (libgomp's GOMP_parallel) of a program:
 * per region (keyed by its outlined function) the calls, the wall time from fork to join, each
 * thread's CPU time inside the region (CLOCK_THREAD_CPUTIME_ID: the busiest and the idlest thread
 * of each call), and the calling thread's CPU time between the previous join and this fork (the
 * serial code before the region). CPU times do not count the time a thread waits or is
 * descheduled, so the busiest / idlest split and the serial time hold on a shared machine too;
 * the wall times do not. Written at exit to $OMP_REGIONS_OUT (default stderr); summarised by
 * omp_regions_summary.py. $OMP_REGIONS_SKIP regions at the start are left out (say, the first
 * training step's, which also grow buffers and take the first page faults). Teams of up to 64
 * threads. Issue #23.
 *
 *   gcc -O2 -shared -fPIC -fopenmp benchmarks/omp_regions/omp_regions.c -o /tmp/omp_regions.so
 *   OMP_NUM_THREADS=2 OMP_REGIONS_OUT=/tmp/regions.txt LD_PRELOAD=/tmp/omp_regions.so \
 *       build/bench/benchmarks/bench_train --benchmark_filter='^train/resnet20/quant/128/' \
 *       --benchmark_min_time=0
 *   python3 benchmarks/omp_regions/omp_regions_summary.py /tmp/regions.txt \
 *       build/bench/benchmarks/bench_train --steps 4
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef void (*region_fn)(void*);
typedef void (*gomp_parallel_fn)(region_fn, void*, unsigned, unsigned);

enum { max_regions = 4096, max_team = 64 };

static double clock_seconds(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

struct region_stats {
  void* fn;
  long calls;
  double wall, busiest_cpu, idlest_cpu, serial_cpu_before;
};
static struct region_stats stats[max_regions];
static int region_count;
static double last_join_cpu = -1; // the calling thread's CPU time at the previous join
static long skip = -1;            // regions still to leave out ($OMP_REGIONS_SKIP)

struct wrapped {
  region_fn fn;
  void* data;
  double cpu[max_team];
};

static void run_timed(void* p) {
  struct wrapped* w = p;
  const double start = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
  w->fn(w->data);
  const int t = omp_get_thread_num();
  if (t < max_team) w->cpu[t] = clock_seconds(CLOCK_THREAD_CPUTIME_ID) - start;
}

void GOMP_parallel(region_fn fn, void* data, unsigned threads, unsigned flags) {
  static gomp_parallel_fn real;
  if (!real) real = (gomp_parallel_fn)dlsym(RTLD_NEXT, "GOMP_parallel");
  const double fork_cpu = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
  const double serial = last_join_cpu < 0 ? 0 : fork_cpu - last_join_cpu;
  const double fork_wall = clock_seconds(CLOCK_MONOTONIC);
  struct wrapped w = {fn, data, {0}};
  for (int t = 0; t < max_team; ++t) w.cpu[t] = -1;
  real(run_timed, &w, threads, flags);
  const double wall = clock_seconds(CLOCK_MONOTONIC) - fork_wall;
  last_join_cpu = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
  if (skip < 0) skip = getenv("OMP_REGIONS_SKIP") ? atol(getenv("OMP_REGIONS_SKIP")) : 0;
  if (skip > 0) {
    --skip;
    return;
  }
  int k = 0;
  while (k < region_count && stats[k].fn != (void*)fn) ++k;
  if (k == max_regions) return;
  if (k == region_count) stats[region_count++].fn = (void*)fn;
  double busiest = 0, idlest = 1e30;
  for (int t = 0; t < max_team; ++t) {
    if (w.cpu[t] < 0) continue;
    if (w.cpu[t] > busiest) busiest = w.cpu[t];
    if (w.cpu[t] < idlest) idlest = w.cpu[t];
  }
  stats[k].calls++;
  stats[k].wall += wall;
  stats[k].busiest_cpu += busiest;
  stats[k].idlest_cpu += idlest;
  stats[k].serial_cpu_before += serial;
}

__attribute__((destructor)) static void write_stats(void) {
  const char* path = getenv("OMP_REGIONS_OUT");
  FILE* out = path ? fopen(path, "w") : stderr;
  if (!out) return;
  fprintf(out, "# offset object calls wall busiest_cpu idlest_cpu serial_cpu_before (seconds)\n");
  for (int k = 0; k < region_count; ++k) {
    Dl_info info;
    const int found = dladdr(stats[k].fn, &info);
    fprintf(out, "%lx %s %ld %.6f %.6f %.6f %.6f\n",
            (unsigned long)((char*)stats[k].fn - (found ? (char*)info.dli_fbase : (char*)0)),
            found ? info.dli_fname : "?", stats[k].calls, stats[k].wall, stats[k].busiest_cpu,
            stats[k].idlest_cpu, stats[k].serial_cpu_before);
  }
  if (out != stderr) fclose(out);
}
