// POSIX shared memory, syscall-shaped: policy (names, sizes, who unlinks) is the
// TypeScript layer's.
//
//   shmOpen(name, create, exclusive, mode) -> fd      (close-on-exec)
//   shmUnlink(name)
//   ftruncate(fd, size); fstatSize(fd) -> size
//   mmap(fd, size, ownFd) -> ArrayBuffer over MAP_SHARED memory; with ownFd the
//                          fd is closed together with the unmapping
//   unmap(buffer)          detaches an mmap() buffer: every view becomes length 0,
//                          and the memory is unmapped. Idempotent; also done by GC.
//   new Mapping(fd, size)  .buffer: ArrayBuffer over MAP_SHARED memory
//                          (callers keep size <= buffer.constants.MAX_LENGTH:
//                          N-API aborts the process on a longer external buffer)
//                          .unmap(): detaches .buffer (every view over it becomes
//                          length 0) and munmaps. Idempotent; also done by GC.
//
// The ArrayBuffer is external and not shared in V8's sense (N-API cannot make a
// SharedArrayBuffer over foreign memory): Atomics read-modify-write operations
// work on it and are real atomic instructions across processes, but
// Atomics.wait does not, which is why waiting is native (futex.cc).
#include <fcntl.h>
#include <napi.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <v8.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "addon.h"
#include "errors.h"

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

Napi::Value FstatSize(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowSystemError(info.Env(), errno, "fstat");
  return Napi::Number::New(info.Env(), static_cast<double>(st.st_size));
}

// mmap() hands out a plain ArrayBuffer whose V8 backing store owns the mapping:
// V8 calls Release exactly once, when the last reference to the memory is gone.
// That is at once when unmap() detaches the buffer (nothing else holds it), or
// later, on whatever thread V8 sweeps on, when the buffer is dropped
// unclosed, or when something that borrowed the memory (an async crypto or
// zlib job, a transfer) lets go of it after a detach. So the memory is never
// unmapped twice, never unmapped while still reachable, and there is no
// finalizer keyed by an address that a later mmap may have reused. This is
// what makes a create/attach cycle cheap: no wrapper object, no weak handle, no
// deferred callback, unlike an N-API external ArrayBuffer (which Node builds as
// a Buffer with a weak reference, a cleanup hook and a SetImmediate on free).
//
// The one place the addon leaves Node-API: N-API has no way to make an
// ArrayBuffer over foreign memory with a plain deleter. A napi_value is the
// address of a V8 handle slot in every Node release (Node's own
// v8impl::JsValueFromV8LocalValue is this cast).
void Release(void* data, size_t length, void* fd_plus_one) {
  munmap(data, length);
  // Not retried on EINTR: on Linux the fd is gone even then.
  if (fd_plus_one != nullptr) close(static_cast<int>(reinterpret_cast<intptr_t>(fd_plus_one) - 1));
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  size_t size = SizeArg(info, 1);
  bool own_fd = info.Length() > 2 && info[2].ToBoolean();
  if (size == 0) throw Napi::RangeError::New(env, "cannot map 0 bytes");
  // V8 aborts the process on a longer ArrayBuffer (and a Uint8Array over it
  // could not be made); this is buffer.constants.MAX_LENGTH.
  if (size > v8::TypedArray::kMaxLength) throw Napi::RangeError::New(env, "size is larger than an ArrayBuffer can be");
  void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) ThrowSystemError(env, errno, "mmap");
  void* deleter_data = own_fd ? reinterpret_cast<void*>(static_cast<intptr_t>(fd) + 1) : nullptr;
  std::unique_ptr<v8::BackingStore> store = v8::ArrayBuffer::NewBackingStore(addr, size, Release, deleter_data);
  v8::Local<v8::ArrayBuffer> buffer = v8::ArrayBuffer::New(v8::Isolate::GetCurrent(), std::move(store));
  return Napi::Value(env, reinterpret_cast<napi_value>(*buffer));
}

Napi::Value Unmap(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(info.Env(), "buffer must be an ArrayBuffer");
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  // Detaching drops the buffer's reference to its backing store; Release runs
  // as soon as no one else holds it (normally right here).
  if (!buffer.IsDetached()) buffer.Detach();
  return info.Env().Undefined();
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

  Napi::Value Buffer(const Napi::CallbackInfo& info) { return buffer_.Value(); }

  Napi::Value Length(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), region_ != nullptr && region_->mapped ? static_cast<double>(region_->length) : 0);
  }

  Region* region_ = nullptr;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

}  // namespace

void InitShm(Napi::Env env, Napi::Object exports, AddonData* data) {
  exports.Set("shmOpen", Napi::Function::New<ShmOpen>(env, "shmOpen"));
  exports.Set("shmUnlink", Napi::Function::New<ShmUnlink>(env, "shmUnlink"));
  exports.Set("ftruncate", Napi::Function::New<Ftruncate>(env, "ftruncate"));
  exports.Set("fstatSize", Napi::Function::New<FstatSize>(env, "fstatSize"));
  exports.Set("mmap", Napi::Function::New<Mmap>(env, "mmap"));
  exports.Set("unmap", Napi::Function::New<Unmap>(env, "unmap"));
  exports.Set("Mapping", Mapping::Define(env));
}

}  // namespace pmp
