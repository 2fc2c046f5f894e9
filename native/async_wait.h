// The plumbing of a wait that runs on a pooled addon thread (waiter_pool.h) and
// reports back to JS: futexWaitAsync (futex.cc) and semWaitAsync (semaphore.cc).
// A facility supplies only the job: the wait itself, what cancel() does, and
// what a result means; this file owns the thread-safe function, the set of
// pending jobs, the JS handle with its cancel(), and teardown.
#ifndef PMP_ASYNC_WAIT_H_
#define PMP_ASYNC_WAIT_H_

#include <napi.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <unordered_set>
#include <utility>
#include <vector>

#include "waiter_pool.h"

namespace pmp {

// How a wait ended, in both facilities; ResultName is the string the JS side
// receives and matches on (kNotEqual is futex.cc's only).
enum class WaitResult { kOk, kTimedOut, kNotEqual, kCancelled, kFault };

inline const char* ResultName(WaitResult r) {
  switch (r) {
    case WaitResult::kOk:
      return "ok";
    case WaitResult::kTimedOut:
      return "timed-out";
    case WaitResult::kNotEqual:
      return "not-equal";
    case WaitResult::kCancelled:
      return "cancelled";
    default:
      return "fault";
  }
}

class AsyncWaits;

// One wait. Held twice: by the pool thread until its result reaches the JS
// thread, and by the JS handle until that is collected.
struct AsyncJob {
  virtual ~AsyncJob() = default;
  // Pool thread: the wait itself; the job keeps its result.
  virtual void Run() = 0;
  // JS thread, from cancel() or the environment's teardown, maybe while Run()
  // is still waiting: makes Run() return soon.
  virtual void Cancel() = 0;
  // JS thread, as the result is delivered: the callback's arguments. Also where
  // the job lets go of JS references it no longer needs.
  virtual std::vector<napi_value> Settle(Napi::Env env) = 0;
  // Any thread: the result will never be delivered (the environment is gone).
  virtual void Abandon() {}

  void Unref() {
    if (--refs == 0) delete this;
  }

  AsyncWaits* waits = nullptr;
  Napi::FunctionReference callback;
  std::atomic<int> refs{2};  // the waiter thread's side and the JS handle
};

void CallAsyncJs(Napi::Env env, Napi::Function, void*, AsyncJob* job);

// The JS handle of one wait; its only method is cancel(). Each facility
// defines it under its own class name (FutexWaitHandle, SemWaitHandle).
class WaitHandle : public Napi::ObjectWrap<WaitHandle> {
 public:
  static Napi::Function Define(Napi::Env env, const char* class_name) {
    return DefineClass(env, class_name, {InstanceMethod<&WaitHandle::Cancel>("cancel")});
  }
  explicit WaitHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<WaitHandle>(info) {}
  ~WaitHandle() override {
    if (job_ != nullptr) job_->Unref();
  }
  void Attach(AsyncJob* job) { job_ = job; }

 private:
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    if (job_ != nullptr) job_->Cancel();
    return info.Env().Undefined();
  }
  AsyncJob* job_ = nullptr;
};

// The async waits of one kind in one environment, with one thread-safe
// function made on first use: creating one per wait (a uv_async handle each)
// cost more than the wait's own round trip. It keeps the loop alive only while
// waits are pending, like a timer would.
//
// Never freed: waiter threads may still hold jobs naming it after the
// environment is gone.
//
// Teardown: Node deletes the thread-safe function with its environment, even
// while other threads hold it, so waiter threads call it only under `mu_` and
// only while `alive_`; the environment's cleanup hook (which runs before the
// function's own, having been added after it) clears `alive_` under `mu_`.
class AsyncWaits {
 public:
  explicit AsyncWaits(const char* resource_name) : resource_name_(resource_name) {}

  // JS thread: hands the job to a pool thread and returns its handle, made
  // with `handle_ctor` (a WaitHandle class); callback receives job->Settle().
  Napi::Object Start(Napi::Env env, const Napi::FunctionReference& handle_ctor, std::unique_ptr<AsyncJob> job,
                     Napi::Function callback) {
    if (!has_tsfn_) {
      tsfn_ = Tsfn::New(env, resource_name_, 0, 1);
      tsfn_.Unref(env);
      has_tsfn_ = true;
      // Added after the thread-safe function, so it runs before that is torn down.
      napi_add_env_cleanup_hook(env, Cleanup, this);
    }
    Napi::Object handle = handle_ctor.New({});
    job->waits = this;
    job->callback = Napi::Persistent(callback);
    AsyncJob* j = job.release();
    WaitHandle::Unwrap(handle)->Attach(j);
    jobs_.insert(j);
    if (pending_++ == 0) tsfn_.Ref(env);
    WaiterPool::Get().Submit([j] {
      j->Run();
      j->waits->Report(j);
    });
    return handle;
  }

 private:
  friend void CallAsyncJs(Napi::Env env, Napi::Function, void*, AsyncJob* job);
  using Tsfn = Napi::TypedThreadSafeFunction<void, AsyncJob, CallAsyncJs>;

  // Pool thread: the finished job goes to the JS thread, or, when the
  // environment is gone, is abandoned and leaked: its references cannot be
  // released off the JS thread, nor after teardown.
  void Report(AsyncJob* job) {
    std::lock_guard<std::mutex> guard(mu_);
    if (!(alive_ && tsfn_.NonBlockingCall(job) == napi_ok)) job->Abandon();
  }

  // JS thread, the environment ending with waits pending: end them, so their
  // threads go back to the pool instead of waiting for what may never come.
  static void Cleanup(void* arg) {
    auto* self = static_cast<AsyncWaits*>(arg);
    {
      std::lock_guard<std::mutex> guard(self->mu_);
      self->alive_ = false;
    }
    self->closed_ = true;
    for (AsyncJob* job : self->jobs_) job->Cancel();
    self->jobs_.clear();
  }

  const char* resource_name_;
  Tsfn tsfn_;
  bool has_tsfn_ = false;
  std::mutex mu_;
  bool alive_ = true;
  size_t pending_ = 0;                  // JS thread only
  bool closed_ = false;                 // JS thread only
  std::unordered_set<AsyncJob*> jobs_;  // pending jobs; JS thread only
};

inline void CallAsyncJs(Napi::Env env, Napi::Function, void*, AsyncJob* job) {
  AsyncWaits* w = job->waits;
  if (env == nullptr || w->closed_) {
    // The environment is being torn down: the job's references cannot be
    // released any more, so it is leaked rather than freed.
    job->Abandon();
    return;
  }
  w->jobs_.erase(job);
  if (--w->pending_ == 0) w->tsfn_.Unref(env);
  Napi::FunctionReference cb = std::move(job->callback);
  std::vector<napi_value> args = job->Settle(env);
  job->Unref();
  cb.Call(args);
}

}  // namespace pmp

#endif  // PMP_ASYNC_WAIT_H_
