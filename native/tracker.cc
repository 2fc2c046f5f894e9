// The resource tracker's pipe, one per process: the thread (main or worker)
// that first starts or adopts the tracker records its write end here, and
// every environment of the process writes to that fd. No environment closes
// it, a worker's teardown included: it stays open until the process exits,
// and that (the EOF it adds up to) is how the tracker learns the tree is gone.
//
//   trackerPipe() -> [fd, ino, pid] | null        pid 0: started by a parent
//   trackerSetPipe(fd, pid, ino?) -> [fd, ino, pid] | null
//        records fd unless a pipe is recorded already, and returns the
//        recorded one (when it is not fd, the caller closes fd). With ino, fd
//        was inherited: it must be a FIFO with that inode, else null and
//        nothing is recorded. The recorded fd is made close-on-exec (children
//        get it only through spawn's keepFds) and non-blocking (a full pipe
//        is an answer, not a stall).
//   pipeBuf                                       PIPE_BUF: a write of at most
//        this many bytes goes into a pipe whole, never mixed with another's
//
// TrackerWriteLine (addon.h) writes one line from native code, for the work an
// environment's teardown does without JS (shm.cc's owned segments).
#include <fcntl.h>
#include <limits.h>
#include <napi.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "addon.h"
#include "errors.h"

namespace pmp {

namespace {

pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
int pipe_fd = -1;
double pipe_ino = 0;
int tracker_pid = 0;

Napi::Value Recorded(Napi::Env env) {
  if (pipe_fd < 0) return env.Null();
  Napi::Array out = Napi::Array::New(env, 3);
  out.Set(0u, Napi::Number::New(env, pipe_fd));
  out.Set(1u, Napi::Number::New(env, pipe_ino));
  out.Set(2u, Napi::Number::New(env, tracker_pid));
  return out;
}

Napi::Value TrackerPipe(const Napi::CallbackInfo& info) {
  pthread_mutex_lock(&mu);
  Napi::Value out = Recorded(info.Env());
  pthread_mutex_unlock(&mu);
  return out;
}

Napi::Value TrackerSetPipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "trackerSetPipe(fd, pid, ino?)");
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  const int pid = info[1].As<Napi::Number>().Int32Value();
  const bool inherited = info.Length() > 2 && info[2].IsNumber();
  if (fd < 0) throw Napi::RangeError::New(env, "fd must be a non-negative integer");
  pthread_mutex_lock(&mu);
  if (pipe_fd < 0) {
    struct stat st;
    bool usable = fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
    if (usable && inherited) usable = static_cast<double>(st.st_ino) == info[2].As<Napi::Number>().DoubleValue();
    if (usable) {
      fcntl(fd, F_SETFD, FD_CLOEXEC);
      const int flags = fcntl(fd, F_GETFL);
      if (flags >= 0 && !(flags & O_NONBLOCK)) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
      pipe_fd = fd;
      pipe_ino = static_cast<double>(st.st_ino);
      tracker_pid = pid > 0 ? pid : 0;
    }
  }
  Napi::Value out = Recorded(env);
  pthread_mutex_unlock(&mu);
  return out;
}

}  // namespace

int TrackerWriteLine(const std::string& line) {
  if (line.size() > PIPE_BUF) return E2BIG;
  pthread_mutex_lock(&mu);
  const int fd = pipe_fd;
  pthread_mutex_unlock(&mu);
  if (fd < 0) return EBADF;
  // Non-blocking, at most PIPE_BUF: whole or not at all. A full pipe loses the
  // line; the tracker then finds the name at the end of the tree instead.
  ssize_t n = RetryEintr([&] { return write(fd, line.data(), line.size()); });
  if (n == static_cast<ssize_t>(line.size())) return 0;
  return n < 0 ? errno : EAGAIN;
}

void InitTracker(Napi::Env env, Napi::Object exports, AddonData* data) {
  exports.Set("trackerPipe", Napi::Function::New<TrackerPipe>(env, "trackerPipe"));
  exports.Set("trackerSetPipe", Napi::Function::New<TrackerSetPipe>(env, "trackerSetPipe"));
  exports.Set("pipeBuf", Napi::Number::New(env, PIPE_BUF));
}

}  // namespace pmp
