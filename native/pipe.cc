// Pipes and socketpairs, created natively so their fds can be placed in a child
// (spawn's keepFds) or passed later. Both ends are close-on-exec: an fd reaches
// a child only when it is asked for.
//
//   pipe() -> [readFd, writeFd]
//   socketpair() -> [fd, fd]            AF_UNIX, SOCK_STREAM
#include <fcntl.h>
#include <napi.h>
#include <sys/socket.h>
#include <unistd.h>

#include "addon.h"
#include "errors.h"

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
#if defined(__linux__)
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    ThrowSystemError(info.Env(), errno, "socketpair");
  }
#else
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) ThrowSystemError(info.Env(), errno, "socketpair");
  SetCloexec(fds[0]);
  SetCloexec(fds[1]);
#endif
  return PairToArray(info.Env(), fds);
}

}  // namespace

void InitPipe(Napi::Env env, Napi::Object exports, AddonData* data) {
  exports.Set("pipe", Napi::Function::New<Pipe>(env, "pipe"));
  exports.Set("socketpair", Napi::Function::New<SocketPair>(env, "socketpair"));
}

}  // namespace pmp
