// Turns an errno into a JS error with Node's system-error shape
// ({ code, errno, syscall, path? }), so callers can switch on err.code exactly
// as they do for fs and net errors. errno is negative, as libuv reports it.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace pmp {

inline Napi::Error SystemError(Napi::Env env, int err, const char* syscall,
                               const std::string& path = std::string()) {
  const char* code = uv_err_name(-err);
  std::string message = std::string(syscall) + " " + code + ": " + strerror(err);
  if (!path.empty()) message += " '" + path + "'";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) error.Set("path", Napi::String::New(env, path));
  return error;
}

[[noreturn]] inline void ThrowSystemError(Napi::Env env, int err, const char* syscall,
                                          const std::string& path = std::string()) {
  throw SystemError(env, err, syscall, path);
}

// Retries a syscall interrupted by a signal; every blocking call goes through it.
template <typename F>
inline auto RetryEintr(F&& f) -> decltype(f()) {
  decltype(f()) r;
  do {
    r = f();
  } while (r == -1 && errno == EINTR);
  return r;
}

}  // namespace pmp
