// The threads behind the async waits (futex_service.cc, semaphore.cc): a
// process-wide budget of them, their creation (which may fail: that must
// reject one wait, never abort), the private control word a service thread
// sleeps on so that another thread can interrupt it without touching the
// shared words it watches, and the pollers' schedule.
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
// From the kernel's sys/ulock.h, which the SDK does not ship.
#define PMP_UL_COMPARE_AND_WAIT 1
#define PMP_UL_COMPARE_AND_WAIT_SHARED 3
#define PMP_ULF_WAKE_ALL 0x00000100
#define PMP_ULF_NO_ERRNO 0x01000000
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
    __ulock_wake(PMP_UL_COMPARE_AND_WAIT | PMP_ULF_WAKE_ALL | PMP_ULF_NO_ERRNO, Addr(), 0);
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
    __ulock_wait(PMP_UL_COMPARE_AND_WAIT | PMP_ULF_NO_ERRNO, Addr(), seen, us);
#endif
  }

  // The word itself, for futex_waitv (a server sleeps on it and its shared words at once).
  uint32_t* Addr() { return reinterpret_cast<uint32_t*>(&word_); }

 private:
  std::atomic<uint32_t> word_{0};
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "a futex word is 32 bits");
};

// ---- the pollers' schedule ----------------------------------------------------
//
// What no server holds, a poller looks at: the futex words (futex_service.cc)
// and the semaphores (semaphore.cc) beyond the servers' capacity. Looking at
// each of them every tick made an idle process burn CPU in proportion to the
// number of pending waits (60% of a core for 20,000 words). So a thing is
// looked at kPollNs after it is scheduled, then, while nothing changes, after
// 2x, 4x... that, up to kPollNs << (kPollLevels - 1) (64 ms); and a tick looks
// at no more than its budget, the things due first first (the rest wait for
// the next tick). The cost of a pending wait while idle is thus bounded
// whatever the count, and what is paid for it is latency: a change to a thing
// unchanged for long is seen up to 64 ms late, later still when there are
// more things than the budget lets the poller look at in 64 ms.

// The poller's tick: the first look at a new thing, and the shortest sleep
// between two rounds of looks.
constexpr int64_t kPollNs = 2'000'000;
constexpr int kPollLevels = 6;

// What a poller schedules; its links are the schedule's, under the owner's lock.
struct PollNode {
  PollNode* poll_prev = nullptr;
  PollNode* poll_next = nullptr;
  int64_t poll_due = 0;
  int poll_level = 0;  // its interval is kPollNs << poll_level
  int poll_list = -1;  // the list it is in: a level, kTaken, or -1 (none)
};

class PollSchedule {
 public:
  // Due one tick from now.
  void Add(PollNode* n, int64_t now) { Put(n, 0, now); }

  void Remove(PollNode* n) {
    if (n->poll_list >= 0) Unlink(n);
  }

  // Takes out the thing due first, if it is due by `now`: the caller looks at
  // it, then ends it (Remove), or puts it back (Back, or PutBackTaken).
  PollNode* TakeDue(int64_t now) {
    List* first = nullptr;
    for (List& l : lists_) {
      if (&l == &lists_[kTaken]) break;
      if (l.head != nullptr && (first == nullptr || l.head->poll_due < first->head->poll_due)) first = &l;
    }
    if (first == nullptr || first->head->poll_due > now) return nullptr;
    PollNode* n = first->head;
    Unlink(n);
    Link(n, kTaken);
    return n;
  }

  // A thing taken out is due again: after a longer interval if it was found
  // unchanged (quiet), else after the first one.
  void Back(PollNode* n, int64_t now, bool quiet) {
    Unlink(n);
    Put(n, quiet ? (n->poll_level + 1 < kPollLevels ? n->poll_level + 1 : n->poll_level) : 0, now);
  }

  // Every thing still taken out was found unchanged.
  void PutBackTaken(int64_t now) {
    while (lists_[kTaken].head != nullptr) Back(lists_[kTaken].head, now, true);
  }

  // When the next thing is due (NowNs() clock), or -1 if none is scheduled.
  int64_t NextDue() const {
    int64_t next = -1;
    for (int i = 0; i < kPollLevels; i++) {
      const PollNode* h = lists_[i].head;
      if (h != nullptr && (next < 0 || h->poll_due < next)) next = h->poll_due;
    }
    return next;
  }

 private:
  // Each level's list is in due order: things join its tail due now + its interval.
  struct List {
    PollNode* head = nullptr;
    PollNode* tail = nullptr;
  };
  static constexpr int kTaken = kPollLevels;

  void Put(PollNode* n, int level, int64_t now) {
    n->poll_level = level;
    n->poll_due = now + (kPollNs << level);
    Link(n, level);
  }

  void Link(PollNode* n, int list) {
    List& l = lists_[list];
    n->poll_list = list;
    n->poll_prev = l.tail;
    n->poll_next = nullptr;
    if (l.tail != nullptr) l.tail->poll_next = n;
    else l.head = n;
    l.tail = n;
  }

  void Unlink(PollNode* n) {
    List& l = lists_[n->poll_list];
    if (n->poll_prev != nullptr) n->poll_prev->poll_next = n->poll_next;
    else l.head = n->poll_next;
    if (n->poll_next != nullptr) n->poll_next->poll_prev = n->poll_prev;
    else l.tail = n->poll_prev;
    n->poll_prev = n->poll_next = nullptr;
    n->poll_list = -1;
  }

  List lists_[kPollLevels + 1];  // the levels, then the things taken out
};

}  // namespace pmp

#endif  // PMP_WAITER_POOL_H_
