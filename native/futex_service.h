// The kernel side of a futex wait (futex.cc's sync calls use it directly), and
// the service that serves every async futex wait of the process on a bounded
// number of threads (futex_service.cc).
#ifndef PMP_FUTEX_SERVICE_H_
#define PMP_FUTEX_SERVICE_H_

#include <cstddef>
#include <cstdint>

#include "async_wait.h"

namespace pmp {

// One kernel wait of at most timeout_ms (negative: unbounded) while the word
// equals expected. A signal or a spurious wake-up is reported as kOk: every
// caller re-checks its word. On kFault, errno is set.
WaitResult FutexWaitOnce(int32_t* addr, int32_t expected, int64_t timeout_ms);

// Wakes up to count waiters on the word, in any process; the number woken
// (macOS: 0 or 1, it does not say), or -errno.
int FutexWakeWord(int32_t* addr, int count);

struct FutexEntry;
struct SharedWake;

// One async wait as the service sees it; futex.cc's job adds the JS side.
struct FutexWaiter : AsyncJob {
  int32_t* addr = nullptr;
  int32_t expected = 0;
  int64_t deadline_ns = -1;  // NowNs() clock; negative: none
  WaitResult result = WaitResult::kOk;
  int err = 0;  // with kError: pthread_create's error
  // With kOk: the wait was ended by a wake, one that another waiter of the word
  // should get if nobody receives it (FutexServiceLetGo). `shared` when one
  // kernel wake ended several waits (all of an entry's), null when it was this
  // wait's alone.
  bool took_wake = false;
  SharedWake* shared = nullptr;

  // The service's, under its lock: the entry this wait is queued on (null once
  // it has ended) and the links of that entry's list.
  FutexEntry* entry = nullptr;
  uint64_t seq = 0;  // order of arrival
  FutexWaiter* prev = nullptr;
  FutexWaiter* next = nullptr;
};

// JS thread: queues the wait; the service reports it (waits->Report) when the
// word is woken or differs, the deadline passes, or the wait cannot be served
// (kError, reported before this returns).
void FutexServiceAdd(FutexWaiter* w);

// JS thread: takes the wait back. True if it was still queued (the caller then
// reports it as cancelled); false if it has ended and its result is on its way.
bool FutexServiceRemove(FutexWaiter* w);

// Any thread: ends up to count of this process's async waits on the word, the
// oldest first, as a wake would; returns how many. futexWake calls it first
// and wakes the kernel's waiters only for the rest of its count.
int FutexServiceWakeLocal(int32_t* addr, int count);

// Once per wait that has ended, when its result is delivered (received) or
// will never be looked at (cancelled after it ended, or its environment is
// gone). A wake that ended waits none of which received it is passed on to
// another waiter of the word, as if those waits had never been there; with
// may_lock false (the caller holds a lock a delivery takes) it goes straight
// to the kernel's waiters.
void FutexServiceLetGo(FutexWaiter* w, bool received, bool may_lock);

// Any thread, before [addr, addr + length) is unmapped: returns once no
// service thread is inside a kernel call on a word there. Such a call may
// take a wake meant for another process, which the thread then passes on
// through that address: it must still be mapped.
void FutexServiceForget(const void* addr, size_t length);

}  // namespace pmp

#endif  // PMP_FUTEX_SERVICE_H_
