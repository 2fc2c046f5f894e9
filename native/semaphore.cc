// POSIX named semaphores, syscall-shaped: the object C and Python programs can
// open by name (sem_open("/name", 0)) to share a count with us. Policy (names,
// who creates, bounded checks) is src/posix-semaphore.ts's.
//
//   semOpen(name, create, exclusive, mode, value) -> handle     (sem_open)
//   semClose(handle)             idempotent; later calls with the handle throw ERR_MP_CLOSED
//   semTryWait(handle) -> bool   (sem_trywait; false when the value is 0)
//   semTimedWait(handle, ms) -> bool   blocks this thread; ms < 0: no limit; false on timeout
//                                      (in a worker thread, also as soon as the worker is being terminated)
//   semPost(handle, n)           n x sem_post
//   semGetValue(handle) -> n     (macOS has no sem_getvalue: throws ERR_MP_UNSUPPORTED)
//   semUnlink(name)
//   semWaitAsync(handle, ms, callback) -> { cancel() }
//       the wait, served by a bounded set of threads (SemService below; never
//       the libuv threadpool); callback(result, error?) runs on the JS thread,
//       result 'ok' | 'timed-out' | 'cancelled' | 'fault' | 'error' (with error).
//   semValueMax                  SEM_VALUE_MAX
//   semWaitsPoll                 whether finite waits poll (macOS; PMP_SEM_POLL_WAIT=1)
//
// Linux waits with sem_timedwait (CLOCK_REALTIME, as POSIX defines it: a wall
// clock step shortens or stretches a wait). macOS has no sem_timedwait: a
// finite wait there is a sem_trywait loop with sleeps of at most 10 ms, so the
// timeout is honoured within a few milliseconds (PollFor; Linux runs it too
// when PMP_SEM_POLL_WAIT=1, for the tests).
#include <fcntl.h>
#include <napi.h>
#include <semaphore.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "addon.h"
#include "async_wait.h"
#include "errors.h"
#include "util.h"
#include "waiter_pool.h"

#ifndef SEM_VALUE_MAX
#define SEM_VALUE_MAX INT_MAX
#endif

namespace pmp {

namespace {

// The open semaphore, shared by the JS handle and by waiter threads, so that
// close() from JS never unmaps a semaphore a thread is still waiting on: the
// last reference closes it.
struct Sem {
  sem_t* sem = nullptr;
  std::atomic<int> refs{1};
  void Ref() { ++refs; }
  void Unref() {
    if (--refs == 0) {
      sem_close(sem);
      delete this;
    }
  }
};

// A finite wait without sem_timedwait, which macOS lacks: sem_trywait with
// naps growing to 10 ms, never past the deadline, so a timeout is honoured
// within a nap and a post is seen at most 10 ms late.
WaitResult PollFor(sem_t* sem, int64_t ms, int* err) {
  const int64_t deadline = NowMs() + ms;
  int64_t nap_us = 200;
  for (;;) {
    if (sem_trywait(sem) == 0) return WaitResult::kOk;
    if (errno != EAGAIN && errno != EINTR) {
      *err = errno;
      return WaitResult::kFault;
    }
    int64_t left_us = (deadline - NowMs()) * 1000;
    if (left_us <= 0) return WaitResult::kTimedOut;
    usleep(static_cast<useconds_t>(nap_us < left_us ? nap_us : left_us));
    nap_us = nap_us * 2 < 10000 ? nap_us * 2 : 10000;
  }
}

// Whether finite waits poll (PollFor): always on macOS. Elsewhere only when
// PMP_SEM_POLL_WAIT=1 was set when the addon loaded, so the tests can run the
// macOS wait on Linux.
bool WaitsPoll() {
#if defined(__APPLE__)
  return true;
#else
  static const bool forced = [] {
    const char* v = getenv("PMP_SEM_POLL_WAIT");
    return v != nullptr && v[0] == '1' && v[1] == '\0';
  }();
  return forced;
#endif
}

// One wait of at most ms (ms < 0: no limit). Signals never end it early: the
// EINTR loop goes on with the same deadline. On kFault, *err holds errno.
WaitResult WaitFor(sem_t* sem, int64_t ms, int* err) {
  if (ms < 0) {
    if (RetryEintr([&] { return sem_wait(sem); }) == 0) return WaitResult::kOk;
    *err = errno;
    return WaitResult::kFault;
  }
  if (WaitsPoll()) return PollFor(sem, ms, err);
#if defined(__APPLE__)
  return WaitResult::kFault;  // not reached: macOS always polls
#else
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += static_cast<time_t>(ms / 1000);
  ts.tv_nsec += static_cast<long>((ms % 1000) * 1000000);
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec += 1;
    ts.tv_nsec -= 1000000000;
  }
  if (RetryEintr([&] { return sem_timedwait(sem, &ts); }) == 0) return WaitResult::kOk;
  if (errno == ETIMEDOUT) return WaitResult::kTimedOut;
  *err = errno;
  return WaitResult::kFault;
#endif
}

// WaitFor for a JS thread: in a worker thread, in slices, ending (as a
// timeout) as soon as the worker is being terminated (StopProbe).
WaitResult WaitForOnThread(sem_t* sem, int64_t ms, int* err, const StopProbe& probe) {
  const int64_t deadline = ms < 0 ? -1 : NowMs() + ms;
  for (;;) {
    int64_t left = deadline < 0 ? -1 : deadline - NowMs();
    if (deadline >= 0 && left < 0) left = 0;
    int64_t step = probe.Slice(left);
    WaitResult r = WaitFor(sem, step, err);
    if (r != WaitResult::kTimedOut || step == left || probe.Stopping()) return r;
  }
}

Napi::Error ClosedError(Napi::Env env) {
  Napi::Error e = Napi::Error::New(env, "the semaphore handle is closed");
  e.Set("code", Napi::String::New(env, "ERR_MP_CLOSED"));
  return e;
}

// What a JS handle points to: an External, so recovering it is cheap (an
// ObjectWrap's napi_unwrap, or a type-tag check, is a private-symbol lookup
// of ~190 ns, most of the cost of a try-acquire). An External carries no type,
// so every handle argument is looked up in the environment's set of live
// handles: an External made by anyone else is refused, never dereferenced.
struct Handle {
  Sem* sem = nullptr;  // null once closed
  void Close() {
    if (sem != nullptr) {
      sem->Unref();
      sem = nullptr;
    }
  }
};

}  // namespace

// Per-environment state, never freed: waiter threads may hold jobs naming
// `waits` after the environment is gone (see async_wait.h).
struct SemState {
  std::unordered_set<const void*> handles;  // live Handles; JS thread only
  AsyncWaits waits{"pmp-sem-wait"};
};

namespace {

std::string NameArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "name must be a string");
  std::string name = info[i].As<Napi::String>().Utf8Value();
  if (name.find('\0') != std::string::npos) throw Napi::TypeError::New(info.Env(), "name must not contain NUL");
  return name;
}

Handle* HandleArg(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  void* p = nullptr;
  if (info.Length() > i && napi_get_value_external(env, info[i], &p) == napi_ok &&
      env.GetInstanceData<AddonData>()->sem->handles.count(p) != 0) {
    return static_cast<Handle*>(p);
  }
  throw Napi::TypeError::New(env, "handle must be a semaphore handle from semOpen");
}

// The handle argument; a closed handle throws instead of reaching sem_* calls.
Sem* SemArg(const Napi::CallbackInfo& info, size_t i) {
  Sem* sem = HandleArg(info, i)->sem;
  if (sem == nullptr) throw ClosedError(info.Env());
  return sem;
}

int64_t TimeoutArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "timeoutMs must be a number");
  double t = info[i].As<Napi::Number>().DoubleValue();
  if (t != t || t < 0 || t > 9.0e15) return -1;  // NaN, negative, huge: no limit
  return static_cast<int64_t>(t);
}

Napi::Value SemOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = NameArg(info, 0);
  bool create = info.Length() > 1 && info[1].ToBoolean();
  bool exclusive = info.Length() > 2 && info[2].ToBoolean();
  mode_t mode = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Uint32Value() & 0777 : 0600;
  double value = info.Length() > 4 && info[4].IsNumber() ? info[4].As<Napi::Number>().DoubleValue() : 0;
  if (!(value >= 0) || value > SEM_VALUE_MAX || value != static_cast<double>(static_cast<int64_t>(value))) {
    throw Napi::RangeError::New(env, "value must be an integer between 0 and SEM_VALUE_MAX");
  }
  int flags = (create ? O_CREAT : 0) | (create && exclusive ? O_EXCL : 0);
  sem_t* sem;
  do {
    sem = sem_open(name.c_str(), flags, mode, static_cast<unsigned>(value));
  } while (sem == SEM_FAILED && errno == EINTR);
  if (sem == SEM_FAILED) ThrowSystemError(env, errno, "sem_open", name);
#if defined(__linux__)
  // sem_open applies the umask to mode, and a semaphore has no fd to fchmod.
  // glibc keeps "/x" as /dev/shm/sem.x: only the creator (O_EXCL) sets the mode
  // it asked for, so that another user's program can open it when told to. On
  // a libc that stores it elsewhere this fails harmlessly and the umask stands.
  if (create && exclusive && name.size() > 1 && name[0] == '/') {
    chmod(("/dev/shm/sem." + name.substr(1)).c_str(), mode);
  }
#endif
  SemState* st = env.GetInstanceData<AddonData>()->sem;
  auto* h = new Handle();
  h->sem = new Sem();
  h->sem->sem = sem;
  Napi::External<Handle> handle;
  try {
    handle = Napi::External<Handle>::New(env, h, [st](Napi::Env, Handle* dead) {
      // Garbage-collected: a handle nobody closed closes here.
      st->handles.erase(dead);
      dead->Close();
      delete dead;
    });
  } catch (...) {
    h->Close();
    delete h;
    throw;
  }
  st->handles.insert(h);
  return handle;
}

Napi::Value SemClose(const Napi::CallbackInfo& info) {
  HandleArg(info, 0)->Close();
  return info.Env().Undefined();
}

Napi::Value SemTryWait(const Napi::CallbackInfo& info) {
  Sem* s = SemArg(info, 0);
  if (RetryEintr([&] { return sem_trywait(s->sem); }) == 0) return Napi::Boolean::New(info.Env(), true);
  if (errno == EAGAIN) return Napi::Boolean::New(info.Env(), false);
  ThrowSystemError(info.Env(), errno, "sem_trywait");
}

Napi::Value SemTimedWait(const Napi::CallbackInfo& info) {
  Sem* s = SemArg(info, 0);
  int64_t ms = TimeoutArg(info, 1);
  int err = 0;
  WaitResult r = WaitForOnThread(s->sem, ms, &err, StopProbe(info.Env()));
  if (r == WaitResult::kFault) ThrowSystemError(info.Env(), err, ms < 0 ? "sem_wait" : "sem_timedwait");
  return Napi::Boolean::New(info.Env(), r == WaitResult::kOk);
}

Napi::Value SemPost(const Napi::CallbackInfo& info) {
  Sem* s = SemArg(info, 0);
  if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "n must be a number");
  double n = info[1].As<Napi::Number>().DoubleValue();
  if (!(n >= 1) || n > SEM_VALUE_MAX) throw Napi::RangeError::New(info.Env(), "n must be between 1 and SEM_VALUE_MAX");
  // POSIX has no "post n": each post is one unit, and one waiter may run after
  // the first while we still post the rest, which is fine for a counter.
  for (int64_t i = 0; i < static_cast<int64_t>(n); i++) {
    if (sem_post(s->sem) != 0) ThrowSystemError(info.Env(), errno, "sem_post");
  }
  return info.Env().Undefined();
}

Napi::Value SemGetValue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Sem* s = SemArg(info, 0);
#if defined(__APPLE__)
  (void)s;
  Napi::Error e = Napi::Error::New(env, "sem_getvalue is not supported on macOS");
  e.Set("code", Napi::String::New(env, "ERR_MP_UNSUPPORTED"));
  throw e;
#else
  int v = 0;
  if (sem_getvalue(s->sem, &v) != 0) ThrowSystemError(env, errno, "sem_getvalue");
  // POSIX allows a negative value meaning "this many waiters"; glibc reports 0.
  return Napi::Number::New(env, v < 0 ? 0 : v);
#endif
}

Napi::Value SemUnlink(const Napi::CallbackInfo& info) {
  std::string name = NameArg(info, 0);
  if (sem_unlink(name.c_str()) != 0) ThrowSystemError(info.Env(), errno, "sem_unlink", name);
  return info.Env().Undefined();
}

// ---- async waits ----------------------------------------------------------------
// The plumbing (thread-safe function, pending jobs, handle, teardown) is
// async_wait.h's; here are the service that serves the waits, the cancel and
// the unit's ownership.

// Who owns a unit taken for a wait. A wait leaves its queue under the
// service's lock, either with a unit (kTaken) or without one (cancelled, timed
// out); after that every transition is a CAS, so the unit of a wait cancelled
// after the take is posted back exactly once, by whichever thread sees the
// cancel, without waiting for the JS thread: that thread may itself be blocked
// in acquireSync() on the same semaphore.
enum JobState : int {
  kWaiting,    // no unit yet
  kTaken,      // a unit was taken for it; it goes to the callback unless cancelled first
  kReturned,   // the taken unit was posted back: the callback reports 'cancelled'
  kDelivered,  // the callback received the unit
};

struct SemQueue;

struct SemJob : AsyncJob {
  Sem* sem = nullptr;  // one reference held for the job's whole life
  int64_t deadline_ns = -1;  // NowNs() clock; negative: none
  std::atomic<int> phase{kWaiting};
  WaitResult result = WaitResult::kOk;
  int err = 0;  // with kFault (sem_timedwait's) and kError (pthread_create's)

  // SemService's, under its lock: the queue it waits in (null once it left
  // it) and the links of that queue's list.
  SemQueue* queue = nullptr;
  SemJob* prev = nullptr;
  SemJob* next = nullptr;

  ~SemJob() override {
    if (sem != nullptr) sem->Unref();
  }

  void Begin() override;
  void Cancel() override;

  std::vector<napi_value> Settle(Napi::Env env) override {
    // From here the unit is the callback's: a cancel() after this is a no-op.
    int taken = kTaken;
    if (result == WaitResult::kOk && !phase.compare_exchange_strong(taken, kDelivered)) {
      result = WaitResult::kCancelled;  // kReturned: cancelled after the take, unit posted back
    }
    if (result == WaitResult::kFault || result == WaitResult::kError) {
      const char* call = result == WaitResult::kError ? "pthread_create" : "sem_timedwait";
      return {Napi::String::New(env, ResultName(result)), SystemError(env, err, call).Value()};
    }
    return {Napi::String::New(env, ResultName(result))};
  }

  // The environment is gone and nobody can take the unit: give it back (the
  // semaphore is still open: the job holds a reference).
  void Abandon() override { GiveBack(); }

  // Posts back the unit of a wait whose result nobody will receive (at most once).
  void GiveBack() {
    int taken = kTaken;
    if (phase.compare_exchange_strong(taken, kReturned)) sem_post(sem->sem);
  }
};

// The pending waits on one open semaphore, in FIFO order: a unit taken goes
// to the first of them. Scheduled (PollNode) while the poller owns it.
struct SemQueue : PollNode {
  Sem* sem = nullptr;  // a reference of its own
  SemJob* head = nullptr;
  SemJob* tail = nullptr;
  size_t count = 0;
};

// A server thread: sleeps in sem_timedwait on one queue's semaphore.
struct SemServer {
  ControlWord ctrl;  // wakes it when idle and given a queue
  SemQueue* queue = nullptr;
  bool running = false;
};

// How long a server sleeps in sem_timedwait before it looks at its queue
// again: a queue whose waits have all gone is let go within this (a unit taken
// meanwhile is posted back). sem_timedwait cannot be interrupted without a
// signal; deadlines are the poller's (it can be), so they are exact.
constexpr int64_t kSemSliceMs = 50;
// How many semaphores one tick of the poller may try (waiter_pool.h): a
// sem_trywait is an atomic in user space, ~0.1 us on a cold line.
constexpr size_t kSemPollBudget = 256;
constexpr int64_t kSemAwake = INT64_MIN;

// Every async semaphore wait of the process on a bounded number of threads:
// one server per semaphore with pending waits, while the budget lasts
// (waiter_pool.h, shared with the futex service); the rest, and every
// deadline, are served by one poller thread that tries those semaphores
// (sem_trywait) as its schedule says (waiter_pool.h: less often the longer
// one has given nothing, and a bounded number per tick) and ends each timed
// wait at its deadline (with one last sem_trywait, so a unit posted right
// then is not missed).
class SemService {
 public:
  static SemService& Get() {
    // Never destroyed: its detached threads use it until the process ends.
    static SemService* service = new SemService();
    return *service;
  }

  void Add(SemJob* j) {
    ControlWord* interrupt[2] = {nullptr, nullptr};
    {
      std::lock_guard<std::mutex> lock(mu_);
      int err = 0;
      if (j->deadline_ns >= 0 && !EnsurePoller(&err)) return Fail(j, err);
      auto it = queues_.find(j->sem);
      SemQueue* q;
      if (it != queues_.end()) {
        q = it->second;
      } else {
        q = new SemQueue();
        q->sem = j->sem;
        if (!Place(q, &interrupt[0], &err)) {
          delete q;
          return Fail(j, err);
        }
        j->sem->Ref();
        queues_.emplace(j->sem, q);
      }
      j->queue = q;
      j->prev = q->tail;
      j->next = nullptr;
      if (q->tail != nullptr) q->tail->next = j;
      else q->head = j;
      q->tail = j;
      q->count++;
      if (j->deadline_ns >= 0) {
        timed_.emplace(j->deadline_ns, j);
        if (Earlier(j->deadline_ns)) interrupt[1] = &poller_ctrl_;
      }
    }
    for (ControlWord* c : interrupt) {
      if (c != nullptr) c->Interrupt();
    }
  }

  // True if the wait was still queued (it has left now, without a unit).
  bool Remove(SemJob* j) {
    std::lock_guard<std::mutex> lock(mu_);
    SemQueue* q = j->queue;
    if (q == nullptr) return false;
    Unlink(j);  // a server lets go of its emptied queue itself
    DropIfPolledAndEmpty(q);
    return true;
  }

 private:
  // Under mu_: gives the new queue a server (an idle one, or a new one) or the
  // poller; false (with *err) if no thread can be had.
  bool Place(SemQueue* q, ControlWord** interrupt, int* err) {
    for (SemServer& s : servers_) {
      if (s.running && s.queue == nullptr) {
        s.queue = q;
        *interrupt = &s.ctrl;
        return true;
      }
    }
    if (ThreadBudget::TryTake()) {
      for (SemServer& s : servers_) {
        if (s.running) continue;
        s.running = true;
        s.queue = q;
        *err = StartThread(ServerMain, &s);
        if (*err == 0) return true;
        s.running = false;
        s.queue = nullptr;
        break;
      }
      ThreadBudget::Give();
    }
    if (!EnsurePoller(err)) return false;
    polled_.Add(q, NowNs());
    if (Earlier(q->poll_due)) *interrupt = &poller_ctrl_;
    return true;
  }

  // Under mu_: the poller runs (started now if need be); false with *err if it cannot.
  bool EnsurePoller(int* err) {
    if (poller_running_) return true;
    poller_running_ = true;
    poller_sleep_until_ = kSemAwake;
    *err = StartThread(PollerMain, this);
    if (*err != 0) poller_running_ = false;
    return *err == 0;
  }

  // Under mu_: whether the poller sleeps past t.
  bool Earlier(int64_t t) const {
    return poller_sleep_until_ != kSemAwake && (poller_sleep_until_ < 0 || t < poller_sleep_until_);
  }

  // Under mu_: the wait ends at once with kError (no thread for it).
  void Fail(SemJob* j, int err) {
    j->result = WaitResult::kError;
    j->err = err;
    j->waits->Report(j);
  }

  // Under mu_: takes j out of its queue (and the deadlines).
  void Unlink(SemJob* j) {
    SemQueue* q = j->queue;
    if (j->prev != nullptr) j->prev->next = j->next;
    else q->head = j->next;
    if (j->next != nullptr) j->next->prev = j->prev;
    else q->tail = j->prev;
    j->prev = j->next = nullptr;
    j->queue = nullptr;
    q->count--;
    if (j->deadline_ns >= 0) timed_.erase({j->deadline_ns, j});
  }

  // Under mu_, by the queue's owner: forgets a queue with no waits left.
  void Drop(SemQueue* q) {
    queues_.erase(q->sem);
    q->sem->Unref();
    delete q;
  }

  // Under mu_: a queue of the poller's (which uses it only under the lock) is
  // let go as soon as its last wait leaves, not at its next look.
  void DropIfPolledAndEmpty(SemQueue* q) {
    if (q->count != 0 || q->poll_list < 0) return;
    polled_.Remove(q);
    Drop(q);
  }

  // Under mu_: a unit was taken for q: its first wait gets it, or, if none is
  // left, it is posted back at once.
  void GiveUnit(SemQueue* q, std::vector<SemJob*>* done) {
    SemJob* j = q->head;
    if (j == nullptr) {
      sem_post(q->sem->sem);
      return;
    }
    Unlink(j);
    j->phase.store(kTaken);
    j->result = WaitResult::kOk;
    done->push_back(j);
  }

  // Under mu_: the semaphore failed (not a timeout): every wait on it ends.
  void FailQueue(SemQueue* q, int err, std::vector<SemJob*>* done) {
    while (q->head != nullptr) {
      SemJob* j = q->head;
      Unlink(j);
      j->result = WaitResult::kFault;
      j->err = err;
      done->push_back(j);
    }
  }

  static void Deliver(std::vector<SemJob*>* done) {
    for (SemJob* j : *done) j->waits->Report(j);
    done->clear();
  }

  static void* ServerMain(void* arg) {
    Get().Serve(static_cast<SemServer*>(arg));
    return nullptr;
  }

  static void* PollerMain(void* arg) {
    static_cast<SemService*>(arg)->Poll();
    return nullptr;
  }

  // A server: waits for units of its queue's semaphore, a slice at a time;
  // idle (no queue), waits for one for kIdleNs, then exits.
  void Serve(SemServer* s) {
    std::vector<SemJob*> done;
    std::unique_lock<std::mutex> lock(mu_);
    int64_t idle_since = NowNs();
    for (;;) {
      SemQueue* q = s->queue;
      if (q != nullptr && q->count == 0) {
        Drop(q);
        s->queue = q = nullptr;
        idle_since = NowNs();
      }
      if (q == nullptr) {
        if (NowNs() - idle_since >= kIdleNs) break;
        const uint32_t seen = s->ctrl.Load();
        lock.unlock();
        Deliver(&done);
        s->ctrl.Sleep(seen, idle_since + kIdleNs);
        lock.lock();
        continue;
      }
      sem_t* sem = q->sem->sem;  // mapped while q lives, and only this thread drops q
      lock.unlock();
      Deliver(&done);
      int err = 0;
      WaitResult r = WaitFor(sem, kSemSliceMs, &err);
      lock.lock();
      if (r == WaitResult::kOk) GiveUnit(q, &done);
      else if (r == WaitResult::kFault) FailQueue(q, err, &done);
    }
    s->running = false;
    ThreadBudget::Give();
    lock.unlock();
    Deliver(&done);
  }

  // The poller: ends timed waits at their deadline and tries the semaphores
  // of the queues it owns as its schedule says; exits after kIdleNs with neither.
  void Poll() {
    std::vector<SemJob*> done;
    std::unique_lock<std::mutex> lock(mu_);
    int64_t idle_since = NowNs();
    int64_t last_round = INT64_MIN / 2;
    for (;;) {
      const int64_t now = NowNs();
      while (!timed_.empty() && timed_.begin()->first <= now) {
        SemJob* j = timed_.begin()->second;
        SemQueue* q = j->queue;
        Unlink(j);
        if (RetryEintr([&] { return sem_trywait(q->sem->sem); }) == 0) {
          j->phase.store(kTaken);
          j->result = WaitResult::kOk;
        } else {
          j->result = WaitResult::kTimedOut;
        }
        done.push_back(j);
        DropIfPolledAndEmpty(q);
      }
      size_t tried = 0;
      for (PollNode* n; tried < kSemPollBudget && (n = polled_.TakeDue(now)) != nullptr; tried++) {
        SemQueue* q = static_cast<SemQueue*>(n);
        bool got = false;
        while (q->count > 0) {
          if (RetryEintr([&] { return sem_trywait(q->sem->sem); }) == 0) {
            GiveUnit(q, &done);
            got = true;
          } else {
            if (errno != EAGAIN) FailQueue(q, errno, &done);
            break;
          }
        }
        if (q->count == 0) {
          polled_.Remove(q);
          Drop(q);
        } else {
          polled_.Back(q, now, !got);
        }
      }
      if (tried > 0) last_round = now;
      int64_t until = polled_.NextDue();
      if (until >= 0 && until < last_round + kPollNs) until = last_round + kPollNs;
      if (!timed_.empty() && (until < 0 || timed_.begin()->first < until)) until = timed_.begin()->first;
      if (until >= 0) {
        idle_since = now;
      } else if (now - idle_since >= kIdleNs) {
        break;
      } else {
        until = idle_since + kIdleNs;
      }
      const uint32_t seen = poller_ctrl_.Load();
      poller_sleep_until_ = until;
      lock.unlock();
      Deliver(&done);
      poller_ctrl_.Sleep(seen, until);
      lock.lock();
      poller_sleep_until_ = kSemAwake;
    }
    poller_running_ = false;
    lock.unlock();
    Deliver(&done);
  }

  std::mutex mu_;
  std::unordered_map<Sem*, SemQueue*> queues_;
  std::set<std::pair<int64_t, SemJob*>> timed_;  // queued waits with a deadline
  SemServer servers_[kServerThreads];
  PollSchedule polled_;  // queues without a server
  ControlWord poller_ctrl_;
  int64_t poller_sleep_until_ = kSemAwake;
  bool poller_running_ = false;
};

void SemJob::Begin() { SemService::Get().Add(this); }

void SemJob::Cancel() {
  if (SemService::Get().Remove(this)) {
    result = WaitResult::kCancelled;
    waits->Report(this);
    return;
  }
  GiveBack();  // it left with a unit: the unit goes back unless the callback has it
}

Napi::Value SemWaitAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Sem* sem = SemArg(info, 0);
  int64_t timeout = TimeoutArg(info, 1);
  if (info.Length() < 3 || !info[2].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
  auto* data = env.GetInstanceData<AddonData>();
  auto job = std::make_unique<SemJob>();
  sem->Ref();
  job->sem = sem;
  job->deadline_ns = timeout < 0 || timeout > kNoDeadlineMs ? -1 : NowNs() + timeout * 1000000;
  return data->sem->waits.Start(env, data->sem_wait_handle_ctor, std::move(job), info[2].As<Napi::Function>());
}

}  // namespace

void InitSemaphore(Napi::Env env, Napi::Object exports, AddonData* data) {
  data->sem = new SemState();
  data->sem_wait_handle_ctor = Napi::Persistent(WaitHandle::Define(env, "SemWaitHandle"));
  exports.Set("semOpen", Napi::Function::New<SemOpen>(env, "semOpen"));
  exports.Set("semClose", Napi::Function::New<SemClose>(env, "semClose"));
  exports.Set("semTryWait", Napi::Function::New<SemTryWait>(env, "semTryWait"));
  exports.Set("semTimedWait", Napi::Function::New<SemTimedWait>(env, "semTimedWait"));
  exports.Set("semPost", Napi::Function::New<SemPost>(env, "semPost"));
  exports.Set("semGetValue", Napi::Function::New<SemGetValue>(env, "semGetValue"));
  exports.Set("semUnlink", Napi::Function::New<SemUnlink>(env, "semUnlink"));
  exports.Set("semWaitAsync", Napi::Function::New<SemWaitAsync>(env, "semWaitAsync"));
  exports.Set("semValueMax", Napi::Number::New(env, SEM_VALUE_MAX));
  exports.Set("semWaitsPoll", Napi::Boolean::New(env, WaitsPoll()));
}

}  // namespace pmp
