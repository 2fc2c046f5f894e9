// The plumbing of an async wait that a service thread serves (futex_service.cc,
// semaphore.cc) and that reports back to JS: futexWaitAsync and semWaitAsync.
// A facility supplies the job: how the wait starts, what cancel() does, and
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

namespace pmp {

// How a wait ended, in both facilities; ResultName is the string the JS side
// receives and matches on (kNotEqual is the futex's only). kError: the wait
// could not be served (no thread could be started for it); the callback gets
// a system error as its second argument.
enum class WaitResult { kOk, kTimedOut, kNotEqual, kCancelled, kFault, kError };

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
    case WaitResult::kError:
      return "error";
    default:
      return "fault";
  }
}

class AsyncWaits;

// One wait. Held twice: by its service until its result reaches the JS
// thread, and by the JS handle until that is collected.
struct AsyncJob {
  virtual ~AsyncJob() = default;
  // JS thread: hands the wait to its service, which calls waits->Report(this)
  // once when it ends, from its own thread or, failing at once, from this one.
  virtual void Begin() = 0;
  // JS thread, from cancel() or the environment's teardown, maybe while the
  // service is ending the wait: if the service still had it, it is reported
  // now as cancelled.
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
  std::atomic<int> refs{2};  // the service's side and the JS handle
};

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
// function made on first use (one per wait, a uv_async handle each, cost more
// than the wait's own round trip). Finished jobs queue in `ready_` and one call
// of the function delivers all that are queued: 40,000 waits ended by one
// Event.set() cost one wake-up of the loop, not 40,000. It keeps the loop
// alive only while waits are pending, like a timer would.
//
// Never freed: service threads may still report jobs naming it after the
// environment is gone.
//
// Teardown: Node deletes the thread-safe function with its environment, even
// while other threads hold it, so services call it only under `mu_` and only
// while `alive_`; the environment's cleanup hook (which runs before the
// function's own, having been added after it) clears `alive_` under `mu_`.
class AsyncWaits {
 public:
  explicit AsyncWaits(const char* resource_name) : resource_name_(resource_name) {}

  // JS thread: starts the job and returns its handle, made with `handle_ctor`
  // (a WaitHandle class); callback receives job->Settle().
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
    j->Begin();
    return handle;
  }

  // Any thread, once per job: its result is ready. It goes to the JS thread
  // or, when the environment is gone, is abandoned and leaked: its references
  // cannot be released off the JS thread, nor after teardown.
  void Report(AsyncJob* job) {
    std::lock_guard<std::mutex> guard(mu_);
    if (!alive_) {
      job->Abandon();
      return;
    }
    ready_.push_back(job);
    if (ready_.size() == 1 && tsfn_.NonBlockingCall(this) != napi_ok) {
      // The function is closing with its environment.
      alive_ = false;
      for (AsyncJob* j : ready_) j->Abandon();
      ready_.clear();
    }
  }

 private:
  // JS thread: delivers every finished job. An exception from one callback
  // does not cost the others their results; the first is rethrown after.
  static void Drain(Napi::Env env, Napi::Function, void*, AsyncWaits* self) {
    std::vector<AsyncJob*> batch;
    {
      std::lock_guard<std::mutex> guard(self->mu_);
      batch.swap(self->ready_);
    }
    if (env == nullptr || self->closed_) {
      // The environment is being torn down: the jobs' references cannot be
      // released any more, so they are leaked rather than freed.
      for (AsyncJob* job : batch) job->Abandon();
      return;
    }
    Napi::Error first;
    bool failed = false;
    for (AsyncJob* job : batch) {
      Napi::HandleScope scope(env);
      self->jobs_.erase(job);
      if (--self->pending_ == 0) self->tsfn_.Unref(env);
      Napi::FunctionReference cb = std::move(job->callback);
      std::vector<napi_value> args = job->Settle(env);
      job->Unref();
      try {
        cb.Call(args);
      } catch (const Napi::Error& e) {
        if (!failed) first = e;
        failed = true;
      }
    }
    if (failed) throw first;
  }

  using Tsfn = Napi::TypedThreadSafeFunction<void, AsyncWaits, Drain>;

  // JS thread, the environment ending with waits pending: end them, so their
  // services let go of what may never come (a semaphore unit taken for one is
  // posted back).
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
  bool alive_ = true;                   // under mu_
  std::vector<AsyncJob*> ready_;        // finished, not yet delivered; under mu_
  size_t pending_ = 0;                  // JS thread only
  bool closed_ = false;                 // JS thread only
  std::unordered_set<AsyncJob*> jobs_;  // pending jobs; JS thread only
};

}  // namespace pmp

#endif  // PMP_ASYNC_WAIT_H_
