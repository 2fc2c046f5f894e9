// The threads behind the async waits (futex_service.cc, semaphore.cc): a
// process-wide budget of them, their creation (which may fail: that must
// reject one wait, never abort), and the private control word a service thread
// sleeps on so that another thread can interrupt it without touching the
// shared words it watches.
#ifndef PMP_WAITER_POOL_H_
#define PMP_WAITER_POOL_H_

#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#elif defined(__APPLE__)
extern "C" int __ulock_wait(uint32_t operation, void* addr, uint64_t value, uint32_t timeout_us);
extern "C" int __ulock_wake(uint32_t operation, void* addr, uint64_t wake_value);
#endif

#include "util.h"

namespace pmp {

// Service threads, whatever the number of pending waits: the futex and
// semaphore servers share this budget; each service also has one poller for
// what the servers cannot take, so a process never has more than
// kServerThreads + 2 of them.
constexpr int kServerThreads = 6;

// A service thread with nothing to do waits this long for work, then exits.
constexpr int64_t kIdleNs = 10'000'000'000;

class ThreadBudget {
 public:
  static bool TryTake() {
    int n = used().load();
    while (n < kServerThreads) {
      if (used().compare_exchange_weak(n, n + 1)) return true;
    }
    return false;
  }
  static void Give() { used().fetch_sub(1); }

 private:
  static std::atomic<int>& used() {
    static std::atomic<int> n{0};
    return n;
  }
};

// Starts a detached thread running fn(arg). Returns 0, or pthread_create's
// error (EAGAIN under a pids or RLIMIT_NPROC limit). Small stacks: the service
// threads only make syscalls and move pointers.
inline int StartThread(void* (*fn)(void*), void* arg) {
  pthread_attr_t attr;
  int err = pthread_attr_init(&attr);
  if (err != 0) return err;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t thread;
  err = pthread_create(&thread, &attr, fn, arg);
  pthread_attr_destroy(&attr);
  return err;
}

// A word private to this process that one thread sleeps on and others bump to
// wake it. A bump between the sleeper's Load() and its sleep makes the sleep
// return at once (the value no longer matches), so no interrupt is lost.
class ControlWord {
 public:
  uint32_t Load() const { return word_.load(std::memory_order_acquire); }

  void Interrupt() {
    word_.fetch_add(1, std::memory_order_acq_rel);
#if defined(__linux__)
    syscall(SYS_futex, Addr(), FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX, nullptr, nullptr, 0);
#elif defined(__APPLE__)
    __ulock_wake(1 /* UL_COMPARE_AND_WAIT */ | 0x00000100 /* ULF_WAKE_ALL */ | 0x01000000 /* ULF_NO_ERRNO */,
                 Addr(), 0);
#endif
  }

  // Sleeps while the word still holds `seen`, until deadline_ns (CLOCK_MONOTONIC,
  // NowNs(); negative: no limit). Returns early on a signal or a spurious wake.
  void Sleep(uint32_t seen, int64_t deadline_ns) {
#if defined(__linux__)
    struct timespec ts;
    struct timespec* tsp = nullptr;
    if (deadline_ns >= 0) {
      int64_t left = deadline_ns - NowNs();
      if (left <= 0) return;
      ts.tv_sec = static_cast<time_t>(left / 1000000000);
      ts.tv_nsec = static_cast<long>(left % 1000000000);
      tsp = &ts;
    }
    syscall(SYS_futex, Addr(), FUTEX_WAIT | FUTEX_PRIVATE_FLAG, seen, tsp, nullptr, 0);
#elif defined(__APPLE__)
    uint32_t us = 0;  // 0: no limit
    if (deadline_ns >= 0) {
      int64_t left = (deadline_ns - NowNs()) / 1000;
      if (left <= 0) return;
      us = left > static_cast<int64_t>(UINT32_MAX) ? UINT32_MAX : static_cast<uint32_t>(left);
    }
    __ulock_wait(1 /* UL_COMPARE_AND_WAIT */ | 0x01000000 /* ULF_NO_ERRNO */, Addr(), seen, us);
#endif
  }

  // The word itself, for futex_waitv (a server sleeps on it and its shared words at once).
  uint32_t* Addr() { return reinterpret_cast<uint32_t*>(&word_); }

 private:
  std::atomic<uint32_t> word_{0};
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "a futex word is 32 bits");
};

}  // namespace pmp

#endif  // PMP_WAITER_POOL_H_
