// Shared declarations for the addon's facilities: the per-environment state and
// each facility's init function.
#pragma once

#include <napi.h>
#include <sys/types.h>

#include <string>

namespace pmp {

class AsyncWaits;
struct SemState;
struct OwnedSegments;

// Per-environment state: one per Node environment (main thread or worker).
// Napi::Env::SetInstanceData deletes it when the environment is torn down.
struct AddonData {
  Napi::FunctionReference futex_wait_handle_ctor;
  AsyncWaits* futex = nullptr;  // futex.cc; never freed: waiter threads may outlive the environment
  Napi::FunctionReference sem_wait_handle_ctor;
  SemState* sem = nullptr;  // semaphore.cc; never freed, as futex
  OwnedSegments* segments = nullptr;  // shm.cc; freed by its cleanup hook
};

// reaper.cc: takes over a child of this process that nobody will reap any
// more (its ExitWatcher's environment is going away); it is reaped when it
// exits. watch_fd (its pidfd, or the watcher's kqueue, or -1) is the reaper's
// to use or close. Callable from any thread, cleanup hooks included.
void ReapLater(pid_t pid, int watch_fd);

// tracker.cc: writes one line to the resource tracker's pipe, whole or not at
// all: 0, or an errno (EBADF: no tracker; EAGAIN: the pipe is full; EPIPE:
// the tracker is gone). Callable from any thread.
int TrackerWriteLine(const std::string& line);

void InitProcess(Napi::Env env, Napi::Object exports, AddonData* data);
void InitPipe(Napi::Env env, Napi::Object exports, AddonData* data);
void InitShm(Napi::Env env, Napi::Object exports, AddonData* data);
void InitFutex(Napi::Env env, Napi::Object exports, AddonData* data);
void InitSemaphore(Napi::Env env, Napi::Object exports, AddonData* data);
void InitFdShare(Napi::Env env, Napi::Object exports, AddonData* data);
void InitTracker(Napi::Env env, Napi::Object exports, AddonData* data);
void InitForkserver(Napi::Env env, Napi::Object exports, AddonData* data);

}  // namespace pmp
