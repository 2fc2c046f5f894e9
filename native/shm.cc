// POSIX shared memory, syscall-shaped: policy (names, sizes, who unlinks) is the
// TypeScript layer's.
//
//   shmOpen(name, create, exclusive, mode) -> fd      (close-on-exec)
//   shmUnlink(name)
//   ftruncate(fd, size); fstatSize(fd) -> size
//   fallocate(fd, offset, length) -> true when the pages of that range now
//                          exist (posix_fallocate; the size grows to cover
//                          them); false where they cannot be allocated ahead
//                          (macOS, a filesystem without fallocate)
//   mmap(fd, size, ownFd) -> ArrayBuffer over MAP_SHARED memory; with ownFd the
//                          fd is closed together with the unmapping
//   unmap(buffer)          detaches an mmap() buffer: every view becomes length 0,
//                          then the memory is unmapped (and an owned fd closed).
//                          Idempotent; also done by GC. Any other ArrayBuffer is
//                          refused with a TypeError.
//   new Mapping(fd, size)  .buffer: ArrayBuffer over MAP_SHARED memory
//                          (callers keep size <= buffer.constants.MAX_LENGTH:
//                          N-API aborts the process on a longer external buffer)
//                          .unmap(): detaches .buffer (every view over it becomes
//                          length 0) and munmaps. Idempotent; also done by GC.
//   ownSegment(name, foreignWord, doneWord)   a heap segment of this
//                          environment (src/heap.ts): given up when the
//                          environment ends, see OwnedSegments below
//   disownSegment(name)    no longer this environment's to give up
//   releaseOwnedSegments() gives them all up now (the heap's exit hook)
//                          .populate(offset, length) -> true when the pages of
//                          that range now exist (MADV_POPULATE_WRITE, Linux
//                          5.14+); false where the kernel cannot do that
//
// The ArrayBuffer is external and not shared in V8's sense (N-API cannot make a
// SharedArrayBuffer over foreign memory): Atomics read-modify-write operations
// work on it and are real atomic instructions across processes, but
// Atomics.wait does not, which is why waiting is native (futex.cc).
#include <fcntl.h>
#include <napi.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "addon.h"
#include "errors.h"
#include "futex_service.h"

// Linux 5.14; headers from before it lack the name, kernels before it answer EINVAL.
#if defined(__linux__) && !defined(MADV_POPULATE_WRITE)
#define MADV_POPULATE_WRITE 23
#endif

namespace pmp {

namespace {

// A name in a stack buffer: one N-API call instead of Utf8Value's two (length,
// then copy) and a heap string; a create/attach/unlink cycle converts three.
struct Name {
  char text[512];  // names are at most 255 bytes (NAME_MAX); longer ones take the slow path
  std::string long_text;
  const char* c_str() const { return long_text.empty() ? text : long_text.c_str(); }
};

void NameArg(const Napi::CallbackInfo& info, size_t i, Name* out) {
  if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "name must be a string");
  size_t length = 0;
  napi_status status = napi_get_value_string_utf8(info.Env(), info[i], out->text, sizeof out->text, &length);
  if (status != napi_ok) throw Napi::Error::New(info.Env(), "cannot read name");
  // A full buffer may mean a cut name: read it whole (the OS will refuse it).
  if (length + 1 >= sizeof out->text) out->long_text = info[i].As<Napi::String>().Utf8Value();
  const char* text = out->c_str();
  size_t n = out->long_text.empty() ? length : out->long_text.size();
  if (std::memchr(text, '\0', n) != nullptr) throw Napi::TypeError::New(info.Env(), "name must not contain NUL");
}

int FdArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "fd must be a number");
  int fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(info.Env(), "fd must be >= 0");
  return fd;
}

size_t SizeArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "size must be a number");
  double size = info[i].As<Napi::Number>().DoubleValue();
  if (!(size >= 0) || size > 9007199254740991.0) throw Napi::RangeError::New(info.Env(), "size out of range");
  return static_cast<size_t>(size);
}

Napi::Value ShmOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Name name;
  NameArg(info, 0, &name);
  bool create = info.Length() > 1 && info[1].ToBoolean();
  bool exclusive = info.Length() > 2 && info[2].ToBoolean();
  mode_t mode = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Uint32Value() & 07777 : 0600;
  int flags = O_RDWR | (create ? O_CREAT : 0) | (exclusive ? O_EXCL : 0);
  int fd = RetryEintr([&] { return shm_open(name.c_str(), flags, mode); });
  if (fd < 0) ThrowSystemError(env, errno, "shm_open", name.c_str());
  // No fcntl(FD_CLOEXEC) here: POSIX requires shm_open to set it (glibc,
  // musl and macOS do), and a create+attach cycle is a dozen syscalls in all.
  if (create) {
    // The umask must not weaken or widen what the caller asked for.
    fchmod(fd, mode);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value ShmUnlink(const Napi::CallbackInfo& info) {
  Name name;
  NameArg(info, 0, &name);
  if (shm_unlink(name.c_str()) != 0) ThrowSystemError(info.Env(), errno, "shm_unlink", name.c_str());
  return info.Env().Undefined();
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  size_t size = SizeArg(info, 1);
  if (RetryEintr([&] { return ftruncate(fd, static_cast<off_t>(size)); }) != 0) {
    ThrowSystemError(info.Env(), errno, "ftruncate");
  }
  return info.Env().Undefined();
}

// A tmpfs page is allocated at the first touch of a sparse segment, and when
// /dev/shm is full that page fault is SIGBUS, which kills the process. So the
// package allocates pages before it hands them out, where a full /dev/shm is
// an ENOSPC it can throw. posix_fallocate extends the size only once every
// page is there, so a peer that waits for the size never maps missing pages.
//
// tmpfs abandons a fallocate (EINTR, undoing it) whenever a signal is pending:
// with signals blocked, a large one cannot be starved by a periodic signal such
// as a profiler's SIGPROF; they are delivered when the mask is restored. A
// small one ends long before the next such signal, and a retry does.
constexpr size_t kBlockSignalsAbove = 256 * 1024;

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  size_t offset = SizeArg(info, 1);
  size_t length = SizeArg(info, 2);
#if defined(__linux__)
  if (length == 0) return Napi::Boolean::New(env, true);
  bool block = length > kBlockSignalsAbove;
  sigset_t all, old;
  if (block) {
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
  }
  int err;
  do {
    err = posix_fallocate(fd, static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (err == EINTR);
  if (block) pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err == 0) return Napi::Boolean::New(env, true);
  if (err != EOPNOTSUPP && err != ENOSYS) ThrowSystemError(env, err, "posix_fallocate");
#else
  // macOS has no posix_fallocate, and F_PREALLOCATE does not apply to
  // shared-memory objects, whose pages come from anonymous memory there.
  (void)fd;
  (void)offset;
  (void)length;
#endif
  return Napi::Boolean::New(env, false);
}

Napi::Value FstatSize(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowSystemError(info.Env(), errno, "fstat");
  return Napi::Number::New(info.Env(), static_cast<double>(st.st_size));
}

// mmap() hands out an external ArrayBuffer (napi_create_external_arraybuffer)
// over the mapping. Its finalize hint is a small heap record of what the
// buffer holds; the record, not the address, decides what gets released, so
// a late finalizer can never munmap or close something that a later mmap() or
// open() reused:
//
//   unmap(buffer)  finds the record by the buffer's data address (see Live),
//                  marks it released, detaches the buffer (every view becomes
//                  length 0, so nothing in JS can reach the range any more),
//                  and only then munmaps and closes the owned fd.
//   finalizer      runs exactly once per buffer, on the JS thread, when the
//                  buffer is gone (collected, or detached and let go, or the
//                  environment is torn down); it munmaps/closes only if the
//                  record is not yet released, and deletes the record.
//
// The record is touched by unmap() only before the detach, so even a Node
// that ran the finalizer synchronously inside the detach could not make
// unmap() read a freed record. This stays within Node-API, so one prebuilt
// binary serves every Node major (V8's BackingStore API would tie it to one).
struct Record {
  void* addr;
  size_t length;
  int fd;  // closed with the mapping; -1 when the caller keeps it
  bool released = false;
};

// Buffers not yet released, by data address. While a record is here its range
// is still mapped, so no other mapping can share its address, and the only
// live, attached ArrayBuffer whose data is that address is the one mmap()
// made for it (JS cannot make another over foreign memory). So the address of
// an attached buffer finds its record without a wrapper object per buffer;
// napi_wrap would add a weak reference and a property to every mapping.
// Finalizers and unmap() run on the thread of the environment that made the
// buffer, and each worker has its own thread, hence thread_local.
thread_local std::unordered_map<void*, Record*> live;

// buffer.constants.MAX_LENGTH: Node's Buffer refuses a longer external
// buffer, and it differs between Node majors (2^32 in Node 20), so it is read
// from Node at load time rather than from V8's headers. Until then, and where
// process.getBuiltinModule is missing, 2^32 - 1 is below every major's limit.
thread_local double max_length = 4294967295.0;

// Every munmap first waits for the futex service's threads to leave kernel
// calls on words inside the range: a wake they take there is passed on
// through the word's address (futex_service.cc).
void Release(void* addr, size_t length, int fd) {
  FutexServiceForget(addr, length);
  munmap(addr, length);
  // Not retried on EINTR: on Linux the fd is gone even then.
  if (fd >= 0) close(fd);
}

void FinalizeMapping(napi_env env, void* data, void* hint) {
  Record* record = static_cast<Record*>(hint);
  if (!record->released) {
    live.erase(record->addr);
    Release(record->addr, record->length, record->fd);
  }
  delete record;
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  size_t size = SizeArg(info, 1);
  bool own_fd = info.Length() > 2 && info[2].ToBoolean();
  if (size == 0) throw Napi::RangeError::New(env, "cannot map 0 bytes");
  if (static_cast<double>(size) > max_length) throw Napi::RangeError::New(env, "size is larger than an ArrayBuffer can be");
  void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) ThrowSystemError(env, errno, "mmap");
  Record* record = new Record{addr, size, own_fd ? fd : -1};
  live[addr] = record;
  napi_value buffer;
  napi_status status = napi_create_external_arraybuffer(env, addr, size, FinalizeMapping, record, &buffer);
  if (status != napi_ok) {
    // Node may or may not have run (or queued) the finalizer on this path.
    // If it has not released the mapping, do it here; the record is left
    // alive (a few bytes, on a path the size check makes unreachable in
    // practice) so that a queued finalizer cannot touch freed memory.
    auto it = live.find(addr);
    if (it != live.end() && it->second == record) {
      live.erase(it);
      record->released = true;
      Release(addr, size, record->fd);
    }
    NAPI_THROW_IF_FAILED(env, status, Napi::Value());
  }
  return Napi::Value(env, buffer);
}

Napi::Value Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "buffer must be an ArrayBuffer");
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  if (buffer.IsDetached()) return env.Undefined();  // unmapped before: idempotent
  auto it = live.find(buffer.Data());
  if (it == live.end()) throw Napi::TypeError::New(env, "buffer must be an ArrayBuffer made by mmap()");
  // Everything unmap() needs from the record is taken before the detach, the
  // point after which the finalizer may run and delete it.
  Record* record = it->second;
  live.erase(it);
  record->released = true;
  void* addr = record->addr;
  size_t length = record->length;
  int fd = record->fd;
  // Detach first: after this no JS view can reach the address range.
  buffer.Detach();
  Release(addr, length, fd);
  return env.Undefined();
}

// The memory outlives the Mapping object if JS still holds the ArrayBuffer, so
// the region is owned by a small record shared by unmap() and the finalizer.
struct Region {
  void* addr = nullptr;
  size_t length = 0;
  bool mapped = false;
  bool buffer_alive = false;
  bool owner_alive = false;

  void Unmap() {
    if (mapped) {
      FutexServiceForget(addr, length);
      munmap(addr, length);
      mapped = false;
    }
  }
  void MaybeDelete() {
    if (!buffer_alive && !owner_alive) delete this;
  }
};

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Mapping",
                       {InstanceMethod<&Mapping::UnmapMethod>("unmap"),
                        InstanceMethod<&Mapping::PopulateMethod>("populate"),
                        InstanceAccessor<&Mapping::Buffer>("buffer"),
                        InstanceAccessor<&Mapping::Length>("length")});
  }

  explicit Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0);
    size_t size = SizeArg(info, 1);
    if (size == 0) throw Napi::RangeError::New(env, "cannot map 0 bytes");
    void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) ThrowSystemError(env, errno, "mmap");
    region_ = new Region();
    region_->addr = addr;
    region_->length = size;
    region_->mapped = true;
    region_->owner_alive = true;
    region_->buffer_alive = true;
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, addr, size, Finalize, region_);
    buffer_ = Napi::Persistent(ab);
  }

  ~Mapping() override {
    if (region_ != nullptr) {
      region_->owner_alive = false;
      region_->MaybeDelete();
    }
  }

 private:
  static void Finalize(Napi::Env env, void* data, Region* region) {
    region->Unmap();
    region->buffer_alive = false;
    region->MaybeDelete();
  }

  Napi::Value UnmapMethod(const Napi::CallbackInfo& info) {
    if (region_ != nullptr && region_->mapped) {
      // Detach first: after this no JS view can reach the address range.
      if (!buffer_.IsEmpty()) {
        Napi::ArrayBuffer ab = buffer_.Value();
        if (!ab.IsDetached()) ab.Detach();
      }
      region_->Unmap();
    }
    return info.Env().Undefined();
  }

  // Allocates the pages behind [offset, offset + length) of a mapping whose
  // file is sparse there, without writing to them: where tmpfs cannot, the
  // kernel answers EFAULT (the fault would have been SIGBUS). Inside our own
  // mapping and below the file's size that can only mean no page could be
  // had, so it is reported as the ENOSPC a fallocate would have returned.
  Napi::Value PopulateMethod(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    size_t offset = SizeArg(info, 0);
    size_t length = SizeArg(info, 1);
    if (region_ == nullptr || !region_->mapped) throw Napi::Error::New(env, "the mapping is unmapped");
    if (offset > region_->length || length > region_->length - offset) {
      throw Napi::RangeError::New(env, "range is outside the mapping");
    }
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    if (length == 0) return Napi::Boolean::New(env, true);
    uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    uintptr_t start = reinterpret_cast<uintptr_t>(region_->addr) + offset;
    uintptr_t end = start + length;
    start &= ~(page - 1);
    end = (end + page - 1) & ~(page - 1);
    int r = RetryEintr([&] { return madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_WRITE); });
    if (r == 0) return Napi::Boolean::New(env, true);
    if (errno == EFAULT) ThrowSystemError(env, ENOSPC, "madvise");
    if (errno != EINVAL) ThrowSystemError(env, errno, "madvise");
#endif
    // EINVAL: a kernel older than 5.14.
    return Napi::Boolean::New(env, false);
  }

  Napi::Value Buffer(const Napi::CallbackInfo& info) { return buffer_.Value(); }

  Napi::Value Length(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), region_ != nullptr && region_->mapped ? static_cast<double>(region_->length) : 0);
  }

  Region* region_ = nullptr;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

// Reads buffer.constants.MAX_LENGTH through process.getBuiltinModule (Node
// 20.16+); anything missing leaves the conservative default. Any exception is
// cleared: loading the addon must not fail over a bound.
void ReadMaxLength(Napi::Env env) {
  Napi::Value process = env.Global().Get("process");
  if (!process.IsObject()) return;
  Napi::Value get = process.As<Napi::Object>().Get("getBuiltinModule");
  if (!get.IsFunction()) return;
  Napi::Value module = get.As<Napi::Function>().Call(process, {Napi::String::New(env, "buffer")});
  if (!module.IsObject()) return;
  Napi::Value constants = module.As<Napi::Object>().Get("constants");
  if (!constants.IsObject()) return;
  Napi::Value value = constants.As<Napi::Object>().Get("MAX_LENGTH");
  if (value.IsNumber() && value.As<Napi::Number>().DoubleValue() > 0) max_length = value.As<Napi::Number>().DoubleValue();
}

// ---- heap segments an environment owns ----------------------------------------
//
// A process gives up the shared-heap segments it created in its 'exit' hook
// (src/heap.ts): it says in each header that their owner is done, unlinks
// those nothing else refers to (the header's foreign count is 0), and tells
// the tracker either way, which unlinks the rest once their count falls to 0.
// A worker thread's heap lives and ends with the worker, and
// worker.terminate() runs no 'exit' hook: the environment's cleanup hook,
// which does run, does the same here, without JS. Each segment's header page
// is mapped here on its own, so it stays readable whatever JS has let go.

struct OwnedSegment {
  std::string name;
  int32_t* header = nullptr;
  int foreign = 0;  // word indexes in the header (src/heap-layout.ts)
  int done = 0;
};

}  // namespace

struct OwnedSegments {
  std::vector<OwnedSegment> list;
};

namespace {

constexpr size_t kHeaderMap = 4096;

void GiveUp(const OwnedSegment& s) {
  __atomic_store_n(&s.header[s.done], 1, __ATOMIC_SEQ_CST);
  const bool referenced = __atomic_load_n(&s.header[s.foreign], __ATOMIC_SEQ_CST) > 0;
  munmap(s.header, kHeaderMap);
  const std::string quoted = "\"kind\":\"heap\",\"name\":\"" + s.name + "\"}\n";
  // Still referenced: the tracker unlinks it once nothing does. Without a
  // tracker to tell (none, or it is gone) nobody would: unlinked now.
  if (referenced) {
    const int err = TrackerWriteLine("{\"op\":\"OWNER_GONE\"," + quoted);
    if (err != EBADF && err != EPIPE) return;
  }
  shm_unlink(s.name.c_str());
  TrackerWriteLine("{\"op\":\"UNREGISTER\"," + quoted);
}

void GiveUpAll(OwnedSegments* owned) {
  for (const OwnedSegment& s : owned->list) GiveUp(s);
  owned->list.clear();
}

void OwnedCleanup(void* arg) {
  auto* owned = static_cast<OwnedSegments*>(arg);
  GiveUpAll(owned);
  delete owned;
}

int WordArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "word index must be a number");
  const int w = info[i].As<Napi::Number>().Int32Value();
  if (w < 0 || static_cast<size_t>(w) >= kHeaderMap / 4) throw Napi::RangeError::New(info.Env(), "word index out of range");
  return w;
}

Napi::Value OwnSegment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Name name;
  NameArg(info, 0, &name);
  const int foreign = WordArg(info, 1);
  const int done = WordArg(info, 2);
  int fd = RetryEintr([&] { return shm_open(name.c_str(), O_RDWR, 0600); });
  if (fd < 0) ThrowSystemError(env, errno, "shm_open", name.c_str());
  void* addr = mmap(nullptr, kHeaderMap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int map_errno = errno;
  close(fd);
  if (addr == MAP_FAILED) ThrowSystemError(env, map_errno, "mmap", name.c_str());
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data->segments == nullptr) {
    data->segments = new OwnedSegments();
    napi_add_env_cleanup_hook(env, OwnedCleanup, data->segments);
  }
  data->segments->list.push_back(OwnedSegment{name.c_str(), static_cast<int32_t*>(addr), foreign, done});
  return env.Undefined();
}

Napi::Value DisownSegment(const Napi::CallbackInfo& info) {
  Name name;
  NameArg(info, 0, &name);
  OwnedSegments* owned = info.Env().GetInstanceData<AddonData>()->segments;
  if (owned == nullptr) return info.Env().Undefined();
  for (auto it = owned->list.begin(); it != owned->list.end(); ++it) {
    if (it->name == name.c_str()) {
      munmap(it->header, kHeaderMap);
      owned->list.erase(it);
      break;
    }
  }
  return info.Env().Undefined();
}

Napi::Value ReleaseOwnedSegments(const Napi::CallbackInfo& info) {
  OwnedSegments* owned = info.Env().GetInstanceData<AddonData>()->segments;
  if (owned != nullptr) GiveUpAll(owned);
  return info.Env().Undefined();
}

}  // namespace

void InitShm(Napi::Env env, Napi::Object exports, AddonData* data) {
  try {
    ReadMaxLength(env);
  } catch (const Napi::Error&) {
    // Keep the default (see ReadMaxLength).
  }
  exports.Set("shmOpen", Napi::Function::New<ShmOpen>(env, "shmOpen"));
  exports.Set("shmUnlink", Napi::Function::New<ShmUnlink>(env, "shmUnlink"));
  exports.Set("ftruncate", Napi::Function::New<Ftruncate>(env, "ftruncate"));
  exports.Set("fallocate", Napi::Function::New<Fallocate>(env, "fallocate"));
  exports.Set("fstatSize", Napi::Function::New<FstatSize>(env, "fstatSize"));
  exports.Set("mmap", Napi::Function::New<Mmap>(env, "mmap"));
  exports.Set("unmap", Napi::Function::New<Unmap>(env, "unmap"));
  exports.Set("Mapping", Mapping::Define(env));
  exports.Set("ownSegment", Napi::Function::New<OwnSegment>(env, "ownSegment"));
  exports.Set("disownSegment", Napi::Function::New<DisownSegment>(env, "disownSegment"));
  exports.Set("releaseOwnedSegments", Napi::Function::New<ReleaseOwnedSegments>(env, "releaseOwnedSegments"));
}

}  // namespace pmp
