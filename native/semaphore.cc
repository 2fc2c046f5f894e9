// POSIX named semaphores, syscall-shaped: the object C and Python programs can
// open by name (sem_open("/name", 0)) to share a count with us. Policy (names,
// who creates, bounded checks) is src/posix-semaphore.ts's.
//
//   semOpen(name, create, exclusive, mode, value) -> handle     (sem_open)
//   semClose(handle)             idempotent; later calls with the handle throw ERR_MP_CLOSED
//   semTryWait(handle) -> bool   (sem_trywait; false when the value is 0)
//   semTimedWait(handle, ms) -> bool   blocks this thread; ms < 0: no limit; false on timeout
//   semPost(handle, n)           n x sem_post
//   semGetValue(handle) -> n     (macOS has no sem_getvalue: throws ERR_MP_UNSUPPORTED)
//   semUnlink(name)
//   semWaitAsync(handle, ms, callback) -> { cancel() }
//       the wait on an addon-owned thread (never the libuv threadpool, which a
//       few parked waits would starve); callback(result, error?) runs on the JS
//       thread, result 'ok' | 'timed-out' | 'cancelled' | 'fault'.
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
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "addon.h"
#include "async_wait.h"
#include "errors.h"

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

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

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
  WaitResult r = WaitFor(s->sem, ms, &err);
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

// ---- async waits on addon-owned threads --------------------------------------
// The plumbing (thread-safe function, pending jobs, handle, teardown) is
// async_wait.h's; here are the wait, the cancel and the unit's ownership.

// Who owns a unit the waiter thread took. Every transition is a CAS, so the
// unit of a cancelled wait is posted back exactly once, by whichever thread
// sees the cancel second, without waiting for the JS thread: that thread may
// itself be blocked in acquireSync() on the same semaphore.
enum JobState : int {
  kWaiting,    // no unit taken, not cancelled
  kCancelled,  // cancelled before a unit was taken: the thread gives back what it takes
  kTaken,      // the thread took a unit; it goes to the callback unless cancelled first
  kReturned,   // a taken unit was posted back: the callback reports 'cancelled'
  kDelivered,  // the callback received the unit
};

// A cancel is noticed within one slice (a thread blocked in sem_timedwait
// cannot be woken without a signal); a unit taken meanwhile is posted back.
constexpr int64_t kSliceMs = 100;

struct SemJob : AsyncJob {
  Sem* sem = nullptr;  // one reference held for the job's whole life
  int64_t timeout_ms = -1;
  std::atomic<int> phase{kWaiting};
  WaitResult result = WaitResult::kOk;
  int err = 0;

  ~SemJob() override {
    if (sem != nullptr) sem->Unref();
  }

  void Run() override {
    result = WaitSliced();
    if (result == WaitResult::kOk) {
      int waiting = kWaiting;
      if (!phase.compare_exchange_strong(waiting, kTaken)) {
        sem_post(sem->sem);  // cancelled while we waited: not ours to keep
        result = WaitResult::kCancelled;
      }
    }
  }

  void Cancel() override {
    int waiting = kWaiting;
    if (!phase.compare_exchange_strong(waiting, kCancelled)) GiveBack();
  }

  std::vector<napi_value> Settle(Napi::Env env) override {
    // From here the unit is the callback's: a cancel() after this is a no-op.
    int taken = kTaken;
    if (result == WaitResult::kOk && !phase.compare_exchange_strong(taken, kDelivered)) {
      result = WaitResult::kCancelled;  // kReturned: cancelled after the take, unit posted back
    }
    if (result == WaitResult::kFault) {
      return {Napi::String::New(env, ResultName(result)), SystemError(env, err, "sem_timedwait").Value()};
    }
    return {Napi::String::New(env, ResultName(result))};
  }

  // The environment is gone and nobody can take the unit: give it back (the
  // semaphore is still open: the job holds a reference).
  void Abandon() override { GiveBack(); }

 private:
  // Posts back the unit of a wait whose result nobody will receive (at most once).
  void GiveBack() {
    int taken = kTaken;
    if (phase.compare_exchange_strong(taken, kReturned)) sem_post(sem->sem);
  }

  WaitResult WaitSliced() {
    const int64_t deadline = timeout_ms < 0 ? -1 : NowMs() + timeout_ms;
    for (;;) {
      if (phase.load() == kCancelled) return WaitResult::kCancelled;
      int64_t left = deadline < 0 ? kSliceMs : deadline - NowMs();
      if (left <= 0) {
        // One last try: a unit posted right at the deadline is not missed.
        return sem_trywait(sem->sem) == 0 ? WaitResult::kOk : WaitResult::kTimedOut;
      }
      WaitResult r = WaitFor(sem->sem, left < kSliceMs ? left : kSliceMs, &err);
      if (r != WaitResult::kTimedOut) return r;
    }
  }
};

Napi::Value SemWaitAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Sem* sem = SemArg(info, 0);
  int64_t timeout = TimeoutArg(info, 1);
  if (info.Length() < 3 || !info[2].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
  auto* data = env.GetInstanceData<AddonData>();
  auto job = std::make_unique<SemJob>();
  sem->Ref();
  job->sem = sem;
  job->timeout_ms = timeout;
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
