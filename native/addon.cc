// Module entry point. Each facility registers its functions and classes on the
// exports object; per-environment state lives in AddonData so the addon loads in
// worker threads and in several environments at once, and is torn down by the
// environment's cleanup hook.
#include "addon.h"

namespace pmp {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  InitProcess(env, exports, data);
  InitPipe(env, exports, data);
  InitShm(env, exports, data);
  InitFutex(env, exports, data);
  InitSemaphore(env, exports, data);
  InitFdShare(env, exports, data);
  InitTracker(env, exports, data);
  InitForkserver(env, exports, data);
  return exports;
}

}  // namespace pmp

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return pmp::Init(env, exports); }

NODE_API_MODULE(posix_multiprocessing, InitAddon)
