// The floor under bench/shm.bench.mjs's cycle: the same syscalls, in C, with
// nothing around them (shm_open + fchmod + ftruncate + mmap; shm_open + fstat +
// mmap; munmap + close twice; shm_unlink). Prints µs per cycle.
// Usage: shm_floor <cycles> <warm-up ms>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cycle(long i) {
  char name[64];
  snprintf(name, sizeof name, "/pmp_floor_%d_%ld", (int)getpid(), i);
  int a = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (a < 0 || fchmod(a, 0600) < 0 || ftruncate(a, 4096) < 0) return -1;
  void* pa = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
  int b = shm_open(name, O_RDWR, 0600);
  struct stat st;
  if (pa == MAP_FAILED || b < 0 || fstat(b, &st) < 0) return -1;
  void* pb = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
  if (pb == MAP_FAILED) return -1;
  munmap(pb, (size_t)st.st_size);
  close(b);
  munmap(pa, 4096);
  close(a);
  return shm_unlink(name);
}

int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 10000;
  double warm_end = now_us() + (argc > 2 ? atof(argv[2]) : 300) * 1e3;
  long i = 0;
  while (now_us() < warm_end) {
    if (cycle(i++) < 0) return 1;
  }
  double t = now_us();
  for (long k = 0; k < n; k++) {
    if (cycle(i++) < 0) return 1;
  }
  printf("%.3f\n", (now_us() - t) / n);
  return 0;
}
