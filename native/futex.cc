// Wait/wake on a 32-bit word in shared memory: the kernel half of the locks in
// src/synchronize.ts, entered only when a primitive is contended.
//
//   futexWait(buffer, byteOffset, expected, timeoutMs) -> 'ok' | 'timed-out' | 'not-equal'
//       blocks the calling thread while the word equals `expected` (timeoutMs < 0: no limit)
//   futexWake(buffer, byteOffset, count) -> number of waiters woken
//   futexWaitAsync(buffer, byteOffset, expected, timeoutMs, callback) -> { cancel() }
//       the same wait on an addon-owned thread (never the libuv threadpool, which
//       four parked waits would starve); callback(result) runs on the JS thread
//       through a thread-safe function; result may also be 'cancelled'.
//
// Linux: futex(2) without FUTEX_PRIVATE_FLAG, because the word is shared between
// processes. macOS: __ulock_wait/__ulock_wake with the UL_COMPARE_AND_WAIT_SHARED
// operation (private API, stable since 10.12, used by libc++ and Rust's std).
#include <dlfcn.h>
#include <napi.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#elif defined(__APPLE__)
extern "C" int __ulock_wait(uint32_t operation, void* addr, uint64_t value, uint32_t timeout_us);
extern "C" int __ulock_wake(uint32_t operation, void* addr, uint64_t wake_value);
#define PMP_UL_COMPARE_AND_WAIT_SHARED 3
#define PMP_ULF_WAKE_ALL 0x00000100
#define PMP_ULF_NO_ERRNO 0x01000000
#endif

#include "addon.h"
#include "async_wait.h"
#include "errors.h"

namespace pmp {

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One kernel wait of at most timeout_ms (negative: unbounded). A signal or a
// spurious wake-up is reported as kOk: every caller re-checks its word.
WaitResult WaitOnce(int32_t* addr, int32_t expected, int64_t timeout_ms) {
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
  // untouched, and FutexWait reports errno: set it.
  errno = -r;
  return WaitResult::kFault;
#else
#error "futex.cc: no wait-on-address primitive for this platform"
#endif
}

// Waits until woken, the word differs, or the deadline passes; signals do not
// shorten or lengthen the wait (the EINTR loop recomputes what is left).
WaitResult Wait(int32_t* addr, int32_t expected, int64_t timeout_ms, const std::atomic<bool>* cancelled = nullptr,
                int64_t slice_ms = -1) {
  const int64_t deadline = timeout_ms < 0 ? -1 : NowMs() + timeout_ms;
  for (;;) {
    if (cancelled != nullptr && cancelled->load()) return WaitResult::kCancelled;
    int64_t left = deadline < 0 ? -1 : deadline - NowMs();
    if (deadline >= 0 && left <= 0) return WaitResult::kTimedOut;
    int64_t step = left;
    if (slice_ms >= 0 && (step < 0 || step > slice_ms)) step = slice_ms;
    WaitResult r = WaitOnce(addr, expected, step);
    if (r == WaitResult::kTimedOut) {
      if (step == left) return r;
      continue;  // a slice ended: look at the cancel flag again
    }
    if (r == WaitResult::kOk && cancelled != nullptr && cancelled->load()) return WaitResult::kCancelled;
    return r;
  }
}

int Wake(int32_t* addr, int count) {
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
  WaitResult r = Wait(addr, expected, timeout);
  if (r == WaitResult::kFault) ThrowSystemError(info.Env(), errno == 0 ? EFAULT : errno, "futex_wait");
  return Napi::String::New(info.Env(), ResultName(r));
}

Napi::Value FutexWake(const Napi::CallbackInfo& info) {
  int32_t* addr = WordArg(info);
  if (info.Length() < 3 || !info[2].IsNumber()) throw Napi::TypeError::New(info.Env(), "count must be a number");
  double c = info[2].As<Napi::Number>().DoubleValue();
  int count = !(c >= 1) ? 0 : (c >= INT_MAX ? INT_MAX : static_cast<int>(c));
  if (count == 0) return Napi::Number::New(info.Env(), 0);
  int r = Wake(addr, count);
  if (r < 0) ThrowSystemError(info.Env(), -r, "futex_wake");
  return Napi::Number::New(info.Env(), r);
}

// ---- async waits on addon-owned threads ------------------------------------
// The plumbing (thread-safe function, pending jobs, handle, teardown) is
// async_wait.h's; here are the wait and the cancel.

struct FutexJob : AsyncJob {
  int32_t* addr = nullptr;
  int32_t expected = 0;
  int64_t timeout_ms = -1;
  std::atomic<bool> cancelled{false};
  WaitResult result = WaitResult::kOk;
  // Keeps the mapping alive while a thread waits on an address inside it.
  Napi::Reference<Napi::ArrayBuffer> buffer;

  void Run() override {
    // The 250 ms slice bounds how long a cancel can go unnoticed if it lands
    // between the flag check and the kernel wait.
    result = Wait(addr, expected, timeout_ms, &cancelled, 250);
  }
  void Cancel() override {
    if (!cancelled.exchange(true)) {
      // Wakes every waiter on the word, in every process; the others re-check
      // their condition and wait again, which is correct, only slower.
      Wake(addr, INT_MAX);
    }
  }
  std::vector<napi_value> Settle(Napi::Env env) override {
    buffer.Reset();
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
  job->timeout_ms = timeout;
  job->buffer = Napi::Persistent(info[0].As<Napi::ArrayBuffer>());
  return data->futex->Start(env, data->futex_wait_handle_ctor, std::move(job), info[4].As<Napi::Function>());
}

}  // namespace

// Waiter threads outlive the environment that started them, and Node unloads
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
