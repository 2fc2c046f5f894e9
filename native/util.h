// Small helpers shared by the facilities: the monotonic clock, and the probe
// that lets a blocking call made from a worker thread end when that worker is
// being terminated (worker.terminate(), or the process exiting).
#ifndef PMP_UTIL_H_
#define PMP_UTIL_H_

#include <node_api.h>
#include <poll.h>
#include <sys/wait.h>
#include <time.h>
#include <uv.h>

#include <cerrno>
#include <climits>
#include <cstdint>

namespace pmp {

inline int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline int64_t NowMs() { return NowNs() / 1000000; }

// A waitpid() status as this package reports it: the exit code, or -signo for
// a death by signal (CPython's rule).
inline int ExitCodeFromStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

// A timeout longer than this (about 30 years) is treated as none: its deadline
// in NowNs() nanoseconds would overflow.
constexpr int64_t kNoDeadlineMs = 1'000'000'000'000;

// A worker thread blocked in a native call cannot be terminated: V8 ends its JS
// only when the call returns. So a blocking call made from a worker sleeps in
// slices of at most kSliceMs and, between two, asks whether the environment is
// stopping; if so it returns at once (whatever it returns, the worker's JS does
// not run on: V8 unwinds it). The main thread sleeps unsliced: nothing can
// terminate it from outside, and process.exit() runs on it.
//
// The signal: Worker::Exit (terminate(), and the main thread stopping its
// workers before it exits) sets the environment's atomic is_stopping flag from
// the other thread, and from then on every N-API call that opens with
// NAPI_PREAMBLE refuses to run with napi_pending_exception (napi_cannot_run_js
// for modules built for N-API 10+), because can_call_into_js() reads that flag.
// napi_unwrap is such a call and runs no JS: on any value it answers
// napi_invalid_arg (not a wrapped object) while the environment lives, and the
// refusal once it is stopping. test/waits.test.ts checks this on every call
// site (a terminated worker's blocking calls return within a slice).
class StopProbe {
 public:
  static constexpr int64_t kSliceMs = 10;

  explicit StopProbe(napi_env env) : env_(env) {
    uv_loop_t* loop = nullptr;
    sliced_ = napi_get_uv_event_loop(env, &loop) == napi_ok && loop != uv_default_loop();
    if (sliced_ && napi_get_undefined(env, &value_) != napi_ok) sliced_ = false;
  }

  // Whether this thread's waits are sliced (a worker thread).
  bool sliced() const { return sliced_; }

  // The longest the next sleep may last: left_ms (negative: no limit) on the
  // main thread, at most kSliceMs in a worker.
  int64_t Slice(int64_t left_ms) const {
    if (!sliced_) return left_ms;
    return left_ms < 0 || left_ms > kSliceMs ? kSliceMs : left_ms;
  }

  // Whether the environment is being stopped; always false on the main thread.
  bool Stopping() const {
    if (!sliced_) return false;
    void* unused = nullptr;
    napi_status s = napi_unwrap(env_, value_, &unused);
    return s == napi_pending_exception || static_cast<int>(s) == kCannotRunJs;
  }

 private:
  static constexpr int kCannotRunJs = 23;  // napi_cannot_run_js (N-API 10)
  napi_env env_;
  napi_value value_ = nullptr;
  bool sliced_ = false;
};

// poll(2) on one fd for up to timeout_ms (negative: no limit), signals not
// counting; in a worker thread in StopProbe slices. 0 when the time ran out or
// the worker is being terminated (probe.Stopping() says which).
inline int PollOne(struct pollfd* p, int64_t timeout_ms, const StopProbe& probe) {
  const int64_t deadline = timeout_ms < 0 ? -1 : NowMs() + timeout_ms;
  for (;;) {
    int64_t left = deadline < 0 ? -1 : deadline - NowMs();
    if (deadline >= 0 && left < 0) left = 0;
    int64_t step = probe.Slice(left);
    int r = poll(p, 1, step < 0 ? -1 : (step > INT_MAX ? INT_MAX : static_cast<int>(step)));
    if (r < 0 && errno == EINTR) continue;
    if (r != 0 || step == left || probe.Stopping()) return r;
  }
}

}  // namespace pmp

#endif  // PMP_UTIL_H_
