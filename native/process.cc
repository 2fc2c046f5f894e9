// Child processes: fork + exec of a fresh Node, and reaping of exactly our own
// children the moment they exit, without a thread per child and without
// waitpid(-1) (which would steal child_process's children).
//
//   spawn(file, argv, envp, keepFds, deathSignal) -> pid
//   new ExitWatcher(pid, onExit, deathSignal = 0, statusFd = -1, pidfd = -1)
//                                  onExit(exitCode) once; exitCode is -signo
//                                  for a signal death, as in CPython
//                                  statusFd: status mode, for a forkserver's
//                                  child (forkserver.cc), which its server
//                                  reaps: the code is read from that pipe, and
//                                  signals go through pidfd
//   watcher.ref() / unref() / waitSync(timeoutMs) / signal(signo)
//   watcher.adopt(fd)              fd is closed once the child has ended
//   watchParent(ppid, signal)      macOS only: the parent-death signal Linux
//                                  gives us through PR_SET_PDEATHSIG
//
// A watcher whose environment goes away before its child exited sends the
// child its deathSignal and hands it to the process-wide reaper (reaper.cc).
//
// Exit watching: Linux polls a pidfd on the event loop; macOS polls a kqueue
// with EVFILT_PROC/NOTE_EXIT; a kernel without pidfd falls back to a timer that
// tries waitpid(pid, WNOHANG).
#include <fcntl.h>
#include <napi.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <string>
#include <vector>

#include "addon.h"
#include "errors.h"
#include "util.h"

#if defined(__linux__)
#include <sys/prctl.h>
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#elif defined(__APPLE__)
#include <sys/event.h>
#endif

extern char** environ;

namespace pmp {

namespace {

// Whether orphaned descendants are reparented to this process.
bool AdoptsOrphans() {
  if (getpid() == 1) return true;
#if defined(__linux__)
  int subreaper = 0;
  if (prctl(PR_GET_CHILD_SUBREAPER, &subreaper) == 0 && subreaper != 0) return true;
#endif
  return false;
}


// ---- spawn -----------------------------------------------------------------

// Everything the child needs is prepared before fork: after fork, in a process
// that had many threads, only async-signal-safe calls are allowed (no malloc).
struct SpawnPlan {
  std::string file;
  std::vector<std::string> argv_storage, envp_storage;
  std::vector<char*> argv, envp;
  std::vector<int> keep_fds;  // placed at 3, 4, ... in the child
  int death_signal = 0;
  pid_t parent = 0;
  int max_fd = 1024;
};

[[noreturn]] void ChildFail(int err_fd, int err) {
  // The error pipe is close-on-exec: the parent reads either EOF (exec worked)
  // or this errno.
  ssize_t unused = write(err_fd, &err, sizeof(err));
  (void)unused;
  _exit(127);
}

[[noreturn]] void ChildAfterFork(const SpawnPlan& plan, int err_fd) {
  // Signal dispositions: the parent (Node) ignores SIGPIPE and SIGXFSZ, and an
  // ignored disposition survives exec. Reset everything to default first, then
  // unblock (the parent blocked all signals around fork so that none of its
  // handlers can run in this copy of the process).
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  const int nkeep = static_cast<int>(plan.keep_fds.size());
  const int first_free = 3 + nkeep;

  // Move the error pipe and the fds to keep above the range we are about to
  // fill, so that placing fd i at 3 + i never clobbers a source.
  err_fd = fcntl(err_fd, F_DUPFD_CLOEXEC, first_free);
  if (err_fd < 0) _exit(127);
  int moved[64];
  for (int i = 0; i < nkeep; i++) {
    moved[i] = fcntl(plan.keep_fds[i], F_DUPFD_CLOEXEC, first_free);
    if (moved[i] < 0) ChildFail(err_fd, errno);
  }
  for (int i = 0; i < nkeep; i++) {
    if (dup2(moved[i], 3 + i) < 0) ChildFail(err_fd, errno);  // dup2 clears CLOEXEC
  }

  // stdio: Node marks 0-2 close-on-exec. stdin becomes /dev/null (Python's spawn
  // does the same: children do not compete for the parent's terminal input);
  // stdout and stderr are shared with the parent. A closed one is reopened on
  // /dev/null so that the child's first open() does not land on fd 1 or 2.
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0 && devnull != 0) {
    dup2(devnull, 0);
  } else if (devnull == 0) {
    fcntl(0, F_SETFD, 0);
  }
  for (int fd = 1; fd <= 2; fd++) {
    if (fcntl(fd, F_GETFD) < 0) {
      if (devnull >= 0) dup2(devnull, fd);
    } else {
      fcntl(fd, F_SETFD, 0);
    }
  }

  // Everything else the parent had open stays out of the child.
#if defined(__linux__)
  if (syscall(SYS_close_range, first_free, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
#endif
  {
    for (int fd = first_free; fd < plan.max_fd; fd++) {
      if (fd != err_fd) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
  }

#if defined(__linux__)
  if (plan.death_signal > 0) {
    // Fires when the thread that forked us exits: for a worker thread, when the
    // worker ends (as its ExitWatchers' teardown sends it too, see CleanupHook).
    if (prctl(PR_SET_PDEATHSIG, plan.death_signal) != 0) ChildFail(err_fd, errno);
    // The parent may have died before prctl took effect.
    if (getppid() != plan.parent) {
      kill(getpid(), plan.death_signal);
      _exit(127);
    }
  }
#endif

  execve(plan.file.c_str(), const_cast<char* const*>(plan.argv.data()),
         const_cast<char* const*>(plan.envp.data()));
  ChildFail(err_fd, errno);
}

std::vector<std::string> StringArray(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an array of strings");
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<std::string> out;
  out.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value item = arr.Get(i);
    if (!item.IsString()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an array of strings");
    std::string s = item.As<Napi::String>().Utf8Value();
    if (s.find('\0') != std::string::npos) {
      throw Napi::TypeError::New(v.Env(), std::string(what) + " must not contain NUL bytes");
    }
    out.push_back(std::move(s));
  }
  return out;
}

Napi::Value Spawn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsString() || !info[3].IsArray() || !info[4].IsNumber()) {
    throw Napi::TypeError::New(env, "spawn(file, argv, envp, keepFds, deathSignal)");
  }
  SpawnPlan plan;
  plan.file = info[0].As<Napi::String>().Utf8Value();
  plan.argv_storage = StringArray(info[1], "argv");
  plan.envp_storage = StringArray(info[2], "envp");
  Napi::Array keep = info[3].As<Napi::Array>();
  if (keep.Length() > 64) throw Napi::RangeError::New(env, "keepFds: at most 64 fds");
  for (uint32_t i = 0; i < keep.Length(); i++) {
    Napi::Value fd = keep.Get(i);
    if (!fd.IsNumber() || fd.As<Napi::Number>().Int32Value() < 0) {
      throw Napi::TypeError::New(env, "keepFds must be an array of fds");
    }
    plan.keep_fds.push_back(fd.As<Napi::Number>().Int32Value());
  }
  plan.death_signal = info[4].As<Napi::Number>().Int32Value();
  if (plan.death_signal < 0 || plan.death_signal >= NSIG) {
    throw Napi::RangeError::New(env, "deathSignal out of range");
  }
  for (auto& s : plan.argv_storage) plan.argv.push_back(&s[0]);
  plan.argv.push_back(nullptr);
  for (auto& s : plan.envp_storage) plan.envp.push_back(&s[0]);
  plan.envp.push_back(nullptr);
  plan.parent = getpid();
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    plan.max_fd = rl.rlim_cur > 65536 ? 65536 : static_cast<int>(rl.rlim_cur);
  }

  int err_pipe[2];
#if defined(__linux__)
  if (pipe2(err_pipe, O_CLOEXEC) != 0) ThrowSystemError(env, errno, "pipe2");
#else
  if (pipe(err_pipe) != 0) ThrowSystemError(env, errno, "pipe");
  fcntl(err_pipe[0], F_SETFD, FD_CLOEXEC);
  fcntl(err_pipe[1], F_SETFD, FD_CLOEXEC);
#endif

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = fork();
  if (pid == 0) {
    close(err_pipe[0]);
    ChildAfterFork(plan, err_pipe[1]);
  }
  int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  close(err_pipe[1]);
  if (pid < 0) {
    close(err_pipe[0]);
    ThrowSystemError(env, fork_errno, "fork");
  }

  int child_errno = 0;
  ssize_t n = RetryEintr([&] { return read(err_pipe[0], &child_errno, sizeof(child_errno)); });
  close(err_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) {
    // exec failed: reap the child now so that nothing is left behind.
    int status;
    RetryEintr([&] { return waitpid(pid, &status, 0); });
    ThrowSystemError(env, child_errno, "execve", plan.file);
  }
  return Napi::Number::New(env, pid);
}

// ---- exit watching ---------------------------------------------------------

class ExitWatcher : public Napi::ObjectWrap<ExitWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ExitWatcher",
                       {InstanceMethod<&ExitWatcher::RefLoop>("ref"),
                        InstanceMethod<&ExitWatcher::UnrefLoop>("unref"),
                        InstanceMethod<&ExitWatcher::WaitSync>("waitSync"),
                        InstanceMethod<&ExitWatcher::Signal>("signal"),
                        InstanceMethod<&ExitWatcher::Adopt>("adopt")});
  }

  explicit ExitWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ExitWatcher>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "new ExitWatcher(pid, onExit, deathSignal?)");
    }
    pid_ = info[0].As<Napi::Number>().Int32Value();
    if (pid_ <= 0) throw Napi::RangeError::New(env, "pid must be a positive integer");
    if (info.Length() > 2 && info[2].IsNumber()) death_signal_ = info[2].As<Napi::Number>().Int32Value();
    if (death_signal_ < 0 || death_signal_ >= NSIG) throw Napi::RangeError::New(env, "deathSignal out of range");
    if (info.Length() > 4 && info[3].IsNumber() && info[3].As<Napi::Number>().Int32Value() >= 0) {
      // Ours from here on, whatever happens next.
      status_mode_ = true;
      fd_ = info[3].As<Napi::Number>().Int32Value();
      if (info[4].IsNumber()) pidfd_ = info[4].As<Napi::Number>().Int32Value();
      fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
    }
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    if (napi_get_uv_event_loop(env, &loop_) != napi_ok) throw Napi::Error::New(env, "no event loop");
    Start(env);
    // Stay alive while the child runs, even if JS drops the wrapper: the
    // callback must still fire and the child must still be reaped.
    Ref();
    napi_add_env_cleanup_hook(env, CleanupHook, this);
    hook_added_ = true;
  }

  ~ExitWatcher() override { StopHandles(); }

 private:
  void Start(Napi::Env env) {
    if (status_mode_) {
      Watch(fd_);
      return;
    }
#if defined(__linux__)
    fd_ = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
    if (fd_ < 0 && errno != ENOSYS && errno != EINVAL && errno != EPERM) {
      ThrowSystemError(env, errno, "pidfd_open");
    }
#elif defined(__APPLE__)
    fd_ = kqueue();
    if (fd_ < 0) ThrowSystemError(env, errno, "kqueue");
    fcntl(fd_, F_SETFD, FD_CLOEXEC);
    struct kevent change;
    EV_SET(&change, pid_, EVFILT_PROC, EV_ADD | EV_ONESHOT, NOTE_EXIT, 0, nullptr);
    if (kevent(fd_, &change, 1, nullptr, 0, nullptr) != 0) {
      // ESRCH: the child has already exited (it is a zombie); the timer path
      // below reaps it on the next loop turn.
      close(fd_);
      fd_ = -1;
    }
#endif
    if (fd_ >= 0) {
      Watch(fd_);
    } else {
      timer_ = new uv_timer_t;
      uv_timer_init(loop_, timer_);
      timer_->data = this;
      uv_timer_start(timer_, OnTimer, 0, 20);
    }
  }

  // Watches fd on the event loop (ref'd or not as the watcher was).
  void Watch(int fd) {
    const bool unref = poll_ != nullptr && !uv_has_ref(reinterpret_cast<uv_handle_t*>(poll_));
    if (poll_ != nullptr) {
      uv_poll_stop(poll_);
      poll_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    }
    poll_ = new uv_poll_t;
    uv_poll_init(loop_, poll_, fd);
    poll_->data = this;
    uv_poll_start(poll_, UV_READABLE, OnReadable);
    if (unref) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  }

  // Status mode: true once the exit code is known (in *code). The server
  // writes it and closes the pipe; EOF without a code means the server died
  // first. Its death sent the child its parent-death signal: the child is
  // then watched through its pidfd, and reported as killed by that signal.
  bool ReadStatus(int* code) {
    if (server_lost_) {
      struct pollfd p = {pidfd_, POLLIN, 0};
      if (pidfd_ >= 0 && poll(&p, 1, 0) == 0) return false;
      // An orphan goes to the nearest subreaper, or init: when that is this
      // process (a container's entrypoint), the child is ours now, and only
      // we can reap it; its pid cannot be reused before we do. (Anywhere
      // else the pid may already name another child of ours: not tried.)
      int status = 0;
      if (AdoptsOrphans() && RetryEintr([&] { return waitpid(pid_, &status, WNOHANG); }) == pid_) {
        *code = ExitCodeFromStatus(status);
        return true;
      }
      *code = -(death_signal_ > 0 ? death_signal_ : SIGKILL);
      return true;
    }
    int32_t value;
    ssize_t n = RetryEintr([&] { return read(fd_, &value, sizeof(value)); });
    if (n == static_cast<ssize_t>(sizeof(value))) {
      *code = value;
      return true;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    server_lost_ = true;
    if (pidfd_ >= 0) {
      // From now on the pidfd is watched (the pipe at EOF would wake the loop
      // without end); fd_ and pidfd_ both name it, and StopHandles closes it once.
      const int pipe_fd = fd_;
      fd_ = pidfd_;
      Watch(fd_);  // stops the poll on the pipe before it is closed
      close(pipe_fd);
    }
    return ReadStatus(code);
  }

  static void OnReadable(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<ExitWatcher*>(handle->data);
    if (self != nullptr) self->TryReap();
  }

  static void OnTimer(uv_timer_t* handle) {
    auto* self = static_cast<ExitWatcher*>(handle->data);
    if (self != nullptr) self->TryReap();
  }

  // Called from the event loop: reap if the child has exited, then report.
  void TryReap() {
    if (done_) return;
    int code;
    if (status_mode_) {
      if (!ReadStatus(&code)) return;
    } else {
      int status = 0;
      pid_t r = RetryEintr([&] { return waitpid(pid_, &status, WNOHANG); });
      if (r == 0) return;  // spurious wake-up: still running
      code = r == pid_ ? ExitCodeFromStatus(status) : LostChildCode();
    }
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Finish(code);
    // Called from the loop, with no JS frame below to throw into: an
    // exception from the callback is reported as uncaught (as in pipe.cc's
    // FdWatcher); a call refused because the environment is going away (a
    // worker being terminated) has nothing to report, and must not escape
    // as a C++ exception either: that aborts the process.
    try {
      callback_.Call({Napi::Number::New(env, exit_code_)});
    } catch (const Napi::Error& e) {
      if (!e.IsEmpty()) napi_fatal_exception(env, e.Value());
    }
  }

  // waitpid failed with ECHILD: someone else reaped our child (a waitpid(-1)
  // elsewhere in the process). Report it as an abnormal end rather than hang.
  static int LostChildCode() { return -255; }

  void Finish(int exit_code) {
    done_ = true;
    exit_code_ = exit_code;
    StopHandles();
    CloseAdopted();
    if (hook_added_) {
      napi_remove_env_cleanup_hook(Env(), CleanupHook, this);
      hook_added_ = false;
    }
    Unref();  // JS may now collect the wrapper
  }

  void CloseAdopted() {
    for (int fd : adopted_) close(fd);
    adopted_.clear();
  }

  // adopt(fd): fd lives as long as the child, closed when it has ended or
  // this environment goes (the forkserver's control socket: a worker thread
  // terminated mid-flight must not leave it open).
  Napi::Value Adopt(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "adopt(fd)");
    int fd = info[0].As<Napi::Number>().Int32Value();
    if (fd < 0) throw Napi::RangeError::New(env, "fd must be >= 0");
    if (done_) {
      close(fd);
    } else {
      adopted_.push_back(fd);
    }
    return env.Undefined();
  }

  void StopHandles() {
    if (poll_ != nullptr) {
      uv_poll_stop(poll_);
      poll_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(poll_),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (timer_ != nullptr) {
      uv_timer_stop(timer_);
      timer_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(timer_),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      timer_ = nullptr;
    }
    if (fd_ >= 0) {
      close(fd_);
      if (pidfd_ == fd_) pidfd_ = -1;
      fd_ = -1;
    }
    if (pidfd_ >= 0) {
      close(pidfd_);
      pidfd_ = -1;
    }
  }

  static void CleanupHook(void* arg) {
    // The environment is going away (a worker thread terminated or ended,
    // the process exiting) with the child unreaped. The child gets the signal
    // its parent's death would send: Linux sends it too when the thread that
    // forked it ends, but macOS watches the parent process, not the thread,
    // and an environment may end on a thread that lives on. The pid is still
    // ours (unreaped), so the signal cannot reach an unrelated process. Then
    // the process-wide reaper takes the child over, or it would stay a zombie
    // for the life of the process.
    auto* self = static_cast<ExitWatcher*>(arg);
    self->hook_added_ = false;
    self->CloseAdopted();
    if (self->status_mode_) {
      // The forkserver reaps this child; it only needs the signal.
      if (!self->done_ && self->death_signal_ > 0) self->SendSignal(self->death_signal_);
      self->done_ = true;
      self->StopHandles();
      return;
    }
    const int fd = self->fd_;
    self->fd_ = -1;  // the reaper's now
    self->StopHandles();
    if (!self->done_) {
      self->done_ = true;
      if (self->death_signal_ > 0) kill(self->pid_, self->death_signal_);
      ReapLater(self->pid_, fd);
    } else if (fd >= 0) {
      close(fd);
    }
  }

  // 0, or an errno. A child we reap is ours until reaped, so kill(pid) cannot
  // reach another process; a forkserver's child is reaped by the server, at
  // any moment, so it is signalled through its pidfd.
  int SendSignal(int signo) {
#if defined(__linux__)
    if (status_mode_) {
      if (pidfd_ < 0) return ESRCH;
      return syscall(SYS_pidfd_send_signal, pidfd_, signo, nullptr, 0) == 0 ? 0 : errno;
    }
#endif
    return kill(pid_, signo) == 0 ? 0 : errno;
  }

  // signal(signo): ESRCH (the child has ended) is not an error.
  Napi::Value Signal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "signal(signo)");
    int signo = info[0].As<Napi::Number>().Int32Value();
    if (signo < 0 || signo >= NSIG) throw Napi::RangeError::New(env, "signo out of range");
    if (done_) return env.Undefined();
    int err = SendSignal(signo);
    if (err != 0 && err != ESRCH) ThrowSystemError(env, err, status_mode_ ? "pidfd_send_signal" : "kill");
    return env.Undefined();
  }

  uv_handle_t* Handle() {
    if (poll_ != nullptr) return reinterpret_cast<uv_handle_t*>(poll_);
    return reinterpret_cast<uv_handle_t*>(timer_);
  }

  Napi::Value RefLoop(const Napi::CallbackInfo& info) {
    if (!done_ && Handle() != nullptr) uv_ref(Handle());
    return info.Env().Undefined();
  }

  Napi::Value UnrefLoop(const Napi::CallbackInfo& info) {
    if (!done_ && Handle() != nullptr) uv_unref(Handle());
    return info.Env().Undefined();
  }

  // Blocks the calling thread until the child exits or timeoutMs passes
  // (negative: no limit). Returns the exit code, or null on timeout. On exit
  // the onExit callback runs first, synchronously, so state has one source.
  // In a worker thread it also returns (null) as soon as the worker is being
  // terminated: it sleeps in StopProbe slices.
  Napi::Value WaitSync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (done_) return Napi::Number::New(env, exit_code_);
    double timeout = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
    const int64_t deadline = timeout < 0 ? -1 : NowMs() + static_cast<int64_t>(timeout);
    const StopProbe probe(env);
    int status = 0;
    for (;;) {
      int code;
      bool ended;
      if (status_mode_) {
        ended = ReadStatus(&code);
      } else {
        pid_t r = RetryEintr([&] { return waitpid(pid_, &status, WNOHANG); });
        ended = r == pid_ || r < 0;
        code = r == pid_ ? ExitCodeFromStatus(status) : LostChildCode();
      }
      if (ended) {
        Finish(code);
        callback_.Call({Napi::Number::New(env, exit_code_)});
        return Napi::Number::New(env, exit_code_);
      }
      int64_t left = deadline < 0 ? -1 : deadline - NowMs();
      if (deadline >= 0 && left <= 0) return env.Null();
      if (probe.Stopping()) return env.Null();  // its JS does not run on
      SleepUntilExit(probe.Slice(left));
    }
  }

  // Waits for the exit notification, up to left_ms (negative: no limit); in
  // slices of 10 ms when there is no fd to wait on.
  void SleepUntilExit(int64_t left_ms) {
    if (fd_ >= 0) {
      struct pollfd p = {fd_, POLLIN, 0};
      int t = left_ms < 0 || left_ms > 1000000 ? 1000000 : static_cast<int>(left_ms);
      poll(&p, 1, t);
      return;
    }
    int64_t slice = left_ms < 0 || left_ms > 10 ? 10 : left_ms;
    struct timespec ts = {0, static_cast<long>(slice) * 1000000L};
    nanosleep(&ts, nullptr);
  }

  pid_t pid_ = 0;
  int death_signal_ = 0;
  int fd_ = -1;
  int pidfd_ = -1;            // status mode: the child's pidfd
  bool status_mode_ = false;  // a forkserver's child: see ReadStatus
  bool server_lost_ = false;
  std::vector<int> adopted_;  // see Adopt
  uv_loop_t* loop_ = nullptr;
  uv_poll_t* poll_ = nullptr;
  uv_timer_t* timer_ = nullptr;
  bool done_ = false;
  bool hook_added_ = false;
  int exit_code_ = 0;
  Napi::FunctionReference callback_;
};

// ---- parent-death signal on macOS ------------------------------------------

#if defined(__APPLE__)
struct ParentWatch {
  pid_t ppid;
  int signal;
};

void* WatchParentThread(void* arg) {
  ParentWatch w = *static_cast<ParentWatch*>(arg);
  delete static_cast<ParentWatch*>(arg);
  int kq = kqueue();
  if (kq >= 0) {
    struct kevent change, event;
    EV_SET(&change, w.ppid, EVFILT_PROC, EV_ADD | EV_ONESHOT, NOTE_EXIT, 0, nullptr);
    if (kevent(kq, &change, 1, nullptr, 0, nullptr) == 0) {
      while (kevent(kq, nullptr, 0, &event, 1, nullptr) < 0 && errno == EINTR) {
      }
    }
    close(kq);
  }
  // Either the parent exited or it was already gone when we registered.
  if (getppid() != w.ppid) kill(getpid(), w.signal);
  return nullptr;
}
#endif

Napi::Value WatchParent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "watchParent(ppid, signal)");
  }
#if defined(__APPLE__)
  auto* w = new ParentWatch{static_cast<pid_t>(info[0].As<Napi::Number>().Int32Value()),
                            info[1].As<Napi::Number>().Int32Value()};
  if (getppid() != w->ppid) {
    kill(getpid(), w->signal);
    delete w;
    return Napi::Boolean::New(env, true);
  }
  pthread_t thread;
  int err = pthread_create(&thread, nullptr, WatchParentThread, w);
  if (err != 0) {
    delete w;
    ThrowSystemError(env, err, "pthread_create");
  }
  pthread_detach(thread);
  return Napi::Boolean::New(env, true);
#else
  // Linux sets PR_SET_PDEATHSIG between fork and exec; nothing to do here.
  return Napi::Boolean::New(env, false);
#endif
}

}  // namespace

// Closes an fd the addon handed out (a pipe end). fs.closeSync would do, but in
// a worker thread Node warns about closing an fd that fs did not open there.
// No retry on EINTR: on Linux the fd is released even when close is interrupted.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "closeFd(fd)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(env, "fd must be a non-negative integer");
  if (close(fd) != 0 && errno != EINTR) ThrowSystemError(env, errno, "close");
  return env.Undefined();
}

void InitProcess(Napi::Env env, Napi::Object exports, AddonData* data) {
  exports.Set("spawn", Napi::Function::New<Spawn>(env, "spawn"));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env, "closeFd"));
  exports.Set("watchParent", Napi::Function::New<WatchParent>(env, "watchParent"));
  Napi::Function watcher = ExitWatcher::Define(env);
  exports.Set("ExitWatcher", watcher);
}

}  // namespace pmp
