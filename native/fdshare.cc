// The fd sharer: how an fd reaches another process through a channel that
// cannot carry one (a queue in shared memory, the pool's libuv stream, a
// one-way pipe). The idea is CPython's multiprocessing/resource_sharer.py: the
// sender keeps a duplicate of the fd under a key and serves it over a Unix
// socket; the message carries only (address, key); the receiver connects,
// presents the key and gets the fd with SCM_RIGHTS.
//
//   fdShareOffer(fd) -> [address, key]   dup fd and keep it until claimed
//   fdShareWithdraw(key) -> bool          close an offer nobody will claim
//   fdShareFetch(address, key, timeoutMs) -> fd   (blocking, bounded by timeoutMs per step; in a
//                                          worker thread, -1 as soon as the worker is being terminated)
//   fdShareOwnFds() -> [fd, ...]          the sharer's own fds (leak checks)
//   fdShareHeld() -> n                    offers not yet claimed
//
// One sharer per process, started on the first offer. It is served by a
// dedicated thread, not the event loop: the sender's loop may be busy, or
// blocked in a sync call (a getSync on the queue that the receiver is about to
// answer through), and the receiver must still get its fd. The thread stops,
// and unclaimed duplicates are closed, when the last environment (main thread
// or worker) that loaded the addon is torn down; at a plain exit the kernel
// closes them.
//
// Only a peer of our own effective uid is served (SO_PEERCRED / getpeereid), and
// the receiver checks the server the same way: such a peer could reach our fds
// through /proc anyway, anyone else gets EPERM. Each offer is handed out once.
//
// Linux: the socket is in the abstract namespace (nothing on disk to clean up;
// it vanishes with the process, so a receiver of a dead sender gets
// ECONNREFUSED at once). Elsewhere: a socket file in a private 0700 directory,
// removed when the sharer stops and at exit.
#include <fcntl.h>
#include <napi.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include "addon.h"
#include "errors.h"
#include "util.h"

namespace pmp {

namespace {

// Request: magic, key. Reply: a status (0 or an errno), the fd alongside when 0.
constexpr uint32_t kMagic = 0x706d7046;  // "pmpF"
struct Request {
  uint32_t magic;
  uint32_t reserved;
  uint64_t key;
};

// How long the server waits for one client's request (a client of our uid that
// connects and says nothing delays the others by at most this).
constexpr int kServeTimeoutMs = 1000;

#if defined(__linux__)
constexpr int kSendFlags = MSG_NOSIGNAL;
#else
constexpr int kSendFlags = 0;
#endif

struct Sharer {
  std::mutex mu;
  bool running = false;
  int listen_fd = -1;
  int wake[2] = {-1, -1};
  std::string address;  // "@name" (Linux abstract) or a path
  std::string dir;      // the private directory holding the socket file (not Linux)
  std::thread thread;
  std::unordered_map<uint64_t, int> offers;
  uint64_t next_key = 1;
  int envs = 0;
};

// Never destroyed: a joinable std::thread in a static destructor would abort.
Sharer* const g = new Sharer();

void CloseQuietly(int fd) {
  if (fd >= 0) close(fd);
}

void SetTimeouts(int fd, int ms) {
  struct timeval tv;
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
#if defined(SO_NOSIGPIPE)
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
}

#if !defined(__linux__)
void SetCloexec(int fd) { fcntl(fd, F_SETFD, FD_CLOEXEC); }
#endif

// The uid of the process at the other end of a connected Unix socket.
bool PeerUid(int fd, uid_t* uid) {
#if defined(__linux__)
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  *uid = cred.uid;
  return true;
#else
  gid_t gid;
  return getpeereid(fd, uid, &gid) == 0;
#endif
}

// address -> sockaddr_un; false when it does not fit.
bool MakeAddr(const std::string& address, struct sockaddr_un* addr, socklen_t* len) {
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (address.size() + 1 > sizeof addr->sun_path) return false;
#if defined(__linux__)
  if (!address.empty() && address[0] == '@') {
    // Abstract: a leading NUL, and the length says where the name ends.
    addr->sun_path[0] = '\0';
    memcpy(addr->sun_path + 1, address.data() + 1, address.size() - 1);
    *len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + address.size());
    return true;
  }
#endif
  memcpy(addr->sun_path, address.data(), address.size());
  *len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + address.size() + 1);
  return true;
}

bool SendStatus(int conn, int32_t status, int fd) {
  struct iovec iov = {&status, sizeof status};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int));
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  return RetryEintr([&] { return sendmsg(conn, &msg, kSendFlags); }) == static_cast<ssize_t>(sizeof status);
}

// One client: check who it is, read its key, hand over the fd (once).
void Serve(int conn) {
  SetTimeouts(conn, kServeTimeoutMs);
  uid_t uid;
  if (!PeerUid(conn, &uid) || uid != geteuid()) {
    SendStatus(conn, EPERM, -1);
    return;
  }
  Request req;
  ssize_t n = RetryEintr([&] { return recv(conn, &req, sizeof req, MSG_WAITALL); });
  if (n != static_cast<ssize_t>(sizeof req) || req.magic != kMagic) {
    SendStatus(conn, EPROTO, -1);
    return;
  }
  int fd = -1;
  {
    std::lock_guard<std::mutex> lock(g->mu);
    auto it = g->offers.find(req.key);
    if (it != g->offers.end()) {
      fd = it->second;
      g->offers.erase(it);
    }
  }
  SendStatus(conn, fd >= 0 ? 0 : ENOENT, fd);
  // Once sent, the kernel holds its own reference until the receiver takes it;
  // if sending failed the receiver is gone, and nobody else may claim the key.
  CloseQuietly(fd);
}

void Loop(int listen_fd, int wake_fd) {
  for (;;) {
    struct pollfd p[2] = {{listen_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    if (RetryEintr([&] { return poll(p, 2, -1); }) < 0) return;
    if (p[1].revents != 0) return;
    if (!(p[0].revents & POLLIN)) continue;
#if defined(__linux__)
    int conn = RetryEintr([&] { return accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC); });
#else
    int conn = RetryEintr([&] { return accept(listen_fd, nullptr, nullptr); });
    if (conn >= 0) {
      SetCloexec(conn);
      // Accepted sockets inherit O_NONBLOCK from the listener on BSDs.
      fcntl(conn, F_SETFL, fcntl(conn, F_GETFL) & ~O_NONBLOCK);
    }
#endif
    if (conn < 0) continue;  // the client gave up, or fds ran out: serve the next
    Serve(conn);
    close(conn);
  }
}

std::string RandomHex() {
  std::random_device rd;
  char buf[17];
  snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return buf;
}

// Called with g->mu held. Returns 0 or an errno; *syscall names the failed call.
int StartLocked(const char** syscall) {
  if (g->running) return 0;
  std::string address;
#if defined(__linux__)
  address = "@pmp-fds-" + std::to_string(getpid()) + "-" + RandomHex();
#else
  const char* tmp = getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp");
  if (templ.back() != '/') templ += '/';
  templ += "pmp-fds-XXXXXX";
  std::vector<char> path(templ.begin(), templ.end());
  path.push_back('\0');
  if (mkdtemp(path.data()) == nullptr) {  // mkdtemp makes it 0700
    *syscall = "mkdtemp";
    return errno;
  }
  g->dir = path.data();
  address = g->dir + "/s";
#endif
  struct sockaddr_un addr;
  socklen_t len;
  int fd = -1;
  int err = 0;
  if (!MakeAddr(address, &addr, &len)) {
    *syscall = "bind";
    err = ENAMETOOLONG;
  } else {
#if defined(__linux__)
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
#else
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd >= 0) {
      SetCloexec(fd);
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
#endif
    if (fd < 0) {
      *syscall = "socket";
      err = errno;
    } else if (bind(fd, reinterpret_cast<struct sockaddr*>(&addr), len) != 0) {
      *syscall = "bind";
      err = errno;
    } else if (listen(fd, 128) != 0) {
      *syscall = "listen";
      err = errno;
    }
  }
  int wake[2] = {-1, -1};
  if (err == 0) {
#if defined(__linux__)
    if (pipe2(wake, O_CLOEXEC) != 0) {
#else
    if (pipe(wake) != 0) {
#endif
      *syscall = "pipe";
      err = errno;
    }
#if !defined(__linux__)
    else {
      SetCloexec(wake[0]);
      SetCloexec(wake[1]);
    }
#endif
  }
  if (err == 0) {
    try {
      g->thread = std::thread(Loop, fd, wake[0]);
    } catch (const std::system_error& e) {
      *syscall = "pthread_create";
      err = e.code().value();
    }
  }
  if (err != 0) {
    CloseQuietly(fd);
    CloseQuietly(wake[0]);
    CloseQuietly(wake[1]);
#if !defined(__linux__)
    unlink(address.c_str());
    rmdir(g->dir.c_str());
    g->dir.clear();
#endif
    return err;
  }
  g->listen_fd = fd;
  g->wake[0] = wake[0];
  g->wake[1] = wake[1];
  g->address = address;
  g->running = true;
  return 0;
}

void Stop() {
  std::thread thread;
  {
    std::lock_guard<std::mutex> lock(g->mu);
    if (!g->running) return;
    char byte = 1;
    RetryEintr([&] { return write(g->wake[1], &byte, 1); });
    thread = std::move(g->thread);
  }
  // Outside the lock: the thread takes it to look up a key.
  thread.join();
  std::lock_guard<std::mutex> lock(g->mu);
  CloseQuietly(g->listen_fd);
  CloseQuietly(g->wake[0]);
  CloseQuietly(g->wake[1]);
  g->listen_fd = g->wake[0] = g->wake[1] = -1;
  for (auto& offer : g->offers) CloseQuietly(offer.second);
  g->offers.clear();
#if !defined(__linux__)
  unlink(g->address.c_str());
  rmdir(g->dir.c_str());
  g->dir.clear();
#endif
  g->address.clear();
  g->running = false;
}

#if !defined(__linux__)
// process.exit() may skip environment teardown; the socket file must not stay.
void RemoveSocketFileAtExit() {
  if (!g->dir.empty()) {
    unlink(g->address.c_str());
    rmdir(g->dir.c_str());
  }
}
#endif

void CleanupEnv(void*) {
  bool last;
  {
    std::lock_guard<std::mutex> lock(g->mu);
    last = --g->envs == 0;
  }
  if (last) Stop();
}

Napi::Value Offer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "fd must be a number");
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(env, "fd must be >= 0");
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) ThrowSystemError(env, errno, "fcntl");
  std::string address;
  uint64_t key;
  {
    std::lock_guard<std::mutex> lock(g->mu);
    const char* syscall = "";
    int err = StartLocked(&syscall);
    if (err != 0) {
      close(copy);
      ThrowSystemError(env, err, syscall);
    }
    key = g->next_key++;
    g->offers.emplace(key, copy);
    address = g->address;
  }
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::String::New(env, address));
  out.Set(1u, Napi::Number::New(env, static_cast<double>(key)));
  return out;
}

uint64_t KeyArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "key must be a number");
  double key = info[i].As<Napi::Number>().DoubleValue();
  if (!(key >= 1) || key > 9007199254740991.0 || key != static_cast<double>(static_cast<uint64_t>(key))) {
    throw Napi::RangeError::New(info.Env(), "key must be a positive integer");
  }
  return static_cast<uint64_t>(key);
}

Napi::Value Withdraw(const Napi::CallbackInfo& info) {
  uint64_t key = KeyArg(info, 0);
  int fd = -1;
  {
    std::lock_guard<std::mutex> lock(g->mu);
    auto it = g->offers.find(key);
    if (it != g->offers.end()) {
      fd = it->second;
      g->offers.erase(it);
    }
  }
  CloseQuietly(fd);
  return Napi::Boolean::New(info.Env(), fd >= 0);
}

// Timeouts surface as ETIMEDOUT rather than EAGAIN, which would read as "try again".
[[noreturn]] void ThrowFetchError(Napi::Env env, int err, const char* syscall, const std::string& address) {
  if (err == EAGAIN || err == EWOULDBLOCK) err = ETIMEDOUT;
  ThrowSystemError(env, err, syscall, address);
}

Napi::Value Fetch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "address must be a string");
  std::string address = info[0].As<Napi::String>().Utf8Value();
  uint64_t key = KeyArg(info, 1);
  if (info.Length() < 3 || !info[2].IsNumber()) throw Napi::TypeError::New(env, "timeoutMs must be a number");
  int timeout_ms = info[2].As<Napi::Number>().Int32Value();
  if (timeout_ms <= 0) throw Napi::RangeError::New(env, "timeoutMs must be > 0");

  struct sockaddr_un addr;
  socklen_t len;
  if (!MakeAddr(address, &addr, &len)) ThrowSystemError(env, ENAMETOOLONG, "connect", address);
#if defined(__linux__)
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else
  int sock = socket(AF_UNIX, SOCK_STREAM, 0);
  if (sock >= 0) SetCloexec(sock);
#endif
  if (sock < 0) ThrowSystemError(env, errno, "socket");
  // Every step is bounded: a connect to a full backlog waits at most the send
  // timeout, the reply at most the receive timeout. A worker thread waits in
  // slices (StopProbe): a connect slice that runs out fails with EAGAIN and is
  // tried again, the reply is polled for; if the worker is being terminated
  // the fetch ends at once (-1: its JS does not run on).
  const StopProbe probe(env);
  SetTimeouts(sock, static_cast<int>(probe.Slice(timeout_ms)));
  int err = 0;
  const char* syscall = "";
  int received = -1;
  int32_t status = 0;
  bool stopping = false;
  do {
    const int64_t connect_deadline = NowMs() + timeout_ms;
    int r;
    for (;;) {
      r = RetryEintr([&] { return connect(sock, reinterpret_cast<struct sockaddr*>(&addr), len); });
      if (r == 0 || errno == EISCONN || !probe.sliced() || (errno != EAGAIN && errno != EWOULDBLOCK)) break;
      if (NowMs() >= connect_deadline) break;
      if ((stopping = probe.Stopping())) break;
    }
    if (stopping) break;
    if (r != 0 && errno != EISCONN) {
      err = errno;
      syscall = "connect";
      break;
    }
    uid_t uid;
    if (!PeerUid(sock, &uid)) {
      err = errno;
      syscall = "getsockopt";
      break;
    }
    if (uid != geteuid()) {
      err = EPERM;
      syscall = "connect";
      break;
    }
    Request req = {kMagic, 0, key};
    if (RetryEintr([&] { return send(sock, &req, sizeof req, kSendFlags); }) != static_cast<ssize_t>(sizeof req)) {
      err = errno;
      syscall = "send";
      break;
    }
    struct iovec iov = {&status, sizeof status};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
#if defined(__linux__)
    int flags = MSG_WAITALL | MSG_CMSG_CLOEXEC;
#else
    int flags = MSG_WAITALL;
#endif
    if (probe.sliced()) {
      struct pollfd p = {sock, POLLIN, 0};
      if (PollOne(&p, timeout_ms, probe) == 0 && (stopping = probe.Stopping())) break;
      // Ready, or the time ran out: recvmsg says which (EAGAIN: timed out).
      flags |= MSG_DONTWAIT;
    }
    ssize_t n = RetryEintr([&] { return recvmsg(sock, &msg, flags); });
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); n > 0 && c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
        memcpy(&received, CMSG_DATA(c), sizeof(int));
      }
    }
    if (n < 0) {
      err = errno;
      syscall = "recvmsg";
    } else if (n != static_cast<ssize_t>(sizeof status)) {
      // The sharer closed without answering: its process is going away.
      err = ECONNRESET;
      syscall = "recvmsg";
    } else if (status != 0) {
      err = status;
      syscall = "fdshare";  // the sharer's answer: ENOENT (no such offer), EPERM, EPROTO
    } else if (received < 0 || (msg.msg_flags & MSG_CTRUNC)) {
      err = EBADMSG;
      syscall = "recvmsg";
    }
  } while (false);
  close(sock);
  if (stopping) return Napi::Number::New(env, -1);
  if (err != 0) {
    CloseQuietly(received);
    ThrowFetchError(env, err, syscall, address);
  }
#if !defined(__linux__)
  SetCloexec(received);
#endif
  return Napi::Number::New(env, received);
}

Napi::Value OwnFds(const Napi::CallbackInfo& info) {
  Napi::Array out = Napi::Array::New(info.Env());
  std::lock_guard<std::mutex> lock(g->mu);
  if (g->running) {
    out.Set(0u, Napi::Number::New(info.Env(), g->listen_fd));
    out.Set(1u, Napi::Number::New(info.Env(), g->wake[0]));
    out.Set(2u, Napi::Number::New(info.Env(), g->wake[1]));
  }
  return out;
}

Napi::Value Held(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(g->mu);
  return Napi::Number::New(info.Env(), static_cast<double>(g->offers.size()));
}

}  // namespace

void InitFdShare(Napi::Env env, Napi::Object exports, AddonData* data) {
  {
    std::lock_guard<std::mutex> lock(g->mu);
    g->envs++;
#if !defined(__linux__)
    static bool at_exit = false;
    if (!at_exit) {
      at_exit = true;
      atexit(RemoveSocketFileAtExit);
    }
#endif
  }
  // data is unique per environment: Node refuses the same (hook, arg) twice.
  napi_add_env_cleanup_hook(env, CleanupEnv, data);
  exports.Set("fdShareOffer", Napi::Function::New(env, Offer, "fdShareOffer"));
  exports.Set("fdShareWithdraw", Napi::Function::New(env, Withdraw, "fdShareWithdraw"));
  exports.Set("fdShareFetch", Napi::Function::New(env, Fetch, "fdShareFetch"));
  exports.Set("fdShareOwnFds", Napi::Function::New(env, OwnFds, "fdShareOwnFds"));
  exports.Set("fdShareHeld", Napi::Function::New(env, Held, "fdShareHeld"));
}

}  // namespace pmp
