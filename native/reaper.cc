// The process-wide reaper: children whose ExitWatcher lost its environment
// before they exited (a worker thread terminated, or ended with a daemon child
// still running) are reaped here, so they never stay zombies.
//
// One thread for the whole process at most, started by the first hand-over
// and never ended. It waits on the children's pidfds with epoll on Linux (a
// kernel without pidfd: waitpid(pid, WNOHANG) every 50 ms), on EVFILT_PROC
// with a kqueue on macOS, and reaps each with waitpid(pid), never -1.
// Registrations come from any thread: epoll and kqueue take them while the
// reaper waits.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "addon.h"
#include "errors.h"

#if defined(__linux__)
#include <sys/epoll.h>
#include <sys/eventfd.h>
#elif defined(__APPLE__)
#include <sys/event.h>
#endif

namespace pmp {

namespace {

// Whether pid is no longer ours to wait for: reaped now, or reaped by someone
// else (ECHILD).
bool Reaped(pid_t pid) {
  int status;
  pid_t r = RetryEintr([&] { return waitpid(pid, &status, WNOHANG); });
  return r == pid || (r < 0 && errno == ECHILD);
}

// Never freed: the thread uses it until the process ends, and static
// destructors must not pull it away from under that thread at exit.
struct Reaper {
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  bool started = false;  // the thread runs
  int queue = -1;        // the epoll or kqueue fd
#if defined(__linux__)
  int wake = -1;                // eventfd: a polled pid was added
  std::vector<pid_t> polled;    // children without a pidfd
#endif
};

Reaper* The() {
  static Reaper* reaper = new Reaper();
  return reaper;
}

#if defined(__linux__)
constexpr uint64_t kWake = ~0ULL;
constexpr int kPollMs = 50;

void* Run(void*) {
  Reaper* r = The();
  struct epoll_event events[32];
  for (;;) {
    pthread_mutex_lock(&r->mu);
    const int timeout = r->polled.empty() ? -1 : kPollMs;
    pthread_mutex_unlock(&r->mu);
    int n = epoll_wait(r->queue, events, 32, timeout);
    for (int i = 0; i < n; i++) {
      const uint64_t data = events[i].data.u64;
      if (data == kWake) {
        uint64_t count;
        ssize_t unused = read(r->wake, &count, sizeof(count));
        (void)unused;
        continue;
      }
      // data: the pid in the high half, its pidfd in the low half.
      const pid_t pid = static_cast<pid_t>(data >> 32);
      const int fd = static_cast<int>(data & 0xffffffffu);
      // Readable means exited, so it is reaped now; should it not be, it
      // moves to the polled list rather than wake this thread again at once.
      epoll_ctl(r->queue, EPOLL_CTL_DEL, fd, nullptr);
      close(fd);
      if (!Reaped(pid)) {
        pthread_mutex_lock(&r->mu);
        r->polled.push_back(pid);
        pthread_mutex_unlock(&r->mu);
      }
    }
    pthread_mutex_lock(&r->mu);
    r->polled.erase(std::remove_if(r->polled.begin(), r->polled.end(), Reaped), r->polled.end());
    pthread_mutex_unlock(&r->mu);
  }
  return nullptr;
}

// Called with mu held. False when the kernel refused (no fds, no threads):
// the next hand-over tries again, and what was registered waits meanwhile.
bool StartLocked(Reaper* r) {
  if (r->started) return true;
  if (r->queue < 0) {
    r->queue = epoll_create1(EPOLL_CLOEXEC);
    if (r->queue < 0) return false;
  }
  if (r->wake < 0) {
    r->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (r->wake < 0) return false;
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u64 = kWake;
    if (epoll_ctl(r->queue, EPOLL_CTL_ADD, r->wake, &ev) != 0) {
      close(r->wake);
      r->wake = -1;
      return false;
    }
  }
  return true;
}
#elif defined(__APPLE__)
void* Run(void*) {
  Reaper* r = The();
  struct kevent events[32];
  for (;;) {
    int n = kevent(r->queue, nullptr, 0, events, 32, nullptr);
    for (int i = 0; i < n; i++) {
      const pid_t pid = static_cast<pid_t>(events[i].ident);
      if (Reaped(pid)) continue;
      // Not yet waitable (should not happen after NOTE_EXIT): watch again.
      struct kevent change;
      EV_SET(&change, pid, EVFILT_PROC, EV_ADD | EV_ONESHOT, NOTE_EXIT, 0, nullptr);
      if (kevent(r->queue, &change, 1, nullptr, 0, nullptr) != 0) Reaped(pid);
    }
  }
  return nullptr;
}

bool StartLocked(Reaper* r) {
  if (r->started) return true;
  if (r->queue < 0) {
    r->queue = kqueue();
    if (r->queue < 0) return false;
    fcntl(r->queue, F_SETFD, FD_CLOEXEC);
  }
  return true;
}
#endif

// Starts the thread once the queue exists. Signals stay with the threads
// that handle them (Node's), so the reaper blocks them all.
void StartThreadLocked(Reaper* r) {
  if (r->started) return;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t thread;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  r->started = pthread_create(&thread, &attr, Run, nullptr) == 0;
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

}  // namespace

void ReapLater(pid_t pid, int watch_fd) {
  Reaper* r = The();
  if (Reaped(pid)) {
    if (watch_fd >= 0) close(watch_fd);
    return;
  }
  pthread_mutex_lock(&r->mu);
  const bool ready = StartLocked(r);
#if defined(__linux__)
  bool queued = false;
  if (ready && watch_fd >= 0) {
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u64 = (static_cast<uint64_t>(pid) << 32) | static_cast<uint32_t>(watch_fd);
    queued = epoll_ctl(r->queue, EPOLL_CTL_ADD, watch_fd, &ev) == 0;
  }
  if (!queued) {
    if (watch_fd >= 0) close(watch_fd);
    r->polled.push_back(pid);
    if (r->wake >= 0) {
      uint64_t one = 1;
      ssize_t unused = write(r->wake, &one, sizeof(one));
      (void)unused;
    }
  }
#elif defined(__APPLE__)
  // The watcher's own kqueue goes; the reaper's one takes the pid.
  if (watch_fd >= 0) close(watch_fd);
  if (ready) {
    struct kevent change;
    EV_SET(&change, pid, EVFILT_PROC, EV_ADD | EV_ONESHOT, NOTE_EXIT, 0, nullptr);
    // ESRCH: it exited between the check above and now.
    if (kevent(r->queue, &change, 1, nullptr, 0, nullptr) != 0) Reaped(pid);
  }
#endif
  if (ready) StartThreadLocked(r);
  pthread_mutex_unlock(&r->mu);
}

}  // namespace pmp
