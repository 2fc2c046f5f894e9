// Threads for waits that may block without limit (a futex wait, a sem_wait):
// they must not sit on the libuv threadpool, where four of them would starve
// fs and dns. A thread that finished a job takes the next one or, idle for a
// while, exits. Jobs never queue behind a busy thread (each may wait without
// limit), so a new thread starts whenever none is idle. One pool serves
// futex.cc and semaphore.cc.
#ifndef PMP_WAITER_POOL_H_
#define PMP_WAITER_POOL_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

namespace pmp {

class WaiterPool {
 public:
  // Never destroyed: its detached threads use it until the process ends. They
  // never return into unmapped code because InitFutex (always run, see
  // addon.cc) pins this library for the life of the process.
  static WaiterPool& Get() {
    static WaiterPool* pool = new WaiterPool();
    return *pool;
  }

  void Submit(std::function<void()> job) {
    std::unique_lock<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
    if (idle_ > static_cast<int>(jobs_.size()) - 1) {
      cv_.notify_one();
      return;
    }
    lock.unlock();
    std::thread(&WaiterPool::Run, this).detach();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (jobs_.empty()) {
        ++idle_;
        bool got = cv_.wait_for(lock, std::chrono::seconds(10), [this] { return !jobs_.empty(); });
        --idle_;
        if (!got) return;
      }
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  int idle_ = 0;
};

}  // namespace pmp

#endif  // PMP_WAITER_POOL_H_
