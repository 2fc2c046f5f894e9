// Every async futex wait of the process, served by a bounded number of
// threads: a pending wait costs memory, not a thread of its own.
//
// Waits on the same (address, expected value) share one entry, owned by one
// server thread or by the poller. Linux: a server sleeps in futex_waitv on up
// to 127 entries' words plus a private control word that other threads bump
// to interrupt it when it gets a new entry. Kernels without futex_waitv
// (ENOSYS, or a seccomp filter) and macOS (__ulock_wait watches one address):
// one entry per server, which sleeps in slices of kSingleSliceNs. At most
// kServerThreads servers (waiter_pool.h, shared with the semaphores); entries
// beyond their capacity go to the poller, which asks the kernel about each of
// them every kPollNs and also ends every timed wait at its deadline. A wait
// that can get no thread (thread creation failed) ends with kError, alone.
//
// Wakes. A wake from this process (futexWake) ends this process's own async
// waits on the word first, oldest first, up to its count, exactly as it would
// have woken as many threads; only the rest of the count goes to the kernel.
// A kernel wake of an entry, which can only come from another process, ends
// every JS wait on it with 'ok': the server is one kernel waiter standing for
// all of them, and cannot tell a wake of one from a wake of all. So the waits
// of one process on one word are a herd for another process's wakes: they all
// look again, and all but the ones that can go on wait again. A server that
// wakes submits all its words again, and the waits of any word that changed
// meanwhile end too ('not-equal'), as the kernel would refuse a new sleep on
// it; the servers are kept apart (an idle one is preferred for a new entry)
// and do not wake for deadlines, so that this is rare.
//
// The shared words are never read from user space here: a handle's close() may
// unmap them at any moment. Only the kernel looks at them, which answers EFAULT
// for a word that is gone ('fault'), never a crash.
#include "futex_service.h"

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#elif defined(__APPLE__)
#define PMP_UL_COMPARE_AND_WAIT_SHARED 3
#define PMP_ULF_WAKE_ALL 0x00000100
#define PMP_ULF_NO_ERRNO 0x01000000
#endif

#include "waiter_pool.h"

namespace pmp {

// ---- the kernel's word primitives -------------------------------------------

WaitResult FutexWaitOnce(int32_t* addr, int32_t expected, int64_t timeout_ms) {
#if defined(__linux__)
  struct timespec ts;
  struct timespec* tsp = nullptr;
  if (timeout_ms >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout_ms / 1000);
    ts.tv_nsec = static_cast<long>((timeout_ms % 1000) * 1000000);
    tsp = &ts;
  }
  long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, nullptr, 0);
  if (r == 0) return WaitResult::kOk;
  switch (errno) {
    case EAGAIN:
      return WaitResult::kNotEqual;
    case ETIMEDOUT:
      return WaitResult::kTimedOut;
    case EINTR:
      return WaitResult::kOk;
    default:
      return WaitResult::kFault;
  }
#elif defined(__APPLE__)
  if (__atomic_load_n(addr, __ATOMIC_SEQ_CST) != expected) return WaitResult::kNotEqual;
  // __ulock_wait takes microseconds in 32 bits and 0 means "no limit": clamp, so
  // a finite timeout never becomes an infinite wait.
  uint32_t us = 0;
  bool clamped = false;
  if (timeout_ms >= 0) {
    int64_t v = timeout_ms * 1000;
    clamped = v > static_cast<int64_t>(UINT32_MAX);
    us = v <= 0 ? 1 : (clamped ? UINT32_MAX : static_cast<uint32_t>(v));
  }
  int r = __ulock_wait(PMP_UL_COMPARE_AND_WAIT_SHARED | PMP_ULF_NO_ERRNO, addr, static_cast<uint32_t>(expected), us);
  if (r >= 0) return WaitResult::kOk;
  // A clamped slice ran out, not the caller's timeout: the caller's loop goes on.
  if (r == -ETIMEDOUT) return clamped ? WaitResult::kOk : WaitResult::kTimedOut;
  if (r == -EINTR) return WaitResult::kOk;
  // EFAULT, EINVAL, ENOMEM...: report, do not spin. ULF_NO_ERRNO left errno
  // untouched, and the caller reports errno: set it.
  errno = -r;
  return WaitResult::kFault;
#else
#error "futex_service.cc: no wait-on-address primitive for this platform"
#endif
}

int FutexWakeWord(int32_t* addr, int count) {
#if defined(__linux__)
  long r = syscall(SYS_futex, addr, FUTEX_WAKE, count, nullptr, nullptr, 0);
  return r < 0 ? -errno : static_cast<int>(r);
#elif defined(__APPLE__)
  uint32_t op = PMP_UL_COMPARE_AND_WAIT_SHARED | PMP_ULF_NO_ERRNO;
  if (count > 1) op |= PMP_ULF_WAKE_ALL;
  int r = __ulock_wake(op, addr, 0);
  // ENOENT: nobody was waiting. The number woken is not reported on macOS.
  return r == -ENOENT ? 0 : (r < 0 ? r : 1);
#endif
}

namespace {

// What the kernel says about a word, asked without sleeping.
enum class Seen { kEqual, kWoken, kDiffers, kFault };

Seen Probe(uintptr_t addr, int32_t expected, int* err) {
#if defined(__linux__)
  // FUTEX_WAIT with a zero timeout: EAGAIN if the word differs, ETIMEDOUT if
  // it is equal, EFAULT if it is gone. A wake that lands in the instant the
  // probe is queued is taken by it (r == 0): it counts as a wake.
  struct timespec zero = {0, 0};
  long r = syscall(SYS_futex, reinterpret_cast<int32_t*>(addr), FUTEX_WAIT, expected, &zero, nullptr, 0);
  if (r == 0) return Seen::kWoken;
  switch (errno) {
    case ETIMEDOUT:
    case EINTR:
      return Seen::kEqual;
    case EAGAIN:
      return Seen::kDiffers;
    default:
      *err = errno;
      return Seen::kFault;
  }
#elif defined(__APPLE__)
  // Returns at once, >= 0, when the value differs; -ETIMEDOUT after 1 us when equal.
  int r = __ulock_wait(PMP_UL_COMPARE_AND_WAIT_SHARED | PMP_ULF_NO_ERRNO, reinterpret_cast<void*>(addr),
                       static_cast<uint32_t>(expected), 1);
  if (r >= 0) return Seen::kWoken;
  if (r == -ETIMEDOUT || r == -EINTR) return Seen::kEqual;
  *err = -r;
  return Seen::kFault;
#endif
}

// A one-word server's sleep: up to timeout_ns while the word holds expected.
// kEqual when the time ran out (or a signal came).
Seen SleepOnWord(uintptr_t addr, int32_t expected, int64_t timeout_ns, int* err) {
  if (timeout_ns < 1000) timeout_ns = 1000;
#if defined(__linux__)
  struct timespec ts = {static_cast<time_t>(timeout_ns / 1000000000), static_cast<long>(timeout_ns % 1000000000)};
  long r = syscall(SYS_futex, reinterpret_cast<int32_t*>(addr), FUTEX_WAIT, expected, &ts, nullptr, 0);
  if (r == 0) return Seen::kWoken;
  switch (errno) {
    case ETIMEDOUT:
    case EINTR:
      return Seen::kEqual;
    case EAGAIN:
      return Seen::kDiffers;
    default:
      *err = errno;
      return Seen::kFault;
  }
#elif defined(__APPLE__)
  int64_t us = timeout_ns / 1000;
  int r = __ulock_wait(PMP_UL_COMPARE_AND_WAIT_SHARED | PMP_ULF_NO_ERRNO, reinterpret_cast<void*>(addr),
                       static_cast<uint32_t>(expected), us > static_cast<int64_t>(UINT32_MAX) ? UINT32_MAX : static_cast<uint32_t>(us));
  if (r >= 0) return Seen::kWoken;  // woken, or the value differs: either way the waits end
  if (r == -ETIMEDOUT || r == -EINTR) return Seen::kEqual;
  *err = -r;
  return Seen::kFault;
#endif
}

#if defined(__linux__)
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
// struct futex_waitv (linux/futex.h since 5.16), spelled out for older headers.
struct WaitvItem {
  uint64_t val;
  uint64_t uaddr;
  uint32_t flags;
  uint32_t reserved;
};
constexpr uint32_t kWaitv32 = 2;         // FUTEX_32
constexpr uint32_t kWaitvPrivate = 128;  // FUTEX_PRIVATE_FLAG
constexpr int kWaitvMax = 128;           // FUTEX_WAITV_MAX

// futex_waitv until deadline_ns (CLOCK_MONOTONIC, as NowNs; negative: none;
// 0: do not sleep). The index of the word woken, or -1 with *err.
int Waitv(WaitvItem* items, int n, int64_t deadline_ns, int* err) {
  struct timespec ts;
  struct timespec* tsp = nullptr;
  if (deadline_ns >= 0) {
    ts.tv_sec = static_cast<time_t>(deadline_ns / 1000000000);
    ts.tv_nsec = static_cast<long>(deadline_ns % 1000000000);
    tsp = &ts;
  }
  long r = syscall(SYS_futex_waitv, items, n, 0, tsp, CLOCK_MONOTONIC);
  if (r >= 0) return static_cast<int>(r);
  *err = errno;
  return -1;
}

// Whether futex_waitv is there (Linux 5.16+, not refused by a seccomp filter):
// with no words it answers EINVAL, without the syscall ENOSYS (or EPERM).
// PMP_FUTEX_WAITV=0 turns it off, so the tests can run the one-word servers
// that other kernels and macOS get.
bool HaveWaitv() {
  const char* v = getenv("PMP_FUTEX_WAITV");
  if (v != nullptr && v[0] == '0' && v[1] == '\0') return false;
  return syscall(SYS_futex_waitv, nullptr, 0, 0, nullptr, 0) < 0 && errno == EINVAL;
}
#endif

// A one-word server cannot be interrupted while it sleeps on its word: it
// looks at its set again after this long (a new word for it waits that long).
constexpr int64_t kSingleSliceNs = 10'000'000;
// How often the poller asks the kernel about the words it holds.
constexpr int64_t kPollNs = 2'000'000;
// sleep_until of a thread that is running (it looks at its set before it sleeps).
constexpr int64_t kAwake = INT64_MIN;

}  // namespace

struct FutexEntry;

namespace {

// A server thread, or the poller, and the entries it owns.
struct Owner {
  ControlWord ctrl;
  std::vector<FutexEntry*> entries;
  int64_t sleep_until = kAwake;  // the time its thread sleeps until; -1: no limit
  bool running = false;
};

}  // namespace

// All waits on one word with one expected value.
struct FutexEntry {
  uintptr_t addr = 0;
  int32_t expected = 0;
  uint64_t serial = 0;          // tells a new entry for the same key from an old one
  FutexWaiter* head = nullptr;  // oldest first
  FutexWaiter* tail = nullptr;
  size_t count = 0;
  Owner* owner = nullptr;
  size_t slot = 0;  // index in owner->entries
};

namespace {

struct Key {
  uintptr_t addr;
  int32_t expected;
  bool operator==(const Key& o) const { return addr == o.addr && expected == o.expected; }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    return std::hash<uintptr_t>()(k.addr) ^ (std::hash<int32_t>()(k.expected) * 0x9e3779b97f4a7c15ULL);
  }
};

// What a thread took from its entries before letting go of the lock; results
// are applied by key and serial, so an entry that ended meanwhile is skipped.
struct Snap {
  uintptr_t addr;
  int32_t expected;
  uint64_t serial;
};

// How a server's sleep ended.
struct Outcome {
  enum Kind { kNothing, kWoken, kDiffers, kFault, kProbe } kind = kNothing;
  int index = 0;
  int err = 0;
};

// Whether a thread sleeping until sleep_until must be woken for time t.
bool Before(int64_t t, int64_t sleep_until) {
  if (sleep_until == kAwake) return false;
  return sleep_until < 0 || t < sleep_until;
}

void Deliver(std::vector<FutexWaiter*>* done) {
  for (FutexWaiter* w : *done) w->waits->Report(w);
  done->clear();
}

void SetThreadTimerSlack() {
#if defined(__linux__)
  // The default 50 us of slack would stretch every zero-timeout probe and
  // every deadline; these threads sleep little and must wake on time.
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
#endif
}

class FutexService {
 public:
  // Never destroyed: its detached threads use it until the process ends (the
  // library is pinned, futex.cc's PinLibrary).
  static FutexService& Get() {
    static FutexService* service = new FutexService();
    return *service;
  }

  void Add(FutexWaiter* w) {
    Owner* interrupt[2] = {nullptr, nullptr};
    {
      std::lock_guard<std::mutex> lock(mu_);
      int err = 0;
      // The poller keeps every deadline: it must run before a timed wait is taken.
      if (w->deadline_ns >= 0 && !EnsurePoller(&err)) return Fail(w, err);
      Key key{reinterpret_cast<uintptr_t>(w->addr), w->expected};
      auto it = entries_.find(key);
      FutexEntry* e;
      if (it != entries_.end()) {
        e = it->second;
      } else {
        Owner* o = Place(&err);
        if (o == nullptr) return Fail(w, err);
        bool was_empty = o->entries.empty();
        e = new FutexEntry();
        e->addr = key.addr;
        e->expected = key.expected;
        e->serial = next_serial_++;
        e->owner = o;
        e->slot = o->entries.size();
        o->entries.push_back(e);
        entries_.emplace(key, e);
        by_addr_[key.addr].push_back(e);
        // A server must add the word to its sleep; the poller only needs to
        // hear of its first entry (it looks at all of them every kPollNs).
        if (o->sleep_until != kAwake && (o != &poller_ || was_empty)) interrupt[0] = o;
      }
      // At the tail: an entry's waits end in the order they began.
      w->seq = next_seq_++;
      w->entry = e;
      w->prev = e->tail;
      w->next = nullptr;
      if (e->tail != nullptr) e->tail->next = w;
      else e->head = w;
      e->tail = w;
      e->count++;
      queued_.fetch_add(1, std::memory_order_relaxed);
      if (w->deadline_ns >= 0) {
        timed_.emplace(w->deadline_ns, w);
        if (Before(w->deadline_ns, poller_.sleep_until)) interrupt[1] = &poller_;
      }
    }
    for (Owner* o : interrupt) {
      if (o != nullptr) o->ctrl.Interrupt();
    }
  }

  bool Remove(FutexWaiter* w) {
    std::lock_guard<std::mutex> lock(mu_);
    FutexEntry* e = w->entry;
    if (e == nullptr) return false;
    Unlink(e, w);
    if (e->count == 0) Drop(e);
    return true;
  }

  // A wake from this process (futexWake) goes first to this process's own
  // async waits on the word, oldest first, up to count of them; the caller
  // wakes the kernel's waiters only for the rest. Without this, every wake of
  // the word would reach the one kernel waiter that stands for all of them and
  // end them all: N async acquires of one Lock, each releasing in turn, would
  // cost N^2/2 re-checks instead of N. Returns how many it ended.
  int WakeLocal(uintptr_t addr, int count) {
    if (queued_.load(std::memory_order_relaxed) == 0) return 0;  // the common case: no lock taken
    std::vector<FutexWaiter*> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = by_addr_.find(addr);
      while (static_cast<int>(done.size()) < count && it != by_addr_.end()) {
        FutexEntry* oldest = nullptr;
        for (FutexEntry* e : it->second) {
          if (oldest == nullptr || e->head->seq < oldest->head->seq) oldest = e;
        }
        FutexWaiter* w = oldest->head;
        Unlink(oldest, w);
        w->result = WaitResult::kOk;
        done.push_back(w);
        if (oldest->count == 0) {
          Drop(oldest);
          it = by_addr_.find(addr);
        }
      }
    }
    const int woken = static_cast<int>(done.size());
    Deliver(&done);
    return woken;
  }

 private:
  FutexService() {
#if defined(__linux__)
    capacity_ = HaveWaitv() ? kWaitvMax - 1 : 1;  // one place is the control word's
#endif
  }

  // Under mu_: the wait ends at once with kError (no thread for it).
  void Fail(FutexWaiter* w, int err) {
    w->result = WaitResult::kError;
    w->err = err;
    w->waits->Report(w);
  }

  // Under mu_: the owner for a new entry, or null (with *err) if no thread can
  // be had for it. An idle server first, then a new one, then the least
  // loaded: every wake-up of a server submits all its words again, and a word
  // that changed meanwhile ends all its waits, so busy words are best kept
  // apart.
  Owner* Place(int* err) {
    Owner* least = nullptr;
    for (Owner& s : servers_) {
      if (!s.running || s.entries.size() >= capacity_) continue;
      if (s.entries.empty()) return &s;
      if (least == nullptr || s.entries.size() < least->entries.size()) least = &s;
    }
    if (ThreadBudget::TryTake()) {
      for (Owner& s : servers_) {
        if (s.running) continue;
        s.running = true;
        s.sleep_until = kAwake;
        *err = StartThread(ServerMain, &s);
        if (*err == 0) return &s;
        s.running = false;
        break;
      }
      ThreadBudget::Give();
    }
    if (least != nullptr) return least;
    return EnsurePoller(err) ? &poller_ : nullptr;
  }

  // Under mu_: the poller runs (started now if need be); false with *err if it cannot.
  bool EnsurePoller(int* err) {
    if (poller_.running) return true;
    poller_.running = true;
    poller_.sleep_until = kAwake;
    *err = StartThread(PollerMain, &poller_);
    if (*err != 0) poller_.running = false;
    return *err == 0;
  }

  // Under mu_: takes w off its entry (which the caller drops when empty).
  void Unlink(FutexEntry* e, FutexWaiter* w) {
    if (w->prev != nullptr) w->prev->next = w->next;
    else e->head = w->next;
    if (w->next != nullptr) w->next->prev = w->prev;
    else e->tail = w->prev;
    w->prev = w->next = nullptr;
    w->entry = nullptr;
    e->count--;
    queued_.fetch_sub(1, std::memory_order_relaxed);
    if (w->deadline_ns >= 0) timed_.erase({w->deadline_ns, w});
  }

  // Under mu_: forgets an entry with no waits left. Its server is not
  // interrupted, unless that was its last entry (it may then start counting
  // its idle time): the word stays in its sleep until it next wakes, which is
  // harmless (a wake of it finds no entry), whereas every wake-up of a server
  // submits all its words again, and a word that changed meanwhile ends all
  // the waits of its entry.
  void Drop(FutexEntry* e) {
    Owner* o = e->owner;
    FutexEntry* last = o->entries.back();
    o->entries[e->slot] = last;
    last->slot = e->slot;
    o->entries.pop_back();
    if (o->entries.empty() && o != &poller_ && o->sleep_until != kAwake) o->ctrl.Interrupt();
    entries_.erase(Key{e->addr, e->expected});
    auto it = by_addr_.find(e->addr);
    std::vector<FutexEntry*>& same = it->second;
    for (size_t i = 0; i < same.size(); i++) {
      if (same[i] == e) {
        same[i] = same.back();
        same.pop_back();
        break;
      }
    }
    if (same.empty()) by_addr_.erase(it);
    delete e;
  }

  // Under mu_: ends every wait on the entry, and the entry.
  void Complete(FutexEntry* e, WaitResult r, int err, std::vector<FutexWaiter*>* done) {
    while (e->head != nullptr) {
      FutexWaiter* w = e->head;
      Unlink(e, w);
      w->result = r;
      w->err = err;
      done->push_back(w);
    }
    Drop(e);
  }

  // Under mu_: applies what the kernel said of a word, if its entry is still there.
  void CompleteIfSame(const Snap& s, WaitResult r, int err, std::vector<FutexWaiter*>* done) {
    auto it = entries_.find(Key{s.addr, s.expected});
    if (it != entries_.end() && it->second->serial == s.serial) Complete(it->second, r, err, done);
  }

  // Under mu_: ends the waits whose deadline has passed, whoever owns them.
  void Expire(int64_t now, std::vector<FutexWaiter*>* done) {
    while (!timed_.empty() && timed_.begin()->first <= now) {
      FutexWaiter* w = timed_.begin()->second;
      FutexEntry* e = w->entry;
      Unlink(e, w);
      w->result = WaitResult::kTimedOut;
      done->push_back(w);
      if (e->count == 0) Drop(e);
    }
  }

  static void TakeSnapshot(const Owner* o, std::vector<Snap>* snap) {
    snap->clear();
    for (const FutexEntry* e : o->entries) snap->push_back({e->addr, e->expected, e->serial});
  }

  // Under mu_ (given back meanwhile): asks the kernel about each word of
  // snap[from, to) and ends the entries whose word differs, was woken, or is gone.
  void ProbeEach(const std::vector<Snap>& snap, size_t from, size_t to, std::unique_lock<std::mutex>* lock,
                 std::vector<FutexWaiter*>* done) {
    struct Found {
      size_t index;
      Seen seen;
      int err;
    };
    std::vector<Found> found;
    lock->unlock();
    for (size_t i = from; i < to; i++) {
      int err = 0;
      Seen s = Probe(snap[i].addr, snap[i].expected, &err);
      if (s != Seen::kEqual) found.push_back({i, s, err});
    }
    lock->lock();
    for (const Found& f : found) {
      WaitResult r = f.seen == Seen::kWoken    ? WaitResult::kOk
                     : f.seen == Seen::kDiffers ? WaitResult::kNotEqual
                                                : WaitResult::kFault;
      CompleteIfSame(snap[f.index], r, f.err, done);
    }
  }

  static void* ServerMain(void* arg) {
    SetThreadTimerSlack();
    Get().Serve(static_cast<Owner*>(arg));
    return nullptr;
  }

  static void* PollerMain(void* arg) {
    SetThreadTimerSlack();
    Get().Poll(static_cast<Owner*>(arg));
    return nullptr;
  }

  // A server: sleeps on its entries' words until one is woken or differs, or
  // an interrupt; exits after kIdleNs without entries. It keeps no deadlines
  // (the poller does), so that a timed wait ending does not wake it: each
  // wake-up submits all its words again, and ends the waits of any that changed.
  void Serve(Owner* s) {
    std::vector<FutexWaiter*> done;
    std::vector<Snap> snap;
    std::unique_lock<std::mutex> lock(mu_);
    int64_t idle_since = NowNs();
    for (;;) {
      int64_t until = -1;
      if (s->entries.empty()) {
        const int64_t now = NowNs();
        if (idle_since < 0) idle_since = now;
        if (now - idle_since >= kIdleNs) break;
        until = idle_since + kIdleNs;
      } else {
        idle_since = -1;
      }
      TakeSnapshot(s, &snap);
      const uint32_t seen = s->ctrl.Load();
      s->sleep_until = until;
      lock.unlock();
      Deliver(&done);
      Outcome out = Sleep(s, snap, seen, until);
      lock.lock();
      s->sleep_until = kAwake;
      switch (out.kind) {
        case Outcome::kWoken:
          CompleteIfSame(snap[out.index], WaitResult::kOk, 0, &done);
          break;
        case Outcome::kDiffers:
          CompleteIfSame(snap[out.index], WaitResult::kNotEqual, 0, &done);
          break;
        case Outcome::kFault:
          CompleteIfSame(snap[out.index], WaitResult::kFault, out.err, &done);
          break;
        case Outcome::kProbe:
          ProbeEach(snap, 0, snap.size(), &lock, &done);
          if (out.err != EAGAIN && out.err != EFAULT) {
            // Not an answer about the words (ENOMEM...): do not spin on it.
            lock.unlock();
            Deliver(&done);
            s->ctrl.Sleep(s->ctrl.Load(), NowNs() + kPollNs);
            lock.lock();
          }
          break;
        case Outcome::kNothing:
          break;
      }
    }
    s->running = false;
    ThreadBudget::Give();
    lock.unlock();
    Deliver(&done);
  }

  // One sleep of a server, without the lock.
  Outcome Sleep(Owner* s, const std::vector<Snap>& snap, uint32_t seen, int64_t until) {
    Outcome out;
    if (snap.empty()) {
      s->ctrl.Sleep(seen, until);
      return out;
    }
#if defined(__linux__)
    if (capacity_ > 1) {
      WaitvItem items[kWaitvMax];
      const int n = static_cast<int>(snap.size());
      for (int i = 0; i < n; i++) {
        items[i] = {static_cast<uint32_t>(snap[i].expected), snap[i].addr, kWaitv32, 0};
      }
      items[n] = {seen, reinterpret_cast<uintptr_t>(s->ctrl.Addr()), kWaitv32 | kWaitvPrivate, 0};
      int err = 0;
      int r = Waitv(items, n + 1, until, &err);
      if (r >= 0 && r < n) {
        out.kind = Outcome::kWoken;
        out.index = r;
      } else if (r < 0 && err != ETIMEDOUT && err != EINTR) {
        // EAGAIN: a word differs, or the control word moved before we slept
        // (then a word that differs shows again on the next sleep, and is
        // probed then). EFAULT: a word is gone. Either way, ask word by word.
        if (err != EAGAIN || s->ctrl.Load() == seen) {
          out.kind = Outcome::kProbe;
          out.err = err;
        }
      }
      return out;
    }
#endif
    // One word, no control word: a slice at a time.
    int err = 0;
    switch (SleepOnWord(snap[0].addr, snap[0].expected, kSingleSliceNs, &err)) {
      case Seen::kWoken:
        out.kind = Outcome::kWoken;
        break;
      case Seen::kDiffers:
        out.kind = Outcome::kDiffers;
        break;
      case Seen::kFault:
        out.kind = Outcome::kFault;
        out.err = err;
        break;
      case Seen::kEqual:
        break;
    }
    return out;
  }

  // The poller ends every timed wait at its deadline, and every kPollNs asks
  // the kernel about every word it holds (128 at a time with futex_waitv,
  // which says without sleeping whether any of them differs or is gone);
  // exits after kIdleNs with neither.
  void Poll(Owner* p) {
    std::vector<FutexWaiter*> done;
    std::vector<Snap> snap;
    std::unique_lock<std::mutex> lock(mu_);
    int64_t idle_since = NowNs();
    for (;;) {
      int64_t now = NowNs();
      Expire(now, &done);
      if (!p->entries.empty()) {
        TakeSnapshot(p, &snap);
        for (size_t from = 0; from < snap.size(); from += kBatch) {
          size_t to = from + kBatch < snap.size() ? from + kBatch : snap.size();
          if (!AllEqual(snap, from, to, &lock, &done)) ProbeEach(snap, from, to, &lock, &done);
        }
        now = NowNs();
        Expire(now, &done);
      }
      int64_t until = p->entries.empty() ? -1 : now + kPollNs;
      if (!timed_.empty() && (until < 0 || timed_.begin()->first < until)) until = timed_.begin()->first;
      if (until >= 0) {
        idle_since = now;
      } else if (now - idle_since >= kIdleNs) {
        break;
      } else {
        until = idle_since + kIdleNs;
      }
      const uint32_t seen = p->ctrl.Load();
      p->sleep_until = until;
      lock.unlock();
      Deliver(&done);
      p->ctrl.Sleep(seen, until);
      lock.lock();
      p->sleep_until = kAwake;
    }
    p->running = false;
    lock.unlock();
    Deliver(&done);
  }

#if defined(__linux__)
  static constexpr size_t kBatch = kWaitvMax;
#else
  static constexpr size_t kBatch = 1;
#endif

  // Under mu_ (given back meanwhile): asks the kernel about snap[from, to) in
  // one call, which answers without sleeping whether every word still holds
  // its value. True: all equal. False: look at each; a wake that the call
  // itself took (it was queued for an instant) has ended its entry already.
  bool AllEqual(const std::vector<Snap>& snap, size_t from, size_t to, std::unique_lock<std::mutex>* lock,
                std::vector<FutexWaiter*>* done) {
#if defined(__linux__)
    if (capacity_ == 1) return false;
    WaitvItem items[kWaitvMax];
    int n = 0;
    for (size_t i = from; i < to; i++) {
      items[n++] = {static_cast<uint32_t>(snap[i].expected), snap[i].addr, kWaitv32, 0};
    }
    lock->unlock();
    int err = 0;
    int r = Waitv(items, n, 0, &err);  // a deadline long past: never sleeps
    lock->lock();
    if (r >= 0) CompleteIfSame(snap[from + r], WaitResult::kOk, 0, done);
    return r < 0 && err == ETIMEDOUT;
#else
    return false;
#endif
  }

  std::mutex mu_;
  std::unordered_map<Key, FutexEntry*, KeyHash> entries_;
  std::unordered_map<uintptr_t, std::vector<FutexEntry*>> by_addr_;  // the entries of each word
  std::set<std::pair<int64_t, FutexWaiter*>> timed_;                // waits with a deadline
  std::atomic<size_t> queued_{0};                                    // waits in entries; written under mu_
  Owner servers_[kServerThreads];
  Owner poller_;
  size_t capacity_ = 1;  // entries per server
  uint64_t next_serial_ = 1;
  uint64_t next_seq_ = 1;
};

}  // namespace

void FutexServiceAdd(FutexWaiter* w) { FutexService::Get().Add(w); }

bool FutexServiceRemove(FutexWaiter* w) { return FutexService::Get().Remove(w); }

int FutexServiceWakeLocal(int32_t* addr, int count) {
  return FutexService::Get().WakeLocal(reinterpret_cast<uintptr_t>(addr), count);
}

}  // namespace pmp
