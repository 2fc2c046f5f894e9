// Pipes and socketpairs, created natively so their fds can be placed in a child
// (spawn's keepFds) or passed later. Both ends are close-on-exec: an fd reaches
// a child only when it is asked for.
//
//   pipe() -> [readFd, writeFd]
//   socketpair(seqpacket = false) -> [fd, fd]   AF_UNIX, SOCK_STREAM (or SOCK_SEQPACKET)
//
// And the I/O a Connection needs, syscall-shaped (framing is TypeScript's).
// Connection I/O never blocks unless asked to: "would block" is a value (-1),
// never an exception, so the async paths can fall back to the event loop and
// the sync paths to poll(). Pipe fds are O_NONBLOCK. Socket fds are left in
// blocking mode and every call but a waiting recvmsg passes MSG_DONTWAIT: then
// recvSync() can sleep in recvmsg itself, one syscall instead of poll() and
// then recvmsg() (a syscall costs several us on a VM).
//
//   setNonblocking(fd, on = true); dup(fd) -> close-on-exec copy
//   read(fd, buf, off, len, spinUs = 0) -> n | 0 (EOF) | -1 (would block)
//   recvmsg(fd, buf, off, len, fdsOut[], spinUs = 0) -> same; fds received (SCM_RIGHTS) are pushed on fdsOut
//        with spinUs > 0, a read that would block is tried again for up to spinUs (SpinRead below);
//        recvmsg with spinUs < 0 waits for data if the fd is in blocking mode (else: -1 at once);
//        in a worker thread, until the worker is being terminated at most (then -1)
//   write(fd, buf, off, len) -> n | -1 (would block)
//   sendmsg(fd, buf, off, len, fds[]) -> n | -1; the fds ride with the first byte; never waits
//   poll(fd, events, timeoutMs, spinUs = 0) -> revents   (1 readable, 2 writable, 4 hang-up/error)
//        with spinUs, first polls without sleeping for up to spinUs (never past the timeout);
//        in a worker thread, 0 as soon as the worker is being terminated
//   new FdWatcher(fd, onEvents(events))  .start(events) .stop() .ref() .unref() .close()
//        uv_poll on the fd: readiness comes from the event loop, not the threadpool.
//        .spin(us): for up to us, the loop polls without sleeping (see Spin below)
#include <fcntl.h>
#include <napi.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <cstring>
#include <vector>

#include "addon.h"
#include "errors.h"
#include "util.h"

namespace pmp {

namespace {

#if !defined(__linux__)
void SetCloexec(int fd) { fcntl(fd, F_SETFD, FD_CLOEXEC); }
#endif

Napi::Value PairToArray(Napi::Env env, const int fds[2]) {
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, fds[0]));
  out.Set(1u, Napi::Number::New(env, fds[1]));
  return out;
}

Napi::Value Pipe(const Napi::CallbackInfo& info) {
  int fds[2];
#if defined(__linux__)
  if (pipe2(fds, O_CLOEXEC) != 0) ThrowSystemError(info.Env(), errno, "pipe2");
#else
  if (pipe(fds) != 0) ThrowSystemError(info.Env(), errno, "pipe");
  SetCloexec(fds[0]);
  SetCloexec(fds[1]);
#endif
  return PairToArray(info.Env(), fds);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  int fds[2];
  // seqpacket: message boundaries kept (the forkserver's control socket).
  const int type = info.Length() > 0 && info[0].ToBoolean() ? SOCK_SEQPACKET : SOCK_STREAM;
#if defined(__linux__)
  if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, fds) != 0) {
    ThrowSystemError(info.Env(), errno, "socketpair");
  }
#else
  if (socketpair(AF_UNIX, type, 0, fds) != 0) ThrowSystemError(info.Env(), errno, "socketpair");
  SetCloexec(fds[0]);
  SetCloexec(fds[1]);
#endif
  return PairToArray(info.Env(), fds);
}

int FdArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "fd must be a number");
  int fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(info.Env(), "fd must be >= 0");
  return fd;
}

// (buf, off, len) at info[i..i+2], checked against the view's bounds.
struct Span {
  uint8_t* data;
  size_t length;
};

Span SpanArg(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  if (info.Length() <= i + 2 || !info[i].IsTypedArray() || !info[i + 1].IsNumber() || !info[i + 2].IsNumber()) {
    throw Napi::TypeError::New(env, "expected (Uint8Array, offset, length)");
  }
  Napi::TypedArray view = info[i].As<Napi::TypedArray>();
  if (view.TypedArrayType() != napi_uint8_array) throw Napi::TypeError::New(env, "buffer must be a Uint8Array");
  double off = info[i + 1].As<Napi::Number>().DoubleValue();
  double len = info[i + 2].As<Napi::Number>().DoubleValue();
  double size = static_cast<double>(view.ByteLength());
  if (!(off >= 0) || !(len >= 0) || off + len > size) throw Napi::RangeError::New(env, "offset/length out of range");
  auto* base = static_cast<uint8_t*>(view.ArrayBuffer().Data()) + view.ByteOffset();
  return {base + static_cast<size_t>(off), static_cast<size_t>(len)};
}

bool WouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

Napi::Value SetNonblocking(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  bool on = info.Length() < 2 || info[1].ToBoolean().Value();
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) ThrowSystemError(info.Env(), errno, "fcntl");
  int next = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (next != flags && fcntl(fd, F_SETFL, next) < 0) ThrowSystemError(info.Env(), errno, "fcntl");
  return info.Env().Undefined();
}

// A close-on-exec duplicate: an fd queued for sending must stay valid even if
// its Connection is closed before the kernel takes the message.
Napi::Value Dup(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) ThrowSystemError(info.Env(), errno, "fcntl");
  return Napi::Number::New(info.Env(), copy);
}

double SpinArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return 0;
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "spinUs must be a number");
  double us = info[i].As<Napi::Number>().DoubleValue();
  return us > 0 ? us : 0;
}

// Calls attempt() (a non-blocking read: -1 with errno on failure) until it
// does not report "would block" or spinUs have passed. Waking a sleeping
// thread costs 10-20 us, and a syscall on this kind of VM several us, so when
// the answer is near, asking again now (one syscall that returns the data) is
// cheaper than poll() and then read(). Bounded by spinUs; the caller's policy
// (src/spin.ts) chooses it, and does not spin at all on a loaded machine.
//
// A long spin offers the CPU to others now and then (SpinYield): on a busy
// machine the peer we wait for may need it. Not at every try: sched_yield is
// a syscall too (about 1 us on this VM), which doubles the gap between two
// reads (a warm sync round trip measured 17-18 us yielding at every try, 16
// without). Nor early: when another thread wants the CPU, sched_yield returns
// only after its time slice, milliseconds, and the 30 us an async recv()
// holds the loop (src/connection.ts) became 3.7 ms at the 90th percentile
// with four busy loops on two CPUs while it yielded every 16th try.
constexpr int64_t kYieldEveryNs = 50'000;

// A sched_yield() that returns late is direct evidence that another thread
// wanted this CPU, where spinning on takes time from others (the peer perhaps
// among them) and each further yield may cost a slice: the spin ends and the
// caller sleeps. Only this spin: on a VM a yield now and then returns late
// with the machine otherwise idle (host preemption, kernel threads), and
// turning spinning off process-wide on such evidence (tried: for 1 s after
// one late yield) made a pipe round trip 30-70 us instead of 16-20.
constexpr int64_t kYieldLateNs = 50'000;

class SpinYield {
 public:
  explicit SpinYield(int64_t start) : next_(start + kYieldEveryNs) {}

  // Called between tries: yields when due. Returns whether to spin on.
  bool Tick(int64_t now) {
    if (now < next_) return true;
    sched_yield();
    const int64_t after = NowNs();
    next_ = after + kYieldEveryNs;
    return after - now < kYieldLateNs;
  }

 private:
  int64_t next_;
};

template <typename F>
ssize_t SpinRead(double spin_us, F&& attempt) {
  ssize_t n = RetryEintr(attempt);
  if (n >= 0 || !WouldBlock(errno) || spin_us <= 0) return n;
  const int64_t start = NowNs();
  const int64_t end = start + static_cast<int64_t>(spin_us * 1e3);
  SpinYield yield(start);
  for (;;) {
    n = RetryEintr(attempt);
    if (n >= 0 || !WouldBlock(errno)) return n;
    const int64_t now = NowNs();
    if (now >= end || !yield.Tick(now)) break;
  }
  errno = EAGAIN;
  return -1;
}

Napi::Value Read(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  Span span = SpanArg(info, 1);
  double spin = SpinArg(info, 4);
  ssize_t n = SpinRead(spin, [&] { return read(fd, span.data, span.length); });
  if (n < 0) {
    if (WouldBlock(errno)) return Napi::Number::New(info.Env(), -1);
    // A reset peer is an end of stream for the reader, as for a pipe.
    if (errno == ECONNRESET) return Napi::Number::New(info.Env(), 0);
    ThrowSystemError(info.Env(), errno, "read");
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

// Reads with recvmsg so that fds sent along (SCM_RIGHTS) are received rather
// than silently closed by the kernel, as read() would do.
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Span span = SpanArg(info, 1);
  if (info.Length() < 5 || !info[4].IsArray()) throw Napi::TypeError::New(env, "fdsOut must be an array");
  Napi::Array out = info[4].As<Napi::Array>();
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
  struct iovec iov = {span.data, span.length};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  int flags = 0;
#if defined(__linux__)
  flags |= MSG_CMSG_CLOEXEC;
#endif
  double spin = info.Length() > 5 && info[5].IsNumber() && info[5].As<Napi::Number>().DoubleValue() < 0 ? -1 : SpinArg(info, 5);
  ssize_t n;
  if (spin < 0) {
    const StopProbe probe(env);
    if (!probe.sliced()) {
      n = RetryEintr([&] { return recvmsg(fd, &msg, flags); });  // waits only on a blocking fd
    } else {
      // A worker thread: the same wait, in slices, so that it ends when the
      // worker is being terminated (then -1, "would block": its JS does not run on).
      for (;;) {
        msg.msg_controllen = sizeof(control);
        n = RetryEintr([&] { return recvmsg(fd, &msg, flags | MSG_DONTWAIT); });
        if (n >= 0 || !WouldBlock(errno)) break;
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && (fl & O_NONBLOCK)) break;  // a non-blocking fd does not wait
        struct pollfd p = {fd, POLLIN, 0};
        int r = PollOne(&p, -1, probe);
        if (r <= 0) {
          if (r == 0) errno = EAGAIN;
          break;
        }
      }
    }
  } else {
    flags |= MSG_DONTWAIT;
    n = SpinRead(spin, [&] {
      msg.msg_controllen = sizeof(control);  // recvmsg shrinks it to what it filled
      return recvmsg(fd, &msg, flags);
    });
  }
  if (n < 0) {
    if (WouldBlock(errno)) return Napi::Number::New(env, -1);
    if (errno == ECONNRESET) return Napi::Number::New(env, 0);
    ThrowSystemError(env, errno, "recvmsg");
  }
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const auto* fds = reinterpret_cast<const int*>(CMSG_DATA(c));
    for (size_t k = 0; k < count; k++) {
      int received;
      memcpy(&received, fds + k, sizeof(int));
#if !defined(__linux__)
      fcntl(received, F_SETFD, FD_CLOEXEC);
#endif
      out.Set(out.Length(), Napi::Number::New(env, received));
    }
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  Span span = SpanArg(info, 1);
  ssize_t n = RetryEintr([&] { return write(fd, span.data, span.length); });
  if (n < 0) {
    if (WouldBlock(errno)) return Napi::Number::New(info.Env(), -1);
    ThrowSystemError(info.Env(), errno, "write");
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Span span = SpanArg(info, 1);
  if (info.Length() < 5 || !info[4].IsArray()) throw Napi::TypeError::New(env, "fds must be an array");
  Napi::Array list = info[4].As<Napi::Array>();
  std::vector<int> fds;
  for (uint32_t k = 0; k < list.Length(); k++) {
    Napi::Value v = list.Get(k);
    if (!v.IsNumber() || v.As<Napi::Number>().Int32Value() < 0) throw Napi::TypeError::New(env, "fds must hold fds");
    fds.push_back(v.As<Napi::Number>().Int32Value());
  }
  if (fds.size() > 64) throw Napi::RangeError::New(env, "at most 64 fds per message");
  if (span.length == 0 && !fds.empty()) throw Napi::RangeError::New(env, "fds need at least one byte to travel with");
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
  struct iovec iov = {span.data, span.length};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    memset(control, 0, sizeof(control));
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  int flags = MSG_DONTWAIT;
#if defined(MSG_NOSIGNAL)
  flags |= MSG_NOSIGNAL;
#endif
  ssize_t n = RetryEintr([&] { return sendmsg(fd, &msg, flags); });
  if (n < 0) {
    if (WouldBlock(errno)) return Napi::Number::New(env, -1);
    ThrowSystemError(env, errno, "sendmsg");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// Blocks the calling thread up to timeoutMs (negative: no limit) until the fd
// is ready; 0 on timeout. Used by the Sync methods only.
//
// With spinUs > 0 it first asks poll() with a zero timeout, over and over, for
// up to spinUs: waking a sleeping thread costs 10-20 us, and in a
// request/response loop the answer often arrives sooner than that. The spin
// is bounded by spinUs and by the deadline, so the caller's timeout holds and a
// spin can not turn into an unbounded busy wait. How long to spin is the
// caller's policy (src/spin.ts).
Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int want = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 1;
  double timeout = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : -1;
  double spin = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 0;
  const int64_t start = NowNs();
  const int64_t deadline = timeout < 0 ? -1 : start + static_cast<int64_t>(timeout * 1e6);
  int64_t spin_end = spin > 0 ? start + static_cast<int64_t>(spin * 1e3) : start;
  if (deadline >= 0 && spin_end > deadline) spin_end = deadline;
  struct pollfd p = {fd, static_cast<short>(((want & 1) ? POLLIN : 0) | ((want & 2) ? POLLOUT : 0)), 0};
  bool spinning = spin_end > start;
  SpinYield yield(start);
  const StopProbe probe(env);
  for (;;) {
    int t = 0;
    bool last = true;  // whether a timeout of this poll is the caller's
    if (spinning) {
      spinning = NowNs() < spin_end;
    }
    if (!spinning) {
      int64_t left_ns = deadline < 0 ? -1 : deadline - NowNs();
      if (deadline >= 0 && left_ns < 0) left_ns = 0;
      // Round up: a timeout must not end a fraction of a millisecond early.
      int64_t left = left_ns < 0 ? -1 : (left_ns + 999999) / 1000000;
      int64_t step = probe.Slice(left);  // a worker thread sleeps in slices
      last = step == left;
      t = step < 0 ? -1 : (step > 2000000000 ? 2000000000 : static_cast<int>(step));
      if (t == 2000000000) last = false;
    }
    int r = poll(&p, 1, t);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) ThrowSystemError(env, errno, "poll");
    if (r == 0 && spinning) {
      if (!yield.Tick(NowNs())) spinning = false;
      continue;
    }
    // A slice ran out: go on, unless the worker is being terminated (then 0,
    // as a timeout; its JS does not run on).
    if (r == 0 && !last && !probe.Stopping()) continue;
    int out = 0;
    if (p.revents & POLLIN) out |= 1;
    if (p.revents & POLLOUT) out |= 2;
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) out |= 4;
    return Napi::Number::New(env, out);
  }
}

// Watches an fd from the event loop. The callback runs through MakeCallback so
// promise reactions queued in it run before the loop moves on.
class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher",
                       {InstanceMethod<&FdWatcher::Start>("start"), InstanceMethod<&FdWatcher::Stop>("stop"),
                        InstanceMethod<&FdWatcher::RefLoop>("ref"), InstanceMethod<&FdWatcher::UnrefLoop>("unref"),
                        InstanceMethod<&FdWatcher::Spin>("spin"), InstanceMethod<&FdWatcher::Close>("close")});
  }

  explicit FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info) {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0);
    if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "new FdWatcher(fd, onEvents)");
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "no event loop");
    poll_ = new uv_poll_t;
    int err = uv_poll_init(loop, poll_, fd);
    if (err != 0) {
      delete poll_;
      poll_ = nullptr;
      ThrowSystemError(env, -err, "uv_poll_init");
    }
    poll_->data = this;
    napi_add_env_cleanup_hook(env, CleanupHook, this);
    hook_added_ = true;
  }

  ~FdWatcher() override {
    CloseHandle();
    if (hook_added_) napi_remove_env_cleanup_hook(Env(), CleanupHook, this);
  }

 private:
  static void OnEvents(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<FdWatcher*>(handle->data);
    if (self == nullptr) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    int out = 0;
    if (status < 0) out |= 4;
    if (events & UV_READABLE) out |= 1;
    if (events & UV_WRITABLE) out |= 2;
    if (events & UV_DISCONNECT) out |= 4;
    // What the spin waited for has come: let the loop sleep again.
    if (out & (1 | 4)) self->StopSpin();
    try {
      self->callback_.MakeCallback(env.Global(), {Napi::Number::New(env, out)});
    } catch (const Napi::Error& e) {
      // An exception in the handler must surface like any uncaught exception.
      napi_fatal_exception(env, e.Value());
    }
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (poll_ == nullptr) throw Napi::Error::New(info.Env(), "FdWatcher is closed");
    int want = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 1;
    int events = ((want & 1) ? UV_READABLE : 0) | ((want & 2) ? UV_WRITABLE : 0);
    int err = uv_poll_start(poll_, events, OnEvents);
    if (err != 0) ThrowSystemError(info.Env(), -err, "uv_poll_start");
    if (!active_) {
      active_ = true;
      Ref();  // the callback must find the wrapper alive while watching
    }
    return info.Env().Undefined();
  }

  // Whether the watch keeps the event loop alive. An idle watch stays
  // registered but unref'd: stopping and restarting it would cost two
  // epoll_ctl calls per message.
  Napi::Value RefLoop(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }

  Napi::Value UnrefLoop(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }

  // spin(us): for up to us microseconds (0 stops), the event loop does not
  // sleep: an idle handle makes libuv poll with a zero timeout, so input on
  // the fd is seen about a microsecond after it arrives instead of after a
  // 10-20 us wake-up. The loop is not blocked: every iteration still runs
  // timers, I/O callbacks and immediates; it only burns CPU, and only until
  // the deadline (checked at each iteration) or the first readable event.
  // The idle handle is unref'd: a spin never keeps the process alive.
  Napi::Value Spin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double us = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
    if (poll_ == nullptr || !(us > 0)) {
      StopSpin();
      return env.Undefined();
    }
    if (idle_ == nullptr) {
      idle_ = new uv_idle_t;
      uv_idle_init(poll_->loop, idle_);
      idle_->data = this;
      uv_unref(reinterpret_cast<uv_handle_t*>(idle_));
    }
    const int64_t now = NowNs();
    spin_until_ = now + static_cast<int64_t>(us * 1e3);
    yield_ = SpinYield(now);
    uv_idle_start(idle_, OnIdle);
    return env.Undefined();
  }

  static void OnIdle(uv_idle_t* handle) {
    auto* self = static_cast<FdWatcher*>(handle->data);
    const int64_t now = NowNs();
    // As in SpinRead: offer the CPU now and then, and stop spinning when
    // others turn out to want it.
    if (self == nullptr || now >= self->spin_until_ || !self->yield_.Tick(now)) uv_idle_stop(handle);
  }

  void StopSpin() {
    if (idle_ != nullptr) uv_idle_stop(idle_);
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_poll_stop(poll_);
    StopSpin();
    Deactivate();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseHandle();
    Deactivate();
    if (hook_added_) {
      napi_remove_env_cleanup_hook(info.Env(), CleanupHook, this);
      hook_added_ = false;
    }
    return info.Env().Undefined();
  }

  void Deactivate() {
    if (active_) {
      active_ = false;
      Unref();
    }
  }

  // The fd stays open: it belongs to the Connection, which closes it after this.
  void CloseHandle() {
    if (idle_ != nullptr) {
      uv_idle_stop(idle_);
      idle_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(idle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
      idle_ = nullptr;
    }
    if (poll_ == nullptr) return;
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }

  static void CleanupHook(void* arg) {
    auto* self = static_cast<FdWatcher*>(arg);
    self->hook_added_ = false;
    self->CloseHandle();
  }

  Napi::FunctionReference callback_;
  uv_poll_t* poll_ = nullptr;
  uv_idle_t* idle_ = nullptr;
  int64_t spin_until_ = 0;
  SpinYield yield_{0};
  bool active_ = false;
  bool hook_added_ = false;
};

}  // namespace

void InitPipe(Napi::Env env, Napi::Object exports, AddonData* data) {
  exports.Set("pipe", Napi::Function::New<Pipe>(env, "pipe"));
  exports.Set("socketpair", Napi::Function::New<SocketPair>(env, "socketpair"));
  exports.Set("setNonblocking", Napi::Function::New<SetNonblocking>(env, "setNonblocking"));
  exports.Set("dup", Napi::Function::New<Dup>(env, "dup"));
  exports.Set("read", Napi::Function::New<Read>(env, "read"));
  exports.Set("recvmsg", Napi::Function::New<RecvMsg>(env, "recvmsg"));
  exports.Set("write", Napi::Function::New<Write>(env, "write"));
  exports.Set("sendmsg", Napi::Function::New<SendMsg>(env, "sendmsg"));
  exports.Set("poll", Napi::Function::New<Poll>(env, "poll"));
  exports.Set("FdWatcher", FdWatcher::Define(env));
}

}  // namespace pmp
