// Wait/wake on a 32-bit word in shared memory: the kernel half of the locks in
// src/synchronize.ts, entered only when a primitive is contended.
//
//   futexWait(buffer, byteOffset, expected, timeoutMs) -> 'ok' | 'timed-out' | 'not-equal'
//       blocks the calling thread while the word equals `expected` (timeoutMs < 0: no
//       limit); in a worker thread it ends as soon as the worker is being terminated
//   futexWake(buffer, byteOffset, count) -> number of waiters woken
//   futexWaitAsync(buffer, byteOffset, expected, timeoutMs, callback) -> { cancel() }
//       the same wait, served by futex_service.cc's bounded set of threads (never
//       the libuv threadpool); callback(result, error?) runs on the JS thread through
//       a thread-safe function; result may also be 'cancelled', 'fault' (the word's
//       memory went away) or 'error' (no thread could serve it: error says why).
//
// Linux: futex(2) without FUTEX_PRIVATE_FLAG, because the word is shared between
// processes. macOS: __ulock_wait/__ulock_wake with the UL_COMPARE_AND_WAIT_SHARED
// operation (private API, stable since 10.12, used by libc++ and Rust's std).
#include <dlfcn.h>
#include <napi.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "addon.h"
#include "async_wait.h"
#include "errors.h"
#include "futex_service.h"
#include "util.h"

namespace pmp {

namespace {

// Waits until woken, the word differs, or the deadline passes; signals do not
// shorten or lengthen the wait (the loop recomputes what is left). In a worker
// thread it sleeps in slices and returns as soon as the worker is being
// terminated (StopProbe; what it returns then is never seen).
WaitResult Wait(int32_t* addr, int32_t expected, int64_t timeout_ms, const StopProbe& probe) {
  const int64_t deadline = timeout_ms < 0 ? -1 : NowMs() + timeout_ms;
  for (;;) {
    int64_t left = deadline < 0 ? -1 : deadline - NowMs();
    if (deadline >= 0 && left <= 0) return WaitResult::kTimedOut;
    int64_t step = probe.Slice(left);
    WaitResult r = FutexWaitOnce(addr, expected, step);
    if (r != WaitResult::kTimedOut || step == left) return r;
    if (probe.Stopping()) return WaitResult::kOk;  // a slice ended, the worker is being terminated
  }
}

// Validates (buffer, byteOffset) and returns the word's address.
int32_t* WordArg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "buffer must be an ArrayBuffer");
  if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "byteOffset must be a number");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  double off = info[1].As<Napi::Number>().DoubleValue();
  if (ab.Data() == nullptr || ab.ByteLength() < 4) throw Napi::RangeError::New(env, "buffer is detached or too small");
  if (!(off >= 0) || off > static_cast<double>(ab.ByteLength() - 4) || static_cast<double>(static_cast<size_t>(off)) != off ||
      (static_cast<size_t>(off) % 4) != 0) {
    throw Napi::RangeError::New(env, "byteOffset must be a multiple of 4 inside the buffer");
  }
  return reinterpret_cast<int32_t*>(static_cast<char*>(ab.Data()) + static_cast<size_t>(off));
}

int64_t TimeoutArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "timeoutMs must be a number");
  double t = info[i].As<Napi::Number>().DoubleValue();
  if (t != t || t < 0 || t > 9.0e15) return -1;  // NaN, negative, huge: no limit
  return static_cast<int64_t>(t);
}

int32_t ExpectedArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "expected must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

Napi::Value FutexWait(const Napi::CallbackInfo& info) {
  int32_t* addr = WordArg(info);
  int32_t expected = ExpectedArg(info, 2);
  int64_t timeout = TimeoutArg(info, 3);
  WaitResult r = Wait(addr, expected, timeout, StopProbe(info.Env()));
  if (r == WaitResult::kFault) ThrowSystemError(info.Env(), errno == 0 ? EFAULT : errno, "futex_wait");
  return Napi::String::New(info.Env(), ResultName(r));
}

Napi::Value FutexWake(const Napi::CallbackInfo& info) {
  int32_t* addr = WordArg(info);
  if (info.Length() < 3 || !info[2].IsNumber()) throw Napi::TypeError::New(info.Env(), "count must be a number");
  double c = info[2].As<Napi::Number>().DoubleValue();
  int count = !(c >= 1) ? 0 : (c >= INT_MAX ? INT_MAX : static_cast<int>(c));
  if (count == 0) return Napi::Number::New(info.Env(), 0);
  int local = FutexServiceWakeLocal(addr, count);
  if (local == count) return Napi::Number::New(info.Env(), local);
  int r = FutexWakeWord(addr, count - local);
  if (r < 0) ThrowSystemError(info.Env(), -r, "futex_wake");
  return Napi::Number::New(info.Env(), local + r);
}

// ---- async waits ------------------------------------------------------------
// The wait is futex_service.cc's; the plumbing (thread-safe function, pending
// jobs, handle, teardown) is async_wait.h's. Here is the JS side.

struct FutexJob : FutexWaiter {
  // Keeps the mapping alive while the service waits on an address inside it
  // (unless close() unmaps it: the kernel then answers EFAULT, 'fault').
  Napi::Reference<Napi::ArrayBuffer> buffer;

  // Set by whichever comes first of the delivery, a cancel after the wait
  // ended, and the end of the environment (FutexServiceLetGo, once).
  std::atomic<bool> let_go{false};

  void Begin() override { FutexServiceAdd(this); }
  void Cancel() override {
    // The service interrupts its own thread if it must: nothing else waiting
    // on the word, in this process or another, is disturbed.
    if (FutexServiceRemove(this)) {
      result = WaitResult::kCancelled;
      waits->Report(this);
      return;
    }
    // It has ended, and its result, on its way, will not be looked at.
    LetGo(false, true);
  }
  // Reported while the environment goes away, maybe under the AsyncWaits lock.
  void Abandon() override { LetGo(false, false); }
  void LetGo(bool received, bool may_lock) {
    if (!let_go.exchange(true)) FutexServiceLetGo(this, received, may_lock);
  }
  std::vector<napi_value> Settle(Napi::Env env) override {
    LetGo(true, true);
    buffer.Reset();
    if (result == WaitResult::kError) {
      return {Napi::String::New(env, ResultName(result)), SystemError(env, err, "pthread_create").Value()};
    }
    return {Napi::String::New(env, ResultName(result))};
  }
};

Napi::Value FutexWaitAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t* addr = WordArg(info);
  int32_t expected = ExpectedArg(info, 2);
  int64_t timeout = TimeoutArg(info, 3);
  if (info.Length() < 5 || !info[4].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
  auto* data = env.GetInstanceData<AddonData>();
  if (data->futex == nullptr) data->futex = new AsyncWaits("pmp-futex-wait");
  auto job = std::make_unique<FutexJob>();
  job->addr = addr;
  job->expected = expected;
  // Beyond a few decades a deadline cannot come: none (and no overflow).
  job->deadline_ns = timeout < 0 || timeout > kNoDeadlineMs ? -1 : NowNs() + timeout * 1000000;
  job->buffer = Napi::Persistent(info[0].As<Napi::ArrayBuffer>());
  return data->futex->Start(env, data->futex_wait_handle_ctor, std::move(job), info[4].As<Napi::Function>());
}

}  // namespace

// Service threads outlive the environment that started them, and Node unloads
// an addon when the last worker that loaded it exits: keep this library mapped
// for the life of the process, or those threads would return into unmapped code.
static void PinLibrary() {
  static std::once_flag once;
  std::call_once(once, [] {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&PinLibrary), &info) != 0 && info.dli_fname != nullptr) {
      dlopen(info.dli_fname, RTLD_LAZY | RTLD_NODELETE | RTLD_NOLOAD);
    }
  });
}

void InitFutex(Napi::Env env, Napi::Object exports, AddonData* data) {
  PinLibrary();
  exports.Set("futexWait", Napi::Function::New<FutexWait>(env, "futexWait"));
  exports.Set("futexWake", Napi::Function::New<FutexWake>(env, "futexWake"));
  exports.Set("futexWaitAsync", Napi::Function::New<FutexWaitAsync>(env, "futexWaitAsync"));
  data->futex_wait_handle_ctor = Napi::Persistent(WaitHandle::Define(env, "FutexWaitHandle"));
}

}  // namespace pmp
