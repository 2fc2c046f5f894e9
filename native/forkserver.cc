// The forkserver's native side (Linux). A server is a Node started the spawn
// way with --single-threaded that has loaded the package and the preloads; it
// then calls serve() and never runs JS again as a server: each request is
// answered by a fork() made here, with nothing in flight on the event loop or
// in V8 (the measured condition under which a forked Node child works, see
// ../shared/research/fork-experiment.md). serve() returns only in a child, or
// when the caller hangs up.
//
//   forkserverSupported() -> bool      pidfds exist (Linux 5.3+)
//   forkserverServe(ctrlFd) -> null | { pid, instructions, fds }
//        null: the caller closed the control socket (the server then exits)
//        in a child: its pid, the fd to read its instructions from, and the
//        fds that travel with its arguments
//   forkserverExit(code)               _exit() for a forked child (see below)
//   forkedGuardLoop(onEmpty)           a forked child's loop never runs dry (see below)
//
// Wire (a SOCK_SEQPACKET socketpair, one message each way per start):
//   request: int32 deathSignal; SCM_RIGHTS [instructions, status, stdout,
//            stderr, ...argument fds]
//   reply:   int32 pid, or -errno when fork failed; SCM_RIGHTS [pidfd]
// When the child ends, the server reaps it and writes its exit code (int32,
// -signo for a signal death) on the status pipe, then closes it: the caller
// learns the end of its child from that pipe (ExitWatcher's status mode in
// process.cc) and signals it through the pidfd, which cannot reach a later
// process that reuses the pid. The server is the children's OS parent: their
// parent-death signal fires when it dies, and it dies with its owner (its own
// parent-death signal is SIGKILL), so the chain leaves no orphans.
#include <fcntl.h>
#include <napi.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "addon.h"
#include "errors.h"
#include "util.h"

#if defined(__linux__)
// The platform's worker threads (ParkWorkers); see the version check in
// Supported(). node_version.h defines the runtime's NAPI_VERSION, which must
// not replace the one this addon is built for.
#pragma push_macro("NAPI_VERSION")
#undef NAPI_VERSION
#include <node.h>
#undef NAPI_VERSION
#pragma pop_macro("NAPI_VERSION")
#include <sys/prctl.h>
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#endif

namespace pmp {

namespace {

#if defined(__linux__)

constexpr int kMaxFds = 64 + 4;

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Node 20 maps V8's heap MADV_DONTFORK (v8_enable_private_mapping_fork_
// optimization): a child forked without undoing it finds no heap and crashes.
// Only the mappings that carry the flag ("dc" in smaps) are marked again; every
// private mapping would do too, but makes each fork copy more page tables.
// The server runs no JS while it serves, so its mappings do not change after
// this one pass.
void AllowHeapInChildren() {
  FILE* f = fopen("/proc/self/smaps", "re");
  if (f == nullptr) return;
  char line[512];
  unsigned long start = 0, end = 0;
  while (fgets(line, sizeof(line), f) != nullptr) {
    unsigned long s, e;
    // A mapping's first line is "start-end perms ..."; attribute lines
    // ("Size:", "Anonymous:", "VmFlags:") never read as two hex numbers.
    if (sscanf(line, "%lx-%lx ", &s, &e) == 2) {
      start = s;
      end = e;
      continue;
    }
    if (strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " dc") != nullptr && end > start) {
      madvise(reinterpret_cast<void*>(start), end - start, MADV_DOFORK);
    }
  }
  fclose(f);
}

// V8 posts work to the platform's worker threads even under --single-threaded
// (a full GC posts a job from ClearNonLiveReferences). A forked child has no
// such threads, but it has a copy of their task queue, whose condition
// variable still counts the server's idle workers as waiters: signalling it
// can then block for ever (glibc waits for those waiters to leave their
// group). Measured: a GC-heavy forked child hung in pthread_cond_signal. So
// before it serves, the server gives every worker a task that blocks on a
// pipe: with all of them busy, the condition variable has no waiters, and a
// child's posts only queue work that its main thread does itself (V8 joins
// its jobs) or that never runs. The workers stay parked for the server's life.
class ParkTask : public v8::Task {
 public:
  ParkTask(int fd, std::atomic<int>* parked) : fd_(fd), parked_(parked) {}
  void Run() override {
    parked_->fetch_add(1);
    char byte;
    while (read(fd_, &byte, 1) < 0 && errno == EINTR) {
    }
  }

 private:
  int fd_;
  std::atomic<int>* parked_;
};

int park_pipe[2] = {-1, -1};

// True once every worker is parked (the server is idle: they take the tasks at
// once). Node counts its delayed-task scheduler thread among its "worker
// threads" (NodePlatform, in every version this addon is built for: see
// Supported()), and that thread runs no tasks: all but one parked is all of
// them. (A short grace covers a platform that counts only real workers.)
bool ParkWorkers() {
  static std::atomic<int> parked{0};
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  node::Environment* node_env = node::GetCurrentEnvironment(isolate->GetCurrentContext());
  node::MultiIsolatePlatform* platform = node_env != nullptr ? node::GetMultiIsolatePlatform(node_env) : nullptr;
  if (platform == nullptr || pipe2(park_pipe, O_CLOEXEC) != 0) return false;
  const int workers = platform->NumberOfWorkerThreads();
  for (int i = 0; i < workers; i++) platform->CallOnWorkerThread(std::make_unique<ParkTask>(park_pipe[0], &parked));
  const int64_t start = NowMs();
  int64_t all_but_one = -1;
  while (parked.load() < workers && NowMs() - start < 5000) {
    if (parked.load() == workers - 1) {
      if (all_but_one < 0) all_but_one = NowMs();
      if (NowMs() - all_but_one >= 5) break;
    }
    usleep(200);
  }
  return parked.load() >= workers - 1 && workers > 0;
}

// Lets the parked workers go, so that the server itself can exit (Node's exit
// joins them).
void UnparkWorkers() {
  if (park_pipe[1] >= 0) close(park_pipe[1]);
  park_pipe[1] = -1;
}

struct ServedChild {
  pid_t pid;
  int pidfd;
  int status_fd;
};

// A request: its death signal and the fds that came with it.
struct Request {
  int death_signal = 0;
  std::vector<int> fds;  // [instructions, status, stdout, stderr, ...arguments]
};

// 1: a request; 0: the caller hung up; -1: a malformed message (dropped).
int ReadRequest(int ctrl, Request* req) {
  int32_t death_signal = 0;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  struct iovec iov = {&death_signal, sizeof(death_signal)};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = RetryEintr([&] { return recvmsg(ctrl, &msg, MSG_CMSG_CLOEXEC); });
  if (n == 0 || (n < 0 && errno == ECONNRESET)) return 0;
  if (n < 0) return -1;
  req->fds.clear();
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t k = 0; k < count; k++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
      req->fds.push_back(fd);
    }
  }
  req->death_signal = death_signal;
  if (n != sizeof(death_signal) || req->fds.size() < 4 || (msg.msg_flags & MSG_CTRUNC) ||
      death_signal < 0 || death_signal >= NSIG) {
    for (int fd : req->fds) close(fd);
    return -1;
  }
  return 1;
}

void Reply(int ctrl, int32_t pid_or_error, int pidfd) {
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {&pid_or_error, sizeof(pid_or_error)};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (pidfd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pidfd, sizeof(int));
  }
  // The caller waits for this reply; if it is gone, the next read sees EOF.
  RetryEintr([&] { return sendmsg(ctrl, &msg, MSG_NOSIGNAL); });
}


// The child's side of fork(), before it returns to JS: its own event loop,
// its parent-death signal, the caller's stdio, and none of the server's fds.
void BecomeChild(uv_loop_t* loop, const sigset_t& old_mask, int ctrl, const Request& req,
                 const std::vector<ServedChild>& served, pid_t server) {
  // libuv's epoll fd, async wake-up and signal pipe are shared with the server
  // until they are made anew.
  uv_loop_fork(loop);
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (req.death_signal > 0) {
    prctl(PR_SET_PDEATHSIG, req.death_signal);
    if (getppid() != server) raise(req.death_signal);  // the server died before prctl
  }
  close(ctrl);
  close(park_pipe[0]);
  close(park_pipe[1]);
  for (const ServedChild& c : served) {
    close(c.pidfd);
    close(c.status_fd);
  }
  close(req.fds[1]);  // the status pipe is the server's to write
  // stdin is /dev/null, as under spawn; stdout and stderr are the caller's.
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull >= 0) {
    dup2(devnull, 0);
    if (devnull != 0) close(devnull);
  }
  dup2(req.fds[2], 1);
  dup2(req.fds[3], 2);
  close(req.fds[2]);
  close(req.fds[3]);
}

Napi::Value Serve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "forkserverServe(ctrlFd)");
  const int ctrl = info[0].As<Napi::Number>().Int32Value();
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "no event loop");
  AllowHeapInChildren();
  if (!ParkWorkers()) {
    UnparkWorkers();
    Napi::Error e = Napi::Error::New(env, "the forkserver could not park V8's worker threads; children would hang");
    e.Set("code", Napi::String::New(env, "ERR_MP_FORKSERVER"));
    throw e;
  }
  const pid_t server = getpid();
  std::vector<ServedChild> served;
  std::vector<struct pollfd> fds;
  Request req;

  for (;;) {
    fds.clear();
    fds.push_back({ctrl, POLLIN, 0});
    for (const ServedChild& c : served) fds.push_back({c.pidfd, POLLIN, 0});
    if (RetryEintr([&] { return poll(fds.data(), fds.size(), -1); }) < 0) {
      const int err = errno;
      UnparkWorkers();
      ThrowSystemError(env, err, "poll");
    }
    // Children that ended: reap, report, forget.
    for (size_t i = fds.size() - 1; i >= 1; i--) {
      if (fds[i].revents == 0) continue;
      ServedChild c = served[i - 1];
      int status = 0;
      pid_t r = RetryEintr([&] { return waitpid(c.pid, &status, WNOHANG); });
      if (r == 0) continue;
      int32_t code = r == c.pid ? ExitCodeFromStatus(status) : -255;
      ssize_t unused = write(c.status_fd, &code, sizeof(code));  // a pipe takes 4 bytes whole
      (void)unused;
      close(c.status_fd);
      close(c.pidfd);
      served.erase(served.begin() + static_cast<long>(i - 1));
    }
    if (fds[0].revents == 0) continue;
    int got = ReadRequest(ctrl, &req);
    if (got == 0) break;
    if (got < 0) continue;

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
      BecomeChild(loop, old, ctrl, req, served, server);
      Napi::Object out = Napi::Object::New(env);
      out.Set("pid", Napi::Number::New(env, getpid()));
      out.Set("instructions", Napi::Number::New(env, req.fds[0]));
      Napi::Array args = Napi::Array::New(env, req.fds.size() - 4);
      for (size_t k = 4; k < req.fds.size(); k++) args.Set(static_cast<uint32_t>(k - 4), req.fds[k]);
      out.Set("fds", args);
      return out;
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    const int status_fd = req.fds[1];
    for (size_t k = 0; k < req.fds.size(); k++) {
      if (k != 1) close(req.fds[k]);  // the child has its copies
    }
    if (pid < 0) {
      close(status_fd);
      Reply(ctrl, -fork_errno, -1);
      continue;
    }
    // Opened before this loop can reap the child, so it names this process.
    int pidfd = PidfdOpen(pid);
    if (pidfd < 0) {
      // Cannot happen on a kernel that passed forkserverSupported(); if it
      // does, the child is not served blind: it is stopped and reported.
      kill(pid, SIGKILL);
      int status;
      RetryEintr([&] { return waitpid(pid, &status, 0); });
      close(status_fd);
      Reply(ctrl, -errno, -1);
      continue;
    }
    Reply(ctrl, pid, pidfd);
    served.push_back({pid, pidfd, status_fd});
  }
  // The caller hung up: the server ends, and its children's parent-death
  // signals with it, as they would had the caller died.
  for (const ServedChild& c : served) {
    close(c.status_fd);
    close(c.pidfd);
  }
  UnparkWorkers();
  return env.Null();
}

// Also false unless the addon was built for this very Node: ParkWorkers calls
// into V8's platform interface, which is not ABI-stable across versions.
Napi::Value Supported(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object versions = env.Global().Get("process").As<Napi::Object>().Get("versions").As<Napi::Object>();
  if (versions.Get("modules").ToString().Utf8Value() != std::to_string(NODE_MODULE_VERSION)) {
    return Napi::Boolean::New(env, false);
  }
  int fd = PidfdOpen(getpid());
  if (fd < 0) return Napi::Boolean::New(info.Env(), false);
  close(fd);
  return Napi::Boolean::New(info.Env(), true);
}

#else  // !__linux__: no forkserver (docs/start-methods.md says why)

Napi::Value Serve(const Napi::CallbackInfo& info) {
  Napi::Error e = Napi::Error::New(info.Env(), "the forkserver start method is available on Linux only");
  e.Set("code", Napi::String::New(info.Env(), "ERR_MP_UNSUPPORTED"));
  throw e;
}

Napi::Value Supported(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), false); }

#endif

// A forked child must never let its event loop run dry: Node then drains the
// platform's worker tasks (NodePlatform::DrainTasks), waiting for tasks that
// only the server's threads could finish (the parked ones, and any V8 posted
// since) — for ever. So the child keeps the loop alive with a timer of its
// own and watches, before each poll, for the moment nothing else is left; it
// then lets one more turn pass (close callbacks run at its end), and, if the
// loop is still empty, calls onEmpty(false) for 'beforeExit' and, unless its
// listeners gave the loop more to do, onEmpty(true) for the exit: what Node does.
struct LoopGuard {
  uv_timer_t keeper;
  uv_prepare_t prepare;
  uv_idle_t spin;  // active while an empty loop is being confirmed: poll does not block
  napi_env env;
  Napi::FunctionReference on_empty;
  bool confirming = false;
};

bool OnlyKeeperLeft(uv_loop_t* loop) { return loop->active_handles <= 1 && loop->active_reqs.count == 0; }

void OnPrepare(uv_prepare_t* handle) {
  auto* guard = static_cast<LoopGuard*>(handle->data);
  uv_loop_t* loop = handle->loop;
  if (!OnlyKeeperLeft(loop)) {
    if (guard->confirming) uv_idle_stop(&guard->spin);
    guard->confirming = false;
    return;
  }
  if (!guard->confirming) {
    guard->confirming = true;
    uv_idle_start(&guard->spin, [](uv_idle_t*) {});
    uv_unref(reinterpret_cast<uv_handle_t*>(&guard->spin));
    return;
  }
  uv_idle_stop(&guard->spin);
  guard->confirming = false;
  Napi::Env env(guard->env);
  Napi::HandleScope scope(env);
  try {
    // onEmpty(false): 'beforeExit'. MakeCallback runs the microtasks and
    // nextTicks its listeners queue before it returns; if they gave the loop
    // nothing to do, onEmpty(true): the exit.
    guard->on_empty.MakeCallback(env.Global(), {Napi::Boolean::New(env, false)});
    if (OnlyKeeperLeft(loop)) guard->on_empty.MakeCallback(env.Global(), {Napi::Boolean::New(env, true)});
  } catch (const Napi::Error& e) {
    if (!e.IsEmpty()) napi_fatal_exception(guard->env, e.Value());
  }
}

Napi::Value GuardLoop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) throw Napi::TypeError::New(env, "forkedGuardLoop(onEmpty)");
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "no event loop");
  // Lives as long as the process, which leaves by _exit().
  auto* guard = new LoopGuard();
  guard->env = env;
  guard->on_empty = Napi::Persistent(info[0].As<Napi::Function>());
  uv_timer_init(loop, &guard->keeper);
  uv_timer_start(&guard->keeper, [](uv_timer_t*) {}, UINT32_MAX, UINT32_MAX);
  uv_prepare_init(loop, &guard->prepare);
  guard->prepare.data = guard;
  uv_prepare_start(&guard->prepare, OnPrepare);
  uv_unref(reinterpret_cast<uv_handle_t*>(&guard->prepare));
  uv_idle_init(loop, &guard->spin);
  uv_unref(reinterpret_cast<uv_handle_t*>(&guard->spin));
  return env.Undefined();
}

// A forked Node child cannot leave through Node's own exit: it joins V8's
// platform threads, which the fork did not copy, and crashes or hangs. Its
// 'exit' event has run (see child/forked.ts); nothing is buffered in C stdio.
Napi::Value Exit(const Napi::CallbackInfo& info) {
  int code = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
  _exit(code & 0xff);
}

}  // namespace

void InitForkserver(Napi::Env env, Napi::Object exports, AddonData* data) {
  exports.Set("forkserverSupported", Napi::Function::New<Supported>(env, "forkserverSupported"));
  exports.Set("forkserverServe", Napi::Function::New<Serve>(env, "forkserverServe"));
  exports.Set("forkserverExit", Napi::Function::New<Exit>(env, "forkserverExit"));
  exports.Set("forkedGuardLoop", Napi::Function::New<GuardLoop>(env, "forkedGuardLoop"));
#if defined(__linux__)
  exports.Set("builtForModules", Napi::Number::New(env, NODE_MODULE_VERSION));
#else
  exports.Set("builtForModules", Napi::Number::New(env, 0));
#endif
}

}  // namespace pmp
