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
// beyond their capacity go to the poller, which asks the kernel about them as
// its schedule says (waiter_pool.h: less often the longer a word stays
// unchanged, and a bounded amount per tick) and also ends every timed wait at
// its deadline. A wait that can get no thread (thread creation failed) ends
// with kError, alone.
//
// Wakes. A wake from this process (futexWake) ends this process's own async
// waits on the word first, oldest first, up to its count, exactly as it would
// have woken as many threads; only the rest of the count goes to the kernel.
// A kernel wake of an entry ends every JS wait on it with 'ok': the server is
// one kernel waiter standing for all of them, and cannot tell a wake of one
// from a wake of all. So the waits of one process on one word are a herd for
// another process's wakes: they all look again, and all but the ones that can
// go on wait again. A server that wakes submits all its words again, and the
// waits of any word that changed meanwhile end too ('not-equal'), as the
// kernel would refuse a new sleep on it; the servers are kept apart (an idle
// one is preferred for a new entry) and do not wake for deadlines, so that
// this is rare.
//
// A wake is never thrown away. When an entry's waits end otherwise (abort,
// timeout, close(), a wake from this process) its server is not interrupted,
// so it may still be asleep on the word and take the next kernel wake, which
// goes to the first waiter queued (another process's Sync acquire would then
// sleep on with a unit at hand). A server or probe that takes a wake for a
// word with no entry any more passes it on (FUTEX_WAKE of 1); it converges,
// as the thread no longer sleeps on that word. Likewise a wake that ended
// waits none of which reached its callback (FutexServiceLetGo).
//
// The shared words are never read from user space here: a handle's close() may
// unmap them at any moment. Only the kernel looks at them, which answers EFAULT
// for a word that is gone ('fault'), never a crash. An unmap waits for the
// service threads to leave the kernel calls on words inside it
// (FutexServiceForget), so that a wake they took can still be passed on.
#include "futex_service.h"

#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
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
#endif

#include "waiter_pool.h"

namespace pmp {

// ---- the kernel's word primitives -------------------------------------------

namespace {

// How one sleep on a word ended.
enum class Slept { kWoken, kDiffers, kTimedOut, kInterrupted, kFault };

// One FUTEX_WAIT (macOS: __ulock_wait) while the word holds expected, for up
// to timeout_ns (negative: no limit). kInterrupted: a signal came, or (macOS)
// a limit clamped to what the call takes ran out; the caller looks again. On
// kFault, *err is the error. macOS answers alike when woken and when the word
// differs: kWoken.
Slept SleepOnWord(int32_t* addr, int32_t expected, int64_t timeout_ns, int* err) {
#if defined(__linux__)
  struct timespec ts;
  struct timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout_ns / 1000000000);
    ts.tv_nsec = static_cast<long>(timeout_ns % 1000000000);
    tsp = &ts;
  }
  long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, nullptr, 0);
  if (r == 0) return Slept::kWoken;
  switch (errno) {
    case EAGAIN:
      return Slept::kDiffers;
    case ETIMEDOUT:
      return Slept::kTimedOut;
    case EINTR:
      return Slept::kInterrupted;
    default:
      *err = errno;
      return Slept::kFault;
  }
#elif defined(__APPLE__)
  // __ulock_wait takes microseconds in 32 bits and 0 means "no limit": clamp, so
  // a finite timeout never becomes an infinite wait.
  uint32_t us = 0;
  bool clamped = false;
  if (timeout_ns >= 0) {
    int64_t v = timeout_ns / 1000;
    clamped = v > static_cast<int64_t>(UINT32_MAX);
    us = v <= 0 ? 1 : (clamped ? UINT32_MAX : static_cast<uint32_t>(v));
  }
  int r = __ulock_wait(PMP_UL_COMPARE_AND_WAIT_SHARED | PMP_ULF_NO_ERRNO, addr, static_cast<uint32_t>(expected), us);
  if (r >= 0) return Slept::kWoken;
  if (r == -ETIMEDOUT) return clamped ? Slept::kInterrupted : Slept::kTimedOut;
  if (r == -EINTR) return Slept::kInterrupted;
  // EFAULT, EINVAL, ENOMEM...: report, do not spin (ULF_NO_ERRNO: errno is untouched).
  *err = -r;
  return Slept::kFault;
#else
#error "futex_service.cc: no wait-on-address primitive for this platform"
#endif
}

}  // namespace

WaitResult FutexWaitOnce(int32_t* addr, int32_t expected, int64_t timeout_ms) {
#if defined(__APPLE__)
  // __ulock_wait does not say whether the word differed: look first (the
  // caller's mapping is alive while it waits).
  if (__atomic_load_n(addr, __ATOMIC_SEQ_CST) != expected) return WaitResult::kNotEqual;
#endif
  // Beyond kNoDeadlineMs (decades) a limit is as good as none, and nanoseconds
  // would overflow.
  const int64_t timeout_ns = timeout_ms < 0 || timeout_ms > kNoDeadlineMs ? -1 : timeout_ms * 1000000;
  int err = 0;
  switch (SleepOnWord(addr, expected, timeout_ns, &err)) {
    case Slept::kWoken:
    case Slept::kInterrupted:
      return WaitResult::kOk;
    case Slept::kDiffers:
      return WaitResult::kNotEqual;
    case Slept::kTimedOut:
      return WaitResult::kTimedOut;
    case Slept::kFault:
      break;
  }
  errno = err;  // the caller reports errno
  return WaitResult::kFault;
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
  // FUTEX_CMP_REQUEUE of nobody from the word to itself: EAGAIN if the word
  // differs from expected, EFAULT if it is gone; otherwise it wakes and moves
  // no one. Unlike a FUTEX_WAIT with a zero timeout it never queues the
  // thread (so it never takes a wake), nor sleeps until its timer fires.
  int32_t* word = reinterpret_cast<int32_t*>(addr);
  long r = syscall(SYS_futex, word, FUTEX_CMP_REQUEUE, 0, reinterpret_cast<void*>(0), word, expected);
  if (r >= 0) return Seen::kEqual;
  if (errno == EAGAIN) return Seen::kDiffers;
  *err = errno;
  return Seen::kFault;
#else
  // No compare without a wait on macOS: a wait of 1 us, which returns at once
  // when the word differs.
  switch (SleepOnWord(reinterpret_cast<int32_t*>(addr), expected, 1000, err)) {
    case Slept::kWoken:
      return Seen::kWoken;
    case Slept::kFault:
      return Seen::kFault;
    default:
      return Seen::kEqual;
  }
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
// 0: do not sleep). The index of the word woken, or -1 with *err. When several
// words are woken before the thread runs, the kernel reports the last of them
// in the array and says nothing of the others.
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
constexpr size_t kBatch = kWaitvMax;
#else
constexpr size_t kBatch = 1;
#endif

// A one-word server cannot be interrupted while it sleeps on its word: it
// looks at its set again after this long (a new word for it waits that long).
constexpr int64_t kSingleSliceNs = 10'000'000;
// What one tick of the poller may ask the kernel (waiter_pool.h): a few % of
// a core either way, at ~0.3 us a word in futex_waitv (measured with 40,000
// words) and ~1 us a FUTEX_WAIT probe.
constexpr size_t kPollWaitvWords = 128;
constexpr size_t kPollProbes = 32;
// sleep_until of a thread that is running (it looks at its set before it sleeps).
constexpr int64_t kAwake = INT64_MIN;

// What a thread took from its entries before letting go of the lock; results
// are applied by key and serial, so an entry that ended meanwhile is skipped.
struct Snap {
  uintptr_t addr;
  int32_t expected;
  uint64_t serial;
};

// A server thread, or the poller, and the entries it owns.
struct Owner {
  ControlWord ctrl;
  std::vector<FutexEntry*> entries;
  int64_t sleep_until = kAwake;  // the time its thread sleeps until; -1: no limit
  bool running = false;
  // The words it has handed to the kernel (a server's sleep, the poller's
  // probes), while in_kernel: a kernel call on them may take a wake, and an
  // unmap of them waits until it is back (Forget). `trips` counts the returns.
  std::vector<Snap> snap;
  bool in_kernel = false;
  uint64_t trips = 0;
  size_t dropped = 0;  // entries of snap dropped while in the kernel
};

}  // namespace

// All waits on one word with one expected value.
struct FutexEntry : PollNode {
  uintptr_t addr = 0;
  int32_t expected = 0;
  uint64_t serial = 0;          // tells a new entry for the same key from an old one
  FutexWaiter* head = nullptr;  // oldest first
  FutexWaiter* tail = nullptr;
  size_t count = 0;
  Owner* owner = nullptr;
  size_t slot = 0;  // index in owner->entries
};

// One kernel wake that ended all the waits of an entry (FutexServiceLetGo).
struct SharedWake {
  std::atomic<size_t> left;  // waits not yet let go
  std::atomic<bool> received{false};
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

// How a server's sleep ended.
struct Outcome {
  enum Kind { kNothing, kInterrupted, kWoken, kDiffers, kFault, kProbe } kind = kNothing;
  size_t index = 0;
  int err = 0;
};

// What the kernel said of snap[index]. maybe_taken: the word may have taken a
// wake that was not reported (futex_waitv reports one woken word of several).
struct Found {
  size_t index;
  Seen seen;
  int err;
  bool maybe_taken;
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

// Without the lock: asks the kernel about each word of snap[from, to) but skip.
void ProbeRange(const std::vector<Snap>& snap, size_t from, size_t to, size_t skip, bool maybe_taken,
                std::vector<Found>* found) {
  for (size_t i = from; i < to; i++) {
    if (i == skip) continue;
    int err = 0;
    Seen s = Probe(snap[i].addr, snap[i].expected, &err);
    if (s != Seen::kEqual) found->push_back({i, s, err, maybe_taken});
  }
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
        e = new FutexEntry();
        e->addr = key.addr;
        e->expected = key.expected;
        e->serial = next_serial_++;
        e->owner = o;
        e->slot = o->entries.size();
        o->entries.push_back(e);
        entries_.emplace(key, e);
        by_addr_[key.addr].push_back(e);
        if (o == &poller_) {
          // The poller sleeps until its next look is due: wake it if that is later.
          schedule_.Add(e, NowNs());
          if (Before(e->poll_due, o->sleep_until)) interrupt[0] = o;
        } else if (o->sleep_until != kAwake) {
          interrupt[0] = o;  // a server must add the word to its sleep
        }
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
        // Each wait ended here stands for one of the count; a wake of all
        // reaches everyone anyway.
        w->took_wake = count != INT_MAX;
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

  // A wait that ended with a wake is let go: received by its callback, or
  // never to be looked at. A wake that none of the waits it ended received
  // goes on to another waiter, or a process sleeping on the word would sleep
  // on with what it waits for at hand.
  void LetGo(FutexWaiter* w, bool received, bool may_lock) {
    if (!w->took_wake) return;
    w->took_wake = false;
    bool pass = !received;
    if (SharedWake* t = w->shared) {
      w->shared = nullptr;
      if (received) t->received.store(true, std::memory_order_relaxed);
      if (t->left.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      pass = !t->received.load(std::memory_order_relaxed);
      delete t;
    }
    if (!pass) return;
    const uintptr_t addr = reinterpret_cast<uintptr_t>(w->addr);
    if (may_lock && WakeLocal(addr, 1) == 1) return;
    // EFAULT (the word's memory is gone) leaves nobody to wake through it.
    FutexWakeWord(w->addr, 1);
  }

  // Waits until every thread that is in a kernel call on a word in
  // [from, to) has returned from it. A server in futex_waitv returns at once
  // (interrupted), a one-word server at the end of its slice, the poller when
  // its round of probes is done. One that then sleeps on such a word again
  // still has a wait on it, which the unmap ends ('fault').
  void Forget(uintptr_t from, uintptr_t to) {
    std::unique_lock<std::mutex> lock(mu_);
    Owner* owners[kServerThreads + 1];
    uint64_t trips[kServerThreads + 1];
    int n = 0;
    auto look = [&](Owner* o) {
      if (!o->in_kernel) return;
      for (const Snap& s : o->snap) {
        if (s.addr >= from && s.addr < to) {
          owners[n] = o;
          trips[n++] = o->trips;
          o->ctrl.Interrupt();
          return;
        }
      }
    };
    for (Owner& s : servers_) look(&s);
    look(&poller_);
    if (n == 0) return;
    forgetting_++;
    left_kernel_.wait(lock, [&] {
      for (int i = 0; i < n; i++) {
        if (owners[i]->trips == trips[i]) return false;
      }
      return true;
    });
    forgetting_--;
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
  // its idle time): every wake-up of a server submits all its words again,
  // and a word that changed meanwhile ends all the waits of its entry. So the
  // word stays in the server's sleep until it next wakes, where it may take a
  // wake meant for another waiter; the server passes that on (Serve).
  void Drop(FutexEntry* e) {
    Owner* o = e->owner;
    FutexEntry* last = o->entries.back();
    o->entries[e->slot] = last;
    last->slot = e->slot;
    o->entries.pop_back();
    if (o == &poller_) schedule_.Remove(e);
    if (o->in_kernel) o->dropped++;
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

  // Under mu_: ends every wait on the entry, and the entry. took_wake: a
  // kernel wake ended them (one for all: see FutexServiceLetGo).
  void Complete(FutexEntry* e, WaitResult r, int err, bool took_wake, std::vector<FutexWaiter*>* done) {
    SharedWake* shared = nullptr;
    if (took_wake && e->count > 1) {
      shared = new SharedWake();
      shared->left.store(e->count, std::memory_order_relaxed);
    }
    while (e->head != nullptr) {
      FutexWaiter* w = e->head;
      Unlink(e, w);
      w->result = r;
      w->err = err;
      w->took_wake = took_wake;
      w->shared = shared;
      done->push_back(w);
    }
    Drop(e);
  }

  // Under mu_: the entry a snapshot was taken of, if it is still there.
  FutexEntry* Find(const Snap& s) {
    auto it = entries_.find(Key{s.addr, s.expected});
    return it != entries_.end() && it->second->serial == s.serial ? it->second : nullptr;
  }

  // Under mu_: applies what the kernel said of the words of snap. A wake taken
  // on a word whose entry has gone (its waits ended meanwhile: aborted, timed
  // out, cancelled, or ended by a wake from this process) was meant for
  // another waiter: it goes into *pass, to be passed on.
  void Apply(const std::vector<Snap>& snap, const std::vector<Found>& found, std::vector<uintptr_t>* pass,
             std::vector<FutexWaiter*>* done) {
    for (const Found& f : found) {
      FutexEntry* e = Find(snap[f.index]);
      if (e != nullptr) {
        if (f.seen == Seen::kWoken) Complete(e, WaitResult::kOk, 0, true, done);
        else if (f.seen == Seen::kDiffers) Complete(e, WaitResult::kNotEqual, 0, false, done);
        else Complete(e, WaitResult::kFault, f.err, false, done);
      } else if (f.seen == Seen::kWoken || (f.seen == Seen::kDiffers && f.maybe_taken)) {
        pass->push_back(snap[f.index].addr);
      }
    }
  }

  // Under mu_ (given back meanwhile): wakes one waiter of each word in *pass.
  // The thread is still in_kernel, so the words are still mapped.
  static void PassOn(std::vector<uintptr_t>* pass, std::unique_lock<std::mutex>* lock) {
    if (pass->empty()) return;
    lock->unlock();
    for (uintptr_t addr : *pass) FutexWakeWord(reinterpret_cast<int32_t*>(addr), 1);
    pass->clear();
    lock->lock();
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

  static Snap SnapOf(const FutexEntry* e) { return {e->addr, e->expected, e->serial}; }

  // Under mu_: the thread is about to hand o->snap to the kernel, or is back.
  void EnterKernel(Owner* o) {
    o->in_kernel = true;
    o->dropped = 0;
  }
  void LeaveKernel(Owner* o) {
    o->in_kernel = false;
    o->trips++;
    if (forgetting_ > 0) left_kernel_.notify_all();
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
    std::vector<Found> found;
    std::vector<uintptr_t> pass;
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
      s->snap.clear();
      for (const FutexEntry* e : s->entries) s->snap.push_back(SnapOf(e));
      const uint32_t seen = s->ctrl.Load();
      s->sleep_until = until;
      EnterKernel(s);
      lock.unlock();
      Deliver(&done);
      Outcome out = Sleep(s, seen, until);
      found.clear();
      if (out.kind == Outcome::kProbe) ProbeRange(s->snap, 0, s->snap.size(), SIZE_MAX, false, &found);
      lock.lock();
      s->sleep_until = kAwake;
      const bool dropped_asleep = s->dropped > 0;
      if (out.kind == Outcome::kWoken || out.kind == Outcome::kDiffers || out.kind == Outcome::kFault) {
        found.push_back({out.index, out.kind == Outcome::kWoken    ? Seen::kWoken
                                    : out.kind == Outcome::kDiffers ? Seen::kDiffers
                                                                    : Seen::kFault,
                         out.err, false});
      }
      Apply(s->snap, found, &pass, &done);
      if ((out.kind == Outcome::kWoken || out.kind == Outcome::kInterrupted) && capacity_ > 1 && dropped_asleep) {
        // futex_waitv told of one woken word (or the control word); a word
        // without waits any more may have taken a wake too, unreported. Ask
        // about those: one that took a wake now or has changed passes one on
        // (at worst a spurious wake-up, once per such word, which every
        // waiter re-checks).
        std::vector<size_t> gone;
        for (size_t i = 0; i < s->snap.size(); i++) {
          if ((out.kind != Outcome::kWoken || i != out.index) && Find(s->snap[i]) == nullptr) gone.push_back(i);
        }
        if (!gone.empty()) {
          found.clear();
          lock.unlock();
          for (size_t i : gone) ProbeRange(s->snap, i, i + 1, SIZE_MAX, true, &found);
          lock.lock();
          Apply(s->snap, found, &pass, &done);
        }
      }
      PassOn(&pass, &lock);
      LeaveKernel(s);
      if (out.kind == Outcome::kProbe && out.err != EAGAIN && out.err != EFAULT) {
        // Not an answer about the words (ENOMEM...): do not spin on it.
        lock.unlock();
        Deliver(&done);
        s->ctrl.Sleep(s->ctrl.Load(), NowNs() + kPollNs);
        lock.lock();
      }
    }
    s->running = false;
    ThreadBudget::Give();
    lock.unlock();
    Deliver(&done);
  }

  // One sleep of a server on s->snap, without the lock.
  Outcome Sleep(Owner* s, uint32_t seen, int64_t until) {
    const std::vector<Snap>& snap = s->snap;
    Outcome out;
    if (snap.empty()) {
      s->ctrl.Sleep(seen, until);
      return out;
    }
#if defined(__linux__)
    if (capacity_ > 1) {
      // The control word first: of several words woken at once the kernel
      // reports the last, so an interrupt never hides a word's wake.
      WaitvItem items[kWaitvMax];
      const int n = static_cast<int>(snap.size());
      items[0] = {seen, reinterpret_cast<uintptr_t>(s->ctrl.Addr()), kWaitv32 | kWaitvPrivate, 0};
      for (int i = 0; i < n; i++) {
        items[i + 1] = {static_cast<uint32_t>(snap[i].expected), snap[i].addr, kWaitv32, 0};
      }
      int err = 0;
      int r = Waitv(items, n + 1, until, &err);
      if (r == 0) {
        out.kind = Outcome::kInterrupted;
      } else if (r > 0) {
        out.kind = Outcome::kWoken;
        out.index = static_cast<size_t>(r - 1);
      } else if (err != ETIMEDOUT && err != EINTR) {
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
    switch (SleepOnWord(reinterpret_cast<int32_t*>(snap[0].addr), snap[0].expected, kSingleSliceNs, &err)) {
      case Slept::kWoken:
        out.kind = Outcome::kWoken;
        break;
      case Slept::kDiffers:
        out.kind = Outcome::kDiffers;
        break;
      case Slept::kFault:
        out.kind = Outcome::kFault;
        out.err = err;
        break;
      case Slept::kTimedOut:
      case Slept::kInterrupted:
        break;
    }
    return out;
  }

  // The poller ends every timed wait at its deadline and asks the kernel about
  // the words it holds as its schedule says (waiter_pool.h): 128 at a time with
  // futex_waitv, which says without sleeping whether any of them differs or is
  // gone. It exits after kIdleNs with neither words nor deadlines.
  void Poll(Owner* p) {
    std::vector<FutexWaiter*> done;
    std::vector<Found> found;
    std::vector<uintptr_t> pass;
    const size_t budget = capacity_ > 1 ? kPollWaitvWords : kPollProbes;
    std::unique_lock<std::mutex> lock(mu_);
    int64_t idle_since = NowNs();
    int64_t last_round = INT64_MIN / 2;
    for (;;) {
      int64_t now = NowNs();
      Expire(now, &done);
      p->snap.clear();
      for (PollNode* n; p->snap.size() < budget && (n = schedule_.TakeDue(now)) != nullptr;) {
        p->snap.push_back(SnapOf(static_cast<FutexEntry*>(n)));
      }
      if (!p->snap.empty()) {
        EnterKernel(p);
        lock.unlock();
        found.clear();
        for (size_t from = 0; from < p->snap.size(); from += kBatch) {
          const size_t to = from + kBatch < p->snap.size() ? from + kBatch : p->snap.size();
          const int r = AllEqual(p->snap, from, to);
          if (r == kAllEqual) continue;
          size_t woken = SIZE_MAX;
          if (r >= 0) {
            woken = from + static_cast<size_t>(r);
            found.push_back({woken, Seen::kWoken, 0, false});
          }
          ProbeRange(p->snap, from, to, woken, r >= 0, &found);
        }
        lock.lock();
        Apply(p->snap, found, &pass, &done);
        PassOn(&pass, &lock);
        LeaveKernel(p);
        now = NowNs();
        schedule_.PutBackTaken(now);  // what is left of them was found unchanged
        last_round = now;
        Expire(now, &done);
      }
      int64_t until = schedule_.NextDue();
      if (until >= 0 && until < last_round + kPollNs) until = last_round + kPollNs;
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

  static constexpr int kAllEqual = -2;
  static constexpr int kLookAtEach = -1;

  // Without the lock: asks the kernel about snap[from, to) in one call, which
  // answers without sleeping whether every word still holds its value:
  // kAllEqual, kLookAtEach, or the index (from `from`) of a word whose wake
  // the call itself took (it was queued for an instant).
  int AllEqual(const std::vector<Snap>& snap, size_t from, size_t to) {
#if defined(__linux__)
    if (capacity_ == 1) return kLookAtEach;
    WaitvItem items[kWaitvMax];
    int n = 0;
    for (size_t i = from; i < to; i++) {
      items[n++] = {static_cast<uint32_t>(snap[i].expected), snap[i].addr, kWaitv32, 0};
    }
    int err = 0;
    int r = Waitv(items, n, 0, &err);  // a deadline long past: never sleeps
    if (r >= 0) return r;
    return err == ETIMEDOUT ? kAllEqual : kLookAtEach;
#else
    (void)snap;
    (void)from;
    (void)to;
    return kLookAtEach;
#endif
  }

  std::mutex mu_;
  std::unordered_map<Key, FutexEntry*, KeyHash> entries_;
  std::unordered_map<uintptr_t, std::vector<FutexEntry*>> by_addr_;  // the entries of each word
  std::set<std::pair<int64_t, FutexWaiter*>> timed_;                // waits with a deadline
  std::atomic<size_t> queued_{0};                                    // waits in entries; written under mu_
  Owner servers_[kServerThreads];
  Owner poller_;
  PollSchedule schedule_;  // the poller's entries
  std::condition_variable left_kernel_;  // LeaveKernel, for Forget
  int forgetting_ = 0;                   // Forget calls waiting on it
  size_t capacity_ = 1;                  // entries per server
  uint64_t next_serial_ = 1;
  uint64_t next_seq_ = 1;
};

}  // namespace

void FutexServiceAdd(FutexWaiter* w) { FutexService::Get().Add(w); }

bool FutexServiceRemove(FutexWaiter* w) { return FutexService::Get().Remove(w); }

int FutexServiceWakeLocal(int32_t* addr, int count) {
  return FutexService::Get().WakeLocal(reinterpret_cast<uintptr_t>(addr), count);
}

void FutexServiceLetGo(FutexWaiter* w, bool received, bool may_lock) {
  FutexService::Get().LetGo(w, received, may_lock);
}

void FutexServiceForget(const void* addr, size_t length) {
  const uintptr_t from = reinterpret_cast<uintptr_t>(addr);
  FutexService::Get().Forget(from, from + length);
}

}  // namespace pmp
