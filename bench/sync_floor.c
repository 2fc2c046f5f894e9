// A reference beside bench/sync.bench.mjs's increments: the same two
// processes x n locked increments with a process-shared pthread_mutex_t (the
// C library's futex lock), counter and lock on separate cache lines as in the
// Node and CPython runs, warmed up together for the same time first. Prints
// the ms the slower child took.
// Usage: sync_floor <n> <warm-up ms>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct Shared {
  pthread_mutex_t mutex;
  pthread_barrier_t barrier;
  _Alignas(64) volatile long counter;
  _Alignas(64) double ms[2];
  long warm[2];
};

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void increment_many(struct Shared* s, long n) {
  for (long i = 0; i < n; i++) {
    pthread_mutex_lock(&s->mutex);
    s->counter++;
    pthread_mutex_unlock(&s->mutex);
  }
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  long n = atol(argv[1]);
  double warm_ms = atof(argv[2]);
  struct Shared* s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) return 1;
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(&s->mutex, &ma);
  pthread_barrierattr_t ba;
  pthread_barrierattr_init(&ba);
  pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
  pthread_barrier_init(&s->barrier, &ba, 2);
  pid_t children[2] = {0, 0};
  for (int slot = 0; slot < 2; slot++) {
    pid_t pid = fork();
    if (pid < 0) {
      // The first child would wait at the barrier for ever.
      if (slot == 1) kill(children[0], SIGKILL);
      return 1;
    }
    children[slot] = pid;
    if (pid > 0) continue;
    pthread_barrier_wait(&s->barrier);
    double warm_end = now_ms() + warm_ms;
    while (now_ms() < warm_end) {
      increment_many(s, 10000);
      s->warm[slot] += 10000;
    }
    pthread_barrier_wait(&s->barrier);
    double t0 = now_ms();
    increment_many(s, n);
    s->ms[slot] = now_ms() - t0;
    _exit(0);
  }
  int status;
  for (int k = 0; k < 2; k++) {
    if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
  }
  if (s->counter != 2 * n + s->warm[0] + s->warm[1]) {
    fprintf(stderr, "counter %ld != %ld\n", s->counter, 2 * n + s->warm[0] + s->warm[1]);
    return 1;
  }
  printf("%.3f\n", s->ms[0] > s->ms[1] ? s->ms[0] : s->ms[1]);
  return 0;
}
